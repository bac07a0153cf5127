//! Real credential reports, published in other projects' tests and in AWS's documentation
//! (`../shared/realworld-reports`, see its SOURCES.md), read where they are at test time
//! and never copied here. Each is served by the built binary (`--once`) with the values an
//! independent reading of its CSV gives and no series twice, or refused with a message
//! naming its real problem.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Metrics, duplicate_series, now_secs};
use iam_key_exporter::credential_report::{self, ReportError, ReportWarning};

/// The reports in the current 22-column format, which must be served.
const SERVED: [&str; 7] = [
    "c7n_account_credential_report.csv",
    "c7n_unused_keys.csv",
    "c7n_multi_delete_noop.csv",
    "c7n_multi_delete.csv",
    "c7n_reverse_filter_delete.csv",
    "c7n_delete_options.csv",
    "guardian_security_hq.csv",
];

/// The 16-column report of 2014-2015, which must be refused as such.
const OLD_FORMAT: &str = "awsdocs_powershell_old_format.csv";

/// The folder of reports; `None` (the test skips, loudly) when it is missing outside CI.
fn reports() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/realworld-reports");
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the real-world reports are missing at {}", dir.display());
    }
    eprintln!(
        "SKIPPED: the real-world reports are missing at {}",
        dir.display()
    );
    None
}

/// The exporter's `--once` on the report file at `path`, with no AWS at all.
fn once(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iam-key-exporter"))
        .env_clear()
        .env("IAM_KEY_EXPORTER_SOURCE__KIND", "credential_report_file")
        .env("IAM_KEY_EXPORTER_SOURCE__FILE", path)
        .arg("--once")
        .output()
        .expect("run the exporter")
}

/// Seconds since the epoch of a report timestamp (`2016-10-06T15:47:11+00:00`), computed
/// here rather than by the exporter's date parser. Every report at hand is in UTC.
fn epoch(value: &str) -> f64 {
    let utc = value
        .strip_suffix("+00:00")
        .or_else(|| value.strip_suffix('Z'))
        .unwrap_or_else(|| panic!("not a UTC timestamp: {value}"));
    let number = |range: std::ops::Range<usize>| -> i64 { utc[range].parse().unwrap() };
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    let seconds = number(11..13) * 3600 + number(14..16) * 60 + number(17..19);
    // Days from 1970-01-01 to the civil date (the proleptic Gregorian calendar).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    (days * 86_400 + seconds) as f64
}

/// The words IAM writes for "no value".
fn absent(value: &str) -> bool {
    ["N/A", "not_supported", "no_information"]
        .iter()
        .any(|word| value.eq_ignore_ascii_case(word))
}

fn time(value: &str) -> Option<f64> {
    (!absent(value)).then(|| epoch(value))
}

fn flag(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ if absent(value) => None,
        other => panic!("not a flag: {other}"),
    }
}

/// One key slot as the report has it.
#[derive(Debug)]
struct Key {
    slot: &'static str,
    active: bool,
    created: f64,
    last_used: Option<(f64, String, String)>,
}

/// One user as the report has it, from the row the exporter must keep.
#[derive(Debug)]
struct User {
    name: String,
    mfa: Option<bool>,
    password_enabled: Option<bool>,
    password_last_used: Option<f64>,
    /// `user_creation_time`; for the root user, the account's creation.
    created: Option<f64>,
    keys: Vec<Key>,
    /// The latest of the dates the exporter documents choosing a duplicated user's row by.
    latest: Option<f64>,
}

/// The report's users read as raw CSV records, and its account id: the fifth field of its
/// first ARN.
fn expected(path: &Path) -> (String, Vec<User>) {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_path(path)
        .unwrap();
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_ascii_lowercase)
        .collect();
    let mut users: Vec<User> = Vec::new();
    let mut account = None;
    for record in reader.records() {
        let record = record.unwrap();
        let get = |column: &str| -> &str {
            let at = header.iter().position(|h| h == column).unwrap();
            &record[at]
        };
        account.get_or_insert_with(|| get("arn").split(':').nth(4).unwrap().to_string());
        let mut keys = Vec::new();
        for (n, slot) in [(1, "slot1"), (2, "slot2")] {
            let column = |what: &str| get(&format!("access_key_{n}_{what}")).to_string();
            let Some(created) = time(&column("last_rotated")) else {
                continue;
            };
            keys.push(Key {
                slot,
                active: flag(&column("active")) == Some(true),
                created,
                last_used: time(&column("last_used_date"))
                    .map(|at| (at, column("last_used_service"), column("last_used_region"))),
            });
        }
        let dates = [
            time(get("user_creation_time")),
            time(get("password_last_used")),
        ];
        let key_dates = keys
            .iter()
            .flat_map(|k| [Some(k.created), k.last_used.as_ref().map(|u| u.0)]);
        let user = User {
            name: get("user").to_string(),
            mfa: flag(get("mfa_active")),
            password_enabled: flag(get("password_enabled")),
            password_last_used: time(get("password_last_used")),
            created: time(get("user_creation_time")),
            latest: dates
                .into_iter()
                .chain(key_dates)
                .flatten()
                .reduce(f64::max),
            keys,
        };
        // One row per user: the one with the latest date, the first on a tie.
        match users.iter_mut().find(|u| u.name == user.name) {
            Some(kept) if user.latest > kept.latest => *kept = user,
            Some(_) => {}
            None => users.push(user),
        }
    }
    (account.unwrap(), users)
}

/// `got` within two minutes of `want`: ages move with the clock between the two readings.
fn close(got: f64, want: f64) -> bool {
    (got - want).abs() < 120.0
}

/// Checks the exposition of one report against the independent reading of its CSV.
fn check_served(name: &str, text: &str, account: &str, users: &[User]) {
    assert_eq!(duplicate_series(text), Vec::<String>::new(), "{name}");
    let metrics = Metrics::parse(text);
    let now = now_secs();
    let mut keys_seen = 0;
    for user in users {
        let labels = [("account_id", account), ("user", user.name.as_str())];
        let context = format!("{name}: {}", user.name);
        let as_value = |b: Option<bool>| b.map(|b| if b { 1.0 } else { 0.0 });
        assert_eq!(
            metrics.get("aws_iam_user_mfa_active", &labels),
            as_value(user.mfa),
            "{context}"
        );
        assert_eq!(
            metrics.get("aws_iam_user_password_enabled", &labels),
            as_value(user.password_enabled),
            "{context}"
        );
        assert_eq!(
            metrics.get("aws_iam_user_password_last_used_timestamp_seconds", &labels),
            user.password_last_used,
            "{context}"
        );
        assert_eq!(
            metrics.get("aws_iam_user_created_timestamp_seconds", &labels),
            user.created,
            "{context}"
        );
        for key in &user.keys {
            keys_seen += 1;
            let labels = [labels[0], labels[1], ("access_key_id", key.slot)];
            let context = format!("{context} {}", key.slot);
            let value = |metric: &str| metrics.get(metric, &labels);
            assert_eq!(
                value("aws_iam_access_key_active"),
                as_value(Some(key.active)),
                "{context}"
            );
            assert_eq!(
                value("aws_iam_access_key_created_timestamp_seconds"),
                Some(key.created),
                "{context}"
            );
            // A key dated in the future (2099) is zero seconds old, not negative.
            let age = value("aws_iam_access_key_age_seconds").unwrap();
            assert!(close(age, (now - key.created).max(0.0)), "{context}: {age}");
            let since = key.last_used.as_ref().map_or(key.created, |u| u.0);
            let idle = value("aws_iam_access_key_idle_seconds").unwrap();
            assert!(close(idle, (now - since).max(0.0)), "{context}: {idle}");
            assert_eq!(
                value("aws_iam_access_key_never_used"),
                as_value(Some(key.last_used.is_none())),
                "{context}"
            );
            assert_eq!(
                value("aws_iam_access_key_last_used_timestamp_seconds"),
                key.last_used.as_ref().map(|u| u.0),
                "{context}"
            );
            if let Some((_, service, region)) = &key.last_used {
                let info = [
                    labels[0],
                    labels[1],
                    labels[2],
                    ("last_used_service", service.as_str()),
                    ("last_used_region", region.as_str()),
                ];
                assert_eq!(
                    metrics.get("aws_iam_access_key_last_used_info", &info),
                    Some(1.0),
                    "{context}"
                );
            }
        }
    }
    let keys_served = metrics
        .0
        .keys()
        .filter(|k| k.starts_with("aws_iam_access_key_active{"))
        .count();
    assert_eq!(keys_served, keys_seen, "{name}: no other keys");
    let users_served = metrics
        .0
        .keys()
        .filter(|k| k.starts_with("aws_iam_user_mfa_active{"))
        .count();
    assert_eq!(users_served, users.len(), "{name}: no other users");
    let root = users.iter().find(|u| u.name == "<root_account>");
    assert_eq!(
        metrics.get(
            "aws_iam_root_access_keys_present",
            &[("account_id", account)]
        ),
        root.map(|r| if r.keys.is_empty() { 0.0 } else { 1.0 }),
        "{name}: from the root row, inactive keys included"
    );
    assert_eq!(
        metrics.value("iam_key_exporter_snapshot_users", &[]),
        users.iter().filter(|u| u.name != "<root_account>").count() as f64,
        "{name}"
    );
}

#[test]
fn every_real_report_is_served_as_its_rows_say() {
    let Some(dir) = reports() else {
        return;
    };
    for name in SERVED {
        let path = dir.join(name);
        let (account, users) = expected(&path);
        let output = once(&path);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{name}: {stderr}");
        let text = String::from_utf8(output.stdout).unwrap();
        check_served(name, &text, &account, &users);
        if let Some(said) = common::promtool_check_metrics(&text) {
            assert_eq!(said, "", "{name}");
        }
    }
}

/// Every 22-column report through the library's own reading, against the same
/// independent reading: one row per user, and a warning only where the report is odd.
#[test]
fn every_real_report_reads_through_the_library() {
    let Some(dir) = reports() else {
        return;
    };
    let mut warned: BTreeMap<&str, Vec<ReportWarning>> = BTreeMap::new();
    for name in SERVED {
        let path = dir.join(name);
        let (account, users) = expected(&path);
        let report = credential_report::read(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            report.account_id.as_deref(),
            Some(account.as_str()),
            "{name}"
        );
        let names: Vec<&str> = report.rows.iter().map(|r| r.user.as_str()).collect();
        let want: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, want, "{name}");
        if !report.warnings.is_empty() {
            warned.insert(name, report.warnings);
        }
    }
    let christopher = ReportWarning::DuplicateUser {
        user: "christopher".into(),
        lines: vec![9, 10],
        kept: 10,
    };
    let anonymised = ReportWarning::OddAccountId {
        arn: "arn:aws:iam::0123456789:root".into(),
        account_id: "0123456789".into(),
    };
    assert_eq!(
        warned,
        BTreeMap::from([
            ("c7n_account_credential_report.csv", vec![christopher]),
            ("guardian_security_hq.csv", vec![anonymised]),
        ])
    );
}

/// The user on two rows of a recorded report: one set of series, from the row that has
/// his key and its use in November 2016 (the other has no key at all), and one warning.
#[test]
fn the_user_on_two_rows_is_served_once_from_his_later_row() {
    let Some(dir) = reports() else {
        return;
    };
    let output = once(&dir.join("c7n_account_credential_report.csv"));
    let text = String::from_utf8(output.stdout).unwrap();
    let metrics = Metrics::parse(&text);
    let labels = [
        ("account_id", "644160558196"),
        ("user", "christopher"),
        ("access_key_id", "slot1"),
    ];
    assert_eq!(
        metrics.get("aws_iam_access_key_last_used_timestamp_seconds", &labels),
        Some(1479753840.0),
        "2016-11-21T18:44:00Z"
    );
    assert_eq!(metrics.get("aws_iam_access_key_active", &labels), Some(1.0));
    for family in ["aws_iam_user_mfa_active", "aws_iam_user_password_enabled"] {
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with(family) && l.contains("user=\"christopher\""))
                .count(),
            1,
            "{family}"
        );
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr
            .matches("credential report lists user \"christopher\" on lines 9, 10; using line 10")
            .count(),
        1,
        "{stderr}"
    );
}

/// The anonymised 10-digit account id is kept as written, with one warning naming the ARN.
#[test]
fn a_ten_digit_account_id_is_kept_and_warned_about() {
    let Some(dir) = reports() else {
        return;
    };
    let output = once(&dir.join("guardian_security_hq.csv"));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(!text.contains("account_id=\"unknown\""));
    assert!(text.contains("aws_iam_root_access_keys_present{account_id=\"0123456789\"} 0\n"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr
            .matches("ARN \"arn:aws:iam::0123456789:root\" has account id \"0123456789\"")
            .count(),
        1,
        "{stderr}"
    );
}

/// The report of 2014-2015 has no last-used columns: refused, saying so, by the binary
/// and by the library.
#[test]
fn the_old_sixteen_column_report_is_refused_as_the_old_format() {
    let Some(dir) = reports() else {
        return;
    };
    let path = dir.join(OLD_FORMAT);
    let output = once(&path);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "credential report is in the old format of 2014-2015, without the last-used columns"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("access_key_2_last_used_service"),
        "{stderr}"
    );
    assert!(
        stderr.contains(OLD_FORMAT),
        "the message names the file: {stderr}"
    );
    assert!(output.stdout.is_empty());
    assert!(matches!(
        credential_report::read(&std::fs::read(&path).unwrap()),
        Err(ReportError::OldFormat { missing }) if missing.len() == 6
    ));
}
