#!/usr/bin/env python3
"""Python's ssl module as an independent TLS peer for Tollgate's TLS handler.

  tls_peer.py client <port> <ca> <cert> <key> <message>
      Connects with mutual TLS and ALPN tollgate-rpc/1, sends the message,
      prints the protocol, ALPN and the echoed reply.
  tls_peer.py server <ca> <cert> <key>
      Serves one mutual-TLS connection on an ephemeral port (printed as
      "port N"), answers each read with the bytes upper-cased, and prints the
      client certificate's URI.
  tls_peer.py plain-flood <port> <megabytes>
      Connects over plain TCP and sends lines of 1 KiB without reading any
      answer; prints "sent all" or, once a send has been blocked for 3 s,
      "blocked after N bytes".
  tls_peer.py plain-lines <port> <text> <seconds>
      Connects over plain TCP, sends the text, and reads for the given
      seconds: prints the reply, then "closed by the server" if the server
      closed the connection, else "open after N s".
"""
import socket
import ssl
import sys


def client(port, ca, cert, key, message):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(ca)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["tollgate-rpc/1"])
    with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(message.encode())
            received = b""
            while len(received) < len(message):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                received += chunk
            print("protocol", tls.version())
            print("alpn", tls.selected_alpn_protocol())
            print("reply", received.decode())


def server(ca, cert, key):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["tollgate-rpc/1"])
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(20)
        print("port", listener.getsockname()[1], flush=True)
        connection, _ = listener.accept()
        with context.wrap_socket(connection, server_side=True) as tls:
            uris = [value for kind, value in tls.getpeercert().get("subjectAltName", ()) if kind == "URI"]
            print("peer", ",".join(uris), flush=True)
            while True:
                data = tls.recv(65536)
                if not data:
                    break
                tls.sendall(data.upper())


def plain_lines(port, text, seconds):
    import time
    with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as connection:
        connection.sendall(text.encode())
        received = b""
        deadline = time.monotonic() + float(seconds)
        closed = False
        while (left := deadline - time.monotonic()) > 0:
            connection.settimeout(left)
            try:
                chunk = connection.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                closed = True
                break
            received += chunk
        print("reply", received.decode())
        print("closed by the server" if closed else f"open after {seconds} s")


def plain_flood(port, megabytes):
    line = b"x" * 1023 + b"\n"
    total = int(megabytes) * 1024 * 1024
    with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as connection:
        connection.settimeout(3)
        sent = 0
        try:
            while sent < total:
                connection.sendall(line * 64)
                sent += len(line) * 64
        except socket.timeout:
            print(f"blocked after {sent} bytes")
            return
        print("sent all")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "client" and len(sys.argv) == 7:
        client(*sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "plain-flood":
        plain_flood(*sys.argv[2:])
    elif len(sys.argv) == 5 and sys.argv[1] == "plain-lines":
        plain_lines(*sys.argv[2:])
    elif len(sys.argv) == 5 and sys.argv[1] == "server":
        server(*sys.argv[2:])
    else:
        sys.exit(__doc__)
