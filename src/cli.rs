//! Command-line flags. Flags are the top configuration layer; each one maps to a key.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "iam-key-exporter",
    version,
    about = "Prometheus exporter for the hygiene of AWS IAM access keys"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// TOML configuration file (see config/iam-key-exporter.toml).
    #[arg(long = "config.file", value_name = "PATH")]
    pub config_file: Option<PathBuf>,

    /// Validate the configuration, print the settings and exit.
    #[arg(long = "check-config")]
    pub check_config: bool,

    /// Refresh once, print the exposition (or write it to --once.file) and exit; non-zero
    /// if the refresh failed. For cron and node_exporter's textfile collector.
    #[arg(long = "once")]
    pub once: bool,

    /// With --once: also run one pass of service-last-accessed jobs for the service counts.
    /// It takes about 3 s per user divided by service_access.max_concurrent_jobs.
    #[arg(long = "once.service-access", requires = "once")]
    pub once_service_access: bool,

    /// With --once: write the exposition to this file atomically instead of stdout.
    #[arg(long = "once.file", value_name = "PATH", requires = "once")]
    pub once_file: Option<PathBuf>,

    /// Address to listen on: host:port, or :port for every interface [default: :9887].
    #[arg(long = "web.listen-address", value_name = "ADDRESS")]
    pub listen_address: Option<String>,

    /// Path under which metrics are served [default: /metrics].
    #[arg(long = "web.telemetry-path", value_name = "PATH")]
    pub telemetry_path: Option<String>,

    /// Web configuration file for TLS and basic auth, in the Prometheus exporters' format
    /// (see config/web-config.yml).
    #[arg(long = "web.config.file", value_name = "PATH")]
    pub web_config_file: Option<String>,

    /// error, warn, info, debug or trace [default: info].
    #[arg(long = "log.level", value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// text or json [default: text].
    #[arg(long = "log.format", value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// Replicas sharing the accounts [default: 1].
    #[arg(long = "shard.total", value_name = "N")]
    pub shard_total: Option<String>,

    /// This replica's index among shard.total, from 0 (a StatefulSet pod's ordinal)
    /// [default: 0].
    #[arg(long = "shard.index", value_name = "I")]
    pub shard_index: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Which account owns an access key id, what kind of key it is, and, in the account of
    /// the exporter's credentials, its user, status, age and last use.
    Whois {
        /// An access key id: AKIA... (long-term) or ASIA... (temporary).
        key_id: String,
    },
}

impl Cli {
    /// The flags that were given, as configuration keys and values.
    pub fn overrides(&self) -> Vec<(&'static str, String)> {
        [
            ("web.listen_address", &self.listen_address),
            ("web.telemetry_path", &self.telemetry_path),
            ("web.config_file", &self.web_config_file),
            ("log.level", &self.log_level),
            ("log.format", &self.log_format),
            ("shard.total", &self.shard_total),
            ("shard.index", &self.shard_index),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.clone().map(|v| (key, v)))
        .collect()
    }
}
