public import TollgateProto
import TollgateStorage

/// The dimensions of one summary row, and its bucket.
public struct SummaryKey: Hashable, Sendable {
    public var granularity: BucketGranularity
    public var bucketStart: Int64
    public var tenant: String
    public var context: String
    public var version: String
    public var resource: String
    public var verb: HttpVerb
    public var applicationTenant: String
    public var applicationID: String
    public var username: String
    public var keyType: KeyType
    public var statusClass: UInt32

    /// The same dimensions in the bucket of a coarser granularity.
    func rolled(to granularity: BucketGranularity) -> SummaryKey {
        var key = self
        key.granularity = granularity
        key.bucketStart = UsageTime.bucketStart(bucketStart, granularity)
        return key
    }

    /// The key of the same API's row in `api_usage_summaries`: no resource,
    /// application, user, key type or status class.
    var apiOnly: SummaryKey {
        SummaryKey(granularity: granularity, bucketStart: bucketStart, tenant: tenant, context: context, version: version, resource: "",
                   verb: .unspecified, applicationTenant: applicationTenant, applicationID: "", username: "", keyType: .unspecified, statusClass: 0)
    }

    /// The key of the same application's row in
    /// `application_usage_summaries`: the API's tenant, the application's
    /// tenant and id, nothing finer.
    var applicationOnly: SummaryKey {
        SummaryKey(granularity: granularity, bucketStart: bucketStart, tenant: tenant, context: "", version: "", resource: "", verb: .unspecified,
                   applicationTenant: applicationTenant, applicationID: applicationID, username: "", keyType: .unspecified, statusClass: 0)
    }

    /// The key of the same tenant's row in `tenant_usage_summaries`: the
    /// API's tenant and the application's, nothing finer.
    var tenantOnly: SummaryKey {
        SummaryKey(granularity: granularity, bucketStart: bucketStart, tenant: tenant, context: "", version: "", resource: "", verb: .unspecified,
                   applicationTenant: applicationTenant, applicationID: "", username: "", keyType: .unspecified, statusClass: 0)
    }

    /// An empty row with these dimensions.
    var summary: UsageSummary {
        var s = UsageSummary()
        s.granularity = granularity
        s.bucketStartUnixMs = bucketStart
        s.tenantDomain = tenant
        s.apiContext = context
        s.apiVersion = version
        s.resource = resource
        s.verb = verb
        s.applicationTenantDomain = applicationTenant
        s.applicationId = applicationID
        s.username = username
        s.keyType = keyType
        s.statusClass = statusClass
        return s
    }
}

extension SummaryKey {
    /// These dimensions as statdb keys them: tenants lower-cased, every
    /// string cut to its limit (``StatisticsDatabase/Limit``) so the key
    /// fits LMDB. Calls and gateways' rows alike are keyed through here.
    var stored: SummaryKey {
        typealias Limit = StatisticsDatabase.Limit
        var key = self
        key.tenant = BatchDelta.clip(StatisticsDatabase.lowercased(tenant), Limit.tenant)
        key.context = BatchDelta.clip(context, Limit.context)
        key.version = BatchDelta.clip(version, Limit.version)
        key.resource = BatchDelta.clip(resource, Limit.resource)
        key.applicationTenant = BatchDelta.clip(StatisticsDatabase.lowercased(applicationTenant), Limit.tenant)
        key.applicationID = BatchDelta.clip(applicationID, Limit.applicationID)
        key.username = BatchDelta.clip(username, Limit.username)
        return key
    }

    /// The dimensions of a stored row.
    init(of s: UsageSummary) {
        self.init(granularity: s.granularity, bucketStart: s.bucketStartUnixMs, tenant: s.tenantDomain, context: s.apiContext, version: s.apiVersion,
                  resource: s.resource, verb: s.verb, applicationTenant: s.applicationTenantDomain, applicationID: s.applicationId,
                  username: s.username, keyType: s.keyType, statusClass: s.statusClass)
    }
}

/// Bucket arithmetic, in UTC.
public enum UsageTime {
    public static func length(_ granularity: BucketGranularity) -> Int64 {
        switch granularity {
        case .second: 1000
        case .minute: 60_000
        case .hour: 3_600_000
        case .day: 86_400_000
        case .week: 7 * 86_400_000
        default: 60_000
        }
    }

    /// Weeks start on Monday (ISO): 1970-01-05, four days after the epoch.
    static let weekOffset: Int64 = 4 * 86_400_000

    public static func bucketStart(_ unixMs: Int64, _ granularity: BucketGranularity) -> Int64 {
        let length = length(granularity)
        let offset = granularity == .week ? weekOffset : 0
        let shifted = unixMs - offset
        let remainder = shifted % length
        return (remainder >= 0 ? shifted - remainder : shifted - remainder - length) + offset
    }
}

/// What one row's counts gain from some events: everything a summary
/// holds, added event by event, merged row by row.
public struct UsageCounts: Sendable {
    public var requests: UInt64 = 0
    public var successes: UInt64 = 0
    public var faults: UInt64 = 0
    public var throttled: UInt64 = 0
    public var blocked: UInt64 = 0
    public var cacheHits: UInt64 = 0
    public var clientErrors: UInt64 = 0
    public var serverErrors: UInt64 = 0
    public var requestBytes: UInt64 = 0
    public var responseBytes: UInt64 = 0
    public var responseMsSum: Int64 = 0
    public var backendMsSum: Int64 = 0
    public var serviceMsSum: Int64 = 0
    public var maxResponseMs: Int64 = 0
    public var lastAccess: Int64 = 0
    public var reasons: [String: UInt64] = [:]
    public var response = HistogramAccumulator()
    public var backend = HistogramAccumulator()
    // Attributes that follow from the dimensions (the newest seen wins).
    public var apiName = ""
    public var apiCreator = ""
    public var applicationName = ""
    public var applicationOwner = ""

    public init() {}

    public mutating func add(_ event: UsageEvent) {
        requests += 1
        let status = event.responseCode
        let throttledOut = event.throttled
        let faulted = event.fault != nil && !throttledOut && !event.blocked
        if throttledOut {
            throttled += 1
            reasons[event.throttledReason.isEmpty ? "UNKNOWN" : event.throttledReason, default: 0] += 1
        }
        if event.blocked { blocked += 1 }
        if faulted { faults += 1 }
        if status >= 400 && status < 500 { clientErrors += 1 }
        if status >= 500 { serverErrors += 1 }
        if status > 0 && status < 400 && !faulted && !throttledOut && !event.blocked { successes += 1 }
        if event.cacheHit { cacheHits += 1 }
        requestBytes &+= event.requestSizeBytes
        responseBytes &+= event.responseSizeBytes
        responseMsSum &+= event.responseTimeMs
        backendMsSum &+= event.backendTimeMs
        serviceMsSum &+= event.serviceTimeMs
        if event.responseTimeMs > maxResponseMs { maxResponseMs = event.responseTimeMs }
        if event.requestTimestampUnixMs > lastAccess { lastAccess = event.requestTimestampUnixMs }
        let responseUs = event.responseTimeUs > 0 ? event.responseTimeUs : event.responseTimeMs * 1000
        response.record(UInt64(max(0, responseUs)))
        // Calls that never reached a backend have no backend time to count.
        if !event.destination.isEmpty {
            let backendUs = event.backendTimeUs > 0 ? event.backendTimeUs : event.backendTimeMs * 1000
            backend.record(UInt64(max(0, backendUs)))
        }
        if !event.apiName.isEmpty { apiName = event.apiName }
        if !event.apiCreator.isEmpty { apiCreator = event.apiCreator }
        if !event.applicationName.isEmpty { applicationName = event.applicationName }
        if !event.applicationOwner.isEmpty { applicationOwner = event.applicationOwner }
    }

    public mutating func add(_ other: UsageCounts) {
        requests += other.requests
        successes += other.successes
        faults += other.faults
        throttled += other.throttled
        blocked += other.blocked
        cacheHits += other.cacheHits
        clientErrors += other.clientErrors
        serverErrors += other.serverErrors
        requestBytes &+= other.requestBytes
        responseBytes &+= other.responseBytes
        responseMsSum &+= other.responseMsSum
        backendMsSum &+= other.backendMsSum
        serviceMsSum &+= other.serviceMsSum
        maxResponseMs = max(maxResponseMs, other.maxResponseMs)
        lastAccess = max(lastAccess, other.lastAccess)
        for (reason, count) in other.reasons { reasons[reason, default: 0] += count }
        response.add(other.response)
        backend.add(other.backend)
        if !other.apiName.isEmpty { apiName = other.apiName }
        if !other.apiCreator.isEmpty { apiCreator = other.apiCreator }
        if !other.applicationName.isEmpty { applicationName = other.applicationName }
        if !other.applicationOwner.isEmpty { applicationOwner = other.applicationOwner }
    }

    /// A stored (or queried) row's counts; without `latencies`, all but
    /// its latency histograms (which the caller adds later, if at all).
    public mutating func add(_ s: UsageSummary, latencies: Bool = true) {
        requests += s.requestCount
        successes += s.successCount
        faults += s.faultCount
        throttled += s.throttledCount
        blocked += s.blockedCount
        cacheHits += s.cacheHitCount
        clientErrors += s.clientErrorCount
        serverErrors += s.serverErrorCount
        requestBytes &+= s.requestBytesSum
        responseBytes &+= s.responseBytesSum
        responseMsSum &+= s.responseTimeSumMs
        backendMsSum &+= s.backendTimeSumMs
        serviceMsSum &+= s.serviceTimeSumMs
        maxResponseMs = max(maxResponseMs, s.maxResponseTimeMs)
        lastAccess = max(lastAccess, s.lastAccessUnixMs)
        for reason in s.throttledReasons { reasons[reason.reason, default: 0] += reason.count }
        if latencies { addLatencies(of: s) }
        if !s.apiName.isEmpty { apiName = s.apiName }
        if !s.apiCreator.isEmpty { apiCreator = s.apiCreator }
        if !s.applicationName.isEmpty { applicationName = s.applicationName }
        if !s.applicationOwner.isEmpty { applicationOwner = s.applicationOwner }
    }

    /// A stored (or queried) row's latency histograms.
    public mutating func addLatencies(of s: UsageSummary) {
        if let latency = s.responseLatency { response.add(latency) }
        if let latency = s.backendLatency { backend.add(latency) }
    }

    /// Adds these counts to a stored row.
    public func apply(to s: inout UsageSummary) {
        s.requestCount += requests
        s.successCount += successes
        s.faultCount += faults
        s.throttledCount += throttled
        s.blockedCount += blocked
        s.cacheHitCount += cacheHits
        s.clientErrorCount += clientErrors
        s.serverErrorCount += serverErrors
        s.requestBytesSum &+= requestBytes
        s.responseBytesSum &+= responseBytes
        s.responseTimeSumMs &+= responseMsSum
        s.backendTimeSumMs &+= backendMsSum
        s.serviceTimeSumMs &+= serviceMsSum
        s.maxResponseTimeMs = max(s.maxResponseTimeMs, maxResponseMs)
        s.lastAccessUnixMs = max(s.lastAccessUnixMs, lastAccess)
        if !reasons.isEmpty {
            var merged: [String: UInt64] = [:]
            for reason in s.throttledReasons { merged[reason.reason, default: 0] += reason.count }
            for (reason, count) in reasons { merged[reason, default: 0] += count }
            s.throttledReasons = merged.sorted { $0.key < $1.key }.map { ReasonCount(reason: $0.key, count: $0.value) }
        }
        if response.count > 0 { s.responseLatency = response.merged(into: s.responseLatency ?? LatencyHistogram()) }
        if backend.count > 0 { s.backendLatency = backend.merged(into: s.backendLatency ?? LatencyHistogram()) }
        if !apiName.isEmpty { s.apiName = apiName }
        if !apiCreator.isEmpty { s.apiCreator = apiCreator }
        if !applicationName.isEmpty { s.applicationName = applicationName }
        if !applicationOwner.isEmpty { s.applicationOwner = applicationOwner }
    }
}

/// The roll-up rows of detailed rows, by the same rule ingestion adds to
/// them: for loading (the benchmark) and for backfilling a statdb written
/// before a roll-up table existed.
public enum UsageRollup {
    /// Per-application rows (`application_usage_summaries`) of `detailed`
    /// rows: their counts added up per bucket, API tenant and application.
    public static func applicationRows(of detailed: some Sequence<UsageSummary>) -> [UsageSummary] {
        var rows: [SummaryKey: UsageCounts] = [:]
        for row in detailed { rows[SummaryKey(of: row).applicationOnly, default: UsageCounts()].add(row) }
        return rows.map { key, counts in applicationRow(key, counts) }
    }

    /// Per-tenant rows (`tenant_usage_summaries`) of per-API rows: their
    /// counts added up per bucket, API tenant and application tenant.
    public static func tenantRows(of perAPI: some Sequence<UsageSummary>) -> [UsageSummary] {
        var rows: [SummaryKey: UsageCounts] = [:]
        for row in perAPI { rows[SummaryKey(of: row).tenantOnly, default: UsageCounts()].add(row) }
        return rows.map { key, counts in tenantRow(key, counts) }
    }

    /// The stored form of a tenant's row: names no API and no application.
    static func tenantRow(_ key: SummaryKey, _ counts: UsageCounts, adding stored: UsageSummary? = nil) -> UsageSummary {
        var counts = counts
        counts.apiName = ""
        counts.apiCreator = ""
        counts.applicationName = ""
        counts.applicationOwner = ""
        var summary = stored ?? key.summary
        counts.apply(to: &summary)
        return summary
    }

    /// The stored form of an application's row: names no API.
    static func applicationRow(_ key: SummaryKey, _ counts: UsageCounts, adding stored: UsageSummary? = nil) -> UsageSummary {
        var counts = counts
        counts.apiName = ""
        counts.apiCreator = ""
        var summary = stored ?? key.summary
        counts.apply(to: &summary)
        return summary
    }
}

/// Events folded into per-minute rows: a batch's, or those of every batch
/// a commit takes. The newest call per API and per application (statdb's
/// last-access tables) follows from the rows when they are written.
public struct BatchDelta: Sendable {
    public var rows: [SummaryKey: UsageCounts] = [:]
    public var accepted: UInt64 = 0
    /// Events without a timestamp: no bucket to count them in.
    public var discarded: UInt64 = 0

    public init() {}

    public mutating func add(_ event: UsageEvent) {
        add(event, key: event.requestTimestampUnixMs > 0 ? Self.key(of: event) : nil)
    }

    /// Adds an event whose row's key (``key(of:)``, nil for an event
    /// without a timestamp) was worked out beforehand.
    mutating func add(_ event: UsageEvent, key: SummaryKey?) {
        guard let key else {
            discarded += 1
            return
        }
        accepted += 1
        rows[key, default: UsageCounts()].add(event)
    }

    /// The minute row an event counts in. Long strings are cut so every key
    /// fits LMDB (``StatisticsDatabase/Limit``).
    static func key(of event: UsageEvent) -> SummaryKey { unclippedKey(of: event).stored }

    /// The minute row an event counts in, its strings as the event has them.
    static func unclippedKey(of event: UsageEvent) -> SummaryKey {
        let status = event.responseCode
        return SummaryKey(granularity: .minute, bucketStart: UsageTime.bucketStart(event.requestTimestampUnixMs, .minute),
                          tenant: event.apiCreatorTenantDomain, context: event.apiContext, version: event.apiVersion, resource: event.resource,
                          verb: event.verb, applicationTenant: event.userTenantDomain, applicationID: event.applicationId, username: event.username,
                          keyType: event.keyType, statusClass: status > 0 && status < 1000 ? UInt32(status / 100) : 0)
    }

    /// `text` cut to at most `limit` UTF-8 bytes at a character boundary, NULs removed.
    static func clip(_ text: String, _ limit: Int) -> String {
        if text.utf8.count <= limit && !text.utf8.contains(0) { return text }
        var out = ""
        var bytes = 0
        for character in text where character != "\0" {
            let size = character.utf8.count
            if bytes + size > limit { break }
            out.append(character)
            bytes += size
        }
        return out
    }
}

/// A gateway's minute row that cannot be counted.
public struct UsageSummaryError: Error, CustomStringConvertible {
    public let description: String
}

extension BatchDelta {
    /// Adds a call as a gateway folds it before shipping: its row's key as
    /// the call names it, not yet clipped or lower-cased (analytics does
    /// that to every row it takes, ``row(of:)``; rows that then coincide
    /// are added together), which spares the gateway a pass over every
    /// string of every call.
    public mutating func addUnclipped(_ event: UsageEvent) {
        add(event, key: event.requestTimestampUnixMs > 0 ? Self.unclippedKey(of: event) : nil)
    }

    /// The rows as a gateway ships them (``PublishUsageEventsRequest/summaries``):
    /// minute rows of the calls added, which analytics adds to statdb as it
    /// would the calls themselves.
    public var summaries: [UsageSummary] {
        rows.map { key, counts in
            var summary = key.summary
            counts.apply(to: &summary)
            return summary
        }
    }

    /// A gateway's minute row as a key and counts, checked, its key made the
    /// way ``key(of:)`` makes a call's (bucket aligned, strings clipped,
    /// tenants lower-cased); nil for a row of no calls. A row no gateway
    /// could have made by these rules is refused: every count within its
    /// calls, its histograms' buckets in range, in order, in one form, and
    /// adding up to their counts (so nothing added from it, now or when a
    /// query reads it back, can overflow).
    public static func row(of summary: UsageSummary) throws(UsageSummaryError) -> (key: SummaryKey, counts: UsageCounts)? {
        let calls = summary.requestCount
        guard calls > 0 else { return nil }
        guard summary.granularity == .minute else {
            throw UsageSummaryError(description: "a usage summary from a gateway must be a minute row, not \(summary.granularity)")
        }
        guard summary.bucketStartUnixMs >= 0 else { throw UsageSummaryError(description: "a usage summary with a negative bucket start") }
        guard summary.statusClass < 10 else { throw UsageSummaryError(description: "status class \(summary.statusClass) is not a digit") }
        let counts: [(String, UInt64)] = [("success", summary.successCount), ("fault", summary.faultCount), ("throttled", summary.throttledCount),
                                          ("blocked", summary.blockedCount), ("cache hit", summary.cacheHitCount),
                                          ("client error", summary.clientErrorCount), ("server error", summary.serverErrorCount)]
        for (name, count) in counts where count > calls {
            throw UsageSummaryError(description: "a usage summary of \(calls) calls counts \(count) \(name)")
        }
        var reasons: UInt64 = 0
        for reason in summary.throttledReasons {
            let (sum, overflow) = reasons.addingReportingOverflow(reason.count)
            guard !overflow, sum <= calls else { throw UsageSummaryError(description: "a usage summary's throttle reasons count more than its \(calls) calls") }
            reasons = sum
        }
        for (name, histogram) in [("response", summary.responseLatency), ("backend", summary.backendLatency)] {
            if let histogram, !histogram.isWellFormed(maxCount: calls) {
                throw UsageSummaryError(description: "the \(name) latency histogram of a usage summary of \(calls) calls is malformed (buckets out of order or range, in both forms, or not adding up to its count)")
            }
        }
        var key = SummaryKey(of: summary)
        key.bucketStart = UsageTime.bucketStart(summary.bucketStartUnixMs, .minute)
        var rowCounts = UsageCounts()
        rowCounts.add(summary)
        return (key.stored, rowCounts)
    }

    /// Adds a row of calls counted elsewhere (a gateway's, from ``row(of:)``).
    public mutating func add(row key: SummaryKey, _ counts: UsageCounts) {
        accepted += counts.requests
        rows[key, default: UsageCounts()].add(counts)
    }
}

extension LatencyHistogram {
    /// Whether this histogram could be one of `maxCount` calls as this node
    /// writes them: every bucket one ``LatencyBuckets`` has, sparse or dense
    /// (not both), the sparse ones in ascending order with a count each,
    /// and the buckets adding up to `count`, at most `maxCount`.
    func isWellFormed(maxCount: UInt64) -> Bool {
        let highest = HistogramAccumulator.highestIndex
        guard count <= maxCount, bucketIndexes.count == bucketCounts.count else { return false }
        guard bucketIndexes.isEmpty || denseCounts.isEmpty else { return false }
        var previous: UInt32?
        for index in bucketIndexes {
            if index > highest { return false }
            if let previous, index <= previous { return false }
            previous = index
        }
        if !denseCounts.isEmpty && UInt64(firstBucket) + UInt64(denseCounts.count) - 1 > UInt64(highest) { return false }
        var total: UInt64 = 0
        for counts in [bucketCounts, denseCounts] {
            for value in counts {
                let (sum, overflow) = total.addingReportingOverflow(value)
                if overflow || sum > count { return false }
                total = sum
            }
        }
        return total == count
    }
}
