import Foundation
import OpenSSLKit
import TestSupport
import Testing

/// Moves ciphertext between two engines until neither has anything to say.
func pump(_ a: TLSConnection, _ b: TLSConnection) {
    for _ in 0..<32 {
        var moved = false
        for (from, to) in [(a, b), (b, a)] {
            from.drainCiphertext { bytes in
                to.feedCiphertext(bytes)
                moved = true
            }
        }
        if !moved { return }
    }
}

/// Runs both handshakes to completion or failure.
func handshake(_ client: TLSConnection, _ server: TLSConnection) -> (TLSConnection.StepResult, TLSConnection.StepResult) {
    var results: (TLSConnection.StepResult, TLSConnection.StepResult) = (.wantsMore, .wantsMore)
    for _ in 0..<10 {
        if results.0 == .wantsMore { results.0 = client.handshake() }
        if results.1 == .wantsMore { results.1 = server.handshake() }
        pump(client, server)
        if results.0 != .wantsMore && results.1 != .wantsMore { break }
    }
    // A TLS 1.3 client finishes before the server has checked its certificate.
    if results.0 == .complete, results.1 != .complete {
        var buffer = [UInt8](repeating: 0, count: 64)
        if case .failed(let error) = buffer.withUnsafeMutableBytes({ client.read(into: $0) }) { results.0 = .failed(error) }
    }
    return results
}

func send(_ text: String, from: TLSConnection, to: TLSConnection) -> String? {
    let written = Array(text.utf8).withUnsafeBytes { from.write($0) }
    guard written == .complete else { return nil }
    pump(from, to)
    var buffer = [UInt8](repeating: 0, count: 4096)
    guard case .bytes(let count) = buffer.withUnsafeMutableBytes({ to.read(into: $0) }) else { return nil }
    return String(decoding: buffer.prefix(count), as: UTF8.self)
}

@Suite struct TLSTests {
    @Test func issuedCertificatesCarryTheirNamesAndVerifyWithOpenSSL() throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let node = try #require(try Certificate.load(pemFile: pki.certificate("node")).first)
        #expect(node.subjectCommonName == "node-1")
        #expect(node.uniformResourceIdentifiers == ["tollgate://node/node-1?role=publisher"])
        #expect(node.dnsNames == ["localhost"])
        #expect(node.notValidAfter > Int64(Date().timeIntervalSince1970))
        let expired = try Certificate(pem: String(contentsOfFile: pki.certificate("expired"), encoding: .utf8))
        #expect(expired.notValidAfter < Int64(Date().timeIntervalSince1970))

        // The openssl command line agrees the chain is good.
        let verify = Process()
        verify.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        verify.arguments = ["verify", "-CAfile", pki.certificate("ca"), pki.certificate("node"), pki.certificate("admin")]
        let output = Pipe()
        verify.standardOutput = output
        verify.standardError = output
        try verify.run()
        verify.waitUntilExit()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(verify.terminationStatus == 0, "\(text)")
        #expect(text.contains("node.pem: OK") && text.contains("admin.pem: OK"))
    }

    @Test func mutualTLSHandshakeCarriesDataBothWays() throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let server = try pki.server(alpn: ["tollgate-rpc/1", "http/1.1"]).makeConnection()
        let client = try pki.client(as: "admin", alpn: ["http/1.1", "tollgate-rpc/1"]).makeConnection(serverHostname: "localhost")
        let (c, s) = handshake(client, server)
        #expect(c == .complete && s == .complete)
        #expect(client.protocolVersion == "TLSv1.3")
        // The server's preference wins.
        #expect(client.negotiatedProtocol == "tollgate-rpc/1" && server.negotiatedProtocol == "tollgate-rpc/1")
        #expect(server.peerCertificate?.uniformResourceIdentifiers == ["tollgate://user/admin"])
        #expect(client.peerCertificate?.subjectCommonName == "node-1")
        #expect(send("ping", from: client, to: server) == "ping")
        #expect(send("pong", from: server, to: client) == "pong")

        // close_notify: the client closes, the server sees a clean close and answers.
        #expect(client.shutdown() == .wantsMore)
        pump(client, server)
        var buffer = [UInt8](repeating: 0, count: 64)
        #expect(buffer.withUnsafeMutableBytes { server.read(into: $0) } == .closed)
        #expect(server.shutdown() == .complete)
        pump(client, server)
        #expect(client.shutdown() == .complete)
    }

    @Test func clientsWithoutAGoodCertificateAreRefused() throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        for (name, expected) in [(nil, "sent no certificate"), ("expired", "expired"), ("stranger", "unable to get local issuer")] as [(String?, String)] {
            let server = try pki.server().makeConnection()
            let client = try pki.client(as: name).makeConnection(serverHostname: "localhost")
            let (c, s) = handshake(client, server)
            guard case .failed(let error) = s else {
                Issue.record("server accepted client \(name ?? "without certificate")")
                continue
            }
            #expect(error.kind == .certificateRejected, "\(error)")
            #expect(error.description.contains(expected), "\(error)")
            // The client learns of the refusal from the server's alert.
            if case .complete = c { Issue.record("client completed a refused handshake") }
        }
    }

    @Test func clientsRefuseServersOutsideTheirTrustOrName() throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        // Wrong host name.
        let server = try pki.server().makeConnection()
        let client = try pki.client(as: "admin").makeConnection(serverHostname: "publisher.example")
        guard case .failed(let error) = handshake(client, server).0 else {
            Issue.record("client accepted a certificate for another host")
            return
        }
        #expect(error.kind == .certificateRejected && error.description.contains("hostname mismatch"))

        // A server whose certificate comes from another CA.
        let stranger = try TLSContext(configuration: .server(certificateChainFile: pki.certificate("stranger"), privateKeyFile: pki.key("stranger")))
        let result = handshake(try pki.client(as: nil).makeConnection(serverHostname: "intruder"), try stranger.makeConnection()).0
        guard case .failed(let strangerError) = result else {
            Issue.record("client accepted an unknown CA")
            return
        }
        #expect(strangerError.kind == .certificateRejected)
    }

    @Test func badConfigurationsAreReportedWithTheFile() {
        #expect(throws: TLSError.self) {
            _ = try TLSContext(configuration: .server(certificateChainFile: "/nonexistent/cert.pem", privateKeyFile: "/nonexistent/key.pem"))
        }
        do {
            _ = try TLSContext(configuration: .server(certificateChainFile: "/nonexistent/cert.pem", privateKeyFile: "/nonexistent/key.pem"))
        } catch {
            #expect(error.kind == .configuration && error.description.contains("/nonexistent/cert.pem"))
        }
        #expect(throws: TLSError.self) { _ = try TLSContext(configuration: .client(trustRootsFile: nil)) }
    }

    @Test func alpnWithoutOverlapIsFatal() throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let server = try pki.server(alpn: ["tollgate-rpc/1"]).makeConnection()
        let client = try pki.client(as: "admin", alpn: ["h2"]).makeConnection(serverHostname: "localhost")
        let (_, s) = handshake(client, server)
        guard case .failed = s else {
            Issue.record("handshake succeeded without a common protocol")
            return
        }
    }
}

@Suite struct CertificateVerificationTests {
    @Test func verifiesChainsAndValidity() throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        #expect(try Certificate.verificationFailure(pemFile: pki.certificate("node"), trustRootsFile: pki.certificate("ca")) == nil)
        #expect(try Certificate.verificationFailure(pemFile: pki.certificate("expired"), trustRootsFile: pki.certificate("ca")) == "certificate has expired")
        let foreign = try Certificate.verificationFailure(pemFile: pki.certificate("stranger"), trustRootsFile: pki.certificate("ca"))
        #expect(foreign?.contains("unable to get local issuer") == true)
        #expect(throws: TLSError.self) { try Certificate.verificationFailure(pemFile: "/nonexistent.pem", trustRootsFile: pki.certificate("ca")) }
    }
}
