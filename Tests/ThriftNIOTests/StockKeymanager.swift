import Foundation
import TestSupport
import ThriftNIO

/// A stock Apache Thrift server acting as a WSO2 keymanager
/// (Tests/Interop/thrift_peer.py `server`): the authenticator over HTTPS
/// and APIKeyValidationService over TLS, answering from a JSON file.
final class StockKeymanager: Sendable {
    static var python: String { ProcessInfo.processInfo.environment["TOLLGATE_PYTHON"] ?? "/usr/bin/python3" }
    static var peer: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Interop/thrift_peer.py").path
    }

    let process: Process
    let reader: PipeReader
    let input: Pipe
    let thriftPort: Int
    let authenticatorPort: Int

    /// - Parameter sessionCalls: a session is refused after this many calls (0: never).
    init(fixture: NodeFixture, certificate: String, answers: String, sessionCalls: Int = 0) async throws {
        thriftPort = try NodeFixture.freePort()
        authenticatorPort = try NodeFixture.freePort()
        let answersPath = fixture.path("answers-\(thriftPort).json")
        try answers.write(toFile: answersPath, atomically: true, encoding: .utf8)
        process = Process()
        process.executableURL = URL(fileURLWithPath: Self.python)
        process.arguments = [Self.peer, "server", "--cert", fixture.path("\(certificate).pem"), "--key", fixture.path("\(certificate).key"),
                             "--answers", answersPath, "--user", "gateway", "--password", "gateway-secret",
                             "--thrift-port", String(thriftPort), "--auth-port", String(authenticatorPort), "--session-calls", String(sessionCalls)]
        let output = Pipe()
        input = Pipe()
        process.standardOutput = output
        process.standardError = output
        process.standardInput = input
        try process.run()
        reader = PipeReader(output)
        guard await reader.contains("ready", timeout: .seconds(60)) else {
            kill()
            throw TimedOut(what: "the stock Thrift server to listen", timeout: .seconds(60), lastSeen: reader.text)
        }
    }

    func endpoint(host: String = "localhost") -> ThriftKeyValidationClient.Endpoint {
        ThriftKeyValidationClient.Endpoint(host: host, thriftPort: thriftPort, authenticatorURL: "https://\(host):\(authenticatorPort)/thriftAuthenticator")
    }

    /// Kills it at once, as a crash would.
    func kill() {
        if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}

/// File descriptors this process has open.
func openFileDescriptors() -> Int {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).count
}
