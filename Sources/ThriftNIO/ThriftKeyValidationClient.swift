public import NIOCore
import NIOPosix
import OpenSSLKit
import Synchronization
public import ThriftCore
public import TollgateProto

/// A gateway's WSO2-compatible key validation (`KeyValidatorClientType =
/// ThriftClient`): `validateKey` over pooled persistent TLS connections to
/// a list of keymanagers, with a session from their HTTPS authenticator.
///
/// - Each keymanager has its own pool, made lazily, keeping at most
///   `maxIdlePerKeymanager` idle connections (the rest close when returned).
/// - One session per keymanager, shared by its connections, obtained once;
///   when a call answers "invalid session" the client authenticates again
///   and retries that call once (WSO2's recovery, without its leaked sockets).
/// - A keymanager that cannot be reached is skipped for `failedBackoff`, and
///   its calls go to the next one in the list.
/// - Certificates are checked against the trust roots and, unlike WSO2's
///   client, against the host name.
public final class ThriftKeyValidationClient: Sendable {
    public struct Endpoint: Sendable, Hashable {
        public var host: String
        public var thriftPort: Int
        /// e.g. `https://km.example.com:8743/thriftAuthenticator`
        public var authenticatorURL: String

        public init(host: String, thriftPort: Int = 10397, authenticatorURL: String) {
            self.host = host
            self.thriftPort = thriftPort
            self.authenticatorURL = authenticatorURL
        }
    }

    public struct Configuration: Sendable {
        public var keymanagers: [Endpoint]
        public var username: String
        public var password: String
        /// PEM file of the CA certificates keymanagers are checked against.
        public var trustRootsFile: String?
        /// Whether a keymanager's certificate must name the host connected to.
        public var verifyHostname = true
        /// How long a call or an authentication may wait for its answer
        /// (WSO2's `ThriftClientConnectionTimeOut`).
        public var readTimeout: Duration = .seconds(10)
        public var connectTimeout: Duration = .seconds(5)
        /// Idle connections kept per keymanager (WSO2's `ConnectionPool/MaxIdle`).
        public var maxIdlePerKeymanager = 50
        /// How long an unreachable keymanager is passed over.
        public var failedBackoff: Duration = .seconds(5)

        public init(keymanagers: [Endpoint], username: String, password: String, trustRootsFile: String?) {
            self.keymanagers = keymanagers
            self.username = username
            self.password = password
            self.trustRootsFile = trustRootsFile
        }
    }

    /// Why a validation got no answer from any keymanager.
    public struct ValidationError: Error, Sendable, CustomStringConvertible {
        public let description: String
    }

    let configuration: Configuration
    private let pools: [KeymanagerPool]
    private let group: any EventLoopGroup
    /// The group's loops, to tell whether a caller runs on one of them.
    private let loops: [any EventLoop]
    private let tls: TLSContext

    public init(configuration: Configuration, eventLoopGroup: any EventLoopGroup) throws {
        guard !configuration.keymanagers.isEmpty else { throw ValidationError(description: "no keymanager configured") }
        var pools: [KeymanagerPool] = []
        for endpoint in configuration.keymanagers {
            guard let location = HTTPSLocation(endpoint.authenticatorURL) else {
                throw ValidationError(description: "authenticator URL \(endpoint.authenticatorURL) is not https://host[:port]/path")
            }
            pools.append(KeymanagerPool(endpoint: endpoint, authenticator: location))
        }
        self.configuration = configuration
        self.pools = pools
        self.group = eventLoopGroup
        self.loops = Array(eventLoopGroup.makeIterator())
        self.tls = try TLSContext(configuration: .client(trustRootsFile: configuration.trustRootsFile))
    }

    /// WSO2's `validateKey`: `context` and `version` of the matched API,
    /// the bearer token, the resource's auth type (`Any`, `Application`,
    /// `Application_User`), the Referer, the matched URI template and the
    /// verb. Refusals are results (`authorized` false and a status code);
    /// only "no keymanager answered" throws.
    public func validateKey(context: String, version: String, accessToken: String, requiredAuthenticationLevel: String, clientDomain: String?,
                            matchingResource: String, httpVerb: String) async throws -> KeyValidationInfo {
        let method = KeyValidationService.validateKey
        let dto = try await call(method) { session in
            ValidateKeyArguments(context: context, version: version, accessToken: accessToken, sessionId: session,
                                 requiredAuthenticationLevel: requiredAuthenticationLevel, clientDomain: clientDomain,
                                 matchingResource: matchingResource, httpVerb: httpVerb).binaryCall(sequenceID: 0)
        } decode: { bytes throws(ThriftDecodingError) in
            // Straight into the DTO, unknown fields skipped.
            try ThriftReply<APIKeyValidationInfoDTO>.decodeBinary(bytes[...], method: method).reply
        }
        return dto.keyValidationInfo
    }

    /// WSO2's `getAllURITemplates` for an API: one entry per template and verb.
    public func uriTemplates(context: String, version: String) async throws -> [URITemplateDTO] {
        let method = KeyValidationService.getAllURITemplates
        return try await call(method) { session in
            ThriftProtocol.binary.encode(ThriftMessage(name: method, type: .call, sequenceID: 0,
                                                       body: GetAllURITemplatesArguments(context: context, apiVersion: version, sessionId: session).thrift))
        } decode: { bytes throws(ThriftDecodingError) -> ThriftReply<[URITemplateDTO]> in
            let reply = try ThriftProtocol.binary.decode(bytes).message
            if reply.type == .exception { return .exception(ThriftApplicationException(thrift: reply.body)) }
            do throws(ThriftApplicationException) {
                return .result(try ThriftResult(thrift: reply.body, method: method) { value -> [URITemplateDTO]? in
                    if case .list(_, let elements) = value {
                        elements.compactMap { if case .structure(let value) = $0 { URITemplateDTO(thrift: value) } else { nil } }
                    } else {
                        nil
                    }
                })
            } catch {
                return .exception(error)
            }
        }
    }

    /// Closes every pooled connection; calls after it fail.
    public func shutdown() async {
        for pool in pools { pool.shutdown() }
    }

    /// Connections open now (idle and in use), for tests and metrics.
    public var openConnections: Int { pools.reduce(0) { $0 + $1.openCount } }

    // MARK: Failover

    private func call<Success: Sendable & Hashable>(_ method: String, arguments: @Sendable (String) -> [UInt8],
                                                    decode: @Sendable ([UInt8]) throws(ThriftDecodingError) -> ThriftReply<Success>) async throws -> Success {
        var problems: [String] = []
        // Those not backing off, in list order; then those that are, the
        // soonest to recover first (a call never fails while any is untried).
        let now = ContinuousClock.now
        let ready = pools.filter { !$0.isBackingOff(at: now) }
        let waiting = pools.filter { $0.isBackingOff(at: now) }.sorted { $0.retryAt < $1.retryAt }
        for pool in ready + waiting {
            do {
                return try await call(method, on: pool, arguments: arguments, decode: decode)
            } catch let error as KeymanagerUnavailable {
                pool.markFailed(backoff: configuration.failedBackoff)
                problems.append("\(pool.endpoint.host):\(pool.endpoint.thriftPort): \(error.reason)")
            }
        }
        throw ValidationError(description: "no keymanager answered \(method): " + problems.joined(separator: "; "))
    }

    struct KeymanagerUnavailable: Error {
        let reason: String
    }

    /// One call on one keymanager: a session (authenticating if needed), a
    /// pooled connection (a fresh one if a pooled one turns out closed),
    /// and one retry after re-authenticating when the session was refused.
    private func call<Success: Sendable & Hashable>(_ method: String, on pool: KeymanagerPool, arguments: @Sendable (String) -> [UInt8],
                                                    decode: @Sendable ([UInt8]) throws(ThriftDecodingError) -> ThriftReply<Success>) async throws -> Success {
        var session = try await self.session(for: pool, replacing: nil)
        var reauthenticated = false
        while true {
            let bytes = try await exchange(method, arguments(session), on: pool)
            let result: ThriftResult<Success>
            do {
                switch try decode(bytes) {
                case .result(let value): result = value
                case .exception(let exception): throw KeymanagerUnavailable(reason: "\(exception)")
                }
            } catch let error as ThriftDecodingError {
                throw KeymanagerUnavailable(reason: "an unreadable reply: \(error)")
            }
            switch result {
            case .success(let value):
                pool.markHealthy()
                return value
            case .declared(let id, let message):
                // Any declared exception: log in again and retry once, as WSO2 does.
                guard !reauthenticated else { throw KeymanagerUnavailable(reason: "\(method) raised exception \(id): \(message)") }
                reauthenticated = true
                session = try await self.session(for: pool, replacing: session)
            }
        }
    }

    /// Sends one call on a pooled connection; a connection that fails is
    /// closed, and a call that failed on a reused one is sent once more on a
    /// new one (the keymanager may have closed it while it sat idle).
    private func exchange(_ method: String, _ message: [UInt8], on pool: KeymanagerPool) async throws -> [UInt8] {
        var attempts = 0
        while true {
            attempts += 1
            let (connection, reused) = try await borrow(from: pool)
            do {
                let reply = try await connection.call(method, message, timeout: TimeAmount(configuration.readTimeout))
                pool.giveBack(connection, maxIdle: configuration.maxIdlePerKeymanager)
                return reply
            } catch {
                pool.discard(connection)
                guard reused, attempts < 2 else { throw KeymanagerUnavailable(reason: "\(error)") }
            }
        }
    }

    /// An idle connection, one on the caller's event loop first (a caller
    /// running on a loop, as the gateway's request tasks do, then talks to
    /// it without a thread hop either way); or a new one, on that loop.
    private func borrow(from pool: KeymanagerPool) async throws -> (ThriftConnection, reused: Bool) {
        let callerLoop = MultiThreadedEventLoopGroup.currentEventLoop.flatMap { current in loops.first { $0 === current } }
        if let idle = pool.takeIdle(preferring: callerLoop) { return (idle, true) }
        let endpoint = pool.endpoint
        let connection: ThriftConnection
        do {
            connection = try await ThriftConnection.connect(host: endpoint.host, port: endpoint.thriftPort,
                                                            serverHostname: configuration.verifyHostname ? endpoint.host : nil, tls: tls,
                                                            connectTimeout: TimeAmount(configuration.connectTimeout),
                                                            on: callerLoop ?? group.next())
        } catch {
            throw KeymanagerUnavailable(reason: "connecting: \(error)")
        }
        guard pool.adopt(connection) else {
            connection.close()
            throw KeymanagerUnavailable(reason: "the client is shut down")
        }
        return (connection, false)
    }

    /// The pool's session: the current one, or a new one when there is none
    /// or `replacing` is the one just refused. Concurrent callers share one
    /// authentication.
    private func session(for pool: KeymanagerPool, replacing refused: String?) async throws -> String {
        let lookup = pool.session(replacing: refused) { [configuration, tls, group] in
            let timeout = TimeAmount(configuration.readTimeout)
            do throws(AuthenticatorClient.Failure) {
                return .success(try await AuthenticatorClient.authenticate(at: pool.authenticator, username: configuration.username, password: configuration.password,
                                                                           tls: tls, verifyHostname: configuration.verifyHostname, timeout: timeout, group: group))
            } catch {
                switch error {
                case .refused(let message): return .failure(KeymanagerUnavailable(reason: "authentication refused: \(message)"))
                case .transport(let reason): return .failure(KeymanagerUnavailable(reason: "authenticating: \(reason)"))
                }
            }
        }
        switch lookup {
        case .ready(let session): return session
        case .pending(let task): return try await task.value.get()
        }
    }
}

/// One keymanager's connections, session and health.
final class KeymanagerPool: Sendable {
    typealias SessionTask = Task<Result<String, ThriftKeyValidationClient.KeymanagerUnavailable>, Never>

    private enum SessionState {
        case none
        case authenticating(SessionTask, generation: UInt64)
        case ready(String)
    }

    private struct State {
        var idle: [ThriftConnection] = []
        var open: [ObjectIdentifier: ThriftConnection] = [:]
        var session = SessionState.none
        var generation: UInt64 = 0
        var retryAt: ContinuousClock.Instant?
        var shutDown = false
    }

    let endpoint: ThriftKeyValidationClient.Endpoint
    let authenticator: HTTPSLocation
    private let state = Mutex(State())

    init(endpoint: ThriftKeyValidationClient.Endpoint, authenticator: HTTPSLocation) {
        self.endpoint = endpoint
        self.authenticator = authenticator
    }

    func isBackingOff(at now: ContinuousClock.Instant) -> Bool { state.withLock { $0.retryAt.map { $0 > now } ?? false } }
    var retryAt: ContinuousClock.Instant { state.withLock { $0.retryAt ?? .now } }
    var openCount: Int { state.withLock { $0.open.count } }

    func markFailed(backoff: Duration) {
        let closing = state.withLock { state -> [ThriftConnection] in
            state.retryAt = .now + backoff
            // Its idle connections are suspect too.
            let idle = state.idle
            state.idle = []
            for connection in idle { state.open[ObjectIdentifier(connection)] = nil }
            return idle
        }
        for connection in closing { connection.close() }
    }

    func markHealthy() { state.withLock { if $0.retryAt != nil { $0.retryAt = nil } } }

    /// The most recently returned idle connection on `loop`, else the most
    /// recently returned one; closed ones found are dropped.
    func takeIdle(preferring loop: (any EventLoop)?) -> ThriftConnection? {
        let (connection, stale) = state.withLock { state -> (ThriftConnection?, [ThriftConnection]) in
            var stale: [ThriftConnection] = []
            if let loop, let index = state.idle.lastIndex(where: { $0.channel.eventLoop === loop && $0.isActive }) {
                return (state.idle.remove(at: index), stale)
            }
            while let candidate = state.idle.popLast() {
                if candidate.isActive { return (candidate, stale) }
                state.open[ObjectIdentifier(candidate)] = nil
                stale.append(candidate)
            }
            return (nil, stale)
        }
        for connection in stale { connection.close() }
        return connection
    }

    /// Counts a new connection as open; false once shut down.
    func adopt(_ connection: ThriftConnection) -> Bool {
        state.withLock { state in
            guard !state.shutDown else { return false }
            state.open[ObjectIdentifier(connection)] = connection
            return true
        }
    }

    func giveBack(_ connection: ThriftConnection, maxIdle: Int) {
        let keep = state.withLock { state -> Bool in
            guard !state.shutDown, state.idle.count < maxIdle, connection.isActive else {
                state.open[ObjectIdentifier(connection)] = nil
                return false
            }
            state.idle.append(connection)
            return true
        }
        if !keep { connection.close() }
    }

    func discard(_ connection: ThriftConnection) {
        state.withLock { _ = $0.open.removeValue(forKey: ObjectIdentifier(connection)) }
        connection.close()
    }

    enum SessionLookup {
        case ready(String)
        case pending(SessionTask)
    }

    /// The session to use: the current one, unless it is `refused` (then a
    /// new authentication starts, once for all callers), or the
    /// authentication in progress.
    func session(replacing refused: String?,
                 authenticate: @escaping @Sendable () async -> Result<String, ThriftKeyValidationClient.KeymanagerUnavailable>) -> SessionLookup {
        state.withLock { state in
            switch state.session {
            case .ready(let session) where session != refused:
                return .ready(session)
            case .authenticating(let task, _):
                return .pending(task)
            default:
                state.generation += 1
                let generation = state.generation
                let task = SessionTask { [self] in
                    let result = await authenticate()
                    finishAuthentication(generation, result)
                    return result
                }
                state.session = .authenticating(task, generation: generation)
                return .pending(task)
            }
        }
    }

    /// Keeps the new session, or forgets a failed attempt so the next call tries again.
    private func finishAuthentication(_ generation: UInt64, _ result: Result<String, ThriftKeyValidationClient.KeymanagerUnavailable>) {
        state.withLock { state in
            guard case .authenticating(_, let current) = state.session, current == generation else { return }
            switch result {
            case .success(let session): state.session = .ready(session)
            case .failure: state.session = .none
            }
        }
    }

    func shutdown() {
        let connections = state.withLock { state -> [ThriftConnection] in
            state.shutDown = true
            state.idle = []
            let open = Array(state.open.values)
            state.open = [:]
            return open
        }
        for connection in connections { connection.close() }
    }
}

