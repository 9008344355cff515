import Foundation
import RoleCore
import Synchronization
import ThrottleCore
import TollgateProto
import TollgateStorage

/// Settings of the request path, from `[gateway]`.
struct GatewaySettings: Sendable {
    var gatewayID: String
    var endpointDefaults: EndpointDefaults
    var maxRequestBodyBytes: Int?
    var requestIDHeader = "X-Request-ID"
}

/// The deployment state in force, swapped whole.
final class DeploymentHolder: Sendable {
    private let state = Mutex(DeploymentState.empty)

    var current: DeploymentState { state.withLock { $0 } }

    func replace(_ new: DeploymentState) {
        state.withLock { $0 = new }
    }
}

/// The gateway's request path, in WSO2's order: route, API state, the API's
/// tenant's address and context blocks, resource, token, application and
/// user blocks, throttling, then the endpoint for the token's key type.
/// Block conditions are checked here only (``BlockConditionSet``, scoped to
/// the API's tenant), never again by the throttler. Runs on
/// the connection's event loop; only a token not in the cache leaves it,
/// for the keymanager.
final class GatewayPolicy: ProxyPolicy {
    let deployment: DeploymentHolder
    let cache: ValidationCache
    let validator: any KeyValidator
    let health: EndpointHealth
    let throttling: GatewayThrottling
    let usage: UsageQueue
    let metrics: GatewayMetrics
    let settings: GatewaySettings

    let jwt: JWTVerifier
    let peers: (any PeerDirectory)?
    let backendJWT: BackendJWTIssuer

    init(deployment: DeploymentHolder, cache: ValidationCache, validator: any KeyValidator, health: EndpointHealth, throttling: GatewayThrottling,
         usage: UsageQueue, metrics: GatewayMetrics, settings: GatewaySettings, jwt: JWTVerifier, peers: (any PeerDirectory)?,
         backendJWT: BackendJWTIssuer) {
        self.jwt = jwt
        self.backendJWT = backendJWT
        self.peers = peers
        self.deployment = deployment
        self.cache = cache
        self.validator = validator
        self.health = health
        self.throttling = throttling
        self.usage = usage
        self.metrics = metrics
        self.settings = settings
    }

    /// What is known about a request as it goes through the steps, for its usage record.
    struct Exchange: Sendable {
        var head: ProxyRequestHead
        var requestID: String
        var startedAtUnixMs: Int64
        var path: Substring
        var query: Substring
        var api: RoutedApi?
        var resource: CompiledResource?
        var info: KeyValidationInfo?
        /// The credential presented, for JWT-claim conditions.
        var bearerToken: String?
        var cacheHit = false
        var throttledReason = ""
        var faultCode: Int32 = 0
        var faultMessage = ""
    }

    func decide(_ head: ProxyRequestHead) -> ProxyDecision {
        let now = Clock.unixMs()
        let state = deployment.current
        let uri = Substring(head.uri)
        let queryStart = uri.firstIndex(of: "?") ?? uri.endIndex
        var exchange = Exchange(head: head, requestID: head.header(settings.requestIDHeader) ?? Self.newRequestID(), startedAtUnixMs: now,
                                path: uri[..<queryStart], query: uri[queryStart...])

        guard let route = state.routes.route(exchange.path) else {
            if exchange.path == BackendJWTIssuer.jwksPath, head.method == "GET" || head.method == "HEAD" {
                // The backend JWT's public key, for backends to verify it (no API claims the path).
                return respond(HTTPResponse(status: 200, headers: [("Content-Type", "application/jwk-set+json"), ("Cache-Control", "max-age=300")],
                                            body: backendJWT.jwks), &exchange)
            }
            let body = "{\"fault\":{\"code\":404,\"message\":\"Not Found\",\"description\":\"No API is deployed at \(GatewayFault.escapeJSON(String(exchange.path)))\"}}"
            return respond(HTTPResponse(status: 404, headers: [("Content-Type", "application/json; charset=UTF-8")], body: Array(body.utf8)), &exchange)
        }
        let api = route.api
        exchange.api = api
        if api.api.lifecycleState == .blocked { return fault(.apiBlocked, &exchange) }
        let tenant = api.api.tenantDomain
        if state.blocks.blocks(address: head.clientAddress, tenant: tenant)
            || state.blocks.blocks(context: api.api.context, versionedContext: api.deployed.gatewayContext, tenant: tenant) {
            return fault(.blocked, &exchange)
        }

        let verb = HttpVerb(method: head.method)
        let match = verb.map { api.resource(for: route.remainder, verb: $0) } ?? .noResource
        let cors = corsHeaders(api.api.cors, head: head)
        switch match {
        case .matched(let resource):
            exchange.resource = resource
        case .methodNotAllowed(let allowed):
            if verb == .options { return preflight(api.api.cors, head: head, allowed: allowed, &exchange) }
            let allow = allowed.map(\.methodName).joined(separator: ", ")
            var response = GatewayFault(code: 405, status: 405, message: "Method not allowed",
                                        description: "The resource does not accept \(head.method)", namespace: GatewayFault.security)
                .response(accept: head.header("accept"), extraHeaders: cors)
            response.headers.append(("Allow", allow))
            return respond(response, &exchange)
        case .noResource:
            return fault(.noMatchingResource, &exchange, extraHeaders: cors)
        }
        guard let resource = exchange.resource else { return fault(.noMatchingResource, &exchange) }

        let authType = resource.resource.authType
        if authType == .none || authType == .unspecified {
            return afterAuthentication(&exchange, route: route, state: state, token: nil, cors: cors, now: now)
        }
        let headerName = api.api.authorizationHeader.isEmpty ? "Authorization" : api.api.authorizationHeader
        guard let token = Self.bearerToken(head.header(headerName)) else { return fault(.missingCredentials, &exchange, extraHeaders: cors) }
        exchange.bearerToken = token
        let key = ValidationCache.ResourceKey(apiID: api.api.id, resource: resource.resource.uriTemplate, verb: resource.resource.verb,
                                              viaDefault: route.viaDefaultVersion)
        switch cache.lookup(token: token, key: key, now: now) {
        case .valid(let info):
            exchange.info = info
            exchange.cacheHit = true
            metrics.validationCacheHit()
            return afterAuthentication(&exchange, route: route, state: state, token: token, cors: cors, now: now)
        case .invalid:
            exchange.cacheHit = true
            metrics.validationCacheHit()
            return fault(.invalidCredentials, &exchange, extraHeaders: cors)
        case .miss:
            metrics.validationCacheMiss()
            if JWTShape.matches(token) {
                switch jwt.verify(token, api: api.api, resource: resource.resource, now: now) {
                case .decided(let info):
                    metrics.jwtCheckedLocally()
                    cache.store(token: token, tokenHash: SecretHasher.tokenHash(token), key: key, info: info, now: now)
                    if !info.authorized { return fault(.validation(info.validationStatus), &exchange, extraHeaders: cors) }
                    exchange.info = info
                    return afterAuthentication(&exchange, route: route, state: state, token: token, cors: cors, now: now)
                case .unknownKey:
                    // A key rotated in since the last fetch: fetch now (rate-limited), then decide.
                    let pending = exchange
                    return .deferred { [self] in
                        var exchange = pending
                        let now = Clock.unixMs()
                        if now - jwt.keysFetchedAtMs > 1000, let peers { _ = await jwt.refresh(peers: peers, now: now) }
                        guard case .decided(let info) = jwt.verify(token, api: api.api, resource: resource.resource, now: now) else {
                            // Still unknown (a retired or foreign key): refused, like a bad signature.
                            return fault(.invalidCredentials, &exchange, extraHeaders: cors)
                        }
                        cache.store(token: token, tokenHash: SecretHasher.tokenHash(token), key: key, info: info, now: now)
                        if !info.authorized { return fault(.validation(info.validationStatus), &exchange, extraHeaders: cors) }
                        exchange.info = info
                        return afterAuthentication(&exchange, route: route, state: deployment.current, token: token, cors: cors, now: now)
                    }
                case .askKeymanager:
                    break
                }
            }
            guard let tokenID = SecretHasher.tokenID(of: token) else {
                // Not a token any keymanager issued: no need to ask.
                cache.store(token: token, tokenHash: [], key: key, info: Self.invalidInfo, now: now)
                return fault(.invalidCredentials, &exchange, extraHeaders: cors)
            }
            let query = KeyValidationQuery(context: api.api.context, version: api.api.version,
                                           token: token, tokenHash: SecretHasher.tokenHash(token), tokenID: tokenID,
                                           requiredAuthLevel: authType, clientDomain: head.header("referer"),
                                           matchingResource: resource.resource.uriTemplate, verb: resource.resource.verb)
            let pending = exchange
            return .deferred { [self] in
                var exchange = pending
                let started = ContinuousClock.now
                let info: KeyValidationInfo
                do {
                    info = try await validator.validate(query)
                } catch {
                    metrics.validationFinished(ContinuousClock.now - started, failed: true)
                    return fault(.generalError, &exchange, extraHeaders: cors)
                }
                metrics.validationFinished(ContinuousClock.now - started, failed: false)
                let now = Clock.unixMs()
                cache.store(token: token, tokenHash: query.tokenHash, key: key, info: info, now: now)
                exchange.info = info
                // The state may have moved on while the keymanager answered: serve from the newest.
                return afterAuthentication(&exchange, route: route, state: deployment.current, token: token, cors: cors, now: now)
            }
        }
    }

    static let invalidInfo: KeyValidationInfo = {
        var info = KeyValidationInfo()
        info.authorized = false
        info.validationStatus = 900901
        return info
    }()

    /// The token of an `Authorization: Bearer …` value (the scheme matched
    /// without regard to case, as RFC 6750 allows).
    /// Works on the UTF-8 bytes: this runs on every authenticated request,
    /// and character-by-character `Substring` work cost several times more.
    static func bearerToken(_ value: String?) -> String? {
        guard let value else { return nil }
        let bytes = value.utf8
        let space = UInt8(ascii: " ")
        guard var start = bytes.firstIndex(where: { $0 != space }) else { return nil }
        let scheme = "bearer ".utf8
        for expected in scheme {
            guard start < bytes.endIndex else { return nil }
            let byte = bytes[start]
            // ASCII letters match either case; the space must be a space.
            guard byte == expected || (expected != space && byte | 0x20 == expected) else { return nil }
            start = bytes.index(after: start)
        }
        while start < bytes.endIndex && bytes[start] == space { start = bytes.index(after: start) }
        guard let last = bytes[start...].lastIndex(where: { $0 != space }) else { return nil }
        return String(decoding: bytes[start...last], as: UTF8.self)
    }

    private func afterAuthentication(_ exchange: inout Exchange, route: RoutingTable.Route, state: DeploymentState, token: String?,
                                     cors: [(name: String, value: String)], now: Int64) -> ProxyDecision {
        let api = route.api
        var keyType = KeyType.production
        var responseHeaders = cors
        if let info = exchange.info {
            guard info.authorized else { return fault(.validation(info.validationStatus), &exchange, extraHeaders: cors) }
            keyType = info.keyType == .sandbox ? .sandbox : .production
            let tenant = api.api.tenantDomain
            if state.blocks.hasCallerConditions(tenant: tenant), state.blocks.blocks(application: "\(info.subscriber):\(info.applicationName)", tenant: tenant)
                || state.blocks.blocks(user: info.endUserName, userTenant: info.subscriberTenantDomain, tenant: tenant) {
                return fault(.blocked, &exchange, extraHeaders: cors)
            }
        }
        let request = throttleRequest(exchange, api: api, keyType: keyType, state: state)
        switch throttling.admit(request) {
        case .wait(let wait):
            let pending = exchange
            let headers = responseHeaders
            let keyType = keyType
            return .deferred { [self] in
                var exchange = pending
                var responseHeaders = headers
                var outcome = ThrottleOutcome.wait(wait)
                // Each round is one lease exchange (bounded by the lease timeout); near the
                // limit others may take the units granted meanwhile, so ask again a few times.
                for _ in 0..<Self.maxLeaseRounds {
                    guard case .wait(let next) = outcome else { break }
                    await throttling.throttler.waitForLease(next)
                    outcome = throttling.throttler.admit(request, now: Clock.unixMs())
                }
                if case .wait(let next) = outcome {
                    return fault(.throttled(next.kind), &exchange, extraHeaders: headers + [("Retry-After", "1")])
                }
                if let refusal = throttled(outcome, &exchange, responseHeaders: &responseHeaders, now: Clock.unixMs()) { return refusal }
                return forward(&exchange, route: route, keyType: keyType, token: token, cors: cors, responseHeaders: responseHeaders, now: Clock.unixMs())
            }
        case let outcome:
            if let refusal = throttled(outcome, &exchange, responseHeaders: &responseHeaders, now: now) { return refusal }
        }
        return forward(&exchange, route: route, keyType: keyType, token: token, cors: cors, responseHeaders: responseHeaders, now: now)
    }

    /// Rounds of lease exchanges a request waits through before it is refused.
    static let maxLeaseRounds = 32

    /// The endpoint step: the key type's endpoints that are not suspended.
    private func forward(_ exchange: inout Exchange, route: RoutingTable.Route, keyType: KeyType, token: String?,
                         cors: [(name: String, value: String)], responseHeaders: [(name: String, value: String)], now: Int64) -> ProxyDecision {
        let api = route.api
        var responseHeaders = responseHeaders
        guard let group = keyType == .sandbox ? api.sandbox : api.production else {
            let description = keyType == .sandbox ? "Sandbox key offered to the API with no sandbox endpoint"
                : "Production key offered to the API with no production endpoint"
            return fault(GatewayFault(code: 900901, status: 401, message: "Invalid Credentials", description: description,
                                      namespace: GatewayFault.security), &exchange, extraHeaders: cors)
        }
        var candidates = group.candidates(health: health, now: now)
        guard !candidates.isEmpty else {
            return fault(GatewayFault(code: 303001, status: 503, message: "Endpoint suspended",
                                      description: "Every endpoint of the API is suspended after failing", namespace: GatewayFault.security),
                         &exchange, extraHeaders: cors)
        }
        for index in candidates.indices {
            if candidates[index].connectTimeoutMs == 0 { candidates[index].connectTimeoutMs = settings.endpointDefaults.connectTimeoutMs }
            if candidates[index].readTimeoutMs == 0 { candidates[index].readTimeoutMs = settings.endpointDefaults.readTimeoutMs }
        }
        let head = exchange.head
        let authHeader = api.api.authorizationHeader.isEmpty ? "Authorization" : api.api.authorizationHeader
        var headers = Self.forwardedHeaders(head, removing: token == nil ? nil : authHeader, assertionHeader: backendJWT.headerName,
                                            requestIDHeader: settings.requestIDHeader, requestID: exchange.requestID)
        if api.api.backendJwt, let token, let info = exchange.info, let assertion = backendJWT.assertion(token: token, info: info, api: api, now: now) {
            headers.append((backendJWT.headerName, assertion))
        }
        responseHeaders.append((settings.requestIDHeader, exchange.requestID))
        let completed = exchange
        return .forward(ForwardPlan(
            candidates: candidates, path: String(route.remainder) + String(exchange.query), headers: headers, responseHeaders: responseHeaders,
            maxRequestBodyBytes: settings.maxRequestBodyBytes,
            unavailable: { failures in Self.unavailable(failures, accept: head.header("accept")) },
            finished: { [self] outcome in finished(completed, group: group, outcome: outcome) }))
    }

    /// Applies the throttler's verdict (not `.wait`): a refusal answers with
    /// WSO2's fault, `Retry-After` and the `RateLimit-*` fields; an
    /// admission adds the fields to the response and marks a request let
    /// past a spent quota (stop-on-quota-reach off) in its usage record.
    private func throttled(_ outcome: ThrottleOutcome, _ exchange: inout Exchange, responseHeaders: inout [(name: String, value: String)],
                           now: Int64) -> ProxyDecision? {
        switch outcome {
        case .admit(let rateLimit, let marked):
            if let rateLimit { Self.addRateLimitHeaders(rateLimit, to: &responseHeaders) }
            if !marked.isEmpty { exchange.throttledReason = "SUBSCRIPTION_LIMIT_EXCEEDED_ADMITTED" }
            return nil
        case .refuse(let refusal):
            exchange.throttledReason = switch refusal.kind {
            case .api: "API_LIMIT_EXCEEDED"
            case .resource: "RESOURCE_LIMIT_EXCEEDED"
            case .subscription: "SUBSCRIPTION_LIMIT_EXCEEDED"
            case .spikeArrest: "SPIKE_ARREST"
            case .application: "APPLICATION_LIMIT_EXCEEDED"
            case .custom: "CUSTOM_POLICY_LIMIT_EXCEEDED"
            case .hardLimit: "HARD_LIMIT_EXCEEDED"
            }
            var headers = responseHeaders
            if let retry = refusal.retryAfterSeconds { headers.append(("Retry-After", String(max(1, retry)))) }
            if let rateLimit = refusal.rateLimit { Self.addRateLimitHeaders(rateLimit, to: &headers) }
            return fault(.throttled(refusal.kind), &exchange, extraHeaders: headers)
        case .wait:
            return nil
        }
    }

    static func addRateLimitHeaders(_ values: RateLimitValues, to headers: inout [(name: String, value: String)]) {
        headers.append(("RateLimit-Limit", String(values.limit)))
        headers.append(("RateLimit-Remaining", String(values.remaining)))
        headers.append(("RateLimit-Reset", String(max(0, values.resetSeconds))))
    }

    // MARK: Headers

    /// The client's header fields as the backend gets them: hop-by-hop
    /// fields, the credential and `Expect` removed; `Host` left for the
    /// listener to set; `X-Forwarded-*` and the request id added. The
    /// backend JWT's field is always removed: only the gateway sets it, so a
    /// backend never takes a client's for the gateway's.
    static func forwardedHeaders(_ head: ProxyRequestHead, removing credentialHeader: String?, assertionHeader: String, requestIDHeader: String,
                                 requestID: String) -> [(name: String, value: String)] {
        var connectionNamed: [String] = []
        var forwardedFor: String?
        var hasRequestID = false
        for field in head.headers where field.name.caseInsensitiveEquals("connection") {
            for token in field.value.split(separator: ",") {
                let name = token.trimmingCharacters(in: .whitespaces)
                if !name.caseInsensitiveEquals("keep-alive") && !name.caseInsensitiveEquals("close") { connectionNamed.append(name) }
            }
        }
        var headers: [(name: String, value: String)] = []
        headers.reserveCapacity(head.headers.count + 4)
        for field in head.headers {
            let name = field.name
            if HopByHopFields.contains(name) || name.caseInsensitiveEquals("host") || name.caseInsensitiveEquals("expect")
                || name.caseInsensitiveEquals("content-length") { continue }
            if !connectionNamed.isEmpty && connectionNamed.contains(where: { $0.caseInsensitiveEquals(name) }) { continue }
            if let credentialHeader, name.caseInsensitiveEquals(credentialHeader) { continue }
            if name.caseInsensitiveEquals(assertionHeader) { continue }
            if name.caseInsensitiveEquals("x-forwarded-for") {
                forwardedFor = forwardedFor.map { $0 + ", " + field.value } ?? field.value
                continue
            }
            if name.caseInsensitiveEquals("x-forwarded-proto") || name.caseInsensitiveEquals("x-forwarded-host") { continue }
            if name.caseInsensitiveEquals(requestIDHeader) { hasRequestID = true }
            headers.append(field)
        }
        headers.append(("X-Forwarded-For", forwardedFor.map { $0 + ", " + head.clientAddress } ?? head.clientAddress))
        headers.append(("X-Forwarded-Proto", head.isSecure ? "https" : "http"))
        if let host = head.host { headers.append(("X-Forwarded-Host", host)) }
        if !hasRequestID { headers.append((requestIDHeader, requestID)) }
        return headers
    }

    /// CORS response fields for a request with an allowed `Origin`.
    func corsHeaders(_ cors: CorsConfig?, head: ProxyRequestHead) -> [(name: String, value: String)] {
        guard let cors, cors.enabled, let origin = head.header("origin") else { return [] }
        guard cors.allowOrigins.contains("*") || cors.allowOrigins.contains(origin) else { return [] }
        var headers: [(name: String, value: String)] = [("Access-Control-Allow-Origin", cors.allowOrigins.contains("*") && !cors.allowCredentials ? "*" : origin)]
        if cors.allowCredentials { headers.append(("Access-Control-Allow-Credentials", "true")) }
        if !(cors.allowOrigins.contains("*") && !cors.allowCredentials) { headers.append(("Vary", "Origin")) }
        return headers
    }

    /// An `OPTIONS` the API does not declare: the CORS preflight answer.
    private func preflight(_ cors: CorsConfig?, head: ProxyRequestHead, allowed: [HttpVerb], _ exchange: inout Exchange) -> ProxyDecision {
        var headers = corsHeaders(cors, head: head)
        let methods = (cors?.allowMethods.isEmpty == false ? cors!.allowMethods : allowed).map(\.methodName)
        headers.append(("Allow", (methods + ["OPTIONS"]).joined(separator: ", ")))
        if !headers.isEmpty, let cors, cors.enabled, headers.contains(where: { $0.name == "Access-Control-Allow-Origin" }) {
            headers.append(("Access-Control-Allow-Methods", (methods + ["OPTIONS"]).joined(separator: ", ")))
            if !cors.allowHeaders.isEmpty { headers.append(("Access-Control-Allow-Headers", cors.allowHeaders.joined(separator: ", "))) }
        }
        return respond(HTTPResponse(status: 200, headers: headers), &exchange)
    }

    // MARK: Answers and records

    private func fault(_ fault: GatewayFault, _ exchange: inout Exchange, extraHeaders: [(name: String, value: String)] = []) -> ProxyDecision {
        exchange.faultCode = fault.code
        exchange.faultMessage = fault.message
        var headers = extraHeaders
        headers.append((settings.requestIDHeader, exchange.requestID))
        return respond(fault.response(accept: exchange.head.header("accept"), extraHeaders: headers), &exchange)
    }

    private func respond(_ response: HTTPResponse, _ exchange: inout Exchange) -> ProxyDecision {
        let completed = exchange
        return .respond(response) { [self] outcome in finished(completed, group: nil, outcome: outcome) }
    }

    static func unavailable(_ failures: [(target: BackendTarget, failure: BackendFailure)], accept: String?) -> HTTPResponse {
        let timedOut = failures.last?.failure == .readTimeout
        let fault = timedOut
            ? GatewayFault(code: 101504, status: 504, message: "Gateway Timeout", description: "The backend did not answer in time", namespace: GatewayFault.security)
            : GatewayFault(code: 101503, status: 502, message: "Error connecting to the back end",
                           description: "No endpoint of the API accepted the connection", namespace: GatewayFault.security)
        return fault.response(accept: accept)
    }

    /// Endpoint health, metrics, quotas by bytes and the usage record, once per request.
    private func finished(_ exchange: Exchange, group: EndpointGroup?, outcome: ProxyOutcome) {
        let now = Clock.unixMs()
        var destination = ""
        if let group {
            for (target, failure) in outcome.failures {
                if let endpoint = group.endpoint(for: target) {
                    health.recordFailure(endpoint, failure: failure.endpointFailure, status: nil, now: now,
                                         hasAlternatives: group.endpoints.count > 1)
                }
            }
            if let target = outcome.target, let entry = group.entry(for: target) {
                let endpoint = entry.endpoint
                destination = entry.destination
                if (endpoint.suspension?.failureHttpStatuses ?? []).contains(UInt32(outcome.status)) {
                    health.recordFailure(endpoint, failure: nil, status: outcome.status, now: now, hasAlternatives: group.endpoints.count > 1)
                } else {
                    health.recordSuccess(endpoint.url)
                }
            }
        }
        metrics.requestFinished(api: exchange.api?.metricsName ?? "", status: outcome.status, totalNanoseconds: outcome.totalNanoseconds)

        // Made in one initializer: a default event's fields set one by one would copy its shared storage first.
        let info = exchange.info, api = exchange.api?.api
        let responseTimeMs = Int64(outcome.totalNanoseconds / 1_000_000), backendTimeMs = Int64(outcome.backendNanoseconds / 1_000_000)
        // Refused by a block condition (the throttler's too) or a blocked API or subscription: blocked, not throttled.
        let blocked = exchange.faultCode == GatewayFault.blocked.code || exchange.faultCode == GatewayFault.apiBlocked.code
        var fault: UsageFault?
        if exchange.faultCode != 0 {
            fault = UsageFault(errorCode: exchange.faultCode, errorMessage: exchange.faultMessage)
        } else if outcome.target == nil && !outcome.failures.isEmpty {
            fault = UsageFault(errorCode: outcome.failures.last?.failure == .readTimeout ? 101504 : 101503,
                               errorMessage: outcome.failures.map { "\($0.target): \($0.failure.rawValue)" }.joined(separator: "; "))
        }
        let event = UsageEvent(
            correlationId: exchange.requestID, gatewayId: settings.gatewayID, requestTimestampUnixMs: exchange.startedAtUnixMs,
            consumerKey: info?.consumerKey ?? "", keyType: info?.keyType ?? .unspecified, applicationId: info?.applicationId ?? "",
            applicationName: info?.applicationName ?? "", applicationOwner: info?.subscriber ?? "",
            apiName: api?.name ?? "", apiVersion: api?.version ?? "", apiContext: api?.context ?? "", apiCreator: api?.provider ?? "",
            apiCreatorTenantDomain: api?.tenantDomain ?? "", resource: exchange.resource?.resource.uriTemplate ?? "",
            requestPath: String(exchange.path), verb: HttpVerb(method: exchange.head.method) ?? .unspecified,
            subscriptionPolicy: info?.subscriptionPolicy ?? "", username: info?.endUserName ?? "", userTenantDomain: info?.subscriberTenantDomain ?? "",
            clientIp: exchange.head.clientAddress, userAgent: exchange.head.header("user-agent") ?? "",
            responseTimeMs: responseTimeMs, backendTimeMs: backendTimeMs, serviceTimeMs: max(0, responseTimeMs - backendTimeMs),
            responseTimeUs: Int64(outcome.totalNanoseconds / 1000), backendTimeUs: Int64(outcome.backendNanoseconds / 1000),
            responseCode: Int32(outcome.status), requestSizeBytes: outcome.requestBodyBytes, responseSizeBytes: outcome.responseBodyBytes,
            destination: destination.isEmpty ? outcome.target?.description ?? "" : destination, cacheHit: exchange.cacheHit,
            throttled: !exchange.throttledReason.isEmpty && exchange.faultCode != 0 && !blocked,
            throttledReason: blocked ? "" : exchange.throttledReason, fault: fault, blocked: blocked)
        if !usage.enqueue(event) { metrics.usageEventDropped() }
    }

    /// A random prefix per process and a counter: unique without a system
    /// call per request (the system's random source costs one each).
    static func newRequestID() -> String {
        let sequence = requestSequence.add(1, ordering: .relaxed).newValue
        // 32 hex digits written straight into the string's storage: one allocation per request.
        let prefix = requestIDPrefix
        return String(unsafeUninitializedCapacity: 32) { buffer in
            for digit in 0..<16 {
                let shift = UInt64(60 - 4 * digit)
                buffer[digit] = hexDigits[Int((prefix >> shift) & 0xF)]
                buffer[16 + digit] = hexDigits[Int((sequence >> shift) & 0xF)]
            }
            return 32
        }
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)
    private static let requestSequence = Atomic<UInt64>(0)
    private static let requestIDPrefix: UInt64 = {
        var generator = SystemRandomNumberGenerator()
        return generator.next()
    }()
}
