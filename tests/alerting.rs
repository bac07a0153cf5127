//! End to end: the exporter on the seeded moto, a real Prometheus evaluating the shipped
//! alert rules, a real Alertmanager receiving what fires. The alerts expected (keys,
//! console passwords and roles) are worked out here from what moto was seeded with, by the
//! controls' own definitions, so any scenario checks the same way.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

const DAY: f64 = 86_400.0;

/// (alertname, user or role, access_key_id) of every key, password and role alert the
/// seeded inventory must raise; the key id is empty for an alert about a user or a role.
fn expected_alerts(seeded: &serde_json::Value, now: f64) -> BTreeSet<(String, String, String)> {
    let mut expected = BTreeSet::new();
    for user in seeded["users"].as_array().unwrap() {
        let name = user["name"].as_str().unwrap().to_string();
        // The exporter's default source (auto) has the credential report's console facts.
        // A password never used is unused since the user was created.
        if user["password_enabled"] == true {
            let since = user["password_last_used"]
                .as_f64()
                .unwrap_or_else(|| user["create_date"].as_f64().unwrap());
            let idle_days = (now - since) / DAY;
            if idle_days > 90.0 {
                expected.insert((
                    "IAMUserPasswordUnused90Days".into(),
                    name.clone(),
                    String::new(),
                ));
            } else if idle_days > 45.0 {
                expected.insert((
                    "IAMUserPasswordUnused45Days".into(),
                    name.clone(),
                    String::new(),
                ));
            }
        }
        let mut active = 0;
        for key in user["keys"].as_array().unwrap() {
            if key["status"] != "Active" {
                continue;
            }
            active += 1;
            let id = key["access_key_id"].as_str().unwrap().to_string();
            let created = key["create_date"].as_f64().unwrap();
            let idle_days = (now - key["last_used_date"].as_f64().unwrap_or(created)) / DAY;
            let age_days = (now - created) / DAY;
            if idle_days > 90.0 {
                expected.insert(("IAMAccessKeyUnused90Days".into(), name.clone(), id.clone()));
            } else if idle_days > 45.0 {
                expected.insert(("IAMAccessKeyUnused45Days".into(), name.clone(), id.clone()));
            }
            if age_days > 90.0 {
                expected.insert(("IAMAccessKeyNotRotated".into(), name.clone(), id.clone()));
            }
            if key["last_used_date"].is_null() && user["password_enabled"] == true {
                expected.insert((
                    "IAMInitialSetupKeyNeverUsed".into(),
                    name.clone(),
                    id.clone(),
                ));
            }
        }
        if active > 1 {
            expected.insert((
                "IAMUserMultipleActiveKeys".into(),
                name.clone(),
                String::new(),
            ));
        }
    }
    // A role unused for 90 days (since creation when IAM has no use of it), but never a
    // service-linked one.
    for role in seeded["roles"].as_array().into_iter().flatten() {
        let since = role["last_used_date"]
            .as_f64()
            .unwrap_or_else(|| role["create_date"].as_f64().unwrap());
        if role["service_linked"] != true && (now - since) / DAY > 90.0 {
            let name = role["name"].as_str().unwrap().to_string();
            expected.insert(("IAMRoleUnused90Days".into(), name, String::new()));
        }
    }
    expected
}

/// The user or role an alert is about.
fn principal(alert: &serde_json::Value) -> &str {
    let labels = &alert["labels"];
    labels["user"]
        .as_str()
        .or(labels["role"].as_str())
        .unwrap_or_default()
}

#[test]
fn the_expected_alerts_reach_alertmanager_and_no_others() {
    let Some(moto) = Moto::start(&root().join("tests/peers/sample-inventory.json")) else {
        return;
    };
    let exporter = Exporter::start(&moto.endpoint, &[]);
    exporter.wait_ready();
    let Some(alertmanager) = Alertmanager::start() else {
        return;
    };

    // The shipped rules, with `for:` shortened so the test need not wait 15 minutes; the
    // durations themselves are covered by promtool's unit tests. IAMKeyExporterAbsent keeps
    // its 5m: before Prometheus's first scrape no target exists, which is its condition.
    let dir = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(root().join("dashboards/alerts.yml")).unwrap();
    let mut alert = String::new();
    let fast_rules: String = rules
        .lines()
        .map(|l| {
            if let Some(name) = l.trim_start().strip_prefix("- alert: ") {
                alert = name.to_string();
            }
            if l.trim_start().starts_with("for: ") && alert != "IAMKeyExporterAbsent" {
                "        for: 0s".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let rules_path = dir.path().join("alerts.yml");
    std::fs::write(&rules_path, fast_rules).unwrap();
    let alerting = format!(
        "alerting:\n  alertmanagers:\n    - static_configs: [{{targets: [\"{}\"]}}]\n",
        alertmanager.address
    );
    let Some(_prometheus) =
        Prometheus::start_with_rules(&[&exporter.address], &rules_path, &alerting)
    else {
        return;
    };

    let expected = expected_alerts(&moto.seeded, now_secs());
    assert!(
        expected.len() >= 4,
        "the sample raises several alerts: {expected:?}"
    );
    assert!(
        expected
            .iter()
            .any(|(alert, ..)| alert.starts_with("IAMUserPasswordUnused")),
        "the sample has an unused console password: {expected:?}"
    );
    assert!(
        expected
            .iter()
            .any(|(alert, ..)| alert == "IAMRoleUnused90Days"),
        "the sample has an unused role: {expected:?}"
    );
    let key_alert = |a: &serde_json::Value| {
        a["labels"]["alertname"]
            .as_str()
            .is_some_and(|n| n.starts_with("IAM") && !n.starts_with("IAMKeyExporter"))
    };
    let received = wait_for(
        "the expected alerts in Alertmanager",
        Duration::from_secs(90),
        || {
            let alerts = alertmanager.alerts();
            let got: BTreeSet<(String, String, String)> = alerts
                .iter()
                .filter(|a| key_alert(a))
                .map(|a| {
                    let label = |n: &str| a["labels"][n].as_str().unwrap_or_default().to_string();
                    (
                        label("alertname"),
                        principal(a).to_string(),
                        label("access_key_id"),
                    )
                })
                .collect();
            (got == expected).then_some(alerts)
        },
    );

    let account = moto.seeded["account_id"].as_str().unwrap();
    for alert in received.iter().filter(|a| key_alert(a)) {
        let labels = &alert["labels"];
        assert_eq!(labels["account_id"], account);
        assert!(
            matches!(labels["severity"].as_str(), Some("warning" | "critical")),
            "{alert}"
        );
        let annotations = &alert["annotations"];
        assert!(
            annotations["summary"]
                .as_str()
                .unwrap()
                .contains(principal(alert)),
            "{alert}"
        );
        assert!(
            annotations["control"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        );
        assert!(
            annotations["runbook_url"]
                .as_str()
                .unwrap()
                .starts_with("docs/runbooks.md#")
        );
    }
    // Inactive keys never alert.
    for user in moto.seeded["users"].as_array().unwrap() {
        for key in user["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["status"] != "Active")
        {
            let id = key["access_key_id"].as_str().unwrap();
            assert!(
                !received.iter().any(|a| a["labels"]["access_key_id"] == id),
                "inactive {id} alerted"
            );
        }
    }
    // A healthy exporter raises none of its own alerts.
    assert!(
        !received.iter().any(|a| a["labels"]["alertname"]
            != "IAMKeyExporterServiceAccessJobsFailing"
            && a["labels"]["alertname"]
                .as_str()
                .is_some_and(|n| n.starts_with("IAMKeyExporter"))),
        "{received:?}"
    );
}
