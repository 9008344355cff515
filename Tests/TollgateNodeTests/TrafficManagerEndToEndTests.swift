import Foundation
import NIOCore
import NIOPosix
import OpenSSLKit
import RPCCore
import RPCNIO
import Synchronization
import TestSupport
import Testing
import ThrottleCore
import TollgateProto
import TollgateServices

/// Quota leases through real processes: trafficmanager nodes started by
/// tollgated, gateways played by LeaseThrottlers in this process calling
/// them over the real RPC with gateway certificates (the gateway role
/// itself is issue 16).
@Suite(.serialized) struct TrafficManagerEndToEndTests {
    static func unixNow() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    /// A gateway: a throttler whose transport reaches the traffic managers
    /// through reconnecting channels, and its background task.
    final class GatewayClient: Sendable {
        let throttler: LeaseThrottler
        let channels: [String: RPCChannel]
        let background: Task<Void, Never>

        init(id: String, fixture: NodeFixture, trafficManagers: [String: Int], group: any EventLoopGroup,
             configure: (inout LeaseThrottlerConfiguration) -> Void = { _ in }) throws {
            let tls = try TLSContext(configuration: .client(trustRootsFile: fixture.caPath, certificateChainFile: fixture.path("\(id).pem"),
                                                            privateKeyFile: fixture.path("\(id).key"), applicationProtocols: [RPCServer.alpn]))
            var backoff = ReconnectBackoff()
            backoff.maximum = .milliseconds(500)
            let channels = Dictionary(uniqueKeysWithValues: trafficManagers.map { node, port in
                (node, RPCChannel(host: "127.0.0.1", port: port, serverHostname: "localhost", tls: tls, group: group, backoff: backoff))
            })
            let transport = RoutedLeaseTransport(owners: RendezvousOwners(Array(trafficManagers.keys)), timeout: .seconds(2)) { node in
                channels[node].map { TrafficManagerServiceClient($0) }
            }
            var configuration = LeaseThrottlerConfiguration(gatewayID: id, retryMaxMs: 500)
            configure(&configuration)
            let throttler = LeaseThrottler(configuration: configuration, transport: transport)
            self.throttler = throttler
            self.channels = channels
            background = Task { await throttler.run(clock: { TrafficManagerEndToEndTests.unixNow() }, tick: .milliseconds(20)) }
        }

        /// Admits as a gateway would: waiting for a lease when told to.
        func admit(_ request: ThrottleRequest) async -> ThrottleOutcome {
            await decide(request).outcome
        }

        /// The outcome and the clock reading it was decided at: after a wait
        /// for a lease that may be in the next window, so a tally per window
        /// must use this time, not the time the request was offered.
        func decide(_ request: ThrottleRequest) async -> (outcome: ThrottleOutcome, at: Int64) {
            while true {
                let now = TrafficManagerEndToEndTests.unixNow()
                let outcome = throttler.admit(request, now: now)
                guard case .wait(let wait) = outcome else { return (outcome, now) }
                await throttler.waitForLease(wait)
            }
        }

        func stop() async {
            background.cancel()
            _ = await background.value
            for channel in channels.values { await channel.close() }
        }
    }

    static func request(application: String, limit: ThrottleLimit) -> ThrottleRequest {
        ThrottleRequest(apiContext: "/pizzashack", apiVersion: "1.0.0", validation: KeyValidationInfo(
            authorized: true, applicationId: application, subscriptionPolicy: "Bronze", stopOnQuotaReach: true, subscriptionLimit: limit,
            endUserName: "alice@carbon.super"), attributes: RequestAttributes(clientIP: "127.0.0.1"))
    }

    static func isAdmit(_ outcome: ThrottleOutcome) -> Bool {
        if case .admit = outcome { return true }
        return false
    }

    func startTrafficManager(_ id: String, fixture: NodeFixture, port: Int, nodes: NodeProcesses) async throws -> NodeProcess {
        let config = fixture.path("\(id).toml")
        if !FileManager.default.fileExists(atPath: config) {
            try fixture.writeConfig(id, roles: ["trafficmanager"], clusterPort: port, adminPort: nil)
        }
        let node = try nodes.start(config: config)
        #expect(await node.waitFor("ready: node \(id)"), "\(node.output)")
        return node
    }

    /// Three gateways, uneven, offering at least 3× a 600-per-2-seconds
    /// tier: every full window admits at most the limit and at least 99 % of it.
    @Test func threeGatewaysOverRealRPCAdmitTheLimitInEveryWindow() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("tm-1", roles: ["trafficmanager"])
        for id in ["gw-1", "gw-2", "gw-3"] { try fixture.issueNode(id, roles: ["gateway"]) }
        let port = try NodeFixture.freePort()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        try await withNodes { nodes in
            _ = try await startTrafficManager("tm-1", fixture: fixture, port: port, nodes: nodes)
            let gateways = try ["gw-1", "gw-2", "gw-3"].map { try GatewayClient(id: $0, fixture: fixture, trafficManagers: ["tm-1": port], group: group) }
            let limit = ThrottleLimit(timeUnit: .second, unitTime: 2, quota: .requestCount(600))
            let spec = WindowSpec(limit)
            let request = Self.request(application: "app-accuracy", limit: limit)
            // Per window start: admitted, and offered, across the three gateways.
            let tally = WindowTally()
            let started = Self.unixNow()
            // Windows that began after the load did and ended with load still offered.
            func fullWindows() -> [(start: Int64, admitted: Int, offered: Int)] {
                let now = Self.unixNow()
                return tally.counts.withLock { $0 }.filter { $0.key > started && $0.key + 2_000 < now - 100 }.map { ($0.key, $0.value.admitted, $0.value.offered) }
                    .sorted { $0.start < $1.start }
            }
            let load = Task {
                await withTaskGroup(of: Void.self) { tasks in
                    // Uneven shares: 5, 3 and 1 requests per 10 ms, about 1,800 a window in all.
                    for (gateway, perTick) in zip(gateways, [5, 3, 1]) {
                        tasks.addTask {
                            while !Task.isCancelled {
                                for _ in 0..<perTick {
                                    let (outcome, now) = await gateway.decide(request)
                                    let admitted = Self.isAdmit(outcome)
                                    tally.counts.withLock { tally in
                                        let start = spec.window(containing: now).start
                                        tally[start, default: (0, 0)].offered += 1
                                        if admitted { tally[start, default: (0, 0)].admitted += 1 }
                                    }
                                }
                                try? await Task.sleep(for: .milliseconds(10))
                            }
                        }
                    }
                }
            }
            // Three full windows in which more than the limit was offered.
            try await eventually("three full windows offered more than the limit", timeout: .seconds(120), poll: .milliseconds(200)) {
                fullWindows().filter { $0.offered >= 900 }.count >= 3
            }
            load.cancel()
            await load.value
            for gateway in gateways { await gateway.stop() }
            for window in fullWindows() {
                #expect(window.admitted <= 600, "window \(window.start): \(window.admitted) admitted of \(window.offered)")
                if window.offered >= 900 {
                    #expect(window.admitted >= 594, "window \(window.start): \(window.admitted) admitted of \(window.offered)")
                }
            }
            let statistics = gateways.map { $0.throttler.statistics }
            #expect(statistics.allSatisfy { $0.keysInFallback == 0 && $0.failedOperations == 0 }, "\(statistics)")
        }
        try await group.shutdownGracefully()
    }

    /// A window long enough that the test ends inside it: of 5- and 7-hour
    /// windows, the one with more time left.
    static func longLimit(count: UInt64) -> ThrottleLimit {
        let now = unixNow()
        let candidates = [UInt32(5), 7].map { ThrottleLimit(timeUnit: .hour, unitTime: $0, quota: .requestCount(count)) }
        return candidates.max { WindowSpec($0).window(containing: now).end < WindowSpec($1).window(containing: now).end }!
    }

    @Test func aRestartedTrafficManagerContinuesItsWindows() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("tm-1", roles: ["trafficmanager"])
        for id in ["gw-1", "gw-2"] { try fixture.issueNode(id, roles: ["gateway"]) }
        let port = try NodeFixture.freePort()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let limit = Self.longLimit(count: 100)
        let request = Self.request(application: "app-restart", limit: limit)
        let key = ThrottleKey.subscription(applicationID: "app-restart", context: "/pizzashack", version: "1.0.0").description
        try await withNodes { nodes in
            let first = try await startTrafficManager("tm-1", fixture: fixture, port: port, nodes: nodes)
            let before = try GatewayClient(id: "gw-1", fixture: fixture, trafficManagers: ["tm-1": port], group: group)
            for _ in 0..<60 { #expect(Self.isAdmit(await before.admit(request))) }
            await before.stop()
            #expect(await first.stop() == 0)

            _ = try await startTrafficManager("tm-1", fixture: fixture, port: port, nodes: nodes)
            var environment = ["TOLLCTL_NODE": "127.0.0.1:\(port)", "TOLLCTL_CA": fixture.caPath, "TOLLCTL_CERT": fixture.path("admin.pem"),
                               "TOLLCTL_KEY": fixture.path("admin.key"), "XDG_STATE_HOME": fixture.path("state"), "XDG_CONFIG_HOME": fixture.path("config")]
            environment["TOLLCTL_PASSWORD"] = nil
            let status = try runTollctl(["throttle", "status", key, "--output", "json"], environment: environment)
            #expect(status.status == 0, "\(status.output)")
            #expect(status.output.contains(#""traffic_manager" : "tm-1""#) && status.output.contains(#""limit" : 100"#), "\(status.output)")
            // gw-1 used 60 and its last lease lapsed with it: at least 60 are gone for the window.
            let counters = Self.json(status.output)["windows"] as? [[String: Any]] ?? []
            let granted = counters.first?["granted"] as? Int ?? 0
            #expect(granted >= 60 && granted <= 100, "\(status.output)")

            // A new gateway gets only what the restarted traffic manager has left.
            let after = try GatewayClient(id: "gw-2", fixture: fixture, trafficManagers: ["tm-1": port], group: group)
            var admitted = 0
            for _ in 0..<200 where Self.isAdmit(await after.admit(request)) { admitted += 1 }
            await after.stop()
            #expect(admitted == 100 - granted, "\(admitted) admitted after the restart; \(granted) granted before")
            let table = try runTollctl(["throttle", "status", key], environment: environment)
            #expect(table.status == 0 && table.output.contains("limit 100") && table.output.contains("gw-2") && table.output.contains("exhausted"), "\(table.output)")
        }
        try await group.shutdownGracefully()
    }

    static func json(_ text: String) -> [String: Any] {
        guard let start = text.firstIndex(of: "{") else { return [:] }
        return (try? JSONSerialization.jsonObject(with: Data(text[start...].utf8))) as? [String: Any] ?? [:]
    }

    @Test func twoTrafficManagersOneKilledItsKeysFallBackAndRecover() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        for id in ["tm-1", "tm-2"] { try fixture.issueNode(id, roles: ["trafficmanager"]) }
        try fixture.issueNode("gw-1", roles: ["gateway"])
        let ports = ["tm-1": try NodeFixture.freePort(), "tm-2": try NodeFixture.freePort()]
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let limit = Self.longLimit(count: 10)
        let owners = RendezvousOwners(["tm-1", "tm-2"])
        let applications = (0..<30).map { "app-\($0)" }
        func owner(_ app: String) -> String {
            owners.owner(of: ThrottleKey.subscription(applicationID: app, context: "/pizzashack", version: "1.0.0").description)!
        }
        let onFirst = applications.filter { owner($0) == "tm-1" }, onSecond = applications.filter { owner($0) == "tm-2" }
        try #require(!onFirst.isEmpty && !onSecond.isEmpty)
        try await withNodes { nodes in
            _ = try await startTrafficManager("tm-1", fixture: fixture, port: ports["tm-1"]!, nodes: nodes)
            let second = try await startTrafficManager("tm-2", fixture: fixture, port: ports["tm-2"]!, nodes: nodes)
            // Local share of 10 over 2 gateways: 5 a key while its owner is lost.
            let gateway = try GatewayClient(id: "gw-1", fixture: fixture, trafficManagers: ports, group: group) { $0.gateways = 2 }
            for app in applications { #expect(Self.isAdmit(await gateway.admit(Self.request(application: app, limit: limit)))) }
            #expect(gateway.throttler.statistics.keysInFallback == 0)

            kill(second.process.processIdentifier, SIGKILL)
            _ = await second.stop()
            // Admitting on tm-2's keys until each is refused: the local share, then no more.
            for app in onSecond {
                var admitted = 1
                while admitted < 20, Self.isAdmit(await gateway.admit(Self.request(application: app, limit: limit))) { admitted += 1 }
                #expect(admitted == 5, "\(app): \(admitted) admitted in all with its traffic manager lost")
            }
            let lost = gateway.throttler.statistics
            #expect(lost.keysInFallback == onSecond.count && lost.fallbackEntries >= UInt64(onSecond.count), "\(lost)")
            // tm-1's keys go on with leases.
            for app in onFirst { #expect(Self.isAdmit(await gateway.admit(Self.request(application: app, limit: limit)))) }
            #expect(gateway.throttler.statistics.keysInFallback == onSecond.count)

            // tm-2 comes back (its mbstoredb knows each of its keys leased 1+):
            // the keys recover, and what was admitted meanwhile is counted there.
            _ = try await startTrafficManager("tm-2", fixture: fixture, port: ports["tm-2"]!, nodes: nodes)
            try await eventually("tm-2's keys to leave fallback", timeout: .seconds(60), poll: .milliseconds(100)) {
                for app in onSecond { _ = await gateway.admit(Self.request(application: app, limit: limit)) }
                return gateway.throttler.statistics.keysInFallback == 0
            }
            var environment = ["TOLLCTL_NODE": "127.0.0.1:\(ports["tm-2"]!)", "TOLLCTL_CA": fixture.caPath, "TOLLCTL_CERT": fixture.path("admin.pem"),
                               "TOLLCTL_KEY": fixture.path("admin.key"), "XDG_STATE_HOME": fixture.path("state"), "XDG_CONFIG_HOME": fixture.path("config")]
            environment["TOLLCTL_PASSWORD"] = nil
            let key = ThrottleKey.subscription(applicationID: onSecond[0], context: "/pizzashack", version: "1.0.0").description
            try await eventually("the fallback admissions reported to tm-2", timeout: .seconds(60), poll: .milliseconds(200)) {
                let status = try runTollctl(["throttle", "status", key, "--output", "json"], environment: environment)
                let window = (Self.json(status.output)["windows"] as? [[String: Any]])?.first
                // 4 granted before the kill (durable before they were answered), 1 admitted on the local share.
                return (window?["unleased"] as? Int) == 1 && (window?["granted"] as? Int ?? 0) >= 4 && (window?["limit"] as? Int) == 10
            }
            await gateway.stop()
        }
        try await group.shutdownGracefully()
    }
}

/// Admitted and offered requests per window start, across gateways.
final class WindowTally: Sendable {
    let counts = Mutex<[Int64: (admitted: Int, offered: Int)]>([:])
}
