"""Self-test of moto_server.py: user tags, member accounts, organization, auth mode,
CloudTrail event history, the bench organization, and roles (GetAccountAuthorizationDetails
paging, RoleLastUsed, service-last-accessed jobs for roles, ACTION_LEVEL jobs, bench roles).

Run with the peer venv (moto[server] 5.2.5 and boto3):

    target/peers/venv/bin/python -m unittest tests/peers/test_moto_peer.py -v

Each test starts moto_server.py as a subprocess with a scenario, reads its
JSON line and talks to it with boto3 (retries off, so an error is seen as the
server sent it). Closing the server's stdin stops it.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCRIPT = HERE / "moto_server.py"
MULTI = json.loads((HERE / "multi-account.json").read_text())
NO_RETRIES = Config(retries={"total_max_attempts": 1})
PLAIN = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
DENIED = ("AccessDenied", "AccessDeniedException")


def policy_actions(path: Path) -> list[str]:
    actions = []
    for st in json.loads(path.read_text())["Statement"]:
        actions += [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
    return actions


EXPORTER_ACTIONS = policy_actions(REPO / "config" / "iam-policy.json")
HUB_ACTIONS = policy_actions(REPO / "config" / "iam-policy-hub.json")
IAM_SOURCE = [{"AttributeKey": "EventSource", "AttributeValue": "iam.amazonaws.com"}]


def denied_code(action: str) -> str:
    """What a denied call answers: JSON-protocol services say AccessDeniedException."""
    json_services = ("organizations", "cloudtrail")
    return "AccessDeniedException" if action.split(":")[0] in json_services else "AccessDenied"


class Peer:
    """moto_server.py with a scenario (a dict, a file or none) and more
    arguments, as a context manager."""

    def __init__(self, scenario: dict | Path | None, wait: bool = True, args: tuple = ()):
        self._file, command = None, [sys.executable, str(SCRIPT), *args]
        if isinstance(scenario, dict):
            self._file = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
            json.dump(scenario, self._file)
            self._file.close()
            command += ["--scenario", self._file.name]
        elif scenario is not None:
            command += ["--scenario", str(scenario)]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.line: dict = {}
        if wait:
            self.ready()

    def ready(self) -> "Peer":
        """Wait for the JSON line (wait=False starts several servers at once)."""
        if not self.line:
            out = self.proc.stdout.readline()
            if not out:
                self.close()
                raise AssertionError(f"moto_server.py printed nothing: {self.stderr}")
            self.line = json.loads(out)
            self.endpoint = self.line["endpoint"]
        return self

    def client(self, service: str, creds: dict | None = None, region: str = "us-east-1"):
        return boto3.client(service, endpoint_url=self.endpoint, region_name=region,
                            config=NO_RETRIES, **(creds or PLAIN))

    def events(self, creds: dict | None = None, region: str = "us-east-1", **kw) -> list[dict]:
        """Every event LookupEvents answers (all pages, newest first)."""
        pages = self.client("cloudtrail", creds, region).get_paginator("lookup_events")
        return [e for page in pages.paginate(**kw) for e in page["Events"]]

    def close(self) -> int:
        self.proc.stdin.close()  # EOF: the server stops
        rc = self.proc.wait(timeout=30)
        self.stderr = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        if self._file is not None:
            os.unlink(self._file.name)
        return rc

    def __enter__(self) -> "Peer":
        return self

    def __exit__(self, *exc) -> None:
        rc = self.close()
        if exc[0] is None and rc != 0:
            raise AssertionError(f"moto_server.py exited {rc}: {self.stderr}")


def assumed(sts, role_arn: str, external_id: str | None = None) -> dict:
    """Credentials (boto3 keyword arguments) of an AssumeRole call."""
    kw = {"ExternalId": external_id} if external_id else {}
    c = sts.assume_role(RoleArn=role_arn, RoleSessionName="peer-test", **kw)["Credentials"]
    return {"aws_access_key_id": c["AccessKeyId"], "aws_secret_access_key": c["SecretAccessKey"],
            "aws_session_token": c["SessionToken"]}


def error_code(call) -> str | None:
    """The error code a call answers, or None when it succeeds."""
    try:
        call()
    except ClientError as exc:
        return exc.response["Error"]["Code"]
    return None


def external_id(account_id: str) -> str | None:
    return next(a.get("external_id") for a in MULTI["accounts"] if a["account_id"] == account_id)


class ScenarioValidation(unittest.TestCase):
    def rejected(self, scenario: dict, message: str) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(scenario, f)
            f.flush()
            run = subprocess.run([sys.executable, str(SCRIPT), "--scenario", f.name],
                                 stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                 timeout=30)
        self.assertEqual(run.returncode, 2, run.stderr)
        self.assertEqual(run.stdout, "")
        self.assertIn(message, run.stderr)

    def test_errors_name_the_path(self) -> None:
        base = copy.deepcopy(MULTI)
        cases = []

        s = copy.deepcopy(base)
        s["accounts"][1]["users"][0]["tags"] = {"team": 7}
        cases.append((s, "accounts[1].users[0].tags.team: expected a string"))
        s = copy.deepcopy(base)
        s["accounts"][1]["users"][0]["tags"] = ["team"]
        cases.append((s, "accounts[1].users[0].tags: expected an object"))
        s = copy.deepcopy(base)
        s["accounts"][0]["users"][1]["keys"][0]["lastUsed"] = 1
        cases.append((s, "accounts[0].users[1].keys[0]: unknown field(s) ['lastUsed']"))
        s = copy.deepcopy(base)
        s["accounts"][1]["roleName"] = "x"
        cases.append((s, "accounts[1]: unknown field(s) ['roleName']"))
        s = copy.deepcopy(base)
        s["accounts"][1]["account_id"] = s["accounts"][0]["account_id"]
        cases.append((s, "accounts[1].account_id: 210987654321 is the scenario's account"))
        s = copy.deepcopy(base)
        s["accounts"][0]["account_id"] = 210987654321
        cases.append((s, "accounts[0].account_id: expected an account id"))
        s = copy.deepcopy(base)
        s["accounts"][0]["role_name"] = "no spaces"
        cases.append((s, "accounts[0].role_name: not a valid IAM role name"))
        s = copy.deepcopy(base)
        s["accounts"][1]["external_id"] = "x"
        cases.append((s, "accounts[1].external_id: 2-1224 characters"))
        s = copy.deepcopy(base)
        s["organization"]["suspended"] = ["210987654321"]
        cases.append((s, "organization.suspended[0]: account 210987654321 is"))
        s = copy.deepcopy(base)
        s["organization"] = {"enabled": False, "suspended": []}
        cases.append((s, "organization.suspended: needs enabled true"))
        s = copy.deepcopy(base)
        s["organization"] = {"enabled": True, "members": []}
        cases.append((s, "organization: unknown field(s) ['members']"))
        s = copy.deepcopy(base)
        s["auth"] = {"policy_file": "config/iam-policy.json", "remove_actions": ["iam:DeleteUser"]}
        cases.append((s, "auth.remove_actions[0]: 'iam:DeleteUser' is in neither"))
        s = copy.deepcopy(base)
        s["auth"] = {"policy_file": "config/no-such-policy.json"}
        cases.append((s, "no-such-policy.json"))
        s = copy.deepcopy(base)
        s["auth"] = {"policy": "config/iam-policy.json"}
        cases.append((s, "auth: unknown field(s) ['policy']"))
        s = copy.deepcopy(base)
        s["auth"] = {"policy_file": "config/iam-policy.json"}
        s["users"][0]["name"] = "iam-key-exporter"
        cases.append((s, "users: 'iam-key-exporter' is the user auth mode creates"))
        for scenario, message in cases:
            with self.subTest(message):
                self.rejected(scenario, message)


class SingleAccount(unittest.TestCase):
    def test_existing_scenario_keeps_its_output(self) -> None:
        with Peer(HERE / "sample-inventory.json") as peer:
            self.assertEqual(set(peer.line), {"endpoint", "account_id", "users", "roles"})
            self.assertTrue(all(u["tags"] == {} for u in peer.line["users"]))
            # Users' service entries have no tracked actions: no action members.
            for user in peer.line["users"]:
                for entry in user["services"]:
                    self.assertEqual(set(entry), {"namespace", "name", "last_authenticated",
                                                  "region"})
            orgs = peer.client("organizations")
            self.assertEqual(error_code(orgs.list_accounts), "AWSOrganizationsNotInUseException")

    def test_user_tags(self) -> None:
        scenario = {"users": [
            {"name": "tagged", "created_days_ago": 3,
             "tags": {"team": "platform", "owner": "o@example.com", "empty": ""}},
            {"name": "untagged", "created_days_ago": 3}]}
        with Peer(scenario) as peer:
            tagged, untagged = peer.line["users"]
            self.assertEqual(tagged["tags"], {"team": "platform", "owner": "o@example.com",
                                              "empty": ""})
            self.assertEqual(untagged["tags"], {})
            iam = peer.client("iam")
            for user in peer.line["users"]:
                tags = iam.list_user_tags(UserName=user["name"])["Tags"]
                self.assertEqual({t["Key"]: t["Value"] for t in tags}, user["tags"])


class MultiAccount(unittest.TestCase):
    peer: Peer

    @classmethod
    def setUpClass(cls) -> None:
        cls.peer = Peer(HERE / "multi-account.json")

    @classmethod
    def tearDownClass(cls) -> None:
        assert cls.peer.close() == 0, cls.peer.stderr

    def test_output(self) -> None:
        line = self.peer.line
        self.assertEqual(line["account_id"], "123456789012")
        self.assertEqual([a["account_id"] for a in line["accounts"]],
                         ["210987654321", "345678901234"])
        for account in line["accounts"]:
            self.assertEqual(account["role_arn"],
                             f"arn:aws:iam::{account['account_id']}:role/iam-key-exporter")
            for user in account["users"]:
                self.assertTrue(user["arn"].startswith(f"arn:aws:iam::{account['account_id']}:"))
        erin = line["accounts"][0]["users"][1]
        self.assertEqual(erin["tags"], {"team": "analytics", "owner": "erin@example.com"})
        self.assertEqual(line["organization"], {
            "accounts": ["123456789012", "210987654321", "345678901234"],
            "suspended": ["456789012345"]})
        self.assertNotIn("credentials", line)

    def test_plain_credentials_stay_in_the_main_account(self) -> None:
        sts, iam = self.peer.client("sts"), self.peer.client("iam")
        self.assertEqual(sts.get_caller_identity()["Account"], "123456789012")
        self.assertEqual([u["UserName"] for u in iam.list_users()["Users"]],
                         [u["name"] for u in self.peer.line["users"]])

    def test_assumed_role_is_answered_by_its_account(self) -> None:
        sts = self.peer.client("sts")
        for account in self.peer.line["accounts"]:
            acct = account["account_id"]
            with self.subTest(acct):
                creds = assumed(sts, account["role_arn"], external_id(acct))
                me = self.peer.client("sts", creds).get_caller_identity()
                self.assertEqual(me["Account"], acct)
                self.assertEqual(me["Arn"],
                                 f"arn:aws:sts::{acct}:assumed-role/iam-key-exporter/peer-test")
                iam = self.peer.client("iam", creds)
                users = account["users"]
                self.assertEqual(sorted(u["Arn"] for u in iam.list_users()["Users"]),
                                 sorted(u["arn"] for u in users))
                self.assertEqual(iam.get_account_summary()["SummaryMap"]["Users"], len(users))
                for user in users:
                    keys = iam.list_access_keys(UserName=user["name"])["AccessKeyMetadata"]
                    self.assertEqual([k["AccessKeyId"] for k in keys],
                                     [k["access_key_id"] for k in user["keys"]])
                    for key in user["keys"]:
                        used = iam.get_access_key_last_used(AccessKeyId=key["access_key_id"])
                        self.assertEqual(used["UserName"], user["name"])
                        self.assertEqual(used["AccessKeyLastUsed"]["Region"],
                                         key["last_used_region"])
                        date = used["AccessKeyLastUsed"].get("LastUsedDate")
                        self.assertEqual(date and date.timestamp(), key["last_used_date"])
                    tags = iam.list_user_tags(UserName=user["name"])["Tags"]
                    self.assertEqual({t["Key"]: t["Value"] for t in tags}, user["tags"])
                    job = iam.generate_service_last_accessed_details(Arn=user["arn"])["JobId"]
                    for _ in range(5):
                        details = iam.get_service_last_accessed_details(JobId=job)
                        if details["JobStatus"] != "IN_PROGRESS":
                            break
                    self.assertEqual([s["ServiceNamespace"]
                                      for s in details["ServicesLastAccessed"]],
                                     [s["namespace"] for s in user["services"]])
                    # The job belongs to the member account, not the main one.
                    self.assertEqual(error_code(lambda: self.peer.client("iam")
                                                .get_service_last_accessed_details(JobId=job)),
                                     "InvalidInput")
                    # A main-account client does not see the member's users.
                    self.assertEqual(error_code(lambda: self.peer.client("iam")
                                                .list_access_keys(UserName=user["name"])),
                                     "NoSuchEntity")
                iam.generate_credential_report()
                report = iam.get_credential_report()
                rows = list(csv.DictReader(io.StringIO(report["Content"].decode())))
                self.assertEqual(sorted(r["arn"] for r in rows), sorted(u["arn"] for u in users))
                self.assertLess(abs(report["GeneratedTime"].timestamp()
                                    - server_time(self.peer)), 120)

    def test_assume_role_honours_the_trust_policy(self) -> None:
        sts = self.peer.client("sts")
        open_, guarded = self.peer.line["accounts"]
        denied = lambda arn, **kw: error_code(  # noqa: E731
            lambda: sts.assume_role(RoleArn=arn, RoleSessionName="peer-test", **kw))
        self.assertIsNone(denied(open_["role_arn"]))
        self.assertIsNone(denied(guarded["role_arn"], ExternalId="iam-key-exporter-test"))
        self.assertEqual(denied(guarded["role_arn"]), "AccessDenied")
        self.assertEqual(denied(guarded["role_arn"], ExternalId="wrong-id"), "AccessDenied")
        self.assertEqual(denied("arn:aws:iam::210987654321:role/no-such-role"), "AccessDenied")
        self.assertEqual(denied("arn:aws:iam::456789012345:role/iam-key-exporter"),
                         "AccessDenied")  # suspended
        # Only the main account is trusted: not a role session in a member account.
        member_sts = self.peer.client("sts", assumed(sts, open_["role_arn"]))
        self.assertEqual(error_code(lambda: member_sts.assume_role(
            RoleArn=guarded["role_arn"], RoleSessionName="peer-test",
            ExternalId="iam-key-exporter-test")), "AccessDenied")

    def test_organization_lists_every_account(self) -> None:
        orgs = self.peer.client("organizations")
        listed = orgs.list_accounts()
        self.assertNotIn("NextToken", listed)
        states = {a["Id"]: (a["Status"], a["State"]) for a in listed["Accounts"]}
        self.assertEqual(states, {
            "123456789012": ("ACTIVE", "ACTIVE"), "210987654321": ("ACTIVE", "ACTIVE"),
            "345678901234": ("ACTIVE", "ACTIVE"), "456789012345": ("SUSPENDED", "SUSPENDED")})
        pages, token = [], None
        while True:
            page = orgs.list_accounts(MaxResults=1, **({"NextToken": token} if token else {}))
            pages.append([a["Id"] for a in page["Accounts"]])
            token = page.get("NextToken")
            if not token:
                break
        self.assertEqual(pages, [[a["Id"]] for a in listed["Accounts"]])
        # A member account is not the management account.
        member = self.peer.client("organizations",
                                  assumed(self.peer.client("sts"),
                                          self.peer.line["accounts"][0]["role_arn"]))
        self.assertEqual(error_code(member.list_accounts), "AccessDeniedException")


def server_time(peer: Peer) -> float:
    """The server's clock, from the Date header of a response."""
    from email.utils import parsedate_to_datetime

    meta = peer.client("sts").get_caller_identity()["ResponseMetadata"]
    return parsedate_to_datetime(meta["HTTPHeaders"]["date"]).timestamp()


class Organization(unittest.TestCase):
    def test_pages_hold_at_most_20_accounts(self) -> None:
        suspended = [f"9000000000{n:02d}" for n in range(25)]
        scenario = {"users": [], "accounts": [{"account_id": "111122223333"},
                                              {"account_id": "444455556666",
                                               "in_organization": False}],
                    "organization": {"enabled": True, "suspended": suspended}}
        with Peer(scenario) as peer:
            self.assertEqual(peer.line["organization"]["accounts"],
                             ["123456789012", "111122223333"])
            orgs = peer.client("organizations")
            first = orgs.list_accounts()
            self.assertEqual(len(first["Accounts"]), 20)
            second = orgs.list_accounts(NextToken=first["NextToken"])
            self.assertNotIn("NextToken", second)
            ids = [a["Id"] for a in first["Accounts"] + second["Accounts"]]
            self.assertEqual(ids, ["123456789012", "111122223333"] + suspended)
            paginated = [a["Id"] for page in orgs.get_paginator("list_accounts").paginate(
                PaginationConfig={"PageSize": 7}) for a in page["Accounts"]]
            self.assertEqual(paginated, ids)


class AuthMode(unittest.TestCase):
    """Every action of the exporter's policies, allowed when granted, denied when not."""

    ACCOUNT = "345678901234"  # a member with an external id

    def scenario(self, remove: list[str], policy_file: str = "config/iam-policy.json") -> dict:
        s = copy.deepcopy(MULTI)
        s["credential_report_generated_hours_ago"] = 1
        s["auth"] = {"policy_file": policy_file, "remove_actions": remove}
        return s

    def calls(self, peer: Peer) -> dict:
        """action -> a call needing it, made as the exporter (main user or member role)."""
        creds = peer.line["credentials"]
        mine = {"aws_access_key_id": creds["access_key_id"],
                "aws_secret_access_key": creds["secret_access_key"]}
        iam, sts = peer.client("iam", mine), peer.client("sts", mine)
        orgs, trail = peer.client("organizations", mine), peer.client("cloudtrail", mine)
        user = peer.line["users"][0]
        key = user["keys"][0]["access_key_id"]
        role = next(a["role_arn"] for a in peer.line["accounts"]
                    if a["account_id"] == self.ACCOUNT)

        def job() -> str:
            try:
                return iam.generate_service_last_accessed_details(Arn=user["arn"])["JobId"]
            except ClientError:  # not allowed: any id, the check comes first
                return "00000000-0000-0000-0000-000000000000"

        return {
            "iam:ListUsers": lambda: iam.list_users(),
            "iam:GenerateCredentialReport": lambda: iam.generate_credential_report(),
            "iam:GetCredentialReport": lambda: iam.get_credential_report(),
            "iam:GetAccountSummary": lambda: iam.get_account_summary(),
            "iam:GetUser": lambda: iam.get_user(UserName=user["name"]),
            "iam:ListAccessKeys": lambda: iam.list_access_keys(UserName=user["name"]),
            "iam:GetAccessKeyLastUsed": lambda: iam.get_access_key_last_used(AccessKeyId=key),
            "iam:ListUserTags": lambda: iam.list_user_tags(UserName=user["name"]),
            "iam:GenerateServiceLastAccessedDetails":
                lambda: iam.generate_service_last_accessed_details(Arn=user["arn"]),
            "iam:GetServiceLastAccessedDetails":
                lambda: iam.get_service_last_accessed_details(JobId=job()),
            "sts:GetAccessKeyInfo": lambda: sts.get_access_key_info(AccessKeyId=key),
            "sts:AssumeRole": lambda: sts.assume_role(
                RoleArn=role, RoleSessionName="peer-test", ExternalId=external_id(self.ACCOUNT)),
            "organizations:ListAccounts": lambda: orgs.list_accounts(),
            "cloudtrail:LookupEvents": lambda: trail.lookup_events(LookupAttributes=IAM_SOURCE),
            "iam:GetAccountAuthorizationDetails":
                lambda: iam.get_account_authorization_details(Filter=["Role"]),
            "sts:GetCallerIdentity": lambda: sts.get_caller_identity(),
        }

    def policy_calls(self, peer: Peer) -> dict:
        """`calls` for the actions the policy files grant (and GetCallerIdentity)."""
        known = self.calls(peer)
        wanted = set(EXPORTER_ACTIONS + HUB_ACTIONS) | {"sts:GetCallerIdentity"}
        self.assertEqual(wanted - set(known), set(), "policy actions without a call here")
        return {action: call for action, call in known.items() if action in wanted}

    def member_calls(self, peer: Peer) -> dict:
        """The exporter policy's actions made with the member role's credentials."""
        creds = peer.line["credentials"]
        sts = peer.client("sts", {"aws_access_key_id": creds["access_key_id"],
                                  "aws_secret_access_key": creds["secret_access_key"]})
        account = next(a for a in peer.line["accounts"] if a["account_id"] == self.ACCOUNT)
        role = assumed(sts, account["role_arn"], external_id(self.ACCOUNT))
        iam, sts = peer.client("iam", role), peer.client("sts", role)
        trail = peer.client("cloudtrail", role)
        user = account["users"][0]
        key = user["keys"][0]["access_key_id"]

        def job() -> str:
            try:
                return iam.generate_service_last_accessed_details(Arn=user["arn"])["JobId"]
            except ClientError:
                return "00000000-0000-0000-0000-000000000000"

        def report():  # a member has no report until one is generated
            try:
                iam.generate_credential_report()
            except ClientError:
                pass
            return iam.get_credential_report()

        return {
            "iam:ListUsers": lambda: iam.list_users(),
            "iam:GenerateCredentialReport": lambda: iam.generate_credential_report(),
            "iam:GetCredentialReport": report,
            "iam:GetAccountSummary": lambda: iam.get_account_summary(),
            "iam:GetUser": lambda: iam.get_user(UserName=user["name"]),
            "iam:ListAccessKeys": lambda: iam.list_access_keys(UserName=user["name"]),
            "iam:GetAccessKeyLastUsed": lambda: iam.get_access_key_last_used(AccessKeyId=key),
            "iam:ListUserTags": lambda: iam.list_user_tags(UserName=user["name"]),
            "iam:GenerateServiceLastAccessedDetails":
                lambda: iam.generate_service_last_accessed_details(Arn=user["arn"]),
            "iam:GetServiceLastAccessedDetails":
                lambda: iam.get_service_last_accessed_details(JobId=job()),
            "sts:GetAccessKeyInfo": lambda: sts.get_access_key_info(AccessKeyId=key),
            "cloudtrail:LookupEvents": lambda: trail.lookup_events(LookupAttributes=IAM_SOURCE),
            "iam:GetAccountAuthorizationDetails":
                lambda: iam.get_account_authorization_details(Filter=["Role"]),
        }

    def member_policy_calls(self, peer: Peer) -> dict:
        """`member_calls` for the actions of the exporter's policy file."""
        return {action: call for action, call in self.member_calls(peer).items()
                if action in EXPORTER_ACTIONS}

    def test_every_action_is_enforced(self) -> None:
        actions = EXPORTER_ACTIONS + HUB_ACTIONS
        with Peer(self.scenario([])) as peer:
            creds = peer.line["credentials"]
            self.assertEqual(creds["user_name"], "iam-key-exporter")
            self.assertEqual(creds["arn"], "arn:aws:iam::123456789012:user/iam-key-exporter")
            calls = self.policy_calls(peer)
            self.assertEqual(set(calls), set(actions) | {"sts:GetCallerIdentity"})
            # The first request of all is checked: seeding used up no allowance.
            self.assertEqual(error_code(peer.client("iam").list_users), "InvalidClientTokenId")
            for action, call in calls.items():
                with self.subTest(granted=action):
                    self.assertIsNone(error_code(call))
            for action, call in self.member_policy_calls(peer).items():
                with self.subTest(granted_to_member_role=action):
                    self.assertIsNone(error_code(call))

        with contextlib.ExitStack() as servers:  # one server per removed action, started at once
            peers = [servers.enter_context(Peer(self.scenario([a]), wait=False)) for a in actions]
            servers.callback(lambda: [p.proc.stdin.close() for p in peers])  # all stop at once
            for removed, peer in zip(actions, peers):
                self.check_removed(removed, peer.ready())

        with Peer(self.scenario(actions)) as peer:  # no policy at all
            for action, call in self.policy_calls(peer).items():
                with self.subTest(everything_removed=action):
                    expected = None if action == "sts:GetCallerIdentity" else denied_code(action)
                    self.assertEqual(error_code(call), expected)

    def check_removed(self, removed: str, peer: Peer) -> None:
        with self.subTest(removed=removed):
            calls = self.policy_calls(peer)
            denied = denied_code(removed)
            self.assertEqual(error_code(calls.pop(removed)), denied)
            for action, call in calls.items():  # only that one is gone
                self.assertNotIn(error_code(call), DENIED, action)
            if removed in EXPORTER_ACTIONS:  # the member role lost it too
                member = self.member_policy_calls(peer)
                self.assertEqual(error_code(member.pop(removed)), denied)
                for action, call in member.items():
                    self.assertNotIn(error_code(call), DENIED, action)

    def test_user_scoped_statements_match_the_user_arn(self) -> None:
        policy = json.loads((REPO / "config" / "iam-policy.json").read_text())
        for st in policy["Statement"]:
            narrow = lambda r: ("arn:aws:iam::*:user/automation/*"  # noqa: E731
                                if r == "arn:aws:iam::*:user/*" else r)
            st["Resource"] = ([narrow(r) for r in st["Resource"]]
                              if isinstance(st["Resource"], list) else narrow(st["Resource"]))
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(policy, f)
            f.flush()
            scenario = self.scenario([], policy_file=f.name)  # an absolute path
            with Peer(scenario) as peer:
                creds = peer.line["credentials"]
                sts = peer.client("sts", {"aws_access_key_id": creds["access_key_id"],
                                          "aws_secret_access_key": creds["secret_access_key"]})
                account = peer.line["accounts"][0]  # etl-bot in /automation/, erin in /people/
                iam = peer.client("iam", assumed(sts, account["role_arn"]))
                etl, erin = account["users"]
                for user, expected in ((etl, None), (erin, "AccessDenied")):
                    with self.subTest(user["arn"]):
                        name, key = user["name"], user["keys"][0]["access_key_id"]
                        self.assertEqual(error_code(lambda: iam.list_access_keys(UserName=name)),
                                         expected)
                        self.assertEqual(error_code(lambda: iam.list_user_tags(UserName=name)),
                                         expected)
                        self.assertEqual(error_code(
                            lambda: iam.get_access_key_last_used(AccessKeyId=key)), expected)
                        self.assertEqual(error_code(
                            lambda: iam.generate_service_last_accessed_details(Arn=user["arn"])),
                            expected)


def trail_record(event: dict) -> dict:
    """The CloudTrail record of a LookupEvents event (a JSON string on the wire)."""
    return json.loads(event["CloudTrailEvent"])


class CloudTrailHistory(unittest.TestCase):
    """LookupEvents over the IAM calls the peer served (a test-side extension)."""

    def test_calls_are_recorded_with_their_details(self) -> None:
        with Peer(HERE / "sample-inventory.json") as peer:
            iam = peer.client("iam")
            started = int(server_time(peer))
            dave = iam.create_user(UserName="dave", Path="/eng/",
                                   Tags=[{"Key": "team", "Value": "x"}])["User"]
            key = iam.create_access_key(UserName="dave")["AccessKey"]
            iam.update_access_key(UserName="dave", AccessKeyId=key["AccessKeyId"],
                                  Status="Inactive")
            iam.untag_user(UserName="dave", TagKeys=["team"])
            iam.list_users()
            self.assertEqual(error_code(lambda: iam.get_user(UserName="nobody")), "NoSuchEntity")
            ended = int(server_time(peer))

            # The wire: EventTime an epoch number, CloudTrailEvent a string.
            trail, raw = peer.client("cloudtrail"), []
            trail.meta.events.register("after-call.cloudtrail.LookupEvents",
                                       lambda http_response, **_: raw.append(http_response.text))
            trail.lookup_events(LookupAttributes=IAM_SOURCE)
            wire = json.loads(raw[0])["Events"][0]
            self.assertIsInstance(wire["EventTime"], (int, float))
            self.assertIsInstance(wire["CloudTrailEvent"], str)

            events = peer.events(LookupAttributes=IAM_SOURCE)
            self.assertEqual([e["EventName"] for e in events],
                             ["GetUser", "ListUsers", "UntagUser", "UpdateAccessKey",
                              "CreateAccessKey", "CreateUser"])  # newest first
            by_name = {e["EventName"]: e for e in events}
            for e in events:
                record = trail_record(e)
                self.assertEqual(record["eventID"], e["EventId"])
                self.assertEqual(e["ReadOnly"], "true" if e["EventName"] in ("GetUser", "ListUsers")
                                 else "false")
                self.assertEqual(record["readOnly"], e["ReadOnly"] == "true")
                self.assertTrue(started <= e["EventTime"].timestamp() <= ended)
                self.assertEqual(record["eventTime"],
                                 e["EventTime"].strftime("%Y-%m-%dT%H:%M:%SZ"))
                self.assertEqual((e["EventSource"], record["awsRegion"], record["eventType"],
                                  record["recipientAccountId"], record["managementEvent"]),
                                 ("iam.amazonaws.com", "us-east-1", "AwsApiCall",
                                  "123456789012", True))
                # `testing` is no key of any user: the account's root made the call.
                self.assertEqual((e["Username"], e["AccessKeyId"]), ("root", "testing"))
                self.assertEqual(record["userIdentity"], {
                    "type": "Root", "principalId": "123456789012",
                    "arn": "arn:aws:iam::123456789012:root", "accountId": "123456789012",
                    "accessKeyId": "testing"})

            create = trail_record(by_name["CreateUser"])
            self.assertEqual(create["requestParameters"], {
                "userName": "dave", "path": "/eng/", "tags": [{"key": "team", "value": "x"}]})
            user = create["responseElements"]["user"]
            self.assertEqual((user["userName"], user["path"], user["arn"]),
                             ("dave", "/eng/", "arn:aws:iam::123456789012:user/eng/dave"))
            self.assertEqual(user["userId"], dave["UserId"])
            self.assertEqual(by_name["CreateUser"]["Resources"],
                             [{"ResourceType": "AWS::IAM::User", "ResourceName": "dave"}])

            created = by_name["CreateAccessKey"]
            self.assertEqual(trail_record(created)["responseElements"]["accessKey"] | {
                "createDate": None}, {"userName": "dave", "accessKeyId": key["AccessKeyId"],
                                      "status": "Active", "createDate": None})
            self.assertNotIn(key["SecretAccessKey"], created["CloudTrailEvent"])
            self.assertEqual(created["Resources"], [
                {"ResourceType": "AWS::IAM::User", "ResourceName": "dave"},
                {"ResourceType": "AWS::IAM::AccessKey", "ResourceName": key["AccessKeyId"]}])
            self.assertEqual(trail_record(by_name["UpdateAccessKey"])["requestParameters"], {
                "userName": "dave", "accessKeyId": key["AccessKeyId"], "status": "Inactive"})
            self.assertEqual(trail_record(by_name["UntagUser"])["requestParameters"],
                             {"userName": "dave", "tagKeys": ["team"]})
            listed = trail_record(by_name["ListUsers"])
            self.assertIsNone(listed["requestParameters"])
            self.assertIsNone(listed["responseElements"])
            self.assertNotIn("errorCode", listed)
            failed = trail_record(by_name["GetUser"])
            self.assertEqual(failed["errorCode"], "NoSuchEntity")
            self.assertIn("nobody", failed["errorMessage"])

            # One attribute at a time, any of the keys.
            def names(key: str, value: str) -> list[str]:
                attribute = [{"AttributeKey": key, "AttributeValue": value}]
                return [e["EventName"] for e in peer.events(LookupAttributes=attribute)]

            self.assertEqual(names("EventName", "CreateUser"), ["CreateUser"])
            self.assertEqual(names("ReadOnly", "true"), ["GetUser", "ListUsers"])
            self.assertEqual(names("ResourceName", "dave"),
                             ["UntagUser", "UpdateAccessKey", "CreateAccessKey", "CreateUser"])
            self.assertEqual(names("ResourceType", "AWS::IAM::AccessKey"),
                             ["UpdateAccessKey", "CreateAccessKey"])
            self.assertEqual(names("EventId", by_name["ListUsers"]["EventId"]), ["ListUsers"])
            self.assertEqual(len(names("Username", "root")), 6)
            self.assertEqual(len(names("AccessKeyId", "testing")), 6)
            self.assertEqual(names("EventSource", "sts.amazonaws.com"), [])
            # IAM's events are in us-east-1's history only.
            self.assertEqual(peer.events(region="eu-west-1", LookupAttributes=IAM_SOURCE), [])

    def test_invalid_requests(self) -> None:
        with Peer(HERE / "sample-inventory.json") as peer:
            trail = peer.client("cloudtrail")
            two = IAM_SOURCE + [{"AttributeKey": "ReadOnly", "AttributeValue": "false"}]
            cases = {
                "InvalidLookupAttributesException": dict(LookupAttributes=two),
                "InvalidMaxResultsException": dict(MaxResults=51),
                "InvalidTimeRangeException": dict(StartTime=2000, EndTime=1000),
                "InvalidNextTokenException": dict(NextToken="bogus"),
            }
            for code, kw in cases.items():
                with self.subTest(code):
                    with self.assertRaises(ClientError) as raised:
                        trail.lookup_events(**kw)
                    self.assertEqual(raised.exception.response["Error"]["Code"], code)
                    self.assertEqual(
                        raised.exception.response["ResponseMetadata"]["HTTPStatusCode"], 400)
            self.assertEqual(error_code(lambda: trail.lookup_events(LookupAttributes=[
                {"AttributeKey": "UserName", "AttributeValue": "x"}])),
                "InvalidLookupAttributesException")  # keys are case-sensitive

    def test_pages_newest_first(self) -> None:
        with Peer(HERE / "sample-inventory.json") as peer:
            iam = peer.client("iam")
            for n in range(120):
                iam.list_user_tags(UserName="carol", MaxItems=n + 1)
            newest_first = list(range(120, 0, -1))
            trail = peer.client("cloudtrail")
            pages, token = [], {}
            while True:
                page = trail.lookup_events(LookupAttributes=IAM_SOURCE, **token)
                pages.append([int(trail_record(e)["requestParameters"]["maxItems"])
                              for e in page["Events"]])
                if "NextToken" not in page:
                    break
                token = {"NextToken": page["NextToken"]}
            self.assertEqual([len(p) for p in pages], [50, 50, 20])
            self.assertEqual(sum(pages, []), newest_first)
            seven = [int(trail_record(e)["requestParameters"]["maxItems"])
                     for e in peer.events(LookupAttributes=IAM_SOURCE,
                                          PaginationConfig={"PageSize": 7})]
            self.assertEqual(seven, newest_first)
            # A token continues only the query it came from.
            first = trail.lookup_events(LookupAttributes=IAM_SOURCE)
            self.assertEqual(error_code(lambda: trail.lookup_events(
                NextToken=first["NextToken"])), "InvalidNextTokenException")

    def test_time_range_is_inclusive(self) -> None:
        with Peer(HERE / "sample-inventory.json") as peer:
            iam = peer.client("iam")
            iam.get_user(UserName="alice")
            time.sleep(1.1)  # EventTimes are whole seconds
            iam.get_user(UserName="bob")
            alice, bob = peer.events()[::-1]
            t_alice, t_bob = alice["EventTime"], bob["EventTime"]
            self.assertLess(t_alice, t_bob)

            def users(**kw) -> list[str]:
                return [e["Resources"][0]["ResourceName"] for e in peer.events(**kw)]

            self.assertEqual(users(StartTime=t_bob), ["bob"])
            self.assertEqual(users(EndTime=t_alice), ["alice"])
            self.assertEqual(users(StartTime=t_alice, EndTime=t_alice), ["alice"])
            self.assertEqual(users(StartTime=t_alice, EndTime=t_bob), ["bob", "alice"])

    def test_delay_hides_a_fresh_event(self) -> None:
        with Peer(HERE / "sample-inventory.json", args=("--cloudtrail-delay", "2")) as peer:
            peer.client("iam").list_users()
            called = time.monotonic()
            self.assertEqual(peer.events(), [])
            deadline = called + 10
            while not (events := peer.events()) and time.monotonic() < deadline:
                time.sleep(0.1)
            self.assertEqual([e["EventName"] for e in events], ["ListUsers"])
            # EventTime is whole seconds, so a 2 s delay hides an event for 1-2 s.
            self.assertGreater(time.monotonic() - called, 1)
            self.assertGreaterEqual(server_time(peer), events[0]["EventTime"].timestamp() + 2)

    def test_each_account_has_its_own_history(self) -> None:
        with Peer(HERE / "multi-account.json") as peer:
            sts, iam = peer.client("sts"), peer.client("iam")
            iam.list_users()
            member, other = peer.line["accounts"]
            creds = assumed(sts, member["role_arn"])
            member_iam = peer.client("iam", creds)
            member_iam.list_users()
            member_iam.get_account_summary()
            other_creds = assumed(sts, other["role_arn"], external_id(other["account_id"]))

            self.assertEqual([e["EventName"] for e in peer.events()], ["ListUsers"])
            events = peer.events(creds)
            self.assertEqual([e["EventName"] for e in events], ["GetAccountSummary", "ListUsers"])
            acct = member["account_id"]
            for e in events:
                record = trail_record(e)
                self.assertEqual((e["Username"], e["AccessKeyId"]),
                                 ("peer-test", creds["aws_access_key_id"]))
                self.assertEqual(record["recipientAccountId"], acct)
                identity = record["userIdentity"]
                self.assertEqual(
                    (identity["type"], identity["arn"], identity["accountId"]),
                    ("AssumedRole", f"arn:aws:sts::{acct}:assumed-role/iam-key-exporter/peer-test",
                     acct))
                self.assertTrue(identity["principalId"].endswith(":peer-test"))
            self.assertEqual(peer.events(other_creds), [])

    def test_lookup_needs_the_permission(self) -> None:
        for removed in ([], ["cloudtrail:LookupEvents"]):
            scenario = copy.deepcopy(MULTI)
            scenario["auth"] = {"policy_file": "config/iam-policy.json", "remove_actions": removed}
            with self.subTest(removed=removed), Peer(scenario) as peer:
                creds = peer.line["credentials"]
                mine = {"aws_access_key_id": creds["access_key_id"],
                        "aws_secret_access_key": creds["secret_access_key"]}
                iam = peer.client("iam", mine)
                iam.list_users()
                self.assertEqual(error_code(lambda: iam.create_user(UserName="eve")),
                                 "AccessDenied")
                # Unknown credentials belong to no account: not recorded.
                self.assertEqual(error_code(peer.client("iam").list_users),
                                 "InvalidClientTokenId")
                role = assumed(peer.client("sts", mine), peer.line["accounts"][0]["role_arn"])
                if removed:  # denied to the exporter's user and to the member role
                    for who in (mine, role):
                        with self.assertRaises(ClientError) as raised:
                            peer.client("cloudtrail", who).lookup_events()
                        error = raised.exception.response
                        self.assertEqual(error["Error"]["Code"], "AccessDeniedException")
                        self.assertEqual(error["ResponseMetadata"]["HTTPStatusCode"], 400)
                    continue
                events = peer.events(mine)
                self.assertEqual([e["EventName"] for e in events], ["CreateUser", "ListUsers"])
                self.assertEqual(trail_record(events[0])["errorCode"], "AccessDenied")
                identity = trail_record(events[1])["userIdentity"]
                self.assertTrue(identity.pop("principalId"))
                self.assertEqual(identity, {
                    "type": "IAMUser", "arn": creds["arn"], "accountId": "123456789012",
                    "accessKeyId": creds["access_key_id"], "userName": "iam-key-exporter"})
                self.assertEqual(events[1]["Username"], "iam-key-exporter")
                self.assertEqual(peer.events(role), [])


class BenchOrganization(unittest.TestCase):
    def test_small_organization(self) -> None:
        with Peer(None, args=("--bench-users", "3", "--bench-accounts", "5")) as peer:
            self.assertEqual(peer.line | {"endpoint": None}, {
                "endpoint": None, "account_id": "123456789012", "users": 18, "keys": 36,
                "accounts": 5, "organization": {"accounts": 6, "suspended": 0}})
            orgs = peer.client("organizations")
            listed = [a for page in orgs.get_paginator("list_accounts").paginate()
                      for a in page["Accounts"]]
            members = [f"20000000000{k}" for k in range(1, 6)]
            self.assertEqual([a["Id"] for a in listed], ["123456789012"] + members)
            self.assertTrue(all(a["Status"] == "ACTIVE" for a in listed))
            main_users = [u["UserName"] for u in peer.client("iam").list_users()["Users"]]
            self.assertEqual(main_users, ["bench-user-00000", "bench-user-00001",
                                          "bench-user-00002"])
            sts = peer.client("sts")
            for k, acct in enumerate(members, start=1):
                with self.subTest(acct):
                    creds = assumed(sts, f"arn:aws:iam::{acct}:role/iam-key-exporter")
                    self.assertEqual(peer.client("sts", creds).get_caller_identity()["Account"],
                                     acct)
                    iam = peer.client("iam", creds)
                    users = iam.list_users()["Users"]
                    self.assertEqual([u["UserName"] for u in users],
                                     [f"bench-user-{n:05d}" for n in range(3 * k, 3 * k + 3)])
                    for u in users:
                        self.assertTrue(u["Arn"].startswith(f"arn:aws:iam::{acct}:user/bench/"))
                        self.assertEqual(
                            len(iam.list_access_keys(UserName=u["UserName"])["AccessKeyMetadata"]),
                            2)


SAMPLE = json.loads((HERE / "sample-inventory.json").read_text())
TRUST_EC2 = json.dumps({"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
ROLE_POLICY = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "s3:ListAllMyBuckets", "Resource": "*"}]})


def job_result(iam, arn: str, granularity: str = "SERVICE_LEVEL", polls: int = 5) -> dict:
    """A service-last-accessed job of `arn`, polled until it is done."""
    job = iam.generate_service_last_accessed_details(Arn=arn, Granularity=granularity)["JobId"]
    for _ in range(polls):
        result = iam.get_service_last_accessed_details(JobId=job)
        if result["JobStatus"] != "IN_PROGRESS":
            return result
    raise AssertionError(f"job of {arn} still IN_PROGRESS after {polls} polls")


def role_details(iam, **kw) -> list[dict]:
    """Every RoleDetail of GetAccountAuthorizationDetails(Filter=Role), all pages."""
    pages = iam.get_paginator("get_account_authorization_details").paginate(
        Filter=["Role"], **kw)
    return [r for page in pages for r in page["RoleDetailList"]]


def raw_responses(client) -> list[str]:
    """The bodies of the client's responses, as they arrive."""
    bodies: list[str] = []
    client.meta.events.register("after-call.*.*",
                                lambda http_response, **_: bodies.append(http_response.text))
    return bodies


class Roles(unittest.TestCase):
    """The sample's roles: seeding, GetAccountAuthorizationDetails, GetRole, jobs."""

    peer: Peer

    @classmethod
    def setUpClass(cls) -> None:
        cls.peer = Peer(HERE / "sample-inventory.json")
        cls.roles = {r["name"]: r for r in cls.peer.line["roles"]}

    @classmethod
    def tearDownClass(cls) -> None:
        assert cls.peer.close() == 0, cls.peer.stderr

    def test_seeded_report(self) -> None:
        line, now = self.peer.line, server_time(self.peer)
        self.assertEqual([r["name"] for r in line["roles"]],
                         [r["name"] for r in SAMPLE["roles"]])
        for spec in SAMPLE["roles"]:
            with self.subTest(spec["name"]):
                role = self.roles[spec["name"]]
                path = spec.get("path", "/")
                self.assertEqual(role["path"], path)
                self.assertEqual(role["arn"], f"arn:aws:iam::123456789012:role{path}{spec['name']}")
                self.assertTrue(role["role_id"].startswith("AROA"))
                self.assertEqual(role["create_date"] % 1, 0)  # whole seconds
                self.assertAlmostEqual((now - role["create_date"]) / 86400,
                                       spec["created_days_ago"], delta=0.01)
                self.assertEqual(role["service_linked"], path.startswith("/aws-service-role/"))
                self.assertEqual(role["tags"], spec.get("tags", {}))
                if spec.get("last_used_days_ago") is None:
                    self.assertEqual((role["last_used_date"], role["last_used_region"]),
                                     (None, None))
                else:
                    self.assertAlmostEqual((now - role["last_used_date"]) / 86400,
                                           spec["last_used_days_ago"], delta=0.01)
                    self.assertEqual(role["last_used_region"], spec["last_used_region"])
        # The six kinds the sample promises.
        self.assertIsNotNone(self.roles["app-backend"]["last_used_date"])
        self.assertAlmostEqual((now - self.roles["batch-reports"]["last_used_date"]) / 86400,
                               120, delta=0.01)
        self.assertIsNone(self.roles["legacy-import"]["last_used_date"])
        self.assertIsNone(self.roles["new-pipeline"]["last_used_date"])
        self.assertEqual(self.roles["AWSServiceRoleForSupport"]["path"],
                         "/aws-service-role/support.amazonaws.com/")
        self.assertEqual(self.roles["analytics-reader"]["tags"],
                         {"team": "data", "owner": "dana@example.com"})
        app = self.roles["app-backend"]
        self.assertEqual((app["services_granted"], app["services_accessed"]), (5, 4))
        self.assertEqual(sum(e.get("actions_granted", 0) for e in app["services"]), 12)
        self.assertEqual(sum(e.get("actions_accessed", 0) for e in app["services"]), 4)
        self.assertEqual(app["inline_policies"], ["app-backend"])

    def test_authorization_details_serve_the_seeded_roles(self) -> None:
        iam = self.peer.client("iam")
        raw = raw_responses(iam)
        page = iam.get_account_authorization_details(Filter=["Role"])
        # MaxItems defaults to 100: the six roles in one page, no Marker.
        self.assertFalse(page["IsTruncated"])
        self.assertNotIn("Marker", page)
        self.assertEqual((page["UserDetailList"], page["GroupDetailList"], page["Policies"]),
                         ([], [], []))
        details = {r["RoleName"]: r for r in page["RoleDetailList"]}
        self.assertEqual(list(details), list(self.roles))  # creation order
        for name, role in self.roles.items():
            with self.subTest(name):
                d = details[name]
                self.assertEqual((d["RoleId"], d["Arn"], d["Path"]),
                                 (role["role_id"], role["arn"], role["path"]))
                self.assertEqual(d["CreateDate"].timestamp(), role["create_date"])
                self.assertEqual({t["Key"]: t["Value"] for t in d.get("Tags", [])},
                                 role["tags"])
                used = d["RoleLastUsed"]
                if role["last_used_date"] is None:
                    self.assertEqual(used, {})  # <RoleLastUsed/>, as IAM sends it
                else:
                    self.assertEqual((used["LastUsedDate"].timestamp(), used["Region"]),
                                     (role["last_used_date"], role["last_used_region"]))
                # boto3 decodes IAM's URL-encoded policy documents.
                statement = d["AssumeRolePolicyDocument"]["Statement"][0]
                expected = ({"Service": "support.amazonaws.com"} if role["service_linked"]
                            else {"AWS": "arn:aws:iam::123456789012:root"})
                self.assertEqual(statement["Principal"], expected)
                self.assertEqual([p["PolicyName"] for p in d["RolePolicyList"]],
                                 role["inline_policies"])
        body = raw[0]
        self.assertIn("<RoleLastUsed/>", body)
        self.assertIn("<AssumeRolePolicyDocument>%7B%22Version%22", body)
        self.assertIn("<RoleLastUsed><LastUsedDate>", body)

    def test_get_role_and_list_roles(self) -> None:
        iam = self.peer.client("iam")
        for name, role in self.roles.items():
            with self.subTest(name):
                got = iam.get_role(RoleName=name)["Role"]
                used = got["RoleLastUsed"]
                self.assertEqual(used.get("LastUsedDate") and used["LastUsedDate"].timestamp(),
                                 role["last_used_date"])
                self.assertEqual(used.get("Region"), role["last_used_region"])
        # ListRoles never has RoleLastUsed or Tags (moto, as the API Reference says).
        listed = iam.list_roles()["Roles"]
        self.assertEqual({r["RoleName"] for r in listed}, set(self.roles))
        self.assertTrue(all("RoleLastUsed" not in r and "Tags" not in r for r in listed))

    def test_service_level_jobs_of_roles(self) -> None:
        iam = self.peer.client("iam")
        for name, role in self.roles.items():
            with self.subTest(name):
                result = job_result(iam, role["arn"])
                self.assertEqual((result["JobStatus"], result["JobType"]),
                                 ("COMPLETED", "SERVICE_LEVEL"))
                entries = result["ServicesLastAccessed"]
                self.assertEqual([e["ServiceNamespace"] for e in entries],
                                 [e["namespace"] for e in role["services"]])
                self.assertEqual(len(entries), role["services_granted"])
                self.assertEqual(sum(1 for e in entries if "LastAuthenticated" in e),
                                 role["services_accessed"])
                for got, seeded in zip(entries, role["services"]):
                    self.assertNotIn("TrackedActionsLastAccessed", got)
                    if seeded["last_authenticated"] is None:
                        self.assertEqual(got["TotalAuthenticatedEntities"], 0)
                        continue
                    self.assertEqual(got["LastAuthenticated"].timestamp(),
                                     seeded["last_authenticated"])
                    self.assertEqual((got["LastAuthenticatedEntity"],
                                      got["LastAuthenticatedRegion"]),
                                     (role["arn"], seeded["region"]))

    def test_action_level_jobs(self) -> None:
        iam = self.peer.client("iam")
        app = self.roles["app-backend"]
        result = job_result(iam, app["arn"], "ACTION_LEVEL")
        self.assertEqual(result["JobType"], "ACTION_LEVEL")
        listed = {e["ServiceNamespace"]: e.get("TrackedActionsLastAccessed")
                  for e in result["ServicesLastAccessed"]}
        # Listed when at least one tracked action was used: not lambda (none used), not
        # sqs (no tracked actions seeded).
        self.assertEqual({ns for ns, actions in listed.items() if actions is not None},
                         {"ec2", "iam", "s3"})
        counts = {ns: (len(a), sum(1 for x in a if "LastAccessedTime" in x))
                  for ns, a in listed.items() if a is not None}
        self.assertEqual(counts, {"ec2": (3, 1), "iam": (3, 1), "s3": (4, 2)})
        for seeded in app["services"]:
            actions = listed[seeded["namespace"]]
            if actions is None:
                self.assertEqual(seeded.get("actions_accessed", 0), 0)
                continue
            self.assertEqual([a["ActionName"] for a in actions],
                             [a["name"] for a in seeded["actions"]])
            for got, want in zip(actions, seeded["actions"]):
                if want["last_accessed"] is None:
                    self.assertEqual(got, {"ActionName": want["name"]})
                else:
                    self.assertEqual(got["LastAccessedTime"].timestamp(), want["last_accessed"])
                    self.assertEqual((got["LastAccessedEntity"], got["LastAccessedRegion"]),
                                     (app["arn"], want["region"]))
        # Every role and user: the actions listed are exactly those the seeded report
        # says, for the services with a used one.
        everyone = list(self.roles.values()) + [
            u for u in self.peer.line["users"] if u["service_job"] == "completed"]
        for principal in everyone:
            with self.subTest(principal["arn"]):
                got = job_result(iam, principal["arn"], "ACTION_LEVEL")["ServicesLastAccessed"]
                served = {e["ServiceNamespace"]: len(e.get("TrackedActionsLastAccessed", []))
                          for e in got}
                expected = {e["namespace"]: (e["actions_granted"]
                                             if e.get("actions_accessed") else 0)
                            for e in principal["services"]}
                self.assertEqual(served, expected)
        # The API Reference's enum: anything else is a ValidationError.
        self.assertEqual(error_code(lambda: iam.generate_service_last_accessed_details(
            Arn=app["arn"], Granularity="RESOURCE_LEVEL")), "ValidationError")

    def test_jobs_for_roles_made_at_run_time(self) -> None:
        iam = self.peer.client("iam")
        arn = iam.create_role(RoleName="runtime-role", AssumeRolePolicyDocument=TRUST_EC2)[
            "Role"]["Arn"]
        try:
            job = iam.generate_service_last_accessed_details(Arn=arn)["JobId"]
            first = iam.get_service_last_accessed_details(JobId=job)
            self.assertEqual(first["JobStatus"], "IN_PROGRESS")
            done = iam.get_service_last_accessed_details(JobId=job)
            self.assertEqual((done["JobStatus"], done["ServicesLastAccessed"]), ("COMPLETED", []))
        finally:
            iam.delete_role(RoleName="runtime-role")
        self.assertEqual(error_code(lambda: iam.generate_service_last_accessed_details(Arn=arn)),
                         "NoSuchEntity")


class AuthorizationDetailsPaging(unittest.TestCase):
    def test_max_items_2_over_5_roles(self) -> None:
        scenario = {"users": [{"name": f"u{n}", "created_days_ago": 5} for n in range(3)],
                    "roles": [{"name": f"role-{n}", "created_days_ago": 10 + n}
                              for n in range(5)]}
        with Peer(scenario) as peer:
            iam = peer.client("iam")
            pages, marker = [], {}
            while True:
                page = iam.get_account_authorization_details(Filter=["Role"], MaxItems=2,
                                                             **marker)
                pages.append([r["RoleName"] for r in page["RoleDetailList"]])
                self.assertEqual(page["IsTruncated"], "Marker" in page)
                if not page["IsTruncated"]:
                    break
                marker = {"Marker": page["Marker"]}
            self.assertEqual(pages, [["role-0", "role-1"], ["role-2", "role-3"], ["role-4"]])
            self.assertEqual([r["RoleName"] for r in role_details(
                iam, PaginationConfig={"PageSize": 2})], [f"role-{n}" for n in range(5)])
            # MaxItems counts across the lists, in response order: users, then roles.
            both = iam.get_account_authorization_details(Filter=["User", "Role"], MaxItems=4)
            self.assertEqual(([u["UserName"] for u in both["UserDetailList"]],
                              [r["RoleName"] for r in both["RoleDetailList"]]),
                             (["u0", "u1", "u2"], ["role-0"]))
            rest = iam.get_account_authorization_details(Filter=["User", "Role"], MaxItems=4,
                                                         Marker=both["Marker"])
            self.assertEqual((rest["UserDetailList"], len(rest["RoleDetailList"]),
                              rest["IsTruncated"]), ([], 4, False))
            users = iam.get_account_authorization_details(Filter=["User"], MaxItems=2)
            self.assertEqual((len(users["UserDetailList"]), users["RoleDetailList"]), (2, []))
            # Errors, as HTTP 400.
            for kw, code in ((dict(MaxItems=1001), "ValidationError"),
                             (dict(Filter=["Roles"]), "ValidationError"),
                             (dict(Marker="bogus"), "InvalidInput"),
                             # A Marker continues only the Filter it came from.
                             (dict(Filter=["User"], Marker=both["Marker"]), "InvalidInput")):
                with self.subTest(**kw):
                    with self.assertRaises(ClientError) as raised:
                        iam.get_account_authorization_details(**kw)
                    error = raised.exception.response
                    self.assertEqual((error["Error"]["Code"],
                                      error["ResponseMetadata"]["HTTPStatusCode"]), (code, 400))


class RoleValidation(unittest.TestCase):
    rejected = ScenarioValidation.rejected

    def test_role_errors_name_the_path(self) -> None:
        def role(**kw) -> dict:
            return {"users": [], "roles": [{"name": "r", "created_days_ago": 10, **kw}]}

        s3 = lambda **kw: {"namespace": "s3", "name": "Amazon S3", **kw}  # noqa: E731
        cases = [
            (role(lastUsed=1), "roles[0]: unknown field(s) ['lastUsed']"),
            (role(name="no spaces"), "roles[0].name: not a valid IAM role name"),
            (role(path="/aws-service-role/x/"), "roles[0].path: a service-linked role's path"),
            (role(last_used_days_ago=401), "roles[0].last_used_days_ago: IAM reports"),
            (role(last_used_days_ago=11), "roles[0].last_used_days_ago (11.0 days ago) predates"),
            (role(last_used_region="eu-west-1"), "roles[0].last_used_region: needs"),
            (role(trusted_service="ec2"), "roles[0].trusted_service: a service principal"),
            (role(tags={"aws:x": "y"}), "roles[0].tags: key 'aws:x'"),
            (role(inline_policies={"p": {}}), "roles[0].inline_policies.p: expected"),
            (role(services={"entries": [s3(last_authenticated_days_ago=1)]}),
             "roles[0].services.entries[0].last_authenticated_days_ago: a service accessed"),
            (role(services={"entries": [{"namespace": "sqs", "name": "Amazon SQS",
                                         "actions": []}]}),
             "roles[0].services.entries[0].actions: IAM does not report actions of 'sqs'"),
            (role(services={"entries": [s3(actions=[{"name": "s3:GetObject"}])]}),
             "roles[0].services.entries[0].actions[0].name: an action name"),
            (role(last_used_days_ago=1, services={"entries": [s3(
                last_authenticated_days_ago=5,
                actions=[{"name": "CreateBucket", "last_accessed_days_ago": 2}])]}),
             "actions[0].last_accessed_days_ago (2.0) is more recent"),
            (role(services={"entries": [s3(actions=[{"name": "CreateBucket",
                                                      "last_accessed_days_ago": 2}])]}),
             "actions[0].last_accessed_days_ago: the service entry needs"),
            (role(services={"entries": [s3(), s3()]}),
             "roles[0].services.entries[1].namespace: 's3' is listed twice"),
            ({"users": [], "roles": [{"name": "r", "created_days_ago": 1},
                                     {"name": "R", "created_days_ago": 1}]},
             "roles[1].name: duplicate role 'R'"),
        ]
        member = copy.deepcopy(MULTI)
        member["accounts"][0]["roles"] = [{"name": "iam-key-exporter", "created_days_ago": 1}]
        cases.append((member, "accounts[0].roles[0].name: 'iam-key-exporter' is a role the "
                              "peer creates"))
        for scenario, message in cases:
            with self.subTest(message):
                self.rejected(scenario, message)


class MemberAccountRoles(unittest.TestCase):
    def test_roles_of_a_member_account(self) -> None:
        scenario = copy.deepcopy(MULTI)
        scenario["accounts"][0]["roles"] = [
            {"name": "etl-runner", "path": "/data/", "created_days_ago": 90,
             "last_used_days_ago": 1, "last_used_region": "eu-central-1",
             "tags": {"team": "data"}}]
        with Peer(scenario) as peer:
            self.assertNotIn("roles", peer.line)  # the main account has none in the scenario
            member, other = peer.line["accounts"]
            self.assertNotIn("roles", other)
            (etl,) = member["roles"]
            self.assertEqual(etl["arn"], "arn:aws:iam::210987654321:role/data/etl-runner")
            creds = assumed(peer.client("sts"), member["role_arn"])
            iam = peer.client("iam", creds)
            details = {r["RoleName"]: r for r in role_details(iam)}
            # The exporter's role, the scenario's, and moto's organization role.
            self.assertEqual(list(details), ["iam-key-exporter", "etl-runner",
                                             "OrganizationAccountAccessRole"])
            self.assertEqual(details["etl-runner"]["RoleLastUsed"]["LastUsedDate"].timestamp(),
                             etl["last_used_date"])
            # The role the exporter signs with is used now: whole seconds, the region.
            used = details["iam-key-exporter"]["RoleLastUsed"]
            self.assertEqual(used["Region"], "us-east-1")
            self.assertEqual(used["LastUsedDate"].microsecond, 0)
            self.assertLess(abs(used["LastUsedDate"].timestamp() - server_time(peer)), 60)
            # Its job: completed without entries; the main account sees no member role.
            self.assertEqual(job_result(iam, member["role_arn"])["ServicesLastAccessed"], [])
            self.assertEqual(error_code(lambda: peer.client("iam")
                                        .generate_service_last_accessed_details(Arn=etl["arn"])),
                             "NoSuchEntity")
            self.assertEqual(role_details(peer.client("iam")), [])


class RoleEvents(unittest.TestCase):
    def test_role_writes_are_recorded(self) -> None:
        with Peer(HERE / "sample-inventory.json") as peer:
            iam = peer.client("iam")
            created = iam.create_role(RoleName="deployer", Path="/ci/",
                                      AssumeRolePolicyDocument=TRUST_EC2,
                                      Tags=[{"Key": "team", "Value": "platform"}])["Role"]
            iam.tag_role(RoleName="deployer", Tags=[{"Key": "owner", "Value": "o"}])
            iam.untag_role(RoleName="deployer", TagKeys=["owner"])
            iam.update_role(RoleName="deployer", Description="ci", MaxSessionDuration=7200)
            iam.update_assume_role_policy(RoleName="deployer", PolicyDocument=TRUST_EC2)
            iam.put_role_policy(RoleName="deployer", PolicyName="list", PolicyDocument=ROLE_POLICY)
            policy = iam.create_policy(PolicyName="list", PolicyDocument=ROLE_POLICY)["Policy"]
            iam.attach_role_policy(RoleName="deployer", PolicyArn=policy["Arn"])
            iam.detach_role_policy(RoleName="deployer", PolicyArn=policy["Arn"])
            iam.delete_role_policy(RoleName="deployer", PolicyName="list")
            iam.delete_role(RoleName="deployer")
            iam.get_account_authorization_details(Filter=["Role"], MaxItems=3)

            events = peer.events(LookupAttributes=IAM_SOURCE)
            names = [e["EventName"] for e in events][::-1]  # oldest first
            self.assertEqual(names, [
                "CreateRole", "TagRole", "UntagRole", "UpdateRole", "UpdateAssumeRolePolicy",
                "PutRolePolicy", "CreatePolicy", "AttachRolePolicy", "DetachRolePolicy",
                "DeleteRolePolicy", "DeleteRole", "GetAccountAuthorizationDetails"])
            by_name = {e["EventName"]: e for e in events}
            for name, event in by_name.items():
                record = trail_record(event)
                with self.subTest(name):
                    read = name == "GetAccountAuthorizationDetails"
                    self.assertEqual((event["ReadOnly"], record["readOnly"]),
                                     ("true" if read else "false", read))
                    if name in ("CreatePolicy", "GetAccountAuthorizationDetails"):
                        continue
                    self.assertEqual(record["requestParameters"]["roleName"], "deployer")
                    self.assertIn({"ResourceType": "AWS::IAM::Role", "ResourceName": "deployer"},
                                  event["Resources"])
            params = lambda name: trail_record(by_name[name])["requestParameters"]  # noqa: E731
            self.assertEqual(params("CreateRole"), {
                "roleName": "deployer", "path": "/ci/", "assumeRolePolicyDocument": TRUST_EC2,
                "tags": [{"key": "team", "value": "platform"}]})
            self.assertEqual(params("TagRole"), {"roleName": "deployer",
                                                 "tags": [{"key": "owner", "value": "o"}]})
            self.assertEqual(params("UntagRole"), {"roleName": "deployer", "tagKeys": ["owner"]})
            self.assertEqual(params("UpdateRole"), {"roleName": "deployer", "description": "ci",
                                                    "maxSessionDuration": "7200"})
            self.assertEqual(params("UpdateAssumeRolePolicy"),
                             {"roleName": "deployer", "policyDocument": TRUST_EC2})
            self.assertEqual(params("PutRolePolicy"), {"roleName": "deployer",
                                                       "policyName": "list",
                                                       "policyDocument": ROLE_POLICY})
            self.assertEqual(params("DeleteRole"), {"roleName": "deployer"})
            self.assertEqual(params("GetAccountAuthorizationDetails"),
                             {"filter": ["Role"], "maxItems": "3"})
            self.assertEqual(by_name["AttachRolePolicy"]["Resources"], [
                {"ResourceType": "AWS::IAM::Role", "ResourceName": "deployer"},
                {"ResourceType": "AWS::IAM::Policy", "ResourceName": policy["Arn"]}])
            response = trail_record(by_name["CreateRole"])["responseElements"]["role"]
            self.assertEqual({k: response[k] for k in ("path", "roleName", "roleId", "arn")},
                             {"path": "/ci/", "roleName": "deployer",
                              "roleId": created["RoleId"], "arn": created["Arn"]})
            self.assertTrue(response["assumeRolePolicyDocument"].startswith("%7B"))
            self.assertIsNone(trail_record(by_name["DeleteRole"])["responseElements"])


class RolePermissions(unittest.TestCase):
    """Auth mode: GetAccountAuthorizationDetails and role jobs are enforced by moto."""

    def policy_file(self, role_jobs: bool) -> dict:
        policy = json.loads((REPO / "config" / "iam-policy.json").read_text())
        actions = {a.lower() for a in policy_actions(REPO / "config" / "iam-policy.json")}
        if "iam:getaccountauthorizationdetails" not in actions:
            policy["Statement"].append({"Sid": "ReadRoles", "Effect": "Allow",
                                        "Action": "iam:GetAccountAuthorizationDetails",
                                        "Resource": "*"})
        # The shipped policy allows roles' jobs (role/*); without role_jobs the copy
        # keeps the jobs to users alone.
        for statement in policy["Statement"]:
            if statement.get("Action") == "iam:GenerateServiceLastAccessedDetails":
                resources = statement["Resource"]
                resources = [resources] if isinstance(resources, str) else resources
                resources = [r for r in resources if r != "arn:aws:iam::*:role/*"]
                if role_jobs:
                    resources.append("arn:aws:iam::*:role/*")
                statement["Resource"] = resources
        return policy

    def test_enforced(self) -> None:
        cases = [(True, []), (True, ["iam:GetAccountAuthorizationDetails"]), (False, [])]
        with contextlib.ExitStack() as stack:
            peers = []
            for role_jobs, removed in cases:
                f = stack.enter_context(tempfile.NamedTemporaryFile("w", suffix=".json"))
                json.dump(self.policy_file(role_jobs), f)
                f.flush()
                scenario = copy.deepcopy(MULTI)
                scenario["roles"] = SAMPLE["roles"]
                scenario["auth"] = {"policy_file": f.name, "remove_actions": removed}
                peers.append(stack.enter_context(Peer(scenario, wait=False)))
            stack.callback(lambda: [p.proc.stdin.close() for p in peers])
            for (role_jobs, removed), peer in zip(cases, peers):
                peer.ready()
                with self.subTest(role_jobs=role_jobs, removed=removed):
                    creds = peer.line["credentials"]
                    iam = peer.client("iam", {"aws_access_key_id": creds["access_key_id"],
                                              "aws_secret_access_key": creds["secret_access_key"]})
                    gaad = error_code(lambda: iam.get_account_authorization_details(
                        Filter=["Role"]))
                    self.assertEqual(gaad, "AccessDenied" if removed else None)
                    role = peer.line["roles"][0]["arn"]
                    job = error_code(lambda: iam.generate_service_last_accessed_details(Arn=role))
                    self.assertEqual(job, None if role_jobs else "AccessDenied")
                    # The user job's statement (user/*) still allows a user's job.
                    self.assertIsNone(error_code(lambda: iam.generate_service_last_accessed_details(
                        Arn=peer.line["users"][0]["arn"])))
                    if removed:
                        with self.assertRaises(ClientError) as raised:
                            iam.get_account_authorization_details()
                        self.assertEqual(
                            raised.exception.response["ResponseMetadata"]["HTTPStatusCode"], 403)


class BenchRoles(unittest.TestCase):
    def test_bench_roles(self) -> None:
        with Peer(None, args=("--bench-roles", "30", "--bench-job-polls", "1")) as peer:
            self.assertEqual(peer.line | {"endpoint": None}, {
                "endpoint": None, "account_id": "123456789012", "users": 0, "keys": 0,
                "roles": 30})
            iam = peer.client("iam")
            roles = role_details(iam, PaginationConfig={"PageSize": 7})
            self.assertEqual([r["RoleName"] for r in roles],
                             [f"bench-role-{i:05d}" for i in range(30)])
            linked = [r["RoleName"] for r in roles if r["Path"].startswith("/aws-service-role/")]
            self.assertEqual(linked, ["bench-role-00000", "bench-role-00025"])
            never = {r["RoleName"] for r in roles if "LastUsedDate" not in r["RoleLastUsed"]}
            self.assertEqual(never, {f"bench-role-{i:05d}" for i in range(30)
                                     if i % 3 == 0 or i % 25 == 0})
            self.assertEqual(sum(1 for r in roles if r.get("Tags")), 14)  # even, not linked
            now = server_time(peer)
            for r in roles:
                used = r["RoleLastUsed"].get("LastUsedDate")
                self.assertTrue(used is None or now - used.timestamp() <= 400 * 86400)
            role = roles[1]  # used: its first service accessed then
            result = job_result(iam, role["Arn"], "ACTION_LEVEL")
            first = result["ServicesLastAccessed"][0]
            self.assertEqual(first["LastAuthenticated"], role["RoleLastUsed"]["LastUsedDate"])
        clash = Peer({"users": [], "roles": [{"name": "bench-role-00003", "created_days_ago": 1}]},
                     wait=False, args=("--bench-roles", "5"))
        self.assertEqual(clash.close(), 2)
        self.assertIn("role names clash with --bench-roles", clash.stderr)


if __name__ == "__main__":
    unittest.main()
