/// The kinds of quota a request is counted against, in WSO2's evaluation
/// order (docs/throttling.md §3), with the error code each refuses with.
public enum ThrottleKind: String, Sendable, Hashable, CaseIterable {
    case api
    case resource = "res"
    case subscription = "sub"
    case spikeArrest = "spike"
    case application = "app"
    case custom
    case hardLimit = "hard"

    /// WSO2's error code for a refusal by this kind.
    public var errorCode: Int {
        switch self {
        case .api: 900_800
        case .resource: 900_802
        case .subscription: 900_804
        case .spikeArrest: 900_807
        case .application: 900_803
        case .custom: 900_806
        case .hardLimit: 900_801
        }
    }

    /// 429, except the hard backend limit, which WSO2 answers with 503.
    public var httpStatus: Int { self == .hardLimit ? 503 : 429 }

    /// Position in WSO2's evaluation order.
    var order: Int { Self.allCases.firstIndex(of: self)! }
}

/// A counter's name in the traffic managers' key space: the kind, then
/// WSO2's own form of the key (docs/throttling.md §1). The kind prefix keeps
/// an application key `app-1:alice` apart from any API's.
public struct ThrottleKey: Hashable, Sendable, CustomStringConvertible, Comparable {
    public let kind: ThrottleKind
    /// The wire form, e.g. `sub:app-1:/pets:1.0.0`. Built once: the request
    /// path uses it for every lookup of the key.
    public let description: String

    public init(_ kind: ThrottleKind, _ body: String) {
        self.kind = kind
        description = kind.rawValue + ":" + body
    }

    /// A key whose wire form the caller built in one piece (`kind:` prefix included).
    private init(_ kind: ThrottleKind, wire: String) {
        self.kind = kind
        description = wire
    }

    /// WSO2's form, e.g. `/pets:1.0.0` or `app-1:/pets:1.0.0`.
    public var body: String { String(description.dropFirst(kind.rawValue.utf8.count + 1)) }

    /// Reads the wire form back; nil when the prefix is no kind.
    public init?(parsing text: String) {
        guard let colon = text.firstIndex(of: ":"), let kind = ThrottleKind(rawValue: String(text[..<colon])) else { return nil }
        self.init(kind, String(text[text.index(after: colon)...]))
    }

    public static func < (a: ThrottleKey, b: ThrottleKey) -> Bool { a.description < b.description }

    /// API level of an advanced policy: `{context}:{version}`.
    public static func api(context: String, version: String) -> ThrottleKey {
        ThrottleKey(.api, wire: "api:\(context):\(version)")
    }

    /// Resource level of an advanced policy: `{context}/{version}{uriTemplate}:{VERB}`.
    public static func resource(context: String, version: String, uriTemplate: String, verb: String) -> ThrottleKey {
        ThrottleKey(.resource, wire: "res:\(context)/\(version)\(uriTemplate):\(verb.uppercased())")
    }

    /// A subscription: `{appId}:{context}:{version}`.
    public static func subscription(applicationID: String, context: String, version: String) -> ThrottleKey {
        ThrottleKey(.subscription, wire: "sub:\(applicationID):\(context):\(version)")
    }

    /// A subscription's spike arrest, counted on each gateway.
    public static func spikeArrest(applicationID: String, context: String, version: String) -> ThrottleKey {
        ThrottleKey(.spikeArrest, wire: "spike:\(applicationID):\(context):\(version)")
    }

    /// An application per end user: `{appId}:{user}`.
    public static func application(applicationID: String, user: String) -> ThrottleKey {
        ThrottleKey(.application, wire: "app:\(applicationID):\(user)")
    }

    /// A custom policy's key: `{policy}:{expanded template}`, so two
    /// policies with the same template count apart.
    public static func custom(policy: String, expandedTemplate: String) -> ThrottleKey {
        ThrottleKey(.custom, wire: "custom:\(policy):\(expandedTemplate)")
    }

    /// The hard backend limit of an API and key type.
    public static func hardLimit(context: String, version: String, sandbox: Bool) -> ThrottleKey {
        ThrottleKey(.hardLimit, wire: "hard:\(context):\(version):\(sandbox ? "sandbox" : "production")")
    }

    /// The key of a condition group of an advanced policy (WSO2's `_condition_{id}`).
    public func condition(_ groupID: String) -> ThrottleKey { ThrottleKey(kind, wire: description + "_condition_" + groupID) }

    /// The key of an advanced policy's default limit when it has condition
    /// groups and the request matched none (WSO2's `_default`).
    public var defaultLimit: ThrottleKey { ThrottleKey(kind, wire: description + "_default") }
}

/// The values a custom policy's key template may use (docs/throttling.md §1).
public struct KeyTemplateValues: Sendable {
    public var userID: String
    public var apiContext: String
    public var apiVersion: String
    public var applicationID: String
    public var applicationTenant: String
    public var apiTenant: String
    public var resourceKey: String
    public var clientIP: String
    /// `$customProperty.NAME`: a header of the request.
    public var header: @Sendable (String) -> String?

    public init(userID: String = "", apiContext: String = "", apiVersion: String = "", applicationID: String = "", applicationTenant: String = "",
                apiTenant: String = "", resourceKey: String = "", clientIP: String = "", header: @escaping @Sendable (String) -> String? = { _ in nil }) {
        self.userID = userID
        self.apiContext = apiContext
        self.apiVersion = apiVersion
        self.applicationID = applicationID
        self.applicationTenant = applicationTenant
        self.apiTenant = apiTenant
        self.resourceKey = resourceKey
        self.clientIP = clientIP
        self.header = header
    }

    /// Replaces every `$name` of `template`. An unknown variable keeps its
    /// text, so a typo makes one shared key rather than no limit.
    public func expand(_ template: String) -> String {
        var out = ""
        var index = template.startIndex
        while index < template.endIndex {
            let character = template[index]
            guard character == "$" else {
                out.append(character)
                index = template.index(after: index)
                continue
            }
            var end = template.index(after: index)
            while end < template.endIndex, template[end].isLetter || template[end].isNumber || template[end] == "_" { end = template.index(after: end) }
            // `$customProperty.NAME`: a header name, which may hold dashes.
            if template[template.index(after: index)..<end] == "customProperty", end < template.endIndex, template[end] == "." {
                end = template.index(after: end)
                while end < template.endIndex, template[end].isLetter || template[end].isNumber || template[end] == "_" || template[end] == "-" {
                    end = template.index(after: end)
                }
            }
            let name = String(template[template.index(after: index)..<end])
            out += value(of: name) ?? String(template[index..<end])
            index = end
        }
        return out
    }

    func value(of name: String) -> String? {
        switch name {
        case "userId": userID
        case "apiContext": apiContext
        case "apiVersion": apiVersion
        case "appId": applicationID
        case "appTenant": applicationTenant
        case "apiTenant": apiTenant
        case "resourceKey": resourceKey
        case "clientIp": clientIP
        default:
            if name.hasPrefix("customProperty.") { header(String(name.dropFirst("customProperty.".count))) ?? "" } else { nil }
        }
    }
}
