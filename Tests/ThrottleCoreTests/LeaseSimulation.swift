import Synchronization
@testable import ThrottleCore
import TollgateProto

/// Gateways (LeaseThrottlers) and traffic managers (LeaseLedgers) on a
/// simulated millisecond clock: exchanges travel for `roundTripMs`, the
/// ledger answers at the half-way point, requests arrive at each gateway's
/// rate. Everything runs on the test's thread, so a run is deterministic.
final class LeaseSimulation {
    struct Gateway {
        let throttler: LeaseThrottler
        /// Requests per millisecond; changed by the scenario as it runs.
        var rate: Double
        var carry = 0.0
        var waiting: [ThrottleRequest] = []
        var active = true
    }

    struct Flight {
        let gateway: Int
        let operations: [LeaseOperation]
        var replies: [LeaseGrant?] = []
        let arrivesAt: Int64
        let returnsAt: Int64
    }

    let limit: UInt64
    let windowSeconds: UInt32
    let roundTripMs: Int64
    var ledgers: [String: LeaseLedger]
    /// Traffic managers that answer nothing (killed).
    var down: Set<String> = []
    let owners: RendezvousOwners
    var gateways: [Gateway] = []
    var flights: [Flight] = []
    var now: Int64
    /// Per window start: admitted and refused requests, and offered ones.
    var admitted: [Int64: UInt64] = [:]
    var refused: [Int64: UInt64] = [:]
    var offered: [Int64: UInt64] = [:]
    let key = "sub:app-1:/pets:1.0.0"
    let configuration: (Int) -> LeaseThrottlerConfiguration

    init(limit: UInt64, windowSeconds: UInt32 = 10, roundTripMs: Int64 = 4, trafficManagers: [String] = ["tm-1"], start: Int64 = 1_800_000_000_000,
         configuration: @escaping (Int) -> LeaseThrottlerConfiguration = { LeaseThrottlerConfiguration(gatewayID: "gw-\($0)") }) {
        self.limit = limit
        self.windowSeconds = windowSeconds
        self.roundTripMs = roundTripMs
        ledgers = Dictionary(uniqueKeysWithValues: trafficManagers.map { ($0, LeaseLedger()) })
        owners = RendezvousOwners(trafficManagers)
        now = start
        self.configuration = configuration
    }

    var spec: WindowSpec { WindowSpec(unit: .second, count: windowSeconds) }
    func window(_ instant: Int64) -> ThrottleWindow { spec.window(containing: instant) }

    @discardableResult
    func addGateway(rate: Double) -> Int {
        let index = gateways.count
        let throttler = LeaseThrottler(configuration: configuration(index), transport: UnusedTransport())
        gateways.append(Gateway(throttler: throttler, rate: rate))
        return index
    }

    /// A subscriber's request on the simulated API at the simulated tier.
    func request() -> ThrottleRequest {
        let validation = KeyValidationInfo(authorized: true, applicationId: "app-1", subscriptionPolicy: "Bronze", stopOnQuotaReach: true,
                                           subscriptionLimit: ThrottleLimit(timeUnit: .second, unitTime: windowSeconds, quota: .requestCount(limit)),
                                           endUserName: "alice@carbon.super")
        return ThrottleRequest(apiContext: "/pets", apiVersion: "1.0.0", validation: validation, attributes: RequestAttributes(clientIP: "10.0.0.1"))
    }

    private func offer(_ gateway: Int, _ request: ThrottleRequest, counted: Bool) {
        if counted { offered[window(now).start, default: 0] += 1 }
        switch gateways[gateway].throttler.admit(request, now: now) {
        case .admit: admitted[window(now).start, default: 0] += 1
        case .refuse: refused[window(now).start, default: 0] += 1
        case .wait: gateways[gateway].waiting.append(request)
        }
    }

    /// Advances the clock by `milliseconds`, one millisecond at a time.
    func run(milliseconds: Int64, every: ((LeaseSimulation) -> Void)? = nil) {
        for _ in 0..<milliseconds {
            now += 1
            every?(self)
            deliver()
            for index in gateways.indices {
                if now % 10 == 0 { gateways[index].throttler.maintain(now: now) }
                guard gateways[index].active else { continue }
                gateways[index].carry += gateways[index].rate
                while gateways[index].carry >= 1 {
                    gateways[index].carry -= 1
                    offer(index, request(), counted: true)
                }
            }
            send()
        }
    }

    private func send() {
        for index in gateways.indices {
            let operations = gateways[index].throttler.takeOperations(now: now)
            guard !operations.isEmpty else { continue }
            flights.append(Flight(gateway: index, operations: operations, arrivesAt: now + roundTripMs / 2, returnsAt: now + roundTripMs))
        }
    }

    private func deliver() {
        for index in flights.indices where flights[index].arrivesAt == now {
            let gatewayID = gateways[flights[index].gateway].throttler.configuration.gatewayID
            flights[index].replies = flights[index].operations.map { operation in
                guard let owner = owners.owner(of: operation.throttleKey), !down.contains(owner) else { return nil }
                return ledgers[owner]!.apply(operation, gateway: gatewayID, now: now).grant
            }
        }
        let landed = flights.filter { $0.returnsAt <= now }
        flights.removeAll { $0.returnsAt <= now }
        for flight in landed {
            gateways[flight.gateway].throttler.receive(flight.operations, replies: flight.replies, now: now)
            // The requests that waited try again; some may wait once more.
            let retry = gateways[flight.gateway].waiting
            gateways[flight.gateway].waiting = []
            for request in retry { offer(flight.gateway, request, counted: false) }
        }
    }

    /// Units gateways hold for the window starting at `start`.
    func held(windowStart start: Int64) -> UInt64 {
        let window = spec.window(containing: start)
        return gateways.reduce(0) { $0 + $1.throttler.held(ThrottleKey(parsing: key)!, window: window) }
    }

    /// The owning ledger's counter of the window.
    func counter(windowStart start: Int64) -> ThrottleCounter? {
        ledgers[owners.owner(of: key)!]!.counter(.init(key: key, windowStart: start))
    }
}

/// The simulation drives exchanges by hand (takeOperations / receive).
struct UnusedTransport: LeaseTransport {
    func exchange(_ operations: [LeaseOperation]) async -> [LeaseGrant?] { operations.map { _ in nil } }
}

/// A ledger behind a lock, for the asynchronous path (`flush`, `run`).
final class LedgerTransport: LeaseTransport {
    let ledger = Mutex(LeaseLedger())
    let gatewayID: String
    let clock: @Sendable () -> Int64

    init(gatewayID: String, clock: @escaping @Sendable () -> Int64) {
        self.gatewayID = gatewayID
        self.clock = clock
    }

    func exchange(_ operations: [LeaseOperation]) async -> [LeaseGrant?] {
        let now = clock()
        return ledger.withLock { ledger in operations.map { ledger.apply($0, gateway: gatewayID, now: now).grant } }
    }
}
