import FoundationEssentials
public import LMDBKit
public import TollgateProto

/// The deployment feed's change-log in `apimgtdb`: everything gateways serve
/// from, as numbered changes (what `WatchDeployments` replays).
///
/// Writers (the publisher for APIs and subscriptions, the policy store for
/// policies and block conditions) append inside the same write transaction
/// as the change itself and call ``committed()`` after the commit. The log
/// itself is a ``ChangeLog``; this type adds what a deployment change is.
public final class DeploymentLog: Sendable {
    public let database: ApiManagerDatabase
    public let log: ChangeLog<DeploymentChange>
    let now: @Sendable () -> Int64

    public init(database: ApiManagerDatabase, retainedChanges: UInt64 = 100_000, now: (@Sendable () -> Int64)? = nil) {
        self.database = database
        self.log = ChangeLog(database: database.database, table: database.deploymentChanges, sequence: ApiManagerDatabase.deploymentSequence,
                             retainedChanges: retainedChanges, revision: { $0.revision })
        self.now = now ?? { Int64(Date().timeIntervalSince1970 * 1000) }
    }

    public var retainedChanges: UInt64 { log.retainedChanges }

    /// States in which an API is on the gateways.
    public static let deployedStates: Set<LifecycleState> = [.prototyped, .published, .blocked, .deprecated]

    // MARK: Writing

    /// Appends one change in the caller's write transaction and returns its revision.
    @discardableResult
    public func append(_ change: DeploymentChange.Change, tenant: String, in txn: inout WriteTransaction) throws -> UInt64 {
        let timestamp = now()
        return try log.append(in: &txn) { revision in
            DeploymentChange(revision: revision, changedAtUnixMs: timestamp, tenantDomain: tenant, change: change)
        }
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
    public func committed() { log.committed() }

    // MARK: Reading

    /// The revision of the newest change (0 before the first).
    public func currentRevision() throws -> UInt64 { try log.currentRevision() }

    /// Changes after `revision`, oldest first, at most `limit`; nil when a snapshot is needed.
    public func changes(after revision: UInt64, limit: Int) throws -> [DeploymentChange]? {
        try log.changes(after: revision, limit: limit)
    }

    /// A snapshot chunk is closed once its APIs pass this many serialized
    /// bytes, keeping each message well inside one 4 MiB RPC frame (an API
    /// is at most 1 MiB, and its policies are small).
    public static let maxChunkBytes = 1 << 20

    /// Everything gateways serve, as of one revision, in chunks of at most
    /// `apisPerChunk` APIs and about ``maxChunkBytes`` (policies and block
    /// conditions come in the last).
    public func snapshot(apisPerChunk: Int = 200) throws -> [DeploymentSnapshotChunk] {
        try database.database.read { txn in
            let revision = try log.currentRevision(in: txn)
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

    /// Wakes at once for this process's commits, every poll interval for others'.
    public func wakeups() -> AsyncStream<Void> { log.wakeups() }

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
