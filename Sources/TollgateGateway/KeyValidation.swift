import Foundation
import RoleCore
import RPCCore
import Synchronization
import TollgateServices
public import TollgateProto

/// What the gateway asks a keymanager about a token and a matched resource.
public struct KeyValidationQuery: Sendable {
    public var context: String
    public var version: String
    /// The bearer token as presented (the Thrift protocol sends it; the RPC
    /// sends only its hash and id).
    public var token: String
    public var tokenHash: [UInt8]
    public var tokenID: [UInt8]
    public var requiredAuthLevel: ResourceAuthType
    public var clientDomain: String?
    public var matchingResource: String
    public var verb: HttpVerb

    public init(context: String, version: String, token: String, tokenHash: [UInt8], tokenID: [UInt8], requiredAuthLevel: ResourceAuthType,
                clientDomain: String?, matchingResource: String, verb: HttpVerb) {
        self.context = context
        self.version = version
        self.token = token
        self.tokenHash = tokenHash
        self.tokenID = tokenID
        self.requiredAuthLevel = requiredAuthLevel
        self.clientDomain = clientDomain
        self.matchingResource = matchingResource
        self.verb = verb
    }
}

/// Asks keymanagers to validate a token: over the RPC (the default) or over
/// WSO2's Thrift protocol. Throws ``KeyValidatorUnavailable`` when no
/// keymanager answers.
public protocol KeyValidator: Sendable {
    func validate(_ query: KeyValidationQuery) async throws -> KeyValidationInfo
    /// Keymanagers configured and how many answer now, for status.
    var connections: (configured: Int, healthy: Int) { get }
}

/// No keymanager could be asked.
public struct KeyValidatorUnavailable: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// `ValidateKey` over the node's RPC links to its `[peers] keymanager`
/// list: the last one that answered first, the others on failure; one that
/// failed is skipped for a short back-off so an outage costs no waiting.
final class RPCKeyValidator: KeyValidator {
    private let peers: any PeerDirectory
    private let timeout: Duration
    private let backoffMs: Int64
    private struct Health {
        var preferred = 0
        var failedUntil: [Int: Int64] = [:]
    }
    private let health = Mutex(Health())

    init(peers: any PeerDirectory, timeout: Duration, backoffMs: Int64 = 2000) {
        self.peers = peers
        self.timeout = timeout
        self.backoffMs = backoffMs
    }

    var connections: (configured: Int, healthy: Int) {
        let count = peers.transports(for: .keymanager).count
        let now = Clock.unixMs()
        let failing = health.withLock { $0.failedUntil.values.filter { $0 > now }.count }
        return (count, max(0, count - failing))
    }

    func validate(_ query: KeyValidationQuery) async throws -> KeyValidationInfo {
        let transports = peers.transports(for: .keymanager)
        guard !transports.isEmpty else { throw KeyValidatorUnavailable("no keymanager is configured under [peers]") }
        var request = ValidateKeyRequest()
        request.context = query.context
        request.version = query.version
        request.tokenHash = query.tokenHash
        request.tokenId = query.tokenID
        request.requiredAuthLevel = query.requiredAuthLevel
        request.clientDomain = query.clientDomain
        request.matchingResource = query.matchingResource
        request.verb = query.verb
        let now = Clock.unixMs()
        let (preferred, failedUntil) = health.withLock { ($0.preferred, $0.failedUntil) }
        // The preferred one first, then the rest in order; those backing off last and only if nothing else is left.
        let order = (0..<transports.count).map { (preferred + $0) % transports.count }
        let ready = order.filter { (failedUntil[$0] ?? 0) <= now }
        guard !ready.isEmpty else { throw KeyValidatorUnavailable("every keymanager failed within the last \(backoffMs) ms") }
        var lastError: (any Error)?
        for index in ready {
            do {
                let response = try await KeyManagerServiceClient(transports[index]).validateKey(request, options: CallOptions(timeout: timeout))
                health.withLock {
                    $0.preferred = index
                    $0.failedUntil[index] = nil
                }
                return response.info ?? KeyValidationInfo()
            } catch let error as RPCError where ![.unavailable, .deadlineExceeded, .cancelled, .unknown, .internal, .resourceExhausted].contains(error.code) {
                // The keymanager answered: the request itself was refused.
                throw error
            } catch {
                lastError = error
                let until = Clock.unixMs() + backoffMs
                health.withLock { $0.failedUntil[index] = until }
            }
        }
        throw KeyValidatorUnavailable("no keymanager answered: \(lastError.map { "\($0)" } ?? "unknown error")")
    }
}

enum Clock {
    static func unixMs() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }
}

/// Validation results by token, then by resource: hits cost one lock and two
/// lookups; a revocation drops every entry of its target at once.
///
/// Valid results live until the token expires (at most `maxLifetimeMs`);
/// tokens found invalid (900901) are remembered for `negativeLifetimeMs` so a
/// flood of bad tokens does not reach the keymanager.
final class ValidationCache: Sendable {
    struct ResourceKey: Hashable {
        let apiID: String
        let resource: String
        let verb: HttpVerb
        let viaDefault: Bool
    }

    struct Entry {
        let info: KeyValidationInfo
        let expiresAtUnixMs: Int64
    }

    private struct TokenEntries {
        var tokenHash: [UInt8]
        var results: [ResourceKey: Entry] = [:]
    }

    private struct State {
        var tokens: [String: TokenEntries] = [:]
        var byHash: [[UInt8]: String] = [:]
        var invalid: [String: Int64] = [:]
        var hits: UInt64 = 0
        var misses: UInt64 = 0
        var entries = 0
    }

    private let state = Mutex(State())
    let maxLifetimeMs: Int64
    let negativeLifetimeMs: Int64
    let maxEntries: Int

    init(maxLifetimeMs: Int64, negativeLifetimeMs: Int64, maxEntries: Int) {
        self.maxLifetimeMs = maxLifetimeMs
        self.negativeLifetimeMs = negativeLifetimeMs
        self.maxEntries = maxEntries
    }

    enum Lookup {
        case valid(KeyValidationInfo)
        case invalid
        case miss
    }

    func lookup(token: String, key: ResourceKey, now: Int64) -> Lookup {
        state.withLock { state in
            if let until = state.invalid[token] {
                if until > now {
                    state.hits += 1
                    return .invalid
                }
                state.invalid[token] = nil
            }
            guard let entry = state.tokens[token]?.results[key] else {
                state.misses += 1
                return .miss
            }
            guard entry.expiresAtUnixMs > now else {
                state.tokens[token]?.results[key] = nil
                state.entries -= 1
                state.misses += 1
                return .miss
            }
            state.hits += 1
            return .valid(entry.info)
        }
    }

    func store(token: String, tokenHash: [UInt8], key: ResourceKey, info: KeyValidationInfo, now: Int64) {
        state.withLock { state in
            if !info.authorized && info.validationStatus == 900901 {
                if state.invalid.count >= maxEntries { state.invalid.removeAll(keepingCapacity: true) }
                state.invalid[token] = now + negativeLifetimeMs
                return
            }
            var expiry = now + maxLifetimeMs
            if let tokenExpiry = info.expiresAtUnixMs { expiry = min(expiry, tokenExpiry) }
            guard expiry > now else { return }
            if state.entries >= maxEntries {
                // Full: start over rather than track recency on the hot path.
                state.tokens.removeAll(keepingCapacity: true)
                state.byHash.removeAll(keepingCapacity: true)
                state.entries = 0
            }
            if state.tokens[token] == nil {
                state.tokens[token] = TokenEntries(tokenHash: tokenHash)
                state.byHash[tokenHash] = token
            }
            if state.tokens[token]?.results.updateValue(Entry(info: info, expiresAtUnixMs: expiry), forKey: key) == nil {
                state.entries += 1
            }
        }
    }

    /// Drops what a revocation names; returns the entries dropped.
    @discardableResult
    func apply(_ revocation: TokenRevocation) -> Int {
        state.withLock { state in
            switch revocation.target {
            case .tokenHash(let hash):
                guard let token = state.byHash.removeValue(forKey: hash), let removed = state.tokens.removeValue(forKey: token) else { return 0 }
                state.entries -= removed.results.count
                return removed.results.count
            case .consumerKey(let consumerKey):
                return Self.remove(&state) { info, _ in info.consumerKey == consumerKey }
            case .applicationId(let id):
                return Self.remove(&state) { info, _ in info.applicationId == id }
            case .apiId(let id):
                return Self.remove(&state) { _, key in key.apiID == id }
            case nil:
                return 0
            }
        }
    }

    /// Drops results of an application for an API (a subscription changed).
    @discardableResult
    func dropSubscription(applicationID: String, apiID: String) -> Int {
        state.withLock { state in
            Self.remove(&state) { info, key in info.applicationId == applicationID && key.apiID == apiID }
        }
    }

    private static func remove(_ state: inout State, where doomed: (KeyValidationInfo, ResourceKey) -> Bool) -> Int {
        var removed = 0
        for (token, entries) in state.tokens {
            let keys = entries.results.filter { doomed($0.value.info, $0.key) }.map(\.key)
            guard !keys.isEmpty else { continue }
            removed += keys.count
            if keys.count == entries.results.count {
                state.tokens[token] = nil
                state.byHash[entries.tokenHash] = nil
            } else {
                for key in keys { state.tokens[token]?.results[key] = nil }
            }
        }
        state.entries -= removed
        return removed
    }

    /// Empties the valid-results cache, the invalid-token cache, or both.
    @discardableResult
    func flush(valid: Bool, invalid: Bool, tokenHashes: [[UInt8]] = []) -> Int {
        state.withLock { state in
            var removed = 0
            if !tokenHashes.isEmpty {
                for hash in tokenHashes {
                    guard let token = state.byHash[hash] else { continue }
                    if valid, let entries = state.tokens.removeValue(forKey: token) {
                        state.byHash[hash] = nil
                        removed += entries.results.count
                        state.entries -= entries.results.count
                    }
                    if invalid, state.invalid.removeValue(forKey: token) != nil { removed += 1 }
                }
                return removed
            }
            if valid {
                removed += state.entries
                state.tokens.removeAll()
                state.byHash.removeAll()
                state.entries = 0
            }
            if invalid {
                removed += state.invalid.count
                state.invalid.removeAll()
            }
            return removed
        }
    }

    var statistics: (entries: Int, invalid: Int, hits: UInt64, misses: UInt64) {
        state.withLock { ($0.entries, $0.invalid.count, $0.hits, $0.misses) }
    }
}
