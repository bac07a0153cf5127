//! The alert rules: `promtool check rules` and `promtool test rules` pass, and every
//! runbook_url names a section of docs/runbooks.md.

mod common;

use std::process::Command;

use common::*;

fn promtool(args: &[&str]) -> Option<String> {
    let promtool = which("promtool")?;
    let output = Command::new(promtool)
        .args(args)
        .current_dir(root().join("dashboards"))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}: {said}");
    Some(said)
}

#[test]
fn the_rules_are_valid() {
    if let Some(said) = promtool(&["check", "rules", "alerts.yml"]) {
        assert!(said.contains("SUCCESS"), "{said}");
    }
}

#[test]
fn every_alert_passes_its_unit_tests() {
    if let Some(said) = promtool(&["test", "rules", "alerts.test.yml"]) {
        assert!(said.contains("SUCCESS"), "{said}");
    }
}

#[test]
fn every_alert_is_tested_and_has_a_runbook_section() {
    let rules = std::fs::read_to_string(root().join("dashboards/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(root().join("dashboards/alerts.test.yml")).unwrap();
    let runbooks = std::fs::read_to_string(root().join("docs/runbooks.md")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for alert in &alerts {
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - exp_labels"
            )),
            "{alert} has no firing case in alerts.test.yml"
        );
    }
    for url in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url: "))
    {
        let anchor = url.trim_matches('"').split('#').nth(1).expect("an anchor");
        assert!(
            runbooks.contains(&format!("\n## {anchor}\n")),
            "no section {anchor} in docs/runbooks.md"
        );
    }
}
