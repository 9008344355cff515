public import TollgateProto

/// What a handler knows about the call it serves.
public struct ServerCallContext: Sendable {
    public let method: ProtoMethod
    public let metadata: Metadata
    /// Who the peer certificate says the caller is, if it carried one of ours.
    public let peer: PeerIdentity?
    /// When the call must be finished, if the client gave a timeout.
    public let deadline: ContinuousClock.Instant?

    public init(method: ProtoMethod, metadata: Metadata, peer: PeerIdentity?, deadline: ContinuousClock.Instant?) {
        self.method = method
        self.metadata = metadata
        self.peer = peer
        self.deadline = deadline
    }
}

/// Where a transport takes a handler's responses.
public protocol ResponseSink: Sendable {
    /// Response metadata, sent before the first message (at most once).
    func sendHeaders(_ metadata: Metadata) async throws
    /// One serialized response message; waits while the peer's window is closed.
    func sendMessage(_ bytes: [UInt8]) async throws
}

/// Serialized request messages as the transport receives them. Taking one
/// tells the transport it was consumed, which is when it grants the peer
/// more flow-control window: a slow handler slows its sender down.
public struct RawRequestStream: AsyncSequence, Sendable {
    public typealias Element = [UInt8]
    let base: AsyncThrowingStream<[UInt8], any Error>
    let consumed: @Sendable (Int) -> Void

    public init(base: AsyncThrowingStream<[UInt8], any Error>, consumed: @escaping @Sendable (Int) -> Void) {
        self.base = base
        self.consumed = consumed
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: AsyncThrowingStream<[UInt8], any Error>.AsyncIterator
        let consumed: @Sendable (Int) -> Void
        public mutating func next() async throws -> [UInt8]? {
            guard let bytes = try await base.next() else { return nil }
            consumed(bytes.count)
            return bytes
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(base: base.makeAsyncIterator(), consumed: consumed) }
}

/// The request messages of a call as they arrive, decoded.
public struct RequestStream<Message: ProtoMessage>: AsyncSequence, Sendable {
    public typealias Element = Message
    let raw: RawRequestStream

    public init(raw: RawRequestStream) { self.raw = raw }

    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: RawRequestStream.AsyncIterator
        public mutating func next() async throws -> Message? {
            guard let bytes = try await base.next() else { return nil }
            do {
                return try Message(serializedBytes: bytes)
            } catch {
                throw RPCError(.invalidArgument, "request message does not decode: \(error)")
            }
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(base: raw.makeAsyncIterator()) }
}

/// Sends a streaming handler's responses.
public struct ResponseWriter<Message: ProtoMessage>: Sendable {
    let sink: any ResponseSink
    public init(sink: any ResponseSink) { self.sink = sink }
    public func write(_ message: Message) async throws { try await sink.sendMessage(message.serializedBytes()) }
    public func sendHeaders(_ metadata: Metadata) async throws { try await sink.sendHeaders(metadata) }
}

/// One method a server offers: its descriptor, and the handler erased to bytes.
public struct RPCMethodHandler: Sendable {
    public let method: ProtoMethod
    public let run: @Sendable (RawRequestStream, any ResponseSink, ServerCallContext) async throws -> Void

    public init(method: ProtoMethod, run: @escaping @Sendable (RawRequestStream, any ResponseSink, ServerCallContext) async throws -> Void) {
        self.method = method
        self.run = run
    }

    /// One request, one response.
    public static func unary<Request: ProtoMessage, Response: ProtoMessage>(
        _ method: ProtoMethod, _ handle: @escaping @Sendable (Request, ServerCallContext) async throws -> Response
    ) -> RPCMethodHandler {
        RPCMethodHandler(method: method) { requests, sink, context in
            let request = try await onlyRequest(RequestStream<Request>(raw: requests))
            try await sink.sendMessage(handle(request, context).serializedBytes())
        }
    }

    /// One request, a stream of responses.
    public static func serverStreaming<Request: ProtoMessage, Response: ProtoMessage>(
        _ method: ProtoMethod, _ handle: @escaping @Sendable (Request, ResponseWriter<Response>, ServerCallContext) async throws -> Void
    ) -> RPCMethodHandler {
        RPCMethodHandler(method: method) { requests, sink, context in
            let request = try await onlyRequest(RequestStream<Request>(raw: requests))
            try await handle(request, ResponseWriter(sink: sink), context)
        }
    }

    /// A stream of requests, one response.
    public static func clientStreaming<Request: ProtoMessage, Response: ProtoMessage>(
        _ method: ProtoMethod, _ handle: @escaping @Sendable (RequestStream<Request>, ServerCallContext) async throws -> Response
    ) -> RPCMethodHandler {
        RPCMethodHandler(method: method) { requests, sink, context in
            try await sink.sendMessage(handle(RequestStream(raw: requests), context).serializedBytes())
        }
    }

    /// Streams both ways.
    public static func bidirectional<Request: ProtoMessage, Response: ProtoMessage>(
        _ method: ProtoMethod,
        _ handle: @escaping @Sendable (RequestStream<Request>, ResponseWriter<Response>, ServerCallContext) async throws -> Void
    ) -> RPCMethodHandler {
        RPCMethodHandler(method: method) { requests, sink, context in
            try await handle(RequestStream(raw: requests), ResponseWriter(sink: sink), context)
        }
    }

    /// The single request of a unary or server-streaming call: exactly one
    /// message, then the end of the client's stream.
    static func onlyRequest<Request: ProtoMessage>(_ requests: RequestStream<Request>) async throws -> Request {
        var iterator = requests.makeAsyncIterator()
        guard let request = try await iterator.next() else {
            throw RPCError(.internal, "expected exactly one request message")
        }
        guard try await iterator.next() == nil else {
            throw RPCError(.internal, "expected exactly one request message")
        }
        return request
    }
}

/// How a server maps a thrown error to the status it sends: its own code and
/// message for ``RPCErrorConvertible`` errors, UNKNOWN with no message for
/// anything else (the details belong in the server's log, not on the wire).
public func status(for error: any Error) -> RPCError {
    if let convertible = error as? any RPCErrorConvertible { return convertible.rpcError }
    return RPCError(.unknown, "")
}
