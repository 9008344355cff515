import Foundation
import NIOCore
import NIOPosix
import OpenSSLKit
import TollgateTLS

/// Echoes each read straight back.
private final class Echo: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { context.writeAndFlush(data, promise: nil) }
}

/// Sends `size` bytes, waits for all of them to come back, repeats, and
/// records each round trip's latency.
private final class PingPong: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked Sendable: all state is touched only on the channel's event loop.
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let payload: ByteBuffer
    let rounds: Int
    let done: EventLoopPromise<[Double]>
    var received = 0
    var started = ContinuousClock.now
    var latencies: [Double] = []

    init(size: Int, rounds: Int, done: EventLoopPromise<[Double]>) {
        payload = ByteBuffer(repeating: 0x5A, count: size)
        self.rounds = rounds
        self.done = done
        latencies.reserveCapacity(rounds)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted? = event as? TLSEvent { send(context) }
    }

    func send(_ context: ChannelHandlerContext) {
        started = .now
        received = 0
        context.writeAndFlush(wrapOutboundOut(payload), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += unwrapInboundIn(data).readableBytes
        guard received >= payload.readableBytes else { return }
        let elapsed = ContinuousClock.now - started
        latencies.append(Double(elapsed.components.attoseconds) / 1e12 + Double(elapsed.components.seconds) * 1e6)
        if latencies.count == rounds { done.succeed(latencies) } else { send(context) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { done.fail(error) }
}

/// A throwaway CA and node certificate in a temporary directory, and the
/// server and client TLS contexts using them (mutual TLS).
/// `uris` go into the one certificate both ends use (e.g. a node identity).
func makeBenchTLS(alpn: [String], uris: [String] = []) throws -> (directory: String, server: TLSContext, client: TLSContext) {
    let ca = try CertificateIssuer.makeAuthority(commonName: "bench CA", validDays: 1)
    let node = try CertificateIssuer.issue(CertificateRequest(commonName: "bench", usage: .node, uniformResourceIdentifiers: uris, dnsNames: ["localhost"],
                                                              validUntilOffset: 3600), signedBy: ca)
    let directory = try temporaryDirectory()
    for (name, text) in [("ca.pem", ca.certificatePEM), ("node.pem", node.certificatePEM), ("node.key", node.privateKeyPEM)] {
        try text.write(toFile: directory + "/" + name, atomically: true, encoding: .utf8)
    }
    let server = try TLSContext(configuration: .server(certificateChainFile: directory + "/node.pem", privateKeyFile: directory + "/node.key",
                                                       trustRootsFile: directory + "/ca.pem", verification: .peerRequired, applicationProtocols: alpn))
    let client = try TLSContext(configuration: .client(trustRootsFile: directory + "/ca.pem", certificateChainFile: directory + "/node.pem",
                                                       privateKeyFile: directory + "/node.key", applicationProtocols: alpn))
    return (directory, server, client)
}

/// Raw TLS ping-pong of 256-byte messages over mutual TLS on loopback: the
/// physical limit an RPC call over the same TLS stack is compared with.
func benchTLS() throws {
    let (directory, serverContext, clientContext) = try makeBenchTLS(alpn: [])
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let group = MultiThreadedEventLoopGroup(numberOfThreads: Int(ProcessInfo.processInfo.environment["TOLLGATE_BENCH_LOOPS"] ?? "2") ?? 2)
    defer { try? group.syncShutdownGracefully() }
    let server = try ServerBootstrap(group: group)
        .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
        .childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(TLSHandler(context: serverContext))
                try channel.pipeline.syncOperations.addHandler(Echo())
            }
        }
        .bind(host: "127.0.0.1", port: 0).wait()
    defer { try? server.close().wait() }
    let port = server.localAddress!.port!

    for connections in [1, 16] {
        let rounds = connections == 1 ? 50_000 : 10_000
        let start = ContinuousClock.now
        var futures: [EventLoopFuture<[Double]>] = []
        var channels: [Channel] = []
        for _ in 0..<connections {
            let promise = group.next().makePromise(of: [Double].self)
            futures.append(promise.futureResult)
            channels.append(try ClientBootstrap(group: group)
                .channelOption(.tcpOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(TLSHandler(context: clientContext, serverHostname: "localhost"))
                        try channel.pipeline.syncOperations.addHandler(PingPong(size: 256, rounds: rounds, done: promise))
                    }
                }
                .connect(host: "127.0.0.1", port: port).wait())
        }
        var latencies: [Double] = []
        for future in futures { latencies += try future.wait() }
        let elapsed = ContinuousClock.now - start
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        latencies.sort()
        let p50 = latencies[latencies.count / 2], p99 = latencies[latencies.count * 99 / 100]
        print("raw TLS ping-pong 256 B, mutual TLS, \(connections) connection(s)".padding(toLength: 62, withPad: " ", startingAt: 0)
              + String(format: "%12.0f round trips/s  p50 %.1f µs  p99 %.1f µs", Double(latencies.count) / seconds, p50, p99))
        for channel in channels { try? channel.close().wait() }
    }
}
