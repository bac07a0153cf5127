//! A snapshot: one complete inventory rendered to exposition text, once, when it is built.
//! Scrapes serve these bytes; they never format or call AWS. Whatever repeats the sources
//! hand over, no exposition holds two series with the same name and labels (Prometheus
//! rejects the whole scrape when one does): see `Snapshot::build`.
//!
//! A snapshot is built whole (`Snapshot::build`) or assembled from each account's
//! `AccountFragment`, rendered and compressed when that account's data changes
//! (`Snapshot::assemble`): publishing one account of a thousand then costs rendering that
//! account and copying the others' bytes, not rendering and compressing them all again.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::time::SystemTime;

use crate::exposition::{Deflater, GzipBuilder, GzipPrefix, Recycler};
use crate::inventory::{
    AccessKey, AccountData, Inventory, KeyStatus, Login, Role, ServiceCounts, TagLabels,
    TrackedActions, User, unix_seconds,
};
use crate::metrics::Family;
use bytes::Bytes;
use flate2::{Compression, Crc};

#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Accounts rendered: distinct account ids with an inventory.
    pub accounts: usize,
    /// IAM users rendered (the root user is not one), each once.
    pub users: usize,
    /// Their access keys rendered, each once.
    pub keys: usize,
    /// Repeats left out: an account id, a user or a key met again after its first
    /// occurrence (see `build`). Zero when the sources are consistent.
    pub duplicates_dropped: usize,
    /// Keys of one user whose masked ids were equal, rendered with `#2`, `#3`... after
    /// their `access_key_id` (see `build`).
    pub key_ids_disambiguated: usize,
    /// The inventory's series in the Prometheus text format.
    pub exposition: Bytes,
    /// The same, compressed once for every gzip response built from this snapshot.
    pub gzip_prefix: GzipPrefix,
}

impl Snapshot {
    /// Renders every account's inventory with its latest service counts and tags. Counts
    /// and tags of users no longer in an inventory are not rendered, so a deleted user's
    /// series vanish with the user.
    ///
    /// Every series is rendered once, whatever the sources repeat (a report listing a
    /// user on two rows, two configured entries for one account, a key listed twice).
    /// Identities are coarser than label sets, so that joins stay one-to-one too: an
    /// account is its id, a user its account id and name, a key its user and
    /// `access_key_id`; `account_name`, tags and last use are facts about them. The first
    /// occurrence in rendering order (accounts in map order; in each, users, then the
    /// root user; their keys in order) wins, which keeps the choice the same from one
    /// snapshot to the next:
    /// - an account id met again adds only what the first entry lacks: an account series
    ///   comes from the first entry that has it, and its users join the first entry's;
    /// - a user met again keeps the first occurrence's tags, counts, creation and console
    ///   facts, and its keys join the first occurrence's: keys are what the alerts are
    ///   about, and a repeated user must not hide one;
    /// - a key id met again for the same user is the same key (key ids are unique, and
    ///   so are the report's slot names on one row) and is left out. Not so a masked id
    ///   (`filter::mask_key_ids` keeps four characters): two different keys of a user can
    ///   mask alike, and leaving one out could hide an old active key behind a new one,
    ///   so the later one is rendered as `AKIA****WXYZ#2` (then `#3`...). Masked keys
    ///   equal in every field cannot be told apart and are left out as repeats.
    ///
    /// This costs one hash per account and per user, and for each key a look at the few
    /// keys of its user rendered before it; the text is never read back.
    pub fn build(accounts: &BTreeMap<String, AccountData>) -> Snapshot {
        build(&views(accounts.values()))
    }

    /// The snapshot `build` makes of the accounts the fragments were rendered from, given
    /// in the same order (the map's), byte for byte, for the cost of copying the
    /// fragments: each family's HELP and TYPE, then every account's samples of it, in
    /// text and in deflate pieces joined into one gzip stream.
    ///
    /// Should an account id come twice (two configured entries for one account), the
    /// repeats are dropped across entries as `build` says, so that rare snapshot is built
    /// whole from the data the fragments were rendered from.
    ///
    /// The bytes are written into buffers of earlier snapshots that are no longer served,
    /// taken from `recycler` and left to it.
    pub fn assemble<'a>(
        fragments: impl IntoIterator<Item = &'a AccountFragment>,
        recycler: &mut Recycler,
    ) -> Snapshot {
        let fragments: Vec<&AccountFragment> = fragments
            .into_iter()
            .filter(|f| f.data.inventory.is_some())
            .collect();
        let mut ids = HashSet::with_capacity(fragments.len());
        let distinct = fragments
            .iter()
            .filter_map(|f| f.data.inventory.as_deref())
            .all(|inventory| ids.insert(inventory.account_id.as_str()));
        if !distinct {
            return build(&views(fragments.iter().map(|f| &f.data)));
        }

        let headers = headers();
        let present: Vec<bool> = (0..FAMILIES.len())
            .map(|family| fragments.iter().any(|f| !f.piece(family).text.is_empty()))
            .collect();
        let (mut text_len, mut deflated_len) = (0, 0);
        for (header, _) in headers.iter().zip(&present).filter(|(_, p)| **p) {
            text_len += header.text.len();
            deflated_len += header.deflated.len();
        }
        for f in &fragments {
            text_len += f.text.len();
            deflated_len += f.deflated.len();
        }
        let mut text = recycler.take(text_len);
        // With room for the gzip header's 10 bytes.
        let mut gzip = GzipBuilder::new(recycler.take(deflated_len + 10), deflated_len);
        for (family, header) in headers.iter().enumerate() {
            if !present[family] {
                continue;
            }
            text.extend_from_slice(&header.text);
            gzip.push(&header.deflated, &header.crc);
            for piece in fragments.iter().map(|f| f.piece(family)) {
                text.extend_from_slice(piece.text);
                gzip.push(piece.deflated, piece.crc);
            }
        }
        let sum = |count: fn(&AccountFragment) -> usize| fragments.iter().map(|f| count(f)).sum();
        Snapshot {
            accounts: fragments.len(),
            users: sum(|f| f.users),
            keys: sum(|f| f.keys),
            duplicates_dropped: sum(|f| f.duplicates_dropped),
            key_ids_disambiguated: sum(|f| f.key_ids_disambiguated),
            exposition: recycler.share(text),
            gzip_prefix: gzip.finish(recycler),
        }
    }
}

/// One account's series, rendered and compressed ahead for `Snapshot::assemble`: for each
/// family, its samples as text and as a deflate piece of their own, and the text's CRC-32.
/// Rendering one costs work in proportion to that account alone.
pub struct AccountFragment {
    /// What it was rendered from, for the rare snapshot that must be built whole.
    data: AccountData,
    users: usize,
    keys: usize,
    duplicates_dropped: usize,
    key_ids_disambiguated: usize,
    /// The samples, family after family in `FAMILIES` order, without HELP and TYPE.
    text: Vec<u8>,
    /// Where each family's samples end in `text`.
    text_ends: [usize; FAMILIES.len()],
    /// Each family's samples as a `Deflater` piece (none for a family without samples).
    deflated: Vec<u8>,
    deflated_ends: [usize; FAMILIES.len()],
    crcs: [Crc; FAMILIES.len()],
}

impl std::fmt::Debug for AccountFragment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let account = self.data.inventory.as_ref().map(|i| i.account_id.as_str());
        f.debug_struct("AccountFragment")
            .field("account", &account)
            .field("users", &self.users)
            .field("keys", &self.keys)
            .field("text", &self.text.len())
            .field("deflated", &self.deflated.len())
            .finish_non_exhaustive()
    }
}

/// One family's part of a fragment.
struct Piece<'a> {
    text: &'a [u8],
    deflated: &'a [u8],
    crc: &'a Crc,
}

impl AccountFragment {
    /// Renders one account's data as `build` renders it among others (an account without
    /// an inventory renders nothing), and compresses each family's samples on their own.
    pub fn render(data: &AccountData) -> AccountFragment {
        let views = views(std::iter::once(data));
        let mut tally = Tally::default();
        let users = user_rows(&views, &mut tally);
        let keys = key_rows(&users, &mut tally);
        let Text {
            out: mut text,
            ends,
            ..
        } = render(&views, &users, &keys, false);
        // Kept until the account changes, a thousand of them: no spare room.
        text.shrink_to_fit();
        let text_ends: [usize; FAMILIES.len()] =
            ends.try_into().expect("`render` writes every family once");
        // Compressed once per change of the account and copied into every snapshot until
        // the next one, so worth the best level.
        let mut deflater = Deflater::new(Compression::best());
        let mut deflated = Vec::with_capacity(text.len() / 6 + 64);
        let mut crcs: [Crc; FAMILIES.len()] = std::array::from_fn(|_| Crc::new());
        let mut deflated_ends = [0; FAMILIES.len()];
        let mut start = 0;
        for ((&end, crc), deflated_end) in text_ends.iter().zip(&mut crcs).zip(&mut deflated_ends) {
            let samples = &text[start..end];
            if !samples.is_empty() {
                deflater.piece(samples, &mut deflated);
                crc.update(samples);
            }
            *deflated_end = deflated.len();
            start = end;
        }
        deflated.shrink_to_fit();
        AccountFragment {
            data: data.clone(),
            users: users.iter().filter(|u| !u.root).count(),
            keys: keys.iter().filter(|k| !k.user.root).count(),
            duplicates_dropped: tally.duplicates_dropped,
            key_ids_disambiguated: tally.key_ids_disambiguated,
            text,
            text_ends,
            deflated,
            deflated_ends,
            crcs,
        }
    }

    /// The account id, if the data held an inventory.
    pub fn account_id(&self) -> Option<&str> {
        let inventory = self.data.inventory.as_deref()?;
        Some(inventory.account_id.as_str())
    }

    fn piece(&self, family: usize) -> Piece<'_> {
        let range = |ends: &[usize; FAMILIES.len()]| {
            let start = if family == 0 { 0 } else { ends[family - 1] };
            start..ends[family]
        };
        Piece {
            text: &self.text[range(&self.text_ends)],
            deflated: &self.deflated[range(&self.deflated_ends)],
            crc: &self.crcs[family],
        }
    }
}

/// Each family's HELP and TYPE lines, in text and as a deflate piece, made once.
struct Header {
    text: Vec<u8>,
    deflated: Vec<u8>,
    crc: Crc,
}

fn headers() -> &'static [Header] {
    static HEADERS: std::sync::OnceLock<Vec<Header>> = std::sync::OnceLock::new();
    HEADERS.get_or_init(|| {
        let mut deflater = Deflater::new(Compression::best());
        FAMILIES
            .iter()
            .map(|family| {
                let mut text = Vec::new();
                write_header(&mut text, family);
                let mut deflated = Vec::new();
                deflater.piece(&text, &mut deflated);
                let mut crc = Crc::new();
                crc.update(&text);
                Header {
                    text,
                    deflated,
                    crc,
                }
            })
            .collect()
    })
}

/// The inventory's families in the order `render` writes them: name order.
const FAMILIES: [&Family; 25] = {
    use crate::metrics::*;
    [
        &KEY_ACTIVE,
        &KEY_AGE_SECONDS,
        &KEY_CREATED_TIMESTAMP_SECONDS,
        &KEY_IDLE_SECONDS,
        &KEY_LAST_USED_INFO,
        &KEY_LAST_USED_TIMESTAMP_SECONDS,
        &KEY_NEVER_USED,
        &ACCOUNT_INFO,
        &CREDENTIAL_REPORT_GENERATED_TIMESTAMP_SECONDS,
        &ROLE_CREATED_TIMESTAMP_SECONDS,
        &ROLE_IDLE_SECONDS,
        &ROLE_LAST_USED_TIMESTAMP_SECONDS,
        &ROLE_SERVICES_ACCESSED,
        &ROLE_SERVICES_GRANTED,
        &ROLE_TRACKED_ACTIONS_GRANTED,
        &ROLE_TRACKED_ACTIONS_USED,
        &ROOT_ACCESS_KEYS_PRESENT,
        &USER_CREATED_TIMESTAMP_SECONDS,
        &USER_MFA_ACTIVE,
        &USER_PASSWORD_ENABLED,
        &USER_PASSWORD_LAST_USED_TIMESTAMP_SECONDS,
        &USER_SERVICES_ACCESSED,
        &USER_SERVICES_GRANTED,
        &USER_TRACKED_ACTIONS_GRANTED,
        &USER_TRACKED_ACTIONS_USED,
    ]
};

/// The accounts that have an inventory, in the order given.
fn views<'a>(accounts: impl Iterator<Item = &'a AccountData>) -> Vec<View<'a>> {
    accounts
        .filter_map(|data| {
            Some(View {
                inventory: data.inventory.as_deref()?,
                data,
            })
        })
        .collect()
}

/// `Snapshot::build` of some accounts' views.
fn build(views: &[View]) -> Snapshot {
    let mut tally = Tally::default();
    let users = user_rows(views, &mut tally);
    let keys = key_rows(&users, &mut tally);
    let exposition = Bytes::from(render(views, &users, &keys, true).out);
    Snapshot {
        accounts: tally.accounts,
        users: users.iter().filter(|u| !u.root).count(),
        keys: keys.iter().filter(|k| !k.user.root).count(),
        duplicates_dropped: tally.duplicates_dropped,
        key_ids_disambiguated: tally.key_ids_disambiguated,
        gzip_prefix: GzipPrefix::new(&exposition),
        exposition,
    }
}

/// One account's inventory with what is joined to it.
struct View<'a> {
    inventory: &'a Inventory,
    data: &'a AccountData,
}

/// A user with what every one of its series needs: the first occurrence of its identity
/// (account id and name), and the later ones whose keys join it.
struct UserRow<'a> {
    account: &'a str,
    /// Ages are computed as of the account's refresh.
    now: SystemTime,
    user: &'a User,
    root: bool,
    tags: Cow<'a, [(String, String)]>,
    counts: Option<&'a ServiceCounts>,
    /// Later occurrences, with their refresh time; empty (and unallocated) but for
    /// inconsistent sources.
    more: Vec<(&'a User, SystemTime)>,
}

/// A key with its user and the `access_key_id` it is rendered with.
struct KeyRow<'a> {
    user: &'a UserRow<'a>,
    key: &'a AccessKey,
    now: SystemTime,
    label: Cow<'a, str>,
}

/// What `build` counts besides the rows.
#[derive(Default)]
struct Tally {
    accounts: usize,
    duplicates_dropped: usize,
    key_ids_disambiguated: usize,
}

/// Every user once, in rendering order, later occurrences merged into the first.
fn user_rows<'a>(views: &[View<'a>], tally: &mut Tally) -> Vec<UserRow<'a>> {
    let capacity = views.iter().map(|v| v.inventory.users.len() + 1).sum();
    let mut rows: Vec<UserRow> = Vec::with_capacity(capacity);
    // Account id → user name → its row.
    let mut seen: HashMap<&str, HashMap<&str, usize>> = HashMap::with_capacity(views.len());
    for view in views {
        let inventory = view.inventory;
        let account = inventory.account_id.as_str();
        let now = inventory.collected_at;
        let names = match seen.entry(account) {
            Entry::Occupied(entry) => {
                tally.duplicates_dropped += 1;
                entry.into_mut()
            }
            Entry::Vacant(entry) => entry.insert(HashMap::with_capacity(inventory.users.len() + 1)),
        };
        let users = inventory.users.iter().map(|user| (user, false));
        let root = inventory.account.root.iter().map(|user| (user, true));
        for (user, root) in users.chain(root) {
            match names.entry(user.name.as_str()) {
                Entry::Occupied(first) => {
                    tally.duplicates_dropped += 1;
                    rows[*first.get()].more.push((user, now));
                }
                Entry::Vacant(slot) => {
                    slot.insert(rows.len());
                    rows.push(UserRow {
                        account,
                        now,
                        user,
                        root,
                        tags: tag_labels(view.data.tags.get(&user.arn)),
                        counts: view.data.service_counts.get(&user.arn),
                        more: Vec::new(),
                    });
                }
            }
        }
    }
    tally.accounts = seen.len();
    rows
}

/// Every user's keys once, each user's together, with the label each is rendered with.
/// A user has two keys at most in IAM, and the look at its earlier keys only sees those
/// kept, so repeats of them cost no more than that.
fn key_rows<'a>(users: &'a [UserRow<'a>], tally: &mut Tally) -> Vec<KeyRow<'a>> {
    let occurrences = |user: &'a UserRow<'a>| {
        std::iter::once((user.user, user.now)).chain(user.more.iter().copied())
    };
    let capacity = users
        .iter()
        .flat_map(occurrences)
        .map(|(user, _)| user.keys.len())
        .sum();
    let mut rows: Vec<KeyRow> = Vec::with_capacity(capacity);
    for user in users {
        let start = rows.len();
        for (owner, now) in occurrences(user) {
            for key in &owner.keys {
                let id = key.id.as_str();
                let earlier = &rows[start..];
                let taken = |label: &str| earlier.iter().any(|row| row.label == label);
                let label = if !taken(id) {
                    Cow::Borrowed(id)
                } else if !is_masked(id) || earlier.iter().any(|row| row.key == key) {
                    tally.duplicates_dropped += 1;
                    continue;
                } else {
                    tally.key_ids_disambiguated += 1;
                    let mut n = 2;
                    while taken(&format!("{id}#{n}")) {
                        n += 1;
                    }
                    Cow::Owned(format!("{id}#{n}"))
                };
                rows.push(KeyRow {
                    user,
                    key,
                    now,
                    label,
                });
            }
        }
    }
    rows
}

/// Whether a key id is as `filter::mask_key_ids` shows it, `AKIA****WXYZ`. Key ids and
/// slot names never hold `*`.
fn is_masked(id: &str) -> bool {
    id.len() == 12 && id.get(4..8) == Some("****")
}

/// A user's tag labels as its series carry them: sorted by name, each name once (a name
/// twice on one series makes Prometheus reject the scrape). `inventory::tag_labels` makes
/// them so; anything else is sorted and cut here, once per user, keeping each name's
/// first value.
fn tag_labels(tags: Option<&TagLabels>) -> Cow<'_, [(String, String)]> {
    let tags = tags.map_or(&[][..], Vec::as_slice);
    if tags.windows(2).all(|pair| pair[0].0 < pair[1].0) {
        return Cow::Borrowed(tags);
    }
    let mut sorted = tags.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted.dedup_by(|later, first| later.0 == first.0);
    Cow::Owned(sorted)
}

/// Each account id's first sample of an account family (see `Snapshot::build`).
fn once_per_account<'v, 'a: 'v, T>(
    views: &'v [View<'a>],
    mut sample: impl FnMut(&'v View<'a>) -> Option<T>,
) -> impl Iterator<Item = T> {
    let mut seen: HashSet<&'a str> = HashSet::with_capacity(views.len());
    views.iter().filter_map(move |view| {
        let value = sample(view)?;
        seen.insert(view.inventory.account_id.as_str())
            .then_some(value)
    })
}

/// Writes the inventory's families (`FAMILIES`), each only if it has a sample, in name
/// order; labels in name order, as the Prometheus client libraries write them. Without
/// `headers`, the samples only, for a fragment.
fn render(views: &[View], users: &[UserRow], keys: &[KeyRow], headers: bool) -> Text {
    use crate::metrics::*;
    let keys = || keys.iter();

    // About 115 bytes a series, 8 series a key: sized once, never regrown.
    let mut text = Text {
        out: Vec::with_capacity(4096 + keys().len() * 8 * 120),
        headers,
        ends: Vec::with_capacity(FAMILIES.len()),
    };
    text.family(
        &KEY_ACTIVE,
        keys().map(|k| (key_labels(k), flag(k.key.status == KeyStatus::Active))),
    );
    text.family(
        &KEY_AGE_SECONDS,
        keys().map(|k| (key_labels(k), k.key.age(k.now).as_secs_f64().floor())),
    );
    text.family(
        &KEY_CREATED_TIMESTAMP_SECONDS,
        keys().map(|k| (key_labels(k), unix_seconds(k.key.created))),
    );
    text.family(
        &KEY_IDLE_SECONDS,
        keys().map(|k| (key_labels(k), k.key.idle(k.now).as_secs_f64().floor())),
    );
    text.family(
        &KEY_LAST_USED_INFO,
        keys().filter_map(|k| {
            let used = k.key.last_used.as_ref()?;
            let labels = Labels {
                fixed: [
                    ("access_key_id", k.label.as_ref()),
                    ("account_id", k.user.account),
                    ("last_used_region", used.region.as_str()),
                    ("last_used_service", used.service.as_str()),
                ],
                tags: &k.user.tags,
                user: Some(k.user.user.name.as_str()),
            };
            Some((labels, 1.0))
        }),
    );
    text.family(
        &KEY_LAST_USED_TIMESTAMP_SECONDS,
        keys().filter_map(|k| Some((key_labels(k), unix_seconds(k.key.last_used.as_ref()?.at)))),
    );
    text.family(
        &KEY_NEVER_USED,
        keys().map(|k| (key_labels(k), flag(k.key.last_used.is_none()))),
    );

    text.family(
        &ACCOUNT_INFO,
        once_per_account(views, |view| {
            let labels = Labels {
                fixed: [
                    ("account_id", view.inventory.account_id.as_str()),
                    ("account_name", view.data.name.as_deref().unwrap_or("")),
                ],
                tags: &[],
                user: None,
            };
            Some((labels, 1.0))
        }),
    );
    text.family(
        &CREDENTIAL_REPORT_GENERATED_TIMESTAMP_SECONDS,
        once_per_account(views, |view| {
            let at = view.inventory.account.report_generated_at?;
            Some((account_labels(view), unix_seconds(at)))
        }),
    );
    // Roles, from each account id's first view: a repeated account would repeat them all.
    let roles = || role_rows(views);
    text.family(
        &ROLE_CREATED_TIMESTAMP_SECONDS,
        roles().map(|(labels, row)| (labels, unix_seconds(row.role.created))),
    );
    text.family(
        &ROLE_IDLE_SECONDS,
        roles().map(|(labels, row)| (labels, row.idle().as_secs_f64())),
    );
    text.family(
        &ROLE_LAST_USED_TIMESTAMP_SECONDS,
        roles().filter_map(|(labels, row)| {
            let used = row.role.last_used.as_ref()?;
            let region = used.region.as_deref().unwrap_or_default();
            // No region is an empty label, which Prometheus stores as no label at all.
            let [account, role, linked] = labels.fixed;
            let labels = Labels {
                fixed: [account, ("last_used_region", region), role, linked],
                tags: labels.tags,
                user: None,
            };
            Some((labels, unix_seconds(used.at)))
        }),
    );
    let role_counts = |pick: fn(&ServiceCounts) -> u32| {
        roles().filter_map(move |(labels, row)| Some((labels, f64::from(pick(row.counts?)))))
    };
    text.family(&ROLE_SERVICES_ACCESSED, role_counts(|c| c.accessed));
    text.family(&ROLE_SERVICES_GRANTED, role_counts(|c| c.granted));
    // Per role and service: the role's labels with service_namespace after
    // service_linked, before the tags, in name order.
    let role_actions = |pick: fn(&TrackedActions) -> u32| {
        roles().flat_map(move |(labels, row)| {
            let actions = row.counts.map_or(&[][..], |c| c.actions.as_slice());
            actions.iter().map(move |tracked| {
                let [account, role, linked] = labels.fixed;
                let labels = Labels {
                    fixed: [
                        account,
                        role,
                        linked,
                        ("service_namespace", tracked.service_namespace.as_str()),
                    ],
                    tags: labels.tags,
                    user: None,
                };
                (labels, f64::from(pick(tracked)))
            })
        })
    };
    text.family(&ROLE_TRACKED_ACTIONS_GRANTED, role_actions(|t| t.granted));
    text.family(&ROLE_TRACKED_ACTIONS_USED, role_actions(|t| t.used));
    text.family(
        &ROOT_ACCESS_KEYS_PRESENT,
        once_per_account(views, |view| {
            let present = view.inventory.account.root_access_keys_present?;
            Some((account_labels(view), flag(present)))
        }),
    );

    // Every user row, `<root_account>` included as for the console facts below: its
    // creation is the account's.
    text.family(
        &USER_CREATED_TIMESTAMP_SECONDS,
        users
            .iter()
            .filter_map(|u| Some((user_labels(u), unix_seconds(u.user.created?)))),
    );
    let login = |pick: fn(&Login) -> Option<f64>| {
        users
            .iter()
            .filter_map(move |u| Some((user_labels(u), pick(u.user.login.as_ref()?)?)))
    };
    text.family(&USER_MFA_ACTIVE, login(|l| l.mfa_active.map(flag)));
    text.family(
        &USER_PASSWORD_ENABLED,
        login(|l| l.password_enabled.map(flag)),
    );
    text.family(
        &USER_PASSWORD_LAST_USED_TIMESTAMP_SECONDS,
        login(|l| l.password_last_used.map(unix_seconds)),
    );
    let counts = |pick: fn(&ServiceCounts) -> u32| {
        users
            .iter()
            .filter_map(move |u| Some((user_labels(u), f64::from(pick(u.counts?)))))
    };
    text.family(&USER_SERVICES_ACCESSED, counts(|c| c.accessed));
    text.family(&USER_SERVICES_GRANTED, counts(|c| c.granted));
    let user_actions = |pick: fn(&TrackedActions) -> u32| {
        users.iter().flat_map(move |u| {
            let actions = u.counts.map_or(&[][..], |c| c.actions.as_slice());
            actions.iter().map(move |tracked| {
                let labels = Labels {
                    fixed: [
                        ("account_id", u.account),
                        ("service_namespace", tracked.service_namespace.as_str()),
                    ],
                    tags: &u.tags,
                    user: Some(u.user.name.as_str()),
                };
                (labels, f64::from(pick(tracked)))
            })
        })
    };
    text.family(&USER_TRACKED_ACTIONS_GRANTED, user_actions(|t| t.granted));
    text.family(&USER_TRACKED_ACTIONS_USED, user_actions(|t| t.used));
    debug_assert_eq!(text.ends.len(), FAMILIES.len());
    text
}

/// A series' labels in name order: the fixed ones, then the user's tags (`tag_*` sorts
/// after every fixed label name but `user`), then `user`.
struct Labels<'a, const N: usize> {
    fixed: [(&'static str, &'a str); N],
    tags: &'a [(String, String)],
    user: Option<&'a str>,
}

/// A role as its series need it: the role, and when its account's roles were read.
struct RoleRow<'a> {
    role: &'a Role,
    read_at: SystemTime,
    counts: Option<&'a ServiceCounts>,
}

impl RoleRow<'_> {
    fn idle(&self) -> std::time::Duration {
        self.role.idle(self.read_at)
    }
}

/// Every role of every account id's first view that has roles, with its labels.
fn role_rows<'v, 'a: 'v>(
    views: &'v [View<'a>],
) -> impl Iterator<Item = (Labels<'a, 3>, RoleRow<'a>)> + 'v {
    once_per_account(views, |view| {
        let roles = view.data.roles.as_deref()?;
        Some((
            view.inventory.account_id.as_str(),
            roles,
            &view.data.service_counts,
        ))
    })
    .flat_map(|(account, roles, counts)| {
        roles.roles.iter().map(move |labelled| {
            let role = &labelled.role;
            let linked = if role.is_service_linked() {
                "true"
            } else {
                "false"
            };
            let labels = Labels {
                fixed: [
                    ("account_id", account),
                    ("role", role.name.as_str()),
                    ("service_linked", linked),
                ],
                tags: &labelled.tag_labels,
                user: None,
            };
            let row = RoleRow {
                role,
                read_at: roles.read_at,
                counts: counts.get(&role.arn),
            };
            (labels, row)
        })
    })
}

fn account_labels<'a>(view: &View<'a>) -> Labels<'a, 1> {
    Labels {
        fixed: [("account_id", view.inventory.account_id.as_str())],
        tags: &[],
        user: None,
    }
}

fn key_labels<'a>(k: &'a KeyRow) -> Labels<'a, 2> {
    Labels {
        fixed: [
            ("access_key_id", k.label.as_ref()),
            ("account_id", k.user.account),
        ],
        tags: &k.user.tags,
        user: Some(k.user.user.name.as_str()),
    }
}

fn user_labels<'a>(u: &'a UserRow) -> Labels<'a, 1> {
    Labels {
        fixed: [("account_id", u.account)],
        tags: &u.tags,
        user: Some(u.user.name.as_str()),
    }
}

/// The Prometheus text format, written by hand for the inventory's gauge families.
struct Text {
    out: Vec<u8>,
    /// Whether each family's HELP and TYPE are written (not in a fragment).
    headers: bool,
    /// Where each family written so far ends in `out`.
    ends: Vec<usize>,
}

fn write_header(out: &mut Vec<u8>, family: &Family) {
    let _ = write!(
        out,
        "# HELP {} {}\n# TYPE {} gauge\n",
        family.name, family.help, family.name
    );
}

impl Text {
    fn family<'a, const N: usize>(
        &mut self,
        family: &Family,
        samples: impl IntoIterator<Item = (Labels<'a, N>, f64)>,
    ) {
        debug_assert_eq!(family.name, FAMILIES[self.ends.len()].name, "in order");
        let mut samples = samples.into_iter().peekable();
        if samples.peek().is_some() {
            self.samples(family, samples);
        }
        self.ends.push(self.out.len());
    }

    fn samples<'a, const N: usize>(
        &mut self,
        family: &Family,
        samples: impl Iterator<Item = (Labels<'a, N>, f64)>,
    ) {
        let out = &mut self.out;
        if self.headers {
            write_header(out, family);
        }
        for (labels, value) in samples {
            out.extend_from_slice(family.name.as_bytes());
            out.push(b'{');
            let fixed = labels.fixed.iter().map(|(n, v)| (*n, *v));
            let tags = labels.tags.iter().map(|(n, v)| (n.as_str(), v.as_str()));
            let user = labels.user.map(|name| ("user", name));
            for (i, (name, value)) in fixed.chain(tags).chain(user).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"=\"");
                escape_label_value(out, value);
                out.push(b'"');
            }
            let _ = writeln!(out, "}} {value}");
        }
    }
}

/// Label values escape backslash, double quote and line feed (the text format's rules).
fn escape_label_value(out: &mut Vec<u8>, value: &str) {
    for byte in value.bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            other => out.push(other),
        }
    }
}

fn flag(value: bool) -> f64 {
    if value { 1.0 } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{LastUse, ServiceCountsByArn, TagsByArn};
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    const DAY: u64 = 86_400;
    const NOW: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn sample() -> Inventory {
        Inventory {
            account_id: "123456789012".into(),
            collected_at: at(NOW),
            users: vec![
                User {
                    name: "ci-bot".into(),
                    arn: "arn:aws:iam::123456789012:user/bots/ci-bot".into(),
                    created: Some(at(NOW - 500 * DAY)),
                    keys: vec![
                        AccessKey {
                            id: "AKIAAAAAAAAAAAAAAAA1".into(),
                            status: KeyStatus::Active,
                            created: at(NOW - 400 * DAY),
                            last_used: Some(LastUse {
                                at: at(NOW - 2 * DAY - 1800),
                                service: "s3".into(),
                                region: "eu-west-1".into(),
                            }),
                        },
                        AccessKey {
                            id: "AKIAAAAAAAAAAAAAAAA2".into(),
                            status: KeyStatus::Inactive,
                            created: at(NOW - 30 * DAY),
                            last_used: None,
                        },
                    ],
                    login: None,
                },
                User {
                    name: "nobody".into(),
                    arn: "arn:aws:iam::123456789012:user/nobody".into(),
                    created: Some(at(NOW - 10 * DAY)),
                    keys: vec![],
                    login: None,
                },
            ],
            account: Default::default(),
        }
    }

    fn accounts(
        inventories: Vec<(Inventory, ServiceCountsByArn, TagsByArn)>,
    ) -> BTreeMap<String, AccountData> {
        inventories
            .into_iter()
            .map(|(inventory, service_counts, tags)| {
                let data = AccountData {
                    name: None,
                    inventory: Some(Arc::new(inventory.clone())),
                    service_counts,
                    tags,
                    ..Default::default()
                };
                (inventory.account_id, data)
            })
            .collect()
    }

    fn one(inventory: Inventory, counts: ServiceCountsByArn) -> BTreeMap<String, AccountData> {
        accounts(vec![(inventory, counts, TagsByArn::new())])
    }

    fn text(snapshot: &Snapshot) -> String {
        String::from_utf8(snapshot.exposition.to_vec()).unwrap()
    }

    #[test]
    fn renders_every_series_of_a_sample_inventory() {
        let mut counts = ServiceCountsByArn::new();
        counts.insert(
            "arn:aws:iam::123456789012:user/bots/ci-bot".into(),
            ServiceCounts {
                accessed: 3,
                granted: 11,
                actions: vec![],
            },
        );
        counts.insert(
            "arn:aws:iam::123456789012:user/deleted".into(),
            ServiceCounts {
                accessed: 1,
                granted: 1,
                actions: vec![],
            },
        );
        let snapshot = Snapshot::build(&one(sample(), counts));
        assert_eq!(
            (snapshot.accounts, snapshot.users, snapshot.keys),
            (1, 2, 2)
        );
        let text = text(&snapshot);
        let expected = include_str!("../tests/fixtures/snapshot-sample.prom");
        assert_eq!(text, expected, "got:\n{text}");
    }

    /// The per-user families of a small inventory, series by series: every user's
    /// creation (`<root_account>`'s is the account's, as the report's root row says), the
    /// console facts where the report gave them, and no series for a fact that is absent
    /// (a creation time the report had as `N/A`; console facts from the API source).
    #[test]
    fn users_render_their_creation_and_console_facts() {
        let user = |name: &str, created: Option<u64>, login: Option<Login>| User {
            name: name.into(),
            arn: format!("arn:aws:iam::123456789012:user/{name}"),
            created: created.map(at),
            keys: vec![],
            login,
        };
        let console = |used: Option<u64>| {
            Some(Login {
                mfa_active: Some(false),
                password_enabled: Some(true),
                password_last_used: used.map(at),
            })
        };
        let no_password = Some(Login {
            mfa_active: Some(false),
            password_enabled: Some(false),
            password_last_used: None,
        });
        let root = User {
            arn: "arn:aws:iam::123456789012:root".into(),
            ..user(
                "<root_account>",
                Some(NOW - 2000 * DAY),
                Some(Login {
                    mfa_active: Some(true),
                    password_enabled: None,
                    password_last_used: Some(at(NOW - DAY)),
                }),
            )
        };
        let inventory = Inventory {
            users: vec![
                // A console password never used.
                user("dana", Some(NOW - 200 * DAY), console(None)),
                user("eve", Some(NOW - 300 * DAY), console(Some(NOW - 50 * DAY))),
                // From the API source: no console facts.
                user("svc", Some(NOW - 20 * DAY), None),
                user("odd", None, no_password),
            ],
            account: crate::inventory::AccountFacts {
                root: Some(root),
                ..Default::default()
            },
            ..sample()
        };
        let text = text(&Snapshot::build(&one(inventory, ServiceCountsByArn::new())));
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("aws_iam_user_"))
            .collect();
        let labels = |user: &str| format!("{{account_id=\"123456789012\",user=\"{user}\"}}");
        let expected = [
            ("created_timestamp_seconds", "dana", NOW - 200 * DAY),
            ("created_timestamp_seconds", "eve", NOW - 300 * DAY),
            ("created_timestamp_seconds", "svc", NOW - 20 * DAY),
            (
                "created_timestamp_seconds",
                "<root_account>",
                NOW - 2000 * DAY,
            ),
            ("mfa_active", "dana", 0),
            ("mfa_active", "eve", 0),
            ("mfa_active", "odd", 0),
            ("mfa_active", "<root_account>", 1),
            ("password_enabled", "dana", 1),
            ("password_enabled", "eve", 1),
            ("password_enabled", "odd", 0),
            (
                "password_last_used_timestamp_seconds",
                "eve",
                NOW - 50 * DAY,
            ),
            (
                "password_last_used_timestamp_seconds",
                "<root_account>",
                NOW - DAY,
            ),
        ]
        .map(|(family, user, value)| format!("aws_iam_user_{family}{} {value}", labels(user)));
        assert_eq!(series, expected, "{text}");
        assert!(text.contains(
            "# HELP aws_iam_user_created_timestamp_seconds Unix time the user was created \
             (IAM's CreateDate, or the credential report's user_creation_time; for \
             <root_account>, the account's creation). Cached: refreshed in the background, \
             not at scrape time.\n# TYPE aws_iam_user_created_timestamp_seconds gauge\n"
        ));
        assert_eq!(
            parse(&text).map(|e| repeated(&e.samples, identity)),
            Ok(vec![])
        );
    }

    /// The role families of an account, series by series: creation and idle time for
    /// every role (idle since creation for one IAM has no use of), last use with its
    /// region only where IAM has one, service counts where a job gave them, service-linked
    /// roles marked, tag labels in place, and a repeated account's roles rendered once.
    #[test]
    fn roles_render_their_creation_idle_time_and_last_use() {
        use crate::inventory::{LabelledRole, RoleLastUse, Roles};
        let role = |name: &str, path: &str, created: u64, used: Option<(u64, Option<&str>)>| {
            LabelledRole {
                role: Role {
                    name: name.into(),
                    arn: format!("arn:aws:iam::123456789012:role{path}{name}"),
                    path: path.into(),
                    created: at(created),
                    tags: vec![("team".into(), "payments".into())],
                    last_used: used.map(|(t, region)| RoleLastUse {
                        at: at(t),
                        region: region.map(Into::into),
                    }),
                },
                tag_labels: if name == "deployer" {
                    vec![("tag_team".into(), "payments".into())]
                } else {
                    vec![]
                },
            }
        };
        let roles = Roles {
            read_at: at(NOW + 3600),
            roles: vec![
                role(
                    "deployer",
                    "/apps/",
                    NOW - 400 * DAY,
                    Some((NOW - DAY, Some("eu-west-1"))),
                ),
                role("idle", "/", NOW - 200 * DAY, None),
                role(
                    "AWSServiceRoleForSupport",
                    "/aws-service-role/support.amazonaws.com/",
                    NOW - 900 * DAY,
                    Some((NOW - 10 * DAY, None)),
                ),
            ],
        };
        let mut service_counts = ServiceCountsByArn::new();
        service_counts.insert(
            "arn:aws:iam::123456789012:role/apps/deployer".into(),
            ServiceCounts {
                accessed: 2,
                granted: 5,
                actions: vec![],
            },
        );
        let data = AccountData {
            inventory: Some(Arc::new(sample())),
            roles: Some(Arc::new(roles)),
            service_counts,
            ..Default::default()
        };
        // The same account twice, as an inconsistent source could list it.
        let mut twice = BTreeMap::new();
        twice.insert("a".to_string(), data.clone());
        twice.insert("b".to_string(), data);
        let text = text(&Snapshot::build(&twice));
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("aws_iam_role_"))
            .collect();
        let account = "account_id=\"123456789012\"";
        let expected = [
            format!(
                "aws_iam_role_created_timestamp_seconds{{{account},role=\"deployer\",service_linked=\"false\",tag_team=\"payments\"}} {}",
                NOW - 400 * DAY
            ),
            format!(
                "aws_iam_role_created_timestamp_seconds{{{account},role=\"idle\",service_linked=\"false\"}} {}",
                NOW - 200 * DAY
            ),
            format!(
                "aws_iam_role_created_timestamp_seconds{{{account},role=\"AWSServiceRoleForSupport\",service_linked=\"true\"}} {}",
                NOW - 900 * DAY
            ),
            format!(
                "aws_iam_role_idle_seconds{{{account},role=\"deployer\",service_linked=\"false\",tag_team=\"payments\"}} {}",
                DAY + 3600
            ),
            format!(
                "aws_iam_role_idle_seconds{{{account},role=\"idle\",service_linked=\"false\"}} {}",
                200 * DAY + 3600
            ),
            format!(
                "aws_iam_role_idle_seconds{{{account},role=\"AWSServiceRoleForSupport\",service_linked=\"true\"}} {}",
                10 * DAY + 3600
            ),
            format!(
                "aws_iam_role_last_used_timestamp_seconds{{{account},last_used_region=\"eu-west-1\",role=\"deployer\",service_linked=\"false\",tag_team=\"payments\"}} {}",
                NOW - DAY
            ),
            format!(
                "aws_iam_role_last_used_timestamp_seconds{{{account},last_used_region=\"\",role=\"AWSServiceRoleForSupport\",service_linked=\"true\"}} {}",
                NOW - 10 * DAY
            ),
            format!(
                "aws_iam_role_services_accessed{{{account},role=\"deployer\",service_linked=\"false\",tag_team=\"payments\"}} 2"
            ),
            format!(
                "aws_iam_role_services_granted{{{account},role=\"deployer\",service_linked=\"false\",tag_team=\"payments\"}} 5"
            ),
        ];
        assert_eq!(series, expected, "{text}");
        assert!(text.contains("# TYPE aws_iam_role_idle_seconds gauge\n"));
    }

    /// Tracked actions per user and service, with `service_namespace` before the tags and
    /// the user, and none for a user whose job listed none.
    #[test]
    fn users_render_their_tracked_actions_per_service() {
        use crate::inventory::TrackedActions;
        let mut counts = ServiceCountsByArn::new();
        counts.insert(
            "arn:aws:iam::123456789012:user/bots/ci-bot".into(),
            ServiceCounts {
                accessed: 2,
                granted: 4,
                actions: vec![
                    TrackedActions {
                        service_namespace: "s3".into(),
                        granted: 12,
                        used: 3,
                    },
                    TrackedActions {
                        service_namespace: "ec2".into(),
                        granted: 5,
                        used: 1,
                    },
                ],
            },
        );
        counts.insert(
            "arn:aws:iam::123456789012:user/nobody".into(),
            ServiceCounts {
                accessed: 0,
                granted: 1,
                actions: vec![],
            },
        );
        let mut tags = TagsByArn::new();
        tags.insert(
            "arn:aws:iam::123456789012:user/bots/ci-bot".into(),
            vec![("tag_team".into(), "ci".into())],
        );
        let text = text(&Snapshot::build(&accounts(vec![(sample(), counts, tags)])));
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("aws_iam_user_tracked_actions_"))
            .collect();
        let labels = |namespace: &str| {
            format!(
                "{{account_id=\"123456789012\",service_namespace=\"{namespace}\",tag_team=\"ci\",user=\"ci-bot\"}}"
            )
        };
        assert_eq!(
            series,
            [
                format!("aws_iam_user_tracked_actions_granted{} 12", labels("s3")),
                format!("aws_iam_user_tracked_actions_granted{} 5", labels("ec2")),
                format!("aws_iam_user_tracked_actions_used{} 3", labels("s3")),
                format!("aws_iam_user_tracked_actions_used{} 1", labels("ec2")),
            ]
        );
    }

    #[test]
    fn an_empty_account_renders_only_its_info() {
        let inventory = Inventory {
            users: vec![],
            ..sample()
        };
        let snapshot = Snapshot::build(&one(inventory, ServiceCountsByArn::new()));
        assert_eq!(
            text(&snapshot),
            "# HELP aws_iam_account_info Always 1: an account this exporter watches, with its configured or Organizations name (empty without one). Join on account_id to add account_name to other series. Cached: refreshed in the background, not at scrape time.\n\
             # TYPE aws_iam_account_info gauge\n\
             aws_iam_account_info{account_id=\"123456789012\",account_name=\"\"} 1\n"
        );
        assert!(Snapshot::build(&BTreeMap::new()).exposition.is_empty());
    }

    #[test]
    fn label_values_are_escaped() {
        let mut inventory = sample();
        inventory.users[0].name = "we\"ird\\name".into();
        let text = text(&Snapshot::build(&one(inventory, Default::default())));
        assert!(text.contains(r#"user="we\"ird\\name""#), "{text}");
    }

    #[test]
    fn accounts_share_each_family_and_tags_sit_before_user() {
        let first = sample();
        let mut second = sample();
        second.account_id = "210987654321".into();
        second.users.truncate(1);
        second.users[0].arn = "arn:aws:iam::210987654321:user/bots/ci-bot".into();
        let mut tags = TagsByArn::new();
        tags.insert(
            second.users[0].arn.clone(),
            vec![
                ("tag_owner".to_string(), "ana@example.com".to_string()),
                ("tag_team".to_string(), "pay\"ments".to_string()),
            ],
        );
        let mut counts = ServiceCountsByArn::new();
        counts.insert(
            second.users[0].arn.clone(),
            ServiceCounts {
                accessed: 2,
                granted: 5,
                actions: vec![],
            },
        );
        let mut all = accounts(vec![
            (first, ServiceCountsByArn::new(), TagsByArn::new()),
            (second, counts, tags),
        ]);
        all.get_mut("210987654321").unwrap().name = Some("payments-prod".into());
        let snapshot = Snapshot::build(&all);
        assert_eq!(
            (snapshot.accounts, snapshot.users, snapshot.keys),
            (2, 3, 4)
        );
        // One user name in two accounts is two users.
        assert_eq!(snapshot.duplicates_dropped, 0);
        let text = text(&snapshot);

        // One HELP and TYPE per family, however many accounts.
        for family in ["aws_iam_access_key_active", "aws_iam_account_info"] {
            assert_eq!(text.matches(&format!("# TYPE {family} gauge")).count(), 1);
        }
        let tagged = "account_id=\"210987654321\",tag_owner=\"ana@example.com\",tag_team=\"pay\\\"ments\",user=\"ci-bot\"";
        assert!(
            text.contains(&format!(
                "aws_iam_access_key_active{{access_key_id=\"AKIAAAAAAAAAAAAAAAA1\",{tagged}}} 1"
            )),
            "{text}"
        );
        assert!(
            text.contains(
                "aws_iam_access_key_last_used_info{access_key_id=\"AKIAAAAAAAAAAAAAAAA1\",account_id=\"210987654321\",last_used_region=\"eu-west-1\",last_used_service=\"s3\",tag_owner=\"ana@example.com\",tag_team=\"pay\\\"ments\",user=\"ci-bot\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(&format!("aws_iam_user_services_granted{{{tagged}}} 5")),
            "{text}"
        );
        assert!(text.contains(
            "aws_iam_account_info{account_id=\"210987654321\",account_name=\"payments-prod\"} 1"
        ));
        // The untagged account's series carry no tag labels.
        assert!(text.contains("aws_iam_access_key_active{access_key_id=\"AKIAAAAAAAAAAAAAAAA1\",account_id=\"123456789012\",user=\"ci-bot\"} 1"));
        // Samples of a family stay together: the first account's, then the second's.
        let active: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("aws_iam_access_key_active{"))
            .collect();
        assert_eq!(active.len(), 4);
    }

    #[test]
    fn a_user_listed_twice_renders_once_with_its_first_facts_and_every_key() {
        let mut inventory = sample();
        let mut again = inventory.users[0].clone();
        again.arn = "arn:aws:iam::123456789012:user/elsewhere/ci-bot".into();
        again.keys[0].id = "AKIAAAAAAAAAAAAAAAA3".into();
        again.keys[1].last_used = again.keys[0].last_used.clone(); // same id, other facts
        inventory.users.push(again);
        let mut tags = TagsByArn::new();
        tags.insert(
            inventory.users[0].arn.clone(),
            vec![("tag_team".into(), "first".into())],
        );
        tags.insert(
            inventory.users[2].arn.clone(),
            vec![("tag_team".into(), "second".into())],
        );
        let all = accounts(vec![(inventory, ServiceCountsByArn::new(), tags)]);
        let snapshot = Snapshot::build(&all);
        assert_eq!(
            (snapshot.users, snapshot.keys, snapshot.duplicates_dropped),
            (2, 3, 2)
        );
        let text = text(&snapshot);
        let active: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("aws_iam_access_key_active{"))
            .collect();
        let labels = |id| {
            format!(
                "{{access_key_id=\"{id}\",account_id=\"123456789012\",tag_team=\"first\",user=\"ci-bot\"}}"
            )
        };
        assert_eq!(
            active,
            [
                format!(
                    "aws_iam_access_key_active{} 1",
                    labels("AKIAAAAAAAAAAAAAAAA1")
                ),
                format!(
                    "aws_iam_access_key_active{} 0",
                    labels("AKIAAAAAAAAAAAAAAAA2")
                ),
                format!(
                    "aws_iam_access_key_active{} 1",
                    labels("AKIAAAAAAAAAAAAAAAA3")
                ),
            ]
        );
        // The first occurrence's facts about the repeated key.
        let never_used = labels("AKIAAAAAAAAAAAAAAAA2");
        assert!(text.contains(&format!("aws_iam_access_key_never_used{never_used} 1\n")));
    }

    #[test]
    fn two_entries_for_one_account_render_it_once() {
        let first = sample();
        let mut second = sample();
        second.users[1].keys = vec![second.users[0].keys[1].clone()];
        second.users[1].name = "someone".into();
        second.users[1].arn = "arn:aws:iam::123456789012:user/someone".into();
        second.account.report_generated_at = Some(at(NOW - DAY));
        let mut all = BTreeMap::new();
        for (entry, inventory, name) in [("a", first, "alpha"), ("b", second, "beta")] {
            let data = AccountData {
                name: Some(name.into()),
                inventory: Some(Arc::new(inventory)),
                ..Default::default()
            };
            all.insert(entry.to_string(), data);
        }
        let snapshot = Snapshot::build(&all);
        // The account again, ci-bot again and its two keys again.
        assert_eq!(snapshot.duplicates_dropped, 1 + 1 + 2);
        assert_eq!(
            (snapshot.accounts, snapshot.users, snapshot.keys),
            (1, 3, 3)
        );
        let text = text(&snapshot);
        let info: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("aws_iam_account_info{"))
            .collect();
        assert_eq!(
            info,
            ["aws_iam_account_info{account_id=\"123456789012\",account_name=\"alpha\"} 1"]
        );
        // What only the second entry has is still rendered.
        assert!(text.contains("aws_iam_credential_report_generated_timestamp_seconds{account_id=\"123456789012\"} 1767139200\n"), "{text}");
        assert!(text.contains(
            "access_key_id=\"AKIAAAAAAAAAAAAAAAA2\",account_id=\"123456789012\",user=\"someone\"}"
        ));
        assert_eq!(
            parse(&text).map(|e| repeated(&e.samples, identity)),
            Ok(vec![])
        );
    }

    #[test]
    fn masked_key_ids_that_collide_stay_apart_and_repeats_go() {
        let mut inventory = sample();
        let keys = &mut inventory.users[0].keys;
        keys[1].id = "AKIAZZZZZZZZZZZZAAA1".into(); // masks like keys[0]
        let repeat = keys[1].clone();
        keys.push(repeat);
        crate::filter::mask_key_ids(&mut inventory);
        let snapshot = Snapshot::build(&one(inventory, ServiceCountsByArn::new()));
        assert_eq!(
            (
                snapshot.keys,
                snapshot.key_ids_disambiguated,
                snapshot.duplicates_dropped
            ),
            (2, 1, 1)
        );
        let text = text(&snapshot);
        let ids: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("aws_iam_access_key_active{"))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert_eq!(ids, ["AKIA****AAA1", "AKIA****AAA1#2"]);
        assert!(is_masked("AKIA****AAA1") && !is_masked("AKIAAAAAAAAAAAAAAAA1"));
    }

    #[test]
    fn tag_labels_are_sorted_and_each_name_kept_once() {
        let mut inventory = sample();
        inventory.users.truncate(1);
        let mut tags = TagsByArn::new();
        tags.insert(
            inventory.users[0].arn.clone(),
            vec![
                ("tag_team".into(), "b".into()),
                ("tag_owner".into(), "o".into()),
                ("tag_team".into(), "c".into()),
            ],
        );
        let all = accounts(vec![(inventory, ServiceCountsByArn::new(), tags)]);
        let text = text(&Snapshot::build(&all));
        assert!(
            text.contains(
                "account_id=\"123456789012\",tag_owner=\"o\",tag_team=\"b\",user=\"ci-bot\"}"
            ),
            "{text}"
        );
        assert!(parse(&text).is_ok());
    }

    /// The property: random inventories full of repeats (users, keys, accounts, masked
    /// ids, tags) render to well-formed text with no series twice, losing no key.
    #[test]
    fn no_exposition_holds_a_series_twice_whatever_the_sources_repeat() {
        // Seeds that had: an account id twice, a user twice with other tags, a key id
        // twice, masked ids alike, one user name in two accounts.
        let mut seen = [0; 5];
        for seed in 0..500 {
            let accounts = random_accounts(&mut SplitMix64(seed));
            let snapshot = Snapshot::build(&accounts);
            let text = text(&snapshot);
            let exposition = parse(&text).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{text}"));
            assert_eq!(
                repeated(&exposition.samples, identity),
                Vec::<String>::new(),
                "seed {seed}\n{text}"
            );
            // Coarser: one sample per account, user or key in each family, whatever its tags.
            assert_eq!(
                repeated(&exposition.samples, entity),
                Vec::<String>::new(),
                "seed {seed}\n{text}"
            );

            let expected = Expected::of(&accounts);
            let active: Vec<&Sample> = exposition
                .samples
                .iter()
                .filter(|s| s.name == "aws_iam_access_key_active")
                .collect();
            assert_eq!(active.len(), expected.keys, "seed {seed}\n{text}");
            for (account, user, id) in &expected.key_ids {
                let found = active.iter().any(|s| {
                    s.label("account_id") == account
                        && s.label("user") == user
                        && s.label("access_key_id") == id
                });
                assert!(
                    found,
                    "seed {seed}: key {id:?} of {user:?} in {account} is missing\n{text}"
                );
            }
            let info = exposition
                .samples
                .iter()
                .filter(|s| s.name == "aws_iam_account_info");
            assert_eq!(info.count(), expected.accounts, "seed {seed}");
            assert_eq!(snapshot.accounts, expected.accounts, "seed {seed}");
            assert_eq!(
                snapshot.duplicates_dropped, expected.dropped,
                "seed {seed}\n{text}"
            );
            let had = [
                accounts.len() > expected.accounts,
                expected.user_with_two_tag_sets,
                expected.keys_dropped > 0,
                snapshot.key_ids_disambiguated > 0,
                expected.name_in_two_accounts,
            ];
            for (count, had) in seen.iter_mut().zip(had) {
                *count += usize::from(had);
            }
        }
        // The inputs are as repetitive as the test says.
        assert!(seen.iter().all(|&count| count >= 25), "{seen:?}");
    }

    /// Up to a dozen entries of distinct account ids, each as random as `random_accounts`
    /// makes them.
    fn random_distinct_accounts(rng: &mut SplitMix64) -> BTreeMap<String, AccountData> {
        let mut all = BTreeMap::new();
        for n in 0..rng.below(13) {
            let id = format!("{:012}", 100_000 + rng.below(1_000) * 13 + n);
            let (_, data) = random_entries(rng, 1, &[&id])
                .pop_first()
                .expect("one entry");
            all.insert(format!("entry-{n:02}"), data);
        }
        all
    }

    fn fragments(accounts: &BTreeMap<String, AccountData>) -> Vec<AccountFragment> {
        accounts.values().map(AccountFragment::render).collect()
    }

    /// The served gzip stream of a snapshot (with a tail of own metrics), decompressed.
    fn gunzip(snapshot: &Snapshot, tail: &str) -> Vec<u8> {
        use std::io::Read;
        let exposition = crate::exposition::Exposition::assemble(
            &snapshot.exposition,
            &snapshot.gzip_prefix,
            tail.into(),
        );
        let gzip = [&exposition.gzip[0][..], &exposition.gzip[1][..]].concat();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gzip[..])
            .read_to_end(&mut out)
            .expect("one valid gzip member");
        out
    }

    fn counters(s: &Snapshot) -> [usize; 5] {
        [
            s.accounts,
            s.users,
            s.keys,
            s.duplicates_dropped,
            s.key_ids_disambiguated,
        ]
    }

    /// The property: fragments assembled are the built snapshot, byte for byte, with the
    /// same counts, and their gzip stream decodes to that text; with distinct account
    /// ids (assembled from pieces) and with entries sharing one (built whole).
    #[test]
    fn assembled_fragments_are_the_built_snapshot_byte_for_byte() {
        let (mut distinct, mut shared) = (0, 0);
        // One for all seeds: later snapshots are written over earlier ones' bytes.
        let recycler = &mut Recycler::default();
        let mut previous = None;
        for seed in 0..600 {
            let rng = &mut SplitMix64(seed);
            let accounts = if seed % 3 == 0 {
                random_accounts(rng)
            } else {
                random_distinct_accounts(rng)
            };
            let built = Snapshot::build(&accounts);
            let fragments = fragments(&accounts);
            let assembled = Snapshot::assemble(&fragments, recycler);
            assert_eq!(
                text(&assembled),
                text(&built),
                "seed {seed}: assembled, then built"
            );
            assert_eq!(counters(&assembled), counters(&built), "seed {seed}");
            let tail = "iam_key_exporter_refresh_success 1\n";
            let served = [&built.exposition[..], tail.as_bytes()].concat();
            assert_eq!(gunzip(&assembled, tail), served, "seed {seed}");
            assert_eq!(gunzip(&built, tail), served, "seed {seed}");
            let ids: HashSet<&str> = fragments.iter().filter_map(|f| f.account_id()).collect();
            if ids.len() == fragments.iter().filter_map(|f| f.account_id()).count() {
                distinct += usize::from(fragments.len() > 3);
            } else {
                shared += 1;
            }
            // The one before stays served while this one is assembled.
            if let Some((snapshot, text)) = previous.replace((assembled.clone(), text(&built))) {
                assert_eq!(self::text(&snapshot), text, "seed {seed}: overwritten");
            }
        }
        // Both ways were taken, the first with many accounts.
        assert!(distinct >= 100 && shared >= 50, "{distinct} {shared}");
    }

    #[test]
    fn fragments_of_nothing_assemble_to_nothing() {
        let recycler = &mut Recycler::default();
        let empty = Snapshot::assemble(&[], recycler);
        assert!(empty.exposition.is_empty());
        assert_eq!(counters(&empty), [0; 5]);
        assert!(gunzip(&empty, "").is_empty());
        // An entry without an inventory yet renders nothing, as in `build`.
        let mut all = one(sample(), ServiceCountsByArn::new());
        all.insert("waiting".into(), AccountData::default());
        let assembled = Snapshot::assemble(&fragments(&all), recycler);
        assert_eq!(text(&assembled), text(&Snapshot::build(&all)));
        assert_eq!(assembled.accounts, 1);
        let waiting = AccountFragment::render(&AccountData::default());
        assert_eq!(waiting.account_id(), None);
    }

    #[test]
    fn the_exposition_parser_finds_repeats_and_refuses_malformed_text() {
        let head = "# HELP m Help.\n# TYPE m gauge\n";
        let parsed = |samples: &str| parse(&format!("{head}{samples}"));
        // The same labels in another order, a value holding an escaped quote and a comma.
        let twice = parsed("m{a=\"x\\\",y\",b=\"1\"} 1\nm{b=\"1\",a=\"x\\\",y\"} 2\n").unwrap();
        assert_eq!(repeated(&twice.samples, identity).len(), 1);
        // An empty label is no label.
        let empty = parsed("m{a=\"\",b=\"1\"} 1\nm{b=\"1\"} 1\n").unwrap();
        assert_eq!(repeated(&empty.samples, identity).len(), 1);
        // Escapes are read, not compared raw: `x\",y` and `x\"` differ.
        let apart =
            parsed("m{a=\"x\\\",y\"} 1\nm{a=\"x\\\"\"} 1\nm{a=\"x\\\\\"} 1\nm 1\n").unwrap();
        assert_eq!(repeated(&apart.samples, identity), Vec::<String>::new());
        assert_eq!(apart.samples[0].label("a"), "x\",y");
        // Tags do not tell a user's series apart.
        let tagged = parsed("m{tag_t=\"1\",user=\"u\"} 1\nm{tag_t=\"2\",user=\"u\"} 1\n").unwrap();
        assert_eq!(repeated(&tagged.samples, identity), Vec::<String>::new());
        assert_eq!(repeated(&tagged.samples, entity).len(), 1);

        for bad in [
            "m{a=\"x} 1\n",
            "m{a=\"x\"} \n",
            "m{a=\"x\"}1\n",
            "m{a=\"x\"} one\n",
            "m{a=\"x\",a=\"y\"} 1\n",
            "m{a=\"\\q\"} 1\n",
            "m{a=\"x\",} 1\n",
            "m{1a=\"x\"} 1\n",
            "n 1\n",
            "m 1\n# HELP o Help.\n# TYPE o gauge\no 1\n# HELP m Help.\n# TYPE m gauge\nm 2\n",
        ] {
            assert!(parsed(bad).is_err(), "{bad:?} was taken");
        }
        assert!(parse("m 1\n").is_err(), "a sample before its TYPE");
        assert!(parse("# HELP m Help.\n# HELP m Help.\n# TYPE m gauge\nm 1\n").is_err());
        assert!(
            parse("# HELP m Help.\n# TYPE m gauge\nm 1").is_err(),
            "no final newline"
        );
        assert!(parse(head).is_err(), "a family without samples");
    }

    /// SplitMix64: a small deterministic generator for the property test.
    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn chance(&mut self, one_in: usize) -> bool {
            self.below(one_in) == 0
        }

        fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
            &from[self.below(from.len())]
        }
    }

    /// One to three entries over two account ids, so that entries often share one, with
    /// users, keys, service counts and tags drawn from small pools so that they repeat.
    fn random_accounts(rng: &mut SplitMix64) -> BTreeMap<String, AccountData> {
        let entries = 1 + rng.below(3);
        random_entries(rng, entries, &["111111111111", "222222222222"])
    }

    /// `entries` entries named `entry-0`... whose account ids are drawn from `accounts`.
    fn random_entries(
        rng: &mut SplitMix64,
        entries: usize,
        accounts: &[&str],
    ) -> BTreeMap<String, AccountData> {
        const NAMES: [&str; 6] = [
            "alice",
            "bob",
            "we\"ird\\na,me}",
            "new\nline",
            "<root_account>",
            "",
        ];
        // The first two mask alike, and so do the next two.
        const KEY_IDS: [&str; 8] = [
            "AKIAAAAAAAAAAAAAAAA1",
            "AKIAZZZZZZZZZZZZAAA1",
            "ASIAAAAAAAAAAAAAAAA2",
            "ASIAZZZZZZZZZZZZAAA2",
            "key_1",
            "key_2",
            "",
            "x\"y",
        ];
        const VALUES: [&str; 5] = ["", "a", "a\"b", "x,y}", "a\\"];
        let mut all = BTreeMap::new();
        for entry in 0..entries {
            let account = *rng.pick(accounts);
            let key = |rng: &mut SplitMix64| AccessKey {
                id: rng.pick(&KEY_IDS).to_string(),
                status: *rng.pick(&[KeyStatus::Active, KeyStatus::Inactive]),
                created: at(NOW - rng.pick(&[1, 400]) * DAY),
                last_used: rng.chance(2).then(|| LastUse {
                    at: at(NOW - rng.pick(&[0, 3]) * DAY),
                    service: rng.pick(&["s3", "N/A"]).to_string(),
                    region: rng.pick(&["eu-west-1", "N/A"]).to_string(),
                }),
            };
            let user = |rng: &mut SplitMix64, name: &str, arn: String| User {
                name: name.into(),
                arn,
                created: rng.chance(2).then(|| at(NOW - rng.pick(&[1, 400]) * DAY)),
                keys: (0..rng.below(4)).map(|_| key(rng)).collect(),
                login: rng.chance(2).then(|| Login {
                    mfa_active: rng.chance(2).then(|| rng.chance(2)),
                    password_enabled: rng.chance(2).then(|| rng.chance(2)),
                    password_last_used: rng.chance(2).then(|| at(NOW - DAY)),
                }),
            };
            let users = (0..rng.below(6))
                .map(|_| {
                    let name = *rng.pick(&NAMES);
                    let path = rng.pick(&["", "bots/"]);
                    user(
                        rng,
                        name,
                        format!("arn:aws:iam::{account}:user/{path}{name}"),
                    )
                })
                .collect();
            let root = rng.chance(2).then(|| {
                let name = rng.pick(&["<root_account>", "alice"]);
                user(rng, name, format!("arn:aws:iam::{account}:root"))
            });
            let mut inventory = Inventory {
                account_id: account.into(),
                collected_at: at(NOW - rng.below(2) as u64 * DAY),
                users,
                account: crate::inventory::AccountFacts {
                    root_access_keys_present: rng.chance(2).then(|| rng.chance(2)),
                    root,
                    report_generated_at: rng.chance(2).then(|| at(NOW - DAY)),
                },
            };
            if rng.chance(3) {
                crate::filter::mask_key_ids(&mut inventory);
            }
            let mut data = AccountData {
                name: rng
                    .chance(2)
                    .then(|| rng.pick(&["prod", "pr\"od", ""]).to_string()),
                ..Default::default()
            };
            let arns = inventory
                .users
                .iter()
                .chain(&inventory.account.root)
                .map(|u| &u.arn);
            for arn in arns {
                if rng.chance(2) {
                    let counts = ServiceCounts {
                        accessed: rng.below(3) as u32,
                        granted: 3,
                        actions: vec![],
                    };
                    data.service_counts.insert(arn.clone(), counts);
                }
                if rng.chance(2) {
                    let wanted: Vec<String> = ["owner", "team"].map(String::from).to_vec();
                    let mut tags: Vec<(String, String)> = (0..rng.below(4))
                        .map(|_| {
                            let key = rng.pick(&["owner", "team", "Team"]).to_string();
                            (key, rng.pick(&VALUES).to_string())
                        })
                        .collect();
                    tags = if rng.chance(4) {
                        // Not as `tag_labels` makes them: unsorted, a name twice.
                        tags.into_iter()
                            .map(|(k, v)| (crate::config::tag_label_name(&k), v))
                            .collect()
                    } else {
                        crate::inventory::tag_labels(&wanted, &tags)
                    };
                    data.tags.insert(arn.clone(), tags);
                }
            }
            data.inventory = Some(Arc::new(inventory));
            all.insert(format!("entry-{entry}"), data);
        }
        all
    }

    /// What the rules in `Snapshot::build` leave of some accounts, worked out apart from
    /// the rendering: keys by distinct id, masked ones by distinct key.
    struct Expected {
        accounts: usize,
        keys: usize,
        dropped: usize,
        key_ids: Vec<(String, String, String)>,
        keys_dropped: usize,
        user_with_two_tag_sets: bool,
        name_in_two_accounts: bool,
    }

    impl Expected {
        fn of(all: &BTreeMap<String, AccountData>) -> Expected {
            let inventories: Vec<(&Inventory, &AccountData)> = all
                .values()
                .filter_map(|data| Some((data.inventory.as_deref()?, data)))
                .collect();
            let mut accounts: Vec<&str> = inventories
                .iter()
                .map(|(i, _)| i.account_id.as_str())
                .collect();
            accounts.sort();
            accounts.dedup();
            // (account, user) → its keys in rendering order, and its tags in each occurrence.
            struct Seen<'a> {
                id: (&'a str, &'a str),
                keys: Vec<&'a AccessKey>,
                tags: Vec<Option<&'a TagLabels>>,
            }
            let mut users: Vec<Seen> = Vec::new();
            let mut occurrences = 0;
            for (inventory, data) in &inventories {
                for user in inventory.users.iter().chain(&inventory.account.root) {
                    occurrences += 1;
                    let id = (inventory.account_id.as_str(), user.name.as_str());
                    let tags = data.tags.get(&user.arn);
                    match users.iter_mut().find(|seen| seen.id == id) {
                        Some(seen) => {
                            seen.keys.extend(&user.keys);
                            seen.tags.push(tags);
                        }
                        None => users.push(Seen {
                            id,
                            keys: user.keys.iter().collect(),
                            tags: vec![tags],
                        }),
                    }
                }
            }
            let (mut keys, mut all_keys, mut key_ids) = (0, 0, Vec::new());
            for Seen {
                id: (account, user),
                keys: list,
                ..
            } in &users
            {
                all_keys += list.len();
                let mut kept: Vec<&AccessKey> = Vec::new();
                for &key in list {
                    let masked = key.id.contains('*');
                    let new = if masked {
                        !kept.contains(&key)
                    } else {
                        !kept.iter().any(|k| k.id == key.id)
                    };
                    if new {
                        if !kept.iter().any(|k| k.id == key.id) {
                            key_ids.push((account.to_string(), user.to_string(), key.id.clone()));
                        }
                        kept.push(key);
                    }
                }
                keys += kept.len();
            }
            let empty = TagLabels::new();
            let user_with_two_tag_sets = users.iter().any(|seen| {
                let tags: Vec<&TagLabels> = seen.tags.iter().map(|t| t.unwrap_or(&empty)).collect();
                tags.iter().any(|t| *t != tags[0])
            });
            let name_in_two_accounts = users.iter().any(|one| {
                let (account, name) = one.id;
                users
                    .iter()
                    .any(|other| other.id.1 == name && other.id.0 != account)
            });
            Expected {
                accounts: accounts.len(),
                keys,
                dropped: (inventories.len() - accounts.len())
                    + (occurrences - users.len())
                    + (all_keys - keys),
                key_ids,
                keys_dropped: all_keys - keys,
                user_with_two_tag_sets,
                name_in_two_accounts,
            }
        }
    }

    /// A sample line, its labels unescaped.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
    }

    impl Sample {
        fn label(&self, name: &str) -> &str {
            let found = self.labels.iter().find(|(n, _)| n == name);
            found.map_or("", |(_, v)| v.as_str())
        }
    }

    struct Exposition {
        samples: Vec<Sample>,
    }

    /// Reads the text format as this module writes it (gauges with HELP and TYPE, no
    /// timestamps), strictly: every line must parse, each family's HELP and TYPE come
    /// once, before its samples, which stay together.
    fn parse(text: &str) -> Result<Exposition, String> {
        let Some(body) = text.strip_suffix('\n') else {
            return Err("no final newline".into());
        };
        let mut families: Vec<String> = Vec::new();
        // The family, whether its TYPE was read, and its samples so far.
        let mut current: Option<(String, bool, usize)> = None;
        let mut samples = Vec::new();
        for (n, line) in body.split('\n').enumerate() {
            let fail = |why: &str| Err(format!("line {}: {why}: {line:?}", n + 1));
            if let Some(help) = line.strip_prefix("# HELP ") {
                let name = help.split(' ').next().unwrap_or("");
                if !is_name(name, true) || families.iter().any(|f| f == name) {
                    return fail("a family's HELP again, or a bad name");
                }
                if current
                    .as_ref()
                    .is_some_and(|(_, _, samples)| *samples == 0)
                {
                    return fail("a family without samples before");
                }
                families.push(name.to_string());
                current = Some((name.to_string(), false, 0));
            } else if let Some(kind) = line.strip_prefix("# TYPE ") {
                match &mut current {
                    Some((name, typed, _)) if !*typed && kind == format!("{name} gauge") => {
                        *typed = true
                    }
                    _ => return fail("a TYPE not right after its HELP"),
                }
            } else if line.starts_with('#') {
                return fail("another comment");
            } else {
                let sample = match parse_sample(line) {
                    Ok(sample) => sample,
                    Err(why) => return fail(&why),
                };
                match &mut current {
                    Some((name, true, count)) if *name == sample.name => {
                        *count += 1;
                        samples.push(sample);
                    }
                    _ => return fail("a sample outside its family"),
                }
            }
        }
        if current.is_some_and(|(_, _, samples)| samples == 0) {
            return Err("a family without samples at the end".into());
        }
        Ok(Exposition { samples })
    }

    fn parse_sample(line: &str) -> Result<Sample, String> {
        let end = line.find(['{', ' ']).ok_or("no value")?;
        let name = &line[..end];
        if !is_name(name, true) {
            return Err("a bad metric name".into());
        }
        let mut rest = &line[end..];
        let mut labels: Vec<(String, String)> = Vec::new();
        if let Some(mut inner) = rest.strip_prefix('{') {
            loop {
                let (label, after) = inner.split_once("=\"").ok_or("a label without =\"")?;
                if !is_name(label, false) || labels.iter().any(|(l, _)| l == label) {
                    return Err(format!("a bad or repeated label name {label:?}"));
                }
                let mut value = String::new();
                let mut chars = after.char_indices();
                let close = loop {
                    match chars.next().ok_or("an unclosed label value")? {
                        (i, '"') => break i,
                        (_, '\\') => match chars.next().ok_or("a lone backslash")?.1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            other => return Err(format!("an escape \\{other}")),
                        },
                        (_, c) => value.push(c),
                    }
                };
                labels.push((label.to_string(), value));
                inner = &after[close + 1..];
                if let Some(more) = inner.strip_prefix(',') {
                    inner = more;
                } else if let Some(after) = inner.strip_prefix('}') {
                    rest = after;
                    break;
                } else {
                    return Err("labels not separated or closed".into());
                }
            }
        }
        let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
        let number = value
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
        if !(["NaN", "+Inf", "-Inf"].contains(&value) || number && value.parse::<f64>().is_ok()) {
            return Err(format!("a bad value {value:?}"));
        }
        Ok(Sample {
            name: name.to_string(),
            labels,
        })
    }

    fn is_name(name: &str, colons: bool) -> bool {
        let ok = |c: char, first: bool| {
            c.is_ascii_alphabetic()
                || c == '_'
                || (colons && c == ':')
                || (!first && c.is_ascii_digit())
        };
        let mut chars = name.chars();
        chars.next().is_some_and(|c| ok(c, true)) && chars.all(|c| ok(c, false))
    }

    /// A series as Prometheus tells them apart: its name and its labels in any order, a
    /// label with an empty value being no label.
    fn identity(sample: &Sample) -> String {
        identity_without(sample, |_| false)
    }

    /// Coarser: the account, user or key a sample is about, without the facts about it.
    fn entity(sample: &Sample) -> String {
        identity_without(sample, |name| {
            name.starts_with("tag_") || name.starts_with("last_used_") || name == "account_name"
        })
    }

    fn identity_without(sample: &Sample, skip: impl Fn(&str) -> bool) -> String {
        let mut labels: Vec<&(String, String)> = sample
            .labels
            .iter()
            .filter(|(name, value)| !value.is_empty() && !skip(name))
            .collect();
        labels.sort();
        format!("{} {labels:?}", sample.name)
    }

    /// The identities met more than once.
    fn repeated(samples: &[Sample], identity: fn(&Sample) -> String) -> Vec<String> {
        let mut seen = HashSet::new();
        samples
            .iter()
            .map(identity)
            .filter(|id| !seen.insert(id.clone()))
            .collect()
    }
}
