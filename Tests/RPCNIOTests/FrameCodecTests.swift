import NIOCore
import NIOEmbedded
import NIOTestUtils
import RPCCore
@testable import RPCNIO
import Testing
import TollgateProto

/// The NIO frame codec: RPCCore's parser and header layout behind
/// ByteToMessageDecoder and MessageToByteEncoder.
@Suite struct FrameCodecTests {
    static let frames: [Frame] = [
        Frame(type: .settings, streamID: 0, payload: [0x08, 0x80, 0x80, 0x01]),
        Frame(type: .settings, flags: .ack, streamID: 0),
        Frame(type: .headers, flags: .endStream, streamID: 1, payload: Array("headers".utf8)),
        Frame(type: .message, streamID: 1, payload: []),
        Frame(type: .message, streamID: 3, payload: [UInt8](repeating: 0xAB, count: 5000)),
        Frame(type: .windowUpdate, streamID: 3, payload: [0, 0, 0x10, 0]),
        Frame(type: .ping, flags: .ack, streamID: 0, payload: [1, 2, 3, 4, 5, 6, 7, 8]),
        Frame(type: .endStream, streamID: 3),
        Frame(type: .trailers, streamID: 1, payload: [0x08, 0x00]),
        Frame(type: .cancel, streamID: 3, payload: [0x08, 0x01]),
        Frame(type: .goAway, streamID: 0, payload: [0x08, 0x03, 0x10, 0x01]),
    ]

    /// NIO's verifier feeds the frames whole, byte by byte and all in one
    /// buffer, and checks nothing is left over or produced twice.
    @Test func theDecoderPassesNIOsVerifier() throws {
        let pairs = Self.frames.map { (ByteBuffer(bytes: $0.bytes), [$0]) }
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) { FrameDecoderHandler(maxFrameSize: 1 << 20) }
    }

    @Test func severalFramesInOneReadComeOutInOrder() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoderHandler(maxFrameSize: 1 << 20)))
        try channel.writeInbound(ByteBuffer(bytes: Self.frames.flatMap(\.bytes)))
        for frame in Self.frames {
            #expect(try channel.readInbound(as: Frame.self) == frame)
        }
        #expect(try channel.readInbound(as: Frame.self) == nil)
        #expect(try channel.finish().isClean)
    }

    @Test func aFrameDribbledByteByByteComesOutOnceWhole() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoderHandler(maxFrameSize: 1 << 20)))
        let frame = Frame(type: .message, flags: .endStream, streamID: 7, payload: [UInt8](repeating: 0x5A, count: 300))
        for byte in frame.bytes.dropLast() {
            try channel.writeInbound(ByteBuffer(bytes: [byte]))
            #expect(try channel.readInbound(as: Frame.self) == nil)
        }
        try channel.writeInbound(ByteBuffer(bytes: [frame.bytes.last!]))
        #expect(try channel.readInbound(as: Frame.self) == frame)
        #expect(try channel.finish().isClean)
    }

    /// Only the 12 header bytes arrive: the limit is enforced on them,
    /// before any of the payload is buffered.
    @Test func anOversizeHeaderIsRefusedBeforeItsPayload() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoderHandler(maxFrameSize: 16384)))
        var header: [UInt8] = []
        FrameHeader(length: 16385, type: .message, streamID: 1).write(into: &header)
        #expect(throws: ConnectionError(.frameTooLarge, "MESSAGE frame of 16385 bytes exceeds the 16384-byte limit")) {
            try channel.writeInbound(ByteBuffer(bytes: header))
        }
        _ = try? channel.finish()
    }

    @Test func malformedHeadersAreRefusedByTheSameParser() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoderHandler(maxFrameSize: 16384)))
        #expect(throws: ConnectionError(.protocolError, "reserved header bytes are not zero")) {
            try channel.writeInbound(ByteBuffer(bytes: [0, 0, 0, 0, 0x02, 0, 0, 1, 0, 0, 0, 1]))
        }
        _ = try? channel.finish()
    }

    @Test func theEncoderWritesWhatRPCCoreEncodes() throws {
        for frame in Self.frames {
            let buffer = FrameEncoding.buffer(frame, allocator: ByteBufferAllocator())
            #expect(Array(buffer.readableBytesView) == frame.bytes)
            #expect(try buffer.frames() == [frame])
        }
    }
}

extension ByteBuffer {
    /// The frames these bytes hold, as a peer decodes them with the one parser.
    func frames() throws -> [Frame] {
        var frames: [Frame] = []
        var rest = Array(readableBytesView)[...]
        while !rest.isEmpty {
            let parsed = try rest.withUnsafeBytes { try Frame.parse($0, maxFrameSize: Int(UInt32.max)) }
            guard let (frame, count) = parsed else { throw ConnectionError(.protocolError, "bytes end inside a frame") }
            frames.append(frame)
            rest = rest.dropFirst(count)
        }
        return frames
    }
}

@Suite struct EncodedMessageTests {
    @Test func aMessageSerializesStraightIntoItsFrame() throws {
        let message = PingResponse(payload: [1, 2, 3], nodeId: "node-7")
        let encoded = try EncodedMessage(message, streamID: 9, flags: .endStream, allocator: ByteBufferAllocator())
        #expect(encoded.payloadCount == (try message.serializedBytes()).count)
        #expect(try encoded.buffer.frames() == [Frame(type: .message, flags: .endStream, streamID: 9, payload: try message.serializedBytes())])
    }

    @Test func aMessageThatCannotBeEncodedIsInternal() {
        #expect { _ = try EncodedMessage(PingResponse(nodeId: "a\u{0}b"), streamID: 1, allocator: ByteBufferAllocator()) } throws: { error in
            (error as? RPCError)?.code == .internal
        }
    }
}
