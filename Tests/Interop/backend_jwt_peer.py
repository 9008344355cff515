#!/usr/bin/env python3
"""Checks the backend JWT a Tollgate gateway sends (WSO2's X-JWT-Assertion)
the way a backend would: with requests for the calls and PyJWT for the
signature, against the JWKS the gateway publishes. The backend is
Tests/Interop/backend_server.py, whose /echo answers the header fields it
received. Prints one PASS/FAIL line per check and "done: N checks" at the
end; exits non-zero on any failure.
"""
import argparse
import base64
import json
import sys

import jwt
import requests

failures = 0
checks = 0
WSO2 = "http://wso2.org/claims/"


def check(name, condition, detail=""):
    global failures, checks
    checks += 1
    if condition:
        print(f"PASS {name}", flush=True)
    else:
        failures += 1
        print(f"FAIL {name}: {detail}", flush=True)


def received(response, name):
    """The values of header `name` the backend received."""
    if response.status_code != 200:
        return None
    return response.json().get("headers", {}).get(name.lower(), [])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--with-jwt", required=True, help="context of the API with backend_jwt on, e.g. /jwt/1")
    parser.add_argument("--without-jwt", required=True, help="context of an API without it")
    parser.add_argument("--token", required=True)
    parser.add_argument("--jwt-token", required=True, help="a JWT access token, checked on the gateway alone")
    parser.add_argument("--application", required=True, help="the token's application name")
    parser.add_argument("--subscriber", required=True)
    parser.add_argument("--api-version", required=True)
    parser.add_argument("--tier", required=True)
    parser.add_argument("--header", default="X-JWT-Assertion")
    arguments = parser.parse_args()

    session = requests.Session()
    jwks = session.get(arguments.http + "/.well-known/jwks.json")
    check("the gateway publishes a JWKS", jwks.status_code == 200 and "keys" in jwks.json(), f"{jwks.status_code} {jwks.text}")
    key_set = jwt.PyJWKSet.from_dict(jwks.json())

    def verify(assertion):
        kid = jwt.get_unverified_header(assertion).get("kid")
        key = next(k for k in key_set.keys if k.key_id == kid)
        return jwt.decode(assertion, key=key.key, algorithms=["ES256"], issuer="wso2.org/products/am",
                          options={"require": ["exp", "iat", "iss"]})

    forged_header = {arguments.header: "eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0."}
    bearer = {"Authorization": f"Bearer {arguments.token}"}
    response = session.get(arguments.http + arguments.with_jwt + "/echo", headers={**bearer, **forged_header})
    values = received(response, arguments.header)
    check("the backend of an API with backend JWT receives one assertion", values is not None and len(values) == 1,
          f"{response.status_code} {values}")
    assertion = (values or [""])[0]
    check("the client's own assertion is not forwarded", assertion != forged_header[arguments.header], assertion)
    claims = {}
    try:
        claims = verify(assertion)
        check("the assertion verifies against the published key (PyJWT, ES256)", True)
    except Exception as error:  # noqa: BLE001 - any failure is the finding
        check("the assertion verifies against the published key (PyJWT, ES256)", False, repr(error))
    expected = {
        "subscriber": arguments.subscriber,
        "applicationname": arguments.application,
        "apicontext": arguments.with_jwt,
        "version": arguments.api_version,
        "tier": arguments.tier,
        "keytype": "PRODUCTION",
    }
    for name, value in expected.items():
        check(f"claim {name} is {value}", claims.get(WSO2 + name) == value, claims.get(WSO2 + name))
    check("claims applicationid, applicationtier and usertype are present",
          claims.get(WSO2 + "applicationid") and claims.get(WSO2 + "applicationtier")
          and claims.get(WSO2 + "usertype") in ("APPLICATION", "APPLICATION_USER"), claims)
    check("claim enduser names the user with the tenant", claims.get(WSO2 + "enduser", "").endswith("@carbon.super"), claims)
    check("exp is after iat", claims.get("exp", 0) > claims.get("iat", 0), claims)

    response = session.get(arguments.http + arguments.with_jwt + "/echo", headers=bearer)
    check("the next call with the token gets the cached assertion", received(response, arguments.header) == [assertion],
          received(response, arguments.header))

    header, payload, signature = assertion.split(".") if assertion.count(".") == 2 else ("", "", "")
    altered = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)) or b"{}")
    altered[WSO2 + "tier"] = "Unlimited-Plus"
    altered_payload = base64.urlsafe_b64encode(json.dumps(altered).encode()).rstrip(b"=").decode()
    try:
        verify(f"{header}.{altered_payload}.{signature}")
        check("an altered assertion fails verification", False, "verified")
    except jwt.InvalidSignatureError:
        check("an altered assertion fails verification", True)

    response = session.get(arguments.http + arguments.with_jwt + "/echo", headers={"Authorization": f"Bearer {arguments.jwt_token}"})
    values = received(response, arguments.header) or []
    try:
        local_claims = verify(values[0]) if len(values) == 1 else {}
    except Exception as error:  # noqa: BLE001
        local_claims = {"error": repr(error)}
    check("a JWT access token checked on the gateway gets a verified assertion too",
          local_claims.get(WSO2 + "apicontext") == arguments.with_jwt, f"{response.status_code} {local_claims}")

    response = session.get(arguments.http + arguments.without_jwt + "/echo", headers={**bearer, **forged_header})
    check("an API without backend JWT reaches its backend", response.status_code == 200, f"{response.status_code} {response.text}")
    check("its backend receives no assertion, not even the client's", received(response, arguments.header) == [],
          received(response, arguments.header))

    print(f"done: {checks} checks, {failures} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
