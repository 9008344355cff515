public import Logging
public import RPCCore
public import ServiceLifecycle
import Synchronization
public import TollgateStorage

/// What a role, or a part shared by several roles, brings to a node: its
/// databases, RPC services, listeners, configuration section, background
/// services and reload behaviour. The node assembles the modules its roles
/// name (TollgateNode's `RoleModules` table), each once per process, in the
/// table's order; adding a role is one new module plus one line there.
///
/// Modules do not import each other: what one offers another goes through
/// the context, as a value of a protocol type from a lower layer
/// (``NodeContext/provide(_:as:)``, ``NodeContext/lookup(_:)``).
public protocol RoleModule: Sendable {
    /// For logs and messages, e.g. `publisher`.
    static var name: String { get }
    /// The logical databases it reads or writes.
    static var databases: Set<LogicalDatabaseName> { get }
    /// Its table in the node configuration, if it has settings.
    static var configSection: ConfigSectionSpec? { get }
    /// The names of the listeners it declares, which the node
    /// configuration's `[listen]` table may set.
    static var listenerNames: [String] { get }
    /// The RPC services (fully qualified, e.g. `tollgate.v1.StoreService`)
    /// whose methods ``methods`` serves: what tells a caller of another
    /// node which roles serve a service (``ServiceRoles``).
    static var rpcServices: [String] { get }

    /// Builds the module from what the node opened. Throw ``NodeStartError``
    /// for a problem the operator must fix; the node does not start.
    init(context: NodeContext) async throws

    /// Methods served on the node's RPC listeners.
    var methods: [RPCMethodHandler] { get }
    /// Listeners of its own (HTTP, raw streams).
    var listeners: [ListenerDeclaration] { get }
    /// Long-running work, run in the node's service group.
    var services: [any Service] { get }
    /// Metrics of its own, if it keeps any.
    var metricsSource: (any MetricsSource)? { get }
    /// Applies a reloaded configuration section. Returns the settings that
    /// changed but take effect only after a restart.
    func reload(_ section: ConfigSection) async throws -> [String]
    /// Its metrics now, read on every scrape of the node's metrics listener.
    var metricSamples: [MetricSample] { get }
}

extension RoleModule {
    public static var databases: Set<LogicalDatabaseName> { [] }
    public static var configSection: ConfigSectionSpec? { nil }
    public static var listenerNames: [String] { [] }
    public static var rpcServices: [String] { [] }
    public var methods: [RPCMethodHandler] { [] }
    public var listeners: [ListenerDeclaration] { [] }
    public var services: [any Service] { [] }
    public var metricsSource: (any MetricsSource)? { nil }
    public func reload(_ section: ConfigSection) async throws -> [String] { [] }
    public var metricSamples: [MetricSample] { [] }
}

/// Why a node could not start: one line for the operator.
public struct NodeStartError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// What the node gives its modules while assembling them: identity, the
/// opened databases, the configuration sections, a logger, and what earlier
/// modules offer.
public final class NodeContext: Sendable {
    public let nodeID: String
    public let roles: [Role]
    public let databases: Databases
    public let logger: Logger
    /// Where the node's listeners are configured to listen, by name
    /// (`cluster`, `admin`, modules' own), as `host:port`.
    public let listenEndpoints: [String: String]
    private let sections: [String: ConfigSection]
    private let registry = Mutex<[ObjectIdentifier: any Sendable]>([:])

    public init(nodeID: String, roles: [Role], databases: Databases, sections: [String: ConfigSection], logger: Logger,
                listenEndpoints: [String: String] = [:]) {
        self.nodeID = nodeID
        self.listenEndpoints = listenEndpoints
        self.roles = roles
        self.databases = databases
        self.sections = sections
        self.logger = logger
    }

    /// A module's configuration section (empty when the file has none).
    public func section(_ name: String) -> ConfigSection {
        sections[name] ?? ConfigSection()
    }

    /// Offers `value` to the modules assembled after this one.
    public func provide<Value: Sendable>(_ value: Value, as type: Value.Type) {
        registry.withLock { $0[ObjectIdentifier(type)] = value }
    }

    /// What an earlier module offered as `type`, if any.
    public func lookup<Value: Sendable>(_ type: Value.Type) -> Value? {
        registry.withLock { $0[ObjectIdentifier(type)] } as? Value
    }

    /// The one instance of `type` in this process, made on first use (a
    /// database's change-log, say, shared by every module writing to it).
    public func shared<Value: Sendable>(_ type: Value.Type, make: () throws -> Value) rethrows -> Value {
        if let existing = lookup(type) { return existing }
        let made = try make()
        return registry.withLock { entries in
            if let existing = entries[ObjectIdentifier(type)] as? Value { return existing }
            entries[ObjectIdentifier(type)] = made
            return made
        }
    }

    /// A database the module declared, or a start error naming it.
    public func require<Database>(_ database: Database?, _ name: LogicalDatabaseName, for module: String) throws -> Database {
        guard let database else { throw NodeStartError("\(module) needs \(name.rawValue), which this node did not open") }
        return database
    }
}

/// RPC connections to the other nodes of the cluster, as the node
/// configuration's `[peers]` lists them. The node offers one to its modules
/// (``NodeContext/lookup(_:)``); a reload that changes the peers changes what
/// it returns, so callers ask again for each call or stream.
public protocol PeerDirectory: Sendable {
    /// The peers of a role, in configuration order; empty when none is configured.
    func transports(for role: Role) -> [any RPCClientTransport]
    /// The same peers named by their configured address (`host:port`), for
    /// callers that must agree with other nodes on who is who whatever
    /// order each lists them in (the gateways' traffic-manager owners).
    func namedTransports(for role: Role) -> [(name: String, transport: any RPCClientTransport)]
}

extension PeerDirectory {
    /// Peers named by position, for directories that know no addresses.
    public func namedTransports(for role: Role) -> [(name: String, transport: any RPCClientTransport)] {
        transports(for: role).enumerated().map { ("\(role.rawValue)-\($0.offset + 1)", $0.element) }
    }
}

/// The node's data directory, for a module that keeps files of its own
/// there (a gateway's last good deployment state).
public struct NodeDataDirectory: Sendable {
    public let path: String
    public init(path: String) { self.path = path }
}

/// Sets a tenant up before its first object is stored (its default
/// throttling policies, so tiers such as Gold exist). Offered by the
/// policies module, used by the publisher.
public protocol TenantProvisioning: Sendable {
    func prepare(tenant: String) async throws(RPCError)
}

/// Metrics a module keeps itself, added to the node's Prometheus page at
/// each scrape in the text exposition format (`# HELP`, `# TYPE`, samples).
public protocol MetricsSource: Sendable {
    func prometheusText() -> String
}
