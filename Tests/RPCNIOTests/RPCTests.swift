import Foundation
import NIOCore
import NIOPosix
import OpenSSLKit
import RPCCore
import RPCNIO
import Synchronization
import TestSupport
import Testing
import TollgateProto

/// Test methods over the Ping messages, one per call shape.
enum Echo {
    static func method(_ name: String, client: Bool, server: Bool) -> ProtoMethod {
        ProtoMethod(service: "tollgate.test.Echo", name: name, inputType: PingRequest.protoName, outputType: PingResponse.protoName,
                    clientStreaming: client, serverStreaming: server)
    }
    static let unary = method("Unary", client: false, server: false)
    static let expand = method("Expand", client: false, server: true)
    static let collect = method("Collect", client: true, server: false)
    static let chat = method("Chat", client: true, server: true)
    static let slow = method("Slow", client: false, server: false)
    static let fail = method("Fail", client: false, server: false)
    static let crash = method("Crash", client: false, server: false)
    static let nulResponse = method("NulResponse", client: false, server: false)
    static let nulStatus = method("NulStatus", client: false, server: false)
}

/// What the slow method's handlers went through, counted per server so
/// that no other test's calls (in this suite or one running beside it) count.
final class SlowCalls: Sendable {
    /// Handlers that began: the call reached the server.
    let started = Watched(0)
    /// Handlers whose task was cancelled.
    let cancelled = Watched(0)
}

struct Unexpected: Error {}

func echoHandlers(slowCalls: SlowCalls = SlowCalls()) -> [RPCMethodHandler] {
    [
        .unary(Echo.unary) { (request: PingRequest, context) in
            PingResponse(payload: request.payload, nodeId: context.metadata["x-who"] ?? context.peer?.description ?? "anonymous")
        },
        .serverStreaming(Echo.expand) { (request: PingRequest, writer: ResponseWriter<PingResponse>, _) in
            // The request's first byte says how many thousand responses to send.
            for index in 0..<(Int(request.payload.first ?? 1) * 1000) {
                try await writer.write(PingResponse(payload: [UInt8](repeating: UInt8(index % 251), count: 256), serverTimeUnixMs: Int64(index)))
            }
        },
        .clientStreaming(Echo.collect) { (requests: RequestStream<PingRequest>, _) in
            var total: [UInt8] = []
            for try await request in requests { total += request.payload }
            return PingResponse(payload: total)
        },
        .bidirectional(Echo.chat) { (requests: RequestStream<PingRequest>, writer: ResponseWriter<PingResponse>, _) in
            for try await request in requests { try await writer.write(PingResponse(payload: request.payload.reversed())) }
        },
        .unary(Echo.slow) { (_: PingRequest, _) -> PingResponse in
            slowCalls.started.increment()
            do {
                // The sleep is the method: a handler that outlives every
                // deadline and drain the tests use, so only cancellation
                // (or the drain's end) finishes it early.
                try await Task.sleep(for: .seconds(30))
            } catch {
                slowCalls.cancelled.increment()
                throw error
            }
            return PingResponse()
        },
        .unary(Echo.fail) { (_: PingRequest, _) -> PingResponse in throw RPCError(.notFound, "no such thing") },
        .unary(Echo.crash) { (_: PingRequest, _) -> PingResponse in throw Unexpected() },
        .unary(Echo.nulResponse) { (_: PingRequest, _) in PingResponse(nodeId: "node\u{0}1") },
        .unary(Echo.nulStatus) { (_: PingRequest, _) -> PingResponse in throw RPCError(.notFound, "no \u{0} thing") },
    ]
}

/// Counts the server's open connections as its listener reports them.
final class ConnectionCount: RPCServerObserver {
    let open = Watched(0)
    func connectionOpened() { open.update { $0 += 1 } }
    func connectionClosed() { open.update { $0 -= 1 } }
    func connectionFailed(peer: String, reason: String) {}
    func callFinished(path: String, code: RPCCode, duration: Duration, requestID: String, caller: Caller, message: String, cause: (any Error)?) {}
}

/// A server on loopback and a connected client, with mutual TLS from a test PKI.
struct Harness {
    let pki: TestPKI
    let group: MultiThreadedEventLoopGroup
    let server: RPCServer
    let port: Int
    /// The slow method's handlers on this server (with the default methods).
    let slowCalls = SlowCalls()
    let connections = ConnectionCount()

    /// `methods` nil: ``echoHandlers(slowCalls:)`` reporting to ``slowCalls``.
    /// `certificateOptional`: clients may come without a certificate, as on the admin listener.
    init(limits: RPCLimits = RPCLimits(), methods: [RPCMethodHandler]? = nil, certificateOptional: Bool = false,
         authorize: @escaping @Sendable (ServerCallContext) throws(RPCError) -> Caller = { _ in .anonymous }) async throws {
        pki = try TestPKI()
        group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        server = RPCServer(methods: methods ?? echoHandlers(slowCalls: slowCalls), tls: try pki.server(alpn: [RPCServer.alpn], verification: certificateOptional ? .peer : .peerRequired), limits: limits,
                           observer: connections, authorize: authorize)
        port = try await server.bind(host: "127.0.0.1", port: 0, group: group).port!
    }

    /// Runs `body` with a new harness and stops it afterwards, whether `body`
    /// returned or threw.
    static func with<T>(limits: RPCLimits = RPCLimits(), methods: [RPCMethodHandler]? = nil, certificateOptional: Bool = false,
                        authorize: @escaping @Sendable (ServerCallContext) throws(RPCError) -> Caller = { _ in .anonymous },
                        isolation: isolated (any Actor)? = #isolation, _ body: (Harness) async throws -> T) async throws -> T {
        let harness = try await Harness(limits: limits, methods: methods, certificateOptional: certificateOptional, authorize: authorize)
        return try await withTeardown { try await body(harness) } teardown: { await harness.stop() }
    }

    /// - Parameter source: the loopback address to connect from (any of 127.0.0.0/8).
    func connect(as name: String? = "admin", from source: String? = nil) async throws -> RPCConnection {
        try await RPCConnection.connect(host: "127.0.0.1", port: port, serverHostname: "localhost",
                                        tls: try pki.client(as: name, alpn: [RPCServer.alpn]), localAddress: source, group: group)
    }

    /// Shuts the server down (again, if a test already did) and its loops.
    func stop() async {
        await server.shutdown(drainTimeout: .seconds(2))
        try? await group.shutdownGracefully()
        pki.remove()
    }
}

@Suite(.serialized) struct RPCTests {
    @Test func allFourCallShapes() async throws {
        try await Harness.with { harness in
            let client = try await harness.connect()
            var options = CallOptions()
            options.metadata.add("x-who", "tester")

            let reply: PingResponse = try await client.unary(Echo.unary, PingRequest(payload: [1, 2, 3]), options: options)
            #expect(reply.payload == [1, 2, 3] && reply.nodeId == "tester")
            let anonymous: PingResponse = try await client.unary(Echo.unary, PingRequest())
            #expect(anonymous.nodeId == "user admin", "the server read the caller from the certificate")

            // 10,000 responses of 256 bytes: 2.5 MB, more than the 1 MiB window.
            let received = Atomic<Int>(0)
            try await client.serverStreaming(Echo.expand, PingRequest(payload: [10])) { (response: PingResponse) in
                #expect(response.serverTimeUnixMs == Int64(received.load(ordering: .relaxed)))
                received.add(1, ordering: .relaxed)
            }
            #expect(received.load(ordering: .relaxed) == 10_000)

            let requests = AsyncStream<PingRequest> { continuation in
                for index in 0..<1000 { continuation.yield(PingRequest(payload: [UInt8(index % 256)])) }
                continuation.finish()
            }
            let collected: PingResponse = try await client.clientStreaming(Echo.collect, requests: requests)
            #expect(collected.payload == (0..<1000).map { UInt8($0 % 256) })

            let chat = AsyncStream<PingRequest> { continuation in
                for word in ["abc", "tollgate", "xyz"] { continuation.yield(PingRequest(payload: Array(word.utf8))) }
                continuation.finish()
            }
            let replies = Mutex<[String]>([])
            try await client.bidirectional(Echo.chat, requests: chat) { (response: PingResponse) in
                replies.withLock { $0.append(String(decoding: response.payload, as: UTF8.self)) }
            }
            #expect(replies.withLock { $0 } == ["cba", "etagllot", "zyx"])
            await client.close()
        }
    }

    @Test func errorsMapToStatusCodes() async throws {
        try await Harness.with { harness in
            let client = try await harness.connect()
            // Trailers also carry the request id, so compare code and message.
            await #expect { let _: PingResponse = try await client.unary(Echo.fail, PingRequest()) } throws: { error in
                (error as? RPCError).map { ($0.code, $0.message) == (.notFound, "no such thing") } ?? false
            }
            // An error the server does not know becomes INTERNAL pointing at the
            // server's log; its own text (the cause) never reaches the client.
            await #expect { let _: PingResponse = try await client.unary(Echo.crash, PingRequest()) } throws: { error in
                (error as? RPCError).map { $0.code == .internal && $0.message.contains("server's log") && $0.cause == nil } ?? false
            }
            let missing = ProtoMethod(service: "tollgate.test.Echo", name: "Missing", inputType: "", outputType: "", clientStreaming: false, serverStreaming: false)
            do {
                let _: PingResponse = try await client.unary(missing, PingRequest())
                Issue.record("unknown method answered")
            } catch let error as RPCError {
                #expect(error.code == .unimplemented)
            }
            // Strings holding U+0000 cannot be encoded: INTERNAL naming the field, never a cut string.
            await #expect { let _: PingResponse = try await client.unary(Echo.nulResponse, PingRequest()) } throws: { error in
                (error as? RPCError).map { $0.code == .internal && $0.message.contains("'node_id'") } ?? false
            }
            await #expect { let _: PingResponse = try await client.unary(Echo.nulStatus, PingRequest()) } throws: { error in
                (error as? RPCError).map { $0.code == .internal && $0.message.contains("status cannot be sent") } ?? false
            }
            var options = CallOptions()
            options.metadata.add("x-who", "a\u{0}b")
            await #expect { let _: PingResponse = try await client.unary(Echo.unary, PingRequest(), options: options) } throws: { error in
                (error as? RPCError).map { $0.code == .internal && $0.message.contains("request headers cannot be sent") } ?? false
            }
            // The connection is still good after failed calls.
            let reply: PingResponse = try await client.unary(Echo.unary, PingRequest(payload: [9]))
            #expect(reply.payload == [9])
            await client.close()
        }
    }

    @Test func deadlinesAreEnforcedAndCancelTheHandler() async throws {
        try await Harness.with { harness in
            let client = try await harness.connect()
            let start = ContinuousClock.now
            await #expect { let _: PingResponse = try await client.unary(Echo.slow, PingRequest(), options: CallOptions(timeout: .milliseconds(300))) }
                throws: { ($0 as? RPCError)?.code == .deadlineExceeded }
            #expect(ContinuousClock.now - start < .seconds(10))
            // The server side noticed too and cancelled its handler.
            try await harness.slowCalls.cancelled.wait(for: "the server to cancel the slow handler") { $0 >= 1 }
            #expect(harness.slowCalls.started.current == 1 && harness.slowCalls.cancelled.current == 1)
            await client.close()
        }
    }

    @Test func clientCancellationReachesTheServer() async throws {
        try await Harness.with { harness in
            let client = try await harness.connect()
            let call = Task {
                let _: PingResponse = try await client.unary(Echo.slow, PingRequest())
            }
            // Cancelled once the server runs it, so the cancellation has to travel.
            try await harness.slowCalls.started.wait(for: "the slow call to reach its handler") { $0 >= 1 }
            call.cancel()
            await #expect { try await call.value } throws: { ($0 as? RPCError)?.code == .cancelled }
            try await harness.slowCalls.cancelled.wait(for: "the server to cancel the slow handler") { $0 >= 1 }
            await client.close()
        }
    }

    @Test func aHundredConcurrentCallsShareOneConnection() async throws {
        try await Harness.with { harness in
            let client = try await harness.connect()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<100 {
                    group.addTask {
                        let payload = Array("call-\(index)".utf8)
                        let reply: PingResponse = try await client.unary(Echo.unary, PingRequest(payload: payload))
                        #expect(reply.payload == payload)
                    }
                }
                try await group.waitForAll()
            }
            await client.close()
        }
    }

    @Test func authorizationRunsBeforeTheHandler() async throws {
        let authorize = { @Sendable (context: ServerCallContext) throws(RPCError) -> Caller in
            guard let peer = context.peer else { throw RPCError(.unauthenticated, "no identity") }
            if case .user(let name) = peer, name != "admin" { throw RPCError(.permissionDenied, "\(name) may not call \(context.method.name)") }
            return .anonymous
        }
        try await Harness.with(authorize: authorize) { harness in
            let admin = try await harness.connect(as: "admin")
            let reply: PingResponse = try await admin.unary(Echo.unary, PingRequest(payload: [1]))
            #expect(reply.payload == [1])
            await admin.close()
            // Another user's certificate passes TLS but not the method's rule.
            let guest = try await harness.connect(as: "guest")
            await #expect { let _: PingResponse = try await guest.unary(Echo.unary, PingRequest()) }
                throws: { error in (error as? RPCError).map { ($0.code, $0.message) == (.permissionDenied, "guest may not call Unary") } ?? false }
            // Refused before the handler ran: the 30-second handler answers at once.
            let start = ContinuousClock.now
            await #expect { let _: PingResponse = try await guest.unary(Echo.slow, PingRequest()) } throws: { ($0 as? RPCError)?.code == .permissionDenied }
            #expect(ContinuousClock.now - start < .seconds(20))
            #expect(harness.slowCalls.started.current == 0, "the handler never ran")
            await guest.close()
        }
    }

    /// A feed that watches the stop signal ends with UNAVAILABLE when the
    /// drain begins (its client resumes elsewhere), while a unary call in
    /// flight on the same connection still runs to its end.
    @Test func feedsEndWhenTheDrainBeginsAndOtherCallsFinish() async throws {
        let feed = Echo.method("Feed", client: false, server: true)
        let pausing = Watched(false)
        let handlers = echoHandlers() + [
            .serverStreaming(feed) { (_: PingRequest, writer: ResponseWriter<PingResponse>, context) in
                try await context.untilStopping {
                    try await writer.write(PingResponse(payload: [1]))
                    try await Task.sleep(for: .seconds(3600))
                }
            },
            .unary(Echo.method("Pause", client: false, server: false)) { (_: PingRequest, _) -> PingResponse in
                pausing.update { $0 = true }
                try await Task.sleep(for: .milliseconds(500))
                return PingResponse(payload: [2])
            },
        ]
        try await Harness.with(methods: handlers) { harness in
            let client = try await harness.connect()
            let first = Watched(false)
            let watching = Task {
                try await client.serverStreaming(feed, PingRequest()) { (_: PingResponse) in first.update { $0 = true } }
            }
            try await first.wait(for: "the feed's first response") { $0 }
            let pause = Task { () -> PingResponse in try await client.unary(Echo.method("Pause", client: false, server: false), PingRequest()) }
            try await pausing.wait(for: "the unary call to reach its handler") { $0 }
            // Much longer than anything here takes: a feed still open would end "drain period is over".
            let shutdown = Task { await harness.server.shutdown(drainTimeout: .seconds(60)) }
            await #expect { try await watching.value } throws: { error in
                let status = error as? RPCError
                return status?.code == .unavailable && status?.message.contains("the node is stopping") == true
            }
            #expect(try await pause.value.payload == [2], "the unary call in flight finished")
            await shutdown.value
            await client.close()
        }
    }

    @Test func shutdownLetsCallsInFlightFinishAndRefusesNewOnes() async throws {
        try await Harness.with { harness in
            let client = try await harness.connect()
            // A long stream is running when the server starts shutting down:
            // the client holds its first response until the GOAWAY is in, and
            // without taking responses it grants no window, so the server
            // cannot have finished 20,000 (5 MB) by then.
            let received = Watched(0)
            let release = Watched(false)
            let streaming = Task {
                try await client.serverStreaming(Echo.expand, PingRequest(payload: [20])) { (_: PingResponse) in
                    if received.update({ $0 += 1; return $0 }) == 1 {
                        try await release.wait(for: "the test to let the stream go on") { $0 }
                    }
                }
                return received.current
            }
            try await received.wait(for: "the stream's first response") { $0 >= 1 }
            let shutdown = Task { await harness.server.shutdown(drainTimeout: .seconds(20)) }
            try await eventually("the client to receive GOAWAY") { !client.acceptsCalls }
            release.update { $0 = true }
            let finished = try await streaming.value
            #expect(finished == 20_000, "the call in flight completed")
            await shutdown.value
            await #expect { let _: PingResponse = try await client.unary(Echo.unary, PingRequest()) }
                throws: { ($0 as? RPCError)?.code == .unavailable }
            await client.close()
        }
    }
}
