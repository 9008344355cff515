public import RoleCore
import TollgateProto
public import RPCCore
public import ServiceLifecycle
import TollgateServices
public import TollgateStorage
import TollgateUsers

/// The keymanager role: KeyManagerService over RPC, the OAuth 2.0
/// authorization server on its own HTTPS listener (`[listen] oauth`, which
/// also serves WSO2's Thrift authenticator), WSO2's Thrift key validation
/// (`[listen] thrift`), and the purge of expired tokens. Needs the users
/// module before it.
public struct KeyManagerModule: RoleModule {
    public static let name = "keymanager"
    public static let databases: Set<LogicalDatabaseName> = [.userdb, .apimgtdb]
    public static let listenerNames = ["oauth", "thrift"]
    public static let defaultOAuthEndpoint = "127.0.0.1:8743"
    public static let configSection: ConfigSectionSpec? = ConfigSectionSpec(name: "keymanager", keys: [
        .init("application_token_validity_seconds", .integer(60...31_536_000)),
        .init("user_token_validity_seconds", .integer(60...31_536_000)),
        .init("refresh_token_validity_seconds", .integer(60...31_536_000)),
        .init("authorization_code_validity_seconds", .integer(10...3600)),
        .init("inactive_token_retention_hours", .integer(0...8760)),
        // The `iss` of JWTs and the metadata's base URL, e.g. https://keys.example.com:8743
        .init("issuer", .string),
    ] + ThriftSettings.keys, check: { section in
        guard let issuer = section.string("issuer") else { return [] }
        guard issuer.hasPrefix("https://"), !issuer.hasSuffix("/"), !issuer.contains("?"), !issuer.contains("#") else {
            return [(key: "issuer", problem: "must be an https URL without a trailing slash, query or fragment, e.g. https://keys.example.com:8743")]
        }
        return []
    })

    public let keyManager: KeyManager
    public let thriftSessions: ThriftSessions

    public init(context: NodeContext) async throws {
        keyManager = try KeyManager.shared(in: context)
        thriftSessions = ThriftSessions(users: keyManager.users, settings: ThriftSettings(from: context.section("keymanager")))
    }

    public static let rpcServices = [KeyManagerServiceDescriptor.serviceName]

    public var methods: [RPCMethodHandler] { KeyManagerRPCService(keyManager: keyManager).handlers }

    public var listeners: [ListenerDeclaration] {
        [ListenerDeclaration(name: "oauth", kind: .http(OAuthEndpoints(keyManager: keyManager, thriftSessions: thriftSessions)), security: .tls,
                             defaultEndpoint: nil, applicationProtocols: ["http/1.1"]),
         // WSO2 gateways connect to 10397 by default; it listens when `[listen] thrift` is set.
         ListenerDeclaration(name: "thrift", kind: .stream(ThriftKeyValidationService(keyManager: keyManager, sessions: thriftSessions)),
                             security: thriftSessions.settings.requireClientCertificate ? .mutualTLS : .tls, defaultEndpoint: nil)]
    }

    public var services: [any Service] { [TokenPurge(keyManager: keyManager)] }

    public func reload(_ section: ConfigSection) async throws -> [String] {
        keyManager.updateSettings(KeyManager.settings(from: section, issuerFallback: keyManager.settings.issuer))
        let thrift = ThriftSettings(from: section)
        let before = thriftSessions.settings
        thriftSessions.update(thrift)
        return thrift.requireClientCertificate != before.requireClientCertificate ? ["keymanager.thrift_require_client_certificate"] : []
    }
}

extension KeyManager {
    /// The one key manager of this process, shared by the keymanager and
    /// store modules (both issue and revoke tokens over the same apimgtdb).
    public static func shared(in context: NodeContext) throws -> KeyManager {
        try context.shared(KeyManager.self) {
            let apimgtdb = try context.require(context.databases.apimgtdb, .apimgtdb, for: "keymanager")
            guard let users = context.lookup(UserDirectory.self) else {
                throw NodeStartError("the key manager needs the users module (userdb) assembled before it")
            }
            let revocations = context.shared(RevocationLog.self) { RevocationLog(database: apimgtdb) }
            let keysDirectory = context.databases.dataDirectory + "/oauth-signing-keys"
            let signingKeys: SigningKeySet
            do {
                signingKeys = try SigningKeySet(directory: keysDirectory)
            } catch {
                throw NodeStartError("JWT signing keys in \(keysDirectory): \(error)")
            }
            let endpoint = context.listenEndpoints["oauth"] ?? KeyManagerModule.defaultOAuthEndpoint
            // The listener's own address, unless it listens on every address.
            let fallback = "https://" + (endpoint.hasPrefix("0.0.0.0:") || endpoint.hasPrefix("[::]:")
                                         ? "localhost:" + (endpoint.split(separator: ":").last.map(String.init) ?? "8743") : endpoint)
            return try KeyManager(database: apimgtdb, users: users, revocations: revocations, signingKeys: signingKeys,
                                  hasher: context.lookup(SecretHasher.self) ?? SecretHasher(),
                                  settings: settings(from: context.section("keymanager"), issuerFallback: fallback))
        }
    }

    public static func settings(from section: ConfigSection, issuerFallback: String) -> KeyManagerSettings {
        var settings = KeyManagerSettings()
        if let value = section.integer("application_token_validity_seconds") { settings.applicationTokenLifetimeSeconds = Int64(value) }
        if let value = section.integer("user_token_validity_seconds") { settings.userTokenLifetimeSeconds = Int64(value) }
        if let value = section.integer("refresh_token_validity_seconds") { settings.refreshTokenLifetimeSeconds = Int64(value) }
        if let value = section.integer("authorization_code_validity_seconds") { settings.authorizationCodeLifetimeSeconds = Int64(value) }
        if let value = section.integer("inactive_token_retention_hours") { settings.inactiveTokenRetentionSeconds = Int64(value) * 3600 }
        settings.issuer = section.string("issuer") ?? issuerFallback
        return settings
    }
}

/// Deletes expired tokens and codes in the background, a few hundred per
/// transaction, so the token table holds live tokens and recent history
/// only, however many are issued.
struct TokenPurge: Service {
    let keyManager: KeyManager

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                // Drain in small transactions, yielding the writer between them.
                while !Task.isCancelled, let purged = try? await keyManager.purge(limit: 500), purged == 500 {}
                try? await Task.sleep(for: .seconds(60))
            }
        }
    }
}
