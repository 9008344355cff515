/// A listener a role module brings, besides the node's RPC listeners.
///
/// Its endpoint comes from the node configuration's `[listen]` table under
/// `name` (or `defaultEndpoint`), and a socket passed by systemd under the
/// same name (`FileDescriptorName=`) is used instead of binding. Bind,
/// socket activation, connection limits, metrics and graceful drain are the
/// node's, shared by every kind.
public struct ListenerDeclaration: Sendable {
    public enum Kind: Sendable {
        /// HTTP/1.1 requests, each answered by the responder.
        case http(any HTTPResponder)
        /// A raw byte stream per connection.
        case stream(any ByteStreamService)
        /// A reverse proxy: each request streamed to the backend the policy picks.
        case proxy(any ProxyPolicy, ProxyListenerLimits)
    }

    public enum Security: Sendable, Hashable {
        /// Plain TCP (a metrics endpoint on loopback or a management network).
        case plain
        /// TLS with the node's certificate; a client certificate is verified
        /// against the cluster CA if presented.
        case tls
        /// TLS, and a client certificate from the cluster CA is required.
        case mutualTLS
    }

    public let name: String
    public let kind: Kind
    public let security: Security
    /// Where it listens when the configuration does not say; nil means it
    /// listens only when configured.
    public let defaultEndpoint: String?
    /// ALPN protocol names offered over TLS (e.g. `http/1.1`).
    public let applicationProtocols: [String]

    public init(name: String, kind: Kind, security: Security, defaultEndpoint: String? = nil, applicationProtocols: [String] = []) {
        self.name = name
        self.kind = kind
        self.security = security
        self.defaultEndpoint = defaultEndpoint
        self.applicationProtocols = applicationProtocols
    }
}
