public import LMDBKit
public import TollgateProto

/// `statdb`: usage summaries per tenant, API, version, resource, verb,
/// application, user, key type and status class in minute, hour and day
/// buckets, when each API and application was last called, and per gateway
/// the highest usage batch applied (docs/analytics.md). Written by
/// analytics; read by analytics, publisher and store nodes of the host.
public struct StatisticsDatabase: Sendable {
    /// Version 2 keys summaries by key type and status class too; the
    /// version-1 rows (never written by a release) are dropped.
    public static let schema = Schema(name: LogicalDatabaseName.statdb.rawValue, version: 2, migrations: [
        Schema.Migration(version: 2) { txn, database in
            let old = try database.table(summaryTable, in: &txn)
            try old.clear(in: &txn)
        },
    ])

    /// Bucket first, so one granularity and time range is a contiguous scan,
    /// then the tenant and API, so one tenant's or API's rows of a bucket
    /// are a prefix.
    public static let summaryTable = TableDefinition<UsageSummary>("usage_summaries", primaryKey: { summaryKey($0) })
    /// The same counts per API only (and the subscribers' tenant): what
    /// tenant- and provider-wide queries read, one row per API and bucket
    /// instead of one per resource, application, user, key type and status.
    public static let apiSummaryTable = TableDefinition<UsageSummary>("api_usage_summaries", primaryKey: { apiSummaryKey($0) })
    /// Per gateway and spool epoch: the highest batch sequence applied.
    public static let cursorTable = TableDefinition<UsageIngestCursor>("ingest_cursors", primaryKey: {
        Key(.string($0.gatewayId), .uint64($0.epoch))
    })
    public static let apiLastAccessTable = TableDefinition<UsageLastAccess>("api_last_access", primaryKey: {
        Key(.string($0.tenantDomain.lowercased()), .string($0.apiContext), .string($0.apiVersion))
    })
    public static let applicationLastAccessTable = TableDefinition<UsageLastAccess>("application_last_access", primaryKey: {
        Key(.string($0.tenantDomain.lowercased()), .string($0.applicationId))
    })

    /// The longest each string dimension is kept (UTF-8 bytes), so a key
    /// always fits LMDB's 511 bytes: longer values are cut at a character.
    public enum Limit {
        public static let tenant = 48
        public static let context = 96
        public static let version = 32
        public static let resource = 96
        public static let applicationID = 48
        public static let username = 80
    }

    public static func summaryKey(_ s: UsageSummary) -> Key {
        summaryPrefix(granularity: s.granularity, bucketStartUnixMs: s.bucketStartUnixMs, tenant: s.tenantDomain, context: s.apiContext,
                      version: s.apiVersion)
            .appending(.string(s.resource)).appending(.int64(Int64(s.verb.rawValue)))
            .appending(.string(s.applicationTenantDomain.lowercased())).appending(.string(s.applicationId)).appending(.string(s.username))
            .appending(.int64(Int64(s.keyType.rawValue))).appending(.uint64(UInt64(s.statusClass)))
    }

    public static func apiSummaryKey(_ s: UsageSummary) -> Key {
        summaryPrefix(granularity: s.granularity, bucketStartUnixMs: s.bucketStartUnixMs, tenant: s.tenantDomain, context: s.apiContext,
                      version: s.apiVersion)
            .appending(.string(s.applicationTenantDomain.lowercased()))
    }

    /// The start of the keys of one bucket (in either summary table), narrowed by as many of tenant,
    /// context and version as are given (each only after the one before).
    public static func summaryPrefix(granularity: BucketGranularity, bucketStartUnixMs: Int64? = nil, tenant: String? = nil,
                                     context: String? = nil, version: String? = nil) -> Key {
        var key = Key(.int64(Int64(granularity.rawValue)))
        guard let bucketStartUnixMs else { return key }
        key.append(.int64(bucketStartUnixMs))
        guard let tenant else { return key }
        key.append(.string(tenant.lowercased()))
        guard let context else { return key }
        key.append(.string(context))
        guard let version else { return key }
        key.append(.string(version))
        return key
    }

    public let database: LogicalDatabase
    public let summaries: Table<UsageSummary>
    public let apiSummaries: Table<UsageSummary>
    public let cursors: Table<UsageIngestCursor>
    public let apiLastAccess: Table<UsageLastAccess>
    public let applicationLastAccess: Table<UsageLastAccess>

    /// Opens `<dataDirectory>/statdb`.
    public static func open(in dataDirectory: String, options: Environment.Options = .init()) throws -> StatisticsDatabase {
        try LogicalDatabase.open(schema: schema, in: dataDirectory, options: options) { database in
            StatisticsDatabase(database: database, summaries: try database.table(summaryTable), apiSummaries: try database.table(apiSummaryTable),
                               cursors: try database.table(cursorTable),
                               apiLastAccess: try database.table(apiLastAccessTable),
                               applicationLastAccess: try database.table(applicationLastAccessTable))
        }
    }

    /// Summaries of one granularity whose buckets start in `[from, to)`.
    public func summaries(_ granularity: BucketGranularity, fromUnixMs from: Int64, toUnixMs to: Int64) throws -> [UsageSummary] {
        try database.environment.read { txn in
            var out: [UsageSummary] = []
            try forEachSummary(granularity, fromUnixMs: from, toUnixMs: to, in: txn) { summary in
                out.append(summary)
                return true
            }
            return out
        }
    }

    /// Visits the summaries of one granularity whose buckets start in
    /// `[from, to)`, in key order, while `body` returns true.
    public func forEachSummary<T: TransactionReading & ~Copyable>(_ granularity: BucketGranularity, fromUnixMs from: Int64, toUnixMs to: Int64,
                                                                  perAPI: Bool = false, in txn: borrowing T, memo: RecordMemo<UsageSummary>? = nil,
                                                                  _ body: (UsageSummary) throws -> Bool) throws {
        let start = Self.summaryPrefix(granularity: granularity, bucketStartUnixMs: from).bytes
        let table = perAPI ? apiSummaries : summaries
        let visit = { (summary: UsageSummary) throws -> Bool in
            if summary.bucketStartUnixMs >= to { return false }
            return try body(summary)
        }
        if let memo {
            try table.forEach(prefix: Self.summaryPrefix(granularity: granularity), from: start, in: txn, memo: memo, visit)
        } else {
            try table.forEach(prefix: Self.summaryPrefix(granularity: granularity), from: start, in: txn, visit)
        }
    }

    /// Visits the summaries under `prefix` (``summaryPrefix(granularity:bucketStartUnixMs:tenant:context:version:)``).
    public func forEachSummary<T: TransactionReading & ~Copyable>(prefix: Key, perAPI: Bool = false, in txn: borrowing T,
                                                                  memo: RecordMemo<UsageSummary>? = nil, _ body: (UsageSummary) throws -> Bool) throws {
        if let memo {
            try (perAPI ? apiSummaries : summaries).forEach(prefix: prefix, in: txn, memo: memo, body)
        } else {
            try (perAPI ? apiSummaries : summaries).forEach(prefix: prefix, in: txn, body)
        }
    }

    /// Deletes up to `limit` summaries of `granularity` whose buckets start
    /// before `cutoff`, oldest first, in the caller's transaction; returns
    /// how many (fewer than `limit`: nothing older is left).
    public func pruneSummaries(_ granularity: BucketGranularity, before cutoff: Int64, limit: Int, in txn: inout WriteTransaction) throws -> Int {
        let deleted = try prune(summaries, granularity, before: cutoff, limit: limit, in: &txn)
        return deleted + (try prune(apiSummaries, granularity, before: cutoff, limit: max(1, limit - deleted), in: &txn))
    }

    private func prune(_ table: Table<UsageSummary>, _ granularity: BucketGranularity, before cutoff: Int64, limit: Int,
                       in txn: inout WriteTransaction) throws -> Int {
        var keys: [Key] = []
        try table.forEachKey(prefix: Self.summaryPrefix(granularity: granularity), in: txn) { key in
            // The bucket start follows the 8-byte granularity.
            var bucket: UInt64 = 0
            for byte in key[8..<16] { bucket = bucket << 8 | UInt64(byte) }
            if Int64(bitPattern: bucket ^ (1 << 63)) >= cutoff { return false }
            keys.append(Key(bytes: Array(key)))
            return keys.count < limit
        }
        for key in keys { try table.deleteKey(key, in: &txn) }
        return keys.count
    }
}
