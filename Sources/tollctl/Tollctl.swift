import ArgumentParser
import TollgateProto

/// The Tollgate admin client: a subcommand per capability (docs/tollctl.md).
@main
struct Tollctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tollctl",
        abstract: "Administer a Tollgate cluster.",
        version: "0.1.0",
        subcommands: [Login.self, Logout.self, Sessions.self, WhoAmI.self, Ping.self, Cluster.self, UserCommand.self, RoleCommand.self, TenantCommand.self, Policy.self, Block.self, ApiCommand.self, DocumentCommand.self, SubscriptionCommand.self, SignUp.self, StoreCommand.self, ApplicationCommand.self, KeyCommand.self, TokenCommand.self, Certs.self, ThrottleCommand.self, Methods.self]
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
