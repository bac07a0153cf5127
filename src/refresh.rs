//! The background refreshers and the state they publish. The key inventory and the
//! service counts refresh on their own intervals; either one publishes a new snapshot,
//! built completely and then swapped in, so a scrape sees one whole inventory or the
//! previous one. `/metrics` and `/-/ready` read the same published value, so an exporter
//! that says it is ready serves the data that made it ready.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use tokio::sync::{Mutex, Notify, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::{ServiceAccessSettings, Settings};
use crate::exposition::{Exposition, GzipPrefix};
use crate::features::Feature;
use crate::fleet::{Account, Fleet};
use crate::iam::{self, Clients, IamError, JobPolicy};
use crate::inventory::{
    AccountData, Inventory, ServiceCounts, TagLabels, tag_labels, unix_seconds,
};
use crate::metrics::ExporterMetrics;
use crate::snapshot::Snapshot;

/// How the last inventory refresh ended, for the landing page.
#[derive(Debug, Clone)]
pub struct RefreshStatus {
    pub finished_at: SystemTime,
    pub duration: Duration,
    pub error: Option<String>,
}

#[derive(Default)]
struct Collected {
    /// By account key, so the exposition lists accounts in a stable order.
    accounts: BTreeMap<String, AccountData>,
    /// Bumped at every change, so a render can tell whether it is already out of date.
    version: u64,
}

/// The one value the HTTP server reads, swapped whole: the snapshot (absent before the
/// first data) and the bytes `/metrics` serves, assembled from it.
pub struct Published {
    pub snapshot: Option<Arc<Snapshot>>,
    /// The snapshot followed by the exporter's own metrics.
    pub exposition: Exposition,
}

impl Published {
    /// Ready once a first refresh has produced data to serve.
    pub fn is_ready(&self) -> bool {
        self.snapshot.is_some()
    }
}

/// What the refreshers publish and the HTTP server reads.
pub struct Shared {
    pub metrics: Arc<ExporterMetrics>,
    published: ArcSwap<Published>,
    /// Held while a `Published` is assembled, so an older one never replaces a newer one.
    assembling: std::sync::Mutex<()>,
    last_refresh: ArcSwapOption<RefreshStatus>,
    collected: Mutex<Collected>,
    /// Held while a snapshot is rendered and swapped in, so two publishers can never swap
    /// in their snapshots out of order.
    rendering: Mutex<()>,
    /// The `Collected::version` the current snapshot was rendered from.
    rendered_version: AtomicU64,
    /// Bumped at every new inventory; the slow loops wait for the first.
    inventory_generation: watch::Sender<u64>,
    /// Bumped when an inventory refresh finishes, whether it succeeded or not.
    refreshes_finished: watch::Sender<u64>,
    /// Signalled when service counts or tags arrive, for `run_publisher`.
    changed: Notify,
}

impl Shared {
    pub fn new(metrics: Arc<ExporterMetrics>) -> Shared {
        let shared = Shared {
            published: ArcSwap::from_pointee(Published {
                snapshot: None,
                exposition: Exposition::default(),
            }),
            assembling: std::sync::Mutex::new(()),
            metrics,
            last_refresh: ArcSwapOption::empty(),
            collected: Mutex::new(Collected::default()),
            rendering: Mutex::new(()),
            rendered_version: AtomicU64::new(0),
            inventory_generation: watch::channel(0).0,
            refreshes_finished: watch::channel(0).0,
            changed: Notify::new(),
        };
        // Before the first refresh, /metrics serves the exporter's own metrics.
        shared.refresh_exposition();
        shared
    }

    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.published.load().snapshot.clone()
    }

    /// What `/metrics` and `/-/ready` read: one value, assembled ahead of scrapes.
    pub fn published(&self) -> Arc<Published> {
        self.published.load_full()
    }

    /// Assembles the exposition anew from the current snapshot and the exporter's own
    /// metrics. Called after every refresh and on a short timer, so the scrape path never
    /// formats anything.
    pub fn refresh_exposition(&self) {
        let _one_at_a_time = self.assembling.lock().expect("not poisoned");
        let snapshot = self.snapshot();
        self.store(snapshot);
    }

    /// Publishes `snapshot` with the exporter's own metrics as they are now. Callers hold
    /// `assembling`.
    fn store(&self, snapshot: Option<Arc<Snapshot>>) {
        let own = self.metrics.render();
        let exposition = match &snapshot {
            Some(s) => Exposition::assemble(&s.exposition, &s.gzip_prefix, own),
            None => Exposition::assemble(&Bytes::new(), &GzipPrefix::new(&[]), own),
        };
        self.published.store(Arc::new(Published {
            snapshot,
            exposition,
        }));
    }

    pub fn last_refresh(&self) -> Option<Arc<RefreshStatus>> {
        self.last_refresh.load_full()
    }

    /// Ready once a first refresh has produced data to serve.
    pub fn is_ready(&self) -> bool {
        self.published.load().is_ready()
    }

    /// Replaces one account's inventory and publishes it. Service counts and tags of users
    /// that are gone are dropped with them.
    pub async fn publish_inventory(
        &self,
        account: &str,
        name: Option<String>,
        inventory: Inventory,
    ) {
        self.change(|collected| {
            let data = collected.accounts.entry(account.to_string()).or_default();
            let arns: HashSet<&str> = inventory.users.iter().map(|u| u.arn.as_str()).collect();
            data.service_counts
                .retain(|arn, _| arns.contains(arn.as_str()));
            data.tags.retain(|arn, _| arns.contains(arn.as_str()));
            data.name = name;
            data.inventory = Some(Arc::new(inventory));
        })
        .await;
        self.render_and_swap().await;
        self.inventory_generation.send_modify(|g| *g += 1);
    }

    /// Drops an account that is no longer watched; its series vanish with the next snapshot.
    pub async fn remove_account(&self, account: &str) {
        self.change(|collected| {
            collected.accounts.remove(account);
        })
        .await;
        self.render_and_swap().await;
    }

    /// Stores one user's service counts; `run_publisher` publishes them within seconds.
    pub async fn set_service_counts(&self, account: &str, arn: String, counts: ServiceCounts) {
        self.change(|collected| {
            if let Some(data) = collected.accounts.get_mut(account) {
                data.service_counts.insert(arn, counts);
            }
        })
        .await;
        self.changed.notify_one();
    }

    /// Makes room for an account's slow data before its first inventory is published.
    pub async fn ensure_account(&self, account: &str) {
        let mut collected = self.collected.lock().await;
        collected.accounts.entry(account.to_string()).or_default();
    }

    /// Stores one user's tag labels; `run_publisher` publishes them within seconds.
    pub async fn set_tags(&self, account: &str, arn: String, tags: TagLabels) {
        self.change(|collected| {
            if let Some(data) = collected.accounts.get_mut(account) {
                data.tags.insert(arn, tags);
            }
        })
        .await;
        self.changed.notify_one();
    }

    /// Publishes the current inventories with the latest service counts and tags.
    pub async fn republish(&self) {
        self.render_and_swap().await;
    }

    /// The account's users as (name, ARN), in inventory order.
    pub async fn users(&self, account: &str) -> Vec<(String, String)> {
        self.users_where(account, |_| true).await
    }

    /// The account's users that hold at least one access key, as (name, ARN).
    pub async fn users_with_keys(&self, account: &str) -> Vec<(String, String)> {
        self.users_where(account, |user| !user.keys.is_empty())
            .await
    }

    async fn users_where(
        &self,
        account: &str,
        wanted: impl Fn(&crate::inventory::User) -> bool,
    ) -> Vec<(String, String)> {
        let collected = self.collected.lock().await;
        let inventory = collected
            .accounts
            .get(account)
            .and_then(|data| data.inventory.clone());
        inventory.map_or_else(Vec::new, |inv| {
            inv.users
                .iter()
                .filter(|user| wanted(user))
                .map(|u| (u.name.clone(), u.arn.clone()))
                .collect()
        })
    }

    /// ARNs of the account's users whose tags have been read.
    pub async fn tagged_users(&self, account: &str) -> HashSet<String> {
        let collected = self.collected.lock().await;
        collected
            .accounts
            .get(account)
            .map(|data| data.tags.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Resolves once a first inventory refresh has finished, successful or not.
    pub async fn first_refresh_finished(&self) {
        let mut finished = self.refreshes_finished.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = finished.wait_for(|n| *n > 0).await;
    }

    /// Resolves once a first inventory has been published.
    pub async fn first_inventory(&self) {
        let mut generation = self.inventory_generation.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = generation.wait_for(|g| *g > 0).await;
    }

    async fn change(&self, edit: impl FnOnce(&mut Collected)) {
        let mut collected = self.collected.lock().await;
        edit(&mut collected);
        collected.version += 1;
    }

    /// Renders every account's data and swaps the snapshot in. Publishers that finish
    /// while a render runs wait for it; the first of them renders once for all of them,
    /// and the others find their data already published, so a thousand accounts finishing
    /// together cost a few renders, not a thousand.
    async fn render_and_swap(&self) {
        let wanted = self.collected.lock().await.version;
        let _one_at_a_time = self.rendering.lock().await;
        if self.rendered_version.load(Ordering::Acquire) >= wanted && self.is_ready() {
            return;
        }
        let (accounts, version) = {
            let collected = self.collected.lock().await;
            (collected.accounts.clone(), collected.version)
        };
        // Rendering tens of thousands of series is CPU work: keep it off the threads
        // that answer scrapes.
        let snapshot = match tokio::task::spawn_blocking(move || Snapshot::build(&accounts)).await {
            Ok(snapshot) => snapshot,
            Err(err) => {
                tracing::error!(error = %err, "rendering a snapshot failed; the previous one stays");
                return;
            }
        };
        self.metrics.snapshot_users.set(snapshot.users as i64);
        self.metrics.snapshot_access_keys.set(snapshot.keys as i64);
        // A repeat reaching the snapshot is served once; say so when the number changes,
        // not at every render.
        let dropped = snapshot.duplicates_dropped as i64;
        if dropped != self.metrics.snapshot_duplicates_dropped.get() {
            if dropped > 0 {
                tracing::warn!(
                    duplicates = dropped,
                    "the sources listed some accounts, users or keys twice; each is served once"
                );
            }
            self.metrics.snapshot_duplicates_dropped.set(dropped);
        }
        {
            let _one_at_a_time = self.assembling.lock().expect("not poisoned");
            self.store(Some(Arc::new(snapshot)));
        }
        self.rendered_version.store(version, Ordering::Release);
    }
}

/// How long `run_publisher` waits after a render before the next: service counts arriving
/// one user at a time are published together, at a small share of one core.
const PUBLISH_GAP: Duration = Duration::from_secs(5);

/// Publishes service counts and tags as they arrive: at once after a quiet spell, then at
/// most once per `PUBLISH_GAP`, so the first counts of a pass show within a second of
/// their job and a pass of thousands of jobs costs a render every few seconds.
pub async fn run_publisher(shared: Arc<Shared>) {
    loop {
        shared.changed.notified().await;
        shared.render_and_swap().await;
        tokio::time::sleep(PUBLISH_GAP).await;
    }
}

/// Runs `step` at once and then every `interval`. A step is awaited before the next tick
/// is taken, so steps never overlap; one that overruns delays the schedule instead of
/// causing a burst of catch-up steps.
pub async fn every<F, Fut>(interval: Duration, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        step().await;
    }
}

/// How often a report file is checked for changes.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Users whose tags are read at once.
const TAG_CONCURRENCY: usize = 4;

/// Refreshes every account's key inventory forever: every `refresh.interval`, and for a
/// report file also as soon as the file changes.
pub async fn run_key_refresh(fleet: Arc<Fleet>, settings: Settings, shared: Arc<Shared>) {
    let interval = settings.refresh.interval;
    let tick = if fleet.is_file() {
        interval.min(FILE_CHECK_INTERVAL)
    } else {
        interval
    };
    let mut last: Option<Instant> = None;
    every(tick, || {
        let due = last.is_none_or(|at| at.elapsed() >= interval) || fleet.file_changed();
        if due {
            last = Some(Instant::now());
        }
        let (fleet, settings, shared) = (&fleet, &settings, &shared);
        async move {
            if due {
                refresh_keys_once(fleet, settings, shared).await;
            }
        }
    })
    .await
}

/// One refresh of every account, at most `refresh.max_concurrent_accounts` at once. Each
/// account publishes as soon as it is done; one that fails keeps its previous data and
/// never holds back the others. Returns whether every account succeeded.
pub async fn refresh_keys_once(fleet: &Fleet, settings: &Settings, shared: &Shared) -> bool {
    let metrics = &shared.metrics;
    let started = Instant::now();
    let (accounts, removed) = fleet.refresh_accounts(metrics).await;
    for account in removed {
        shared.remove_account(&account.target.key).await;
    }
    let errors: Vec<(String, String)> = stream::iter(accounts.clone())
        .map(|account| async move { refresh_account(&account, settings, shared).await })
        .buffer_unordered(settings.refresh.max_concurrent_accounts)
        .filter_map(|outcome| std::future::ready(outcome.err()))
        .collect()
        .await;
    if shared.snapshot().is_none() && errors.is_empty() {
        // No account at all (an empty shard or organization) is still an answer to serve.
        shared.republish().await;
    }

    let duration = started.elapsed();
    metrics.refresh_duration_seconds.set(duration.as_secs_f64());
    metrics.refresh_success.set(i64::from(errors.is_empty()));
    // The stalest account's data: what an alert on data age must see.
    let oldest_success = accounts
        .iter()
        .map(|a| *a.last_success.lock().expect("not poisoned"))
        .try_fold(None::<SystemTime>, |oldest, success| {
            success.map(|at| Some(oldest.map_or(at, |o| o.min(at))))
        });
    metrics
        .last_refresh_success_timestamp_seconds
        .set(match oldest_success {
            Some(Some(at)) => unix_seconds(at),
            Some(None) => unix_seconds(SystemTime::now()),
            None => 0.0,
        });
    let error = match (errors.as_slice(), accounts.len()) {
        ([], _) => None,
        ([(_, only)], 1) => Some(only.clone()),
        (failed, total) => {
            let each: Vec<String> = failed.iter().map(|(id, e)| format!("{id}: {e}")).collect();
            Some(format!(
                "{} of {total} accounts failed: {}",
                failed.len(),
                each.join("; ")
            ))
        }
    };
    shared.last_refresh.store(Some(Arc::new(RefreshStatus {
        finished_at: SystemTime::now(),
        duration,
        error,
    })));
    shared.refresh_exposition();
    shared.refreshes_finished.send_modify(|n| *n += 1);
    errors.is_empty()
}

/// One account's refresh, published if it succeeds; its health is recorded either way.
async fn refresh_account(
    account: &Account,
    settings: &Settings,
    shared: &Shared,
) -> Result<(), (String, String)> {
    let metrics = &shared.metrics;
    let started = Instant::now();
    let work = async {
        // Service-access jobs wait while this is held; see `account_service_access`.
        let _keys_first = account.refreshing_keys.write().await;
        let inventory = account.source.collect(metrics).await?;
        read_new_users_tags(account, &inventory, settings, shared).await;
        Ok::<_, crate::source::SourceError>(inventory)
    };
    let outcome = match tokio::time::timeout(settings.refresh.timeout, work).await {
        Ok(Ok(inventory)) => Ok(inventory),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!(
            "refresh did not finish within {}",
            humantime::format_duration(settings.refresh.timeout)
        )),
    };
    let duration = started.elapsed();
    let labels = account.health_labels(metrics);
    let labels = [labels[0].as_str(), labels[1].as_str()];
    metrics
        .account_refresh_duration_seconds
        .with_label_values(&labels)
        .set(duration.as_secs_f64());
    // Taking the series creates it at 0: an account that never succeeded shows up in
    // `time() - ...` alerts from its first failure on.
    let last_success = metrics
        .account_last_refresh_success_timestamp_seconds
        .with_label_values(&labels);
    match outcome {
        Ok(inventory) => {
            tracing::info!(
                account_id = labels[0],
                users = inventory.users.len(),
                keys = inventory.key_count(),
                duration_ms = duration.as_millis() as u64,
                "inventory refreshed"
            );
            let key = &account.target.key;
            shared
                .publish_inventory(key, account.target.name.clone(), inventory)
                .await;
            let now = SystemTime::now();
            *account.last_success.lock().expect("not poisoned") = Some(now);
            metrics
                .account_refresh_success
                .with_label_values(&labels)
                .set(1);
            last_success.set(unix_seconds(now));
            Ok(())
        }
        Err(error) => {
            tracing::warn!(account_id = labels[0], %error, "inventory refresh failed; serving the account's previous data");
            metrics
                .account_refresh_success
                .with_label_values(&labels)
                .set(0);
            metrics.refresh_failures_total.inc();
            Err((labels[0].to_string(), error))
        }
    }
}

/// Reads the tags of users whose tags are not known yet, so a new user's series carry
/// their tag labels from their first snapshot on (series that gained labels later would
/// be new series to Prometheus). Everyone's tags are read again by `run_tag_refresh`.
async fn read_new_users_tags(
    account: &Account,
    inventory: &Inventory,
    settings: &Settings,
    shared: &Shared,
) {
    let Some(clients) = account.clients() else {
        return;
    };
    if settings.tags.keys.is_empty() || account.source.degraded.is_off(Feature::Tags) {
        return;
    }
    let key = &account.target.key;
    let known = shared.tagged_users(key).await;
    let users: Vec<(String, String)> = inventory
        .users
        .iter()
        .filter(|u| !known.contains(&u.arn))
        .map(|u| (u.name.clone(), u.arn.clone()))
        .collect();
    if users.is_empty() {
        return;
    }
    // An account not yet published has no entry to hold tags: make one, so the tags read
    // now go out with the account's first inventory, in one snapshot.
    shared.ensure_account(key).await;
    read_tags(account, clients, users, settings, shared).await;
}

/// Reads the tags of `users` and stores them for the next snapshot. A denied
/// ListUserTags turns the tags feature off for the account (logged once); other failures
/// keep each user's previous tags and are logged once per pass.
async fn read_tags(
    account: &Account,
    clients: &Clients,
    users: Vec<(String, String)>,
    settings: &Settings,
    shared: &Shared,
) {
    let metrics = &shared.metrics;
    let account_id = account.id();
    let key = &account.target.key;
    let results: Vec<Result<(), IamError>> = stream::iter(users)
        .map(|(name, arn)| async move {
            let tags = iam::user_tags(&clients.iam, metrics, &name).await?;
            let labels = tag_labels(&settings.tags.keys, &tags);
            shared.set_tags(key, arn, labels).await;
            Ok(())
        })
        .buffer_unordered(TAG_CONCURRENCY)
        .collect()
        .await;
    let degraded = &account.source.degraded;
    let mut other_error = None;
    let mut denied = None;
    let mut succeeded = false;
    for result in results {
        match result {
            Ok(()) => succeeded = true,
            Err(err) if err.is_access_denied() => denied = Some(err),
            Err(err) => other_error = Some(err),
        }
    }
    degraded.observe_pass(
        metrics,
        &account_id,
        Feature::Tags,
        denied.as_ref(),
        succeeded,
    );
    if let Some(err) = other_error {
        tracing::warn!(account_id, error = %err, "some users' tags could not be read; their previous tags stay");
    }
}

/// Reads every user's tags again, forever, every `tags.interval`.
pub async fn run_tag_refresh(fleet: Arc<Fleet>, settings: Settings, shared: Arc<Shared>) {
    shared.first_inventory().await;
    every(settings.tags.interval, || {
        refresh_tags_once(&fleet, &settings, &shared)
    })
    .await
}

/// One pass over every account's users' tags, then a new snapshot.
pub async fn refresh_tags_once(fleet: &Fleet, settings: &Settings, shared: &Shared) {
    stream::iter(fleet.current())
        .map(|account| async move {
            if let Some(clients) = account.clients() {
                let users = shared.users(&account.target.key).await;
                read_tags(&account, clients, users, settings, shared).await;
            }
        })
        .buffer_unordered(settings.refresh.max_concurrent_accounts)
        .collect::<Vec<()>>()
        .await;
    shared.republish().await;
    shared.refresh_exposition();
}

/// Refreshes every user's service counts forever, starting after the first inventory.
pub async fn run_service_access_refresh(
    fleet: Arc<Fleet>,
    settings: Settings,
    shared: Arc<Shared>,
) {
    shared.first_inventory().await;
    every(settings.service_access.interval, || {
        refresh_service_access_once(&fleet, &settings, &shared)
    })
    .await
}

/// One pass over every account's users' service-last-accessed jobs, then a new snapshot.
pub async fn refresh_service_access_once(fleet: &Fleet, settings: &Settings, shared: &Shared) {
    let metrics = &shared.metrics;
    let started = Instant::now();
    stream::iter(fleet.current())
        .map(|account| async move {
            if let Some(clients) = account.clients() {
                account_service_access(&account, clients, &settings.service_access, shared).await;
            }
        })
        .buffer_unordered(settings.refresh.max_concurrent_accounts)
        .collect::<Vec<()>>()
        .await;
    shared.republish().await;
    metrics
        .service_access_duration_seconds
        .set(started.elapsed().as_secs_f64());
    metrics
        .service_access_last_run_timestamp_seconds
        .set(unix_seconds(SystemTime::now()));
    shared.refresh_exposition();
}

/// One user's service-last-accessed job, counted by result and stored for the publisher.
async fn one_job(
    account: &Account,
    clients: &Clients,
    policy: JobPolicy,
    shared: &Shared,
    arn: String,
) -> Result<(), IamError> {
    let metrics = &shared.metrics;
    // A job waits while the account's keys refresh: the keys come first in the account's
    // request rate, and the jobs already running only finish.
    drop(account.refreshing_keys.read().await);
    let result = iam::service_counts(&clients.iam, metrics, &arn, policy).await;
    let label = match &result {
        Ok(_) => "completed",
        Err(IamError::JobFailed { .. }) => "failed",
        Err(IamError::JobTimedOut { .. }) => "timeout",
        Err(_) => "error",
    };
    metrics
        .service_access_jobs_total
        .with_label_values(&[label])
        .inc();
    shared
        .set_service_counts(&account.target.key, arn, result?)
        .await;
    Ok(())
}

async fn account_service_access(
    account: &Account,
    clients: &Clients,
    settings: &ServiceAccessSettings,
    shared: &Shared,
) {
    let metrics = &shared.metrics;
    let policy = JobPolicy {
        poll_interval: settings.poll_interval,
        poll_interval_max: settings.poll_interval_max,
        timeout: settings.job_timeout,
    };
    let key = &account.target.key;
    // The counts belong to the key's user: users without a key have no series to carry
    // them, unless `all_users` asks for every user's.
    let users = if settings.all_users {
        shared.users(key).await
    } else {
        shared.users_with_keys(key).await
    };
    let count = users.len();
    let mut users = users.into_iter();
    // While IAM denies the jobs in this account, one job asks whether it still does,
    // instead of one denied call per user every pass.
    let mut results = Vec::new();
    if account.source.degraded.is_off(Feature::ServiceAccess)
        && let Some((_, arn)) = users.next()
    {
        let probe = one_job(account, clients, policy, shared, arn).await;
        let denied = probe.as_ref().is_err_and(IamError::is_access_denied);
        results.push(probe);
        if denied {
            users = Vec::new().into_iter();
        }
    }
    results.extend(
        stream::iter(users)
            .map(|(_, arn)| one_job(account, clients, policy, shared, arn))
            .buffer_unordered(settings.max_concurrent_jobs)
            .collect::<Vec<_>>()
            .await,
    );

    let account_id = account.id();
    let degraded = &account.source.degraded;
    let mut first_error = None;
    let mut denied = None;
    let mut completed = false;
    for result in results {
        match result {
            Ok(()) => completed = true,
            Err(err) if err.is_access_denied() => denied = Some(err),
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    degraded.observe_pass(
        metrics,
        &account_id,
        Feature::ServiceAccess,
        denied.as_ref(),
        completed,
    );
    // One line per pass, not one per user: a missing permission would otherwise log
    // thousands of identical lines.
    if let Some(err) = first_error {
        tracing::warn!(account_id, users = count, error = %err, "some service-last-accessed jobs did not complete; their previous counts stay");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{AccessKey, KeyStatus, User};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn inventory(users: &[&str]) -> Inventory {
        inventory_of(A, users)
    }

    fn inventory_of(account: &str, users: &[&str]) -> Inventory {
        Inventory {
            account_id: account.into(),
            collected_at: SystemTime::now(),
            users: users
                .iter()
                .map(|name| User {
                    name: name.to_string(),
                    arn: format!("arn:aws:iam::{account}:user/{name}"),
                    keys: vec![AccessKey {
                        id: format!("AKIA{}", name.to_uppercase()),
                        status: KeyStatus::Active,
                        created: SystemTime::now(),
                        last_used: None,
                    }],
                    login: None,
                })
                .collect(),
            account: Default::default(),
        }
    }

    const A: &str = "123456789012";

    fn exposition(shared: &Shared) -> String {
        String::from_utf8(shared.snapshot().unwrap().exposition.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn service_counts_join_the_inventory_and_leave_with_their_user() {
        let shared = Shared::new(Arc::new(ExporterMetrics::new()));
        assert!(!shared.is_ready());
        shared
            .publish_inventory(A, None, inventory(&["alice", "bob"]))
            .await;
        assert!(shared.is_ready());
        assert_eq!(shared.metrics.snapshot_users.get(), 2);
        assert!(!exposition(&shared).contains("aws_iam_user_services_granted"));

        let counts = ServiceCounts {
            accessed: 1,
            granted: 4,
        };
        for (_, arn) in shared.users(A).await {
            shared.set_service_counts(A, arn, counts).await;
        }
        // Stored counts are published by the next snapshot, not before.
        assert!(!exposition(&shared).contains("aws_iam_user_services_granted"));
        shared.republish().await;
        let text = exposition(&shared);
        assert!(
            text.contains(
                "aws_iam_user_services_granted{account_id=\"123456789012\",user=\"bob\"} 4"
            )
        );

        // bob is deleted: his keys and counts go with him, and do not come back later.
        shared
            .publish_inventory(A, None, inventory(&["alice"]))
            .await;
        shared.republish().await;
        let text = exposition(&shared);
        assert!(!text.contains("user=\"bob\""), "{text}");
        assert!(text.contains(
            "aws_iam_user_services_granted{account_id=\"123456789012\",user=\"alice\"} 4"
        ));
        assert_eq!(shared.metrics.snapshot_access_keys.get(), 1);
    }

    fn served(shared: &Shared) -> String {
        let published = shared.published();
        let [head, tail] = &published.exposition.plain;
        String::from_utf8([&head[..], &tail[..]].concat()).unwrap()
    }

    #[tokio::test]
    async fn ready_and_metrics_read_one_value_so_ready_means_the_data_is_served() {
        let shared = Shared::new(Arc::new(ExporterMetrics::new()));
        let before = shared.published();
        assert!(!before.is_ready());
        assert!(!served(&shared).contains("aws_iam_access_key_active"));

        shared
            .publish_inventory(A, None, inventory(&["alice"]))
            .await;
        // No refresh_exposition in between: the value that says ready holds the data.
        let published = shared.published();
        assert!(published.is_ready());
        let [head, _] = &published.exposition.plain;
        let text = String::from_utf8(head.to_vec()).unwrap();
        assert!(text.contains("aws_iam_access_key_active{"), "{text}");
        // The snapshot's own counts are in the same value's tail.
        assert!(served(&shared).contains("iam_key_exporter_snapshot_access_keys 1\n"));
    }

    #[tokio::test]
    async fn the_publisher_serves_service_counts_as_they_arrive() {
        let shared = Arc::new(Shared::new(Arc::new(ExporterMetrics::new())));
        let publisher = tokio::spawn(run_publisher(shared.clone()));
        shared
            .publish_inventory(A, None, inventory(&["alice", "bob"]))
            .await;
        let counts = ServiceCounts {
            accessed: 2,
            granted: 7,
        };
        let alice = format!("arn:aws:iam::{A}:user/alice");
        shared.set_service_counts(A, alice, counts).await;
        // No republish by the caller: the publisher renders the first counts at once.
        let expected =
            "aws_iam_user_services_granted{account_id=\"123456789012\",user=\"alice\"} 7";
        for _ in 0..200 {
            if served(&shared).contains(expected) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(served(&shared).contains(expected), "{}", served(&shared));
        publisher.abort();
    }

    #[tokio::test]
    async fn accounts_publish_and_leave_without_touching_each_other() {
        let shared = Shared::new(Arc::new(ExporterMetrics::new()));
        let (one, two) = ("111111111111", "222222222222");
        shared
            .publish_inventory(one, Some("payments".into()), inventory_of(one, &["alice"]))
            .await;
        shared
            .publish_inventory(two, None, inventory_of(two, &["bob"]))
            .await;
        let text = exposition(&shared);
        assert!(text.contains("account_id=\"111111111111\",user=\"alice\""));
        assert!(text.contains("account_id=\"222222222222\",user=\"bob\""));
        assert!(text.contains(
            "aws_iam_account_info{account_id=\"111111111111\",account_name=\"payments\"} 1"
        ));
        assert_eq!(shared.snapshot().unwrap().accounts, 2);

        // A new inventory of one account replaces that account's data only.
        shared
            .publish_inventory(two, None, inventory_of(two, &["carol"]))
            .await;
        let text = exposition(&shared);
        assert!(text.contains("user=\"alice\""));
        assert!(!text.contains("user=\"bob\""));

        shared.remove_account(one).await;
        let text = exposition(&shared);
        assert!(!text.contains("111111111111"), "{text}");
        assert!(text.contains("user=\"carol\""));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accounts_publishing_at_once_are_all_in_the_final_snapshot() {
        let shared = Arc::new(Shared::new(Arc::new(ExporterMetrics::new())));
        let accounts: Vec<String> = (0..64)
            .map(|i| format!("{:012}", 100_000_000_000u64 + i))
            .collect();
        let tasks: Vec<_> = accounts
            .iter()
            .map(|account| {
                let (shared, account) = (shared.clone(), account.clone());
                tokio::spawn(async move {
                    let inventory = inventory_of(&account, &["user"]);
                    shared.publish_inventory(&account, None, inventory).await;
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        // Renders coalesce, but none loses an account that had published before it.
        let snapshot = shared.snapshot().unwrap();
        assert_eq!(snapshot.accounts, 64);
        assert_eq!(snapshot.keys, 64);
    }

    #[tokio::test(start_paused = true)]
    async fn every_runs_at_once_then_on_each_interval() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = runs.clone();
        let task = tokio::spawn(every(Duration::from_secs(300), move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "first run at start");
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2, "t=301s");
        tokio::time::sleep(Duration::from_secs(900)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            5,
            "t=1201s: ticks at 0, 300, 600, 900, 1200"
        );
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_step_delays_the_next_and_never_overlaps() {
        let running = Arc::new(AtomicUsize::new(0));
        let runs = Arc::new(AtomicUsize::new(0));
        let (r, n) = (running.clone(), runs.clone());
        let task = tokio::spawn(every(Duration::from_secs(60), move || {
            let (r, n) = (r.clone(), n.clone());
            async move {
                assert_eq!(r.fetch_add(1, Ordering::SeqCst), 0, "steps overlapped");
                n.fetch_add(1, Ordering::SeqCst);
                // Three intervals long: a burst of catch-up steps must not follow.
                tokio::time::sleep(Duration::from_secs(180)).await;
                r.fetch_sub(1, Ordering::SeqCst);
            }
        }));
        tokio::time::sleep(Duration::from_secs(179)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "next step right after the slow one"
        );
        tokio::time::sleep(Duration::from_secs(180)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "then one step per 180s, no burst"
        );
        task.abort();
    }
}
