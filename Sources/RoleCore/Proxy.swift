/// What a reverse-proxy listener (the gateway's API traffic) asks role logic
/// about each request, and what role logic answers. The listener owns the
/// bytes: it streams request and response bodies between the client and the
/// backend with back-pressure, on the client connection's event loop, and
/// never holds a whole body. Role logic owns the decisions: which API and
/// resource, whether the caller may pass, which backend, which headers.
///
/// ``ProxyPolicy/decide(_:)`` runs on the connection's event loop, so it must
/// not block; what needs the network (a first-time token validation) is
/// returned as ``ProxyDecision/deferred(_:)`` and resumed there afterwards.

/// A request's head as the proxy listener received it.
public struct ProxyRequestHead: Sendable {
    public var method: String
    /// The request target as sent: path and query.
    public var uri: String
    /// HTTP/1.0 or 1.1, as `(major, minor)`.
    public var versionMajor: Int
    public var versionMinor: Int
    /// Header fields in arrival order; names as sent.
    public var headers: [(name: String, value: String)]
    /// The peer's IP address (no port).
    public var clientAddress: String
    public var isSecure: Bool
    /// The `Host` the client asked for.
    public var host: String?

    public init(method: String, uri: String, versionMajor: Int = 1, versionMinor: Int = 1, headers: [(name: String, value: String)],
                clientAddress: String, isSecure: Bool, host: String? = nil) {
        self.method = method
        self.uri = uri
        self.versionMajor = versionMajor
        self.versionMinor = versionMinor
        self.headers = headers
        self.clientAddress = clientAddress
        self.isSecure = isSecure
        self.host = host
    }

    /// The first value of a header, matched case-insensitively.
    public func header(_ name: String) -> String? {
        for field in headers where field.name.utf8.count == name.utf8.count && field.name.caseInsensitiveEquals(name) { return field.value }
        return nil
    }
}

/// One backend a request may go to.
public struct BackendTarget: Sendable, Hashable, CustomStringConvertible {
    public var isSecure: Bool
    public var host: String
    public var port: Int
    /// Prepended to the request path (the endpoint URL's path, without a trailing slash).
    public var basePath: String
    public var connectTimeoutMs: Int64
    /// Longest wait for the response head, and between body reads.
    public var readTimeoutMs: Int64

    public init(isSecure: Bool, host: String, port: Int, basePath: String, connectTimeoutMs: Int64, readTimeoutMs: Int64) {
        self.isSecure = isSecure
        self.host = host
        self.port = port
        self.basePath = basePath
        self.connectTimeoutMs = connectTimeoutMs
        self.readTimeoutMs = readTimeoutMs
    }

    public var description: String { "\(isSecure ? "https" : "http")://\(host):\(port)\(basePath)" }
}

/// Why a backend did not answer.
public enum BackendFailure: String, Sendable, Hashable {
    case connectRefused = "connect refused"
    case connectTimeout = "connect timeout"
    case readTimeout = "read timeout"
    /// The connection closed before the response ended.
    case connectionClosed = "connection closed"
    case tlsHandshake = "TLS handshake failed"
}

/// What happened to one proxied request, reported once when it is over.
public struct ProxyOutcome: Sendable {
    /// The status sent to the client (0 when the client went away first).
    public var status: Int
    public var requestBodyBytes: UInt64
    public var responseBodyBytes: UInt64
    /// From the request's head to the response's end, and the part spent
    /// waiting for the backend's response head.
    public var totalNanoseconds: UInt64
    public var backendNanoseconds: UInt64
    /// The backend that answered, if one did.
    public var target: BackendTarget?
    /// Backends tried and how each failed, in order.
    public var failures: [(target: BackendTarget, failure: BackendFailure)]

    public init(status: Int = 0, requestBodyBytes: UInt64 = 0, responseBodyBytes: UInt64 = 0, totalNanoseconds: UInt64 = 0,
                backendNanoseconds: UInt64 = 0, target: BackendTarget? = nil, failures: [(target: BackendTarget, failure: BackendFailure)] = []) {
        self.status = status
        self.requestBodyBytes = requestBodyBytes
        self.responseBodyBytes = responseBodyBytes
        self.totalNanoseconds = totalNanoseconds
        self.backendNanoseconds = backendNanoseconds
        self.target = target
        self.failures = failures
    }
}

/// Where and how to forward a request.
public struct ForwardPlan: Sendable {
    /// Tried in order: the next one only when connecting to the previous
    /// failed (nothing of the request was sent yet).
    public var candidates: [BackendTarget]
    /// The request target to send, without the backend's base path.
    public var path: String
    /// Every header field to send upstream (hop-by-hop fields already removed,
    /// forwarding fields added); the listener adds only framing.
    public var headers: [(name: String, value: String)]
    /// Added to the client's response (request id, CORS, rate-limit fields).
    public var responseHeaders: [(name: String, value: String)]
    /// A request body larger than this is refused with 413; nil for no limit.
    public var maxRequestBodyBytes: Int?
    /// Answer for when no candidate answers (every one failed to connect).
    public var unavailable: @Sendable ([(target: BackendTarget, failure: BackendFailure)]) -> HTTPResponse
    /// Called once, on the event loop, when the exchange is over.
    public var finished: @Sendable (ProxyOutcome) -> Void

    public init(candidates: [BackendTarget], path: String, headers: [(name: String, value: String)],
                responseHeaders: [(name: String, value: String)] = [], maxRequestBodyBytes: Int? = nil,
                unavailable: @escaping @Sendable ([(target: BackendTarget, failure: BackendFailure)]) -> HTTPResponse,
                finished: @escaping @Sendable (ProxyOutcome) -> Void) {
        self.candidates = candidates
        self.path = path
        self.headers = headers
        self.responseHeaders = responseHeaders
        self.maxRequestBodyBytes = maxRequestBodyBytes
        self.unavailable = unavailable
        self.finished = finished
    }
}

/// Role logic's answer to a request head.
public enum ProxyDecision: Sendable {
    /// Answer at once (a fault, a CORS preflight); the request body is read and dropped.
    case respond(HTTPResponse, finished: @Sendable (ProxyOutcome) -> Void)
    /// Stream the request to a backend and its response back.
    case forward(ForwardPlan)
    /// Decide after some asynchronous work; the listener stops reading the
    /// request meanwhile.
    case deferred(@Sendable () async -> ProxyDecision)
}

/// Decides what happens to each request of a proxy listener.
public protocol ProxyPolicy: Sendable {
    /// Called on the connection's event loop: must not block.
    func decide(_ head: ProxyRequestHead) -> ProxyDecision
}

/// Limits of a proxy listener.
public struct ProxyListenerLimits: Sendable, Hashable {
    /// Request line plus header fields; larger is 431.
    public var maxHeaderBytes: Int
    /// Header fields; more is 431.
    public var maxHeaderCount: Int
    /// Request target length; longer is 414.
    public var maxURIBytes: Int
    /// A keep-alive connection with no request in progress closes after this.
    public var idleTimeoutMs: Int64
    /// From a request's first byte to the end of its head; slower is 408
    /// (slow-header clients hold nothing for long).
    public var headerTimeoutMs: Int64
    /// Idle upstream connections kept per backend on each event loop.
    public var maxIdleBackendConnections: Int
    /// The CA bundle HTTPS backends are verified against; nil for the system's.
    public var backendTrustRootsFile: String?

    public init(maxHeaderBytes: Int = 16 * 1024, maxHeaderCount: Int = 100, maxURIBytes: Int = 8 * 1024, idleTimeoutMs: Int64 = 60_000,
                headerTimeoutMs: Int64 = 10_000, maxIdleBackendConnections: Int = 64, backendTrustRootsFile: String? = nil) {
        self.maxHeaderBytes = maxHeaderBytes
        self.maxHeaderCount = maxHeaderCount
        self.maxURIBytes = maxURIBytes
        self.idleTimeoutMs = idleTimeoutMs
        self.headerTimeoutMs = headerTimeoutMs
        self.maxIdleBackendConnections = maxIdleBackendConnections
        self.backendTrustRootsFile = backendTrustRootsFile
    }
}
