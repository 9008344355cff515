import Foundation
import TestSupport
import Testing

/// Every throttling policy kind and condition type through real processes
/// (issue 17): a control plane (publisher, store, keymanager), one traffic
/// manager and one gateway started by tollgated, the Python backend. The
/// policies, block conditions and APIs are made with tollctl, the public
/// interface; Python `requests` (Tests/Interop/throttle_policies.py) sends
/// the calls, from several loopback addresses, and checks WSO2's codes, the
/// evaluation order, `Retry-After` and the `RateLimit-*` fields.
@Suite(.serialized) struct ThrottlePoliciesEndToEndTests {
    typealias Gateway = GatewayEndToEndTests

    @Test func everyPolicyKindConditionTypeAndTheEvaluationOrder() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("cp-1", roles: ["publisher", "store", "keymanager"])
        try fixture.issueNode("tm-1", roles: ["trafficmanager"])
        try fixture.issueNode("gw-1", roles: ["gateway"])
        let (cpCluster, cpAdmin, oauth, tmCluster) = (try NodeFixture.freePort(), try NodeFixture.freePort(), try NodeFixture.freePort(),
                                                      try NodeFixture.freePort())
        let cpConfig = try fixture.writeConfig("cp-1", roles: ["publisher", "store", "keymanager"], clusterPort: cpCluster, adminPort: cpAdmin,
                                               extra: "\n[store]\nself_signup_tenants = \"*\"\n")
        var text = try String(contentsOfFile: cpConfig, encoding: .utf8)
        text = text.replacingOccurrences(of: "admin = \"127.0.0.1:\(cpAdmin)\"\n", with: "admin = \"127.0.0.1:\(cpAdmin)\"\noauth = \"127.0.0.1:\(oauth)\"\n")
        try text.write(toFile: cpConfig, atomically: true, encoding: .utf8)
        let tmConfig = try fixture.writeConfig("tm-1", roles: ["trafficmanager"], clusterPort: tmCluster, adminPort: nil)
        let (gwCluster, gwHTTP, gwMetrics) = (try NodeFixture.freePort(), try NodeFixture.freePort(), try NodeFixture.freePort())
        let gwConfig = try fixture.writeConfig("gw-1", roles: ["gateway"], clusterPort: gwCluster, adminPort: nil,
                                               peers: ["publisher": ["127.0.0.1:\(cpCluster)"], "keymanager": ["127.0.0.1:\(cpCluster)"],
                                                       "trafficmanager": ["127.0.0.1:\(tmCluster)"]])
        try ThrottlingEndToEndTests.addListeners(gwConfig, clusterPort: gwCluster, ["http = \"127.0.0.1:\(gwHTTP)\"", "https = \"127.0.0.1:\(try NodeFixture.freePort())\"",
                                                                               "metrics = \"127.0.0.1:\(gwMetrics)\""])
        let backend = try Gateway.Backend()
        defer { backend.stop() }

        try await withNodes { nodes in
            let controlPlane = try nodes.start(config: cpConfig)
            #expect(await controlPlane.waitFor("ready: node cp-1"), "\(controlPlane.output)")
            let trafficManager = try nodes.start(config: tmConfig)
            #expect(await trafficManager.waitFor("ready: node tm-1"), "\(trafficManager.output)")
            let gateway = try nodes.start(config: gwConfig)
            #expect(await gateway.waitFor("ready: node gw-1"), "\(gateway.output)")

            var environment = ["TOLLCTL_NODE": "127.0.0.1:\(cpAdmin)", "TOLLCTL_CA": fixture.caPath, "XDG_STATE_HOME": fixture.path("state-admin"),
                               "XDG_CONFIG_HOME": fixture.path("config")]
            func tollctl(_ arguments: String..., input: String? = nil) throws -> String {
                let result = try runTollctl(arguments, environment: environment, input: input)
                #expect(result.status == 0, "tollctl \(arguments.joined(separator: " ")): \(result.output)")
                return result.output
            }
            _ = try tollctl("login", "--user", "admin", "--password-stdin", input: fixture.adminPassword + "\n")

            // Subscription tiers: request count, bandwidth, spike arrest per second and minute, stop-on-quota off.
            _ = try tollctl("policy", "create", "--kind", "subscription", "Sub5", "--requests", "5", "--per", "hour")
            _ = try tollctl("policy", "create", "--kind", "subscription", "Bytes1k", "--bandwidth", "1000", "--per", "hour")
            _ = try tollctl("policy", "create", "--kind", "subscription", "Spiky", "--requests", "1000", "--per", "hour", "--spike-arrest", "3")
            _ = try tollctl("policy", "create", "--kind", "subscription", "SpikyMin", "--requests", "1000", "--per", "hour",
                            "--spike-arrest", "4", "--spike-arrest-unit", "minute")
            _ = try tollctl("policy", "create", "--kind", "subscription", "Lenient", "--requests", "3", "--per", "hour", "--no-stop-on-quota")
            _ = try tollctl("policy", "create", "--kind", "subscription", "Sub2", "--requests", "2", "--per", "hour")
            _ = try tollctl("policy", "create", "--kind", "subscription", "Sub2Spike", "--requests", "2", "--per", "hour",
                            "--spike-arrest", "2", "--spike-arrest-unit", "minute")
            _ = try tollctl("policy", "create", "--kind", "subscription", "Spike2", "--requests", "1000", "--per", "hour",
                            "--spike-arrest", "2", "--spike-arrest-unit", "minute")
            let lenient = Gateway.json(try tollctl("policy", "show", "--kind", "subscription", "Lenient"))
            #expect(lenient["stop_on_quota_reach"] as? Bool == false, "\(lenient)")
            let spiky = Gateway.json(try tollctl("policy", "show", "--kind", "subscription", "SpikyMin"))
            #expect(spiky["spike_arrest_unit"] as? String == "minute" && spiky["spike_arrest_limit"] as? Int == 4, "\(spiky)")
            // Application tiers.
            for (name, count) in [("App1", "1"), ("App2", "2"), ("App3", "3")] {
                _ = try tollctl("policy", "create", "--kind", "application", name, "--requests", count, "--per", "hour")
            }
            // Advanced policies: each condition type in a group, its inversion in a second group.
            func conditional(_ name: String, _ condition: String) throws {
                _ = try tollctl("policy", "create", "--kind", "advanced", name, "--requests", "100", "--per", "hour",
                                "--condition-group", "2/hour when \(condition)", "--condition-group", "2/hour when !\(condition)")
            }
            try conditional("CondIP", "ip=127.0.0.2")
            try conditional("CondRange", "ip-range=127.0.0.3-127.0.0.4")
            try conditional("CondHeader", "header:X-Tier=^gold$")
            try conditional("CondQuery", "query:plan=^free$")
            try conditional("CondClaim", "claim:keytype=PRODUCTION")
            _ = try tollctl("policy", "create", "--kind", "advanced", "CondDefault", "--requests", "3", "--per", "hour",
                            "--condition-group", "2/hour when ip=127.0.0.2")
            _ = try tollctl("policy", "create", "--kind", "advanced", "ResPol", "--level", "resource", "--requests", "2", "--per", "hour",
                            "--condition-group", "1/hour when query:plan=^free$")
            _ = try tollctl("policy", "create", "--kind", "advanced", "Adv2", "--requests", "2", "--per", "hour")
            let shown = Gateway.json(try tollctl("policy", "show", "--kind", "advanced", "CondRange"))
            #expect((shown["condition_groups"] as? [[String: Any]])?.count == 2, "\(shown)")
            // Bad condition groups are refused with a clear error, before any call.
            let bad = try runTollctl(["policy", "create", "--kind", "advanced", "Bad", "--requests", "1", "--condition-group", "2/hour when cookie:x=1"],
                                     environment: environment)
            #expect(bad.status != 0 && bad.output.contains("is none of ip="), "\(bad.output)")

            // Blocks: one address, everything outside an inverted range, one API context.
            _ = try tollctl("block", "add", "--type", "ip", "127.0.0.5")
            _ = try tollctl("block", "add", "--type", "ip-range", "--from", "127.0.0.1", "--to", "127.0.0.200", "--invert")
            _ = try tollctl("block", "add", "--type", "api-context", "/blocked")

            // APIs, each its own counters.
            let endpoint = "http://127.0.0.1:\(backend.port)"
            var apiIDs: [String: String] = [:]
            func api(_ context: String, tiers: [String] = ["Unlimited"], resources: [String] = ["GET /echo"], _ extra: [String] = []) throws {
                var arguments = ["api", "create", "--name", String(context.dropFirst()), "--api-version", "1", "--context", context, "--endpoint", endpoint,
                                 "--output", "json"]
                for resource in resources { arguments += ["--resource", resource] }
                for tier in tiers { arguments += ["--tier", tier] }
                let result = try runTollctl(arguments + extra, environment: environment)
                #expect(result.status == 0, "tollctl \(arguments.joined(separator: " ")): \(result.output)")
                let id = try #require(Gateway.json(result.output)["id"] as? String)
                _ = try tollctl("api", "lifecycle", id, "published")
                apiIDs[context] = id
            }
            try api("/sub", tiers: ["Sub5"])
            try api("/bytes", tiers: ["Bytes1k"], resources: ["PUT /count"])
            try api("/spike", tiers: ["Spiky"])
            try api("/spikemin", tiers: ["SpikyMin"])
            try api("/lenient", tiers: ["Lenient"])
            try api("/appl")
            for (context, policy) in [("/cond-ip", "CondIP"), ("/cond-range", "CondRange"), ("/cond-header", "CondHeader"), ("/cond-query", "CondQuery"),
                                      ("/cond-claim", "CondClaim"), ("/cond-default", "CondDefault")] {
                try api(context, ["--api-policy", policy])
            }
            try api("/res", resources: ["GET /a", "GET /b"], ["--resource-policy", "ResPol"])
            try api("/hard", ["--max-production-tps", "2"])
            try api("/ord-api", tiers: ["Sub2"], ["--api-policy", "Adv2"])
            try api("/ord-res", tiers: ["Sub2"], ["--resource-policy", "Adv2"])
            try api("/ord-sub", tiers: ["Sub2Spike"])
            try api("/ord-spike", tiers: ["Spike2"])
            try api("/ord-hard", ["--max-production-tps", "1"])
            try api("/ord-cust")
            try api("/cust")
            try api("/cust2")
            try api("/blocked")
            let hard = Gateway.json(try tollctl("api", "get", try #require(apiIDs["/hard"]), "--output", "json"))
            #expect(hard["max_production_tps"] as? Int == 2, "\(hard)")

            // Applications and their tokens.
            _ = try tollctl("signup", "--user", "alice", "--password-stdin", input: "Alice-Secret-1\n")
            _ = try tollctl("signup", "--user", "bob", "--password-stdin", input: "Bob-Secret-1\n")
            environment["XDG_STATE_HOME"] = fixture.path("state-alice")
            _ = try tollctl("login", "--user", "alice", "--password-stdin", input: "Alice-Secret-1\n")
            func application(_ name: String, tier: String = "Unlimited", tokenType: String = "opaque", subscriptions: [(String, String)])
                throws -> (id: String, key: String, secret: String, token: String) {
                let app = Gateway.json(try tollctl("app", "create", "--name", name, "--tier", tier, "--token-type", tokenType, "--output", "json"))
                let id = try #require(app["id"] as? String)
                for (context, subscriptionTier) in subscriptions {
                    _ = try tollctl("sub", "create", "--app", id, "--api", try #require(apiIDs[context]), "--tier", subscriptionTier)
                }
                let keys = Gateway.json(try tollctl("key", "generate", id, "--type", "production", "--output", "json"))
                return (id, try #require(keys["consumer_key"] as? String), try #require(keys["consumer_secret"] as? String),
                        try #require(keys["access_token"] as? String))
            }
            let main = try application("main", subscriptions: [
                ("/sub", "Sub5"), ("/bytes", "Bytes1k"), ("/spike", "Spiky"), ("/spikemin", "SpikyMin"), ("/lenient", "Lenient"),
                ("/cond-ip", "Unlimited"), ("/cond-range", "Unlimited"), ("/cond-header", "Unlimited"), ("/cond-query", "Unlimited"),
                ("/cond-claim", "Unlimited"), ("/cond-default", "Unlimited"), ("/res", "Unlimited"), ("/hard", "Unlimited"),
                ("/ord-api", "Sub2"), ("/ord-res", "Sub2"), ("/ord-sub", "Sub2Spike"), ("/blocked", "Unlimited")])
            let signed = try application("signed", tokenType: "jwt", subscriptions: [("/cond-claim", "Unlimited")])
            let shared = try application("shared", tier: "App3", subscriptions: [("/appl", "Unlimited")])
            let customShared = try application("custom", subscriptions: [("/cust", "Unlimited"), ("/cust2", "Unlimited")])
            let orderApp = try application("order-app", tier: "App2", subscriptions: [("/ord-spike", "Spike2")])
            let orderHard = try application("order-hard", tier: "App1", subscriptions: [("/ord-hard", "Unlimited")])
            let orderCustom = try application("order-cust", tier: "App3", subscriptions: [("/ord-cust", "Unlimited")])
            let unsubscribed = try application("none", subscriptions: [])
            // Bob's tokens for alice's shared applications: the password grant, as a second end user of one application.
            func bobToken(_ app: (id: String, key: String, secret: String, token: String)) async throws -> String {
                let grant = try await Gateway.curl(["--cacert", fixture.caPath, "-u", "\(app.key):\(app.secret)", "-d", "grant_type=password",
                                                    "-d", "username=bob", "-d", "password=Bob-Secret-1", "https://127.0.0.1:\(oauth)/oauth2/token"])
                return try #require(Gateway.json(grant.output)["access_token"] as? String, "password grant: \(grant.output)")
            }

            // Every API deployed (an unsubscribed token is refused before any quota is counted).
            let http = "http://127.0.0.1:\(gwHTTP)"
            for context in apiIDs.keys where context != "/blocked" {
                // PUT /count only: a GET is refused with 405 once the API is routed.
                let (path, status) = context == "/res" ? ("/a", "403") : context == "/bytes" ? ("/count", "405") : ("/echo", "403")
                try await Gateway.waitForStatus(http + context + "/1" + path, status, headers: ["Authorization: Bearer \(unsubscribed.token)"])
            }

            let plan = fixture.path("throttle-plan.json")
            let tokens = ["main": main.token, "jwt": signed.token, "shared-alice": shared.token, "shared-bob": try await bobToken(shared),
                          "custom-alice": customShared.token, "custom-bob": try await bobToken(customShared), "order-app": orderApp.token,
                          "order-hard": orderHard.token, "order-cust": orderCustom.token]
            try JSONSerialization.data(withJSONObject: ["gateway": http, "metrics": "http://127.0.0.1:\(gwMetrics)", "tokens": tokens])
                .write(to: URL(fileURLWithPath: plan))
            func run(phase: Int) async throws {
                let result = try await runTool(Gateway.python, [Gateway.interop + "/throttle_policies.py", "--plan", plan, "--phase", String(phase)],
                                               timeout: .seconds(600))
                let failed = result.output.split(separator: "\n").filter { $0.hasPrefix("FAIL") }
                #expect(result.status == 0 && failed.isEmpty && result.output.contains("done:"),
                        "phase \(phase): \(failed.isEmpty ? result.output : failed.joined(separator: "\n"))")
                print("phase \(phase): " + result.output.split(separator: "\n").filter { $0.hasPrefix("done:") }.joined())
            }
            try await run(phase: 1)

            // Custom policies count every call of the tenant's APIs: made after phase 1, then a new API shows they are deployed.
            environment["XDG_STATE_HOME"] = fixture.path("state-admin")
            _ = try tollctl("policy", "create", "--kind", "global", "PerUserApi", "--key-template", "$userId:$apiContext", "--requests", "3", "--per", "hour")
            _ = try tollctl("policy", "create", "--kind", "global", "PerAppIp", "--key-template", "$appId@$clientIp", "--requests", "5", "--per", "hour")
            let custom = Gateway.json(try tollctl("policy", "show", "--kind", "global", "PerAppIp"))
            #expect(custom["key_template"] as? String == "$appId@$clientIp" && custom["limit"] as? String == "5 requests/hour", "\(custom)")
            try api("/marker")
            try await Gateway.waitForStatus(http + "/marker/1/echo", "403", headers: ["Authorization: Bearer \(unsubscribed.token)"])
            try await run(phase: 2)
            _ = await gateway.stop()
            _ = await trafficManager.stop()
            _ = await controlPlane.stop()
        }
    }
}
