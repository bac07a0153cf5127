//! Test harness: real peers (moto, promtool) on loopback, the built exporter binary, and
//! a small parser for the exposition text. Every process started here is killed on drop.

#![allow(dead_code)] // Each test binary uses its own part of the harness.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Credentials for moto. Never a seeded key id: moto would record their use.
pub const TEST_ACCESS_KEY: &str = "testing";
/// A secret that must never appear in a label or a log line.
pub const TEST_SECRET: &str = "test-secret-that-must-never-leak";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A peer that is not installed fails the test in CI and skips it elsewhere, loudly.
pub fn require_peer(name: &str, path: &Path) -> bool {
    if path.exists() {
        return true;
    }
    let hint = "install it with scripts/install-test-peers.sh";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("test peer {name} missing at {}: {hint}", path.display());
    }
    eprintln!(
        "SKIPPED: test peer {name} missing at {} ({hint})",
        path.display()
    );
    false
}

pub fn moto_python() -> PathBuf {
    root().join("target/peers/venv/bin/python")
}

pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Polls `check` until it returns Some or `limit` passes. A liveness bound, not a timing
/// assertion: the limits are generous.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts the Python peer `tests/peers/SCRIPT` in the moto venv and reads the one JSON
/// line it prints once it listens. Its stdin is returned to be held open: the peers exit
/// when it closes, so they die with the test.
fn spawn_peer(script: &str, args: &[&str]) -> (Child, ChildStdin, serde_json::Value) {
    let mut child = Command::new(moto_python())
        .arg(root().join("tests/peers").join(script))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {script}: {e}"));
    let stdin = child.stdin.take().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("read {script}'s first line: {e}"));
    let said =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{script} said {line:?}: {e}"));
    (child, stdin, said)
}

/// The moto IAM server of tests/peers/moto_server.py, seeded with a scenario.
pub struct Moto {
    child: Child,
    /// Held open: the server exits when its stdin closes, so it dies with the test.
    _stdin: ChildStdin,
    pub endpoint: String,
    /// What was seeded, as the server reported it (ids, epoch timestamps).
    pub seeded: serde_json::Value,
}

impl Moto {
    pub fn start(scenario: &Path) -> Option<Moto> {
        let scenario = scenario.to_str().expect("a UTF-8 path");
        Moto::spawn(&["--scenario", scenario])
    }

    /// `start` with more of moto_server.py's flags (`--cloudtrail-delay 5`, say).
    pub fn start_with(scenario: &Path, args: &[&str]) -> Option<Moto> {
        let scenario = scenario.to_str().expect("a UTF-8 path");
        let mut all = vec!["--scenario", scenario];
        all.extend_from_slice(args);
        Moto::spawn(&all)
    }

    /// moto in bench mode: `users` generated users with 2 keys each, no scenario.
    pub fn start_bench(users: usize) -> Option<Moto> {
        Moto::spawn(&["--bench-users", &users.to_string()])
    }

    /// moto_server.py with `args` on a free loopback port, or `None` without the peer.
    fn spawn(args: &[&str]) -> Option<Moto> {
        if !require_peer("moto", &moto_python()) {
            return None;
        }
        let mut all = args.to_vec();
        all.extend(["--host", "127.0.0.1", "--port", "0"]);
        let (child, stdin, seeded) = spawn_peer("moto_server.py", &all);
        let endpoint = seeded["endpoint"].as_str().unwrap().to_string();
        Some(Moto {
            child,
            _stdin: stdin,
            endpoint,
            seeded,
        })
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The seeded roles that get service-access jobs by default: all but the
    /// service-linked ones.
    pub fn roles_with_jobs(&self) -> Vec<&serde_json::Value> {
        self.seeded["roles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|role| role["service_linked"] != true)
            .collect()
    }

    /// An IAM client for changing the scenario while the exporter runs.
    pub fn iam_client(&self) -> aws_sdk_iam::Client {
        aws_sdk_iam::Client::new(&self.sdk_config())
    }

    /// A CloudTrail client of the scenario's main account, in us-east-1 where IAM's
    /// events are.
    pub fn cloudtrail_client(&self) -> aws_sdk_cloudtrail::Client {
        aws_sdk_cloudtrail::Client::new(&self.sdk_config())
    }

    /// An Organizations client of the scenario's management account.
    pub fn organizations_client(&self) -> aws_sdk_organizations::Client {
        aws_sdk_organizations::Client::new(&self.sdk_config())
    }

    fn sdk_config(&self) -> aws_config::SdkConfig {
        let credentials = aws_credential_types::Credentials::new(
            TEST_ACCESS_KEY,
            TEST_SECRET,
            None,
            None,
            "test",
        );
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(credentials),
            )
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https(),
            )
            .build()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The exporter binary with the test credentials and nothing else of this process's
/// environment: no shared config files, no instance metadata, every setting at its
/// default until the caller adds one.
pub fn exporter_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_iam-key-exporter"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    command
}

/// The exporter binary, started with settings from the environment.
pub struct Exporter {
    child: Child,
    pub address: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Exporter {
    /// Starts the exporter against the IAM API at `endpoint` on a free loopback port and
    /// waits until it listens (not until it is ready).
    pub fn start(endpoint: &str, env: &[(&str, &str)]) -> Exporter {
        let mut all = vec![("IAM_KEY_EXPORTER_AWS__ENDPOINT_URL", endpoint)];
        all.extend_from_slice(env);
        Exporter::start_with(&[], &all)
    }

    /// Starts the exporter with extra flags and environment, without an IAM endpoint.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Exporter {
        let mut command = exporter_command();
        command
            .args(["--web.listen-address", "127.0.0.1:0"])
            .args(args)
            .env("IAM_KEY_EXPORTER_AWS__MAX_ATTEMPTS", "2")
            .env("IAM_KEY_EXPORTER_AWS__ATTEMPT_TIMEOUT", "5s")
            .env("IAM_KEY_EXPORTER_AWS__CALL_TIMEOUT", "5s")
            .env("IAM_KEY_EXPORTER_SERVICE_ACCESS__POLL_INTERVAL", "100ms")
            .env(
                "IAM_KEY_EXPORTER_SERVICE_ACCESS__POLL_INTERVAL_MAX",
                "200ms",
            );
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the exporter");

        let logs = Arc::new(Mutex::new(Vec::new()));
        let (address_tx, address_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening")
                    && let Some(address) = line.split("address=").nth(1)
                {
                    let _ = address_tx.send(address.split_whitespace().next().unwrap().to_string());
                }
                eprintln!("exporter: {line}");
                sink.lock().unwrap().push(line);
            }
        });
        let address = address_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the exporter logs its listen address");
        Exporter {
            child,
            address,
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(&self.address, path, &[])
    }

    pub fn metrics(&self) -> Metrics {
        Metrics::parse(&self.get("/metrics").text())
    }

    pub fn wait_ready(&self) {
        wait_for("/-/ready", Duration::from_secs(60), || {
            (self.get("/-/ready").status == 200).then_some(())
        });
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` and waits for the exit status, at most `limit`.
    pub fn signal_and_wait(
        &mut self,
        signal: &str,
        limit: Duration,
    ) -> Option<std::process::ExitStatus> {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }
}

/// A plain HTTP/1.1 GET through ureq, which leaves the body as sent (no decompression).
pub fn http_get(address: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut request = agent.get(format!("http://{address}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call().expect("HTTP request");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let mut body = Vec::new();
    response
        .body_mut()
        .as_reader()
        .read_to_end(&mut body)
        .expect("read body");
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// Series of an exposition, keyed by `name{label="value",...}` with labels sorted by name,
/// as the exporter writes them.
#[derive(Debug)]
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut series = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (key, value) = line.rsplit_once(' ').expect("series line");
            series.insert(key.to_string(), value.parse().expect("numeric value"));
        }
        Metrics(series)
    }

    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.get(&series_key(name, labels)).copied()
    }

    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {}", series_key(name, labels)))
    }

    /// `iam_key_exporter_aws_requests_total` of `operation`; 0 before its first call.
    pub fn aws_requests(&self, operation: &str) -> f64 {
        self.get(
            "iam_key_exporter_aws_requests_total",
            &[("operation", operation)],
        )
        .unwrap_or(0.0)
    }

    /// Series of `name` whose labels include `label="value"`.
    pub fn count_with(&self, name: &str, label: &str, value: &str) -> usize {
        let needle = format!("{label}=\"{value}\"");
        self.0
            .keys()
            .filter(|k| k.starts_with(&format!("{name}{{")) && k.contains(&needle))
            .count()
    }
}

/// The value of label `name` in a series key as `Metrics` holds it (`name{a="x",...}`).
pub fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let (_, rest) = series.split_once(&format!("{name}=\""))?;
    Some(rest.split('"').next().unwrap_or(rest))
}

pub fn series_key(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_string();
    }
    let mut labels = labels.to_vec();
    labels.sort();
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// The series an exposition has more than once, by name and label set in any label order
/// (Prometheus refuses the whole scrape then). Label values are read with their escapes,
/// since a user name may hold a comma.
pub fn duplicate_series(text: &str) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut twice = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, _value) = line.rsplit_once(' ').expect("series line");
        let (name, mut rest) = series.split_once('{').unwrap_or((series, "}"));
        let mut labels = Vec::new();
        while let Some((label, after)) = rest.split_once("=\"") {
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().expect("a closing quote") {
                    (_, '\\') => value.push(chars.next().expect("an escaped character").1),
                    (at, '"') => break at,
                    (_, c) => value.push(c),
                }
            };
            labels.push((label.trim_start_matches(',').to_string(), value));
            rest = &after[end + 1..];
        }
        labels.sort();
        if !seen.insert((name.to_string(), labels)) {
            twice.push(series.to_string());
        }
    }
    twice
}

/// `promtool check metrics` on `text`: its output, which must be empty for clean text.
pub fn promtool_check_metrics(text: &str) -> Option<String> {
    let promtool = which("promtool")?;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let mut said = String::from_utf8_lossy(&output.stdout).to_string();
    said.push_str(&String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "promtool check metrics failed: {said}"
    );
    Some(said)
}

/// A peer found on PATH, or None (after `require_peer`'s CI rule).
pub fn which(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    match found {
        Some(path) => Some(path),
        None => {
            require_peer(name, Path::new(&format!("$PATH/{name}")));
            None
        }
    }
}

/// An IAM endpoint on loopback where nothing listens: every call fails at once.
pub fn closed_endpoint() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// A free port on loopback (bound, read, released: the peer binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real Prometheus server (Debian's package) scraping `targets` every second with the
/// project's alert rules loaded, on a free loopback port, with storage in a temporary
/// directory. Killed on drop.
pub struct Prometheus {
    child: Child,
    pub address: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(targets: &[&str], extra_config: &str) -> Option<Prometheus> {
        Prometheus::start_with_rules(targets, &root().join("dashboards/alerts.yml"), extra_config)
    }

    pub fn start_with_rules(
        targets: &[&str],
        rules: &Path,
        extra_config: &str,
    ) -> Option<Prometheus> {
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let job = format!("static_configs: [{{targets: [{}]}}]", targets.join(", "));
        Prometheus::spawn(rules, &job, extra_config)
    }

    /// Prometheus scraping and evaluating `rules` every second, its `iam-key-exporter`
    /// job configured by `job` (a YAML flow mapping's entries), on a free port; waits
    /// until it is ready. `None` without the binary.
    fn spawn(rules: &Path, job: &str, extra_config: &str) -> Option<Prometheus> {
        let binary = which("prometheus")?;
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [\"{}\"]\n\
             scrape_configs:\n  - job_name: iam-key-exporter\n    {job}\n{extra_config}",
            rules.display(),
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus {
            child,
            address,
            _dir: dir,
        };
        wait_for("Prometheus ready", Duration::from_secs(60), || {
            (http_get_status(&format!("http://{}/-/ready", prometheus.address)) == Some(200))
                .then_some(())
        });
        Some(prometheus)
    }

    /// An instant query: the `data.result` array of the answer. Panics on an error answer.
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent
            .get(format!("http://{}/api/v1/query", self.address))
            .query("query", expr)
            .call()
            .expect("query Prometheus");
        let body: serde_json::Value =
            serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(body["status"], "success", "{expr}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Alertmanager (Debian's prometheus-alertmanager), clustering off, on a free
/// loopback port, with one receiver that delivers nowhere: the test reads its API.
pub struct Alertmanager {
    child: Child,
    pub address: String,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    pub fn start() -> Option<Alertmanager> {
        let binary = which("prometheus-alertmanager")?;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: nowhere\n  group_by: [alertname]\n  group_wait: 1s\n\
             receivers:\n  - name: nowhere\n",
        )
        .unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start alertmanager");
        let alertmanager = Alertmanager {
            child,
            address,
            _dir: dir,
        };
        wait_for("Alertmanager ready", Duration::from_secs(60), || {
            (http_get_status(&format!("http://{}/-/ready", alertmanager.address)) == Some(200))
                .then_some(())
        });
        Some(alertmanager)
    }

    /// The alerts Alertmanager holds, as its v2 API lists them.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        let mut response = ureq::get(format!("http://{}/api/v2/alerts", self.address))
            .call()
            .expect("query Alertmanager");
        let body: serde_json::Value =
            serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
        body.as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of a GET, or None when nothing answers.
pub fn http_get_status(url: &str) -> Option<u16> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    agent.get(url).call().ok().map(|r| r.status().as_u16())
}

/// tests/peers/fault_proxy.py in front of an IAM endpoint: forwards everything, and
/// injects the faults it is told to (see tests/peers/fault_proxy.md). Killed on drop.
pub struct FaultProxy {
    child: Child,
    _stdin: ChildStdin,
    /// The AWS endpoint to give the exporter.
    pub endpoint: String,
    control: String,
}

impl FaultProxy {
    pub fn start(upstream: &str, default_account: &str) -> FaultProxy {
        let (child, stdin, said) = spawn_peer(
            "fault_proxy.py",
            &["--upstream", upstream, "--default-account", default_account],
        );
        FaultProxy {
            child,
            _stdin: stdin,
            endpoint: said["endpoint"].as_str().unwrap().to_string(),
            control: said["control"].as_str().unwrap().to_string(),
        }
    }

    /// Replaces the fault rules.
    pub fn inject(&self, rules: serde_json::Value) {
        let url = format!("{}/faults", self.control);
        ureq::put(&url)
            .header("content-type", "application/json")
            .send(rules.to_string())
            .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    }

    /// Removes every fault: requests pass through again.
    pub fn clear(&self) {
        ureq::delete(&format!("{}/faults", self.control))
            .call()
            .expect("clear faults");
    }

    /// Stops listening (connections are refused) or listens again on the same port.
    pub fn set_up(&self, up: bool) {
        let verb = if up { "up" } else { "down" };
        ureq::post(&format!("{}/{verb}", self.control))
            .send_empty()
            .expect("proxy up/down");
    }

    /// Throttles like IAM: a token bucket per account, `rate` requests a second, at most
    /// `burst` at once; over-rate requests are answered Throttling and not forwarded.
    pub fn throttle(&self, rate: f64, burst: u32) {
        let url = format!("{}/throttle", self.control);
        ureq::put(&url)
            .header("content-type", "application/json")
            .send(serde_json::json!({"rate": rate, "burst": burst}).to_string())
            .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    }

    /// Zeroes the counters of `stats` (and every rule's `fired`).
    pub fn clear_stats(&self) {
        ureq::delete(&format!("{}/stats", self.control))
            .call()
            .expect("clear proxy stats");
    }

    pub fn stats(&self) -> serde_json::Value {
        let mut response = ureq::get(&format!("{}/stats", self.control))
            .call()
            .expect("proxy stats");
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `iam-key-exporter [args] whois KEY_ID` against `endpoint`, signing with
/// `credentials` (access key id, secret), and returns its output.
pub fn run_whois(
    endpoint: &str,
    credentials: (&str, &str),
    args: &[&str],
    key_id: &str,
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_iam-key-exporter"))
        .args(["--log.level", "error"])
        .args(args)
        .args(["whois", key_id])
        .env_clear()
        .env("AWS_ACCESS_KEY_ID", credentials.0)
        .env("AWS_SECRET_ACCESS_KEY", credentials.1)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("IAM_KEY_EXPORTER_AWS__ENDPOINT_URL", endpoint)
        .output()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Added for tests/replicas.rs: a Prometheus whose targets come and go (file-based service
// discovery), and its alerts API. Existing helpers above are unchanged.
// ---------------------------------------------------------------------------------------

/// Writes a file_sd targets file for the `iam-key-exporter` job: written aside and renamed
/// over, so Prometheus never reads half a file.
pub fn write_file_sd(path: &Path, targets: &[&str]) {
    let text = serde_json::json!([{ "targets": targets }]).to_string();
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

impl Prometheus {
    /// A real Prometheus like `start_with_rules` (scrape and evaluation every second), whose
    /// `iam-key-exporter` job finds its targets in the file_sd file `targets` (see
    /// `write_file_sd`), as service discovery finds pods that come and go.
    pub fn start_discovering(
        targets: &Path,
        rules: &Path,
        extra_config: &str,
    ) -> Option<Prometheus> {
        let job = format!(
            "file_sd_configs: [{{files: [\"{}\"], refresh_interval: 1s}}]",
            targets.display()
        );
        Prometheus::spawn(rules, &job, extra_config)
    }

    /// The alerts Prometheus holds (pending and firing), as `/api/v1/alerts` lists them.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        let response = http_get(&self.address, "/api/v1/alerts", &[]);
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["status"], "success", "{body}");
        body["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Exporter {
    /// Like `start_with`, but listening on `address` (host:port): a replica restarted on
    /// its old address, as a host or a pod keeps its identity across a restart.
    pub fn start_at(address: &str, args: &[&str], env: &[(&str, &str)]) -> Exporter {
        let mut command = exporter_command();
        command
            .args(["--web.listen-address", address])
            .args(args)
            .env("IAM_KEY_EXPORTER_AWS__MAX_ATTEMPTS", "2")
            .env("IAM_KEY_EXPORTER_AWS__ATTEMPT_TIMEOUT", "5s")
            .env("IAM_KEY_EXPORTER_AWS__CALL_TIMEOUT", "5s");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the exporter");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (listening_tx, listening_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening") {
                    let _ = listening_tx.send(());
                }
                eprintln!("exporter: {line}");
                sink.lock().unwrap().push(line);
            }
        });
        listening_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the exporter logs that it listens");
        Exporter {
            child,
            address: address.to_string(),
            logs,
        }
    }
}
