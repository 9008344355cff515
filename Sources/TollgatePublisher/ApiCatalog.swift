import LMDBKit
public import RPCCore
public import TollgateProto
public import TollgateStorage

/// Listing and searching a tenant's APIs through apimgtdb's indexes: the
/// publisher's views, and the store's (which adds states and visibility).
public struct ApiCatalog: Sendable {
    public let apimgt: ApiManagerDatabase

    public init(apimgt: ApiManagerDatabase) { self.apimgt = apimgt }

    public static let defaultPageSize = 25
    public static let maxPageSize = 500
    /// Listings stop short of this many serialized bytes per page, so a page
    /// of long descriptions still fits in one RPC message.
    static let maxPageBytes = 2 << 20

    /// A tenant's APIs by name and version, optionally only one provider's
    /// and only in some states.
    public func listApis(provider: String, states: [LifecycleState], pageSize: Int, pageToken: [UInt8], tenant: String,
                         include: ((Api) -> Bool)? = nil) throws(RPCError) -> (apis: [ApiListing], page: PageResponse) {
        try RPCError.catching {
            try apimgt.database.environment.read { txn in
                var matches: Set<[UInt8]>?
                if !provider.isEmpty {
                    matches = try primaryKeys(index: ApiManagerDatabase.apisByProvider, prefix: Key(.string(tenant.lowercased()), .string(provider.lowercased())), in: txn)
                }
                if !states.isEmpty {
                    var inStates = Set<[UInt8]>()
                    for state in Set(states) {
                        inStates.formUnion(try primaryKeys(index: ApiManagerDatabase.apisByState,
                                                           prefix: Key(.string(tenant.lowercased()), .int64(Int64(state.rawValue))), in: txn))
                    }
                    matches = matches.map { $0.intersection(inStates) } ?? inStates
                }
                return try orderedPage(matching: matches, pageSize: pageSize, pageToken: pageToken, tenant: tenant, include: include, in: txn)
            }
        }
    }

    /// Words matched anywhere in names, contexts and tags, and from the start
    /// of description words; `name:`, `context:`, `tag:`, `description:`,
    /// `provider:` and `version:` narrow a word to one field. Every word must
    /// match (AND); results come by name and version.
    public func searchApis(query: String, pageSize: Int, pageToken: [UInt8], tenant: String,
                           include: ((Api) -> Bool)? = nil) throws(RPCError) -> (apis: [ApiListing], page: PageResponse) {
        let terms = try Self.parseQuery(query)
        return try RPCError.catching {
            try apimgt.database.environment.read { txn in
                var matches: Set<[UInt8]>?
                for term in terms {
                    var found = Set<[UInt8]>()
                    for field in term.fields {
                        found.formUnion(try primaryKeys(index: ApiManagerDatabase.apisBySearchTerm,
                                                        prefix: Key(.string(tenant.lowercased()), .string(field.rawValue), .stringPrefix(term.word)), in: txn))
                    }
                    matches = matches.map { $0.intersection(found) } ?? found
                    if matches?.isEmpty == true { break }
                }
                return try orderedPage(matching: matches, pageSize: pageSize, pageToken: pageToken, tenant: tenant, include: include, in: txn)
            }
        }
    }

    struct SearchTerm: Equatable {
        var fields: [ApiSearchTerms.Field]
        var word: String
    }

    static func parseQuery(_ query: String) throws(RPCError) -> [SearchTerm] {
        let qualifiers: [String: ApiSearchTerms.Field] = [
            "name": .name, "context": .context, "tag": .tag, "description": .description, "provider": .provider, "version": .version,
        ]
        var terms: [SearchTerm] = []
        for token in query.split(whereSeparator: { $0.isWhitespace }) {
            var fields: [ApiSearchTerms.Field] = [.name, .context, .tag, .description]
            var value = Substring(token)
            if let colon = token.firstIndex(of: ":") {
                let qualifier = token[..<colon].lowercased()
                guard let field = qualifiers[qualifier] else {
                    throw RPCError(.invalidArgument, "search qualifier \"\(qualifier):\" is unknown: use name:, context:, tag:, description:, provider: or version:")
                }
                fields = [field]
                value = token[token.index(after: colon)...]
            }
            if fields == [.provider] || fields == [.version] {
                if !value.isEmpty { terms.append(SearchTerm(fields: fields, word: value.lowercased())) }
            } else {
                terms += ApiSearchTerms.words(String(value)).map { SearchTerm(fields: fields, word: $0) }
            }
        }
        return terms
    }

    /// Primary keys under an index prefix, read from the index alone.
    func primaryKeys<T: TransactionReading & ~Copyable>(index: IndexDefinition<Api>, prefix: Key, in txn: borrowing T) throws -> Set<[UInt8]> {
        var keys = Set<[UInt8]>()
        try apimgt.apis.forEachPrimaryKey(index: index, prefix: prefix, in: txn) { _, primaryKey in
            keys.insert(Array(primaryKey))
            return true
        }
        return keys
    }

    /// One page of the tenant's APIs in name-and-version order, only those in
    /// `matches` when given. Only the page's records are read; the walk over
    /// the name index touches keys alone.
    func orderedPage<T: TransactionReading & ~Copyable>(
        matching matches: Set<[UInt8]>?, pageSize requested: Int, pageToken: [UInt8], tenant: String, include: ((Api) -> Bool)? = nil,
        in txn: borrowing T
    ) throws -> (apis: [ApiListing], page: PageResponse) {
        let pageSize = Self.pageSize(requested, default: Self.defaultPageSize)
        let prefix = Key(.string(tenant.lowercased()))
        if !pageToken.isEmpty && !pageToken.starts(with: prefix.bytes) {
            throw RPCError(.invalidArgument, "page_token does not belong to this listing: start again without it")
        }
        var candidates: [(entry: [UInt8], primaryKey: [UInt8])] = []
        var next: [UInt8] = []
        if matches?.isEmpty != true {
            try apimgt.apis.forEachPrimaryKey(index: ApiManagerDatabase.apisByNameVersion, prefix: prefix, from: pageToken.isEmpty ? nil : pageToken, in: txn) { entry, primaryKey in
                if let matches, !matches.contains(Array(primaryKey)) { return true }
                // A filter on the record itself (the store's visibility) reads it here.
                if let include, let api = try apimgt.apis.get(Key(bytes: Array(primaryKey)), in: txn), !include(api) { return true }
                if candidates.count == pageSize {
                    next = Array(entry)
                    return false
                }
                candidates.append((Array(entry), Array(primaryKey)))
                return true
            }
        }
        var listings: [ApiListing] = []
        listings.reserveCapacity(candidates.count)
        var bytes = 0
        for (index, candidate) in candidates.enumerated() {
            guard let api = try apimgt.apis.get(Key(bytes: candidate.primaryKey), in: txn) else { continue }
            let listing = Self.listing(api)
            bytes += try listing.serializedSize()
            if bytes > Self.maxPageBytes && !listings.isEmpty {
                // A shorter page, continued from this API.
                next = candidates[index].entry
                break
            }
            listings.append(listing)
        }
        let total: UInt64? = include == nil ? matches.map { UInt64($0.count) } : nil
        return (listings, PageResponse(nextPageToken: next, totalCount: total))
    }

    /// A requested page size, or `fallback` for 0, capped at ``maxPageSize``.
    public static func pageSize(_ requested: Int, default fallback: Int) -> Int {
        requested <= 0 ? fallback : min(requested, maxPageSize)
    }

    public static func listing(_ api: Api) -> ApiListing {
        ApiListing(id: api.id, tenantDomain: api.tenantDomain, provider: api.provider, name: api.name, version: api.version, context: api.context,
                   description: api.description, tags: api.tags, defaultVersion: api.defaultVersion, visibility: api.visibility,
                   lifecycleState: api.lifecycleState, subscriptionPolicies: api.subscriptionPolicies, transports: api.transports,
                   businessOwner: api.businessOwner, updatedAtUnixMs: api.updatedAtUnixMs)
    }

}
