//! The change feed against the moto peer, whose IAM calls are recorded in a CloudTrail
//! event history (a test-side extension: tests/peers/cloudtrail.md). Once the first
//! refresh has listed every user, a refresh with nothing changed costs two calls, and
//! each kind of change made through IAM shows on /metrics by the next refresh, also when
//! the event history shows the event later than the poll that covered its time.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(60);
const SCENARIO: &str = "tests/peers/sample-inventory.json";

/// A refresh every second, a whole list only every hour: every refresh after the first
/// follows the feed. No service-access jobs, so that the requests counted are the key
/// refresh's alone.
fn start(moto: &Moto, dir: &std::path::Path) -> Exporter {
    let config = dir.join("exporter.toml");
    std::fs::write(&config, "[tags]\nkeys = [\"team\"]\n").unwrap();
    let exporter = Exporter::start_with(
        &["--config.file", config.to_str().unwrap()],
        &[
            ("IAM_KEY_EXPORTER_AWS__ENDPOINT_URL", &moto.endpoint),
            ("IAM_KEY_EXPORTER_REFRESH__INTERVAL", "1s"),
            ("IAM_KEY_EXPORTER_REFRESH__FULL_INTERVAL", "1h"),
            ("IAM_KEY_EXPORTER_SERVICE_ACCESS__ENABLED", "false"),
        ],
    );
    exporter.wait_ready();
    exporter
}

/// The account's last successful refresh, which moves at every refresh.
fn refreshed_at(metrics: &Metrics) -> f64 {
    metrics.value(
        "iam_key_exporter_last_refresh_success_timestamp_seconds",
        &[],
    )
}

/// Every request the exporter counted, by operation.
fn requests(metrics: &Metrics) -> BTreeMap<String, f64> {
    metrics
        .0
        .iter()
        .filter_map(|(series, value)| {
            let operation = series
                .strip_prefix("iam_key_exporter_aws_requests_total{operation=\"")?
                .strip_suffix("\"}")?;
            Some((operation.to_string(), *value))
        })
        .collect()
}

/// Waits for `n` more refreshes to finish and returns the metrics then.
fn after_refreshes(exporter: &Exporter, n: usize) -> Metrics {
    let mut last = refreshed_at(&exporter.metrics());
    for _ in 0..n {
        last = wait_for("a refresh", LIMIT, || {
            let at = refreshed_at(&exporter.metrics());
            (at > last).then_some(at)
        });
    }
    exporter.metrics()
}

/// Waits until `shown` holds on /metrics and returns how long it took. Two refreshes
/// finishing first is an error: the first may have started before the change, the second
/// started after it and must have shown it.
fn shown_by_next_refresh(
    exporter: &Exporter,
    what: &str,
    shown: impl Fn(&Metrics) -> bool,
) -> Duration {
    let started = Instant::now();
    let mut refreshes = 0;
    let mut last = refreshed_at(&exporter.metrics());
    loop {
        let metrics = exporter.metrics();
        if shown(&metrics) {
            return started.elapsed();
        }
        let at = refreshed_at(&metrics);
        if at > last {
            refreshes += 1;
            last = at;
        }
        assert!(refreshes < 2 + 1, "{what}: not shown after two refreshes");
        assert!(
            started.elapsed() < LIMIT,
            "{what}: not shown within {LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn key_series(metrics: &Metrics, user: &str) -> Vec<(String, f64)> {
    metrics
        .0
        .iter()
        .filter(|(series, _)| {
            series.starts_with("aws_iam_access_key_active{")
                && series.contains(&format!("user=\"{user}\""))
        })
        .map(|(series, value)| (series.clone(), *value))
        .collect()
}

#[test]
fn a_refresh_with_nothing_changed_costs_two_calls_and_each_change_shows_by_the_next() {
    let Some(moto) = Moto::start(&root().join(SCENARIO)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let exporter = start(&moto, dir.path());
    // The second refresh is the first to follow the feed; measure the ones after it.
    let before = after_refreshes(&exporter, 2);
    let after = after_refreshes(&exporter, 3);
    let (before, after) = (requests(&before), requests(&after));
    let mut spent: BTreeMap<&str, f64> = BTreeMap::new();
    for (operation, n) in &after {
        let delta = n - before.get(operation).copied().unwrap_or(0.0);
        if delta > 0.0 {
            spent.insert(operation, delta);
        }
    }
    // Three refreshes: LookupEvents and GetAccountSummary each, nothing else.
    assert_eq!(
        spent,
        BTreeMap::from([("GetAccountSummary", 3.0), ("LookupEvents", 3.0)]),
        "steady state"
    );

    let iam = moto.iam_client();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut latencies = Vec::new();

    // A new user with a key.
    runtime.block_on(async {
        iam.create_user()
            .user_name("newcomer")
            .send()
            .await
            .unwrap();
        iam.tag_user()
            .user_name("newcomer")
            .tags(
                aws_sdk_iam::types::Tag::builder()
                    .key("team")
                    .value("payments")
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
        iam.create_access_key()
            .user_name("newcomer")
            .send()
            .await
            .unwrap();
    });
    latencies.push(shown_by_next_refresh(&exporter, "a new user's key", |m| {
        key_series(m, "newcomer")
            .iter()
            .any(|(series, value)| *value == 1.0 && series.contains("tag_team=\"payments\""))
    }));
    let key_id = {
        let series = key_series(&exporter.metrics(), "newcomer");
        label(&series[0].0, "access_key_id").unwrap().to_string()
    };

    // Deactivated.
    runtime.block_on(async {
        iam.update_access_key()
            .user_name("newcomer")
            .access_key_id(&key_id)
            .status(aws_sdk_iam::types::StatusType::Inactive)
            .send()
            .await
            .unwrap();
    });
    latencies.push(shown_by_next_refresh(&exporter, "a deactivated key", |m| {
        key_series(m, "newcomer")
            .iter()
            .any(|(_, value)| *value == 0.0)
    }));

    // A tag changed.
    runtime.block_on(async {
        iam.tag_user()
            .user_name("newcomer")
            .tags(
                aws_sdk_iam::types::Tag::builder()
                    .key("team")
                    .value("risk")
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    });
    latencies.push(shown_by_next_refresh(&exporter, "a changed tag", |m| {
        key_series(m, "newcomer")
            .iter()
            .any(|(series, _)| series.contains("tag_team=\"risk\""))
    }));

    // Deleted: the key, then the user.
    runtime.block_on(async {
        iam.delete_access_key()
            .user_name("newcomer")
            .access_key_id(&key_id)
            .send()
            .await
            .unwrap();
    });
    latencies.push(shown_by_next_refresh(&exporter, "a deleted key", |m| {
        key_series(m, "newcomer").is_empty()
    }));
    runtime.block_on(async {
        iam.untag_user()
            .user_name("newcomer")
            .tag_keys("team")
            .send()
            .await
            .unwrap();
        iam.delete_user()
            .user_name("newcomer")
            .send()
            .await
            .unwrap();
    });
    latencies.push(shown_by_next_refresh(&exporter, "a deleted user", |m| {
        !m.0.keys()
            .any(|series| series.contains("user=\"newcomer\""))
    }));
    eprintln!("change to /metrics, refresh every 1s: {latencies:?}");

    // Nothing was listed whole after the first refresh: ListUsers was called once.
    let m = exporter.metrics();
    assert_eq!(m.aws_requests("ListUsers"), 1.0);
    assert!(m.aws_requests("GetUser") >= 1.0);
    assert_eq!(
        m.get(
            "iam_key_exporter_account_feature_degraded",
            &[("account_id", "123456789012"), ("feature", "change_feed")]
        ),
        Some(0.0)
    );
}

#[test]
fn an_event_the_history_shows_late_is_still_found() {
    // Every event shows 5 s after its call: later than the polls that first cover its
    // time, which look back `change_feed.overlap` and find it once it shows.
    let Some(moto) = Moto::start_with(&root().join(SCENARIO), &["--cloudtrail-delay", "5"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let exporter = start(&moto, dir.path());
    after_refreshes(&exporter, 2);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let iam = moto.iam_client();
    let changed = std::time::SystemTime::now();
    let hidden = runtime.block_on(async {
        iam.create_user()
            .user_name("latecomer")
            .send()
            .await
            .unwrap();
        iam.create_access_key()
            .user_name("latecomer")
            .send()
            .await
            .unwrap();
        // The event history does not show the calls yet.
        let events = moto
            .cloudtrail_client()
            .lookup_events()
            .start_time((changed - Duration::from_secs(60)).into())
            .send()
            .await
            .unwrap()
            .events
            .unwrap_or_default();
        !events
            .iter()
            .any(|e| e.event_name.as_deref() == Some("CreateAccessKey"))
    });
    assert!(hidden, "the peer shows events late");
    // Polls finish while the event is hidden, and find it once it shows.
    let m = after_refreshes(&exporter, 1);
    assert!(
        key_series(&m, "latecomer").is_empty(),
        "shown before its event"
    );
    wait_for("the late event's key", LIMIT, || {
        (!key_series(&exporter.metrics(), "latecomer").is_empty()).then_some(())
    });
    assert_eq!(
        exporter.metrics().aws_requests("ListUsers"),
        1.0,
        "no whole list"
    );
}

/// Service-access jobs run so far, whatever their result.
fn jobs(metrics: &Metrics) -> f64 {
    metrics
        .0
        .iter()
        .filter(|(series, _)| series.starts_with("iam_key_exporter_service_access_jobs_total{"))
        .map(|(_, value)| value)
        .sum()
}

fn completed(metrics: &Metrics) -> f64 {
    metrics.value(
        "iam_key_exporter_service_access_jobs_total",
        &[("result", "completed")],
    )
}

#[test]
fn a_policy_put_on_a_user_runs_that_users_job_alone_by_the_next_refresh() {
    let Some(moto) = Moto::start(&root().join(SCENARIO)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("exporter.toml");
    std::fs::write(&config, "").unwrap();
    // The pass's own interval is an hour: only the feed can run a job within the test.
    // Users' jobs only, so that the jobs counted are the users' (roles' are counted by
    // tests/roles.rs).
    let exporter = Exporter::start_with(
        &["--config.file", config.to_str().unwrap()],
        &[
            ("IAM_KEY_EXPORTER_AWS__ENDPOINT_URL", &moto.endpoint),
            ("IAM_KEY_EXPORTER_REFRESH__INTERVAL", "1s"),
            ("IAM_KEY_EXPORTER_SERVICE_ACCESS__INTERVAL", "1h"),
            ("IAM_KEY_EXPORTER_SERVICE_ACCESS__ROLES", "false"),
        ],
    );
    exporter.wait_ready();
    let first_pass = wait_for("the first service-access pass", LIMIT, || {
        let m = exporter.metrics();
        (m.value(
            "iam_key_exporter_service_access_last_run_timestamp_seconds",
            &[],
        ) > 0.0)
            .then(|| jobs(&m))
    });
    assert!(
        first_pass >= 2.0,
        "one job per user with keys: {first_pass}"
    );
    let before = after_refreshes(&exporter, 3);
    assert_eq!(jobs(&before), first_pass, "nothing changed, no job");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        moto.iam_client()
            .put_user_policy()
            .user_name("ci-bot")
            .policy_name("pull-images")
            .policy_document(
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:BatchGetImage","Resource":"*"}]}"#,
            )
            .send()
            .await
            .unwrap();
    });
    wait_for("ci-bot's job", LIMIT, || {
        (jobs(&exporter.metrics()) > first_pass).then_some(())
    });
    let m = after_refreshes(&exporter, 3);
    // ci-bot's, and again those of the first pass that did not complete.
    let retried = first_pass - completed(&before);
    assert_eq!(jobs(&m), first_pass + 1.0 + retried, "ci-bot's job alone");
    assert_eq!(completed(&m), completed(&before) + 1.0);
    assert!(
        m.get(
            "aws_iam_user_services_granted",
            &[("account_id", "123456789012"), ("user", "ci-bot")]
        )
        .is_some()
    );
}
