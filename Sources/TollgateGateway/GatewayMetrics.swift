import Foundation
import RoleCore
import Synchronization
import ThrottleCore
import TollgateProto

/// The gateway's Prometheus metrics: requests per API and status class with
/// their latency, key-validation calls and their latency, cache hits, usage
/// records, the deployment feed. Counters are plain integers under one
/// lock, rendered at scrape time.
final class GatewayMetrics: MetricsSource {
    private struct RequestKey: Hashable {
        let api: String
        let statusClass: String
    }

    /// Latency buckets in seconds, from 250 µs to 10 s.
    static let buckets: [Double] = [0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

    struct Histogram {
        var counts = [UInt64](repeating: 0, count: GatewayMetrics.buckets.count)
        var sum: Double = 0
        var count: UInt64 = 0

        mutating func observe(_ seconds: Double) {
            for (index, bound) in GatewayMetrics.buckets.enumerated() where seconds <= bound { counts[index] += 1 }
            sum += seconds
            count += 1
        }
    }

    private struct State {
        var requests: [RequestKey: UInt64] = [:]
        var latency: [String: Histogram] = [:]
        var validation = Histogram()
        var validationFailures: UInt64 = 0
        var cacheHits: UInt64 = 0
        var cacheMisses: UInt64 = 0
        var jwtLocal: UInt64 = 0
        var usageDropped: UInt64 = 0
    }

    private let state = Mutex(State())
    /// Read at scrape time for the gauges.
    let snapshot: @Sendable () -> GatewayGauges

    init(snapshot: @escaping @Sendable () -> GatewayGauges) {
        self.snapshot = snapshot
    }

    static let statusClasses = ["aborted", "1xx", "2xx", "3xx", "4xx", "5xx"]

    func requestFinished(api name: String, status: Int, totalNanoseconds: UInt64) {
        let statusClass = (1...5).contains(status / 100) ? Self.statusClasses[status / 100] : Self.statusClasses[0]
        state.withLock { state in
            state.requests[RequestKey(api: name, statusClass: statusClass), default: 0] += 1
            state.latency[name, default: Histogram()].observe(Double(totalNanoseconds) / 1e9)
        }
    }

    func validationCacheHit() { state.withLock { $0.cacheHits += 1 } }
    func validationCacheMiss() { state.withLock { $0.cacheMisses += 1 } }
    func jwtCheckedLocally() { state.withLock { $0.jwtLocal += 1 } }
    func usageEventDropped() { state.withLock { $0.usageDropped += 1 } }

    func validationFinished(_ duration: Duration, failed: Bool) {
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        state.withLock { state in
            state.validation.observe(seconds)
            if failed { state.validationFailures += 1 }
        }
    }

    var cacheCounts: (hits: UInt64, misses: UInt64) { state.withLock { ($0.cacheHits, $0.cacheMisses) } }

    func prometheusText() -> String {
        let state = self.state.withLock { $0 }
        let gauges = snapshot()
        var out = ""
        out += "# HELP tollgate_gateway_requests_total API requests answered, by API (context/version) and status class.\n"
        out += "# TYPE tollgate_gateway_requests_total counter\n"
        for (key, value) in state.requests.sorted(by: { ($0.key.api, $0.key.statusClass) < ($1.key.api, $1.key.statusClass) }) {
            out += "tollgate_gateway_requests_total{api=\"\(Self.escape(key.api))\",status_class=\"\(key.statusClass)\"} \(value)\n"
        }
        out += "# HELP tollgate_gateway_request_duration_seconds Time from a request's head to its response's end, by API.\n"
        out += "# TYPE tollgate_gateway_request_duration_seconds histogram\n"
        for (api, histogram) in state.latency.sorted(by: { $0.key < $1.key }) {
            out += Self.render(histogram, name: "tollgate_gateway_request_duration_seconds", labels: "api=\"\(Self.escape(api))\"")
        }
        out += "# HELP tollgate_gateway_key_validation_seconds Keymanager round trips for tokens not in the cache.\n"
        out += "# TYPE tollgate_gateway_key_validation_seconds histogram\n"
        out += Self.render(state.validation, name: "tollgate_gateway_key_validation_seconds", labels: "")
        out += "# HELP tollgate_gateway_key_validation_failures_total Validations no keymanager answered (503/900900).\n"
        out += "# TYPE tollgate_gateway_key_validation_failures_total counter\n"
        out += "tollgate_gateway_key_validation_failures_total \(state.validationFailures)\n"
        out += "# HELP tollgate_gateway_key_cache_lookups_total Token cache lookups, by result.\n"
        out += "# TYPE tollgate_gateway_key_cache_lookups_total counter\n"
        out += "tollgate_gateway_key_cache_lookups_total{result=\"hit\"} \(state.cacheHits)\n"
        out += "tollgate_gateway_key_cache_lookups_total{result=\"miss\"} \(state.cacheMisses)\n"
        out += "# HELP tollgate_gateway_jwt_local_checks_total JWT access tokens authorized or refused on the gateway, with no keymanager call.\n"
        out += "# TYPE tollgate_gateway_jwt_local_checks_total counter\n"
        out += "tollgate_gateway_jwt_local_checks_total \(state.jwtLocal)\n"
        out += "# HELP tollgate_gateway_key_cache_entries Cached validation results.\n"
        out += "# TYPE tollgate_gateway_key_cache_entries gauge\n"
        out += "tollgate_gateway_key_cache_entries \(gauges.cacheEntries)\n"
        out += "# HELP tollgate_gateway_usage_events_total Usage records by outcome: shipped (acknowledged by analytics), discarded (see usage_events_discarded_total), dropped (queue full).\n"
        out += "# TYPE tollgate_gateway_usage_events_total counter\n"
        out += "tollgate_gateway_usage_events_total{outcome=\"shipped\"} \(gauges.usageShipped)\n"
        out += "tollgate_gateway_usage_events_total{outcome=\"discarded\"} \(gauges.usageDiscarded)\n"
        out += "tollgate_gateway_usage_events_total{outcome=\"dropped\"} \(state.usageDropped)\n"
        out += "# HELP tollgate_gateway_usage_events_queued Usage records waiting to be shipped.\n"
        out += "# TYPE tollgate_gateway_usage_events_queued gauge\n"
        out += "tollgate_gateway_usage_events_queued \(gauges.usageQueued)\n"
        out += "# HELP tollgate_gateway_usage_events_discarded_total Usage records never sent to analytics, by reason: spool_full (the spool at its cap), no_analytics (none configured), spool_error (the spool could not be written), queue_full (the in-memory queue was full).\n"
        out += "# TYPE tollgate_gateway_usage_events_discarded_total counter\n"
        for reason in UsageShipping.reasons {
            let count = reason == "queue_full" ? state.usageDropped : gauges.usageShipping.discarded[reason] ?? 0
            out += "tollgate_gateway_usage_events_discarded_total{reason=\"\(reason)\"} \(count)\n"
        }
        out += "# HELP tollgate_gateway_usage_spool_bytes Bytes of usage batches in the spool file waiting for an analytics node's acknowledgement.\n"
        out += "# TYPE tollgate_gateway_usage_spool_bytes gauge\n"
        out += "tollgate_gateway_usage_spool_bytes \(gauges.usageSpool?.pendingBytes ?? 0)\n"
        out += "# HELP tollgate_gateway_usage_spool_batches Usage batches in the spool waiting for an acknowledgement.\n"
        out += "# TYPE tollgate_gateway_usage_spool_batches gauge\n"
        out += "tollgate_gateway_usage_spool_batches \(gauges.usageSpool?.pendingBatches ?? 0)\n"
        out += "# HELP tollgate_gateway_usage_spool_file_bytes Bytes of the spool's files on disk (acknowledged batches included until their segment is dropped).\n"
        out += "# TYPE tollgate_gateway_usage_spool_file_bytes gauge\n"
        out += "tollgate_gateway_usage_spool_file_bytes \(gauges.usageSpool?.fileBytes ?? 0)\n"
        out += "# HELP tollgate_gateway_usage_batches_acknowledged_total Usage batches analytics acknowledged, by whether it had applied them before (a re-send).\n"
        out += "# TYPE tollgate_gateway_usage_batches_acknowledged_total counter\n"
        out += "tollgate_gateway_usage_batches_acknowledged_total{duplicate=\"false\"} \(gauges.usageShipping.acknowledgedBatches - gauges.usageShipping.duplicateBatches)\n"
        out += "tollgate_gateway_usage_batches_acknowledged_total{duplicate=\"true\"} \(gauges.usageShipping.duplicateBatches)\n"
        out += "# HELP tollgate_gateway_usage_analytics_connected 1 while a usage stream to an analytics node has batches acknowledged.\n"
        out += "# TYPE tollgate_gateway_usage_analytics_connected gauge\n"
        out += "tollgate_gateway_usage_analytics_connected \(gauges.usageShipping.connected ? 1 : 0)\n"
        out += "# HELP tollgate_gateway_deployment_revision Deployment revision being served.\n"
        out += "# TYPE tollgate_gateway_deployment_revision gauge\n"
        out += "tollgate_gateway_deployment_revision \(gauges.revision)\n"
        out += "# HELP tollgate_gateway_deployment_feed_connected 1 while the deployment feed is connected.\n"
        out += "# TYPE tollgate_gateway_deployment_feed_connected gauge\n"
        out += "tollgate_gateway_deployment_feed_connected \(gauges.feedConnected ? 1 : 0)\n"
        out += "# HELP tollgate_gateway_deployment_age_seconds Time since the served deployment state was last confirmed by a publisher.\n"
        out += "# TYPE tollgate_gateway_deployment_age_seconds gauge\n"
        out += "tollgate_gateway_deployment_age_seconds \(gauges.stateAgeSeconds)\n"
        out += "# HELP tollgate_gateway_apis APIs being served.\n"
        out += "# TYPE tollgate_gateway_apis gauge\n"
        out += "tollgate_gateway_apis \(gauges.apis)\n"
        out += "# HELP tollgate_gateway_suspended_endpoints Backend endpoints suspended after failures.\n"
        out += "# TYPE tollgate_gateway_suspended_endpoints gauge\n"
        out += "tollgate_gateway_suspended_endpoints \(gauges.suspendedEndpoints)\n"
        if let throttle = gauges.throttle { out += Self.renderThrottle(throttle, requests: gauges.throttleRequests, trafficManagers: gauges.trafficManagers) }
        return out
    }

    /// The quota-lease throttler's figures (docs/throttling.md): fallback,
    /// round trips per 1,000 requests, admissions and refusals per policy.
    static func renderThrottle(_ stats: LeaseThrottler.Statistics, requests: UInt64, trafficManagers: Int) -> String {
        var out = ""
        func sample(_ name: String, _ type: String, _ help: String, _ value: String) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(value)\n"
        }
        sample("tollgate_gateway_throttle_traffic_managers", "gauge", "Traffic managers under [peers]; 0 means every key is enforced by the failure mode.",
               String(trafficManagers))
        sample("tollgate_gateway_throttle_keys", "gauge", "Throttle keys (per window) this gateway holds state for.", String(stats.keys))
        sample("tollgate_gateway_throttle_keys_in_fallback", "gauge", "Keys whose traffic manager cannot be reached, enforced by the failure mode.",
               String(stats.keysInFallback))
        sample("tollgate_gateway_throttle_fallback_entries_total", "counter", "Times a key went into fallback because its traffic manager was lost.",
               String(stats.fallbackEntries))
        sample("tollgate_gateway_throttle_requests_total", "counter", "Requests that reached the throttling step.", String(requests))
        sample("tollgate_gateway_throttle_exchanges_total", "counter", "ExchangeLeases round trips to the traffic managers.", String(stats.exchanges))
        sample("tollgate_gateway_throttle_lease_operations_total", "counter", "Per-key lease requests, returns and reports sent.", String(stats.operations))
        sample("tollgate_gateway_throttle_failed_operations_total", "counter", "Lease operations no traffic manager answered.", String(stats.failedOperations))
        sample("tollgate_gateway_throttle_waits_total", "counter", "Requests that waited for a lease.", String(stats.waits))
        out += "# HELP tollgate_gateway_throttle_units_total Quota units granted to and returned by this gateway.\n"
        out += "# TYPE tollgate_gateway_throttle_units_total counter\n"
        out += "tollgate_gateway_throttle_units_total{direction=\"granted\"} \(stats.unitsGranted)\n"
        out += "tollgate_gateway_throttle_units_total{direction=\"returned\"} \(stats.unitsReturned)\n"
        let perThousand = { (count: UInt64) in requests == 0 ? 0 : Double(count) * 1000 / Double(requests) }
        sample("tollgate_gateway_throttle_round_trips_per_1000_requests", "gauge", "Lease round trips per 1,000 requests since start.",
               String(perThousand(stats.exchanges)))
        sample("tollgate_gateway_throttle_lease_operations_per_1000_requests", "gauge", "Lease operations per 1,000 requests since start.",
               String(perThousand(stats.operations)))
        out += "# HELP tollgate_gateway_throttle_decisions_total Requests per policy (kind:name) and outcome; marked = admitted past a quota that does not stop.\n"
        out += "# TYPE tollgate_gateway_throttle_decisions_total counter\n"
        for (policy, counts) in stats.policies.sorted(by: { $0.key < $1.key }) {
            let label = escape(policy)
            let kind = escape(String(policy.prefix { $0 != ":" }))
            out += "tollgate_gateway_throttle_decisions_total{kind=\"\(kind)\",policy=\"\(label)\",outcome=\"admitted\"} \(counts.admitted)\n"
            out += "tollgate_gateway_throttle_decisions_total{kind=\"\(kind)\",policy=\"\(label)\",outcome=\"refused\"} \(counts.refused)\n"
            out += "tollgate_gateway_throttle_decisions_total{kind=\"\(kind)\",policy=\"\(label)\",outcome=\"marked\"} \(counts.marked)\n"
        }
        return out
    }

    static func render(_ histogram: Histogram, name: String, labels: String) -> String {
        var out = ""
        let prefix = labels.isEmpty ? "" : labels + ","
        for (index, bound) in buckets.enumerated() {
            out += "\(name)_bucket{\(prefix)le=\"\(bound)\"} \(histogram.counts[index])\n"
        }
        out += "\(name)_bucket{\(prefix)le=\"+Inf\"} \(histogram.count)\n"
        out += "\(name)_sum\(labels.isEmpty ? "" : "{\(labels)}") \(histogram.sum)\n"
        out += "\(name)_count\(labels.isEmpty ? "" : "{\(labels)}") \(histogram.count)\n"
        return out
    }

    static func escape(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }
}

/// Values read at scrape time.
struct GatewayGauges: Sendable {
    var cacheEntries = 0
    var usageQueued = 0
    var usageShipped: UInt64 = 0
    var usageDiscarded: UInt64 = 0
    var usageShipping = UsageShipping.State()
    var usageSpool: (pendingBatches: Int, pendingEvents: Int, pendingBytes: Int64, fileBytes: Int64, nextSequence: UInt64)?
    var revision: UInt64 = 0
    var feedConnected = false
    var stateAgeSeconds: Double = 0
    var apis = 0
    var suspendedEndpoints = 0
    var throttle: LeaseThrottler.Statistics?
    /// Requests that reached the throttling step.
    var throttleRequests: UInt64 = 0
    /// Traffic managers under `[peers]`.
    var trafficManagers = 0
}
