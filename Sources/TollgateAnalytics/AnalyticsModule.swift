import FoundationEssentials
import Synchronization
public import Logging
public import RoleCore
public import RPCCore
public import ServiceLifecycle
public import TollgateProto
public import TollgateServices
public import TollgateStorage

/// The analytics role: gateways' usage batches applied to statdb exactly
/// once, summarized per minute, hour and day, pruned by retention, and
/// queried (docs/analytics.md). Publisher and store nodes assemble the same
/// module to answer `QueryUsage` from the host's statdb; only a node with
/// the analytics role ingests.
public struct AnalyticsModule: RoleModule {
    public static let name = "analytics"
    public static let rpcServices = [AnalyticsServiceDescriptor.serviceName]
    public static let databases: Set<LogicalDatabaseName> = [.statdb]
    public static let configSection: ConfigSectionSpec? = ConfigSectionSpec(name: "analytics", keys: [
        .init("minute_retention_hours", .integer(1...8_760)),
        .init("hour_retention_days", .integer(1...3_650)),
        .init("day_retention_days", .integer(1...36_500)),
        .init("prune_interval_seconds", .integer(1...86_400)),
        .init("prune_batch_rows", .integer(10...1_000_000)),
        .init("rollup_delay_seconds", .integer(0...3_600)),
    ])

    public let statdb: StatisticsDatabase
    /// nil on a node without the analytics role (publisher, store): it only answers queries.
    public let ingest: UsageIngest?
    public let pruner: UsagePruner?
    public let queries: UsageQueryEngine
    let logger: Logger
    let roles: [Role]

    public init(context: NodeContext) async throws {
        statdb = try context.require(context.databases.statdb, .statdb, for: Self.name)
        queries = UsageQueryEngine(statdb: statdb)
        logger = context.logger
        roles = context.roles
        if context.roles.contains(.analytics) {
            let logger = context.logger
            ingest = UsageIngest(statdb: statdb) { gap in logger.warning("usage batches missing: \(gap): the gateway numbered batches that never arrived") }
            pruner = UsagePruner(statdb: statdb, retention: Self.retention(context.section("analytics")))
        } else {
            ingest = nil
            pruner = nil
        }
    }

    static func retention(_ section: ConfigSection) -> UsageRetention {
        UsageRetention(minuteMs: Int64(section.integer("minute_retention_hours") ?? 48) * 3_600_000,
                       hourMs: Int64(section.integer("hour_retention_days") ?? 90) * 86_400_000,
                       dayMs: Int64(section.integer("day_retention_days") ?? 1095) * 86_400_000,
                       intervalMs: Int64(section.integer("prune_interval_seconds") ?? 60) * 1000,
                       batchRows: section.integer("prune_batch_rows") ?? 1000,
                       rollupDelayMs: Int64(section.integer("rollup_delay_seconds") ?? 60) * 1000)
    }

    public var methods: [RPCMethodHandler] {
        AnalyticsRPCService(ingest: ingest, queries: queries, roles: roles.map(\.rawValue), logger: logger).methodHandlers
    }

    public var services: [any Service] {
        guard let pruner, let ingest else { return [] }
        return [PruningService(pruner: pruner, ingest: ingest, logger: logger)]
    }

    public func reload(_ section: ConfigSection) async throws -> [String] {
        pruner?.retention = Self.retention(section)
        return []
    }

    public var metricSamples: [MetricSample] {
        guard let ingest else { return [] }
        let counts = ingest.statistics
        func counter(_ name: String, _ help: String, _ value: UInt64) -> MetricSample {
            MetricSample(name: "tollgate_analytics_" + name, help: help, kind: .counter, value: Double(value))
        }
        return [
            counter("events_ingested_total", "Usage events counted into statdb (each once).", counts.events),
            counter("events_discarded_total", "Usage events without a timestamp, not counted.", counts.discardedEvents),
            counter("batches_total", "Usage batches acknowledged, duplicates included.", counts.batches),
            counter("duplicate_batches_total", "Usage batches found already applied (re-sent after a lost acknowledgement) and not counted again.",
                    counts.duplicateBatches),
            counter("commits_total", "statdb write transactions of usage batches (several batches share one).", counts.commits),
            counter("commit_failures_total", "statdb write transactions that failed; their batches were not acknowledged.", counts.failedCommits),
            counter("statdb_rows_written_total", "statdb summary rows added to or created by ingest commits.", counts.rowsWritten),
            counter("sequence_gaps_total", "Usage batches that skipped sequence numbers within their gateway's epoch (batches numbered that never arrived).", counts.gaps),
            counter("pruned_rows_total", "Summary rows deleted past their retention.", pruner?.prunedRows ?? 0),
            counter("rollups_total", "Minute buckets whose rows were added to their hour, day and week rows (one per minute with calls).", ingest.minutesRolledUp),
            MetricSample(name: "tollgate_analytics_rollup_lag_seconds",
                         help: "How far the roll-up of minutes into hours, days and weeks trails the clock (normally one to two minutes; queries stay exact meanwhile).",
                         kind: .gauge, value: rollupLagSeconds),
        ]
    }

    private var rollupLagSeconds: Double {
        guard let watermark = try? statdb.database.read({ try statdb.rollupWatermark(in: $0) }) else { return 0 }
        return max(0, Date().timeIntervalSince1970 - Double(watermark) / 1000)
    }
}

/// `tollgate.v1.AnalyticsService`.
public struct AnalyticsRPCService: AnalyticsServiceHandler {
    public let ingest: UsageIngest?
    public let queries: UsageQueryEngine
    public let roles: [String]
    /// More events than this in one batch is a broken gateway, not load.
    public static let maxBatchEvents = 100_000
    /// Batches a stream may have waiting for their commit before it stops reading.
    public static let maxInFlight = 256

    let logger: Logger

    public init(ingest: UsageIngest?, queries: UsageQueryEngine, roles: [String], logger: Logger = Logger(label: "tollgate.analytics")) {
        self.ingest = ingest
        self.queries = queries
        self.roles = roles
        self.logger = logger
    }

    /// A batch's summary rows as keys and counts (``BatchDelta/row(of:)``).
    /// A row that fails its checks, or would take the batch past
    /// ``maxBatchEvents`` calls, is left out and its calls counted as
    /// discarded, not the stream failed: the gateway would send the same
    /// batch again forever, and nothing behind it would count.
    static func checkedRows(of request: PublishUsageEventsRequest)
        -> (rows: [(key: SummaryKey, counts: UsageCounts)], refused: (rows: Int, calls: UInt64, reason: String?)) {
        var rows: [(key: SummaryKey, counts: UsageCounts)] = []
        rows.reserveCapacity(request.summaries.count)
        var calls = UInt64(min(request.events.count, maxBatchEvents))
        var refused: (rows: Int, calls: UInt64, reason: String?) = (0, 0, nil)
        for summary in request.summaries {
            do throws(UsageSummaryError) {
                guard let row = try BatchDelta.row(of: summary) else { continue }
                guard row.counts.requests <= UInt64(maxBatchEvents) - calls else {
                    throw UsageSummaryError(description: "the batch's rows count more than \(maxBatchEvents) calls")
                }
                calls += row.counts.requests
                rows.append(row)
            } catch {
                refused.rows += 1
                refused.calls &+= min(summary.requestCount, UInt64(maxBatchEvents))
                if refused.reason == nil { refused.reason = error.description }
            }
        }
        return (rows, refused)
    }

    public func publishUsageEvents(_ requests: RequestStream<PublishUsageEventsRequest>, writer: ResponseWriter<PublishUsageEventsResponse>,
                                   context: ServerCallContext) async throws {
        guard let ingest else {
            throw RPCError(.failedPrecondition, "this node (\(roles.joined(separator: ","))) reads statdb but does not ingest: list analytics nodes under the gateways' [peers] analytics")
        }
        let certified: String? = if case .node(let id, _)? = context.peer { id } else { nil }
        // Batches in flight when the node stops are not acknowledged: the
        // gateway sends them again and they are counted once.
        try await context.untilStopping {
            let (acks, continuation) = AsyncStream.makeStream(of: (@Sendable () async throws -> UsageIngest.Ack, UInt64, UInt64).self)
            try await withThrowingTaskGroup(of: Void.self) { group in
                let window = InFlightWindow(limit: Self.maxInFlight)
                group.addTask {
                    // A failed write must not leave the reader waiting for room.
                    defer { window.close() }
                    for await (wait, epoch, sequence) in acks {
                        let ack = try await wait()
                        window.release()
                        try await writer.write(PublishUsageEventsResponse(acceptedCount: ack.accepted, discardedCount: ack.discarded, sequence: sequence,
                                                                          epoch: epoch, duplicate: ack.duplicate, summariesCounted: true))
                    }
                }
                do {
                    for try await request in requests {
                        let gateway = certified ?? request.gatewayId
                        if let certified, !request.gatewayId.isEmpty, request.gatewayId != certified {
                            throw RPCError(.permissionDenied, "batch names gateway \(request.gatewayId) but the certificate is node \(certified)")
                        }
                        guard !gateway.isEmpty, request.sequence > 0 else {
                            throw RPCError(.invalidArgument, "every batch needs a gateway_id and a sequence from 1")
                        }
                        guard request.events.count <= Self.maxBatchEvents, request.summaries.count <= Self.maxBatchEvents else {
                            throw RPCError(.invalidArgument, "\(request.events.count) events and \(request.summaries.count) summaries in one batch; at most \(Self.maxBatchEvents) of each")
                        }
                        let (rows, refused) = Self.checkedRows(of: request)
                        if let reason = refused.reason {
                            logger.error("usage batch \(request.sequence) (epoch \(request.epoch)) of gateway \(gateway): \(refused.rows) summary rows discarded, \(refused.calls) calls not counted (tollgate_analytics_events_discarded_total): \(reason)")
                        }
                        await window.acquire()
                        let wait = ingest.enqueue(gateway: gateway, epoch: request.epoch, sequence: request.sequence, events: request.events, rows: rows,
                                                  discarded: refused.calls)
                        continuation.yield((wait, request.epoch, request.sequence))
                    }
                    continuation.finish()
                } catch {
                    continuation.finish()
                    throw error
                }
                try await group.waitForAll()
            }
        }
    }

    public func queryUsage(_ request: QueryUsageRequest, context: ServerCallContext) async throws -> QueryUsageResponse {
        let scope = try UsageScope.of(context.caller, actingIn: context.metadata["x-tenant"], requestedTenant: request.tenantDomain)
        return try queries.run(request, scope: scope, nowUnixMs: Int64(Date().timeIntervalSince1970 * 1000))
    }
}

/// Counts batches a stream has waiting; the reader waits while it is full.
final class InFlightWindow: Sendable {
    private let state: Mutex<(count: Int, waiters: [CheckedContinuation<Void, Never>], closed: Bool)>
    let limit: Int

    init(limit: Int) {
        self.limit = limit
        self.state = Mutex((0, [], false))
    }

    func close() {
        let waiters = state.withLock { state in
            state.closed = true
            let waiters = state.waiters
            state.waiters = []
            return waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func acquire() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let admitted = state.withLock { state -> Bool in
                if state.closed || state.count < limit {
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
