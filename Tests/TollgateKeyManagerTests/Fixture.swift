import Foundation
import Logging
import RoleCore
import RPCCore
import Testing
import TollgateKeyManager
import TollgateNode
import TollgatePolicies
import TollgateProto
import TollgatePublisher
import TollgateServices
import TollgateStorage
import TollgateStore
import TollgateUsers

/// A control-plane node (publisher, store, keymanager) assembled as
/// tollgated assembles it, behind an in-process server applying the access
/// table, with helpers to get from "an API" to "a token that calls it".
final class ConsumerFixture: Sendable {
    let path: String
    let keyManager: KeyManager
    let store: ConsumerStore
    let publisher: PublisherStore
    let transport: InProcessTransport
    static let password = "first-Secret-1"

    /// - Parameter userClock: the time sign-ins are throttled by, if not the system's.
    init(userClock: UserDirectory.Clock? = nil) async throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-km-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let passwordFile = path + "/root.password"
        try (Self.password + "\n").write(toFile: passwordFile, atomically: true, encoding: .utf8)
        let sections: [String: ConfigSection] = [
            "users": ConfigSection(values: ["bootstrap_admin": .string("root"), "bootstrap_password_file": .string(passwordFile)]),
            "store": ConfigSection(values: ["self_signup_tenants": .string("carbon.super, acme.com"), "gateway_urls": .string("https://gw.example.com:8243")]),
        ]
        let roles: [Role] = [.publisher, .store, .keymanager]
        let databases = try Databases.open(dataDirectory: path, only: roles.reduce(into: Set()) { $0.formUnion(RoleModules.databases(for: $1)) })
        let assembly = try await NodeAssembly.assemble(roles: roles, databases: databases, sections: sections, logger: Logger(label: "test")) { context in
            context.provide(SecretHasher(settings: .testing), as: SecretHasher.self)
            if let userClock { context.provide(userClock, as: UserDirectory.Clock.self) }
        }
        keyManager = try #require(assembly.module(KeyManagerModule.self)).keyManager
        store = try #require(assembly.module(StoreModule.self)).store
        publisher = try #require(assembly.module(PublisherModule.self)).store
        let access = assembly.access
        transport = InProcessTransport(methods: assembly.methods) { (context) throws(RPCError) -> Caller in try access.authorize(context) }
    }

    func remove() { try? FileManager.default.removeItem(atPath: path) }

    func session(_ username: String, password: String = ConsumerFixture.password, tenant: String? = nil) async throws -> CallOptions {
        var login = CallOptions()
        if let tenant { login.metadata.add("x-tenant", tenant) }
        let token = try await UserServiceClient(transport).login(LoginRequest(username: username, password: password), options: login).sessionToken
        var metadata: Metadata = ["authorization": "Bearer \(token)"]
        if let tenant { metadata.add("x-tenant", tenant) }
        return CallOptions(metadata: metadata)
    }

    func user(_ name: String, roles: [String]) async throws -> CallOptions {
        let root = try await session("root")
        _ = try await UserServiceClient(transport, defaultOptions: root)
            .createUser(CreateUserRequest(user: User(username: name, email: "\(name)@example.com", roles: roles), password: Self.password))
        return try await session(name)
    }

    func storeClient(_ options: CallOptions) -> StoreServiceClient { StoreServiceClient(transport, defaultOptions: options) }

    var gateway: KeyManagerServiceClient { KeyManagerServiceClient(transport.calling(as: .node(id: "gw1", roles: ["gateway"]))) }

    /// An API created and moved to `state` by root, offering Gold and Unlimited.
    func api(_ name: String = "PizzaShack", version: String = "1.0.0", context: String = "/pizzashack", state: LifecycleState = .published,
             scopes: [ApiScope] = [], resources: [ApiResource]? = nil) async throws -> Api {
        let root = try await session("root")
        let client = PublisherServiceClient(transport, defaultOptions: root)
        var api = Api()
        api.name = name
        api.version = version
        api.context = context
        api.resources = resources ?? [
            ApiResource(uriTemplate: "/menu", verb: .get, authType: .any),
            ApiResource(uriTemplate: "/order", verb: .post, authType: .applicationUser),
            ApiResource(uriTemplate: "/admin", verb: .get, authType: .application),
        ]
        api.scopes = scopes
        api.productionEndpoints = EndpointConfig(strategy: .single(Endpoint(url: "https://backend.example.com/pizzashack")))
        api.subscriptionPolicies = ["Gold", "Unlimited"]
        var created = try #require(try await client.createApi(CreateApiRequest(api: api)).api)
        for step in Self.path(to: state) {
            created = try #require(try await client.changeLifecycle(ChangeLifecycleRequest(apiId: created.id, targetState: step)).api)
        }
        return created
    }

    static func path(to state: LifecycleState) -> [LifecycleState] {
        switch state {
        case .created: []
        case .prototyped: [.prototyped]
        case .published: [.published]
        case .deprecated: [.published, .deprecated]
        case .blocked: [.published, .blocked]
        case .retired: [.published, .deprecated, .retired]
        default: []
        }
    }

    struct Consumer {
        let options: CallOptions
        let application: Application
        let subscription: Subscription?
        let consumerKey: String
        let consumerSecret: String
        let token: String
    }

    /// A subscriber with an application subscribed to `api` at `tier`, and production keys with a first token.
    func consumer(_ name: String, subscribedTo api: Api?, tier: String = "Gold", keyType: KeyType = .production, tokenFormat: TokenFormat = .opaque,
                  callback: String = "") async throws -> Consumer {
        let options = try await user(name, roles: ["subscriber"])
        let store = storeClient(options)
        let application = try #require(try await store.createApplication(CreateApplicationRequest(application: Application(
            name: "\(name)-app", throttlingPolicy: "50PerMin", callbackUrl: callback, tokenFormat: tokenFormat))).application)
        var subscription: Subscription?
        if let api {
            subscription = try await store.subscribe(SubscribeRequest(applicationId: application.id, apiId: api.id, throttlingPolicy: tier)).subscription
        }
        let keys = try await store.generateKeys(GenerateKeysRequest(applicationId: application.id, keyType: keyType))
        return Consumer(options: options, application: application, subscription: subscription, consumerKey: try #require(keys.key?.consumerKey),
                        consumerSecret: keys.consumerSecret, token: try #require(keys.applicationToken?.accessToken))
    }

    /// What a gateway asks for `token` on `resource` of `api`.
    func validate(_ token: String, _ api: Api, resource: String = "/menu", verb: HttpVerb = .get, level: ResourceAuthType = .any,
                  referer: String? = nil) async throws -> KeyValidationInfo {
        let context = api.tenantDomain == superTenant ? api.context : "/t/\(api.tenantDomain)\(api.context)"
        let request = ValidateKeyRequest(context: context, version: api.version, tokenHash: SecretHasher.tokenHash(token), tokenId: KeyManager.tokenID(of: token) ?? [], requiredAuthLevel: level,
                                         matchingResource: resource, verb: verb, clientDomain: referer)
        return try #require(try await gateway.validateKey(request).info)
    }

    /// The OAuth endpoints answering one form POST.
    /// - Parameter source: the client's IP address, as the HTTP listener gives it.
    func post(_ path: String, _ form: [(String, String)], basic: (String, String)? = nil, from source: String? = nil,
              cookie: String? = nil) async -> (status: Int, json: [String: Any], response: HTTPResponse) {
        var headers: [(name: String, value: String)] = [("Content-Type", "application/x-www-form-urlencoded")]
        if let basic {
            let credentials = Data("\(FormEncoding.escape(basic.0)):\(FormEncoding.escape(basic.1))".utf8).base64EncodedString()
            headers.append(("Authorization", "Basic \(credentials)"))
        }
        if let cookie { headers.append(("Cookie", cookie)) }
        let request = HTTPRequest(method: "POST", uri: path, headers: headers, body: Array(FormEncoding.encode(form).utf8), sourceAddress: source, isSecure: true)
        let response = await OAuthEndpoints(keyManager: keyManager).respond(to: request)
        let json = (try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any] ?? [:]
        return (response.status, json, response)
    }
}

/// Expects `body` to fail with `code`, its message containing `fragment`.
func expectStatus(_ code: RPCCode, _ fragment: String = "", sourceLocation: SourceLocation = #_sourceLocation, _ body: () async throws -> Void) async {
    do {
        try await body()
        Issue.record("expected \(code)\(fragment.isEmpty ? "" : " mentioning \"\(fragment)\""), but the call succeeded", sourceLocation: sourceLocation)
    } catch let error as RPCError {
        #expect(error.code == code && (fragment.isEmpty || error.message.contains(fragment)), "expected \(code) mentioning \"\(fragment)\", got \(error)",
                sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected \(code), got \(error)", sourceLocation: sourceLocation)
    }
}
