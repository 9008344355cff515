#!/usr/bin/env python3
"""Offers load to several gateways at once, unevenly, and counts per fixed
window what they admitted (200) and refused (429, 503), from the client's
side. Used by ThrottlingEndToEndTests: the admitted count of every window
must stay within 0.99-1.00 of the limit however the load is spread.

Windows are aligned to the Unix epoch as the gateways align them. A response
is counted in the window its request was sent in, except an admission whose
request was sent in one window and answered in the next: its
`RateLimit-Reset` (whole seconds to the end of the window it was admitted
in) tells which of the two it was counted in.

Prints one JSON object: {"windows": {start_ms: {"admitted": n, "refused": n,
"other": n}}, "gateways": {url: {"admitted": n, "refused": n}}, "codes": {...}}.
"""
import argparse
import json
import threading
import time

import requests


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--urls", required=True, help="comma-separated full URLs, one per gateway")
    parser.add_argument("--weights", required=True, help="comma-separated shares of the load, one per URL")
    parser.add_argument("--token", required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second offered in total")
    parser.add_argument("--window-ms", type=int, required=True)
    parser.add_argument("--windows", type=int, required=True, help="whole windows to load, starting at the next window start")
    parser.add_argument("--threads-per-gateway", type=int, default=2)
    args = parser.parse_args()

    urls = args.urls.split(",")
    weights = [float(w) for w in args.weights.split(",")]
    total = sum(weights)
    window = args.window_ms
    now_ms = int(time.time() * 1000)
    start_ms = (now_ms // window + 1) * window
    end_ms = start_ms + window * args.windows
    lock = threading.Lock()
    windows = {}
    gateways = {url: {"admitted": 0, "refused": 0} for url in urls}
    codes = {}

    def record(url, sent_ms, answered_ms, status, code, reset):
        slot = sent_ms // window * window
        if status == 200 and answered_ms // window != sent_ms // window:
            # Admitted at some instant in [sent, answered]: in the new window its
            # end was at least a window minus (answered - boundary) away; in the
            # old one at most (boundary - sent), under a second here.
            boundary = answered_ms // window * window
            if reset is None or reset * 1000 >= window - (answered_ms - boundary):
                slot = boundary
        with lock:
            entry = windows.setdefault(slot, {"admitted": 0, "refused": 0, "other": 0})
            if status == 200:
                entry["admitted"] += 1
                gateways[url]["admitted"] += 1
            elif status in (429, 503):
                entry["refused"] += 1
                gateways[url]["refused"] += 1
                codes[str(code)] = codes.get(str(code), 0) + 1
            else:
                entry["other"] += 1
                codes["status %d" % status] = codes.get("status %d" % status, 0) + 1

    def worker(url, rate):
        session = requests.Session()
        headers = {"Authorization": "Bearer " + args.token}
        interval = 1.0 / rate
        next_at = start_ms / 1000.0
        while True:
            delay = next_at - time.time()
            if delay > 0:
                time.sleep(delay)
            sent_ms = int(time.time() * 1000)
            if sent_ms >= end_ms:
                return
            code = None
            reset = None
            try:
                response = session.get(url, headers=headers, timeout=10)
                status = response.status_code
                if "RateLimit-Reset" in response.headers:
                    reset = int(response.headers["RateLimit-Reset"])
                if status != 200:
                    try:
                        code = response.json()["fault"]["code"]
                    except Exception:
                        code = None
            except requests.RequestException:
                status = 0
            record(url, sent_ms, int(time.time() * 1000), status, code, reset)
            # Paced, but a slow answer is not made up for with a burst.
            next_at = max(next_at + interval, time.time() - interval)

    threads = []
    for url, weight in zip(urls, weights):
        rate = args.rate * weight / total / args.threads_per_gateway
        for _ in range(args.threads_per_gateway):
            thread = threading.Thread(target=worker, args=(url, rate), daemon=True)
            thread.start()
            threads.append(thread)
    for thread in threads:
        thread.join()
    full = {str(k): v for k, v in sorted(windows.items()) if start_ms <= k < end_ms}
    print(json.dumps({"window_ms": window, "start_ms": start_ms, "windows": full, "gateways": gateways, "codes": codes}))


if __name__ == "__main__":
    main()
