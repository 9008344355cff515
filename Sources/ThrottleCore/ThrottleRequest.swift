public import TollgateProto

/// Everything the throttler needs to know about one request, as the
/// gateway has it after routing and key validation.
public struct ThrottleRequest: Sendable {
    /// The matched resource: its URI template and verb (`GET`, …).
    public struct Resource: Sendable, Hashable {
        public var uriTemplate: String
        public var verb: String

        public init(uriTemplate: String, verb: String) {
            self.uriTemplate = uriTemplate
            self.verb = verb
        }
    }

    /// The API's context as deployed (`/t/{tenant}` prefix included) and version.
    public var apiContext: String
    public var apiVersion: String
    public var apiTenant: String
    public var resource: Resource?
    /// The API's advanced policy, counted at API level (900800).
    public var apiPolicy: AdvancedPolicy?
    /// The matched resource's advanced policy, counted per resource (900802).
    public var resourcePolicy: AdvancedPolicy?
    /// The key manager's answer; nil for a resource that needs no token.
    public var validation: KeyValidationInfo?
    /// The tenant's custom (global) policies.
    public var customPolicies: [GlobalPolicy]
    /// The API's hard backend limit for the key type used (`max_production_tps`
    /// or `max_sandbox_tps`).
    public var hardLimitPerSecond: UInt32?
    /// Whether the token is a sandbox one (the hard limit is per key type).
    public var sandbox: Bool
    /// Client address, headers, query parameters, JWT claims.
    public var attributes: RequestAttributes
    /// Payload size, for bandwidth quotas.
    public var payloadBytes: UInt64

    public init(apiContext: String, apiVersion: String, apiTenant: String = "", resource: Resource? = nil, apiPolicy: AdvancedPolicy? = nil,
                resourcePolicy: AdvancedPolicy? = nil, validation: KeyValidationInfo? = nil, customPolicies: [GlobalPolicy] = [],
                hardLimitPerSecond: UInt32? = nil, sandbox: Bool = false, attributes: RequestAttributes, payloadBytes: UInt64 = 0) {
        self.apiContext = apiContext
        self.apiVersion = apiVersion
        self.apiTenant = apiTenant
        self.resource = resource
        self.apiPolicy = apiPolicy
        self.resourcePolicy = resourcePolicy
        self.validation = validation
        self.customPolicies = customPolicies
        self.hardLimitPerSecond = hardLimitPerSecond
        self.sandbox = sandbox
        self.attributes = attributes
        self.payloadBytes = payloadBytes
    }

    /// The values custom key templates expand.
    var templateValues: KeyTemplateValues {
        let resourceKey = resource.map { ThrottleKey.resource(context: apiContext, version: apiVersion, uriTemplate: $0.uriTemplate, verb: $0.verb).body } ?? ""
        return KeyTemplateValues(userID: validation?.endUserName ?? "", apiContext: apiContext, apiVersion: apiVersion,
                                 applicationID: validation?.applicationId ?? "", applicationTenant: validation?.subscriberTenantDomain ?? "",
                                 apiTenant: apiTenant, resourceKey: resourceKey, clientIP: attributes.clientIP, header: attributes.header)
    }
}

/// The IETF `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`
/// values of the quota with the least left.
public struct RateLimitValues: Sendable, Hashable {
    public var limit: UInt64
    /// The gateway's estimate: units it holds plus the pool the traffic
    /// manager last reported.
    public var remaining: UInt64
    /// Seconds to the end of the window.
    public var resetSeconds: Int

    public init(limit: UInt64, remaining: UInt64, resetSeconds: Int) {
        self.limit = limit
        self.remaining = remaining
        self.resetSeconds = resetSeconds
    }
}

/// Why a request was refused, with what the response carries.
public struct ThrottleRefusal: Sendable, Hashable {
    /// The quota's kind.
    public var kind: ThrottleKind
    /// WSO2's code: 900800 API, 900802 resource, 900803 application,
    /// 900804 subscription, 900806 custom, 900807 spike arrest, 900801
    /// hard limit. (Blocks, 900805, are the gateway's, before throttling.)
    public var errorCode: Int
    /// 429, or 503 for the hard limit.
    public var httpStatus: Int
    public var policy: String
    /// The throttle key's wire form, for logs.
    public var key: String
    /// `Retry-After`: seconds to the end of the refusing quota's window.
    public var retryAfterSeconds: Int?
    public var rateLimit: RateLimitValues?

    public init(kind: ThrottleKind, errorCode: Int, httpStatus: Int, policy: String, key: String, retryAfterSeconds: Int?, rateLimit: RateLimitValues?) {
        self.kind = kind
        self.errorCode = errorCode
        self.httpStatus = httpStatus
        self.policy = policy
        self.key = key
        self.retryAfterSeconds = retryAfterSeconds
        self.rateLimit = rateLimit
    }
}

/// A lease a request has to wait for: pass it to
/// ``LeaseThrottler/waitForLease(_:)``, then admit the request again.
public struct LeaseWait: Sendable, Hashable {
    public let key: String
    public let windowStart: Int64
    /// The quota's kind, for the refusal when the lease never comes.
    public let kind: ThrottleKind
}

/// What to do with a request.
public enum ThrottleOutcome: Sendable, Hashable {
    /// Let it through. `marked` names subscription tiers whose quota is
    /// spent but whose stop-on-quota-reach is off (WSO2's admit-and-mark).
    case admit(rateLimit: RateLimitValues?, marked: [String])
    case refuse(ThrottleRefusal)
    /// No local lease yet and the pool is not known to be empty: await
    /// ``LeaseThrottler/waitForLease(_:)`` and call `admit` again.
    case wait(LeaseWait)
}
