#!/usr/bin/env python3
"""Third-party OAuth 2.0 clients against Tollgate's authorization server
(the keymanager's `oauth` HTTPS listener).

Each subcommand drives the server with stock client libraries (or curl)
and prints one line per check, `ok <name>` or `FAIL <name>: <why>`, then a
closing line `done: N ok, N FAIL`. The exit status is 0 when every check
passed, 1 when one failed, 2 for bad arguments.

Common arguments (before or after the subcommand name):

  --base https://127.0.0.1:PORT   the listener (no trailing slash)
  --ca CA.pem                     the cluster CA; passed as `verify=` / --cacert
  --client-id ID --client-secret SECRET
                                  an application's consumer key and secret
  --username U --password P       a user of the client's tenant (password
                                  and authorization_code flows)
  --scope "a b"                   scopes to request (default: none, so the
                                  server grants `default`)
  --timeout SECONDS               per HTTP request (default 20)

Subcommands:

  oauthlib
      requests-oauthlib/oauthlib as the client. client_credentials with
      BackendApplicationClient (no refresh token; introspect, revoke,
      introspect again -> inactive); password grant with
      LegacyApplicationClient; `refresh_token` rotation; replaying the old
      refresh token -> invalid_grant; the rotated refresh token is then
      dead too and its access token inactive (family revoked).
      Needs a client with client_credentials, password and refresh_token
      grants, and --username/--password.

  authlib --redirect-uri URI
      authlib's OAuth2Session as an independent second client: the same
      grants (client_secret_basic and client_secret_post), revocation of
      a refresh token, then authorization_code with PKCE S256 without a
      browser: the authorize page is fetched with requests, its form read
      with html.parser, a wrong password re-renders the page with #error,
      the right one (with the CSRF cookie) gives a 302 to URI with code and
      state; authlib exchanges the code with its code_verifier; the same
      code again -> invalid_grant and the tokens of the first exchange are
      revoked. Also: a form without the CSRF cookie -> 403, deny ->
      error=access_denied with the state, a wrong code_verifier ->
      invalid_grant, a code exchanged without the redirect_uri its
      authorization request carried -> invalid_grant (RFC 6749 §4.1.3),
      no code_challenge -> error=invalid_request and response_type=token
      -> error=unsupported_response_type at the redirect URI, each with
      the request's state (RFC 6749 §4.1.2.1), an unregistered
      redirect_uri -> 400 page without a redirect.
      URI must be the client's registered callback (nothing needs to
      listen there: the 302 is read, not followed). Needs the
      authorization_code grant too.

  jwt [--token=JWT] [--expect valid|invalid]
      Reads /.well-known/oauth-authorization-server, checks it (RFC 8414),
      then verifies the access token with PyJWT against `jwks_uri`
      (jwt.PyJWKClient, ES256, audience = --client-id, issuer = the
      metadata's issuer) and checks its claims. Without --token a token is
      fetched with client_credentials (the application must use JWT
      tokens). With --expect invalid, --token must NOT verify against the
      current JWKS (e.g. after its signing key was rotated out and
      retired); a fresh client_credentials token must still verify.
      Pass the token as --token=VALUE.

  raw [--other-client-id ID --other-client-secret S]
      curl (subprocess) for the raw RFC shapes of /oauth2/token, /revoke
      and /introspect: status codes, JSON error bodies, WWW-Authenticate,
      Cache-Control/Pragma, 405 on GET, repeated parameters, two client
      authentication methods at once. With the other client's keys: a
      client cannot introspect or revoke another client's token.

Example:
  .venv/bin/python Tests/Interop/oauth_peer.py --base https://127.0.0.1:8743 \
      --ca certs/ca.pem --client-id ID --client-secret S \
      --username alice --password secret authlib --redirect-uri http://127.0.0.1:9000/cb

Only the standard library and the packages pinned in tools/requirements.txt
(requests, requests-oauthlib, oauthlib, authlib, PyJWT) are used; curl must
be on PATH for `raw`.
"""

import argparse
import base64
import hashlib
import html.parser
import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse

import requests

# The server drops requested scopes the user may not have and grants
# `default` instead (RFC 6749 §3.3 allows it); oauthlib would raise.
os.environ.setdefault("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")


# --------------------------------------------------------------------------
# Reporting


class Checks:
    """Collects `ok`/`FAIL` lines; each check prints as it is decided."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def ok(self, name):
        self.passed += 1
        print("ok %s" % name, flush=True)

    def fail(self, name, why):
        self.failed += 1
        why = " ".join(str(why).split())
        print("FAIL %s: %s" % (name, why[:600]), flush=True)

    def check(self, name, condition, why=""):
        if condition:
            self.ok(name)
        else:
            self.fail(name, why or "condition false")
        return bool(condition)

    def run(self, name, function):
        """Runs `function()`; an exception fails the check. Returns its result or None."""
        try:
            result = function()
        except Exception as error:  # noqa: BLE001 - every failure is a report line
            self.fail(name, "%s: %s" % (type(error).__name__, error))
            return None
        self.ok(name)
        return result

    def expect_error(self, name, function, code):
        """`function()` must raise an OAuth error whose `error` is `code`."""
        try:
            result = function()
        except Exception as error:  # noqa: BLE001
            got = oauth_error_code(error)
            self.check(name, got == code, "expected %s, got %s (%s: %s)" % (code, got, type(error).__name__, error))
            return
        self.fail(name, "expected %s, but the call succeeded: %r" % (code, result))

    def finish(self):
        # Not "N passed, N failed": CI reads that shape as a test runner's closing line.
        print("done: %d ok, %d FAIL" % (self.passed, self.failed), flush=True)
        return 0 if self.failed == 0 else 1


def oauth_error_code(error):
    """The RFC 6749 `error` code carried by an oauthlib or authlib exception."""
    code = getattr(error, "error", None)
    if isinstance(code, str):
        return code
    return None


# --------------------------------------------------------------------------
# Shared helpers


class Server:
    """Endpoint URLs under --base and a requests session that trusts --ca."""

    def __init__(self, args):
        self.base = args.base.rstrip("/")
        self.ca = args.ca
        self.timeout = args.timeout
        self.token_url = self.base + "/oauth2/token"
        self.revoke_url = self.base + "/oauth2/revoke"
        self.introspect_url = self.base + "/oauth2/introspect"
        self.authorize_url = self.base + "/oauth2/authorize"
        self.metadata_url = self.base + "/.well-known/oauth-authorization-server"
        self.client_id = args.client_id
        self.client_secret = args.client_secret

        self.http = self.session()

    def session(self):
        """A requests session that trusts --ca only. trust_env is off: with
        it, REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE in the environment would
        replace a session's `verify`, and proxies would apply."""
        s = requests.Session()
        s.trust_env = False
        s.verify = self.ca
        return s

    def introspect(self, token, client_id=None, client_secret=None, hint=None):
        """RFC 7662 introspection as the client (HTTP Basic); the JSON object."""
        data = {"token": token}
        if hint:
            data["token_type_hint"] = hint
        response = self.http.post(self.introspect_url, data=data, timeout=self.timeout,
                                 auth=(client_id or self.client_id, client_secret or self.client_secret))
        if response.status_code != 200:
            raise AssertionError("introspection answered %d: %s" % (response.status_code, response.text[:300]))
        return response.json()

    def revoke(self, token, hint=None):
        data = {"token": token}
        if hint:
            data["token_type_hint"] = hint
        response = self.http.post(self.revoke_url, data=data, timeout=self.timeout,
                                 auth=(self.client_id, self.client_secret))
        if response.status_code != 200:
            raise AssertionError("revocation answered %d: %s" % (response.status_code, response.text[:300]))
        return response

    def client_credentials(self):
        """A client_credentials token fetched with plain requests (for `jwt`)."""
        response = self.http.post(self.token_url, data={"grant_type": "client_credentials"},
                                  timeout=self.timeout, auth=(self.client_id, self.client_secret))
        if response.status_code != 200:
            raise AssertionError("token endpoint answered %d: %s" % (response.status_code, response.text[:300]))
        return response.json()


def check_token_response(checks, name, token, refresh):
    """RFC 6749 §5.1 members of a successful token response."""
    problems = []
    if not isinstance(token.get("access_token"), str) or not token.get("access_token"):
        problems.append("no access_token")
    if str(token.get("token_type", "")).lower() != "bearer":
        problems.append("token_type %r" % token.get("token_type"))
    expires = token.get("expires_in")
    if not isinstance(expires, int) or expires <= 0:
        problems.append("expires_in %r" % (expires,))
    if refresh and not token.get("refresh_token"):
        problems.append("no refresh_token")
    if not refresh and token.get("refresh_token"):
        problems.append("a refresh_token was issued (RFC 6749 §4.4.3: should not for client_credentials)")
    if "scope" in token and not isinstance(token.get("scope"), (str, list)):
        problems.append("scope %r" % (token.get("scope"),))
    checks.check(name, not problems, "; ".join(problems) + " in " + json.dumps(token)[:300])


def check_active(checks, server, name, token, active, username=None, kind=None):
    """Introspects `token` and checks `active` (and, if active, its members)."""
    try:
        info = server.introspect(token)
    except Exception as error:  # noqa: BLE001
        checks.fail(name, error)
        return
    if info.get("active") is not active:
        checks.fail(name, "expected active=%s, got %s" % (active, json.dumps(info)[:300]))
        return
    if not active:
        checks.check(name, set(info) == {"active"}, "an inactive token's answer should carry nothing but active: %s" % json.dumps(info))
        return
    problems = []
    if info.get("client_id") != server.client_id:
        problems.append("client_id %r" % info.get("client_id"))
    if username is not None and info.get("username") != username:
        problems.append("username %r, expected %r" % (info.get("username"), username))
    if kind is not None and info.get("token_type") != kind:
        problems.append("token_type %r, expected %r" % (info.get("token_type"), kind))
    for member in ("exp", "iat"):
        if not isinstance(info.get(member), int):
            problems.append("%s %r" % (member, info.get(member)))
    if isinstance(info.get("exp"), int) and info["exp"] <= time.time() - 5:
        problems.append("exp %d is in the past" % info["exp"])
    checks.check(name, not problems, "; ".join(problems) + " in " + json.dumps(info)[:300])


def require(args, *names):
    missing = [n for n in names if not getattr(args, n.replace("-", "_"), None)]
    if missing:
        sys.stderr.write("this subcommand needs %s\n" % ", ".join("--" + n for n in missing))
        sys.exit(2)


# --------------------------------------------------------------------------
# The authorize page, read without a browser


class FormReader(html.parser.HTMLParser):
    """Reads the first <form>: its action, method and every named input or
    button, plus the text of the element with id="error"."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.action = None
        self.method = None
        self.inputs = {}
        self.buttons = {}
        self.ids = set()
        self.error_text = None
        self._in_error = False
        self._in_form = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if "id" in attributes:
            self.ids.add(attributes["id"])
        if tag == "form" and self.action is None:
            self._in_form = True
            self.action = attributes.get("action", "")
            self.method = (attributes.get("method") or "get").lower()
        elif tag == "input" and self._in_form and attributes.get("name"):
            self.inputs[attributes["name"]] = {"type": (attributes.get("type") or "text").lower(),
                                               "value": attributes.get("value") or ""}
        elif tag == "button" and self._in_form and attributes.get("name"):
            self.buttons[attributes.get("id") or attributes.get("value")] = (attributes["name"], attributes.get("value") or "")
        if attributes.get("id") == "error":
            self._in_error = True
            self.error_text = ""

    def handle_endtag(self, tag):
        if tag == "form":
            self._in_form = False
        if self._in_error and tag in ("p", "div", "span"):
            self._in_error = False

    def handle_data(self, data):
        if self._in_error:
            self.error_text += data

    def hidden(self):
        return {name: field["value"] for name, field in self.inputs.items() if field["type"] == "hidden"}


def read_form(text):
    reader = FormReader()
    reader.feed(text)
    reader.close()
    return reader


def pkce_pair():
    """An RFC 7636 code_verifier and its S256 challenge (computed here, independently)."""
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(48)).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def redirect_parameters(location, redirect_uri):
    """The query parameters of a redirect to `redirect_uri`, or raises."""
    if not location:
        raise AssertionError("no Location header")
    target = urllib.parse.urlsplit(location)
    expected = urllib.parse.urlsplit(redirect_uri)
    if (target.scheme, target.netloc, target.path) != (expected.scheme, expected.netloc, expected.path):
        raise AssertionError("redirected to %s, not to %s" % (location, redirect_uri))
    return dict(urllib.parse.parse_qsl(target.query, keep_blank_values=True))


class AuthorizeDriver:
    """Walks the sign-in/consent page with requests, as a form-filling user agent would."""

    def __init__(self, server, redirect_uri, scope):
        self.server = server
        self.redirect_uri = redirect_uri
        self.scope = scope
        self.http = server.session()

    def open(self, url):
        """GETs an authorize URL; returns (response, form)."""
        response = self.http.get(url, timeout=self.server.timeout, allow_redirects=False)
        return response, read_form(response.text) if response.status_code == 200 else None

    def submit(self, form, fields, cookies=True):
        """POSTs the form with `fields` added; never follows the redirect."""
        data = form.hidden()
        data.update(fields)
        action = urllib.parse.urljoin(self.server.base + "/oauth2/authorize", form.action)
        if cookies:
            return self.http.post(action, data=data, timeout=self.server.timeout, allow_redirects=False)
        return self.server.session().post(action, data=data, timeout=self.server.timeout, allow_redirects=False)


# --------------------------------------------------------------------------
# oauthlib / requests-oauthlib


def cmd_oauthlib(args, checks):
    from oauthlib.oauth2 import BackendApplicationClient, LegacyApplicationClient
    from requests.auth import HTTPBasicAuth
    from requests_oauthlib import OAuth2Session as RequestsOAuth2Session

    require(args, "username", "password")
    server = Server(args)
    basic = HTTPBasicAuth(args.client_id, args.client_secret)
    scope = args.scope.split() if args.scope else None

    def OAuth2Session(client, scope=None):  # noqa: N802 - stands in for the class
        session = RequestsOAuth2Session(client=client, scope=scope)
        session.trust_env = False  # see Server.session
        return session

    # client_credentials (RFC 6749 §4.4)
    backend = OAuth2Session(client=BackendApplicationClient(client_id=args.client_id), scope=scope)
    token = checks.run("oauthlib client_credentials grant",
                       lambda: backend.fetch_token(server.token_url, auth=basic, verify=server.ca, timeout=server.timeout))
    if token:
        check_token_response(checks, "oauthlib client_credentials response", token, refresh=False)
        check_active(checks, server, "introspect client_credentials token active", token["access_token"], True,
                     kind="Bearer")
        checks.run("revoke client_credentials token", lambda: server.revoke(token["access_token"], hint="access_token"))
        check_active(checks, server, "introspect after revoke: inactive", token["access_token"], False)

    # password grant (RFC 6749 §4.3)
    legacy = OAuth2Session(client=LegacyApplicationClient(client_id=args.client_id), scope=scope)
    first = checks.run("oauthlib password grant",
                       lambda: legacy.fetch_token(server.token_url, username=args.username, password=args.password,
                                                  auth=basic, verify=server.ca, timeout=server.timeout))
    checks.expect_error("oauthlib password grant with a wrong password -> invalid_grant",
                        lambda: OAuth2Session(client=LegacyApplicationClient(client_id=args.client_id)).fetch_token(
                            server.token_url, username=args.username, password=args.password + "-wrong",
                            auth=basic, verify=server.ca, timeout=server.timeout),
                        "invalid_grant")
    checks.expect_error("oauthlib password grant with a wrong client secret -> invalid_client",
                        lambda: OAuth2Session(client=LegacyApplicationClient(client_id=args.client_id)).fetch_token(
                            server.token_url, username=args.username, password=args.password,
                            auth=HTTPBasicAuth(args.client_id, args.client_secret + "x"), verify=server.ca,
                            timeout=server.timeout),
                        "invalid_client")
    if not first:
        return
    check_token_response(checks, "oauthlib password response", first, refresh=True)
    check_active(checks, server, "introspect password access token", first["access_token"], True,
                 username=args.username, kind="Bearer")
    check_active(checks, server, "introspect password refresh token", first["refresh_token"], True,
                 username=args.username, kind="refresh_token")

    # refresh with rotation (RFC 6749 §6, OAuth 2.0 Security BCP §4.14.2)
    second = checks.run("oauthlib refresh_token",
                        lambda: legacy.refresh_token(server.token_url, refresh_token=first["refresh_token"], auth=basic,
                                                     verify=server.ca, timeout=server.timeout))
    if not second:
        return
    check_token_response(checks, "oauthlib refresh response", second, refresh=True)
    checks.check("refresh rotates the refresh token", second.get("refresh_token") != first["refresh_token"],
                 "the same refresh token came back")
    checks.check("refresh issues a new access token", second.get("access_token") != first["access_token"],
                 "the same access token came back")
    check_active(checks, server, "new access token active after refresh", second["access_token"], True, username=args.username)

    # replaying the spent refresh token revokes the whole family
    checks.expect_error("replayed refresh token -> invalid_grant",
                        lambda: legacy.refresh_token(server.token_url, refresh_token=first["refresh_token"], auth=basic,
                                                     verify=server.ca, timeout=server.timeout),
                        "invalid_grant")
    check_active(checks, server, "access token of the rotated refresh token inactive after replay", second["access_token"], False)
    check_active(checks, server, "rotated refresh token inactive after replay", second["refresh_token"], False)
    checks.expect_error("rotated refresh token dead after replay (family revoked) -> invalid_grant",
                        lambda: legacy.refresh_token(server.token_url, refresh_token=second["refresh_token"], auth=basic,
                                                     verify=server.ca, timeout=server.timeout),
                        "invalid_grant")


# --------------------------------------------------------------------------
# authlib


def cmd_authlib(args, checks):
    from authlib.integrations.requests_client import OAuth2Session

    require(args, "username", "password", "redirect-uri")
    server = Server(args)
    scope = args.scope or None

    def session(method="client_secret_basic", **extra):
        s = OAuth2Session(args.client_id, args.client_secret, token_endpoint_auth_method=method,
                          revocation_endpoint_auth_method=method, scope=scope, **extra)
        s.trust_env = False  # see Server.session
        s.verify = server.ca
        s.default_timeout = server.timeout
        return s

    # client_credentials with client_secret_post
    post = session("client_secret_post")
    token = checks.run("authlib client_credentials grant (client_secret_post)",
                       lambda: post.fetch_token(server.token_url, grant_type="client_credentials"))
    if token:
        check_token_response(checks, "authlib client_credentials response", dict(token), refresh=False)
        info = checks.run("authlib introspect_token", lambda: post.introspect_token(server.introspect_url, token=token["access_token"]).json())
        if info is not None:
            checks.check("authlib introspection: active, own client_id", info.get("active") is True and info.get("client_id") == args.client_id,
                         json.dumps(info))
        checks.run("authlib revoke_token", lambda: post.revoke_token(server.revoke_url, token=token["access_token"],
                                                                     token_type_hint="access_token").raise_for_status())
        check_active(checks, server, "introspect after authlib revoke: inactive", token["access_token"], False)

    # password grant, refresh rotation, replay
    basic = session()
    first = checks.run("authlib password grant (client_secret_basic)",
                       lambda: dict(basic.fetch_token(server.token_url, username=args.username, password=args.password)))
    if first:
        check_token_response(checks, "authlib password response", first, refresh=True)
        second = checks.run("authlib refresh_token", lambda: dict(basic.refresh_token(server.token_url, refresh_token=first["refresh_token"])))
        if second:
            check_token_response(checks, "authlib refresh response", second, refresh=True)
            checks.check("authlib refresh rotates the refresh token", second.get("refresh_token") != first["refresh_token"])
            checks.expect_error("authlib replayed refresh token -> invalid_grant",
                                lambda: session().refresh_token(server.token_url, refresh_token=first["refresh_token"]),
                                "invalid_grant")
            checks.expect_error("authlib rotated refresh token dead after replay -> invalid_grant",
                                lambda: session().refresh_token(server.token_url, refresh_token=second["refresh_token"]),
                                "invalid_grant")
            check_active(checks, server, "authlib rotated access token inactive after replay", second["access_token"], False)

    # revoking a refresh token (RFC 7009 §2.1: and its access token, when the server supports it)
    third = checks.run("authlib password grant (client_secret_post)",
                       lambda: dict(post.fetch_token(server.token_url, username=args.username, password=args.password)))
    if third:
        checks.run("authlib revoke refresh token", lambda: post.revoke_token(server.revoke_url, token=third["refresh_token"],
                                                                             token_type_hint="refresh_token").raise_for_status())
        checks.expect_error("revoked refresh token -> invalid_grant",
                            lambda: session().refresh_token(server.token_url, refresh_token=third["refresh_token"]),
                            "invalid_grant")

    authorization_code_flow(args, checks, server, session)


def authorization_code_flow(args, checks, server, session):
    """authorization_code + PKCE S256 with authlib, the page walked with requests."""
    from authlib.common.security import generate_token

    redirect_uri = args.redirect_uri
    driver = AuthorizeDriver(server, redirect_uri, args.scope)
    client = session(redirect_uri=redirect_uri, code_challenge_method="S256")
    verifier = generate_token(64)
    url, state = client.create_authorization_url(server.authorize_url, code_verifier=verifier)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    checks.check("authlib authorization URL carries an S256 challenge",
                 query.get("code_challenge_method") == "S256" and len(query.get("code_challenge", "")) == 43, url)

    response, form = driver.open(url)
    if not checks.check("authorize page: 200 HTML", response.status_code == 200 and "text/html" in response.headers.get("Content-Type", ""),
                        "%d %s" % (response.status_code, response.headers.get("Content-Type"))):
        return
    cookie = driver.http.cookies.get("__Host-tollgate-csrf")
    set_cookie = response.headers.get("Set-Cookie", "")
    checks.check("authorize page sets the __Host- CSRF cookie (Secure; HttpOnly; SameSite=Strict; Path=/)",
                 cookie and all(part in set_cookie.lower() for part in ("secure", "httponly", "samesite=strict", "path=/"))
                 and "domain=" not in set_cookie.lower(), set_cookie)
    checks.check("authorize page: form with username, password, approve, deny and csrf_token",
                 form.method == "post" and {"username", "password", "csrf_token"} <= set(form.inputs)
                 and {"approve", "deny"} <= set(form.buttons), "inputs %s buttons %s" % (sorted(form.inputs), sorted(form.buttons)))
    checks.check("authorize page: csrf_token field equals the cookie", form.hidden().get("csrf_token") == cookie)
    checks.check("authorize page: no-store and frame protection",
                 "no-store" in response.headers.get("Cache-Control", "")
                 and ("frame-ancestors 'none'" in response.headers.get("Content-Security-Policy", "")
                      or response.headers.get("X-Frame-Options", "").upper() == "DENY"), dict(response.headers))

    # a forged submission: no cookie
    forged = driver.submit(form, {"username": args.username, "password": args.password, "action": "approve"}, cookies=False)
    checks.check("form posted without the CSRF cookie -> 403", forged.status_code == 403 and "Location" not in forged.headers,
                 "%d %s" % (forged.status_code, forged.headers.get("Location")))

    # a wrong password re-renders the page
    wrong = driver.submit(form, {"username": args.username, "password": args.password + "-wrong", "action": "approve"})
    rerendered = read_form(wrong.text) if wrong.status_code == 200 else None
    checks.check("wrong password: page again with #error, no redirect",
                 wrong.status_code == 200 and rerendered is not None and rerendered.error_text
                 and "Location" not in wrong.headers, "%d %s" % (wrong.status_code, wrong.text[:200]))

    # the right password: 302 with code and state
    approved = driver.submit(rerendered or form, {"username": args.username, "password": args.password, "action": "approve"})
    location = approved.headers.get("Location")
    parameters = {}
    try:
        parameters = redirect_parameters(location, redirect_uri) if approved.status_code == 302 else {}
    except AssertionError as error:
        checks.fail("sign-in and approve -> 302 to the redirect URI", error)
    else:
        checks.check("sign-in and approve -> 302 to the redirect URI with code and state",
                     approved.status_code == 302 and parameters.get("code") and parameters.get("state") == state,
                     "%d Location %s (state sent %s)" % (approved.status_code, location, state))
    if not parameters.get("code"):
        return

    tokens = checks.run("authlib exchanges the code with its code_verifier",
                        lambda: dict(client.fetch_token(server.token_url, authorization_response=location, code_verifier=verifier)))
    if tokens:
        check_token_response(checks, "authorization_code response", tokens, refresh=True)
        check_active(checks, server, "authorization_code access token active, issued to the user", tokens["access_token"], True,
                     username=args.username)
    checks.expect_error("same code exchanged again -> invalid_grant",
                        lambda: session(redirect_uri=redirect_uri).fetch_token(server.token_url, code=parameters["code"],
                                                                              code_verifier=verifier),
                        "invalid_grant")
    if tokens:
        check_active(checks, server, "tokens of a replayed code are revoked (RFC 6749 §4.1.2)", tokens["access_token"], False)
        checks.expect_error("refresh token of a replayed code -> invalid_grant",
                            lambda: session().refresh_token(server.token_url, refresh_token=tokens["refresh_token"]),
                            "invalid_grant")

    # a wrong code_verifier (RFC 7636 §4.6)
    code = obtain_code(driver, args, checks, "second code for the wrong-verifier check")
    if code:
        checks.expect_error("wrong code_verifier -> invalid_grant",
                            lambda: session(redirect_uri=redirect_uri).fetch_token(server.token_url, code=code[0],
                                                                                  code_verifier=pkce_pair()[0]),
                            "invalid_grant")

    # deny
    verifier2, challenge2 = pkce_pair()
    deny_state = secrets.token_urlsafe(12)
    response, form = driver.open(authorize_url(server, args, challenge2, deny_state))
    if form is not None:
        denied = driver.submit(form, {"action": "deny"})
        try:
            got = redirect_parameters(denied.headers.get("Location"), redirect_uri)
            checks.check("deny -> 302 error=access_denied with state", denied.status_code == 302 and got.get("error") == "access_denied"
                         and got.get("state") == deny_state and "code" not in got, denied.headers.get("Location"))
        except AssertionError as error:
            checks.fail("deny -> 302 error=access_denied with state", "%d %s" % (denied.status_code, error))
    else:
        checks.fail("deny -> 302 error=access_denied with state", "authorize page answered %d" % response.status_code)

    # RFC 6749 §4.1.3: redirect_uri is required at the token endpoint when
    # the authorization request carried one (as every request here does).
    code = obtain_code(driver, args, checks, "third code for the missing-redirect_uri check")
    if code:
        checks.expect_error("code exchanged without the redirect_uri of its request -> invalid_grant (RFC 6749 §4.1.3)",
                            lambda: session().fetch_token(server.token_url, grant_type="authorization_code", code=code[0],
                                                          code_verifier=code[1]),
                            "invalid_grant")

    # Errors reported at the redirect URI (RFC 6749 §4.1.2.1), with the state.
    for name, url, code in (
            ("authorize without code_challenge -> error=invalid_request at the redirect URI (RFC 7636 §4.4.1)",
             authorize_url(server, args, None, "s-" + secrets.token_urlsafe(8)), "invalid_request"),
            ("authorize with response_type=token -> error=unsupported_response_type at the redirect URI",
             authorize_url(server, args, pkce_pair()[1], "s-" + secrets.token_urlsafe(8)).replace("response_type=code", "response_type=token"),
             "unsupported_response_type")):
        response = driver.http.get(url, timeout=server.timeout, allow_redirects=False)
        state_sent = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["state"]
        try:
            got = redirect_parameters(response.headers.get("Location"), redirect_uri)
        except AssertionError as error:
            checks.fail(name, "%d %s" % (response.status_code, error))
            continue
        checks.check(name, response.status_code == 302 and got.get("error") == code, response.headers.get("Location"))
        checks.check(name.split(" -> ")[0] + ": the error redirect carries the state (RFC 6749 §4.1.2.1)", got.get("state") == state_sent,
                     "sent state=%s, got Location %s" % (state_sent, response.headers.get("Location")))

    # a redirect URI that is not the registered one: shown to the user, never redirected (RFC 6749 §4.1.2.1)
    evil = authorize_url(server, args, pkce_pair()[1], "x", redirect_uri="https://attacker.invalid/cb")
    response = driver.http.get(evil, timeout=server.timeout, allow_redirects=False)
    checks.check("unregistered redirect_uri -> 400 page, no redirect", response.status_code == 400 and "Location" not in response.headers,
                 "%d %s" % (response.status_code, response.headers.get("Location")))


def authorize_url(server, args, challenge, state, redirect_uri=None):
    parameters = [("response_type", "code"), ("client_id", args.client_id), ("redirect_uri", redirect_uri or args.redirect_uri),
                  ("state", state)]
    if args.scope:
        parameters.append(("scope", args.scope))
    if challenge:
        parameters += [("code_challenge", challenge), ("code_challenge_method", "S256")]
    return server.authorize_url + "?" + urllib.parse.urlencode(parameters)


def obtain_code(driver, args, checks, name):
    """Signs in once more; (code, verifier) or None (reported as failed)."""
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(12)
    response, form = driver.open(authorize_url(driver.server, args, challenge, state))
    if form is None:
        checks.fail(name, "authorize page answered %d" % response.status_code)
        return None
    approved = driver.submit(form, {"username": args.username, "password": args.password, "action": "approve"})
    try:
        got = redirect_parameters(approved.headers.get("Location"), args.redirect_uri)
    except AssertionError as error:
        checks.fail(name, "%d %s" % (approved.status_code, error))
        return None
    if not got.get("code") or got.get("state") != state:
        checks.fail(name, approved.headers.get("Location"))
        return None
    checks.ok(name)
    return got["code"], verifier


# --------------------------------------------------------------------------
# JWT access tokens and the JWKS


def cmd_jwt(args, checks):
    import jwt

    server = Server(args)
    context = ssl.create_default_context(cafile=server.ca)

    metadata = checks.run("GET /.well-known/oauth-authorization-server", lambda: fetch_json(server.metadata_url, server))
    if not metadata:
        return
    issuer = metadata.get("issuer", "")
    parsed = urllib.parse.urlsplit(issuer)
    checks.check("metadata issuer is an https URL without query or fragment",
                 parsed.scheme == "https" and parsed.netloc and not parsed.query and not parsed.fragment, issuer)
    required = ["issuer", "token_endpoint", "jwks_uri", "response_types_supported"]
    checks.check("metadata has the RFC 8414 §2 required members", all(metadata.get(m) for m in required),
                 "missing %s" % [m for m in required if not metadata.get(m)])
    checks.check("metadata advertises S256 PKCE and the grants",
                 "S256" in metadata.get("code_challenge_methods_supported", [])
                 and {"authorization_code", "client_credentials", "refresh_token"} <= set(metadata.get("grant_types_supported", [])),
                 json.dumps(metadata)[:300])
    # RFC 8414 §3.3: the issuer's own well-known URL must give the same issuer.
    again = checks.run("metadata fetched again under the issuer's URL",
                       lambda: fetch_json(issuer.rstrip("/") + "/.well-known/oauth-authorization-server", server))
    if again is not None:
        checks.check("metadata issuer identical under the issuer's URL (RFC 8414 §3.3)", again.get("issuer") == issuer,
                     "%r vs %r" % (again.get("issuer"), issuer))

    jwks_uri = metadata.get("jwks_uri")
    jwks = checks.run("GET jwks_uri", lambda: fetch_json(jwks_uri, server))
    if not jwks:
        return
    keys = jwks.get("keys", [])
    kids = [k.get("kid") for k in keys]
    checks.check("JWKS: P-256 EC keys, each with a distinct kid, no private parts",
                 keys and all(k.get("kty") == "EC" and k.get("crv") == "P-256" and k.get("kid") and "d" not in k for k in keys)
                 and len(set(kids)) == len(kids), json.dumps(jwks)[:400])
    checks.run("PyJWKSet reads the JWKS", lambda: jwt.PyJWKSet.from_dict(jwks))

    client = jwt.PyJWKClient(jwks_uri, ssl_context=context, cache_jwk_set=False, timeout=server.timeout)

    def verify(token):
        key = client.get_signing_key_from_jwt(token)
        return jwt.decode(token, key=key.key, algorithms=["ES256"], audience=args.client_id, issuer=issuer,
                          options={"require": ["exp", "iat", "iss", "sub", "aud"]}, leeway=5)

    if args.expect == "invalid":
        if not args.token:
            sys.stderr.write("--expect invalid needs --token\n")
            sys.exit(2)
        old_kid = jwt.get_unverified_header(args.token).get("kid")
        checks.check("old token's kid is no longer in the JWKS", old_kid not in kids, "kid %s still listed: %s" % (old_kid, kids))
        try:
            verify(args.token)
        except jwt.PyJWTError as error:
            sys.stderr.write("old token rejected with %s: %s\n" % (type(error).__name__, error))
            checks.ok("old token does not verify against the current JWKS")
        else:
            checks.fail("old token does not verify against the current JWKS", "it verified")
        # The JWKS itself still works for a token issued now.
        fresh = checks.run("fresh client_credentials token", lambda: server.client_credentials()["access_token"])
        if fresh:
            claims = checks.run("fresh token verifies against the current JWKS", lambda: verify(fresh))
            if claims:
                check_claims(checks, claims, args, issuer, prefix="fresh token")
        return

    token = args.token
    if not token:
        token = checks.run("client_credentials token for the JWT application", lambda: server.client_credentials()["access_token"])
        if not token:
            return
    header = checks.run("token is a JWS (header readable)", lambda: jwt.get_unverified_header(token))
    if header is None:
        return
    checks.check("JWT header: alg ES256, kid of the JWKS", header.get("alg") == "ES256" and header.get("kid") in kids,
                 "header %s, JWKS kids %s" % (header, kids))
    claims = checks.run("PyJWT verifies the token (ES256, aud = client id, iss = metadata issuer)", lambda: verify(token))
    if not claims:
        return
    check_claims(checks, claims, args, issuer)
    # with the JWKS as a set, not through the client
    key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]].key
    checks.run("PyJWKSet key by kid verifies the token",
               lambda: jwt.decode(token, key=key, algorithms=["ES256"], audience=args.client_id, issuer=issuer))
    negatives = (
        ("wrong audience rejected", token, {"audience": args.client_id + "-other", "issuer": issuer}, jwt.InvalidAudienceError),
        ("wrong issuer rejected", token, {"audience": args.client_id, "issuer": issuer + "/other"}, jwt.InvalidIssuerError),
        ("token with a changed claim rejected", tamper(token), {"audience": args.client_id, "issuer": issuer},
         jwt.InvalidSignatureError),
    )
    for name, candidate, options, expected in negatives:
        try:
            jwt.decode(candidate, key=key, algorithms=["ES256"], **options)
        except expected:
            checks.ok(name)
        except jwt.PyJWTError as error:
            checks.fail(name, "rejected, but with %s: %s" % (type(error).__name__, error))
        else:
            checks.fail(name, "it verified")


def check_claims(checks, claims, args, issuer, prefix="token"):
    now = time.time()
    problems = []
    for name in ("iss", "sub", "aud", "azp", "client_id", "aut", "scope", "iat", "nbf", "exp", "jti"):
        if name not in claims:
            problems.append("no %s" % name)
    if claims.get("iss") != issuer:
        problems.append("iss %r" % claims.get("iss"))
    if claims.get("aud") != args.client_id and not (isinstance(claims.get("aud"), list) and args.client_id in claims["aud"]):
        problems.append("aud %r" % claims.get("aud"))
    if claims.get("azp") != args.client_id or claims.get("client_id") != args.client_id:
        problems.append("azp %r client_id %r" % (claims.get("azp"), claims.get("client_id")))
    if claims.get("aut") not in ("APPLICATION", "APPLICATION_USER"):
        problems.append("aut %r" % claims.get("aut"))
    if not (isinstance(claims.get("iat"), int) and claims["iat"] <= now + 5 and claims.get("exp", 0) > now):
        problems.append("iat %r exp %r now %d" % (claims.get("iat"), claims.get("exp"), now))
    checks.check("%s claims (iss, sub, aud, azp, client_id, aut, scope, iat, nbf, exp, jti)" % prefix, not problems,
                 "; ".join(problems) + " in " + json.dumps(claims)[:300])


def tamper(token):
    """The token with its `sub` claim changed and the old signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = str(claims.get("sub", "")) + "-admin"
    changed = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).rstrip(b"=").decode()
    return ".".join((header, changed, signature))


def fetch_json(url, server):
    response = server.http.get(url, timeout=server.timeout)
    if response.status_code != 200:
        raise AssertionError("%s answered %d" % (url, response.status_code))
    return response.json()


# --------------------------------------------------------------------------
# raw shapes with curl


class Curl:
    """Runs curl and returns (status, headers as a lower-case dict, body)."""

    def __init__(self, server):
        self.server = server
        self.curl = shutil.which("curl")
        if not self.curl:
            sys.stderr.write("curl is not on PATH\n")
            sys.exit(2)

    def __call__(self, method, path, form=None, user=None, headers=(), content_type="application/x-www-form-urlencoded"):
        with tempfile.TemporaryDirectory() as scratch:
            head = os.path.join(scratch, "headers")
            body = os.path.join(scratch, "body")
            command = [self.curl, "-sS", "--cacert", self.server.ca, "-X", method, "-D", head, "-o", body,
                       "--max-time", str(self.server.timeout), "-w", "%{http_code}"]
            if user is not None:
                command += ["-u", "%s:%s" % user]
            for header in headers:
                command += ["-H", header]
            if form is not None:
                # Raw bytes, exactly as given (repeated names stay repeated).
                command += ["-H", "Content-Type: " + content_type, "--data-binary", form]
            command.append(self.server.base + path)
            done = subprocess.run(command, capture_output=True, text=True, timeout=self.server.timeout + 10)
            if done.returncode != 0:
                raise AssertionError("curl failed (%d): %s" % (done.returncode, done.stderr.strip()))
            with open(head, encoding="latin-1") as f:
                lines = f.read().splitlines()
            with open(body, "rb") as f:
                content = f.read()
        fields = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                fields.setdefault(name.strip().lower(), value.strip())
        return int(done.stdout.strip() or 0), fields, content


def json_error(content):
    try:
        value = json.loads(content)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def cmd_raw(args, checks):
    server = Server(args)
    curl = Curl(server)
    client = (args.client_id, args.client_secret)

    def error_shape(name, result, status, code, www_authenticate=False):
        got_status, fields, content = result
        body = json_error(content)
        problems = []
        if got_status != status:
            problems.append("status %d, expected %d" % (got_status, status))
        if not body or body.get("error") != code:
            problems.append("body %r, expected error %s" % (content[:200], code))
        elif not isinstance(body.get("error_description", ""), str):
            problems.append("error_description is not a string")
        if not fields.get("content-type", "").startswith("application/json"):
            problems.append("Content-Type %r" % fields.get("content-type"))
        if "no-store" not in fields.get("cache-control", ""):
            problems.append("Cache-Control %r (RFC 6749 §5.1: no-store)" % fields.get("cache-control"))
        if www_authenticate and not fields.get("www-authenticate", "").lower().startswith("basic"):
            problems.append("WWW-Authenticate %r (RFC 6749 §5.2: required with 401 for Basic)" % fields.get("www-authenticate"))
        checks.check(name, not problems, "; ".join(problems))

    def attempt(name, function):
        try:
            return function()
        except Exception as error:  # noqa: BLE001
            checks.fail(name, error)
            return None

    cases = [
        ("missing grant_type -> 400 invalid_request", lambda: curl("POST", "/oauth2/token", form="scope=x", user=client),
         400, "invalid_request", False),
        ("bad secret via Basic -> 401 invalid_client with WWW-Authenticate",
         lambda: curl("POST", "/oauth2/token", form="grant_type=client_credentials", user=(args.client_id, args.client_secret + "x")),
         401, "invalid_client", True),
        ("unknown client via Basic -> 401 invalid_client",
         lambda: curl("POST", "/oauth2/token", form="grant_type=client_credentials", user=("no-such-client-" + secrets.token_hex(4), "x")),
         401, "invalid_client", True),
        ("bad secret in the body -> 401 invalid_client",
         lambda: curl("POST", "/oauth2/token", form="grant_type=client_credentials&client_id=%s&client_secret=wrong" %
                      urllib.parse.quote(args.client_id)),
         401, "invalid_client", False),
        ("unsupported grant -> 400 unsupported_grant_type",
         lambda: curl("POST", "/oauth2/token", form="grant_type=urn%3Aexample%3Anope", user=client), 400, "unsupported_grant_type", False),
        ("implicit as a grant_type -> 400 unsupported_grant_type",
         lambda: curl("POST", "/oauth2/token", form="grant_type=implicit", user=client), 400, "unsupported_grant_type", False),
        ("repeated parameter -> 400 invalid_request (RFC 6749 §3.2)",
         lambda: curl("POST", "/oauth2/token", form="grant_type=client_credentials&grant_type=client_credentials", user=client),
         400, "invalid_request", False),
        ("Basic and client_secret in the body at once -> 400 invalid_request (RFC 6749 §2.3)",
         lambda: curl("POST", "/oauth2/token", form="grant_type=client_credentials&client_secret=%s" % urllib.parse.quote(args.client_secret),
                      user=client),
         400, "invalid_request", False),
        ("JSON body instead of a form -> 400 invalid_request",
         lambda: curl("POST", "/oauth2/token", form='{"grant_type":"client_credentials"}', user=client,
                      content_type="application/json"),
         400, "invalid_request", False),
        ("refresh_token grant with an unknown token -> 400 invalid_grant",
         lambda: curl("POST", "/oauth2/token", form="grant_type=refresh_token&refresh_token=" + secrets.token_urlsafe(32), user=client),
         400, "invalid_grant", False),
        ("authorization_code grant with an unknown code -> 400 invalid_grant",
         lambda: curl("POST", "/oauth2/token", form="grant_type=authorization_code&code=%s&code_verifier=%s" %
                      (secrets.token_urlsafe(32), secrets.token_urlsafe(48)), user=client),
         400, "invalid_grant", False),
        ("introspect with a bad secret -> 401 invalid_client",
         lambda: curl("POST", "/oauth2/introspect", form="token=abc", user=(args.client_id, args.client_secret + "x")),
         401, "invalid_client", True),
        ("revoke without a token -> 400 invalid_request",
         lambda: curl("POST", "/oauth2/revoke", form="token_type_hint=access_token", user=client), 400, "invalid_request", False),
    ]
    for name, function, status, code, www in cases:
        result = attempt(name, function)
        if result:
            error_shape(name, result, status, code, www)

    # 405 for other methods (RFC 9110 §15.5.6: with Allow)
    for method, path in (("GET", "/oauth2/token"), ("PUT", "/oauth2/token"), ("GET", "/oauth2/revoke"), ("GET", "/oauth2/introspect")):
        name = "%s %s -> 405 with Allow: POST" % (method, path)
        result = attempt(name, lambda: curl(method, path))
        if result:
            checks.check(name, result[0] == 405 and "POST" in result[1].get("allow", ""), "status %d Allow %r" % (result[0], result[1].get("allow")))

    # a successful token response
    name = "client_credentials via curl -> 200 Bearer, no refresh_token"
    result = attempt(name, lambda: curl("POST", "/oauth2/token", form="grant_type=client_credentials", user=client))
    access = None
    if result:
        status, fields, content = result
        body = json_error(content) or {}
        checks.check(name, status == 200 and body.get("token_type") == "Bearer" and body.get("access_token")
                     and isinstance(body.get("expires_in"), int) and "refresh_token" not in body,
                     "%d %s" % (status, content[:300]))
        checks.check("token response: Cache-Control no-store and Pragma no-cache (RFC 6749 §5.1)",
                     "no-store" in fields.get("cache-control", "") and "no-cache" in fields.get("pragma", ""),
                     "Cache-Control %r Pragma %r" % (fields.get("cache-control"), fields.get("pragma")))
        checks.check("token response: Content-Type application/json", fields.get("content-type", "").startswith("application/json"),
                     fields.get("content-type"))
        access = body.get("access_token")

    name = "client_secret_post via curl -> 200"
    result = attempt(name, lambda: curl("POST", "/oauth2/token", form="grant_type=client_credentials&client_id=%s&client_secret=%s" %
                                        (urllib.parse.quote(args.client_id), urllib.parse.quote(args.client_secret))))
    if result:
        checks.check(name, result[0] == 200 and (json_error(result[2]) or {}).get("access_token"), "%d %s" % (result[0], result[2][:200]))

    name = "revoke an unknown token -> 200 (RFC 7009 §2.2)"
    result = attempt(name, lambda: curl("POST", "/oauth2/revoke", form="token=" + secrets.token_urlsafe(32), user=client))
    if result:
        checks.check(name, result[0] == 200, "status %d %s" % (result[0], result[2][:200]))
    name = "revoke with an unknown token_type_hint -> 200"
    result = attempt(name, lambda: curl("POST", "/oauth2/revoke", form="token=%s&token_type_hint=something_else" % secrets.token_urlsafe(32),
                                        user=client))
    if result:
        checks.check(name, result[0] == 200, "status %d %s" % (result[0], result[2][:200]))
    name = "introspect an unknown token -> 200 {\"active\": false}"
    result = attempt(name, lambda: curl("POST", "/oauth2/introspect", form="token=" + secrets.token_urlsafe(32), user=client))
    if result:
        checks.check(name, result[0] == 200 and json_error(result[2]) == {"active": False}, "%d %s" % (result[0], result[2][:200]))

    if access and args.other_client_id:
        other = (args.other_client_id, args.other_client_secret)
        name = "another client introspecting this client's token reads {\"active\": false}"
        result = attempt(name, lambda: curl("POST", "/oauth2/introspect", form="token=" + urllib.parse.quote(access), user=other))
        if result:
            checks.check(name, result[0] == 200 and json_error(result[2]) == {"active": False}, "%d %s" % (result[0], result[2][:200]))
        name = "another client revoking this client's token: 200 (ignored) or 400 unauthorized_client (RFC 7009 §2.1)"
        result = attempt(name, lambda: curl("POST", "/oauth2/revoke", form="token=" + urllib.parse.quote(access), user=other))
        if result:
            body = json_error(result[2]) or {}
            checks.check(name, result[0] == 200 or (result[0] == 400 and body.get("error") == "unauthorized_client"),
                         "%d %s" % (result[0], result[2][:200]))
            check_active(checks, server, "token still active for its owner after another client's revoke", access, True)

    if access:
        name = "revoke via curl, then introspect -> inactive"
        result = attempt(name, lambda: curl("POST", "/oauth2/revoke", form="token=%s&token_type_hint=access_token" % urllib.parse.quote(access),
                                            user=client))
        if result:
            checks.check("revoke via curl -> 200", result[0] == 200, "status %d" % result[0])
            check_active(checks, server, name, access, False)


# --------------------------------------------------------------------------


def main(argv=None):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--base", default=argparse.SUPPRESS, help="https://127.0.0.1:PORT of the oauth listener")
    common.add_argument("--ca", default=argparse.SUPPRESS, help="cluster CA certificate (PEM)")
    common.add_argument("--client-id", default=argparse.SUPPRESS)
    common.add_argument("--client-secret", default=argparse.SUPPRESS)
    common.add_argument("--username", default=argparse.SUPPRESS)
    common.add_argument("--password", default=argparse.SUPPRESS)
    common.add_argument("--scope", default=argparse.SUPPRESS, help="space-separated scopes to request")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="seconds per request (default 20)")

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[common],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("oauthlib", parents=[common], help="requests-oauthlib / oauthlib flows")
    p = sub.add_parser("authlib", parents=[common], help="authlib flows, authorization_code + PKCE without a browser")
    p.add_argument("--redirect-uri", required=True, help="the client's registered callback URL")
    p = sub.add_parser("jwt", parents=[common], help="metadata, JWKS and PyJWT verification")
    p.add_argument("--token", help="a JWT access token (pass as --token=VALUE); default: fetch one")
    p.add_argument("--expect", choices=("valid", "invalid"), default="valid")
    p = sub.add_parser("raw", parents=[common], help="raw RFC shapes with curl")
    p.add_argument("--other-client-id")
    p.add_argument("--other-client-secret")
    args = parser.parse_args(argv)

    defaults = {"username": None, "password": None, "scope": None, "timeout": 20.0}
    for name, value in defaults.items():
        if not hasattr(args, name):
            setattr(args, name, value)
    missing = [n for n in ("base", "ca", "client_id", "client_secret") if not getattr(args, n, None)]
    if missing:
        parser.error("required: %s" % ", ".join("--" + n.replace("_", "-") for n in missing))
    if not args.base.startswith("https://"):
        parser.error("--base must be an https URL")
    if args.command == "raw" and bool(args.other_client_id) != bool(args.other_client_secret):
        parser.error("--other-client-id and --other-client-secret go together")

    checks = Checks()
    command = {"oauthlib": cmd_oauthlib, "authlib": cmd_authlib, "jwt": cmd_jwt, "raw": cmd_raw}[args.command]
    try:
        command(args, checks)
    except SystemExit:
        raise
    except Exception as error:  # noqa: BLE001 - an unexpected crash is a failed check, not a traceback alone
        import traceback
        traceback.print_exc()
        checks.fail("%s (unexpected error)" % args.command, "%s: %s" % (type(error).__name__, error))
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
