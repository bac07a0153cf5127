//! iam-key-exporter: serves the hygiene of AWS IAM access keys as Prometheus metrics,
//! from an inventory refreshed in the background. See ARCHITECTURE.md for the map.

pub mod accounts;
pub mod basic_auth;
pub mod cli;
pub mod config;
pub mod credential_report;
pub mod exposition;
pub mod features;
pub mod filter;
pub mod fleet;
pub mod http;
pub mod iam;
pub mod inventory;
pub mod metrics;
pub mod notify;
pub mod refresh;
pub mod snapshot;
pub mod source;
pub mod web_config;
pub mod whois;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Settings;
use crate::fleet::Fleet;
use crate::metrics::ExporterMetrics;
use crate::notify::Notifier;
use crate::refresh::Shared;

/// How stale the exporter's own metrics on `/metrics` may be.
const OWN_METRICS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the exporter on `listener` until `shutdown` resolves: the refreshers start at
/// once, the HTTP server answers from whatever they last published, with the TLS and
/// authentication of `web_config`. On shutdown the refreshers stop (a refresh in flight
/// is dropped; nothing half-built was published) and in-flight requests get a short
/// grace period.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    web_config: web_config::WatchedWebConfig,
    shutdown: impl Future<Output = ()>,
) {
    let metrics = Arc::new(ExporterMetrics::new());
    // Before Shared::new assembles the first exposition: no scrape sees another shard.
    metrics.set_shard(settings.shard.total, settings.shard.index);
    let shared = Arc::new(Shared::new(metrics.clone()));
    let fleet = Arc::new(Fleet::new(&settings, metrics).await);
    metrics_for_discovery(&settings, &shared);

    let mut refreshers = tokio::task::JoinSet::new();
    refreshers.spawn(refresh::run_key_refresh(
        fleet.clone(),
        settings.clone(),
        shared.clone(),
    ));
    // Service counts, tags and roles need IAM; a report file has none to ask.
    if settings.service_access.enabled && !fleet.is_file() {
        refreshers.spawn(refresh::run_service_access_refresh(
            fleet.clone(),
            settings.clone(),
            shared.clone(),
        ));
    }
    if !settings.tags.keys.is_empty() && !fleet.is_file() {
        refreshers.spawn(refresh::run_tag_refresh(
            fleet.clone(),
            settings.clone(),
            shared.clone(),
        ));
    }
    if settings.roles.enabled && !fleet.is_file() {
        refreshers.spawn(refresh::run_role_refresh(
            fleet.clone(),
            settings.clone(),
            shared.clone(),
        ));
    }

    // Service counts and tags arrive one user at a time; they are published as they come.
    refreshers.spawn(refresh::run_publisher(shared.clone()));

    // The exporter's own metrics (process CPU and memory above all) change between
    // refreshes; re-assembling the exposition every few seconds keeps them current while
    // scrapes only copy bytes.
    let assembler = shared.clone();
    refreshers.spawn(refresh::every(OWN_METRICS_INTERVAL, move || {
        assembler.refresh_exposition();
        std::future::ready(())
    }));

    let notifier = Arc::new(Notifier::from_env());
    // READY=1 after the first refresh, whatever its outcome: an exporter that cannot reach
    // AWS still serves its health and says why, and holding READY back would have systemd
    // kill it for a fault that is not its own.
    let (ready_notifier, ready_shared) = (notifier.clone(), shared.clone());
    refreshers.spawn(async move {
        ready_shared.first_refresh_finished().await;
        let status = match ready_shared.last_refresh().and_then(|s| s.error.clone()) {
            None => "serving".to_string(),
            Some(error) => format!("first refresh failed: {error}"),
        };
        // STATUS= is one line; an AWS error message may span several.
        let status = status.lines().next().unwrap_or_default().to_string();
        ready_notifier.notify(&format!("READY=1\nSTATUS={status}"));
    });
    if let Some(interval) = notifier.watchdog_interval() {
        let watchdog = notifier.clone();
        refreshers.spawn(refresh::every(interval, move || {
            watchdog.notify("WATCHDOG=1");
            std::future::ready(())
        }));
    }
    let stopping = notifier.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.notify("STOPPING=1");
    };

    http::serve(listener, settings.web, web_config, shared, shutdown).await;
    refreshers.shutdown().await;
}

/// Why `--once` produced no exposition.
#[derive(Debug, thiserror::Error)]
pub enum OnceError {
    #[error("refresh failed: {0}")]
    Refresh(String),
}

/// One refresh (and, when `service_access` is true and the feature enabled, one pass of
/// service-access jobs), then the exposition: the inventory and the exporter's own
/// metrics, without `process_*`. For cron jobs and node_exporter's textfile collector.
/// The pass is asked for explicitly because it costs seconds per user: hours, not
/// seconds, for a large account.
pub async fn once(settings: Settings, service_access: bool) -> Result<Vec<u8>, OnceError> {
    let metrics = Arc::new(ExporterMetrics::without_process_metrics());
    metrics.set_shard(settings.shard.total, settings.shard.index);
    let shared = Shared::new(metrics.clone());
    let fleet = Fleet::new(&settings, metrics.clone()).await;
    metrics_for_discovery(&settings, &shared);
    if !refresh::refresh_keys_once(&fleet, &settings, &shared).await {
        let error = shared
            .last_refresh()
            .and_then(|status| status.error.clone())
            .unwrap_or_default();
        return Err(OnceError::Refresh(error));
    }
    // Tags of every user were read with the inventory; roles and service counts remain.
    if settings.roles.enabled && !fleet.is_file() {
        refresh::refresh_roles_once(&fleet, &settings, &shared, true).await;
    }
    if service_access && settings.service_access.enabled && !fleet.is_file() {
        refresh::refresh_service_access_once(&fleet, &settings, &shared).await;
    }
    // Every refresh and pass ends by assembling the exposition; that is the answer.
    let published = shared.published();
    let [head, tail] = &published.exposition.plain;
    Ok([&head[..], &tail[..]].concat())
}

/// Replaces `path` with `bytes` so that a reader sees the old file or the new one, never
/// a partial one: written beside it, then renamed over it.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".tmp.{}", std::process::id()));
    let temporary = std::path::PathBuf::from(temporary);
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

/// Discovery is healthy until it fails; without it, there is nothing to fail.
fn metrics_for_discovery(settings: &Settings, shared: &Shared) {
    shared.metrics.discovery_success.set(1);
    if !settings.organizations.enabled {
        shared
            .metrics
            .discovery_last_success_timestamp_seconds
            .set(0.0);
    }
}
