import Foundation
import NIOCore
import NIOPosix
import OpenSSLKit
import RPCCore
import RPCNIO
import TollgateProto

/// Unary echo of a 256-byte message over mutual TLS on loopback, with 1 and
/// 16 concurrent callers on one connection (compare with `tls`).
func benchRPC() async throws {
    let (directory, serverTLS, clientTLS) = try makeBenchTLS(alpn: [RPCServer.alpn], uris: ["tollgate://node/bench?role=gateway"])
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let loops = Int(ProcessInfo.processInfo.environment["TOLLGATE_BENCH_LOOPS"] ?? "2") ?? 2
    let group = MultiThreadedEventLoopGroup(numberOfThreads: loops)
    // Two setups: the defaults (handler on the concurrency pool, callers as
    // plain tasks), and both ends on the event loops (handler placed on the
    // server's loop, callers preferring the connection's loop).
    // TOLLGATE_BENCH_RPC=defaults|loops runs one setup only (for profiling).
    let only = ProcessInfo.processInfo.environment["TOLLGATE_BENCH_RPC"]
    for onLoops in [false, true] where only == nil || only == (onLoops ? "loops" : "defaults") {
        let echo = RPCMethodHandler.unary(NodeServiceDescriptor.ping) { (request: PingRequest, _) in PingResponse(payload: request.payload) }
        let server = RPCServer(methods: [echo.placed(onLoops ? .eventLoop : .pool)], tls: serverTLS) { _ in .anonymous }
        let port = try await server.bind(host: "127.0.0.1", port: 0, group: group).port!
        let client = try await RPCConnection.connect(host: "127.0.0.1", port: port, serverHostname: "localhost", tls: clientTLS, group: group)
        try await measure(client: client, loops: loops, onLoops: onLoops)
        await client.close()
        await server.shutdown(drainTimeout: .seconds(2))
    }
    try await group.shutdownGracefully()
}

private func measure(client: RPCConnection, loops: Int, onLoops: Bool) async throws {
    let request = PingRequest(payload: [UInt8](repeating: 0x5A, count: 256))
    let executor: (any TaskExecutor)? = onLoops ? client.taskExecutor : nil
    for callers in [1, 16] {
        let perCaller = callers == 1 ? 20_000 : 2_000
        let start = ContinuousClock.now
        let latencies = try await withThrowingTaskGroup(of: [Double].self) { tasks in
            for _ in 0..<callers {
                tasks.addTask(executorPreference: executor) {
                    var samples: [Double] = []
                    samples.reserveCapacity(perCaller)
                    for _ in 0..<perCaller {
                        let began = ContinuousClock.now
                        let _: PingResponse = try await client.unary(NodeServiceDescriptor.ping, request)
                        let elapsed = ContinuousClock.now - began
                        samples.append(Double(elapsed.components.seconds) * 1e6 + Double(elapsed.components.attoseconds) / 1e12)
                    }
                    return samples
                }
            }
            var all: [Double] = []
            for try await samples in tasks { all += samples }
            return all.sorted()
        }
        let elapsed = ContinuousClock.now - start
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let setup = onLoops ? "on loops" : "defaults"
        print("RPC unary echo 256 B, mTLS, \(callers) caller(s), \(loops) loop(s), \(setup)".padding(toLength: 62, withPad: " ", startingAt: 0)
              + String(format: "%12.0f calls/s  p50 %.1f µs  p99 %.1f µs", Double(latencies.count) / seconds,
                       latencies[latencies.count / 2], latencies[latencies.count * 99 / 100]))
    }
}
