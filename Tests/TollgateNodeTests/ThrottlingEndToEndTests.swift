import Foundation
import TestSupport
import Testing

/// Cluster-wide throttling through real gateways (issue 17): a control
/// plane, one traffic manager and three gateway nodes started by tollgated,
/// the Python backend, and load from Python `requests`
/// (Tests/Interop/throttle_load.py) spread unevenly over the gateways.
@Suite(.serialized) struct ThrottlingEndToEndTests {
    typealias Gateway = GatewayEndToEndTests

    /// Adds listeners to a written node configuration's `[listen]`.
    static func addListeners(_ config: String, clusterPort: Int, _ lines: [String]) throws {
        var text = try String(contentsOfFile: config, encoding: .utf8)
        text = text.replacingOccurrences(of: "cluster = \"127.0.0.1:\(clusterPort)\"\n",
                                         with: "cluster = \"127.0.0.1:\(clusterPort)\"\n" + lines.map { $0 + "\n" }.joined())
        try text.write(toFile: config, atomically: true, encoding: .utf8)
    }

    /// One sample of a gateway's Prometheus page; nil when it cannot be read.
    /// The whole metrics page, or what went wrong fetching it.
    static func metricsText(_ port: Int) async -> String {
        guard let page = try? await Gateway.curl(["http://127.0.0.1:\(port)/metrics"], timeout: .seconds(10)) else { return "(curl failed)" }
        return page.status == 0 ? page.output : "(curl exit \(page.status))"
    }

    static func metric(_ port: Int, _ name: String) async -> Double? {
        guard let page = try? await Gateway.curl(["http://127.0.0.1:\(port)/metrics"], timeout: .seconds(10)), page.status == 0 else { return nil }
        for line in page.output.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.dropFirst(name.count + 1))
        }
        return nil
    }

    struct Window {
        let start: Int64
        let admitted: Int
        let refused: Int
    }

    static func windows(_ report: [String: Any]) -> [Window] {
        let windows = report["windows"] as? [String: [String: Int]] ?? [:]
        return windows.compactMap { key, value in Int64(key).map { Window(start: $0, admitted: value["admitted"] ?? 0, refused: value["refused"] ?? 0) } }
            .sorted { $0.start < $1.start }
    }

    /// Three gateways, one traffic manager, a 50-requests-per-2-seconds
    /// tier offered about 3× its limit, 60/30/10 over the gateways: every
    /// window admits exactly 50 (0.99× of 50 rounds up to 50). The traffic manager killed mid-window: the
    /// gateways fall back to a third of the limit each (visible in their
    /// metrics), and after its restart the windows are exact again.
    @Test func leasesKeepEveryWindowAtTheLimitAcrossATrafficManagerRestart() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        let gatewayIDs = ["gw-1", "gw-2", "gw-3"]
        try fixture.issueNode("cp-1", roles: ["publisher", "store", "keymanager"])
        try fixture.issueNode("tm-1", roles: ["trafficmanager"])
        for id in gatewayIDs { try fixture.issueNode(id, roles: ["gateway"]) }
        let (cpCluster, cpAdmin, tmCluster) = (try NodeFixture.freePort(), try NodeFixture.freePort(), try NodeFixture.freePort())
        let cpConfig = try fixture.writeConfig("cp-1", roles: ["publisher", "store", "keymanager"], clusterPort: cpCluster, adminPort: cpAdmin,
                                               extra: "\n[store]\nself_signup_tenants = \"*\"\n")
        let tmConfig = try fixture.writeConfig("tm-1", roles: ["trafficmanager"], clusterPort: tmCluster, adminPort: nil)
        var gateways: [(config: String, http: Int, metrics: Int)] = []
        for id in gatewayIDs {
            let (cluster, http, metrics) = (try NodeFixture.freePort(), try NodeFixture.freePort(), try NodeFixture.freePort())
            let config = try fixture.writeConfig(id, roles: ["gateway"], clusterPort: cluster, adminPort: nil,
                                                 peers: ["publisher": ["127.0.0.1:\(cpCluster)"], "keymanager": ["127.0.0.1:\(cpCluster)"],
                                                         "trafficmanager": ["127.0.0.1:\(tmCluster)"]],
                                                 extra: "\n[gateway]\nthrottle_failure_mode = \"local-share\"\nthrottle_gateways = 3\n"
                                                     + "throttle_retry_max_ms = 500\nthrottle_lease_timeout_ms = 500\n")
            try Self.addListeners(config, clusterPort: cluster, ["http = \"127.0.0.1:\(http)\"", "https = \"127.0.0.1:\(try NodeFixture.freePort())\"", "metrics = \"127.0.0.1:\(metrics)\""])
            gateways.append((config, http, metrics))
        }
        let backend = try Gateway.Backend()
        defer { backend.stop() }

        try await withNodes { nodes in
            let controlPlane = try nodes.start(config: cpConfig)
            #expect(await controlPlane.waitFor("ready: node cp-1"), "\(controlPlane.output)")
            var trafficManager = try nodes.start(config: tmConfig)
            #expect(await trafficManager.waitFor("ready: node tm-1"), "\(trafficManager.output)")
            for (index, gateway) in gateways.enumerated() {
                let node = try nodes.start(config: gateway.config)
                #expect(await node.waitFor("ready: node \(gatewayIDs[index])"), "\(node.output)")
            }

            var environment = ["TOLLCTL_NODE": "127.0.0.1:\(cpAdmin)", "TOLLCTL_CA": fixture.caPath, "XDG_STATE_HOME": fixture.path("state-admin"),
                               "XDG_CONFIG_HOME": fixture.path("config")]
            func tollctl(_ arguments: String..., input: String? = nil) throws -> String {
                let result = try runTollctl(arguments, environment: environment, input: input)
                #expect(result.status == 0, "tollctl \(arguments.joined(separator: " ")): \(result.output)")
                return result.output
            }
            _ = try tollctl("login", "--user", "admin", "--password-stdin", input: fixture.adminPassword + "\n")
            // The Bronze tier scaled down to a two-second window.
            _ = try tollctl("policy", "create", "--kind", "subscription", "Burst", "--requests", "50", "--per", "second", "--unit-time", "2")
            let api = Gateway.json(try tollctl("api", "create", "--name", "Menu", "--api-version", "1", "--context", "/menu", "--resource", "GET /echo",
                                               "--endpoint", "http://127.0.0.1:\(backend.port)", "--tier", "Burst", "--output", "json"))
            let apiID = try #require(api["id"] as? String)
            _ = try tollctl("api", "lifecycle", apiID, "published")
            _ = try tollctl("signup", "--user", "alice", "--password-stdin", input: "Alice-Secret-1\n")
            environment["XDG_STATE_HOME"] = fixture.path("state-alice")
            _ = try tollctl("login", "--user", "alice", "--password-stdin", input: "Alice-Secret-1\n")
            let app = Gateway.json(try tollctl("app", "create", "--name", "loader", "--output", "json"))
            let appID = try #require(app["id"] as? String)
            _ = try tollctl("sub", "create", "--app", appID, "--api", apiID, "--tier", "Burst")
            let token = try #require(Gateway.json(try tollctl("key", "generate", appID, "--type", "production", "--output", "json"))["access_token"] as? String)
            for gateway in gateways {
                try await Gateway.waitForStatus("http://127.0.0.1:\(gateway.http)/menu/1/echo", "200", headers: ["Authorization: Bearer \(token)"])
            }

            let urls = gateways.map { "http://127.0.0.1:\($0.http)/menu/1/echo" }.joined(separator: ",")
            let windowMs: Int64 = 2000
            func load(windows: Int) async throws -> (windows: [Window], codes: [String: Int]) {
                let result = try await runTool(Gateway.python, [Gateway.interop + "/throttle_load.py", "--urls", urls, "--weights", "6,3,1",
                                                                "--token", token, "--rate", "75", "--window-ms", String(windowMs),
                                                                "--windows", String(windows)], timeout: .seconds(Int64(windows) * 2 + 60))
                #expect(result.status == 0, "\(result.output)")
                let report = Gateway.json(result.output)
                return (Self.windows(report), report["codes"] as? [String: Int] ?? [:])
            }
            /// Windows offered at least twice the limit must admit the limit: 0.99 × 50 rounds up to 50.
            func expectExact(_ windows: [Window], _ phase: String) {
                let loaded = windows.filter { $0.admitted + $0.refused >= 100 }
                #expect(loaded.count >= 2, "\(phase): too few windows offered 2× the limit (a slow client?): \(windows)")
                for window in windows {
                    #expect(window.admitted <= 50, "\(phase): window \(window.start) admitted \(window.admitted)")
                }
                for window in loaded {
                    #expect(window.admitted >= 50, "\(phase): window \(window.start) admitted \(window.admitted) of \(window.admitted + window.refused)")
                }
            }

            // Leases: exact in every window.
            let steady = try await load(windows: 4)
            expectExact(steady.windows, "with the traffic manager")
            #expect(steady.codes.keys.allSatisfy { $0 == "900804" }, "refusals are subscription ones: \(steady.codes)")
            var roundTrips = 0.0
            for gateway in gateways { roundTrips += await Self.metric(gateway.metrics, "tollgate_gateway_throttle_round_trips_per_1000_requests") ?? 0 }
            print("measured: lease round trips per 1,000 requests, summed over three gateways at 3× the limit: \(roundTrips)")

            // The traffic manager killed mid-window, under load.
            let outage = Task { try await load(windows: 6) }
            try await Task.sleep(for: .milliseconds(3 * windowMs))
            let killedAt = Int64(Date().timeIntervalSince1970 * 1000)
            kill(trafficManager.process.processIdentifier, SIGKILL)
            _ = await trafficManager.stop()
            try await eventually("a gateway reports keys in fallback", timeout: .seconds(20), poll: .milliseconds(100)) {
                var inFallback = 0.0
                for gateway in gateways { inFallback += await Self.metric(gateway.metrics, "tollgate_gateway_throttle_keys_in_fallback") ?? 0 }
                return inFallback > 0
            }
            var entries = 0.0
            for gateway in gateways { entries += await Self.metric(gateway.metrics, "tollgate_gateway_throttle_fallback_entries_total") ?? 0 }
            #expect(entries >= 1, "fallback entries counted")
            try await Task.sleep(for: .milliseconds(2 * windowMs))
            let restartedAt = Int64(Date().timeIntervalSince1970 * 1000)
            trafficManager = try nodes.start(config: tmConfig)
            #expect(await trafficManager.waitFor("ready: node tm-1"), "\(trafficManager.output)")
            let outageWindows = try await outage.value.windows
            // Whole windows without a traffic manager: each gateway admits at most ⌈50 / 3⌉.
            let fallbackWindows = outageWindows.filter { $0.start >= killedAt + 500 && $0.start + windowMs <= restartedAt }
            for window in fallbackWindows {
                #expect(window.admitted <= 3 * 17, "fallback window \(window.start) admitted \(window.admitted)")
                #expect(window.admitted > 0, "the local share admits in fallback window \(window.start)")
            }
            try await eventually("no gateway has keys in fallback", timeout: .seconds(20), poll: .milliseconds(100)) {
                var inFallback = 0.0
                for gateway in gateways { inFallback += await Self.metric(gateway.metrics, "tollgate_gateway_throttle_keys_in_fallback") ?? 1 }
                return inFallback == 0
            }
            // Back to leases: exact again.
            expectExact(try await load(windows: 4).windows, "after the traffic manager's restart")
            _ = await controlPlane.stop()
        }
    }
}
