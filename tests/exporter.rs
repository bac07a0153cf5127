//! The built exporter, scraped over HTTP: against a real IAM API (moto, seeded with past
//! dates) for exact values, deletions and an outage; alone for readiness, timeouts, signals.

mod common;

use std::io::Read;
use std::time::Duration;

use common::*;

fn sample() -> std::path::PathBuf {
    root().join("tests/peers/sample-inventory.json")
}

fn assert_close(what: &str, got: f64, expected: f64, tolerance: f64) {
    assert!(
        (got - expected).abs() <= tolerance,
        "{what}: got {got}, expected {expected} ± {tolerance}"
    );
}

#[test]
fn serves_every_seeded_key_with_exact_values() {
    let Some(moto) = Moto::start(&sample()) else {
        return;
    };
    let exporter = Exporter::start(&moto.endpoint, &[]);
    exporter.wait_ready();
    let account = moto.seeded["account_id"].as_str().unwrap();
    let users = moto.seeded["users"].as_array().unwrap();

    // Service counts arrive from their own loop shortly after the first inventory, for
    // the users that hold a key: their series carry the counts.
    let has_keys = |u: &serde_json::Value| !u["keys"].as_array().unwrap().is_empty();
    // And for every role but the service-linked ones, in the same first pass.
    let roles = moto.roles_with_jobs();
    let with_jobs = (users.iter().filter(|u| has_keys(u)).count() + roles.len()) as f64;
    let completed_jobs = (users
        .iter()
        .filter(|u| has_keys(u) && u["service_job"] == "completed")
        .count()
        + roles
            .iter()
            .filter(|r| r["service_job"] == "completed")
            .count()) as f64;
    assert!(
        users
            .iter()
            .any(|u| !has_keys(u) && u["service_job"] == "completed"),
        "the sample has a user without keys whose job would complete"
    );
    let metrics = wait_for("service counts", Duration::from_secs(60), || {
        let m = exporter.metrics();
        let done = m.get(
            "iam_key_exporter_service_access_last_run_timestamp_seconds",
            &[],
        );
        (done.unwrap_or(0.0) > 0.0).then_some(m)
    });
    let now = now_secs();

    let mut key_count = 0;
    for user in users {
        let name = user["name"].as_str().unwrap();
        for key in user["keys"].as_array().unwrap() {
            key_count += 1;
            let id = key["access_key_id"].as_str().unwrap();
            let labels = [
                ("account_id", account),
                ("user", name),
                ("access_key_id", id),
            ];
            let created = key["create_date"].as_f64().unwrap();
            assert_eq!(
                metrics.value("aws_iam_access_key_created_timestamp_seconds", &labels),
                created,
                "{id} created"
            );
            assert_close(
                &format!("{id} age"),
                metrics.value("aws_iam_access_key_age_seconds", &labels),
                now - created,
                60.0,
            );
            let active = if key["status"] == "Active" { 1.0 } else { 0.0 };
            assert_eq!(
                metrics.value("aws_iam_access_key_active", &labels),
                active,
                "{id} active"
            );
            match key["last_used_date"].as_f64() {
                Some(used) => {
                    assert_eq!(metrics.value("aws_iam_access_key_never_used", &labels), 0.0);
                    assert_eq!(
                        metrics.value("aws_iam_access_key_last_used_timestamp_seconds", &labels),
                        used,
                        "{id} last used"
                    );
                    assert_close(
                        &format!("{id} idle"),
                        metrics.value("aws_iam_access_key_idle_seconds", &labels),
                        now - used,
                        60.0,
                    );
                    let service = key["last_used_service"].as_str().unwrap();
                    let region = key["last_used_region"].as_str().unwrap();
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
                    assert_eq!(
                        metrics.value("aws_iam_access_key_never_used", &labels),
                        1.0,
                        "{id}"
                    );
                    assert_eq!(
                        metrics.get("aws_iam_access_key_last_used_timestamp_seconds", &labels),
                        None,
                        "{id} has no last-used timestamp"
                    );
                    assert_eq!(
                        metrics.count_with(
                            "aws_iam_access_key_last_used_info",
                            "access_key_id",
                            id
                        ),
                        0
                    );
                    // Idle since creation.
                    assert_close(
                        &format!("{id} idle"),
                        metrics.value("aws_iam_access_key_idle_seconds", &labels),
                        now - created,
                        60.0,
                    );
                }
            }
        }
        let user_labels = [("account_id", account), ("user", name)];
        assert_eq!(
            metrics.value("aws_iam_user_created_timestamp_seconds", &user_labels),
            user["create_date"].as_f64().unwrap(),
            "{name} created"
        );
        if has_keys(user) && user["service_job"] == "completed" {
            assert_eq!(
                metrics.value("aws_iam_user_services_accessed", &user_labels),
                user["services_accessed"].as_f64().unwrap(),
                "{name} accessed"
            );
            assert_eq!(
                metrics.value("aws_iam_user_services_granted", &user_labels),
                user["services_granted"].as_f64().unwrap(),
                "{name} granted"
            );
        } else {
            assert_eq!(
                metrics.get("aws_iam_user_services_granted", &user_labels),
                None,
                "{name}"
            );
        }
    }
    assert!(key_count >= 5, "the sample has keys of every kind");
    assert_eq!(
        metrics.value("iam_key_exporter_snapshot_access_keys", &[]),
        key_count as f64
    );
    assert_eq!(
        metrics.value("iam_key_exporter_snapshot_users", &[]),
        users.len() as f64
    );
    assert_eq!(metrics.value("iam_key_exporter_refresh_success", &[]), 1.0);
    assert_eq!(
        metrics.value(
            "iam_key_exporter_service_access_jobs_total",
            &[("result", "completed")]
        ),
        completed_jobs
    );
    assert_eq!(
        metrics.value(
            "iam_key_exporter_service_access_jobs_total",
            &[("result", "failed")]
        ),
        with_jobs - completed_jobs
    );
    // One ListUsers call (moto returns a single page) and one ListAccessKeys per user.
    assert_eq!(
        metrics.value(
            "iam_key_exporter_aws_requests_total",
            &[("operation", "ListUsers")]
        ),
        1.0
    );
    assert_eq!(
        metrics.value(
            "iam_key_exporter_aws_requests_total",
            &[("operation", "ListAccessKeys")]
        ),
        users.len() as f64
    );
    assert_eq!(
        metrics.value(
            "iam_key_exporter_aws_requests_total",
            &[("operation", "GetCallerIdentity")]
        ),
        1.0
    );
    assert!(metrics.get("process_resident_memory_bytes", &[]).unwrap() > 0.0);

    // No secret reaches a label or a log line.
    let text = exporter.get("/metrics").text();
    assert!(!text.contains(TEST_SECRET));
    assert!(!exporter.logs().contains(TEST_SECRET));

    if let Some(said) = promtool_check_metrics(&text) {
        assert_eq!(said, "", "promtool check metrics must be silent");
    }
}

#[test]
fn scrapes_are_gzipped_on_request_and_pages_are_served() {
    let Some(moto) = Moto::start(&sample()) else {
        return;
    };
    let exporter = Exporter::start(&moto.endpoint, &[]);
    exporter.wait_ready();

    let plain = exporter.get("/metrics");
    assert_eq!(plain.status, 200);
    assert_eq!(
        plain.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(plain.header("content-encoding"), None);

    let zipped = http_get(
        &exporter.address,
        "/metrics",
        &[("Accept-Encoding", "gzip")],
    );
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(&zipped.body[..])
        .read_to_string(&mut text)
        .expect("valid gzip");
    let inventory = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with("aws_iam_"))
            .map(String::from)
            .collect()
    };
    assert!(!inventory(&text).is_empty());
    assert_eq!(
        inventory(&text),
        inventory(&plain.text()),
        "same snapshot either way"
    );

    let landing = exporter.get("/");
    assert_eq!(landing.status, 200);
    let html = landing.text();
    assert!(html.contains("<a href=\"/metrics\">"), "{html}");
    assert!(html.contains(env!("CARGO_PKG_VERSION")));
    assert!(html.contains("Last refresh: succeeded at"), "{html}");

    assert_eq!(exporter.get("/-/healthy").status, 200);
    assert_eq!(exporter.get("/nope").status, 404);
}

#[test]
fn a_deleted_user_vanishes_at_the_next_refresh() {
    let Some(moto) = Moto::start(&sample()) else {
        return;
    };
    let exporter = Exporter::start(
        &moto.endpoint,
        &[("IAM_KEY_EXPORTER_REFRESH__INTERVAL", "1s")],
    );
    exporter.wait_ready();
    let victim = &moto.seeded["users"][0];
    let name = victim["name"].as_str().unwrap();
    assert!(
        exporter
            .metrics()
            .count_with("aws_iam_access_key_active", "user", name)
            > 0
    );

    // Deleted as an operator would: keys first, then the user.
    let iam = moto.iam_client();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        for key in victim["keys"].as_array().unwrap() {
            iam.delete_access_key()
                .user_name(name)
                .access_key_id(key["access_key_id"].as_str().unwrap())
                .send()
                .await
                .expect("DeleteAccessKey");
        }
        iam.delete_user()
            .user_name(name)
            .send()
            .await
            .expect("DeleteUser");
    });

    let metrics = wait_for(
        "the user's series to vanish",
        Duration::from_secs(30),
        || {
            let m = exporter.metrics();
            (m.0.keys().all(|k| !k.contains(&format!("user=\"{name}\"")))).then_some(m)
        },
    );
    let other = moto.seeded["users"][1]["name"].as_str().unwrap();
    assert!(
        metrics.count_with("aws_iam_access_key_active", "user", other) > 0,
        "others stay"
    );
}

#[test]
fn an_iam_outage_keeps_the_last_good_data_and_says_so() {
    let Some(mut moto) = Moto::start(&sample()) else {
        return;
    };
    let exporter = Exporter::start(
        &moto.endpoint,
        &[("IAM_KEY_EXPORTER_REFRESH__INTERVAL", "1s")],
    );
    exporter.wait_ready();
    let before = exporter.metrics();
    let last_success = before.value(
        "iam_key_exporter_last_refresh_success_timestamp_seconds",
        &[],
    );

    moto.stop();
    let during = wait_for("a failed refresh", Duration::from_secs(60), || {
        let m = exporter.metrics();
        (m.value("iam_key_exporter_refresh_success", &[]) == 0.0).then_some(m)
    });
    let inventory = |m: &Metrics| -> Vec<(String, f64)> {
        m.0.iter()
            .filter(|(k, _)| k.starts_with("aws_iam_access_key_active"))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    };
    assert_eq!(
        inventory(&during),
        inventory(&before),
        "the last good data is still served"
    );
    assert!(!inventory(&during).is_empty());
    assert!(during.value("iam_key_exporter_refresh_failures_total", &[]) >= 1.0);
    assert!(
        during.value(
            "iam_key_exporter_last_refresh_success_timestamp_seconds",
            &[]
        ) <= last_success + 2.0,
        "the data's age keeps growing"
    );
    assert!(
        during
            .0
            .keys()
            .any(|k| k.starts_with("iam_key_exporter_aws_errors_total{"))
    );
    assert_eq!(exporter.get("/-/ready").status, 200, "data is still served");
    assert!(
        exporter
            .get("/")
            .text()
            .contains("Last refresh: <strong>failed</strong>")
    );
}

#[test]
fn not_ready_until_a_first_refresh_succeeds_and_never_exits_on_aws_errors() {
    // Nothing listens on this endpoint: every call fails.
    let endpoint = closed_endpoint();
    let exporter = Exporter::start(&endpoint, &[("IAM_KEY_EXPORTER_REFRESH__INTERVAL", "1s")]);

    let metrics = wait_for("two failed refreshes", Duration::from_secs(60), || {
        let m = exporter.metrics();
        (m.get("iam_key_exporter_refresh_failures_total", &[])
            .unwrap_or(0.0)
            >= 2.0)
            .then_some(m)
    });
    assert_eq!(metrics.value("iam_key_exporter_refresh_success", &[]), 0.0);
    assert_eq!(
        metrics.count_with("aws_iam_access_key_active", "account_id", "123456789012"),
        0
    );
    assert_eq!(
        metrics.value(
            "iam_key_exporter_aws_errors_total",
            &[("operation", "GetCallerIdentity"), ("code", "dispatch")]
        ),
        metrics.value("iam_key_exporter_refresh_failures_total", &[]),
        "each refresh failed at its first call"
    );
    assert_eq!(exporter.get("/-/ready").status, 503);
    assert_eq!(exporter.get("/-/healthy").status, 200);
}

#[test]
fn sigterm_and_sigint_exit_zero_promptly() {
    let Some(moto) = Moto::start(&sample()) else {
        return;
    };
    for signal in ["TERM", "INT"] {
        let mut exporter = Exporter::start(&moto.endpoint, &[]);
        exporter.wait_ready();
        let status = exporter
            .signal_and_wait(signal, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no exit within 10 s of SIG{signal}"));
        assert!(status.success(), "SIG{signal}: {status:?}");
        assert!(exporter.logs().contains("shutting down"));
    }
}

#[test]
fn a_client_that_never_sends_headers_is_disconnected() {
    use std::io::Read as _;
    // No AWS needed: the HTTP server answers whatever the refreshers do.
    let endpoint = closed_endpoint();
    let exporter = Exporter::start(
        &endpoint,
        &[("IAM_KEY_EXPORTER_WEB__HEADER_READ_TIMEOUT", "1s")],
    );

    let mut idle = std::net::TcpStream::connect(&exporter.address).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buffer = Vec::new();
    // The server closes the connection (EOF or reset) instead of holding it forever.
    let _ = idle.read_to_end(&mut buffer);
    assert!(
        buffer.is_empty() || String::from_utf8_lossy(&buffer).starts_with("HTTP/1.1 408"),
        "unexpected answer {:?}",
        String::from_utf8_lossy(&buffer)
    );
    assert_eq!(
        exporter.get("/-/healthy").status,
        200,
        "other clients are still served"
    );
}

#[test]
fn filtered_users_cost_no_calls_and_masked_ids_keep_their_last_four_characters() {
    let Some(moto) = Moto::start(&sample()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[source]\nkind = \"api\"\n[service_access]\nenabled = false\n\
         [filter]\nexclude_paths = [\"/automation/\"]\nexclude_users = [\"bo?\"]\n\
         [labels]\nmask_key_ids = true\n",
    )
    .unwrap();
    let exporter = Exporter::start_with(
        &["--config.file", config.to_str().unwrap()],
        &[("IAM_KEY_EXPORTER_AWS__ENDPOINT_URL", moto.endpoint.as_str())],
    );
    exporter.wait_ready();
    let metrics = exporter.metrics();

    let kept: Vec<&serde_json::Value> = moto.seeded["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| !u["path"].as_str().unwrap().starts_with("/automation/") && u["name"] != "bob")
        .collect();
    assert!(
        kept.iter()
            .any(|u| !u["keys"].as_array().unwrap().is_empty()),
        "a kept user has keys"
    );
    let mut expected = Vec::new();
    for user in &kept {
        for key in user["keys"].as_array().unwrap() {
            let id = key["access_key_id"].as_str().unwrap();
            expected.push(format!("{}****{}", &id[..4], &id[16..]));
            assert!(!metrics.0.keys().any(|k| k.contains(id)), "{id} is masked");
        }
    }
    let mut shown: Vec<String> = metrics
        .0
        .keys()
        .filter(|k| k.starts_with("aws_iam_access_key_active{"))
        .map(|k| label(k, "access_key_id").unwrap().to_string())
        .collect();
    shown.sort();
    expected.sort();
    assert_eq!(shown, expected, "only the kept users' keys, masked");
    assert_eq!(
        metrics.aws_requests("ListAccessKeys"),
        kept.len() as f64,
        "no calls for filtered users"
    );
}

#[test]
fn connections_beyond_the_cap_wait_until_one_closes() {
    use std::io::{Read as _, Write as _};
    let endpoint = closed_endpoint();
    let exporter = Exporter::start(
        &endpoint,
        &[
            ("IAM_KEY_EXPORTER_WEB__MAX_CONNECTIONS", "1"),
            ("IAM_KEY_EXPORTER_WEB__HEADER_READ_TIMEOUT", "60s"),
        ],
    );
    // The one allowed connection, idle.
    let idle = std::net::TcpStream::connect(&exporter.address).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // A second one is connected by the kernel but not served.
    let mut waiting = std::net::TcpStream::connect(&exporter.address).unwrap();
    waiting
        .write_all(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut answer = Vec::new();
    assert!(
        waiting.read_to_end(&mut answer).is_err(),
        "served beyond the cap: {answer:?}"
    );
    // Once the first closes, the waiting one is served.
    drop(idle);
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    waiting.read_to_end(&mut answer).unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{answer:?}"
    );
}

/// `--once` with the test environment of `Exporter` (shortened polls) and `extra` flags.
fn once_against(endpoint: &str, extra: &[&str]) -> (Metrics, String) {
    let output = exporter_command()
        .arg("--once")
        .args(extra)
        .env("IAM_KEY_EXPORTER_AWS__ENDPOINT_URL", endpoint)
        .env("IAM_KEY_EXPORTER_SERVICE_ACCESS__POLL_INTERVAL", "100ms")
        .env(
            "IAM_KEY_EXPORTER_SERVICE_ACCESS__POLL_INTERVAL_MAX",
            "200ms",
        )
        .output()
        .expect("run iam-key-exporter --once");
    let logs = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{logs}");
    let text = String::from_utf8(output.stdout).expect("UTF-8 exposition");
    (Metrics::parse(&text), logs)
}

#[test]
fn once_leaves_the_service_access_pass_out_unless_asked() {
    let Some(moto) = Moto::start(&sample()) else {
        return;
    };
    let generated = "GenerateServiceLastAccessedDetails";

    let (metrics, _) = once_against(&moto.endpoint, &[]);
    assert_eq!(
        metrics.get(
            "iam_key_exporter_aws_requests_total",
            &[("operation", generated)]
        ),
        None
    );
    assert!(
        !metrics
            .0
            .keys()
            .any(|k| k.starts_with("aws_iam_user_services_granted{")),
        "no pass, no counts"
    );

    let (metrics, _) = once_against(&moto.endpoint, &["--once.service-access"]);
    let users = moto.seeded["users"].as_array().unwrap();
    let with_keys = users
        .iter()
        .filter(|u| !u["keys"].as_array().unwrap().is_empty())
        .count();
    let roles = moto.roles_with_jobs().len();
    // One job per user holding a key and per role but the service-linked ones, no other.
    assert_eq!(metrics.aws_requests(generated), (with_keys + roles) as f64);
    assert!(
        metrics
            .0
            .keys()
            .any(|k| k.starts_with("aws_iam_user_services_granted{")),
        "{:?}",
        metrics.0.keys().collect::<Vec<_>>()
    );
}

#[test]
fn all_users_runs_a_job_for_users_without_keys_too() {
    let Some(moto) = Moto::start(&sample()) else {
        return;
    };
    let users = moto.seeded["users"].as_array().unwrap();
    let keyless: Vec<&str> = users
        .iter()
        .filter(|u| u["keys"].as_array().unwrap().is_empty() && u["service_job"] == "completed")
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert!(
        !keyless.is_empty(),
        "the sample has a keyless user whose job completes"
    );
    let exporter = Exporter::start(
        &moto.endpoint,
        &[("IAM_KEY_EXPORTER_SERVICE_ACCESS__ALL_USERS", "true")],
    );
    exporter.wait_ready();
    let account = moto.seeded["account_id"].as_str().unwrap();
    let metrics = wait_for("a whole pass", Duration::from_secs(60), || {
        let m = exporter.metrics();
        let done = m.get(
            "iam_key_exporter_service_access_last_run_timestamp_seconds",
            &[],
        );
        (done.unwrap_or(0.0) > 0.0).then_some(m)
    });
    for name in keyless {
        assert!(
            metrics
                .get(
                    "aws_iam_user_services_granted",
                    &[("account_id", account), ("user", name)],
                )
                .is_some(),
            "{name}"
        );
    }
    // Every user's job, and every role's but the service-linked ones'.
    let roles = moto.roles_with_jobs().len();
    assert_eq!(
        metrics.aws_requests("GenerateServiceLastAccessedDetails"),
        (users.len() + roles) as f64
    );
}
