import Foundation
import Logging
import RoleCore
import RPCCore
import ServiceLifecycle
import Synchronization
import TollgateAnalytics
public import TollgateProto
import TollgateServices

/// One usage record per request, queued off the request path in a bounded
/// buffer. A full queue drops the newest record and counts it: the request
/// path never waits for analytics and memory never grows without bound.
public final class UsageQueue: Sendable {
    private struct State {
        var events: [UsageEvent] = []
        var head = 0
        var dropped: UInt64 = 0
        var shipped: UInt64 = 0
        var discarded: UInt64 = 0
        var waiter: CheckedContinuation<Void, Never>?
    }

    private let state = Mutex(State())
    public let capacity: Int

    public init(capacity: Int) {
        self.capacity = max(1, capacity)
    }

    /// Queues a record; false when the queue was full and it was dropped.
    /// The shipper is woken only when a whole batch is waiting: waking it per
    /// record would cost a thread wake-up on every request.
    @discardableResult
    public func enqueue(_ event: UsageEvent) -> Bool {
        let waiter: CheckedContinuation<Void, Never>? = state.withLock { state in
            guard state.events.count - state.head < capacity else {
                state.dropped += 1
                return nil
            }
            state.events.append(event)
            guard state.events.count - state.head >= wakeThreshold else { return nil }
            let waiter = state.waiter
            state.waiter = nil
            return waiter
        }
        waiter?.resume()
        return true
    }

    /// Records waiting before the shipper is woken early; otherwise it
    /// collects what is there at each tick.
    let wakeThreshold = 512

    /// Up to `max` records, oldest first; waits for a full batch, or
    /// `tick` at most, while fewer are queued.
    func takeBatch(max: Int, tick: Duration = .milliseconds(200)) async -> [UsageEvent] {
        while !Task.isCancelled {
            let batch: [UsageEvent]? = state.withLock { state in
                let available = state.events.count - state.head
                guard available > 0 else { return nil }
                let count = min(max, available)
                if state.head == 0 && count == state.events.count {
                    // Everything queued: the array itself, nothing copied.
                    let batch = state.events
                    state.events = []
                    state.events.reserveCapacity(max)
                    return batch
                }
                let batch = Array(state.events[state.head..<state.head + count])
                state.head += count
                // A short rest moves to the front now, so the next take is
                // usually the whole array; a long one waits for the head
                // to pass half of it.
                let rest = state.events.count - state.head
                if rest <= 64 || (state.head > 4096 && state.head * 2 > state.events.count) {
                    state.events.removeFirst(state.head)
                    state.head = 0
                }
                return batch
            }
            if let batch { return batch }
            // Sleep until a batch fills (enqueue resumes us) or the tick passes.
            await withTaskGroup(of: Void.self) { group in
                group.addTask { [self] in
                    await withTaskCancellationHandler {
                        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                            // A task cancelled before it got here has run its
                            // cancellation handler already: checked under the
                            // lock that handler takes, so the continuation is
                            // either never stored or found by the handler.
                            let ready = state.withLock { state in
                                if Task.isCancelled || state.events.count - state.head >= wakeThreshold { return true }
                                state.waiter = continuation
                                return false
                            }
                            if ready { continuation.resume() }
                        }
                    } onCancel: { [self] in
                        let waiter = state.withLock { state in
                            let waiter = state.waiter
                            state.waiter = nil
                            return waiter
                        }
                        waiter?.resume()
                    }
                }
                group.addTask { try? await Task.sleep(for: tick) }
                await group.next()
                group.cancelAll()
            }
        }
        return []
    }

    func recordShipped(_ count: Int) { state.withLock { $0.shipped += UInt64(count) } }
    func recordDiscarded(_ count: Int) { state.withLock { $0.discarded += UInt64(count) } }

    /// Takes what is queued now, without waiting (shutdown: into the spool).
    func takeAll() -> [UsageEvent] {
        state.withLock { state in
            let rest = Array(state.events[state.head...])
            state.events.removeAll()
            state.head = 0
            return rest
        }
    }

    public var statistics: (queued: Int, dropped: UInt64, shipped: UInt64, discarded: UInt64) {
        state.withLock { ($0.events.count - $0.head, $0.dropped, $0.shipped, $0.discarded) }
    }
}

/// How shipping goes, for the metrics: discarded events by reason, whether
/// an analytics node takes batches now, acknowledged batches.
final class UsageShipping: Sendable {
    struct State {
        var discarded: [String: UInt64] = [:]
        var connected = false
        var analytics = ""
        var acknowledgedBatches: UInt64 = 0
        var duplicateBatches: UInt64 = 0
        var lastOverflowLog: ContinuousClock.Instant?
        var overflowSinceLog: UInt64 = 0
        /// An analytics node acknowledged a batch without counting its summaries (logged once).
        var warnedUncountedSummaries = false
        /// Whether the last acknowledgement came from a node that counts
        /// summaries: only then are new batches folded (an older node
        /// would acknowledge folded calls without counting them).
        var foldBatches = false
    }
    let state = Mutex(State())

    /// Reasons always shown, at 0 until they happen.
    static let reasons = ["no_analytics", "queue_full", "spool_error", "spool_full"]

    func discarded(_ count: Int, reason: String) {
        state.withLock { $0.discarded[reason, default: 0] += UInt64(count) }
    }

    var snapshot: State { state.withLock { $0 } }
}

/// Drains the usage queue into analytics (docs/analytics.md, "Shipping"):
/// each batch is folded into minute rows, numbered and appended to the spool, streamed to an
/// analytics node over `PublishUsageEvents`, and forgotten once that node
/// acknowledges it (applied, or already applied). While no analytics node
/// answers, batches stay in the spool, up to its cap, and are sent in order
/// when one does; past the cap a batch is discarded, counted
/// (`tollgate_gateway_usage_events_discarded_total{reason="spool_full"}`)
/// and logged. With several analytics nodes the gateway uses the first that
/// answers and moves to the next when a stream fails or stalls. A gateway
/// with no analytics node configured discards its records, counted.
struct UsageShipper: Service {
    let queue: UsageQueue
    let batchSize: Int
    let logger: Logger
    let gatewayID: String
    let peers: (any PeerDirectory)?
    let spool: UsageSpool?
    let shipping: UsageShipping
    /// Batches sent and not yet acknowledged, at most.
    var window = 64
    /// A stream whose oldest batch waits longer than this for its
    /// acknowledgement is given up, and the next analytics node tried.
    var ackTimeout: Duration = .seconds(15)
    /// While every stream attempt fails, at most one log line per this.
    var failureLogInterval: Duration = .seconds(60)

    func run() async throws {
        let wakeup = Wakeup()
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await batch(wakeup) }
            if let spool {
                group.addTask { await send(spool, wakeup) }
                group.addTask {
                    await cancelWhenGracefulShutdown {
                        while !Task.isCancelled {
                            try? await Task.sleep(for: spool.syncInterval / 2)
                            spool.syncIfDue()
                        }
                    }
                }
            }
            await group.next()
            group.cancelAll()
        }
        // What is still queued goes to the spool, for the next run.
        let rest = queue.takeAll()
        var index = 0
        while index < rest.count {
            spoolBatch(Array(rest[index..<min(rest.count, index + batchSize)]), wakeup: nil)
            index += batchSize
        }
        spool?.close()
    }

    private var analyticsConfigured: Bool { !(peers?.transports(for: .analytics).isEmpty ?? true) }

    private func batch(_ wakeup: Wakeup) async {
        await cancelWhenGracefulShutdown {
            var warned = false
            while !Task.isCancelled {
                let batch = await queue.takeBatch(max: batchSize)
                guard !batch.isEmpty else { continue }
                guard spool != nil, analyticsConfigured else {
                    queue.recordDiscarded(batch.count)
                    shipping.discarded(batch.count, reason: "no_analytics")
                    if !warned {
                        warned = true
                        logger.notice("usage events are counted and discarded: no analytics node is configured under [peers] analytics (tollgate_gateway_usage_events_discarded_total{reason=\"no_analytics\"})")
                    }
                    continue
                }
                spoolBatch(batch, wakeup: wakeup)
            }
        }
    }

    /// A batch as it is shipped once an analytics node has said it counts
    /// summaries (until then, a message per call): its calls folded into minute rows by the
    /// rules analytics adds calls to statdb by. Most calls of a batch share
    /// a row (same minute, API, resource, application, user, status
    /// class), so a batch of 512 calls is usually a few rows: encoding,
    /// spooling, sending and counting a call each cost a gateway and its
    /// analytics node several times what the rows do. A call without a
    /// timestamp goes as it is, for analytics to report as discarded.
    static func shipped(_ batch: [UsageEvent]) -> (summaries: [UsageSummary], events: [UsageEvent]) {
        var delta = BatchDelta()
        var unstamped: [UsageEvent] = []
        for event in batch {
            if event.requestTimestampUnixMs > 0 { delta.addUnclipped(event) } else { unstamped.append(event) }
        }
        return (delta.summaries, unstamped)
    }

    private func spoolBatch(_ batch: [UsageEvent], wakeup: Wakeup?) {
        guard let spool, analyticsConfigured else { return }
        do {
            let fold = shipping.state.withLock { $0.foldBatches }
            let (summaries, events) = fold ? Self.shipped(batch) : ([], batch)
            let appended = try spool.append(events: batch.count) { epoch, sequence in
                try PublishUsageEventsRequest(events: events, gatewayId: gatewayID, epoch: epoch, sequence: sequence, summaries: summaries).serializedBytes()
            }
            guard appended != nil else {
                queue.recordDiscarded(batch.count)
                shipping.discarded(batch.count, reason: "spool_full")
                logOverflow(batch.count, spool: spool)
                return
            }
            wakeup?.signal()
        } catch {
            queue.recordDiscarded(batch.count)
            shipping.discarded(batch.count, reason: "spool_error")
            logger.error("usage batch of \(batch.count) events discarded: the spool cannot be written: \(error)")
        }
    }

    /// Logs overflow at once, then at most once a minute with the count since.
    private func logOverflow(_ count: Int, spool: UsageSpool) {
        let now = ContinuousClock.now
        let report: UInt64? = shipping.state.withLock { state in
            state.overflowSinceLog += UInt64(count)
            if let last = state.lastOverflowLog, now - last < .seconds(60) { return nil }
            state.lastOverflowLog = now
            defer { state.overflowSinceLog = 0 }
            return state.overflowSinceLog
        }
        if let report {
            logger.warning("usage spool full (\(spool.pendingBytes) of \(spool.maxBytes) bytes unacknowledged; no analytics node takes batches): discarded \(report) events (tollgate_gateway_usage_events_discarded_total{reason=\"spool_full\"})")
        }
    }

    private func send(_ spool: UsageSpool, _ wakeup: Wakeup) async {
        await cancelWhenGracefulShutdown {
            var next = 0
            var failures = 0
            // While every attempt fails, one line a minute (failureLogInterval) says so.
            var lastFailureLog: ContinuousClock.Instant?
            while !Task.isCancelled {
                let nodes = peers?.namedTransports(for: .analytics) ?? []
                guard !nodes.isEmpty else {
                    try? await Task.sleep(for: .seconds(1))
                    continue
                }
                let (name, transport) = nodes[next % nodes.count]
                let progress = StreamProgress()
                do {
                    try await stream(to: transport, name: name, spool: spool, wakeup: wakeup, progress: progress)
                } catch {
                    if !Task.isCancelled {
                        let now = ContinuousClock.now
                        if failures == 0 || progress.acknowledged {
                            logger.warning("usage stream to analytics \(name) lost; batches wait in the spool: \(error)")
                            lastFailureLog = now
                        } else if lastFailureLog.map({ now - $0 >= failureLogInterval }) ?? true {
                            logger.warning("usage stream to analytics still failing after \(failures + 1) attempts (\(spool.pendingBytes) bytes of batches wait in the spool); \(name): \(error)")
                            lastFailureLog = now
                        }
                    }
                }
                shipping.state.withLock { $0.connected = false }
                if progress.acknowledged { failures = 0 } else { failures += 1 }
                next += 1
                // 0.1 s, doubling to 5 s after a round of failed nodes.
                let delay = failures < nodes.count ? 100 : min(5000, 100 << min(failures - nodes.count + 1, 6))
                try? await Task.sleep(for: .milliseconds(delay))
            }
        }
    }

    final class StreamProgress: Sendable {
        private let state = Mutex<(acknowledged: Bool, oldestSentAt: ContinuousClock.Instant?, ackedThrough: UInt64)>((false, nil, 0))
        var acknowledged: Bool { state.withLock { $0.acknowledged } }
        func acked(_ sequence: UInt64) { state.withLock { $0.acknowledged = true; $0.ackedThrough = max($0.ackedThrough, sequence); $0.oldestSentAt = nil } }
        func sent() { state.withLock { if $0.oldestSentAt == nil { $0.oldestSentAt = .now } } }
        var ackedThrough: UInt64 { state.withLock { $0.ackedThrough } }
        var waitingSince: ContinuousClock.Instant? { state.withLock { $0.oldestSentAt } }
    }

    /// One `PublishUsageEvents` stream: every unacknowledged batch from the
    /// oldest, then new ones as they are spooled, at most `window` ahead of
    /// the acknowledgements. Batches go out as the spool holds them, encoded
    /// once when they were appended.
    private func stream(to transport: any RPCClientTransport, name: String, spool: UsageSpool, wakeup: Wakeup,
                        progress: StreamProgress) async throws {
        let (requests, continuation) = AsyncStream.makeStream(of: EncodedMessage<PublishUsageEventsRequest>.self)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await transport.bidirectional(AnalyticsServiceDescriptor.publishUsageEvents, requests: requests,
                                                  options: CallOptions()) { (response: PublishUsageEventsResponse) in
                    guard response.epoch == 0 || spool.holds(epoch: response.epoch) else { return }
                    let warn = shipping.state.withLock { state in
                        state.foldBatches = response.summariesCounted
                        guard !response.summariesCounted, !state.warnedUncountedSummaries else { return false }
                        state.warnedUncountedSummaries = true
                        return true
                    }
                    if warn {
                        logger.warning("analytics \(name) does not count usage summaries (it is older than this gateway): batches go to it a message per call; batches folded before it took over are acknowledged without being counted; upgrade analytics nodes before gateways")
                    }
                    let events = spool.acknowledge(through: response.sequence)
                    if !progress.acknowledged {
                        shipping.state.withLock { $0.connected = true; $0.analytics = name }
                        logger.info("usage batches go to analytics \(name)")
                    }
                    progress.acked(response.sequence)
                    shipping.state.withLock { state in
                        state.acknowledgedBatches += 1
                        if response.duplicate { state.duplicateBatches += 1 }
                    }
                    queue.recordShipped(events)
                    wakeup.signal()
                }
                throw CancellationError()  // the server ended the stream: start another
            }
            group.addTask {
                defer { continuation.finish() }
                var sentThrough: UInt64 = 0
                while !Task.isCancelled {
                    let floor = max(progress.ackedThrough, (spool.oldestPendingSequence ?? sentThrough + 1) - 1)
                    let inFlight = sentThrough > floor ? Int(sentThrough - floor) : 0
                    if inFlight < window {
                        let batches = try spool.pending(after: sentThrough, limit: window - inFlight)
                        for (sequence, _, bytes) in batches {
                            continuation.yield(EncodedMessage(bytes: bytes))
                            progress.sent()
                            sentThrough = sequence
                        }
                        if !batches.isEmpty { continue }
                    }
                    if let since = progress.waitingSince, ContinuousClock.now - since > ackTimeout {
                        throw RPCError(.deadlineExceeded, "no acknowledgement from analytics \(name) in \(ackTimeout)")
                    }
                    await wakeup.wait(timeout: .milliseconds(500))
                }
            }
            try await group.next()
            group.cancelAll()
        }
    }
}

/// Wakes one waiting task; a signal with nobody waiting is kept for the next wait.
final class Wakeup: Sendable {
    private let state = Mutex<(signalled: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))

    func signal() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            state.signalled = true
            return nil
        }
        waiter?.resume()
    }

    func wait(timeout: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [self] in
                await withTaskCancellationHandler {
                    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                        // Cancelled before it got here, the cancellation
                        // handler has already run and found nothing to
                        // resume: a stored continuation would wait for a
                        // signal that may never come (the shipper stuck
                        // behind an analytics outage, a stop that hangs).
                        let ready = state.withLock { state -> Bool in
                            if Task.isCancelled { return true }
                            if state.signalled {
                                state.signalled = false
                                return true
                            }
                            state.waiter = continuation
                            return false
                        }
                        if ready { continuation.resume() }
                    }
                } onCancel: { [self] in
                    let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
                        let waiter = state.waiter
                        state.waiter = nil
                        return waiter
                    }
                    waiter?.resume()
                }
            }
            group.addTask { try? await Task.sleep(for: timeout) }
            await group.next()
            group.cancelAll()
        }
    }
}
