import NIOCore
import NIOEmbedded
import RPCCore
@testable import RPCNIO
import Testing
import TollgateProto

/// The memory budgets of docs/rpc-protocol.md §9: what a peer, above all
/// one that has authenticated nothing, can make the server hold. Memory is
/// read from the server's own accounting (``RequestBufferGauge``).
@Suite struct RequestBudgetTests {
    /// A MESSAGE of `count` bytes without END_STREAM: a request the server
    /// must hold until the client half-closes.
    func heldMessage(_ id: UInt32, _ count: Int) -> Frame {
        Frame(type: .message, streamID: id, payload: [UInt8](repeating: 7, count: count))
    }

    func cancels(_ frames: [Frame]) -> [UInt32: RpcCancel] {
        Dictionary(uniqueKeysWithValues: frames.filter { $0.header.type == .cancel }.compactMap { frame in
            (try? RpcCancel(serializedBytes: frame.payload)).map { (frame.header.streamID, $0) }
        })
    }

    /// One complete call, which authenticates the connection when the
    /// server's authorizer names a caller.
    func completeCall(_ server: EmbeddedServer, id: UInt32) throws {
        try server.receive(requestHeaders(id, Echo.unary), Frame(type: .message, flags: .endStream, streamID: id, payload: PingRequest().serializedBytes()))
        let frames = try server.written()
        #expect(frames.last?.header.type == .trailers)
    }

    @Test func aStrangerGetsFewStreams() throws {
        let limits = RPCLimits()
        let server = try EmbeddedServer(limits: limits)
        try server.settle()
        for id in 1...UInt32(limits.unauthenticatedMaxConcurrentStreams + 1) { try server.receive(requestHeaders(id, Echo.unary)) }
        let refused = cancels(try server.written())
        #expect(refused.keys.sorted() == [UInt32(limits.unauthenticatedMaxConcurrentStreams + 1)])
        #expect(refused.values.first?.code == RPCCode.resourceExhausted.rawValue)
        #expect(server.channel.isActive, "refusing a stream keeps the connection")
    }

    @Test func aStrangersHeldRequestsAreBoundedThenTheConnectionGoesAway() throws {
        var limits = RPCLimits()
        limits.unauthenticatedMaxBufferedBytes = 40 * 1024
        let server = try EmbeddedServer(limits: limits)
        try server.settle()
        // The attack: Login-sized streams whose requests never finish.
        try server.receive(requestHeaders(1, Echo.unary), heldMessage(1, 16 * 1024), requestHeaders(2, Echo.unary), heldMessage(2, 16 * 1024))
        #expect(server.gauge.bufferedBytes == 32 * 1024)
        #expect(server.gauge.unauthenticatedBytes(from: "127.0.0.1") == 32 * 1024)
        #expect(cancels(try server.written()).isEmpty)
        try server.receive(requestHeaders(3, Echo.unary), heldMessage(3, 16 * 1024))
        let frames = try server.written()
        #expect(cancels(frames)[3]?.code == RPCCode.resourceExhausted.rawValue)
        let goAway = try #require(decodedGoAway(frames))
        #expect(goAway.reason == .resourceExhausted && goAway.lastStreamId == 3)
        #expect(!server.channel.isActive)
        #expect(server.gauge.bufferedBytes == 0 && server.gauge.unauthenticatedBytes(from: "127.0.0.1") == 0, "a closed connection holds nothing")
    }

    @Test func aStrangerCannotAnnounceALargeFrame() throws {
        let server = try EmbeddedServer(withDecoder: true)
        _ = try server.written()
        var bytes = RPCLimits().settingsFrame.bytes + Frame.settingsAck.bytes + (try requestHeaders(1, Echo.unary)).bytes
        // A 4 MiB request (allowed by max_frame_size) of which only the start arrives.
        FrameHeader(length: 4 * 1024 * 1024, type: .message, flags: [], streamID: 1).write(into: &bytes)
        bytes += [UInt8](repeating: 0, count: 1000)
        try server.channel.writeInbound(ByteBuffer(bytes: bytes))
        let goAway = try #require(decodedGoAway(try server.written()))
        #expect(goAway.reason == .resourceExhausted)
        #expect(goAway.message == "a frame of 4194304 bytes before the connection authenticated; the limit is 16384")
        #expect(!server.channel.isActive)
        #expect(server.gauge.bufferedBytes == 0)
    }

    @Test func aFrameStillArrivingIsReservedBeforeItsBytesAreBuffered() throws {
        var limits = RPCLimits()
        limits.maxBufferedBytes = 1024 * 1024
        let server = try EmbeddedServer(limits: limits, caller: .node(id: "node-b", roles: ["gateway"]), withDecoder: true)
        _ = try server.written()
        var bytes = RPCLimits().settingsFrame.bytes + Frame.settingsAck.bytes + (try requestHeaders(1, Echo.unary)).bytes
        bytes += Frame(type: .message, flags: .endStream, streamID: 1, payload: PingRequest().serializedBytes()).bytes
        try server.channel.writeInbound(ByteBuffer(bytes: bytes))
        #expect(try server.written().last?.header.type == .trailers, "a call with an identity authenticates the connection")

        let request = PingRequest(payload: [UInt8](repeating: 1, count: 600 * 1024)).serializedBytes()
        var header: [UInt8] = []
        FrameHeader(length: UInt32(request.count), type: .message, flags: .endStream, streamID: 3).write(into: &header)
        try server.channel.writeInbound(ByteBuffer(bytes: (try requestHeaders(3, Echo.unary)).bytes + header + request.prefix(1000)))
        #expect(server.gauge.bufferedBytes == request.count, "the whole announced payload is reserved at its header")
        try server.channel.writeInbound(ByteBuffer(bytes: request.dropFirst(1000)))
        #expect(try server.written().last?.header.type == .trailers)
        #expect(server.gauge.bufferedBytes == 0, "handed to the handler, then answered")

        // Beyond the node's cap: refused at the header, before the bytes.
        FrameHeader(length: 2 * 1024 * 1024, type: .message, flags: .endStream, streamID: 5).write(into: &header)
        try server.channel.writeInbound(ByteBuffer(bytes: (try requestHeaders(5, Echo.unary)).bytes + header.suffix(FrameHeader.byteCount)))
        let goAway = try #require(decodedGoAway(try server.written()))
        #expect(goAway.reason == .resourceExhausted && goAway.message.hasPrefix("the node holds 0 bytes of unfinished requests"))
        #expect(server.gauge.bufferedBytes == 0)
    }

    @Test func theNodeWideCapIsSharedByConnectionsAndFreedByCancel() throws {
        var limits = RPCLimits()
        limits.maxBufferedBytes = 100 * 1024
        let gauge = RequestBufferGauge(limit: limits.maxBufferedBytes, unauthenticatedLimitPerAddress: limits.unauthenticatedMaxBufferedBytesPerAddress)
        let caller = Caller.node(id: "node-b", roles: ["gateway"])
        let first = try EmbeddedServer(limits: limits, caller: caller, gauge: gauge)
        let second = try EmbeddedServer(limits: limits, caller: caller, gauge: gauge)
        for server in [first, second] {
            try server.settle()
            try completeCall(server, id: 1)
        }
        try first.receive(requestHeaders(3, Echo.unary), heldMessage(3, 64 * 1024))
        #expect(gauge.bufferedBytes == 64 * 1024)
        try second.receive(requestHeaders(3, Echo.unary), heldMessage(3, 64 * 1024))
        let refused = cancels(try second.written())
        #expect(refused[3]?.code == RPCCode.resourceExhausted.rawValue)
        #expect(second.channel.isActive, "an authenticated connection loses the stream, not the connection")
        #expect(gauge.bufferedBytes == 64 * 1024)

        try first.receive(Frame.cancel(streamID: 3, code: .cancelled, message: ""))
        #expect(gauge.bufferedBytes == 0)
        try second.receive(requestHeaders(5, Echo.unary), heldMessage(5, 64 * 1024))
        #expect(cancels(try second.written()).isEmpty)
        #expect(gauge.bufferedBytes == 64 * 1024)
    }

    @Test func anAuthenticatedConnectionHasTheFullLimits() throws {
        let limits = RPCLimits()
        let server = try EmbeddedServer(limits: limits, caller: .user(UserPrincipal(username: "alice", tenant: "carbon.super", roles: [], permissions: [], sessionID: nil, sessionExpiresAtUnixMs: 0)))
        try server.settle()
        try completeCall(server, id: 1)
        for id in 0..<UInt32(limits.unauthenticatedMaxConcurrentStreams + 2) {
            try server.receive(requestHeaders(3 + 2 * id, Echo.unary), heldMessage(3 + 2 * id, 20 * 1024))
        }
        #expect(cancels(try server.written()).isEmpty)
        #expect(server.gauge.bufferedBytes == (limits.unauthenticatedMaxConcurrentStreams + 2) * 20 * 1024)
        #expect(server.gauge.unauthenticatedBytes(from: "127.0.0.1") == 0)
    }
}
