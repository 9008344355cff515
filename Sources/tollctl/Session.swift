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
            $XDG_STATE_HOME/tollgate (default ~/.local/state/tollgate): one default session per node, \
            and named ones beside it (--as NAME, used later with --session NAME), so you can switch \
            identities without signing in again. The password is read from the terminal without echo, \
            from standard input with --password-stdin, or from TOLLCTL_PASSWORD.
            """)

    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Who to sign in as: name or name@tenant (env TOLLCTL_USER; config `user`).") var user: String?
    @Option(name: .customLong("as"), help: "Keep this sign-in as a named session, such as publisher-bob; other commands use it with --session NAME.")
    var sessionName: String?
    @Flag(name: .customLong("password-stdin"), help: "Read the password from the first line of standard input.") var passwordStdin = false

    func validate() throws {
        if let sessionName, let other = connection.session, sessionName != other {
            throw ValidationError("--as \(sessionName) and --session \(other) name different sessions: give one of them")
        }
        if let sessionName { try checkSessionName(sessionName) }
    }

    func run() async throws {
        var options = connection
        if let sessionName { options.session = sessionName }
        try await NodeSession.with(options) { node in try await login(node) }
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
        let named = node.settings.sessionName.map { " in session \($0) (use it with --session \($0))" } ?? ""
        print("signed in to \(node.settings.node) as \(user)\(named); the session lasts until \(expires.formatted(date: .abbreviated, time: .shortened))")
    }
}

struct Logout: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "End the saved session on the node and forget it.")
    @OptionGroup var connection: ConnectionOptions

    func run() async throws {
        try await NodeSession.with(connection) { node in
            guard node.session != nil else { return print("not signed in to \(node.settings.sessionLabel)") }
            _ = try? await UserServiceClient(node.connection).logout(LogoutRequest(), options: node.callOptions)
            try? FileManager.default.removeItem(atPath: node.settings.sessionFile)
            print("signed out of \(node.settings.sessionLabel)")
        }
    }
}

struct Sessions: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the sessions saved for the node: the default one and those signed in with `tollctl login --as NAME`.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() throws {
        let settings = try ClientSettings.resolve(connection)
        let files = (try? FileManager.default.contentsOfDirectory(atPath: ClientSettings.stateDirectory)) ?? []
        let prefix = settings.sessionFilePrefix
        var rows: [[String]] = []
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        for file in files.sorted() where file == prefix || file.hasPrefix(prefix + "--") {
            guard let saved = SavedSession.load("\(ClientSettings.stateDirectory)/\(file)") else { continue }
            let name = file == prefix ? "(default)" : String(file.dropFirst(prefix.count + 2))
            let ends = saved.expiresAtUnixMs <= now ? "expired" : Date(timeIntervalSince1970: Double(saved.expiresAtUnixMs) / 1000).formatted(date: .abbreviated, time: .shortened)
            rows.append([name, saved.user, ends])
        }
        switch output {
        case .json: try printJSON(rows.map { ["session": $0[0], "user": $0[1], "ends": $0[2]] })
        case .table:
            guard !rows.isEmpty else { return print("no sessions saved for \(settings.node): sign in with `tollctl login` (or `tollctl login --as NAME`)") }
            printTable(["SESSION", "USER", "ENDS"], rows)
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
            if let name = connection.session { print("session      \(name)") }
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
        abstract: "Show the node and every peer it is configured with: role, version, uptime, ready, connected.",
        discussion: "A peer is ready while it answers and reports ready. When any peer is not, the command says which on standard error and exits with status 3.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let (status, address) = try await NodeSession.with(connection) { node in
            (try await node.run { try await NodeServiceClient(node.connection).getNodeStatus(GetNodeStatusRequest(), options: node.callOptions) },
             node.settings.node)
        }
        let roles = status.roles.map(Self.name).joined(separator: ",")
        // A peer is ready when it answers now and said it was ready; a report
        // from before it stopped answering says nothing about it any more.
        func ready(_ peer: PeerConnection) -> Bool { peer.state == .ready && peer.ready }
        func lastError(_ peer: PeerConnection) -> String { Self.oneLine(peer.lastErrorMessage) }
        let down = status.peers.filter { !ready($0) }
        switch output {
        case .json:
            try printJSON([
                "node_id": status.nodeId, "roles": status.roles.map(Self.name), "version": status.version, "hostname": status.hostname,
                "uptime_ms": status.uptimeMs, "ready": status.ready,
                "peers": status.peers.map { peer in
                    ["node_id": peer.nodeId, "role": Self.name(peer.role), "address": peer.address, "state": Self.name(peer.state),
                     "version": peer.version, "uptime_ms": peer.uptimeMs, "ready": ready(peer), "reconnects": peer.reconnectCount,
                     "last_error": lastError(peer)] as [String: Any]
                },
            ] as [String: Any])
        case .table:
            var rows = [[status.nodeId, roles, address, status.version, formatDuration(milliseconds: status.uptimeMs),
                         status.ready ? "yes" : "no", "(this node)"]]
            for peer in status.peers {
                let connected = peer.state == .ready ? "connected" : "\(Self.name(peer.state))\(peer.lastErrorMessage.isEmpty ? "" : ": \(lastError(peer))")"
                let reported = peer.reportedAtUnixMs > 0
                rows.append([peer.nodeId.isEmpty ? "?" : peer.nodeId, Self.name(peer.role), peer.address, reported ? peer.version : "-",
                             reported && peer.state == .ready ? formatDuration(milliseconds: peer.uptimeMs) : "-", ready(peer) ? "yes" : "no", connected])
            }
            printTable(["NODE", "ROLES", "ADDRESS", "VERSION", "UPTIME", "READY", "CONNECTION"], rows)
        }
        if !down.isEmpty {
            let names = down.map { $0.nodeId.isEmpty ? $0.address : $0.nodeId }.joined(separator: ", ")
            FileHandle.standardError.write(Data("\(down.count) of \(status.peers.count) peers not ready: \(names)\n".utf8))
            throw ExitCode(3)
        }
    }

    /// A peer's last error on one line, short enough for a table cell (older nodes report NIO's nested dumps).
    static func oneLine(_ message: String) -> String {
        let line = message.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        return line.count > 160 ? String(line.prefix(160)) + "…" : line
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
