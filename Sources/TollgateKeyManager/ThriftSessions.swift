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
///
/// Checks are cached in memory, as WSO2 keeps its sessions: a session found
/// live is not read again while nothing in `userdb` changed (its last
/// committed transaction, written by any process sharing it) and its live-
/// until time has not passed. A logout, revocation, role or tenant change
/// anywhere on the host is a write, so the next call reads the session
/// again; the sliding expiry is written back lazily (see ``check(_:)``).
public final class ThriftSessions: Sendable {
    let users: UserDirectory
    private let settingsState: Mutex<(settings: ThriftSettings, generation: Int)>
    /// When each session's last use was written, by its hash: the sliding
    /// expiry is written at most every ``slideIntervalMs``, not per call.
    private let lastSlid = Mutex<[[UInt8]: Int64]>([:])
    /// Sessions found live, by session id.
    private let live = Mutex<[String: LiveSession]>([:])

    /// A session check's result, valid while `userdb` holds what it read.
    private struct LiveSession {
        let hash: [UInt8]
        /// `userdb`'s change mark when it was read.
        let mark: Int
        /// The settings' generation it was judged with (the permitted roles).
        let generation: Int
        /// Its end or idle deadline as read.
        let liveUntilMs: Int64
    }

    /// Most sessions remembered; more are read from `userdb` each call.
    static let maxCachedSessions = 10_000

    public init(users: UserDirectory, settings: ThriftSettings) {
        self.users = users
        self.settingsState = Mutex((settings, 0))
    }

    public var settings: ThriftSettings { settingsState.withLock { $0.settings } }

    public func update(_ settings: ThriftSettings) {
        settingsState.withLock { $0 = (settings, $0.generation + 1) }
        live.withLock { $0.removeAll() }
    }

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
    /// its expiry when it is. The answer is what reading `userdb` now would
    /// give: a remembered one is used only while `userdb` is unchanged and
    /// its deadline has not passed. The last use is written at most every
    /// ``slideIntervalMs`` (that write changes `userdb`, so the session is
    /// read once more afterwards, with its new deadline). Never suspends:
    /// it runs on a connection's event loop, so the slide is written by a
    /// task of its own (the answer does not depend on it).
    public func check(_ sessionID: String) -> Bool {
        guard !sessionID.isEmpty else { return false }
        let now = users.currentTimeMs
        // Read before `userdb` is: a write racing the read costs one more read later, never a stale answer.
        let mark = users.changeMark
        let (settings, generation) = settingsState.withLock { $0 }
        let hash: [UInt8]
        if let known = live.withLock({ $0[sessionID] }), known.mark == mark, known.generation == generation, now < known.liveUntilMs {
            hash = known.hash
        } else {
            guard let (principal, liveUntil) = try? users.liveSession(token: sessionID),
                  principal.roles.contains(where: settings.authenticatorRoles.contains), let sessionHash = principal.sessionID else {
                live.withLock { _ = $0.removeValue(forKey: sessionID) }
                return false
            }
            hash = sessionHash
            live.withLock { live in
                if live.count >= Self.maxCachedSessions, live[sessionID] == nil {
                    live = live.filter { $0.value.mark == mark && now < $0.value.liveUntilMs }
                    if live.count >= Self.maxCachedSessions { return }
                }
                live[sessionID] = LiveSession(hash: sessionHash, mark: mark, generation: generation, liveUntilMs: liveUntil)
            }
        }
        let interval = min(60_000, settings.sessionTimeoutMs / 4)
        let due = lastSlid.withLock { slid -> Bool in
            guard now - (slid[hash] ?? 0) >= interval else { return false }
            // Forget sessions not used for a timeout, so the table stays small.
            if slid.count > 10_000 { slid = slid.filter { now - $0.value < settings.sessionTimeoutMs } }
            slid[hash] = now
            return true
        }
        if due {
            let users = self.users
            Task { try? await users.slideSession(token: sessionID) }
        }
        return true
    }
}

public struct ThriftAuthenticationFailure: Error, Sendable, Hashable {
    public let message: String
}
