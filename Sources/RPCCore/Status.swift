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

    /// The code's gRPC name, e.g. `PERMISSION_DENIED`; the number if it has none.
    public var description: String {
        rawValue < Self.names.count ? Self.names[Int(rawValue)] : "CODE_\(rawValue)"
    }
}

/// A failed call: a status code, a message for people, and trailing metadata.
public struct RPCError: Error, Hashable, Sendable, CustomStringConvertible {
    public var code: RPCCode
    public var message: String
    public var metadata: Metadata

    public init(_ code: RPCCode, _ message: String, metadata: Metadata = Metadata()) {
        precondition(code != .ok, "an RPCError cannot carry OK")
        self.code = code
        self.message = message
        self.metadata = metadata
    }

    public var description: String { message.isEmpty ? "\(code)" : "\(code): \(message)" }
}

/// Domain errors that know which status they map to. Errors that do not
/// conform reach callers as UNKNOWN with an empty message; their details stay
/// in the server's log.
public protocol RPCErrorConvertible: Error {
    var rpcError: RPCError { get }
}

extension RPCError: RPCErrorConvertible {
    public var rpcError: RPCError { self }
}

/// Runs storage work for a handler: status errors pass through; anything
/// else (LMDB, decoding) becomes INTERNAL naming `database`, the details
/// being for the server's log rather than the caller.
public func withStorageErrors<Result>(_ database: String, _ body: () throws -> Result) throws(RPCError) -> Result {
    do {
        return try body()
    } catch let error as RPCError {
        throw error
    } catch {
        throw RPCError(.internal, "\(database) error: \(error)")
    }
}
