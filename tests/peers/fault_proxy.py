"""Fault-injecting HTTP proxy in front of the IAM/STS/Organizations test peer.

Usage:
    python fault_proxy.py --upstream http://127.0.0.1:PORT [--host 127.0.0.1]
                          [--port 0] [--control-port 0]
                          [--default-account 123456789012]
                          [--throttle-rate R [--throttle-burst B]]
                          [--ignore-stdin] [--verbose]

What it does:
  1. Listens on a data port (the AWS endpoint the exporter is pointed at) and
     forwards every request unchanged (method, path, query, headers including
     Host, body) to --upstream, normally moto_server.py. The response comes
     back unchanged, re-framed with a Content-Length; client connections are
     HTTP/1.1 keep-alive.
  2. Names each request's operation (form/query `Action=`, or the JSON
     protocol's `X-Amz-Target`), its service (the SigV4 credential scope) and
     its account (the access key id of the SigV4 credential; keys handed out
     by AssumeRole responses it forwarded map to the role's account, any other
     key to --default-account).
  3. Injects faults on command: rules set over a small JSON control API on a
     second port (PUT/GET/DELETE /faults, GET/DELETE /stats, POST /down|/up).
     Error faults are answered the way AWS answers: query-protocol
     <ErrorResponse> XML for IAM/STS, the JSON error shape for Organizations.
     A test-side extension throttles like IAM does (PUT/GET/DELETE /throttle,
     or --throttle-rate): a token bucket per account, over-rate requests
     answered Throttling without reaching the upstream.
  4. Prints ONE JSON line to stdout once both ports listen:
        {"endpoint": "http://127.0.0.1:P", "control": "http://127.0.0.1:C"}
     Everything else goes to stderr.
  5. Serves until stdin reaches EOF (the parent test died or closed the pipe)
     or SIGTERM/SIGINT arrives, then exits 0.

Python standard library only, so it runs in the moto venv (or any 3.11).
See fault_proxy.md for the control API, the rules and each fault's response.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import logging
import math
import os
import re
import select
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

DEFAULT_ACCOUNT_ID = "123456789012"
UPSTREAM_TIMEOUT = 120.0  # seconds; moto answers in milliseconds, a hang is a bug

FAULT_KINDS = ("throttle", "http_500", "http_503", "slow", "malformed_xml",
               "access_denied", "expired_token", "reset")
RULE_FIELDS = {"fault", "operation", "account_id", "service", "params", "times",
               "delay_seconds"}
THROTTLE_FIELDS = {"rate", "burst", "service"}

# Hop-by-hop headers (RFC 9110 7.6.1) are per connection: never forwarded.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
              "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade"}

QUERY_NAMESPACES = {"sts": "https://sts.amazonaws.com/doc/2011-06-15/"}
IAM_NAMESPACE = "https://iam.amazonaws.com/doc/2010-05-08/"

# fault kind -> (HTTP status, query-protocol Type, Code, Message); the
# access_denied message is filled in per request.
QUERY_ERRORS = {
    "throttle": (400, "Sender", "Throttling", "Rate exceeded"),
    "http_500": (500, "Receiver", "InternalFailure",
                 "The request processing has failed because of an unknown error, "
                 "exception or failure."),
    "http_503": (503, "Receiver", "ServiceUnavailable",
                 "Service is unable to handle request."),
    "access_denied": (403, "Sender", "AccessDenied", None),
    "expired_token": (403, "Sender", "ExpiredToken",
                      "The security token included in the request is expired"),
}
# The same for the JSON protocol (Organizations): (HTTP status, __type). JSON
# services answer client-side errors, auth ones included, with HTTP 400.
JSON_ERRORS = {
    "throttle": (400, "TooManyRequestsException"),
    "http_500": (500, "ServiceException"),
    "http_503": (503, "ServiceUnavailableException"),
    "access_denied": (400, "AccessDeniedException"),
    "expired_token": (400, "ExpiredTokenException"),
}

CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/[^/]*/[^/]*/([^/,\s]+)/")
ACCOUNT_IN_ARN_RE = re.compile(r"^arn:[^:]+:iam::(\d{12}):")
# The error code of the 502 answered when the upstream cannot be reached (a
# broken test setup, not a fault): loud in the exporter's error metrics.
UPSTREAM_FAILED = "FaultProxyUpstreamFailed"
ACCESS_KEY_RE = re.compile(rb"<AccessKeyId>\s*([^<\s]+)\s*</AccessKeyId>")

log = logging.getLogger("fault-proxy")


# --------------------------------------------------------------------------
# Rules and shared state
# --------------------------------------------------------------------------


class RuleError(ValueError):
    pass


class Rule:
    def __init__(self, doc: Any, index: int) -> None:
        where = f"rule {index}"
        if not isinstance(doc, dict):
            raise RuleError(f"{where}: expected a JSON object")
        unknown = sorted(set(doc) - RULE_FIELDS)
        if unknown:
            raise RuleError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(RULE_FIELDS)}")
        self.fault = doc.get("fault")
        if self.fault not in FAULT_KINDS:
            raise RuleError(f"{where}.fault: expected one of {list(FAULT_KINDS)}, "
                            f"got {self.fault!r}")
        for name in ("operation", "account_id", "service"):
            value = doc.get(name)
            if value is not None and (not isinstance(value, str) or not value):
                raise RuleError(f"{where}.{name}: expected a non-empty string")
        self.operation = doc.get("operation")
        self.account_id = doc.get("account_id")
        self.service = doc.get("service")
        self.params = doc.get("params")
        if self.params is not None and (
                not isinstance(self.params, dict) or not self.params or
                not all(isinstance(k, str) and k and isinstance(v, str)
                        for k, v in self.params.items())):
            raise RuleError(f"{where}.params: expected a non-empty object of strings, "
                            'e.g. {"UserName": "alice"}')
        self.times = doc.get("times")
        if self.times is not None and (isinstance(self.times, bool) or
                                       not isinstance(self.times, int) or self.times < 1):
            raise RuleError(f"{where}.times: expected a positive integer")
        self.delay_seconds = doc.get("delay_seconds")
        if self.fault == "slow":
            if (isinstance(self.delay_seconds, bool) or
                    not isinstance(self.delay_seconds, (int, float)) or self.delay_seconds < 0):
                raise RuleError(f"{where}.delay_seconds: slow needs a non-negative number")
        elif self.delay_seconds is not None:
            raise RuleError(f"{where}.delay_seconds: only for fault 'slow'")
        self.fired = 0

    def matches(self, call: "Call") -> bool:
        return ((self.operation is None or self.operation == call.operation) and
                (self.account_id is None or self.account_id == call.account) and
                (self.service is None or self.service == call.service) and
                (self.params is None or
                 all(call.params.get(k) == v for k, v in self.params.items())) and
                (self.times is None or self.fired < self.times))

    def describe(self) -> dict:
        out: dict[str, Any] = {"fault": self.fault}
        for name in ("operation", "account_id", "service", "params", "times",
                     "delay_seconds"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        out["fired"] = self.fired
        if self.times is not None:
            out["remaining"] = self.times - self.fired
        return out


def parse_rules(doc: Any) -> list[Rule]:
    if not isinstance(doc, list):
        raise RuleError("expected a JSON list of rules")
    return [Rule(r, i) for i, r in enumerate(doc)]


class RateLimit:
    """IAM-like throttling (a test-side extension): one token bucket per account.

    Each account's bucket holds at most `burst` tokens and starts full; it
    refills at `rate` tokens a second. A request (of `service`, if given) takes
    one token; with less than one left it is throttled, takes nothing, and is
    not forwarded. Accessed under State.lock.
    """

    def __init__(self, doc: Any) -> None:
        if not isinstance(doc, dict):
            raise RuleError('expected a JSON object such as {"rate": 20, "burst": 20}')
        unknown = sorted(set(doc) - THROTTLE_FIELDS)
        if unknown:
            raise RuleError(f"unknown field(s) {unknown}; allowed: {sorted(THROTTLE_FIELDS)}")
        rate, burst, service = doc.get("rate"), doc.get("burst"), doc.get("service")
        if (isinstance(rate, bool) or not isinstance(rate, (int, float)) or
                not math.isfinite(rate) or not rate > 0):
            raise RuleError("rate: expected a positive number of requests a second")
        if burst is None:
            burst = max(1, math.ceil(rate))  # one second's worth, at least 1
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise RuleError("burst: expected a positive integer (tokens)")
        if service is not None and (not isinstance(service, str) or not service):
            raise RuleError("service: expected a non-empty string")
        self.rate, self.burst, self.service = float(rate), burst, service
        self.buckets: dict[str, list[float]] = {}  # account -> [tokens, updated (monotonic)]
        self.throttled: dict[str, int] = {}

    def applies(self, service: str) -> bool:
        return self.service is None or self.service == service

    def _refill(self, account: str, now: float) -> list[float]:
        bucket = self.buckets.setdefault(account, [float(self.burst), now])
        bucket[0] = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        return bucket

    def take(self, account: str, now: float) -> bool:
        """One token of `account`'s bucket, or False (throttled)."""
        bucket = self._refill(account, now)
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return True
        self.throttled[account] = self.throttled.get(account, 0) + 1
        return False

    def describe(self, now: float) -> dict:
        accounts = {}
        for account in sorted(self.buckets):
            tokens = self._refill(account, now)[0]
            accounts[account] = {"tokens": round(tokens, 3),
                                 "throttled": self.throttled.get(account, 0)}
        return {"enabled": True, "rate": self.rate, "burst": self.burst,
                "service": self.service, "accounts": accounts}


class State:
    """Rules, counters and learned credentials, shared by all threads."""

    def __init__(self, default_account: str) -> None:
        self.default_account = default_account
        self.lock = threading.Lock()
        self.rules: list[Rule] = []
        self.rate_limit: RateLimit | None = None
        self.key_accounts: dict[str, str] = {}
        self.reset_stats()

    def reset_stats(self) -> None:
        self.requests = 0
        self.forwarded = 0
        self.throttled = 0
        self.rate_limited = 0
        self.upstream_errors = 0
        self.by_operation: dict[str, int] = {}
        self.by_account: dict[str, int] = {}
        self.by_account_operation: dict[str, dict[str, int]] = {}
        self.forwarded_by_account_operation: dict[str, dict[str, int]] = {}
        self.throttled_by_account_operation: dict[str, dict[str, int]] = {}
        self.faults = {kind: 0 for kind in FAULT_KINDS}
        if self.rate_limit is not None:
            self.rate_limit.throttled = {}

    def account_of(self, key: str | None) -> str:
        with self.lock:
            return self.key_accounts.get(key or "", self.default_account)

    def is_learned(self, key: str | None) -> bool:
        with self.lock:
            return (key or "") in self.key_accounts

    def learn(self, key: str, account: str) -> None:
        with self.lock:
            self.key_accounts[key] = account

    def admit(self, call: "Call") -> tuple[bool, Rule | None]:
        """Count a request and decide its fate: (rate limited, rule). Over the
        rate limit (if any) it is throttled and no rule is consulted; otherwise
        it took a token and the fault to inject is the first matching rule with
        firings left, if any (firing it uses one up)."""
        operation, account = call.operation, call.account
        with self.lock:
            self.requests += 1
            self.by_operation[operation] = self.by_operation.get(operation, 0) + 1
            self.by_account[account] = self.by_account.get(account, 0) + 1
            ops = self.by_account_operation.setdefault(account, {})
            ops[operation] = ops.get(operation, 0) + 1
            limit = self.rate_limit
            if (limit is not None and limit.applies(call.service) and
                    not limit.take(account, time.monotonic())):
                self.rate_limited += 1
                return True, None
            for rule in self.rules:
                if rule.matches(call):
                    rule.fired += 1
                    self.faults[rule.fault] += 1
                    return False, rule
        return False, None

    def count(self, attr: str) -> None:
        with self.lock:
            setattr(self, attr, getattr(self, attr) + 1)

    def count_outcome(self, call: "Call", outcome: str) -> None:
        """`forwarded` (answered by the upstream) or `throttled` (answered
        Throttling, by the rate limit or a `throttle` rule), per account and
        operation too."""
        with self.lock:
            setattr(self, outcome, getattr(self, outcome) + 1)
            table = getattr(self, f"{outcome}_by_account_operation")
            ops = table.setdefault(call.account, {})
            ops[call.operation] = ops.get(call.operation, 0) + 1

    def describe_rate_limit(self) -> dict:
        with self.lock:
            if self.rate_limit is None:
                return {"enabled": False}
            return self.rate_limit.describe(time.monotonic())

    def stats(self) -> dict:
        with self.lock:
            return {
                "requests": self.requests,
                "forwarded": self.forwarded,
                "throttled": self.throttled,
                "rate_limited": self.rate_limited,
                "upstream_errors": self.upstream_errors,
                "by_operation": dict(self.by_operation),
                "by_account": dict(self.by_account),
                "by_account_operation": {a: dict(o) for a, o in self.by_account_operation.items()},
                "forwarded_by_account_operation":
                    {a: dict(o) for a, o in self.forwarded_by_account_operation.items()},
                "throttled_by_account_operation":
                    {a: dict(o) for a, o in self.throttled_by_account_operation.items()},
                "faults": dict(self.faults),
                "learned_keys": dict(self.key_accounts),
            }


# --------------------------------------------------------------------------
# Request inspection
# --------------------------------------------------------------------------


class Call:
    """What the proxy knows about one request."""

    def __init__(self, handler: BaseHTTPRequestHandler, body: bytes, state: State) -> None:
        headers = handler.headers
        self.params: dict[str, str] = {}
        query = urlsplit(handler.path).query
        for source in (query, self._form(headers, body)):
            for name, values in parse_qs(source, keep_blank_values=True).items():
                self.params.setdefault(name, values[0])
        target = headers.get("X-Amz-Target")
        self.json_protocol = bool(target)
        if target:  # e.g. AWSOrganizationsV20161128.ListAccounts
            self.operation = target.rsplit(".", 1)[-1]
            # The JSON protocol's parameters: the body's top-level strings.
            try:
                doc = json.loads(body or b"{}")
            except ValueError:
                doc = None
            if isinstance(doc, dict):
                for name, value in doc.items():
                    if isinstance(value, str):
                        self.params.setdefault(name, value)
        else:
            self.operation = self.params.get("Action") or "Unknown"
        # SigV4: Authorization header, or X-Amz-Credential in a presigned URL.
        credential = headers.get("Authorization") or ""
        if "Credential=" not in credential and "X-Amz-Credential" in self.params:
            credential = "Credential=" + self.params["X-Amz-Credential"]
        m = CREDENTIAL_RE.search(credential)
        self.access_key = m.group(1) if m else None
        self.service = m.group(2) if m else "unknown"
        self.account = state.account_of(self.access_key)

    @staticmethod
    def _form(headers, body: bytes) -> str:
        if "x-www-form-urlencoded" not in (headers.get("Content-Type") or "").lower():
            return ""
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            return ""


# --------------------------------------------------------------------------
# The data port: forwarding and faults
# --------------------------------------------------------------------------


class Upstream:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--upstream: expected http://HOST:PORT, got {url!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.url = url

    def connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=UPSTREAM_TIMEOUT)


class UpstreamError(Exception):
    pass


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response has a Content-Length
    server: "DataServer"

    # -- connection lifecycle ----------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.upstream_conn: http.client.HTTPConnection | None = None
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection)

    def finish(self) -> None:
        self.server.untrack(self.connection)
        if self.upstream_conn is not None:
            self.upstream_conn.close()
        try:
            super().finish()
        except OSError:
            pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except OSError as exc:  # client went away, or /down closed the socket
            log.debug("connection dropped: %s", exc)
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s - %s", self.address_string(), format % args)

    # -- request handling --------------------------------------------------

    def do_proxy(self) -> None:
        state = self.server.state
        body = self._read_body()
        if body is None:
            return
        call = Call(self, body, state)
        rate_limited, rule = state.admit(call)
        if rate_limited:  # IAM's own throttling: never reaches the upstream
            state.count_outcome(call, "throttled")
            self._send_error_fault(call, "throttle", "rate limit")
            return
        fault = rule.fault if rule else None
        if fault == "reset":
            self._log(call, "reset")
            self._reset()
            return
        if fault in QUERY_ERRORS:
            if fault == "throttle":
                state.count_outcome(call, "throttled")
            self._send_error_fault(call, fault)
            return
        if fault == "slow":
            time.sleep(rule.delay_seconds)
        try:
            status, reason, headers, resp_body = self._forward(body)
        except UpstreamError as exc:
            state.count("upstream_errors")
            log.warning("%s: upstream failed: %s", call.operation, exc)
            self._send_aws_error(call, 502, "Receiver", UPSTREAM_FAILED,
                                 f"fault_proxy: upstream {self.server.upstream.url} failed: {exc}")
            return
        state.count_outcome(call, "forwarded")
        if fault == "malformed_xml":
            resp_body = self._mangle(resp_body, call.json_protocol)
            status, reason = 200, "OK"
        elif status == 200 and call.operation.startswith("AssumeRole"):
            self._learn_assumed(call, resp_body)
        elif status == 200 and call.operation in ("GetSessionToken", "GetFederationToken"):
            m = ACCESS_KEY_RE.search(resp_body)
            if m:  # temporary credentials of the caller's own account
                state.learn(m.group(1).decode(), call.account)
        self._log(call, f"{status}" + (f" ({fault})" if fault else ""))
        self._send(status, reason, headers, resp_body, head=self.command == "HEAD")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = do_proxy

    def _read_body(self) -> bytes | None:
        """The whole request body (Content-Length or chunked); None after
        answering 400 to a body that cannot be framed."""
        try:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                return self._read_chunked()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        except ValueError:
            self.close_connection = True
            self.send_error(400, "bad Content-Length or chunk size")
            return None

    def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # CRLF after the chunk

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Send the request upstream on this connection's upstream connection;
        retry once on a fresh one if a reused connection turns out closed."""
        upstream: Upstream = self.server.upstream
        for attempt in (1, 2):
            reused = self.upstream_conn is not None
            if self.upstream_conn is None:
                self.upstream_conn = upstream.connect()
            conn = self.upstream_conn
            try:
                conn.putrequest(self.command, upstream.prefix + self.path,
                                skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        conn.putheader(name, value)  # Host too: SigV4 signs it
                if body or self.command in ("POST", "PUT", "PATCH"):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
                resp = conn.getresponse()
                resp_body = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                self.upstream_conn = None
                if reused and attempt == 1:
                    continue  # the upstream closed an idle keep-alive connection
                raise UpstreamError(str(exc) or type(exc).__name__) from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self.upstream_conn = None
                raise UpstreamError(str(exc) or type(exc).__name__) from exc
            if resp.will_close:
                conn.close()
                self.upstream_conn = None
            # Our own Content-Length frames the body, except for HEAD: the
            # upstream's then tells the length the body would have had.
            headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP and
                       (k.lower() != "content-length" or self.command == "HEAD")]
            return resp.status, resp.reason, headers, resp_body
        raise AssertionError("unreachable")

    def _learn_assumed(self, call: Call, resp_body: bytes) -> None:
        m = ACCOUNT_IN_ARN_RE.match(call.params.get("RoleArn", ""))
        key = ACCESS_KEY_RE.search(resp_body)
        if m and key:
            self.server.state.learn(key.group(1).decode(), m.group(1))
            log.debug("learned %s -> %s", key.group(1).decode(), m.group(1))

    @staticmethod
    def _mangle(body: bytes, json_protocol: bool) -> bytes:
        """The real response cut in the middle: never well-formed XML/JSON,
        since the root element (or object) is left open."""
        if len(body) < 4:
            return b"{\"Acc" if json_protocol else b"<Error"
        return body[: len(body) // 2]

    def _send_error_fault(self, call: Call, fault: str, why: str | None = None) -> None:
        account = call.account
        if fault == "access_denied":
            principal = (f"arn:aws:sts::{account}:assumed-role/fault-proxy/fault-proxy-session"
                         if self.server.state.is_learned(call.access_key)
                         else f"arn:aws:iam::{account}:user/fault-proxy")
            message = (f"User: {principal} is not authorized to perform: "
                       f"{call.service}:{call.operation} on resource: "
                       f"arn:aws:{call.service}::{account}:* because no identity-based "
                       f"policy allows the {call.service}:{call.operation} action")
        else:
            message = QUERY_ERRORS[fault][3]
        status, kind, code, _ = QUERY_ERRORS[fault]
        if call.json_protocol:
            status, code = JSON_ERRORS[fault]
        self._log(call, f"{status} ({why or fault})")
        self._send_aws_error(call, status, kind, code, message)

    def _send_aws_error(self, call: Call, status: int, kind: str, code: str,
                        message: str) -> None:
        """An error response in the request's protocol, as AWS shapes it."""
        request_id = str(uuid.uuid4())
        if call.json_protocol:
            body = json.dumps({"__type": code, "message": message}).encode()
            headers = [("x-amzn-RequestId", request_id), ("x-amzn-ErrorType", code),
                       ("Content-Type", "application/x-amz-json-1.1")]
        else:
            namespace = QUERY_NAMESPACES.get(call.service, IAM_NAMESPACE)
            body = (f'<ErrorResponse xmlns="{namespace}">\n'
                    f"  <Error>\n    <Type>{kind}</Type>\n    <Code>{code}</Code>\n"
                    f"    <Message>{_xml_escape(message)}</Message>\n  </Error>\n"
                    f"  <RequestId>{request_id}</RequestId>\n</ErrorResponse>\n").encode()
            headers = [("x-amzn-RequestId", request_id), ("Content-Type", "text/xml")]
        self._send(status, http.client.responses.get(status, ""), headers, body)

    def _reset(self) -> None:
        """Close the TCP connection with an RST, without any response."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            # socket.close() only closes the descriptor once rfile/wfile
            # (makefile objects) are closed too. The request loop still
            # flushes wfile afterwards: give it a sink.
            self.rfile.close()
            self.wfile.close()
            self.wfile = io.BytesIO()
            self.connection.close()
        except OSError:
            pass

    def _send(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes,
              head: bool = False) -> None:
        """Write the whole response in one send (status line, headers with our
        own Content-Length, body): no Nagle/delayed-ACK stalls."""
        names = {k.lower() for k, _ in headers}
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if "date" not in names:
            lines.append(f"Date: {formatdate(usegmt=True)}")
        if not (head and "content-length" in names):
            lines.append(f"Content-Length: {len(body)}")
        if self.close_connection:
            lines.append("Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body)
        try:
            self.wfile.write(data)
        except OSError as exc:
            log.debug("client went away before the response: %s", exc)
            self.close_connection = True

    def _log(self, call: Call, outcome: str) -> None:
        log.debug("%s %s account=%s key=%s -> %s", call.service, call.operation, call.account,
                 call.access_key, outcome)


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class DataServer(ThreadingHTTPServer):
    """One listening generation of the data port; /down closes it and every
    connection it accepted, /up binds a new one to the same port."""

    daemon_threads = True
    allow_reuse_address = True  # SO_REUSEADDR: /up rebinds despite TIME_WAIT

    def __init__(self, address, state: State, upstream: Upstream) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.state = state
        self.upstream = upstream
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        self.closing = False
        super().__init__(address, ProxyHandler)

    def track(self, sock: socket.socket) -> None:
        with self.conns_lock:
            if not self.closing:
                self.conns.add(sock)
                return
        _shut(sock)  # accepted just before /down

    def untrack(self, sock: socket.socket) -> None:
        with self.conns_lock:
            self.conns.discard(sock)

    def handle_error(self, request, client_address) -> None:
        # A client closing a kept-alive connection with a reset (the SDK's pool does) is
        # no error of the proxy's; anything else is still printed.
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("connection from %s reset", client_address)
            return
        super().handle_error(request, client_address)

    def close_all(self) -> None:
        with self.conns_lock:
            self.closing = True
            conns, self.conns = list(self.conns), set()
        for sock in conns:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    # shutdown() (unlike close() from another thread) wakes the handler
    # thread blocked reading the next keep-alive request: it sees EOF.
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class DataPort:
    def __init__(self, host: str, port: int, state: State, upstream: Upstream) -> None:
        self.host, self.port = host, port
        self.state, self.upstream = state, upstream
        self.lock = threading.Lock()
        self.server: DataServer | None = None

    @property
    def is_up(self) -> bool:
        return self.server is not None

    def up(self) -> None:
        with self.lock:
            if self.server is not None:
                return
            server = DataServer((self.host, self.port), self.state, self.upstream)
            self.port = server.server_address[1]  # port 0: keep the one the OS picked
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                             name="data-port", daemon=True).start()
            self.server = server
            log.info("data port listening on %s", self.port)

    def down(self) -> None:
        with self.lock:
            server, self.server = self.server, None
            if server is None:
                return
            server.shutdown()      # stop accepting (waits for serve_forever's loop)
            server.server_close()  # close the listener: new connections are refused
            server.close_all()     # and drop the keep-alive connections
            log.info("data port closed")


# --------------------------------------------------------------------------
# The control port
# --------------------------------------------------------------------------


class ControlHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "ControlServer"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("control: %s", format % args)

    def _reply(self, status: int, doc: Any) -> None:
        body = (json.dumps(doc, indent=None) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _parse(self, body: bytes, parse) -> tuple[bool, Any]:
        """(True, parse(the body's JSON)), or (False, None) after answering 400 with
        what is wrong with it."""
        try:
            return True, parse(json.loads(body or b"null"))
        except json.JSONDecodeError as exc:
            self._reply(400, {"error": f"invalid JSON: {exc}"})
        except RuleError as exc:
            self._reply(400, {"error": str(exc)})
        return False, None

    def _route(self) -> None:
        state, data = self.server.state, self.server.data
        path = urlsplit(self.path).path.rstrip("/")
        body = self._body()
        key = (self.command, path)
        if key == ("GET", "/faults"):
            with state.lock:
                return self._reply(200, [r.describe() for r in state.rules])
        if key == ("PUT", "/faults"):
            parsed, rules = self._parse(body, parse_rules)
            if not parsed:
                return None
            with state.lock:
                state.rules = rules
                described = [r.describe() for r in rules]
            log.info("rules: %s", json.dumps(described))
            return self._reply(200, described)
        if key == ("DELETE", "/faults"):
            with state.lock:
                state.rules = []
            log.info("rules cleared")
            return self._reply(200, [])
        if key == ("GET", "/throttle"):
            return self._reply(200, state.describe_rate_limit())
        if key == ("PUT", "/throttle"):
            parsed, limit = self._parse(body, RateLimit)
            if not parsed:
                return None
            with state.lock:
                state.rate_limit = limit  # every account's bucket starts full
            described = state.describe_rate_limit()
            log.info("rate limit: %s", json.dumps(described))
            return self._reply(200, described)
        if key == ("DELETE", "/throttle"):
            with state.lock:
                state.rate_limit = None
            log.info("rate limit off")
            return self._reply(200, {"enabled": False})
        if key == ("GET", "/stats"):
            return self._reply(200, {"up": data.is_up, **state.stats()})
        if key == ("DELETE", "/stats"):
            with state.lock:
                state.reset_stats()
                for rule in state.rules:
                    rule.fired = 0
            return self._reply(200, {"up": data.is_up, **state.stats()})
        if key == ("POST", "/down"):
            data.down()
            return self._reply(200, {"up": False})
        if key == ("POST", "/up"):
            try:
                data.up()
            except OSError as exc:
                return self._reply(500, {"error": f"cannot listen on port {data.port}: {exc}"})
            return self._reply(200, {"up": True})
        known = {"/faults": "GET, PUT, DELETE", "/throttle": "GET, PUT, DELETE",
                 "/stats": "GET, DELETE", "/down": "POST", "/up": "POST"}
        if path in known:
            return self._reply(405, {"error": f"{self.command} {path}: allowed {known[path]}"})
        return self._reply(404, {"error": f"no such resource {path}; see fault_proxy.md"})

    do_GET = do_PUT = do_POST = do_DELETE = _route


class ControlServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, state: State, data: DataPort) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.state, self.data = state, data
        super().__init__(address, ControlHandler)

    def handle_error(self, request, client_address) -> None:
        # A test's HTTP client may reset a kept-alive control connection when it is
        # done with it (ureq does): not an error. Anything else is still printed.
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("control connection from %s reset", client_address)
            return
        super().handle_error(request, client_address)


# --------------------------------------------------------------------------
# Lifecycle
# --------------------------------------------------------------------------


def catch_signals() -> list[str]:
    """Record SIGTERM/SIGINT instead of dying; installed before the JSON line
    is printed, so a parent that signals right after reading it gets exit 0."""
    signals: list[str] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: signals.append(signal.Signals(signum).name))
    return signals


def wait_for_shutdown(signals: list[str], watch_stdin: bool) -> str:
    """Block until a caught signal or (if watched) EOF on stdin; return why.

    As in moto_server.py, stdin is polled with select() from the main thread
    rather than read in a helper thread: a daemon thread blocked in a read
    makes interpreter shutdown abort.
    """
    fd = sys.stdin.fileno() if watch_stdin and sys.stdin is not None else None
    while not signals:
        if fd is None:
            time.sleep(0.2)
        elif select.select([fd], [], [], 0.2)[0] and not os.read(fd, 65536):
            return "stdin EOF"  # the parent closed the pipe or died
    return signals[0]


def _url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT of moto_server.py")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="data port; 0 = any free port")
    parser.add_argument("--control-port", type=int, default=0,
                        help="control API port; 0 = any free port")
    parser.add_argument("--default-account", default=DEFAULT_ACCOUNT_ID,
                        help="account of requests signed with keys not learned from AssumeRole")
    parser.add_argument("--throttle-rate", type=float, metavar="R",
                        help="throttle like IAM from the start: R requests a second per "
                             "account (as PUT /throttle)")
    parser.add_argument("--throttle-burst", type=int, metavar="B",
                        help="with --throttle-rate: each account's bucket size "
                             "(default: R rounded up)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    parser.add_argument("--ignore-stdin", action="store_true",
                        help="do not exit on stdin EOF (for manual use, e.g. in the background)")
    args = parser.parse_args(argv)

    # Lifecycle, rule changes and upstream failures at INFO; one line per
    # request (and connection details) at DEBUG, i.e. with --verbose.
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.verbose else logging.INFO,
                        format="fault_proxy: %(message)s")
    real_stdout, sys.stdout = sys.stdout, sys.stderr  # only the JSON line goes to stdout

    if not (args.default_account.isdigit() and len(args.default_account) == 12):
        parser.error("--default-account: expected 12 digits")
    try:
        upstream = Upstream(args.upstream)
    except ValueError as exc:
        parser.error(str(exc))

    state = State(args.default_account)
    if args.throttle_burst is not None and args.throttle_rate is None:
        parser.error("--throttle-burst needs --throttle-rate")
    if args.throttle_rate is not None:
        doc: dict[str, Any] = {"rate": args.throttle_rate}
        if args.throttle_burst is not None:
            doc["burst"] = args.throttle_burst
        try:
            state.rate_limit = RateLimit(doc)
        except RuleError as exc:
            parser.error(f"--throttle-rate/--throttle-burst: {exc}")

    signals = catch_signals()
    data = DataPort(args.host, args.port, state, upstream)
    try:
        data.up()
        control = ControlServer((args.host, args.control_port), state, data)
    except OSError as exc:
        log.error("cannot listen on %s: %s", args.host, exc)
        return 1
    threading.Thread(target=control.serve_forever, name="control-port", daemon=True).start()

    line = {"endpoint": _url(args.host, data.port),
            "control": _url(args.host, control.server_address[1])}
    real_stdout.write(json.dumps(line) + "\n")
    real_stdout.flush()
    log.info("proxying %s to %s; control on %s", line["endpoint"], args.upstream, line["control"])
    if state.rate_limit is not None:
        log.info("rate limit: %s", json.dumps(state.describe_rate_limit()))

    why = wait_for_shutdown(signals, watch_stdin=not args.ignore_stdin)
    log.info("%s: stopping", why)
    data.down()
    control.shutdown()
    control.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
