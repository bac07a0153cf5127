//! A snapshot: one complete inventory rendered to exposition text, once, when it is built.
//! Scrapes serve these bytes; they never format or call AWS.

use std::time::SystemTime;

use crate::exposition::GzipPrefix;
use crate::inventory::{Inventory, KeyStatus, ServiceCountsByArn, unix_seconds};
use crate::metrics::InventoryMetrics;

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub account_id: String,
    pub collected_at: SystemTime,
    pub users: usize,
    pub keys: usize,
    /// The inventory's series in the Prometheus text format.
    pub exposition: Vec<u8>,
    /// The same, compressed once for every gzip response built from this snapshot.
    pub gzip_prefix: GzipPrefix,
}

impl Snapshot {
    /// Renders `inventory` with the latest service counts. Counts of users no longer in the
    /// inventory are not rendered, so a deleted user's series vanish with the user.
    pub fn build(inventory: &Inventory, service_counts: &ServiceCountsByArn) -> Snapshot {
        let exposition = render(inventory, service_counts);
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

fn render(inventory: &Inventory, service_counts: &ServiceCountsByArn) -> Vec<u8> {
    let m = InventoryMetrics::new();
    let now = inventory.collected_at;
    let account = inventory.account_id.as_str();
    let facts = &inventory.account;
    if let Some(present) = facts.root_access_keys_present {
        m.root_access_keys_present
            .with_label_values(&[account])
            .set(flag(present));
    }
    if let Some(generated) = facts.report_generated_at {
        m.credential_report_generated_timestamp_seconds
            .with_label_values(&[account])
            .set(unix_seconds(generated));
    }
    for user in inventory.users.iter().chain(&facts.root) {
        let user_labels = [account, user.name.as_str()];
        if let Some(counts) = service_counts.get(&user.arn) {
            m.user_services_accessed
                .with_label_values(&user_labels)
                .set(f64::from(counts.accessed));
            m.user_services_granted
                .with_label_values(&user_labels)
                .set(f64::from(counts.granted));
        }
        if let Some(login) = &user.login {
            if let Some(mfa) = login.mfa_active {
                m.user_mfa_active
                    .with_label_values(&user_labels)
                    .set(flag(mfa));
            }
            if let Some(enabled) = login.password_enabled {
                m.user_password_enabled
                    .with_label_values(&user_labels)
                    .set(flag(enabled));
            }
            if let Some(used) = login.password_last_used {
                m.user_password_last_used_timestamp_seconds
                    .with_label_values(&user_labels)
                    .set(unix_seconds(used));
            }
        }
        for key in &user.keys {
            let labels = [account, user.name.as_str(), key.id.as_str()];
            m.key_age_seconds
                .with_label_values(&labels)
                .set(key.age(now).as_secs_f64().floor());
            m.key_idle_seconds
                .with_label_values(&labels)
                .set(key.idle(now).as_secs_f64().floor());
            m.key_never_used
                .with_label_values(&labels)
                .set(flag(key.last_used.is_none()));
            m.key_active
                .with_label_values(&labels)
                .set(flag(key.status == KeyStatus::Active));
            m.key_created_timestamp_seconds
                .with_label_values(&labels)
                .set(unix_seconds(key.created));
            if let Some(last_use) = &key.last_used {
                m.key_last_used_timestamp_seconds
                    .with_label_values(&labels)
                    .set(unix_seconds(last_use.at));
                m.key_last_used_info
                    .with_label_values(&[
                        account,
                        user.name.as_str(),
                        key.id.as_str(),
                        last_use.service.as_str(),
                        last_use.region.as_str(),
                    ])
                    .set(1.0);
            }
        }
    }
    m.render()
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
        let text = String::from_utf8(snapshot.exposition).unwrap();
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
        assert_eq!(snapshot.exposition, b"");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut inventory = sample();
        inventory.users[0].name = "we\"ird\\name".into();
        let text =
            String::from_utf8(Snapshot::build(&inventory, &Default::default()).exposition).unwrap();
        assert!(text.contains(r#"user="we\"ird\\name""#), "{text}");
    }
}
