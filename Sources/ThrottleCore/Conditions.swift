import Synchronization
public import TollgateProto

/// An IPv4 or IPv6 address as one 128-bit number (IPv4 mapped into
/// `::ffff:0:0/96`), so ranges compare with `<`.
public struct IPAddress: Hashable, Sendable, Comparable {
    public let high: UInt64
    public let low: UInt64

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

/// The enabled block conditions of every tenant, from the deployment feed:
/// checked first, refusing with 900805.
public struct BlockConditionSet: Sendable {
    private let contexts: Set<String>
    private let applications: Set<String>
    private let users: Set<String>
    private let addresses: [(address: IPAddress, invert: Bool)]
    private let ranges: [(start: IPAddress, end: IPAddress, invert: Bool)]

    public init(_ conditions: [BlockCondition] = []) {
        var contexts = Set<String>(), applications = Set<String>(), users = Set<String>()
        var addresses: [(IPAddress, Bool)] = [], ranges: [(IPAddress, IPAddress, Bool)] = []
        for condition in conditions where condition.enabled {
            switch (condition.conditionType, condition.target) {
            case (.apiContext, .value(let value)?): contexts.insert(value)
            case (.application, .value(let value)?): applications.insert(value)
            case (.user, .value(let value)?): users.insert(value.lowercased())
            case (.ip, .value(let value)?): if let address = IPAddress(value) { addresses.append((address, condition.invert)) }
            case (.ipRange, .ipRange(let range)?):
                if let start = IPAddress(range.startAddress), let end = IPAddress(range.endAddress) { ranges.append((start, end, condition.invert)) }
            default: break
            }
        }
        self.contexts = contexts
        self.applications = applications
        self.users = users
        self.addresses = addresses
        self.ranges = ranges
    }

    public var isEmpty: Bool { contexts.isEmpty && applications.isEmpty && users.isEmpty && addresses.isEmpty && ranges.isEmpty }

    /// Whether a call is blocked. `application` is `owner:application-name`,
    /// `user` is `username@tenant-domain`.
    public func blocks(apiContext: String, application: String?, user: String?, clientIP: String) -> Bool {
        if contexts.contains(apiContext) { return true }
        if let application, applications.contains(application) { return true }
        if let user, users.contains(user.lowercased()) { return true }
        guard !addresses.isEmpty || !ranges.isEmpty else { return false }
        let client = IPAddress(clientIP)
        for rule in addresses where (client == rule.address) != rule.invert { return true }
        for rule in ranges {
            let inside = client.map { rule.start <= $0 && $0 <= rule.end } ?? false
            if inside != rule.invert { return true }
        }
        return false
    }
}
