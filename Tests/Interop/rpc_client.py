#!/usr/bin/env python3
"""An independent client for Tollgate's RPC protocol, written from
docs/rpc-protocol.md alone (nothing is shared with the Swift side).

Only the standard library (ssl, socket, struct, ...) and the `protobuf`
package are used; Python modules for proto/ are generated with
`protoc --python_out` into a temporary directory at start-up.

  rpc_client.py --host H --port P --ca CA [--cert C --key K] [--token T]
                [--timeout-ms N] [--server-name NAME] [--tenant T]
                [--request-id ID] [--metadata key=value ...]
                unary|stream <method> <request-type> <response-type>
                [--request-json JSON]
      Makes one call and prints every response message as one line of JSON,
      then `status <code> <message>`. Exit code 0 for status OK, else 1.
  rpc_client.py selftest [--doc PATH]
      Replays the worked example of the document against the client
      (byte-for-byte comparison of the client's frames) plus a few scripted
      error cases.

The library is single-threaded: frames are read while a call waits for
data, and that is also when PINGs are answered, WINDOW_UPDATEs sent and
GOAWAY noticed. Several calls may be open at once on one connection; frames
of the others are queued while one of them reads.
"""

import argparse
import collections
import importlib
import os
import random
import re
import select
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time

ALPN = "tollgate-rpc/1"
HEADER = struct.Struct(">IBBHI")
HEADER_SIZE = 12

SETTINGS, HEADERS, MESSAGE, TRAILERS, CANCEL, WINDOW_UPDATE, PING, GOAWAY, END_STREAM = range(9)
FRAME_NAMES = ["SETTINGS", "HEADERS", "MESSAGE", "TRAILERS", "CANCEL", "WINDOW_UPDATE", "PING", "GOAWAY", "END_STREAM"]
CONNECTION_FRAMES = (SETTINGS, PING, GOAWAY)
FLAG_ACK = 0x01
FLAG_END_STREAM = 0x01

DEFAULT_MAX_FRAME_SIZE = 4194304
MIN_MAX_FRAME_SIZE = 16384
MAX_MAX_FRAME_SIZE = 16777216
DEFAULT_MAX_CONCURRENT_STREAMS = 100
DEFAULT_INITIAL_WINDOW_SIZE = 1048576
MAX_WINDOW = 2 ** 31 - 1
DEFAULT_MAX_METADATA_SIZE = 16384
HANDSHAKE_TIMEOUT = 10.0
WRITE_TIMEOUT = 30.0

# RpcGoAwayReason
(GOAWAY_UNSPECIFIED, GOAWAY_SHUTDOWN, GOAWAY_PROTOCOL_ERROR, GOAWAY_FRAME_TOO_LARGE, GOAWAY_IDLE, GOAWAY_KEEPALIVE_TIMEOUT,
 GOAWAY_RESOURCE_EXHAUSTED) = range(7)

STATUS_NAMES = [
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
]
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED = 0, 1, 2, 3, 4
RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE = 8, 13, 14

UNARY, SERVER_STREAMING, CLIENT_STREAMING, BIDI = "unary", "server_streaming", "client_streaming", "bidi"

METADATA_KEY = re.compile(r"^[a-z0-9._-]+$")
METADATA_TEXT = re.compile(r"^[\x20-\x7e]*$")


# --------------------------------------------------------------------------
# Generated protobuf code

class _Protos:
    rpc = None     # tollgate.v1.rpc_pb2
    pool = None


def load_protos(proto_dir):
    """Runs protoc on every .proto of proto_dir and imports the modules."""
    if _Protos.rpc is not None:
        return
    out = tempfile.mkdtemp(prefix="tollgate-rpc-py-")
    try:
        protos = []
        for root, _, files in os.walk(proto_dir):
            for name in files:
                if name.endswith(".proto"):
                    protos.append(os.path.relpath(os.path.join(root, name), proto_dir))
        if not protos:
            raise SystemExit("no .proto files under %s" % proto_dir)
        subprocess.run(["protoc", "--python_out=" + out, "-I", proto_dir] + sorted(protos), check=True)
        sys.path.insert(0, out)
        try:
            for proto in sorted(protos):
                importlib.import_module(proto[:-len(".proto")].replace("/", ".") + "_pb2")
        finally:
            sys.path.remove(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    from google.protobuf import descriptor_pool
    _Protos.rpc = sys.modules["tollgate.v1.rpc_pb2"]
    _Protos.pool = descriptor_pool.Default()


def message_class(type_name):
    from google.protobuf import message_factory
    if "." not in type_name:
        type_name = "tollgate.v1." + type_name
    return message_factory.GetMessageClass(_Protos.pool.FindMessageTypeByName(type_name))


# --------------------------------------------------------------------------
# Errors

class RpcError(Exception):
    """A call ended with a non-OK status (from the server or decided here)."""

    def __init__(self, code, message="", metadata=()):
        self.code = code
        self.message = message
        self.metadata = list(metadata)
        name = STATUS_NAMES[code] if 0 <= code < len(STATUS_NAMES) else str(code)
        super().__init__("%d %s: %s" % (code, name, message))


class _ConnectionError(Exception):
    """A connection error detected here: GOAWAY with `reason`, then close."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


class _Closed(Exception):
    pass


# --------------------------------------------------------------------------
# Frames and metadata

def encode_frame(frame_type, flags, stream_id, payload=b""):
    return HEADER.pack(len(payload), frame_type, flags, 0, stream_id) + payload


def split_frames(data):
    """Splits a byte string into (type, flags, stream_id, payload) tuples."""
    frames = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < HEADER_SIZE:
            raise ValueError("truncated frame header at offset %d" % offset)
        length, ftype, flags, reserved, sid = HEADER.unpack_from(data, offset)
        if reserved:
            raise ValueError("reserved bytes not zero at offset %d" % offset)
        end = offset + HEADER_SIZE + length
        if end > len(data):
            raise ValueError("truncated frame payload at offset %d" % offset)
        frames.append((ftype, flags, sid, bytes(data[offset + HEADER_SIZE:end])))
        offset = end
    return frames


def make_metadata(pairs):
    """[(key, str|bytes)] -> [RpcMetadataEntry], validated."""
    entries = []
    for key, value in pairs:
        if not METADATA_KEY.match(key):
            raise ValueError("invalid metadata key %r" % key)
        if key.endswith("-bin"):
            if isinstance(value, str):
                value = value.encode()
            entries.append(_Protos.rpc.RpcMetadataEntry(key=key, binary=value))
        else:
            if not isinstance(value, str) or not METADATA_TEXT.match(value):
                raise ValueError("metadata %r needs printable ASCII text" % key)
            entries.append(_Protos.rpc.RpcMetadataEntry(key=key, text=value))
    return entries


def metadata_size(entries):
    total = 0
    for entry in entries:
        member = entry.WhichOneof("value")
        value = entry.binary if member == "binary" else entry.text.encode() if member == "text" else b""
        total += len(entry.key.encode()) + len(value)
    return total


def received_metadata(entries):
    """Response metadata as [(key, str|bytes)]; malformed entries are dropped."""
    out = []
    for entry in entries:
        member = entry.WhichOneof("value")
        if not METADATA_KEY.match(entry.key):
            continue
        if entry.key.endswith("-bin"):
            if member in ("binary", None):
                out.append((entry.key, entry.binary))
        elif member in ("text", None) and METADATA_TEXT.match(entry.text):
            out.append((entry.key, entry.text))
    return out


# --------------------------------------------------------------------------
# Transports

class TLSTransport:
    def __init__(self, tls_socket):
        self.sock = tls_socket

    def sendall(self, data):
        self.sock.settimeout(WRITE_TIMEOUT)
        self.sock.sendall(data)

    def recv(self, size, timeout):
        """Bytes (b"" at end of stream); TimeoutError when nothing came in time."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(size)
        except (socket.timeout, ssl.SSLWantReadError):
            raise TimeoutError()
        except ssl.SSLEOFError:
            return b""

    def readable(self):
        if self.sock.pending():
            return True
        return bool(select.select([self.sock], [], [], 0)[0])

    def close(self):
        try:
            self.sock.settimeout(1.0)
            self.sock.unwrap()  # TLS close_notify
        except (OSError, ValueError):
            pass
        try:
            self.sock.close()
        except OSError:
            pass


def tls_connect(host, port, ca, cert=None, key=None, server_hostname=None, timeout=HANDSHAKE_TIMEOUT):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=ca)
    if cert:
        context.load_cert_chain(cert, key)
    context.set_alpn_protocols([ALPN])
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        tls = context.wrap_socket(raw, server_hostname=server_hostname or host)
    except BaseException:
        raw.close()
        raise
    if tls.selected_alpn_protocol() != ALPN:
        tls.close()
        raise RpcError(UNAVAILABLE, "server did not select ALPN %s" % ALPN)
    return TLSTransport(tls)


# --------------------------------------------------------------------------
# Connection and calls

class _Stream:
    def __init__(self, stream_id, shape, send_window, recv_window, deadline):
        self.id = stream_id
        self.shape = shape
        self.state = "open"          # open | half-closed | closed
        self.send_window = send_window
        self.recv_window = recv_window
        self.initial_recv_window = recv_window
        self.ungranted = 0           # consumed bytes not yet returned by WINDOW_UPDATE
        self.messages = collections.deque()
        self.received = 0            # MESSAGE frames received
        self.headers = None          # response metadata
        self.trailers = None         # (code, message, metadata)
        self.error = None            # RpcError ending the stream
        self.deadline = deadline


class Connection:
    """One client connection. Build with Connection.connect(...)."""

    def __init__(self, transport, max_frame_size=DEFAULT_MAX_FRAME_SIZE,
                 initial_window_size=DEFAULT_INITIAL_WINDOW_SIZE,
                 max_metadata_size=DEFAULT_MAX_METADATA_SIZE):
        if not MIN_MAX_FRAME_SIZE <= max_frame_size <= MAX_MAX_FRAME_SIZE:
            raise ValueError("max_frame_size out of range")
        if not 1 <= initial_window_size <= MAX_WINDOW:
            raise ValueError("initial_window_size out of range")
        self.transport = transport
        self.local = {"max_frame_size": max_frame_size, "initial_window_size": initial_window_size,
                      "max_metadata_size": max_metadata_size}
        self.peer = {"max_frame_size": DEFAULT_MAX_FRAME_SIZE,
                     "max_concurrent_streams": DEFAULT_MAX_CONCURRENT_STREAMS,
                     "initial_window_size": DEFAULT_INITIAL_WINDOW_SIZE,
                     "max_metadata_size": DEFAULT_MAX_METADATA_SIZE}
        self.peer_settings_received = False
        self.settings_acked = False
        self.buffer = bytearray()
        self.streams = {}
        self.next_stream_id = 1
        self.goaway = None           # RpcGoAway received
        self.closed = None           # why the connection is unusable
        self.pings = {}              # payload -> monotonic send time
        self.ping_rtts = {}
        # The first frame: our SETTINGS.
        settings = _Protos.rpc.RpcSettings(**self.local)
        self._write(encode_frame(SETTINGS, 0, 0, settings.SerializeToString()))

    @classmethod
    def connect(cls, host, port, ca, cert=None, key=None, server_hostname=None, **settings):
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        try:
            transport = tls_connect(host, port, ca, cert, key, server_hostname)
        except (OSError, ssl.SSLError) as error:
            raise RpcError(UNAVAILABLE, "cannot connect to %s:%s: %s" % (host, port, error))
        conn = cls(transport, **settings)
        conn.wait_for_settings(deadline)
        return conn

    # ---- limits -------------------------------------------------------

    def _own_limit(self, name, default):
        """What we enforce: below-default values only once our SETTINGS is acknowledged."""
        value = self.local[name]
        return value if self.settings_acked else max(value, default)

    # ---- writing ------------------------------------------------------

    def _write(self, data):
        if self.closed:
            raise RpcError(UNAVAILABLE, self.closed)
        try:
            self.transport.sendall(data)
        except (OSError, ssl.SSLError) as error:
            self._fail_connection("write failed: %s" % error)
            raise RpcError(UNAVAILABLE, self.closed)

    def _send(self, frame_type, flags, stream_id, payload=b""):
        self._write(encode_frame(frame_type, flags, stream_id, payload))

    def _send_cancel(self, stream, code, message):
        if stream.state != "closed" and not self.closed:
            try:
                self._send(CANCEL, 0, stream.id, _Protos.rpc.RpcCancel(code=code, message=message).SerializeToString())
            except RpcError:
                pass
        stream.state = "closed"

    # ---- reading ------------------------------------------------------

    def _fill(self, needed, deadline):
        """Reads until the buffer holds `needed` bytes. False on timeout."""
        while len(self.buffer) < needed:
            timeout = None
            if deadline is not None:
                timeout = max(0.0, deadline - time.monotonic())
            try:
                chunk = self.transport.recv(min(65536, needed - len(self.buffer)), timeout)
            except TimeoutError:
                return False
            except (OSError, ssl.SSLError) as error:
                raise _Closed("read failed: %s" % error)
            if not chunk:
                raise _Closed("connection closed by the server")
            self.buffer += chunk
        return True

    def _read_frame(self, deadline):
        if not self._fill(HEADER_SIZE, deadline):
            return None
        length, ftype, flags, reserved, stream_id = HEADER.unpack_from(self.buffer)
        if reserved != 0:
            raise _ConnectionError(GOAWAY_PROTOCOL_ERROR, "reserved header bytes are 0x%04x" % reserved)
        limit = self._own_limit("max_frame_size", DEFAULT_MAX_FRAME_SIZE)
        if length > limit:
            raise _ConnectionError(GOAWAY_FRAME_TOO_LARGE, "frame of %d bytes exceeds max_frame_size %d" % (length, limit))
        if not self._fill(HEADER_SIZE + length, deadline):
            return None
        payload = bytes(self.buffer[HEADER_SIZE:HEADER_SIZE + length])
        del self.buffer[:HEADER_SIZE + length]
        return ftype, flags, stream_id, payload

    def pump(self, deadline=None):
        """Reads and handles one frame. False if none arrived before deadline."""
        if self.closed:
            return False
        try:
            frame = self._read_frame(deadline)
            if frame is None:
                return False
            self._dispatch(*frame)
        except _ConnectionError as error:
            self._connection_error(error.reason, str(error))
        except _Closed as error:
            self._fail_connection(str(error))
        self._maybe_close_after_goaway()
        return True

    def drain(self):
        """Handles every frame that is already available, without blocking."""
        while not self.closed and (self.transport.readable() or len(self.buffer) >= HEADER_SIZE):
            if not self.pump(time.monotonic()):
                break

    def wait_for_settings(self, deadline):
        while not self.peer_settings_received:
            if self.closed:
                raise RpcError(UNAVAILABLE, self.closed)
            if time.monotonic() >= deadline:
                self._fail_connection("no SETTINGS from the server within %d s" % HANDSHAKE_TIMEOUT)
                raise RpcError(UNAVAILABLE, self.closed)
            self.pump(deadline)

    # ---- connection-level handling -----------------------------------

    def _decode(self, cls, payload):
        from google.protobuf.message import DecodeError
        try:
            return cls.FromString(payload)
        except (DecodeError, UnicodeDecodeError, ValueError) as error:
            raise _ConnectionError(GOAWAY_PROTOCOL_ERROR, "undecodable %s: %s" % (cls.DESCRIPTOR.name, error))

    def _dispatch(self, ftype, flags, stream_id, payload):
        if ftype >= len(FRAME_NAMES):
            raise _ConnectionError(GOAWAY_PROTOCOL_ERROR, "unknown frame type 0x%02x" % ftype)
        name = FRAME_NAMES[ftype]
        if not self.peer_settings_received and (ftype != SETTINGS or flags & FLAG_ACK):
            raise _ConnectionError(GOAWAY_PROTOCOL_ERROR, "first frame is %s, not SETTINGS" % name)
        if (ftype in CONNECTION_FRAMES) != (stream_id == 0):
            raise _ConnectionError(GOAWAY_PROTOCOL_ERROR, "%s on stream %d" % (name, stream_id))
        if ftype == END_STREAM:
            raise _ConnectionError(GOAWAY_PROTOCOL_ERROR, "END_STREAM frame from the server")
        if ftype == SETTINGS:
            self._on_settings(flags, payload)
        elif ftype == PING:
            if len(payload) != 8:
                raise _ConnectionError(GOAWAY_PROTOCOL_ERROR, "PING payload of %d bytes" % len(payload))
            if flags & FLAG_ACK:
                sent = self.pings.pop(payload, None)
                if sent is not None:
                    self.ping_rtts[payload] = time.monotonic() - sent
            else:
                self._send(PING, FLAG_ACK, 0, payload)
        elif ftype == GOAWAY:
            self._on_goaway(self._decode(_Protos.rpc.RpcGoAway, payload))
        elif ftype == WINDOW_UPDATE:
            if len(payload) != 4:
                raise _ConnectionError(GOAWAY_PROTOCOL_ERROR, "WINDOW_UPDATE payload of %d bytes" % len(payload))
            (increment,) = struct.unpack(">I", payload)
            if increment == 0:
                raise _ConnectionError(GOAWAY_PROTOCOL_ERROR, "WINDOW_UPDATE increment 0")
            stream = self.streams.get(stream_id)
            if stream is not None and stream.state != "closed":
                stream.send_window += increment
                if stream.send_window > MAX_WINDOW:
                    raise _ConnectionError(GOAWAY_PROTOCOL_ERROR, "send window above 2^31-1")
        else:
            self._on_stream_frame(ftype, flags, stream_id, payload)

    def _on_settings(self, flags, payload):
        if flags & FLAG_ACK:
            if payload:
                raise _ConnectionError(GOAWAY_PROTOCOL_ERROR, "SETTINGS ACK with a payload")
            if self.settings_acked:
                raise _ConnectionError(GOAWAY_PROTOCOL_ERROR, "second SETTINGS ACK")
            self.settings_acked = True
            return
        if self.peer_settings_received:
            raise _ConnectionError(GOAWAY_PROTOCOL_ERROR, "second SETTINGS")
        settings = self._decode(_Protos.rpc.RpcSettings, payload)
        if settings.max_frame_size and not MIN_MAX_FRAME_SIZE <= settings.max_frame_size <= MAX_MAX_FRAME_SIZE:
            raise _ConnectionError(GOAWAY_PROTOCOL_ERROR, "max_frame_size %d out of range" % settings.max_frame_size)
        if settings.initial_window_size > MAX_WINDOW:
            raise _ConnectionError(GOAWAY_PROTOCOL_ERROR, "initial_window_size out of range")
        old_window = self.peer["initial_window_size"]
        self.peer = {
            "max_frame_size": settings.max_frame_size or DEFAULT_MAX_FRAME_SIZE,
            "max_concurrent_streams": settings.max_concurrent_streams or DEFAULT_MAX_CONCURRENT_STREAMS,
            "initial_window_size": settings.initial_window_size or DEFAULT_INITIAL_WINDOW_SIZE,
            "max_metadata_size": settings.max_metadata_size or DEFAULT_MAX_METADATA_SIZE,
        }
        delta = self.peer["initial_window_size"] - old_window
        for stream in self.streams.values():
            if stream.state != "closed":
                stream.send_window += delta
        self.peer_settings_received = True
        self._send(SETTINGS, FLAG_ACK, 0)

    def _on_goaway(self, goaway):
        self.goaway = goaway
        for stream in self.streams.values():
            if stream.state != "closed" and stream.id > goaway.last_stream_id:
                stream.state = "closed"
                stream.error = RpcError(UNAVAILABLE, "stream not processed: server sent GOAWAY (%s)" % goaway.message)

    def _maybe_close_after_goaway(self):
        if self.goaway is not None and not self.closed and not self._open_streams():
            self._fail_connection("server sent GOAWAY reason %d: %s" % (self.goaway.reason, self.goaway.message))

    def _open_streams(self):
        return [s for s in self.streams.values() if s.state != "closed"]

    def _connection_error(self, reason, message):
        """A connection error we detected: GOAWAY, close, fail every call with 14."""
        if not self.closed:
            goaway = _Protos.rpc.RpcGoAway(last_stream_id=0, reason=reason, message=message)
            try:
                self._send(GOAWAY, 0, 0, goaway.SerializeToString())
            except RpcError:
                pass
        self._fail_connection("connection error: " + message)

    def _fail_connection(self, message):
        if self.closed:
            return
        self.closed = message
        for stream in self.streams.values():
            if stream.state != "closed":
                stream.state = "closed"
                stream.error = RpcError(UNAVAILABLE, message)
        self.transport.close()

    def close(self):
        """Closes the connection (TLS close_notify); open calls fail with 14."""
        self._fail_connection("connection closed by the client")

    def ping(self, timeout=10.0):
        """Sends a PING and waits for its ACK; returns the round trip in seconds."""
        payload = os.urandom(8)
        self.pings[payload] = time.monotonic()
        self._send(PING, 0, 0, payload)
        deadline = time.monotonic() + timeout
        while payload not in self.ping_rtts:
            if self.closed:
                raise RpcError(UNAVAILABLE, self.closed)
            if time.monotonic() >= deadline:
                raise RpcError(DEADLINE_EXCEEDED, "no PING ACK")
            self.pump(deadline)
        return self.ping_rtts.pop(payload)

    # ---- stream-level handling ---------------------------------------

    def _stream_error(self, stream, code, message):
        self._send_cancel(stream, code, message)
        stream.error = RpcError(code, message)

    def _on_stream_frame(self, ftype, flags, stream_id, payload):
        stream = self.streams.get(stream_id)
        if stream is None or stream.state == "closed":
            return  # unknown or closed stream: ignored
        rpc = _Protos.rpc
        if ftype == HEADERS:
            headers = self._decode(rpc.RpcResponseHeaders, payload)
            if stream.headers is not None or stream.received:
                self._stream_error(stream, INTERNAL, "response HEADERS repeated or after a MESSAGE")
            elif metadata_size(headers.metadata) > self._own_limit("max_metadata_size", DEFAULT_MAX_METADATA_SIZE):
                self._stream_error(stream, RESOURCE_EXHAUSTED, "response metadata larger than max_metadata_size")
            else:
                stream.headers = received_metadata(headers.metadata)
        elif ftype == MESSAGE:
            if stream.recv_window <= 0:
                self._stream_error(stream, RESOURCE_EXHAUSTED, "MESSAGE beyond the flow-control window")
                return
            stream.recv_window -= len(payload)
            stream.received += 1
            if stream.received > 1 and stream.shape in (UNARY, CLIENT_STREAMING):
                self._stream_error(stream, INTERNAL, "more than one response message")
                return
            stream.messages.append(payload)
        elif ftype == TRAILERS:
            trailers = self._decode(rpc.RpcTrailers, payload)
            stream.state = "closed"
            if metadata_size(trailers.metadata) > self._own_limit("max_metadata_size", DEFAULT_MAX_METADATA_SIZE):
                stream.error = RpcError(RESOURCE_EXHAUSTED, "trailer metadata larger than max_metadata_size")
                return
            code = trailers.code if trailers.code < len(STATUS_NAMES) else UNKNOWN
            stream.trailers = (code, trailers.message, received_metadata(trailers.metadata))
        elif ftype == CANCEL:
            cancel = self._decode(rpc.RpcCancel, payload)
            stream.state = "closed"
            code = cancel.code if 0 < cancel.code < len(STATUS_NAMES) else UNKNOWN
            stream.error = RpcError(code, cancel.message)

    # ---- calls ---------------------------------------------------------

    def start_call(self, method, response_class, metadata=(), timeout_ms=None, shape=UNARY):
        """Opens a stream (HEADERS) and returns a Call."""
        if not method.startswith("/"):
            method = "/" + method
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000.0
        entries = make_metadata(metadata)
        if not self.closed:
            self.drain()  # notice GOAWAY, answer PINGs that came while idle
        if self.closed:
            raise RpcError(UNAVAILABLE, self.closed)
        if self.goaway is not None:
            raise RpcError(UNAVAILABLE, "connection is going away (GOAWAY)")
        if metadata_size(entries) > self.peer["max_metadata_size"]:
            raise RpcError(RESOURCE_EXHAUSTED, "request metadata larger than the server's max_metadata_size")
        while len(self._open_streams()) >= self.peer["max_concurrent_streams"]:
            if deadline is not None and time.monotonic() >= deadline:
                raise RpcError(DEADLINE_EXCEEDED, "deadline exceeded waiting for a free stream")
            self.pump(deadline)
            if self.closed or self.goaway is not None:
                raise RpcError(UNAVAILABLE, self.closed or "connection is going away (GOAWAY)")
        if self.next_stream_id > 0xFFFFFFFF:
            raise RpcError(UNAVAILABLE, "stream ids exhausted on this connection")
        stream_id = self.next_stream_id
        self.next_stream_id += 1
        headers = _Protos.rpc.RpcRequestHeaders(method=method, metadata=entries)
        if timeout_ms is not None:
            headers.timeout_ms = timeout_ms
        recv_window = self._own_limit("initial_window_size", DEFAULT_INITIAL_WINDOW_SIZE)
        stream = _Stream(stream_id, shape, self.peer["initial_window_size"], recv_window, deadline)
        self.streams[stream_id] = stream
        self._send(HEADERS, 0, stream_id, headers.SerializeToString())
        return Call(self, stream, response_class)

    def unary(self, method, request, response_class, metadata=(), timeout_ms=None):
        """Returns (response, call); raises RpcError for a non-OK status."""
        call = self.start_call(method, response_class, metadata, timeout_ms, UNARY)
        call.send(request, end=True)
        responses = list(call)
        return responses[0], call

    def server_stream(self, method, request, response_class, metadata=(), timeout_ms=None):
        """Returns the call; iterate it for the responses."""
        call = self.start_call(method, response_class, metadata, timeout_ms, SERVER_STREAMING)
        call.send(request, end=True)
        return call


class Call:
    def __init__(self, conn, stream, response_class):
        self.conn = conn
        self.stream = stream
        self.response_class = response_class

    @property
    def headers(self):
        return self.stream.headers

    @property
    def trailers(self):
        return self.stream.trailers[2] if self.stream.trailers else None

    @property
    def stream_id(self):
        return self.stream.id

    def _check_deadline(self):
        s = self.stream
        if s.deadline is not None and s.state != "closed" and time.monotonic() >= s.deadline:
            self.conn._stream_error(s, DEADLINE_EXCEEDED, "deadline exceeded")

    def send(self, message, end=False):
        s = self.stream
        if s.state == "half-closed":
            raise ValueError("the request stream is already closed")
        payload = message.SerializeToString()
        if len(payload) > self.conn.peer["max_frame_size"]:
            self.conn._stream_error(s, RESOURCE_EXHAUSTED, "request message larger than max_frame_size")
            raise s.error
        while s.state == "open" and s.send_window <= 0:
            self._check_deadline()
            if s.state == "open":
                self.conn.pump(s.deadline)
        if s.state != "open":
            return  # the call has ended; its outcome comes from recv()
        self.conn._send(MESSAGE, FLAG_END_STREAM if end else 0, s.id, payload)
        s.send_window -= len(payload)
        if end:
            s.state = "half-closed"

    def close_send(self):
        if self.stream.state == "open":
            self.conn._send(END_STREAM, 0, self.stream.id)
            self.stream.state = "half-closed"

    def cancel(self):
        s = self.stream
        if s.state != "closed":
            self.conn._stream_error(s, CANCELLED, "cancelled by the client")

    def _consumed(self, size):
        s = self.stream
        s.ungranted += size
        if s.state != "closed" and s.ungranted > 0 and s.ungranted >= (s.initial_recv_window + 1) // 2:
            self.conn._send(WINDOW_UPDATE, 0, s.id, struct.pack(">I", s.ungranted))
            s.recv_window += s.ungranted
            s.ungranted = 0

    def recv(self):
        """The next response message; None after OK TRAILERS; RpcError otherwise."""
        from google.protobuf.message import DecodeError
        s = self.stream
        while True:
            if s.messages:
                payload = s.messages.popleft()
                self._consumed(len(payload))
                try:
                    return self.response_class.FromString(payload)
                except (DecodeError, UnicodeDecodeError, ValueError) as error:
                    self.conn._stream_error(s, INTERNAL, "undecodable response message: %s" % error)
                    s.messages.clear()
                    raise s.error
            if s.error is not None:
                raise s.error
            if s.trailers is not None:
                code, message, metadata = s.trailers
                if code != OK:
                    raise RpcError(code, message, metadata)
                if s.shape in (UNARY, CLIENT_STREAMING) and s.received != 1:
                    raise RpcError(INTERNAL, "status OK with %d response messages" % s.received, metadata)
                return None
            if self.conn.closed and s.state != "closed":
                raise RpcError(UNAVAILABLE, self.conn.closed)
            self._check_deadline()
            if s.state != "closed":
                self.conn.pump(s.deadline)

    def __iter__(self):
        while True:
            message = self.recv()
            if message is None:
                return
            yield message


# --------------------------------------------------------------------------
# CLI

def default_proto_dir():
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto"))


def print_status(code, message):
    print("status %d %s" % (code, message.replace("\n", "\\n")))
    sys.stdout.flush()


def cmd_call(args):
    from google.protobuf import json_format
    load_protos(args.proto_dir)
    request_class = message_class(args.request_type)
    response_class = message_class(args.response_type)
    try:
        request = json_format.Parse(args.request_json or "{}", request_class())
    except json_format.ParseError as error:
        raise SystemExit("--request-json: %s" % error)
    metadata = []
    if args.token:
        metadata.append(("authorization", "Bearer " + args.token))
    if args.request_id:
        metadata.append(("x-request-id", args.request_id))
    if args.tenant:
        metadata.append(("x-tenant", args.tenant))
    for item in args.metadata or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit("--metadata needs key=value")
        metadata.append((key, value))
    conn = None
    try:
        conn = Connection.connect(args.host, args.port, args.ca, args.cert, args.key, args.server_name)
        if args.mode == "unary":
            call = conn.start_call(args.method, response_class, metadata, args.timeout_ms, UNARY)
        else:
            call = conn.start_call(args.method, response_class, metadata, args.timeout_ms, SERVER_STREAMING)
        call.send(request, end=True)
        for response in call:
            print(json_format.MessageToJson(response, preserving_proto_field_name=True, indent=None))
            sys.stdout.flush()
    except RpcError as error:
        print_status(error.code, error.message)
        return 1
    finally:
        if conn is not None:
            conn.close()
    print_status(OK, call.stream.trailers[1])
    return 0


# --------------------------------------------------------------------------
# Self-test

class ScriptedTransport:
    """A fake server. `script` is a list of ("C", bytes|None) and ("S", bytes):
    each S item becomes readable once the client has written as many frames
    as there are C items before it. Data is handed out in small random
    chunks to exercise exact-length reading."""

    def __init__(self, script, seed=1, eof_at_end=False):
        self.script = script
        self.written = bytearray()
        self.rng = random.Random(seed)
        self.eof_at_end = eof_at_end
        self.closed = False
        self.served = 0

    def frames_written(self):
        return split_frames(bytes(self.written))

    def _available(self):
        count = len(self.frames_written())
        data = bytearray()
        c_seen = 0
        for side, item in self.script:
            if side == "C":
                c_seen += 1
            elif c_seen <= count:
                data += item
            else:
                break
        return bytes(data[self.served:]), len(data) == sum(len(i) for s, i in self.script if s == "S")

    def sendall(self, data):
        if self.closed:
            raise OSError("closed")
        self.written += data

    def recv(self, size, timeout):
        data, everything = self._available()
        if data:
            n = min(size, len(data), self.rng.randint(1, 9))
            self.served += n
            return data[:n]
        if everything and self.eof_at_end:
            return b""
        if timeout is None:
            raise AssertionError("the client would wait forever for data the script does not have")
        time.sleep(min(timeout, 0.2))
        raise TimeoutError()

    def readable(self):
        return bool(self._available()[0])

    def close(self):
        self.closed = True


def parse_example(doc_path):
    with open(doc_path, encoding="utf-8") as f:
        text = f.read()
    begin = text.index("<!-- example-begin -->")
    end = text.index("<!-- example-end -->", begin)
    script = []
    for line in text[begin:end].splitlines():
        match = re.match(r"^\s*([CS]):\s*([0-9a-fA-F ]+?)\s*$", line)
        if match:
            script.append((match.group(1), bytes.fromhex(match.group(2).replace(" ", ""))))
    if not script:
        raise AssertionError("no C:/S: lines between the example markers")
    return script


def _frame_str(frame):
    ftype, flags, sid, payload = frame
    name = FRAME_NAMES[ftype] if ftype < len(FRAME_NAMES) else hex(ftype)
    return "%s flags=%d stream=%d %s" % (name, flags, sid, payload.hex())


def _settings_frame(**values):
    return encode_frame(SETTINGS, 0, 0, _Protos.rpc.RpcSettings(**values).SerializeToString())


def _trailers_frame(sid, code=0, message=""):
    return encode_frame(TRAILERS, 0, sid, _Protos.rpc.RpcTrailers(code=code, message=message).SerializeToString())


def selftest_example(doc_path):
    script = parse_example(doc_path)
    node = sys.modules["tollgate.v1.node_service_pb2"]
    transport = ScriptedTransport(script)
    conn = Connection(transport)
    conn.wait_for_settings(time.monotonic() + 5)
    response, call = conn.unary("/tollgate.v1.NodeService/Ping", node.PingRequest(), node.PingResponse,
                                metadata=[("x-request-id", "ping-0001")], timeout_ms=5000)
    expected = [split_frames(item)[0] for side, item in script if side == "C"]
    actual = transport.frames_written()
    for i in range(max(len(expected), len(actual))):
        e = expected[i] if i < len(expected) else None
        a = actual[i] if i < len(actual) else None
        if e != a:
            raise AssertionError("client frame %d differs:\n  document: %s\n  client:   %s"
                                 % (i + 1, e and _frame_str(e), a and _frame_str(a)))
    if bytes(transport.written) != b"".join(item for side, item in script if side == "C"):
        raise AssertionError("client bytes differ from the document")
    if transport.served != sum(len(item) for side, item in script if side == "S"):
        raise AssertionError("the client did not read every server frame")
    assert response.node_id == "node-a" and response.server_time_unix_ms == 1767225600000, response
    assert call.headers == [("x-request-id", "ping-0001")], call.headers
    assert call.stream.trailers == (0, "", [("x-request-id", "ping-0001")]), call.stream.trailers
    assert conn.settings_acked and conn.peer["max_concurrent_streams"] == 100
    return "%d client frames identical to the document, %d server frames understood" % (
        len(expected), sum(1 for side, _ in script if side == "S"))


def selftest_cases():
    node = sys.modules["tollgate.v1.node_service_pb2"]
    rpc = _Protos.rpc
    ping = "/tollgate.v1.NodeService/Ping"
    server_settings = ("S", _settings_frame())
    server_ack = ("S", encode_frame(SETTINGS, FLAG_ACK, 0))
    response = encode_frame(MESSAGE, 0, 1, node.PingResponse(node_id="n").SerializeToString())
    results = []

    def run(name, script, body, **settings):
        transport = ScriptedTransport(script, seed=len(results) + 7)
        conn = Connection(transport, **settings)
        conn.wait_for_settings(time.monotonic() + 5)
        body(conn, transport)
        results.append(name)

    def written(transport, ftype):
        return [f for f in transport.frames_written() if f[0] == ftype]

    def expect_error(code, fn):
        try:
            fn()
        except RpcError as error:
            assert error.code == code, "expected %d, got %s" % (code, error)
            return error
        raise AssertionError("expected RpcError %d" % code)

    def unary(conn, timeout_ms=None):
        return conn.unary(ping, node.PingRequest(), node.PingResponse, timeout_ms=timeout_ms)

    # Non-OK TRAILERS raise with code and message; the PING before them is answered.
    def check_error_status(conn, transport):
        error = expect_error(5, lambda: unary(conn))
        assert error.message == "no such thing", error.message
        acks = written(transport, PING)
        assert acks == [(PING, FLAG_ACK, 0, b"12345678")], acks
    run("error status and PING ACK", [
        ("C", None), server_settings, server_ack, ("C", None), ("C", None), ("C", None),
        ("S", encode_frame(PING, 0, 0, b"12345678")), ("S", _trailers_frame(1, 5, "no such thing"))],
        check_error_status)

    # Server streaming with a small window: WINDOW_UPDATE as messages are consumed.
    big = node.PingResponse(payload=b"x" * 40).SerializeToString()

    def check_stream(conn, transport):
        call = conn.server_stream(ping, node.PingRequest(), node.PingResponse)
        got = [len(m.payload) for m in call]
        assert got == [40, 40, 40], got
        updates = written(transport, WINDOW_UPDATE)
        assert updates and all(struct.unpack(">I", f[3])[0] > 0 for f in updates), updates
    run("server streaming with WINDOW_UPDATE", [
        ("C", None), server_settings, server_ack, ("C", None), ("C", None), ("C", None),
        ("S", encode_frame(MESSAGE, 0, 1, big)), ("C", None),
        ("S", encode_frame(MESSAGE, 0, 1, big)), ("C", None),
        ("S", encode_frame(MESSAGE, 0, 1, big)), ("S", _trailers_frame(1))],
        check_stream, initial_window_size=64)

    # A MESSAGE while the window is already <= 0: CANCEL 8.
    def check_flow_violation(conn, transport):
        call = conn.server_stream(ping, node.PingRequest(), node.PingResponse)
        conn.pump(time.monotonic() + 1)  # both messages arrive before the first is consumed
        conn.pump(time.monotonic() + 1)
        expect_error(RESOURCE_EXHAUSTED, lambda: list(call))
        cancels = written(transport, CANCEL)
        assert len(cancels) == 1 and rpc.RpcCancel.FromString(cancels[0][3]).code == 8, cancels
    run("flow-control violation", [
        ("C", None), server_settings, server_ack, ("C", None), ("C", None), ("C", None),
        ("S", encode_frame(MESSAGE, 0, 1, big)), ("S", encode_frame(MESSAGE, 0, 1, big)),
        ("S", _trailers_frame(1))],
        check_flow_violation, initial_window_size=32)

    # Reserved bytes not zero: GOAWAY PROTOCOL_ERROR, call fails 14.
    def check_reserved(conn, transport):
        expect_error(UNAVAILABLE, lambda: unary(conn))
        goaways = written(transport, GOAWAY)
        assert len(goaways) == 1 and rpc.RpcGoAway.FromString(goaways[0][3]).reason == GOAWAY_PROTOCOL_ERROR
        assert transport.closed
    run("reserved bytes", [
        ("C", None), server_settings, server_ack, ("C", None), ("C", None), ("C", None),
        ("S", struct.pack(">IBBHI", 0, MESSAGE, 0, 1, 1))], check_reserved)

    # Length above max_frame_size: GOAWAY FRAME_TOO_LARGE from the header alone.
    def check_too_large(conn, transport):
        expect_error(UNAVAILABLE, lambda: unary(conn))
        goaways = written(transport, GOAWAY)
        assert len(goaways) == 1 and rpc.RpcGoAway.FromString(goaways[0][3]).reason == GOAWAY_FRAME_TOO_LARGE
    run("frame too large", [
        ("C", None), server_settings, server_ack, ("C", None), ("C", None), ("C", None),
        ("S", struct.pack(">IBBHI", DEFAULT_MAX_FRAME_SIZE + 1, MESSAGE, 0, 0, 1))], check_too_large)

    # Unknown frame type.
    def check_unknown_type(conn, transport):
        expect_error(UNAVAILABLE, lambda: unary(conn))
        assert rpc.RpcGoAway.FromString(written(transport, GOAWAY)[0][3]).reason == GOAWAY_PROTOCOL_ERROR
    run("unknown frame type", [
        ("C", None), server_settings, server_ack, ("C", None), ("C", None), ("C", None),
        ("S", encode_frame(0x09, 0, 0))], check_unknown_type)

    # GOAWAY with last_stream_id below ours: 14, no new streams.
    def check_goaway(conn, transport):
        expect_error(UNAVAILABLE, lambda: unary(conn))
        expect_error(UNAVAILABLE, lambda: unary(conn))
        assert len(written(transport, HEADERS)) == 1
    goaway = rpc.RpcGoAway(last_stream_id=0, reason=GOAWAY_SHUTDOWN, message="bye").SerializeToString()
    run("GOAWAY", [
        ("C", None), server_settings, server_ack, ("C", None), ("C", None), ("C", None),
        ("S", encode_frame(GOAWAY, 0, 0, goaway))], check_goaway)

    # GOAWAY SHUTDOWN covering the stream: the call still completes.
    goaway1 = rpc.RpcGoAway(last_stream_id=1, reason=GOAWAY_SHUTDOWN).SerializeToString()

    def check_goaway_drain(conn, transport):
        result, _ = unary(conn)
        assert result.node_id == "n"
        assert conn.closed  # closed once no stream remained
    run("GOAWAY drain", [
        ("C", None), server_settings, server_ack, ("C", None), ("C", None), ("C", None),
        ("S", encode_frame(GOAWAY, 0, 0, goaway1)), ("S", response), ("S", _trailers_frame(1))],
        check_goaway_drain)

    # CANCEL from the server ends the call with its code.
    cancel = rpc.RpcCancel(code=8, message="too many streams").SerializeToString()
    run("CANCEL from server", [
        ("C", None), server_settings, server_ack, ("C", None), ("C", None), ("C", None),
        ("S", encode_frame(CANCEL, 0, 1, cancel))],
        lambda conn, transport: expect_error(RESOURCE_EXHAUSTED, lambda: unary(conn)))

    # Unary with OK but two messages: 13 and CANCEL 13.
    def check_two_messages(conn, transport):
        expect_error(INTERNAL, lambda: unary(conn))
        assert rpc.RpcCancel.FromString(written(transport, CANCEL)[0][3]).code == INTERNAL
    run("unary with two responses", [
        ("C", None), server_settings, server_ack, ("C", None), ("C", None), ("C", None),
        ("S", response), ("S", response), ("S", _trailers_frame(1))], check_two_messages)

    # Own deadline: CANCEL 4 and DEADLINE_EXCEEDED.
    def check_deadline(conn, transport):
        expect_error(DEADLINE_EXCEEDED, lambda: unary(conn, timeout_ms=50))
        headers = rpc.RpcRequestHeaders.FromString(written(transport, HEADERS)[0][3])
        assert headers.HasField("timeout_ms") and headers.timeout_ms == 50
        assert rpc.RpcCancel.FromString(written(transport, CANCEL)[0][3]).code == DEADLINE_EXCEEDED
    run("client deadline", [("C", None), server_settings, server_ack], check_deadline)

    # The server closing the connection mid-call: 14.
    run("connection closed", [("C", None), server_settings, server_ack, ("C", None), ("C", None), ("C", None)],
        lambda conn, transport: (setattr(transport, "eof_at_end", True), expect_error(UNAVAILABLE, lambda: unary(conn))))

    # First frame not SETTINGS: protocol error during the handshake.
    transport = ScriptedTransport([("C", None), ("S", encode_frame(PING, 0, 0, b"abcdefgh"))])
    conn = Connection(transport)
    expect_error(UNAVAILABLE, lambda: conn.wait_for_settings(time.monotonic() + 5))
    assert rpc.RpcGoAway.FromString(written(transport, GOAWAY)[0][3]).reason == GOAWAY_PROTOCOL_ERROR
    results.append("first frame not SETTINGS")

    # Metadata: token, validation, binary keys.
    entries = make_metadata([("authorization", "Bearer abc"), ("trace-bin", b"\x00\x01")])
    assert entries[0].text == "Bearer abc" and entries[1].binary == b"\x00\x01"
    assert metadata_size(entries) == len("authorization") + 10 + len("trace-bin") + 2
    for bad in [("Upper", "x"), ("", "x"), ("k", "tab\there")]:
        try:
            make_metadata([bad])
        except ValueError:
            continue
        raise AssertionError("metadata %r accepted" % (bad,))
    results.append("metadata rules")
    return "%d scripted cases passed" % len(results)


def cmd_selftest(args):
    load_protos(args.proto_dir)
    print("example: " + selftest_example(args.doc))
    print("cases: " + selftest_cases())
    print("selftest OK")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description="Tollgate RPC client (docs/rpc-protocol.md)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--ca", help="cluster CA certificate (PEM)")
    parser.add_argument("--cert", help="client certificate (PEM), for mutual TLS")
    parser.add_argument("--key", help="client private key (PEM)")
    parser.add_argument("--server-name", help="name to verify in the server certificate (default: --host)")
    parser.add_argument("--token", help="session token, sent as `authorization: Bearer <token>`")
    parser.add_argument("--tenant", help="x-tenant metadata")
    parser.add_argument("--request-id", help="x-request-id metadata")
    parser.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="extra metadata (repeatable)")
    parser.add_argument("--timeout-ms", type=int)
    parser.add_argument("--proto-dir", default=default_proto_dir())
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("unary", "stream"):
        p = sub.add_parser(mode)
        p.add_argument("method", help="/tollgate.v1.<Service>/<Method>")
        p.add_argument("request_type")
        p.add_argument("response_type")
        p.add_argument("--request-json", help="request message as JSON (default {})")
    p = sub.add_parser("selftest")
    p.add_argument("--doc", default=os.path.join(os.path.dirname(default_proto_dir()), "docs", "rpc-protocol.md"))
    args = parser.parse_args(argv)
    if args.mode == "selftest":
        return cmd_selftest(args)
    for name in ("host", "port", "ca"):
        if getattr(args, name) is None:
            parser.error("--%s is required for %s" % (name, args.mode))
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    return cmd_call(args)


if __name__ == "__main__":
    sys.exit(main())
