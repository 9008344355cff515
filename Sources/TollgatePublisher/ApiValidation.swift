public import RPCCore
public import TollgateProto

/// The rules an API must satisfy before it is stored, each failing with a
/// message that names the field and says what is allowed.
public enum ApiValidation {
    static let nameCharacters = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.")
    static let versionCharacters = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
    static let contextCharacters = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.~/")

    public static func checkName(_ name: String) throws(RPCError) {
        guard (1...60).contains(name.count), name.allSatisfy(nameCharacters.contains), name.first != " ", name.last != " " else {
            throw RPCError(.invalidArgument, "API name \"\(name)\" is invalid: use 1 to 60 letters, digits, spaces, _, - or . (no leading or trailing space)")
        }
    }

    public static func checkVersion(_ version: String) throws(RPCError) {
        guard (1...30).contains(version.count), version.allSatisfy(versionCharacters.contains) else {
            throw RPCError(.invalidArgument, "API version \"\(version)\" is invalid: use 1 to 30 letters, digits, _, - or ., such as 1.0.0 or v2")
        }
    }

    /// A context is a path of one or more segments, e.g. `/pizzashack` or
    /// `/finance/payments`; `/t/…` is where tenants' APIs live, so it is taken.
    public static func checkContext(_ context: String) throws(RPCError) {
        let hint = "use a path such as /pizzashack: a leading /, segments of letters, digits, _, -, . or ~, no trailing /"
        guard context.count >= 2, context.count <= 200, context.hasPrefix("/"), !context.hasSuffix("/"), !context.contains("//"),
              context.allSatisfy(contextCharacters.contains) else {
            throw RPCError(.invalidArgument, "context \"\(context)\" is invalid: \(hint)")
        }
        let segments = context.split(separator: "/")
        guard !segments.contains(where: { $0 == "." || $0 == ".." }) else {
            throw RPCError(.invalidArgument, "context \"\(context)\" is invalid: . and .. are not allowed as segments")
        }
        if segments.first == "t" {
            throw RPCError(.invalidArgument, "context \"\(context)\" is invalid: /t/ is reserved for tenants' APIs")
        }
    }

    /// An endpoint URL the gateway can call: http or https, a host, an
    /// optional port and path, no query, fragment or credentials.
    public static func checkEndpointURL(_ url: String, field: String) throws(RPCError) {
        let hint = "\(field) \"\(url)\" is not a usable endpoint URL: use http(s)://host[:port][/path]"
        let lower = url.lowercased()
        let rest: Substring
        if lower.hasPrefix("https://") { rest = url.dropFirst(8) } else if lower.hasPrefix("http://") { rest = url.dropFirst(7) } else {
            throw RPCError(.invalidArgument, hint)
        }
        guard url.count <= 2048, !url.contains(where: { $0.isWhitespace || $0 == "#" || $0 == "?" }) else { throw RPCError(.invalidArgument, hint) }
        let authority = rest.prefix { $0 != "/" }
        guard !authority.isEmpty, !authority.contains("@") else { throw RPCError(.invalidArgument, hint) }
        var host = Substring(authority)
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw RPCError(.invalidArgument, hint) }
            host = authority[authority.startIndex...close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty { try checkPort(after, hint) }
        } else if let colon = authority.firstIndex(of: ":") {
            host = authority[..<colon]
            try checkPort(authority[colon...], hint)
        }
        let hostCharacters = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._[]:")
        guard !host.isEmpty, host.allSatisfy(hostCharacters.contains) else { throw RPCError(.invalidArgument, hint) }
    }

    static func checkPort(_ text: Substring, _ hint: String) throws(RPCError) {
        guard text.first == ":", let port = Int(text.dropFirst()), (1...65535).contains(port) else { throw RPCError(.invalidArgument, hint) }
    }

    static func checkEndpoint(_ endpoint: Endpoint, field: String) throws(RPCError) {
        try checkEndpointURL(endpoint.url, field: field + ".url")
        guard endpoint.connectTimeoutMs >= 0, endpoint.readTimeoutMs >= 0 else {
            throw RPCError(.invalidArgument, "\(field): timeouts cannot be negative")
        }
        if let suspension = endpoint.suspension {
            guard suspension.initialSuspensionMs >= 0, suspension.maxSuspensionMs >= 0, suspension.retryDelayMs >= 0,
                  suspension.progressionFactor >= 0, suspension.progressionFactor.isFinite else {
                throw RPCError(.invalidArgument, "\(field).suspension: periods and factors cannot be negative")
            }
        }
    }

    static func checkEndpoints(_ config: EndpointConfig?, field: String) throws(RPCError) {
        guard let config else { return }
        switch config.strategy {
        case .single(let endpoint)?:
            try checkEndpoint(endpoint, field: field + ".single")
        case .loadBalanced(let group)?:
            guard !group.endpoints.isEmpty else { throw RPCError(.invalidArgument, "\(field).load_balanced needs at least one endpoint") }
            for (index, endpoint) in group.endpoints.enumerated() { try checkEndpoint(endpoint, field: "\(field).load_balanced.endpoints[\(index)]") }
        case .failover(let group)?:
            guard let primary = group.primary else { throw RPCError(.invalidArgument, "\(field).failover needs a primary endpoint") }
            try checkEndpoint(primary, field: field + ".failover.primary")
            for (index, endpoint) in group.secondaries.enumerated() { try checkEndpoint(endpoint, field: "\(field).failover.secondaries[\(index)]") }
        case nil:
            throw RPCError(.invalidArgument, "\(field) needs a single, load_balanced or failover endpoint")
        }
    }

    /// A URI template relative to the context: `/menu`, `/order/{orderId}`, `/*`.
    public static func checkUriTemplate(_ template: String, field: String) throws(RPCError) {
        let hint = "\(field) \"\(template)\" is invalid: use a path such as /menu, /order/{orderId} or /*"
        guard template.hasPrefix("/"), template.count <= 512, !template.contains(where: { $0.isWhitespace || $0 == "?" || $0 == "#" }) else {
            throw RPCError(.invalidArgument, hint)
        }
        var open = false
        for character in template {
            switch character {
            case "{": if open { throw RPCError(.invalidArgument, hint) }; open = true
            case "}": if !open { throw RPCError(.invalidArgument, hint) }; open = false
            default: break
            }
        }
        if open || template.contains("{}") { throw RPCError(.invalidArgument, hint) }
    }

    /// Checks fields that need no database, and fills the defaults a
    /// provider need not spell out (auth type ANY, HTTP and HTTPS, public).
    public static func normalize(_ api: inout Api) throws(RPCError) {
        try checkName(api.name)
        try checkVersion(api.version)
        try checkContext(api.context)
        guard api.description.utf8.count <= 64 * 1024 else { throw RPCError(.invalidArgument, "description is longer than 64 KiB") }
        try checkProvider(api.provider)
        api.tags = api.tags.map { $0.trimmingSpaces }.filter { !$0.isEmpty }
        guard api.tags.count <= maxTags else { throw RPCError(.invalidArgument, "an API can have at most \(maxTags) tags") }
        for tag in api.tags where tag.count > 60 || tag.utf8.count > 120 {
            throw RPCError(.invalidArgument, "tag \"\(tag.prefix(60))…\" is too long: at most 60 characters")
        }
        guard api.resources.count <= maxResources else {
            throw RPCError(.invalidArgument, "an API can have at most \(maxResources) resources; split it into several APIs")
        }

        guard !api.resources.isEmpty else {
            throw RPCError(.invalidArgument, "an API needs at least one resource (a verb and a URI template such as GET /menu)")
        }
        let scopeKeys = Set(api.scopes.map(\.key))
        guard scopeKeys.count == api.scopes.count, !scopeKeys.contains("") else {
            throw RPCError(.invalidArgument, "scopes need unique, non-empty keys")
        }
        var seen = Set<String>()
        for index in api.resources.indices {
            let field = "resources[\(index)]"
            var resource = api.resources[index]
            try checkUriTemplate(resource.uriTemplate, field: field + ".uri_template")
            switch resource.verb {
            case .get, .post, .put, .delete, .patch, .head, .options: break
            default: throw RPCError(.invalidArgument, "\(field).verb must be GET, POST, PUT, DELETE, PATCH, HEAD or OPTIONS")
            }
            switch resource.authType {
            case .unspecified: resource.authType = .any
            case .none, .application, .applicationUser, .any: break
            case .unrecognized: throw RPCError(.invalidArgument, "\(field).auth_type must be NONE, APPLICATION, APPLICATION_USER or ANY")
            }
            if !resource.scope.isEmpty && !scopeKeys.contains(resource.scope) {
                throw RPCError(.invalidArgument, "\(field).scope \"\(resource.scope)\" is not one of the API's scopes")
            }
            guard seen.insert("\(resource.verb.rawValue) \(resource.uriTemplate)").inserted else {
                throw RPCError(.invalidArgument, "\(field): \(verbName(resource.verb)) \(resource.uriTemplate) appears twice")
            }
            api.resources[index] = resource
        }
        try checkEndpoints(api.productionEndpoints, field: "production_endpoints")
        try checkEndpoints(api.sandboxEndpoints, field: "sandbox_endpoints")
        if api.transports.isEmpty { api.transports = [.http, .https] }
        for transport in api.transports where transport != .http && transport != .https {
            throw RPCError(.invalidArgument, "transports may hold HTTP and HTTPS only")
        }
        switch api.visibility {
        case .unspecified: api.visibility = .public
        case .public, .private: break
        case .restricted:
            guard !api.visibleRoles.isEmpty else { throw RPCError(.invalidArgument, "a RESTRICTED API needs visible_roles") }
        case .unrecognized: throw RPCError(.invalidArgument, "visibility must be PUBLIC, RESTRICTED or PRIVATE")
        }
        if !api.authorizationHeader.isEmpty {
            let token = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~")
            guard api.authorizationHeader.allSatisfy(token.contains) else {
                throw RPCError(.invalidArgument, "authorization_header \"\(api.authorizationHeader)\" is not an HTTP header name")
            }
        }
        var tiers = Set<String>()
        api.subscriptionPolicies = api.subscriptionPolicies.filter { tiers.insert($0).inserted }
        // Gateways receive an API as one message beside its policies; keep it well inside one 4 MiB frame.
        // Measuring it also finds any string holding U+0000, which cannot be stored.
        let size: Int
        do {
            size = try api.serializedSize()
        } catch {
            throw RPCError(.invalidArgument, "\(error)")
        }
        guard size <= maxApiBytes else {
            throw RPCError(.invalidArgument, "the API is larger than 1 MiB stored; shorten its description, scopes or resources")
        }
    }

    public static let maxTags = 50
    public static let maxResources = 1000
    public static let maxApiBytes = 1 << 20

    /// A provider is a username (possibly an e-mail address).
    public static func checkProvider(_ provider: String) throws(RPCError) {
        guard !provider.isEmpty, provider.utf8.count <= 96, !provider.contains(where: { $0.isWhitespace || $0.isNewline || $0 == "/" }),
              provider.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7F }) else {
            throw RPCError(.invalidArgument, "provider \"\(provider.prefix(96))\" is not a username: up to 96 bytes, no spaces, slashes or control characters")
        }
    }

    public static func verbName(_ verb: HttpVerb) -> String { verb.httpMethodName ?? "?" }
}

extension String {
    var trimmingSpaces: String {
        var slice = Substring(self)
        while slice.first?.isWhitespace == true { slice = slice.dropFirst() }
        while slice.last?.isWhitespace == true { slice = slice.dropLast() }
        return String(slice)
    }
}
