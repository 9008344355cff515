public import TollgateProto

/// Per-call options.
public struct CallOptions: Sendable {
    public var metadata: Metadata
    /// The whole call's time budget, sent to the server and enforced here too.
    public var timeout: Duration?

    public init(metadata: Metadata = Metadata(), timeout: Duration? = nil) {
        self.metadata = metadata
        self.timeout = timeout
    }

    /// The timeout as the wire carries it: whole milliseconds, rounded down.
    public var timeoutMilliseconds: UInt64? {
        timeout.map { timeout in
            let (seconds, attoseconds) = timeout.components
            return UInt64(max(0, seconds * 1000 + attoseconds / 1_000_000_000_000_000))
        }
    }
}

/// Something that makes calls: a connection to one node, a reconnecting
/// channel, or an in-process server. Generated clients are written against
/// this, so role logic never sees the transport.
public protocol RPCClientTransport: Sendable {
    func unary<Request: ProtoMessage, Response: ProtoMessage>(
        _ method: ProtoMethod, _ request: Request, options: CallOptions, as: Response.Type
    ) async throws -> Response

    /// Calls `onResponse` for each response, in order, until the server ends the call.
    func serverStreaming<Request: ProtoMessage, Response: ProtoMessage>(
        _ method: ProtoMethod, _ request: Request, options: CallOptions,
        onResponse: @escaping @Sendable (Response) async throws -> Void
    ) async throws

    func clientStreaming<Requests: AsyncSequence & Sendable, Response: ProtoMessage>(
        _ method: ProtoMethod, requests: Requests, options: CallOptions, as: Response.Type
    ) async throws -> Response where Requests.Element: ProtoMessage

    /// Sends `requests` while `onResponse` receives responses, interleaved.
    func bidirectional<Requests: AsyncSequence & Sendable, Response: ProtoMessage>(
        _ method: ProtoMethod, requests: Requests, options: CallOptions,
        onResponse: @escaping @Sendable (Response) async throws -> Void
    ) async throws where Requests.Element: ProtoMessage
}

/// Runs `body`, failing with DEADLINE_EXCEEDED (and cancelling it) if `deadline` passes first.
public func withDeadline<Value: Sendable>(_ deadline: ContinuousClock.Instant?, _ body: @escaping @Sendable () async throws -> Value) async throws -> Value {
    guard let deadline else { return try await body() }
    return try await withThrowingTaskGroup(of: Value.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(until: deadline, clock: .continuous)
            throw RPCError(.deadlineExceeded, "deadline exceeded")
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}
