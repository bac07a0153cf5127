//! The web configuration end to end, with real TLS clients (curl, and OpenSSL's tools for
//! the certificates): basic auth, client certificates, TLS versions, a file changed while
//! the exporter runs, and a bad file at start. The exporter serves the bundled sample
//! report, so no AWS is needed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Exporter, root, wait_for, which};

/// A throwaway CA, a server certificate it signed for 127.0.0.1, a client certificate it
/// signed, and a client certificate of another CA, made with the openssl CLI.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// None (after `require_peer`'s CI rule) when curl or openssl is missing.
    fn new() -> Option<Pki> {
        which("curl")?;
        let openssl = which("openssl")?;
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        let run = |args: &[&str]| {
            let output = Command::new(&openssl)
                .args(args)
                .current_dir(pki.dir.path())
                .output()
                .unwrap();
            assert!(output.status.success(), "openssl {args:?}: {output:?}");
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let subject = format!("/CN=iam-key-exporter test {ca}");
            let (key_file, cert_file) = (format!("{ca}.key"), format!("{ca}.crt"));
            let mut args = vec!["req", "-x509", "-days", "1", "-subj", &subject];
            args.extend(key);
            args.extend(["-keyout", &key_file, "-out", &cert_file]);
            run(&args);
        }
        for (name, ca, extensions) in [
            (
                "server",
                "ca",
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "ca", "extendedKeyUsage=clientAuth\n"),
            ("stranger", "other-ca", "extendedKeyUsage=clientAuth\n"),
        ] {
            let subject = format!("/CN={name}");
            let (key_file, csr) = (format!("{name}.key"), format!("{name}.csr"));
            let mut args = vec!["req", "-subj", &subject, "-keyout", &key_file, "-out", &csr];
            args.extend(key);
            run(&args);
            let ext = format!("{name}.ext");
            std::fs::write(pki.path(&ext), extensions).unwrap();
            let (ca_cert, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
            let cert = format!("{name}.crt");
            run(&[
                "x509",
                "-req",
                "-days",
                "1",
                "-in",
                &csr,
                "-CA",
                &ca_cert,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ]);
        }
        Some(pki)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Writes the web configuration `web.yml` beside the certificates it names.
    fn write_config(&self, yaml: &str) -> PathBuf {
        let path = self.path("web.yml");
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// The exporter on the sample report with `web.yml`.
    fn start(&self, yaml: &str) -> Exporter {
        let web_config = self.write_config(yaml);
        Exporter::start_with(
            &[
                "--config.file",
                &root()
                    .join("config/sample-report.toml")
                    .display()
                    .to_string(),
                "--web.config.file",
                &web_config.display().to_string(),
            ],
            &[],
        )
    }

    /// curl to `path` over TLS, trusting the test CA, with extra `args`.
    fn curl(&self, exporter: &Exporter, path: &str, args: &[&str]) -> Curl {
        let url = format!("https://{}{path}", exporter.address);
        let mut all = vec!["--cacert".to_string(), self.arg("ca.crt")];
        all.extend(args.iter().map(|a| a.to_string()));
        all.push(url);
        curl(&all)
    }
}

/// bcrypt at the lowest cost: the tests check the logic, not bcrypt's slowness.
fn hash(password: &str) -> String {
    bcrypt::hash(password, 4).unwrap()
}

const TLS: &str = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";

/// What curl did: its exit code (0, or e.g. 35 for a failed handshake), the HTTP status
/// (0 when there was no response), the response head and body, and its error text.
struct Curl {
    exit: i32,
    status: u16,
    response: String,
    stderr: String,
}

fn curl(args: &[String]) -> Curl {
    let output = Command::new("curl")
        .args([
            "-sS",
            "--include",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let (response, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    Curl {
        exit: output.status.code().unwrap_or(-1),
        status: status.trim().parse().unwrap_or(0),
        response: response.to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).to_string(),
    }
}

impl std::fmt::Debug for Curl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "curl exit {} status {}: {}\n{}",
            self.exit, self.status, self.stderr, self.response
        )
    }
}

/// The handshake failed and no HTTP response came.
fn refused(result: &Curl) -> bool {
    result.exit != 0 && result.status == 0
}

#[test]
fn basic_auth_lets_in_the_right_password_only_on_every_path() {
    let Some(pki) = Pki::new() else { return };
    let exporter = pki.start(&format!(
        "{TLS}basic_auth_users:\n  prometheus: {}\n",
        hash("right password")
    ));

    let good = pki.curl(&exporter, "/metrics", &["-u", "prometheus:right password"]);
    assert_eq!(good.status, 200, "{good:?}");
    assert!(good.response.contains("iam_key_exporter_"), "{good:?}");
    let healthy = pki.curl(
        &exporter,
        "/-/healthy",
        &["-u", "prometheus:right password"],
    );
    assert_eq!(healthy.status, 200, "{healthy:?}");

    for (what, args) in [
        ("a wrong password", vec!["-u", "prometheus:wrong"]),
        ("an unknown user", vec!["-u", "grafana:right password"]),
        ("no password", vec![]),
    ] {
        for path in ["/metrics", "/", "/-/healthy", "/-/ready"] {
            let denied = pki.curl(&exporter, path, &args);
            assert_eq!(denied.status, 401, "{what} on {path}: {denied:?}");
            assert!(
                denied
                    .response
                    .to_ascii_lowercase()
                    .contains("www-authenticate: basic"),
                "{what} on {path}: {denied:?}"
            );
        }
    }
    assert!(!exporter.logs().contains("right password"));
}

#[test]
fn client_certificates_are_required_and_verified() {
    let Some(pki) = Pki::new() else { return };
    let exporter = pki.start(&format!(
        "{TLS}  client_ca_file: ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n"
    ));
    let with = |name: &str| {
        let (cert, key) = (
            pki.arg(&format!("{name}.crt")),
            pki.arg(&format!("{name}.key")),
        );
        pki.curl(&exporter, "/metrics", &["--cert", &cert, "--key", &key])
    };

    let signed = with("client");
    assert_eq!(signed.status, 200, "{signed:?}");

    let none = pki.curl(&exporter, "/metrics", &[]);
    assert!(refused(&none), "no client certificate: {none:?}");
    assert!(
        none.stderr.contains("alert certificate required"),
        "{none:?}"
    );
    let stranger = with("stranger");
    assert!(
        refused(&stranger),
        "a certificate of another CA: {stranger:?}"
    );
    assert!(stranger.stderr.contains("alert unknown ca"), "{stranger:?}");
}

/// The looser types, with Go's meanings: RequireAnyClientCert wants a certificate but not
/// one of the CA; VerifyClientCertIfGiven lets a client without one in, but checks one
/// that is sent.
#[test]
fn the_looser_client_auth_types_mean_what_they_mean_in_go() {
    let Some(pki) = Pki::new() else { return };
    let outcome = |exporter: &Exporter, name: Option<&str>| -> String {
        let (cert, key) = match name {
            Some(name) => (
                pki.arg(&format!("{name}.crt")),
                pki.arg(&format!("{name}.key")),
            ),
            None => return format!("{}", pki.curl(exporter, "/metrics", &[]).status),
        };
        let result = pki.curl(exporter, "/metrics", &["--cert", &cert, "--key", &key]);
        format!("{}", result.status)
    };

    let any = pki.start(&format!("{TLS}  client_auth_type: RequireAnyClientCert\n"));
    assert_eq!(outcome(&any, None), "0", "a certificate is required");
    assert_eq!(
        outcome(&any, Some("stranger")),
        "200",
        "any certificate does"
    );
    drop(any);

    let if_given = pki.start(&format!(
        "{TLS}  client_ca_file: ca.crt\n  client_auth_type: VerifyClientCertIfGiven\n"
    ));
    assert_eq!(outcome(&if_given, None), "200", "none is needed");
    assert_eq!(outcome(&if_given, Some("client")), "200");
    assert_eq!(
        outcome(&if_given, Some("stranger")),
        "0",
        "one sent is verified"
    );
}

#[test]
fn tls12_minimum_refuses_tls11_and_serves_tls12() {
    let Some(pki) = Pki::new() else { return };
    let exporter = pki.start(TLS);

    let tls12 = pki.curl(&exporter, "/metrics", &["--tlsv1.2", "--tls-max", "1.2"]);
    assert_eq!(tls12.status, 200, "{tls12:?}");

    // OpenSSL's default security level would keep curl from offering TLS 1.1 at all; at
    // level 0 it offers it, and the refusal is the exporter's, an alert it sends.
    let tls11 = pki.curl(
        &exporter,
        "/metrics",
        &[
            "--tlsv1.1",
            "--tls-max",
            "1.1",
            "--ciphers",
            "DEFAULT@SECLEVEL=0",
        ],
    );
    assert!(refused(&tls11), "{tls11:?}");
    assert!(
        tls11.stderr.contains("alert handshake failure"),
        "{tls11:?}"
    );
}

#[test]
fn tls13_minimum_refuses_a_tls12_only_client() {
    let Some(pki) = Pki::new() else { return };
    let exporter = pki.start(&format!("{TLS}  min_version: TLS13\n"));

    let tls13 = pki.curl(&exporter, "/metrics", &["--tlsv1.3"]);
    assert_eq!(tls13.status, 200, "{tls13:?}");

    let tls12 = pki.curl(&exporter, "/metrics", &["--tlsv1.2", "--tls-max", "1.2"]);
    assert!(refused(&tls12), "{tls12:?}");
    assert!(tls12.stderr.contains("alert protocol version"), "{tls12:?}");
}

#[test]
fn a_changed_file_applies_without_restart_and_a_broken_one_keeps_the_last_good() {
    let Some(pki) = Pki::new() else { return };
    let users =
        |password: &str| format!("{TLS}basic_auth_users:\n  prometheus: {}\n", hash(password));
    let exporter = pki.start(&users("first"));
    let status = |password: &str| {
        let login = format!("prometheus:{password}");
        pki.curl(&exporter, "/metrics", &["-u", &login]).status
    };
    assert_eq!(status("first"), 200);

    pki.write_config(&users("second"));
    // Files are compared at most once a second, as connections arrive.
    wait_for("the new password", Duration::from_secs(30), || {
        (status("second") == 200).then_some(())
    });
    assert_eq!(status("first"), 401);
    assert!(exporter.logs().contains("web configuration reloaded"));

    let web_config = pki.write_config("basic_auth_users:\n  prometheus: second\n");
    let logged = format!(
        "web configuration file {}: basic_auth_users.prometheus: not a bcrypt hash",
        web_config.display()
    );
    wait_for("the broken file logged", Duration::from_secs(30), || {
        // Connections make the exporter look at the file.
        status("second");
        exporter.logs().contains(&logged).then_some(())
    });
    assert!(
        exporter
            .logs()
            .contains("the previous web configuration stays in force"),
        "{}",
        exporter.logs()
    );
    assert_eq!(status("second"), 200, "the last good file stays in force");
    assert_eq!(status("first"), 401);
}

#[test]
fn a_bad_file_at_start_exits_2_naming_the_file_and_the_field() {
    let file = Path::new("tests/web-config/unsupported-tls-field.bad.yml");
    let output = Command::new(env!("CARGO_BIN_EXE_iam-key-exporter"))
        .env_clear()
        .args(["--config.file", "config/sample-report.toml"])
        .arg("--web.config.file")
        .arg(file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "web configuration file {}: tls_server_config: unknown field `cipher_suites`",
            file.display()
        )),
        "{stderr}"
    );
}
