import RPCCore
import Testing

/// A few frames of every kind, as one byte stream.
let sampleFrames: [Frame] = [
    Frame(type: .settings, streamID: 0, payload: [0x08, 0x64]),
    Frame(type: .headers, streamID: 1, payload: Array("headers".utf8)),
    Frame(type: .message, flags: .endStream, streamID: 1, payload: []),
    Frame(type: .message, streamID: 3, payload: Array(repeating: 0xAB, count: 5000)),
    Frame(type: .windowUpdate, streamID: 3, payload: [0, 0, 0x10, 0]),
    Frame(type: .ping, streamID: 0, payload: [1, 2, 3, 4, 5, 6, 7, 8]),
    Frame(type: .endStream, streamID: 3),
    Frame(type: .trailers, streamID: 1, payload: [0x08, 0x00]),
    Frame(type: .cancel, streamID: 3, payload: [0x08, 0x01]),
    Frame(type: .goAway, streamID: 0, payload: [0x08, 0x03, 0x10, 0x01]),
]

func decodeAll(_ chunks: [[UInt8]], maxFrameSize: Int = 1 << 20) throws -> [Frame] {
    var decoder = FrameDecoder(maxFrameSize: maxFrameSize)
    var frames: [Frame] = []
    for chunk in chunks {
        decoder.append(chunk)
        while let frame = try decoder.next() { frames.append(frame) }
    }
    #expect(decoder.bufferedByteCount == 0)
    return frames
}

@Suite struct FrameTests {
    let stream = sampleFrames.flatMap(\.bytes)

    @Test func headerLayoutMatchesTheDocument() {
        let frame = Frame(type: .message, flags: .endStream, streamID: 0x0102_0304, payload: [0xAA, 0xBB])
        #expect(frame.bytes == [0, 0, 0, 2, 0x02, 0x01, 0, 0, 0x01, 0x02, 0x03, 0x04, 0xAA, 0xBB])
    }

    @Test func decodesWhole() throws {
        #expect(try decodeAll([stream]) == sampleFrames)
    }

    @Test func decodesByteByByte() throws {
        #expect(try decodeAll(stream.map { [$0] }) == sampleFrames)
    }

    @Test(arguments: [1, 2, 7, 13, 100, 4097])
    func decodesRandomChunks(seed: Int) throws {
        var generator = SeededGenerator(seed: UInt64(seed))
        var chunks: [[UInt8]] = []
        var index = 0
        while index < stream.count {
            let size = Int.random(in: 1...300, using: &generator)
            chunks.append(Array(stream[index..<min(index + size, stream.count)]))
            index += size
        }
        #expect(try decodeAll(chunks) == sampleFrames)
    }

    @Test func parseTakesOneFrameFromTheFrontOfItsBytes() throws {
        let two = sampleFrames[1].bytes + sampleFrames[2].bytes
        try two.withUnsafeBytes { bytes in
            let (frame, byteCount) = try #require(try Frame.parse(bytes, maxFrameSize: 1 << 20))
            #expect(frame == sampleFrames[1] && byteCount == sampleFrames[1].bytes.count)
            // Short of a whole frame, at any length: nothing yet.
            for length in 0..<byteCount {
                #expect(try Frame.parse(UnsafeRawBufferPointer(rebasing: bytes[0..<length]), maxFrameSize: 1 << 20) == nil)
            }
        }
    }

    @Test func oversizeFramesAreRefusedFromTheHeader() {
        // Only the header arrives: the limit is enforced before any payload.
        let header = Array(Frame(type: .message, streamID: 1, payload: Array(repeating: 0, count: 2000)).bytes.prefix(12))
        #expect(throws: ConnectionError(.frameTooLarge, "MESSAGE frame of 2000 bytes exceeds the 1000-byte limit")) {
            _ = try decodeAll([header], maxFrameSize: 1000)
        }
    }

    @Test func malformedHeadersAreConnectionErrors() {
        let cases: [([UInt8], ConnectionError.Reason)] = [
            ([0, 0, 0, 0, 0x09, 0, 0, 0, 0, 0, 0, 1], .protocolError),  // unknown type
            ([0, 0, 0, 0, 0x02, 0, 0, 1, 0, 0, 0, 1], .protocolError),  // reserved byte set
            ([0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0], .protocolError),  // MESSAGE on stream 0
            ([0, 0, 0, 0, 0x00, 0, 0, 0, 0, 0, 0, 5], .protocolError),  // SETTINGS on a stream
            ([0, 0, 0, 4, 0x06, 0, 0, 0, 0, 0, 0, 0], .protocolError),  // PING of 4 bytes
            ([0, 0, 0, 2, 0x05, 0, 0, 0, 0, 0, 0, 1], .protocolError),  // WINDOW_UPDATE of 2 bytes
            ([0, 0, 0, 1, 0x08, 0, 0, 0, 0, 0, 0, 1], .protocolError),  // END_STREAM with payload
            ([0, 0, 0, 1, 0x00, 1, 0, 0, 0, 0, 0, 0], .protocolError),  // SETTINGS ACK with payload
            ([0xFF, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 1], .frameTooLarge),
        ]
        for (bytes, reason) in cases {
            do {
                _ = try decodeAll([bytes])
                Issue.record("accepted \(bytes)")
            } catch {
                #expect((error as? ConnectionError)?.reason == reason, "\(bytes): \(error)")
            }
        }
    }
}

/// SplitMix64, so random chunkings are reproducible.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
