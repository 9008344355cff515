import Synchronization

/// Fired once when the server begins a graceful shutdown of a connection
/// (GOAWAY `SHUTDOWN`). Long-lived streams (the feeds and the usage stream)
/// watch it through ``ServerCallContext/untilStopping(_:)`` and end at once
/// with UNAVAILABLE, instead of holding the node's stop for the whole drain
/// period; their clients resume where they were, elsewhere or after the
/// restart. Calls that do not watch it run on to the end of the drain.
public final class StopSignal: Sendable {
    private struct State {
        var fired = false
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter: UInt64 = 0
    }

    private let state = Mutex(State())

    public init() {}

    public var isFired: Bool { state.withLock { $0.fired } }

    public func fire() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            guard !state.fired else { return [] }
            state.fired = true
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once fired, or when the waiting task is cancelled.
    public func wait() async {
        let id = state.withLock { state -> UInt64 in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                // Checked under the lock the cancellation handler takes: a
                // task cancelled before it got here is never left waiting.
                let ready = state.withLock { state -> Bool in
                    if state.fired || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }
}

extension ServerCallContext {
    /// Runs a long-lived stream's `body` until it returns, or until the
    /// node begins to stop: then `body` is cancelled and the call ends with
    /// UNAVAILABLE, which the feeds' and usage stream's clients answer by
    /// resuming from where they were.
    public func untilStopping(_ body: @escaping @Sendable () async throws -> Void) async throws {
        guard let stopping else { return try await body() }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await body() }
            group.addTask {
                await stopping.wait()
                try Task.checkCancellation()
                throw RPCError(.unavailable, "the node is stopping: resume on another node or once it restarts")
            }
            defer { group.cancelAll() }
            try await group.next()
        }
    }
}
