import Foundation
public import Logging
import NIOConcurrencyHelpers
public import NIOCore
public import NIOPosix
import OpenSSLKit
import RPCCore
public import RPCNIO
import ServiceLifecycle
import SystemdKit
import TollgatePolicies
import TollgatePublisher
import TollgateProto
import TollgateServices
import TollgateStorage
public import TollgateUsers
import UnixSignals

/// A node that serves: databases open, listeners bound, peers watched. Its
/// steady state runs as a service group (swift-service-lifecycle): peers,
/// metrics, listeners, then systemd; graceful shutdown goes in reverse.
public final class NodeRuntime: Sendable {
    public let node: Node
    public let group: MultiThreadedEventLoopGroup
    public let directory: UserDirectory?
    public let metrics: NodeMetrics
    let servers: [(name: String, server: RPCServer, address: SocketAddress)]
    let metricsServer: MetricsServer?
    private let state: NIOLockedValueBox<(config: NodeConfig, peers: [PeerLink], reloads: Int)>
    let logger: Logger

    public var currentConfig: NodeConfig { state.withLockedValue { $0.config } }
    public var peers: [PeerLink] { state.withLockedValue { $0.peers } }

    /// The bound addresses by listener name (cluster, admin, metrics).
    public var boundAddresses: [String: SocketAddress] {
        var addresses = Dictionary(uniqueKeysWithValues: servers.map { ($0.name, $0.address) })
        if let address = metricsServer?.address { addresses["metrics"] = address }
        return addresses
    }

    /// Opens the databases, prepares users, binds every listener (or takes
    /// them from systemd's socket activation) and creates the peer links.
    /// Fails with a message naming what is wrong.
    public static func start(config: NodeConfig, logger: Logger, threads: Int = System.coreCount) async throws -> NodeRuntime {
        let problems = config.checkFiles()
        guard problems.isEmpty else { throw ConfigError(path: config.path, problems: problems) }
        try checkCertificate(config)

        let node = try Node.open(roles: config.roles, dataDirectory: config.dataDirectory)
        var directory: UserDirectory?
        if let userdb = node.databases.userdb {
            let users = UserDirectory(database: userdb, policy: userPolicy(config))
            var admin: (String, String)?
            if let name = config.bootstrapAdmin, let file = config.bootstrapPasswordFile {
                let password = try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .newlines)
                admin = (name, password)
            }
            do {
                switch try users.bootstrap(admin: admin) {
                case .createdAdmin(let name): logger.notice("created the first administrator", metadata: ["user": "\(name)"])
                case .noAdmin: logger.warning("no administrator exists and users.bootstrap_admin is not set: nobody can sign in")
                case .adminExists: break
                }
            } catch let error as RPCError {
                throw NodeStartError("users.bootstrap_admin: \(error.message)")
            }
            directory = users
        }

        let metrics = NodeMetrics(version: TollgateVersion.current, nodeID: config.nodeID, roles: config.roles,
                                  dataDirectory: config.dataDirectory, databases: node.databases.opened)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, threads))
        let limits = rpcLimits(config)
        let peers = try makePeers(config, limits: limits, group: group)

        let startedAtUnixMs = Int64(Date().timeIntervalSince1970 * 1000)
        let peerBox = NIOLockedValueBox(peers)
        let status = NodeStatusService(config: config, startedAtUnixMs: startedAtUnixMs, peers: { peerBox.withLockedValue { $0 } })
        // Ping and status never block: they answer on the connection's loop.
        var methods = status.methodHandlers.map { $0.placed(.eventLoop) }
        if let directory { methods += UserService(directory: directory).methodHandlers }
        if let apimgtdb = node.databases.apimgtdb {
            // One log per process, shared by its writers, so watchers wake on every commit.
            let deploymentLog = DeploymentLog(database: apimgtdb)
            let policies = PolicyStore(database: apimgtdb, deploymentLog: deploymentLog)
            do {
                try policies.installDefaults(tenant: superTenant)
            } catch {
                throw NodeStartError("apimgtdb: cannot install the default throttling policies: \(error.message)")
            }
            methods += AdminService(store: policies).methodHandlers
            if config.roles.contains(.publisher), let regdb = node.databases.regdb {
                methods += PublisherService(store: PublisherStore(registry: regdb, policies: policies)).methodHandlers
            }
        }
        let access = AccessController(rules: AccessTable.rulesByPath, sessions: directory)
        let authorize: @Sendable (ServerCallContext) throws(RPCError) -> Caller = { (context) throws(RPCError) -> Caller in
            try access.authorize(context)
        }
        let observer = CallLogger(metrics: metrics, logger: logger)

        let activated = Dictionary(ServiceNotifier.listenedSockets().map { ($0.name, $0.descriptor) }, uniquingKeysWith: { first, _ in first })
        var servers: [(String, RPCServer, SocketAddress)] = []
        var metricsServer: MetricsServer?
        do {
            let (clusterTLS, adminTLS) = try serverTLS(config)
            let cluster = RPCServer(methods: methods, tls: clusterTLS, limits: limits, observer: observer, authorize: authorize)
            servers.append(("cluster", cluster, try await bind(cluster, config.clusterListen, key: "listen.cluster", socket: activated["cluster"], group: group)))
            if let adminListen = config.adminListen {
                let admin = RPCServer(methods: methods, tls: adminTLS, limits: limits, observer: observer, authorize: authorize)
                servers.append(("admin", admin, try await bind(admin, adminListen, key: "listen.admin", socket: activated["admin"], group: group)))
            }
            if let endpoint = config.metricsListen {
                do {
                    metricsServer = try await MetricsServer.start(host: endpoint.host, port: endpoint.port, group: group) {
                        metrics.render(peers: peerBox.withLockedValue { $0 })
                    }
                } catch {
                    throw NodeStartError("listen.metrics: cannot listen on \(endpoint): \(describeBindError(error))")
                }
            }
        } catch {
            for (_, server, _) in servers { await server.shutdown(drainTimeout: .zero) }
            await metricsServer?.close()
            try? await group.shutdownGracefully()
            throw error
        }
        return NodeRuntime(config: config, node: node, group: group, directory: directory, metrics: metrics, servers: servers,
                           metricsServer: metricsServer, peers: peerBox, logger: logger)
    }

    private let peerBox: NIOLockedValueBox<[PeerLink]>

    private init(config: NodeConfig, node: Node, group: MultiThreadedEventLoopGroup, directory: UserDirectory?, metrics: NodeMetrics,
                 servers: [(String, RPCServer, SocketAddress)], metricsServer: MetricsServer?, peers: NIOLockedValueBox<[PeerLink]>, logger: Logger) {
        self.node = node
        self.group = group
        self.directory = directory
        self.metrics = metrics
        self.servers = servers.map { (name: $0.0, server: $0.1, address: $0.2) }
        self.metricsServer = metricsServer
        self.peerBox = peers
        self.state = NIOLockedValueBox((config, peers.withLockedValue { $0 }, 0))
        self.logger = logger
    }

    static func userPolicy(_ config: NodeConfig) -> UserPolicy {
        var policy = UserPolicy()
        policy.sessionLifetimeMs = Int64(config.sessionLifetimeMinutes) * 60_000
        policy.maxFailedLogins = UInt32(config.maxFailedLogins)
        policy.lockoutMs = Int64(config.lockoutMinutes) * 60_000
        return policy
    }

    static func rpcLimits(_ config: NodeConfig) -> RPCLimits {
        var limits = RPCLimits(maxFrameSize: config.maxFrameSize, maxConcurrentStreams: config.maxConcurrentStreams)
        limits.maxConnections = config.maxConnections
        limits.idleTimeout = .seconds(Int64(config.idleTimeoutSeconds))
        return limits
    }

    static func clientTLS(_ config: NodeConfig) throws -> TLSContext {
        try TLSContext(configuration: .client(trustRootsFile: config.caPath, certificateChainFile: config.certificatePath,
                                              privateKeyFile: config.privateKeyPath, applicationProtocols: [RPCServer.alpn]))
    }

    /// The cluster listener requires a certificate from the CA; the admin
    /// listener verifies one if presented.
    static func serverTLS(_ config: NodeConfig) throws -> (cluster: TLSContext, admin: TLSContext) {
        let cluster = try TLSContext(configuration: .server(certificateChainFile: config.certificatePath, privateKeyFile: config.privateKeyPath,
                                                            trustRootsFile: config.caPath, verification: .peerRequired, applicationProtocols: [RPCServer.alpn]))
        let admin = try TLSContext(configuration: .server(certificateChainFile: config.certificatePath, privateKeyFile: config.privateKeyPath,
                                                          trustRootsFile: config.caPath, verification: .peer, applicationProtocols: [RPCServer.alpn]))
        return (cluster, admin)
    }

    static func makePeers(_ config: NodeConfig, limits: RPCLimits, group: any EventLoopGroup) throws -> [PeerLink] {
        let tls = try clientTLS(config)
        return config.peers.sorted { $0.key.rawValue < $1.key.rawValue }.flatMap { role, endpoints in
            endpoints.map { endpoint in
                PeerLink(role: role, endpoint: endpoint,
                         channel: RPCChannel(host: endpoint.host, port: endpoint.port, serverHostname: endpoint.host, tls: tls, limits: limits, group: group))
            }
        }
    }

    private static func bind(_ server: RPCServer, _ endpoint: Endpoint, key: String, socket: Int32?, group: any EventLoopGroup) async throws -> SocketAddress {
        do {
            if let socket { return try await server.bind(listeningSocket: socket, group: group) }
            return try await server.bind(host: endpoint.host, port: endpoint.port, group: group)
        } catch {
            throw NodeStartError("\(key): cannot listen on \(endpoint): \(describeBindError(error))")
        }
    }

    static func describeBindError(_ error: any Error) -> String {
        let text = "\(error)"
        if text.contains("Address already in use") { return "address already in use" }
        if text.contains("Cannot assign requested address") { return "no such local address" }
        if text.contains("Permission denied") { return "permission denied (ports below 1024 need privileges)" }
        return text
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

    // MARK: Running

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully.
    public func run() async throws {
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: PeerMonitorService(runtime: self), serviceName: "peers"),
        ]
        if let metricsServer { services.append(.init(service: MetricsService(server: metricsServer), serviceName: "metrics")) }
        services.append(.init(service: ListenersService(runtime: self), serviceName: "listeners"))
        services.append(.init(service: SystemdService(runtime: self, logger: logger), serviceName: "systemd"))
        var configuration = ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        // Past the drain period plus slack, remaining work is cancelled.
        configuration.maximumGracefulShutdownDuration = .seconds(currentConfig.drainTimeoutSeconds + 10)
        try await ServiceGroup(configuration: configuration).run()
        try? await group.shutdownGracefully()
    }

    /// One line for systemd's STATUS= and the log.
    public var statusLine: String {
        let config = currentConfig
        let listening = servers.map { "\($0.name) \($0.address.ipAddress ?? "?"):\($0.address.port ?? 0)" }
            + (metricsServer?.address.map { ["metrics \($0.ipAddress ?? "?"):\($0.port ?? 0)"] } ?? [])
        let reloads = state.withLockedValue { $0.reloads }
        return "ready: node \(config.nodeID), roles \(config.roles.map(\.rawValue).joined(separator: ",")); listening \(listening.joined(separator: ", "))"
            + (reloads > 0 ? "; configuration reloaded \(reloads)×" : "")
    }

    /// Tells systemd (if present) and the operator that the node serves.
    func reportReady() {
        ServiceNotifier.ready(status: statusLine)
        printLine("tollgated \(TollgateVersion.current) \(statusLine)")
        logger.notice("\(statusLine)")
    }

    func reportStopping() {
        let status = "stopping: draining calls for up to \(currentConfig.drainTimeoutSeconds) s"
        ServiceNotifier.stopping(status: status)
        printLine("tollgated \(status)")
        logger.notice("\(status)")
    }

    // MARK: Reload (SIGHUP)

    /// Re-reads the configuration file. A file with problems is refused and
    /// the running configuration kept. Log level, certificates, peers and
    /// user policy apply at once; other changes need a restart and are
    /// reported as such.
    func reload(logger: Logger) async {
        let old = currentConfig
        ServiceNotifier.reloading(status: "reloading \(old.path)")
        logger.notice("reloading configuration", metadata: ["path": "\(old.path)"])
        let new: NodeConfig
        do {
            new = try NodeConfig.load(path: old.path)
            let problems = new.checkFiles()
            guard problems.isEmpty else { throw ConfigError(path: old.path, problems: problems) }
            try Self.checkCertificate(new)
        } catch {
            let line = "\(error)".split(separator: "\n").joined(separator: "; ")
            logger.error("reload refused; keeping the running configuration: \(line)")
            ServiceNotifier.ready(status: statusLine + "; last reload refused: \(line)")
            return
        }
        var restartNeeded: [String] = []
        if new.nodeID != old.nodeID { restartNeeded.append("node_id") }
        if new.roles != old.roles { restartNeeded.append("roles") }
        if new.dataDirectory != old.dataDirectory { restartNeeded.append("data_directory") }
        if new.clusterListen != old.clusterListen || new.adminListen != old.adminListen || new.metricsListen != old.metricsListen {
            restartNeeded.append("listen")
        }
        if Self.rpcLimits(new) != Self.rpcLimits(old) || new.drainTimeoutSeconds != old.drainTimeoutSeconds { restartNeeded.append("limits") }

        NodeLogging.level.level = new.logLevel.swiftLog
        do {
            let (cluster, admin) = try Self.serverTLS(new)
            for entry in servers { entry.server.updateTLS(entry.name == "cluster" ? cluster : admin) }
            let client = try Self.clientTLS(new)
            var peers = self.peers
            if new.peers != old.peers {
                for peer in peers { await peer.channel.close() }
                peers = try Self.makePeers(new, limits: Self.rpcLimits(new), group: group)
            } else {
                for peer in peers { peer.channel.updateTLS(client) }
            }
            let updated = peers
            peerBox.withLockedValue { $0 = updated }
            directory?.updatePolicy(Self.userPolicy(new))
            state.withLockedValue { $0 = (new, updated, $0.reloads + 1) }
        } catch {
            logger.error("reload could not load the new certificates; keeping the old ones: \(error)")
            ServiceNotifier.ready(status: statusLine + "; last reload refused: \(error)")
            return
        }
        if !restartNeeded.isEmpty {
            logger.warning("changed settings that take effect after a restart: \(restartNeeded.joined(separator: ", "))")
        }
        logger.notice("configuration reloaded")
        ServiceNotifier.ready(status: statusLine + (restartNeeded.isEmpty ? "" : "; restart to apply \(restartNeeded.joined(separator: ", "))"))
    }
}

/// Why a node could not start: one line for the operator.
public struct NodeStartError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Metrics and the log for every call and failed connection.
struct CallLogger: RPCServerObserver {
    let metrics: NodeMetrics
    let logger: Logger

    func connectionOpened() { metrics.connectionOpened() }
    func connectionClosed() { metrics.connectionClosed() }

    func connectionFailed(peer: String, reason: String) {
        metrics.connectionFailed(peer: peer, reason: reason)
        logger.warning("closed a connection: \(reason)", metadata: ["peer": "\(peer)"])
    }

    func callFinished(path: String, code: RPCCode, duration: Duration, requestID: String, caller: Caller, message: String) {
        metrics.callFinished(path: path, code: code, duration: duration, requestID: requestID, caller: caller, message: message)
        // Built only when the level is enabled (swift-log takes it as an autoclosure):
        // successful calls log at debug, which is usually off.
        func metadata() -> Logger.Metadata {
            ["request_id": "\(requestID)", "method": "\(path)", "code": "\(code)", "caller": "\(caller)",
             "duration_us": "\(duration.components.seconds * 1_000_000 + duration.components.attoseconds / 1_000_000_000_000)"]
        }
        switch code {
        case .unknown, .internal, .dataLoss:
            logger.error("call failed: \(message)", metadata: metadata())
        case .ok:
            logger.debug("call", metadata: metadata())
        default:
            logger.info("call refused: \(message)", metadata: metadata())
        }
    }
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
