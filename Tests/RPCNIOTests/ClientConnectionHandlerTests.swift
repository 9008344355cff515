import NIOCore
import NIOEmbedded
import RPCCore
@testable import RPCNIO
import Synchronization
import TestSupport
import Testing
import TollgateProto
import TollgateTLS

/// Set once a future succeeds, readable from the test.
final class Flag: Sendable {
    let value = Atomic<Bool>(false)
    var isSet: Bool { value.load(ordering: .relaxed) }
}

/// A ClientConnectionHandler on a NIOAsyncTestingChannel, without TLS, under
/// a real ``RPCConnection``: the test plays the server with scripted frames.
/// (The asynchronous testing channel, because calls wait on the loop's
/// answers from other tasks.)
struct ScriptedServer {
    let channel: NIOAsyncTestingChannel
    let connection: RPCConnection
    let ready: EventLoopFuture<Void>
    let isReady = Flag()

    init(limits: RPCLimits = RPCLimits()) async throws {
        let channel = NIOAsyncTestingChannel()
        let ready = channel.eventLoop.makePromise(of: Void.self)
        let goingAway = GoAwayFlag()
        let handler = try await channel.testingEventLoop.executeInContext {
            let handler = ClientConnectionHandler(limits: limits, ready: ready, goingAway: goingAway)
            try channel.pipeline.syncOperations.addHandler(handler)
            return NIOLoopBound(handler, eventLoop: channel.eventLoop)
        }
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 443)).get()
        self.channel = channel
        self.ready = ready.futureResult
        self.connection = RPCConnection(channel: channel, handler: handler, goingAway: goingAway)
        let isReady = self.isReady
        ready.futureResult.whenSuccess { isReady.value.store(true, ordering: .relaxed) }
        channel.pipeline.fireUserInboundEventTriggered(TLSEvent.handshakeCompleted(plaintextSession))
        await channel.testingEventLoop.run()
    }

    /// Delivers a frame from the "server", then lets the loop turn.
    func send(_ frame: Frame) async throws {
        try await channel.writeInbound(frame)
        await channel.testingEventLoop.run()
    }

    /// The next frame the client writes.
    func next() async throws -> Frame {
        try await channel.waitForOutboundWrite(as: ByteBuffer.self).frames().first!
    }

    /// Past the SETTINGS exchange, with the client's frames so far read.
    func settle(_ settings: ConnectionSettings = ConnectionSettings()) async throws {
        #expect(try await next() == RPCLimits().settingsFrame)
        try await send(settings.frame)
        #expect(try await next() == .settingsAck)
        try await send(.settingsAck)
    }

    func finish() async {
        _ = try? await channel.finish(acceptAlreadyClosed: true)
    }
}

@Suite struct ClientConnectionHandlerTests {
    @Test func settingsGoFirstAndTheConnectionIsReadyOnTheServersSettings() async throws {
        let server = try await ScriptedServer()
        #expect(try await server.next() == RPCLimits().settingsFrame)
        #expect(!server.isReady.isSet, "not ready before the server's SETTINGS")
        try await server.send(ConnectionSettings(maxConcurrentStreams: 3).frame)
        try await server.ready.get()
        #expect(try await server.next() == .settingsAck)
        #expect(await server.connection.isUsable)
        await server.finish()
    }

    @Test func aFirstFrameOtherThanSettingsIsAProtocolError() async throws {
        let server = try await ScriptedServer()
        _ = try await server.next()
        try await server.send(Frame(type: .ping, streamID: 0, payload: [UInt8](repeating: 0, count: 8)))
        let goAway = try RpcGoAway(serializedBytes: try await server.next().payload)
        #expect(goAway.reason == .protocolError && goAway.lastStreamId == 0)
        await #expect(throws: RPCError.self) { try await server.ready.get() }
        #expect(!server.channel.isActive)
        await server.finish()
    }

    @Test func aUnaryCallAgainstScriptedFrames() async throws {
        let server = try await ScriptedServer()
        try await server.settle()
        let connection = server.connection
        var options = CallOptions()
        options.metadata.add("x-request-id", "scripted-1")
        let reply = Task { () async throws -> PingResponse in try await connection.unary(Echo.unary, PingRequest(payload: [4, 5]), options: options) }

        // HEADERS and the request, END_STREAM on the request.
        let headers = try await server.next()
        #expect(headers.header.type == .headers && headers.header.streamID == 1 && !headers.header.flags.contains(.endStream))
        let decoded = try RpcRequestHeaders(serializedBytes: headers.payload)
        #expect(decoded.method == Echo.unary.path && Metadata(protoEntries: decoded.metadata)["x-request-id"] == "scripted-1")
        let request = try await server.next()
        #expect(request == Frame(type: .message, flags: .endStream, streamID: 1, payload: PingRequest(payload: [4, 5]).serializedBytes()))

        try await server.send(Frame(type: .headers, streamID: 1, payload: RpcResponseHeaders().serializedBytes()))
        try await server.send(Frame(type: .message, streamID: 1, payload: PingResponse(payload: [5, 4], nodeId: "scripted").serializedBytes()))
        try await server.send(.trailers(streamID: 1, error: nil, metadata: Metadata()))
        let response = try await reply.value
        #expect(response.payload == [5, 4] && response.nodeId == "scripted")
        await server.finish()
    }

    @Test func pingsAreAnswered() async throws {
        let server = try await ScriptedServer()
        try await server.settle()
        let payload: [UInt8] = [1, 1, 2, 3, 5, 8, 13, 21]
        try await server.send(Frame(type: .ping, streamID: 0, payload: payload))
        #expect(try await server.next() == .pingAck(payload: payload))
        await server.finish()
    }

    @Test func aBadWindowUpdateClosesTheConnectionAndFailsItsCalls() async throws {
        let server = try await ScriptedServer()
        try await server.settle()
        let connection = server.connection
        let reply = Task { () async throws -> PingResponse in try await connection.unary(Echo.unary, PingRequest()) }
        _ = try await server.next()  // HEADERS
        _ = try await server.next()  // the request
        try await server.send(windowUpdate(1, 0))
        let goAway = try RpcGoAway(serializedBytes: try await server.next().payload)
        #expect(goAway.reason == .protocolError && goAway.message == "WINDOW_UPDATE with increment 0" && goAway.lastStreamId == 0)
        await #expect { try await reply.value } throws: { ($0 as? RPCError)?.code == .unavailable }
        #expect(!server.channel.isActive)
        await server.finish()
    }

    @Test func goAwayFailsTheCallsItDidNotProcessAndClosesTheConnection() async throws {
        let server = try await ScriptedServer()
        try await server.settle()
        let connection = server.connection
        let reply = Task { () async throws -> PingResponse in try await connection.unary(Echo.unary, PingRequest()) }
        _ = try await server.next()
        _ = try await server.next()
        try await server.send(.goAway(lastStreamID: 0, reason: .shutdown, message: "server shutting down"))
        await #expect { try await reply.value } throws: { error in
            let status = error as? RPCError
            return status?.code == .unavailable && status?.message.contains("not processed") == true
        }
        #expect(!connection.acceptsCalls)
        #expect(!server.channel.isActive)
        await server.finish()
    }

    @Test func callsBeyondTheServersStreamLimitWaitForASlot() async throws {
        let server = try await ScriptedServer()
        try await server.settle(ConnectionSettings(maxConcurrentStreams: 1))
        let connection = server.connection
        let first = Task { () async throws -> PingResponse in try await connection.unary(Echo.unary, PingRequest(payload: [1])) }
        _ = try await server.next()
        _ = try await server.next()
        let second = Task { () async throws -> PingResponse in try await connection.unary(Echo.unary, PingRequest(payload: [2])) }
        // The second call has reached the loop and is queued there; only
        // then does "nothing written" mean it waits rather than "not yet".
        try await eventually("the second call to be queued for a stream slot") { try await connection._testOnly_pendingCount == 1 }
        await server.channel.testingEventLoop.run()
        #expect(try await server.channel.readOutbound(as: ByteBuffer.self) == nil, "the second call waits")
        try await server.send(Frame(type: .message, streamID: 1, payload: PingResponse(payload: [1]).serializedBytes()))
        try await server.send(.trailers(streamID: 1, error: nil, metadata: Metadata()))
        let firstReply = try await first.value
        #expect(firstReply.payload == [1])
        let headers = try await server.next()
        #expect(headers.header.type == .headers && headers.header.streamID == 2)
        _ = try await server.next()
        try await server.send(Frame(type: .message, streamID: 2, payload: PingResponse(payload: [2]).serializedBytes()))
        try await server.send(.trailers(streamID: 2, error: nil, metadata: Metadata()))
        let secondReply = try await second.value
        #expect(secondReply.payload == [2])
        await server.finish()
    }
}
