//! iam-key-exporter: serves the hygiene of AWS IAM access keys as Prometheus metrics,
//! from an inventory refreshed in the background. See ARCHITECTURE.md for the map.

pub mod cli;
pub mod config;
pub mod credential_report;
pub mod http;
pub mod iam;
pub mod inventory;
pub mod metrics;
pub mod refresh;
pub mod snapshot;
pub mod source;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Settings;
use crate::config::SourceKind;
use crate::metrics::ExporterMetrics;
use crate::refresh::Shared;
use crate::source::Source;

/// Runs the exporter on `listener` until `shutdown` resolves: the refreshers start at
/// once, the HTTP server answers from whatever they last published. On shutdown the
/// refreshers stop (a refresh in flight is dropped; nothing half-built was published)
/// and in-flight requests get a short grace period.
pub async fn run(settings: Settings, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let metrics = Arc::new(ExporterMetrics::new());
    let shared = Arc::new(Shared::new(metrics.clone()));
    let source = Arc::new(build_source(&settings, metrics).await);

    let mut refreshers = tokio::task::JoinSet::new();
    refreshers.spawn(refresh::run_key_refresh(
        source.clone(),
        settings.refresh.clone(),
        shared.clone(),
    ));
    // Service counts need IAM; a report file has none to ask.
    if let (true, Some(clients)) = (settings.service_access.enabled, source.clients()) {
        refreshers.spawn(refresh::run_service_access_refresh(
            clients.clone(),
            settings.service_access.clone(),
            shared.clone(),
        ));
    }

    http::serve(listener, settings.web, shared, shutdown).await;
    refreshers.shutdown().await;
}

/// The configured source. A report file needs no AWS clients, so none are built for it.
async fn build_source(settings: &Settings, metrics: Arc<ExporterMetrics>) -> Source {
    match (&settings.source.kind, &settings.source.file) {
        (SourceKind::CredentialReportFile, Some(path)) => Source::file(path.clone()),
        _ => {
            let clients = iam::Clients::from_env(&settings.aws, metrics).await;
            Source::aws(clients, &settings.source, settings.refresh.concurrency)
        }
    }
}
