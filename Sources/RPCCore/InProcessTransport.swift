public import TollgateProto

/// Calls handlers in the same process, with the same rules as the network
/// server: authorization before the handler, deadlines, messages serialized
/// both ways, errors mapped to statuses. Role logic is tested through this.
public struct InProcessTransport: RPCClientTransport {
    private let methods: [String: RPCMethodHandler]
    private let authorize: @Sendable (ServerCallContext) throws(RPCError) -> Caller
    /// The certificate identity calls appear to come from.
    public var peer: PeerIdentity?

    public init(methods: [RPCMethodHandler], peer: PeerIdentity? = nil,
                authorize: @escaping @Sendable (ServerCallContext) throws(RPCError) -> Caller) {
        self.methods = Dictionary(methods.map { ($0.method.path, $0) }, uniquingKeysWith: { first, _ in first })
        self.peer = peer
        self.authorize = authorize
    }

    /// The same server, called with another certificate identity.
    public func calling(as peer: PeerIdentity?) -> InProcessTransport {
        var copy = self
        copy.peer = peer
        return copy
    }

    private func prepare(_ method: ProtoMethod, _ options: CallOptions) throws(RPCError) -> (RPCMethodHandler, ServerCallContext) {
        try options.metadata.validate()
        guard let handler = methods[method.path] else { throw RPCError(.unimplemented, "unknown method \(method.path)") }
        if options.timeoutMilliseconds == 0 { throw RPCError(.deadlineExceeded, "deadline exceeded") }
        let deadline = options.timeoutMilliseconds.map { ContinuousClock.now + .milliseconds(Int64(clamping: $0)) }
        var context = ServerCallContext(method: handler.method, metadata: options.metadata, peer: peer, deadline: deadline)
        context.caller = try authorize(context)
        return (handler, context)
    }

    /// Runs a handler the way the server does: deadline enforced, errors as statuses.
    private func run<Value: Sendable>(_ context: ServerCallContext, _ body: @escaping @Sendable () async throws -> Value) async throws -> Value {
        do {
            return try await withDeadline(context.deadline, body)
        } catch {
            throw status(for: error)
        }
    }

    public func unary<Request: ProtoMessage, Response: ProtoMessage>(
        _ method: ProtoMethod, _ request: Request, options: CallOptions = CallOptions(), as: Response.Type = Response.self
    ) async throws -> Response {
        let (handler, context) = try prepare(method, options)
        guard case .unary(let body) = handler.body else { throw RPCError(.internal, "\(method.path) is not a unary method") }
        let bytes = try request.rpcPayload()
        let response = try await run(context) { try await body(bytes, context).rpcPayload() }
        return try Self.decode(response)
    }

    public func serverStreaming<Request: ProtoMessage, Response: ProtoMessage>(
        _ method: ProtoMethod, _ request: Request, options: CallOptions = CallOptions(),
        onResponse: @escaping @Sendable (Response) async throws -> Void
    ) async throws {
        let (handler, context) = try prepare(method, options)
        guard case .singleRequest(let body) = handler.body else { throw RPCError(.internal, "\(method.path) is not a server-streaming method") }
        let bytes = try request.rpcPayload()
        let sink = CallbackSink { try await onResponse(try Self.decode($0)) }
        try await run(context) { try await body(bytes, sink, context) }
    }

    public func clientStreaming<Requests: AsyncSequence & Sendable, Response: ProtoMessage>(
        _ method: ProtoMethod, requests: Requests, options: CallOptions = CallOptions(), as: Response.Type = Response.self
    ) async throws -> Response where Requests.Element: ProtoMessage {
        let responses = ResponseBox()
        try await streaming(method, requests: requests, options: options) { bytes in
            guard await responses.set(bytes) else { throw RPCError(.internal, "the server sent more than one response message") }
        }
        guard let bytes = await responses.value else { throw RPCError(.internal, "the server sent no response message") }
        return try Self.decode(bytes)
    }

    public func bidirectional<Requests: AsyncSequence & Sendable, Response: ProtoMessage>(
        _ method: ProtoMethod, requests: Requests, options: CallOptions = CallOptions(),
        onResponse: @escaping @Sendable (Response) async throws -> Void
    ) async throws where Requests.Element: ProtoMessage {
        try await streaming(method, requests: requests, options: options) { try await onResponse(try Self.decode($0)) }
    }

    private func streaming<Requests: AsyncSequence & Sendable>(
        _ method: ProtoMethod, requests: Requests, options: CallOptions, onResponse: @escaping @Sendable ([UInt8]) async throws -> Void
    ) async throws where Requests.Element: ProtoMessage {
        let (handler, context) = try prepare(method, options)
        guard case .streaming(let body) = handler.body else { throw RPCError(.internal, "\(method.path) is not a client-streaming method") }
        let (stream, continuation) = AsyncThrowingStream<[UInt8], any Error>.makeStream(bufferingPolicy: .bufferingOldest(64))
        let feeder = Task {
            do {
                for try await request in requests { continuation.yield(try request.rpcPayload()) }
                continuation.finish()
            } catch {
                continuation.finish(throwing: error)
            }
        }
        defer { feeder.cancel() }
        let raw = RawRequestStream(base: stream) { _ in }
        try await run(context) { try await body(raw, CallbackSink(onMessage: onResponse), context) }
    }

    static func decode<Response: ProtoMessage>(_ bytes: [UInt8]) throws -> Response {
        do {
            return try Response(serializedBytes: bytes)
        } catch {
            throw RPCError(.internal, "response message does not decode: \(error)")
        }
    }
}

private struct CallbackSink: ResponseSink {
    let onMessage: @Sendable ([UInt8]) async throws -> Void
    func sendHeaders(_ metadata: Metadata) async throws {}
    func sendMessage(_ message: any ProtoMessage) async throws { try await onMessage(message.rpcPayload()) }
}

private actor ResponseBox {
    var value: [UInt8]?
    func set(_ bytes: [UInt8]) -> Bool {
        guard value == nil else { return false }
        value = bytes
        return true
    }
}
