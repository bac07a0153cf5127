//! The Grafana dashboards: valid JSON with the fields Grafana requires, no hard-coded
//! datasource, and every panel query, with its variables substituted, valid PromQL that
//! returns data from a real Prometheus scraping the exporter (against the seeded moto).

mod common;

use std::time::Duration;

use common::*;

fn dashboards() -> Vec<(String, serde_json::Value)> {
    ["overview.json", "user.json"]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(root().join("dashboards").join(name)).unwrap();
            let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name.to_string(), json)
        })
        .collect()
}

fn targets(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            out.push((
                panel["title"].as_str().unwrap().to_string(),
                target["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

#[test]
fn dashboards_have_what_grafana_requires_and_no_hard_coded_datasource() {
    let mut uids = Vec::new();
    for (name, d) in dashboards() {
        let uid = d["uid"].as_str().unwrap_or_else(|| panic!("{name}: uid"));
        assert!(
            uid.len() <= 40,
            "{name}: Grafana uids are at most 40 characters"
        );
        uids.push(uid.to_string());
        assert!(
            d["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{name}: title"
        );
        assert!(
            d["schemaVersion"].as_i64().unwrap() >= 36,
            "{name}: schemaVersion"
        );
        let variables = d["templating"]["list"].as_array().unwrap();
        assert!(
            variables
                .iter()
                .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
            "{name}: a datasource variable"
        );
        let mut ids = Vec::new();
        for panel in d["panels"].as_array().unwrap() {
            ids.push(panel["id"].as_i64().unwrap());
            for key in ["x", "y", "w", "h"] {
                assert!(panel["gridPos"][key].is_i64(), "{name}: gridPos.{key}");
            }
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{name}: {}",
                panel["title"]
            );
            for target in panel["targets"].as_array().unwrap() {
                assert_eq!(target["datasource"]["uid"], "${datasource}");
                assert!(target["refId"].is_string() && target["expr"].is_string());
            }
        }
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{name}: panel ids are unique");
    }
    assert_eq!(uids.len(), 2);
    assert_ne!(uids[0], uids[1]);
}

#[test]
fn every_panel_query_returns_data_from_a_real_prometheus() {
    let Some(moto) = Moto::start(&root().join("tests/peers/sample-inventory.json")) else {
        return;
    };
    let exporter = Exporter::start(&moto.endpoint, &[]);
    exporter.wait_ready();
    let Some(prometheus) = Prometheus::start(&[&exporter.address], "") else {
        return;
    };
    // A user of the sample with keys, service counts and console facts.
    let user = "alice";
    let mut queries = Vec::new();
    for (name, d) in dashboards() {
        for variable in d["templating"]["list"].as_array().unwrap() {
            if let Some(query) = variable["query"]["query"].as_str() {
                queries.push((
                    format!("{name}: variable {}", variable["name"]),
                    query.to_string(),
                ));
            }
        }
        for (title, expr) in targets(&d) {
            queries.push((format!("{name}: {title}"), expr));
        }
    }
    for (what, expr) in queries {
        // label_values() is Grafana's; Prometheus answers the series it is built on.
        let expr = match expr.strip_prefix("label_values(") {
            Some(rest) => rest.rsplit_once(',').unwrap().0.to_string(),
            None => expr,
        };
        let expr = expr
            .replace("$account", ".*")
            .replace("$user", user)
            .replace("$__rate_interval", "1m");
        wait_for(
            &format!("data for {what}: {expr}"),
            Duration::from_secs(60),
            || (!prometheus.query(&expr).is_empty()).then_some(()),
        );
    }
}
