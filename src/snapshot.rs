//! A snapshot: one complete inventory rendered to exposition text, once, when it is built.
//! Scrapes serve these bytes; they never format or call AWS.

use std::time::SystemTime;

use std::io::Write;

use crate::exposition::GzipPrefix;
use std::collections::BTreeMap;

use crate::inventory::{
    AccessKey, AccountData, Inventory, KeyStatus, Login, ServiceCounts, User, unix_seconds,
};
use crate::metrics::Family;
use bytes::Bytes;

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub accounts: usize,
    pub users: usize,
    pub keys: usize,
    /// The inventory's series in the Prometheus text format.
    pub exposition: Bytes,
    /// The same, compressed once for every gzip response built from this snapshot.
    pub gzip_prefix: GzipPrefix,
}

impl Snapshot {
    /// Renders every account's inventory with its latest service counts and tags. Counts
    /// and tags of users no longer in an inventory are not rendered, so a deleted user's
    /// series vanish with the user.
    pub fn build(accounts: &BTreeMap<String, AccountData>) -> Snapshot {
        let views: Vec<View> = accounts
            .values()
            .filter_map(|data| {
                Some(View {
                    inventory: data.inventory.as_deref()?,
                    data,
                })
            })
            .collect();
        let exposition = Bytes::from(render(&views));
        Snapshot {
            accounts: views.len(),
            users: views.iter().map(|v| v.inventory.users.len()).sum(),
            keys: views.iter().map(|v| v.inventory.key_count()).sum(),
            gzip_prefix: GzipPrefix::new(&exposition),
            exposition,
        }
    }
}

/// One account's inventory with what is joined to it.
struct View<'a> {
    inventory: &'a Inventory,
    data: &'a AccountData,
}

/// A user with what every one of its series needs.
struct UserRow<'a> {
    account: &'a str,
    /// Ages are computed as of the account's refresh.
    now: SystemTime,
    user: &'a User,
    tags: &'a [(String, String)],
    counts: Option<&'a ServiceCounts>,
}

/// Writes the inventory's families, each only if it has a sample, in name order; labels
/// in name order, as the Prometheus client libraries write them.
fn render(views: &[View]) -> Vec<u8> {
    use crate::metrics::*;
    let no_tags: &[(String, String)] = &[];
    let users: Vec<UserRow> = views
        .iter()
        .flat_map(|view| {
            let inventory = view.inventory;
            let data = view.data;
            inventory
                .users
                .iter()
                .chain(&inventory.account.root)
                .map(move |user| UserRow {
                    account: inventory.account_id.as_str(),
                    now: inventory.collected_at,
                    user,
                    tags: data.tags.get(&user.arn).map_or(no_tags, Vec::as_slice),
                    counts: data.service_counts.get(&user.arn),
                })
        })
        .collect();
    let keys = || {
        users
            .iter()
            .flat_map(|u| u.user.keys.iter().map(move |k| (u, k)))
    };
    let key_count: usize = users.iter().map(|u| u.user.keys.len()).sum();

    // About 115 bytes a series, 8 series a key: sized once, never regrown.
    let mut text = Text(Vec::with_capacity(4096 + key_count * 8 * 120));
    text.family(
        &KEY_ACTIVE,
        keys().map(|(u, k)| (key_labels(u, k), flag(k.status == KeyStatus::Active))),
    );
    text.family(
        &KEY_AGE_SECONDS,
        keys().map(|(u, k)| (key_labels(u, k), k.age(u.now).as_secs_f64().floor())),
    );
    text.family(
        &KEY_CREATED_TIMESTAMP_SECONDS,
        keys().map(|(u, k)| (key_labels(u, k), unix_seconds(k.created))),
    );
    text.family(
        &KEY_IDLE_SECONDS,
        keys().map(|(u, k)| (key_labels(u, k), k.idle(u.now).as_secs_f64().floor())),
    );
    text.family(
        &KEY_LAST_USED_INFO,
        keys().filter_map(|(u, k)| {
            let used = k.last_used.as_ref()?;
            let labels = Labels {
                fixed: [
                    ("access_key_id", k.id.as_str()),
                    ("account_id", u.account),
                    ("last_used_region", used.region.as_str()),
                    ("last_used_service", used.service.as_str()),
                ],
                tags: u.tags,
                user: Some(u.user.name.as_str()),
            };
            Some((labels, 1.0))
        }),
    );
    text.family(
        &KEY_LAST_USED_TIMESTAMP_SECONDS,
        keys()
            .filter_map(|(u, k)| Some((key_labels(u, k), unix_seconds(k.last_used.as_ref()?.at)))),
    );
    text.family(
        &KEY_NEVER_USED,
        keys().map(|(u, k)| (key_labels(u, k), flag(k.last_used.is_none()))),
    );

    text.family(
        &ACCOUNT_INFO,
        views.iter().map(|view| {
            let labels = Labels {
                fixed: [
                    ("account_id", view.inventory.account_id.as_str()),
                    ("account_name", view.data.name.as_deref().unwrap_or("")),
                ],
                tags: no_tags,
                user: None,
            };
            (labels, 1.0)
        }),
    );
    text.family(
        &CREDENTIAL_REPORT_GENERATED_TIMESTAMP_SECONDS,
        views.iter().filter_map(|view| {
            let at = view.inventory.account.report_generated_at?;
            Some((account_labels(view), unix_seconds(at)))
        }),
    );
    text.family(
        &ROOT_ACCESS_KEYS_PRESENT,
        views.iter().filter_map(|view| {
            let present = view.inventory.account.root_access_keys_present?;
            Some((account_labels(view), flag(present)))
        }),
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
    text.0
}

/// A series' labels in name order: the fixed ones, then the user's tags (`tag_*` sorts
/// after every fixed label name but `user`), then `user`.
struct Labels<'a, const N: usize> {
    fixed: [(&'static str, &'a str); N],
    tags: &'a [(String, String)],
    user: Option<&'a str>,
}

fn account_labels<'a>(view: &View<'a>) -> Labels<'a, 1> {
    Labels {
        fixed: [("account_id", view.inventory.account_id.as_str())],
        tags: &[],
        user: None,
    }
}

fn key_labels<'a>(u: &'a UserRow, key: &'a AccessKey) -> Labels<'a, 2> {
    Labels {
        fixed: [
            ("access_key_id", key.id.as_str()),
            ("account_id", u.account),
        ],
        tags: u.tags,
        user: Some(u.user.name.as_str()),
    }
}

fn user_labels<'a>(u: &'a UserRow) -> Labels<'a, 1> {
    Labels {
        fixed: [("account_id", u.account)],
        tags: u.tags,
        user: Some(u.user.name.as_str()),
    }
}

/// The Prometheus text format, written by hand for the inventory's gauge families.
struct Text(Vec<u8>);

impl Text {
    fn family<'a, const N: usize>(
        &mut self,
        family: &Family,
        samples: impl IntoIterator<Item = (Labels<'a, N>, f64)>,
    ) {
        let mut samples = samples.into_iter().peekable();
        if samples.peek().is_none() {
            return;
        }
        let out = &mut self.0;
        let _ = write!(
            out,
            "# HELP {} {}\n# TYPE {} gauge\n",
            family.name, family.help, family.name
        );
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
            },
        );
        counts.insert(
            "arn:aws:iam::123456789012:user/deleted".into(),
            ServiceCounts {
                accessed: 1,
                granted: 1,
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
}
