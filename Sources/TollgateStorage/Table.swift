public import LMDBKit
public import TollgateProto
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A secondary index over a table: each record yields zero or more keys.
///
/// A unique index maps its key to one record and refuses a second; a
/// non-unique index keeps one entry per (key, record). Entries are written in
/// the same transaction as the record, so they can never disagree with it.
public struct IndexDefinition<Record: ProtoMessage>: Sendable {
    public let name: String
    public let unique: Bool
    let keys: @Sendable (Record) -> [Key]

    public init(_ name: String, unique: Bool, keys: @escaping @Sendable (Record) -> [Key]) {
        self.name = name
        self.unique = unique
        self.keys = keys
    }

    /// An index with one key per record.
    public init(_ name: String, unique: Bool, key: @escaping @Sendable (Record) -> Key?) {
        self.init(name, unique: unique, keys: { record in key(record).map { [$0] } ?? [] })
    }
}

/// How to store one kind of record: its table name, primary key and indexes.
public struct TableDefinition<Record: ProtoMessage>: Sendable {
    public let name: String
    let primaryKey: @Sendable (Record) -> Key
    let indexes: [IndexDefinition<Record>]

    public init(_ name: String, primaryKey: @escaping @Sendable (Record) -> Key, indexes: [IndexDefinition<Record>] = []) {
        self.name = name
        self.primaryKey = primaryKey
        self.indexes = indexes
    }
}

/// One page of a listing, and where the next page starts.
public struct Page<Record: Sendable>: Sendable {
    public var items: [Record]
    /// Opaque; pass it back to get the next page. Empty when this is the last page.
    public var nextPageToken: [UInt8]

    public init(items: [Record], nextPageToken: [UInt8]) {
        self.items = items
        self.nextPageToken = nextPageToken
    }
}

/// Errors of the storage layer, each naming the table involved.
public enum StorageError: Error, Hashable, Sendable, CustomStringConvertible {
    case alreadyExists(table: String)
    case uniqueConflict(table: String, index: String)
    case keyTooLong(table: String, index: String?)
    case corruptRecord(table: String, detail: String)
    case invalidPageToken(table: String)
    case newerSchema(database: String, found: Int, supported: Int)
    case dataDirectory(String)

    public var description: String {
        switch self {
        case .alreadyExists(let table):
            return "\(table): a record with this key already exists"
        case .uniqueConflict(let table, let index):
            return "\(table): another record already has this \(index)"
        case .keyTooLong(let table, let index):
            return "\(table): key\(index.map { " for index \($0)" } ?? "") exceeds LMDB's 511-byte limit"
        case .corruptRecord(let table, let detail):
            return "\(table): stored record cannot be read: \(detail)"
        case .invalidPageToken(let table):
            return "\(table): the page token does not belong to this listing"
        case .newerSchema(let database, let found, let supported):
            return "\(database) was written by a newer Tollgate (schema version \(found); this build supports up to \(supported)): upgrade tollgate, or restore a backup made by this version; nothing was changed"
        case .dataDirectory(let message):
            return message
        }
    }
}

/// An opened table: the record database plus one database per index.
public struct Table<Record: ProtoMessage>: Sendable {
    public let name: String
    let records: Database
    let definition: TableDefinition<Record>
    let indexDatabases: [String: Database]

    init(definition: TableDefinition<Record>, records: Database, indexDatabases: [String: Database]) {
        self.name = definition.name
        self.definition = definition
        self.records = records
        self.indexDatabases = indexDatabases
    }

    // MARK: Reading

    /// The record stored under `key`, or nil.
    public func get<T: TransactionReading & ~Copyable>(_ key: Key, in txn: borrowing T) throws -> Record? {
        try txn.withValue(key.bytes, in: records) { try decode($0) }
    }

    /// The record a unique index maps `key` to, or nil.
    public func get<T: TransactionReading & ~Copyable>(_ index: IndexDefinition<Record>, _ key: Key, in txn: borrowing T) throws -> Record? {
        precondition(index.unique, "\(name).\(index.name) is not unique; use list(index:prefix:)")
        guard let primaryKey = try txn.get(key.bytes, in: database(of: index)) else { return nil }
        guard let record = try get(Key(bytes: primaryKey), in: txn) else {
            throw StorageError.corruptRecord(table: name, detail: "index \(index.name) points at a missing record")
        }
        return record
    }

    /// Records whose primary key starts with `prefix`, in key order.
    public func list<T: TransactionReading & ~Copyable>(prefix: Key = Key(), pageSize: Int, pageToken: [UInt8] = [], in txn: borrowing T) throws -> Page<Record> {
        try page(database: records, prefix: prefix.bytes, pageSize: pageSize, pageToken: pageToken, in: txn) { _, value in
            try decode(value)
        }
    }

    /// Records whose key in `index` starts with `prefix`, in index-key order.
    public func list<T: TransactionReading & ~Copyable>(index: IndexDefinition<Record>, prefix: Key, pageSize: Int, pageToken: [UInt8] = [], in txn: borrowing T) throws -> Page<Record> {
        try page(database: database(of: index), prefix: prefix.bytes, pageSize: pageSize, pageToken: pageToken, in: txn) { _, primaryKey in
            guard let record = try txn.withValue(Array(primaryKey), in: records, { try decode($0) }) else {
                throw StorageError.corruptRecord(table: name, detail: "index \(index.name) points at a missing record")
            }
            return record
        }
    }

    /// Every record whose key in `index` starts with `prefix` (no paging: for small sets).
    public func all<T: TransactionReading & ~Copyable>(index: IndexDefinition<Record>, prefix: Key, in txn: borrowing T) throws -> [Record] {
        try list(index: index, prefix: prefix, pageSize: Int.max, in: txn).items
    }

    /// Visits records in `index` order (from the start of `prefix`) while `body` returns true.
    public func forEach<T: TransactionReading & ~Copyable>(index: IndexDefinition<Record>, prefix: Key = Key(), in txn: borrowing T, _ body: (Record) throws -> Bool) throws {
        try txn.scan(database(of: index), prefix: prefix.bytes) { _, primaryKey in
            guard let record = try txn.withValue(Array(primaryKey), in: records, { try decode($0) }) else {
                throw StorageError.corruptRecord(table: name, detail: "index \(index.name) points at a missing record")
            }
            return try body(record)
        }
    }

    /// Visits the primary keys `index` holds under `prefix`, in index-key
    /// order, without reading the records: for filters and counts that only
    /// need identities. The key is lent for the duration of each call.
    public func forEachPrimaryKey<T: TransactionReading & ~Copyable>(
        index: IndexDefinition<Record>, prefix: Key, from start: [UInt8]? = nil, in txn: borrowing T,
        _ body: (_ indexEntry: UnsafeRawBufferPointer, _ primaryKey: UnsafeRawBufferPointer) throws -> Bool
    ) throws {
        // Every index entry's value is the primary key, unique index or not.
        try txn.scan(database(of: index), prefix: prefix.bytes, from: start, body)
    }

    /// Number of records in the table.
    public func count<T: TransactionReading & ~Copyable>(in txn: borrowing T) throws -> Int {
        try txn.count(records)
    }

    // MARK: Writing

    /// Stores `record`, replacing the one with the same primary key, and
    /// brings every index up to date in the same transaction.
    ///
    /// - Throws: ``StorageError/uniqueConflict(table:index:)`` when another
    ///   record holds one of its unique index keys.
    @discardableResult
    public func put(_ record: Record, in txn: inout WriteTransaction) throws -> Record? {
        let primaryKey = definition.primaryKey(record)
        let previous = try get(primaryKey, in: txn)
        try write(record, primaryKey: primaryKey, replacing: previous, in: &txn)
        return previous
    }

    /// Stores a new record; throws ``StorageError/alreadyExists(table:)`` if its key is taken.
    public func insert(_ record: Record, in txn: inout WriteTransaction) throws {
        let primaryKey = definition.primaryKey(record)
        if try txn.contains(primaryKey.bytes, in: records) {
            throw StorageError.alreadyExists(table: name)
        }
        try write(record, primaryKey: primaryKey, replacing: nil, in: &txn)
    }

    /// Removes the record under `key` and its index entries; returns it.
    @discardableResult
    public func delete(_ key: Key, in txn: inout WriteTransaction) throws -> Record? {
        guard let previous = try get(key, in: txn) else { return nil }
        for index in definition.indexes {
            let database = database(of: index)
            for indexKey in Set(index.keys(previous)) {
                try txn.delete(entryKey(index, indexKey, key), in: database)
            }
        }
        try txn.delete(key.bytes, in: records)
        return previous
    }

    /// Removes `record` (by its primary key).
    @discardableResult
    public func delete(_ record: Record, in txn: inout WriteTransaction) throws -> Record? {
        try delete(definition.primaryKey(record), in: &txn)
    }

    /// The primary key `record` is stored under.
    public func primaryKey(of record: Record) -> Key {
        definition.primaryKey(record)
    }

    // MARK: Internals

    private func write(_ record: Record, primaryKey: Key, replacing previous: Record?, in txn: inout WriteTransaction) throws {
        // Encoded first: a record that cannot be encoded touches no index.
        let bytes = try record.serializedBytes()
        for index in definition.indexes {
            let database = database(of: index)
            let old = previous.map { Set(index.keys($0)) } ?? []
            let new = Set(index.keys(record))
            for stale in old.subtracting(new) {
                try txn.delete(entryKey(index, stale, primaryKey), in: database)
            }
            for added in new.subtracting(old) {
                let entry = entryKey(index, added, primaryKey)
                if index.unique, let holder = try txn.get(entry, in: database), holder != primaryKey.bytes {
                    throw StorageError.uniqueConflict(table: name, index: index.name)
                }
                do {
                    try txn.put(primaryKey.bytes, forKey: entry, in: database)
                } catch LMDBError.badValueSize {
                    throw StorageError.keyTooLong(table: name, index: index.name)
                }
            }
        }
        do {
            try txn.put(bytes, forKey: primaryKey.bytes, in: records)
        } catch LMDBError.badValueSize {
            throw StorageError.keyTooLong(table: name, index: nil)
        }
    }

    private func entryKey(_ index: IndexDefinition<Record>, _ indexKey: Key, _ primaryKey: Key) -> [UInt8] {
        index.unique ? indexKey.bytes : indexKey.bytes + primaryKey.bytes
    }

    private func database(of index: IndexDefinition<Record>) -> Database {
        guard let database = indexDatabases[index.name] else {
            preconditionFailure("index \(index.name) is not declared on table \(name)")
        }
        return database
    }

    private func decode(_ bytes: UnsafeRawBufferPointer) throws -> Record {
        do {
            return try Record(serializedBytes: bytes)
        } catch {
            throw StorageError.corruptRecord(table: name, detail: error.description)
        }
    }

    private func page<T: TransactionReading & ~Copyable>(
        database: Database, prefix: [UInt8], pageSize: Int, pageToken: [UInt8], in txn: borrowing T,
        _ make: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> Record
    ) throws -> Page<Record> {
        if !pageToken.isEmpty && !pageToken.starts(with: prefix) {
            throw StorageError.invalidPageToken(table: name)
        }
        let limit = max(pageSize, 1)
        var items: [Record] = []
        var next: [UInt8] = []
        try txn.scan(database, prefix: prefix, from: pageToken.isEmpty ? nil : pageToken) { key, value in
            if items.count == limit {
                next = Array(key)
                return false
            }
            items.append(try make(key, value))
            return true
        }
        return Page(items: items, nextPageToken: next)
    }
}

/// What every ``RecordMemo`` entry holds whatever its record type.
/// `@unchecked Sendable`: immutable (`let`s of Sendable types) and
/// subclassed only by `RecordMemo.Entry`, whose one addition is a `let` of a
/// Sendable record; not final only for that subclass.
class RecordMemoEntry: @unchecked Sendable {
    /// The record's key: entries are found by its hash, and told apart by it.
    let key: [UInt8]
    let bytes: [UInt8]

    init(key: [UInt8], bytes: [UInt8]) {
        self.key = key
        self.bytes = bytes
    }
}

/// Decoded records remembered with the exact bytes they were decoded from.
/// A read that finds the same bytes under the same key again returns the
/// remembered record instead of decoding it: comparing a few hundred bytes
/// costs far less than protobuf decoding, and a changed record is simply
/// decoded again (the bytes decide, so it can never be stale). For hot
/// paths that read the same slowly-changing records over and over (key
/// validation: clients, applications, APIs, subscriptions, policies).
public final class RecordMemo<Record: ProtoMessage>: Sendable {
    /// One remembered record: a single reference, so a lookup copies one
    /// pointer rather than a generic tuple field by field.
    final class Entry: RecordMemoEntry, @unchecked Sendable {
        let record: Record

        init(key: [UInt8], bytes: [UInt8], record: Record) {
            self.record = record
            super.init(key: key, bytes: bytes)
        }
    }

    struct Entries {
        /// By the hash of the record's key: a lookup hashes the key bytes
        /// it is lent (a scan's, straight from LMDB) and allocates nothing.
        /// The entry's own key tells a colliding key apart, and the newer
        /// of two takes the place. Values of a non-generic class: the
        /// dictionary's probing is compiled for its concrete types instead
        /// of run through generic value witnesses.
        var records: [Int: RecordMemoEntry] = [:]
        /// The hashes held, in no particular order: a full memo forgets one
        /// chosen at random for each new record.
        var keys: [Int] = []
        var random: UInt64 = 0x9E37_79B9_7F4A_7C15

        /// A pseudo-random index below `bound` (xorshift: cheap, and
        /// nothing depends on its quality beyond spreading evictions).
        mutating func index(below bound: Int) -> Int {
            random ^= random << 13
            random ^= random >> 7
            random ^= random << 17
            return Int(random % UInt64(bound))
        }
    }

    private let entries = Mutex(Entries())
    private let capacity: Int

    /// Records held now.
    var count: Int { entries.withLock { $0.records.count } }

    /// - Parameter capacity: records kept; past it, each new record takes
    ///   the place of one chosen at random.
    public init(capacity: Int = 20_000) {
        self.capacity = max(1, capacity)
    }

    /// Stores a record. Random replacement rather than starting over (or
    /// evicting the oldest) keeps most of a working set a little larger
    /// than the memo: a scan over more rows than it holds, repeated, still
    /// finds most of them instead of none.
    private func insert(_ key: Int, _ value: Entry, into entries: inout Entries) {
        if entries.records.updateValue(value, forKey: key) != nil { return }
        if entries.keys.count < capacity {
            entries.keys.append(key)
            return
        }
        let slot = entries.index(below: entries.keys.count)
        entries.records.removeValue(forKey: entries.keys[slot])
        entries.keys[slot] = key
    }

    /// Remembers a record just written under `key` as `bytes`, so the next
    /// read of it decodes nothing (a counter row read, added to and written
    /// again and again).
    public func remember(_ key: [UInt8], bytes: [UInt8], record: Record) {
        let hash = key.withUnsafeBytes(Self.hash)
        entries.withLock { entries in insert(hash, Entry(key: key, bytes: bytes, record: record), into: &entries) }
    }

    /// The record stored under `key` as `bytes`: remembered if these are the
    /// bytes it was remembered with, else decoded (and remembered).
    func record(for key: UnsafeRawBufferPointer, bytes: UnsafeRawBufferPointer, decode: (UnsafeRawBufferPointer) throws -> Record) rethrows -> Record {
        let hash = Self.hash(key)
        let remembered = entries.withLock { $0.records[hash] }
        if let remembered, Self.same(remembered.key, key), Self.same(remembered.bytes, bytes) {
            // Only `Entry` (of this memo's record type) is ever stored.
            return unsafeDowncast(remembered, to: Entry.self).record
        }
        let record = try decode(bytes)
        let entry = Entry(key: Array(key.bindMemory(to: UInt8.self)), bytes: Array(bytes.bindMemory(to: UInt8.self)), record: record)
        entries.withLock { entries in insert(hash, entry, into: &entries) }
        return record
    }

    func record(for key: [UInt8], bytes: UnsafeRawBufferPointer, decode: (UnsafeRawBufferPointer) throws -> Record) rethrows -> Record {
        try key.withUnsafeBytes { raw in try record(for: raw, bytes: bytes, decode: decode) }
    }

    /// The key's bytes hashed in one pass (an array of bytes hashes byte by byte).
    static func hash(_ key: UnsafeRawBufferPointer) -> Int {
        var hasher = Hasher()
        hasher.combine(bytes: key)
        return hasher.finalize()
    }

    static func same(_ stored: [UInt8], _ bytes: UnsafeRawBufferPointer) -> Bool {
        guard stored.count == bytes.count else { return false }
        return stored.withUnsafeBytes { stored in
            guard let storedBase = stored.baseAddress, let base = bytes.baseAddress else { return bytes.isEmpty }
            return memcmp(storedBase, base, bytes.count) == 0
        }
    }
}

extension Table {
    /// ``get(_:in:)`` through a memo of decoded records.
    public func get<T: TransactionReading & ~Copyable>(_ key: Key, in txn: borrowing T, memo: RecordMemo<Record>) throws -> Record? {
        let keyBytes = key.bytes
        return try txn.withValue(keyBytes, in: records) { raw in try memo.record(for: keyBytes, bytes: raw) { try decode($0) } }
    }

    /// ``get(_:_:in:)`` (a unique index) through a memo of decoded records.
    public func get<T: TransactionReading & ~Copyable>(_ index: IndexDefinition<Record>, _ key: Key, in txn: borrowing T,
                                                       memo: RecordMemo<Record>) throws -> Record? {
        precondition(index.unique, "\(name).\(index.name) is not unique; use list(index:prefix:)")
        guard let primaryKey = try txn.get(key.bytes, in: database(of: index)) else { return nil }
        guard let record = try get(Key(bytes: primaryKey), in: txn, memo: memo) else {
            throw StorageError.corruptRecord(table: name, detail: "index \(index.name) points at a missing record")
        }
        return record
    }
}

extension Table {
    /// Visits records whose primary key starts with `prefix`, from the first
    /// key at or after `start`, in key order, while `body` returns true:
    /// for scans too long to page.
    public func forEach<T: TransactionReading & ~Copyable>(prefix: Key = Key(), from start: [UInt8]? = nil, in txn: borrowing T,
                                                           _ body: (Record) throws -> Bool) throws {
        try txn.scan(records, prefix: prefix.bytes, from: start) { _, value in try body(try decode(value)) }
    }

    /// ``forEach(prefix:from:in:_:)`` through a memo of decoded records:
    /// records read before and unchanged since are not decoded again.
    public func forEach<T: TransactionReading & ~Copyable>(prefix: Key = Key(), from start: [UInt8]? = nil, in txn: borrowing T,
                                                           memo: RecordMemo<Record>, _ body: (Record) throws -> Bool) throws {
        try txn.scan(records, prefix: prefix.bytes, from: start) { key, value in
            try body(try memo.record(for: key, bytes: value) { try decode($0) })
        }
    }

    /// What a scan does with a record, decided on its key alone.
    public enum KeyVerdict: Sendable {
        case visit, skip, stop
    }

    /// ``forEach(prefix:from:in:memo:_:)``, with `examine` judging each key
    /// first: records it skips are neither decoded nor looked up in the
    /// memo, and `.stop` ends the scan.
    public func forEach<T: TransactionReading & ~Copyable>(prefix: Key = Key(), from start: [UInt8]? = nil, in txn: borrowing T,
                                                           memo: RecordMemo<Record>?, examine: (UnsafeRawBufferPointer) -> KeyVerdict,
                                                           _ body: (Record) throws -> Bool) throws {
        try txn.scan(records, prefix: prefix.bytes, from: start) { key, value in
            switch examine(key) {
            case .stop: return false
            case .skip: return true
            case .visit:
                guard let memo else { return try body(try decode(value)) }
                return try body(try memo.record(for: key, bytes: value) { try decode($0) })
            }
        }
    }

    /// Visits the primary keys under `prefix` without decoding the records.
    /// The key is lent for the duration of each call.
    public func forEachKey<T: TransactionReading & ~Copyable>(prefix: Key = Key(), in txn: borrowing T,
                                                              _ body: (UnsafeRawBufferPointer) throws -> Bool) throws {
        try txn.scan(records, prefix: prefix.bytes) { key, _ in try body(key) }
    }

    /// Stores `record` under its key without reading what it replaces, for
    /// tables without indexes (counters rewritten in bulk).
    public func store(_ record: Record, in txn: inout WriteTransaction) throws {
        precondition(definition.indexes.isEmpty, "\(name) has indexes; use put(_:in:)")
        let primaryKey = definition.primaryKey(record)
        do {
            try txn.put(try record.serializedBytes(), forKey: primaryKey.bytes, in: records)
        } catch LMDBError.badValueSize {
            throw StorageError.keyTooLong(table: name, index: nil)
        }
    }

    /// ``store(_:in:)``, remembering the record in `memo` with the bytes written.
    public func store(_ record: Record, in txn: inout WriteTransaction, memo: RecordMemo<Record>) throws {
        precondition(definition.indexes.isEmpty, "\(name) has indexes; use put(_:in:)")
        let primaryKey = definition.primaryKey(record).bytes
        let bytes = try record.serializedBytes()
        do {
            try txn.put(bytes, forKey: primaryKey, in: records)
        } catch LMDBError.badValueSize {
            throw StorageError.keyTooLong(table: name, index: nil)
        }
        memo.remember(primaryKey, bytes: bytes, record: record)
    }

    /// Removes the record under `key` without reading it, for tables without indexes.
    @discardableResult
    public func deleteKey(_ key: Key, in txn: inout WriteTransaction) throws -> Bool {
        precondition(definition.indexes.isEmpty, "\(name) has indexes; use delete(_:in:)")
        return try txn.delete(key.bytes, in: records)
    }

    /// Removes every record and index entry.
    public func clear(in txn: inout WriteTransaction) throws {
        try txn.clear(records)
        for database in indexDatabases.values { try txn.clear(database) }
    }
}
