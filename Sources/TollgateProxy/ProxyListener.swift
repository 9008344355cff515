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
            let sync = channel.pipeline.syncOperations
            if let tls { try sync.addHandler(TLSHandler(context: tls())) }
            let timer = ConnectionTimer(idleTimeout: .milliseconds(limits.idleTimeoutMs), headerTimeout: .milliseconds(limits.headerTimeoutMs))
            try sync.addHandler(timer)
            try sync.configureHTTPServerPipeline(withPipeliningAssistance: true, withErrorHandling: true)
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
    private var scheduled: Scheduled<Void>?
    private var headerTimerArmed = false
    private var context: ChannelHandlerContext?

    init(idleTimeout: TimeAmount, headerTimeout: TimeAmount) {
        self.idleTimeout = idleTimeout
        self.headerTimeout = headerTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) {
        cancel()
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        armIdle()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if awaitingHead && !headerTimerArmed {
            headerTimerArmed = true
            arm(headerTimeout) { context in
                // The head has not arrived in time: refuse and close.
                var buffer = context.channel.allocator.buffer(capacity: 96)
                buffer.writeString("HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                let channel = context.channel
                context.writeAndFlush(NIOAny(buffer)).whenComplete { _ in channel.close(promise: nil) }
            }
        }
        context.fireChannelRead(data)
    }

    /// A request head was parsed: no timer until the exchange is over (the
    /// exchange keeps its own backend timeouts).
    func headReceived() {
        awaitingHead = false
        headerTimerArmed = false
        cancel()
    }

    /// The exchange ended and the connection stays open for the next request.
    func exchangeFinished() {
        awaitingHead = true
        headerTimerArmed = false
        armIdle()
    }

    private func armIdle() {
        arm(idleTimeout) { $0.close(promise: nil) }
    }

    private func arm(_ timeout: TimeAmount, _ action: @escaping (ChannelHandlerContext) -> Void) {
        cancel()
        guard let context else { return }
        let bound = NIOLoopBound((context, action), eventLoop: context.eventLoop)
        scheduled = context.eventLoop.scheduleTask(in: timeout) {
            let (context, action) = bound.value
            action(context)
        }
    }

    private func cancel() {
        scheduled?.cancel()
        scheduled = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        cancel()
        context.fireChannelInactive()
    }
}

@available(*, unavailable)
extension ConnectionTimer: Sendable {}

/// Header fields that describe one connection, never forwarded (RFC 9110 §7.6.1).
enum HopByHop {
    static let names: Set<String> = ["connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
                                     "te", "trailer", "transfer-encoding", "upgrade"]

    /// Drops hop-by-hop fields, and any field the `Connection` header names.
    static func strip(_ headers: HTTPHeaders) -> [(String, String)] {
        var named: Set<String> = []
        for value in headers["connection"] {
            for token in value.split(separator: ",") { named.insert(token.trimmingCharacters(in: " \t").lowercased()) }
        }
        var kept: [(String, String)] = []
        kept.reserveCapacity(headers.count)
        for (name, value) in headers {
            let lower = name.lowercased()
            if names.contains(lower) || named.contains(lower) { continue }
            kept.append((name, value))
        }
        return kept
    }
}

extension StringProtocol {
    func trimmingCharacters(in set: String) -> Substring {
        let scalars = Set(set.unicodeScalars)
        var slice = Substring(self)
        while let first = slice.unicodeScalars.first, scalars.contains(first) { slice = slice.dropFirst() }
        while let last = slice.unicodeScalars.last, scalars.contains(last) { slice = slice.dropLast() }
        return slice
    }
}
