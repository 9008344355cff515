public import RPCCore
public import TollgateProto
public import TollgateStorage
import TollgateServices

/// What a caller of `QueryUsage` may see (docs/analytics.md, "Who sees
/// what"): cluster operators every tenant; a tenant's administrators the
/// tenant's APIs and applications; providers (API creators and publishers)
/// the APIs they provide; consumers (subscribers) their own applications.
public struct UsageScope: Sendable, Hashable, CustomStringConvertible {
    /// nil: every tenant (operators only).
    public var tenant: String?
    public var username: String
    public var administrator: Bool
    public var provider: Bool
    public var consumer: Bool

    public static func everything(tenant: String?) -> UsageScope {
        UsageScope(tenant: tenant?.lowercased(), username: "", administrator: true, provider: false, consumer: false)
    }

    public init(tenant: String?, username: String, administrator: Bool, provider: Bool, consumer: Bool) {
        self.tenant = tenant?.lowercased()
        self.username = username
        self.administrator = administrator
        self.provider = provider
        self.consumer = consumer
    }

    /// The scope of an authorized caller; `tenant` is the tenant it acts in
    /// (the `x-tenant` metadata, which the access controller checked).
    public static func of(_ caller: Caller, actingIn tenant: String?, requestedTenant: String) throws(RPCError) -> UsageScope {
        switch caller {
        case .certificateHolder:
            let chosen = requestedTenant.isEmpty ? tenant : requestedTenant
            return .everything(tenant: chosen?.isEmpty == false ? chosen : nil)
        case .user(let user):
            let acting = (tenant?.isEmpty == false ? tenant! : user.tenant).lowercased()
            if !requestedTenant.isEmpty && requestedTenant.lowercased() != acting {
                throw RPCError(.permissionDenied, "\(user.qualifiedName) may read usage of tenant \(acting) only; act in another tenant with --tenant if allowed")
            }
            let scope = UsageScope(tenant: acting, username: user.username, administrator: user.holds(Permission.admin),
                                   provider: user.holds(Permission.createApis) || user.holds(Permission.publishApis),
                                   consumer: user.holds(Permission.subscribe))
            guard scope.administrator || scope.provider || scope.consumer else {
                throw RPCError(.permissionDenied, "\(user.qualifiedName) provides no API and owns no application")
            }
            return scope
        default:
            throw RPCError(.permissionDenied, "\(caller) may not read usage")
        }
    }

    public func admits(_ row: UsageSummary) -> Bool {
        guard let tenant else { return true }
        if administrator { return row.tenantDomain == tenant || row.applicationTenantDomain == tenant }
        if provider && row.tenantDomain == tenant && row.apiCreator == username { return true }
        if consumer && row.applicationTenantDomain == tenant && row.applicationOwner == username { return true }
        return false
    }

    /// Every row it admits lies in `tenant`'s API rows: queries seek there.
    var apiTenantOnly: String? {
        guard let tenant else { return nil }
        if administrator { return nil }
        return provider && !consumer ? tenant : nil
    }

    public var description: String {
        guard let tenant else { return "all tenants" }
        if administrator { return "tenant \(tenant)" }
        var parts: [String] = []
        if provider { parts.append("APIs of \(username) in \(tenant)") }
        if consumer { parts.append("applications of \(username) in \(tenant)") }
        return parts.joined(separator: " and ")
    }
}

/// Answers `QueryUsage` from statdb: picks the buckets that cover the
/// range, scans them (seeking to the tenant's and API's rows where the
/// scope or filters name them), adds rows up per group, ranks or orders
/// them, and reads quantiles from the merged histograms.
public struct UsageQueryEngine: Sendable {
    public let statdb: StatisticsDatabase
    public static let maxRows = 10_000
    /// Rows decoded by earlier queries, kept while their stored bytes are
    /// the same (past buckets never change): a dashboard asking again over
    /// the same days decodes nothing.
    let memo: RecordMemo<UsageSummary>
    let apiMemo: RecordMemo<UsageSummary>

    public init(statdb: StatisticsDatabase, cachedRows: Int = 50_000, cachedAPIRows: Int = 50_000) {
        self.statdb = statdb
        memo = RecordMemo(capacity: cachedRows)
        apiMemo = RecordMemo(capacity: cachedAPIRows)
    }

    struct Piece: Hashable {
        var granularity: BucketGranularity
        var start: Int64
        var end: Int64
    }

    /// The buckets a query reads: for a merged query without a granularity,
    /// the coarsest buckets lying whole in the range, finer ones at its edges.
    static func pieces(_ request: QueryUsageRequest, start: Int64, end: Int64, merged: Bool) -> (pieces: [Piece], granularity: BucketGranularity) {
        func alignUp(_ t: Int64, _ g: BucketGranularity) -> Int64 {
            let b = UsageTime.bucketStart(t, g)
            return b < t ? b + UsageTime.length(g) : b
        }
        switch request.granularity {
        case .minute, .hour, .day:
            let g = request.granularity
            return ([Piece(granularity: g, start: alignUp(start, g), end: end)], g)
        default:
            if merged {
                func cover(_ s: Int64, _ e: Int64, _ levels: ArraySlice<BucketGranularity>) -> [Piece] {
                    guard s < e else { return [] }
                    let g = levels.first!
                    if levels.count == 1 { return [Piece(granularity: g, start: alignUp(s, g), end: e)] }
                    let a = alignUp(s, g), b = UsageTime.bucketStart(e, g)
                    if a >= b { return cover(s, e, levels.dropFirst()) }
                    return cover(s, a, levels.dropFirst()) + [Piece(granularity: g, start: a, end: b)] + cover(b, e, levels.dropFirst())
                }
                return (cover(start, end, [.day, .hour, .minute]), .unspecified)
            }
            let span = end - start
            let g: BucketGranularity = span <= 6 * 3_600_000 ? .minute : span <= 14 * 86_400_000 ? .hour : .day
            return ([Piece(granularity: g, start: alignUp(start, g), end: end)], g)
        }
    }

    struct Group {
        var template: UsageSummary
        var counts = UsageCounts()
    }

    /// What rows are added up by: the grouped dimensions (others empty).
    struct GroupKey: Hashable, Comparable {
        var bucket: Int64
        var tenant, context, version, applicationTenant, application, user, resource: String
        var verb: Int32
        var keyType: Int32
        var statusClass: UInt32

        static func < (a: GroupKey, b: GroupKey) -> Bool {
            (a.bucket, a.tenant, a.context, a.version, a.applicationTenant, a.application)
                < (b.bucket, b.tenant, b.context, b.version, b.applicationTenant, b.application)
                || ((a.bucket, a.tenant, a.context, a.version, a.applicationTenant, a.application)
                    == (b.bucket, b.tenant, b.context, b.version, b.applicationTenant, b.application)
                    && (a.user, a.resource, a.verb, a.keyType, a.statusClass) < (b.user, b.resource, b.verb, b.keyType, b.statusClass))
        }
    }

    public func run(_ request: QueryUsageRequest, scope: UsageScope, nowUnixMs: Int64) throws(RPCError) -> QueryUsageResponse {
        var end = request.endUnixMs > 0 ? request.endUnixMs : nowUnixMs
        var start = request.startUnixMs > 0 ? request.startUnixMs : end - 86_400_000
        guard start < end else { throw RPCError(.invalidArgument, "start_unix_ms must be before end_unix_ms") }
        switch request.granularity {
        case .unspecified, .minute, .hour, .day: break
        default: throw RPCError(.invalidArgument, "granularity must be MINUTE, HOUR or DAY (or unspecified)")
        }
        let ranked = request.orderBy != .unspecified
        let merged = request.mergeBuckets || ranked
        // A merged range of more than a week is read in whole UTC days: its
        // edges widen to midnight rather than costing hours and minutes of rows.
        if merged && request.granularity == .unspecified && end - start > 7 * 86_400_000 {
            start = UsageTime.bucketStart(start, .day)
            let last = UsageTime.bucketStart(end, .day)
            end = last < end ? last + 86_400_000 : last
        }
        // Rows per API answer what names no finer dimension, for every
        // scope but a consumer's (which needs the application's owner).
        let perAPI = Set(request.groupBy).isSubset(of: [.api, .apiVersion, .tenant]) && request.applicationId.isEmpty
            && request.username.isEmpty && request.resource.isEmpty && request.statusClasses.isEmpty && request.keyType == .unspecified
            && (scope.tenant == nil || scope.administrator || !scope.consumer)
        let (pieces, granularity) = Self.pieces(request, start: start, end: end, merged: merged)
        let dimensions = Set(request.groupBy)
        let tenantFilter = scope.tenant == nil && !request.tenantDomain.isEmpty ? request.tenantDomain.lowercased() : nil
        let seekTenant = scope.apiTenantOnly ?? tenantFilter
        let statuses = Set(request.statusClasses)

        var groups: [GroupKey: Group] = [:]
        func visit(_ row: UsageSummary) {
            guard scope.admits(row) else { return }
            if let tenantFilter, row.tenantDomain != tenantFilter { return }
            if !request.apiName.isEmpty && row.apiName != request.apiName { return }
            if !request.apiVersion.isEmpty && row.apiVersion != request.apiVersion { return }
            if !request.apiContext.isEmpty && row.apiContext != request.apiContext { return }
            if !request.apiCreator.isEmpty && row.apiCreator != request.apiCreator { return }
            if !request.applicationId.isEmpty && row.applicationId != request.applicationId { return }
            if !request.username.isEmpty && row.username != request.username { return }
            if !request.resource.isEmpty && row.resource != request.resource { return }
            if !statuses.isEmpty && !statuses.contains(row.statusClass) { return }
            if request.keyType != .unspecified && row.keyType != request.keyType { return }
            let api = dimensions.contains(.api) || dimensions.contains(.apiVersion)
            let resourceAlone = dimensions.contains(.resource) && !api
            let key = GroupKey(
                bucket: merged ? 0 : row.bucketStartUnixMs,
                tenant: dimensions.contains(.tenant) || api || resourceAlone ? row.tenantDomain : "",
                context: api || resourceAlone ? row.apiContext : "",
                version: dimensions.contains(.apiVersion) ? row.apiVersion : "",
                applicationTenant: dimensions.contains(.application) ? row.applicationTenantDomain : "",
                application: dimensions.contains(.application) ? row.applicationId : "",
                user: dimensions.contains(.user) ? row.username : "",
                resource: dimensions.contains(.resource) ? row.resource : "",
                verb: dimensions.contains(.resource) ? row.verb.rawValue : 0,
                keyType: dimensions.contains(.keyType) ? row.keyType.rawValue : 0,
                statusClass: dimensions.contains(.statusClass) ? row.statusClass : 0)
            if groups[key] == nil {
                var template = UsageSummary()
                template.granularity = merged ? granularity : row.granularity
                template.bucketStartUnixMs = merged ? start : row.bucketStartUnixMs
                template.tenantDomain = key.tenant
                template.apiContext = key.context
                if api || resourceAlone {
                    template.apiName = row.apiName
                    template.apiCreator = api ? row.apiCreator : ""
                }
                template.apiVersion = key.version
                if dimensions.contains(.application) {
                    template.applicationTenantDomain = row.applicationTenantDomain
                    template.applicationId = row.applicationId
                    template.applicationName = row.applicationName
                    template.applicationOwner = row.applicationOwner
                }
                template.username = key.user
                template.resource = key.resource
                if dimensions.contains(.resource) { template.verb = row.verb }
                if dimensions.contains(.keyType) { template.keyType = row.keyType }
                template.statusClass = key.statusClass
                groups[key] = Group(template: template)
            }
            groups[key]!.counts.add(row)
        }

        do {
            try statdb.database.read { txn in
                for piece in pieces where piece.start < piece.end {
                    let length = UsageTime.length(piece.granularity)
                    let buckets = (piece.end - piece.start + length - 1) / length
                    if let seekTenant, buckets <= 50_000 {
                        let context = request.apiContext.isEmpty ? nil : request.apiContext
                        let version = context != nil && !request.apiVersion.isEmpty ? request.apiVersion : nil
                        var bucket = piece.start
                        while bucket < piece.end {
                            let prefix = StatisticsDatabase.summaryPrefix(granularity: piece.granularity, bucketStartUnixMs: bucket, tenant: seekTenant,
                                                                          context: context, version: version)
                            try statdb.forEachSummary(prefix: prefix, perAPI: perAPI, in: txn, memo: perAPI ? apiMemo : memo) { row in
                                visit(row)
                                return true
                            }
                            bucket += length
                        }
                    } else {
                        try statdb.forEachSummary(piece.granularity, fromUnixMs: piece.start, toUnixMs: piece.end, perAPI: perAPI, in: txn,
                                                  memo: perAPI ? apiMemo : memo) { row in
                            visit(row)
                            return true
                        }
                    }
                }
            }
        } catch {
            throw RPCError(.internal, "statdb: \(error)")
        }

        var rows: [(key: GroupKey, row: UsageSummary, metric: Double)] = groups.map { key, group in
            var row = group.template
            group.counts.apply(to: &row)
            let response = group.counts.response.quantiles([0.5, 0.95, 0.99])
            let backend = group.counts.backend.quantiles([0.5, 0.95, 0.99])
            row.responseP50Us = Int64(response[0])
            row.responseP95Us = Int64(response[1])
            row.responseP99Us = Int64(response[2])
            row.backendP50Us = Int64(backend[0])
            row.backendP95Us = Int64(backend[1])
            row.backendP99Us = Int64(backend[2])
            let metric: Double = switch request.orderBy {
            case .requests: Double(row.requestCount)
            case .faults: Double(row.faultCount)
            case .throttled: Double(row.throttledCount)
            case .latencyP95: Double(row.responseP95Us)
            case .errors: Double(row.faultCount + row.serverErrorCount)
            default: 0
            }
            return (key, row, metric)
        }
        if ranked {
            rows.removeAll { $0.metric == 0 && request.orderBy != .requests }
            rows.sort { $0.metric != $1.metric ? $0.metric > $1.metric : $0.key < $1.key }
        } else {
            rows.sort { $0.key < $1.key }
        }
        if request.limit > 0 && rows.count > Int(request.limit) { rows.removeLast(rows.count - Int(request.limit)) }
        let token = request.page?.pageToken ?? []
        let offset = token.count == 8 ? Int(token.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }) : 0
        let requestedSize = Int(request.page?.pageSize ?? 0)
        let pageSize = min(Self.maxRows, requestedSize > 0 ? requestedSize : Self.maxRows)
        var response = QueryUsageResponse()
        response.granularity = granularity
        response.scope = scope.description
        var page = PageResponse()
        if offset < rows.count {
            let slice = rows[offset..<min(rows.count, offset + pageSize)]
            response.rows = slice.map(\.row)
            if offset + pageSize < rows.count {
                page.nextPageToken = withUnsafeBytes(of: UInt64(offset + pageSize).bigEndian, Array.init)
            }
        }
        page.totalCount = UInt64(rows.count)
        response.page = page
        if request.includeLastAccess {
            response.lastAccess = try lastAccess(request, scope: scope, tenantFilter: tenantFilter)
        }
        return response
    }

    func lastAccess(_ request: QueryUsageRequest, scope: UsageScope, tenantFilter: String?) throws(RPCError) -> [UsageLastAccess] {
        let tenant = scope.tenant ?? tenantFilter
        let prefix = tenant.map { Key(.string($0)) } ?? Key()
        var out: [UsageLastAccess] = []
        do {
            try statdb.database.read { txn in
                if scope.tenant == nil || scope.administrator || scope.provider {
                    try statdb.apiLastAccess.forEach(prefix: prefix, in: txn) { entry in
                        if scope.tenant != nil && !scope.administrator && entry.apiCreator != scope.username { return true }
                        if !request.apiName.isEmpty && entry.apiName != request.apiName { return true }
                        if !request.apiContext.isEmpty && entry.apiContext != request.apiContext { return true }
                        out.append(entry)
                        return true
                    }
                }
                if scope.tenant == nil || scope.administrator || scope.consumer {
                    try statdb.applicationLastAccess.forEach(prefix: prefix, in: txn) { entry in
                        if scope.tenant != nil && !scope.administrator && entry.applicationOwner != scope.username { return true }
                        if !request.applicationId.isEmpty && entry.applicationId != request.applicationId { return true }
                        out.append(entry)
                        return true
                    }
                }
            }
        } catch {
            throw RPCError(.internal, "statdb: \(error)")
        }
        return out
    }
}
