public import RPCCore
public import TollgateProto

/// Permission paths. Holding a path grants every path below it, so the
/// `admin` role's `/permission/admin` covers everything a tenant can do;
/// `/permission/protected` (cluster-wide matters such as tenants) is held by
/// the super tenant's administrators only.
public enum Permission {
    public static let admin = "/permission/admin"
    public static let createApis = "/permission/admin/manage/api/create"
    public static let publishApis = "/permission/admin/manage/api/publish"
    public static let subscribe = "/permission/admin/manage/api/subscribe"
    /// Throttling policies and block conditions (WSO2's admin portal).
    public static let manageThrottling = "/permission/admin/manage/apim_admin"
    /// Users and roles of one's own tenant.
    public static let manageUsers = "/permission/admin/configure/security"
    /// Node status and metrics.
    public static let monitor = "/permission/admin/monitor"
    /// Creating and suspending tenants.
    public static let manageTenants = "/permission/protected/tenants"
    public static let protected = "/permission/protected"
}

/// The roles every tenant starts with, and what they may do.
public enum BuiltinRole {
    public static let admin = "admin"
    public static let creator = "creator"
    public static let publisher = "publisher"
    public static let subscriber = "subscriber"

    public static let all = [admin, creator, publisher, subscriber]

    /// The permissions of a built-in role; the super tenant's admin also
    /// holds the protected, cluster-wide permissions.
    public static func permissions(of role: String, inSuperTenant: Bool) -> [String] {
        switch role {
        case admin: inSuperTenant ? [Permission.admin, Permission.protected] : [Permission.admin]
        case creator: [Permission.createApis]
        case publisher: [Permission.publishApis]
        case subscriber: [Permission.subscribe]
        default: []
        }
    }

    public static func description(of role: String) -> String {
        switch role {
        case admin: "everything in the tenant"
        case creator: "designs APIs: create, update, delete, documents, OpenAPI, new versions"
        case publisher: "manages API lifecycles and subscriptions"
        case subscriber: "uses the store: applications, subscriptions, keys"
        default: ""
        }
    }
}

/// Who may call each method of each service: one declarative table,
/// enforced by the RPC server before any handler runs.
public enum AccessTable {
    private static let creatorOrPublisher = AccessRule.either(.permission(Permission.createApis), .permission(Permission.publishApis))
    private static let anyNode = AccessRule.node(roles: [])

    public static let rules: [ProtoMethod: AccessRule] = [
        // Every node.
        // An admin certificate works on every node, including those without users.
        NodeServiceDescriptor.ping: .either(.signedIn, .either(anyNode, .operatorCertificate)),
        NodeServiceDescriptor.getNodeStatus: .either(.permission(Permission.monitor), .either(anyNode, .operatorCertificate)),
        // Which roles serve what: public in proto/ and the docs; any identity.
        NodeServiceDescriptor.listServices: .either(.signedIn, .either(anyNode, .operatorCertificate)),

        // Users, roles and tenants (publisher, store and keymanager nodes).
        UserServiceDescriptor.login: .anyone,
        UserServiceDescriptor.logout: .signedIn,
        UserServiceDescriptor.whoAmI: .signedIn,
        UserServiceDescriptor.changePassword: .signedIn,
        UserServiceDescriptor.createUser: .permission(Permission.manageUsers),
        UserServiceDescriptor.updateUser: .permission(Permission.manageUsers),
        UserServiceDescriptor.deleteUser: .permission(Permission.manageUsers),
        UserServiceDescriptor.getUser: .permission(Permission.manageUsers),
        UserServiceDescriptor.listUsers: .permission(Permission.manageUsers),
        UserServiceDescriptor.createRole: .permission(Permission.manageUsers),
        UserServiceDescriptor.deleteRole: .permission(Permission.manageUsers),
        UserServiceDescriptor.listRoles: .permission(Permission.manageUsers),
        UserServiceDescriptor.assignRoles: .permission(Permission.manageUsers),
        UserServiceDescriptor.createTenant: .permission(Permission.manageTenants),
        UserServiceDescriptor.listTenants: .permission(Permission.manageTenants),
        UserServiceDescriptor.setTenantStatus: .permission(Permission.manageTenants),

        // Publisher.
        PublisherServiceDescriptor.createApi: .permission(Permission.createApis),
        PublisherServiceDescriptor.updateApi: .permission(Permission.createApis),
        PublisherServiceDescriptor.deleteApi: .permission(Permission.createApis),
        PublisherServiceDescriptor.getApi: creatorOrPublisher,
        PublisherServiceDescriptor.listApis: creatorOrPublisher,
        PublisherServiceDescriptor.searchApis: creatorOrPublisher,
        PublisherServiceDescriptor.importOpenApi: .permission(Permission.createApis),
        PublisherServiceDescriptor.exportOpenApi: creatorOrPublisher,
        PublisherServiceDescriptor.changeLifecycle: .permission(Permission.publishApis),
        PublisherServiceDescriptor.getLifecycleHistory: creatorOrPublisher,
        PublisherServiceDescriptor.createNewVersion: .permission(Permission.createApis),
        PublisherServiceDescriptor.addDocument: .permission(Permission.createApis),
        PublisherServiceDescriptor.updateDocument: .permission(Permission.createApis),
        PublisherServiceDescriptor.deleteDocument: .permission(Permission.createApis),
        PublisherServiceDescriptor.listDocuments: creatorOrPublisher,
        PublisherServiceDescriptor.getDocument: creatorOrPublisher,
        PublisherServiceDescriptor.listApiSubscriptions: creatorOrPublisher,
        PublisherServiceDescriptor.blockSubscription: .permission(Permission.publishApis),
        PublisherServiceDescriptor.unblockSubscription: .permission(Permission.publishApis),
        PublisherServiceDescriptor.watchDeployments: .node(roles: ["gateway", "trafficmanager"]),

        // Throttling policies and block conditions.
        AdminServiceDescriptor.createPolicy: .permission(Permission.manageThrottling),
        AdminServiceDescriptor.updatePolicy: .permission(Permission.manageThrottling),
        AdminServiceDescriptor.deletePolicy: .permission(Permission.manageThrottling),
        AdminServiceDescriptor.getPolicy: .either(.permission(Permission.manageThrottling), creatorOrPublisher),
        AdminServiceDescriptor.listPolicies: .either(.permission(Permission.manageThrottling), creatorOrPublisher),
        AdminServiceDescriptor.createBlockCondition: .permission(Permission.manageThrottling),
        AdminServiceDescriptor.updateBlockCondition: .permission(Permission.manageThrottling),
        AdminServiceDescriptor.deleteBlockCondition: .permission(Permission.manageThrottling),
        AdminServiceDescriptor.getBlockCondition: .permission(Permission.manageThrottling),
        AdminServiceDescriptor.listBlockConditions: .permission(Permission.manageThrottling),
        AdminServiceDescriptor.setBlockConditionEnabled: .permission(Permission.manageThrottling),

        // Store: browsing is open, as in WSO2's store; the rest is a subscriber's.
        StoreServiceDescriptor.listPublishedApis: .anyone,
        StoreServiceDescriptor.searchPublishedApis: .anyone,
        StoreServiceDescriptor.getApiDetails: .anyone,
        StoreServiceDescriptor.getApiDocument: .anyone,
        StoreServiceDescriptor.signUp: .anyone,
        StoreServiceDescriptor.createApplication: .permission(Permission.subscribe),
        StoreServiceDescriptor.updateApplication: .permission(Permission.subscribe),
        StoreServiceDescriptor.deleteApplication: .permission(Permission.subscribe),
        StoreServiceDescriptor.listApplications: .permission(Permission.subscribe),
        StoreServiceDescriptor.getApplication: .permission(Permission.subscribe),
        StoreServiceDescriptor.subscribe: .permission(Permission.subscribe),
        StoreServiceDescriptor.unsubscribe: .permission(Permission.subscribe),
        StoreServiceDescriptor.listSubscriptions: .permission(Permission.subscribe),
        StoreServiceDescriptor.generateKeys: .permission(Permission.subscribe),
        StoreServiceDescriptor.regenerateSecret: .permission(Permission.subscribe),
        StoreServiceDescriptor.generateApplicationToken: .permission(Permission.subscribe),
        StoreServiceDescriptor.revokeApplicationToken: .permission(Permission.subscribe),

        // Key manager: the store acts for subscribers; gateways validate.
        KeyManagerServiceDescriptor.registerClient: .either(.node(roles: ["store"]), .permission(Permission.subscribe)),
        KeyManagerServiceDescriptor.updateClient: .either(.node(roles: ["store"]), .permission(Permission.subscribe)),
        KeyManagerServiceDescriptor.deleteClient: .either(.node(roles: ["store"]), .permission(Permission.subscribe)),
        KeyManagerServiceDescriptor.getClient: .either(.node(roles: ["store"]), .permission(Permission.subscribe)),
        KeyManagerServiceDescriptor.regenerateClientSecret: .either(.node(roles: ["store"]), .permission(Permission.subscribe)),
        KeyManagerServiceDescriptor.issueToken: .either(.node(roles: ["store", "gateway"]), .permission(Permission.subscribe)),
        KeyManagerServiceDescriptor.refreshToken: .either(.node(roles: ["store", "gateway"]), .permission(Permission.subscribe)),
        KeyManagerServiceDescriptor.revokeToken: .either(.node(roles: ["store", "gateway"]), .permission(Permission.subscribe)),
        // A subscriber learns only about tokens of their own clients.
        KeyManagerServiceDescriptor.introspect: .either(.node(roles: ["gateway", "store"]), .permission(Permission.subscribe)),
        KeyManagerServiceDescriptor.validateKey: .node(roles: ["gateway"]),
        KeyManagerServiceDescriptor.watchRevocations: .node(roles: ["gateway"]),
        // Signing keys are the cluster's: the super tenant's administrators.
        KeyManagerServiceDescriptor.rotateSigningKey: .permission(Permission.protected),
        KeyManagerServiceDescriptor.listSigningKeys: .node(roles: ["gateway"]),

        // Gateway, traffic manager, analytics.
        GatewayServiceDescriptor.getGatewayStatus: .either(.permission(Permission.monitor), .either(anyNode, .operatorCertificate)),
        // A gateway has no users: the operator's certificate is the credential it can check.
        GatewayServiceDescriptor.flushCaches: .either(.permission(Permission.admin), .either(.node(roles: ["publisher", "keymanager"]), .operatorCertificate)),
        TrafficManagerServiceDescriptor.exchangeLeases: .node(roles: ["gateway"]),
        TrafficManagerServiceDescriptor.watchDecisions: .node(roles: ["gateway"]),
        TrafficManagerServiceDescriptor.getThrottleStatus: .either(.permission(Permission.monitor), .either(anyNode, .operatorCertificate)),
        AnalyticsServiceDescriptor.publishUsageEvents: .node(roles: ["gateway"]),
        // Providers their APIs, consumers their applications, a tenant's administrators the tenant (the
        // service narrows each to its scope); an operator's certificate every tenant, on analytics nodes
        // too, which have no users to check a session against.
        AnalyticsServiceDescriptor.queryUsage: .either(.either(creatorOrPublisher, .permission(Permission.subscribe)), .operatorCertificate),
    ]

    /// The table keyed by method path, as ``AccessController`` takes it.
    public static var rulesByPath: [String: AccessRule] {
        Dictionary(uniqueKeysWithValues: rules.map { ($0.key.path, $0.value) })
    }
}
