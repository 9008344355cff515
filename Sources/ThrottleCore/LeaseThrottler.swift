import Synchronization
public import TollgateProto

/// How a gateway's ``LeaseThrottler`` behaves (docs/throttling.md §2, §5).
/// The gateway reads these from its `[gateway]` section.
public struct LeaseThrottlerConfiguration: Sendable, Hashable {
    /// What a gateway does for keys whose traffic manager it cannot reach.
    public enum FailureMode: String, Sendable, CaseIterable {
        /// Enforce `⌈limit / gateways⌉` of each window locally.
        case localShare = "local-share"
        case open
        case closed
    }

    /// This gateway's node id, as the traffic managers count it.
    public var gatewayID: String
    /// How much traffic a lease should cover: the size asked for is the
    /// key's recent rate times this.
    public var leaseHorizonMs: Int64
    /// Units held this long without a request are returned.
    public var idleReturnMs: Int64
    /// How often a key whose pool is empty asks for one unit again.
    public var exhaustedRecheckMs: Int64
    /// The first lease of a key on this gateway, before a rate is known.
    public var initialLease: UInt64
    public var failureMode: FailureMode
    /// Gateways sharing each limit in `local-share` mode; 0 takes the
    /// number the traffic manager last reported for the key.
    public var gateways: Int
    /// Back-off between attempts to reach a lost traffic manager.
    public var retryInitialMs: Int64
    public var retryMaxMs: Int64

    public init(gatewayID: String, leaseHorizonMs: Int64 = 250, idleReturnMs: Int64 = 2000, exhaustedRecheckMs: Int64 = 200, initialLease: UInt64 = 4,
                failureMode: FailureMode = .localShare, gateways: Int = 0, retryInitialMs: Int64 = 100, retryMaxMs: Int64 = 5000) {
        self.gatewayID = gatewayID
        self.leaseHorizonMs = max(1, leaseHorizonMs)
        self.idleReturnMs = max(1, idleReturnMs)
        self.exhaustedRecheckMs = max(1, exhaustedRecheckMs)
        self.initialLease = max(1, initialLease)
        self.failureMode = failureMode
        self.gateways = max(0, gateways)
        self.retryInitialMs = max(1, retryInitialMs)
        self.retryMaxMs = max(self.retryInitialMs, retryMaxMs)
    }
}

/// One quota a request falls under, as the throttler checks it.
struct QuotaCheck {
    let key: ThrottleKey
    let quota: Quota
    let policy: String
    /// False only for subscription tiers with stop-on-quota-reach off.
    let stopOnQuota: Bool
    /// The units this request costs (1, or its bytes for a bandwidth quota).
    let units: UInt64
}

/// A counter of one key in one window on this gateway.
struct LeaseSlot: Hashable, Sendable {
    let key: String
    let windowStart: Int64
}

/// This gateway's state for one key and window.
struct KeyLease {
    let key: ThrottleKey
    let window: ThrottleWindow
    var quota: Quota
    let policy: String
    /// `kind:policy`, the statistics' name, built once rather than per request.
    let policyName: String
    let stopOnQuota: Bool

    /// Units this gateway may still admit.
    var held: UInt64 = 0
    var lastGrant: UInt64 = 0
    /// The traffic manager's pool after its last answer.
    var pool: UInt64
    var gateways: UInt32 = 0
    /// The pool is empty: refuse without asking, recheck now and then.
    var exhausted = false
    var lastRecheck: Int64 = 0

    /// An operation for the key is waiting to be sent / has been sent.
    var queued = false
    var inFlight = false
    /// Whether the queued operation asks for units (else it only returns or reports).
    var wantsLease = false
    /// Units waiting requests need.
    var demand: UInt64 = 0
    var waiters: [CheckedContinuation<Void, Never>] = []

    var usedUnreported: UInt64 = 0
    var unleasedUnreported: UInt64 = 0
    var returnPending: UInt64 = 0
    /// Everything admitted in this window, leased or not (the local share).
    var admitted: UInt64 = 0
    /// Admitted since the last request for units, for the rate estimate.
    var sinceAsk: UInt64 = 0
    var askedAt: Int64?
    var lastUse: Int64
    /// When the last operation for the key was sent (usage reports pace on it).
    var lastSent: Int64

    /// The traffic manager could not be reached.
    var fallback = false
    var retryAt: Int64 = 0
    var backoff: Int64 = 0

    init(check: QuotaCheck, window: ThrottleWindow, now: Int64) {
        key = check.key
        self.window = window
        quota = check.quota
        policy = check.policy
        policyName = LeaseThrottler.policyName(check)
        stopOnQuota = check.stopOnQuota
        pool = check.quota.amount
        lastUse = now
        lastSent = now
    }

    /// What this gateway would tell a client is left: its units and the pool.
    var remainingEstimate: UInt64 { min(quota.amount, held + pool) }
}

/// The gateway side of quota leases (docs/throttling.md §2): admits or
/// refuses each request synchronously from leases it holds, in O(1) per
/// throttle key, and exchanges lease requests, returns and reports with the
/// traffic managers in the background through a ``LeaseTransport``.
///
/// The request path takes one shard lock per key it checks and never
/// awaits. Background work: ``run(clock:tick:)``, or for simulations
/// ``takeOperations(now:)`` and ``receive(_:replies:now:)`` driven by hand.
public final class LeaseThrottler: Sendable {
    public let configuration: LeaseThrottlerConfiguration
    let transport: any LeaseTransport

    /// Keys spread over shards by their hash, so requests on different keys
    /// rarely meet on a lock.
    private let shards: [Shard]
    /// Slots with an operation to send.
    private let pending = Mutex<Set<LeaseSlot>>([])
    private let wakeups: AsyncStream<Void>
    private let wake: AsyncStream<Void>.Continuation
    private let matcher = ConditionMatcher(patterns: PatternCache())
    private let exchangeCounts = Mutex(ExchangeCounts())

    final class Shard: Sendable {
        struct State {
            var leases: [LeaseSlot: KeyLease] = [:]
            /// Spike arrest: counted here only, per window.
            var spikes: [LeaseSlot: (end: Int64, count: UInt64)] = [:]
            var policies: [String: PolicyCounts] = [:]
        }
        let state = Mutex(State())
    }

    struct ExchangeCounts {
        var exchanges: UInt64 = 0
        var operations: UInt64 = 0
        var unitsGranted: UInt64 = 0
        var unitsReturned: UInt64 = 0
        var failedOperations: UInt64 = 0
        var fallbackEntries: UInt64 = 0
        var waits: UInt64 = 0
    }

    /// Admitted and refused requests of one policy on this gateway.
    public struct PolicyCounts: Sendable, Hashable {
        public var admitted: UInt64 = 0
        public var refused: UInt64 = 0
        /// Admitted past a quota whose stop-on-quota-reach is off.
        public var marked: UInt64 = 0
    }

    /// What the throttler did so far, for metrics and `tollctl gateway status`.
    public struct Statistics: Sendable, Hashable {
        /// By `kind:policy`, e.g. `sub:Gold`.
        public var policies: [String: PolicyCounts]
        public var exchanges: UInt64
        public var operations: UInt64
        public var unitsGranted: UInt64
        public var unitsReturned: UInt64
        public var failedOperations: UInt64
        /// Times a key went into fallback because its traffic manager was lost.
        public var fallbackEntries: UInt64
        /// Keys in fallback now.
        public var keysInFallback: Int
        /// Keys (per window) this gateway holds state for now.
        public var keys: Int
        /// Requests answered ``ThrottleOutcome/wait(_:)``.
        public var waits: UInt64
    }

    public init(configuration: LeaseThrottlerConfiguration, transport: any LeaseTransport, shardCount: Int = 16) {
        self.configuration = configuration
        self.transport = transport
        shards = (0..<max(1, shardCount)).map { _ in Shard() }
        (wakeups, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    private func shard(_ key: String) -> Shard {
        shards[Int(UInt(bitPattern: key.hashValue) % UInt(shards.count))]
    }

    // MARK: Decisions

    /// Applies a traffic manager's decision (``WatchDecisionsResponse``):
    /// a key whose pool emptied is refused here without asking until its
    /// window ends or the pool fills again.
    public func apply(_ decision: ThrottleDecision) {
        shard(decision.throttleKey).state.withLock { state in
            for (slot, var lease) in state.leases where slot.key == decision.throttleKey && lease.window.end == decision.expiresAtUnixMs {
                lease.exhausted = decision.throttled
                if !decision.throttled, lease.pool == 0 { lease.pool = 1 }
                state.leases[slot] = lease
            }
        }
    }

    // MARK: The request path

    /// Admits or refuses `request` at `now` (Unix ms), in WSO2's order:
    /// API/resource → subscription → spike arrest → application → custom →
    /// hard limit. Block conditions come before all of these and are the
    /// caller's (the gateway checks them with ``BlockConditionSet``). Never awaits; answers ``ThrottleOutcome/wait(_:)``
    /// when a quota has no local lease yet and its pool is not known to be
    /// empty: await ``waitForLease(_:)``, then call again.
    public func admit(_ request: ThrottleRequest, now: Int64) -> ThrottleOutcome {
        let checks = quotaChecks(request)
        var taken: [(check: QuotaCheck, taking: Taking)] = []
        var tightest: RateLimitValues?
        var marked: [String] = []
        // Only a request that queued an operation wakes the exchanger: the fast path takes no lock beyond its keys'.
        var scheduled = false
        for check in checks {
            let outcome = take(check, now: now, scheduled: &scheduled)
            switch outcome {
            case .taken(let taking, let values):
                taken.append((check, taking))
                if tightest == nil || values.remaining < tightest!.remaining { tightest = values }
            case .marked(let taking, let values):
                taken.append((check, taking))
                marked.append(check.policy)
                if tightest == nil || values.remaining < tightest!.remaining { tightest = values }
            case .refused(let values):
                giveBack(taken, now: now)
                if scheduled { wake.yield() }
                countRefusal(check)
                return .refuse(ThrottleRefusal(kind: check.key.kind, errorCode: check.key.kind.errorCode, httpStatus: check.key.kind.httpStatus, policy: check.policy,
                                               key: check.key.description, retryAfterSeconds: values.resetSeconds, rateLimit: values))
            case .wait(let slot):
                giveBack(taken, now: now)
                exchangeCounts.withLock { $0.waits += 1 }
                if scheduled { wake.yield() }
                return .wait(LeaseWait(key: slot.key, windowStart: slot.windowStart, kind: check.key.kind))
            }
        }
        if scheduled { wake.yield() }
        return .admit(rateLimit: tightest, marked: marked)
    }

    /// Waits until the lease `wait` named was answered (granted, refused
    /// or failed); then call ``admit(_:now:)`` again. Returns at once when
    /// nothing is in flight for it.
    public func waitForLease(_ wait: LeaseWait) async {
        let slot = LeaseSlot(key: wait.key, windowStart: wait.windowStart)
        let shard = shard(slot.key)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let parked = shard.state.withLock { state -> Bool in
                guard var lease = state.leases[slot], lease.queued || lease.inFlight else { return false }
                lease.waiters.append(continuation)
                state.leases[slot] = lease
                return true
            }
            if !parked { continuation.resume() }
        }
    }

    /// The quotas `request` falls under, in evaluation order. Unlimited
    /// tiers are skipped: they cannot refuse.
    func quotaChecks(_ request: ThrottleRequest) -> [QuotaCheck] {
        var checks: [QuotaCheck] = []
        func add(_ key: ThrottleKey, _ limit: ThrottleLimit?, policy: String, stopOnQuota: Bool = true) {
            guard let quota = Quota(limit), !quota.isUnlimited, quota.amount > 0 else { return }
            let units = quota.unit == .bytes ? max(1, request.payloadBytes) : 1
            checks.append(QuotaCheck(key: key, quota: quota, policy: policy, stopOnQuota: stopOnQuota, units: units))
        }
        func addAdvanced(_ policy: AdvancedPolicy, base: ThrottleKey) {
            let matched = policy.conditionGroups.filter { matcher.applies($0, request.attributes) }
            if policy.conditionGroups.isEmpty {
                add(base, policy.defaultLimit, policy: policy.name)
            } else if matched.isEmpty {
                add(base.defaultLimit, policy.defaultLimit, policy: policy.name)
            } else {
                for group in matched { add(base.condition(group.id), group.limit, policy: policy.name) }
            }
        }
        if let policy = request.apiPolicy {
            addAdvanced(policy, base: .api(context: request.apiContext, version: request.apiVersion))
        }
        if let policy = request.resourcePolicy, let resource = request.resource {
            addAdvanced(policy, base: .resource(context: request.apiContext, version: request.apiVersion, uriTemplate: resource.uriTemplate, verb: resource.verb))
        }
        if let validation = request.validation {
            let application = validation.applicationId
            add(.subscription(applicationID: application, context: request.apiContext, version: request.apiVersion), validation.subscriptionLimit,
                policy: validation.subscriptionPolicy, stopOnQuota: validation.stopOnQuotaReach)
            if validation.spikeArrestLimit > 0 {
                let limit = ThrottleLimit(timeUnit: validation.spikeArrestUnit == .second ? .second : .minute, unitTime: 1,
                                          quota: .requestCount(UInt64(validation.spikeArrestLimit)))
                add(.spikeArrest(applicationID: application, context: request.apiContext, version: request.apiVersion), limit, policy: validation.subscriptionPolicy)
            }
            add(.application(applicationID: application, user: validation.endUserName), validation.applicationLimit, policy: validation.applicationPolicy)
        }
        if !request.customPolicies.isEmpty {
            let values = request.templateValues
            for policy in request.customPolicies where policy.limit != nil {
                add(.custom(policy: policy.name, expandedTemplate: values.expand(policy.keyTemplate)), policy.limit, policy: policy.name)
            }
        }
        if let perSecond = request.hardLimitPerSecond, perSecond > 0 {
            add(.hardLimit(context: request.apiContext, version: request.apiVersion, sandbox: request.sandbox),
                ThrottleLimit(timeUnit: .second, unitTime: 1, quota: .requestCount(UInt64(perSecond))), policy: "hard-limit")
        }
        return checks
    }

    enum Taking {
        case lease(LeaseSlot, UInt64)
        case unleased(LeaseSlot, UInt64)
        case spike(LeaseSlot)
    }

    enum TakeOutcome {
        case taken(Taking, RateLimitValues)
        case marked(Taking, RateLimitValues)
        case refused(RateLimitValues)
        case wait(LeaseSlot)
    }

    /// Takes `check.units` from the key's lease, or decides why not.
    private func take(_ check: QuotaCheck, now: Int64, scheduled: inout Bool) -> TakeOutcome {
        let window = check.quota.windows.window(containing: now)
        let slot = LeaseSlot(key: check.key.description, windowStart: window.start)
        let reset = window.secondsToEnd(from: now)
        var schedule = false
        let outcome = shard(slot.key).state.withLock { state -> TakeOutcome in
            if check.key.kind == .spikeArrest {
                let used = state.spikes[slot]?.count ?? 0
                let values = RateLimitValues(limit: check.quota.amount, remaining: check.quota.amount - min(check.quota.amount, used + 1), resetSeconds: reset)
                guard used + 1 <= check.quota.amount else {
                    return .refused(RateLimitValues(limit: check.quota.amount, remaining: 0, resetSeconds: reset))
                }
                state.spikes[slot] = (window.end, used + 1)
                state.policies[Self.policyName(check), default: PolicyCounts()].admitted += 1
                return .taken(.spike(slot), values)
            }
            // Changed where it is stored: one lookup, no copy of the lease.
            return takeFromLease(&state.leases[slot, default: KeyLease(check: check, window: window, now: now)], policies: &state.policies,
                                 check: check, slot: slot, now: now, reset: reset, schedule: &schedule)
        }
        if schedule {
            pending.withLock { _ = $0.insert(slot) }
            scheduled = true
        }
        return outcome
    }

    /// ``take(_:now:scheduled:)`` on a leased key, under its shard's lock.
    private func takeFromLease(_ lease: inout KeyLease, policies: inout [String: PolicyCounts], check: QuotaCheck, slot: LeaseSlot, now: Int64,
                               reset: Int, schedule: inout Bool) -> TakeOutcome {
        if check.quota.amount < lease.quota.amount { lease.quota = check.quota }
        lease.lastUse = now
        let units = check.units
        if lease.held >= units {
            lease.held -= units
            lease.usedUnreported += units
            lease.admitted += units
            lease.sinceAsk += units
            policies[lease.policyName, default: PolicyCounts()].admitted += 1
            if !lease.queued, !lease.inFlight, !lease.exhausted, !lease.fallback, lease.held <= lease.lastGrant / 2 {
                Self.queue(&lease, wanting: true)
                schedule = true
            }
            return .taken(.lease(slot, units), RateLimitValues(limit: lease.quota.amount, remaining: lease.remainingEstimate, resetSeconds: reset))
        }
        if lease.fallback {
            if now >= lease.retryAt, !lease.queued, !lease.inFlight {
                Self.queue(&lease, wanting: true)
                schedule = true
            }
            let admits: Bool = switch configuration.failureMode {
            case .open: true
            case .closed: false
            case .localShare:
                lease.admitted + units <= Self.localShare(limit: lease.quota.amount, gateways: configuration.gateways > 0 ? UInt64(configuration.gateways) : UInt64(lease.gateways))
            }
            guard admits else { return .refused(RateLimitValues(limit: lease.quota.amount, remaining: 0, resetSeconds: reset)) }
            lease.unleasedUnreported += units
            lease.admitted += units
            policies[lease.policyName, default: PolicyCounts()].admitted += 1
            return .taken(.unleased(slot, units), RateLimitValues(limit: lease.quota.amount, remaining: 0, resetSeconds: reset))
        }
        if lease.exhausted {
            if now - lease.lastRecheck >= configuration.exhaustedRecheckMs, !lease.queued, !lease.inFlight {
                lease.lastRecheck = now
                Self.queue(&lease, wanting: true)
                schedule = true
            }
            let values = RateLimitValues(limit: lease.quota.amount, remaining: 0, resetSeconds: reset)
            guard !check.stopOnQuota else { return .refused(values) }
            lease.unleasedUnreported += units
            lease.admitted += units
            policies[lease.policyName, default: PolicyCounts()].marked += 1
            return .marked(.unleased(slot, units), values)
        }
        // No units here and the pool is not known to be empty: ask, and wait.
        lease.demand += units
        if !lease.queued, !lease.inFlight {
            Self.queue(&lease, wanting: true)
            schedule = true
        }
        return .wait(slot)
    }

    /// Undoes the takings of a request refused by a later quota, so a
    /// refused request costs no quota. (A report the flusher sent in
    /// between makes the traffic manager count a unit as used twice, which
    /// only ever shrinks its pool.)
    private func giveBack(_ taken: [(check: QuotaCheck, taking: Taking)], now: Int64) {
        for (check, taking) in taken {
            let slot: LeaseSlot = switch taking {
            case .lease(let slot, _), .unleased(let slot, _), .spike(let slot): slot
            }
            shard(slot.key).state.withLock { state in
                state.policies[Self.policyName(check), default: PolicyCounts()].admitted -= 1
                switch taking {
                case .spike:
                    if let spike = state.spikes[slot] { state.spikes[slot] = (spike.end, spike.count - min(1, spike.count)) }
                case .lease(_, let units):
                    guard var lease = state.leases[slot] else { return }
                    lease.held += units
                    lease.usedUnreported -= min(units, lease.usedUnreported)
                    lease.admitted -= min(units, lease.admitted)
                    lease.sinceAsk -= min(units, lease.sinceAsk)
                    state.leases[slot] = lease
                case .unleased(_, let units):
                    guard var lease = state.leases[slot] else { return }
                    lease.unleasedUnreported -= min(units, lease.unleasedUnreported)
                    lease.admitted -= min(units, lease.admitted)
                    state.leases[slot] = lease
                }
            }
        }
    }

    private func countRefusal(_ check: QuotaCheck) {
        shard(check.key.description).state.withLock { state in
            state.policies[Self.policyName(check), default: PolicyCounts()].refused += 1
        }
    }

    static func policyName(_ check: QuotaCheck) -> String { check.key.kind.rawValue + ":" + check.policy }

    static func localShare(limit: UInt64, gateways: UInt64) -> UInt64 {
        let gateways = max(1, gateways)
        return (limit + gateways - 1) / gateways
    }

    private static func queue(_ lease: inout KeyLease, wanting: Bool) {
        lease.queued = true
        lease.wantsLease = lease.wantsLease || wanting
    }

    // MARK: Exchanges

    /// Everything pending, as operations for one exchange; marks them in
    /// flight. At most one operation per key is in flight: a key already
    /// waiting for an answer goes in the next exchange.
    public func takeOperations(now: Int64) -> [LeaseOperation] {
        let slots = pending.withLock { set -> Set<LeaseSlot> in
            let taken = set
            set.removeAll(keepingCapacity: true)
            return taken
        }
        var operations: [LeaseOperation] = []
        var carried: [LeaseSlot] = []
        for slot in slots.sorted(by: { ($0.key, $0.windowStart) < ($1.key, $1.windowStart) }) {
            shard(slot.key).state.withLock { state in
                guard var lease = state.leases[slot], lease.queued else { return }
                if lease.inFlight {
                    carried.append(slot)
                    return
                }
                let wanted = lease.wantsLease ? wantedUnits(lease, now: now) : 0
                operations.append(LeaseOperation(throttleKey: slot.key, windowStartUnixMs: lease.window.start, windowEndUnixMs: lease.window.end,
                                                 limit: lease.quota.amount, wanted: wanted, returned: lease.returnPending, used: lease.usedUnreported,
                                                 unleased: lease.unleasedUnreported))
                if wanted > 0 {
                    lease.askedAt = now
                    lease.sinceAsk = 0
                }
                lease.returnPending = 0
                lease.usedUnreported = 0
                lease.unleasedUnreported = 0
                lease.queued = false
                lease.wantsLease = false
                lease.inFlight = true
                lease.lastSent = now
                state.leases[slot] = lease
            }
        }
        if !carried.isEmpty { pending.withLock { $0.formUnion(carried) } }
        if !operations.isEmpty {
            exchangeCounts.withLock {
                $0.exchanges += 1
                $0.operations += UInt64(operations.count)
                $0.unitsReturned += operations.reduce(0) { $0 + $1.returned }
            }
        }
        return operations
    }

    /// The units to ask for: the key's recent rate over the lease horizon,
    /// at least what waiting requests need, growing at most twofold per
    /// lease (a burst of one request does not make a large lease).
    func wantedUnits(_ lease: KeyLease, now: Int64) -> UInt64 {
        let floor = max(1, lease.demand)
        guard let askedAt = lease.askedAt else { return min(lease.quota.amount, max(floor, configuration.initialLease)) }
        let elapsed = UInt64(max(1, now - askedAt))
        let estimate = (lease.sinceAsk * UInt64(configuration.leaseHorizonMs) + elapsed - 1) / elapsed
        let ceiling = max(floor, configuration.initialLease, 2 * lease.lastGrant)
        return min(lease.quota.amount, max(floor, min(estimate, ceiling)))
    }

    /// Applies the answers to operations from ``takeOperations(now:)``
    /// (nil: the owner could not be reached) and wakes the requests waiting
    /// on them.
    public func receive(_ operations: [LeaseOperation], replies: [LeaseGrant?], now: Int64) {
        var granted: UInt64 = 0, failed: UInt64 = 0, entered: UInt64 = 0
        var requeue: [LeaseSlot] = []
        // Woken once the counts below are in: a request that waited on a
        // lost owner then finds its key's fallback in the statistics.
        var woken: [CheckedContinuation<Void, Never>] = []
        for (index, operation) in operations.enumerated() {
            let reply = index < replies.count ? replies[index] : nil
            let slot = LeaseSlot(key: operation.throttleKey, windowStart: operation.windowStartUnixMs)
            let waiters = shard(slot.key).state.withLock { state -> [CheckedContinuation<Void, Never>] in
                guard var lease = state.leases[slot] else { return [] }
                lease.inFlight = false
                if let reply {
                    lease.held += reply.granted
                    granted += reply.granted
                    if operation.wanted > 0 { lease.lastGrant = reply.granted }
                    lease.pool = reply.remaining
                    lease.gateways = reply.gateways
                    if reply.limit > 0, reply.limit < lease.quota.amount {
                        lease.quota = Quota(amount: reply.limit, unit: lease.quota.unit, windows: lease.quota.windows)
                    }
                    lease.exhausted = reply.remaining == 0
                    lease.fallback = false
                    lease.backoff = 0
                } else {
                    failed += 1
                    // Nothing reached the traffic manager: send it all again later.
                    lease.returnPending += operation.returned
                    lease.usedUnreported += operation.used
                    lease.unleasedUnreported += operation.unleased
                    if !lease.fallback { entered += 1 }
                    lease.fallback = true
                    lease.backoff = min(configuration.retryMaxMs, max(configuration.retryInitialMs, lease.backoff * 2))
                    lease.retryAt = now + lease.backoff
                }
                lease.demand = 0
                if lease.queued { requeue.append(slot) }
                let waiters = lease.waiters
                lease.waiters = []
                state.leases[slot] = lease
                return waiters
            }
            woken += waiters
        }
        if !requeue.isEmpty { pending.withLock { $0.formUnion(requeue) } }
        exchangeCounts.withLock {
            $0.unitsGranted += granted
            $0.failedOperations += failed
            $0.fallbackEntries += entered
        }
        for waiter in woken { waiter.resume() }
        if !requeue.isEmpty { wake.yield() }
    }

    /// Background upkeep at `now`: returns units of idle keys, reports
    /// usage, prefetches the next window's leases of busy keys, retries lost
    /// traffic managers, and forgets ended windows.
    public func maintain(now: Int64) {
        var scheduled: [LeaseSlot] = []
        for shard in shards {
            shard.state.withLock { state in
                for (slot, spike) in state.spikes where spike.end <= now { state.spikes[slot] = nil }
                var next: [(LeaseSlot, KeyLease)] = []
                for (slot, var lease) in state.leases {
                    if lease.window.end <= now {
                        // Its leases lapsed; only unsent reports remain.
                        if lease.usedUnreported > 0 || lease.unleasedUnreported > 0 {
                            if !lease.queued, !lease.inFlight {
                                Self.queue(&lease, wanting: false)
                                scheduled.append(slot)
                            }
                            lease.returnPending = 0
                            state.leases[slot] = lease
                        } else if !lease.queued, !lease.inFlight, lease.waiters.isEmpty {
                            state.leases[slot] = nil
                        }
                        continue
                    }
                    var send = false, wanting = false
                    if lease.held > 0, now - lease.lastUse >= configuration.idleReturnMs, !lease.inFlight, !lease.fallback {
                        lease.returnPending += lease.held
                        lease.held = 0
                        lease.lastGrant = 0
                        send = true
                    }
                    if lease.usedUnreported > 0, now - lease.lastSent >= configuration.idleReturnMs {
                        send = true
                    }
                    if lease.fallback, now >= lease.retryAt, !lease.inFlight {
                        send = true
                        wanting = true
                    }
                    if send {
                        if !lease.queued { scheduled.append(slot) }
                        Self.queue(&lease, wanting: wanting)
                    }
                    // The window's last horizon: lease the next window for keys in use.
                    if now >= lease.window.end - configuration.leaseHorizonMs, now - lease.lastUse <= configuration.leaseHorizonMs {
                        let nextWindow = lease.quota.windows.window(after: lease.window)
                        let nextSlot = LeaseSlot(key: slot.key, windowStart: nextWindow.start)
                        if state.leases[nextSlot] == nil {
                            var upcoming = KeyLease(check: QuotaCheck(key: lease.key, quota: lease.quota, policy: lease.policy, stopOnQuota: lease.stopOnQuota, units: 1),
                                                    window: nextWindow, now: now)
                            upcoming.lastGrant = lease.lastGrant
                            upcoming.askedAt = lease.askedAt
                            upcoming.sinceAsk = lease.sinceAsk
                            Self.queue(&upcoming, wanting: true)
                            next.append((nextSlot, upcoming))
                            scheduled.append(nextSlot)
                        }
                    }
                    state.leases[slot] = lease
                }
                for (slot, lease) in next { state.leases[slot] = lease }
            }
        }
        if !scheduled.isEmpty {
            pending.withLock { $0.formUnion(scheduled) }
            wake.yield()
        }
    }

    /// Sends everything pending in one exchange and applies the answers.
    public func flush(now: @Sendable () -> Int64) async {
        let operations = takeOperations(now: now())
        guard !operations.isEmpty else { return }
        let replies = await transport.exchange(operations)
        receive(operations, replies: replies, now: now())
    }

    /// The background work, until the task is cancelled: an exchange each
    /// time something is pending (everything pending goes in it, so busy
    /// gateways batch), upkeep every `tick`.
    public func run(clock: @escaping @Sendable () -> Int64, tick: Duration = .milliseconds(50)) async {
        await withDiscardingTaskGroup { group in
            group.addTask { [self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: tick)
                    maintain(now: clock())
                }
                wake.finish()
            }
            for await _ in wakeups {
                let operations = takeOperations(now: clock())
                guard !operations.isEmpty else { continue }
                group.addTask { [self] in
                    let replies = await transport.exchange(operations)
                    receive(operations, replies: replies, now: clock())
                }
            }
        }
    }

    // MARK: Observing

    public var statistics: Statistics {
        var policies: [String: PolicyCounts] = [:]
        var inFallback = 0, keys = 0
        for shard in shards {
            shard.state.withLock { state in
                for (name, counts) in state.policies {
                    policies[name, default: PolicyCounts()].admitted += counts.admitted
                    policies[name, default: PolicyCounts()].refused += counts.refused
                    policies[name, default: PolicyCounts()].marked += counts.marked
                }
                inFallback += state.leases.values.filter(\.fallback).count
                keys += state.leases.count
            }
        }
        let counts = exchangeCounts.withLock { $0 }
        return Statistics(policies: policies, exchanges: counts.exchanges, operations: counts.operations, unitsGranted: counts.unitsGranted,
                          unitsReturned: counts.unitsReturned, failedOperations: counts.failedOperations, fallbackEntries: counts.fallbackEntries,
                          keysInFallback: inFallback, keys: keys, waits: counts.waits)
    }

    /// Forgets the traffic managers' word that pools are empty (an
    /// operator's cache flush): those keys ask again on their next request.
    /// Returns how many keys it cleared.
    public func forgetDecisions() -> Int {
        var cleared = 0
        for shard in shards {
            shard.state.withLock { state in
                for (slot, var lease) in state.leases where lease.exhausted {
                    lease.exhausted = false
                    state.leases[slot] = lease
                    cleared += 1
                }
            }
        }
        return cleared
    }

    /// Units this gateway holds for `key` in the window containing `now`.
    public func held(_ key: ThrottleKey, window: ThrottleWindow) -> UInt64 {
        shard(key.description).state.withLock { $0.leases[LeaseSlot(key: key.description, windowStart: window.start)]?.held ?? 0 }
    }
}
