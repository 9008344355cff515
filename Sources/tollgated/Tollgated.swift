import ArgumentParser
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
            lets calls in flight finish up to the drain timeout.
            """,
        version: TollgateVersion.current
    )

    @Option(name: .long, help: "The node's configuration file (TOML).")
    var config: String

    @Flag(name: .customLong("check-config"), help: "Validate the configuration and its files, then exit.")
    var checkConfig = false

    func run() async throws {
        let loaded: NodeConfig
        do {
            loaded = try NodeConfig.load(path: config)
        } catch {
            fail(error.description)
        }
        if checkConfig {
            let problems = loaded.checkFiles()
            guard problems.isEmpty else { fail(ConfigError(path: config, problems: problems).description) }
            printLine("\(config): configuration is valid (node \(loaded.nodeID), roles \(loaded.roles.map(\.rawValue).joined(separator: ", ")))")
            return
        }
        NodeLogging.bootstrap(level: loaded.logLevel, nodeID: loaded.nodeID, roles: loaded.roles)
        let logger = Logger(label: "tollgated")
        let runtime: NodeRuntime
        do {
            runtime = try await NodeRuntime.start(config: loaded, logger: logger)
        } catch {
            fail("\(error)")
        }
        do {
            try await runtime.run()
        } catch {
            fail("\(error)")
        }
    }

    /// One line per problem on stderr (and so in `systemctl status`), exit 1.
    func fail(_ message: String) -> Never {
        for line in message.split(separator: "\n") {
            var text = "tollgated: \(line)\n"
            text.withUTF8 { bytes in _ = write(STDERR_FILENO, bytes.baseAddress, bytes.count) }
        }
        Glibc.exit(1)
    }
}
