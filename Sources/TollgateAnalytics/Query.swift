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

    /// Every row it admits lies in `tenant`'s applications' rows: queries
    /// of per-application rows seek there.
    var applicationTenantOnly: String? {
        guard let tenant else { return nil }
        if administrator { return nil }
        return consumer && !provider ? tenant : nil
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
    let applicationMemo: RecordMemo<UsageSummary>
    let tenantMemo: RecordMemo<UsageSummary>

    public init(statdb: StatisticsDatabase, cachedRows: Int = 50_000, cachedAPIRows: Int = 50_000, cachedApplicationRows: Int = 50_000) {
        self.statdb = statdb
        memo = RecordMemo(capacity: cachedRows)
        apiMemo = RecordMemo(capacity: cachedAPIRows)
        applicationMemo = RecordMemo(capacity: cachedApplicationRows)
        tenantMemo = RecordMemo(capacity: 10_000)
    }

    struct Piece: Hashable {
        var granularity: BucketGranularity
        var start: Int64
        var end: Int64
        /// Rows of `granularity` counted in the buckets of this coarser one
        /// (days standing for weeks older than the statdb's week rows).
        var into: BucketGranularity? = nil
    }

    /// The buckets a query reads: for a merged query without a granularity,
    /// the coarsest buckets lying whole in the range, finer ones at its
    /// edges. Weeks before `weeksSince` have no rows of their own
    /// (``StatisticsDatabase/weekRowsSince(in:)``): their days are read.
    static func pieces(_ request: QueryUsageRequest, start: Int64, end: Int64, merged: Bool,
                       weeksSince: Int64) -> (pieces: [Piece], granularity: BucketGranularity) {
        func alignUp(_ t: Int64, _ g: BucketGranularity) -> Int64 {
            let length = UsageTime.length(g)
            let b = UsageTime.bucketStart(t, g)
            return b >= t ? b : b > Int64.max - length ? Int64.max : b + length
        }
        func cover(_ s: Int64, _ e: Int64, _ levels: ArraySlice<BucketGranularity>) -> [Piece] {
            guard s < e else { return [] }
            let g = levels.first!
            if levels.count == 1 { return [Piece(granularity: g, start: alignUp(s, g), end: e)] }
            let a = alignUp(s, g), b = UsageTime.bucketStart(e, g)
            if a >= b { return cover(s, e, levels.dropFirst()) }
            return cover(s, a, levels.dropFirst()) + [Piece(granularity: g, start: a, end: b)] + cover(b, e, levels.dropFirst())
        }
        /// `[s, e)` in the coarsest buckets lying whole in it, down to
        /// `finest`; whole weeks as one row each where the statdb has them.
        func coarsest(_ s: Int64, _ e: Int64, finest: BucketGranularity) -> [Piece] {
            let all: [BucketGranularity] = [.week, .day, .hour, .minute]
            let levels = all[...all.firstIndex(of: finest)!]
            let weeks = max(s, weeksSince)
            return cover(s, min(e, weeks), levels.dropFirst()) + cover(weeks, e, levels)
        }
        switch request.granularity {
        case .minute, .hour, .day:
            let g = request.granularity
            let first = alignUp(start, g)
            // Merged, the same buckets a series would read (from the first
            // whole one to the one holding the end), in the fewest rows.
            if merged { return (coarsest(first, alignUp(end, g), finest: g), g) }
            return ([Piece(granularity: g, start: first, end: end)], g)
        case .week:
            let first = alignUp(start, .week)
            var pieces: [Piece] = []
            let daysEnd = min(alignUp(end, .week), weeksSince)
            if first < daysEnd { pieces.append(Piece(granularity: .day, start: first, end: daysEnd, into: .week)) }
            pieces.append(Piece(granularity: .week, start: max(first, weeksSince), end: end))
            return (pieces, .week)
        default:
            if merged { return (coarsest(start, end, finest: .minute), .unspecified) }
            let span = end - start
            let g: BucketGranularity = span <= 6 * 3_600_000 ? .minute : span <= 14 * 86_400_000 ? .hour : .day
            return ([Piece(granularity: g, start: alignUp(start, g), end: end)], g)
        }
    }

    struct Group {
        var template: UsageSummary
        /// Everything added up but the latency histograms of `unmerged`.
        var counts = UsageCounts()
        /// Rows whose latency histograms are not yet in `counts`: merged
        /// only for the groups a page returns (or all, to rank by latency),
        /// since merging histograms is most of what adding a row costs and
        /// a top 10 of 2,000 applications answers 10. The rows are the
        /// memo's, so keeping them costs a reference each.
        var unmerged: [UsageSummary] = []

        mutating func add(_ row: UsageSummary) {
            counts.add(row, latencies: false)
            unmerged.append(row)
        }

        /// `counts` with every row's latencies in.
        mutating func mergeLatencies() {
            for row in unmerged { counts.addLatencies(of: row) }
            unmerged = []
        }
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
        case .unspecified, .minute, .hour, .day, .week: break
        default: throw RPCError(.invalidArgument, "granularity must be MINUTE, HOUR, DAY or WEEK (or unspecified)")
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
        // scope but a consumer's (which needs the application's owner);
        // rows per application what names nothing finer than the
        // application and no API, for every scope but a provider's (which
        // needs the API's creator).
        let noFinerFilter = request.username.isEmpty && request.resource.isEmpty && request.statusClasses.isEmpty && request.keyType == .unspecified
        let perAPI = Set(request.groupBy).isSubset(of: [.api, .apiVersion, .tenant]) && request.applicationId.isEmpty && noFinerFilter
            && (scope.tenant == nil || scope.administrator || !scope.consumer)
        let noAPIFilter = request.apiName.isEmpty && request.apiVersion.isEmpty && request.apiContext.isEmpty && request.apiCreator.isEmpty
        let perApplication = !perAPI && Set(request.groupBy).isSubset(of: [.application, .tenant]) && noFinerFilter && noAPIFilter
            && (scope.tenant == nil || scope.administrator || !scope.provider)
        // Rows per tenant answer what names no API or application, for
        // operators and tenant administrators (who see all of a tenant).
        let perTenant = perAPI && Set(request.groupBy).isSubset(of: [.tenant]) && noAPIFilter && (scope.tenant == nil || scope.administrator)
        let weeksSince: Int64
        do {
            weeksSince = try statdb.database.read { try statdb.weekRowsSince(in: $0) } ?? .max
        } catch {
            throw RPCError(.internal, "statdb: \(error)")
        }
        let (pieces, granularity) = Self.pieces(request, start: start, end: end, merged: merged, weeksSince: weeksSince)
        let dimensions = Set(request.groupBy)
        let tenantFilter = scope.tenant == nil && !request.tenantDomain.isEmpty ? request.tenantDomain.lowercased() : nil
        let seekTenant = scope.apiTenantOnly ?? tenantFilter
        let statuses = Set(request.statusClasses)

        // What rows are grouped by, decided once rather than per row.
        let byAPI = dimensions.contains(.api) || dimensions.contains(.apiVersion)
        let byResource = dimensions.contains(.resource)
        let byResourceAlone = byResource && !byAPI
        let byTenant = dimensions.contains(.tenant) || byAPI || byResourceAlone
        let byVersion = dimensions.contains(.apiVersion)
        let byApplication = dimensions.contains(.application)
        let byUser = dimensions.contains(.user)
        let byKeyType = dimensions.contains(.keyType)
        let byStatusClass = dimensions.contains(.statusClass)

        var groups: [GroupKey: Group] = [:]
        // The filters, read from the request once rather than per row.
        let (apiName, apiVersion, apiContext, apiCreator) = (request.apiName, request.apiVersion, request.apiContext, request.apiCreator)
        let (applicationID, username, resource, keyType) = (request.applicationId, request.username, request.resource, request.keyType)
        func visit(_ row: UsageSummary) {
            guard scope.admits(row) else { return }
            if let tenantFilter, row.tenantDomain != tenantFilter { return }
            if !apiName.isEmpty && row.apiName != apiName { return }
            if !apiVersion.isEmpty && row.apiVersion != apiVersion { return }
            if !apiContext.isEmpty && row.apiContext != apiContext { return }
            if !apiCreator.isEmpty && row.apiCreator != apiCreator { return }
            if !applicationID.isEmpty && row.applicationId != applicationID { return }
            if !username.isEmpty && row.username != username { return }
            if !resource.isEmpty && row.resource != resource { return }
            if !statuses.isEmpty && !statuses.contains(row.statusClass) { return }
            if keyType != .unspecified && row.keyType != keyType { return }
            let key = GroupKey(
                bucket: merged ? 0 : row.bucketStartUnixMs,
                tenant: byTenant ? row.tenantDomain : "",
                context: byAPI || byResourceAlone ? row.apiContext : "",
                version: byVersion ? row.apiVersion : "",
                applicationTenant: byApplication ? row.applicationTenantDomain : "",
                application: byApplication ? row.applicationId : "",
                user: byUser ? row.username : "",
                resource: byResource ? row.resource : "",
                verb: byResource ? row.verb.rawValue : 0,
                keyType: byKeyType ? row.keyType.rawValue : 0,
                statusClass: byStatusClass ? row.statusClass : 0)
            // One hash of the key per row: found, the group is added to in place.
            if let index = groups.index(forKey: key) {
                groups.values[index].add(row)
                return
            }
            var template = UsageSummary()
            template.granularity = merged ? granularity : row.granularity
            template.bucketStartUnixMs = merged ? start : row.bucketStartUnixMs
            template.tenantDomain = key.tenant
            template.apiContext = key.context
            if byAPI || byResourceAlone {
                template.apiName = row.apiName
                template.apiCreator = byAPI ? row.apiCreator : ""
            }
            template.apiVersion = key.version
            if byApplication {
                template.applicationTenantDomain = row.applicationTenantDomain
                template.applicationId = row.applicationId
                template.applicationName = row.applicationName
                template.applicationOwner = row.applicationOwner
            }
            template.username = key.user
            template.resource = key.resource
            if byResource { template.verb = row.verb }
            if byKeyType { template.keyType = row.keyType }
            template.statusClass = key.statusClass
            var group = Group(template: template)
            group.add(row)
            groups[key] = group
        }

        do {
            try statdb.database.read { txn in
                // An older statdb's per-application rows are complete once backfilled.
                var rows: StatisticsDatabase.Rows = perAPI ? .perAPI : .detailed
                if perApplication, try !statdb.applicationRowsPending(in: txn) { rows = .perApplication }
                if perTenant, try !statdb.tenantRowsPending(in: txn) { rows = .perTenant }
                let memo = switch rows {
                case .detailed: self.memo
                case .perAPI: apiMemo
                case .perApplication: applicationMemo
                case .perTenant: tenantMemo
                }
                // A scan that cannot seek to the API or application a filter
                // names skips other rows on their keys, before decoding.
                let keyMatch: StatisticsDatabase.KeyMatch? = switch rows {
                case .detailed, .perAPI: request.apiContext.isEmpty ? nil : .apiContext(request.apiContext)
                case .perApplication: request.applicationId.isEmpty ? nil : .applicationID(request.applicationId)
                case .perTenant: nil
                }
                // Hour, day and week rows hold the minutes before the roll-up
                // watermark; the minutes from it on (normally the last one or
                // two) are read as minute rows and counted in their bucket.
                let watermark = try statdb.rollupWatermark(in: txn) ?? .max
                var scans: [(granularity: BucketGranularity, start: Int64, end: Int64, into: BucketGranularity?, seek: Bool)] = []
                for piece in pieces where piece.start < piece.end {
                    scans.append((piece.granularity, piece.start, piece.end, piece.into, true))
                    if piece.granularity != .minute && piece.end > watermark {
                        // Every minute of the piece's last bucket, as its row would hold them:
                        // up to the next minute bucket by bucket, the rest (rows only a
                        // gateway's fast clock could have written) in one range.
                        let length = UsageTime.length(piece.granularity)
                        let last = UsageTime.bucketStart(piece.end - 1, piece.granularity)
                        let end = last > Int64.max - length ? Int64.max : last + length
                        let start = max(piece.start, watermark)
                        let soon = max(start, min(end, UsageTime.bucketStart(nowUnixMs, .minute) + 120_000))
                        scans.append((.minute, start, soon, piece.into ?? piece.granularity, true))
                        scans.append((.minute, soon, end, piece.into ?? piece.granularity, false))
                    }
                }
                for piece in scans where piece.start < piece.end {
                    let visit: (UsageSummary) -> Void = if let into = piece.into {
                        { minute in
                            var row = minute
                            row.granularity = into
                            row.bucketStartUnixMs = UsageTime.bucketStart(minute.bucketStartUnixMs, into)
                            visit(row)
                        }
                    } else {
                        visit
                    }
                    let length = UsageTime.length(piece.granularity)
                    // Seeking bucket by bucket pays per bucket, rows or not.
                    let buckets = piece.seek ? (piece.end - piece.start + length - 1) / length : Int64.max
                    if rows == .perApplication, let seekApplicationTenant = scope.applicationTenantOnly, buckets <= 50_000 {
                        let application = request.applicationId.isEmpty ? nil : request.applicationId
                        var bucket = piece.start
                        while bucket < piece.end {
                            let prefix = StatisticsDatabase.applicationSummaryPrefix(granularity: piece.granularity, bucketStartUnixMs: bucket,
                                                                                     applicationTenant: seekApplicationTenant, applicationID: application)
                            try statdb.forEachSummary(prefix: prefix, rows: rows, in: txn, memo: memo) { row in
                                visit(row)
                                return true
                            }
                            bucket += length
                        }
                    } else if rows != .perApplication, let seekTenant, buckets <= 50_000 {
                        let context = request.apiContext.isEmpty ? nil : request.apiContext
                        let version = context != nil && !request.apiVersion.isEmpty ? request.apiVersion : nil
                        var bucket = piece.start
                        while bucket < piece.end {
                            let prefix = StatisticsDatabase.summaryPrefix(granularity: piece.granularity, bucketStartUnixMs: bucket, tenant: seekTenant,
                                                                          context: context, version: version)
                            try statdb.forEachSummary(prefix: prefix, rows: rows, in: txn, memo: memo) { row in
                                visit(row)
                                return true
                            }
                            bucket += length
                        }
                    } else {
                        try statdb.forEachSummary(piece.granularity, fromUnixMs: piece.start, toUnixMs: piece.end, rows: rows, matching: keyMatch,
                                                  in: txn, memo: memo) { row in
                            visit(row)
                            return true
                        }
                    }
                }
            }
        } catch {
            throw RPCError(.internal, "statdb: \(error)")
        }

        /// A group's finished row: built only for the groups a page returns
        /// (a top 10 of 2,000 applications builds 10).
        func row(of group: Group) -> UsageSummary {
            var group = group
            group.mergeLatencies()
            var row = group.template
            // Names only of what is grouped by (the newest seen): a row of
            // several APIs or applications names none of them, whichever
            // rows it was added up from.
            var counts = group.counts
            if !byAPI && !byResourceAlone { counts.apiName = "" }
            if !byAPI { counts.apiCreator = "" }
            if !byApplication {
                counts.applicationName = ""
                counts.applicationOwner = ""
            }
            counts.apply(to: &row)
            let response = group.counts.response.quantiles([0.5, 0.95, 0.99])
            let backend = group.counts.backend.quantiles([0.5, 0.95, 0.99])
            row.responseP50Us = Int64(response[0])
            row.responseP95Us = Int64(response[1])
            row.responseP99Us = Int64(response[2])
            row.backendP50Us = Int64(backend[0])
            row.backendP95Us = Int64(backend[1])
            row.backendP99Us = Int64(backend[2])
            return row
        }
        /// What a ranked query orders by, from the counts alone (the same
        /// values the finished row carries).
        func metric(_ counts: UsageCounts) -> Double {
            switch request.orderBy {
            case .requests: Double(counts.requests)
            case .faults: Double(counts.faults)
            case .throttled: Double(counts.throttled)
            case .latencyP95: Double(counts.response.quantile(0.95))
            case .errors: Double(counts.faults + counts.serverErrors)
            default: 0
            }
        }
        var ordered: [(key: GroupKey, metric: Double)]
        if request.orderBy == .latencyP95 {
            // Ranked by latency: every group's histogram is needed.
            for index in groups.indices { groups.values[index].mergeLatencies() }
        }
        if ranked {
            ordered = groups.compactMap { key, group in
                let value = metric(group.counts)
                return value == 0 && request.orderBy != .requests ? nil : (key, value)
            }
            let before = { (a: (key: GroupKey, metric: Double), b: (key: GroupKey, metric: Double)) -> Bool in
                a.metric != b.metric ? a.metric > b.metric : a.key < b.key
            }
            let limit = Int(request.limit)
            if limit > 0 && limit <= 1000 && ordered.count > limit {
                // Top-N of many groups (applications, users): the first N
                // in one pass, not a sort of them all.
                var top: [(key: GroupKey, metric: Double)] = []
                top.reserveCapacity(limit + 1)
                for candidate in ordered where top.count < limit || before(candidate, top[top.count - 1]) {
                    let position = top.firstIndex { before(candidate, $0) } ?? top.count
                    top.insert(candidate, at: position)
                    if top.count > limit { top.removeLast() }
                }
                ordered = top
            } else {
                ordered.sort(by: before)
            }
        } else {
            ordered = groups.keys.sorted().map { ($0, 0) }
        }
        if request.limit > 0 && ordered.count > Int(request.limit) { ordered.removeLast(ordered.count - Int(request.limit)) }
        let token = request.page?.pageToken ?? []
        let offset = token.count == 8 ? Int(token.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }) : 0
        let requestedSize = Int(request.page?.pageSize ?? 0)
        let pageSize = min(Self.maxRows, requestedSize > 0 ? requestedSize : Self.maxRows)
        var response = QueryUsageResponse()
        response.granularity = granularity
        response.scope = scope.description
        var page = PageResponse()
        if offset < ordered.count {
            let slice = ordered[offset..<min(ordered.count, offset + pageSize)]
            response.rows = slice.map { row(of: groups[$0.key]!) }
            if offset + pageSize < ordered.count {
                page.nextPageToken = withUnsafeBytes(of: UInt64(offset + pageSize).bigEndian, Array.init)
            }
        }
        page.totalCount = UInt64(ordered.count)
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
