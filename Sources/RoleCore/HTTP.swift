/// An HTTP/1.1 request as a listener hands it to role logic: head and a body
/// read in full (up to the listener's limit). Role logic never sees NIO.
public struct HTTPRequest: Sendable {
    public var method: String
    /// The request target as sent: path and query.
    public var uri: String
    /// Header fields in arrival order; names as sent.
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]
    /// The peer's address, for logs and block conditions.
    public var remoteAddress: String
    /// The peer's IP address without its port: the key sign-in throttles
    /// count failures under (one per client, whatever port it uses); nil
    /// where the transport has none.
    public var sourceAddress: String?
    /// Whether the connection is TLS.
    public var isSecure: Bool

    public init(method: String, uri: String, headers: [(name: String, value: String)] = [], body: [UInt8] = [],
                remoteAddress: String = "", sourceAddress: String? = nil, isSecure: Bool = false) {
        self.method = method
        self.uri = uri
        self.headers = headers
        self.body = body
        self.remoteAddress = remoteAddress
        self.sourceAddress = sourceAddress
        self.isSecure = isSecure
    }

    /// The path without the query.
    public var path: Substring { uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? "" }

    /// The first value of a header, matched case-insensitively.
    public func header(_ name: String) -> String? {
        headers.first { $0.name.caseInsensitiveEquals(name) }?.value
    }
}

/// What role logic answers.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]

    public init(status: Int, headers: [(name: String, value: String)] = [], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// A plain-text response (a newline is added).
    public static func text(_ status: Int, _ text: String) -> HTTPResponse {
        HTTPResponse(status: status, headers: [("Content-Type", "text/plain; charset=utf-8")], body: Array((text + "\n").utf8))
    }
}

/// Serves the requests of an HTTP listener. Called once per request, on
/// Swift's cooperative pool; blocking work goes to a `BlockingExecutor`.
public protocol HTTPResponder: Sendable {
    func respond(to request: HTTPRequest) async -> HTTPResponse
}

extension String {
    /// Header names are ASCII and compare without regard to case; compared
    /// byte by byte, with no lowered copies (this runs per request).
    public func caseInsensitiveEquals(_ other: String) -> Bool {
        var left = utf8.makeIterator(), right = other.utf8.makeIterator()
        while true {
            switch (left.next(), right.next()) {
            case (nil, nil): return true
            case (let a?, let b?):
                if a != b && (a | 0x20) != (b | 0x20) { return false }
                if a != b && !((a | 0x20) >= 0x61 && (a | 0x20) <= 0x7a) { return false }
            default: return false
            }
        }
    }
}

/// Header fields that describe one connection and are never forwarded
/// (RFC 9110 §7.6.1).
public enum HopByHopFields {
    /// Whether a field name is hop-by-hop, compared without lowered copies (this runs per field of every request and response).
    public static func contains(_ name: String) -> Bool {
        switch name.utf8.count {
        case 2: name.caseInsensitiveEquals("te")
        case 7: name.caseInsensitiveEquals("trailer") || name.caseInsensitiveEquals("upgrade")
        case 10: name.caseInsensitiveEquals("connection") || name.caseInsensitiveEquals("keep-alive")
        case 16: name.caseInsensitiveEquals("proxy-connection")
        case 17: name.caseInsensitiveEquals("transfer-encoding")
        case 18: name.caseInsensitiveEquals("proxy-authenticate")
        case 19: name.caseInsensitiveEquals("proxy-authorization")
        default: false
        }
    }
}
