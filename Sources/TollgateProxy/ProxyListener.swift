public import NIOCore
import NIOHTTP1
public import OpenSSLKit
public import RoleCore
import TollgateTLS

/// The gateway's traffic listener: HTTP/1.1 (over TLS or plain) whose
/// requests the role's ``ProxyPolicy`` routes, streamed to backends over
/// keep-alive connections that belong to the client connection's event loop.
/// A request never changes threads: the client connection, the policy's
/// decision (and its caches) and the backend connection share one loop.
public enum ProxyListener {
    /// - Parameters:
    ///   - tls: read for each new connection, so reloaded certificates apply
    ///     at once; nil serves plain HTTP.
    ///   - backendTLS: the client context HTTPS backends are verified with.
    public static func configure(policy: any ProxyPolicy, limits: ProxyListenerLimits, tls: (@Sendable () -> TLSContext)?,
                                 backendTLS: TLSContext?) -> @Sendable (any Channel) throws -> Void {
        let connector = UpstreamConnector(tls: backendTLS, maxIdle: limits.maxIdleBackendConnections)
        return { channel in
            // A client that half-closes after its request still gets the answer.
            try channel.syncOptions?.setOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            let sync = channel.pipeline.syncOperations
            if let tls { try sync.addHandler(TLSHandler(context: tls())) }
            let timer = ConnectionTimer(idleTimeout: .milliseconds(limits.idleTimeoutMs), headerTimeout: .milliseconds(limits.headerTimeoutMs))
            try sync.addHandler(timer)
            // Pipelining and malformed requests are the proxy handler's own.
            try sync.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: false)
            try sync.addHandler(ProxyServerHandler(policy: policy, limits: limits, isSecure: tls != nil, timer: timer,
                                                   connector: connector))
        }
    }
}

/// Closes a connection that sits idle between requests, and answers 408 to
/// one whose request head takes too long to arrive (slow-header clients).
/// It sits below the HTTP parser and sees raw bytes; the proxy handler tells
/// it when a head was parsed and when an exchange is over.
final class ConnectionTimer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let idleTimeout: TimeAmount
    private let headerTimeout: TimeAmount
    private var awaitingHead = true
    private var headerTimerArmed = false
    private var context: ChannelHandlerContext?
    /// What happens at `deadline`: nothing, closing an idle connection, or
    /// refusing a head that is too slow. One scheduled task at a time, moved
    /// by changing the deadline rather than scheduling anew per request.
    private enum Expiry { case none, idle, header }
    private var expiry = Expiry.none
    private var deadline = NIODeadline.distantFuture
    private var scheduled: Scheduled<Void>?

    init(idleTimeout: TimeAmount, headerTimeout: TimeAmount) {
        self.idleTimeout = idleTimeout
        self.headerTimeout = headerTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) {
        scheduled?.cancel()
        scheduled = nil
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        set(.idle, in: idleTimeout)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if awaitingHead && !headerTimerArmed {
            headerTimerArmed = true
            set(.header, in: headerTimeout)
        }
        context.fireChannelRead(data)
    }

    /// A request head was parsed: no timer until the exchange is over (the
    /// exchange keeps its own backend timeouts).
    func headReceived() {
        awaitingHead = false
        headerTimerArmed = false
        expiry = .none
    }

    /// Closes the connection once everything written to it has gone out
    /// (an empty write completes after those before it).
    func closeAfterWrites() {
        guard let context else { return }
        let channel = context.channel
        context.writeAndFlush(NIOAny(ByteBuffer())).whenComplete { _ in channel.close(promise: nil) }
    }

    /// The exchange ended and the connection stays open for the next request.
    func exchangeFinished() {
        awaitingHead = true
        headerTimerArmed = false
        set(.idle, in: idleTimeout)
    }

    private func set(_ kind: Expiry, in timeout: TimeAmount) {
        expiry = kind
        deadline = .now() + timeout
        if let scheduled {
            // A pending wake-up no later than the new deadline serves: it
            // reschedules itself if it comes early.
            guard deadline < scheduledAt else { return }
            scheduled.cancel()
            self.scheduled = nil
        }
        schedule()
    }

    private var scheduledAt = NIODeadline.distantFuture

    private func schedule() {
        guard let context else { return }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        scheduledAt = deadline
        scheduled = context.eventLoop.scheduleTask(deadline: deadline) {
            let timer = bound.value
            timer.scheduled = nil
            guard timer.expiry != .none, let context = timer.context else { return }
            if NIODeadline.now() < timer.deadline {
                timer.schedule()
                return
            }
            switch timer.expiry {
            case .idle:
                context.close(promise: nil)
            case .header:
                // The head has not arrived in time: refuse and close.
                var buffer = context.channel.allocator.buffer(capacity: 96)
                buffer.writeString("HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                let channel = context.channel
                context.writeAndFlush(NIOAny(buffer)).whenComplete { _ in channel.close(promise: nil) }
            case .none:
                break
            }
            timer.expiry = .none
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        scheduled?.cancel()
        scheduled = nil
        expiry = .none
        context.fireChannelInactive()
    }
}

@available(*, unavailable)
extension ConnectionTimer: Sendable {}

/// Response fields a proxied response drops: the hop-by-hop ones, and those the `Connection` header names.
enum HopByHop {
    /// Drops hop-by-hop fields, and any field the `Connection` header names.
    /// Runs on every response: a response with no such field comes back as it
    /// is (no copy), and `Connection: keep-alive` or `close` (the usual
    /// values, naming no field) cost no allocation.
    static func strip(_ headers: HTTPHeaders) -> HTTPHeaders {
        var named: [String] = []
        var dropsAny = false
        for (name, value) in headers where HopByHopFields.contains(name) {
            dropsAny = true
            guard name.caseInsensitiveEquals("connection") else { continue }
            for token in value.split(separator: ",") {
                guard let first = token.utf8.firstIndex(where: { $0 != UInt8(ascii: " ") && $0 != UInt8(ascii: "\t") }),
                      let last = token.utf8.lastIndex(where: { $0 != UInt8(ascii: " ") && $0 != UInt8(ascii: "\t") }) else { continue }
                let option = String(token[first...last])
                if option.caseInsensitiveEquals("keep-alive") || option.caseInsensitiveEquals("close") { continue }
                named.append(option)
            }
        }
        guard dropsAny else { return headers }
        var kept = HTTPHeaders()
        kept.reserveCapacity(headers.count)
        for (name, value) in headers {
            if HopByHopFields.contains(name) { continue }
            if !named.isEmpty && named.contains(where: { $0.caseInsensitiveEquals(name) }) { continue }
            kept.add(name: name, value: value)
        }
        return kept
    }
}
