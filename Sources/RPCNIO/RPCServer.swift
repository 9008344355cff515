public import NIOCore
import NIOConcurrencyHelpers
import NIOPosix
public import OpenSSLKit
public import RPCCore
public import TollgateListeners
import TollgateProto
import TollgateTLS

/// Serves RPC methods over TLS (docs/rpc-protocol.md), on the listener
/// machinery every kind shares (bind, socket activation, connection limit,
/// drain).
public final class RPCServer: Sendable {
    public static let alpn = "tollgate-rpc/1"

    /// Read for each new connection, so new certificates apply without a restart.
    private let tls: NIOLockedValueBox<TLSContext>
    public let listener: Listener
    /// Request bytes held for calls not yet handed to a handler (docs/rpc-protocol.md §9).
    public let bufferedRequests: RequestBufferGauge

    /// - Parameters:
    ///   - name: the listener's name (`cluster`, `admin`), for metrics, logs and socket activation.
    ///   - authorize: decides, before a handler runs, who the caller
    ///     is and whether they may call the method, throwing the status to
    ///     answer with (UNAUTHENTICATED or PERMISSION_DENIED) if not. Usually
    ///     ``AccessController/authorize(_:)``.
    ///   A closure must not block: it runs on the event loop for handlers
    ///   placed there. An authorizer that reads storage says so through
    ///   ``CallAuthorizer/readsStorage(_:)`` (the other initializer).
    public convenience init(name: String = "rpc", methods: [RPCMethodHandler], tls: TLSContext, limits: RPCLimits = RPCLimits(),
                            observer: (any RPCServerObserver)? = nil, bufferedRequests: RequestBufferGauge? = nil,
                            placement: ServiceRoles? = nil,
                            authorize: @escaping @Sendable (ServerCallContext) throws(RPCError) -> Caller) {
        self.init(name: name, methods: methods, tls: tls, limits: limits, observer: observer, bufferedRequests: bufferedRequests,
                  placement: placement, authorizer: ClosureAuthorizer(decide: authorize))
    }

    /// - Parameters:
    ///   - bufferedRequests: the node-wide gauge of request bytes held,
    ///     shared by a node's listeners; nil gives this server its own,
    ///     sized by `limits`.
    ///   - placement: which roles serve the declared services this server
    ///     does not: a call to one is answered UNIMPLEMENTED naming them;
    ///     nil answers "unknown method".
    public init(name: String = "rpc", methods: [RPCMethodHandler], tls: TLSContext, limits: RPCLimits = RPCLimits(),
                observer: (any RPCServerObserver)? = nil, bufferedRequests: RequestBufferGauge? = nil, placement: ServiceRoles? = nil,
                authorizer: any CallAuthorizer) {
        let table = Dictionary(methods.map { ($0.method.path, $0) }, uniquingKeysWith: { first, _ in first })
        let tls = NIOLockedValueBox(tls)
        self.tls = tls
        let gauge = bufferedRequests ?? RequestBufferGauge(limit: limits.maxBufferedBytes,
                                                           unauthenticatedLimitPerAddress: limits.unauthenticatedMaxBufferedBytesPerAddress)
        self.bufferedRequests = gauge
        let admission = Listener.Admission(maxUnauthenticatedPerAddress: limits.maxUnauthenticatedConnectionsPerAddress)
        self.listener = Listener(name: name, maxConnections: limits.maxConnections, admission: admission,
                                 observer: observer.map(RPCListenerObserver.init)) { channel, standing in
            let sync = channel.pipeline.syncOperations
            let budget = ConnectionBudget(gauge: gauge, limits: limits, address: channel.remoteAddress?.ipAddress ?? "unknown")
            try sync.addHandler(TLSHandler(context: tls.withLockedValue { $0 }))
            try sync.addHandler(ByteToMessageHandler(FrameDecoderHandler(maxFrameSize: limits.maxFrameSize, budget: budget)))
            try sync.addHandler(ServerConnectionHandler(methods: table, placement: placement, limits: limits, observer: observer, authorizer: authorizer,
                                                                 budget: budget, standing: standing))
        }
    }

    /// New connections use `tls` from now on; open ones keep theirs.
    public func updateTLS(_ tls: TLSContext) {
        self.tls.withLockedValue { $0 = tls }
    }

    /// Binds and starts accepting; returns the bound address.
    public func bind(host: String, port: Int, group: any EventLoopGroup) async throws -> SocketAddress {
        try await listener.bind(host: host, port: port, group: group)
    }

    /// Accepts on a socket that is already bound and listening (socket
    /// activation); the server takes ownership of the descriptor.
    public func bind(listeningSocket descriptor: CInt, group: any EventLoopGroup) async throws -> SocketAddress {
        try await listener.bind(listeningSocket: descriptor, group: group)
    }

    /// Stops accepting, sends GOAWAY on every connection, lets calls in
    /// flight finish (up to `drainTimeout`), then closes what is left.
    public func shutdown(drainTimeout: Duration = .seconds(30)) async {
        await listener.shutdown(drainTimeout: drainTimeout)
    }
}

/// Connection counts and refusals from the shared listener, reported to
/// the RPC observer.
struct RPCListenerObserver: ListenerObserver {
    let observer: any RPCServerObserver
    init(_ observer: any RPCServerObserver) { self.observer = observer }
    func connectionOpened(listener: String) { observer.connectionOpened() }
    func connectionClosed(listener: String) { observer.connectionClosed() }
    func connectionFailed(listener: String, peer: String, reason: String) { observer.connectionFailed(peer: peer, reason: reason) }
}

/// An authorizer given as a closure, which reads no storage.
struct ClosureAuthorizer: CallAuthorizer {
    let decide: @Sendable (ServerCallContext) throws(RPCError) -> Caller
    func authorize(_ context: ServerCallContext) throws(RPCError) -> Caller { try decide(context) }
    func readsStorage(_ context: ServerCallContext) -> Bool { false }
}
