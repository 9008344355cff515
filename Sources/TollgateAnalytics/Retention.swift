import FoundationEssentials
import Logging
import ServiceLifecycle
import Synchronization
import TollgateProto
public import TollgateStorage

/// How long each granularity's rows are kept (`[analytics]`).
public struct UsageRetention: Sendable, Hashable {
    public var minuteMs: Int64
    public var hourMs: Int64
    public var dayMs: Int64
    public var intervalMs: Int64
    /// Rows deleted per write transaction: pruning never holds the writer long.
    public var batchRows: Int

    public init(minuteMs: Int64 = 2 * 86_400_000, hourMs: Int64 = 90 * 86_400_000, dayMs: Int64 = 3 * 365 * 86_400_000,
                intervalMs: Int64 = 60_000, batchRows: Int = 1000) {
        self.minuteMs = minuteMs
        self.hourMs = hourMs
        self.dayMs = dayMs
        self.intervalMs = intervalMs
        self.batchRows = batchRows
    }

    func keep(_ granularity: BucketGranularity) -> Int64 {
        switch granularity {
        case .minute: minuteMs
        case .hour: hourMs
        default: dayMs
        }
    }
}

/// Deletes rows older than their granularity's retention, a small
/// transaction at a time so ingestion commits in between.
public final class UsagePruner: Sendable {
    public let statdb: StatisticsDatabase
    private let settings: Mutex<UsageRetention>
    private let pruned = Atomic<UInt64>(0)

    public init(statdb: StatisticsDatabase, retention: UsageRetention) {
        self.statdb = statdb
        self.settings = Mutex(retention)
    }

    public var retention: UsageRetention {
        get { settings.withLock { $0 } }
        set { settings.withLock { $0 = newValue } }
    }

    public var prunedRows: UInt64 { pruned.load(ordering: .relaxed) }

    /// One pass over every granularity; returns the rows deleted.
    @discardableResult
    public func prune(nowUnixMs: Int64) async throws -> Int {
        let retention = self.retention
        var total = 0
        for granularity in [BucketGranularity.minute, .hour, .day] {
            let cutoff = nowUnixMs - retention.keep(granularity)
            while true {
                let statdb = self.statdb
                let limit = retention.batchRows
                let deleted = try await statdb.database.write { txn in
                    try statdb.pruneSummaries(granularity, before: cutoff, limit: limit, in: &txn)
                }
                total += deleted
                pruned.add(UInt64(deleted), ordering: .relaxed)
                if deleted < limit { break }
                await Task.yield()
            }
        }
        return total
    }
}

/// Builds what an older statdb lacks (the per-application rows), then runs
/// the pruner at its interval for as long as the node runs. One service:
/// a service that returns would stop the node.
struct PruningService: Service {
    let pruner: UsagePruner
    let backfill: ApplicationRowsBackfill
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown {
            do {
                let written = try await backfill.run()
                if written > 0 { logger.info("statdb: built \(written) per-application summary rows from the detailed rows of an older statdb") }
            } catch {
                logger.error("statdb: building per-application summary rows failed: \(error); queries by application read the detailed rows until a restart builds them")
            }
            while !Task.isCancelled {
                do {
                    let deleted = try await pruner.prune(nowUnixMs: Int64(Date().timeIntervalSince1970 * 1000))
                    if deleted > 0 { logger.info("statdb: pruned \(deleted) summary rows past their retention") }
                } catch {
                    logger.error("statdb: pruning failed: \(error)")
                }
                try? await Task.sleep(for: .milliseconds(pruner.retention.intervalMs))
            }
        }
    }
}
