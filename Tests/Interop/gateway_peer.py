#!/usr/bin/env python3
"""Drives a Tollgate gateway with stock HTTP clients (requests, and raw
sockets only for what no HTTP library sends: malformed and pipelined
requests, half-closed connections), checking WSO2's answers. Prints one
PASS/FAIL line per check and "done: N checks" at the end; exits non-zero on
any failure.
"""
import argparse
import base64
import json
import re
import socket
import sys
import time

import requests

failures = 0
checks = 0


def check(name, condition, detail=""):
    global failures, checks
    checks += 1
    if condition:
        print(f"PASS {name}", flush=True)
    else:
        failures += 1
        print(f"FAIL {name}: {detail}", flush=True)


def fault_code(response):
    try:
        return response.json()["fault"]["code"]
    except Exception:
        return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--https", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--context", required=True, help="/menu/1")
    parser.add_argument("--token", required=True)
    parser.add_argument("--jwt-token", required=True)
    parser.add_argument("--unsubscribed-token", required=True)
    parser.add_argument("--sandbox-token", required=True)
    parser.add_argument("--oauth", required=True, help="https://127.0.0.1:PORT")
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    arguments = parser.parse_args()

    base = arguments.http + arguments.context
    session = requests.Session()
    bearer = {"Authorization": f"Bearer {arguments.token}"}

    # Authentication matrix.
    response = session.get(base + "/echo")
    check("no token is 401 with 900902 and a challenge", response.status_code == 401 and fault_code(response) == 900902
          and "Bearer" in response.headers.get("WWW-Authenticate", ""), f"{response.status_code} {response.text}")
    response = session.get(base + "/echo", headers={"Authorization": "Bearer not-a-token"})
    check("a malformed token is 401 with 900901", response.status_code == 401 and fault_code(response) == 900901, response.text)
    forged = arguments.token[:-4] + ("AAAA" if not arguments.token.endswith("AAAA") else "BBBB")
    response = session.get(base + "/echo", headers={"Authorization": f"Bearer {forged}"})
    check("an unknown token is 401 with 900901", response.status_code == 401 and fault_code(response) == 900901, response.text)
    response = session.get(base + "/echo?x=1", headers={**bearer, "X-Forwarded-For": "203.0.113.9"})
    echoed = response.json() if response.status_code == 200 else {}
    headers = echoed.get("headers", {})
    check("a valid token reaches the backend", response.status_code == 200, f"{response.status_code} {response.text}")
    check("the backend gets the path below the context, with the query", echoed.get("path") == "/echo?x=1", echoed.get("path"))
    check("the token is not forwarded", "authorization" not in headers, headers)
    check("X-Forwarded-For appends the client", headers.get("x-forwarded-for", [""])[0].startswith("203.0.113.9, 127.0.0.1"), headers)
    check("X-Forwarded-Proto and a request id are set", headers.get("x-forwarded-proto") == ["http"] and headers.get("x-request-id"), headers)
    check("the response carries the request id", response.headers.get("X-Request-ID") == (headers.get("x-request-id") or [""])[0],
          response.headers)
    response = session.get(base + "/echo", headers=bearer)
    check("a cached token passes again", response.status_code == 200, response.text)
    response = session.get(base + "/echo", headers={"Authorization": f"Bearer {arguments.jwt_token}"})
    check("a JWT access token passes", response.status_code == 200, f"{response.status_code} {response.text}")
    # A JWT altered in transit, or naming a key no keymanager publishes, is refused on the gateway.
    header, payload, signature = arguments.jwt_token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["exp"] = claims["exp"] + 3600
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    response = session.get(base + "/echo", headers={"Authorization": f"Bearer {header}.{forged_payload}.{signature}"})
    check("a JWT with a changed payload is 401 with 900901", response.status_code == 401 and fault_code(response) == 900901, response.text)
    fields = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    fields["kid"] = "no-such-key"
    other_header = base64.urlsafe_b64encode(json.dumps(fields).encode()).rstrip(b"=").decode()
    response = session.get(base + "/echo", headers={"Authorization": f"Bearer {other_header}.{payload}.{signature}"})
    check("a JWT naming an unknown signing key is 401 with 900901", response.status_code == 401 and fault_code(response) == 900901, response.text)
    response = session.get(base + "/echo", headers={"Authorization": f"Bearer {arguments.unsubscribed_token}"})
    check("a token of an application not subscribed is 403 with 900908", response.status_code == 403 and fault_code(response) == 900908,
          f"{response.status_code} {response.text}")
    response = session.get(base + "/echo", headers={"Authorization": f"Bearer {arguments.sandbox_token}"})
    check("a sandbox token on an API without sandbox endpoints is 401 with 900901", response.status_code == 401 and fault_code(response) == 900901,
          f"{response.status_code} {response.text}")
    response = session.get(base + "/open")
    check("a resource with auth type None needs no token", response.status_code == 200, f"{response.status_code} {response.text}")
    response = session.get(base + "/echo", headers={"Accept": "application/xml"})
    check("an XML-only client gets the fault as XML", response.status_code == 401 and response.text.startswith("<ams:fault")
          and "<ams:code>900902</ams:code>" in response.text, response.text)

    # Routing.
    response = session.get(arguments.http + "/no-such-api/1/echo", headers=bearer)
    check("no API at the path is 404", response.status_code == 404, response.status_code)
    response = session.get(base + "/nothing-here", headers=bearer)
    check("no resource is 403 with 900906", response.status_code == 403 and fault_code(response) == 900906, response.text)
    response = session.delete(base + "/echo", headers=bearer)
    check("a verb the resource lacks is 405 with Allow", response.status_code == 405 and "GET" in response.headers.get("Allow", ""),
          f"{response.status_code} {response.headers}")
    response = session.get(base + "/items/42", headers=bearer)
    check("a URI template matches a path parameter", response.status_code == 200 and response.json().get("path") == "/items/42", response.text)
    response = session.head(base + "/echo", headers=bearer)
    check("HEAD is answered without a body", response.status_code == 200 and response.content == b"", response.status_code)

    # HTTPS, verified against the cluster CA.
    response = requests.get(arguments.https + arguments.context + "/echo", headers=bearer, verify=arguments.ca)
    check("HTTPS with the same token", response.status_code == 200
          and response.json().get("headers", {}).get("x-forwarded-proto") == ["https"], response.text)

    # Limits.
    response = session.get(base + "/echo", headers={**bearer, "X-Big": "a" * 20000})
    check("an oversize header block is 431", response.status_code == 431, response.status_code)
    response = session.get(base + "/slow?seconds=5", headers=bearer)
    check("a backend slower than its read timeout is 504", response.status_code == 504, f"{response.status_code} {response.text}")
    response = session.get(base + "/echo", headers=bearer)
    check("traffic continues after a backend timeout", response.status_code == 200, response.status_code)

    # A slow-header client is cut off, and others are served meanwhile.
    host, port = arguments.http.split("//")[1].split(":")
    slow = socket.create_connection((host, int(port)))
    slow.sendall(b"GET " + arguments.context.encode() + b"/open HTTP/1.1\r\nHost: x\r\n")
    response = session.get(base + "/open")
    check("normal traffic passes while a client dawdles over its headers", response.status_code == 200, response.status_code)
    slow.settimeout(20)
    answer = b""
    try:
        while True:
            data = slow.recv(4096)
            if not data:
                break
            answer += data
    except socket.timeout:
        pass
    check("the slow-header client gets 408 and is closed", answer.startswith(b"HTTP/1.1 408"), answer[:80])

    # Pipelining, malformed bytes after a good request, and a client that
    # half-closes its connection once its request is sent.
    def raw_exchange(payload, half_close=False):
        connection = socket.create_connection((host, int(port)))
        connection.settimeout(20)
        connection.sendall(payload)
        if half_close:
            connection.shutdown(socket.SHUT_WR)
        received, closed = b"", False
        try:
            while True:
                data = connection.recv(65536)
                if not data:
                    closed = True
                    break
                received += data
        except socket.timeout:
            pass
        connection.close()
        return received, closed

    def raw_request(path, close=False):
        return (b"GET " + arguments.context.encode() + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + arguments.token.encode() + b"\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n")

    received, closed = raw_exchange(raw_request(b"/echo?n=1") + raw_request(b"/open") + raw_request(b"/echo?n=3", close=True))
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", received)
    order = re.findall(rb'"path": "/echo\?n=(\d)"', received)
    check("three pipelined requests are answered in order, the last closing the connection",
          statuses == [b"200"] * 3 and order == [b"1", b"3"] and closed, f"{statuses} {order} closed={closed}")
    received, closed = raw_exchange(raw_request(b"/echo?n=1") + b"GET /x HTTP/1.1\r\nBad Header: y\r\n\r\n")
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", received)
    check("malformed bytes after a good request: it is answered, then 400 and the connection closes",
          statuses == [b"200", b"400"] and closed, f"{statuses} closed={closed}")
    received, closed = raw_exchange(raw_request(b"/echo?n=1"), half_close=True)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", received)
    check("a client that half-closes after its request gets the answer, then the connection closes",
          statuses == [b"200"] and b'"path": "/echo?n=1"' in received and closed, f"{statuses} closed={closed}")

    # Revocation reaches a gateway holding a cached success.
    revoked = requests.post(arguments.oauth + "/oauth2/token", data={"grant_type": "client_credentials"},
                            auth=(arguments.client_id, arguments.client_secret), verify=arguments.ca).json()["access_token"]
    headers = {"Authorization": f"Bearer {revoked}"}
    response = session.get(base + "/echo", headers=headers)
    check("a fresh token passes (and is cached)", response.status_code == 200, response.text)
    requests.post(arguments.oauth + "/oauth2/revoke", data={"token": revoked}, auth=(arguments.client_id, arguments.client_secret),
                  verify=arguments.ca).raise_for_status()
    revoked_at = time.monotonic()
    refused_after = None
    while time.monotonic() - revoked_at < 10:
        response = session.get(base + "/echo", headers=headers)
        if response.status_code == 401:
            refused_after = time.monotonic() - revoked_at
            break
        time.sleep(0.01)
    print(f"measured: revoked token refused after {refused_after if refused_after is None else round(refused_after * 1000)} ms", flush=True)
    check("a revoked token is refused although it was cached", refused_after is not None and fault_code(response) == 900901, response.text)

    print(f"done: {checks} checks, {failures} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
