import TollgateProto

/// Representative records, built the way the roles will build them.
enum Fixtures {
    /// A published API with ten resources, failover production endpoints,
    /// load-balanced sandbox endpoints, CORS and a hard limit.
    static func api() -> Api {
        let verbs: [HttpVerb] = [.get, .post, .put, .delete, .patch]
        let auth: [ResourceAuthType] = ResourceAuthType.allCases.filter { $0 != .unspecified }
        var api = Api()
        api.id = "6f0c2a52-9f3e-4d57-8a43-1d2b7f7e0c11"
        api.tenantDomain = "carbon.super"
        api.provider = "admin"
        api.name = "PizzaShack"
        api.version = "1.0.0"
        api.context = "/pizzashack"
        api.description = "Order pizza — and track it. 🍕"
        api.tags = ["food", "orders", "ünïcode"]
        api.defaultVersion = true
        api.visibility = .restricted
        api.visibleRoles = ["subscriber", "internal/partner"]
        api.transports = [.https, .http]
        api.resources = (0..<10).map { i in
            ApiResource(uriTemplate: "/menu/\(i)/{itemId}", verb: verbs[i % verbs.count], authType: auth[i % auth.count],
                        throttlingPolicy: i.isMultiple(of: 2) ? "Unlimited" : "10KPerMin", scope: i == 3 ? "order:write" : "")
        }
        api.subscriptionPolicies = ["Gold", "Silver", "Bronze"]
        api.apiPolicy = "50KPerMin"
        api.maxProductionTps = 0  // present with the zero value
        api.productionEndpoints = EndpointConfig(strategy: .failover(FailoverEndpoints(
            primary: Endpoint(url: "https://primary.example/pizza", connectTimeoutMs: 2000, readTimeoutMs: 30000),
            secondaries: [Endpoint(url: "https://backup.example/pizza", weight: 1)])))
        api.sandboxEndpoints = EndpointConfig(strategy: .loadBalanced(LoadBalancedEndpoints(
            endpoints: [Endpoint(url: "http://sb1.example"), Endpoint(url: "http://sb2.example", weight: 3)])))
        api.cors = CorsConfig(enabled: true, allowOrigins: ["*"], allowHeaders: ["authorization"], allowMethods: [.get, .options], allowCredentials: false)
        api.lifecycleState = .published
        api.createdAtUnixMs = 1_764_201_600_000
        api.updatedAtUnixMs = 1_764_201_600_123
        return api
    }

    static func token() -> OAuthToken {
        var token = OAuthToken()
        token.tokenHash = Array(0..<32).map { UInt8($0 * 7 % 256) }
        token.pairedTokenId = [0, 255, 0, 1]
        token.kind = .access
        token.consumerKey = "Xyz12_consumer"
        token.keyType = .production
        token.applicationId = "app-1"
        token.tenantDomain = "wso2.com"
        token.username = "alice@wso2.com"
        token.grantType = .clientCredentials
        token.scopes = ["default", "am_application_scope"]
        token.issuedAtUnixMs = 1_764_201_600_000
        token.expiresAtUnixMs = 1_764_205_200_000
        token.state = .active
        return token
    }

    static func usageEvent() -> UsageEvent {
        var event = UsageEvent()
        event.correlationId = "c0ffee-0001"
        event.gatewayId = "gw-1"
        event.requestTimestampUnixMs = -1  // negative values must survive too
        event.consumerKey = "Xyz12_consumer"
        event.keyType = .sandbox
        event.apiName = "PizzaShack"
        event.apiVersion = "1.0.0"
        event.apiContext = "/pizzashack/1.0.0"
        event.resource = "/menu/{itemId}"
        event.verb = .get
        event.username = "alice"
        event.clientIp = "192.0.2.10"
        event.responseTimeMs = 12
        event.backendTimeMs = 9
        event.responseCode = 503
        event.responseSizeBytes = UInt64.max
        event.throttled = true
        event.throttledReason = "SUBSCRIPTION_LIMIT_EXCEEDED"
        event.fault = UsageFault(errorCode: 101503, errorMessage: "backend unavailable")
        return event
    }
}
