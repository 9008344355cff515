#!/usr/bin/env python3
"""Sends a plan of API calls through gateways with Python `requests` and
reports every status code it got back, per label, as JSON:

  analytics_load.py PLAN.json   where PLAN.json is a list of
      {"label": "menu-ok", "url": "http://127.0.0.1:8280/menu/1/echo",
       "token": "…" (optional), "count": 40, "pause": 0.1 (optional, seconds
       after each of this item's calls)}

Calls go out in rounds, one of each item in turn, so every label's calls
spread over the whole run. A call that gets no answer within 30 s counts
under "error". Prints {"codes": {label: {status: count}}, "sent": N}.
"""
import json
import sys
import time

import requests


def main():
    with open(sys.argv[1]) as handle:
        plan = json.load(handle)
    sessions = {}
    codes = {item["label"]: {} for item in plan}
    remaining = [item["count"] for item in plan]
    sent = 0
    while any(remaining):
        for index, item in enumerate(plan):
            if not remaining[index]:
                continue
            remaining[index] -= 1
            session = sessions.setdefault(item["url"].split("/")[2], requests.Session())
            headers = {"Authorization": "Bearer " + item["token"]} if item.get("token") else {}
            try:
                status = str(session.get(item["url"], headers=headers, timeout=30).status_code)
            except requests.RequestException:
                status = "error"
            codes[item["label"]][status] = codes[item["label"]].get(status, 0) + 1
            sent += 1
            if item.get("pause"):
                time.sleep(item["pause"])
    print(json.dumps({"codes": codes, "sent": sent}))


if __name__ == "__main__":
    main()
