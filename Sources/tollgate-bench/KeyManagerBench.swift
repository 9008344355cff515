import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import OpenSSLKit
import RoleCore
import RPCCore
import RPCNIO
import Synchronization
import TollgateKeyManager
import ThriftNIO
import TollgateListeners
import TollgateNode
import TollgateProto
import TollgatePublisher
import TollgateServices
import TollgateStorage
import TollgateStore
import TollgateTLS
import TollgateUsers

/// The key manager as gateways and OAuth clients use it:
/// - token issue (client credentials) over HTTPS with keep-alive, 16
///   clients, with an empty token table and again with 1,000,000 tokens;
/// - ValidateKey over RPC (mutual TLS, gateway certificate), 16 callers;
/// - validateKey over WSO2's Thrift (TLS, 16 persistent connections of the
///   gateway's pooled client), 16 callers, beside the RPC in the same run;
/// - revoke → a connected WatchRevocations watcher.
func benchKeyManager() async throws {
    let storedTokens = Int(ProcessInfo.processInfo.environment["TOLLGATE_BENCH_TOKENS"] ?? "1000000") ?? 1_000_000
    let (tlsDirectory, serverTLS, clientTLS) = try makeBenchTLS(alpn: [RPCServer.alpn], uris: ["tollgate://node/bench?role=gateway"])
    defer { try? FileManager.default.removeItem(atPath: tlsDirectory) }
    let httpServerTLS = try TLSContext(configuration: .server(certificateChainFile: tlsDirectory + "/node.pem", privateKeyFile: tlsDirectory + "/node.key",
                                                              trustRootsFile: tlsDirectory + "/ca.pem", verification: .none, applicationProtocols: ["http/1.1"]))
    let httpClientTLS = try TLSContext(configuration: .client(trustRootsFile: tlsDirectory + "/ca.pem", applicationProtocols: ["http/1.1"]))
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)

    // Two control-plane nodes: one with an empty token table, one holding a
    // million tokens. Their rounds alternate, so disk and CPU noise on a
    // shared machine falls on both alike, and the medians are compared.
    let empty = try await BenchKeyManagerNode.make(group: group, tls: httpServerTLS)
    defer { try? FileManager.default.removeItem(atPath: empty.data) }
    let full = try await BenchKeyManagerNode.make(group: group, tls: httpServerTLS)
    defer { try? FileManager.default.removeItem(atPath: full.data) }
    let filled = ContinuousClock.now
    let written = try await full.fill(tokens: storedTokens)
    print("keymanager: stored \(written) tokens in \(Int(benchMilliseconds(ContinuousClock.now - filled) / 1000)) s")

    var rates: [String: [Double]] = [:]
    var p99s: [String: [Double]] = [:]
    // TOLLGATE_BENCH_ISSUE_ROUNDS=0 skips token issue (e.g. to profile validation alone).
    let issueRounds = Int(ProcessInfo.processInfo.environment["TOLLGATE_BENCH_ISSUE_ROUNDS"] ?? "3") ?? 3
    for _ in 0..<issueRounds {
        for (label, node) in [("empty", empty), ("\(written / 1000)k stored", full)] {
            let (rate, p99) = try await node.issueRound(tls: httpClientTLS, group: group)
            rates[label, default: []].append(rate)
            p99s[label, default: []].append(p99)
        }
    }
    func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
    for label in ["empty", "\(written / 1000)k stored"] where issueRounds > 0 {
        let rate = median(rates[label]!)
        print("keymanager token issue, HTTPS, 16 clients, \(label)".padding(toLength: 62, withPad: " ", startingAt: 0)
            + String(format: "%9.0f calls/s  p99 %5.2f ms (medians of %d rounds: %@)   target ≥ 5000/s: %@", rate, median(p99s[label]!), issueRounds,
                     rates[label]!.map { String(format: "%.0f", $0) }.joined(separator: ", "), rate >= 5000 ? "met" : "MISSED"))
    }
    if issueRounds > 0 {
        let ratio = median(rates["\(written / 1000)k stored"]!) / median(rates["empty"]!)
        print("keymanager token issue, \(written / 1000)k tokens / empty".padding(toLength: 62, withPad: " ", startingAt: 0)
            + String(format: "%9.2f×   target ≥ 0.9×: %@", ratio, ratio >= 0.9 ? "met" : "MISSED"))
    }

    let assembly = empty.assembly
    let keyManager = empty.keyManager
    let keys = empty.keys
    let oauth = empty.listener

    // ValidateKey over RPC as a gateway.
    let access = assembly.access
    let server = RPCServer(methods: assembly.methods, tls: serverTLS) { (context) throws(RPCError) -> Caller in try access.authorize(context) }
    let rpcPort = try await server.bind(host: "127.0.0.1", port: 0, group: group).port!
    // A gateway keeps a small pool of connections per key manager (DESIGN.md); each connection's calls run on one event loop.
    let connections = try await (0..<4).asyncMap { _ in
        try await RPCConnection.connect(host: "127.0.0.1", port: rpcPort, serverHostname: "localhost", tls: clientTLS, group: group)
    }
    let pool = connections.map { KeyManagerServiceClient($0) }
    let gateway = pool[0]
    let tokenHash = SHA256.hash(keys.token!.accessToken)
    let validate = ValidateKeyRequest(context: "/pizzashack", version: "1.0.0", tokenHash: tokenHash, tokenId: KeyManager.tokenID(of: keys.token!.accessToken)!,
                                      requiredAuthLevel: .any, matchingResource: "/menu", verb: .get)
    guard try await gateway.validateKey(validate).info?.authorized == true else { throw BenchFailure("the bench token does not validate") }
    // The handler's own work, without the RPC around it: one thread, one read transaction per call.
    try measure("keymanager validation alone (no RPC), 1 thread", operations: 200_000) {
        for _ in 0..<200_000 { guard try keyManager.validate(validate).authorized else { throw BenchFailure("validation refused") } }
    }
    let validations = 100_000
    // Callers on the connections' event loops, as the gateway's request
    // tasks call (no thread hop per call), then on Swift's global executor.
    let loopExecutors: [any TaskExecutor] = connections.map(\.taskExecutor)
    var rpcRates: [Bool: Double] = [:]
    for onLoops in [true, false] {
        let (validateSeconds, validateLatencies) = try await timedLatencies(calls: validations, callers: 16, executors: onLoops ? loopExecutors : []) { _, caller in
            guard try await pool[caller % pool.count].validateKey(validate).info?.authorized == true else { throw BenchFailure("validation refused") }
        }
        rpcRates[onLoops] = printValidationRate("keymanager ValidateKey, RPC, 16 callers/4 conns, \(onLoops ? "on loops" : "global exec.")",
                                                calls: validations, seconds: validateSeconds, latencies: validateLatencies)
    }

    // For comparison with Thrift, which has one call in flight per connection:
    // the RPC with one connection per caller (no calls sharing a connection).
    let single = try await (0..<16).asyncMap { _ in
        try await RPCConnection.connect(host: "127.0.0.1", port: rpcPort, serverHostname: "localhost", tls: clientTLS, group: group)
    }
    let singlePool = single.map { KeyManagerServiceClient($0) }
    let (singleSeconds, singleLatencies) = try await timedLatencies(calls: validations, callers: 16, executors: single.map(\.taskExecutor)) { _, caller in
        guard try await singlePool[caller].validateKey(validate).info?.authorized == true else { throw BenchFailure("validation refused") }
    }
    print("keymanager ValidateKey, RPC, 16 callers/16 conns, on loops".padding(toLength: 62, withPad: " ", startingAt: 0)
        + String(format: "%9.0f calls/s  p50 %5.2f ms  p99 %5.2f ms   (for comparison)", Double(validations) / singleSeconds,
                 singleLatencies[singleLatencies.count / 2], singleLatencies[singleLatencies.count * 99 / 100]))
    for connection in single { await connection.close() }

    let thrift = try await benchThriftValidation(node: empty, tlsDirectory: tlsDirectory, group: group)
    for onLoops in [true, false] {
        let ratio = rpcRates[onLoops]! / thrift[onLoops]!
        print("keymanager validateKey, RPC / Thrift rate, \(onLoops ? "on loops" : "global exec.")".padding(toLength: 62, withPad: " ", startingAt: 0)
            + String(format: "%9.2f×   target ≤ 1.2×: %@", ratio, ratio <= 1.2 ? "met" : "MISSED"))
    }

    // Revoke → watcher: each revocation timed from the call's start to its arrival.
    let arrivals = AsyncStream<TokenRevocation>.makeStream()
    let watcher = Task {
        defer { arrivals.continuation.finish() }
        try await gateway.watchRevocations(WatchRevocationsRequest()) { response in
            for revocation in response.revocations { arrivals.continuation.yield(revocation) }
        }
    }
    var iterator = arrivals.stream.makeAsyncIterator()
    var delays: [Double] = []
    for round in 0..<200 {
        let token = try await keyManager.token({
            var request = TokenRequest(grantType: .clientCredentials)
            request.clientID = keys.key.consumerKey
            return request
        }(), for: try keyManager.client(keys.key.consumerKey))
        let hash = SHA256.hash(token.accessToken)
        let began = ContinuousClock.now
        _ = try await keyManager.revoke(id: KeyManager.tokenID(of: token.accessToken)!)
        var arrived = false
        while let revocation = await iterator.next() {
            if revocation.target == .tokenHash(hash) { arrived = true; break }
        }
        guard arrived else { throw BenchFailure("the revocation feed ended after \(round) revocations") }
        delays.append(benchMilliseconds(ContinuousClock.now - began))
    }
    delays.sort()
    print("keymanager revoke → WatchRevocations watcher".padding(toLength: 62, withPad: " ", startingAt: 0)
        + String(format: "  p50 %6.2f ms  p99 %6.2f ms   target p99 ≤ 100 ms: %@", delays[delays.count / 2], delays[delays.count * 99 / 100],
                 delays[delays.count * 99 / 100] <= 100 ? "met" : "MISSED"))
    watcher.cancel()
    for connection in connections { await connection.close() }
    await server.shutdown(drainTimeout: .seconds(1))
    await oauth.shutdown(drainTimeout: .seconds(1))
    await full.listener.shutdown(drainTimeout: .seconds(1))
    try await group.shutdownGracefully()
}

/// validateKey as a WSO2 gateway (or Tollgate's gateway with
/// `key_validation = "thrift"`) calls it: the keymanager module's own
/// `thrift` and `oauth` listeners, the gateway's pooled client with 16
/// persistent TLS connections, 16 callers.
/// Thrift `validateKey` rates: callers on the group's loops (true), then on the global executor (false).
func benchThriftValidation(node: BenchKeyManagerNode, tlsDirectory: String, group: any EventLoopGroup) async throws -> [Bool: Double] {
    let serverTLS = try TLSContext(configuration: .server(certificateChainFile: tlsDirectory + "/node.pem", privateKeyFile: tlsDirectory + "/node.key"))
    guard let module = node.assembly.module(KeyManagerModule.self) else { throw BenchFailure("no keymanager module") }
    var listeners: [String: (Listener, Int)] = [:]
    for declaration in module.listeners {
        let configure: @Sendable (any Channel) throws -> Void
        switch declaration.kind {
        case .http(let responder): configure = HTTPListener.configure(responder: responder, tls: { serverTLS }, limits: HTTPListenerLimits())
        case .stream(let service): configure = StreamListener.configure(service: service, tls: { serverTLS }, idleTimeout: .seconds(300))
        case .proxy: continue
        }
        let listener = Listener(name: declaration.name, maxConnections: 4096, observer: nil, configure: configure)
        listeners[declaration.name] = (listener, try await listener.bind(host: "127.0.0.1", port: 0, group: group).port!)
    }
    guard let (thriftListener, thriftPort) = listeners["thrift"], let (oauthListener, oauthPort) = listeners["oauth"] else {
        throw BenchFailure("the keymanager declares no thrift or oauth listener")
    }
    var configuration = ThriftKeyValidationClient.Configuration(
        keymanagers: [.init(host: "localhost", thriftPort: thriftPort, authenticatorURL: "https://localhost:\(oauthPort)/thriftAuthenticator")],
        username: "admin", password: "bench-Admin-1", trustRootsFile: tlsDirectory + "/ca.pem")
    configuration.maxIdlePerKeymanager = 16
    let client = try ThriftKeyValidationClient(configuration: configuration, eventLoopGroup: group)
    let token = node.keys.token!.accessToken
    @Sendable func validate() async throws -> Bool {
        try await client.validateKey(context: "/pizzashack", version: "1.0.0", accessToken: token, requiredAuthenticationLevel: "Any",
                                     clientDomain: nil, matchingResource: "/menu", httpVerb: "GET").authorized
    }
    guard try await validate() else { throw BenchFailure("the bench token does not validate over Thrift") }
    // Open the 16 connections before measuring, spread over the loops as the callers are.
    let loopExecutors: [any TaskExecutor] = group.makeIterator().map { LoopTaskExecutor(eventLoop: $0) }
    _ = try await timedLatencies(calls: 2_000, callers: 16, executors: loopExecutors) { _, _ in guard try await validate() else { throw BenchFailure("validation refused") } }
    let calls = 100_000
    var rates: [Bool: Double] = [:]
    for onLoops in [true, false] {
        let (seconds, latencies) = try await timedLatencies(calls: calls, callers: 16, executors: onLoops ? loopExecutors : []) { _, _ in
            guard try await validate() else { throw BenchFailure("validation refused") }
        }
        rates[onLoops] = printValidationRate("keymanager validateKey, Thrift, 16 callers/\(client.openConnections) TLS, \(onLoops ? "on loops" : "global exec.")",
                                             calls: calls, seconds: seconds, latencies: latencies)
    }
    await client.shutdown()
    await thriftListener.shutdown(drainTimeout: .seconds(1))
    await oauthListener.shutdown(drainTimeout: .seconds(1))
    return rates
}

/// A control-plane node (publisher, store, keymanager) assembled as
/// tollgated assembles it, with an API, a subscriber's application
/// subscribed at Gold, its keys, and the oauth listener.
struct BenchKeyManagerNode {
    let data: String
    let assembly: NodeAssembly
    let keyManager: KeyManager
    let keys: ConsumerStore.GeneratedKeys
    let basic: String
    let listener: Listener
    let port: Int

    static func make(group: any EventLoopGroup, tls: TLSContext) async throws -> BenchKeyManagerNode {
        let data = try temporaryDirectory()
        try "bench-Admin-1\n".write(toFile: data + "/admin.password", atomically: true, encoding: .utf8)
        let roles: [Role] = [.publisher, .store, .keymanager]
        let assembly = try await NodeAssembly.assemble(
            roles: roles, databases: try Databases.open(dataDirectory: data, only: roles.reduce(into: Set()) { $0.formUnion(RoleModules.databases(for: $1)) }),
            sections: ["users": ConfigSection(values: ["bootstrap_admin": .string("admin"), "bootstrap_password_file": .string(data + "/admin.password")])],
            logger: Logger(label: "bench"))
        let keyManager = assembly.module(KeyManagerModule.self)!.keyManager
        let store = assembly.module(StoreModule.self)!.store
        let publisher = assembly.module(PublisherModule.self)!.store
        var api = Api()
        api.name = "PizzaShack"
        api.version = "1.0.0"
        api.context = "/pizzashack"
        api.resources = [ApiResource(uriTemplate: "/menu", verb: .get, authType: .any)]
        api.productionEndpoints = EndpointConfig(strategy: .single(Endpoint(url: "https://backend.example.com/pizza")))
        api.subscriptionPolicies = ["Gold"]
        let created = try await publisher.createApi(api, actor: "admin", tenant: superTenant)
        _ = try await publisher.changeLifecycle(created.id, to: .published, options: .init(), actor: "admin", tenant: superTenant)
        _ = try await keyManager.users.createUser(User(username: "alice", roles: ["subscriber"]), password: "Alice-Secret-1", tenant: superTenant)
        let alice = StoreCaller(user: UserPrincipal(username: "alice", tenant: superTenant, roles: ["subscriber"], permissions: [Permission.subscribe],
                                                    sessionID: nil, sessionExpiresAtUnixMs: 0), tenant: superTenant)
        let application = try await store.createApplication(Application(name: "bench"), caller: alice)
        _ = try await store.subscribe(application: application.id, api: created.id, tier: "Gold", caller: alice)
        let keys = try await store.generateKeys(GenerateKeysRequest(applicationId: application.id, keyType: .production), caller: alice)
        let listener = Listener(name: "oauth", maxConnections: 4096, observer: nil,
                                configure: HTTPListener.configure(responder: OAuthEndpoints(keyManager: keyManager), tls: { tls }, limits: HTTPListenerLimits()))
        let port = try await listener.bind(host: "127.0.0.1", port: 0, group: group).port!
        return BenchKeyManagerNode(data: data, assembly: assembly, keyManager: keyManager, keys: keys,
                                   basic: "Basic " + Data("\(keys.key.consumerKey):\(keys.secret)".utf8).base64EncodedString(), listener: listener, port: port)
    }

    /// Tokens issued over the last day, as a busy key manager's table holds them, written in bulk.
    func fill(tokens count: Int) async throws -> Int {
        let batch = 5_000
        var written = 0
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        while written < count {
            let start = written
            try await keyManager.database.database.write { [keyManager] txn in
                for index in start..<min(start + batch, count) {
                    let issued = now - 86_400_000 + Int64(index) * 86_400_000 / Int64(count)
                    let token = OAuthToken(tokenHash: SHA256.hash("bench-token-\(index)"), kind: .access, consumerKey: "client-\(index % 10_000)",
                                           keyType: .production, applicationId: "app-\(index % 10_000)", tenantDomain: superTenant,
                                           username: "user-\(index % 50_000)", userType: .application, grantType: .clientCredentials, scopes: ["default"],
                                           tokenId: try SecretHasher.orderedID(at: issued), issuedAtUnixMs: issued, state: .active,
                                           stateChangedAtUnixMs: issued, expiresAtUnixMs: issued + 3_600_000)
                    try keyManager.database.tokens.put(token, in: &txn)
                }
            }
            written = min(start + batch, count)
        }
        return written
    }

    /// 20,000 client-credentials token requests from 16 keep-alive HTTPS clients: calls/s and p99 (ms).
    func issueRound(tls: TLSContext, group: any EventLoopGroup) async throws -> (Double, Double) {
        let clients = try await (0..<16).asyncMap { _ in try await KeepAliveHTTPSClient.connect(port: port, tls: tls, group: group) }
        let body = "grant_type=client_credentials"
        let basic = self.basic
        for client in clients { _ = try await client.post("/oauth2/token", body: body, authorization: basic) }  // warm
        let calls = 20_000
        let (seconds, latencies) = try await timedLatencies(calls: calls, callers: 16) { _, caller in
            let (status, _) = try await clients[caller].post("/oauth2/token", body: body, authorization: basic)
            guard status == 200 else { throw BenchFailure("token endpoint answered \(status)") }
        }
        for client in clients { await client.close() }
        return (Double(calls) / seconds, latencies[latencies.count * 99 / 100])
    }
}

struct BenchFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Prints a validation path's rate and latencies against the issue's
/// targets (≥ 20,000 calls/s, p99 ≤ 2 ms); returns the rate.
func printValidationRate(_ label: String, calls: Int, seconds: Double, latencies: [Double]) -> Double {
    let rate = Double(calls) / seconds
    let p99 = latencies[latencies.count * 99 / 100]
    print(label.padding(toLength: 62, withPad: " ", startingAt: 0)
        + String(format: "%9.0f calls/s  p50 %5.2f ms  p99 %5.2f ms   target ≥ 20000/s, p99 ≤ 2 ms: %@", rate,
                 latencies[latencies.count / 2], p99, rate >= 20_000 && p99 <= 2 ? "met" : "MISSED"))
    return rate
}

func benchMilliseconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) * 1e3 + Double(duration.components.attoseconds) / 1e15
}

/// Runs `calls` calls over `callers` tasks (each call gets its index and its
/// caller's number); returns the elapsed seconds and the sorted latencies in ms.
/// With `executors`, caller `i` runs on `executors[i % count]`.
func timedLatencies(calls: Int, callers: Int, executors: [any TaskExecutor] = [], _ body: @escaping @Sendable (Int, Int) async throws -> Void) async throws -> (Double, [Double]) {
    let next = Counter()
    let start = ContinuousClock.now
    let latencies = try await withThrowingTaskGroup(of: [Double].self) { tasks in
        for caller in 0..<callers {
            tasks.addTask(executorPreference: executors.isEmpty ? nil : executors[caller % executors.count]) {
                var own: [Double] = []
                while true {
                    let index = next.value.wrappingAdd(1, ordering: .relaxed).oldValue
                    guard index < calls else { return own }
                    let began = ContinuousClock.now
                    try await body(index, caller)
                    own.append(benchMilliseconds(ContinuousClock.now - began))
                }
            }
        }
        return try await tasks.reduce(into: [Double]()) { $0 += $1 }
    }
    return (benchMilliseconds(ContinuousClock.now - start) / 1000, latencies.sorted())
}

/// An atomic counter shared by the callers' tasks.
final class Counter: Sendable {
    let value = Atomic<Int>(0)
}

extension Sequence {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async throws -> [T] {
        var results: [T] = []
        for element in self { results.append(try await transform(element)) }
        return results
    }
}

/// A minimal HTTP/1.1 client over the project's TLS handler: one
/// keep-alive connection, one request at a time (what a load generator's
/// connection does).
final class KeepAliveHTTPSClient: Sendable {
    let channel: any Channel
    let handler: ResponseCollector

    private init(channel: any Channel, handler: ResponseCollector) {
        self.channel = channel
        self.handler = handler
    }

    static func connect(port: Int, tls: TLSContext, group: any EventLoopGroup) async throws -> KeepAliveHTTPSClient {
        let collector = ResponseCollector()
        let channel = try await ClientBootstrap(group: group)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(TLSHandler(context: tls, serverHostname: "localhost"))
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(collector)
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        return KeepAliveHTTPSClient(channel: channel, handler: collector)
    }

    func post(_ path: String, body: String, authorization: String) async throws -> (Int, ByteBuffer) {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: "localhost")
        headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
        headers.add(name: "Authorization", value: authorization)
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        let head = HTTPRequestHead(version: .http1_1, method: .POST, uri: path, headers: headers)
        let promise = channel.eventLoop.makePromise(of: (Int, ByteBuffer).self)
        let buffer = channel.allocator.buffer(string: body)
        let handler = self.handler
        channel.eventLoop.execute {
            handler.pending = promise
        }
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        channel.write(HTTPClientRequestPart.body(.byteBuffer(buffer)), promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        return try await promise.futureResult.get()
    }

    func close() async {
        try? await channel.close()
    }
}

/// Completes the pending request's promise with the response's status and body.
final class ResponseCollector: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: touched only on the channel's event loop.
    typealias InboundIn = HTTPClientResponsePart
    var pending: EventLoopPromise<(Int, ByteBuffer)>?
    private var status = 0
    private var body = ByteBuffer()

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = Int(head.status.code)
            body.clear()
        case .body(var part):
            body.writeBuffer(&part)
        case .end:
            let promise = pending
            pending = nil
            promise?.succeed((status, body))
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        pending?.fail(error)
        pending = nil
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        pending?.fail(ChannelError.ioOnClosedChannel)
        pending = nil
    }
}
