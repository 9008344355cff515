import Foundation
import RPCCore
import Synchronization
import Testing
import TollgateProto
import TollgateServices
import TollgateStorage
import TollgateUsers

/// A userdb in a temporary directory, a directory over it with fast hashing
/// and a movable clock, and an in-process server applying the access table.
final class TestClock: Sendable {
    let milliseconds = Atomic<Int64>(1_800_000_000_000)
    func now() -> Int64 { milliseconds.load(ordering: .relaxed) }
}

final class UserFixture: Sendable {
    let path: String
    let directory: UserDirectory
    let clock = TestClock()
    let transport: InProcessTransport

    init() async throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-users-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let clock = self.clock
        directory = UserDirectory(database: try UserDatabase.open(in: path), hasher: SecretHasher(settings: .testing),
                                  now: { clock.now() })
        try await directory.bootstrap(admin: ("root", "first-Secret-1"))
        let access = AccessController(rules: AccessTable.rulesByPath, sessions: directory, tenants: SuperTenantAdministration())
        transport = InProcessTransport(methods: UserService(directory: directory).methodHandlers) { (context) throws(RPCError) -> Caller in
            try access.authorize(context)
        }
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    func client(token: String? = nil, tenant: String? = nil) -> UserServiceClient {
        var metadata = Metadata()
        if let token { metadata.add("authorization", "Bearer \(token)") }
        if let tenant { metadata.add("x-tenant", tenant) }
        return UserServiceClient(transport, defaultOptions: CallOptions(metadata: metadata))
    }

    func login(_ username: String, _ password: String) async throws -> String {
        try await client().login(LoginRequest(username: username, password: password)).sessionToken
    }

    func advance(minutes: Int64) { clock.milliseconds.add(minutes * 60_000, ordering: .relaxed) }
    func advance(seconds: Int64) { clock.milliseconds.add(seconds * 1000, ordering: .relaxed) }
}

func status(_ code: RPCCode, _ fragment: String = "") -> @Sendable (any Error) -> Bool {
    { error in
        guard let error = error as? RPCError else { return false }
        return error.code == code && (fragment.isEmpty || error.message.contains(fragment))
    }
}

@Suite struct UserServiceTests {
    @Test func bootstrapInstallsTheSuperTenantRolesAndFirstAdminOnce() async throws {
        let fixture = try await UserFixture()
        #expect(try await fixture.directory.bootstrap(admin: ("other", "another-Secret-2")) == .adminExists)
        let roles = try fixture.directory.database.roles(tenant: superTenant).map(\.name).sorted()
        #expect(roles == BuiltinRole.all.sorted())
        let token = try await fixture.login("root", "first-Secret-1")
        let me = try await fixture.client(token: token).whoAmI(WhoAmIRequest())
        #expect(me.user?.username == "root" && me.user?.roles == ["admin"])
        #expect(me.user?.passwordHash == nil, "hashes never leave the server")
        #expect(me.permissions.contains(Permission.admin))
        // Without configured credentials, an empty database has nobody to sign in.
        let empty = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-users-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: empty) }
        let fresh = UserDirectory(database: try UserDatabase.open(in: empty), hasher: SecretHasher(settings: .testing))
        #expect(try await fresh.bootstrap(admin: nil) == .noAdmin)
    }

    @Test func loginLogoutAndTokens() async throws {
        let fixture = try await UserFixture()
        await #expect(performing: { try await fixture.login("root", "wrong-Password-9") }, throws: status(.unauthenticated, "invalid username or password"))
        await #expect(performing: { try await fixture.login("nobody", "wrong-Password-9") }, throws: status(.unauthenticated, "invalid username or password"))
        let token = try await fixture.login("root", "first-Secret-1")
        _ = try await fixture.client(token: token).logout(LogoutRequest())
        await #expect(performing: { try await fixture.client(token: token).whoAmI(WhoAmIRequest()) }, throws: status(.unauthenticated, "sign in again"))
        // A malformed token is refused even where no identity is needed.
        await #expect(performing: { try await fixture.client(token: "").login(LoginRequest(username: "root", password: "first-Secret-1")) },
                      throws: status(.unauthenticated, "malformed"))
        await #expect(performing: { try await fixture.client().whoAmI(WhoAmIRequest()) }, throws: status(.unauthenticated))
        // Sessions end at their lifetime.
        let second = try await fixture.login("root", "first-Secret-1")
        fixture.advance(minutes: 8 * 60 + 1)
        await #expect(performing: { try await fixture.client(token: second).whoAmI(WhoAmIRequest()) }, throws: status(.unauthenticated))
    }

    @Test func repeatedFailuresLockAnAccountForAWhileWithoutSayingSo() async throws {
        let fixture = try await UserFixture()
        let admin = fixture.client(token: try await fixture.login("root", "first-Secret-1"))
        _ = try await admin.createUser(CreateUserRequest(user: User(username: "sam", email: "sam@example.com", roles: ["subscriber"]), password: "sam-Secret-1"))
        let invalid = status(.unauthenticated, "invalid username or password")
        // From five addresses, so no source is throttled: the account's own count locks it.
        for source in 1...5 {
            await #expect(performing: { try await fixture.directory.login(username: "sam", password: "wrong-Password-9", defaultTenant: "carbon.super",
                                                                           source: "198.51.100.\(source)") }, throws: invalid)
        }
        // Locked now: even the right password is refused, with the answer a
        // wrong password and an unknown user get, so nobody learns the account exists.
        await #expect(performing: { try await fixture.directory.login(username: "sam", password: "sam-Secret-1", defaultTenant: "carbon.super",
                                                                       source: "198.51.100.9") }, throws: invalid)
        await #expect(performing: { try await fixture.directory.login(username: "nobody", password: "sam-Secret-1", defaultTenant: "carbon.super",
                                                                       source: "198.51.100.9") }, throws: invalid)
        fixture.advance(minutes: 16)
        _ = try await fixture.login("sam", "sam-Secret-1")
    }

    @Test func failuresAgainstTheAdministratorThrottleTheirSourceAndNeverLockTheAccount() async throws {
        let fixture = try await UserFixture()
        let invalid = status(.unauthenticated, "invalid username or password")
        func login(_ password: String, from source: String) async throws -> UserDirectory.LoginResult {
            try await fixture.directory.login(username: "root", password: password, defaultTenant: "carbon.super", source: source)
        }
        let attacker = "203.0.113.66", operator_ = "192.0.2.10"
        for _ in 0..<5 {
            await #expect(performing: { try await login("wrong-Password-9", from: attacker) }, throws: invalid)
        }
        // The attacker's address waits now, even with the right password…
        await #expect(performing: { try await login("first-Secret-1", from: attacker) }, throws: invalid)
        // …and the administrator, from anywhere else, signs in at once.
        _ = try await login("first-Secret-1", from: operator_)
        // More failures from the attacker: the wait doubles (1 s, then 2 s).
        fixture.advance(seconds: 1)
        await #expect(performing: { try await login("wrong-Password-9", from: attacker) }, throws: invalid)
        fixture.advance(seconds: 1)
        await #expect(performing: { try await login("first-Secret-1", from: attacker) }, throws: invalid)
        _ = try await login("first-Secret-1", from: operator_)
        fixture.advance(seconds: 1)
        _ = try await login("first-Secret-1", from: attacker)
    }

    @Test func rolesDecideWhatUsersMayDo() async throws {
        let fixture = try await UserFixture()
        let admin = fixture.client(token: try await fixture.login("root", "first-Secret-1"))
        _ = try await admin.createUser(CreateUserRequest(user: User(username: "sam", email: "sam@example.com", roles: ["subscriber"]), password: "sam-Secret-1"))
        let sam = fixture.client(token: try await fixture.login("sam", "sam-Secret-1"))
        await #expect(performing: { try await sam.listUsers(ListUsersRequest()) }, throws: status(.permissionDenied, "needs permission /permission/admin/configure/security"))
        await #expect(performing: { try await fixture.client().listUsers(ListUsersRequest()) }, throws: status(.unauthenticated))
        // Granting a role takes effect on the open session.
        _ = try await admin.createRole(CreateRoleRequest(role: UserRole(name: "auditor", permissions: [Permission.manageUsers])))
        _ = try await admin.assignRoles(AssignRolesRequest(username: "sam", addRoles: ["auditor"]))
        let users = try await sam.listUsers(ListUsersRequest()).users.map(\.username)
        #expect(users == ["root", "sam"])
        await #expect(performing: { try await admin.deleteRole(DeleteRoleRequest(name: "auditor")) }, throws: status(.failedPrecondition, "hold role auditor"))
        await #expect(performing: { try await admin.deleteRole(DeleteRoleRequest(name: "admin")) }, throws: status(.failedPrecondition, "built-in"))
        await #expect(performing: { try await admin.deleteUser(DeleteUserRequest(username: "root")) }, throws: status(.failedPrecondition, "your own account"))
        await #expect(performing: { try await admin.assignRoles(AssignRolesRequest(username: "root", removeRoles: ["admin"])) },
                      throws: status(.failedPrecondition, "last active administrator"))
    }

    @Test func validationSaysWhatIsWrong() async throws {
        let fixture = try await UserFixture()
        let admin = fixture.client(token: try await fixture.login("root", "first-Secret-1"))
        await #expect(performing: { try await admin.createUser(CreateUserRequest(user: User(username: "ann"), password: "short1")) },
                      throws: status(.invalidArgument, "8 to 128 characters"))
        await #expect(performing: { try await admin.createUser(CreateUserRequest(user: User(username: "ann"), password: "lettersonly")) },
                      throws: status(.invalidArgument, "one letter and one digit"))
        await #expect(performing: { try await admin.createUser(CreateUserRequest(user: User(username: "a b"), password: "ann-Secret-1")) },
                      throws: status(.invalidArgument, "username"))
        await #expect(performing: { try await admin.createUser(CreateUserRequest(user: User(username: "ann", email: "not-mail"), password: "ann-Secret-1")) },
                      throws: status(.invalidArgument, "email"))
        await #expect(performing: { try await admin.createUser(CreateUserRequest(user: User(username: "ann", roles: ["wizard"]), password: "ann-Secret-1")) },
                      throws: status(.invalidArgument, "role wizard does not exist"))
        _ = try await admin.createUser(CreateUserRequest(user: User(username: "ann"), password: "ann-Secret-1"))
        await #expect(performing: { try await admin.createUser(CreateUserRequest(user: User(username: "ann"), password: "ann-Secret-1")) },
                      throws: status(.alreadyExists))
    }

    @Test func passwordChangesEndOtherSessions() async throws {
        let fixture = try await UserFixture()
        let first = try await fixture.login("root", "first-Secret-1")
        let second = try await fixture.login("root", "first-Secret-1")
        await #expect(performing: { try await fixture.client(token: first).changePassword(ChangePasswordRequest(currentPassword: "nope-Nope-1", newPassword: "next-Secret-2")) },
                      throws: status(.permissionDenied, "current password"))
        _ = try await fixture.client(token: first).changePassword(ChangePasswordRequest(currentPassword: "first-Secret-1", newPassword: "next-Secret-2"))
        _ = try await fixture.client(token: first).whoAmI(WhoAmIRequest())
        await #expect(performing: { try await fixture.client(token: second).whoAmI(WhoAmIRequest()) }, throws: status(.unauthenticated))
        _ = try await fixture.login("root", "next-Secret-2")
    }

    @Test func tenantsAreIsolated() async throws {
        let fixture = try await UserFixture()
        let root = fixture.client(token: try await fixture.login("root", "first-Secret-1"))
        _ = try await root.createTenant(CreateTenantRequest(domain: "example.com", adminUsername: "boss", adminPassword: "boss-Secret-1", adminEmail: "boss@example.com"))
        await #expect(performing: { try await root.createTenant(CreateTenantRequest(domain: "Not A Domain", adminUsername: "x", adminPassword: "boss-Secret-1")) },
                      throws: status(.invalidArgument, "tenant domain"))
        let boss = fixture.client(token: try await fixture.login("boss@example.com", "boss-Secret-1"))
        _ = try await boss.createUser(CreateUserRequest(user: User(username: "eve", roles: ["creator"]), password: "eve-Secret-1"))
        #expect(try await boss.listUsers(ListUsersRequest()).users.map(\.username) == ["boss", "eve"])
        // A tenant admin may neither see the super tenant nor manage tenants.
        let bossInSuper = fixture.client(token: try await fixture.login("boss@example.com", "boss-Secret-1"), tenant: superTenant)
        await #expect(performing: { try await bossInSuper.listUsers(ListUsersRequest()) }, throws: status(.permissionDenied, "may not act in tenant carbon.super"))
        await #expect(performing: { try await boss.listTenants(ListTenantsRequest()) }, throws: status(.permissionDenied))
        // The super tenant's admin may act in the tenant.
        let rootInTenant = fixture.client(token: try await fixture.login("root", "first-Secret-1"), tenant: "example.com")
        #expect(try await rootInTenant.listUsers(ListUsersRequest()).users.count == 2)
        // Deactivating the tenant refuses sign-in and ends sessions' use.
        let eve = try await fixture.login("eve@example.com", "eve-Secret-1")
        _ = try await root.setTenantStatus(SetTenantStatusRequest(domain: "example.com", status: .inactive))
        await #expect(performing: { try await fixture.login("eve@example.com", "eve-Secret-1") }, throws: status(.permissionDenied, "deactivated"))
        await #expect(performing: { try await fixture.client(token: eve).whoAmI(WhoAmIRequest()) }, throws: status(.unauthenticated))
    }

    @Test func certificatesIdentifyNodesAndAdmins() async throws {
        let fixture = try await UserFixture()
        let access = AccessController(rules: AccessTable.rulesByPath, sessions: fixture.directory, tenants: SuperTenantAdministration())
        func context(_ method: ProtoMethod, peer: PeerIdentity?) -> ServerCallContext {
            ServerCallContext(method: method, metadata: Metadata(), peer: peer, deadline: nil)
        }
        let gateway = PeerIdentity.node(id: "gw1", roles: ["gateway"])
        #expect(try access.authorize(context(PublisherServiceDescriptor.watchDeployments, peer: gateway)) == .node(id: "gw1", roles: ["gateway"]))
        #expect(performing: { try access.authorize(context(PublisherServiceDescriptor.watchDeployments, peer: .node(id: "s1", roles: ["store"]))) },
                throws: status(.permissionDenied, "needs a cluster node with role gateway or trafficmanager"))
        #expect(performing: { try access.authorize(context(PublisherServiceDescriptor.watchDeployments, peer: nil)) }, throws: status(.unauthenticated))
        // An admin certificate proves the machine, not the person: even one
        // naming an existing administrator is only a certificate holder,
        // enough for health checks and nothing a user does (issue 11).
        #expect(performing: { try access.authorize(context(UserServiceDescriptor.listUsers, peer: .user(name: "root"))) }, throws: status(.permissionDenied))
        #expect(performing: { try access.authorize(context(UserServiceDescriptor.createUser, peer: .user(name: "root"))) }, throws: status(.permissionDenied))
        #expect(try access.authorize(context(NodeServiceDescriptor.ping, peer: .user(name: "root"))) == .certificateHolder(name: "root"))
        #expect(performing: { try access.authorize(context(UserServiceDescriptor.listUsers, peer: .user(name: "ghost"))) }, throws: status(.permissionDenied))
        #expect(try access.authorize(context(NodeServiceDescriptor.ping, peer: .user(name: "ghost"))) == .certificateHolder(name: "ghost"))
    }

    @Test func everyMethodHasAnAccessRule() {
        let missing = ProtoRegistry.methods.filter { AccessTable.rules[$0] == nil }.map(\.path)
        #expect(missing.isEmpty, "methods without a rule: \(missing)")
    }
}
