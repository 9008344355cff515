import ThrottleCore
public import TollgateProto

/// Enabled block conditions, indexed for the request path (addresses as
/// ThrottleCore parses them, IPv4 mapped into IPv6): a gateway with
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
            let inside = entry.start <= address && address <= entry.end
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
