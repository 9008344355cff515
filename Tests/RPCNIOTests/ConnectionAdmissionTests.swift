import NIOCore
import RPCCore
@testable import RPCNIO
import TestSupport
import Testing
import TollgateListeners
import TollgateProto

/// The GOAWAY among `frames`, decoded.
func goAway(_ frames: [Frame]) -> RpcGoAway? {
    frames.last { $0.header.type == .goAway }.flatMap { try? RpcGoAway(serializedBytes: $0.payload) }
}

/// Idle strangers cannot keep others out (docs/rpc-protocol.md §9): a limit
/// per source address on connections that have authenticated nothing, a
/// deadline for them to authenticate, and eviction of the idle ones first
/// when the listener is full. Every peer here is on 127.0.0.1.
@Suite(.serialized) struct ConnectionAdmissionTests {
    /// A peer without a client certificate, past TLS and SETTINGS: the
    /// server's SETTINGS arrived, so the server's handler runs.
    func stranger(_ harness: Harness) async throws -> RawPeer {
        let peer = try await RawPeer(port: harness.port, tls: try harness.pki.client(as: nil, alpn: [RPCServer.alpn]), group: harness.group)
        try await peer.send(RPCLimits().settingsFrame)
        var frames = peer.frames.makeAsyncIterator()
        let first = await frames.next()
        #expect(first?.header.type == .settings, "the server's SETTINGS come first")
        return peer
    }

    @Test func strangersFromOneAddressAreLimited() async throws {
        var limits = RPCLimits()
        limits.maxUnauthenticatedConnectionsPerAddress = 2
        try await Harness.with(limits: limits, certificateOptional: true) { harness in
            let first = try await stranger(harness)
            let second = try await stranger(harness)
            // The third stranger is admitted only on condition of a
            // certificate: it has none, so right after TLS it is told why and closed.
            let third = try await RawPeer(port: harness.port, tls: try harness.pki.client(as: nil, alpn: [RPCServer.alpn]), group: harness.group)
            let frames = await third.framesUntilClosed()
            // SETTINGS first, as always, so a client can read the GOAWAY's reason.
            #expect(frames.map(\.header.type) == [.settings, .goAway])
            let refused = try #require(goAway(frames))
            #expect(refused.reason == .resourceExhausted && refused.message.contains("more than 2 unauthenticated connections from 127.0.0.1"),
                    "\(refused)")
            try await eventually("the server to see the third stranger gone") { harness.server.listener.openConnections == 2 }
            // Our own client reports the server's reason.
            do {
                let client = try await harness.connect(as: nil)
                let _: PingResponse = try await client.unary(Echo.unary, PingRequest())
                Issue.record("a third stranger was served")
                await client.close()
            } catch {
                #expect("\(error)".contains("more than 2 unauthenticated connections from 127.0.0.1; only a cluster certificate admits another"), "\(error)")
            }
            try await eventually("the server to see the fourth stranger gone") { harness.server.listener.openConnections == 2 }

            try await first.channel.close()
            try await eventually("the server to see the first stranger gone") { harness.server.listener.openConnections == 1 }
            // A certificate holder takes the free slot and, once TLS has
            // authenticated it, counts as no stranger: a stranger fits again.
            let operator_ = try await harness.connect()
            let reply: PingResponse = try await operator_.unary(Echo.unary, PingRequest(payload: [1]))
            #expect(reply.payload == [1])
            let fourth = try await stranger(harness)
            #expect(harness.server.listener.openConnections == 3)
            try await fourth.channel.close()
            try await second.channel.close()
            await operator_.close()
        }
    }

    @Test func aFullListenerEvictsTheLongestIdleStrangerForAnOperator() async throws {
        var limits = RPCLimits()
        limits.maxConnections = 2
        try await Harness.with(limits: limits, certificateOptional: true) { harness in
            let idle = try await stranger(harness)
            let firstOperator = try await harness.connect()
            let _: PingResponse = try await firstOperator.unary(Echo.unary, PingRequest())
            // Full: the idle stranger makes room for the next operator.
            let secondOperator = try await harness.connect()
            let frames = await idle.framesUntilClosed()
            #expect(goAwayReason(frames) == .resourceExhausted)
            let reply: PingResponse = try await secondOperator.unary(Echo.unary, PingRequest(payload: [2]))
            #expect(reply.payload == [2])
            #expect(harness.server.listener.openConnections == 2)
            // Only authenticated connections left: nobody is evicted for a newcomer.
            await #expect(throws: (any Error).self) { _ = try await harness.connect() }
            let still: PingResponse = try await firstOperator.unary(Echo.unary, PingRequest(payload: [3]))
            #expect(still.payload == [3])
            await firstOperator.close()
            await secondOperator.close()
        }
    }

    /// The attack of issue 11 over a real connection: `Login` streams whose
    /// requests never finish, then a multi-MiB one announced.
    @Test func unfinishedRequestsOfAStrangerStayWithinItsBudgetAndAreFreedWithIt() async throws {
        let limits = RPCLimits()
        try await Harness.with(limits: limits, certificateOptional: true) { harness in
            let peer = try await stranger(harness)
            try await peer.send(Frame.settingsAck)
            let gauge = harness.server.bufferedRequests
            for id in stride(from: UInt32(1), through: 7, by: 2) {
                try await peer.send(try requestHeaders(id, Echo.unary))
                try await peer.send(Frame(type: .message, streamID: id, payload: [UInt8](repeating: 7, count: limits.unauthenticatedMaxFrameSize)))
            }
            try await eventually("the server to hold the four requests") { gauge.bufferedBytes == limits.unauthenticatedMaxBufferedBytes }
            var header: [UInt8] = []
            FrameHeader(length: 4 * 1024 * 1024, type: .message, flags: [], streamID: 9).write(into: &header)
            try await peer.send(try requestHeaders(9, Echo.unary).bytes + header + [UInt8](repeating: 0, count: 4096))
            #expect(goAwayReason(await peer.framesUntilClosed()) == .resourceExhausted)
            try await eventually("the closed connection's bytes to be released") { gauge.bufferedBytes == 0 }
        }
    }

    @Test func aStrangerMustAuthenticateSoon() async throws {
        var limits = RPCLimits()
        limits.unauthenticatedTimeout = .milliseconds(300)
        // Calls carrying `x-who` are admitted with an identity, as a session token would be.
        let authorize: @Sendable (ServerCallContext) throws(RPCError) -> Caller = { context in
            context.metadata["x-who"] == nil ? .anonymous : .node(id: "node-b", roles: ["gateway"])
        }
        try await Harness.with(limits: limits, certificateOptional: true, authorize: authorize) { harness in
            let withCertificate = try await harness.connect()
            let signedIn = try await harness.connect(as: nil)
            var options = CallOptions()
            options.metadata.add("x-who", "node-b")
            let _: PingResponse = try await signedIn.unary(Echo.unary, PingRequest(), options: options)

            let idle = try await stranger(harness)
            let frames = await idle.framesUntilClosed()
            let goAway = try #require(frames.last { $0.header.type == .goAway }.flatMap { try? RpcGoAway(serializedBytes: $0.payload) })
            #expect(goAway.reason == .idle && goAway.message == "nothing authenticated within 300 ms")
            // Both were opened before the stranger, so their deadline passed too.
            let first: PingResponse = try await withCertificate.unary(Echo.unary, PingRequest(payload: [1]))
            let second: PingResponse = try await signedIn.unary(Echo.unary, PingRequest(payload: [2]))
            #expect(first.payload == [1] && second.payload == [2])
            await withCertificate.close()
            await signedIn.close()
        }
    }

    /// Issue 11: strangers behind the operator's own address cannot keep the
    /// operator out. With the address's stranger limit reached, a connection
    /// showing a cluster certificate still gets in; a connection that signed
    /// in with a session counts as no stranger and is never evicted; when the
    /// listener is full, an idle stranger makes room for a certificate holder.
    @Test func strangersBehindTheOperatorsAddressCannotKeepTheOperatorOut() async throws {
        var limits = RPCLimits()
        limits.maxUnauthenticatedConnectionsPerAddress = 2
        limits.maxConnections = 4
        // Calls carrying `x-who` are admitted with an identity, as a session token would be.
        let authorize: @Sendable (ServerCallContext) throws(RPCError) -> Caller = { context in
            context.metadata["x-who"] == nil ? .anonymous : .user(UserPrincipal(username: "admin", tenant: "carbon.super", roles: ["admin"], permissions: ["/permission/admin"],
                                                                                 sessionID: [1], sessionExpiresAtUnixMs: .max))
        }
        try await Harness.with(limits: limits, certificateOptional: true, authorize: authorize) { harness in
            var session = CallOptions()
            session.metadata.add("x-who", "admin")
            let signedIn = try await harness.connect(as: nil)
            let _: PingResponse = try await signedIn.unary(Echo.unary, PingRequest(), options: session)
            // The signed-in connection does not count: two strangers still fit, and fill the address.
            let first = try await stranger(harness)
            let second = try await stranger(harness)
            let third = try await RawPeer(port: harness.port, tls: try harness.pki.client(as: nil, alpn: [RPCServer.alpn]), group: harness.group)
            #expect(goAway(await third.framesUntilClosed())?.reason == .resourceExhausted)
            try await eventually("the server to see the refused stranger gone") { harness.server.listener.openConnections == 3 }

            // A certificate holder from the same address gets in all the same.
            let operator_ = try await harness.connect()
            let reply: PingResponse = try await operator_.unary(Echo.unary, PingRequest(payload: [1]))
            #expect(reply.payload == [1])
            #expect(harness.server.listener.openConnections == 4)

            // Full now: the longest-open idle stranger makes room for the next
            // certificate holder; the signed-in connection is never the one.
            let secondOperator = try await harness.connect()
            #expect(goAway(await first.framesUntilClosed())?.reason == .resourceExhausted)
            let again: PingResponse = try await secondOperator.unary(Echo.unary, PingRequest(payload: [2]))
            #expect(again.payload == [2])
            let still: PingResponse = try await signedIn.unary(Echo.unary, PingRequest(payload: [3]), options: session)
            #expect(still.payload == [3])
            try await second.channel.close()
            await operator_.close()
            await secondOperator.close()
            await signedIn.close()
        }
    }
}
