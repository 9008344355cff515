import Glibc
public import LMDBKit
public import TollgateProto

/// `statdb`: usage summaries per tenant, API, version, resource, verb,
/// application, user, key type and status class in minute, hour, day and
/// week buckets (with their sums per API, per application and per tenant),
/// when each API and application was last called, and per gateway the
/// highest usage batch applied (docs/analytics.md). Written by
/// analytics; read by analytics, publisher and store nodes of the host.
public struct StatisticsDatabase: Sendable {
    /// Version 2 keys summaries by key type and status class too; the
    /// version-1 rows (never written by a release) are dropped. Version 3
    /// adds the per-application rows; a version-2 statdb has none for the
    /// buckets it already holds, so it is marked for their backfill
    /// (``applicationRowsPending(in:)``), which analytics runs.
    ///
    /// Version 4 adds the per-tenant rows (built from the per-API rows of
    /// an older statdb by a backfill, as version 3's were) and defers the
    /// hour, day and (new) week rows of recent minutes
    /// to a roll-up behind a stored watermark (``rollupWatermark(in:)``). Its
    /// migration has nothing to move: the rows an older version wrote are
    /// complete at every granularity it had, which ``open(in:options:nowUnixMs:)``
    /// records by setting the watermark and the first week past them. The
    /// version still changes so an older build, which would read the hour
    /// and day rows as complete, refuses a statdb this one wrote.
    public static let schema = Schema(name: LogicalDatabaseName.statdb.rawValue, version: 4, migrations: [
        Schema.Migration(version: 2) { txn, database in
            let old = try database.table(summaryTable, in: &txn)
            try old.clear(in: &txn)
        },
        Schema.Migration(version: 3) { txn, database in
            try database.setMetaValue([1], for: applicationRowsPendingKey, in: &txn)
        },
        Schema.Migration(version: 4) { txn, database in
            try database.setMetaValue([1], for: tenantRowsPendingKey, in: &txn)
        },
    ])
    static let applicationRowsPendingKey = "application_usage_summaries.backfill_pending"
    static let tenantRowsPendingKey = "tenant_usage_summaries.backfill_pending"
    static let rollupWatermarkKey = "usage_summaries.rollup_watermark"
    static let weekRowsSinceKey = "usage_summaries.week_rows_since"

    /// Bucket first, so one granularity and time range is a contiguous scan,
    /// then the tenant and API, so one tenant's or API's rows of a bucket
    /// are a prefix.
    public static let summaryTable = TableDefinition<UsageSummary>("usage_summaries", primaryKey: { summaryKey($0) })
    /// The same counts per API only (and the subscribers' tenant): what
    /// tenant- and provider-wide queries read, one row per API and bucket
    /// instead of one per resource, application, user, key type and status.
    public static let apiSummaryTable = TableDefinition<UsageSummary>("api_usage_summaries", primaryKey: { apiSummaryKey($0) })
    /// The same counts per application (its tenant and id) and API tenant
    /// only: what "top applications" and a consumer's totals read, one row
    /// per application and bucket instead of one per API, resource, user,
    /// key type and status. The application's tenant comes before its id, so
    /// one tenant's applications of a bucket are a prefix.
    public static let applicationSummaryTable = TableDefinition<UsageSummary>("application_usage_summaries", primaryKey: {
        applicationSummaryKey($0)
    })
    /// The same counts per tenant only (and the subscribers' tenant): what a
    /// tenant's series and totals read, one row per bucket instead of one
    /// per API.
    public static let tenantSummaryTable = TableDefinition<UsageSummary>("tenant_usage_summaries", primaryKey: { tenantSummaryKey($0) })
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
        // Appended in place: `appending` would copy the key per component,
        // and this runs for every row an ingest commit writes.
        var key = summaryPrefix(granularity: s.granularity, bucketStartUnixMs: s.bucketStartUnixMs, tenant: s.tenantDomain, context: s.apiContext,
                                version: s.apiVersion)
        key.append(.string(s.resource))
        key.append(.int64(Int64(s.verb.rawValue)))
        key.append(.string(lowercased(s.applicationTenantDomain)))
        key.append(.string(s.applicationId))
        key.append(.string(s.username))
        key.append(.int64(Int64(s.keyType.rawValue)))
        key.append(.uint64(UInt64(s.statusClass)))
        return key
    }

    /// `text` lowercased, without allocating when it already is (tenant
    /// domains almost always are).
    public static func lowercased(_ text: String) -> String {
        text.utf8.contains { $0 >= 0x41 && $0 <= 0x5A || $0 >= 0x80 } ? text.lowercased() : text
    }

    public static func apiSummaryKey(_ s: UsageSummary) -> Key {
        summaryPrefix(granularity: s.granularity, bucketStartUnixMs: s.bucketStartUnixMs, tenant: s.tenantDomain, context: s.apiContext,
                      version: s.apiVersion)
            .appending(.string(lowercased(s.applicationTenantDomain)))
    }

    /// Laid out as the per-API rows up to the tenant, so the same prefixes seek both.
    public static func tenantSummaryKey(_ s: UsageSummary) -> Key {
        summaryPrefix(granularity: s.granularity, bucketStartUnixMs: s.bucketStartUnixMs, tenant: s.tenantDomain)
            .appending(.string(lowercased(s.applicationTenantDomain)))
    }

    public static func applicationSummaryKey(_ s: UsageSummary) -> Key {
        applicationSummaryPrefix(granularity: s.granularity, bucketStartUnixMs: s.bucketStartUnixMs, applicationTenant: s.applicationTenantDomain,
                                 applicationID: s.applicationId)
            .appending(.string(lowercased(s.tenantDomain)))
    }

    /// The start of the keys of one bucket in `application_usage_summaries`,
    /// narrowed by the application's tenant and then its id.
    public static func applicationSummaryPrefix(granularity: BucketGranularity, bucketStartUnixMs: Int64, applicationTenant: String? = nil,
                                                applicationID: String? = nil) -> Key {
        var key = Key(.int64(Int64(granularity.rawValue)), .int64(bucketStartUnixMs))
        guard let applicationTenant else { return key }
        key.append(.string(lowercased(applicationTenant)))
        guard let applicationID else { return key }
        key.append(.string(applicationID))
        return key
    }

    /// The start of the keys of one bucket (in the detailed or per-API summary table), narrowed by as many of tenant,
    /// context and version as are given (each only after the one before).
    public static func summaryPrefix(granularity: BucketGranularity, bucketStartUnixMs: Int64? = nil, tenant: String? = nil,
                                     context: String? = nil, version: String? = nil) -> Key {
        var key = Key(.int64(Int64(granularity.rawValue)))
        guard let bucketStartUnixMs else { return key }
        key.append(.int64(bucketStartUnixMs))
        guard let tenant else { return key }
        key.append(.string(lowercased(tenant)))
        guard let context else { return key }
        key.append(.string(context))
        guard let version else { return key }
        key.append(.string(version))
        return key
    }

    public let database: LogicalDatabase
    public let summaries: Table<UsageSummary>
    public let apiSummaries: Table<UsageSummary>
    public let applicationSummaries: Table<UsageSummary>
    public let tenantSummaries: Table<UsageSummary>
    public let cursors: Table<UsageIngestCursor>
    public let apiLastAccess: Table<UsageLastAccess>
    public let applicationLastAccess: Table<UsageLastAccess>

    /// Opens `<dataDirectory>/statdb`. A statdb without a roll-up
    /// watermark or a first week gets them: 0 when it holds no summary yet,
    /// else the minute and the week after `nowUnixMs` (the clock's), since a
    /// version before 4 wrote each minute's hour and day rows with it and no
    /// week rows at all.
    public static func open(in dataDirectory: String, options: Environment.Options = .init(),
                            nowUnixMs: Int64? = nil) throws -> StatisticsDatabase {
        let statdb = try LogicalDatabase.open(schema: schema, in: dataDirectory, options: options) { database in
            StatisticsDatabase(database: database, summaries: try database.table(summaryTable), apiSummaries: try database.table(apiSummaryTable),
                               applicationSummaries: try database.table(applicationSummaryTable),
                               tenantSummaries: try database.table(tenantSummaryTable),
                               cursors: try database.table(cursorTable),
                               apiLastAccess: try database.table(apiLastAccessTable),
                               applicationLastAccess: try database.table(applicationLastAccessTable))
        }
        func unset<T: TransactionReading & ~Copyable>(_ txn: borrowing T) throws -> Bool {
            try statdb.rollupWatermark(in: txn) == nil || statdb.weekRowsSince(in: txn) == nil
        }
        if try statdb.database.read({ try unset($0) }) {
            try statdb.database.environment.write { txn in
                guard try unset(txn) else { return }
                var empty = true
                try statdb.summaries.forEachKey(in: txn) { _ in
                    empty = false
                    return false
                }
                let now = nowUnixMs ?? Int64(time(nil)) * 1000
                if try statdb.rollupWatermark(in: txn) == nil {
                    try statdb.setRollupWatermark(empty ? 0 : now - now % 60_000 + 60_000, in: &txn)
                }
                if try statdb.weekRowsSince(in: txn) == nil {
                    // Weeks start on Monday, four days after the epoch's Thursday.
                    let week: Int64 = 7 * 86_400_000, monday: Int64 = 4 * 86_400_000
                    let nextWeek = now - (now - monday) % week + week
                    try statdb.setWeekRowsSince(empty ? 0 : nextWeek, in: &txn)
                }
            }
        }
        return statdb
    }

    /// The roll-up watermark: every minute row of a bucket before it is
    /// counted in its hour and day rows too; the minute rows from it on are
    /// not yet, and a reader of hour or day rows adds them (docs/analytics.md,
    /// "Roll-ups"). nil only before ``open(in:options:nowUnixMs:)`` sets it
    /// (another process opening the statdb at that moment).
    public func rollupWatermark<T: TransactionReading & ~Copyable>(in txn: borrowing T) throws -> Int64? {
        try meta(Self.rollupWatermarkKey, in: txn)
    }

    public func setRollupWatermark(_ unixMs: Int64, in txn: inout WriteTransaction) throws {
        try setMeta(unixMs, Self.rollupWatermarkKey, in: &txn)
    }

    /// The first week with week rows: from it on every week's rows are
    /// complete; before it (a statdb from before version 4) only its days
    /// hold the counts, and queries read those instead. nil as for
    /// ``rollupWatermark(in:)``.
    public func weekRowsSince<T: TransactionReading & ~Copyable>(in txn: borrowing T) throws -> Int64? {
        try meta(Self.weekRowsSinceKey, in: txn)
    }

    public func setWeekRowsSince(_ unixMs: Int64, in txn: inout WriteTransaction) throws {
        try setMeta(unixMs, Self.weekRowsSinceKey, in: &txn)
    }

    private func meta<T: TransactionReading & ~Copyable>(_ name: String, in txn: borrowing T) throws -> Int64? {
        guard let bytes = try database.metaValue(name, in: txn), bytes.count == 8 else { return nil }
        return Int64(bitPattern: bytes.reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
    }

    private func setMeta(_ value: Int64, _ name: String, in txn: inout WriteTransaction) throws {
        try database.setMetaValue(withUnsafeBytes(of: UInt64(bitPattern: value).bigEndian, Array.init), for: name, in: &txn)
    }

    /// The first minute bucket at or after `fromUnixMs` that has a detailed
    /// row (every counted call writes one), or nil.
    public func firstMinuteBucket<T: TransactionReading & ~Copyable>(from fromUnixMs: Int64, in txn: borrowing T) throws -> Int64? {
        var found: Int64?
        try summaries.forEach(prefix: Self.summaryPrefix(granularity: .minute),
                              from: Self.summaryPrefix(granularity: .minute, bucketStartUnixMs: fromUnixMs).bytes, in: txn, memo: nil, examine: { key in
            if key.count >= 16 { found = Self.bucketStart(ofKey: key) }
            return .stop
        }) { _ in false }
        return found
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

    /// Which summary table a scan reads: the detailed rows, or one of their
    /// roll-ups (the same counts with fewer dimensions).
    public enum Rows: Sendable, Hashable {
        case detailed, perAPI, perApplication, perTenant
    }

    public func table(_ rows: Rows) -> Table<UsageSummary> {
        switch rows {
        case .detailed: summaries
        case .perAPI: apiSummaries
        case .perApplication: applicationSummaries
        case .perTenant: tenantSummaries
        }
    }

    /// A string dimension every row a scan visits must have, compared on
    /// the row's key before the row is decoded (or looked up in a memo).
    public struct KeyMatch: Sendable, Hashable {
        /// Which string component after the granularity and bucket.
        let component: Int
        /// That component as a key encodes it (terminator included, so it matches whole).
        let encoded: [UInt8]

        /// Rows of this API context (detailed and per-API rows: after the tenant).
        public static func apiContext(_ context: String) -> KeyMatch { KeyMatch(component: 1, encoded: Key(.string(context)).bytes) }
        /// Rows of this application (per-application rows: after its tenant).
        public static func applicationID(_ id: String) -> KeyMatch { KeyMatch(component: 1, encoded: Key(.string(id)).bytes) }

        func matches(_ key: UnsafeRawBufferPointer) -> Bool {
            // After the granularity and bucket start (two integers), skip `component` strings.
            var position = 16
            for _ in 0..<component { position = KeyBytes.endOfString(in: key, at: position) }
            guard key.count - position >= encoded.count else { return false }
            for (offset, byte) in encoded.enumerated() where key[position + offset] != byte { return false }
            return true
        }
    }

    /// The bucket start a summary key holds (after the 8-byte granularity).
    static func bucketStart(ofKey key: UnsafeRawBufferPointer) -> Int64 {
        KeyBytes.int64(in: key, at: 8)
    }

    /// Visits the summaries of one granularity whose buckets start in
    /// `[from, to)`, in key order, while `body` returns true; with `matching`,
    /// only rows whose key has that dimension (others are not decoded).
    public func forEachSummary<T: TransactionReading & ~Copyable>(_ granularity: BucketGranularity, fromUnixMs from: Int64, toUnixMs to: Int64,
                                                                  rows: Rows = .detailed, matching: KeyMatch? = nil, in txn: borrowing T,
                                                                  memo: RecordMemo<UsageSummary>? = nil,
                                                                  _ body: (UsageSummary) throws -> Bool) throws {
        // Every table's keys start with the granularity and the bucket.
        let start = Self.summaryPrefix(granularity: granularity, bucketStartUnixMs: from).bytes
        try table(rows).forEach(prefix: Self.summaryPrefix(granularity: granularity), from: start, in: txn, memo: memo, examine: { key in
            if key.count < 16 || Self.bucketStart(ofKey: key) >= to { return .stop }
            if let matching, !matching.matches(key) { return .skip }
            return .visit
        }, body)
    }

    /// Visits the summaries under `prefix` (``summaryPrefix(granularity:bucketStartUnixMs:tenant:context:version:)``,
    /// or ``applicationSummaryPrefix(granularity:bucketStartUnixMs:applicationTenant:applicationID:)`` for per-application rows).
    public func forEachSummary<T: TransactionReading & ~Copyable>(prefix: Key, rows: Rows = .detailed, matching: KeyMatch? = nil, in txn: borrowing T,
                                                                  memo: RecordMemo<UsageSummary>? = nil, _ body: (UsageSummary) throws -> Bool) throws {
        try table(rows).forEach(prefix: prefix, in: txn, memo: memo, examine: { key in
            if let matching, !matching.matches(key) { return .skip }
            return .visit
        }, body)
    }

    /// Deletes up to `limit` summaries of `granularity` whose buckets start
    /// before `cutoff`, oldest first, from each summary table in turn, in
    /// the caller's transaction; returns how many (fewer than `limit`:
    /// nothing older is left in any table).
    public func pruneSummaries(_ granularity: BucketGranularity, before cutoff: Int64, limit: Int, in txn: inout WriteTransaction) throws -> Int {
        var deleted = 0
        for table in [summaries, apiSummaries, applicationSummaries, tenantSummaries] {
            deleted += try prune(table, granularity, before: cutoff, limit: max(1, limit - deleted), in: &txn)
            if deleted >= limit { break }
        }
        return deleted
    }

    /// Whether the per-application rows may lack buckets written before
    /// they existed (a statdb from before schema 3 not yet backfilled):
    /// until then queries read the detailed rows instead.
    public func applicationRowsPending<T: TransactionReading & ~Copyable>(in txn: borrowing T) throws -> Bool {
        try database.metaValue(Self.applicationRowsPendingKey, in: txn) == [1]
    }

    public func setApplicationRowsPending(_ pending: Bool, in txn: inout WriteTransaction) throws {
        try database.setMetaValue([pending ? 1 : 0], for: Self.applicationRowsPendingKey, in: &txn)
    }

    /// Whether the per-tenant rows may lack buckets written before they
    /// existed (a statdb from before schema 4 not yet backfilled): until
    /// then queries read the per-API rows instead.
    public func tenantRowsPending<T: TransactionReading & ~Copyable>(in txn: borrowing T) throws -> Bool {
        try database.metaValue(Self.tenantRowsPendingKey, in: txn) == [1]
    }

    public func setTenantRowsPending(_ pending: Bool, in txn: inout WriteTransaction) throws {
        try database.setMetaValue([pending ? 1 : 0], for: Self.tenantRowsPendingKey, in: &txn)
    }

    private func prune(_ table: Table<UsageSummary>, _ granularity: BucketGranularity, before cutoff: Int64, limit: Int,
                       in txn: inout WriteTransaction) throws -> Int {
        var keys: [Key] = []
        try table.forEachKey(prefix: Self.summaryPrefix(granularity: granularity), in: txn) { key in
            if Self.bucketStart(ofKey: key) >= cutoff { return false }
            keys.append(Key(bytes: Array(key)))
            return keys.count < limit
        }
        for key in keys { try table.deleteKey(key, in: &txn) }
        return keys.count
    }
}
