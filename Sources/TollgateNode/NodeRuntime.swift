import Foundation
public import NIOCore
import NIOConcurrencyHelpers
public import NIOPosix
import OpenSSLKit
import RPCCore
public import RPCNIO
import TollgateProto
import TollgateServices
import TollgateStorage
public import TollgateUsers

/// A node that serves: databases open, listeners bound, peers watched.
public final class NodeRuntime: Sendable {
    public let config: NodeConfig
    public let node: Node
    public let group: MultiThreadedEventLoopGroup
    public let directory: UserDirectory?
    let servers: [(name: String, server: RPCServer, address: SocketAddress)]
    public let peers: [PeerLink]
    let startedAtUnixMs: Int64
    let started = ContinuousClock.now
    private let monitor: Task<Void, Never>

    /// The bound addresses (cluster first, then admin), for tests and status.
    public var boundAddresses: [String: SocketAddress] {
        Dictionary(uniqueKeysWithValues: servers.map { ($0.name, $0.address) })
    }

    /// Opens the databases, prepares users, binds every listener and starts
    /// watching peers. Fails with a message naming what is wrong.
    public static func start(config: NodeConfig, threads: Int = System.coreCount) async throws -> NodeRuntime {
        let problems = config.checkFiles()
        guard problems.isEmpty else { throw ConfigError(path: config.path, problems: problems) }
        try checkCertificate(config)

        let node = try Node.open(roles: config.roles, dataDirectory: config.dataDirectory)
        var directory: UserDirectory?
        if let userdb = node.databases.userdb {
            var policy = UserPolicy()
            policy.sessionLifetimeMs = Int64(config.sessionLifetimeMinutes) * 60_000
            policy.maxFailedLogins = UInt32(config.maxFailedLogins)
            policy.lockoutMs = Int64(config.lockoutMinutes) * 60_000
            let users = UserDirectory(database: userdb, policy: policy)
            var admin: (String, String)?
            if let name = config.bootstrapAdmin, let file = config.bootstrapPasswordFile {
                let password = try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .newlines)
                admin = (name, password)
            }
            do {
                try users.bootstrap(admin: admin)
            } catch let error as RPCError {
                throw NodeStartError("users.bootstrap_admin: \(error.message)")
            }
            directory = users
        }

        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, threads))
        var limits = RPCLimits(maxFrameSize: config.maxFrameSize, maxConcurrentStreams: config.maxConcurrentStreams)
        limits.maxConnections = config.maxConnections
        limits.idleTimeout = .seconds(Int64(config.idleTimeoutSeconds))

        let clientTLS = try TLSContext(configuration: .client(trustRootsFile: config.caPath, certificateChainFile: config.certificatePath,
                                                              privateKeyFile: config.privateKeyPath, applicationProtocols: [RPCServer.alpn]))
        let peers = config.peers.sorted { $0.key.rawValue < $1.key.rawValue }.flatMap { role, endpoints in
            endpoints.map { endpoint in
                PeerLink(role: role, endpoint: endpoint,
                         channel: RPCChannel(host: endpoint.host, port: endpoint.port, serverHostname: endpoint.host, tls: clientTLS, limits: limits, group: group))
            }
        }

        let startedAtUnixMs = Int64(Date().timeIntervalSince1970 * 1000)
        let status = NodeStatusService(config: config, startedAtUnixMs: startedAtUnixMs, peers: peers)
        var methods = status.methodHandlers.map { handler in
            // Ping and status never block: they answer on the connection's loop.
            handler.placed(.eventLoop)
        }
        if let directory { methods += UserService(directory: directory).methodHandlers }
        let access = AccessController(rules: AccessTable.rulesByPath, sessions: directory)
        let authorize: @Sendable (ServerCallContext) throws(RPCError) -> Caller = { (context) throws(RPCError) -> Caller in
            try access.authorize(context)
        }

        var servers: [(String, RPCServer, SocketAddress)] = []
        do {
            let clusterTLS = try TLSContext(configuration: .server(certificateChainFile: config.certificatePath, privateKeyFile: config.privateKeyPath,
                                                                   trustRootsFile: config.caPath, verification: .peerRequired,
                                                                   applicationProtocols: [RPCServer.alpn]))
            let cluster = RPCServer(methods: methods, tls: clusterTLS, limits: limits, authorize: authorize)
            servers.append(("cluster", cluster, try await bind(cluster, config.clusterListen, key: "listen.cluster", group: group)))
            if let adminListen = config.adminListen {
                let adminTLS = try TLSContext(configuration: .server(certificateChainFile: config.certificatePath, privateKeyFile: config.privateKeyPath,
                                                                     trustRootsFile: config.caPath, verification: .peer,
                                                                     applicationProtocols: [RPCServer.alpn]))
                let admin = RPCServer(methods: methods, tls: adminTLS, limits: limits, authorize: authorize)
                servers.append(("admin", admin, try await bind(admin, adminListen, key: "listen.admin", group: group)))
            }
        } catch {
            for (_, server, _) in servers { await server.shutdown(drainTimeout: .zero) }
            try? await group.shutdownGracefully()
            throw error
        }
        return NodeRuntime(config: config, node: node, group: group, directory: directory, servers: servers, peers: peers,
                           startedAtUnixMs: startedAtUnixMs)
    }

    private init(config: NodeConfig, node: Node, group: MultiThreadedEventLoopGroup, directory: UserDirectory?,
                 servers: [(String, RPCServer, SocketAddress)], peers: [PeerLink], startedAtUnixMs: Int64) {
        self.config = config
        self.node = node
        self.group = group
        self.directory = directory
        self.servers = servers.map { (name: $0.0, server: $0.1, address: $0.2) }
        self.peers = peers
        self.startedAtUnixMs = startedAtUnixMs
        // Keep peer connections warm and their status current.
        monitor = Task {
            while !Task.isCancelled {
                await withTaskGroup(of: Void.self) { tasks in
                    for peer in peers { tasks.addTask { await peer.probe() } }
                }
                try? await Task.sleep(for: .seconds(5))
            }
        }
    }

    private static func bind(_ server: RPCServer, _ endpoint: Endpoint, key: String, group: any EventLoopGroup) async throws -> SocketAddress {
        do {
            return try await server.bind(host: endpoint.host, port: endpoint.port, group: group)
        } catch {
            let text = "\(error)"
            let reason = text.contains("Address already in use") ? "address already in use"
                : text.contains("Cannot assign requested address") ? "no such local address" : text
            throw NodeStartError("\(key): cannot listen on \(endpoint): \(reason)")
        }
    }

    /// The node certificate must name this node and its roles, or peers would refuse it.
    static func checkCertificate(_ config: NodeConfig) throws {
        let certificates: [Certificate]
        do {
            certificates = try Certificate.load(pemFile: config.certificatePath)
        } catch {
            throw NodeStartError("tls.certificate: \(config.certificatePath) holds no usable certificate: \(error)")
        }
        guard let leaf = certificates.first else { throw NodeStartError("tls.certificate: \(config.certificatePath) holds no certificate") }
        guard let identity = PeerIdentity(certificateURIs: leaf.uniformResourceIdentifiers), case .node(let id, let roles) = identity else {
            throw NodeStartError("tls.certificate: \(config.certificatePath) is not a Tollgate node certificate (issue one with `tollctl certs issue-node`)")
        }
        guard id == config.nodeID else {
            throw NodeStartError("tls.certificate: the certificate is for node \(id), but node_id is \(config.nodeID)")
        }
        let missing = config.roles.map(\.rawValue).filter { !roles.contains($0) }
        guard missing.isEmpty else {
            throw NodeStartError("tls.certificate: the certificate does not carry role(s) \(missing.joined(separator: ", ")) that this node runs")
        }
        if let failure = try Certificate.verificationFailure(pemFile: config.certificatePath, trustRootsFile: config.caPath) {
            throw NodeStartError("tls.certificate: does not verify against tls.ca: \(failure)")
        }
    }

    /// One line for systemd's STATUS= and the log.
    public var statusLine: String {
        let listening = servers.map { "\($0.name) \($0.address.ipAddress ?? "?"):\($0.address.port ?? 0)" }.joined(separator: ", ")
        return "ready: node \(config.nodeID), roles \(config.roles.map(\.rawValue).joined(separator: ",")); listening \(listening)"
    }

    /// Stops accepting, lets calls finish up to the drain timeout, closes peers.
    public func shutdown() async {
        monitor.cancel()
        await withTaskGroup(of: Void.self) { tasks in
            for entry in servers {
                let server = entry.server, drain = Duration.seconds(config.drainTimeoutSeconds)
                tasks.addTask { await server.shutdown(drainTimeout: drain) }
            }
        }
        for peer in peers { await peer.channel.close() }
        try? await group.shutdownGracefully()
    }
}

/// Why a node could not start: one line for the operator.
public struct NodeStartError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A connection this node keeps to another node.
public final class PeerLink: Sendable {
    public let role: Role
    public let endpoint: Endpoint
    public let channel: RPCChannel
    /// The peer's own last status report, and when it came.
    private let lastReport = NIOLockedValueBox<(status: GetNodeStatusResponse, atUnixMs: Int64)?>(nil)

    init(role: Role, endpoint: Endpoint, channel: RPCChannel) {
        self.role = role
        self.endpoint = endpoint
        self.channel = channel
    }

    /// Asks the peer for its status, which also (re)connects it. Failures
    /// show in the channel's status.
    func probe() async {
        guard let status = try? await NodeServiceClient(channel).getNodeStatus(GetNodeStatusRequest(), options: CallOptions(timeout: .seconds(3))) else {
            return
        }
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        lastReport.withLockedValue { $0 = (status, now) }
    }

    var report: (status: GetNodeStatusResponse, atUnixMs: Int64)? { lastReport.withLockedValue { $0 } }
}
