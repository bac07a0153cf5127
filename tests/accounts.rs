//! Many accounts against moto: roles assumed per account, accounts discovered through
//! Organizations, tag labels, shards, and one account failing among several.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);
const MAIN: &str = "123456789012";
const DATA: &str = "210987654321";
const LEGACY: &str = "345678901234";
const SUSPENDED: &str = "456789012345";

fn scenario() -> PathBuf {
    root().join("tests/peers/multi-account.json")
}

/// Writes `toml` to a temporary config file and starts the exporter on it.
fn start(endpoint: &str, toml: &str, args: &[&str]) -> (Exporter, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exporter.toml");
    std::fs::write(&path, toml).unwrap();
    let mut all = vec!["--config.file", path.to_str().unwrap()];
    all.extend_from_slice(args);
    let exporter = Exporter::start_with(
        &all,
        &[
            ("IAM_KEY_EXPORTER_AWS__ENDPOINT_URL", endpoint),
            ("IAM_KEY_EXPORTER_REFRESH__INTERVAL", "1s"),
        ],
    );
    (exporter, dir)
}

/// Every access key id served, by account.
fn keys_by_account(metrics: &Metrics) -> BTreeSet<(String, String)> {
    metrics
        .0
        .keys()
        .filter_map(|k| k.strip_prefix("aws_iam_access_key_active{"))
        .map(|labels| {
            let value = |name: &str| {
                labels
                    .split(&format!("{name}=\""))
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or_default()
                    .to_string()
            };
            (value("account_id"), value("access_key_id"))
        })
        .collect()
}

/// The seeded keys of `accounts`, from moto's report.
fn seeded_keys(moto: &Moto, accounts: &[&str]) -> BTreeSet<(String, String)> {
    let mut all = vec![(MAIN.to_string(), moto.seeded["users"].clone())];
    for account in moto.seeded["accounts"].as_array().unwrap() {
        all.push((
            account["account_id"].as_str().unwrap().to_string(),
            account["users"].clone(),
        ));
    }
    all.into_iter()
        .filter(|(id, _)| accounts.contains(&id.as_str()))
        .flat_map(|(id, users)| {
            users
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|u| u["keys"].as_array().unwrap().clone())
                .map(move |k| (id.clone(), k["access_key_id"].as_str().unwrap().to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn health(metrics: &Metrics, account: &str, name: &str) -> Option<f64> {
    metrics.get(
        "iam_key_exporter_account_refresh_success",
        &[("account_id", account), ("account_name", name)],
    )
}

const ROLES: &str = r#"
[tags]
keys = ["team", "Owner"]

[[accounts]]
name = "hub"

[[accounts]]
role_arn = "arn:aws:iam::210987654321:role/iam-key-exporter"
name = "data"

[[accounts]]
role_arn = "arn:aws:iam::345678901234:role/iam-key-exporter"
external_id = "iam-key-exporter-test"
session_name = "key-audit"
name = "legacy"
"#;

#[test]
fn assumed_roles_serve_each_account_under_its_own_id_with_tag_labels() {
    let Some(moto) = Moto::start(&scenario()) else {
        return;
    };
    let (exporter, _dir) = start(&moto.endpoint, ROLES, &[]);
    exporter.wait_ready();
    // Every account's keys, and the round over: accounts publish as each is done, the
    // round's success is set once the last one is.
    let m = wait_for("every account", LIMIT, || {
        let m = exporter.metrics();
        let round_over = m.value("iam_key_exporter_refresh_success", &[]) == 1.0;
        (round_over && keys_by_account(&m) == seeded_keys(&moto, &[MAIN, DATA, LEGACY]))
            .then_some(m)
    });
    for (id, name) in [(MAIN, "hub"), (DATA, "data"), (LEGACY, "legacy")] {
        assert_eq!(health(&m, id, name), Some(1.0), "{id}");
        assert_eq!(
            m.value(
                "aws_iam_account_info",
                &[("account_id", id), ("account_name", name)]
            ),
            1.0
        );
    }
    assert_eq!(m.value("iam_key_exporter_accounts", &[]), 3.0);
    assert_eq!(m.value("iam_key_exporter_refresh_success", &[]), 1.0);

    // Tags of the data account's users: on key series and user series alike.
    let data_users = moto.seeded["accounts"][0]["users"].as_array().unwrap();
    let etl = &data_users[0];
    let key = etl["keys"][0]["access_key_id"].as_str().unwrap();
    let tagged = [
        ("account_id", DATA),
        ("tag_owner", "dana@example.com"),
        ("tag_team", "data"),
        ("user", "etl-bot"),
    ];
    let mut key_labels = tagged.to_vec();
    key_labels.push(("access_key_id", key));
    assert_eq!(m.value("aws_iam_access_key_active", &key_labels), 1.0);
    assert!(
        m.get("aws_iam_access_key_idle_seconds", &key_labels)
            .is_some()
    );
    assert_eq!(
        m.value(
            "aws_iam_user_mfa_active",
            &[
                ("account_id", DATA),
                ("tag_owner", "erin@example.com"),
                ("tag_team", "analytics"),
                ("user", "erin"),
            ]
        ),
        1.0
    );
    // Untagged users carry no tag labels, and nothing else does either.
    let legacy = m.count_with("aws_iam_access_key_active", "account_id", LEGACY);
    assert_eq!(legacy, 2);
    assert!(
        !m.0.keys()
            .any(|k| k.contains(&format!("account_id=\"{LEGACY}\"")) && k.contains("tag_"))
    );
    assert!(promtool_check_metrics(&exporter.get("/metrics").text()).is_none_or(|s| s.is_empty()));
}

#[test]
fn a_wrong_external_id_fails_that_account_alone() {
    let Some(moto) = Moto::start(&scenario()) else {
        return;
    };
    let toml = ROLES.replace(
        "external_id = \"iam-key-exporter-test\"",
        "external_id = \"wrong-id\"",
    );
    let (exporter, _dir) = start(&moto.endpoint, &toml, &[]);
    exporter.wait_ready();
    let m = wait_for("the others served", LIMIT, || {
        let m = exporter.metrics();
        (keys_by_account(&m) == seeded_keys(&moto, &[MAIN, DATA])
            && health(&m, LEGACY, "legacy") == Some(0.0))
        .then_some(m)
    });
    assert_eq!(health(&m, DATA, "data"), Some(1.0));
    assert_eq!(m.value("iam_key_exporter_refresh_success", &[]), 0.0);
    assert_eq!(
        m.value(
            "iam_key_exporter_account_last_refresh_success_timestamp_seconds",
            &[("account_id", LEGACY), ("account_name", "legacy")]
        ),
        0.0,
        "never succeeded"
    );
    assert!(exporter.logs().contains(LEGACY));
}

const DISCOVERY: &str = r#"
[organizations]
enabled = true
external_id = "iam-key-exporter-test"
"#;

#[test]
fn organizations_discovery_watches_every_active_account() {
    let Some(moto) = Moto::start(&scenario()) else {
        return;
    };
    let (exporter, _dir) = start(&moto.endpoint, DISCOVERY, &[]);
    exporter.wait_ready();
    let m = wait_for("every active account", LIMIT, || {
        let m = exporter.metrics();
        (keys_by_account(&m) == seeded_keys(&moto, &[MAIN, DATA, LEGACY])).then_some(m)
    });
    assert_eq!(m.value("iam_key_exporter_accounts", &[]), 3.0);
    assert_eq!(m.value("iam_key_exporter_discovery_success", &[]), 1.0);
    assert_eq!(
        m.count_with("aws_iam_account_info", "account_id", SUSPENDED),
        0,
        "suspended accounts are skipped"
    );
    assert!(m.aws_requests("ListAccounts") >= 1.0);

    // Excluded accounts are not watched.
    let excluded = format!("{DISCOVERY}exclude_accounts = [\"{DATA}\"]\n");
    let (exporter, _dir) = start(&moto.endpoint, &excluded, &[]);
    exporter.wait_ready();
    wait_for("the others", LIMIT, || {
        (keys_by_account(&exporter.metrics()) == seeded_keys(&moto, &[MAIN, LEGACY])).then_some(())
    });
}

#[test]
fn shards_split_the_accounts_without_overlap() {
    let Some(moto) = Moto::start(&scenario()) else {
        return;
    };
    let shards: Vec<_> = (0..2)
        .map(|index| {
            let index = index.to_string();
            start(
                &moto.endpoint,
                DISCOVERY,
                &["--shard.total", "2", "--shard.index", &index],
            )
        })
        .collect();
    let served: Vec<BTreeSet<(String, String)>> = shards
        .iter()
        .map(|(exporter, _)| {
            exporter.wait_ready();
            wait_for("a refreshed shard", LIMIT, || {
                let m = exporter.metrics();
                (m.value("iam_key_exporter_refresh_success", &[]) == 1.0)
                    .then(|| keys_by_account(&m))
            })
        })
        .collect();
    assert!(served[0].is_disjoint(&served[1]), "{served:?}");
    let union: BTreeSet<_> = served[0].union(&served[1]).cloned().collect();
    assert_eq!(union, seeded_keys(&moto, &[MAIN, DATA, LEGACY]));
}

#[test]
fn one_account_of_several_failing_keeps_its_data_and_hides_no_other() {
    let Some(moto) = Moto::start(&scenario()) else {
        return;
    };
    let proxy = FaultProxy::start(&moto.endpoint, MAIN);
    let (exporter, _dir) = start(&proxy.endpoint, ROLES, &[]);
    exporter.wait_ready();
    let all = seeded_keys(&moto, &[MAIN, DATA, LEGACY]);
    wait_for("every account", LIMIT, || {
        (keys_by_account(&exporter.metrics()) == all).then_some(())
    });

    proxy.inject(json!([{"fault": "http_500", "account_id": DATA}]));
    wait_for("the data account failing", LIMIT, || {
        (health(&exporter.metrics(), DATA, "data") == Some(0.0)).then_some(())
    });
    let fresh_after = now_secs();
    wait_for("the others refreshed again", LIMIT, || {
        let m = exporter.metrics();
        let stamp = |id, name| {
            m.value(
                "iam_key_exporter_account_last_refresh_success_timestamp_seconds",
                &[("account_id", id), ("account_name", name)],
            )
        };
        (stamp(MAIN, "hub") > fresh_after && stamp(LEGACY, "legacy") > fresh_after).then_some(())
    });
    let m = exporter.metrics();
    assert_eq!(
        keys_by_account(&m),
        all,
        "the failing account's last data stays"
    );
    assert_eq!(health(&m, MAIN, "hub"), Some(1.0));
    assert_eq!(health(&m, LEGACY, "legacy"), Some(1.0));
    assert_eq!(health(&m, DATA, "data"), Some(0.0));
    assert_eq!(m.value("iam_key_exporter_refresh_success", &[]), 0.0);
    assert_eq!(exporter.get("/-/healthy").status, 200);

    proxy.clear();
    let cleared = now_secs();
    wait_for("the data account recovered", LIMIT, || {
        let m = exporter.metrics();
        let stamp = m.value(
            "iam_key_exporter_account_last_refresh_success_timestamp_seconds",
            &[("account_id", DATA), ("account_name", "data")],
        );
        (stamp > cleared && m.value("iam_key_exporter_refresh_success", &[]) == 1.0).then_some(())
    });
    assert_eq!(keys_by_account(&exporter.metrics()), all);
}

#[test]
fn an_account_that_leaves_the_organization_stops_being_exported() {
    let Some(moto) = Moto::start(&scenario()) else {
        return;
    };
    let toml = DISCOVERY.replace("enabled = true", "enabled = true\ninterval = \"1s\"");
    let (exporter, _dir) = start(&moto.endpoint, &toml, &[]);
    exporter.wait_ready();
    wait_for("every active account", LIMIT, || {
        (keys_by_account(&exporter.metrics()) == seeded_keys(&moto, &[MAIN, DATA, LEGACY]))
            .then_some(())
    });

    let organizations = moto.organizations_client();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(
            organizations
                .remove_account_from_organization()
                .account_id(DATA)
                .send(),
        )
        .expect("RemoveAccountFromOrganization");

    let m = wait_for("the account gone", LIMIT, || {
        let m = exporter.metrics();
        (keys_by_account(&m) == seeded_keys(&moto, &[MAIN, LEGACY])).then_some(m)
    });
    assert_eq!(m.value("iam_key_exporter_accounts", &[]), 2.0);
    assert_eq!(m.count_with("aws_iam_account_info", "account_id", DATA), 0);
    assert!(
        !m.0.keys()
            .any(|k| k.starts_with("iam_key_exporter_account_") && k.contains(DATA)),
        "its health series go too"
    );
}
