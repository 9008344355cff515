#!/usr/bin/env python3
"""A backend for gateway tests, built on the standard library's HTTP server
(HTTP/1.1, keep-alive, one thread per connection).

  GET|POST|... /echo...      JSON: method, path, headers, body length
  GET  /stream?bytes=N       N bytes of body, chunked, written as produced
  GET  /sized?bytes=N        N bytes with a Content-Length
  POST /count                reads the body as it arrives (chunked or sized) and answers its length and SHA-256
  GET  /slow?seconds=S       answers after S seconds
  GET  /status?code=C        answers with status C

Prints "listening PORT" once ready.
"""
import argparse
import hashlib
import json
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CHUNK = b"x" * 65536


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_name_label = "backend"

    def log_message(self, *args):
        pass

    def _query(self):
        return parse_qs(urlsplit(self.path).query)

    def _read_body(self, digest=None):
        total = 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return total
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, 1 << 20))
                    if not data:
                        return total
                    if digest:
                        digest.update(data)
                    remaining -= len(data)
                    total += len(data)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        while length:
            data = self.rfile.read(min(length, 1 << 20))
            if not data:
                break
            if digest:
                digest.update(data)
            length -= len(data)
            total += len(data)
        return total

    def _json(self, code, payload):
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Backend", self.server.label)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self):
        path = urlsplit(self.path).path
        query = self._query()
        if path.startswith("/count"):
            digest = hashlib.sha256()
            total = self._read_body(digest)
            return self._json(200, {"bytes": total, "sha256": digest.hexdigest()})
        body_length = self._read_body()
        if path.startswith("/stream") or path.startswith("/sized"):
            total = int(query.get("bytes", ["0"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("X-Backend", self.server.label)
            sized = path.startswith("/sized")
            if sized:
                self.send_header("Content-Length", str(total))
            else:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command == "HEAD":
                return
            remaining = total
            while remaining:
                piece = CHUNK[: min(remaining, len(CHUNK))]
                if sized:
                    self.wfile.write(piece)
                else:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                remaining -= len(piece)
            if not sized:
                self.wfile.write(b"0\r\n\r\n")
            return
        if path.startswith("/slow"):
            time.sleep(float(query.get("seconds", ["5"])[0]))
        if path.startswith("/status"):
            return self._json(int(query.get("code", ["200"])[0]), {"status": True})
        headers = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        self._json(200, {"method": self.command, "path": self.path, "headers": headers, "body_bytes": body_length,
                         "backend": self.server.label})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = handle_any


def main():
    # A parent that ignores SIGTERM passes that on; the backend must still stop when told.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--label", default="backend")
    arguments = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", arguments.port), Handler)
    server.daemon_threads = True
    server.label = arguments.label
    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
