public import TollgateProto

/// What a handler knows about the call it serves.
public struct ServerCallContext: Sendable {
    public let method: ProtoMethod
    public let metadata: Metadata
    /// Who the peer certificate says the caller is, if it carried one of ours.
    public let peer: PeerIdentity?
    /// When the call must be finished, if the client gave a timeout.
    public let deadline: ContinuousClock.Instant?
    /// Who is calling, as the server's authorization decided before the
    /// handler ran.
    public var caller: Caller
    /// The client's IP address, where the transport has one (sign-in
    /// throttling counts failures by it).
    public let sourceAddress: String?
    /// Fired when the server starts stopping this connection gracefully;
    /// nil where the transport has no such moment (in process).
    public let stopping: StopSignal?

    public init(method: ProtoMethod, metadata: Metadata, peer: PeerIdentity?, deadline: ContinuousClock.Instant?, caller: Caller = .anonymous,
                sourceAddress: String? = nil, stopping: StopSignal? = nil) {
        self.method = method
        self.metadata = metadata
        self.peer = peer
        self.deadline = deadline
        self.caller = caller
        self.sourceAddress = sourceAddress
        self.stopping = stopping
    }

    /// The signed-in user making the call, or UNAUTHENTICATED.
    public func requireUser() throws(RPCError) -> UserPrincipal {
        guard let user = caller.user else { throw RPCError(.unauthenticated, "\(method.name) needs a signed-in user") }
        return user
    }
}

/// Where a transport takes a handler's responses.
public protocol ResponseSink: Sendable {
    /// Response metadata, sent before the first message (at most once).
    func sendHeaders(_ metadata: Metadata) async throws
    /// One response message, serialized by the transport where it suits it
    /// (straight into its own buffer); waits while the peer's window is closed.
    func sendMessage(_ message: any ProtoMessage) async throws
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
    public func write(_ message: Message) async throws { try await sink.sendMessage(message) }
    public func sendHeaders(_ metadata: Metadata) async throws { try await sink.sendHeaders(metadata) }
}

/// Where a server runs a method's handler.
public enum HandlerPlacement: Sendable, Hashable {
    /// The shared concurrency pool: the default, for handlers that may block
    /// (database writes, password hashing) or compute for a while.
    case pool
    /// The connection's own event loop: no thread hop on the way in or out,
    /// for handlers that never block and finish in microseconds (pings,
    /// lookups in memory). A handler placed here that blocks stalls every
    /// connection on that loop.
    case eventLoop
}

/// One method a server offers: its descriptor, and the handler erased to bytes.
public struct RPCMethodHandler: Sendable {
    /// The handler's shape, which decides how the transport feeds it.
    public enum Body: Sendable {
        /// One request in, one response out: the transport collects the single
        /// request and sends the response and the trailers together. The
        /// response is handed over as a message so the transport serializes
        /// it straight into its own buffer.
        case unary(@Sendable ([UInt8], ServerCallContext) async throws -> any ProtoMessage)
        /// One request in, responses through the sink.
        case singleRequest(@Sendable ([UInt8], any ResponseSink, ServerCallContext) async throws -> Void)
        /// Requests as they arrive, responses through the sink.
        case streaming(@Sendable (RawRequestStream, any ResponseSink, ServerCallContext) async throws -> Void)
    }

    public let method: ProtoMethod
    public let body: Body
    public var placement: HandlerPlacement

    public init(method: ProtoMethod, placement: HandlerPlacement = .pool, body: Body) {
        self.method = method
        self.body = body
        self.placement = placement
    }

    /// The same handler, run where `placement` says.
    public func placed(_ placement: HandlerPlacement) -> RPCMethodHandler {
        var copy = self
        copy.placement = placement
        return copy
    }

    /// One request, one response.
    public static func unary<Request: ProtoMessage, Response: ProtoMessage>(
        _ method: ProtoMethod, _ handle: @escaping @Sendable (Request, ServerCallContext) async throws -> Response
    ) -> RPCMethodHandler {
        RPCMethodHandler(method: method, body: .unary { bytes, context in
            try await handle(decodeRequest(bytes), context)
        })
    }

    /// One request, a stream of responses.
    public static func serverStreaming<Request: ProtoMessage, Response: ProtoMessage>(
        _ method: ProtoMethod, _ handle: @escaping @Sendable (Request, ResponseWriter<Response>, ServerCallContext) async throws -> Void
    ) -> RPCMethodHandler {
        RPCMethodHandler(method: method, body: .singleRequest { bytes, sink, context in
            try await handle(decodeRequest(bytes), ResponseWriter(sink: sink), context)
        })
    }

    /// A stream of requests, one response.
    public static func clientStreaming<Request: ProtoMessage, Response: ProtoMessage>(
        _ method: ProtoMethod, _ handle: @escaping @Sendable (RequestStream<Request>, ServerCallContext) async throws -> Response
    ) -> RPCMethodHandler {
        RPCMethodHandler(method: method, body: .streaming { requests, sink, context in
            try await sink.sendMessage(handle(RequestStream(raw: requests), context))
        })
    }

    /// Streams both ways.
    public static func bidirectional<Request: ProtoMessage, Response: ProtoMessage>(
        _ method: ProtoMethod,
        _ handle: @escaping @Sendable (RequestStream<Request>, ResponseWriter<Response>, ServerCallContext) async throws -> Void
    ) -> RPCMethodHandler {
        RPCMethodHandler(method: method, body: .streaming { requests, sink, context in
            try await handle(RequestStream(raw: requests), ResponseWriter(sink: sink), context)
        })
    }

    static func decodeRequest<Request: ProtoMessage>(_ bytes: [UInt8]) throws -> Request {
        do {
            return try Request(serializedBytes: bytes)
        } catch {
            throw RPCError(.invalidArgument, "request message does not decode: \(error)")
        }
    }
}

/// How a server maps a thrown error to the status it sends: see
/// ``RPCError/init(mapping:)``.
public func status(for error: any Error) -> RPCError {
    RPCError(mapping: error)
}

/// What a server reports about its work, for metrics and logs. Called on
/// event loop threads: implementations must be quick and thread-safe.
public protocol RPCServerObserver: Sendable {
    func connectionOpened()
    func connectionClosed()
    /// A connection was closed for breaking the protocol (garbage bytes,
    /// wrong frames, timeouts); `peer` is the remote address.
    func connectionFailed(peer: String, reason: String)
    /// A call ended with `code`, `duration` after its HEADERS arrived.
    /// `path` is the method path the client asked for (known or not).
    /// `cause` is what went wrong underneath (``RPCError/cause``), for the
    /// log only: it was not sent.
    func callFinished(path: String, code: RPCCode, duration: Duration, requestID: String, caller: Caller, message: String, cause: (any Error)?)
}

extension ProtoMessage {
    /// The message's bytes for an RPC. A message that cannot be encoded (a
    /// string holding U+0000, see docs/proto.md) is a fault of the side
    /// sending it, not of its peer: INTERNAL, naming the message and field.
    package func rpcPayload() throws(RPCError) -> [UInt8] {
        do {
            return try serializedBytes()
        } catch {
            throw RPCError(.internal, "\(error)")
        }
    }
}
