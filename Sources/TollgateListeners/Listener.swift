public import NIOCore
import NIOConcurrencyHelpers
import NIOPosix

/// Reports what listeners do, for metrics and logs. Called on event loop
/// threads: implementations must be quick and thread-safe.
public protocol ListenerObserver: Sendable {
    func connectionOpened(listener: String)
    func connectionClosed(listener: String)
    /// A connection was refused or closed for misbehaving; `peer` is the remote address.
    func connectionFailed(listener: String, peer: String, reason: String)
}

/// Asks a connection to finish what it is doing and close (graceful drain).
/// Each kind's handler answers it its own way: RPC sends GOAWAY, HTTP closes
/// after the response in flight, a stream service is cancelled.
public struct ListenerQuiesceEvent: Sendable {
    public init() {}
}

/// Tells a connection its drain time is up: it closes now.
public struct ListenerDrainExpiredEvent: Sendable {
    public init() {}
}

/// The part every kind of listener shares: binding (or adopting a socket
/// that systemd passed), admission against a connection limit, tracking
/// open connections, and graceful drain. A kind supplies only how to set
/// up each accepted connection's pipeline.
public final class Listener: Sendable {
    /// The listener's name (`cluster`, `admin`, `metrics`, or a role module's),
    /// also the name its socket carries under systemd's socket activation.
    public let name: String
    public let maxConnections: Int
    private let observer: (any ListenerObserver)?
    private let configure: @Sendable (any Channel) throws -> Void
    private let connections = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])
    private let channel = NIOLockedValueBox<(any Channel)?>(nil)

    /// - Parameter configure: adds the kind's handlers to an accepted
    ///   connection's pipeline, on its event loop.
    public init(name: String, maxConnections: Int, observer: (any ListenerObserver)?,
                configure: @escaping @Sendable (any Channel) throws -> Void) {
        self.name = name
        self.maxConnections = maxConnections
        self.observer = observer
        self.configure = configure
    }

    /// The bound address, once bound.
    public var address: SocketAddress? { channel.withLockedValue { $0?.localAddress } }

    /// Connections open now.
    public var openConnections: Int { connections.withLockedValue { $0.count } }

    /// Binds and starts accepting; returns the bound address.
    public func bind(host: String, port: Int, group: any EventLoopGroup) async throws -> SocketAddress {
        try listen(try await bootstrap(group: group).bind(host: host, port: port).get())
    }

    /// Accepts on a socket that is already bound and listening (socket
    /// activation); the listener takes ownership of the descriptor.
    public func bind(listeningSocket descriptor: CInt, group: any EventLoopGroup) async throws -> SocketAddress {
        try listen(try await bootstrap(group: group).withBoundSocket(descriptor).get())
    }

    private func listen(_ bound: any Channel) throws -> SocketAddress {
        channel.withLockedValue { $0 = bound }
        guard let address = bound.localAddress else { throw ListenerError.noAddress(name) }
        return address
    }

    private func bootstrap(group: any EventLoopGroup) -> ServerBootstrap {
        let connections = self.connections, observer = self.observer, configure = self.configure
        let limit = maxConnections, name = self.name
        return ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let id = ObjectIdentifier(channel)
                    let admitted = connections.withLockedValue { open in
                        guard open.count < limit else { return false }
                        open[id] = channel
                        return true
                    }
                    // Over the limit: closed before TLS or parsing costs anything.
                    guard admitted else {
                        observer?.connectionFailed(listener: name, peer: channel.remoteAddress?.description ?? "unknown",
                                                   reason: "more than \(limit) connections")
                        throw ListenerError.tooManyConnections(limit)
                    }
                    observer?.connectionOpened(listener: name)
                    channel.closeFuture.whenComplete { _ in
                        _ = connections.withLockedValue { $0.removeValue(forKey: id) }
                        observer?.connectionClosed(listener: name)
                    }
                    try configure(channel)
                }
            }
    }

    /// Stops accepting, asks every connection to finish (``ListenerQuiesceEvent``),
    /// waits up to `drainTimeout` for them to close, then tells the rest
    /// their time is up (``ListenerDrainExpiredEvent``) and waits for them.
    public func shutdown(drainTimeout: Duration) async {
        if let bound = channel.withLockedValue({ $0 }) { try? await bound.close() }
        let open = connections.withLockedValue { Array($0.values) }
        for connection in open { connection.pipeline.fireUserInboundEventTriggered(ListenerQuiesceEvent()) }
        let deadline = ContinuousClock.now + drainTimeout
        for connection in open {
            // Each closeFuture is awaited with the time left, not polled.
            let remaining = deadline - ContinuousClock.now
            if remaining > .zero {
                let timeout = connection.eventLoop.scheduleTask(in: .nanoseconds(Int64(remaining.components.seconds) * 1_000_000_000
                                                                                 + remaining.components.attoseconds / 1_000_000_000)) {
                    connection.pipeline.fireUserInboundEventTriggered(ListenerDrainExpiredEvent())
                }
                try? await connection.closeFuture.get()
                timeout.cancel()
            } else if connection.isActive {
                connection.pipeline.fireUserInboundEventTriggered(ListenerDrainExpiredEvent())
                try? await connection.closeFuture.get()
            }
        }
    }
}

public enum ListenerError: Error, Hashable, Sendable, CustomStringConvertible {
    case tooManyConnections(Int)
    case noAddress(String)

    public var description: String {
        switch self {
        case .tooManyConnections(let limit): "more than \(limit) connections"
        case .noAddress(let name): "listener \(name): the bound socket has no address"
        }
    }
}

/// Closes a connection that stays idle for `timeout`; every kind of
/// listener re-arms it on activity. Confined to the connection's loop.
struct IdleTimeout {
    let timeout: TimeAmount
    private var scheduled: Scheduled<Void>?

    init(_ timeout: TimeAmount) { self.timeout = timeout }

    mutating func arm(_ context: ChannelHandlerContext) {
        scheduled?.cancel()
        let channel = context.channel
        scheduled = context.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
    }

    mutating func cancel() {
        scheduled?.cancel()
        scheduled = nil
    }
}
