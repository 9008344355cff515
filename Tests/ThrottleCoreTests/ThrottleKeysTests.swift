import Testing
@testable import ThrottleCore
import TollgateProto

/// Keys, windows, conditions and the evaluation order (docs/throttling.md §1, §3).
@Suite struct ThrottleKeysTests {
    @Test func keysOfEveryKindInWSO2sForms() {
        #expect(ThrottleKey.api(context: "/pets", version: "1.0.0").description == "api:/pets:1.0.0")
        #expect(ThrottleKey.resource(context: "/pets", version: "1.0.0", uriTemplate: "/pet/{id}", verb: "get").description == "res:/pets/1.0.0/pet/{id}:GET")
        #expect(ThrottleKey.subscription(applicationID: "a1", context: "/pets", version: "1.0.0").description == "sub:a1:/pets:1.0.0")
        #expect(ThrottleKey.application(applicationID: "a1", user: "bob@carbon.super").description == "app:a1:bob@carbon.super")
        #expect(ThrottleKey.hardLimit(context: "/pets", version: "1", sandbox: true).description == "hard:/pets:1:sandbox")
        #expect(ThrottleKey.api(context: "/pets", version: "1").condition("g2").description == "api:/pets:1_condition_g2")
        #expect(ThrottleKey.api(context: "/pets", version: "1").defaultLimit.description == "api:/pets:1_default")
        #expect(ThrottleKey(parsing: "sub:a1:/pets:1.0.0") == .subscription(applicationID: "a1", context: "/pets", version: "1.0.0"))
        #expect(ThrottleKey(parsing: "nope:x") == nil)
        let values = KeyTemplateValues(userID: "bob", apiContext: "/pets", apiVersion: "1", applicationID: "a1", clientIP: "10.1.1.1",
                                       header: { $0 == "X-Tier" ? "gold" : nil })
        #expect(values.expand("$userId:$apiContext:$apiVersion") == "bob:/pets:1")
        #expect(values.expand("$appId-$clientIp-$customProperty.X-Tier") == "a1-10.1.1.1-gold")
        #expect(values.expand("$unknownVar:$userId") == "$unknownVar:bob")
        #expect(ThrottleKind.allCases.map(\.errorCode) == [900_800, 900_802, 900_804, 900_807, 900_803, 900_806, 900_801])
        #expect(ThrottleKind.hardLimit.httpStatus == 503 && ThrottleKind.custom.httpStatus == 429)
    }

    @Test func windowsAlignToTheEpochAndToCalendarMonths() {
        let minute = WindowSpec(unit: .minute, count: 1).window(containing: 1_800_000_059_999)
        #expect(minute == ThrottleWindow(start: 1_799_999_980_000, end: 1_800_000_040_000) || minute.contains(1_800_000_059_999))
        #expect(minute.start % 60_000 == 0 && minute.length == 60_000)
        let fiveSeconds = WindowSpec(unit: .second, count: 5).window(containing: 12_345)
        #expect(fiveSeconds == ThrottleWindow(start: 10_000, end: 15_000))
        #expect(WindowSpec(unit: .hour, count: 2).window(containing: 7_300_000) == ThrottleWindow(start: 7_200_000, end: 14_400_000))
        #expect(WindowSpec(unit: .day, count: 1).window(containing: 86_400_001).start == 86_400_000)
        // 2026-02-15T12:00Z lies in February; a 3-month block is Jan–Mar; a year is 2026.
        let february15: Int64 = 1_771_156_800_000
        let day = 86_400_000 as Int64
        #expect(WindowSpec(unit: .month, count: 1).window(containing: february15) == ThrottleWindow(start: 20_485 * day, end: 20_513 * day))
        #expect(WindowSpec(unit: .month, count: 3).window(containing: february15) == ThrottleWindow(start: 20_454 * day, end: 20_544 * day))
        #expect(WindowSpec(unit: .year, count: 1).window(containing: february15) == ThrottleWindow(start: 20_454 * day, end: 20_819 * day))
        // Leap years and the window after.
        #expect(CivilDate.daysSinceEpoch(year: 2024, month: 3, day: 1) - CivilDate.daysSinceEpoch(year: 2024, month: 2, day: 1) == 29)
        let spec = WindowSpec(unit: .month, count: 1)
        #expect(spec.window(after: spec.window(containing: february15)).start == 20_513 * day)
        #expect(WindowSpec(unit: .unspecified, count: 0).window(containing: 61_000) == ThrottleWindow(start: 60_000, end: 120_000))
        #expect(ThrottleWindow(start: 0, end: 60_000).secondsToEnd(from: 58_500) == 2)
    }

    @Test func addressesAndRanges() {
        #expect(IPAddress("10.0.0.1") != nil && IPAddress("10.0.0.256") == nil && IPAddress("10.0.1") == nil)
        #expect(IPAddress("::ffff:10.0.0.1") == IPAddress("10.0.0.1"))
        #expect(IPAddress("2001:db8::1") == IPAddress("2001:0db8:0:0:0:0:0:1"))
        #expect(IPAddress("fe80::1%eth0") == IPAddress("fe80::1"))
        #expect(IPAddress("1:2:3:4:5:6:7:8:9") == nil && IPAddress("1::2::3") == nil && IPAddress("12345::") == nil)
        #expect(ConditionMatcher.inRange("192.168.1.50", IpRange(startAddress: "192.168.1.0", endAddress: "192.168.1.255")))
        #expect(!ConditionMatcher.inRange("192.168.2.1", IpRange(startAddress: "192.168.1.0", endAddress: "192.168.1.255")))
        #expect(ConditionMatcher.inRange("2001:db8::ff", IpRange(startAddress: "2001:db8::", endAddress: "2001:db8::ffff")))
        #expect(!ConditionMatcher.inRange("garbage", IpRange(startAddress: "0.0.0.0", endAddress: "255.255.255.255")))
    }

    static func perMinute(_ count: UInt64) -> ThrottleLimit { ThrottleLimit(timeUnit: .minute, unitTime: 1, quota: .requestCount(count)) }

    static func conditionPolicy() -> AdvancedPolicy {
        func group(_ id: String, _ conditions: [ThrottleCondition]) -> ConditionGroup {
            ConditionGroup(id: id, conditions: conditions, limit: perMinute(5))
        }
        return AdvancedPolicy(name: "Conditional", applicableLevel: .api, defaultLimit: perMinute(100), conditionGroups: [
            group("ip", [ThrottleCondition(match: .ip("10.0.0.7"))]),
            group("range", [ThrottleCondition(match: .ipRange(IpRange(startAddress: "172.16.0.0", endAddress: "172.16.255.255")))]),
            group("header", [ThrottleCondition(match: .header(NamedValueCondition(name: "User-Agent", valuePattern: "^curl/")))]),
            group("query", [ThrottleCondition(match: .queryParameter(NamedValueCondition(name: "tier", valuePattern: "free")))]),
            group("claim", [ThrottleCondition(match: .jwtClaim(NamedValueCondition(name: "http://wso2.org/claims/role", valuePattern: "intern")))]),
            group("notlocal", [ThrottleCondition(invert: true, match: .ipRange(IpRange(startAddress: "10.0.0.0", endAddress: "10.255.255.255")))]),
            group("both", [ThrottleCondition(match: .header(NamedValueCondition(name: "X-A", valuePattern: "1"))),
                           ThrottleCondition(match: .queryParameter(NamedValueCondition(name: "b", valuePattern: "2")))]),
        ])
    }

    func keys(_ attributes: RequestAttributes, resourcePolicy: AdvancedPolicy? = nil) -> [String] {
        let throttler = LeaseThrottler(configuration: LeaseThrottlerConfiguration(gatewayID: "gw"), transport: UnusedTransport())
        let request = ThrottleRequest(apiContext: "/pets", apiVersion: "1", resource: .init(uriTemplate: "/pet", verb: "POST"), apiPolicy: Self.conditionPolicy(),
                                      resourcePolicy: resourcePolicy, attributes: attributes)
        return throttler.quotaChecks(request).map(\.key.description)
    }

    @Test func conditionGroupsOfEveryTypeIncludingInvertedAndCombined() {
        #expect(keys(RequestAttributes(clientIP: "10.0.0.1")) == ["api:/pets:1_default"])
        #expect(keys(RequestAttributes(clientIP: "10.0.0.7")) == ["api:/pets:1_condition_ip"])
        #expect(keys(RequestAttributes(clientIP: "172.16.3.4")) == ["api:/pets:1_condition_range", "api:/pets:1_condition_notlocal"])
        let headers: @Sendable (String) -> String? = { ["User-Agent": "curl/8.1", "X-A": "1"][$0] }
        #expect(keys(RequestAttributes(clientIP: "10.0.0.1", header: headers)) == ["api:/pets:1_condition_header"])
        #expect(keys(RequestAttributes(clientIP: "10.0.0.1", queryParameter: { $0 == "tier" ? "the-free-one" : nil })) == ["api:/pets:1_condition_query"])
        #expect(keys(RequestAttributes(clientIP: "10.0.0.1", jwtClaim: { $0 == "http://wso2.org/claims/role" ? "intern" : nil })) == ["api:/pets:1_condition_claim"])
        #expect(keys(RequestAttributes(clientIP: "10.0.0.1", header: headers, queryParameter: { $0 == "b" ? "2" : nil }))
                == ["api:/pets:1_condition_header", "api:/pets:1_condition_both"])
        let resource = AdvancedPolicy(name: "R", applicableLevel: .resource, defaultLimit: Self.perMinute(10))
        #expect(keys(RequestAttributes(clientIP: "10.0.0.1"), resourcePolicy: resource) == ["api:/pets:1_default", "res:/pets/1/pet:POST"])
    }

    static func block(_ type: BlockConditionType, _ value: String? = nil, range: (String, String)? = nil, invert: Bool = false,
                      tenant: String = "carbon.super", enabled: Bool = true) -> BlockCondition {
        var condition = BlockCondition(tenantDomain: tenant, conditionType: type, enabled: enabled, invert: invert)
        if let value { condition.target = .value(value) }
        if let range { condition.target = .ipRange(IpRange(startAddress: range.0, endAddress: range.1)) }
        return condition
    }

    @Test func blockConditionsOfEveryType() {
        let set = BlockConditionSet([
            Self.block(.apiContext, "/blocked"), Self.block(.application, "alice:App"), Self.block(.user, "Mallory@carbon.super"),
            Self.block(.user, "eve"), Self.block(.ip, "10.9.9.9"), Self.block(.ipRange, range: ("192.168.0.0", "192.168.255.255")),
            Self.block(.apiContext, "/disabled", enabled: false),
        ])
        let tenant = "carbon.super"
        #expect(set.blocks(context: "/blocked", versionedContext: "/blocked/1", tenant: tenant))
        #expect(set.blocks(context: "/x", versionedContext: "/blocked//", tenant: tenant), "contexts compare with their slashes normalised")
        #expect(!set.blocks(context: "/disabled", versionedContext: "/disabled/1", tenant: tenant))
        #expect(set.hasCallerConditions(tenant: tenant) && set.blocks(application: "alice:App", tenant: tenant))
        #expect(!set.blocks(application: "bob:App", tenant: tenant))
        #expect(set.blocks(user: "mallory@carbon.super", userTenant: tenant, tenant: tenant), "user names compare without case")
        #expect(set.blocks(user: "Eve", userTenant: tenant, tenant: tenant), "a name without a domain is in the caller's tenant")
        #expect(!set.blocks(user: "eve", userTenant: "acme.com", tenant: tenant))
        #expect(set.blocks(address: "10.9.9.9", tenant: tenant) && set.blocks(address: "::ffff:10.9.9.9", tenant: tenant))
        #expect(set.blocks(address: "192.168.4.4", tenant: tenant) && !set.blocks(address: "192.169.0.0", tenant: tenant))
        #expect(!set.blocks(address: "1.1.1.1", tenant: tenant))
    }

    @Test func blockRangesMergeAndInvert() {
        let set = BlockConditionSet([
            Self.block(.ipRange, range: ("10.0.0.0", "10.0.0.255")), Self.block(.ipRange, range: ("10.0.1.0", "10.0.1.9")),
            Self.block(.ipRange, range: ("10.0.0.128", "10.0.0.130")), Self.block(.ipRange, range: ("10.5.0.0", "10.5.0.0")),
            Self.block(.ipRange, range: ("2001:db8::", "2001:db8::ffff")), Self.block(.ip, "2001:db8:1::1"),
            Self.block(.ipRange, range: ("10.9.0.9", "10.9.0.1")),  // start after end: ignored, as the store refuses it
        ])
        for blocked in ["10.0.0.0", "10.0.0.200", "10.0.1.9", "10.5.0.0", "2001:db8::1", "2001:DB8::FFFF", "2001:db8:1:0:0:0:0:1"] {
            #expect(set.blocks(address: blocked, tenant: ""), "\(blocked)")
        }
        for open in ["9.255.255.255", "10.0.1.10", "10.4.255.255", "10.5.0.1", "2001:db8::1:0", "10.9.0.5", "not an address"] {
            #expect(!set.blocks(address: open, tenant: ""), "\(open)")
        }
        // Inverted: everything outside the office range (and the one office address) is blocked.
        let office = BlockConditionSet([Self.block(.ipRange, range: ("10.0.0.0", "10.0.0.255"), invert: true)])
        #expect(office.blocks(address: "8.8.8.8", tenant: "carbon.super") && !office.blocks(address: "10.0.0.9", tenant: "carbon.super"))
        #expect(office.blocks(address: "garbage", tenant: "carbon.super"), "an unreadable address is outside every range")
        let single = BlockConditionSet([Self.block(.ip, "192.0.2.1", invert: true)])
        #expect(!single.blocks(address: "192.0.2.1", tenant: "carbon.super") && single.blocks(address: "192.0.2.2", tenant: "carbon.super"))
    }

    @Test func blockConditionsApplyToTheirTenantOnly() {
        let set = BlockConditionSet([Self.block(.ip, "203.0.113.7", tenant: "acme.com"), Self.block(.apiContext, "/t/acme.com/menu", tenant: "acme.com"),
                                     Self.block(.application, "bob:App", tenant: "acme.com"), Self.block(.ipRange, range: ("0.0.0.0", "255.255.255.255"), invert: true, tenant: "ACME.com")])
        #expect(set.blocks(address: "203.0.113.7", tenant: "acme.com"))
        #expect(!set.blocks(address: "203.0.113.7", tenant: "carbon.super"), "another tenant's IP block")
        #expect(!set.blocks(address: "2001:db8::1", tenant: "carbon.super"), "another tenant's inverted range")
        #expect(set.blocks(address: "2001:db8::1", tenant: "acme.com"), "an IPv6 address is outside an inverted IPv4 range")
        #expect(set.blocks(context: "/t/acme.com/menu", versionedContext: "/t/acme.com/menu/1", tenant: "acme.com"))
        #expect(!set.hasCallerConditions(tenant: "carbon.super") && !set.blocks(application: "bob:App", tenant: "carbon.super"))
        #expect(set.blocks(application: "bob:App", tenant: "acme.com"))
        #expect(!BlockConditionSet().hasAddressConditions && BlockConditionSet().isEmpty)
    }
}

/// The gateway entry point against a ledger, answered at once.
struct ImmediateCluster {
    var ledger = LeaseLedger()
    let throttler = LeaseThrottler(configuration: LeaseThrottlerConfiguration(gatewayID: "gw-1", initialLease: 1), transport: UnusedTransport())

    mutating func admit(_ request: ThrottleRequest, now: Int64) -> ThrottleOutcome {
        for _ in 0..<50 {
            let outcome = throttler.admit(request, now: now)
            guard case .wait = outcome else { return outcome }
            let operations = throttler.takeOperations(now: now)
            let replies = operations.map { ledger.apply($0, gateway: "gw-1", now: now).grant }
            throttler.receive(operations, replies: replies, now: now)
        }
        Issue.record("still waiting after 50 exchanges")
        return .wait(LeaseWait(key: "", windowStart: 0, kind: .subscription))
    }
}

@Suite struct EvaluationOrderTests {
    static let now: Int64 = 1_800_000_030_000  // 30 s into a minute
    static func limit(_ count: UInt64, _ unit: TimeUnit = .minute) -> ThrottleLimit { ThrottleLimit(timeUnit: unit, unitTime: 1, quota: .requestCount(count)) }

    static func request(api: UInt64? = nil, resource: UInt64? = nil, subscription: UInt64? = nil, stopOnQuota: Bool = true, spike: UInt32 = 0,
                        application: UInt64? = nil, custom: UInt64? = nil, hard: UInt32? = nil, bandwidth: UInt64? = nil, bytes: UInt64 = 0) -> ThrottleRequest {
        var validation = KeyValidationInfo(authorized: true, subscriber: "alice", applicationId: "app-1", applicationName: "App", applicationPolicy: "10PerMin",
                                           subscriptionPolicy: "Bronze", spikeArrestLimit: spike, spikeArrestUnit: .minute, stopOnQuotaReach: stopOnQuota,
                                           endUserName: "alice@carbon.super")
        validation.subscriptionLimit = subscription.map { limit($0) } ?? bandwidth.map { ThrottleLimit(timeUnit: .minute, unitTime: 1, quota: .bandwidthBytes($0)) }
        validation.applicationLimit = application.map { limit($0) }
        return ThrottleRequest(apiContext: "/pets", apiVersion: "1", resource: .init(uriTemplate: "/pet", verb: "GET"),
                               apiPolicy: api.map { AdvancedPolicy(name: "A", applicableLevel: .api, defaultLimit: limit($0)) },
                               resourcePolicy: resource.map { AdvancedPolicy(name: "R", applicableLevel: .resource, defaultLimit: limit($0)) },
                               validation: validation,
                               customPolicies: custom.map { [GlobalPolicy(name: "PerUser", keyTemplate: "$userId:$apiContext", limit: limit($0))] } ?? [],
                               hardLimitPerSecond: hard, attributes: RequestAttributes(clientIP: "10.0.0.1"), payloadBytes: bytes)
    }

    func refusal(_ outcome: ThrottleOutcome) -> ThrottleRefusal? {
        if case .refuse(let refusal) = outcome { return refusal }
        return nil
    }

    func isAdmit(_ outcome: ThrottleOutcome) -> Bool {
        if case .admit = outcome { return true }
        return false
    }

    @Test(arguments: [
        ("api", 900_800, 429), ("resource", 900_802, 429), ("subscription", 900_804, 429), ("spike", 900_807, 429),
        ("application", 900_803, 429), ("custom", 900_806, 429), ("hard", 900_801, 503),
    ])
    func eachKindRefusesWithItsCodeOnceItsQuotaIsSpent(kind: String, code: Int, status: Int) {
        var cluster = ImmediateCluster()
        let request: ThrottleRequest = switch kind {
        case "api": Self.request(api: 2)
        case "resource": Self.request(resource: 2)
        case "subscription": Self.request(subscription: 2)
        case "spike": Self.request(spike: 2)
        case "application": Self.request(application: 2)
        case "custom": Self.request(custom: 2)
        default: Self.request(hard: 2)
        }
        #expect(isAdmit(cluster.admit(request, now: Self.now)))
        #expect(isAdmit(cluster.admit(request, now: Self.now)))
        let refused = refusal(cluster.admit(request, now: Self.now))
        #expect(refused?.errorCode == code && refused?.httpStatus == status, "\(String(describing: refused))")
        let windowSeconds = kind == "hard" ? 1 : 30
        #expect(refused?.retryAfterSeconds == windowSeconds)
        #expect(refused?.rateLimit == RateLimitValues(limit: 2, remaining: 0, resetSeconds: windowSeconds))
        // The next window admits again.
        #expect(isAdmit(cluster.admit(request, now: Self.now + 60_000)))
    }

    @Test func theFirstQuotaInWSO2sOrderAnswersAndARefusedRequestCostsNoQuota() {
        var cluster = ImmediateCluster()
        // Application quota 1, subscription 3, API 5: the application refuses the second call.
        let request = Self.request(api: 5, subscription: 3, application: 1)
        #expect(isAdmit(cluster.admit(request, now: Self.now)))
        #expect(refusal(cluster.admit(request, now: Self.now))?.errorCode == 900_803)
        #expect(refusal(cluster.admit(request, now: Self.now))?.errorCode == 900_803)
        // The refused calls took nothing from the API and subscription quotas:
        // another user of the same application (own application quota) gets two more.
        var other = request
        other.validation?.endUserName = "bob@carbon.super"
        #expect(isAdmit(cluster.admit(other, now: Self.now)))
        var third = request
        third.validation?.endUserName = "carol@carbon.super"
        #expect(isAdmit(cluster.admit(third, now: Self.now)))
        var fourth = request
        fourth.validation?.endUserName = "dave@carbon.super"
        #expect(refusal(cluster.admit(fourth, now: Self.now))?.errorCode == 900_804, "subscription spent (3) before API (5)")
        let stats = cluster.throttler.statistics
        #expect(stats.policies["sub:Bronze"]?.admitted == 3 && stats.policies["sub:Bronze"]?.refused == 1)
        #expect(stats.policies["app:10PerMin"]?.refused == 2)
        #expect(stats.policies["api:A"]?.admitted == 3)
        // When both API and subscription are spent, the API answers first.
        var both = ImmediateCluster()
        let tight = Self.request(api: 1, subscription: 1)
        #expect(isAdmit(both.admit(tight, now: Self.now)))
        #expect(refusal(both.admit(tight, now: Self.now))?.errorCode == 900_800)
    }

    @Test func stopOnQuotaOffAdmitsAndMarks() {
        var cluster = ImmediateCluster()
        let lenient = Self.request(subscription: 1, stopOnQuota: false)
        #expect(cluster.admit(lenient, now: Self.now) == .admit(rateLimit: RateLimitValues(limit: 1, remaining: 0, resetSeconds: 30), marked: []))
        #expect(cluster.admit(lenient, now: Self.now) == .admit(rateLimit: RateLimitValues(limit: 1, remaining: 0, resetSeconds: 30), marked: ["Bronze"]))
        #expect(cluster.throttler.statistics.policies["sub:Bronze"]?.marked == 1)
    }

    @Test func bandwidthQuotasCountPayloadBytes() {
        var cluster = ImmediateCluster()
        #expect(isAdmit(cluster.admit(Self.request(bandwidth: 1000, bytes: 600), now: Self.now)))
        #expect(isAdmit(cluster.admit(Self.request(bandwidth: 1000, bytes: 400), now: Self.now)))
        #expect(refusal(cluster.admit(Self.request(bandwidth: 1000, bytes: 1), now: Self.now))?.errorCode == 900_804)
    }

    @Test func unlimitedTiersAreNotLeased() {
        var cluster = ImmediateCluster()
        #expect(isAdmit(cluster.admit(Self.request(subscription: 2_147_483_647), now: Self.now)))
        #expect(cluster.ledger.counters.isEmpty)
    }
}
