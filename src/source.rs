//! Where an inventory comes from, per `source.kind`: IAM's API, its credential report, both,
//! or a report file on disk. The refresher asks a `Source` for an inventory and does not
//! care which.

use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::config::{FilterSettings, LabelSettings, SourceKind, SourceSettings};
use crate::credential_report::{self, ReportError, ReportWarning, Warned};
use crate::features::{Degraded, Feature};
use crate::filter::{UserFilter, mask_key_ids};
use crate::iam::{
    self, ChangeFeed, Changes, Clients, CredentialReport, IamError, Polled, ReportPolicy,
};
use crate::inventory::{Inventory, elapsed};
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

/// How an AWS source follows IAM's changes (`change_feed` and `refresh.full_interval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedPolicy {
    pub overlap: Duration,
    pub full_interval: Duration,
}

/// What one refresh of a source yields.
#[derive(Debug)]
pub struct Refreshed {
    pub inventory: Inventory,
    /// What the change feed said changed, when only that was listed; `None` when every
    /// user was listed (or read from a report), so anything may have changed.
    pub changes: Option<Changes>,
    /// The feed follows this account: on, started, and allowed. Changes made after this
    /// refresh will be told by a later one, so the slower passes may read only what the
    /// feed names, even after a whole list.
    pub following: bool,
}

/// What an AWS source keeps from one refresh to the next.
#[derive(Default)]
pub struct Tracked {
    feed: ChangeFeed,
    /// The last inventory as IAM listed it, before masking: what changes apply to.
    listed: Option<Inventory>,
    /// When every user is to be listed again.
    whole_list_due: Option<Instant>,
    /// The last credential report read, kept while it is younger than the configured
    /// age: IAM makes a new one at most every 4 hours, so asking sooner only costs calls.
    report: Option<CredentialReport>,
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
        /// `None` when the change feed is off: every refresh lists every user.
        feed: Option<FeedPolicy>,
        /// Held through a refresh; refreshes of one account never overlap anyway. Boxed:
        /// it holds a whole inventory, and a file origin needs none of it.
        tracked: Box<tokio::sync::Mutex<Tracked>>,
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
        Ok(self.refresh(metrics).await?.inventory)
    }

    /// `collect`, with what the change feed said changed.
    pub async fn refresh(&self, metrics: &ExporterMetrics) -> Result<Refreshed, SourceError> {
        let mut refreshed = self
            .origin
            .collect(metrics, &self.filter, &self.degraded)
            .await?;
        self.filter.apply(&mut refreshed.inventory);
        if self.mask_key_ids {
            mask_key_ids(&mut refreshed.inventory);
        }
        Ok(refreshed)
    }
}

impl Origin {
    /// `account_id` is known up front for an assumed role; otherwise STS is asked once.
    pub fn aws(
        clients: Clients,
        settings: &SourceSettings,
        concurrency: usize,
        account_id: Option<String>,
        feed: Option<FeedPolicy>,
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
            feed,
            tracked: Box::default(),
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
    ) -> Result<Refreshed, SourceError> {
        match self {
            Origin::Aws {
                clients,
                kind,
                report,
                concurrency,
                account_id,
                warned,
                feed,
                tracked,
            } => {
                let account = account_id
                    .get_or_try_init(|| iam::caller_account_id(&clients.sts, metrics))
                    .await?
                    .clone();
                clients.account.set(&account);
                let iam = &clients.iam;
                if matches!(
                    kind,
                    SourceKind::CredentialReport | SourceKind::CredentialReportFile
                ) {
                    // A report file is `Origin::File`; only the report itself reaches here.
                    let report = iam::credential_report(iam, metrics, *report).await?;
                    warn_once(warned, &account, &report.warnings);
                    let inventory = credential_report::inventory_by_slot(
                        &report.rows,
                        account,
                        Some(report.generated_at),
                        SystemTime::now(),
                    );
                    return Ok(Refreshed {
                        inventory,
                        changes: None,
                        following: false,
                    });
                }
                let mut tracked = tracked.lock().await;
                if *kind == SourceKind::Auto {
                    // Without the report, `auto` is the API source: slower, as complete.
                    let fresh = tracked.report.as_ref().is_some_and(|r| {
                        elapsed(r.generated_at, SystemTime::now()) <= report.max_age
                    });
                    if !fresh {
                        let read = iam::credential_report(iam, metrics, *report).await;
                        let read =
                            degraded.observe(metrics, &account, Feature::CredentialReport, read)?;
                        if let Some(report) = &read {
                            warn_once(warned, &account, &report.warnings);
                        }
                        tracked.report = read;
                    }
                }
                let polled = match feed {
                    Some(policy) => poll_feed(&tracked, clients, metrics, policy).await,
                    None => None,
                };
                let tracked = &mut *tracked;
                let report = tracked.report.as_ref();
                // The changes, and the inventory with them applied, when the feed could
                // tell what changed and no whole list is due.
                let followed = match (polled, &tracked.listed) {
                    (Some(Ok(polled)), Some(previous)) if !polled.changes.everyone => {
                        let relisted = iam::relist_users(
                            iam,
                            metrics,
                            previous,
                            &polled.changes.users,
                            *concurrency,
                            report,
                            filter,
                        )
                        .await;
                        // The feed works when both its calls do: LookupEvents, and GetUser
                        // for the users it names.
                        let relisted = match relisted {
                            // Only GetUser is the feed's own; another denial fails the
                            // refresh as it would fail a whole list.
                            Err(err)
                                if err.is_access_denied() && err.operation() != Some("GetUser") =>
                            {
                                return Err(err.into());
                            }
                            relisted => relisted,
                        };
                        let relisted =
                            degraded.observe(metrics, &account, Feature::ChangeFeed, relisted)?;
                        relisted.map(|inventory| (inventory, polled))
                    }
                    (Some(Ok(_)), _) => {
                        degraded.working(metrics, &account, Feature::ChangeFeed);
                        None
                    }
                    (Some(Err(err)), _) => {
                        degraded.observe::<()>(metrics, &account, Feature::ChangeFeed, Err(err))?;
                        None
                    }
                    (None, _) => None,
                };
                let (mut inventory, changes) = match followed {
                    Some((inventory, polled)) => {
                        let changes = polled.changes.clone();
                        // Applied: the feed moves on. Had anything failed on the way, the
                        // next poll would read the same events again.
                        if let Some(policy) = feed {
                            tracked.feed.commit(polled, policy.overlap);
                        }
                        (inventory, Some(changes))
                    }
                    None => {
                        let started = SystemTime::now();
                        let inventory = iam::collect_inventory(
                            iam,
                            metrics,
                            &account,
                            *concurrency,
                            report,
                            filter,
                        )
                        .await?;
                        if let Some(policy) = feed {
                            tracked.feed.restart(started);
                            tracked.whole_list_due =
                                Some(Instant::now() + spread(policy.full_interval));
                        }
                        (inventory, None)
                    }
                };
                if feed.is_some() {
                    tracked.listed = Some(inventory.clone());
                }
                // GetAccountSummary is current where the report's root row may be hours
                // old; without it, the root row (if any) still answers.
                let summary = iam::root_access_keys_present(iam, metrics).await;
                let from_summary =
                    degraded.observe(metrics, &account, Feature::RootKeys, summary)?;
                let facts = &mut inventory.account;
                facts.root_access_keys_present =
                    from_summary.or_else(|| facts.root.as_ref().map(|root| !root.keys.is_empty()));
                let following = feed.is_some()
                    && tracked.feed.is_started()
                    && !degraded.is_off(Feature::ChangeFeed);
                Ok(Refreshed {
                    inventory,
                    changes,
                    following,
                })
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
                let inventory = credential_report::inventory_by_slot(
                    &report.rows,
                    account,
                    generated,
                    SystemTime::now(),
                );
                Ok(Refreshed {
                    inventory,
                    changes: None,
                    following: false,
                })
            }
        }
    }
}

/// What the event history says changed since the last refresh; `None` when a whole
/// list is due (or none was made yet, so the feed has no place to start). The caller
/// records whether the feed works: a denied LookupEvents turns it off for the account,
/// every refresh then lists everyone and asks again whether it is still denied; any
/// other failure fails the refresh, and the next poll asks for the same window again.
async fn poll_feed(
    tracked: &Tracked,
    clients: &Clients,
    metrics: &ExporterMetrics,
    policy: &FeedPolicy,
) -> Option<Result<Polled, IamError>> {
    let due = tracked
        .whole_list_due
        .is_none_or(|due| Instant::now() >= due);
    if tracked.listed.is_none() || due || !tracked.feed.is_started() {
        return None;
    }
    let polled = tracked
        .feed
        .poll(&clients.cloudtrail, metrics, policy.overlap)
        .await;
    polled.transpose()
}

/// `interval` less up to a tenth, at random: accounts whose whole lists fell due together
/// (they all started together) drift apart instead of listing together forever.
fn spread(interval: Duration) -> Duration {
    let random = std::hash::RandomState::new().hash_one(Instant::now());
    let tenth = interval / 10;
    interval - tenth.mul_f64((random % 1_000) as f64 / 1_000.0)
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
