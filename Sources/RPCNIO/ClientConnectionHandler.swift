import Synchronization
import NIOCore
import RPCCore
import TollgateProto
import TollgateTLS

/// What a streaming client call receives on its stream.
enum ClientStreamEvent: Sendable {
    case headers(Metadata)
    case message([UInt8])
    case trailers(RPCError?, Metadata)
}

/// Whether a connection has received GOAWAY, readable from any thread.
final class GoAwayFlag: Sendable {
    let value = Atomic<Bool>(false)
}

/// One call as the connection handler sees it, created by the calling task
/// and handed to the loop.
final class ClientCallToken: @unchecked Sendable {
    // @unchecked: every stored property is read and written on the
    // connection's event loop only (the token is created off the loop, then
    // reaches the loop through `execute`, which orders the accesses).
    var streamID: UInt32?
    var ended = false
}

/// One client-side connection: opens streams (queuing calls beyond the
/// server's `max_concurrent_streams`), routes frames to the calls, honours
/// GOAWAY. The protocol's connection rules (SETTINGS, PING, GOAWAY, stream
/// ids and limits, flow control) are RPCCore's ``ConnectionStateMachine``,
/// shared with the server: this feeds it frames and carries out what it
/// answers. Lives on the channel's event loop. Frames are written as
/// produced and flushed once per loop turn.
final class ClientConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = Frame
    typealias OutboundOut = ByteBuffer

    /// Where a stream's responses go.
    enum Receiver {
        /// A unary call: one message collected, resumed at the trailers.
        case unary(CheckedContinuation<[UInt8], any Error>, response: [UInt8]?, deadline: Scheduled<Void>?)
        case events(AsyncThrowingStream<ClientStreamEvent, any Error>.Continuation)
    }

    private final class Stream {
        var receiver: Receiver
        let token: ClientCallToken
        /// MESSAGE frames waiting for send window, and an END_STREAM behind
        /// them, oldest first.
        var windowWaiters: [(frame: Frame, promise: EventLoopPromise<Void>)] = []

        init(receiver: Receiver, token: ClientCallToken) {
            self.receiver = receiver
            self.token = token
        }

        /// Ends the call with `error` (nil: the trailers said OK).
        func end(_ error: RPCError?, trailers: Metadata = Metadata()) {
            token.ended = true
            switch receiver {
            case .unary(let continuation, let response, let deadline):
                deadline?.cancel()
                if let error {
                    continuation.resume(throwing: error)
                } else if let response {
                    continuation.resume(returning: response)
                } else {
                    continuation.resume(throwing: RPCError(.internal, "the server sent no response message"))
                }
            case .events(let events):
                if let error {
                    events.finish(throwing: error)
                } else {
                    events.yield(.trailers(nil, trailers))
                    events.finish()
                }
            }
            for waiter in windowWaiters { waiter.promise.fail(error ?? RPCError(.internal, "call ended")) }
            windowWaiters = []
        }
    }

    /// A call waiting for a stream slot.
    private struct PendingOpen {
        let headers: RpcRequestHeaders
        let message: [UInt8]?
        let receiver: Receiver
        let token: ClientCallToken
        let opened: EventLoopPromise<UInt32>?
    }

    private var context: ChannelHandlerContext?
    /// The calls of the streams open in `machine`, by stream id.
    private var streams: [UInt32: Stream] = [:]
    private var machine: ConnectionStateMachine
    private var pending: [PendingOpen] = []
    private var pendingStart = 0
    private var flushScheduled = false
    /// Why the connection failed, when it did: calls failing later say so.
    private var closeReason: String?
    let ready: EventLoopPromise<Void>
    /// Set once GOAWAY arrives, readable from any thread.
    let goingAway: GoAwayFlag

    init(limits: RPCLimits, ready: EventLoopPromise<Void>, goingAway: GoAwayFlag) {
        self.ready = ready
        self.goingAway = goingAway
        self.machine = ConnectionStateMachine(role: .client, local: limits.settings)
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted(let session)? = event as? TLSEvent {
            guard session.negotiatedProtocol == RPCServer.alpn else {
                ready.fail(RPCError(.unavailable, "the server did not select \(RPCServer.alpn)"))
                context.close(promise: nil)
                return
            }
            emit(machine.local.frame, context: context)
            // Ready once the server's SETTINGS arrive: calls then start with
            // its real limits (stream count, frame size), not the defaults.
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        ready.fail(error)
        if closeReason == nil { closeReason = "\(error)" }
        if let error = error as? ConnectionError {
            connectionError(context: context, error)
        } else {
            context.close(promise: nil)
        }
    }

    private func connectionError(context: ChannelHandlerContext, _ error: ConnectionError) {
        if let goAway = machine.connectionError(error) { close(context: context, goAway: goAway) } else { context.close(promise: nil) }
    }

    private func close(context: ChannelHandlerContext, goAway: Frame) {
        emit(goAway, context: context)
        context.flush()
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let closed = RPCError(.unavailable, closeReason.map { "connection closed: \($0)" } ?? "connection closed")
        ready.fail(closed)
        for stream in streams.values { stream.end(closed) }
        streams.removeAll()
        machine.connectionClosed()
        failPending(closed)
        self.context = nil
        context.fireChannelInactive()
    }

    var isUsable: Bool { context != nil && machine.acceptsNewStreams }

    /// Calls waiting for a stream slot. Only for tests, which need to know a
    /// call has reached the loop and been queued before asserting that it
    /// sent nothing.
    var _testOnly_pendingCount: Int { pending[pendingStart...].count { !$0.token.ended } }

    // MARK: Writing

    private func emit(_ frame: Frame, context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(FrameEncoding.buffer(frame, allocator: context.channel.allocator)), promise: nil)
        guard !flushScheduled else { return }
        flushScheduled = true
        context.eventLoop.assumeIsolated().execute { [self] in
            flushScheduled = false
            self.context?.flush()
        }
    }

    // MARK: Calls (on the loop)

    /// Starts a unary call: HEADERS and the request go out together.
    func startUnary(token: ClientCallToken, headers: RpcRequestHeaders, request: [UInt8], timeout: TimeAmount?,
                    continuation: CheckedContinuation<[UInt8], any Error>) {
        if token.ended { return continuation.resume(throwing: RPCError(.cancelled, "cancelled by the client")) }
        var deadline: Scheduled<Void>?
        if let timeout, let context {
            deadline = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
                cancel(token: token, code: .deadlineExceeded, message: "deadline exceeded")
            }
        }
        open(PendingOpen(headers: headers, message: request, receiver: .unary(continuation, response: nil, deadline: deadline), token: token, opened: nil))
    }

    /// Starts a streaming call; `opened` gets its stream id once it has a slot.
    func startStream(token: ClientCallToken, headers: RpcRequestHeaders,
                     events: AsyncThrowingStream<ClientStreamEvent, any Error>.Continuation, opened: EventLoopPromise<UInt32>) {
        if token.ended {
            events.finish(throwing: RPCError(.cancelled, "cancelled by the client"))
            return opened.fail(RPCError(.cancelled, "cancelled by the client"))
        }
        open(PendingOpen(headers: headers, message: nil, receiver: .events(events), token: token, opened: opened))
    }

    private func open(_ call: PendingOpen) {
        guard let context else { return fail(call, notSent()) }
        // Encoded before a stream is opened, so a header that cannot be sent
        // (U+0000 in metadata) costs no stream id.
        let headers: [UInt8]
        do {
            headers = try call.headers.serializedBytes()
        } catch {
            return fail(call, RPCError(.internal, "the request headers cannot be sent: \(error)"))
        }
        switch machine.openStream(requestByteCount: call.message?.count) {
        case .closing:
            fail(call, notSent())
        case .refused(let error):
            fail(call, error)
        case .wait:
            pending.append(call)
        case .opened(let id):
            streams[id] = Stream(receiver: call.receiver, token: call.token)
            call.token.streamID = id
            emit(Frame(type: .headers, streamID: id, payload: headers), context: context)
            if let message = call.message {
                emit(Frame(type: .message, flags: .endStream, streamID: id, payload: message), context: context)
            }
            call.opened?.succeed(id)
        }
    }

    private func notSent() -> RPCError {
        RPCError(.unavailable, "the connection is closing\(closeReason.map { " (\($0))" } ?? ""); the call was not sent")
    }

    private func fail(_ call: PendingOpen, _ error: RPCError) {
        call.token.ended = true
        switch call.receiver {
        case .unary(let continuation, _, let deadline):
            deadline?.cancel()
            continuation.resume(throwing: error)
        case .events(let events):
            events.finish(throwing: error)
        }
        call.opened?.fail(error)
    }

    private func failPending(_ error: RPCError) {
        let waiting = pending[pendingStart...]
        pending = []
        pendingStart = 0
        for call in waiting where !call.token.ended { fail(call, error) }
    }

    /// A stream slot came free: the oldest waiting call takes it.
    private func openNextPending() {
        while pendingStart < pending.count, machine.hasStreamCapacity {
            let call = pending[pendingStart]
            pendingStart += 1
            if pendingStart == pending.count {
                pending = []
                pendingStart = 0
            }
            if !call.token.ended { open(call) }
        }
    }

    func sendMessage(streamID: UInt32, bytes: [UInt8], endStream: Bool) -> EventLoopFuture<Void> {
        guard let context else { return ready.futureResult.eventLoop.makeFailedFuture(RPCError(.unavailable, "connection closed")) }
        // The server may end a call (TRAILERS or CANCEL) before the client has
        // sent everything; the outcome is in the call's events, so a message
        // for an ended stream is simply dropped.
        guard let stream = streams[streamID] else { return context.eventLoop.makeSucceededVoidFuture() }
        let frame = Frame(type: .message, flags: endStream ? .endStream : [], streamID: streamID, payload: bytes)
        switch machine.sendMessage(streamID: streamID, byteCount: bytes.count, endStream: endStream, queuedAhead: !stream.windowWaiters.isEmpty) {
        case .now:
            emit(frame, context: context)
            return context.eventLoop.makeSucceededVoidFuture()
        case .waitForWindow:
            let promise = context.eventLoop.makePromise(of: Void.self)
            stream.windowWaiters.append((frame, promise))
            return promise.futureResult
        case .tooLarge(let error):
            cancel(streamID: streamID, code: error.code, message: error.message)
            return context.eventLoop.makeFailedFuture(error)
        case .refused(let error):
            return context.eventLoop.makeFailedFuture(error)
        }
    }

    func endStream(streamID: UInt32) {
        guard let context, let stream = streams[streamID], machine.sendEndStream(streamID: streamID) else { return }
        if stream.windowWaiters.isEmpty {
            emit(Frame(type: .endStream, streamID: streamID), context: context)
        } else {
            // Keep order: the end goes after the messages still waiting for window.
            let promise = context.eventLoop.makePromise(of: Void.self)
            stream.windowWaiters.append((Frame(type: .endStream, streamID: streamID), promise))
        }
    }

    /// Sends what waited for window, in order, while the window is open.
    private func flushWaiting(stream: Stream, id: UInt32, context: ChannelHandlerContext) {
        while let waiter = stream.windowWaiters.first {
            // END_STREAM is not flow-controlled: it only keeps its place.
            if waiter.frame.header.type == .message {
                guard machine.releaseQueuedMessage(streamID: id, byteCount: waiter.frame.payload.count) else { return }
            }
            stream.windowWaiters.removeFirst()
            emit(waiter.frame, context: context)
            waiter.promise.succeed()
        }
    }

    /// Abandons a call, whether it has a stream yet or is still waiting for one.
    func cancel(token: ClientCallToken, code: RPCCode, message: String) {
        if let id = token.streamID {
            cancel(streamID: id, code: code, message: message)
        } else if !token.ended, let index = pending[pendingStart...].firstIndex(where: { $0.token === token }) {
            fail(pending[index], RPCError(code, message))
        } else {
            token.ended = true
        }
    }

    func cancel(streamID: UInt32, code: RPCCode, message: String) {
        guard let context, let stream = streams.removeValue(forKey: streamID) else { return }
        machine.closeStream(streamID)
        stream.end(RPCError(code, message))
        emit(.cancel(streamID: streamID, code: code, message: message), context: context)
        streamEnded()
    }

    func consumed(_ bytes: Int, streamID: UInt32) {
        guard let context, let update = machine.consumed(bytes, streamID: streamID) else { return }
        emit(update, context: context)
    }

    private func streamEnded() {
        openNextPending()
        if machine.isDrained, let context { context.close(promise: nil) }
    }

    // MARK: Frames

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        // The server's reason for going away (a full listener, a refusal),
        // kept for the calls it fails.
        if frame.header.type == .goAway, closeReason == nil, let goAway = try? RpcGoAway(serializedBytes: frame.payload), !goAway.message.isEmpty {
            closeReason = "the server went away: \(goAway.message)"
        }
        switch machine.receive(frame) {
        case .none, .pingAcknowledged:
            break
        case .send(let reply):
            emit(reply, context: context)
        case .settingsApplied(let ack):
            ready.succeed()
            emit(ack, context: context)
            // The server's window may differ from the default the streams
            // opened with; what waited may go now.
            for (id, stream) in streams where !stream.windowWaiters.isEmpty { flushWaiting(stream: stream, id: id, context: context) }
            openNextPending()
        case .goAwayReceived(let limit):
            goingAway.value.store(true, ordering: .relaxed)
            let notProcessed = RPCError(.unavailable, "the server is going away\(closeReason.map { " (\($0))" } ?? ""); the call was not processed")
            for (streamID, stream) in streams where streamID > limit {
                stream.end(notProcessed)
                streams[streamID] = nil
            }
            failPending(notProcessed)
            if streams.isEmpty { context.close(promise: nil) }
        case .streamOpened:
            break  // only a server's machine opens streams on HEADERS
        case .streamEvent(let id, let event, let payload):
            streamEvent(context: context, id: id, event: event, payload: payload)
        case .resetStream(let id, let error, let cancel):
            if let stream = streams.removeValue(forKey: id) { stream.end(error) }
            emit(cancel, context: context)
            streamEnded()
        case .closeConnection(_, let goAway):
            close(context: context, goAway: goAway)
        }
    }

    private func streamEvent(context: ChannelHandlerContext, id: UInt32, event: StreamState.Event, payload: [UInt8]) {
        guard let stream = streams[id] else { return }
        switch event {
        case .responseHeaders:
            if case .events(let events) = stream.receiver {
                let headers = (try? RpcResponseHeaders(serializedBytes: payload)) ?? RpcResponseHeaders()
                events.yield(.headers(Metadata(protoEntries: headers.metadata)))
            }
        case .responseMessage:
            switch stream.receiver {
            case .unary(let continuation, nil, let deadline):
                stream.receiver = .unary(continuation, response: payload, deadline: deadline)
            case .unary:
                cancel(streamID: id, code: .internal, message: "the server sent more than one response message")
            case .events(let events):
                events.yield(.message(payload))
            }
        case .trailers:
            streams[id] = nil
            if let trailers = try? RpcTrailers(serializedBytes: payload) {
                let code = trailers.code <= 16 ? RPCCode(rawValue: trailers.code) : .unknown
                let metadata = Metadata(protoEntries: trailers.metadata)
                stream.end(code == .ok ? nil : RPCError(code, trailers.message, metadata: metadata), trailers: metadata)
            } else {
                stream.end(RPCError(.internal, "TRAILERS do not decode"))
            }
            streamEnded()
        case .cancelled:
            streams[id] = nil
            let cancel = try? RpcCancel(serializedBytes: payload)
            let code = cancel.map { $0.code == 0 || $0.code > 16 ? RPCCode.unknown : RPCCode(rawValue: $0.code) } ?? .unknown
            stream.end(RPCError(code, cancel?.message ?? ""))
            streamEnded()
        case .windowUpdate:
            flushWaiting(stream: stream, id: id, context: context)
        case .requestMessage, .requestsEnded, .ignored:
            break
        }
    }
}

@available(*, unavailable)
extension ClientConnectionHandler: Sendable {}
