//! The credential report sources: the bundled sample file served exactly, a changed file
//! re-read, and the report-based sources agreeing with the API source against moto.

mod common;

use std::time::Duration;

use common::*;

/// One key of the sample file: user, slot, active, created, last used, service, region.
type SampleKey = (
    &'static str,
    &'static str,
    bool,
    i64,
    Option<i64>,
    &'static str,
    &'static str,
);

/// The sample file's keys, computed independently of the exporter (Python's csv and
/// datetime).
const SAMPLE_KEYS: &[SampleKey] = &[
    (
        "<root_account>",
        "slot1",
        true,
        1552298537,
        Some(1705324920),
        "iam",
        "us-east-1",
    ),
    (
        "ci-deployer",
        "slot1",
        true,
        1716193811,
        Some(1795391880),
        "ecr",
        "eu-west-1",
    ),
    (
        "ci-deployer",
        "slot2",
        false,
        1622548805,
        Some(1716138180),
        "s3",
        "eu-west-1",
    ),
    (
        "terraform",
        "slot1",
        true,
        1644834031,
        Some(1795193100),
        "cloudformation",
        "eu-west-1",
    ),
    ("terraform", "slot2", true, 1793523600, None, "N/A", "N/A"),
    (
        "alice",
        "slot1",
        true,
        1780485071,
        Some(1795255500),
        "sts",
        "eu-central-1",
    ),
    (
        "alice",
        "slot2",
        false,
        1673276400,
        Some(1739266200),
        "s3",
        "us-east-1",
    ),
    (
        "bob",
        "slot1",
        true,
        1574087700,
        Some(1743184200),
        "s3",
        "us-east-1",
    ),
    ("carol", "slot1", true, 1793091605, None, "N/A", "N/A"),
    (
        "data-pipeline",
        "slot1",
        false,
        1751608802,
        Some(1759270200),
        "dynamodb",
        "eu-central-1",
    ),
];

/// user, MFA, password enabled (None: not_supported), password last used, created (for
/// the root user, the account).
type SampleUser = (&'static str, bool, Option<bool>, Option<i64>, i64);

const SAMPLE_USERS: &[SampleUser] = &[
    ("<root_account>", true, None, Some(1790926860), 1552295742),
    ("ci-deployer", false, Some(false), None, 1622548800),
    ("terraform", false, Some(false), None, 1644834030),
    ("alice", true, Some(true), Some(1795335295), 1599465600),
    ("bob", false, Some(true), Some(1743183900), 1574087400),
    ("carol", false, Some(true), None, 1793091600),
    ("data-pipeline", false, Some(false), None, 1751608800),
    (
        "readonly-auditor",
        true,
        Some(true),
        Some(1794999600),
        1712062800,
    ),
];

const SAMPLE_ACCOUNT: &str = "210987654321";

fn sample_config() -> String {
    root()
        .join("config/sample-report.toml")
        .display()
        .to_string()
}

#[test]
fn the_sample_report_file_is_served_exactly() {
    // No AWS at all: no credentials, no endpoint.
    let exporter = Exporter::start_with(&["--config.file", &sample_config()], &[]);
    exporter.wait_ready();
    let metrics = exporter.metrics();
    let now = now_secs();
    for &(user, slot, active, created, last_used, service, region) in SAMPLE_KEYS {
        let labels = [
            ("account_id", SAMPLE_ACCOUNT),
            ("user", user),
            ("access_key_id", slot),
        ];
        let value = |name: &str| metrics.value(name, &labels);
        assert_eq!(
            value("aws_iam_access_key_active"),
            if active { 1.0 } else { 0.0 },
            "{user} {slot}"
        );
        assert_eq!(
            value("aws_iam_access_key_created_timestamp_seconds"),
            created as f64
        );
        assert!((value("aws_iam_access_key_age_seconds") - (now - created as f64)).abs() < 60.0);
        match last_used {
            Some(at) => {
                assert_eq!(
                    value("aws_iam_access_key_last_used_timestamp_seconds"),
                    at as f64
                );
                assert_eq!(value("aws_iam_access_key_never_used"), 0.0);
                assert!(
                    (value("aws_iam_access_key_idle_seconds") - (now - at as f64)).abs() < 60.0
                );
                let info = [
                    labels[0],
                    labels[1],
                    labels[2],
                    ("last_used_service", service),
                    ("last_used_region", region),
                ];
                assert_eq!(
                    metrics.value("aws_iam_access_key_last_used_info", &info),
                    1.0
                );
            }
            None => {
                assert_eq!(value("aws_iam_access_key_never_used"), 1.0, "{user} {slot}");
                assert!(
                    (value("aws_iam_access_key_idle_seconds") - (now - created as f64)).abs()
                        < 60.0
                );
            }
        }
    }
    let keys = metrics
        .0
        .keys()
        .filter(|k| k.starts_with("aws_iam_access_key_active{"))
        .count();
    assert_eq!(keys, SAMPLE_KEYS.len(), "no other keys");
    for &(user, mfa, password, password_used, created) in SAMPLE_USERS {
        let labels = [("account_id", SAMPLE_ACCOUNT), ("user", user)];
        assert_eq!(
            metrics.value("aws_iam_user_created_timestamp_seconds", &labels),
            created as f64,
            "{user}"
        );
        assert_eq!(
            metrics.value("aws_iam_user_mfa_active", &labels),
            if mfa { 1.0 } else { 0.0 }
        );
        assert_eq!(
            metrics.get("aws_iam_user_password_enabled", &labels),
            password.map(|p| if p { 1.0 } else { 0.0 }),
            "{user}"
        );
        assert_eq!(
            metrics.get("aws_iam_user_password_last_used_timestamp_seconds", &labels),
            password_used.map(|t| t as f64),
            "{user}"
        );
    }
    assert_eq!(
        metrics.value(
            "aws_iam_root_access_keys_present",
            &[("account_id", SAMPLE_ACCOUNT)]
        ),
        1.0
    );
    assert!(
        metrics
            .get(
                "aws_iam_credential_report_generated_timestamp_seconds",
                &[("account_id", SAMPLE_ACCOUNT)]
            )
            .is_some()
    );
    assert_eq!(
        metrics.value("iam_key_exporter_snapshot_users", &[]),
        7.0,
        "IAM users, root aside"
    );
    if let Some(said) = promtool_check_metrics(&exporter.get("/metrics").text()) {
        assert_eq!(said, "");
    }
}

#[test]
fn a_changed_report_file_is_read_again_and_a_broken_one_keeps_the_last_good_data() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.csv");
    let sample =
        std::fs::read_to_string(root().join("config/sample-credential-report.csv")).unwrap();
    std::fs::write(&report, &sample).unwrap();
    let exporter = Exporter::start_with(
        &[],
        &[
            ("IAM_KEY_EXPORTER_SOURCE__KIND", "credential_report_file"),
            ("IAM_KEY_EXPORTER_SOURCE__FILE", report.to_str().unwrap()),
        ],
    );
    exporter.wait_ready();
    assert!(
        exporter
            .metrics()
            .count_with("aws_iam_access_key_active", "user", "bob")
            > 0
    );

    // bob leaves: his row goes, written as a new file moved into place.
    let without_bob: String = sample
        .lines()
        .filter(|l| !l.starts_with("bob,"))
        .map(|l| format!("{l}\n"))
        .collect();
    let next = dir.path().join("next.csv");
    std::fs::write(&next, without_bob).unwrap();
    std::fs::rename(&next, &report).unwrap();
    wait_for("bob's keys to vanish", Duration::from_secs(30), || {
        (exporter
            .metrics()
            .count_with("aws_iam_access_key_active", "user", "bob")
            == 0)
            .then_some(())
    });

    // A truncated file is an error: the last good data stays, the failure is visible.
    std::fs::write(&next, &sample[..sample.len() / 2]).unwrap();
    std::fs::rename(&next, &report).unwrap();
    let metrics = wait_for("a failed refresh", Duration::from_secs(30), || {
        let m = exporter.metrics();
        (m.value("iam_key_exporter_refresh_success", &[]) == 0.0).then_some(m)
    });
    assert!(metrics.count_with("aws_iam_access_key_active", "user", "alice") > 0);
    assert!(
        exporter.logs().contains("report.csv"),
        "the log names the file"
    );
}

fn key_values(metrics: &Metrics) -> Vec<(String, f64)> {
    metrics
        .0
        .iter()
        .filter(|(k, _)| {
            k.starts_with("aws_iam_access_key_")
                || k.starts_with("aws_iam_user_services")
                || k.starts_with("aws_iam_user_created")
        })
        // Ages move with the clock: compare them rounded to ten minutes.
        .map(|(k, v)| {
            let v = if k.contains("_age_seconds") || k.contains("_idle_seconds") {
                (v / 600.0).round()
            } else {
                *v
            };
            (k.clone(), v)
        })
        .collect()
}

#[test]
fn the_auto_source_agrees_with_the_api_source() {
    let Some(moto) = Moto::start(&root().join("tests/peers/sample-inventory.json")) else {
        return;
    };
    let wait_counts = |e: &Exporter| {
        wait_for("service counts", Duration::from_secs(60), || {
            let m = e.metrics();
            (m.get(
                "iam_key_exporter_service_access_last_run_timestamp_seconds",
                &[],
            )
            .unwrap_or(0.0)
                > 0.0)
                .then_some(m)
        })
    };
    let api = Exporter::start(&moto.endpoint, &[("IAM_KEY_EXPORTER_SOURCE__KIND", "api")]);
    api.wait_ready();
    let from_api = wait_counts(&api);
    let auto = Exporter::start(&moto.endpoint, &[("IAM_KEY_EXPORTER_SOURCE__KIND", "auto")]);
    auto.wait_ready();
    let from_auto = wait_counts(&auto);

    assert_eq!(key_values(&from_auto), key_values(&from_api));
    assert!(key_values(&from_api).len() > 20);
    // The report was used: it was fetched, and never-used keys cost no GetAccessKeyLastUsed.
    assert!(from_auto.aws_requests("GetCredentialReport") >= 1.0);
    assert!(
        from_auto.aws_requests("GetAccessKeyLastUsed")
            < from_api.aws_requests("GetAccessKeyLastUsed")
    );
    assert_eq!(from_api.aws_requests("GetCredentialReport"), 0.0);
}

#[test]
fn the_report_source_agrees_with_the_api_source_by_slot() {
    let Some(moto) = Moto::start(&root().join("tests/peers/sample-inventory.json")) else {
        return;
    };
    let api = Exporter::start(
        &moto.endpoint,
        &[
            ("IAM_KEY_EXPORTER_SOURCE__KIND", "api"),
            ("IAM_KEY_EXPORTER_SERVICE_ACCESS__ENABLED", "false"),
        ],
    );
    let report = Exporter::start(
        &moto.endpoint,
        &[
            ("IAM_KEY_EXPORTER_SOURCE__KIND", "credential_report"),
            ("IAM_KEY_EXPORTER_SERVICE_ACCESS__ENABLED", "false"),
        ],
    );
    api.wait_ready();
    report.wait_ready();
    let (from_api, from_report) = (api.metrics(), report.metrics());
    let account = moto.seeded["account_id"].as_str().unwrap();
    for user in moto.seeded["users"].as_array().unwrap() {
        let name = user["name"].as_str().unwrap();
        // The report's user_creation_time is IAM's CreateDate.
        let labels = [("account_id", account), ("user", name)];
        let created = "aws_iam_user_created_timestamp_seconds";
        assert_eq!(
            from_report.get(created, &labels),
            from_api.get(created, &labels),
            "{name}"
        );
        assert_eq!(from_api.get(created, &labels), user["create_date"].as_f64());
        for key in user["keys"].as_array().unwrap() {
            let id = key["access_key_id"].as_str().unwrap();
            // The report names slots, not ids: find the slot by the key's CreateDate.
            let created = key["create_date"].as_f64().unwrap();
            let slot = ["slot1", "slot2"]
                .into_iter()
                .find(|slot| {
                    let labels = [
                        ("account_id", account),
                        ("user", name),
                        ("access_key_id", *slot),
                    ];
                    from_report.get("aws_iam_access_key_created_timestamp_seconds", &labels)
                        == Some(created)
                })
                .unwrap_or_else(|| panic!("no report slot for {name}'s {id}"));
            for name_of in [
                "aws_iam_access_key_last_used_timestamp_seconds",
                "aws_iam_access_key_never_used",
                "aws_iam_access_key_active",
            ] {
                assert_eq!(
                    from_report.get(
                        name_of,
                        &[
                            ("account_id", account),
                            ("user", name),
                            ("access_key_id", slot)
                        ]
                    ),
                    from_api.get(
                        name_of,
                        &[
                            ("account_id", account),
                            ("user", name),
                            ("access_key_id", id)
                        ]
                    ),
                    "{name_of} of {name}'s {id} ({slot})"
                );
            }
        }
    }
    let calls: f64 = from_report
        .0
        .iter()
        .filter(|(k, _)| k.starts_with("iam_key_exporter_aws_requests_total{"))
        // The roles are read apart from the inventory, whatever its source.
        .filter(|(k, _)| !k.contains("GetAccountAuthorizationDetails"))
        .map(|(_, v)| v)
        .sum();
    assert!(calls <= 5.0, "STS once, then the report: {calls} calls");
}

/// Runs the `credential_report` source every second against the sample scenario with a
/// report already generated `hours` ago, until it has fetched the report `fetches` times.
/// Returns the metrics then, and how old the report they describe was, in hours.
fn report_source_on_a_report_aged(hours: f64, fetches: f64) -> Option<(Metrics, f64)> {
    let dir = tempfile::tempdir().unwrap();
    let sample = std::fs::read_to_string(root().join("tests/peers/sample-inventory.json")).unwrap();
    let mut scenario: serde_json::Value = serde_json::from_str(&sample).unwrap();
    scenario["credential_report_generated_hours_ago"] = serde_json::json!(hours);
    let path = dir.path().join("scenario.json");
    std::fs::write(&path, scenario.to_string()).unwrap();

    let moto = Moto::start(&path)?;
    let exporter = Exporter::start(
        &moto.endpoint,
        &[
            ("IAM_KEY_EXPORTER_SOURCE__KIND", "credential_report"),
            ("IAM_KEY_EXPORTER_REFRESH__INTERVAL", "1s"),
            ("IAM_KEY_EXPORTER_SERVICE_ACCESS__ENABLED", "false"),
        ],
    );
    let metrics = wait_for("the report fetches", Duration::from_secs(30), || {
        let m = exporter.metrics();
        (m.aws_requests("GetCredentialReport") >= fetches).then_some(m)
    });
    let account = moto.seeded["account_id"].as_str().unwrap();
    let generated = metrics.value(
        "aws_iam_credential_report_generated_timestamp_seconds",
        &[("account_id", account)],
    );
    Some((metrics, (now_secs() - generated) / 3600.0))
}

#[test]
fn a_report_younger_than_four_hours_is_never_regenerated() {
    let Some((metrics, age_hours)) = report_source_on_a_report_aged(1.0, 3.0) else {
        return;
    };
    assert_eq!(metrics.aws_requests("GenerateCredentialReport"), 0.0);
    assert!(
        (age_hours - 1.0).abs() < 0.05,
        "the report's own age: {age_hours} h"
    );
}

#[test]
fn a_report_older_than_the_maximum_age_is_regenerated_once() {
    let Some((metrics, age_hours)) = report_source_on_a_report_aged(5.0, 5.0) else {
        return;
    };
    // One generation, started once and waited for through GetCredentialReport; later
    // refreshes find the new report fresh.
    assert_eq!(metrics.aws_requests("GenerateCredentialReport"), 1.0);
    assert!(age_hours.abs() < 0.05, "a new report: {age_hours} h old");
}

/// Finding 2 of issue 9: a user on two rows of a report (real reports have them) is served
/// once, from the row with the latest date, and warned about once however often the
/// file is read.
#[test]
fn a_user_on_two_rows_is_served_once_and_warned_about_once() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.csv");
    let sample =
        std::fs::read_to_string(root().join("config/sample-credential-report.csv")).unwrap();
    // alice again after her row, as she was before she last signed in and used key 1.
    let alice = sample.lines().find(|l| l.starts_with("alice,")).unwrap();
    let earlier = alice
        .replace("2026-11-22T08:14:55+00:00", "no_information")
        .replace("2026-11-21T10:05:00+00:00,eu-central-1,sts", "N/A,N/A,N/A");
    assert_ne!(earlier, alice);
    std::fs::write(&report, format!("{}\n{earlier}\n", sample.trim_end())).unwrap();
    let exporter = Exporter::start_with(
        &[],
        &[
            ("IAM_KEY_EXPORTER_SOURCE__KIND", "credential_report_file"),
            ("IAM_KEY_EXPORTER_SOURCE__FILE", report.to_str().unwrap()),
            ("IAM_KEY_EXPORTER_REFRESH__INTERVAL", "1s"),
        ],
    );
    exporter.wait_ready();
    wait_for("three refreshes", Duration::from_secs(30), || {
        (exporter.logs().matches("inventory refreshed").count() >= 3).then_some(())
    });
    let text = exporter.get("/metrics").text();
    assert_eq!(common::duplicate_series(&text), Vec::<String>::new());
    let metrics = Metrics::parse(&text);
    let labels = [
        ("account_id", SAMPLE_ACCOUNT),
        ("user", "alice"),
        ("access_key_id", "slot1"),
    ];
    assert_eq!(
        metrics.value("aws_iam_access_key_last_used_timestamp_seconds", &labels),
        1795255500.0,
        "the row with the latest date"
    );
    let logs = exporter.logs();
    assert_eq!(
        logs.matches("lists user \"alice\" on lines 5, 10").count(),
        1,
        "{logs}"
    );
}
