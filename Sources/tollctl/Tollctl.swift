import ArgumentParser
import TollgateProto

/// The Tollgate admin client. It grows a subcommand per capability as the
/// roles come (api, app, sub, key, token, user, tenant, policy, block, stats,
/// cluster, certs); at this stage it reports what it can talk about.
@main
struct Tollctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tollctl",
        abstract: "Administer a Tollgate cluster.",
        version: "0.1.0",
        subcommands: [Certs.self, Methods.self]
    )
}

/// Lists the RPC methods of the protocol this client speaks.
struct Methods: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "methods",
        abstract: "List the RPC methods of every Tollgate service."
    )

    @Option(help: "Only methods whose path contains this text.")
    var filter: String?

    func run() {
        for method in ProtoRegistry.methods where filter.map(method.path.contains) ?? true {
            let kind = switch (method.clientStreaming, method.serverStreaming) {
            case (false, false): "unary"
            case (false, true): "server-streaming"
            case (true, false): "client-streaming"
            case (true, true): "bidirectional"
            }
            print("\(method.path)  (\(method.inputType) → \(method.outputType), \(kind))")
        }
    }
}
