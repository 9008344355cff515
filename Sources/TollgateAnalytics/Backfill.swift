import LMDBKit
import TollgateProto
public import TollgateStorage

/// Builds the per-application rows of a statdb written before they existed
/// (schema 2) from its detailed rows, a few buckets per write transaction.
/// Each bucket's rows are recomputed whole inside one transaction from the
/// detailed rows, which already hold every count ingested into that bucket
/// (before or after the upgrade), and stored over whatever is there: the
/// result is exact however ingestion interleaves, and a backfill cut short
/// by a restart simply starts again. Until it finishes, queries read the
/// detailed rows (``StatisticsDatabase/applicationRowsPending(in:)``).
public struct ApplicationRowsBackfill: Sendable {
    public let statdb: StatisticsDatabase
    /// Detailed rows read per transaction (whole buckets: it may read more).
    public var rowsPerTransaction: Int

    public init(statdb: StatisticsDatabase, rowsPerTransaction: Int = 20_000) {
        self.statdb = statdb
        self.rowsPerTransaction = rowsPerTransaction
    }

    /// Runs the backfill if the statdb needs one; returns the per-application rows written.
    @discardableResult
    public func run() async throws -> Int {
        let statdb = self.statdb
        guard try statdb.database.read({ try statdb.applicationRowsPending(in: $0) }) else { return 0 }
        var written = 0
        for granularity in [BucketGranularity.minute, .hour, .day] {
            var from = Int64.min
            while true {
                let limit = rowsPerTransaction, start = from
                let (rows, next) = try await statdb.database.write { txn -> (Int, Int64?) in
                    try Self.backfill(granularity, from: start, rowLimit: limit, statdb: statdb, in: &txn)
                }
                written += rows
                guard let next else { break }
                from = next
                await Task.yield()
            }
        }
        try await statdb.database.write { txn in try statdb.setApplicationRowsPending(false, in: &txn) }
        return written
    }

    /// Recomputes the per-application rows of whole buckets of `granularity`
    /// from `from` on, until more than `rowLimit` detailed rows were read;
    /// returns the rows written and the next bucket to start from (nil: done).
    static func backfill(_ granularity: BucketGranularity, from: Int64, rowLimit: Int, statdb: StatisticsDatabase,
                         in txn: inout WriteTransaction) throws -> (rows: Int, next: Int64?) {
        var detailed: [UsageSummary] = []
        var next: Int64?
        try statdb.forEachSummary(granularity, fromUnixMs: from, toUnixMs: .max, in: txn) { row in
            // Stop only where a bucket ends, so each bucket is rebuilt whole.
            if detailed.count >= rowLimit, let last = detailed.last, row.bucketStartUnixMs != last.bucketStartUnixMs {
                next = row.bucketStartUnixMs
                return false
            }
            detailed.append(row)
            return true
        }
        let rows = UsageRollup.applicationRows(of: detailed)
        for row in rows { try statdb.applicationSummaries.store(row, in: &txn) }
        return (rows.count, next)
    }
}
