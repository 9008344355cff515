import ArgumentParser
import Foundation
import RPCCore
import TollgateProto
import TollgateServices

// `tollctl api`, `tollctl doc` and `tollctl sub`: what API providers do
// through PublisherService.

extension NodeSession {
    /// PublisherService on this node, called with the session's token, tenant and timeout.
    var publisher: PublisherServiceClient { PublisherServiceClient(connection, defaultOptions: callOptions) }
}

// MARK: - Enum spellings

/// How tollctl spells the values of a generated enum, in flags and in output.
protocol ProtoEnumSpelling: CaseIterable, RawRepresentable where RawValue == String {
    associatedtype ProtoValue: ProtoEnum
    var protoValue: ProtoValue { get }
}

extension ProtoEnumSpelling {
    /// The spelling of `value`: "-" when unset, "?" for a number this client does not know.
    static func spelling(of value: ProtoValue) -> String {
        allCases.first { $0.protoValue == value }?.rawValue ?? (value.rawValue == 0 ? "-" : "?")
    }
}

enum LifecycleStateOption: String, CaseIterable, ExpressibleByArgument, ProtoEnumSpelling {
    case created, prototyped, published, blocked, deprecated, retired
    var protoValue: LifecycleState {
        switch self {
        case .created: .created
        case .prototyped: .prototyped
        case .published: .published
        case .blocked: .blocked
        case .deprecated: .deprecated
        case .retired: .retired
        }
    }
}

enum ApiVisibilityOption: String, CaseIterable, ExpressibleByArgument, ProtoEnumSpelling {
    case `public`, restricted, `private`
    var protoValue: ApiVisibility {
        switch self {
        case .`public`: .`public`
        case .restricted: .restricted
        case .`private`: .`private`
        }
    }
}

enum TransportOption: String, CaseIterable, ExpressibleByArgument, ProtoEnumSpelling {
    case http, https
    var protoValue: TransportScheme {
        switch self {
        case .http: .http
        case .https: .https
        }
    }
}

enum ResourceAuthOption: String, CaseIterable, ExpressibleByArgument, ProtoEnumSpelling {
    case anyToken = "any", applicationToken = "application", applicationUserToken = "application-user", noToken = "none"
    var protoValue: ResourceAuthType {
        switch self {
        case .anyToken: .`any`
        case .applicationToken: .application
        case .applicationUserToken: .applicationUser
        case .noToken: .none
        }
    }
}

/// Verbs are upper case, as in HTTP and in resource specs such as "GET /menu".
enum HttpVerbName: String, CaseIterable, ProtoEnumSpelling {
    case get = "GET", post = "POST", put = "PUT", delete = "DELETE", patch = "PATCH", head = "HEAD", options = "OPTIONS"
    var protoValue: HttpVerb {
        switch self {
        case .get: .get
        case .post: .post
        case .put: .put
        case .delete: .delete
        case .patch: .patch
        case .head: .head
        case .options: .options
        }
    }
}

enum DefinitionFormatOption: String, CaseIterable, ExpressibleByArgument, ProtoEnumSpelling {
    case json, yaml
    var protoValue: DefinitionFormat {
        switch self {
        case .json: .json
        case .yaml: .yaml
        }
    }
}

enum DocumentTypeOption: String, CaseIterable, ExpressibleByArgument, ProtoEnumSpelling {
    case howTo = "how-to", samples, publicForum = "public-forum", supportForum = "support-forum", messageFormat = "message-format", swagger, other
    var protoValue: DocumentType {
        switch self {
        case .howTo: .howTo
        case .samples: .samples
        case .publicForum: .publicForum
        case .supportForum: .supportForum
        case .messageFormat: .apiMessageFormat
        case .swagger: .swagger
        case .other: .other
        }
    }
}

enum DocumentVisibilityOption: String, CaseIterable, ExpressibleByArgument, ProtoEnumSpelling {
    case api, owner, `private`
    var protoValue: DocumentVisibility {
        switch self {
        case .api: .apiLevel
        case .owner: .ownerOnly
        case .`private`: .`private`
        }
    }
}

enum DocumentSourceName: String, CaseIterable, ProtoEnumSpelling {
    case inline, markdown, url, file
    var protoValue: DocumentSourceType {
        switch self {
        case .inline: .inline
        case .markdown: .markdown
        case .url: .url
        case .file: .file
        }
    }
}

enum SubscriptionStatusName: String, CaseIterable, ProtoEnumSpelling {
    case unblocked, blocked, prodOnlyBlocked = "prod-only-blocked", onHold = "on-hold", rejected
    var protoValue: SubscriptionStatus {
        switch self {
        case .unblocked: .unblocked
        case .blocked: .blocked
        case .prodOnlyBlocked: .prodOnlyBlocked
        case .onHold: .onHold
        case .rejected: .rejected
        }
    }
}

// MARK: - Shared helpers

/// Parses a resource spec, "VERB /path" relative to the API's context.
func parseResource(_ spec: String, authType: ResourceAuthType) throws -> ApiResource {
    let parts = spec.split(separator: " ")
    guard parts.count == 2, let verb = HttpVerbName(rawValue: parts[0].uppercased()), parts[1].hasPrefix("/") else {
        let verbs = HttpVerbName.allCases.map(\.rawValue).joined(separator: ", ")
        throw ValidationError("resource \"\(spec)\" is not VERB /path: write it like \"GET /menu\" or \"POST /order/{orderId}\" (verbs: \(verbs))")
    }
    var depth = 0
    for character in parts[1] {
        if character == "{" { depth += 1 } else if character == "}" { depth -= 1 }
        guard (0...1).contains(depth), character != "?", character != "#" else { break }
    }
    guard depth == 0, !parts[1].contains("?"), !parts[1].contains("#"), !parts[1].contains("{}") else {
        throw ValidationError("resource \"\(spec)\": \(parts[1]) is not a URI template: no ? or #, and {name} for a path parameter, e.g. \"GET /order/{orderId}\"")
    }
    return ApiResource(uriTemplate: String(parts[1]), verb: verb.protoValue, authType: authType)
}

func resourceLabel(_ resource: ApiResource) -> String {
    "\(HttpVerbName.spelling(of: resource.verb)) \(resource.uriTemplate)"
}

func validateContext(_ context: String) throws {
    guard context.hasPrefix("/"), context.count > 1, !context.contains(where: \.isWhitespace) else {
        throw ValidationError("context \"\(context)\" is not a path: give one with a leading slash and no spaces, without the version, e.g. /pizzashack")
    }
}

/// Whether `text` is an absolute http or https URL with a host.
/// An endpoint the publisher accepts: http(s), a host, a port in range, a path; no
/// credentials, query or fragment. Checked here so the message names the flag.
func isHTTPURL(_ text: String) -> Bool {
    guard let parts = URLComponents(string: text), let scheme = parts.scheme?.lowercased(), let host = parts.host else { return false }
    guard parts.user == nil, parts.password == nil, parts.query == nil, parts.fragment == nil, !text.contains(where: \.isWhitespace) else { return false }
    if let port = parts.port, !(1...65535).contains(port) { return false }
    return (scheme == "http" || scheme == "https") && !host.isEmpty
}

/// A backend of one URL; load-balanced and failover groups are left to the RPC API.
func singleEndpoint(_ url: String) -> EndpointConfig {
    EndpointConfig(strategy: .single(Endpoint(url: url)))
}

enum EndpointStrategyOption: String, ExpressibleByArgument, CaseIterable {
    case roundRobin = "round-robin", failover
}

/// One URL is a single endpoint; several are load-balanced or a failover list.
func endpointConfig(_ urls: [String], strategy: EndpointStrategyOption) -> EndpointConfig {
    guard urls.count > 1 else { return singleEndpoint(urls[0]) }
    switch strategy {
    case .roundRobin:
        return EndpointConfig(strategy: .loadBalanced(LoadBalancedEndpoints(algorithm: .roundRobin, endpoints: urls.map { Endpoint(url: $0) })))
    case .failover:
        return EndpointConfig(strategy: .failover(FailoverEndpoints(primary: Endpoint(url: urls[0]), secondaries: urls.dropFirst().map { Endpoint(url: $0) })))
    }
}

func endpointSummary(_ config: EndpointConfig?) -> String {
    switch config?.strategy {
    case .single(let endpoint)?: endpoint.url
    case .loadBalanced(let group)?: "load-balanced: " + group.endpoints.map(\.url).joined(separator: ", ")
    case .failover(let group)?: "failover: " + ([group.primary?.url ?? "?"] + group.secondaries.map(\.url)).joined(separator: ", ")
    case nil: "-"
    }
}

func endpointJSON(_ config: EndpointConfig?) -> [String: Any]? {
    switch config?.strategy {
    case .single(let endpoint)?:
        return ["strategy": "single", "urls": [endpoint.url]]
    case .loadBalanced(let group)?:
        let algorithm = group.algorithm == .weightedRoundRobin ? "weighted-round-robin" : "round-robin"
        return ["strategy": "load-balanced", "algorithm": algorithm, "urls": group.endpoints.map(\.url)]
    case .failover(let group)?:
        let urls: [String] = [group.primary?.url ?? ""] + group.secondaries.map(\.url)
        return ["strategy": "failover", "urls": urls]
    case nil:
        return nil
    }
}

/// ISO-8601 in UTC, or "-" for an unset time.
func isoTimestamp(unixMs: Int64) -> String {
    unixMs > 0 ? Date(timeIntervalSince1970: Double(unixMs) / 1000).ISO8601Format() : "-"
}

func listOrDash(_ items: [String]) -> String {
    items.isEmpty ? "-" : items.joined(separator: ", ")
}

/// Prints "key  value" lines with the values lined up.
func printFields(_ fields: [(key: String, value: String)]) {
    let width = fields.map { $0.key.count }.max() ?? 0
    for field in fields { print(field.key.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + field.value) }
}

/// The bytes of a file, or of standard input for "-".
func readBytes(_ path: String) throws -> Data {
    if path == "-" { return FileHandle.standardInput.readDataToEndOfFile() }
    do {
        return try Data(contentsOf: URL(fileURLWithPath: path))
    } catch {
        throw CommandFailure("cannot read \(path): \(error.localizedDescription)")
    }
}

func readText(_ path: String) throws -> String {
    let data = try readBytes(path)
    guard let text = String(data: data, encoding: .utf8) else { throw CommandFailure("\(path) is not UTF-8 text") }
    return text
}

func writeBytes(_ data: Data, to path: String) throws {
    do {
        try data.write(to: URL(fileURLWithPath: path))
    } catch {
        throw CommandFailure("cannot write \(path): \(error.localizedDescription)")
    }
}

// MARK: - Paging

/// Page tokens are opaque bytes; tollctl prints and takes them as lowercase hex.
func hexEncoded(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef")
    return String(bytes.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 0x0f)]] })
}

func hexDecoded(_ text: String) -> [UInt8]? {
    let nibbles = text.compactMap { character in character.hexDigitValue.map { UInt8($0) } }
    guard nibbles.count == text.count, nibbles.count.isMultiple(of: 2) else { return nil }
    return stride(from: 0, to: nibbles.count, by: 2).map { nibbles[$0] << 4 | nibbles[$0 + 1] }
}

struct PageOptions: ParsableArguments {
    @Option(name: .customLong("page-size"), help: "At most this many per page (the node may cap it).") var pageSize: UInt32 = 25
    @Option(name: .customLong("page-token"), help: "Continue where a previous page ended, with the token it printed.") var pageToken: String?
    @Flag(help: "Read every page to the end.") var all = false

    func validate() throws {
        if let pageToken, hexDecoded(pageToken) == nil {
            throw ValidationError("--page-token \(pageToken) is not a page token: pass the hex string a previous listing printed after `next page:`")
        }
    }

    var startToken: [UInt8] { pageToken.flatMap(hexDecoded) ?? [] }
}

/// Reads a listing from `start`: one page, or with `all` every page to the end.
/// Returns the items and the token of the page after the last one read (empty at the end).
func readPages<Item>(from start: [UInt8], pageSize: UInt32, all: Bool,
                     _ fetch: (PageRequest) async throws -> ([Item], PageResponse?)) async throws -> (items: [Item], nextToken: [UInt8]) {
    var items: [Item] = []
    var token = start
    while true {
        let (page, response) = try await fetch(PageRequest(pageSize: pageSize, pageToken: token))
        items += page
        let next = response?.nextPageToken ?? []
        if next.isEmpty || !all { return (items, next) }
        // A token handed back unchanged would have us read the same page for ever.
        guard next != token else { throw CommandFailure("the node returned the same page token twice; stopping after \(items.count) items") }
        token = next
    }
}

func shellQuoted(_ argument: String) -> String {
    let plain = !argument.isEmpty && argument.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_./:=@,+%".contains($0)) }
    return plain ? argument : "'" + argument.replacingOccurrences(of: "'", with: #"'\''"#) + "'"
}

/// Tells, on standard error, how to read the next page: this command line again with the new token.
func printNextPageHint(_ nextToken: [UInt8]) {
    var arguments = Array(CommandLine.arguments.dropFirst())
    if let index = arguments.firstIndex(of: "--page-token") {
        arguments.removeSubrange(index..<min(index + 2, arguments.count))
    }
    arguments.removeAll { $0.hasPrefix("--page-token=") }
    let command = (["tollctl"] + arguments.map(shellQuoted) + ["--page-token", hexEncoded(nextToken)]).joined(separator: " ")
    FileHandle.standardError.write(Data("next page: \(command)\n".utf8))
}

// MARK: - APIs

func apiJSON(_ api: Api) -> [String: Any] {
    var json: [String: Any] = [
        "id": api.id, "tenant": api.tenantDomain, "provider": api.provider, "name": api.name, "version": api.version,
        "context": api.context, "description": api.description, "tags": api.tags, "default_version": api.defaultVersion,
        "revision": api.revision, "state": LifecycleStateOption.spelling(of: api.lifecycleState),
    ]
    json["visibility"] = ApiVisibilityOption.spelling(of: api.visibility)
    json["visible_roles"] = api.visibleRoles
    json["transports"] = api.transports.map(TransportOption.spelling(of:))
    json["authorization_header"] = api.authorizationHeader
    json["resources"] = api.resources.map { resource in
        ["verb": HttpVerbName.spelling(of: resource.verb), "path": resource.uriTemplate, "auth": ResourceAuthOption.spelling(of: resource.authType),
         "throttling_policy": resource.throttlingPolicy, "scope": resource.scope]
    }
    json["scopes"] = api.scopes.map { scope in ["key": scope.key, "name": scope.name, "description": scope.description, "roles": scope.roles] as [String: Any] }
    json["tiers"] = api.subscriptionPolicies
    json["api_policy"] = api.apiPolicy
    json["backend_jwt"] = api.backendJwt
    if let production = endpointJSON(api.productionEndpoints) { json["production_endpoints"] = production }
    if let sandbox = endpointJSON(api.sandboxEndpoints) { json["sandbox_endpoints"] = sandbox }
    if let tps = api.maxProductionTps { json["max_production_tps"] = tps }
    if let tps = api.maxSandboxTps { json["max_sandbox_tps"] = tps }
    if let owner = api.businessOwner { json["business_owner"] = ["name": owner.name, "email": owner.email] }
    if let owner = api.technicalOwner { json["technical_owner"] = ["name": owner.name, "email": owner.email] }
    json["cors_enabled"] = api.cors?.enabled ?? false
    json["created_by"] = api.createdBy
    json["created_at_unix_ms"] = api.createdAtUnixMs
    json["updated_by"] = api.updatedBy
    json["updated_at_unix_ms"] = api.updatedAtUnixMs
    return json
}

func apiListingRow(_ api: ApiListing) -> [String] {
    [api.id, api.name, api.version, api.context, LifecycleStateOption.spelling(of: api.lifecycleState), api.provider]
}

func apiListingJSON(_ api: ApiListing) -> [String: Any] {
    var json: [String: Any] = [
        "id": api.id, "provider": api.provider, "name": api.name, "version": api.version, "context": api.context,
        "description": api.description, "tags": api.tags, "default_version": api.defaultVersion,
    ]
    json["state"] = LifecycleStateOption.spelling(of: api.lifecycleState)
    json["visibility"] = ApiVisibilityOption.spelling(of: api.visibility)
    json["tiers"] = api.subscriptionPolicies
    json["transports"] = api.transports.map(TransportOption.spelling(of:))
    json["updated_at_unix_ms"] = api.updatedAtUnixMs
    return json
}

func printApiListings(_ apis: [ApiListing], nextToken: [UInt8], output: OutputFormat) throws {
    switch output {
    case .json: try printJSON(apis.map(apiListingJSON))
    case .table: printTable(["ID", "NAME", "VERSION", "CONTEXT", "STATE", "PROVIDER"], apis.map(apiListingRow))
    }
    if !nextToken.isEmpty { printNextPageHint(nextToken) }
}

/// What create, import and new-version print: the API in brief, or all of it as JSON.
func printApiSummary(_ api: Api, output: OutputFormat) throws {
    switch output {
    case .json:
        try printJSON(apiJSON(api))
    case .table:
        printTable(["ID", "NAME", "VERSION", "CONTEXT", "STATE"],
                   [[api.id, api.name, api.version, api.context, LifecycleStateOption.spelling(of: api.lifecycleState)]])
    }
}

/// What a new API gets when the flags leave it open.
func applyNewApiDefaults(_ api: inout Api) {
    if api.subscriptionPolicies.isEmpty { api.subscriptionPolicies = ["Unlimited"] }
    if api.visibility == .unspecified { api.visibility = .`public` }
    if api.transports.isEmpty { api.transports = [.https, .http] }
}

/// Settings that create, import and update share. Each one left out keeps
/// the API's value (or, for a new API, its default).
struct ApiSettings: ParsableArguments {
    @Option(help: "What the API does.") var description: String?
    @Option(name: .customLong("endpoint"), help: "A production backend URL (repeat for several; replaces the list).") var endpoints: [String] = []
    @Option(name: .customLong("endpoint-strategy"),
            help: "How gateways use several endpoints: round-robin (the default) or failover (the first, then the next when it fails).")
    var endpointStrategy: EndpointStrategyOption?
    @Option(name: .customLong("sandbox-endpoint"), help: "The sandbox backend URL; \"\" removes it.") var sandboxEndpoint: String?
    @Option(name: .customLong("tier"), help: "A subscription tier consumers may choose, e.g. Gold (repeat; replaces the list; new APIs default to Unlimited).")
    var tiers: [String] = []
    @Option(help: "Who sees the API in the store (new APIs default to public).") var visibility: ApiVisibilityOption?
    @Option(name: .customLong("visible-role"), help: "A role that may see a restricted API (repeat; implies --visibility restricted).")
    var visibleRoles: [String] = []
    @Option(name: .customLong("transport"), help: "A scheme the gateways accept calls on (repeat; new APIs default to both).")
    var transports: [TransportOption] = []
    @Flag(inversion: .prefixedNo, help: "Whether the API is also served without its version in the path.") var defaultVersion: Bool?
    @Option(name: .customLong("api-policy"), help: "An advanced throttling policy for the whole API, overriding resource policies; \"\" removes it.")
    var apiPolicy: String?
    @Option(name: .customLong("resource-auth"), help: "The token the resources added by this command require.") var resourceAuth: ResourceAuthOption = .anyToken
    @Option(name: .customLong("resource-policy"), help: "An advanced throttling policy counted per resource, for the resources added by this command.")
    var resourcePolicy: String?
    @Option(name: .customLong("max-production-tps"),
            help: "Hard backend limit: production calls per second the whole cluster lets through (503 900801 beyond); 0 removes it.")
    var maxProductionTps: UInt32?
    @Option(name: .customLong("max-sandbox-tps"), help: "The same for sandbox calls; 0 removes it.") var maxSandboxTps: UInt32?
    @Option(name: .customLong("backend-jwt"),
            help: "on: gateways send the backend a JWT they sign with the caller's claims (X-JWT-Assertion, as WSO2 does); off (the default for new APIs): none.")
    var backendJWT: Switch?

    enum Switch: String, ExpressibleByArgument, CaseIterable { case on, off }

    func validate() throws {
        for endpoint in endpoints where !isHTTPURL(endpoint) {
            throw ValidationError("--endpoint \"\(endpoint)\" is not a backend URL: give http(s)://host[:port][/path], e.g. https://backend.internal:8443/menu")
        }
        if endpointStrategy != nil && endpoints.count < 2 {
            throw ValidationError("--endpoint-strategy needs two or more --endpoint URLs")
        }
        if let sandboxEndpoint, !sandboxEndpoint.isEmpty, !isHTTPURL(sandboxEndpoint) {
            throw ValidationError("--sandbox-endpoint \"\(sandboxEndpoint)\" is not a backend URL: give http(s)://host[:port][/path], or \"\" to remove it")
        }
        if tiers.contains(where: { $0.trimmingCharacters(in: .whitespaces).isEmpty }) {
            throw ValidationError("--tier needs a tier name such as Gold, Silver or Unlimited (`tollctl policy list --kind subscription` shows them)")
        }
        if !visibleRoles.isEmpty, let visibility, visibility != .restricted {
            throw ValidationError("--visible-role applies to restricted APIs only: drop it or use --visibility restricted")
        }
    }

    /// What a new API's settings must say that an update's may leave to the stored API.
    func validateNewApi() throws {
        if visibility == .restricted, visibleRoles.isEmpty {
            throw ValidationError("--visibility restricted needs the roles that may see the API: add --visible-role ROLE (repeat for more)")
        }
    }

    /// True when no setting is given (--resource-auth alone changes nothing).
    var isEmpty: Bool {
        let given: [Bool] = [description != nil, !endpoints.isEmpty, sandboxEndpoint != nil, !tiers.isEmpty, visibility != nil,
                             !visibleRoles.isEmpty, !transports.isEmpty, defaultVersion != nil, apiPolicy != nil, maxProductionTps != nil,
                             maxSandboxTps != nil, backendJWT != nil]
        return !given.contains(true)
    }

    /// Writes the given settings into `api`, leaving the rest as it is.
    func apply(to api: inout Api) {
        if let description { api.description = description }
        if !endpoints.isEmpty { api.productionEndpoints = endpointConfig(endpoints, strategy: endpointStrategy ?? .roundRobin) }
        if let sandboxEndpoint { api.sandboxEndpoints = sandboxEndpoint.isEmpty ? nil : singleEndpoint(sandboxEndpoint) }
        if !tiers.isEmpty { api.subscriptionPolicies = tiers }
        if let visibility { api.visibility = visibility.protoValue }
        if !visibleRoles.isEmpty {
            api.visibleRoles = visibleRoles
            api.visibility = .restricted
        }
        if !transports.isEmpty { api.transports = transports.map(\.protoValue) }
        if let defaultVersion { api.defaultVersion = defaultVersion }
        if let apiPolicy { api.apiPolicy = apiPolicy }
        if let maxProductionTps { api.maxProductionTps = maxProductionTps == 0 ? nil : maxProductionTps }
        if let maxSandboxTps { api.maxSandboxTps = maxSandboxTps == 0 ? nil : maxSandboxTps }
        if let backendJWT { api.backendJwt = backendJWT == .on }
    }

    /// A resource this command adds, with `--resource-auth` and `--resource-policy`.
    func newResource(_ spec: String) throws -> ApiResource {
        var resource = try parseResource(spec, authType: resourceAuth.protoValue)
        if let resourcePolicy { resource.throttlingPolicy = resourcePolicy }
        return resource
    }
}

struct ApiCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "api", abstract: "APIs: create, change, import and export, version and move through the lifecycle.",
        subcommands: [ApiList.self, ApiSearch.self, ApiGet.self, ApiCreate.self, ApiImport.self, ApiUpdate.self, ApiDelete.self,
                      ApiExport.self, ApiLifecycle.self, ApiHistory.self, ApiNewVersion.self])
}

struct ApiList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the tenant's APIs.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Only this provider's APIs.") var provider: String?
    @Option(name: .customLong("state"), help: "Only APIs in this state (repeat).") var states: [LifecycleStateOption] = []
    @OptionGroup var paging: PageOptions
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let (apis, nextToken) = try await NodeSession.with(connection) { node in
            let publisher = node.publisher
            return try await node.run {
                try await readPages(from: paging.startToken, pageSize: paging.pageSize, all: paging.all) { (page: PageRequest) async throws -> ([ApiListing], PageResponse?) in
                    let response = try await publisher.listApis(ListApisRequest(provider: provider ?? "", states: states.map(\.protoValue), page: page))
                    return (response.apis, response.page)
                }
            }
        }
        try printApiListings(apis, nextToken: nextToken, output: output)
    }
}

struct ApiSearch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "search", abstract: "Search the tenant's APIs by name, description and tags.",
        discussion: "A word may be narrowed with name:, provider:, version:, context: or tag:, e.g. `tollctl api search \"tag:food pizza\"`.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The words to look for.") var query: String
    @OptionGroup var paging: PageOptions
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let (apis, nextToken) = try await NodeSession.with(connection) { node in
            let publisher = node.publisher
            return try await node.run {
                try await readPages(from: paging.startToken, pageSize: paging.pageSize, all: paging.all) { (page: PageRequest) async throws -> ([ApiListing], PageResponse?) in
                    let response = try await publisher.searchApis(SearchApisRequest(query: query, page: page))
                    return (response.apis, response.page)
                }
            }
        }
        try printApiListings(apis, nextToken: nextToken, output: output)
    }
}

struct ApiGet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "get", abstract: "Show one API with its resources.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The API's id.") var id: String
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let fetched = try await NodeSession.with(connection) { node in
            try await node.run { try await node.publisher.getApi(GetApiRequest(apiId: id)).api }
        }
        guard let api = fetched else { throw CommandFailure("the node returned no API for \(id)") }
        switch output {
        case .json:
            try printJSON(apiJSON(api))
        case .table:
            let visibility = ApiVisibilityOption.spelling(of: api.visibility)
            printFields([
                ("id", api.id),
                ("name", "\(api.name) \(api.version)\(api.defaultVersion ? " (default version)" : "")"),
                ("context", api.context),
                ("provider", api.provider),
                ("state", LifecycleStateOption.spelling(of: api.lifecycleState)),
                ("description", api.description.isEmpty ? "-" : api.description),
                ("tags", listOrDash(api.tags)),
                ("visibility", api.visibility == .restricted ? "\(visibility) to \(listOrDash(api.visibleRoles))" : visibility),
                ("transports", listOrDash(api.transports.map(TransportOption.spelling(of:)))),
                ("production", endpointSummary(api.productionEndpoints)),
                ("sandbox", endpointSummary(api.sandboxEndpoints)),
                ("tiers", listOrDash(api.subscriptionPolicies)),
                ("api policy", api.apiPolicy.isEmpty ? "-" : api.apiPolicy),
                ("backend JWT", api.backendJwt ? "on" : "off"),
                ("revision", String(api.revision)),
                ("created", "\(isoTimestamp(unixMs: api.createdAtUnixMs)) by \(api.createdBy.isEmpty ? "?" : api.createdBy)"),
                ("updated", "\(isoTimestamp(unixMs: api.updatedAtUnixMs)) by \(api.updatedBy.isEmpty ? "?" : api.updatedBy)"),
            ])
            print()
            if api.resources.isEmpty {
                print("no resources: add some with `tollctl api update \(api.id) --add-resource \"GET /path\"`")
            } else {
                printTable(["VERB", "PATH", "AUTH", "POLICY", "SCOPE"], api.resources.map { resource in
                    [HttpVerbName.spelling(of: resource.verb), resource.uriTemplate, ResourceAuthOption.spelling(of: resource.authType),
                     resource.throttlingPolicy.isEmpty ? "-" : resource.throttlingPolicy, resource.scope.isEmpty ? "-" : resource.scope]
                })
            }
        }
    }
}

struct ApiCreate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create", abstract: "Create an API (in the created state).",
        discussion: """
            Resources are VERB /path relative to the context, e.g. --resource "GET /menu" --resource "POST /order/{orderId}"; \
            they take any token unless --resource-auth says otherwise. Without --tier the API offers Unlimited.
            """)
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "The API's name.") var name: String
    @Option(name: .customLong("api-version"), help: "Its version, e.g. 1.0.0.") var version: String
    @Option(help: "The path it is served under, without the version, e.g. /pizzashack.") var context: String
    @Option(name: .customLong("tag"), help: "A tag for the store (repeat).") var tags: [String] = []
    @Option(name: .customLong("resource"), help: "An operation, \"VERB /path\" (repeat).") var resources: [String] = []
    @OptionGroup var settings: ApiSettings
    @Option(help: "table or json") var output: OutputFormat = .table

    func validate() throws {
        try validateContext(context)
        guard !resources.isEmpty else { throw ValidationError("an API needs at least one operation: add --resource \"GET /path\" (repeat for more)") }
        try settings.validateNewApi()
        for spec in resources { _ = try parseResource(spec, authType: .unspecified) }
    }

    func run() async throws {
        var api = Api()
        api.name = name
        api.version = version
        api.context = context
        api.tags = tags
        api.resources = try resources.map(settings.newResource)
        settings.apply(to: &api)
        applyNewApiDefaults(&api)
        let request = CreateApiRequest(api: api)
        let created = try await NodeSession.with(connection) { node in
            try await node.run { try await node.publisher.createApi(request).api }
        }
        try printApiSummary(created ?? api, output: output)
    }
}

struct ApiImport: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import", abstract: "Create an API from an OpenAPI (Swagger) document, or replace an API's resources with one.",
        discussion: """
            Name, version, description and resources come from the document unless given here. \
            With --api the document replaces that API's resources and definition, and nothing else changes.
            """)
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The OpenAPI document, JSON or YAML (- for standard input).") var file: String
    @Option(name: .customLong("api"), help: "Replace the resources and definition of this API (its id) instead of creating one.") var apiID: String?
    @Option(help: "The API's name, if not the document's title.") var name: String?
    @Option(name: .customLong("api-version"), help: "Its version, if not the document's.") var version: String?
    @Option(help: "The path it is served under, without the version, e.g. /pizzashack.") var context: String?
    @Option(name: .customLong("tag"), help: "A tag for the store (repeat).") var tags: [String] = []
    @OptionGroup var settings: ApiSettings
    @Option(help: "The document's format; default: from the file name, else from its first character.") var format: DefinitionFormatOption?
    @Option(help: "table or json") var output: OutputFormat = .table
    @Flag(name: .shortAndLong, help: "Print only the API's id, for scripts (warnings still go to standard error).") var quiet = false

    func validate() throws {
        if apiID != nil, name != nil || version != nil || context != nil || !tags.isEmpty || !settings.isEmpty {
            throw ValidationError("with --api only the resources and definition change: drop the other flags, and change settings with `tollctl api update`")
        }
        if apiID == nil, context == nil {
            throw ValidationError("a new API needs --context, the path it is served under without its version, e.g. --context /pizzashack (an OpenAPI document does not say it); or replace an API's resources with --api ID")
        }
        if let context { try validateContext(context) }
        if apiID == nil { try settings.validateNewApi() }
    }

    /// The request must fit in one RPC frame with room to spare; the node's own limit
    /// (`max_definition_bytes`, 2 MiB unless configured) is usually lower.
    static let largestDocument = 3_670_016

    func run() async throws {
        let document = try readText(file)
        guard document.utf8.count <= Self.largestDocument else {
            throw CommandFailure("\(file) is \(document.utf8.count) bytes; a publisher accepts at most \(Self.largestDocument) (3.5 MiB, with max_definition_bytes "
                + "raised that far in its [publisher] section): split the API, or drop examples it does not need")
        }
        let request = ImportOpenApiRequest(apiId: apiID ?? "", apiTemplate: apiID == nil ? newApiTemplate() : nil, document: document,
                                           format: format?.protoValue ?? Self.guessFormat(path: file, document: document))
        let response = try await NodeSession.with(connection) { node in
            try await node.run { try await node.publisher.importOpenApi(request) }
        }
        for warning in response.warnings { FileHandle.standardError.write(Data("warning: \(warning)\n".utf8)) }
        guard let api = response.api else { throw CommandFailure("the node returned no API for the imported document") }
        if quiet { return print(api.id) }
        if output == .json {
            var json = apiJSON(api)
            json["servers"] = response.servers
            json["warnings"] = response.warnings
            return try printJSON(json)
        }
        try printApiSummary(api, output: output)
        let definition = response.definition.map { $0.openapiVersion == "2.0" ? "Swagger 2.0" : "OpenAPI \($0.openapiVersion)" } ?? "the document"
        print("\(api.resources.count) resources from \(definition)")
        guard !response.servers.isEmpty else { return }
        print("servers in the document: \(response.servers.joined(separator: ", "))")
        if api.productionEndpoints == nil, let first = response.servers.first {
            print("the API has no endpoint yet; to send its calls to the first of them: tollctl api update \(api.id) --endpoint \(first)")
        }
    }

    /// What the document cannot say about a new API, and what the flags say instead of it.
    func newApiTemplate() -> Api {
        var template = Api()
        template.name = name ?? ""
        template.version = version ?? ""
        template.context = context ?? ""
        template.tags = tags
        settings.apply(to: &template)
        applyNewApiDefaults(&template)
        return template
    }

    static func guessFormat(path: String, document: String) -> DefinitionFormat {
        let lowered = path.lowercased()
        if lowered.hasSuffix(".json") { return .json }
        if lowered.hasSuffix(".yaml") || lowered.hasSuffix(".yml") { return .yaml }
        // A JSON document is an object; anything else is taken for YAML.
        return document.first(where: { !$0.isWhitespace }) == "{" ? .json : .yaml
    }
}

struct ApiUpdate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "update", abstract: "Change an API's settings, tags and resources; what you leave out stays as it is.",
        discussion: """
            The API is read, changed and written back only if nobody changed it in between. \
            Name, version and context are fixed: `tollctl api new-version` makes another version, \
            and `tollctl api lifecycle` changes the state.
            """)
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The API's id.") var id: String
    @OptionGroup var settings: ApiSettings
    @Option(name: .customLong("add-tag"), help: "A tag to add (repeat).") var addTags: [String] = []
    @Option(name: .customLong("remove-tag"), help: "A tag to remove (repeat).") var removeTags: [String] = []
    @Option(name: .customLong("add-resource"), help: "An operation to add or replace, \"VERB /path\" (repeat).") var addResources: [String] = []
    @Option(name: .customLong("remove-resource"), help: "An operation to remove, \"VERB /path\" (repeat).") var removeResources: [String] = []
    @Option(help: "table or json") var output: OutputFormat = .table

    func validate() throws {
        guard !settings.isEmpty || !addTags.isEmpty || !removeTags.isEmpty || !addResources.isEmpty || !removeResources.isEmpty else {
            throw ValidationError("nothing to change: give a setting such as --description or --tier, or --add-/--remove-tag or --add-/--remove-resource")
        }
        for spec in addResources + removeResources { _ = try parseResource(spec, authType: .unspecified) }
    }

    func run() async throws {
        let updated = try await NodeSession.with(connection) { node in
            let publisher = node.publisher
            return try await node.run {
                guard var api = try await publisher.getApi(GetApiRequest(apiId: id)).api else {
                    throw CommandFailure("the node returned no API for \(id)")
                }
                let revision = api.revision
                try change(&api)
                do {
                    return try await publisher.updateApi(UpdateApiRequest(api: api, expectedRevision: revision)).api ?? api
                } catch let error as RPCError where error.code == .aborted {
                    throw CommandFailure("API \(id) changed while this update was made (\(error.message)); run the command again")
                }
            }
        }
        try printApiSummary(updated, output: output)
    }

    func change(_ api: inout Api) throws {
        settings.apply(to: &api)
        for tag in addTags where !api.tags.contains(tag) { api.tags.append(tag) }
        for tag in removeTags {
            guard let index = api.tags.firstIndex(of: tag) else { throw CommandFailure("API \(api.name) has no tag \(tag) (its tags: \(listOrDash(api.tags)))") }
            api.tags.remove(at: index)
        }
        let authType = settings.resourceAuth.protoValue
        for spec in removeResources {
            let unwanted = try parseResource(spec, authType: authType)
            guard let index = api.resources.firstIndex(where: { $0.verb == unwanted.verb && $0.uriTemplate == unwanted.uriTemplate }) else {
                throw CommandFailure("API \(api.name) has no resource \(resourceLabel(unwanted)) (its resources: \(listOrDash(api.resources.map(resourceLabel))))")
            }
            api.resources.remove(at: index)
        }
        for spec in addResources {
            let resource = try settings.newResource(spec)
            api.resources.removeAll { $0.verb == resource.verb && $0.uriTemplate == resource.uriTemplate }
            api.resources.append(resource)
        }
    }
}

struct ApiDelete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete an API nobody subscribes to.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The API's id.") var id: String

    func run() async throws {
        try await NodeSession.with(connection) { node in
            _ = try await node.run { try await node.publisher.deleteApi(DeleteApiRequest(apiId: id)) }
        }
        print("deleted API \(id)")
    }
}

struct ApiExport: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "export", abstract: "Write an API's OpenAPI definition to standard output or a file.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The API's id.") var id: String
    @Option(help: "json or yaml; default: the format it is stored in.") var format: DefinitionFormatOption?
    @Option(help: "Write it to this file instead.") var file: String?

    func run() async throws {
        let request = ExportOpenApiRequest(apiId: id, format: format?.protoValue ?? .unspecified)
        let exported = try await NodeSession.with(connection) { node in
            try await node.run { try await node.publisher.exportOpenApi(request).definition }
        }
        guard let definition = exported else { throw CommandFailure("the node returned no definition for API \(id)") }
        if let file {
            try writeBytes(Data(definition.document.utf8), to: file)
            print("wrote the OpenAPI \(definition.openapiVersion) definition of API \(id) to \(file)")
        } else {
            print(definition.document, terminator: definition.document.hasSuffix("\n") ? "" : "\n")
        }
    }
}

struct ApiLifecycle: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lifecycle", abstract: "Move an API to another lifecycle state.",
        discussion: """
            Allowed moves: created → published or prototyped; prototyped → published or created; \
            published → blocked, deprecated, prototyped or created; blocked → published or deprecated; \
            deprecated → retired. The move is written to the deployment feed that gateway nodes watch.
            """)
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The API's id.") var id: String
    @Argument(help: "The state to move to.") var state: LifecycleStateOption
    @Option(help: "Why, for the history.") var comment: String = ""
    @Flag(name: .customLong("deprecate-old-versions"), help: "On publishing: deprecate the published older versions.") var deprecateOldVersions = false
    @Flag(name: .customLong("require-resubscription"), help: "On publishing a new version: leave subscribers on the old one instead of copying their subscriptions.")
    var requireResubscription = false

    func validate() throws {
        if state != .published, deprecateOldVersions || requireResubscription {
            throw ValidationError("--deprecate-old-versions and --require-resubscription apply only when publishing (STATE published)")
        }
    }

    func run() async throws {
        let request = ChangeLifecycleRequest(apiId: id, targetState: state.protoValue, comment: comment,
                                             deprecateOldVersions: deprecateOldVersions, requireResubscription: requireResubscription)
        let response = try await NodeSession.with(connection) { node in
            try await node.run { try await node.publisher.changeLifecycle(request) }
        }
        let from = response.entry.map { LifecycleStateOption.spelling(of: $0.fromState) } ?? "?"
        let to = LifecycleStateOption.spelling(of: response.entry?.toState ?? response.api?.lifecycleState ?? state.protoValue)
        let api = response.api.map { "\($0.name) \($0.version)" } ?? id
        print("API \(api): \(from) → \(to)")
    }
}

struct ApiHistory: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "history", abstract: "Show every lifecycle move of an API, oldest first.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The API's id.") var id: String
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let entries = try await NodeSession.with(connection) { node in
            try await node.run { try await node.publisher.getLifecycleHistory(GetLifecycleHistoryRequest(apiId: id)).entries }
        }
        switch output {
        case .json:
            try printJSON(entries.map { entry in
                ["when": isoTimestamp(unixMs: entry.occurredAtUnixMs), "when_unix_ms": entry.occurredAtUnixMs, "actor": entry.actor,
                 "from": LifecycleStateOption.spelling(of: entry.fromState), "to": LifecycleStateOption.spelling(of: entry.toState),
                 "comment": entry.comment] as [String: Any]
            })
        case .table:
            printTable(["WHEN", "ACTOR", "FROM", "TO", "COMMENT"], entries.map { entry in
                [isoTimestamp(unixMs: entry.occurredAtUnixMs), entry.actor, LifecycleStateOption.spelling(of: entry.fromState),
                 LifecycleStateOption.spelling(of: entry.toState), entry.comment]
            })
        }
    }
}

struct ApiNewVersion: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "new-version", abstract: "Copy an API (resources, documents, definition, tiers) under a new version, in the created state.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The id of the API to copy.") var id: String
    @Argument(help: "The new version, e.g. 2.0.0.") var version: String
    @Flag(name: .customLong("default-version"), help: "Make the copy the default version once it is published.") var defaultVersion = false
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let request = CreateNewVersionRequest(apiId: id, newVersion: version, defaultVersion: defaultVersion)
        let created = try await NodeSession.with(connection) { node in
            try await node.run { try await node.publisher.createNewVersion(request).api }
        }
        guard let copy = created else { throw CommandFailure("the node returned no API for the new version") }
        try printApiSummary(copy, output: output)
    }
}

// MARK: - Documents

func documentTypeLabel(_ document: Document) -> String {
    let type = DocumentTypeOption.spelling(of: document.documentType)
    return document.documentType == .other && !document.otherTypeName.isEmpty ? "\(type) (\(document.otherTypeName))" : type
}

func documentJSON(_ document: Document) -> [String: Any] {
    var json: [String: Any] = [
        "id": document.id, "api_id": document.apiId, "name": document.name, "type": DocumentTypeOption.spelling(of: document.documentType),
        "summary": document.summary, "visibility": DocumentVisibilityOption.spelling(of: document.visibility),
    ]
    json["source"] = DocumentSourceName.spelling(of: document.sourceType)
    if document.documentType == .other { json["other_type_name"] = document.otherTypeName }
    switch document.body {
    case .text(let text)?: json["text"] = text
    case .url(let url)?: json["url"] = url
    case .file(let file)?: json["file"] = ["name": file.fileName, "media_type": file.mediaType, "size_bytes": file.content.count] as [String: Any]
    case nil: break
    }
    json["created_by"] = document.createdBy
    json["created_at_unix_ms"] = document.createdAtUnixMs
    json["updated_at_unix_ms"] = document.updatedAtUnixMs
    return json
}

/// Where a document's content comes from: at most one of these.
struct DocumentContentOptions: ParsableArguments {
    @Option(help: "The content as inline text (HTML allowed).") var text: String?
    @Option(name: .customLong("markdown-file"), help: "The content as Markdown, read from this file.") var markdownFile: String?
    @Option(name: .customLong("inline-file"), help: "The content as inline text (HTML allowed), read from this file.") var inlineFile: String?
    @Option(help: "A link to content kept elsewhere.") var url: String?
    @Option(help: "A file to upload as the content, e.g. a PDF.") var file: String?
    @Option(name: .customLong("media-type"), help: "The uploaded file's media type; default: guessed from its name.") var mediaType: String?

    static let mediaTypes = [
        "pdf": "application/pdf", "md": "text/markdown", "markdown": "text/markdown", "txt": "text/plain", "html": "text/html",
        "htm": "text/html", "json": "application/json", "yaml": "application/yaml", "yml": "application/yaml", "xml": "application/xml",
        "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "svg": "image/svg+xml", "zip": "application/zip",
    ]

    var givenCount: Int { [text, markdownFile, inlineFile, url, file].compactMap { $0 }.count }

    func validate() throws {
        guard givenCount <= 1 else { throw ValidationError("give the content once: one of --text, --markdown-file, --inline-file, --url or --file") }
        if mediaType != nil, file == nil { throw ValidationError("--media-type goes with --file") }
        if let url, !isHTTPURL(url) { throw ValidationError("--url \"\(url)\" is not an http(s) URL, e.g. https://wiki.example.com/pizzashack") }
    }

    /// The content given, read from its file if need be; nil when none was given.
    func readContent() throws -> (source: DocumentSourceType, body: Document.Body)? {
        if let text { return (.inline, .text(text)) }
        if let markdownFile { return (.markdown, .text(try readText(markdownFile))) }
        if let inlineFile { return (.inline, .text(try readText(inlineFile))) }
        if let url { return (.url, .url(url)) }
        if let file {
            let name = URL(fileURLWithPath: file).lastPathComponent
            let type = mediaType ?? Self.mediaTypes[URL(fileURLWithPath: file).pathExtension.lowercased()] ?? "application/octet-stream"
            return (.file, .file(DocumentFile(fileName: name, mediaType: type, content: Array(try readBytes(file)))))
        }
        return nil
    }
}

struct DocumentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doc", abstract: "Documents of an API: how-tos, samples, forums and other documentation.",
        subcommands: [DocumentList.self, DocumentGet.self, DocumentAdd.self, DocumentUpdate.self, DocumentDelete.self])
}

struct DocumentList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List an API's documents.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The API's id.") var apiID: String
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let documents = try await NodeSession.with(connection) { node in
            let publisher = node.publisher
            return try await node.run {
                try await readPages(from: [], pageSize: 100, all: true) { (page: PageRequest) async throws -> ([Document], PageResponse?) in
                    let response = try await publisher.listDocuments(ListDocumentsRequest(apiId: apiID, page: page))
                    return (response.documents, response.page)
                }.items
            }
        }
        switch output {
        case .json:
            try printJSON(documents.map(documentJSON))
        case .table:
            printTable(["ID", "NAME", "TYPE", "SOURCE", "VISIBILITY"], documents.map { document in
                [document.id, document.name, documentTypeLabel(document), DocumentSourceName.spelling(of: document.sourceType),
                 DocumentVisibilityOption.spelling(of: document.visibility)]
            })
        }
    }
}

struct DocumentGet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "get", abstract: "Show a document with its content, or save the content to a file.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The document's id.") var documentID: String
    @Option(help: "Write the content (text or uploaded file) to this file instead of showing the document.") var save: String?
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let fetched = try await NodeSession.with(connection) { node in
            try await node.run { try await node.publisher.getDocument(GetDocumentRequest(documentId: documentID)).document }
        }
        guard let document = fetched else { throw CommandFailure("the node returned no document for \(documentID)") }
        if let save {
            let bytes: [UInt8]
            switch document.body {
            case .text(let text)?: bytes = Array(text.utf8)
            case .file(let file)?: bytes = file.content
            case .url(let url)?: throw CommandFailure("document \(document.name) is a link to \(url); there is no content here to save")
            case nil: throw CommandFailure("document \(document.name) has no content")
            }
            try writeBytes(Data(bytes), to: save)
            print("saved \(bytes.count) bytes of document \(document.name) to \(save)")
            return
        }
        switch output {
        case .json:
            try printJSON(documentJSON(document))
        case .table:
            var fields: [(key: String, value: String)] = [
                ("id", document.id),
                ("api", document.apiId),
                ("name", document.name),
                ("type", documentTypeLabel(document)),
                ("summary", document.summary.isEmpty ? "-" : document.summary),
                ("visibility", DocumentVisibilityOption.spelling(of: document.visibility)),
                ("source", DocumentSourceName.spelling(of: document.sourceType)),
                ("created", "\(isoTimestamp(unixMs: document.createdAtUnixMs)) by \(document.createdBy.isEmpty ? "?" : document.createdBy)"),
                ("updated", isoTimestamp(unixMs: document.updatedAtUnixMs)),
            ]
            switch document.body {
            case .url(let url)?: fields.append(("url", url))
            case .file(let file)?: fields.append(("file", "\(file.fileName) (\(file.mediaType), \(file.content.count) bytes); save it with --save FILE"))
            case .text(_)?, nil: break
            }
            printFields(fields)
            // Text content follows the fields, as it is, after a blank line.
            if case .text(let text)? = document.body {
                print()
                print(text, terminator: text.hasSuffix("\n") ? "" : "\n")
            }
        }
    }
}

struct DocumentAdd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add", abstract: "Add a document to an API.",
        discussion: "The content is one of --text, --markdown-file, --inline-file, --url or --file.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The API's id.") var apiID: String
    @Option(help: "The document's name, unique within the API.") var name: String
    @Option(help: "What it is about.") var type: DocumentTypeOption
    @Option(name: .customLong("other-type-name"), help: "With --type other: which kind of document it is.") var otherTypeName: String?
    @Option(help: "A line about the document.") var summary: String = ""
    @Option(help: "Who may read it: api (whoever sees the API), owner (the provider) or private (publisher users).") var visibility: DocumentVisibilityOption = .api
    @OptionGroup var content: DocumentContentOptions

    func validate() throws {
        guard content.givenCount == 1 else { throw ValidationError("give the content: one of --text, --markdown-file, --inline-file, --url or --file") }
        if type == .other, (otherTypeName ?? "").isEmpty { throw ValidationError("--type other needs --other-type-name saying which kind, e.g. \"Release notes\"") }
        if type != .other, otherTypeName != nil { throw ValidationError("--other-type-name goes with --type other") }
    }

    func run() async throws {
        guard let given = try content.readContent() else { throw ValidationError("give the content: one of --text, --markdown-file, --inline-file, --url or --file") }
        var document = Document()
        document.apiId = apiID
        document.name = name
        document.documentType = type.protoValue
        document.otherTypeName = otherTypeName ?? ""
        document.summary = summary
        document.visibility = visibility.protoValue
        document.sourceType = given.source
        document.body = given.body
        let request = AddDocumentRequest(document: document)
        let added = try await NodeSession.with(connection) { node in
            try await node.run { try await node.publisher.addDocument(request).document }
        }
        print("added document \(added?.name ?? name) (\(added?.id ?? "?")) to API \(apiID)")
    }
}

struct DocumentUpdate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "update", abstract: "Change a document; what you leave out stays as it is.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The document's id.") var documentID: String
    @Option(help: "A new name, unique within the API.") var name: String?
    @Option(help: "What it is about.") var type: DocumentTypeOption?
    @Option(name: .customLong("other-type-name"), help: "With --type other: which kind of document it is.") var otherTypeName: String?
    @Option(help: "A line about the document.") var summary: String?
    @Option(help: "Who may read it: api, owner or private.") var visibility: DocumentVisibilityOption?
    @OptionGroup var content: DocumentContentOptions

    func validate() throws {
        guard name != nil || type != nil || otherTypeName != nil || summary != nil || visibility != nil || content.givenCount > 0 else {
            throw ValidationError("nothing to change: give --name, --type, --summary, --visibility or new content (--text, --markdown-file, --inline-file, --url, --file)")
        }
        if let type, type != .other, otherTypeName != nil { throw ValidationError("--other-type-name goes with --type other") }
    }

    func run() async throws {
        // Files are read before connecting, so a bad path costs no round trip.
        let given = try content.readContent()
        let updated = try await NodeSession.with(connection) { node in
            let publisher = node.publisher
            return try await node.run {
                guard var document = try await publisher.getDocument(GetDocumentRequest(documentId: documentID)).document else {
                    throw CommandFailure("the node returned no document for \(documentID)")
                }
                if let name { document.name = name }
                if let type {
                    document.documentType = type.protoValue
                    if type != .other { document.otherTypeName = "" }
                }
                if let otherTypeName { document.otherTypeName = otherTypeName }
                if let summary { document.summary = summary }
                if let visibility { document.visibility = visibility.protoValue }
                if let given {
                    document.sourceType = given.source
                    document.body = given.body
                }
                return try await publisher.updateDocument(UpdateDocumentRequest(document: document)).document ?? document
            }
        }
        print("updated document \(updated.name) (\(documentID))")
    }
}

struct DocumentDelete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a document.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The document's id.") var documentID: String

    func run() async throws {
        try await NodeSession.with(connection) { node in
            _ = try await node.run { try await node.publisher.deleteDocument(DeleteDocumentRequest(documentId: documentID)) }
        }
        print("deleted document \(documentID)")
    }
}

// MARK: - Subscriptions

func subscriptionRow(_ subscription: Subscription) -> [String] {
    [subscription.id, subscription.applicationName.isEmpty ? subscription.applicationId : subscription.applicationName,
     subscription.throttlingPolicy, SubscriptionStatusName.spelling(of: subscription.status), subscription.subscriber]
}

func subscriptionJSON(_ subscription: Subscription) -> [String: Any] {
    ["id": subscription.id, "application_id": subscription.applicationId, "application": subscription.applicationName,
     "tier": subscription.throttlingPolicy, "status": SubscriptionStatusName.spelling(of: subscription.status),
     "subscriber": subscription.subscriber, "api_id": subscription.apiId, "api_name": subscription.apiName,
     "api_version": subscription.apiVersion, "created_at_unix_ms": subscription.createdAtUnixMs]
}

struct SubscriptionCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sub", abstract: "Subscriptions: subscribe your applications to APIs; as a publisher, list and block an API's subscriptions.",
        subcommands: [SubscriptionCreate.self, SubscriptionDelete.self, SubscriptionList.self, SubscriptionBlock.self, SubscriptionUnblock.self])
}

struct SubscriptionList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List subscriptions: yours (store), or with an API id every subscription to that API (publisher).",
        discussion: "`tollctl sub list` and `tollctl sub list --app ID` show your applications' subscriptions; `tollctl sub list API_ID` shows who subscribes to an API you provide.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "An API's id: list everyone's subscriptions to it (creators and publishers).") var apiID: String?
    @Option(help: "Only this application's subscriptions (yours).") var app: String?
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        guard let apiID, app == nil else {
            let request = ListSubscriptionsRequest(applicationId: app ?? "", apiId: apiID ?? "")
            let subscriptions = try await NodeSession.with(connection) { node in
                try await node.run { try await node.store.listSubscriptions(request).subscriptions }
            }
            switch output {
            case .json: try printJSON(subscriptions.map(subscriptionJSON))
            case .table:
                printTable(["ID", "APPLICATION", "API", "VERSION", "TIER", "STATUS"], subscriptions.map {
                    [$0.id, $0.applicationName, $0.apiName, $0.apiVersion, $0.throttlingPolicy, SubscriptionStatusName.spelling(of: $0.status)]
                })
            }
            return
        }
        let subscriptions = try await NodeSession.with(connection) { node in
            let publisher = node.publisher
            return try await node.run {
                try await readPages(from: [], pageSize: 100, all: true) { (page: PageRequest) async throws -> ([Subscription], PageResponse?) in
                    let response = try await publisher.listApiSubscriptions(ListApiSubscriptionsRequest(apiId: apiID, page: page))
                    return (response.subscriptions, response.page)
                }.items
            }
        }
        switch output {
        case .json: try printJSON(subscriptions.map(subscriptionJSON))
        case .table: printTable(["ID", "APPLICATION", "TIER", "STATUS", "SUBSCRIBER"], subscriptions.map(subscriptionRow))
        }
    }
}

func printSubscriptionStatus(_ subscription: Subscription?, id: String) {
    guard let subscription else { return print("subscription \(id) updated") }
    let application = subscription.applicationName.isEmpty ? subscription.applicationId : subscription.applicationName
    print("subscription \(id) of \(application) to \(subscription.apiName) \(subscription.apiVersion) is \(SubscriptionStatusName.spelling(of: subscription.status))")
}

struct SubscriptionBlock: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "block", abstract: "Stop a subscription's calls without deleting it.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The subscription's id.") var subscriptionID: String
    @Flag(name: .customLong("production-only"), help: "Block production keys only; sandbox keys keep working.") var productionOnly = false

    func run() async throws {
        let request = BlockSubscriptionRequest(subscriptionId: subscriptionID, productionOnly: productionOnly)
        let subscription = try await NodeSession.with(connection) { node in
            try await node.run { try await node.publisher.blockSubscription(request).subscription }
        }
        printSubscriptionStatus(subscription, id: subscriptionID)
    }
}

struct SubscriptionUnblock: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "unblock", abstract: "Let a blocked subscription's calls through again.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The subscription's id.") var subscriptionID: String

    func run() async throws {
        let subscription = try await NodeSession.with(connection) { node in
            try await node.run { try await node.publisher.unblockSubscription(UnblockSubscriptionRequest(subscriptionId: subscriptionID)).subscription }
        }
        printSubscriptionStatus(subscription, id: subscriptionID)
    }
}
