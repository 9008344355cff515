import Foundation
import TestSupport
import Testing

/// `private_key = "credential:NAME"`: the key systemd's LoadCredential= hands
/// to one instance, found in $CREDENTIALS_DIRECTORY.
@Suite struct CredentialKeyTests {
    @Test func aKeyFromTheCredentialsDirectory() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("n1", roles: ["gateway"])
        let config = try fixture.writeConfig("n1", roles: ["gateway"], clusterPort: try NodeFixture.freePort(), adminPort: nil)
        let credentials = fixture.path("credentials")
        try FileManager.default.createDirectory(atPath: credentials, withIntermediateDirectories: true)
        try FileManager.default.moveItem(atPath: fixture.path("n1.key"), toPath: credentials + "/node.key")
        let text = try String(contentsOfFile: config, encoding: .utf8)
        try text.replacingOccurrences(of: "private_key = \"n1.key\"", with: "private_key = \"credential:node.key\"")
            .write(toFile: config, atomically: true, encoding: .utf8)

        try await withNodes { nodes in
            let outside = try nodes.start(config: config)
            // It exits by itself; no SIGTERM from stop() while it is still on its way out.
            #expect(await outside.waitFor("CREDENTIALS_DIRECTORY is not set"), "\(outside.output)")
            let deadline = ContinuousClock.now + .seconds(30)
            while outside.process.isRunning && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
            #expect(outside.process.terminationStatus == 78)
            #expect(outside.output.contains("tls.private_key: credential:node.key is a systemd credential, but CREDENTIALS_DIRECTORY is not set"),
                    "\(outside.output)")

            let node = try nodes.start(config: config, environment: ["CREDENTIALS_DIRECTORY": credentials])
            #expect(await node.waitFor("ready: node n1"), "\(node.output)")
            #expect(await node.stop() == 0)
        }
    }
}
