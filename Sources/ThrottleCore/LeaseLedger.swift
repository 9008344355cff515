public import TollgateProto

/// How a gateway reaches the traffic managers: it sends everything pending
/// (``LeaseOperation``s, from any number of keys) and gets one reply per
/// operation, in order. The gateway provides it over RPC, routing each
/// operation to the owner of its key (``RendezvousOwners``); tests provide
/// it in memory. It must give up within its deadline: an unreachable owner
/// answers `nil` for its operations, which puts those keys in fallback.
public protocol LeaseTransport: Sendable {
    func exchange(_ operations: [LeaseOperation]) async -> [LeaseGrant?]
}

/// The traffic manager's side of the lease algorithm (docs/throttling.md
/// §2): per key and window, the limit, what was granted, returned, used and
/// admitted without a lease, and the grant-size rule. A value type without
/// locks or clocks of its own: the traffic manager wraps it, the
/// simulations drive it directly.
public struct LeaseLedger: Sendable {
    public struct CounterID: Hashable, Sendable, Comparable {
        public let key: String
        public let windowStart: Int64

        public init(key: String, windowStart: Int64) {
            self.key = key
            self.windowStart = windowStart
        }

        public static func < (a: CounterID, b: CounterID) -> Bool { (a.key, a.windowStart) < (b.key, b.windowStart) }
    }

    /// A quota's pool emptied or filled again: what `WatchDecisions` sends.
    public struct Transition: Sendable, Hashable {
        public let key: String
        public let window: ThrottleWindow
        public let exhausted: Bool
    }

    /// The largest single grant, whatever a gateway asks.
    public var maxGrant: UInt64
    public private(set) var counters: [CounterID: ThrottleCounter] = [:]

    public init(maxGrant: UInt64 = 100_000, counters: [ThrottleCounter] = []) {
        self.maxGrant = max(1, maxGrant)
        for counter in counters {
            self.counters[CounterID(key: counter.throttleKey, windowStart: counter.windowStartUnixMs)] = counter
        }
    }

    /// Units nobody holds or used: `limit − (granted − returned) − unleased`.
    public static func pool(_ counter: ThrottleCounter) -> UInt64 {
        let taken = (counter.granted - min(counter.returned, counter.granted)) + counter.unleased
        return counter.limit > taken ? counter.limit - taken : 0
    }

    /// Applies one gateway's operation at `now` (the traffic manager's
    /// clock); returns the grant, and the pool's transition if it emptied or
    /// filled again.
    public mutating func apply(_ operation: LeaseOperation, gateway: String, now: Int64) -> (grant: LeaseGrant, transition: Transition?) {
        let id = CounterID(key: operation.throttleKey, windowStart: operation.windowStartUnixMs)
        let window = ThrottleWindow(start: operation.windowStartUnixMs, end: max(operation.windowEndUnixMs, operation.windowStartUnixMs + 1))
        var counter = counters[id] ?? ThrottleCounter(throttleKey: operation.throttleKey, windowStartUnixMs: window.start, windowEndUnixMs: window.end,
                                                      limit: operation.limit)
        if operation.limit > 0, operation.limit < counter.limit { counter.limit = operation.limit }

        var share = counter.gateways.firstIndex { $0.gatewayId == gateway }.map { counter.gateways[$0] } ?? GatewayLeaseStatus(gatewayId: gateway)
        // A gateway cannot hand back more than it was granted and did not use.
        let outstanding = share.granted - min(share.granted, share.returned + share.used)
        let returned = min(operation.returned, outstanding)
        share.returned += returned
        counter.returned += returned
        share.used += operation.used
        counter.used += operation.used
        share.unleased += operation.unleased
        counter.unleased += operation.unleased

        var granted: UInt64 = 0
        let pool = Self.pool(counter)
        // A window that ended, or one more than a window ahead, gets nothing:
        // its leases could not be used, or not yet.
        let open = now < window.end && window.start <= now + window.length
        if operation.wanted > 0, open, pool > 0 {
            let known = counter.gateways.contains { $0.gatewayId == gateway }
            let gateways = UInt64(counter.gateways.count + (known ? 0 : 1))
            let shrinking = max(1, pool / (2 * max(1, gateways)))
            granted = min(operation.wanted, shrinking, pool, maxGrant)
            share.granted += granted
            counter.granted += granted
        }
        if let index = counter.gateways.firstIndex(where: { $0.gatewayId == gateway }) {
            counter.gateways[index] = share
        } else if share.granted > 0 || share.used > 0 || share.unleased > 0 {
            counter.gateways.append(share)
        }

        let remaining = Self.pool(counter)
        var transition: Transition?
        if remaining == 0, !counter.exhausted {
            counter.exhausted = true
            transition = Transition(key: counter.throttleKey, window: window, exhausted: true)
        } else if remaining > 0, counter.exhausted {
            counter.exhausted = false
            transition = Transition(key: counter.throttleKey, window: window, exhausted: false)
        }
        counters[id] = counter
        let grant = LeaseGrant(throttleKey: operation.throttleKey, windowStartUnixMs: window.start, granted: granted, remaining: remaining,
                               limit: counter.limit, gateways: UInt32(counter.gateways.count))
        return (grant, transition)
    }

    /// Drops the counters of windows that ended before `now`; returns their ids.
    @discardableResult
    public mutating func removeEnded(before now: Int64) -> [CounterID] {
        let ended = counters.filter { $0.value.windowEndUnixMs <= now }.map(\.key)
        for id in ended { counters[id] = nil }
        return ended
    }

    /// The counters of one key, oldest window first.
    public func counters(of key: String) -> [ThrottleCounter] {
        counters.values.filter { $0.throttleKey == key }.sorted { $0.windowStartUnixMs < $1.windowStartUnixMs }
    }

    public func counter(_ id: CounterID) -> ThrottleCounter? { counters[id] }

    /// Keys whose pool is empty in a window still open at `now`.
    public func exhausted(at now: Int64) -> [ThrottleCounter] {
        counters.values.filter { $0.exhausted && $0.windowEndUnixMs > now }.sorted { $0.throttleKey < $1.throttleKey }
    }
}

/// Which traffic manager owns a throttle key: rendezvous (highest random
/// weight) hashing, so every gateway computes the same owner from the same
/// list, and adding or removing one moves only the keys it wins or owned.
public struct RendezvousOwners: Sendable {
    public let nodes: [String]

    public init(_ nodes: [String]) {
        self.nodes = nodes.sorted()
    }

    /// The owner of `key`; nil when there are no traffic managers.
    public func owner(of key: String) -> String? {
        var best: (node: String, weight: UInt64)?
        for node in nodes {
            let weight = Self.weight(node: node, key: key)
            if best == nil || weight > best!.weight || (weight == best!.weight && node < best!.node) { best = (node, weight) }
        }
        return best?.node
    }

    /// FNV-1a over `node`, a separator and `key`, then splitmix64's
    /// finaliser: stable across processes and builds (Swift's `Hasher` is
    /// seeded per process), and well mixed.
    public static func weight(node: String, key: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in node.utf8 { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        hash = (hash ^ 0xff) &* 0x0000_0100_0000_01b3
        for byte in key.utf8 { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        hash ^= hash >> 30
        hash = hash &* 0xbf58_476d_1ce4_e5b9
        hash ^= hash >> 27
        hash = hash &* 0x94d0_49bb_1331_11eb
        hash ^= hash >> 31
        return hash
    }
}
