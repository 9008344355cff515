#!/usr/bin/env python3
"""Every throttling policy kind and condition type through a real gateway
(ThrottlePoliciesEndToEndTests sets the cluster, the policies and the APIs
up with tollctl; this script only sends requests, with Python `requests`,
from several loopback source addresses). Checks WSO2's codes (900800 API,
900802 resource, 900803 application, 900804 subscription, 900805 blocked,
900806 custom, 900807 spike arrest, 900801 hard limit), the evaluation
order where two limits trip at once, `Retry-After` and the IETF
`RateLimit-*` fields.

Reads a JSON plan: {"gateway": "http://127.0.0.1:P", "metrics": "http://…",
"tokens": {name: token}}. Phase 1 runs everything but the custom policies
(a custom policy counts every call of the tenant's APIs, so the test
creates them after phase 1); phase 2 runs the custom policies.

Prints one PASS/FAIL line per check and "done: N checks"; exits non-zero on
any failure.
"""
import argparse
import json
import sys
import threading
import time

import requests
import requests.adapters

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


class SourceAddressAdapter(requests.adapters.HTTPAdapter):
    """Connects from a chosen loopback address (all of 127/8 is local)."""

    def __init__(self, source, **kwargs):
        self.source = source
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


sessions = {}


def session(source="127.0.0.1"):
    if source not in sessions:
        s = requests.Session()
        s.mount("http://", SourceAddressAdapter(source))
        sessions[source] = s
    return sessions[source]


def fault_code(response):
    try:
        return int(response.json()["fault"]["code"])
    except Exception:
        return None


def describe(response):
    return f"{response.status_code} {fault_code(response)} {response.text[:200]}"


def fresh_window(seconds, need):
    """Waits for the next window of `seconds` when fewer than `need` seconds
    of the current one remain, so a case's requests share one window."""
    left = seconds - (time.time() % seconds)
    if left < need:
        time.sleep(left + 0.05)


class Gateway:
    def __init__(self, plan):
        self.base = plan["gateway"]
        self.metrics = plan["metrics"]
        self.tokens = plan["tokens"]

    def call(self, path, token="main", source="127.0.0.1", method="GET", headers=None, data=None):
        all_headers = {"Authorization": f"Bearer {self.tokens[token]}"}
        all_headers.update(headers or {})
        return session(source).request(method, self.base + path, headers=all_headers, data=data, timeout=30)

    def metric(self, line_prefix):
        page = requests.get(self.metrics + "/metrics", timeout=10).text
        for line in page.splitlines():
            if line.startswith(line_prefix + " "):
                return float(line.split(" ")[-1])
        return None


def expect_admitted(name, responses, limit=None):
    ok = all(r.status_code == 200 for r in responses)
    check(f"{name}: admitted {len(responses)}", ok, "; ".join(describe(r) for r in responses if r.status_code != 200))
    if limit is not None and ok:
        values = [r.headers.get("RateLimit-Limit") for r in responses]
        remaining = [r.headers.get("RateLimit-Remaining") for r in responses]
        check(f"{name}: RateLimit-Limit {limit} and RateLimit-Remaining falling on admissions",
              all(v == str(limit) for v in values) and all(x is not None for x in remaining)
              and [int(x) for x in remaining] == sorted((int(x) for x in remaining), reverse=True)
              and all(r.headers.get("RateLimit-Reset", "").isdigit() for r in responses), f"limits {values}, remaining {remaining}")


def expect_refused(name, response, code, status=429, limit=None):
    check(f"{name}: refused with {status} {code}", response.status_code == status and fault_code(response) == code, describe(response))
    retry = response.headers.get("Retry-After", "")
    check(f"{name}: Retry-After and RateLimit-* on the refusal",
          retry.isdigit() and int(retry) >= 1 and response.headers.get("RateLimit-Remaining") == "0"
          and response.headers.get("RateLimit-Reset", "").isdigit()
          and (limit is None or response.headers.get("RateLimit-Limit") == str(limit)),
          f"headers {dict(response.headers)}")


def hour_case(gateway, name, path, limit, code, status=429, **kwargs):
    """`limit` admitted, the next one refused with `code`."""
    fresh_window(3600, 60)
    admitted = [gateway.call(path, **kwargs) for _ in range(limit)]
    expect_admitted(name, admitted, limit=None)
    expect_refused(name, gateway.call(path, **kwargs), code, status)


def phase_one(gateway):
    # Subscription, request count: the Sub5 tier, 5 an hour.
    fresh_window(3600, 60)
    admitted = [gateway.call("/sub/1/echo") for _ in range(5)]
    expect_admitted("subscription request count", admitted, limit=5)
    expect_refused("subscription request count", gateway.call("/sub/1/echo"), 900804, limit=5)
    check("a refusal costs no quota: still refused", fault_code(gateway.call("/sub/1/echo")) == 900804)

    # Subscription, bandwidth: 1,000 request bytes an hour, bodies of 400.
    fresh_window(3600, 60)
    body = b"x" * 400
    admitted = [gateway.call("/bytes/1/count", method="PUT", data=body) for _ in range(2)]
    expect_admitted("subscription bandwidth", admitted, limit=1000)
    check("subscription bandwidth: the backend got the bodies", all(r.json().get("bytes") == 400 for r in admitted if r.status_code == 200))
    expect_refused("subscription bandwidth (1,200 > 1,000 bytes)", gateway.call("/bytes/1/count", method="PUT", data=body), 900804, limit=1000)
    small = gateway.call("/bytes/1/count", method="PUT", data=b"y" * 150)
    check("subscription bandwidth: a body that still fits is admitted", small.status_code == 200, describe(small))

    # Spike arrest per second: 3 a second on each gateway, offered 12 at once.
    fresh_window(1, 0.5)
    results = []
    lock = threading.Lock()

    def burst():
        started = time.time()
        response = gateway.call("/spike/1/echo")
        with lock:
            results.append((started, time.time(), response))

    threads = [threading.Thread(target=burst) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    admitted = [r for _, _, r in results if r.status_code == 200]
    refused = [r for _, _, r in results if r.status_code != 200]
    seconds = int(max(e for _, e, _ in results)) - int(min(s for s, _, _ in results)) + 1
    check("spike arrest per second: refusals are 429 900807", refused and all(r.status_code == 429 and fault_code(r) == 900807 for r in refused),
          "; ".join(describe(r) for r in refused) or "none refused")
    check(f"spike arrest per second: at most 3 admitted a second ({len(admitted)} over {seconds} s)", len(admitted) <= 3 * seconds)
    if refused:
        expect_refused("spike arrest per second", refused[0], 900807, limit=3)

    # Spike arrest per minute: 4 a minute.
    fresh_window(60, 20)
    admitted = [gateway.call("/spikemin/1/echo") for _ in range(4)]
    expect_admitted("spike arrest per minute", admitted)
    expect_refused("spike arrest per minute", gateway.call("/spikemin/1/echo"), 900807, limit=4)

    # Stop-on-quota off: the Lenient tier, 3 an hour, admits and marks.
    fresh_window(3600, 60)
    admitted = [gateway.call("/lenient/1/echo") for _ in range(6)]
    expect_admitted("stop-on-quota off: every call admitted past the quota of 3", admitted)
    check("stop-on-quota off: RateLimit-Remaining 0 past the quota", [r.headers.get("RateLimit-Remaining") for r in admitted[3:]] == ["0"] * 3,
          [r.headers.get("RateLimit-Remaining") for r in admitted])
    marked = gateway.metric('tollgate_gateway_throttle_decisions_total{kind="sub",policy="sub:Lenient",outcome="marked"}')
    check("stop-on-quota off: the calls past the quota are marked", marked == 3, f"marked {marked}")

    # Application policy per application per end user: App3, 3 an hour; alice and bob share the application.
    fresh_window(3600, 60)
    expect_admitted("application policy, alice", [gateway.call("/appl/1/echo", token="shared-alice") for _ in range(3)])
    expect_refused("application policy, alice", gateway.call("/appl/1/echo", token="shared-alice"), 900803, limit=3)
    expect_admitted("application policy, bob in the same application counts apart", [gateway.call("/appl/1/echo", token="shared-bob") for _ in range(3)])
    expect_refused("application policy, bob", gateway.call("/appl/1/echo", token="shared-bob"), 900803, limit=3)

    # Advanced API policies with condition groups, each 2 an hour, the inverted condition in a second group.
    fresh_window(3600, 120)
    cases = [
        ("IP", "/cond-ip/1/echo", {"source": "127.0.0.2"}, {"source": "127.0.0.1"}),
        ("IP range", "/cond-range/1/echo", {"source": "127.0.0.3"}, {"source": "127.0.0.1"}),
        ("header", "/cond-header/1/echo", {"headers": {"X-Tier": "gold"}}, {"headers": {"X-Tier": "silver"}}),
        ("query parameter", "/cond-query/1/echo?plan=free", {}, None),
        ("JWT claim", "/cond-claim/1/echo", {"token": "jwt"}, {"token": "main"}),
    ]
    for label, path, matching, other in cases:
        expect_admitted(f"condition group on {label}", [gateway.call(path, **matching) for _ in range(2)])
        expect_refused(f"condition group on {label}", gateway.call(path, **matching), 900800, limit=2)
        if label == "query parameter":
            plain = path.split("?")[0]
            expect_admitted("condition group on query parameter, inverted: another value", [gateway.call(plain + "?plan=paid") for _ in range(2)])
            expect_refused("condition group on query parameter, inverted", gateway.call(plain), 900800, limit=2)
        else:
            expect_admitted(f"condition group on {label}, inverted: the rest counts apart", [gateway.call(path, **other) for _ in range(2)])
            expect_refused(f"condition group on {label}, inverted", gateway.call(path, **other), 900800, limit=2)
    # A request matching no group counts under the policy's default limit (3).
    expect_admitted("no group matched: the default limit", [gateway.call("/cond-default/1/echo") for _ in range(3)])
    expect_refused("no group matched: the default limit", gateway.call("/cond-default/1/echo"), 900800, limit=3)
    expect_admitted("a group matched: its own limit, not the spent default", [gateway.call("/cond-default/1/echo", source="127.0.0.2")])

    # Resource policy: 2 an hour per resource; a condition group (query plan=free) 1 an hour.
    fresh_window(3600, 60)
    expect_admitted("resource policy, GET /a", [gateway.call("/res/1/a") for _ in range(2)])
    expect_refused("resource policy, GET /a", gateway.call("/res/1/a"), 900802, limit=2)
    expect_admitted("resource policy counts per resource: GET /b", [gateway.call("/res/1/b") for _ in range(2)])
    expect_admitted("resource policy condition group on GET /b", [gateway.call("/res/1/b?plan=free")])
    expect_refused("resource policy condition group on GET /b", gateway.call("/res/1/b?plan=free"), 900802, limit=1)

    # Hard backend limit: 2 a second for the API, whatever the subscription; 12 at once.
    fresh_window(1, 0.5)
    results = []

    def hard():
        started = time.time()
        response = gateway.call("/hard/1/echo")
        with lock:
            results.append((started, time.time(), response))

    threads = [threading.Thread(target=hard) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    admitted = [r for _, _, r in results if r.status_code == 200]
    refused = [r for _, _, r in results if r.status_code != 200]
    seconds = int(max(e for _, e, _ in results)) - int(min(s for s, _, _ in results)) + 1
    check("hard limit: refusals are 503 900801", refused and all(r.status_code == 503 and fault_code(r) == 900801 for r in refused),
          "; ".join(describe(r) for r in refused) or "none refused")
    check(f"hard limit: at most 2 admitted a second ({len(admitted)} over {seconds} s)", len(admitted) <= 2 * seconds)
    if refused:
        expect_refused("hard limit", refused[0], 900801, status=503, limit=2)

    # Evaluation order: two limits trip on the same call, the earlier one answers.
    fresh_window(3600, 60)
    hour_case(gateway, "order: API policy before subscription", "/ord-api/1/echo", 2, 900800)
    hour_case(gateway, "order: resource policy before subscription", "/ord-res/1/echo", 2, 900802)
    fresh_window(60, 20)
    hour_case(gateway, "order: subscription before spike arrest", "/ord-sub/1/echo", 2, 900804)
    fresh_window(60, 20)
    hour_case(gateway, "order: spike arrest before application", "/ord-spike/1/echo", 2, 900807, token="order-app")
    # Application (1 an hour) and the hard limit (1 a second) both spent by the first call:
    # the second, sent at once (in the same second unless the machine stalls), gets the application's code.
    fresh_window(1, 0.7)
    first = gateway.call("/ord-hard/1/echo", token="order-hard")
    check("order: application before hard limit, first call admitted", first.status_code == 200, describe(first))
    second = gateway.call("/ord-hard/1/echo", token="order-hard")
    expect_refused("order: application before hard limit", second, 900803, limit=1)

    # Blocks come before every limit: 127.0.0.5 is blocked, and everything outside 127.0.0.1–127.0.0.200 (an inverted range).
    for label, source in [("a blocked IP", "127.0.0.5"), ("outside an inverted range", "127.0.0.201")]:
        response = gateway.call("/sub/1/echo", source=source)
        check(f"block on {label} answers 403 900805 before the spent subscription", response.status_code == 403 and fault_code(response) == 900805,
              describe(response))
        response = gateway.call("/hard/1/echo", source=source)
        check(f"block on {label} on another API", response.status_code == 403 and fault_code(response) == 900805, describe(response))
    response = gateway.call("/blocked/1/echo")
    check("a blocked API context answers 403 900805", response.status_code == 403 and fault_code(response) == 900805, describe(response))


def phase_two(gateway):
    # PerUserApi: $userId:$apiContext, 3 an hour. PerAppIp: $appId@$clientIp, 5 an hour.
    fresh_window(3600, 60)
    # alice and bob share the application "custom" (Unlimited tier).
    expect_admitted("custom $userId:$apiContext", [gateway.call("/cust/1/echo", token="custom-alice") for _ in range(3)])
    expect_refused("custom $userId:$apiContext", gateway.call("/cust/1/echo", token="custom-alice"), 900806, limit=3)
    expect_admitted("custom $userId:$apiContext: another API counts apart", [gateway.call("/cust2/1/echo", token="custom-alice") for _ in range(2)])
    expect_refused("custom $appId@$clientIp: 5 calls of the application from one address", gateway.call("/cust2/1/echo", token="custom-alice"),
                   900806, limit=5)
    expect_admitted("custom $appId@$clientIp: another address counts apart", [gateway.call("/cust2/1/echo", token="custom-alice", source="127.0.0.2")])
    expect_admitted("custom $userId: another user of the application counts apart",
                    [gateway.call("/cust/1/echo", token="custom-bob", source="127.0.0.3")])
    # Application (App3) and PerUserApi (3) both spent on the fourth call: the application answers.
    expect_admitted("order: application before custom", [gateway.call("/ord-cust/1/echo", token="order-cust", source="127.0.0.4") for _ in range(3)])
    expect_refused("order: application before custom", gateway.call("/ord-cust/1/echo", token="order-cust", source="127.0.0.4"), 900803, limit=3)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--plan", required=True, help="the JSON plan file")
    parser.add_argument("--phase", type=int, choices=[1, 2], required=True)
    arguments = parser.parse_args()
    with open(arguments.plan) as file:
        gateway = Gateway(json.load(file))
    if arguments.phase == 1:
        phase_one(gateway)
    else:
        phase_two(gateway)
    print(f"done: {checks} checks, {failures} failed", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
