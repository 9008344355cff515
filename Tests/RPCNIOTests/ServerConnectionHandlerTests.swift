import NIOCore
import NIOEmbedded
import RPCCore
@testable import RPCNIO
import Testing
import TollgateListeners
import TollgateProto
@testable import TollgateTLS

/// What the TLS handler reports once a handshake is done; the tests below
/// run the connection handlers without TLS and announce this instead.
let plaintextSession = TLSSessionInfo(protocolVersion: "TLSv1.3", cipherSuite: nil, negotiatedProtocol: RPCServer.alpn, peerCertificate: nil)

/// A request's HEADERS as a client sends them.
func requestHeaders(_ id: UInt32, _ method: ProtoMethod, requestID: String? = nil, endStream: Bool = false) throws -> Frame {
    var headers = RpcRequestHeaders()
    headers.method = method.path
    if let requestID { headers.metadata = (["x-request-id": requestID] as Metadata).protoEntries }
    return Frame(type: .headers, flags: endStream ? .endStream : [], streamID: id, payload: try headers.serializedBytes())
}

func windowUpdate(_ id: UInt32, _ increment: UInt32) -> Frame {
    Frame(type: .windowUpdate, streamID: id, payload: withUnsafeBytes(of: increment.bigEndian) { Array($0) })
}

/// A ServerConnectionHandler on an EmbeddedChannel, without TLS: the test
/// plays the client with frames. The echo methods run on the channel's
/// (embedded) loop, so a whole call completes within one `run()`.
final class EmbeddedServer {
    let channel = EmbeddedChannel()
    /// The request bytes the server holds, as its own accounting counts them.
    let gauge: RequestBufferGauge
    /// What the listener would know of the connection.
    let standing = ConnectionStanding()

    /// - Parameters:
    ///   - caller: who every call is, once authorized; anonymous leaves the
    ///     connection unauthenticated, with the budgets of strangers.
    ///   - gauge: the node-wide gauge, to share one between connections.
    ///   - withDecoder: the frame decoder in front, for tests that send bytes.
    init(limits: RPCLimits = RPCLimits(), caller: Caller = .anonymous, gauge: RequestBufferGauge? = nil, withDecoder: Bool = false,
         session: TLSSessionInfo = plaintextSession) throws {
        let methods = echoHandlers().map { $0.placed(.eventLoop) }
        let gauge = gauge ?? RequestBufferGauge(limit: limits.maxBufferedBytes, unauthenticatedLimitPerAddress: limits.unauthenticatedMaxBufferedBytesPerAddress)
        self.gauge = gauge
        let budget = ConnectionBudget(gauge: gauge, limits: limits, address: "127.0.0.1")
        let handler = ServerConnectionHandler(methods: Dictionary(uniqueKeysWithValues: methods.map { ($0.method.path, $0) }),
                                              limits: limits, observer: nil, authorizer: ClosureAuthorizer { _ in caller }, budget: budget,
                                              standing: standing)
        if withDecoder {
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoderHandler(maxFrameSize: limits.maxFrameSize, budget: budget)))
        }
        try channel.pipeline.syncOperations.addHandler(handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 443)).wait()
        channel.pipeline.fireUserInboundEventTriggered(TLSEvent.handshakeCompleted(session))
        channel.embeddedEventLoop.run()
    }

    /// Delivers frames as the decoder would, then lets the loop turn (handlers, flush).
    func receive(_ frames: Frame...) throws {
        for frame in frames { try channel.writeInbound(frame) }
        channel.embeddedEventLoop.run()
    }

    /// Everything the server has flushed since the last call.
    func written() throws -> [Frame] {
        channel.embeddedEventLoop.run()
        var frames: [Frame] = []
        while let bytes = try channel.readOutbound(as: ByteBuffer.self) { frames += try bytes.frames() }
        return frames
    }

    /// Past the SETTINGS exchange, with the server's frames so far read.
    func settle() throws {
        try receive(RPCLimits().settingsFrame, .settingsAck)
        _ = try written()
    }
}

func decodedGoAway(_ frames: [Frame]) -> RpcGoAway? {
    frames.last { $0.header.type == .goAway }.flatMap { try? RpcGoAway(serializedBytes: $0.payload) }
}

@Suite struct ServerConnectionHandlerTests {
    @Test func theServerSpeaksFirstAndAClientMustStartWithSettings() throws {
        let server = try EmbeddedServer()
        #expect(try server.written() == [RPCLimits().settingsFrame], "the server's SETTINGS go out as TLS completes")
        try server.receive(Frame(type: .ping, streamID: 0, payload: [UInt8](repeating: 1, count: 8)))
        let goAway = try #require(decodedGoAway(try server.written()))
        #expect(goAway.reason == .protocolError && goAway.message == "the first frame must be SETTINGS, not PING")
        #expect(!server.channel.isActive)
    }

    @Test func settingsAreAcknowledgedOnce() throws {
        let server = try EmbeddedServer()
        _ = try server.written()
        try server.receive(RPCLimits().settingsFrame)
        #expect(try server.written() == [.settingsAck])
        try server.receive(RPCLimits().settingsFrame)
        #expect(decodedGoAway(try server.written())?.message == "a second SETTINGS")
        #expect(!server.channel.isActive)
    }

    @Test func aUnaryCallEndToEnd() throws {
        let server = try EmbeddedServer()
        try server.settle()
        let request = PingRequest(payload: [1, 2, 3])
        try server.receive(requestHeaders(1, Echo.unary, requestID: "call-1"),
                           Frame(type: .message, flags: .endStream, streamID: 1, payload: request.serializedBytes()))
        let frames = try server.written()
        // The unary fast path: the response and the trailers together, no HEADERS.
        #expect(frames.map(\.header.type) == [.message, .trailers])
        #expect(frames.allSatisfy { $0.header.streamID == 1 })
        let response = try PingResponse(serializedBytes: frames[0].payload)
        #expect(response.payload == [1, 2, 3] && response.nodeId == "anonymous")
        let trailers = try RpcTrailers(serializedBytes: frames[1].payload)
        #expect(trailers.code == RPCCode.ok.rawValue)
        #expect(Metadata(protoEntries: trailers.metadata)["x-request-id"] == "call-1")
        #expect(server.channel.isActive)
    }

    @Test func unknownMethodsAreAnsweredInTrailersAndTheConnectionStays() throws {
        let server = try EmbeddedServer()
        try server.settle()
        let missing = ProtoMethod(service: "tollgate.test.Echo", name: "Missing", inputType: "", outputType: "", clientStreaming: false, serverStreaming: false)
        try server.receive(requestHeaders(1, missing, endStream: true))
        let frames = try server.written()
        #expect(frames.map(\.header.type) == [.trailers])
        #expect(try RpcTrailers(serializedBytes: frames[0].payload).code == RPCCode.unimplemented.rawValue)
        // Its id is used up all the same.
        try server.receive(requestHeaders(1, Echo.unary))
        #expect(decodedGoAway(try server.written())?.message == "stream id 1 is not greater than 1")
    }

    @Test func aConnectionWithoutALPNIsClosedWithoutAFrame() throws {
        let withoutALPN = TLSSessionInfo(protocolVersion: "TLSv1.3", cipherSuite: nil, negotiatedProtocol: nil, peerCertificate: nil)
        let server = try EmbeddedServer(session: withoutALPN)
        #expect(try server.written().isEmpty, "not even SETTINGS")
        #expect(!server.channel.isActive)
    }

    @Test func pingsAreAnswered() throws {
        let server = try EmbeddedServer()
        try server.settle()
        let payload: [UInt8] = [9, 8, 7, 6, 5, 4, 3, 2]
        try server.receive(Frame(type: .ping, streamID: 0, payload: payload))
        #expect(try server.written() == [.pingAck(payload: payload)])
    }

    @Test(arguments: [(UInt32(0), "WINDOW_UPDATE with increment 0"), (UInt32(Int32.max), "WINDOW_UPDATE raises the window above 2147483647")])
    func aBadWindowUpdateClosesTheConnection(increment: UInt32, message: String) throws {
        let server = try EmbeddedServer()
        try server.settle()
        // Stream 1 is open, waiting for its request.
        try server.receive(requestHeaders(1, Echo.unary))
        #expect(try server.written().isEmpty)
        try server.receive(windowUpdate(1, increment))
        let goAway = try #require(decodedGoAway(try server.written()))
        #expect(goAway.reason == .protocolError && goAway.message == message && goAway.lastStreamId == 1)
        #expect(!server.channel.isActive)
    }

    @Test func quiescingSendsGoAwayFinishesOpenCallsThenCloses() throws {
        let server = try EmbeddedServer()
        try server.settle()
        try server.receive(requestHeaders(1, Echo.unary))
        server.channel.pipeline.fireUserInboundEventTriggered(ServerConnectionHandler.Quiesce())
        let goAway = try #require(decodedGoAway(try server.written()))
        #expect(goAway.reason == .shutdown && goAway.lastStreamId == 1)
        #expect(server.channel.isActive, "stream 1 is still open")
        // A stream above last_stream_id is not processed.
        try server.receive(requestHeaders(3, Echo.unary, endStream: true))
        #expect(try server.written().isEmpty)
        // Stream 1 completes, and with nothing left open the server closes.
        try server.receive(Frame(type: .message, flags: .endStream, streamID: 1, payload: PingRequest(payload: [5]).serializedBytes()))
        #expect(try server.written().map(\.header.type) == [.message, .trailers])
        #expect(!server.channel.isActive)
    }

    @Test func aMessageBeyondTheReceiveWindowCancelsOnlyItsStream() throws {
        var limits = RPCLimits()
        limits.initialWindowSize = 16
        let server = try EmbeddedServer(limits: limits)
        try server.settle()
        try server.receive(requestHeaders(1, Echo.collect))
        _ = try server.written()
        // 32 bytes against a 16-byte window: accepted (the window was
        // open), consumed by the handler and granted back.
        try server.receive(Frame(type: .message, streamID: 1, payload: PingRequest(payload: [UInt8](repeating: 1, count: 30)).serializedBytes()))
        var frames = try server.written()
        #expect(frames.map(\.header.type) == [.windowUpdate])
        // Two messages in one read, before the handler can consume: the
        // first takes the window below zero, the second is refused.
        try server.receive(Frame(type: .message, streamID: 1, payload: PingRequest(payload: [UInt8](repeating: 2, count: 20)).serializedBytes()),
                           Frame(type: .message, streamID: 1, payload: PingRequest(payload: [3]).serializedBytes()))
        frames = try server.written()
        let cancel = try #require(frames.first { $0.header.type == .cancel })
        #expect(try RpcCancel(serializedBytes: cancel.payload).code == RPCCode.resourceExhausted.rawValue)
        #expect(server.channel.isActive)
    }
}
