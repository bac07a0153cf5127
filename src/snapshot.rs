//! A snapshot: one complete inventory rendered to exposition text, once, when it is built.
//! Scrapes serve these bytes; they never format or call AWS.

use std::time::SystemTime;

use std::io::Write;

use crate::exposition::GzipPrefix;
use crate::inventory::{
    AccessKey, Inventory, KeyStatus, Login, ServiceCounts, ServiceCountsByArn, User, unix_seconds,
};
use crate::metrics::Family;
use bytes::Bytes;

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub account_id: String,
    pub collected_at: SystemTime,
    pub users: usize,
    pub keys: usize,
    /// The inventory's series in the Prometheus text format.
    pub exposition: Bytes,
    /// The same, compressed once for every gzip response built from this snapshot.
    pub gzip_prefix: GzipPrefix,
}

impl Snapshot {
    /// Renders `inventory` with the latest service counts. Counts of users no longer in the
    /// inventory are not rendered, so a deleted user's series vanish with the user.
    pub fn build(inventory: &Inventory, service_counts: &ServiceCountsByArn) -> Snapshot {
        let exposition = Bytes::from(render(inventory, service_counts));
        Snapshot {
            account_id: inventory.account_id.clone(),
            collected_at: inventory.collected_at,
            users: inventory.users.len(),
            keys: inventory.key_count(),
            gzip_prefix: GzipPrefix::new(&exposition),
            exposition,
        }
    }
}

/// Writes the inventory's families, each only if it has a sample, in name order; labels
/// in name order, as the Prometheus client libraries write them.
fn render(inventory: &Inventory, service_counts: &ServiceCountsByArn) -> Vec<u8> {
    use crate::metrics::*;
    let now = inventory.collected_at;
    let account = inventory.account_id.as_str();
    let facts = &inventory.account;
    let users = || inventory.users.iter().chain(&facts.root);
    let keys = || users().flat_map(|u| u.keys.iter().map(move |k| (u, k)));
    let key_labels = |u, k| key_labels(account, u, k);

    // About 115 bytes a series, 8 series a key: sized once, never regrown.
    let mut text = Text(Vec::with_capacity(4096 + inventory.key_count() * 8 * 120));
    text.family(
        &KEY_ACTIVE,
        keys().map(|(u, k)| (key_labels(u, k), flag(k.status == KeyStatus::Active))),
    );
    text.family(
        &KEY_AGE_SECONDS,
        keys().map(|(u, k)| (key_labels(u, k), k.age(now).as_secs_f64().floor())),
    );
    text.family(
        &KEY_CREATED_TIMESTAMP_SECONDS,
        keys().map(|(u, k)| (key_labels(u, k), unix_seconds(k.created))),
    );
    text.family(
        &KEY_IDLE_SECONDS,
        keys().map(|(u, k)| (key_labels(u, k), k.idle(now).as_secs_f64().floor())),
    );
    text.family(
        &KEY_LAST_USED_INFO,
        keys().filter_map(|(u, k)| {
            let used = k.last_used.as_ref()?;
            let labels = [
                ("access_key_id", k.id.as_str()),
                ("account_id", account),
                ("last_used_region", used.region.as_str()),
                ("last_used_service", used.service.as_str()),
                ("user", u.name.as_str()),
            ];
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

    let account_labels = [("account_id", account)];
    text.family(
        &CREDENTIAL_REPORT_GENERATED_TIMESTAMP_SECONDS,
        facts
            .report_generated_at
            .map(|t| (account_labels, unix_seconds(t))),
    );
    text.family(
        &ROOT_ACCESS_KEYS_PRESENT,
        facts
            .root_access_keys_present
            .map(|present| (account_labels, flag(present))),
    );

    let user_labels = |u| user_labels(account, u);
    let login = |pick: fn(&Login) -> Option<f64>| {
        users().filter_map(move |u| Some((user_labels(u), pick(u.login.as_ref()?)?)))
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
        users().filter_map(move |u| {
            Some((user_labels(u), f64::from(pick(service_counts.get(&u.arn)?))))
        })
    };
    text.family(&USER_SERVICES_ACCESSED, counts(|c| c.accessed));
    text.family(&USER_SERVICES_GRANTED, counts(|c| c.granted));
    text.0
}

fn key_labels<'a>(
    account: &'a str,
    user: &'a User,
    key: &'a AccessKey,
) -> [(&'static str, &'a str); 3] {
    [
        ("access_key_id", key.id.as_str()),
        ("account_id", account),
        ("user", user.name.as_str()),
    ]
}

fn user_labels<'a>(account: &'a str, user: &'a User) -> [(&'static str, &'a str); 2] {
    [("account_id", account), ("user", user.name.as_str())]
}

/// The Prometheus text format, written by hand for the inventory's gauge families.
struct Text(Vec<u8>);

impl Text {
    fn family<'a, const N: usize>(
        &mut self,
        family: &Family,
        samples: impl IntoIterator<Item = ([(&'static str, &'a str); N], f64)>,
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
            for (i, (name, value)) in labels.iter().enumerate() {
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
    use crate::inventory::{AccessKey, LastUse, ServiceCounts, User};
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
        let snapshot = Snapshot::build(&sample(), &counts);
        assert_eq!((snapshot.users, snapshot.keys), (2, 2));
        let text = String::from_utf8(snapshot.exposition.to_vec()).unwrap();
        let expected = include_str!("../tests/fixtures/snapshot-sample.prom");
        assert_eq!(text, expected, "got:\n{text}");
    }

    #[test]
    fn an_empty_account_renders_no_series() {
        let inventory = Inventory {
            users: vec![],
            ..sample()
        };
        let snapshot = Snapshot::build(&inventory, &ServiceCountsByArn::new());
        assert!(snapshot.exposition.is_empty());
    }

    #[test]
    fn label_values_are_escaped() {
        let mut inventory = sample();
        inventory.users[0].name = "we\"ird\\name".into();
        let text = String::from_utf8(
            Snapshot::build(&inventory, &Default::default())
                .exposition
                .to_vec(),
        )
        .unwrap();
        assert!(text.contains(r#"user="we\"ird\\name""#), "{text}");
    }
}
