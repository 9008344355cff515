import Synchronization
public import NIOCore
import NIOConcurrencyHelpers
import NIOPosix
public import OpenSSLKit
public import RPCCore
public import TollgateProto
public import TollgateListeners
import TollgateTLS

/// A client connection to one node, multiplexing concurrent calls.
public final class RPCConnection: RPCClientTransport {
    private let channel: any Channel
    private let handler: NIOLoopBound<ClientConnectionHandler>
    private let goingAway: GoAwayFlag
    /// Runs tasks on this connection's event loop: a task that makes many
    /// calls here saves a thread hop per call by preferring it.
    public let taskExecutor: LoopTaskExecutor

    /// Wraps a channel whose pipeline ends in `handler`; ``connect(host:port:serverHostname:tls:limits:group:)``
    /// builds one over TLS, the tests one without.
    init(channel: any Channel, handler: NIOLoopBound<ClientConnectionHandler>, goingAway: GoAwayFlag) {
        self.channel = channel
        self.handler = handler
        self.goingAway = goingAway
        self.taskExecutor = LoopTaskExecutor(eventLoop: channel.eventLoop)
    }

    /// Connects with TLS (offering `tollgate-rpc/1`), exchanges SETTINGS,
    /// and returns once the server's SETTINGS have arrived. Fails if that
    /// takes longer than the limits' handshake timeout.
    /// - Parameter localAddress: the IP address to connect from, on a host
    ///   with several; nil lets the system choose.
    public static func connect(host: String, port: Int, serverHostname: String?, tls: TLSContext,
                               limits: RPCLimits = RPCLimits(), localAddress: String? = nil, group: any EventLoopGroup) async throws -> RPCConnection {
        let loop = group.next()
        var bootstrap = ClientBootstrap(group: loop)
        if let localAddress { bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: localAddress, port: 0)) }
        let ready = loop.makePromise(of: Void.self)
        let goingAway = GoAwayFlag()
        let installed = NIOLockedValueBox<NIOLoopBound<ClientConnectionHandler>?>(nil)
        let channel = try await bootstrap
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connectTimeout(limits.handshakeTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(TLSHandler(context: tls, serverHostname: serverHostname))
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoderHandler(maxFrameSize: limits.maxFrameSize)))
                    let handler = ClientConnectionHandler(limits: limits, ready: ready, goingAway: goingAway)
                    try channel.pipeline.syncOperations.addHandler(handler)
                    installed.withLockedValue { $0 = NIOLoopBound(handler, eventLoop: channel.eventLoop) }
                }
            }
            .connect(host: host, port: port).get()
        let timeout = loop.scheduleTask(in: limits.handshakeTimeout) {
            ready.fail(RPCError(.unavailable, "no TLS handshake with \(host):\(port) within \(limits.handshakeTimeout.nanoseconds / 1_000_000_000) s"))
        }
        do {
            try await ready.futureResult.get()
            timeout.cancel()
        } catch {
            timeout.cancel()
            try? await channel.close()
            throw error
        }
        guard let handler = installed.withLockedValue({ $0 }) else { throw RPCError(.internal, "connection handler missing") }
        return RPCConnection(channel: channel, handler: handler, goingAway: goingAway)
    }

    /// Whether new calls can start here, answered without waiting: the
    /// socket is open and no GOAWAY has arrived.
    public var acceptsCalls: Bool { channel.isActive && !goingAway.value.load(ordering: .relaxed) }

    /// Whether new calls can start on this connection (open, no GOAWAY).
    public var isUsable: Bool {
        get async { (try? await channel.eventLoop.submit { self.handler.value.isUsable }.get()) ?? false }
    }

    /// Calls waiting for a stream slot because the server's stream limit is
    /// reached. Only for tests (see ``ClientConnectionHandler/_testOnly_pendingCount``).
    var _testOnly_pendingCount: Int {
        get async throws { try await channel.eventLoop.submit { self.handler.value._testOnly_pendingCount }.get() }
    }

    /// Completes when the connection has closed, for whatever reason.
    public var closed: EventLoopFuture<Void> { channel.closeFuture }

    public func close() async {
        try? await channel.close()
    }

    /// Runs `body` on the loop: directly when already there.
    private func onLoop(_ body: @escaping @Sendable (ClientConnectionHandler) -> Void) {
        let handler = self.handler
        if channel.eventLoop.inEventLoop {
            body(handler.value)
        } else {
            channel.eventLoop.execute { body(handler.value) }
        }
    }

    // MARK: Calls

    private static func headers(_ method: ProtoMethod, _ options: CallOptions) -> RpcRequestHeaders {
        var headers = RpcRequestHeaders()
        headers.method = method.path
        headers.metadata = options.metadata.protoEntries
        headers.timeoutMs = options.timeoutMilliseconds
        return headers
    }

    /// One request, one response: HEADERS and the request leave in one write,
    /// the response arrives with the trailers, and the calling task waits on
    /// nothing else. The deadline is a timer on the connection's loop.
    public func unary<Request: ProtoMessage, Response: ProtoMessage>(
        _ method: ProtoMethod, _ request: Request, options: CallOptions = CallOptions(), as: Response.Type = Response.self
    ) async throws -> Response {
        let headers = Self.headers(method, options)
        let bytes = try request.rpcPayload()
        let timeout = options.timeout.map { TimeAmount.nanoseconds(Int64(clamping: $0.components.seconds * 1_000_000_000 + $0.components.attoseconds / 1_000_000_000)) }
        let token = ClientCallToken()
        let response = try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<[UInt8], any Error>) in
                onLoop { $0.startUnary(token: token, headers: headers, request: bytes, timeout: timeout, continuation: continuation) }
            }
        } onCancel: {
            onLoop { $0.cancel(token: token, code: .cancelled, message: "cancelled by the client") }
        }
        do {
            return try Response(serializedBytes: response)
        } catch {
            throw RPCError(.internal, "response message does not decode: \(error)")
        }
    }

    public func serverStreaming<Request: ProtoMessage, Response: ProtoMessage>(
        _ method: ProtoMethod, _ request: Request, options: CallOptions = CallOptions(),
        onResponse: @escaping @Sendable (Response) async throws -> Void
    ) async throws {
        try await call(method, options: options) { call in
            try await call.send(request.rpcPayload(), last: true)
            for try await response in call.responses(Response.self) { try await onResponse(response) }
            try Task.checkCancellation()
        }
    }

    public func clientStreaming<Requests: AsyncSequence & Sendable, Response: ProtoMessage>(
        _ method: ProtoMethod, requests: Requests, options: CallOptions = CallOptions(), as: Response.Type = Response.self
    ) async throws -> Response where Requests.Element: ProtoMessage {
        try await call(method, options: options) { call in
            for try await request in requests { try await call.send(request.rpcPayload(), last: false) }
            try await call.endRequests()
            return try await call.onlyResponse(Response.self)
        }
    }

    public func bidirectional<Requests: AsyncSequence & Sendable, Response: ProtoMessage>(
        _ method: ProtoMethod, requests: Requests, options: CallOptions = CallOptions(),
        onResponse: @escaping @Sendable (Response) async throws -> Void
    ) async throws where Requests.Element: ProtoMessage {
        try await call(method, options: options) { call in
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    for try await request in requests { try await call.send(request.rpcPayload(), last: false) }
                    try await call.endRequests()
                }
                for try await response in call.responses(Response.self) { try await onResponse(response) }
                try Task.checkCancellation()
                try await group.waitForAll()
            }
        }
    }

    /// Opens a stream (waiting for a slot if the server's stream limit is
    /// reached) and runs `body` with it under the call's deadline; cancelling
    /// the task or passing the deadline sends CANCEL.
    private func call<Result: Sendable>(
        _ method: ProtoMethod, options: CallOptions, _ body: @escaping @Sendable (ClientCall) async throws -> Result
    ) async throws -> Result {
        let headers = Self.headers(method, options)
        let deadline = options.timeout.map { ContinuousClock.now + $0 }
        let token = ClientCallToken()
        let (events, continuation) = AsyncThrowingStream<ClientStreamEvent, any Error>.makeStream()
        let opened = channel.eventLoop.makePromise(of: UInt32.self)
        onLoop { $0.startStream(token: token, headers: headers, events: continuation, opened: opened) }
        return try await withTaskCancellationHandler {
            do {
                return try await withDeadline(deadline) {
                    let streamID = try await opened.futureResult.get()
                    return try await body(ClientCall(loop: self.channel.eventLoop, handler: self.handler, streamID: streamID, events: events))
                }
            } catch let error as RPCError where error.code == .deadlineExceeded {
                onLoop { $0.cancel(token: token, code: .deadlineExceeded, message: "deadline exceeded") }
                throw error
            } catch is CancellationError {
                onLoop { $0.cancel(token: token, code: .cancelled, message: "cancelled by the client") }
                throw RPCError(.cancelled, "cancelled by the client")
            }
        } onCancel: {
            onLoop { $0.cancel(token: token, code: .cancelled, message: "cancelled by the client") }
        }
    }
}

/// One open client stream.
final class ClientCall: Sendable {
    let loop: any EventLoop
    let handler: NIOLoopBound<ClientConnectionHandler>
    let streamID: UInt32
    let events: AsyncThrowingStream<ClientStreamEvent, any Error>

    init(loop: any EventLoop, handler: NIOLoopBound<ClientConnectionHandler>, streamID: UInt32, events: AsyncThrowingStream<ClientStreamEvent, any Error>) {
        self.loop = loop
        self.handler = handler
        self.streamID = streamID
        self.events = events
    }

    func send(_ bytes: [UInt8], last: Bool) async throws {
        let handler = self.handler, id = streamID
        if loop.inEventLoop {
            try await handler.value.sendMessage(streamID: id, bytes: bytes, endStream: last).get()
        } else {
            try await loop.flatSubmit { handler.value.sendMessage(streamID: id, bytes: bytes, endStream: last) }.get()
        }
    }

    func endRequests() async throws {
        let handler = self.handler, id = streamID
        if loop.inEventLoop {
            handler.value.endStream(streamID: id)
        } else {
            try await loop.submit { handler.value.endStream(streamID: id) }.get()
        }
    }

    /// Response messages until the trailers; throws the call's error status.
    func responses<Response: ProtoMessage>(_ type: Response.Type) -> ResponseSequence<Response> {
        ResponseSequence(events: events, loop: loop, handler: handler, streamID: streamID)
    }

    /// The single response of a client-streaming call.
    func onlyResponse<Response: ProtoMessage>(_ type: Response.Type) async throws -> Response {
        var result: Response?
        for try await response in responses(Response.self) {
            guard result == nil else {
                let handler = self.handler, id = streamID
                loop.execute { handler.value.cancel(streamID: id, code: .internal, message: "more than one response message") }
                throw RPCError(.internal, "the server sent more than one response message")
            }
            result = response
        }
        // A cancelled task ends the response stream early; say so, not "no response".
        try Task.checkCancellation()
        guard let result else { throw RPCError(.internal, "the server sent no response message") }
        return result
    }
}

/// A streaming call's responses, decoded as the caller takes them; taking one
/// grants the server more window.
struct ResponseSequence<Response: ProtoMessage>: AsyncSequence, Sendable {
    typealias Element = Response
    let events: AsyncThrowingStream<ClientStreamEvent, any Error>
    let loop: any EventLoop
    let handler: NIOLoopBound<ClientConnectionHandler>
    let streamID: UInt32

    struct AsyncIterator: AsyncIteratorProtocol {
        var events: AsyncThrowingStream<ClientStreamEvent, any Error>.AsyncIterator
        let loop: any EventLoop
        let handler: NIOLoopBound<ClientConnectionHandler>
        let streamID: UInt32

        mutating func next() async throws -> Response? {
            while let event = try await events.next() {
                switch event {
                case .headers:
                    continue
                case .message(let bytes):
                    let handler = self.handler, id = streamID, count = bytes.count
                    if loop.inEventLoop {
                        handler.value.consumed(count, streamID: id)
                    } else {
                        loop.execute { handler.value.consumed(count, streamID: id) }
                    }
                    do {
                        return try Response(serializedBytes: bytes)
                    } catch {
                        throw RPCError(.internal, "response message does not decode: \(error)")
                    }
                case .trailers(let error, _):
                    if let error { throw error }
                    return nil
                }
            }
            return nil
        }
    }

    func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(events: events.makeAsyncIterator(), loop: loop, handler: handler, streamID: streamID)
    }
}
