import NIOCore
import RPCCore
@testable import RPCNIO
import Testing
import TollgateProto

/// Request ids the server makes up when a client sends none: unique across
/// connections (and so across restarts and nodes), one per call.
@Suite struct RequestIDTests {
    /// The id a server connection gives its `n`th unary call (stream ids 1, 3, 5…).
    func generatedIDs(calls: Int) throws -> [String] {
        let server = try EmbeddedServer()
        try server.settle()
        var ids: [String] = []
        for index in 0..<calls {
            let stream = UInt32(2 * index + 1)
            try server.receive(requestHeaders(stream, Echo.unary),
                               Frame(type: .message, flags: .endStream, streamID: stream, payload: PingRequest(payload: [1]).serializedBytes()))
            let trailers = try #require(try server.written().first { $0.header.type == .trailers })
            ids.append(try #require(Metadata(protoEntries: try RpcTrailers(serializedBytes: trailers.payload).metadata)["x-request-id"]))
        }
        return ids
    }

    @Test func generatedIDsDifferAcrossCallsAndConnections() throws {
        let first = try generatedIDs(calls: 3)
        let second = try generatedIDs(calls: 3)
        #expect(Set(first + second).count == 6, "\(first) \(second)")
        // The same call position on two connections (what a restart repeats) differs.
        #expect(first[0] != second[0])
        for id in first + second {
            let parts = id.split(separator: "-")
            #expect(parts.count == 2 && parts[0].count == 16 && UInt64(parts[0], radix: 16) != nil, "\(id)")
        }
    }
}
