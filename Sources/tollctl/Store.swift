import ArgumentParser
import Foundation
import RPCCore
import TollgateProto
import TollgateServices

// `tollctl signup`, `tollctl store`, `tollctl app`, `tollctl key`,
// `tollctl token` and the consumer side of `tollctl sub`: what API
// consumers do through StoreService and KeyManagerService.

extension NodeSession {
    var store: StoreServiceClient { StoreServiceClient(connection, defaultOptions: callOptions) }
    var keyManager: KeyManagerServiceClient { KeyManagerServiceClient(connection, defaultOptions: callOptions) }
}

enum KeyTypeOption: String, CaseIterable, ExpressibleByArgument, ProtoEnumSpelling {
    case production, sandbox
    var protoValue: KeyType {
        switch self {
        case .production: .production
        case .sandbox: .sandbox
        }
    }
}

enum TokenTypeOption: String, CaseIterable, ExpressibleByArgument, ProtoEnumSpelling {
    case opaque, jwt
    var protoValue: TokenFormat {
        switch self {
        case .opaque: .opaque
        case .jwt: .jwt
        }
    }
}

enum GrantOption: String, CaseIterable, ExpressibleByArgument, ProtoEnumSpelling {
    case clientCredentials = "client_credentials", password, refreshToken = "refresh_token", authorizationCode = "authorization_code"
    var protoValue: GrantType {
        switch self {
        case .clientCredentials: .clientCredentials
        case .password: .password
        case .refreshToken: .refreshToken
        case .authorizationCode: .authorizationCode
        }
    }
}

// MARK: - Sign-up

struct SignUp: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "signup", abstract: "Create your own subscriber account on a store (when the tenant allows sign-up).",
        discussion: "Needs no session. Pick the tenant with --tenant; the password is asked twice, or read from standard input with --password-stdin.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "The username to sign up as.") var user: String
    @Option(help: "Email address.") var email: String = ""
    @Option(name: .customLong("given-name"), help: "Given name.") var givenName: String = ""
    @Option(name: .customLong("family-name"), help: "Family name.") var familyName: String = ""
    @Flag(name: .customLong("password-stdin"), help: "Read the password from standard input.") var passwordStdin = false

    func run() async throws {
        let password = try readNewPassword(fromStdin: passwordStdin, prompt: "Password for \(user): ")
        let request = SignUpRequest(username: user, password: password, email: email, givenName: givenName, familyName: familyName)
        let created = try await NodeSession.with(connection) { node in
            var options = node.callOptions
            options.metadata = Metadata()  // sign-up is anonymous, whoever is signed in here
            if let tenant = node.settings.tenant { options.metadata.add("x-tenant", tenant) }
            return try await node.run { try await StoreServiceClient(node.connection).signUp(request, options: options).user }
        }
        print("signed up \(created?.username ?? user)@\(created?.tenantDomain ?? "?") as a subscriber; now run `tollctl login --user \(user)`")
    }
}

// MARK: - Store

struct StoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store", abstract: "The store as consumers see it: published APIs, their tiers and documents.",
        subcommands: [StoreApiCommand.self])
}

struct StoreApiCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "api", abstract: "Published APIs you may see and subscribe to.",
        subcommands: [StoreApiList.self, StoreApiSearch.self, StoreApiShow.self])
}

struct StoreApiList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the published, prototyped and deprecated APIs you may see.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Only APIs with this tag.") var tag: String = ""
    @Option(help: "Only this provider's APIs.") var provider: String = ""
    @OptionGroup var paging: PageOptions
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let (apis, next) = try await NodeSession.with(connection) { node in
            let store = node.store
            return try await node.run {
                try await readPages(from: paging.startToken, pageSize: paging.pageSize, all: paging.all) { (page: PageRequest) async throws -> ([ApiListing], PageResponse?) in
                    let response = try await store.listPublishedApis(ListPublishedApisRequest(tag: tag, provider: provider, page: page))
                    return (response.apis, response.page)
                }
            }
        }
        try printApiListings(apis, nextToken: next, output: output)
    }
}

struct StoreApiSearch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "search", abstract: "Search the store by name, context, tags and description (same syntax as `tollctl api search`).")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The words to look for.") var query: String
    @OptionGroup var paging: PageOptions
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let (apis, next) = try await NodeSession.with(connection) { node in
            let store = node.store
            return try await node.run {
                try await readPages(from: paging.startToken, pageSize: paging.pageSize, all: paging.all) { (page: PageRequest) async throws -> ([ApiListing], PageResponse?) in
                    let response = try await store.searchPublishedApis(SearchPublishedApisRequest(query: query, page: page))
                    return (response.apis, response.page)
                }
            }
        }
        try printApiListings(apis, nextToken: next, output: output)
    }
}

struct StoreApiShow: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show an API as the store offers it: resources, tiers, documents, gateway URLs.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The API's id.") var apiID: String
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let details = try await NodeSession.with(connection) { node in
            try await node.run { try await node.store.getApiDetails(GetApiDetailsRequest(apiId: apiID)) }
        }
        let api = details.api ?? ApiListing()
        switch output {
        case .json:
            var json = apiListingJSON(api)
            json["resources"] = details.resources.map { ["verb": verbName($0.verb), "uri_template": $0.uriTemplate, "scope": $0.scope] }
            json["tiers"] = details.availablePolicies.map { ["name": $0.name, "description": $0.description] }
            json["documents"] = details.documents.map { ["id": $0.id, "name": $0.name] }
            json["gateway_urls"] = details.gatewayUrls
            try printJSON(json)
        case .table:
            print("\(api.name) \(api.version) by \(api.provider) at \(api.context) (\(LifecycleStateOption.spelling(of: api.lifecycleState)))")
            if !api.description.isEmpty { print(api.description) }
            print("")
            printTable(["VERB", "RESOURCE", "SCOPE"], details.resources.map { [verbName($0.verb), $0.uriTemplate, $0.scope.isEmpty ? "-" : $0.scope] })
            print("")
            printTable(["TIER", "DESCRIPTION"], details.availablePolicies.map { [$0.name, $0.description] })
            if !details.documents.isEmpty {
                print("")
                printTable(["DOCUMENT", "NAME"], details.documents.map { [$0.id, $0.name] })
            }
            for url in details.gatewayUrls { print("gateway: \(url)") }
        }
    }
}

func verbName(_ verb: HttpVerb) -> String { HttpVerbName.spelling(of: verb) }

// MARK: - Applications

func applicationJSON(_ application: Application) -> [String: Any] {
    ["id": application.id, "name": application.name, "owner": application.owner, "tier": application.throttlingPolicy,
     "description": application.description, "callback_url": application.callbackUrl, "group_id": application.groupId,
     "token_type": TokenTypeOption.spelling(of: application.tokenFormat), "tenant": application.tenantDomain,
     "created_at_unix_ms": application.createdAtUnixMs]
}

/// Applications as a table, or as JSON objects.
func printApplications(_ applications: [Application], output: OutputFormat, single: Bool = false) throws {
    switch output {
    case .json: try single ? printJSON(applicationJSON(applications.first ?? Application())) : printJSON(applications.map(applicationJSON))
    case .table: printTable(["ID", "NAME", "TIER", "TOKENS", "OWNER"], applications.map(applicationRow))
    }
}

func applicationRow(_ application: Application) -> [String] {
    [application.id, application.name, application.throttlingPolicy, TokenTypeOption.spelling(of: application.tokenFormat), application.owner]
}

struct ApplicationCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "app", abstract: "Your applications: the programs that subscribe to APIs and hold keys.",
        subcommands: [ApplicationCreate.self, ApplicationUpdate.self, ApplicationDelete.self, ApplicationList.self, ApplicationShow.self])
}

struct ApplicationCreate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Create an application.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Its name, unique among your applications.") var name: String
    @Option(help: "Application tier (an application throttling policy, e.g. Unlimited, 50PerMin).") var tier: String = "Unlimited"
    @Option(help: "What it is for.") var description: String = ""
    @Option(help: "Callback URL for the authorization code grant.") var callback: String = ""
    @Option(help: "Share it with the users holding this role (WSO2's group id).") var group: String = ""
    @Option(name: .customLong("token-type"), help: "opaque or jwt access tokens.") var tokenType: TokenTypeOption = .opaque
    @Option(help: "table or json") var output: OutputFormat = .table
    @Flag(help: "Print only the new application's id (for scripts).") var quiet = false

    func run() async throws {
        let draft = Application(name: name, description: description, throttlingPolicy: tier, callbackUrl: callback, groupId: group, tokenFormat: tokenType.protoValue)
        let created = try await NodeSession.with(connection) { node in
            try await node.run { try await node.store.createApplication(CreateApplicationRequest(application: draft)).application ?? Application() }
        }
        if quiet { return print(created.id) }
        try printApplications([created], output: output, single: true)
    }
}

struct ApplicationUpdate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "update", abstract: "Change an application; what you leave out stays as it is.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The application's id.") var applicationID: String
    @Option(help: "New name.") var name: String?
    @Option(help: "New application tier.") var tier: String?
    @Option(help: "New description.") var description: String?
    @Option(help: "New callback URL.") var callback: String?
    @Option(help: "Share with the users holding this role; empty to stop sharing.") var group: String?
    @Option(name: .customLong("token-type"), help: "opaque or jwt access tokens.") var tokenType: TokenTypeOption?
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let updated = try await NodeSession.with(connection) { node in
            try await node.run {
                var application = try await node.store.getApplication(GetApplicationRequest(applicationId: applicationID)).application ?? Application()
                if let name { application.name = name }
                if let tier { application.throttlingPolicy = tier }
                if let description { application.description = description }
                if let callback { application.callbackUrl = callback }
                if let group { application.groupId = group }
                if let tokenType { application.tokenFormat = tokenType.protoValue }
                return try await node.store.updateApplication(UpdateApplicationRequest(application: application)).application ?? application
            }
        }
        try printApplications([updated], output: output, single: true)
    }
}

struct ApplicationDelete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete an application with its subscriptions and keys; its tokens stop working at once.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The application's id.") var applicationID: String

    func run() async throws {
        try await NodeSession.with(connection) { node in
            _ = try await node.run { try await node.store.deleteApplication(DeleteApplicationRequest(applicationId: applicationID)) }
        }
        print("deleted application \(applicationID)")
    }
}

struct ApplicationList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List your applications and those shared with your groups.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Only those shared with this group.") var group: String = ""
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let applications = try await NodeSession.with(connection) { node in
            try await node.run { try await node.store.listApplications(ListApplicationsRequest(groupId: group)).applications }
        }
        try printApplications(applications, output: output)
    }
}

struct ApplicationShow: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show an application with its keys.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The application's id.") var applicationID: String
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let response = try await NodeSession.with(connection) { node in
            try await node.run { try await node.store.getApplication(GetApplicationRequest(applicationId: applicationID)) }
        }
        let application = response.application ?? Application()
        switch output {
        case .json:
            var json = applicationJSON(application)
            json["keys"] = response.keys.map { ["type": KeyTypeOption.spelling(of: $0.keyType), "consumer_key": $0.consumerKey, "allowed_domains": $0.allowedDomains] }
            try printJSON(json)
        case .table:
            try printApplications([application], output: .table)
            if !response.keys.isEmpty {
                print("")
                printTable(["KEY TYPE", "CONSUMER KEY", "ALLOWED DOMAINS"],
                           response.keys.map { [KeyTypeOption.spelling(of: $0.keyType), $0.consumerKey, $0.allowedDomains.isEmpty ? "any" : $0.allowedDomains.joined(separator: ",")] })
            }
        }
    }
}

// MARK: - Subscriptions (consumer side)

struct SubscriptionCreate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Subscribe one of your applications to an API at a tier.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "The application's id.") var app: String
    @Option(help: "The API's id.") var api: String
    @Option(help: "One of the tiers the API offers (see `tollctl store api show`).") var tier: String
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let subscription = try await NodeSession.with(connection) { node in
            try await node.run { try await node.store.subscribe(SubscribeRequest(applicationId: app, apiId: api, throttlingPolicy: tier)).subscription ?? Subscription() }
        }
        switch output {
        case .json: try printJSON(subscriptionJSON(subscription))
        case .table: print("subscribed \(subscription.applicationName) to \(subscription.apiName) \(subscription.apiVersion) at \(subscription.throttlingPolicy): subscription \(subscription.id)")
        }
    }
}

struct SubscriptionDelete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Unsubscribe: end one of your subscriptions.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The subscription's id.") var subscriptionID: String

    func run() async throws {
        try await NodeSession.with(connection) { node in
            _ = try await node.run { try await node.store.unsubscribe(UnsubscribeRequest(subscriptionId: subscriptionID)) }
        }
        print("deleted subscription \(subscriptionID)")
    }
}

// MARK: - Keys and tokens

struct KeyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "key", abstract: "An application's OAuth keys (consumer key and secret), per key type.",
        subcommands: [KeyGenerate.self, KeyRegenerateSecret.self])
}

struct KeyGenerate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate", abstract: "Create an application's production or sandbox keys and a first application token.",
        discussion: "The consumer secret is shown only here: store it safely. Without --grant the keys allow client_credentials, password and refresh_token (and authorization_code when a callback URL is set).")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The application's id.") var applicationID: String
    @Option(name: .customLong("type"), help: "production or sandbox.") var keyType: KeyTypeOption = .production
    @Option(help: "A grant type the keys allow (repeat): client_credentials, password, refresh_token, authorization_code.") var grant: [GrantOption] = []
    @Option(help: "Callback URL for the authorization code grant (default: the application's).") var callback: String = ""
    @Option(help: "A domain whose Referer the tokens are accepted from (repeat); default any.") var domain: [String] = []
    @Option(help: "Lifetime of application tokens in seconds (default: the key manager's).") var validity: Int64 = 0
    @Option(help: "A scope for the first application token (repeat).") var scope: [String] = []
    @Option(help: "table or json") var output: OutputFormat = .table
    @Flag(help: "Print shell assignments (CONSUMER_KEY, CONSUMER_SECRET, ACCESS_TOKEN) for `eval`.") var env = false

    func run() async throws {
        let request = GenerateKeysRequest(applicationId: applicationID, keyType: keyType.protoValue, grantTypes: grant.map(\.protoValue), callbackUrl: callback,
                                          allowedDomains: domain, applicationTokenValiditySeconds: validity, scopes: scope)
        let response = try await NodeSession.with(connection) { node in
            try await node.run { try await node.store.generateKeys(request) }
        }
        let token = response.applicationToken
        if env {
            print("CONSUMER_KEY=\(shellQuoted(response.key?.consumerKey ?? ""))")
            print("CONSUMER_SECRET=\(shellQuoted(response.consumerSecret))")
            print("ACCESS_TOKEN=\(shellQuoted(token?.accessToken ?? ""))")
            return
        }
        switch output {
        case .json:
            var json: [String: Any] = ["consumer_key": response.key?.consumerKey ?? "", "consumer_secret": response.consumerSecret,
                                       "type": keyType.rawValue]
            if let token { json["access_token"] = token.accessToken; json["expires_in"] = token.expiresInSeconds; json["scope"] = token.scopes.joined(separator: " ") }
            try printJSON(json)
        case .table:
            print("consumer key:    \(response.key?.consumerKey ?? "")")
            print("consumer secret: \(response.consumerSecret)   (shown only now)")
            if let token {
                print("access token:    \(token.accessToken)   (expires in \(token.expiresInSeconds) s; scope \(token.scopes.joined(separator: " ")))")
            }
        }
    }
}

struct KeyRegenerateSecret: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "regenerate-secret", abstract: "Replace an application's consumer secret; every token issued under the old one is revoked.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The application's id.") var applicationID: String
    @Option(name: .customLong("type"), help: "production or sandbox.") var keyType: KeyTypeOption = .production
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let response = try await NodeSession.with(connection) { node in
            try await node.run { try await node.store.regenerateSecret(RegenerateSecretRequest(applicationId: applicationID, keyType: keyType.protoValue)) }
        }
        switch output {
        case .json: try printJSON(["consumer_key": response.consumerKey, "consumer_secret": response.consumerSecret])
        case .table:
            print("consumer key:    \(response.consumerKey)")
            print("consumer secret: \(response.consumerSecret)   (shown only now; earlier tokens are revoked)")
        }
    }
}

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Access tokens: issue an application token, revoke, introspect; the key manager's signing keys.",
        subcommands: [TokenIssue.self, TokenRevoke.self, TokenIntrospect.self, TokenRotateSigningKey.self])
}

struct TokenIssue: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "issue", abstract: "Issue an application token (client credentials) for one of your applications.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The application's id.") var applicationID: String
    @Option(name: .customLong("type"), help: "production or sandbox.") var keyType: KeyTypeOption = .production
    @Option(help: "A scope to ask for (repeat).") var scope: [String] = []
    @Option(help: "Lifetime in seconds (at most the keys' default).") var validity: Int64 = 0
    @Option(help: "A previous token to revoke first.") var replace: String = ""
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let request = GenerateApplicationTokenRequest(applicationId: applicationID, keyType: keyType.protoValue, scopes: scope, validitySeconds: validity,
                                                      previousToken: replace)
        let token = try await NodeSession.with(connection) { node in
            try await node.run { try await node.store.generateApplicationToken(request).token ?? IssuedToken() }
        }
        switch output {
        case .json:
            try printJSON(["access_token": token.accessToken, "token_type": token.tokenType, "expires_in": token.expiresInSeconds, "scope": token.scopes.joined(separator: " ")])
        case .table:
            print("access token: \(token.accessToken)")
            print("expires in \(token.expiresInSeconds) s; scope \(token.scopes.joined(separator: " "))")
        }
    }
}

struct TokenRevoke: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "revoke", abstract: "Revoke an access token of one of your applications; gateways drop it at once.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The application's id.") var applicationID: String
    @Argument(help: "The access token.") var token: String
    @Option(name: .customLong("type"), help: "production or sandbox keys issued it.") var keyType: KeyTypeOption = .production

    func run() async throws {
        try await NodeSession.with(connection) { node in
            _ = try await node.run {
                try await node.store.revokeApplicationToken(RevokeApplicationTokenRequest(applicationId: applicationID, keyType: keyType.protoValue, accessToken: token))
            }
        }
        print("revoked the token")
    }
}

struct TokenIntrospect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "introspect", abstract: "Say whether a token is active, and whose it is (tokens of your own applications; on a keymanager node).")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The access or refresh token.") var token: String
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let result = try await NodeSession.with(connection) { node in
            try await node.run { try await node.keyManager.introspect(IntrospectRequest(token: token)) }
        }
        switch output {
        case .json:
            var json: [String: Any] = ["active": result.active]
            if result.active {
                json["client_id"] = result.clientId
                json["username"] = result.username
                json["tenant"] = result.tenantDomain
                json["application_id"] = result.applicationId
                json["key_type"] = KeyTypeOption.spelling(of: result.keyType)
                json["scope"] = result.scopes.joined(separator: " ")
                json["issued_at_unix_ms"] = result.issuedAtUnixMs
                if let expires = result.expiresAtUnixMs { json["expires_at_unix_ms"] = expires }
            }
            try printJSON(json)
        case .table:
            guard result.active else { return print("inactive (unknown, expired or revoked)") }
            let expires = result.expiresAtUnixMs.map { Date(timeIntervalSince1970: Double($0) / 1000).formatted(date: .abbreviated, time: .standard) } ?? "never"
            printTable(["ACTIVE", "KIND", "CLIENT", "USER", "KEY TYPE", "SCOPE", "EXPIRES"],
                       [["yes", result.kind == .refresh ? "refresh" : "access", result.clientId, "\(result.username)@\(result.tenantDomain)",
                         KeyTypeOption.spelling(of: result.keyType), result.scopes.joined(separator: " "), expires]])
        }
    }
}

struct TokenRotateSigningKey: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rotate-signing-key", abstract: "Make a new JWT signing key on a keymanager node (super tenant administrators).",
        discussion: "Earlier keys stay in the JWKS, so tokens they signed keep verifying, unless --retire-previous removes them at once (a leaked key).")
    @OptionGroup var connection: ConnectionOptions
    @Flag(name: .customLong("retire-previous"), help: "Remove every earlier key from the JWKS now.") var retirePrevious = false

    func run() async throws {
        let response = try await NodeSession.with(connection) { node in
            try await node.run { try await node.keyManager.rotateSigningKey(RotateSigningKeyRequest(retirePrevious: retirePrevious)) }
        }
        print("signing with key \(response.kid); the JWKS publishes \(response.publishedKids.joined(separator: ", "))")
    }
}
