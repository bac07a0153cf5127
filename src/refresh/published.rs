//! The one value the HTTP server reads and what feeds it: each account's collected data,
//! the render that turns it into a snapshot, and the publisher that renders service counts
//! and tags as they arrive.
//!
//! Locks, and what each protects:
//! - `collected` (async): every account's data and its version. Held only to read or edit
//!   it, never across a render or while taking another lock.
//! - `rendered` (async): held for a whole render and swap, so renders run one at a time;
//!   it holds the `Collected::version` the current snapshot was rendered from.
//! - `assembling` (blocking, never held across an await): held while a `Published` is
//!   assembled and stored, so an older one never replaces a newer one.
//!
//! Lock order: `rendered`, then `collected` or `assembling`; `collected` and `assembling`
//! are never held together.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use tokio::sync::{Mutex, Notify, watch};

use super::RefreshStatus;
use crate::config::ServiceAccessSettings;
use crate::exposition::{Exposition, GzipPrefix, Recycler};
use crate::inventory::{AccountData, Inventory, Roles, ServiceCounts, TagLabels};
use crate::metrics::ExporterMetrics;
use crate::snapshot::{AccountFragment, Snapshot};

#[derive(Default)]
struct Collected {
    /// By account key, so the exposition lists accounts in a stable order.
    accounts: BTreeMap<String, AccountData>,
    /// Each account's series as last rendered. A render renders again only the accounts
    /// whose data changed since, and joins every account's fragment: a thousand accounts
    /// publishing one after another cost a thousand small renders, not a thousand whole
    /// ones.
    fragments: BTreeMap<String, Arc<AccountFragment>>,
    /// Accounts whose data changed since their fragment was rendered.
    stale: HashSet<String>,
    /// Bumped at every change, so a render can tell whether it is already out of date.
    version: u64,
}

/// What the last render left: the version of `Collected` it rendered, and the buffers of
/// earlier snapshots for the next one to reuse.
#[derive(Default)]
struct Rendered {
    version: u64,
    recycler: Recycler,
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

/// What the refreshers publish and the HTTP server reads. The module doc lists its locks
/// and their order.
pub struct Shared {
    pub metrics: Arc<ExporterMetrics>,
    published: ArcSwap<Published>,
    /// Held while a `Published` is assembled, so an older one never replaces a newer one.
    assembling: std::sync::Mutex<()>,
    last_refresh: ArcSwapOption<RefreshStatus>,
    /// Every account's data, the input of the next render.
    collected: Mutex<Collected>,
    /// Held while a snapshot is rendered and swapped in, so two publishers can never swap
    /// in their snapshots out of order; holds the `Collected::version` the current
    /// snapshot was rendered from, so a publisher whose data is already out can skip
    /// its render.
    rendered: Mutex<Rendered>,
    /// Bumped at every new inventory; the slow loops wait for the first.
    inventory_generation: watch::Sender<u64>,
    /// Bumped when an inventory refresh finishes, whether it succeeded or not.
    refreshes_finished: watch::Sender<u64>,
    /// True once the role pass has read every account's roles a first time.
    roles_read: watch::Sender<bool>,
    /// Signalled when service counts or tags arrive, for `run_publisher`.
    changed: Notify,
    /// Signalled when the change feed says a user's permissions changed, so that the
    /// service-access pass runs those users' jobs now instead of at its next interval.
    permissions_changed: Notify,
    /// Signalled when an account's roles are due before the role pass's next interval: a
    /// role change in its feed, or an account whose roles were never read.
    roles_due: Notify,
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
            rendered: Mutex::default(),
            inventory_generation: watch::channel(0).0,
            refreshes_finished: watch::channel(0).0,
            roles_read: watch::channel(false).0,
            changed: Notify::new(),
            permissions_changed: Notify::new(),
            roles_due: Notify::new(),
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

    /// Replaces one account's inventory and publishes it at once. Service counts and tags
    /// of users that are gone are dropped with them.
    pub async fn publish_inventory(
        &self,
        account: &str,
        name: Option<String>,
        inventory: Inventory,
    ) {
        self.store_inventory(account, name, inventory).await;
        self.render_and_swap().await;
        self.inventory_generation.send_modify(|g| *g += 1);
    }

    /// Replaces one account's inventory for `run_publisher` to publish within seconds,
    /// together with the accounts that finish meanwhile: a round of a thousand accounts
    /// then costs a render every few seconds, not one per account. The first inventory is
    /// published at once, so that the exporter is ready as soon as it has data.
    pub async fn offer_inventory(&self, account: &str, name: Option<String>, inventory: Inventory) {
        if !self.is_ready() {
            return self.publish_inventory(account, name, inventory).await;
        }
        self.store_inventory(account, name, inventory).await;
        self.inventory_generation.send_modify(|g| *g += 1);
        self.changed.notify_one();
    }

    async fn store_inventory(&self, account: &str, name: Option<String>, inventory: Inventory) {
        self.change(account, |collected| {
            let data = collected.accounts.entry(account.to_string()).or_default();
            let arns: HashSet<&str> = inventory.users.iter().map(|u| u.arn.as_str()).collect();
            data.service_counts
                .retain(|arn, _| arns.contains(arn.as_str()));
            data.tags.retain(|arn, _| arns.contains(arn.as_str()));
            data.name = name;
            data.inventory = Some(Arc::new(inventory));
        })
        .await;
    }

    /// Drops an account that is no longer watched; its series vanish with the next snapshot.
    pub async fn remove_account(&self, account: &str) {
        self.change(account, |collected| {
            collected.accounts.remove(account);
            collected.fragments.remove(account);
        })
        .await;
        self.render_and_swap().await;
    }

    /// Stores one user's service counts; `run_publisher` publishes them within seconds.
    pub async fn set_service_counts(&self, account: &str, arn: String, counts: ServiceCounts) {
        self.change(account, |collected| {
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
        self.change(account, |collected| {
            if let Some(data) = collected.accounts.get_mut(account) {
                data.tags.insert(arn, tags);
            }
        })
        .await;
        self.changed.notify_one();
    }

    /// Stores an account's roles for the next snapshot.
    pub async fn set_roles(&self, account: &str, roles: Roles) {
        self.change(account, |collected| {
            if let Some(data) = collected.accounts.get_mut(account) {
                data.roles = Some(Arc::new(roles));
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
    /// The users a service-access pass considers, as (name, ARN, last activity): those
    /// holding a key, or everyone with `all_users`.
    pub async fn job_candidates(
        &self,
        account: &str,
        settings: &ServiceAccessSettings,
    ) -> Vec<(String, String, Option<std::time::SystemTime>)> {
        let collected = self.collected.lock().await;
        let Some(data) = collected.accounts.get(account) else {
            return Vec::new();
        };
        let users = data.inventory.iter().flat_map(|inventory| {
            inventory
                .users
                .iter()
                .filter(|user| settings.all_users || !user.keys.is_empty())
                .map(|u| (u.name.clone(), u.arn.clone(), u.last_activity()))
        });
        // A role's activity is its last use: a job finds nothing new before it.
        let roles = data
            .roles
            .iter()
            .filter(|_| settings.roles)
            .flat_map(|roles| roles.roles.iter())
            .map(|labelled| &labelled.role)
            .filter(|role| settings.service_linked_roles || !role.is_service_linked())
            .map(|role| {
                let activity = role.last_used.as_ref().map(|used| used.at);
                (role.name.clone(), role.arn.clone(), activity)
            });
        users.chain(roles).collect()
    }

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

    /// Records how a key refresh ended: the status for the landing page, the exporter's
    /// own metrics as the refresh left them, and then the signal that wakes whoever
    /// waits for a first refresh, so they find the status already stored.
    pub(super) fn finish_refresh(&self, status: RefreshStatus) {
        self.last_refresh.store(Some(Arc::new(status)));
        self.refresh_exposition();
        self.refreshes_finished.send_modify(|n| *n += 1);
    }

    /// Wakes the role pass (or its next wait, if it is running).
    pub(super) fn notify_roles_due(&self) {
        self.roles_due.notify_one();
    }

    pub(super) async fn roles_due(&self) {
        self.roles_due.notified().await;
    }

    /// Wakes the service-access pass (or its next wait, if it is running).
    pub(super) fn notify_permissions_changed(&self) {
        self.permissions_changed.notify_one();
    }

    /// Resolves when the change feed said a user's permissions changed.
    pub(super) async fn permissions_changed(&self) {
        self.permissions_changed.notified().await;
    }

    /// Resolves once a first inventory refresh has finished, successful or not.
    pub(super) fn finish_first_roles_pass(&self) {
        self.roles_read.send_replace(true);
    }

    /// Resolves once the role pass has read every account's roles a first time (or tried).
    pub(super) async fn first_roles_pass(&self) {
        let mut read = self.roles_read.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = read.wait_for(|read| *read).await;
    }

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

    /// Edits `account`'s data, marking its fragment for rendering again.
    async fn change(&self, account: &str, edit: impl FnOnce(&mut Collected)) {
        let mut collected = self.collected.lock().await;
        edit(&mut collected);
        if collected.accounts.contains_key(account) {
            collected.stale.insert(account.to_string());
        }
        collected.version += 1;
    }

    /// Renders the accounts whose data changed, joins every account's series into a
    /// snapshot and swaps it in. Publishers that finish while a render runs wait for it;
    /// the first of them renders once for all of them, and the others find their data
    /// already published, so a thousand accounts finishing together cost a few renders,
    /// not a thousand.
    async fn render_and_swap(&self) {
        let wanted = self.collected.lock().await.version;
        let mut rendered = self.rendered.lock().await;
        if rendered.version >= wanted && self.is_ready() {
            return;
        }
        let (changed, mut fragments, version) = {
            let mut collected = self.collected.lock().await;
            let stale = std::mem::take(&mut collected.stale);
            let changed: Vec<(String, AccountData)> = stale
                .into_iter()
                .filter_map(|key| Some((key.clone(), collected.accounts.get(&key)?.clone())))
                .collect();
            (changed, collected.fragments.clone(), collected.version)
        };
        // Rendering tens of thousands of series is CPU work: keep it off the threads
        // that answer scrapes.
        let changed_keys: Vec<String> = changed.iter().map(|(key, _)| key.clone()).collect();
        let mut recycler = std::mem::take(&mut rendered.recycler);
        let work = tokio::task::spawn_blocking(move || {
            let fresh: Vec<(String, Arc<AccountFragment>)> = changed
                .iter()
                .map(|(key, data)| (key.clone(), Arc::new(AccountFragment::render(data))))
                .collect();
            fragments.extend(fresh.iter().cloned());
            let snapshot = Snapshot::assemble(fragments.values().map(|f| &**f), &mut recycler);
            (snapshot, fresh, recycler)
        });
        let (snapshot, fresh) = match work.await {
            Ok((snapshot, fresh, recycler)) => {
                rendered.recycler = recycler;
                (snapshot, fresh)
            }
            Err(err) => {
                tracing::error!(error = %err, "rendering a snapshot failed; the previous one stays");
                // Their fragments were not rendered: the next render tries again.
                self.collected.lock().await.stale.extend(changed_keys);
                return;
            }
        };
        {
            let mut collected = self.collected.lock().await;
            for (key, fragment) in fresh {
                // An account removed during the render must not come back.
                if collected.accounts.contains_key(&key) {
                    collected.fragments.insert(key, fragment);
                }
            }
        }
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
        rendered.version = version;
    }
}

/// How long `run_publisher` waits after a render before the next: service counts arriving
/// one user at a time are published together, at a small share of one core.
const PUBLISH_GAP: Duration = Duration::from_secs(5);

/// Publishes inventories, service counts and tags as they arrive: at once after a quiet
/// spell, then at most once per `PUBLISH_GAP`, so the first counts of a pass show within
/// a second of their job, and a pass of thousands of jobs or a round of a thousand
/// accounts costs a render every few seconds.
pub async fn run_publisher(shared: Arc<Shared>) {
    loop {
        shared.changed.notified().await;
        shared.render_and_swap().await;
        tokio::time::sleep(PUBLISH_GAP).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{AccessKey, KeyStatus, User};
    use std::time::SystemTime;

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
                    created: None,
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
            actions: vec![],
        };
        for (_, arn) in shared.users(A).await {
            shared.set_service_counts(A, arn, counts.clone()).await;
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
            actions: vec![],
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
}
