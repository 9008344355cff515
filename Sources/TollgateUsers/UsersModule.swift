import FoundationEssentials
public import RoleCore
import TollgateProto
public import RPCCore
import Logging
import TollgateServices
public import TollgateStorage

#if canImport(Glibc)
import Glibc
#endif

/// Users, roles, tenants and sessions (UserService), for every role that
/// opens userdb. Offers the session check and the tenancy rule to the node's
/// access controller.
public struct UsersModule: RoleModule {
    public static let name = "users"
    public static let databases: Set<LogicalDatabaseName> = [.userdb]
    public static let configSection: ConfigSectionSpec? = ConfigSectionSpec(
        name: "users",
        keys: [
            .init("session_lifetime_minutes", .integer(1...43200)),
            .init("max_failed_logins", .integer(1...100)),
            .init("lockout_minutes", .integer(1...10080)),
            .init("bootstrap_admin", .string),
            .init("bootstrap_password_file", .path, readAtEveryStart: false),
        ],
        check: { section in
            let admin = section.string("bootstrap_admin"), file = section.string("bootstrap_password_file")
            guard (admin == nil) != (file == nil) else { return [] }
            return [(key: admin == nil ? "bootstrap_password_file" : "bootstrap_admin", problem: "bootstrap_admin and bootstrap_password_file go together")]
        })

    public let directory: UserDirectory

    public init(context: NodeContext) async throws {
        let userdb = try context.require(context.databases.userdb, .userdb, for: Self.name)
        let section = context.section("users")
        // A hasher offered by whoever assembles the node (tests use fast settings).
        directory = UserDirectory(database: userdb, hasher: context.lookup(SecretHasher.self) ?? SecretHasher(), policy: Self.policy(section),
                                  now: context.lookup(UserDirectory.Clock.self)?.nowMs ?? UserDirectory.systemTimeMs)
        do {
            // The password file is read only while no administrator exists (the
            // first start): afterwards the node never touches it, and the
            // operator may delete it once the password is changed.
            var outcome = try await directory.bootstrap(admin: nil)
            if outcome == .noAdmin, let name = section.string("bootstrap_admin"), let file = section.string("bootstrap_password_file") {
                outcome = try await directory.bootstrap(admin: (name, try Self.readPassword(file)))
            }
            switch outcome {
            case .createdAdmin(let name): context.logger.notice("created the first administrator", metadata: ["user": "\(name)"])
            case .noAdmin: context.logger.warning("no administrator exists and users.bootstrap_admin is not set: nobody can sign in")
            case .adminExists: break
            }
        } catch let error as RPCError {
            throw NodeStartError("users.bootstrap_admin: \(error.message)")
        }
        context.provide(directory as any SessionVerifier, as: (any SessionVerifier).self)
        context.provide(directory as any PermissionGrants, as: (any PermissionGrants).self)
        // The store (sign-up) and key manager (password grant, sign-in page) use it directly.
        context.provide(directory, as: UserDirectory.self)
        context.provide(SuperTenantAdministration() as any TenantAccessPolicy, as: (any TenantAccessPolicy).self)
    }

    public static let rpcServices = [UserServiceDescriptor.serviceName]

    public var methods: [RPCMethodHandler] { UserService(directory: directory).methodHandlers }

    /// Session lifetime and lockout apply to new sign-ins at once.
    public func reload(_ section: ConfigSection) async throws -> [String] {
        directory.updatePolicy(Self.policy(section))
        return []
    }

    public static func policy(_ section: ConfigSection) -> UserPolicy {
        var policy = UserPolicy()
        if let minutes = section.integer("session_lifetime_minutes") { policy.sessionLifetimeMs = Int64(minutes) * 60_000 }
        if let count = section.integer("max_failed_logins") { policy.maxFailedLogins = UInt32(count) }
        if let minutes = section.integer("lockout_minutes") { policy.lockoutMs = Int64(minutes) * 60_000 }
        return policy
    }

    static func readPassword(_ path: String) throws -> String {
        guard let file = fopen(path, "r") else {
            throw NodeStartError("users.bootstrap_password_file: \(path) cannot be read: \(String(cString: strerror(errno)))")
        }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = fread(&chunk, 1, chunk.count, file)
            if count <= 0 { break }
            bytes += chunk[..<count]
        }
        var text = String(decoding: bytes, as: UTF8.self)
        while text.last == "\n" || text.last == "\r" { text.removeLast() }
        return text
    }
}
