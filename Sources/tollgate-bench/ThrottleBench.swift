import Foundation
import Logging
import NIOCore
import NIOPosix
import OpenSSLKit
import RoleCore
import RPCCore
import RPCNIO
import Synchronization
import ThrottleCore
import TollgateNode
import TollgateProto
import TollgateServices
import TollgateStorage
import TollgateTLS

/// Quota leases (docs/throttling.md): the cost of `LeaseThrottler.admit`
/// on its fast path; accuracy with 3 gateways over real RPC against one
/// traffic manager at 3× a 1,000-per-window tier for 10 windows, with the
/// round trips it took; and the lease operations one traffic manager
/// sustains.
func benchThrottling() async throws {
    let directory = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let ca = try CertificateIssuer.makeAuthority(commonName: "bench CA", validDays: 1)
    try ca.certificatePEM.write(toFile: directory + "/ca.pem", atomically: true, encoding: .utf8)
    func issue(_ id: String, role: String) throws {
        let issued = try CertificateIssuer.issue(CertificateRequest(commonName: id, usage: .node, uniformResourceIdentifiers: ["tollgate://node/\(id)?role=\(role)"],
                                                                    dnsNames: ["localhost"], validUntilOffset: 3600), signedBy: ca)
        try issued.certificatePEM.write(toFile: "\(directory)/\(id).pem", atomically: true, encoding: .utf8)
        try issued.privateKeyPEM.write(toFile: "\(directory)/\(id).key", atomically: true, encoding: .utf8)
    }
    try issue("tm-bench", role: "trafficmanager")
    let gatewayIDs = (1...8).map { "gw-\($0)" }
    for id in gatewayIDs { try issue(id, role: "gateway") }
    func clientTLS(_ id: String) throws -> TLSContext {
        try TLSContext(configuration: .client(trustRootsFile: directory + "/ca.pem", certificateChainFile: "\(directory)/\(id).pem",
                                              privateKeyFile: "\(directory)/\(id).key", applicationProtocols: [RPCServer.alpn]))
    }

    // A trafficmanager node as tollgated assembles it, behind the RPC server.
    let data = directory + "/data"
    try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
    let databases = try Databases.open(dataDirectory: data, only: RoleModules.databases(for: .trafficmanager))
    let assembly = try await NodeAssembly.assemble(roles: [.trafficmanager], nodeID: "tm-bench", databases: databases, logger: Logger(label: "bench"))
    let serverTLS = try TLSContext(configuration: .server(certificateChainFile: directory + "/tm-bench.pem", privateKeyFile: directory + "/tm-bench.key",
                                                          trustRootsFile: directory + "/ca.pem", verification: .peerRequired, applicationProtocols: [RPCServer.alpn]))
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    let access = assembly.access
    let server = RPCServer(methods: assembly.methods, tls: serverTLS) { (context) throws(RPCError) -> Caller in try access.authorize(context) }
    let port = try await server.bind(host: "127.0.0.1", port: 0, group: group).port!
    let clock: @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) }

    try await benchAdmitFastPath(clock: clock)
    try await benchAccuracy(port: port, group: group, tls: clientTLS, clock: clock)
    try await benchLeaseOperations(port: port, group: group, tls: clientTLS, gateways: gatewayIDs)
}

/// A ledger in this process: the fast path measured without a network.
private final class InProcessLedger: LeaseTransport {
    let ledger = Mutex(LeaseLedger())
    let clock: @Sendable () -> Int64

    init(clock: @escaping @Sendable () -> Int64) { self.clock = clock }

    func exchange(_ operations: [LeaseOperation]) async -> [LeaseGrant?] {
        let now = clock()
        return ledger.withLock { ledger in operations.map { ledger.apply($0, gateway: "gw-1", now: now).grant } }
    }
}

private func subscriberRequest(application: String, limit: ThrottleLimit, withAdvancedAndApplication: Bool = false) -> ThrottleRequest {
    var validation = KeyValidationInfo(authorized: true, subscriber: "alice", applicationId: application, applicationName: "App", applicationPolicy: "Wide",
                                       subscriptionPolicy: "Bronze", stopOnQuotaReach: true, subscriptionLimit: limit, endUserName: "alice@carbon.super")
    var apiPolicy: AdvancedPolicy?
    if withAdvancedAndApplication {
        validation.applicationLimit = limit
        apiPolicy = AdvancedPolicy(name: "Wide", applicableLevel: .api, defaultLimit: limit)
    }
    return ThrottleRequest(apiContext: "/pizzashack", apiVersion: "1.0.0", apiPolicy: apiPolicy, validation: validation,
                           attributes: RequestAttributes(clientIP: "10.0.0.1"))
}

private func benchAdmitFastPath(clock: @escaping @Sendable () -> Int64) async throws {
    let far = ThrottleLimit(timeUnit: .hour, unitTime: 1, quota: .requestCount(1_000_000_000_000))
    for (label, request) in [("1 quota (subscription)", subscriberRequest(application: "fast", limit: far)),
                             ("3 quotas (API, subscription, application)", subscriberRequest(application: "fast3", limit: far, withAdvancedAndApplication: true))] {
        let throttler = LeaseThrottler(configuration: LeaseThrottlerConfiguration(gatewayID: "gw-1"), transport: InProcessLedger(clock: clock))
        let background = Task { await throttler.run(clock: clock, tick: .milliseconds(20)) }
        let n = 2_000_000
        var waits = 0
        func admitAll(_ count: Int) async {
            for _ in 0..<count {
                if case .wait(let wait) = throttler.admit(request, now: clock()) {
                    waits += 1
                    await throttler.waitForLease(wait)
                }
            }
        }
        await admitAll(100_000)  // warm: leases grow to the rate
        waits = 0
        let started = ContinuousClock.now
        await admitAll(n)
        let elapsed = ContinuousClock.now - started
        background.cancel()
        _ = await background.value
        let nanoseconds = benchMilliseconds(elapsed) * 1e6 / Double(n)
        print("throttle admit fast path, \(label)".padding(toLength: 62, withPad: " ", startingAt: 0)
            + String(format: "%12.0f ops/s  %8.1f ns/op  (%d of %d waited for a lease)", Double(n) / (benchMilliseconds(elapsed) / 1000), nanoseconds, waits, n))
    }
}

private func benchAccuracy(port: Int, group: any EventLoopGroup, tls: (String) throws -> TLSContext, clock: @escaping @Sendable () -> Int64) async throws {
    let windowMs: Int64 = 2_000, limitPerWindow: UInt64 = 1_000, windows = 10
    let limit = ThrottleLimit(timeUnit: .second, unitTime: UInt32(windowMs / 1000), quota: .requestCount(limitPerWindow))
    let spec = WindowSpec(limit)
    let request = subscriberRequest(application: "accuracy", limit: limit)
    let shares = [0.5, 0.3, 0.2]
    var gateways: [(throttler: LeaseThrottler, connection: RPCConnection, task: Task<Void, Never>)] = []
    for (index, _) in shares.enumerated() {
        let connection = try await RPCConnection.connect(host: "127.0.0.1", port: port, serverHostname: "localhost", tls: try tls("gw-\(index + 1)"), group: group)
        let transport = RoutedLeaseTransport(owners: RendezvousOwners(["tm-bench"])) { _ in TrafficManagerServiceClient(connection) }
        let throttler = LeaseThrottler(configuration: LeaseThrottlerConfiguration(gatewayID: "gw-\(index + 1)"), transport: transport)
        gateways.append((throttler, connection, Task { await throttler.run(clock: clock, tick: .milliseconds(20)) }))
    }
    // Start at a window's beginning; offer 3× the limit, paced in 5 ms ticks.
    let first = spec.window(containing: clock()).end
    while clock() < first { try await Task.sleep(for: .milliseconds(1)) }
    let end = first + Int64(windows) * windowMs
    let tally = WindowTally()
    let perTick = 3.0 * Double(limitPerWindow) / Double(windowMs) * 5
    await withTaskGroup(of: Void.self) { tasks in
        for (gateway, share) in zip(gateways, shares) {
            tasks.addTask {
                var carry = 0.0
                var next = ContinuousClock.now
                while clock() < end {
                    carry += perTick * share
                    while carry >= 1 {
                        carry -= 1
                        let now = clock()
                        var outcome = gateway.throttler.admit(request, now: now)
                        var waited = 0
                        while case .wait(let wait) = outcome {
                            waited += 1
                            await gateway.throttler.waitForLease(wait)
                            outcome = gateway.throttler.admit(request, now: clock())
                        }
                        let admitted = if case .admit = outcome { true } else { false }
                        tally.counts.withLock { tally in
                            let start = spec.window(containing: now).start
                            tally[start, default: (0, 0, 0)].offered += 1
                            tally[start, default: (0, 0, 0)].waits += waited
                            if admitted { tally[start, default: (0, 0, 0)].admitted += 1 }
                        }
                    }
                    next += .milliseconds(5)
                    try? await Task.sleep(until: next, clock: .continuous)
                }
            }
        }
    }
    let rows = tally.counts.withLock { $0 }.filter { $0.key >= first && $0.key < end }.sorted { $0.key < $1.key }
    let ratios = rows.map { Double($0.value.admitted) / Double(limitPerWindow) }
    print("throttle accuracy: 3 gateways over RPC, 1 traffic manager, \(limitPerWindow) per \(windowMs / 1000) s window, offered 3× (50/30/20 %)")
    for (index, row) in rows.enumerated() {
        print(String(format: "  window %2d: offered %5d, admitted %5d (%.3f× the limit), requests that waited for a lease: %d",
                     index + 1, row.value.offered, row.value.admitted, ratios[index], row.value.waits))
    }
    let admitted = rows.reduce(0) { $0 + $1.value.admitted }
    let exchanges = gateways.reduce(UInt64(0)) { $0 + $1.throttler.statistics.exchanges }
    print(String(format: "throttle accuracy: min %.3f×, max %.3f× over %d windows   target 0.99–1.00× every window: %@",
                 ratios.min() ?? 0, ratios.max() ?? 0, rows.count, ratios.allSatisfy { $0 >= 0.99 && $0 <= 1.0 } ? "met" : "MISSED"))
    print(String(format: "throttle round trips per 1,000 admitted requests (ExchangeLeases calls, all gateways): %.1f", Double(exchanges) / Double(max(1, admitted)) * 1000))
    for gateway in gateways {
        gateway.task.cancel()
        _ = await gateway.task.value
        await gateway.connection.close()
    }
}

private func benchLeaseOperations(port: Int, group: any EventLoopGroup, tls: (String) throws -> TLSContext, gateways: [String]) async throws {
    let clients = try await gateways.asyncMap { id in
        TrafficManagerServiceClient(try await RPCConnection.connect(host: "127.0.0.1", port: port, serverHostname: "localhost", tls: try tls(id), group: group))
    }
    let now = Int64(Date().timeIntervalSince1970 * 1000)
    let window = WindowSpec(unit: .hour, count: 1).window(containing: now)
    for batch in [1, 100] {
        let duration: Duration = .seconds(3)
        let counted = OperationCount()
        let started = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            for (index, client) in clients.enumerated() {
                tasks.addTask {
                    var round = 0
                    while ContinuousClock.now - started < duration {
                        // Distinct keys per call: every operation is a grant on its own counter.
                        let operations = (0..<batch).map { item in
                            LeaseOperation(throttleKey: "sub:bench-\(index)-\(round % 50)-\(item):/pizzashack:1.0.0", windowStartUnixMs: window.start,
                                           windowEndUnixMs: window.end, limit: 1_000_000, wanted: 10, returned: 0, used: 5)
                        }
                        let response = try await client.exchangeLeases(ExchangeLeasesRequest(operations: operations))
                        guard response.grants.count == batch else { throw BenchFailure("\(response.grants.count) grants for \(batch) operations") }
                        counted.value.add(batch, ordering: .relaxed)
                        round += 1
                    }
                }
            }
            try await tasks.waitForAll()
        }
        let seconds = benchMilliseconds(ContinuousClock.now - started) / 1000
        print("throttle lease operations, one traffic manager, \(clients.count) gateways, \(batch) per call".padding(toLength: 62, withPad: " ", startingAt: 0)
            + String(format: "%12.0f ops/s  (%.0f calls/s, each made durable before its answer)", Double(counted.value.load(ordering: .relaxed)) / seconds,
                     Double(counted.value.load(ordering: .relaxed)) / seconds / Double(batch)))
    }
}

/// Per window start: admitted, offered, and lease waits, across gateways.
private final class WindowTally: Sendable {
    let counts = Mutex<[Int64: (admitted: Int, offered: Int, waits: Int)]>([:])
}

private final class OperationCount: Sendable {
    let value = Atomic<Int>(0)
}
