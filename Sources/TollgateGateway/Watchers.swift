import Foundation
import Logging
import RoleCore
import RPCCore
import ServiceLifecycle
import Synchronization
import ThrottleCore
import TollgateProto
import TollgateServices

/// Whether the deployment feed is connected, and when a publisher last
/// confirmed the state being served (by a snapshot, a change or a
/// caught-up frame: on a healthy quiet cluster, within a heartbeat).
final class FeedStatus: Sendable {
    private struct State {
        var connected = false
        var confirmedAtUnixMs: Int64 = 0
        var servingFromDisk = false
        var lastError = ""
    }
    private let state = Mutex(State())

    var connected: Bool { state.withLock { $0.connected } }
    var servingFromDisk: Bool { state.withLock { $0.servingFromDisk } }
    var lastError: String { state.withLock { $0.lastError } }

    func confirmedAtUnixMs(fallback: Int64) -> Int64 {
        state.withLock { $0.confirmedAtUnixMs > 0 ? $0.confirmedAtUnixMs : fallback }
    }

    func loadedFromDisk(at unixMs: Int64) {
        state.withLock {
            $0.servingFromDisk = true
            $0.confirmedAtUnixMs = unixMs
        }
    }

    func confirmed() {
        let now = Clock.unixMs()
        state.withLock {
            $0.connected = true
            $0.servingFromDisk = false
            $0.confirmedAtUnixMs = now
            $0.lastError = ""
        }
    }

    func disconnected(_ error: String) {
        state.withLock {
            $0.connected = false
            $0.lastError = error
        }
    }
}

/// Watches the publishers' deployment feed (`WatchDeployments`): a snapshot
/// is collected whole, then swapped in; each change is applied to a copy of
/// the state and swapped in. Traffic never waits for either. A caught-up
/// frame (after the start, then as a heartbeat on a quiet stream) confirms
/// the state without changing it. On a lost stream, or one silent past three
/// heartbeats, it reconnects with back-off, to the next publisher in the
/// list, resuming from the revision it holds. The state is saved to disk (at most
/// every two seconds, and at shutdown) so a restart serves it while
/// publishers are down; a burst of publishes costs one save, not one each.
struct DeploymentWatcher: Service {
    let peers: any PeerDirectory
    let deployment: DeploymentHolder
    let cache: ValidationCache
    let store: DeploymentStore?
    let feed: FeedStatus
    let logger: Logger

    private final class Progress: Sendable {
        let snapshot = Mutex<[DeploymentSnapshotChunk]>([])
        let dirty = Atomic<Bool>(false)
    }

    func run() async throws {
        let progress = Progress()
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await persist(progress) }
            group.addTask { await watch(progress) }
            await group.next()
            group.cancelAll()
        }
        save()
    }

    private func watch(_ progress: Progress) async {
        await cancelWhenGracefulShutdown {
            var failures = 0
            var next = 0
            var heartbeatSeconds: UInt32?
            while !Task.isCancelled {
                let publishers = peers.transports(for: .publisher)
                guard !publishers.isEmpty else {
                    feed.disconnected("no publisher is configured under [peers]")
                    try? await Task.sleep(for: .seconds(5))
                    continue
                }
                let transport = publishers[next % publishers.count]
                let request = WatchDeploymentsRequest(sinceRevision: deployment.current.revision)
                progress.snapshot.withLock { $0.removeAll() }
                let liveness = FeedLiveness(heartbeatSeconds: heartbeatSeconds)
                defer { heartbeatSeconds = liveness.heartbeatSeconds }
                do {
                    try await liveness.run {
                        try await PublisherServiceClient(transport).watchDeployments(request) { response in
                            if case .caughtUp(let caughtUp)? = response.frame {
                                liveness.heard(heartbeatSeconds: caughtUp.heartbeatSeconds)
                            } else {
                                liveness.heard()
                            }
                            apply(response, progress)
                        }
                    }
                    feed.disconnected("the publisher ended the feed")
                } catch {
                    if liveness.received { failures = 0 }
                    feed.disconnected("\(error)")
                    if failures == 0 { logger.warning("deployment feed lost; serving the last state (revision \(deployment.current.revision)): \(error)") }
                    failures += 1
                    next += 1
                }
                // 0.25 s, doubling to 10 s: a restarting publisher is found quickly, a dead one not hammered.
                let delay = min(10_000, 250 << min(failures, 6))
                try? await Task.sleep(for: .milliseconds(failures == 0 ? 250 : delay))
            }
        }
    }

    private func apply(_ response: WatchDeploymentsResponse, _ progress: Progress) {
        switch response.frame {
        case .snapshot(let chunk):
            let chunks: [DeploymentSnapshotChunk]? = progress.snapshot.withLock { chunks in
                chunks.append(chunk)
                guard chunk.last else { return nil }
                defer { chunks.removeAll() }
                return chunks
            }
            guard let chunks else { return }
            let state = DeploymentState(snapshot: chunks, appliedAtUnixMs: Clock.unixMs())
            deployment.replace(state)
            feed.confirmed()
            progress.dirty.store(true, ordering: .relaxed)
            logger.info("deployment snapshot applied", metadata: ["revision": "\(state.revision)", "apis": "\(state.apis.count)"])
        case .change(let change):
            deployment.replace(deployment.current.applying([change], appliedAtUnixMs: Clock.unixMs()))
            if case .subscriptionChanged(let subscription) = change.change {
                cache.dropSubscription(applicationID: subscription.applicationId, apiID: subscription.apiId)
            }
            if case .apiUpserted(let api) = change.change {
                // Its resources or state may differ: results cached for it were for the old definition.
                cache.apply(Self.revocation(apiID: api.api?.id ?? ""))
            }
            feed.confirmed()
            progress.dirty.store(true, ordering: .relaxed)
        case .caughtUp:
            // The publisher has sent everything up to its revision: the state
            // served is current, even when nothing changed since it was saved.
            feed.confirmed()
        case nil:
            // A frame this build does not know, from a newer publisher.
            break
        }
    }

    static func revocation(apiID: String) -> TokenRevocation {
        var revocation = TokenRevocation()
        revocation.target = .apiId(apiID)
        return revocation
    }

    private func persist(_ progress: Progress) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(2))
            if progress.dirty.exchange(false, ordering: .relaxed) { save() }
        }
    }

    private func save() {
        guard let store else { return }
        let state = deployment.current
        guard state.revision > 0, !state.fromDisk else { return }
        do {
            try store.save(state)
        } catch {
            logger.error("cannot save the deployment state; a restart without publishers would serve nothing newer: \(error)")
        }
    }
}

/// The revocation feed's position, for status.
final class RevocationStatus: Sendable {
    let sequence = Atomic<UInt64>(0)
    let connected = Atomic<Bool>(false)
}

/// Watches the keymanagers' revocation feed and drops the cached results
/// each revocation names, within the feed's latency (well under a second)
/// rather than when the cache entry would expire.
struct RevocationWatcher: Service {
    let peers: any PeerDirectory
    let cache: ValidationCache
    let jwt: JWTVerifier
    let status: RevocationStatus
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown {
            var failures = 0
            var next = 0
            var heartbeatSeconds: UInt32?
            while !Task.isCancelled {
                let keymanagers = peers.transports(for: .keymanager)
                guard !keymanagers.isEmpty else {
                    try? await Task.sleep(for: .seconds(5))
                    continue
                }
                let request = WatchRevocationsRequest(sinceSequence: status.sequence.load(ordering: .relaxed))
                let transport = keymanagers[next % keymanagers.count]
                let liveness = FeedLiveness(heartbeatSeconds: heartbeatSeconds)
                defer { heartbeatSeconds = liveness.heartbeatSeconds }
                do {
                    try await liveness.run {
                        try await KeyManagerServiceClient(transport).watchRevocations(request) { response in
                            liveness.heard(heartbeatSeconds: response.caughtUp ? response.heartbeatSeconds : nil)
                            status.connected.store(true, ordering: .relaxed)
                            let now = Clock.unixMs()
                            if response.reset {
                                cache.flush(valid: true, invalid: false)
                                jwt.resetTrust(now)
                            }
                            for revocation in response.revocations {
                                cache.apply(revocation)
                                jwt.note(revocation, at: now)
                            }
                            // From here on every revocation reaches this gateway: JWTs issued since may be checked here alone.
                            jwt.trustFrom(now)
                            let last = response.revocations.last?.sequence ?? 0
                            status.sequence.store(max(response.headSequence, last), ordering: .relaxed)
                        }
                    }
                    status.connected.store(false, ordering: .relaxed)
                } catch {
                    if liveness.received { failures = 0 }
                    status.connected.store(false, ordering: .relaxed)
                    // Revocations made while disconnected arrive on reconnection
                    // (the feed resumes from the sequence held); until then, drop
                    // nothing more than the feed would.
                    if failures == 0 { logger.warning("revocation feed lost: \(error)") }
                    failures += 1
                    next += 1
                }
                let delay = min(5_000, 100 << min(failures, 6))
                try? await Task.sleep(for: .milliseconds(failures == 0 ? 100 : delay))
            }
        }
    }
}

/// `GatewayService`: status and cache flush for operators (`tollctl gateway`).
struct GatewayRPCService: GatewayServiceHandler {
    let policy: GatewayPolicy
    let feed: FeedStatus
    let revocations: RevocationStatus
    let trafficManagers: Int

    func getGatewayStatus(_ request: GetGatewayStatusRequest, context: ServerCallContext) async throws -> GetGatewayStatusResponse {
        let state = policy.deployment.current
        var response = GetGatewayStatusResponse()
        response.deploymentRevision = state.revision
        response.deploymentAppliedAtUnixMs = feed.confirmedAtUnixMs(fallback: state.appliedAtUnixMs)
        response.deploymentFeedConnected = feed.connected
        response.servingPersistedState = feed.servingFromDisk
        response.apiCount = UInt32(state.apis.count)
        response.policyCount = UInt32(state.policies.count)
        response.blockConditionCount = UInt32(state.blockConditions.count)
        response.keyCacheEntries = UInt64(policy.cache.statistics.entries)
        let throttle = policy.throttling.throttler.statistics
        response.throttledKeys = UInt64(throttle.keys)
        response.throttleTrafficManagers = UInt32(trafficManagers)
        response.throttleFailureMode = policy.throttling.throttler.configuration.failureMode.rawValue
        response.throttleKeysInFallback = UInt64(throttle.keysInFallback)
        response.throttleFallbackEntries = throttle.fallbackEntries
        response.throttleRequests = policy.throttling.requestCount
        response.throttleExchanges = throttle.exchanges
        response.throttleWaits = throttle.waits
        response.revocationSequence = revocations.sequence.load(ordering: .relaxed)
        let usage = policy.usage.statistics
        response.usageEventsQueued = UInt64(usage.queued)
        response.usageEventsDropped = usage.dropped
        return response
    }

    func flushCaches(_ request: FlushCachesRequest, context: ServerCallContext) async throws -> FlushCachesResponse {
        let caches = Set(request.caches)
        let all = caches.isEmpty
        var evicted = policy.cache.flush(valid: all || caches.contains(.keyValidation), invalid: all || caches.contains(.invalidToken),
                                         tokenHashes: request.tokenHashes)
        if all || caches.contains(.throttleDecisions) { evicted += policy.throttling.throttler.forgetDecisions() }
        var response = FlushCachesResponse()
        response.evictedEntries = UInt64(evicted)
        return response
    }
}

/// One feed stream's signs of life. Whether it delivered anything before it
/// ended (a stream that did was healthy, so the back-off starts over), and,
/// once the feed has announced its heartbeat (a caught-up frame), when it
/// was last heard: a stream silent for ``missedHeartbeats`` heartbeats is
/// treated as lost. That catches a half-open connection (a peer gone without
/// a FIN or RST) that RPC keepalive alone would notice late or never. A feed
/// that never announces a heartbeat (an older publisher or keymanager) is
/// never timed out: quiet is normal for it.
///
/// A stream opened right after one that announced a heartbeat is held to it
/// from its start: a reconnection over a connection that died half-open
/// never hears a first caught-up frame, and must not wait on it forever.
/// Only an announcement is passed on to the next stream, never an inherited
/// limit, so a peer that never announces one ends up untimed again.
final class FeedLiveness: Sendable {
    static let missedHeartbeats = 3
    private struct State {
        var received = false
        var lastHeard = ContinuousClock.now
        var inherited: UInt32?
        var announced: UInt32?
    }
    private let state = Mutex(State())

    /// - Parameter heartbeatSeconds: what the previous stream announced, if it did.
    init(heartbeatSeconds: UInt32? = nil) {
        state.withLock { $0.inherited = heartbeatSeconds.flatMap { $0 > 0 ? $0 : nil } }
    }

    var received: Bool { state.withLock { $0.received } }
    /// The heartbeat this stream announced, for the next stream.
    var heartbeatSeconds: UInt32? { state.withLock { $0.announced } }

    /// A frame arrived; `heartbeatSeconds` when it announces the feed's heartbeat.
    func heard(heartbeatSeconds: UInt32? = nil) {
        let now = ContinuousClock.now
        state.withLock { state in
            state.received = true
            state.lastHeard = now
            if let heartbeatSeconds, heartbeatSeconds > 0 { state.announced = heartbeatSeconds }
        }
    }

    /// The silence so far when it is past the limit.
    func silenceExceeded(at now: ContinuousClock.Instant) -> Duration? {
        state.withLock { state in
            guard let heartbeat = state.announced ?? state.inherited else { return nil }
            let limit = Duration.seconds(Int(heartbeat) * Self.missedHeartbeats)
            let silence = now - state.lastHeard
            return silence > limit ? silence : nil
        }
    }

    /// Runs `stream`, cancelling it and throwing ``FeedSilence`` when it goes
    /// silent past the limit. Checked once a second: the limit is tens of seconds.
    func run(_ stream: @escaping @Sendable () async throws -> Void) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await stream() }
            group.addTask {
                while true {
                    try await Task.sleep(for: .seconds(1))
                    if let silence = self.silenceExceeded(at: .now) { throw FeedSilence(silence: silence) }
                }
            }
            defer { group.cancelAll() }
            try await group.next()
        }
    }
}

/// A feed stream that announced a heartbeat went quiet for longer than
/// ``FeedLiveness/missedHeartbeats`` of them.
struct FeedSilence: Error, CustomStringConvertible {
    let silence: Duration
    var description: String {
        "nothing received for \(silence.components.seconds) s, \(FeedLiveness.missedHeartbeats) heartbeats: treating the stream as lost"
    }
}

/// Whether a stream delivered anything before it ended: a stream that did
/// was healthy, so the back-off starts over.
final class ReceivedFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    func set() { flag.store(true, ordering: .relaxed) }
    var isSet: Bool { flag.load(ordering: .relaxed) }
}
