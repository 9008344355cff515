public import LMDBKit
public import TollgateProto

/// `userdb`, the User Manager database: tenants, users, roles and sessions.
/// Opened by the publisher, store and key manager roles.
public struct UserDatabase: Sendable {
    public static let schema = Schema(name: LogicalDatabaseName.userdb.rawValue, version: 1)

    public static let tenantTable = TableDefinition<Tenant>("tenants", primaryKey: { tenantKey($0.domain) })

    /// Users of a tenant sharing an email address (not unique: WSO2 allows it).
    public static let usersByEmail = IndexDefinition<User>("by_email", unique: false) { user in
        user.email.isEmpty ? nil : Key(.string(user.tenantDomain), .string(user.email.lowercased()))
    }
    /// Users holding a role, for listing a role's members.
    public static let usersByRole = IndexDefinition<User>("by_role", unique: false) { user in
        user.roles.map { Key(.string(user.tenantDomain), .string($0)) }
    }
    public static let userTable = TableDefinition<User>(
        "users", primaryKey: { userKey($0.tenantDomain, $0.username) }, indexes: [usersByEmail, usersByRole])

    public static let roleTable = TableDefinition<UserRole>("roles", primaryKey: { roleKey($0.tenantDomain, $0.name) })

    public static let sessionsByUser = IndexDefinition<Session>("by_user", unique: false) { session in
        userKey(session.tenantDomain, session.username)
    }
    /// Sessions by expiry time, so expired ones can be purged in order.
    public static let sessionsByExpiry = IndexDefinition<Session>("by_expiry", unique: false) { session in
        Key(.int64(session.expiresAtUnixMs))
    }
    public static let sessionTable = TableDefinition<Session>(
        "sessions", primaryKey: { Key(.bytes($0.tokenHash)) }, indexes: [sessionsByUser, sessionsByExpiry])

    public let database: LogicalDatabase
    public let tenants: Table<Tenant>
    public let users: Table<User>
    public let roles: Table<UserRole>
    public let sessions: Table<Session>

    /// Opens `<dataDirectory>/userdb`.
    public static func open(in dataDirectory: String, options: Environment.Options = .init()) throws -> UserDatabase {
        try LogicalDatabase.open(schema: schema, in: dataDirectory, options: options) { database in
            UserDatabase(
                database: database,
                tenants: try database.table(tenantTable),
                users: try database.table(userTable),
                roles: try database.table(roleTable),
                sessions: try database.table(sessionTable))
        }
    }

    // MARK: Keys

    /// Tenant domains are case-insensitive, as DNS names are.
    public static func tenantKey(_ domain: String) -> Key { Key(.string(domain.lowercased())) }
    public static func userKey(_ tenant: String, _ username: String) -> Key { Key(.string(tenant.lowercased()), .string(username)) }
    public static func roleKey(_ tenant: String, _ name: String) -> Key { Key(.string(tenant.lowercased()), .string(name)) }

    // MARK: Lookups

    public func tenant(_ domain: String) throws -> Tenant? {
        try database.environment.read { try tenants.get(Self.tenantKey(domain), in: $0) }
    }

    public func user(_ username: String, tenant: String) throws -> User? {
        try database.environment.read { try users.get(Self.userKey(tenant, username), in: $0) }
    }

    public func users(tenant: String, pageSize: Int, pageToken: [UInt8] = []) throws -> Page<User> {
        try database.environment.read { try users.list(prefix: Self.tenantKey(tenant), pageSize: pageSize, pageToken: pageToken, in: $0) }
    }

    public func users(withEmail email: String, tenant: String) throws -> [User] {
        try database.environment.read { try users.all(index: Self.usersByEmail, prefix: Key(.string(tenant), .string(email.lowercased())), in: $0) }
    }

    public func users(withRole role: String, tenant: String) throws -> [User] {
        try database.environment.read { try users.all(index: Self.usersByRole, prefix: Key(.string(tenant), .string(role)), in: $0) }
    }

    public func role(_ name: String, tenant: String) throws -> UserRole? {
        try database.environment.read { try roles.get(Self.roleKey(tenant, name), in: $0) }
    }

    public func roles(tenant: String) throws -> [UserRole] {
        try database.environment.read { try roles.list(prefix: Self.tenantKey(tenant), pageSize: Int.max, in: $0).items }
    }

    /// The session a bearer token opens, looked up by the token's SHA-256.
    public func session(token: String) throws -> Session? {
        try database.environment.read { try sessions.get(Key(.bytes(SecretHasher.tokenHash(token))), in: $0) }
    }

    public func sessions(of username: String, tenant: String) throws -> [Session] {
        try database.environment.read { try sessions.all(index: Self.sessionsByUser, prefix: Self.userKey(tenant, username), in: $0) }
    }

    /// Removes sessions that expired before `nowUnixMs`; returns how many.
    @discardableResult
    public func purgeExpiredSessions(before nowUnixMs: Int64) throws -> Int {
        try database.environment.write { txn in
            var expired: [Session] = []
            try sessions.forEach(index: Self.sessionsByExpiry, in: txn) { session in
                guard session.expiresAtUnixMs < nowUnixMs else { return false }
                expired.append(session)
                return true
            }
            for session in expired { try sessions.delete(session, in: &txn) }
            return expired.count
        }
    }
}
