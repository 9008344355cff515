public import RoleCore
import Synchronization
public import TollgateProto

/// One API's endpoints of one key type, parsed once per deployment.
public final class EndpointGroup: Sendable {
    public enum Strategy: Sendable { case single, roundRobin, failover }

    public let strategy: Strategy
    /// In configuration order (primary first for failover).
    public let endpoints: [(endpoint: Endpoint, target: BackendTarget)]
    private let next = Atomic<UInt64>(0)

    /// Nil when the configuration names no usable endpoint.
    init?(_ config: EndpointConfig?, defaults: EndpointDefaults) {
        guard let config, let strategy = config.strategy else { return nil }
        let list: [Endpoint]
        switch strategy {
        case .single(let endpoint):
            self.strategy = .single
            list = [endpoint]
        case .loadBalanced(let group):
            self.strategy = .roundRobin
            list = group.endpoints
        case .failover(let group):
            self.strategy = .failover
            list = [group.primary].compactMap { $0 } + group.secondaries
        }
        endpoints = list.compactMap { endpoint in BackendTarget(url: endpoint.url, endpoint: endpoint, defaults: defaults).map { (endpoint, $0) } }
        destinations = endpoints.map(\.target.description)
        targets = endpoints.map(\.target)
        guard !endpoints.isEmpty else { return nil }
    }

    /// The backends to try, in order: round robin starts at the next one in
    /// turn; failover at the primary. Suspended endpoints are left out.
    func candidates(health: EndpointHealth, now: Int64) -> [BackendTarget] {
        switch strategy {
        case .single, .failover:
            // While every endpoint is healthy (the usual case): the list made once, shared.
            if !health.anySuspension { return targets }
            return endpoints.filter { !health.isSuspended($0.endpoint.url, now: now) }.map(\.target)
        case .roundRobin:
            let start = Int(next.add(1, ordering: .relaxed).oldValue % UInt64(endpoints.count))
            var ordered: [BackendTarget] = []
            ordered.reserveCapacity(endpoints.count)
            for offset in 0..<endpoints.count {
                let entry = endpoints[(start + offset) % endpoints.count]
                if !health.isSuspended(entry.endpoint.url, now: now) { ordered.append(entry.target) }
            }
            return ordered
        }
    }

    /// The endpoint a candidate came from (candidates carry the gateway's
    /// default timeouts where the endpoint set none, so only the address counts).
    func endpoint(for target: BackendTarget) -> Endpoint? {
        index(of: target).map { endpoints[$0].endpoint }
    }

    /// Each endpoint's address as usage records name it (`http(s)://host:port/base`),
    /// made once here rather than for every request.
    private let destinations: [String]
    /// Every endpoint's target, in configuration order.
    private let targets: [BackendTarget]

    /// The endpoint a candidate came from, with its address for the usage record.
    func entry(for target: BackendTarget) -> (endpoint: Endpoint, destination: String)? {
        index(of: target).map { (endpoints[$0].endpoint, destinations[$0]) }
    }

    private func index(of target: BackendTarget) -> Int? {
        endpoints.firstIndex {
            $0.target.port == target.port && $0.target.isSecure == target.isSecure && $0.target.host == target.host
                && $0.target.basePath == target.basePath
        }
    }
}

/// Timeouts for endpoints that set none.
public struct EndpointDefaults: Sendable {
    public var connectTimeoutMs: Int64
    public var readTimeoutMs: Int64

    public init(connectTimeoutMs: Int64, readTimeoutMs: Int64) {
        self.connectTimeoutMs = connectTimeoutMs
        self.readTimeoutMs = readTimeoutMs
    }
}

extension BackendTarget {
    /// `http(s)://host[:port][/base]`; nil for anything else.
    init?(url: String, endpoint: Endpoint, defaults: EndpointDefaults) {
        let secure: Bool
        var rest: Substring
        if url.lowercased().hasPrefix("https://") {
            secure = true
            rest = url.dropFirst(8)
        } else if url.lowercased().hasPrefix("http://") {
            secure = false
            rest = url.dropFirst(7)
        } else {
            return nil
        }
        let pathStart = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<pathStart]
        var base = String(rest[pathStart...])
        if let query = base.firstIndex(of: "?") { base = String(base[..<query]) }
        while base.hasSuffix("/") { base.removeLast() }
        rest = authority
        var host: Substring
        var port = secure ? 443 : 80
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return nil }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") {
                guard let value = Int(after.dropFirst()), (1...65535).contains(value) else { return nil }
                port = value
            }
        } else if let colon = rest.lastIndex(of: ":") {
            host = rest[..<colon]
            guard let value = Int(rest[rest.index(after: colon)...]), (1...65535).contains(value) else { return nil }
            port = value
        } else {
            host = rest
        }
        guard !host.isEmpty else { return nil }
        self.init(isSecure: secure, host: String(host), port: port, basePath: base,
                  connectTimeoutMs: endpoint.connectTimeoutMs > 0 ? endpoint.connectTimeoutMs : defaults.connectTimeoutMs,
                  readTimeoutMs: endpoint.readTimeoutMs > 0 ? endpoint.readTimeoutMs : defaults.readTimeoutMs)
    }
}

/// WSO2-style endpoint suspension: after `retries_before_suspension + 1`
/// failures in a row an endpoint is left out for a suspension that grows by
/// `progression_factor` each time (up to `max_suspension_ms`), and is back
/// in full health after its first success.
public final class EndpointHealth: Sendable {
    private struct State {
        var consecutiveFailures = 0
        var suspendedUntil: Int64 = 0
        var lastSuspensionMs: Int64 = 0
    }
    private let states = Mutex<[String: State]>([:])
    private let anySuspended = Atomic<Bool>(false)
    /// Endpoints `states` holds (set under its lock): while none has
    /// failed, a success is recorded without taking the lock, which both
    /// event loops would otherwise take on every request.
    private let tracked = Atomic<Int>(0)

    public init() {}

    /// Defaults when an endpoint sets no suspension: WSO2's 30 s, not growing.
    static let defaultInitialMs: Int64 = 30_000

    /// Whether any endpoint is (or was, until its next success) suspended.
    var anySuspension: Bool { anySuspended.load(ordering: .relaxed) }

    func isSuspended(_ url: String, now: Int64) -> Bool {
        // No lock at all while every endpoint is healthy.
        guard anySuspended.load(ordering: .relaxed) else { return false }
        return states.withLock { ($0[url]?.suspendedUntil ?? 0) > now }
    }

    func recordSuccess(_ url: String) {
        guard tracked.load(ordering: .relaxed) > 0 else { return }
        guard anySuspended.load(ordering: .relaxed) || states.withLock({ $0[url] != nil }) else { return }
        states.withLock { states in
            states[url] = nil
            tracked.store(states.count, ordering: .relaxed)
            if !states.values.contains(where: { $0.suspendedUntil > 0 }) { anySuspended.store(false, ordering: .relaxed) }
        }
    }

    /// Counts a failure; returns whether the endpoint is now suspended.
    ///
    /// An endpoint without a suspension policy of its own is suspended only
    /// when it could not be reached (refused, connect timeout, TLS) and the
    /// API has other endpoints to use meanwhile: taking an API's only
    /// backend out, or one that is merely slow, would turn a passing problem
    /// into 30 s of refusals.
    @discardableResult
    func recordFailure(_ endpoint: Endpoint, failure: EndpointFailure?, status: Int?, now: Int64, hasAlternatives: Bool = true) -> Bool {
        let policy: EndpointSuspension
        if let configured = endpoint.suspension {
            policy = configured
        } else {
            guard hasAlternatives, let failure, [.connectRefused, .connectTimeout, .tlsHandshake].contains(failure) else { return false }
            policy = EndpointSuspension()
        }
        if let status {
            guard policy.failureHttpStatuses.contains(UInt32(status)) else { return false }
        } else if let failure, !policy.countFailures.isEmpty, !policy.countFailures.contains(failure) {
            return false
        }
        return states.withLock { states in
            var state = states[endpoint.url] ?? State()
            state.consecutiveFailures += 1
            var suspended = false
            if state.consecutiveFailures > Int(policy.retriesBeforeSuspension) {
                let initial = policy.initialSuspensionMs > 0 ? policy.initialSuspensionMs : Self.defaultInitialMs
                let factor = policy.progressionFactor >= 1 ? policy.progressionFactor : 1
                var duration = state.lastSuspensionMs == 0 ? initial : Int64(Double(state.lastSuspensionMs) * factor)
                if policy.maxSuspensionMs > 0 { duration = min(duration, policy.maxSuspensionMs) }
                state.lastSuspensionMs = duration
                state.suspendedUntil = now + duration
                state.consecutiveFailures = 0
                suspended = true
                anySuspended.store(true, ordering: .relaxed)
            }
            states[endpoint.url] = state
            tracked.store(states.count, ordering: .relaxed)
            return suspended
        }
    }

    /// Endpoints suspended now, for status.
    func suspended(now: Int64) -> [String] {
        states.withLock { $0.filter { $0.value.suspendedUntil > now }.map(\.key).sorted() }
    }
}

extension BackendFailure {
    var endpointFailure: EndpointFailure {
        switch self {
        case .connectRefused: .connectRefused
        case .connectTimeout: .connectTimeout
        case .readTimeout: .readTimeout
        case .connectionClosed: .connectionClosed
        case .tlsHandshake: .tlsHandshake
        }
    }
}
