import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Threads of its own for work that blocks: LMDB write transactions (which
/// wait for fsync and for the write lock other processes may hold) and slow
/// key derivation (scrypt, PBKDF2).
///
/// Such work must not run on an event loop, where it would stall every
/// connection of that loop, nor on Swift's cooperative pool, whose threads
/// (one per core) are meant never to block. Nor does it use dispatch's
/// worker threads, which on Linux are the same pool Swift's concurrency runs
/// on. Each lane is one dedicated thread taking jobs in arrival order;
/// callers `await` the result, suspending their task rather than a thread.
///
/// With one lane, work runs strictly one item at a time: an environment's
/// writers queue here instead of blocking threads on its write lock, and each
/// transaction begins and ends inside one job, on one thread (LMDB's rule
/// under `MDB_NOTLS`).
public final class BlockingExecutor: Sendable {
    private let lanes: [Lane]
    private let nextLane = Atomic<UInt>(0)

    /// - Parameter lanes: how many jobs may run at once (one thread each).
    public init(name: String, lanes: Int = 1) {
        self.lanes = (0..<max(1, lanes)).map { Lane(name: lanes == 1 ? name : "\(name).\($0)") }
    }

    deinit {
        for lane in lanes { lane.stop() }
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
            lane.submit {
                // The body, and what it captured, is released before the caller
                // resumes, so objects it held (an environment) are gone by then.
                let outcome = work.run()
                continuation.resume(returning: outcome)
            }
        }
        return try outcome.get()
    }

    /// Queues `job` on one lane without waiting for it: for callers that
    /// resume their waiters from inside the job themselves.
    public func submit(_ job: @escaping @Sendable () -> Void) {
        let lane = lanes.count == 1 ? lanes[0] : lanes[Int(nextLane.wrappingAdd(1, ordering: .relaxed).oldValue % UInt(lanes.count))]
        lane.submit(job)
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

/// One dedicated thread and its queue of jobs.
private final class Lane: @unchecked Sendable {
    // @unchecked Sendable: `jobs` and `stopping` are read and written only
    // with `mutex` held; the mutex and condition live at stable heap
    // addresses and are used only through pthread calls.
    typealias Job = @Sendable () -> Void

    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let wakeup: UnsafeMutablePointer<pthread_cond_t>
    private var jobs: [Job] = []
    private var stopping = false

    init(name: String) {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        wakeup = .allocate(capacity: 1)
        pthread_cond_init(wakeup, nil)
        // The thread keeps the lane alive until it has drained the queue after `stop`.
        let retained = Unmanaged.passRetained(LaneStart(lane: self)).toOpaque()
        var thread = pthread_t()
        let status = pthread_create(&thread, nil, { argument in
            let start = Unmanaged<LaneStart>.fromOpaque(argument!).takeRetainedValue()
            start.lane.serve()
            return nil
        }, retained)
        precondition(status == 0, "cannot start a thread for \(name): error \(status)")
        pthread_detach(thread)
    }

    deinit {
        pthread_cond_destroy(wakeup)
        wakeup.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func submit(_ job: @escaping Job) {
        pthread_mutex_lock(mutex)
        let refused = stopping
        if !refused { jobs.append(job) }
        pthread_cond_signal(wakeup)
        pthread_mutex_unlock(mutex)
        // After stop, work still runs (on the caller's thread) so nobody waits forever.
        if refused { job() }
    }

    /// Lets the thread finish the jobs queued so far, then exit.
    func stop() {
        pthread_mutex_lock(mutex)
        stopping = true
        pthread_cond_signal(wakeup)
        pthread_mutex_unlock(mutex)
    }

    private func serve() {
        while true {
            pthread_mutex_lock(mutex)
            while jobs.isEmpty && !stopping { pthread_cond_wait(wakeup, mutex) }
            let batch = jobs
            jobs.removeAll(keepingCapacity: true)
            let done = batch.isEmpty && stopping
            pthread_mutex_unlock(mutex)
            if done { return }
            for job in batch { job() }
        }
    }
}

/// What a lane's thread starts with.
private final class LaneStart: Sendable {
    let lane: Lane
    init(lane: Lane) { self.lane = lane }
}
