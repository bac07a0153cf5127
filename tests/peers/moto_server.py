"""IAM test peer: a moto server seeded with a scenario of users and access keys.

Usage:
    python moto_server.py --scenario FILE [--host 127.0.0.1] [--port 0]
                          [--cloudtrail-delay SECONDS] [--verbose] [--ignore-stdin]
    python moto_server.py --bench-users N [--bench-accounts A] [--scenario FILE] [...]
    python moto_server.py --bench-roles N [--bench-users M] [--scenario FILE] [...]

What it does:
  1. Loads and validates a scenario JSON file (unknown fields are rejected).
     With --bench-users N it also generates N users with 2 keys each, and
     with --bench-accounts A an organization of A member accounts holding N
     generated users each; with --bench-roles N, N generated roles.
  2. Seeds moto's in-memory IAM backend with the users and access keys (and
     console password, MFA device, tags) and roles (tags, inline policies),
     then backdates the model objects (user/key/role CreateDate, key and
     password last-used, RoleLastUsed) to "now minus N days".
     All seeded times are truncated to whole seconds, as real IAM reports
     them, so the values that come back over HTTP equal the ones printed below
     exactly. Member accounts get their users the same way, plus the role the
     exporter assumes; an organization and, in auth mode, the exporter's own
     user with its policies are seeded too. Seeding writes to moto's backends
     directly: no HTTP request, so no policy check and no auth allowance used.
  3. Starts moto.server.ThreadedMotoServer (port 0 = a free port picked by
     the OS; the real port is read back from the bound socket, so there is
     no probe-then-bind race).
  4. Prints ONE JSON line to stdout describing what was seeded (endpoint,
     account, users, keys, dates as epoch seconds; only counts in bench
     mode). Never prints secrets, except in auth mode the moto-made test
     credentials of the exporter's user. Everything else goes to stderr.
  5. Serves until stdin reaches EOF (the parent test process died or closed
     the pipe) or SIGTERM/SIGINT arrives, then stops the server and exits 0.

TEST-SIDE EXTENSIONS (see README.md for exactly what is and is not emulated):
  - moto 5.2.5 does not implement GenerateServiceLastAccessedDetails /
    GetServiceLastAccessedDetails (it answers HTTP 500). This script adds both
    to moto's IamResponse class, serving data from the scenario, for users and
    roles, with TrackedActionsLastAccessed for ACTION_LEVEL jobs.
  - moto's GetAccountAuthorizationDetails ignores MaxItems and Marker (one page,
    IsTruncated false) and sends roles' trust policies as plain JSON. This
    script pages it by MaxItems/Marker and URL-encodes them, as IAM does; and
    gives RoleLastUsed a Region and whole seconds when moto marks a role used.
  - moto's GetCredentialReport always says GeneratedTime 2015-02-02T20:02:02Z.
    This script records when GenerateCredentialReport started a report, keeps
    it for IAM's 4 hours, and answers that time.
  - Member accounts (scenario "accounts"): with MOTO_ACCOUNT_ID set, moto
    answers every request from that one account, even for credentials of an
    assumed role in another account. This script routes a request signed with
    a key moto issued in a member account (AssumeRole credentials) to that
    account, and makes AssumeRole honour the member roles' trust policies.
  - Organizations ListAccounts pages at most 20 accounts, as the real API does
    (moto's default page is 100), and answers like AWS without an organization.
  - Policy enforcement (scenario "auth"): moto checks every action against the
    resource "*", so a statement scoped to arn:aws:iam::*:user/* never
    matches. This script gives the user-scoped IAM actions their real
    resource, the user's ARN.
  - moto 5.2.5 has no CloudTrail LookupEvents. This script records every IAM
    call served over HTTP as an event in its account's history (us-east-1)
    and adds LookupEvents to moto's CloudTrailResponse, with AWS's filters,
    paging, errors and an optional delivery delay (--cloudtrail-delay).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import logging
import os
import random
import re
import select
import signal
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

DEFAULT_ACCOUNT_ID = "123456789012"
DEFAULT_REGION = "us-east-1"
KEY_STATUSES = ("Active", "Inactive")
JOB_OUTCOMES = ("completed", "failed")
MAX_KEYS_PER_USER = 2  # the real IAM quota, also enforced by moto
REPORT_MAX_AGE = timedelta(hours=4)  # IAM regenerates a credential report at most this often
REPO_ROOT = Path(__file__).resolve().parents[2]
EXPORTER_POLICY = REPO_ROOT / "config" / "iam-policy.json"
HUB_POLICY = REPO_ROOT / "config" / "iam-policy-hub.json"
TRUST_POLICY = REPO_ROOT / "config" / "iam-trust-policy.json"
DEFAULT_ROLE_NAME = "iam-key-exporter"  # the member-account role the exporter assumes
EXPORTER_USER = "iam-key-exporter"  # auth mode: the main-account user the exporter signs as
ORG_PAGE_SIZE = 20  # Organizations ListAccounts: MaxResults is 1..20
MAX_TAGS_PER_USER = 50  # the IAM quota
ROLE_NAME_RE = re.compile(r"[\w+=,.@-]{1,64}")
EXTERNAL_ID_RE = re.compile(r"[\w+=,.@:/-]{2,1224}")
# A service-linked role lives under this path, e.g. /aws-service-role/support.amazonaws.com/.
SERVICE_ROLE_PATH_RE = re.compile(r"/aws-service-role/([a-z0-9][a-z0-9.-]*\.amazonaws\.com)/")
SERVICE_PRINCIPAL_RE = re.compile(r"[a-z0-9][a-z0-9.-]*\.amazonaws\.com")
ROLE_LAST_USED_WINDOW_DAYS = 400  # RoleLastUsed covers the trailing 400 days only
# A member account's roles besides the scenario's: moto's CreateAccount makes this one.
ORG_ACCESS_ROLE = "OrganizationAccountAccessRole"
# Services whose actions IAM reports in ACTION_LEVEL jobs (TrackedActionsLastAccessed),
# as far as the IAM User Guide could be checked: S3 (tracked since 2020-04-12), EC2, IAM
# and Lambda (since 2021-04-07), and, from the list at
# https://docs.aws.amazon.com/IAM/latest/UserGuide/access_policies_last-accessed-action-last-accessed.html
# (about 200 services since 2023-05-23), the first rows that could be read. Extend it
# from that page when a scenario needs another one; see README.md.
ACTION_TRACKED_SERVICES = frozenset({"s3", "ec2", "iam", "lambda", "access-analyzer", "account"})
GRANULARITIES = ("SERVICE_LEVEL", "ACTION_LEVEL")
# GetAccountAuthorizationDetails: Filter values, and MaxItems (1..1000, default 100).
GAAD_FILTERS = ("User", "Role", "Group", "LocalManagedPolicy", "AWSManagedPolicy")
GAAD_PAGE_SIZE = 100
GAAD_MAX_ITEMS = 1000

# Bench mode: where generated keys were "used".
BENCH_SERVICES = (("s3", "Amazon S3"), ("ec2", "Amazon EC2"), ("lambda", "AWS Lambda"),
                  ("dynamodb", "Amazon DynamoDB"), ("sts", "AWS Security Token Service"))
BENCH_REGIONS = ("us-east-1", "eu-west-1", "eu-central-1", "ap-southeast-2")
BENCH_ACCOUNT_BASE = 200_000_000_000  # bench member k is account BENCH_ACCOUNT_BASE + k
MAX_BENCH_ACCOUNTS = 1000
# Bench roles: tracked actions granted per service (the first one used when the service was),
# the services of the service-linked ones, and team tags.
BENCH_TRACKED_ACTIONS = {"s3": ("CreateBucket", "DeleteBucket", "PutBucketPolicy"),
                         "ec2": ("RunInstances", "StopInstances", "TerminateInstances"),
                         "lambda": ("CreateFunction", "UpdateFunctionCode")}
BENCH_LINKED_SERVICES = ("autoscaling", "ecs", "elasticloadbalancing", "rds", "support")
BENCH_TEAMS = ("platform", "data", "payments", "ml")

log = logging.getLogger("iam-peer")


# --------------------------------------------------------------------------
# Scenario parsing / validation
# --------------------------------------------------------------------------


class ScenarioError(ValueError):
    pass


def _fields(obj: Any, where: str, required: set[str], optional: set[str]) -> dict:
    """Check that obj is an object with exactly the allowed fields."""
    if not isinstance(obj, dict):
        raise ScenarioError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - required - optional)
    if unknown:
        allowed = ", ".join(sorted(required | optional))
        raise ScenarioError(f"{where}: unknown field(s) {unknown}; allowed: {allowed}")
    missing = sorted(required - set(obj))
    if missing:
        raise ScenarioError(f"{where}: missing required field(s) {missing}")
    return obj


def _days(obj: dict, key: str, where: str, unit: str = "days") -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    # bool is an int subclass in Python; "true days ago" is certainly a typo.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ScenarioError(f"{where}.{key}: expected a non-negative number of {unit}")
    return float(value)


def _str(obj: dict, key: str, where: str, default: str | None = None,
         choices: tuple[str, ...] | None = None) -> str | None:
    value = obj.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ScenarioError(f"{where}.{key}: expected a non-empty string")
    if choices and value not in choices:
        raise ScenarioError(f"{where}.{key}: expected one of {list(choices)}, got {value!r}")
    return value


def _bool(obj: dict, key: str, where: str, default: bool = False) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise ScenarioError(f"{where}.{key}: expected true or false")
    return value


def _list(obj: dict, key: str, where: str) -> list:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise ScenarioError(f"{where}.{key}: expected a list")
    return value


def _not_before(later: float | None, earlier: float | None, what: str) -> None:
    """Reject impossible chronology, e.g. a key created before its user."""
    if later is not None and earlier is not None and later > earlier:
        raise ScenarioError(f"{what} ({later} days ago) predates its parent ({earlier} days ago)")


@dataclass
class KeySpec:
    created_days_ago: float
    status: str
    last_used_days_ago: float | None
    last_used_service: str | None
    last_used_region: str | None


@dataclass
class ActionSpec:
    """A tracked action the principal's policies grant, and when it was last used."""
    name: str
    last_accessed_days_ago: float | None
    region: str | None


@dataclass
class ServiceSpec:
    namespace: str
    name: str
    last_authenticated_days_ago: float | None
    region: str | None
    actions: list[ActionSpec] = field(default_factory=list)


@dataclass
class UserSpec:
    name: str
    path: str
    created_days_ago: float
    keys: list[KeySpec]
    console_password: bool = False
    password_last_used_days_ago: float | None = None
    mfa: bool = False
    job: str = "completed"
    in_progress_polls: int = 1
    error_code: str | None = None
    error_message: str | None = None
    services: list[ServiceSpec] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class RoleSpec:
    """An IAM role: when it was created and last used, tags, inline policies, and
    what its service-last-accessed job answers (the same fields as UserSpec's)."""
    name: str
    path: str
    created_days_ago: float
    last_used_days_ago: float | None = None
    last_used_region: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    trusted_service: str | None = None  # None: the account's root is trusted
    inline_policies: dict[str, dict] = field(default_factory=dict)
    job: str = "completed"
    in_progress_polls: int = 1
    error_code: str | None = None
    error_message: str | None = None
    services: list[ServiceSpec] = field(default_factory=list)

    @property
    def linked_service(self) -> str | None:
        """The service of a service-linked role (from its path), else None."""
        match = SERVICE_ROLE_PATH_RE.fullmatch(self.path)
        return match.group(1) if match else None


@dataclass
class AccountSpec:
    """A member account: its own IAM users, and a role the exporter assumes."""
    account_id: str
    users: list[UserSpec]
    role_name: str = DEFAULT_ROLE_NAME
    external_id: str | None = None
    in_organization: bool = True
    roles: list[RoleSpec] | None = None  # None: the scenario has no "roles" for it

    @property
    def role_arn(self) -> str:
        return f"arn:aws:iam::{self.account_id}:role/{self.role_name}"


@dataclass
class AuthSpec:
    """Policy enforcement: the exporter's user and roles get these policies."""
    policy_file: str
    policy: dict | None  # the policy file minus remove_actions; None if emptied
    hub: dict | None  # config/iam-policy-hub.json minus remove_actions; None if emptied
    remove_actions: list[str]


@dataclass
class Scenario:
    account_id: str = DEFAULT_ACCOUNT_ID
    users: list[UserSpec] = field(default_factory=list)
    report_generated_hours_ago: float | None = None  # None: no credential report yet
    accounts: list[AccountSpec] = field(default_factory=list)
    organization: bool = False
    suspended: list[str] = field(default_factory=list)
    auth: AuthSpec | None = None
    roles: list[RoleSpec] | None = None  # None: the scenario has no "roles"


def _account_id(value: Any, where: str) -> str:
    if not (isinstance(value, str) and value.isdigit() and len(value) == 12):
        raise ScenarioError(f"{where}: expected an account id, 12 digits as a string")
    return value


def parse_scenario(doc: Any) -> Scenario:
    _fields(doc, "scenario", {"users"}, {"account_id", "credential_report_generated_hours_ago",
                                         "accounts", "organization", "auth", "roles"})
    account_id = _str(doc, "account_id", "scenario", DEFAULT_ACCOUNT_ID)
    if not (account_id.isdigit() and len(account_id) == 12):
        raise ScenarioError("scenario.account_id: expected 12 digits")
    report_age = _days(doc, "credential_report_generated_hours_ago", "scenario", "hours")
    users = _parse_users(doc, "scenario", "")
    accounts = _parse_accounts(doc, account_id)
    scenario = Scenario(account_id, users, report_age, accounts)
    if "roles" in doc:
        scenario.roles = _parse_roles(doc, "scenario", "", reserved=set())

    if "organization" in doc:
        w = "organization"
        o = _fields(doc["organization"], w, {"enabled"}, {"suspended"})
        if not isinstance(o["enabled"], bool):
            raise ScenarioError(f"{w}.enabled: expected true or false")
        scenario.organization = o["enabled"]
        if "suspended" in o and not scenario.organization:
            raise ScenarioError(f"{w}.suspended: needs enabled true")
        taken = {account_id} | {a.account_id for a in accounts}
        for i, value in enumerate(_list(o, "suspended", w)):
            acct = _account_id(value, f"{w}.suspended[{i}]")
            if acct in taken:
                raise ScenarioError(f"{w}.suspended[{i}]: account {acct} is the scenario's "
                                    "account, a member account or listed twice")
            taken.add(acct)
            scenario.suspended.append(acct)

    if "auth" in doc:
        scenario.auth = _parse_auth(doc["auth"], accounts)
        if any(u.name == EXPORTER_USER for u in users):
            raise ScenarioError(f"users: {EXPORTER_USER!r} is the user auth mode creates")
    return scenario


def _parse_accounts(doc: dict, main_account: str) -> list[AccountSpec]:
    accounts: list[AccountSpec] = []
    seen = {main_account}
    for i, a in enumerate(_list(doc, "accounts", "scenario")):
        w = f"accounts[{i}]"
        _fields(a, w, {"account_id"},
                {"users", "role_name", "external_id", "in_organization", "roles"})
        acct = _account_id(a["account_id"], f"{w}.account_id")
        if acct in seen:
            raise ScenarioError(f"{w}.account_id: {acct} is the scenario's account or listed twice")
        seen.add(acct)
        role_name = _str(a, "role_name", w, DEFAULT_ROLE_NAME)
        if not ROLE_NAME_RE.fullmatch(role_name):
            raise ScenarioError(f"{w}.role_name: not a valid IAM role name: {role_name!r}")
        external_id = _str(a, "external_id", w)
        if external_id is not None and not EXTERNAL_ID_RE.fullmatch(external_id):
            raise ScenarioError(f"{w}.external_id: 2-1224 characters of [\\w+=,.@:/-], "
                                f"got {external_id!r}")
        account = AccountSpec(acct, _parse_users(a, w, w + "."), role_name, external_id,
                              _bool(a, "in_organization", w, True))
        if "roles" in a:  # the exporter's role and moto's organization role are taken
            account.roles = _parse_roles(a, w, w + ".", reserved={role_name, ORG_ACCESS_ROLE})
        accounts.append(account)
    return accounts


def _policy_actions(policy: dict) -> list[str]:
    out = []
    for st in policy["Statement"]:
        actions = st.get("Action", [])
        out += [actions] if isinstance(actions, str) else actions
    return out


def _load_policy(path: Path, where: str) -> dict:
    """A JSON policy document with a list of statements (a lone one is listed)."""
    with open(path, encoding="utf-8") as f:
        policy = json.load(f)
    statements = policy.get("Statement") if isinstance(policy, dict) else None
    if isinstance(statements, dict):
        statements = [statements]
    if not (isinstance(statements, list) and statements
            and all(isinstance(st, dict) for st in statements)):
        raise ScenarioError(f"{where}: {path} is not an IAM policy with statements")
    return {**policy, "Statement": statements}


def remove_actions(policy: dict, actions: list[str]) -> dict | None:
    """The policy without `actions` (IAM actions compare case-insensitively).

    A statement left without actions is dropped; None if none is left.
    """
    drop = {a.lower() for a in actions}
    statements = []
    for st in policy["Statement"]:
        listed = st.get("Action")
        if listed is None:  # NotAction: nothing to remove
            statements.append(st)
            continue
        kept = [a for a in ([listed] if isinstance(listed, str) else listed)
                if a.lower() not in drop]
        if not kept:
            continue
        statements.append({**st, "Action": listed if isinstance(listed, str) else kept})
    return {**policy, "Statement": statements} if statements else None


def _parse_auth(obj: Any, accounts: list[AccountSpec]) -> AuthSpec:
    w = "auth"
    _fields(obj, w, {"policy_file"}, {"remove_actions"})
    policy_file = _str(obj, "policy_file", w)
    path = Path(policy_file) if os.path.isabs(policy_file) else REPO_ROOT / policy_file
    policy = _load_policy(path, f"{w}.policy_file")
    hub = _load_policy(HUB_POLICY, "hub policy")
    # The hub may assume exactly the roles the scenario's accounts use.
    if accounts:
        roles = sorted({f"arn:aws:iam::*:role/{a.role_name}" for a in accounts})
        for st in hub["Statement"]:
            if "sts:assumerole" in {a.lower() for a in _policy_actions({"Statement": [st]})}:
                st["Resource"] = roles[0] if len(roles) == 1 else roles
    known = {a.lower() for a in _policy_actions(policy) + _policy_actions(hub)}
    removed = []
    for i, action in enumerate(_list(obj, "remove_actions", w)):
        if not isinstance(action, str) or action.lower() not in known:
            raise ScenarioError(f"{w}.remove_actions[{i}]: {action!r} is in neither "
                                f"{policy_file} nor {HUB_POLICY.relative_to(REPO_ROOT)}")
        removed.append(action)
    return AuthSpec(policy_file, remove_actions(policy, removed), remove_actions(hub, removed),
                    removed)


def _parse_tags(u: dict, w: str, entity: str = "user") -> dict[str, str]:
    tags = u.get("tags", {})
    if not isinstance(tags, dict):
        raise ScenarioError(f"{w}.tags: expected an object of tag key -> value strings")
    if len(tags) > MAX_TAGS_PER_USER:
        raise ScenarioError(f"{w}.tags: IAM allows at most {MAX_TAGS_PER_USER} tags per {entity}")
    for key, value in tags.items():
        if not 1 <= len(key) <= 128 or key.lower().startswith("aws:"):
            raise ScenarioError(f"{w}.tags: key {key!r} must have 1-128 characters "
                                "and not start with 'aws:'")
        if not isinstance(value, str) or len(value) > 256:
            raise ScenarioError(f"{w}.tags.{key}: expected a string of at most 256 characters")
    return dict(tags)


def _parse_users(doc: dict, where: str, prefix: str) -> list[UserSpec]:
    """The users of one account; `prefix` starts their paths, e.g. 'accounts[1].'."""
    users: list[UserSpec] = []
    seen: set[str] = set()
    for i, u in enumerate(_list(doc, "users", where)):
        w = f"{prefix}users[{i}]"
        _fields(u, w, {"name", "created_days_ago"},
                {"path", "keys", "services", "console_password", "password_last_used_days_ago",
                 "mfa", "tags"})
        name = _str(u, "name", w)
        if name in seen:
            raise ScenarioError(f"{w}.name: duplicate user {name!r}")
        seen.add(name)
        path = _str(u, "path", w, "/")
        if not (path.startswith("/") and path.endswith("/")):
            raise ScenarioError(f"{w}.path: must start and end with '/', got {path!r}")
        user_age = _days(u, "created_days_ago", w)

        keys = []
        for j, k in enumerate(_list(u, "keys", w)):
            kw = f"{w}.keys[{j}]"
            _fields(k, kw, {"created_days_ago"},
                    {"status", "last_used_days_ago", "last_used_service", "last_used_region"})
            used = _days(k, "last_used_days_ago", kw)
            if used is None and ("last_used_service" in k or "last_used_region" in k):
                raise ScenarioError(f"{kw}: last_used_service/region need last_used_days_ago")
            key = KeySpec(
                created_days_ago=_days(k, "created_days_ago", kw),
                status=_str(k, "status", kw, "Active", KEY_STATUSES),
                last_used_days_ago=used,
                last_used_service=_str(k, "last_used_service", kw, "s3" if used is not None else None),
                last_used_region=_str(k, "last_used_region", kw, DEFAULT_REGION if used is not None else None),
            )
            _not_before(key.created_days_ago, user_age, f"{kw}.created_days_ago")
            _not_before(key.last_used_days_ago, key.created_days_ago, f"{kw}.last_used_days_ago")
            keys.append(key)
        if len(keys) > MAX_KEYS_PER_USER:
            raise ScenarioError(f"{w}.keys: IAM allows at most {MAX_KEYS_PER_USER} keys per user")

        user = UserSpec(name=name, path=path, created_days_ago=user_age, keys=keys,
                        console_password=_bool(u, "console_password", w),
                        password_last_used_days_ago=_days(u, "password_last_used_days_ago", w),
                        mfa=_bool(u, "mfa", w), tags=_parse_tags(u, w))
        if user.password_last_used_days_ago is not None and not user.console_password:
            raise ScenarioError(f"{w}.password_last_used_days_ago: needs console_password true")
        _not_before(user.password_last_used_days_ago, user_age, f"{w}.password_last_used_days_ago")
        if "services" in u:
            _parse_services(u["services"], f"{w}.services", user)
        users.append(user)
    return users


def _parse_services(s: Any, sw: str, spec: UserSpec | RoleSpec) -> None:
    """A principal's `services` (its service-last-accessed job) into `spec`."""
    _fields(s, sw, set(), {"job", "in_progress_polls", "entries", "error_code", "error_message"})
    spec.job = _str(s, "job", sw, "completed", JOB_OUTCOMES)
    polls = s.get("in_progress_polls", 1)
    if isinstance(polls, bool) or not isinstance(polls, int) or polls < 0:
        raise ScenarioError(f"{sw}.in_progress_polls: expected a non-negative integer")
    spec.in_progress_polls = polls
    if spec.job != "failed" and ("error_code" in s or "error_message" in s):
        raise ScenarioError(f"{sw}: error_code/error_message only apply to job 'failed'")
    spec.error_code = _str(s, "error_code", sw, "InternalFailure")
    spec.error_message = _str(s, "error_message", sw,
                              "The service last accessed report could not be generated.")
    namespaces: set[str] = set()
    for n, e in enumerate(_list(s, "entries", sw)):
        ew = f"{sw}.entries[{n}]"
        _fields(e, ew, {"namespace", "name"}, {"last_authenticated_days_ago", "region", "actions"})
        ago = _days(e, "last_authenticated_days_ago", ew)
        if ago is None and "region" in e:
            raise ScenarioError(f"{ew}.region: needs last_authenticated_days_ago")
        service = ServiceSpec(
            namespace=_str(e, "namespace", ew),
            name=_str(e, "name", ew),
            last_authenticated_days_ago=ago,
            region=_str(e, "region", ew, DEFAULT_REGION if ago is not None else None),
        )
        if service.namespace in namespaces:
            raise ScenarioError(f"{ew}.namespace: {service.namespace!r} is listed twice")
        namespaces.add(service.namespace)
        if "actions" in e:
            service.actions = _parse_actions(e, ew, service)
        spec.services.append(service)


def _parse_actions(e: dict, ew: str, service: ServiceSpec) -> list[ActionSpec]:
    """The tracked actions of a service entry: those its policies grant, used or not."""
    if service.namespace not in ACTION_TRACKED_SERVICES:
        raise ScenarioError(f"{ew}.actions: IAM does not report actions of {service.namespace!r} "
                            f"here; tracked: {sorted(ACTION_TRACKED_SERVICES)}")
    actions: list[ActionSpec] = []
    for m, a in enumerate(_list(e, "actions", ew)):
        aw = f"{ew}.actions[{m}]"
        _fields(a, aw, {"name"}, {"last_accessed_days_ago", "region"})
        name = _str(a, "name", aw)
        if not re.fullmatch(r"[A-Za-z0-9]+", name):
            raise ScenarioError(f"{aw}.name: an action name without the service prefix, "
                                f"e.g. 'CreateBucket', got {name!r}")
        if name == "PassRole" and service.namespace == "iam":
            raise ScenarioError(f"{aw}.name: IAM does not track iam:PassRole")
        if any(x.name == name for x in actions):
            raise ScenarioError(f"{aw}.name: {name!r} is listed twice")
        ago = _days(a, "last_accessed_days_ago", aw)
        if ago is None and "region" in a:
            raise ScenarioError(f"{aw}.region: needs last_accessed_days_ago")
        if ago is not None:
            # The service was last accessed at the latest of all its actions' accesses.
            if service.last_authenticated_days_ago is None:
                raise ScenarioError(f"{aw}.last_accessed_days_ago: the service entry needs a "
                                    "last_authenticated_days_ago too")
            if service.last_authenticated_days_ago > ago:
                raise ScenarioError(f"{aw}.last_accessed_days_ago ({ago}) is more recent than "
                                    "the service's last_authenticated_days_ago "
                                    f"({service.last_authenticated_days_ago})")
        actions.append(ActionSpec(name, ago, _str(a, "region", aw,
                                                  DEFAULT_REGION if ago is not None else None)))
    return actions


def _parse_roles(doc: dict, where: str, prefix: str, reserved: set[str]) -> list[RoleSpec]:
    """The roles of one account; `reserved` are role names the peer creates itself there."""
    roles: list[RoleSpec] = []
    seen: set[str] = set()
    for i, r in enumerate(_list(doc, "roles", where)):
        w = f"{prefix}roles[{i}]"
        _fields(r, w, {"name", "created_days_ago"},
                {"path", "last_used_days_ago", "last_used_region", "tags", "trusted_service",
                 "inline_policies", "services"})
        name = _str(r, "name", w)
        if not ROLE_NAME_RE.fullmatch(name):
            raise ScenarioError(f"{w}.name: not a valid IAM role name: {name!r}")
        if name.lower() in seen:  # role names are unique case-insensitively
            raise ScenarioError(f"{w}.name: duplicate role {name!r}")
        if name.lower() in {r.lower() for r in reserved}:
            raise ScenarioError(f"{w}.name: {name!r} is a role the peer creates in this account")
        seen.add(name.lower())
        path = _str(r, "path", w, "/")
        if not (path.startswith("/") and path.endswith("/")):
            raise ScenarioError(f"{w}.path: must start and end with '/', got {path!r}")
        if path.startswith("/aws-service-role/") and not SERVICE_ROLE_PATH_RE.fullmatch(path):
            raise ScenarioError(f"{w}.path: a service-linked role's path is "
                                f"/aws-service-role/<service>.amazonaws.com/, got {path!r}")
        created = _days(r, "created_days_ago", w)
        used = _days(r, "last_used_days_ago", w)  # null: never used
        if used is None and "last_used_region" in r:
            raise ScenarioError(f"{w}.last_used_region: needs last_used_days_ago")
        if used is not None and used > ROLE_LAST_USED_WINDOW_DAYS:
            raise ScenarioError(f"{w}.last_used_days_ago: IAM reports a role's last use for the "
                                f"trailing {ROLE_LAST_USED_WINDOW_DAYS} days only; use null")
        _not_before(used, created, f"{w}.last_used_days_ago")
        role = RoleSpec(name=name, path=path, created_days_ago=created, last_used_days_ago=used,
                        last_used_region=_str(r, "last_used_region", w,
                                              DEFAULT_REGION if used is not None else None),
                        tags=_parse_tags(r, w, "role"),
                        trusted_service=_str(r, "trusted_service", w))
        if role.trusted_service is not None:
            if not SERVICE_PRINCIPAL_RE.fullmatch(role.trusted_service):
                raise ScenarioError(f"{w}.trusted_service: a service principal such as "
                                    f"'ec2.amazonaws.com', got {role.trusted_service!r}")
            if role.linked_service not in (None, role.trusted_service):
                raise ScenarioError(f"{w}.trusted_service: a service-linked role trusts "
                                    f"{role.linked_service}, the service in its path")
        policies = r.get("inline_policies", {})
        if not isinstance(policies, dict):
            raise ScenarioError(f"{w}.inline_policies: expected an object of policy name -> "
                                "policy document")
        for pname, document in policies.items():
            statements = document.get("Statement") if isinstance(document, dict) else None
            if not (re.fullmatch(r"[\w+=,.@-]{1,128}", pname) and statements):
                raise ScenarioError(f"{w}.inline_policies.{pname}: expected a policy document "
                                    "with a Statement, under a valid policy name")
        role.inline_policies = dict(policies)
        if "services" in r:
            _parse_services(r["services"], f"{w}.services", role)
        for n, service in enumerate(role.services):
            sw = f"{w}.services.entries[{n}].last_authenticated_days_ago"
            _not_before(service.last_authenticated_days_ago, created, sw)
            # A role is used whenever it accesses a service: its last use is not older.
            if service.last_authenticated_days_ago is not None and (
                    used is None or used > service.last_authenticated_days_ago):
                raise ScenarioError(f"{sw}: a service accessed "
                                    f"{service.last_authenticated_days_ago} days ago needs the "
                                    "role's last_used_days_ago at least as recent")
        roles.append(role)
    return roles


def bench_users(n: int, in_progress_polls: int = 0, first: int = 0) -> list[UserSpec]:
    """N users bench-user-<first>.. with 2 keys each, varied but deterministic.

    Keys are created 1..900 days ago; every third key (by global key index)
    was never used, the others were used since their creation with a service
    and region from small lists; every tenth key is Inactive. Each user's
    service-last-accessed job answers IN_PROGRESS to its first
    `in_progress_polls` polls, then completes and lists the services its keys
    used plus one never-accessed service.
    """
    users = []
    for i in range(first, first + n):
        rng = random.Random(i)  # a user looks the same whatever N is
        keys, accessed = [], {}
        for slot in range(MAX_KEYS_PER_USER):
            j = MAX_KEYS_PER_USER * i + slot
            created = float(rng.randint(1, 900))
            used = None if j % 3 == 0 else round(rng.uniform(0.01, created), 2)
            (namespace, name), region = rng.choice(BENCH_SERVICES), rng.choice(BENCH_REGIONS)
            status = "Inactive" if j % 10 == 9 else "Active"
            if used is None:
                keys.append(KeySpec(created, status, None, None, None))
                continue
            keys.append(KeySpec(created, status, used, namespace, region))
            if namespace not in accessed or used < accessed[namespace][1]:
                accessed[namespace] = (name, used, region)
        services = [ServiceSpec(ns, name, used, region)
                    for ns, (name, used, region) in sorted(accessed.items())]
        services.append(ServiceSpec("iam", "AWS Identity and Access Management", None, None))
        users.append(UserSpec(
            name=f"bench-user-{i:05d}", path="/bench/",
            created_days_ago=max(k.created_days_ago for k in keys) + rng.randint(0, 60),
            keys=keys, in_progress_polls=in_progress_polls, services=services))
    return users


def bench_roles(n: int, in_progress_polls: int = 0) -> list[RoleSpec]:
    """N roles bench-role-00000.., varied but deterministic (role i from random.Random(i)
    offset by 10**9, so it does not depend on N).

    Every 25th role (i % 25 == 0) is service-linked, under
    /aws-service-role/<service>.amazonaws.com/, never used and without service entries.
    The others live under /bench/: created 1..900 days ago, every third (i % 3 == 0)
    never used, the others last used at a random time within the 400 days IAM reports
    (and since their creation) in a region from BENCH_REGIONS; every second one tagged
    team=<BENCH_TEAMS>. Their job completes after `in_progress_polls` IN_PROGRESS answers
    and lists two services from BENCH_SERVICES: the first accessed when the role was last
    used (if it was), the second never; s3, ec2 and lambda entries grant the tracked
    actions BENCH_TRACKED_ACTIONS, the first of them used with its service.
    """
    roles = []
    for i in range(n):
        rng = random.Random(10**9 + i)
        created = float(rng.randint(1, 900))
        name = f"bench-role-{i:05d}"
        if i % 25 == 0:
            service = BENCH_LINKED_SERVICES[(i // 25) % len(BENCH_LINKED_SERVICES)]
            roles.append(RoleSpec(name, f"/aws-service-role/{service}.amazonaws.com/", created,
                                  in_progress_polls=in_progress_polls))
            continue
        used = (None if i % 3 == 0
                else round(rng.uniform(0.01, min(created, ROLE_LAST_USED_WINDOW_DAYS)), 2))
        region = rng.choice(BENCH_REGIONS)
        tags = {"team": rng.choice(BENCH_TEAMS)} if i % 2 == 0 else {}
        services = []
        for n_, (namespace, label) in enumerate(rng.sample(BENCH_SERVICES, 2)):
            accessed = used if n_ == 0 else None
            actions = [ActionSpec(a, accessed if k == 0 else None,
                                  region if accessed is not None and k == 0 else None)
                       for k, a in enumerate(BENCH_TRACKED_ACTIONS.get(namespace, ()))]
            services.append(ServiceSpec(namespace, label, accessed,
                                        region if accessed is not None else None, actions))
        roles.append(RoleSpec(name, "/bench/", created, used, region if used is not None else None,
                              tags, in_progress_polls=in_progress_polls, services=services))
    return roles


def bench_accounts(n: int, users: int, in_progress_polls: int = 0) -> list[AccountSpec]:
    """N member accounts 200000000001.. with `users` bench users each.

    Member k holds bench-user-<k*users>.. so names are unique across the
    organization and every account's users differ; each has the default role.
    """
    return [AccountSpec(str(BENCH_ACCOUNT_BASE + k),
                        bench_users(users, in_progress_polls, first=k * users))
            for k in range(1, n + 1)]


# --------------------------------------------------------------------------
# Seeding moto's IAM backend
# --------------------------------------------------------------------------


def _utc_seconds(dt: datetime) -> datetime:
    """Naive UTC datetime truncated to whole seconds.

    moto stores naive UTC datetimes (moto.core.utils.utcnow) and serializes
    them as ISO 8601 with microseconds when they are non-zero; real IAM sends
    whole seconds. Truncating keeps the wire format realistic and lets the
    epoch values we print compare exactly.
    """
    if dt.tzinfo is not None:  # naive input is already UTC, as in moto
        dt = dt.astimezone(timezone.utc).replace(tzinfo=None)
    return dt.replace(microsecond=0)


def _epoch(dt: datetime | None) -> float | None:
    return None if dt is None else dt.replace(tzinfo=timezone.utc).timestamp()


def seed(account_id: str, users: list[UserSpec], now: datetime) -> tuple[list[dict], dict]:
    """Create users/keys in moto and backdate them.

    Returns (description of what was seeded for the JSON line,
             service-last-accessed data keyed by user ARN).
    """
    from moto.iam.models import AccessKeyLastUsed, iam_backends

    # "global" is moto's legacy alias for the "aws" partition backend, which
    # is what IamResponse uses for requests in us-east-1.
    backend = iam_backends[account_id]["aws"]
    ago = lambda days: _utc_seconds(now - timedelta(days=days))  # noqa: E731

    described, services_by_arn = [], {}
    for spec in users:
        user = backend.create_user(DEFAULT_REGION, spec.name, path=spec.path)
        user.create_date = ago(spec.created_days_ago)
        if spec.console_password:
            # A random password nobody needs: the peer never signs anyone in.
            backend.create_login_profile(spec.name, uuid.uuid4().hex)
        if spec.password_last_used_days_ago is not None:
            user.password_last_used = ago(spec.password_last_used_days_ago)
        if spec.mfa:
            device = backend.create_virtual_mfa_device(spec.name, "/")
            backend.enable_mfa_device(spec.name, device.serial_number, "123456", "654321")
            device.enable_date = user.mfa_devices[device.serial_number].enable_date = ago(0)
        if spec.tags:
            backend.tag_user(spec.name, [{"Key": k, "Value": v} for k, v in spec.tags.items()])
        keys = []
        for k in spec.keys:
            key = backend.create_access_key(spec.name, status=k.status)
            key.create_date = ago(k.created_days_ago)
            if k.last_used_days_ago is not None:
                key.last_used = AccessKeyLastUsed(
                    timestamp=ago(k.last_used_days_ago),
                    service=k.last_used_service,
                    region=k.last_used_region,
                )
            keys.append({
                "access_key_id": key.access_key_id,
                "status": key.status,
                "create_date": _epoch(key.create_date),
                "last_used_date": _epoch(key.last_used.timestamp) if key.last_used else None,
                # What GetAccessKeyLastUsed answers for a never-used key.
                "last_used_service": k.last_used_service or "N/A",
                "last_used_region": k.last_used_region or "N/A",
            })

        entries = _service_entries(spec, ago)
        services_by_arn[user.arn] = {"spec": spec, "entries": entries}
        described.append({
            "name": user.name,
            "arn": user.arn,
            "path": user.path,
            "create_date": _epoch(user.create_date),
            "password_enabled": user.password is not None,
            "password_last_used": _epoch(user.password_last_used),
            "mfa_active": bool(user.mfa_devices),
            "tags": dict(spec.tags),
            "keys": keys,
            **_describe_services(spec, entries),
        })
    return described, services_by_arn


def _service_entries(spec: UserSpec | RoleSpec, ago) -> list[dict]:
    """What GetServiceLastAccessedDetails serves for a principal, with naive UTC dates."""
    return [{
        "namespace": s.namespace,
        "name": s.name,
        "last_authenticated": (None if s.last_authenticated_days_ago is None
                               else ago(s.last_authenticated_days_ago)),
        "region": s.region,
        "actions": [{"name": a.name,
                     "last_accessed": (None if a.last_accessed_days_ago is None
                                       else ago(a.last_accessed_days_ago)),
                     "region": a.region} for a in s.actions],
    } for s in spec.services]


def _describe_services(spec: UserSpec | RoleSpec, entries: list[dict]) -> dict:
    """The JSON line's service-last-accessed members of a user or role (epoch dates)."""
    served = entries if spec.job == "completed" else []
    out = []
    for e in served:
        entry = {k: v for k, v in e.items() if k != "actions"}
        entry["last_authenticated"] = _epoch(e["last_authenticated"])
        if e["actions"]:  # only entries with tracked actions say so
            entry["actions"] = [{**a, "last_accessed": _epoch(a["last_accessed"])}
                                for a in e["actions"]]
            entry["actions_granted"] = len(e["actions"])
            entry["actions_accessed"] = sum(1 for a in e["actions"] if a["last_accessed"])
        out.append(entry)
    # Counts of what GetServiceLastAccessedDetails will serve (0 when the job
    # fails): "granted" = entries listed, "accessed" = those with a
    # LastAuthenticated date.
    return {
        "services_accessed": sum(1 for e in served if e["last_authenticated"]),
        "services_granted": len(served),
        "service_job": spec.job,
        "services": out,
    }


def role_trust_policy(account_id: str, spec: RoleSpec) -> str:
    """A seeded role's trust policy: its service, or else the account's root."""
    service = spec.linked_service or spec.trusted_service
    principal = {"Service": service} if service else {"AWS": f"arn:aws:iam::{account_id}:root"}
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": principal, "Action": "sts:AssumeRole"}]})


def seed_roles(account_id: str, roles: list[RoleSpec], now: datetime) -> tuple[list[dict], dict]:
    """Create roles in moto and backdate them (CreateDate, RoleLastUsed).

    Returns (description of what was seeded for the JSON line,
             service-last-accessed data keyed by role ARN).
    """
    from moto.iam.models import iam_backends

    backend = iam_backends[account_id]["aws"]
    ago = lambda days: _utc_seconds(now - timedelta(days=days))  # noqa: E731

    described, services_by_arn = [], {}
    for spec in roles:
        role = backend.create_role(
            role_name=spec.name, assume_role_policy_document=role_trust_policy(account_id, spec),
            path=spec.path, permissions_boundary=None, description="",
            tags=[{"Key": k, "Value": v} for k, v in spec.tags.items()],
            max_session_duration="3600", linked_service=spec.linked_service)
        role.create_date = ago(spec.created_days_ago)
        if spec.last_used_days_ago is not None:
            role.last_used = ago(spec.last_used_days_ago)
            role.last_used_region = spec.last_used_region
        for name, document in spec.inline_policies.items():
            try:
                backend.put_role_policy(spec.name, name, json.dumps(document))
            except Exception as exc:  # moto's MalformedPolicyDocument and the like
                raise ScenarioError(f"role {spec.name!r}: inline policy {name!r}: {exc}") from None
        entries = _service_entries(spec, ago)
        services_by_arn[role.arn] = {"spec": spec, "entries": entries}
        described.append({
            "name": role.name,
            "arn": role.arn,
            "role_id": role.id,
            "path": role.path,
            "create_date": _epoch(role.create_date),
            # RoleLastUsed: both null when never used in IAM's 400-day window.
            "last_used_date": _epoch(role.last_used),
            "last_used_region": role.last_used_region,
            "service_linked": spec.linked_service is not None,
            "tags": dict(spec.tags),
            "inline_policies": sorted(spec.inline_policies),
            **_describe_services(spec, entries),
        })
    return described, services_by_arn


# --------------------------------------------------------------------------
# TEST-SIDE EXTENSION: service last accessed details
# --------------------------------------------------------------------------


@dataclass
class _Job:
    account: str  # a job is only visible to the account that generated it
    arn: str
    granularity: str
    created: datetime
    polls_left: int
    data: dict  # {"spec": UserSpec | RoleSpec, "entries": [...]}
    completed: datetime | None = None


def install_service_last_accessed(services_by_arn: dict) -> None:
    """Add Generate/GetServiceLastAccessedDetails to moto's IamResponse.

    IamResponse dispatches on the snake_cased Action name, and returning an
    ActionResult lets moto's own Query-protocol serializer render the
    response from botocore's IAM model (namespace, <member> lists, ISO 8601
    timestamps, ResponseMetadata/RequestId) exactly as for built-in actions.
    Raising moto's IAM exceptions gives the usual ErrorResponse XML with the
    status code from the model (NoSuchEntity 404, InvalidInput 400).
    """
    from moto.core.responses import ActionResult
    from moto.core.utils import utcnow
    from moto.iam.exceptions import InvalidInput, NoSuchEntity, ValidationError
    from moto.iam.responses import IamResponse

    jobs: dict[str, _Job] = {}
    lock = threading.Lock()  # the server handles requests on several threads

    def generate_service_last_accessed_details(self: IamResponse) -> ActionResult:
        arn = self._get_param("Arn")
        granularity = self._get_param("Granularity") or "SERVICE_LEVEL"
        if granularity not in GRANULARITIES:
            raise ValidationError(
                f"1 validation error detected: Value '{granularity}' at 'granularity' failed to "
                "satisfy constraint: Member must satisfy enum value set: "
                f"[{', '.join(GRANULARITIES)}]")
        # Also check the live backend so a user or role deleted at runtime is gone.
        if any(u.arn == arn for u in self.backend.users.values()):
            data = services_by_arn.get(arn)  # a user: only the scenario's
        elif any(r.arn == arn for r in self.backend.roles.values()):
            # Any role of the account: a scenario role answers its `services`,
            # another (created at run time, the member account's exporter role,
            # OrganizationAccountAccessRole) a completed job without entries.
            data = services_by_arn.get(arn) or {"spec": RoleSpec("", "/", 0), "entries": []}
        else:
            data = None
        if data is None:
            raise NoSuchEntity(f"The entity with ARN {arn} cannot be found.")
        job_id = str(uuid.uuid4())
        with lock:
            jobs[job_id] = _Job(self.current_account, arn, granularity, _utc_seconds(utcnow()),
                                data["spec"].in_progress_polls, data)
        return ActionResult({"JobId": job_id})

    def get_service_last_accessed_details(self: IamResponse) -> ActionResult:
        job_id = self._get_param("JobId")
        max_items = self._get_param("MaxItems") or 100
        marker = self._get_param("Marker")
        with lock:
            job = jobs.get(job_id)
            if job is None or job.account != self.current_account:
                raise InvalidInput(f"Job with ID {job_id} does not exist.")
            result: dict[str, Any] = {
                "JobType": job.granularity,
                "JobCreationDate": job.created,
                "ServicesLastAccessed": [],
                "IsTruncated": False,
            }
            if job.polls_left > 0:
                job.polls_left -= 1
                return ActionResult({"JobStatus": "IN_PROGRESS", **result})
            if job.completed is None:
                job.completed = _utc_seconds(utcnow())
        result["JobCompletionDate"] = job.completed

        data = job.data
        spec: UserSpec | RoleSpec = data["spec"]
        if spec.job == "failed":
            return ActionResult({"JobStatus": "FAILED", **result,
                                 "Error": {"Message": spec.error_message,
                                           "Code": spec.error_code}})

        start = _decode_marker(marker, InvalidInput)
        entries = data["entries"]
        page = entries[start:start + max_items]
        if start + max_items < len(entries):
            result["IsTruncated"] = True
            result["Marker"] = _encode_marker(start + max_items)
        action_level = job.granularity == "ACTION_LEVEL"
        result["ServicesLastAccessed"] = [_render_entry(e, job.arn, action_level) for e in page]
        return ActionResult({"JobStatus": "COMPLETED", **result})

    IamResponse.generate_service_last_accessed_details = generate_service_last_accessed_details
    IamResponse.get_service_last_accessed_details = get_service_last_accessed_details


def _render_entry(e: dict, arn: str, action_level: bool = False) -> dict:
    out = {"ServiceName": e["name"], "ServiceNamespace": e["namespace"]}
    if e["last_authenticated"] is None:
        out["TotalAuthenticatedEntities"] = 0
    else:
        out.update(LastAuthenticated=e["last_authenticated"], LastAuthenticatedEntity=arn,
                   LastAuthenticatedRegion=e["region"], TotalAuthenticatedEntities=1)
    # The API Reference: TrackedActionsLastAccessed "is null if there no tracked
    # actions or if the principal did not use the tracked actions within the
    # tracking period", and always for a SERVICE_LEVEL report. Otherwise it
    # lists every tracked action granted; one never used has only ActionName.
    if action_level and any(a["last_accessed"] for a in e["actions"]):
        tracked = []
        for a in e["actions"]:
            item = {"ActionName": a["name"]}
            if a["last_accessed"] is not None:
                item.update(LastAccessedEntity=arn, LastAccessedTime=a["last_accessed"],
                            LastAccessedRegion=a["region"])
            tracked.append(item)
        out["TrackedActionsLastAccessed"] = tracked
    return out


# Markers are opaque to clients in real IAM; keep them opaque here too.
def _encode_marker(offset: int) -> str:
    return base64.urlsafe_b64encode(f"sla:{offset}".encode()).decode()


def _decode_marker(marker: str | None, error: type[Exception]) -> int:
    if not marker:
        return 0
    try:
        prefix, offset = base64.urlsafe_b64decode(marker.encode()).decode().split(":")
        if prefix == "sla" and int(offset) >= 0:
            return int(offset)
    except ValueError:  # covers binascii.Error and UnicodeDecodeError
        pass
    raise error(f"Invalid Marker {marker!r}.")


# --------------------------------------------------------------------------
# TEST-SIDE EXTENSION: GetAccountAuthorizationDetails paging, RoleLastUsed
# --------------------------------------------------------------------------


def install_account_authorization_details() -> None:
    """Page GetAccountAuthorizationDetails by MaxItems and Marker, as IAM does.

    moto 5.2.5 answers every user, group, role and policy the Filter asks for
    in one response with IsTruncated false, whatever MaxItems says. Here moto's
    backend still chooses the entities (and its serializer renders them), but a
    page holds at most MaxItems (1..1000, default 100) of them, counted across
    the lists in response order (users, groups, roles, policies); IsTruncated
    and an opaque Marker continue it. A Marker continues only the Filter it
    came from. Also the roles' AssumeRolePolicyDocument is URL-encoded, as IAM
    sends every policy document of this operation (moto sends plain JSON).
    """
    from moto.core.responses import ActionResult
    from moto.core.serialize import url_encode
    from moto.iam.exceptions import InvalidInput, ValidationError
    from moto.iam.responses import IamResponse

    role = "GetAccountAuthorizationDetailsResponse.RoleDetailList.RoleDetail"
    for path in (f"{role}.AssumeRolePolicyDocument",  # and a role in an instance profile:
                 f"{role}.InstanceProfileList.InstanceProfile.Roles.Role.AssumeRolePolicyDocument"):
        IamResponse.RESPONSE_KEY_PATH_TO_TRANSFORMER[path] = url_encode

    def get_account_authorization_details(self: IamResponse) -> ActionResult:
        filters = self._get_param("Filter", []) or []
        for value in filters:
            if value not in GAAD_FILTERS:
                raise ValidationError(
                    f"1 validation error detected: Value '[{', '.join(filters)}]' at 'filter' "
                    "failed to satisfy constraint: Member must satisfy constraint: [Member "
                    f"must satisfy enum value set: [{', '.join(GAAD_FILTERS)}]]")
        max_items = self._get_param("MaxItems")
        if max_items is None:
            max_items = GAAD_PAGE_SIZE
        elif not 1 <= int(max_items) <= GAAD_MAX_ITEMS:
            bound = ("greater than or equal to 1" if int(max_items) < 1
                     else f"less than or equal to {GAAD_MAX_ITEMS}")
            raise ValidationError(
                f"1 validation error detected: Value '{max_items}' at 'maxItems' failed to "
                f"satisfy constraint: Member must have value {bound}")
        max_items = int(max_items)
        query = ",".join(sorted(set(filters)))  # a Marker continues only its own Filter
        start = _decode_gaad_marker(self._get_param("Marker"), query, InvalidInput)

        details = self.backend.get_account_authorization_details(filters)
        sections = (("UserDetailList", details["users"]), ("GroupDetailList", details["groups"]),
                    ("RoleDetailList", details["roles"]),
                    ("Policies", details["managed_policies"]))
        items = [(key, item) for key, values in sections for item in values]
        result: dict[str, Any] = {key: [] for key, _ in sections}
        for key, item in items[start:start + max_items]:
            result[key].append(item)
        result["IsTruncated"] = start + max_items < len(items)
        if result["IsTruncated"]:
            result["Marker"] = _encode_gaad_marker(start + max_items, query)
        return ActionResult(result)

    IamResponse.get_account_authorization_details = get_account_authorization_details


def _encode_gaad_marker(offset: int, query: str) -> str:
    digest = hashlib.sha256(query.encode()).hexdigest()[:16]
    return base64.urlsafe_b64encode(f"gaad:{offset}:{digest}".encode()).decode()


def _decode_gaad_marker(marker: str | None, query: str, error: type[Exception]) -> int:
    if not marker:
        return 0
    try:
        prefix, offset, digest = base64.urlsafe_b64decode(marker.encode()).decode().split(":")
        if (prefix == "gaad" and int(offset) >= 0
                and digest == hashlib.sha256(query.encode()).hexdigest()[:16]):
            return int(offset)
    except ValueError:  # covers binascii.Error and UnicodeDecodeError
        pass
    raise error(f"Invalid Marker {marker!r}.")


def install_role_last_used() -> None:
    """A role's RoleLastUsed, when moto marks it used, as IAM reports it.

    moto sets a role's last use to now (with microseconds) whenever a request
    is signed with credentials of that role, and leaves its Region empty. Here
    the date is whole seconds and the Region is the request's, so GetRole and
    GetAccountAuthorizationDetails answer both, as IAM does.
    """
    from moto.iam import models

    original = models.mark_account_as_visited

    def mark_account_as_visited(account_id: str, access_key: str, service: str,
                                region: str) -> None:
        original(account_id=account_id, access_key=access_key, service=service, region=region)
        backend = models.iam_backends[account_id]["aws"]
        key = backend.access_keys.get(access_key)
        if key is None or not key.role_arn:
            return
        try:
            role = backend.get_role_by_arn(key.role_arn)
        except models.NotFoundException:
            return
        if role.last_used is not None:
            role.last_used = _utc_seconds(role.last_used)
            role.last_used_region = region

    models.mark_account_as_visited = mark_account_as_visited


# --------------------------------------------------------------------------
# TEST-SIDE EXTENSION: credential report generation time
# --------------------------------------------------------------------------

# When the current report was generated, a naive UTC datetime kept on moto's
# backend object (so a moto reset forgets it along with moto's own flag).
_REPORT_TIME = "iam_peer_report_generated"


def preset_credential_report(backend, generated: datetime) -> None:
    """Start with a report generated at `generated` (scenario option)."""
    backend.generate_report()
    setattr(backend, _REPORT_TIME, _utc_seconds(generated))


def fill_last_used_columns(backend, content: str) -> str:
    """Put each used key's last-used region and service into the report.

    moto writes `not_supported` into access_key_N_last_used_region/_service even for
    a used key; real IAM writes the region and service, as GetAccessKeyLastUsed does.
    Keys are matched to slots the way moto numbers them: in the user's key order.
    """
    import csv
    import io

    rows = list(csv.reader(io.StringIO(content)))
    header = rows[0]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows[1:]:
        user = backend.users.get(row[header.index("user")])
        for slot, key in enumerate(user.access_keys[:2] if user else [], start=1):
            if key.last_used is not None:
                row[header.index(f"access_key_{slot}_last_used_region")] = key.last_used.region
                row[header.index(f"access_key_{slot}_last_used_service")] = key.last_used.service
        writer.writerow(row)
    return out.getvalue()


def install_credential_report() -> None:
    """Replace moto's Generate/GetCredentialReport with a realistic clock.

    Generate starts a report (State STARTED, time recorded) when there is
    none or the recorded one is at least 4 hours old, and otherwise answers
    COMPLETE without touching it. Get answers the recorded time as
    GeneratedTime; the CSV is still built by moto at Get time.
    """
    from moto.core.responses import ActionResult
    from moto.core.utils import utcnow
    from moto.iam.responses import IamResponse

    lock = threading.Lock()

    def generate_credential_report(self: IamResponse) -> ActionResult:
        now = _utc_seconds(utcnow())
        with lock:
            generated = getattr(self.backend, _REPORT_TIME, None)
            if generated is not None and now - generated < REPORT_MAX_AGE:
                return ActionResult({"State": "COMPLETE"})
            preset_credential_report(self.backend, now)
        if generated is None:  # moto's wording for a first report
            return ActionResult({"State": "STARTED", "Description":
                                 "No report exists. Starting a new report generation task"})
        return ActionResult({"State": "STARTED"})

    def get_credential_report(self: IamResponse) -> ActionResult:
        with lock:
            generated = getattr(self.backend, _REPORT_TIME, None)
        content = self.backend.get_credential_report()  # ReportNotPresent without a report
        return ActionResult({"Content": fill_last_used_columns(self.backend, content),
                             "ReportFormat": "text/csv", "GeneratedTime": generated})

    IamResponse.generate_credential_report = generate_credential_report
    IamResponse.get_credential_report = get_credential_report


# --------------------------------------------------------------------------
# TEST-SIDE EXTENSION: CloudTrail event history of IAM calls (LookupEvents)
# --------------------------------------------------------------------------

IAM_EVENT_SOURCE = "iam.amazonaws.com"
TRAIL_REGION = "us-east-1"  # IAM is global: its events are in us-east-1's history only
LOOKUP_PAGE_SIZE = 50  # LookupEvents: MaxResults is 1..50, default 50
LOOKUP_KEYS = ("EventId", "EventName", "ReadOnly", "Username", "ResourceType", "ResourceName",
               "EventSource", "AccessKeyId")
READ_ONLY_PREFIXES = ("Get", "List", "Generate", "Simulate")
# A request that fails authentication belongs to no account's history.
UNAUTHENTICATED = ("InvalidClientTokenId", "SignatureDoesNotMatch")
# CloudTrail leaves secrets out of requestParameters.
SECRET_PARAMETERS = frozenset({"Password", "NewPassword", "OldPassword", "PrivateKey"})
CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/[^/]+/([^/]+)/")
MEMBER_RE = re.compile(r"(\w+)\.member\.(\d+)(?:\.(\w+))?")


def _credential_scope(headers) -> tuple[str | None, str | None]:
    """(access key id, region) from a SigV4 Authorization header."""
    match = CREDENTIAL_RE.search(headers.get("Authorization", ""))
    return (match.group(1), match.group(2)) if match else (None, None)


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def request_parameters(params: dict[str, str]) -> dict | None:
    """Query parameters the way CloudTrail writes them, or None without any.

    Names become camelCase (UserName -> userName); `X.member.N` becomes a
    list `x`, and `X.member.N.Field` a list of objects with camelCase
    fields (Tags.member.1.Key/Value -> tags: [{key, value}]).
    """
    out: dict[str, Any] = {}
    lists: dict[str, dict[int, Any]] = {}
    for name, value in params.items():
        if name in ("Action", "Version") or name in SECRET_PARAMETERS:
            continue
        member = MEMBER_RE.fullmatch(name)
        if member is None:
            out[_camel(name)] = value
            continue
        items = lists.setdefault(_camel(member.group(1)), {})
        n, field_name = int(member.group(2)), member.group(3)
        if field_name is None:
            items[n] = value
        else:
            items.setdefault(n, {})[_camel(field_name)] = value
    for name, items in lists.items():
        out[name] = [items[n] for n in sorted(items)]
    return out or None


def _trail_date(iso: str) -> str:
    """IAM's ISO 8601 date as CloudTrail writes dates in responseElements."""
    dt = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return f"{dt:%b} {dt.day}, {dt.year}, {(dt.hour + 11) % 12 + 1}:{dt:%M:%S %p}"


def response_elements(action: str, body: str) -> dict | None:
    """The response as CloudTrail records it: only CreateUser, CreateAccessKey and
    CreateRole here (never the secret key); None for every other action."""
    if action not in ("CreateUser", "CreateAccessKey", "CreateRole"):
        return None
    from xml.etree import ElementTree

    root = ElementTree.fromstring(body)
    if action == "CreateRole":
        # The role's own fields, not those nested in Tags or RoleLastUsed.
        role = next(el for el in root.iter() if el.tag.rpartition("}")[2] == "Role")
        f = {el.tag.rpartition("}")[2]: el.text for el in role}
        return {"role": {"path": f["Path"], "roleName": f["RoleName"], "roleId": f["RoleId"],
                         "arn": f["Arn"], "createDate": _trail_date(f["CreateDate"]),
                         # URL-encoded, as IAM returns it and CloudTrail records it
                         "assumeRolePolicyDocument": f["AssumeRolePolicyDocument"]}}
    # Both results are flat: one element per field, whatever the namespace.
    f = {el.tag.rpartition("}")[2]: el.text for el in root.iter()}
    if action == "CreateUser":
        return {"user": {"path": f["Path"], "userName": f["UserName"], "userId": f["UserId"],
                         "arn": f["Arn"], "createDate": _trail_date(f["CreateDate"])}}
    return {"accessKey": {"userName": f["UserName"], "accessKeyId": f["AccessKeyId"],
                          "status": f["Status"], "createDate": _trail_date(f["CreateDate"])}}


def _query_error(body: str) -> tuple[str, str]:
    """(code, message) of an IAM error response."""
    import html

    code = re.search(r"<Code>(.*?)</Code>", body)
    message = re.search(r"<Message>(.*?)</Message>", body, re.S)
    return (html.unescape(code.group(1)) if code else "InternalFailure",
            html.unescape(message.group(1)) if message else "")


def _user_identity(account: str, key: str) -> tuple[dict, str]:
    """(CloudTrail userIdentity, LookupEvents Username) of the caller's key.

    A key moto does not know (e.g. `testing`) stands for the account's root.
    """
    from moto.iam.models import iam_backends
    from moto.sts.models import sts_backends

    role = sts_backends[account]["aws"].get_assumed_role_from_access_key(key)
    if role is not None:
        return {"type": "AssumedRole", "principalId": role.user_id, "arn": role.arn,
                "accountId": role.account_id, "accessKeyId": key}, role.session_name
    user = iam_backends[account]["aws"].get_user_from_access_key_id(key)
    if user is not None:
        return {"type": "IAMUser", "principalId": user.id, "arn": user.arn, "accountId": account,
                "accessKeyId": key, "userName": user.name}, user.name
    return {"type": "Root", "principalId": account, "arn": f"arn:aws:iam::{account}:root",
            "accountId": account, "accessKeyId": key}, "root"


def iam_event(resp, when: int, body: str, error: tuple[str, str] | None) -> dict:
    """The LookupEvents Event of an IAM call, CloudTrailEvent included."""
    action = resp._get_action()
    key = _credential_scope(resp.headers)[0] or resp.get_access_key()
    identity, username = _user_identity(resp.current_account, key)
    params = {name: values[0] for name, values in resp.querystring.items()}
    response = None if error else response_elements(action, body)
    read_only = action.startswith(READ_ONLY_PREFIXES)
    event_id = str(uuid.uuid4())
    record = {
        "eventVersion": "1.08",
        "userIdentity": identity,
        "eventTime": datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "eventSource": IAM_EVENT_SOURCE,
        "eventName": action,
        "awsRegion": TRAIL_REGION,
        "sourceIPAddress": "127.0.0.1",
        "userAgent": resp.headers.get("User-Agent", ""),
    }
    if error:
        record.update(errorCode=error[0], errorMessage=error[1])
    record.update({
        "requestParameters": request_parameters(params),
        "responseElements": response,
        "requestID": str(uuid.uuid4()),
        "eventID": event_id,
        "readOnly": read_only,
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": resp.current_account,
        "eventCategory": "Management",
    })
    resources = []
    created = next(iter(response.values())) if response else {}  # the new user or key
    user_name = params.get("UserName") or created.get("userName")
    if user_name:
        resources.append({"ResourceType": "AWS::IAM::User", "ResourceName": user_name})
    key_id = params.get("AccessKeyId") or created.get("accessKeyId")
    if key_id:
        resources.append({"ResourceType": "AWS::IAM::AccessKey", "ResourceName": key_id})
    role_name = params.get("RoleName") or created.get("roleName")
    if role_name:
        resources.append({"ResourceType": "AWS::IAM::Role", "ResourceName": role_name})
    if params.get("PolicyArn"):
        resources.append({"ResourceType": "AWS::IAM::Policy", "ResourceName": params["PolicyArn"]})
    return {"EventId": event_id, "EventName": action, "ReadOnly": str(read_only).lower(),
            "AccessKeyId": key, "EventTime": when, "EventSource": IAM_EVENT_SOURCE,
            "Username": username, "Resources": resources,
            "CloudTrailEvent": json.dumps(record)}


def _event_matches(event: dict, key: str, value: str) -> bool:
    if key == "ResourceType":
        return any(r["ResourceType"] == value for r in event["Resources"])
    if key == "ResourceName":
        return any(r["ResourceName"] == value for r in event["Resources"])
    return event[key] == value


def install_event_history(delay: float) -> None:
    """Record every IAM call in its account's event history; add LookupEvents.

    The record is made around IamResponse.call_action, where moto
    authorizes and dispatches an action, so it sees every IAM request and
    its outcome (an error response gives errorCode/errorMessage). Each
    account keeps its own history: the request's account after routing.
    LookupEvents answers the caller's account, newest first, and shows an
    event only `delay` seconds after its EventTime, as CloudTrail delivers
    events to the history minutes late.
    """
    from moto.cloudtrail.responses import CloudTrailResponse
    from moto.iam.responses import IamResponse

    history: dict[str, list[tuple[int, int, dict]]] = {}  # account -> (time, seq, event)
    lock = threading.Lock()
    seq = itertools.count()  # the call order breaks ties within a second
    call_action = IamResponse.call_action

    def recorded_call_action(self: IamResponse):
        when = int(time.time())
        status, headers, body = call_action(self)
        text = body.decode() if isinstance(body, bytes) else body or ""
        error = _query_error(text) if int(status) >= 400 else None
        if error is None or error[0] not in UNAUTHENTICATED:
            event = iam_event(self, when, text, error)
            with lock:
                history.setdefault(self.current_account, []).append((when, next(seq), event))
        return status, headers, body

    def lookup_events(self: CloudTrailResponse) -> str:
        request = json.loads(self.body or "{}")
        attributes = request.get("LookupAttributes") or []
        if len(attributes) > 1:
            raise _lookup_error("InvalidLookupAttributesException",
                                "You cannot perform a lookup on more than one attribute.")
        for a in attributes:
            if a.get("AttributeKey") not in LOOKUP_KEYS:
                raise _lookup_error("InvalidLookupAttributesException",
                                    f"Invalid attribute key: {a.get('AttributeKey')!r}.")
        start, end = request.get("StartTime"), request.get("EndTime")
        if start is not None and end is not None and start > end:
            raise _lookup_error("InvalidTimeRangeException", "StartTime must be before EndTime.")
        size = request.get("MaxResults", LOOKUP_PAGE_SIZE)
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 50:
            raise _lookup_error("InvalidMaxResultsException",
                                f"Value {size} for MaxResults is invalid; it must be 1-50.")
        category = request.get("EventCategory")
        if category not in (None, "insight"):
            raise _lookup_error("InvalidEventCategoryException",
                                f"Invalid EventCategory {category!r}.")
        # A token only continues the query it came from.
        query = json.dumps([attributes, start, end, category], sort_keys=True)
        after = _decode_lookup_token(request.get("NextToken"), query)

        region = _credential_scope(self.headers)[1] or self.region
        visible_until = time.time() - delay
        with lock:
            events = list(history.get(self.current_account, [])) if region == TRAIL_REGION else []
        events = [(t, n, e) for t, n, e in events
                  if category is None and t <= visible_until
                  and (start is None or t >= start) and (end is None or t <= end)
                  and all(_event_matches(e, a["AttributeKey"], a.get("AttributeValue"))
                          for a in attributes)
                  and (after is None or (t, n) < after)]
        events.sort(key=lambda x: x[:2], reverse=True)
        response: dict[str, Any] = {"Events": [e for _, _, e in events[:size]]}
        if len(events) > size:
            response["NextToken"] = _encode_lookup_token(events[size - 1][:2], query)
        return json.dumps(response)

    IamResponse.call_action = recorded_call_action
    CloudTrailResponse.lookup_events = lookup_events
    json_auth_errors(CloudTrailResponse)


def _lookup_error(code: str, message: str) -> Exception:
    """A LookupEvents error: JSON, HTTP 400, like every error of the operation."""
    from moto.core.exceptions import JsonRESTError

    return JsonRESTError(code, message)


def _encode_lookup_token(last: tuple[int, int], query: str) -> str:
    digest = hashlib.sha256(query.encode()).hexdigest()[:16]
    return base64.urlsafe_b64encode(f"ct:{last[0]}:{last[1]}:{digest}".encode()).decode()


def _decode_lookup_token(token: str | None, query: str) -> tuple[int, int] | None:
    """The (time, seq) a page continues after, or None for the first page."""
    if token is None:
        return None
    try:
        prefix, when, n, digest = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        if prefix == "ct" and digest == hashlib.sha256(query.encode()).hexdigest()[:16]:
            return int(when), int(n)
    except ValueError:  # covers binascii.Error and UnicodeDecodeError
        pass
    raise _lookup_error("InvalidNextTokenException", "Invalid NextToken.")


# --------------------------------------------------------------------------
# Member accounts, organization, auth mode
# --------------------------------------------------------------------------


def trust_policy(main_account: str, external_id: str | None) -> str:
    """config/iam-trust-policy.json, trusting the main account's root.

    The root principal lets any principal of the main account assume the role
    (its own policy must allow sts:AssumeRole too). The template's
    sts:ExternalId condition is kept with the scenario's value, or dropped.
    """
    doc = _load_policy(TRUST_POLICY, "trust policy")
    (statement,) = doc["Statement"]
    statement["Principal"]["AWS"] = f"arn:aws:iam::{main_account}:root"
    if external_id is None:
        del statement["Condition"]
    else:
        statement["Condition"]["StringEquals"]["sts:ExternalId"] = external_id
    return json.dumps(doc)


def seed_member_account(spec: AccountSpec, main_account: str, policy: dict | None,
                        now: datetime) -> tuple[dict, dict]:
    """Users and keys as for the main account, plus the role the exporter assumes.

    Returns (description for the JSON line, service-last-accessed data by ARN).
    """
    from moto.iam.models import iam_backends

    described, services_by_arn = seed(spec.account_id, spec.users, now)
    backend = iam_backends[spec.account_id]["aws"]
    role = backend.create_role(
        role_name=spec.role_name,
        assume_role_policy_document=trust_policy(main_account, spec.external_id),
        path="/", permissions_boundary=None, description="Assumed by iam-key-exporter",
        tags=[], max_session_duration="3600")
    if policy is not None:
        backend.put_role_policy(spec.role_name, "iam-key-exporter", json.dumps(policy))
    described_account = {"account_id": spec.account_id, "role_arn": role.arn, "users": described}
    if spec.roles is not None:
        described_account["roles"], services = seed_roles(spec.account_id, spec.roles, now)
        services_by_arn.update(services)
    return described_account, services_by_arn


@contextmanager
def _account_ids(ids: list[str]):
    """Make moto's Organizations give new accounts these ids, in order."""
    from moto.organizations import utils

    original, queue = utils.make_random_account_id, list(ids)
    utils.make_random_account_id = lambda: queue.pop(0)
    try:
        yield
    finally:
        utils.make_random_account_id = original


def seed_organization(main_account: str, members: list[str], suspended: list[str],
                      now: datetime) -> dict:
    """An organization managed by the main account, with these exact member ids.

    moto's CreateAccount draws a random id (and creates the member's
    OrganizationAccountAccessRole with it), so the ids are fed to it.
    JoinedTimestamps are distinct whole seconds (moto's paginator locates the
    next page by them): the management account joined a year ago, each other
    account an hour after the previous one, in scenario order.
    """
    from moto.organizations.models import organizations_backends

    backend = organizations_backends[main_account]["aws"]
    backend.create_organization(region=DEFAULT_REGION, FeatureSet="ALL")
    joined = _utc_seconds(now - timedelta(days=365))
    backend.accounts[0].create_time = joined
    with _account_ids(members + suspended):
        for n, account_id in enumerate(members + suspended, start=1):
            backend.create_account(AccountName=f"account-{account_id}",
                                   Email=f"aws+{account_id}@example.com")
            account = backend.accounts[-1]
            assert account.id == account_id
            account.create_time = joined + timedelta(hours=n)
            if account_id in suspended:
                account.status = account.state = "SUSPENDED"
    return {"accounts": [main_account] + members, "suspended": list(suspended)}


def seed_exporter_user(main_account: str, auth: AuthSpec, now: datetime) -> tuple[dict, dict]:
    """Auth mode: the user the exporter signs as, with its policies inline.

    Its key is new and never used, and its service-last-accessed job completes
    at once with no entries. Returns (credentials for the JSON line,
    service-last-accessed data by ARN).
    """
    from moto.iam.models import iam_backends

    spec = UserSpec(name=EXPORTER_USER, path="/", created_days_ago=0,
                    keys=[KeySpec(0, "Active", None, None, None)], in_progress_polls=0)
    (described,), services_by_arn = seed(main_account, [spec], now)
    backend = iam_backends[main_account]["aws"]
    for name, policy in (("iam-key-exporter", auth.policy), ("iam-key-exporter-hub", auth.hub)):
        if policy is not None:
            backend.put_user_policy(EXPORTER_USER, name, json.dumps(policy))
    key = backend.users[EXPORTER_USER].access_keys[0]
    return {"user_name": EXPORTER_USER, "arn": described["arn"],
            "access_key_id": key.access_key_id,
            "secret_access_key": key.secret_access_key}, services_by_arn


def install_account_routing(member_accounts: list[str]) -> None:
    """Answer a request signed with a member account's key from that account.

    moto picks the account for a request from MOTO_ACCOUNT_ID first, so with
    it set (as this script does for unknown credentials) the credentials of
    a role assumed in a member account would still be answered from the main
    account. Keys moto issued in a member account (AssumeRole credentials,
    or a seeded member user's key) now select that account; everything else
    still goes to MOTO_ACCOUNT_ID.
    """
    from moto.core.responses import BaseResponse
    from moto.iam.models import iam_backends

    original = BaseResponse.get_current_account

    def get_current_account(self: BaseResponse) -> str:
        access_key = self.get_access_key()
        for account_id in member_accounts:
            if access_key in iam_backends[account_id]["aws"].access_keys:
                return account_id
        return original(self)

    BaseResponse.get_current_account = get_current_account


def install_assume_role_trust(main_account: str, accounts: list[AccountSpec],
                              suspended: list[str]) -> None:
    """Make AssumeRole refuse what AWS refuses, for the scenario's accounts.

    moto 5.2.5 hands out credentials for any role ARN, existing or not, and
    checks no trust policy across accounts. Here AssumeRole answers
    AccessDenied (403) when the role does not exist, when its account is
    suspended, and, for a scenario member role, when the caller is not in
    the main account or the ExternalId differs from the scenario's.
    """
    from moto.core.exceptions import AccessDeniedError
    from moto.iam.exceptions import NotFoundException
    from moto.iam.models import iam_backends
    from moto.sts.responses import TokenResponse

    roles = {a.role_arn: a for a in accounts}
    original = TokenResponse.assume_role

    def assume_role(self: TokenResponse):
        role_arn = self._get_param("RoleArn") or ""
        match = re.fullmatch(r"arn:aws:iam::(\d{12}):role/.+", role_arn)
        if match is None:  # moto's own validation
            return original(self)
        allowed = match.group(1) not in suspended
        if allowed:
            try:
                iam_backends[match.group(1)]["aws"].get_role_by_arn(role_arn)
            except NotFoundException:
                allowed = False
        spec = roles.get(role_arn)
        if allowed and spec is not None:
            allowed = self.current_account == main_account and (
                spec.external_id is None or self._get_param("ExternalId") == spec.external_id)
        if not allowed:
            _, caller, _ = self.backend.get_caller_identity(self.get_access_key(), self.region)
            raise AccessDeniedError(user_arn=caller,
                                    action=f"sts:AssumeRole on resource: {role_arn}")
        return original(self)

    TokenResponse.assume_role = assume_role


def install_organizations() -> None:
    """ListAccounts as the real API answers it.

    moto pages by MaxResults but defaults to 100 accounts a page; the real
    API's pages hold at most 20. Without an organization moto lists nothing;
    AWS answers AWSOrganizationsNotInUseException, or AccessDeniedException
    to a member account. NextToken is left out on the last page, as in AWS.

    In auth mode a denied call answers AWS's JSON error (json_auth_errors).
    """
    from moto.organizations.exceptions import (AWSOrganizationsNotInUseException,
                                               OrganizationsClientError)
    from moto.organizations.models import organizations_backends
    from moto.organizations.responses import OrganizationsResponse

    def list_accounts(self: OrganizationsResponse) -> str:
        backend = self.organizations_backend
        if backend.org is None:
            if self.current_account in organizations_backends.master_accounts:
                raise OrganizationsClientError(
                    "AccessDeniedException", "You don't have permissions to access this resource.")
            raise AWSOrganizationsNotInUseException
        accounts, next_token = backend.list_accounts(
            max_results=self._get_param("MaxResults") or ORG_PAGE_SIZE,
            next_token=self._get_param("NextToken"))
        response: dict[str, Any] = {"Accounts": accounts}
        if next_token:
            response["NextToken"] = next_token
        return json.dumps(response)

    OrganizationsResponse.list_accounts = list_accounts
    json_auth_errors(OrganizationsResponse)


def json_auth_errors(cls: type) -> None:
    """Deny calls of a JSON-protocol service (`cls`, a moto response class) in JSON.

    moto's denial is IAM-style XML (HTTP 403, AccessDenied), which a JSON
    client cannot read. AWS answers AccessDeniedException with HTTP 400;
    moto's message (naming the user and the action) is kept. Other auth
    errors (e.g. InvalidClientTokenId) keep their code and status, as JSON.
    """
    from moto.core.exceptions import AccessDeniedError, JsonRESTError, _RESTError

    authorize = cls._authenticate_and_authorize_normal_action

    def authorize_json(self, resource: str = "*") -> None:
        try:
            authorize(self, resource)
        except AccessDeniedError as exc:
            denied = JsonRESTError("AccessDeniedException", exc.message)
            denied.code = 400
            raise denied from None
        except _RESTError as exc:
            raise exc.to_json() from None

    cls._authenticate_and_authorize_normal_action = authorize_json


# The IAM actions whose resource is a user: the user named by UserName, or
# the caller when it is left out.
USER_RESOURCE_ACTIONS = frozenset({
    "GetUser", "ListAccessKeys", "ListUserTags", "GetLoginProfile", "ListMFADevices",
    "ListUserPolicies", "ListAttachedUserPolicies", "ListGroupsForUser",
    "ListSigningCertificates", "ListSSHPublicKeys", "ListServiceSpecificCredentials",
})


def install_user_resources() -> None:
    """Auth mode: authorize user-scoped IAM actions against the user's ARN.

    moto authorizes every IAM action except role ones against the resource
    "*", which a statement with Resource arn:aws:iam::*:user/* never
    matches. Here the resource is the user's ARN (with its path), as in AWS:
    the named user (or the caller) for USER_RESOURCE_ACTIONS, the key's owner
    for GetAccessKeyLastUsed, the Arn parameter for
    GenerateServiceLastAccessedDetails. For a user that does not exist the
    resource is arn:aws:iam::<account>:user/<name> (no path), for a key that
    does not exist arn:aws:iam::<account>:user/*; when that is allowed, moto
    answers its usual NoSuchEntity.
    """
    from moto.iam.responses import IamResponse

    original = IamResponse._determine_resource

    def _determine_resource(self: IamResponse) -> str:
        resource = original(self)
        action = self._get_action()
        if resource != "*":  # a role
            return resource
        if action == "GenerateServiceLastAccessedDetails":
            return self._get_param("Arn") or "*"
        if action == "GetAccessKeyLastUsed":
            user = self.backend.get_user_from_access_key_id(self._get_param("AccessKeyId") or "")
            return user.arn if user else f"arn:aws:iam::{self.current_account}:user/*"
        if action in USER_RESOURCE_ACTIONS:
            name = self._get_param("UserName")
            if not name:
                user = self.backend.get_user_from_access_key_id(self.get_access_key())
                return user.arn if user else "*"
            user = self.backend.users.get(name)
            return user.arn if user else f"arn:aws:iam::{self.current_account}:user/{name}"
        return resource

    IamResponse._determine_resource = _determine_resource


def install_query_auth_errors() -> None:
    """Auth mode: moto's authentication and authorization errors in IAM's shape.

    moto writes them as <ErrorResponse><Errors><Error>..., the EC2 shape.
    IAM and STS answer <ErrorResponse><Error>...</Error><RequestId>, and an
    SDK reading the query protocol finds no error code in the EC2 shape (the
    Rust SDK reports code None). Here the body is IAM's shape, with the same
    code, message and HTTP status. Organizations' JSON errors are made in
    install_organizations from the exception's code and message, unchanged.
    """
    from xmltodict import unparse
    from moto.core import exceptions as core

    for cls in (core.AccessDeniedError, core.InvalidClientTokenIdError,
                core.SignatureDoesNotMatchError, core.AuthFailureError):
        def __init__(self, *args: Any, __original=cls.__init__, **kwargs: Any) -> None:
            __original(self, *args, **kwargs)
            self.description = unparse({"ErrorResponse": {
                "@xmlns": "https://iam.amazonaws.com/doc/2010-05-08/",
                "Error": {"Type": "Sender", "Code": self.error_type, "Message": self.message},
                "RequestId": str(uuid.uuid4()),
            }}, full_document=True)
        cls.__init__ = __init__


# --------------------------------------------------------------------------
# Server lifecycle
# --------------------------------------------------------------------------


def start_server(host: str, port: int):
    from moto.server import ThreadedMotoServer

    class Server(ThreadedMotoServer):
        # The stock start() waits forever if binding fails (e.g. port in use)
        # because the ready event is only set after a successful bind.
        def _server_entry(self) -> None:
            try:
                super()._server_entry()
            except BaseException as exc:  # noqa: BLE001 - reported by main()
                self.bind_error = exc
                self._server_ready_event.set()

    server = Server(ip_address=host, port=port, verbose=False)  # verbose prints to stdout
    server.bind_error = None
    server.start()
    if server.bind_error is not None:
        # werkzeug already printed the reason and raised SystemExit(1).
        detail = "" if isinstance(server.bind_error, SystemExit) else f": {server.bind_error}"
        raise SystemExit(f"moto_server: cannot listen on {host}:{port}{detail}")
    return server


def wait_for_shutdown(watch_stdin: bool) -> str:
    """Block until SIGTERM/SIGINT or (if watched) EOF on stdin; return why.

    stdin is polled with select() from the main thread rather than read in
    a helper thread: a daemon thread blocked in a read makes interpreter
    shutdown abort ("could not acquire lock for <stdin>").
    """
    signals: list[str] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: signals.append(signal.Signals(signum).name))

    fd = sys.stdin.fileno() if watch_stdin and sys.stdin is not None else None
    while not signals:
        if fd is None:
            time.sleep(0.2)
        elif select.select([fd], [], [], 0.2)[0] and not os.read(fd, 65536):
            # The parent keeps a pipe open; EOF means it closed it or died.
            return "stdin EOF"
    return signals[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", help="scenario JSON file (optional with --bench-users)")
    parser.add_argument("--bench-users", type=int, metavar="N",
                        help="also seed N generated users with 2 keys each; the JSON line "
                             "then only has counts")
    parser.add_argument("--bench-roles", type=int, metavar="N",
                        help="also seed N generated roles in the main account; the JSON line "
                             "then only has counts")
    parser.add_argument("--bench-job-polls", type=int, default=0, metavar="N",
                        help="the generated users' service-last-accessed jobs answer "
                             "IN_PROGRESS to their first N polls (default 0: done at once)")
    parser.add_argument("--bench-accounts", type=int, metavar="N",
                        help="with --bench-users M: an organization of N member accounts "
                             f"(at most {MAX_BENCH_ACCOUNTS}) with M generated users each, "
                             "besides the M of the management account")
    parser.add_argument("--cloudtrail-delay", type=float, default=0.0, metavar="SECONDS",
                        help="LookupEvents shows an IAM call's event only this long after "
                             "it (default 0: at once)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port")
    parser.add_argument("--verbose", action="store_true", help="log every HTTP request")
    parser.add_argument("--ignore-stdin", action="store_true",
                        help="do not exit on stdin EOF (for manual use, e.g. in the background)")
    args = parser.parse_args(argv)
    if args.scenario is None and args.bench_users is None and args.bench_roles is None:
        parser.error("--scenario is required unless --bench-users or --bench-roles is given")
    if args.bench_users is not None and args.bench_users < 1:
        parser.error("--bench-users must be at least 1")
    if args.bench_roles is not None and args.bench_roles < 1:
        parser.error("--bench-roles must be at least 1")
    if args.bench_accounts is not None and args.bench_users is None:
        parser.error("--bench-accounts needs --bench-users")
    if args.bench_accounts is not None and not 1 <= args.bench_accounts <= MAX_BENCH_ACCOUNTS:
        parser.error(f"--bench-accounts must be 1-{MAX_BENCH_ACCOUNTS}")
    if args.cloudtrail_delay < 0:
        parser.error("--cloudtrail-delay must not be negative")

    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="moto_server: %(message)s")
    if not args.verbose:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)

    # Only the JSON line may reach stdout: route stray prints to stderr.
    real_stdout, sys.stdout = sys.stdout, sys.stderr

    try:
        scenario = Scenario()
        if args.scenario is not None:
            with open(args.scenario, encoding="utf-8") as f:
                scenario = parse_scenario(json.load(f))
        if args.bench_users:
            taken = {u.name for u in scenario.users}
            bench = bench_users(args.bench_users, args.bench_job_polls)
            if taken & {u.name for u in bench}:
                raise ScenarioError("user names clash with --bench-users (bench-user-NNNNN)")
            scenario.users += bench
        if args.bench_roles:
            bench = bench_roles(args.bench_roles, args.bench_job_polls)
            if {r.name.lower() for r in scenario.roles or []} & {r.name for r in bench}:
                raise ScenarioError("role names clash with --bench-roles (bench-role-NNNNN)")
            scenario.roles = (scenario.roles or []) + bench
        if args.bench_accounts:
            members = bench_accounts(args.bench_accounts, args.bench_users, args.bench_job_polls)
            taken = ({scenario.account_id} | {a.account_id for a in scenario.accounts}
                     | set(scenario.suspended))
            if taken & {a.account_id for a in members}:
                raise ScenarioError("account ids clash with --bench-accounts (2000000000NN)")
            scenario.accounts += members
            scenario.organization = True
    except (OSError, json.JSONDecodeError, ScenarioError) as exc:
        log.error("invalid scenario %s: %s", args.scenario, exc)
        return 2
    account_id = scenario.account_id

    # Route every request to the scenario account, whatever credentials the
    # client signs with (moto otherwise maps unknown keys to 123456789012).
    # Keys moto issued in a member account are routed there (see below).
    os.environ["MOTO_ACCOUNT_ID"] = account_id
    if scenario.auth is not None:
        # moto reads this once, when moto.settings is first imported: 0 means
        # every request is authenticated and authorized. Seeding writes to the
        # backends directly, which never counts as a request.
        os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"

    from moto import settings as moto_settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.iam.models import iam_backends

    if scenario.auth is not None and moto_settings.INITIAL_NO_AUTH_ACTION_COUNT != 0:
        log.error("moto was imported before INITIAL_NO_AUTH_ACTION_COUNT was set")
        return 1

    now = datetime.now(timezone.utc)
    started = time.monotonic()
    described, services_by_arn = seed(account_id, scenario.users, now)
    log.info("seeded %d users in %.2f s", len(described), time.monotonic() - started)
    roles: list[dict] = []
    try:
        if scenario.roles:
            roles, services = seed_roles(account_id, scenario.roles, now)
            services_by_arn.update(services)
            log.info("seeded %d roles in %.2f s", len(roles), time.monotonic() - started)
    except ScenarioError as exc:
        log.error("invalid scenario %s: %s", args.scenario, exc)
        return 2
    if scenario.report_generated_hours_ago is not None:
        preset_credential_report(iam_backends[account_id]["aws"],
                                 now - timedelta(hours=scenario.report_generated_hours_ago))

    # Member roles get the exporter's policy: in auth mode the scenario's
    # policy file minus remove_actions, otherwise config/iam-policy.json.
    role_policy = None
    if scenario.accounts:
        role_policy = (scenario.auth.policy if scenario.auth is not None
                       else _load_policy(EXPORTER_POLICY, "exporter policy"))
    accounts = []
    try:
        for spec in scenario.accounts:
            account, services = seed_member_account(spec, account_id, role_policy, now)
            accounts.append(account)
            services_by_arn.update(services)
    except ScenarioError as exc:
        log.error("invalid scenario %s: %s", args.scenario, exc)
        return 2
    organization = None
    if scenario.organization:
        organization = seed_organization(
            account_id, [a.account_id for a in scenario.accounts if a.in_organization],
            scenario.suspended, now)
    if scenario.accounts:
        log.info("seeded %d member accounts (%d users)%s in %.2f s", len(accounts),
                 sum(len(a["users"]) for a in accounts),
                 " and the organization" if organization else "", time.monotonic() - started)
    credentials = None
    if scenario.auth is not None:
        credentials, services = seed_exporter_user(account_id, scenario.auth, now)
        services_by_arn.update(services)

    install_service_last_accessed(services_by_arn)
    install_account_authorization_details()
    install_role_last_used()
    install_credential_report()
    install_organizations()
    install_event_history(args.cloudtrail_delay)
    if scenario.accounts or scenario.suspended:
        install_account_routing([a.account_id for a in scenario.accounts])
        install_assume_role_trust(account_id, scenario.accounts, scenario.suspended)
    if scenario.auth is not None:
        install_user_resources()
        install_query_auth_errors()
        if ActionAuthenticatorMixin.request_count != 0:  # seeding must not count as requests
            log.error("seeding used %d unauthenticated requests",
                      ActionAuthenticatorMixin.request_count)
            return 1
    server = start_server(args.host, args.port)
    host, port = server.get_host_and_port()
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    endpoint = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    line: dict[str, Any] = {"endpoint": endpoint, "account_id": account_id, "users": described}
    if scenario.roles is not None:
        line["roles"] = roles
    if scenario.accounts:
        line["accounts"] = accounts
    if organization is not None:
        line["organization"] = organization
    if args.bench_users or args.bench_roles:  # thousands of users or roles: counts only
        everyone = described + [u for a in accounts for u in a["users"]]
        line.update(users=len(everyone), keys=sum(len(u["keys"]) for u in everyone))
        if scenario.roles is not None or any("roles" in a for a in accounts):
            line.pop("roles", None)  # after the key count
            line["roles"] = len(roles) + sum(len(a.get("roles", [])) for a in accounts)
        if scenario.accounts:
            line.update(accounts=len(accounts), organization={
                "accounts": len(organization["accounts"]),
                "suspended": len(organization["suspended"])})
    if credentials is not None:
        # moto-made test credentials of the exporter's user, valid only here.
        line["credentials"] = credentials
    real_stdout.write(json.dumps(line) + "\n")
    real_stdout.flush()
    log.info("serving %d users and %d roles on %s",
             len(described) + sum(len(a["users"]) for a in accounts),
             len(roles) + sum(len(a.get("roles", [])) for a in accounts), endpoint)

    why = wait_for_shutdown(watch_stdin=not args.ignore_stdin)
    log.info("%s: stopping", why)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
