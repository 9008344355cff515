import FoundationEssentials
import Synchronization
import ThrottleCore
public import TollgateProto
public import TollgateStorage
import LMDBKit

/// A traffic manager's lease ledger (docs/throttling.md §2, §6): grants,
/// returns and reports applied in memory, every changed counter and every
/// decision written to `mbstoredb` before the gateway gets its answer, so a
/// restarted traffic manager continues its windows and never grants the
/// same units twice.
public final class TrafficManager: Sendable {
    public struct Settings: Sendable, Hashable {
        /// The largest single grant.
        public var maxGrant: UInt64
        /// How long decisions stay in the log for watchers resuming.
        public var decisionRetentionMs: Int64

        public init(maxGrant: UInt64 = 100_000, decisionRetentionMs: Int64 = 3_600_000) {
            self.maxGrant = max(1, maxGrant)
            self.decisionRetentionMs = max(60_000, decisionRetentionMs)
        }
    }

    /// Running totals, for metrics.
    public struct Counts: Sendable, Hashable {
        public var exchanges: UInt64 = 0
        public var operations: UInt64 = 0
        public var unitsGranted: UInt64 = 0
        public var unitsReturned: UInt64 = 0
        public var unitsUsed: UInt64 = 0
        public var unitsUnleased: UInt64 = 0
        public var decisions: UInt64 = 0
    }

    public let nodeID: String
    let database: MessageStoreDatabase
    private let ledger: Mutex<LeaseLedger>
    private let settings: Mutex<Settings>
    private let clock: @Sendable () -> Int64
    private let totals = Mutex(Counts())
    /// When ended windows were last dropped: a scan of every counter, so at
    /// most once a second.
    private let lastPrune = Atomic<Int64>(0)
    private let watchers = Mutex<(next: Int, streams: [Int: AsyncStream<ThrottleDecision>.Continuation])>((0, [:]))

    /// Loads the counters of windows still open at start and drops the rest.
    public init(nodeID: String, database: MessageStoreDatabase, settings: Settings = Settings(),
                clock: (@Sendable () -> Int64)? = nil) throws {
        self.nodeID = nodeID
        self.database = database
        self.settings = Mutex(settings)
        let clock = clock ?? { Int64(Date().timeIntervalSince1970 * 1000) }
        self.clock = clock
        let now = clock()
        let stored = try database.allCounters()
        ledger = Mutex(LeaseLedger(maxGrant: settings.maxGrant, counters: stored.filter { $0.windowEndUnixMs > now }))
        let ended = stored.filter { $0.windowEndUnixMs <= now }
        if !ended.isEmpty {
            try database.database.environment.write { txn in
                for counter in ended { _ = try database.counters.delete(counter, in: &txn) }
            }
        }
    }

    public func update(_ newSettings: Settings) {
        settings.withLock { $0 = newSettings }
        ledger.withLock { $0.maxGrant = newSettings.maxGrant }
    }

    public var counts: Counts { totals.withLock { $0 } }

    /// Counters of windows still open.
    public var openCounters: Int { ledger.withLock { $0.counters.count } }

    public var watcherCount: Int { watchers.withLock { $0.streams.count } }

    /// One gateway's batch: applied, made durable, answered in order.
    public func exchange(_ operations: [LeaseOperation], gateway: String) async throws -> [LeaseGrant] {
        let now = clock()
        let prune = now - lastPrune.load(ordering: .relaxed) >= 1000
        if prune { lastPrune.store(now, ordering: .relaxed) }
        let (grants, changed, transitions, ended) = ledger.withLock { ledger in
            var grants: [LeaseGrant] = []
            var changed = Set<LeaseLedger.CounterID>()
            var transitions: [LeaseLedger.Transition] = []
            grants.reserveCapacity(operations.count)
            for operation in operations {
                let (grant, transition) = ledger.apply(operation, gateway: gateway, now: now)
                grants.append(grant)
                changed.insert(LeaseLedger.CounterID(key: operation.throttleKey, windowStart: operation.windowStartUnixMs))
                if let transition { transitions.append(transition) }
            }
            let ended = prune ? ledger.removeEnded(before: now) : []
            return (grants, changed, transitions, ended)
        }
        let decisions = try await persist(changed: changed, ended: ended, transitions: transitions, now: now, prune: prune)
        totals.withLock { totals in
            totals.exchanges += 1
            totals.operations += UInt64(operations.count)
            totals.unitsGranted += grants.reduce(0) { $0 + $1.granted }
            totals.unitsReturned += operations.reduce(0) { $0 + $1.returned }
            totals.unitsUsed += operations.reduce(0) { $0 + $1.used }
            totals.unitsUnleased += operations.reduce(0) { $0 + $1.unleased }
            totals.decisions += UInt64(decisions.count)
        }
        publish(decisions)
        return grants
    }

    /// Writes the changed counters (as they are at commit time, so a later
    /// write never stores an older state) and the decisions, in one
    /// group-committed transaction.
    private func persist(changed: Set<LeaseLedger.CounterID>, ended: [LeaseLedger.CounterID], transitions: [LeaseLedger.Transition],
                         now: Int64, prune: Bool) async throws -> [ThrottleDecision] {
        let database = database, nodeID = nodeID
        let retention = settings.withLock { $0.decisionRetentionMs }
        return try await database.database.writeGrouped { [self] txn in
            let current = self.ledger.withLock { ledger in changed.compactMap { ledger.counter($0) } }
            for counter in current { _ = try database.counters.put(counter, in: &txn) }
            for id in ended { _ = try database.counters.delete(Key(.string(id.key), .int64(id.windowStart)), in: &txn) }
            var decisions: [ThrottleDecision] = []
            for transition in transitions {
                var decision = ThrottleDecision(throttleKey: transition.key, throttled: transition.exhausted, expiresAtUnixMs: transition.window.end,
                                                trafficManagerId: nodeID, decidedAtUnixMs: now)
                decision.sequence = try database.append(TrafficLogRecord(recordedAtUnixMs: now, entry: .decision(decision)), in: &txn)
                decisions.append(decision)
            }
            if prune { try database.pruneLog(recordedBefore: now - retention, limit: 1000, in: &txn) }
            return decisions
        }
    }

    // MARK: Decisions

    private func publish(_ decisions: [ThrottleDecision]) {
        guard !decisions.isEmpty else { return }
        let streams = watchers.withLock { Array($0.streams.values) }
        for stream in streams { for decision in decisions { stream.yield(decision) } }
    }

    /// A live feed of decisions from now on. A watcher too slow to take
    /// 10,000 of them loses the oldest: decisions only save gateways a
    /// round trip, they never admit anything, so a lost one costs accuracy
    /// nothing.
    func subscribe() -> (id: Int, decisions: AsyncStream<ThrottleDecision>) {
        let (stream, continuation) = AsyncStream.makeStream(of: ThrottleDecision.self, bufferingPolicy: .bufferingNewest(10_000))
        let id = watchers.withLock { state -> Int in
            state.next += 1
            state.streams[state.next] = continuation
            return state.next
        }
        return (id, stream)
    }

    func unsubscribe(_ id: Int) {
        watchers.withLock { $0.streams.removeValue(forKey: id) }?.finish()
    }

    /// Ends every watcher (shutdown).
    public func finishWatchers() {
        let streams = watchers.withLock { state -> [AsyncStream<ThrottleDecision>.Continuation] in
            defer { state.streams.removeAll() }
            return Array(state.streams.values)
        }
        for stream in streams { stream.finish() }
    }

    /// Keys throttled now, as the decisions a fresh watcher starts from.
    func currentDecisions(head: UInt64) -> [ThrottleDecision] {
        let now = clock()
        return ledger.withLock { $0.exhausted(at: now) }.map {
            ThrottleDecision(throttleKey: $0.throttleKey, throttled: true, expiresAtUnixMs: $0.windowEndUnixMs, sequence: head, trafficManagerId: nodeID,
                             decidedAtUnixMs: now)
        }
    }

    // MARK: Status

    /// The counters of `key` in windows still open.
    public func status(of key: String) -> [ThrottleCounter] {
        let now = clock()
        return ledger.withLock { $0.counters(of: key) }.filter { $0.windowEndUnixMs > now }
    }
}
