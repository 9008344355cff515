import RPCCore
public import RoleCore
import Synchronization
import TollgateProto
import TollgateStorage
public import TollgateUsers

/// Settings of the WSO2-compatible Thrift services (the `thrift_*` keys of
/// the `[keymanager]` section; docs/thrift-key-validation.md).
public struct ThriftSettings: Sendable, Hashable {
    /// Roles whose users may obtain a Thrift session (a gateway's account).
    public var authenticatorRoles: [String] = ["admin"]
    /// Sliding expiry of a session: WSO2's `ThriftSessionTimeout`, 30 minutes.
    public var sessionTimeoutMs: Int64 = 30 * 60 * 1000
    /// A message whose first byte arrived must be complete within this.
    public var readTimeoutSeconds = 30
    /// Most connections served at once on the `thrift` listener.
    public var maxConnections = 1000
    /// Whether the `thrift` listener requires a client certificate from the cluster CA.
    public var requireClientCertificate = false

    public init() {}

    static let keys: [ConfigSectionSpec.Key] = [
        // Comma-separated role names, e.g. "admin, gateway".
        .init("thrift_authenticator_roles", .string),
        .init("thrift_session_timeout_seconds", .integer(1...86_400)),
        .init("thrift_read_timeout_seconds", .integer(1...3600)),
        .init("thrift_max_connections", .integer(1...100_000)),
        .init("thrift_require_client_certificate", .boolean),
    ]

    public init(from section: ConfigSection) {
        if let roles = section.string("thrift_authenticator_roles") {
            authenticatorRoles = roles.split(separator: ",").map { $0.trimmingWhitespace() }.filter { !$0.isEmpty }
        }
        if let seconds = section.integer("thrift_session_timeout_seconds") { sessionTimeoutMs = Int64(seconds) * 1000 }
        if let seconds = section.integer("thrift_read_timeout_seconds") { readTimeoutSeconds = seconds }
        if let count = section.integer("thrift_max_connections") { maxConnections = count }
        if let required = section.boolean("thrift_require_client_certificate") { requireClientCertificate = required }
    }
}

extension Substring {
    func trimmingWhitespace() -> String {
        String(drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }
}

/// WSO2's Thrift sessions over `userdb`: `authenticate` opens one for a
/// user holding one of the configured roles; every key-validation call
/// checks its session and slides its expiry. Sessions are `userdb`
/// records, so every keymanager sharing the database accepts them.
public final class ThriftSessions: Sendable {
    let users: UserDirectory
    private let settingsState: Mutex<ThriftSettings>
    /// When each session's last use was written, by its hash: the sliding
    /// expiry is written at most every ``slideInterval``, not per call.
    private let lastSlid = Mutex<[[UInt8]: Int64]>([:])

    public init(users: UserDirectory, settings: ThriftSettings) {
        self.users = users
        self.settingsState = Mutex(settings)
    }

    public var settings: ThriftSettings { settingsState.withLock { $0 } }

    public func update(_ settings: ThriftSettings) { settingsState.withLock { $0 = settings } }

    /// A quarter of the timeout, at most a minute.
    var slideIntervalMs: Int64 { min(60_000, settings.sessionTimeoutMs / 4) }

    /// WSO2's `AuthenticationException` message; the same for every
    /// refusal, so it never tells whether the account exists.
    static func refusal(_ username: String) -> String { "Invalid User : \(username)" }

    /// A new session id for `username` (`user@tenant` names a tenant), or
    /// the refusal message.
    public func authenticate(username: String, password: String, source: String) async -> Result<String, ThriftAuthenticationFailure> {
        let settings = self.settings
        do {
            let result = try await users.login(username: username, password: password, defaultTenant: superTenant, origin: .thriftAuthenticator,
                                               idleTimeoutMs: settings.sessionTimeoutMs, source: source)
            guard result.user.roles.contains(where: settings.authenticatorRoles.contains) else {
                try? await users.logout(sessionID: result.session.tokenHash)
                return .failure(ThriftAuthenticationFailure(message: Self.refusal(username)))
            }
            return .success(result.token)
        } catch {
            return .failure(ThriftAuthenticationFailure(message: Self.refusal(username)))
        }
    }

    /// Whether `sessionID` is a live session of a permitted user; slides
    /// its expiry when it is.
    public func check(_ sessionID: String) async -> Bool {
        guard !sessionID.isEmpty, let principal = try? users.user(forSessionToken: sessionID),
              principal.roles.contains(where: settings.authenticatorRoles.contains), let hash = principal.sessionID else { return false }
        let now = UserDirectory.systemTimeMs()
        let interval = slideIntervalMs
        let due = lastSlid.withLock { slid -> Bool in
            guard now - (slid[hash] ?? 0) >= interval else { return false }
            // Forget sessions not used for a timeout, so the table stays small.
            if slid.count > 10_000 { slid = slid.filter { now - $0.value < settings.sessionTimeoutMs } }
            slid[hash] = now
            return true
        }
        if due { try? await users.slideSession(token: sessionID) }
        return true
    }
}

public struct ThriftAuthenticationFailure: Error, Sendable, Hashable {
    public let message: String
}
