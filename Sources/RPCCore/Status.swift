/// A gRPC status code, as carried in TRAILERS and CANCEL frames.
public struct RPCCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let ok = RPCCode(rawValue: 0)
    public static let cancelled = RPCCode(rawValue: 1)
    public static let unknown = RPCCode(rawValue: 2)
    public static let invalidArgument = RPCCode(rawValue: 3)
    public static let deadlineExceeded = RPCCode(rawValue: 4)
    public static let notFound = RPCCode(rawValue: 5)
    public static let alreadyExists = RPCCode(rawValue: 6)
    public static let permissionDenied = RPCCode(rawValue: 7)
    public static let resourceExhausted = RPCCode(rawValue: 8)
    public static let failedPrecondition = RPCCode(rawValue: 9)
    public static let aborted = RPCCode(rawValue: 10)
    public static let outOfRange = RPCCode(rawValue: 11)
    public static let unimplemented = RPCCode(rawValue: 12)
    public static let `internal` = RPCCode(rawValue: 13)
    public static let unavailable = RPCCode(rawValue: 14)
    public static let dataLoss = RPCCode(rawValue: 15)
    public static let unauthenticated = RPCCode(rawValue: 16)

    static let names = [
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
        "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
        "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
    ]

    /// The HTTP status the same failure takes on HTTP listeners (the
    /// gateway, the OAuth endpoints), per the canonical mapping of these
    /// codes, so one domain error answers alike on every kind of listener.
    public var httpStatus: Int {
        switch self {
        case .ok: 200
        case .cancelled: 499
        case .invalidArgument, .failedPrecondition, .outOfRange: 400
        case .deadlineExceeded: 504
        case .notFound: 404
        case .alreadyExists, .aborted: 409
        case .permissionDenied: 403
        case .resourceExhausted: 429
        case .unimplemented: 501
        case .unavailable: 503
        case .unauthenticated: 401
        default: 500
        }
    }

    /// The code's gRPC name, e.g. `PERMISSION_DENIED`; the number if it has none.
    public var description: String {
        rawValue < Self.names.count ? Self.names[Int(rawValue)] : "CODE_\(rawValue)"
    }
}

/// A failed call: a status code, a message for people, and trailing metadata.
///
/// `message` is what the client sees, so it names the problem in the
/// caller's terms and never carries library text (LMDB, OpenSSL, decoder
/// internals). What went wrong underneath goes in `cause`, which the server
/// logs with the call's request id and never sends.
public struct RPCError: Error, Hashable, Sendable, CustomStringConvertible {
    public var code: RPCCode
    public var message: String
    public var metadata: Metadata
    /// The underlying error, for the server's log only.
    public var cause: (any Error)?

    public init(_ code: RPCCode, _ message: String, metadata: Metadata = Metadata(), cause: (any Error)? = nil) {
        precondition(code != .ok, "an RPCError cannot carry OK")
        self.code = code
        self.message = message
        self.metadata = metadata
        self.cause = cause
    }

    /// The one mapping from any error to the status a client receives;
    /// transports answer every failed call through it.
    ///
    /// Status errors pass through; domain errors (``RPCErrorConvertible``)
    /// say their own status and keep themselves as the cause; cancellation
    /// is CANCELLED; anything else is INTERNAL with a message that points at
    /// the server's log, where the cause is written with the request id.
    public init(mapping error: any Error) {
        switch error {
        case let status as RPCError:
            self = status
        case let convertible as any RPCErrorConvertible:
            self = convertible.rpcError
            if cause == nil { cause = error }
        case is CancellationError:
            self = RPCError(.cancelled, "the call was cancelled")
        default:
            self = RPCError(.internal, "internal error: the server's log has the details under this call's request id", cause: error)
        }
    }

    /// Runs `body`, turning whatever it throws into a status through
    /// ``init(mapping:)``; for functions with a typed `RPCError` throw.
    public static func catching<Result>(_ body: () throws -> Result) throws(RPCError) -> Result {
        do {
            return try body()
        } catch {
            throw RPCError(mapping: error)
        }
    }

    /// The asynchronous form of ``catching(_:)``.
    public static func catching<Result>(_ body: () async throws -> Result) async throws(RPCError) -> Result {
        do {
            return try await body()
        } catch {
            throw RPCError(mapping: error)
        }
    }

    public var description: String { message.isEmpty ? "\(code)" : "\(code): \(message)" }

    /// Status, message and metadata: the cause is not part of what a status is.
    public static func == (lhs: RPCError, rhs: RPCError) -> Bool {
        lhs.code == rhs.code && lhs.message == rhs.message && lhs.metadata == rhs.metadata
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(code)
        hasher.combine(message)
        hasher.combine(metadata)
    }
}

/// A domain error that knows the status it maps to (storage, users,
/// publisher and other role errors). The same protocol will carry the
/// mapping to HTTP and Thrift faults, through the status code.
public protocol RPCErrorConvertible: Error {
    var rpcError: RPCError { get }
}

extension RPCError: RPCErrorConvertible {
    public var rpcError: RPCError { self }
}
