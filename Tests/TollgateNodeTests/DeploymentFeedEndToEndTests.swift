import Foundation
import TestSupport
import Testing

/// The deployment feed's caught-up frame between real processes: a gateway
/// restarted with a saved state that is already current learns so from the
/// publisher at once, though nothing is published.
@Suite(.serialized) struct DeploymentFeedEndToEndTests {
    /// One gauge's value from a Prometheus text page.
    static func gauge(_ name: String, in page: String) -> Double? {
        page.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.dropFirst(name.count + 1)) }
    }

    @Test func aGatewayRestartedWithACurrentStateReportsTheFeedConnected() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("cp-1", roles: ["publisher"])
        try fixture.issueNode("gw-1", roles: ["gateway"])
        let (cpCluster, cpAdmin) = (try NodeFixture.freePort(), try NodeFixture.freePort())
        let (gwCluster, gwHTTP, gwHTTPS, gwMetrics) = (try NodeFixture.freePort(), try NodeFixture.freePort(), try NodeFixture.freePort(),
                                                       try NodeFixture.freePort())
        let cpConfig = try fixture.writeConfig("cp-1", roles: ["publisher"], clusterPort: cpCluster, adminPort: cpAdmin)
        let gwConfig = try fixture.writeConfig("gw-1", roles: ["gateway"], clusterPort: gwCluster, adminPort: nil,
                                               peers: ["publisher": ["127.0.0.1:\(cpCluster)"]])
        var text = try String(contentsOfFile: gwConfig, encoding: .utf8)
        text = text.replacingOccurrences(of: "cluster = \"127.0.0.1:\(gwCluster)\"\n",
                                         with: "cluster = \"127.0.0.1:\(gwCluster)\"\nhttp = \"127.0.0.1:\(gwHTTP)\"\nhttps = \"127.0.0.1:\(gwHTTPS)\"\n"
                                            + "metrics = \"127.0.0.1:\(gwMetrics)\"\n")
        try text.write(toFile: gwConfig, atomically: true, encoding: .utf8)

        try await withNodes { nodes in
            let controlPlane = try nodes.start(config: cpConfig)
            var gateway = try nodes.start(config: gwConfig)
            #expect(await controlPlane.waitFor("ready: node cp-1"), "\(controlPlane.output)")
            #expect(await gateway.waitFor("ready: node gw-1"), "\(gateway.output)")

            let environment = ["TOLLCTL_NODE": "127.0.0.1:\(cpAdmin)", "TOLLCTL_CA": fixture.caPath, "XDG_STATE_HOME": fixture.path("state-admin"),
                               "XDG_CONFIG_HOME": fixture.path("config")]
            func tollctl(_ arguments: String..., input: String? = nil) throws -> String {
                let result = try runTollctl(arguments, environment: environment, input: input)
                #expect(result.status == 0, "tollctl \(arguments.joined(separator: " ")): \(result.output)")
                return result.output
            }
            _ = try tollctl("login", "--user", "admin", "--password-stdin", input: fixture.adminPassword + "\n")
            let api = GatewayEndToEndTests.json(try tollctl("api", "create", "--name", "Menu", "--api-version", "1", "--context", "/menu",
                                                            "--resource", "GET /open", "--resource-auth", "none",
                                                            "--endpoint", "http://127.0.0.1:9", "--tier", "Unlimited", "--output", "json"))
            _ = try tollctl("api", "lifecycle", try #require(api["id"] as? String), "published")

            func metrics() async -> String {
                (try? await GatewayEndToEndTests.curl(["http://127.0.0.1:\(gwMetrics)/metrics"], timeout: .seconds(10)))?.output ?? ""
            }
            func status() throws -> [String: Any] {
                let result = try runTollctl(["gateway", "status", "--node", "127.0.0.1:\(gwCluster)", "--server-name", "localhost",
                                             "--ca", fixture.caPath, "--cert", fixture.path("admin.pem"), "--key", fixture.path("admin.key"),
                                             "--output", "json"])
                #expect(result.status == 0, "tollctl gateway status: \(result.output)")
                return GatewayEndToEndTests.json(result.output)
            }
            try await eventually("the gateway serves the published API", timeout: .seconds(30), poll: .milliseconds(200)) {
                Self.gauge("tollgate_gateway_apis", in: await metrics()) == 1
            }
            let revision = try #require(Self.gauge("tollgate_gateway_deployment_revision", in: await metrics()))

            // Restarted while the publisher runs and nothing is published: the
            // saved state is current, so the feed has nothing to send but its
            // caught-up frame, and that alone confirms it.
            let restartedAtUnixMs = Date().timeIntervalSince1970 * 1000
            #expect(await gateway.stop() == 0, "\(gateway.output)")
            gateway = try nodes.start(config: gwConfig)
            #expect(await gateway.waitFor("ready: node gw-1"), "\(gateway.output)")
            #expect(gateway.output.contains("serving the deployment state saved at revision \(Int(revision))"), "\(gateway.output)")
            // The heartbeat is ten seconds: twenty leaves room for a loaded machine, and a gateway
            // waiting for a change (the behaviour before caught-up) would never get there.
            let ready = ContinuousClock.now
            try await eventually("the restarted gateway reports the feed connected", timeout: .seconds(20), poll: .milliseconds(200)) {
                Self.gauge("tollgate_gateway_deployment_feed_connected", in: await metrics()) == 1
            }
            print("measured: feed connected \(ContinuousClock.now - ready) after the restarted gateway was ready")
            let page = await metrics()
            #expect(Self.gauge("tollgate_gateway_deployment_revision", in: page) == revision, "nothing was published")
            let status = try status()
            #expect(status["deployment_feed_connected"] as? Bool == true, "\(status)")
            #expect(status["serving_persisted_state"] as? Bool == false, "confirmed by the publisher, no longer only the saved copy: \(status)")
            #expect((status["deployment_revision"] as? NSNumber)?.doubleValue == revision, "\(status)")
            // The state's age runs from that confirmation, not from when the saved copy was applied.
            let confirmedAt = (status["deployment_confirmed_at_unix_ms"] as? NSNumber)?.doubleValue ?? 0
            #expect(confirmedAt >= restartedAtUnixMs.rounded(.down), "confirmed at \(confirmedAt), restarted at \(restartedAtUnixMs)")
        }
    }
}
