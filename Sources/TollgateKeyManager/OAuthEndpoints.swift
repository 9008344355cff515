import FoundationEssentials
import OpenSSLKit
public import RoleCore
import RPCCore
import TollgateProto
import TollgateStorage
import TollgateUsers

/// The OAuth 2.0 authorization server over HTTPS (the keymanager's `oauth`
/// listener): token (RFC 6749), revocation (RFC 7009), introspection (RFC
/// 7662), metadata (RFC 8414), the JWKS, and the authorization endpoint
/// with its sign-in and consent page. Pure role logic: requests arrive as
/// ``HTTPRequest``s from the node's HTTP listener.
public struct OAuthEndpoints: HTTPResponder {
    public let keyManager: KeyManager
    /// WSO2's Thrift authenticator (`POST /thriftAuthenticator`), when the keymanager serves Thrift.
    let thriftAuthenticator: ThriftAuthenticatorEndpoint?

    public init(keyManager: KeyManager, thriftSessions: ThriftSessions? = nil) {
        self.keyManager = keyManager
        self.thriftAuthenticator = thriftSessions.map { ThriftAuthenticatorEndpoint(sessions: $0) }
    }

    public func respond(to request: HTTPRequest) async -> HTTPResponse {
        if request.method == "POST", request.path == "/thriftAuthenticator", let thriftAuthenticator {
            return await thriftAuthenticator.respond(to: request)
        }
        switch (request.method, String(request.path)) {
        case ("POST", "/oauth2/token"): return await token(request)
        case ("POST", "/oauth2/revoke"): return await revoke(request)
        case ("POST", "/oauth2/introspect"): return await introspect(request)
        case ("GET", "/oauth2/authorize"), ("HEAD", "/oauth2/authorize"): return await authorizePage(request)
        case ("POST", "/oauth2/authorize"): return await authorizeSubmit(request)
        case ("GET", "/.well-known/oauth-authorization-server"), ("GET", "/.well-known/openid-configuration"): return metadata()
        case ("GET", "/oauth2/jwks"): return jwks()
        case (_, "/oauth2/token"), (_, "/oauth2/revoke"), (_, "/oauth2/introspect"):
            return HTTPResponse(status: 405, headers: [("Allow", "POST"), ("Content-Type", "application/json")],
                                body: JSONValue.object([("error", "invalid_request"), ("error_description", "use POST")]).bytes)
        default:
            return .text(404, "no such endpoint; the authorization server's endpoints are listed at /.well-known/oauth-authorization-server")
        }
    }

    // MARK: Token endpoint

    /// RFC 6749 §5.1 and §5.2 responses: JSON, never cached.
    static func json(_ status: Int, _ value: JSONValue, extra: [(String, String)] = []) -> HTTPResponse {
        HTTPResponse(status: status, headers: [("Content-Type", "application/json;charset=UTF-8"), ("Cache-Control", "no-store"), ("Pragma", "no-cache")] + extra,
                     body: value.bytes)
    }

    static func oauthError(_ error: OAuthError) -> HTTPResponse {
        let extra: [(String, String)] = error.httpStatus == 401 ? [("WWW-Authenticate", "Basic realm=\"tollgate\", charset=\"UTF-8\"")] : []
        return json(error.httpStatus, .object([("error", .string(error.code.rawValue)), ("error_description", .string(error.message))]), extra: extra)
    }

    /// The form body and the client's credentials (HTTP Basic or form
    /// fields, not both: RFC 6749 §2.3.1).
    func readForm(_ request: HTTPRequest) throws(OAuthError) -> (form: [String: String], clientID: String, clientSecret: String) {
        let contentType = request.header("Content-Type")?.lowercased() ?? ""
        guard contentType.hasPrefix("application/x-www-form-urlencoded") else {
            throw OAuthError(.invalidRequest, "the body must be application/x-www-form-urlencoded")
        }
        guard let body = String(validating: request.body, as: UTF8.self), let pairs = FormEncoding.decode(body) else {
            throw OAuthError(.invalidRequest, "the body is not valid form encoding")
        }
        var form: [String: String] = [:]
        for (name, value) in pairs {
            // RFC 6749 §3.1: parameters must not be repeated.
            guard form.updateValue(value, forKey: name) == nil else { throw OAuthError(.invalidRequest, "parameter \(name) is repeated") }
        }
        let basic = FormEncoding.basicCredentials(request.header("Authorization"))
        if request.header("Authorization") != nil && basic == nil {
            throw OAuthError(.invalidClient, "the Authorization header is not valid HTTP Basic")
        }
        if let basic {
            guard form["client_secret"] == nil else { throw OAuthError(.invalidRequest, "client credentials given twice (Authorization header and body)") }
            if let id = form["client_id"], id != basic.id { throw OAuthError(.invalidRequest, "client_id differs from the Authorization header's") }
            return (form, basic.id, basic.secret)
        }
        return (form, form["client_id"] ?? "", form["client_secret"] ?? "")
    }

    static func scopes(_ text: String?) -> [String] {
        (text ?? "").split(separator: " ").map(String.init)
    }

    func token(_ request: HTTPRequest) async -> HTTPResponse {
        do {
            let (form, clientID, clientSecret) = try readForm(request)
            guard let grantName = form["grant_type"] else { throw OAuthError(.invalidRequest, "grant_type is missing") }
            guard let grant = KeyManager.grant(named: grantName), grant != .implicit else {
                throw OAuthError(.unsupportedGrantType, "grant_type \(grantName) is not supported; use authorization_code, password, client_credentials or refresh_token")
            }
            var tokenRequest = TokenRequest(grantType: grant)
            tokenRequest.clientID = clientID
            tokenRequest.clientSecret = clientSecret
            tokenRequest.scopes = Self.scopes(form["scope"])
            tokenRequest.username = form["username"] ?? ""
            tokenRequest.password = form["password"] ?? ""
            tokenRequest.code = form["code"] ?? ""
            tokenRequest.redirectURI = form["redirect_uri"] ?? ""
            tokenRequest.codeVerifier = form["code_verifier"] ?? ""
            tokenRequest.refreshToken = form["refresh_token"] ?? ""
            tokenRequest.sourceAddress = request.sourceAddress
            if let validity = form["validity_period"] { tokenRequest.validitySeconds = Int64(validity) ?? 0 }
            let issued = try await keyManager.token(tokenRequest)
            var members: [(String, JSONValue)] = [("access_token", .string(issued.accessToken)), ("token_type", "Bearer"),
                                                  ("expires_in", .integer(issued.expiresInSeconds))]
            if !issued.refreshToken.isEmpty { members.append(("refresh_token", .string(issued.refreshToken))) }
            members.append(("scope", .string(issued.scopes.joined(separator: " "))))
            return Self.json(200, .object(members))
        } catch let error as OAuthError {
            return Self.oauthError(error)
        } catch {
            return Self.oauthError(OAuthError.server(error))
        }
    }

    // MARK: Revocation and introspection

    func revoke(_ request: HTTPRequest) async -> HTTPResponse {
        do {
            let (form, clientID, clientSecret) = try readForm(request)
            guard let token = form["token"], !token.isEmpty else { throw OAuthError(.invalidRequest, "token is missing") }
            let client = try await keyManager.authenticateClient(id: clientID, secret: clientSecret)
            let hint: TokenKind = switch form["token_type_hint"] {
            case "access_token": .access
            case "refresh_token": .refresh
            default: .unspecified  // unknown hints are advisory (RFC 7009 §2.1)
            }
            _ = try await keyManager.revoke(token: token, hint: hint, client: client)
            return HTTPResponse(status: 200, headers: [("Cache-Control", "no-store")])
        } catch let error as OAuthError {
            return Self.oauthError(error)
        } catch {
            return Self.oauthError(OAuthError.server(error))
        }
    }

    /// The caller authenticates as a client; it learns about its own tokens
    /// only (others read as inactive, so nothing leaks across clients).
    func introspect(_ request: HTTPRequest) async -> HTTPResponse {
        do {
            let (form, clientID, clientSecret) = try readForm(request)
            guard let token = form["token"], !token.isEmpty else { throw OAuthError(.invalidRequest, "token is missing") }
            let client = try await keyManager.authenticateClient(id: clientID, secret: clientSecret)
            let result: IntrospectResponse
            do { result = try keyManager.introspect(token: token) } catch { throw OAuthError.server(error) }
            guard result.active, result.clientId == client.consumerKey else { return Self.json(200, .object([("active", false)])) }
            var members: [(String, JSONValue)] = [("active", true), ("scope", .string(result.scopes.joined(separator: " "))),
                                                  ("client_id", .string(result.clientId)), ("username", .string(result.username)),
                                                  ("token_type", result.kind == .refresh ? "refresh_token" : "Bearer"),
                                                  ("iat", .integer(result.issuedAtUnixMs / 1000))]
            if let expires = result.expiresAtUnixMs { members.append(("exp", .integer(expires / 1000))) }
            members.append(("sub", .string(result.tenantDomain == superTenant ? result.username : "\(result.username)@\(result.tenantDomain)")))
            members.append(("iss", .string(keyManager.settings.issuer)))
            return Self.json(200, .object(members))
        } catch let error as OAuthError {
            return Self.oauthError(error)
        } catch {
            return Self.oauthError(OAuthError.server(error))
        }
    }

    // MARK: Discovery

    func metadata() -> HTTPResponse {
        let issuer = keyManager.settings.issuer
        let value: JSONValue = .object([
            ("issuer", .string(issuer)),
            ("authorization_endpoint", .string(issuer + "/oauth2/authorize")),
            ("token_endpoint", .string(issuer + "/oauth2/token")),
            ("revocation_endpoint", .string(issuer + "/oauth2/revoke")),
            ("introspection_endpoint", .string(issuer + "/oauth2/introspect")),
            ("jwks_uri", .string(issuer + "/oauth2/jwks")),
            ("response_types_supported", .array(["code"])),
            ("grant_types_supported", .array(["authorization_code", "password", "client_credentials", "refresh_token"])),
            ("token_endpoint_auth_methods_supported", .array(["client_secret_basic", "client_secret_post"])),
            ("revocation_endpoint_auth_methods_supported", .array(["client_secret_basic", "client_secret_post"])),
            ("introspection_endpoint_auth_methods_supported", .array(["client_secret_basic", "client_secret_post"])),
            ("code_challenge_methods_supported", .array(["S256"])),
        ])
        return HTTPResponse(status: 200, headers: [("Content-Type", "application/json"), ("Cache-Control", "max-age=300")], body: value.bytes)
    }

    func jwks() -> HTTPResponse {
        do {
            // Short cache: a rotation reaches verifiers within a minute.
            return HTTPResponse(status: 200, headers: [("Content-Type", "application/jwk-set+json"), ("Cache-Control", "max-age=60")],
                                body: try keyManager.signingKeys.jwks().bytes)
        } catch {
            return Self.oauthError(OAuthError.server(error))
        }
    }
}
