public import LMDBKit
public import TollgateProto

/// `apimgtdb`, the API Manager database: APIs, applications, subscriptions,
/// OAuth clients and tokens (and, with the throttling schema, policies and
/// block conditions). Opened by the publisher, store and key manager roles.
public struct ApiManagerDatabase: Sendable {
    public static let schema = Schema(name: LogicalDatabaseName.apimgtdb.rawValue, version: 1)

    // MARK: APIs

    /// name + version is unique within a tenant (names compare case-insensitively).
    public static let apisByNameVersion = IndexDefinition<Api>("by_name_version", unique: true) { api in
        Key(.string(api.tenantDomain.lowercased()), .string(api.name.lowercased()), .string(api.version))
    }
    /// context + version is unique within a tenant: it is what gateways route on.
    public static let apisByContextVersion = IndexDefinition<Api>("by_context_version", unique: true) { api in
        Key(.string(api.tenantDomain.lowercased()), .string(api.context), .string(api.version))
    }
    public static let apisByProvider = IndexDefinition<Api>("by_provider", unique: false) { api in
        Key(.string(api.tenantDomain.lowercased()), .string(api.provider.lowercased()))
    }
    public static let apisByTag = IndexDefinition<Api>("by_tag", unique: false) { api in
        Set(api.tags.map { $0.lowercased() }).map { Key(.string(api.tenantDomain.lowercased()), .string($0)) }
    }
    public static let apisByState = IndexDefinition<Api>("by_state", unique: false) { api in
        Key(.string(api.tenantDomain.lowercased()), .int64(Int64(api.lifecycleState.rawValue)))
    }
    /// The search index: (tenant, field, term) for every term of an API, so
    /// a search is a few prefix scans over keys instead of reading every API.
    /// Name, context and tag terms are indexed with all their suffixes, which
    /// makes a query word match anywhere inside them; description words match
    /// from their start.
    public static let apisBySearchTerm = IndexDefinition<Api>("by_search_term", unique: false) { api in
        let tenant = api.tenantDomain.lowercased()
        return ApiSearchTerms.terms(of: api).map { Key(.string(tenant), .string($0.field.rawValue), .string($0.term)) }
    }
    public static let apiTable = TableDefinition<Api>(
        "apis", primaryKey: { Key(.string($0.id)) },
        indexes: [apisByNameVersion, apisByContextVersion, apisByProvider, apisByTag, apisByState, apisBySearchTerm])

    // MARK: Deployment log

    /// Every change gateways must apply, by revision. The revision comes from
    /// the `deployment` sequence in the same transaction as the change it
    /// records, so revisions are gapless and never reused, even across crashes.
    public static let deploymentChangeTable = TableDefinition<DeploymentChange>(
        "deployment_changes", primaryKey: { Key(.uint64($0.revision)) })
    /// The meta-table sequence deployment revisions are drawn from.
    public static let deploymentSequence = "deployment"

    // MARK: Applications and subscriptions

    public static let applicationsByOwnerName = IndexDefinition<Application>("by_owner_name", unique: true) { app in
        Key(.string(app.tenantDomain.lowercased()), .string(app.owner), .string(app.name.lowercased()))
    }
    /// Applications shared with a group (WSO2's group id) by (tenant, group).
    public static let applicationsByGroup = IndexDefinition<Application>("by_group", unique: false) { app in
        app.groupId.isEmpty ? nil : Key(.string(app.tenantDomain.lowercased()), .string(app.groupId.lowercased()))
    }
    public static let applicationTable = TableDefinition<Application>(
        "applications", primaryKey: { Key(.string($0.id)) }, indexes: [applicationsByOwnerName, applicationsByGroup])

    /// An application subscribes to an API at most once.
    public static let subscriptionsByApplicationApi = IndexDefinition<Subscription>("by_application_api", unique: true) { sub in
        Key(.string(sub.applicationId), .string(sub.apiId))
    }
    public static let subscriptionsByApi = IndexDefinition<Subscription>("by_api", unique: false) { sub in
        Key(.string(sub.apiId))
    }
    public static let subscriptionTable = TableDefinition<Subscription>(
        "subscriptions", primaryKey: { Key(.string($0.id)) }, indexes: [subscriptionsByApplicationApi, subscriptionsByApi])

    // MARK: Keys, clients and tokens

    public static let applicationKeysByConsumerKey = IndexDefinition<ApplicationKey>("by_consumer_key", unique: true) { key in
        key.consumerKey.isEmpty ? nil : Key(.string(key.consumerKey))
    }
    /// One key per application and key type (PRODUCTION, SANDBOX).
    public static let applicationKeyTable = TableDefinition<ApplicationKey>(
        "application_keys", primaryKey: { Key(.string($0.applicationId), .int64(Int64($0.keyType.rawValue))) },
        indexes: [applicationKeysByConsumerKey])

    public static let clientsByApplication = IndexDefinition<OAuthClient>("by_application", unique: false) { client in
        client.applicationId.isEmpty ? nil : Key(.string(client.applicationId))
    }
    public static let clientTable = TableDefinition<OAuthClient>(
        "oauth_clients", primaryKey: { Key(.string($0.consumerKey)) }, indexes: [clientsByApplication])

    public static let tokensByConsumerKey = IndexDefinition<OAuthToken>("by_consumer_key", unique: false) { token in
        Key(.string(token.consumerKey))
    }
    public static let tokensByUser = IndexDefinition<OAuthToken>("by_user", unique: false) { token in
        token.username.isEmpty ? nil : Key(.string(token.tenantDomain.lowercased()), .string(token.username))
    }
    /// The tokens of one grant and its refresh-token rotations.
    public static let tokensByFamily = IndexDefinition<OAuthToken>("by_family", unique: false) { token in
        token.familyId.isEmpty ? nil : Key(.bytes(token.familyId))
    }
    /// When a token stops mattering: its expiry (a used refresh token is
    /// kept until then, so a replay is recognised), or, for one that never
    /// expires, when it stopped being active. The purge walks this from the
    /// oldest end, so it never reads tokens it keeps.
    public static let tokensByPurgeTime = IndexDefinition<OAuthToken>("by_purge_time", unique: false) { token in
        if let expires = token.expiresAtUnixMs { return Key(.int64(expires)) }
        return token.state == .active ? nil : Key(.int64(token.stateChangedAtUnixMs))
    }
    /// Tokens are stored and found by the SHA-256 of the bearer value only.
    public static let tokenTable = TableDefinition<OAuthToken>(
        "tokens", primaryKey: { Key(.bytes($0.tokenHash)) }, indexes: [tokensByConsumerKey, tokensByUser, tokensByFamily, tokensByPurgeTime])

    public static let codesByExpiry = IndexDefinition<AuthorizationCode>("by_expiry", unique: false) { code in
        Key(.int64(code.expiresAtUnixMs))
    }
    public static let authorizationCodeTable = TableDefinition<AuthorizationCode>(
        "authorization_codes", primaryKey: { Key(.bytes($0.codeHash)) }, indexes: [codesByExpiry])

    /// The revocation feed gateways watch, by sequence (``RevocationLog``).
    public static let revocationTable = TableDefinition<TokenRevocation>(
        "token_revocations", primaryKey: { Key(.uint64($0.sequence)) })
    public static let revocationSequence = "revocations"

    // MARK: Throttling

    /// Policies of every kind, keyed by tenant, kind and name (names are unique per kind).
    public static let policyTable = TableDefinition<ThrottlePolicy>("policies", primaryKey: { policyKey($0) })

    public static let blockConditionsByTenant = IndexDefinition<BlockCondition>("by_tenant", unique: false) { condition in
        Key(.string(condition.tenantDomain.lowercased()))
    }
    public static let blockConditionTable = TableDefinition<BlockCondition>(
        "block_conditions", primaryKey: { Key(.string($0.id)) }, indexes: [blockConditionsByTenant])

    public let database: LogicalDatabase
    public let apis: Table<Api>
    public let applications: Table<Application>
    public let subscriptions: Table<Subscription>
    public let applicationKeys: Table<ApplicationKey>
    public let clients: Table<OAuthClient>
    public let tokens: Table<OAuthToken>
    public let authorizationCodes: Table<AuthorizationCode>
    public let revocations: Table<TokenRevocation>
    public let policies: Table<ThrottlePolicy>
    public let blockConditions: Table<BlockCondition>
    public let deploymentChanges: Table<DeploymentChange>

    /// Opens `<dataDirectory>/apimgtdb`.
    public static func open(in dataDirectory: String, options: Environment.Options = .init()) throws -> ApiManagerDatabase {
        try LogicalDatabase.open(schema: schema, in: dataDirectory, options: options) { database in
            ApiManagerDatabase(
                database: database,
                apis: try database.table(apiTable),
                applications: try database.table(applicationTable),
                subscriptions: try database.table(subscriptionTable),
                applicationKeys: try database.table(applicationKeyTable),
                clients: try database.table(clientTable),
                tokens: try database.table(tokenTable),
                authorizationCodes: try database.table(authorizationCodeTable),
                revocations: try database.table(revocationTable),
                policies: try database.table(policyTable),
                blockConditions: try database.table(blockConditionTable),
                deploymentChanges: try database.table(deploymentChangeTable))
        }
    }

    /// The key of a policy: tenant, kind number, name.
    public static func policyKey(_ policy: ThrottlePolicy) -> Key {
        let (kind, tenant, name): (PolicyKind, String, String) = switch policy.policy {
        case .subscriptionPolicy(let p)?: (.subscription, p.tenantDomain, p.name)
        case .applicationPolicy(let p)?: (.application, p.tenantDomain, p.name)
        case .advancedPolicy(let p)?: (.advanced, p.tenantDomain, p.name)
        case .globalPolicy(let p)?: (.global, p.tenantDomain, p.name)
        case nil: (.unspecified, "", "")
        }
        return policyKey(kind: kind, name: name, tenant: tenant)
    }

    public static func policyKey(kind: PolicyKind, name: String, tenant: String) -> Key {
        Key(.string(tenant.lowercased()), .int64(Int64(kind.rawValue)), .string(name))
    }

    // MARK: Lookups

    public func api(id: String) throws -> Api? {
        try database.environment.read { try apis.get(Key(.string(id)), in: $0) }
    }

    public func api(name: String, version: String, tenant: String) throws -> Api? {
        try database.environment.read {
            try apis.get(Self.apisByNameVersion, Key(.string(tenant.lowercased()), .string(name.lowercased()), .string(version)), in: $0)
        }
    }

    public func api(context: String, version: String, tenant: String) throws -> Api? {
        try database.environment.read {
            try apis.get(Self.apisByContextVersion, Key(.string(tenant.lowercased()), .string(context), .string(version)), in: $0)
        }
    }

    /// A tenant's APIs ordered by name then version, a page at a time.
    public func apis(tenant: String, pageSize: Int, pageToken: [UInt8] = []) throws -> Page<Api> {
        try database.environment.read {
            try apis.list(index: Self.apisByNameVersion, prefix: Key(.string(tenant.lowercased())), pageSize: pageSize, pageToken: pageToken, in: $0)
        }
    }

    public func apis(taggedWith tag: String, tenant: String, pageSize: Int, pageToken: [UInt8] = []) throws -> Page<Api> {
        try database.environment.read {
            try apis.list(index: Self.apisByTag, prefix: Key(.string(tenant.lowercased()), .string(tag.lowercased())), pageSize: pageSize, pageToken: pageToken, in: $0)
        }
    }

    public func apis(provider: String, tenant: String, pageSize: Int, pageToken: [UInt8] = []) throws -> Page<Api> {
        try database.environment.read {
            try apis.list(index: Self.apisByProvider, prefix: Key(.string(tenant.lowercased()), .string(provider.lowercased())), pageSize: pageSize, pageToken: pageToken, in: $0)
        }
    }

    public func apis(in state: LifecycleState, tenant: String, pageSize: Int, pageToken: [UInt8] = []) throws -> Page<Api> {
        try database.environment.read {
            try apis.list(index: Self.apisByState, prefix: Key(.string(tenant.lowercased()), .int64(Int64(state.rawValue))), pageSize: pageSize, pageToken: pageToken, in: $0)
        }
    }

    public func application(id: String) throws -> Application? {
        try database.environment.read { try applications.get(Key(.string(id)), in: $0) }
    }

    /// The application an OAuth consumer key was issued to.
    public func application(consumerKey: String) throws -> Application? {
        try database.environment.read { txn in
            guard let key = try applicationKeys.get(Self.applicationKeysByConsumerKey, Key(.string(consumerKey)), in: txn) else { return nil }
            return try applications.get(Key(.string(key.applicationId)), in: txn)
        }
    }

    public func applications(owner: String, tenant: String) throws -> [Application] {
        try database.environment.read {
            try applications.all(index: Self.applicationsByOwnerName, prefix: Key(.string(tenant.lowercased()), .string(owner)), in: $0)
        }
    }

    public func subscriptions(api apiID: String) throws -> [Subscription] {
        try database.environment.read { try subscriptions.all(index: Self.subscriptionsByApi, prefix: Key(.string(apiID)), in: $0) }
    }

    public func subscriptions(application applicationId: String) throws -> [Subscription] {
        try database.environment.read {
            try subscriptions.all(index: Self.subscriptionsByApplicationApi, prefix: Key(.string(applicationId)), in: $0)
        }
    }

    public func subscription(application applicationId: String, api apiID: String) throws -> Subscription? {
        try database.environment.read {
            try subscriptions.get(Self.subscriptionsByApplicationApi, Key(.string(applicationId), .string(apiID)), in: $0)
        }
    }

    public func client(consumerKey: String) throws -> OAuthClient? {
        try database.environment.read { try clients.get(Key(.string(consumerKey)), in: $0) }
    }

    /// The token record for a bearer value, found by its SHA-256.
    public func token(_ bearer: String) throws -> OAuthToken? {
        try database.environment.read { try tokens.get(Key(.bytes(SecretHasher.tokenHash(bearer))), in: $0) }
    }

    public func tokens(consumerKey: String) throws -> [OAuthToken] {
        try database.environment.read { try tokens.all(index: Self.tokensByConsumerKey, prefix: Key(.string(consumerKey)), in: $0) }
    }

    public func tokens(of username: String, tenant: String) throws -> [OAuthToken] {
        try database.environment.read {
            try tokens.all(index: Self.tokensByUser, prefix: Key(.string(tenant.lowercased()), .string(username)), in: $0)
        }
    }

    public func policy(kind: PolicyKind, name: String, tenant: String) throws -> ThrottlePolicy? {
        try database.environment.read { try policies.get(Self.policyKey(kind: kind, name: name, tenant: tenant), in: $0) }
    }

    /// A tenant's policies of one kind, ordered by name.
    public func policies(kind: PolicyKind, tenant: String) throws -> [ThrottlePolicy] {
        try database.environment.read {
            try policies.list(prefix: Key(.string(tenant.lowercased()), .int64(Int64(kind.rawValue))), pageSize: Int.max, in: $0).items
        }
    }

    public func blockConditions(tenant: String) throws -> [BlockCondition] {
        try database.environment.read {
            try blockConditions.all(index: Self.blockConditionsByTenant, prefix: Key(.string(tenant.lowercased())), in: $0)
        }
    }
}
