import NIOCore
import OpenSSLKit
import RPCCore
import TollgateProto
import TollgateTLS

/// One server-side connection: SETTINGS, PING, GOAWAY, and a task per call
/// running the method's handler. Lives on the channel's event loop; handler
/// tasks reach it only by hopping onto that loop.
final class ServerConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame

    /// A graceful shutdown request, sent to every connection as a user event.
    struct Quiesce: Sendable {}

    private final class Stream {
        var state = StreamState(role: .server)
        let requests: AsyncThrowingStream<[UInt8], any Error>.Continuation
        var task: Task<Void, Never>?
        var sendWindow: Int
        var windowWaiters: [(bytes: [UInt8], promise: EventLoopPromise<Void>)] = []
        /// Consumed bytes not yet granted back with WINDOW_UPDATE.
        var consumedUngranted = 0
        /// Bytes received and not yet consumed, against our advertised window.
        var receiveWindow: Int
        var requestID: String

        init(requests: AsyncThrowingStream<[UInt8], any Error>.Continuation, sendWindow: Int, receiveWindow: Int, requestID: String) {
            self.requests = requests
            self.sendWindow = sendWindow
            self.receiveWindow = receiveWindow
            self.requestID = requestID
        }
    }

    private let methods: [String: RPCMethodHandler]
    private let limits: RPCLimits
    private let authorize: @Sendable (ServerCallContext) -> RPCError?
    private var context: ChannelHandlerContext?
    /// Kept after the channel closes, so late calls from handler tasks still get a (failed) future.
    private var eventLoop: (any EventLoop)?
    private var streams: [UInt32: Stream] = [:]
    private var lastStreamID: UInt32 = 0
    private var peer: PeerIdentity?
    private var peerInitialWindow = 1024 * 1024
    private var goingAway = false
    private var requestCounter = 0

    init(methods: [String: RPCMethodHandler], limits: RPCLimits, authorize: @escaping @Sendable (ServerCallContext) -> RPCError?) {
        self.methods = methods
        self.limits = limits
        self.authorize = authorize
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.eventLoop = context.eventLoop
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted(let session)? = event as? TLSEvent {
            peer = session.peerCertificate.flatMap { PeerIdentity(certificateURIs: $0.uniformResourceIdentifiers) }
            // Our SETTINGS go first, as soon as TLS is up.
            context.writeAndFlush(wrapOutboundOut(limits.settingsFrame), promise: nil)
        } else if event is Quiesce {
            startGoingAway(context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        for stream in streams.values {
            stream.task?.cancel()
            stream.requests.finish(throwing: RPCError(.unavailable, "connection closed"))
            for waiter in stream.windowWaiters { waiter.promise.fail(RPCError(.unavailable, "connection closed")) }
        }
        streams.removeAll()
        self.context = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? ConnectionError {
            connectionError(context: context, error)
        } else {
            context.fireErrorCaught(error)
        }
    }

    private func connectionError(context: ChannelHandlerContext, _ error: ConnectionError) {
        context.writeAndFlush(wrapOutboundOut(goAwayFrame(lastStreamID: lastStreamID, reason: error.reason.goAwayReason, message: error.message)),
                              promise: nil)
        context.close(promise: nil)
    }

    // MARK: Frames

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.header.type {
        case .settings:
            guard !frame.header.flags.contains(.ack) else { return }
            guard let settings = try? RpcSettings(serializedBytes: frame.payload) else {
                return connectionError(context: context, ConnectionError(.protocolError, "SETTINGS payload does not decode"))
            }
            if settings.initialWindowSize > 0 { peerInitialWindow = Int(settings.initialWindowSize) }
            context.writeAndFlush(wrapOutboundOut(Frame(type: .settings, flags: .ack, streamID: 0)), promise: nil)
        case .ping:
            if !frame.header.flags.contains(.ack) {
                context.writeAndFlush(wrapOutboundOut(Frame(type: .ping, flags: .ack, streamID: 0, payload: frame.payload)), promise: nil)
            }
        case .goAway:
            context.close(promise: nil)
        case .headers:
            openStream(context: context, frame)
        case .message, .endStream, .cancel, .windowUpdate, .trailers:
            streamFrame(context: context, frame)
        }
    }

    private func openStream(context: ChannelHandlerContext, _ frame: Frame) {
        let id = frame.header.streamID
        guard id > lastStreamID else {
            return connectionError(context: context, ConnectionError(.protocolError, "stream id \(id) is not greater than \(lastStreamID)"))
        }
        lastStreamID = id
        guard !goingAway else {
            return send(cancelFrame(streamID: id, code: .unavailable, message: "the server is shutting down"), context: context)
        }
        guard streams.count < limits.maxConcurrentStreams else {
            return send(cancelFrame(streamID: id, code: .resourceExhausted, message: "more than \(limits.maxConcurrentStreams) concurrent calls"), context: context)
        }
        guard let headers = try? RpcRequestHeaders(serializedBytes: frame.payload) else {
            return connectionError(context: context, ConnectionError(.protocolError, "HEADERS payload does not decode"))
        }
        let metadata = Metadata(protoEntries: headers.metadata)
        guard metadata.byteCount <= limits.maxMetadataSize else {
            return send(cancelFrame(streamID: id, code: .resourceExhausted, message: "metadata exceeds \(limits.maxMetadataSize) bytes"), context: context)
        }
        do {
            try metadata.validate()
        } catch {
            return send(cancelFrame(streamID: id, code: .internal, message: error.message), context: context)
        }
        requestCounter += 1
        let requestID = metadata["x-request-id"] ?? "\(lastStreamID)-\(requestCounter)"
        var echo = Metadata()
        echo.add("x-request-id", requestID)
        guard let handler = methods[headers.method] else {
            return send(trailersFrame(streamID: id, error: RPCError(.unimplemented, "unknown method \(headers.method)"), metadata: echo), context: context)
        }
        let deadline = headers.timeoutMs.map { ContinuousClock.now + .milliseconds(Int64(clamping: $0)) }
        let callContext = ServerCallContext(method: handler.method, metadata: metadata, peer: peer, deadline: deadline)
        if let refusal = authorize(callContext) {
            return send(trailersFrame(streamID: id, error: refusal, metadata: echo), context: context)
        }
        if headers.timeoutMs == 0 {
            return send(trailersFrame(streamID: id, error: RPCError(.deadlineExceeded, "deadline exceeded"), metadata: echo), context: context)
        }

        let (requests, continuation) = AsyncThrowingStream<[UInt8], any Error>.makeStream()
        let stream = Stream(requests: continuation, sendWindow: peerInitialWindow, receiveWindow: limits.initialWindowSize, requestID: requestID)
        streams[id] = stream
        if frame.header.flags.contains(.endStream) {
            _ = try? stream.state.receive(.endStream, flags: [])
            continuation.finish()
        }
        let loop = context.eventLoop
        let bound = NIOLoopBound(self, eventLoop: loop)
        let sink = StreamSink(loop: loop, connection: bound, streamID: id)
        let raw = RawRequestStream(base: requests) { bytes in
            loop.execute { bound.value.consumed(bytes, streamID: id) }
        }
        stream.task = Task {
            var failure: RPCError?
            do {
                try await withDeadline(deadline) { try await handler.run(raw, sink, callContext) }
            } catch {
                failure = status(for: error)
            }
            let outcome = failure
            loop.execute { bound.value.finish(streamID: id, error: outcome) }
        }
    }

    private func streamFrame(context: ChannelHandlerContext, _ frame: Frame) {
        let id = frame.header.streamID
        guard let stream = streams[id] else { return }  // closed or refused: late frames are ignored
        let event: StreamState.Event
        do {
            event = try stream.state.receive(frame.header.type, flags: frame.header.flags)
        } catch {
            return abort(stream: id, code: .internal, message: error.message, context: context)
        }
        switch event {
        case .requestMessage(let isLast):
            guard stream.receiveWindow > 0 else {
                return abort(stream: id, code: .resourceExhausted, message: "flow-control window exceeded", context: context)
            }
            stream.receiveWindow -= frame.payload.count
            stream.requests.yield(frame.payload)
            if isLast { stream.requests.finish() }
        case .requestsEnded:
            stream.requests.finish()
        case .cancelled:
            stream.task?.cancel()
            stream.requests.finish(throwing: CancellationError())
            for waiter in stream.windowWaiters { waiter.promise.fail(CancellationError()) }
            streams[id] = nil
            closeIfDrained(context: context)
        case .windowUpdate:
            stream.sendWindow += windowIncrement(frame.payload)
            flushWaiting(stream: stream, id: id, context: context)
        case .responseHeaders, .responseMessage, .trailers, .ignored:
            break
        }
    }

    /// Ends a stream on our side with CANCEL (a stream error; the connection stays).
    private func abort(stream id: UInt32, code: RPCCode, message: String, context: ChannelHandlerContext) {
        guard let stream = streams.removeValue(forKey: id) else { return }
        stream.task?.cancel()
        stream.requests.finish(throwing: RPCError(code, message))
        for waiter in stream.windowWaiters { waiter.promise.fail(RPCError(code, message)) }
        send(cancelFrame(streamID: id, code: code, message: message), context: context)
        closeIfDrained(context: context)
    }

    // MARK: From handler tasks (on the loop)

    fileprivate func consumed(_ bytes: Int, streamID: UInt32) {
        guard let stream = streams[streamID], let context else { return }
        stream.consumedUngranted += bytes
        // Grant in batches of half the window (docs/rpc-protocol.md §8).
        if stream.consumedUngranted >= limits.initialWindowSize / 2 {
            let grant = stream.consumedUngranted
            stream.consumedUngranted = 0
            stream.receiveWindow += grant
            send(windowUpdateFrame(streamID: streamID, increment: grant), context: context)
        }
    }

    fileprivate func sendHeaders(streamID: UInt32, metadata: Metadata) -> EventLoopFuture<Void> {
        guard let stream = streams[streamID], let context else { return closedFuture() }
        do {
            try stream.state.send(.headers)
        } catch {
            return context.eventLoop.makeFailedFuture(RPCError(.internal, error.message))
        }
        var all = metadata
        all.set("x-request-id", stream.requestID)
        let frame = Frame(type: .headers, streamID: streamID, payload: RpcResponseHeaders(metadata: all.protoEntries).serializedBytes())
        return context.writeAndFlush(wrapOutboundOut(frame))
    }

    fileprivate func sendMessage(streamID: UInt32, bytes: [UInt8]) -> EventLoopFuture<Void> {
        guard let stream = streams[streamID], let context else { return closedFuture() }
        guard stream.sendWindow > 0, stream.windowWaiters.isEmpty else {
            let promise = context.eventLoop.makePromise(of: Void.self)
            stream.windowWaiters.append((bytes, promise))
            return promise.futureResult
        }
        return writeMessage(stream: stream, id: streamID, bytes: bytes, context: context)
    }

    private func writeMessage(stream: Stream, id: UInt32, bytes: [UInt8], context: ChannelHandlerContext) -> EventLoopFuture<Void> {
        do {
            try stream.state.send(.message)
        } catch {
            return context.eventLoop.makeFailedFuture(RPCError(.internal, error.message))
        }
        stream.sendWindow -= bytes.count
        return context.writeAndFlush(wrapOutboundOut(Frame(type: .message, streamID: id, payload: bytes)))
    }

    private func flushWaiting(stream: Stream, id: UInt32, context: ChannelHandlerContext) {
        while stream.sendWindow > 0, !stream.windowWaiters.isEmpty {
            let waiter = stream.windowWaiters.removeFirst()
            writeMessage(stream: stream, id: id, bytes: waiter.bytes, context: context).cascade(to: waiter.promise)
        }
    }

    fileprivate func finish(streamID: UInt32, error: RPCError?) {
        guard let stream = streams.removeValue(forKey: streamID), let context else { return }
        for waiter in stream.windowWaiters { waiter.promise.fail(error ?? RPCError(.internal, "call ended")) }
        stream.requests.finish()
        var echo = Metadata()
        echo.add("x-request-id", stream.requestID)
        send(trailersFrame(streamID: streamID, error: error, metadata: echo), context: context)
        closeIfDrained(context: context)
    }

    private func closedFuture() -> EventLoopFuture<Void> {
        // Only reachable from the loop, through a handler task's sink, after handlerAdded.
        eventLoop!.makeFailedFuture(RPCError(.cancelled, "the call has ended"))
    }

    // MARK: Shutdown

    private func startGoingAway(context: ChannelHandlerContext) {
        guard !goingAway else { return }
        goingAway = true
        send(goAwayFrame(lastStreamID: lastStreamID, reason: .shutdown, message: "server shutting down"), context: context)
        closeIfDrained(context: context)
    }

    private func closeIfDrained(context: ChannelHandlerContext) {
        if goingAway && streams.isEmpty { context.close(promise: nil) }
    }

    private func send(_ frame: Frame, context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
    }
}

@available(*, unavailable)
extension ServerConnectionHandler: Sendable {}

/// A handler task's way back to its stream: every call hops onto the loop.
private struct StreamSink: ResponseSink {
    let loop: any EventLoop
    let connection: NIOLoopBound<ServerConnectionHandler>
    let streamID: UInt32

    func sendHeaders(_ metadata: Metadata) async throws {
        try await loop.flatSubmit { connection.value.sendHeaders(streamID: streamID, metadata: metadata) }.get()
    }

    func sendMessage(_ bytes: [UInt8]) async throws {
        try await loop.flatSubmit { connection.value.sendMessage(streamID: streamID, bytes: bytes) }.get()
    }
}

/// Runs `body`, failing with DEADLINE_EXCEEDED (and cancelling it) if `deadline` passes first.
func withDeadline<Value: Sendable>(_ deadline: ContinuousClock.Instant?, _ body: @escaping @Sendable () async throws -> Value) async throws -> Value {
    guard let deadline else { return try await body() }
    return try await withThrowingTaskGroup(of: Value.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(until: deadline, clock: .continuous)
            throw RPCError(.deadlineExceeded, "deadline exceeded")
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}
