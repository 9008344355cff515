import Foundation
public import Logging
import NIOConcurrencyHelpers
public import NIOCore
public import NIOPosix
import OpenSSLKit
public import RoleCore
import RPCCore
public import RPCNIO
import ServiceLifecycle
import SystemdKit
import TollgateListeners
import TollgateProxy
import TollgateGateway
import TollgateProto
import TollgateServices
import TollgateStorage
import UnixSignals

/// A node that serves: databases open, role modules assembled, listeners
/// bound, peers watched. Its steady state runs as a service group
/// (swift-service-lifecycle): peers, the modules' services, listeners, then
/// systemd; graceful shutdown goes in reverse.
public final class NodeRuntime: Sendable {
    public let node: Node
    public let group: MultiThreadedEventLoopGroup
    public let metrics: NodeMetrics
    /// The role modules this node assembled, in order.
    public let modules: [any RoleModule]
    /// Which modules each role brings.
    let table: RoleModules
    /// The RPC listeners (`cluster`, `admin`), whose certificates reload.
    let rpcServers: [(name: String, server: RPCServer)]
    /// Every listener of every kind, in the order they were bound.
    let listeners: [(name: String, listener: Listener, address: SocketAddress)]
    /// The TLS contexts of module listeners, replaced on reload.
    let moduleTLS: NIOLockedValueBox<[String: TLSContext]>
    let moduleListeners: [String: ListenerDeclaration]
    private let state: NIOLockedValueBox<(config: NodeConfig, peers: [PeerLink], reloads: Int)>
    let logger: Logger

    public var currentConfig: NodeConfig { state.withLockedValue { $0.config } }
    public var peers: [PeerLink] { state.withLockedValue { $0.peers } }

    /// The bound addresses by listener name (cluster, admin, metrics, and the modules').
    public var boundAddresses: [String: SocketAddress] {
        Dictionary(listeners.map { ($0.name, $0.address) }, uniquingKeysWith: { first, _ in first })
    }

    /// The assembled module of a type, if this node runs it.
    public func module<Module: RoleModule>(_ type: Module.Type) -> Module? {
        modules.lazy.compactMap { $0 as? Module }.first
    }

    /// Opens the databases, assembles the role modules, binds every listener
    /// (or takes them from systemd's socket activation) and creates the peer
    /// links. Fails with a message naming what is wrong.
    /// - Parameter table: the modules each role brings (tests pass their own).
    public static func start(config: NodeConfig, logger: Logger, threads: Int = System.coreCount,
                             table: RoleModules = .standard) async throws -> NodeRuntime {
        try checkStartable(config, table: table)

        let node = try Node.open(roles: config.roles, dataDirectory: config.dataDirectory, table: table)
        var endpoints = config.moduleListen.mapValues(\.description)
        endpoints["cluster"] = config.clusterListen.description
        if let admin = config.adminListen { endpoints["admin"] = admin.description }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, threads))
        let limits = rpcLimits(config)
        let peers = try makePeers(config, limits: limits, group: group)
        let peerBox = NIOLockedValueBox(peers)
        let assembly: NodeAssembly
        do {
            assembly = try await NodeAssembly.assemble(roles: config.roles, nodeID: config.nodeID, databases: node.databases,
                                                       sections: config.sections, logger: logger, table: table, listenEndpoints: endpoints) { context in
                context.provide(PeerLinkDirectory(links: peerBox), as: (any PeerDirectory).self)
                context.provide(NodeDataDirectory(path: config.dataDirectory), as: NodeDataDirectory.self)
                context.provide(ThriftValidatorFactory(group: group, defaultTrustRoots: config.caPath), as: (any ThriftKeyValidatorFactory).self)
            }
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        let modules = assembly.modules

        let metrics = NodeMetrics(version: TollgateVersion.current, nodeID: config.nodeID, roles: config.roles,
                                  dataDirectory: config.dataDirectory, databases: node.databases.opened,
                                  certificateFile: config.certificatePath, caFile: config.caPath)

        let startedAtUnixMs = Int64(Date().timeIntervalSince1970 * 1000)
        let placement = table.placement(localRoles: config.roles)
        let status = NodeStatusService(config: config, startedAtUnixMs: startedAtUnixMs, placement: placement,
                                       peers: { peerBox.withLockedValue { $0 } })
        // Ping and status never block: they answer on the connection's loop.
        let methods = status.methodHandlers.map { $0.placed(.eventLoop) } + modules.flatMap(\.methods)
        let access = assembly.access
        let observer = CallLogger(metrics: metrics, logger: logger)

        let activated = Dictionary(ServiceNotifier.listenedSockets().map { ($0.name, $0.descriptor) }, uniquingKeysWith: { first, _ in first })
        var bound: [(name: String, listener: Listener, address: SocketAddress)] = []
        var rpcServers: [(name: String, server: RPCServer)] = []
        var declarations: [String: ListenerDeclaration] = [:]
        let moduleTLS = NIOLockedValueBox<[String: TLSContext]>([:])
        do {
            let (clusterTLS, adminTLS) = try serverTLS(config)
            // One budget for unfinished requests across both RPC listeners: the cap is the node's.
            let bufferedRequests = RequestBufferGauge(limit: limits.maxBufferedBytes,
                                                      unauthenticatedLimitPerAddress: limits.unauthenticatedMaxBufferedBytesPerAddress)
            let cluster = RPCServer(name: "cluster", methods: methods, tls: clusterTLS, limits: limits, observer: observer,
                                    bufferedRequests: bufferedRequests, placement: placement, authorizer: access)
            rpcServers.append(("cluster", cluster))
            bound.append(("cluster", cluster.listener, try await bind(cluster.listener, config.clusterListen, socket: activated["cluster"], group: group)))
            if let adminListen = config.adminListen {
                let admin = RPCServer(name: "admin", methods: methods, tls: adminTLS, limits: limits, observer: observer,
                                      bufferedRequests: bufferedRequests, placement: placement, authorizer: access)
                rpcServers.append(("admin", admin))
                bound.append(("admin", admin.listener, try await bind(admin.listener, adminListen, socket: activated["admin"], group: group)))
            }
            let listenerObserver = NodeListenerObserver(metrics: metrics, logger: logger)
            if let endpoint = config.metricsListen {
                let sources = modules.compactMap(\.metricsSource)
                let responder = MetricsResponder {
                    var page = metrics.render(peers: peerBox.withLockedValue { $0 }, bufferedRequestBytes: bufferedRequests.bufferedBytes,
                                              moduleSamples: modules.flatMap(\.metricSamples))
                    for source in sources { page += Array(source.prometheusText().utf8) }
                    return page
                }
                let listener = Listener(name: "metrics", maxConnections: 64, observer: listenerObserver,
                                        configure: HTTPListener.configure(responder: responder, tls: nil, limits: HTTPListenerLimits(maxBodyBytes: 0)))
                bound.append(("metrics", listener, try await bind(listener, endpoint, socket: activated["metrics"], group: group)))
            }
            // One backend context per CA bundle, shared by a gateway's HTTP and
            // HTTPS listeners: parsing the system bundle takes tens of
            // milliseconds, which a restarting gateway should not pay twice.
            var backendContexts: [String: TLSContext?] = [:]
            func sharedBackendTLS(_ limits: ProxyListenerLimits) throws -> TLSContext? {
                let key = limits.backendTrustRootsFile ?? ""
                if let context = backendContexts[key] { return context }
                let context = try backendTLS(limits)
                backendContexts[key] = context
                return context
            }
            for module in modules {
                for declaration in module.listeners {
                    let configured = config.moduleListen[declaration.name]
                    guard configured != nil || declaration.defaultEndpoint != nil else { continue }
                    guard let endpoint = configured ?? declaration.defaultEndpoint.flatMap(Endpoint.init) else {
                        throw NodeStartError("listen.\(declaration.name): the default \(declaration.defaultEndpoint ?? "") is not host:port")
                    }
                    declarations[declaration.name] = declaration
                    let tls: (@Sendable () -> TLSContext)?
                    if declaration.security == .plain {
                        tls = nil
                    } else {
                        let context = try moduleServerTLS(config, declaration)
                        moduleTLS.withLockedValue { $0[declaration.name] = context }
                        let name = declaration.name
                        tls = { moduleTLS.withLockedValue { $0[name] ?? context } }
                    }
                    let configure = switch declaration.kind {
                    case .http(let responder): HTTPListener.configure(responder: responder, tls: tls, limits: HTTPListenerLimits())
                    case .stream(let service): StreamListener.configure(service: service, tls: tls, idleTimeout: .seconds(Int64(config.idleTimeoutSeconds)))
                    case .proxy(let policy, let limits): ProxyListener.configure(policy: policy, limits: limits, tls: tls,
                                                                                 backendTLS: try sharedBackendTLS(limits))
                    }
                    let listener = Listener(name: declaration.name, maxConnections: config.maxConnections, observer: listenerObserver, configure: configure)
                    bound.append((declaration.name, listener, try await bind(listener, endpoint, socket: activated[declaration.name], group: group)))
                }
            }
        } catch {
            for entry in bound { await entry.listener.shutdown(drainTimeout: .zero) }
            try? await group.shutdownGracefully()
            throw error
        }
        return NodeRuntime(config: config, table: table, node: node, group: group, modules: modules, metrics: metrics, rpcServers: rpcServers,
                           listeners: bound, moduleTLS: moduleTLS, moduleListeners: declarations, peers: peerBox, logger: logger)
    }

    private let peerBox: NIOLockedValueBox<[PeerLink]>

    private init(config: NodeConfig, table: RoleModules, node: Node, group: MultiThreadedEventLoopGroup, modules: [any RoleModule], metrics: NodeMetrics,
                 rpcServers: [(name: String, server: RPCServer)], listeners: [(name: String, listener: Listener, address: SocketAddress)],
                 moduleTLS: NIOLockedValueBox<[String: TLSContext]>, moduleListeners: [String: ListenerDeclaration],
                 peers: NIOLockedValueBox<[PeerLink]>, logger: Logger) {
        self.node = node
        self.table = table
        self.group = group
        self.modules = modules
        self.metrics = metrics
        self.rpcServers = rpcServers
        self.listeners = listeners
        self.moduleTLS = moduleTLS
        self.moduleListeners = moduleListeners
        self.peerBox = peers
        self.state = NIOLockedValueBox((config, peers.withLockedValue { $0 }, 0))
        self.logger = logger
    }

    /// A module listener's server context: the node's certificate; a client
    /// certificate from the cluster CA verified if presented, or required.
    static func moduleServerTLS(_ config: NodeConfig, _ declaration: ListenerDeclaration) throws -> TLSContext {
        try TLSContext(configuration: .server(certificateChainFile: config.certificatePath, privateKeyFile: config.privateKeyPath,
                                              trustRootsFile: config.caPath, verification: declaration.security == .mutualTLS ? .peerRequired : .peer,
                                              applicationProtocols: declaration.applicationProtocols))
    }

    /// The client context a proxy listener verifies HTTPS backends with: the
    /// configured CA bundle, else the system's; nil when neither exists (then
    /// HTTPS backends are refused with a clear error).
    static func backendTLS(_ limits: ProxyListenerLimits) throws -> TLSContext? {
        let bundle = limits.backendTrustRootsFile ?? "/etc/ssl/certs/ca-certificates.crt"
        guard limits.backendTrustRootsFile != nil || FileManager.default.isReadableFile(atPath: bundle) else { return nil }
        do {
            return try TLSContext(configuration: .client(trustRootsFile: bundle, applicationProtocols: ["http/1.1"]))
        } catch {
            throw NodeStartError("gateway.backend_ca_file: \(bundle) cannot be used to verify backends: \(error)")
        }
    }

    static func rpcLimits(_ config: NodeConfig) -> RPCLimits {
        var limits = RPCLimits(maxFrameSize: config.maxFrameSize, maxConcurrentStreams: config.maxConcurrentStreams)
        limits.maxConnections = config.maxConnections
        limits.idleTimeout = .seconds(Int64(config.idleTimeoutSeconds))
        limits.maxUnauthenticatedConnectionsPerAddress = config.maxUnauthenticatedConnectionsPerAddress
        limits.unauthenticatedTimeout = .seconds(Int64(config.unauthenticatedTimeoutSeconds))
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
        // A peer that comes back is found within 5 s: a refused connection
        // attempt costs next to nothing, and a gateway waiting 30 s to see
        // its analytics or traffic manager return holds its spool and its
        // local throttling fallback that much longer.
        var backoff = ReconnectBackoff()
        backoff.maximum = .seconds(5)
        return config.peers.sorted { $0.key.rawValue < $1.key.rawValue }.flatMap { role, endpoints in
            endpoints.map { endpoint in
                PeerLink(role: role, endpoint: endpoint,
                         channel: RPCChannel(host: endpoint.host, port: endpoint.port, serverHostname: endpoint.host, tls: tls, limits: limits, group: group,
                                             backoff: backoff))
            }
        }
    }

    private static func bind(_ listener: Listener, _ endpoint: Endpoint, socket: Int32?, group: any EventLoopGroup) async throws -> SocketAddress {
        do {
            if let socket { return try await listener.bind(listeningSocket: socket, group: group) }
            return try await listener.bind(host: endpoint.host, port: endpoint.port, group: group)
        } catch {
            throw NodeStartError("listen.\(listener.name): cannot listen on \(endpoint): \(describeBindError(error))")
        }
    }

    static func describeBindError(_ error: any Error) -> String {
        let text = "\(error)"
        if text.contains("Address already in use") { return "address already in use" }
        if text.contains("Cannot assign requested address") { return "no such local address" }
        if text.contains("Permission denied") { return "permission denied (ports below 1024 need privileges)" }
        return text
    }

    /// Everything a start or a reload checks before it changes anything: the
    /// files the configuration names, the node certificate, and that the
    /// certificate and key make TLS contexts. `tollgated --check-config` and
    /// `--reload` run it too, so a reload they pass is one the node accepts.
    /// Throws ``ConfigError`` or ``NodeStartError``.
    public static func checkStartable(_ config: NodeConfig, table: RoleModules = .standard) throws {
        let problems = config.checkFiles(table: table)
        guard problems.isEmpty else { throw ConfigError(path: config.path, problems: problems) }
        try checkCertificate(config)
        do {
            _ = try serverTLS(config)
            _ = try clientTLS(config)
        } catch {
            throw NodeStartError("tls: the certificate and private key do not make a TLS context: \(error)")
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

    // MARK: Running

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully.
    public func run() async throws {
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: PeerMonitorService(runtime: self), serviceName: "peers"),
        ]
        for module in modules {
            for service in module.services { services.append(.init(service: service, serviceName: type(of: module).name)) }
        }
        services.append(.init(service: ListenersService(runtime: self), serviceName: "listeners"))
        services.append(.init(service: SystemdService(runtime: self, logger: logger), serviceName: "systemd"))
        var configuration = ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        // Past the drain period plus slack, remaining work is cancelled.
        configuration.maximumGracefulShutdownDuration = .seconds(currentConfig.drainTimeoutSeconds + 10)
        try await ServiceGroup(configuration: configuration).run()
        try? await group.shutdownGracefully()
    }

    /// Drains every listener (as a graceful shutdown does), closes the peer
    /// links and stops the event loops: for a runtime started without `run`
    /// (tests, embedding).
    public func stop(drainTimeout: Duration = .seconds(5)) async {
        await withTaskGroup(of: Void.self) { tasks in
            for entry in listeners {
                let listener = entry.listener
                tasks.addTask { await listener.shutdown(drainTimeout: drainTimeout) }
            }
        }
        for peer in peers { await peer.channel.close() }
        try? await group.shutdownGracefully()
    }

    /// One line for systemd's STATUS= and the log.
    public var statusLine: String {
        let config = currentConfig
        let listening = listeners.map { "\($0.name) \($0.address.ipAddress ?? "?"):\($0.address.port ?? 0)" }
        let reloads = state.withLockedValue { $0.reloads }
        return "ready: node \(config.nodeID), roles \(config.roles.map(\.rawValue).joined(separator: ",")); listening \(listening.joined(separator: ", "))"
            + (reloads > 0 ? "; configuration reloaded \(reloads)×" : "")
    }

    /// Tells systemd (if present) and the operator that the node serves.
    /// One log line: under systemd it is a journal entry, elsewhere a line on
    /// stderr; printing it to stdout as well made every start show twice.
    func reportReady() {
        ServiceNotifier.ready(status: statusLine)
        logger.notice("tollgated \(TollgateVersion.current) \(statusLine)")
    }

    func reportStopping() {
        let status = "stopping: draining calls for up to \(currentConfig.drainTimeoutSeconds) s"
        ServiceNotifier.stopping(status: status)
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
            new = try NodeConfig.load(path: old.path, table: table)
            try Self.checkStartable(new, table: table)
        } catch {
            let line = "\(error)".split(separator: "\n").joined(separator: "; ")
            logger.error("reload refused; keeping the running configuration: \(line)")
            ServiceNotifier.ready(status: statusLine + "; last reload refused: \(line)")
            ReloadVerdict.record(refusal: line)
            return
        }
        var restartNeeded: [String] = []
        if new.nodeID != old.nodeID { restartNeeded.append("node_id") }
        if new.roles != old.roles { restartNeeded.append("roles") }
        if new.dataDirectory != old.dataDirectory { restartNeeded.append("data_directory") }
        if new.clusterListen != old.clusterListen || new.adminListen != old.adminListen || new.metricsListen != old.metricsListen
            || new.moduleListen != old.moduleListen {
            restartNeeded.append("listen")
        }
        if Self.rpcLimits(new) != Self.rpcLimits(old) || new.drainTimeoutSeconds != old.drainTimeoutSeconds { restartNeeded.append("limits") }

        NodeLogging.level.level = new.logLevel.swiftLog
        do {
            let (cluster, admin) = try Self.serverTLS(new)
            for entry in rpcServers { entry.server.updateTLS(entry.name == "cluster" ? cluster : admin) }
            var reloadedTLS: [String: TLSContext] = [:]
            for (name, declaration) in moduleListeners where declaration.security != .plain {
                reloadedTLS[name] = try Self.moduleServerTLS(new, declaration)
            }
            moduleTLS.withLockedValue { $0.merge(reloadedTLS) { _, new in new } }
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
            for module in modules {
                let name = type(of: module).configSection?.name ?? ""
                restartNeeded += try await module.reload(new.sections[name] ?? ConfigSection())
            }
            state.withLockedValue { $0 = (new, updated, $0.reloads + 1) }
            metrics.useCertificates(node: new.certificatePath, ca: new.caPath)
        } catch {
            logger.error("reload could not load the new certificates; keeping the old ones: \(error)")
            ServiceNotifier.ready(status: statusLine + "; last reload refused: \(error)")
            ReloadVerdict.record(refusal: "\(error)")
            return
        }
        if !restartNeeded.isEmpty {
            logger.warning("changed settings that take effect after a restart: \(restartNeeded.joined(separator: ", "))")
        }
        logger.notice("configuration reloaded")
        ReloadVerdict.record(refusal: nil)
        ServiceNotifier.ready(status: statusLine + (restartNeeded.isEmpty ? "" : "; restart to apply \(restartNeeded.joined(separator: ", "))"))
    }
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

    func callFinished(path: String, code: RPCCode, duration: Duration, requestID: String, caller: Caller, message: String, cause: (any Error)?) {
        metrics.callFinished(path: path, code: code, duration: duration, requestID: requestID, caller: caller, message: message)
        // Built only when the level is enabled (swift-log takes it as an autoclosure):
        // successful calls log at debug, which is usually off.
        func metadata() -> Logger.Metadata {
            var metadata: Logger.Metadata = [
                "request_id": "\(requestID)", "method": "\(path)", "code": "\(code)", "caller": "\(caller)",
                "duration_us": "\(duration.components.seconds * 1_000_000 + duration.components.attoseconds / 1_000_000_000_000)"]
            // The cause is for operators only: it names the library error the client was spared.
            if let cause { metadata["cause"] = "\(String(reflecting: type(of: cause))): \(cause)" }
            return metadata
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

/// The node's peer links as role modules see them: transports by role, read
/// afresh on each call so a reload's new peers apply.
struct PeerLinkDirectory: PeerDirectory {
    let links: NIOLockedValueBox<[PeerLink]>

    func transports(for role: Role) -> [any RPCClientTransport] {
        links.withLockedValue { $0.filter { $0.role == role }.map(\.channel) }
    }

    func namedTransports(for role: Role) -> [(name: String, transport: any RPCClientTransport)] {
        links.withLockedValue { $0.filter { $0.role == role }.map { ($0.endpoint.description, $0.channel) } }
    }
}

/// Connection counts and refusals of the HTTP and stream listeners.
struct NodeListenerObserver: ListenerObserver {
    let metrics: NodeMetrics
    let logger: Logger

    func connectionOpened(listener: String) { metrics.listenerConnectionOpened(listener) }
    func connectionClosed(listener: String) { metrics.listenerConnectionClosed(listener) }

    func connectionFailed(listener: String, peer: String, reason: String) {
        metrics.listenerConnectionFailed(listener)
        logger.warning("closed a connection: \(reason)", metadata: ["peer": "\(peer)", "listener": "\(listener)"])
    }
}
