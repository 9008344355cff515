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
/// their rows to the minute, hour and day summaries and move the cursor, so
/// the counts and the cursor are durable together or not at all. A batch
/// is acknowledged only after its commit.
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
    private let memo = RecordMemo<UsageSummary>(capacity: 100_000)
    private let apiMemo = RecordMemo<UsageSummary>(capacity: 20_000)
    private let applicationMemo = RecordMemo<UsageSummary>(capacity: 20_000)
    /// Granularities every minute row is rolled up to as it is written.
    static let granularities: [BucketGranularity] = [.minute, .hour, .day]

    public init(statdb: StatisticsDatabase, gapReporter: @escaping @Sendable (String) -> Void = { _ in }) {
        self.statdb = statdb
        self.gapReporter = gapReporter
    }

    public var statistics: Counters { counters.withLock { $0 } }

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
            let rows = try Self.write(delta, statdb: statdb, memo: memo, apiMemo: apiMemo, applicationMemo: applicationMemo, in: &txn)
            for cursor in cursors.values { try statdb.cursors.store(cursor, in: &txn) }
            return (acks, rows)
        }
        if !gaps.isEmpty {
            counters.withLock { $0.gaps += UInt64(gaps.count) }
            for gap in gaps { gapReporter(gap) }
        }
        return result
    }

    /// Adds minute rows, their hour and day roll-ups, the per-API and
    /// per-application rows of all three, and last-access times.
    static func write(_ delta: BatchDelta, statdb: StatisticsDatabase, memo: RecordMemo<UsageSummary>, apiMemo: RecordMemo<UsageSummary>,
                      applicationMemo: RecordMemo<UsageSummary>, in txn: inout WriteTransaction) throws -> Int {
        var rolled: [SummaryKey: UsageCounts] = [:]
        rolled.reserveCapacity(delta.rows.count * 3)
        for (key, counts) in delta.rows {
            for granularity in granularities {
                let target = granularity == .minute ? key : key.rolled(to: granularity)
                if rolled[target] == nil { rolled[target] = counts } else { rolled[target]!.add(counts) }
            }
        }
        var perAPI: [SummaryKey: UsageCounts] = [:]
        var perApplication: [SummaryKey: UsageCounts] = [:]
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
        return rolled.count + perAPI.count + perApplication.count
    }

    static func now() -> Int64 {
        Int64(Date().timeIntervalSince1970 * 1000)
    }
}
