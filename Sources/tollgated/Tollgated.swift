import ArgumentParser
import TollgateNode

#if canImport(Glibc)
import Glibc
#endif

@main
struct Tollgated: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tollgated",
        abstract: "The Tollgate node daemon.",
        discussion: """
            At this stage a node opens the logical databases its roles use under the \
            data directory, reports that it is ready (to systemd as well, when run \
            under it) and runs until SIGTERM or SIGINT.
            """,
        version: TollgateVersion.current
    )

    @Flag(name: .long, help: "Run every role in this one process (development).")
    var allInOne = false

    @Option(name: .long, help: "Directory holding the node's databases (it must exist).")
    var dataDir: String

    func run() throws {
        guard allInOne else {
            throw ValidationError("only --all-in-one is available at this stage; per-role nodes come with the node configuration file")
        }
        let node: Node
        do {
            node = try Node.open(roles: Role.allCases, dataDirectory: dataDir)
        } catch {
            // One line the operator (and `systemctl status`) can act on.
            var line = "tollgated: \(error)\n"
            line.withUTF8 { bytes in _ = write(STDERR_FILENO, bytes.baseAddress, bytes.count) }
            Glibc.exit(1)
        }
        node.reportReady()
        let signal = Node.waitForTerminationSignal()
        node.reportStopping(signal: signal)
    }
}
