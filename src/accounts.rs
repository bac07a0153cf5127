//! Which accounts this replica watches: the configured ones and those Organizations lists,
//! less exclusions and the other replicas' share. Pure: the caller brings the account list.

use crate::config::{AccountSettings, OrganizationsSettings, Settings, ShardSettings};
use crate::iam::{AssumeRole, CallerIdentity, OrganizationAccount};

/// The identity of the exporter's own account before GetCallerIdentity has named it.
pub const OWN_ACCOUNT: &str = "self";

/// One account to watch and how to reach it.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Stable identity across refreshes: the account id, or `self` for the exporter's own
    /// account when it is configured without one.
    pub key: String,
    /// Known up front for an assumed role (it is in the ARN); asked of STS otherwise.
    pub account_id: Option<String>,
    pub name: Option<String>,
    /// `None`: the exporter's own credentials.
    pub role: Option<AssumeRole>,
}

impl Target {
    /// The exporter's own account, with its own credentials.
    pub fn own(name: Option<String>) -> Target {
        Target {
            key: OWN_ACCOUNT.to_string(),
            account_id: None,
            name,
            role: None,
        }
    }

    fn configured(account: &AccountSettings) -> Target {
        match &account.role_arn {
            None => Target::own(account.name.clone()),
            Some(arn) => {
                // The configuration was validated: a role ARN names its account.
                let id = crate::config::account_of_role_arn(arn)
                    .unwrap_or_default()
                    .to_string();
                Target {
                    key: id.clone(),
                    account_id: Some(id),
                    name: account.name.clone(),
                    role: Some(AssumeRole {
                        arn: arn.clone(),
                        external_id: account.external_id.clone(),
                        session_name: account
                            .session_name
                            .clone()
                            .unwrap_or_else(|| "iam-key-exporter".to_string()),
                    }),
                }
            }
        }
    }
}

/// The configured accounts; with none, the exporter's own account alone (unless discovery
/// will find the accounts).
pub fn configured(settings: &Settings) -> Vec<Target> {
    if settings.accounts.is_empty() && !settings.organizations.enabled {
        return vec![Target::own(None)];
    }
    settings.accounts.iter().map(Target::configured).collect()
}

/// The active accounts of the organization that the include and exclude lists allow,
/// each reached through `role_name`, except the exporter's own account, which needs no
/// role to be read.
pub fn discovered(
    accounts: &[OrganizationAccount],
    settings: &OrganizationsSettings,
    caller: &CallerIdentity,
) -> Vec<Target> {
    let included = |id: &String| {
        (settings.include_accounts.is_empty() || settings.include_accounts.contains(id))
            && !settings.exclude_accounts.contains(id)
    };
    accounts
        .iter()
        .filter(|account| account.active && included(&account.id))
        .map(|account| {
            let role = (account.id != caller.account_id)
                .then(|| discovery_role(settings, &caller.partition, &account.id));
            Target {
                key: account.id.clone(),
                account_id: Some(account.id.clone()),
                name: account.name.clone(),
                role,
            }
        })
        .collect()
}

/// The role discovery assumes in `account`: `organizations.role_name`, in the caller's
/// partition, with discovery's external id and session name.
pub fn discovery_role(
    settings: &OrganizationsSettings,
    partition: &str,
    account: &str,
) -> AssumeRole {
    AssumeRole {
        arn: format!("arn:{partition}:iam::{account}:role/{}", settings.role_name),
        external_id: settings.external_id.clone(),
        session_name: settings.session_name.clone(),
    }
}

/// Configured accounts first, then discovered ones not configured already: an account's
/// own settings (its role, external id, name) win over discovery's defaults. The own
/// account, once its id is known, counts as configured under that id.
pub fn merge(
    configured: Vec<Target>,
    discovered: Vec<Target>,
    own_account_id: Option<&str>,
) -> Vec<Target> {
    let mut seen: std::collections::HashSet<String> = configured
        .iter()
        .map(|t| match (&t.account_id, own_account_id) {
            (Some(id), _) => id.clone(),
            (None, Some(own)) => own.to_string(),
            (None, None) => t.key.clone(),
        })
        .collect();
    let mut merged = configured;
    merged.extend(
        discovered
            .into_iter()
            .filter(|t| seen.insert(t.key.clone())),
    );
    merged
}

/// The targets this replica owns.
pub fn in_shard(targets: Vec<Target>, shard: &ShardSettings) -> Vec<Target> {
    targets
        .into_iter()
        .filter(|t| owner(&t.key, shard.total) == shard.index)
        .collect()
}

/// Rendezvous (highest random weight) hashing: the replica whose hash with the key is
/// highest owns it. When a replica is added, only the keys it now wins move, about
/// 1/total of them; every other key stays where it was.
pub fn owner(key: &str, total: u32) -> u32 {
    (0..total)
        .max_by_key(|replica| weight(key, *replica))
        .unwrap_or(0)
}

/// A stable 64-bit hash of key and replica: FNV-1a for the bytes, then SplitMix64's
/// finaliser to spread FNV's weak low bits. Stable across builds and Rust versions
/// (std's hasher is not), so every replica, of any version, agrees on the owner.
fn weight(key: &str, replica: u32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes().chain(replica.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("{:012}", 100_000_000_000 + i * 7919))
            .collect()
    }

    #[test]
    fn every_account_has_exactly_one_owner_and_shares_are_even() {
        let accounts = ids(3000);
        for total in [1, 2, 3, 5, 8] {
            let mut counts = vec![0usize; total as usize];
            for id in &accounts {
                let owner = owner(id, total);
                assert!(owner < total);
                counts[owner as usize] += 1;
            }
            let fair = accounts.len() / total as usize;
            for count in &counts {
                // Within 15% of a fair share at 3,000 accounts.
                assert!(
                    count.abs_diff(fair) * 100 <= fair * 15,
                    "total {total}: {counts:?}"
                );
            }
        }
    }

    #[test]
    fn adding_a_replica_moves_only_the_accounts_it_takes() {
        let accounts = ids(3000);
        for total in 1..8u32 {
            let mut moved = 0usize;
            for id in &accounts {
                let (before, after) = (owner(id, total), owner(id, total + 1));
                if before != after {
                    // A moved account always moves to the new replica.
                    assert_eq!(after, total, "{id}");
                    moved += 1;
                }
            }
            let expected = accounts.len() / (total as usize + 1);
            assert!(
                moved.abs_diff(expected) * 100 <= expected * 20,
                "{total} -> {}: {moved} moved, about {expected} expected",
                total + 1
            );
        }
    }

    #[test]
    fn the_owner_is_stable_across_builds() {
        // Pinned values: a change of hash would reshuffle every fleet on upgrade.
        assert_eq!(owner("111111111111", 4), owner("111111111111", 4));
        let pinned: Vec<u32> = ["111111111111", "222222222222", "333333333333", "self"]
            .iter()
            .map(|id| owner(id, 3))
            .collect();
        assert_eq!(pinned, [2, 2, 1, 2]);
    }

    fn caller() -> CallerIdentity {
        CallerIdentity {
            account_id: "999999999999".into(),
            partition: "aws-us-gov".into(),
        }
    }

    fn org(id: &str, active: bool) -> OrganizationAccount {
        OrganizationAccount {
            id: id.into(),
            name: Some(format!("n{id}")),
            active,
        }
    }

    #[test]
    fn discovery_keeps_active_included_accounts_and_reads_its_own_without_a_role() {
        let settings = OrganizationsSettings {
            enabled: true,
            role_name: "auditor".into(),
            external_id: Some("xid".into()),
            session_name: "s".into(),
            include_accounts: vec![],
            exclude_accounts: vec!["333333333333".into()],
            interval: std::time::Duration::from_secs(3600),
        };
        let listed = [
            org("111111111111", true),
            org("222222222222", false),
            org("333333333333", true),
            org("999999999999", true),
        ];
        let targets = discovered(&listed, &settings, &caller());
        let keys: Vec<&str> = targets.iter().map(|t| t.key.as_str()).collect();
        assert_eq!(keys, ["111111111111", "999999999999"]);
        let role = targets[0].role.as_ref().unwrap();
        assert_eq!(role.arn, "arn:aws-us-gov:iam::111111111111:role/auditor");
        assert_eq!(role.external_id.as_deref(), Some("xid"));
        assert_eq!(targets[1].role, None, "its own account needs no role");

        let only = OrganizationsSettings {
            include_accounts: vec!["333333333333".into(), "111111111111".into()],
            ..settings
        };
        let keys: Vec<String> = discovered(&listed, &only, &caller())
            .into_iter()
            .map(|t| t.key)
            .collect();
        assert_eq!(keys, ["111111111111"], "excludes win over includes");
    }

    #[test]
    fn configured_accounts_win_over_discovered_ones() {
        let configured = vec![
            Target {
                key: "111111111111".into(),
                account_id: Some("111111111111".into()),
                name: Some("configured".into()),
                role: None,
            },
            Target::own(Some("me".into())),
        ];
        let discovered = vec![
            Target {
                name: Some("discovered".into()),
                ..configured[0].clone()
            },
            Target {
                key: "999999999999".into(),
                account_id: Some("999999999999".into()),
                name: None,
                role: None,
            },
            Target {
                key: "444444444444".into(),
                account_id: Some("444444444444".into()),
                name: None,
                role: None,
            },
        ];
        let merged = merge(configured, discovered, Some("999999999999"));
        let names: Vec<(&str, Option<&str>)> = merged
            .iter()
            .map(|t| (t.key.as_str(), t.name.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                ("111111111111", Some("configured")),
                ("self", Some("me")),
                ("444444444444", None)
            ]
        );
    }
}
