import Foundation
import NIOCore
import NIOPosix
import OpenSSLKit
import RoleCore
import Synchronization
import TestSupport
import Testing
@testable import TollgateListeners

/// Answers with what it was asked: method, path, body length and body.
struct EchoResponder: HTTPResponder {
    func respond(to request: HTTPRequest) async -> HTTPResponse {
        let agent = request.header("user-agent") ?? "none"
        var body = Array("\(request.method) \(request.uri) \(request.body.count) secure=\(request.isSecure) agent=\(agent.prefix(5))\n".utf8)
        body += request.body
        return HTTPResponse(status: request.path == "/missing" ? 404 : 200, headers: [("Content-Type", "text/plain"), ("X-Echo", "yes")], body: body)
    }
}

/// Holds each request until released, telling the test when one arrived.
final class GateResponder: HTTPResponder {
    let arrived: AsyncStream<Void>
    private let arrivedContinuation: AsyncStream<Void>.Continuation
    private let release = Mutex<[CheckedContinuation<Void, Never>]>([])

    init() { (arrived, arrivedContinuation) = AsyncStream<Void>.makeStream() }

    func respond(to request: HTTPRequest) async -> HTTPResponse {
        await withCheckedContinuation { continuation in
            release.withLock { $0.append(continuation) }
            arrivedContinuation.yield()
        }
        return .text(200, "released")
    }

    func open() { for waiter in release.withLock({ list in defer { list = [] }; return list }) { waiter.resume() } }
}

/// Upper-cases each line it reads and remembers the peer certificate; a
/// line begun must end within `lineTimeLimit`.
final class ShoutService: ByteStreamService {
    let peers = Mutex<[[String]]>([])
    let lineTimeLimit: Duration
    let closedSessions = Atomic<Int>(0)
    let receivedBytes = Atomic<Int>(0)

    init(lineTimeLimit: Duration = .seconds(30)) { self.lineTimeLimit = lineTimeLimit }

    func open(_ connection: ByteStreamConnection) throws -> any ByteStreamSession { Session(service: self, connection: connection) }

    final class Session: ByteStreamSession {
        let service: ShoutService
        let connection: ByteStreamConnection
        var partial: [UInt8] = []

        init(service: ShoutService, connection: ByteStreamConnection) {
            self.service = service
            self.connection = connection
        }

        func received(_ bytes: [UInt8]) throws -> [UInt8] {
            service.peers.withLock { $0.append(connection.peerCertificateURIs) }
            service.receivedBytes.add(bytes.count, ordering: .relaxed)
            partial += bytes
            guard let end = partial.lastIndex(of: UInt8(ascii: "\n")) else { return [] }
            let lines = partial[...end]
            partial.removeSubrange(...end)
            return Array(String(decoding: lines, as: UTF8.self).uppercased().utf8)
        }

        var messageTimeLimit: Duration? { partial.isEmpty ? nil : service.lineTimeLimit }

        func closed() { service.closedSessions.add(1, ordering: .relaxed) }
    }
}

/// A plain TCP client that keeps what it receives and whether it was closed.
final class RawStreamClient: Sendable {
    private let channel: any Channel
    private let state: ClientState

    final class ClientState: Sendable {
        let value = Mutex<(received: String, closed: Bool)>(("", false))
    }

    private init(channel: any Channel, state: ClientState) {
        self.channel = channel
        self.state = state
    }

    static func connect(port: Int, group: any EventLoopGroup) async throws -> RawStreamClient {
        let state = ClientState()
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Collector(state: state)) } }
            .connect(host: "127.0.0.1", port: port).get()
        return RawStreamClient(channel: channel, state: state)
    }

    func send(_ text: String) { channel.writeAndFlush(ByteBuffer(string: text), promise: nil) }
    var received: String { state.value.withLock { $0.received } }
    var isClosed: Bool { state.value.withLock { $0.closed } }

    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let state: ClientState
        init(state: ClientState) { self.state = state }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let text = String(buffer: unwrapInboundIn(data))
            state.value.withLock { $0.received += text }
        }
        func channelInactive(context: ChannelHandlerContext) {
            state.value.withLock { $0.closed = true }
            context.fireChannelInactive()
        }
    }
}

func eventually(_ what: String, within limit: Duration = .seconds(20), _ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now + limit
    while !condition() {
        guard ContinuousClock.now < deadline else {
            Issue.record("timed out waiting for \(what)")
            return
        }
        try await Task.sleep(for: .milliseconds(10))
    }
}

final class CountingObserver: ListenerObserver {
    let failures = Mutex<[String]>([])
    func connectionOpened(listener: String) {}
    func connectionClosed(listener: String) {}
    func connectionFailed(listener: String, peer: String, reason: String) { failures.withLock { $0.append(reason) } }
}

/// A listener on loopback, shut down (and its loops and PKI removed) when the body ends.
func withListener(name: String = "test", maxConnections: Int = 16, observer: (any ListenerObserver)? = nil,
                  configure: (TestPKI) throws -> @Sendable (any Channel) throws -> Void,
                  _ body: (Listener, Int, TestPKI) async throws -> Void) async throws {
    let pki = try TestPKI()
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let listener = Listener(name: name, maxConnections: maxConnections, observer: observer, configure: try configure(pki))
    let port = try await listener.bind(host: "127.0.0.1", port: 0, group: group).port!
    do {
        try await body(listener, port, pki)
    } catch {
        await listener.shutdown(drainTimeout: .zero)
        try? await group.shutdownGracefully()
        pki.remove()
        throw error
    }
    await listener.shutdown(drainTimeout: .zero)
    try await group.shutdownGracefully()
    pki.remove()
}

let curl = "/usr/bin/curl"
let python = ProcessInfo.processInfo.environment["TOLLGATE_PYTHON"] ?? "/usr/bin/python3"
let interop = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Interop").path

@Suite(.serialized) struct HTTPListenerTests {
    @Test func curlGetsAnswersOnOneKeptAliveConnection() async throws {
        try await withListener(configure: { _ in HTTPListener.configure(responder: EchoResponder(), tls: nil, limits: HTTPListenerLimits()) }) { _, port, _ in
            // Two URLs in one curl run reuse the connection when the server keeps it alive.
            let (status, output) = try await runTool(curl, ["-s", "-w", "|connects=%{num_connects} code=%{http_code}\n",
                                                            "http://127.0.0.1:\(port)/first?x=1", "http://127.0.0.1:\(port)/missing"])
            #expect(status == 0, "\(output)")
            #expect(output.contains("GET /first?x=1 0 secure=false agent=curl/"), "headers are found whatever their case: \(output)")
            #expect(output.contains("|connects=1 code=200"), "\(output)")
            #expect(output.contains("|connects=0 code=404"), "the second request reused the connection: \(output)")
        }
    }

    @Test func bodiesHeadAndTheBodyLimit() async throws {
        try await withListener(configure: { _ in
            HTTPListener.configure(responder: EchoResponder(), tls: nil, limits: HTTPListenerLimits(maxBodyBytes: 1000))
        }) { _, port, _ in
            let posted = try await runTool(curl, ["-s", "-H", "Expect:", "--data-binary", "@-", "http://127.0.0.1:\(port)/upload"],
                                           input: Data(repeating: 0x61, count: 1000))
            #expect(posted.output.hasPrefix("POST /upload 1000 secure=false agent=curl/\n" + String(repeating: "a", count: 1000)), "\(posted.output.prefix(80))")
            let head = try await runTool(curl, ["-s", "-I", "http://127.0.0.1:\(port)/head"])
            #expect(head.output.contains("HTTP/1.1 200 OK") && head.output.lowercased().contains("x-echo: yes"), "\(head.output)")
            #expect(!head.output.contains("HEAD /head"), "HEAD answers carry no body: \(head.output)")
            let large = try await runTool(curl, ["-s", "-H", "Expect:", "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", "@-",
                                                 "http://127.0.0.1:\(port)/upload"], input: Data(repeating: 0x62, count: 1001))
            #expect(large.output == "413", "\(large.output)")
        }
    }

    @Test func anOversizeHeadIs431AndASlowBodyIs408() async throws {
        try await withListener(configure: { _ in
            HTTPListener.configure(responder: EchoResponder(), tls: nil,
                                   limits: HTTPListenerLimits(maxHeaderBytes: 2048, readTimeout: .milliseconds(300)))
        }) { _, port, _ in
            let big = try await runTool(curl, ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "X-Padding: " + String(repeating: "p", count: 3000),
                                               "http://127.0.0.1:\(port)/big"])
            #expect(big.output == "431", "\(big.output)")
            let small = try await runTool(curl, ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "X-Padding: " + String(repeating: "p", count: 1000),
                                                 "http://127.0.0.1:\(port)/small"])
            #expect(small.output == "200", "\(small.output)")
            // A body announced but never finished: Python's socket sends the head and two bytes, then waits.
            let script = """
                import socket, sys
                s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
                s.sendall(b"POST /slow HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 10\\r\\n\\r\\nab")
                s.settimeout(20)
                data = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk: break
                    data += chunk
                print(data.split(b"\\r\\n")[0].decode())
                """
            let slow = try await runTool(python, ["-c", script, String(port)])
            #expect(slow.output.hasPrefix("HTTP/1.1 408"), "\(slow.output)")
        }
    }

    @Test func httpsWithTheNodesCertificate() async throws {
        try await withListener(configure: { pki in
            let context = try TLSContext(configuration: .server(certificateChainFile: pki.certificate("node"), privateKeyFile: pki.key("node"),
                                                                trustRootsFile: pki.certificate("ca"), verification: .peer))
            return HTTPListener.configure(responder: EchoResponder(), tls: { context }, limits: HTTPListenerLimits())
        }) { _, port, pki in
            let (status, output) = try await runTool(curl, ["-s", "--cacert", pki.certificate("ca"), "https://localhost:\(port)/tls"])
            #expect(status == 0, "\(output)")
            #expect(output.contains("GET /tls 0 secure=true agent=curl/"), "\(output)")
            // A client that does not trust the cluster CA refuses the server.
            let untrusting = try await runTool(curl, ["-s", "https://localhost:\(port)/tls"])
            #expect(untrusting.status == 60, "curl's 'peer certificate cannot be authenticated': \(untrusting.output)")
        }
    }

    @Test func connectionsBeyondTheLimitAreClosedOnAccept() async throws {
        let observer = CountingObserver()
        try await withListener(maxConnections: 1, observer: observer, configure: { _ in
            HTTPListener.configure(responder: EchoResponder(), tls: nil, limits: HTTPListenerLimits())
        }) { listener, port, _ in
            // One connection held open by a raw client, then curl is the second.
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let held = try await ClientBootstrap(group: group).connect(host: "127.0.0.1", port: port).get()
            try await eventually("the first connection is admitted") { listener.openConnections == 1 }
            let refused = try await runTool(curl, ["-s", "http://127.0.0.1:\(port)/over"])
            #expect(refused.status != 0, "\(refused.output)")
            #expect(observer.failures.withLock { $0 } == ["more than 1 connections"])
            try await held.close()
            try await group.shutdownGracefully()
        }
    }

    @Test func drainFinishesTheRequestInFlightThenCloses() async throws {
        let gate = GateResponder()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let listener = Listener(name: "drain", maxConnections: 4, observer: nil,
                                configure: HTTPListener.configure(responder: gate, tls: nil, limits: HTTPListenerLimits()))
        let port = try await listener.bind(host: "127.0.0.1", port: 0, group: group).port!
        let request = Task { try await runTool(curl, ["-s", "-i", "http://127.0.0.1:\(port)/slow"]) }
        var arrivals = gate.arrived.makeAsyncIterator()
        _ = await arrivals.next()
        let shutdown = Task { await listener.shutdown(drainTimeout: .seconds(30)) }
        // The listener stops accepting at once; the request in flight is still answered.
        try await eventually("the listening socket closes") {
            (try? await runTool(curl, ["-s", "-m", "5", "http://127.0.0.1:\(port)/late"]).status) == 7
        }
        gate.open()
        let (status, output) = try await request.value
        #expect(status == 0, "\(output)")
        #expect(output.contains("200 OK") && output.lowercased().contains("connection: close") && output.contains("released"), "\(output)")
        await shutdown.value
        #expect(listener.openConnections == 0)
        try await group.shutdownGracefully()
    }
}

@Suite(.serialized) struct StreamListenerTests {
    @Test func pythonsSSLModuleTalksToAStreamService() async throws {
        let service = ShoutService()
        try await withListener(configure: { pki in
            let context = try TLSContext(configuration: .server(certificateChainFile: pki.certificate("node"), privateKeyFile: pki.key("node"),
                                                                trustRootsFile: pki.certificate("ca"), verification: .peerRequired,
                                                                applicationProtocols: ["tollgate-rpc/1"]))
            return StreamListener.configure(service: service, tls: { context }, idleTimeout: .seconds(30))
        }) { _, port, pki in
            let (status, output) = try await runTool(python, [interop + "/tls_peer.py", "client", String(port), pki.certificate("ca"),
                                                              pki.certificate("admin"), pki.key("admin"), "thrift would go here\n"])
            #expect(status == 0, "\(output)")
            #expect(output.contains("reply THRIFT WOULD GO HERE"), "\(output)")
            #expect(service.peers.withLock { $0.first } == ["tollgate://user/admin"], "the service sees who connected")
        }
    }

    /// A line begun must end within the service's limit; a connection
    /// between lines stays open; every session is told of its close.
    @Test func aMessageBegunAndNotEndedInTimeClosesTheConnection() async throws {
        let service = ShoutService(lineTimeLimit: .milliseconds(300))
        try await withListener(configure: { _ in StreamListener.configure(service: service, tls: nil, idleTimeout: .seconds(30)) }) { listener, port, _ in
            let whole = try await runTool(python, [interop + "/tls_peer.py", "plain-lines", String(port), "hello\nworld\n", "2"], timeout: .seconds(30))
            #expect(whole.status == 0, "\(whole.output)")
            #expect(whole.output.contains("reply HELLO\nWORLD\n") && whole.output.contains("open after 2 s"), "\(whole.output)")
            let half = try await runTool(python, [interop + "/tls_peer.py", "plain-lines", String(port), "no end of line", "2"], timeout: .seconds(30))
            #expect(half.status == 0, "\(half.output)")
            #expect(half.output.contains("closed by the server"), "\(half.output)")
            let deadline = ContinuousClock.now + .seconds(10)
            while service.closedSessions.load(ordering: .relaxed) < 2, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
            #expect(service.closedSessions.load(ordering: .relaxed) == 2)
        }
    }

    /// A peer that sends and never reads its answers: once the answers
    /// waiting to be sent pass the channel's high-water mark, the listener
    /// stops reading, so the peer's sends block instead of the answers
    /// piling up in the node's memory.
    @Test func aPeerThatDoesNotReadItsAnswersIsNotReadEither() async throws {
        let service = ShoutService()
        try await withListener(configure: { _ in StreamListener.configure(service: service, tls: nil, idleTimeout: .seconds(30)) }) { _, port, _ in
            let flood = try await runTool(python, [interop + "/tls_peer.py", "plain-flood", String(port), "256"], timeout: .seconds(60))
            #expect(flood.status == 0, "\(flood.output)")
            #expect(flood.output.contains("blocked after"), "\(flood.output)")
            // Kernel buffers on both sides hold some megabytes; the rest was never read.
            #expect(service.receivedBytes.load(ordering: .relaxed) < 64 * 1024 * 1024, "read \(service.receivedBytes.load(ordering: .relaxed)) bytes")
        }
    }

    /// On a drain, a connection between messages closes at once; one with a
    /// message half received gets its answer when the rest arrives, then closes.
    @Test func aDrainClosesIdleConnectionsAtOnceAndHalfMessagesAfterTheirAnswer() async throws {
        let service = ShoutService()
        try await withListener(configure: { _ in StreamListener.configure(service: service, tls: nil, idleTimeout: .seconds(30)) }) { listener, port, _ in
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let idle = try await RawStreamClient.connect(port: port, group: group)
            let busy = try await RawStreamClient.connect(port: port, group: group)
            busy.send("half a li")
            try await eventually("the half line read") { service.receivedBytes.load(ordering: .relaxed) >= 9 }
            let draining = Task { await listener.shutdown(drainTimeout: .seconds(20)) }
            try await eventually("the idle connection closed") { idle.isClosed }
            #expect(!busy.isClosed)
            busy.send("ne\n")
            try await eventually("the busy connection closed") { busy.isClosed }
            #expect(busy.received == "HALF A LINE\n")
            await draining.value
            try await group.shutdownGracefully()
        }
    }

    @Test func aClientWithoutTheRequiredCertificateIsRefused() async throws {
        let service = ShoutService()
        try await withListener(configure: { pki in
            let context = try TLSContext(configuration: .server(certificateChainFile: pki.certificate("node"), privateKeyFile: pki.key("node"),
                                                                trustRootsFile: pki.certificate("ca"), verification: .peerRequired))
            return StreamListener.configure(service: service, tls: { context }, idleTimeout: .seconds(30))
        }) { _, port, pki in
            let (_, output) = try await runTool("/usr/bin/openssl", ["s_client", "-connect", "127.0.0.1:\(port)", "-CAfile", pki.certificate("ca"),
                                                                   "-quiet"], input: Data("hello\n".utf8), timeout: .seconds(10))
            #expect(!output.contains("HELLO"), "\(output)")
            #expect(service.peers.withLock { $0.isEmpty })
        }
    }
}
