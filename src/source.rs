//! Where an inventory comes from, per `source.kind`: IAM's API, its credential report, both,
//! or a report file on disk. The refresher asks a `Source` for an inventory and does not
//! care which.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::OnceCell;

use crate::config::{SourceKind, SourceSettings};
use crate::credential_report::{self, ReportError};
use crate::iam::{self, Clients, IamError, ReportPolicy};
use crate::inventory::Inventory;
use crate::metrics::ExporterMetrics;

/// The first wait while IAM generates a report; it doubles up to the maximum.
const REPORT_POLL: Duration = Duration::from_secs(1);
const REPORT_POLL_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Iam(#[from] IamError),
    #[error("cannot read {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Report {
        path: String,
        #[source]
        source: ReportError,
    },
}

pub enum Source {
    Aws {
        clients: Clients,
        kind: SourceKind,
        report: ReportPolicy,
        concurrency: usize,
        /// The account id never changes for a set of credentials: asked once, then kept.
        account_id: OnceCell<String>,
    },
    File {
        path: PathBuf,
        /// Modification time and length at the last read, to notice a new file.
        seen: Mutex<Option<(SystemTime, u64)>>,
    },
}

impl Source {
    pub fn aws(clients: Clients, settings: &SourceSettings, concurrency: usize) -> Source {
        Source::Aws {
            clients,
            kind: settings.kind,
            report: ReportPolicy {
                max_age: settings.report_max_age,
                poll_interval: REPORT_POLL,
                poll_interval_max: REPORT_POLL_MAX,
                timeout: settings.report_timeout,
            },
            concurrency,
            account_id: OnceCell::new(),
        }
    }

    pub fn file(path: PathBuf) -> Source {
        Source::File {
            path,
            seen: Mutex::new(None),
        }
    }

    /// The IAM clients, for the service-access refresher; a file has none.
    pub fn clients(&self) -> Option<&Clients> {
        match self {
            Source::Aws { clients, .. } => Some(clients),
            Source::File { .. } => None,
        }
    }

    /// True when the file changed since it was last read. Always false for AWS, whose
    /// changes are only seen by asking.
    pub fn changed(&self) -> bool {
        match self {
            Source::Aws { .. } => false,
            Source::File { path, seen } => {
                let stamp = file_stamp(path);
                stamp.is_some() && stamp != *seen.lock().expect("not poisoned")
            }
        }
    }

    pub async fn collect(&self, metrics: &ExporterMetrics) -> Result<Inventory, SourceError> {
        match self {
            Source::Aws {
                clients,
                kind,
                report,
                concurrency,
                account_id,
            } => {
                let account = account_id
                    .get_or_try_init(|| iam::caller_account_id(&clients.sts, metrics))
                    .await?
                    .clone();
                let iam = &clients.iam;
                let inventory = match kind {
                    SourceKind::Api => {
                        iam::collect_inventory(iam, metrics, &account, *concurrency, None).await?
                    }
                    SourceKind::Auto => {
                        let report = iam::credential_report(iam, metrics, *report).await?;
                        iam::collect_inventory(iam, metrics, &account, *concurrency, Some(&report))
                            .await?
                    }
                    // A report file is `Source::File`; only the report itself reaches here.
                    SourceKind::CredentialReport | SourceKind::CredentialReportFile => {
                        let report = iam::credential_report(iam, metrics, *report).await?;
                        credential_report::inventory_by_slot(
                            &report.rows,
                            account,
                            Some(report.generated_at),
                            SystemTime::now(),
                        )
                    }
                };
                Ok(inventory)
            }
            Source::File { path, seen } => {
                let display = path.display().to_string();
                let stamp = file_stamp(path);
                let bytes = std::fs::read(path).map_err(|source| SourceError::File {
                    path: display.clone(),
                    source,
                })?;
                let rows = credential_report::decode(&bytes)
                    .and_then(|csv| credential_report::parse(&csv))
                    .map_err(|source| SourceError::Report {
                        path: display,
                        source,
                    })?;
                *seen.lock().expect("not poisoned") = stamp;
                let account = rows
                    .iter()
                    .find_map(|r| credential_report::account_of(&r.arn))
                    .unwrap_or("unknown")
                    .to_string();
                // A file carries no GeneratedTime; its modification time is the closest.
                let generated = stamp.map(|(modified, _)| modified);
                Ok(credential_report::inventory_by_slot(
                    &rows,
                    account,
                    generated,
                    SystemTime::now(),
                ))
            }
        }
    }
}

fn file_stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}
