import ArgumentParser
import Foundation
import RPCCore
import TollgateProto
import TollgateServices

struct Login: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Sign in to a node and keep the session for later commands.",
        discussion: """
            The session token is saved, readable only by you, under \
            $XDG_STATE_HOME/tollgate (default ~/.local/state/tollgate), one per node. \
            The password is read from the terminal without echo, from standard input \
            with --password-stdin, or from TOLLCTL_PASSWORD.
            """)

    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Who to sign in as: name or name@tenant (env TOLLCTL_USER; config `user`).") var user: String?
    @Flag(name: .customLong("password-stdin"), help: "Read the password from the first line of standard input.") var passwordStdin = false

    func run() async throws {
        try await NodeSession.with(connection) { node in try await login(node) }
    }

    func login(_ node: NodeSession) async throws {
        guard let username = user ?? node.settings.user else {
            throw CommandFailure("who are you? pass --user NAME (or NAME@TENANT), set TOLLCTL_USER, or put user = \"NAME\" in the config file")
        }
        let password: String
        if passwordStdin {
            password = readLine(strippingNewline: true) ?? ""
        } else if let fromEnvironment = ProcessInfo.processInfo.environment["TOLLCTL_PASSWORD"] {
            password = fromEnvironment
        } else {
            password = try readPassword(prompt: "Password for \(username): ")
        }
        var options = node.callOptions
        options.metadata = Metadata()
        if let tenant = node.settings.tenant { options.metadata.add("x-tenant", tenant) }
        let response = try await node.run(signingIn: true) {
            try await UserServiceClient(node.connection).login(LoginRequest(username: username, password: password), options: options)
        }
        let user = response.user.map { "\($0.username)@\($0.tenantDomain)" } ?? username
        try SavedSession(token: response.sessionToken, user: user, expiresAtUnixMs: response.expiresAtUnixMs).save(node.settings.sessionFile)
        let expires = Date(timeIntervalSince1970: Double(response.expiresAtUnixMs) / 1000)
        print("signed in to \(node.settings.node) as \(user); the session lasts until \(expires.formatted(date: .abbreviated, time: .shortened))")
    }
}

struct Logout: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "End the saved session on the node and forget it.")
    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        try await NodeSession.with(connection) { node in
            guard node.session != nil else { return print("not signed in to \(node.settings.node)") }
            _ = try? await UserServiceClient(node.connection).logout(LogoutRequest(), options: node.callOptions)
            try? FileManager.default.removeItem(atPath: node.settings.sessionFile)
            print("signed out of \(node.settings.node)")
        }
    }
}

struct WhoAmI: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "whoami", abstract: "Show who the saved session (or certificate) signs you in as.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let me = try await NodeSession.with(connection) { node in
            try await node.run { try await UserServiceClient(node.connection).whoAmI(WhoAmIRequest(), options: node.callOptions) }
        }
        let user = me.user ?? User()
        switch output {
        case .json:
            try printJSON(["username": user.username, "tenant": user.tenantDomain, "email": user.email, "roles": user.roles,
                           "permissions": me.permissions, "session_expires_at_unix_ms": me.sessionExpiresAtUnixMs])
        case .table:
            print("user         \(user.username)@\(user.tenantDomain)")
            if !user.email.isEmpty { print("email        \(user.email)") }
            print("roles        \(user.roles.joined(separator: ", "))")
            print("permissions  \(me.permissions.joined(separator: ", "))")
            if me.sessionExpiresAtUnixMs > 0 {
                print("session ends \(Date(timeIntervalSince1970: Double(me.sessionExpiresAtUnixMs) / 1000).formatted(date: .abbreviated, time: .shortened))")
            }
        }
    }
}

struct Ping: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check that a node answers, and how fast.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "How many pings.") var count = 3

    func run() async throws {
        let times = try await NodeSession.with(connection) { node in
            let client = NodeServiceClient(node.connection)
            var times: [Double] = []
            for index in 0..<max(1, count) {
                let start = ContinuousClock.now
                let response = try await node.run { try await client.ping(PingRequest(payload: Array("tollctl".utf8)), options: node.callOptions) }
                let elapsed = ContinuousClock.now - start
                let ms = Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15
                times.append(ms)
                print("reply from \(response.nodeId) at \(node.settings.node): seq=\(index + 1) time=\(String(format: "%.2f", ms)) ms")
            }
            return times
        }
        print("\(times.count) replies, min/avg/max = \(String(format: "%.2f/%.2f/%.2f", times.min()!, times.reduce(0, +) / Double(times.count), times.max()!)) ms")
    }
}

struct Cluster: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Inspect the cluster.", subcommands: [ClusterStatus.self])
}

struct ClusterStatus: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the node and every peer it is configured with: role, version, uptime, ready, connected.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let (status, address) = try await NodeSession.with(connection) { node in
            (try await node.run { try await NodeServiceClient(node.connection).getNodeStatus(GetNodeStatusRequest(), options: node.callOptions) },
             node.settings.node)
        }
        let roles = status.roles.map(Self.name).joined(separator: ",")
        switch output {
        case .json:
            try printJSON([
                "node_id": status.nodeId, "roles": status.roles.map(Self.name), "version": status.version, "hostname": status.hostname,
                "uptime_ms": status.uptimeMs, "ready": status.ready,
                "peers": status.peers.map { peer in
                    ["node_id": peer.nodeId, "role": Self.name(peer.role), "address": peer.address, "state": Self.name(peer.state),
                     "version": peer.version, "uptime_ms": peer.uptimeMs, "ready": peer.ready, "reconnects": peer.reconnectCount,
                     "last_error": peer.lastErrorMessage] as [String: Any]
                },
            ] as [String: Any])
        case .table:
            var rows = [[status.nodeId, roles, address, status.version, formatDuration(milliseconds: status.uptimeMs),
                         status.ready ? "yes" : "no", "(this node)"]]
            for peer in status.peers {
                let connected = peer.state == .ready ? "connected" : "\(Self.name(peer.state))\(peer.lastErrorMessage.isEmpty ? "" : ": \(peer.lastErrorMessage)")"
                let reported = peer.reportedAtUnixMs > 0
                rows.append([peer.nodeId.isEmpty ? "?" : peer.nodeId, Self.name(peer.role), peer.address, reported ? peer.version : "-",
                             reported ? formatDuration(milliseconds: peer.uptimeMs) : "-", reported ? (peer.ready ? "yes" : "no") : "-", connected])
            }
            printTable(["NODE", "ROLES", "ADDRESS", "VERSION", "UPTIME", "READY", "CONNECTION"], rows)
        }
    }

    static func name(_ role: NodeRole) -> String {
        switch role {
        case .publisher: "publisher"
        case .store: "store"
        case .keyManager: "keymanager"
        case .gateway: "gateway"
        case .trafficManager: "trafficmanager"
        case .analytics: "analytics"
        case .unspecified, .unrecognized: "?"
        }
    }

    static func name(_ state: PeerState) -> String {
        switch state {
        case .connecting: "connecting"
        case .ready: "ready"
        case .backoff: "retrying"
        case .closed: "closed"
        case .unspecified, .unrecognized: "?"
        }
    }
}
