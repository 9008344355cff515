import Foundation
import LMDBKit
import Logging
import RoleCore
import RPCCore
import TestSupport
import Testing
import TollgatePolicies
import TollgateProto
import TollgatePublisher
import TollgateNode
import TollgateServices
import TollgateStorage
import TollgateUsers

/// A publisher node assembled as tollgated assembles it (users, policies and
/// publisher modules over userdb, apimgtdb and regdb in a temporary
/// directory), behind an in-process server applying the access table.
final class PublisherFixture: Sendable {
    let path: String
    let directory: UserDirectory
    let policies: PolicyStore
    let publisher: PublisherStore
    let transport: InProcessTransport
    static let password = "first-Secret-1"

    init(path existing: String? = nil, maxDefinitionBytes: Int? = nil) async throws {
        path = existing ?? FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-publisher-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let assembly = try await assembleNode(roles: [.publisher], path: path, password: Self.password,
                                              sections: ["publisher": ConfigSection(values: ["snapshot_chunk_apis": .integer(2)].merging(
                                                  maxDefinitionBytes.map { ["max_definition_bytes": .integer($0)] } ?? [:]) { $1 })])
        directory = try #require(assembly.module(UsersModule.self)).directory
        policies = try #require(assembly.module(PoliciesModule.self)).store
        publisher = try #require(assembly.module(PublisherModule.self)).store
        let access = assembly.access
        transport = InProcessTransport(methods: assembly.methods) { (context) throws(RPCError) -> Caller in try access.authorize(context) }
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

/// What an OpenAPI import is given besides the document: a context, the Unlimited tier, and
/// optionally a name (else the document's title) and a production endpoint.
func importTemplate(_ context: String, name: String = "", endpoint: String? = nil) -> Api {
    var api = Api()
    api.name = name
    api.context = context
    api.productionEndpoints = endpoint.map { EndpointConfig(strategy: .single(Endpoint(url: $0))) }
    api.subscriptionPolicies = ["Unlimited"]
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
        var caughtUp: [DeploymentFeedCaughtUp] = []
        /// Every frame in arrival order: "snapshot", "change@<revision>", "caught-up@<revision>".
        var frames: [String] = []
    }
    let feed = Watched(Feed())

    var snapshots: [DeploymentSnapshotChunk] { feed.current.snapshots }
    var changes: [DeploymentChange] { feed.current.changes }
    var caughtUp: [DeploymentFeedCaughtUp] { feed.current.caughtUp }
    var frames: [String] { feed.current.frames }

    func add(_ response: WatchDeploymentsResponse) {
        switch response.frame {
        case .snapshot(let chunk)?: feed.update { $0.snapshots.append(chunk); $0.frames.append("snapshot") }
        case .change(let change)?: feed.update { $0.changes.append(change); $0.frames.append("change@\(change.revision)") }
        case .caughtUp(let caughtUp)?: feed.update { $0.caughtUp.append(caughtUp); $0.frames.append("caught-up@\(caughtUp.revision)") }
        case nil: break
        }
    }

    var lastRevision: UInt64 { changes.last?.revision ?? snapshots.last?.revision ?? 0 }

    /// Waits until `condition` holds for what arrived so far (woken by each
    /// arrival); fails naming `what` if it does not within 30 s.
    func wait(for what: String, _ condition: @escaping @Sendable ([DeploymentSnapshotChunk], [DeploymentChange]) -> Bool) async throws {
        try await feed.wait(for: what) { condition($0.snapshots, $0.changes) }
    }

    /// Waits until `condition` holds for the frames so far, in arrival order, and returns them.
    @discardableResult
    func waitForFrames(_ what: String, _ condition: @escaping @Sendable ([String]) -> Bool) async throws -> [String] {
        try await feed.wait(for: what) { condition($0.frames) }.frames
    }
}

/// Runs a watcher from `since` until cancelled; returns its task and recorder.
/// With `heartbeat`, the feed is served by a publisher service of its own
/// over the fixture's store, repeating caught-up that often.
func watch(_ fixture: PublisherFixture, since: UInt64, heartbeat: Duration? = nil) -> (Task<Void, any Error>, FeedRecorder) {
    let recorder = FeedRecorder()
    let transport = heartbeat.map { heartbeat in
        InProcessTransport(methods: PublisherService(store: fixture.publisher, feedHeartbeat: heartbeat).methodHandlers) { _ in
            .node(id: "gw1", roles: ["gateway"])
        }
    } ?? fixture.gatewayTransport
    let task = Task {
        try await PublisherServiceClient(transport)
            .watchDeployments(WatchDeploymentsRequest(sinceRevision: since)) { response in recorder.add(response) }
    }
    return (task, recorder)
}

/// Assembles `roles` over the databases in `path` the way the node does,
/// with `root` as the first administrator and a fast password hasher.
func assembleNode(roles: [Role], path: String, password: String, sections: [String: ConfigSection] = [:]) async throws -> NodeAssembly {
    let passwordFile = path + "/root.password"
    try (password + "\n").write(toFile: passwordFile, atomically: true, encoding: .utf8)
    var sections = sections
    sections["users"] = ConfigSection(values: ["bootstrap_admin": .string("root"), "bootstrap_password_file": .string(passwordFile)])
    let databases = try Databases.open(dataDirectory: path, only: roles.reduce(into: Set()) { $0.formUnion(RoleModules.databases(for: $1)) })
    return try await NodeAssembly.assemble(roles: roles, databases: databases, sections: sections, logger: Logger(label: "test")) { context in
        context.provide(SecretHasher(settings: .testing), as: SecretHasher.self)
    }
}
