import FoundationEssentials
import Logging
import ServiceLifecycle
import Synchronization
import TollgateProto
public import TollgateStorage

/// How long each granularity's rows are kept, and when minutes are rolled
/// up (`[analytics]`).
public struct UsageRetention: Sendable, Hashable {
    public var minuteMs: Int64
    public var hourMs: Int64
    public var dayMs: Int64
    public var intervalMs: Int64
    /// Rows deleted per write transaction: pruning never holds the writer long.
    public var batchRows: Int
    /// How long after its end a minute waits for its roll-up into its hour,
    /// day and week, so batches still on their way add to the minute's rows alone.
    public var rollupDelayMs: Int64

    public init(minuteMs: Int64 = 2 * 86_400_000, hourMs: Int64 = 90 * 86_400_000, dayMs: Int64 = 3 * 365 * 86_400_000,
                intervalMs: Int64 = 60_000, batchRows: Int = 1000, rollupDelayMs: Int64 = 60_000) {
        self.minuteMs = minuteMs
        self.hourMs = hourMs
        self.dayMs = dayMs
        self.intervalMs = intervalMs
        self.batchRows = batchRows
        self.rollupDelayMs = rollupDelayMs
    }

    func keep(_ granularity: BucketGranularity) -> Int64 {
        switch granularity {
        case .minute: minuteMs
        case .hour: hourMs
        // Weeks as long as days: a week's row goes with its first day, and
        // only a range reaching back past that would have read it whole.
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
        for granularity in [BucketGranularity.minute, .hour, .day, .week] {
            let cutoff = nowUnixMs - retention.keep(granularity)
            while true {
                let statdb = self.statdb
                let limit = retention.batchRows
                let deleted = try await statdb.database.write { txn in
                    // Minutes not yet in their hours and days stay, however
                    // old: deleting them would lose their calls.
                    let keep = granularity == .minute ? try statdb.rollupWatermark(in: txn) ?? 0 : cutoff
                    return try statdb.pruneSummaries(granularity, before: min(cutoff, keep), limit: limit, in: &txn)
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

/// Builds what an older statdb lacks (the per-application and per-tenant
/// rows), then rolls ended minutes into their hours, days and weeks and runs
/// the pruner at its interval, for as long as the node runs. One service: a
/// service that returns would stop the node.
struct PruningService: Service {
    let pruner: UsagePruner
    let ingest: UsageIngest
    let logger: Logger
    /// How often ended minutes are rolled up.
    static let rollupIntervalMs: Int64 = 15_000

    func run() async throws {
        await cancelWhenGracefulShutdown {
            for (target, name) in [(SummaryRowsBackfill.Target.perApplication, "per-application"), (.perTenant, "per-tenant")] {
                do {
                    let written = try await SummaryRowsBackfill(statdb: pruner.statdb, target: target).run()
                    if written > 0 { logger.info("statdb: built \(written) \(name) summary rows from the finer rows of an older statdb") }
                } catch {
                    logger.error("statdb: building \(name) summary rows failed: \(error); queries read the finer rows until a restart builds them")
                }
            }
            var nextPrune: Int64 = 0
            while !Task.isCancelled {
                let now = Int64(Date().timeIntervalSince1970 * 1000)
                do {
                    try await ingest.rollUp(before: now - pruner.retention.rollupDelayMs)
                } catch {
                    logger.error("statdb: rolling minutes up into hours and days failed: \(error); queries add the minutes instead")
                }
                if now >= nextPrune {
                    do {
                        let deleted = try await pruner.prune(nowUnixMs: now)
                        if deleted > 0 { logger.info("statdb: pruned \(deleted) summary rows past their retention") }
                    } catch {
                        logger.error("statdb: pruning failed: \(error)")
                    }
                    nextPrune = now + pruner.retention.intervalMs
                }
                try? await Task.sleep(for: .milliseconds(min(Self.rollupIntervalMs, pruner.retention.intervalMs)))
            }
        }
    }
}
