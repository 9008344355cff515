import Foundation
import LMDBKit
import RPCCore
import TestSupport
import Testing
import TollgatePolicies
import TollgateProto
import TollgatePublisher
import TollgateServices
import TollgateStorage
import TollgateUsers

/// userdb, apimgtdb and regdb in a temporary directory; users, policies and
/// the publisher behind an in-process server applying the access table.
final class PublisherFixture: Sendable {
    let path: String
    let directory: UserDirectory
    let policies: PolicyStore
    let publisher: PublisherStore
    let transport: InProcessTransport
    static let password = "first-Secret-1"

    init(path existing: String? = nil) async throws {
        path = existing ?? FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-publisher-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        directory = UserDirectory(database: try UserDatabase.open(in: path), hasher: SecretHasher(settings: .testing))
        try await directory.bootstrap(admin: ("root", Self.password))
        let apimgt = try ApiManagerDatabase.open(in: path)
        let log = DeploymentLog(database: apimgt)
        policies = PolicyStore(database: apimgt, deploymentLog: log)
        _ = try await policies.installDefaults(tenant: superTenant)
        publisher = try PublisherStore(registry: try RegistryDatabase.open(in: path), deploymentLog: log, tenants: policies)
        let access = AccessController(rules: AccessTable.rulesByPath, sessions: directory, tenants: SuperTenantAdministration())
        transport = InProcessTransport(methods: UserService(directory: directory).methodHandlers + AdminService(store: policies).methodHandlers
                                       + PublisherService(store: publisher, snapshotChunkSize: 2).methodHandlers) {
            (context) throws(RPCError) -> Caller in try access.authorize(context)
        }
    }

    func remove() { try? FileManager.default.removeItem(atPath: path) }

    func session(_ username: String, password: String = PublisherFixture.password, tenant: String? = nil) async throws -> CallOptions {
        let token = try await UserServiceClient(transport).login(LoginRequest(username: username, password: password)).sessionToken
        var metadata: Metadata = ["authorization": "Bearer \(token)"]
        if let tenant { metadata.add("x-tenant", tenant) }
        return CallOptions(metadata: metadata)
    }

    /// A user of the super tenant holding `roles`, signed in.
    func user(_ name: String, roles: [String]) async throws -> CallOptions {
        let root = try await session("root")
        _ = try await UserServiceClient(transport, defaultOptions: root)
            .createUser(CreateUserRequest(user: User(username: name, email: "\(name)@example.com", roles: roles), password: Self.password))
        return try await session(name)
    }

    func publisherClient(_ options: CallOptions) -> PublisherServiceClient { PublisherServiceClient(transport, defaultOptions: options) }

    /// The feed as a gateway node sees it.
    var gatewayTransport: InProcessTransport { transport.calling(as: .node(id: "gw1", roles: ["gateway"])) }
}

func sampleApi(_ name: String = "PizzaShack", version: String = "1.0.0", context: String = "/pizzashack", tags: [String] = ["food"]) -> Api {
    var api = Api()
    api.name = name
    api.version = version
    api.context = context
    api.description = "Order \(name.lowercased()) online"
    api.tags = tags
    api.resources = [
        ApiResource(uriTemplate: "/menu", verb: .get, authType: .any),
        ApiResource(uriTemplate: "/order", verb: .post, authType: .applicationUser),
        ApiResource(uriTemplate: "/order/{orderId}", verb: .get),
    ]
    api.productionEndpoints = EndpointConfig(strategy: .single(Endpoint(url: "https://backend.example.com/pizzashack")))
    api.subscriptionPolicies = ["Gold", "Unlimited"]
    return api
}

/// Expects `body` to fail with `code`, its message containing `fragment`.
func expectStatus(_ code: RPCCode, _ fragment: String = "", comment: Comment? = nil, sourceLocation: SourceLocation = #_sourceLocation,
                  _ body: () async throws -> Void) async {
    do {
        try await body()
        Issue.record("expected \(code)\(fragment.isEmpty ? "" : " mentioning \"\(fragment)\""), but the call succeeded", sourceLocation: sourceLocation)
    } catch let error as RPCError {
        #expect(error.code == code && (fragment.isEmpty || error.message.contains(fragment)),
                "expected \(code) mentioning \"\(fragment)\", got \(error)\(comment.map { " (\($0))" } ?? "")", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected \(code), got \(error)", sourceLocation: sourceLocation)
    }
}

/// What a watcher received, collected across the stream's callbacks.
final class FeedRecorder: Sendable {
    struct Feed: Sendable {
        var snapshots: [DeploymentSnapshotChunk] = []
        var changes: [DeploymentChange] = []
    }
    let feed = Watched(Feed())

    var snapshots: [DeploymentSnapshotChunk] { feed.current.snapshots }
    var changes: [DeploymentChange] { feed.current.changes }

    func add(_ response: WatchDeploymentsResponse) {
        switch response.frame {
        case .snapshot(let chunk)?: feed.update { $0.snapshots.append(chunk) }
        case .change(let change)?: feed.update { $0.changes.append(change) }
        case nil: break
        }
    }

    var lastRevision: UInt64 { changes.last?.revision ?? snapshots.last?.revision ?? 0 }

    /// Waits until `condition` holds for what arrived so far (woken by each
    /// arrival); fails naming `what` if it does not within 30 s.
    func wait(for what: String, _ condition: @escaping @Sendable ([DeploymentSnapshotChunk], [DeploymentChange]) -> Bool) async throws {
        try await feed.wait(for: what) { condition($0.snapshots, $0.changes) }
    }
}

/// Runs a watcher from `since` until cancelled; returns its task and recorder.
func watch(_ fixture: PublisherFixture, since: UInt64) -> (Task<Void, any Error>, FeedRecorder) {
    let recorder = FeedRecorder()
    let task = Task {
        try await PublisherServiceClient(fixture.gatewayTransport)
            .watchDeployments(WatchDeploymentsRequest(sinceRevision: since)) { response in recorder.add(response) }
    }
    return (task, recorder)
}
