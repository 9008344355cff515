import Foundation
import TestSupport
import Testing

/// Stock OAuth clients nobody here wrote, against the keymanager's HTTPS
/// authorization server in a real process: requests-oauthlib, authlib and
/// PyJWT (Tests/Interop/oauth_peer.py), curl for the raw RFC shapes, and a
/// headless Chromium driven by selenium through the sign-in and consent
/// page (Tests/Interop/browser_peer.py). Each peer prints a line per check;
/// any failed check fails this test.
@Suite(.serialized) struct OAuthInteropTests {
    static var python: String { ProcessInfo.processInfo.environment["TOLLGATE_PYTHON"] ?? "/usr/bin/python3" }
    static var interop: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Interop").path
    }

    static func json(_ text: String) -> [String: Any] {
        guard let start = text.firstIndex(of: "{") else { return [:] }
        return (try? JSONSerialization.jsonObject(with: Data(text[start...].utf8))) as? [String: Any] ?? [:]
    }

    /// Runs a peer script and expects it to report every check passed.
    static func peer(_ script: String, _ arguments: [String], sourceLocation: SourceLocation = #_sourceLocation) async throws -> String {
        let result = try await runTool(python, [interop + "/" + script] + arguments, timeout: .seconds(240))
        let failed = result.output.split(separator: "\n").filter { $0.hasPrefix("FAIL") }
        #expect(result.status == 0 && failed.isEmpty && result.output.contains("done:"),
                "\(script) \(arguments.first(where: { !$0.hasPrefix("-") }) ?? ""): \(failed.isEmpty ? result.output : failed.joined(separator: "\n"))",
                sourceLocation: sourceLocation)
        return result.output
    }

    @Test func stockClientsAndARealBrowserAgainstTheAuthorizationServer() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("cp-1", roles: ["publisher", "store", "keymanager"])
        let (cluster, admin, oauth, callbackPort) = (try NodeFixture.freePort(), try NodeFixture.freePort(), try NodeFixture.freePort(), try NodeFixture.freePort())
        let config = try fixture.writeConfig("cp-1", roles: ["publisher", "store", "keymanager"], clusterPort: cluster, adminPort: admin,
                                             extra: "\n[store]\nself_signup_tenants = \"*\"\n")
        // The oauth listener goes in the [listen] table writeConfig wrote.
        var text = try String(contentsOfFile: config, encoding: .utf8)
        text = text.replacingOccurrences(of: "admin = \"127.0.0.1:\(admin)\"\n", with: "admin = \"127.0.0.1:\(admin)\"\noauth = \"127.0.0.1:\(oauth)\"\n")
        try text.write(toFile: config, atomically: true, encoding: .utf8)

        try await withNodes { nodes in
            let node = try nodes.start(config: config)
            #expect(await node.waitFor("ready: node cp-1"), "\(node.output)")
            var environment = ["TOLLCTL_NODE": "127.0.0.1:\(admin)", "TOLLCTL_CA": fixture.caPath, "XDG_STATE_HOME": fixture.path("state-admin"),
                               "XDG_CONFIG_HOME": fixture.path("config")]
            func tollctl(_ arguments: String..., input: String? = nil) throws -> (status: Int32, output: String) {
                try tollctl(arguments, input: input)
            }
            func tollctl(_ arguments: [String], input: String? = nil) throws -> (status: Int32, output: String) {
                let result = try runTollctl(arguments, environment: environment, input: input)
                #expect(result.status == 0, "tollctl \(arguments.joined(separator: " ")): \(result.output)")
                return result
            }
            _ = try tollctl("login", "--user", "admin", "--password-stdin", input: fixture.adminPassword + "\n")
            let api = Self.json(try tollctl("api", "create", "--name", "Menu", "--api-version", "1", "--context", "/menu", "--resource", "GET /dishes",
                                            "--endpoint", "https://backend.example.com", "--tier", "Gold", "--output", "json").output)
            let apiID = try #require(api["id"] as? String)
            _ = try tollctl("api", "lifecycle", apiID, "published")
            _ = try tollctl("signup", "--user", "alice", "--password-stdin", input: "Alice-Secret-1\n")
            environment["XDG_STATE_HOME"] = fixture.path("state-alice")
            _ = try tollctl("login", "--user", "alice", "--password-stdin", input: "Alice-Secret-1\n")

            let callback = "http://127.0.0.1:\(callbackPort)/cb"
            func application(_ name: String, _ extra: String...) throws -> (id: String, key: String, secret: String) {
                let app = Self.json(try tollctl(["app", "create", "--name", name, "--output", "json"] + extra).output)
                let id = try #require(app["id"] as? String)
                _ = try tollctl("sub", "create", "--app", id, "--api", apiID, "--tier", "Gold")
                let keys = Self.json(try tollctl("key", "generate", id, "--output", "json").output)
                return (id, try #require(keys["consumer_key"] as? String), try #require(keys["consumer_secret"] as? String))
            }
            let web = try application("web", "--callback", callback)
            let signed = try application("signed", "--token-type", "jwt")
            let other = try application("other")

            let base = ["--base", "https://127.0.0.1:\(oauth)", "--ca", fixture.caPath]
            // `--flag=value`: a base64url key or secret may begin with "-", which a parser would take for an option.
            let webClient = base + ["--client-id=\(web.key)", "--client-secret=\(web.secret)", "--username", "alice", "--password", "Alice-Secret-1"]
            _ = try await Self.peer("oauth_peer.py", webClient + ["oauthlib"])
            _ = try await Self.peer("oauth_peer.py", webClient + ["authlib", "--redirect-uri", callback])
            _ = try await Self.peer("oauth_peer.py", webClient + ["raw", "--other-client-id=\(other.key)", "--other-client-secret=\(other.secret)"])
            _ = try await Self.peer("browser_peer.py", ["run"] + webClient + ["--redirect-uri", callback])

            // JWTs verify with the published key set, and stop verifying once their key is retired.
            let signedClient = base + ["--client-id=\(signed.key)", "--client-secret=\(signed.secret)"]
            let token = Self.json(try tollctl("token", "issue", signed.id, "--output", "json").output)["access_token"] as? String ?? ""
            _ = try await Self.peer("oauth_peer.py", signedClient + ["jwt", "--token=\(token)"])
            environment["XDG_STATE_HOME"] = fixture.path("state-admin")
            _ = try tollctl("token", "rotate-signing-key")
            _ = try await Self.peer("oauth_peer.py", signedClient + ["jwt", "--token=\(token)"])
            _ = try tollctl("token", "rotate-signing-key", "--retire-previous")
            _ = try await Self.peer("oauth_peer.py", signedClient + ["jwt", "--expect", "invalid", "--token=\(token)"])
        }
    }
}
