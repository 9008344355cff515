public import LMDBKit
public import TollgateProto

/// `mbstoredb`: a traffic manager's durable state, one per traffic manager
/// node: its lease counters per throttle key and window, and its log of
/// decisions in sequence order (docs/throttling.md §6).
public struct MessageStoreDatabase: Sendable {
    /// Version 1 had only the decision log; `lease_counters` is a new table,
    /// opened (created) on every start, so an older environment needs no step.
    public static let schema = Schema(name: LogicalDatabaseName.mbstoredb.rawValue, version: 1)

    public static let logTable = TableDefinition<TrafficLogRecord>("traffic_log", primaryKey: { Key(.uint64($0.sequence)) })
    /// Keyed by throttle key, then window start.
    public static let countersTable = TableDefinition<ThrottleCounter>("lease_counters", primaryKey: {
        Key(.string($0.throttleKey), .int64($0.windowStartUnixMs))
    })

    public let database: LogicalDatabase
    public let log: Table<TrafficLogRecord>
    public let counters: Table<ThrottleCounter>

    /// Opens `<dataDirectory>/mbstoredb`.
    public static func open(in dataDirectory: String, options: Environment.Options = .init()) throws -> MessageStoreDatabase {
        try LogicalDatabase.open(schema: schema, in: dataDirectory, options: options) { database in
            MessageStoreDatabase(database: database, log: try database.table(logTable), counters: try database.table(countersTable))
        }
    }

    /// Appends `record` with the next sequence number; returns the number.
    @discardableResult
    public func append(_ record: TrafficLogRecord) throws -> UInt64 {
        try database.environment.write { txn in try append(record, in: &txn) }
    }

    /// Appends `record` in the caller's write transaction.
    @discardableResult
    public func append(_ record: TrafficLogRecord, in txn: inout WriteTransaction) throws -> UInt64 {
        let sequence = try database.nextSequence("traffic_log", in: &txn)
        var record = record
        record.sequence = sequence
        try log.insert(record, in: &txn)
        return sequence
    }

    /// The newest sequence handed out (0 before the first record).
    public func headSequence() throws -> UInt64 {
        try database.environment.read { txn in
            try database.metaValue("sequence.traffic_log", in: txn).map { $0.reduce(UInt64(0)) { $0 << 8 | UInt64($1) } } ?? 0
        }
    }

    /// Records after `sequence`, oldest first, at most `limit`.
    public func records(after sequence: UInt64, limit: Int) throws -> [TrafficLogRecord] {
        try database.environment.read { txn in
            try log.list(pageSize: limit, pageToken: Key(.uint64(sequence + 1)).bytes, in: txn).items
        }
    }

    /// The oldest record still kept, if any.
    public func oldestRecord() throws -> TrafficLogRecord? {
        try database.environment.read { txn in try log.list(pageSize: 1, in: txn).items.first }
    }

    /// Deletes up to `limit` of the oldest log records recorded before
    /// `cutoff` (Unix ms), in the caller's transaction; returns how many.
    @discardableResult
    public func pruneLog(recordedBefore cutoff: Int64, limit: Int, in txn: inout WriteTransaction) throws -> Int {
        let oldest = try log.list(pageSize: limit, in: txn).items.filter { $0.recordedAtUnixMs < cutoff }
        for record in oldest { _ = try log.delete(record, in: &txn) }
        return oldest.count
    }

    /// Every stored counter (a starting traffic manager keeps the open windows).
    public func allCounters() throws -> [ThrottleCounter] {
        try database.environment.read { txn in
            var all: [ThrottleCounter] = []
            var token: [UInt8] = []
            repeat {
                let page = try counters.list(pageSize: 1000, pageToken: token, in: txn)
                all += page.items
                token = page.nextPageToken
            } while !token.isEmpty
            return all
        }
    }
}
