import Dispatch
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Threads for work that blocks: LMDB write transactions (which wait for
/// fsync and for the write lock other processes may hold) and slow key
/// derivation (scrypt, PBKDF2).
///
/// Such work must not run on an event loop, where it would stall every
/// connection of that loop, nor on Swift's cooperative pool, whose threads
/// (one per core) are meant never to block. It runs on serial dispatch
/// queues, which use dispatch's ordinary worker threads; callers `await` the
/// result, suspending their task rather than a thread.
///
/// With one lane, work runs strictly one item at a time in arrival order:
/// an environment's writers queue here instead of blocking threads on its
/// write lock, and each transaction begins and ends inside one item, on one
/// thread (LMDB's rule under `MDB_NOTLS`).
public final class BlockingExecutor: Sendable {
    private let lanes: [DispatchQueue]
    private let nextLane = Atomic<UInt>(0)

    /// - Parameter lanes: how many items may run at once.
    public init(name: String, lanes: Int = 1) {
        self.lanes = (0..<max(1, lanes)).map { DispatchQueue(label: lanes == 1 ? name : "\(name).\($0)") }
    }

    /// The executor for key derivation in this process: one lane per core,
    /// since each derivation keeps a core busy and scrypt a few MiB of memory.
    public static let keyDerivation = BlockingExecutor(name: "tollgate.kdf", lanes: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))

    /// Runs `body` on one of the executor's lanes and returns its result.
    /// Cancelling the caller does not interrupt work that has started.
    public func run<Result: Sendable, Failure: Error>(_ body: @escaping @Sendable () throws(Failure) -> Result) async throws(Failure) -> Result {
        let lane = lanes.count == 1 ? lanes[0] : lanes[Int(nextLane.wrappingAdd(1, ordering: .relaxed).oldValue % UInt(lanes.count))]
        let work = Work(body)
        let outcome: Swift.Result<Result, Failure> = await withCheckedContinuation { continuation in
            lane.async {
                // The body, and what it captured, is released before the caller
                // resumes, so objects it held (an environment) are gone by then.
                let outcome = work.run()
                continuation.resume(returning: outcome)
            }
        }
        return try outcome.get()
    }

    /// A body that is released as soon as it has run.
    private final class Work<Result: Sendable, Failure: Error>: Sendable {
        private let body: Mutex<(@Sendable () throws(Failure) -> Result)?>

        init(_ body: @escaping @Sendable () throws(Failure) -> Result) { self.body = Mutex(body) }

        func run() -> Swift.Result<Result, Failure> {
            guard let body = self.body.withLock({ stored in defer { stored = nil }; return stored }) else {
                preconditionFailure("a blocking job ran twice")
            }
            return Swift.Result { () throws(Failure) -> Result in try body() }
        }
    }
}
