//! The key refresh: every account's key inventory, at most
//! `refresh.max_concurrent_accounts` at once, each published as soon as it is done, with
//! the tags of users seen for the first time or named by the change feed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{StreamExt, stream};
use tokio::time::Instant;

use super::tags::read_tags;
use super::{RefreshStatus, Shared, every};
use crate::config::Settings;
use crate::features::Feature;
use crate::fleet::{Account, Fleet};
use crate::inventory::{Inventory, unix_seconds};
use crate::source::Refreshed;

/// How often a report file is checked for changes.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

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
        // Half a tick of slack: a tick may wake a hair before a whole interval has passed
        // since the last refresh started, and must not wait a whole interval more.
        let due = last.is_none_or(|at| at.elapsed() + tick / 2 >= interval) || fleet.file_changed();
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
    // Whatever the publisher has not rendered yet goes out with the round's end, so a
    // finished round is served whole. Before any data, only a round without failures is
    // an answer to serve (an empty shard or organization, say).
    if shared.snapshot().is_some() || errors.is_empty() {
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
    shared.finish_refresh(RefreshStatus {
        finished_at: SystemTime::now(),
        duration,
        error,
    });
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
        let refreshed = account.source.refresh(metrics).await?;
        let retag = follow(account, &refreshed);
        if let Some(changes) = &refreshed.changes {
            if changes.all_permissions
                || !changes.permissions.is_empty()
                || !changes.role_permissions.is_empty()
            {
                shared.notify_permissions_changed();
            }
            if changes.roles {
                shared.notify_roles_due();
            }
        }
        read_changed_users_tags(account, &refreshed.inventory, &retag, settings, shared).await;
        Ok::<_, crate::source::SourceError>(refreshed.inventory)
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
                .offer_inventory(key, account.target.name.clone(), inventory)
                .await;
            // An account new to this replica (discovered, or handed over by a reshard) has
            // its roles read now, not at the role pass's next interval.
            let roles_unread = account
                .followed
                .lock()
                .expect("not poisoned")
                .roles_read_at
                .is_none();
            if settings.roles.enabled && roles_unread {
                shared.notify_roles_due();
            }
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

/// Tells the slower passes what the change feed said (see `Followed`), and returns the
/// users (lowercased names) whose tags are to be read again now: those whose tags
/// changed, and those listed again (a user deleted and made anew under the same name
/// keeps its ARN but not its tags).
fn follow(account: &Account, refreshed: &Refreshed) -> HashSet<String> {
    let mut followed = account.followed.lock().expect("not poisoned");
    followed.following = refreshed.following;
    let Some(changes) = &refreshed.changes else {
        return HashSet::new();
    };
    followed
        .permissions
        .extend(changes.permissions.iter().map(|name| name.to_lowercase()));
    followed.all_permissions |= changes.all_permissions;
    followed.role_permissions.extend(
        changes
            .role_permissions
            .iter()
            .map(|name| name.to_lowercase()),
    );
    followed.roles_changed |= changes.roles;
    changes
        .tags
        .iter()
        .chain(&changes.users)
        .map(|name| name.to_lowercase())
        .collect()
}

/// Reads the tags of users whose tags are not known yet, so a new user's series carry
/// their tag labels from their first snapshot on (series that gained labels later would
/// be new series to Prometheus), and of the users in `retag`. Everyone's tags are read
/// again by `run_tag_refresh`.
async fn read_changed_users_tags(
    account: &Account,
    inventory: &Inventory,
    retag: &HashSet<String>,
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
        .filter(|u| !known.contains(&u.arn) || retag.contains(&u.name.to_lowercase()))
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
