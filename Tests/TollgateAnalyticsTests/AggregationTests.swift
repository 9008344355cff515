import Foundation
import LMDBKit
import RPCCore
import Synchronization
import Testing
import TollctlCharts
@testable import TollgateAnalytics
import TollgateProto
import TollgateStorage

func withStatdb<Result>(_ body: (StatisticsDatabase) async throws -> Result) async throws -> Result {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-analytics-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try await body(try StatisticsDatabase.open(in: path))
}

/// 2026-11-28T10:00:00Z
let base: Int64 = 1_795_860_000_000

func event(at ms: Int64, api: String = "Menu", context: String = "/menu", tenant: String = "carbon.super", creator: String = "alice",
           app: String = "app-1", owner: String = "bob", user: String = "bob", status: Int32 = 200, latencyUs: Int64 = 1500,
           backendUs: Int64 = 1000, throttled: String? = nil, blocked: Bool = false, fault: Bool = false, resource: String = "/items") -> UsageEvent {
    var e = UsageEvent()
    e.requestTimestampUnixMs = ms
    e.apiName = api
    e.apiContext = context
    e.apiVersion = "1"
    e.apiCreator = creator
    e.apiCreatorTenantDomain = tenant
    e.applicationId = app
    e.applicationOwner = owner
    e.applicationName = app
    e.userTenantDomain = tenant
    e.username = user
    e.keyType = .production
    e.resource = resource
    e.verb = .get
    e.responseCode = status
    e.responseTimeUs = latencyUs
    e.responseTimeMs = latencyUs / 1000
    e.backendTimeUs = backendUs
    e.destination = throttled == nil && !blocked ? "http://backend" : ""
    e.requestSizeBytes = 10
    e.responseSizeBytes = 100
    if let throttled {
        e.throttled = true
        e.throttledReason = throttled
        e.fault = UsageFault(errorCode: 900800, errorMessage: "throttled")
    }
    if blocked {
        e.blocked = true
        e.fault = UsageFault(errorCode: 900805, errorMessage: "blocked")
    }
    if fault { e.fault = UsageFault(errorCode: 101503, errorMessage: "backend") }
    return e
}

@Suite struct HistogramTests {
    @Test func bucketsCoverEveryValueWithinTheDocumentedError() {
        var previousUpper: UInt64 = 0
        for index in UInt32(0)..<600 {
            let (lower, width) = LatencyBuckets.bounds(of: index)
            #expect(lower == previousUpper, "bucket \(index) starts where \(index - 1) ends")
            previousUpper = lower + width
            #expect(LatencyBuckets.index(of: lower) == index)
            #expect(LatencyBuckets.index(of: lower + width - 1) == index)
            let representative = Double(LatencyBuckets.representative(of: index))
            for value in [lower, lower + width - 1] where value > 0 {
                #expect(abs(representative - Double(value)) / Double(value) <= LatencyBuckets.relativeError + 1e-12)
            }
        }
    }

    @Test func quantilesOfMergedHistogramsAreWithinTheErrorOfTheExactValues() {
        var generator = SystemRandomNumberGenerator()
        var values: [UInt64] = []
        var parts = [HistogramAccumulator](repeating: HistogramAccumulator(), count: 7)
        for index in 0..<20_000 {
            // Log-uniform from 1 µs to 10 s.
            let value = UInt64(exp(Double.random(in: 0..<log(10_000_000.0), using: &generator)))
            values.append(value)
            parts[index % parts.count].record(value)
        }
        var merged = HistogramAccumulator()
        var stored = LatencyHistogram()
        for part in parts {
            merged.add(part)
            stored = part.merged(into: stored)
        }
        var fromStored = HistogramAccumulator()
        fromStored.add(stored)
        values.sort()
        for q in [0.5, 0.9, 0.95, 0.99, 0.999] {
            let exact = Double(values[Int((q * Double(values.count)).rounded(.up)) - 1])
            for histogram in [merged, fromStored] {
                let estimate = Double(histogram.quantile(q))
                #expect(abs(estimate - exact) / exact <= LatencyBuckets.relativeError, "q\(q): \(estimate) vs \(exact)")
            }
        }
        #expect(fromStored.count == 20_000)
        #expect(fromStored.max == values.last)
    }
}

@Suite struct IngestTests {
    @Test func aBatchIsCountedOnceAndRolledUpToHourAndDay() async throws {
        try await withStatdb { statdb in
            let ingest = UsageIngest(statdb: statdb)
            let events = [
                event(at: base + 1_000), event(at: base + 2_000, status: 404), event(at: base + 61_000, status: 503, fault: true),
                event(at: base + 62_000, status: 429, throttled: "SUBSCRIPTION_LIMIT_EXCEEDED"),
                event(at: base + 63_000, status: 429, throttled: "APPLICATION_LIMIT_EXCEEDED"),
                event(at: base + 3_600_000 + 5, status: 403, blocked: true),
            ]
            let first = try await ingest.submit(gateway: "gw-1", epoch: 7, sequence: 1, events: events)
            #expect(first == UsageIngest.Ack(duplicate: false, accepted: 6, discarded: 0))
            // Re-sent after a lost acknowledgement: nothing counted again.
            let again = try await ingest.submit(gateway: "gw-1", epoch: 7, sequence: 1, events: events)
            #expect(again.duplicate)
            // Another gateway's batch 1 is its own.
            _ = try await ingest.submit(gateway: "gw-2", epoch: 1, sequence: 1, events: [event(at: base + 10)])
            // A new statdb's minutes are all ahead of the roll-up: counted per minute only, until rolled.
            #expect(try statdb.summaries(.hour, fromUnixMs: 0, toUnixMs: .max).isEmpty)
            #expect(try await ingest.rollUp(before: base + 2 * 3_600_000) == 3)
            #expect(try statdb.database.read { try statdb.rollupWatermark(in: $0) } == base + 2 * 3_600_000)

            let minutes = try statdb.summaries(.minute, fromUnixMs: base, toUnixMs: base + 86_400_000)
            let hours = try statdb.summaries(.hour, fromUnixMs: base, toUnixMs: base + 86_400_000)
            let days = try statdb.summaries(.day, fromUnixMs: base - 86_400_000, toUnixMs: base + 86_400_000)
            func total(_ rows: [UsageSummary], _ field: (UsageSummary) -> UInt64) -> UInt64 { rows.map(field).reduce(0, +) }
            for rows in [minutes, hours, days] {
                #expect(total(rows, \.requestCount) == 7)
                #expect(total(rows, \.throttledCount) == 2)
                #expect(total(rows, \.blockedCount) == 1)
                #expect(total(rows, \.faultCount) == 1)
                #expect(total(rows, \.serverErrorCount) == 1)
                #expect(total(rows, \.clientErrorCount) == 4)
                #expect(total(rows, \.successCount) == 2)
                #expect(total(rows) { $0.responseLatency?.count ?? 0 } == 7)
                #expect(total(rows, \.requestBytesSum) == 70)
            }
            #expect(Set(minutes.map(\.statusClass)) == [2, 4, 5])
            let perAPI = try statdb.database.read { txn in
                var rows: [UsageSummary] = []
                try statdb.forEachSummary(.day, fromUnixMs: 0, toUnixMs: .max, rows: .perAPI, in: txn) { rows.append($0); return true }
                return rows
            }
            #expect(total(perAPI, \.requestCount) == 7 && total(perAPI, \.throttledCount) == 2 && total(perAPI) { $0.responseLatency?.count ?? 0 } == 7)
            let reasons = days.flatMap(\.throttledReasons).reduce(into: [String: UInt64]()) { $0[$1.reason, default: 0] += $1.count }
            #expect(reasons == ["SUBSCRIPTION_LIMIT_EXCEEDED": 1, "APPLICATION_LIMIT_EXCEEDED": 1])
            #expect(Set(hours.map(\.bucketStartUnixMs)) == [base, base + 3_600_000])
            let statistics = ingest.statistics
            #expect(statistics.events == 7)
            #expect(statistics.duplicateBatches == 1)
            let cursor = try statdb.database.read { try statdb.cursors.get(Key(.string("gw-1"), .uint64(7)), in: $0) }
            #expect(cursor?.lastSequence == 1)
        }
    }

    /// A gateway folds its calls into minute rows before shipping them:
    /// statdb ends up with the very rows those calls would have made, at
    /// every granularity, and the rows count as the calls they stand for.
    @Test func aGatewaysMinuteRowsCountAsItsCallsWould() async throws {
        let events = [
            event(at: base + 1_000), event(at: base + 1_500, latencyUs: 90_000), event(at: base + 2_000, status: 404),
            event(at: base + 61_000, status: 503, fault: true), event(at: base + 62_000, status: 429, throttled: "SUBSCRIPTION_LIMIT_EXCEEDED"),
            event(at: base + 63_000, status: 429, throttled: "APPLICATION_LIMIT_EXCEEDED"), event(at: base + 3_600_000 + 5, status: 403, blocked: true),
            event(at: base + 4_000, tenant: "Tenant.Example", app: "app-2", user: "carol", latencyUs: 7),
            // Rows the gateway keeps apart that analytics' keys bring together: a tenant's case, a resource past its limit.
            event(at: base + 4_500, tenant: "tenant.example", app: "app-2", user: "carol", latencyUs: 9),
            event(at: base + 5_000, resource: "/" + String(repeating: "r", count: StatisticsDatabase.Limit.resource + 10)),
            event(at: base + 5_500, resource: "/" + String(repeating: "r", count: StatisticsDatabase.Limit.resource + 20)),
        ]
        var delta = BatchDelta()
        for event in events { delta.addUnclipped(event) }
        let shipped = delta.summaries
        #expect(shipped.count < events.count)
        func stored(_ submit: (UsageIngest) async throws -> UsageIngest.Ack) async throws -> (ack: UsageIngest.Ack, rows: [[UsageSummary]]) {
            try await withStatdb { statdb in
                let ingest = UsageIngest(statdb: statdb)
                let ack = try await submit(ingest)
                _ = try await ingest.rollUp(before: base + 2 * 3_600_000)
                let rows = try [BucketGranularity.minute, .hour, .day].map { granularity in
                    try statdb.summaries(granularity, fromUnixMs: 0, toUnixMs: .max).map { (bytes: try $0.serializedBytes(), row: $0) }
                        .sorted { $0.bytes.lexicographicallyPrecedes($1.bytes) }.map(\.row)
                }
                return (ack, rows)
            }
        }
        let fromEvents = try await stored { try await $0.submit(gateway: "gw-1", epoch: 1, sequence: 1, events: events) }
        let fromRows = try await stored { ingest in
            try await ingest.submit(gateway: "gw-1", epoch: 1, sequence: 1, events: [], rows: try shipped.compactMap { try BatchDelta.row(of: $0) })
        }
        #expect(fromRows.ack == fromEvents.ack)
        // Calls of rows refused before ingestion count as discarded, alongside the rest.
        let withRefused = try await withStatdb { statdb in
            try await UsageIngest(statdb: statdb).enqueue(gateway: "gw-1", epoch: 1, sequence: 1, events: [], rows: [try #require(try BatchDelta.row(of: shipped[0]))],
                                                          discarded: 5)()
        }
        #expect(withRefused == UsageIngest.Ack(duplicate: false, accepted: shipped[0].requestCount, discarded: 5))
        #expect(fromRows.ack.accepted == UInt64(events.count))
        #expect(fromRows.rows == fromEvents.rows)
        #expect(fromRows.rows[2].map(\.requestCount).reduce(0, +) == UInt64(events.count))
    }

    /// A gateway's row that could not have been made by these rules is
    /// refused, not added: nothing taken from it could overflow a count
    /// or index past a histogram, now or when a query reads it back.
    @Test func malformedMinuteRowsAreRefused() throws {
        var delta = BatchDelta()
        delta.addUnclipped(event(at: base + 1_000))
        delta.addUnclipped(event(at: base + 2_000, latencyUs: 50_000))
        let good = try #require(delta.summaries.first)
        #expect(good.requestCount == 2)
        #expect(try BatchDelta.row(of: good) != nil)
        var variants: [String: UsageSummary] = [:]
        variants["hourly"] = good; variants["hourly"]!.granularity = .hour
        variants["negative bucket"] = good; variants["negative bucket"]!.bucketStartUnixMs = -60_000
        variants["status class"] = good; variants["status class"]!.statusClass = 12
        variants["more successes than calls"] = good; variants["more successes than calls"]!.successCount = 3
        variants["reasons past the calls"] = good
        variants["reasons past the calls"]!.throttledReasons = [ReasonCount(reason: "A", count: .max), ReasonCount(reason: "B", count: 2)]
        variants["out of order"] = good
        variants["out of order"]!.responseLatency = LatencyHistogram(count: 2, sumUs: 10, maxUs: 9, bucketIndexes: [9, 3], bucketCounts: [1, 1])
        variants["out of range"] = good
        variants["out of range"]!.backendLatency = LatencyHistogram(count: 1, sumUs: 10, maxUs: 9, firstBucket: 5_000, denseCounts: [1])
        variants["unpaired"] = good
        variants["unpaired"]!.responseLatency = LatencyHistogram(count: 1, sumUs: 10, maxUs: 9, bucketIndexes: [3], bucketCounts: [])
        variants["both forms"] = good
        variants["both forms"]!.responseLatency = LatencyHistogram(count: 2, sumUs: 10, maxUs: 9, bucketIndexes: [3], bucketCounts: [1],
                                                                  firstBucket: 3, denseCounts: [1])
        variants["buckets past the count"] = good
        variants["buckets past the count"]!.responseLatency = LatencyHistogram(count: 2, sumUs: 10, maxUs: 9, bucketIndexes: [3, 4], bucketCounts: [.max, 2])
        variants["count past the calls"] = good
        variants["count past the calls"]!.responseLatency = LatencyHistogram(count: 3, sumUs: 10, maxUs: 9, firstBucket: 3, denseCounts: [1, 1, 1])
        for (name, bad) in variants {
            #expect(throws: UsageSummaryError.self, "\(name)") { try BatchDelta.row(of: bad) }
        }
        var empty = good
        empty.requestCount = 0
        #expect(try BatchDelta.row(of: empty) == nil)
        // Calls in the epoch's first minute (bucket start 0) count, as their events would.
        var early = BatchDelta()
        early.addUnclipped(event(at: 30_000))
        #expect(try BatchDelta.row(of: try #require(early.summaries.first))?.key.bucketStart == 0)

        // In a batch, refused rows (and rows past the batch's cap) are left
        // out and their calls counted as discarded; the others are kept.
        var request = PublishUsageEventsRequest(gatewayId: "gw", epoch: 1, sequence: 1)
        var huge = good
        huge.requestCount = UInt64(AnalyticsRPCService.maxBatchEvents)
        request.summaries = [good, variants["out of order"]!, huge, good]
        let (rows, refused) = AnalyticsRPCService.checkedRows(of: request)
        #expect(rows.count == 2 && rows.allSatisfy { $0.counts.requests == 2 })
        #expect(refused.rows == 2 && refused.calls == 2 + UInt64(AnalyticsRPCService.maxBatchEvents))
        #expect(refused.reason?.contains("malformed") == true)
    }

    @Test func concurrentBatchesFromManyGatewaysAddUpExactly() async throws {
        try await withStatdb { statdb in
            let ingest = UsageIngest(statdb: statdb)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for gateway in 0..<4 {
                    group.addTask {
                        for sequence in UInt64(1)...25 {
                            let events = (0..<40).map { event(at: base + Int64($0) * 1000 + Int64(sequence) * 60_000, user: "u\($0 % 5)") }
                            let wait = ingest.enqueue(gateway: "gw-\(gateway)", epoch: 1, sequence: sequence, events: events)
                            // Every fifth batch is sent twice, as after a reconnect.
                            let duplicate = sequence % 5 == 0 ? ingest.enqueue(gateway: "gw-\(gateway)", epoch: 1, sequence: sequence, events: events) : nil
                            _ = try await wait()
                            if let duplicate { #expect(try await duplicate().duplicate) }
                        }
                    }
                }
                try await group.waitForAll()
            }
            try await ingest.rollUp(before: .max)
            let days = try statdb.summaries(.day, fromUnixMs: base - 86_400_000, toUnixMs: base + 86_400_000)
            let expected: UInt64 = 4 * 25 * 40
            #expect(days.map(\.requestCount).reduce(0, +) == expected)
            let hours = try statdb.summaries(.hour, fromUnixMs: base, toUnixMs: base + 86_400_000)
            #expect(hours.map(\.requestCount).reduce(0, +) == expected)
        }
    }

    @Test func aFailedCommitFailsItsBatchesAndThoseBehindThemAndTheirResendsCountOnce() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-analytics-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: path) }
        // A full disk, as LMDB sees one: the map may not grow past 2 MiB.
        let statdb = try StatisticsDatabase.open(in: path, options: .init(mapSize: 2 << 20, maxMapSize: 2 << 20))
        let ingest = UsageIngest(statdb: statdb)
        let first = try await ingest.submit(gateway: "gw", epoch: 1, sequence: 1, events: [event(at: base + 1_000)])
        #expect(first == UsageIngest.Ack(duplicate: false, accepted: 1, discarded: 0))
        // A batch of 20,000 rows (one user each) cannot fit, nor can the batch sent behind it.
        let huge = (0..<20_000).map { event(at: base + 2_000, user: "user-\($0)") }
        let tooBig = ingest.enqueue(gateway: "gw", epoch: 1, sequence: 2, events: huge)
        let behind = ingest.enqueue(gateway: "gw", epoch: 1, sequence: 3, events: [event(at: base + 3_000)])
        await #expect(throws: LMDBError.mapFull) { try await tooBig() }
        await #expect(throws: LMDBError.mapFull) { try await behind() }
        #expect(ingest.statistics.failedCommits >= 1)
        // Sent again, they are not duplicates: nothing of them was counted.
        await #expect(throws: LMDBError.mapFull) { try await ingest.submit(gateway: "gw", epoch: 1, sequence: 2, events: huge) }
        let second = try await ingest.submit(gateway: "gw", epoch: 1, sequence: 2, events: [event(at: base + 2_000)])
        #expect(second == UsageIngest.Ack(duplicate: false, accepted: 1, discarded: 0))
        #expect(try await ingest.submit(gateway: "gw", epoch: 1, sequence: 3, events: [event(at: base + 3_000)]).duplicate == false)
        #expect(try await ingest.submit(gateway: "gw", epoch: 1, sequence: 2, events: [event(at: base + 2_000)]).duplicate)
        let minutes = try statdb.summaries(.minute, fromUnixMs: base, toUnixMs: base + 3_600_000)
        #expect(minutes.map(\.requestCount).reduce(0, +) == 3)
        let cursor = try statdb.database.read { try statdb.cursors.get(Key(.string("gw"), .uint64(1)), in: $0) }
        #expect(cursor?.lastSequence == 3 && cursor?.batches == 3 && cursor?.events == 3)
        #expect(ingest.statistics.gaps == 0)
    }

    @Test func aNewEpochMayStartAtAnyNumberButASkipWithinOneIsAGap() async throws {
        try await withStatdb { statdb in
            let reported = Mutex<[String]>([])
            let ingest = UsageIngest(statdb: statdb) { gap in reported.withLock { $0.append(gap) } }
            // A gateway whose spool lost its tail goes on under a new epoch, numbers continuing.
            _ = try await ingest.submit(gateway: "gw", epoch: 2, sequence: 41, events: [event(at: base)])
            _ = try await ingest.submit(gateway: "gw", epoch: 2, sequence: 42, events: [event(at: base)])
            #expect(ingest.statistics.gaps == 0)
            _ = try await ingest.submit(gateway: "gw", epoch: 2, sequence: 45, events: [event(at: base)])
            #expect(ingest.statistics.gaps == 1)
            #expect(reported.withLock { $0 } == ["gateway gw epoch 2: batch 45 follows 42"])
            #expect(try statdb.summaries(.minute, fromUnixMs: base, toUnixMs: base + 60_000).map(\.requestCount).reduce(0, +) == 3)
        }
    }

    @Test func pruningDeletesOnlyRowsPastTheirRetention() async throws {
        try await withStatdb { statdb in
            let ingest = UsageIngest(statdb: statdb)
            _ = try await ingest.submit(gateway: "gw", epoch: 1, sequence: 1,
                                        events: (0..<300).map { event(at: base + Int64($0) * 60_000) })
            #expect(try statdb.summaries(.minute, fromUnixMs: 0, toUnixMs: .max).count == 300)
            let pruner = UsagePruner(statdb: statdb, retention: UsageRetention(minuteMs: 3_600_000, hourMs: 86_400_000 * 10, dayMs: 86_400_000 * 100,
                                                                                batchRows: 7))
            // Minutes not yet in their hours are kept however old; rolled, they go.
            #expect(try await pruner.prune(nowUnixMs: base + 300 * 60_000) == 0)
            try await ingest.rollUp(before: .max)
            let deleted = try await pruner.prune(nowUnixMs: base + 300 * 60_000)
            #expect(deleted == 4 * 240, "detailed, per-API, per-application and per-tenant rows")
            let minutes = try statdb.summaries(.minute, fromUnixMs: 0, toUnixMs: .max)
            #expect(minutes.count == 60)
            #expect(minutes.allSatisfy { $0.bucketStartUnixMs >= base + 240 * 60_000 })
            #expect(try statdb.summaries(.hour, fromUnixMs: 0, toUnixMs: .max).map(\.requestCount).reduce(0, +) == 300)
            let apiMinutes = try statdb.database.read { txn in
                var count = 0
                try statdb.forEachSummary(.minute, fromUnixMs: 0, toUnixMs: .max, rows: .perAPI, in: txn) { _ in count += 1; return true }
                return count
            }
            #expect(apiMinutes == 60)
            #expect(try rows(statdb, .minute, .perApplication).count == 60)
            #expect(try rows(statdb, .hour, .perApplication).map(\.requestCount).reduce(0, +) == 300)
        }
    }
}

func rows(_ statdb: StatisticsDatabase, _ granularity: BucketGranularity, _ table: StatisticsDatabase.Rows) throws -> [UsageSummary] {
    try statdb.database.read { txn in
        var rows: [UsageSummary] = []
        try statdb.forEachSummary(granularity, fromUnixMs: .min, toUnixMs: .max, rows: table, in: txn) { rows.append($0); return true }
        return rows
    }
}

/// Calls of three applications (two tenants' APIs, one subscriber tenant
/// calling the other's API) over three hours, with every status and a
/// throttled reason, in several batches.
func mixedEvents(batch: Int) -> [UsageEvent] {
    (0..<90).map { i in
        let t = base + Int64(batch * 90 + i) * 29_000
        switch i % 5 {
        case 0: return event(at: t, app: "app-1", owner: "bob", user: "bob", status: 404, latencyUs: Int64(100 + i * 31))
        case 1: return event(at: t, api: "Pets", context: "/pets", creator: "carol", app: "app-1", owner: "bob", user: "bob", status: 500, fault: true)
        case 2: return event(at: t, api: "Pets", context: "/pets", creator: "carol", app: "app-2", owner: "dave", user: "dave", latencyUs: 9_000)
        case 3: return event(at: t, api: "Other", context: "/other", tenant: "acme.com", creator: "erin", app: "app-3", owner: "frank", user: "frank",
                             status: 429, throttled: "SUBSCRIPTION_LIMIT_EXCEEDED")
        default:
            // An acme.com application calling a carbon.super API.
            var e = event(at: t, app: "app-4", owner: "gina", user: "gina", resource: "/other-items")
            e.userTenantDomain = "acme.com"
            return e
        }
    }
}

@Suite struct ApplicationRowsTests {
    /// The rows' counts per application key, for comparing two row sets.
    func totals(_ rows: [UsageSummary]) -> [String: [UInt64]] {
        var out: [String: [UInt64]] = [:]
        for row in rows {
            let key = "\(row.granularity) \(row.bucketStartUnixMs) \(row.tenantDomain) \(row.applicationTenantDomain) \(row.applicationId)"
            let values = [row.requestCount, row.successCount, row.faultCount, row.throttledCount, row.clientErrorCount, row.serverErrorCount,
                          row.requestBytesSum, row.responseBytesSum, UInt64(row.responseTimeSumMs), row.responseLatency?.count ?? 0,
                          row.backendLatency?.count ?? 0, row.throttledReasons.map(\.count).reduce(0, +)]
            out[key] = zip(out[key] ?? Array(repeating: 0, count: values.count), values).map { $0 + $1 }
        }
        return out
    }

    @Test func perApplicationRowsAddUpToTheDetailedRowsAtEveryGranularity() async throws {
        try await withStatdb { statdb in
            let ingest = UsageIngest(statdb: statdb)
            for batch in 0..<4 { _ = try await ingest.submit(gateway: "gw", epoch: 1, sequence: UInt64(batch + 1), events: mixedEvents(batch: batch)) }
            try await ingest.rollUp(before: .max)
            for granularity in [BucketGranularity.minute, .hour, .day] {
                let detailed = try rows(statdb, granularity, .detailed)
                let perApplication = try rows(statdb, granularity, .perApplication)
                #expect(perApplication.map(\.requestCount).reduce(0, +) == 360)
                #expect(totals(perApplication) == totals(detailed))
                #expect(totals(perApplication) == totals(UsageRollup.applicationRows(of: detailed)))
                // One row per bucket, API tenant and application; no API named, the application's owner kept.
                #expect(Set(perApplication.map(StatisticsDatabase.applicationSummaryKey)).count == perApplication.count)
                #expect(perApplication.allSatisfy { $0.apiName.isEmpty && $0.apiContext.isEmpty && $0.resource.isEmpty && !$0.applicationOwner.isEmpty })
            }
            let days = try rows(statdb, .day, .perApplication)
            #expect(Set(days.map { "\($0.applicationTenantDomain)/\($0.applicationId)@\($0.tenantDomain)" })
                == ["carbon.super/app-1@carbon.super", "carbon.super/app-2@carbon.super", "acme.com/app-3@acme.com", "acme.com/app-4@carbon.super"])
        }
    }

    @Test func queriesByApplicationAnswerAlikeFromEitherRowSetInEveryScope() async throws {
        try await withStatdb { statdb in
            let ingest = UsageIngest(statdb: statdb)
            for batch in 0..<4 { _ = try await ingest.submit(gateway: "gw", epoch: 1, sequence: UInt64(batch + 1), events: mixedEvents(batch: batch)) }
            let scopes: [UsageScope] = [
                .everything(tenant: nil), .everything(tenant: "acme.com"),
                UsageScope(tenant: "carbon.super", username: "root", administrator: true, provider: false, consumer: false),
                UsageScope(tenant: "acme.com", username: "root", administrator: true, provider: false, consumer: false),
                UsageScope(tenant: "carbon.super", username: "bob", administrator: false, provider: false, consumer: true),
                UsageScope(tenant: "acme.com", username: "gina", administrator: false, provider: false, consumer: true),
                UsageScope(tenant: "carbon.super", username: "alice", administrator: false, provider: true, consumer: false),
                UsageScope(tenant: "carbon.super", username: "mallory", administrator: false, provider: false, consumer: true),
            ]
            let requests: [QueryUsageRequest] = [
                QueryUsageRequest(startUnixMs: base, endUnixMs: base + 4 * 3_600_000, groupBy: [.application], orderBy: .requests, limit: 3),
                QueryUsageRequest(startUnixMs: base + 1_000, endUnixMs: base + 3 * 3_600_000 + 17_000, groupBy: [.application, .tenant], mergeBuckets: true),
                QueryUsageRequest(granularity: .minute, startUnixMs: base, endUnixMs: base + 3_600_000, groupBy: [.application]),
                QueryUsageRequest(granularity: .hour, startUnixMs: base, endUnixMs: base + 4 * 3_600_000, applicationId: "app-1"),
                QueryUsageRequest(startUnixMs: base, endUnixMs: base + 4 * 3_600_000, orderBy: .errors),
            ]
            let engine = UsageQueryEngine(statdb: statdb)
            var answered = 0
            for scope in scopes {
                for request in requests {
                    let fromApplicationRows = try engine.run(request, scope: scope, nowUnixMs: base + 5 * 3_600_000)
                    // Marked as not yet backfilled, the same query reads the detailed rows.
                    try await statdb.database.write { try statdb.setApplicationRowsPending(true, in: &$0) }
                    let fromDetailedRows = try engine.run(request, scope: scope, nowUnixMs: base + 5 * 3_600_000)
                    try await statdb.database.write { try statdb.setApplicationRowsPending(false, in: &$0) }
                    #expect(fromApplicationRows.rows == fromDetailedRows.rows, "\(scope) \(request)")
                    answered += fromApplicationRows.rows.count
                }
            }
            #expect(answered > 0)
            // What each caller sees of the applications.
            let top = requests[0]
            func applications(_ scope: UsageScope) throws -> [String] {
                try engine.run(top, scope: scope, nowUnixMs: base + 5 * 3_600_000).rows.map(\.applicationId)
            }
            #expect(try Set(applications(scopes[2])) == ["app-1", "app-2", "app-4"], "carbon.super's APIs, and its applications")
            #expect(try Set(applications(scopes[3])) == ["app-3", "app-4"], "acme.com's API, and its applications")
            #expect(try applications(scopes[4]) == ["app-1"])
            #expect(try applications(scopes[5]) == ["app-4"])
            #expect(try applications(scopes[7]).isEmpty)
            // The top 3 of 4 are the first 3 of all 4 ranked.
            var everyApplication = top
            everyApplication.limit = 0
            let ranked = try engine.run(everyApplication, scope: scopes[0], nowUnixMs: base + 5 * 3_600_000).rows
            #expect(ranked.count == 4)
            #expect(Array(ranked.prefix(3)) == (try engine.run(top, scope: scopes[0], nowUnixMs: base + 5 * 3_600_000).rows))
            #expect(ranked.map(\.requestCount) == ranked.map(\.requestCount).sorted(by: >))
            let bob = try engine.run(top, scope: scopes[4], nowUnixMs: base + 5 * 3_600_000).rows
            #expect(bob.first?.requestCount == 144 && bob.first?.applicationOwner == "bob")
        }
    }

    @Test func aSchema2StatdbIsMarkedAndAnsweredFromTheDetailedRowsUntilBackfilled() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-analytics-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            // Closed at the end of this scope, before the upgrade reopens it.
            let statdb = try StatisticsDatabase.open(in: path)
            // As schema 2 left it: detailed rows, no per-application rows.
            var delta = BatchDelta()
            for batch in 0..<2 { for event in mixedEvents(batch: batch) { delta.add(event) } }
            let written = delta
            try await statdb.database.write { txn in
                // Every minute written with its hour and day, and no roll-up watermark.
                try statdb.setRollupWatermark(.max, in: &txn)
                _ = try UsageIngest.write(written, statdb: statdb, memos: .init(), in: &txn)
                try statdb.database.setMetaValue([], for: "usage_summaries.rollup_watermark", in: &txn)
                try statdb.applicationSummaries.clear(in: &txn)
                try statdb.tenantSummaries.clear(in: &txn)
                try statdb.database.setMetaValue(withUnsafeBytes(of: UInt64(2).bigEndian, Array.init), for: "schema_version", in: &txn)
            }
        }
        let statdb = try StatisticsDatabase.open(in: path, nowUnixMs: base + 6 * 3_600_000 + 5)
        // Its rows are complete at every granularity: the roll-up starts after them.
        #expect(try statdb.database.read { try statdb.rollupWatermark(in: $0) } == base + 6 * 3_600_000 + 60_000)
        #expect(try statdb.database.storedVersion() == StatisticsDatabase.schema.version)
        #expect(try statdb.database.read { try statdb.applicationRowsPending(in: $0) })
        let top = QueryUsageRequest(startUnixMs: base, endUnixMs: base + 4 * 3_600_000, groupBy: [.application], orderBy: .requests, limit: 10)
        let engine = UsageQueryEngine(statdb: statdb)
        let before = try engine.run(top, scope: .everything(tenant: nil), nowUnixMs: base + 5 * 3_600_000).rows
        #expect(before.map(\.requestCount).reduce(0, +) == 180, "answered from the detailed rows")
        try await SummaryRowsBackfill(statdb: statdb, target: .perApplication).run()
        #expect(try statdb.database.read { try statdb.applicationRowsPending(in: $0) } == false)
        #expect(try engine.run(top, scope: .everything(tenant: nil), nowUnixMs: base + 5 * 3_600_000).rows == before)
        #expect(try rows(statdb, .day, .perApplication).map(\.requestCount).reduce(0, +) == 180)
        // The per-tenant rows likewise: a tenant's series from the per-API rows until built.
        #expect(try statdb.database.read { try statdb.tenantRowsPending(in: $0) })
        let series = QueryUsageRequest(granularity: .hour, startUnixMs: base, endUnixMs: base + 4 * 3_600_000, groupBy: [.tenant])
        let fromAPIRows = try engine.run(series, scope: .everything(tenant: nil), nowUnixMs: base + 5 * 3_600_000).rows
        #expect(fromAPIRows.map(\.requestCount).reduce(0, +) == 180)
        #expect(try await SummaryRowsBackfill(statdb: statdb, target: .perTenant).run() > 0)
        #expect(try engine.run(series, scope: .everything(tenant: nil), nowUnixMs: base + 5 * 3_600_000).rows == fromAPIRows)
    }

    @Test func tenantRowsAddUpToTheAPIRowsAndAnswerAsTheyDo() async throws {
        try await withStatdb { statdb in
            let ingest = UsageIngest(statdb: statdb)
            for batch in 0..<4 { _ = try await ingest.submit(gateway: "gw", epoch: 1, sequence: UInt64(batch + 1), events: mixedEvents(batch: batch)) }
            try await ingest.rollUp(before: base + 2 * 3_600_000)
            for granularity in [BucketGranularity.minute, .hour, .day, .week] {
                let perTenant = try rows(statdb, granularity, .perTenant)
                #expect(totals(perTenant) == totals(UsageRollup.tenantRows(of: try rows(statdb, granularity, .perAPI))), "\(granularity)")
                #expect(perTenant.allSatisfy { $0.apiName.isEmpty && $0.apiContext.isEmpty && $0.applicationId.isEmpty && $0.applicationOwner.isEmpty })
            }
            #expect(try rows(statdb, .minute, .perTenant).map(\.requestCount).reduce(0, +) == 360)
            let requests = [
                QueryUsageRequest(granularity: .hour, startUnixMs: base, endUnixMs: base + 4 * 3_600_000),
                QueryUsageRequest(granularity: .day, startUnixMs: base - 86_400_000, endUnixMs: base + 86_400_000, groupBy: [.tenant]),
                QueryUsageRequest(startUnixMs: base + 1_000, endUnixMs: base + 3 * 3_600_000, groupBy: [.tenant], mergeBuckets: true),
                QueryUsageRequest(startUnixMs: base - 20 * 86_400_000, endUnixMs: base + 86_400_000, mergeBuckets: true, tenantDomain: "acme.com"),
            ]
            let scopes: [UsageScope] = [.everything(tenant: nil), .everything(tenant: "acme.com"),
                                        UsageScope(tenant: "carbon.super", username: "root", administrator: true, provider: false, consumer: false),
                                        UsageScope(tenant: "acme.com", username: "root", administrator: true, provider: false, consumer: false)]
            let engine = UsageQueryEngine(statdb: statdb)
            var answered = 0
            for scope in scopes {
                for request in requests {
                    guard !(scope.tenant != nil && !request.tenantDomain.isEmpty) else { continue }
                    let fromTenantRows = try engine.run(request, scope: scope, nowUnixMs: base + 5 * 3_600_000)
                    // Marked as not yet built, the same query reads the per-API rows.
                    try await statdb.database.write { try statdb.setTenantRowsPending(true, in: &$0) }
                    let fromAPIRows = try engine.run(request, scope: scope, nowUnixMs: base + 5 * 3_600_000)
                    try await statdb.database.write { try statdb.setTenantRowsPending(false, in: &$0) }
                    #expect(fromTenantRows.rows == fromAPIRows.rows, "\(scope) \(request)")
                    answered += fromTenantRows.rows.count
                }
            }
            #expect(answered > 0)
            let written = try [BucketGranularity.minute, .hour, .day, .week].map { try totals(rows(statdb, $0, .perTenant)) }
            // The tenant rows are what those queries read: without them, nothing.
            try await statdb.database.write { try statdb.tenantSummaries.clear(in: &$0) }
            #expect(try engine.run(requests[0], scope: scopes[0], nowUnixMs: base + 5 * 3_600_000).rows.isEmpty)
            // Rebuilt from the per-API rows: the same rows.
            try await statdb.database.write { try statdb.setTenantRowsPending(true, in: &$0) }
            #expect(try await SummaryRowsBackfill(statdb: statdb, target: .perTenant, rowsPerTransaction: 2).run() > 0)
            #expect(try [BucketGranularity.minute, .hour, .day, .week].map { try totals(rows(statdb, $0, .perTenant)) } == written)
        }
    }

    @Test func backfillRebuildsTheApplicationRowsOfAnOlderStatdbExactly() async throws {
        try await withStatdb { statdb in
            let ingest = UsageIngest(statdb: statdb)
            for batch in 0..<4 { _ = try await ingest.submit(gateway: "gw", epoch: 1, sequence: UInt64(batch + 1), events: mixedEvents(batch: batch)) }
            try await ingest.rollUp(before: .max)
            let written = try [BucketGranularity.minute, .hour, .day].map { try totals(rows(statdb, $0, .perApplication)) }
            // As a statdb from before the per-application rows: none, and marked.
            try await statdb.database.write { txn in
                try statdb.applicationSummaries.clear(in: &txn)
                try statdb.setApplicationRowsPending(true, in: &txn)
            }
            // Batches arriving before the backfill add to rows it then rebuilds.
            _ = try await ingest.submit(gateway: "gw", epoch: 1, sequence: 5, events: mixedEvents(batch: 0))
            let built = try await SummaryRowsBackfill(statdb: statdb, target: .perApplication, rowsPerTransaction: 3).run()
            #expect(built > 0)
            #expect(try statdb.database.read { try statdb.applicationRowsPending(in: $0) } == false)
            for (index, granularity) in [BucketGranularity.minute, .hour, .day].enumerated() {
                let perApplication = try rows(statdb, granularity, .perApplication)
                #expect(totals(perApplication) == totals(try rows(statdb, granularity, .detailed)))
                #expect(perApplication.map(\.requestCount).reduce(0, +) == 450)
                #expect(written[index].keys.sorted() == totals(perApplication).keys.sorted())
            }
            // Finished: nothing more to do.
            #expect(try await SummaryRowsBackfill(statdb: statdb, target: .perApplication).run() == 0)
        }
    }
}

@Suite struct QueryTests {
    static func user(_ name: String, tenant: String = "carbon.super", permissions: [String]) -> Caller {
        .user(UserPrincipal(username: name, tenant: tenant, roles: [], permissions: permissions, sessionID: nil, sessionExpiresAtUnixMs: 0))
    }

    func load(_ statdb: StatisticsDatabase) async throws {
        let ingest = UsageIngest(statdb: statdb)
        var events: [UsageEvent] = []
        for minute in 0..<120 {
            let t = base + Int64(minute) * 60_000
            events.append(event(at: t, latencyUs: Int64(1000 + minute * 10)))
            events.append(event(at: t, api: "Pets", context: "/pets", creator: "carol", app: "app-2", owner: "dave", user: "dave", status: 500, fault: true))
            events.append(event(at: t, api: "Other", context: "/other", tenant: "acme.com", creator: "erin", app: "app-3", owner: "frank", user: "frank"))
        }
        _ = try await ingest.submit(gateway: "gw", epoch: 1, sequence: 1, events: events)
    }

    func query(_ statdb: StatisticsDatabase, _ caller: Caller, tenant: String? = nil, _ change: (inout QueryUsageRequest) -> Void = { _ in }) throws -> QueryUsageResponse {
        var request = QueryUsageRequest(startUnixMs: base, endUnixMs: base + 2 * 3_600_000, groupBy: [.api], mergeBuckets: true)
        change(&request)
        let scope = try UsageScope.of(caller, actingIn: tenant, requestedTenant: request.tenantDomain)
        return try UsageQueryEngine(statdb: statdb).run(request, scope: scope, nowUnixMs: base + 3 * 3_600_000)
    }

    @Test func eachCallerSeesOnlyWhatIsTheirs() async throws {
        try await withStatdb { statdb in
            try await load(statdb)
            let alice = try query(statdb, Self.user("alice", permissions: ["/permission/admin/manage/api/create"]))
            #expect(alice.rows.map(\.apiName) == ["Menu"])
            #expect(alice.rows.first?.requestCount == 120)
            let carol = try query(statdb, Self.user("carol", permissions: ["/permission/admin/manage/api/publish"]))
            #expect(carol.rows.map(\.apiName) == ["Pets"])
            let bob = try query(statdb, Self.user("bob", permissions: ["/permission/admin/manage/api/subscribe"])) { $0.groupBy = [.application] }
            #expect(bob.rows.map(\.applicationId) == ["app-1"])
            let nobody = try query(statdb, Self.user("mallory", permissions: ["/permission/admin/manage/api/subscribe"]))
            #expect(nobody.rows.isEmpty)
            let admin = try query(statdb, Self.user("root", permissions: ["/permission/admin"]))
            #expect(Set(admin.rows.map(\.apiName)) == ["Menu", "Pets"])
            let acme = try query(statdb, Self.user("root", tenant: "acme.com", permissions: ["/permission/admin"]))
            #expect(acme.rows.map(\.apiName) == ["Other"])
            // A tenant's administrator cannot name another tenant.
            #expect(throws: RPCError.self) {
                try query(statdb, Self.user("root", tenant: "acme.com", permissions: ["/permission/admin"])) { $0.tenantDomain = "carbon.super" }
            }
            let operatorView = try query(statdb, .certificateHolder(name: "ops"))
            #expect(Set(operatorView.rows.map(\.apiName)) == ["Menu", "Pets", "Other"])
            #expect(throws: RPCError.self) { try query(statdb, .node(id: "gw-1", roles: ["gateway"])) }
        }
    }

    @Test func topNTimeSeriesAndMixedGranularitiesAgree() async throws {
        try await withStatdb { statdb in
            try await load(statdb)
            let ops = Caller.certificateHolder(name: "ops")
            let top = try query(statdb, ops) { $0.orderBy = .requests; $0.limit = 2 }
            #expect(top.rows.count == 2)
            let faulty = try query(statdb, ops) { $0.orderBy = .errors; $0.groupBy = [.api, .resource] }
            #expect(faulty.rows.map(\.apiName) == ["Pets"])
            // 10:30 to 12:00: minutes, then an hour's rows; the same totals as minutes alone.
            let mixed = try query(statdb, ops) { $0.startUnixMs = base + 30 * 60_000; $0.endUnixMs = base + 120 * 60_000; $0.groupBy = [] }
            let minutes = try query(statdb, ops) {
                $0.startUnixMs = base + 30 * 60_000; $0.endUnixMs = base + 120 * 60_000; $0.groupBy = []; $0.granularity = .minute
            }
            #expect(mixed.granularity == .unspecified)
            #expect(mixed.rows.first?.requestCount == 3 * 90)
            #expect(minutes.rows.first?.requestCount == 3 * 90)
            let series = try query(statdb, ops) { $0.mergeBuckets = false; $0.groupBy = []; $0.granularity = .hour }
            #expect(series.rows.map(\.requestCount) == [180, 180])
            #expect(series.rows.map(\.bucketStartUnixMs) == [base, base + 3_600_000])
            // Ranked by latency, every group's histograms count (a page's rows merge theirs only when answered).
            let slowest = try query(statdb, ops) { $0.orderBy = .latencyP95; $0.groupBy = [.api, .resource]; $0.limit = 5 }
            #expect(!slowest.rows.isEmpty && slowest.rows.allSatisfy { $0.responseP95Us > 0 })
            #expect(slowest.rows.map(\.responseP95Us) == slowest.rows.map(\.responseP95Us).sorted(by: >))
            let latency = try query(statdb, ops) { $0.apiName = "Menu" }
            let p99 = Double(latency.rows.first?.responseP99Us ?? 0)
            #expect(abs(p99 - 2180) / 2180 <= LatencyBuckets.relativeError, "\(p99)")
            let last = try query(statdb, Self.user("alice", permissions: ["/permission/admin/manage/api/create"])) { $0.includeLastAccess = true }
            #expect(last.lastAccess.map(\.apiName) == ["Menu"])
            #expect(last.lastAccess.first?.lastAccessUnixMs == base + 119 * 60_000)
        }
    }
}

@Suite struct RollupTests {
    func totals(_ statdb: StatisticsDatabase, _ granularity: BucketGranularity) throws -> [UInt64] {
        try [StatisticsDatabase.Rows.detailed, .perAPI, .perApplication].map { table in
            try rows(statdb, granularity, table).map(\.requestCount).reduce(0, +)
        }
    }

    @Test func queriesAnswerAlikeBeforeDuringAndAfterTheRollupAndLateCallsCountOnce() async throws {
        try await withStatdb { statdb in
            try await QueryTests().load(statdb)
            let requests: [QueryUsageRequest] = [
                QueryUsageRequest(granularity: .hour, startUnixMs: base, endUnixMs: base + 3 * 3_600_000, groupBy: [.api]),
                QueryUsageRequest(granularity: .day, startUnixMs: base - 86_400_000, endUnixMs: base + 86_400_000, groupBy: [.application]),
                QueryUsageRequest(startUnixMs: base + 30 * 60_000, endUnixMs: base + 2 * 3_600_000, groupBy: [.api, .resource], mergeBuckets: true),
                QueryUsageRequest(startUnixMs: base - 10 * 86_400_000, endUnixMs: base + 86_400_000, groupBy: [.application], orderBy: .requests, limit: 2),
                QueryUsageRequest(granularity: .hour, startUnixMs: base, endUnixMs: base + 3 * 3_600_000, apiContext: "/pets"),
                QueryUsageRequest(granularity: .minute, startUnixMs: base, endUnixMs: base + 3 * 3_600_000, groupBy: [.statusClass]),
                QueryUsageRequest(granularity: .week, startUnixMs: base - 30 * 86_400_000, endUnixMs: base + 86_400_000, groupBy: [.api]),
                QueryUsageRequest(startUnixMs: base - 30 * 86_400_000, endUnixMs: base + 86_400_000, groupBy: [.api], orderBy: .requests, limit: 2),
            ]
            let engine = UsageQueryEngine(statdb: statdb)
            let scopes: [UsageScope] = [.everything(tenant: nil),
                                        UsageScope(tenant: "carbon.super", username: "root", administrator: true, provider: false, consumer: false)]
            func answers() throws -> [[UsageSummary]] {
                try scopes.flatMap { scope in try requests.map { try engine.run($0, scope: scope, nowUnixMs: base + 3 * 3_600_000).rows } }
            }
            // Nothing rolled up: hours and days are read from the minutes alone.
            #expect(try totals(statdb, .hour) == [0, 0, 0])
            let before = try answers()
            #expect(before[0].map(\.requestCount).reduce(0, +) == 360)
            // Half rolled up: the first 45 minutes in their hour and day rows, the rest read as minutes.
            let ingest = UsageIngest(statdb: statdb)
            #expect(try await ingest.rollUp(before: base + 45 * 60_000) == 45)
            #expect(try totals(statdb, .hour) == [135, 135, 135])
            #expect(try answers() == before)
            // All rolled up: hours and days equal the minutes in every table.
            #expect(try await ingest.rollUp(before: base + 3 * 3_600_000) == 75)
            #expect(try await ingest.rollUp(before: base + 3 * 3_600_000) == 0, "nothing left to roll")
            #expect(try totals(statdb, .hour) == [360, 360, 360])
            #expect(try totals(statdb, .day) == [360, 360, 360])
            #expect(try totals(statdb, .week) == [360, 360, 360])
            #expect(try answers() == before)
            // A late call, for a minute already rolled: counted at every granularity at once, nowhere twice.
            _ = try await ingest.submit(gateway: "late", epoch: 1, sequence: 1, events: [event(at: base + 5 * 60_000 + 7)])
            #expect(try totals(statdb, .minute) == [361, 361, 361])
            #expect(try totals(statdb, .hour) == [361, 361, 361])
            #expect(try totals(statdb, .day) == [361, 361, 361])
            try await ingest.rollUp(before: base + 4 * 3_600_000)
            #expect(try totals(statdb, .hour) == [361, 361, 361])
            let after = try engine.run(requests[0], scope: scopes[0], nowUnixMs: base + 3 * 3_600_000).rows
            #expect(after.map(\.requestCount).reduce(0, +) == 361)
        }
    }
}

extension RollupTests {
    @Test func weeksStartOnMondayUTC() {
        // Saturday 2026-11-28 10:00 UTC is in the week of Monday 2026-11-23.
        #expect(UsageTime.bucketStart(base, .week) == 1_795_392_000_000)
        #expect(UsageTime.bucketStart(1_795_392_000_000, .week) == 1_795_392_000_000)
        #expect(UsageTime.bucketStart(1_795_392_000_000 - 1, .week) == 1_795_392_000_000 - 7 * 86_400_000)
        #expect(UsageTime.bucketStart(0, .week) == -3 * 86_400_000, "1970-01-01 was a Thursday")
    }

    @Test func weeksBeforeTheFirstWeekRowsAreReadAsTheirDays() async throws {
        try await withStatdb { statdb in
            // As a statdb upgraded from version 3 on base's Monday: no week rows for the weeks before.
            let monday = UsageTime.bucketStart(base, .week)
            try await statdb.database.write { try statdb.setWeekRowsSince(monday, in: &$0) }
            let ingest = UsageIngest(statdb: statdb)
            // One call a day at noon for 24 days up to base's day, then rolled up.
            let days = (0..<24).map { UsageTime.bucketStart(base, .day) - Int64($0) * 86_400_000 + 12 * 3_600_000 }
            _ = try await ingest.submit(gateway: "gw", epoch: 1, sequence: 1, events: days.map { event(at: $0) })
            try await ingest.rollUp(before: .max)
            // Week rows only from the first week on.
            let weekRows = try rows(statdb, .week, .detailed)
            #expect(weekRows.allSatisfy { $0.bucketStartUnixMs >= monday })
            #expect(weekRows.map(\.requestCount).reduce(0, +) == UInt64(days.filter { $0 >= monday }.count))
            let engine = UsageQueryEngine(statdb: statdb)
            let range = (start: base - 40 * 86_400_000, end: base + 86_400_000)
            let weekly = try engine.run(QueryUsageRequest(granularity: .week, startUnixMs: range.start, endUnixMs: range.end),
                                        scope: .everything(tenant: nil), nowUnixMs: base + 86_400_000)
            var expected: [Int64: UInt64] = [:]
            for day in days { expected[UsageTime.bucketStart(day, .week), default: 0] += 1 }
            let alignedStart = UsageTime.bucketStart(range.start - 1, .week) + 7 * 86_400_000
            expected = expected.filter { $0.key >= alignedStart }
            #expect(Dictionary(uniqueKeysWithValues: weekly.rows.map { ($0.bucketStartUnixMs, $0.requestCount) }) == expected)
            #expect(weekly.rows.allSatisfy { $0.granularity == .week })
            let merged = try engine.run(QueryUsageRequest(startUnixMs: range.start, endUnixMs: range.end, mergeBuckets: true),
                                        scope: .everything(tenant: nil), nowUnixMs: base + 86_400_000)
            #expect(merged.rows.first?.requestCount == 24)
        }
    }
}

@Suite struct ChartTests {
    @Test func barsScaleToTheLargestValueAndFitTheWidth() {
        let points = (0..<10).map { BarChart.Point(label: "t\($0)", value: Double($0)) }
        let lines = BarChart(title: "requests", points: points, width: 40, height: 4).render()
        #expect(lines.first == "requests")
        #expect(lines.allSatisfy { $0.count <= 40 }, "\(lines)")
        #expect(lines[1].hasPrefix("9 ┤"))
        #expect(lines[1].hasSuffix("█"))
        #expect(lines[4].hasPrefix("0 ┼"))
        #expect(!lines.joined().contains("\u{1B}"), "no colour unless asked")
        #expect(lines.last?.contains("t0") == true && lines.last?.contains("t9") == true)
    }

    @Test func moreBucketsThanColumnsAreCombined() {
        let points = (0..<1000).map { BarChart.Point(label: "\($0)", value: 1) }
        let sum = BarChart(title: "x", points: points, width: 60, height: 2, combine: .sum).render()
        #expect(sum.allSatisfy { $0.count <= 60 }, "\(sum)")
        #expect(sum[1].hasPrefix("18 ┤"), "18 buckets a column: \(sum[1])")
        let max = BarChart(title: "x", points: points, width: 60, height: 2, combine: .max).render()
        #expect(max[1].hasPrefix("1 ┤"))
    }

    @Test func tinyValuesStayVisibleAndColourIsOptional() {
        let lines = BarChart(title: "x", points: [.init(label: "a", value: 1000), .init(label: "b", value: 1)], width: 30, height: 3, colour: true).render()
        #expect(lines[3].contains("▁"))
        #expect(lines[1].contains("\u{1B}[36m"))
        #expect(chartWidth(environment: ["COLUMNS": "120"], terminalColumns: 90) == 120)
        #expect(chartWidth(environment: [:], terminalColumns: 90) == 90)
        #expect(chartWidth(environment: [:], terminalColumns: nil) == 80)
        #expect(BarChart(title: "x", points: [], width: 30).render() == ["x", "(no data)"])
    }
}
