//! The web configuration file of the Prometheus exporter-toolkit (`--web.config.file`):
//! TLS with optional client certificates, basic auth users and extra response headers.
//! Read at start, where a bad file stops the exporter, and read again when it or a file it
//! names changes, where a bad file is logged and the last good configuration stays.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::header::{HeaderName, HeaderValue};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

use crate::basic_auth::{self, BasicAuth};

/// A web configuration file the exporter cannot use. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("cannot read web configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("web configuration file {path}: {source}")]
    Syntax {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("web configuration file {path}: {field}: {why}")]
    Invalid {
        path: PathBuf,
        field: String,
        why: String,
    },
}

/// The file as written, in exporter-toolkit's names. As there, any other field is an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileContents {
    tls_server_config: Option<TlsSection>,
    http_server_config: Option<HttpSection>,
    #[serde(default)]
    basic_auth_users: HashMap<String, String>,
}

/// Empty strings mean unset, as in exporter-toolkit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    #[serde(default)]
    cert_file: String,
    #[serde(default)]
    key_file: String,
    #[serde(default)]
    client_ca_file: String,
    client_auth_type: Option<ClientAuth>,
    min_version: Option<TlsVersion>,
    max_version: Option<TlsVersion>,
}

/// Go's `tls.ClientAuthType`, under the names exporter-toolkit reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum ClientAuth {
    NoClientCert,
    /// Asked for, not required, not verified.
    RequestClientCert,
    /// Required, not verified. exporter-toolkit still reads the old name.
    #[serde(alias = "RequireClientCert")]
    RequireAnyClientCert,
    /// Verified against `client_ca_file` when the client sends one.
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
enum TlsVersion {
    #[serde(rename = "TLS10")]
    Tls10,
    #[serde(rename = "TLS11")]
    Tls11,
    #[serde(rename = "TLS12")]
    Tls12,
    #[serde(rename = "TLS13")]
    Tls13,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    #[serde(default)]
    headers: HashMap<String, String>,
}

/// The response headers exporter-toolkit lets a file set, with the values it allows
/// (`None`: any). Anything else could break the exposition or its caching.
const ALLOWED_HEADERS: &[(&str, Option<&[&str]>)] = &[
    ("Strict-Transport-Security", None),
    ("X-Content-Type-Options", Some(&["nosniff"])),
    ("X-Frame-Options", Some(&["deny", "sameorigin"])),
    ("X-XSS-Protection", None),
    ("Content-Security-Policy", None),
];

/// A loaded web configuration, ready for connections.
pub struct WebConfig {
    /// None: plain HTTP.
    pub tls: Option<TlsAcceptor>,
    /// None: no authentication.
    pub basic_auth: Option<BasicAuth>,
    /// Added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl WebConfig {
    /// Plain HTTP, open to every client: the exporter without a web configuration file.
    fn open() -> WebConfig {
        WebConfig {
            tls: None,
            basic_auth: None,
            headers: Vec::new(),
        }
    }
}

/// The SHA-256 of what a file held when it was read, or None when it could not be read.
type Seen = Option<[u8; 32]>;

fn digest(bytes: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// Reads files and notes a digest of what each one held. A later check compares contents,
/// not modification times: those tick too coarsely to tell apart two writes of the same
/// length in quick succession, and a copy made with `cp -p` keeps the old one.
#[derive(Debug, Default)]
struct Reader {
    seen: Vec<(PathBuf, Seen)>,
}

impl Reader {
    fn read(&mut self, path: &Path) -> std::io::Result<Vec<u8>> {
        let result = std::fs::read(path);
        let seen = result.as_deref().ok().map(digest);
        self.seen.push((path.to_path_buf(), seen));
        result
    }

    fn changed(&self) -> bool {
        self.seen
            .iter()
            .any(|(path, seen)| std::fs::read(path).ok().map(|b| digest(&b)) != *seen)
    }
}

/// How often, at most, the files are compared with what was loaded. They are compared only
/// as connections and requests arrive, so an idle exporter reads nothing.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The web configuration in force and the file it came from, re-read when that file or
/// a certificate, key or CA file it names changes. Shared by the accept loop (for TLS)
/// and every request (for basic auth and headers), so that a changed password applies
/// to connections kept alive as well.
pub struct WatchedWebConfig {
    /// None when no file is configured: plain HTTP, open, and nothing to watch.
    path: Option<PathBuf>,
    current: ArcSwap<WebConfig>,
    /// Taken by one caller at a time; the others go on with the current configuration.
    check: Mutex<Check>,
}

struct Check {
    /// The files of the last attempt to load, good or bad: a bad file is reported once,
    /// not at every request, and a fix to any of them is noticed.
    last_read: Reader,
    at: Instant,
}

impl WatchedWebConfig {
    /// Loads the file, if any. An error here is a configuration error: nothing serves.
    pub fn open(path: Option<&Path>) -> Result<WatchedWebConfig, WebConfigError> {
        let mut reader = Reader::default();
        let current = match path {
            Some(path) => load(path, &mut reader)?,
            None => WebConfig::open(),
        };
        Ok(WatchedWebConfig {
            path: path.map(Path::to_path_buf),
            current: ArcSwap::from_pointee(current),
            check: Mutex::new(Check {
                last_read: reader,
                at: Instant::now(),
            }),
        })
    }

    /// The configuration for a new connection or request. At most every
    /// `CHECK_INTERVAL`, the files are compared first, and loaded again if any changed.
    pub fn current(&self) -> Arc<WebConfig> {
        if let Ok(mut check) = self.check.try_lock()
            && check.at.elapsed() >= CHECK_INTERVAL
        {
            check.at = Instant::now();
            self.reload_if_changed(&mut check);
        }
        self.current.load_full()
    }

    /// A new file that cannot be used is logged, and the last good configuration stays in
    /// force: an edit in progress never opens the endpoint.
    fn reload_if_changed(&self, check: &mut Check) {
        let Some(path) = &self.path else { return };
        if !check.last_read.changed() {
            return;
        }
        let mut reader = Reader::default();
        match load(path, &mut reader) {
            Ok(config) => {
                tracing::info!(file = %path.display(), "web configuration reloaded");
                self.current.store(Arc::new(config));
            }
            Err(err) => {
                tracing::error!("{err}; the previous web configuration stays in force");
            }
        }
        check.last_read = reader;
    }
}

/// Reads and checks the file and everything it names, relative paths being relative to
/// the file itself (as exporter-toolkit does).
fn load(path: &Path, reader: &mut Reader) -> Result<WebConfig, WebConfigError> {
    let text = reader.read(path).map_err(|source| WebConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let contents = parse(&text).map_err(|source| WebConfigError::Syntax {
        path: path.to_path_buf(),
        source,
    })?;
    let dir = path.parent().unwrap_or(Path::new(""));
    build(contents, dir, reader).map_err(|invalid| WebConfigError::Invalid {
        path: path.to_path_buf(),
        field: invalid.field,
        why: invalid.why,
    })
}

/// An empty file (or one of comments only) is a valid configuration with nothing in it.
fn parse(text: &[u8]) -> Result<FileContents, serde_yaml_ng::Error> {
    let contents: Option<FileContents> = serde_yaml_ng::from_slice(text)?;
    Ok(contents.unwrap_or_default())
}

/// A field whose value cannot be used, and why.
#[derive(Debug)]
struct Invalid {
    field: String,
    why: String,
}

fn invalid(field: impl Into<String>, why: impl ToString) -> Invalid {
    Invalid {
        field: field.into(),
        why: why.to_string(),
    }
}

fn build(contents: FileContents, dir: &Path, reader: &mut Reader) -> Result<WebConfig, Invalid> {
    let mut config = WebConfig::open();
    if let Some(tls) = contents.tls_server_config.filter(TlsSection::is_enabled) {
        config.tls = Some(TlsAcceptor::from(Arc::new(server_config(
            &tls, dir, reader,
        )?)));
    }
    if !contents.basic_auth_users.is_empty() {
        for (user, hash) in &contents.basic_auth_users {
            let field = format!("basic_auth_users.{user}");
            // Basic auth splits at the first colon: such a user could never log in.
            if user.contains(':') {
                return Err(invalid(field, "a user name cannot contain ':'"));
            }
            basic_auth::check_hash(hash).map_err(|why| invalid(field, why))?;
        }
        config.basic_auth = Some(BasicAuth::new(contents.basic_auth_users));
    }
    for (name, value) in contents.http_server_config.unwrap_or_default().headers {
        config.headers.push(header(&name, &value)?);
    }
    Ok(config)
}

impl TlsSection {
    /// As in exporter-toolkit: without files or client authentication, TLS is off, even
    /// when versions are set.
    fn is_enabled(&self) -> bool {
        !self.cert_file.is_empty()
            || !self.key_file.is_empty()
            || !self.client_ca_file.is_empty()
            || self.client_auth_type.is_some()
    }
}

fn server_config(
    tls: &TlsSection,
    dir: &Path,
    reader: &mut Reader,
) -> Result<ServerConfig, Invalid> {
    let versions = versions(tls.min_version, tls.max_version)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|err| invalid("tls_server_config.min_version", err))?;

    let auth = tls.client_auth_type.unwrap_or(ClientAuth::NoClientCert);
    let roots = match tls.client_ca_file.as_str() {
        "" => None,
        file => Some(client_roots(&dir.join(file), reader)?),
    };
    let verifier: Option<Arc<dyn ClientCertVerifier>> = match (auth, roots) {
        (ClientAuth::NoClientCert, None) => None,
        (ClientAuth::NoClientCert, Some(_)) => {
            return Err(invalid(
                "tls_server_config.client_ca_file",
                "is set, but client_auth_type is NoClientCert: set client_auth_type, e.g. to RequireAndVerifyClientCert",
            ));
        }
        (ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert, roots) => {
            Some(Arc::new(AnyClientCert {
                mandatory: auth == ClientAuth::RequireAnyClientCert,
                hints: roots.map(|r| r.subjects()).unwrap_or_default(),
                algorithms: provider.signature_verification_algorithms,
            }))
        }
        (ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert, None) => {
            return Err(invalid(
                "tls_server_config.client_ca_file",
                format!("is required to verify client certificates (client_auth_type {auth:?})"),
            ));
        }
        (
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert,
            Some(roots),
        ) => {
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if auth == ClientAuth::VerifyClientCertIfGiven {
                verifier = verifier.allow_unauthenticated();
            }
            Some(
                verifier
                    .build()
                    .map_err(|err| invalid("tls_server_config.client_ca_file", err))?,
            )
        }
    };
    let builder = match verifier {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(verifier),
    };

    let (certs, key) = certificate_and_key(tls, dir, reader)?;
    let mut config = builder.with_single_cert(certs, key).map_err(|err| {
        let why = match err {
            rustls::Error::InconsistentKeys(_) => {
                "does not match the certificate of cert_file".to_string()
            }
            err => err.to_string(),
        };
        invalid("tls_server_config.key_file", why)
    })?;
    // Only HTTP/1.1 is served; saying so lets a client that prefers HTTP/2 fall back.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The versions between `min` (TLS 1.2 unless set) and `max` (TLS 1.3 unless set).
fn versions(
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, Invalid> {
    let min = min.unwrap_or(TlsVersion::Tls12);
    let max = max.unwrap_or(TlsVersion::Tls13);
    for (field, version) in [("min_version", min), ("max_version", max)] {
        if version < TlsVersion::Tls12 {
            return Err(invalid(
                format!("tls_server_config.{field}"),
                "TLS 1.0 and 1.1 are not supported (rustls implements TLS 1.2 and 1.3 only): use TLS12 or TLS13",
            ));
        }
    }
    if max < min {
        return Err(invalid(
            "tls_server_config.max_version",
            "is below min_version",
        ));
    }
    Ok([
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(version, _)| (min..=max).contains(version))
    .map(|(_, supported)| supported)
    .collect())
}

fn certificate_and_key(
    tls: &TlsSection,
    dir: &Path,
    reader: &mut Reader,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Invalid> {
    for (field, value) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
        if value.is_empty() {
            return Err(invalid(
                format!("tls_server_config.{field}"),
                "is required when TLS is on (when cert_file, key_file, client_ca_file or client_auth_type is set)",
            ));
        }
    }
    let certs = certificates(&dir.join(&tls.cert_file), reader)
        .map_err(|why| invalid("tls_server_config.cert_file", why))?;
    let key_path = dir.join(&tls.key_file);
    let bytes = reader.read(&key_path).map_err(|err| {
        invalid(
            "tls_server_config.key_file",
            format!("cannot read {}: {err}", key_path.display()),
        )
    })?;
    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|err| {
        invalid(
            "tls_server_config.key_file",
            format!("no PEM private key in {}: {err}", key_path.display()),
        )
    })?;
    Ok((certs, key))
}

/// The PEM certificates of `path`, at least one.
fn certificates(path: &Path, reader: &mut Reader) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = reader
        .read(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("bad PEM in {}: {err}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no PEM certificate in {}", path.display()));
    }
    Ok(certs)
}

fn client_roots(path: &Path, reader: &mut Reader) -> Result<RootCertStore, Invalid> {
    let field = "tls_server_config.client_ca_file";
    let mut roots = RootCertStore::empty();
    for cert in certificates(path, reader).map_err(|why| invalid(field, why))? {
        roots.add(cert).map_err(|err| {
            invalid(
                field,
                format!("not a usable CA certificate in {}: {err}", path.display()),
            )
        })?;
    }
    Ok(roots)
}

fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), Invalid> {
    let field = format!("http_server_config.headers.{name}");
    let Some((_, allowed)) = ALLOWED_HEADERS
        .iter()
        .find(|(allowed, _)| allowed.eq_ignore_ascii_case(name))
    else {
        let names: Vec<&str> = ALLOWED_HEADERS.iter().map(|(n, _)| *n).collect();
        return Err(invalid(
            field,
            format!("cannot be set; allowed are {}", names.join(", ")),
        ));
    };
    if let Some(values) = allowed
        && !values.iter().any(|v| v.eq_ignore_ascii_case(value))
    {
        return Err(invalid(
            field,
            format!(
                "{value:?} is not allowed; expected one of {}",
                values.join(", ")
            ),
        ));
    }
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|err| invalid(&field, err))?;
    let value = HeaderValue::from_str(value).map_err(|err| invalid(&field, err))?;
    Ok((name, value))
}

/// RequestClientCert and RequireAnyClientCert: a client certificate is asked for (and for
/// the second, required) but not checked against any CA, as in Go. The client must still
/// prove that it holds the certificate's key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    /// The subjects of `client_ca_file`, if given, sent as hints to the client.
    hints: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        // Relative, as an operator would type it; cargo runs tests from the package root.
        PathBuf::from("tests/web-config")
    }

    fn load_file(path: &Path) -> Result<WebConfig, WebConfigError> {
        load(path, &mut Reader::default())
    }

    /// Every `tests/web-config/*.bad.yml` must fail with the message written in its first
    /// line (`# error: ...`); every `*.ok.yml` must load.
    #[test]
    fn web_config_fixture_table() {
        let mut seen = 0;
        for entry in std::fs::read_dir(fixtures()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".ok.yml") {
                load_file(&path).unwrap_or_else(|e| panic!("{name} should load: {e}"));
                seen += 1;
            } else if name.ends_with(".bad.yml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let expected = text
                    .lines()
                    .next()
                    .and_then(|l| l.strip_prefix("# error: "))
                    .unwrap_or_else(|| panic!("{name} lacks '# error: ' first line"));
                let err = match load_file(&path) {
                    Ok(_) => panic!("{name} should fail"),
                    Err(err) => err.to_string(),
                };
                assert!(
                    err.contains(expected),
                    "{name}: expected {expected:?} in {err:?}"
                );
                assert!(err.contains(&*path.to_string_lossy()), "{name}: {err}");
                seen += 1;
            }
        }
        assert!(seen >= 20, "only {seen} fixtures found");
    }

    #[test]
    fn what_the_fixtures_turn_on() {
        let tls = load_file(&fixtures().join("tls.ok.yml")).unwrap();
        assert!(tls.tls.is_some() && tls.basic_auth.is_none() && tls.headers.is_empty());

        let empty = load_file(&fixtures().join("empty.ok.yml")).unwrap();
        assert!(empty.tls.is_none() && empty.basic_auth.is_none());

        let versions_only =
            load_file(&fixtures().join("versions-without-files-mean-no-tls.ok.yml")).unwrap();
        assert!(versions_only.tls.is_none());

        let all = load_file(&fixtures().join("tls13-client-certs-headers.ok.yml")).unwrap();
        assert!(all.tls.is_some() && all.basic_auth.is_some());
        let mut headers: Vec<_> = all
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        headers.sort();
        assert_eq!(
            headers,
            [
                "strict-transport-security: max-age=31536000",
                "x-frame-options: deny"
            ]
        );
    }

    #[test]
    fn versions_default_to_tls12_and_up() {
        let names = |v: Vec<&'static rustls::SupportedProtocolVersion>| -> Vec<String> {
            v.iter().map(|v| format!("{:?}", v.version)).collect()
        };
        assert_eq!(names(versions(None, None).unwrap()), ["TLSv1_2", "TLSv1_3"]);
        assert_eq!(
            names(versions(Some(TlsVersion::Tls13), None).unwrap()),
            ["TLSv1_3"]
        );
        assert_eq!(
            names(versions(None, Some(TlsVersion::Tls12)).unwrap()),
            ["TLSv1_2"]
        );
        let old_max = versions(None, Some(TlsVersion::Tls11)).unwrap_err();
        assert_eq!(old_max.field, "tls_server_config.max_version");
    }

    /// The shipped example, with its three files beside it, loads and turns on all it shows.
    #[test]
    fn shipped_example_loads() {
        let dir = tempfile::tempdir().unwrap();
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/web-config.yml");
        std::fs::copy(&example, dir.path().join("web-config.yml")).unwrap();
        for (fixture, name) in [
            ("server.crt", "tls.crt"),
            ("server.key", "tls.key"),
            ("ca.crt", "client-ca.crt"),
        ] {
            std::fs::copy(fixtures().join(fixture), dir.path().join(name)).unwrap();
        }
        let config = load_file(&dir.path().join("web-config.yml")).unwrap();
        assert!(config.tls.is_some());
        assert!(config.basic_auth.is_some());
        assert_eq!(config.headers.len(), 1);
    }

    /// What `current` does once a second, at once.
    fn reload(watched: &WatchedWebConfig) {
        watched.reload_if_changed(&mut watched.check.lock().unwrap());
    }

    fn users(config: &WebConfig) -> Option<String> {
        config.basic_auth.as_ref().map(|auth| format!("{auth:?}"))
    }

    #[test]
    fn a_changed_file_is_read_again_and_a_bad_one_keeps_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yml");
        let hash = |password| bcrypt::hash(password, 4).unwrap();
        std::fs::write(&path, format!("basic_auth_users:\n  a: {}\n", hash("one"))).unwrap();
        let watched = WatchedWebConfig::open(Some(&path)).unwrap();
        let first = watched.current.load_full();
        reload(&watched);
        assert!(Arc::ptr_eq(&first, &watched.current.load()), "unchanged");

        std::fs::write(&path, "basic_auth_users: [oops\n").unwrap();
        reload(&watched);
        assert!(
            Arc::ptr_eq(&first, &watched.current.load()),
            "the old one stays"
        );
        let check = watched.check.lock().unwrap();
        assert!(
            !check.last_read.changed(),
            "the bad file is noted: told once"
        );
        drop(check);

        // The same length as the first file, written at once: only the content differs.
        std::fs::write(&path, format!("basic_auth_users:\n  b: {}\n", hash("two"))).unwrap();
        reload(&watched);
        let second = watched.current.load_full();
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(users(&second).unwrap().contains("\"b\""));
    }

    #[test]
    fn a_changed_certificate_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["server.crt", "server.key"] {
            std::fs::copy(fixtures().join(name), dir.path().join(name)).unwrap();
        }
        let path = dir.path().join("web.yml");
        std::fs::copy(fixtures().join("tls.ok.yml"), &path).unwrap();
        let watched = WatchedWebConfig::open(Some(&path)).unwrap();
        let first = watched.current.load_full();

        // A key that does not match the certificate: logged, and the old pair stays.
        std::fs::copy(
            fixtures().join("not-the-server.key"),
            dir.path().join("server.key"),
        )
        .unwrap();
        reload(&watched);
        assert!(Arc::ptr_eq(&first, &watched.current.load()));

        std::fs::copy(fixtures().join("server.key"), dir.path().join("server.key")).unwrap();
        reload(&watched);
        assert!(!Arc::ptr_eq(&first, &watched.current.load()));
    }

    #[test]
    fn without_a_file_the_endpoint_is_plain_and_open() {
        let watched = WatchedWebConfig::open(None).unwrap();
        let config = watched.current();
        assert!(config.tls.is_none() && config.basic_auth.is_none());
    }
}
