//! The binary's command line: configuration errors exit 2 and name the key and value;
//! the shipped example validates.

mod common;

use std::process::Command;

use common::root;

fn exporter() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_iam-key-exporter"));
    command.env_clear();
    command
}

#[test]
fn the_shipped_example_validates() {
    let output = exporter()
        .arg("--config.file")
        .arg(root().join("config/iam-key-exporter.toml"))
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn a_bad_file_exits_2_naming_key_and_value() {
    let output = exporter()
        .arg("--config.file")
        .arg(root().join("tests/config/bad-duration.bad.toml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("\"refresh.interval\" = \"5 parsecs\""),
        "{stderr}"
    );
}

#[test]
fn a_bad_environment_variable_exits_2_naming_it() {
    let output = exporter()
        .env("IAM_KEY_EXPORTER_REFRESH__CONCURRENCY", "lots")
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("IAM_KEY_EXPORTER_REFRESH__CONCURRENCY"),
        "{stderr}"
    );
}

#[test]
fn a_bad_flag_value_exits_2() {
    let output = exporter()
        .args(["--log.format", "xml", "--check-config"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--log.format"), "{stderr}");
}

#[test]
fn a_missing_file_exits_2() {
    let output = exporter()
        .args(["--config.file", "/nonexistent/iam-key-exporter.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn an_unknown_flag_exits_2() {
    let output = exporter().arg("--web.listen").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn once_prints_the_exposition_without_process_metrics() {
    let output = exporter()
        .arg("--config.file")
        .arg(root().join("config/sample-report.toml"))
        .arg("--once")
        // Anywhere: the report path is relative to the configuration file.
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains(
        "aws_iam_access_key_active{access_key_id=\"slot1\",account_id=\"210987654321\",user=\"alice\"} 1\n"
    ));
    assert!(text.contains("iam_key_exporter_refresh_success 1\n"));
    assert!(
        !text.contains("process_"),
        "node_exporter has its own process_* series"
    );
    if let Some(said) = common::promtool_check_metrics(&text) {
        assert_eq!(said, "");
    }
}

#[test]
fn once_writes_a_textfile_collector_file_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("iam_keys.prom");
    std::fs::write(&target, "old\n").unwrap();
    let status = exporter()
        .arg("--config.file")
        .arg(root().join("config/sample-report.toml"))
        .arg("--once")
        .arg("--once.file")
        .arg(&target)
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&target).unwrap();
    assert!(
        text.starts_with("# HELP aws_iam_access_key_active"),
        "{text}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left behind");
}

#[test]
fn once_exits_1_when_the_refresh_fails_and_leaves_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("iam_keys.prom");
    std::fs::write(&target, "previous\n").unwrap();
    let broken = dir.path().join("broken.csv");
    std::fs::write(
        &broken,
        "user,arn\nalice,arn:aws:iam::123456789012:user/alice\n",
    )
    .unwrap();
    let output = exporter()
        .env("IAM_KEY_EXPORTER_SOURCE__KIND", "credential_report_file")
        .env("IAM_KEY_EXPORTER_SOURCE__FILE", &broken)
        .arg("--once")
        .arg("--once.file")
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("credential report has no column"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "previous\n");
}
