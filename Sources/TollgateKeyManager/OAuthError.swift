public import RPCCore

/// An OAuth 2.0 error as RFC 6749 §5.2 names it, with the description the
/// client is shown. The HTTPS endpoints send it as JSON; the RPC service
/// maps it to an ``RPCError``.
public struct OAuthError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case invalidRequest = "invalid_request"
        case invalidClient = "invalid_client"
        case invalidGrant = "invalid_grant"
        case unauthorizedClient = "unauthorized_client"
        case unsupportedGrantType = "unsupported_grant_type"
        case invalidScope = "invalid_scope"
        case accessDenied = "access_denied"
        case unsupportedResponseType = "unsupported_response_type"
        case unsupportedTokenType = "unsupported_token_type"
        case serverError = "server_error"
        case temporarilyUnavailable = "temporarily_unavailable"
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.rawValue): \(message)" }

    /// 401 for a client that failed to authenticate (with `WWW-Authenticate`),
    /// 5xx for the server's own trouble, 400 for the rest (RFC 6749 §5.2).
    public var httpStatus: Int {
        switch code {
        case .invalidClient: 401
        case .serverError: 500
        case .temporarilyUnavailable: 503
        default: 400
        }
    }

    public var rpcError: RPCError {
        let rpcCode: RPCCode = switch code {
        case .invalidClient: .unauthenticated
        case .accessDenied, .unauthorizedClient: .permissionDenied
        case .serverError: .internal
        case .temporarilyUnavailable: .unavailable
        case .invalidGrant: .failedPrecondition
        default: .invalidArgument
        }
        return RPCError(rpcCode, "\(code.rawValue): \(message)")
    }

    /// A storage or internal failure, without its details (they go to the log).
    static func server(_ error: any Error) -> OAuthError {
        if let oauth = error as? OAuthError { return oauth }
        let mapped = RPCError(mapping: error)
        if mapped.code == .unavailable || mapped.code == .resourceExhausted {
            return OAuthError(.temporarilyUnavailable, mapped.message)
        }
        return OAuthError(.serverError, "the authorization server failed: \(mapped.message)")
    }
}
