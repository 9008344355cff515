import FoundationEssentials
public import RoleCore
import TollgateProto
public import RPCCore
import TollgateServices
public import TollgateStorage

/// Throttling policies and block conditions (AdminService), for every role
/// that opens apimgtdb. Offers ``TenantProvisioning`` to the modules after it.
public struct PoliciesModule: RoleModule {
    public static let name = "policies"
    public static let databases: Set<LogicalDatabaseName> = [.apimgtdb]

    public let store: PolicyStore

    public init(context: NodeContext) async throws {
        let apimgtdb = try context.require(context.databases.apimgtdb, .apimgtdb, for: Self.name)
        // One log per process, shared by its writers, so watchers wake on every commit.
        let log = context.shared(DeploymentLog.self) { DeploymentLog(database: apimgtdb) }
        store = PolicyStore(database: apimgtdb, deploymentLog: log)
        do {
            try await store.installDefaults(tenant: superTenant)
        } catch {
            throw NodeStartError("apimgtdb: cannot install the default throttling policies: \(error.message)")
        }
        context.provide(store as any TenantProvisioning, as: (any TenantProvisioning).self)
    }

    public static let rpcServices = [AdminServiceDescriptor.serviceName]

    public var methods: [RPCMethodHandler] { AdminService(store: store).methodHandlers }
}
