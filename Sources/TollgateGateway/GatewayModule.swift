import Foundation
import Logging
import OpenSSLKit
public import RoleCore
public import RPCCore
public import ServiceLifecycle
public import ThrottleCore
import TollgateProto
import TollgateServices
import TollgateStorage

/// Validates tokens over WSO2's Thrift protocol; the node offers one when
/// `[gateway] key_validation = "thrift"` (the Thrift client lives in a
/// transport module, which role logic does not import).
public protocol ThriftKeyValidatorFactory: Sendable {
    func makeValidator(section: ConfigSection) throws -> any KeyValidator
}

/// The gateway role: API traffic on `[listen] http` (8280) and `https`
/// (8243), routed by the deployment state it watches from the publishers,
/// tokens checked through the keymanagers with a cache that revocations
/// clear, usage records queued off the request path. It opens no database:
/// its last good state lives in a file under the data directory.
public struct GatewayModule: RoleModule {
    public static let name = "gateway"
    public static let listenerNames = ["http", "https"]
    public static let rpcServices = [GatewayServiceDescriptor.serviceName]
    public static let configSection: ConfigSectionSpec? = ConfigSectionSpec(name: "gateway", keys: [
        .init("key_validation", .string),
        .init("keymanager_timeout_ms", .integer(10...120_000)),
        .init("validation_cache_seconds", .integer(0...86_400)),
        .init("invalid_token_cache_seconds", .integer(0...3_600)),
        .init("validation_cache_entries", .integer(1...100_000_000)),
        .init("backend_connect_timeout_ms", .integer(1...600_000)),
        .init("backend_read_timeout_ms", .integer(1...3_600_000)),
        .init("backend_ca_file", .path),
        .init("max_idle_backend_connections", .integer(0...100_000)),
        .init("max_request_body_bytes", .integer(0...Int(Int64.max / 2))),
        .init("max_header_bytes", .integer(1024...1_048_576)),
        .init("max_header_count", .integer(8...10_000)),
        .init("max_uri_bytes", .integer(256...1_048_576)),
        .init("idle_timeout_seconds", .integer(1...86_400)),
        .init("header_timeout_seconds", .integer(1...3_600)),
        .init("usage_queue_capacity", .integer(1...100_000_000)),
        // Usage analytics (docs/analytics.md).
        .init("usage_batch_events", .integer(1...100_000)),
        .init("usage_spool_max_bytes", .integer(1 << 16...(1 << 45))),
        .init("usage_spool_sync_ms", .integer(1...60_000)),
        .init("usage_window_batches", .integer(1...1024)),
        .init("usage_ack_timeout_ms", .integer(100...600_000)),
        .init("request_id_header", .string),
        // The JWT sent to backends of APIs with backend_jwt (docs/gateway.md, "Backend JWT").
        .init("backend_jwt_header", .string),
        .init("backend_jwt_issuer", .string),
        .init("backend_jwt_seconds", .integer(10...86_400)),
        // WSO2's Thrift key validation (docs/thrift-key-validation.md).
        .init("thrift_keymanagers", .string),
        .init("thrift_authenticator_urls", .string),
        .init("thrift_username", .string),
        .init("thrift_password_file", .path),
        .init("thrift_ca_file", .path),
        // Quota leases from the traffic managers (docs/throttling.md).
        .init("throttle_failure_mode", .string),
        .init("throttle_gateways", .integer(0...10_000)),
        .init("throttle_lease_horizon_ms", .integer(1...60_000)),
        .init("throttle_idle_return_ms", .integer(1...3_600_000)),
        .init("throttle_exhausted_recheck_ms", .integer(1...60_000)),
        .init("throttle_initial_lease", .integer(1...1_000_000)),
        .init("throttle_lease_timeout_ms", .integer(10...60_000)),
        .init("throttle_retry_initial_ms", .integer(1...60_000)),
        .init("throttle_retry_max_ms", .integer(1...600_000)),
    ], check: { section in
        if let mode = section.string("throttle_failure_mode"), LeaseThrottlerConfiguration.FailureMode(rawValue: mode) == nil {
            return [(key: "throttle_failure_mode", problem: "must be \"local-share\", \"open\" or \"closed\", not \"\(mode)\"")]
        }
        if let header = section.string("backend_jwt_header"), !isFieldName(header) {
            return [(key: "backend_jwt_header", problem: "\"\(header)\" is not an HTTP header name")]
        }
        if let mode = section.string("key_validation"), mode != "rpc" && mode != "thrift" {
            return [(key: "key_validation", problem: "must be \"rpc\" or \"thrift\", not \"\(mode)\"")]
        }
        if section.string("key_validation") == "thrift" {
            for key in ["thrift_keymanagers", "thrift_authenticator_urls", "thrift_username", "thrift_password_file"] where section.values[key] == nil {
                return [(key: key, problem: "is needed with key_validation = \"thrift\"")]
            }
            if list(section.string("thrift_keymanagers") ?? "").count != list(section.string("thrift_authenticator_urls") ?? "").count {
                return [(key: "thrift_authenticator_urls", problem: "must name one authenticator URL per entry of thrift_keymanagers, in the same order")]
            }
        }
        return []
    })

    /// Whether `name` is an HTTP field name (RFC 9110 `token`).
    static func isFieldName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A) || Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }

    /// A comma-separated list, entries trimmed, empty ones dropped.
    public static func list(_ text: String) -> [String] {
        text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    let policy: GatewayPolicy
    let feed: FeedStatus
    let store: DeploymentStore?
    let peers: (any PeerDirectory)?
    let logger: Logger
    let gatewayMetrics: GatewayMetrics
    let limits: ProxyListenerLimits
    let revocations: RevocationStatus
    let spool: UsageSpool?
    let shipping: UsageShipping
    let usageSettings: (batch: Int, window: Int, ackTimeout: Duration)
    let gatewayID: String

    public init(context: NodeContext) async throws {
        let section = context.section("gateway")
        let spool_: UsageSpool?
        logger = context.logger
        let peerDirectory = context.lookup((any PeerDirectory).self)
        peers = peerDirectory
        let validator: any KeyValidator
        if section.string("key_validation") == "thrift" {
            guard let factory = context.lookup((any ThriftKeyValidatorFactory).self) else {
                throw NodeStartError("gateway.key_validation = \"thrift\": this build offers no Thrift key-validation client")
            }
            do {
                validator = try factory.makeValidator(section: section)
            } catch {
                throw NodeStartError("gateway: the Thrift key-validation client cannot start: \(error)")
            }
        } else {
            // Without peer links (an assembly for inspection) every validation answers 503 at once.
            validator = RPCKeyValidator(peers: peers ?? NoPeers(), timeout: .milliseconds(section.integer("keymanager_timeout_ms") ?? 3000))
        }
        let throttling = GatewayThrottling(configuration: GatewayThrottling.configuration(section, gatewayID: context.nodeID),
                                           transport: PeerLeaseTransport(peers: peerDirectory ?? NoPeers(),
                                                                         timeout: .milliseconds(section.integer("throttle_lease_timeout_ms") ?? 1000)))
        let deployment = DeploymentHolder()
        let dataDirectory = context.lookup(NodeDataDirectory.self)
        store = dataDirectory.map { DeploymentStore(directory: $0.path) }
        let backendKey: P256SigningKey
        do {
            // Without a data directory (an assembly for inspection) the key lives as long as the process.
            backendKey = try dataDirectory.map { try BackendJWTIssuer.loadOrCreateKey(directory: $0.path) } ?? P256SigningKey.generate()
        } catch {
            throw NodeStartError("gateway: the backend JWT signing key: \(error)")
        }
        let backendJWT = BackendJWTIssuer(key: backendKey, headerName: section.string("backend_jwt_header") ?? "X-JWT-Assertion",
                                          issuer: section.string("backend_jwt_issuer") ?? BackendJWTIssuer.defaultIssuer,
                                          lifetimeSeconds: section.integer("backend_jwt_seconds") ?? 900)
        let feed = FeedStatus()
        self.feed = feed
        if let store {
            do {
                if let saved = try store.load() {
                    deployment.replace(saved)
                    feed.loadedFromDisk(at: saved.appliedAtUnixMs)
                    context.logger.notice("serving the deployment state saved at revision \(saved.revision) (\(saved.apis.count) APIs) until a publisher confirms it")
                }
            } catch {
                // A damaged file costs the saved state, not the start: the feed sends a snapshot.
                context.logger.error("ignoring the saved deployment state: \(error)")
            }
        }
        let cache = ValidationCache(maxLifetimeMs: Int64(section.integer("validation_cache_seconds") ?? 900) * 1000,
                                    negativeLifetimeMs: Int64(section.integer("invalid_token_cache_seconds") ?? 10) * 1000,
                                    maxEntries: section.integer("validation_cache_entries") ?? 1_000_000)
        let usage = UsageQueue(capacity: section.integer("usage_queue_capacity") ?? 65_536)
        gatewayID = context.nodeID
        let shipping = UsageShipping()
        self.shipping = shipping
        usageSettings = (section.integer("usage_batch_events") ?? 512, section.integer("usage_window_batches") ?? 64,
                         .milliseconds(section.integer("usage_ack_timeout_ms") ?? 15_000))
        if let directory = context.lookup(NodeDataDirectory.self) {
            do {
                let spool = try UsageSpool(directory: directory.path + "/usage-spool",
                                           maxBytes: Int64(section.integer("usage_spool_max_bytes") ?? 256 << 20),
                                           syncInterval: .milliseconds(section.integer("usage_spool_sync_ms") ?? 1000))
                let found = spool.recovery
                for problem in found.problems { context.logger.warning("usage spool: \(problem)") }
                if let reason = found.newEpochReason {
                    context.logger.notice("usage spool: \(reason): new batches go out under epoch \(found.epoch) from sequence \(found.nextSequence), so none is taken for one sent before")
                }
                if found.pendingBatches > 0 {
                    context.logger.notice("usage spool: \(found.pendingBatches) batches (\(found.pendingEvents) events) wait for analytics, epoch \(found.epoch), next sequence \(found.nextSequence)")
                }
                spool_ = spool
            } catch {
                throw NodeStartError("gateway: the usage spool under \(directory.path) cannot be opened: \(error)")
            }
        } else {
            spool_ = nil
        }
        spool = spool_
        let health = EndpointHealth()
        let revocations = RevocationStatus()
        self.revocations = revocations
        let metrics = GatewayMetrics { [feed] in
            let state = deployment.current
            let usageStats = usage.statistics
            let now = Clock.unixMs()
            return GatewayGauges(cacheEntries: cache.statistics.entries, usageQueued: usageStats.queued, usageShipped: usageStats.shipped,
                                 usageDiscarded: usageStats.discarded, usageShipping: shipping.snapshot, usageSpool: spool_?.statistics,
                                 revision: state.revision, feedConnected: feed.connected,
                                 stateAgeSeconds: Double(max(0, now - feed.confirmedAtUnixMs(fallback: state.appliedAtUnixMs))) / 1000,
                                 apis: state.apis.count, suspendedEndpoints: health.suspended(now: now).count,
                                 throttle: throttling.throttler.statistics, throttleRequests: throttling.requestCount,
                                 trafficManagers: peerDirectory?.transports(for: .trafficmanager).count ?? 0)
        }
        gatewayMetrics = metrics
        let settings = GatewaySettings(gatewayID: context.nodeID,
                                       endpointDefaults: EndpointDefaults(connectTimeoutMs: Int64(section.integer("backend_connect_timeout_ms") ?? 5000),
                                                                          readTimeoutMs: Int64(section.integer("backend_read_timeout_ms") ?? 60_000)),
                                       maxRequestBodyBytes: section.integer("max_request_body_bytes").flatMap { $0 > 0 ? $0 : nil },
                                       requestIDHeader: section.string("request_id_header") ?? "X-Request-ID")
        policy = GatewayPolicy(deployment: deployment, cache: cache, validator: validator, health: health, throttling: throttling, usage: usage,
                               metrics: metrics, settings: settings, jwt: JWTVerifier(), peers: peers,
                               backendJWT: backendJWT)
        limits = ProxyListenerLimits(maxHeaderBytes: section.integer("max_header_bytes") ?? 16 * 1024,
                                     maxHeaderCount: section.integer("max_header_count") ?? 100,
                                     maxURIBytes: section.integer("max_uri_bytes") ?? 8 * 1024,
                                     idleTimeoutMs: Int64(section.integer("idle_timeout_seconds") ?? 60) * 1000,
                                     headerTimeoutMs: Int64(section.integer("header_timeout_seconds") ?? 10) * 1000,
                                     maxIdleBackendConnections: section.integer("max_idle_backend_connections") ?? 64,
                                     backendTrustRootsFile: section.string("backend_ca_file"))
    }

    public var listeners: [ListenerDeclaration] {
        [ListenerDeclaration(name: "http", kind: .proxy(policy, limits), security: .plain, defaultEndpoint: "0.0.0.0:8280"),
         ListenerDeclaration(name: "https", kind: .proxy(policy, limits), security: .tls, defaultEndpoint: "0.0.0.0:8243",
                             applicationProtocols: ["http/1.1"])]
    }

    public var services: [any Service] {
        var services: [any Service] = [UsageShipper(queue: policy.usage, batchSize: usageSettings.batch, logger: logger, gatewayID: gatewayID, peers: peers,
                                                    spool: spool, shipping: shipping, window: usageSettings.window, ackTimeout: usageSettings.ackTimeout),
                                        LeaseExchanger(throttler: policy.throttling.throttler)]
        if let peers {
            services.append(ThrottleDecisionWatcher(peers: peers, throttler: policy.throttling.throttler, logger: logger))
            services.append(DeploymentWatcher(peers: peers, deployment: policy.deployment, cache: policy.cache, store: store, feed: feed, logger: logger))
            services.append(RevocationWatcher(peers: peers, cache: policy.cache, jwt: policy.jwt, status: revocations, logger: logger))
            services.append(SigningKeysWatcher(verifier: policy.jwt, peers: peers, logger: logger))
        }
        return services
    }

    public var methods: [RPCMethodHandler] {
        GatewayRPCService(policy: policy, feed: feed, revocations: revocations,
                          trafficManagers: peers?.transports(for: .trafficmanager).count ?? 0).methodHandlers
    }

    public var metricsSource: (any MetricsSource)? { gatewayMetrics }

    /// APIs in the deployment state being served.
    public var servedAPICount: Int { policy.deployment.current.apis.count }

    /// What the throttler did so far and the requests that reached the
    /// throttling step (for benchmarks: lease round trips per request).
    public var throttleStatistics: (statistics: LeaseThrottler.Statistics, requests: UInt64) {
        (policy.throttling.throttler.statistics, policy.throttling.requestCount)
    }

    /// Whether some API's prefix takes `path` (for benchmarks and tests).
    public func routes(_ path: String) -> Bool { policy.deployment.current.routes.route(Substring(path)) != nil }
}

/// The peers of a node that has none.
struct NoPeers: PeerDirectory {
    func transports(for role: Role) -> [any RPCClientTransport] { [] }
}
