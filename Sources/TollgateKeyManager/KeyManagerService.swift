import OpenSSLKit
public import RPCCore
public import TollgateProto
public import TollgateServices
import TollgateStorage
import TollgateUsers

/// `tollgate.v1.KeyManagerService` over ``KeyManager``. Authorization has
/// already happened (`AccessTable`); what a subscriber may touch is
/// narrowed here to the clients and tokens of their own applications.
public struct KeyManagerRPCService: KeyManagerServiceHandler {
    public let keyManager: KeyManager
    /// How often a quiet revocation feed repeats its caught-up message.
    public let feedHeartbeat: Duration

    /// - Parameter feedHeartbeat: nil for the change-log's default, 10 s.
    public init(keyManager: KeyManager, feedHeartbeat: Duration? = nil) {
        self.keyManager = keyManager
        self.feedHeartbeat = feedHeartbeat ?? ChangeLog<TokenRevocation>.defaultHeartbeat
    }

    /// The generated handlers, with validation placed on the event loop.
    public var handlers: [RPCMethodHandler] {
        methodHandlers.map { handler in
            var handler = handler
            // Validation is one LMDB read of mapped memory: no lock, no
            // disk write, microseconds. Run it on the connection's loop and
            // save two thread hops per call on the gateways' hot path.
            if handler.method == KeyManagerServiceDescriptor.validateKey { handler.placement = .eventLoop }
            return handler
        }
    }

    /// A subscriber may manage only clients of their tenant that they own;
    /// tenant administrators and cluster nodes any of the tenant's.
    func checkOwner(_ client: OAuthClient, _ context: ServerCallContext) throws(RPCError) {
        guard let user = context.caller.user else { return }
        let sameTenant = client.tenantDomain.lowercased() == context.tenant
        guard sameTenant && (client.owner == user.username || user.holds(Permission.admin)) else {
            throw RPCError(.notFound, "no OAuth client has consumer key \(client.consumerKey)")
        }
    }

    public func registerClient(_ request: RegisterClientRequest, context: ServerCallContext) async throws -> RegisterClientResponse {
        var template = request.client ?? OAuthClient()
        template.tenantDomain = context.tenant
        if let user = context.caller.user, !user.holds(Permission.admin) || template.owner.isEmpty { template.owner = user.username }
        guard !template.owner.isEmpty else { throw RPCError(.invalidArgument, "client.owner is required when a node registers a client") }
        if !template.applicationId.isEmpty, let user = context.caller.user {
            // A client tied to an application takes its token format and scopes: only its owner (or an administrator) may tie one.
            guard let application = try RPCError.catching({ try keyManager.database.application(id: template.applicationId) }),
                  application.tenantDomain.lowercased() == context.tenant, application.owner == user.username || user.holds(Permission.admin) else {
                throw RPCError(.notFound, "no application \(template.applicationId) of yours in tenant \(context.tenant)")
            }
        }
        let (client, secret) = try await keyManager.registerClient(template, existingSecret: request.consumerSecret)
        return RegisterClientResponse(client: client, consumerSecret: secret)
    }

    public func updateClient(_ request: UpdateClientRequest, context: ServerCallContext) async throws -> UpdateClientResponse {
        let changes = request.client ?? OAuthClient()
        try checkOwner(try keyManager.client(changes.consumerKey), context)
        return UpdateClientResponse(client: try await keyManager.updateClient(changes))
    }

    public func deleteClient(_ request: DeleteClientRequest, context: ServerCallContext) async throws -> DeleteClientResponse {
        try checkOwner(try keyManager.client(request.consumerKey), context)
        try await keyManager.deleteClient(request.consumerKey)
        return DeleteClientResponse()
    }

    public func getClient(_ request: GetClientRequest, context: ServerCallContext) async throws -> GetClientResponse {
        let client = try keyManager.client(request.consumerKey)
        try checkOwner(client, context)
        return GetClientResponse(client: KeyManager.redacted(client))
    }

    public func regenerateClientSecret(_ request: RegenerateClientSecretRequest, context: ServerCallContext) async throws -> RegenerateClientSecretResponse {
        try checkOwner(try keyManager.client(request.consumerKey), context)
        let (client, secret) = try await keyManager.regenerateSecret(request.consumerKey)
        return RegenerateClientSecretResponse(client: client, consumerSecret: secret)
    }

    public func issueToken(_ request: IssueTokenRequest, context: ServerCallContext) async throws -> IssueTokenResponse {
        guard request.grantType != .unspecified else { throw OAuthError(.invalidRequest, "grant_type is required").rpcError }
        var tokenRequest = TokenRequest(grantType: request.grantType)
        tokenRequest.clientID = request.clientId
        tokenRequest.clientSecret = request.clientSecret
        tokenRequest.scopes = request.scopes
        tokenRequest.validitySeconds = request.validitySeconds
        tokenRequest.username = request.username
        tokenRequest.password = request.password
        tokenRequest.code = request.code
        tokenRequest.redirectURI = request.redirectUri
        tokenRequest.codeVerifier = request.codeVerifier
        tokenRequest.sourceAddress = context.sourceAddress
        // The store issues application tokens without the secret, which it never holds in clear.
        if request.clientSecret.isEmpty, case .node(_, let roles) = context.caller, roles.contains("store") {
            let client = try keyManager.client(request.clientId)
            do { return IssueTokenResponse(token: try await keyManager.token(tokenRequest, for: client)) } catch { throw error.rpcError }
        }
        do { return IssueTokenResponse(token: try await keyManager.token(tokenRequest)) } catch { throw error.rpcError }
    }

    public func refreshToken(_ request: RefreshTokenRequest, context: ServerCallContext) async throws -> RefreshTokenResponse {
        guard !request.refreshToken.isEmpty else { throw OAuthError(.invalidRequest, "refresh_token is required").rpcError }
        var tokenRequest = TokenRequest(grantType: .refreshToken)
        tokenRequest.clientID = request.clientId
        tokenRequest.clientSecret = request.clientSecret
        tokenRequest.refreshToken = request.refreshToken
        tokenRequest.scopes = request.scopes
        do { return RefreshTokenResponse(token: try await keyManager.token(tokenRequest)) } catch { throw error.rpcError }
    }

    public func revokeToken(_ request: RevokeTokenRequest, context: ServerCallContext) async throws -> RevokeTokenResponse {
        guard !request.token.isEmpty else { throw OAuthError(.invalidRequest, "token is required").rpcError }
        do {
            let client = try await keyManager.authenticateClient(id: request.clientId, secret: request.clientSecret)
            return RevokeTokenResponse(revokedCount: UInt32(try await keyManager.revoke(token: request.token, hint: request.tokenKindHint, client: client)))
        } catch {
            throw error.rpcError
        }
    }

    public func introspect(_ request: IntrospectRequest, context: ServerCallContext) async throws -> IntrospectResponse {
        let result = try keyManager.introspect(token: request.token)
        // A subscriber learns about tokens of their own clients only.
        if result.active, context.caller.user != nil {
            guard let client = try? keyManager.client(result.clientId), (try? checkOwner(client, context)) != nil else { return IntrospectResponse(active: false) }
        }
        return result
    }

    public func validateKey(_ request: ValidateKeyRequest, context: ServerCallContext) async throws -> ValidateKeyResponse {
        ValidateKeyResponse(info: try keyManager.validate(request))
    }

    /// A reset when the watcher cannot resume from `since_sequence`, then
    /// every revocation in sequence order; a caught-up message once the
    /// watcher holds everything, and again every ``feedHeartbeat`` of silence.
    public func watchRevocations(_ request: WatchRevocationsRequest, writer: ResponseWriter<WatchRevocationsResponse>, context: ServerCallContext) async throws {
        let log = keyManager.revocations.log
        let heartbeatSeconds = ChangeLog<TokenRevocation>.announcedSeconds(feedHeartbeat)
        do {
            // A fresh or lost watcher gets `reset` (drop every cached result)
            // instead of a snapshot: revocations have no state to rebuild.
            try await context.untilStopping {
                try await log.follow(since: request.sinceSequence, batch: 512, heartbeat: feedHeartbeat, snapshot: {
                    let head = try log.currentRevision()
                    return ([head], head)
                }, send: { event in
                    switch event {
                    case .snapshot(let head):
                        try await writer.write(WatchRevocationsResponse(reset: true, revocations: [], headSequence: head))
                    case .change(let revocation):
                        try await writer.write(WatchRevocationsResponse(reset: false, revocations: [revocation], headSequence: revocation.sequence))
                    case .caughtUp(let sequence):
                        try await writer.write(WatchRevocationsResponse(reset: false, revocations: [], headSequence: sequence, caughtUp: true,
                                                                        heartbeatSeconds: heartbeatSeconds))
                    }
                })
            }
        } catch ChangeLog<TokenRevocation>.FollowError.prunedPast(let sequence) {
            throw RPCError(.aborted, "the revocation feed no longer holds sequence \(sequence): reconnect with since_sequence 0 and drop cached results")
        }
    }

    public func rotateSigningKey(_ request: RotateSigningKeyRequest, context: ServerCallContext) async throws -> RotateSigningKeyResponse {
        let made = try RPCError.catching { try keyManager.signingKeys.rotate(retirePrevious: request.retirePrevious) }
        let published = try RPCError.catching { try keyManager.signingKeys.keys.map(\.kid) }
        return RotateSigningKeyResponse(kid: made.kid, publishedKids: published)
    }

    public func listSigningKeys(_ request: ListSigningKeysRequest, context: ServerCallContext) async throws -> ListSigningKeysResponse {
        let keys = try RPCError.catching { try keyManager.signingKeys.keys }
        return ListSigningKeysResponse(keys: keys.map { SigningPublicKey(kid: $0.kid, x: $0.key.x, y: $0.key.y) })
    }
}
