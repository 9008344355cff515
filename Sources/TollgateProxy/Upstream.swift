import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import OpenSSLKit
import RoleCore
import TollgateTLS

/// What an upstream connection reports to the exchange that holds it. All
/// calls come on the connection's event loop, which is the exchange's.
protocol UpstreamDelegate: AnyObject {
    func upstreamReceived(_ part: HTTPClientResponsePart)
    func upstreamReadComplete()
    func upstreamWritabilityChanged(_ writable: Bool)
    func upstreamClosed(error: (any Error)?)
}

/// Identifies backends whose connections can be shared.
struct UpstreamKey: Hashable {
    let isSecure: Bool
    let host: String
    let port: Int

    init(_ target: BackendTarget) {
        isSecure = target.isSecure
        host = target.host
        port = target.port
    }
}

/// One keep-alive connection to a backend, owned by one exchange at a time
/// or idle in its loop's pool.
///
/// `@unchecked Sendable` only so a connect future can carry it: it is made on
/// its channel's event loop and every field is read and written on that loop.
final class UpstreamConnection: @unchecked Sendable {
    let channel: any Channel
    let handler: UpstreamHandler
    let key: UpstreamKey
    /// Taken from the pool rather than newly connected: a failure before
    /// any response byte may be the backend having closed it while idle.
    var reused = false
    /// When it went back to the pool; the pool's sweep closes it once idle too long.
    var idleSince = NIODeadline.uptimeNanoseconds(0)

    init(channel: any Channel, handler: UpstreamHandler, key: UpstreamKey) {
        self.channel = channel
        self.handler = handler
        self.key = key
    }
}

/// The last handler of an upstream connection: passes the backend's
/// response to the exchange, and holds reads while the client is slower
/// than the backend (back-pressure from client to backend).
final class UpstreamHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    weak var delegate: (any UpstreamDelegate)?
    /// Called when an idle pooled connection closes, to drop it from the pool.
    var onClose: (() -> Void)?
    private var context: ChannelHandlerContext?
    private var paused = false
    private var readHeld = false
    private var lastError: (any Error)?

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let delegate else {
            // An idle connection has nothing to say: whatever came is not ours.
            context.close(promise: nil)
            return
        }
        delegate.upstreamReceived(unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        delegate?.upstreamReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if paused { readHeld = true } else { context.read() }
    }

    /// Stops reading the backend until ``resume()``.
    func pause() { paused = true }

    func resume() {
        paused = false
        if readHeld, let context {
            readHeld = false
            context.read()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        delegate?.upstreamWritabilityChanged(context.channel.isWritable)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        lastError = lastError ?? error
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let delegate = self.delegate
        self.delegate = nil
        delegate?.upstreamClosed(error: lastError)
        onClose?()
        onClose = nil
    }
}

@available(*, unavailable)
extension UpstreamHandler: Sendable {}

/// Idle backend connections of one event loop. Only that loop's thread
/// touches it (it lives in a thread-specific variable), so it needs no lock.
final class UpstreamPool {
    var idle: [UpstreamKey: [UpstreamConnection]] = [:]
    /// Closes connections idle too long: one repeated task per loop rather
    /// than a timer scheduled and cancelled around every request.
    var sweep: RepeatedTask?
}

/// Opens backend connections and keeps idle ones per event loop, so a
/// request's backend connection is on the same thread as its client's.
final class UpstreamConnector: Sendable {
    private let tls: TLSContext?
    private let maxIdle: Int
    /// Idle connections closed after this long unused (backends close theirs too).
    private let idleLifetime = TimeAmount.seconds(30)
    private let pools = ThreadSpecificVariable<UpstreamPoolBox>()

    init(tls: TLSContext?, maxIdle: Int) {
        self.tls = tls
        self.maxIdle = maxIdle
    }

    private func pool(on loop: any EventLoop) -> UpstreamPool {
        loop.preconditionInEventLoop()
        if let box = pools.currentValue { return box.pool }
        let box = UpstreamPoolBox()
        pools.currentValue = box
        return box.pool
    }

    /// An idle pooled connection to `target`, taken at once (no future: this
    /// is every keep-alive request's path), or nil.
    func takeIdle(_ target: BackendTarget, on loop: any EventLoop) -> UpstreamConnection? {
        let key = UpstreamKey(target)
        let pool = pool(on: loop)
        let oldest = NIODeadline.now() - idleLifetime
        // Popped in place: a copy of the list would cost an allocation per request.
        while let connection = pool.idle[key]?.popLast() {
            if pool.idle[key]?.isEmpty == true { pool.idle[key] = nil }
            if connection.channel.isActive && connection.idleSince > oldest {
                connection.reused = true
                return connection
            }
            connection.channel.close(promise: nil)
        }
        return nil
    }

    /// Opens a new connection, never from the pool.
    func connect(_ target: BackendTarget, key: UpstreamKey, on loop: any EventLoop) -> EventLoopFuture<UpstreamConnection> {
        let tls = self.tls
        if target.isSecure && tls == nil {
            return loop.makeFailedFuture(ProxyError.noBackendTLS)
        }
        return ClientBootstrap(group: loop)
            .connectTimeout(.milliseconds(max(1, target.connectTimeoutMs)))
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if target.isSecure, let tls {
                        try sync.addHandler(TLSHandler(context: tls, serverHostname: target.host))
                    }
                    try sync.addHTTPClientHandlers()
                    try sync.addHandler(UpstreamHandler())
                }
            }
            .connect(host: target.host, port: target.port)
            .flatMapThrowing { channel in
                let handler = try channel.pipeline.syncOperations.handler(type: UpstreamHandler.self)
                return UpstreamConnection(channel: channel, handler: handler, key: key)
            }
    }

    /// Gives a connection whose exchange ended cleanly back to its loop's
    /// pool, or closes it when the pool is full.
    func release(_ connection: UpstreamConnection) {
        let loop = connection.channel.eventLoop
        let pool = pool(on: loop)
        connection.handler.delegate = nil
        connection.handler.resume()
        guard connection.channel.isActive, pool.idle[connection.key, default: []].count < maxIdle else {
            connection.channel.close(promise: nil)
            return
        }
        connection.idleSince = .now()
        pool.idle[connection.key, default: []].append(connection)
        if connection.handler.onClose == nil {
            // Set once per connection: closed while idle, it leaves the pool (closed in use, it is not there).
            let channel = connection.channel, key = connection.key
            connection.handler.onClose = { [unowned pool] in
                pool.idle[key]?.removeAll { $0.channel === channel }
                if pool.idle[key]?.isEmpty == true { pool.idle[key] = nil }
            }
        }
        if pool.sweep == nil {
            let lifetime = idleLifetime
            // The task runs on the pool's own loop, the only thread that touches it.
            let bound = NIOLoopBound(pool, eventLoop: loop)
            pool.sweep = loop.scheduleRepeatedTask(initialDelay: .seconds(5), delay: .seconds(5)) { _ in
                let oldest = NIODeadline.now() - lifetime
                for connections in bound.value.idle.values {
                    for connection in connections where connection.idleSince <= oldest { connection.channel.close(promise: nil) }
                }
            }
        }
    }
}

/// Holds a loop's pool in its thread-specific variable.
final class UpstreamPoolBox: @unchecked Sendable {
    // Sendable only to satisfy ThreadSpecificVariable's constraint: each box is
    // created, stored and used by one event loop thread and never handed to another.
    let pool = UpstreamPool()
}

enum ProxyError: Error, CustomStringConvertible {
    case noBackendTLS

    var description: String {
        switch self {
        case .noBackendTLS: "no TLS context for HTTPS backends (backend_ca_file)"
        }
    }
}
