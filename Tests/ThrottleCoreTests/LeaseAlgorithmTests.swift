import Synchronization
import Testing
@testable import ThrottleCore
import TollgateProto

/// The lease algorithm on a simulated clock (docs/throttling.md §2): many
/// gateways against one or more ledgers, checked window by window.
@Suite struct LeaseAlgorithmTests {
    /// docs/throttling.md's worst-case under-admission: total rate over the
    /// lease horizon and a round trip, plus a unit or two per gateway.
    static func bound(totalRate: Double, gateways: Int, horizonMs: Int64 = 250, roundTripMs: Int64) -> UInt64 {
        UInt64((totalRate * Double(horizonMs + roundTripMs)).rounded(.up)) + UInt64(2 * gateways)
    }

    @Test(arguments: [[1.0 / 3, 1.0 / 3, 1.0 / 3], [0.7, 0.2, 0.1], [0.98, 0.01, 0.01], [0.5, 0.5, 0.0]])
    func neverOverAdmitsAndStaysWithinOnePercentAtThreeTimesTheLimit(skew: [Double]) {
        let simulation = LeaseSimulation(limit: 1000, windowSeconds: 10, roundTripMs: 4)
        let totalRate = 3.0 * 1000 / 10_000  // 3× the limit, per millisecond
        for share in skew { simulation.addGateway(rate: totalRate * share) }
        let first = simulation.window(simulation.now + 1).start
        simulation.run(milliseconds: 40_000)
        for window in 0..<4 {
            let start = first + Int64(window) * 10_000
            let admitted = simulation.admitted[start, default: 0]
            #expect(admitted <= 1000, "window \(window) of skew \(skew): \(admitted) admitted against 1000")
            #expect(admitted >= 990, "window \(window) of skew \(skew): \(admitted) admitted, \(simulation.refused[start, default: 0]) refused")
        }
    }

    @Test func gatewaysJoiningAndLeavingNeverOverAdmitAndUnderAdmitWithinTheBound() {
        let simulation = LeaseSimulation(limit: 1000, windowSeconds: 10, roundTripMs: 6)
        simulation.addGateway(rate: 0.06)
        simulation.addGateway(rate: 0.05)
        let first = simulation.window(simulation.now + 1).start
        simulation.run(milliseconds: 60_000) { simulation in
            let elapsed = simulation.now - first
            if elapsed == 5_000 { simulation.addGateway(rate: 0.08) }  // joins mid-window
            if elapsed == 12_500 { simulation.gateways[1].active = false }  // leaves mid-window
            if elapsed == 29_700 { simulation.gateways[0].active = false }  // leaves just before a window ends: its lease is stranded
            if elapsed == 35_000 { simulation.gateways[0].active = true }
            if elapsed == 40_000 { for index in simulation.gateways.indices { simulation.gateways[index].rate /= 3 } }  // below the limit
        }
        for window in 0..<6 {
            let start = first + Int64(window) * 10_000
            let admitted = simulation.admitted[start, default: 0], offered = simulation.offered[start, default: 0]
            let rate = Double(offered) / 10_000
            #expect(admitted <= 1000, "window \(window): \(admitted) admitted")
            if offered >= 1000 {
                let bound = Self.bound(totalRate: rate, gateways: simulation.gateways.count, roundTripMs: 6)
                #expect(1000 - admitted <= bound, "window \(window): \(admitted) admitted of \(offered) offered; bound \(bound)")
            } else {
                #expect(simulation.refused[start, default: 0] == 0, "window \(window): refusals while the quota lasted (\(offered) offered)")
                #expect(admitted == offered)
            }
        }
    }

    @Test func burstsAcrossAWindowEdgeCountInTheirOwnWindows() {
        let simulation = LeaseSimulation(limit: 1000, windowSeconds: 10, roundTripMs: 4)
        for _ in 0..<3 { simulation.addGateway(rate: 0.01) }
        let first = simulation.window(simulation.now + 1).start
        simulation.run(milliseconds: 30_000) { simulation in
            let intoWindow = (simulation.now - first) % 10_000
            // 3,000 requests a side in the last and first 300 ms of each window.
            let burst = intoWindow >= 9_700 || intoWindow < 300
            for index in simulation.gateways.indices { simulation.gateways[index].rate = burst ? 10.0 / 3 : 0.01 }
        }
        for window in 0..<3 {
            let start = first + Int64(window) * 10_000
            let admitted = simulation.admitted[start, default: 0]
            #expect(admitted <= 1000, "window \(window): \(admitted)")
            // Every gateway is busy until the pool is gone: nothing is stranded.
            #expect(admitted >= 990, "window \(window): \(admitted)")
            #expect((simulation.counter(windowStart: start)?.granted ?? 0) - (simulation.counter(windowStart: start)?.returned ?? 0) <= 1000)
        }
    }

    @Test func leaseSizesShrinkToOneNearTheLimit() {
        var ledger = LeaseLedger()
        var grants: [UInt64] = []
        let window = ThrottleWindow(start: 0, end: 10_000)
        for index in 0..<400 {
            let operation = LeaseOperation(throttleKey: "k", windowStartUnixMs: window.start, windowEndUnixMs: window.end, limit: 1000, wanted: 100)
            let grant = ledger.apply(operation, gateway: "gw-\(index % 4)", now: 1).grant
            if grant.granted == 0 { break }
            grants.append(grant.granted)
        }
        #expect(grants.reduce(0, +) == 1000)
        // A large pool grants what was asked; the fourth gateway's share of 700 is 700 / (2 × 4).
        #expect(grants.prefix(4) == [100, 100, 100, 87])
        #expect(grants.suffix(8).allSatisfy { $0 == 1 })  // the last units go one by one
        #expect(zip(grants, grants.dropFirst()).allSatisfy { $0 >= $1 })
        let after = ledger.apply(LeaseOperation(throttleKey: "k", windowStartUnixMs: 0, windowEndUnixMs: 10_000, limit: 1000, wanted: 5), gateway: "gw-0", now: 2)
        #expect(after.grant.granted == 0 && after.grant.remaining == 0)
        // A return fills the pool again, and says so once.
        let returned = ledger.apply(LeaseOperation(throttleKey: "k", windowStartUnixMs: 0, windowEndUnixMs: 10_000, limit: 1000, returned: 3), gateway: "gw-1", now: 3)
        #expect(returned.grant.remaining == 3 && returned.transition?.exhausted == false)
        // Nobody returns more than they hold; an ended window grants nothing.
        let greedy = ledger.apply(LeaseOperation(throttleKey: "k", windowStartUnixMs: 0, windowEndUnixMs: 10_000, limit: 1000, returned: 10_000), gateway: "gw-2", now: 4)
        #expect(greedy.grant.remaining <= 3 + 250)
        let late = ledger.apply(LeaseOperation(throttleKey: "k", windowStartUnixMs: 0, windowEndUnixMs: 10_000, limit: 1000, wanted: 5), gateway: "gw-0", now: 10_000)
        #expect(late.grant.granted == 0)
        // A lower limit from any gateway holds for the rest of the window.
        let lower = ledger.apply(LeaseOperation(throttleKey: "k2", windowStartUnixMs: 0, windowEndUnixMs: 10_000, limit: 1000, wanted: 1), gateway: "gw-0", now: 5)
        #expect(lower.grant.limit == 1000)
        let lowered = ledger.apply(LeaseOperation(throttleKey: "k2", windowStartUnixMs: 0, windowEndUnixMs: 10_000, limit: 10, wanted: 1), gateway: "gw-1", now: 5)
        #expect(lowered.grant.limit == 10)
        let raised = ledger.apply(LeaseOperation(throttleKey: "k2", windowStartUnixMs: 0, windowEndUnixMs: 10_000, limit: 5000, wanted: 1), gateway: "gw-1", now: 5)
        #expect(raised.grant.limit == 10)
    }

    @Test func rendezvousOwnersMoveOnlyTheKeysOfTheNodeAddedOrRemoved() {
        let keys = (0..<3000).map { "sub:app-\($0):/pets:1.0.0" }
        let three = RendezvousOwners(["tm-1", "tm-2", "tm-3"])
        let before = keys.map { three.owner(of: $0)! }
        let counts = Dictionary(grouping: before, by: { $0 }).mapValues(\.count)
        #expect(counts.values.allSatisfy { $0 > 800 }, "\(counts)")
        let two = RendezvousOwners(["tm-1", "tm-3"])
        for (key, owner) in zip(keys, before) {
            let now = two.owner(of: key)!
            #expect(owner == "tm-2" ? now != "tm-2" : now == owner)
        }
        let four = RendezvousOwners(["tm-4", "tm-1", "tm-2", "tm-3"])
        let moved = zip(keys, before).filter { four.owner(of: $0.0)! != $0.1 }
        #expect(moved.allSatisfy { four.owner(of: $0.0) == "tm-4" })
        #expect(moved.count > 500 && moved.count < 1000)
        #expect(RendezvousOwners([]).owner(of: "k") == nil)
    }

    @Test(arguments: [LeaseThrottlerConfiguration.FailureMode.localShare, .open, .closed])
    func aLostTrafficManagerFallsBackAsConfiguredAndRecovers(mode: LeaseThrottlerConfiguration.FailureMode) {
        let simulation = LeaseSimulation(limit: 900, windowSeconds: 10, roundTripMs: 4) {
            LeaseThrottlerConfiguration(gatewayID: "gw-\($0)", failureMode: mode, gateways: 3)
        }
        for _ in 0..<3 { simulation.addGateway(rate: 0.1) }  // 1,000 a window each, 3,000 in all
        let first = simulation.window(simulation.now + 1).start
        simulation.run(milliseconds: 10_000)  // a normal window
        simulation.down = ["tm-1"]
        simulation.run(milliseconds: 10_000)  // the traffic manager is lost for the whole second window
        let lost = first + 10_000
        let fallback = simulation.gateways.map { $0.throttler.statistics }
        #expect(fallback.allSatisfy { $0.fallbackEntries >= 1 && $0.keysInFallback >= 1 })
        simulation.down = []
        simulation.run(milliseconds: 20_000)
        #expect(simulation.admitted[first, default: 0] <= 900)
        let admittedWhileLost = simulation.admitted[lost, default: 0]
        switch mode {
        case .localShare: #expect(admittedWhileLost <= 900 && admittedWhileLost >= 850, "\(admittedWhileLost)")  // 300 a gateway
        case .open: #expect(admittedWhileLost >= 2_900, "\(admittedWhileLost)")
        case .closed: #expect(admittedWhileLost <= 30, "\(admittedWhileLost)")  // what leases from before the loss covered
        }
        // Recovered: leases again, exact again.
        let recovered = first + 30_000
        #expect(simulation.admitted[recovered, default: 0] <= 900 && simulation.admitted[recovered, default: 0] >= 891)
        #expect(simulation.gateways.allSatisfy { $0.throttler.statistics.keysInFallback == 0 })
    }

    @Test func twoTrafficManagersOneKilledOnlyItsKeysFallBack() {
        let managers = ["tm-1", "tm-2"]
        let owners = RendezvousOwners(managers)
        var ledgers = Dictionary(uniqueKeysWithValues: managers.map { ($0, LeaseLedger()) })
        let throttler = LeaseThrottler(configuration: LeaseThrottlerConfiguration(gatewayID: "gw-1", gateways: 1), transport: UnusedTransport())
        // Applications whose subscription keys land on each manager.
        let applications = (0..<40).map { "app-\($0)" }
        func key(_ app: String) -> String { ThrottleKey.subscription(applicationID: app, context: "/pets", version: "1.0.0").description }
        let onFirst = applications.filter { owners.owner(of: key($0)) == "tm-1" }, onSecond = applications.filter { owners.owner(of: key($0)) == "tm-2" }
        #expect(!onFirst.isEmpty && !onSecond.isEmpty)
        var down: Set<String> = ["tm-2"]
        var now: Int64 = 1_800_000_000_500
        func request(_ app: String) -> ThrottleRequest {
            ThrottleRequest(apiContext: "/pets", apiVersion: "1.0.0", validation: KeyValidationInfo(
                applicationId: app, subscriptionPolicy: "Bronze", stopOnQuotaReach: true,
                subscriptionLimit: ThrottleLimit(timeUnit: .minute, unitTime: 1, quota: .requestCount(10)), endUserName: "u"),
                            attributes: RequestAttributes(clientIP: "10.0.0.1"))
        }
        func admit(_ app: String) -> ThrottleOutcome {
            for _ in 0..<20 {
                let outcome = throttler.admit(request(app), now: now)
                guard case .wait = outcome else { return outcome }
                let operations = throttler.takeOperations(now: now)
                let replies = operations.map { operation -> LeaseGrant? in
                    let owner = owners.owner(of: operation.throttleKey)!
                    return down.contains(owner) ? nil : ledgers[owner]!.apply(operation, gateway: "gw-1", now: now).grant
                }
                throttler.receive(operations, replies: replies, now: now)
            }
            Issue.record("no answer after 20 exchanges")
            return .refuse(ThrottleRefusal(kind: .subscription, errorCode: 0, httpStatus: 0, policy: "", key: "", retryAfterSeconds: nil, rateLimit: nil))
        }
        func admitted(_ outcome: ThrottleOutcome) -> Bool {
            if case .admit = outcome { return true }
            return false
        }
        // Local share of 10 with one gateway: every first call is admitted, leased or not.
        for app in onFirst + onSecond { #expect(admitted(admit(app)), "\(app)") }
        #expect(throttler.statistics.keysInFallback == onSecond.count, "only tm-2's keys fall back")
        #expect(ledgers["tm-1"]!.counters.count == onFirst.count)
        #expect(ledgers["tm-2"]!.counters.isEmpty)

        // tm-2 is back: after the back-off its keys are leased again, and
        // what was admitted meanwhile is reported against the same window.
        down = []
        now += 1_000
        for app in onSecond { #expect(admitted(admit(app))) }
        let operations = throttler.takeOperations(now: now)
        throttler.receive(operations, replies: operations.map { ledgers[owners.owner(of: $0.throttleKey)!]!.apply($0, gateway: "gw-1", now: now).grant }, now: now)
        #expect(throttler.statistics.keysInFallback == 0)
        #expect(ledgers["tm-2"]!.counters.count == onSecond.count)
        // Each key admitted twice on the local share (while lost, and the call that found tm-2 back).
        #expect(ledgers["tm-2"]!.counters.values.allSatisfy { $0.unleased == 2 }, "\(ledgers["tm-2"]!.counters.values.map(\.unleased))")
    }
}
