#!/usr/bin/env python3
"""Stock Apache Thrift peers for Tollgate's WSO2-compatible key validation.

Apache Thrift's Python library (PyPI `thrift`, pinned in tools/requirements.txt)
with code that Debian's thrift-compiler generated from proto/thrift/*.thrift
(Tests/Interop/thrift_gen, `make proto`). Nothing here is Tollgate's code.

  client   A WSO2 gateway's calls against a Tollgate keymanager: authenticate
           over HTTPS (TCompactProtocol, THttpClient), then validateKey,
           getAllURITemplates and validateKeyforHandshake over one TLS socket
           (TBinaryProtocol, unframed). Prints "ok ..." or "FAIL ..." per
           check and "done: N checks" at the end.
  server   A WSO2 keymanager for Tollgate's gateway client: the authenticator
           over HTTPS and APIKeyValidationService over TLS, answering from a
           JSON file. Prints "ready" once both listen.
  encode   Prints the hex of messages the stock library encodes (golden bytes).
  decode   Decodes hex messages given on stdin, prints them as JSON.
"""
import argparse
import json
import os
import ssl
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "thrift_gen"))

from thrift.protocol import TBinaryProtocol, TCompactProtocol  # noqa: E402
from thrift.server import THttpServer, TServer  # noqa: E402
from thrift.Thrift import TApplicationException, TMessageType  # noqa: E402
from thrift.transport import THttpClient, TSSLSocket, TTransport  # noqa: E402

from authenticator import AuthenticatorService  # noqa: E402
from authenticator.ttypes import AuthenticationException  # noqa: E402
from keymgt import APIKeyValidationService  # noqa: E402
from keymgt.ttypes import APIKeyMgtException, APIKeyValidationInfoDTO, ConditionDTO, ConditionGroupDTO, URITemplate  # noqa: E402

INVALID_SESSION = "Invalid session id for thrift authenticator."
checks = 0
failures = 0


def check(condition, what, detail=""):
    global checks, failures
    checks += 1
    if condition:
        print(f"ok {what}", flush=True)
    else:
        failures += 1
        print(f"FAIL {what}: {detail}", flush=True)


# MARK: client


def authenticate(args, user, password):
    """AuthenticatorService.authenticate over HTTPS, as WSO2's ThriftAuthClient sends it."""
    context = ssl.create_default_context(cafile=args.ca)
    transport = THttpClient.THttpClient(args.authenticator, ssl_context=context)
    client = AuthenticatorService.Client(TCompactProtocol.TCompactProtocol(transport))
    transport.open()
    try:
        return client.authenticate(user, password)
    finally:
        transport.close()


def connect(args, strict_write=True):
    """One persistent TLS socket, unframed TBinaryProtocol, as WSO2's ThriftKeyValidatorClient."""
    context = ssl.create_default_context(cafile=args.ca)
    socket = TSSLSocket.TSSLSocket(host=args.host, port=args.port, ssl_context=context, server_hostname=args.host)
    transport = TTransport.TBufferedTransport(socket)
    protocol = TBinaryProtocol.TBinaryProtocol(transport, strictRead=False, strictWrite=strict_write)
    transport.open()
    return APIKeyValidationService.Client(protocol), transport


def run_client(args):
    for user, password, what in [(args.user, "wrong-" + args.password, "a wrong password"),
                                 (args.norole_user, args.norole_password, "a user without a Thrift role")]:
        try:
            authenticate(args, user, password)
            check(False, f"authenticate refuses {what}", "a session came back")
        except AuthenticationException as e:
            check(e.message.startswith("Invalid User"), f"authenticate refuses {what} with AuthenticationException", e.message)

    session = authenticate(args, args.user, args.password)
    check(isinstance(session, str) and len(session) > 8, "authenticate returns a session id", repr(session))

    client, transport = connect(args)

    def validate(token, session_id=None, level="Any", domain=None):
        return client.validateKey(args.context, args.version, token, session_id or session, level, domain, args.resource, args.verb)

    info = validate(args.valid)
    check(info.authorized is True and info.validationStatus == 0, "validateKey: a valid token is authorized", info)
    check(info.consumerKey == args.consumer_key and info.subscriber and info.applicationName and info.tier,
          "validateKey: the answer names the consumer key, subscriber, application and tier", info)
    check(info.type == "PRODUCTION" and info.apiName and info.apiPublisher, "validateKey: key type, API name and publisher", info)
    check(info.issuedTime and info.validityPeriod and info.validityPeriod > 0, "validateKey: issuedTime and validityPeriod are set", info)
    check(info.throttlingDataList == ["api_level_throttling_key"], "validateKey: throttlingDataList as WSO2 sends it", info)
    check(info.isContentAware is not None and info.stopOnQuotaReach is not None and info.spikeArrestLimit is not None,
          "validateKey: isContentAware, stopOnQuotaReach and spikeArrestLimit are always sent", info)

    info = validate(args.valid, level="Application_User")
    check(info.authorized is False and info.validationStatus == 900905, "validateKey: an application token on an Application_User resource is 900905", info)
    info = validate(args.invalid)
    check(info.authorized is False and info.validationStatus == 900901, "validateKey: an unknown token is 900901", info)
    info = validate(args.blocked)
    check(info.authorized is False and info.validationStatus == 900907, "validateKey: a blocked subscription is 900907", info)
    info = validate(args.unsubscribed)
    check(info.authorized is False and info.validationStatus == 900908, "validateKey: a token without a subscription is 900908", info)

    templates = client.getAllURITemplates(args.context, args.version, session)
    check(any(t.uriTemplate == args.resource and t.httpVerb == args.verb for t in templates),
          "getAllURITemplates lists the API's resource", templates)
    info = client.validateKeyforHandshake(args.context, args.version, args.valid, session)
    check(info.authorized is True, "validateKeyforHandshake: a valid token is authorized", info)

    try:
        validate(args.valid, session_id="not-a-session")
        check(False, "validateKey refuses an unknown session", "it answered")
    except APIKeyMgtException as e:
        check(e.message == INVALID_SESSION, "validateKey refuses an unknown session with APIKeyMgtException", e.message)
    # The connection survives a declared exception.
    check(validate(args.valid).authorized is True, "the connection serves calls after a declared exception")

    # The old, non-strict message header is read too (libthrift's strictRead=false).
    lenient, lenient_transport = connect(args, strict_write=False)
    info = lenient.validateKey(args.context, args.version, args.valid, session, "Any", None, args.resource, args.verb)
    check(info.authorized is True, "validateKey with the non-strict binary header", info)
    lenient_transport.close()

    # Many calls on one connection: persistent, sequence ids increase.
    for _ in range(50):
        info = validate(args.valid)
    check(info.authorized is True, "50 more calls on the same connection")

    # Sliding expiry: idle past the timeout, the session is refused; a new one works.
    time.sleep(args.session_timeout + 2)
    try:
        validate(args.valid)
        check(False, "an expired session is refused", "it answered")
    except APIKeyMgtException as e:
        check(e.message == INVALID_SESSION, "an expired session is refused with APIKeyMgtException", e.message)
    session = authenticate(args, args.user, args.password)
    check(validate(args.valid, session_id=session).authorized is True, "after authenticating again the call succeeds")
    transport.close()
    print(f"done: {checks} checks, {failures} failed", flush=True)
    return 1 if failures else 0


# MARK: server


class KeyManagerHandler:
    """A WSO2 keymanager's answers, from a JSON file: {"tokens": {token: DTO fields}, "templates": [URITemplate fields]}."""

    def __init__(self, answers, user, password, session_calls):
        self.answers = answers
        self.user = user
        self.password = password
        self.session_calls = session_calls
        self.sessions = {}
        self.lock = threading.Lock()
        self.counter = 0

    def authenticate(self, userName, password):
        if userName != self.user or password != self.password:
            raise AuthenticationException(message=f"Invalid User : {userName}")
        with self.lock:
            self.counter += 1
            session = f"session-{self.counter}"
            self.sessions[session] = 0
        print(f"authenticated {session}", flush=True)
        return session

    def _use(self, session):
        with self.lock:
            if session not in self.sessions:
                raise APIKeyMgtException(message=INVALID_SESSION)
            self.sessions[session] += 1
            # A session good for N calls: the client must authenticate again.
            if self.session_calls and self.sessions[session] >= self.session_calls:
                del self.sessions[session]

    def _dto(self, token):
        fields = self.answers["tokens"].get(token)
        if fields is None:
            return APIKeyValidationInfoDTO(authorized=False, validationStatus=900901)
        fields = dict(fields)
        if "scopes" in fields:
            fields["scopes"] = set(fields["scopes"])
        return APIKeyValidationInfoDTO(**fields)

    def validateKey(self, context, version, accessToken, sessionId, requiredAuthenticationLevel, clientDomain, matchingResource, httpVerb):
        self._use(sessionId)
        return self._dto(accessToken)

    def validateKeyforHandshake(self, context, version, accessToken, sessionId):
        self._use(sessionId)
        return self._dto(accessToken)

    def getAllURITemplates(self, context, apiVersion, sessionId):
        self._use(sessionId)
        templates = []
        for fields in self.answers.get("templates", []):
            fields = dict(fields)
            fields["conditionGroups"] = [ConditionGroupDTO(conditionGroupId=g.get("conditionGroupId"),
                                                           conditions=[ConditionDTO(**c) for c in g.get("conditions", [])])
                                         for g in fields.get("conditionGroups", [])]
            templates.append(URITemplate(**fields))
        return templates


def run_server(args):
    with open(args.answers) as f:
        answers = json.load(f)
    handler = KeyManagerHandler(answers, args.user, args.password, args.session_calls)

    # TLS as WSO2's keymanager serves it: no client certificate. An explicit
    # server context (thrift 0.25's default one is a client's).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    socket = TSSLSocket.TSSLServerSocket(host="127.0.0.1", port=args.thrift_port, ssl_context=context)
    server = TServer.TThreadedServer(APIKeyValidationService.Processor(handler), socket, TTransport.TBufferedTransportFactory(),
                                     TBinaryProtocol.TBinaryProtocolFactory(strictRead=False, strictWrite=True), daemon=True)
    http = THttpServer.THttpServer(AuthenticatorService.Processor(handler), ("127.0.0.1", args.auth_port),
                                   TCompactProtocol.TCompactProtocolFactory(), cert_file=args.cert, key_file=args.key)
    threading.Thread(target=http.serve, daemon=True).start()
    threading.Thread(target=server.serve, daemon=True).start()
    # Ready once both accept connections.
    import socket as plain
    for port in (args.thrift_port, args.auth_port):
        for _ in range(200):
            try:
                plain.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
    print("ready", flush=True)
    # Until stdin closes or the process is killed.
    sys.stdin.read()
    return 0


# MARK: golden bytes


def encode_message(name, mtype, seqid, struct, protocol_class):
    transport = TTransport.TMemoryBuffer()
    protocol = protocol_class(transport)
    protocol.writeMessageBegin(name, mtype, seqid)
    struct.write(protocol)
    protocol.writeMessageEnd()
    return transport.getvalue().hex()


def sample_dto():
    return APIKeyValidationInfoDTO(
        authorized=True, subscriber="alice", tier="Gold", type="PRODUCTION", endUserName="alice@carbon.super",
        applicationName="web", validationStatus=0, applicationId="app-1", applicationTier="Unlimited", apiName="Menu",
        consumerKey="ck-123", apiPublisher="admin", authorizedDomains=["ALL"], scopes={"read"}, validityPeriod=3600000,
        issuedTime=1700000000000, isContentAware=False, apiTier="", throttlingDataList=["api_level_throttling_key"],
        spikeArrestLimit=0, subscriberTenantDomain="carbon.super", spikeArrestUnit="min", stopOnQuotaReach=True)


def run_encode(args):
    call = APIKeyValidationService.validateKey_args(context="/menu/1", version="1", accessToken="token-abc", sessionId="session-1",
                                                    requiredAuthenticationLevel="Any", clientDomain=None, matchingResource="/dishes",
                                                    httpVerb="GET")
    reply = APIKeyValidationService.validateKey_result(success=sample_dto())
    refused = APIKeyValidationService.validateKey_result(apiKeyMgtException=APIKeyMgtException(message=INVALID_SESSION))
    auth_call = AuthenticatorService.authenticate_args(userName="admin", password="secret")
    auth_reply = AuthenticatorService.authenticate_result(success="session-1")
    auth_refused = AuthenticatorService.authenticate_result(ae=AuthenticationException(message="Invalid User : admin"))
    error = TApplicationException(TApplicationException.UNKNOWN_METHOD, "Invalid method name: 'nope'")
    binary = TBinaryProtocol.TBinaryProtocol
    compact = TCompactProtocol.TCompactProtocol
    print(json.dumps({
        "binary_call": encode_message("validateKey", TMessageType.CALL, 1, call, binary),
        "binary_reply": encode_message("validateKey", TMessageType.REPLY, 1, reply, binary),
        "binary_refused": encode_message("validateKey", TMessageType.REPLY, 7, refused, binary),
        "binary_exception": encode_message("nope", TMessageType.EXCEPTION, 3, error, binary),
        "compact_call": encode_message("authenticate", TMessageType.CALL, 1, auth_call, compact),
        "compact_reply": encode_message("authenticate", TMessageType.REPLY, 1, auth_reply, compact),
        "compact_refused": encode_message("authenticate", TMessageType.REPLY, 1, auth_refused, compact),
        "compact_dto": encode_message("validateKey", TMessageType.REPLY, 1, reply, compact),
    }))
    return 0


def run_decode(args):
    """Reads {"name": [protocol, hex]} on stdin; prints what the stock library reads."""
    requests = json.load(sys.stdin)
    result = {}
    for key, (protocol_name, hexed) in requests.items():
        transport = TTransport.TMemoryBuffer(bytes.fromhex(hexed))
        protocol = (TCompactProtocol.TCompactProtocol if protocol_name == "compact" else TBinaryProtocol.TBinaryProtocol)(transport)
        name, mtype, seqid = protocol.readMessageBegin()
        if name == "authenticate":
            struct = AuthenticatorService.authenticate_args() if mtype == TMessageType.CALL else AuthenticatorService.authenticate_result()
        else:
            struct = APIKeyValidationService.validateKey_args() if mtype == TMessageType.CALL else APIKeyValidationService.validateKey_result()
        struct.read(protocol)
        protocol.readMessageEnd()

        def plain(value):
            if isinstance(value, set):
                return sorted(value)
            if hasattr(value, "__dict__"):
                return {k: plain(v) for k, v in vars(value).items() if v is not None}
            return value
        result[key] = {"name": name, "type": mtype, "seqid": seqid, "body": plain(struct)}
    print(json.dumps(result, sort_keys=True))
    return 0


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    client = sub.add_parser("client")
    for name in ["authenticator", "host", "ca", "user", "password", "norole-user", "norole-password", "context", "version",
                 "resource", "verb", "valid", "consumer-key", "invalid", "blocked", "unsubscribed"]:
        client.add_argument("--" + name, required=True)
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--session-timeout", type=int, required=True)
    server = sub.add_parser("server")
    for name in ["cert", "key", "answers", "user", "password"]:
        server.add_argument("--" + name, required=True)
    server.add_argument("--thrift-port", type=int, required=True)
    server.add_argument("--auth-port", type=int, required=True)
    server.add_argument("--session-calls", type=int, default=0)
    sub.add_parser("encode")
    sub.add_parser("decode")
    args = parser.parse_args()
    return {"client": run_client, "server": run_server, "encode": run_encode, "decode": run_decode}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
