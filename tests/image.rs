//! The container image, proven without a container runtime: `podman run` cannot start
//! containers on this project's machines (their cgroups are in hybrid mode), so the test
//! builds the Dockerfile with podman (scripts/build-image.sh, RUN steps in chroot
//! isolation), takes the image apart as a runtime would (`podman save` to an OCI layout,
//! `umoci unpack` to a root filesystem and the OCI runtime configuration), and runs the
//! configuration's process, as its user, in that root alone (`unshare` for its own mount
//! and PID namespaces with a fresh /proc, `chroot` into the root). From there it serves
//! the bundled sample, read over loopback like a scrape, and refreshes an IAM account
//! (moto) through the AWS SDK with the image's own CA bundle.
//!
//! The build compiles the exporter in the image's build stage, minutes on a cold machine;
//! its cache mounts keep the next build to seconds.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::Duration;

const TAG: &str = "localhost/iam-key-exporter:test";

/// What the image holds, file by file: the exporter, what the dynamic loader will ask
/// for, the CA bundle and the sample. Anything more is something nobody chose to ship.
const EXPECTED_FILES: &[&str] = &[
    "etc/ssl/certs/ca-certificates.crt",
    "lib/x86_64-linux-gnu/libc.so.6",
    "lib/x86_64-linux-gnu/libgcc_s.so.1",
    "lib/x86_64-linux-gnu/libm.so.6",
    "lib64/ld-linux-x86-64.so.2",
    "usr/local/bin/iam-key-exporter",
    "usr/share/iam-key-exporter/sample-credential-report.csv",
    "usr/share/iam-key-exporter/sample-report.toml",
];

/// The README's promise: under 20 MB, as `podman images` counts it (uncompressed).
const SIZE_LIMIT_BYTES: u64 = 20_000_000;

/// The image, built once per test run and unpacked as a runtime would: its root file
/// system and the process its OCI configuration starts.
struct Unpacked {
    /// Holds the unpacked bundle for as long as the tests run.
    _work: tempfile::TempDir,
    rootfs: PathBuf,
    /// The image's entrypoint and arguments (config.json's `process.args`).
    args: Vec<String>,
    uid: u64,
    gid: u64,
    env: Vec<(String, String)>,
    /// `podman image inspect`'s answer.
    inspected: serde_json::Value,
}

/// The image of this tree, or None (after `require_peer`'s CI rule) without podman,
/// umoci, unshare, chroot or root.
fn image() -> Option<&'static Unpacked> {
    static IMAGE: OnceLock<Option<Unpacked>> = OnceLock::new();
    IMAGE.get_or_init(build_and_unpack).as_ref()
}

fn build_and_unpack() -> Option<Unpacked> {
    let podman = which("podman")?;
    let umoci = which("umoci")?;
    which("unshare")?;
    which("chroot")?;
    if output(Command::new("id").arg("-u")).trim() != "0" {
        // podman's storage, umoci's owners and chroot need root.
        require_peer(
            "root (for podman, umoci and chroot)",
            Path::new("/nonexistent"),
        );
        return None;
    }

    let built = Command::new(root().join("scripts/build-image.sh"))
        .args(["--local-builder", TAG])
        .env("BUILDAH_ISOLATION", "chroot")
        .status()
        .expect("run scripts/build-image.sh");
    assert!(built.success(), "scripts/build-image.sh failed: {built}");
    let inspected = output(Command::new(&podman).args(["image", "inspect", TAG]));
    let inspected: serde_json::Value = serde_json::from_str(&inspected).unwrap();

    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    let bundle = work.path().join("bundle");
    output(
        Command::new(&podman)
            .args(["save", "--format", "oci-dir", "-o"])
            .arg(&layout)
            .arg(TAG),
    );
    output(
        Command::new(&umoci)
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:{TAG}", layout.display()))
            .arg(&bundle),
    );
    let runtime: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).unwrap())
            .unwrap();
    let process = &runtime["process"];
    let strings = |value: &serde_json::Value| -> Vec<String> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    let env = strings(&process["env"])
        .into_iter()
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap();
            (key.to_string(), value.to_string())
        })
        .collect();
    Some(Unpacked {
        rootfs: bundle.join("rootfs"),
        args: strings(&process["args"]),
        uid: process["user"]["uid"].as_u64().unwrap(),
        gid: process["user"]["gid"].as_u64().unwrap(),
        env,
        inspected: inspected[0].clone(),
        _work: work,
    })
}

impl Unpacked {
    /// The image's process with `flags` after its arguments, as its user, with its
    /// environment and `env`, in the unpacked root alone: its own mount and PID namespaces
    /// and a fresh /proc (a runtime mounts one; the process metrics read it). The network
    /// stays the host's, so the test reaches it on loopback.
    fn start(&self, flags: &[String], env: &[(&str, &str)]) -> Contained {
        std::fs::create_dir_all(self.rootfs.join("proc")).unwrap();
        let mut command = Command::new(which("unshare").unwrap());
        command
            .args(["--mount", "--pid", "--fork", "--kill-child=SIGKILL"])
            .arg(format!(
                "--mount-proc={}",
                self.rootfs.join("proc").display()
            ))
            .arg(which("chroot").unwrap())
            .arg(format!("--userspec={}:{}", self.uid, self.gid))
            .arg(&self.rootfs)
            .args(&self.args)
            .args(flags)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start the image's entrypoint");
        let read = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                pipe.read_to_string(&mut text).unwrap();
                text
            })
        };
        let stdout = read(Box::new(child.stdout.take().unwrap()));
        let stderr = read(Box::new(child.stderr.take().unwrap()));
        Contained {
            unshare: child,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }
}

#[test]
fn the_image_is_small_runs_as_a_numeric_user_and_has_no_default_arguments() {
    let Some(image) = image() else { return };
    let config = &image.inspected["Config"];
    let size = image.inspected["Size"].as_u64().expect("the image's size");
    eprintln!("image {TAG}: {size} bytes");
    assert!(
        size < SIZE_LIMIT_BYTES,
        "the image is {size} bytes, over {SIZE_LIMIT_BYTES}"
    );
    assert_eq!(config["User"], "65532:65532", "a numeric non-root user");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/iam-key-exporter"])
    );
    assert!(
        config["Cmd"].is_null(),
        "no default arguments: without flags the exporter runs on its defaults, against AWS"
    );
    // What a runtime starts, read from the unpacked OCI configuration, not from podman.
    assert_eq!(image.args, ["/usr/local/bin/iam-key-exporter"]);
    assert_eq!((image.uid, image.gid), (65532, 65532));
}

#[test]
fn the_image_holds_the_exporter_its_libraries_the_ca_bundle_and_the_sample_alone() {
    let Some(image) = image() else { return };
    let mut files = BTreeSet::new();
    list_files(&image.rootfs, &image.rootfs, &mut files);
    let expected: BTreeSet<String> = EXPECTED_FILES.iter().map(|f| f.to_string()).collect();
    assert_eq!(files, expected, "the image's files");
    let mode = |path: &str| {
        std::fs::metadata(image.rootfs.join(path))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_eq!(mode("usr/local/bin/iam-key-exporter") & 0o7777, 0o755);
    for file in EXPECTED_FILES {
        assert_eq!(
            mode(file) & 0o022,
            0,
            "{file} is writable only by its owner"
        );
    }
}

#[test]
fn the_entrypoint_serves_the_sample_from_the_unpacked_root_and_stops_on_sigterm() {
    let Some(image) = image() else { return };
    let address = format!("127.0.0.1:{}", free_port());
    // The one flag of the Dockerfile's header, and a free loopback port for the test.
    let mut contained = image.start(
        &[
            "--config.file=/usr/share/iam-key-exporter/sample-report.toml".to_string(),
            format!("--web.listen-address={address}"),
        ],
        &[],
    );

    let ready = wait_for(
        "/-/ready from the unpacked image",
        Duration::from_secs(60),
        || http_get_status(&format!("http://{address}/-/ready")).filter(|status| *status == 200),
    );
    assert_eq!(ready, 200);
    let metrics = Metrics::parse(&http_get(&address, "/metrics", &[]).text());

    // The sample's keys, as the README's quick start serves them.
    let sample =
        std::fs::read_to_string(root().join("config/sample-credential-report.csv")).unwrap();
    for user in ["ci-deployer", "terraform", "bob"] {
        assert!(
            sample.contains(&format!("\n{user},")),
            "{user} is in the sample"
        );
        assert!(
            metrics.count_with("aws_iam_access_key_active", "user", user) > 0,
            "{user}'s keys are served from the image"
        );
    }
    assert_eq!(
        metrics.value(
            "iam_key_exporter_account_refresh_success",
            &[("account_id", "210987654321"), ("account_name", "")]
        ),
        1.0
    );
    // Process metrics come from /proc inside the image's own PID namespace.
    assert!(
        metrics
            .get("process_resident_memory_bytes", &[])
            .unwrap_or(0.0)
            > 0.0
    );

    let status = contained.terminate();
    let (_, logs) = contained.output();
    eprintln!("{logs}");
    assert!(
        status.success(),
        "the entrypoint exits 0 on SIGTERM: {status}"
    );
    assert!(!logs.contains("ERROR"), "no error logged:\n{logs}");
}

/// The AWS side of the image: its entrypoint refreshes an IAM account (moto) through the
/// AWS SDK, and its HTTPS client finds the image's CA bundle. The SDK warns "no native root
/// CA certificates found" when rustls-native-certs finds none, as it did in a copy of the
/// image without /etc/ssl/certs/ca-certificates.crt; every AWS endpoint is HTTPS, so such
/// an image could reach none of them.
#[test]
fn the_entrypoint_refreshes_an_iam_account_and_finds_the_ca_bundle() {
    let Some(moto) = Moto::start(&root().join("tests/peers/sample-inventory.json")) else {
        return;
    };
    let Some(image) = image() else { return };
    let mut contained = image.start(
        &["--once".to_string()],
        &[
            ("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", TEST_SECRET),
            ("AWS_REGION", "us-east-1"),
            ("IAM_KEY_EXPORTER_AWS__ENDPOINT_URL", moto.endpoint.as_str()),
        ],
    );
    let status = wait_for("--once to finish", Duration::from_secs(60), || {
        contained.unshare.try_wait().unwrap()
    });
    let (exposition, logs) = contained.output();
    eprintln!("{logs}");
    assert!(status.success(), "--once in the image: {status}\n{logs}");
    assert!(
        !logs.contains("no native root CA certificates"),
        "the image's CA bundle is found:\n{logs}"
    );
    assert!(!logs.contains(TEST_SECRET), "no secret in the log");
    let metrics = Metrics::parse(&exposition);
    let seeded_keys: usize = moto.seeded["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user["keys"].as_array().unwrap().len())
        .sum();
    assert!(seeded_keys > 0);
    let served = metrics
        .0
        .keys()
        .filter(|series| series.starts_with("aws_iam_access_key_active{"))
        .count();
    assert_eq!(served, seeded_keys, "every seeded key, from the image");
}

/// `unshare` and, inside it, the exporter: unshare's only child, PID 1 of its own PID
/// namespace. unshare does not pass SIGTERM on (it blocks it while it waits), so the
/// exporter is signalled directly, as a runtime signals a container's process.
struct Contained {
    unshare: std::process::Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

impl Contained {
    fn exporter_pid(&self) -> Option<u32> {
        let pid = self.unshare.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// SIGTERM to the exporter, then its exit status (unshare exits with its child's).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self
            .exporter_pid()
            .expect("the exporter runs under unshare");
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        wait_for("the exporter to stop", Duration::from_secs(20), || {
            self.unshare.try_wait().unwrap()
        })
    }

    /// What the process wrote to stdout and stderr, once it has exited.
    fn output(&mut self) -> (String, String) {
        let stdout = self.stdout.take().unwrap().join().unwrap();
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (stdout, stderr)
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        if let Some(pid) = self.exporter_pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

/// Runs `command`, asserts it succeeded and returns its standard output.
fn output(command: &mut Command) -> String {
    let out = command.output().expect("run command");
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every file and symbolic link under `dir`, relative to `base` (directories are implied).
fn list_files(base: &Path, dir: &Path, files: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            list_files(base, &entry.path(), files);
        } else {
            let relative = entry.path().strip_prefix(base).unwrap().to_owned();
            files.insert(relative.to_string_lossy().into_owned());
        }
    }
}
