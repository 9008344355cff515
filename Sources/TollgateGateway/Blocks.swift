import Foundation
public import TollgateProto

/// Enabled block conditions, indexed for the request path: a gateway with
/// none pays one emptiness check per kind.
public struct BlockIndex: Sendable {
    /// Tenant and context (`/t/acme.com/pizza` or `/pizza`) as the condition names it.
    private var contexts: Set<String> = []
    private var applications: Set<String> = []
    private var users: Set<String> = []
    private var addresses: [(address: IPAddress, invert: Bool)] = []
    private var ranges: [(start: IPAddress, end: IPAddress, invert: Bool)] = []

    public init(_ conditions: some Sequence<BlockCondition>) {
        for condition in conditions where condition.enabled {
            switch (condition.conditionType, condition.target) {
            case (.apiContext, .value(let value)?): contexts.insert(Self.normalize(value))
            case (.application, .value(let value)?): applications.insert(value)
            case (.user, .value(let value)?): users.insert(value)
            case (.ip, .value(let value)?):
                if let address = IPAddress(value) { addresses.append((address, condition.invert)) }
            case (.ipRange, .ipRange(let range)?):
                if let start = IPAddress(range.startAddress), let end = IPAddress(range.endAddress) { ranges.append((start, end, condition.invert)) }
            default: break
            }
        }
    }

    static func normalize(_ context: String) -> String {
        "/" + context.split(separator: "/").joined(separator: "/")
    }

    public var hasAddressConditions: Bool { !addresses.isEmpty || !ranges.isEmpty }
    /// Whether any application or user is blocked (checked before building their names).
    public var hasCallerConditions: Bool { !applications.isEmpty || !users.isEmpty }

    /// Whether a client address is blocked. An inverted condition blocks
    /// every address but its own (range).
    public func blocks(address text: String) -> Bool {
        guard hasAddressConditions else { return false }
        guard let address = IPAddress(text) else { return false }
        for entry in addresses where (entry.address == address) != entry.invert { return true }
        for entry in ranges {
            let inside = address.family == entry.start.family && entry.start <= address && address <= entry.end
            if inside != entry.invert { return true }
        }
        return false
    }

    /// Whether the API at a context (versioned or not) is blocked.
    public func blocks(context: String, versionedContext: String) -> Bool {
        guard !contexts.isEmpty else { return false }
        return contexts.contains(Self.normalize(context)) || contexts.contains(Self.normalize(versionedContext))
    }

    /// Whether an application (`owner:name`) is blocked.
    public func blocks(application: String) -> Bool { !applications.isEmpty && applications.contains(application) }

    /// Whether a user (`name@tenant`) is blocked.
    public func blocks(user: String) -> Bool { !users.isEmpty && users.contains(user) }
}

/// An IPv4 or IPv6 address as bytes, ordered within a family.
public struct IPAddress: Sendable, Hashable, Comparable {
    public let family: Int
    let bytes: [UInt8]

    public init?(_ text: String) {
        if let v4 = Self.parseV4(Substring(text)) {
            family = 4
            bytes = v4
        } else if let v6 = Self.parseV6(text) {
            // An IPv4-mapped IPv6 address is that IPv4 address.
            if v6[0..<10].allSatisfy({ $0 == 0 }) && v6[10] == 0xff && v6[11] == 0xff {
                family = 4
                bytes = Array(v6[12..<16])
            } else {
                family = 6
                bytes = v6
            }
        } else {
            return nil
        }
    }

    public static func < (lhs: IPAddress, rhs: IPAddress) -> Bool {
        lhs.family == rhs.family ? lhs.bytes.lexicographicallyPrecedes(rhs.bytes) : lhs.family < rhs.family
    }

    static func parseV4(_ text: Substring) -> [UInt8]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var bytes: [UInt8] = []
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy(\.isASCII), let value = UInt8(part) else { return nil }
            bytes.append(value)
        }
        return bytes
    }

    static func parseV6(_ text: String) -> [UInt8]? {
        var text = Substring(text)
        if let zone = text.firstIndex(of: "%") { text = text[..<zone] }
        guard text.contains(":") else { return nil }
        let halves = text.components(separatedBy: "::")
        guard halves.count <= 2 else { return nil }
        func groups(_ part: String) -> [UInt8]? {
            guard !part.isEmpty else { return [] }
            var bytes: [UInt8] = []
            let pieces = part.split(separator: ":", omittingEmptySubsequences: false)
            for (index, piece) in pieces.enumerated() {
                if index == pieces.count - 1, piece.contains("."), let v4 = parseV4(piece) {
                    bytes += v4
                    continue
                }
                guard !piece.isEmpty, piece.count <= 4, let value = UInt16(piece, radix: 16) else { return nil }
                bytes += [UInt8(value >> 8), UInt8(value & 0xff)]
            }
            return bytes
        }
        guard let head = groups(halves[0]) else { return nil }
        if halves.count == 1 { return head.count == 16 ? head : nil }
        guard let tail = groups(halves[1]), head.count + tail.count < 16 else { return nil }
        return head + [UInt8](repeating: 0, count: 16 - head.count - tail.count) + tail
    }
}

