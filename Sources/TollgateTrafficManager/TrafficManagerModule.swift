public import RoleCore
public import RPCCore
public import ServiceLifecycle
import TollgateServices
import TollgateProto
public import TollgateStorage

/// The trafficmanager role: quota leases for the gateways
/// (TrafficManagerService), kept in the node's own mbstoredb
/// (docs/throttling.md).
public struct TrafficManagerModule: RoleModule {
    public static let name = "trafficmanager"
    public static let rpcServices = [TrafficManagerServiceDescriptor.serviceName]
    public static let databases: Set<LogicalDatabaseName> = [.mbstoredb]
    public static let configSection: ConfigSectionSpec? = ConfigSectionSpec(name: "trafficmanager", keys: [
        .init("max_grant", .integer(1...10_000_000)),
        .init("decision_retention_minutes", .integer(1...10_080)),
    ])

    public let trafficManager: TrafficManager

    public init(context: NodeContext) async throws {
        let mbstoredb = try context.require(context.databases.mbstoredb, .mbstoredb, for: Self.name)
        do {
            trafficManager = try TrafficManager(nodeID: context.nodeID, database: mbstoredb, settings: Self.settings(context.section("trafficmanager")))
        } catch {
            throw NodeStartError("mbstoredb: cannot load the lease counters: \(error)")
        }
    }

    static func settings(_ section: ConfigSection) -> TrafficManager.Settings {
        TrafficManager.Settings(maxGrant: UInt64(section.integer("max_grant") ?? 100_000),
                                decisionRetentionMs: Int64(section.integer("decision_retention_minutes") ?? 60) * 60_000)
    }

    public var methods: [RPCMethodHandler] { TrafficManagerRPCService(trafficManager: trafficManager).methodHandlers }

    public var services: [any Service] { [WatcherShutdown(trafficManager: trafficManager)] }

    public func reload(_ section: ConfigSection) async throws -> [String] {
        trafficManager.update(Self.settings(section))
        return []
    }

    public var metricSamples: [MetricSample] {
        let counts = trafficManager.counts
        func counter(_ name: String, _ help: String, _ value: UInt64) -> MetricSample {
            MetricSample(name: "tollgate_trafficmanager_" + name, help: help, kind: .counter, value: Double(value))
        }
        return [
            counter("lease_exchanges_total", "ExchangeLeases calls answered (one per gateway batch).", counts.exchanges),
            counter("lease_operations_total", "Lease operations applied (a key and window each: grant, return, report).", counts.operations),
            counter("leases_granted_total", "Units (requests or bytes) granted in leases.", counts.unitsGranted),
            counter("leases_returned_total", "Units of leases handed back unused.", counts.unitsReturned),
            counter("lease_units_used_total", "Units gateways reported admitted from leases.", counts.unitsUsed),
            counter("lease_units_unleased_total", "Units gateways reported admitted without a lease (fallback, stop on quota off).", counts.unitsUnleased),
            counter("decisions_total", "Quotas decided exhausted or refilled, sent to WatchDecisions.", counts.decisions),
            MetricSample(name: "tollgate_trafficmanager_open_counters", help: "Counters of throttle keys in windows still open.", kind: .gauge,
                         value: Double(trafficManager.openCounters)),
            MetricSample(name: "tollgate_trafficmanager_decision_watchers", help: "Gateways watching decisions now.", kind: .gauge,
                         value: Double(trafficManager.watcherCount)),
        ]
    }
}

/// Ends the decision watches when the node stops, so draining RPC calls
/// does not wait for streams that would otherwise run forever.
struct WatcherShutdown: Service {
    let trafficManager: TrafficManager

    func run() async throws {
        try? await gracefulShutdown()
        trafficManager.finishWatchers()
    }
}
