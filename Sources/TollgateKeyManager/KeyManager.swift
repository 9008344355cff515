import FoundationEssentials
public import LMDBKit
import OpenSSLKit
public import RPCCore
import Synchronization
public import TollgateProto
public import TollgateStorage
public import TollgateUsers

/// Token lifetimes and the issuer name, from the node's `[keymanager]` section.
public struct KeyManagerSettings: Sendable, Hashable {
    public var applicationTokenLifetimeSeconds: Int64 = 3600
    public var userTokenLifetimeSeconds: Int64 = 3600
    public var refreshTokenLifetimeSeconds: Int64 = 86_400
    public var authorizationCodeLifetimeSeconds: Int64 = 300
    /// How long a token that is no longer active (revoked, used, expired)
    /// is kept so that a replay is recognised, after which it is purged.
    public var inactiveTokenRetentionSeconds: Int64 = 86_400
    /// The `iss` of JWTs and the RFC 8414 metadata.
    public var issuer = "https://localhost:8743"

    public init() {}
}

/// The OAuth 2.0 authorization server and key validation over `apimgtdb`:
/// clients, tokens, authorization codes, the revocation feed. The HTTPS
/// endpoints, the RPC service and the store all go through it.
///
/// Nothing secret is stored in clear: tokens, refresh tokens and codes as
/// SHA-256, client secrets through the password KDF. A verified client
/// secret is remembered in memory as a salted SHA-256 for the process's
/// life, so the token endpoint does not pay for scrypt on every call.
public final class KeyManager: Sendable {
    public let database: ApiManagerDatabase
    public let users: UserDirectory
    public let revocations: RevocationLog
    public let signingKeys: SigningKeySet
    let hasher: SecretHasher
    let settingsState: Mutex<KeyManagerSettings>
    let now: @Sendable () -> Int64
    private let verifiedSecrets = Mutex<[String: VerifiedSecret]>([:])
    /// Decoded records key validation reads again and again, kept with their
    /// bytes (see ``RecordMemo``): validation decodes only what changed.
    let memos = ValidationMemos()

    struct ValidationMemos: Sendable {
        let clients = RecordMemo<OAuthClient>()
        let applicationKeys = RecordMemo<ApplicationKey>()
        let applications = RecordMemo<Application>()
        let apis = RecordMemo<Api>()
        let subscriptions = RecordMemo<Subscription>()
        let policies = RecordMemo<ThrottlePolicy>()
    }
    private let pepper: [UInt8]

    struct VerifiedSecret {
        /// The stored hash's salt: a regenerated secret has a new one.
        let salt: [UInt8]
        let digest: [UInt8]
    }

    static let maxRememberedSecrets = 100_000

    public init(database: ApiManagerDatabase, users: UserDirectory, revocations: RevocationLog, signingKeys: SigningKeySet,
                hasher: SecretHasher = SecretHasher(), settings: KeyManagerSettings = KeyManagerSettings(),
                now: (@Sendable () -> Int64)? = nil) throws {
        self.database = database
        self.users = users
        self.revocations = revocations
        self.signingKeys = signingKeys
        self.hasher = hasher
        self.settingsState = Mutex(settings)
        self.now = now ?? { Int64(Date().timeIntervalSince1970 * 1000) }
        self.pepper = try SecureRandom.bytes(32)
    }

    public var settings: KeyManagerSettings { settingsState.withLock { $0 } }

    public func updateSettings(_ settings: KeyManagerSettings) { settingsState.withLock { $0 = settings } }

    // MARK: Clients

    /// A client ready to store: consumer key and secret made (or the given
    /// ones adopted), the secret hashed. Hashing is slow, so it happens
    /// before the write transaction that stores the client.
    public func prepareClient(_ template: OAuthClient, existingSecret: String = "") async throws(RPCError) -> (client: OAuthClient, secret: String) {
        var client = template
        try Self.checkGrants(client)
        let secret: String
        if existingSecret.isEmpty {
            guard client.consumerKey.isEmpty else {
                throw RPCError(.invalidArgument, "a consumer key is given only with its secret, to adopt an existing client")
            }
            client.consumerKey = try RPCError.catching { Base64URL.encode(try SecureRandom.bytes(18)) }
            secret = try RPCError.catching { Base64URL.encode(try SecureRandom.bytes(24)) }
        } else {
            guard (8...256).contains(client.consumerKey.count), client.consumerKey.allSatisfy({ $0.isASCII && !$0.isWhitespace && $0 != ":" }) else {
                throw RPCError(.invalidArgument, "an adopted consumer key must be 8 to 256 printable ASCII characters without ':'")
            }
            guard existingSecret.count >= 8 else { throw RPCError(.invalidArgument, "an adopted consumer secret must have at least 8 characters") }
            secret = existingSecret
        }
        let hasher = self.hasher
        client.consumerSecretHash = try await Self.derive { try hasher.hash(secret) }
        let timestamp = now()
        client.createdAtUnixMs = timestamp
        client.updatedAtUnixMs = timestamp
        client.tokensRevokedBeforeUnixMs = 0
        return (client, secret)
    }

    /// Stores a prepared client in the caller's transaction.
    public func insertClient(_ client: OAuthClient, in txn: inout WriteTransaction) throws {
        do {
            try database.clients.insert(client, in: &txn)
        } catch StorageError.alreadyExists, StorageError.uniqueConflict {
            throw RPCError(.alreadyExists, "consumer key \(client.consumerKey) is already registered")
        }
    }

    public func registerClient(_ template: OAuthClient, existingSecret: String = "") async throws(RPCError) -> (client: OAuthClient, secret: String) {
        let (client, secret) = try await prepareClient(template, existingSecret: existingSecret)
        try await RPCError.catching { try await database.database.write { [self] txn in try insertClient(client, in: &txn) } }
        return (Self.redacted(client), secret)
    }

    public func client(_ consumerKey: String) throws(RPCError) -> OAuthClient {
        guard let client = try RPCError.catching({ try database.client(consumerKey: consumerKey) }) else {
            throw RPCError(.notFound, "no OAuth client has consumer key \(consumerKey)")
        }
        return client
    }

    /// Replaces grant types, callback and lifetimes; the secret stays.
    public func updateClient(_ changes: OAuthClient) async throws(RPCError) -> OAuthClient {
        try Self.checkGrants(changes)
        let timestamp = now()
        let updated = try await RPCError.catching {
            try await database.database.write { [self] txn -> OAuthClient in
                guard var client = try database.clients.get(Key(.string(changes.consumerKey)), in: txn) else {
                    throw RPCError(.notFound, "no OAuth client has consumer key \(changes.consumerKey)")
                }
                client.grantTypes = changes.grantTypes
                client.callbackUrl = changes.callbackUrl
                client.applicationTokenValiditySeconds = changes.applicationTokenValiditySeconds
                client.userTokenValiditySeconds = changes.userTokenValiditySeconds
                client.refreshTokenValiditySeconds = changes.refreshTokenValiditySeconds
                client.updatedAtUnixMs = timestamp
                _ = try database.clients.put(client, in: &txn)
                return client
            }
        }
        return Self.redacted(updated)
    }

    /// Deletes the client in the caller's transaction: its tokens stop
    /// validating at once (they name a client that is gone) and are purged
    /// later; gateways are told through the revocation feed.
    public func deleteClient(_ consumerKey: String, in txn: inout WriteTransaction) throws {
        guard try database.clients.delete(Key(.string(consumerKey)), in: &txn) != nil else { return }
        // The application's key row goes with it, so new keys can be generated.
        if let key = try database.applicationKeys.get(ApiManagerDatabase.applicationKeysByConsumerKey, Key(.string(consumerKey)), in: txn) {
            _ = try database.applicationKeys.delete(key, in: &txn)
        }
        try revocations.append(.consumerKey(consumerKey), in: &txn)
    }

    public func deleteClient(_ consumerKey: String) async throws(RPCError) {
        _ = try client(consumerKey)
        try await RPCError.catching { try await database.database.write { [self] txn in try deleteClient(consumerKey, in: &txn) } }
        revocations.committed()
        forgetSecret(consumerKey)
    }

    /// A new secret; every token issued under the old one is revoked.
    public func regenerateSecret(_ consumerKey: String) async throws(RPCError) -> (client: OAuthClient, secret: String) {
        _ = try client(consumerKey)
        let secret = try RPCError.catching { Base64URL.encode(try SecureRandom.bytes(24)) }
        let hasher = self.hasher
        let hash = try await Self.derive { try hasher.hash(secret) }
        let timestamp = now()
        let updated = try await RPCError.catching {
            try await database.database.write { [self] txn -> OAuthClient in
                guard var client = try database.clients.get(Key(.string(consumerKey)), in: txn) else {
                    throw RPCError(.notFound, "no OAuth client has consumer key \(consumerKey)")
                }
                client.consumerSecretHash = hash
                client.updatedAtUnixMs = timestamp
                // Tokens issued up to this millisecond are revoked.
                client.tokensRevokedBeforeUnixMs = timestamp + 1
                _ = try database.clients.put(client, in: &txn)
                try revocations.append(.consumerKey(consumerKey), in: &txn)
                return client
            }
        }
        revocations.committed()
        forgetSecret(consumerKey)
        return (Self.redacted(updated), secret)
    }

    static func checkGrants(_ client: OAuthClient) throws(RPCError) {
        if client.grantTypes.contains(.implicit) {
            throw RPCError(.invalidArgument, "the implicit grant is not offered (OAuth 2.0 Security BCP): use authorization_code with PKCE")
        }
        if client.grantTypes.contains(.authorizationCode) {
            guard !client.callbackUrl.isEmpty else {
                throw RPCError(.invalidArgument, "the authorization_code grant needs a callback URL (--callback)")
            }
            try Self.checkRedirectURI(client.callbackUrl)
        } else if !client.callbackUrl.isEmpty {
            try Self.checkRedirectURI(client.callbackUrl)
        }
        for lifetime in [client.applicationTokenValiditySeconds, client.userTokenValiditySeconds, client.refreshTokenValiditySeconds] where lifetime < 0 {
            throw RPCError(.invalidArgument, "token lifetimes are seconds, 0 for the default; \(lifetime) is negative")
        }
    }

    /// An absolute https URL, or http on a loopback host (RFC 8252 §7.3),
    /// without a fragment (RFC 6749 §3.1.2).
    public static func checkRedirectURI(_ uri: String) throws(RPCError) {
        let lower = uri.lowercased()
        let loopback = ["http://localhost", "http://127.0.0.1", "http://[::1]"].contains { lower.hasPrefix($0) }
        guard lower.hasPrefix("https://") || loopback, !uri.contains("#"), !uri.contains(where: { $0.isWhitespace }) else {
            throw RPCError(.invalidArgument, "callback URL \(uri) must be an absolute https URL (or http on localhost) without a fragment")
        }
    }

    static func redacted(_ client: OAuthClient) -> OAuthClient {
        var client = client
        client.consumerSecretHash = nil
        return client
    }

    // MARK: Client authentication

    /// The client whose id and secret these are, or `invalid_client`.
    public func authenticateClient(id: String, secret: String) async throws(OAuthError) -> OAuthClient {
        let invalid = OAuthError(.invalidClient, "client authentication failed: unknown client or wrong secret")
        guard !id.isEmpty, !secret.isEmpty else { throw OAuthError(.invalidClient, "client authentication is required (HTTP Basic or client_id and client_secret)") }
        let stored: OAuthClient?
        do { stored = try database.client(consumerKey: id) } catch { throw OAuthError.server(error) }
        guard let client = stored, let hash = client.consumerSecretHash else {
            // As long as a real check, so timing does not reveal unknown clients.
            let hasher = self.hasher
            _ = try? await Self.derive { try hasher.hash(secret) }
            throw invalid
        }
        let digest = SHA256.hash(pepper + Array(secret.utf8))
        let remembered = verifiedSecrets.withLock { $0[id] }
        if let remembered, remembered.salt == hash.salt {
            guard constantTimeEquals(remembered.digest, digest) else { throw invalid }
            return client
        }
        let hasher = self.hasher
        let matches: Bool
        do { matches = try await Self.derive { try hasher.verify(secret, against: hash) } } catch { throw OAuthError.server(error) }
        guard matches else { throw invalid }
        verifiedSecrets.withLock { secrets in
            if secrets.count >= Self.maxRememberedSecrets { secrets.removeAll(keepingCapacity: true) }
            secrets[id] = VerifiedSecret(salt: hash.salt, digest: digest)
        }
        return client
    }

    func forgetSecret(_ consumerKey: String) {
        _ = verifiedSecrets.withLock { $0.removeValue(forKey: consumerKey) }
    }

    static func derive<Result: Sendable>(_ body: @escaping @Sendable () throws -> Result) async throws(RPCError) -> Result {
        try await RPCError.catching { try await BlockingExecutor.keyDerivation.run(body) }
    }
}
