import Foundation
import RPCCore
import Testing
import TollgateProto
@testable import TollgatePublisher
import TollgateServices
import TollgateStorage

/// Large public OpenAPI documents written by others (Tests/Fixtures/openapi,
/// with their sources and licences): each imports, exports and imports again
/// with nothing the document said lost on the way.
@Suite struct OpenAPIRealWorldTests {
    struct Sample: Sendable, CustomStringConvertible {
        let file: String
        let exportedVersion: String
        let servers: [String]
        var description: String { file }
    }

    static let samples = [
        Sample(file: "slack-web-api.swagger2.json", exportedVersion: "3.0.3", servers: ["https://slack.com/api"]),
        Sample(file: "twilio-api-v2010.openapi30.yaml", exportedVersion: "3.0.1", servers: ["https://api.twilio.com"]),
        Sample(file: "adyen-management-v3.openapi31.json", exportedVersion: "3.1.0", servers: ["https://management-test.adyen.com/v3"]),
    ]

    static func fixture(_ name: String) throws -> String {
        let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures/openapi")
        return try String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8)
    }

    func template(_ context: String, name: String = "") -> Api {
        importTemplate(context, name: name, endpoint: "https://backend.example.com")
    }

    /// Operations the gateway routes, as "VERB /path", in document order.
    static func routableOperations(_ root: DocumentValue) -> [String] {
        (root["paths"]?.members ?? []).flatMap { path, item in
            (item.members ?? []).compactMap { key, _ in
                OpenAPIDocuments.operationVerbs.contains { $0.key == key } ? "\(key.uppercased()) \(path)" : nil
            }
        }
    }

    static func extensions(_ value: DocumentValue?) -> [String] {
        (value?.members ?? []).filter { $0.key.hasPrefix("x-") }.map { $0.key }
    }

    @Test(arguments: samples)
    func roundTripKeepsWhatTheDocumentSays(_ sample: Sample) async throws {
        let text = try Self.fixture(sample.file)
        #expect((1_000_000...3_000_000).contains(text.utf8.count), "fixtures are real documents of 1 to 3 MB")
        let original = try DocumentTree.parse(text)
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let store = fixture.publisher

        let first = try await store.importOpenApi(apiID: "", template: template("/first"), document: text, format: .unspecified, actor: "carol", tenant: superTenant)
        #expect(first.api.resources.map { "\(ApiValidation.verbName($0.verb)) \($0.uriTemplate)" } == Self.routableOperations(original))
        #expect(first.servers == sample.servers)
        let exported = try store.exportOpenApi(first.api.id, format: .unspecified, tenant: superTenant)
        #expect(exported.openapiVersion == sample.exportedVersion)
        let export = try DocumentTree.parse(exported.document, maxBytes: DocumentTree.largestMaxBytes)
        #expect(export["openapi"]?.text == sample.exportedVersion)

        // Import the export as another API: the same resources, scopes and definition again.
        let second = try await store.importOpenApi(apiID: "", template: template("/second", name: "Second copy"), document: exported.document,
                                                   format: exported.format, actor: "carol", tenant: superTenant)
        #expect(second.api.resources == first.api.resources)
        #expect(second.api.scopes == first.api.scopes)
        #expect(second.servers == sample.servers)
        var again = try DocumentTree.parse(try store.exportOpenApi(second.api.id, format: .unspecified, tenant: superTenant).document,
                                           maxBytes: DocumentTree.largestMaxBytes)
        var info = try #require(again["info"])
        info.set("title", export["info"]?["title"] ?? .null)
        again.set("info", info)
        #expect(again == export, "the export of an export is the same document")

        // Against the source: every routable operation with its parameters, bodies, responses,
        // callbacks, security and extensions; the document's info, servers, security and schemes.
        #expect(export["info"]?["contact"] == original["info"]?["contact"])
        #expect(export["info"]?["license"] == original["info"]?["license"])
        #expect(export["info"]?["termsOfService"] == original["info"]?["termsOfService"])
        #expect(export["externalDocs"] == original["externalDocs"])
        #expect(export["security"] == original["security"])
        for key in Self.extensions(original) + Self.extensions(original["info"]).map({ "info." + $0 }) {
            let value = key.hasPrefix("info.") ? export["info"]?[String(key.dropFirst(5))] : export[key]
            let written = key.hasPrefix("info.") ? original["info"]?[String(key.dropFirst(5))] : original[key]
            #expect(value == written, "\(key)")
        }
        let isSwagger = original["swagger"] != nil
        let originalSchemes = (isSwagger ? original["securityDefinitions"] : original["components"]?["securitySchemes"])?.members ?? []
        let exportedSchemes = export["components"]?["securitySchemes"]
        #expect(exportedSchemes?.members?.map { $0.key } == originalSchemes.map { $0.key }, "scheme names as written")
        for (name, scheme) in originalSchemes {
            let kept = try #require(exportedSchemes?[name])
            if isSwagger, scheme["type"]?.text == "oauth2" {
                let flow = try #require(kept["flows"]?.members?.first?.value)
                #expect(flow["authorizationUrl"] == scheme["authorizationUrl"] && flow["tokenUrl"] == scheme["tokenUrl"], "\(name): OAuth URLs as written")
                #expect(flow["scopes"] == scheme["scopes"])
            } else if !isSwagger {
                var withoutBindings = kept
                if scheme["x-scopes-bindings"] == nil { withoutBindings.remove("x-scopes-bindings") }
                #expect(withoutBindings == scheme, "\(name)")
            }
        }
        if !isSwagger {
            for (field, value) in original["components"]?.members ?? [] where field != "securitySchemes" {
                #expect(export["components"]?[field] == value, "components.\(field)")
            }
            #expect(export["servers"] == original["servers"])
            #expect(export["webhooks"] == original["webhooks"])
        }
        let added: Set<String> = ["x-auth-type", "x-throttling-tier", "x-scope"]
        for (path, item) in original["paths"]?.members ?? [] {
            let exportedItem = try #require(export["paths"]?[path], "\(path)")
            for key in Self.extensions(item) { #expect(exportedItem[key] == item[key], "\(path) \(key)") }
            for (key, operation) in item.members ?? [] where OpenAPIDocuments.operationVerbs.contains(where: { $0.key == key }) {
                let place = "\(key.uppercased()) \(path)"
                let kept = try #require(exportedItem[key], "\(place)")
                for field in Self.extensions(operation) where !added.contains(field) { #expect(kept[field] == operation[field], "\(place) \(field)") }
                #expect(kept["security"] == operation["security"], "\(place) security")
                #expect(kept["operationId"] == operation["operationId"] && kept["externalDocs"] == operation["externalDocs"], "\(place)")
                if isSwagger {
                    let parameters = (operation["parameters"]?.elements ?? []).filter { !["body", "formData"].contains($0["in"]?.text ?? "") }
                    #expect(kept["parameters"]?.elements?.map { $0["name"] } ?? [] == parameters.map { $0["name"] }, "\(place) parameters")
                    let hasBody = (operation["parameters"]?.elements ?? []).contains { ["body", "formData"].contains($0["in"]?.text ?? "") }
                    #expect((kept["requestBody"] != nil) == hasBody, "\(place) request body")
                    #expect(kept["responses"]?.members?.map { $0.key } == operation["responses"]?.members?.map { $0.key }, "\(place) responses")
                } else {
                    for field in ["parameters", "requestBody", "responses", "callbacks", "servers", "tags", "summary", "description"] {
                        #expect(kept[field] == operation[field], "\(place) \(field)")
                    }
                }
            }
        }
    }

    @Test func manyDocumentTagsStayInTheDocumentAndAreNamedInAWarning() async throws {
        let text = try Self.fixture("twilio-api-v2010.openapi30.yaml")
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let result = try await fixture.publisher.importOpenApi(apiID: "", template: template("/twilio"), document: text, format: .yaml,
                                                               actor: "carol", tenant: superTenant)
        let tags = try DocumentTree.parse(text)["tags"]?.elements ?? []
        #expect(tags.count > ApiValidation.maxTags)
        #expect(result.api.tags.isEmpty)
        #expect(result.warnings.contains { $0.contains("\(tags.count) tags stay in the definition") && $0.contains("--tag") }, "\(result.warnings)")
        let export = try DocumentTree.parse(try fixture.publisher.exportOpenApi(result.api.id, format: .json, tenant: superTenant).document,
                                            maxBytes: DocumentTree.largestMaxBytes)
        #expect(export["tags"]?.elements == tags)
    }

    @Test func theSizeLimitIsConfigurableAndNamedWhenReached() async throws {
        let text = try Self.fixture("twilio-api-v2010.openapi30.yaml")
        let small = try await PublisherFixture(maxDefinitionBytes: 1 << 20)
        defer { small.remove() }
        await expectStatus(.invalidArgument, "max_definition_bytes") {
            _ = try await small.publisher.importOpenApi(apiID: "", template: template("/twilio"), document: text, format: .yaml, actor: "carol", tenant: superTenant)
        }
        let large = try await PublisherFixture(maxDefinitionBytes: 3 << 20)
        defer { large.remove() }
        let padded = text + "\n# " + String(repeating: "x", count: (2 << 20) - text.utf8.count) + "\n"
        let result = try await large.publisher.importOpenApi(apiID: "", template: template("/twilio"), document: padded, format: .yaml,
                                                             actor: "carol", tenant: superTenant)
        #expect(!result.api.resources.isEmpty, "over the default 2 MiB, under the configured 3 MiB")
    }
}

@Suite struct OpenAPIKeepsWhatItIsGivenTests {
    func template(_ context: String, name: String = "") -> Api {
        importTemplate(context, name: name)
    }

    func importing(_ document: String, into fixture: PublisherFixture, context: String = "/doc", name: String = "")
        async throws(RPCError) -> (api: Api, definition: ApiDefinition, warnings: [String], servers: [String]) {
        try await fixture.publisher.importOpenApi(apiID: "", template: template(context, name: name), document: document, format: .unspecified,
                                                  actor: "carol", tenant: superTenant)
    }

    static let openApi31 = """
        openapi: 3.1.0
        info:
          title: Kitchen
          version: "2"
          summary: Orders in, meals out.
          termsOfService: https://kitchen.example.com/terms
          contact: {name: Chef, email: chef@example.com}
          license: {name: Apache 2.0, identifier: Apache-2.0}
          x-audience: partners
        externalDocs: {url: https://kitchen.example.com/docs}
        servers:
          - url: https://{region}.kitchen.example.com/v2
            variables: {region: {default: eu}}
          - url: /relative
        security:
          - kitchenAuth: [orders:read]
        x-owner: kitchen-team
        webhooks:
          mealReady:
            post:
              requestBody: {content: {application/json: {schema: {type: object}}}}
              responses: {"200": {description: OK}}
        paths:
          /orders:
            x-cache: none
            post:
              operationId: placeOrder
              security:
                - kitchenAuth: [orders:write]
              requestBody:
                content:
                  application/json:
                    schema: {type: [object, "null"]}
              callbacks:
                ready:
                  "{$request.body#/callback}":
                    post:
                      responses: {"200": {description: Told}}
              responses: {"201": {description: Placed}}
              x-rate-class: gold
            get:
              responses: {"200": {description: Orders}}
          /orders?status=open:
            get:
              responses: {"200": {description: never routable}}
        components:
          securitySchemes:
            kitchenAuth:
              type: oauth2
              flows:
                authorizationCode:
                  authorizationUrl: https://login.kitchen.example.com/authorize
                  tokenUrl: https://login.kitchen.example.com/token
                  scopes: {orders:read: Read orders, orders:write: Place orders}
        """

    @Test func openApi31IsKeptAndExportedAs31() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let result = try await importing(Self.openApi31, into: fixture)
        #expect(result.definition.openapiVersion == "3.1.0")
        #expect(result.servers == ["https://eu.kitchen.example.com/v2"])
        #expect(result.api.resources.map { "\(ApiValidation.verbName($0.verb)) \($0.uriTemplate) \($0.scope)" }
            == ["POST /orders orders:write", "GET /orders orders:read"], "top-level security applies where an operation has none")
        #expect(result.warnings.contains { $0.contains("`/orders?status=open`") && $0.contains("skipped") }, "\(result.warnings)")
        #expect(result.warnings.contains { $0.contains("webhooks") && $0.contains("mealReady") })

        let text = try fixture.publisher.exportOpenApi(result.api.id, format: .yaml, tenant: superTenant).document
        let original = try DocumentTree.parse(Self.openApi31)
        let export = try DocumentTree.parse(text)
        #expect(export["openapi"]?.text == "3.1.0")
        for field in ["externalDocs", "servers", "security", "x-owner", "webhooks"] { #expect(export[field] == original[field], "\(field)") }
        #expect(export["info"] == original["info"])
        #expect(export["components"]?["securitySchemes"] == original["components"]?["securitySchemes"], "scheme name and OAuth URLs as written")
        let post = try #require(export["paths"]?["/orders"]?["post"])
        let written = try #require(original["paths"]?["/orders"]?["post"])
        for field in ["operationId", "security", "requestBody", "callbacks", "responses", "x-rate-class"] { #expect(post[field] == written[field], "\(field)") }
        #expect(export["paths"]?["/orders"]?["x-cache"]?.text == "none")
        #expect(export["paths"]?["/orders?status=open"] == nil)
    }

    @Test func aDocumentWithOnlyWebhooksSaysSo() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let document = "openapi: 3.1.0\ninfo: {title: Events, version: '1'}\nwebhooks:\n  newPet:\n    post:\n      responses: {'200': {description: OK}}\n"
        await expectStatus(.invalidArgument, "webhooks (`newPet`) but no `paths`") { _ = try await importing(document, into: fixture) }
    }

    @Test func swaggerSecurityAndServersAreConverted() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let document = """
            {"swagger": "2.0", "info": {"title": "Files", "version": "1", "contact": {"email": "ops@example.com"}, "x-logo": {"url": "https://example.com/l.png"}},
             "host": "files.example.com", "basePath": "/v1", "schemes": ["https", "http"],
             "securityDefinitions": {
               "files_auth": {"type": "oauth2", "flow": "accessCode", "authorizationUrl": "https://auth.example.com/o", "tokenUrl": "https://auth.example.com/t",
                              "scopes": {"files:read": "Read"}},
               "key": {"type": "apiKey", "name": "X-Key", "in": "header"}},
             "security": [{"key": []}],
             "paths": {"/files": {"get": {"security": [{"files_auth": ["files:read"]}], "schemes": ["https"],
               "parameters": [{"name": "ids", "in": "query", "type": "array", "items": {"type": "string"}, "collectionFormat": "multi"}],
               "responses": {"200": {"description": "Files", "schema": {"type": "array", "items": {"type": "string"}}, "examples": {"application/json": ["a"]}}}}}}}
            """
        let result = try await importing(document, into: fixture)
        #expect(result.servers == ["https://files.example.com/v1", "http://files.example.com/v1"])
        #expect(result.api.resources.first?.scope == "files:read")
        #expect(result.warnings.contains { $0.contains("`key` (apiKey)") })
        #expect(result.warnings.contains { $0.contains("per-operation `schemes`") && $0.contains("GET /files") }, "\(result.warnings)")
        let export = try DocumentTree.parse(try fixture.publisher.exportOpenApi(result.api.id, format: .json, tenant: superTenant).document)
        #expect(export["info"]?["contact"]?["email"]?.text == "ops@example.com" && export["info"]?["x-logo"] != nil)
        #expect(export["servers"]?.elements?.compactMap { $0["url"]?.text } == result.servers)
        #expect(export["security"]?.elements?.first?["key"] != nil)
        let scheme = try #require(export["components"]?["securitySchemes"]?["files_auth"]?["flows"]?["authorizationCode"])
        #expect(scheme["authorizationUrl"]?.text == "https://auth.example.com/o" && scheme["tokenUrl"]?.text == "https://auth.example.com/t")
        #expect(export["components"]?["securitySchemes"]?["key"]?["name"]?.text == "X-Key")
        let get = try #require(export["paths"]?["/files"]?["get"])
        #expect(get["security"]?.elements?.first?["files_auth"]?.elements?.first?.text == "files:read")
        #expect(get["parameters"]?.elements?.first?["explode"] == .bool(true))
        #expect(get["responses"]?["200"]?["content"]?["application/json"]?["example"] == .array([.string("a")]))
    }

    @Test(arguments: [
        ("openapi: 3.0.3\ninfo: {title: 'Pets (beta)', version: '1'}\npaths: {/p: {get: {responses: {'200': {description: OK}}}}}", "/pets", "--name"),
        ("openapi: 3.0.3\ninfo: {title: Pets, version: '1 beta'}\npaths: {/p: {get: {responses: {'200': {description: OK}}}}}", "/pets", "--api-version"),
        ("openapi: 3.0.3\ninfo: {title: Pets, version: '1'}\npaths: {/p: {get: {responses: {'200': {description: OK}}}}}", "", "--context"),
    ])
    func whatTheDocumentCannotGiveIsAskedForByFlag(_ document: String, _ context: String, _ flag: String) async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        await expectStatus(.invalidArgument, flag) { _ = try await importing(document, into: fixture, context: context) }
    }
}
