//! The container image, proven without a container runtime: `podman run` cannot start
//! containers on this project's machines (their cgroups are in hybrid mode), so the test
//! builds the Dockerfile with podman (scripts/build-image.sh, RUN steps in chroot
//! isolation), takes the image apart as a runtime would (`podman save` to an OCI layout,
//! `umoci unpack` to a root filesystem and the OCI runtime configuration), and runs the
//! configuration's process, as its user, in that root alone (`unshare` for its own mount
//! and PID namespaces with a fresh /proc, `chroot` into the root). What it serves from
//! there is the bundled sample, read over loopback like a scrape.
//!
//! The build compiles the exporter in the image's build stage, minutes on a cold machine;
//! its cache mounts keep the next build to seconds.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
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

#[test]
fn the_image_holds_the_exporter_alone_and_its_entrypoint_serves_the_sample() {
    let (Some(podman), Some(umoci), Some(unshare), Some(chroot)) = (
        which("podman"),
        which("umoci"),
        which("unshare"),
        which("chroot"),
    ) else {
        return;
    };
    if !running_as_root() {
        // Building with podman's storage, unpacking with owners and chroot need root.
        require_peer(
            "root (for podman, umoci and chroot)",
            Path::new("/nonexistent"),
        );
        return;
    }

    let built = Command::new(root().join("scripts/build-image.sh"))
        .args(["--local-builder", TAG])
        .env("BUILDAH_ISOLATION", "chroot")
        .status()
        .expect("run scripts/build-image.sh");
    assert!(built.success(), "scripts/build-image.sh failed: {built}");

    let inspected = output(Command::new(&podman).args(["image", "inspect", TAG]));
    let inspected: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    let image = &inspected[0];
    let size = image["Size"].as_u64().expect("the image's size");
    eprintln!("image {TAG}: {size} bytes");
    assert!(
        size < SIZE_LIMIT_BYTES,
        "the image is {size} bytes, over {SIZE_LIMIT_BYTES}"
    );
    assert_eq!(
        image["Config"]["User"], "65532:65532",
        "a numeric non-root user"
    );
    assert_eq!(
        image["Config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/iam-key-exporter"])
    );
    assert!(
        image["Config"]["Cmd"].is_null(),
        "no default arguments: without flags the exporter runs on its defaults, against AWS"
    );

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
    let rootfs = bundle.join("rootfs");

    let mut files = BTreeSet::new();
    list_files(&rootfs, &rootfs, &mut files);
    let expected: BTreeSet<String> = EXPECTED_FILES.iter().map(|f| f.to_string()).collect();
    assert_eq!(files, expected, "the image's files");
    let mode = |path: &str| {
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(rootfs.join(path)).unwrap().permissions(),
        )
    };
    assert_eq!(mode("usr/local/bin/iam-key-exporter") & 0o7777, 0o755);
    assert_eq!(
        mode("usr/share/iam-key-exporter/sample-report.toml") & 0o002,
        0,
        "nothing in the image is writable by others"
    );

    // The process a runtime would start: the image's entrypoint, user and environment.
    let runtime: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).unwrap())
            .unwrap();
    let process = &runtime["process"];
    let args: Vec<String> = process["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(args, ["/usr/local/bin/iam-key-exporter"]);
    let uid = process["user"]["uid"].as_u64().unwrap();
    let gid = process["user"]["gid"].as_u64().unwrap();
    assert_eq!((uid, gid), (65532, 65532));

    // A runtime mounts /proc; the exporter's process metrics read it.
    std::fs::create_dir_all(rootfs.join("proc")).unwrap();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let mut command = Command::new(unshare);
    command
        .args(["--mount", "--pid", "--fork", "--kill-child=SIGTERM"])
        .arg(format!("--mount-proc={}", rootfs.join("proc").display()))
        .arg(chroot)
        .arg(format!("--userspec={uid}:{gid}"))
        .arg(&rootfs)
        .args(&args)
        // The one flag of the Dockerfile's header, and a free loopback port for the test.
        .arg("--config.file=/usr/share/iam-key-exporter/sample-report.toml")
        .arg(format!("--web.listen-address={address}"))
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for pair in process["env"].as_array().unwrap() {
        let (key, value) = pair.as_str().unwrap().split_once('=').unwrap();
        command.env(key, value);
    }
    let mut contained = Contained(command.spawn().expect("start the image's entrypoint"));
    let stderr = contained.0.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut { stderr }, &mut text).unwrap();
        text
    });

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
    let logs = logs.join().unwrap();
    eprintln!("{logs}");
    assert!(
        status.success(),
        "the entrypoint exits 0 on SIGTERM: {status}"
    );
    assert!(!logs.contains("ERROR"), "no error logged:\n{logs}");
}

/// `unshare` and, inside it, the exporter: unshare's only child, PID 1 of its own PID
/// namespace. unshare does not pass SIGTERM on (it blocks it while it waits), so the
/// exporter is signalled directly, as a runtime signals a container's process.
struct Contained(std::process::Child);

impl Contained {
    fn exporter_pid(&self) -> Option<u32> {
        let pid = self.0.id();
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
            self.0.try_wait().unwrap()
        })
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        if let Some(pid) = self.exporter_pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn running_as_root() -> bool {
    output(Command::new("id").arg("-u")).trim() == "0"
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
