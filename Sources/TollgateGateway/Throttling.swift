import Foundation
import Logging
import RoleCore
import RPCCore
import ServiceLifecycle
import Synchronization
import ThrottleCore
import TollgateProto
import TollgateServices

/// The gateway's throttling step (docs/throttling.md): a ``LeaseThrottler``
/// admitting from quota leases the traffic managers under
/// `[peers] trafficmanager` grant. With none configured, or none reachable,
/// every key is in ThrottleCore's fallback and the `[gateway]
/// throttle_failure_mode` decides (by default each gateway enforces its
/// share of every limit locally).
final class GatewayThrottling: Sendable {
    let throttler: LeaseThrottler
    /// Requests that reached the throttling step (the denominator of the
    /// per-1,000-requests figures).
    private let requests = Atomic<UInt64>(0)

    init(configuration: LeaseThrottlerConfiguration, transport: any LeaseTransport) {
        throttler = LeaseThrottler(configuration: configuration, transport: transport)
    }

    /// The configuration `[gateway]` asks for.
    static func configuration(_ section: ConfigSection, gatewayID: String) -> LeaseThrottlerConfiguration {
        let mode = section.string("throttle_failure_mode").flatMap(LeaseThrottlerConfiguration.FailureMode.init(rawValue:)) ?? .localShare
        return LeaseThrottlerConfiguration(gatewayID: gatewayID, leaseHorizonMs: Int64(section.integer("throttle_lease_horizon_ms") ?? 250),
                                           idleReturnMs: Int64(section.integer("throttle_idle_return_ms") ?? 2000),
                                           exhaustedRecheckMs: Int64(section.integer("throttle_exhausted_recheck_ms") ?? 200),
                                           initialLease: UInt64(section.integer("throttle_initial_lease") ?? 4), failureMode: mode,
                                           gateways: section.integer("throttle_gateways") ?? 0,
                                           retryInitialMs: Int64(section.integer("throttle_retry_initial_ms") ?? 100),
                                           retryMaxMs: Int64(section.integer("throttle_retry_max_ms") ?? 5000))
    }

    /// Admits `request` now (the first attempt; a request that waited for a
    /// lease calls the throttler itself).
    func admit(_ request: ThrottleRequest) -> ThrottleOutcome {
        requests.add(1, ordering: .relaxed)
        return throttler.admit(request, now: Clock.unixMs())
    }

    var requestCount: UInt64 { requests.load(ordering: .relaxed) }
}

/// The gateway's ``LeaseTransport``: each exchange goes to the traffic
/// managers `[peers]` lists now (a reload's changes apply to the next
/// exchange), owners picked by rendezvous hashing of their configured
/// addresses, so gateways listing the same addresses agree on every key's
/// owner whatever their order.
struct PeerLeaseTransport: LeaseTransport {
    let peers: any PeerDirectory
    let timeout: Duration

    func exchange(_ operations: [LeaseOperation]) async -> [LeaseGrant?] {
        let managers = peers.namedTransports(for: .trafficmanager)
        guard !managers.isEmpty else { return [LeaseGrant?](repeating: nil, count: operations.count) }
        let byName = Dictionary(managers.map { ($0.name, $0.transport) }, uniquingKeysWith: { first, _ in first })
        let routed = RoutedLeaseTransport(owners: RendezvousOwners(Array(byName.keys)), timeout: timeout) { name in
            byName[name].map { TrafficManagerServiceClient($0) }
        }
        return await routed.exchange(operations)
    }
}

/// Runs the throttler's background exchanges and upkeep until shutdown.
struct LeaseExchanger: Service {
    let throttler: LeaseThrottler

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await throttler.run(clock: { Clock.unixMs() })
        }
    }
}

/// Watches every traffic manager's `WatchDecisions` stream and applies its
/// decisions (a key's pool emptied for the rest of its window, or filled
/// again) to the throttler, so requests on an exhausted key are refused
/// here without a round trip. Reconnects with back-off; picks up traffic
/// managers a reload adds.
struct ThrottleDecisionWatcher: Service {
    let peers: any PeerDirectory
    let throttler: LeaseThrottler
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                var watching: Set<String> = []
                while !Task.isCancelled {
                    for manager in peers.namedTransports(for: .trafficmanager) where !watching.contains(manager.name) {
                        watching.insert(manager.name)
                        group.addTask { await watch(manager.name) }
                    }
                    try? await Task.sleep(for: .seconds(5))
                }
            }
        }
    }

    private func watch(_ name: String) async {
        let since = Atomic<UInt64>(0)
        var failures = 0
        while !Task.isCancelled {
            // A traffic manager a reload removed: stop watching it.
            guard let transport = peers.namedTransports(for: .trafficmanager).first(where: { $0.name == name })?.transport else { return }
            let received = ReceivedFlag()
            do {
                try await TrafficManagerServiceClient(transport).watchDecisions(WatchDecisionsRequest(sinceSequence: since.load(ordering: .relaxed))) { response in
                    received.set()
                    for decision in response.decisions { throttler.apply(decision) }
                    since.store(response.headSequence, ordering: .relaxed)
                }
            } catch {
                if received.isSet { failures = 0 }
                // A watch ended by the gateway's own stop is no loss.
                if failures == 0 && !Task.isCancelled { logger.warning("throttle decisions from traffic manager \(name) lost: \(error)") }
                failures += 1
            }
            let delay = min(5_000, 100 << min(failures, 6))
            try? await Task.sleep(for: .milliseconds(failures == 0 ? 100 : delay))
        }
    }
}

extension GatewayPolicy {
    /// What the throttler needs to know about a request, as routing and
    /// key validation left it.
    func throttleRequest(_ exchange: Exchange, api: RoutedApi, keyType: KeyType, state: DeploymentState) -> ThrottleRequest {
        var apiPolicy: AdvancedPolicy?, resourcePolicy: AdvancedPolicy?
        var resourceRef: ThrottleRequest.Resource?
        if let resource = exchange.resource {
            resourceRef = ThrottleRequest.Resource(uriTemplate: resource.resource.uriTemplate, verb: resource.resource.verb.methodName)
            let name = resource.resource.throttlingPolicy
            if !name.isEmpty, let policy = api.advancedPolicies[name] {
                // The API's own policy arrives on every resource at API level.
                if resource.resource.applicableLevel == .api { apiPolicy = policy } else { resourcePolicy = policy }
            }
        }
        let head = exchange.head
        let query = exchange.query
        let jwt = exchange.info.map(\.endUserToken).flatMap { $0.isEmpty ? nil : $0 } ?? exchange.bearerToken
        let attributes = RequestAttributes(clientIP: head.clientAddress, header: { head.header($0) },
                                           queryParameter: { Self.queryParameter(query, named: $0) },
                                           jwtClaim: { name in jwt.flatMap { Self.jwtClaim($0, named: name) } })
        let sandbox = keyType == .sandbox
        let payload = head.header("content-length").flatMap { UInt64($0.trimmingCharacters(in: .whitespaces)) } ?? 0
        return ThrottleRequest(apiContext: api.api.context, apiVersion: api.api.version, apiTenant: api.api.tenantDomain, resource: resourceRef,
                               apiPolicy: apiPolicy, resourcePolicy: resourcePolicy, validation: exchange.info,
                               customPolicies: state.globalPolicies[api.api.tenantDomain] ?? [],
                               hardLimitPerSecond: sandbox ? api.api.maxSandboxTps : api.api.maxProductionTps, sandbox: sandbox,
                               attributes: attributes, payloadBytes: payload)
    }

    /// The first value of a query parameter, percent-decoded (`+` as a space).
    static func queryParameter(_ query: Substring, named name: String) -> String? {
        for pair in query.dropFirst().split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = String(parts[0]).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String(parts[0])
            guard key == name else { continue }
            let value = parts.count > 1 ? String(parts[1]) : ""
            return value.replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? value
        }
        return nil
    }

    /// A claim of a JWT's payload as text (numbers and booleans in their
    /// JSON form); nil when the token is no JWT or has no such claim. The
    /// signature is not checked here: the keymanager vouched for the token.
    static func jwtClaim(_ token: String, named name: String) -> String? {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3 else { return nil }
        var base64 = parts[1].replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.count % 4) % 4)
        guard let data = Data(base64Encoded: base64),
              let claims = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any], let value = claims[name] else { return nil }
        switch value {
        case let text as String: return text
        case let number as NSNumber: return number.stringValue
        default:
            guard let data = try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys]) else { return nil }
            return String(decoding: data, as: UTF8.self)
        }
    }
}
