import Foundation

// Tests wait for what they need to have happened, never for a fixed time:
// a sleep long enough on an idle machine is too short on a loaded one (the
// test fails for nothing), and a check that runs before the event it checks
// can pass for nothing. Deadlines below are generous on purpose: they only
// bound how long a broken test takes to fail.

/// A wait that ran out of time; the test fails naming what it waited for.
public struct TimedOut: Error, CustomStringConvertible {
    public let what: String
    public let timeout: Duration
    /// What the test saw last, to tell a slow event from a wrong one.
    public let lastSeen: String
    public let location: String

    public init(what: String, timeout: Duration, lastSeen: String = "", fileID: String = #fileID, line: Int = #line) {
        self.what = what
        self.timeout = timeout
        self.lastSeen = lastSeen
        self.location = "\(fileID):\(line)"
    }

    public var description: String {
        "timed out after \(timeout) waiting for \(what) (\(location))" + (lastSeen.isEmpty ? "" : "; last seen: \(lastSeen)")
    }
}

/// Checks `condition` until it holds, throwing ``TimedOut`` naming `what`
/// once `timeout` has passed.
///
/// For state that announces no change (another process's, a flag inside a
/// library): prefer ``Watched`` when the test can be told. The poll interval
/// only bounds how late the test notices; what it relies on is the condition.
public func eventually(_ what: String, timeout: Duration = .seconds(30), poll: Duration = .milliseconds(10),
                       isolation: isolated (any Actor)? = #isolation, fileID: String = #fileID, line: Int = #line,
                       _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while try await !condition() {
        guard ContinuousClock.now < deadline else { throw TimedOut(what: what, timeout: timeout, fileID: fileID, line: line) }
        try await Task.sleep(for: poll)
    }
}

/// Runs `body`, then awaits `teardown` whether `body` returned or threw, so
/// no server, process or event loop outlives its test (a `defer { Task { … } }`
/// would leave it running into the next test).
public func withTeardown<T>(isolation: isolated (any Actor)? = #isolation, _ body: () async throws -> T,
                            teardown: () async -> Void) async throws -> T {
    let result: T
    do {
        result = try await body()
    } catch {
        await teardown()
        throw error
    }
    await teardown()
    return result
}

/// A value that tests wait on: whoever changes it through ``update(_:)``
/// wakes the waiters whose condition now holds. Waiting suspends (``wait(for:timeout:fileID:line:until:)``)
/// or, for synchronous tests, blocks the thread (``waitBlocking(for:timeout:fileID:line:until:)``).
public final class Watched<Value: Sendable>: @unchecked Sendable {
    // @unchecked: `value`, `waiters` and `nextWaiter` are only touched with
    // `lock` held; continuations are resumed after it is released.
    private let lock = NSCondition()
    private var value: Value
    private var waiters: [Int: Waiter] = [:]
    private var nextWaiter = 0

    private struct Waiter {
        let isSatisfied: @Sendable (Value) -> Bool
        let continuation: CheckedContinuation<Value, any Error>
    }

    public init(_ value: Value) { self.value = value }

    /// The value now.
    public var current: Value {
        lock.lock()
        defer { lock.unlock() }
        return value
    }

    /// Changes the value and wakes whoever waits for the new one.
    @discardableResult
    public func update<R>(_ change: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        let result: R
        do {
            result = try change(&value)
        } catch {
            lock.unlock()
            throw error
        }
        let snapshot = value
        var woken: [CheckedContinuation<Value, any Error>] = []
        for (id, waiter) in waiters where waiter.isSatisfied(snapshot) {
            woken.append(waiter.continuation)
            waiters[id] = nil
        }
        lock.broadcast()
        lock.unlock()
        for continuation in woken { continuation.resume(returning: snapshot) }
        return result
    }

    /// Suspends until `isSatisfied` holds for the value (at once if it
    /// already does) and returns that value; throws ``TimedOut`` after `timeout`.
    @discardableResult
    public func wait(for what: String, timeout: Duration = .seconds(30), fileID: String = #fileID, line: Int = #line,
                     until isSatisfied: @escaping @Sendable (Value) -> Bool) async throws -> Value {
        let outcome = try await withThrowingTaskGroup(of: Value?.self) { group in
            group.addTask { try await self.suspend(until: isSatisfied) }
            // The deadline, not a synchronization: it only ends a wait that failed.
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            defer { group.cancelAll() }
            return try await group.next() ?? nil
        }
        guard let outcome else { throw TimedOut(what: what, timeout: timeout, lastSeen: Self.describe(current), fileID: fileID, line: line) }
        return outcome
    }

    /// Blocks the calling thread until `isSatisfied` holds for the value and
    /// returns that value; throws ``TimedOut`` after `timeout`. For
    /// synchronous tests only: an asynchronous one would hold a thread of the
    /// shared pool that the code under test may need.
    @discardableResult
    public func waitBlocking(for what: String, timeout: Duration = .seconds(30), fileID: String = #fileID, line: Int = #line,
                             until isSatisfied: (Value) -> Bool) throws -> Value {
        let seconds = Double(timeout.components.seconds) + Double(timeout.components.attoseconds) / 1e18
        let deadline = Date(timeIntervalSinceNow: seconds)
        lock.lock()
        defer { lock.unlock() }
        while !isSatisfied(value) {
            if !lock.wait(until: deadline), !isSatisfied(value) {
                throw TimedOut(what: what, timeout: timeout, lastSeen: Self.describe(value), fileID: fileID, line: line)
            }
        }
        return value
    }

    private func suspend(until isSatisfied: @escaping @Sendable (Value) -> Bool) async throws -> Value {
        let id = newWaiterID()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                lock.lock()
                if isSatisfied(value) {
                    let snapshot = value
                    lock.unlock()
                    continuation.resume(returning: snapshot)
                } else if Task.isCancelled {
                    // The handler below ran before there was a waiter to remove.
                    lock.unlock()
                    continuation.resume(throwing: CancellationError())
                } else {
                    waiters[id] = Waiter(isSatisfied: isSatisfied, continuation: continuation)
                    lock.unlock()
                }
            }
        } onCancel: {
            lock.lock()
            let waiter = waiters.removeValue(forKey: id)
            lock.unlock()
            waiter?.continuation.resume(throwing: CancellationError())
        }
    }

    private func newWaiterID() -> Int {
        lock.lock()
        defer { lock.unlock() }
        nextWaiter += 1
        return nextWaiter
    }

    private static func describe(_ value: Value) -> String {
        let text = String(describing: value)
        return text.count > 2000 ? "…" + text.suffix(2000) : text
    }
}

extension Watched where Value == Int {
    /// Counts one more occurrence.
    public func increment() { update { $0 += 1 } }
}
