import ArgumentParser
import Foundation
import RPCCore
import TollgateProto
import TollgateServices

/// Reads a new password: first line of standard input, or asked twice on the terminal.
func readNewPassword(fromStdin: Bool, prompt: String) throws -> String {
    if fromStdin {
        guard let line = readLine(strippingNewline: true), !line.isEmpty else { throw CommandFailure("no password on standard input") }
        return line
    }
    let first = try readPassword(prompt: prompt)
    let second = try readPassword(prompt: "Again: ")
    guard first == second else { throw CommandFailure("the two passwords differ") }
    return first
}

func userRow(_ user: User) -> [String] {
    let status: String = switch user.status {
    case .active: "active"
    case .locked: user.lockedUntilUnixMs != nil ? "locked (for a while)" : "locked"
    case .disabled: "disabled"
    default: "?"
    }
    return [user.username, user.email, user.roles.joined(separator: ","), status]
}

func userJSON(_ user: User) -> [String: Any] {
    ["username": user.username, "tenant": user.tenantDomain, "email": user.email, "given_name": user.givenName,
     "family_name": user.familyName, "roles": user.roles, "status": userRow(user)[3], "failed_logins": user.failedLoginCount]
}

struct UserCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "user", abstract: "Users of the tenant.",
        subcommands: [UserList.self, UserShow.self, UserCreate.self, UserDelete.self, UserRoles.self, UserSetStatus.self, UserPassword.self])
}

struct UserList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List users.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Only holders of this role.") var role: String = ""
    @Option(help: "Only usernames starting with this.") var prefix: String = ""
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let users = try await NodeSession.with(connection) { node in
            try await node.run {
                try await UserServiceClient(node.connection, defaultOptions: node.callOptions)
                    .listUsers(ListUsersRequest(usernamePrefix: prefix, role: role, page: PageRequest(pageSize: 1000))).users
            }
        }
        switch output {
        case .json: try printJSON(users.map(userJSON))
        case .table: printTable(["USER", "EMAIL", "ROLES", "STATUS"], users.map(userRow))
        }
    }
}

struct UserShow: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one user.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The username.") var name: String
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let fetched = try await NodeSession.with(connection) { node in
            try await node.run { try await UserServiceClient(node.connection, defaultOptions: node.callOptions).getUser(GetUserRequest(username: name)).user }
        }
        guard let user = fetched else { throw CommandFailure("the node returned no user for \(name)") }
        switch output {
        case .json: try printJSON(userJSON(user))
        case .table:
            let fullName = [user.givenName, user.familyName].filter { !$0.isEmpty }.joined(separator: " ")
            printFields([
                ("user", "\(user.username)@\(user.tenantDomain)"),
                ("name", fullName.isEmpty ? "-" : fullName),
                ("email", user.email.isEmpty ? "-" : user.email),
                ("roles", listOrDash(user.roles)),
                ("status", userRow(user)[3]),
                ("failed logins", String(user.failedLoginCount)),
            ])
        }
    }
}

struct UserCreate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create", abstract: "Create a user.",
        discussion: "The password is asked twice on the terminal, or read from the first line of standard input with --password-stdin.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The username.") var name: String
    @Option(help: "A role to give (repeat; admin, creator, publisher, subscriber or a custom one).") var role: [String] = []
    @Option(help: "Email address.") var email: String = ""
    @Option(name: .customLong("given-name"), help: "Given name.") var givenName: String = ""
    @Option(name: .customLong("family-name"), help: "Family name.") var familyName: String = ""
    @Flag(name: .customLong("password-stdin"), help: "Read the password from standard input.") var passwordStdin = false

    func run() async throws {
        let password = try readNewPassword(fromStdin: passwordStdin, prompt: "Password for \(name): ")
        let user = User(username: name, email: email, givenName: givenName, familyName: familyName, roles: role)
        let created = try await NodeSession.with(connection) { node in
            try await node.run {
                try await UserServiceClient(node.connection, defaultOptions: node.callOptions).createUser(CreateUserRequest(user: user, password: password)).user
            }
        }
        print("created user \(created?.username ?? name)@\(created?.tenantDomain ?? "?") with roles \(role.isEmpty ? "(none)" : role.joined(separator: ", "))")
    }
}

struct UserDelete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a user and end their sessions.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The username.") var name: String

    func run() async throws {
        try await NodeSession.with(connection) { node in
            _ = try await node.run { try await UserServiceClient(node.connection, defaultOptions: node.callOptions).deleteUser(DeleteUserRequest(username: name)) }
        }
        print("deleted user \(name)")
    }
}

struct UserRoles: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "roles", abstract: "Give or take roles; open sessions follow at once.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The username.") var name: String
    @Option(help: "A role to give (repeat).") var add: [String] = []
    @Option(help: "A role to take away (repeat).") var remove: [String] = []

    func validate() throws {
        guard !add.isEmpty || !remove.isEmpty else { throw ValidationError("give --add or --remove") }
    }

    func run() async throws {
        let user = try await NodeSession.with(connection) { node in
            try await node.run {
                try await UserServiceClient(node.connection, defaultOptions: node.callOptions)
                    .assignRoles(AssignRolesRequest(username: name, addRoles: add, removeRoles: remove)).user
            }
        }
        print("\(name) now holds: \((user?.roles ?? []).joined(separator: ", "))")
    }
}

struct UserSetStatus: AsyncParsableCommand {
    enum State: String, ExpressibleByArgument, CaseIterable { case active, disabled, locked }
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Unlock (active), disable or lock a user.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The username.") var name: String
    @Argument(help: "active, disabled or locked.") var state: State

    func run() async throws {
        let updated = try await NodeSession.with(connection) { node in
            let client = UserServiceClient(node.connection, defaultOptions: node.callOptions)
            return try await node.run {
                var user = try await client.getUser(GetUserRequest(username: name)).user ?? User()
                user.status = switch state {
                case .active: .active
                case .disabled: .disabled
                case .locked: .locked
                }
                return try await client.updateUser(UpdateUserRequest(user: user)).user
            }
        }
        print("\(name) is \(userRow(updated ?? User())[3])")
    }
}

struct UserPassword: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "password", abstract: "Change your password, or (administrators) another user's.",
        discussion: "With --password-stdin, standard input holds the current password and then the new one (one line each; for another user, only the new one).")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "Another user; omit for yourself.") var name: String?
    @Flag(name: .customLong("password-stdin"), help: "Read the passwords from standard input.") var passwordStdin = false

    func run() async throws {
        var current = ""
        if name == nil {
            current = passwordStdin ? (readLine(strippingNewline: true) ?? "") : try readPassword(prompt: "Current password: ")
        }
        let new = try readNewPassword(fromStdin: passwordStdin, prompt: "New password: ")
        try await NodeSession.with(connection) { node in
            _ = try await node.run {
                try await UserServiceClient(node.connection, defaultOptions: node.callOptions)
                    .changePassword(ChangePasswordRequest(username: name ?? "", currentPassword: current, newPassword: new))
            }
        }
        print(name == nil ? "password changed; your other sessions have ended" : "password of \(name!) changed; their sessions have ended")
    }
}

struct RoleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "role", abstract: "Roles of the tenant and their permissions.",
                                                    subcommands: [RoleList.self, RoleCreate.self, RoleDelete.self])
}

struct RoleList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List roles.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let roles = try await NodeSession.with(connection) { node in
            try await node.run { try await UserServiceClient(node.connection, defaultOptions: node.callOptions).listRoles(ListRolesRequest(page: PageRequest(pageSize: 1000))).roles }
        }
        switch output {
        case .json: try printJSON(roles.map { ["name": $0.name, "permissions": $0.permissions, "builtin": $0.builtin, "description": $0.description] as [String: Any] })
        case .table: printTable(["ROLE", "PERMISSIONS", "BUILT-IN"], roles.map { [$0.name, $0.permissions.joined(separator: ","), $0.builtin ? "yes" : "no"] })
        }
    }
}

struct RoleCreate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Create a role from permission paths.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The role's name.") var name: String
    @Option(help: "A permission path such as /permission/admin/manage/api/create (repeat).") var permission: [String]
    @Option(help: "What the role is for.") var description: String = ""

    func run() async throws {
        _ = try await NodeSession.with(connection) { node in
            try await node.run {
                try await UserServiceClient(node.connection, defaultOptions: node.callOptions)
                    .createRole(CreateRoleRequest(role: UserRole(name: name, description: description, permissions: permission)))
            }
        }
        print("created role \(name)")
    }
}

struct RoleDelete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a role nobody holds.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The role's name.") var name: String

    func run() async throws {
        try await NodeSession.with(connection) { node in
            _ = try await node.run { try await UserServiceClient(node.connection, defaultOptions: node.callOptions).deleteRole(DeleteRoleRequest(name: name)) }
        }
        print("deleted role \(name)")
    }
}

struct TenantCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tenant", abstract: "Tenants (super tenant administrators).",
                                                    subcommands: [TenantList.self, TenantCreate.self, TenantSetStatus.self])
}

struct TenantList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List tenants.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let tenants = try await NodeSession.with(connection) { node in
            try await node.run { try await UserServiceClient(node.connection, defaultOptions: node.callOptions).listTenants(ListTenantsRequest(page: PageRequest(pageSize: 1000))).tenants }
        }
        let rows = tenants.map { [$0.domain, $0.status == .active ? "active" : "inactive", $0.adminUsername] }
        switch output {
        case .json: try printJSON(rows.map { ["domain": $0[0], "status": $0[1], "admin": $0[2]] })
        case .table: printTable(["TENANT", "STATUS", "ADMIN"], rows)
        }
    }
}

struct TenantCreate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Create a tenant and its first administrator.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The tenant's domain, such as example.com.") var domain: String
    @Option(help: "The tenant administrator's username.") var admin: String
    @Option(name: .customLong("admin-email"), help: "Their email address.") var adminEmail: String = ""
    @Flag(name: .customLong("password-stdin"), help: "Read the administrator's password from standard input.") var passwordStdin = false

    func run() async throws {
        let password = try readNewPassword(fromStdin: passwordStdin, prompt: "Password for \(admin)@\(domain): ")
        _ = try await NodeSession.with(connection) { node in
            try await node.run {
                try await UserServiceClient(node.connection, defaultOptions: node.callOptions)
                    .createTenant(CreateTenantRequest(domain: domain, adminUsername: admin, adminPassword: password, adminEmail: adminEmail))
            }
        }
        print("created tenant \(domain); its administrator signs in as \(admin)@\(domain)")
    }
}

struct TenantSetStatus: AsyncParsableCommand {
    enum State: String, ExpressibleByArgument, CaseIterable { case active, inactive }
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Activate or deactivate a tenant (nothing is deleted).")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The tenant's domain.") var domain: String
    @Argument(help: "active or inactive.") var state: State

    func run() async throws {
        _ = try await NodeSession.with(connection) { node in
            try await node.run {
                try await UserServiceClient(node.connection, defaultOptions: node.callOptions)
                    .setTenantStatus(SetTenantStatusRequest(domain: domain, status: state == .active ? .active : .inactive))
            }
        }
        print("tenant \(domain) is \(state.rawValue)")
    }
}
