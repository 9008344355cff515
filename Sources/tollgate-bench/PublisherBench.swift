import Synchronization
import Foundation
import NIOCore
import NIOPosix
import RPCCore
import RPCNIO
import TollgatePolicies
import TollgateProto
import TollgatePublisher
import TollgateServices
import TollgateStorage
import TollgateNode
import RoleCore
import Logging
import TollgateUsers

/// The publisher through real RPC over mutual TLS: API creation and
/// lifecycle changes per second, list and search latency with 10,000 APIs
/// in one tenant, and the time from a publish to a connected watcher.
func benchPublisher() async throws {
    let apiCount = Int(ProcessInfo.processInfo.environment["TOLLGATE_BENCH_APIS"] ?? "10000") ?? 10_000
    let (tlsDirectory, serverTLS, clientTLS) = try makeBenchTLS(alpn: [RPCServer.alpn], uris: ["tollgate://node/bench?role=gateway"])
    defer { try? FileManager.default.removeItem(atPath: tlsDirectory) }
    let data = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: data) }

    // The node's own assembly of the publisher role, as tollgated builds it.
    try "bench-Admin-1\n".write(toFile: data + "/admin.password", atomically: true, encoding: .utf8)
    let assembly = try await NodeAssembly.assemble(
        roles: [.publisher], databases: try Databases.open(dataDirectory: data, only: RoleModules.databases(for: .publisher)),
        sections: ["users": ConfigSection(values: ["bootstrap_admin": .string("admin"), "bootstrap_password_file": .string(data + "/admin.password")])],
        logger: Logger(label: "bench"))
    let access = assembly.access
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    let server = RPCServer(methods: assembly.methods, tls: serverTLS) { (context) throws(RPCError) -> Caller in try access.authorize(context) }
    let port = try await server.bind(host: "127.0.0.1", port: 0, group: group).port!
    let connection = try await RPCConnection.connect(host: "127.0.0.1", port: port, serverHostname: "localhost", tls: clientTLS, group: group)
    let token = try await UserServiceClient(connection).login(LoginRequest(username: "admin", password: "bench-Admin-1")).sessionToken
    let client = PublisherServiceClient(connection, defaultOptions: CallOptions(metadata: ["authorization": "Bearer \(token)"]))

    // Creation: 16 callers, every API in the same tenant.
    let words = ["pizza", "weather", "payments", "maps", "orders", "inventory", "shipping", "billing", "search", "identity"]
    let ids = Shared<[String]>([])
    let created = try await timed(calls: apiCount, callers: 16) { index in
        var api = Api()
        api.name = "\(words[index % words.count].capitalized)Service\(index)"
        api.version = "1.0.\(index % 3)"
        api.context = "/\(words[index % words.count])/svc\(index)"
        api.description = "The \(words[(index / 10) % words.count]) service number \(index)"
        api.tags = [words[index % words.count], "team\(index % 50)"]
        api.provider = "provider\(index % 20)"
        api.resources = (0..<5).map { ApiResource(uriTemplate: "/items/\($0)/{id}", verb: .get) }
        api.productionEndpoints = EndpointConfig(strategy: .single(Endpoint(url: "https://backend.example.com/svc\(index)")))
        api.subscriptionPolicies = ["Gold", "Unlimited"]
        let stored = try await client.createApi(CreateApiRequest(api: api)).api!
        ids.value.withLock { $0.append(stored.id) }
    }
    report("publisher CreateApi over RPC, 16 callers", created)

    // Lifecycle: publish a fifth of them, then block and re-publish.
    let toPublish = ids.value.withLock { Array($0.prefix(max(apiCount / 5, 1))) }
    let published = try await timed(calls: toPublish.count, callers: 16) { index in
        _ = try await client.changeLifecycle(ChangeLifecycleRequest(apiId: toPublish[index], targetState: .published))
    }
    report("publisher ChangeLifecycle (publish) over RPC, 16 callers", published)

    // Reads, one caller, with \(apiCount) APIs in the tenant.
    let queries: [(String, () async throws -> Void)] = [
        ("ListApis first page of 25", { _ = try await client.listApis(ListApisRequest(page: PageRequest(pageSize: 25))) }),
        ("ListApis provider + state filter", {
            _ = try await client.listApis(ListApisRequest(provider: "provider7", states: [.published], page: PageRequest(pageSize: 25)))
        }),
        ("SearchApis one common word (pizza)", { _ = try await client.searchApis(SearchApisRequest(query: "pizza", page: PageRequest(pageSize: 25))) }),
        ("SearchApis substring of names (ervice12)", { _ = try await client.searchApis(SearchApisRequest(query: "ervice12", page: PageRequest(pageSize: 25))) }),
        ("SearchApis two fields (tag:maps provider:provider3)", {
            _ = try await client.searchApis(SearchApisRequest(query: "tag:maps provider:provider3", page: PageRequest(pageSize: 25)))
        }),
    ]
    for (label, query) in queries {
        var samples: [Double] = []
        for _ in 0..<50 { try await query() }
        for _ in 0..<500 {
            let began = ContinuousClock.now
            try await query()
            samples.append(milliseconds(ContinuousClock.now - began))
        }
        samples.sort()
        print("publisher \(label), \(apiCount) APIs".padding(toLength: 62, withPad: " ", startingAt: 0)
            + String(format: "  p50 %6.2f ms  p99 %6.2f ms   target p99 ≤ 20 ms: %@", samples[samples.count / 2], samples[samples.count * 99 / 100],
                     samples[samples.count * 99 / 100] <= 20 ? "met" : "MISSED"))
    }
    // A deep page: walk to the middle of the listing first.
    var pageToken: [UInt8] = []
    for _ in 0..<(apiCount / 2 / 500) {
        pageToken = try await client.listApis(ListApisRequest(page: PageRequest(pageSize: 500, pageToken: pageToken))).page?.nextPageToken ?? []
    }
    var deep: [Double] = []
    for _ in 0..<200 {
        let began = ContinuousClock.now
        _ = try await client.listApis(ListApisRequest(page: PageRequest(pageSize: 25, pageToken: pageToken)))
        deep.append(milliseconds(ContinuousClock.now - began))
    }
    deep.sort()
    print("publisher ListApis page of 25 from the middle, \(apiCount) APIs".padding(toLength: 62, withPad: " ", startingAt: 0)
        + String(format: "  p50 %6.2f ms  p99 %6.2f ms", deep[deep.count / 2], deep[deep.count * 99 / 100]))

    // Publish to watcher: a gateway watching the feed; each publish is timed
    // from the call's start to the change arriving.
    let arrivals = AsyncStream<DeploymentChange>.makeStream()
    let watcher = Task {
        // However the stream ends, the waiting loop below must not wait forever.
        defer { arrivals.continuation.finish() }
        try await PublisherServiceClient(connection).watchDeployments(WatchDeploymentsRequest()) { response in
            if case .change(let change)? = response.frame { arrivals.continuation.yield(change) }
        }
    }
    var iterator = arrivals.stream.makeAsyncIterator()
    // Still in CREATED: taken from past the published fifth.
    let pending = ids.value.withLock { Array($0.dropFirst(toPublish.count).suffix(200)) }
    try await Task.sleep(for: .seconds(2))  // the snapshot of \(apiCount / 5) APIs goes first
    var delays: [Double] = []
    for id in pending {
        let began = ContinuousClock.now
        _ = try await client.changeLifecycle(ChangeLifecycleRequest(apiId: id, targetState: .published))
        var arrived = false
        while let change = await iterator.next() {
            if case .apiUpserted(let deployed)? = change.change, deployed.api?.id == id {
                arrived = true
                break
            }
        }
        guard arrived else {
            print("publisher publish → watcher: the feed ended early: \(String(describing: await watcher.result))")
            return
        }
        delays.append(milliseconds(ContinuousClock.now - began))
    }
    delays.sort()
    guard !delays.isEmpty else { return }
    print("publisher publish → WatchDeployments watcher, \(delays.count) publishes".padding(toLength: 62, withPad: " ", startingAt: 0)
        + String(format: "  p50 %6.2f ms  p99 %6.2f ms   target ≤ 100 ms: %@", delays[delays.count / 2], delays[delays.count * 99 / 100],
                 delays[delays.count - 1] <= 100 ? "met" : "MISSED"))
    watcher.cancel()
    await connection.close()
    await server.shutdown(drainTimeout: .seconds(1))
    try await group.shutdownGracefully()
}

private func milliseconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) * 1e3 + Double(duration.components.attoseconds) / 1e15
}

/// Runs `calls` calls spread over `callers` tasks; returns the elapsed seconds and call count.
private func timed(calls: Int, callers: Int, _ body: @escaping @Sendable (Int) async throws -> Void) async throws -> (seconds: Double, calls: Int) {
    let next = Shared(0)
    let start = ContinuousClock.now
    try await withThrowingTaskGroup(of: Void.self) { tasks in
        for _ in 0..<callers {
            tasks.addTask {
                while true {
                    let index = next.value.withLock { value -> Int in
                        defer { value += 1 }
                        return value
                    }
                    guard index < calls else { return }
                    try await body(index)
                }
            }
        }
        try await tasks.waitForAll()
    }
    return (milliseconds(ContinuousClock.now - start) / 1000, calls)
}

private func report(_ label: String, _ result: (seconds: Double, calls: Int)) {
    print(label.padding(toLength: 62, withPad: " ", startingAt: 0)
        + String(format: "%12.0f calls/s  %8.3f ms/call", Double(result.calls) / result.seconds, result.seconds / Double(result.calls) * 1000))
}

/// A lock-protected value that closures running concurrently can share.
private final class Shared<Value: Sendable>: Sendable {
    let value: Mutex<Value>
    init(_ initial: Value) { value = Mutex(initial) }
}
