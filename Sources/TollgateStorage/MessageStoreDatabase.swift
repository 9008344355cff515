public import LMDBKit
public import TollgateProto

/// `mbstoredb`: a traffic manager's durable log of decisions and counted
/// events, one per traffic manager node, in sequence order.
public struct MessageStoreDatabase: Sendable {
    public static let schema = Schema(name: LogicalDatabaseName.mbstoredb.rawValue, version: 1)

    public static let logTable = TableDefinition<TrafficLogRecord>("traffic_log", primaryKey: { Key(.uint64($0.sequence)) })

    public let database: LogicalDatabase
    public let log: Table<TrafficLogRecord>

    /// Opens `<dataDirectory>/mbstoredb`.
    public static func open(in dataDirectory: String, options: Environment.Options = .init()) throws -> MessageStoreDatabase {
        try LogicalDatabase.open(schema: schema, in: dataDirectory, options: options) { database in
            MessageStoreDatabase(database: database, log: try database.table(logTable))
        }
    }

    /// Appends `record` with the next sequence number; returns the number.
    @discardableResult
    public func append(_ record: TrafficLogRecord) throws -> UInt64 {
        try database.environment.write { txn in
            let sequence = try database.nextSequence("traffic_log", in: &txn)
            var record = record
            record.sequence = sequence
            try log.insert(record, in: &txn)
            return sequence
        }
    }

    /// Records after `sequence`, oldest first, at most `limit`.
    public func records(after sequence: UInt64, limit: Int) throws -> [TrafficLogRecord] {
        try database.environment.read { txn in
            try log.list(pageSize: limit, pageToken: Key(.uint64(sequence + 1)).bytes, in: txn).items
        }
    }
}
