//! The accounts being watched, at run time: each with its own clients (credentials, rate
//! limit), source and health, kept from one refresh to the next. With Organizations
//! discovery the set is read again every `organizations.interval`; a failed read keeps
//! the previous set.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::time::Instant;

use crate::accounts::{self, Target};
use crate::config::{Settings, SourceKind};
use crate::features::Feature;
use crate::iam::{self, AccountLabel, AwsBase, CallerIdentity, Clients, IamError};
use crate::inventory::unix_seconds;
use crate::metrics::ExporterMetrics;
use crate::source::{FeedPolicy, Origin, Source};

/// One watched account.
pub struct Account {
    pub target: Target,
    pub source: Source,
    /// When the account's inventory was last refreshed successfully.
    pub last_success: Mutex<Option<SystemTime>>,
    /// Held for writing while the account's key inventory refreshes. A service-access job
    /// takes it for reading before it starts, so new jobs wait and the key refresh has the
    /// account's request rate to itself, delayed only by the few jobs already running.
    pub refreshing_keys: tokio::sync::RwLock<()>,
    /// What the change feed told the tag and service-access passes, kept until they use it.
    pub followed: Mutex<Followed>,
    /// The health metrics' label values last used, so they can be removed when they change
    /// (the own account's id becomes known) or the account leaves.
    labels: Mutex<Option<[String; 2]>>,
}

/// What the slower passes need to know of the change feed, so that they too cost what
/// changed: with the feed working, tags are read for the users events name, and a user's
/// service-access job runs again only when its permissions changed or it was active
/// since its last job. Each pass still reads everyone every `refresh.full_interval`.
#[derive(Debug, Default)]
pub struct Followed {
    /// The change feed follows the account (see `Refreshed::following`): its events
    /// will name what changes.
    pub following: bool,
    /// Users (lowercased names: IAM matches names regardless of case) whose own
    /// permissions changed since their last job.
    pub permissions: HashSet<String>,
    /// Roles (lowercased names) whose own permissions changed since their last job.
    pub role_permissions: HashSet<String>,
    /// A group's or a managed policy's permissions changed since the last pass.
    pub all_permissions: bool,
    /// When every user's tags were last read.
    pub tags_read_at: Option<Instant>,
    /// When the account's roles were last read, or tried.
    pub roles_read_at: Option<Instant>,
    /// The feed named a role change since the roles were last read.
    pub roles_changed: bool,
    /// When every user's job last ran.
    pub jobs_run_at: Option<Instant>,
    /// By user ARN: the user's last activity when its last job ran. A user with no
    /// activity since cannot have used a service since, so its counts still hold.
    pub job_activity: HashMap<String, Option<SystemTime>>,
}

impl Followed {
    /// True when a pass last run at `at` must read everyone now.
    pub fn whole_pass_due(&self, at: Option<Instant>, full_interval: std::time::Duration) -> bool {
        !self.following || at.is_none_or(|at| at.elapsed() >= full_interval)
    }
}

impl Account {
    fn new(target: Target, source: Source) -> Account {
        Account {
            target,
            source,
            last_success: Mutex::new(None),
            refreshing_keys: tokio::sync::RwLock::new(()),
            followed: Mutex::default(),
            labels: Mutex::new(None),
        }
    }

    /// The account id for labels: known from the role ARN, STS or the report, else
    /// `unknown` (the own account before GetCallerIdentity has answered).
    pub fn id(&self) -> String {
        self.source
            .account_id()
            .or_else(|| self.target.account_id.clone())
            .unwrap_or_else(|| "unknown".to_string())
    }

    pub fn clients(&self) -> Option<&Clients> {
        self.source.clients()
    }

    /// The label values of the per-account health metrics, `[account_id, account_name]`.
    /// Series under an earlier id are removed.
    pub fn health_labels(&self, metrics: &ExporterMetrics) -> [String; 2] {
        let labels = [self.id(), self.target.name.clone().unwrap_or_default()];
        let mut last = self.labels.lock().expect("not poisoned");
        if let Some(old) = last.as_ref().filter(|old| **old != labels) {
            remove_health_series(metrics, old);
        }
        *last = Some(labels.clone());
        labels
    }

    fn forget_health(&self, metrics: &ExporterMetrics) {
        if let Some(old) = self.labels.lock().expect("not poisoned").take() {
            remove_health_series(metrics, &old);
        }
        let id = self.id();
        for counter in [
            &metrics.account_aws_requests_total,
            &metrics.account_aws_throttled_requests_total,
            &metrics.account_aws_denied_requests_total,
        ] {
            let _ = counter.remove_label_values(&[&id]);
        }
        for feature in Feature::ALL {
            let _ = metrics
                .account_feature_degraded
                .remove_label_values(&[&id, feature.name()]);
        }
    }
}

fn remove_health_series(metrics: &ExporterMetrics, labels: &[String; 2]) {
    let values = [labels[0].as_str(), labels[1].as_str()];
    let _ = metrics.account_refresh_success.remove_label_values(&values);
    let _ = metrics
        .account_refresh_duration_seconds
        .remove_label_values(&values);
    let _ = metrics
        .account_last_refresh_success_timestamp_seconds
        .remove_label_values(&values);
}

/// Reading the organization's account list: when it was last read and what it said.
struct Discovery {
    read_at: Option<Instant>,
    caller: Option<CallerIdentity>,
    targets: Vec<Target>,
}

pub struct Fleet {
    settings: Settings,
    /// `None` for a report file, which needs no AWS.
    base: Option<AwsBase>,
    accounts: Mutex<BTreeMap<String, Arc<Account>>>,
    discovery: tokio::sync::Mutex<Discovery>,
}

impl Fleet {
    pub async fn new(settings: &Settings, metrics: Arc<ExporterMetrics>) -> Fleet {
        let base = match settings.source.kind {
            SourceKind::CredentialReportFile => None,
            _ => Some(
                AwsBase::load(&settings.aws, metrics)
                    .await
                    .with_change_feed_region(&settings.change_feed.region),
            ),
        };
        Fleet {
            settings: settings.clone(),
            base,
            accounts: Mutex::new(BTreeMap::new()),
            discovery: tokio::sync::Mutex::new(Discovery {
                read_at: None,
                caller: None,
                targets: Vec::new(),
            }),
        }
    }

    /// True for a report file that changed since it was last read.
    pub fn file_changed(&self) -> bool {
        self.current().iter().any(|a| a.source.changed())
    }

    pub fn is_file(&self) -> bool {
        self.base.is_none()
    }

    /// The accounts as of the last `refresh_accounts`.
    pub fn current(&self) -> Vec<Arc<Account>> {
        self.accounts
            .lock()
            .expect("not poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// Brings the account set up to date (reading Organizations when due) and returns the
    /// accounts to refresh and those that left, whose data must go.
    pub async fn refresh_accounts(
        &self,
        metrics: &ExporterMetrics,
    ) -> (Vec<Arc<Account>>, Vec<Arc<Account>>) {
        let targets = self.targets(metrics).await;
        let mut accounts = self.accounts.lock().expect("not poisoned").clone();
        let mut next = BTreeMap::new();
        for target in targets {
            let account = match accounts.remove(&target.key) {
                Some(existing) if existing.target == target => existing,
                _ => Arc::new(self.build(target.clone()).await),
            };
            next.insert(target.key, account);
        }
        let removed: Vec<Arc<Account>> = accounts.into_values().collect();
        for account in &removed {
            account.forget_health(metrics);
            tracing::info!(account_id = %account.id(), "account no longer watched; its series are removed");
        }
        *self.accounts.lock().expect("not poisoned") = next.clone();
        metrics.accounts.set(next.len() as i64);
        (next.into_values().collect(), removed)
    }

    async fn build(&self, target: Target) -> Account {
        let settings = &self.settings;
        let origin = match (&self.base, &settings.source.file) {
            (Some(base), _) => Origin::aws(
                base.clients(
                    target.role.as_ref(),
                    AccountLabel::new(target.account_id.clone()),
                )
                .await,
                &settings.source,
                settings.refresh.concurrency,
                target.account_id.clone(),
                settings.change_feed.enabled.then_some(FeedPolicy {
                    overlap: settings.change_feed.overlap,
                    full_interval: settings.refresh.full_interval,
                }),
            ),
            (None, Some(path)) => Origin::file(path.clone()),
            (None, None) => unreachable!("validated: a report file source names its file"),
        };
        Account::new(
            target,
            Source::new(origin, &settings.filter, &settings.labels),
        )
    }

    /// Configured and discovered targets in this replica's shard.
    async fn targets(&self, metrics: &ExporterMetrics) -> Vec<Target> {
        let settings = &self.settings;
        let configured = match &self.base {
            Some(_) => accounts::configured(settings),
            None => vec![Target::own(None)],
        };
        let (discovered, own_id) = match (&self.base, settings.organizations.enabled) {
            (Some(base), true) => self.discover(base, metrics).await,
            _ => (Vec::new(), None),
        };
        let all = accounts::merge(configured, discovered, own_id.as_deref());
        accounts::in_shard(all, &settings.shard)
    }

    /// The organization's accounts, read again when `organizations.interval` has passed.
    /// A failure keeps the accounts of the last good read and shows in
    /// `iam_key_exporter_discovery_success`.
    async fn discover(
        &self,
        base: &AwsBase,
        metrics: &ExporterMetrics,
    ) -> (Vec<Target>, Option<String>) {
        let settings = &self.settings.organizations;
        let mut discovery = self.discovery.lock().await;
        let due = discovery
            .read_at
            .is_none_or(|at| at.elapsed() >= settings.interval);
        if due {
            match read_organization(base, metrics, discovery.caller.clone()).await {
                Ok((caller, listed)) => {
                    discovery.targets = accounts::discovered(&listed, settings, &caller);
                    discovery.caller = Some(caller);
                    discovery.read_at = Some(Instant::now());
                    metrics.discovery_success.set(1);
                    metrics
                        .discovery_last_success_timestamp_seconds
                        .set(unix_seconds(SystemTime::now()));
                    tracing::info!(
                        listed = listed.len(),
                        watched = discovery.targets.len(),
                        "read the organization's accounts"
                    );
                }
                Err(err) => {
                    metrics.discovery_success.set(0);
                    tracing::warn!(error = %err, kept = discovery.targets.len(), "cannot list the organization's accounts; keeping the last list");
                }
            }
        }
        let own = discovery.caller.as_ref().map(|c| c.account_id.clone());
        (discovery.targets.clone(), own)
    }
}

async fn read_organization(
    base: &AwsBase,
    metrics: &ExporterMetrics,
    caller: Option<CallerIdentity>,
) -> Result<(CallerIdentity, Vec<iam::OrganizationAccount>), IamError> {
    let caller = match caller {
        Some(caller) => caller,
        None => {
            let own = base.clients(None, AccountLabel::default()).await;
            iam::caller_identity(&own.sts, metrics).await?
        }
    };
    let listed = iam::list_organization_accounts(&base.organizations(), metrics).await?;
    Ok((caller, listed))
}
