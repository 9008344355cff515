import FoundationEssentials
import LMDBKit
public import Logging
public import RPCCore
public import TollgateProto
public import TollgateStorage
public import RoleCore

/// The publisher's logic: APIs (apimgtdb), their definitions, documents and
/// lifecycle history (regdb), and every change gateways must hear of,
/// recorded in the deployment log in the same transaction as the change.
///
/// Every method acts within one tenant: an object of another tenant is
/// reported as not found, so tenants cannot even learn of each other's ids.
public final class PublisherStore: Sendable {
    public let apimgt: ApiManagerDatabase
    public let registry: RegistryDatabase
    public let deploymentLog: DeploymentLog
    /// Installs a tenant's default tiers before its first API.
    let tenants: any TenantProvisioning
    /// Carries regdb's half of a write that starts in apimgtdb (history,
    /// definitions, documents of a new version, deletions).
    public let registryOutbox: Outbox
    let now: @Sendable () -> Int64
    let logger: Logger?
    /// Where blocked and unblocked subscriptions are announced to the gateways' validation caches.
    let revocations: RevocationLog?
    /// The largest OpenAPI document an import accepts (`max_definition_bytes`).
    public let maxDefinitionBytes: Int
    public static let defaultMaxDefinitionBytes = DocumentTree.defaultMaxBytes
    public static let largestMaxDefinitionBytes = DocumentTree.largestMaxBytes

    public static let defaultPageSize = ApiCatalog.defaultPageSize
    public static let maxPageSize = ApiCatalog.maxPageSize
    /// Largest document body (text or file) kept in the registry: what fits,
    /// with the rest of the document, in one RPC message (4 MiB frames).
    public static let maxDocumentBytes = 3 << 20

    public init(registry: RegistryDatabase, deploymentLog: DeploymentLog, tenants: any TenantProvisioning,
                revocations: RevocationLog? = nil, logger: Logger? = nil, maxDefinitionBytes: Int = PublisherStore.defaultMaxDefinitionBytes,
                now: (@Sendable () -> Int64)? = nil) throws {
        self.logger = logger
        self.revocations = revocations
        self.maxDefinitionBytes = min(maxDefinitionBytes, Self.largestMaxDefinitionBytes)
        self.apimgt = deploymentLog.database
        self.registry = registry
        self.deploymentLog = deploymentLog
        self.tenants = tenants
        let clock = now ?? { Int64(Date().timeIntervalSince1970 * 1000) }
        self.now = clock
        self.registryOutbox = try Outbox(source: deploymentLog.database.database, target: registry.database,
                                         appliers: [Self.registryOperationKind: RegistryOperations(registry: registry).apply], now: clock)
    }

    // MARK: APIs

    /// Stores a new API in CREATED state, provided by `actor` unless it names another provider.
    public func createApi(_ draft: Api, actor: String, tenant: String) async throws(RPCError) -> Api {
        try await createApi(draft, actor: actor, tenant: tenant, definition: nil)
    }

    /// Creates an API, storing `definition` (an imported document) with it.
    func createApi(_ draft: Api, actor: String, tenant: String, definition: ApiDefinition?) async throws(RPCError) -> Api {
        var api = draft
        api.id = UUID().uuidString.lowercased()
        api.tenantDomain = tenant
        if api.provider.isEmpty { api.provider = actor }
        api.lifecycleState = .created
        api.revision = 1
        let timestamp = now()
        api.createdBy = actor
        api.createdAtUnixMs = timestamp
        api.updatedBy = actor
        api.updatedAtUnixMs = timestamp
        try ApiValidation.normalize(&api)
        try await tenants.prepare(tenant: tenant)
        let stored = api
        try await apimgtWrite { [self] txn in
            try checkReferences(stored, in: txn)
            try checkContextOwnership(stored, in: txn)
            try insertApi(stored, in: &txn)
            try enqueue(.recordHistory(LifecycleHistoryEntries(entries: [
                LifecycleHistoryEntry(apiId: stored.id, fromState: .unspecified, toState: .created, actor: actor, occurredAtUnixMs: timestamp,
                                      comment: "created")])), in: &txn)
            if var definition { 
                definition.apiId = stored.id
                try enqueue(.storeDefinition(definition), in: &txn)
            }
        }
        return api
    }

    /// Replaces an API's design. Name, version, context, provider and state stay as they are.
    public func updateApi(_ change: Api, expectedRevision: UInt64?, actor: String, tenant: String) async throws(RPCError) -> Api {
        try await updateApi(change, expectedRevision: expectedRevision, actor: actor, tenant: tenant, definition: nil)
    }

    /// Updates an API, storing `definition` (an imported document) with it.
    func updateApi(_ change: Api, expectedRevision: UInt64?, actor: String, tenant: String,
                   definition: ApiDefinition?) async throws(RPCError) -> Api {
        let timestamp = now()
        return try await apimgtWrite { [self] txn in
            let existing = try tenantApi(change.id, tenant: tenant, in: txn)
            if let expectedRevision, expectedRevision != existing.revision {
                throw RPCError(.aborted, "API \(existing.name) \(existing.version) changed meanwhile (revision \(existing.revision), not \(expectedRevision)): fetch it again and reapply your change")
            }
            for (field, old, new) in [("name", existing.name, change.name), ("version", existing.version, change.version), ("context", existing.context, change.context)]
            where !new.isEmpty && new != old {
                throw RPCError(.invalidArgument, "an API's \(field) cannot change (it is \(old)); create a new version instead")
            }
            var api = change
            api.tenantDomain = existing.tenantDomain
            api.name = existing.name
            api.version = existing.version
            api.context = existing.context
            api.provider = existing.provider
            api.lifecycleState = existing.lifecycleState
            api.revision = existing.revision + 1
            api.createdBy = existing.createdBy
            api.createdAtUnixMs = existing.createdAtUnixMs
            api.updatedBy = actor
            api.updatedAtUnixMs = timestamp
            try ApiValidation.normalize(&api)
            try checkReferences(api, in: txn)
            if DeploymentLog.deployedStates.contains(api.lifecycleState) { try checkDeployable(api) }
            if api.lifecycleState == .published && api.subscriptionPolicies.isEmpty {
                throw RPCError(.failedPrecondition, "API \(api.name) \(api.version) is published: it must keep at least one subscription policy (tier)")
            }
            let removedTiers = Set(existing.subscriptionPolicies).subtracting(api.subscriptionPolicies)
            if !removedTiers.isEmpty {
                let inUse = try apimgt.subscriptions.all(index: ApiManagerDatabase.subscriptionsByApi, prefix: Key(.string(api.id)), in: txn)
                    .map(\.throttlingPolicy).filter(removedTiers.contains)
                if let tier = inUse.first {
                    throw RPCError(.failedPrecondition, "tier \(tier) cannot be removed from API \(api.name) \(api.version): \(inUse.filter { $0 == tier }.count) subscription(s) use it")
                }
            }
            _ = try apimgt.apis.put(api, in: &txn)
            try afterWrite(api, previous: existing, in: &txn)
            if let definition { try enqueue(.storeDefinition(definition), in: &txn) }
            return api
        }
    }

    /// Deletes an API with no subscriptions, with its definition, documents and history.
    public func deleteApi(_ id: String, tenant: String) async throws(RPCError) {
        try await apimgtWrite { [self] txn in
            let api = try tenantApi(id, tenant: tenant, in: txn)
            let subscriptions = try apimgt.subscriptions.all(index: ApiManagerDatabase.subscriptionsByApi, prefix: Key(.string(id)), in: txn)
            guard subscriptions.isEmpty else {
                throw RPCError(.failedPrecondition, "API \(api.name) \(api.version) has \(subscriptions.count) subscription(s); they must be removed before the API can be deleted")
            }
            _ = try apimgt.apis.delete(api, in: &txn)
            if DeploymentLog.deployedStates.contains(api.lifecycleState) {
                try deploymentLog.append(.apiRemoved(api.id), tenant: api.tenantDomain, in: &txn)
            }
            try enqueue(.deleteApiArtifacts(api.id), in: &txn)
        }
    }

    public func getApi(_ id: String, tenant: String) throws(RPCError) -> Api {
        try RPCError.catching { try apimgt.database.environment.read { txn in try tenantApi(id, tenant: tenant, in: txn) } }
    }

    // MARK: Listing and search

    /// A tenant's APIs by name and version, optionally only one provider's
    /// and only in some states.
    public func listApis(provider: String, states: [LifecycleState], pageSize: Int, pageToken: [UInt8], tenant: String) throws(RPCError) -> (apis: [ApiListing], page: PageResponse) {
        try catalog.listApis(provider: provider, states: states, pageSize: pageSize, pageToken: pageToken, tenant: tenant)
    }

    /// See ``ApiCatalog/searchApis(query:pageSize:pageToken:tenant:include:)``.
    public func searchApis(query: String, pageSize: Int, pageToken: [UInt8], tenant: String) throws(RPCError) -> (apis: [ApiListing], page: PageResponse) {
        try catalog.searchApis(query: query, pageSize: pageSize, pageToken: pageToken, tenant: tenant)
    }

    public var catalog: ApiCatalog { ApiCatalog(apimgt: apimgt) }

    static func pageSize(_ requested: Int, default fallback: Int) -> Int { ApiCatalog.pageSize(requested, default: fallback) }

    public static func listing(_ api: Api) -> ApiListing { ApiCatalog.listing(api) }

    // MARK: Lifecycle

    public struct LifecycleOptions: Sendable {
        public var comment: String
        public var deprecateOldVersions: Bool
        public var requireResubscription: Bool

        public init(comment: String = "", deprecateOldVersions: Bool = false, requireResubscription: Bool = false) {
            self.comment = comment
            self.deprecateOldVersions = deprecateOldVersions
            self.requireResubscription = requireResubscription
        }
    }

    /// Moves an API along the lifecycle and records the move. Publishing
    /// can deprecate the older published versions and, unless re-subscription
    /// is required, subscribes the older versions' applications to this one.
    public func changeLifecycle(_ id: String, to target: LifecycleState, options: LifecycleOptions, actor: String,
                                tenant: String) async throws(RPCError) -> (api: Api, entry: LifecycleHistoryEntry) {
        guard Lifecycle.states.contains(target) else {
            throw RPCError(.invalidArgument, "target_state must be one of \(Lifecycle.states.map(Lifecycle.name).joined(separator: ", "))")
        }
        let (api, entries) = try await apimgtWrite { [self] txn -> (Api, [LifecycleHistoryEntry]) in
            // Taken under the write lock, so concurrent moves are stamped in the order they happen.
            let timestamp = now()
            var api = try tenantApi(id, tenant: tenant, in: txn)
            let from = api.lifecycleState
            guard Lifecycle.allows(from, target) else { throw RPCError(.failedPrecondition, Lifecycle.refusal(from, target)) }
            if DeploymentLog.deployedStates.contains(target) { try checkDeployable(api) }
            if target == .published && api.subscriptionPolicies.isEmpty {
                throw RPCError(.failedPrecondition, "API \(api.name) \(api.version) offers no subscription policy (tier): add one, e.g. Unlimited, before publishing")
            }
            let previous = api
            api.lifecycleState = target
            api.revision += 1
            api.updatedBy = actor
            api.updatedAtUnixMs = timestamp
            _ = try apimgt.apis.put(api, in: &txn)
            try afterWrite(api, previous: previous, in: &txn)
            var entries = [LifecycleHistoryEntry(apiId: api.id, fromState: from, toState: target, actor: actor,
                                                 occurredAtUnixMs: timestamp, comment: options.comment)]
            if target == .published {
                let others = try otherVersions(of: api, in: txn)
                if options.deprecateOldVersions {
                    for var older in others where older.lifecycleState == .published && older.createdAtUnixMs <= api.createdAtUnixMs {
                        let before = older
                        older.lifecycleState = .deprecated
                        older.revision += 1
                        older.updatedBy = actor
                        older.updatedAtUnixMs = timestamp
                        _ = try apimgt.apis.put(older, in: &txn)
                        try afterWrite(older, previous: before, in: &txn)
                        entries.append(LifecycleHistoryEntry(apiId: older.id, fromState: .published, toState: .deprecated, actor: actor,
                                                             occurredAtUnixMs: timestamp, comment: "deprecated on publishing version \(api.version)"))
                    }
                }
                if !options.requireResubscription && (from == .created || from == .prototyped) {
                    try copySubscriptions(from: others.filter { $0.createdAtUnixMs <= api.createdAtUnixMs }, to: api, at: timestamp, in: &txn)
                }
            }
            try enqueue(.recordHistory(LifecycleHistoryEntries(entries: entries)), in: &txn)
            return (api, entries)
        }
        revocations?.committed()
        // The entry as recorded: a second move within the same millisecond is stamped later.
        let recorded = try RPCError.catching { try registry.lifecycleHistory(api: api.id) }
            .last { $0.toState == target && $0.occurredAtUnixMs >= entries[0].occurredAtUnixMs } ?? entries[0]
        return (api, recorded)
    }

    public func lifecycleHistory(_ id: String, tenant: String) throws(RPCError) -> [LifecycleHistoryEntry] {
        _ = try getApi(id, tenant: tenant)
        return try RPCError.catching { try registry.lifecycleHistory(api: id) }
    }

    /// Subscriptions of the older versions' applications, copied to a newly
    /// published version at the same tier when it offers that tier.
    func copySubscriptions(from others: [Api], to api: Api, at timestamp: Int64, in txn: inout WriteTransaction) throws {
        for older in others where [.published, .deprecated, .blocked].contains(older.lifecycleState) {
            for subscription in try apimgt.subscriptions.all(index: ApiManagerDatabase.subscriptionsByApi, prefix: Key(.string(older.id)), in: txn)
            where api.subscriptionPolicies.contains(subscription.throttlingPolicy) && subscription.status != .rejected && subscription.status != .onHold {
                guard try apimgt.subscriptions.get(ApiManagerDatabase.subscriptionsByApplicationApi,
                                                   Key(.string(subscription.applicationId), .string(api.id)), in: txn) == nil else { continue }
                var copy = subscription
                copy.id = UUID().uuidString.lowercased()
                copy.apiId = api.id
                copy.apiName = api.name
                copy.apiVersion = api.version
                copy.apiContext = api.context
                copy.apiProvider = api.provider
                copy.createdAtUnixMs = timestamp
                copy.updatedAtUnixMs = timestamp
                try apimgt.subscriptions.insert(copy, in: &txn)
            }
        }
    }

    // MARK: New versions

    /// Copies an API (resources, tiers, endpoints, documents, definition)
    /// under a new version, in CREATED state.
    public func createNewVersion(_ id: String, version: String, defaultVersion: Bool, actor: String, tenant: String) async throws(RPCError) -> Api {
        try ApiValidation.checkVersion(version)
        let timestamp = now()
        let source = try getApi(id, tenant: tenant)
        var copy = source
        copy.id = UUID().uuidString.lowercased()
        copy.version = version
        copy.defaultVersion = defaultVersion
        copy.lifecycleState = .created
        copy.revision = 1
        copy.createdBy = actor
        copy.createdAtUnixMs = timestamp
        copy.updatedBy = actor
        copy.updatedAtUnixMs = timestamp
        let api = copy
        let sourceVersion = source.version
        try await apimgtWrite { [self] txn in
            try checkReferences(api, in: txn)
            try insertApi(api, in: &txn)
            try enqueue(.copyApiArtifacts(CopyApiArtifacts(sourceApiId: id, targetApiId: api.id, actor: actor, atUnixMs: timestamp)), in: &txn)
            try enqueue(.recordHistory(LifecycleHistoryEntries(entries: [
                LifecycleHistoryEntry(apiId: api.id, fromState: .unspecified, toState: .created, actor: actor, occurredAtUnixMs: timestamp,
                                      comment: "created as a new version of \(sourceVersion)")])), in: &txn)
        }
        return api
    }

    // MARK: OpenAPI

    /// Creates an API from an OpenAPI document (`template` supplies what the
    /// document cannot), or replaces an existing API's resources and scopes.
    /// Messages about what the template lacks name tollctl's flags (`--name`,
    /// `--context`), which is where a person gives them.
    public func importOpenApi(apiID: String, template: Api, document: String, format: DefinitionFormat, actor: String,
                              tenant: String) async throws(RPCError) -> (api: Api, definition: ApiDefinition, warnings: [String], servers: [String]) {
        guard !document.isEmpty else { throw RPCError(.invalidArgument, "document is empty: pass the OpenAPI or Swagger text") }
        var imported = try OpenAPIDocuments.parse(document, format: format, maxBytes: maxDefinitionBytes)
        // Stored with the API's change, through the outbox; its revision is
        // the previous definition's plus one, decided when it is applied.
        let definition = ApiDefinition(apiId: apiID, format: imported.format, openapiVersion: imported.openapiVersion, document: document,
                                       updatedAtUnixMs: now())
        var api: Api
        if apiID.isEmpty {
            var draft = template
            if draft.name.isEmpty {
                do {
                    try ApiValidation.checkName(imported.title)
                } catch {
                    throw RPCError(.invalidArgument, imported.title.isEmpty
                        ? "the document has no info.title to name the API: give a name (--name)"
                        : "the document's title \"\(imported.title.prefix(80))\" cannot be an API name (1 to 60 letters, digits, spaces, _, - or .): give a name (--name)")
                }
                draft.name = imported.title
            }
            if draft.version.isEmpty {
                do {
                    try ApiValidation.checkVersion(imported.version)
                } catch {
                    throw RPCError(.invalidArgument, imported.version.isEmpty
                        ? "the document has no info.version: give the API a version (--api-version)"
                        : "the document's version \"\(imported.version.prefix(40))\" cannot be an API version (1 to 30 letters, digits, _, - or .): give one (--api-version)")
                }
                draft.version = imported.version
            }
            if draft.description.isEmpty { draft.description = imported.description }
            if draft.tags.isEmpty, !imported.tags.isEmpty {
                // Document tags group operations; store tags find APIs. They are the same
                // words when they fit the store's rules, and stay the document's own when not.
                let fits = imported.tags.count <= ApiValidation.maxTags && imported.tags.allSatisfy { (1...60).contains($0.count) }
                if fits {
                    draft.tags = imported.tags
                } else {
                    imported.warnings.append("the document's \(imported.tags.count) tags stay in the definition (its export keeps them), "
                        + "but are not the API's store tags, which are at most \(ApiValidation.maxTags) of up to 60 characters: give store tags with --tag")
                }
            }
            if draft.resources.isEmpty { draft.resources = imported.resources }
            if draft.scopes.isEmpty { draft.scopes = imported.scopes }
            if draft.context.isEmpty {
                throw RPCError(.invalidArgument, "a new API needs a context, the path it is served under, such as /pizzashack (--context): an OpenAPI document does not give one")
            }
            api = try await createApi(draft, actor: actor, tenant: tenant, definition: definition)
        } else {
            var existing = try getApi(apiID, tenant: tenant)
            let expected = existing.revision
            existing.resources = imported.resources
            if !imported.scopes.isEmpty { existing.scopes = imported.scopes }
            api = try await updateApi(existing, expectedRevision: expected, actor: actor, tenant: tenant, definition: definition)
        }
        let apiID = api.id
        let stored = try RPCError.catching { try registry.definition(api: apiID) } ?? definition
        return (api, stored, imported.warnings, imported.servers)
    }

    /// The API as an OpenAPI document, built from its current resources, keeping
    /// everything else the imported document said (an OpenAPI 3.1 source stays 3.1;
    /// Swagger 2.0 becomes OpenAPI 3.0.3).
    public func exportOpenApi(_ id: String, format: DefinitionFormat, tenant: String) throws(RPCError) -> ApiDefinition {
        let api = try getApi(id, tenant: tenant)
        let stored = try RPCError.catching { try registry.definition(api: id) }
        let exported = try OpenAPIDocuments.export(api, stored: stored, format: format)
        return ApiDefinition(apiId: id, format: exported.format, openapiVersion: exported.openapiVersion, document: exported.document,
                             revision: stored?.revision ?? 0, updatedAtUnixMs: max(stored?.updatedAtUnixMs ?? 0, api.updatedAtUnixMs))
    }

    // MARK: Documents

    static func checkDocument(_ document: Document) throws(RPCError) {
        guard (1...100).contains(document.name.count), !document.name.contains(where: { $0.isNewline }) else {
            throw RPCError(.invalidArgument, "document name must be 1 to 100 characters on one line")
        }
        switch document.documentType {
        case .howTo, .samples, .publicForum, .supportForum, .apiMessageFormat, .swagger: break
        case .other:
            guard !document.otherTypeName.isEmpty else { throw RPCError(.invalidArgument, "a document of type OTHER needs other_type_name") }
        case .unspecified, .unrecognized:
            throw RPCError(.invalidArgument, "document_type must be HOW_TO, SAMPLES, PUBLIC_FORUM, SUPPORT_FORUM, API_MESSAGE_FORMAT, SWAGGER or OTHER")
        }
        switch document.visibility {
        case .apiLevel, .ownerOnly, .private: break
        default: throw RPCError(.invalidArgument, "visibility must be API_LEVEL, OWNER_ONLY or PRIVATE")
        }
        switch (document.sourceType, document.body) {
        case (.inline, .text(let text)?), (.markdown, .text(let text)?):
            guard text.utf8.count <= maxDocumentBytes else { throw RPCError(.invalidArgument, "document text is larger than 3 MiB: upload it as a URL document instead") }
        case (.url, .url(let url)?):
            try ApiValidation.checkEndpointURL(url, field: "url")
        case (.file, .file(let file)?):
            guard !file.fileName.isEmpty, !file.fileName.contains("/") else { throw RPCError(.invalidArgument, "file.file_name must be a plain file name") }
            guard !file.content.isEmpty else { throw RPCError(.invalidArgument, "file.content is empty") }
            guard file.content.count <= maxDocumentBytes else { throw RPCError(.invalidArgument, "file is larger than 3 MiB: link to it with a URL document instead") }
        case (.unspecified, _), (.unrecognized, _):
            throw RPCError(.invalidArgument, "source_type must be INLINE, MARKDOWN, URL or FILE")
        default:
            throw RPCError(.invalidArgument, "source_type and body disagree: INLINE and MARKDOWN take text, URL takes url, FILE takes file")
        }
    }

    public func addDocument(_ draft: Document, actor: String, tenant: String) async throws(RPCError) -> Document {
        var document = draft
        if document.visibility == .unspecified { document.visibility = .apiLevel }
        try Self.checkDocument(document)
        let api = try getApi(document.apiId, tenant: tenant)
        let timestamp = now()
        document.id = UUID().uuidString.lowercased()
        document.tenantDomain = api.tenantDomain
        document.createdBy = actor
        document.createdAtUnixMs = timestamp
        document.updatedAtUnixMs = timestamp
        let stored = document
        try await registryWrite { [self] txn in
            do {
                try registry.documents.insert(stored, in: &txn)
            } catch StorageError.uniqueConflict {
                throw RPCError(.alreadyExists, "API \(api.name) \(api.version) already has a document named \(stored.name)")
            }
        }
        return stored
    }

    public func updateDocument(_ change: Document, tenant: String) async throws(RPCError) -> Document {
        var document = change
        if document.visibility == .unspecified { document.visibility = .apiLevel }
        try Self.checkDocument(document)
        let timestamp = now()
        let requested = document
        return try await registryWrite { [self] txn in
            var document = requested
            guard let existing = try registry.documents.get(Key(.string(change.id)), in: txn), existing.tenantDomain == tenant else {
                throw RPCError(.notFound, "no document \(change.id) in tenant \(tenant)")
            }
            document.apiId = existing.apiId
            document.tenantDomain = existing.tenantDomain
            document.createdBy = existing.createdBy
            document.createdAtUnixMs = existing.createdAtUnixMs
            document.updatedAtUnixMs = timestamp
            do {
                _ = try registry.documents.put(document, in: &txn)
            } catch StorageError.uniqueConflict {
                throw RPCError(.alreadyExists, "the API already has a document named \(document.name)")
            }
            return document
        }
    }

    public func deleteDocument(_ id: String, tenant: String) async throws(RPCError) {
        try await registryWrite { [self] txn in
            guard let existing = try registry.documents.get(Key(.string(id)), in: txn), existing.tenantDomain == tenant else {
                throw RPCError(.notFound, "no document \(id) in tenant \(tenant)")
            }
            _ = try registry.documents.delete(existing, in: &txn)
        }
    }

    public func document(_ id: String, tenant: String) throws(RPCError) -> Document {
        guard let document = try RPCError.catching({ try registry.document(id: id) }), document.tenantDomain == tenant else {
            throw RPCError(.notFound, "no document \(id) in tenant \(tenant)")
        }
        return document
    }

    /// An API's documents by name, without their bodies.
    public func listDocuments(api id: String, pageSize: Int, pageToken: [UInt8], tenant: String) throws(RPCError) -> (documents: [Document], page: PageResponse) {
        _ = try getApi(id, tenant: tenant)
        let page = try RPCError.catching {
            try registry.database.environment.read { txn in
                try registry.documents.list(index: RegistryDatabase.documentsByApiName, prefix: Key(.string(id)),
                                            pageSize: Self.pageSize(pageSize, default: 100), pageToken: pageToken, in: txn)
            }
        }
        let documents = page.items.map { document in
            var listed = document
            listed.body = nil
            return listed
        }
        return (documents, PageResponse(nextPageToken: page.nextPageToken))
    }

    // MARK: Subscriptions of an API

    public func listSubscriptions(api id: String, pageSize: Int, pageToken: [UInt8], tenant: String) throws(RPCError) -> (subscriptions: [Subscription], page: PageResponse) {
        _ = try getApi(id, tenant: tenant)
        let page = try RPCError.catching {
            try apimgt.database.environment.read { txn in
                try apimgt.subscriptions.list(index: ApiManagerDatabase.subscriptionsByApi, prefix: Key(.string(id)),
                                              pageSize: Self.pageSize(pageSize, default: 100), pageToken: pageToken, in: txn)
            }
        }
        return (page.items, PageResponse(nextPageToken: page.nextPageToken))
    }

    /// Blocks (both key types, or production keys only) or unblocks one
    /// subscription, and tells gateways to drop what they cached about it.
    public func setSubscriptionStatus(_ id: String, to status: SubscriptionStatus, tenant: String) async throws(RPCError) -> Subscription {
        let timestamp = now()
        defer { revocations?.committed() }
        return try await apimgtWrite { [self] txn in
            guard var subscription = try apimgt.subscriptions.get(Key(.string(id)), in: txn),
                  let api = try apimgt.apis.get(Key(.string(subscription.apiId)), in: txn), api.tenantDomain == tenant else {
                throw RPCError(.notFound, "no subscription \(id) in tenant \(tenant)")
            }
            switch subscription.status {
            case .onHold, .rejected:
                throw RPCError(.failedPrecondition, "subscription \(id) is \(subscription.status == .onHold ? "awaiting approval" : "rejected"): only active subscriptions can be blocked or unblocked")
            default: break
            }
            guard subscription.status != status else { return subscription }
            subscription.status = status
            subscription.updatedAtUnixMs = timestamp
            _ = try apimgt.subscriptions.put(subscription, in: &txn)
            try deploymentLog.append(.subscriptionChanged(SubscriptionChange(subscriptionId: subscription.id, apiId: subscription.apiId,
                                                                             applicationId: subscription.applicationId, status: status)),
                                     tenant: tenant, in: &txn)
            // Validation results gateways cached for the application are stale now.
            try revocations?.append(.applicationId(subscription.applicationId), in: &txn)
            return subscription
        }
    }

    // MARK: Internals

    /// The API `id` of `tenant`, or NOT_FOUND.
    func tenantApi<T: TransactionReading & ~Copyable>(_ id: String, tenant: String, in txn: borrowing T) throws -> Api {
        guard !id.isEmpty else { throw RPCError(.invalidArgument, "api_id is required") }
        guard let api = try apimgt.apis.get(Key(.string(id)), in: txn), api.tenantDomain == tenant else {
            throw RPCError(.notFound, "no API \(id) in tenant \(tenant)")
        }
        return api
    }

    /// The tenant's other versions of the API with the same name.
    func otherVersions<T: TransactionReading & ~Copyable>(of api: Api, in txn: borrowing T) throws -> [Api] {
        try apimgt.apis.all(index: ApiManagerDatabase.apisByNameVersion,
                            prefix: Key(.string(api.tenantDomain.lowercased()), .string(api.name.lowercased())), in: txn)
            .filter { $0.id != api.id }
    }

    /// Policies an API names must exist in its tenant.
    func checkReferences<T: TransactionReading & ~Copyable>(_ api: Api, in txn: borrowing T) throws {
        for tier in api.subscriptionPolicies {
            guard try apimgt.policies.get(ApiManagerDatabase.policyKey(kind: .subscription, name: tier, tenant: api.tenantDomain), in: txn) != nil else {
                throw RPCError(.invalidArgument, "subscription policy (tier) \(tier) does not exist in tenant \(api.tenantDomain): see `tollctl policy list --kind subscription`")
            }
        }
        for name in Set(api.resources.map(\.throttlingPolicy) + [api.apiPolicy]) where !name.isEmpty {
            guard try apimgt.policies.get(ApiManagerDatabase.policyKey(kind: .advanced, name: name, tenant: api.tenantDomain), in: txn) != nil else {
                throw RPCError(.invalidArgument, "advanced policy \(name) does not exist in tenant \(api.tenantDomain): see `tollctl policy list --kind advanced`")
            }
        }
    }

    /// A context belongs to one API name: other versions of the same API
    /// share it; no other API may use it, or a context nested in it or
    /// around it (`/pizza` and `/pizza/v1`), which would make two APIs
    /// answer for the same gateway paths.
    func checkContextOwnership<T: TransactionReading & ~Copyable>(_ api: Api, in txn: borrowing T) throws {
        let tenant = Key(.string(api.tenantDomain.lowercased()))
        var prefixes = [tenant.appending(.string(api.context)), tenant.appending(.stringPrefix(api.context + "/"))]
        var ancestor = Substring(api.context)
        while let slash = ancestor.lastIndex(of: "/"), slash != ancestor.startIndex {
            ancestor = ancestor[..<slash]
            prefixes.append(tenant.appending(.string(String(ancestor))))
        }
        for prefix in prefixes {
            var owner: Api?
            try apimgt.apis.forEach(index: ApiManagerDatabase.apisByContextVersion, prefix: prefix, in: txn) { other in
                if other.name.lowercased() != api.name.lowercased() { owner = other }
                return owner == nil
            }
            if let owner {
                let how = owner.context == api.context ? "is already used" : "overlaps context \(owner.context), used"
                throw RPCError(.alreadyExists, "context \(api.context) \(how) by API \(owner.name) in tenant \(api.tenantDomain)")
            }
        }
    }

    /// A deployed API must have somewhere to send calls.
    func checkDeployable(_ api: Api) throws(RPCError) {
        guard api.productionEndpoints != nil || api.sandboxEndpoints != nil else {
            throw RPCError(.failedPrecondition, "API \(api.name) \(api.version) has no production or sandbox endpoint: add one before deploying it")
        }
    }

    func insertApi(_ api: Api, in txn: inout WriteTransaction) throws {
        do {
            try apimgt.apis.insert(api, in: &txn)
        } catch StorageError.uniqueConflict(_, let index) where index == ApiManagerDatabase.apisByNameVersion.name {
            throw RPCError(.alreadyExists, "API \(api.name) version \(api.version) already exists in tenant \(api.tenantDomain)")
        } catch StorageError.uniqueConflict(_, let index) where index == ApiManagerDatabase.apisByContextVersion.name {
            throw RPCError(.alreadyExists, "context \(api.context) version \(api.version) is already taken in tenant \(api.tenantDomain)")
        }
    }

    /// What follows every write of a stored API: the default-version flag
    /// moves to it from the other versions when it is deployed, and the
    /// gateways hear of it.
    func afterWrite(_ api: Api, previous: Api, in txn: inout WriteTransaction) throws {
        let deployed = DeploymentLog.deployedStates.contains(api.lifecycleState)
        if api.defaultVersion && deployed {
            // A version still being designed keeps its mark: it takes over when it is deployed.
            for var other in try otherVersions(of: api, in: txn) where other.defaultVersion && DeploymentLog.deployedStates.contains(other.lifecycleState) {
                other.defaultVersion = false
                other.revision += 1
                _ = try apimgt.apis.put(other, in: &txn)
                try deploymentLog.recordApi(other, wasDeployed: DeploymentLog.deployedStates.contains(other.lifecycleState), in: &txn)
            }
        }
        try deploymentLog.recordApi(api, wasDeployed: DeploymentLog.deployedStates.contains(previous.lifecycleState), in: &txn)
        if api.lifecycleState != previous.lifecycleState, let revocations {
            // Validation results cached for the API (authorized, or 900907 while blocked) follow its state.
            try revocations.append(.apiId(api.id), in: &txn)
            if api.lifecycleState == .retired {
                // Retirement ends the API's subscriptions.
                for subscription in try apimgt.subscriptions.all(index: ApiManagerDatabase.subscriptionsByApi, prefix: Key(.string(api.id)), in: txn) {
                    _ = try apimgt.subscriptions.delete(subscription, in: &txn)
                }
            }
        }
    }


    /// The outbox kind of a ``RegistryOperation``.
    static let registryOperationKind = "publisher.registry"

    /// Records regdb's half of the write in progress (see ``registryOutbox``).
    func enqueue(_ operation: RegistryOperation.Operation, in txn: inout WriteTransaction) throws {
        try registryOutbox.enqueue(kind: Self.registryOperationKind, operation: RegistryOperation(operation: operation).serializedBytes(), in: &txn)
    }

    /// A write to apimgtdb, on its writer. Once it commits, watchers hear of
    /// it and regdb's half (if any) is applied.
    func apimgtWrite<Result: Sendable>(_ body: @escaping @Sendable (inout WriteTransaction) throws -> Result) async throws(RPCError) -> Result {
        let result = try await RPCError.catching { try await apimgt.database.write(body) }
        deploymentLog.committed()
        await deliverRegistryOperations()
        return result
    }

    /// Applies what apimgtdb's outbox holds for regdb. A failure (a full
    /// disk) leaves the operations pending: the next write, the periodic
    /// retry and the next start apply them, so the caller's committed change
    /// is not reported as failed.
    public func deliverRegistryOperations() async {
        do {
            try await registryOutbox.deliver()
        } catch {
            logger?.error("regdb: operations from apimgtdb stay pending and will be retried: \(error)")
        }
    }

    func registryWrite<Result: Sendable>(_ body: @escaping @Sendable (inout WriteTransaction) throws -> Result) async throws(RPCError) -> Result {
        try await RPCError.catching { try await registry.database.write(body) }
    }
}
