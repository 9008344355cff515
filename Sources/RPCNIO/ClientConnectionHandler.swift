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

/// One client-side connection: opens streams (queuing them beyond the
/// server's `max_concurrent_streams`), routes frames to the calls, answers
/// PING, honours GOAWAY. Lives on the channel's event loop. Frames are
/// written as produced and flushed once per loop turn.
final class ClientConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame

    /// Where a stream's responses go.
    enum Receiver {
        /// A unary call: one message collected, resumed at the trailers.
        case unary(CheckedContinuation<[UInt8], any Error>, response: [UInt8]?, deadline: Scheduled<Void>?)
        case events(AsyncThrowingStream<ClientStreamEvent, any Error>.Continuation)
    }

    private final class Stream {
        var state = StreamState(role: .client)
        var receiver: Receiver
        let token: ClientCallToken
        var sendWindow: Int
        var windowWaiters: [(frame: Frame, promise: EventLoopPromise<Void>)] = []
        var consumedUngranted = 0

        init(receiver: Receiver, token: ClientCallToken, sendWindow: Int) {
            self.receiver = receiver
            self.token = token
            self.sendWindow = sendWindow
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

    private let limits: RPCLimits
    private var context: ChannelHandlerContext?
    private var streams: [UInt32: Stream] = [:]
    private var pending: [PendingOpen] = []
    private var pendingStart = 0
    private var nextStreamID: UInt32 = 1
    private var peerSettings = PeerSettings()
    private var receivedSettings = false
    private var flushScheduled = false
    /// Set by GOAWAY: no stream above it will be processed.
    private var goAwayLimit: UInt32?
    /// Why the connection failed, when it did: calls failing later say so.
    private var closeReason: String?
    let ready: EventLoopPromise<Void>
    /// Set once GOAWAY arrives, readable from any thread.
    let goingAway: GoAwayFlag

    init(limits: RPCLimits, ready: EventLoopPromise<Void>, goingAway: GoAwayFlag) {
        self.limits = limits
        self.ready = ready
        self.goingAway = goingAway
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted(let session)? = event as? TLSEvent {
            guard session.negotiatedProtocol == RPCServer.alpn else {
                ready.fail(RPCError(.unavailable, "the server did not select \(RPCServer.alpn)"))
                context.close(promise: nil)
                return
            }
            emit(limits.settingsFrame, context: context)
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
        emit(goAwayFrame(lastStreamID: 0, reason: error.reason.goAwayReason, message: error.message), context: context)
        context.flush()
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let closed = RPCError(.unavailable, closeReason.map { "connection closed: \($0)" } ?? "connection closed")
        ready.fail(closed)
        for stream in streams.values { stream.end(closed) }
        streams.removeAll()
        failPending(closed)
        self.context = nil
        context.fireChannelInactive()
    }

    var isUsable: Bool { context != nil && goAwayLimit == nil && nextStreamID < UInt32.max - 1 }

    // MARK: Writing

    private func emit(_ frame: Frame, context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(frame), promise: nil)
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
        guard let context, goAwayLimit == nil, nextStreamID < UInt32.max - 1 else {
            let reason = closeReason.map { " (\($0))" } ?? ""
            return fail(call, RPCError(.unavailable, "the connection is closing\(reason); the call was not sent"))
        }
        if let message = call.message, message.count > peerSettings.maxFrameSize {
            return fail(call, RPCError(.resourceExhausted, "request message of \(message.count) bytes exceeds the server's max_frame_size \(peerSettings.maxFrameSize)"))
        }
        let headers: [UInt8]
        do {
            headers = try call.headers.serializedBytes()
        } catch {
            return fail(call, RPCError(.internal, "the request headers cannot be sent: \(error)"))
        }
        if streams.count >= peerSettings.maxConcurrentStreams {
            pending.append(call)
            return
        }
        let id = nextStreamID
        nextStreamID += 1
        let stream = Stream(receiver: call.receiver, token: call.token, sendWindow: peerSettings.initialWindowSize)
        call.token.streamID = id
        streams[id] = stream
        let endStream = call.message != nil
        try? stream.state.send(.headers)
        emit(Frame(type: .headers, streamID: id, payload: headers), context: context)
        if let message = call.message {
            try? stream.state.send(.message, flags: .endStream)
            stream.sendWindow -= message.count
            emit(Frame(type: .message, flags: endStream ? .endStream : [], streamID: id, payload: message), context: context)
        }
        call.opened?.succeed(id)
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
        while pendingStart < pending.count, streams.count < peerSettings.maxConcurrentStreams {
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
        guard bytes.count <= peerSettings.maxFrameSize else {
            let error = RPCError(.resourceExhausted, "request message of \(bytes.count) bytes exceeds the server's max_frame_size \(peerSettings.maxFrameSize)")
            cancel(streamID: streamID, code: .resourceExhausted, message: error.message)
            return context.eventLoop.makeFailedFuture(error)
        }
        do {
            try stream.state.send(.message, flags: endStream ? .endStream : [])
        } catch {
            return context.eventLoop.makeFailedFuture(RPCError(.internal, error.message))
        }
        let frame = Frame(type: .message, flags: endStream ? .endStream : [], streamID: streamID, payload: bytes)
        guard stream.sendWindow > 0, stream.windowWaiters.isEmpty else {
            let promise = context.eventLoop.makePromise(of: Void.self)
            stream.windowWaiters.append((frame, promise))
            return promise.futureResult
        }
        stream.sendWindow -= bytes.count
        emit(frame, context: context)
        return context.eventLoop.makeSucceededVoidFuture()
    }

    func endStream(streamID: UInt32) {
        guard let context, let stream = streams[streamID], (try? stream.state.send(.endStream)) != nil else { return }
        if stream.windowWaiters.isEmpty {
            emit(Frame(type: .endStream, streamID: streamID), context: context)
        } else {
            // Keep order: the end goes after the messages still waiting for window.
            let promise = context.eventLoop.makePromise(of: Void.self)
            stream.windowWaiters.append((Frame(type: .endStream, streamID: streamID), promise))
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
        stream.end(RPCError(code, message))
        emit(cancelFrame(streamID: streamID, code: code, message: message), context: context)
        streamEnded()
    }

    func consumed(_ bytes: Int, streamID: UInt32) {
        guard let context, let stream = streams[streamID] else { return }
        stream.consumedUngranted += bytes
        if stream.consumedUngranted >= limits.initialWindowSize / 2 {
            let grant = stream.consumedUngranted
            stream.consumedUngranted = 0
            emit(windowUpdateFrame(streamID: streamID, increment: grant), context: context)
        }
    }

    private func streamEnded() {
        openNextPending()
        if goAwayLimit != nil, streams.isEmpty, let context { context.close(promise: nil) }
    }

    // MARK: Frames

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard receivedSettings || (frame.header.type == .settings && !frame.header.flags.contains(.ack)) else {
            return connectionError(context: context, ConnectionError(.protocolError, "the first frame must be SETTINGS, not \(frame.header.type)"))
        }
        let id = frame.header.streamID
        switch frame.header.type {
        case .settings:
            guard !frame.header.flags.contains(.ack) else { return }
            guard !receivedSettings else {
                return connectionError(context: context, ConnectionError(.protocolError, "a second SETTINGS"))
            }
            let old = peerSettings.initialWindowSize
            do {
                peerSettings = try PeerSettings(payload: frame.payload)
            } catch {
                return connectionError(context: context, error)
            }
            receivedSettings = true
            ready.succeed()
            // Streams opened on the defaults take the difference (docs/rpc-protocol.md §3).
            for stream in streams.values { stream.sendWindow += peerSettings.initialWindowSize - old }
            emit(Frame(type: .settings, flags: .ack, streamID: 0), context: context)
            openNextPending()
        case .ping:
            if !frame.header.flags.contains(.ack) {
                emit(Frame(type: .ping, flags: .ack, streamID: 0, payload: frame.payload), context: context)
            }
        case .goAway:
            let goAway = try? RpcGoAway(serializedBytes: frame.payload)
            let limit = goAway?.lastStreamId ?? 0
            goAwayLimit = limit
            goingAway.value.store(true, ordering: .relaxed)
            let notProcessed = RPCError(.unavailable, "the server is going away; the call was not processed")
            for (streamID, stream) in streams where streamID > limit {
                stream.end(notProcessed)
                streams[streamID] = nil
            }
            failPending(notProcessed)
            if streams.isEmpty { context.close(promise: nil) }
        case .headers, .message, .trailers, .cancel, .windowUpdate:
            streamFrame(context: context, frame, id: id)
        case .endStream:
            connectionError(context: context, ConnectionError(.protocolError, "END_STREAM from a server"))
        }
    }

    private func streamFrame(context: ChannelHandlerContext, _ frame: Frame, id: UInt32) {
        guard let stream = streams[id] else { return }
        let event: StreamState.Event
        do {
            event = try stream.state.receive(frame.header.type, flags: frame.header.flags)
        } catch {
            return cancel(streamID: id, code: .internal, message: error.message)
        }
        switch event {
        case .responseHeaders:
            if case .events(let events) = stream.receiver {
                let headers = (try? RpcResponseHeaders(serializedBytes: frame.payload)) ?? RpcResponseHeaders()
                events.yield(.headers(Metadata(protoEntries: headers.metadata)))
            }
        case .responseMessage:
            switch stream.receiver {
            case .unary(let continuation, nil, let deadline):
                stream.receiver = .unary(continuation, response: frame.payload, deadline: deadline)
            case .unary:
                cancel(streamID: id, code: .internal, message: "the server sent more than one response message")
            case .events(let events):
                events.yield(.message(frame.payload))
            }
        case .trailers:
            streams[id] = nil
            if let trailers = try? RpcTrailers(serializedBytes: frame.payload) {
                let code = trailers.code <= 16 ? RPCCode(rawValue: trailers.code) : .unknown
                let metadata = Metadata(protoEntries: trailers.metadata)
                stream.end(code == .ok ? nil : RPCError(code, trailers.message, metadata: metadata), trailers: metadata)
            } else {
                stream.end(RPCError(.internal, "TRAILERS do not decode"))
            }
            streamEnded()
        case .cancelled:
            streams[id] = nil
            let cancel = try? RpcCancel(serializedBytes: frame.payload)
            let code = cancel.map { $0.code == 0 || $0.code > 16 ? RPCCode.unknown : RPCCode(rawValue: $0.code) } ?? .unknown
            stream.end(RPCError(code, cancel?.message ?? ""))
            streamEnded()
        case .windowUpdate:
            do {
                try grow(&stream.sendWindow, by: frame.payload)
            } catch {
                return connectionError(context: context, error)
            }
            while stream.sendWindow > 0, !stream.windowWaiters.isEmpty {
                let waiter = stream.windowWaiters.removeFirst()
                stream.sendWindow -= waiter.frame.payload.count
                emit(waiter.frame, context: context)
                waiter.promise.succeed()
            }
        case .requestMessage, .requestsEnded, .ignored:
            break
        }
    }
}

@available(*, unavailable)
extension ClientConnectionHandler: Sendable {}
