import Logging
import RoleCore
import RPCCore
import Synchronization
import Testing
@testable import TollgateGateway
import TollgateProto

/// A publisher serving `WatchDeployments` from a script: its frames, then
/// nothing until the call is cancelled, as over a half-open connection.
final class ScriptedPublisher: RPCClientTransport {
    let frames: [WatchDeploymentsResponse]
    /// The `since_revision` of each call made to it.
    let calls = Mutex<[UInt64]>([])
    /// Calls that ended by cancellation.
    let cancelled = Atomic<Int>(0)

    init(_ frames: [WatchDeploymentsResponse]) { self.frames = frames }

    func serverStreaming<Request: ProtoMessage, Response: ProtoMessage>(
        _ method: ProtoMethod, _ request: Request, options: CallOptions, onResponse: @escaping @Sendable (Response) async throws -> Void
    ) async throws {
        guard let request = request as? WatchDeploymentsRequest, Response.self == WatchDeploymentsResponse.self else {
            throw RPCError(.unimplemented, "only WatchDeployments is scripted")
        }
        calls.withLock { $0.append(request.sinceRevision) }
        for frame in frames { try await onResponse(frame as! Response) }
        do {
            try await Task.sleep(for: .seconds(3600))
        } catch {
            cancelled.add(1, ordering: .relaxed)
            throw error
        }
    }

    func unary<Request: ProtoMessage, Response: ProtoMessage>(_ method: ProtoMethod, _ request: Request, options: CallOptions,
                                                              as: Response.Type) async throws -> Response {
        throw RPCError(.unimplemented, "only WatchDeployments is scripted")
    }

    func clientStreaming<Requests: AsyncSequence & Sendable, Response: ProtoMessage>(
        _ method: ProtoMethod, requests: Requests, options: CallOptions, as: Response.Type
    ) async throws -> Response where Requests.Element: ProtoMessage {
        throw RPCError(.unimplemented, "only WatchDeployments is scripted")
    }

    func bidirectional<Requests: AsyncSequence & Sendable, Response: ProtoMessage>(
        _ method: ProtoMethod, requests: Requests, options: CallOptions, onResponse: @escaping @Sendable (Response) async throws -> Void
    ) async throws where Requests.Element: ProtoMessage {
        throw RPCError(.unimplemented, "only WatchDeployments is scripted")
    }
}

struct ScriptedPeers: PeerDirectory {
    let publishers: [ScriptedPublisher]
    func transports(for role: Role) -> [any RPCClientTransport] { role == .publisher ? publishers : [] }
    func namedTransports(for role: Role) -> [(name: String, transport: any RPCClientTransport)] {
        transports(for: role).enumerated().map { ("publisher-\($0.offset)", $0.element) }
    }
}

@Suite struct FeedWatcherTests {
    static func caughtUp(_ revision: UInt64, heartbeatSeconds: UInt32) -> WatchDeploymentsResponse {
        WatchDeploymentsResponse(frame: .caughtUp(DeploymentFeedCaughtUp(revision: revision, heartbeatSeconds: heartbeatSeconds)))
    }

    @Test func silenceCountsOnlyOnceAHeartbeatIsAnnounced() {
        let liveness = FeedLiveness()
        liveness.heard()
        let start = ContinuousClock.now
        #expect(liveness.silenceExceeded(at: start + .seconds(3600)) == nil, "a feed without heartbeats (an older publisher) is never timed out")
        liveness.heard(heartbeatSeconds: 10)
        let heard = ContinuousClock.now
        #expect(liveness.silenceExceeded(at: heard + .seconds(29)) == nil)
        #expect(liveness.silenceExceeded(at: heard + .seconds(31)) != nil, "three missed heartbeats")
        // Any frame restarts the count.
        liveness.heard()
        #expect(liveness.silenceExceeded(at: ContinuousClock.now + .seconds(29)) == nil)
    }

    @Test func aStreamAfterOneThatAnnouncedAHeartbeatIsHeldToItFromItsStart() {
        // The previous stream announced ten seconds; this one has heard nothing yet (a dead connection, say).
        let next = FeedLiveness(heartbeatSeconds: 10)
        let opened = ContinuousClock.now
        #expect(next.silenceExceeded(at: opened + .seconds(31)) != nil)
        // Held to it, but not announcing it: the stream after an older peer's is untimed again.
        #expect(next.heartbeatSeconds == nil)
        #expect(FeedLiveness(heartbeatSeconds: next.heartbeatSeconds).silenceExceeded(at: opened + .seconds(3600)) == nil)
        next.heard(heartbeatSeconds: 10)
        #expect(next.heartbeatSeconds == 10)
    }

    /// The first publisher announces a one-second heartbeat, then goes
    /// silent: the watcher gives up on it and resumes from the second.
    @Test func aSilentFeedIsDroppedForTheNextPublisher() async throws {
        var snapshot = DeploymentSnapshotChunk()
        snapshot.revision = 5
        snapshot.last = true
        let silent = ScriptedPublisher([WatchDeploymentsResponse(frame: .snapshot(snapshot)), Self.caughtUp(5, heartbeatSeconds: 1)])
        let healthy = ScriptedPublisher([Self.caughtUp(5, heartbeatSeconds: 1)])
        let feed = FeedStatus()
        let deployment = DeploymentHolder()
        let watcher = DeploymentWatcher(peers: ScriptedPeers(publishers: [silent, healthy]), deployment: deployment,
                                        cache: ValidationCache(maxLifetimeMs: 1000, negativeLifetimeMs: 100, maxEntries: 100),
                                        store: nil, feed: feed, logger: Logger(label: "test"))
        let running = Task { try await watcher.run() }
        defer { running.cancel() }
        let deadline = ContinuousClock.now + .seconds(60)
        while healthy.calls.withLock({ $0.isEmpty }) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(silent.calls.withLock { $0 } == [0])
        #expect(silent.cancelled.load(ordering: .relaxed) == 1, "the silent stream was cancelled")
        #expect(healthy.calls.withLock { $0 } == [5], "resumed from the snapshot's revision at the next publisher")
        #expect(deployment.current.revision == 5)
        while !feed.connected && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
        #expect(feed.connected, "the next publisher's caught-up frame confirms the state")
    }
}
