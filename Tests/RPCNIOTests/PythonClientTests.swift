import Foundation
import NIOCore
import NIOPosix
import OpenSSLKit
import RPCCore
import RPCNIO
import TestSupport
import Testing
import TollgateProto
import TollgateServices
import TollgateStorage
import TollgateUsers

/// Tests/Interop/rpc_client.py, written from docs/rpc-protocol.md alone with
/// Python's ssl and protobuf, calls our server: the document is enough to
/// interoperate.
@Suite(.serialized) struct PythonClientTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    let script = root.appendingPathComponent("Tests/Interop/rpc_client.py").path
    var python: String {
        ProcessInfo.processInfo.environment["TOLLGATE_PYTHON"] ?? Self.root.appendingPathComponent(".venv/bin/python").path
    }

    /// Runs the client on a thread of its own: blocking a Swift concurrency
    /// thread here would starve the server's handler tasks in this process.
    func runClient(_ arguments: [String]) async throws -> (Int32, String) {
        let python = self.python, script = self.script
        return try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                do {
                    let process = Process()
                    process.executableURL = URL(fileURLWithPath: python)
                    process.arguments = [script] + arguments
                    let output = Pipe()
                    process.standardOutput = output
                    process.standardError = output
                    try process.run()
                    let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                    process.waitUntilExit()
                    continuation.resume(returning: (process.terminationStatus, text))
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }

    /// The Python client signs in through UserService/Login, then makes a
    /// unary and a server-streaming call with the session token and a
    /// client certificate, against the real access rules.
    @Test func unaryAndServerStreamingWithATokenAndAClientCertificate() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let data = FileManager.default.temporaryDirectory.appendingPathComponent("tollgate-pyclient-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: data) }
        let directory = UserDirectory(database: try UserDatabase.open(in: data), hasher: SecretHasher(settings: .testing))
        try await directory.bootstrap(admin: ("root", "python-Peer-1"))
        var rules = AccessTable.rulesByPath
        rules[Echo.expand.path] = .signedIn
        let access = AccessController(rules: rules, sessions: directory, tenants: SuperTenantAdministration())

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let ping = RPCMethodHandler.unary(NodeServiceDescriptor.ping) { (request: PingRequest, context) in
            PingResponse(payload: request.payload, serverTimeUnixMs: 42, nodeId: "\(context.caller) via \(context.peer?.description ?? "?")")
        }
        let methods = [ping] + echoHandlers() + UserService(directory: directory).methodHandlers
        let server = RPCServer(methods: methods, tls: try pki.server(alpn: [RPCServer.alpn])) { (context) throws(RPCError) -> Caller in
            try access.authorize(context)
        }
        let port = try await server.bind(host: "127.0.0.1", port: 0, group: group).port!
        let common = ["--host", "127.0.0.1", "--server-name", "localhost", "--port", String(port), "--ca", pki.certificate("ca"),
                      "--cert", pki.certificate("admin"), "--key", pki.key("admin"), "--timeout-ms", "10000"]

        let (loginStatus, loginOutput) = try await runClient(common + ["unary", UserServiceDescriptor.login.path, LoginRequest.protoName,
                                                                 LoginResponse.protoName, "--request-json", #"{"username": "root", "password": "python-Peer-1"}"#])
        #expect(loginStatus == 0, "\(loginOutput)")
        let json = try #require(loginOutput.split(separator: "\n").first { $0.hasPrefix("{") })
        let object = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        let token = try #require(object?["session_token"] as? String)

        let (status, output) = try await runClient(common + ["--token=\(token)", "unary", NodeServiceDescriptor.ping.path,
                                                       PingRequest.protoName, PingResponse.protoName, "--request-json", #"{"payload": "AQID"}"#])
        #expect(status == 0, "\(output)")
        #expect(output.contains(#""payload": "AQID""#) && output.contains("user root@carbon.super via user admin"), "\(output)")
        #expect(output.contains("status 0"), "\(output)")

        // 2,000 responses of 256 bytes: more than the 1 MiB window, so the
        // Python client's WINDOW_UPDATEs are exercised.
        let (streamStatus, streamed) = try await runClient(common + ["--token=\(token)", "stream", Echo.expand.path, PingRequest.protoName,
                                                               PingResponse.protoName, "--request-json", #"{"payload": "Ag=="}"#])
        #expect(streamStatus == 0, "\(streamed.suffix(500))")
        #expect(streamed.split(separator: "\n").filter { $0.hasPrefix("{") }.count == 2000, "\(streamed.suffix(500))")

        // A wrong token is refused whatever else is presented; no token, no stream.
        let (badStatus, bad) = try await runClient(common + ["--token", "not-a-session", "unary", NodeServiceDescriptor.ping.path, PingRequest.protoName, PingResponse.protoName])
        #expect(badStatus == 1 && bad.contains("status 16"), "\(bad)")
        let (refusedStatus, refused) = try await runClient(common + ["stream", Echo.expand.path, PingRequest.protoName, PingResponse.protoName])
        #expect(refusedStatus == 1 && refused.contains("status 7"), "\(refused)")
        await server.shutdown(drainTimeout: .seconds(2))
        try? await group.shutdownGracefully()
    }
}
