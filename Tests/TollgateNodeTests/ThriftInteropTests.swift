import Foundation
import TestSupport
import Testing

/// A stock Apache Thrift client (Python `thrift` with code Debian's
/// thrift-compiler generated from proto/thrift; Tests/Interop/thrift_peer.py)
/// acting as a WSO2 2.x gateway against a real keymanager process:
/// authenticate over HTTPS in TCompactProtocol, then the three
/// APIKeyValidationService methods over TLS in TBinaryProtocol, including
/// refused tokens, a refused session, and an expired one.
@Suite(.serialized) struct ThriftInteropTests {
    static var python: String { ProcessInfo.processInfo.environment["TOLLGATE_PYTHON"] ?? "/usr/bin/python3" }
    static var peer: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Interop/thrift_peer.py").path
    }

    @Test func aStockThriftClientValidatesKeysAgainstTheKeymanager() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("km-1", roles: ["publisher", "store", "keymanager"])
        let (cluster, admin, oauth, thrift) = (try NodeFixture.freePort(), try NodeFixture.freePort(), try NodeFixture.freePort(), try NodeFixture.freePort())
        let sessionTimeout = 5
        let config = try fixture.writeConfig("km-1", roles: ["publisher", "store", "keymanager"], clusterPort: cluster, adminPort: admin,
                                             extra: "\n[store]\nself_signup_tenants = \"*\"\n\n[keymanager]\nthrift_session_timeout_seconds = \(sessionTimeout)\n"
                                                 + "thrift_authenticator_roles = \"admin, gateway\"\n")
        var text = try String(contentsOfFile: config, encoding: .utf8)
        text = text.replacingOccurrences(of: "admin = \"127.0.0.1:\(admin)\"\n",
                                         with: "admin = \"127.0.0.1:\(admin)\"\noauth = \"127.0.0.1:\(oauth)\"\nthrift = \"127.0.0.1:\(thrift)\"\n")
        try text.write(toFile: config, atomically: true, encoding: .utf8)

        try await withNodes { nodes in
            let node = try nodes.start(config: config)
            #expect(await node.waitFor("ready: node km-1"), "\(node.output)")
            var environment = ["TOLLCTL_NODE": "127.0.0.1:\(admin)", "TOLLCTL_CA": fixture.caPath, "XDG_STATE_HOME": fixture.path("state-admin"),
                               "XDG_CONFIG_HOME": fixture.path("config")]
            func tollctl(_ arguments: String..., input: String? = nil) throws -> String {
                let result = try runTollctl(arguments, environment: environment, input: input)
                #expect(result.status == 0, "tollctl \(arguments.joined(separator: " ")): \(result.output)")
                return result.output
            }
            func json(_ text: String) -> [String: Any] {
                guard let start = text.firstIndex(of: "{") else { return [:] }
                return (try? JSONSerialization.jsonObject(with: Data(text[start...].utf8))) as? [String: Any] ?? [:]
            }
            _ = try tollctl("login", "--user", "admin", "--password-stdin", input: fixture.adminPassword + "\n")
            // The gateway's account, and one without a Thrift role.
            _ = try tollctl("role", "create", "gateway", "--permission", "/permission/admin/login")
            _ = try tollctl("user", "create", "gw", "--role", "gateway", "--password-stdin", input: "Gateway-Secret-1\n")
            _ = try tollctl("user", "create", "bob", "--role", "subscriber", "--password-stdin", input: "Bob-Secret-12\n")
            let api = json(try tollctl("api", "create", "--name", "Menu", "--api-version", "1.0.0", "--context", "/menu", "--resource", "GET /dishes",
                                       "--endpoint", "https://backend.example.com", "--tier", "Gold", "--output", "json"))
            let apiID = try #require(api["id"] as? String)
            _ = try tollctl("api", "lifecycle", apiID, "published")
            _ = try tollctl("signup", "--user", "alice", "--password-stdin", input: "Alice-Secret-1\n")
            environment["XDG_STATE_HOME"] = fixture.path("state-alice")
            _ = try tollctl("login", "--user", "alice", "--password-stdin", input: "Alice-Secret-1\n")
            func application(_ name: String, subscribe: Bool) throws -> (id: String, key: String, token: String, subscription: String) {
                let app = json(try tollctl("app", "create", "--name", name, "--output", "json"))
                let id = try #require(app["id"] as? String)
                var subscription = ""
                if subscribe {
                    subscription = try #require(json(try tollctl("sub", "create", "--app", id, "--api", apiID, "--tier", "Gold", "--output", "json"))["id"] as? String)
                }
                let keys = json(try tollctl("key", "generate", id, "--output", "json"))
                let token = try #require(json(try tollctl("token", "issue", id, "--output", "json"))["access_token"] as? String)
                return (id, try #require(keys["consumer_key"] as? String), token, subscription)
            }
            let good = try application("web", subscribe: true)
            let blocked = try application("blocked", subscribe: true)
            let unsubscribed = try application("lonely", subscribe: false)
            environment["XDG_STATE_HOME"] = fixture.path("state-admin")
            _ = try tollctl("sub", "block", blocked.subscription)

            let result = try await runTool(Self.python, [
                Self.peer, "client", "--authenticator", "https://localhost:\(oauth)/thriftAuthenticator", "--host", "localhost", "--port", String(thrift),
                "--ca", fixture.caPath, "--user", "gw", "--password", "Gateway-Secret-1", "--norole-user", "bob", "--norole-password", "Bob-Secret-12",
                "--context", "/menu/1.0.0", "--version", "1.0.0", "--resource", "/dishes", "--verb", "GET",
                "--valid=\(good.token)", "--consumer-key=\(good.key)", "--invalid=\(good.token)x", "--blocked=\(blocked.token)",
                "--unsubscribed=\(unsubscribed.token)", "--session-timeout", String(sessionTimeout),
            ], timeout: .seconds(240))
            let failed = result.output.split(separator: "\n").filter { $0.hasPrefix("FAIL") }
            #expect(result.status == 0 && failed.isEmpty && result.output.contains("done:"), "\(result.output)")
            #expect(result.output.split(separator: "\n").filter { $0.hasPrefix("ok ") }.count >= 20, "\(result.output)")
        }
    }
}
