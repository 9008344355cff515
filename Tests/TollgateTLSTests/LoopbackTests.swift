import Foundation
import NIOCore
import NIOPosix
import OpenSSLKit
import TestSupport
import Testing
import TollgateTLS

/// Echoes plaintext back, line by line as it arrives.
final class EchoHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.writeAndFlush(data, promise: nil)
    }
}

/// Collects plaintext on a client channel and completes when `expected` bytes arrived.
final class Collector: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked Sendable: mutated only on the channel's event loop.
    typealias InboundIn = ByteBuffer
    let done: EventLoopPromise<String>
    let expected: Int
    var text = ""
    init(expected: Int, promise: EventLoopPromise<String>) {
        self.expected = expected
        self.done = promise
    }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        text += String(buffer: unwrapInboundIn(data))
        if text.utf8.count >= expected { done.succeed(text) }
    }
    func errorCaught(context: ChannelHandlerContext, error: any Error) { done.fail(error) }
    func channelInactive(context: ChannelHandlerContext) { done.fail(ChannelError.eof) }
}

/// A TLS echo server on an ephemeral loopback port.
func startEchoServer(_ context: TLSContext, group: MultiThreadedEventLoopGroup) throws -> Channel {
    try ServerBootstrap(group: group)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(TLSHandler(context: context))
                try channel.pipeline.syncOperations.addHandler(EchoHandler())
            }
        }
        .bind(host: "127.0.0.1", port: 0).wait()
}

/// A TLS client channel whose plaintext goes to `collector`.
func connectClient(_ context: TLSContext, group: MultiThreadedEventLoopGroup, port: Int, collector: Collector) throws -> Channel {
    try ClientBootstrap(group: group)
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(TLSHandler(context: context, serverHostname: "localhost"))
                try channel.pipeline.syncOperations.addHandler(collector)
            }
        }
        .connect(host: "127.0.0.1", port: port).wait()
}

/// A test PKI, a one-thread event loop group and a TLS echo server on
/// loopback, torn down together when the test drops it.
final class EchoFixture {
    let pki: TestPKI
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let server: Channel
    let port: Int

    init(alpn: [String] = []) throws {
        pki = try TestPKI()
        server = try startEchoServer(pki.server(alpn: alpn), group: group)
        port = try #require(server.localAddress?.port)
    }

    deinit {
        try? server.close().wait()
        try? group.syncShutdownGracefully()
        pki.remove()
    }
}

/// Runs `executable` until it exits or its output satisfies `done` (then it
/// is killed: `s_client -ign_eof` never leaves on its own), and returns its
/// status and output. Throws ``TimedOut`` if neither happens within `timeout`.
func run(_ executable: String, _ arguments: [String], input: String? = nil, until done: (String) -> Bool = { _ in false },
         timeout: Duration = .seconds(30), fileID: String = #fileID, line: Int = #line) throws -> (Int32, String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let output = Pipe()
    let stdin = Pipe()
    process.standardOutput = output
    process.standardError = output
    process.standardInput = stdin
    try process.run()
    let reader = PipeReader(output)
    defer {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? stdin.fileHandleForWriting.close()
        process.waitUntilExit()
    }
    if let input { stdin.fileHandleForWriting.write(Data(input.utf8)) }
    let name = URL(fileURLWithPath: executable).lastPathComponent + " " + (arguments.first ?? "")
    try reader.output.waitBlocking(for: "\(name) to exit or print what the test waits for", timeout: timeout, fileID: fileID, line: line) {
        $0.ended || done($0.text)
    }
    if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    process.waitUntilExit()
    let text = try reader.output.waitBlocking(for: "the end of \(name)'s output", fileID: fileID, line: line) { $0.ended }.text
    return (process.terminationStatus, text)
}

@Suite(.serialized) struct LoopbackTests {
    @Test func echoOverLoopbackWithMutualTLS() throws {
        let fixture = try EchoFixture(alpn: ["tollgate-rpc/1"])
        // Kept alive to the end of the test: dropping it stops the server.
        defer { withExtendedLifetime(fixture) {} }
        let pki = fixture.pki, group = fixture.group, port = fixture.port

        let clientContext = try pki.client(as: "admin", alpn: ["tollgate-rpc/1"])
        let message = String(repeating: "0123456789", count: 5000)  // several TLS records
        let promise = group.next().makePromise(of: String.self)
        let client = try connectClient(clientContext, group: group, port: port,
                                       collector: Collector(expected: message.utf8.count, promise: promise))
        try client.writeAndFlush(ByteBuffer(string: message)).wait()
        #expect(try promise.futureResult.wait() == message)
        try client.close().wait()
    }

    /// `openssl s_client` against our server: mutual TLS, ALPN, echo; and
    /// without a client certificate it is refused.
    @Test func opensslClientTalksToOurServer() throws {
        let fixture = try EchoFixture(alpn: ["tollgate-rpc/1"])
        // Kept alive to the end of the test: dropping it stops the server.
        defer { withExtendedLifetime(fixture) {} }
        let pki = fixture.pki, port = fixture.port
        let common = ["s_client", "-connect", "127.0.0.1:\(port)", "-CAfile", pki.certificate("ca"), "-verify_return_error",
                      "-alpn", "tollgate-rpc/1", "-servername", "localhost", "-verify_hostname", "localhost"]
        let (status, output) = try run("/usr/bin/openssl", common + ["-cert", pki.certificate("admin"), "-key", pki.key("admin"), "-ign_eof"],
                                       input: "ping-from-openssl\n", until: { $0.contains("ping-from-openssl") })
        #expect(output.contains("ALPN protocol: tollgate-rpc/1"), "\(output)")
        #expect(output.contains("Verify return code: 0 (ok)"), "\(output)")
        // s_client prints only what the server sent, so the line is our echo.
        #expect(output.contains("ping-from-openssl"), "\(output)")
        _ = status

        // Under TLS 1.3 the refusal arrives after the client's handshake is done:
        // keep reading (-ign_eof) until the alert is seen, then kill the client.
        let (_, refused) = try run("/usr/bin/openssl", common + ["-ign_eof"], input: "hello\n", until: { $0.contains("alert") })
        #expect(refused.contains("alert"), "\(refused)")
        #expect(!refused.contains("hello"), "\(refused)")
    }

    /// Our client against `openssl s_server -rev`, which answers each line reversed.
    @Test func ourClientTalksToOpensslServer() throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        // Find a free port, then let s_server take it.
        let probe = try ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).wait()
        let port = try #require(probe.localAddress?.port)
        try probe.close().wait()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = ["s_server", "-accept", "127.0.0.1:\(port)", "-cert", pki.certificate("node"), "-key", pki.key("node"),
                             "-CAfile", pki.certificate("ca"), "-Verify", "1", "-verify_return_error", "-alpn", "tollgate-rpc/1", "-rev", "-naccept", "1"]
        let log = Pipe()
        process.standardOutput = log
        process.standardError = log
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        // s_server says ACCEPT once it listens.
        let server = PipeReader(log)
        try server.output.waitBlocking(for: "openssl s_server to listen") { $0.text.contains("ACCEPT") || $0.ended }
        try #require(server.text.contains("ACCEPT"), "\(server.text)")

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let clientContext = try pki.client(as: "admin", alpn: ["tollgate-rpc/1"])
        let promise = group.next().makePromise(of: String.self)
        let client = try connectClient(clientContext, group: group, port: port, collector: Collector(expected: 6, promise: promise))
        try client.writeAndFlush(ByteBuffer(string: "stressed\n")).wait()
        let reply = try promise.futureResult.wait()
        #expect(reply.hasPrefix("desserts"), "\(reply)")
        try? client.close().wait()
    }
}

/// A scripted probe of the listener's TLS configuration with `openssl
/// s_client`: old protocol versions and weak ciphers are refused, a client
/// certificate is required, and what is accepted is TLS 1.3 or a forward-
/// secret AEAD suite under TLS 1.2.
@Suite(.serialized) struct TLSConfigurationProbeTests {
    /// A line the echo server sends back only once it has accepted the client.
    static let echo = "tls-probe-echo"

    /// An `s_client` attempt, run until its outcome is known: it exits
    /// (refused), the server's alert arrives (refused after the client's side
    /// of a TLS 1.3 handshake), or the echo of a line comes back (accepted).
    func attempt(port: Int, pki: TestPKI, _ extra: [String]) throws -> String {
        let arguments = ["s_client", "-connect", "127.0.0.1:\(port)", "-CAfile", pki.certificate("ca"),
                         "-cert", pki.certificate("admin"), "-key", pki.key("admin")] + extra
        return try run("/usr/bin/openssl", arguments, input: Self.echo + "\n", until: { $0.contains(Self.echo) || $0.contains("alert") }).1
    }

    func accepted(_ output: String) -> Bool {
        output.contains("Verify return code: 0 (ok)") && !output.contains("alert") && output.contains("Cipher is ")
            && !output.contains("Cipher is (NONE)")
    }

    @Test func oldVersionsAndWeakCiphersAreRefused() throws {
        let fixture = try EchoFixture()
        // Kept alive to the end of the test: dropping it stops the server.
        defer { withExtendedLifetime(fixture) {} }
        let pki = fixture.pki, port = fixture.port

        // The client is allowed everything (security level 0), so only our server can say no.
        let lax = "DEFAULT:@SECLEVEL=0"
        for version in ["-tls1", "-tls1_1"] {
            let output = try attempt(port: port, pki: pki, [version, "-cipher", lax])
            #expect(!accepted(output), "\(version) was accepted:\n\(output)")
        }
        for weak in ["RC4-SHA", "DES-CBC3-SHA", "AES128-SHA", "AES256-SHA256", "ECDHE-RSA-AES128-SHA", "NULL-SHA256", "aNULL"] {
            let output = try attempt(port: port, pki: pki, ["-tls1_2", "-cipher", weak + ":@SECLEVEL=0"])
            #expect(!accepted(output), "\(weak) was accepted:\n\(output)")
        }
        let tls12 = try attempt(port: port, pki: pki, ["-tls1_2"])
        #expect(accepted(tls12) && tls12.contains(Self.echo) && tls12.contains("ECDHE-ECDSA-AES256-GCM-SHA384"), "\(tls12)")
        let tls13 = try attempt(port: port, pki: pki, ["-tls1_3"])
        #expect(accepted(tls13) && tls13.contains(Self.echo) && tls13.contains("TLS_AES_256_GCM_SHA384"), "\(tls13)")

        // No client certificate: refused.
        let anonymous = try run("/usr/bin/openssl", ["s_client", "-connect", "127.0.0.1:\(port)", "-CAfile", pki.certificate("ca"), "-ign_eof"],
                                input: "", until: { $0.contains("alert") }).1
        #expect(anonymous.contains("alert"), "\(anonymous)")
    }
}

/// Python's `ssl` module (OpenSSL underneath, but its own configuration and
/// state handling) against our handler, both ways.
@Suite(.serialized) struct PythonTLSInteropTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    let script = root.appendingPathComponent("Tests/Interop/tls_peer.py").path
    var python: String { ProcessInfo.processInfo.environment["TOLLGATE_PYTHON"] ?? "/usr/bin/python3" }

    @Test func pythonClientTalksToOurServer() throws {
        let fixture = try EchoFixture(alpn: ["tollgate-rpc/1"])
        // Kept alive to the end of the test: dropping it stops the server.
        defer { withExtendedLifetime(fixture) {} }
        let pki = fixture.pki, port = fixture.port
        let (status, output) = try run(python, [script, "client", String(port), pki.certificate("ca"), pki.certificate("admin"),
                                                pki.key("admin"), "hello from python"])
        #expect(status == 0, "\(output)")
        #expect(output.contains("protocol TLSv1.3") && output.contains("alpn tollgate-rpc/1"), "\(output)")
        #expect(output.contains("reply hello from python"), "\(output)")
    }

    @Test func ourClientTalksToPythonServer() throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [script, "server", pki.certificate("ca"), pki.certificate("node"), pki.key("node")]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        // The first line names the port.
        var text = ""
        while !text.contains("\n") {
            let data = output.fileHandleForReading.availableData
            if data.isEmpty { break }
            text += String(decoding: data, as: UTF8.self)
        }
        let port = try #require(Int(text.split(separator: "\n")[0].dropFirst("port ".count)))

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let promise = group.next().makePromise(of: String.self)
        let client = try connectClient(pki.client(as: "admin", alpn: ["tollgate-rpc/1"]), group: group, port: port,
                                       collector: Collector(expected: 5, promise: promise))
        try client.writeAndFlush(ByteBuffer(string: "shout")).wait()
        #expect(try promise.futureResult.wait() == "SHOUT")
        try client.close().wait()
        process.waitUntilExit()
        let rest = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect((text + rest).contains("peer tollgate://user/admin"))
        #expect(process.terminationStatus == 0)
    }
}
