//! Sharding across replicas, end to end on real components: exporter replicas sharing an
//! organization of 41 accounts in moto, one real Prometheus scraping them (targets found by
//! file-based service discovery, as pods are) and evaluating the shipped alert rules.
//!
//! What it proves, through Prometheus's HTTP API:
//! 1. three replicas export every account of the organization exactly once, and every key
//!    alert the seeded inventory calls for fires exactly once, with the key's tag labels;
//! 2. a stopped replica is named by IAMKeyExporterDown within its `for:`, while its
//!    accounts' key alerts are held by `keep_firing_for` until after that, and then
//!    resolve; the other replicas' key alerts neither vanish nor fire twice meanwhile;
//! 3. a rolling reshard from 3 to 4 replicas (as a StatefulSet does it: the new ordinal
//!    starts first, then 2, 1, 0 are each stopped and started with the new total) moves
//!    only the accounts the new replica wins, about a quarter; no account is missing for
//!    longer than one refresh interval; every key alert stays firing exactly once
//!    throughout, though the moved accounts are exported twice for a while.
//!
//! The rules are the shipped dashboards/alerts.yml with every `for:` and
//! `keep_firing_for:` divided by 60 (a minute there is a second here), so a 15m `for:`
//! takes 15 s and the durations keep their proportions: `keep_firing_for` (15m) still
//! outlasts IAMKeyExporterDown's `for:` (5m). Every expression is the shipped one; the
//! durations themselves are covered by promtool's unit tests (dashboards/alerts.test.yml).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// Member accounts besides the management account (which the organization lists too).
const MEMBERS: u64 = 40;
const REFRESH: Duration = Duration::from_secs(5);
const LIMIT: Duration = Duration::from_secs(60);
const DAY: f64 = 86_400.0;
/// A minute of the shipped rules' durations is this many seconds here.
const SCALE: f64 = 1.0 / 60.0;
const TEAMS: [&str; 4] = ["payments", "data", "platform", "web"];

/// The organization: the management account (one user whose key is 120 days old) and
/// `MEMBERS` member accounts, each with a user in good standing, and every second one a
/// user whose key is idle (over 90 or over 45 days) and old, every third one a user with
/// an old key in use and an inactive one, every fifth one a user with two active keys.
/// Member users carry a `team` tag, which the alerts must keep.
fn scenario() -> Value {
    let key =
        |created: f64, used: f64| json!({"created_days_ago": created, "last_used_days_ago": used});
    let accounts: Vec<Value> = (0..MEMBERS)
        .map(|i| {
            let tags = json!({"team": TEAMS[(i % 4) as usize]});
            let mut users = vec![json!({"name": format!("svc-{i}"), "created_days_ago": 30,
                "tags": tags, "keys": [key(20.0, 0.5)]})];
            if i % 2 == 0 {
                let idle = if i % 4 == 0 { 120.0 } else { 60.0 };
                users.push(json!({"name": format!("stale-{i}"), "created_days_ago": 300,
                    "tags": tags, "keys": [key(200.0, idle)]}));
            }
            if i % 3 == 0 {
                users.push(json!({"name": format!("legacy-{i}"), "created_days_ago": 500,
                    "tags": tags, "keys": [key(400.0, 1.0),
                        {"created_days_ago": 300, "status": "Inactive"}]}));
            }
            if i % 5 == 0 {
                users.push(json!({"name": format!("rotating-{i}"), "created_days_ago": 100,
                    "tags": tags, "keys": [key(60.0, 1.0), key(2.0, 0.1)]}));
            }
            json!({"account_id": format!("{:012}", 200_000_000_000 + i * 1_000_003), "users": users})
        })
        .collect();
    json!({
        "account_id": "123456789012",
        "users": [{"name": "hub-admin", "created_days_ago": 500, "keys": [key(120.0, 0.5)]}],
        "accounts": accounts,
        "organization": {"enabled": true},
    })
}

/// A key alert as Prometheus names it: (alertname, account_id, user, access_key_id), the
/// key id empty for IAMUserMultipleActiveKeys.
type KeyAlert = (String, String, String, String);

/// Every key alert the seeded inventory calls for, by the controls' definitions, with the
/// user's `team` tag.
fn expected_alerts(seeded: &Value, now: f64) -> BTreeMap<KeyAlert, Option<String>> {
    let mut accounts = vec![(seeded["account_id"].clone(), seeded["users"].clone())];
    for account in seeded["accounts"].as_array().unwrap() {
        accounts.push((account["account_id"].clone(), account["users"].clone()));
    }
    let mut expected = BTreeMap::new();
    for (account, users) in accounts {
        let account = account.as_str().unwrap().to_string();
        for user in users.as_array().unwrap() {
            let name = user["name"].as_str().unwrap().to_string();
            let team = user["tags"]["team"].as_str().map(str::to_string);
            let mut alert = |alertname: &str, key: &str| {
                let id = (alertname.into(), account.clone(), name.clone(), key.into());
                expected.insert(id, team.clone());
            };
            let mut active = 0;
            for key in user["keys"].as_array().unwrap() {
                if key["status"] != "Active" {
                    continue;
                }
                active += 1;
                let id = key["access_key_id"].as_str().unwrap();
                let created = key["create_date"].as_f64().unwrap();
                let idle_days = (now - key["last_used_date"].as_f64().unwrap_or(created)) / DAY;
                if idle_days > 90.0 {
                    alert("IAMAccessKeyUnused90Days", id);
                } else if idle_days > 45.0 {
                    alert("IAMAccessKeyUnused45Days", id);
                }
                if (now - created) / DAY > 90.0 {
                    alert("IAMAccessKeyNotRotated", id);
                }
            }
            if active > 1 {
                alert("IAMUserMultipleActiveKeys", "");
            }
        }
    }
    expected
}

/// The shipped rules with every `for:` and `keep_firing_for:` scaled by `SCALE`, and
/// nothing else changed; also the scaled key alerts' `keep_firing_for` and
/// IAMKeyExporterDown's `for:`.
fn fast_rules(dir: &Path) -> (PathBuf, Duration, Duration) {
    let shipped = std::fs::read_to_string(root().join("dashboards/alerts.yml")).unwrap();
    let scale = |text: &str| {
        let (number, unit) = text.split_at(text.len() - 1);
        let seconds: f64 = number.parse::<f64>().unwrap()
            * match unit {
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                other => panic!("unit {other} in {text}"),
            };
        Duration::from_secs_f64(seconds * SCALE)
    };
    let mut keep = None;
    let mut down_for = None;
    let mut alert = "";
    let mut changed = 0;
    let lines: Vec<String> = shipped
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if let Some(name) = trimmed.strip_prefix("- alert: ") {
                alert = name;
            }
            for field in ["for: ", "keep_firing_for: "] {
                if let Some(value) = trimmed.strip_prefix(field) {
                    let scaled = scale(value);
                    if field == "keep_firing_for: " && alert.starts_with("IAMAccessKey") {
                        keep = Some(scaled);
                    }
                    if field == "for: " && alert == "IAMKeyExporterDown" {
                        down_for = Some(scaled);
                    }
                    changed += 1;
                    let indent = &line[..line.len() - trimmed.len()];
                    return format!("{indent}{field}{}ms", scaled.as_millis());
                }
            }
            line.to_string()
        })
        .collect();
    assert!(changed >= 10, "every alert has a for:");
    let path = dir.join("alerts.yml");
    std::fs::write(&path, lines.join("\n")).unwrap();
    (
        path,
        keep.expect("the key alerts have keep_firing_for"),
        down_for.expect("IAMKeyExporterDown has a for:"),
    )
}

/// One exporter process: replica `index` of `total`.
struct Replica {
    index: u32,
    total: u32,
    /// Unix time the process was started.
    started: f64,
    exporter: Exporter,
    _dir: tempfile::TempDir,
}

const CONFIG: &str = r#"
[source]
kind = "api"

[service_access]
enabled = false

[organizations]
enabled = true

[tags]
keys = ["team"]
"#;

impl Replica {
    /// Starts replica `index` of `total` on a free port, or on `address` (a restart: the
    /// same host and port, as a systemd host or a StatefulSet pod keeps its identity).
    fn start(endpoint: &str, address: Option<&str>, index: u32, total: u32) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exporter.toml");
        std::fs::write(&path, CONFIG).unwrap();
        let (index_flag, total_flag) = (index.to_string(), total.to_string());
        let refresh = format!("{}s", REFRESH.as_secs());
        let args = [
            "--config.file",
            path.to_str().unwrap(),
            "--shard.total",
            &total_flag,
            "--shard.index",
            &index_flag,
        ];
        let env = [
            ("IAM_KEY_EXPORTER_AWS__ENDPOINT_URL", endpoint),
            ("IAM_KEY_EXPORTER_REFRESH__INTERVAL", refresh.as_str()),
        ];
        let started = now_secs();
        let exporter = match address {
            Some(address) => Exporter::start_at(address, &args, &env),
            None => Exporter::start_with(&args, &env),
        };
        Replica {
            index,
            total,
            started,
            exporter,
            _dir: dir,
        }
    }

    fn address(&self) -> &str {
        &self.exporter.address
    }

    /// SIGTERM, as Kubernetes and systemd stop it; it must exit 0 promptly.
    fn stop(mut self) {
        let status = self
            .exporter
            .signal_and_wait("TERM", Duration::from_secs(10))
            .expect("the replica exits after SIGTERM");
        assert!(status.success(), "replica {}: {status}", self.index);
    }

    /// Waits until the replica has refreshed every account of its shard and Prometheus has
    /// scraped them all; returns how many it watches.
    fn wait_settled(&self, prometheus: &Prometheus) -> usize {
        // Samples scraped from this process, not the last ones of its predecessor.
        let query = format!(
            "count(timestamp(aws_iam_account_info{{instance=\"{}\"}}) > {})",
            self.address(),
            self.started
        );
        wait_for(
            &format!("replica {}/{} settled", self.index, self.total),
            LIMIT,
            || {
                let m = self.exporter.metrics();
                let watched = m.get("iam_key_exporter_accounts", &[])? as usize;
                let served =
                    m.0.keys()
                        .filter(|k| k.starts_with("aws_iam_account_info{"))
                        .count();
                let scraped = prometheus
                    .query(&query)
                    .first()
                    .and_then(|r| r["value"][1].as_str()?.parse::<usize>().ok());
                (watched > 0 && served == watched && scraped == Some(watched)).then_some(watched)
            },
        )
    }
}

/// Tells Prometheus (through its file_sd file) to scrape exactly `replicas`.
fn publish_targets<'a>(path: &Path, replicas: impl IntoIterator<Item = &'a Replica>) {
    let targets: Vec<String> = replicas
        .into_iter()
        .map(|r| r.address().to_string())
        .collect();
    write_file_sd(
        path,
        &targets.iter().map(String::as_str).collect::<Vec<_>>(),
    );
}

/// `count by (account_id) (aws_iam_account_info)`: how many replicas export each account.
fn exporters_per_account(prometheus: &Prometheus) -> BTreeMap<String, usize> {
    prometheus
        .query("count by (account_id) (aws_iam_account_info)")
        .iter()
        .map(|r| {
            let account = r["metric"]["account_id"].as_str().unwrap().to_string();
            let count = r["value"][1].as_str().unwrap().parse().unwrap();
            (account, count)
        })
        .collect()
}

/// Which instance exports each account (every account exactly once, asserted).
fn owners(prometheus: &Prometheus) -> BTreeMap<String, String> {
    let mut owners = BTreeMap::new();
    for r in prometheus.query("aws_iam_account_info") {
        let account = r["metric"]["account_id"].as_str().unwrap().to_string();
        let instance = r["metric"]["instance"].as_str().unwrap().to_string();
        assert!(
            owners.insert(account.clone(), instance).is_none(),
            "{account} exported twice"
        );
    }
    owners
}

/// What Prometheus's alerts API says at one moment.
struct Alerts {
    /// Firing key alerts, with how many alerts Prometheus holds for each.
    keys: BTreeMap<KeyAlert, usize>,
    /// The `tag_team` label and `activeAt` of each firing key alert.
    details: BTreeMap<KeyAlert, (Option<String>, String)>,
    /// Firing exporter-health alerts: (alertname, instance).
    health: BTreeSet<(String, String)>,
    /// Key alerts that carry a target label: there must be none.
    with_target_labels: Vec<Value>,
}

fn alerts(prometheus: &Prometheus) -> Alerts {
    let mut out = Alerts {
        keys: BTreeMap::new(),
        details: BTreeMap::new(),
        health: BTreeSet::new(),
        with_target_labels: Vec::new(),
    };
    for alert in prometheus.alerts() {
        if alert["state"] != "firing" {
            continue;
        }
        let labels = &alert["labels"];
        let label = |name: &str| labels[name].as_str().unwrap_or_default().to_string();
        let name = label("alertname");
        if name.starts_with("IAMKeyExporter") {
            out.health.insert((name, label("instance")));
            continue;
        }
        let id = (
            name,
            label("account_id"),
            label("user"),
            label("access_key_id"),
        );
        if labels.get("instance").is_some() || labels.get("job").is_some() {
            out.with_target_labels.push(alert.clone());
        }
        *out.keys.entry(id.clone()).or_default() += 1;
        let team = labels["tag_team"].as_str().map(str::to_string);
        let active_at = alert["activeAt"].as_str().unwrap_or_default().to_string();
        out.details.insert(id, (team, active_at));
    }
    out
}

/// The firing key alerts of `accounts` must be exactly `expected`, each held once.
fn assert_exactly_once(
    got: &Alerts,
    expected: &BTreeMap<KeyAlert, Option<String>>,
    accounts: &BTreeSet<String>,
    when: &str,
) {
    let of = |id: &KeyAlert| accounts.contains(&id.1);
    let twice: Vec<_> = got.keys.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "{when}: key alerts held twice: {twice:?}");
    let firing: BTreeSet<&KeyAlert> = got.keys.keys().filter(|id| of(id)).collect();
    let wanted: BTreeSet<&KeyAlert> = expected.keys().filter(|id| of(id)).collect();
    let missing: Vec<_> = wanted.difference(&firing).collect();
    let extra: Vec<_> = firing.difference(&wanted).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{when}: missing {missing:?}, unexpected {extra:?}"
    );
    assert!(
        got.with_target_labels.is_empty(),
        "{when}: key alerts with target labels: {:?}",
        got.with_target_labels
    );
}

/// The values of `expr` from `start` to `end` (Unix seconds), every 250 ms; a step where
/// it has no value is left out.
fn query_range(prometheus: &Prometheus, expr: &str, start: f64, end: f64) -> Vec<f64> {
    let mut response = ureq::get(format!("http://{}/api/v1/query_range", prometheus.address))
        .query("query", expr)
        .query("start", format!("{start:.3}"))
        .query("end", format!("{end:.3}"))
        .query("step", "0.25")
        .call()
        .expect("query_range");
    let body: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap())
        .expect("a JSON answer");
    assert_eq!(body["status"], "success", "{expr}: {body}");
    body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|series| series["values"].as_array().unwrap().clone())
        .map(|point| point[1].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Polls every 200 ms until `done` says so or `limit` passes.
fn poll<T>(what: &str, limit: Duration, mut done: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = done() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn replicas_share_the_organization_and_alert_once_per_key_through_a_stop_and_a_reshard() {
    let started = Instant::now();
    let scratch = tempfile::tempdir().unwrap();
    let scenario_path = scratch.path().join("organization.json");
    std::fs::write(&scenario_path, scenario().to_string()).unwrap();
    let Some(moto) = Moto::start(&scenario_path) else {
        return;
    };
    if which("prometheus").is_none() {
        return;
    }
    let organization: BTreeSet<String> = moto.seeded["organization"]["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(organization.len() as u64, MEMBERS + 1);
    let expected = expected_alerts(&moto.seeded, now_secs());
    let firing_kinds: BTreeSet<&str> = expected.keys().map(|k| k.0.as_str()).collect();
    assert_eq!(firing_kinds.len(), 4, "{firing_kinds:?}");

    let (rules, keep_firing_for, down_for) = fast_rules(scratch.path());
    assert!(keep_firing_for > down_for + Duration::from_secs(3));
    let targets = scratch.path().join("targets.json");
    let mut replicas: Vec<Replica> = (0..3)
        .map(|index| Replica::start(&moto.endpoint, None, index, 3))
        .collect();
    publish_targets(&targets, &replicas);
    let Some(prometheus) = Prometheus::start_discovering(&targets, &rules, "") else {
        return;
    };

    // 1. Every account once; every expected key alert once, with the user's tag.
    for replica in &replicas {
        replica.wait_settled(&prometheus);
    }
    let counts = exporters_per_account(&prometheus);
    assert_eq!(
        counts.keys().cloned().collect::<BTreeSet<_>>(),
        organization
    );
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    let before = owners(&prometheus);
    let instance_index: BTreeMap<String, u32> = replicas
        .iter()
        .map(|r| (r.address().to_string(), r.index))
        .collect();
    let t = Instant::now();
    poll("every key alert firing", LIMIT, || {
        let got = alerts(&prometheus);
        (got.keys.keys().cloned().collect::<BTreeSet<_>>()
            == expected.keys().cloned().collect::<BTreeSet<_>>())
        .then_some(())
    });
    eprintln!(
        "replicas: {} key alerts firing {:.1}s after every account was scraped",
        expected.len(),
        t.elapsed().as_secs_f64()
    );
    let first = alerts(&prometheus);
    assert_exactly_once(&first, &expected, &organization, "three replicas");
    for (id, team) in &expected {
        assert_eq!(&first.details[id].0, team, "tag_team of {id:?}");
    }
    assert!(first.health.is_empty(), "{:?}", first.health);
    // The other replicas' alerts stay as they are: firing once, never resolved since.
    let unchanged = |got: &Alerts, accounts: &BTreeSet<String>, when: &str| {
        assert_exactly_once(got, &expected, accounts, when);
        for (id, detail) in got
            .details
            .iter()
            .filter(|(id, _)| accounts.contains(&id.1))
        {
            assert_eq!(
                detail, &first.details[id],
                "{when}: {id:?} resolved and fired again"
            );
        }
    };

    // 2. Replica 2 stops and stays in service discovery (a crashed pod, a dead host).
    //    Prometheus marks its series stale at the next scrape, so its accounts vanish at
    //    once. Their key alerts are held by `keep_firing_for`; IAMKeyExporterDown names
    //    the replica within its `for:`, before they resolve, so no moment goes without an
    //    alert about those keys. They resolve `keep_firing_for` after the replica stopped
    //    (nobody exports those accounts now), and fire again, after their `for:`, once a
    //    replica exports them again. Nothing changes for the other replicas' accounts.
    let stopped = replicas.pop().unwrap();
    let stopped_address = stopped.address().to_string();
    let stopped_accounts: BTreeSet<String> = before
        .iter()
        .filter(|(_, i)| **i == stopped_address)
        .map(|(a, _)| a.clone())
        .collect();
    let others: BTreeSet<String> = organization
        .difference(&stopped_accounts)
        .cloned()
        .collect();
    let stopped_alerts: BTreeSet<KeyAlert> = expected
        .keys()
        .filter(|k| stopped_accounts.contains(&k.1))
        .cloned()
        .collect();
    assert!(!stopped_alerts.is_empty());
    let t_stop = Instant::now();
    stopped.stop();
    let down = poll("IAMKeyExporterDown", LIMIT, || {
        let got = alerts(&prometheus);
        unchanged(&got, &others, "replica 2 down");
        let down: BTreeSet<String> = got
            .health
            .iter()
            .filter(|(name, _)| name == "IAMKeyExporterDown")
            .map(|(_, instance)| instance.clone())
            .collect();
        (!down.is_empty()).then_some((down, got))
    });
    let down_after = t_stop.elapsed();
    assert_eq!(down.0, BTreeSet::from([stopped_address.clone()]));
    assert!(
        down_after <= down_for + Duration::from_secs(5),
        "IAMKeyExporterDown after {down_after:?}, for: {down_for:?}"
    );
    let held: BTreeSet<KeyAlert> = down
        .1
        .keys
        .keys()
        .filter(|k| stopped_accounts.contains(&k.1))
        .cloned()
        .collect();
    assert_eq!(held, stopped_alerts, "held by keep_firing_for");
    let exported = exporters_per_account(&prometheus);
    assert!(
        stopped_accounts.iter().all(|a| !exported.contains_key(a)),
        "its accounts are gone from Prometheus: the alerts are held, not fed"
    );
    poll("the stopped replica's key alerts resolved", LIMIT, || {
        let got = alerts(&prometheus);
        unchanged(&got, &others, "replica 2 down");
        (!got.keys.keys().any(|k| stopped_accounts.contains(&k.1))).then_some(())
    });
    let resolved_after = t_stop.elapsed();
    assert!(
        resolved_after >= keep_firing_for,
        "resolved after {resolved_after:?}, keep_firing_for {keep_firing_for:?}"
    );
    assert!(resolved_after <= keep_firing_for + Duration::from_secs(5));
    eprintln!(
        "replicas: replica 2 stopped; IAMKeyExporterDown after {:.1}s (for: {:?}); its {} key \
         alerts held until {:.1}s (keep_firing_for: {:?})",
        down_after.as_secs_f64(),
        down_for,
        stopped_alerts.len(),
        resolved_after.as_secs_f64(),
        keep_firing_for
    );

    // Replica 2 comes back on its address; its accounts' alerts fire again after `for:`.
    replicas.push(Replica::start(&moto.endpoint, Some(&stopped_address), 2, 3));
    replicas[2].wait_settled(&prometheus);
    poll("every key alert firing again", LIMIT, || {
        let got = alerts(&prometheus);
        (got.keys.keys().cloned().collect::<BTreeSet<_>>()
            == expected.keys().cloned().collect::<BTreeSet<_>>()
            && got.health.is_empty())
        .then_some(())
    });
    let before: BTreeMap<String, u32> = owners(&prometheus)
        .into_iter()
        .map(|(a, i)| (a, instance_index[&i]))
        .collect();

    // 3. Reshard 3 -> 4 as a StatefulSet rolls: ordinal 3 starts with total 4 (service
    //    discovery adds it), then 2, 1 and 0 are each stopped (SIGTERM) and started again
    //    on their address with total 4, each once the previous one serves. A
    //    sampler watches Prometheus meanwhile: how long each account goes unexported, how
    //    many replicas export it, and that every key alert stays firing once, unresolved.
    let stable = alerts(&prometheus);
    assert_exactly_once(&stable, &expected, &organization, "before the reshard");
    let reshard_started = now_secs();
    let stop = AtomicBool::new(false);
    let (longest_gap, most_exporters, samples) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut missing_since: BTreeMap<String, Instant> = BTreeMap::new();
            let mut longest = (Duration::ZERO, String::new());
            let mut most = 0;
            let mut samples = 0;
            loop {
                // One more sample after the rollout is done: it sees the end state.
                let last = stop.load(Ordering::SeqCst);
                let now = Instant::now();
                let counts = exporters_per_account(&prometheus);
                for account in &organization {
                    match counts.get(account) {
                        Some(n) => {
                            most = most.max(*n);
                            if let Some(since) = missing_since.remove(account) {
                                let gap = now - since;
                                if gap > longest.0 {
                                    longest = (gap, account.clone());
                                }
                            }
                        }
                        None => {
                            missing_since.entry(account.clone()).or_insert(now);
                        }
                    }
                }
                let got = alerts(&prometheus);
                assert_exactly_once(&got, &expected, &organization, "resharding");
                for (id, detail) in &got.details {
                    assert_eq!(
                        detail, &stable.details[id],
                        "{id:?} resolved and fired again"
                    );
                }
                assert!(got.health.is_empty(), "{:?}", got.health);
                samples += 1;
                if last {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            assert!(missing_since.is_empty(), "still missing: {missing_since:?}");
            (longest, most, samples)
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut rolled = vec![Replica::start(&moto.endpoint, None, 3, 4)];
            publish_targets(&targets, replicas.iter().chain(&rolled));
            rolled[0].wait_settled(&prometheus);
            while let Some(old) = replicas.pop() {
                let (index, address) = (old.index, old.address().to_string());
                old.stop();
                rolled.push(Replica::start(&moto.endpoint, Some(&address), index, 4));
                rolled.last().unwrap().wait_settled(&prometheus);
            }
            rolled
        }));
        stop.store(true, Ordering::SeqCst);
        let sampled = sampler.join();
        let rolled = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
        replicas = rolled;
        sampled.unwrap_or_else(|e| std::panic::resume_unwind(e))
    });

    // Four replicas: every account once again; only the new replica took accounts.
    let counts = exporters_per_account(&prometheus);
    assert_eq!(
        counts.keys().cloned().collect::<BTreeSet<_>>(),
        organization
    );
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    let index_of: BTreeMap<String, u32> = replicas
        .iter()
        .map(|r| (r.address().to_string(), r.index))
        .collect();
    let after: BTreeMap<String, u32> = owners(&prometheus)
        .into_iter()
        .map(|(a, i)| (a, index_of[&i]))
        .collect();
    let moved: Vec<&String> = organization
        .iter()
        .filter(|a| before[*a] != after[*a])
        .collect();
    assert!(
        moved.iter().all(|a| after[*a] == 3),
        "rendezvous hashing moves accounts only to the new replica"
    );
    let fraction = moved.len() as f64 / organization.len() as f64;
    assert!((0.1..=0.45).contains(&fraction), "moved {fraction}");
    assert_eq!(
        most_exporters, 2,
        "the moved accounts were exported twice for a while"
    );
    assert!(
        longest_gap.0 <= REFRESH,
        "{} unexported for {:?}",
        longest_gap.1,
        longest_gap.0
    );
    assert_exactly_once(
        &alerts(&prometheus),
        &expected,
        &organization,
        "four replicas",
    );
    // What the rules saw: the active keys over 90 days, one recorded series each, never
    // more while accounts were exported twice; fewer at the evaluations that fell in a
    // restart's gap, when only keep_firing_for kept those keys' alerts firing.
    let old_keys = expected
        .keys()
        .filter(|k| k.0 == "IAMAccessKeyNotRotated")
        .count() as f64;
    let seen = query_range(
        &prometheus,
        "count(aws_iam:access_key_age_days:active > 90)",
        reshard_started,
        now_secs(),
    );
    let most = seen.iter().cloned().fold(0.0, f64::max);
    let fewest = seen.iter().cloned().fold(f64::INFINITY, f64::min);
    assert_eq!(most, old_keys, "one recorded series per key: {seen:?}");
    eprintln!(
        "replicas: reshard 3 -> 4 moved {} of {} accounts ({:.3}); longest gap {:.2}s ({}); \
         at most {} replicas exported an account; the rules saw between {} and {} of the \
         {} old keys; {} samples; test took {:.1}s",
        moved.len(),
        organization.len(),
        fraction,
        longest_gap.0.as_secs_f64(),
        longest_gap.1,
        most_exporters,
        fewest,
        most,
        old_keys,
        samples,
        started.elapsed().as_secs_f64()
    );
}
