public import TollgateProto
import Synchronization

/// One resource of a deployed API, compiled for matching.
public struct CompiledResource: Sendable {
    public let resource: ResolvedResource
    let segments: [TemplateSegment]
    /// `/*` or `/x/*`: matches the rest of the path, any depth.
    let trailingWildcard: Bool

    enum TemplateSegment: Sendable, Equatable {
        case literal(String)
        /// `{id}`: one whole segment.
        case variable
    }

    init(_ resource: ResolvedResource) {
        self.resource = resource
        var template = resource.uriTemplate
        if let query = template.firstIndex(of: "?") { template = String(template[..<query]) }
        var parts = template.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        var wildcard = false
        if parts.last == "*" {
            parts.removeLast()
            wildcard = true
        }
        segments = parts.map { $0.hasPrefix("{") && $0.hasSuffix("}") ? .variable : .literal($0) }
        trailingWildcard = wildcard
    }

    /// How specific a template is: literal segments outrank variables,
    /// which outrank a wildcard; more segments outrank fewer.
    var specificity: (Int, Int, Int) {
        let literals = segments.reduce(0) { if case .literal = $1 { $0 + 1 } else { $0 } }
        return (trailingWildcard ? 0 : 1, segments.count, literals)
    }

    func matches(_ path: ArraySlice<Substring>) -> Bool {
        if trailingWildcard {
            guard path.count >= segments.count else { return false }
        } else {
            guard path.count == segments.count else { return false }
        }
        var index = path.startIndex
        for segment in segments {
            if case .literal(let literal) = segment, path[index] != literal { return false }
            index += 1
        }
        return true
    }
}

/// An API as the gateway serves it: its resources compiled, its endpoints
/// and policies at hand.
public final class RoutedApi: Sendable {
    public let deployed: DeployedApi
    public let resources: [CompiledResource]
    /// Advanced policies by name, as the deployment carried them.
    public let advancedPolicies: [String: AdvancedPolicy]

    public let api: Api
    /// The versioned prefix as routes key it: `/a/b`, no trailing slash.
    let normalizedContext: String
    /// The default-version prefix normalized the same way, or nil.
    let normalizedDefaultContext: String?
    /// `context/version`, the label of its metrics.
    let metricsName: String
    /// Endpoints by key type; timeouts of 0 mean the gateway's defaults.
    let production: EndpointGroup?
    let sandbox: EndpointGroup?
    /// Its protobuf encoding, made by the first save of the deployment state
    /// that holds it and kept for later ones: a save after one change then
    /// encodes one API, not every API loaded.
    private let encoded = Mutex<[UInt8]?>(nil)

    /// The deployed API's protobuf bytes, encoded once.
    func serializedBytes() throws -> [UInt8] {
        if let bytes = encoded.withLock({ $0 }) { return bytes }
        let bytes: [UInt8] = try deployed.serializedBytes()
        encoded.withLock { $0 = bytes }
        return bytes
    }

    init(_ deployed: DeployedApi) {
        self.deployed = deployed
        api = deployed.api ?? Api()
        normalizedContext = Self.normalize(deployed.gatewayContext)
        normalizedDefaultContext = deployed.defaultVersionContext.isEmpty ? nil : Self.normalize(deployed.defaultVersionContext)
        // Most specific first, so the first match wins.
        resources = deployed.resources.map(CompiledResource.init).sorted { $0.specificity > $1.specificity }
        metricsName = api.context + "/" + api.version
        let unset = EndpointDefaults(connectTimeoutMs: 0, readTimeoutMs: 0)
        production = EndpointGroup(api.productionEndpoints, defaults: unset)
        sandbox = EndpointGroup(api.sandboxEndpoints, defaults: unset)
        advancedPolicies = Dictionary(deployed.advancedPolicies.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
    }

    /// The prefixes the API is reached at, normalized: its versioned
    /// context, then its default-version alias if it has one.
    var routePrefixes: [Substring] {
        guard let alias = normalizedDefaultContext, alias != normalizedContext else { return [Substring(normalizedContext)] }
        return [Substring(normalizedContext), Substring(alias)]
    }

    /// `/a/b`: one leading slash, none trailing, no empty segments.
    static func normalize(_ prefix: String) -> String {
        "/" + prefix.split(separator: "/").joined(separator: "/")
    }

    public enum ResourceMatch: Sendable {
        case matched(CompiledResource)
        /// The path matches templates, none with this verb.
        case methodNotAllowed(allowed: [HttpVerb])
        case noResource
    }

    /// The resource for a path below the API's context and a verb.
    public func resource(for path: Substring, verb: HttpVerb) -> ResourceMatch {
        // Split as UTF-8 bytes ("/" is one byte): splitting characters costs several times more.
        let segments = ArraySlice(path.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true).map { Substring($0) })
        var allowed: [HttpVerb] = []
        var getForHead: CompiledResource?
        for resource in resources where resource.matches(segments) {
            if resource.resource.verb == verb { return .matched(resource) }
            // HEAD is GET without the body, unless the API declares HEAD itself.
            if verb == .head, resource.resource.verb == .get, getForHead == nil { getForHead = resource }
            if !allowed.contains(resource.resource.verb) { allowed.append(resource.resource.verb) }
        }
        if let getForHead { return .matched(getForHead) }
        return allowed.isEmpty ? .noResource : .methodNotAllowed(allowed: allowed)
    }
}

/// Every deployed API by the path prefix it is reached at: its versioned
/// context, and for a default version also the context without the version.
/// Never changed in place: a deployment change makes a new table beside the
/// old one, which keeps serving until the new one is swapped in.
///
/// The prefixes are spread over ``shardCount`` immutable shards by a hash of
/// the prefix, and a change copies only the shards it touches: publishing
/// one API on a gateway with thousands costs a copy of a few dozen entries,
/// not a rebuild of every API's. Two APIs claiming one prefix are resolved
/// the same way however the table was reached: a versioned context outranks
/// another API's default-version alias, then the smaller API id wins.
public struct RoutingTable: Sendable {
    static let shardCount = 64

    /// The APIs claiming one prefix: the one routed to, and the others, kept
    /// so that removing the winner hands the prefix to the next.
    struct Slot: Sendable {
        var winner: RoutedApi
        var others: [RoutedApi]
    }

    final class Shard: Sendable {
        let slots: [Substring: Slot]
        init(_ slots: [Substring: Slot]) { self.slots = slots }
        static let empty = Shard([:])
    }

    private var shards: [Shard]
    /// Prefixes by depth in segments (index), so a lookup tries no more candidates than the deepest.
    private var depthCounts: [Int] = []
    /// Longest prefix, in segments.
    private var maxDepth = 0
    public private(set) var count = 0

    public init(apis: some Sequence<RoutedApi>) {
        shards = Array(repeating: Shard.empty, count: Self.shardCount)
        var working = [[Substring: Slot]](repeating: [:], count: Self.shardCount)
        for api in apis {
            for prefix in api.routePrefixes { claim(prefix, by: api, in: &working[Self.shard(of: prefix)]) }
        }
        shards = working.map(Shard.init)
    }

    /// This table with `removed` APIs' prefixes given up and `added` APIs'
    /// claimed (an API changed is removed in its old form and added in its
    /// new). Shards no prefix of either falls in are shared with this table.
    public func applying(removing removed: some Sequence<RoutedApi>, adding added: some Sequence<RoutedApi>) -> RoutingTable {
        var table = self
        var touched: [Int: [Substring: Slot]] = [:]
        for api in removed {
            for prefix in api.routePrefixes {
                let index = Self.shard(of: prefix)
                var slots = touched.removeValue(forKey: index) ?? shards[index].slots
                table.release(prefix, by: api, in: &slots)
                touched[index] = slots
            }
        }
        for api in added {
            for prefix in api.routePrefixes {
                let index = Self.shard(of: prefix)
                var slots = touched.removeValue(forKey: index) ?? shards[index].slots
                table.claim(prefix, by: api, in: &slots)
                touched[index] = slots
            }
        }
        for (index, slots) in touched { table.shards[index] = Shard(slots) }
        return table
    }

    private mutating func claim(_ prefix: Substring, by api: RoutedApi, in slots: inout [Substring: Slot]) {
        guard var slot = slots[prefix] else {
            slots[prefix] = Slot(winner: api, others: [])
            counted(prefix, 1)
            return
        }
        // Another API holds it (rare: a name with two default versions, say): rank them all again.
        var claimants = [slot.winner] + slot.others
        claimants.removeAll { $0.api.id == api.api.id }
        claimants.append(api)
        var best = 0
        for index in claimants.indices where Self.outranks(claimants[index], claimants[best], at: prefix) { best = index }
        slot.winner = claimants.remove(at: best)
        slot.others = claimants
        slots[prefix] = slot
    }

    private mutating func release(_ prefix: Substring, by api: RoutedApi, in slots: inout [Substring: Slot]) {
        guard var slot = slots[prefix] else { return }
        if slot.winner.api.id != api.api.id {
            slot.others.removeAll { $0.api.id == api.api.id }
            slots[prefix] = slot
            return
        }
        guard var best = slot.others.indices.first else {
            slots[prefix] = nil
            counted(prefix, -1)
            return
        }
        for index in slot.others.indices where Self.outranks(slot.others[index], slot.others[best], at: prefix) { best = index }
        slot.winner = slot.others.remove(at: best)
        slots[prefix] = slot
    }

    /// Whether `api` takes `prefix` from `holder`.
    static func outranks(_ api: RoutedApi, _ holder: RoutedApi, at prefix: Substring) -> Bool {
        let versioned = api.normalizedContext == prefix, holderVersioned = holder.normalizedContext == prefix
        if versioned != holderVersioned { return versioned }
        return api.api.id < holder.api.id
    }

    private mutating func counted(_ prefix: Substring, _ delta: Int) {
        let depth = prefix.utf8.reduce(0) { $1 == UInt8(ascii: "/") ? $0 + 1 : $0 }
        if depthCounts.count <= depth { depthCounts += Array(repeating: 0, count: depth + 1 - depthCounts.count) }
        depthCounts[depth] += delta
        count += delta
        maxDepth = depthCounts.lastIndex { $0 > 0 } ?? 0
    }

    /// FNV-1a over the prefix's bytes: cheap, and the same for a prefix and
    /// for the slice of a request path spelling it.
    static func shard(of prefix: Substring) -> Int {
        var hash: UInt32 = 2_166_136_261
        for byte in prefix.utf8 { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        return Int(hash % UInt32(shardCount))
    }

    /// Every prefix and the API it routes to, for comparing tables.
    var entries: [String: String] {
        var entries: [String: String] = [:]
        for shard in shards { for (prefix, slot) in shard.slots { entries[String(prefix)] = slot.winner.api.id } }
        return entries
    }

    /// How many shards this table shares with `other` (not copied when one was made from the other).
    func sharedShards(with other: RoutingTable) -> Int {
        zip(shards, other.shards).filter { $0 === $1 }.count
    }

    /// The depth bound lookups use, for comparing tables.
    var deepestPrefix: Int { maxDepth }

    public struct Route: Sendable {
        public let api: RoutedApi
        /// The path below the prefix, starting with `/` (or empty).
        public let remainder: Substring
        /// Reached through the default-version prefix.
        public let viaDefaultVersion: Bool
    }

    /// The API whose prefix is the longest one `path` starts with, at a
    /// segment boundary.
    public func route(_ path: Substring) -> Route? {
        // Candidate prefixes end where a segment ends: try the longest first.
        var ends: [Substring.Index] = []
        var index = path.startIndex
        var depth = 0
        // Searched as UTF-8 bytes ("/" is one byte, so every index found is a
        // character boundary): comparing characters costs several times more.
        let bytes = path.utf8
        let slash = UInt8(ascii: "/")
        if index < path.endIndex, bytes[index] == slash { index = bytes.index(after: index) }
        while index < path.endIndex, depth < maxDepth {
            let next = bytes[index...].firstIndex(of: slash) ?? path.endIndex
            ends.append(next)
            depth += 1
            index = next < path.endIndex ? bytes.index(after: next) : next
        }
        for end in ends.reversed() {
            let prefix = path[path.startIndex..<end]
            if let slot = shards[Self.shard(of: prefix)].slots[prefix] {
                let api = slot.winner
                return Route(api: api, remainder: path[end...], viaDefaultVersion: prefix != api.normalizedContext)
            }
        }
        return nil
    }
}

extension HttpVerb {
    /// The verb of a request's method; nil for methods APIs cannot declare.
    init?(method: String) { self.init(httpMethodName: method) }

    var methodName: String { httpMethodName ?? "UNKNOWN" }
}
