import Foundation
import NIOCore
import NIOEmbedded
import NIOPosix
import OpenSSLKit
import TestSupport
import Testing
import TollgateTLS

/// Records what reaches the application above TLS.
final class Recorder: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked Sendable: used only on its channel's event loop (embedded
    // channels run on the test's thread).
    typealias InboundIn = ByteBuffer
    var received = ""
    var events: [TLSEvent] = []
    var errors: [any Error] = []
    var inactive = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += String(buffer: unwrapInboundIn(data))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSEvent { events.append(event) }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { errors.append(error) }

    func channelInactive(context: ChannelHandlerContext) {
        inactive = true
        context.fireChannelInactive()
    }

    var session: TLSSessionInfo? {
        for case .handshakeCompleted(let info) in events { return info }
        return nil
    }
}

/// Two embedded channels joined back to back on one loop.
struct BackToBack {
    let loop = EmbeddedEventLoop()
    let client: EmbeddedChannel
    let server: EmbeddedChannel
    let clientRecorder = Recorder()
    let serverRecorder = Recorder()

    init(client clientContext: TLSContext, server serverContext: TLSContext, hostname: String? = "localhost") throws {
        client = EmbeddedChannel(loop: loop)
        server = EmbeddedChannel(loop: loop)
        try client.pipeline.syncOperations.addHandler(TLSHandler(context: clientContext, serverHostname: hostname))
        try client.pipeline.syncOperations.addHandler(clientRecorder)
        try server.pipeline.syncOperations.addHandler(TLSHandler(context: serverContext))
        try server.pipeline.syncOperations.addHandler(serverRecorder)
    }

    func connect() throws {
        _ = try server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        _ = try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
        try interact()
    }

    /// Moves bytes both ways until neither side writes anything more.
    func interact() throws {
        for _ in 0..<64 {
            var moved = false
            if client.isActive, server.isActive, let bytes = try client.readOutbound(as: ByteBuffer.self) {
                try server.writeInbound(bytes)
                moved = true
            }
            if server.isActive, client.isActive, let bytes = try server.readOutbound(as: ByteBuffer.self) {
                try client.writeInbound(bytes)
                moved = true
            }
            loop.run()
            if !moved { return }
        }
    }
}

@Suite struct TLSHandlerTests {
    @Test func handshakeThenDataBothWaysWithWritesHeldUntilReady() throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let pair = try BackToBack(client: pki.client(as: "admin", alpn: ["tollgate-rpc/1"]), server: pki.server(alpn: ["tollgate-rpc/1"]))
        _ = try pair.server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        _ = try pair.client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
        // Written before the handshake: held, then delivered.
        let early = pair.client.writeAndFlush(ByteBuffer(string: "early "))
        try pair.interact()
        try early.wait()
        try pair.client.writeAndFlush(ByteBuffer(string: "hello")).wait()
        try pair.server.writeAndFlush(ByteBuffer(string: "world")).wait()
        try pair.interact()
        #expect(pair.serverRecorder.received == "early hello")
        #expect(pair.clientRecorder.received == "world")
        let serverSession = try #require(pair.serverRecorder.session)
        #expect(serverSession.negotiatedProtocol == "tollgate-rpc/1")
        #expect(serverSession.protocolVersion == "TLSv1.3")
        #expect(serverSession.peerCertificate?.uniformResourceIdentifiers == ["tollgate://user/admin"])
        #expect(pair.clientRecorder.session?.peerCertificate?.subjectCommonName == "node-1")
    }

    @Test func closeNotifyClosesBothSidesCleanly() throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let pair = try BackToBack(client: pki.client(as: "admin"), server: pki.server())
        try pair.connect()
        let closed = pair.client.close()
        try pair.interact()
        // The server answered close_notify and closed; the client closes on that answer.
        #expect(pair.serverRecorder.inactive)
        #expect(!pair.server.isActive)
        if let answer = try? pair.server.readOutbound(as: ByteBuffer.self) { try pair.client.writeInbound(answer) }
        pair.loop.run()
        try closed.wait()
        #expect(!pair.client.isActive)
        #expect(!pair.serverRecorder.events.contains(.uncleanShutdown))
        #expect(!pair.clientRecorder.events.contains(.uncleanShutdown))
    }

    @Test func anEOFWithoutCloseNotifyIsReported() throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let pair = try BackToBack(client: pki.client(as: "admin"), server: pki.server())
        try pair.connect()
        pair.server.pipeline.fireChannelInactive()
        #expect(pair.serverRecorder.events.contains(.uncleanShutdown))
    }

    @Test func closeTimesOutWhenThePeerNeverAnswers() throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let pair = try BackToBack(client: pki.client(as: "admin"), server: pki.server())
        try pair.connect()
        let closed = pair.client.close()
        pair.loop.advanceTime(by: .seconds(6))
        try closed.wait()
        #expect(pair.clientRecorder.errors.contains { ($0 as? TLSHandlerError) == .closeTimedOut })
    }

    @Test func refusedClientCertificatesFailTheHandshakeOnBothSides() throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        for client in [nil, "expired", "stranger"] as [String?] {
            let pair = try BackToBack(client: pki.client(as: client), server: pki.server())
            try pair.connect()
            let serverError = pair.serverRecorder.errors.compactMap { $0 as? TLSHandlerError }.first
            guard case .handshakeFailed(let error)? = serverError else {
                Issue.record("server did not fail the handshake for \(client ?? "no certificate"): \(pair.serverRecorder.errors)")
                continue
            }
            #expect(error.kind == .certificateRejected)
            #expect(!pair.server.isActive)
            #expect(pair.serverRecorder.session == nil && pair.serverRecorder.received.isEmpty)
        }
    }

    @Test func aStalledHandshakeTimesOut() throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let loop = EmbeddedEventLoop()
        let server = EmbeddedChannel(loop: loop)
        let recorder = Recorder()
        try server.pipeline.syncOperations.addHandler(TLSHandler(context: pki.server(), handshakeTimeout: .seconds(2)))
        try server.pipeline.syncOperations.addHandler(recorder)
        _ = try server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        loop.advanceTime(by: .seconds(3))
        #expect(recorder.errors.contains { ($0 as? TLSHandlerError) == .handshakeTimedOut })
        #expect(!server.isActive)
    }
}
