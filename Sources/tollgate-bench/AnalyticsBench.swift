import Foundation
import LMDBKit
import Logging
import NIOCore
import NIOPosix
import OpenSSLKit
import RoleCore
import RPCCore
import RPCNIO
import Synchronization
import TollgateAnalytics
import TollgateNode
import TollgateProto
import TollgateServices
import TollgateStorage

/// `make bench BENCH=analytics`: events ingested per second by one analytics
/// node (as tollgated assembles it, behind the RPC server over TLS) from
/// four streaming gateways; statdb bytes per million calls; `QueryUsage`
/// latency over 30 days of data for 1,000 APIs.
func benchAnalytics() async throws {
    let directory = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    // TOLLGATE_BENCH_ANALYTICS=ingest,bytes,query runs only those parts.
    let parts = Set((ProcessInfo.processInfo.environment["TOLLGATE_BENCH_ANALYTICS"] ?? "ingest,bytes,query").split(separator: ",").map(String.init))
    if parts.contains("ingest") { try await benchIngest(directory: directory) }
    if parts.contains("bytes") { try await benchStatdbBytes(directory: directory) }
    if parts.contains("query") { try await benchQueries(directory: directory) }
}

/// Batches each gateway has in flight (`usage_window_batches`); TOLLGATE_BENCH_WINDOW overrides.
let benchWindow = Int(ProcessInfo.processInfo.environment["TOLLGATE_BENCH_WINDOW"] ?? "") ?? 64

private func benchIngest(directory: String) async throws {
    let ca = try CertificateIssuer.makeAuthority(commonName: "bench CA", validDays: 1)
    try ca.certificatePEM.write(toFile: directory + "/ca.pem", atomically: true, encoding: .utf8)
    func issue(_ id: String, role: String) throws {
        let issued = try CertificateIssuer.issue(CertificateRequest(commonName: id, usage: .node, uniformResourceIdentifiers: ["tollgate://node/\(id)?role=\(role)"],
                                                                    dnsNames: ["localhost"], validUntilOffset: 3600), signedBy: ca)
        try issued.certificatePEM.write(toFile: "\(directory)/\(id).pem", atomically: true, encoding: .utf8)
        try issued.privateKeyPEM.write(toFile: "\(directory)/\(id).key", atomically: true, encoding: .utf8)
    }
    try issue("an-bench", role: "analytics")
    let gatewayIDs = (1...4).map { "gw-\($0)" }
    for id in gatewayIDs { try issue(id, role: "gateway") }

    let data = directory + "/data"
    try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
    let databases = try Databases.open(dataDirectory: data, only: RoleModules.databases(for: .analytics))
    let assembly = try await NodeAssembly.assemble(roles: [.analytics], nodeID: "an-bench", databases: databases, logger: Logger(label: "bench"))
    let serverTLS = try TLSContext(configuration: .server(certificateChainFile: directory + "/an-bench.pem", privateKeyFile: directory + "/an-bench.key",
                                                          trustRootsFile: directory + "/ca.pem", verification: .peerRequired, applicationProtocols: [RPCServer.alpn]))
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    let access = assembly.access
    let server = RPCServer(methods: assembly.methods, tls: serverTLS) { (context) throws(RPCError) -> Caller in try access.authorize(context) }
    let port = try await server.bind(host: "127.0.0.1", port: 0, group: group).port!
    let module = try requireModule(assembly.module(AnalyticsModule.self))
    let ingest = try requireModule(module.ingest)

    // Four gateways, each one stream, 512 events a batch, `benchWindow` batches in flight.
    let now = Int64(Date().timeIntervalSince1970 * 1000)
    // As gateways send them: calls of the last minute; 200 APIs, 500 applications (about 7,500 rows a minute).
    let batches = (0..<64).map { seed in
        PublishUsageEventsRequest(events: (0..<512).map { benchEvent(seed * 512 + $0, now: now, apis: 200, applications: 500, spreadMs: 60_000) })
    }
    let acknowledged = BenchCounter()
    let duration: Duration = .seconds(6)
    let started = ContinuousClock.now
    try await withThrowingTaskGroup(of: Void.self) { tasks in
        for id in gatewayIDs {
            tasks.addTask {
                let tls = try TLSContext(configuration: .client(trustRootsFile: directory + "/ca.pem", certificateChainFile: "\(directory)/\(id).pem",
                                                                privateKeyFile: "\(directory)/\(id).key", applicationProtocols: [RPCServer.alpn]))
                let connection = try await RPCConnection.connect(host: "127.0.0.1", port: port, serverHostname: "localhost", tls: tls, group: group)
                let window = BenchWindow(limit: benchWindow)
                let (requests, continuation) = AsyncStream.makeStream(of: PublishUsageEventsRequest.self)
                let feeder = Task {
                    var sequence: UInt64 = 0
                    while ContinuousClock.now - started < duration {
                        await window.acquire()
                        sequence += 1
                        var request = batches[Int(sequence) % batches.count]
                        request.gatewayId = id
                        request.epoch = 1
                        request.sequence = sequence
                        continuation.yield(request)
                    }
                    continuation.finish()
                }
                try await AnalyticsServiceClient(connection).publishUsageEvents(requests) { response in
                    acknowledged.value.add(Int(response.acceptedCount), ordering: .relaxed)
                    window.release()
                }
                await feeder.value
                await connection.close()
            }
        }
        try await tasks.waitForAll()
    }
    let seconds = benchMilliseconds(ContinuousClock.now - started) / 1000
    let events = acknowledged.value.load(ordering: .relaxed)
    let stats = ingest.statistics
    let rate = Double(events) / seconds
    print("analytics: events ingested, 1 node, 4 streaming gateways (TLS)".padding(toLength: 62, withPad: " ", startingAt: 0)
        + String(format: "%12.0f events/s   target 200000: %@", rate, rate >= 200_000 ? "met" : "MISSED"))
    print(String(format: "  %d events in %.1f s; %llu commits (%.1f batches each), %llu summary rows written; %d batches of 512 in flight per gateway; clients in the same process",
                 events, seconds, stats.commits, Double(stats.batches) / Double(max(1, stats.commits)), stats.rowsWritten, benchWindow))
    // What the node does once per minute on top: the minutes' hour and day rows.
    let rollupStarted = ContinuousClock.now
    let minutes = try await ingest.rollUp(before: Int64(Date().timeIntervalSince1970 * 1000) + 120_000)
    let rollupMs = benchMilliseconds(ContinuousClock.now - rollupStarted)
    print(String(format: "  then %d minutes rolled into their hours, days and weeks in %.0f ms (%.0f ms a minute, once per minute)", minutes, rollupMs,
                 rollupMs / Double(max(1, minutes))))



}

/// A call of a mixed workload: `apis` APIs, `applications` applications
/// each calling two APIs, 3 resources each, one user per application;
/// 90 % 2xx, 6 % 4xx, 3 % 5xx, 1 % throttled; latencies log-spread from
/// 0.2 to 200 ms; timestamps over the `spreadMs` before `now`.
func benchEvent(_ index: Int, now: Int64, apis: Int = 1000, applications: Int = 2000, spreadMs: Int64 = 3_600_000) -> UsageEvent {
    var random = UInt64(truncatingIfNeeded: index) &* 0x9E37_79B9_7F4A_7C15
    func next(_ bound: Int) -> Int {
        random ^= random >> 31
        random = random &* 0xBF58_476D_1CE4_E5B9
        random ^= random >> 29
        return Int(random % UInt64(bound))
    }
    let application = next(applications)
    let api = (application * (1 + next(2) * 6)) % apis
    var e = UsageEvent()
    e.gatewayId = "gw"
    e.requestTimestampUnixMs = now - Int64(next(Int(spreadMs)))
    e.apiName = "api-\(api)"
    e.apiContext = "/api-\(api)"
    e.apiVersion = "1.0.0"
    e.apiCreator = "provider-\(api % 50)"
    e.apiCreatorTenantDomain = "carbon.super"
    e.applicationId = "app-\(application)"
    e.applicationName = "application \(application)"
    e.applicationOwner = "user-\(application)"
    e.username = "user-\(application)"
    e.userTenantDomain = "carbon.super"
    e.keyType = .production
    e.resource = "/items/\(next(3))"
    e.verb = .get
    let roll = next(100)
    e.responseCode = roll < 90 ? 200 : roll < 96 ? 404 : roll < 99 ? 502 : 429
    if roll == 99 {
        e.throttled = true
        e.throttledReason = "SUBSCRIPTION_LIMIT_EXCEEDED"
        e.fault = UsageFault(errorCode: 900800, errorMessage: "throttled")
    } else {
        e.destination = "http://backend"
    }
    let latency = Int64(200 * pow(1000.0, Double(next(1000)) / 1000))
    e.responseTimeUs = latency
    e.backendTimeUs = latency * 9 / 10
    e.responseTimeMs = latency / 1000
    e.requestSizeBytes = 120
    e.responseSizeBytes = UInt64(500 + next(2000))
    e.correlationId = "req-\(index)"
    return e
}

private func benchStatdbBytes(directory: String) async throws {
    let data = directory + "/bytes"
    try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
    let statdb = try StatisticsDatabase.open(in: data)
    let ingest = UsageIngest(statdb: statdb)
    let now = Int64(Date().timeIntervalSince1970 * 1000)
    let total = 1_000_000
    var sequence: UInt64 = 0
    var waits: [@Sendable () async throws -> UsageIngest.Ack] = []
    for start in stride(from: 0, to: total, by: 512) {
        sequence += 1
        waits.append(ingest.enqueue(gateway: "gw", epoch: 1, sequence: sequence,
                                    events: (start..<min(total, start + 512)).map { benchEvent($0, now: now, apis: 200, applications: 500) }))
        if waits.count == 64 {
            for wait in waits { _ = try await wait() }
            waits.removeAll()
        }
    }
    for wait in waits { _ = try await wait() }
    // Every minute rolled into its hour and day, as a running node does a minute or two after each.
    try await ingest.rollUp(before: now + 120_000)
    let used = statdb.database.environment.usedBytes
    let rows = try statdb.database.read { try statdb.summaries.count(in: $0) }
    print("analytics: statdb bytes per million calls".padding(toLength: 62, withPad: " ", startingAt: 0)
        + String(format: "%12.1f MB   (%d detailed summary rows: minute, hour, day, week; 200 APIs, 500 applications, one hour)", Double(used) / 1e6, rows))
}

/// 30 days of data for 1,000 APIs as retention keeps it: week and day rows
/// for the 30 days, hour rows for the 30 days, minute rows for the last 2 hours;
/// each API called by 2 applications on 3 resources (6 rows per API and
/// bucket, the API's own row, and each application's).
private func benchQueries(directory: String) async throws {
    let data = directory + "/query"
    try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
    let statdb = try StatisticsDatabase.open(in: data)
    let now = Int64(Date().timeIntervalSince1970 * 1000)
    let hour: Int64 = 3_600_000, day: Int64 = 86_400_000
    let lastHour = now - now % hour
    /// One bucket's rows: 6 per API, the API's own row (api_usage_summaries)
    /// and its applications' rows (application_usage_summaries).
    func rows(_ granularity: BucketGranularity, _ bucket: Int64)
        -> (detail: [UsageSummary], perAPI: [UsageSummary], perApplication: [UsageSummary], perTenant: [UsageSummary]) {
        var detail: [UsageSummary] = []
        var perAPI: [UsageSummary] = []
        detail.reserveCapacity(6000)
        for api in 0..<1000 {
            var apiCounts = UsageCounts()
            var e = benchEvent(api * 6, now: bucket + 1)
            for combo in 0..<6 {
                var counts = UsageCounts()
                e.apiName = "api-\(api)"
                e.apiContext = "/api-\(api)"
                e.apiCreator = "provider-\(api % 50)"
                e.applicationId = "app-\(combo / 3)-\(api)"
                e.resource = "/items/\(combo % 3)"
                e.responseCode = 200
                for sample in 0..<8 {
                    e.responseTimeUs = Int64(300 + (api * 37 + sample * 911) % 20_000)
                    counts.add(e)
                }
                apiCounts.add(counts)
                var row = UsageSummary()
                row.granularity = granularity
                row.bucketStartUnixMs = bucket
                row.tenantDomain = "carbon.super"
                row.apiContext = e.apiContext
                row.apiVersion = e.apiVersion
                row.resource = e.resource
                row.verb = .get
                row.applicationTenantDomain = "carbon.super"
                row.applicationId = e.applicationId
                row.username = e.username
                row.keyType = .production
                row.statusClass = 2
                counts.apply(to: &row)
                detail.append(row)
            }
            var row = UsageSummary()
            row.granularity = granularity
            row.bucketStartUnixMs = bucket
            row.tenantDomain = "carbon.super"
            row.apiContext = e.apiContext
            row.apiVersion = e.apiVersion
            row.applicationTenantDomain = "carbon.super"
            apiCounts.applicationName = ""
            apiCounts.applicationOwner = ""
            apiCounts.apply(to: &row)
            perAPI.append(row)
        }
        return (detail, perAPI, UsageRollup.applicationRows(of: detail), UsageRollup.tenantRows(of: perAPI))
    }
    var buckets: [(BucketGranularity, Int64)] = []
    for d in 0...30 { buckets.append((.day, now - now % day - Int64(d) * day)) }
    for w in 0...5 { buckets.append((.week, UsageTime.bucketStart(now, .week) - Int64(w) * 7 * day)) }
    // TOLLGATE_BENCH_QUERY_DAYS_ONLY=1: day rows only (quick profiling of the queries that read them).
    if ProcessInfo.processInfo.environment["TOLLGATE_BENCH_QUERY_DAYS_ONLY"] == nil {
        for h in 0..<(30 * 24) { buckets.append((.hour, lastHour - Int64(h) * hour)) }
        for m in 0..<120 { buckets.append((.minute, now - now % 60_000 - Int64(m) * 60_000)) }
    }
    let loadStarted = ContinuousClock.now
    var written = 0
    for chunk in stride(from: 0, to: buckets.count, by: 8) {
        let slice = Array(buckets[chunk..<min(buckets.count, chunk + 8)])
        let made = slice.map { rows($0.0, $0.1) }
        written += made.reduce(0) { $0 + $1.detail.count + $1.perAPI.count + $1.perApplication.count + $1.perTenant.count }
        try await statdb.database.write { txn in
            for bucket in made {
                for row in bucket.detail { try statdb.summaries.store(row, in: &txn) }
                for row in bucket.perAPI { try statdb.apiSummaries.store(row, in: &txn) }
                for row in bucket.perApplication { try statdb.applicationSummaries.store(row, in: &txn) }
                for row in bucket.perTenant { try statdb.tenantSummaries.store(row, in: &txn) }
            }
        }
    }
    // As a running node leaves it: the last two minutes not yet rolled
    // into their hour and day, so queries reaching them read their minute rows too.
    let watermark = now - now % 60_000 - 60_000
    try await statdb.database.write { txn in try statdb.setRollupWatermark(watermark, in: &txn) }
    print(String(format: "  query data: %d rows (%d MB) written in %.1f s", written, statdb.database.environment.usedBytes / 1_000_000,
                 benchMilliseconds(ContinuousClock.now - loadStarted) / 1000))
    let engine = UsageQueryEngine(statdb: statdb)
    let operatorScope = UsageScope.everything(tenant: nil)
    let provider = UsageScope(tenant: "carbon.super", username: "provider-7", administrator: false, provider: true, consumer: false)
    let admin = UsageScope(tenant: "carbon.super", username: "admin", administrator: true, provider: false, consumer: false)
    let cases: [(String, UsageScope, QueryUsageRequest)] = [
        ("one API, daily series, 30 days", admin,
         QueryUsageRequest(granularity: .day, startUnixMs: now - 30 * day, endUnixMs: now, apiContext: "/api-42")),
        ("provider's top APIs (20 of 1,000), 30 days", provider,
         QueryUsageRequest(startUnixMs: now - 30 * day, endUnixMs: now, groupBy: [.api], orderBy: .requests, limit: 10)),
        ("tenant daily series, 30 days (6,000 rows a day)", admin,
         QueryUsageRequest(granularity: .day, startUnixMs: now - 30 * day, endUnixMs: now)),
        ("tenant top 10 APIs, whole days, 30 days", admin,
         QueryUsageRequest(granularity: .day, startUnixMs: now - now % day - 30 * day, endUnixMs: now - now % day, groupBy: [.api], orderBy: .requests, limit: 10)),
        ("tenant top 10 APIs, last 30 days (read in whole days)", operatorScope,
         QueryUsageRequest(startUnixMs: now - 30 * day, endUnixMs: now, groupBy: [.api], orderBy: .requests, limit: 10)),
        ("a provider's API, slowest resources, 30 days", UsageScope(tenant: "carbon.super", username: "provider-42", administrator: false,
                                                                     provider: true, consumer: false),
         QueryUsageRequest(startUnixMs: now - 30 * day, endUnixMs: now, groupBy: [.resource], orderBy: .latencyP95, limit: 5, apiContext: "/api-42")),
        ("tenant top 10 applications, 30 days (6,000 rows a day)", admin,
         QueryUsageRequest(startUnixMs: now - 30 * day, endUnixMs: now, groupBy: [.application], orderBy: .requests, limit: 10)),
    ]
    // TOLLGATE_BENCH_QUERY=text runs only the cases whose label holds it.
    let only = ProcessInfo.processInfo.environment["TOLLGATE_BENCH_QUERY"]
    for (label, scope, request) in cases where only.map({ label.contains($0) }) ?? true {
        var samples: [Double] = []
        var rowsAnswered = 0
        let runs = 60
        for run in 0...runs {
            let started = ContinuousClock.now
            let response = try engine.run(request, scope: scope, nowUnixMs: now)
            if run > 0 { samples.append(benchMilliseconds(ContinuousClock.now - started)) }
            rowsAnswered = response.rows.count
        }
        samples.sort()
        let p50 = samples[samples.count / 2], p99 = samples[min(samples.count - 1, Int(Double(samples.count) * 0.99))]
        print("analytics QueryUsage: \(label)".padding(toLength: 62, withPad: " ", startingAt: 0)
            + String(format: "p50 %7.1f ms  p99 %7.1f ms  (%d rows)   target p99 50 ms: %@", p50, p99, rowsAnswered, p99 <= 50 ? "met" : "MISSED"))
    }
}

/// A semaphore for the benchmark's in-flight window.
final class BenchWindow: Sendable {
    private let state: Mutex<(count: Int, waiters: [CheckedContinuation<Void, Never>])>
    let limit: Int
    init(limit: Int) {
        self.limit = limit
        state = Mutex((0, []))
    }

    func acquire() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let admitted = state.withLock { state -> Bool in
                if state.count < limit {
                    state.count += 1
                    return true
                }
                state.waiters.append(continuation)
                return false
            }
            if admitted { continuation.resume() }
        }
    }

    func release() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if !state.waiters.isEmpty { return state.waiters.removeFirst() }
            state.count -= 1
            return nil
        }
        waiter?.resume()
    }
}

func requireModule<T>(_ value: T?) throws -> T {
    guard let value else { throw BenchFailure("the analytics module was not assembled") }
    return value
}

final class BenchCounter: Sendable {
    let value = Atomic<Int>(0)
}
