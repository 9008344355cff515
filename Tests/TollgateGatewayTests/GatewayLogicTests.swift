import Foundation
import RoleCore
import Testing
import ThrottleCore
@testable import TollgateGateway
import TollgateProto

func deployed(id: String, context: String, version: String, tenant: String = "carbon.super", isDefault: Bool = false,
              resources: [(String, HttpVerb, ResourceAuthType)], endpoint: String = "http://127.0.0.1:9/base") -> DeployedApi {
    var api = Api()
    api.id = id
    api.context = context
    api.version = version
    api.tenantDomain = tenant
    api.lifecycleState = .published
    api.productionEndpoints = EndpointConfig(strategy: .single(Endpoint(url: endpoint)))
    var deployed = DeployedApi()
    deployed.api = api
    let prefix = tenant == "carbon.super" ? "" : "/t/\(tenant)"
    deployed.gatewayContext = prefix + context + "/" + version
    if isDefault { deployed.defaultVersionContext = prefix + context }
    deployed.resources = resources.map { template, verb, auth in
        var resource = ResolvedResource()
        resource.uriTemplate = template
        resource.verb = verb
        resource.authType = auth
        return resource
    }
    return deployed
}

@Suite struct RoutingTests {
    let table = RoutingTable(apis: [
        RoutedApi(deployed(id: "menu-1", context: "/menu", version: "1.0", resources: [("/items", .get, .any), ("/items/{id}", .get, .any),
                                                                                      ("/items/special", .get, .none), ("/*", .post, .any)])),
        RoutedApi(deployed(id: "menu-2", context: "/menu", version: "2.0", isDefault: true, resources: [("/items", .get, .any)])),
        RoutedApi(deployed(id: "acme", context: "/menu", version: "1.0", tenant: "acme.com", resources: [("/items", .get, .any)])),
        RoutedApi(deployed(id: "deep", context: "/a/b", version: "v1", resources: [("/", .get, .any)])),
    ])

    @Test func versionsDefaultVersionAndTenants() throws {
        let v1 = try #require(table.route("/menu/1.0/items"))
        #expect(v1.api.api.id == "menu-1" && v1.remainder == "/items" && !v1.viaDefaultVersion)
        let v2 = try #require(table.route("/menu/2.0/items"))
        #expect(v2.api.api.id == "menu-2" && !v2.viaDefaultVersion)
        let byDefault = try #require(table.route("/menu/items"))
        #expect(byDefault.api.api.id == "menu-2" && byDefault.remainder == "/items" && byDefault.viaDefaultVersion)
        let tenant = try #require(table.route("/t/acme.com/menu/1.0/items"))
        #expect(tenant.api.api.id == "acme")
        let deep = try #require(table.route("/a/b/v1"))
        #expect(deep.api.api.id == "deep" && deep.remainder == "")
        #expect(table.route("/menu/3.0/items")?.api.api.id == "menu-2", "an unknown version segment falls to the default version's prefix")
        #expect(table.route("/nothing/1.0/x") == nil)
        #expect(table.route("/menuX/1.0/items") == nil, "prefixes match whole segments only")
        #expect(table.route("/t/other.com/menu/1.0/items") == nil)
    }

    @Test func templatesMostSpecificFirst() throws {
        let api = try #require(table.route("/menu/1.0/items")).api
        func matched(_ path: Substring, _ verb: HttpVerb) -> String? {
            if case .matched(let resource) = api.resource(for: path, verb: verb) { return resource.resource.uriTemplate }
            return nil
        }
        #expect(matched("/items", .get) == "/items")
        #expect(matched("/items/42", .get) == "/items/{id}")
        #expect(matched("/items/special", .get) == "/items/special", "a literal segment outranks a variable")
        #expect(matched("/anything/at/all", .post) == "/*", "url-mapping /* takes any depth")
        #expect(matched("/items", .head) == "/items", "HEAD is served by GET")
        guard case .methodNotAllowed(let allowed) = api.resource(for: "/items/42", verb: .delete) else {
            Issue.record("DELETE on a GET-only path is not 405")
            return
        }
        #expect(allowed == [.get, .post], "the /* POST mapping matches too, so Allow names both")
        let other = try #require(table.route("/menu/2.0/items")).api
        if case .noResource = other.resource(for: "/items/42", verb: .get) {} else { Issue.record("no template of 2.0 matches /items/42") }
    }
}

@Suite struct BlockTests {
    func block(_ type: BlockConditionType, _ value: String? = nil, range: (String, String)? = nil, invert: Bool = false) -> BlockCondition {
        var condition = BlockCondition()
        condition.id = UUID().uuidString
        condition.conditionType = type
        condition.enabled = true
        condition.invert = invert
        if let value { condition.target = .value(value) }
        if let range { condition.target = .ipRange(IpRange(startAddress: range.0, endAddress: range.1)) }
        return condition
    }

    @Test func addressesRangesAndInversion() {
        let index = BlockConditionSet([block(.ip, "192.0.2.7"), block(.ipRange, range: ("10.0.0.0", "10.0.255.255")), block(.ip, "2001:db8::1")])
        let tenant = "carbon.super"
        #expect(index.blocks(address: "192.0.2.7", tenant: tenant))
        #expect(index.blocks(address: "::ffff:192.0.2.7", tenant: tenant), "an IPv4-mapped address is the IPv4 address")
        #expect(index.blocks(address: "10.0.17.3", tenant: tenant))
        #expect(!index.blocks(address: "10.1.0.0", tenant: tenant))
        #expect(index.blocks(address: "2001:DB8:0:0::1", tenant: tenant))
        #expect(!index.blocks(address: "2001:db8::2", tenant: tenant))
        let inverted = BlockConditionSet([block(.ipRange, range: ("203.0.113.0", "203.0.113.255"), invert: true)])
        #expect(!inverted.blocks(address: "203.0.113.9", tenant: tenant))
        #expect(inverted.blocks(address: "198.51.100.1", tenant: tenant), "an inverted range blocks everything outside it")
        var disabled = block(.ip, "192.0.2.7")
        disabled.enabled = false
        #expect(!BlockConditionSet([disabled]).blocks(address: "192.0.2.7", tenant: tenant))
    }

    @Test func contextsApplicationsUsers() {
        let index = BlockConditionSet([block(.apiContext, "/menu"), block(.application, "alice:web"), block(.user, "bob@carbon.super")])
        let tenant = "carbon.super"
        #expect(index.blocks(context: "/menu", versionedContext: "/menu/1.0", tenant: tenant))
        #expect(!index.blocks(context: "/other", versionedContext: "/other/1", tenant: tenant))
        #expect(index.blocks(application: "alice:web", tenant: tenant) && !index.blocks(application: "alice:cli", tenant: tenant))
        #expect(index.blocks(user: "bob@carbon.super", userTenant: tenant, tenant: tenant) && !index.blocks(user: "alice@carbon.super", userTenant: tenant, tenant: tenant))
    }
}

@Suite struct EndpointTests {
    @Test func urlsParse() throws {
        let defaults = EndpointDefaults(connectTimeoutMs: 1, readTimeoutMs: 2)
        let plain = try #require(BackendTarget(url: "http://backend:8080/api/v1/", endpoint: Endpoint(), defaults: defaults))
        #expect(plain.host == "backend" && plain.port == 8080 && plain.basePath == "/api/v1" && !plain.isSecure)
        let secure = try #require(BackendTarget(url: "https://[::1]/x", endpoint: Endpoint(), defaults: defaults))
        #expect(secure.host == "::1" && secure.port == 443 && secure.isSecure)
        #expect(BackendTarget(url: "ftp://x", endpoint: Endpoint(), defaults: defaults) == nil)
        #expect(BackendTarget(url: "http://x:99999", endpoint: Endpoint(), defaults: defaults) == nil)
    }

    @Test func roundRobinFailoverAndSuspension() throws {
        let health = EndpointHealth()
        let a = Endpoint(url: "http://a:1"), b = Endpoint(url: "http://b:1"), c = Endpoint(url: "http://c:1")
        let balanced = try #require(EndpointGroup(EndpointConfig(strategy: .loadBalanced(LoadBalancedEndpoints(algorithm: .roundRobin, endpoints: [a, b, c]))),
                                                  defaults: EndpointDefaults(connectTimeoutMs: 1, readTimeoutMs: 1)))
        let firsts = (0..<6).map { _ in balanced.candidates(health: health, now: 0).first!.host }
        #expect(firsts == ["a", "b", "c", "a", "b", "c"])
        #expect(balanced.candidates(health: health, now: 0).count == 3, "the others follow, for a connect failure to fall through")

        // One failure suspends (no retries configured), for the initial period, growing by the factor.
        var suspension = EndpointSuspension()
        suspension.initialSuspensionMs = 1000
        suspension.progressionFactor = 2
        suspension.maxSuspensionMs = 3000
        var suspending = b
        suspending.suspension = suspension
        #expect(health.recordFailure(suspending, failure: .connectRefused, status: nil, now: 0))
        #expect(!balanced.candidates(health: health, now: 500).contains { $0.host == "b" })
        #expect(balanced.candidates(health: health, now: 1001).contains { $0.host == "b" })
        #expect(health.recordFailure(suspending, failure: .connectRefused, status: nil, now: 2000))
        #expect(health.suspended(now: 3999) == ["http://b:1"], "the second suspension lasts twice as long")
        #expect(health.recordFailure(suspending, failure: .connectRefused, status: nil, now: 5000))
        #expect(health.suspended(now: 7999) == ["http://b:1"] && health.suspended(now: 8001).isEmpty, "capped at max_suspension_ms")
        health.recordSuccess("http://b:1")
        #expect(health.suspended(now: 5001).isEmpty)

        let failover = try #require(EndpointGroup(EndpointConfig(strategy: .failover(FailoverEndpoints(primary: a, secondaries: [b, c]))),
                                                  defaults: EndpointDefaults(connectTimeoutMs: 1, readTimeoutMs: 1)))
        #expect(failover.candidates(health: health, now: 0).map(\.host) == ["a", "b", "c"])
        #expect(health.recordFailure(a, failure: .connectTimeout, status: nil, now: 0))
        #expect(failover.candidates(health: health, now: 1).map(\.host) == ["b", "c"])
        // Without a policy of its own: never the only endpoint, never for slowness.
        let lone = Endpoint(url: "http://lone:1")
        #expect(!health.recordFailure(lone, failure: .connectRefused, status: nil, now: 0, hasAlternatives: false))
        #expect(!health.recordFailure(Endpoint(url: "http://slow:1"), failure: .readTimeout, status: nil, now: 0))

        // Only the failures the endpoint counts suspend it.
        var picky = c
        var onlyTimeouts = EndpointSuspension()
        onlyTimeouts.countFailures = [.readTimeout]
        picky.suspension = onlyTimeouts
        #expect(!health.recordFailure(picky, failure: .connectRefused, status: nil, now: 0))
        #expect(health.recordFailure(picky, failure: .readTimeout, status: nil, now: 0))
    }
}

@Suite struct ValidationCacheTests {
    func info(app: String, key: String, expires: Int64? = nil) -> KeyValidationInfo {
        var info = KeyValidationInfo()
        info.authorized = true
        info.applicationId = app
        info.consumerKey = key
        info.expiresAtUnixMs = expires
        return info
    }

    let resource = ValidationCache.ResourceKey(apiID: "api-1", resource: "/items", verb: .get, viaDefault: false)
    let other = ValidationCache.ResourceKey(apiID: "api-2", resource: "/items", verb: .get, viaDefault: false)

    func hit(_ cache: ValidationCache, _ token: String, _ key: ValidationCache.ResourceKey, now: Int64 = 0) -> Bool {
        if case .valid = cache.lookup(token: token, key: key, now: now) { return true }
        return false
    }

    @Test func expiryAndNegativeResults() {
        let cache = ValidationCache(maxLifetimeMs: 1000, negativeLifetimeMs: 100, maxEntries: 100)
        cache.store(token: "t1", tokenHash: [1], key: resource, info: info(app: "a", key: "k", expires: 500), now: 0)
        #expect(hit(cache, "t1", resource, now: 499))
        #expect(!hit(cache, "t1", resource, now: 500), "a result lives no longer than its token")
        var invalid = KeyValidationInfo()
        invalid.validationStatus = 900901
        cache.store(token: "bad", tokenHash: [2], key: resource, info: invalid, now: 0)
        if case .invalid = cache.lookup(token: "bad", key: other, now: 99) {} else { Issue.record("an invalid token is remembered for any resource") }
        if case .miss = cache.lookup(token: "bad", key: other, now: 100) {} else { Issue.record("and forgotten after the negative lifetime") }
    }

    @Test func revocationsDropWhatTheyName() {
        let cache = ValidationCache(maxLifetimeMs: 60_000, negativeLifetimeMs: 100, maxEntries: 100)
        cache.store(token: "t1", tokenHash: [1], key: resource, info: info(app: "a", key: "k1"), now: 0)
        cache.store(token: "t1", tokenHash: [1], key: other, info: info(app: "a", key: "k1"), now: 0)
        cache.store(token: "t2", tokenHash: [2], key: resource, info: info(app: "b", key: "k2"), now: 0)
        cache.store(token: "t3", tokenHash: [3], key: other, info: info(app: "c", key: "k3"), now: 0)
        var revocation = TokenRevocation()
        revocation.target = .tokenHash([1])
        #expect(cache.apply(revocation) == 2)
        #expect(!hit(cache, "t1", resource) && !hit(cache, "t1", other) && hit(cache, "t2", resource))
        revocation.target = .consumerKey("k2")
        #expect(cache.apply(revocation) == 1 && !hit(cache, "t2", resource))
        revocation.target = .apiId("api-2")
        #expect(cache.apply(revocation) == 1 && !hit(cache, "t3", other))
        cache.store(token: "t4", tokenHash: [4], key: resource, info: info(app: "d", key: "k4"), now: 0)
        #expect(cache.dropSubscription(applicationID: "d", apiID: "api-1") == 1)
        #expect(cache.statistics.entries == 0)
    }
}

@Suite struct DeploymentStoreTests {
    @Test func savedStateComesBackAndDamageIsAnError() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-gw-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = DeploymentStore(directory: directory)
        #expect(try store.load() == nil)
        var chunk = DeploymentSnapshotChunk()
        chunk.revision = 42
        chunk.apis = [deployed(id: "menu-1", context: "/menu", version: "1.0", resources: [("/items", .get, .any)])]
        chunk.last = true
        try store.save(DeploymentState(snapshot: [chunk], appliedAtUnixMs: 1))
        let loaded = try #require(try store.load())
        #expect(loaded.revision == 42 && loaded.fromDisk && loaded.routes.route("/menu/1.0/items") != nil)

        let bytes = try Data(contentsOf: URL(fileURLWithPath: store.path))
        for cut in [3, 12, bytes.count - 1] {
            try bytes.prefix(cut).write(to: URL(fileURLWithPath: store.path))
            #expect(throws: DeploymentStoreError.self, "cut at \(cut) of \(bytes.count)") { try store.load() }
        }
    }

    /// Each API's encoding is kept between saves; a changed API is a new
    /// definition, so the next save carries the change and keeps the rest.
    @Test func aSaveAfterAChangeCarriesItAndKeepsTheRest() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-gw-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = DeploymentStore(directory: directory)
        var chunk = DeploymentSnapshotChunk()
        chunk.revision = 7
        chunk.apis = [deployed(id: "menu-1", context: "/menu", version: "1.0", resources: [("/items", .get, .any)]),
                      deployed(id: "shop-1", context: "/shop", version: "1.0", resources: [("/cart", .get, .any)])]
        chunk.last = true
        var state = DeploymentState(snapshot: [chunk], appliedAtUnixMs: 1)
        try store.save(state)
        var change = DeploymentChange()
        change.revision = 8
        change.change = .apiUpserted(deployed(id: "menu-1", context: "/menu", version: "1.0", resources: [("/orders", .post, .any)]))
        state = state.applying([change], appliedAtUnixMs: 2)
        try store.save(state)
        let loaded = try #require(try store.load())
        #expect(loaded.revision == 8 && loaded.apis.count == 2)
        let menu = try #require(loaded.routes.route("/menu/1.0/orders"))
        guard case .matched = menu.api.resource(for: "/orders", verb: .post) else { Issue.record("the changed API lost its new resource"); return }
        guard case .noResource = menu.api.resource(for: "/items", verb: .get) else { Issue.record("the changed API kept its old resource"); return }
        let shop = try #require(loaded.routes.route("/shop/1.0/cart"))
        guard case .matched = shop.api.resource(for: "/cart", verb: .get) else { Issue.record("the unchanged API lost its resource"); return }
    }
}

@Suite struct RequestPathTests {
    @Test func bearerTokens() {
        #expect(GatewayPolicy.bearerToken("Bearer abc") == "abc")
        #expect(GatewayPolicy.bearerToken("bearer   abc  ") == "abc")
        #expect(GatewayPolicy.bearerToken("Basic abc") == nil)
        #expect(GatewayPolicy.bearerToken("Bearer ") == nil)
        #expect(GatewayPolicy.bearerToken(nil) == nil)
    }

    @Test func forwardedHeaders() {
        let head = ProxyRequestHead(method: "GET", uri: "/x", headers: [("Host", "gw.example"), ("Authorization", "Bearer t"), ("Connection", "keep-alive, X-Hop"),
                                                                          ("X-Hop", "1"), ("Keep-Alive", "5"), ("X-Forwarded-For", "198.51.100.1"),
                                                                          ("Accept", "*/*"), ("Expect", "100-continue"), ("x-jwt-assertion", "forged")],
                                    clientAddress: "192.0.2.1", isSecure: true, host: "gw.example")
        let headers = GatewayPolicy.forwardedHeaders(head, removing: "authorization", assertionHeader: "X-JWT-Assertion",
                                                     requestIDHeader: "X-Request-ID", requestID: "r1")
        let names = headers.map { $0.name.lowercased() }
        #expect(!names.contains("authorization") && !names.contains("connection") && !names.contains("x-hop") && !names.contains("keep-alive")
            && !names.contains("expect") && !names.contains("host") && !names.contains("x-jwt-assertion"))
        #expect(headers.contains { $0.name == "X-Forwarded-For" && $0.value == "198.51.100.1, 192.0.2.1" })
        #expect(headers.contains { $0.name == "X-Forwarded-Proto" && $0.value == "https" })
        #expect(headers.contains { $0.name == "X-Forwarded-Host" && $0.value == "gw.example" })
        #expect(headers.contains { $0.name == "X-Request-ID" && $0.value == "r1" })
        #expect(headers.contains { $0.name == "Accept" })
    }

    @Test func faultsAsJSONAndXML() throws {
        let json = GatewayFault.invalidCredentials.response(accept: "application/json")
        #expect(json.status == 401 && json.headers.contains { $0.name == "WWW-Authenticate" })
        let body = try #require(try JSONSerialization.jsonObject(with: Data(json.body)) as? [String: [String: Any]])
        #expect(body["fault"]?["code"] as? Int == 900901)
        let xml = GatewayFault.subscriptionThrottled.response(accept: "application/xml")
        #expect(String(decoding: xml.body, as: UTF8.self).contains("<ams:code>900804</ams:code>") && xml.status == 429)
        #expect(GatewayFault.validation(900908).status == 403 && GatewayFault.validation(900907).status == 401)
    }

    @Test func throttleRequestLookups() {
        #expect(GatewayPolicy.queryParameter("?a=1&tier=gold%20plus&b", named: "tier") == "gold plus")
        #expect(GatewayPolicy.queryParameter("?a=1&b", named: "b") == "")
        #expect(GatewayPolicy.queryParameter("", named: "a") == nil)
        // {"sub":"alice","level":3,"groups":["a"]}, unsigned: only the payload is read.
        let payload = Data(#"{"sub":"alice","level":3,"groups":["a"]}"#.utf8).base64EncodedString()
            .replacingOccurrences(of: "=", with: "").replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        let token = "eyJhbGciOiJub25lIn0." + payload + ".sig"
        #expect(GatewayPolicy.jwtClaim(token, named: "sub") == "alice")
        #expect(GatewayPolicy.jwtClaim(token, named: "level") == "3")
        #expect(GatewayPolicy.jwtClaim(token, named: "groups") == #"["a"]"#)
        #expect(GatewayPolicy.jwtClaim(token, named: "missing") == nil)
        #expect(GatewayPolicy.jwtClaim("opaque-token", named: "sub") == nil)
    }

    @Test func throttleRefusalFaults() {
        #expect(GatewayFault.blocked.code == 900805 && GatewayFault.blocked.status == 403)
        let expected: [(ThrottleKind, Int32, Int)] = [(.api, 900800, 429), (.resource, 900802, 429), (.subscription, 900804, 429),
                                                      (.spikeArrest, 900807, 429), (.application, 900803, 429), (.custom, 900806, 429),
                                                      (.hardLimit, 900801, 503)]
        for (kind, code, status) in expected {
            let fault = GatewayFault.throttled(kind)
            #expect(fault.code == code && fault.status == status, "\(kind)")
            #expect(Int(fault.code) == kind.errorCode && fault.status == kind.httpStatus)
        }
    }
}

/// Tables reached by deltas route exactly as tables built whole.
@Suite struct IncrementalRoutingTests {
    /// SplitMix64: a seeded generator, so a failure can be replayed.
    struct SeededGenerator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static func same(_ delta: RoutingTable, _ whole: RoutingTable, paths: [Substring]) -> Bool {
        guard delta.entries == whole.entries, delta.count == whole.count, delta.deepestPrefix == whole.deepestPrefix else { return false }
        return paths.allSatisfy { path in
            let (a, b) = (delta.route(path), whole.route(path))
            return a?.api.api.id == b?.api.api.id && a?.remainder == b?.remainder && a?.viaDefaultVersion == b?.viaDefaultVersion
        }
    }

    @Test(arguments: [1, 2, 3, 4])
    func randomizedDeltasMatchAWholeBuild(seed: UInt64) throws {
        var random = SeededGenerator(state: seed)
        // Few names, versions and tenants, so prefixes collide: defaults of one name, an alias equal to another API's context.
        let contexts = ["/menu", "/menu/1", "/a/b", "/a", "/orders", "/x/y/z"]
        let versions = ["1", "2", "v1"]
        let tenants = ["carbon.super", "carbon.super", "acme.com"]
        var state = DeploymentState.empty
        var revision: UInt64 = 0
        var paths: [Substring] = ["/", "/nothing"]
        for context in contexts {
            for version in versions {
                paths.append(Substring(context + "/" + version + "/items"))
                paths.append(Substring("/t/acme.com" + context + "/" + version))
            }
            paths.append(Substring(context + "/items"))
            paths.append(Substring("/t/acme.com" + context))
        }
        for step in 0..<400 {
            var changes: [DeploymentChange] = []
            for _ in 0..<Int.random(in: 1...3, using: &random) {
                revision += 1
                var change = DeploymentChange()
                change.revision = revision
                let id = "api-\(Int.random(in: 0..<40, using: &random))"
                if Bool.random(using: &random) || state.apis[id] == nil {
                    change.change = .apiUpserted(deployed(id: id, context: contexts.randomElement(using: &random)!,
                                                          version: versions.randomElement(using: &random)!,
                                                          tenant: tenants.randomElement(using: &random)!, isDefault: Bool.random(using: &random),
                                                          resources: [("/items", .get, .any)]))
                } else {
                    change.change = .apiRemoved(id)
                }
                changes.append(change)
            }
            state = state.applying(changes, appliedAtUnixMs: 0)
            let whole = RoutingTable(apis: state.apis.values)
            #expect(Self.same(state.routes, whole, paths: paths), "seed \(seed), step \(step): \(state.routes.entries) vs \(whole.entries)")
        }
        #expect(state.routes.count > 0)
    }

    @Test func unchangedShardsAreShared() {
        let apis = (0..<1000).map { RoutedApi(deployed(id: "api-\($0)", context: "/c\($0)", version: "1", resources: [("/x", .get, .any)])) }
        let table = RoutingTable(apis: apis)
        let added = RoutedApi(deployed(id: "new", context: "/new", version: "1", isDefault: true, resources: [("/x", .get, .any)]))
        let next = table.applying(removing: [], adding: [added])
        #expect(next.count == table.count + 2 && next.route("/new/x")?.api.api.id == "new" && table.route("/new/x") == nil)
        #expect(next.sharedShards(with: table) >= RoutingTable.shardCount - 2, "only the shards of the two new prefixes are copied")
        let removed = next.applying(removing: [apis[7]], adding: [])
        #expect(removed.route("/c7/1/x") == nil && removed.route("/c8/1/x")?.api.api.id == "api-8")
    }
}
