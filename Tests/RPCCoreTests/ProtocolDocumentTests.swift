import Foundation
import RPCCore
import Testing
import TollgateProto

/// The worked example in docs/rpc-protocol.md, decoded and re-encoded by the
/// Swift side: the document and the implementation must agree byte for byte.
@Suite struct ProtocolDocumentTests {
    static let document = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("docs/rpc-protocol.md")

    /// (sender, bytes) of each frame line between the example markers.
    func exampleFrames() throws -> [(String, [UInt8])] {
        let text = try String(contentsOf: Self.document, encoding: .utf8)
        let begin = try #require(text.range(of: "<!-- example-begin -->"))
        let end = try #require(text.range(of: "<!-- example-end -->"))
        return text[begin.upperBound..<end.lowerBound].split(separator: "\n").compactMap { line in
            guard line.hasPrefix("C: ") || line.hasPrefix("S: ") else { return nil }
            let hex = line.dropFirst(3).filter { !$0.isWhitespace }
            var bytes: [UInt8] = []
            var index = hex.startIndex
            while index < hex.endIndex {
                let next = hex.index(index, offsetBy: 2)
                bytes.append(UInt8(hex[index..<next], radix: 16)!)
                index = next
            }
            return (String(line.prefix(1)), bytes)
        }
    }

    func reencode<M: ProtoMessage>(_ type: M.Type, _ payload: [UInt8]) throws -> [UInt8] {
        try M(serializedBytes: payload).serializedBytes()
    }

    @Test func theWorkedExampleRoundTrips() throws {
        let frames = try exampleFrames()
        #expect(frames.count == 9)
        var method: String?
        for (sender, bytes) in frames {
            var decoder = FrameDecoder(maxFrameSize: 4 << 20)
            decoder.append(bytes)
            let frame = try #require(try decoder.next())
            #expect(decoder.bufferedByteCount == 0)
            #expect(frame.bytes == bytes)
            let payload = frame.payload
            let again: [UInt8]
            switch (sender, frame.header.type) {
            case (_, .settings): again = try reencode(RpcSettings.self, payload)
            case ("C", .headers):
                let headers = try RpcRequestHeaders(serializedBytes: payload)
                method = headers.method
                #expect(headers.timeoutMs == 5000)
                again = try headers.serializedBytes()
            case ("S", .headers): again = try reencode(RpcResponseHeaders.self, payload)
            case ("C", .message): again = try reencode(PingRequest.self, payload)
            case ("S", .message): again = try reencode(PingResponse.self, payload)
            case (_, .trailers):
                let trailers = try RpcTrailers(serializedBytes: payload)
                #expect(trailers.code == RPCCode.ok.rawValue)
                again = try trailers.serializedBytes()
            default:
                Issue.record("unexpected \(frame.header.type) from \(sender)")
                again = payload
            }
            #expect(again == payload, "\(sender) \(frame.header.type)")
        }
        #expect(method == NodeServiceDescriptor.ping.path)
    }
}
