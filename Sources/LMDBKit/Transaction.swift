internal import CLMDB

/// Lookups shared by read and write transactions.
///
/// Values are returned as copies, or lent as `UnsafeRawBufferPointer`s only
/// inside a closure: LMDB's memory is valid only until the next write or the
/// end of the transaction, so no borrow may escape.
public protocol TransactionReading: ~Copyable {
    /// LMDB's `MDB_txn`, valid only inside the closure that received the transaction.
    var handle: OpaquePointer { get }
}

extension TransactionReading where Self: ~Copyable {
    /// A copy of the value stored under `key`, or nil.
    public func get(_ key: [UInt8], in database: Database) throws -> [UInt8]? {
        try withValue(key, in: database) { Array($0) }
    }

    /// Lends the value under `key` to `body` without copying it; nil if absent.
    public func withValue<Result>(_ key: [UInt8], in database: Database, _ body: (UnsafeRawBufferPointer) throws -> Result) throws -> Result? {
        try key.withUnsafeBytes { keyBytes -> Result? in
            var keyValue = MDB_val(mv_size: keyBytes.count, mv_data: UnsafeMutableRawPointer(mutating: keyBytes.baseAddress))
            var value = MDB_val()
            let code = mdb_get(handle, database.dbi, &keyValue, &value)
            if code == MDB_NOTFOUND { return nil }
            try check(code)
            return try body(UnsafeRawBufferPointer(start: value.mv_data, count: value.mv_size))
        }
    }

    /// Whether `key` is present.
    public func contains(_ key: [UInt8], in database: Database) throws -> Bool {
        try withValue(key, in: database) { _ in () } != nil
    }

    /// Number of entries in `database`.
    public func count(_ database: Database) throws -> Int {
        var status = MDB_stat()
        try check(mdb_stat(handle, database.dbi, &status))
        return status.ms_entries
    }

    /// Visits entries in key order, starting at the first key `>= start`
    /// (or the first key), while `body` returns true. Key and value are lent
    /// for the duration of each call.
    public func scan(
        _ database: Database,
        from start: [UInt8]? = nil,
        _ body: (_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws -> Bool
    ) throws {
        try withCursor(database) { cursor in
            var found = try cursor.position(atOrAfter: start)
            while found {
                guard try body(cursor.currentKey, cursor.currentValue) else { return }
                found = try cursor.step(MDB_NEXT)
            }
        }
    }

    /// Visits entries whose keys start with `prefix`, in key order, while `body` returns true.
    public func scan(
        _ database: Database,
        prefix: [UInt8],
        from start: [UInt8]? = nil,
        _ body: (_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws -> Bool
    ) throws {
        let first = start.map { $0.lexicographicallyPrecedes(prefix) ? prefix : $0 } ?? prefix
        try scan(database, from: first) { key, value in
            guard key.starts(with: prefix) else { return false }
            return try body(key, value)
        }
    }

    /// Runs `body` with a cursor over `database`; the cursor is closed when it returns.
    public func withCursor<Result>(_ database: Database, _ body: (inout Cursor) throws -> Result) throws -> Result {
        var pointer: OpaquePointer?
        try check(mdb_cursor_open(handle, database.dbi, &pointer))
        guard let pointer else { throw LMDBError(code: MDB_PANIC) }
        defer { mdb_cursor_close(pointer) }
        var cursor = Cursor(handle: pointer)
        return try body(&cursor)
    }
}

/// A read-only snapshot; exists only inside ``Environment/read(_:)``.
public struct ReadTransaction: TransactionReading, ~Copyable {
    public let handle: OpaquePointer
    init(handle: OpaquePointer) { self.handle = handle }
}

/// A write transaction; exists only inside ``Environment/write(_:)``.
public struct WriteTransaction: TransactionReading, ~Copyable {
    public let handle: OpaquePointer
    init(handle: OpaquePointer) { self.handle = handle }

    /// Runs `body` in a child transaction: its changes become part of this
    /// transaction when it returns and vanish when it throws, while this
    /// transaction stays open either way (how several callers' writes share
    /// one commit without one failure undoing the others).
    public mutating func nested<Result>(_ body: (inout WriteTransaction) throws -> Result) throws -> Result {
        var child: OpaquePointer?
        try check(mdb_txn_begin(mdb_txn_env(handle), handle, 0, &child))
        guard let child else { throw LMDBError(code: MDB_PANIC) }
        var transaction = WriteTransaction(handle: child)
        let result: Result
        do {
            result = try body(&transaction)
        } catch {
            mdb_txn_abort(child)
            throw error
        }
        try check(mdb_txn_commit(child))
        return result
    }

    /// Stores `value` under `key`, replacing any value there.
    public mutating func put(_ value: [UInt8], forKey key: [UInt8], in database: Database) throws {
        try put(value, forKey: key, in: database, flags: 0)
    }

    /// Stores `value` under `key`; throws ``LMDBError/keyExists`` if the key is present.
    public mutating func insert(_ value: [UInt8], forKey key: [UInt8], in database: Database) throws {
        try put(value, forKey: key, in: database, flags: UInt32(MDB_NOOVERWRITE))
    }

    private mutating func put(_ value: [UInt8], forKey key: [UInt8], in database: Database, flags: UInt32) throws {
        try key.withUnsafeBytes { keyBytes in
            try value.withUnsafeBytes { valueBytes in
                var keyValue = MDB_val(mv_size: keyBytes.count, mv_data: UnsafeMutableRawPointer(mutating: keyBytes.baseAddress))
                var dataValue = MDB_val(mv_size: valueBytes.count, mv_data: UnsafeMutableRawPointer(mutating: valueBytes.baseAddress))
                try check(mdb_put(handle, database.dbi, &keyValue, &dataValue, flags))
            }
        }
    }

    /// Removes `key`; returns whether it was present.
    @discardableResult
    public mutating func delete(_ key: [UInt8], in database: Database) throws -> Bool {
        try key.withUnsafeBytes { keyBytes in
            var keyValue = MDB_val(mv_size: keyBytes.count, mv_data: UnsafeMutableRawPointer(mutating: keyBytes.baseAddress))
            let code = mdb_del(handle, database.dbi, &keyValue, nil)
            if code == MDB_NOTFOUND { return false }
            try check(code)
            return true
        }
    }

    /// Opens the named database in this transaction, creating it if needed.
    /// The handle is usable by other transactions once this one commits.
    public mutating func openDatabase(_ name: String, flags: Database.Flags = []) throws -> Database {
        var dbi: MDB_dbi = 0
        try check(mdb_dbi_open(handle, name, UInt32(MDB_CREATE) | flags.rawValue, &dbi))
        return Database(name: name, dbi: dbi)
    }

    /// Removes every entry of `database`, keeping the database itself.
    public mutating func clear(_ database: Database) throws {
        try check(mdb_drop(handle, database.dbi, 0))
    }
}

/// A position in a database; exists only inside `withCursor`.
public struct Cursor: ~Copyable {
    let handle: OpaquePointer
    private var key = MDB_val()
    private var value = MDB_val()

    init(handle: OpaquePointer) { self.handle = handle }

    /// The key at the cursor, valid until the cursor moves.
    public var currentKey: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: key.mv_data, count: key.mv_size) }
    /// The value at the cursor, valid until the cursor moves.
    public var currentValue: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: value.mv_data, count: value.mv_size) }

    /// Moves to the first entry; false when the database is empty.
    public mutating func first() throws -> Bool { try step(MDB_FIRST) }
    /// Moves to the last entry; false when the database is empty.
    public mutating func last() throws -> Bool { try step(MDB_LAST) }
    /// Moves to the next entry; false past the end.
    public mutating func next() throws -> Bool { try step(MDB_NEXT) }
    /// Moves to the previous entry; false before the start.
    public mutating func previous() throws -> Bool { try step(MDB_PREV) }

    /// Moves to the first key `>= start` (the first entry when `start` is nil).
    public mutating func position(atOrAfter start: [UInt8]?) throws -> Bool {
        guard let start, !start.isEmpty else { return try first() }
        return try start.withUnsafeBytes { bytes in
            key = MDB_val(mv_size: bytes.count, mv_data: UnsafeMutableRawPointer(mutating: bytes.baseAddress))
            return try step(MDB_SET_RANGE)
        }
    }

    mutating func step(_ operation: MDB_cursor_op) throws -> Bool {
        let code = mdb_cursor_get(handle, &key, &value, operation)
        if code == MDB_NOTFOUND { return false }
        try check(code)
        return true
    }
}
