//! Faults between the exporter and IAM, injected by tests/peers/fault_proxy.py in front of
//! moto. For each one: the daemon stays up, /metrics keeps serving the last good data,
//! the health metrics show the failure, and the first refresh after the fault ends
//! recovers fully.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

/// moto with the sample scenario, the proxy in front of it, and the exporter refreshing
/// every second through the proxy. The change feed is off unless `extra_env` turns it on:
/// the faults are injected into the calls that list users and keys, which the feed makes
/// only at its first refresh.
struct Rig {
    _moto: Moto,
    proxy: FaultProxy,
    exporter: Exporter,
    account: String,
}

fn rig(extra_env: &[(&str, &str)], args: &[&str]) -> Option<Rig> {
    let moto = Moto::start(&root().join("tests/peers/sample-inventory.json"))?;
    let account = moto.seeded["account_id"].as_str().unwrap().to_string();
    let proxy = FaultProxy::start(&moto.endpoint, &account);
    let mut env = vec![
        (
            "IAM_KEY_EXPORTER_AWS__ENDPOINT_URL",
            proxy.endpoint.as_str(),
        ),
        ("IAM_KEY_EXPORTER_REFRESH__INTERVAL", "1s"),
        ("IAM_KEY_EXPORTER_AWS__CALL_TIMEOUT", "5s"),
        ("IAM_KEY_EXPORTER_SERVICE_ACCESS__ENABLED", "false"),
        ("IAM_KEY_EXPORTER_CHANGE_FEED__ENABLED", "false"),
    ];
    // Later entries win: the caller's settings override these.
    env.extend_from_slice(extra_env);
    let exporter = Exporter::start_with(args, &env);
    exporter.wait_ready();
    Some(Rig {
        _moto: moto,
        proxy,
        exporter,
        account,
    })
}

/// The per-key series that must survive a fault unchanged.
fn key_series(metrics: &Metrics) -> BTreeMap<String, f64> {
    metrics
        .0
        .iter()
        .filter(|(k, _)| {
            k.starts_with("aws_iam_access_key_created_timestamp_seconds{")
                || k.starts_with("aws_iam_access_key_active{")
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

fn errors(metrics: &Metrics, operation: &str, code: &str) -> f64 {
    metrics
        .get(
            "iam_key_exporter_aws_errors_total",
            &[("operation", operation), ("code", code)],
        )
        .unwrap_or(0.0)
}

/// Failed calls with `code`, whatever the operation.
fn errors_with_code(metrics: &Metrics, code: &str) -> f64 {
    let needle = format!("code=\"{code}\"");
    metrics
        .0
        .iter()
        .filter(|(k, _)| k.starts_with("iam_key_exporter_aws_errors_total{") && k.contains(&needle))
        .map(|(_, v)| v)
        .sum()
}

/// Injects `rules`, waits for a failed refresh, checks what is served, lifts the fault and
/// waits for a full recovery. The failed call must be counted as `operation` (any, if
/// `None`) with `code`.
fn survives(rules: serde_json::Value, operation: Option<&str>, code: &str) {
    let Some(rig) = rig(&[], &[]) else {
        return;
    };
    survives_on(
        &rig,
        || rig.proxy.inject(rules.clone()),
        || rig.proxy.clear(),
        operation,
        code,
    );
}

fn survives_on(
    rig: &Rig,
    start_fault: impl FnOnce(),
    end_fault: impl FnOnce(),
    operation: Option<&str>,
    code: &str,
) {
    let exporter = &rig.exporter;
    let account = [("account_id", rig.account.as_str()), ("account_name", "")];
    let before = key_series(&exporter.metrics());
    assert!(before.len() >= 4, "{before:?}");

    start_fault();
    let during = wait_for("a failed refresh", LIMIT, || {
        let m = exporter.metrics();
        (m.value("iam_key_exporter_refresh_success", &[]) == 0.0).then_some(m)
    });
    assert_eq!(exporter.get("/-/healthy").status, 200, "the daemon is up");
    assert_eq!(
        exporter.get("/-/ready").status,
        200,
        "and still has data to serve"
    );
    assert_eq!(key_series(&during), before, "the last good data is served");
    assert_eq!(
        during.value("iam_key_exporter_account_refresh_success", &account),
        0.0
    );
    assert!(during.value("iam_key_exporter_refresh_failures_total", &[]) >= 1.0);
    let counted = match operation {
        Some(operation) => errors(&during, operation, code),
        None => errors_with_code(&during, code),
    };
    assert!(
        counted >= 1.0,
        "{operation:?}/{code} not counted: {:?}",
        during
            .0
            .iter()
            .filter(|(k, _)| k.starts_with("iam_key_exporter_aws_errors_total"))
            .collect::<Vec<_>>()
    );
    let stale_since = during.value(
        "iam_key_exporter_last_refresh_success_timestamp_seconds",
        &[],
    );
    assert!(
        stale_since > 0.0 && stale_since < now_secs(),
        "data age visible"
    );

    end_fault();
    let ended = now_secs();
    let after = wait_for("a full recovery", LIMIT, || {
        let m = exporter.metrics();
        let fresh = m.value(
            "iam_key_exporter_last_refresh_success_timestamp_seconds",
            &[],
        );
        (m.value("iam_key_exporter_refresh_success", &[]) == 1.0 && fresh > ended).then_some(m)
    });
    assert_eq!(key_series(&after), before);
    assert_eq!(
        after.value("iam_key_exporter_account_refresh_success", &account),
        1.0
    );
}

#[test]
fn throttling_that_outlasts_the_retries() {
    survives(
        json!([{"fault": "throttle", "operation": "ListUsers"}]),
        Some("ListUsers"),
        "Throttling",
    );
}

#[test]
fn http_500() {
    survives(
        json!([{"fault": "http_500", "operation": "ListAccessKeys"}]),
        Some("ListAccessKeys"),
        "InternalFailure",
    );
}

#[test]
fn http_503() {
    survives(
        json!([{"fault": "http_503", "operation": "ListUsers"}]),
        Some("ListUsers"),
        "ServiceUnavailable",
    );
}

#[test]
fn responses_slower_than_the_call_timeout() {
    survives(
        json!([{"fault": "slow", "operation": "ListUsers", "delay_seconds": 8}]),
        Some("ListUsers"),
        "timeout",
    );
}

#[test]
fn malformed_xml() {
    survives(
        json!([{"fault": "malformed_xml", "operation": "ListUsers"}]),
        Some("ListUsers"),
        "response",
    );
}

#[test]
fn expired_credentials() {
    survives(
        json!([{"fault": "expired_token"}]),
        // Whichever call the refresh in flight was making.
        None,
        "ExpiredToken",
    );
}

#[test]
fn the_iam_endpoint_down() {
    let Some(rig) = rig(&[], &[]) else {
        return;
    };
    survives_on(
        &rig,
        || rig.proxy.set_up(false),
        || rig.proxy.set_up(true),
        // Whichever call the refresh in flight was making.
        None,
        "dispatch",
    );
}

#[test]
fn the_event_history_failing() {
    // With the feed on, a refresh after the first asks LookupEvents: its failure fails the
    // refresh like any IAM call's, and the next poll asks for the same window again.
    let Some(rig) = rig(&[("IAM_KEY_EXPORTER_CHANGE_FEED__ENABLED", "true")], &[]) else {
        return;
    };
    survives_on(
        &rig,
        || {
            rig.proxy
                .inject(json!([{"fault": "http_500", "operation": "LookupEvents"}]))
        },
        || rig.proxy.clear(),
        Some("LookupEvents"),
        // The JSON protocol's name for it.
        "ServiceException",
    );
    let m = rig.exporter.metrics();
    assert_eq!(
        m.aws_requests("ListUsers"),
        1.0,
        "the feed resumed: no whole list"
    );
}

#[test]
fn a_short_throttling_burst_is_absorbed_by_the_retries() {
    // The SDK backs off up to a second before retrying a throttled call, and adaptive
    // mode may add to that: the 5 s call timeout of the other faults is too short under load.
    let Some(rig) = rig(&[("IAM_KEY_EXPORTER_AWS__CALL_TIMEOUT", "15s")], &[]) else {
        return;
    };
    let exporter = &rig.exporter;
    let before = exporter.metrics();
    rig.proxy
        .inject(json!([{"fault": "throttle", "operation": "ListUsers", "times": 1}]));
    wait_for("the throttled request", LIMIT, || {
        (rig.proxy.stats()["faults"]["throttle"].as_u64() == Some(1)).then_some(())
    });
    let listed = before.aws_requests("ListUsers");
    let after = wait_for("a refresh after the burst", LIMIT, || {
        let m = exporter.metrics();
        (m.aws_requests("ListUsers") >= listed + 3.0).then_some(m)
    });
    // The throttled attempt was retried within its call: no call and no refresh failed.
    assert_eq!(errors(&after, "ListUsers", "Throttling"), 0.0);
    assert_eq!(
        after.value("iam_key_exporter_refresh_failures_total", &[]),
        0.0
    );
    assert_eq!(after.value("iam_key_exporter_refresh_success", &[]), 1.0);
}

/// Denied features: the rest works, the feature is marked degraded and logged once, and
/// it comes back when the denial ends.
fn degrades_alone(
    feature: &str,
    operation: &str,
    permission: &str,
    env: &[(&str, &str)],
    present: impl Fn(&Metrics) -> bool,
) {
    let Some(rig) = rig(env, &[]) else {
        return;
    };
    let exporter = &rig.exporter;
    let degraded = [("account_id", rig.account.as_str()), ("feature", feature)];
    wait_for("the feature's data", LIMIT, || {
        present(&exporter.metrics()).then_some(())
    });
    let before = key_series(&exporter.metrics());

    rig.proxy
        .inject(json!([{"fault": "access_denied", "operation": operation}]));
    let during = wait_for("the feature degraded", LIMIT, || {
        let m = exporter.metrics();
        (m.get("iam_key_exporter_account_feature_degraded", &degraded) == Some(1.0)).then_some(m)
    });
    // Two more refreshes: still one log line.
    let failures = during.value("iam_key_exporter_refresh_failures_total", &[]);
    let denied_calls = errors(&during, operation, "AccessDenied");
    wait_for("more denied calls", LIMIT, || {
        (errors(&exporter.metrics(), operation, "AccessDenied") >= denied_calls + 2.0).then_some(())
    });
    let m = exporter.metrics();
    assert_eq!(
        m.value("iam_key_exporter_refresh_success", &[]),
        1.0,
        "the rest works"
    );
    assert_eq!(
        m.value("iam_key_exporter_refresh_failures_total", &[]),
        failures
    );
    assert_eq!(key_series(&m), before);
    let logs = exporter.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| {
            l.contains("IAM denied a call") && l.contains(&format!("feature=\"{feature}\""))
        })
        .collect();
    assert_eq!(lines.len(), 1, "logged once: {lines:?}");
    assert!(
        lines[0].contains(permission),
        "names the permission: {}",
        lines[0]
    );

    rig.proxy.clear();
    let after = wait_for("the feature back", LIMIT, || {
        let m = exporter.metrics();
        (m.get("iam_key_exporter_account_feature_degraded", &degraded) == Some(0.0) && present(&m))
            .then_some(m)
    });
    assert_eq!(key_series(&after), before);
}

#[test]
fn denied_service_last_accessed_degrades_only_the_service_counts() {
    degrades_alone(
        "service_access",
        "GenerateServiceLastAccessedDetails",
        "iam:GenerateServiceLastAccessedDetails",
        &[
            ("IAM_KEY_EXPORTER_SERVICE_ACCESS__ENABLED", "true"),
            ("IAM_KEY_EXPORTER_SERVICE_ACCESS__INTERVAL", "1s"),
        ],
        |m| {
            m.0.keys()
                .any(|k| k.starts_with("aws_iam_user_services_granted{"))
        },
    );
}

#[test]
fn denied_account_summary_degrades_only_the_root_key_fact() {
    degrades_alone(
        "root_keys",
        "GetAccountSummary",
        "iam:GetAccountSummary",
        &[],
        |m| {
            m.0.keys()
                .any(|k| k.starts_with("aws_iam_root_access_keys_present{"))
        },
    );
}

/// One `--once` refresh through `proxy` at the DEFAULT `aws.*` settings: unlike
/// `Exporter`, which shortens retries and the call timeout for the other fault tests,
/// nothing here tunes retries, timeouts or the request rate. Service-last-accessed (a
/// separate pass) is off. Returns whether it succeeded, its exposition and its log.
fn refresh_once_at_aws_defaults(proxy: &FaultProxy) -> (bool, Metrics, String) {
    let output = exporter_command()
        .arg("--once")
        .env("IAM_KEY_EXPORTER_AWS__ENDPOINT_URL", &proxy.endpoint)
        .env("IAM_KEY_EXPORTER_SERVICE_ACCESS__ENABLED", "false")
        .output()
        .expect("run iam-key-exporter --once");
    let logs = String::from_utf8_lossy(&output.stderr).into_owned();
    let metrics = Metrics::parse(&String::from_utf8(output.stdout).expect("UTF-8 exposition"));
    (output.status.success(), metrics, logs)
}

/// The refresh succeeded, for `account` too, and no call failed after its retries
/// (whatever its operation and code). GetCredentialReport's answers that a report must be
/// generated first (moto starts without one) are the report's states, which the exporter
/// does not count as errors.
fn assert_refreshed_with_no_failed_call(metrics: &Metrics, account: &str, context: &str) {
    assert_eq!(
        metrics.value("iam_key_exporter_refresh_success", &[]),
        1.0,
        "{context}refresh_success"
    );
    assert_eq!(
        metrics.value(
            "iam_key_exporter_account_refresh_success",
            &[("account_id", account), ("account_name", "")]
        ),
        1.0,
        "{context}account_refresh_success"
    );
    let failed: Vec<(&String, &f64)> = metrics
        .0
        .iter()
        .filter(|(k, v)| k.starts_with("iam_key_exporter_aws_errors_total{") && **v > 0.0)
        .collect();
    assert_eq!(
        failed,
        Vec::<(&String, &f64)>::new(),
        "{context}no call failed"
    );
}

/// The exporter's `iam_key_exporter_aws_requests_total` by operation (non-zero only).
fn requests_by_operation(metrics: &Metrics) -> BTreeMap<String, f64> {
    metrics
        .0
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .filter_map(|(k, v)| {
            let operation = k
                .strip_prefix("iam_key_exporter_aws_requests_total{operation=\"")?
                .strip_suffix("\"}")?;
            Some((operation.to_string(), *v))
        })
        .collect()
}

/// What the peer answered, by operation, over every account: forwarded to moto plus
/// answered Throttling (by its rate limit or a `throttle` rule). Every attempt the
/// exporter sent is one of the two as long as no other fault is injected.
fn peer_answers_by_operation(stats: &serde_json::Value) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for table in [
        "forwarded_by_account_operation",
        "throttled_by_account_operation",
    ] {
        for operations in stats[table].as_object().unwrap().values() {
            for (operation, n) in operations.as_object().unwrap() {
                *out.entry(operation.clone()).or_insert(0.0) += n.as_f64().unwrap();
            }
        }
    }
    out
}

// Issue 9, finding 1: IAM answered one ListAccessKeys call with Throttling three times in
// a row and the refresh failed at the default settings. The default retries must outlast
// a longer burst than that.
#[test]
fn five_consecutive_throttles_on_one_call_do_not_fail_the_refresh() {
    let Some(moto) = Moto::start(&root().join("tests/peers/sample-inventory.json")) else {
        return;
    };
    let account = moto.seeded["account_id"].as_str().unwrap().to_string();
    let users = moto.seeded["users"].as_array().unwrap();
    let user = users[0]["name"].as_str().unwrap();
    let proxy = FaultProxy::start(&moto.endpoint, &account);
    // `params` picks this user's call: its attempts are the five throttled in a row,
    // whatever the other users' concurrent ListAccessKeys calls do.
    proxy.inject(json!([{
        "fault": "throttle",
        "operation": "ListAccessKeys",
        "params": {"UserName": user},
        "times": 5,
    }]));

    let (succeeded, metrics, logs) = refresh_once_at_aws_defaults(&proxy);
    let stats = proxy.stats();
    assert!(succeeded, "the refresh failed: {stats}\n{logs}");
    assert_eq!(
        stats["faults"]["throttle"], 5,
        "the peer answered all five throttles: {stats}"
    );
    assert_eq!(errors_with_code(&metrics, "Throttling"), 0.0);
    assert_refreshed_with_no_failed_call(&metrics, &account, "");
    // Every attempt is counted: the user's six, and one for each other user.
    let listed = metrics.aws_requests("ListAccessKeys");
    assert!(
        listed >= (users.len() + 5) as f64,
        "{listed} ListAccessKeys requests for {} users and 5 retries",
        users.len()
    );
    assert_eq!(
        listed,
        peer_answers_by_operation(&stats)["ListAccessKeys"],
        "{stats}"
    );
}

// A few hundred users behind a peer that throttles like IAM (a token bucket per account,
// 20 requests a second, a small burst), with the exporter at its default settings
// (50 requests a second): the refresh must adapt instead of failing. No timed assertion:
// how long it takes is for scripts/bench.sh.
#[test]
fn an_account_behind_a_throttling_peer_refreshes_with_no_error() {
    const USERS: usize = 200;
    let Some(moto) = Moto::start_bench(USERS) else {
        return;
    };
    let account = moto.seeded["account_id"].as_str().unwrap().to_string();
    let proxy = FaultProxy::start(&moto.endpoint, &account);
    proxy.throttle(20.0, 5);

    for run in 1..=2 {
        proxy.clear_stats();
        let (succeeded, metrics, logs) = refresh_once_at_aws_defaults(&proxy);
        let stats = proxy.stats();
        eprintln!(
            "run {run}: the peer forwarded {} and throttled {}; the exporter counted {} requests",
            stats["forwarded"],
            stats["throttled"],
            requests_by_operation(&metrics).values().sum::<f64>()
        );
        assert!(succeeded, "run {run}: the refresh failed: {stats}\n{logs}");
        assert_refreshed_with_no_failed_call(&metrics, &account, &format!("run {run}: "));
        let keys = metrics
            .0
            .keys()
            .filter(|k| k.starts_with("aws_iam_access_key_active{"))
            .count();
        assert_eq!(keys, 2 * USERS, "run {run}: every user's two keys");
        assert!(
            stats["throttled"].as_u64().unwrap() > 0,
            "run {run}: the peer throttled nothing, so the test shows nothing: {stats}"
        );
        assert_eq!(stats["throttled"], stats["rate_limited"], "{stats}");
        assert_eq!(stats["upstream_errors"], 0, "{stats}");
        // Every throttle was seen, and lowered the rate.
        let throttled: f64 = metrics
            .0
            .iter()
            .filter(|(k, _)| k.starts_with("iam_key_exporter_aws_throttled_requests_total{"))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(throttled, stats["throttled"].as_f64().unwrap(), "run {run}");
        // Every attempt is counted, the throttled ones included.
        assert_eq!(
            requests_by_operation(&metrics),
            peer_answers_by_operation(&stats),
            "run {run}: the exporter's requests_total against what the peer answered"
        );
    }
}

// While IAM denies the jobs, a pass asks with one job, not one per user: a denied
// permission must not cost a call per user every interval.
#[test]
fn a_denied_service_access_pass_asks_with_one_job() {
    let Some(rig) = rig(
        &[
            ("IAM_KEY_EXPORTER_SERVICE_ACCESS__ENABLED", "true"),
            ("IAM_KEY_EXPORTER_SERVICE_ACCESS__INTERVAL", "1s"),
        ],
        &[],
    ) else {
        return;
    };
    let exporter = &rig.exporter;
    let operation = "GenerateServiceLastAccessedDetails";
    let degraded = [
        ("account_id", rig.account.as_str()),
        ("feature", "service_access"),
    ];
    rig.proxy
        .inject(json!([{"fault": "access_denied", "operation": operation}]));
    wait_for("the feature degraded", LIMIT, || {
        let m = exporter.metrics();
        (m.get("iam_key_exporter_account_feature_degraded", &degraded) == Some(1.0)).then_some(())
    });
    // The denied calls seen at the end of each pass: one more per pass.
    let mut at_pass_end: Vec<f64> = Vec::new();
    let mut last_run = None;
    wait_for("four passes while denied", LIMIT, || {
        let m = exporter.metrics();
        let run = m.get(
            "iam_key_exporter_service_access_last_run_timestamp_seconds",
            &[],
        );
        if run != last_run {
            last_run = run;
            at_pass_end.push(errors(&m, operation, "AccessDenied"));
        }
        std::thread::sleep(Duration::from_millis(20));
        (at_pass_end.len() >= 5).then_some(())
    });
    let per_pass: Vec<f64> = at_pass_end.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        per_pass.iter().skip(1).all(|n| *n == 1.0),
        "denied calls per pass: {per_pass:?}"
    );
}
