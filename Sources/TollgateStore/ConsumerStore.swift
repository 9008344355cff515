import FoundationEssentials
import LMDBKit
import OpenSSLKit
public import RoleCore
public import RPCCore
import Synchronization
public import TollgateKeyManager
public import TollgateProto
import TollgatePublisher
import TollgateServices
public import TollgateStorage
public import TollgateUsers

/// Who is acting in the store: a signed-in user, or an anonymous visitor
/// browsing public APIs.
public struct StoreCaller: Sendable {
    public let user: UserPrincipal?
    public let tenant: String

    public init(user: UserPrincipal?, tenant: String) {
        self.user = user
        self.tenant = tenant
    }

    var isAdmin: Bool { user?.holds(Permission.admin) ?? false }

    func holdsAnyRole(_ roles: [String]) -> Bool {
        guard let user else { return false }
        let held = Set(user.roles.map { $0.lowercased() })
        return roles.contains { held.contains($0.lowercased()) || held.contains(String($0.lowercased().split(separator: "/").last ?? "")) }
    }
}

/// The consumer side of the API manager: published APIs as subscribers see
/// them, self sign-up, applications, subscriptions and their keys. Keys and
/// tokens go through the node's ``KeyManager`` over the same apimgtdb, so
/// an application and its OAuth clients change in one transaction.
public final class ConsumerStore: Sendable {
    public let apimgt: ApiManagerDatabase
    public let registry: RegistryDatabase
    public let keyManager: KeyManager
    public let users: UserDirectory
    let tenants: (any TenantProvisioning)?
    let settingsState: Mutex<StoreSettings>
    let now: @Sendable () -> Int64

    public struct StoreSettings: Sendable, Hashable {
        /// Tenants whose visitors may sign themselves up; `*` for all.
        public var signUpTenants: Set<String> = []
        /// Base URLs of the gateways, e.g. `https://gw.example.com:8243`.
        public var gatewayURLs: [String] = []

        public init() {}
    }

    /// States in which an API is shown in the store, and those in which it can be subscribed to.
    public static let listedStates: [LifecycleState] = [.published, .prototyped, .deprecated]
    public static let subscribableStates: Set<LifecycleState> = [.published, .prototyped]

    public init(apimgt: ApiManagerDatabase, registry: RegistryDatabase, keyManager: KeyManager, users: UserDirectory,
                tenants: (any TenantProvisioning)?, settings: StoreSettings = StoreSettings(), now: (@Sendable () -> Int64)? = nil) {
        self.apimgt = apimgt
        self.registry = registry
        self.keyManager = keyManager
        self.users = users
        self.tenants = tenants
        self.settingsState = Mutex(settings)
        self.now = now ?? { Int64(Date().timeIntervalSince1970 * 1000) }
    }

    public var settings: StoreSettings { settingsState.withLock { $0 } }
    public func updateSettings(_ settings: StoreSettings) { settingsState.withLock { $0 = settings } }

    var revocations: RevocationLog { keyManager.revocations }

    // MARK: Discovery

    /// Whether the caller may see the API in the store.
    func isVisible(_ api: Api, to caller: StoreCaller) -> Bool {
        guard Self.listedStates.contains(api.lifecycleState), api.tenantDomain.lowercased() == caller.tenant else { return false }
        switch api.visibility {
        case .restricted: return caller.isAdmin || caller.holdsAnyRole(api.visibleRoles)
        case .private: return caller.user?.tenant.lowercased() == api.tenantDomain.lowercased()
        default: return true
        }
    }

    public func listApis(tag: String, provider: String, pageSize: Int, pageToken: [UInt8], caller: StoreCaller) throws(RPCError) -> (apis: [ApiListing], page: PageResponse) {
        let catalog = ApiCatalog(apimgt: apimgt)
        if !tag.isEmpty {
            let query = "tag:\(tag)" + (provider.isEmpty ? "" : " provider:\(provider)")
            return try catalog.searchApis(query: query, pageSize: pageSize, pageToken: pageToken, tenant: caller.tenant) { self.isVisible($0, to: caller) }
        }
        return try catalog.listApis(provider: provider, states: Self.listedStates, pageSize: pageSize, pageToken: pageToken, tenant: caller.tenant) {
            self.isVisible($0, to: caller)
        }
    }

    public func searchApis(query: String, pageSize: Int, pageToken: [UInt8], caller: StoreCaller) throws(RPCError) -> (apis: [ApiListing], page: PageResponse) {
        try ApiCatalog(apimgt: apimgt).searchApis(query: query, pageSize: pageSize, pageToken: pageToken, tenant: caller.tenant) {
            self.isVisible($0, to: caller)
        }
    }

    /// The API, or NOT_FOUND for one the caller may not see (its existence is not revealed).
    public func visibleApi(_ id: String, caller: StoreCaller) throws(RPCError) -> Api {
        guard !id.isEmpty else { throw RPCError(.invalidArgument, "an API id is required") }
        guard let api = try RPCError.catching({ try apimgt.api(id: id) }), isVisible(api, to: caller) else {
            throw RPCError(.notFound, "no API \(id) in the store of tenant \(caller.tenant)")
        }
        return api
    }

    public struct ApiDetails: Sendable {
        public var api: Api
        public var definition: ApiDefinition?
        public var documents: [Document]
        public var policies: [SubscriptionPolicy]
        public var gatewayURLs: [String]
    }

    public func apiDetails(_ id: String, caller: StoreCaller) throws(RPCError) -> ApiDetails {
        let api = try visibleApi(id, caller: caller)
        let definition = try RPCError.catching { try registry.definition(api: api.id) }
        let documents = try RPCError.catching { try registry.documents(api: api.id) }.filter { isVisible($0, of: api, to: caller) }.map { document in
            var listed = document
            listed.body = nil
            return listed
        }
        let base = DeploymentLog.gatewayContext(of: api).versioned
        return ApiDetails(api: api, definition: definition, documents: documents, policies: try offeredPolicies(of: api, caller: caller),
                          gatewayURLs: settings.gatewayURLs.map { $0 + base })
    }

    /// The tiers the API offers that the caller may subscribe at.
    func offeredPolicies(of api: Api, caller: StoreCaller) throws(RPCError) -> [SubscriptionPolicy] {
        try RPCError.catching {
            try api.subscriptionPolicies.compactMap { name -> SubscriptionPolicy? in
                guard case .subscriptionPolicy(let policy)? = try apimgt.policy(kind: .subscription, name: name, tenant: api.tenantDomain)?.policy else { return nil }
                return policy
            }
        }.filter { mayUse($0, caller: caller) }
    }

    func isVisible(_ document: Document, of api: Api, to caller: StoreCaller) -> Bool {
        switch document.visibility {
        case .private: return false
        case .ownerOnly: return caller.user?.username == api.provider
        default: return true
        }
    }

    /// A tier's role permission (WSO2's tier permissions: allow or deny roles).
    func mayUse(_ policy: SubscriptionPolicy, caller: StoreCaller) -> Bool {
        guard let permission = policy.permission, !permission.roles.isEmpty else { return true }
        let holds = caller.holdsAnyRole(permission.roles)
        return permission.mode == .deny ? !holds : holds
    }

    public func document(_ id: String, caller: StoreCaller) throws(RPCError) -> Document {
        guard let document = try RPCError.catching({ try registry.document(id: id) }),
              let api = try? visibleApi(document.apiId, caller: caller), isVisible(document, of: api, to: caller) else {
            throw RPCError(.notFound, "no document \(id) in the store of tenant \(caller.tenant)")
        }
        return document
    }

    // MARK: Sign-up

    public func signUp(_ request: SignUpRequest, tenant: String) async throws(RPCError) -> User {
        let allowed = settings.signUpTenants
        guard allowed.contains("*") || allowed.contains(tenant) else {
            throw RPCError(.permissionDenied, "self sign-up is off in tenant \(tenant); ask an administrator for an account (node setting store.self_signup_tenants)")
        }
        var user = User(tenantDomain: tenant, username: request.username, email: request.email, givenName: request.givenName,
                        familyName: request.familyName, claims: request.claims)
        user.roles = [BuiltinRole.subscriber]
        do {
            return try await users.createUser(user, password: request.password, tenant: tenant)
        } catch where error.code == .invalidArgument && error.message.contains("role") {
            throw RPCError(.failedPrecondition, "tenant \(tenant) has no subscriber role; sign-up is not possible there")
        }
    }
}

extension String {
    /// Without leading and trailing spaces and tabs.
    var trimmedSpaces: String {
        var text = Substring(self)
        while let first = text.first, first == " " || first == "\t" { text = text.dropFirst() }
        while let last = text.last, last == " " || last == "\t" { text = text.dropLast() }
        return String(text)
    }
}
