// Feeds arbitrary bytes to the frame decoder in arbitrary chunkings: it must
// return frames or a ConnectionError, never crash, hang or over-allocate, and
// every frame it returns must re-encode to the bytes it came from. The
// decoder parses with `Frame.parse`, the parser the NIO transport uses too.
//
// The frames then go to a server's and a client's ConnectionStateMachine,
// which must answer every sequence with an action, never a crash.
import RPCCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrames(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let first = bytes.first else { return 0 }
    // The first byte picks the chunk size, so the fuzzer explores splits too.
    let chunk = Int(first % 32) + 1
    var decoder = FrameDecoder(maxFrameSize: 64 * 1024)
    var server = ConnectionStateMachine(role: .server, local: ConnectionSettings(maxConcurrentStreams: 4, initialWindowSize: 1024))
    var client = ConnectionStateMachine(role: .client, local: ConnectionSettings(initialWindowSize: 1024))
    // Streams 1 to 3 are open, so the client's side sees stream frames too.
    for _ in 0..<3 { _ = client.openStream() }
    var consumed: [UInt8] = []
    var index = 1
    do {
        while index < bytes.count {
            let piece = bytes[index..<min(index + chunk, bytes.count)]
            decoder.append(piece)
            index += piece.count
            while let frame = try decoder.next() {
                consumed += frame.bytes
                _ = server.receive(frame)
                _ = client.receive(frame)
            }
        }
    } catch {
        return 0
    }
    // Whatever was decoded is exactly the prefix of the input.
    precondition(Array(bytes[1..<(1 + consumed.count)]) == consumed, "decoded frames do not re-encode to their input")
    return 0
}
