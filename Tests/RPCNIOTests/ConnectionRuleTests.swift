import NIOCore
import NIOPosix
import OpenSSLKit
import RPCCore
@testable import RPCNIO
import TestSupport
import Testing
import TollgateProto
import TollgateTLS

/// A TLS peer that speaks raw frames, to break the protocol on purpose.
final class RawPeer: Sendable {
    let channel: any Channel
    let frames: AsyncStream<Frame>

    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = Frame
        let sink: AsyncStream<Frame>.Continuation
        init(sink: AsyncStream<Frame>.Continuation) { self.sink = sink }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) { sink.yield(unwrapInboundIn(data)) }
        func channelInactive(context: ChannelHandlerContext) { sink.finish() }
        func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
    }

    init(port: Int, tls: TLSContext, group: any EventLoopGroup) async throws {
        let (frames, sink) = AsyncStream<Frame>.makeStream()
        self.frames = frames
        channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(TLSHandler(context: tls, serverHostname: "localhost"))
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoderHandler(maxFrameSize: 16 * 1024 * 1024)))
                    try channel.pipeline.syncOperations.addHandler(Collector(sink: sink))
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
    }

    func send(_ bytes: [UInt8]) async throws {
        try await channel.writeAndFlush(ByteBuffer(bytes: bytes))
    }

    func send(_ frame: Frame) async throws {
        var buffer = ByteBuffer()
        FrameEncoding.encode(frame, into: &buffer)
        try await channel.writeAndFlush(buffer)
    }

    /// Frames until the server closes the connection. If it has not after
    /// `limit` (a deadline for a broken server, not a synchronization), the
    /// test fails and the peer closes it.
    func framesUntilClosed(limit: Duration = .seconds(30), sourceLocation: SourceLocation = #_sourceLocation) async -> [Frame] {
        let frames = self.frames
        let collect = Task {
            var seen: [Frame] = []
            for await frame in frames { seen.append(frame) }
            return seen
        }
        let watchdog = Task {
            try await Task.sleep(for: limit)
            Issue.record("the server did not close the connection within \(limit)", sourceLocation: sourceLocation)
            collect.cancel()
            try? await channel.close()
        }
        let seen = await collect.value
        watchdog.cancel()
        return seen
    }
}

func goAwayReason(_ frames: [Frame]) -> RpcGoAwayReason? {
    frames.last { $0.header.type == .goAway }.flatMap { try? RpcGoAway(serializedBytes: $0.payload).reason }
}

@Suite(.serialized) struct ConnectionRuleTests {
    static let settings = RPCLimits().settingsFrame

    @Test func garbageClosesOnlyThatConnection() async throws {
        try await Harness.with { harness in
            let client = try await harness.connect()
            let peer = try await RawPeer(port: harness.port, tls: try harness.pki.client(as: "admin", alpn: [RPCServer.alpn]), group: harness.group)
            try await peer.send(Self.settings)
            try await peer.send([UInt8](repeating: 0xEE, count: 64))
            let frames = await peer.framesUntilClosed()
            #expect(goAwayReason(frames) == .protocolError)
            // The well-behaved connection carries on.
            let response: PingResponse = try await client.unary(Echo.unary, PingRequest(payload: [7]))
            #expect(response.payload == [7])
            await client.close()
        }
    }

    @Test func theFirstFrameMustBeSettings() async throws {
        try await Harness.with { harness in
            let peer = try await RawPeer(port: harness.port, tls: try harness.pki.client(as: "admin", alpn: [RPCServer.alpn]), group: harness.group)
            try await peer.send(Frame(type: .ping, streamID: 0, payload: [UInt8](repeating: 1, count: 8)))
            let frames = await peer.framesUntilClosed()
            #expect(frames.first?.header.type == .settings, "the server's own SETTINGS still come first")
            #expect(goAwayReason(frames) == .protocolError)
        }
    }

    @Test func aSecondSettingsIsAProtocolError() async throws {
        try await Harness.with { harness in
            let peer = try await RawPeer(port: harness.port, tls: try harness.pki.client(as: "admin", alpn: [RPCServer.alpn]), group: harness.group)
            try await peer.send(Self.settings)
            try await peer.send(Self.settings)
            #expect(goAwayReason(await peer.framesUntilClosed()) == .protocolError)
        }
    }

    @Test func noSettingsWithinTheHandshakeTimeout() async throws {
        var limits = RPCLimits()
        limits.handshakeTimeout = .milliseconds(300)
        try await Harness.with(limits: limits) { harness in
            let peer = try await RawPeer(port: harness.port, tls: try harness.pki.client(as: "admin", alpn: [RPCServer.alpn]), group: harness.group)
            let frames = await peer.framesUntilClosed()
            #expect(goAwayReason(frames) == .protocolError)
        }
    }

    @Test func keepalivePingsAndClosesASilentPeer() async throws {
        var limits = RPCLimits()
        limits.keepaliveInterval = .milliseconds(200)
        limits.keepaliveTimeout = .milliseconds(200)
        try await Harness.with(limits: limits) { harness in
            // A peer that never answers PING is closed with KEEPALIVE_TIMEOUT.
            let peer = try await RawPeer(port: harness.port, tls: try harness.pki.client(as: "admin", alpn: [RPCServer.alpn]), group: harness.group)
            try await peer.send(Self.settings)
            let frames = await peer.framesUntilClosed()
            #expect(frames.contains { $0.header.type == .ping && !$0.header.flags.contains(.ack) })
            #expect(goAwayReason(frames) == .keepaliveTimeout)
            // Our client answers, and stays connected through several intervals.
            // The sleep is the test: six keepalive intervals pass, and the
            // call after them works only if the connection survived them.
            let client = try await harness.connect()
            try await Task.sleep(for: .milliseconds(1200))
            let response: PingResponse = try await client.unary(Echo.unary, PingRequest(payload: [1]))
            #expect(response.payload == [1])
            await client.close()
        }
    }

    @Test func idleConnectionsAreClosedButBusyOnesAreNot() async throws {
        var limits = RPCLimits()
        limits.idleTimeout = .milliseconds(400)
        let lingering = RPCMethodHandler.unary(Echo.unary) { (request: PingRequest, _) in
            // The sleep is the test: a call open three idle timeouts long.
            try await Task.sleep(for: .milliseconds(1200))
            return PingResponse(payload: request.payload)
        }
        try await Harness.with(limits: limits, methods: [lingering]) { harness in
            let client = try await harness.connect()
            // A call running longer than the idle timeout keeps the connection.
            let response: PingResponse = try await client.unary(Echo.unary, PingRequest(payload: [2]))
            #expect(response.payload == [2])
            #expect(await client.isUsable)
            try await client.closed.get()  // then, with nothing open, it is closed for idleness
            #expect(await !client.isUsable)
        }
    }

    @Test func aClientHelloWithoutALPNCompletesTLSThenTheServerCloses() async throws {
        try await Harness.with { harness in
            // The server speaks first once TLS is up; this one must stay silent.
            let peer = try await RawPeer(port: harness.port, tls: try harness.pki.client(as: "admin", alpn: []), group: harness.group)
            #expect(await peer.framesUntilClosed().isEmpty, "the server sends no frame, not even SETTINGS")
        }
    }

    @Test func handlersLearnTheClientsAddress() async throws {
        let method = RPCMethodHandler.unary(Echo.unary) { (_: PingRequest, context) in PingResponse(nodeId: context.sourceAddress ?? "none") }
        try await Harness.with(methods: [method]) { harness in
            let client = try await harness.connect()
            let reply: PingResponse = try await client.unary(Echo.unary, PingRequest())
            #expect(reply.nodeId == "127.0.0.1")
            await client.close()
        }
    }

    @Test func connectionsOverTheLimitAreRefused() async throws {
        var limits = RPCLimits()
        limits.maxConnections = 2
        try await Harness.with(limits: limits) { harness in
            let first = try await harness.connect()
            let second = try await harness.connect()
            await #expect(throws: (any Error).self) { _ = try await harness.connect() }
            await first.close()
            try await harness.connections.open.wait(for: "the server to see the first connection closed") { $0 == 1 }
            let third = try await harness.connect()
            let response: PingResponse = try await third.unary(Echo.unary, PingRequest(payload: [3]))
            #expect(response.payload == [3])
            await second.close()
            await third.close()
        }
    }

    @Test func clientsQueueCallsBeyondTheServersStreamLimit() async throws {
        var limits = RPCLimits()
        limits.maxConcurrentStreams = 4
        struct Gauge: Sendable { var inFlight = 0, peak = 0 }
        let gauge = Watched(Gauge())
        let gate = Watched(false)
        let handler = RPCMethodHandler.unary(Echo.unary) { (request: PingRequest, _) in
            gauge.update { $0.inFlight += 1; $0.peak = max($0.peak, $0.inFlight) }
            // The first four hold their streams until the test has seen the
            // other 56 calls queued on the client.
            try await gate.wait(for: "the test to open the gate") { $0 }
            gauge.update { $0.inFlight -= 1 }
            return PingResponse(payload: request.payload)
        }
        try await Harness.with(limits: limits, methods: [handler]) { harness in
            let client = try await harness.connect()
            let calls = Task {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for index in 0..<60 {
                        group.addTask {
                            let response: PingResponse = try await client.unary(Echo.unary, PingRequest(payload: [UInt8(index)]))
                            #expect(response.payload == [UInt8(index)])
                        }
                    }
                    try await group.waitForAll()
                }
            }
            try await gauge.wait(for: "four calls in their handlers") { $0.inFlight == 4 }
            try await eventually("the other 56 calls queued on the client") { try await client._testOnly_pendingCount == 56 }
            #expect(gauge.current.peak == 4, "no fifth call reached the server while four were open")
            gate.update { $0 = true }
            try await calls.value
            #expect(gauge.current.peak == 4)
            await client.close()
        }
    }

    @Test func eventLoopHandlersRunOnTheConnectionsLoop() async throws {
        let onLoop = RPCMethodHandler.unary(Echo.unary) { (request: PingRequest, _) in
            PingResponse(payload: request.payload, nodeId: MultiThreadedEventLoopGroup.currentEventLoop == nil ? "pool" : "loop")
        }.placed(.eventLoop)
        try await Harness.with(methods: [onLoop]) { harness in
            let client = try await harness.connect()
            let response: PingResponse = try await client.unary(Echo.unary, PingRequest())
            #expect(response.nodeId == "loop")
            // A caller running on the connection's loop works the same.
            let pinned = try await Task(executorPreference: client.taskExecutor) {
                let response: PingResponse = try await client.unary(Echo.unary, PingRequest(payload: [9]))
                return response.payload
            }.value
            #expect(pinned == [9])
            await client.close()
        }
    }

    @Test func callsOutlivingTheDrainPeriodFailUnavailable() async throws {
        try await Harness.with { harness in
            let client = try await harness.connect()
            let slow = Task { let _: PingResponse = try await client.unary(Echo.slow, PingRequest()) }
            try await harness.slowCalls.started.wait(for: "the slow call to reach its handler") { $0 >= 1 }
            await harness.server.shutdown(drainTimeout: .milliseconds(200))
            await #expect { try await slow.value } throws: { error in
                let status = error as? RPCError
                return status?.code == .unavailable && status?.message.contains("drain") == true
            }
            await client.close()
        }
    }
}
