import NIOCore
import OpenSSLKit
import RPCCore
import TollgateProto
import TollgateTLS

/// One server-side connection: SETTINGS, PING, GOAWAY, keepalive and idle
/// timers, and a task per call running the method's handler. Lives on the
/// channel's event loop; handler tasks reach it by hopping onto that loop, or
/// directly when they run there (``HandlerPlacement/eventLoop``).
///
/// Frames are written as they are produced and flushed once per turn of the
/// loop, so calls finishing together leave in one TLS write.
final class ServerConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame

    /// A graceful shutdown request, sent to every connection as a user event.
    struct Quiesce: Sendable {}
    /// The drain period is over: calls still running get UNAVAILABLE.
    struct DrainExpired: Sendable {}

    private final class Stream {
        enum Input {
            /// Unary and server-streaming calls: the one request is collected
            /// here before the handler starts.
            case single([UInt8]?)
            /// Client-streaming and bidirectional calls: requests flow to the handler.
            case streaming(AsyncThrowingStream<[UInt8], any Error>.Continuation)
        }

        var state = StreamState(role: .server)
        let handler: RPCMethodHandler
        let callContext: ServerCallContext
        var input: Input
        var task: Task<Void, Never>?
        var deadlineTimer: Scheduled<Void>?
        var sendWindow: Int
        var windowWaiters: [(bytes: [UInt8], promise: EventLoopPromise<Void>)] = []
        /// Consumed bytes not yet granted back with WINDOW_UPDATE.
        var consumedUngranted = 0
        /// Bytes received and not yet consumed, against our advertised window.
        var receiveWindow: Int
        let requestID: String
        let started = ContinuousClock.now

        init(handler: RPCMethodHandler, callContext: ServerCallContext, input: Input, sendWindow: Int, receiveWindow: Int, requestID: String) {
            self.handler = handler
            self.callContext = callContext
            self.input = input
            self.sendWindow = sendWindow
            self.receiveWindow = receiveWindow
            self.requestID = requestID
        }

        /// Ends the handler's side: stops it and fails whatever it waits for.
        func stop(_ error: RPCError) {
            task?.cancel()
            deadlineTimer?.cancel()
            if case .streaming(let requests) = input { requests.finish(throwing: error) }
            for waiter in windowWaiters { waiter.promise.fail(error) }
            windowWaiters = []
        }
    }

    private let methods: [String: RPCMethodHandler]
    private let limits: RPCLimits
    private let authorize: @Sendable (ServerCallContext) throws(RPCError) -> Caller
    private let observer: (any RPCServerObserver)?
    private var context: ChannelHandlerContext?
    /// Kept after the channel closes, so late calls from handler tasks still get a (failed) future.
    private var eventLoop: (any EventLoop)?
    private var loopExecutor: LoopTaskExecutor?
    private var streams: [UInt32: Stream] = [:]
    private var lastStreamID: UInt32 = 0
    private var peer: PeerIdentity?
    private var peerSettings = PeerSettings()
    private var receivedSettings = false
    private var receivedSettingsAck = false
    private var goingAway = false
    private var requestCounter = 0
    private var flushScheduled = false

    // Timers are lazy: each fires at the earliest moment it could matter and
    // re-arms itself if activity moved that moment later, so frames never
    // touch the timer wheel.
    private var handshakeTimer: Scheduled<Void>?
    private var lastFrameAt = NIODeadline.now()
    private var lastActivityAt = NIODeadline.now()
    private var keepaliveTimer: Scheduled<Void>?
    private var idleTimer: Scheduled<Void>?
    private var outstandingPing: (payload: [UInt8], timeout: Scheduled<Void>)?
    private var pingsSent: UInt64 = 0

    init(methods: [String: RPCMethodHandler], limits: RPCLimits, observer: (any RPCServerObserver)?,
         authorize: @escaping @Sendable (ServerCallContext) throws(RPCError) -> Caller) {
        self.methods = methods
        self.limits = limits
        self.observer = observer
        self.authorize = authorize
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.eventLoop = context.eventLoop
        self.loopExecutor = LoopTaskExecutor(eventLoop: context.eventLoop)
        // The TLS handshake and the client's SETTINGS together must fit in
        // the handshake timeout (docs/rpc-protocol.md §1).
        handshakeTimer = context.eventLoop.assumeIsolated().scheduleTask(in: limits.handshakeTimeout) { [self] in
            guard let context = self.context else { return }
            if receivedSettings { return }
            connectionError(context: context, ConnectionError(.protocolError, "no SETTINGS within the handshake timeout"))
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted(let session)? = event as? TLSEvent {
            peer = session.peerCertificate.flatMap { PeerIdentity(certificateURIs: $0.uniformResourceIdentifiers) }
            // Our SETTINGS go first, as soon as TLS is up.
            emit(limits.settingsFrame, context: context)
            lastFrameAt = .now()
            lastActivityAt = .now()
            armKeepalive(context: context, at: lastFrameAt + limits.keepaliveInterval)
            armIdle(context: context, at: lastActivityAt + limits.idleTimeout)
        } else if event is Quiesce {
            startGoingAway(context: context)
        } else if event is DrainExpired {
            for (id, stream) in streams {
                stream.stop(RPCError(.unavailable, "the server's drain period is over"))
                emit(trailersFrame(streamID: id, error: RPCError(.unavailable, "the server's drain period is over"), metadata: echo(stream)), context: context)
            }
            streams.removeAll()
            flush(context: context)
            context.close(promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        for stream in streams.values { stream.stop(RPCError(.unavailable, "connection closed")) }
        streams.removeAll()
        for timer in [handshakeTimer, keepaliveTimer, idleTimer, outstandingPing?.timeout] { timer?.cancel() }
        self.context = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? ConnectionError {
            connectionError(context: context, error)
        } else {
            // TLS failures (bad certificates, garbage before the handshake): the TLS handler closes.
            observer?.connectionFailed(peer: context.remoteAddress?.description ?? "unknown", reason: "\(error)")
            context.fireErrorCaught(error)
        }
    }

    private func connectionError(context: ChannelHandlerContext, _ error: ConnectionError) {
        observer?.connectionFailed(peer: context.remoteAddress?.description ?? "unknown", reason: error.message)
        emit(goAwayFrame(lastStreamID: lastStreamID, reason: error.reason.goAwayReason, message: error.message), context: context)
        flush(context: context)
        context.close(promise: nil)
    }

    // MARK: Writing

    /// Queues a frame; one flush per loop turn sends everything queued.
    private func emit(_ frame: Frame, context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(frame), promise: nil)
        guard !flushScheduled else { return }
        flushScheduled = true
        context.eventLoop.assumeIsolated().execute { [self] in
            guard let context = self.context else { return }
            flush(context: context)
        }
    }

    private func flush(context: ChannelHandlerContext) {
        flushScheduled = false
        context.flush()
    }

    // MARK: Frames

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        lastFrameAt = .now()
        guard receivedSettings || (frame.header.type == .settings && !frame.header.flags.contains(.ack)) else {
            return connectionError(context: context, ConnectionError(.protocolError, "the first frame must be SETTINGS, not \(frame.header.type)"))
        }
        if frame.header.type != .ping { lastActivityAt = lastFrameAt }
        switch frame.header.type {
        case .settings:
            receiveSettings(frame, context: context)
        case .ping:
            receivePing(frame, context: context)
        case .goAway:
            for stream in streams.values { stream.stop(RPCError(.cancelled, "the client is going away")) }
            streams.removeAll()
            context.close(promise: nil)
        case .headers:
            openStream(context: context, frame)
        case .message, .endStream, .cancel, .windowUpdate:
            streamFrame(context: context, frame)
        case .trailers:
            connectionError(context: context, ConnectionError(.protocolError, "TRAILERS from a client"))
        }
    }

    private func receiveSettings(_ frame: Frame, context: ChannelHandlerContext) {
        if frame.header.flags.contains(.ack) {
            guard !receivedSettingsAck else {
                return connectionError(context: context, ConnectionError(.protocolError, "a second SETTINGS ACK"))
            }
            receivedSettingsAck = true
            return
        }
        guard !receivedSettings else {
            return connectionError(context: context, ConnectionError(.protocolError, "a second SETTINGS"))
        }
        do {
            peerSettings = try PeerSettings(payload: frame.payload)
        } catch {
            return connectionError(context: context, error)
        }
        receivedSettings = true
        handshakeTimer?.cancel()
        handshakeTimer = nil
        emit(Frame(type: .settings, flags: .ack, streamID: 0), context: context)
    }

    private func receivePing(_ frame: Frame, context: ChannelHandlerContext) {
        if !frame.header.flags.contains(.ack) {
            emit(Frame(type: .ping, flags: .ack, streamID: 0, payload: frame.payload), context: context)
        } else if let outstanding = outstandingPing, outstanding.payload == frame.payload {
            outstanding.timeout.cancel()
            outstandingPing = nil
        }
    }

    private func openStream(context: ChannelHandlerContext, _ frame: Frame) {
        let id = frame.header.streamID
        guard id > lastStreamID else {
            return connectionError(context: context, ConnectionError(.protocolError, "stream id \(id) is not greater than \(lastStreamID)"))
        }
        guard !goingAway else { return }  // above GOAWAY's last_stream_id: not processed
        lastStreamID = id
        guard streams.count < limits.maxConcurrentStreams else {
            return emit(cancelFrame(streamID: id, code: .resourceExhausted, message: "more than \(limits.maxConcurrentStreams) concurrent calls"), context: context)
        }
        guard let headers = try? RpcRequestHeaders(serializedBytes: frame.payload) else {
            return connectionError(context: context, ConnectionError(.protocolError, "HEADERS payload does not decode"))
        }
        let metadata = Metadata(protoEntries: headers.metadata)
        guard metadata.byteCount <= limits.maxMetadataSize else {
            return emit(cancelFrame(streamID: id, code: .resourceExhausted, message: "metadata exceeds \(limits.maxMetadataSize) bytes"), context: context)
        }
        do {
            try metadata.validate()
        } catch {
            return emit(cancelFrame(streamID: id, code: .internal, message: error.message), context: context)
        }
        requestCounter += 1
        let requestID = metadata["x-request-id"] ?? "\(id)-\(requestCounter)"
        var echo = Metadata()
        echo.add("x-request-id", requestID)
        guard let handler = methods[headers.method] else {
            let error = RPCError(.unimplemented, "unknown method \(headers.method)")
            observer?.callFinished(path: headers.method, code: error.code, duration: .zero, requestID: requestID, caller: .anonymous, message: error.message)
            return emit(trailersFrame(streamID: id, error: error, metadata: echo), context: context)
        }
        let deadline = headers.timeoutMs.map { ContinuousClock.now + .milliseconds(Int64(clamping: $0)) }
        var callContext = ServerCallContext(method: handler.method, metadata: metadata, peer: peer, deadline: deadline)
        do {
            callContext.caller = try authorize(callContext)
        } catch {
            observer?.callFinished(path: headers.method, code: error.code, duration: .zero, requestID: requestID, caller: .anonymous, message: error.message)
            return emit(trailersFrame(streamID: id, error: error, metadata: echo), context: context)
        }
        if headers.timeoutMs == 0 {
            return emit(trailersFrame(streamID: id, error: RPCError(.deadlineExceeded, "deadline exceeded"), metadata: echo), context: context)
        }

        let input: Stream.Input
        var requests: AsyncThrowingStream<[UInt8], any Error>?
        switch handler.body {
        case .unary, .singleRequest:
            input = .single(nil)
        case .streaming:
            let (stream, continuation) = AsyncThrowingStream<[UInt8], any Error>.makeStream()
            requests = stream
            input = .streaming(continuation)
        }
        let stream = Stream(handler: handler, callContext: callContext, input: input, sendWindow: peerSettings.initialWindowSize,
                            receiveWindow: limits.initialWindowSize, requestID: requestID)
        streams[id] = stream
        if let timeout = headers.timeoutMs {
            stream.deadlineTimer = context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(Int64(clamping: timeout))) { [self] in
                fail(streamID: id, RPCError(.deadlineExceeded, "deadline exceeded"))
            }
        }
        if frame.header.flags.contains(.endStream) {
            _ = try? stream.state.receive(.endStream, flags: [])
            requestsEnded(stream: stream, id: id, context: context)
        }
        if let requests { start(stream: stream, id: id, requests: requests, context: context) }
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
            switch stream.input {
            case .single(nil):
                stream.input = .single(frame.payload)
            case .single:
                return fail(streamID: id, RPCError(.internal, "expected exactly one request message"))
            case .streaming(let requests):
                requests.yield(frame.payload)
            }
            if isLast { requestsEnded(stream: stream, id: id, context: context) }
        case .requestsEnded:
            requestsEnded(stream: stream, id: id, context: context)
        case .cancelled:
            report(stream, code: .cancelled, message: "cancelled by the client")
            stream.stop(RPCError(.cancelled, "cancelled by the client"))
            streams[id] = nil
            streamClosed(context: context)
        case .windowUpdate:
            do {
                try grow(&stream.sendWindow, by: frame.payload)
            } catch {
                return connectionError(context: context, error)
            }
            flushWaiting(stream: stream, id: id, context: context)
        case .responseHeaders, .responseMessage, .trailers, .ignored:
            break
        }
    }

    /// The client has sent its last request: a single-request call starts now.
    private func requestsEnded(stream: Stream, id: UInt32, context: ChannelHandlerContext) {
        switch stream.input {
        case .single(let request?):
            start(stream: stream, id: id, request: request, context: context)
        case .single(nil):
            fail(streamID: id, RPCError(.internal, "expected exactly one request message"))
        case .streaming(let requests):
            requests.finish()
        }
    }

    // MARK: Running handlers

    private func start(stream: Stream, id: UInt32, request: [UInt8], context: ChannelHandlerContext) {
        let callContext = stream.callContext
        let sink = makeSink(streamID: id, context: context)
        switch stream.handler.body {
        case .unary(let run):
            launch(stream, id: id, context: context) { .some(try await run(request, callContext)) }
        case .singleRequest(let run):
            launch(stream, id: id, context: context) {
                try await run(request, sink, callContext)
                return nil
            }
        case .streaming:
            preconditionFailure("streaming handlers start when their stream opens")
        }
    }

    private func start(stream: Stream, id: UInt32, requests: AsyncThrowingStream<[UInt8], any Error>, context: ChannelHandlerContext) {
        guard case .streaming(let run) = stream.handler.body else { preconditionFailure("not a streaming handler") }
        let callContext = stream.callContext
        let sink = makeSink(streamID: id, context: context)
        let loop = context.eventLoop
        let bound = NIOLoopBound(self, eventLoop: loop)
        let raw = RawRequestStream(base: requests) { bytes in
            if loop.inEventLoop {
                bound.value.consumed(bytes, streamID: id)
            } else {
                loop.execute { bound.value.consumed(bytes, streamID: id) }
            }
        }
        launch(stream, id: id, context: context) {
            try await run(raw, sink, callContext)
            return nil
        }
    }

    private func makeSink(streamID: UInt32, context: ChannelHandlerContext) -> StreamSink {
        StreamSink(loop: context.eventLoop, connection: NIOLoopBound(self, eventLoop: context.eventLoop), streamID: streamID)
    }

    /// Runs the handler where it is placed; its outcome comes back to the
    /// loop (no hop when it already runs there).
    private func launch(_ stream: Stream, id: UInt32, context: ChannelHandlerContext,
                        _ body: @escaping @Sendable () async throws -> [UInt8]?) {
        let loop = context.eventLoop
        let bound = NIOLoopBound(self, eventLoop: loop)
        let work: @Sendable () async -> Void = {
            let outcome: Result<[UInt8]?, RPCError>
            do {
                outcome = .success(try await body())
            } catch {
                outcome = .failure(status(for: error))
            }
            if loop.inEventLoop {
                bound.value.finish(streamID: id, outcome)
            } else {
                loop.execute { bound.value.finish(streamID: id, outcome) }
            }
        }
        switch stream.handler.placement {
        case .eventLoop: stream.task = Task(executorPreference: loopExecutor!) { await work() }
        case .pool: stream.task = Task { await work() }
        }
    }

    /// Ends a stream on our side with CANCEL (a stream error; the connection stays).
    private func abort(stream id: UInt32, code: RPCCode, message: String, context: ChannelHandlerContext) {
        guard let stream = streams.removeValue(forKey: id) else { return }
        report(stream, code: code, message: message)
        stream.stop(RPCError(code, message))
        emit(cancelFrame(streamID: id, code: code, message: message), context: context)
        streamClosed(context: context)
    }

    /// Ends a stream with an error status in TRAILERS, stopping its handler.
    private func fail(streamID id: UInt32, _ error: RPCError) {
        guard let context, let stream = streams.removeValue(forKey: id) else { return }
        report(stream, code: error.code, message: error.message)
        stream.stop(error)
        emit(trailersFrame(streamID: id, error: error, metadata: echo(stream)), context: context)
        streamClosed(context: context)
    }

    private func echo(_ stream: Stream) -> Metadata {
        var echo = Metadata()
        echo.add("x-request-id", stream.requestID)
        return echo
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
            emit(windowUpdateFrame(streamID: streamID, increment: grant), context: context)
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
        let headers: [UInt8]
        do {
            headers = try RpcResponseHeaders(metadata: all.protoEntries).serializedBytes()
        } catch {
            return context.eventLoop.makeFailedFuture(RPCError(.internal, "the response headers cannot be sent: \(error)"))
        }
        emit(Frame(type: .headers, streamID: streamID, payload: headers), context: context)
        return context.eventLoop.makeSucceededVoidFuture()
    }

    /// Queues a response message. The future completes once it is queued,
    /// which is at once while the stream's send window is open: the window,
    /// not the socket, bounds what a handler can have in flight.
    fileprivate func sendMessage(streamID: UInt32, bytes: [UInt8]) -> EventLoopFuture<Void> {
        guard let stream = streams[streamID], let context else { return closedFuture() }
        guard bytes.count <= peerSettings.maxFrameSize else {
            return context.eventLoop.makeFailedFuture(RPCError(.resourceExhausted, "response message of \(bytes.count) bytes exceeds the client's max_frame_size \(peerSettings.maxFrameSize)"))
        }
        guard stream.sendWindow > 0, stream.windowWaiters.isEmpty else {
            let promise = context.eventLoop.makePromise(of: Void.self)
            stream.windowWaiters.append((bytes, promise))
            return promise.futureResult
        }
        if let error = writeMessage(stream: stream, id: streamID, bytes: bytes, context: context) {
            return context.eventLoop.makeFailedFuture(error)
        }
        return context.eventLoop.makeSucceededVoidFuture()
    }

    private func writeMessage(stream: Stream, id: UInt32, bytes: [UInt8], context: ChannelHandlerContext) -> RPCError? {
        do {
            try stream.state.send(.message)
        } catch {
            return RPCError(.internal, error.message)
        }
        stream.sendWindow -= bytes.count
        emit(Frame(type: .message, streamID: id, payload: bytes), context: context)
        return nil
    }

    private func flushWaiting(stream: Stream, id: UInt32, context: ChannelHandlerContext) {
        while stream.sendWindow > 0, !stream.windowWaiters.isEmpty {
            let waiter = stream.windowWaiters.removeFirst()
            if let error = writeMessage(stream: stream, id: id, bytes: waiter.bytes, context: context) {
                waiter.promise.fail(error)
            } else {
                waiter.promise.succeed()
            }
        }
    }

    /// A handler returned: a unary response goes out with the trailers.
    fileprivate func finish(streamID: UInt32, _ outcome: Result<[UInt8]?, RPCError>) {
        guard let stream = streams.removeValue(forKey: streamID), let context else { return }
        var error: RPCError?
        switch outcome {
        case .success(let response?):
            if response.count > peerSettings.maxFrameSize {
                error = RPCError(.resourceExhausted, "response message of \(response.count) bytes exceeds the client's max_frame_size \(peerSettings.maxFrameSize)")
            } else {
                error = writeMessage(stream: stream, id: streamID, bytes: response, context: context)
            }
        case .success(nil):
            break
        case .failure(let failure):
            error = failure
        }
        report(stream, code: error?.code ?? .ok, message: error?.message ?? "")
        stream.stop(error ?? RPCError(.internal, "call ended"))
        emit(trailersFrame(streamID: streamID, error: error, metadata: echo(stream)), context: context)
        streamClosed(context: context)
    }

    private func report(_ stream: Stream, code: RPCCode, message: String) {
        observer?.callFinished(path: stream.handler.method.path, code: code, duration: ContinuousClock.now - stream.started,
                               requestID: stream.requestID, caller: stream.callContext.caller, message: message)
    }

    private func closedFuture() -> EventLoopFuture<Void> {
        // Only reachable from the loop, through a handler task's sink, after handlerAdded.
        eventLoop!.makeFailedFuture(RPCError(.cancelled, "the call has ended"))
    }

    // MARK: Keepalive, idle, shutdown

    private func armKeepalive(context: ChannelHandlerContext, at deadline: NIODeadline) {
        keepaliveTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            guard let context = self.context else { return }
            let due = lastFrameAt + limits.keepaliveInterval
            guard due <= .now() else { return armKeepalive(context: context, at: due) }
            if outstandingPing == nil {
                pingsSent &+= 1
                let payload = withUnsafeBytes(of: pingsSent.bigEndian) { Array($0) }
                let timeout = context.eventLoop.assumeIsolated().scheduleTask(in: limits.keepaliveTimeout) { [self] in
                    guard let context = self.context else { return }
                    connectionError(context: context, ConnectionError(.keepaliveTimeout, "no PING ACK within \(limits.keepaliveTimeout.nanoseconds / 1_000_000_000) s"))
                }
                outstandingPing = (payload, timeout)
                emit(Frame(type: .ping, streamID: 0, payload: payload), context: context)
            }
            armKeepalive(context: context, at: .now() + limits.keepaliveInterval)
        }
    }

    private func armIdle(context: ChannelHandlerContext, at deadline: NIODeadline) {
        idleTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            guard let context = self.context else { return }
            let due = lastActivityAt + limits.idleTimeout
            guard streams.isEmpty, due <= .now() else { return armIdle(context: context, at: max(due, .now() + .nanoseconds(limits.idleTimeout.nanoseconds / 10))) }
            connectionError(context: context, ConnectionError(.idle, "no call for \(limits.idleTimeout.nanoseconds / 1_000_000_000) s"))
        }
    }

    private func streamClosed(context: ChannelHandlerContext) {
        lastActivityAt = .now()
        if goingAway && streams.isEmpty {
            flush(context: context)
            context.close(promise: nil)
        }
    }

    private func startGoingAway(context: ChannelHandlerContext) {
        guard !goingAway else { return }
        goingAway = true
        emit(goAwayFrame(lastStreamID: lastStreamID, reason: .shutdown, message: "server shutting down"), context: context)
        streamClosed(context: context)
    }
}

@available(*, unavailable)
extension ServerConnectionHandler: Sendable {}

/// A handler task's way back to its stream: direct on the loop, a hop otherwise.
private struct StreamSink: ResponseSink {
    let loop: any EventLoop
    let connection: NIOLoopBound<ServerConnectionHandler>
    let streamID: UInt32

    func sendHeaders(_ metadata: Metadata) async throws {
        if loop.inEventLoop {
            try await connection.value.sendHeaders(streamID: streamID, metadata: metadata).get()
        } else {
            try await loop.flatSubmit { connection.value.sendHeaders(streamID: streamID, metadata: metadata) }.get()
        }
    }

    func sendMessage(_ bytes: [UInt8]) async throws {
        if loop.inEventLoop {
            try await connection.value.sendMessage(streamID: streamID, bytes: bytes).get()
        } else {
            try await loop.flatSubmit { connection.value.sendMessage(streamID: streamID, bytes: bytes) }.get()
        }
    }
}
