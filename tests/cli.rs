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
