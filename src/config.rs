//! Settings: built-in defaults < TOML file < `IAM_KEY_EXPORTER_*` environment < flags,
//! validated once at start so that a bad value stops the exporter before it serves anything.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat, Value};
use serde::Deserialize;

/// The defaults, written as TOML so that they read exactly like the shipped example file.
const DEFAULTS: &str = include_str!("defaults.toml");

/// Environment variables are spelled `IAM_KEY_EXPORTER_<SECTION>__<KEY>`,
/// e.g. `IAM_KEY_EXPORTER_REFRESH__INTERVAL=10m`.
pub const ENV_PREFIX: &str = "IAM_KEY_EXPORTER";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub source: SourceSettings,
    pub web: WebSettings,
    pub log: LogSettings,
    pub aws: AwsSettings,
    pub refresh: RefreshSettings,
    pub service_access: ServiceAccessSettings,
    pub filter: FilterSettings,
    pub labels: LabelSettings,
    /// Accounts watched through an assumed role; empty means the exporter's own account.
    #[serde(default)]
    pub accounts: Vec<AccountSettings>,
    pub organizations: OrganizationsSettings,
    pub shard: ShardSettings,
    pub tags: TagSettings,
    pub roles: RoleSettings,
    pub role_filter: RoleFilterSettings,
    pub change_feed: ChangeFeedSettings,
}

/// One account to watch. Without `role_arn` it is the account of the exporter's own
/// credentials; with one, that role is assumed (and its credentials renewed before they
/// expire) for every call to the account.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSettings {
    #[serde(default)]
    pub role_arn: Option<String>,
    #[serde(default)]
    pub external_id: Option<String>,
    /// The assumed role's session name, seen in the member account's CloudTrail.
    #[serde(default)]
    pub session_name: Option<String>,
    /// A friendly name, exported as `account_name` on `aws_iam_account_info`.
    #[serde(default)]
    pub name: Option<String>,
}

/// Finding accounts through AWS Organizations (ListAccounts, from the management or a
/// delegated administrator account) and assuming `role_name` in each active one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrganizationsSettings {
    pub enabled: bool,
    pub role_name: String,
    #[serde(default)]
    pub external_id: Option<String>,
    pub session_name: String,
    /// Account ids; empty means every active account.
    pub include_accounts: Vec<String>,
    pub exclude_accounts: Vec<String>,
    /// How often the account list is read again.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
}

/// This replica's share of the accounts: those whose rendezvous hash picks `index` among
/// `total` replicas.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardSettings {
    pub total: u32,
    pub index: u32,
}

/// User tags exported as labels: tag `team` becomes label `tag_team`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagSettings {
    pub keys: Vec<String>,
    /// How often every user's tags are read again; new users' tags are read at once.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
}

/// Every role of each account (GetAccountAuthorizationDetails), read every `interval`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSettings {
    pub enabled: bool,
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
}

/// Which IAM roles are watched, like `FilterSettings` for users.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleFilterSettings {
    /// IAM paths, e.g. "/aws-service-role/": a role is included when its path starts with one.
    pub include_paths: Vec<String>,
    pub exclude_paths: Vec<String>,
    /// Role name patterns, `*` for any run of characters and `?` for one.
    pub include_roles: Vec<String>,
    pub exclude_roles: Vec<String>,
}

/// Which IAM users are watched. Empty lists mean no restriction; excludes win.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSettings {
    /// IAM paths, e.g. "/engineering/": a user is included when its path starts with one.
    pub include_paths: Vec<String>,
    pub exclude_paths: Vec<String>,
    /// User name patterns, `*` for any run of characters and `?` for one.
    pub include_users: Vec<String>,
    pub exclude_users: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSettings {
    /// Show only the prefix and the last 4 characters of key ids: `AKIA****WXYZ`.
    pub mask_key_ids: bool,
}

/// Where the inventory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// ListUsers, ListAccessKeys and GetAccessKeyLastUsed for every key.
    Api,
    /// The credential report alone: keys are named by slot.
    CredentialReport,
    /// The report for last use, the API for users, key ids and keys newer than the report.
    Auto,
    /// A credential report file on disk; no AWS calls at all.
    CredentialReportFile,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSettings {
    #[serde(deserialize_with = "keyword")]
    pub kind: SourceKind,
    /// The report file of `credential_report_file`; re-read when it changes.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// A report older than this is regenerated. IAM regenerates at most every 4 hours.
    #[serde(deserialize_with = "duration")]
    pub report_max_age: Duration,
    /// Waiting for IAM to generate a report gives up after this long.
    #[serde(deserialize_with = "duration")]
    pub report_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSettings {
    /// `host:port`, or `:port` for every interface.
    pub listen_address: String,
    pub telemetry_path: String,
    /// How long a client may take to send its request headers before the connection is closed.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// From the first byte of a request until its response is written; a connection that
    /// takes longer is dropped.
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// exporter-toolkit's web configuration (TLS, basic auth); relative to the
    /// configuration file.
    #[serde(default)]
    pub config_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    #[serde(deserialize_with = "keyword")]
    pub level: LogLevel,
    #[serde(deserialize_with = "keyword")]
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    /// Region used to sign requests. IAM is global; when neither this nor the SDK's chain
    /// names a region, `us-east-1` is used.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint for IAM and STS, e.g. a local IAM server. `AWS_ENDPOINT_URL` also works.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Attempts per call, the first one included. Retries follow the SDK's standard
    /// strategy: capped exponential backoff with full jitter.
    pub max_attempts: u32,
    /// Upper bound for one HTTP attempt; an attempt that runs out is retried.
    #[serde(deserialize_with = "duration")]
    pub attempt_timeout: Duration,
    /// Upper bound for one call, every attempt and backoff included.
    #[serde(deserialize_with = "duration")]
    pub call_timeout: Duration,
    /// The most requests per second to one account, retries included (a token bucket
    /// shared by every call to that account). The rate drops when IAM throttles and climbs
    /// back to this when it stops; 0 turns the limit off.
    pub requests_per_second: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshSettings {
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// A refresh that takes longer is abandoned and counted as failed.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// IAM calls in flight at once for the per-user and per-key requests, per account.
    pub concurrency: usize,
    /// Accounts refreshed at once, across all accounts.
    pub max_concurrent_accounts: usize,
    /// How often every user is listed, whatever the change feed says.
    #[serde(deserialize_with = "duration")]
    pub full_interval: Duration,
}

/// Following IAM's changes through CloudTrail's event history.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeFeedSettings {
    pub enabled: bool,
    /// How far each poll looks back before the previous one's end, for late events.
    #[serde(deserialize_with = "duration")]
    pub overlap: Duration,
    /// The region whose event history holds IAM's events.
    pub region: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccessSettings {
    pub enabled: bool,
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Service-last-accessed jobs in flight at once, per account.
    pub max_concurrent_jobs: usize,
    /// Run jobs for every user, not only for users that hold an access key.
    pub all_users: bool,
    /// Run jobs for the roles too (with `roles.enabled`): their counts per role.
    pub roles: bool,
    /// Also for service-linked roles, which AWS services own.
    pub service_linked_roles: bool,
    /// ACTION_LEVEL jobs: the tracked actions granted and used per principal and service.
    pub action_level: bool,
    /// First wait between polls of a job; it doubles up to `poll_interval_max`.
    #[serde(deserialize_with = "duration")]
    pub poll_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub poll_interval_max: Duration,
    /// A job not finished by then is abandoned; the user's previous counts stay.
    #[serde(deserialize_with = "duration")]
    pub job_timeout: Duration,
}

/// Durations are humantime strings ("90s", "5m", "1h 30m"). humantime's own message is
/// kept because it says what is wrong ("unknown time unit", "time unit needed").
fn duration<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// A setting spelled as one of a few lowercase words.
trait Keyword: Copy + 'static {
    const CHOICES: &'static [(&'static str, Self)];
}

impl Keyword for SourceKind {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("api", SourceKind::Api),
        ("credential_report", SourceKind::CredentialReport),
        ("auto", SourceKind::Auto),
        ("credential_report_file", SourceKind::CredentialReportFile),
    ];
}

impl Keyword for LogLevel {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("error", LogLevel::Error),
        ("warn", LogLevel::Warn),
        ("info", LogLevel::Info),
        ("debug", LogLevel::Debug),
        ("trace", LogLevel::Trace),
    ];
}

impl Keyword for LogFormat {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("text", LogFormat::Text), ("json", LogFormat::Json)];
}

/// Reads a `Keyword`; a wrong word gets a message listing the right ones.
fn keyword<'de, D: serde::Deserializer<'de>, T: Keyword>(deserializer: D) -> Result<T, D::Error> {
    let text = String::deserialize(deserializer)?;
    T::CHOICES
        .iter()
        .find(|(word, _)| *word == text)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            let words: Vec<&str> = T::CHOICES.iter().map(|(word, _)| *word).collect();
            serde::de::Error::custom(format!("expected one of {}", words.join(", ")))
        })
}

/// A configuration the exporter refuses to start with. Every variant names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: config::ConfigError,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Where a setting came from, so the operator knows what to fix: the highest layer that
/// sets `key` wins, as in the merge itself.
fn origin_note(
    key: &str,
    value: Option<&Value>,
    file: Option<&Path>,
    overrides: &[(&str, String)],
    env_keys: &config::Map<String, Value>,
) -> String {
    if overrides.iter().any(|(k, _)| *k == key) {
        return format!(" (from flag --{})", key.replace('_', "-"));
    }
    if env_keys.contains_key(key) {
        let variable = format!("{ENV_PREFIX}_{}", key.replace('.', "__").to_uppercase());
        return format!(" (from environment variable {variable})");
    }
    // Built-in defaults are valid, so a bad value the flags and environment did not set
    // came from the file.
    match (value.and_then(Value::origin), file) {
        (Some(origin), _) => format!(" (from {origin})"),
        (None, Some(path)) => format!(" (from {})", path.display()),
        (None, None) => String::new(),
    }
}

fn render_value(value: Option<&Value>) -> String {
    match value {
        Some(value) => match &value.kind {
            config::ValueKind::String(s) => format!("{s:?}"),
            _ => value.to_string(),
        },
        None => "(missing)".to_string(),
    }
}

/// Loads and validates the settings. `overrides` are `(key, value)` pairs from flags,
/// which win over every other layer.
pub fn load(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<Settings, ConfigError> {
    load_with_env(file, overrides, Environment::with_prefix(ENV_PREFIX))
}

fn load_with_env(
    file: Option<&Path>,
    overrides: &[(&str, String)],
    env: Environment,
) -> Result<Settings, ConfigError> {
    let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
    if let Some(path) = file {
        let source = File::from(path).format(FileFormat::Toml).required(true);
        // Read the file alone first so a syntax error is reported against the file, not later.
        Config::builder()
            .add_source(source.clone())
            .build()
            .map_err(|source| ConfigError::File {
                path: path.display().to_string(),
                source,
            })?;
        builder = builder.add_source(source);
    }
    let env = env.prefix_separator("_").separator("__");
    // Kept aside to tell, in an error, which keys the environment set.
    let env_keys =
        config::Source::collect(&env).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    builder = builder.add_source(env);
    for (key, value) in overrides {
        builder = builder
            .set_override(*key, value.as_str())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    }
    let merged = builder
        .build()
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;

    let mut settings: Settings =
        serde_path_to_error::deserialize(merged.clone()).map_err(|err| {
            let key = err.path().to_string();
            let inner = err.inner().to_string();
            // The path names the offending key, an unknown one included.
            let value = merged.get::<Value>(&key).ok();
            let origin = origin_note(&key, value.as_ref(), file, overrides, &env_keys);
            let value = render_value(value.as_ref());
            if inner.starts_with("unknown field") {
                ConfigError::Invalid(format!("unknown key {key:?} = {value}{origin}"))
            } else {
                ConfigError::Invalid(format!(
                    "key {key:?} = {value}{origin}: {}",
                    strip_key_suffix(&inner)
                ))
            }
        })?;
    // Like Prometheus, a relative path in the configuration file is relative to that file.
    if let Some(config_file) = file {
        let dir = config_file.parent().unwrap_or(Path::new(""));
        for (key, path) in [
            ("source.file", settings.source.file.as_mut()),
            ("web.config_file", settings.web.config_file.as_mut()),
        ] {
            let set_elsewhere =
                overrides.iter().any(|(k, _)| *k == key) || env_keys.contains_key(key);
            if let Some(path) = path
                && path.is_relative()
                && !set_elsewhere
            {
                *path = dir.join(&*path);
            }
        }
    }
    settings.validate().map_err(|invalid| {
        let value = merged.get::<Value>(&invalid.key).ok();
        let origin = origin_note(&invalid.key, value.as_ref(), file, overrides, &env_keys);
        ConfigError::Invalid(format!(
            "key {:?} = {}{origin}: {}",
            invalid.key, invalid.value, invalid.why
        ))
    })?;
    Ok(settings)
}

/// The config crate appends `for key "..."` to some messages; we already name the key.
fn strip_key_suffix(message: &str) -> &str {
    match message.find(" for key ") {
        Some(at) => &message[..at],
        None => message,
    }
}

/// A value that has the right type but is out of bounds.
struct Invalid {
    key: String,
    value: String,
    why: &'static str,
}

fn check(
    ok: bool,
    key: impl Into<String>,
    value: impl fmt::Debug,
    why: &'static str,
) -> Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err(Invalid {
            key: key.into(),
            value: format!("{value:?}"),
            why,
        })
    }
}

fn check_duration(key: &'static str, value: Duration) -> Result<(), Invalid> {
    check(
        !value.is_zero(),
        key,
        humantime::format_duration(value).to_string(),
        "must be greater than zero",
    )
}

impl Settings {
    fn validate(&self) -> Result<(), Invalid> {
        let source = &self.source;
        if source.kind == SourceKind::CredentialReportFile {
            let file = source.file.as_deref().unwrap_or(Path::new(""));
            check(
                file.is_file(),
                "source.file",
                file.display().to_string(),
                "must name a readable credential report file when source.kind is credential_report_file",
            )?;
        }
        check_duration("source.report_max_age", source.report_max_age)?;
        check_duration("source.report_timeout", source.report_timeout)?;

        let web = &self.web;
        check(
            parse_listen_address(&web.listen_address).is_some(),
            "web.listen_address",
            &web.listen_address,
            "expected host:port or :port",
        )?;
        check(
            web.telemetry_path.starts_with('/') && web.telemetry_path.len() > 1,
            "web.telemetry_path",
            &web.telemetry_path,
            "expected an absolute path other than /",
        )?;
        check(
            !matches!(web.telemetry_path.as_str(), "/-/healthy" | "/-/ready"),
            "web.telemetry_path",
            &web.telemetry_path,
            "is reserved for the health endpoints",
        )?;
        check_duration("web.header_read_timeout", web.header_read_timeout)?;
        check(
            (1..=65_536).contains(&web.max_connections),
            "web.max_connections",
            web.max_connections,
            "must be between 1 and 65536",
        )?;
        check_duration("web.request_timeout", web.request_timeout)?;

        if let Some(url) = &self.aws.endpoint_url {
            let parsed = url.parse::<hyper::Uri>().ok();
            let valid = parsed.as_ref().is_some_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some()
            });
            check(
                valid,
                "aws.endpoint_url",
                url,
                "expected an http:// or https:// URL",
            )?;
        }
        if let Some(region) = &self.aws.region {
            check(
                !region.is_empty(),
                "aws.region",
                region,
                "must not be empty",
            )?;
        }
        check(
            (1..=20).contains(&self.aws.max_attempts),
            "aws.max_attempts",
            self.aws.max_attempts,
            "must be between 1 and 20",
        )?;
        check_duration("aws.attempt_timeout", self.aws.attempt_timeout)?;
        check_duration("aws.call_timeout", self.aws.call_timeout)?;
        check(
            self.aws.call_timeout >= self.aws.attempt_timeout,
            "aws.call_timeout",
            humantime::format_duration(self.aws.call_timeout).to_string(),
            "must be at least aws.attempt_timeout",
        )?;

        let refresh = &self.refresh;
        check_duration("refresh.interval", refresh.interval)?;
        check_duration("refresh.timeout", refresh.timeout)?;
        check(
            (1..=64).contains(&refresh.concurrency),
            "refresh.concurrency",
            refresh.concurrency,
            "must be between 1 and 64",
        )?;

        check(
            refresh.full_interval >= refresh.interval,
            "refresh.full_interval",
            humantime::format_duration(refresh.full_interval).to_string(),
            "must be at least refresh.interval",
        )?;
        check_duration("change_feed.overlap", self.change_feed.overlap)?;
        check(
            !self.change_feed.region.is_empty(),
            "change_feed.region",
            &self.change_feed.region,
            "must not be empty",
        )?;

        let access = &self.service_access;
        check_duration("service_access.interval", access.interval)?;
        check_duration("service_access.poll_interval", access.poll_interval)?;
        check_duration("service_access.job_timeout", access.job_timeout)?;
        check(
            access.poll_interval_max >= access.poll_interval,
            "service_access.poll_interval_max",
            humantime::format_duration(access.poll_interval_max).to_string(),
            "must be at least service_access.poll_interval",
        )?;
        check(
            (1..=64).contains(&access.max_concurrent_jobs),
            "service_access.max_concurrent_jobs",
            access.max_concurrent_jobs,
            "must be between 1 and 64",
        )?;
        check_duration("roles.interval", self.roles.interval)?;
        self.validate_accounts()?;
        self.validate_tags()
    }

    fn validate_accounts(&self) -> Result<(), Invalid> {
        let rate = self.aws.requests_per_second;
        check(
            rate.is_finite() && rate >= 0.0,
            "aws.requests_per_second",
            rate,
            "must be 0 (no limit) or a positive number",
        )?;
        check(
            (1..=256).contains(&self.refresh.max_concurrent_accounts),
            "refresh.max_concurrent_accounts",
            self.refresh.max_concurrent_accounts,
            "must be between 1 and 256",
        )?;
        let mut seen_roles = std::collections::HashSet::new();
        let mut own_accounts = 0;
        for (i, account) in self.accounts.iter().enumerate() {
            let key = |field: &str| format!("accounts[{i}].{field}");
            match &account.role_arn {
                Some(arn) => {
                    check(
                        account_of_role_arn(arn).is_some(),
                        key("role_arn"),
                        arn,
                        "expected arn:PARTITION:iam::ACCOUNT_ID:role/NAME",
                    )?;
                    check(
                        seen_roles.insert(arn.as_str()),
                        key("role_arn"),
                        arn,
                        "is listed twice",
                    )?;
                }
                None => {
                    own_accounts += 1;
                    check(
                        own_accounts == 1,
                        key("role_arn"),
                        "(none)",
                        "only one account may use the exporter's own credentials",
                    )?;
                    check(
                        account.external_id.is_none() && account.session_name.is_none(),
                        key("role_arn"),
                        "(none)",
                        "external_id and session_name need a role_arn",
                    )?;
                }
            }
            if let Some(id) = &account.external_id {
                check(
                    (2..=1224).contains(&id.len()),
                    key("external_id"),
                    id,
                    "must be 2 to 1224 characters",
                )?;
            }
            if let Some(name) = &account.session_name {
                check(
                    is_session_name(name),
                    key("session_name"),
                    name,
                    "must be 2 to 64 of the characters A-Z a-z 0-9 + = , . @ _ -",
                )?;
            }
        }

        let orgs = &self.organizations;
        check_duration("organizations.interval", orgs.interval)?;
        check(
            !orgs.role_name.is_empty() && !orgs.role_name.contains(['/', ':', ' ']),
            "organizations.role_name",
            &orgs.role_name,
            "expected a role name, without a path",
        )?;
        check(
            is_session_name(&orgs.session_name),
            "organizations.session_name",
            &orgs.session_name,
            "must be 2 to 64 of the characters A-Z a-z 0-9 + = , . @ _ -",
        )?;
        for (list, ids) in [
            ("include_accounts", &orgs.include_accounts),
            ("exclude_accounts", &orgs.exclude_accounts),
        ] {
            for (i, id) in ids.iter().enumerate() {
                check(
                    is_account_id(id),
                    format!("organizations.{list}[{i}]"),
                    id,
                    "expected a 12-digit account id",
                )?;
            }
        }

        check(
            (1..=1024).contains(&self.shard.total),
            "shard.total",
            self.shard.total,
            "must be between 1 and 1024",
        )?;
        check(
            self.shard.index < self.shard.total,
            "shard.index",
            self.shard.index,
            "must be less than shard.total (replicas count from 0)",
        )
    }

    fn validate_tags(&self) -> Result<(), Invalid> {
        check_duration("tags.interval", self.tags.interval)?;
        let mut labels = std::collections::HashMap::new();
        for (i, key) in self.tags.keys.iter().enumerate() {
            check(
                (1..=128).contains(&key.chars().count()),
                format!("tags.keys[{i}]"),
                key,
                "IAM tag keys are 1 to 128 characters",
            )?;
            let label = tag_label_name(key);
            if let Some(other) = labels.insert(label, key) {
                return Err(Invalid {
                    key: format!("tags.keys[{i}]"),
                    value: format!("{key:?}"),
                    why: if other.eq_ignore_ascii_case(key) {
                        "is listed twice (IAM tag keys are unique regardless of case)"
                    } else {
                        "becomes the same label as another tag key"
                    },
                });
            }
        }
        Ok(())
    }
}

/// The label a user tag becomes: `tag_` and the key, lowercased, with every character a
/// Prometheus label name cannot hold replaced by `_`. The prefix keeps tags from ever
/// clashing with a target label or the exporter's own labels.
pub fn tag_label_name(key: &str) -> String {
    let sanitised: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("tag_{sanitised}")
}

/// The account id in a role ARN, `arn:PARTITION:iam::ACCOUNT_ID:role/PATH/NAME`.
pub fn account_of_role_arn(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    let (arn_word, partition, service, region, account, resource) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    let valid = arn_word == "arn"
        && partition.starts_with("aws")
        && service == "iam"
        && region.is_empty()
        && is_account_id(account)
        && resource
            .strip_prefix("role/")
            .is_some_and(|n| !n.is_empty());
    valid.then_some(account)
}

pub fn is_account_id(id: &str) -> bool {
    id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit())
}

/// STS's rule for RoleSessionName.
fn is_session_name(name: &str) -> bool {
    (2..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
}

/// What to bind: `:port` means every interface, like the Go exporters' flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    AllInterfaces(u16),
    Host(String, u16),
}

pub fn parse_listen_address(text: &str) -> Option<ListenAddress> {
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if host.is_empty() {
        return Some(ListenAddress::AllInterfaces(port));
    }
    let host = host.strip_prefix('[').unwrap_or(host);
    let host = host.strip_suffix(']').unwrap_or(host);
    (!host.is_empty() && !host.contains(char::is_whitespace))
        .then(|| ListenAddress::Host(host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn no_env() -> Environment {
        Environment::with_prefix(ENV_PREFIX).source(Some(HashMap::new()))
    }

    fn env(pairs: &[(&str, &str)]) -> Environment {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Environment::with_prefix(ENV_PREFIX).source(Some(map))
    }

    fn defaults() -> Settings {
        load_with_env(None, &[], no_env()).expect("defaults are valid")
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = defaults();
        assert_eq!(s.web.listen_address, ":9887");
        assert_eq!(s.web.telemetry_path, "/metrics");
        assert_eq!(s.refresh.interval, Duration::from_secs(300));
        assert_eq!(s.refresh.concurrency, 4);
        assert_eq!(s.service_access.interval, Duration::from_secs(3600));
        assert_eq!(s.refresh.full_interval, Duration::from_secs(6 * 3600));
        assert!(s.change_feed.enabled);
        assert_eq!(s.change_feed.overlap, Duration::from_secs(900));
        assert_eq!(s.change_feed.region, "us-east-1");
        assert_eq!(s.aws.region, None);
        assert_eq!(s.aws.endpoint_url, None);
    }

    #[test]
    fn shipped_example_is_complete_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/iam-key-exporter.toml");
        let example = load_with_env(Some(&path), &[], no_env()).expect("example parses");
        assert_eq!(example, defaults());
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[refresh]\ninterval = \"10m\"\nconcurrency = 8\n[web]\nlisten_address = \":1\"\n",
        )
        .unwrap();
        let s = load_with_env(
            Some(&path),
            &[("web.listen_address", "127.0.0.1:3".to_string())],
            env(&[
                ("IAM_KEY_EXPORTER_REFRESH__CONCURRENCY", "2"),
                ("IAM_KEY_EXPORTER_WEB__LISTEN_ADDRESS", ":2"),
                (
                    "IAM_KEY_EXPORTER_AWS__ENDPOINT_URL",
                    "http://127.0.0.1:5000",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(s.refresh.interval, Duration::from_secs(600), "file");
        assert_eq!(s.refresh.concurrency, 2, "env beats file");
        assert_eq!(s.web.listen_address, "127.0.0.1:3", "flag beats env");
        assert_eq!(s.aws.endpoint_url.as_deref(), Some("http://127.0.0.1:5000"));
    }

    #[test]
    fn environment_errors_name_the_variable_origin() {
        let err = load_with_env(
            None,
            &[],
            env(&[("IAM_KEY_EXPORTER_REFRESH__INTERVAL", "soon")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("\"refresh.interval\""), "{err}");
        assert!(err.contains("\"soon\""), "{err}");
        assert!(
            err.contains("environment variable IAM_KEY_EXPORTER_REFRESH__INTERVAL"),
            "{err}"
        );
    }

    #[test]
    fn flag_errors_name_the_flag() {
        let err = load_with_env(None, &[("log.level", "loud".to_string())], no_env())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key \"log.level\" = \"loud\" (from flag --log.level)"),
            "{err}"
        );
    }

    #[test]
    fn unknown_environment_keys_are_rejected() {
        let err = load_with_env(None, &[], env(&[("IAM_KEY_EXPORTER_REFRESH__SPEED", "9")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown key \"refresh.speed\" = \"9\""),
            "{err}"
        );
    }

    /// Every `tests/config/*.bad.toml` must fail with the message written in its first
    /// line (`# error: ...`); every `*.ok.toml` must load.
    #[test]
    fn config_fixture_table() {
        // Relative, as an operator would type it; cargo runs tests from the package root.
        let dir = Path::new("tests/config");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            if name.ends_with(".ok.toml") {
                load_with_env(Some(&path), &[], no_env())
                    .unwrap_or_else(|e| panic!("{name} should load: {e}"));
                seen += 1;
            } else if name.ends_with(".bad.toml") {
                let expected = text
                    .lines()
                    .next()
                    .and_then(|l| l.strip_prefix("# error: "))
                    .unwrap_or_else(|| panic!("{name} lacks '# error: ' first line"));
                let err = load_with_env(Some(&path), &[], no_env())
                    .expect_err(&name)
                    .to_string();
                assert!(
                    err.contains(expected),
                    "{name}: expected {expected:?} in {err:?}"
                );
                seen += 1;
            }
        }
        assert!(seen >= 10, "only {seen} fixtures found");
    }

    #[test]
    fn a_relative_report_file_is_relative_to_the_configuration_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("reports")).unwrap();
        std::fs::write(dir.path().join("reports/r.csv"), "user\n").unwrap();
        let config = dir.path().join("c.toml");
        std::fs::write(
            &config,
            "[source]\nkind = \"credential_report_file\"\nfile = \"reports/r.csv\"\n",
        )
        .unwrap();
        let s = load_with_env(Some(&config), &[], no_env()).unwrap();
        assert_eq!(s.source.file, Some(dir.path().join("reports/r.csv")));
    }

    #[test]
    fn a_relative_web_config_file_is_relative_to_the_configuration_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("c.toml");
        std::fs::write(&config, "[web]\nconfig_file = \"web.yml\"\n").unwrap();
        let s = load_with_env(Some(&config), &[], no_env()).unwrap();
        assert_eq!(s.web.config_file, Some(dir.path().join("web.yml")));
        // A flag is relative to the working directory, as any path typed on a command line.
        let s = load_with_env(
            Some(&config),
            &[("web.config_file", "flag.yml".to_string())],
            no_env(),
        )
        .unwrap();
        assert_eq!(s.web.config_file, Some(PathBuf::from("flag.yml")));
    }

    #[test]
    fn listen_address_forms() {
        assert_eq!(
            parse_listen_address(":9887"),
            Some(ListenAddress::AllInterfaces(9887))
        );
        assert_eq!(
            parse_listen_address("127.0.0.1:80"),
            Some(ListenAddress::Host("127.0.0.1".into(), 80))
        );
        assert_eq!(
            parse_listen_address("[::1]:80"),
            Some(ListenAddress::Host("::1".into(), 80))
        );
        assert_eq!(parse_listen_address("9887"), None);
        assert_eq!(parse_listen_address(":99999"), None);
        assert_eq!(parse_listen_address("host:"), None);
    }
}
