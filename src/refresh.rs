//! The background refreshers and the state they publish. The key inventory and the
//! service counts refresh on their own intervals; either one publishes a new snapshot,
//! built completely and then swapped in, so a scrape sees one whole inventory or the
//! previous one.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use tokio::sync::{Mutex, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::{RefreshSettings, ServiceAccessSettings};
use crate::exposition::{Exposition, GzipPrefix};
use crate::iam::{self, Clients, IamError, JobPolicy};
use crate::inventory::{Inventory, ServiceCounts, ServiceCountsByArn, unix_seconds};
use crate::metrics::ExporterMetrics;
use crate::snapshot::Snapshot;
use crate::source::{Origin, Source};

/// How the last inventory refresh ended, for the landing page.
#[derive(Debug, Clone)]
pub struct RefreshStatus {
    pub finished_at: SystemTime,
    pub duration: Duration,
    pub error: Option<String>,
}

#[derive(Default)]
struct Collected {
    inventory: Option<Arc<Inventory>>,
    service_counts: ServiceCountsByArn,
}

/// What the refreshers publish and the HTTP server reads.
pub struct Shared {
    pub metrics: Arc<ExporterMetrics>,
    snapshot: ArcSwapOption<Snapshot>,
    /// The bytes `/metrics` serves: the snapshot followed by the exporter's own metrics.
    exposition: ArcSwap<Exposition>,
    /// Held while an exposition is assembled, so an older one never replaces a newer one.
    assembling: std::sync::Mutex<()>,
    last_refresh: ArcSwapOption<RefreshStatus>,
    /// Held while a snapshot is rendered and swapped in, so two publishers can never
    /// swap in their snapshots out of order.
    collected: Mutex<Collected>,
    /// Bumped at every new inventory; the service-access loop waits for the first.
    inventory_generation: watch::Sender<u64>,
    /// Bumped when an inventory refresh finishes, whether it succeeded or not.
    refreshes_finished: watch::Sender<u64>,
}

impl Shared {
    pub fn new(metrics: Arc<ExporterMetrics>) -> Shared {
        let shared = Shared {
            exposition: ArcSwap::from_pointee(Exposition::default()),
            assembling: std::sync::Mutex::new(()),
            metrics,
            snapshot: ArcSwapOption::empty(),
            last_refresh: ArcSwapOption::empty(),
            collected: Mutex::new(Collected::default()),
            inventory_generation: watch::channel(0).0,
            refreshes_finished: watch::channel(0).0,
        };
        // Before the first refresh, /metrics serves the exporter's own metrics.
        shared.refresh_exposition();
        shared
    }

    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.load_full()
    }

    /// What `/metrics` serves now; assembled ahead of scrapes by `refresh_exposition`.
    pub fn exposition(&self) -> Arc<Exposition> {
        self.exposition.load_full()
    }

    /// Assembles the exposition anew from the current snapshot and the exporter's own
    /// metrics. Called after every refresh and on a short timer, so the scrape path never
    /// formats anything.
    pub fn refresh_exposition(&self) {
        let _one_at_a_time = self.assembling.lock().expect("not poisoned");
        let own = self.metrics.render();
        let exposition = match self.snapshot() {
            Some(s) => Exposition::assemble(&s.exposition, &s.gzip_prefix, own),
            None => Exposition::assemble(&Bytes::new(), &GzipPrefix::new(&[]), own),
        };
        self.exposition.store(Arc::new(exposition));
    }

    pub fn last_refresh(&self) -> Option<Arc<RefreshStatus>> {
        self.last_refresh.load_full()
    }

    /// Ready once a first refresh has produced data to serve.
    pub fn is_ready(&self) -> bool {
        self.snapshot.load().is_some()
    }

    /// Replaces the inventory and publishes it. Service counts of users that are gone are
    /// dropped with them.
    pub async fn publish_inventory(&self, inventory: Inventory) {
        let mut collected = self.collected.lock().await;
        let arns: std::collections::HashSet<&str> =
            inventory.users.iter().map(|u| u.arn.as_str()).collect();
        collected
            .service_counts
            .retain(|arn, _| arns.contains(arn.as_str()));
        collected.inventory = Some(Arc::new(inventory));
        self.render_and_swap(&collected).await;
        self.inventory_generation.send_modify(|g| *g += 1);
    }

    /// Stores one user's service counts; they are published with the next snapshot.
    pub async fn set_service_counts(&self, arn: String, counts: ServiceCounts) {
        self.collected
            .lock()
            .await
            .service_counts
            .insert(arn, counts);
    }

    /// Publishes the current inventory with the latest service counts.
    pub async fn republish(&self) {
        let collected = self.collected.lock().await;
        self.render_and_swap(&collected).await;
    }

    pub async fn user_arns(&self) -> Vec<String> {
        let collected = self.collected.lock().await;
        collected.inventory.as_ref().map_or_else(Vec::new, |inv| {
            inv.users.iter().map(|u| u.arn.clone()).collect()
        })
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

    async fn render_and_swap(&self, collected: &Collected) {
        let Some(inventory) = collected.inventory.clone() else {
            return;
        };
        let counts = collected.service_counts.clone();
        // Rendering tens of thousands of series is CPU work: keep it off the threads
        // that answer scrapes.
        let snapshot = match tokio::task::spawn_blocking(move || {
            Snapshot::build(&inventory, &counts)
        })
        .await
        {
            Ok(snapshot) => snapshot,
            Err(err) => {
                tracing::error!(error = %err, "rendering a snapshot failed; the previous one stays");
                return;
            }
        };
        self.metrics.snapshot_users.set(snapshot.users as i64);
        self.metrics.snapshot_access_keys.set(snapshot.keys as i64);
        self.snapshot.store(Some(Arc::new(snapshot)));
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

/// Refreshes the key inventory forever: every `settings.interval`, and for a report file
/// also as soon as the file changes.
pub async fn run_key_refresh(source: Arc<Source>, settings: RefreshSettings, shared: Arc<Shared>) {
    let tick = match source.origin {
        Origin::File { .. } => settings.interval.min(FILE_CHECK_INTERVAL),
        Origin::Aws { .. } => settings.interval,
    };
    let mut last: Option<Instant> = None;
    every(tick, || {
        let due = last.is_none_or(|at| at.elapsed() >= settings.interval) || source.changed();
        if due {
            last = Some(Instant::now());
        }
        let (source, settings, shared) = (&source, &settings, &shared);
        async move {
            if due {
                refresh_keys_once(source, settings, shared).await;
            }
        }
    })
    .await
}

/// One inventory refresh, published if it succeeds; its outcome is recorded either way.
/// Returns whether it succeeded.
pub async fn refresh_keys_once(
    source: &Source,
    settings: &RefreshSettings,
    shared: &Shared,
) -> bool {
    let metrics = &shared.metrics;
    let started = Instant::now();
    let work = source.collect(metrics);
    let outcome = match tokio::time::timeout(settings.timeout, work).await {
        Ok(Ok(inventory)) => Ok(inventory),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!(
            "refresh did not finish within {}",
            humantime::format_duration(settings.timeout)
        )),
    };
    let duration = started.elapsed();
    metrics.refresh_duration_seconds.set(duration.as_secs_f64());
    let error = match outcome {
        Ok(inventory) => {
            tracing::info!(
                users = inventory.users.len(),
                keys = inventory.key_count(),
                duration_ms = duration.as_millis() as u64,
                "inventory refreshed"
            );
            shared.publish_inventory(inventory).await;
            metrics.refresh_success.set(1);
            metrics
                .last_refresh_success_timestamp_seconds
                .set(unix_seconds(SystemTime::now()));
            None
        }
        Err(error) => {
            tracing::warn!(%error, "inventory refresh failed; serving the previous data");
            metrics.refresh_success.set(0);
            metrics.refresh_failures_total.inc();
            Some(error)
        }
    };
    let succeeded = error.is_none();
    shared.last_refresh.store(Some(Arc::new(RefreshStatus {
        finished_at: SystemTime::now(),
        duration,
        error,
    })));
    shared.refresh_exposition();
    shared.refreshes_finished.send_modify(|n| *n += 1);
    succeeded
}

/// Refreshes every user's service counts forever, starting after the first inventory.
pub async fn run_service_access_refresh(
    clients: Clients,
    settings: ServiceAccessSettings,
    shared: Arc<Shared>,
) {
    shared.first_inventory().await;
    every(settings.interval, || {
        refresh_service_access_once(&clients, &settings, &shared)
    })
    .await
}

/// One pass over every user's service-last-accessed job, then a new snapshot.
pub async fn refresh_service_access_once(
    clients: &Clients,
    settings: &ServiceAccessSettings,
    shared: &Shared,
) {
    let metrics = &shared.metrics;
    let started = Instant::now();
    let policy = JobPolicy {
        poll_interval: settings.poll_interval,
        poll_interval_max: settings.poll_interval_max,
        timeout: settings.job_timeout,
    };
    let arns = shared.user_arns().await;
    let users = arns.len();
    let results: Vec<Result<(), IamError>> = stream::iter(arns)
        .map(|arn| async move {
            let counts = iam::service_counts(&clients.iam, metrics, &arn, policy).await?;
            shared.set_service_counts(arn, counts).await;
            Ok(())
        })
        .buffer_unordered(settings.max_concurrent_jobs)
        .collect()
        .await;

    let mut first_error = None;
    for result in results {
        let label = match &result {
            Ok(()) => "completed",
            Err(IamError::JobFailed { .. }) => "failed",
            Err(IamError::JobTimedOut { .. }) => "timeout",
            Err(_) => "error",
        };
        metrics
            .service_access_jobs_total
            .with_label_values(&[label])
            .inc();
        if let Err(err) = result {
            first_error.get_or_insert(err);
        }
    }
    // One line per pass, not one per user: a missing permission would otherwise log
    // thousands of identical lines.
    if let Some(err) = first_error {
        tracing::warn!(users, error = %err, "some service-last-accessed jobs did not complete; their previous counts stay");
    }
    shared.republish().await;
    metrics
        .service_access_duration_seconds
        .set(started.elapsed().as_secs_f64());
    metrics
        .service_access_last_run_timestamp_seconds
        .set(unix_seconds(SystemTime::now()));
    shared.refresh_exposition();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{AccessKey, KeyStatus, User};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn inventory(users: &[&str]) -> Inventory {
        Inventory {
            account_id: "123456789012".into(),
            collected_at: SystemTime::now(),
            users: users
                .iter()
                .map(|name| User {
                    name: name.to_string(),
                    arn: format!("arn:aws:iam::123456789012:user/{name}"),
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

    fn exposition(shared: &Shared) -> String {
        String::from_utf8(shared.snapshot().unwrap().exposition.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn service_counts_join_the_inventory_and_leave_with_their_user() {
        let shared = Shared::new(Arc::new(ExporterMetrics::new()));
        assert!(!shared.is_ready());
        shared.publish_inventory(inventory(&["alice", "bob"])).await;
        assert!(shared.is_ready());
        assert_eq!(shared.metrics.snapshot_users.get(), 2);
        assert!(!exposition(&shared).contains("aws_iam_user_services_granted"));

        let counts = ServiceCounts {
            accessed: 1,
            granted: 4,
        };
        for arn in shared.user_arns().await {
            shared.set_service_counts(arn, counts).await;
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
        shared.publish_inventory(inventory(&["alice"])).await;
        shared.republish().await;
        let text = exposition(&shared);
        assert!(!text.contains("user=\"bob\""), "{text}");
        assert!(text.contains(
            "aws_iam_user_services_granted{account_id=\"123456789012\",user=\"alice\"} 4"
        ));
        assert_eq!(shared.metrics.snapshot_access_keys.get(), 1);
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
