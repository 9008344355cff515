import ArgumentParser
import Foundation
import Logging
import TollgateNode
import RoleCore

#if canImport(Glibc)
import Glibc
#endif

@main
struct Tollgated: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tollgated",
        abstract: "The Tollgate node daemon.",
        discussion: """
            Runs the roles its configuration file names (docs/configuration.md): opens \
            their databases, binds the cluster and admin listeners, reports ready (to \
            systemd too, when run under it) and serves until SIGTERM or SIGINT, then \
            lets calls in flight finish up to the drain timeout. SIGHUP reloads the file. \
            Exit status 78 means the configuration or a file it names was refused; \
            1 any other failure.
            """,
        version: TollgateVersion.current
    )

    /// Exit status when the configuration (or a file it names) is refused:
    /// EX_CONFIG from sysexits.h, so the unit's RestartPreventExitStatus=
    /// can tell "fix the file" from failures a restart may cure.
    static let configurationRefused: Int32 = 78

    @Option(name: .long, help: "The node's configuration file (TOML).")
    var config: String

    @Flag(name: .customLong("check-config"), help: "Validate the configuration and its files, then exit.")
    var checkConfig = false

    @Option(name: .customLong("reload"), help: ArgumentHelp(
        "Reload the node with this process id and wait for its answer (systemd's ExecReload=).",
        discussion: "Exits 78 when the file or the node refuses it, so `systemctl reload` fails.",
        valueName: "pid"))
    var reloadPID: Int32?

    func run() async throws {
        if !FileManager.default.fileExists(atPath: config) { fail(Self.missingFile(config), status: Self.configurationRefused) }
        let loaded: NodeConfig
        do {
            loaded = try NodeConfig.load(path: config)
            if let reloadPID {
                // The node checks the files itself: ExecReload= cannot read the
                // node's key (systemd hands credentials to ExecStart= only).
                try await reload(reloadPID)
                return
            }
            try NodeRuntime.checkStartable(loaded)
        } catch {
            fail("\(error)", status: Self.configurationRefused)
        }
        if checkConfig {
            printLine("\(config): configuration is valid (node \(loaded.nodeID), roles \(loaded.roles.map(\.rawValue).joined(separator: ", ")))")
            return
        }
        NodeLogging.bootstrap(level: loaded.logLevel, nodeID: loaded.nodeID, roles: loaded.roles)
        let logger = Logger(label: "tollgated")
        let runtime: NodeRuntime
        do {
            runtime = try await NodeRuntime.start(config: loaded, logger: logger)
        } catch {
            fail("\(error)", status: 1)
        }
        do {
            try await runtime.run()
        } catch {
            fail("\(error)", status: 1)
        }
    }

    /// SIGHUP, then the node's verdict from its runtime directory (without
    /// one, outside systemd, the signal is all).
    func reload(_ pid: Int32) async throws {
        let before = ReloadVerdict.read()?.attempt ?? 0
        guard pid > 0, kill(pid, SIGHUP) == 0 else {
            fail("cannot signal process \(pid): \(String(cString: strerror(errno)))", status: 1)
        }
        guard ReloadVerdict.path != nil else { return }
        guard let verdict = await ReloadVerdict.wait(after: before, timeout: .seconds(60)) else {
            fail("the node did not answer the reload within 60 s", status: 1)
        }
        if let refusal = verdict.refusal {
            fail("reload refused; the node keeps its running configuration: \(refusal)", status: Self.configurationRefused)
        }
    }

    /// A mistyped instance name (`tollgate@publsher`) names a file that is
    /// not there: say which ones are.
    static func missingFile(_ path: String) -> String {
        let folder = (path as NSString).deletingLastPathComponent
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: folder.isEmpty ? "." : folder)) ?? [])
            .filter { $0.hasSuffix(".toml") }.map { String($0.dropLast(5)) }.sorted()
        return "\(path): no such configuration file" + (names.isEmpty ? "" : "; \(folder.isEmpty ? "." : folder) has: \(names.joined(separator: ", "))")
    }

    /// One line per problem on stderr (and so in `systemctl status`).
    func fail(_ message: String, status: Int32) -> Never {
        for line in message.split(separator: "\n") {
            var text = "tollgated: \(line)\n"
            text.withUTF8 { bytes in _ = write(STDERR_FILENO, bytes.baseAddress, bytes.count) }
        }
        Glibc.exit(status)
    }
}
