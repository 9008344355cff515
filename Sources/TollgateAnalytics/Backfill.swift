import LMDBKit
import TollgateProto
public import TollgateStorage

/// Builds the roll-up rows a statdb written before they existed lacks: the
/// per-application rows (schema 2) from its detailed rows, the per-tenant
/// rows (schema 3) from its per-API rows, a few buckets per write
/// transaction. Each bucket's rows are recomputed whole inside one
/// transaction from the rows they sum, which already hold every count
/// ingested into that bucket (before or after the upgrade), and stored over
/// whatever is there: the result is exact however ingestion interleaves,
/// and a backfill cut short by a restart simply starts again. Until it
/// finishes, queries read the finer rows
/// (``StatisticsDatabase/applicationRowsPending(in:)``,
/// ``StatisticsDatabase/tenantRowsPending(in:)``).
public struct SummaryRowsBackfill: Sendable {
    public enum Target: Sendable {
        case perApplication, perTenant
    }

    public let statdb: StatisticsDatabase
    public let target: Target
    /// Source rows read per transaction (whole buckets: it may read more).
    public var rowsPerTransaction: Int

    public init(statdb: StatisticsDatabase, target: Target, rowsPerTransaction: Int = 20_000) {
        self.statdb = statdb
        self.target = target
        self.rowsPerTransaction = rowsPerTransaction
    }

    /// Runs the backfill if the statdb needs one; returns the rows written.
    @discardableResult
    public func run() async throws -> Int {
        let statdb = self.statdb, target = self.target
        guard try statdb.database.read({ try Self.pending(target, statdb, in: $0) }) else { return 0 }
        var written = 0
        for granularity in [BucketGranularity.minute, .hour, .day, .week] {
            var from = Int64.min
            while true {
                let limit = rowsPerTransaction, start = from
                let (rows, next) = try await statdb.database.write { txn -> (Int, Int64?) in
                    try Self.backfill(target, granularity, from: start, rowLimit: limit, statdb: statdb, in: &txn)
                }
                written += rows
                guard let next else { break }
                from = next
                await Task.yield()
            }
        }
        try await statdb.database.write { txn in
            switch target {
            case .perApplication: try statdb.setApplicationRowsPending(false, in: &txn)
            case .perTenant: try statdb.setTenantRowsPending(false, in: &txn)
            }
        }
        return written
    }

    static func pending(_ target: Target, _ statdb: StatisticsDatabase, in txn: borrowing ReadTransaction) throws -> Bool {
        switch target {
        case .perApplication: try statdb.applicationRowsPending(in: txn)
        case .perTenant: try statdb.tenantRowsPending(in: txn)
        }
    }

    /// Recomputes the target rows of whole buckets of `granularity` from
    /// `from` on, until more than `rowLimit` source rows were read; returns
    /// the rows written and the next bucket to start from (nil: done).
    static func backfill(_ target: Target, _ granularity: BucketGranularity, from: Int64, rowLimit: Int, statdb: StatisticsDatabase,
                         in txn: inout WriteTransaction) throws -> (rows: Int, next: Int64?) {
        var source: [UsageSummary] = []
        var next: Int64?
        try statdb.forEachSummary(granularity, fromUnixMs: from, toUnixMs: .max, rows: target == .perApplication ? .detailed : .perAPI,
                                  in: txn) { row in
            // Stop only where a bucket ends, so each bucket is rebuilt whole.
            if source.count >= rowLimit, let last = source.last, row.bucketStartUnixMs != last.bucketStartUnixMs {
                next = row.bucketStartUnixMs
                return false
            }
            source.append(row)
            return true
        }
        switch target {
        case .perApplication:
            let rows = UsageRollup.applicationRows(of: source)
            for row in rows { try statdb.applicationSummaries.store(row, in: &txn) }
            return (rows.count, next)
        case .perTenant:
            let rows = UsageRollup.tenantRows(of: source)
            for row in rows { try statdb.tenantSummaries.store(row, in: &txn) }
            return (rows.count, next)
        }
    }
}
