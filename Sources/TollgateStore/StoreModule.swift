public import RoleCore
import TollgateProto
public import RPCCore
import TollgateKeyManager
import TollgateServices
public import TollgateStorage
import TollgateUsers

/// The store role: StoreService for API consumers. Keys and tokens go
/// through the process's key manager over the shared apimgtdb (the store
/// and key manager of one host share their databases).
public struct StoreModule: RoleModule {
    public static let name = "store"
    public static let databases: Set<LogicalDatabaseName> = [.userdb, .apimgtdb, .regdb]
    public static let configSection: ConfigSectionSpec? = ConfigSectionSpec(name: "store", keys: [
        // Comma-separated tenant domains whose visitors may sign up; "*" for every tenant.
        .init("self_signup_tenants", .string),
        // Comma-separated gateway base URLs shown with each API, e.g. https://gw.example.com:8243
        .init("gateway_urls", .string),
    ], check: { section in
        guard let urls = section.string("gateway_urls") else { return [] }
        for url in Self.list(urls) where !(url.hasPrefix("https://") || url.hasPrefix("http://")) || url.hasSuffix("/") {
            return [(key: "gateway_urls", problem: "\(url) is not an http(s) base URL without a trailing slash")]
        }
        return []
    })

    public let store: ConsumerStore

    public init(context: NodeContext) async throws {
        let apimgtdb = try context.require(context.databases.apimgtdb, .apimgtdb, for: Self.name)
        let regdb = try context.require(context.databases.regdb, .regdb, for: Self.name)
        guard let users = context.lookup(UserDirectory.self) else {
            throw NodeStartError("the store needs the users module (userdb) assembled before it")
        }
        store = ConsumerStore(apimgt: apimgtdb, registry: regdb, keyManager: try KeyManager.shared(in: context), users: users,
                              tenants: context.lookup((any TenantProvisioning).self), settings: Self.settings(context.section("store")))
    }

    public static let rpcServices = [StoreServiceDescriptor.serviceName]

    public var methods: [RPCMethodHandler] { StoreRPCService(store: store).methodHandlers }

    public func reload(_ section: ConfigSection) async throws -> [String] {
        store.updateSettings(Self.settings(section))
        return []
    }

    static func list(_ text: String) -> [String] {
        text.split(separator: ",").map { String($0).trimmedSpaces }.filter { !$0.isEmpty }
    }

    static func settings(_ section: ConfigSection) -> ConsumerStore.StoreSettings {
        var settings = ConsumerStore.StoreSettings()
        settings.signUpTenants = Set(list(section.string("self_signup_tenants") ?? "").map { $0.lowercased() })
        settings.gatewayURLs = list(section.string("gateway_urls") ?? "")
        return settings
    }
}
