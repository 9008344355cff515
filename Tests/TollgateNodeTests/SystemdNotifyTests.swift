import Foundation
import NIOCore
import NIOPosix
import OpenSSLKit
import RPCCore
import RPCNIO
import TestSupport
import Testing
import TollgateProto

/// What tollgated tells systemd, captured on a NOTIFY_SOCKET the test owns.
/// Requests for a client-streaming call that tell the test when the call
/// starts reading them: only after its stream is open and its HEADERS are
/// written to the connection.
struct ObservedRequests: AsyncSequence, Sendable {
    typealias Element = PingRequest
    let requests: AsyncStream<PingRequest>
    let reading: Watched<Bool>

    func makeAsyncIterator() -> AsyncStream<PingRequest>.Iterator {
        reading.update { $0 = true }
        return requests.makeAsyncIterator()
    }
}

/// What tollgated tells systemd, captured on a NOTIFY_SOCKET the test owns.
@Suite(.serialized) struct SystemdNotifyTests {
    @Test func readyWatchdogReloadAndStopping() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("n1", roles: ["publisher"])
        let config = try fixture.writeConfig("n1", roles: ["publisher"], clusterPort: try NodeFixture.freePort(), adminPort: try NodeFixture.freePort())
        let notify = try NotifyListener(path: fixture.path("notify.sock"))
        try await withNodes { nodes in
            // systemd passes WATCHDOG_USEC for WatchdogSec=; keep-alives must come at half of it.
            let node = try nodes.start(config: config, environment: ["NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"])

            let ready = try #require(notify.until("READY=1"), "no READY=1: \(node.output)")
            #expect(ready.last?.contains("STATUS=ready: node n1, roles publisher; listening cluster 127.0.0.1:") == true, "\(ready)")

            // Keep-alives every 200 ms: several in a second and a half. The
            // window is the test: it counts what arrives in a fixed time.
            var keepAlives = 0
            let watchUntil = ContinuousClock.now + .milliseconds(1500)
            while ContinuousClock.now < watchUntil, let message = notify.next(timeout: watchUntil - ContinuousClock.now) {
                if message.contains("WATCHDOG=1") { keepAlives += 1 }
            }
            #expect((4...10).contains(keepAlives), "\(keepAlives) keep-alives in 1.5 s")

            // SIGHUP with a good file: RELOADING=1 (with MONOTONIC_USEC), then READY=1.
            kill(node.process.processIdentifier, SIGHUP)
            let reload = try #require(notify.until("READY=1"), "no READY=1 after SIGHUP: \(node.output)")
            #expect(reload.contains { $0.contains("RELOADING=1") && $0.contains("MONOTONIC_USEC=") }, "\(reload)")
            #expect(reload.last?.contains("configuration reloaded 1×") == true, "\(reload)")

            // A broken file is refused and the node keeps running on the old one.
            let good = try String(contentsOfFile: config, encoding: .utf8)
            try (good + "\nmystery_key = true\n").write(toFile: config, atomically: true, encoding: .utf8)
            kill(node.process.processIdentifier, SIGHUP)
            let refused = try #require(notify.until("READY=1"), "no READY=1 after a bad reload: \(node.output)")
            #expect(refused.last?.contains("last reload refused") == true && refused.last?.contains("mystery_key: unknown key") == true, "\(refused)")
            #expect(node.process.isRunning)
            #expect(await node.waitFor("reload refused; keeping the running configuration"))

            #expect(await node.stop() == 0)
            #expect(notify.until("STOPPING=1", timeout: .seconds(5)) != nil)
        }
    }

    /// SIGTERM while a call is in flight: new calls are refused (GOAWAY), the
    /// call in flight completes, then the node exits 0.
    @Test func sigtermDrainsACallInFlight() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("n1", roles: ["gateway"])
        let port = try NodeFixture.freePort()
        let config = try fixture.writeConfig("n1", roles: ["gateway"], clusterPort: port, adminPort: nil)
        let notify = try NotifyListener(path: fixture.path("notify.sock"))
        try await withNodes { nodes in
            let node = try nodes.start(config: config, environment: ["NOTIFY_SOCKET": notify.path])
            _ = try #require(notify.until("READY=1"), "\(node.output)")

            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            try await withTeardown {
                let tls = try TLSContext(configuration: .client(trustRootsFile: fixture.caPath, certificateChainFile: fixture.path("admin.pem"),
                                                                privateKeyFile: fixture.path("admin.key"), applicationProtocols: [RPCServer.alpn]))
                let connection = try await RPCConnection.connect(host: "127.0.0.1", port: port, serverHostname: "localhost", tls: tls, group: group)
                // HEADERS now, the request only after SIGTERM: the call is in flight across the signal.
                let (stream, feed) = AsyncStream<PingRequest>.makeStream()
                let requests = ObservedRequests(requests: stream, reading: Watched(false))
                let call = Task {
                    try await connection.clientStreaming(NodeServiceDescriptor.ping, requests: requests, as: PingResponse.self)
                }
                // The call's HEADERS are written; a second call on the same
                // connection goes out after them, so once it is answered the
                // node has read them and the first call is open there.
                try await requests.reading.wait(for: "the call to open its stream") { $0 }
                let fence: PingResponse = try await connection.unary(NodeServiceDescriptor.ping, PingRequest(payload: [1]))
                #expect(fence.payload == [1])
                kill(node.process.processIdentifier, SIGTERM)
                _ = try #require(notify.until("STOPPING=1", timeout: .seconds(10)), "\(node.output)")
                // The sleep is the test: time passes with the call open, and
                // the node must still be there, waiting for it.
                try await Task.sleep(for: .milliseconds(300))
                #expect(node.process.isRunning, "the node waits for the call in flight")
                feed.yield(PingRequest(payload: [42]))
                feed.finish()
                let response = try await call.value
                #expect(response.payload == [42] && response.nodeId == "n1")
                #expect(await node.stop() == 0)
                await connection.close()
            } teardown: {
                try? await group.shutdownGracefully()
            }
        }
    }
}
