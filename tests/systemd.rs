//! The systemd integration: the notify protocol against a test socket, and the shipped
//! unit checked by systemd-analyze (verify must be silent; the exposure must stay ≤ 1.5).

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Collects datagrams until `done` says so or `limit` passes.
fn receive_until(
    socket: &UnixDatagram,
    limit: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut messages = Vec::new();
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline && !done(&messages) {
        if let Ok(n) = socket.recv(&mut buffer) {
            messages.push(String::from_utf8_lossy(&buffer[..n]).to_string());
        }
    }
    messages
}

#[test]
fn ready_after_the_first_refresh_watchdog_while_running_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&path).unwrap();
    let config = root().join("config/sample-report.toml");
    let mut exporter = Exporter::start_with(
        &["--config.file", config.to_str().unwrap()],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );

    let messages = receive_until(&systemd, Duration::from_secs(30), |m| {
        m.iter().any(|s| s.starts_with("READY=1"))
            && m.iter().filter(|s| *s == "WATCHDOG=1").count() >= 3
    });
    assert!(
        messages.contains(&"READY=1\nSTATUS=serving".to_string()),
        "{messages:?}"
    );
    assert!(
        messages.iter().filter(|s| *s == "WATCHDOG=1").count() >= 3,
        "pings every 100 ms: {messages:?}"
    );
    assert_eq!(
        exporter.get("/-/ready").status,
        200,
        "READY=1 came after the first refresh"
    );

    let status = exporter
        .signal_and_wait("TERM", Duration::from_secs(10))
        .expect("exits");
    assert!(status.success());
    let after = receive_until(&systemd, Duration::from_secs(1), |m| {
        m.iter().any(|s| s == "STOPPING=1")
    });
    assert!(after.contains(&"STOPPING=1".to_string()), "{after:?}");
}

#[test]
fn ready_even_when_the_first_refresh_fails_with_the_reason_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&path).unwrap();
    let endpoint = closed_endpoint();
    let _exporter = Exporter::start(&endpoint, &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let messages = receive_until(&systemd, Duration::from_secs(60), |m| {
        m.iter().any(|s| s.starts_with("READY=1"))
    });
    let ready = messages
        .iter()
        .find(|s| s.starts_with("READY=1"))
        .expect("READY=1");
    assert!(
        ready.starts_with(
            "READY=1\nSTATUS=first refresh failed: GetCallerIdentity failed (dispatch)"
        ),
        "{ready}"
    );
    assert_eq!(ready.lines().count(), 2, "one STATUS line");
}

/// The shipped unit with ExecStart pointing at the binary under test, which verify
/// checks for.
fn unit_under_test(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    which("systemd-analyze")?;
    let unit = std::fs::read_to_string(root().join("systemd/iam-key-exporter.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/iam-key-exporter "));
    let unit = unit.replace(
        "/usr/local/bin/iam-key-exporter",
        env!("CARGO_BIN_EXE_iam-key-exporter"),
    );
    let path = dir.join("iam-key-exporter.service");
    std::fs::write(&path, unit).unwrap();
    Some(path)
}

#[test]
fn the_unit_verifies_without_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let Some(unit) = unit_under_test(dir.path()) else {
        return;
    };
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stderr, "", "systemd-analyze verify must be silent");
}

#[test]
fn the_unit_is_hardened_to_an_exposure_of_at_most_1_5() {
    let dir = tempfile::tempdir().unwrap();
    let Some(unit) = unit_under_test(dir.path()) else {
        return;
    };
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=15"])
        .arg(&unit)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let exposure: f64 = stdout
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for iam-key-exporter.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure in {stdout}"));
    assert!(exposure <= 1.5, "exposure {exposure}");
}
