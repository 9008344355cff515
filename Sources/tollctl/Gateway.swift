import ArgumentParser
import Foundation
import RPCCore
import TollgateProto
import TollgateServices

struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "gateway", abstract: "Inspect a gateway node and clear its caches.",
                                                    subcommands: [GatewayStatus.self, GatewayFlush.self])
}

struct GatewayStatus: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "What a gateway serves and how current it is: deployment revision and feed, APIs, caches, revocations, usage records.",
        discussion: "Point --node at the gateway's cluster listener; an admin certificate (tollctl certs issue-admin) is enough.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "table or json.") var output: OutputFormat = .table

    func run() async throws {
        let status = try await NodeSession.with(connection) { node in
            try await node.run { try await GatewayServiceClient(node.connection).getGatewayStatus(GetGatewayStatusRequest(), options: node.callOptions) }
        }
        let confirmed = status.deploymentAppliedAtUnixMs > 0
            ? Date(timeIntervalSince1970: Double(status.deploymentAppliedAtUnixMs) / 1000) : nil
        let age = confirmed.map { Int(Date().timeIntervalSince($0)) }
        switch output {
        case .json:
            try printJSON([
                "deployment_revision": status.deploymentRevision, "deployment_confirmed_at_unix_ms": status.deploymentAppliedAtUnixMs,
                "deployment_feed_connected": status.deploymentFeedConnected, "serving_persisted_state": status.servingPersistedState,
                "apis": status.apiCount, "policies": status.policyCount, "block_conditions": status.blockConditionCount,
                "key_cache_entries": status.keyCacheEntries, "throttle_counters": status.throttledKeys,
                "revocation_sequence": status.revocationSequence, "usage_events_queued": status.usageEventsQueued,
                "usage_events_dropped": status.usageEventsDropped,
                "throttle_traffic_managers": status.throttleTrafficManagers, "throttle_failure_mode": status.throttleFailureMode,
                "throttle_keys_in_fallback": status.throttleKeysInFallback, "throttle_fallback_entries": status.throttleFallbackEntries,
                "throttle_requests": status.throttleRequests, "throttle_exchanges": status.throttleExchanges, "throttle_waits": status.throttleWaits,
            ] as [String: Any])
        case .table:
            let feed = status.deploymentFeedConnected ? "connected"
                : status.servingPersistedState ? "disconnected: serving the state saved on disk" : "disconnected: serving the last state received"
            printTable(["", ""], [
                ["deployment revision", "\(status.deploymentRevision)"],
                ["confirmed by a publisher", age.map { "\($0) s ago" } ?? "never"],
                ["deployment feed", feed],
                ["APIs / policies / blocks", "\(status.apiCount) / \(status.policyCount) / \(status.blockConditionCount)"],
                ["cached validations", "\(status.keyCacheEntries)"],
                ["throttle counters", "\(status.throttledKeys)"],
                ["revocation sequence", "\(status.revocationSequence)"],
                ["usage records queued / dropped", "\(status.usageEventsQueued) / \(status.usageEventsDropped)"],
                ["traffic managers", status.throttleTrafficManagers == 0 ? "none: every limit enforced by the failure mode"
                    : "\(status.throttleTrafficManagers)"],
                ["throttle failure mode", status.throttleFailureMode],
                ["keys in fallback / fallback entries", "\(status.throttleKeysInFallback) / \(status.throttleFallbackEntries)"],
                ["throttled requests / lease round trips / waits", "\(status.throttleRequests) / \(status.throttleExchanges) / \(status.throttleWaits)"],
            ])
        }
    }
}

struct GatewayFlush: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flush",
        abstract: "Drop a gateway's cached token validations (the next calls ask a keymanager again), invalid tokens, or throttle counters.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "validations, invalid-tokens or throttle; repeat for several; none for all.") var cache: [CacheName] = []

    enum CacheName: String, ExpressibleByArgument, CaseIterable {
        case validations, invalidTokens = "invalid-tokens", throttle

        var proto: GatewayCache {
            switch self {
            case .validations: .keyValidation
            case .invalidTokens: .invalidToken
            case .throttle: .throttleDecisions
            }
        }
    }

    func run() async throws {
        let request = FlushCachesRequest(caches: cache.map(\.proto))
        let response = try await NodeSession.with(connection) { node in
            try await node.run { try await GatewayServiceClient(node.connection).flushCaches(request, options: node.callOptions) }
        }
        print("dropped \(response.evictedEntries) cached entries")
    }
}
