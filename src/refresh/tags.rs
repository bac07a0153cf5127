//! The tag refresh: every user's tags, read again every `tags.interval`, and the reading
//! of tags the key refresh uses for users it sees for the first time.

use std::sync::Arc;

use futures_util::{StreamExt, stream};
use tokio::time::Instant;

use super::{Shared, every};
use crate::config::Settings;
use crate::features::Feature;
use crate::fleet::{Account, Fleet};
use crate::iam::{self, Clients, IamError};
use crate::inventory::tag_labels;

/// Users whose tags are read at once.
const TAG_CONCURRENCY: usize = 4;

/// Reads the tags of `users` and stores them for the next snapshot. A denied
/// ListUserTags turns the tags feature off for the account (logged once); other failures
/// keep each user's previous tags and are logged once per pass.
pub(super) async fn read_tags(
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

/// Reads every user's tags again, forever, every `tags.interval` from the end of the first
/// round, which read every user's tags already (they were all new).
pub async fn run_tag_refresh(fleet: Arc<Fleet>, settings: Settings, shared: Arc<Shared>) {
    shared.first_inventory().await;
    shared.first_refresh_finished().await;
    tokio::time::sleep(settings.tags.interval).await;
    every(settings.tags.interval, || {
        refresh_tags_once(&fleet, &settings, &shared)
    })
    .await
}

/// One pass over every account's users' tags, then a new snapshot. An account whose
/// key refresh follows the change feed has its tags read as events name its users, and
/// costs nothing here but once every `refresh.full_interval`.
pub async fn refresh_tags_once(fleet: &Fleet, settings: &Settings, shared: &Shared) {
    stream::iter(fleet.current())
        .map(|account| async move {
            let Some(clients) = account.clients() else {
                return;
            };
            let due = {
                let followed = account.followed.lock().expect("not poisoned");
                followed.whole_pass_due(followed.tags_read_at, settings.refresh.full_interval)
            };
            if due {
                let users = shared.users(&account.target.key).await;
                read_tags(&account, clients, users, settings, shared).await;
                account.followed.lock().expect("not poisoned").tags_read_at = Some(Instant::now());
            }
        })
        .buffer_unordered(settings.refresh.max_concurrent_accounts)
        .collect::<Vec<()>>()
        .await;
    shared.republish().await;
    shared.refresh_exposition();
}
