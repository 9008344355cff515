import LMDBKit
import TollgateProto
import TollgateStorage

/// What a JWT access token says about its application, so a gateway can
/// authorize a call with it alone (docs/gateway.md, "JWT access tokens"):
/// the application and its tier, the key type and allowed domains, and every
/// API the application subscribes to with the tier's limits and the
/// subscription's state at issue. Later changes reach gateways as
/// revocations naming the application or consumer key; tokens issued before
/// such a revocation are then asked about here again.
extension KeyManager {
    func authorizationClaims(client: OAuthClient, application: Application?) throws -> [(String, JSONValue)] {
        var claims: [(String, JSONValue)] = [("keytype", .string(client.keyType == .sandbox ? "SANDBOX" : "PRODUCTION"))]
        guard let application else { return claims }
        try database.database.read { txn in
            let key = try database.applicationKeys.get(ApiManagerDatabase.applicationKeysByConsumerKey, Key(.string(client.consumerKey)), in: txn)
            let applicationLimit = try applicationPolicy(application.throttlingPolicy, tenant: application.tenantDomain, in: txn)?.defaultLimit
            var applicationClaim: [(String, JSONValue)] = [
                ("id", .string(application.id)), ("name", .string(application.name)), ("owner", .string(application.owner)),
                ("tenant", .string(application.tenantDomain)), ("tier", .string(application.throttlingPolicy)),
            ]
            if let applicationLimit { applicationClaim.append(("limit", Self.limitClaim(applicationLimit))) }
            claims.append(("application", .object(applicationClaim)))
            claims.append(("allowed_domains", .array((key?.allowedDomains ?? []).map { .string($0) })))
            var subscribed: [JSONValue] = []
            for subscription in try database.subscriptions.all(index: ApiManagerDatabase.subscriptionsByApplicationApi,
                                                               prefix: Key(.string(application.id)), in: txn) {
                guard subscription.createState != .unSubscribe, let api = try database.apis.get(Key(.string(subscription.apiId)), in: txn) else { continue }
                var entry: [(String, JSONValue)] = [
                    ("api_id", .string(api.id)), ("context", .string(api.context)), ("version", .string(api.version)),
                    ("tenant", .string(api.tenantDomain)), ("name", .string(api.name)), ("publisher", .string(api.provider)),
                    ("tier", .string(subscription.throttlingPolicy)), ("status", .integer(Int64(subscription.status.rawValue))),
                ]
                if let policy = try subscriptionPolicy(subscription.throttlingPolicy, tenant: api.tenantDomain, in: txn) {
                    if let limit = policy.defaultLimit { entry.append(("limit", Self.limitClaim(limit))) }
                    entry.append(("stop_on_quota", .bool(policy.stopOnQuotaReach)))
                    if policy.spikeArrestLimit > 0 {
                        entry.append(("spike_limit", .integer(Int64(policy.spikeArrestLimit))))
                        entry.append(("spike_unit", .integer(Int64(policy.spikeArrestUnit.rawValue))))
                    }
                }
                subscribed.append(.object(entry))
            }
            claims.append(("subscribedAPIs", .array(subscribed)))
        }
        return claims
    }

    /// A throttle limit as a claim: the time unit's number, the window in units, and the quota.
    static func limitClaim(_ limit: ThrottleLimit) -> JSONValue {
        var members: [(String, JSONValue)] = [("unit", .integer(Int64(limit.timeUnit.rawValue))), ("unit_time", .integer(Int64(limit.unitTime)))]
        switch limit.quota {
        case .requestCount(let count)?: members.append(("request_count", .integer(Int64(clamping: count))))
        case .bandwidthBytes(let bytes)?: members.append(("bandwidth_bytes", .integer(Int64(clamping: bytes))))
        case nil: break
        }
        return .object(members)
    }
}
