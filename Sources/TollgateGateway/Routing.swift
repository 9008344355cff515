public import TollgateProto

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
        let segments = ArraySlice(path.split(separator: "/", omittingEmptySubsequences: true))
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
/// Built whole from a deployment state and swapped in, never changed in place.
public struct RoutingTable: Sendable {
    private var byPrefix: [Substring: RoutedApi] = [:]
    /// Longest prefix, in segments, so a lookup tries no more than that.
    private var maxDepth = 0

    public init(apis: some Sequence<RoutedApi>) {
        for api in apis {
            add(api.normalizedContext, api)
            if let alias = api.normalizedDefaultContext { add(alias, api) }
        }
    }

    /// Adds an already normalized prefix (RoutedApi computes them once, so a
    /// table of thousands of APIs is rebuilt in a few dictionary inserts each).
    private mutating func add(_ normalized: String, _ api: RoutedApi) {
        // A versioned context outranks another API's default-version alias.
        if let existing = byPrefix[Substring(normalized)], existing.normalizedContext == normalized { return }
        byPrefix[Substring(normalized)] = api
        maxDepth = max(maxDepth, normalized.utf8.reduce(0) { $1 == UInt8(ascii: "/") ? $0 + 1 : $0 })
    }

    public var count: Int { byPrefix.count }

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
        if index < path.endIndex, path[index] == "/" { index = path.index(after: index) }
        while index < path.endIndex, depth < maxDepth {
            let next = path[index...].firstIndex(of: "/") ?? path.endIndex
            ends.append(next)
            depth += 1
            index = next < path.endIndex ? path.index(after: next) : next
        }
        for end in ends.reversed() {
            if let api = byPrefix[path[path.startIndex..<end]] {
                let prefix = path[path.startIndex..<end]
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
