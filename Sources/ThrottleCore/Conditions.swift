import Synchronization
public import TollgateProto

/// An IPv4 or IPv6 address as one 128-bit number (IPv4 mapped into
/// `::ffff:0:0/96`), so ranges compare with `<`.
public struct IPAddress: Hashable, Sendable, Comparable {
    public let high: UInt64
    public let low: UInt64

    init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    public init?(_ text: String) {
        if !text.contains(":") {
            guard let v4 = Self.parseIPv4(Substring(text)) else { return nil }
            high = 0
            low = 0xffff_0000_0000 | UInt64(v4)
            return
        }
        var text = Substring(text)
        // A zone (`fe80::1%eth0`) or brackets do not change the address.
        if text.hasPrefix("["), text.hasSuffix("]") { text = text.dropFirst().dropLast() }
        if let percent = text.firstIndex(of: "%") { text = text[..<percent] }
        guard let groups = Self.parseIPv6(text) else { return nil }
        high = groups[0..<4].reduce(0) { $0 << 16 | UInt64($1) }
        low = groups[4..<8].reduce(0) { $0 << 16 | UInt64($1) }
    }

    public static func < (a: IPAddress, b: IPAddress) -> Bool { (a.high, a.low) < (b.high, b.low) }

    static func parseIPv4(_ text: Substring) -> UInt32? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard (1...3).contains(part.count), part.allSatisfy(\.isASCII), let octet = UInt32(part), octet <= 255 else { return nil }
            value = value << 8 | octet
        }
        return value
    }

    static func parseIPv6(_ text: Substring) -> [UInt16]? {
        let halves = text.components(separatedBy: "::")
        guard halves.count <= 2 else { return nil }
        func groups(_ part: Substring, allowIPv4Tail: Bool) -> [UInt16]? {
            guard !part.isEmpty else { return [] }
            var out: [UInt16] = []
            let pieces = part.split(separator: ":", omittingEmptySubsequences: false)
            for (index, piece) in pieces.enumerated() {
                if allowIPv4Tail, index == pieces.count - 1, piece.contains(".") {
                    guard let v4 = parseIPv4(piece) else { return nil }
                    out += [UInt16(v4 >> 16), UInt16(v4 & 0xffff)]
                } else {
                    guard (1...4).contains(piece.count), let group = UInt16(piece, radix: 16) else { return nil }
                    out.append(group)
                }
            }
            return out
        }
        if halves.count == 1 {
            guard let all = groups(Substring(halves[0]), allowIPv4Tail: true), all.count == 8 else { return nil }
            return all
        }
        guard let head = groups(Substring(halves[0]), allowIPv4Tail: false),
              let tail = groups(Substring(halves[1]), allowIPv4Tail: true), head.count + tail.count <= 7 else { return nil }
        return head + Array(repeating: 0, count: 8 - head.count - tail.count) + tail
    }
}

extension Substring {
    fileprivate func components(separatedBy separator: String) -> [Substring] {
        var parts: [Substring] = []
        var rest = self[...]
        while let range = rest.firstRange(of: separator) {
            parts.append(rest[..<range.lowerBound])
            rest = rest[range.upperBound...]
        }
        parts.append(rest)
        return parts
    }
}

/// What condition groups and block conditions look at in a request. The
/// lookups are the gateway's (headers case-insensitive, claims of the
/// validated JWT); nil means absent.
public struct RequestAttributes: Sendable {
    public var clientIP: String
    public var header: @Sendable (String) -> String?
    public var queryParameter: @Sendable (String) -> String?
    public var jwtClaim: @Sendable (String) -> String?

    public init(clientIP: String, header: @escaping @Sendable (String) -> String? = { _ in nil },
                queryParameter: @escaping @Sendable (String) -> String? = { _ in nil }, jwtClaim: @escaping @Sendable (String) -> String? = { _ in nil }) {
        self.clientIP = clientIP
        self.header = header
        self.queryParameter = queryParameter
        self.jwtClaim = jwtClaim
    }
}

/// A value pattern compiled once. `@unchecked Sendable`: the regex is never
/// mutated after init, and matching only reads its program, which the
/// string-processing library initialises once, atomically.
final class CompiledPattern: @unchecked Sendable {
    let regex: Regex<AnyRegexOutput>?

    init(_ pattern: String) {
        regex = try? Regex(pattern)
    }

    /// A match anywhere in the value counts; a pattern that does not compile
    /// matches its own text literally, so a policy never silently widens.
    func matches(_ value: String, literal: String) -> Bool {
        guard let regex else { return value.contains(literal) }
        return (try? regex.firstMatch(in: value)) != nil
    }
}

/// Compiled value patterns, shared by every request: compiling a regular
/// expression per request would cost more than the rest of throttling.
final class PatternCache: Sendable {
    private let patterns = Mutex<[String: CompiledPattern]>([:])

    func pattern(_ text: String) -> CompiledPattern {
        if let known = patterns.withLock({ $0[text] }) { return known }
        let compiled = CompiledPattern(text)
        return patterns.withLock { table in
            if table.count > 10_000 { table.removeAll() }  // policies churned: start over rather than grow
            if let known = table[text] { return known }
            table[text] = compiled
            return compiled
        }
    }
}

/// Whether a request satisfies conditions and condition groups.
struct ConditionMatcher: Sendable {
    let patterns: PatternCache

    /// One condition, with its inversion applied.
    func holds(_ condition: ThrottleCondition, _ request: RequestAttributes) -> Bool {
        let result: Bool
        switch condition.match {
        case .ip(let address)?:
            result = IPAddress(address).map { $0 == IPAddress(request.clientIP) } ?? false
        case .ipRange(let range)?:
            result = Self.inRange(request.clientIP, range)
        case .header(let named)?:
            result = matches(named, request.header(named.name))
        case .queryParameter(let named)?:
            result = matches(named, request.queryParameter(named.name))
        case .jwtClaim(let named)?:
            result = matches(named, request.jwtClaim(named.name))
        case nil:
            result = false
        }
        return condition.invert ? !result : result
    }

    private func matches(_ condition: NamedValueCondition, _ value: String?) -> Bool {
        guard let value else { return false }
        return patterns.pattern(condition.valuePattern).matches(value, literal: condition.valuePattern)
    }

    static func inRange(_ address: String, _ range: IpRange) -> Bool {
        guard let client = IPAddress(address), let start = IPAddress(range.startAddress), let end = IPAddress(range.endAddress) else { return false }
        return start <= client && client <= end
    }

    /// A group applies when every one of its conditions holds; a group
    /// without conditions never applies (the store refuses those).
    func applies(_ group: ConditionGroup, _ request: RequestAttributes) -> Bool {
        !group.conditions.isEmpty && group.conditions.allSatisfy { holds($0, request) }
    }
}

/// The enabled block conditions of every tenant, from the deployment feed,
/// indexed for the request path. A condition applies only to calls to its
/// own tenant's APIs (WSO2 scopes block conditions by tenant): a tenant's IP
/// block does not close another tenant's APIs. Addresses are parsed once,
/// here; plain addresses are a set lookup, plain ranges a binary search over
/// merged intervals, inverted ones (rare) a short scan. A gateway with no
/// condition pays one emptiness check per step.
public struct BlockConditionSet: Sendable {
    /// One tenant's conditions.
    struct Tenant: Sendable {
        /// Normalised contexts (`/t/acme.com/pizza` or `/pizza`, one slash between segments).
        var contexts: Set<String> = []
        /// `owner:application-name`.
        var applications: Set<String> = []
        /// `name@tenant-domain`, lower-cased.
        var users: Set<String> = []
        var addresses: Set<IPAddress> = []
        /// Disjoint, sorted, inclusive.
        var ranges: [(start: IPAddress, end: IPAddress)] = []
        /// Inverted conditions: each blocks every address outside its range
        /// (an inverted IP is a range of one address).
        var inverted: [(start: IPAddress, end: IPAddress)] = []

        var hasAddressConditions: Bool { !addresses.isEmpty || !ranges.isEmpty || !inverted.isEmpty }
        var hasCallerConditions: Bool { !applications.isEmpty || !users.isEmpty }
    }

    /// The tenant block conditions without one belong to.
    public static let superTenant = "carbon.super"

    private let tenants: [String: Tenant]
    /// Whether any tenant has an address condition (checked before parsing the client's address).
    public let hasAddressConditions: Bool

    public init(_ conditions: some Sequence<BlockCondition> = [BlockCondition]()) {
        var tenants: [String: Tenant] = [:]
        var ranges: [String: [(IPAddress, IPAddress)]] = [:]
        for condition in conditions where condition.enabled {
            let domain = Self.tenantKey(condition.tenantDomain)
            var tenant = tenants[domain] ?? Tenant()
            switch (condition.conditionType, condition.target) {
            case (.apiContext, .value(let value)?): tenant.contexts.insert(Self.normalize(context: value))
            case (.application, .value(let value)?): tenant.applications.insert(value)
            case (.user, .value(let value)?): tenant.users.insert(Self.normalize(user: value, tenant: domain))
            case (.ip, .value(let value)?):
                guard let address = IPAddress(value) else { continue }
                if condition.invert { tenant.inverted.append((address, address)) } else { tenant.addresses.insert(address) }
            case (.ipRange, .ipRange(let range)?):
                guard let start = IPAddress(range.startAddress), let end = IPAddress(range.endAddress), start <= end else { continue }
                if condition.invert { tenant.inverted.append((start, end)) } else { ranges[domain, default: []].append((start, end)) }
            default: continue
            }
            tenants[domain] = tenant
        }
        for (domain, list) in ranges { tenants[domain, default: Tenant()].ranges = Self.merge(list) }
        self.tenants = tenants
        hasAddressConditions = tenants.values.contains { $0.hasAddressConditions }
    }

    public var isEmpty: Bool { tenants.isEmpty }

    static func tenantKey(_ domain: String) -> String { domain.isEmpty ? superTenant : domain.lowercased() }

    static func normalize(context: String) -> String {
        "/" + context.split(separator: "/").joined(separator: "/")
    }

    /// `name@tenant` lower-cased; a name without a domain is in `tenant`.
    static func normalize(user: String, tenant: String) -> String {
        (user.contains("@") ? user : user + "@" + tenant).lowercased()
    }

    /// Sorted, overlapping and touching ranges joined.
    static func merge(_ ranges: [(IPAddress, IPAddress)]) -> [(start: IPAddress, end: IPAddress)] {
        var merged: [(start: IPAddress, end: IPAddress)] = []
        for (start, end) in ranges.sorted(by: { $0.0 < $1.0 }) {
            if let last = merged.last, start <= last.end.successor {
                if last.end < end { merged[merged.count - 1].end = end }
            } else {
                merged.append((start, end))
            }
        }
        return merged
    }

    /// Whether a client address is blocked for calls to `tenant`'s APIs.
    /// An inverted condition blocks every address outside its address or range.
    public func blocks(address text: String, tenant domain: String) -> Bool {
        guard hasAddressConditions, let tenant = tenants[Self.tenantKey(domain)], tenant.hasAddressConditions else { return false }
        guard let address = IPAddress(text) else { return !tenant.inverted.isEmpty }  // unparseable: outside every range
        if tenant.addresses.contains(address) { return true }
        if !tenant.ranges.isEmpty {
            // The last range starting at or before the address.
            var low = 0, high = tenant.ranges.count
            while low < high {
                let middle = (low + high) / 2
                if tenant.ranges[middle].start <= address { low = middle + 1 } else { high = middle }
            }
            if low > 0, address <= tenant.ranges[low - 1].end { return true }
        }
        for range in tenant.inverted where address < range.start || range.end < address { return true }
        return false
    }

    /// Whether an API of `tenant` at a context (unversioned or versioned) is blocked.
    public func blocks(context: String, versionedContext: String, tenant domain: String) -> Bool {
        guard let tenant = tenants[Self.tenantKey(domain)], !tenant.contexts.isEmpty else { return false }
        return tenant.contexts.contains(Self.normalize(context: context)) || tenant.contexts.contains(Self.normalize(context: versionedContext))
    }

    /// Whether `tenant` blocks any application or user (checked before building their names).
    public func hasCallerConditions(tenant domain: String) -> Bool {
        tenants[Self.tenantKey(domain)]?.hasCallerConditions ?? false
    }

    /// Whether an application (`owner:name`) is blocked for calls to `tenant`'s APIs.
    public func blocks(application: String, tenant domain: String) -> Bool {
        tenants[Self.tenantKey(domain)]?.applications.contains(application) ?? false
    }

    /// Whether a user (`name@tenant-domain`, or `name` of `userTenant`) is
    /// blocked for calls to `tenant`'s APIs.
    public func blocks(user: String, userTenant: String, tenant domain: String) -> Bool {
        guard let tenant = tenants[Self.tenantKey(domain)], !tenant.users.isEmpty else { return false }
        return tenant.users.contains(Self.normalize(user: user, tenant: Self.tenantKey(userTenant)))
    }
}

extension IPAddress {
    /// The next address (saturating at the last one), for joining touching ranges.
    var successor: IPAddress {
        if low != .max { return IPAddress(high: high, low: low + 1) }
        return high == .max ? self : IPAddress(high: high + 1, low: 0)
    }
}
