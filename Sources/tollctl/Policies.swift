import ArgumentParser
import Foundation
import RPCCore
import TollgateProto
import TollgateServices

enum PolicyKindOption: String, ExpressibleByArgument, CaseIterable {
    case subscription, application, advanced, global
    var kind: PolicyKind {
        switch self {
        case .subscription: .subscription
        case .application: .application
        case .advanced: .advanced
        case .global: .global
        }
    }
}

enum TimeUnitOption: String, ExpressibleByArgument, CaseIterable {
    case second, minute, hour, day, month, year
    var unit: TimeUnit {
        switch self {
        case .second: .second
        case .minute: .minute
        case .hour: .hour
        case .day: .day
        case .month: .month
        case .year: .year
        }
    }
}

struct Policy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Throttling policies: subscription tiers, application, advanced (API) and global policies.",
        subcommands: [PolicyList.self, PolicyShow.self, PolicyCreate.self, PolicyDelete.self])
}

/// What a policy's table row and JSON say.
func describe(_ policy: ThrottlePolicy) -> (kind: String, name: String, limit: String, description: String, json: [String: Any]) {
    func limitText(_ limit: ThrottleLimit?) -> String {
        guard let limit else { return "-" }
        let unit = "\(limit.unitTime == 1 ? "" : "\(limit.unitTime) ")\(String(describing: limit.timeUnit).lowercased())"
        switch limit.quota {
        case .requestCount(let count)?: return count >= 2_147_483_647 ? "unlimited" : "\(count) requests/\(unit)"
        case .bandwidthBytes(let bytes)?: return "\(bytes) bytes/\(unit)"
        case nil: return "-"
        }
    }
    switch policy.policy {
    case .subscriptionPolicy(let p)?:
        return ("subscription", p.name, limitText(p.defaultLimit), p.description,
                ["kind": "subscription", "name": p.name, "limit": limitText(p.defaultLimit), "description": p.description,
                 "spike_arrest_limit": p.spikeArrestLimit, "spike_arrest_unit": p.spikeArrestLimit > 0 ? String(describing: p.spikeArrestUnit).lowercased() : "",
                 "stop_on_quota_reach": p.stopOnQuotaReach, "id": p.id])
    case .applicationPolicy(let p)?:
        return ("application", p.name, limitText(p.defaultLimit), p.description,
                ["kind": "application", "name": p.name, "limit": limitText(p.defaultLimit), "description": p.description, "id": p.id])
    case .advancedPolicy(let p)?:
        return ("advanced", p.name, limitText(p.defaultLimit), p.description,
                ["kind": "advanced", "name": p.name, "limit": limitText(p.defaultLimit), "description": p.description,
                 "level": p.applicableLevel == .resource ? "resource" : "api",
                 "condition_groups": p.conditionGroups.map { ["id": $0.id, "limit": limitText($0.limit), "description": $0.description] }, "id": p.id])
    case .globalPolicy(let p)?:
        return ("global", p.name, "\(limitText(p.limit)) per \(p.keyTemplate)", p.description,
                ["kind": "global", "name": p.name, "limit": limitText(p.limit), "key_template": p.keyTemplate, "description": p.description, "id": p.id])
    case nil:
        return ("?", "?", "-", "", [:])
    }
}

struct PolicyList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the tenant's policies.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Only this kind.") var kind: PolicyKindOption?
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let policies = try await NodeSession.with(connection) { node in
            try await node.run {
                try await AdminServiceClient(node.connection, defaultOptions: node.callOptions)
                    .listPolicies(ListPoliciesRequest(kind: kind?.kind ?? .unspecified, page: PageRequest(pageSize: 1000))).policies
            }
        }
        let rows = policies.map(describe)
        switch output {
        case .json: try printJSON(rows.map(\.json))
        case .table: printTable(["KIND", "NAME", "LIMIT", "DESCRIPTION"], rows.map { [$0.kind, $0.name, $0.limit, $0.description] })
        }
    }
}

struct PolicyShow: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one policy.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "The policy's kind.") var kind: PolicyKindOption
    @Argument(help: "The policy's name.") var name: String

    func run() async throws {
        let policy = try await NodeSession.with(connection) { node in
            try await node.run {
                try await AdminServiceClient(node.connection, defaultOptions: node.callOptions)
                    .getPolicy(GetPolicyRequest(policy: PolicyRef(kind: kind.kind, name: name))).policy
            }
        }
        try printJSON(describe(policy ?? ThrottlePolicy()).json)
    }
}

enum SpikeArrestUnitOption: String, ExpressibleByArgument, CaseIterable {
    case second, minute
    var unit: TimeUnit { self == .second ? .second : .minute }
}

enum PolicyLevelOption: String, ExpressibleByArgument, CaseIterable {
    case api, resource
    var level: PolicyLevel { self == .api ? .api : .resource }
}

/// Reads `--condition-group` specifications (docs/tollctl.md):
/// `LIMIT when CONDITION [and CONDITION]…`, LIMIT being `N/UNIT`, `N/K UNIT`
/// or with a `b` after N for bytes (`4096b/minute`); a CONDITION is
/// `ip=ADDRESS`, `ip-range=FIRST-LAST`, `header:NAME=REGEX`,
/// `query:NAME=REGEX` or `claim:NAME=REGEX`, each negated by a leading `!`.
enum ConditionGroupSpec {
    static func parse(_ spec: String, id: String) throws -> ConditionGroup {
        guard let when = spec.range(of: " when ") else {
            throw ValidationError("condition group \"\(spec)\" is not LIMIT when CONDITION [and CONDITION]…, e.g. \"10/minute when ip=203.0.113.7 and !header:X-Tier=gold\"")
        }
        let limit = try parseLimit(String(spec[..<when.lowerBound]).trimmingCharacters(in: .whitespaces), in: spec)
        let conditions = try spec[when.upperBound...].components(separatedBy: " and ").map { try parseCondition($0.trimmingCharacters(in: .whitespaces), in: spec) }
        return ConditionGroup(id: id, description: spec, conditions: conditions, limit: limit)
    }

    static func parseLimit(_ text: String, in spec: String) throws -> ThrottleLimit {
        let parts = text.split(separator: "/", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
        var amount = parts.first ?? ""
        let bytes = amount.hasSuffix("b")
        if bytes { amount.removeLast() }
        guard parts.count == 2, let count = UInt64(amount), count > 0 else {
            throw ValidationError("condition group \"\(spec)\": the limit \"\(text)\" is not N/UNIT (or Nb/UNIT for bytes), e.g. 10/minute or 4096b/2 hour")
        }
        var period = parts[1]
        let digits = period.prefix { $0.isNumber }
        period = period.dropFirst(digits.count).trimmingCharacters(in: .whitespaces)
        guard let unit = TimeUnitOption(rawValue: period.hasSuffix("s") ? String(period.dropLast()) : period) else {
            throw ValidationError("condition group \"\(spec)\": \"\(parts[1])\" is no period: use second, minute, hour, day, month or year, optionally after a count")
        }
        let unitTime = digits.isEmpty ? 1 : UInt32(digits) ?? 0
        guard unitTime > 0 else { throw ValidationError("condition group \"\(spec)\": the period's count must be at least 1") }
        return ThrottleLimit(timeUnit: unit.unit, unitTime: unitTime, quota: bytes ? .bandwidthBytes(count) : .requestCount(count))
    }

    static func parseCondition(_ text: String, in spec: String) throws -> ThrottleCondition {
        var body = Substring(text)
        let invert = body.hasPrefix("!")
        if invert { body = body.dropFirst() }
        func named(_ prefix: String) throws -> NamedValueCondition? {
            guard body.hasPrefix(prefix) else { return nil }
            let rest = body.dropFirst(prefix.count)
            guard let equals = rest.firstIndex(of: "="), equals != rest.startIndex, rest.index(after: equals) != rest.endIndex else {
                throw ValidationError("condition group \"\(spec)\": \"\(text)\" needs \(prefix)NAME=REGEX")
            }
            return NamedValueCondition(name: String(rest[..<equals]), valuePattern: String(rest[rest.index(after: equals)...]))
        }
        var condition = ThrottleCondition(invert: invert)
        if body.hasPrefix("ip=") {
            condition.match = .ip(String(body.dropFirst(3)))
        } else if body.hasPrefix("ip-range=") {
            let bounds = body.dropFirst(9).split(separator: "-")
            guard bounds.count == 2 else { throw ValidationError("condition group \"\(spec)\": \"\(text)\" needs ip-range=FIRST-LAST") }
            condition.match = .ipRange(IpRange(startAddress: String(bounds[0]), endAddress: String(bounds[1])))
        } else if let header = try named("header:") {
            condition.match = .header(header)
        } else if let query = try named("query:") {
            condition.match = .queryParameter(query)
        } else if let claim = try named("claim:") {
            condition.match = .jwtClaim(claim)
        } else {
            throw ValidationError("condition group \"\(spec)\": \"\(text)\" is none of ip=, ip-range=, header:NAME=, query:NAME=, claim:NAME= (! negates)")
        }
        return condition
    }
}

struct PolicyCreate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create", abstract: "Create a subscription, application, advanced or global (custom) policy with a request or bandwidth quota.",
        discussion: """
            Subscription tiers may add a spike arrest (--spike-arrest, --spike-arrest-unit) and admit past their quota \
            (--no-stop-on-quota: calls go on and are marked). Advanced policies take condition groups, each with its own limit: \
            --condition-group "10/minute when ip-range=10.0.0.0-10.0.0.255 and !header:X-Tier=gold" (conditions: ip=, ip-range=, \
            header:NAME=REGEX, query:NAME=REGEX, claim:NAME=REGEX; ! negates). Global policies count every call of the tenant's APIs \
            under their expanded --key-template, e.g. "$userId:$apiContext".
            """)
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "subscription, application, advanced or global.") var kind: PolicyKindOption
    @Argument(help: "The policy's name (letters, digits, _ and -).") var name: String
    @Option(help: "Requests allowed per period.") var requests: UInt64?
    @Option(help: "Bytes allowed per period (instead of --requests).") var bandwidth: UInt64?
    @Option(help: "The period's unit.") var per: TimeUnitOption = .minute
    @Option(name: .customLong("unit-time"), help: "How many units make the period.") var unitTime: UInt32 = 1
    @Option(help: "A description.") var description: String = ""
    @Option(name: .customLong("spike-arrest"), help: "Subscription policies: at most this many requests per --spike-arrest-unit on each gateway.")
    var spikeArrest: UInt32 = 0
    @Option(name: .customLong("spike-arrest-unit"), help: "second or minute.") var spikeArrestUnit: SpikeArrestUnitOption = .second
    @Flag(name: .customLong("stop-on-quota"), inversion: .prefixedNo,
          help: "Subscription policies: refuse calls past the quota (the default), or admit and mark them.")
    var stopOnQuota = true
    @Option(help: "Advanced policies: where the policy is meant to be attached.") var level: PolicyLevelOption = .api
    @Option(name: .customLong("condition-group"), help: "Advanced policies: LIMIT when CONDITION [and CONDITION]… (repeat; see the discussion).")
    var conditionGroups: [String] = []
    @Option(name: .customLong("key-template"), help: "Global policies: the throttle key, from $userId, $apiContext, $apiVersion, $appId, $appTenant, $apiTenant, $resourceKey, $clientIp, $customProperty.HEADER.")
    var keyTemplate: String?

    func validate() throws {
        guard (requests == nil) != (bandwidth == nil) else { throw ValidationError("give exactly one of --requests or --bandwidth") }
        if kind != .subscription, spikeArrest > 0 || !stopOnQuota {
            throw ValidationError("--spike-arrest and --no-stop-on-quota apply to subscription policies only")
        }
        if kind != .advanced, !conditionGroups.isEmpty { throw ValidationError("--condition-group applies to advanced policies only") }
        if kind == .global {
            guard let keyTemplate, keyTemplate.contains("$") else {
                throw ValidationError("a global policy needs --key-template built from $-variables, e.g. \"$userId:$apiContext\"")
            }
        } else if keyTemplate != nil {
            throw ValidationError("--key-template applies to global policies only")
        }
        for (index, spec) in conditionGroups.enumerated() { _ = try ConditionGroupSpec.parse(spec, id: String(index + 1)) }
    }

    func run() async throws {
        let limit = ThrottleLimit(timeUnit: per.unit, unitTime: unitTime, quota: requests.map { .requestCount($0) } ?? .bandwidthBytes(bandwidth!))
        let policy: ThrottlePolicy = switch kind {
        case .subscription:
            ThrottlePolicy(policy: .subscriptionPolicy(SubscriptionPolicy(name: name, displayName: name, description: description, defaultLimit: limit,
                                                                           spikeArrestLimit: spikeArrest, spikeArrestUnit: spikeArrest > 0 ? spikeArrestUnit.unit : .unspecified,
                                                                           stopOnQuotaReach: stopOnQuota)))
        case .application:
            ThrottlePolicy(policy: .applicationPolicy(ApplicationPolicy(name: name, displayName: name, description: description, defaultLimit: limit)))
        case .advanced:
            ThrottlePolicy(policy: .advancedPolicy(AdvancedPolicy(
                name: name, displayName: name, description: description, applicableLevel: level.level, defaultLimit: limit,
                conditionGroups: try conditionGroups.enumerated().map { try ConditionGroupSpec.parse($0.element, id: String($0.offset + 1)) })))
        case .global:
            ThrottlePolicy(policy: .globalPolicy(GlobalPolicy(name: name, description: description, keyTemplate: keyTemplate!, limit: limit)))
        }
        let created = try await NodeSession.with(connection) { node in
            try await node.run {
                try await AdminServiceClient(node.connection, defaultOptions: node.callOptions).createPolicy(CreatePolicyRequest(policy: policy)).policy
            }
        }
        let summary = describe(created ?? policy)
        print("created \(summary.kind) policy \(summary.name): \(summary.limit)")
    }
}

struct PolicyDelete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a policy nothing uses.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "The policy's kind.") var kind: PolicyKindOption
    @Argument(help: "The policy's name.") var name: String

    func run() async throws {
        try await NodeSession.with(connection) { node in
            _ = try await node.run {
                try await AdminServiceClient(node.connection, defaultOptions: node.callOptions).deletePolicy(DeletePolicyRequest(policy: PolicyRef(kind: kind.kind, name: name)))
            }
        }
        print("deleted \(kind.rawValue) policy \(name)")
    }
}

enum BlockTypeOption: String, ExpressibleByArgument, CaseIterable {
    case apiContext = "api-context", application, user, ip, ipRange = "ip-range"
    var type: BlockConditionType {
        switch self {
        case .apiContext: .apiContext
        case .application: .application
        case .user: .user
        case .ip: .ip
        case .ipRange: .ipRange
        }
    }
}

struct Block: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Block conditions: API contexts, applications, users, IPs and IP ranges to deny, sent to the gateways' deployment feed.",
        subcommands: [BlockList.self, BlockAdd.self, BlockEnable.self, BlockDisable.self, BlockDelete.self])
}

func blockRow(_ condition: BlockCondition) -> [String] {
    let target: String = switch condition.target {
    case .value(let value)?: value
    case .ipRange(let range)?: "\(range.startAddress) – \(range.endAddress)"
    case nil: "-"
    }
    let type = String(describing: condition.conditionType).lowercased().replacingOccurrences(of: "_", with: "-")
    return [condition.id, type, (condition.invert ? "not " : "") + target, condition.enabled ? "enabled" : "disabled"]
}

struct BlockList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the tenant's block conditions.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Only this type.") var type: BlockTypeOption?
    @Option(help: "table or json") var output: OutputFormat = .table

    func run() async throws {
        let conditions = try await NodeSession.with(connection) { node in
            try await node.run {
                try await AdminServiceClient(node.connection, defaultOptions: node.callOptions)
                    .listBlockConditions(ListBlockConditionsRequest(conditionType: type?.type ?? .unspecified, page: PageRequest(pageSize: 1000))).conditions
            }
        }
        let rows = conditions.map(blockRow)
        switch output {
        case .json: try printJSON(rows.map { ["id": $0[0], "type": $0[1], "target": $0[2], "state": $0[3]] })
        case .table: printTable(["ID", "TYPE", "TARGET", "STATE"], rows)
        }
    }
}

struct BlockAdd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add", abstract: "Add a block condition (enabled).",
        discussion: "Values: api-context /pizzashack/1.0.0; application owner:AppName; user name; ip 203.0.113.7; ip-range with --from and --to.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "What to block.") var type: BlockTypeOption
    @Argument(help: "The context, owner:application, user or IP (not for ip-range).") var value: String?
    @Option(help: "ip-range: first address.") var from: String?
    @Option(help: "ip-range: last address.") var to: String?
    @Flag(help: "IP and IP ranges: block everything except these addresses.") var invert = false

    func validate() throws {
        if type == .ipRange {
            guard from != nil, to != nil, value == nil else { throw ValidationError("ip-range takes --from and --to, no value") }
        } else {
            guard value != nil else { throw ValidationError("\(type.rawValue) needs a value") }
        }
    }

    func run() async throws {
        var condition = BlockCondition()
        condition.conditionType = type.type
        condition.target = type == .ipRange ? .ipRange(IpRange(startAddress: from!, endAddress: to!)) : .value(value!)
        condition.enabled = true
        condition.invert = invert
        let created = try await NodeSession.with(connection) { node in
            try await node.run {
                try await AdminServiceClient(node.connection, defaultOptions: node.callOptions).createBlockCondition(CreateBlockConditionRequest(condition: condition)).condition
            }
        }
        print("added block condition \(created?.id ?? "?")")
    }
}

struct BlockEnable: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "enable", abstract: "Enable a block condition.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The condition's id.") var id: String
    func run() async throws { try await setBlockCondition(connection, id, enabled: true) }
}

struct BlockDisable: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "disable", abstract: "Disable a block condition, keeping it.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The condition's id.") var id: String
    func run() async throws { try await setBlockCondition(connection, id, enabled: false) }
}

func setBlockCondition(_ connection: ConnectionOptions, _ id: String, enabled: Bool) async throws {
    try await NodeSession.with(connection) { node in
        _ = try await node.run {
            try await AdminServiceClient(node.connection, defaultOptions: node.callOptions).setBlockConditionEnabled(SetBlockConditionEnabledRequest(conditionId: id, enabled: enabled))
        }
    }
    print("\(enabled ? "enabled" : "disabled") block condition \(id)")
}

struct BlockDelete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a block condition.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "The condition's id.") var id: String

    func run() async throws {
        try await NodeSession.with(connection) { node in
            _ = try await node.run {
                try await AdminServiceClient(node.connection, defaultOptions: node.callOptions).deleteBlockCondition(DeleteBlockConditionRequest(conditionId: id))
            }
        }
        print("deleted block condition \(id)")
    }
}
