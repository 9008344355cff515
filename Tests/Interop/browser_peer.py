#!/usr/bin/env python3
"""A real browser (headless Chromium through Selenium and chromedriver)
on Tollgate's sign-in and consent page (GET/POST /oauth2/authorize).

  browser_peer.py free-port
      Prints a free TCP port on 127.0.0.1 and exits. Register the client's
      callback as http://127.0.0.1:<port>/cb with it, then pass the same
      port (or the whole URL) to `run`.

  browser_peer.py run --base https://127.0.0.1:PORT --ca CA.pem
                      --client-id ID --client-secret SECRET
                      --username U --password P
                      (--redirect-uri http://127.0.0.1:N/PATH | --listen-port N)
                      [--scope "a b"] [--screenshots DIR]
                      [--chromium /usr/bin/chromium] [--chromedriver /usr/bin/chromedriver]
                      [--accept-insecure-certs] [--timeout SECONDS]
      The script serves the redirect URI itself (a small http.server on
      127.0.0.1; --listen-port N means http://127.0.0.1:N/cb), so the
      client must have been registered with exactly that callback and the
      authorization_code grant. Checks, one line each (`ok <name>` or
      `FAIL <name>: <why>`, then `done: N ok, N FAIL`; exit 0 only when all
      passed):
        - the page renders in the browser (no certificate interstitial),
          with #username, #password, #approve, #deny and the CSRF cookie;
        - a wrong password is refused: #error is shown, the browser stays
          on the authorization server, nothing reaches the callback;
        - the right password and #approve land the browser on the
          redirect URI with a `code` and the same `state`;
        - the code is exchanged for tokens with PKCE (code_verifier) using
          requests; the access token introspects as the user's;
        - a forged form POST without the CSRF cookie (requests) -> 403,
          and a cross-site page that auto-submits the form in the browser
          (guessed csrf_token) -> 403, no redirect;
        - #deny lands on the redirect URI with error=access_denied and the
          state, without a code.

Certificates: the server's certificate is first fetched and verified in
Python against --ca (and the host name), and only that certificate's key is
then trusted by Chromium (--ignore-certificate-errors-spki-list, with a
throwaway profile), so no other certificate error is ignored.
--accept-insecure-certs instead sets WebDriver's acceptInsecureCerts for
the session (a fallback for a Chromium that ignores the SPKI list).
Chromium runs headless with --no-sandbox (tests may run as root).

Debian packages: chromium, chromium-driver. PyPI (tools/requirements.txt):
selenium, requests, cryptography.
"""

import argparse
import base64
import hashlib
import html
import http.server
import os
import queue
import secrets
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import urllib.parse

import requests

CSRF_COOKIE = "__Host-tollgate-csrf"


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
        print("FAIL %s: %s" % (name, " ".join(str(why).split())[:600]), flush=True)

    def check(self, name, condition, why=""):
        if condition:
            self.ok(name)
        else:
            self.fail(name, why or "condition false")
        return bool(condition)

    def finish(self):
        # Not "N passed, N failed": CI reads that shape as a test runner's closing line.
        print("done: %d ok, %d FAIL" % (self.passed, self.failed), flush=True)
        return 0 if self.failed == 0 else 1


# --------------------------------------------------------------------------
# The callback server (the client's redirect URI)


class CallbackServer:
    """Serves the redirect URI on 127.0.0.1 and records every request to it.

    `/attack` serves a cross-site page that auto-submits a sign-in form to
    the authorization server with a guessed CSRF token (see `run`)."""

    def __init__(self, port, path):
        self.path = path
        self.hits = queue.Queue()
        self.attack_form = ""
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                split = urllib.parse.urlsplit(self.path)
                if split.path == "/attack":
                    body = owner.attack_form.encode()
                else:
                    owner.hits.put(self.path)
                    body = b"<!doctype html><title>callback</title><p id='callback'>received</p>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def received(self, timeout):
        """The next request path that reached the callback, or None."""
        try:
            return self.hits.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain(self):
        paths = []
        while True:
            try:
                paths.append(self.hits.get_nowait())
            except queue.Empty:
                return paths

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# Helpers


def pkce_pair():
    """An RFC 7636 code_verifier and its S256 code_challenge."""
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(48)).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def server_spki_hash(base, ca, timeout):
    """Base64 SHA-256 of the server certificate's SubjectPublicKeyInfo,
    after verifying the certificate against `ca` and the URL's host."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    url = urllib.parse.urlsplit(base)
    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection((url.hostname, url.port or 443), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=url.hostname) as tls:
            der = tls.getpeercert(binary_form=True)
    spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def http_session(ca):
    """requests with --ca only (environment CA bundles and proxies ignored)."""
    s = requests.Session()
    s.trust_env = False
    s.verify = ca
    return s


class Browser:
    """A headless Chromium session with its own throwaway profile."""

    def __init__(self, args, spki):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="tollgate-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = args.chromium
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                     "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                     "--disable-sync", "--disable-component-update", "--window-size=900,900",
                     "--user-data-dir=" + self.profile):
            options.add_argument(flag)
        if spki:
            options.add_argument("--ignore-certificate-errors-spki-list=" + spki)
        if args.accept_insecure_certs:
            options.accept_insecure_certs = True
        service = Service(executable_path=args.chromedriver, log_output=os.path.join(self.profile, "chromedriver.log"))
        self.driver = webdriver.Chrome(service=service, options=options)
        self.driver.set_page_load_timeout(args.timeout)
        self.timeout = args.timeout
        self.screenshots = args.screenshots
        self.shot = 0

    def find(self, element_id):
        from selenium.common.exceptions import NoSuchElementException
        from selenium.webdriver.common.by import By
        try:
            return self.driver.find_element(By.ID, element_id)
        except NoSuchElementException:
            return None

    def wait_for(self, condition, what):
        from selenium.webdriver.support.ui import WebDriverWait
        try:
            return WebDriverWait(self.driver, self.timeout, poll_frequency=0.1).until(lambda d: condition())
        except Exception as error:  # noqa: BLE001 - reported by the caller
            raise AssertionError("waited %ss for %s; at %s (%s)" % (self.timeout, what, self.driver.current_url,
                                                                     type(error).__name__)) from None

    def sign_in(self, username, password, button="approve"):
        """Fills the form and presses a button; returns before the next page loads."""
        field = self.find("username")
        field.clear()
        field.send_keys(username)
        secret = self.find("password")
        secret.clear()
        secret.send_keys(password)
        self.find(button).click()

    def screenshot(self, label):
        if self.screenshots:
            self.shot += 1
            os.makedirs(self.screenshots, exist_ok=True)
            self.driver.save_screenshot(os.path.join(self.screenshots, "%02d-%s.png" % (self.shot, label)))

    def close(self):
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


# --------------------------------------------------------------------------
# The checks


def run(args, checks):
    base = args.base.rstrip("/")
    authorize = base + "/oauth2/authorize"
    redirect = urllib.parse.urlsplit(args.redirect_uri)
    callback = CallbackServer(redirect.port, redirect.path)
    browser = None
    try:
        spki = None
        if not args.accept_insecure_certs:
            try:
                spki = server_spki_hash(base, args.ca, args.timeout)
            except Exception as error:  # noqa: BLE001
                checks.fail("server certificate verifies against --ca", error)
                return
            checks.ok("server certificate verifies against --ca")
        try:
            browser = Browser(args, spki)
        except Exception as error:  # noqa: BLE001
            checks.fail("chromium starts under chromedriver", "%s: %s" % (type(error).__name__, error))
            return
        checks.ok("chromium starts under chromedriver")
        flow(args, checks, browser, callback, base, authorize)
    finally:
        if browser:
            browser.close()
        callback.close()


def authorize_url(args, authorize, challenge, state):
    parameters = [("response_type", "code"), ("client_id", args.client_id), ("redirect_uri", args.redirect_uri),
                  ("state", state), ("code_challenge", challenge), ("code_challenge_method", "S256")]
    if args.scope:
        parameters.append(("scope", args.scope))
    return authorize + "?" + urllib.parse.urlencode(parameters)


def on_callback(driver, redirect_uri):
    url = urllib.parse.urlsplit(driver.current_url)
    expected = urllib.parse.urlsplit(redirect_uri)
    return (url.scheme, url.netloc, url.path) == (expected.scheme, expected.netloc, expected.path)


def flow(args, checks, browser, callback, base, authorize):
    driver = browser.driver
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)

    # 1. the page
    try:
        driver.get(authorize_url(args, authorize, challenge, state))
        browser.wait_for(lambda: browser.find("username") is not None or browser.find("error") is not None, "the sign-in form")
        if browser.find("username") is None:
            raise AssertionError("the server refused: %r" % browser.find("error").text)
    except Exception as error:  # noqa: BLE001
        browser.screenshot("no-page")
        checks.fail("sign-in page renders in Chromium", "%s (title %r)" % (error, driver.title))
        return
    browser.screenshot("sign-in")
    missing = [i for i in ("username", "password", "approve", "deny") if browser.find(i) is None]
    checks.check("sign-in page renders in Chromium with #username, #password, #approve, #deny", not missing,
                 "missing %s" % missing)
    cookie = driver.get_cookie(CSRF_COOKIE)
    checks.check("browser holds the CSRF cookie (Secure, HttpOnly, SameSite=Strict)",
                 cookie is not None and cookie.get("secure") and cookie.get("httpOnly") and cookie.get("sameSite") == "Strict",
                 "cookie %r" % (cookie,))

    # 2. a wrong password
    try:
        browser.sign_in(args.username, args.password + "-wrong")
        browser.wait_for(lambda: browser.find("error") is not None and browser.find("error").text.strip(), "#error")
        browser.screenshot("wrong-password")
        stayed = driver.current_url.startswith(base) and not on_callback(driver, args.redirect_uri)
        leaked = callback.received(0.5)
        checks.check("wrong password refused: #error shown, no redirect", stayed and leaked is None and browser.find("username") is not None,
                     "at %s, callback got %r, error %r" % (driver.current_url, leaked, browser.find("error").text))
    except Exception as error:  # noqa: BLE001
        browser.screenshot("wrong-password")
        checks.fail("wrong password refused: #error shown, no redirect", error)
        return

    # 3. the right password
    code = None
    try:
        browser.sign_in(args.username, args.password)
        browser.wait_for(lambda: on_callback(driver, args.redirect_uri), "the redirect URI")
        browser.screenshot("callback")
        got = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(driver.current_url).query))
        code = got.get("code")
        checks.check("sign-in and approve land on the redirect URI with code and the same state",
                     code and got.get("state") == state and "error" not in got, driver.current_url)
        hit = callback.received(args.timeout)
        hit_query = urllib.parse.parse_qs(urllib.parse.urlsplit(hit or "").query)
        checks.check("the callback server received the code", hit is not None and hit_query.get("code") == [code],
                     "callback got %r" % hit)
    except Exception as error:  # noqa: BLE001
        browser.screenshot("approve-failed")
        checks.fail("sign-in and approve land on the redirect URI with code and the same state", error)

    # 4. the code exchange, with PKCE, by requests
    http = http_session(args.ca)
    if code:
        response = http.post(base + "/oauth2/token", auth=(args.client_id, args.client_secret), timeout=args.timeout,
                             data={"grant_type": "authorization_code", "code": code, "redirect_uri": args.redirect_uri,
                                   "code_verifier": verifier})
        body = response.json() if response.headers.get("Content-Type", "").startswith("application/json") else {}
        if checks.check("code exchanged with its code_verifier -> access and refresh token",
                        response.status_code == 200 and body.get("access_token") and body.get("refresh_token")
                        and body.get("token_type") == "Bearer", "%d %s" % (response.status_code, response.text[:300])):
            info = http.post(base + "/oauth2/introspect", auth=(args.client_id, args.client_secret), timeout=args.timeout,
                             data={"token": body["access_token"]}).json()
            checks.check("the access token is the signed-in user's", info.get("active") is True and info.get("username") == args.username,
                         str(info))
        again = http.post(base + "/oauth2/token", auth=(args.client_id, args.client_secret), timeout=args.timeout,
                          data={"grant_type": "authorization_code", "code": code, "redirect_uri": args.redirect_uri,
                                "code_verifier": verifier})
        checks.check("the code works once -> invalid_grant", again.status_code == 400 and again.json().get("error") == "invalid_grant",
                     "%d %s" % (again.status_code, again.text[:200]))

    # 5. forgeries
    forged_state = secrets.token_urlsafe(12)
    fields = {"response_type": "code", "client_id": args.client_id, "redirect_uri": args.redirect_uri, "state": forged_state,
              "code_challenge": pkce_pair()[1], "code_challenge_method": "S256", "csrf_token": secrets.token_urlsafe(32),
              "username": args.username, "password": args.password, "action": "approve"}
    forged = http_session(args.ca).post(authorize, data=fields, timeout=args.timeout, allow_redirects=False)
    checks.check("forged POST without the CSRF cookie (requests) -> 403, no redirect",
                 forged.status_code == 403 and "Location" not in forged.headers,
                 "%d Location %s" % (forged.status_code, forged.headers.get("Location")))
    mismatched = http_session(args.ca).post(authorize, data=fields, timeout=args.timeout, allow_redirects=False,
                                            headers={"Cookie": "%s=%s" % (CSRF_COOKIE, secrets.token_urlsafe(32))})
    checks.check("forged POST whose cookie and csrf_token differ -> 403", mismatched.status_code == 403 and "Location" not in mismatched.headers,
                 "%d" % mismatched.status_code)

    # the same forgery from a cross-site page in the browser (which holds a real cookie)
    inputs = "".join('<input type="hidden" name="%s" value="%s">' % (html.escape(k), html.escape(v)) for k, v in fields.items())
    callback.attack_form = ('<!doctype html><title>elsewhere</title><form id="f" method="post" action="%s">%s</form>'
                            '<script>document.getElementById("f").submit()</script>' % (html.escape(authorize), inputs))
    callback.drain()
    try:
        driver.get("http://127.0.0.1:%d/attack" % callback.port)
        browser.wait_for(lambda: driver.current_url.startswith(authorize) and browser.find("error") is not None, "the refusal page")
        browser.screenshot("cross-site-forgery")
        leaked = callback.received(0.5)
        checks.check("cross-site auto-submitted form in the browser -> refused, no redirect",
                     leaked is None and browser.find("username") is None,
                     "callback got %r; page %s" % (leaked, driver.page_source[:200]))
    except Exception as error:  # noqa: BLE001
        browser.screenshot("cross-site-forgery")
        checks.fail("cross-site auto-submitted form in the browser -> refused, no redirect", error)

    # 6. deny
    deny_state = secrets.token_urlsafe(16)
    callback.drain()
    try:
        driver.get(authorize_url(args, authorize, pkce_pair()[1], deny_state))
        browser.wait_for(lambda: browser.find("deny") is not None, "the sign-in form")
        browser.find("deny").click()
        browser.wait_for(lambda: on_callback(driver, args.redirect_uri), "the redirect URI")
        browser.screenshot("denied")
        got = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(driver.current_url).query))
        checks.check("deny lands on the redirect URI with error=access_denied and the state, no code",
                     got.get("error") == "access_denied" and got.get("state") == deny_state and "code" not in got, driver.current_url)
    except Exception as error:  # noqa: BLE001
        browser.screenshot("deny-failed")
        checks.fail("deny lands on the redirect URI with error=access_denied and the state, no code", error)


# --------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("free-port", help="print a free TCP port on 127.0.0.1")
    p = sub.add_parser("run", help="drive the sign-in and consent page")
    p.add_argument("--base", required=True, help="https://127.0.0.1:PORT of the oauth listener")
    p.add_argument("--ca", required=True, help="cluster CA certificate (PEM)")
    p.add_argument("--client-id", required=True)
    p.add_argument("--client-secret", required=True)
    p.add_argument("--username", required=True)
    p.add_argument("--password", required=True)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--redirect-uri", help="the client's registered callback, http://127.0.0.1:N/PATH (served here)")
    where.add_argument("--listen-port", type=int, help="serve the callback at http://127.0.0.1:N/cb")
    p.add_argument("--scope", help="space-separated scopes to request")
    p.add_argument("--screenshots", help="directory for a PNG of each step")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    p.add_argument("--chromedriver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    p.add_argument("--accept-insecure-certs", action="store_true",
                   help="trust any certificate in the browser (WebDriver acceptInsecureCerts) instead of the server's key only")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for each page or request (default 20)")
    args = parser.parse_args(argv)

    if args.command == "free-port":
        print(free_port())
        return 0
    if args.listen_port is not None:
        args.redirect_uri = "http://127.0.0.1:%d/cb" % args.listen_port
    redirect = urllib.parse.urlsplit(args.redirect_uri)
    if redirect.scheme != "http" or redirect.hostname != "127.0.0.1" or not redirect.port:
        parser.error("--redirect-uri must be http://127.0.0.1:PORT/PATH (this script serves it)")
    if not args.base.startswith("https://"):
        parser.error("--base must be an https URL")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download a browser or driver

    checks = Checks()
    try:
        run(args, checks)
    except Exception as error:  # noqa: BLE001 - an unexpected crash is a failed check
        import traceback
        traceback.print_exc()
        checks.fail("browser run (unexpected error)", "%s: %s" % (type(error).__name__, error))
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
