import Foundation
import TestSupport
import Testing

/// docs/walkthrough.md, run: every command of its `sh` blocks, in order, in
/// one shell, against a development node `tools/dev-node.sh` starts (as
/// `make run` does), so the walkthrough cannot promise what does not work.
@Suite(.serialized) struct WalkthroughTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The walkthrough's `sh` blocks as one script. `make run` and `alias`
    /// lines are the test's to do; a command ending in `# fails` must fail.
    static func script(_ markdown: String) -> (script: String, commands: Int) {
        var lines: [String] = []
        var inShell = false
        for line in markdown.split(separator: "\n", omittingEmptySubsequences: false) {
            if line == "```sh" { inShell = true; continue }
            if inShell, line == "```" { inShell = false; continue }
            let command = line.trimmingCharacters(in: .whitespaces)
            guard inShell, !command.isEmpty, command != "make run", !command.hasPrefix("alias ") else { continue }
            if command.hasSuffix("# fails") {
                let body = command.dropLast("# fails".count).trimmingCharacters(in: .whitespaces)
                lines.append("if \(body); then echo 'expected to fail, but succeeded' >&2; exit 1; fi")
            } else {
                lines.append(command)
            }
        }
        return (lines.joined(separator: "\n"), lines.count)
    }

    @Test func everyCommandOfTheWalkthroughWorks() async throws {
        let markdown = try String(contentsOf: Self.repository.appendingPathComponent("docs/walkthrough.md"), encoding: .utf8)
        let (script, commands) = Self.script(markdown)
        #expect(commands >= 15, "the walkthrough's commands were found:\n\(script)")

        let base = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-walkthrough-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: base) }
        // The walkthrough runs in a checkout: .dev/ beside docs/.
        let work = base.appendingPathComponent("checkout")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(at: work.appendingPathComponent("docs"), withDestinationURL: Self.repository.appendingPathComponent("docs"))
        let environment = [
            "TOLLGATE_DEV_DIR": work.appendingPathComponent(".dev").path,
            "TOLLGATE_DEV_CLUSTER": "127.0.0.1:\(try NodeFixture.freePort())",
            "TOLLGATE_DEV_ADMIN": "127.0.0.1:\(try NodeFixture.freePort())",
            "TOLLGATE_DEV_OAUTH": "127.0.0.1:\(try NodeFixture.freePort())",
            "TOLLGATE_DEV_HTTP": "127.0.0.1:\(try NodeFixture.freePort())",
            "TOLLGATE_DEV_HTTPS": "127.0.0.1:\(try NodeFixture.freePort())",
            "XDG_CONFIG_HOME": base.appendingPathComponent("config").path,
            "XDG_STATE_HOME": base.appendingPathComponent("state").path,
        ]

        let node = Process()
        node.executableURL = Self.repository.appendingPathComponent("tools/dev-node.sh")
        node.arguments = [NodeFixture.binDirectory.path]
        var nodeEnvironment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("TOLLCTL_") }
        nodeEnvironment.removeValue(forKey: "NOTIFY_SOCKET")
        nodeEnvironment.merge(environment) { $1 }
        node.environment = nodeEnvironment
        let pipe = Pipe()
        node.standardOutput = pipe
        node.standardError = pipe
        let exited = Watched(false)
        node.terminationHandler = { _ in exited.update { $0 = true } }
        try node.run()
        let output = PipeReader(pipe)
        try await withTeardown {
            #expect(await output.contains("ready: node dev-1"), "\(output.text)")
            let readyLines = output.text.split(separator: "\n").filter { $0.contains("ready: node dev-1") }
            #expect(readyLines.count == 1, "the ready line is printed once: \(output.text)")
            let config = try String(contentsOfFile: "\(environment["XDG_CONFIG_HOME"]!)/tollgate/tollctl.toml", encoding: .utf8)
            #expect(config.contains("node = \"\(environment["TOLLGATE_DEV_ADMIN"]!)\""), "make run points tollctl at the node: \(config)")

            // A new shell: tollctl on PATH, no TOLLCTL_* exports, only the settings make run wrote.
            var shell = ["-C", work.path, "-u", "TOLLCTL_NODE", "-u", "TOLLCTL_CA", "-u", "TOLLCTL_USER", "-u", "TOLLCTL_PASSWORD", "-u", "TOLLCTL_SESSION",
                         "PATH=\(NodeFixture.binDirectory.path):/usr/bin:/bin"]
            for key in ["XDG_CONFIG_HOME", "XDG_STATE_HOME", "TOLLGATE_DEV_OAUTH", "TOLLGATE_DEV_HTTP"] { shell.append("\(key)=\(environment[key]!)") }
            shell += ["bash", "-c", "set -euxo pipefail\n" + script]
            let run = try await runTool("/usr/bin/env", shell, timeout: .seconds(120))
            #expect(run.status == 0, "the walkthrough failed (the last command shown with + is the one):\n\(run.output)")
            #expect(run.output.contains("created → published") && run.output.contains("first release"), "\(run.output)")
            // The consumer's part: a token from the OAuth endpoint, active, then revoked.
            #expect(run.output.contains("\"token_type\":\"Bearer\"") && run.output.contains("revoked the token")
                    && run.output.contains("inactive (unknown, expired or revoked)"), "\(run.output)")
            // The node's gateway shipped the call (502: no backend here) to its own analytics role.
            #expect(run.output.contains("\n502\n") && run.output.contains("APIs of bob in carbon.super")
                    && run.output.split(separator: "\n").contains { $0.hasPrefix("PizzaShack") && $0.contains("/pizzashack") && $0.contains("5xx") },
                    "\(run.output)")
            let export = try String(contentsOf: work.appendingPathComponent("pizzashack-export.json"), encoding: .utf8)
            #expect(export.contains("\"x-team\": \"kitchen\"") && export.contains("https://login.pizzashack.example.com/token"), "\(export.prefix(400))")
        } teardown: {
            if node.isRunning { node.terminate() }
            _ = try? await exited.wait(for: "the development node to stop", timeout: .seconds(60)) { $0 }
        }
    }
}
