import FoundationEssentials
public import LMDBKit
import Synchronization
public import TollgateProto

/// A feed's change-log: numbered records in one table of a logical database,
/// the one implementation behind every stream the data plane watches
/// (deployments today; token revocations, throttling decisions and usage
/// acknowledgements next).
///
/// - Writers append inside the same write transaction as the change the
///   record describes, so the log and the tables never disagree, and call
///   ``committed()`` after the commit to wake this process's watchers.
/// - Revisions come from a persisted sequence in that transaction: gapless,
///   increasing, never reused, even across crashes and restarts.
/// - The log keeps the last ``retainedChanges`` records, pruned from the
///   front a few per append, so it stays one unbroken run and no write pays
///   for many deletions.
/// - A watcher whose revision is older than the log, or ahead of it (a
///   restored backup), needs a snapshot; ``follow(since:snapshot:send:)``
///   handles both and then streams exact deltas.
public final class ChangeLog<Record: ProtoMessage>: Sendable {
    public let database: LogicalDatabase
    public let table: Table<Record>
    /// The name of the meta-table sequence the revisions come from.
    public let sequence: String
    /// Records kept for watchers that reconnect; one further behind gets a snapshot.
    public let retainedChanges: UInt64
    private let revisionOf: @Sendable (Record) -> UInt64
    private let watchers = Mutex<(next: Int, continuations: [Int: AsyncStream<Void>.Continuation])>((0, [:]))
    /// How often watchers look for commits made by other processes sharing the environment.
    public let pollInterval: Duration

    /// - Parameters:
    ///   - table: records keyed by `Key(.uint64(revision))`.
    ///   - revision: the revision a record carries.
    public init(database: LogicalDatabase, table: Table<Record>, sequence: String, retainedChanges: UInt64,
                pollInterval: Duration = .seconds(1), revision: @escaping @Sendable (Record) -> UInt64) {
        self.database = database
        self.table = table
        self.sequence = sequence
        self.retainedChanges = max(retainedChanges, 1)
        self.pollInterval = pollInterval
        self.revisionOf = revision
    }

    // MARK: Writing

    /// Appends the record `make` builds for the next revision, in the
    /// caller's write transaction, and returns that revision.
    @discardableResult
    public func append(in txn: inout WriteTransaction, _ make: (UInt64) throws -> Record) throws -> UInt64 {
        let revision = try database.nextSequence(sequence, in: &txn)
        try table.insert(try make(revision), in: &txn)
        if revision > retainedChanges {
            let expired = try table.list(prefix: Key(), pageSize: 4, in: txn).items.filter { revisionOf($0) <= revision - retainedChanges }
            for record in expired { _ = try table.delete(record, in: &txn) }
        }
        return revision
    }

    /// Wakes the watchers in this process; call after the appending transaction commits.
    public func committed() {
        watchers.withLock { state in
            for continuation in state.continuations.values { continuation.yield() }
        }
    }

    // MARK: Reading

    /// The newest revision (0 before the first append).
    public func currentRevision() throws -> UInt64 {
        try database.read { txn in try currentRevision(in: txn) }
    }

    public func currentRevision<T: TransactionReading & ~Copyable>(in txn: borrowing T) throws -> UInt64 {
        guard let bytes = try database.metaValue("sequence." + sequence, in: txn) else { return 0 }
        return bytes.reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// Records after `revision`, oldest first, at most `limit`; nil when the
    /// log no longer holds them all, or `revision` is ahead of the log: the
    /// watcher then needs a snapshot.
    public func changes(after revision: UInt64, limit: Int) throws -> [Record]? {
        try database.read { txn in
            let current = try currentRevision(in: txn)
            if revision == current { return [] }
            if revision > current { return nil }
            let page = try table.list(prefix: Key(), pageSize: limit, pageToken: Key(.uint64(revision + 1)).bytes, in: txn)
            guard let first = page.items.first, revisionOf(first) == revision + 1 else { return nil }
            return page.items
        }
    }

    /// A stream that yields whenever a record may have been committed: at
    /// once for this process's commits, every ``pollInterval`` (or `every`,
    /// when sooner) for other processes'. It ends when the consuming task is
    /// cancelled.
    public func wakeups(every tick: Duration? = nil) -> AsyncStream<Void> {
        let (stream, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let id = watchers.withLock { state in
            let id = state.next
            state.next += 1
            state.continuations[id] = continuation
            return id
        }
        let interval = min(pollInterval, tick ?? pollInterval)
        let ticker = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                continuation.yield()
            }
        }
        continuation.onTermination = { [weak self] _ in
            ticker.cancel()
            _ = self?.watchers.withLock { $0.continuations.removeValue(forKey: id) }
        }
        return stream
    }

    /// What a watcher receives.
    public enum Event<Snapshot: Sendable>: Sendable {
        /// Part of a full snapshot; the watcher switches to it after the last part.
        case snapshot(Snapshot)
        case change(Record)
        /// Everything up to this revision has been sent: once after the
        /// snapshot or the backlog (even an empty one), then as a heartbeat
        /// whenever nothing else was sent for the heartbeat interval.
        case caughtUp(UInt64)
    }

    /// How often ``follow(since:batch:heartbeat:snapshot:send:)`` repeats
    /// ``Event/caughtUp(_:)`` on a quiet stream by default: often enough
    /// that a watcher missing three notices a lost stream within half a
    /// minute, rarely enough to cost nothing (one small frame per watcher).
    public static var defaultHeartbeat: Duration { .seconds(10) }

    /// `heartbeat` in whole seconds, rounded up and at least 1: what a feed
    /// announces so watchers size their silence timeout.
    public static func announcedSeconds(_ heartbeat: Duration) -> UInt32 {
        let (seconds, attoseconds) = heartbeat.components
        return UInt32(clamping: max(1, seconds + (attoseconds > 0 ? 1 : 0)))
    }

    /// Why following stopped.
    public enum FollowError: Error, Hashable, Sendable {
        /// The watcher fell so far behind, while following, that the log was
        /// pruned past it: it must start over with a snapshot.
        case prunedPast(UInt64)
    }

    /// Serves one watcher until it goes away: a snapshot first when
    /// `revision` is 0, older than the log or ahead of it, then every change
    /// after the watcher's revision as it commits. Once caught up, and again
    /// whenever nothing was sent for `heartbeat`, it sends
    /// ``Event/caughtUp(_:)``, so the watcher can tell a quiet stream from a
    /// dead one.
    ///
    /// Waiting costs no transaction: each look at the log is one short read
    /// transaction, made when a local commit or the poll tick (the sooner of
    /// ``pollInterval`` and half the heartbeat) wakes the watcher.
    ///
    /// - Parameters:
    ///   - snapshot: the parts of a full snapshot and the revision it
    ///     reflects, read in one transaction.
    ///   - send: delivers one event; suspends while the watcher is slow.
    public func follow<Snapshot: Sendable>(
        since revision: UInt64, batch: Int = 256, heartbeat: Duration = defaultHeartbeat,
        snapshot: () throws -> (parts: [Snapshot], revision: UInt64),
        send: (Event<Snapshot>) async throws -> Void
    ) async throws {
        // Subscribe before reading, so no commit falls between the read and the wait.
        // Ticks at half the heartbeat at most, so a heartbeat is late by less than half of one.
        let wakeups = self.wakeups(every: heartbeat / 2)
        let clock = ContinuousClock()
        var lastSent = clock.now
        var announced = false
        var applied = revision
        if try applied == 0 || changes(after: applied, limit: 1) == nil {
            let (parts, at) = try snapshot()
            for part in parts { try await send(.snapshot(part)) }
            applied = at
            lastSent = clock.now
        }
        var iterator = wakeups.makeAsyncIterator()
        repeat {
            while true {
                guard let records = try changes(after: applied, limit: batch) else { throw FollowError.prunedPast(applied + 1) }
                guard let last = records.last else { break }
                for record in records { try await send(.change(record)) }
                applied = revisionOf(last)
                lastSent = clock.now
            }
            if !announced || clock.now - lastSent >= heartbeat {
                try await send(.caughtUp(applied))
                announced = true
                lastSent = clock.now
            }
        } while await iterator.next() != nil && !Task.isCancelled
    }
}
