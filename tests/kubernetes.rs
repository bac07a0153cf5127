//! The Kubernetes manifests of deploy/kubernetes: both kustomizations (base, shards)
//! render offline with `kubectl kustomize`; every core resource validates against the
//! Kubernetes 1.32 schemas with kubernetes-validate (strict: an unknown field is an error);
//! the ServiceMonitor and PrometheusRule validate against the Prometheus Operator's
//! schemas (tests/kubernetes/validate-operator.mjs, also strict); promtool accepts the
//! PrometheusRule's rules; the generated files equal their sources (dashboards/alerts.yml,
//! dashboards/*.json); and the pods are as hardened, probed, sized and sharded as
//! deploy/kubernetes says, the StatefulSet's pod template a twin of the Deployment's.
//! Each validator is also shown to reject a broken copy, so a pass means something.
//!
//! Peers: kubectl (with kustomize), kubernetes-validate in target/peers/venv, Node.js with
//! target/peers/node (scripts/install-kubernetes-peers.sh installs the last two), promtool.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::{Value, json};

use common::*;

/// The Kubernetes version whose schemas the core resources must satisfy: the kubectl of
/// this project's machines is 1.32, and the shards need 1.28 or later (the pod-index label).
const KUBERNETES_VERSION: &str = "1.32.0";
/// The API group of the Prometheus Operator's kinds, which kubernetes-validate has no
/// schema for (it warns and passes them): they go to validate-operator.mjs instead.
const OPERATOR_GROUP: &str = "monitoring.coreos.com/";
const REGENERATE: &str = "run scripts/generate-kubernetes.sh";

/// One document of a render: its YAML text as kustomize wrote it, and its value.
#[derive(Clone, Debug)]
struct Doc {
    text: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    fn is_operator(&self) -> bool {
        self.value["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with(OPERATOR_GROUP))
    }
}

struct Renders {
    base: Vec<Doc>,
    shards: Vec<Doc>,
}

fn kubernetes_dir() -> PathBuf {
    root().join("deploy/kubernetes")
}

/// `kubectl kustomize DIR`, offline: the proxies point at a closed port, so anything
/// fetched from the network would fail the render.
fn kustomize(kubectl: &Path, dir: &Path) -> String {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let output = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .env("HTTP_PROXY", &closed)
        .env("HTTPS_PROXY", &closed)
        .env("http_proxy", &closed)
        .env("https_proxy", &closed)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env("KUBECONFIG", "/dev/null")
        .output()
        .expect("run kubectl kustomize");
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 render")
}

/// The documents of a kustomize render. kustomize separates them with `---` lines, and no
/// line of a document starts with `---` (block scalars are indented), so the text splits
/// there; each part is parsed on its own.
fn documents(render: &str) -> Vec<Doc> {
    let mut docs = Vec::new();
    for text in format!("\n{render}").split("\n---\n") {
        let text = text.trim_start_matches('\n');
        if text.trim().is_empty() {
            continue;
        }
        let value: Value = serde_yaml_ng::from_str(text)
            .unwrap_or_else(|e| panic!("a rendered document does not parse: {e}\n{text}"));
        docs.push(Doc {
            text: format!("{text}\n"),
            value,
        });
    }
    docs
}

/// Both renders, made once per test binary; None (after `which`'s CI rule) without kubectl.
fn renders() -> Option<&'static Renders> {
    static RENDERS: OnceLock<Option<Renders>> = OnceLock::new();
    RENDERS
        .get_or_init(|| {
            let kubectl = which("kubectl")?;
            Some(Renders {
                base: documents(&kustomize(&kubectl, &kubernetes_dir().join("base"))),
                shards: documents(&kustomize(&kubectl, &kubernetes_dir().join("shards"))),
            })
        })
        .as_ref()
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Doc {
    docs.iter()
        .find(|d| d.kind() == kind && d.name() == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in the render"))
}

fn kinds_and_names(docs: &[Doc]) -> Vec<String> {
    let mut all: Vec<String> = docs
        .iter()
        .map(|d| format!("{}/{}", d.kind(), d.name()))
        .collect();
    all.sort();
    all
}

/// Runs a command, returning whether it succeeded and what it printed (stdout, then
/// stderr).
fn run(command: &mut Command) -> (bool, String) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

/// Writes documents as one YAML stream: JSON documents (JSON is YAML) for values, so a
/// broken copy says exactly the type it was given.
fn write_stream(dir: &Path, file: &str, docs: &[Value]) -> PathBuf {
    let text: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    let path = dir.join(file);
    std::fs::write(&path, text.join("\n---\n") + "\n").unwrap();
    path
}

// ------------------------------------------------------------------------------------
// The validators
// ------------------------------------------------------------------------------------

fn kubernetes_validate() -> Option<PathBuf> {
    let path = root().join("target/peers/venv/bin/kubernetes-validate");
    require_peer("kubernetes-validate", &path).then_some(path)
}

/// kubernetes-validate, strict, against KUBERNETES_VERSION's schemas.
fn validate_kubernetes(validator: &Path, file: &Path) -> (bool, String) {
    run(Command::new(validator)
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(file))
}

/// tests/kubernetes/validate-operator.mjs under Node.js, or None without the peers.
fn operator_validator() -> Option<Command> {
    let node = which("node")?;
    let schemas = root()
        .join("target/peers/node/node_modules/@kubernetes-models/prometheus-operator/package.json");
    if !require_peer("@kubernetes-models/prometheus-operator", &schemas) {
        return None;
    }
    let mut command = Command::new(node);
    command.arg(root().join("tests/kubernetes/validate-operator.mjs"));
    Some(command)
}

fn validate_operator(file: &Path) -> Option<(bool, String)> {
    let mut command = operator_validator()?;
    Some(run(command.arg(file)))
}

/// Splits a render between the two validators: the Operator's kinds and the rest. Every
/// document goes to exactly one, and the Operator's are exactly these two kinds.
fn split(docs: &[Doc]) -> (Vec<&Doc>, Vec<&Doc>) {
    let (operator, core): (Vec<&Doc>, Vec<&Doc>) = docs.iter().partition(|d| d.is_operator());
    let mut kinds: Vec<&str> = operator.iter().map(|d| d.kind()).collect();
    kinds.sort();
    assert_eq!(kinds, ["PrometheusRule", "ServiceMonitor"]);
    (operator, core)
}

#[test]
fn both_kustomizations_render_offline_with_the_expected_resources() {
    let Some(renders) = renders() else { return };
    let generated_config = |docs: &[Doc]| -> String {
        docs.iter()
            .find(|d| {
                d.kind() == "ConfigMap" && d.value["data"]["iam-key-exporter.toml"].is_string()
            })
            .expect("the generated ConfigMap")
            .name()
            .to_string()
    };
    let config = generated_config(&renders.base);
    assert!(
        config.starts_with("iam-key-exporter-") && config.len() > "iam-key-exporter-".len(),
        "the generated ConfigMap carries a content hash: {config}"
    );
    assert_eq!(config, generated_config(&renders.shards));
    let expected = |workload: &str| {
        let mut all = vec![
            "ServiceAccount/iam-key-exporter".to_string(),
            format!("ConfigMap/{config}"),
            "ConfigMap/iam-key-exporter-dashboard-overview".to_string(),
            "ConfigMap/iam-key-exporter-dashboard-user".to_string(),
            "Service/iam-key-exporter".to_string(),
            workload.to_string(),
            "PrometheusRule/iam-key-exporter".to_string(),
            "ServiceMonitor/iam-key-exporter".to_string(),
        ];
        all.sort();
        all
    };
    assert_eq!(
        kinds_and_names(&renders.base),
        expected("Deployment/iam-key-exporter")
    );
    assert_eq!(
        kinds_and_names(&renders.shards),
        expected("StatefulSet/iam-key-exporter")
    );

    for doc in renders.base.iter().chain(&renders.shards) {
        // Users choose the namespace (kubectl -n, or namespace: in their overlay).
        assert!(
            doc.value["metadata"].get("namespace").is_none(),
            "{}/{} sets a namespace",
            doc.kind(),
            doc.name()
        );
        assert_eq!(
            doc.value["metadata"]["labels"]["app.kubernetes.io/name"],
            "iam-key-exporter",
            "{}/{} lacks the app label",
            doc.kind(),
            doc.name()
        );
    }

    // The ConfigMap holds deploy/kubernetes/base/iam-key-exporter.toml as it is.
    let toml =
        std::fs::read_to_string(kubernetes_dir().join("base/iam-key-exporter.toml")).unwrap();
    for docs in [&renders.base, &renders.shards] {
        assert_eq!(
            find(docs, "ConfigMap", &config).value["data"]["iam-key-exporter.toml"],
            toml.as_str()
        );
    }
}

#[test]
fn every_core_resource_validates_against_the_kubernetes_schemas() {
    let Some(renders) = renders() else { return };
    let Some(validator) = kubernetes_validate() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (label, docs) in [("base", &renders.base), ("shards", &renders.shards)] {
        let (_, core) = split(docs);
        // The documents as kustomize wrote them, so types are read as kubectl reads them.
        let file = dir.path().join(format!("{label}.yaml"));
        let text: Vec<&str> = core.iter().map(|d| d.text.as_str()).collect();
        std::fs::write(&file, text.join("---\n")).unwrap();
        let (ok, said) = validate_kubernetes(&validator, &file);
        eprintln!("kubernetes-validate, {label}:\n{said}");
        assert!(
            ok,
            "kubernetes-validate failed on the {label} render:\n{said}"
        );
        // Every document is validated: no WARN (no schema) and no ERROR, one pass each.
        assert!(
            !said.contains("WARN") && !said.contains("ERROR"),
            "{label}: {said}"
        );
        for doc in &core {
            let passed = format!(
                "passed for resource {}/{} against version 1.32",
                doc.kind().to_lowercase(),
                doc.name()
            );
            assert!(said.contains(&passed), "{label}: no `{passed}` in\n{said}");
        }
        assert_eq!(said.lines().count(), core.len(), "{label}: {said}");
    }
}

#[test]
fn kubernetes_validate_passes_kinds_it_has_no_schema_for_so_those_are_routed_away() {
    // Why `split` sends the Operator's kinds elsewhere: kubernetes-validate only warns
    // about a kind it has no schema for and exits 0, so it would pass any ServiceMonitor.
    let Some(renders) = renders() else { return };
    let Some(validator) = kubernetes_validate() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut monitor = find(&renders.base, "ServiceMonitor", "iam-key-exporter")
        .value
        .clone();
    monitor["spec"]["endpoints"] = json!("not a list");
    let file = write_stream(dir.path(), "monitor.yaml", &[monitor]);
    let (ok, said) = validate_kubernetes(&validator, &file);
    assert!(ok, "{said}");
    assert!(
        said.contains("WARN") && said.contains("Couldn't find schema for kind ServiceMonitor"),
        "{said}"
    );
}

#[test]
fn kubernetes_validate_rejects_broken_manifests() {
    let Some(renders) = renders() else { return };
    let Some(validator) = kubernetes_validate() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let deployment = &find(&renders.base, "Deployment", "iam-key-exporter").value;
    let statefulset = &find(&renders.shards, "StatefulSet", "iam-key-exporter").value;
    let mut cases: Vec<(&str, Value, &str)> = Vec::new();

    let mut unknown = deployment.clone();
    unknown["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesytem"] =
        json!(true);
    cases.push((
        "an unknown field",
        unknown,
        "'readOnlyRootFilesytem' was unexpected",
    ));

    let mut wrong_type = deployment.clone();
    wrong_type["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] = json!("yes");
    cases.push((
        "runAsNonRoot: \"yes\"",
        wrong_type,
        "runAsNonRoot: 'yes' is not of type 'boolean'",
    ));

    let mut number = statefulset.clone();
    number["spec"]["template"]["spec"]["containers"][0]["env"][1]["value"] = json!(3);
    cases.push((
        "an environment value that is not a string",
        number,
        "env.1.value: 3 is not of type 'string'",
    ));

    for (i, (what, doc, expected)) in cases.into_iter().enumerate() {
        let file = write_stream(dir.path(), &format!("broken-{i}.yaml"), &[doc]);
        let (ok, said) = validate_kubernetes(&validator, &file);
        assert!(!ok, "kubernetes-validate accepted {what}: {said}");
        assert!(
            said.contains("ERROR") && said.contains(expected),
            "{what}: expected `{expected}` in {said}"
        );
    }
}

#[test]
fn the_operator_resources_validate_against_the_operator_schemas() {
    let Some(renders) = renders() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (label, docs) in [("base", &renders.base), ("shards", &renders.shards)] {
        let (operator, _) = split(docs);
        let file = dir.path().join(format!("{label}.yaml"));
        let text: Vec<&str> = operator.iter().map(|d| d.text.as_str()).collect();
        std::fs::write(&file, text.join("---\n")).unwrap();
        let Some((ok, said)) = validate_operator(&file) else {
            return;
        };
        eprintln!("validate-operator.mjs, {label}:\n{said}");
        assert!(
            ok,
            "the Operator's schemas refuse the {label} render:\n{said}"
        );
        for doc in &operator {
            let passed = format!(
                "PASS {}/{} (monitoring.coreos.com/v1)",
                doc.kind(),
                doc.name()
            );
            assert!(said.contains(&passed), "{label}: no `{passed}` in\n{said}");
        }
        assert!(
            said.contains("Operator resources: 2 valid, 0 invalid"),
            "{said}"
        );
    }
}

#[test]
fn the_operator_validator_rejects_broken_resources() {
    let Some(renders) = renders() else { return };
    let dir = tempfile::tempdir().unwrap();
    let monitor = &find(&renders.base, "ServiceMonitor", "iam-key-exporter").value;
    let rule = &find(&renders.base, "PrometheusRule", "iam-key-exporter").value;
    let mut cases: Vec<(&str, Value, &str)> = Vec::new();

    let mut endpoints = monitor.clone();
    endpoints["spec"]["endpoints"] = json!("metrics");
    cases.push((
        "spec.endpoints as a string",
        endpoints,
        "data/spec/endpoints must be array",
    ));

    let mut interval = monitor.clone();
    interval["spec"]["endpoints"][0]["interval"] = json!("a minute");
    cases.push((
        "an interval that is no duration",
        interval,
        "data/spec/endpoints/0/interval must match pattern",
    ));

    let mut misspelt = monitor.clone();
    misspelt["spec"]["endpoints"][0]["scrapeTimout"] = json!("30s");
    cases.push((
        "a misspelt endpoint field",
        misspelt,
        "/spec/endpoints/0/scrapeTimout: unknown field",
    ));

    let mut no_expr = rule.clone();
    no_expr["spec"]["groups"][1]["rules"][0]
        .as_object_mut()
        .unwrap()
        .remove("expr");
    cases.push((
        "a rule without expr",
        no_expr,
        "data/spec/groups/1/rules/0 must have required property expr",
    ));

    let mut keep_firing = rule.clone();
    let alert = keep_firing["spec"]["groups"][1]["rules"][0]
        .as_object_mut()
        .unwrap();
    let value = alert.remove("keep_firing_for").expect("keep_firing_for");
    alert.insert("keep_firing_fro".to_string(), value);
    cases.push((
        "a misspelt keep_firing_for",
        keep_firing,
        "/spec/groups/1/rules/0/keep_firing_fro: unknown field",
    ));

    for (i, (what, doc, expected)) in cases.into_iter().enumerate() {
        let file = write_stream(dir.path(), &format!("broken-{i}.yaml"), &[doc]);
        let Some((ok, said)) = validate_operator(&file) else {
            return;
        };
        assert!(!ok, "the Operator's schemas accepted {what}: {said}");
        assert!(
            said.contains("FAIL") && said.contains(expected),
            "{what}: expected `{expected}` in {said}"
        );
    }
}

#[test]
fn promtool_accepts_the_prometheusrule_rules() {
    let Some(renders) = renders() else { return };
    let Some(promtool) = which("promtool") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (label, docs) in [("base", &renders.base), ("shards", &renders.shards)] {
        let spec = &find(docs, "PrometheusRule", "iam-key-exporter").value["spec"];
        let file = dir.path().join(format!("{label}-rules.yml"));
        std::fs::write(&file, serde_yaml_ng::to_string(spec).unwrap()).unwrap();
        let (ok, said) = run(Command::new(&promtool).args(["check", "rules"]).arg(&file));
        eprintln!("promtool check rules, {label}:\n{said}");
        assert!(ok && said.contains("SUCCESS"), "{label}: {said}");
    }
}

// ------------------------------------------------------------------------------------
// Generated files
// ------------------------------------------------------------------------------------

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The dashboards of dashboards/*.json: name (without .json) and exact text.
fn dashboards() -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = std::fs::read_dir(root().join("dashboards"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let name = path.file_stem().unwrap().to_str().unwrap().to_string();
            (name, read(&path))
        })
        .collect();
    all.sort();
    assert!(all.len() >= 2, "{all:?}");
    all
}

fn parse_all(text: &str) -> Vec<serde_yaml_ng::Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| serde_yaml_ng::Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn the_prometheusrule_is_dashboards_alerts_yml() {
    let alerts: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read(&root().join("dashboards/alerts.yml"))).unwrap();
    let file = parse_all(&read(
        &kubernetes_dir().join("operator/prometheusrule.yaml"),
    ));
    assert_eq!(file.len(), 1);
    assert!(
        file[0]["spec"] == alerts,
        "deploy/kubernetes/operator/prometheusrule.yaml's spec differs from dashboards/alerts.yml: {REGENERATE}"
    );
    let Some(renders) = renders() else { return };
    for docs in [&renders.base, &renders.shards] {
        let rendered: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&find(docs, "PrometheusRule", "iam-key-exporter").text)
                .unwrap();
        assert!(
            rendered["spec"] == alerts,
            "the rendered PrometheusRule differs from dashboards/alerts.yml: {REGENERATE}"
        );
    }
}

#[test]
fn each_dashboard_configmap_holds_its_file_byte_for_byte() {
    let dashboards = dashboards();
    let file = parse_all(&read(
        &kubernetes_dir().join("operator/grafana-dashboards.yaml"),
    ));
    let mut names: Vec<String> = file
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    let expected: Vec<String> = dashboards
        .iter()
        .map(|(name, _)| format!("iam-key-exporter-dashboard-{name}"))
        .collect();
    assert_eq!(
        names, expected,
        "one ConfigMap per dashboards/*.json: {REGENERATE}"
    );

    let renders = renders();
    for (name, text) in &dashboards {
        let configmap = format!("iam-key-exporter-dashboard-{name}");
        let key = format!("{name}.json");
        let in_file = file
            .iter()
            .find(|d| d["metadata"]["name"].as_str() == Some(configmap.as_str()))
            .unwrap();
        assert_eq!(
            in_file["metadata"]["labels"]["grafana_dashboard"].as_str(),
            Some("1")
        );
        assert_eq!(
            in_file["data"].as_mapping().map(|m| m.len()),
            Some(1),
            "{configmap} holds one key"
        );
        assert!(
            in_file["data"][key.as_str()].as_str() == Some(text.as_str()),
            "{configmap}'s {key} differs from dashboards/{key}: {REGENERATE}"
        );
        if let Some(renders) = renders {
            for docs in [&renders.base, &renders.shards] {
                assert!(
                    find(docs, "ConfigMap", &configmap).value["data"][key.as_str()].as_str()
                        == Some(text.as_str()),
                    "the rendered {configmap}'s {key} differs from dashboards/{key}: {REGENERATE}"
                );
            }
        }
    }
}

#[test]
fn the_generated_files_are_what_the_script_generates() {
    // Byte for byte, comments included: the script in --check mode writes nothing.
    let (ok, said) = run(Command::new("bash")
        .arg(root().join("scripts/generate-kubernetes.sh"))
        .arg("--check"));
    assert!(ok, "{said}");
}

// ------------------------------------------------------------------------------------
// What the pods are
// ------------------------------------------------------------------------------------

fn pod_template<'a>(docs: &'a [Doc], kind: &str) -> &'a Value {
    &find(docs, kind, "iam-key-exporter").value["spec"]["template"]
}

fn container(template: &Value) -> &Value {
    let containers = template["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    &containers[0]
}

fn check_pod(docs: &[Doc], kind: &str) {
    let template = pod_template(docs, kind);
    let pod = &template["spec"];
    let what = format!("{kind}'s pod");
    assert_eq!(pod["serviceAccountName"], "iam-key-exporter", "{what}");
    assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
    assert_eq!(pod["enableServiceLinks"], false, "{what}");
    assert_eq!(
        pod["securityContext"],
        json!({
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        }),
        "{what}"
    );
    assert_eq!(
        template["metadata"]["labels"]["app.kubernetes.io/name"],
        "iam-key-exporter"
    );

    let c = container(template);
    assert_eq!(c["image"], "iam-key-exporter:0.1.0", "{what}");
    assert!(
        c.get("command").is_none(),
        "the image's ENTRYPOINT runs: {c}"
    );
    assert_eq!(
        c["args"],
        json!(["--config.file=/etc/iam-key-exporter/iam-key-exporter.toml"])
    );
    assert_eq!(
        c["securityContext"],
        json!({
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "privileged": false,
            "capabilities": {"drop": ["ALL"]},
        }),
        "{what}"
    );
    assert_eq!(
        c["ports"],
        json!([{"name": "metrics", "containerPort": 9887, "protocol": "TCP"}])
    );
    let probe = |path: &str| json!({"path": path, "port": "metrics"});
    assert_eq!(
        c["livenessProbe"],
        json!({"httpGet": probe("/-/healthy"), "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3})
    );
    assert_eq!(
        c["readinessProbe"],
        json!({"httpGet": probe("/-/ready"), "periodSeconds": 10, "failureThreshold": 3})
    );
    assert_eq!(
        c["startupProbe"],
        json!({"httpGet": probe("/-/ready"), "periodSeconds": 10, "failureThreshold": 60})
    );
    // Ten minutes for the first refresh before the kubelet gives up on the pod.
    assert_eq!(
        c["startupProbe"]["periodSeconds"].as_u64().unwrap()
            * c["startupProbe"]["failureThreshold"].as_u64().unwrap(),
        600
    );
    assert_eq!(
        c["resources"],
        json!({
            "requests": {"cpu": "20m", "memory": "64Mi"},
            "limits": {"cpu": "1", "memory": "320Mi"},
        }),
        "{what}"
    );

    // The configuration: the generated ConfigMap, read-only, where --config.file points.
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "config", "mountPath": "/etc/iam-key-exporter", "readOnly": true}])
    );
    let volumes = pod["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 1);
    let configmap = volumes[0]["configMap"]["name"].as_str().unwrap();
    assert!(
        find(docs, "ConfigMap", configmap).value["data"]["iam-key-exporter.toml"].is_string(),
        "{what} mounts {configmap}"
    );
}

#[test]
fn the_pods_are_hardened_probed_and_sized_in_both_renders() {
    let Some(renders) = renders() else { return };
    check_pod(&renders.base, "Deployment");
    check_pod(&renders.shards, "StatefulSet");

    for docs in [&renders.base, &renders.shards] {
        let account = &find(docs, "ServiceAccount", "iam-key-exporter").value;
        assert_eq!(account["automountServiceAccountToken"], false);
        assert_eq!(
            account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
            "arn:aws:iam::111111111111:role/iam-key-exporter"
        );
    }

    let deployment = &find(&renders.base, "Deployment", "iam-key-exporter").value["spec"];
    assert_eq!(deployment["replicas"], 1);
    assert_eq!(
        deployment["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    );
    assert_eq!(
        deployment["selector"],
        json!({"matchLabels": {"app.kubernetes.io/name": "iam-key-exporter"}})
    );
    assert!(
        container(pod_template(&renders.base, "Deployment"))
            .get("env")
            .is_none()
    );
}

#[test]
fn the_statefulset_is_the_deployment_with_a_shard_per_pod() {
    let Some(renders) = renders() else { return };
    assert!(
        !renders.shards.iter().any(|d| d.kind() == "Deployment"),
        "the shards overlay deletes the Deployment"
    );
    let statefulset = &find(&renders.shards, "StatefulSet", "iam-key-exporter").value["spec"];
    assert_eq!(statefulset["replicas"], 3);
    assert_eq!(statefulset["serviceName"], "iam-key-exporter");
    assert_eq!(statefulset["podManagementPolicy"], "Parallel");
    assert_eq!(statefulset["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(
        statefulset["selector"],
        json!({"matchLabels": {"app.kubernetes.io/name": "iam-key-exporter"}})
    );

    // The shard: the pod's ordinal label as the index, the replicas as the total.
    let shard = container(&statefulset["template"])["env"].clone();
    assert_eq!(
        shard,
        json!([
            {
                "name": "IAM_KEY_EXPORTER_SHARD__INDEX",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}},
            },
            {"name": "IAM_KEY_EXPORTER_SHARD__TOTAL", "value": "3"},
        ])
    );
    assert_eq!(
        shard[1]["value"].as_str(),
        Some(statefulset["replicas"].to_string().as_str()),
        "the shard total is the StatefulSet's replicas"
    );

    // The two pod templates are alike but for the shard's environment.
    let mut template = statefulset["template"].clone();
    template["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("env");
    let deployment = pod_template(&renders.base, "Deployment");
    assert!(
        template == *deployment,
        "deploy/kubernetes/shards/statefulset.yaml's pod template differs from \
         deploy/kubernetes/base/deployment.yaml's (all but env must be alike):\n\
         StatefulSet: {template:#}\nDeployment: {deployment:#}"
    );

    // Headless for the pods' DNS names; otherwise the base's Service.
    let headless = &find(&renders.shards, "Service", "iam-key-exporter").value;
    let service = &find(&renders.base, "Service", "iam-key-exporter").value;
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert!(service["spec"].get("clusterIP").is_none());
    let mut without = headless.clone();
    without["spec"].as_object_mut().unwrap().remove("clusterIP");
    assert_eq!(&without, service);
}

#[test]
fn the_shard_total_follows_replicas_wherever_the_shards_overlay_sets_them() {
    // A copy of deploy/kubernetes with a replicas entry added to the shards overlay, as
    // its kustomization.yaml says to change the number of shards.
    let Some(kubectl) = which("kubectl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&kubernetes_dir(), &dir.path().join("kubernetes"));
    let kustomization = dir.path().join("kubernetes/shards/kustomization.yaml");
    let mut text = read(&kustomization);
    text.push_str("replicas:\n  - name: iam-key-exporter\n    count: 5\n");
    std::fs::write(&kustomization, text).unwrap();
    let docs = documents(&kustomize(&kubectl, &dir.path().join("kubernetes/shards")));
    let statefulset = &find(&docs, "StatefulSet", "iam-key-exporter").value["spec"];
    assert_eq!(statefulset["replicas"], 5);
    assert_eq!(
        container(&statefulset["template"])["env"][1],
        json!({"name": "IAM_KEY_EXPORTER_SHARD__TOTAL", "value": "5"})
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn the_servicemonitor_scrapes_the_service_as_job_iam_key_exporter() {
    let Some(renders) = renders() else { return };
    for (label, docs, workload) in [
        ("base", &renders.base, "Deployment"),
        ("shards", &renders.shards, "StatefulSet"),
    ] {
        let monitor = &find(docs, "ServiceMonitor", "iam-key-exporter").value;
        let service = &find(docs, "Service", "iam-key-exporter").value;
        assert_eq!(
            monitor["metadata"]["labels"]["release"],
            "kube-prometheus-stack"
        );
        assert_eq!(
            find(docs, "PrometheusRule", "iam-key-exporter").value["metadata"]["labels"]["release"],
            "kube-prometheus-stack"
        );
        // The monitor selects the Service, and the Service the pods.
        for (key, value) in monitor["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap()
        {
            assert_eq!(&service["metadata"]["labels"][key], value, "{label}: {key}");
        }
        let pod_labels = &pod_template(docs, workload)["metadata"]["labels"];
        for (key, value) in service["spec"]["selector"].as_object().unwrap() {
            assert_eq!(&pod_labels[key], value, "{label}: {key}");
        }
        assert_eq!(
            monitor["spec"]["endpoints"],
            json!([{"port": "metrics", "path": "/metrics", "interval": "60s", "scrapeTimeout": "30s"}])
        );
        assert_eq!(
            service["spec"]["ports"],
            json!([{"name": "metrics", "port": 9887, "targetPort": "metrics", "protocol": "TCP"}])
        );
    }
    // The Operator names the job after the Service; the shipped alert expects that name.
    let alerts = read(&root().join("dashboards/alerts.yml"));
    assert!(
        alerts.contains("up{job=\"iam-key-exporter\"}"),
        "IAMKeyExporterDown's job"
    );
}

#[test]
fn the_exporter_accepts_the_rendered_configuration_args_and_shard_environment() {
    let Some(renders) = renders() else { return };
    let docs = &renders.shards;
    let template = pod_template(docs, "StatefulSet");
    let volume = &template["spec"]["volumes"][0]["configMap"]["name"];
    let configmap = &find(docs, "ConfigMap", volume.as_str().unwrap()).value["data"];
    let dir = tempfile::tempdir().unwrap();
    let mount = "/etc/iam-key-exporter/";
    for (file, text) in configmap.as_object().unwrap() {
        std::fs::write(dir.path().join(file), text.as_str().unwrap()).unwrap();
    }

    // The container's args with the mount path moved here, and its environment with the
    // pod index the downward API would give the third pod.
    let c = container(template);
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace(mount, &format!("{}/", dir.path().display()))
        })
        .collect();
    let mut command = exporter_command();
    command.args(&args).arg("--check-config");
    for variable in c["env"].as_array().unwrap() {
        let value = match variable["value"].as_str() {
            Some(value) => value.to_string(),
            None => {
                assert_eq!(
                    variable["valueFrom"]["fieldRef"]["fieldPath"],
                    "metadata.labels['apps.kubernetes.io/pod-index']"
                );
                "2".to_string()
            }
        };
        command.env(variable["name"].as_str().unwrap(), value);
    }
    let (ok, said) = run(&mut command);
    assert!(
        ok,
        "the exporter refuses the rendered configuration: {said}"
    );
    for expected in [
        "kind: Auto",
        "listen_address: \":9887\"",
        "format: Json",
        "total: 3",
        "index: 2",
    ] {
        assert!(said.contains(expected), "no `{expected}` in {said}");
    }

    // The commented examples of [[accounts]] and [organizations] are valid once
    // uncommented.
    let toml = read(&kubernetes_dir().join("base/iam-key-exporter.toml"));
    let uncommented: String = toml
        .lines()
        .map(|line| {
            let rest = line.strip_prefix("# ").unwrap_or(line);
            let is_toml = rest.starts_with('[')
                || rest.starts_with("# ")
                || rest.split_once(" = ").is_some_and(|(key, _)| {
                    key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                });
            if line.starts_with("# ") && is_toml {
                rest
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.path().join("uncommented.toml");
    std::fs::write(&path, &uncommented).unwrap();
    let (ok, said) = run(exporter_command()
        .arg(format!("--config.file={}", path.display()))
        .arg("--check-config"));
    assert!(
        ok,
        "the uncommented examples are refused: {said}\n{uncommented}"
    );
    for expected in [
        "arn:aws:iam::222222222222:role/iam-key-exporter",
        "\"security-tooling\"",
        "enabled: true,\n        role_name",
    ] {
        assert!(said.contains(expected), "no `{expected}` in {said}");
    }
}
