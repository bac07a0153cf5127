//! The shipped policies are enough, and each of their permissions is needed: moto enforces
//! IAM policies (`INITIAL_NO_AUTH_ACTION_COUNT=0`, the scenario's `auth`), the exporter signs
//! as a user holding only config/iam-policy.json and config/iam-policy-hub.json, and the
//! member accounts' roles hold config/iam-policy.json. With every permission, every feature
//! works; without any one of them, the exporter stays up and says which permission is
//! missing, in a log line and in a metric.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(60);
const MAIN: &str = "123456789012";
const DATA: &str = "210987654321";
const LEGACY: &str = "345678901234";

/// Every feature on: two member accounts by role, discovery, tags, service counts.
const CONFIG: &str = r#"
[source]
kind = "SOURCE"

[service_access]
interval = "2s"

[tags]
keys = ["team", "owner"]

[[accounts]]
name = "hub"

[[accounts]]
role_arn = "arn:aws:iam::210987654321:role/iam-key-exporter"

[[accounts]]
role_arn = "arn:aws:iam::345678901234:role/iam-key-exporter"
external_id = "iam-key-exporter-test"

[organizations]
enabled = true
external_id = "iam-key-exporter-test"
"#;

/// moto in auth mode with the multi-account scenario, the policies less `removed`.
fn moto(removed: &[&str], dir: &Path) -> Option<Moto> {
    let mut scenario: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/peers/multi-account.json")).unwrap(),
    )
    .unwrap();
    scenario["auth"] = serde_json::json!({
        "policy_file": "config/iam-policy.json",
        "remove_actions": removed,
    });
    let path = dir.join("scenario.json");
    std::fs::write(&path, scenario.to_string()).unwrap();
    Moto::start(&path)
}

fn credentials(moto: &Moto) -> (String, String) {
    let c = &moto.seeded["credentials"];
    (
        c["access_key_id"].as_str().unwrap().to_string(),
        c["secret_access_key"].as_str().unwrap().to_string(),
    )
}

fn start(moto: &Moto, dir: &Path, source: &str) -> Exporter {
    let config: PathBuf = dir.join("exporter.toml");
    std::fs::write(&config, CONFIG.replace("SOURCE", source)).unwrap();
    let (key, secret) = credentials(moto);
    Exporter::start_with(
        &["--config.file", config.to_str().unwrap()],
        &[
            ("IAM_KEY_EXPORTER_AWS__ENDPOINT_URL", &moto.endpoint),
            ("IAM_KEY_EXPORTER_REFRESH__INTERVAL", "2s"),
            ("AWS_ACCESS_KEY_ID", &key),
            ("AWS_SECRET_ACCESS_KEY", &secret),
        ],
    )
}

fn degraded(metrics: &Metrics, account: &str, feature: &str) -> Option<f64> {
    metrics.get(
        "iam_key_exporter_account_feature_degraded",
        &[("account_id", account), ("feature", feature)],
    )
}

#[test]
fn the_shipped_policies_are_enough_for_every_feature() {
    let dir = tempfile::tempdir().unwrap();
    let Some(moto) = moto(&[], dir.path()) else {
        return;
    };
    let exporter = start(&moto, dir.path(), "auto");
    exporter.wait_ready();
    let m = wait_for("every feature's data", LIMIT, || {
        let m = exporter.metrics();
        // Users' and roles' jobs alike (a role's job is asked on the role's ARN).
        let counted = m.count_with("aws_iam_user_services_granted", "account_id", DATA) > 0
            && m.count_with("aws_iam_role_services_granted", "account_id", DATA) > 0;
        (counted && m.value("iam_key_exporter_refresh_success", &[]) == 1.0).then_some(m)
    });
    for account in [MAIN, DATA, LEGACY] {
        assert!(
            m.count_with("aws_iam_access_key_active", "account_id", account) > 0,
            "{account}"
        );
        assert!(
            m.get(
                "aws_iam_root_access_keys_present",
                &[("account_id", account)]
            )
            .is_some(),
            "{account}"
        );
        for feature in [
            "root_keys",
            "credential_report",
            "tags",
            "service_access",
            "change_feed",
            "roles",
        ] {
            assert_ne!(
                degraded(&m, account, feature),
                Some(1.0),
                "{account} {feature}"
            );
        }
    }
    assert_eq!(m.value("iam_key_exporter_discovery_success", &[]), 1.0);
    assert!(m.0.keys().any(|k| k.contains("tag_team=\"data\"")));
    let denied: Vec<&String> =
        m.0.keys()
            .filter(|k| {
                k.starts_with("iam_key_exporter_aws_errors_total{") && k.contains("AccessDenied")
            })
            .collect();
    assert!(denied.is_empty(), "{denied:?}");
    let logs = exporter.logs();
    assert!(!logs.contains("AccessDenied"), "{logs}");

    // whois needs sts:GetAccessKeyInfo.
    let key = moto.seeded["users"][0]["keys"][0]["access_key_id"]
        .as_str()
        .unwrap();
    let output = whois(&moto, key);
    assert!(output.status.success(), "{output:?}");
}

fn whois(moto: &Moto, key_id: &str) -> std::process::Output {
    let (key, secret) = credentials(moto);
    run_whois(&moto.endpoint, (&key, &secret), &[], key_id)
}

/// What removing one permission must show.
enum Expect {
    /// The refresh of every account fails, naming the operation.
    RefreshFails,
    /// The feature is off in every account (`iam_key_exporter_account_feature_degraded`),
    /// the rest works.
    Degrades(&'static str),
    /// The member accounts cannot be reached; the exporter's own account still is.
    MembersFail,
    /// Discovery fails; the configured accounts are still watched.
    DiscoveryFails,
}

/// Starts the exporter without `action` and checks the log line and the metric.
fn without(action: &str, operation: &str, source: &str, expect: Expect) {
    let dir = tempfile::tempdir().unwrap();
    let Some(moto) = moto(&[action], dir.path()) else {
        return;
    };
    let exporter = start(&moto, dir.path(), source);
    // Without data to serve (every refresh failing) the exporter is up but not ready.
    if !matches!(expect, Expect::RefreshFails) {
        exporter.wait_ready();
    }
    let denied_line = || {
        exporter
            .logs()
            .lines()
            .find(|l| l.contains("AccessDenied") && l.contains(operation))
            .map(str::to_string)
    };
    let line = wait_for(&format!("a log line about {operation}"), LIMIT, denied_line);
    let m = wait_for("the metric showing it", LIMIT, || {
        let m = exporter.metrics();
        let shown = match expect {
            Expect::RefreshFails => {
                m.value("iam_key_exporter_refresh_success", &[]) == 0.0
                    && [MAIN, DATA, LEGACY].iter().all(|a| {
                        m.get(
                            "iam_key_exporter_account_refresh_success",
                            &[
                                ("account_id", a),
                                ("account_name", if *a == MAIN { "hub" } else { "" }),
                            ],
                        ) == Some(0.0)
                    })
            }
            // Degraded everywhere, and a whole round finished since: the rest works.
            Expect::Degrades(feature) => {
                [MAIN, DATA, LEGACY]
                    .iter()
                    .all(|a| degraded(&m, a, feature) == Some(1.0))
                    && m.value("iam_key_exporter_refresh_success", &[]) == 1.0
            }
            Expect::MembersFail => {
                m.get(
                    "iam_key_exporter_account_refresh_success",
                    &[("account_id", MAIN), ("account_name", "hub")],
                ) == Some(1.0)
                    && [DATA, LEGACY].iter().all(|a| {
                        m.get(
                            "iam_key_exporter_account_refresh_success",
                            &[("account_id", a), ("account_name", "")],
                        ) == Some(0.0)
                    })
            }
            Expect::DiscoveryFails => {
                m.value("iam_key_exporter_discovery_success", &[]) == 0.0
                    && m.value("iam_key_exporter_refresh_success", &[]) == 1.0
            }
        };
        shown.then_some(m)
    });
    assert_eq!(exporter.get("/-/healthy").status, 200, "still up");
    if let Expect::Degrades(_) = expect {
        assert_eq!(
            m.value("iam_key_exporter_refresh_success", &[]),
            1.0,
            "the rest works"
        );
        assert!(line.contains(action), "names the permission: {line}");
        // The requests counted by account tell which accounts refuse.
        for account in [MAIN, DATA, LEGACY] {
            let denied = m.get(
                "iam_key_exporter_account_aws_denied_requests_total",
                &[("account_id", account)],
            );
            assert!(denied >= Some(1.0), "{account}: {denied:?}");
            let sent = m.get(
                "iam_key_exporter_account_aws_requests_total",
                &[("account_id", account)],
            );
            assert!(sent > denied, "{account}: {sent:?}");
        }
    }
    if let Expect::MembersFail = expect {
        let without_credentials =
            m.0.iter()
                .filter(|(k, _)| {
                    k.starts_with("iam_key_exporter_aws_errors_total{")
                        && k.contains("code=\"credentials\"")
                })
                .count();
        assert!(
            without_credentials >= 1,
            "calls failing for want of credentials are counted"
        );
        assert!(line.contains("sts:AssumeRole"), "{line}");
    } else {
        // Organizations' JSON protocol names it AccessDeniedException.
        let counted: f64 = ["AccessDenied", "AccessDeniedException"]
            .iter()
            .filter_map(|code| {
                m.get(
                    "iam_key_exporter_aws_errors_total",
                    &[("operation", operation), ("code", code)],
                )
            })
            .sum();
        assert!(counted >= 1.0, "{operation} AccessDenied counted");
    }
}

#[test]
fn without_list_users() {
    without("iam:ListUsers", "ListUsers", "auto", Expect::RefreshFails);
}

#[test]
fn without_list_access_keys() {
    without(
        "iam:ListAccessKeys",
        "ListAccessKeys",
        "auto",
        Expect::RefreshFails,
    );
}

#[test]
fn without_get_access_key_last_used() {
    // `auto` asks it only for keys the report cannot describe; `api` for every key.
    without(
        "iam:GetAccessKeyLastUsed",
        "GetAccessKeyLastUsed",
        "api",
        Expect::RefreshFails,
    );
}

#[test]
fn without_generate_credential_report() {
    without(
        "iam:GenerateCredentialReport",
        "GenerateCredentialReport",
        "auto",
        Expect::Degrades("credential_report"),
    );
}

#[test]
fn without_get_credential_report() {
    without(
        "iam:GetCredentialReport",
        "GetCredentialReport",
        "auto",
        Expect::Degrades("credential_report"),
    );
}

#[test]
fn without_get_account_summary() {
    without(
        "iam:GetAccountSummary",
        "GetAccountSummary",
        "auto",
        Expect::Degrades("root_keys"),
    );
}

#[test]
fn without_list_user_tags() {
    without(
        "iam:ListUserTags",
        "ListUserTags",
        "auto",
        Expect::Degrades("tags"),
    );
}

#[test]
fn without_generate_service_last_accessed_details() {
    without(
        "iam:GenerateServiceLastAccessedDetails",
        "GenerateServiceLastAccessedDetails",
        "auto",
        Expect::Degrades("service_access"),
    );
}

#[test]
fn without_get_service_last_accessed_details() {
    without(
        "iam:GetServiceLastAccessedDetails",
        "GetServiceLastAccessedDetails",
        "auto",
        Expect::Degrades("service_access"),
    );
}

#[test]
fn without_lookup_events() {
    without(
        "cloudtrail:LookupEvents",
        "LookupEvents",
        "auto",
        Expect::Degrades("change_feed"),
    );
}

#[test]
fn without_get_account_authorization_details() {
    without(
        "iam:GetAccountAuthorizationDetails",
        "GetAccountAuthorizationDetails",
        "auto",
        Expect::Degrades("roles"),
    );
}

#[test]
fn without_assume_role() {
    without("sts:AssumeRole", "AssumeRole", "auto", Expect::MembersFail);
}

#[test]
fn without_list_accounts() {
    without(
        "organizations:ListAccounts",
        "ListAccounts",
        "auto",
        Expect::DiscoveryFails,
    );
}

#[test]
fn without_get_access_key_info_whois_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let Some(moto) = moto(&["sts:GetAccessKeyInfo"], dir.path()) else {
        return;
    };
    let key = moto.seeded["users"][0]["keys"][0]["access_key_id"]
        .as_str()
        .unwrap();
    let output = whois(&moto, key);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(said.contains("GetAccessKeyInfo"), "{said}");
    assert!(said.contains("AccessDenied"), "{said}");
}
