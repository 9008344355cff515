import Foundation
import TestSupport
import Testing
import TollgateProto
import TollgateStorage

/// Usage analytics through real processes (issue 18): a control plane, an
/// analytics node writing the control plane's statdb (same host, shared
/// LMDB environment), two gateways, the Python backend, and calls from
/// Python `requests` (Tests/Interop/analytics_load.py) with every outcome:
/// 200, 401, 403 (a block condition), 429, a backend 500 and a backend
/// timeout (504). statdb must count exactly what the clients saw, across an
/// analytics node killed mid-stream and a gateway killed with batches in its
/// spool; roll-ups agree; each caller of `tollctl stats` sees only theirs.
@Suite(.serialized) struct AnalyticsEndToEndTests {
    typealias Gateway = GatewayEndToEndTests

    struct Counts: Equatable, CustomStringConvertible {
        var byContextAndClass: [String: UInt64] = [:]
        var reasons: [String: UInt64] = [:]
        var requests: UInt64 = 0
        var blocked: UInt64 = 0
        var throttled: UInt64 = 0
        static func + (a: Counts, b: Counts) -> Counts {
            var sum = a
            sum.requests += b.requests
            sum.blocked += b.blocked
            sum.throttled += b.throttled
            for (key, value) in b.byContextAndClass { sum.byContextAndClass[key, default: 0] += value }
            for (key, value) in b.reasons { sum.reasons[key, default: 0] += value }
            return sum
        }
        var description: String { "requests \(requests), blocked \(blocked), throttled \(throttled), \(byContextAndClass.sorted { $0.key < $1.key }), \(reasons)" }
    }

    /// Totals of one granularity's rows, read from statdb as the nodes run.
    /// The counts of `granularity`'s rows from `from` on. Hours and days
    /// hold the minutes before the roll-up watermark; the minutes from it on
    /// are added from their own rows, read in the same transaction.
    static func totals(_ statdb: StatisticsDatabase, _ granularity: BucketGranularity, from: Int64) throws -> Counts {
        var counts = Counts()
        func add(_ row: UsageSummary) {
            counts.requests += row.requestCount
            counts.blocked += row.blockedCount
            counts.throttled += row.throttledCount
            counts.byContextAndClass["\(row.apiContext) \(row.statusClass)xx", default: 0] += row.requestCount
            for reason in row.throttledReasons { counts.reasons[reason.reason, default: 0] += reason.count }
        }
        try statdb.database.read { txn in
            try statdb.forEachSummary(granularity, fromUnixMs: from, toUnixMs: .max, in: txn) { add($0); return true }
            if granularity != .minute, let watermark = try statdb.rollupWatermark(in: txn) {
                try statdb.forEachSummary(.minute, fromUnixMs: max(from, watermark), toUnixMs: .max, in: txn) { add($0); return true }
            }
        }
        return counts
    }

    /// What the clients saw, in the same shape.
    static func expected(_ reports: [[String: [String: Int]]], contexts: [String: String]) -> Counts {
        var counts = Counts()
        for report in reports {
            for (label, codes) in report {
                for (code, count) in codes {
                    let status = Int(code) ?? 0
                    counts.requests += UInt64(count)
                    counts.byContextAndClass["\(contexts[label] ?? "?") \(status / 100)xx", default: 0] += UInt64(count)
                    if status == 429 {
                        counts.throttled += UInt64(count)
                        counts.reasons["SUBSCRIPTION_LIMIT_EXCEEDED", default: 0] += UInt64(count)
                    }
                    if label.hasSuffix("blocked") { counts.blocked += UInt64(count) }
                }
            }
        }
        return counts
    }

    /// Runs a plan file through Tests/Interop/analytics_load.py; the status codes per label.
    static func run(_ plan: String) async throws -> [String: [String: Int]] {
        let result = try await runTool(Gateway.python, [Gateway.interop + "/analytics_load.py", plan], timeout: .seconds(300))
        #expect(result.status == 0, "\(result.output)")
        return Gateway.json(result.output)["codes"] as? [String: [String: Int]] ?? [:]
    }

    @Test func everyCallIsCountedOnceAcrossAnalyticsAndGatewayCrashes() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("cp-1", roles: ["publisher", "store", "keymanager"])
        try fixture.issueNode("an-1", roles: ["analytics"])
        try fixture.issueNode("gw-1", roles: ["gateway"])
        try fixture.issueNode("gw-2", roles: ["gateway"])
        let (cpCluster, cpAdmin, anCluster) = (try NodeFixture.freePort(), try NodeFixture.freePort(), try NodeFixture.freePort())
        let cpConfig = try fixture.writeConfig("cp-1", roles: ["publisher", "store", "keymanager"], clusterPort: cpCluster, adminPort: cpAdmin,
                                               extra: "\n[store]\nself_signup_tenants = \"*\"\n")
        // The analytics node writes the control plane's statdb, as on one host.
        // Minutes rolled into their hours and days as soon as they end, while
        // their last batches may still arrive: the hour and day totals checked
        // below then cover both paths of a call.
        let anConfig = try fixture.writeConfig("an-1", roles: ["analytics"], clusterPort: anCluster, adminPort: nil,
                                               extra: "\n[analytics]\nrollup_delay_seconds = 0\n")
        var text = try String(contentsOfFile: anConfig, encoding: .utf8)
        text = text.replacingOccurrences(of: "data_directory = \"data-an-1\"", with: "data_directory = \"data-cp-1\"")
        try text.write(toFile: anConfig, atomically: true, encoding: .utf8)
        var gateways: [(id: String, config: String, http: Int, metrics: Int)] = []
        for id in ["gw-1", "gw-2"] {
            let (cluster, http, metrics) = (try NodeFixture.freePort(), try NodeFixture.freePort(), try NodeFixture.freePort())
            let config = try fixture.writeConfig(id, roles: ["gateway"], clusterPort: cluster, adminPort: nil,
                                                 peers: ["publisher": ["127.0.0.1:\(cpCluster)"], "keymanager": ["127.0.0.1:\(cpCluster)"],
                                                         "analytics": ["127.0.0.1:\(anCluster)"]],
                                                 extra: "\n[gateway]\nbackend_read_timeout_ms = 1000\nusage_ack_timeout_ms = 3000\n")
            try ThrottlingEndToEndTests.addListeners(config, clusterPort: cluster, ["http = \"127.0.0.1:\(http)\"",
                                                                                   "https = \"127.0.0.1:\(try NodeFixture.freePort())\"",
                                                                                   "metrics = \"127.0.0.1:\(metrics)\""])
            gateways.append((id, config, http, metrics))
        }
        let backend = try Gateway.Backend()
        defer { backend.stop() }
        let startedAt = Int64(Date().timeIntervalSince1970 * 1000) - 60_000

        try await withNodes { nodes in
            let controlPlane = try nodes.start(config: cpConfig)
            #expect(await controlPlane.waitFor("ready: node cp-1"), "\(controlPlane.output)")
            var analytics = try nodes.start(config: anConfig)
            #expect(await analytics.waitFor("ready: node an-1"), "\(analytics.output)")
            var gatewayNodes: [NodeProcess] = []
            for gateway in gateways {
                let node = try nodes.start(config: gateway.config)
                #expect(await node.waitFor("ready: node \(gateway.id)"), "\(node.output)")
                gatewayNodes.append(node)
            }

            let environment = ["TOLLCTL_NODE": "127.0.0.1:\(cpAdmin)", "TOLLCTL_CA": fixture.caPath, "XDG_CONFIG_HOME": fixture.path("config")]
            func tollctl(_ who: String, _ arguments: [String], input: String? = nil) throws -> String {
                var environment = environment
                environment["XDG_STATE_HOME"] = fixture.path("state-\(who)")
                let result = try runTollctl(arguments, environment: environment, input: input)
                #expect(result.status == 0, "\(who): tollctl \(arguments.joined(separator: " ")): \(result.output)")
                return result.output
            }
            _ = try tollctl("admin", ["login", "--user", "admin", "--password-stdin"], input: fixture.adminPassword + "\n")
            for user in ["alice", "carol"] {
                _ = try tollctl("admin", ["user", "create", user, "--role", "creator", "--role", "publisher", "--password-stdin"], input: "Secret-\(user)-1\n")
                _ = try tollctl(user, ["login", "--user", user, "--password-stdin"], input: "Secret-\(user)-1\n")
            }
            _ = try tollctl("admin", ["policy", "create", "--kind", "subscription", "Tiny", "--requests", "4", "--per", "hour"])
            func createApi(_ owner: String, _ name: String, _ context: String) throws -> String {
                let api = Gateway.json(try tollctl(owner, ["api", "create", "--name", name, "--api-version", "1", "--context", context,
                                                           "--resource", "GET /echo", "--resource", "GET /status", "--resource", "GET /slow",
                                                           "--endpoint", "http://127.0.0.1:\(backend.port)", "--tier", "Unlimited", "--tier", "Tiny",
                                                           "--output", "json"]))
                let id = try #require(api["id"] as? String)
                _ = try tollctl(owner, ["api", "lifecycle", id, "published"])
                return id
            }
            let menu = try createApi("alice", "Menu", "/menu")
            let closed = try createApi("alice", "Closed", "/closed")
            let pets = try createApi("carol", "Pets", "/pets")
            _ = try tollctl("admin", ["block", "add", "--type", "api-context", "/closed/1"])

            var tokens: [String: String] = [:]
            for consumer in ["bob", "dave"] {
                _ = try tollctl(consumer, ["signup", "--user", consumer, "--password-stdin"], input: "Secret-\(consumer)-1\n")
                _ = try tollctl(consumer, ["login", "--user", consumer, "--password-stdin"], input: "Secret-\(consumer)-1\n")
                let app = try #require(Gateway.json(try tollctl(consumer, ["app", "create", "--name", "\(consumer)-app", "--output", "json"]))["id"] as? String)
                for api in [menu, closed, pets] {
                    _ = try tollctl(consumer, ["sub", "create", "--app", app, "--api", api, "--tier", consumer == "dave" && api == pets ? "Tiny" : "Unlimited"])
                }
                tokens[consumer] = try #require(Gateway.json(try tollctl(consumer, ["key", "generate", app, "--type", "production", "--output", "json"]))["access_token"] as? String)
            }
            for gateway in gateways {
                try await Gateway.waitForStatus("http://127.0.0.1:\(gateway.http)/menu/1/echo", "200", headers: ["Authorization: Bearer \(tokens["bob"]!)"])
                try await Gateway.waitForStatus("http://127.0.0.1:\(gateway.http)/closed/1/echo", "403", headers: ["Authorization: Bearer \(tokens["bob"]!)"])
            }

            // Every outcome, through both gateways.
            var contexts: [String: String] = [:]
            func plan(_ gateway: Int, scale: Int, pause: Double = 0) throws -> String {
                let base = "http://127.0.0.1:\(gateways[gateway].http)"
                let items: [(String, String, String?, Int, String)] = [
                    ("ok", "/menu/1/echo", tokens["bob"], 12 * scale, "/menu"),
                    ("pets-ok", "/pets/1/echo", tokens["bob"], 6 * scale, "/pets"),
                    ("no-token", "/menu/1/echo", nil, 3 * scale, "/menu"),
                    ("bad-token", "/pets/1/echo", "not-a-token", 2 * scale, "/pets"),
                    ("blocked", "/closed/1/echo", tokens["dave"], 3 * scale, "/closed"),
                    ("throttled", "/pets/1/echo", tokens["dave"], 4 * scale, "/pets"),
                    ("backend-500", "/menu/1/status?code=500", tokens["dave"], 3 * scale, "/menu"),
                    ("timeout", "/menu/1/slow?seconds=3", tokens["bob"], 1, "/menu"),
                ]
                let entries: [[String: Any]] = items.map { label, path, token, count, context in
                    contexts["\(gateway)-\(label)"] = context
                    var entry: [String: Any] = ["label": "\(gateway)-\(label)", "url": base + path, "count": count]
                    if pause > 0 { entry["pause"] = pause }
                    if let token { entry["token"] = token }
                    return entry
                }
                let file = fixture.path("plan-\(gateway)-\(UUID().uuidString).json")
                try JSONSerialization.data(withJSONObject: entries).write(to: URL(fileURLWithPath: file))
                return file
            }
            func load(_ gateway: Int, scale: Int) async throws -> [String: [String: Int]] {
                try await Self.run(try plan(gateway, scale: scale))
            }
            let statdb = try StatisticsDatabase.open(in: fixture.path("data-cp-1"))
            var reports: [[String: [String: Int]]] = []
            /// Both gateways have every record acknowledged.
            func drained() async -> Bool {
                for gateway in gateways {
                    let queued = await ThrottlingEndToEndTests.metric(gateway.metrics, "tollgate_gateway_usage_events_queued")
                    let spooled = await ThrottlingEndToEndTests.metric(gateway.metrics, "tollgate_gateway_usage_spool_batches")
                    if queued != 0 || spooled != 0 { return false }
                }
                return true
            }
            // The calls that waited for the deployment are counted too: they are the baseline.
            try await eventually("the warm-up calls are acknowledged", timeout: .seconds(30), poll: .milliseconds(300)) {
                guard await drained() else { return false }
                try await Task.sleep(for: .milliseconds(400))
                return await drained()
            }
            let baseline = try Self.totals(statdb, .minute, from: startedAt)
            #expect(baseline.requests > 0)
            func expectExact(_ phase: String) async throws {
                let expected = baseline + Self.expected(reports, contexts: contexts)
                do {
                    try await eventually("\(phase): statdb counts \(expected.requests) calls", timeout: .seconds(120), poll: .milliseconds(250)) {
                        (try? Self.totals(statdb, .minute, from: startedAt).requests) == expected.requests
                    }
                } catch {
                    // Where the batches are: still spooled, answered as duplicates, or skipped.
                    var where_ = ""
                    for (index, gateway) in gateways.enumerated() {
                        let metrics = await ThrottlingEndToEndTests.metricsText(gateway.metrics)
                        let usage = metrics.split(separator: "\n").filter { $0.hasPrefix("tollgate_gateway_usage") }.joined(separator: "\n")
                        where_ += "\n\(gateway.id) metrics:\n\(usage)\n\(gateway.id) log tail:\n\(gatewayNodes[index].output.suffix(3000))"
                    }
                    where_ += "\nanalytics log tail:\n\(analytics.output.suffix(3000))"
                    Issue.record("\(phase): statdb has \((try? Self.totals(statdb, .minute, from: startedAt))?.description ?? "?"), sent \(expected)\(where_)")
                    throw error
                }
                // A moment more: nothing arrives twice.
                try await Task.sleep(for: .seconds(1))
                let minutes = try Self.totals(statdb, .minute, from: startedAt)
                #expect(minutes == expected, "\(phase): statdb \(minutes) vs sent \(expected)")
                #expect(try Self.totals(statdb, .hour, from: startedAt - 3_600_000) == minutes, "\(phase): hours agree with minutes")
                #expect(try Self.totals(statdb, .day, from: startedAt - 86_400_000) == minutes, "\(phase): days agree with minutes")
            }

            // 1. Steady: both gateways at once.
            let (firstPlan, secondPlan) = (try plan(0, scale: 2), try plan(1, scale: 2))
            async let first = Self.run(firstPlan)
            async let second = Self.run(secondPlan)
            reports += [try await first, try await second]
            for report in reports {
                for (label, codes) in report {
                    let seen = Set(codes.keys)
                    switch label.dropFirst(2) {
                    case "ok", "pets-ok": #expect(seen == ["200"], "\(label): \(codes)")
                    case "no-token", "bad-token": #expect(seen == ["401"], "\(label): \(codes)")
                    case "blocked": #expect(seen == ["403"], "\(label): \(codes)")
                    case "backend-500": #expect(seen == ["500"], "\(label): \(codes)")
                    case "timeout": #expect(seen == ["504"], "\(label): \(codes)")
                    default: break
                    }
                }
            }
            #expect(reports.contains { ($0["0-throttled"]?["429"] ?? 0) + ($0["1-throttled"]?["429"] ?? 0) > 0 }, "\(reports)")
            try await expectExact("steady")

            // 2. The analytics node killed mid-stream and restarted.
            let duringPlan = try plan(0, scale: 6)
            let during = Task { try await Self.run(duringPlan) }
            try await Task.sleep(for: .seconds(1))
            kill(analytics.process.processIdentifier, SIGKILL)
            _ = await analytics.stop()
            try await Task.sleep(for: .seconds(2))
            analytics = try nodes.start(config: anConfig)
            #expect(await analytics.waitFor("ready: node an-1"), "\(analytics.output)")
            reports.append(try await during.value)
            try await expectExact("analytics restarted")

            // 3. The analytics node stopped the way systemd stops it (SIGTERM),
            // with calls before, while it drains, while it is down and after
            // it is back, one or two per batch (the cluster scenario's pace).
            func slow(_ gateway: Int) throws -> String {
                // Only outcomes that return at once: a slow call would bunch the batches.
                let entries: [[String: Any]] = [("ok", "/menu/1/echo", tokens["bob"]!, "/menu"), ("pets-ok", "/pets/1/echo", tokens["bob"]!, "/pets")]
                    .map { label, path, token, context in
                        contexts["\(gateway)-slow-\(label)"] = context
                        return ["label": "\(gateway)-slow-\(label)", "url": "http://127.0.0.1:\(gateways[gateway].http)" + path, "count": 8,
                                "token": token, "pause": 0.15]
                    }
                let file = fixture.path("slow-\(gateway)-\(UUID().uuidString).json")
                try JSONSerialization.data(withJSONObject: entries).write(to: URL(fileURLWithPath: file))
                return file
            }
            let (slowBefore, slowBefore2) = (try slow(0), try slow(1))
            let beforeStop = Task { [try await Self.run(slowBefore), try await Self.run(slowBefore2)] }
            try await Task.sleep(for: .milliseconds(800))
            let stopping = Task { [analytics] in await analytics.stop() }
            reports += try await beforeStop.value
            _ = await stopping.value
            let (slowDown, slowDown2) = (try slow(0), try slow(1))
            async let down1 = Self.run(slowDown)
            async let down2 = Self.run(slowDown2)
            reports += [try await down1, try await down2]
            analytics = try nodes.start(config: anConfig)
            #expect(await analytics.waitFor("ready: node an-1"), "\(analytics.output)")
            let (slowAfter, slowAfter2) = (try slow(0), try slow(1))
            async let after1 = Self.run(slowAfter)
            async let after2 = Self.run(slowAfter2)
            reports += [try await after1, try await after2]
            try await expectExact("analytics stopped by SIGTERM and started again")

            // 4. Analytics down; gw-2's batches wait in its spool; gw-2 killed, restarted, then analytics back.
            kill(analytics.process.processIdentifier, SIGKILL)
            _ = await analytics.stop()
            reports.append(try await load(1, scale: 2))
            // Queue empty and the spool unchanged over more than one batching
            // interval (200 ms): no batch is between the queue and the spool,
            // where a kill would lose it (memory, not the spool's promise).
            try await eventually("gw-2 has spooled every batch", timeout: .seconds(30), poll: .milliseconds(200)) {
                func spoolState() async -> (queued: Double?, spooled: Double?) {
                    (await ThrottlingEndToEndTests.metric(gateways[1].metrics, "tollgate_gateway_usage_events_queued"),
                     await ThrottlingEndToEndTests.metric(gateways[1].metrics, "tollgate_gateway_usage_spool_bytes"))
                }
                let before = await spoolState()
                guard before.queued == 0, (before.spooled ?? 0) > 0 else { return false }
                try await Task.sleep(for: .milliseconds(700))
                let after = await spoolState()
                return after.queued == 0 && after.spooled == before.spooled
            }
            kill(gatewayNodes[1].process.processIdentifier, SIGKILL)
            _ = await gatewayNodes[1].stop()
            gatewayNodes[1] = try nodes.start(config: gateways[1].config)
            #expect(await gatewayNodes[1].waitFor("ready: node gw-2"), "\(gatewayNodes[1].output)")
            #expect(gatewayNodes[1].output.contains("wait for analytics"), "the restarted gateway found its spool: \(gatewayNodes[1].output)")
            // Killed, it did not close its spool: its spooled batches go out under their epoch, new ones under a new epoch.
            #expect(gatewayNodes[1].output.contains("new batches go out under epoch"), "\(gatewayNodes[1].output)")
            analytics = try nodes.start(config: anConfig)
            #expect(await analytics.waitFor("ready: node an-1"), "\(analytics.output)")
            try await expectExact("gateway restarted with a spool")
            let duplicates = await ThrottlingEndToEndTests.metric(gateways[1].metrics, "tollgate_gateway_usage_batches_acknowledged_total{duplicate=\"true\"}")
            print("measured: gw-2 batches re-sent and answered as duplicates: \(duplicates ?? -1)")

            // 5. Who sees what, through tollctl against the control plane (it reads the same statdb).
            func stats(_ who: String, _ arguments: [String]) throws -> [[String: Any]] {
                let output = try tollctl(who, ["stats"] + arguments + ["--since", "1d", "--output", "json"])
                return Gateway.json(output)["rows"] as? [[String: Any]] ?? []
            }
            func names(_ rows: [[String: Any]], _ key: String) -> Set<String> { Set(rows.compactMap { $0[key] as? String }) }
            #expect(names(try stats("alice", ["top", "apis"]), "api") == ["Menu", "Closed"])
            #expect(names(try stats("carol", ["top", "apis"]), "api") == ["Pets"])
            #expect(names(try stats("bob", ["usage", "--by", "application"]), "application") == ["bob-app"])
            #expect(names(try stats("dave", ["usage", "--by", "application"]), "application") == ["dave-app"])
            let adminRows = try stats("admin", ["usage", "--by", "api"])
            #expect(names(adminRows, "api").isSuperset(of: ["Menu", "Closed", "Pets"]))
            let total = adminRows.compactMap { ($0["requests"] as? NSNumber)?.uint64Value }.reduce(0, +)
            #expect(total == (baseline + Self.expected(reports, contexts: contexts)).requests)
            let throttled = try stats("carol", ["throttled", "--by", "api"])
            #expect((throttled.first?["throttled_reasons"] as? [String: Any])?.keys.sorted() == ["SUBSCRIPTION_LIMIT_EXCEEDED"], "\(throttled)")
            // Carol cannot name alice's API into view.
            #expect(try stats("carol", ["usage", "--by", "api", "--api", "Menu"]).isEmpty)
            // Another tenant's administrator sees nothing of this one.
            _ = try tollctl("admin", ["tenant", "create", "acme.com", "--admin", "root", "--password-stdin"], input: "Secret-acme-1\n")
            _ = try tollctl("acme", ["login", "--user", "root@acme.com", "--password-stdin"], input: "Secret-acme-1\n")
            #expect(try stats("acme", ["usage", "--by", "api"]).isEmpty)
            var acme = environment
            acme["XDG_STATE_HOME"] = fixture.path("state-acme")
            let foreign = try runTollctl(["stats", "usage", "--for-tenant", "carbon.super", "--output", "json"], environment: acme)
            #expect(foreign.status != 0 && foreign.output.contains("permission denied"), "\(foreign.output)")
            // The table and the chart.
            let chart = try tollctl("admin", ["stats", "usage", "--since", "2h", "--granularity", "minute", "--chart"])
            #expect(chart.contains("requests per minute") && chart.contains("┤") && !chart.contains("\u{1B}["), "\(chart)")
            let csv = try tollctl("admin", ["stats", "latency", "--since", "1d", "--by", "api", "--output", "csv"])
            #expect(csv.hasPrefix("api,context,requests,"), "\(csv)")
            print(chart)
            _ = await controlPlane.stop()
        }
    }
}
