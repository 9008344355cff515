import Foundation
import RPCCore
import Testing
import TollgateProto
import TollgatePublisher
import TollgateServices
import TollgateStorage

/// A realistic OpenAPI 3.0 document: several paths, path and query
/// parameters, a request body, shared components, OAuth2 scopes bound to
/// roles, and WSO2's per-operation extensions.
let petStoreYAML = """
openapi: 3.0.3
info:
  title: PetStore
  version: "1.0"
  description: Pets, orders and stock.
tags:
  - name: pets
  - name: store
servers:
  - url: https://petstore.example.com/v1
paths:
  /pets:
    get:
      summary: List pets
      operationId: listPets
      tags: [pets]
      parameters:
        - name: limit
          in: query
          required: false
          schema: {type: integer, format: int32}
      responses:
        "200":
          description: A page of pets
          content:
            application/json:
              schema: {type: array, items: {$ref: '#/components/schemas/Pet'}}
      security:
        - default: [read:pets]
      x-throttling-tier: 10KPerMin
    post:
      summary: Add a pet
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: '#/components/schemas/Pet'}
      responses:
        "201": {description: Created}
      security:
        - default: [write:pets]
      x-auth-type: Application User
  /pets/{petId}:
    parameters:
      - name: petId
        in: path
        required: true
        schema: {type: string}
    get:
      operationId: showPet
      responses:
        "200": {description: One pet}
        "404": {description: No such pet}
      x-auth-type: Application
    delete:
      responses:
        "204": {description: Deleted}
      security:
        - default: [write:pets]
  /store/inventory:
    get:
      responses:
        "200": {description: Stock levels}
      security: []
components:
  schemas:
    Pet:
      type: object
      required: [id, name]
      properties:
        id: {type: integer, format: int64}
        name: {type: string}
        tag: {type: string}
  securitySchemes:
    default:
      type: oauth2
      flows:
        implicit:
          authorizationUrl: https://auth.example.com/authorize
          scopes:
            read:pets: Read pets
            write:pets: Change pets
      x-scopes-bindings:
        read:pets: subscriber,admin
        write:pets: admin
"""

/// The same kind of API as Swagger 2.0 JSON, in WSO2 2.x's style.
let swaggerJSON = """
{
  "swagger": "2.0",
  "info": {"title": "Menu", "version": "2.0.0"},
  "basePath": "/menu",
  "paths": {
    "/items/{itemId}": {
      "get": {
        "parameters": [
          {"name": "itemId", "in": "path", "required": true, "type": "string"},
          {"name": "lang", "in": "query", "type": "string", "enum": ["en", "fr"]}
        ],
        "responses": {"200": {"description": "An item", "schema": {"$ref": "#/definitions/Item"}}},
        "x-auth-type": "Application & Application User",
        "x-throttling-tier": "Unlimited",
        "x-scope": "menu_read"
      },
      "put": {
        "parameters": [{"name": "body", "in": "body", "required": true, "schema": {"$ref": "#/definitions/Item"}}],
        "responses": {"200": {"description": "Updated"}},
        "x-auth-type": "None"
      }
    }
  },
  "definitions": {"Item": {"type": "object", "properties": {"name": {"type": "string"}, "price": {"type": "number"}}}},
  "x-wso2-security": {"apim": {"x-wso2-scopes": [
    {"name": "menu_read", "description": "Read the menu", "key": "menu_read", "roles": "subscriber"}
  ]}}
}
"""

@Suite struct OpenAPITests {
    func template(_ context: String, name: String = "") -> Api {
        importTemplate(context, name: name, endpoint: "https://petstore.example.com/v1")
    }

    @Test func openApi3ImportsTheRightResourcesAndExportsBackEquivalently() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let creator = fixture.publisherClient(try await fixture.user("carol", roles: ["creator"]))
        let imported = try await creator.importOpenApi(ImportOpenApiRequest(apiTemplate: template("/petstore"), document: petStoreYAML))
        let api = try #require(imported.api)
        #expect(api.name == "PetStore" && api.version == "1.0" && api.description == "Pets, orders and stock." && api.tags == ["pets", "store"])
        let resources = api.resources.map { "\(ApiValidation.verbName($0.verb)) \($0.uriTemplate) \($0.authType) \($0.throttlingPolicy) \($0.scope)" }
        #expect(resources == [
            "GET /pets any 10KPerMin read:pets",
            "POST /pets applicationUser  write:pets",
            "GET /pets/{petId} application  ",
            "DELETE /pets/{petId} any  write:pets",
            "GET /store/inventory none  ",
        ])
        #expect(api.scopes.map { "\($0.key)=\($0.roles.joined(separator: ","))" } == ["read:pets=subscriber,admin", "write:pets=admin"])
        #expect(imported.definition?.openapiVersion == "3.0.3" && imported.definition?.format == .yaml)
        #expect(imported.servers == ["https://petstore.example.com/v1"], "servers are endpoint suggestions, not ignored")
        #expect(imported.warnings.isEmpty, "nothing of this document is dropped: \(imported.warnings)")

        // Export as JSON and YAML; each imports again to the same resources and scopes.
        for format in [DefinitionFormat.json, .yaml] {
            let exported = try #require(try await creator.exportOpenApi(ExportOpenApiRequest(apiId: api.id, format: format)).definition)
            #expect(exported.format == format && exported.openapiVersion == "3.0.3")
            let again = try await creator.importOpenApi(ImportOpenApiRequest(
                apiTemplate: template("/petstore\(format == .json ? "j" : "y")", name: "PetStore \(format == .json ? "JSON" : "YAML")"), document: exported.document, format: format))
            let copy = try #require(again.api)
            #expect(copy.resources == api.resources, "\(format)")
            #expect(copy.scopes == api.scopes, "\(format)")
            // Operation details the resources cannot hold are carried over.
            for detail in ["listPets", "limit", "int32", "#/components/schemas/Pet", "No such pet", "requestBody"] {
                #expect(exported.document.contains(detail), "\(format) export keeps \(detail)")
            }
        }
    }

    @Test func swagger2ImportsAndExportsAsOpenApi3() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let store = fixture.publisher
        let result = try await store.importOpenApi(apiID: "", template: template("/menu"), document: swaggerJSON, format: .unspecified, actor: "carol", tenant: superTenant)
        #expect(result.definition.openapiVersion == "2.0" && result.definition.format == .json)
        let resources = result.api.resources.map { "\(ApiValidation.verbName($0.verb)) \($0.uriTemplate) \($0.authType) [\($0.throttlingPolicy)] \($0.scope)" }
        #expect(resources == ["GET /items/{itemId} any [] menu_read", "PUT /items/{itemId} none [] "])
        #expect(result.api.scopes.map { "\($0.key):\($0.description):\($0.roles)" } == ["menu_read:Read the menu:[\"subscriber\"]"])

        let exported = try store.exportOpenApi(result.api.id, format: .yaml, tenant: superTenant)
        #expect(exported.document.hasPrefix("openapi: \"3.0.3\"\n"), "\(exported.document.prefix(40))")
        #expect(exported.document.contains("#/components/schemas/Item") && !exported.document.contains("#/definitions/"))
        #expect(exported.document.contains("requestBody"))
        let reimported = try await store.importOpenApi(apiID: "", template: template("/menu2", name: "Menu again"), document: exported.document, format: .yaml, actor: "carol", tenant: superTenant)
        #expect(reimported.api.resources == result.api.resources && reimported.api.scopes == result.api.scopes)
    }

    @Test func importReplacesAnExistingApisResources() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let store = fixture.publisher
        let api = try await store.createApi(sampleApi(), actor: "carol", tenant: superTenant)
        let result = try await store.importOpenApi(apiID: api.id, template: Api(), document: petStoreYAML, format: .yaml, actor: "carol", tenant: superTenant)
        #expect(result.api.id == api.id && result.api.name == "PizzaShack" && result.api.resources.count == 5 && result.api.revision == 2)
        #expect(try store.exportOpenApi(api.id, format: .unspecified, tenant: superTenant).format == .yaml, "the stored format by default")
    }

    @Test(arguments: [
        ("", "document is empty"),
        ("{not json", "INVALID"),
        ("- a\n- b", "mapping"),
        ("openapi: 4.0.0\ninfo: {title: x, version: '1'}\npaths: {}", "3."),
        ("openapi: 3.0.0\ninfo: {title: x, version: '1'}\npaths: {menu: {get: {}}}", "/"),
        ("openapi: 3.0.0\ninfo: {title: x, version: '1'}\npaths: {/m: {get: {x-auth-type: Sometimes}}}", "x-auth-type"),
        ("openapi: 3.0.0\ninfo: {title: x, version: '1'}\npaths: {/m: {get: {x-scope: missing}}}", "missing"),
    ])
    func badDocumentsAreRefusedClearly(_ document: String, _ fragment: String) async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        do {
            _ = try await fixture.publisher.importOpenApi(apiID: "", template: template("/bad"), document: document, format: .unspecified, actor: "carol", tenant: superTenant)
            Issue.record("accepted: \(document)")
        } catch {
            #expect(error.code == .invalidArgument)
            #expect(fragment == "INVALID" || error.message.contains(fragment), "\(error.message)")
        }
        #expect(try fixture.publisher.listApis(provider: "", states: [], pageSize: 10, pageToken: [], tenant: superTenant).apis.isEmpty, "nothing was created")
    }
}
