//! The service-access refresh: one service-last-accessed job per user (with keys, unless
//! `all_users`), every `service_access.interval`, waiting while the account's keys
//! refresh.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{StreamExt, stream};
use tokio::time::{Instant, MissedTickBehavior};

use super::Shared;
use crate::config::Settings;
use crate::features::Feature;
use crate::fleet::{Account, Fleet, Followed};
use crate::iam::{self, Clients, IamError, JobPolicy};
use crate::inventory::unix_seconds;

/// Refreshes every user's service counts forever, starting after the first inventory:
/// every `service_access.interval`, and at once when the change feed says permissions
/// changed (a pass then runs only the jobs that are due, see `due_jobs`), so that a
/// policy attached shows in the counts by the next key refresh, not the next hour.
pub async fn run_service_access_refresh(
    fleet: Arc<Fleet>,
    settings: Settings,
    shared: Arc<Shared>,
) {
    // After the first round, not the first account: a pass started earlier would leave
    // out every account that had not published yet, until the next interval. And only
    // once there is data: a pass publishes, and must not make ready an exporter whose
    // every refresh failed.
    shared.first_inventory().await;
    shared.first_refresh_finished().await;
    // And after the roles' first reading, when roles have jobs: the first pass then runs
    // theirs too, instead of an hour later.
    if settings.roles.enabled && settings.service_access.roles {
        shared.first_roles_pass().await;
    }
    let mut ticker = tokio::time::interval(settings.service_access.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shared.permissions_changed() => {}
        }
        refresh_service_access_once(&fleet, &settings, &shared).await;
    }
}

/// One pass over every account's users' service-last-accessed jobs, then a new snapshot.
pub async fn refresh_service_access_once(fleet: &Fleet, settings: &Settings, shared: &Shared) {
    let metrics = &shared.metrics;
    let started = Instant::now();
    stream::iter(fleet.current())
        .map(|account| async move {
            if let Some(clients) = account.clients() {
                account_service_access(&account, clients, settings, shared).await;
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
    activity: Option<SystemTime>,
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
    // A user whose job did not complete is due again at the next pass.
    let ran = result.as_ref().ok().map(|_| activity);
    {
        let mut followed = account.followed.lock().expect("not poisoned");
        match ran {
            Some(activity) => followed.job_activity.insert(arn.clone(), activity),
            None => followed.job_activity.remove(&arn),
        };
    }
    shared
        .set_service_counts(&account.target.key, arn, result?)
        .await;
    Ok(())
}

/// The users and roles whose job is due, as (ARN, last activity), out of `candidates`:
/// everyone when a whole pass is due (the feed is not followed, `refresh.full_interval`
/// has passed, or a group's or a policy's permissions changed); otherwise those never
/// asked, those whose permissions changed, and those active since their last job.
fn due_jobs(
    followed: &mut Followed,
    candidates: Vec<(String, String, Option<SystemTime>)>,
    full_interval: Duration,
) -> Vec<(String, Option<SystemTime>)> {
    let whole =
        followed.whole_pass_due(followed.jobs_run_at, full_interval) || followed.all_permissions;
    if whole {
        followed.jobs_run_at = Some(Instant::now());
    }
    followed.all_permissions = false;
    let permissions = std::mem::take(&mut followed.permissions);
    let role_permissions = std::mem::take(&mut followed.role_permissions);
    // Users gone since are forgotten.
    let arns: HashSet<&str> = candidates.iter().map(|(_, arn, _)| arn.as_str()).collect();
    followed
        .job_activity
        .retain(|arn, _| arns.contains(arn.as_str()));
    candidates
        .into_iter()
        .filter(|(name, arn, activity)| {
            // A user and a role may share a name: the ARN tells which changed.
            let changed = if is_role(arn) {
                &role_permissions
            } else {
                &permissions
            };
            whole
                || changed.contains(&name.to_lowercase())
                || followed
                    .job_activity
                    .get(arn)
                    .is_none_or(|last| activity > last)
        })
        .map(|(_, arn, activity)| (arn, activity))
        .collect()
}

fn is_role(arn: &str) -> bool {
    arn.split(':')
        .nth(5)
        .is_some_and(|resource| resource.starts_with("role/"))
}

async fn account_service_access(
    account: &Account,
    clients: &Clients,
    all_settings: &Settings,
    shared: &Shared,
) {
    let settings = &all_settings.service_access;
    let metrics = &shared.metrics;
    let policy = JobPolicy {
        poll_interval: settings.poll_interval,
        poll_interval_max: settings.poll_interval_max,
        timeout: settings.job_timeout,
        action_level: settings.action_level,
    };
    let key = &account.target.key;
    // The counts belong to the key's user: users without a key have no series to carry
    // them, unless `all_users` asks for every user's. Roles' go on the role series.
    let candidates = shared.job_candidates(key, settings).await;
    let users = due_jobs(
        &mut account.followed.lock().expect("not poisoned"),
        candidates,
        all_settings.refresh.full_interval,
    );
    let count = users.len();
    let mut users = users.into_iter();
    // While IAM denies the jobs in this account, one job asks whether it still does,
    // instead of one denied call per user every pass.
    let mut results = Vec::new();
    if account.source.degraded.is_off(Feature::ServiceAccess)
        && let Some((arn, activity)) = users.next()
    {
        let probe = one_job(account, clients, policy, shared, arn, activity).await;
        let denied = probe.as_ref().is_err_and(IamError::is_access_denied);
        results.push(probe);
        if denied {
            users = Vec::new().into_iter();
        }
    }
    results.extend(
        stream::iter(users)
            .map(|(arn, activity)| one_job(account, clients, policy, shared, arn, activity))
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
    use std::time::UNIX_EPOCH;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(hours: u64) -> Option<SystemTime> {
        Some(UNIX_EPOCH + HOUR * hours as u32)
    }

    fn candidates(
        activity: &[(&str, Option<SystemTime>)],
    ) -> Vec<(String, String, Option<SystemTime>)> {
        activity
            .iter()
            .map(|(name, at)| (name.to_string(), format!("arn:aws:iam::1:user/{name}"), *at))
            .collect()
    }

    fn due(followed: &mut Followed, activity: &[(&str, Option<SystemTime>)]) -> Vec<String> {
        let mut arns: Vec<String> = due_jobs(followed, candidates(activity), 6 * HOUR)
            .into_iter()
            .map(|(arn, activity)| {
                // As `one_job` records a completed job.
                followed.job_activity.insert(arn.clone(), activity);
                arn.rsplit('/').next().unwrap().to_string()
            })
            .collect();
        arns.sort();
        arns
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_following_the_feed_runs_the_jobs_of_what_changed() {
        let mut followed = Followed::default();
        let users = [("alice", at(1)), ("bob", None), ("carol", at(2))];
        // Without the feed, every pass asks for everyone.
        assert_eq!(due(&mut followed, &users), ["alice", "bob", "carol"]);
        assert_eq!(due(&mut followed, &users), ["alice", "bob", "carol"]);

        followed.following = true;
        // Nobody active since, no permission changed: nothing to ask.
        followed.jobs_run_at = Some(Instant::now());
        assert!(due(&mut followed, &users).is_empty());
        // alice used a key since her last job; Bob's permissions changed; dave is new.
        followed.permissions.insert("bob".into());
        let later = [
            ("alice", at(5)),
            ("bob", None),
            ("carol", at(2)),
            ("dave", None),
        ];
        assert_eq!(due(&mut followed, &later), ["alice", "bob", "dave"]);
        assert!(due(&mut followed, &later).is_empty(), "flags are used once");

        // A group's permissions changed: everyone's counts may have.
        followed.all_permissions = true;
        assert_eq!(due(&mut followed, &later).len(), 4);

        // A role's permissions changed: the role's job, not the user's of the same name.
        let role = |name: &str, at: Option<SystemTime>| {
            (name.to_string(), format!("arn:aws:iam::1:role/{name}"), at)
        };
        let mixed = || {
            let mut all = candidates(&later);
            all.push(role("bob", at(1)));
            all
        };
        let jobs = |followed: &mut Followed| -> Vec<String> {
            due_jobs(followed, mixed(), 6 * HOUR)
                .into_iter()
                .map(|(arn, activity)| {
                    followed.job_activity.insert(arn.clone(), activity);
                    arn
                })
                .collect()
        };
        assert_eq!(
            jobs(&mut followed),
            ["arn:aws:iam::1:role/bob"],
            "never asked"
        );
        followed.role_permissions.insert("bob".into());
        assert_eq!(jobs(&mut followed), ["arn:aws:iam::1:role/bob"]);
        assert!(jobs(&mut followed).is_empty());

        // And everyone once every full interval, whatever the feed says.
        tokio::time::advance(6 * HOUR).await;
        assert_eq!(jobs(&mut followed).len(), 5);
        assert!(due(&mut followed, &later).is_empty());
    }
}
