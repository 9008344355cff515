public import NIOCore

/// Runs Swift tasks on one NIO event loop. A task that prefers it
/// (`Task(executorPreference:)`) talks to channels on that loop without a
/// thread hop either way: the RPC server runs `.eventLoop` handlers on it, a
/// stream listener serves each connection on its loop, and
/// a client that makes many calls on one connection can run its task on
/// ``RPCConnection/taskExecutor``.
public final class LoopTaskExecutor: TaskExecutor {
    public let eventLoop: any EventLoop

    public init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        eventLoop.execute { job.runSynchronously(on: executor) }
    }
}
