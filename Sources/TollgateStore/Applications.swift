import FoundationEssentials
import LMDBKit
import OpenSSLKit
public import RPCCore
import TollgateKeyManager
import RoleCore
public import TollgateProto
import TollgateServices
import TollgateStorage

extension ConsumerStore {
    // MARK: Applications

    static let maxNameLength = 100

    /// Whether the caller may use the application: its owner, a member of
    /// its group (a role the caller holds, WSO2's group id), or the tenant's administrator.
    func mayUse(_ application: Application, caller: StoreCaller) -> Bool {
        guard let user = caller.user, application.tenantDomain.lowercased() == caller.tenant else { return false }
        if application.owner == user.username || caller.isAdmin { return true }
        return !application.groupId.isEmpty && caller.holdsAnyRole([application.groupId])
    }

    /// Shared applications are used by their group; only the owner (or an
    /// administrator) deletes one or replaces its secret.
    func checkOwner(_ application: Application, caller: StoreCaller, doing what: String) throws(RPCError) {
        guard application.owner == caller.user?.username || caller.isAdmin else {
            throw RPCError(.permissionDenied, "application \(application.name) is shared with you; only its owner \(application.owner) may \(what)")
        }
    }

    /// The application, or NOT_FOUND for one the caller may not use.
    public func application(_ id: String, caller: StoreCaller) throws(RPCError) -> Application {
        guard !id.isEmpty else { throw RPCError(.invalidArgument, "an application id is required") }
        guard let application = try RPCError.catching({ try apimgt.application(id: id) }), mayUse(application, caller: caller) else {
            throw RPCError(.notFound, "no application \(id) of yours in tenant \(caller.tenant)")
        }
        return application
    }

    func checkApplication(_ application: Application, tenant: String) throws(RPCError) {
        let name = application.name.trimmedSpaces
        guard !name.isEmpty, name.count <= Self.maxNameLength, name == application.name else {
            throw RPCError(.invalidArgument, "an application name is 1 to \(Self.maxNameLength) characters without leading or trailing spaces (--name)")
        }
        guard application.description.count <= 1000 else { throw RPCError(.invalidArgument, "the description is longer than 1000 characters") }
        if !application.callbackUrl.isEmpty { try KeyManager.checkRedirectURI(application.callbackUrl) }
        guard let policy = try RPCError.catching({ try apimgt.policy(kind: .application, name: application.throttlingPolicy, tenant: tenant) }),
              case .applicationPolicy? = policy.policy else {
            let names = (try? apimgt.policies(kind: .application, tenant: tenant))?.compactMap { policy -> String? in
                if case .applicationPolicy(let p)? = policy.policy { return p.name }
                return nil
            } ?? []
            throw RPCError(.invalidArgument, "application tier \(application.throttlingPolicy) does not exist; the tiers are \(names.joined(separator: ", ")) (--tier)")
        }
    }

    public func createApplication(_ draft: Application, caller: StoreCaller) async throws(RPCError) -> Application {
        guard let user = caller.user else { throw RPCError(.unauthenticated, "sign in to create applications") }
        try await tenants?.prepare(tenant: caller.tenant)
        var application = draft
        application.tenantDomain = caller.tenant
        application.owner = user.username
        if application.throttlingPolicy.isEmpty { application.throttlingPolicy = "Unlimited" }
        if application.tokenFormat == .unspecified { application.tokenFormat = .opaque }
        try checkApplication(application, tenant: caller.tenant)
        application.id = UUID().uuidString.lowercased()
        application.status = .approved
        let timestamp = now()
        application.createdAtUnixMs = timestamp
        application.updatedAtUnixMs = timestamp
        let stored = application
        try await RPCError.catching {
            try await apimgt.database.write { [self] txn in
                do {
                    try apimgt.applications.insert(stored, in: &txn)
                } catch StorageError.alreadyExists, StorageError.uniqueConflict {
                    throw RPCError(.alreadyExists, "you already have an application named \(stored.name)")
                }
            }
        }
        return stored
    }

    public func updateApplication(_ change: Application, caller: StoreCaller) async throws(RPCError) -> Application {
        let current = try application(change.id, caller: caller)
        var updated = current
        updated.name = change.name
        updated.description = change.description
        updated.throttlingPolicy = change.throttlingPolicy.isEmpty ? current.throttlingPolicy : change.throttlingPolicy
        updated.callbackUrl = change.callbackUrl
        updated.groupId = change.groupId
        updated.attributes = change.attributes
        if change.tokenFormat != .unspecified { updated.tokenFormat = change.tokenFormat }
        try checkApplication(updated, tenant: caller.tenant)
        updated.updatedAtUnixMs = now()
        let stored = updated
        let tierChanged = stored.throttlingPolicy != current.throttlingPolicy
        try await RPCError.catching {
            try await apimgt.database.write { [self] txn in
                do {
                    _ = try apimgt.applications.put(stored, in: &txn)
                } catch StorageError.alreadyExists, StorageError.uniqueConflict {
                    throw RPCError(.alreadyExists, "the owner already has an application named \(stored.name)")
                }
                // Cached validation results carry the application's tier.
                if tierChanged { try revocations.append(.applicationId(stored.id), in: &txn) }
            }
        }
        if tierChanged { revocations.committed() }
        return stored
    }

    /// Deletes the application with its subscriptions, keys and OAuth
    /// clients in one transaction; its tokens stop validating at once.
    public func deleteApplication(_ id: String, caller: StoreCaller) async throws(RPCError) {
        let application = try application(id, caller: caller)
        try checkOwner(application, caller: caller, doing: "delete it")
        try await RPCError.catching {
            try await apimgt.database.write { [self] txn in
                for subscription in try apimgt.subscriptions.all(index: ApiManagerDatabase.subscriptionsByApplicationApi, prefix: Key(.string(application.id)), in: txn) {
                    _ = try apimgt.subscriptions.delete(subscription, in: &txn)
                }
                for key in try apimgt.applicationKeys.list(prefix: Key(.string(application.id)), pageSize: Int.max, in: txn).items {
                    _ = try apimgt.applicationKeys.delete(key, in: &txn)
                    try keyManager.deleteClient(key.consumerKey, in: &txn)
                }
                _ = try apimgt.applications.delete(Key(.string(application.id)), in: &txn)
                try revocations.append(.applicationId(application.id), in: &txn)
            }
        }
        revocations.committed()
    }

    /// The caller's applications and those shared with their groups, by name.
    public func listApplications(groupID: String, caller: StoreCaller) throws(RPCError) -> [Application] {
        guard let user = caller.user else { throw RPCError(.unauthenticated, "sign in to list applications") }
        return try RPCError.catching {
            try apimgt.database.read { txn in
                var found: [String: Application] = [:]
                if groupID.isEmpty {
                    for app in try apimgt.applications.all(index: ApiManagerDatabase.applicationsByOwnerName,
                                                           prefix: Key(.string(caller.tenant), .string(user.username)), in: txn) { found[app.id] = app }
                }
                let groups = groupID.isEmpty ? user.roles : [groupID]
                for group in groups where caller.holdsAnyRole([group]) || caller.isAdmin {
                    for app in try apimgt.applications.all(index: ApiManagerDatabase.applicationsByGroup,
                                                           prefix: Key(.string(caller.tenant), .string(group.lowercased())), in: txn) { found[app.id] = app }
                }
                return found.values.sorted { ($0.name.lowercased(), $0.id) < ($1.name.lowercased(), $1.id) }
            }
        }
    }

    public func keys(of application: Application) throws(RPCError) -> [ApplicationKey] {
        try RPCError.catching {
            try apimgt.database.read { try apimgt.applicationKeys.list(prefix: Key(.string(application.id)), pageSize: 8, in: $0).items }
        }
    }

    // MARK: Subscriptions

    public func subscribe(application applicationID: String, api apiID: String, tier: String, caller: StoreCaller) async throws(RPCError) -> Subscription {
        let application = try application(applicationID, caller: caller)
        let api = try visibleApi(apiID, caller: caller)
        guard Self.subscribableStates.contains(api.lifecycleState) else {
            throw RPCError(.failedPrecondition, "\(api.name) \(api.version) is deprecated: subscribe to a newer version")
        }
        let policies = try offeredPolicies(of: api, caller: caller)
        guard policies.contains(where: { $0.name == tier }) else {
            let offered = policies.map(\.name)
            throw RPCError(.invalidArgument, offered.isEmpty
                ? "\(api.name) \(api.version) offers no tier you may use"
                : "tier \(tier) is not offered by \(api.name) \(api.version) to you; choose one of \(offered.joined(separator: ", ")) (--tier)")
        }
        let timestamp = now()
        let subscription = Subscription(id: UUID().uuidString.lowercased(), tenantDomain: caller.tenant, apiId: api.id, applicationId: application.id,
                                        throttlingPolicy: tier, status: .unblocked, createState: .subscribe, apiName: api.name, apiVersion: api.version,
                                        apiContext: api.context, apiProvider: api.provider, applicationName: application.name,
                                        subscriber: application.owner, createdAtUnixMs: timestamp, updatedAtUnixMs: timestamp)
        try await RPCError.catching {
            try await apimgt.database.write { [self] txn in
                do {
                    try apimgt.subscriptions.insert(subscription, in: &txn)
                } catch StorageError.alreadyExists, StorageError.uniqueConflict {
                    throw RPCError(.alreadyExists, "application \(application.name) is already subscribed to \(api.name) \(api.version)")
                }
                // A cached "not subscribed" (900908) must not outlive this.
                try revocations.append(.applicationId(application.id), in: &txn)
            }
        }
        revocations.committed()
        return subscription
    }

    public func unsubscribe(_ id: String, caller: StoreCaller) async throws(RPCError) {
        guard let subscription = try RPCError.catching({ try apimgt.database.read { try apimgt.subscriptions.get(Key(.string(id)), in: $0) } }),
              (try? application(subscription.applicationId, caller: caller)) != nil else {
            throw RPCError(.notFound, "no subscription \(id) of yours in tenant \(caller.tenant)")
        }
        try await RPCError.catching {
            try await apimgt.database.write { [self] txn in
                _ = try apimgt.subscriptions.delete(Key(.string(id)), in: &txn)
                try revocations.append(.applicationId(subscription.applicationId), in: &txn)
            }
        }
        revocations.committed()
    }

    public func listSubscriptions(application applicationID: String, api apiID: String, caller: StoreCaller) throws(RPCError) -> [Subscription] {
        let applications = applicationID.isEmpty ? try listApplications(groupID: "", caller: caller) : [try application(applicationID, caller: caller)]
        return try RPCError.catching {
            try apimgt.database.read { txn in
                try applications.flatMap { app in
                    try apimgt.subscriptions.all(index: ApiManagerDatabase.subscriptionsByApplicationApi,
                                                 prefix: apiID.isEmpty ? Key(.string(app.id)) : Key(.string(app.id), .string(apiID)), in: txn)
                }
            }
        }
    }

    // MARK: Keys and tokens

    public struct GeneratedKeys: Sendable {
        public var key: ApplicationKey
        public var secret: String
        public var token: IssuedToken?
    }

    public func generateKeys(_ request: GenerateKeysRequest, caller: StoreCaller) async throws(RPCError) -> GeneratedKeys {
        let application = try application(request.applicationId, caller: caller)
        guard request.keyType == .production || request.keyType == .sandbox else {
            throw RPCError(.invalidArgument, "the key type is production or sandbox (--type)")
        }
        if try RPCError.catching({ try apimgt.database.read { try apimgt.applicationKeys.get(Key(.string(application.id), .int64(Int64(request.keyType.rawValue))), in: $0) } }) != nil {
            throw RPCError(.alreadyExists, "application \(application.name) already has \(Self.keyTypeName(request.keyType)) keys: regenerate the secret instead")
        }
        var grants = request.grantTypes
        let callback = request.callbackUrl.isEmpty ? application.callbackUrl : request.callbackUrl
        if grants.isEmpty {
            grants = [.clientCredentials, .password, .refreshToken]
            if !callback.isEmpty { grants.append(.authorizationCode) }
        }
        let template = OAuthClient(consumerKey: request.existingConsumerKey, tenantDomain: application.tenantDomain, owner: application.owner,
                                   clientName: "\(application.owner)_\(application.name)_\(Self.keyTypeName(request.keyType))",
                                   applicationId: application.id, keyType: request.keyType, grantTypes: grants, callbackUrl: callback,
                                   applicationTokenValiditySeconds: request.applicationTokenValiditySeconds)
        let (client, secret) = try await keyManager.prepareClient(template, existingSecret: request.existingConsumerSecret)
        let timestamp = now()
        let key = ApplicationKey(applicationId: application.id, keyType: request.keyType, consumerKey: client.consumerKey,
                                 createMode: request.existingConsumerKey.isEmpty ? .created : .mapped, allowedDomains: request.allowedDomains,
                                 createdAtUnixMs: timestamp, updatedAtUnixMs: timestamp)
        try await RPCError.catching {
            try await apimgt.database.write { [self] txn in
                do {
                    try apimgt.applicationKeys.insert(key, in: &txn)
                } catch StorageError.alreadyExists, StorageError.uniqueConflict {
                    throw RPCError(.alreadyExists, "application \(application.name) already has \(Self.keyTypeName(request.keyType)) keys")
                }
                try keyManager.insertClient(client, in: &txn)
            }
        }
        var token: IssuedToken?
        if grants.contains(.clientCredentials) {
            token = try await applicationToken(client: client, scopes: request.scopes, validitySeconds: request.applicationTokenValiditySeconds)
        }
        return GeneratedKeys(key: key, secret: secret, token: token)
    }

    func applicationToken(client: OAuthClient, scopes: [String], validitySeconds: Int64) async throws(RPCError) -> IssuedToken {
        var tokenRequest = TokenRequest(grantType: .clientCredentials)
        tokenRequest.clientID = client.consumerKey
        tokenRequest.scopes = scopes
        tokenRequest.validitySeconds = validitySeconds
        do {
            return try await keyManager.token(tokenRequest, for: client)
        } catch {
            throw error.rpcError
        }
    }

    func key(of application: Application, type: KeyType) throws(RPCError) -> (ApplicationKey, OAuthClient) {
        guard let key = try RPCError.catching({ try apimgt.database.read { try apimgt.applicationKeys.get(Key(.string(application.id), .int64(Int64(type.rawValue))), in: $0) } }) else {
            throw RPCError(.notFound, "application \(application.name) has no \(Self.keyTypeName(type)) keys: generate them first")
        }
        return (key, try keyManager.client(key.consumerKey))
    }

    public func regenerateSecret(application applicationID: String, type: KeyType, caller: StoreCaller) async throws(RPCError) -> (consumerKey: String, secret: String) {
        let application = try application(applicationID, caller: caller)
        try checkOwner(application, caller: caller, doing: "regenerate its secret")
        let (key, _) = try key(of: application, type: type)
        let (_, secret) = try await keyManager.regenerateSecret(key.consumerKey)
        return (key.consumerKey, secret)
    }

    public func generateToken(_ request: GenerateApplicationTokenRequest, caller: StoreCaller) async throws(RPCError) -> IssuedToken {
        let application = try application(request.applicationId, caller: caller)
        let (_, client) = try key(of: application, type: request.keyType)
        guard client.grantTypes.contains(.clientCredentials) else {
            throw RPCError(.failedPrecondition, "the \(Self.keyTypeName(request.keyType)) keys of \(application.name) do not allow the client_credentials grant")
        }
        if !request.previousToken.isEmpty, let previous = try keyManager.storedToken(request.previousToken), previous.consumerKey == client.consumerKey {
            _ = try await keyManager.revoke(id: previous.tokenId)
        }
        return try await applicationToken(client: client, scopes: request.scopes, validitySeconds: request.validitySeconds)
    }

    public func revokeToken(_ request: RevokeApplicationTokenRequest, caller: StoreCaller) async throws(RPCError) {
        let application = try application(request.applicationId, caller: caller)
        let (_, client) = try key(of: application, type: request.keyType)
        guard let token = try keyManager.storedToken(request.accessToken), token.consumerKey == client.consumerKey else {
            throw RPCError(.notFound, "that token was not issued to the \(Self.keyTypeName(request.keyType)) keys of \(application.name)")
        }
        _ = try await keyManager.revoke(id: token.tokenId)
    }

    static func keyTypeName(_ type: KeyType) -> String {
        switch type {
        case .production: "production"
        case .sandbox: "sandbox"
        default: "unspecified"
        }
    }
}
