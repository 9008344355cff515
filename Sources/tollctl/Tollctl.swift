import ArgumentParser
import Foundation
import TollgateProto
import TollgateServices

/// The Tollgate admin client: a subcommand per capability (docs/tollctl.md).
@main
struct Tollctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tollctl",
        abstract: "Administer a Tollgate cluster.",
        version: "0.1.0",
        subcommands: [Login.self, Logout.self, Sessions.self, WhoAmI.self, Ping.self, Cluster.self, UserCommand.self, RoleCommand.self, TenantCommand.self, Policy.self, Block.self, ApiCommand.self, DocumentCommand.self, SubscriptionCommand.self, SignUp.self, StoreCommand.self, ApplicationCommand.self, KeyCommand.self, TokenCommand.self, GatewayCommand.self, Certs.self, ThrottleCommand.self, StatsCommand.self, Methods.self]
    )
}

/// Lists the RPC methods of the protocol this client speaks and, from the
/// node it talks to, which roles serve each and whether that node does.
struct Methods: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "methods",
        abstract: "List the RPC methods of every Tollgate service, with the roles that serve each and whether the node serves it.",
        discussion: """
            The roles come from the node (NodeService/ListServices), which any signed-in user, cluster node or admin \
            certificate may ask. With --offline, or with no node configured, only the methods are listed.
            """
    )

    @OptionGroup var connection: ConnectionOptions

    @Option(help: "Only methods whose path contains this text.")
    var filter: String?

    @Flag(help: "Do not ask a node: list the methods only.")
    var offline = false

    func run() async throws {
        let methods = ProtoRegistry.methods.filter { filter.map($0.path.contains) ?? true }
        var placement: ListServicesResponse?
        if !offline {
            do {
                _ = try ClientSettings.resolve(connection)
                placement = try await NodeSession.with(connection) { node in
                    try await node.run { try await NodeServiceClient(node.connection).listServices(ListServicesRequest(), options: node.callOptions) }
                }
            } catch let failure as CommandFailure where failure.description.hasPrefix("no node to talk to") {
                FileHandle.standardError.write(Data("\(failure.description)\nlisting the methods only, without the roles that serve them\n".utf8))
            }
        }
        if let placement {
            print("node roles: \(placement.nodeRoles.map(ClusterStatus.name).joined(separator: ", "))")
        }
        let services = Dictionary((placement?.services ?? []).map { ($0.service, $0) }, uniquingKeysWith: { first, _ in first })
        for method in methods {
            let kind = switch (method.clientStreaming, method.serverStreaming) {
            case (false, false): "unary"
            case (false, true): "server-streaming"
            case (true, false): "client-streaming"
            case (true, true): "bidirectional"
            }
            var line = "\(method.path)  (\(method.inputType) → \(method.outputType), \(kind))"
            if placement != nil {
                let service = services[method.service]
                let roles = service?.roles.map(ClusterStatus.name) ?? []
                let servedBy = roles.isEmpty ? "no role yet" : roles.joined(separator: ",")
                line += "  served by: \(servedBy)  \(service?.servedHere == true ? "here" : "not here")"
            }
            print(line)
        }
    }
}
