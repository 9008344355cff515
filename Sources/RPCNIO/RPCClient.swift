public import NIOCore
import NIOPosix
public import OpenSSLKit
public import RPCCore
public import TollgateProto
import TollgateTLS

/// Per-call options.
public struct CallOptions: Sendable {
    public var metadata: Metadata
    /// The whole call's time budget, sent to the server and enforced here too.
    public var timeout: Duration?

    public init(metadata: Metadata = Metadata(), timeout: Duration? = nil) {
        self.metadata = metadata
        self.timeout = timeout
    }
}

/// A client connection to one node, multiplexing concurrent calls.
public final class RPCConnection: Sendable {
    private let channel: any Channel
    private let handler: NIOLoopBound<ClientConnectionHandler>

    private init(channel: any Channel, handler: NIOLoopBound<ClientConnectionHandler>) {
        self.channel = channel
        self.handler = handler
    }

    /// Connects with TLS (offering `tollgate-rpc/1`) and exchanges SETTINGS.
    public static func connect(host: String, port: Int, serverHostname: String?, tls: TLSContext,
                               limits: RPCLimits = RPCLimits(), group: any EventLoopGroup) async throws -> RPCConnection {
        let loop = group.next()
        let ready = loop.makePromise(of: Void.self)
        let channel = try await ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(TLSHandler(context: tls, serverHostname: serverHostname))
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoderHandler(maxFrameSize: limits.maxFrameSize)))
                    try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(FrameEncoderHandler()))
                    try channel.pipeline.syncOperations.addHandler(ClientConnectionHandler(limits: limits, ready: ready))
                }
            }
            .connect(host: host, port: port).get()
        do {
            try await ready.futureResult.get()
        } catch {
            try? await channel.close()
            throw error
        }
        let handler = try await channel.eventLoop.submit {
            NIOLoopBound(try channel.pipeline.syncOperations.handler(type: ClientConnectionHandler.self), eventLoop: channel.eventLoop)
        }.get()
        return RPCConnection(channel: channel, handler: handler)
    }

    /// Whether new calls can start on this connection (open, no GOAWAY).
    public var isUsable: Bool {
        get async { (try? await channel.eventLoop.submit { self.handler.value.isUsable }.get()) ?? false }
    }

    public func close() async {
        try? await channel.close()
    }

    // MARK: Calls

    public func unary<Request: ProtoMessage, Response: ProtoMessage>(
        _ method: ProtoMethod, _ request: Request, options: CallOptions = CallOptions(), as: Response.Type = Response.self
    ) async throws -> Response {
        try await call(method, options: options) { call in
            try await call.send(request.serializedBytes(), last: true)
            return try await call.onlyResponse(Response.self)
        }
    }

    /// Calls `onResponse` for each response of a server-streaming call.
    public func serverStreaming<Request: ProtoMessage, Response: ProtoMessage>(
        _ method: ProtoMethod, _ request: Request, options: CallOptions = CallOptions(),
        onResponse: @escaping @Sendable (Response) async throws -> Void
    ) async throws {
        try await call(method, options: options) { call in
            try await call.send(request.serializedBytes(), last: true)
            for try await response in call.responses(Response.self) { try await onResponse(response) }
            try Task.checkCancellation()
        }
    }

    public func clientStreaming<Requests: AsyncSequence & Sendable, Response: ProtoMessage>(
        _ method: ProtoMethod, requests: Requests, options: CallOptions = CallOptions(), as: Response.Type = Response.self
    ) async throws -> Response where Requests.Element: ProtoMessage {
        try await call(method, options: options) { call in
            for try await request in requests { try await call.send(request.serializedBytes(), last: false) }
            try await call.endRequests()
            return try await call.onlyResponse(Response.self)
        }
    }

    /// Sends `requests` while `onResponse` receives responses, interleaved.
    public func bidirectional<Requests: AsyncSequence & Sendable, Response: ProtoMessage>(
        _ method: ProtoMethod, requests: Requests, options: CallOptions = CallOptions(),
        onResponse: @escaping @Sendable (Response) async throws -> Void
    ) async throws where Requests.Element: ProtoMessage {
        try await call(method, options: options) { call in
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    for try await request in requests { try await call.send(request.serializedBytes(), last: false) }
                    try await call.endRequests()
                }
                for try await response in call.responses(Response.self) { try await onResponse(response) }
                try Task.checkCancellation()
                try await group.waitForAll()
            }
        }
    }

    /// Opens a stream and runs `body` with it under the call's deadline;
    /// cancelling the task or passing the deadline sends CANCEL.
    private func call<Result: Sendable>(
        _ method: ProtoMethod, options: CallOptions, _ body: @escaping @Sendable (ClientCall) async throws -> Result
    ) async throws -> Result {
        var request = RpcRequestHeaders()
        request.method = method.path
        request.metadata = options.metadata.protoEntries
        let deadline = options.timeout.map { ContinuousClock.now + $0 }
        if let timeout = options.timeout {
            let (seconds, attoseconds) = timeout.components
            request.timeoutMs = UInt64(max(0, seconds * 1000 + attoseconds / 1_000_000_000_000_000))
        }
        let headers = request
        let handler = self.handler
        let opened = try await channel.eventLoop.submit { handler.value.open(headers: headers, endStream: false) }.get()
        let (streamID, events) = try opened.get()
        let call = ClientCall(loop: channel.eventLoop, handler: handler, streamID: streamID, events: events)
        return try await withTaskCancellationHandler {
            do {
                return try await withDeadline(deadline) { try await body(call) }
            } catch let error as RPCError where error.code == .deadlineExceeded {
                call.cancel(code: .deadlineExceeded, message: "deadline exceeded")
                throw error
            } catch is CancellationError {
                call.cancel(code: .cancelled, message: "cancelled by the client")
                throw RPCError(.cancelled, "cancelled by the client")
            }
        } onCancel: {
            call.cancel(code: .cancelled, message: "cancelled by the client")
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
        try await loop.flatSubmit { handler.value.sendMessage(streamID: id, bytes: bytes, endStream: last) }.get()
    }

    func endRequests() async throws {
        let handler = self.handler, id = streamID
        try await loop.submit { handler.value.endStream(streamID: id) }.get()
    }

    func cancel(code: RPCCode, message: String) {
        let handler = self.handler, id = streamID
        loop.execute { handler.value.cancel(streamID: id, code: code, message: message) }
    }

    /// Response messages until the trailers; throws the call's error status.
    func responses<Response: ProtoMessage>(_ type: Response.Type) -> AsyncThrowingStream<Response, any Error> {
        let events = self.events, handler = self.handler, loop = self.loop, id = streamID
        return AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    for try await event in events {
                        switch event {
                        case .headers:
                            continue
                        case .message(let bytes):
                            loop.execute { handler.value.consumed(bytes.count, streamID: id) }
                            do {
                                continuation.yield(try Response(serializedBytes: bytes))
                            } catch {
                                throw RPCError(.internal, "response message does not decode: \(error)")
                            }
                        case .trailers(let error, _):
                            if let error { throw error }
                        }
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// The single response of a unary or client-streaming call.
    func onlyResponse<Response: ProtoMessage>(_ type: Response.Type) async throws -> Response {
        var result: Response?
        for try await response in responses(Response.self) {
            guard result == nil else {
                cancel(code: .internal, message: "more than one response message")
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
