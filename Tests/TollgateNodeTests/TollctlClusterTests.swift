import Foundation
import TestSupport
import Testing

/// Two real nodes (a publisher with users, a gateway without) and `tollctl`
/// driving them as an operator would.
@Suite(.serialized) struct TollctlClusterTests {
    @Test func loginWhoamiPingAndClusterStatusAgainstAnyNode() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("pub-1", roles: ["publisher"])
        try fixture.issueNode("gw-1", roles: ["gateway"])
        let (pubCluster, pubAdmin, gwCluster) = (try NodeFixture.freePort(), try NodeFixture.freePort(), try NodeFixture.freePort())
        try await withNodes { nodes in
            let publisher = try nodes.start(config: try fixture.writeConfig("pub-1", roles: ["publisher"], clusterPort: pubCluster, adminPort: pubAdmin,
                                                                            peers: ["gateway": ["127.0.0.1:\(gwCluster)"]]))
            let gateway = try nodes.start(config: try fixture.writeConfig("gw-1", roles: ["gateway"], clusterPort: gwCluster, adminPort: nil,
                                                                          peers: ["publisher": ["127.0.0.1:\(pubCluster)"]]))
            #expect(await publisher.waitFor("ready: node pub-1"), "\(publisher.output)")
            #expect(await gateway.waitFor("ready: node gw-1"), "\(gateway.output)")

            let state = fixture.path("state")
            var environment = ["TOLLCTL_NODE": "127.0.0.1:\(pubAdmin)", "TOLLCTL_CA": fixture.caPath, "XDG_STATE_HOME": state,
                               "XDG_CONFIG_HOME": fixture.path("config")]
            environment["TOLLCTL_PASSWORD"] = nil

            let anonymous = try runTollctl(["whoami"], environment: environment)
            #expect(anonymous.status != 0 && anonymous.output.contains("not signed in to 127.0.0.1:\(pubAdmin): run `tollctl login`"), "\(anonymous.output)")
            let wrong = try runTollctl(["login", "--user", "admin", "--password-stdin"], environment: environment, input: "nope-Nope-1\n")
            #expect(wrong.status != 0 && wrong.output.contains("invalid username or password"), "\(wrong.output)")

            let login = try runTollctl(["login", "--user", "admin", "--password-stdin"], environment: environment, input: fixture.adminPassword + "\n")
            #expect(login.status == 0 && login.output.contains("signed in to 127.0.0.1:\(pubAdmin) as admin@carbon.super"), "\(login.output)")
            // The session is kept for the next commands, readable by its owner only.
            let sessionFile = "\(state)/tollgate/session-127.0.0.1_\(pubAdmin)"
            let mode = try FileManager.default.attributesOfItem(atPath: sessionFile)[.posixPermissions] as? Int
            #expect(mode == 0o600)
            let whoami = try runTollctl(["whoami", "--output", "json"], environment: environment)
            #expect(whoami.status == 0 && whoami.output.contains(#""username" : "admin""#) && whoami.output.contains("/permission/admin"), "\(whoami.output)")

            let ping = try runTollctl(["ping", "--count", "2"], environment: environment)
            #expect(ping.status == 0 && ping.output.contains("reply from pub-1") && ping.output.contains("2 replies"), "\(ping.output)")

            // Peers are probed every few seconds, in the publisher's process:
            // ask until the gateway shows as connected.
            var status = (status: Int32(0), output: "")
            try await eventually("cluster status to show the gateway connected", poll: .milliseconds(250)) {
                status = try runTollctl(["cluster", "status"], environment: environment)
                return status.output.contains("gw-1") && status.output.contains("connected")
            }
            #expect(status.status == 0, "\(status.output)")
            let rows = status.output.split(separator: "\n")
            #expect(rows.first?.hasPrefix("NODE") == true)
            #expect(rows.contains { $0.hasPrefix("pub-1") && $0.contains("publisher") && $0.contains("(this node)") }, "\(status.output)")
            #expect(rows.contains { $0.hasPrefix("gw-1") && $0.contains("gateway") && $0.contains("0.1.0") && $0.contains("yes") && $0.contains("connected") },
                    "\(status.output)")

            // The gateway has no users: its cluster listener takes the admin certificate.
            var atGateway = environment
            atGateway["TOLLCTL_NODE"] = "127.0.0.1:\(gwCluster)"
            atGateway["TOLLCTL_CERT"] = fixture.path("admin.pem")
            atGateway["TOLLCTL_KEY"] = fixture.path("admin.key")
            let gatewayPing = try runTollctl(["ping", "--count", "1"], environment: atGateway)
            #expect(gatewayPing.status == 0 && gatewayPing.output.contains("reply from gw-1"), "\(gatewayPing.output)")
            // Its own view of the publisher may still be retrying a connection made before the publisher listened:
            // the status fails until every peer is ready.
            var gatewayStatus = (status: Int32(0), output: "")
            try await eventually("the gateway's cluster status to show the publisher ready", timeout: .seconds(90), poll: .milliseconds(250)) {
                gatewayStatus = try runTollctl(["cluster", "status", "--output", "json"], environment: atGateway)
                return gatewayStatus.status == 0
            }
            #expect(gatewayStatus.output.contains(#""node_id" : "gw-1""#) && gatewayStatus.output.contains(#""ready" : true"#), "\(gatewayStatus.output)")
            // Without the certificate, the cluster listener refuses the TLS handshake.
            var noCertificate = atGateway
            noCertificate["TOLLCTL_CERT"] = nil
            noCertificate["TOLLCTL_KEY"] = nil
            let refused = try runTollctl(["ping", "--count", "1"], environment: noCertificate)
            #expect(refused.status != 0 && refused.output.contains("cannot connect to 127.0.0.1:\(gwCluster)"), "\(refused.output)")
            #expect(refused.output.contains("cluster listener") && refused.output.contains("admin listener") && refused.output.contains("--cert and --key"),
                    "a refused handshake says which listener this is and what to do: \(refused.output)")

            // Throttling policies and block conditions, as the publisher's admin.
            let tiers = try runTollctl(["policy", "list", "--kind", "subscription"], environment: environment)
            #expect(tiers.status == 0 && tiers.output.contains("Gold") && tiers.output.contains("5000 requests/minute"), "\(tiers.output)")
            let platinum = try runTollctl(["policy", "create", "--kind", "subscription", "Platinum", "--requests", "10000"], environment: environment)
            #expect(platinum.status == 0 && platinum.output.contains("created subscription policy Platinum: 10000 requests/minute"), "\(platinum.output)")
            let duplicate = try runTollctl(["policy", "create", "--kind", "subscription", "Platinum", "--requests", "10000"], environment: environment)
            #expect(duplicate.status != 0 && duplicate.output.contains("already exists"), "\(duplicate.output)")
            let added = try runTollctl(["block", "add", "--type", "ip", "203.0.113.7"], environment: environment)
            #expect(added.status == 0 && added.output.contains("added block condition"), "\(added.output)")
            let id = String(added.output.split(separator: " ").last ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(try runTollctl(["block", "disable", id], environment: environment).status == 0)
            let blocks = try runTollctl(["block", "list"], environment: environment)
            #expect(blocks.status == 0 && blocks.output.contains("203.0.113.7") && blocks.output.contains("disabled"), "\(blocks.output)")

            // Users, roles and tenants.
            let created = try runTollctl(["user", "create", "sam", "--role", "subscriber", "--email", "sam@example.com", "--password-stdin"],
                                         environment: environment, input: "sam-Secret-1\n")
            #expect(created.status == 0 && created.output.contains("created user sam@carbon.super with roles subscriber"), "\(created.output)")
            let weak = try runTollctl(["user", "create", "ann", "--password-stdin"], environment: environment, input: "short\n")
            #expect(weak.status != 0 && weak.output.contains("8 to 128 characters"), "\(weak.output)")
            let shown = try runTollctl(["user", "show", "sam"], environment: environment)
            #expect(shown.status == 0 && shown.output.contains("user           sam@carbon.super") && shown.output.contains("roles          subscriber"),
                    "\(shown.output)")
            let shownJSON = try runTollctl(["user", "show", "sam", "--output", "json"], environment: environment)
            #expect(shownJSON.status == 0 && shownJSON.output.contains(#""username" : "sam""#), "\(shownJSON.output)")

            // A named session beside the default one: switch identities without signing in again.
            #expect(try runTollctl(["user", "create", "pat", "--role", "creator", "--password-stdin"], environment: environment, input: "pat-Secret-1\n").status == 0)
            let asPat = try runTollctl(["login", "--as", "pat-creator", "--user", "pat", "--password-stdin"], environment: environment, input: "pat-Secret-1\n")
            #expect(asPat.status == 0 && asPat.output.contains("as pat@carbon.super in session pat-creator"), "\(asPat.output)")
            let patWhoami = try runTollctl(["whoami", "--session", "pat-creator"], environment: environment)
            #expect(patWhoami.status == 0 && patWhoami.output.contains("pat@carbon.super"), "\(patWhoami.output)")
            let adminWhoami = try runTollctl(["whoami"], environment: environment)
            #expect(adminWhoami.status == 0 && adminWhoami.output.contains("admin@carbon.super"), "the default session is still admin's: \(adminWhoami.output)")
            let sessions = try runTollctl(["sessions"], environment: environment)
            #expect(sessions.status == 0 && sessions.output.contains("(default)") && sessions.output.contains("pat-creator"), "\(sessions.output)")
            let denied = try runTollctl(["user", "list"], environment: environment.merging(["TOLLCTL_SESSION": "pat-creator"]) { $1 })
            #expect(denied.status != 0 && denied.output.contains("permission denied") && denied.output.contains("roles that grant it: admin"),
                    "a refusal names the roles that would allow it: \(denied.output)")
            let unknownSession = try runTollctl(["whoami", "--session", "nobody"], environment: environment)
            #expect(unknownSession.status != 0 && unknownSession.output.contains("not signed in to 127.0.0.1:\(pubAdmin) (session nobody): run `tollctl login --as nobody`"),
                    "\(unknownSession.output)")

            let users = try runTollctl(["user", "list"], environment: environment)
            #expect(users.status == 0 && users.output.contains("sam") && users.output.contains("subscriber") && users.output.contains("active"), "\(users.output)")
            #expect(try runTollctl(["role", "create", "auditor", "--permission", "/permission/admin/configure/security"], environment: environment).status == 0)
            let granted = try runTollctl(["user", "roles", "sam", "--add", "auditor"], environment: environment)
            #expect(granted.status == 0 && granted.output.contains("sam now holds: subscriber, auditor"), "\(granted.output)")
            let disabled = try runTollctl(["user", "status", "sam", "disabled"], environment: environment)
            #expect(disabled.status == 0 && disabled.output.contains("sam is disabled"), "\(disabled.output)")
            let tenant = try runTollctl(["tenant", "create", "example.com", "--admin", "boss", "--password-stdin"], environment: environment, input: "boss-Secret-1\n")
            #expect(tenant.status == 0 && tenant.output.contains("boss@example.com"), "\(tenant.output)")
            let tenants = try runTollctl(["tenant", "list"], environment: environment)
            #expect(tenants.status == 0 && tenants.output.contains("example.com") && tenants.output.contains("carbon.super"), "\(tenants.output)")
            let deleted = try runTollctl(["user", "delete", "sam"], environment: environment)
            #expect(deleted.status == 0, "\(deleted.output)")

            // A peer that stops answering is not ready, with its last error on one line, and the status fails.
            #expect(await gateway.stop() == 0)
            var down = (status: Int32(0), output: "")
            try await eventually("cluster status to show the stopped gateway as not ready", poll: .milliseconds(250)) {
                down = try runTollctl(["cluster", "status"], environment: environment)
                return down.output.contains("retrying")
            }
            #expect(down.status != 0, "\(down.output)")
            let gatewayRow = down.output.split(separator: "\n").first { $0.hasPrefix("gw-1") } ?? ""
            #expect(gatewayRow.contains(" no ") && gatewayRow.contains("retrying: connection refused"), "\(down.output)")
            #expect(!down.output.contains("NIOConnectionError") && !down.output.contains("SingleConnectionFailure"), "\(down.output)")
            #expect(down.output.contains("1 of 1 peers not ready: gw-1"), "\(down.output)")

            let logout = try runTollctl(["logout"], environment: environment)
            #expect(logout.status == 0 && !FileManager.default.fileExists(atPath: sessionFile), "\(logout.output)")

            #expect(await publisher.stop() == 0)
        }
    }
}
