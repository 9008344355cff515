import FoundationEssentials
import LMDBKit
import Synchronization
public import RPCCore
public import TollgateProto
public import TollgateStorage
public import RoleCore

/// Throttling policies and block conditions of every tenant (`apimgtdb`):
/// the logic behind AdminService.
public final class PolicyStore: TenantProvisioning {
    public let database: ApiManagerDatabase
    /// Where policy and block-condition changes are recorded for gateways.
    public let deploymentLog: DeploymentLog
    let now: @Sendable () -> Int64
    /// Tenants whose defaults are known to be installed, so the AdminService
    /// calls that make sure of them cost nothing after the first.
    private let tenantsWithDefaults = Mutex<Set<String>>([])

    /// Installs the tenant's default policies before its first object (``TenantProvisioning``).
    public func prepare(tenant: String) async throws(RPCError) {
        _ = try await installDefaults(tenant: tenant)
    }

    public init(database: ApiManagerDatabase, deploymentLog: DeploymentLog? = nil, now: (@Sendable () -> Int64)? = nil) {
        self.database = database
        self.deploymentLog = deploymentLog ?? DeploymentLog(database: database, now: now)
        self.now = now ?? { Int64(Date().timeIntervalSince1970 * 1000) }
    }

    // MARK: Defaults

    /// WSO2's "Unlimited": 2^31 − 1 requests a minute.
    static let unlimited = ThrottleLimit(timeUnit: .minute, unitTime: 1, quota: .requestCount(2_147_483_647))

    static func perMinute(_ count: UInt64) -> ThrottleLimit {
        ThrottleLimit(timeUnit: .minute, unitTime: 1, quota: .requestCount(count))
    }

    /// The policies WSO2 API Manager installs in every tenant.
    public static func defaults(tenant: String) -> [ThrottlePolicy] {
        let subscription: [(String, String, ThrottleLimit)] = [
            ("Gold", "Allows 5000 requests per minute", perMinute(5000)),
            ("Silver", "Allows 2000 requests per minute", perMinute(2000)),
            ("Bronze", "Allows 1000 requests per minute", perMinute(1000)),
            ("Unauthenticated", "Allows 500 requests per minute", perMinute(500)),
            ("Unlimited", "Allows unlimited requests", unlimited),
        ]
        let application: [(String, String, ThrottleLimit)] = [
            ("10PerMin", "Allows 10 requests per minute", perMinute(10)),
            ("20PerMin", "Allows 20 requests per minute", perMinute(20)),
            ("50PerMin", "Allows 50 requests per minute", perMinute(50)),
            ("Unlimited", "Allows unlimited requests", unlimited),
        ]
        let api: [(String, String, ThrottleLimit)] = [
            ("10KPerMin", "Allows 10000 requests per minute", perMinute(10_000)),
            ("20KPerMin", "Allows 20000 requests per minute", perMinute(20_000)),
            ("50KPerMin", "Allows 50000 requests per minute", perMinute(50_000)),
            ("Unlimited", "Allows unlimited requests", unlimited),
        ]
        return subscription.map { name, description, limit in
            ThrottlePolicy(policy: .subscriptionPolicy(SubscriptionPolicy(
                tenantDomain: tenant, name: name, displayName: name, description: description, defaultLimit: limit,
                stopOnQuotaReach: true, billingPlan: .free)))
        } + application.map { name, description, limit in
            ThrottlePolicy(policy: .applicationPolicy(ApplicationPolicy(
                tenantDomain: tenant, name: name, displayName: name, description: description, defaultLimit: limit)))
        } + api.map { name, description, limit in
            ThrottlePolicy(policy: .advancedPolicy(AdvancedPolicy(
                tenantDomain: tenant, name: name, displayName: name, description: description, applicableLevel: .api, defaultLimit: limit)))
        }
    }

    /// Installs WSO2's default policies into a tenant once (first start, new
    /// tenants). The installation is recorded in the database, so a default
    /// an administrator deleted or changed stays as they left it.
    @discardableResult
    public func installDefaults(tenant: String) async throws(RPCError) -> Int {
        let tenant = tenant.lowercased()
        if tenantsWithDefaults.withLock({ $0.contains(tenant) }) { return 0 }
        let marker = "defaults-installed." + tenant
        let done = try RPCError.catching { try database.database.environment.read { try database.database.metaValue(marker, in: $0) != nil } }
        var installed = 0
        if !done {
            let timestamp = now()
            installed = try await RPCError.catching {
                try await database.database.write { [self] txn in
                    // Another process sharing this apimgtdb may have done it meanwhile.
                    guard try database.database.metaValue(marker, in: txn) == nil else { return 0 }
                    var count = 0
                    for var policy in Self.defaults(tenant: tenant) where try database.policies.get(ApiManagerDatabase.policyKey(policy), in: txn) == nil {
                        policy.stamp(id: UUID().uuidString.lowercased(), created: timestamp, updated: timestamp)
                        try database.policies.insert(policy, in: &txn)
                        try deploymentLog.recordPolicy(policy, tenant: tenant, in: &txn)
                        count += 1
                    }
                    try database.database.setMetaValue([1], for: marker, in: &txn)
                    return count
                }
            }
            deploymentLog.committed()
        }
        tenantsWithDefaults.withLock { _ = $0.insert(tenant) }
        return installed
    }

    // MARK: Policies

    static func identity(_ policy: ThrottlePolicy) -> (kind: PolicyKind, name: String)? {
        switch policy.policy {
        case .subscriptionPolicy(let p)?: (.subscription, p.name)
        case .applicationPolicy(let p)?: (.application, p.name)
        case .advancedPolicy(let p)?: (.advanced, p.name)
        case .globalPolicy(let p)?: (.global, p.name)
        case nil: nil
        }
    }

    static func checkName(_ name: String) throws(RPCError) {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
        guard (1...64).contains(name.count), name.allSatisfy(allowed.contains) else {
            throw RPCError(.invalidArgument, "policy name \"\(name)\" is invalid: use 1 to 64 letters, digits, _ or -")
        }
    }

    static func checkLimit(_ limit: ThrottleLimit?, _ field: String) throws(RPCError) {
        guard let limit else { throw RPCError(.invalidArgument, "\(field) is required") }
        guard limit.timeUnit != .unspecified, case .some = TimeUnit(rawValue: limit.timeUnit.rawValue) as TimeUnit? else {
            throw RPCError(.invalidArgument, "\(field).time_unit is required (SECOND, MINUTE, HOUR, DAY, MONTH or YEAR)")
        }
        if case .unrecognized = limit.timeUnit { throw RPCError(.invalidArgument, "\(field).time_unit is not a known unit") }
        guard limit.unitTime >= 1 else { throw RPCError(.invalidArgument, "\(field).unit_time must be at least 1") }
        switch limit.quota {
        case .requestCount(let count)?: guard count >= 1 else { throw RPCError(.invalidArgument, "\(field).request_count must be at least 1") }
        case .bandwidthBytes(let bytes)?: guard bytes >= 1 else { throw RPCError(.invalidArgument, "\(field).bandwidth_bytes must be at least 1") }
        case nil: throw RPCError(.invalidArgument, "\(field) needs a request_count or a bandwidth_bytes quota")
        }
    }

    /// Checks a policy's fields; returns its kind and name.
    static func validate(_ policy: ThrottlePolicy) throws(RPCError) -> (PolicyKind, String) {
        switch policy.policy {
        case .subscriptionPolicy(let p)?:
            try checkName(p.name)
            try checkLimit(p.defaultLimit, "default_limit")
            if p.spikeArrestLimit > 0 && (p.spikeArrestUnit != .second && p.spikeArrestUnit != .minute) {
                throw RPCError(.invalidArgument, "spike_arrest_unit must be SECOND or MINUTE when spike_arrest_limit is set")
            }
            return (.subscription, p.name)
        case .applicationPolicy(let p)?:
            try checkName(p.name)
            try checkLimit(p.defaultLimit, "default_limit")
            return (.application, p.name)
        case .advancedPolicy(let p)?:
            try checkName(p.name)
            try checkLimit(p.defaultLimit, "default_limit")
            guard p.applicableLevel == .api || p.applicableLevel == .resource else {
                throw RPCError(.invalidArgument, "applicable_level must be API or RESOURCE")
            }
            for (index, group) in p.conditionGroups.enumerated() {
                guard !group.conditions.isEmpty else { throw RPCError(.invalidArgument, "condition_groups[\(index)] has no condition") }
                try checkLimit(group.limit, "condition_groups[\(index)].limit")
                for (position, condition) in group.conditions.enumerated() {
                    try checkCondition(condition, "condition_groups[\(index)].conditions[\(position)]")
                }
            }
            return (.advanced, p.name)
        case .globalPolicy(let p)?:
            try checkName(p.name)
            guard !p.keyTemplate.isEmpty, p.keyTemplate.contains("$") else {
                throw RPCError(.invalidArgument, "key_template is required, built from $userId, $apiContext, $apiVersion, $resourceKey, $appId, $clientIp …")
            }
            // Without a limit the policy only records its WSO2 query (docs/throttling.md).
            if p.limit != nil { try checkLimit(p.limit, "limit") }
            return (.global, p.name)
        case nil:
            throw RPCError(.invalidArgument, "policy must be a subscription, application, advanced or global policy")
        }
    }

    static func checkCondition(_ condition: ThrottleCondition, _ field: String) throws(RPCError) {
        switch condition.match {
        case .ip(let address)?:
            guard IPAddress(address) != nil else { throw RPCError(.invalidArgument, "\(field).ip \"\(address)\" is not an IP address") }
        case .ipRange(let range)?:
            try checkRange(range, "\(field).ip_range")
        case .header(let pair)?, .queryParameter(let pair)?, .jwtClaim(let pair)?:
            guard !pair.name.isEmpty, !pair.valuePattern.isEmpty else { throw RPCError(.invalidArgument, "\(field) needs a name and a value pattern") }
        case nil:
            throw RPCError(.invalidArgument, "\(field) must match an IP, IP range, header, query parameter or JWT claim")
        }
    }

    static func checkRange(_ range: IpRange, _ field: String) throws(RPCError) {
        guard let start = IPAddress(range.startAddress), let end = IPAddress(range.endAddress) else {
            throw RPCError(.invalidArgument, "\(field) needs valid start_address and end_address")
        }
        guard start.bytes.count == end.bytes.count else { throw RPCError(.invalidArgument, "\(field) mixes IPv4 and IPv6") }
        guard start.bytes.lexicographicallyPrecedes(end.bytes) || start.bytes == end.bytes else {
            throw RPCError(.invalidArgument, "\(field): start_address comes after end_address")
        }
    }

    public func createPolicy(_ policy: ThrottlePolicy, tenant: String) async throws(RPCError) -> ThrottlePolicy {
        let (kind, name) = try Self.validate(policy)
        let timestamp = now()
        var stored = policy
        stored.setTenant(tenant)
        stored.stamp(id: UUID().uuidString.lowercased(), created: timestamp, updated: timestamp)
        let record = stored
        try await RPCError.catching {
            try await database.database.write { [self] txn in
                do {
                    try database.policies.insert(record, in: &txn)
                } catch StorageError.alreadyExists {
                    throw RPCError(.alreadyExists, "a \(Self.kindName(kind)) policy named \(name) already exists in tenant \(tenant)")
                }
                try deploymentLog.recordPolicy(record, tenant: tenant, in: &txn)
            }
        }
        deploymentLog.committed()
        return record
    }

    public func updatePolicy(_ policy: ThrottlePolicy, tenant: String) async throws(RPCError) -> ThrottlePolicy {
        let (kind, name) = try Self.validate(policy)
        let timestamp = now()
        defer { deploymentLog.committed() }
        return try await RPCError.catching {
            try await database.database.write { [self] txn in
                guard let existing = try database.policies.get(ApiManagerDatabase.policyKey(kind: kind, name: name, tenant: tenant), in: txn) else {
                    throw RPCError(.notFound, "no \(Self.kindName(kind)) policy named \(name) in tenant \(tenant)")
                }
                var updated = policy
                updated.setTenant(tenant)
                updated.stamp(id: existing.id, created: existing.createdAt, updated: timestamp)
                _ = try database.policies.put(updated, in: &txn)
                try deploymentLog.recordPolicy(updated, tenant: tenant, in: &txn)
                return updated
            }
        }
    }

    public func policy(kind: PolicyKind, name: String, tenant: String) throws(RPCError) -> ThrottlePolicy {
        guard let policy = try RPCError.catching({ try database.policy(kind: kind, name: name, tenant: tenant) }) else {
            throw RPCError(.notFound, "no \(Self.kindName(kind)) policy named \(name) in tenant \(tenant)")
        }
        return policy
    }

    public func listPolicies(kind: PolicyKind, tenant: String, pageSize: Int, pageToken: [UInt8]) throws(RPCError) -> Page<ThrottlePolicy> {
        try RPCError.catching {
            try database.database.environment.read { txn in
                let prefix = kind == .unspecified ? Key(.string(tenant.lowercased())) : Key(.string(tenant.lowercased()), .int64(Int64(kind.rawValue)))
                return try database.policies.list(prefix: prefix, pageSize: pageSize == 0 ? 100 : min(pageSize, 1000), pageToken: pageToken, in: txn)
            }
        }
    }

    /// Deletes a policy nothing uses: an API offering a subscription policy
    /// or naming an advanced one, a subscription on a tier, or an application
    /// on an application policy keeps it.
    public func deletePolicy(kind: PolicyKind, name: String, tenant: String) async throws(RPCError) {
        try await RPCError.catching {
            try await database.database.write { [self] txn in
                let key = ApiManagerDatabase.policyKey(kind: kind, name: name, tenant: tenant)
                guard let existing = try database.policies.get(key, in: txn) else {
                    throw RPCError(.notFound, "no \(Self.kindName(kind)) policy named \(name) in tenant \(tenant)")
                }
                var users: [String] = []
                switch kind {
                case .subscription:
                    try database.apis.forEach(index: ApiManagerDatabase.apisByNameVersion, prefix: Key(.string(tenant.lowercased())), in: txn) { api in
                        if api.subscriptionPolicies.contains(name) { users.append("API \(api.name) \(api.version)") }
                        return users.count < 5
                    }
                case .advanced:
                    try database.apis.forEach(index: ApiManagerDatabase.apisByNameVersion, prefix: Key(.string(tenant.lowercased())), in: txn) { api in
                        if api.apiPolicy == name || api.resources.contains(where: { $0.throttlingPolicy == name }) { users.append("API \(api.name) \(api.version)") }
                        return users.count < 5
                    }
                case .application:
                    try database.applications.forEach(index: ApiManagerDatabase.applicationsByOwnerName, prefix: Key(.string(tenant.lowercased())), in: txn) { application in
                        if application.throttlingPolicy == name { users.append("application \(application.name)") }
                        return users.count < 5
                    }
                case .global, .unspecified, .unrecognized:
                    break
                }
                guard users.isEmpty else {
                    throw RPCError(.failedPrecondition, "\(Self.kindName(kind)) policy \(name) is in use by \(users.joined(separator: ", "))")
                }
                _ = try database.policies.delete(key, in: &txn)
                try deploymentLog.append(.policyRemoved(PolicyRef(kind: kind, id: existing.id, name: name)), tenant: tenant, in: &txn)
            }
        }
        deploymentLog.committed()
    }

    static func kindName(_ kind: PolicyKind) -> String {
        switch kind {
        case .subscription: "subscription"
        case .application: "application"
        case .advanced: "advanced"
        case .global: "global"
        case .unspecified, .unrecognized: "unknown"
        }
    }

    // MARK: Block conditions

    static func validate(_ condition: BlockCondition) throws(RPCError) {
        switch (condition.conditionType, condition.target) {
        case (.apiContext, .value(let context)?):
            guard context.hasPrefix("/"), context.count > 1, !context.contains(where: { $0.isWhitespace }) else {
                throw RPCError(.invalidArgument, "an API_CONTEXT condition needs a context such as /pizzashack/1.0.0")
            }
        case (.application, .value(let value)?):
            let parts = value.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                throw RPCError(.invalidArgument, "an APPLICATION condition names owner:application, such as admin:DefaultApplication")
            }
        case (.user, .value(let user)?):
            guard !user.isEmpty, !user.contains(where: { $0.isWhitespace }) else { throw RPCError(.invalidArgument, "a USER condition names a user") }
        case (.ip, .value(let address)?):
            guard IPAddress(address) != nil else { throw RPCError(.invalidArgument, "\"\(address)\" is not an IP address") }
        case (.ipRange, .ipRange(let range)?):
            try checkRange(range, "ip_range")
        case (.unspecified, _), (.unrecognized, _):
            throw RPCError(.invalidArgument, "condition_type is required: API_CONTEXT, APPLICATION, USER, IP or IP_RANGE")
        default:
            throw RPCError(.invalidArgument, "condition_type \(condition.conditionType) needs \(condition.conditionType == .ipRange ? "ip_range" : "a value")")
        }
        if condition.invert && condition.conditionType != .ip && condition.conditionType != .ipRange {
            throw RPCError(.invalidArgument, "only IP and IP_RANGE conditions can be inverted")
        }
    }

    public func createBlockCondition(_ condition: BlockCondition, tenant: String) async throws(RPCError) -> BlockCondition {
        try Self.validate(condition)
        let timestamp = now()
        var stored = condition
        stored.id = UUID().uuidString.lowercased()
        stored.tenantDomain = tenant
        stored.createdAtUnixMs = timestamp
        stored.updatedAtUnixMs = timestamp
        let record = stored
        try await RPCError.catching {
            try await database.database.write { [self] txn in
                let same = try database.blockConditions.all(index: ApiManagerDatabase.blockConditionsByTenant, prefix: Key(.string(tenant.lowercased())), in: txn)
                    .first { $0.conditionType == record.conditionType && $0.target == record.target && $0.invert == record.invert }
                if let same { throw RPCError(.alreadyExists, "the same block condition exists already (id \(same.id))") }
                try database.blockConditions.insert(record, in: &txn)
                try deploymentLog.append(.blockConditionUpserted(record), tenant: tenant, in: &txn)
            }
        }
        deploymentLog.committed()
        return record
    }

    /// Reads, changes and writes one condition of `tenant` in one transaction.
    func modifyCondition(_ id: String, tenant: String, _ change: @escaping @Sendable (inout BlockCondition) throws(RPCError) -> Void) async throws(RPCError) -> BlockCondition {
        let timestamp = now()
        defer { deploymentLog.committed() }
        return try await RPCError.catching {
            try await database.database.write { [self] txn in
                guard var condition = try database.blockConditions.get(Key(.string(id)), in: txn), condition.tenantDomain == tenant else {
                    throw RPCError(.notFound, "no block condition \(id) in tenant \(tenant)")
                }
                try change(&condition)
                condition.updatedAtUnixMs = timestamp
                _ = try database.blockConditions.put(condition, in: &txn)
                try deploymentLog.append(.blockConditionUpserted(condition), tenant: tenant, in: &txn)
                return condition
            }
        }
    }

    public func updateBlockCondition(_ condition: BlockCondition, tenant: String) async throws(RPCError) -> BlockCondition {
        try Self.validate(condition)
        return try await modifyCondition(condition.id, tenant: tenant) { stored in
            stored.conditionType = condition.conditionType
            stored.target = condition.target
            stored.invert = condition.invert
            stored.enabled = condition.enabled
        }
    }

    public func setBlockConditionEnabled(_ id: String, enabled: Bool, tenant: String) async throws(RPCError) -> BlockCondition {
        try await modifyCondition(id, tenant: tenant) { $0.enabled = enabled }
    }

    public func blockCondition(_ id: String, tenant: String) throws(RPCError) -> BlockCondition {
        guard let condition = try RPCError.catching({ try database.database.environment.read { try database.blockConditions.get(Key(.string(id)), in: $0) } }),
              condition.tenantDomain == tenant else {
            throw RPCError(.notFound, "no block condition \(id) in tenant \(tenant)")
        }
        return condition
    }

    public func deleteBlockCondition(_ id: String, tenant: String) async throws(RPCError) {
        try await RPCError.catching {
            try await database.database.write { [self] txn in
                guard let condition = try database.blockConditions.get(Key(.string(id)), in: txn), condition.tenantDomain == tenant else {
                    throw RPCError(.notFound, "no block condition \(id) in tenant \(tenant)")
                }
                _ = try database.blockConditions.delete(condition, in: &txn)
                try deploymentLog.append(.blockConditionRemoved(condition.id), tenant: tenant, in: &txn)
            }
        }
        deploymentLog.committed()
    }

    public func listBlockConditions(type: BlockConditionType, tenant: String, pageSize: Int, pageToken: [UInt8]) throws(RPCError) -> Page<BlockCondition> {
        try RPCError.catching {
            try database.database.environment.read { txn in
                let page = try database.blockConditions.list(index: ApiManagerDatabase.blockConditionsByTenant, prefix: Key(.string(tenant.lowercased())),
                                                             pageSize: pageSize == 0 ? 100 : min(pageSize, 1000), pageToken: pageToken, in: txn)
                return Page(items: type == .unspecified ? page.items : page.items.filter { $0.conditionType == type }, nextPageToken: page.nextPageToken)
            }
        }
    }


}

extension ThrottlePolicy {
    var id: String {
        switch policy {
        case .subscriptionPolicy(let p)?: p.id
        case .applicationPolicy(let p)?: p.id
        case .advancedPolicy(let p)?: p.id
        case .globalPolicy(let p)?: p.id
        case nil: ""
        }
    }

    var createdAt: Int64 {
        switch policy {
        case .subscriptionPolicy(let p)?: p.createdAtUnixMs
        case .applicationPolicy(let p)?: p.createdAtUnixMs
        case .advancedPolicy(let p)?: p.createdAtUnixMs
        case .globalPolicy(let p)?: p.createdAtUnixMs
        case nil: 0
        }
    }

    mutating func setTenant(_ tenant: String) {
        switch policy {
        case .subscriptionPolicy(var p)?: p.tenantDomain = tenant; policy = .subscriptionPolicy(p)
        case .applicationPolicy(var p)?: p.tenantDomain = tenant; policy = .applicationPolicy(p)
        case .advancedPolicy(var p)?: p.tenantDomain = tenant; policy = .advancedPolicy(p)
        case .globalPolicy(var p)?: p.tenantDomain = tenant; policy = .globalPolicy(p)
        case nil: break
        }
    }

    mutating func stamp(id: String, created: Int64, updated: Int64) {
        switch policy {
        case .subscriptionPolicy(var p)?:
            (p.id, p.createdAtUnixMs, p.updatedAtUnixMs) = (id, created, updated)
            policy = .subscriptionPolicy(p)
        case .applicationPolicy(var p)?:
            (p.id, p.createdAtUnixMs, p.updatedAtUnixMs) = (id, created, updated)
            policy = .applicationPolicy(p)
        case .advancedPolicy(var p)?:
            (p.id, p.createdAtUnixMs, p.updatedAtUnixMs) = (id, created, updated)
            policy = .advancedPolicy(p)
        case .globalPolicy(var p)?:
            (p.id, p.createdAtUnixMs, p.updatedAtUnixMs) = (id, created, updated)
            policy = .globalPolicy(p)
        case nil:
            break
        }
    }
}

/// An IPv4 or IPv6 address in network byte order, parsed without the C library.
struct IPAddress: Hashable {
    let bytes: [UInt8]

    init?(_ text: String) {
        if text.contains(":") {
            guard let bytes = Self.parseIPv6(text) else { return nil }
            self.bytes = bytes
        } else {
            let parts = text.split(separator: ".", omittingEmptySubsequences: false)
            guard parts.count == 4 else { return nil }
            var bytes: [UInt8] = []
            for part in parts {
                guard !part.isEmpty, part.count <= 3, part.allSatisfy(\.isASCII), let value = UInt8(part) else { return nil }
                bytes.append(value)
            }
            self.bytes = bytes
        }
    }

    static func parseIPv6(_ text: String) -> [UInt8]? {
        let halves = text.components(separatedBy: "::")
        guard halves.count <= 2 else { return nil }
        func groups(_ part: String) -> [UInt16]? {
            if part.isEmpty { return [] }
            var result: [UInt16] = []
            for group in part.split(separator: ":", omittingEmptySubsequences: false) {
                guard (1...4).contains(group.count), let value = UInt16(group, radix: 16) else { return nil }
                result.append(value)
            }
            return result
        }
        guard let head = groups(halves[0]) else { return nil }
        var all = head
        if halves.count == 2 {
            guard let tail = groups(halves[1]), head.count + tail.count <= 7 else { return nil }
            all += [UInt16](repeating: 0, count: 8 - head.count - tail.count) + tail
        }
        guard all.count == 8 else { return nil }
        return all.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }
    }
}
