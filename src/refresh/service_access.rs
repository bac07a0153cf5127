//! The service-access refresh: one service-last-accessed job per user (with keys, unless
//! `all_users`), every `service_access.interval`, waiting while the account's keys
//! refresh.

use std::sync::Arc;
use std::time::SystemTime;

use futures_util::{StreamExt, stream};
use tokio::time::Instant;

use super::{Shared, every};
use crate::config::{ServiceAccessSettings, Settings};
use crate::features::Feature;
use crate::fleet::{Account, Fleet};
use crate::iam::{self, Clients, IamError, JobPolicy};
use crate::inventory::unix_seconds;

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
