import FoundationEssentials
public import LMDBKit
import Synchronization
import RPCCore
public import TollgateProto
public import TollgateStorage

/// The record of everything gateways serve from, as numbered changes in
/// `apimgtdb`: what the deployment feed (`WatchDeployments`) replays.
///
/// Writers (the publisher for APIs and subscriptions, the policy store for
/// policies and block conditions) append changes inside the same write
/// transaction as the change itself, so the log and the tables can never
/// disagree, and call ``committed()`` after the commit to wake watchers in
/// this process. Watchers also look every ``pollInterval`` for changes
/// committed by other processes sharing the database.
public final class DeploymentLog: Sendable {
    public let database: ApiManagerDatabase
    let now: @Sendable () -> Int64
    /// Changes kept for watchers that reconnect; one further behind gets a snapshot.
    public let retainedChanges: UInt64
    private let watchers = Mutex<(next: Int, continuations: [Int: AsyncStream<Void>.Continuation])>((0, [:]))
    public static let pollInterval = Duration.seconds(1)

    public init(database: ApiManagerDatabase, retainedChanges: UInt64 = 100_000, now: (@Sendable () -> Int64)? = nil) {
        self.database = database
        self.retainedChanges = max(retainedChanges, 1)
        self.now = now ?? { Int64(Date().timeIntervalSince1970 * 1000) }
    }

    /// States in which an API is on the gateways.
    public static let deployedStates: Set<LifecycleState> = [.prototyped, .published, .blocked, .deprecated]

    // MARK: Writing

    /// Appends one change in the caller's write transaction and returns its revision.
    @discardableResult
    public func append(_ change: DeploymentChange.Change, tenant: String, in txn: inout WriteTransaction) throws -> UInt64 {
        let revision = try database.database.nextSequence(ApiManagerDatabase.deploymentSequence, in: &txn)
        try database.deploymentChanges.put(
            DeploymentChange(revision: revision, changedAtUnixMs: now(), tenantDomain: tenant, change: change), in: &txn)
        // The oldest changes go a few at a time, from the front only, so the
        // log stays one unbroken run and no single write pays for many.
        if revision > retainedChanges {
            let expired = try database.deploymentChanges.list(prefix: Key(), pageSize: 4, in: txn).items
                .filter { $0.revision <= revision - retainedChanges }
            for change in expired { try database.deploymentChanges.delete(change, in: &txn) }
        }
        return revision
    }

    /// Records an API as it now stands: upserted while deployed, removed
    /// when it leaves the gateways (`wasDeployed` says whether it was on them).
    public func recordApi(_ api: Api, wasDeployed: Bool, in txn: inout WriteTransaction) throws {
        if Self.deployedStates.contains(api.lifecycleState) {
            try append(.apiUpserted(try deployedApi(api, in: txn)), tenant: api.tenantDomain, in: &txn)
        } else if wasDeployed {
            try append(.apiRemoved(api.id), tenant: api.tenantDomain, in: &txn)
        }
    }

    /// Records a policy change, and re-sends the deployed APIs that carry a copy of it.
    public func recordPolicy(_ policy: ThrottlePolicy, tenant: String, in txn: inout WriteTransaction) throws {
        try append(.policyUpserted(policy), tenant: tenant, in: &txn)
        if case .advancedPolicy(let advanced)? = policy.policy {
            for api in try deployedApis(tenant: tenant, in: txn) where Self.advancedPolicyNames(of: api).contains(advanced.name) {
                try append(.apiUpserted(try deployedApi(api, in: txn)), tenant: tenant, in: &txn)
            }
        }
    }

    /// Wakes the watchers in this process; call after the transaction that appended commits.
    public func committed() {
        watchers.withLock { state in
            for continuation in state.continuations.values { continuation.yield() }
        }
    }

    // MARK: Reading

    /// The revision of the newest change (0 before the first).
    public func currentRevision() throws -> UInt64 {
        try database.database.environment.read { txn in try currentRevision(in: txn) }
    }

    func currentRevision<T: TransactionReading & ~Copyable>(in txn: borrowing T) throws -> UInt64 {
        guard let bytes = try database.database.metaValue("sequence." + ApiManagerDatabase.deploymentSequence, in: txn) else { return 0 }
        return bytes.reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// Changes after `revision`, oldest first, at most `limit`; nil when the
    /// log no longer holds them all (or `revision` is ahead of the log, as
    /// after a restore from backup), which calls for a snapshot.
    public func changes(after revision: UInt64, limit: Int) throws -> [DeploymentChange]? {
        try database.database.environment.read { txn in
            let current = try currentRevision(in: txn)
            if revision == current { return [] }
            if revision > current { return nil }
            let page = try database.deploymentChanges.list(prefix: Key(), pageSize: limit, pageToken: Key(.uint64(revision + 1)).bytes, in: txn)
            guard page.items.first?.revision == revision + 1 else { return nil }
            return page.items
        }
    }

    /// A snapshot chunk is closed once its APIs pass this many serialized
    /// bytes, keeping each message well inside one 4 MiB RPC frame (an API
    /// is at most 1 MiB, and its policies are small).
    public static let maxChunkBytes = 1 << 20

    /// Everything gateways serve, as of one revision, in chunks of at most
    /// `apisPerChunk` APIs and about ``maxChunkBytes`` (policies and block
    /// conditions come in the last).
    public func snapshot(apisPerChunk: Int = 200) throws -> [DeploymentSnapshotChunk] {
        try database.database.environment.read { txn in
            let revision = try currentRevision(in: txn)
            var chunks: [DeploymentSnapshotChunk] = []
            var apis: [DeployedApi] = []
            var bytes = 0
            try database.apis.forEach(index: ApiManagerDatabase.apisByNameVersion, in: txn) { api in
                if Self.deployedStates.contains(api.lifecycleState) {
                    let deployed = try deployedApi(api, in: txn)
                    let size = try deployed.serializedSize()
                    if !apis.isEmpty && bytes + size > Self.maxChunkBytes {
                        chunks.append(DeploymentSnapshotChunk(revision: revision, apis: apis))
                        apis = []
                        bytes = 0
                    }
                    apis.append(deployed)
                    bytes += size
                    if apis.count == max(apisPerChunk, 1) {
                        chunks.append(DeploymentSnapshotChunk(revision: revision, apis: apis))
                        apis = []
                        bytes = 0
                    }
                }
                return true
            }
            let policies = try database.policies.list(prefix: Key(), pageSize: Int.max, in: txn).items
            let conditions = try database.blockConditions.list(prefix: Key(), pageSize: Int.max, in: txn).items
            chunks.append(DeploymentSnapshotChunk(revision: revision, apis: apis, policies: policies, blockConditions: conditions, last: true))
            return chunks
        }
    }

    /// A stream that yields whenever a change may have been committed: at
    /// once for this process's commits, every ``pollInterval`` for others'.
    /// It ends when the returned task is cancelled.
    public func wakeups() -> AsyncStream<Void> {
        let (stream, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let id = watchers.withLock { state in
            let id = state.next
            state.next += 1
            state.continuations[id] = continuation
            return id
        }
        let ticker = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: Self.pollInterval)
                continuation.yield()
            }
        }
        continuation.onTermination = { [weak self] _ in
            ticker.cancel()
            _ = self?.watchers.withLock { $0.continuations.removeValue(forKey: id) }
        }
        return stream
    }

    // MARK: Resolution

    /// The tenant's APIs currently on the gateways.
    func deployedApis<T: TransactionReading & ~Copyable>(tenant: String, in txn: borrowing T) throws -> [Api] {
        var apis: [Api] = []
        for state in Self.deployedStates.sorted(by: { $0.rawValue < $1.rawValue }) {
            apis += try database.apis.all(index: ApiManagerDatabase.apisByState,
                                          prefix: Key(.string(tenant.lowercased()), .int64(Int64(state.rawValue))), in: txn)
        }
        return apis
    }

    static func advancedPolicyNames(of api: Api) -> Set<String> {
        var names = Set(api.resources.map(\.throttlingPolicy).filter { !$0.isEmpty })
        if !api.apiPolicy.isEmpty { names.insert(api.apiPolicy) }
        return names
    }

    /// The path prefix gateways serve an API under.
    public static func gatewayContext(of api: Api) -> (versioned: String, unversioned: String) {
        let tenantPrefix = api.tenantDomain.lowercased() == superTenant ? "" : "/t/" + api.tenantDomain.lowercased()
        let base = tenantPrefix + api.context
        return (base + "/" + api.version, base)
    }

    /// An API as gateways need it: resources with the API-level policy
    /// applied, its path prefixes, and every advanced policy it names.
    public func deployedApi<T: TransactionReading & ~Copyable>(_ api: Api, in txn: borrowing T) throws -> DeployedApi {
        let contexts = Self.gatewayContext(of: api)
        let resources = api.resources.map { resource in
            ResolvedResource(
                uriTemplate: resource.uriTemplate, verb: resource.verb, authType: resource.authType,
                throttlingPolicy: api.apiPolicy.isEmpty ? resource.throttlingPolicy : api.apiPolicy,
                applicableLevel: api.apiPolicy.isEmpty ? .resource : .api, scope: resource.scope)
        }
        var policies: [AdvancedPolicy] = []
        for name in Self.advancedPolicyNames(of: api).sorted() {
            let key = ApiManagerDatabase.policyKey(kind: .advanced, name: name, tenant: api.tenantDomain)
            if case .advancedPolicy(let policy)? = try database.policies.get(key, in: txn)?.policy { policies.append(policy) }
        }
        return DeployedApi(api: api, gatewayContext: contexts.versioned,
                           defaultVersionContext: api.defaultVersion ? contexts.unversioned : "",
                           resources: resources, advancedPolicies: policies)
    }
}
