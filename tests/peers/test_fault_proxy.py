"""Self-test of fault_proxy.py against moto, with boto3 as the client.

Run with the moto venv's python (it has moto, boto3 and botocore):
    target/peers/venv/bin/python tests/peers/test_fault_proxy.py [-v]

moto's ThreadedMotoServer runs in this process as the upstream; the proxy
runs as a subprocess, exactly as the Rust tests start it (stdin piped, one
JSON line on stdout). Set FAULT_PROXY_VERBOSE=1 to see its request log.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError
from botocore.parsers import ResponseParserError
from moto.server import ThreadedMotoServer

HERE = Path(__file__).resolve().parent
PROXY = HERE / "fault_proxy.py"
DEFAULT_ACCOUNT = "123456789012"
OTHER_ACCOUNT = "222222222222"
VERBOSE = bool(os.environ.get("FAULT_PROXY_VERBOSE"))

# One attempt: a fault must surface as the error, not be retried away.
NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"},
                    connect_timeout=5, read_timeout=30)
TEST_CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
FAKE_AUTH = ("AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/iam/aws4_request, "
             "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64)
LIST_USERS_FORM = b"Action=ListUsers&Version=2010-05-08"

moto: ThreadedMotoServer
upstream_url: str


def setUpModule() -> None:
    global moto, upstream_url
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    upstream_url = f"http://{host}:{port}"


def tearDownModule() -> None:
    moto.stop()


class Proxy:
    """fault_proxy.py as a subprocess, started the way the Rust tests do."""

    def __init__(self, *extra: str, upstream: str | None = None) -> None:
        args = [sys.executable, str(PROXY), "--upstream", upstream or upstream_url, *extra]
        if VERBOSE:
            args.append("--verbose")
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=None if VERBOSE else subprocess.DEVNULL)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fault_proxy exited with {self.proc.wait()}")
        self.line = json.loads(line)
        self.endpoint, self.control_url = self.line["endpoint"], self.line["control"]
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        self.control_port = int(self.control_url.rsplit(":", 1)[1])

    def control(self, method: str, path: str, doc=None) -> tuple[int, object]:
        conn = http.client.HTTPConnection("127.0.0.1", self.control_port, timeout=10)
        body = None if doc is None else json.dumps(doc)
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        out = resp.status, json.loads(resp.read())
        conn.close()
        return out

    def faults(self, *rules: dict) -> list:
        status, doc = self.control("PUT", "/faults", list(rules))
        assert status == 200, doc
        return doc

    def stats(self) -> dict:
        return self.control("GET", "/stats")[1]

    def client(self, service: str, **creds):
        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1",
                            config=NO_RETRIES, **(creds or TEST_CREDS))

    def stop(self) -> int:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        return self.proc.returncode


def raw_request(conn: http.client.HTTPConnection, body: bytes = LIST_USERS_FORM,
                method: str = "POST", path: str = "/", **kw) -> http.client.HTTPResponse:
    headers = {"Authorization": FAKE_AUTH, "X-Amz-Date": "20240101T000000Z"}
    if method == "POST":
        headers["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8"
    conn.request(method, path, body=body if method == "POST" else None, headers=headers, **kw)
    return conn.getresponse()


class FaultProxyTest(unittest.TestCase):
    proxy: Proxy

    @classmethod
    def setUpClass(cls) -> None:
        cls.proxy = Proxy()
        cls.iam = cls.proxy.client("iam")
        cls.sts = cls.proxy.client("sts")
        cls.orgs = cls.proxy.client("organizations")
        cls.iam.create_user(UserName="alice")

    @classmethod
    def tearDownClass(cls) -> None:
        code = cls.proxy.stop()
        if code != 0:
            raise AssertionError(f"fault_proxy exited with {code}")

    def setUp(self) -> None:
        self.proxy.control("DELETE", "/faults")
        self.proxy.control("DELETE", "/throttle")
        self.proxy.control("POST", "/up")

    def raw(self, port: int | None = None) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", port or self.proxy.port, timeout=10)
        self.addCleanup(conn.close)
        return conn

    def assertCode(self, call, code: str, status: int) -> ClientError:
        with self.assertRaises(ClientError) as ctx:
            call()
        err = ctx.exception.response
        self.assertEqual(err["Error"]["Code"], code)
        self.assertEqual(err["ResponseMetadata"]["HTTPStatusCode"], status)
        return ctx.exception

    # -- pass-through --------------------------------------------------------

    def test_json_line(self) -> None:
        self.assertEqual(set(self.proxy.line), {"endpoint", "control"})
        self.assertRegex(self.proxy.endpoint, r"^http://127\.0\.0\.1:\d+$")
        self.assertNotEqual(self.proxy.port, self.proxy.control_port)

    def test_pass_through_iam_sts_organizations(self) -> None:
        names = [u["UserName"] for u in self.iam.list_users()["Users"]]
        self.assertIn("alice", names)
        self.iam.create_access_key(UserName="alice")
        keys = self.iam.list_access_keys(UserName="alice")["AccessKeyMetadata"]
        self.assertGreaterEqual(len(keys), 1)
        self.assertEqual(self.sts.get_caller_identity()["Account"], DEFAULT_ACCOUNT)
        try:
            self.orgs.create_organization(FeatureSet="ALL")
        except ClientError as exc:  # another test got there first
            self.assertEqual(exc.response["Error"]["Code"], "AlreadyInOrganizationException")
        accounts = self.orgs.list_accounts()["Accounts"]
        self.assertIn(DEFAULT_ACCOUNT, [a["Id"] for a in accounts])
        by_op = self.proxy.stats()["by_operation"]
        for op in ("ListUsers", "ListAccessKeys", "GetCallerIdentity", "ListAccounts"):
            self.assertGreaterEqual(by_op.get(op, 0), 1, op)

    def test_response_unchanged(self) -> None:
        """Status, headers and body as moto sent them, bar the request id and
        the framing (moto closes every connection; the proxy keeps them)."""
        direct = self.raw(int(upstream_url.rsplit(":", 1)[1]))
        via = self.raw()
        for conn in (direct, via):
            resp = raw_request(conn, b"Action=GetUser&UserName=nobody&Version=2010-05-08")
            body = re.sub(rb"<RequestId>[^<]*</RequestId>", b"<RequestId/>", resp.read())
            headers = {k: v for k, v in resp.getheaders()
                       if k.lower() not in ("date", "x-amzn-requestid", "connection")}
            conn.result = (resp.status, headers, body)
        self.assertEqual(via.result, direct.result)
        self.assertEqual(via.result[0], 404)
        self.assertIn(b"<Code>NoSuchEntity</Code>", via.result[2])

    def test_keep_alive(self) -> None:
        conn = self.raw()
        local = None
        for _ in range(3):
            resp = raw_request(conn)
            self.assertEqual(resp.status, 200)
            self.assertIsNotNone(resp.getheader("Content-Length"))
            self.assertIn(b"<ListUsersResponse", resp.read())
            self.assertFalse(resp.will_close)
            local = local or conn.sock.getsockname()
            self.assertEqual(conn.sock.getsockname(), local, "same TCP connection")
        conn.close()

    def test_action_in_query_string_and_chunked_body(self) -> None:
        conn = self.raw()
        before = self.proxy.stats()["by_operation"].get("ListUsers", 0)
        resp = raw_request(conn, method="GET", path="/?Action=ListUsers&Version=2010-05-08")
        body = resp.read()
        self.assertEqual(resp.status, 200, body)
        self.assertIn(b"<ListUsersResponse", body)
        resp = raw_request(conn, body=iter([b"Action=ListUsers", b"&Version=2010-05-08"]),
                           encode_chunked=True)
        self.assertIn(b"<ListUsersResponse", resp.read())
        self.assertEqual(self.proxy.stats()["by_operation"]["ListUsers"], before + 2)

    # -- each fault ------------------------------------------------------------

    def test_error_faults_query_protocol(self) -> None:
        cases = [("throttle", "Throttling", 400, "Rate exceeded"),
                 ("http_500", "InternalFailure", 500, None),
                 ("http_503", "ServiceUnavailable", 503, None),
                 ("access_denied", "AccessDenied", 403, "iam:ListUsers"),
                 ("expired_token", "ExpiredToken", 403,
                  "The security token included in the request is expired")]
        for kind, code, status, message in cases:
            with self.subTest(kind):
                self.proxy.faults({"fault": kind, "operation": "ListUsers"})
                err = self.assertCode(self.iam.list_users, code, status)
                if message:
                    self.assertIn(message, err.response["Error"]["Message"])
                self.assertTrue(err.response["ResponseMetadata"]["RequestId"])
                self.iam.get_user(UserName="alice")  # other operations unaffected
                self.assertEqual(self.proxy.control("GET", "/faults")[1][0]["fired"], 1)
        # STS speaks the same query protocol (its own XML namespace).
        self.proxy.faults({"fault": "expired_token", "service": "sts"})
        self.assertCode(self.sts.get_caller_identity, "ExpiredToken", 403)
        self.iam.list_users()

    def test_error_faults_json_protocol(self) -> None:
        cases = [("throttle", "TooManyRequestsException", 400),
                 ("http_500", "ServiceException", 500),
                 ("http_503", "ServiceUnavailableException", 503),
                 ("access_denied", "AccessDeniedException", 400),
                 ("expired_token", "ExpiredTokenException", 400)]
        for kind, code, status in cases:
            with self.subTest(kind):
                self.proxy.faults({"fault": kind, "operation": "ListAccounts"})
                self.assertCode(self.orgs.list_accounts, code, status)

    def test_malformed_xml(self) -> None:
        self.proxy.faults({"fault": "malformed_xml", "operation": "ListUsers"})
        with self.assertRaises(ResponseParserError):
            self.iam.list_users()
        conn = self.raw()
        resp = raw_request(conn)
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.getheader("Content-Type"), "text/xml")
        body = resp.read()
        self.assertTrue(body.startswith(b"<ListUsersResponse"))
        self.assertNotIn(b"</ListUsersResponse>", body)

    def test_malformed_json(self) -> None:
        try:
            self.orgs.create_organization(FeatureSet="ALL")
        except ClientError:
            pass
        conn = self.raw()

        def list_accounts() -> http.client.HTTPResponse:
            conn.request("POST", "/", body=b"{}", headers={
                "Authorization": FAKE_AUTH.replace("/iam/", "/organizations/"),
                "X-Amz-Target": "AWSOrganizationsV20161128.ListAccounts",
                "Content-Type": "application/x-amz-json-1.1"})
            return conn.getresponse()

        normal = list_accounts()
        self.assertEqual(normal.status, 200)
        json.loads(normal.read())
        self.proxy.faults({"fault": "malformed_xml", "operation": "ListAccounts"})
        # botocore shrugs off invalid JSON (it keeps the text as an error
        # "message" and returns no data); the Rust SDK fails to deserialize.
        self.assertNotIn("Accounts", self.orgs.list_accounts())
        resp = list_accounts()
        self.assertEqual(resp.status, 200)
        # moto labels its JSON text/html; the proxy keeps whatever came.
        self.assertEqual(resp.getheader("Content-Type"), normal.getheader("Content-Type"))
        body = resp.read()
        self.assertTrue(body.startswith(b'{"Accounts"'), body)
        with self.assertRaises(ValueError):
            json.loads(body)

    def test_reset(self) -> None:
        self.proxy.faults({"fault": "reset", "operation": "ListUsers"})
        with self.assertRaises(ConnectionClosedError):
            self.iam.list_users()
        conn = self.raw()
        with self.assertRaises((ConnectionResetError, http.client.RemoteDisconnected)):
            raw_request(conn)
        self.iam.get_user(UserName="alice")
        self.assertEqual(self.proxy.stats()["faults"]["reset"], 2)

    def test_slow_does_not_block_others(self) -> None:
        self.proxy.faults({"fault": "slow", "operation": "ListUsers", "delay_seconds": 1.0})
        took = {}

        def slow() -> None:
            start = time.monotonic()
            self.proxy.client("iam").list_users()
            took["slow"] = time.monotonic() - start

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.1)
        start = time.monotonic()
        self.iam.get_user(UserName="alice")
        took["fast"] = time.monotonic() - start
        thread.join()
        self.assertGreaterEqual(took["slow"], 1.0)
        self.assertLess(took["fast"], 0.5)

    # -- rule semantics ----------------------------------------------------------

    def test_times_and_order(self) -> None:
        self.proxy.faults({"fault": "throttle", "operation": "ListUsers", "times": 2},
                          {"fault": "http_500", "operation": "ListUsers", "times": 1})
        self.assertCode(self.iam.list_users, "Throttling", 400)
        self.assertCode(self.iam.list_users, "Throttling", 400)
        self.assertCode(self.iam.list_users, "InternalFailure", 500)
        self.iam.list_users()  # every rule used up
        rules = self.proxy.control("GET", "/faults")[1]
        self.assertEqual([(r["fired"], r["remaining"]) for r in rules], [(2, 0), (1, 0)])

    def test_throttle_is_iams_throttling_answer(self) -> None:
        """Byte for byte what IAM sends when it throttles (as captured from a
        real IAM answer): HTTP 400, text/xml, Sender/Throttling/"Rate exceeded",
        the request id in the body and in x-amzn-RequestId."""
        self.proxy.faults({"fault": "throttle", "operation": "ListUsers"})
        resp = raw_request(self.raw())
        body = resp.read().decode()
        self.assertEqual((resp.status, resp.reason), (400, "Bad Request"))
        self.assertEqual(resp.getheader("Content-Type"), "text/xml")
        request_id = resp.getheader("x-amzn-RequestId")
        self.assertRegex(request_id, r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
        self.assertEqual(body,
                         '<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">\n'
                         "  <Error>\n"
                         "    <Type>Sender</Type>\n"
                         "    <Code>Throttling</Code>\n"
                         "    <Message>Rate exceeded</Message>\n"
                         "  </Error>\n"
                         f"  <RequestId>{request_id}</RequestId>\n"
                         "</ErrorResponse>\n")
        ns = "{https://iam.amazonaws.com/doc/2010-05-08/}"
        root = ET.fromstring(body)
        self.assertEqual(root.tag, f"{ns}ErrorResponse")
        self.assertEqual([(e.tag, e.text) for e in root.find(f"{ns}Error")],
                         [(f"{ns}Type", "Sender"), (f"{ns}Code", "Throttling"),
                          (f"{ns}Message", "Rate exceeded")])
        # botocore reads it as IAM's throttle, which its retry handler retries.
        err = self.assertCode(self.iam.list_users, "Throttling", 400)
        self.assertEqual(err.response["Error"]["Type"], "Sender")
        self.assertEqual(err.response["Error"]["Message"], "Rate exceeded")

    def test_consecutive_throttles_on_one_call(self) -> None:
        """`params` picks one call among concurrent ones of the same
        operation: N throttles in a row for alice, none for bob."""
        self.iam.create_user(UserName="bob-params")
        self.proxy.control("DELETE", "/stats")
        self.proxy.faults({"fault": "throttle", "operation": "ListAccessKeys",
                           "params": {"UserName": "alice"}, "times": 3})
        for _ in range(3):
            self.assertCode(lambda: self.iam.list_access_keys(UserName="alice"),
                            "Throttling", 400)
            self.iam.list_access_keys(UserName="bob-params")  # another user's call
        self.iam.list_access_keys(UserName="alice")
        rules = self.proxy.control("GET", "/faults")[1]
        self.assertEqual(rules[0]["params"], {"UserName": "alice"})
        self.assertEqual((rules[0]["fired"], rules[0]["remaining"]), (3, 0))
        stats = self.proxy.stats()
        self.assertEqual(stats["throttled_by_account_operation"],
                         {DEFAULT_ACCOUNT: {"ListAccessKeys": 3}})
        self.assertEqual(stats["forwarded_by_account_operation"],
                         {DEFAULT_ACCOUNT: {"ListAccessKeys": 4}})
        self.assertEqual((stats["throttled"], stats["rate_limited"]), (3, 0))
        self.iam.delete_user(UserName="bob-params")

    def test_rule_without_operation_matches_everything(self) -> None:
        self.proxy.faults({"fault": "http_503", "times": 2})
        self.assertCode(self.iam.list_users, "ServiceUnavailable", 503)
        self.assertCode(self.sts.get_caller_identity, "ServiceUnavailable", 503)
        self.iam.list_users()

    def test_account_from_assume_role(self) -> None:
        creds = self.sts.assume_role(RoleArn=f"arn:aws:iam::{OTHER_ACCOUNT}:role/auditor",
                                     RoleSessionName="fault-proxy-test")["Credentials"]
        other = self.proxy.client("iam", aws_access_key_id=creds["AccessKeyId"],
                                  aws_secret_access_key=creds["SecretAccessKey"],
                                  aws_session_token=creds["SessionToken"])
        stats = self.proxy.stats()
        self.assertEqual(stats["learned_keys"][creds["AccessKeyId"]], OTHER_ACCOUNT)

        self.proxy.faults({"fault": "access_denied", "account_id": OTHER_ACCOUNT})
        err = self.assertCode(other.list_users, "AccessDenied", 403)
        self.assertIn(f"arn:aws:sts::{OTHER_ACCOUNT}:assumed-role/", err.response["Error"]["Message"])
        self.iam.list_users()  # the default account is not affected

        self.proxy.faults({"fault": "throttle", "account_id": DEFAULT_ACCOUNT})
        # moto too puts the assumed role's calls in the other account: no alice.
        self.assertNotIn("alice", [u["UserName"] for u in other.list_users()["Users"]])
        self.assertCode(self.iam.list_users, "Throttling", 400)

        by_account = self.proxy.stats()["by_account_operation"]
        self.assertEqual(by_account[OTHER_ACCOUNT]["ListUsers"], 2)
        self.assertNotIn("AssumeRole", by_account[OTHER_ACCOUNT])  # signed by the caller

    def test_invalid_rules_rejected(self) -> None:
        self.proxy.faults({"fault": "throttle"})
        for bad in ({"fault": "explode"}, {"fault": "throttle", "operaton": "ListUsers"},
                    {"fault": "slow"}, {"fault": "throttle", "delay_seconds": 1},
                    {"fault": "throttle", "times": 0}, {"fault": "throttle", "account_id": 2},
                    {"fault": "throttle", "params": {}}, {"fault": "throttle", "params": ["x"]},
                    {"fault": "throttle", "params": {"UserName": 1}}):
            with self.subTest(bad):
                status, doc = self.proxy.control("PUT", "/faults", [bad])
                self.assertEqual(status, 400)
                self.assertIn("error", doc)
        status, _ = self.proxy.control("PUT", "/faults", {"fault": "throttle"})  # not a list
        self.assertEqual(status, 400)
        self.assertEqual(len(self.proxy.control("GET", "/faults")[1]), 1, "rules kept")
        self.assertEqual(self.proxy.control("DELETE", "/faults"), (200, []))
        self.assertEqual(self.proxy.control("GET", "/nope")[0], 404)
        self.assertEqual(self.proxy.control("POST", "/faults")[0], 405)

    def test_stats(self) -> None:
        self.proxy.control("DELETE", "/stats")
        self.proxy.faults({"fault": "throttle", "operation": "ListUsers", "times": 1})
        self.assertCode(self.iam.list_users, "Throttling", 400)
        self.iam.list_users()
        stats = self.proxy.stats()
        self.assertEqual((stats["requests"], stats["forwarded"]), (2, 1))
        self.assertEqual(stats["by_operation"], {"ListUsers": 2})
        self.assertEqual(stats["by_account"], {DEFAULT_ACCOUNT: 2})
        self.assertEqual(stats["faults"]["throttle"], 1)
        self.assertEqual(sum(stats["faults"].values()), 1)
        self.assertTrue(stats["up"])

    # -- down / up ---------------------------------------------------------------

    def test_down_and_up(self) -> None:
        idle = self.raw()
        raw_request(idle).read()  # an idle keep-alive connection
        self.assertEqual(self.proxy.control("POST", "/down"), (200, {"up": False}))
        self.assertFalse(self.proxy.stats()["up"])
        with self.assertRaises(EndpointConnectionError):
            self.proxy.client("iam").list_users()
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", self.proxy.port), timeout=5)
        # The kept-alive connection was closed too (http.client does not
        # reconnect after a request was sent).
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionResetError,
                                BrokenPipeError)):
            raw_request(idle)
        self.assertEqual(self.proxy.control("POST", "/down"), (200, {"up": False}))  # idempotent

        self.assertEqual(self.proxy.control("POST", "/up"), (200, {"up": True}))
        self.assertIn("alice", [u["UserName"] for u in self.iam.list_users()["Users"]])
        self.assertEqual(self.proxy.control("POST", "/up"), (200, {"up": True}))


class RateLimitTest(unittest.TestCase):
    """The IAM-like throttling of PUT /throttle: a token bucket per account."""

    proxy: Proxy

    @classmethod
    def setUpClass(cls) -> None:
        cls.proxy = Proxy()
        cls.iam = cls.proxy.client("iam")
        # A second account: keys learned from an AssumeRole through the proxy.
        creds = cls.proxy.client("sts").assume_role(
            RoleArn=f"arn:aws:iam::{OTHER_ACCOUNT}:role/auditor",
            RoleSessionName="rate-limit-test")["Credentials"]
        cls.other = cls.proxy.client("iam", aws_access_key_id=creds["AccessKeyId"],
                                     aws_secret_access_key=creds["SecretAccessKey"],
                                     aws_session_token=creds["SessionToken"])

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.proxy.stop() != 0:
            raise AssertionError("fault_proxy did not exit 0")

    def setUp(self) -> None:
        self.proxy.control("DELETE", "/faults")
        self.proxy.control("DELETE", "/throttle")
        self.proxy.control("DELETE", "/stats")

    def throttle(self, **doc) -> dict:
        status, out = self.proxy.control("PUT", "/throttle", doc)
        self.assertEqual(status, 200, out)
        return out

    def outcomes(self, client, n: int) -> list[str]:
        """n ListUsers calls at once, one after another: 'ok' or the error code."""
        out = []
        for _ in range(n):
            try:
                client.list_users()
                out.append("ok")
            except ClientError as exc:
                out.append(exc.response["Error"]["Code"])
        return out

    def test_burst_then_throttled(self) -> None:
        said = self.throttle(rate=0.5, burst=5)
        self.assertEqual(said, {"enabled": True, "rate": 0.5, "burst": 5, "service": None,
                                "accounts": {}})
        self.assertEqual(self.outcomes(self.iam, 7), ["ok"] * 5 + ["Throttling"] * 2)
        stats = self.proxy.stats()
        self.assertEqual((stats["requests"], stats["forwarded"]), (7, 5))
        self.assertEqual((stats["throttled"], stats["rate_limited"]), (2, 2))
        self.assertEqual(stats["faults"]["throttle"], 0, "no rule fired")
        self.assertEqual(stats["forwarded_by_account_operation"],
                         {DEFAULT_ACCOUNT: {"ListUsers": 5}})
        self.assertEqual(stats["throttled_by_account_operation"],
                         {DEFAULT_ACCOUNT: {"ListUsers": 2}})
        bucket = self.proxy.control("GET", "/throttle")[1]["accounts"][DEFAULT_ACCOUNT]
        self.assertEqual(bucket["throttled"], 2)
        self.assertLess(bucket["tokens"], 1)

    def test_over_rate_answer_is_iams_and_not_forwarded(self) -> None:
        self.throttle(rate=0.1, burst=1)
        conn = http.client.HTTPConnection("127.0.0.1", self.proxy.port, timeout=10)
        self.addCleanup(conn.close)
        first = raw_request(conn)
        first.read()
        self.assertEqual(first.status, 200)
        resp = raw_request(conn)
        body = resp.read()
        self.assertEqual(resp.status, 400)
        self.assertEqual(resp.getheader("Content-Type"), "text/xml")
        self.assertFalse(resp.will_close, "the connection stays open")
        request_id = resp.getheader("x-amzn-RequestId")
        self.assertIn(f"<RequestId>{request_id}</RequestId>".encode(), body)
        self.assertIn(b"<Type>Sender</Type>\n    <Code>Throttling</Code>\n"
                      b"    <Message>Rate exceeded</Message>", body)
        self.assertEqual(self.proxy.stats()["forwarded"], 1)

    def test_refill_at_the_rate(self) -> None:
        self.throttle(rate=10, burst=1)
        self.assertEqual(self.outcomes(self.iam, 2), ["ok", "Throttling"])
        time.sleep(0.15)  # 1.5 tokens' worth, capped at the burst of 1
        self.assertEqual(self.outcomes(self.iam, 2), ["ok", "Throttling"])
        # Back to back for a while: the burst plus rate x time get through.
        self.throttle(rate=20, burst=2)
        start, admitted = time.monotonic(), 0
        while time.monotonic() - start < 1.5:
            admitted += self.outcomes(self.iam, 1) == ["ok"]
        elapsed = time.monotonic() - start
        self.assertGreaterEqual(admitted, int(20 * 1.5 * 0.8))
        self.assertLessEqual(admitted, 2 + 20 * elapsed + 1)
        self.assertGreater(self.proxy.stats()["rate_limited"], 0)

    def test_each_account_has_its_own_bucket(self) -> None:
        self.throttle(rate=0.1, burst=2)
        self.assertEqual(self.outcomes(self.iam, 3), ["ok", "ok", "Throttling"])
        # The default account's bucket is empty; the other account's is full.
        self.assertEqual(self.outcomes(self.other, 3), ["ok", "ok", "Throttling"])
        self.assertEqual(self.outcomes(self.iam, 1), ["Throttling"])
        stats = self.proxy.stats()
        self.assertEqual(stats["throttled_by_account_operation"],
                         {DEFAULT_ACCOUNT: {"ListUsers": 2}, OTHER_ACCOUNT: {"ListUsers": 1}})
        self.assertEqual(stats["forwarded_by_account_operation"],
                         {DEFAULT_ACCOUNT: {"ListUsers": 2}, OTHER_ACCOUNT: {"ListUsers": 2}})
        accounts = self.proxy.control("GET", "/throttle")[1]["accounts"]
        self.assertEqual({a: b["throttled"] for a, b in accounts.items()},
                         {DEFAULT_ACCOUNT: 2, OTHER_ACCOUNT: 1})
        # Replacing the limit refills every bucket.
        self.throttle(rate=0.1, burst=1)
        self.assertEqual(self.outcomes(self.iam, 2), ["ok", "Throttling"])
        self.assertEqual(self.outcomes(self.other, 2), ["ok", "Throttling"])

    def test_service_and_protocols(self) -> None:
        self.throttle(rate=0.1, burst=1, service="iam")
        sts = self.proxy.client("sts")
        for _ in range(3):
            sts.get_caller_identity()  # not IAM: no token taken
        self.assertEqual(self.outcomes(self.iam, 2), ["ok", "Throttling"])
        # Organizations (JSON protocol) throttled in its own shape.
        self.throttle(rate=0.1, burst=1)
        orgs = self.proxy.client("organizations")
        try:
            orgs.describe_organization()
        except ClientError:
            pass  # no organization: still took the token
        with self.assertRaises(ClientError) as ctx:
            orgs.list_accounts()
        self.assertEqual(ctx.exception.response["Error"]["Code"], "TooManyRequestsException")
        self.assertEqual(ctx.exception.response["ResponseMetadata"]["HTTPStatusCode"], 400)

    def test_rate_limit_before_rules(self) -> None:
        """Over the rate, no rule is consulted (none fires); under it, the
        request took a token and the rules apply."""
        self.throttle(rate=0.1, burst=1)
        self.proxy.faults({"fault": "http_500", "operation": "ListUsers", "times": 1})
        self.assertEqual(self.outcomes(self.iam, 3), ["InternalFailure", "Throttling",
                                                      "Throttling"])
        self.assertEqual(self.proxy.control("GET", "/faults")[1][0]["fired"], 1)

    def test_an_sdk_retrying_with_backoff_gets_through(self) -> None:
        self.throttle(rate=5, burst=1)
        retrying = boto3.client("iam", endpoint_url=self.proxy.endpoint,
                                region_name="us-east-1", **TEST_CREDS,
                                config=Config(retries={"total_max_attempts": 20,
                                                       "mode": "standard"}))
        for _ in range(6):
            retrying.list_users()
        stats = self.proxy.stats()
        self.assertEqual(stats["forwarded"], 6)
        self.assertGreater(stats["throttled"], 0)
        self.assertEqual(stats["requests"], stats["forwarded"] + stats["throttled"])

    def test_off_and_stats_reset(self) -> None:
        self.throttle(rate=0.1, burst=1)
        self.assertEqual(self.outcomes(self.iam, 2), ["ok", "Throttling"])
        self.assertEqual(self.proxy.control("DELETE", "/stats")[1]["throttled"], 0)
        accounts = self.proxy.control("GET", "/throttle")[1]["accounts"]
        self.assertEqual(accounts[DEFAULT_ACCOUNT]["throttled"], 0)
        self.assertLess(accounts[DEFAULT_ACCOUNT]["tokens"], 1, "the bucket is kept")
        self.assertEqual(self.proxy.control("DELETE", "/throttle"), (200, {"enabled": False}))
        self.assertEqual(self.proxy.control("GET", "/throttle"), (200, {"enabled": False}))
        self.assertEqual(self.outcomes(self.iam, 3), ["ok"] * 3)

    def test_invalid_limits_rejected(self) -> None:
        self.throttle(rate=3, burst=4)
        for bad in ({}, {"rate": 0}, {"rate": -1}, {"rate": "20"}, {"rate": True},
                    {"rate": 20, "burst": 0}, {"rate": 20, "burst": 1.5},
                    {"rate": 20, "service": ""}, {"rate": 20, "brust": 20}, [20], None):
            with self.subTest(bad):
                status, doc = self.proxy.control("PUT", "/throttle", bad)
                self.assertEqual(status, 400, doc)
                self.assertIn("error", doc)
        said = self.proxy.control("GET", "/throttle")[1]
        self.assertEqual((said["rate"], said["burst"]), (3, 4), "the limit is kept")
        self.assertEqual(self.throttle(rate=2.5)["burst"], 3, "one second's worth")
        self.assertEqual(self.proxy.control("POST", "/throttle")[0], 405)


# moto with request authentication on (after 3 unauthenticated calls), in its
# own process: the switch is read when moto is imported.
AUTH_MOTO = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


class SignatureTest(unittest.TestCase):
    """SigV4 signs the Host header: moto, with auth on, recomputes the
    signature with the Host it receives, so the proxy must keep the client's."""

    def test_signatures_verify_through_proxy(self) -> None:
        moto_proc = subprocess.Popen(
            [sys.executable, "-c", AUTH_MOTO], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"})
        self.addCleanup(moto_proc.wait)
        self.addCleanup(moto_proc.stdout.close)
        self.addCleanup(moto_proc.stdin.close)
        upstream = f"http://127.0.0.1:{int(moto_proc.stdout.readline())}"
        setup = boto3.client("iam", endpoint_url=upstream, region_name="us-east-1",
                             config=NO_RETRIES, **TEST_CREDS)
        setup.create_user(UserName="admin")
        key = setup.create_access_key(UserName="admin")["AccessKey"]
        setup.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))

        proxy = Proxy(upstream=upstream)
        self.addCleanup(proxy.stop)
        good = proxy.client("iam", aws_access_key_id=key["AccessKeyId"],
                            aws_secret_access_key=key["SecretAccessKey"])
        self.assertEqual([u["UserName"] for u in good.list_users()["Users"]], ["admin"])
        bad = proxy.client("iam", aws_access_key_id=key["AccessKeyId"],
                           aws_secret_access_key="not-the-secret")
        with self.assertRaises(ClientError) as ctx:  # moto really checks
            bad.list_users()
        self.assertEqual(ctx.exception.response["Error"]["Code"], "SignatureDoesNotMatch")


class LifecycleTest(unittest.TestCase):
    def test_exit_on_stdin_eof(self) -> None:
        proxy = Proxy()
        start = time.monotonic()
        self.assertEqual(proxy.stop(), 0)
        self.assertLess(time.monotonic() - start, 5)

    def test_exit_on_sigterm(self) -> None:
        proxy = Proxy("--ignore-stdin")
        proxy.proc.send_signal(signal.SIGTERM)  # at once: handlers precede the JSON line
        try:
            self.assertEqual(proxy.proc.wait(timeout=5), 0)
        finally:
            proxy.stop()

    def test_fixed_ports(self) -> None:
        probe = [socket.socket() for _ in range(2)]
        for s in probe:
            s.bind(("127.0.0.1", 0))
        ports = [s.getsockname()[1] for s in probe]
        for s in probe:
            s.close()
        proxy = Proxy("--port", str(ports[0]), "--control-port", str(ports[1]))
        try:
            self.assertEqual((proxy.port, proxy.control_port), tuple(ports))
        finally:
            self.assertEqual(proxy.stop(), 0)

    def test_throttle_flags(self) -> None:
        proxy = Proxy("--throttle-rate", "0.1", "--throttle-burst", "2")
        try:
            said = proxy.control("GET", "/throttle")[1]
            self.assertEqual((said["rate"], said["burst"], said["service"]), (0.1, 2, None))
            iam = proxy.client("iam")
            iam.list_users()
            iam.list_users()
            with self.assertRaises(ClientError) as ctx:
                iam.list_users()
            self.assertEqual(ctx.exception.response["Error"]["Code"], "Throttling")
        finally:
            self.assertEqual(proxy.stop(), 0)
        for bad in (["--throttle-burst", "2"], ["--throttle-rate", "0"],
                    ["--throttle-rate", "5", "--throttle-burst", "0"],
                    ["--throttle-rate", "inf"]):
            with self.subTest(bad):
                run = subprocess.run([sys.executable, str(PROXY), "--upstream", upstream_url,
                                      *bad], stdin=subprocess.DEVNULL, capture_output=True,
                                     timeout=30)
                self.assertEqual(run.returncode, 2, run.stderr)
                self.assertEqual(run.stdout, b"")

    def test_upstream_down_is_502(self) -> None:
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proxy = Proxy(upstream=f"http://127.0.0.1:{port}")
        try:
            with self.assertRaises(ClientError) as ctx:
                proxy.client("iam").list_users()
            self.assertEqual(ctx.exception.response["ResponseMetadata"]["HTTPStatusCode"], 502)
            self.assertEqual(ctx.exception.response["Error"]["Code"], "FaultProxyUpstreamFailed")
            self.assertEqual(proxy.stats()["upstream_errors"], 1)
        finally:
            proxy.stop()


if __name__ == "__main__":
    unittest.main()
