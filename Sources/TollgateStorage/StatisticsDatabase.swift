public import LMDBKit
public import TollgateProto

/// `statdb`: usage summaries per API, application, user and resource in
/// time buckets. Written by analytics; read by publisher and store.
public struct StatisticsDatabase: Sendable {
    public static let schema = Schema(name: LogicalDatabaseName.statdb.rawValue, version: 1)

    /// Bucket first, so one granularity and time range is a contiguous scan.
    public static let summaryTable = TableDefinition<UsageSummary>("usage_summaries", primaryKey: { summaryKey($0) })

    public static func summaryKey(_ s: UsageSummary) -> Key {
        Key(.int64(Int64(s.granularity.rawValue)), .int64(s.bucketStartUnixMs), .string(s.tenantDomain.lowercased()),
            .string(s.apiContext), .string(s.apiVersion), .string(s.applicationId), .string(s.username),
            .string(s.resource), .int64(Int64(s.verb.rawValue)))
    }

    public let database: LogicalDatabase
    public let summaries: Table<UsageSummary>

    /// Opens `<dataDirectory>/statdb`.
    public static func open(in dataDirectory: String, options: Environment.Options = .init()) throws -> StatisticsDatabase {
        try LogicalDatabase.open(schema: schema, in: dataDirectory, options: options) { database in
            StatisticsDatabase(database: database, summaries: try database.table(summaryTable))
        }
    }

    /// Summaries of one granularity whose buckets start in `[from, to)`.
    public func summaries(_ granularity: BucketGranularity, fromUnixMs from: Int64, toUnixMs to: Int64) throws -> [UsageSummary] {
        try database.environment.read { txn in
            var out: [UsageSummary] = []
            let page = try summaries.list(
                prefix: Key(.int64(Int64(granularity.rawValue))), pageSize: Int.max,
                pageToken: Key(.int64(Int64(granularity.rawValue)), .int64(from)).bytes, in: txn)
            for summary in page.items {
                if summary.bucketStartUnixMs >= to { break }
                out.append(summary)
            }
            return out
        }
    }
}
