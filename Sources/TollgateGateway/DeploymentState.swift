import Foundation
public import ThrottleCore
public import TollgateProto

/// Everything a gateway serves from, at one deployment revision. Immutable:
/// a change builds a new state beside the old one, which keeps serving until
/// the new one is swapped in.
public final class DeploymentState: Sendable {
    public let revision: UInt64
    public let appliedAtUnixMs: Int64
    public let apis: [String: RoutedApi]
    /// Policies by kind and id.
    public let policies: [PolicyKey: ThrottlePolicy]
    public let blockConditions: [String: BlockCondition]
    /// Custom (global) policies with a limit, by tenant: the throttler
    /// counts every request of the tenant's APIs against them.
    public let globalPolicies: [String: [GlobalPolicy]]
    public let routes: RoutingTable
    /// The enabled block conditions, per tenant, as the request path checks them.
    public let blocks: BlockConditionSet
    /// Loaded from disk at start and not yet confirmed by a publisher.
    public let fromDisk: Bool

    public struct PolicyKey: Hashable, Sendable {
        public let kind: PolicyKind
        public let id: String
    }

    public static let empty = DeploymentState(revision: 0, appliedAtUnixMs: 0, apis: [:], policies: [:], blockConditions: [:], fromDisk: false)

    convenience init(revision: UInt64, appliedAtUnixMs: Int64, apis: [String: RoutedApi], policies: [PolicyKey: ThrottlePolicy],
                     blockConditions: [String: BlockCondition], fromDisk: Bool) {
        self.init(revision: revision, appliedAtUnixMs: appliedAtUnixMs, apis: apis, policies: policies, blockConditions: blockConditions,
                  fromDisk: fromDisk, routes: RoutingTable(apis: apis.values), blocks: BlockConditionSet(blockConditions.values),
                  globalPolicies: Self.globalPolicies(policies))
    }

    /// With the derived indexes given: a change reuses those it leaves alone.
    private init(revision: UInt64, appliedAtUnixMs: Int64, apis: [String: RoutedApi], policies: [PolicyKey: ThrottlePolicy],
                 blockConditions: [String: BlockCondition], fromDisk: Bool, routes: RoutingTable, blocks: BlockConditionSet,
                 globalPolicies: [String: [GlobalPolicy]]) {
        self.revision = revision
        self.appliedAtUnixMs = appliedAtUnixMs
        self.apis = apis
        self.policies = policies
        self.blockConditions = blockConditions
        self.globalPolicies = globalPolicies
        self.routes = routes
        self.blocks = blocks
        self.fromDisk = fromDisk
    }

    static func globalPolicies(_ policies: [PolicyKey: ThrottlePolicy]) -> [String: [GlobalPolicy]] {
        var global: [String: [GlobalPolicy]] = [:]
        for policy in policies.values {
            if case .globalPolicy(let custom) = policy.policy, custom.limit != nil { global[custom.tenantDomain, default: []].append(custom) }
        }
        // A stable order, so every gateway checks a tenant's policies alike.
        return global.mapValues { $0.sorted { $0.name < $1.name } }
    }

    /// A state made whole from a snapshot's chunks.
    public convenience init(snapshot chunks: [DeploymentSnapshotChunk], appliedAtUnixMs: Int64, fromDisk: Bool = false) {
        var apis: [String: RoutedApi] = [:]
        var policies: [PolicyKey: ThrottlePolicy] = [:]
        var blocks: [String: BlockCondition] = [:]
        for chunk in chunks {
            for api in chunk.apis { let routed = RoutedApi(api); apis[routed.api.id] = routed }
            for policy in chunk.policies { if let key = Self.key(policy) { policies[key] = policy } }
            for block in chunk.blockConditions { blocks[block.id] = block }
        }
        self.init(revision: chunks.last?.revision ?? 0, appliedAtUnixMs: appliedAtUnixMs, apis: apis, policies: policies,
                  blockConditions: blocks, fromDisk: fromDisk)
    }

    static func key(_ policy: ThrottlePolicy) -> PolicyKey? {
        switch policy.policy {
        case .subscriptionPolicy(let p): PolicyKey(kind: .subscription, id: p.id)
        case .applicationPolicy(let p): PolicyKey(kind: .application, id: p.id)
        case .advancedPolicy(let p): PolicyKey(kind: .advanced, id: p.id)
        case .globalPolicy(let p): PolicyKey(kind: .global, id: p.id)
        case nil: nil
        }
    }

    /// This state with `changes` applied, in order; APIs not touched keep
    /// their compiled form, and the routing table changes only where the
    /// touched APIs' prefixes fall (indexes nothing touched are shared).
    public func applying(_ changes: [DeploymentChange], appliedAtUnixMs: Int64) -> DeploymentState {
        var apis = self.apis
        var policies = self.policies
        var blocks = self.blockConditions
        var revision = self.revision
        var touchedAPIs: Set<String> = []
        var policiesChanged = false, blocksChanged = false
        for change in changes {
            revision = max(revision, change.revision)
            switch change.change {
            case .apiUpserted(let api):
                let routed = RoutedApi(api)
                apis[routed.api.id] = routed
                touchedAPIs.insert(routed.api.id)
            case .apiRemoved(let id):
                apis[id] = nil
                touchedAPIs.insert(id)
            case .policyUpserted(let policy):
                if let key = Self.key(policy) { policies[key] = policy }
                policiesChanged = true
            case .policyRemoved(let ref):
                policies[PolicyKey(kind: ref.kind, id: ref.id)] = nil
                policiesChanged = true
            case .blockConditionUpserted(let block):
                blocks[block.id] = block
                blocksChanged = true
            case .blockConditionRemoved(let id):
                blocks[id] = nil
                blocksChanged = true
            case .subscriptionChanged, nil: break
            }
        }
        let routes = touchedAPIs.isEmpty ? self.routes
            : self.routes.applying(removing: touchedAPIs.compactMap { self.apis[$0] }, adding: touchedAPIs.compactMap { apis[$0] })
        return DeploymentState(revision: revision, appliedAtUnixMs: appliedAtUnixMs, apis: apis, policies: policies,
                               blockConditions: blocks, fromDisk: false, routes: routes,
                               blocks: blocksChanged ? BlockConditionSet(blocks.values) : self.blocks,
                               globalPolicies: policiesChanged ? Self.globalPolicies(policies) : self.globalPolicies)
    }

    public func subscriptionPolicy(named name: String, tenant: String) -> SubscriptionPolicy? {
        for policy in policies.values {
            if case .subscriptionPolicy(let p) = policy.policy, p.name == name, p.tenantDomain == tenant { return p }
        }
        return nil
    }
}

/// The last good state on disk, so a gateway restarted while every
/// publisher is down serves what it served before. Written to a temporary
/// file, synced, then renamed over the old one: a crash leaves the old or
/// the new file, never half of one.
///
/// Format: `TGDS` and a format version byte, the revision (8 bytes, big
/// endian), then records of a kind byte (1 API, 2 policy, 3 block
/// condition), a 4-byte big-endian length and that many protobuf bytes.
public struct DeploymentStore: Sendable {
    public let path: String
    static let magic: [UInt8] = Array("TGDS".utf8) + [1]
    /// A record larger than this is corruption, not an API.
    static let maxRecordBytes = 16 * 1024 * 1024

    public init(directory: String) {
        path = directory + "/deployment-state.bin"
    }

    public func save(_ state: DeploymentState) throws {
        var bytes = Self.magic
        withUnsafeBytes(of: state.revision.bigEndian) { bytes.append(contentsOf: $0) }
        func record(_ kind: UInt8, _ body: [UInt8]) {
            bytes.append(kind)
            withUnsafeBytes(of: UInt32(body.count).bigEndian) { bytes.append(contentsOf: $0) }
            bytes.append(contentsOf: body)
        }
        for api in state.apis.values { record(1, try api.serializedBytes()) }
        for policy in state.policies.values { record(2, try policy.serializedBytes()) }
        for block in state.blockConditions.values { record(3, try block.serializedBytes()) }
        let temporary = path + ".tmp"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw DeploymentStoreError.io("cannot create \(temporary): \(String(cString: strerror(errno)))") }
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Foundation.write(descriptor, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                let reason = String(cString: strerror(errno))
                close(descriptor)
                unlink(temporary)
                throw DeploymentStoreError.io("cannot write \(temporary): \(reason)")
            }
            offset += written
        }
        guard fsync(descriptor) == 0 else {
            let reason = String(cString: strerror(errno))
            close(descriptor)
            unlink(temporary)
            throw DeploymentStoreError.io("cannot sync \(temporary): \(reason)")
        }
        close(descriptor)
        guard rename(temporary, path) == 0 else {
            throw DeploymentStoreError.io("cannot replace \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// The saved state, or nil when none was saved.
    public func load() throws -> DeploymentState? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let modified = (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
        let appliedAtUnixMs = Int64((modified ?? Date()).timeIntervalSince1970 * 1000)
        let bytes = [UInt8](data)
        guard bytes.count >= Self.magic.count + 8, Array(bytes[0..<Self.magic.count]) == Self.magic else {
            throw DeploymentStoreError.corrupt("\(path) is not a Tollgate deployment state file")
        }
        var index = Self.magic.count
        let revision = bytes[index..<index + 8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        index += 8
        var chunk = DeploymentSnapshotChunk()
        chunk.revision = revision
        chunk.last = true
        while index < bytes.count {
            guard bytes.count - index >= 5 else { throw DeploymentStoreError.corrupt("\(path): a record is cut short") }
            let kind = bytes[index]
            let length = Int(bytes[index + 1..<index + 5].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
            index += 5
            guard length <= Self.maxRecordBytes, bytes.count - index >= length else {
                throw DeploymentStoreError.corrupt("\(path): a record is cut short")
            }
            let body = bytes[index..<index + length]
            index += length
            do {
                switch kind {
                case 1: chunk.apis.append(try DeployedApi(serializedBytes: body))
                case 2: chunk.policies.append(try ThrottlePolicy(serializedBytes: body))
                case 3: chunk.blockConditions.append(try BlockCondition(serializedBytes: body))
                default: throw DeploymentStoreError.corrupt("\(path): unknown record kind \(kind)")
                }
            } catch let error as DeploymentStoreError {
                throw error
            } catch {
                throw DeploymentStoreError.corrupt("\(path): \(error)")
            }
        }
        return DeploymentState(snapshot: [chunk], appliedAtUnixMs: appliedAtUnixMs, fromDisk: true)
    }
}

public enum DeploymentStoreError: Error, CustomStringConvertible {
    case io(String)
    case corrupt(String)

    public var description: String {
        switch self {
        case .io(let text), .corrupt(let text): text
        }
    }
}
