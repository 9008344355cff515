public import NIOCore
import NIOConcurrencyHelpers
import NIOPosix
public import OpenSSLKit
public import RPCCore
import TollgateProto
import TollgateTLS

/// Serves RPC methods over TLS (docs/rpc-protocol.md).
public final class RPCServer: Sendable {
    public static let alpn = "tollgate-rpc/1"

    private let methods: [String: RPCMethodHandler]
    /// Read for each new connection, so new certificates apply without a restart.
    private let tls: NIOLockedValueBox<TLSContext>
    private let observer: (any RPCServerObserver)?
    private let limits: RPCLimits
    private let authorize: @Sendable (ServerCallContext) throws(RPCError) -> Caller
    private let connections = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])
    private let listener = NIOLockedValueBox<(any Channel)?>(nil)

    /// - Parameter authorize: decides, before a handler runs, who the caller
    ///   is and whether they may call the method, throwing the status to
    ///   answer with (UNAUTHENTICATED or PERMISSION_DENIED) if not. Usually
    ///   ``AccessController/authorize(_:)``.
    public init(methods: [RPCMethodHandler], tls: TLSContext, limits: RPCLimits = RPCLimits(), observer: (any RPCServerObserver)? = nil,
                authorize: @escaping @Sendable (ServerCallContext) throws(RPCError) -> Caller) {
        self.methods = Dictionary(methods.map { ($0.method.path, $0) }, uniquingKeysWith: { first, _ in first })
        self.tls = NIOLockedValueBox(tls)
        self.observer = observer
        self.limits = limits
        self.authorize = authorize
    }

    /// New connections use `tls` from now on; open ones keep theirs.
    public func updateTLS(_ tls: TLSContext) {
        self.tls.withLockedValue { $0 = tls }
    }

    /// Binds and starts accepting; returns the bound address.
    public func bind(host: String, port: Int, group: any EventLoopGroup) async throws -> SocketAddress {
        try await listen(bootstrap(group: group).bind(host: host, port: port).get())
    }

    /// Accepts on a socket that is already bound and listening (socket
    /// activation); the server takes ownership of the descriptor.
    public func bind(listeningSocket descriptor: CInt, group: any EventLoopGroup) async throws -> SocketAddress {
        try await listen(bootstrap(group: group).withBoundSocket(descriptor).get())
    }

    private func listen(_ channel: any Channel) throws -> SocketAddress {
        listener.withLockedValue { $0 = channel }
        guard let address = channel.localAddress else { throw RPCError(.internal, "bound socket has no address") }
        return address
    }

    private func bootstrap(group: any EventLoopGroup) -> ServerBootstrap {
        let methods = self.methods, tls = self.tls, limits = self.limits, authorize = self.authorize, connections = self.connections
        let observer = self.observer
        return ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let id = ObjectIdentifier(channel)
                    let admitted = connections.withLockedValue { open in
                        guard open.count < limits.maxConnections else { return false }
                        open[id] = channel
                        return true
                    }
                    // Over the limit: closed before TLS costs anything (docs/rpc-protocol.md §9).
                    guard admitted else {
                        observer?.connectionFailed(peer: channel.remoteAddress?.description ?? "unknown", reason: "more than \(limits.maxConnections) connections")
                        throw RPCError(.resourceExhausted, "more than \(limits.maxConnections) connections")
                    }
                    observer?.connectionOpened()
                    channel.closeFuture.whenComplete { _ in
                        _ = connections.withLockedValue { $0.removeValue(forKey: id) }
                        observer?.connectionClosed()
                    }
                    try channel.pipeline.syncOperations.addHandler(TLSHandler(context: tls.withLockedValue { $0 }))
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoderHandler(maxFrameSize: limits.maxFrameSize)))
                    try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(FrameEncoderHandler()))
                    try channel.pipeline.syncOperations.addHandler(ServerConnectionHandler(methods: methods, limits: limits, observer: observer, authorize: authorize))
                }
            }
    }

    /// Stops accepting, sends GOAWAY on every connection, lets calls in
    /// flight finish (up to `drainTimeout`), then closes what is left.
    public func shutdown(drainTimeout: Duration = .seconds(30)) async {
        if let listener = listener.withLockedValue({ $0 }) { try? await listener.close() }
        let open = connections.withLockedValue { Array($0.values) }
        for channel in open { channel.pipeline.fireUserInboundEventTriggered(ServerConnectionHandler.Quiesce()) }
        let deadline = ContinuousClock.now + drainTimeout
        for channel in open {
            while channel.isActive && ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(10)) }
            if channel.isActive {
                // Calls still running get UNAVAILABLE in TRAILERS, then the connection closes.
                channel.pipeline.fireUserInboundEventTriggered(ServerConnectionHandler.DrainExpired())
                try? await channel.closeFuture.get()
            }
        }
    }
}
