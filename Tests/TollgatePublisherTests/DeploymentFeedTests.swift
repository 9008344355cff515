import Foundation
import LMDBKit
import RPCCore
import Testing
import TollgatePolicies
import TollgateProto
import TollgatePublisher
import TollgateServices
import TollgateStorage

@Suite struct DeploymentFeedTests {
    func kind(_ change: DeploymentChange) -> String {
        switch change.change {
        case .apiUpserted(let deployed)?: "api+\(deployed.api?.name ?? "?")/\(deployed.api?.version ?? "?")"
        case .apiRemoved?: "api-"
        case .policyUpserted?: "policy+"
        case .policyRemoved(let ref)?: "policy-\(ref.name)"
        case .blockConditionUpserted?: "block+"
        case .blockConditionRemoved?: "block-"
        case .subscriptionChanged(let change)?: "sub:\(change.status)"
        case nil: "?"
        }
    }

    @Test func snapshotThenDeltasThenExactlyTheMissedChanges() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let store = fixture.publisher
        let defaults = try store.deploymentLog.currentRevision()
        #expect(defaults == 13, "the 13 default policies were recorded")

        // Three deployed APIs, one not: the snapshot (chunks of 2) has the three.
        var ids: [String] = []
        for index in 0..<4 {
            let api = try await store.createApi(sampleApi("Api\(index)", context: "/api\(index)"), actor: "carol", tenant: superTenant)
            if index < 3 { _ = try await store.changeLifecycle(api.id, to: index == 2 ? .prototyped : .published, options: .init(), actor: "paul", tenant: superTenant) }
            ids.append(api.id)
        }
        let (task, feed) = watch(fixture, since: 0)
        try await feed.wait(for: "the snapshot") { snapshots, _ in snapshots.last?.last == true }
        let snapshots = feed.snapshots
        #expect(snapshots.count == 2 && snapshots.allSatisfy { $0.revision == defaults + 3 })
        let deployed = snapshots.flatMap(\.apis)
        #expect(deployed.compactMap(\.api?.name) == ["Api0", "Api1", "Api2"])
        #expect(deployed[0].gatewayContext == "/api0/1.0.0" && deployed[0].resources.count == 3)
        #expect(snapshots.last?.policies.count == 13)

        // Deltas arrive as they happen, in order.
        _ = try await store.changeLifecycle(ids[3], to: .published, options: .init(), actor: "paul", tenant: superTenant)
        _ = try await store.changeLifecycle(ids[0], to: .blocked, options: .init(), actor: "paul", tenant: superTenant)
        _ = try await fixture.policies.createBlockCondition(BlockCondition(conditionType: .ip, enabled: true, target: .value("10.0.0.1")), tenant: superTenant)
        _ = try await store.changeLifecycle(ids[1], to: .created, options: .init(), actor: "paul", tenant: superTenant)
        try await feed.wait(for: "four changes") { _, changes in changes.count == 4 }
        var changes = feed.changes
        #expect(changes.map(\.revision) == Array((defaults + 4)...(defaults + 7)))
        #expect(changes.map(kind) == ["api+Api3/1.0.0", "api+Api0/1.0.0", "block+", "api-"])
        if case .apiUpserted(let blocked)? = changes[1].change { #expect(blocked.api?.lifecycleState == .blocked) }
        task.cancel()
        _ = await task.result

        // More changes while nobody watches; a watcher resuming from what it
        // applied gets exactly those, with no snapshot.
        let resumeFrom = changes.last!.revision
        try await fixture.policies.deletePolicy(kind: .subscription, name: "Bronze", tenant: superTenant)
        var gold = try fixture.policies.policy(kind: .subscription, name: "Gold", tenant: superTenant)
        if case .subscriptionPolicy(var p)? = gold.policy { p.description = "more"; gold.policy = .subscriptionPolicy(p) }
        _ = try await fixture.policies.updatePolicy(gold, tenant: superTenant)
        let (again, resumed) = watch(fixture, since: resumeFrom)
        try await resumed.wait(for: "the two missed changes") { _, changes in changes.count >= 2 }
        // One more change as a fence: the feed is in order, so once it has
        // arrived, anything wrongly sent before it (a snapshot, a repeat of
        // the missed changes) has arrived too.
        _ = try await fixture.policies.createBlockCondition(BlockCondition(conditionType: .ip, enabled: true, target: .value("10.0.0.2")), tenant: superTenant)
        try await resumed.wait(for: "the fence change") { _, changes in changes.contains { $0.revision == resumeFrom + 3 } }
        changes = resumed.changes
        #expect(resumed.snapshots.isEmpty)
        #expect(changes.map(\.revision) == [resumeFrom + 1, resumeFrom + 2, resumeFrom + 3]
                && changes.map(kind) == ["policy-Bronze", "policy+", "block+"])
        again.cancel()
        _ = await again.result
    }

    @Test func advancedPolicyChangesResendTheApisUsingThem() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        var draft = sampleApi()
        draft.apiPolicy = "10KPerMin"
        let api = try await fixture.publisher.createApi(draft, actor: "carol", tenant: superTenant)
        let published = try await fixture.publisher.changeLifecycle(api.id, to: .published, options: .init(), actor: "paul", tenant: superTenant)
        let revision = try fixture.publisher.deploymentLog.currentRevision()
        var policy = try fixture.policies.policy(kind: .advanced, name: "10KPerMin", tenant: superTenant)
        if case .advancedPolicy(var p)? = policy.policy { p.description = "changed"; policy.policy = .advancedPolicy(p) }
        _ = try await fixture.policies.updatePolicy(policy, tenant: superTenant)
        let changes = try #require(try fixture.publisher.deploymentLog.changes(after: revision, limit: 10))
        #expect(changes.map(kind) == ["policy+", "api+PizzaShack/1.0.0"])
        guard case .apiUpserted(let deployed)? = changes[1].change else { return }
        #expect(deployed.advancedPolicies.map(\.description) == ["changed"])
        #expect(deployed.resources.allSatisfy { $0.throttlingPolicy == "10KPerMin" && $0.applicableLevel == .api })
        #expect(published.api.id == deployed.api?.id)
    }

    @Test func defaultVersionMovesAndTenantsGetTheirPrefix() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let store = fixture.publisher
        try await fixture.policies.installDefaults(tenant: "acme.com")
        var first = sampleApi()
        first.defaultVersion = true
        let v1 = try await store.createApi(first, actor: "carol", tenant: "acme.com")
        _ = try await store.changeLifecycle(v1.id, to: .published, options: .init(), actor: "paul", tenant: "acme.com")
        let v2 = try await store.createNewVersion(v1.id, version: "2.0.0", defaultVersion: true, actor: "carol", tenant: "acme.com")
        // Changing the deployed 1.0.0 meanwhile leaves 2.0.0's mark alone.
        var change = try store.getApi(v1.id, tenant: "acme.com")
        change.description = "still the default"
        _ = try await store.updateApi(change, expectedRevision: nil, actor: "carol", tenant: "acme.com")
        #expect(try store.getApi(v2.id, tenant: "acme.com").defaultVersion)
        let before = try store.deploymentLog.currentRevision()
        _ = try await store.changeLifecycle(v2.id, to: .published, options: .init(), actor: "paul", tenant: "acme.com")
        #expect(try store.getApi(v1.id, tenant: "acme.com").defaultVersion == false)
        let changes = try #require(try store.deploymentLog.changes(after: before, limit: 10))
        let upserts = changes.compactMap { change -> DeployedApi? in
            if case .apiUpserted(let api)? = change.change { return api }
            return nil
        }
        #expect(upserts.map { "\($0.api!.version) \($0.gatewayContext) \($0.defaultVersionContext)" }
                == ["1.0.0 /t/acme.com/pizzashack/1.0.0 ", "2.0.0 /t/acme.com/pizzashack/2.0.0 /t/acme.com/pizzashack"])
    }

    @Test func largeApisAreSplitAcrossChunksAndPages() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let store = fixture.publisher
        for index in 0..<40 {
            var api = sampleApi("Big\(index)", context: "/big\(index)")
            api.description = String(repeating: "long description ", count: 3_800)  // about 64 KB
            let stored = try await store.createApi(api, actor: "carol", tenant: superTenant)
            _ = try await store.changeLifecycle(stored.id, to: .published, options: .init(), actor: "paul", tenant: superTenant)
        }
        let chunks = try store.deploymentLog.snapshot()
        #expect(chunks.count >= 3 && chunks.flatMap(\.apis).count == 40)
        #expect(try chunks.allSatisfy { try $0.serializedBytes().count < DeploymentLog.maxChunkBytes + 200_000 })

        // A page of 500 stops short of the per-page byte budget and says where to go on.
        var names: [String] = []
        var token: [UInt8] = []
        var pages = 0
        repeat {
            let page = try store.listApis(provider: "", states: [], pageSize: 500, pageToken: token, tenant: superTenant)
            #expect(try page.apis.map { try $0.serializedBytes().count }.reduce(0, +) <= 2 << 20)
            names += page.apis.map(\.name)
            token = page.page.nextPageToken
            pages += 1
        } while !token.isEmpty
        #expect(pages >= 2 && names.count == 40 && Set(names).count == 40)
    }

    @Test func revisionsStayMonotonicAcrossRestarts() async throws {
        var first: PublisherFixture? = try await PublisherFixture()
        let path = first!.path
        let api = try await first!.publisher.createApi(sampleApi(), actor: "carol", tenant: superTenant)
        _ = try await first!.publisher.changeLifecycle(api.id, to: .published, options: .init(), actor: "paul", tenant: superTenant)
        let before = try first!.publisher.deploymentLog.currentRevision()
        first = nil

        // A new process over the same files: the counter continues from the log.
        let second = try await PublisherFixture(path: path)
        defer { second.remove() }
        #expect(try second.publisher.deploymentLog.currentRevision() == before)
        _ = try await second.publisher.changeLifecycle(api.id, to: .blocked, options: .init(), actor: "paul", tenant: superTenant)
        let after = try #require(try second.publisher.deploymentLog.changes(after: before, limit: 10))
        #expect(after.map(\.revision) == [before + 1])

        // A watcher that is ahead of the log (a restored backup) gets a snapshot.
        let (task, feed) = watch(second, since: before + 100)
        try await feed.wait(for: "a snapshot") { snapshots, _ in snapshots.last?.last == true }
        #expect(feed.snapshots.last?.revision == before + 1)
        task.cancel()
        _ = await task.result
    }

    @Test func aWatcherBehindTheRetainedLogGetsASnapshot() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let apimgt = fixture.publisher.apimgt
        let shortLog = DeploymentLog(database: apimgt, retainedChanges: 5)
        let policies = PolicyStore(database: apimgt, deploymentLog: shortLog)
        for index in 0..<12 {
            _ = try await policies.createBlockCondition(BlockCondition(conditionType: .ip, target: .value("10.0.0.\(index)")), tenant: superTenant)
        }
        let current = try shortLog.currentRevision()
        #expect(try shortLog.changes(after: 1, limit: 10) == nil, "pruned: a snapshot is needed")
        #expect(try shortLog.changes(after: current - 5, limit: 10)?.map(\.revision) == Array((current - 4)...current))
        #expect(try shortLog.changes(after: current - 6, limit: 10) == nil, "the log keeps exactly the last five")
        let snapshot = try shortLog.snapshot()
        #expect(snapshot.last?.blockConditions.count == 12 && snapshot.last?.revision == current)
    }

    @Test func caughtUpFollowsTheSnapshotAndAResumeWithNothingNew() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let store = fixture.publisher
        let api = try await store.createApi(sampleApi("Api0", context: "/api0"), actor: "carol", tenant: superTenant)
        _ = try await store.changeLifecycle(api.id, to: .published, options: .init(), actor: "paul", tenant: superTenant)
        let current = try store.deploymentLog.currentRevision()

        // A fresh watcher: the snapshot, then caught up at its revision, announcing the ten-second heartbeat.
        let (fresh, feed) = watch(fixture, since: 0)
        let frames = try await feed.waitForFrames("caught up after the snapshot") { $0.contains { $0.hasPrefix("caught-up") } }
        #expect(frames == ["snapshot", "caught-up@\(current)"], "\(frames)")
        #expect(feed.caughtUp.first?.heartbeatSeconds == 10)
        fresh.cancel()
        _ = await fresh.result

        // A gateway restarted with a current saved state: nothing to send, caught up at once, no snapshot.
        let (resumed, quiet) = watch(fixture, since: current)
        try await quiet.waitForFrames("caught up with nothing new") { !$0.isEmpty }
        // A fence: once it has arrived, anything wrongly sent before it has too.
        _ = try await fixture.policies.createBlockCondition(BlockCondition(conditionType: .ip, enabled: true, target: .value("10.0.0.9")),
                                                            tenant: superTenant)
        let resumedFrames = try await quiet.waitForFrames("the fence change") { $0.contains("change@\(current + 1)") }
        #expect(resumedFrames == ["caught-up@\(current)", "change@\(current + 1)"], "\(resumedFrames)")
        resumed.cancel()
        _ = await resumed.result

        // Behind by one: that change, then caught up at it.
        let (behind, backlog) = watch(fixture, since: current)
        let behindFrames = try await backlog.waitForFrames("the backlog and caught-up") { $0.count >= 2 }
        #expect(behindFrames == ["change@\(current + 1)", "caught-up@\(current + 1)"], "\(behindFrames)")
        behind.cancel()
        _ = await behind.result
    }

    @Test func aQuietFeedRepeatsCaughtUpAsAHeartbeat() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let current = try fixture.publisher.deploymentLog.currentRevision()
        let (task, feed) = watch(fixture, since: current, heartbeat: .milliseconds(200))
        // Nothing is published: the caught-up frame comes again and again, at the same revision.
        let frames = try await feed.waitForFrames("three heartbeats") { $0.count >= 3 }
        #expect(frames.allSatisfy { $0 == "caught-up@\(current)" }, "\(frames)")
        // A heartbeat shorter than a second is announced as one second, the least a watcher can size a timeout on.
        #expect(feed.caughtUp.allSatisfy { $0.heartbeatSeconds == 1 })
        // A change goes out as it commits; the heartbeats that follow carry its revision.
        _ = try await fixture.policies.createBlockCondition(BlockCondition(conditionType: .ip, enabled: true, target: .value("10.0.0.8")),
                                                            tenant: superTenant)
        let after = try await feed.waitForFrames("a heartbeat after the change") { $0.contains("caught-up@\(current + 1)") }
        let change = try #require(after.firstIndex(of: "change@\(current + 1)"))
        #expect(after[(change + 1)...].allSatisfy { $0 == "caught-up@\(current + 1)" }, "\(after)")
        task.cancel()
        _ = await task.result
    }
}
