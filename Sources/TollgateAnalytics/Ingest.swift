import FoundationEssentials
import LMDBKit
import Synchronization
public import TollgateProto
public import TollgateStorage

/// Applies gateways' usage batches to statdb exactly once. Each batch is
/// folded into per-minute rows where it arrives; batches queued while a
/// commit runs share the next write transaction (group commit). In that
/// transaction, per gateway and epoch, a batch whose sequence is at or
/// below the stored cursor is a duplicate and adds nothing; the others add
/// their rows to the minute summaries and move the cursor, so the counts
/// and the cursor are durable together or not at all. A batch is
/// acknowledged only after its commit.
///
/// The hour, day and week rows of a minute are written once, by
/// ``rollUp(before:)`` a minute or two after it ends, not at every commit
/// that adds to it: with many commits a second, the same hour and day rows
/// were rewritten at each, three times the minute's own writes.
/// What the roll-up has not reached yet stays exact through the stored
/// watermark (``StatisticsDatabase/rollupWatermark(in:)``): a call counted
/// in a minute before it (a late batch, say from a spool) is added at every
/// granularity at once, and a reader of hour, day or week rows adds the
/// minute rows from the watermark on.
public final class UsageIngest: Sendable {
    public struct Ack: Sendable, Hashable {
        public var duplicate: Bool
        public var accepted: UInt64
        public var discarded: UInt64
    }

    public struct Counters: Sendable {
        public var batches: UInt64 = 0
        public var duplicateBatches: UInt64 = 0
        public var events: UInt64 = 0
        public var discardedEvents: UInt64 = 0
        public var commits: UInt64 = 0
        public var rowsWritten: UInt64 = 0
        public var failedCommits: UInt64 = 0
        public var gaps: UInt64 = 0
    }

    /// A one-shot result a submitter waits for.
    final class Promise: Sendable {
        private let state = Mutex<(result: Result<Ack, any Error>?, waiter: CheckedContinuation<Ack, any Error>?)>((nil, nil))

        func fulfill(_ result: Result<Ack, any Error>) {
            let waiter = state.withLock { state in
                state.result = result
                let waiter = state.waiter
                state.waiter = nil
                return waiter
            }
            waiter?.resume(with: result)
        }

        var value: Ack {
            get async throws {
                try await withCheckedThrowingContinuation { continuation in
                    let ready = state.withLock { state -> Result<Ack, any Error>? in
                        if let result = state.result { return result }
                        state.waiter = continuation
                        return nil
                    }
                    if let ready { continuation.resume(with: ready) }
                }
            }
        }
    }

    struct Submission: Sendable {
        let gateway: String
        let epoch: UInt64
        let sequence: UInt64
        let delta: BatchDelta
        let promise: Promise
    }

    struct Stream: Hashable {
        let gateway: String
        let epoch: UInt64
    }

    public let statdb: StatisticsDatabase
    private let pending = Mutex<(queue: [Submission], draining: Bool)>(([], false))
    private let counters = Mutex(Counters())
    private let gapReporter: @Sendable (String) -> Void
    /// Rows as last written, so adding to a row written recently decodes
    /// nothing: the stored bytes are compared with the remembered ones
    /// (another process writing the same statdb is noticed, and the row
    /// decoded again).
    private let memos = Memos()

    /// Rows as last written, per summary table.
    struct Memos: Sendable {
        let detailed = RecordMemo<UsageSummary>(capacity: 100_000)
        let perAPI = RecordMemo<UsageSummary>(capacity: 20_000)
        let perApplication = RecordMemo<UsageSummary>(capacity: 20_000)
        let perTenant = RecordMemo<UsageSummary>(capacity: 2_000)
    }
    /// What a minute's rows are rolled up into.
    static let rollups: [BucketGranularity] = [.hour, .day, .week]
    /// Minutes rolled up into their hours, days and weeks (``rollUp(before:)``).
    private let rolledMinutes = Atomic<UInt64>(0)
    /// The detailed rows of the last commit's batches.
    private let lastCommitRows = Atomic<Int>(0)

    public init(statdb: StatisticsDatabase, gapReporter: @escaping @Sendable (String) -> Void = { _ in }) {
        self.statdb = statdb
        self.gapReporter = gapReporter
    }

    public var statistics: Counters { counters.withLock { $0 } }

    /// Minutes ``rollUp(before:)`` has rolled into their hours, days and weeks.
    public var minutesRolledUp: UInt64 { rolledMinutes.load(ordering: .relaxed) }

    /// Queues a batch (in the caller's order: call from one task per
    /// stream) and returns what to wait on for its acknowledgement.
    public func enqueue(gateway: String, epoch: UInt64, sequence: UInt64, events: [UsageEvent]) -> @Sendable () async throws -> Ack {
        let submission = Submission(gateway: gateway, epoch: epoch, sequence: sequence, delta: BatchDelta(events), promise: Promise())
        let start = pending.withLock { state -> Bool in
            state.queue.append(submission)
            if state.draining { return false }
            state.draining = true
            return true
        }
        if start { statdb.database.writer.submit { [self] in drain() } }
        let promise = submission.promise
        return { try await promise.value }
    }

    /// Applies a batch and waits for its acknowledgement.
    public func submit(gateway: String, epoch: UInt64, sequence: UInt64, events: [UsageEvent]) async throws -> Ack {
        try await enqueue(gateway: gateway, epoch: epoch, sequence: sequence, events: events)()
    }

    /// On the writer: commits what is queued, again and again, until nothing is.
    private func drain() {
        while true {
            let taken = pending.withLock { state -> [Submission] in
                if state.queue.isEmpty {
                    state.draining = false
                    return []
                }
                let taken = state.queue
                state.queue.removeAll(keepingCapacity: true)
                return taken
            }
            if taken.isEmpty { return }
            do {
                let (acks, rows) = try commit(taken)
                counters.withLock { counters in
                    counters.commits += 1
                    counters.rowsWritten += UInt64(rows)
                    for ack in acks {
                        counters.batches += 1
                        if ack.duplicate { counters.duplicateBatches += 1 } else {
                            counters.events += ack.accepted
                            counters.discardedEvents += ack.discarded
                        }
                    }
                }
                for (submission, ack) in zip(taken, acks) { submission.promise.fulfill(.success(ack)) }
            } catch {
                counters.withLock { $0.failedCommits += 1 }
                for submission in taken { submission.promise.fulfill(.failure(error)) }
            }
        }
    }

    /// One write transaction for `submissions`; the body may run again
    /// after the map grows, so it decides everything afresh each time.
    private func commit(_ submissions: [Submission]) throws -> (acks: [Ack], rows: Int) {
        let statdb = self.statdb
        var gaps: [String] = []
        let now = Self.now()
        let result = try statdb.database.environment.write { txn -> (acks: [Ack], rows: Int) in
            gaps.removeAll()
            var cursors: [Stream: UsageIngestCursor] = [:]
            var delta = BatchDelta()
            // About as many rows as the last commit had: no growing step by step.
            delta.rows.reserveCapacity(lastCommitRows.load(ordering: .relaxed))
            var acks: [Ack] = []
            acks.reserveCapacity(submissions.count)
            for submission in submissions {
                let stream = Stream(gateway: submission.gateway, epoch: submission.epoch)
                var cursor: UsageIngestCursor
                if let known = cursors[stream] {
                    cursor = known
                } else {
                    cursor = try statdb.cursors.get(Key(.string(stream.gateway), .uint64(stream.epoch)), in: txn)
                        ?? UsageIngestCursor(gatewayId: stream.gateway, epoch: stream.epoch)
                }
                if submission.sequence <= cursor.lastSequence {
                    acks.append(Ack(duplicate: true, accepted: 0, discarded: 0))
                    continue
                }
                if submission.sequence != cursor.lastSequence + 1 {
                    gaps.append("gateway \(stream.gateway) epoch \(stream.epoch): batch \(submission.sequence) follows \(cursor.lastSequence)")
                }
                cursor.lastSequence = submission.sequence
                cursor.batches += 1
                cursor.events += submission.delta.accepted
                cursor.updatedAtUnixMs = now
                cursors[stream] = cursor
                delta.add(submission.delta)
                acks.append(Ack(duplicate: false, accepted: submission.delta.accepted, discarded: submission.delta.discarded))
            }
            lastCommitRows.store(delta.rows.count, ordering: .relaxed)
            let rows = try Self.write(delta, statdb: statdb, memos: memos, in: &txn)
            for cursor in cursors.values { try statdb.cursors.store(cursor, in: &txn) }
            return (acks, rows)
        }
        if !gaps.isEmpty {
            counters.withLock { $0.gaps += UInt64(gaps.count) }
            for gap in gaps { gapReporter(gap) }
        }
        return result
    }

    /// Adds minute rows (and, behind the roll-up watermark, their hour, day
    /// and week rows), the per-API, per-application and per-tenant rows of
    /// each, and last-access times.
    static func write(_ delta: BatchDelta, statdb: StatisticsDatabase, memos: Memos, in txn: inout WriteTransaction) throws -> Int {
        let watermark = try statdb.rollupWatermark(in: txn) ?? 0
        var rolled = delta.rows
        // Late calls (minutes already rolled up) add to their hours, days and weeks now.
        if delta.rows.keys.contains(where: { $0.bucketStart < watermark }) {
            let weeksSince = try statdb.weekRowsSince(in: txn) ?? .max
            for (key, counts) in delta.rows where key.bucketStart < watermark {
                addRollups(of: key, counts, weeksSince: weeksSince, to: &rolled)
            }
        }
        let last = try add(rolled, statdb: statdb, memos: memos, in: &txn)
        for access in delta.apis.values {
            let key = statdb.apiLastAccess.primaryKey(of: access)
            if let stored = try statdb.apiLastAccess.get(key, in: txn), stored.lastAccessUnixMs >= access.lastAccessUnixMs { continue }
            try statdb.apiLastAccess.store(access, in: &txn)
        }
        for access in delta.applications.values {
            let key = statdb.applicationLastAccess.primaryKey(of: access)
            if let stored = try statdb.applicationLastAccess.get(key, in: txn), stored.lastAccessUnixMs >= access.lastAccessUnixMs { continue }
            try statdb.applicationLastAccess.store(access, in: &txn)
        }
        return last
    }

    /// Adds a minute row's counts to its hour, day and week rows in `rolled`
    /// (no week row before the statdb's first week: it would be incomplete).
    static func addRollups(of key: SummaryKey, _ counts: UsageCounts, weeksSince: Int64, to rolled: inout [SummaryKey: UsageCounts]) {
        for granularity in rollups {
            let target = key.rolled(to: granularity)
            if granularity == .week && target.bucketStart < weeksSince { continue }
            if rolled[target] == nil { rolled[target] = counts } else { rolled[target]!.add(counts) }
        }
    }

    /// Adds `rolled` to the detailed rows of their keys, and their sums to
    /// the per-API, per-application and per-tenant rows; returns the rows written.
    static func add(_ rolled: [SummaryKey: UsageCounts], statdb: StatisticsDatabase, memos: Memos, in txn: inout WriteTransaction) throws -> Int {
        let (memo, apiMemo, applicationMemo) = (memos.detailed, memos.perAPI, memos.perApplication)
        var perAPI: [SummaryKey: UsageCounts] = [:]
        var perApplication: [SummaryKey: UsageCounts] = [:]
        var perTenant: [SummaryKey: UsageCounts] = [:]
        for (key, counts) in rolled {
            var summary = key.summary
            let primaryKey = StatisticsDatabase.summaryKey(summary)
            if let stored = try statdb.summaries.get(primaryKey, in: txn, memo: memo) { summary = stored }
            counts.apply(to: &summary)
            try statdb.summaries.store(summary, in: &txn, memo: memo)
            let apiKey = key.apiOnly
            if perAPI[apiKey] == nil { perAPI[apiKey] = counts } else { perAPI[apiKey]!.add(counts) }
            let applicationKey = key.applicationOnly
            if perApplication[applicationKey] == nil { perApplication[applicationKey] = counts } else { perApplication[applicationKey]!.add(counts) }
        }
        for (key, var counts) in perAPI {
            var summary = key.summary
            let primaryKey = StatisticsDatabase.apiSummaryKey(summary)
            if let stored = try statdb.apiSummaries.get(primaryKey, in: txn, memo: apiMemo) { summary = stored }
            // An API's row names no application.
            counts.applicationName = ""
            counts.applicationOwner = ""
            counts.apply(to: &summary)
            try statdb.apiSummaries.store(summary, in: &txn, memo: apiMemo)
        }
        for (key, counts) in perApplication {
            let stored = try statdb.applicationSummaries.get(StatisticsDatabase.applicationSummaryKey(key.summary), in: txn, memo: applicationMemo)
            try statdb.applicationSummaries.store(UsageRollup.applicationRow(key, counts, adding: stored), in: &txn, memo: applicationMemo)
        }
        for (key, counts) in perAPI {
            let tenantKey = key.tenantOnly
            if perTenant[tenantKey] == nil { perTenant[tenantKey] = counts } else { perTenant[tenantKey]!.add(counts) }
        }
        for (key, counts) in perTenant {
            let stored = try statdb.tenantSummaries.get(StatisticsDatabase.tenantSummaryKey(key.summary), in: txn, memo: memos.perTenant)
            try statdb.tenantSummaries.store(UsageRollup.tenantRow(key, counts, adding: stored), in: &txn, memo: memos.perTenant)
        }
        return rolled.count + perAPI.count + perApplication.count + perTenant.count
    }

    /// Rolls every minute before `endUnixMs` (cut to its minute) that is
    /// still ahead of the watermark into its hour, day and week rows, one minute
    /// per write transaction on the writer (between ingest commits), the
    /// watermark moving past it in the same transaction. Minutes without
    /// calls are skipped in one step. Returns the minutes rolled.
    @discardableResult
    public func rollUp(before endUnixMs: Int64) async throws -> Int {
        let end = UsageTime.bucketStart(endUnixMs, .minute)
        var minutes = 0
        while true {
            let statdb = self.statdb
            let memos = self.memos
            let rolled = try await statdb.database.write { txn in
                try Self.rollUpNextMinute(before: end, statdb: statdb, memos: memos, in: &txn)
            }
            guard rolled else { return minutes }
            minutes += 1
            rolledMinutes.add(1, ordering: .relaxed)
        }
    }

    /// The first minute at or after the watermark and before `end` with
    /// rows, added to its hour, day and week; the watermark set past it (or to
    /// `end` when there is none). Returns whether a minute was rolled.
    static func rollUpNextMinute(before end: Int64, statdb: StatisticsDatabase, memos: Memos, in txn: inout WriteTransaction) throws -> Bool {
        let watermark = try statdb.rollupWatermark(in: txn) ?? 0
        guard watermark < end else { return false }
        guard let minute = try statdb.firstMinuteBucket(from: watermark, in: txn), minute < end else {
            try statdb.setRollupWatermark(end, in: &txn)
            return false
        }
        // The minute's detailed rows, summed per hour, day and week with
        // the same dimensions; the per-API and per-application rows follow
        // from them as they do at ingest.
        let weeksSince = try statdb.weekRowsSince(in: txn) ?? .max
        var rolled: [SummaryKey: UsageCounts] = [:]
        let prefix = StatisticsDatabase.summaryPrefix(granularity: .minute, bucketStartUnixMs: minute)
        try statdb.forEachSummary(prefix: prefix, in: txn, memo: memos.detailed) { row in
            var counts = UsageCounts()
            counts.add(row)
            addRollups(of: SummaryKey(of: row), counts, weeksSince: weeksSince, to: &rolled)
            return true
        }
        _ = try add(rolled, statdb: statdb, memos: memos, in: &txn)
        try statdb.setRollupWatermark(minute + 60_000, in: &txn)
        return true
    }

    static func now() -> Int64 {
        Int64(Date().timeIntervalSince1970 * 1000)
    }
}
