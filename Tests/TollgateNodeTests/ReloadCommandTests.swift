import Foundation
import TestSupport
import Testing

/// `tollgated --reload PID` (the unit's ExecReload=) and the exit status of
/// a refused configuration (78, which the unit does not restart).
@Suite struct ReloadCommandTests {
    func tollgated(_ arguments: [String], environment extra: [String: String] = [:]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = NodeFixture.binDirectory.appendingPathComponent("tollgated")
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(extra) { $1 }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, text)
    }

    @Test func aRefusedFileFailsTheReloadAndSignalsNothing() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("n1", roles: ["gateway"])
        let config = try fixture.writeConfig("n1", roles: ["gateway"], clusterPort: try NodeFixture.freePort(), adminPort: nil)
        let good = try String(contentsOfFile: config, encoding: .utf8)
        // As under the unit: the node and the helper share RuntimeDirectory=.
        let runtime = ["RUNTIME_DIRECTORY": fixture.directory.path]
        try await withNodes { nodes in
            let node = try nodes.start(config: config, environment: runtime)
            #expect(await node.waitFor("ready: node n1"), "\(node.output)")
            let pid = "\(node.process.processIdentifier)"

            // Not even valid: refused before the node is signalled.
            try (good + "\nmystery_key = true\n").write(toFile: config, atomically: true, encoding: .utf8)
            let refused = try tollgated(["--config", config, "--reload", pid], environment: runtime)
            #expect(refused.status == 78 && refused.output.contains("mystery_key: unknown key"), "\(refused)")
            #expect(!node.output.contains("reloading configuration"), "\(node.output)")

            // Valid, but naming a certificate that is not there: the node refuses it, and says so.
            try good.replacingOccurrences(of: "certificate = \"n1.pem\"", with: "certificate = \"gone.pem\"")
                .write(toFile: config, atomically: true, encoding: .utf8)
            let refusedByNode = try tollgated(["--config", config, "--reload", pid], environment: runtime)
            #expect(refusedByNode.status == 78 && refusedByNode.output.contains("reload refused") && refusedByNode.output.contains("gone.pem"),
                    "\(refusedByNode)")

            try good.write(toFile: config, atomically: true, encoding: .utf8)
            let accepted = try tollgated(["--config", config, "--reload", pid], environment: runtime)
            #expect(accepted.status == 0, "\(accepted)")
            #expect(await node.waitFor("configuration reloaded"), "\(node.output)")
            #expect(node.process.isRunning)
            #expect(await node.stop() == 0)
        }
    }

    @Test func aMissingFileNamesTheOnesThatExist() throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("publisher", roles: ["publisher"])
        try fixture.writeConfig("publisher", roles: ["publisher"], clusterPort: try NodeFixture.freePort(), adminPort: nil)
        let mistyped = try tollgated(["--config", fixture.path("publsher.toml")])
        #expect(mistyped.status == 78, "\(mistyped)")
        #expect(mistyped.output == "tollgated: \(fixture.path("publsher.toml")): no such configuration file; \(fixture.directory.path) has: publisher\n",
                "\(mistyped)")
    }
}
