import Foundation
import LMDBKit
import RPCCore
import Testing
import TollgatePolicies
import TollgateProto
import TollgatePublisher
import TollgateServices
import TollgateStorage

@Suite struct ApiDesignTests {
    @Test func createGetUpdateDelete() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let creator = fixture.publisherClient(try await fixture.user("carol", roles: ["creator"]))
        let created = try #require(try await creator.createApi(CreateApiRequest(api: sampleApi())).api)
        #expect(created.provider == "carol" && created.createdBy == "carol")
        #expect(created.lifecycleState == .created && created.revision == 1 && created.tenantDomain == superTenant)
        #expect(created.resources.map(\.authType) == [.any, .applicationUser, .any], "unspecified auth types become ANY")
        #expect(created.transports == [.http, .https] && created.visibility == .public)

        let fetched = try await creator.getApi(GetApiRequest(apiId: created.id)).api
        #expect(fetched == created)

        var change = created
        change.description = "New description"
        change.resources.append(ApiResource(uriTemplate: "/order/{orderId}", verb: .delete))
        let updated = try #require(try await creator.updateApi(UpdateApiRequest(api: change, expectedRevision: 1)).api)
        #expect(updated.revision == 2 && updated.description == "New description" && updated.resources.count == 4)
        await expectStatus(.aborted, "changed meanwhile") {
            _ = try await creator.updateApi(UpdateApiRequest(api: change, expectedRevision: 1))
        }
        change.context = "/other"
        await expectStatus(.invalidArgument, "context cannot change") {
            _ = try await creator.updateApi(UpdateApiRequest(api: change))
        }

        _ = try await creator.deleteApi(DeleteApiRequest(apiId: created.id))
        await expectStatus(.notFound) { _ = try await creator.getApi(GetApiRequest(apiId: created.id)) }
        #expect(try fixture.publisher.registry.lifecycleHistory(api: created.id).isEmpty, "its history went with it")
    }

    @Test(arguments: [
        ({ @Sendable (api: inout Api) in api.context = "pizzashack" }, "context"),
        ({ @Sendable (api: inout Api) in api.context = "/t/acme" }, "reserved for tenants"),
        ({ @Sendable (api: inout Api) in api.context = "/a//b" }, "context"),
        ({ @Sendable (api: inout Api) in api.version = "1 0" }, "version"),
        ({ @Sendable (api: inout Api) in api.name = "Pizza<Shack>" }, "name"),
        ({ @Sendable (api: inout Api) in api.resources = [] }, "at least one resource"),
        ({ @Sendable (api: inout Api) in api.resources[0].uriTemplate = "menu" }, "uri_template"),
        ({ @Sendable (api: inout Api) in api.resources[0].uriTemplate = "/order/{id" }, "uri_template"),
        ({ @Sendable (api: inout Api) in api.resources[0].verb = .unspecified }, "verb"),
        ({ @Sendable (api: inout Api) in api.resources[1] = api.resources[0] }, "appears twice"),
        ({ @Sendable (api: inout Api) in api.resources[0].scope = "read" }, "not one of the API's scopes"),
        ({ @Sendable (api: inout Api) in api.productionEndpoints = EndpointConfig(strategy: .single(Endpoint(url: "ftp://x"))) }, "endpoint URL"),
        ({ @Sendable (api: inout Api) in api.productionEndpoints = EndpointConfig(strategy: .single(Endpoint(url: "https://h:99999/"))) }, "endpoint URL"),
        ({ @Sendable (api: inout Api) in api.subscriptionPolicies = ["Platinum"] }, "Platinum does not exist"),
        ({ @Sendable (api: inout Api) in api.apiPolicy = "NoSuch" }, "advanced policy NoSuch"),
        ({ @Sendable (api: inout Api) in api.visibility = .restricted }, "visible_roles"),
    ] as [(@Sendable (inout Api) -> Void, String)])
    func validationNamesTheProblem(_ breakIt: @Sendable (inout Api) -> Void, _ fragment: String) async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        var api = sampleApi()
        breakIt(&api)
        let draft = api
        await expectStatus(.invalidArgument, fragment) {
            _ = try await fixture.publisher.createApi(draft, actor: "carol", tenant: superTenant)
        }
    }

    @Test func contextsAndNamesAreUniquePerTenant() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        _ = try await fixture.publisher.createApi(sampleApi(), actor: "carol", tenant: superTenant)
        await expectStatus(.alreadyExists, "PizzaShack version 1.0.0 already exists") {
            _ = try await fixture.publisher.createApi(sampleApi(context: "/pizza2"), actor: "carol", tenant: superTenant)
        }
        await expectStatus(.alreadyExists, "context /pizzashack") {
            _ = try await fixture.publisher.createApi(sampleApi("Other", version: "2.0.0"), actor: "carol", tenant: superTenant)
        }
        // The same API's next version shares its context.
        _ = try await fixture.publisher.createApi(sampleApi(version: "2.0.0"), actor: "carol", tenant: superTenant)
        // Another tenant may use the same name and context.
        _ = try await fixture.publisher.createApi(sampleApi(), actor: "dave", tenant: "acme.com")
    }

    @Test func contextsOfDifferentApisMayNotNest() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let store = fixture.publisher
        _ = try await store.createApi(sampleApi("Pizza", version: "v1", context: "/pizza"), actor: "carol", tenant: superTenant)
        // /pizza/v1 would also be where Pizza v1 is served.
        await expectStatus(.alreadyExists, "overlaps context /pizza") {
            _ = try await store.createApi(sampleApi("Other", context: "/pizza/v1"), actor: "dave", tenant: superTenant)
        }
        _ = try await store.createApi(sampleApi("Deep", context: "/food/italian/pizza"), actor: "dave", tenant: superTenant)
        await expectStatus(.alreadyExists, "overlaps context /food/italian/pizza") {
            _ = try await store.createApi(sampleApi("Food", context: "/food"), actor: "dave", tenant: superTenant)
        }
        // A sibling that only shares a prefix of characters is fine.
        _ = try await store.createApi(sampleApi("Pizzeria", context: "/pizzeria"), actor: "dave", tenant: superTenant)
    }

    @Test func updatesKeepTheProviderAndTheTiersPeopleUse() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let store = fixture.publisher
        let api = try await store.createApi(sampleApi(), actor: "carol", tenant: superTenant)
        var change = api
        change.provider = "mallory"
        await #expect(try store.updateApi(change, expectedRevision: nil, actor: "carol", tenant: superTenant).provider == "carol")

        _ = try await store.changeLifecycle(api.id, to: .published, options: .init(), actor: "paul", tenant: superTenant)
        change = try store.getApi(api.id, tenant: superTenant)
        change.subscriptionPolicies = []
        await expectStatus(.failedPrecondition, "at least one subscription policy") {
            _ = try await store.updateApi(change, expectedRevision: nil, actor: "carol", tenant: superTenant)
        }
        try store.apimgt.database.environment.write { txn in
            try store.apimgt.subscriptions.insert(Subscription(id: "sub-1", tenantDomain: superTenant, apiId: api.id, applicationId: "app-1",
                                                               throttlingPolicy: "Gold", status: .unblocked), in: &txn)
        }
        change.subscriptionPolicies = ["Unlimited"]
        await expectStatus(.failedPrecondition, "tier Gold cannot be removed") {
            _ = try await store.updateApi(change, expectedRevision: nil, actor: "carol", tenant: superTenant)
        }
        change.subscriptionPolicies = ["Gold"]
        await #expect(try store.updateApi(change, expectedRevision: nil, actor: "carol", tenant: superTenant).subscriptionPolicies == ["Gold"])
    }

    @Test func sizesAreBounded() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        var api = sampleApi()
        api.resources = (0...ApiValidation.maxResources).map { ApiResource(uriTemplate: "/r\($0)", verb: .get) }
        let tooMany = api
        await expectStatus(.invalidArgument, "at most 1000 resources") { _ = try await fixture.publisher.createApi(tooMany, actor: "carol", tenant: superTenant) }
        api = sampleApi()
        api.tags = (0...ApiValidation.maxTags).map { "tag\($0)" }
        let tags = api
        await expectStatus(.invalidArgument, "at most 50 tags") { _ = try await fixture.publisher.createApi(tags, actor: "carol", tenant: superTenant) }
        api = sampleApi()
        api.provider = String(repeating: "p", count: 97)
        let provider = api
        await expectStatus(.invalidArgument, "not a username") { _ = try await fixture.publisher.createApi(provider, actor: "carol", tenant: superTenant) }
        api = sampleApi()
        api.scopes = (0..<20).map { ApiScope(key: "s\($0)", description: String(repeating: "x", count: 60_000)) }
        let large = api
        await expectStatus(.invalidArgument, "larger than 1 MiB") { _ = try await fixture.publisher.createApi(large, actor: "carol", tenant: superTenant) }
    }

    @Test func tenantNamesIgnoreCase() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let root = try await fixture.session("root")
        _ = try await UserServiceClient(fixture.transport, defaultOptions: root)
            .createTenant(CreateTenantRequest(domain: "acme.com", adminUsername: "boss", adminPassword: PublisherFixture.password))
        let shouting = fixture.publisherClient(try await fixture.session("root", tenant: "ACME.com"))
        let created = try #require(try await shouting.createApi(CreateApiRequest(api: sampleApi())).api)
        #expect(created.tenantDomain == "acme.com")
        let boss = fixture.publisherClient(try await fixture.session("boss@acme.com"))
        #expect(try await boss.getApi(GetApiRequest(apiId: created.id)).api?.id == created.id)
    }

    @Test func newVersionCopiesResourcesDocumentsAndDefinition() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let store = fixture.publisher
        let original = try await store.createApi(sampleApi(), actor: "carol", tenant: superTenant)
        _ = try await store.addDocument(Document(apiId: original.id, name: "Getting started", documentType: .howTo, sourceType: .markdown,
                                           body: .text("# Hello")), actor: "carol", tenant: superTenant)
        let copy = try await store.createNewVersion(original.id, version: "2.0.0", defaultVersion: true, actor: "carol", tenant: superTenant)
        #expect(copy.version == "2.0.0" && copy.id != original.id && copy.lifecycleState == .created && copy.defaultVersion)
        #expect(copy.resources == original.resources && copy.subscriptionPolicies == original.subscriptionPolicies && copy.context == original.context)
        let documents = try store.listDocuments(api: copy.id, pageSize: 0, pageToken: [], tenant: superTenant).documents
        #expect(documents.map(\.name) == ["Getting started"])
        #expect(try store.document(documents[0].id, tenant: superTenant).body == .text("# Hello"))
        await expectStatus(.alreadyExists) {
            _ = try await store.createNewVersion(original.id, version: "2.0.0", defaultVersion: false, actor: "carol", tenant: superTenant)
        }
    }

    @Test func documentsOfEveryKind() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let store = fixture.publisher
        let api = try await store.createApi(sampleApi(), actor: "carol", tenant: superTenant)
        let kinds: [(DocumentType, DocumentSourceType, Document.Body)] = [
            (.howTo, .inline, .text("<p>How</p>")), (.samples, .markdown, .text("```sh\ncurl\n```")),
            (.publicForum, .url, .url("https://forum.example.com")), (.supportForum, .url, .url("https://support.example.com")),
            (.apiMessageFormat, .file, .file(DocumentFile(fileName: "format.pdf", mediaType: "application/pdf", content: [0x25, 0x50, 0x44, 0x46]))),
            (.swagger, .inline, .text("openapi")), (.other, .inline, .text("other")),
        ]
        for (index, (type, source, body)) in kinds.enumerated() {
            _ = try await store.addDocument(Document(apiId: api.id, name: "doc \(index)", documentType: type, otherTypeName: type == .other ? "Changelog" : "",
                                               visibility: .ownerOnly, sourceType: source, body: body), actor: "carol", tenant: superTenant)
        }
        let listed = try store.listDocuments(api: api.id, pageSize: 0, pageToken: [], tenant: superTenant).documents
        #expect(listed.count == kinds.count && listed.allSatisfy { $0.body == nil })
        await expectStatus(.invalidArgument, "disagree") {
            _ = try await store.addDocument(Document(apiId: api.id, name: "bad", documentType: .howTo, sourceType: .url, body: .text("x")),
                                      actor: "carol", tenant: superTenant)
        }
        await expectStatus(.alreadyExists, "doc 0") {
            _ = try await store.addDocument(Document(apiId: api.id, name: "doc 0", documentType: .howTo, sourceType: .inline, body: .text("x")),
                                      actor: "carol", tenant: superTenant)
        }
        var first = try store.document(listed[0].id, tenant: superTenant)
        first.summary = "changed"
        await #expect(try store.updateDocument(first, tenant: superTenant).summary == "changed")
        try await store.deleteDocument(first.id, tenant: superTenant)
        await expectStatus(.notFound) { _ = try store.document(first.id, tenant: superTenant) }
    }
}

@Suite struct LifecycleTests {
    /// How to reach each state from CREATED.
    static let paths: [LifecycleState: [LifecycleState]] = [
        .created: [], .prototyped: [.prototyped], .published: [.published], .blocked: [.published, .blocked],
        .deprecated: [.published, .deprecated], .retired: [.published, .deprecated, .retired],
    ]

    /// WSO2's table, written out pair by pair (not derived from the code's table).
    static let allowed: Set<String> = [
        "CREATED>PUBLISHED", "CREATED>PROTOTYPED",
        "PROTOTYPED>PUBLISHED", "PROTOTYPED>CREATED",
        "PUBLISHED>BLOCKED", "PUBLISHED>DEPRECATED", "PUBLISHED>PROTOTYPED", "PUBLISHED>CREATED",
        "BLOCKED>PUBLISHED", "BLOCKED>DEPRECATED",
        "DEPRECATED>RETIRED",
    ]

    @Test func everyMoveIsAllowedOrRefusedAsWSO2Does() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let store = fixture.publisher
        var checked = 0
        for from in Lifecycle.states {
            for to in Lifecycle.states {
                let api = try await store.createApi(sampleApi("Api\(checked)", context: "/api\(checked)"), actor: "carol", tenant: superTenant)
                for step in Self.paths[from]! {
                    _ = try await store.changeLifecycle(api.id, to: step, options: .init(), actor: "paul", tenant: superTenant)
                }
                let pair = "\(Lifecycle.name(from))>\(Lifecycle.name(to))"
                if Self.allowed.contains(pair) {
                    let result = try await store.changeLifecycle(api.id, to: to, options: .init(comment: pair), actor: "paul", tenant: superTenant)
                    #expect(result.api.lifecycleState == to, "\(pair)")
                    #expect(result.entry.fromState == from && result.entry.toState == to && result.entry.actor == "paul" && result.entry.comment == pair)
                    let history = try store.lifecycleHistory(api.id, tenant: superTenant)
                    #expect(history.map(\.toState) == [.created] + Self.paths[from]! + [to], "\(pair)")
                } else {
                    await expectStatus(.failedPrecondition, "cannot move from \(Lifecycle.name(from)) to \(Lifecycle.name(to))", comment: "\(pair)") {
                        _ = try await store.changeLifecycle(api.id, to: to, options: .init(), actor: "paul", tenant: superTenant)
                    }
                    #expect(try store.getApi(api.id, tenant: superTenant).lifecycleState == from, "\(pair) left the state alone")
                }
                checked += 1
            }
        }
        #expect(checked == 36)
        await expectStatus(.invalidArgument, "target_state") {
            _ = try await store.changeLifecycle(try store.createApi(sampleApi("Last", context: "/last"), actor: "c", tenant: superTenant).id,
                                          to: .unspecified, options: .init(), actor: "paul", tenant: superTenant)
        }
    }

    @Test func publishingNeedsAnEndpointAndATier() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        var draft = sampleApi()
        draft.productionEndpoints = nil
        draft.subscriptionPolicies = []
        let api = try await fixture.publisher.createApi(draft, actor: "carol", tenant: superTenant)
        await expectStatus(.failedPrecondition, "no production or sandbox endpoint") {
            _ = try await fixture.publisher.changeLifecycle(api.id, to: .published, options: .init(), actor: "paul", tenant: superTenant)
        }
        var withEndpoint = api
        withEndpoint.sandboxEndpoints = EndpointConfig(strategy: .single(Endpoint(url: "http://sandbox.local:8080")))
        _ = try await fixture.publisher.updateApi(withEndpoint, expectedRevision: nil, actor: "carol", tenant: superTenant)
        await expectStatus(.failedPrecondition, "offers no subscription policy") {
            _ = try await fixture.publisher.changeLifecycle(api.id, to: .published, options: .init(), actor: "paul", tenant: superTenant)
        }
        // Prototyping needs no tier: nobody subscribes to a prototype.
        _ = try await fixture.publisher.changeLifecycle(api.id, to: .prototyped, options: .init(), actor: "paul", tenant: superTenant)
    }

    @Test func publishOptionsDeprecateOldVersionsAndCarrySubscriptionsOver() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let store = fixture.publisher
        let v1 = try await store.createApi(sampleApi(), actor: "carol", tenant: superTenant)
        _ = try await store.changeLifecycle(v1.id, to: .published, options: .init(), actor: "paul", tenant: superTenant)
        try store.apimgt.database.environment.write { txn in
            for (index, tier) in ["Gold", "Bronze"].enumerated() {
                try store.apimgt.subscriptions.insert(Subscription(id: "sub-\(index)", tenantDomain: superTenant, apiId: v1.id, applicationId: "app-\(index)",
                                                                   throttlingPolicy: tier, status: .unblocked), in: &txn)
            }
        }
        let v2 = try await store.createNewVersion(v1.id, version: "2.0.0", defaultVersion: true, actor: "carol", tenant: superTenant)
        _ = try await store.changeLifecycle(v2.id, to: .published, options: .init(deprecateOldVersions: true), actor: "paul", tenant: superTenant)
        #expect(try store.getApi(v1.id, tenant: superTenant).lifecycleState == .deprecated)
        #expect(try store.lifecycleHistory(v1.id, tenant: superTenant).last?.toState == .deprecated)
        // Gold is offered by 2.0.0 too, Bronze is not: only the Gold subscriber moves over.
        let carried = try store.listSubscriptions(api: v2.id, pageSize: 0, pageToken: [], tenant: superTenant).subscriptions
        #expect(carried.map(\.applicationId) == ["app-0"] && carried[0].apiVersion == "2.0.0")

        let v3 = try await store.createNewVersion(v2.id, version: "3.0.0", defaultVersion: false, actor: "carol", tenant: superTenant)
        _ = try await store.changeLifecycle(v3.id, to: .published, options: .init(requireResubscription: true), actor: "paul", tenant: superTenant)
        #expect(try store.listSubscriptions(api: v3.id, pageSize: 0, pageToken: [], tenant: superTenant).subscriptions.isEmpty)
        #expect(try store.getApi(v2.id, tenant: superTenant).lifecycleState == .published, "not deprecated without the option")
        #expect(try store.getApi(v2.id, tenant: superTenant).defaultVersion)

        // Deleting is refused while subscriptions exist.
        await expectStatus(.failedPrecondition, "subscription") { try await store.deleteApi(v1.id, tenant: superTenant) }
    }

    @Test func blockAndUnblockSubscriptions() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let store = fixture.publisher
        let api = try await store.createApi(sampleApi(), actor: "carol", tenant: superTenant)
        try store.apimgt.database.environment.write { txn in
            try store.apimgt.subscriptions.insert(Subscription(id: "sub-1", tenantDomain: superTenant, apiId: api.id, applicationId: "app-1",
                                                               throttlingPolicy: "Gold", status: .unblocked), in: &txn)
        }
        let publisher = fixture.publisherClient(try await fixture.user("paul", roles: ["publisher"]))
        #expect(try await publisher.blockSubscription(BlockSubscriptionRequest(subscriptionId: "sub-1", productionOnly: true)).subscription?.status == .prodOnlyBlocked)
        #expect(try await publisher.blockSubscription(BlockSubscriptionRequest(subscriptionId: "sub-1")).subscription?.status == .blocked)
        #expect(try await publisher.unblockSubscription(UnblockSubscriptionRequest(subscriptionId: "sub-1")).subscription?.status == .unblocked)
        let listed = try await publisher.listApiSubscriptions(ListApiSubscriptionsRequest(apiId: api.id)).subscriptions
        #expect(listed.map(\.id) == ["sub-1"])
        await expectStatus(.notFound) { _ = try await publisher.blockSubscription(BlockSubscriptionRequest(subscriptionId: "nope")) }
    }
}

@Suite struct ListAndSearchTests {
    @Test func listFiltersAndPages() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let store = fixture.publisher
        var ids: [String] = []
        for index in 0..<30 {
            let api = try await store.createApi(sampleApi(String(format: "Api%02d", index), context: "/api\(index)", tags: index % 3 == 0 ? ["payments"] : ["maps"]),
                                          actor: index % 2 == 0 ? "alice" : "bob", tenant: superTenant)
            ids.append(api.id)
            if index % 5 == 0 { _ = try await store.changeLifecycle(api.id, to: .published, options: .init(), actor: "paul", tenant: superTenant) }
        }
        var seen: [String] = []
        var token: [UInt8] = []
        repeat {
            let page = try store.listApis(provider: "", states: [], pageSize: 7, pageToken: token, tenant: superTenant)
            seen += page.apis.map(\.name)
            token = page.page.nextPageToken
        } while !token.isEmpty
        #expect(seen == (0..<30).map { String(format: "Api%02d", $0) })

        let alices = try store.listApis(provider: "alice", states: [], pageSize: 100, pageToken: [], tenant: superTenant)
        #expect(alices.apis.count == 15 && alices.page.totalCount == 15)
        let published = try store.listApis(provider: "alice", states: [.published], pageSize: 100, pageToken: [], tenant: superTenant)
        #expect(published.apis.map(\.name) == ["Api00", "Api10", "Api20"])
        await expectStatus(.invalidArgument, "page_token") {
            _ = try store.listApis(provider: "", states: [], pageSize: 5, pageToken: [1, 2, 3], tenant: superTenant)
        }
    }

    @Test func searchMatchesWordsAndFields() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let store = fixture.publisher
        _ = try await store.createApi(sampleApi("PizzaShackAPI", context: "/pizzashack", tags: ["food", "Delivery"]), actor: "alice", tenant: superTenant)
        var weather = sampleApi("WeatherService", version: "2.1", context: "/weather/forecast", tags: ["maps"])
        weather.description = "Forecasts for every city"
        _ = try await store.createApi(weather, actor: "bob", tenant: superTenant)
        _ = try await store.createApi(sampleApi("PizzaShackAPI", version: "2.0.0", context: "/pizzashack", tags: []), actor: "bob", tenant: superTenant)
        _ = try await store.createApi(sampleApi("Hidden", context: "/hidden", tags: ["food"]), actor: "eve", tenant: "acme.com")

        func search(_ query: String) throws -> [String] {
            try store.searchApis(query: query, pageSize: 0, pageToken: [], tenant: superTenant).apis.map { "\($0.name) \($0.version)" }
        }
        #expect(try search("shack") == ["PizzaShackAPI 1.0.0", "PizzaShackAPI 2.0.0"], "inside a name")
        #expect(try search("FOOD") == ["PizzaShackAPI 1.0.0"], "tags, case-insensitive, own tenant only")
        #expect(try search("forecast") == ["WeatherService 2.1"], "context segment")
        #expect(try search("cit") == ["WeatherService 2.1"], "description word prefix")
        #expect(try search("provider:bob") == ["PizzaShackAPI 2.0.0", "WeatherService 2.1"])
        #expect(try search("provider:bob version:2.0") == ["PizzaShackAPI 2.0.0"])
        #expect(try search("pizza tag:delivery") == ["PizzaShackAPI 1.0.0"], "AND of terms")
        #expect(try search("nothing-like-this").isEmpty)
        #expect(try search("").count == 3, "an empty query lists everything")
        await expectStatus(.invalidArgument, "qualifier") { _ = try search("owner:bob") }
    }
}
