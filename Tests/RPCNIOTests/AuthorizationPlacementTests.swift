import NIOCore
import NIOPosix
import RPCCore
import RPCNIO
import Synchronization
import TestSupport
import Testing
import TollgateProto

/// Records where authorization ran and what the observer heard.
final class PlacementProbe: CallAuthorizer, RPCServerObserver {
    let authorizedOnLoop = Mutex<[Bool]>([])
    let causes = Mutex<[String]>([])
    let storage: Bool

    init(readsStorage: Bool) { storage = readsStorage }

    func authorize(_ context: ServerCallContext) throws(RPCError) -> Caller {
        authorizedOnLoop.withLock { $0.append(MultiThreadedEventLoopGroup.currentEventLoop != nil) }
        return .anonymous
    }

    func readsStorage(_ context: ServerCallContext) -> Bool { storage }

    func connectionOpened() {}
    func connectionClosed() {}
    func connectionFailed(peer: String, reason: String) {}
    func callFinished(path: String, code: RPCCode, duration: Duration, requestID: String, caller: Caller, message: String, cause: (any Error)?) {
        if let cause { causes.withLock { $0.append("\(cause)") } }
    }
}

struct SecretFailure: Error, CustomStringConvertible {
    var description: String { "MDB_PANIC: the storage library's own words" }
}

@Suite struct AuthorizationPlacementTests {
    func serve(_ probe: PlacementProbe, _ methods: [RPCMethodHandler], _ body: (RPCConnection) async throws -> Void) async throws {
        let pki = try TestPKI()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = RPCServer(methods: methods, tls: try pki.server(alpn: [RPCServer.alpn]), observer: probe, authorizer: probe)
        let port = try await server.bind(host: "127.0.0.1", port: 0, group: group).port!
        let client = try await RPCConnection.connect(host: "127.0.0.1", port: port, serverHostname: "localhost",
                                                     tls: try pki.client(as: "admin", alpn: [RPCServer.alpn]), group: group)
        do {
            try await body(client)
        } catch {
            await client.close()
            await server.shutdown(drainTimeout: .zero)
            try? await group.shutdownGracefully()
            pki.remove()
            throw error
        }
        await client.close()
        await server.shutdown(drainTimeout: .zero)
        try await group.shutdownGracefully()
        pki.remove()
    }

    static let onLoop = RPCMethodHandler.unary(Echo.unary) { (request: PingRequest, _) in
        PingResponse(payload: request.payload, nodeId: MultiThreadedEventLoopGroup.currentEventLoop == nil ? "pool" : "loop")
    }.placed(.eventLoop)

    @Test func anAuthorizationThatReadsStorageNeverRunsOnTheLoop() async throws {
        let probe = PlacementProbe(readsStorage: true)
        try await serve(probe, [Self.onLoop]) { client in
            let response: PingResponse = try await client.unary(Echo.unary, PingRequest())
            // The handler prefers the loop, but the lookup moved the whole call to the pool.
            #expect(response.nodeId == "pool")
        }
        #expect(probe.authorizedOnLoop.withLock { $0 } == [false])
    }

    @Test func anAuthorizationWithoutLookupsKeepsTheLoopPlacement() async throws {
        let probe = PlacementProbe(readsStorage: false)
        try await serve(probe, [Self.onLoop]) { client in
            let response: PingResponse = try await client.unary(Echo.unary, PingRequest())
            #expect(response.nodeId == "loop")
        }
        #expect(probe.authorizedOnLoop.withLock { $0 } == [true])
    }

    @Test func theCauseReachesTheObserverButNotTheClient() async throws {
        let probe = PlacementProbe(readsStorage: false)
        let failing = RPCMethodHandler.unary(Echo.crash) { (_: PingRequest, _) -> PingResponse in throw SecretFailure() }
        try await serve(probe, [failing]) { client in
            await #expect { let _: PingResponse = try await client.unary(Echo.crash, PingRequest()) } throws: { error in
                guard let status = error as? RPCError else { return false }
                return status.code == .internal && !status.message.contains("MDB_PANIC") && status.message.contains("request id")
            }
        }
        #expect(probe.causes.withLock { $0 } == ["MDB_PANIC: the storage library's own words"])
    }
}
