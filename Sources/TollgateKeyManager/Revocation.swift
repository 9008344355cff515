import FoundationEssentials
import LMDBKit
public import RPCCore
public import TollgateProto
import TollgateStorage

extension KeyManager {
    /// RFC 7009 for an authenticated client. A token not issued to it is
    /// left alone and answered like an unknown one (not an error), so
    /// revocation reveals no more than introspection does. Returns how many
    /// tokens were revoked.
    public func revoke(token: String, hint: TokenKind, client: OAuthClient) async throws(OAuthError) -> Int {
        let hash = SecretHasher.tokenHash(token)
        let stored: OAuthToken?
        do { stored = try database.database.read { try database.tokens.get(Key(.bytes(hash)), in: $0) } } catch { throw OAuthError.server(error) }
        guard let stored, stored.consumerKey == client.consumerKey else { return 0 }
        do { return try await revoke(tokenHash: hash) } catch { throw OAuthError.server(error) }
    }

    /// Revokes a token by its hash, with its pair (an access token's
    /// refresh token) or, for a refresh token, its whole grant, and
    /// announces the access tokens on the revocation feed.
    public func revoke(tokenHash hash: [UInt8]) async throws(RPCError) -> Int {
        let timestamp = now()
        let count = try await RPCError.catching {
            try await database.database.write { [self] txn -> Int in
                guard let token = try database.tokens.get(Key(.bytes(hash)), in: txn) else { return 0 }
                var targets = [token]
                if token.kind == .refresh && !token.familyId.isEmpty {
                    targets = try database.tokens.all(index: ApiManagerDatabase.tokensByFamily, prefix: Key(.bytes(token.familyId)), in: txn)
                } else if !token.pairedTokenHash.isEmpty, let paired = try database.tokens.get(Key(.bytes(token.pairedTokenHash)), in: txn) {
                    targets.append(paired)
                }
                var revoked = 0
                for var target in targets where target.state == .active || target.state == .inactive {
                    let wasActive = target.state == .active
                    target.state = .revoked
                    target.stateChangedAtUnixMs = timestamp
                    _ = try database.tokens.put(target, in: &txn)
                    if wasActive {
                        revoked += 1
                        if target.kind == .access { try revocations.append(.tokenHash(target.tokenHash), in: &txn) }
                    }
                }
                return revoked
            }
        }
        if count > 0 { revocations.committed() }
        return count
    }

    /// Whether a stored token is usable now, and if not why.
    func liveness(of token: OAuthToken, client: OAuthClient?, at timestamp: Int64) -> Bool {
        guard token.state == .active, let client else { return false }
        if let expires = token.expiresAtUnixMs, expires <= timestamp { return false }
        return token.issuedAtUnixMs >= client.tokensRevokedBeforeUnixMs
    }

    /// RFC 7662: what a token is, or only `active: false`.
    public func introspect(token: String) throws(RPCError) -> IntrospectResponse {
        let hash = SecretHasher.tokenHash(token)
        let timestamp = now()
        return try RPCError.catching {
            try database.database.read { txn in
                guard let stored = try database.tokens.get(Key(.bytes(hash)), in: txn) else { return IntrospectResponse(active: false) }
                let client = try database.clients.get(Key(.string(stored.consumerKey)), in: txn)
                guard liveness(of: stored, client: client, at: timestamp) else { return IntrospectResponse(active: false) }
                return IntrospectResponse(active: true, kind: stored.kind, clientId: stored.consumerKey, username: stored.username,
                                          tenantDomain: stored.tenantDomain, keyType: stored.keyType, scopes: stored.scopes,
                                          issuedAtUnixMs: stored.issuedAtUnixMs, applicationId: stored.applicationId,
                                          expiresAtUnixMs: stored.expiresAtUnixMs)
            }
        }
    }

    /// The token record behind a bearer value, for callers checking ownership.
    public func storedToken(_ token: String) throws(RPCError) -> OAuthToken? {
        let hash = SecretHasher.tokenHash(token)
        return try RPCError.catching { try database.database.read { try database.tokens.get(Key(.bytes(hash)), in: $0) } }
    }

    // MARK: Purge

    /// Deletes tokens and codes no longer worth keeping, at most `limit`
    /// per transaction, so a purge never holds the writer for long.
    /// Returns how many records it deleted.
    public func purge(limit: Int = 500) async throws -> Int {
        let timestamp = now()
        let retention = settings.inactiveTokenRetentionSeconds * 1000
        return try await database.database.write { [self] txn -> Int in
            var doomed: [OAuthToken] = []
            try database.tokens.forEach(index: ApiManagerDatabase.tokensByPurgeTime, in: txn) { token in
                let since = token.expiresAtUnixMs ?? token.stateChangedAtUnixMs
                // Index order is by that instant: stop at the first one still kept.
                guard since + retention <= timestamp else { return false }
                doomed.append(token)
                return doomed.count < limit
            }
            for token in doomed { _ = try database.tokens.delete(token, in: &txn) }
            var codes: [AuthorizationCode] = []
            try database.authorizationCodes.forEach(index: ApiManagerDatabase.codesByExpiry, in: txn) { code in
                guard code.expiresAtUnixMs + retention <= timestamp else { return false }
                codes.append(code)
                return codes.count < limit
            }
            for code in codes { _ = try database.authorizationCodes.delete(code, in: &txn) }
            return doomed.count + codes.count
        }
    }
}
