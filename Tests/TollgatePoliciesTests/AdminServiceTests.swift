import Foundation
import LMDBKit
import Logging
import RoleCore
import RPCCore
import Testing
import TollgatePolicies
import TollgateProto
import TollgateNode
import TollgateServices
import TollgateStorage
import TollgateUsers

/// A key manager node as tollgated assembles it today (users and policies
/// modules over a temporary directory), behind an in-process server
/// applying the access table.
final class PolicyFixture: Sendable {
    let path: String
    let directory: UserDirectory
    let store: PolicyStore
    let transport: InProcessTransport

    init() async throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-policies-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let passwordFile = path + "/root.password"
        try "first-Secret-1\n".write(toFile: passwordFile, atomically: true, encoding: .utf8)
        let databases = try Databases.open(dataDirectory: path, only: RoleModules.databases(for: .keymanager))
        let assembly = try await NodeAssembly.assemble(
            roles: [.keymanager], databases: databases,
            sections: ["users": ConfigSection(values: ["bootstrap_admin": .string("root"), "bootstrap_password_file": .string(passwordFile)])],
            logger: Logger(label: "test")) { context in context.provide(SecretHasher(settings: .testing), as: SecretHasher.self) }
        directory = try #require(assembly.module(UsersModule.self)).directory
        store = try #require(assembly.module(PoliciesModule.self)).store
        let access = assembly.access
        transport = InProcessTransport(methods: assembly.methods) { (context) throws(RPCError) -> Caller in try access.authorize(context) }
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    func session(_ username: String, _ password: String, tenant: String? = nil) async throws -> CallOptions {
        let token = try await UserServiceClient(transport).login(LoginRequest(username: username, password: password)).sessionToken
        var metadata: Metadata = ["authorization": "Bearer \(token)"]
        if let tenant { metadata.add("x-tenant", tenant) }
        return CallOptions(metadata: metadata)
    }

    func admin(as options: CallOptions) -> AdminServiceClient { AdminServiceClient(transport, defaultOptions: options) }
}

func status(_ code: RPCCode, _ fragment: String = "") -> @Sendable (any Error) -> Bool {
    { error in
        guard let error = error as? RPCError else { return false }
        return error.code == code && (fragment.isEmpty || error.message.contains(fragment))
    }
}

func names(_ policies: [ThrottlePolicy]) -> [String] {
    policies.map { policy in
        switch policy.policy {
        case .subscriptionPolicy(let p)?: p.name
        case .applicationPolicy(let p)?: p.name
        case .advancedPolicy(let p)?: p.name
        case .globalPolicy(let p)?: p.name
        case nil: "?"
        }
    }
}

func block(_ type: BlockConditionType, _ target: BlockCondition.Target, enabled: Bool = false, invert: Bool = false) -> BlockCondition {
    var condition = BlockCondition()
    condition.conditionType = type
    condition.target = target
    condition.enabled = enabled
    condition.invert = invert
    return condition
}

@Suite struct AdminServiceTests {
    @Test func wso2DefaultsAreInstalled() async throws {
        let fixture = try await PolicyFixture()
        let admin = fixture.admin(as: try await fixture.session("root", "first-Secret-1"))
        let subscription = try await admin.listPolicies(ListPoliciesRequest(kind: .subscription)).policies
        #expect(Set(names(subscription)) == ["Gold", "Silver", "Bronze", "Unauthenticated", "Unlimited"])
        let gold = try await admin.getPolicy(GetPolicyRequest(policy: PolicyRef(kind: .subscription, name: "Gold"))).policy
        guard case .subscriptionPolicy(let policy)? = gold?.policy else { Issue.record("Gold is not a subscription policy"); return }
        #expect(policy.defaultLimit == ThrottleLimit(timeUnit: .minute, unitTime: 1, quota: .requestCount(5000)))
        #expect(Set(names(try await admin.listPolicies(ListPoliciesRequest(kind: .application)).policies)) == ["10PerMin", "20PerMin", "50PerMin", "Unlimited"])
        #expect(Set(names(try await admin.listPolicies(ListPoliciesRequest(kind: .advanced)).policies)) == ["10KPerMin", "20KPerMin", "50KPerMin", "Unlimited"])
        // Installed once: a default the administrator deleted stays deleted,
        // even for a store opened afresh (a node restart).
        _ = try await admin.deletePolicy(DeletePolicyRequest(policy: PolicyRef(kind: .subscription, name: "Bronze")))
        let restarted = PolicyStore(database: fixture.store.database)
        await #expect(try restarted.installDefaults(tenant: superTenant) == 0)
        #expect(!names(try await admin.listPolicies(ListPoliciesRequest(kind: .subscription)).policies).contains("Bronze"))
    }

    @Test func policiesAreValidatedCreatedUpdatedAndDeleted() async throws {
        let fixture = try await PolicyFixture()
        let admin = fixture.admin(as: try await fixture.session("root", "first-Secret-1"))
        let platinum = ThrottlePolicy(policy: .subscriptionPolicy(SubscriptionPolicy(
            name: "Platinum", description: "10k a minute", defaultLimit: ThrottleLimit(timeUnit: .minute, unitTime: 1, quota: .requestCount(10_000)),
            spikeArrestLimit: 300, spikeArrestUnit: .second, stopOnQuotaReach: true, billingPlan: .commercial)))
        let created = try await admin.createPolicy(CreatePolicyRequest(policy: platinum)).policy
        guard case .subscriptionPolicy(let stored)? = created?.policy else { Issue.record("no policy"); return }
        #expect(!stored.id.isEmpty && stored.tenantDomain == superTenant && stored.createdAtUnixMs > 0)
        await #expect(performing: { try await admin.createPolicy(CreatePolicyRequest(policy: platinum)) }, throws: status(.alreadyExists))

        var bigger = stored
        bigger.defaultLimit = ThrottleLimit(timeUnit: .hour, unitTime: 1, quota: .bandwidthBytes(1 << 30))
        let updated = try await admin.updatePolicy(UpdatePolicyRequest(policy: ThrottlePolicy(policy: .subscriptionPolicy(bigger)))).policy
        guard case .subscriptionPolicy(let after)? = updated?.policy else { Issue.record("no policy"); return }
        #expect(after.id == stored.id && after.defaultLimit?.quota == .bandwidthBytes(1 << 30))

        // Bad input says what is wrong.
        let noLimit = ThrottlePolicy(policy: .applicationPolicy(ApplicationPolicy(name: "Broken")))
        await #expect(performing: { try await admin.createPolicy(CreatePolicyRequest(policy: noLimit)) }, throws: status(.invalidArgument, "default_limit is required"))
        let badName = ThrottlePolicy(policy: .applicationPolicy(ApplicationPolicy(name: "no spaces", defaultLimit: ThrottleLimit(timeUnit: .minute, unitTime: 1, quota: .requestCount(5)))))
        await #expect(performing: { try await admin.createPolicy(CreatePolicyRequest(policy: badName)) }, throws: status(.invalidArgument, "policy name"))
        let badCondition = ThrottlePolicy(policy: .advancedPolicy(AdvancedPolicy(
            name: "Conditional", applicableLevel: .api, defaultLimit: ThrottleLimit(timeUnit: .minute, unitTime: 1, quota: .requestCount(100)),
            conditionGroups: [ConditionGroup(conditions: [ThrottleCondition(match: .ip("300.1.1.1"))], limit: ThrottleLimit(timeUnit: .minute, unitTime: 1, quota: .requestCount(10)))])))
        await #expect(performing: { try await admin.createPolicy(CreatePolicyRequest(policy: badCondition)) }, throws: status(.invalidArgument, "is not an IP address"))
        let goodCondition = ThrottlePolicy(policy: .advancedPolicy(AdvancedPolicy(
            name: "Conditional", applicableLevel: .resource, defaultLimit: ThrottleLimit(timeUnit: .minute, unitTime: 1, quota: .requestCount(100)),
            conditionGroups: [ConditionGroup(conditions: [
                ThrottleCondition(invert: true, match: .ipRange(IpRange(startAddress: "10.0.0.1", endAddress: "10.0.0.255"))),
                ThrottleCondition(match: .header(NamedValueCondition(name: "X-Tier", valuePattern: "free"))),
                ThrottleCondition(match: .ip("2001:db8::1")),
            ], limit: ThrottleLimit(timeUnit: .minute, unitTime: 1, quota: .requestCount(10)))])))
        _ = try await admin.createPolicy(CreatePolicyRequest(policy: goodCondition))

        _ = try await admin.deletePolicy(DeletePolicyRequest(policy: PolicyRef(kind: .subscription, name: "Platinum")))
        await #expect(performing: { try await admin.getPolicy(GetPolicyRequest(policy: PolicyRef(kind: .subscription, name: "Platinum"))) }, throws: status(.notFound))
    }

    @Test func aPolicyInUseCannotBeDeleted() async throws {
        let fixture = try await PolicyFixture()
        let admin = fixture.admin(as: try await fixture.session("root", "first-Secret-1"))
        var api = Api(id: "api-1", tenantDomain: superTenant, provider: "root", name: "PizzaShack", version: "1.0.0", context: "/pizzashack")
        api.subscriptionPolicies = ["Gold"]
        try fixture.store.database.database.environment.write { txn in try fixture.store.database.apis.insert(api, in: &txn) }
        await #expect(performing: { try await admin.deletePolicy(DeletePolicyRequest(policy: PolicyRef(kind: .subscription, name: "Gold"))) },
                      throws: status(.failedPrecondition, "in use by API PizzaShack 1.0.0"))
    }

    @Test func blockConditions() async throws {
        let fixture = try await PolicyFixture()
        let admin = fixture.admin(as: try await fixture.session("root", "first-Secret-1"))
        let byContext = try await admin.createBlockCondition(CreateBlockConditionRequest(condition: block(.apiContext, .value("/pizzashack/1.0.0"), enabled: true))).condition!
        let byRange = try await admin.createBlockCondition(CreateBlockConditionRequest(condition: block(.ipRange, .ipRange(IpRange(startAddress: "192.168.1.1", endAddress: "192.168.1.200")), enabled: true, invert: true))).condition!
        _ = try await admin.createBlockCondition(CreateBlockConditionRequest(condition: block(.application, .value("admin:DefaultApplication"), enabled: true)))
        _ = try await admin.createBlockCondition(CreateBlockConditionRequest(condition: block(.user, .value("mallory"), enabled: true)))
        await #expect(performing: { try await admin.createBlockCondition(CreateBlockConditionRequest(condition: block(.apiContext, .value("/pizzashack/1.0.0"), enabled: true))) },
                      throws: status(.alreadyExists))
        await #expect(performing: { try await admin.createBlockCondition(CreateBlockConditionRequest(condition: block(.ip, .value("10.0.0.999")))) },
                      throws: status(.invalidArgument, "not an IP address"))
        await #expect(performing: { try await admin.createBlockCondition(CreateBlockConditionRequest(condition: block(.ipRange, .ipRange(IpRange(startAddress: "10.0.0.9", endAddress: "10.0.0.1"))))) },
                      throws: status(.invalidArgument, "comes after"))
        await #expect(performing: { try await admin.createBlockCondition(CreateBlockConditionRequest(condition: block(.user, .value("bob"), invert: true))) },
                      throws: status(.invalidArgument, "only IP and IP_RANGE"))
        await #expect(performing: { try await admin.createBlockCondition(CreateBlockConditionRequest(condition: block(.application, .value("noowner")))) },
                      throws: status(.invalidArgument, "owner:application"))

        let disabled = try await admin.setBlockConditionEnabled(SetBlockConditionEnabledRequest(conditionId: byContext.id, enabled: false)).condition!
        #expect(!disabled.enabled && disabled.updatedAtUnixMs >= byContext.updatedAtUnixMs)
        #expect(try await admin.listBlockConditions(ListBlockConditionsRequest()).conditions.count == 4)
        #expect(try await admin.listBlockConditions(ListBlockConditionsRequest(conditionType: .ipRange)).conditions.map(\.id) == [byRange.id])
        _ = try await admin.deleteBlockCondition(DeleteBlockConditionRequest(conditionId: byRange.id))
        await #expect(performing: { try await admin.getBlockCondition(GetBlockConditionRequest(conditionId: byRange.id)) }, throws: status(.notFound))
    }

    @Test func rolesAndTenantsDecideWhoSeesWhat() async throws {
        let fixture = try await PolicyFixture()
        let root = try await fixture.session("root", "first-Secret-1")
        let users = UserServiceClient(fixture.transport, defaultOptions: root)
        _ = try await users.createUser(CreateUserRequest(user: User(username: "cara", roles: ["creator"]), password: "cara-Secret-1"))
        _ = try await users.createUser(CreateUserRequest(user: User(username: "sub", roles: ["subscriber"]), password: "sub-Secret-1"))
        _ = try await users.createTenant(CreateTenantRequest(domain: "example.com", adminUsername: "boss", adminPassword: "boss-Secret-1"))

        // A creator reads the tiers to offer but cannot change them; a subscriber does neither.
        let creator = fixture.admin(as: try await fixture.session("cara", "cara-Secret-1"))
        #expect(try await creator.listPolicies(ListPoliciesRequest(kind: .subscription)).policies.count == 5)
        await #expect(performing: { try await creator.deletePolicy(DeletePolicyRequest(policy: PolicyRef(kind: .subscription, name: "Gold"))) }, throws: status(.permissionDenied))
        let subscriber = fixture.admin(as: try await fixture.session("sub", "sub-Secret-1"))
        await #expect(performing: { try await subscriber.listPolicies(ListPoliciesRequest()) }, throws: status(.permissionDenied))
        await #expect(performing: { try await fixture.admin(as: CallOptions()).listPolicies(ListPoliciesRequest()) }, throws: status(.unauthenticated))

        // A new tenant gets its own defaults; its admin sees only its own policies and conditions.
        let boss = fixture.admin(as: try await fixture.session("boss@example.com", "boss-Secret-1"))
        _ = try await boss.createPolicy(CreatePolicyRequest(policy: ThrottlePolicy(policy: .applicationPolicy(ApplicationPolicy(
            name: "Tenant5", defaultLimit: ThrottleLimit(timeUnit: .minute, unitTime: 1, quota: .requestCount(5)))))))
        #expect(Set(names(try await boss.listPolicies(ListPoliciesRequest(kind: .application)).policies)) == ["10PerMin", "20PerMin", "50PerMin", "Unlimited", "Tenant5"])
        let rootAdmin = fixture.admin(as: root)
        #expect(!names(try await rootAdmin.listPolicies(ListPoliciesRequest(kind: .application)).policies).contains("Tenant5"))
        let condition = try await rootAdmin.createBlockCondition(CreateBlockConditionRequest(condition: block(.user, .value("eve"), enabled: true))).condition!
        await #expect(performing: { try await boss.getBlockCondition(GetBlockConditionRequest(conditionId: condition.id)) }, throws: status(.notFound))
        await #expect(performing: { try await boss.deleteBlockCondition(DeleteBlockConditionRequest(conditionId: condition.id)) }, throws: status(.notFound))
        #expect(try await boss.listBlockConditions(ListBlockConditionsRequest()).conditions.isEmpty)
    }
}
