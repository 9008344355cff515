public import NIOCore
import NIOConcurrencyHelpers
public import OpenSSLKit
public import RPCCore
public import TollgateProto

/// How long to wait between connection attempts: exponential with jitter.
public struct ReconnectBackoff: Sendable, Hashable {
    public var initial: Duration = .milliseconds(100)
    public var multiplier = 1.6
    public var maximum: Duration = .seconds(30)
    /// Each delay is spread by up to this fraction either way, so many
    /// clients do not retry in step.
    public var jitter = 0.2

    public init() {}

    /// The delay after `failures` consecutive failed attempts (1 or more).
    public func delay(afterFailures failures: Int) -> Duration {
        let base = min(Double(initial.components.seconds) + Double(initial.components.attoseconds) / 1e18, 1e9)
            * pow(multiplier, Double(max(0, failures - 1)))
        let capped = min(base, Double(maximum.components.seconds) + Double(maximum.components.attoseconds) / 1e18)
        let spread = capped * jitter * Double.random(in: -1...1)
        return .milliseconds(Int64(max(0, capped + spread) * 1000))
    }

    private func pow(_ base: Double, _ exponent: Double) -> Double {
        var result = 1.0
        for _ in 0..<Int(exponent) { result *= base }
        return result
    }
}

/// A client for one node that keeps a connection: reuses it while it is
/// healthy, opens a new one when it closes or receives GOAWAY, and backs off
/// between failed attempts (calls made while waiting fail at once with
/// UNAVAILABLE, saying when the next attempt is). A call refused because its
/// connection was going away, and never processed, is retried once on a new
/// connection.
public final class RPCChannel: RPCClientTransport {
    public let host: String
    public let port: Int
    private let serverHostname: String?
    private let tls: NIOLockedValueBox<TLSContext>
    private let limits: RPCLimits
    private let group: any EventLoopGroup
    private let backoff: ReconnectBackoff

    private struct State {
        var connection: RPCConnection?
        var connecting: Task<RPCConnection, any Error>?
        var failures = 0
        var retryAt: ContinuousClock.Instant?
        var lastError: String = ""
        var lastErrorAt: ContinuousClock.Instant?
        var connects = 0
        var closed = false
    }

    /// What the channel is doing, for status reports.
    public struct Status: Sendable, Hashable {
        public enum State: Sendable, Hashable { case idle, connecting, ready, backoff, closed }
        public var state: State
        /// Connections opened after the first.
        public var reconnects: Int
        public var lastError: String
        /// How long ago the last error happened.
        public var lastErrorAge: Duration?
    }

    public var status: Status {
        state.withLockedValue { state in
            let now = ContinuousClock.now
            let current: Status.State
            if state.closed {
                current = .closed
            } else if let connection = state.connection, connection.acceptsCalls {
                current = .ready
            } else if state.connecting != nil {
                current = .connecting
            } else if let retryAt = state.retryAt, retryAt > now {
                current = .backoff
            } else {
                current = .idle
            }
            return Status(state: current, reconnects: max(0, state.connects - 1), lastError: state.lastError,
                          lastErrorAge: state.lastErrorAt.map { now - $0 })
        }
    }
    private let state = NIOLockedValueBox(State())

    public init(host: String, port: Int, serverHostname: String?, tls: TLSContext, limits: RPCLimits = RPCLimits(),
                group: any EventLoopGroup, backoff: ReconnectBackoff = ReconnectBackoff()) {
        self.host = host
        self.port = port
        self.serverHostname = serverHostname
        self.tls = NIOLockedValueBox(tls)
        self.limits = limits
        self.group = group
        self.backoff = backoff
    }

    /// A usable connection: the current one, or a new one.
    public func connection() async throws -> RPCConnection {
        enum Next { case use(RPCConnection), wait(Task<RPCConnection, any Error>) }
        let next: Next = try state.withLockedValue { state in
            guard !state.closed else { throw RPCError(.unavailable, "the channel to \(host):\(port) is closed") }
            if let connection = state.connection, connection.acceptsCalls { return .use(connection) }
            state.connection = nil
            if let connecting = state.connecting { return .wait(connecting) }
            if let retryAt = state.retryAt, retryAt > .now {
                throw RPCError(.unavailable, "cannot reach \(host):\(port) (\(state.lastError)); next attempt in \(Self.milliseconds(retryAt - .now)) ms")
            }
            let task = Task { try await self.connect() }
            state.connecting = task
            return .wait(task)
        }
        switch next {
        case .use(let connection): return connection
        case .wait(let task): return try await task.value
        }
    }

    private func connect() async throws -> RPCConnection {
        do {
            let connection = try await RPCConnection.connect(host: host, port: port, serverHostname: serverHostname, tls: tls.withLockedValue { $0 },
                                                             limits: limits, group: group)
            let keep = state.withLockedValue { state -> Bool in
                state.connecting = nil
                state.failures = 0
                state.retryAt = nil
                state.connects += 1
                guard !state.closed else { return false }
                state.connection = connection
                return true
            }
            if !keep { await connection.close() }
            return connection
        } catch {
            let description = ConnectionErrorText.describe(error)
            let delay = state.withLockedValue { state -> Duration in
                state.connecting = nil
                state.failures += 1
                let delay = backoff.delay(afterFailures: state.failures)
                state.retryAt = .now + delay
                state.lastError = description
                state.lastErrorAt = .now
                return delay
            }
            throw RPCError(.unavailable, "cannot reach \(host):\(port): \(description); next attempt in \(Self.milliseconds(delay)) ms")
        }
    }

    /// The next connection uses `tls` (new certificates after a reload).
    public func updateTLS(_ tls: TLSContext) {
        self.tls.withLockedValue { $0 = tls }
    }

    /// Closes the current connection; later calls fail.
    public func close() async {
        let connection = state.withLockedValue { state -> RPCConnection? in
            state.closed = true
            state.connecting?.cancel()
            defer { state.connection = nil }
            return state.connection
        }
        await connection?.close()
    }

    /// Runs `call` on a connection, once more on a new one if the first was
    /// going away and did not process it.
    private func withRetry<Result: Sendable>(_ call: (RPCConnection) async throws -> Result) async throws -> Result {
        let first = try await connection()
        do {
            return try await call(first)
        } catch let error as RPCError where error.code == .unavailable && Self.notProcessed(error) {
            return try await call(try await connection())
        }
    }

    static func milliseconds(_ duration: Duration) -> Int64 {
        duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
    }

    static func notProcessed(_ error: RPCError) -> Bool {
        error.message.contains("not processed") || error.message.contains("not sent")
    }

    public func unary<Request: ProtoMessage, Response: ProtoMessage>(
        _ method: ProtoMethod, _ request: Request, options: CallOptions = CallOptions(), as: Response.Type = Response.self
    ) async throws -> Response {
        try await withRetry { try await $0.unary(method, request, options: options, as: Response.self) }
    }

    public func serverStreaming<Request: ProtoMessage, Response: ProtoMessage>(
        _ method: ProtoMethod, _ request: Request, options: CallOptions = CallOptions(),
        onResponse: @escaping @Sendable (Response) async throws -> Void
    ) async throws {
        try await connection().serverStreaming(method, request, options: options, onResponse: onResponse)
    }

    public func clientStreaming<Requests: AsyncSequence & Sendable, Response: ProtoMessage>(
        _ method: ProtoMethod, requests: Requests, options: CallOptions = CallOptions(), as: Response.Type = Response.self
    ) async throws -> Response where Requests.Element: ProtoMessage {
        try await connection().clientStreaming(method, requests: requests, options: options, as: Response.self)
    }

    public func bidirectional<Requests: AsyncSequence & Sendable, Response: ProtoMessage>(
        _ method: ProtoMethod, requests: Requests, options: CallOptions = CallOptions(),
        onResponse: @escaping @Sendable (Response) async throws -> Void
    ) async throws where Requests.Element: ProtoMessage {
        try await connection().bidirectional(method, requests: requests, options: options, onResponse: onResponse)
    }
}
