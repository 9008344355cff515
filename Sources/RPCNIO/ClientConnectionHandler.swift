import NIOCore
import RPCCore
import TollgateProto
import TollgateTLS

/// What a client call receives on its stream.
enum ClientStreamEvent: Sendable {
    case headers(Metadata)
    case message([UInt8])
    case trailers(RPCError?, Metadata)
}

/// One client-side connection: opens streams, routes their frames to the
/// calls, answers PING, honours GOAWAY. Lives on the channel's event loop.
final class ClientConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame

    private final class Stream {
        var state = StreamState(role: .client)
        let events: AsyncThrowingStream<ClientStreamEvent, any Error>.Continuation
        var sendWindow: Int
        var windowWaiters: [(frame: Frame, promise: EventLoopPromise<Void>)] = []
        var consumedUngranted = 0

        init(events: AsyncThrowingStream<ClientStreamEvent, any Error>.Continuation, sendWindow: Int) {
            self.events = events
            self.sendWindow = sendWindow
        }
    }

    private let limits: RPCLimits
    private var context: ChannelHandlerContext?
    private var streams: [UInt32: Stream] = [:]
    private var nextStreamID: UInt32 = 1
    private var peerInitialWindow = 1024 * 1024
    /// Set by GOAWAY: no stream above it will be processed.
    private var goAwayLimit: UInt32?
    let ready: EventLoopPromise<Void>

    init(limits: RPCLimits, ready: EventLoopPromise<Void>) {
        self.limits = limits
        self.ready = ready
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted(let session)? = event as? TLSEvent {
            guard session.negotiatedProtocol == RPCServer.alpn else {
                ready.fail(RPCError(.unavailable, "the server did not select \(RPCServer.alpn)"))
                context.close(promise: nil)
                return
            }
            context.writeAndFlush(wrapOutboundOut(limits.settingsFrame), promise: nil)
            ready.succeed()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        ready.fail(error)
        if let error = error as? ConnectionError {
            context.writeAndFlush(wrapOutboundOut(goAwayFrame(lastStreamID: 0, reason: error.reason.goAwayReason, message: error.message)), promise: nil)
        }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        ready.fail(RPCError(.unavailable, "connection closed"))
        for stream in streams.values {
            stream.events.finish(throwing: RPCError(.unavailable, "connection closed"))
            for waiter in stream.windowWaiters { waiter.promise.fail(RPCError(.unavailable, "connection closed")) }
        }
        streams.removeAll()
        self.context = nil
        context.fireChannelInactive()
    }

    var isUsable: Bool { context != nil && goAwayLimit == nil && nextStreamID < UInt32.max - 1 }

    // MARK: Calls (on the loop)

    /// Opens a stream: sends HEADERS, returns its id and its events.
    func open(headers: RpcRequestHeaders, endStream: Bool) -> Result<(UInt32, AsyncThrowingStream<ClientStreamEvent, any Error>), RPCError> {
        guard let context, goAwayLimit == nil else { return .failure(RPCError(.unavailable, "connection is closing")) }
        let id = nextStreamID
        nextStreamID += 1
        let (events, continuation) = AsyncThrowingStream<ClientStreamEvent, any Error>.makeStream()
        let stream = Stream(events: continuation, sendWindow: peerInitialWindow)
        try? stream.state.send(.headers, flags: endStream ? .endStream : [])
        streams[id] = stream
        context.writeAndFlush(wrapOutboundOut(Frame(type: .headers, flags: endStream ? .endStream : [], streamID: id,
                                                     payload: headers.serializedBytes())), promise: nil)
        return .success((id, events))
    }

    func sendMessage(streamID: UInt32, bytes: [UInt8], endStream: Bool) -> EventLoopFuture<Void> {
        guard let context else { return ready.futureResult.eventLoop.makeFailedFuture(RPCError(.unavailable, "connection closed")) }
        // The server may end a call (TRAILERS or CANCEL) before the client has
        // sent everything; the outcome is in the call's events, so a message
        // for an ended stream is simply dropped.
        guard let stream = streams[streamID] else { return context.eventLoop.makeSucceededVoidFuture() }
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
        return context.writeAndFlush(wrapOutboundOut(frame))
    }

    func endStream(streamID: UInt32) {
        guard let context, let stream = streams[streamID], (try? stream.state.send(.endStream)) != nil else { return }
        if stream.windowWaiters.isEmpty {
            context.writeAndFlush(wrapOutboundOut(Frame(type: .endStream, streamID: streamID)), promise: nil)
        } else {
            // Keep order: the end goes after the messages still waiting for window.
            let promise = context.eventLoop.makePromise(of: Void.self)
            stream.windowWaiters.append((Frame(type: .endStream, streamID: streamID), promise))
        }
    }

    func cancel(streamID: UInt32, code: RPCCode, message: String) {
        guard let context, let stream = streams.removeValue(forKey: streamID) else { return }
        stream.events.finish(throwing: RPCError(code, message))
        for waiter in stream.windowWaiters { waiter.promise.fail(RPCError(code, message)) }
        context.writeAndFlush(wrapOutboundOut(cancelFrame(streamID: streamID, code: code, message: message)), promise: nil)
    }

    func consumed(_ bytes: Int, streamID: UInt32) {
        guard let context, let stream = streams[streamID] else { return }
        stream.consumedUngranted += bytes
        if stream.consumedUngranted >= limits.initialWindowSize / 2 {
            let grant = stream.consumedUngranted
            stream.consumedUngranted = 0
            context.writeAndFlush(wrapOutboundOut(windowUpdateFrame(streamID: streamID, increment: grant)), promise: nil)
        }
    }

    // MARK: Frames

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        let id = frame.header.streamID
        switch frame.header.type {
        case .settings:
            guard !frame.header.flags.contains(.ack) else { return }
            if let settings = try? RpcSettings(serializedBytes: frame.payload), settings.initialWindowSize > 0 {
                peerInitialWindow = Int(settings.initialWindowSize)
            }
            context.writeAndFlush(wrapOutboundOut(Frame(type: .settings, flags: .ack, streamID: 0)), promise: nil)
        case .ping:
            if !frame.header.flags.contains(.ack) {
                context.writeAndFlush(wrapOutboundOut(Frame(type: .ping, flags: .ack, streamID: 0, payload: frame.payload)), promise: nil)
            }
        case .goAway:
            let goAway = try? RpcGoAway(serializedBytes: frame.payload)
            let limit = goAway?.lastStreamId ?? 0
            goAwayLimit = limit
            for (streamID, stream) in streams where streamID > limit {
                stream.events.finish(throwing: RPCError(.unavailable, "the server is going away; the call was not processed"))
                streams[streamID] = nil
            }
            if streams.isEmpty { context.close(promise: nil) }
        case .headers, .message, .trailers, .cancel, .windowUpdate, .endStream:
            guard let stream = streams[id] else { return }
            let event: StreamState.Event
            do {
                event = try stream.state.receive(frame.header.type, flags: frame.header.flags)
            } catch {
                cancel(streamID: id, code: .internal, message: error.message)
                return
            }
            switch event {
            case .responseHeaders:
                let headers = (try? RpcResponseHeaders(serializedBytes: frame.payload)) ?? RpcResponseHeaders()
                stream.events.yield(.headers(Metadata(protoEntries: headers.metadata)))
            case .responseMessage:
                stream.events.yield(.message(frame.payload))
            case .trailers:
                streams[id] = nil
                guard let trailers = try? RpcTrailers(serializedBytes: frame.payload) else {
                    stream.events.finish(throwing: RPCError(.internal, "TRAILERS do not decode"))
                    break
                }
                let code = trailers.code <= 16 ? RPCCode(rawValue: trailers.code) : .unknown
                let metadata = Metadata(protoEntries: trailers.metadata)
                stream.events.yield(.trailers(code == .ok ? nil : RPCError(code, trailers.message, metadata: metadata), metadata))
                stream.events.finish()
            case .cancelled:
                streams[id] = nil
                let cancel = try? RpcCancel(serializedBytes: frame.payload)
                let code = cancel.map { $0.code == 0 || $0.code > 16 ? RPCCode.unknown : RPCCode(rawValue: $0.code) } ?? .unknown
                stream.events.finish(throwing: RPCError(code, cancel?.message ?? ""))
            case .windowUpdate:
                stream.sendWindow += windowIncrement(frame.payload)
                while stream.sendWindow > 0, !stream.windowWaiters.isEmpty {
                    let waiter = stream.windowWaiters.removeFirst()
                    stream.sendWindow -= waiter.frame.payload.count
                    context.writeAndFlush(wrapOutboundOut(waiter.frame)).cascade(to: waiter.promise)
                }
            case .requestMessage, .requestsEnded, .ignored:
                break
            }
            if goAwayLimit != nil && streams.isEmpty { context.close(promise: nil) }
        }
    }
}

@available(*, unavailable)
extension ClientConnectionHandler: Sendable {}
