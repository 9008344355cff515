public import Logging
public import RoleCore
public import RPCCore
import TollgateServices
import TollgateProto
import TollgatePolicies
import TollgatePublisher
import TollgateKeyManager
import TollgateStore
import TollgateGateway
import TollgateTrafficManager
import TollgateAnalytics
public import TollgateStorage
import TollgateUsers

/// Which modules each role brings, in assembly order, and the databases the
/// role opens (DESIGN.md). A module shared by several roles of one node is
/// assembled once. Adding a role is one new module and one line in
/// ``standard``. Tests pass a table of their own to run modules of their own
/// through the real node.
public struct RoleModules: Sendable {
    private let table: @Sendable (Role) -> [any RoleModule.Type]

    public init(_ table: @escaping @Sendable (Role) -> [any RoleModule.Type]) {
        self.table = table
    }

    /// The modules of Tollgate's roles.
    public static let standard = RoleModules { role in
        switch role {
        case .publisher: [UsersModule.self, PoliciesModule.self, PublisherModule.self, AnalyticsModule.self]
        case .store: [UsersModule.self, PoliciesModule.self, StoreModule.self, AnalyticsModule.self]
        case .keymanager: [UsersModule.self, PoliciesModule.self, KeyManagerModule.self]
        case .gateway: [GatewayModule.self]
        case .trafficmanager: [TrafficManagerModule.self]
        case .analytics: [AnalyticsModule.self]
        }
    }

    public func modules(for role: Role) -> [any RoleModule.Type] { table(role) }

    /// The databases a role opens: its modules' and those DESIGN.md gives it
    /// for work not yet built (the store's statistics, the traffic manager's log).
    public func databases(for role: Role) -> Set<LogicalDatabaseName> {
        let own: Set<LogicalDatabaseName> = switch role {
        case .publisher, .store: [.userdb, .apimgtdb, .regdb, .statdb]
        case .keymanager: [.userdb, .apimgtdb, .regdb]
        case .gateway: []
        case .trafficmanager: [.mbstoredb]
        case .analytics: [.statdb]
        }
        return modules(for: role).reduce(own) { $0.union($1.databases) }
    }

    /// The modules of `roles`, each once, in order.
    public func modules(for roles: [Role]) -> [any RoleModule.Type] {
        var seen = Set<ObjectIdentifier>()
        return roles.flatMap { modules(for: $0) }.filter { seen.insert(ObjectIdentifier($0)).inserted }
    }

    /// Every module any role brings: their configuration sections and
    /// listener names are what a configuration file may set.
    public var all: [any RoleModule.Type] { modules(for: Role.allCases) }

    public static func databases(for role: Role) -> Set<LogicalDatabaseName> { standard.databases(for: role) }

    /// Every service declared in proto/, in the order of its files and declarations.
    public static let declaredServices: [String] = {
        var seen = Set<String>()
        return ProtoRegistry.methods.map(\.service).filter { seen.insert($0).inserted }
    }()

    /// Every service declared in proto/, in declaration order, with the roles
    /// whose nodes serve it: NodeService every role (the node serves it
    /// itself), any other the roles whose modules declare it
    /// (``RoleModule/rpcServices``); none for a service no module serves yet.
    public var serviceRoles: [(service: String, roles: [Role])] {
        Self.declaredServices.map { service in
            (service, service == NodeServiceDescriptor.serviceName
                ? Role.allCases
                : Role.allCases.filter { role in modules(for: role).contains { $0.rpcServices.contains(service) } })
        }
    }

    /// What a node running `roles` tells callers of the services it does not serve.
    public func placement(localRoles roles: [Role]) -> ServiceRoles {
        ServiceRoles(rolesByService: Dictionary(uniqueKeysWithValues: serviceRoles.map { ($0.service, $0.roles.map(\.rawValue)) }),
                     localRoles: roles.map(\.rawValue))
    }
}

/// A set of role modules assembled over opened databases, with the RPC
/// methods they serve and the access controller their users module offers:
/// how the node, the test fixtures and the benchmarks all build a node.
public struct NodeAssembly: Sendable {
    public let context: NodeContext
    public let modules: [any RoleModule]

    /// - Parameter prepare: offers values to the modules before they are
    ///   assembled (a test's fast password hasher, say).
    public static func assemble(roles: [Role], nodeID: String = "local", databases: Databases, sections: [String: ConfigSection] = [:],
                                logger: Logger, table: RoleModules = .standard, listenEndpoints: [String: String] = [:],
                                prepare: (NodeContext) -> Void = { _ in }) async throws -> NodeAssembly {
        let context = NodeContext(nodeID: nodeID, roles: roles, databases: databases, sections: sections, logger: logger,
                                  listenEndpoints: listenEndpoints)
        prepare(context)
        var modules: [any RoleModule] = []
        for type in table.modules(for: roles) { modules.append(try await type.init(context: context)) }
        return NodeAssembly(context: context, modules: modules)
    }

    /// Every RPC method the modules serve.
    public var methods: [RPCMethodHandler] { modules.flatMap(\.methods) }

    /// The access table, with the session check and tenancy rule the users module offers.
    public var access: AccessController {
        AccessController(rules: AccessTable.rulesByPath, sessions: context.lookup((any SessionVerifier).self),
                         tenants: context.lookup((any TenantAccessPolicy).self), grants: context.lookup((any PermissionGrants).self))
    }

    /// The assembled module of a type, if the roles brought it.
    public func module<Module: RoleModule>(_ type: Module.Type) -> Module? {
        modules.lazy.compactMap { $0 as? Module }.first
    }
}
