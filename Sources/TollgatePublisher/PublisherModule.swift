public import RoleCore
import TollgateProto
public import RPCCore
import TollgateServices
public import ServiceLifecycle
public import TollgateStorage

/// The publisher role: PublisherService over apimgtdb and regdb, and the
/// deployment feed gateways watch. Needs a module that offers
/// ``TenantProvisioning`` (the policies module) before it.
public struct PublisherModule: RoleModule {
    public static let name = "publisher"
    public static let databases: Set<LogicalDatabaseName> = [.apimgtdb, .regdb]
    public static let configSection: ConfigSectionSpec? = ConfigSectionSpec(name: "publisher", keys: [
        // APIs per deployment snapshot message (each message also stops near 1 MiB).
        .init("snapshot_chunk_apis", .integer(1...10_000)),
        // The largest OpenAPI document an import accepts; requests and responses carry it whole in one 4 MiB frame.
        .init("max_definition_bytes", .integer(65_536...PublisherStore.largestMaxDefinitionBytes)),
    ])

    public let store: PublisherStore
    let snapshotChunkSize: Int

    public init(context: NodeContext) async throws {
        let apimgtdb = try context.require(context.databases.apimgtdb, .apimgtdb, for: Self.name)
        let regdb = try context.require(context.databases.regdb, .regdb, for: Self.name)
        guard let tenants = context.lookup((any TenantProvisioning).self) else {
            throw NodeStartError("the publisher needs the policies module (default tiers) assembled before it")
        }
        let log = context.shared(DeploymentLog.self) { DeploymentLog(database: apimgtdb) }
        let revocations = context.shared(RevocationLog.self) { RevocationLog(database: apimgtdb) }
        store = try PublisherStore(registry: regdb, deploymentLog: log, tenants: tenants, revocations: revocations, logger: context.logger,
                                   maxDefinitionBytes: context.section("publisher").integer("max_definition_bytes") ?? PublisherStore.defaultMaxDefinitionBytes)
        snapshotChunkSize = context.section("publisher").integer("snapshot_chunk_apis") ?? 200
        // A crash between an apimgtdb commit and its regdb half is repaired here.
        await store.deliverRegistryOperations()
    }

    public static let rpcServices = [PublisherServiceDescriptor.serviceName]

    public var methods: [RPCMethodHandler] { PublisherService(store: store, snapshotChunkSize: snapshotChunkSize).methodHandlers }

    public var services: [any Service] { [RegistryOutboxRetry(store: store)] }
}

/// Retries regdb operations a failed delivery left pending (a full disk
/// that has since been freed), so they do not wait for the next write, and
/// removes applied ones that no later write pruned.
struct RegistryOutboxRetry: Service {
    let store: PublisherStore

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(30))
                if (try? store.registryOutbox.pendingCount()) ?? 0 > 0 {
                    await store.deliverRegistryOperations()
                } else {
                    _ = try? await store.registryOutbox.compact()
                }
            }
        }
    }
}
