import FoundationEssentials
import LMDBKit
import Synchronization
public import TollgateProto
public import TollgateStorage

/// Applies gateways' usage batches to statdb exactly once.
///
/// A batch is checked and folded where it arrives: per gateway and epoch
/// (a stream of batches), one whose sequence is at or below the highest
/// accepted so far is a duplicate and adds nothing; the others' events are
/// added, under a lock, to the rows of the group waiting for the next
/// commit (group commit). The writer takes the whole group at once and
/// writes its rows and the streams' cursors in one write transaction, so
/// the counts and the cursors are durable together or not at all. A batch
/// is acknowledged only after its group's commit, a duplicate too (its
/// original may be in the same group or the one being committed).
///
/// Folding into one group, not a delta per batch merged by the writer,
/// adds each call to its row once: most rows of a group already exist, so
/// a call costs one lookup and no allocation, and the writer merges
/// nothing. The highest accepted sequences live in memory, read from the
/// stored cursors when a stream is first seen; a failed commit fails its
/// group and the one gathering behind it (whose batches were checked
/// against the failed one's), and forgets them, so every stream's cursor
/// is read again: the gateways send the failed batches again, and they
/// count once.
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

    struct Stream: Hashable {
        let gateway: String
        let epoch: UInt64
    }

    /// What a group moves a stream's cursor by.
    struct Progress {
        var lastSequence: UInt64 = 0
        var batches: UInt64 = 0
        var events: UInt64 = 0
    }

    /// The batches waiting for one commit.
    struct Group {
        var delta = BatchDelta()
        var answers: [(promise: Promise, ack: Ack)] = []
        var streams: [Stream: Progress] = [:]
        /// Sequences skipped, reported once the group is committed.
        var gaps: [String] = []
    }

    struct State {
        var group = Group()
        var draining = false
        /// Per stream, the highest sequence accepted: committed, or in a group.
        var accepted: [Stream: UInt64] = [:]
        /// Moves when a failed commit makes `accepted` forget: a cursor read
        /// before then may be older than what was accepted since.
        var generation: UInt64 = 0
    }

    public let statdb: StatisticsDatabase
    private let state = Mutex(State())
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
    /// A commit taking this long or longer makes the next wait as long.
    static let pacedCommit: Duration = .milliseconds(5)
    /// Commits start at least this far apart: each ends in a disk flush,
    /// and gateways' folded batches are small, so without it every batch
    /// would cost a flush of its own (tens a second per gateway, each
    /// stealing the machine's time from the calls being counted) for
    /// acknowledgements nobody waits for.
    static let commitInterval: Duration = .milliseconds(100)
    /// What a minute's rows are rolled up into.
    static let rollups: [BucketGranularity] = [.hour, .day, .week]
    /// Minutes rolled up into their hours, days and weeks (``rollUp(before:)``).
    private let rolledMinutes = Atomic<UInt64>(0)

    public init(statdb: StatisticsDatabase, gapReporter: @escaping @Sendable (String) -> Void = { _ in }) {
        self.statdb = statdb
        self.gapReporter = gapReporter
    }

    public var statistics: Counters { counters.withLock { $0 } }

    /// Minutes ``rollUp(before:)`` has rolled into their hours, days and weeks.
    public var minutesRolledUp: UInt64 { rolledMinutes.load(ordering: .relaxed) }

    /// Checks a batch and folds it into the group waiting for the next
    /// commit (in the caller's order: call from one task per stream);
    /// returns what to wait on for its acknowledgement.
    /// `rows` are the batch's calls a gateway folded into minute rows
    /// itself (``BatchDelta/row(of:)``), counted with its events;
    /// `discarded`, calls of rows refused before they got here, counted as
    /// discarded like events without a timestamp.
    public func enqueue(gateway: String, epoch: UInt64, sequence: UInt64, events: [UsageEvent],
                        rows: [(key: SummaryKey, counts: UsageCounts)] = [], discarded: UInt64 = 0) -> @Sendable () async throws -> Ack {
        let promise = Promise()
        let wait: @Sendable () async throws -> Ack = { try await promise.value }
        let stream = Stream(gateway: gateway, epoch: epoch)
        // The rows' keys (clipping, lower-casing) are worked out outside the lock.
        let keys = events.map { $0.requestTimestampUnixMs > 0 ? BatchDelta.key(of: $0) : nil }
        var stored: (cursor: UInt64, generation: UInt64)?
        while true {
            enum Outcome { case queued(startDrain: Bool), unknownStream(generation: UInt64) }
            let outcome = state.withLock { state -> Outcome in
                var last = state.accepted[stream]
                if last == nil {
                    guard let stored, stored.generation == state.generation else { return .unknownStream(generation: state.generation) }
                    // Nothing of this stream was accepted since the cursor was read.
                    last = stored.cursor
                }
                if sequence <= last! {
                    state.group.answers.append((promise, Ack(duplicate: true, accepted: 0, discarded: 0)))
                    state.accepted[stream] = last
                } else {
                    // A stream's first batch may come with any number: a gateway
                    // spool that lost its tail goes on under a new epoch.
                    if last! != 0 && sequence != last! + 1 {
                        state.group.gaps.append("gateway \(gateway) epoch \(epoch): batch \(sequence) follows \(last!)")
                    }
                    state.accepted[stream] = sequence
                    let before = (state.group.delta.accepted, state.group.delta.discarded)
                    for (event, key) in zip(events, keys) { state.group.delta.add(event, key: key) }
                    for row in rows { state.group.delta.add(row: row.key, row.counts) }
                    state.group.delta.discarded += discarded
                    let accepted = state.group.delta.accepted - before.0
                    var progress = state.group.streams[stream] ?? Progress()
                    progress.lastSequence = sequence
                    progress.batches += 1
                    progress.events += accepted
                    state.group.streams[stream] = progress
                    state.group.answers.append((promise, Ack(duplicate: false, accepted: accepted, discarded: state.group.delta.discarded - before.1)))
                }
                if state.draining { return .queued(startDrain: false) }
                state.draining = true
                return .queued(startDrain: true)
            }
            switch outcome {
            case .queued(let startDrain):
                if startDrain { statdb.database.writer.submit { [self] in drain() } }
                return wait
            case .unknownStream(let generation):
                do {
                    let cursor = try statdb.database.read { txn in try statdb.cursors.get(Key(.string(gateway), .uint64(epoch)), in: txn) }
                    stored = (cursor?.lastSequence ?? 0, generation)
                } catch {
                    promise.fulfill(.failure(error))
                    return wait
                }
            }
        }
    }

    /// Applies a batch and waits for its acknowledgement.
    public func submit(gateway: String, epoch: UInt64, sequence: UInt64, events: [UsageEvent],
                       rows: [(key: SummaryKey, counts: UsageCounts)] = []) async throws -> Ack {
        try await enqueue(gateway: gateway, epoch: epoch, sequence: sequence, events: events, rows: rows)()
    }

    /// On the writer: commits the waiting group, again and again, until none is.
    private func drain() {
        while true {
            let taken = state.withLock { state -> Group? in
                if state.group.answers.isEmpty {
                    state.draining = false
                    return nil
                }
                let taken = state.group
                state.group = Group()
                // About as many rows as this group had: no growing step by step.
                state.group.delta.rows.reserveCapacity(taken.delta.rows.count)
                return taken
            }
            guard let taken else { return }
            do {
                let started = ContinuousClock.now
                let rows = try commit(taken)
                let took = ContinuousClock.now - started
                counters.withLock { counters in
                    counters.commits += 1
                    counters.rowsWritten += UInt64(rows)
                    counters.gaps += UInt64(taken.gaps.count)
                    for (_, ack) in taken.answers {
                        counters.batches += 1
                        if ack.duplicate { counters.duplicateBatches += 1 } else {
                            counters.events += ack.accepted
                            counters.discardedEvents += ack.discarded
                        }
                    }
                }
                for gap in taken.gaps { gapReporter(gap) }
                for (promise, ack) in taken.answers { promise.fulfill(.success(ack)) }
                // The next group gathers for as long as this commit took, when
                // that was long (under load: a commit's cost is in its rows,
                // and the rows a group touches grow far slower than its calls,
                // and the writer stays free half the time for the roll-up,
                // pruning and the cores for decoding), and for the rest of
                // the commit interval otherwise.
                let pause = max(took >= Self.pacedCommit ? took : .zero, Self.commitInterval - took)
                if pause > .zero {
                    let writer = statdb.database.writer
                    Task { [self] in
                        try? await Task.sleep(for: pause)
                        writer.submit { [self] in drain() }
                    }
                    return
                }
            } catch {
                // The group gathering behind this one was checked against
                // it: it fails too, and every stream's cursor is read again.
                let behind = state.withLock { state -> Group in
                    let behind = state.group
                    state.group = Group()
                    state.accepted.removeAll()
                    state.generation += 1
                    return behind
                }
                counters.withLock { $0.failedCommits += 1 }
                for (promise, _) in taken.answers + behind.answers { promise.fulfill(.failure(error)) }
            }
        }
    }

    /// One write transaction for a group: its rows, and its streams'
    /// cursors. The body may run again after the map grows, so it changes
    /// nothing outside the transaction.
    private func commit(_ group: Group) throws -> Int {
        let statdb = self.statdb
        let memos = self.memos
        let now = Self.now()
        return try statdb.database.environment.write { txn -> Int in
            let rows = try Self.write(group.delta, statdb: statdb, memos: memos, in: &txn)
            for (stream, progress) in group.streams {
                var cursor = try statdb.cursors.get(Key(.string(stream.gateway), .uint64(stream.epoch)), in: txn)
                    ?? UsageIngestCursor(gatewayId: stream.gateway, epoch: stream.epoch)
                cursor.lastSequence = max(cursor.lastSequence, progress.lastSequence)
                cursor.batches += progress.batches
                cursor.events += progress.events
                cursor.updatedAtUnixMs = now
                try statdb.cursors.store(cursor, in: &txn)
            }
            return rows
        }
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
        try storeLastAccess(of: delta.rows, statdb: statdb, in: &txn)
        return last
    }

    /// Moves the last-access time of each API and application called in
    /// `rows` (minute rows) forward, with the names its newest row carries.
    static func storeLastAccess(of rows: [SummaryKey: UsageCounts], statdb: StatisticsDatabase, in txn: inout WriteTransaction) throws {
        struct APIKey: Hashable { var tenant, context, version: String }
        struct ApplicationKey: Hashable { var tenant, id: String }
        var apis: [APIKey: UsageLastAccess] = [:]
        var applications: [ApplicationKey: UsageLastAccess] = [:]
        for (key, counts) in rows {
            if !key.context.isEmpty {
                let apiKey = APIKey(tenant: key.tenant, context: key.context, version: key.version)
                if (apis[apiKey]?.lastAccessUnixMs ?? 0) < counts.lastAccess {
                    apis[apiKey] = UsageLastAccess(tenantDomain: key.tenant, apiName: counts.apiName, apiVersion: key.version, apiContext: key.context,
                                                   apiCreator: counts.apiCreator, lastAccessUnixMs: counts.lastAccess)
                }
            }
            if !key.applicationID.isEmpty {
                let applicationKey = ApplicationKey(tenant: key.applicationTenant, id: key.applicationID)
                if (applications[applicationKey]?.lastAccessUnixMs ?? 0) < counts.lastAccess {
                    applications[applicationKey] = UsageLastAccess(tenantDomain: key.applicationTenant, applicationId: key.applicationID,
                                                                   applicationName: counts.applicationName, applicationOwner: counts.applicationOwner,
                                                                   lastAccessUnixMs: counts.lastAccess)
                }
            }
        }
        for access in apis.values {
            let key = statdb.apiLastAccess.primaryKey(of: access)
            if let stored = try statdb.apiLastAccess.get(key, in: txn), stored.lastAccessUnixMs >= access.lastAccessUnixMs { continue }
            try statdb.apiLastAccess.store(access, in: &txn)
        }
        for access in applications.values {
            let key = statdb.applicationLastAccess.primaryKey(of: access)
            if let stored = try statdb.applicationLastAccess.get(key, in: txn), stored.lastAccessUnixMs >= access.lastAccessUnixMs { continue }
            try statdb.applicationLastAccess.store(access, in: &txn)
        }
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
