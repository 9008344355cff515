import NIOCore
import OpenSSLKit
import RPCCore
import TollgateProto
import TollgateListeners
import TollgateTLS

/// One server-side connection: keepalive, idle and handshake timers, the
/// method lookup and authorization, and a task per call running the method's
/// handler. The protocol's connection rules (SETTINGS, PING, GOAWAY, stream
/// ids and limits, flow control) are RPCCore's ``ConnectionStateMachine``,
/// shared with the client: this feeds it frames and carries out what it
/// answers. Lives on the channel's event loop; handler tasks reach it by
/// hopping onto that loop, or directly when they run there
/// (``HandlerPlacement/eventLoop``).
///
/// Frames are written as they are produced and flushed once per turn of the
/// loop, so calls finishing together leave in one TLS write.
final class ServerConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = Frame
    typealias OutboundOut = ByteBuffer

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

        let handler: RPCMethodHandler
        /// The caller is filled in once authorization ran, in the handler's task.
        var callContext: ServerCallContext
        var input: Input
        var task: Task<Void, Never>?
        var deadlineTimer: Scheduled<Void>?
        /// Response messages waiting for send window, oldest first.
        var windowWaiters: [(message: EncodedMessage, promise: EventLoopPromise<Void>)] = []
        let requestID: String
        let started = ContinuousClock.now
        /// Request bytes received and not yet handed to (or read by) the
        /// handler, reserved in `budget`.
        private(set) var heldBytes = 0
        private let budget: ConnectionBudget

        init(handler: RPCMethodHandler, callContext: ServerCallContext, input: Input, requestID: String, budget: ConnectionBudget) {
            self.handler = handler
            self.callContext = callContext
            self.input = input
            self.requestID = requestID
            self.budget = budget
        }

        /// Reserves a received request's bytes, or says why not.
        func hold(_ count: Int) -> String? {
            if let refusal = budget.reserve(count) { return refusal }
            heldBytes += count
            return nil
        }

        /// The handler took (or read) `count` of the held bytes.
        func handOver(_ count: Int) {
            let released = min(count, heldBytes)
            heldBytes -= released
            budget.release(released)
        }

        /// Ends the handler's side: stops it and fails whatever it waits for.
        func stop(_ error: RPCError) {
            handOver(heldBytes)
            task?.cancel()
            deadlineTimer?.cancel()
            if case .streaming(let requests) = input { requests.finish(throwing: error) }
            for waiter in windowWaiters { waiter.promise.fail(error) }
            windowWaiters = []
        }
    }

    private let methods: [String: RPCMethodHandler]
    /// Who serves the declared methods this server does not.
    private let placement: ServiceRoles?
    private let limits: RPCLimits
    private let authorizer: any CallAuthorizer
    private let observer: (any RPCServerObserver)?
    /// What this connection may hold and open; shared with its frame decoder.
    private let budget: ConnectionBudget
    /// What the listener knows of this connection, for its admission rules.
    private let standing: ConnectionStanding
    private var context: ChannelHandlerContext?
    /// Kept after the channel closes, so late calls from handler tasks still get a (failed) future.
    private var eventLoop: (any EventLoop)?
    private var loopExecutor: LoopTaskExecutor?
    /// The calls of the streams open in `machine`, by stream id.
    private var streams: [UInt32: Stream] = [:]
    /// Fired with the GOAWAY of a graceful shutdown.
    private let stopping = StopSignal()
    private var machine: ConnectionStateMachine
    private var peer: PeerIdentity?
    private var requestCounter = 0
    /// 64 random bits per connection, so request ids (`<prefix>-<n>`) differ
    /// across connections, restarts and nodes and `journalctl
    /// TOLLGATE_REQUEST_ID=…` finds one call; drawn once per connection, not per call.
    private let requestIDPrefix = String(UInt64.random(in: .min ... .max), radix: 16).leftPadded(to: 16)
    private var flushScheduled = false

    // Timers are lazy: each fires at the earliest moment it could matter and
    // re-arms itself if activity moved that moment later, so frames never
    // touch the timer wheel.
    private var handshakeTimer: Scheduled<Void>?
    /// Runs until something on the connection authenticates.
    private var unauthenticatedTimer: Scheduled<Void>?
    private var tlsEstablished = false
    private var lastFrameAt = NIODeadline.now()
    private var lastActivityAt = NIODeadline.now()
    private var keepaliveTimer: Scheduled<Void>?
    private var idleTimer: Scheduled<Void>?
    /// Runs while our keepalive PING awaits its ACK.
    private var pingTimeout: Scheduled<Void>?

    init(methods: [String: RPCMethodHandler], placement: ServiceRoles? = nil, limits: RPCLimits, observer: (any RPCServerObserver)?,
         authorizer: any CallAuthorizer, budget: ConnectionBudget, standing: ConnectionStanding) {
        self.methods = methods
        self.placement = placement
        self.limits = limits
        self.budget = budget
        self.standing = standing
        self.observer = observer
        self.authorizer = authorizer
        self.machine = ConnectionStateMachine(role: .server, local: limits.settings)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.eventLoop = context.eventLoop
        self.loopExecutor = LoopTaskExecutor(eventLoop: context.eventLoop)
        // The TLS handshake and the client's SETTINGS together must fit in
        // the handshake timeout (docs/rpc-protocol.md §1).
        handshakeTimer = context.eventLoop.assumeIsolated().scheduleTask(in: limits.handshakeTimeout) { [self] in
            guard let context = self.context else { return }
            if machine.receivedSettings { return }
            connectionError(context: context, ConnectionError(.protocolError, "no SETTINGS within the handshake timeout"))
        }
        // A stranger may not keep a connection for longer than signing in takes (docs/rpc-protocol.md §9).
        unauthenticatedTimer = context.eventLoop.assumeIsolated().scheduleTask(in: limits.unauthenticatedTimeout) { [self] in
            guard let context = self.context, !budget.isAuthenticated else { return }
            connectionError(context: context, ConnectionError(.idle, "nothing authenticated within \(limits.unauthenticatedTimeout.nanoseconds / 1_000_000) ms"))
        }
    }

    /// Something on the connection authenticated: the budgets and admission
    /// rules of strangers no longer apply to it.
    private func authenticated() {
        budget.authenticate()
        standing.authenticated()
        unauthenticatedTimer?.cancel()
        unauthenticatedTimer = nil
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted(let session)? = event as? TLSEvent {
            // A ClientHello without ALPN completes the handshake, then the
            // connection closes without a frame (docs/rpc-protocol.md §1).
            guard session.negotiatedProtocol == RPCServer.alpn else {
                observer?.connectionFailed(peer: context.remoteAddress?.description ?? "unknown", reason: "the client did not offer ALPN \(RPCServer.alpn)")
                context.close(promise: nil)
                return
            }
            peer = session.peerCertificate.flatMap { PeerIdentity(certificateURIs: $0.uniformResourceIdentifiers) }
            tlsEstablished = true
            // Our SETTINGS go first, as soon as TLS is up: before a refusal
            // too, so the client can read the GOAWAY that says why.
            emit(machine.local.frame, context: context)
            // A certificate from the cluster CA (the TLS handler verified it)
            // is enough to lift the budgets of strangers.
            if peer != nil {
                authenticated()
            } else if let refusal = standing.certificateRequired {
                // Admitted on condition of a certificate: its address has its
                // fill of strangers (docs/rpc-protocol.md §9).
                return connectionError(context: context, ConnectionError(.resourceExhausted, refusal))
            }
            lastFrameAt = .now()
            lastActivityAt = .now()
            armKeepalive(context: context, at: lastFrameAt + limits.keepaliveInterval)
            armIdle(context: context, at: lastActivityAt + limits.idleTimeout)
        } else if event is Quiesce || event is ListenerQuiesceEvent {
            startGoingAway(context: context)
        } else if event is ListenerEvictEvent {
            // Before TLS is up there is no way to say why: just close.
            guard tlsEstablished else { return context.close(promise: nil) }
            connectionError(context: context, ConnectionError(.resourceExhausted, "evicted to make room: the listener is full"))
        } else if event is DrainExpired || event is ListenerDrainExpiredEvent {
            for (id, stream) in streams {
                machine.closeStream(id)
                stream.stop(RPCError(.unavailable, "the server's drain period is over"))
                emit(.trailers(streamID: id, error: RPCError(.unavailable, "the server's drain period is over"), metadata: echo(stream)), context: context)
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
        machine.connectionClosed()
        budget.close()
        for timer in [handshakeTimer, unauthenticatedTimer, keepaliveTimer, idleTimer, pingTimeout] { timer?.cancel() }
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
        guard let goAway = machine.connectionError(error) else { return context.close(promise: nil) }
        close(context: context, error: error, goAway: goAway)
    }

    /// Reports a connection error, sends its GOAWAY and closes.
    private func close(context: ChannelHandlerContext, error: ConnectionError, goAway: Frame) {
        observer?.connectionFailed(peer: context.remoteAddress?.description ?? "unknown", reason: error.message)
        emit(goAway, context: context)
        flush(context: context)
        context.close(promise: nil)
    }

    // MARK: Writing

    /// Queues a frame; one flush per loop turn sends everything queued.
    private func emit(_ frame: Frame, context: ChannelHandlerContext) {
        write(FrameEncoding.buffer(frame, allocator: context.channel.allocator), context: context)
    }

    private func write(_ bytes: ByteBuffer, context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(bytes), promise: nil)
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
        if frame.header.type != .ping { lastActivityAt = lastFrameAt }
        switch machine.receive(frame) {
        case .none:
            break
        case .send(let reply):
            emit(reply, context: context)
        case .settingsApplied(let ack):
            handshakeTimer?.cancel()
            handshakeTimer = nil
            emit(ack, context: context)
        case .pingAcknowledged:
            pingTimeout?.cancel()
            pingTimeout = nil
        case .goAwayReceived:
            for stream in streams.values { stream.stop(RPCError(.cancelled, "the client is going away")) }
            streams.removeAll()
            context.close(promise: nil)
        case .streamOpened(let id, let headers, let metadata, let endStream):
            openStream(context: context, id: id, headers: headers, metadata: metadata, endStream: endStream)
        case .streamEvent(let id, let event, let payload):
            streamEvent(context: context, id: id, event: event, payload: payload)
        case .resetStream(let id, let error, let cancel):
            if let stream = streams.removeValue(forKey: id) {
                report(stream, code: error.code, message: error.message)
                stream.stop(error)
            }
            emit(cancel, context: context)
            streamClosed(context: context)
        case .closeConnection(let error, let goAway):
            close(context: context, error: error, goAway: goAway)
        }
    }

    /// A stream the protocol accepted: the method, the caller and the
    /// deadline decide whether its handler runs.
    private func openStream(context: ChannelHandlerContext, id: UInt32, headers: RpcRequestHeaders, metadata: Metadata, endStream: Bool) {
        // The protocol's limit is the machine's; the lower one of a
        // connection that has not authenticated anything is checked here.
        guard streams.count < budget.streamLimit else {
            machine.closeStream(id)
            let error = RPCError(.resourceExhausted, "more than \(budget.streamLimit) concurrent calls before the connection authenticated")
            return emit(.cancel(streamID: id, code: error.code, message: error.message), context: context)
        }
        requestCounter += 1
        let requestID = metadata["x-request-id"] ?? "\(requestIDPrefix)-\(requestCounter)"
        var echo = Metadata()
        echo.add("x-request-id", requestID)
        guard let handler = methods[headers.method] else {
            let error = placement?.unimplemented(headers.method) ?? RPCError(.unimplemented, "unknown method \(headers.method)")
            return refuse(id, path: headers.method, error, requestID: requestID, echo: echo, context: context)
        }
        let deadline = headers.timeoutMs.map { ContinuousClock.now + .milliseconds(Int64(clamping: $0)) }
        // Who the caller is, and whether they may call, is decided in the
        // handler's task before the handler runs (`launch`): a session token
        // is looked up in userdb, which must not happen on the event loop.
        let callContext = ServerCallContext(method: handler.method, metadata: metadata, peer: peer, deadline: deadline,
                                            sourceAddress: context.remoteAddress?.ipAddress, stopping: stopping)
        if headers.timeoutMs == 0 {
            machine.closeStream(id)
            return emit(.trailers(streamID: id, error: RPCError(.deadlineExceeded, "deadline exceeded"), metadata: echo), context: context)
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
        let stream = Stream(handler: handler, callContext: callContext, input: input, requestID: requestID, budget: budget)
        streams[id] = stream
        standing.setBusy(true)
        if let timeout = headers.timeoutMs {
            stream.deadlineTimer = context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(Int64(clamping: timeout))) { [self] in
                fail(streamID: id, RPCError(.deadlineExceeded, "deadline exceeded"))
            }
        }
        if endStream { requestsEnded(stream: stream, id: id, context: context) }
        if let requests { start(stream: stream, id: id, requests: requests, context: context) }
    }

    /// Answers a call whose handler will not run with TRAILERS.
    private func refuse(_ id: UInt32, path: String, _ error: RPCError, requestID: String, echo: Metadata, context: ChannelHandlerContext) {
        machine.closeStream(id)
        observer?.callFinished(path: path, code: error.code, duration: .zero, requestID: requestID, caller: .anonymous, message: error.message,
                               cause: error.cause)
        emit(.trailers(streamID: id, error: error, metadata: echo), context: context)
    }

    private func streamEvent(context: ChannelHandlerContext, id: UInt32, event: StreamState.Event, payload: [UInt8]) {
        guard let stream = streams[id] else { return }
        switch event {
        case .requestMessage(let isLast):
            if let refusal = stream.hold(payload.count) { return overBudget(context: context, id: id, refusal) }
            switch stream.input {
            case .single(nil):
                stream.input = .single(payload)
            case .single:
                return fail(streamID: id, RPCError(.internal, "expected exactly one request message"))
            case .streaming(let requests):
                requests.yield(payload)
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
            flushWaiting(stream: stream, id: id, context: context)
        case .responseHeaders, .responseMessage, .trailers, .ignored:
            break
        }
    }

    /// A request would take the connection or the node beyond its budget:
    /// the stream ends with CANCEL 8, and a connection that has not
    /// authenticated anything is closed with GOAWAY RESOURCE_EXHAUSTED too.
    private func overBudget(context: ChannelHandlerContext, id: UInt32, _ refusal: String) {
        let error = RPCError(.resourceExhausted, refusal)
        if let stream = streams.removeValue(forKey: id) {
            report(stream, code: error.code, message: error.message)
            stream.stop(error)
        }
        machine.closeStream(id)
        emit(.cancel(streamID: id, code: error.code, message: error.message), context: context)
        if budget.isAuthenticated {
            streamClosed(context: context)
        } else {
            connectionError(context: context, ConnectionError(.resourceExhausted, refusal))
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
        // The request is the handler's now, part of its call's own memory.
        stream.handOver(request.count)
        let sink = makeSink(streamID: id, context: context)
        switch stream.handler.body {
        case .unary(let run):
            launch(stream, id: id, context: context) { callContext in .some(try await run(request, callContext)) }
        case .singleRequest(let run):
            launch(stream, id: id, context: context) { callContext in
                try await run(request, sink, callContext)
                return nil
            }
        case .streaming:
            preconditionFailure("streaming handlers start when their stream opens")
        }
    }

    private func start(stream: Stream, id: UInt32, requests: AsyncThrowingStream<[UInt8], any Error>, context: ChannelHandlerContext) {
        guard case .streaming(let run) = stream.handler.body else { preconditionFailure("not a streaming handler") }
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
        launch(stream, id: id, context: context) { callContext in
            try await run(raw, sink, callContext)
            return nil
        }
    }

    private func makeSink(streamID: UInt32, context: ChannelHandlerContext) -> StreamSink {
        StreamSink(loop: context.eventLoop, connection: NIOLoopBound(self, eventLoop: context.eventLoop), streamID: streamID,
                   allocator: context.channel.allocator)
    }

    /// Authorizes the call, then runs the handler where it is placed; the
    /// outcome comes back to the loop (no hop when it already runs there).
    /// A call whose credentials need a lookup (a session token) runs on
    /// the pool even when its handler prefers the loop, so no event loop
    /// waits on userdb.
    private func launch(_ stream: Stream, id: UInt32, context: ChannelHandlerContext,
                        _ body: @escaping @Sendable (ServerCallContext) async throws -> (any ProtoMessage)?) {
        let loop = context.eventLoop
        let bound = NIOLoopBound(self, eventLoop: loop)
        let unauthorized = stream.callContext
        let authorizer = self.authorizer
        let allocator = context.channel.allocator
        let work: @Sendable () async -> Void = {
            let outcome: Result<EncodedMessage?, RPCError>
            var caller = Caller.anonymous
            do {
                var callContext = unauthorized
                callContext.caller = try authorizer.authorize(callContext)
                caller = callContext.caller
                if caller != .anonymous {
                    if loop.inEventLoop {
                        bound.value.callerAuthenticated()
                    } else {
                        loop.execute { bound.value.callerAuthenticated() }
                    }
                }
                // A unary response is serialized here, off the loop, straight into its frame.
                outcome = .success(try await body(callContext).map { try EncodedMessage($0, streamID: id, allocator: allocator) })
            } catch {
                outcome = .failure(status(for: error))
            }
            let decided = caller
            if loop.inEventLoop {
                bound.value.finish(streamID: id, outcome, caller: decided)
            } else {
                loop.execute { bound.value.finish(streamID: id, outcome, caller: decided) }
            }
        }
        if stream.handler.placement == .eventLoop && !authorizer.readsStorage(unauthorized) {
            stream.task = Task(executorPreference: loopExecutor!) { await work() }
        } else {
            stream.task = Task { await work() }
        }
    }

    /// Ends a stream with an error status in TRAILERS, stopping its handler.
    private func fail(streamID id: UInt32, _ error: RPCError) {
        guard let context, let stream = streams.removeValue(forKey: id) else { return }
        machine.closeStream(id)
        report(stream, code: error.code, message: error.message, cause: error.cause)
        stream.stop(error)
        emit(.trailers(streamID: id, error: error, metadata: echo(stream)), context: context)
        streamClosed(context: context)
    }

    private func echo(_ stream: Stream) -> Metadata {
        var echo = Metadata()
        echo.add("x-request-id", stream.requestID)
        return echo
    }

    // MARK: From handler tasks (on the loop)

    /// A call on this connection was admitted with an identity.
    fileprivate func callerAuthenticated() {
        authenticated()
    }

    fileprivate func consumed(_ bytes: Int, streamID: UInt32) {
        streams[streamID]?.handOver(bytes)
        guard let context, let update = machine.consumed(bytes, streamID: streamID) else { return }
        emit(update, context: context)
    }

    fileprivate func sendHeaders(streamID: UInt32, metadata: Metadata) -> EventLoopFuture<Void> {
        guard let stream = streams[streamID], let context else { return closedFuture() }
        do {
            try machine.sendHeaders(streamID: streamID)
        } catch {
            return context.eventLoop.makeFailedFuture(error)
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
    fileprivate func sendMessage(streamID: UInt32, message: EncodedMessage) -> EventLoopFuture<Void> {
        guard let stream = streams[streamID], let context else { return closedFuture() }
        switch machine.sendMessage(streamID: streamID, byteCount: message.payloadCount, queuedAhead: !stream.windowWaiters.isEmpty) {
        case .now:
            write(message.buffer, context: context)
            return context.eventLoop.makeSucceededVoidFuture()
        case .waitForWindow:
            let promise = context.eventLoop.makePromise(of: Void.self)
            stream.windowWaiters.append((message, promise))
            return promise.futureResult
        case .tooLarge(let error), .refused(let error):
            return context.eventLoop.makeFailedFuture(error)
        }
    }

    private func flushWaiting(stream: Stream, id: UInt32, context: ChannelHandlerContext) {
        while let waiter = stream.windowWaiters.first, machine.releaseQueuedMessage(streamID: id, byteCount: waiter.message.payloadCount) {
            stream.windowWaiters.removeFirst()
            write(waiter.message.buffer, context: context)
            waiter.promise.succeed()
        }
    }

    /// A handler returned: a unary response goes out with the trailers.
    fileprivate func finish(streamID: UInt32, _ outcome: Result<EncodedMessage?, RPCError>, caller: Caller) {
        guard let stream = streams.removeValue(forKey: streamID), let context else { return }
        stream.callContext.caller = caller
        var error: RPCError?
        switch outcome {
        case .success(let response?):
            switch machine.sendMessage(streamID: streamID, byteCount: response.payloadCount) {
            case .now:
                write(response.buffer, context: context)
            case .waitForWindow:
                // Not reached: a unary stream has sent nothing before, and a
                // stream's window starts at 1 byte or more.
                error = RPCError(.internal, "the client's flow-control window is closed")
            case .tooLarge(let failure), .refused(let failure):
                error = failure
            }
        case .success(nil):
            break
        case .failure(let failure):
            error = failure
        }
        machine.closeStream(streamID)
        report(stream, code: error?.code ?? .ok, message: error?.message ?? "", cause: error?.cause)
        stream.stop(error ?? RPCError(.internal, "call ended"))
        emit(.trailers(streamID: streamID, error: error, metadata: echo(stream)), context: context)
        streamClosed(context: context)
    }

    private func report(_ stream: Stream, code: RPCCode, message: String, cause: (any Error)? = nil) {
        observer?.callFinished(path: stream.handler.method.path, code: code, duration: ContinuousClock.now - stream.started,
                               requestID: stream.requestID, caller: stream.callContext.caller, message: message, cause: cause)
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
            if let ping = machine.keepalivePing() {
                pingTimeout = context.eventLoop.assumeIsolated().scheduleTask(in: limits.keepaliveTimeout) { [self] in
                    guard let context = self.context else { return }
                    connectionError(context: context, ConnectionError(.keepaliveTimeout, "no PING ACK within \(limits.keepaliveTimeout.nanoseconds / 1_000_000_000) s"))
                }
                emit(ping, context: context)
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
        standing.setBusy(!streams.isEmpty)
        if machine.isDrained {
            flush(context: context)
            context.close(promise: nil)
        }
    }

    private func startGoingAway(context: ChannelHandlerContext) {
        guard let goAway = machine.startQuiescing() else { return }
        emit(goAway, context: context)
        // Long-lived streams watching it end now (UNAVAILABLE), the rest drain.
        stopping.fire()
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

    let allocator: ByteBufferAllocator

    /// Serialized here, in the handler's task, straight into the frame's buffer.
    func sendMessage(_ message: any ProtoMessage) async throws {
        let encoded = try EncodedMessage(message, streamID: streamID, allocator: allocator)
        if loop.inEventLoop {
            try await connection.value.sendMessage(streamID: streamID, message: encoded).get()
        } else {
            try await loop.flatSubmit { connection.value.sendMessage(streamID: streamID, message: encoded) }.get()
        }
    }
}

extension String {
    /// Zeros in front up to `width` characters (fixed-width hex).
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
