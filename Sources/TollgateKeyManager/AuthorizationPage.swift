import OpenSSLKit
import RoleCore
import RPCCore
import TollgateProto
import TollgateStorage
import TollgateUsers

/// The authorization endpoint (RFC 6749 §4.1.1) with PKCE (RFC 7636, S256
/// required): a server-rendered sign-in and consent page, no scripts.
///
/// Cross-site request forgery is refused with a double-submit token: the
/// page sets a random value in a `__Host-` cookie (Secure, HttpOnly,
/// SameSite=Strict) and in a hidden field, and a sign-in is accepted only
/// when the two agree. The parameters are checked again on submission, so
/// nothing on the page is trusted.
extension OAuthEndpoints {
    static let csrfCookie = "__Host-tollgate-csrf"

    /// A checked authorization request.
    struct AuthorizationRequest {
        let client: OAuthClient
        let redirectURI: String
        /// Whether the request named the redirect URI: then the token
        /// request must name it too (RFC 6749 §4.1.3).
        let redirectURIGiven: Bool
        let scopes: [String]
        let state: String
        let codeChallenge: String
        let parameters: [String: String]
    }

    enum AuthorizationProblem: Error {
        /// The client or redirect URI cannot be trusted: show the user, never redirect.
        case page(String)
        /// Reported to the client at its redirect URI (RFC 6749 §4.1.2.1), with the request's state.
        case redirect(String, OAuthError, state: String)
    }

    func checkAuthorization(_ parameters: [String: String]) throws(AuthorizationProblem) -> AuthorizationRequest {
        guard let clientID = parameters["client_id"], !clientID.isEmpty else { throw .page("The request names no client (client_id is missing).") }
        guard let client = try? keyManager.client(clientID) else { throw .page("No application is registered with this client id.") }
        let redirect = parameters["redirect_uri"] ?? client.callbackUrl
        guard !redirect.isEmpty, redirect == client.callbackUrl else {
            throw .page("The redirect URI is not the one registered for this application.")
        }
        let state = parameters["state"] ?? ""
        guard parameters["response_type"] == "code" else {
            throw .redirect(redirect, OAuthError(.unsupportedResponseType, "only response_type=code is supported"), state: state)
        }
        guard client.grantTypes.contains(.authorizationCode) else {
            throw .redirect(redirect, OAuthError(.unauthorizedClient, "this client may not use the authorization_code grant"), state: state)
        }
        // An S256 challenge is the base64url SHA-256 of the verifier: always 43 characters.
        guard let challenge = parameters["code_challenge"], challenge.count == 43, Base64URL.decode(challenge)?.count == 32 else {
            throw .redirect(redirect, OAuthError(.invalidRequest, "PKCE is required: send code_challenge (BASE64URL(SHA-256(code_verifier)), 43 characters) with code_challenge_method=S256"),
                            state: state)
        }
        guard parameters["code_challenge_method"] == "S256" else {
            throw .redirect(redirect, OAuthError(.invalidRequest, "code_challenge_method must be S256"), state: state)
        }
        return AuthorizationRequest(client: client, redirectURI: redirect, redirectURIGiven: parameters["redirect_uri"] != nil,
                                    scopes: Self.scopes(parameters["scope"]), state: state, codeChallenge: challenge, parameters: parameters)
    }

    static let authorizationFields = ["response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge", "code_challenge_method"]

    func authorizePage(_ request: HTTPRequest) async -> HTTPResponse {
        let query = request.uri.split(separator: "?", maxSplits: 1).dropFirst().first ?? ""
        guard let pairs = FormEncoding.decode(query) else { return Self.page(400, Self.errorBody("The request's query string is malformed.")) }
        let parameters = Dictionary(pairs, uniquingKeysWith: { first, _ in first })
        do {
            let checked = try checkAuthorization(parameters)
            guard let csrf = try? SecretHasher.newToken() else { return Self.page(500, Self.errorBody("The server could not make a form token.")) }
            return Self.page(200, await signInForm(checked, csrf: csrf, message: nil),
                             cookie: "\(Self.csrfCookie)=\(csrf); Path=/; Secure; HttpOnly; SameSite=Strict")
        } catch {
            return Self.authorizationFailure(error)
        }
    }

    func authorizeSubmit(_ request: HTTPRequest) async -> HTTPResponse {
        guard (request.header("Content-Type") ?? "").lowercased().hasPrefix("application/x-www-form-urlencoded"),
              let body = String(validating: request.body, as: UTF8.self), let pairs = FormEncoding.decode(body) else {
            return Self.page(400, Self.errorBody("The form could not be read."))
        }
        let form = Dictionary(pairs, uniquingKeysWith: { first, _ in first })
        let cookie = Self.cookie(Self.csrfCookie, in: request.header("Cookie"))
        guard let field = form["csrf_token"], let cookie, !field.isEmpty,
              constantTimeEquals(Array(field.utf8), Array(cookie.utf8)) else {
            return Self.page(403, Self.errorBody("The form has expired or did not come from this page. Go back to the application and start again."))
        }
        let checked: AuthorizationRequest
        do { checked = try checkAuthorization(form) } catch { return Self.authorizationFailure(error) }
        if form["action"] == "deny" {
            return Self.redirect(checked.redirectURI, [("error", "access_denied"), ("error_description", "the user denied access")], state: checked.state)
        }
        let username = form["username"] ?? "", password = form["password"] ?? ""
        guard !username.isEmpty, !password.isEmpty else {
            return Self.page(200, await signInForm(checked, csrf: field, message: "Enter your username and password."))
        }
        let user: User
        do {
            user = try await keyManager.users.authenticate(username: username, password: password, defaultTenant: checked.client.tenantDomain,
                                                               source: request.sourceAddress)
        } catch {
            let message = error.code == .unauthenticated ? "The username or password is wrong." : error.message
            return Self.page(200, await signInForm(checked, csrf: field, message: message))
        }
        guard user.tenantDomain.lowercased() == checked.client.tenantDomain.lowercased() else {
            return Self.page(200, await signInForm(checked, csrf: field, message: "This application belongs to another tenant; sign in with an account of \(checked.client.tenantDomain)."))
        }
        do {
            let scopes = try keyManager.grantedScopes(checked.scopes, roles: user.roles, tenant: user.tenantDomain, applicationID: checked.client.applicationId)
            let code = try await keyManager.issueCode(client: checked.client, username: user.username, tenant: user.tenantDomain, scopes: scopes,
                                                      redirectURI: checked.redirectURIGiven ? checked.redirectURI : "",
                                                      codeChallenge: checked.codeChallenge, codeChallengeMethod: "S256")
            return Self.redirect(checked.redirectURI, [("code", code)], state: checked.state)
        } catch {
            return Self.redirect(checked.redirectURI, [("error", "server_error"), ("error_description", "the authorization server failed")], state: checked.state)
        }
    }

    static func authorizationFailure(_ error: AuthorizationProblem) -> HTTPResponse {
        switch error {
        case .page(let message): return page(400, errorBody(message))
        case .redirect(let uri, let oauth, let state):
            return redirect(uri, [("error", oauth.code.rawValue), ("error_description", oauth.message)], state: state)
        }
    }

    static func redirect(_ uri: String, _ parameters: [(String, String)], state: String?) -> HTTPResponse {
        var parameters = parameters
        if let state, !state.isEmpty { parameters.append(("state", state)) }
        let location = uri + (uri.contains("?") ? "&" : "?") + FormEncoding.encode(parameters)
        return HTTPResponse(status: 302, headers: [("Location", location), ("Cache-Control", "no-store"), ("Referrer-Policy", "no-referrer")])
    }

    static func cookie(_ name: String, in header: String?) -> String? {
        guard let header else { return nil }
        for part in header.split(separator: ";") {
            let pair = part.trimmingSpaces.split(separator: "=", maxSplits: 1)
            if pair.count == 2, pair[0] == name { return String(pair[1]) }
        }
        return nil
    }

    // MARK: HTML

    static func page(_ status: Int, _ body: String, cookie: String? = nil) -> HTTPResponse {
        let html = """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
        <title>Sign in · Tollgate</title>
        <style>body{font-family:system-ui,sans-serif;max-width:26rem;margin:3rem auto;padding:0 1rem;color:#222}
        label{display:block;margin:.8rem 0 .2rem}input[type=text],input[type=password]{width:100%;padding:.45rem;box-sizing:border-box}
        .buttons{margin-top:1.2rem;display:flex;gap:.6rem}button{padding:.5rem 1rem}.error{color:#a00;font-weight:600}
        code{background:#f3f3f3;padding:0 .2rem}</style></head>
        <body>\(body)</body></html>
        """
        var headers: [(String, String)] = [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store"),
                                           ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"),
                                           ("X-Frame-Options", "DENY"), ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer")]
        if let cookie { headers.append(("Set-Cookie", cookie)) }
        return HTTPResponse(status: status, headers: headers, body: Array(html.utf8))
    }

    static func errorBody(_ message: String) -> String {
        "<h1>Cannot sign in</h1><p class=\"error\" id=\"error\">\(HTML.escape(message))</p>"
    }

    func signInForm(_ request: AuthorizationRequest, csrf: String, message: String?) async -> String {
        let application = (try? keyManager.application(of: request.client))?.name ?? request.client.clientName
        let name = HTML.escape(application.isEmpty ? request.client.consumerKey : application)
        var hidden = ""
        for field in Self.authorizationFields {
            if let value = request.parameters[field] {
                hidden += "<input type=\"hidden\" name=\"\(field)\" value=\"\(HTML.escape(value))\">"
            }
        }
        hidden += "<input type=\"hidden\" name=\"csrf_token\" value=\"\(HTML.escape(csrf))\">"
        let scopes = request.scopes.isEmpty ? "" :
            "<p>It asks for: " + request.scopes.map { "<code>\(HTML.escape($0))</code>" }.joined(separator: " ") + "</p>"
        let error = message.map { "<p class=\"error\" id=\"error\">\(HTML.escape($0))</p>" } ?? ""
        return """
        <h1>Sign in</h1>
        <p><strong id="application">\(name)</strong> wants to use your account of <strong>\(HTML.escape(request.client.tenantDomain))</strong>.</p>
        \(scopes)\(error)
        <form method="post" action="/oauth2/authorize">\(hidden)
        <label for="username">Username</label><input type="text" id="username" name="username" autocomplete="username" required>
        <label for="password">Password</label><input type="password" id="password" name="password" autocomplete="current-password">
        <div class="buttons"><button type="submit" id="approve" name="action" value="approve">Sign in and allow</button>
        <button type="submit" id="deny" name="action" value="deny" formnovalidate>Deny</button></div>
        </form>
        """
    }
}
