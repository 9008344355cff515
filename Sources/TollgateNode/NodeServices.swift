import Logging
import NIOCore
import NIOPosix
import RPCNIO
import ServiceLifecycle
import SystemdKit
import TollgateListeners
import UnixSignals

/// Keeps peer connections warm and their status current (every 5 s).
struct PeerMonitorService: Service {
    let runtime: NodeRuntime

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                let peers = runtime.peers
                await withTaskGroup(of: Void.self) { tasks in
                    for peer in peers { tasks.addTask { await peer.probe() } }
                }
                try? await Task.sleep(for: .seconds(5))
            }
        }
        for peer in runtime.peers { await peer.channel.close() }
    }
}

/// Every listener. On graceful shutdown they stop accepting, ask their
/// connections to finish (RPC sends GOAWAY), and give work in flight up to
/// the drain timeout.
struct ListenersService: Service {
    let runtime: NodeRuntime

    func run() async throws {
        try? await gracefulShutdown()
        let drain = Duration.seconds(runtime.currentConfig.drainTimeoutSeconds)
        await withTaskGroup(of: Void.self) { tasks in
            for entry in runtime.listeners {
                let listener = entry.listener
                tasks.addTask { await listener.shutdown(drainTimeout: drain) }
            }
        }
    }
}

/// Talks to systemd: READY once everything is bound, watchdog keep-alives
/// proving each event loop still turns, reload on SIGHUP, STOPPING first on
/// shutdown. Without systemd the notifications are no-ops and SIGHUP still
/// reloads.
struct SystemdService: Service {
    let runtime: NodeRuntime
    let logger: Logger

    func run() async throws {
        runtime.reportReady()
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        await withTaskGroup(of: Void.self) { tasks in
            if let interval = ServiceNotifier.watchdogInterval {
                tasks.addTask { await watchdog(every: interval / 2) }
            }
            tasks.addTask {
                for await _ in hangups.cancelOnGracefulShutdown() {
                    await runtime.reload(logger: logger)
                }
            }
            tasks.addTask {
                try? await gracefulShutdown()
                runtime.reportStopping()
            }
            #if DEBUG
            tasks.addTask { await wedgeAnEventLoopOnSIGUSR2() }
            #endif
            await tasks.next()
            // Graceful shutdown (or cancellation) ends the others too.
            try? await gracefulShutdown()
            tasks.cancelAll()
        }
    }

    #if DEBUG
    /// A fault hook for the cluster tests (docs/cluster.md), compiled into
    /// debug builds only: SIGUSR2 blocks one event loop for good, as a
    /// handler stuck in a deadlock would, so that the watchdog path (keep-alive
    /// withheld, systemd restarts the node) can be shown under real systemd.
    func wedgeAnEventLoopOnSIGUSR2() async {
        let signals = await UnixSignalsSequence(trapping: .sigusr2)
        for await _ in signals.cancelOnGracefulShutdown() {
            logger.warning("debug fault hook: SIGUSR2 wedges an event loop")
            runtime.group.next().execute {
                while true { sleep(60) }
            }
        }
    }
    #endif

    /// Sends WATCHDOG=1 only when every event loop ran a task within the period.
    func watchdog(every period: Duration) async {
        let loops = Array(runtime.group.makeIterator())
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let started = ContinuousClock.now
            var alive = true
            for loop in loops {
                // A stuck loop never answers: this task then waits here and the
                // keep-alives stop, which is what makes systemd restart the node.
                guard (try? await loop.submit({ true }).get()) == true else {
                    alive = false
                    break
                }
            }
            if alive && ContinuousClock.now - started < period {
                ServiceNotifier.watchdog()
            } else {
                logger.error("an event loop did not answer within \(period); withholding the watchdog keep-alive")
            }
            try? await Task.sleep(until: started + period, clock: .continuous)
        }
    }
}
