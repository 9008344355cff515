import Foundation
import NIOCore
import NIOPosix
import RPCCore
import RPCNIO
import TestSupport
import Testing
import TollgateProto

@Suite(.serialized) struct ChannelTests {
    /// The milliseconds in "next attempt in N ms".
    func nextAttempt(_ error: any Error) -> Int64? {
        guard let message = (error as? RPCError)?.message, let range = message.range(of: "next attempt in ") else { return nil }
        return Int64(message[range.upperBound...].prefix { $0.isNumber })
    }

    @Test func reconnectsAfterTheServerRestartsAndBacksOffMeanwhile() async throws {
        try await Harness.with { harness in
            var backoff = ReconnectBackoff()
            // Long enough that the call after the failed attempt lands inside
            // the backoff even on a loaded machine.
            backoff.initial = .seconds(1)
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
            // Within the backoff, calls fail at once (no attempt: the last
            // error in parentheses) and say when the next attempt is.
            var retryIn: Int64?
            do {
                let _: PingResponse = try await channel.unary(Echo.unary, PingRequest())
                Issue.record("a call within the backoff succeeded")
            } catch {
                #expect((error as? RPCError)?.message.contains("cannot reach 127.0.0.1:\(harness.port) (") == true, "\(error)")
                retryIn = nextAttempt(error)
            }
            #expect(channel.status.state == .backoff)
            let wait = try #require(retryIn, "no \"next attempt in\" in the error")
            #expect((1...1000).contains(wait))

            let restarted = RPCServer(methods: echoHandlers(), tls: try harness.pki.server(alpn: [RPCServer.alpn])) { _ in .anonymous }
            _ = try await restarted.bind(host: "127.0.0.1", port: harness.port, group: harness.group)
            // The sleep is the backoff under test: the time the channel
            // announced (plus the millisecond it rounded away and some), after
            // which a call must try again and reach the restarted server.
            try await Task.sleep(for: .milliseconds(wait + 20))
            let again: PingResponse = try await channel.unary(Echo.unary, PingRequest(payload: [2]))
            #expect(again.payload == [2])
            #expect(try await channel.connection() !== reused)
            await channel.close()
            await restarted.shutdown(drainTimeout: .seconds(2))
        }
    }
}
