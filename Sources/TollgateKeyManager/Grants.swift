import FoundationEssentials
import LMDBKit
import OpenSSLKit
import RPCCore
public import TollgateProto
import TollgateStorage
import TollgateUsers

/// A token request as the token endpoint (RFC 6749 §4) receives it, once
/// the transport has read it.
public struct TokenRequest: Sendable {
    public var grantType: GrantType
    public var clientID = ""
    public var clientSecret = ""
    public var scopes: [String] = []
    /// Requested lifetime; 0 for the client's default, never longer than it.
    public var validitySeconds: Int64 = 0
    public var username = ""
    public var password = ""
    public var code = ""
    public var redirectURI = ""
    public var codeVerifier = ""
    public var refreshToken = ""
    /// The client's IP address: the password grant's failures are
    /// throttled per source, as sign-in's are (``UserDirectory/authenticate(username:password:defaultTenant:source:)``).
    public var sourceAddress: String?

    public init(grantType: GrantType) { self.grantType = grantType }
}

extension KeyManager {
    /// Authenticates the client, then runs the grant.
    public func token(_ request: TokenRequest) async throws(OAuthError) -> IssuedToken {
        let client = try await authenticateClient(id: request.clientID, secret: request.clientSecret)
        return try await token(request, for: client)
    }

    /// Runs a grant for a client already authenticated (or one the store
    /// acts for: it holds no application secret in clear).
    public func token(_ request: TokenRequest, for client: OAuthClient) async throws(OAuthError) -> IssuedToken {
        guard client.grantTypes.contains(request.grantType) else {
            throw OAuthError(.unauthorizedClient, "this client may not use the \(Self.grantName(request.grantType)) grant; its grants are \(client.grantTypes.map(Self.grantName).joined(separator: ", "))")
        }
        do {
            switch request.grantType {
            case .clientCredentials: return try await clientCredentials(request, client: client)
            case .password: return try await passwordGrant(request, client: client)
            case .refreshToken: return try await refresh(request, client: client)
            case .authorizationCode: return try await exchangeCode(request, client: client)
            default: throw OAuthError(.unsupportedGrantType, "grant \(Self.grantName(request.grantType)) is not supported")
            }
        } catch let error as OAuthError {
            throw error
        } catch {
            throw OAuthError.server(error)
        }
    }

    public static func grantName(_ grant: GrantType) -> String {
        switch grant {
        case .authorizationCode: "authorization_code"
        case .implicit: "implicit"
        case .password: "password"
        case .clientCredentials: "client_credentials"
        case .refreshToken: "refresh_token"
        default: "unknown"
        }
    }

    public static func grant(named name: String) -> GrantType? {
        switch name {
        case "authorization_code": .authorizationCode
        case "password": .password
        case "client_credentials": .clientCredentials
        case "refresh_token": .refreshToken
        case "implicit": .implicit
        default: nil
        }
    }

    // MARK: Grants

    private func clientCredentials(_ request: TokenRequest, client: OAuthClient) async throws -> IssuedToken {
        let application = try application(of: client)
        let roles = request.scopes.isEmpty ? [] : try userRoles(client.owner, tenant: client.tenantDomain)
        let scopes = try grantedScopes(request.scopes, roles: roles, tenant: client.tenantDomain, applicationID: client.applicationId)
        let lifetime = lifetimeMs(requested: request.validitySeconds, client: client.applicationTokenValiditySeconds,
                                  default: settings.applicationTokenLifetimeSeconds)
        // No refresh token for client credentials (RFC 6749 §4.4.3).
        let minted = try mint(client: client, application: application, username: client.owner, tenant: client.tenantDomain,
                              userType: .application, grant: .clientCredentials, scopes: scopes, accessLifetimeMs: lifetime,
                              refreshLifetimeMs: nil, familyID: [])
        try await store(minted.records)
        return minted.issued
    }

    private func passwordGrant(_ request: TokenRequest, client: OAuthClient) async throws -> IssuedToken {
        guard !request.username.isEmpty, !request.password.isEmpty else {
            throw OAuthError(.invalidRequest, "the password grant needs username and password")
        }
        let user: User
        do {
            user = try await users.authenticate(username: request.username, password: request.password, defaultTenant: client.tenantDomain,
                                              source: request.sourceAddress)
        } catch {
            throw OAuthError(.invalidGrant, error.code == .unauthenticated ? "invalid username or password" : error.message)
        }
        guard user.tenantDomain.lowercased() == client.tenantDomain.lowercased() else {
            throw OAuthError(.invalidGrant, "user \(user.username)@\(user.tenantDomain) is not in the client's tenant \(client.tenantDomain)")
        }
        return try await issueUserTokens(client: client, username: user.username, roles: user.roles, requestedScopes: request.scopes,
                                         grant: .password, validitySeconds: request.validitySeconds, familyID: try SecretHasher.orderedID(at: now()))
    }

    private func issueUserTokens(client: OAuthClient, username: String, roles: [String], requestedScopes: [String], grant: GrantType,
                                 validitySeconds: Int64, familyID: [UInt8]) async throws -> IssuedToken {
        let application = try application(of: client)
        let scopes = try grantedScopes(requestedScopes, roles: roles, tenant: client.tenantDomain, applicationID: client.applicationId)
        let minted = try mint(client: client, application: application, username: username, tenant: client.tenantDomain,
                              userType: .applicationUser, grant: grant, scopes: scopes,
                              accessLifetimeMs: lifetimeMs(requested: validitySeconds, client: client.userTokenValiditySeconds,
                                                           default: settings.userTokenLifetimeSeconds),
                              refreshLifetimeMs: client.grantTypes.contains(.refreshToken)
                                  ? lifetimeMs(requested: 0, client: client.refreshTokenValiditySeconds, default: settings.refreshTokenLifetimeSeconds)
                                  : nil,
                              familyID: familyID)
        try await store(minted.records)
        return minted.issued
    }

    /// What happened to a refresh token presented for rotation.
    private enum RefreshOutcome: Sendable {
        case rotated
        /// It had been used before: the family is now revoked.
        case replayed
        case invalid(String)
    }

    private func refresh(_ request: TokenRequest, client: OAuthClient) async throws -> IssuedToken {
        guard !request.refreshToken.isEmpty else { throw OAuthError(.invalidRequest, "refresh_token is missing") }
        guard let stored = try database.database.read({ try record(forToken: request.refreshToken, in: $0) }),
              stored.kind == .refresh, stored.consumerKey == client.consumerKey else {
            throw OAuthError(.invalidGrant, "the refresh token is invalid or was not issued to this client")
        }
        if !request.scopes.isEmpty, let extra = request.scopes.first(where: { !stored.scopes.contains($0) }) {
            throw OAuthError(.invalidScope, "scope \(extra) was not granted with the original token")
        }
        let scopes = request.scopes.isEmpty ? stored.scopes : request.scopes
        let application = try application(of: client)
        let timestamp = now()
        let minted = try mint(client: client, application: application, username: stored.username, tenant: stored.tenantDomain,
                              userType: stored.userType, grant: stored.grantType, scopes: scopes,
                              accessLifetimeMs: lifetimeMs(requested: request.validitySeconds, client: client.userTokenValiditySeconds,
                                                           default: settings.userTokenLifetimeSeconds),
                              refreshLifetimeMs: lifetimeMs(requested: 0, client: client.refreshTokenValiditySeconds,
                                                            default: settings.refreshTokenLifetimeSeconds),
                              familyID: stored.familyId)
        let records = minted.records
        let revokedBefore = client.tokensRevokedBeforeUnixMs
        // Checked again inside the transaction: of two concurrent uses of
        // one refresh token, exactly one rotates and the other is a replay.
        let outcome = try await database.database.write { [self] txn -> RefreshOutcome in
            guard var current = try database.tokens.get(Key(.bytes(stored.tokenId)), in: txn) else { return .invalid("the refresh token is invalid") }
            switch current.state {
            case .active:
                if let expires = current.expiresAtUnixMs, expires <= timestamp { return .invalid("the refresh token has expired") }
                if current.issuedAtUnixMs < revokedBefore { return .invalid("the refresh token was revoked") }
            case .inactive:
                try revokeFamily(current.familyId, at: timestamp, in: &txn)
                return .replayed
            default:
                return .invalid("the refresh token was revoked")
            }
            current.state = .inactive
            current.stateChangedAtUnixMs = timestamp
            _ = try database.tokens.put(current, in: &txn)
            // The access token issued with it is replaced too.
            if var paired = try database.tokens.get(Key(.bytes(current.pairedTokenId)), in: txn), paired.state == .active {
                paired.state = .inactive
                paired.stateChangedAtUnixMs = timestamp
                _ = try database.tokens.put(paired, in: &txn)
                try revocations.append(.tokenHash(paired.tokenHash), in: &txn)
            }
            for record in records { try database.tokens.insert(record, in: &txn) }
            return .rotated
        }
        switch outcome {
        case .rotated:
            revocations.committed()
            return minted.issued
        case .replayed:
            revocations.committed()
            throw OAuthError(.invalidGrant, "the refresh token was already used; every token of its grant is now revoked")
        case .invalid(let reason):
            throw OAuthError(.invalidGrant, reason)
        }
    }

    /// Revokes every token of a grant (a replayed refresh token or code).
    func revokeFamily(_ familyID: [UInt8], at timestamp: Int64, in txn: inout WriteTransaction) throws {
        guard !familyID.isEmpty else { return }
        for var token in try database.tokens.all(index: ApiManagerDatabase.tokensByFamily, prefix: Key(.bytes(familyID)), in: txn)
        where token.state == .active || token.state == .inactive {
            let wasLive = token.state == .active
            token.state = .revoked
            token.stateChangedAtUnixMs = timestamp
            _ = try database.tokens.put(token, in: &txn)
            if wasLive && token.kind == .access { try revocations.append(.tokenHash(token.tokenHash), in: &txn) }
        }
    }

    // MARK: Authorization codes

    /// Issues a code for a user who signed in and consented at the
    /// authorization endpoint. `redirectURI` is the one the client sent,
    /// checked by the caller, or empty when it sent none (the registered
    /// callback was used).
    public func issueCode(client: OAuthClient, username: String, tenant: String, scopes: [String], redirectURI: String,
                          codeChallenge: String, codeChallengeMethod: String) async throws -> String {
        let code = try SecretHasher.newToken()
        let timestamp = now()
        let record = AuthorizationCode(codeHash: SecretHasher.tokenHash(code), consumerKey: client.consumerKey, tenantDomain: tenant,
                                       username: username, scopes: scopes, redirectUri: redirectURI, issuedAtUnixMs: timestamp,
                                       expiresAtUnixMs: timestamp + settings.authorizationCodeLifetimeSeconds * 1000, used: false,
                                       codeChallenge: codeChallenge, codeChallengeMethod: codeChallengeMethod, familyId: try SecretHasher.orderedID(at: timestamp))
        try await database.database.writeGrouped { [self] txn in try database.authorizationCodes.insert(record, in: &txn) }
        return code
    }

    private enum CodeOutcome: Sendable {
        case accepted(AuthorizationCode)
        case replayed
        case invalid(String)
    }

    private func exchangeCode(_ request: TokenRequest, client: OAuthClient) async throws -> IssuedToken {
        guard !request.code.isEmpty else { throw OAuthError(.invalidRequest, "code is missing") }
        let hash = SecretHasher.tokenHash(request.code)
        let timestamp = now()
        let redirectURI = request.redirectURI, verifier = request.codeVerifier
        // The code is checked and spent in one transaction before tokens are
        // minted, so it works once even under concurrent exchanges; a
        // request that fails a check leaves it unspent.
        let outcome = try await database.database.write { [self] txn -> CodeOutcome in
            guard var code = try database.authorizationCodes.get(Key(.bytes(hash)), in: txn), code.consumerKey == client.consumerKey else {
                return .invalid("the authorization code is invalid or was not issued to this client")
            }
            if code.used {
                try revokeFamily(code.familyId, at: timestamp, in: &txn)
                return .replayed
            }
            guard code.expiresAtUnixMs > timestamp else { return .invalid("the authorization code has expired") }
            // RFC 6749 §4.1.3: the redirect_uri of the authorization request, if it named one.
            if !code.redirectUri.isEmpty && redirectURI != code.redirectUri {
                return .invalid(redirectURI.isEmpty ? "redirect_uri is required: the authorization request named one"
                                                    : "redirect_uri does not match the one of the authorization request")
            }
            if code.redirectUri.isEmpty && !redirectURI.isEmpty && redirectURI != client.callbackUrl {
                return .invalid("redirect_uri is not the client's registered callback")
            }
            if !code.codeChallenge.isEmpty {
                guard !verifier.isEmpty else { return .invalid("code_verifier is required: the code was issued with a PKCE challenge") }
                guard (43...128).contains(verifier.count), Base64URL.encode(SHA256.hash(verifier)) == code.codeChallenge else {
                    return .invalid("code_verifier does not match the code challenge")
                }
            }
            code.used = true
            _ = try database.authorizationCodes.put(code, in: &txn)
            return .accepted(code)
        }
        let code: AuthorizationCode
        switch outcome {
        case .accepted(let accepted): code = accepted
        case .replayed:
            revocations.committed()
            throw OAuthError(.invalidGrant, "the authorization code was already used; the tokens issued for it are now revoked")
        case .invalid(let reason): throw OAuthError(.invalidGrant, reason)
        }
        let roles = try userRoles(code.username, tenant: code.tenantDomain)
        // Scopes were decided when the user consented; roles may have changed since.
        return try await issueUserTokens(client: client, username: code.username, roles: roles, requestedScopes: code.scopes,
                                         grant: .authorizationCode, validitySeconds: 0, familyID: code.familyId)
    }

    // MARK: Token ids

    /// The id a token carries: the first 16 bytes of an opaque token, the
    /// `jti` of a JWT. Nil for anything this key manager did not issue.
    public static func tokenID(of token: String) -> [UInt8]? { SecretHasher.tokenID(of: token) }

    /// The stored record of a presented token: found by its id, and only if
    /// the whole token hashes to what was stored.
    func record<T: TransactionReading & ~Copyable>(forToken token: String, in txn: borrowing T) throws -> OAuthToken? {
        guard let id = Self.tokenID(of: token), let record = try database.tokens.get(Key(.bytes(id)), in: txn),
              constantTimeEquals(record.tokenHash, SecretHasher.tokenHash(token)) else { return nil }
        return record
    }

    // MARK: Minting

    struct Minted {
        let issued: IssuedToken
        let records: [OAuthToken]
    }

    /// Token strings and their records. Opaque tokens are 256 random bits;
    /// an application whose token format is JWT gets a signed JWT.
    func mint(client: OAuthClient, application: Application?, username: String, tenant: String, userType: TokenUserType, grant: GrantType,
              scopes: [String], accessLifetimeMs: Int64, refreshLifetimeMs: Int64?, familyID: [UInt8]) throws -> Minted {
        let issuedAt = now()
        let isJWT = application?.tokenFormat == .jwt
        let access: String
        let accessID: [UInt8]
        if isJWT {
            accessID = try SecretHasher.orderedID(at: issuedAt)
            let entry = try signingKeys.active
            let claims: JSONValue = .object([
                ("iss", .string(settings.issuer)),
                ("sub", .string(tenant == superTenant ? username : "\(username)@\(tenant)")),
                ("aud", .string(client.consumerKey)),
                ("azp", .string(client.consumerKey)),
                ("client_id", .string(client.consumerKey)),
                ("aut", .string(userType == .application ? "APPLICATION" : "APPLICATION_USER")),
                ("scope", .string(scopes.joined(separator: " "))),
                ("iat", .integer(issuedAt / 1000)),
                ("nbf", .integer(issuedAt / 1000)),
                ("exp", .integer((issuedAt + accessLifetimeMs) / 1000)),
                ("jti", .string(Base64URL.encode(accessID))),
            ] + (try authorizationClaims(client: client, application: application)))
            access = try JWT.sign(claims, with: entry)
        } else {
            (access, accessID) = try SecretHasher.newOpaqueToken(at: issuedAt)
        }
        var records: [OAuthToken] = []
        var refresh = ""
        var refreshID: [UInt8] = []
        if let refreshLifetimeMs {
            (refresh, refreshID) = try SecretHasher.newOpaqueToken(at: issuedAt)
            records.append(OAuthToken(tokenHash: SecretHasher.tokenHash(refresh), kind: .refresh, pairedTokenId: accessID, consumerKey: client.consumerKey,
                                      keyType: client.keyType, applicationId: client.applicationId, tenantDomain: tenant, username: username,
                                      userType: userType, grantType: grant, scopes: scopes, familyId: familyID, jwt: false, tokenId: refreshID,
                                      issuedAtUnixMs: issuedAt, state: .active, stateChangedAtUnixMs: issuedAt, expiresAtUnixMs: issuedAt + refreshLifetimeMs))
        }
        records.append(OAuthToken(tokenHash: SecretHasher.tokenHash(access), kind: .access, pairedTokenId: refreshID, consumerKey: client.consumerKey,
                                  keyType: client.keyType, applicationId: client.applicationId, tenantDomain: tenant, username: username,
                                  userType: userType, grantType: grant, scopes: scopes, familyId: familyID, jwt: isJWT, tokenId: accessID,
                                  issuedAtUnixMs: issuedAt, state: .active, stateChangedAtUnixMs: issuedAt, expiresAtUnixMs: issuedAt + accessLifetimeMs))
        let issued = IssuedToken(accessToken: access, refreshToken: refresh, tokenType: "Bearer", expiresInSeconds: accessLifetimeMs / 1000,
                                 scopes: scopes, issuedAtUnixMs: issuedAt)
        return Minted(issued: issued, records: records)
    }

    /// Stores new token records, sharing commits with concurrent issues.
    func store(_ records: [OAuthToken]) async throws {
        try await database.database.writeGrouped { [self] txn in
            for record in records { try database.tokens.insert(record, in: &txn) }
        }
    }

    func lifetimeMs(requested: Int64, client: Int64, default fallback: Int64) -> Int64 {
        let ceiling = client > 0 ? client : fallback
        return (requested > 0 ? min(requested, ceiling) : ceiling) * 1000
    }

    func application(of client: OAuthClient) throws -> Application? {
        client.applicationId.isEmpty ? nil : try database.application(id: client.applicationId)
    }

    func userRoles(_ username: String, tenant: String) throws -> [String] {
        do { return try users.user(named: username, tenant: tenant).roles } catch where error.code == .notFound { return [] }
    }

    // MARK: Scopes

    /// The requested scopes the user may have: those defined by the APIs
    /// the application subscribes to, where the scope names no roles or
    /// the user holds one of them (WSO2's scope-to-role binding). Unknown
    /// scopes are dropped; with none left the token gets `default`.
    func grantedScopes(_ requested: [String], roles: [String], tenant: String, applicationID: String) throws -> [String] {
        let wanted = requested.reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
        guard !wanted.isEmpty else { return ["default"] }
        let held = Set(roles.map(Self.normalizedRole))
        var bindings: [String: [String]] = [:]
        if !applicationID.isEmpty {
            try database.database.read { txn in
                for subscription in try database.subscriptions.all(index: ApiManagerDatabase.subscriptionsByApplicationApi,
                                                                   prefix: Key(.string(applicationID)), in: txn) {
                    guard let api = try database.apis.get(Key(.string(subscription.apiId)), in: txn) else { continue }
                    for scope in api.scopes { bindings[scope.key, default: []] += scope.roles }
                }
            }
        }
        let granted = wanted.filter { scope in
            guard let roles = bindings[scope] else { return false }
            return roles.isEmpty || roles.contains { held.contains(Self.normalizedRole($0)) }
        }
        return granted.isEmpty ? ["default"] : granted
    }

    /// WSO2 writes built-in roles as `Internal/subscriber`; ours are `subscriber`.
    static func normalizedRole(_ role: String) -> String {
        let lower = role.lowercased()
        return lower.hasPrefix("internal/") ? String(lower.dropFirst("internal/".count)) : lower
    }
}
