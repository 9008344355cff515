internal import CLMDB

/// An error code returned by LMDB, or an `errno` value it passed through.
///
/// Match known codes with `catch LMDBError.mapFull` and the other statics.
public struct LMDBError: Error, Hashable, Sendable, CustomStringConvertible {
    /// LMDB's negative code (`MDB_*`) or a positive `errno`.
    public let code: Int32

    public init(code: Int32) { self.code = code }

    /// `MDB_KEYEXIST`: an insert found the key already present.
    public static let keyExists = LMDBError(code: MDB_KEYEXIST)
    /// `MDB_NOTFOUND`: no such key (lookups return `nil` instead of throwing this).
    public static let notFound = LMDBError(code: MDB_NOTFOUND)
    /// `MDB_CORRUPTED`: a page has the wrong type; the file is damaged.
    public static let corrupted = LMDBError(code: MDB_CORRUPTED)
    /// `MDB_PANIC`: a fatal error earlier; the environment must be reopened.
    public static let panic = LMDBError(code: MDB_PANIC)
    /// `MDB_VERSION_MISMATCH`: the file was written by an incompatible LMDB.
    public static let versionMismatch = LMDBError(code: MDB_VERSION_MISMATCH)
    /// `MDB_INVALID`: the file is not an LMDB environment.
    public static let invalid = LMDBError(code: MDB_INVALID)
    /// `MDB_MAP_FULL`: the map size is reached; ``Environment`` grows it and retries.
    public static let mapFull = LMDBError(code: MDB_MAP_FULL)
    /// `MDB_DBS_FULL`: more named databases than `maxDatabases`.
    public static let databasesFull = LMDBError(code: MDB_DBS_FULL)
    /// `MDB_READERS_FULL`: every reader slot is taken.
    public static let readersFull = LMDBError(code: MDB_READERS_FULL)
    /// `MDB_TXN_FULL`: one transaction changed too many pages.
    public static let transactionFull = LMDBError(code: MDB_TXN_FULL)
    /// `MDB_MAP_RESIZED`: another process grew the map; ``Environment`` adopts it and retries.
    public static let mapResized = LMDBError(code: MDB_MAP_RESIZED)
    /// `MDB_BAD_VALSIZE`: a key is empty or longer than the 511-byte limit.
    public static let badValueSize = LMDBError(code: MDB_BAD_VALSIZE)

    public var description: String {
        guard let message = mdb_strerror(code) else { return "LMDB error \(code)" }
        return "\(String(cString: message)) (LMDB error \(code))"
    }

    public static func ~= (pattern: LMDBError, error: any Error) -> Bool {
        (error as? LMDBError) == pattern
    }
}

/// Turns an LMDB return code into a thrown ``LMDBError``.
@inline(__always)
func check(_ code: Int32) throws(LMDBError) {
    if code != 0 { throw LMDBError(code: code) }
}
