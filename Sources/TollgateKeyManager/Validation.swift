import LMDBKit
import OpenSSLKit
public import RPCCore
public import TollgateProto
import TollgateStorage

/// WSO2's key-validation status codes (`APIConstants.KeyValidationStatus`).
public enum KeyValidationStatus {
    public static let invalidCredentials: Int32 = 900901
    public static let incorrectTokenType: Int32 = 900905
    public static let apiBlocked: Int32 = 900907
    public static let resourceForbidden: Int32 = 900908
    public static let subscriptionInactive: Int32 = 900909
    public static let invalidScope: Int32 = 900910
}

extension KeyManager {
    /// May the token behind `request.tokenHash` call this resource, and
    /// under which tiers: everything a gateway needs, from one read
    /// transaction. Refusals are answers (a status code), not errors.
    public func validate(_ request: ValidateKeyRequest) throws(RPCError) -> KeyValidationInfo {
        let timestamp = now()
        return try RPCError.catching {
            try database.database.read { txn in try validate(request, at: timestamp, in: txn) }
        }
    }

    func validate<T: TransactionReading & ~Copyable>(_ request: ValidateKeyRequest, at timestamp: Int64, in txn: borrowing T) throws -> KeyValidationInfo {
        func refused(_ status: Int32) -> KeyValidationInfo { KeyValidationInfo(authorized: false, validationStatus: status) }

        guard request.tokenHash.count == 32, request.tokenId.count == 16, let token = try database.tokens.get(Key(.bytes(request.tokenId)), in: txn),
              token.kind == .access, constantTimeEquals(token.tokenHash, request.tokenHash) else {
            return refused(KeyValidationStatus.invalidCredentials)
        }
        let client = try database.clients.get(Key(.string(token.consumerKey)), in: txn, memo: memos.clients)
        guard liveness(of: token, client: client, at: timestamp),
              let key = try database.applicationKeys.get(ApiManagerDatabase.applicationKeysByConsumerKey, Key(.string(token.consumerKey)), in: txn, memo: memos.applicationKeys),
              let application = try database.applications.get(Key(.string(key.applicationId)), in: txn, memo: memos.applications) else {
            return refused(KeyValidationStatus.invalidCredentials)
        }
        // The token's domain restriction (the Referer the gateway saw).
        if !Self.domainAllowed(request.clientDomain, allowed: key.allowedDomains) {
            return refused(KeyValidationStatus.invalidCredentials)
        }
        switch request.requiredAuthLevel {
        case .application where token.userType != .application, .applicationUser where token.userType != .applicationUser:
            return refused(KeyValidationStatus.incorrectTokenType)
        default:
            break
        }

        let (tenant, context) = Self.splitTenant(request.context)
        let version = request.version.hasPrefix("_default_") ? String(request.version.dropFirst("_default_".count)) : request.version
        var api = try database.apis.get(ApiManagerDatabase.apisByContextVersion, Key(.string(tenant), .string(context), .string(version)), in: txn, memo: memos.apis)
        // WSO2 gateways send the versioned context (`/pizzashack/1.0.0`).
        if api == nil, context.hasSuffix("/" + version) {
            api = try database.apis.get(ApiManagerDatabase.apisByContextVersion,
                                        Key(.string(tenant), .string(String(context.dropLast(version.count + 1))), .string(version)), in: txn, memo: memos.apis)
        }
        guard let api, let subscription = try database.subscriptions.get(ApiManagerDatabase.subscriptionsByApplicationApi,
                                                                         Key(.string(application.id), .string(api.id)), in: txn, memo: memos.subscriptions) else {
            return refused(KeyValidationStatus.resourceForbidden)
        }
        switch api.lifecycleState {
        case .published, .prototyped, .deprecated: break
        case .blocked: return refused(KeyValidationStatus.apiBlocked)
        // A retired API's subscriptions have ended; a created one was never on the gateways.
        default: return refused(KeyValidationStatus.resourceForbidden)
        }
        switch subscription.status {
        case .blocked:
            return refused(KeyValidationStatus.apiBlocked)
        case .prodOnlyBlocked where token.keyType != .sandbox:
            return refused(KeyValidationStatus.apiBlocked)
        case .onHold, .rejected:
            return refused(KeyValidationStatus.subscriptionInactive)
        default:
            break
        }
        if subscription.createState == .unSubscribe { return refused(KeyValidationStatus.resourceForbidden) }
        if let resource = api.resources.first(where: { $0.uriTemplate == request.matchingResource && $0.verb == request.verb }),
           !resource.scope.isEmpty, !token.scopes.contains(resource.scope) {
            return refused(KeyValidationStatus.invalidScope)
        }

        let subscriptionPolicy = try subscriptionPolicy(subscription.throttlingPolicy, tenant: tenant, in: txn)
        let applicationPolicy = try applicationPolicy(application.throttlingPolicy, tenant: application.tenantDomain, in: txn)
        var info = KeyValidationInfo(authorized: true, validationStatus: 0, keyType: token.keyType)
        info.subscriber = application.owner
        info.subscriberTenantDomain = application.tenantDomain
        info.applicationId = application.id
        info.applicationName = application.name
        info.consumerKey = token.consumerKey
        info.applicationPolicy = application.throttlingPolicy
        info.subscriptionPolicy = subscription.throttlingPolicy
        info.apiPolicy = api.apiPolicy
        if let subscriptionPolicy {
            info.spikeArrestLimit = subscriptionPolicy.spikeArrestLimit
            info.spikeArrestUnit = subscriptionPolicy.spikeArrestUnit
            info.stopOnQuotaReach = subscriptionPolicy.stopOnQuotaReach
            info.subscriptionLimit = subscriptionPolicy.defaultLimit
        }
        info.applicationLimit = applicationPolicy?.defaultLimit
        info.contentAware = Self.isBandwidth(subscriptionPolicy?.defaultLimit) || Self.isBandwidth(applicationPolicy?.defaultLimit)
        info.throttlingData = ["api_level_throttling_key"]
        info.apiName = api.name
        info.apiPublisher = api.provider
        info.endUserName = token.tenantDomain == superTenant ? token.username : "\(token.username)@\(token.tenantDomain)"
        info.scopes = token.scopes
        info.userType = token.userType
        info.authorizedDomains = key.allowedDomains
        info.issuedAtUnixMs = token.issuedAtUnixMs
        info.expiresAtUnixMs = token.expiresAtUnixMs
        return info
    }

    func subscriptionPolicy<T: TransactionReading & ~Copyable>(_ name: String, tenant: String, in txn: borrowing T) throws -> SubscriptionPolicy? {
        guard !name.isEmpty, case .subscriptionPolicy(let policy)? = try database.policies.get(
            ApiManagerDatabase.policyKey(kind: .subscription, name: name, tenant: tenant), in: txn, memo: memos.policies)?.policy else { return nil }
        return policy
    }

    func applicationPolicy<T: TransactionReading & ~Copyable>(_ name: String, tenant: String, in txn: borrowing T) throws -> ApplicationPolicy? {
        guard !name.isEmpty, case .applicationPolicy(let policy)? = try database.policies.get(
            ApiManagerDatabase.policyKey(kind: .application, name: name, tenant: tenant), in: txn, memo: memos.policies)?.policy else { return nil }
        return policy
    }

    static func isBandwidth(_ limit: ThrottleLimit?) -> Bool {
        if case .bandwidthBytes? = limit?.quota { return true }
        return false
    }

    /// `/t/<tenant>/<context>` is a tenant's API; anything else the super tenant's.
    static func splitTenant(_ context: String) -> (tenant: String, context: String) {
        guard context.hasPrefix("/t/") else { return (superTenant, context) }
        let rest = context.dropFirst(3)
        guard let slash = rest.firstIndex(of: "/") else { return (String(rest).lowercased(), "/") }
        return (String(rest[..<slash]).lowercased(), String(rest[slash...]))
    }

    /// Allowed when the key names no domains (or `ALL`), or the Referer's
    /// host is one of them (`*.example.com` matches subdomains).
    static func domainAllowed(_ referer: String?, allowed: [String]) -> Bool {
        let domains = allowed.filter { !$0.isEmpty }
        guard !domains.isEmpty, !domains.contains(where: { $0.uppercased() == "ALL" }) else { return true }
        guard let referer, !referer.isEmpty else { return false }
        var host = Substring(referer.lowercased())
        if let scheme = host.firstRange(of: "://") { host = host[scheme.upperBound...] }
        host = host.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        if let at = host.lastIndex(of: "@") { host = host[host.index(after: at)...] }
        if !host.hasPrefix("["), let colon = host.lastIndex(of: ":") { host = host[..<colon] }
        return domains.contains { pattern in
            let pattern = pattern.lowercased()
            if pattern.hasPrefix("*.") { return host.hasSuffix(pattern.dropFirst(1)) }
            return host == pattern
        }
    }
}
