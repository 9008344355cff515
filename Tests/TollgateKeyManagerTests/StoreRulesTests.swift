import Foundation
import RPCCore
import Testing
import TollgateKeyManager
import TollgateProto
import TollgateServices
import TollgateStorage

@Suite struct StoreRulesTests {
    @Test func subscribedTokenValidatesWithTheGoldLimits() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        let api = try await fixture.api()
        let consumer = try await fixture.consumer("alice", subscribedTo: api)
        let info = try await fixture.validate(consumer.token, api)
        #expect(info.authorized && info.validationStatus == 0, "\(info)")
        #expect(info.subscriptionPolicy == "Gold" && info.applicationPolicy == "50PerMin")
        #expect(info.subscriptionLimit?.quota == .requestCount(5000) && info.applicationLimit?.quota == .requestCount(50), "\(info)")
        #expect(info.subscriber == "alice" && info.applicationName == "alice-app" && info.consumerKey == consumer.consumerKey)
        #expect(info.keyType == .production && info.apiName == "PizzaShack" && info.apiPublisher == "root")
        #expect(info.expiresAtUnixMs.map { $0 > info.issuedAtUnixMs } == true && info.throttlingData == ["api_level_throttling_key"])

        // The `_default_` version prefix WSO2 gateways send names the same API.
        let context = ValidateKeyRequest(context: api.context, version: "_default_" + api.version, tokenHash: SecretHasher.tokenHash(consumer.token),
                                         requiredAuthLevel: .any, matchingResource: "/menu", verb: .get)
        #expect(try await fixture.gateway.validateKey(context).info?.authorized == true)
    }

    @Test func refusalsCarryWSO2StatusCodes() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        let api = try await fixture.api(scopes: [ApiScope(key: "orders:write", name: "Write orders", roles: ["admin"])],
                                        resources: [ApiResource(uriTemplate: "/menu", verb: .get, authType: .any),
                                                    ApiResource(uriTemplate: "/order", verb: .post, authType: .applicationUser, scope: "orders:write"),
                                                    ApiResource(uriTemplate: "/admin", verb: .get, authType: .application)])
        let other = try await fixture.api("Other", context: "/other")
        let alice = try await fixture.consumer("alice", subscribedTo: api)

        #expect(try await fixture.validate("not-a-token", api).validationStatus == KeyValidationStatus.invalidCredentials)
        #expect(try await fixture.validate(alice.token, other).validationStatus == KeyValidationStatus.resourceForbidden)
        // An application token on an Application_User resource, and the reverse.
        #expect(try await fixture.validate(alice.token, api, resource: "/order", verb: .post, level: .applicationUser).validationStatus
                == KeyValidationStatus.incorrectTokenType)
        let password = await fixture.post("/oauth2/token", [("grant_type", "password"), ("username", "alice"), ("password", ConsumerFixture.password)],
                                          basic: (alice.consumerKey, alice.consumerSecret))
        let userToken = try #require(password.json["access_token"] as? String, "\(password.json)")
        #expect(try await fixture.validate(userToken, api, resource: "/admin", level: .application).validationStatus == KeyValidationStatus.incorrectTokenType)
        // The resource needs a scope the token lacks.
        #expect(try await fixture.validate(userToken, api, resource: "/order", verb: .post, level: .applicationUser).validationStatus
                == KeyValidationStatus.invalidScope)
        // A key restricted to some domains refuses other Referers.
        let bob = try await fixture.user("bob", roles: ["subscriber"])
        let bobStore = fixture.storeClient(bob)
        let app = try #require(try await bobStore.createApplication(CreateApplicationRequest(application: Application(name: "web"))).application)
        _ = try await bobStore.subscribe(SubscribeRequest(applicationId: app.id, apiId: api.id, throttlingPolicy: "Unlimited"))
        let keys = try await bobStore.generateKeys(GenerateKeysRequest(applicationId: app.id, keyType: .production, allowedDomains: ["*.example.com"]))
        let bobToken = try #require(keys.applicationToken?.accessToken)
        #expect(try await fixture.validate(bobToken, api, referer: "https://shop.example.com/cart").authorized)
        #expect(try await fixture.validate(bobToken, api, referer: "https://evil.test/").validationStatus == KeyValidationStatus.invalidCredentials)
        #expect(try await fixture.validate(bobToken, api).validationStatus == KeyValidationStatus.invalidCredentials)
    }

    @Test func blockedSubscriptionsFailAndProductionOnlyBlocksOnlyProductionKeys() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        let api = try await fixture.api()
        let alice = try await fixture.consumer("alice", subscribedTo: api)
        let sandboxKeys = try await fixture.storeClient(alice.options).generateKeys(GenerateKeysRequest(applicationId: alice.application.id, keyType: .sandbox))
        let sandboxToken = try #require(sandboxKeys.applicationToken?.accessToken)
        let publisher = PublisherServiceClient(fixture.transport, defaultOptions: try await fixture.session("root"))
        let subscription = try #require(alice.subscription)

        let before = try fixture.keyManager.revocations.currentSequence()
        _ = try await publisher.blockSubscription(BlockSubscriptionRequest(subscriptionId: subscription.id, productionOnly: true))
        #expect(try await fixture.validate(alice.token, api).validationStatus == KeyValidationStatus.apiBlocked)
        #expect(try await fixture.validate(sandboxToken, api).authorized)
        _ = try await publisher.blockSubscription(BlockSubscriptionRequest(subscriptionId: subscription.id, productionOnly: false))
        #expect(try await fixture.validate(sandboxToken, api).validationStatus == KeyValidationStatus.apiBlocked)
        // Gateways hear of each change through the revocation feed.
        #expect(try fixture.keyManager.revocations.currentSequence() >= before + 2)
        _ = try await publisher.unblockSubscription(UnblockSubscriptionRequest(subscriptionId: subscription.id))
        #expect(try await fixture.validate(alice.token, api).authorized)
    }

    @Test func deprecatedApisAreShownButNotSubscribableAndRetiredOnesEndTheirSubscriptions() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        let api = try await fixture.api()
        let alice = try await fixture.consumer("alice", subscribedTo: api)
        let root = PublisherServiceClient(fixture.transport, defaultOptions: try await fixture.session("root"))
        _ = try await root.changeLifecycle(ChangeLifecycleRequest(apiId: api.id, targetState: .deprecated))
        let bob = try await fixture.user("bob", roles: ["subscriber"])
        let store = fixture.storeClient(bob)
        let listed = try await store.listPublishedApis(ListPublishedApisRequest()).apis
        #expect(listed.map(\.name) == ["PizzaShack"] && listed.first?.lifecycleState == .deprecated)
        let app = try #require(try await store.createApplication(CreateApplicationRequest(application: Application(name: "b"))).application)
        await expectStatus(.failedPrecondition, "deprecated") {
            _ = try await store.subscribe(SubscribeRequest(applicationId: app.id, apiId: api.id, throttlingPolicy: "Gold"))
        }
        // Existing subscriptions keep working while deprecated, and end with retirement.
        #expect(try await fixture.validate(alice.token, api).authorized)
        _ = try await root.changeLifecycle(ChangeLifecycleRequest(apiId: api.id, targetState: .retired))
        #expect(try await fixture.validate(alice.token, api).validationStatus == KeyValidationStatus.resourceForbidden)
        #expect(try await store.listPublishedApis(ListPublishedApisRequest()).apis.isEmpty)
    }

    @Test func tiersMustBeOfferedAndApplicationNamesUniquePerOwner() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        let api = try await fixture.api()
        let alice = try await fixture.user("alice", roles: ["subscriber"])
        let store = fixture.storeClient(alice)
        let app = try #require(try await store.createApplication(CreateApplicationRequest(application: Application(name: "mobile"))).application)
        await expectStatus(.alreadyExists, "mobile") { _ = try await store.createApplication(CreateApplicationRequest(application: Application(name: "mobile"))) }
        await expectStatus(.invalidArgument, "Gold, Unlimited") {
            _ = try await store.subscribe(SubscribeRequest(applicationId: app.id, apiId: api.id, throttlingPolicy: "Bronze"))
        }
        await expectStatus(.invalidArgument, "tier") { _ = try await store.createApplication(CreateApplicationRequest(application: Application(name: "x", throttlingPolicy: "NoSuchTier"))) }
        _ = try await store.subscribe(SubscribeRequest(applicationId: app.id, apiId: api.id, throttlingPolicy: "Gold"))
        await expectStatus(.alreadyExists, "already subscribed") {
            _ = try await store.subscribe(SubscribeRequest(applicationId: app.id, apiId: api.id, throttlingPolicy: "Unlimited"))
        }
        let details = try await store.getApiDetails(GetApiDetailsRequest(apiId: api.id))
        #expect(details.availablePolicies.map(\.name) == ["Gold", "Unlimited"] && details.gatewayUrls == ["https://gw.example.com:8243/pizzashack/1.0.0"])
    }

    @Test func anotherTenantsApisAndApplicationsAreInvisible() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        let api = try await fixture.api()
        let alice = try await fixture.consumer("alice", subscribedTo: api)
        let root = UserServiceClient(fixture.transport, defaultOptions: try await fixture.session("root"))
        _ = try await root.createTenant(CreateTenantRequest(domain: "acme.com", adminUsername: "boss", adminPassword: "Boss-Secret-1"))
        var signUp = CallOptions()
        signUp.metadata.add("x-tenant", "acme.com")
        _ = try await StoreServiceClient(fixture.transport).signUp(SignUpRequest(username: "mallory", password: "Mallory-Secret-1"), options: signUp)
        let mallory = try await fixture.session("mallory@acme.com", password: "Mallory-Secret-1")
        let store = fixture.storeClient(mallory)
        #expect(try await store.listPublishedApis(ListPublishedApisRequest()).apis.isEmpty)
        await expectStatus(.notFound) { _ = try await store.getApiDetails(GetApiDetailsRequest(apiId: api.id)) }
        await expectStatus(.notFound) { _ = try await store.getApplication(GetApplicationRequest(applicationId: alice.application.id)) }
        await expectStatus(.notFound) { _ = try await store.deleteApplication(DeleteApplicationRequest(applicationId: alice.application.id)) }
        await expectStatus(.notFound) { _ = try await store.subscribe(SubscribeRequest(applicationId: alice.application.id, apiId: api.id, throttlingPolicy: "Gold")) }
        // Nor may another subscriber of the same tenant touch alice's application.
        let bob = fixture.storeClient(try await fixture.user("bob", roles: ["subscriber"]))
        await expectStatus(.notFound) { _ = try await bob.generateApplicationToken(GenerateApplicationTokenRequest(applicationId: alice.application.id, keyType: .production)) }
        #expect(try await bob.listApplications(ListApplicationsRequest()).applications.isEmpty)
        // An anonymous visitor of the super tenant sees the public API.
        #expect(try await StoreServiceClient(fixture.transport).listPublishedApis(ListPublishedApisRequest()).apis.map(\.id) == [api.id])
    }

    @Test func signUpFollowsTheTenantSettingAndGivesTheSubscriberRole() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        let anonymous = StoreServiceClient(fixture.transport)
        let user = try #require(try await anonymous.signUp(SignUpRequest(username: "carol", password: "Carol-Secret-1", email: "carol@example.com")).user)
        #expect(user.roles == ["subscriber"] && user.passwordHash == nil)
        await expectStatus(.invalidArgument) { _ = try await anonymous.signUp(SignUpRequest(username: "dave", password: "short")) }
        await expectStatus(.alreadyExists) { _ = try await anonymous.signUp(SignUpRequest(username: "carol", password: "Carol-Secret-1")) }
        let root = UserServiceClient(fixture.transport, defaultOptions: try await fixture.session("root"))
        _ = try await root.createTenant(CreateTenantRequest(domain: "closed.org", adminUsername: "boss", adminPassword: "Boss-Secret-1"))
        var closed = CallOptions()
        closed.metadata.add("x-tenant", "closed.org")
        await expectStatus(.permissionDenied, "self sign-up is off") {
            _ = try await anonymous.signUp(SignUpRequest(username: "eve", password: "Eve-Secret-123"), options: closed)
        }
    }

    @Test func deletingAnApplicationKillsItsTokensAndTellsGateways() async throws {
        let fixture = try await ConsumerFixture()
        defer { fixture.remove() }
        let api = try await fixture.api()
        let alice = try await fixture.consumer("alice", subscribedTo: api)
        let before = try fixture.keyManager.revocations.currentSequence()
        _ = try await fixture.storeClient(alice.options).deleteApplication(DeleteApplicationRequest(applicationId: alice.application.id))
        #expect(try await fixture.validate(alice.token, api).validationStatus == KeyValidationStatus.invalidCredentials)
        let entries = try #require(try fixture.keyManager.revocations.log.changes(after: before, limit: 10))
        #expect(entries.contains { $0.target == TokenRevocation.Target.consumerKey(alice.consumerKey) } && entries.contains { $0.target == TokenRevocation.Target.applicationId(alice.application.id) })
        #expect(try fixture.keyManager.introspect(token: alice.token).active == false)
    }
}
