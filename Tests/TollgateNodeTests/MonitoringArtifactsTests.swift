import Foundation
import TestSupport
import Testing
import YAMLKit

/// The Grafana dashboard (packaging/grafana) and the Prometheus alerting
/// rules (packaging/prometheus) against the metrics real nodes export: every
/// metric name in every PromQL expression must be on some node's `/metrics`
/// page, with the label names the expression matches or groups on. The
/// rules' own behaviour is `promtool test rules` (make test).
@Suite(.serialized) struct MonitoringArtifactsTests {
    static var packaging: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("packaging")
    }
    static var dashboardPath: String { packaging.appendingPathComponent("grafana/tollgate-dashboard.json").path }
    static var rulesPath: String { packaging.appendingPathComponent("prometheus/tollgate-alerts.yml").path }
    static var rulesTestPath: String { packaging.appendingPathComponent("prometheus/tollgate-alerts.test.yml").path }

    /// Metrics the dashboard and alerts may name before any node exports them
    /// (a feature on its way): none now. The test fails while an entry names
    /// a metric a node exports, to say the entry can go.
    static let addedByTheAnalyticsRole: Set<String> = []

    // MARK: against running nodes

    /// A control plane (publisher, store, keymanager, analytics), a traffic
    /// manager and a gateway, each with its metrics listener; some traffic
    /// (a throttled subscription, a refused token, an unknown path) so the
    /// labelled series exist; then every expression is checked against the
    /// union of the three pages.
    @Test func everyMetricTheDashboardAndAlertsUseIsExported() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("cp-1", roles: ["publisher", "store", "keymanager", "analytics"])
        try fixture.issueNode("tm-1", roles: ["trafficmanager"])
        try fixture.issueNode("gw-1", roles: ["gateway"])
        let (cpCluster, cpAdmin, cpMetrics) = (try NodeFixture.freePort(), try NodeFixture.freePort(), try NodeFixture.freePort())
        let (tmCluster, tmMetrics) = (try NodeFixture.freePort(), try NodeFixture.freePort())
        let (gwCluster, gwHTTP, gwMetrics) = (try NodeFixture.freePort(), try NodeFixture.freePort(), try NodeFixture.freePort())
        let cpConfig = try fixture.writeConfig("cp-1", roles: ["publisher", "store", "keymanager", "analytics"], clusterPort: cpCluster, adminPort: cpAdmin,
                                               extra: "\n[store]\nself_signup_tenants = \"*\"\n")
        try ThrottlingEndToEndTests.addListeners(cpConfig, clusterPort: cpCluster, ["metrics = \"127.0.0.1:\(cpMetrics)\""])
        let tmConfig = try fixture.writeConfig("tm-1", roles: ["trafficmanager"], clusterPort: tmCluster, adminPort: nil)
        try ThrottlingEndToEndTests.addListeners(tmConfig, clusterPort: tmCluster, ["metrics = \"127.0.0.1:\(tmMetrics)\""])
        let gwConfig = try fixture.writeConfig("gw-1", roles: ["gateway"], clusterPort: gwCluster, adminPort: nil,
                                               peers: ["publisher": ["127.0.0.1:\(cpCluster)"], "keymanager": ["127.0.0.1:\(cpCluster)"],
                                                       "trafficmanager": ["127.0.0.1:\(tmCluster)"]])
        try ThrottlingEndToEndTests.addListeners(gwConfig, clusterPort: gwCluster, ["http = \"127.0.0.1:\(gwHTTP)\"",
                                                                                    "https = \"127.0.0.1:\(try NodeFixture.freePort())\"",
                                                                                    "metrics = \"127.0.0.1:\(gwMetrics)\""])
        let dashboard = try Self.loadDashboard()
        let rules = try Self.loadRules()

        let pages = try await withNodes { nodes in
            var started: [NodeProcess] = []
            for (config, id) in [(cpConfig, "cp-1"), (tmConfig, "tm-1"), (gwConfig, "gw-1")] {
                let node = try nodes.start(config: config)
                #expect(await node.waitFor("ready: node \(id)"), "\(node.output)")
                started.append(node)
            }
            var environment = ["TOLLCTL_NODE": "127.0.0.1:\(cpAdmin)", "TOLLCTL_CA": fixture.caPath, "XDG_STATE_HOME": fixture.path("state-admin"),
                               "XDG_CONFIG_HOME": fixture.path("config")]
            func tollctl(_ arguments: String..., input: String? = nil) throws -> String {
                let result = try runTollctl(arguments, environment: environment, input: input)
                #expect(result.status == 0, "tollctl \(arguments.joined(separator: " ")): \(result.output)")
                return result.output
            }
            _ = try tollctl("login", "--user", "admin", "--password-stdin", input: fixture.adminPassword + "\n")
            _ = try tollctl("policy", "create", "--kind", "subscription", "Two", "--requests", "2", "--per", "minute")
            // No backend listens there: answers are 5xx, which is a status class too.
            let api = GatewayEndToEndTests.json(try tollctl("api", "create", "--name", "Menu", "--api-version", "1", "--context", "/menu",
                                                            "--resource", "GET /echo", "--endpoint", "http://127.0.0.1:\(try NodeFixture.freePort())",
                                                            "--tier", "Two", "--output", "json"))
            let apiID = try #require(api["id"] as? String)
            _ = try tollctl("api", "lifecycle", apiID, "published")
            _ = try tollctl("signup", "--user", "alice", "--password-stdin", input: "Alice-Secret-1\n")
            environment["XDG_STATE_HOME"] = fixture.path("state-alice")
            _ = try tollctl("login", "--user", "alice", "--password-stdin", input: "Alice-Secret-1\n")
            let app = GatewayEndToEndTests.json(try tollctl("app", "create", "--name", "watcher", "--output", "json"))
            let appID = try #require(app["id"] as? String)
            _ = try tollctl("sub", "create", "--app", appID, "--api", apiID, "--tier", "Two")
            let keys = GatewayEndToEndTests.json(try tollctl("key", "generate", appID, "--type", "production", "--output", "json"))
            let token = try #require(keys["access_token"] as? String)

            let url = "http://127.0.0.1:\(gwHTTP)/menu/1/echo"
            try await GatewayEndToEndTests.waitForStatus(url, "401")
            var codes: [String] = []
            for headers in [["-H", "Authorization: Bearer \(token)"], ["-H", "Authorization: Bearer \(token)"], ["-H", "Authorization: Bearer \(token)"],
                            ["-H", "Authorization: Bearer not-a-token"]] {
                codes.append(try await GatewayEndToEndTests.curl(["-o", "/dev/null", "-w", "%{http_code}"] + headers + [url]).output)
            }
            codes.append(try await GatewayEndToEndTests.curl(["-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(gwHTTP)/nothing/here"]).output)
            #expect(codes.last == "404" && codes.contains("429") && codes.contains("401"), "gateway answers: \(codes)")

            var pages: [String: String] = [:]
            for (id, port) in [("cp-1", cpMetrics), ("tm-1", tmMetrics), ("gw-1", gwMetrics)] {
                let page = try await GatewayEndToEndTests.curl(["-f", "http://127.0.0.1:\(port)/metrics"])
                #expect(page.status == 0, "\(id) /metrics: \(page.output)")
                pages[id] = page.output
            }
            // The gateway first: the others would wait out their drain period for its streams.
            for node in started.reversed() { _ = await node.stop() }
            return pages
        }
        #expect(pages["gw-1"]?.contains("tollgate_gateway_requests_total{") == true, "the gateway's page")
        #expect(pages["tm-1"]?.contains("tollgate_trafficmanager_lease_exchanges_total") == true, "the traffic manager's page")
        #expect(pages["cp-1"]?.contains("service=\"tollgate.v1.KeyManagerService\",method=\"ValidateKey\"") == true, "the keymanager's page")
        // Every page passes Prometheus's own lint (names, base units, help texts).
        let promtool = "/usr/bin/promtool"
        try #require(FileManager.default.isExecutableFile(atPath: promtool), "promtool (Debian's prometheus package; tools/install-deps.sh)")
        for (id, page) in pages.sorted(by: { $0.key < $1.key }) {
            let lint = try await runTool(promtool, ["check", "metrics"], input: Data(page.utf8))
            #expect(lint.status == 0, "\(id): promtool check metrics: \(lint.output)")
        }

        var exported = Exposition()
        for (_, page) in pages.sorted(by: { $0.key < $1.key }) { exported.add(page) }
        let check = MetricCheck(exported: exported, pending: Self.addedByTheAnalyticsRole)
        let expressions = Self.expressions(dashboard: dashboard) + Self.expressions(rules: rules)
        #expect(expressions.count > 50, "expressions found: \(expressions.count)")
        let problems = expressions.flatMap { check.problems($0) }
        #expect(problems.isEmpty, "\n\(problems.joined(separator: "\n"))")
        for name in Self.addedByTheAnalyticsRole.sorted() where exported.queryableNames.contains(name) {
            Issue.record("\(name) is exported now: remove it from addedByTheAnalyticsRole")
        }
        let used = Set(expressions.flatMap { (try? PromQL.references(in: $0.text, variableQuery: $0.isVariableQuery).metrics) ?? [] })
        for name in Self.addedByTheAnalyticsRole.sorted() {
            #expect(used.contains(name), "\(name) is listed as pending but nothing uses it")
        }

        // The same check fails on a name no node exports, in the real dashboard.
        let bogus = try Self.replacingFirstExpression(of: dashboard, with: "sum(rate(tollgate_gateway_requests_totl[5m]))")
        let bogusProblems = Self.expressions(dashboard: bogus).flatMap { check.problems($0) }
        #expect(bogusProblems.count == 1 && bogusProblems.first?.contains("tollgate_gateway_requests_totl") == true, "\(bogusProblems)")
    }

    // MARK: the files' shape, and PromQL syntax through promtool

    @Test func theDashboardIsWellFormed() throws {
        let dashboard = try Self.loadDashboard()
        #expect(dashboard["uid"] as? String == "tollgate-cluster")
        let variables = (dashboard["templating"] as? [String: Any])?["list"] as? [[String: Any]] ?? []
        let datasource = variables.first { $0["name"] as? String == "datasource" }
        #expect(datasource?["type"] as? String == "datasource" && datasource?["query"] as? String == "prometheus", "a Prometheus data source variable")
        for name in ["job", "instance"] {
            let variable = variables.first { $0["name"] as? String == name }
            #expect(variable?["type"] as? String == "query" && variable?["includeAll"] as? Bool == true, "a \(name) variable")
        }
        let panels = Self.panels(dashboard)
        let ids = panels.compactMap { $0["id"] as? Int }
        #expect(ids.count == panels.count && Set(ids).count == ids.count, "every panel has an id of its own")
        for panel in panels where panel["type"] as? String != "row" {
            let title = panel["title"] as? String ?? "?"
            let uid = (panel["datasource"] as? [String: Any])?["uid"] as? String
            #expect(uid == "${datasource}", "panel \(title) uses the data source variable")
            let targets = panel["targets"] as? [[String: Any]] ?? []
            #expect(!targets.isEmpty, "panel \(title) has queries")
            for target in targets {
                #expect((target["datasource"] as? [String: Any])?["uid"] as? String == "${datasource}", "panel \(title) target")
                let expr = target["expr"] as? String ?? ""
                #expect(expr.contains("instance=~\"$instance\""), "panel \(title) follows the node variable: \(expr)")
            }
            let unit = ((panel["fieldConfig"] as? [String: Any])?["defaults"] as? [String: Any])?["unit"] as? String
            #expect(unit?.isEmpty == false, "panel \(title) has a unit")
            let position = panel["gridPos"] as? [String: Any] ?? [:]
            #expect((position["x"] as? Int ?? 99) + (position["w"] as? Int ?? 99) <= 24, "panel \(title) fits the grid")
        }
    }

    @Test func everyAlertIsWellFormedAndTestedFiringAndNotFiring() throws {
        let rules = try Self.loadRules()
        var alerts: [String] = []
        for group in rules["groups"]?.items ?? [] {
            for rule in group["rules"]?.items ?? [] {
                guard let name = rule["alert"]?.string else { continue }
                alerts.append(name)
                #expect(rule["for"]?.string?.isEmpty == false, "\(name): for")
                #expect(["critical", "warning"].contains(rule["labels"]?["severity"]?.string ?? ""), "\(name): severity")
                #expect(rule["annotations"]?["summary"]?.string?.isEmpty == false, "\(name): summary")
                #expect(rule["annotations"]?["description"]?.string?.isEmpty == false, "\(name): description")
            }
        }
        #expect(alerts.count >= 10 && Set(alerts).count == alerts.count, "\(alerts)")
        let tests = try #require(try YAMLParser.parse(try String(contentsOfFile: Self.rulesTestPath, encoding: .utf8)))
        var firing: Set<String> = [], quiet: Set<String> = []
        for test in tests["tests"]?.items ?? [] {
            for case_ in test["alert_rule_test"]?.items ?? [] {
                guard let name = case_["alertname"]?.string else { continue }
                if case_["exp_alerts"]?.items.isEmpty ?? true { quiet.insert(name) } else { firing.insert(name) }
            }
        }
        for name in alerts {
            #expect(firing.contains(name), "\(name) has no promtool test where it fires")
            #expect(quiet.contains(name), "\(name) has no promtool test where it does not fire")
        }
    }

    /// Every dashboard expression, Grafana's variables replaced, parses as
    /// PromQL (promtool checks it as a recording rule).
    @Test func dashboardExpressionsParseWithPromtool() async throws {
        let expressions = Self.expressions(dashboard: try Self.loadDashboard()).filter { !$0.isVariableQuery }
        var text = "groups:\n  - name: dashboard\n    rules:\n"
        for (index, expression) in expressions.enumerated() {
            let promql = Self.substitutingGrafanaVariables(expression.text)
            let quoted = promql.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
                .replacingOccurrences(of: "\n", with: " ")
            text += "      - record: dashboard:expression_\(index)\n        expr: \"\(quoted)\"\n"
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-dashboard-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("dashboard-rules.yml").path
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        let promtool = "/usr/bin/promtool"
        try #require(FileManager.default.isExecutableFile(atPath: promtool), "promtool (Debian's prometheus package; tools/install-deps.sh)")
        let result = try await runTool(promtool, ["check", "rules", file])
        #expect(result.status == 0 && result.output.contains("SUCCESS: \(expressions.count) rules found"), "\(result.output)")
    }

    // MARK: the checker itself

    @Test func promQLReferencesSkipFunctionsKeywordsLabelsAndVariables() throws {
        let quantile = try PromQL.references(in: """
            histogram_quantile(0.99, sum by (job, le) (rate(tollgate_gateway_request_duration_seconds_bucket{job=~"$job", instance=~"${instance}"}[$__rate_interval])))
            """)
        #expect(quantile.metrics == ["tollgate_gateway_request_duration_seconds_bucket"])
        #expect(quantile.matcherLabels["tollgate_gateway_request_duration_seconds_bucket"] == ["job", "instance"])
        #expect(quantile.groupingLabels == ["job", "le"])

        let joined = try PromQL.references(in: """
            max by (job) (tollgate_gateway_deployment_revision) - on (job) group_right tollgate_gateway_deployment_revision offset 5m > bool 0
            and ignoring(api) topk(3, x:recorded:rate5m) unless sum(rate(a_total{code!="OK", method=~"Validate.*"}[5m:30s])) without (code)
            or {__name__="by_name_only", le="1e3"} * 1e3 + Inf - NaN + time() # a comment naming not_a_metric
            """)
        #expect(joined.metrics == ["tollgate_gateway_deployment_revision", "x:recorded:rate5m", "a_total", "by_name_only"])
        #expect(joined.groupingLabels == ["job", "api", "code"])
        #expect(joined.matcherLabels["a_total"] == ["code", "method"])
        #expect(joined.matcherLabels["by_name_only"] == ["le"])

        let strings = try PromQL.references(in: #"label_replace(up, "dst", "metric_in_a_string $1", "src", "(.*)") == 1"#)
        #expect(strings.metrics == ["up"])

        let variable = try PromQL.references(in: #"label_values(tollgate_build_info{job=~"$job"}, instance)"#, variableQuery: true)
        #expect(variable.metrics == ["tollgate_build_info"] && variable.matcherLabels["tollgate_build_info"] == ["job"])
        #expect(try PromQL.references(in: "label_values(job)", variableQuery: true).metrics.isEmpty)
        #expect(try PromQL.references(in: "query_result(topk(5, tollgate_uptime_seconds))", variableQuery: true).metrics == ["tollgate_uptime_seconds"])

        #expect(throws: PromQL.SyntaxError.self) { try PromQL.references(in: #"rate(a_total{code="OK}[5m])"#) }
        #expect(throws: PromQL.SyntaxError.self) { try PromQL.references(in: "sum(rate(a_total[5m])") }
    }

    static let samplePage = """
        # HELP tollgate_gateway_requests_total Requests.
        # TYPE tollgate_gateway_requests_total counter
        tollgate_gateway_requests_total{api="/menu/1",status_class="2xx"} 3
        # HELP tollgate_gateway_request_duration_seconds Latency.
        # TYPE tollgate_gateway_request_duration_seconds histogram
        tollgate_gateway_request_duration_seconds_bucket{api="/menu/1",le="0.5"} 3
        tollgate_gateway_request_duration_seconds_bucket{api="/menu/1",le="+Inf"} 3
        tollgate_gateway_request_duration_seconds_sum{api="/menu/1"} 0.3
        tollgate_gateway_request_duration_seconds_count{api="/menu/1"} 3
        # HELP tollgate_gateway_deployment_feed_connected Feed.
        # TYPE tollgate_gateway_deployment_feed_connected gauge
        tollgate_gateway_deployment_feed_connected 1
        # HELP tollgate_gateway_quiet_total No samples yet.
        # TYPE tollgate_gateway_quiet_total counter

        """

    @Test func theCheckRejectsWhatNoNodeExports() throws {
        var exposition = Exposition()
        exposition.add(Self.samplePage)
        #expect(exposition.queryableNames == ["tollgate_gateway_requests_total", "tollgate_gateway_request_duration_seconds_bucket",
                                              "tollgate_gateway_request_duration_seconds_sum", "tollgate_gateway_request_duration_seconds_count",
                                              "tollgate_gateway_deployment_feed_connected", "tollgate_gateway_quiet_total"])
        let check = MetricCheck(exported: exposition, pending: ["tollgate_gateway_usage_spool_bytes"])
        func problems(_ expr: String) -> [String] { check.problems(PromQLExpression(origin: "test", text: expr)) }

        #expect(problems(#"sum by (instance, status_class) (rate(tollgate_gateway_requests_total{job=~"$job", status_class="5xx"}[5m]))"#).isEmpty)
        #expect(problems(#"histogram_quantile(0.9, sum by (le, api) (rate(tollgate_gateway_request_duration_seconds_bucket{api=~"$api"}[5m])))"#).isEmpty)
        #expect(problems("rate(tollgate_gateway_request_duration_seconds_sum[5m]) / rate(tollgate_gateway_request_duration_seconds_count[5m])").isEmpty)
        #expect(problems("tollgate_gateway_usage_spool_bytes > 0 and up == 1").isEmpty, "pending and Prometheus's own names pass")
        #expect(problems(#"rate(tollgate_gateway_quiet_total{anything="x"}[5m])"#).isEmpty, "labels of a metric with no samples cannot be checked")

        let bogus = problems("sum(rate(tollgate_gateway_bogus_total[5m]))")
        #expect(bogus.count == 1 && bogus[0].contains("tollgate_gateway_bogus_total is not exported"), "\(bogus)")
        let bare = problems("histogram_quantile(0.99, rate(tollgate_gateway_request_duration_seconds[5m]))")
        #expect(bare.count == 1 && bare[0].contains("is a histogram: use tollgate_gateway_request_duration_seconds_bucket"), "\(bare)")
        let counterBucket = problems("rate(tollgate_gateway_requests_total_bucket[5m])")
        #expect(counterBucket.count == 1 && counterBucket[0].contains("tollgate_gateway_requests_total is a counter"), "\(counterBucket)")
        let gaugeCount = problems("tollgate_gateway_deployment_feed_connected_count")
        #expect(gaugeCount.count == 1 && gaugeCount[0].contains("is a gauge"), "\(gaugeCount)")
        let label = problems(#"rate(tollgate_gateway_requests_total{status="5xx"}[5m])"#)
        #expect(label.count == 1 && label[0].contains("label status"), "\(label)")
        let grouping = problems("sum by (statusclass) (rate(tollgate_gateway_requests_total[5m]))")
        #expect(grouping.count == 1 && grouping[0].contains("statusclass"), "\(grouping)")
        let upLabel = problems(#"up{role="gateway"}"#)
        #expect(upLabel.count == 1 && upLabel[0].contains("label role"), "\(upLabel)")
        let broken = problems("sum(rate(tollgate_gateway_requests_total[5m])")
        #expect(broken.count == 1 && broken[0].contains("cannot be read"), "\(broken)")

        // A dashboard with one bogus name among good ones fails, naming the panel.
        let dashboard: [String: Any] = [
            "templating": ["list": [["name": "instance", "type": "query", "query": ["query": "label_values(tollgate_gateway_requests_total, instance)"]]]],
            "panels": [["type": "row", "title": "Row", "panels": [["type": "timeseries", "title": "Nested",
                                                                   "targets": [["refId": "A", "expr": "tollgate_gateway_feed_connected"]]]]],
                       ["type": "stat", "title": "Fine", "targets": [["refId": "A", "expr": "tollgate_gateway_deployment_feed_connected"]]]],
        ]
        let found = Self.expressions(dashboard: dashboard).flatMap { check.problems($0) }
        #expect(found == ["panel \"Nested\" target A: tollgate_gateway_feed_connected is not exported by any node"], "\(found)")
    }

    // MARK: reading the files

    static func loadDashboard() throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: dashboardPath))
        return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any], "the dashboard is a JSON object")
    }

    static func loadRules() throws -> YAMLNode {
        try #require(try YAMLParser.parse(try String(contentsOfFile: rulesPath, encoding: .utf8)), "the rules file holds a document")
    }

    /// Panels, those inside rows included.
    static func panels(_ dashboard: [String: Any]) -> [[String: Any]] {
        func walk(_ panels: [[String: Any]]) -> [[String: Any]] {
            panels.flatMap { [$0] + walk($0["panels"] as? [[String: Any]] ?? []) }
        }
        return walk(dashboard["panels"] as? [[String: Any]] ?? [])
    }

    /// Panel targets, query variables and annotation queries.
    static func expressions(dashboard: [String: Any]) -> [PromQLExpression] {
        var found: [PromQLExpression] = []
        for panel in panels(dashboard) {
            for target in panel["targets"] as? [[String: Any]] ?? [] {
                guard let expr = target["expr"] as? String else { continue }
                found.append(PromQLExpression(origin: "panel \"\(panel["title"] as? String ?? "?")\" target \(target["refId"] as? String ?? "?")", text: expr))
            }
        }
        for variable in (dashboard["templating"] as? [String: Any])?["list"] as? [[String: Any]] ?? [] where variable["type"] as? String == "query" {
            let query = (variable["query"] as? [String: Any])?["query"] as? String ?? variable["query"] as? String ?? ""
            found.append(PromQLExpression(origin: "variable \(variable["name"] as? String ?? "?")", text: query, isVariableQuery: true))
        }
        for annotation in (dashboard["annotations"] as? [String: Any])?["list"] as? [[String: Any]] ?? [] {
            if let expr = annotation["expr"] as? String { found.append(PromQLExpression(origin: "annotation \(annotation["name"] as? String ?? "?")", text: expr)) }
        }
        return found
    }

    static func expressions(rules: YAMLNode) -> [PromQLExpression] {
        var found: [PromQLExpression] = []
        for group in rules["groups"]?.items ?? [] {
            for rule in group["rules"]?.items ?? [] {
                guard let expr = rule["expr"]?.string else { continue }
                found.append(PromQLExpression(origin: "rule \(rule["alert"]?.string ?? rule["record"]?.string ?? "?")", text: expr))
            }
        }
        return found
    }

    static func replacingFirstExpression(of dashboard: [String: Any], with expr: String) throws -> [String: Any] {
        var copy = dashboard
        var panels = copy["panels"] as? [[String: Any]] ?? []
        let index = try #require(panels.firstIndex { !($0["targets"] as? [[String: Any]] ?? []).isEmpty })
        var targets = panels[index]["targets"] as? [[String: Any]] ?? []
        targets[0]["expr"] = expr
        panels[index]["targets"] = targets
        copy["panels"] = panels
        return copy
    }

    /// Grafana's variables as a query would see them: ranges for the
    /// interval variables, match-anything for the others.
    static func substitutingGrafanaVariables(_ expr: String) -> String {
        var text = expr
        for (variable, value) in [("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1h")] {
            text = text.replacingOccurrences(of: variable, with: value)
        }
        return text.replacingOccurrences(of: #"\$\{?[A-Za-z_][A-Za-z0-9_]*(:[a-z]+)?\}?"#, with: ".*", options: .regularExpression)
    }
}

// MARK: - What a node exports

/// Metric families and label names read from Prometheus text pages.
struct Exposition {
    /// Family name → `counter`, `gauge`, `histogram`, `summary`, `untyped`.
    private(set) var types: [String: String] = [:]
    /// Series name (`x_bucket` for a histogram) → label names seen on its samples.
    private(set) var labels: [String: Set<String>] = [:]

    mutating func add(_ page: String) {
        for line in page.split(separator: "\n") {
            if line.hasPrefix("# TYPE ") {
                let parts = line.split(separator: " ")
                if parts.count >= 4 { types[String(parts[2])] = String(parts[3]) }
                continue
            }
            if line.hasPrefix("#") || line.isEmpty { continue }
            let name = String(line.prefix { $0 != "{" && $0 != " " })
            var names = labels[name] ?? []
            if let open = line.firstIndex(of: "{"), let close = line.lastIndex(of: "}"), open < close {
                names.formUnion(Self.labelNames(line[line.index(after: open)..<close]))
            }
            labels[name] = names
        }
    }

    /// `a="x",b="y\"z"` → a, b.
    static func labelNames(_ text: Substring) -> Set<String> {
        var names: Set<String> = []
        var index = text.startIndex
        while index < text.endIndex {
            let name = text[index...].prefix { $0 != "=" }
            names.insert(name.trimmingCharacters(in: .whitespaces))
            index = text.index(index, offsetBy: name.count + 1, limitedBy: text.endIndex) ?? text.endIndex
            guard index < text.endIndex, text[index] == "\"" else { break }
            index = text.index(after: index)
            while index < text.endIndex, text[index] != "\"" {
                index = text.index(index, offsetBy: text[index] == "\\" ? 2 : 1, limitedBy: text.endIndex) ?? text.endIndex
            }
            index = text.index(index, offsetBy: 2, limitedBy: text.endIndex) ?? text.endIndex  // the quote and the comma
        }
        return names
    }

    /// The names PromQL can select: a histogram `x` is `x_bucket`, `x_sum`
    /// and `x_count` (never `x`); a summary `x`, `x_sum`, `x_count`.
    var queryableNames: Set<String> {
        var names = Set(labels.keys)
        for (family, type) in types {
            switch type {
            case "histogram": names.formUnion([family + "_bucket", family + "_sum", family + "_count"])
            case "summary": names.formUnion([family, family + "_sum", family + "_count"])
            default: names.insert(family)
            }
        }
        return names
    }

    /// Why `name` is not queryable, when a suffix explains it.
    func suffixHint(_ name: String) -> String? {
        if types[name] == "histogram" { return "\(name) is a histogram: use \(name)_bucket, \(name)_sum or \(name)_count" }
        for suffix in ["_bucket", "_sum", "_count"] where name.hasSuffix(suffix) {
            let family = String(name.dropLast(suffix.count))
            if let type = types[family], type != "histogram", !(type == "summary" && suffix != "_bucket") {
                return "\(family) is a \(type): it has no \(suffix) series"
            }
        }
        return nil
    }
}

/// One PromQL expression and where it came from.
struct PromQLExpression {
    let origin: String
    let text: String
    var isVariableQuery = false
}

/// Checks expressions' metric and label names against what nodes export.
struct MetricCheck {
    let exported: Exposition
    /// Names allowed though no node exports them yet (with the reason at the caller).
    let pending: Set<String>
    /// Series Prometheus itself adds for every target.
    static let prometheusSeries: Set<String> = ["up"]
    /// Labels Prometheus adds to every series of a target.
    static let targetLabels: Set<String> = ["job", "instance"]

    func problems(_ expression: PromQLExpression) -> [String] {
        let references: PromQLReferences
        do {
            references = try PromQL.references(in: expression.text, variableQuery: expression.isVariableQuery)
        } catch {
            return ["\(expression.origin): cannot be read: \(error)"]
        }
        let queryable = exported.queryableNames
        var problems: [String] = []
        var labelsInScope = Self.targetLabels
        for metric in references.metrics.sorted() {
            if pending.contains(metric) {
                labelsInScope.insert("*")  // its labels are not known yet
                continue
            }
            if Self.prometheusSeries.contains(metric) {
                for label in (references.matcherLabels[metric] ?? []).subtracting(Self.targetLabels).sorted() {
                    problems.append("\(expression.origin): label \(label) is not on Prometheus's \(metric)")
                }
                continue
            }
            guard queryable.contains(metric) else {
                problems.append("\(expression.origin): " + (exported.suffixHint(metric) ?? "\(metric) is not exported by any node"))
                continue
            }
            // A family with no samples yet (no traffic of that kind) shows no labels to check.
            guard let seen = exported.labels[metric], !seen.isEmpty else {
                labelsInScope.insert("*")
                continue
            }
            labelsInScope.formUnion(seen)
            for label in (references.matcherLabels[metric] ?? []).subtracting(seen).subtracting(Self.targetLabels).sorted() {
                problems.append("\(expression.origin): label \(label) is never on \(metric) (it has \(seen.sorted().joined(separator: ", ")))")
            }
        }
        if !labelsInScope.contains("*") {
            for label in references.groupingLabels.subtracting(labelsInScope).sorted() {
                problems.append("\(expression.origin): grouping label \(label) is on none of \(references.metrics.sorted().joined(separator: ", "))")
            }
        }
        return problems
    }
}

// MARK: - PromQL, as far as names go

/// The metric names an expression selects, the label names its matchers
/// use per metric, and the labels of its by/without/on/ignoring/group_left/
/// group_right clauses.
struct PromQLReferences: Equatable {
    var metrics: [String] = []
    var matcherLabels: [String: Set<String>] = [:]
    var groupingLabels: Set<String> = []
}

enum PromQL {
    struct SyntaxError: Error, CustomStringConvertible {
        let description: String
    }

    /// Words that are never metric names where they stand: binary and set
    /// operators, modifiers, the number words, and the aggregation
    /// operators (`sum by (x) (…)`: not followed by a parenthesis).
    static let keywords: Set<String> = ["and", "or", "unless", "atan2", "bool", "offset", "inf", "nan", "start", "end",
                                        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                                        "bottomk", "topk", "quantile", "limitk", "limit_ratio"]
    static let groupingKeywords: Set<String> = ["by", "without", "on", "ignoring", "group_left", "group_right"]

    /// - Parameter variableQuery: `expr` is a Grafana variable query
    ///   (`label_values(selector, label)`, `query_result(expr)`, `metrics(re)`, `label_names()`).
    static func references(in expr: String, variableQuery: Bool = false) throws(SyntaxError) -> PromQLReferences {
        guard variableQuery else { return try scan(expr) }
        let text = expr.trimmingCharacters(in: .whitespacesAndNewlines)
        func argument(of function: String) -> String? {
            guard text.hasPrefix(function + "("), text.hasSuffix(")") else { return nil }
            return String(text.dropFirst(function.count + 1).dropLast())
        }
        if let arguments = argument(of: "label_values") {
            // label_values(label) or label_values(selector, label): the label is the last argument.
            guard let comma = lastTopLevelComma(arguments) else { return PromQLReferences() }
            return try scan(String(arguments[..<comma]))
        }
        if let query = argument(of: "query_result") { return try scan(query) }
        return PromQLReferences()
    }

    private static func lastTopLevelComma(_ text: String) -> String.Index? {
        var depth = 0, quote: Character?, last: String.Index?
        var index = text.startIndex
        while index < text.endIndex {
            let character = text[index]
            if let open = quote {
                if character == "\\" { index = text.index(after: index) } else if character == open { quote = nil }
            } else if character == "\"" || character == "'" || character == "`" {
                quote = character
            } else if "({[".contains(character) {
                depth += 1
            } else if ")}]".contains(character) {
                depth -= 1
            } else if character == ",", depth == 0 {
                last = index
            }
            if index < text.endIndex { index = text.index(after: index) }
        }
        return last
    }

    private static func scan(_ expr: String) throws(SyntaxError) -> PromQLReferences {
        let characters = Array(expr.unicodeScalars)
        var references = PromQLReferences()
        var index = 0
        var parentheses = 0
        /// The metric a `{` right after it belongs to.
        var lastMetric: String?

        func isIdentifierStart(_ c: Unicode.Scalar) -> Bool { c == "_" || c == ":" || ("a"..."z").contains(c) || ("A"..."Z").contains(c) }
        func isIdentifier(_ c: Unicode.Scalar) -> Bool { isIdentifierStart(c) || ("0"..."9").contains(c) }
        func skipSpace() {
            while index < characters.count {
                if characters[index].properties.isWhitespace {
                    index += 1
                } else if characters[index] == "#" {
                    while index < characters.count, characters[index] != "\n" { index += 1 }
                } else {
                    return
                }
            }
        }
        func identifier() -> String {
            let start = index
            while index < characters.count, isIdentifier(characters[index]) { index += 1 }
            return String(String.UnicodeScalarView(characters[start..<index]))
        }
        func string() throws(SyntaxError) -> String {
            let quote = characters[index]
            index += 1
            var value = String.UnicodeScalarView()
            while index < characters.count, characters[index] != quote {
                if characters[index] == "\\", quote != "`" { index += 1 }
                if index < characters.count { value.append(characters[index]) }
                index += 1
            }
            guard index < characters.count else { throw SyntaxError(description: "unterminated string in \(expr)") }
            index += 1
            return String(value)
        }
        func variable() {
            index += 1  // $
            if index < characters.count, characters[index] == "{" {
                while index < characters.count, characters[index] != "}" { index += 1 }
                index += 1
            } else {
                _ = identifier()
            }
        }
        /// `{a="x", b=~"y"}`: label names, and `__name__`'s value as the metric.
        func matchers(for metric: String?) throws(SyntaxError) {
            index += 1  // {
            var names: Set<String> = []
            var named: String?
            while true {
                skipSpace()
                guard index < characters.count else { throw SyntaxError(description: "unterminated {…} in \(expr)") }
                if characters[index] == "}" { index += 1; break }
                if characters[index] == "," { index += 1; continue }
                let label: String
                if characters[index] == "\"" { label = try string() } else { label = identifier() }
                guard !label.isEmpty else { throw SyntaxError(description: "unexpected \(characters[index]) in matchers of \(expr)") }
                skipSpace()
                let operatorStart = index
                while index < characters.count, "=!~".unicodeScalars.contains(characters[index]) { index += 1 }
                let op = String(String.UnicodeScalarView(characters[operatorStart..<index]))
                skipSpace()
                if op.isEmpty {
                    // A bare name inside braces (Prometheus 3's quoted metric names): the metric.
                    named = label
                    continue
                }
                guard index < characters.count, "\"'`".unicodeScalars.contains(characters[index]) else {
                    throw SyntaxError(description: "matcher \(label)\(op) without a string in \(expr)")
                }
                let value = try string()
                if label == "__name__" { if op == "=" { named = value } } else { names.insert(label) }
            }
            guard let owner = metric ?? named else { return }
            if metric == nil, !references.metrics.contains(owner) { references.metrics.append(owner) }
            references.matcherLabels[owner, default: []].formUnion(names)
        }

        while true {
            skipSpace()
            guard index < characters.count else { break }
            let c = characters[index]
            switch c {
            case "\"", "'", "`":
                _ = try string()
                lastMetric = nil
            case "$":
                variable()
            case "[":
                while index < characters.count, characters[index] != "]" { index += 1 }
                guard index < characters.count else { throw SyntaxError(description: "unterminated [ in \(expr)") }
                index += 1
            case "{":
                try matchers(for: lastMetric)
                lastMetric = nil
            case "(":
                parentheses += 1
                index += 1
                lastMetric = nil
            case ")":
                parentheses -= 1
                guard parentheses >= 0 else { throw SyntaxError(description: "unbalanced ) in \(expr)") }
                index += 1
                lastMetric = nil
            case "0"..."9", ".":
                // Numbers, hexadecimal, exponents and durations (5m, 1h30m).
                index += 1
                while index < characters.count, isIdentifier(characters[index]) || characters[index] == "." ||
                    ((characters[index] == "+" || characters[index] == "-") && "eE".unicodeScalars.contains(characters[index - 1])) {
                    index += 1
                }
                lastMetric = nil
            default:
                guard isIdentifierStart(c) else {
                    index += 1
                    lastMetric = nil
                    continue
                }
                let word = identifier()
                let after = index
                skipSpace()
                let next = index < characters.count ? characters[index] : " "
                index = after
                if groupingKeywords.contains(word.lowercased()) {
                    skipSpace()
                    if index < characters.count, characters[index] == "(" {
                        index += 1
                        while true {
                            skipSpace()
                            guard index < characters.count else { throw SyntaxError(description: "unterminated \(word)(…) in \(expr)") }
                            if characters[index] == ")" { index += 1; break }
                            if characters[index] == "," { index += 1; continue }
                            let label: String
                            if characters[index] == "\"" { label = try string() } else { label = identifier() }
                            guard !label.isEmpty else { throw SyntaxError(description: "unexpected \(characters[index]) in \(word)(…) of \(expr)") }
                            references.groupingLabels.insert(label)
                        }
                    }
                    lastMetric = nil
                } else if keywords.contains(word.lowercased()) || next == "(" {
                    lastMetric = nil  // an operator, modifier, number word, function or aggregation
                } else {
                    if !references.metrics.contains(word) { references.metrics.append(word) }
                    lastMetric = word
                }
            }
        }
        guard parentheses == 0 else { throw SyntaxError(description: "unbalanced ( in \(expr)") }
        return references
    }
}

// MARK: - YAML access

extension YAMLNode {
    subscript(key: String) -> YAMLNode? {
        guard case .mapping(let pairs, _) = self else { return nil }
        return pairs.first { if case .scalar(let scalar) = $0.key { scalar.value == key } else { false } }?.value
    }

    var items: [YAMLNode] {
        if case .sequence(let items, _) = self { items } else { [] }
    }

    var string: String? {
        if case .scalar(let scalar) = self { scalar.value } else { nil }
    }
}
