public import NIOCore
import NIOHTTP1
public import OpenSSLKit
public import RoleCore
import TollgateTLS

/// Limits of an HTTP listener.
public struct HTTPListenerLimits: Sendable, Hashable {
    /// Largest request body read for a responder; larger is 413.
    public var maxBodyBytes = 4 * 1024 * 1024
    /// Time a connection may sit with no request in progress (this also
    /// bounds how long a request's head may take to arrive).
    public var idleTimeout = TimeAmount.seconds(60)
    /// Largest request head (request line and header fields); larger is 431.
    /// NIOHTTP1's parser refuses heads past 80 KiB whatever this says.
    public var maxHeaderBytes = 16 * 1024
    /// Time from a request's head to the end of its body; a slower client
    /// gets 408 and the connection is closed.
    public var readTimeout = TimeAmount.seconds(30)

    public init(maxBodyBytes: Int = 4 * 1024 * 1024, idleTimeout: TimeAmount = .seconds(60), maxHeaderBytes: Int = 16 * 1024,
                readTimeout: TimeAmount = .seconds(30)) {
        self.maxBodyBytes = maxBodyBytes
        self.idleTimeout = idleTimeout
        self.maxHeaderBytes = maxHeaderBytes
        self.readTimeout = readTimeout
    }
}

/// How an HTTP listener sets up a connection: TLS if it has a context,
/// NIOHTTP1's parser and encoder, then a handler that collects each request
/// and answers it through the role's ``HTTPResponder`` (run on the
/// cooperative pool, so a slow responder never stalls the loop).
public enum HTTPListener {
    /// - Parameter tls: read for each new connection, so reloaded
    ///   certificates apply at once; nil serves plain HTTP.
    public static func configure(responder: any HTTPResponder, tls: (@Sendable () -> TLSContext)?, limits: HTTPListenerLimits)
        -> @Sendable (any Channel) throws -> Void {
        { channel in
            let sync = channel.pipeline.syncOperations
            if let tls { try sync.addHandler(TLSHandler(context: tls())) }
            try sync.configureHTTPServerPipeline(withPipeliningAssistance: true, withErrorHandling: true)
            try sync.addHandler(HTTPResponderHandler(responder: responder, limits: limits, isSecure: tls != nil))
        }
    }
}

/// Collects one request at a time and writes the responder's answer.
final class HTTPResponderHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        case idle
        case reading(HTTPRequestHead, ByteBuffer)
        /// The body passed the limit: the rest is read and dropped, then 413.
        case discarding(HTTPRequestHead)
        case responding(keepAlive: Bool)
        /// Refused before its end (head too large, too slow): closing.
        case refused
    }

    private let responder: any HTTPResponder
    private let limits: HTTPListenerLimits
    private let isSecure: Bool
    private var state = State.idle
    private var quiescing = false
    private var idle: IdleTimeout
    private var readDeadline: Scheduled<Void>?

    init(responder: any HTTPResponder, limits: HTTPListenerLimits, isSecure: Bool) {
        self.responder = responder
        self.limits = limits
        self.isSecure = isSecure
        self.idle = IdleTimeout(limits.idleTimeout)
    }

    func channelActive(context: ChannelHandlerContext) {
        idle.arm(context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch (unwrapInboundIn(data), state) {
        case (.head(let head), .idle):
            idle.cancel()
            let headBytes = head.uri.utf8.count + head.headers.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 4 }
            guard headBytes <= limits.maxHeaderBytes else {
                refuse(context: context, head: head, status: 431, "the request head is larger than \(limits.maxHeaderBytes) bytes")
                return
            }
            state = .reading(head, context.channel.allocator.buffer(capacity: 0))
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            readDeadline = context.eventLoop.scheduleTask(in: limits.readTimeout) {
                let (handler, context) = loopBound.value
                guard case .reading(let head, _) = handler.state else { return }
                handler.refuse(context: context, head: head, status: 408, "the request was not received within the read timeout")
            }
        case (.body(var chunk), .reading(let head, var body)):
            if body.readableBytes + chunk.readableBytes > limits.maxBodyBytes {
                state = .discarding(head)
            } else {
                body.writeBuffer(&chunk)
                state = .reading(head, body)
            }
        case (.body, .discarding), (_, .refused):
            break
        case (.end, .reading(let head, let body)):
            cancelReadDeadline()
            respond(context: context, head: head, body: body)
        case (.end, .discarding(let head)):
            cancelReadDeadline()
            write(context: context, head: head, response: .text(413, "the request body is larger than \(limits.maxBodyBytes) bytes"))
        default:
            // Pipelining assistance holds further requests until we answer,
            // so anything else is a parser-level surprise: close.
            context.close(promise: nil)
        }
    }

    private func cancelReadDeadline() {
        readDeadline?.cancel()
        readDeadline = nil
    }

    /// Answers with `status` and closes: what is left of the request is not read.
    private func refuse(context: ChannelHandlerContext, head: HTTPRequestHead, status: Int, _ message: String) {
        cancelReadDeadline()
        state = .refused
        var headers = HTTPHeaders([("Content-Type", "text/plain; charset=utf-8"), ("Connection", "close")])
        let body = context.channel.allocator.buffer(string: message + "\n")
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: HTTPResponseStatus(statusCode: status), headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }

    private func respond(context: ChannelHandlerContext, head: HTTPRequestHead, body: ByteBuffer) {
        state = .responding(keepAlive: head.isKeepAlive)
        let request = HTTPRequest(method: head.method.rawValue, uri: head.uri, headers: head.headers.map { ($0.name, $0.value) },
                                  body: Array(body.readableBytesView), remoteAddress: context.channel.remoteAddress?.description ?? "",
                                  sourceAddress: context.channel.remoteAddress?.ipAddress, isSecure: isSecure)
        let responder = self.responder
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        Task {
            let response = await responder.respond(to: request)
            loop.execute {
                let (handler, context) = bound.value
                handler.write(context: context, head: head, response: response)
            }
        }
    }

    private func write(context: ChannelHandlerContext, head: HTTPRequestHead, response: HTTPResponse) {
        guard context.channel.isActive else { return }
        let keepAlive = head.isKeepAlive && !quiescing
        var headers = HTTPHeaders(response.headers)
        headers.replaceOrAdd(name: "Content-Length", value: String(response.body.count))
        if !keepAlive { headers.replaceOrAdd(name: "Connection", value: "close") }
        let status = HTTPResponseStatus(statusCode: response.status)
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD && !response.body.isEmpty {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: response.body)))), promise: nil)
        }
        state = .idle
        if keepAlive {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            idle.arm(context)
        } else {
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is ListenerQuiesceEvent:
            quiescing = true
            // An idle connection closes now; a busy one after its response.
            if case .idle = state { context.close(promise: nil) }
        case is ListenerDrainExpiredEvent:
            context.close(promise: nil)
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        idle.cancel()
        cancelReadDeadline()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension HTTPResponderHandler: Sendable {}
