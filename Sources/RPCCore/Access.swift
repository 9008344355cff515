import TollgateProto

/// A signed-in user, as a valid session (or an admin certificate) shows them.
public struct UserPrincipal: Sendable, Hashable {
    public var username: String
    public var tenant: String
    public var roles: [String]
    /// Permission paths the roles grant; a path grants everything below it.
    public var permissions: [String]
    /// The session this came from; nil when only a certificate identified the user.
    public var sessionID: [UInt8]?
    public var sessionExpiresAtUnixMs: Int64

    public init(username: String, tenant: String, roles: [String], permissions: [String], sessionID: [UInt8]?, sessionExpiresAtUnixMs: Int64) {
        self.username = username
        self.tenant = tenant
        self.roles = roles
        self.permissions = permissions
        self.sessionID = sessionID
        self.sessionExpiresAtUnixMs = sessionExpiresAtUnixMs
    }

    /// Whether the user's permissions cover `path`: a held path grants every
    /// path below it (`/permission/admin` grants everything).
    public func holds(_ path: String) -> Bool {
        permissions.contains { held in
            path == held || (path.hasPrefix(held) && path.dropFirst(held.count).first == "/")
        }
    }

    /// `name@tenant`, as users sign in.
    public var qualifiedName: String { "\(username)@\(tenant)" }
}

/// Who is calling, decided before the handler runs.
public enum Caller: Sendable, Hashable, CustomStringConvertible {
    case anonymous
    /// A cluster node, from its certificate.
    case node(id: String, roles: [String])
    case user(UserPrincipal)
    /// An admin certificate from the cluster CA (`tollgate://user/<name>`) on
    /// a node that has no user of that name (a gateway has no userdb): a
    /// cluster operator, admitted only where a rule says `operatorCertificate`.
    case certificateHolder(name: String)

    public var user: UserPrincipal? {
        if case .user(let user) = self { return user }
        return nil
    }

    public var description: String {
        switch self {
        case .anonymous: "anonymous"
        case .node(let id, let roles): "node \(id) (\(roles.joined(separator: ",")))"
        case .user(let user): "user \(user.qualifiedName)"
        case .certificateHolder(let name): "certificate holder \(name)"
        }
    }
}

/// Who may call a method. Every method of every service has one
/// (TollgateServices' `AccessTable`); a method without one is refused.
public indirect enum AccessRule: Sendable, Hashable {
    /// No identity needed (signing in).
    case anyone
    /// Any signed-in user.
    case signedIn
    /// A signed-in user whose roles grant this permission path.
    case permission(String)
    /// A cluster node running one of these roles (any node when empty).
    case node(roles: Set<String>)
    /// Anyone presenting an admin certificate from the cluster CA, whether or
    /// not this node knows the user (operators checking any node's health).
    case operatorCertificate
    /// Either rule admits the caller.
    case either(AccessRule, AccessRule)
}

/// Whether a signed-in user may act in a tenant other than their own (the
/// `x-tenant` metadata). Tenancy is the users module's policy; the access
/// controller only asks.
public protocol TenantAccessPolicy: Sendable {
    func mayAct(in tenant: String, as user: UserPrincipal) -> Bool
}

/// Which of a tenant's roles grant a permission, so a refusal can say what to
/// ask for. The users module answers (roles are its data); without it a
/// refusal names only the permission.
public protocol PermissionGrants: Sendable {
    func roles(granting permission: String, tenant: String) -> [String]
}

/// Decides who is calling and whether they may, before a handler runs.
public protocol CallAuthorizer: Sendable {
    /// The caller, or the status that refuses the call.
    func authorize(_ context: ServerCallContext) throws(RPCError) -> Caller
    /// Whether deciding reads storage (a session lookup). Such calls are
    /// authorized on the pool, never on an event loop.
    func readsStorage(_ context: ServerCallContext) -> Bool
}

/// Resolves the credentials a call carries to a user.
public protocol SessionVerifier: Sendable {
    /// The session's user, or nil if the token is unknown, expired or revoked.
    func user(forSessionToken token: String) throws(RPCError) -> UserPrincipal?
}

/// Applies docs/rpc-protocol.md §13 before a handler runs: who is calling
/// (certificate, session token), whether the method's rule admits them, and
/// which tenant the call acts in.
public struct AccessController: CallAuthorizer {
    public let rules: [String: AccessRule]
    public let sessions: (any SessionVerifier)?
    public let tenants: (any TenantAccessPolicy)?
    public let grants: (any PermissionGrants)?

    /// - Parameters:
    ///   - rules: method paths (`/service/Method`) to their rules.
    ///   - tenants: who may act in another tenant; without one, nobody may.
    ///   - grants: which roles grant a permission, named when a user lacks it.
    public init(rules: [String: AccessRule], sessions: (any SessionVerifier)?, tenants: (any TenantAccessPolicy)? = nil,
                grants: (any PermissionGrants)? = nil) {
        self.rules = rules
        self.sessions = sessions
        self.tenants = tenants
        self.grants = grants
    }

    /// The caller, or the status that refuses the call.
    public func authorize(_ context: ServerCallContext) throws(RPCError) -> Caller {
        guard let rule = rules[context.method.path] else {
            throw RPCError(.permissionDenied, "\(context.method.path) has no access rule and is refused")
        }
        let caller = try identify(context)
        guard Self.admits(rule, caller) else {
            if case .anonymous = caller {
                throw RPCError(.unauthenticated, "\(context.method.name) needs \(Self.describe(rule)); sign in with `tollctl login` or present a cluster certificate")
            }
            throw RPCError(.permissionDenied, "\(caller) may not call \(context.method.name): it needs \(Self.describe(rule))\(grantingRoles(rule, caller))")
        }
        // Acting in another tenant is the tenancy policy's decision.
        if let tenant = context.metadata["x-tenant"], let user = caller.user, tenant.lowercased() != user.tenant.lowercased() {
            guard let tenants, tenants.mayAct(in: tenant, as: user) else {
                throw RPCError(.permissionDenied, "\(user.qualifiedName) may not act in tenant \(tenant)")
            }
        }
        return caller
    }

    /// `; roles that grant it: …` for a user refused for want of a permission.
    private func grantingRoles(_ rule: AccessRule, _ caller: Caller) -> String {
        guard let grants, case .user(let user) = caller else { return "" }
        var permissions: [String] = []
        func collect(_ rule: AccessRule) {
            switch rule {
            case .permission(let path): permissions.append(path)
            case .either(let first, let second): collect(first); collect(second)
            default: break
            }
        }
        collect(rule)
        var roles: [String] = []
        for permission in permissions {
            for role in grants.roles(granting: permission, tenant: user.tenant) where !roles.contains(role) { roles.append(role) }
        }
        guard !permissions.isEmpty else { return "" }
        return roles.isEmpty ? "; no role of tenant \(user.tenant) grants it" : "; roles that grant it: \(roles.joined(separator: ", "))"
    }

    /// A session token is looked up in userdb when this node has one.
    public func readsStorage(_ context: ServerCallContext) -> Bool {
        sessions != nil && !context.metadata.values(for: "authorization").isEmpty
    }

    private func identify(_ context: ServerCallContext) throws(RPCError) -> Caller {
        let authorization = context.metadata.values(for: "authorization")
        if !authorization.isEmpty {
            // Rule 1: a bad token is refused whatever else is presented.
            guard authorization.count == 1, authorization[0].hasPrefix("Bearer "), authorization[0].count > 7 else {
                throw RPCError(.unauthenticated, "malformed authorization metadata: expected exactly one `Bearer <session token>`")
            }
            guard let sessions, let user = try sessions.user(forSessionToken: String(authorization[0].dropFirst(7))) else {
                throw RPCError(.unauthenticated, "the session token is unknown or has expired; sign in again")
            }
            return .user(user)
        }
        switch context.peer {
        case .node(let id, let roles)?:
            return .node(id: id, roles: roles)
        case .user(let name)?:
            // A certificate proves the machine, a session the person
            // (certs/README.md): an admin certificate alone is never a user.
            return .certificateHolder(name: name)
        case nil:
            return .anonymous
        }
    }

    static func admits(_ rule: AccessRule, _ caller: Caller) -> Bool {
        switch (rule, caller) {
        case (.anyone, _):
            return true
        case (.signedIn, .user):
            return true
        case (.permission(let path), .user(let user)):
            return user.holds(path)
        case (.node(let roles), .node(_, let held)):
            return roles.isEmpty || !roles.isDisjoint(with: held)
        case (.operatorCertificate, .certificateHolder), (.operatorCertificate, .user):
            return true
        case (.either(let first, let second), _):
            return admits(first, caller) || admits(second, caller)
        default:
            return false
        }
    }

    static func describe(_ rule: AccessRule) -> String {
        switch rule {
        case .anyone: "nothing"
        case .signedIn: "a signed-in user"
        case .permission(let path): "permission \(path)"
        case .node(let roles): roles.isEmpty ? "a cluster node certificate" : "a cluster node with role \(roles.sorted().joined(separator: " or "))"
        case .operatorCertificate: "an admin certificate from the cluster CA"
        case .either(let first, let second): "\(describe(first)), or \(describe(second))"
        }
    }
}
