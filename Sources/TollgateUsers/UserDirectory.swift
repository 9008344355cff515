public import RPCCore
public import TollgateProto
public import TollgateStorage
import FoundationEssentials
import Synchronization
import LMDBKit
import Logging
import TollgateServices

/// Rules for accounts and sessions.
public struct UserPolicy: Sendable, Hashable {
    /// How long a session lasts after login.
    public var sessionLifetimeMs: Int64 = 8 * 3600 * 1000
    /// Consecutive failed logins that lock an account (WSO2's default is 5).
    public var maxFailedLogins: UInt32 = 5
    /// How long an automatic lock lasts.
    public var lockoutMs: Int64 = 15 * 60 * 1000
    public var minPasswordLength = 8
    public var maxPasswordLength = 128

    public init() {}
}

/// Users, roles, tenants and sessions over `userdb`: the logic behind
/// UserService and the session check every RPC server runs.
public final class UserDirectory: SessionVerifier {
    // Sendable through SessionVerifier: every stored property is immutable or a Mutex.
    public let database: UserDatabase
    let hasher: SecretHasher
    private let policyState: Mutex<UserPolicy>
    public var policy: UserPolicy { policyState.withLock { $0 } }
    /// Milliseconds since 1970; a parameter so tests can move time.
    let now: @Sendable () -> Int64
    /// Failed sign-ins by source address, in memory: what throttles
    /// guessing without locking an administrator out (``SourceFailures``).
    private let failuresBySource = Mutex<[String: SourceFailures]>([:])

    /// Failed sign-ins from one source address (any account). From the
    /// `max_failed_logins`-th on, the source waits before its next attempt,
    /// twice as long after each further failure (1 s, 2 s, 4 s, … up to the
    /// lockout); a success forgets it.
    struct SourceFailures {
        var count = 0
        var lastFailureUnixMs: Int64 = 0
        var retryAtUnixMs: Int64 = 0
    }

    public init(database: UserDatabase, hasher: SecretHasher = SecretHasher(), policy: UserPolicy = UserPolicy(),
                now: @escaping @Sendable () -> Int64 = UserDirectory.systemTimeMs) {
        self.database = database
        self.hasher = hasher
        self.policyState = Mutex(policy)
        self.now = now
    }

    /// New sessions and sign-ins follow `policy` from now on.
    public func updatePolicy(_ policy: UserPolicy) {
        policyState.withLock { $0 = policy }
    }

    public static let systemTimeMs: @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) }

    /// The time sign-ins and sessions are measured by, when whoever
    /// assembles the node offers one (``NodeContext/provide(_:as:)``):
    /// tests move it instead of waiting.
    public struct Clock: Sendable {
        public let nowMs: @Sendable () -> Int64
        public init(nowMs: @escaping @Sendable () -> Int64) { self.nowMs = nowMs }
    }

    // MARK: Bootstrap

    /// What ``bootstrap(admin:)`` did.
    public enum BootstrapOutcome: Sendable, Hashable {
        case createdAdmin(String)
        case adminExists
        /// No administrator exists and none was configured: nobody can sign in yet.
        case noAdmin
    }

    /// Makes sure the super tenant and the built-in roles exist, and creates
    /// the first administrator from `admin` when the tenant has none. A
    /// configured admin is never overwritten once created.
    @discardableResult
    public func bootstrap(admin: (username: String, password: String)?) async throws -> BootstrapOutcome {
        let timestamp = now()
        try await database.database.write { [self] txn in
            if try database.tenants.get(UserDatabase.tenantKey(superTenant), in: txn) == nil {
                try database.tenants.insert(Tenant(domain: superTenant, status: .active, createdAtUnixMs: timestamp, updatedAtUnixMs: timestamp), in: &txn)
            }
            try installBuiltinRoles(tenant: superTenant, at: timestamp, in: &txn)
        }
        if !(try database.users(withRole: BuiltinRole.admin, tenant: superTenant)).isEmpty { return .adminExists }
        guard let admin else { return .noAdmin }
        var user = User()
        user.username = admin.username
        user.roles = [BuiltinRole.admin]
        do throws(RPCError) {
            _ = try await createUser(user, password: admin.password, tenant: superTenant)
        } catch {
            // Another node sharing this userdb may have created it first.
            guard error.code == .alreadyExists else { throw error }
            return .adminExists
        }
        return .createdAdmin(admin.username)
    }

    private func installBuiltinRoles(tenant: String, at timestamp: Int64, in txn: inout WriteTransaction) throws {
        for name in BuiltinRole.all where try database.roles.get(UserDatabase.roleKey(tenant, name), in: txn) == nil {
            try database.roles.insert(UserRole(tenantDomain: tenant, name: name, description: BuiltinRole.description(of: name),
                                               permissions: BuiltinRole.permissions(of: name, inSuperTenant: tenant == superTenant), builtin: true,
                                               createdAtUnixMs: timestamp, updatedAtUnixMs: timestamp), in: &txn)
        }
    }

    // MARK: Sessions (checked on every call)

    public func user(forSessionToken token: String) throws(RPCError) -> UserPrincipal? {
        try liveSession(token: token)?.principal
    }

    /// A live session's user, and until when the session stays live unless
    /// it is used (its idle deadline, or its end if that comes first), both
    /// as of `now`.
    public func liveSession(token: String) throws(RPCError) -> (principal: UserPrincipal, liveUntilUnixMs: Int64)? {
        let hash = SecretHasher.tokenHash(token)
        let timestamp = now()
        return try RPCError.catching {
            try database.database.environment.read { txn -> (UserPrincipal, Int64)? in
                guard let session = try database.sessions.get(Key(.bytes(hash)), in: txn), !session.revoked,
                      session.expiresAtUnixMs > timestamp,
                      session.idleTimeoutMs == 0 || session.lastUsedAtUnixMs + session.idleTimeoutMs > timestamp,
                      let tenant = try database.tenants.get(UserDatabase.tenantKey(session.tenantDomain), in: txn), tenant.status == .active
                else { return nil }
                let principal = UserPrincipal(username: session.username, tenant: session.tenantDomain, roles: session.roles,
                                              permissions: try permissions(of: session.roles, tenant: session.tenantDomain, in: txn),
                                              sessionID: hash, sessionExpiresAtUnixMs: session.expiresAtUnixMs)
                let idleUntil = session.idleTimeoutMs == 0 ? session.expiresAtUnixMs : session.lastUsedAtUnixMs + session.idleTimeoutMs
                return (principal, min(session.expiresAtUnixMs, idleUntil))
            }
        }
    }

    /// The directory's clock (Unix ms), the one sessions are judged by.
    public var currentTimeMs: Int64 { now() }

    /// Changes whenever anything in `userdb` was written, by any process
    /// sharing it (the last committed transaction's id): a cache of session
    /// checks stays exact while it is unchanged.
    public var changeMark: Int { database.database.environment.lastTransactionID }

    func permissions<T: TransactionReading & ~Copyable>(of roles: [String], tenant: String, in txn: borrowing T) throws -> [String] {
        var permissions: [String] = []
        for name in roles {
            guard let role = try database.roles.get(UserDatabase.roleKey(tenant, name), in: txn) else { continue }
            for permission in role.permissions where !permissions.contains(permission) { permissions.append(permission) }
        }
        return permissions
    }

    // MARK: Login

    /// Splits `name@tenant` when the suffix is a tenant; otherwise the whole
    /// string is a username in `defaultTenant` (usernames may be emails).
    public func resolve(username: String, defaultTenant: String) throws(RPCError) -> (username: String, tenant: String) {
        if let at = username.lastIndex(of: "@") {
            let domain = String(username[username.index(after: at)...]).lowercased()
            if try RPCError.catching({ try database.tenant(domain) }) != nil {
                return (String(username[..<at]), domain)
            }
        }
        return (username, defaultTenant.lowercased())
    }

    public struct LoginResult: Sendable {
        public let token: String
        public let session: Session
        public let user: User
        public let permissions: [String]
    }

    /// Checks the password and opens a session. Wrong passwords count
    /// towards a lock; the error never says whether the user exists.
    /// - Parameter source: the caller's IP address, whose failures are
    ///   throttled together; nil for paths that do not know it (they share one throttle).
    public func login(username qualified: String, password: String, defaultTenant: String, origin: SessionOrigin = .rpcLogin,
                      idleTimeoutMs: Int64 = 0, source: String? = nil) async throws(RPCError) -> LoginResult {
        let (verified, tenantDomain) = try await verifyPassword(username: qualified, password: password, defaultTenant: defaultTenant, source: source)
        var user = verified
        let timestamp = now()
        let token = try RPCError.catching { try SecretHasher.newToken() }
        let session = Session(tokenHash: SecretHasher.tokenHash(token), tenantDomain: tenantDomain, username: user.username, roles: user.roles,
                              origin: origin, issuedAtUnixMs: timestamp, expiresAtUnixMs: timestamp + policy.sessionLifetimeMs,
                              idleTimeoutMs: idleTimeoutMs, lastUsedAtUnixMs: timestamp)
        user.failedLoginCount = 0
        if let stored = user.passwordHash, hasher.needsRehash(stored), let upgraded = try? await derive({ [hasher] in try hasher.hash(password) }) { user.passwordHash = upgraded }
        let stored = user
        let granted = try await RPCError.catching {
            try await database.database.write { [self] txn in
                _ = try database.users.put(stored, in: &txn)
                try database.sessions.insert(session, in: &txn)
                return try self.permissions(of: stored.roles, tenant: tenantDomain, in: txn)
            }
        }
        return LoginResult(token: token, session: session, user: Self.redacted(stored), permissions: granted)
    }

    /// Checks a password without opening a session (the OAuth password
    /// grant and sign-in page), with the same lockout and messages as
    /// ``login(username:password:defaultTenant:origin:idleTimeoutMs:source:)``.
    /// Returns the user without its password hash.
    /// - Parameter source: the caller's IP address, whose failures are
    ///   throttled together; nil for paths that do not know it (they share one throttle).
    public func authenticate(username qualified: String, password: String, defaultTenant: String, source: String?) async throws(RPCError) -> User {
        var (user, _) = try await verifyPassword(username: qualified, password: password, defaultTenant: defaultTenant, source: source)
        if user.failedLoginCount > 0 {
            user.failedLoginCount = 0
            let stored = user
            try await RPCError.catching { try await database.database.write { [self] txn in _ = try database.users.put(stored, in: &txn) } }
        }
        return Self.redacted(user)
    }

    /// The password check shared by sign-in paths: the user as stored when
    /// the password matches; a failed attempt is counted (and may lock the
    /// account) before the error is thrown.
    private func verifyPassword(username qualified: String, password: String, defaultTenant: String, source: String?) async throws(RPCError) -> (User, String) {
        let (username, tenantDomain) = try resolve(username: qualified, defaultTenant: defaultTenant)
        let invalid = RPCError(.unauthenticated, "invalid username or password")
        let sourceKey = source ?? ""
        // A throttled source is answered as a wrong password, in the same
        // time, without its password being tried or counted.
        guard failuresBySource.withLock({ ($0[sourceKey]?.retryAtUnixMs ?? 0) <= now() }) else {
            _ = try? await derive { [hasher] in try hasher.hash(password) }
            throw invalid
        }
        do {
            let verified = try await checkPassword(username: username, tenantDomain: tenantDomain, password: password, invalid: invalid)
            failuresBySource.withLock { _ = $0.removeValue(forKey: sourceKey) }
            return verified
        } catch {
            if error.code == .unauthenticated { recordFailure(from: sourceKey) }
            throw error
        }
    }

    private func recordFailure(from source: String) {
        let timestamp = now(), policy = self.policy
        failuresBySource.withLock { failures in
            // Sources quiet for a lockout are forgotten, so the table stays small.
            if failures.count > 10_000 { failures = failures.filter { timestamp - $0.value.lastFailureUnixMs < policy.lockoutMs } }
            var entry = failures[source] ?? SourceFailures()
            entry.count += 1
            entry.lastFailureUnixMs = timestamp
            let beyond = entry.count - Int(policy.maxFailedLogins)
            if beyond >= 0 {
                entry.retryAtUnixMs = timestamp + min(policy.lockoutMs, Int64(1000) << Int64(min(beyond, 30)))
            }
            failures[source] = entry
        }
    }

    /// Whether `roles` of `tenant` grant administration (`/permission/admin`).
    private func isPrivileged(_ roles: [String], tenant: String) throws -> Bool {
        let granted = try database.database.environment.read { txn in try permissions(of: roles, tenant: tenant, in: txn) }
        return granted.contains { Permission.admin == $0 || Permission.admin.hasPrefix($0 + "/") }
    }

    private func checkPassword(username: String, tenantDomain: String, password: String, invalid: RPCError) async throws(RPCError) -> (User, String) {
        guard let tenant = try RPCError.catching({ try database.tenant(tenantDomain) }) else { throw invalid }
        guard tenant.status == .active else { throw RPCError(.permissionDenied, "tenant \(tenantDomain) is deactivated; sign-in is refused") }
        guard var user = try RPCError.catching({ try database.user(username, tenant: tenantDomain) }) else {
            // Spend the same time as a real check, so timing does not reveal unknown users.
            _ = try? await derive { [hasher] in try hasher.hash(password) }
            throw invalid
        }
        // A locked or disabled account answers as a wrong password does, in
        // the same time: the answer never tells an account exists (issue 11).
        // Administrators unlock accounts (`tollctl user status`); the lock
        // expires by itself after the lockout.
        let timestamp = now()
        if user.status == .locked, let until = user.lockedUntilUnixMs, until <= timestamp {
            user.status = .active
            user.lockedUntilUnixMs = nil
            user.failedLoginCount = 0
        }
        guard user.status == .active else {
            _ = try? await derive { [hasher] in try hasher.hash(password) }
            throw invalid
        }
        let storedHash = user.passwordHash ?? SecretHash()
        let matches = try await derive { [hasher] in try hasher.verify(password, against: storedHash) }
        guard matches else {
            // Administrators are never locked: a lock anyone can trigger
            // would lock them out. Their guessers are throttled by source
            // address instead (``SourceFailures``).
            guard try !RPCError.catching({ try isPrivileged(user.roles, tenant: tenantDomain) }) else { throw invalid }
            user.failedLoginCount += 1
            if user.failedLoginCount >= policy.maxFailedLogins {
                user.status = .locked
                user.lockedUntilUnixMs = timestamp + policy.lockoutMs
            }
            user.updatedAtUnixMs = timestamp
            let failed = user
            try await RPCError.catching { try await database.database.write { [self] txn in _ = try database.users.put(failed, in: &txn) } }
            throw invalid
        }
        return (user, tenantDomain)
    }

    /// Records that a session with a sliding expiry was used now, so it
    /// stays valid for another idle timeout (on every node sharing this
    /// userdb). A revoked or removed session stays so.
    public func slideSession(token: String) async throws(RPCError) {
        let hash = SecretHasher.tokenHash(token)
        let timestamp = now()
        try await RPCError.catching {
            try await database.database.write { [self] txn in
                guard var session = try database.sessions.get(Key(.bytes(hash)), in: txn), !session.revoked,
                      session.lastUsedAtUnixMs < timestamp else { return }
                session.lastUsedAtUnixMs = timestamp
                _ = try database.sessions.put(session, in: &txn)
            }
        }
    }

    public func logout(sessionID: [UInt8]) async throws(RPCError) {
        try await RPCError.catching { try await database.database.write { [self] txn in _ = try database.sessions.delete(Key(.bytes(sessionID)), in: &txn) } }
    }

    // MARK: Users

    static func redacted(_ user: User) -> User {
        var copy = user
        copy.passwordHash = nil
        return copy
    }

    func checkPassword(_ password: String, username: String) throws(RPCError) {
        guard password.count >= policy.minPasswordLength, password.count <= policy.maxPasswordLength else {
            throw RPCError(.invalidArgument, "the password must have \(policy.minPasswordLength) to \(policy.maxPasswordLength) characters")
        }
        guard password.contains(where: \.isLetter), password.contains(where: \.isNumber) else {
            throw RPCError(.invalidArgument, "the password must contain at least one letter and one digit")
        }
        guard password.lowercased() != username.lowercased() else {
            throw RPCError(.invalidArgument, "the password must differ from the username")
        }
    }

    static func checkUsername(_ name: String) throws(RPCError) {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+@")
        guard (1...64).contains(name.count), name.allSatisfy(allowed.contains), name.first != "@", name.last != "@" else {
            throw RPCError(.invalidArgument, "username \"\(name)\" is invalid: use 1 to 64 of letters, digits and . _ - + @")
        }
    }

    static func checkEmail(_ email: String) throws(RPCError) {
        guard !email.isEmpty else { return }
        let parts = email.split(separator: "@", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, parts[1].contains("."), !parts[1].hasPrefix("."), !parts[1].hasSuffix("."),
              !email.contains(where: { $0.isWhitespace }) else {
            throw RPCError(.invalidArgument, "email \"\(email)\" is not an email address")
        }
    }

    /// Creates a user in `tenant`, who must not exist, holding existing roles.
    public func createUser(_ template: User, password: String, tenant: String) async throws(RPCError) -> User {
        try Self.checkUsername(template.username)
        try Self.checkEmail(template.email)
        try checkPassword(password, username: template.username)
        let hash = try await derive { [hasher] in try hasher.hash(password) }
        let timestamp = now()
        var user = template
        user.tenantDomain = tenant
        user.status = .active
        user.lockedUntilUnixMs = nil
        user.failedLoginCount = 0
        user.passwordHash = hash
        user.passwordChangedAtUnixMs = timestamp
        user.createdAtUnixMs = timestamp
        user.updatedAtUnixMs = timestamp
        let stored = user
        try await RPCError.catching {
            try await database.database.write { [self] txn in
                for role in stored.roles where try database.roles.get(UserDatabase.roleKey(tenant, role), in: txn) == nil {
                    throw RPCError(.invalidArgument, "role \(role) does not exist in tenant \(tenant)")
                }
                do {
                    try database.users.insert(stored, in: &txn)
                } catch StorageError.alreadyExists {
                    throw RPCError(.alreadyExists, "user \(stored.username) already exists in tenant \(tenant)")
                }
            }
        }
        return Self.redacted(stored)
    }

    public func user(named username: String, tenant: String) throws(RPCError) -> User {
        guard let user = try RPCError.catching({ try database.user(username, tenant: tenant) }) else {
            throw RPCError(.notFound, "no user \(username) in tenant \(tenant)")
        }
        return Self.redacted(user)
    }

    /// Replaces profile claims and status. ACTIVE unlocks and clears failed logins.
    public func updateUser(_ changes: User, tenant: String) async throws(RPCError) -> User {
        try Self.checkEmail(changes.email)
        return try await modifyUser(changes.username, tenant: tenant) { user throws(RPCError) in
            user.email = changes.email
            user.givenName = changes.givenName
            user.familyName = changes.familyName
            user.claims = changes.claims
            switch changes.status {
            case .unspecified:
                break
            case .active:
                user.status = .active
                user.lockedUntilUnixMs = nil
                user.failedLoginCount = 0
            case .locked, .disabled:
                user.status = changes.status
                user.lockedUntilUnixMs = nil
            case .unrecognized(let number):
                throw RPCError(.invalidArgument, "unknown user status \(number)")
            }
        }
    }

    /// Reads, changes and writes one user in one transaction.
    func modifyUser(_ username: String, tenant: String, _ change: @escaping @Sendable (inout User) throws(RPCError) -> Void) async throws(RPCError) -> User {
        let timestamp = now()
        return try await RPCError.catching {
            try await database.database.write { [self] txn in
                guard var user = try database.users.get(UserDatabase.userKey(tenant, username), in: txn) else {
                    throw RPCError(.notFound, "no user \(username) in tenant \(tenant)")
                }
                try change(&user)
                user.updatedAtUnixMs = timestamp
                _ = try database.users.put(user, in: &txn)
                return Self.redacted(user)
            }
        }
    }

    public func deleteUser(_ username: String, tenant: String, by caller: UserPrincipal) async throws(RPCError) {
        guard !(caller.username == username && caller.tenant == tenant) else {
            throw RPCError(.failedPrecondition, "you cannot delete your own account")
        }
        try await RPCError.catching {
            try await database.database.write { [self] txn in
                guard let user = try database.users.get(UserDatabase.userKey(tenant, username), in: txn) else {
                    throw RPCError(.notFound, "no user \(username) in tenant \(tenant)")
                }
                if user.roles.contains(BuiltinRole.admin) {
                    try requireAnotherAdmin(than: username, tenant: tenant, in: txn)
                }
                _ = try database.users.delete(user, in: &txn)
                for session in try database.sessions.all(index: UserDatabase.sessionsByUser, prefix: UserDatabase.userKey(tenant, username), in: txn) {
                    _ = try database.sessions.delete(session, in: &txn)
                }
            }
        }
    }

    private func requireAnotherAdmin<T: TransactionReading & ~Copyable>(than username: String, tenant: String, in txn: borrowing T) throws {
        let admins = try database.users.all(index: UserDatabase.usersByRole, prefix: Key(.string(tenant.lowercased()), .string(BuiltinRole.admin)), in: txn)
        guard admins.contains(where: { $0.username != username && $0.status == .active }) else {
            throw RPCError(.failedPrecondition, "\(username) is the last active administrator of tenant \(tenant)")
        }
    }

    public func listUsers(tenant: String, prefix: String, role: String, pageSize: Int, pageToken: [UInt8]) throws(RPCError) -> Page<User> {
        let size = pageSize == 0 ? 100 : min(pageSize, 1000)
        return try RPCError.catching {
            try database.database.environment.read { txn in
                if !role.isEmpty {
                    let page = try database.users.list(index: UserDatabase.usersByRole, prefix: Key(.string(tenant.lowercased()), .string(role)),
                                                       pageSize: size, pageToken: pageToken, in: txn)
                    return Page(items: page.items.filter { $0.username.hasPrefix(prefix) }.map(Self.redacted), nextPageToken: page.nextPageToken)
                }
                let keyPrefix = prefix.isEmpty ? UserDatabase.tenantKey(tenant) : Key(.string(tenant.lowercased()), .stringPrefix(prefix))
                let page = try database.users.list(prefix: keyPrefix, pageSize: size, pageToken: pageToken, in: txn)
                return Page(items: page.items.map(Self.redacted), nextPageToken: page.nextPageToken)
            }
        }
    }

    /// Sets a password. Every session of the user is revoked except `keeping`.
    public func changePassword(_ username: String, tenant: String, current: String?, new password: String, keeping: [UInt8]?) async throws(RPCError) {
        try checkPassword(password, username: username)
        let hash = try await derive { [hasher] in try hasher.hash(password) }
        if let current {
            guard let user = try RPCError.catching({ try database.user(username, tenant: tenant) }),
                  try await derive({ [hasher] in try hasher.verify(current, against: user.passwordHash ?? SecretHash()) }) else {
                throw RPCError(.permissionDenied, "the current password is wrong")
            }
        }
        let timestamp = now()
        _ = try await modifyUser(username, tenant: tenant) { user in
            user.passwordHash = hash
            user.passwordChangedAtUnixMs = timestamp
        }
        try await RPCError.catching {
            try await database.database.write { [self] txn in
                for session in try database.sessions.all(index: UserDatabase.sessionsByUser, prefix: UserDatabase.userKey(tenant, username), in: txn)
                where session.tokenHash != keeping {
                    _ = try database.sessions.delete(session, in: &txn)
                }
            }
        }
    }

    public func assignRoles(_ username: String, tenant: String, add: [String], remove: [String]) async throws(RPCError) -> User {
        let timestamp = now()
        return try await RPCError.catching {
            try await database.database.write { [self] txn in
                guard var user = try database.users.get(UserDatabase.userKey(tenant, username), in: txn) else {
                    throw RPCError(.notFound, "no user \(username) in tenant \(tenant)")
                }
                for role in add where try database.roles.get(UserDatabase.roleKey(tenant, role), in: txn) == nil {
                    throw RPCError(.invalidArgument, "role \(role) does not exist in tenant \(tenant)")
                }
                if remove.contains(BuiltinRole.admin) && user.roles.contains(BuiltinRole.admin) && !add.contains(BuiltinRole.admin) {
                    try requireAnotherAdmin(than: username, tenant: tenant, in: txn)
                }
                user.roles.removeAll { remove.contains($0) }
                for role in add where !user.roles.contains(role) { user.roles.append(role) }
                user.updatedAtUnixMs = timestamp
                _ = try database.users.put(user, in: &txn)
                // Open sessions carry the roles they were opened with: refresh them.
                for var session in try database.sessions.all(index: UserDatabase.sessionsByUser, prefix: UserDatabase.userKey(tenant, username), in: txn) {
                    session.roles = user.roles
                    _ = try database.sessions.put(session, in: &txn)
                }
                return Self.redacted(user)
            }
        }
    }

    // MARK: Roles

    public func createRole(_ template: UserRole, tenant: String) async throws(RPCError) -> UserRole {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/")
        guard (1...64).contains(template.name.count), template.name.allSatisfy(allowed.contains) else {
            throw RPCError(.invalidArgument, "role name \"\(template.name)\" is invalid: use 1 to 64 of letters, digits and . _ - /")
        }
        for permission in template.permissions {
            guard permission.hasPrefix("/permission/"), !permission.hasSuffix("/"), !permission.contains("//") else {
                throw RPCError(.invalidArgument, "permission \"\(permission)\" is not a path under /permission/")
            }
            if tenant != superTenant && (permission == Permission.protected || permission.hasPrefix(Permission.protected + "/")) {
                throw RPCError(.permissionDenied, "only the super tenant may grant \(permission)")
            }
        }
        let timestamp = now()
        var role = template
        role.tenantDomain = tenant
        role.builtin = false
        role.createdAtUnixMs = timestamp
        role.updatedAtUnixMs = timestamp
        let stored = role
        try await RPCError.catching {
            try await database.database.write { [self] txn in
                do {
                    try database.roles.insert(stored, in: &txn)
                } catch StorageError.alreadyExists {
                    throw RPCError(.alreadyExists, "role \(stored.name) already exists in tenant \(tenant)")
                }
            }
        }
        return stored
    }

    public func deleteRole(_ name: String, tenant: String) async throws(RPCError) {
        try await RPCError.catching {
            try await database.database.write { [self] txn in
                guard let role = try database.roles.get(UserDatabase.roleKey(tenant, name), in: txn) else {
                    throw RPCError(.notFound, "no role \(name) in tenant \(tenant)")
                }
                guard !role.builtin else { throw RPCError(.failedPrecondition, "\(name) is a built-in role and cannot be deleted") }
                let holders = try database.users.all(index: UserDatabase.usersByRole, prefix: Key(.string(tenant.lowercased()), .string(name)), in: txn)
                guard holders.isEmpty else {
                    throw RPCError(.failedPrecondition, "\(holders.count) user(s) hold role \(name); remove it from them first (tollctl user roles)")
                }
                _ = try database.roles.delete(role, in: &txn)
            }
        }
    }

    public func listRoles(tenant: String, pageSize: Int, pageToken: [UInt8]) throws(RPCError) -> Page<UserRole> {
        try RPCError.catching {
            try database.database.environment.read { txn in
                try database.roles.list(prefix: UserDatabase.tenantKey(tenant), pageSize: pageSize == 0 ? 100 : min(pageSize, 1000), pageToken: pageToken, in: txn)
            }
        }
    }

    // MARK: Tenants

    static func checkDomain(_ domain: String) throws(RPCError) {
        let labels = domain.split(separator: ".", omittingEmptySubsequences: false)
        let allowed = Set("abcdefghijklmnopqrstuvwxyz0123456789-")
        guard domain.count <= 253, labels.count >= 2,
              labels.allSatisfy({ (1...63).contains($0.count) && $0.allSatisfy(allowed.contains) && $0.first != "-" && $0.last != "-" }) else {
            throw RPCError(.invalidArgument, "tenant domain \"\(domain)\" is invalid: use a lower-case DNS name such as example.com")
        }
    }

    public func createTenant(_ request: CreateTenantRequest) async throws(RPCError) -> Tenant {
        let domain = request.domain.lowercased()
        try Self.checkDomain(domain)
        try Self.checkUsername(request.adminUsername)
        try Self.checkEmail(request.adminEmail)
        try checkPassword(request.adminPassword, username: request.adminUsername)
        let timestamp = now()
        let tenant = Tenant(domain: domain, status: .active, adminUsername: request.adminUsername, adminEmail: request.adminEmail,
                            createdAtUnixMs: timestamp, updatedAtUnixMs: timestamp)
        try await RPCError.catching {
            try await database.database.write { [self] txn in
                do {
                    try database.tenants.insert(tenant, in: &txn)
                } catch StorageError.alreadyExists {
                    throw RPCError(.alreadyExists, "tenant \(domain) already exists")
                }
                try installBuiltinRoles(tenant: domain, at: timestamp, in: &txn)
            }
        }
        var admin = User()
        admin.username = request.adminUsername
        admin.email = request.adminEmail
        admin.givenName = request.adminGivenName
        admin.familyName = request.adminFamilyName
        admin.roles = [BuiltinRole.admin]
        _ = try await createUser(admin, password: request.adminPassword, tenant: domain)
        return tenant
    }

    public func listTenants(status: TenantStatus, pageSize: Int, pageToken: [UInt8]) throws(RPCError) -> Page<Tenant> {
        try RPCError.catching {
            try database.database.environment.read { txn in
                let page = try database.tenants.list(pageSize: pageSize == 0 ? 100 : min(pageSize, 1000), pageToken: pageToken, in: txn)
                return Page(items: status == .unspecified ? page.items : page.items.filter { $0.status == status }, nextPageToken: page.nextPageToken)
            }
        }
    }

    public func setTenantStatus(_ domain: String, status: TenantStatus) async throws(RPCError) -> Tenant {
        guard status == .active || status == .inactive else { throw RPCError(.invalidArgument, "a tenant is either ACTIVE or INACTIVE") }
        guard domain.lowercased() != superTenant else { throw RPCError(.failedPrecondition, "the super tenant cannot be deactivated") }
        let timestamp = now()
        return try await RPCError.catching {
            try await database.database.write { [self] txn in
                guard var tenant = try database.tenants.get(UserDatabase.tenantKey(domain), in: txn) else {
                    throw RPCError(.notFound, "no tenant \(domain)")
                }
                tenant.status = status
                tenant.updatedAtUnixMs = timestamp
                _ = try database.tenants.put(tenant, in: &txn)
                return tenant
            }
        }
    }

    /// Runs storage work, passing status errors through and turning anything
    /// else into INTERNAL (the details are for the log, not the caller).


    /// Key derivation (scrypt, PBKDF2) on the process's KDF threads: each
    /// takes tens of milliseconds of a core, which must not be a pool thread.
    func derive<Result: Sendable>(_ body: @escaping @Sendable () throws -> Result) async throws(RPCError) -> Result {
        try await RPCError.catching { try await BlockingExecutor.keyDerivation.run(body) }
    }
}

extension UserDirectory: PermissionGrants {
    /// The tenant's roles whose permissions cover `permission` (a held path grants every path below it).
    public func roles(granting permission: String, tenant: String) -> [String] {
        var names: [String] = []
        var token: [UInt8] = []
        repeat {
            guard let page = try? listRoles(tenant: tenant, pageSize: 1000, pageToken: token) else { break }
            for role in page.items where role.permissions.contains(where: { held in
                permission == held || (permission.hasPrefix(held) && permission.dropFirst(held.count).first == "/")
            }) {
                names.append(role.name)
            }
            token = page.nextPageToken
        } while !token.isEmpty
        return names
    }
}
