//! Roles against the moto peer: every seeded role served with its creation, last use
//! (and its region), idle time, service-linked mark and tag labels; each role's service
//! counts from its service-last-accessed job (the peer's extension), none for a
//! service-linked role unless asked; the role filter; and
//! a role created, tagged or deleted through IAM shown by the next refresh through the
//! change feed, while a steady refresh reads no role at all. (moto serves
//! GetAccountAuthorizationDetails and RoleLastUsed itself; its paging and the roles'
//! seeding are the peer's documented extension, tests/peers/README.md.) The unused-role
//! alert is checked end to end by tests/alerting.rs, the denied permission by
//! tests/least_privilege.rs.

mod common;

use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(60);
const SCENARIO: &str = "tests/peers/sample-inventory.json";

/// The exporter on `moto` with `config` as its file, no service-access jobs (their calls
/// are not what is counted here).
fn start(moto: &Moto, dir: &std::path::Path, config: &str, env: &[(&str, &str)]) -> Exporter {
    let path = dir.join("exporter.toml");
    std::fs::write(&path, config).unwrap();
    let mut all = vec![
        ("IAM_KEY_EXPORTER_AWS__ENDPOINT_URL", moto.endpoint.as_str()),
        ("IAM_KEY_EXPORTER_SERVICE_ACCESS__ENABLED", "false"),
    ];
    all.extend_from_slice(env);
    let exporter = Exporter::start_with(&["--config.file", path.to_str().unwrap()], &all);
    exporter.wait_ready();
    exporter
}

fn seeded_roles(moto: &Moto) -> Vec<serde_json::Value> {
    moto.seeded["roles"].as_array().unwrap().clone()
}

/// The metrics once every role in `names` is served.
fn with_roles(exporter: &Exporter, names: &[&str]) -> Metrics {
    wait_for("the roles on /metrics", LIMIT, || {
        let m = exporter.metrics();
        names
            .iter()
            .all(|name| m.count_with("aws_iam_role_created_timestamp_seconds", "role", name) == 1)
            .then_some(m)
    })
}

/// The one series of `family` for `role`, as (series key, value).
fn series_of<'m>(metrics: &'m Metrics, family: &str, role: &str) -> (&'m str, f64) {
    let found: Vec<(&String, &f64)> = metrics
        .0
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{family}{{")) && label(k, "role") == Some(role))
        .collect();
    assert_eq!(found.len(), 1, "{family} of {role}: {found:?}");
    (found[0].0.as_str(), *found[0].1)
}

fn requests(metrics: &Metrics, operation: &str) -> f64 {
    metrics
        .get(
            "iam_key_exporter_aws_requests_total",
            &[("operation", operation)],
        )
        .unwrap_or(0.0)
}

#[test]
fn every_seeded_role_is_served_with_its_creation_last_use_and_marks() {
    let Some(moto) = Moto::start(&root().join(SCENARIO)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let exporter = start(&moto, dir.path(), "[tags]\nkeys = [\"team\"]\n", &[]);
    let roles = seeded_roles(&moto);
    assert!(roles.len() >= 4, "the sample seeds roles: {roles:?}");
    let names: Vec<&str> = roles.iter().map(|r| r["name"].as_str().unwrap()).collect();
    let m = with_roles(&exporter, &names);
    let now = now_secs();
    let account = moto.seeded["account_id"].as_str().unwrap();

    assert_eq!(
        m.0.keys()
            .filter(|k| k.starts_with("aws_iam_role_created_timestamp_seconds{"))
            .count(),
        roles.len(),
        "one series per role"
    );
    for role in &roles {
        let name = role["name"].as_str().unwrap();
        let (series, created) = series_of(&m, "aws_iam_role_created_timestamp_seconds", name);
        assert_eq!(created, role["create_date"].as_f64().unwrap(), "{name}");
        assert_eq!(label(series, "account_id"), Some(account));
        let linked = if role["service_linked"] == true {
            "true"
        } else {
            "false"
        };
        assert_eq!(label(series, "service_linked"), Some(linked), "{name}");
        assert_eq!(
            label(series, "tag_team"),
            role["tags"]["team"].as_str(),
            "{name}'s team tag, and no label without one"
        );

        // Idle since the last use, or since creation for a role never used, as of the
        // reading of the roles: a little before now.
        let since = role["last_used_date"]
            .as_f64()
            .unwrap_or_else(|| role["create_date"].as_f64().unwrap());
        let (_, idle) = series_of(&m, "aws_iam_role_idle_seconds", name);
        let lag = (now - since) - idle;
        assert!(
            (0.0..120.0).contains(&lag),
            "{name}: idle {idle}, lag {lag}"
        );

        let used = m.0.iter().find(|(k, _)| {
            k.starts_with("aws_iam_role_last_used_timestamp_seconds{")
                && label(k, "role") == Some(name)
        });
        match role["last_used_date"].as_f64() {
            Some(at) => {
                let (series, value) = used.unwrap_or_else(|| panic!("{name} was used"));
                assert_eq!(*value, at, "{name}");
                assert_eq!(
                    label(series, "last_used_region"),
                    role["last_used_region"].as_str(),
                    "{name}"
                );
            }
            None => assert!(used.is_none(), "{name} was never used: {used:?}"),
        }
    }
    assert!(
        roles.iter().any(|r| r["service_linked"] == true),
        "the sample has a service-linked role"
    );
    assert!(
        roles.iter().any(|r| r["last_used_date"].is_null()),
        "the sample has a role never used"
    );
    assert_eq!(
        m.get(
            "iam_key_exporter_account_feature_degraded",
            &[("account_id", account), ("feature", "roles")]
        ),
        Some(0.0)
    );
    let exposition = exporter.get("/metrics").text();
    if let Some(problems) = promtool_check_metrics(&exposition) {
        assert!(problems.is_empty(), "promtool check metrics: {problems}");
    }
}

/// The roles' service counts, from the same jobs and pass as users': exactly what the
/// peer seeded, and none for the service-linked role, which is left out by default.
#[test]
fn each_role_has_the_service_counts_of_its_job_but_service_linked_ones() {
    let Some(moto) = Moto::start(&root().join(SCENARIO)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let exporter = start(
        &moto,
        dir.path(),
        "",
        &[("IAM_KEY_EXPORTER_SERVICE_ACCESS__ENABLED", "true")],
    );
    let roles = seeded_roles(&moto);
    let counted = moto.roles_with_jobs();
    let m = wait_for("every role's counts", LIMIT, || {
        let m = exporter.metrics();
        counted
            .iter()
            .all(|r| {
                let name = r["name"].as_str().unwrap();
                m.count_with("aws_iam_role_services_granted", "role", name) == 1
            })
            .then_some(m)
    });
    for role in &counted {
        let name = role["name"].as_str().unwrap();
        let (series, granted) = series_of(&m, "aws_iam_role_services_granted", name);
        assert_eq!(
            granted,
            role["services_granted"].as_f64().unwrap(),
            "{name}"
        );
        assert_eq!(label(series, "service_linked"), Some("false"));
        let (_, accessed) = series_of(&m, "aws_iam_role_services_accessed", name);
        assert_eq!(
            accessed,
            role["services_accessed"].as_f64().unwrap(),
            "{name}"
        );
    }
    for role in roles.iter().filter(|r| r["service_linked"] == true) {
        let name = role["name"].as_str().unwrap();
        assert_eq!(
            m.count_with("aws_iam_role_services_granted", "role", name),
            0,
            "{name} is service-linked"
        );
    }

    // Action level (the default): per role and service that IAM tracks by action and the
    // role used one action of, the tracked actions granted and used; nothing for a service
    // whose tracked actions all went unused, which IAM does not list.
    let mut expected = Vec::new();
    for role in &counted {
        let name = role["name"].as_str().unwrap();
        for entry in role["services"].as_array().into_iter().flatten() {
            let used = entry["actions_accessed"].as_f64().unwrap_or(0.0);
            if used > 0.0 {
                let granted = entry["actions_granted"].as_f64().unwrap();
                let namespace = entry["namespace"].as_str().unwrap();
                expected.push((name.to_string(), namespace.to_string(), granted, used));
            }
        }
    }
    assert!(!expected.is_empty(), "the sample has tracked actions");
    expected.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut served = Vec::new();
    for (series, granted) in m.0.iter() {
        if !series.starts_with("aws_iam_role_tracked_actions_granted{") {
            continue;
        }
        let role = label(series, "role").unwrap();
        let namespace = label(series, "service_namespace").unwrap();
        let used =
            m.0.iter()
                .find(|(k, _)| {
                    k.starts_with("aws_iam_role_tracked_actions_used{")
                        && label(k, "role") == Some(role)
                        && label(k, "service_namespace") == Some(namespace)
                })
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("used actions of {role} in {namespace}"));
        served.push((role.to_string(), namespace.to_string(), *granted, used));
    }
    served.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(served, expected);
    // The users' counts come with the same pass.
    assert!(
        m.0.keys()
            .any(|k| k.starts_with("aws_iam_user_services_granted{"))
    );
}

#[test]
fn the_role_filter_leaves_roles_out_by_path_and_name() {
    let Some(moto) = Moto::start(&root().join(SCENARIO)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config =
        "[role_filter]\nexclude_paths = [\"/aws-service-role/\"]\nexclude_roles = [\"legacy-*\"]\n";
    let exporter = start(&moto, dir.path(), config, &[]);
    let roles = seeded_roles(&moto);
    let kept: Vec<&str> = roles
        .iter()
        .filter(|r| r["service_linked"] != true)
        .map(|r| r["name"].as_str().unwrap())
        .filter(|name| !name.starts_with("legacy-"))
        .collect();
    assert!(kept.len() < roles.len() - 1, "the filter drops two roles");
    let m = with_roles(&exporter, &kept);
    let served: Vec<&str> =
        m.0.keys()
            .filter(|k| k.starts_with("aws_iam_role_created_timestamp_seconds{"))
            .filter_map(|k| label(k, "role"))
            .collect();
    let mut expected = kept.clone();
    expected.sort();
    let mut served = served;
    served.sort();
    assert_eq!(served, expected);
}

/// With the feed, a role created, tagged or deleted through IAM is read again by the next
/// refresh, long before `roles.interval` (an hour here); with nothing changed, refreshes
/// read no role.
#[test]
fn a_role_change_is_read_again_by_the_next_refresh_and_nothing_else_reads_roles() {
    let Some(moto) = Moto::start(&root().join(SCENARIO)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let exporter = start(
        &moto,
        dir.path(),
        "[tags]\nkeys = [\"team\"]\n",
        &[
            ("IAM_KEY_EXPORTER_REFRESH__INTERVAL", "1s"),
            ("IAM_KEY_EXPORTER_REFRESH__FULL_INTERVAL", "1h"),
            ("IAM_KEY_EXPORTER_ROLES__INTERVAL", "1h"),
        ],
    );
    let names: Vec<String> = seeded_roles(&moto)
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let before = with_roles(&exporter, &names);

    // Steady: refreshes go on, and no role is read.
    let reads = requests(&before, "GetAccountAuthorizationDetails");
    let refreshed = |m: &Metrics| {
        m.value(
            "iam_key_exporter_last_refresh_success_timestamp_seconds",
            &[],
        )
    };
    let start_at = refreshed(&before);
    let steady = wait_for("three more refreshes", LIMIT, || {
        let m = exporter.metrics();
        (refreshed(&m) >= start_at + 3.0).then_some(m)
    });
    assert_eq!(
        requests(&steady, "GetAccountAuthorizationDetails"),
        reads,
        "no role read without a role change"
    );

    let iam = moto.iam_client();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    runtime.block_on(async {
        iam.create_role()
            .role_name("made-in-the-test")
            .path("/test/")
            .assume_role_policy_document(trust)
            .tags(
                aws_sdk_iam::types::Tag::builder()
                    .key("team")
                    .value("qa")
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    });
    let m = wait_for("the new role", LIMIT, || {
        let m = exporter.metrics();
        (m.count_with(
            "aws_iam_role_created_timestamp_seconds",
            "role",
            "made-in-the-test",
        ) == 1)
            .then_some(m)
    });
    let (series, _) = series_of(&m, "aws_iam_role_idle_seconds", "made-in-the-test");
    assert_eq!(label(series, "tag_team"), Some("qa"));
    assert!(
        !m.0.keys().any(|k| {
            k.starts_with("aws_iam_role_last_used_timestamp_seconds{")
                && label(k, "role") == Some("made-in-the-test")
        }),
        "a new role has no last use"
    );

    runtime.block_on(async {
        iam.tag_role()
            .role_name("made-in-the-test")
            .tags(
                aws_sdk_iam::types::Tag::builder()
                    .key("team")
                    .value("platform")
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    });
    wait_for("the new tag", LIMIT, || {
        let m = exporter.metrics();
        let (series, _) = series_of(&m, "aws_iam_role_idle_seconds", "made-in-the-test");
        (label(series, "tag_team") == Some("platform")).then_some(())
    });

    runtime.block_on(async {
        iam.delete_role()
            .role_name("made-in-the-test")
            .send()
            .await
            .unwrap();
    });
    let after = wait_for("the deleted role gone", LIMIT, || {
        let m = exporter.metrics();
        (m.count_with(
            "aws_iam_role_created_timestamp_seconds",
            "role",
            "made-in-the-test",
        ) == 0)
            .then_some(m)
    });
    let reads_after = requests(&after, "GetAccountAuthorizationDetails");
    assert!(
        (reads + 3.0..=reads + 6.0).contains(&reads_after),
        "one reading per change, give or take a poll that saw two: {reads} then {reads_after}"
    );
}
