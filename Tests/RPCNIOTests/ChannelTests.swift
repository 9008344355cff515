import NIOCore
import NIOPosix
import RPCCore
import RPCNIO
import TestSupport
import Testing
import TollgateProto

@Suite(.serialized) struct ChannelTests {
    @Test func reconnectsAfterTheServerRestartsAndBacksOffMeanwhile() async throws {
        let harness = try await Harness()
        var backoff = ReconnectBackoff()
        backoff.initial = .milliseconds(200)
        backoff.jitter = 0
        let channel = RPCChannel(host: "127.0.0.1", port: harness.port, serverHostname: "localhost",
                                 tls: try harness.pki.client(as: "admin", alpn: [RPCServer.alpn]), group: harness.group, backoff: backoff)
        let first: PingResponse = try await channel.unary(Echo.unary, PingRequest(payload: [1]))
        #expect(first.payload == [1])
        let reused = try await channel.connection()
        #expect(try await channel.connection() === reused, "a healthy connection is reused")

        await harness.server.shutdown(drainTimeout: .seconds(2))
        await #expect(performing: { let _: PingResponse = try await channel.unary(Echo.unary, PingRequest()) },
                      throws: { ($0 as? RPCError)?.code == .unavailable && ($0 as? RPCError)?.message.contains("cannot reach") == true })
        // Within the backoff, calls fail at once and say when the next attempt is.
        await #expect(performing: { let _: PingResponse = try await channel.unary(Echo.unary, PingRequest()) },
                      throws: { ($0 as? RPCError)?.message.contains("next attempt in") == true })

        let restarted = RPCServer(methods: echoHandlers(), tls: try harness.pki.server(alpn: [RPCServer.alpn])) { _ in .anonymous }
        _ = try await restarted.bind(host: "127.0.0.1", port: harness.port, group: harness.group)
        try await Task.sleep(for: .milliseconds(300))
        let again: PingResponse = try await channel.unary(Echo.unary, PingRequest(payload: [2]))
        #expect(again.payload == [2])
        #expect(try await channel.connection() !== reused)
        await channel.close()
        await restarted.shutdown(drainTimeout: .seconds(2))
        try? await harness.group.shutdownGracefully()
        harness.pki.remove()
    }
}
