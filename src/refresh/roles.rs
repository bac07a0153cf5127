//! The role refresh: every account's roles (GetAccountAuthorizationDetails), read whole
//! every `roles.interval`, and again by the next key refresh when the change feed says a
//! role was created, deleted or (un)tagged.

use std::sync::Arc;
use std::time::SystemTime;

use futures_util::{StreamExt, stream};
use tokio::time::{Instant, MissedTickBehavior};

use super::Shared;
use crate::config::Settings;
use crate::features::Feature;
use crate::filter::RoleFilter;
use crate::fleet::{Account, Fleet};
use crate::iam;
use crate::inventory::{LabelledRole, Roles, tag_labels};

/// Reads every account's roles forever, starting after the first round of the key
/// refresh (a pass then covers every account, as the service-access pass does): every
/// `roles.interval`, and for the accounts whose feed named a role change, or that have
/// not been read yet, as soon as the key refresh says so.
pub async fn run_role_refresh(fleet: Arc<Fleet>, settings: Settings, shared: Arc<Shared>) {
    shared.first_inventory().await;
    shared.first_refresh_finished().await;
    let mut ticker = tokio::time::interval(settings.roles.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick is now: every account, once. The accounts the first round announced
    // as due are among them, so their wake-up that waits meanwhile finds nothing to read.
    ticker.tick().await;
    refresh_roles_once(&fleet, &settings, &shared, true).await;
    shared.finish_first_roles_pass();
    loop {
        let everyone = tokio::select! {
            biased;
            _ = ticker.tick() => true,
            () = shared.roles_due() => false,
        };
        refresh_roles_once(&fleet, &settings, &shared, everyone).await;
    }
}

/// One pass: the roles of every account (`everyone`), or of those that are due (a role
/// change named by the feed, or never read), then a new snapshot.
pub async fn refresh_roles_once(
    fleet: &Fleet,
    settings: &Settings,
    shared: &Shared,
    everyone: bool,
) {
    stream::iter(fleet.current())
        .map(|account| async move {
            let due = {
                let mut followed = account.followed.lock().expect("not poisoned");
                let due = everyone || followed.roles_changed || followed.roles_read_at.is_none();
                // Taken now: a change the feed reports while the roles are read is read by
                // the next pass, not lost.
                followed.roles_changed &= !due;
                due
            };
            if due {
                read_roles(&account, settings, shared).await;
            }
        })
        .buffer_unordered(settings.refresh.max_concurrent_accounts)
        .collect::<Vec<()>>()
        .await;
    shared.republish().await;
    shared.refresh_exposition();
}

/// Reads one account's roles and stores them for the next snapshot. A denied call turns
/// the roles feature off for the account (logged once, with the permission to grant);
/// another failure keeps the roles read before and is logged. Either way the account is
/// read again at the next interval.
async fn read_roles(account: &Account, settings: &Settings, shared: &Shared) {
    let Some(clients) = account.clients() else {
        return;
    };
    let metrics = &shared.metrics;
    let account_id = account.id();
    let started = std::time::Instant::now();
    let result = iam::list_roles(&clients.iam, metrics).await;
    // Taken whatever the outcome: an account whose roles cannot be read is asked again at
    // the next interval (or role event), not at every key refresh that finds it unread.
    let (first, following) = {
        let mut followed = account.followed.lock().expect("not poisoned");
        let first = followed.roles_read_at.replace(Instant::now()).is_none();
        (first, followed.following)
    };
    let listed = match account
        .source
        .degraded
        .observe(metrics, &account_id, Feature::Roles, result)
    {
        Ok(Some(roles)) => roles,
        Ok(None) => return,
        Err(err) => {
            tracing::warn!(account_id, error = %err, "the roles could not be read; the previous ones stay");
            return;
        }
    };
    let filter = RoleFilter::new(&settings.role_filter);
    let roles = Roles {
        read_at: SystemTime::now(),
        roles: listed
            .into_iter()
            .filter(|role| filter.allows(role))
            .map(|role| LabelledRole {
                tag_labels: tag_labels(&settings.tags.keys, &role.tags),
                role,
            })
            .collect(),
    };
    tracing::info!(
        account_id,
        roles = roles.roles.len(),
        duration_ms = started.elapsed().as_millis() as u64,
        "roles read"
    );
    shared.set_roles(&account.target.key, roles).await;
    // The roles' service counts come with the service-access pass, which runs the jobs of
    // roles never asked: wake it for an account's first roles rather than wait an hour.
    // Only where the feed is followed: there a pass runs only the jobs that are due, while
    // without the feed it would run every job of the account again.
    if first && following && settings.service_access.roles {
        shared.notify_permissions_changed();
    }
}
