import Foundation
import Logging
import OpenSSLKit
import RoleCore
import RPCCore
import ServiceLifecycle
import Synchronization
import TollgateProto
import TollgateServices
import TollgateStorage

/// JWT access tokens checked on the gateway, with no keymanager call: the
/// ES256 signature against the keymanagers' published keys
/// (`ListSigningKeys`), expiry, and the application's subscriptions the
/// token carries (docs/gateway.md, "JWT access tokens").
///
/// A token is trusted alone only when the gateway has seen every revocation
/// since it was issued: revocations of its hash are remembered, and a
/// revocation naming its application or consumer key after its `iat` (a
/// subscription blocked, a secret regenerated) sends it to a keymanager,
/// which knows the current state. So does a token issued before the
/// revocation feed connected (after a gateway start, or a feed reset).
final class JWTVerifier: Sendable {
    private struct State {
        var keys: [String: P256PublicKey] = [:]
        var keysFetchedAtMs: Int64 = 0
        /// Revocations seen since `trustFromMs`, or never trust (nil).
        var trustFromMs: Int64?
        var revokedHashes: [[UInt8]: Int64] = [:]
        var revokedConsumerKeys: [String: Int64] = [:]
        var revokedApplications: [String: Int64] = [:]
    }

    private let state = Mutex(State())
    /// Revoked JWT hashes kept this long (longer than any access token lives).
    let revokedRetentionMs: Int64 = 48 * 3_600_000
    let maxRevocations = 1_000_000

    // MARK: Keys

    func replaceKeys(_ keys: [SigningPublicKey], at now: Int64) {
        var made: [String: P256PublicKey] = [:]
        for key in keys { made[key.kid] = try? P256PublicKey(x: key.x, y: key.y) }
        state.withLock {
            $0.keys = made
            $0.keysFetchedAtMs = now
        }
    }

    var keyCount: Int { state.withLock { $0.keys.count } }
    var keysFetchedAtMs: Int64 { state.withLock { $0.keysFetchedAtMs } }

    // MARK: Revocations

    /// The revocation feed is connected and complete from `now` on.
    func trustFrom(_ now: Int64) {
        state.withLock { state in
            if state.trustFromMs == nil { state.trustFromMs = now }
        }
    }

    /// The feed could not resume: nothing issued before now is trusted alone.
    func resetTrust(_ now: Int64) {
        state.withLock { $0.trustFromMs = now }
    }

    func note(_ revocation: TokenRevocation, at now: Int64) {
        state.withLock { state in
            if state.revokedHashes.count + state.revokedConsumerKeys.count + state.revokedApplications.count >= maxRevocations {
                // Full: trust nothing older than now rather than forget a revocation.
                state.revokedHashes.removeAll()
                state.revokedConsumerKeys.removeAll()
                state.revokedApplications.removeAll()
                state.trustFromMs = now
            }
            let at = revocation.revokedAtUnixMs > 0 ? revocation.revokedAtUnixMs : now
            switch revocation.target {
            case .tokenHash(let hash): state.revokedHashes[hash] = now
            case .consumerKey(let key): state.revokedConsumerKeys[key] = max(state.revokedConsumerKeys[key] ?? 0, at)
            case .applicationId(let id): state.revokedApplications[id] = max(state.revokedApplications[id] ?? 0, at)
            case .apiId, nil: break
            }
            if state.revokedHashes.count > 1024 {
                state.revokedHashes = state.revokedHashes.filter { now - $0.value < revokedRetentionMs }
            }
        }
    }

    // MARK: Checking

    enum Verdict {
        /// Authorized or refused here, with the result to cache.
        case decided(KeyValidationInfo)
        /// Ask a keymanager (issued before the gateway saw every revocation since, say).
        case askKeymanager
        /// Signed by a key this gateway does not know: fetch the keys and try again.
        case unknownKey
    }

    struct Claims: Decodable {
        struct Application: Decodable {
            let id: String
            let name: String
            let owner: String
            let tenant: String
            let tier: String
            let limit: Limit?
        }
        struct Limit: Decodable {
            let unit: Int32
            let unit_time: UInt32
            let request_count: UInt64?
            let bandwidth_bytes: UInt64?
        }
        struct Subscription: Decodable {
            let api_id: String
            let context: String
            let version: String
            let tenant: String
            let name: String?
            let publisher: String?
            let tier: String
            let status: Int32
            let limit: Limit?
            let stop_on_quota: Bool?
            let spike_limit: UInt32?
            let spike_unit: Int32?
        }
        let sub: String?
        let client_id: String?
        let aut: String?
        let scope: String?
        let iat: Int64?
        let nbf: Int64?
        let exp: Int64?
        let jti: String?
        let keytype: String?
        let application: Application?
        let allowed_domains: [String]?
        let subscribedAPIs: [Subscription]?
    }

    struct Header: Decodable {
        let alg: String
        let kid: String?
    }

    /// Checks a JWT for a call to `api` at `resource`.
    func verify(_ token: String, api: Api, resource: ResolvedResource, now: Int64) -> Verdict {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let headerBytes = Base64URL.decode(parts[0]), let payloadBytes = Base64URL.decode(parts[1]),
              let signature = Base64URL.decode(parts[2]),
              let header = try? JSONDecoder().decode(Header.self, from: Data(headerBytes)), header.alg == "ES256", let kid = header.kid else {
            return .decided(Self.refused(900901))
        }
        let (key, trustFrom) = state.withLock { ($0.keys[kid], $0.trustFromMs) }
        guard let key else { return .unknownKey }
        let signingInput = Array(token.utf8.prefix(parts[0].utf8.count + 1 + parts[1].utf8.count))
        guard key.verify(signature, of: signingInput), let claims = try? JSONDecoder().decode(Claims.self, from: Data(payloadBytes)) else {
            return .decided(Self.refused(900901))
        }
        let skewMs: Int64 = 30_000
        guard let exp = claims.exp, exp * 1000 + skewMs > now, (claims.nbf ?? 0) * 1000 <= now + skewMs, let iat = claims.iat else {
            return .decided(Self.refused(900901))
        }
        // Tokens without the authorization claims (issued by an older keymanager) and those issued before the
        // gateway saw every revocation are the keymanager's to judge.
        // The issue time to the millisecond: a token's id begins with it (`iat` has whole seconds only, which
        // would make a revocation in the same second as the issue look later than it).
        let issuedMs = claims.jti.flatMap(Base64URL.decode).flatMap { id in
            id.count == 16 ? id.prefix(8).reduce(Int64(0)) { $0 << 8 | Int64($1) } : nil
        } ?? iat * 1000
        guard let application = claims.application, let subscriptions = claims.subscribedAPIs, let trustFrom, issuedMs >= trustFrom else {
            return .askKeymanager
        }
        let revoked: (hash: Bool, later: Bool) = state.withLock { state in
            let hashRevoked = !state.revokedHashes.isEmpty && state.revokedHashes[SecretHasher.tokenHash(token)] != nil
            let consumerLater = claims.client_id.flatMap { state.revokedConsumerKeys[$0] }.map { $0 >= issuedMs } ?? false
            let applicationLater = state.revokedApplications[application.id].map { $0 >= issuedMs } ?? false
            return (hashRevoked, consumerLater || applicationLater)
        }
        if revoked.hash { return .decided(Self.refused(900901)) }
        if revoked.later { return .askKeymanager }
        // A domain-restricted key is the keymanager's rule to apply.
        if let domains = claims.allowed_domains, domains.contains(where: { !$0.isEmpty && $0.uppercased() != "ALL" }) { return .askKeymanager }

        switch resource.authType {
        case .application where claims.aut != "APPLICATION", .applicationUser where claims.aut != "APPLICATION_USER":
            return .decided(Self.refused(900905))
        default:
            break
        }
        guard let subscription = subscriptions.first(where: { $0.api_id == api.id || ($0.tenant == api.tenantDomain && $0.context == api.context && $0.version == api.version) }) else {
            return .decided(Self.refused(900908))
        }
        let sandbox = claims.keytype == "SANDBOX"
        switch SubscriptionStatus(rawValue: subscription.status) {
        case .blocked: return .decided(Self.refused(900907))
        case .prodOnlyBlocked where !sandbox: return .decided(Self.refused(900907))
        case .onHold, .rejected: return .decided(Self.refused(900909))
        default: break
        }
        let scopes = (claims.scope ?? "").split(separator: " ").map(String.init)
        if !resource.scope.isEmpty, !scopes.contains(resource.scope) { return .decided(Self.refused(900910)) }

        var info = KeyValidationInfo(authorized: true, validationStatus: 0, keyType: sandbox ? .sandbox : .production)
        info.subscriber = application.owner
        info.subscriberTenantDomain = application.tenant
        info.applicationId = application.id
        info.applicationName = application.name
        info.consumerKey = claims.client_id ?? ""
        info.applicationPolicy = application.tier
        info.subscriptionPolicy = subscription.tier
        info.apiPolicy = api.apiPolicy
        info.spikeArrestLimit = subscription.spike_limit ?? 0
        info.spikeArrestUnit = TimeUnit(rawValue: subscription.spike_unit ?? 0)
        info.stopOnQuotaReach = subscription.stop_on_quota ?? true
        info.subscriptionLimit = subscription.limit.map(Self.limit)
        info.applicationLimit = application.limit.map(Self.limit)
        info.contentAware = subscription.limit?.bandwidth_bytes != nil || application.limit?.bandwidth_bytes != nil
        info.throttlingData = ["api_level_throttling_key"]
        info.apiName = subscription.name ?? api.name
        info.apiPublisher = subscription.publisher ?? api.provider
        info.endUserName = claims.sub ?? ""
        info.userType = switch claims.aut {
        case "APPLICATION": .application
        case "APPLICATION_USER": .applicationUser
        default: .unspecified
        }
        info.scopes = scopes
        info.issuedAtUnixMs = iat * 1000
        info.expiresAtUnixMs = exp * 1000
        return .decided(info)
    }

    static func limit(_ claim: Claims.Limit) -> ThrottleLimit {
        var limit = ThrottleLimit()
        limit.timeUnit = TimeUnit(rawValue: claim.unit)
        limit.unitTime = claim.unit_time
        if let count = claim.request_count { limit.quota = .requestCount(count) }
        if let bytes = claim.bandwidth_bytes { limit.quota = .bandwidthBytes(bytes) }
        return limit
    }

    static func refused(_ status: Int32) -> KeyValidationInfo {
        KeyValidationInfo(authorized: false, validationStatus: status)
    }

    /// Fetches the keymanagers' signing keys (the first that answers).
    func refresh(peers: any PeerDirectory, now: Int64) async -> Bool {
        for transport in peers.transports(for: .keymanager) {
            if let response = try? await KeyManagerServiceClient(transport).listSigningKeys(ListSigningKeysRequest(),
                                                                                             options: CallOptions(timeout: .seconds(3))) {
                replaceKeys(response.keys, at: now)
                return true
            }
        }
        return false
    }
}

/// Keeps the signing keys current: fetched at start (retried until it
/// works) and every minute, so a rotated key is known before its first
/// token arrives and a retired one stops verifying.
struct SigningKeysWatcher: Service {
    let verifier: JWTVerifier
    let peers: any PeerDirectory
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown {
            var failures = 0
            while !Task.isCancelled {
                if await verifier.refresh(peers: peers, now: Clock.unixMs()) {
                    failures = 0
                    try? await Task.sleep(for: .seconds(60))
                } else {
                    failures += 1
                    try? await Task.sleep(for: .milliseconds(min(10_000, 250 << min(failures, 6))))
                }
            }
        }
    }
}

/// A JWS compact serialization: three base64url parts.
enum JWTShape {
    static func matches(_ token: String) -> Bool {
        var dots = 0
        for byte in token.utf8 where byte == UInt8(ascii: ".") { dots += 1 }
        return dots == 2
    }
}
