import Logging
import RoleCore
import ServiceLifecycle
import Synchronization
public import TollgateProto

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
                let batch = Array(state.events[state.head..<state.head + count])
                state.head += count
                if state.head > 4096 && state.head * 2 > state.events.count {
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
                            let ready = state.withLock { state in
                                if state.events.count - state.head >= wakeThreshold { return true }
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

    public var statistics: (queued: Int, dropped: UInt64, shipped: UInt64, discarded: UInt64) {
        state.withLock { ($0.events.count - $0.head, $0.dropped, $0.shipped, $0.discarded) }
    }
}

/// Drains the usage queue in batches on its own task. Until an analytics
/// node takes usage events (the analytics role), each batch is counted as
/// discarded, with a warning once, so the queue never fills for want of a
/// consumer.
struct UsageShipper: Service {
    let queue: UsageQueue
    let batchSize: Int
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown {
            var warned = false
            while !Task.isCancelled {
                let batch = await queue.takeBatch(max: batchSize)
                guard !batch.isEmpty else { continue }
                queue.recordDiscarded(batch.count)
                if !warned {
                    warned = true
                    logger.notice("usage events are counted and discarded: no analytics node takes them yet (tollgate_gateway_usage_events_total{outcome=\"discarded\"})")
                }
            }
        }
    }
}
