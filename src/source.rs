//! Where an inventory comes from, per `source.kind`: IAM's API, its credential report, both,
//! or a report file on disk. The refresher asks a `Source` for an inventory and does not
//! care which.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::OnceCell;

use crate::config::{FilterSettings, LabelSettings, SourceKind, SourceSettings};
use crate::credential_report::{self, ReportError, ReportWarning, Warned};
use crate::features::{Degraded, Feature};
use crate::filter::{UserFilter, mask_key_ids};
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

/// A source and what is done to every inventory it yields.
pub struct Source {
    pub origin: Origin,
    filter: UserFilter,
    mask_key_ids: bool,
    /// Features IAM denied for this account.
    pub degraded: Degraded,
}

pub enum Origin {
    Aws {
        clients: Clients,
        kind: SourceKind,
        report: ReportPolicy,
        concurrency: usize,
        /// The account id never changes for a set of credentials: asked once, then kept.
        account_id: OnceCell<String>,
        /// What the last credential report read was warned about.
        warned: Mutex<Warned>,
    },
    File {
        path: PathBuf,
        /// Modification time and length at the last read, to notice a new file.
        seen: Mutex<Option<(SystemTime, u64)>>,
        /// The account the last file read belonged to.
        account_id: Mutex<Option<String>>,
        /// What the last file read was warned about.
        warned: Mutex<Warned>,
    },
}

impl Source {
    pub fn new(origin: Origin, filter: &FilterSettings, labels: &LabelSettings) -> Source {
        Source {
            origin,
            filter: UserFilter::new(filter),
            mask_key_ids: labels.mask_key_ids,
            degraded: Degraded::default(),
        }
    }

    /// The account id, once known: from the role ARN, STS, or the report file's ARNs.
    pub fn account_id(&self) -> Option<String> {
        match &self.origin {
            Origin::Aws { account_id, .. } => account_id.get().cloned(),
            Origin::File { account_id, .. } => account_id.lock().expect("not poisoned").clone(),
        }
    }

    /// The IAM clients, for the service-access refresher; a file has none.
    pub fn clients(&self) -> Option<&Clients> {
        match &self.origin {
            Origin::Aws { clients, .. } => Some(clients),
            Origin::File { .. } => None,
        }
    }

    /// True when the file changed since it was last read. Always false for AWS, whose
    /// changes are only seen by asking.
    pub fn changed(&self) -> bool {
        self.origin.changed()
    }

    /// An inventory of the users the filter allows, key ids masked if configured.
    pub async fn collect(&self, metrics: &ExporterMetrics) -> Result<Inventory, SourceError> {
        let mut inventory = self
            .origin
            .collect(metrics, &self.filter, &self.degraded)
            .await?;
        self.filter.apply(&mut inventory);
        if self.mask_key_ids {
            mask_key_ids(&mut inventory);
        }
        Ok(inventory)
    }
}

impl Origin {
    /// `account_id` is known up front for an assumed role; otherwise STS is asked once.
    pub fn aws(
        clients: Clients,
        settings: &SourceSettings,
        concurrency: usize,
        account_id: Option<String>,
    ) -> Origin {
        Origin::Aws {
            clients,
            kind: settings.kind,
            report: ReportPolicy {
                max_age: settings.report_max_age,
                poll_interval: REPORT_POLL,
                poll_interval_max: REPORT_POLL_MAX,
                timeout: settings.report_timeout,
            },
            concurrency,
            account_id: OnceCell::new_with(account_id),
            warned: Mutex::default(),
        }
    }

    pub fn file(path: PathBuf) -> Origin {
        Origin::File {
            path,
            seen: Mutex::new(None),
            account_id: Mutex::new(None),
            warned: Mutex::default(),
        }
    }

    fn changed(&self) -> bool {
        match self {
            Origin::Aws { .. } => false,
            Origin::File { path, seen, .. } => {
                let stamp = file_stamp(path);
                stamp.is_some() && stamp != *seen.lock().expect("not poisoned")
            }
        }
    }

    async fn collect(
        &self,
        metrics: &ExporterMetrics,
        filter: &UserFilter,
        degraded: &Degraded,
    ) -> Result<Inventory, SourceError> {
        match self {
            Origin::Aws {
                clients,
                kind,
                report,
                concurrency,
                account_id,
                warned,
            } => {
                let account = account_id
                    .get_or_try_init(|| iam::caller_account_id(&clients.sts, metrics))
                    .await?
                    .clone();
                let iam = &clients.iam;
                let mut inventory = match kind {
                    SourceKind::Api => {
                        iam::collect_inventory(iam, metrics, &account, *concurrency, None, filter)
                            .await?
                    }
                    SourceKind::Auto => {
                        // Without the report, `auto` is the API source: slower, as complete.
                        let report = iam::credential_report(iam, metrics, *report).await;
                        let report = degraded.observe(
                            metrics,
                            &account,
                            Feature::CredentialReport,
                            report,
                        )?;
                        if let Some(report) = &report {
                            warn_once(warned, &account, &report.warnings);
                        }
                        iam::collect_inventory(
                            iam,
                            metrics,
                            &account,
                            *concurrency,
                            report.as_ref(),
                            filter,
                        )
                        .await?
                    }
                    // A report file is `Origin::File`; only the report itself reaches here.
                    SourceKind::CredentialReport | SourceKind::CredentialReportFile => {
                        let report = iam::credential_report(iam, metrics, *report).await?;
                        warn_once(warned, &account, &report.warnings);
                        return Ok(credential_report::inventory_by_slot(
                            &report.rows,
                            account,
                            Some(report.generated_at),
                            SystemTime::now(),
                        ));
                    }
                };
                // GetAccountSummary is current where the report's root row may be hours
                // old; without it, the root row (if any) still answers.
                let summary = iam::root_access_keys_present(iam, metrics).await;
                let from_summary =
                    degraded.observe(metrics, &account, Feature::RootKeys, summary)?;
                let facts = &mut inventory.account;
                facts.root_access_keys_present =
                    from_summary.or_else(|| facts.root.as_ref().map(|root| !root.keys.is_empty()));
                Ok(inventory)
            }
            Origin::File {
                path,
                seen,
                account_id,
                warned,
            } => {
                let display = path.display().to_string();
                let stamp = file_stamp(path);
                let bytes = std::fs::read(path).map_err(|source| SourceError::File {
                    path: display.clone(),
                    source,
                })?;
                let report =
                    credential_report::read(&bytes).map_err(|source| SourceError::Report {
                        path: display.clone(),
                        source,
                    })?;
                *seen.lock().expect("not poisoned") = stamp;
                let account = report.account_id.unwrap_or_else(|| "unknown".to_string());
                warn_once(warned, &display, &report.warnings);
                *account_id.lock().expect("not poisoned") = Some(account.clone());
                // A file carries no GeneratedTime; its modification time is the closest.
                let generated = stamp.map(|(modified, _)| modified);
                Ok(credential_report::inventory_by_slot(
                    &report.rows,
                    account,
                    generated,
                    SystemTime::now(),
                ))
            }
        }
    }
}

/// Logs what is odd about a report, each problem once rather than at every refresh
/// (`Warned`). `origin` names the account or the file.
fn warn_once(warned: &Mutex<Warned>, origin: &str, warnings: &[ReportWarning]) {
    for warning in warned.lock().expect("not poisoned").news(warnings) {
        tracing::warn!(origin, "{warning}");
    }
}

fn file_stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}
