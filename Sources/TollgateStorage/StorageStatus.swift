public import LMDBKit
public import RPCCore
public import TollgateProto

// What storage failures mean to a caller, in one place (RPCError's mapping
// picks these up; HTTP and Thrift faults follow from the status code). The
// messages name the problem in the caller's terms; the library's own text
// stays in the error, which the server logs as the cause.

extension LMDBError: RPCErrorConvertible {
    public var rpcError: RPCError {
        switch self {
        case .mapFull, .transactionFull:
            RPCError(.resourceExhausted, "the database is full: the operator must free disk space or raise its size limit")
        case .readersFull:
            RPCError(.unavailable, "the database has too many readers right now; try again")
        case .corrupted, .panic, .invalid, .versionMismatch:
            RPCError(.dataLoss, "the database is damaged: the operator must restore it from a backup")
        default:
            RPCError(.internal, "the database failed: the server's log has the details")
        }
    }
}

extension StorageError: RPCErrorConvertible {
    public var rpcError: RPCError {
        switch self {
        case .alreadyExists(let table), .uniqueConflict(let table, _):
            RPCError(.alreadyExists, "that \(Self.noun(table)) already exists")
        case .keyTooLong:
            RPCError(.invalidArgument, "a name or other key is too long to store")
        case .corruptRecord(let table, _):
            RPCError(.dataLoss, "a stored \(Self.noun(table)) is damaged: the operator must restore it from a backup")
        case .invalidPageToken:
            RPCError(.invalidArgument, "page_token does not belong to this listing: start again without one")
        case .newerSchema, .dataDirectory:
            RPCError(.failedPrecondition, "the node's storage cannot be used as it is: the server's log says why")
        }
    }

    /// "apis" → "api": the table's records as a caller calls them.
    static func noun(_ table: String) -> String {
        let base = table.split(separator: ".").first.map(String.init) ?? table
        return base.hasSuffix("s") ? String(base.dropLast()).replacingUnderscores : base.replacingUnderscores
    }
}

extension EnvironmentError: RPCErrorConvertible {
    public var rpcError: RPCError { RPCError(.unavailable, "the database cannot be opened: the server's log says why") }
}

/// A stored record that no longer decodes.
extension ProtoDecodingError: RPCErrorConvertible {
    public var rpcError: RPCError {
        RPCError(.dataLoss, "a stored \(messageType.split(separator: ".").last.map(String.init) ?? "record") does not decode: the operator must restore it from a backup")
    }
}

/// A value that protobuf cannot carry (a string holding U+0000) that got
/// past validation: the caller's input, so it is theirs to fix.
extension ProtoEncodingError: RPCErrorConvertible {
    public var rpcError: RPCError { RPCError(.invalidArgument, description) }
}

extension OutboxError: RPCErrorConvertible {
    public var rpcError: RPCError { RPCError(.failedPrecondition, "the node holds work written by a newer version of Tollgate: upgrade it") }
}

extension String {
    fileprivate var replacingUnderscores: String { split(separator: "_").joined(separator: " ") }
}
