//! The inventory: plain data about users and their access keys as IAM reported them,
//! with no AWS types, so that everything downstream is pure and testable.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Everything one refresh learned about an account.
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    pub account_id: String,
    /// When the refresh finished listing; ages are computed as of this instant.
    pub collected_at: SystemTime,
    pub users: Vec<User>,
    /// What only the credential report or GetAccountSummary tell.
    pub account: AccountFacts,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountFacts {
    /// GetAccountSummary's AccountAccessKeysPresent, or the report's root row.
    pub root_access_keys_present: Option<bool>,
    /// The root user as the credential report shows it (`<root_account>`), keys by slot.
    pub root: Option<User>,
    /// When the credential report the data came from was generated.
    pub report_generated_at: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub name: String,
    pub arn: String,
    /// When the user was created: IAM's CreateDate (ListUsers, GetUser) or the report's
    /// `user_creation_time`, which for `<root_account>` is when the account was created.
    /// A console password never used counts as unused from here.
    pub created: Option<SystemTime>,
    pub keys: Vec<AccessKey>,
    /// Console facts from the credential report; `None` from the API source.
    pub login: Option<Login>,
}

/// A user's console sign-in facts, as the credential report has them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Login {
    pub mfa_active: Option<bool>,
    /// `None` for the root user, whose report says `not_supported`.
    pub password_enabled: Option<bool>,
    pub password_last_used: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Active,
    Inactive,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessKey {
    /// The public key id (`AKIA...`). The secret is never requested from IAM.
    pub id: String,
    pub status: KeyStatus,
    pub created: SystemTime,
    pub last_used: Option<LastUse>,
}

/// GetAccessKeyLastUsed for a key that has been used. IAM reports service and region as
/// the string `N/A` when it has no value; that string is kept as IAM sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct LastUse {
    pub at: SystemTime,
    pub service: String,
    pub region: String,
}

/// An IAM role, as GetAccountAuthorizationDetails reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Role {
    pub name: String,
    pub arn: String,
    /// The IAM path: `/aws-service-role/<service>/` for a service-linked role.
    pub path: String,
    pub created: SystemTime,
    /// Every tag of the role, as IAM returns them.
    pub tags: Vec<(String, String)>,
    /// `None` when IAM has seen no use in its tracking period (the last 400 days).
    pub last_used: Option<RoleLastUse>,
}

/// When a role was last used (its session was assumed and used), and where.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleLastUse {
    pub at: SystemTime,
    /// The region of that use, when IAM gives one.
    pub region: Option<String>,
}

impl Role {
    /// Roles that AWS services create and own, under `/aws-service-role/`: their owner is
    /// the service, and deleting one can break it.
    pub fn is_service_linked(&self) -> bool {
        self.path.starts_with("/aws-service-role/")
    }

    /// Time since the role was last used, or since it was created when IAM has no use of
    /// it, as for keys. A role last used more than 400 days ago is idle at least that long.
    pub fn idle(&self, now: SystemTime) -> Duration {
        elapsed(self.last_used.as_ref().map_or(self.created, |u| u.at), now)
    }
}

/// An account's roles as one reading found them, the filter applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Roles {
    /// When the roles were read; idle times are computed as of this instant.
    pub read_at: SystemTime,
    pub roles: Vec<LabelledRole>,
}

/// A role with the labels of its tags (`tags.keys`), as its series carry them.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledRole {
    pub role: Role,
    pub tag_labels: TagLabels,
}

/// The outcome of one user's or role's service-last-accessed job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceCounts {
    /// Services the principal's policies allow that were authenticated to at least once.
    pub accessed: u32,
    /// Services the principal's policies allow, used or not.
    pub granted: u32,
    /// Per service that IAM tracks by action, from an ACTION_LEVEL job: the tracked
    /// actions the policies allow and those used. IAM lists a service's tracked actions
    /// only when at least one of them was used (in its 400 days), so a service whose
    /// tracked actions all went unused has no entry: its service-level count says so.
    pub actions: Vec<TrackedActions>,
}

/// One service's tracked actions for a principal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackedActions {
    /// The service's namespace, as IAM names it (`s3`, `ec2`).
    pub service_namespace: String,
    pub granted: u32,
    pub used: u32,
}

/// What is known of one account: its latest inventory and the slower data joined to it.
#[derive(Debug, Clone, Default)]
pub struct AccountData {
    /// The configured or discovered name, for `aws_iam_account_info`.
    pub name: Option<String>,
    pub inventory: Option<std::sync::Arc<Inventory>>,
    pub service_counts: ServiceCountsByArn,
    pub tags: TagsByArn,
    /// The account's roles, once read (`roles.enabled`).
    pub roles: Option<std::sync::Arc<Roles>>,
}

/// Latest service counts per user ARN.
pub type ServiceCountsByArn = HashMap<String, ServiceCounts>;

/// A user's tags as labels: `(label name, value)`, sorted by label name.
pub type TagLabels = Vec<(String, String)>;

/// Latest tag labels per user ARN.
pub type TagsByArn = HashMap<String, TagLabels>;

/// The labels for the configured tag keys that the user has. IAM keeps tag keys unique
/// regardless of case, so keys match regardless of case too. Tags with an empty value
/// are left out: to Prometheus an empty label is no label.
pub fn tag_labels(wanted: &[String], tags: &[(String, String)]) -> TagLabels {
    let mut labels: TagLabels = wanted
        .iter()
        .filter_map(|key| {
            let (_, value) = tags.iter().find(|(k, _)| k.eq_ignore_ascii_case(key))?;
            (!value.is_empty()).then(|| (crate::config::tag_label_name(key), value.clone()))
        })
        .collect();
    labels.sort();
    labels
}

impl Inventory {
    pub fn key_count(&self) -> usize {
        self.users.iter().map(|u| u.keys.len()).sum()
    }
}

impl User {
    /// The user's latest sign-in or key use that IAM has told of: a service-access job
    /// can only find new use after it.
    pub fn last_activity(&self) -> Option<SystemTime> {
        let keys = self
            .keys
            .iter()
            .filter_map(|key| key.last_used.as_ref().map(|used| used.at));
        let password = self.login.as_ref().and_then(|l| l.password_last_used);
        keys.chain(password).max()
    }
}

impl AccessKey {
    /// Time since the key was created, as of `now`.
    pub fn age(&self, now: SystemTime) -> Duration {
        elapsed(self.created, now)
    }

    /// Time since the key was last used. A key that was never used has been idle since
    /// it was created, which is also how CIS counts it for the unused-credentials control.
    pub fn idle(&self, now: SystemTime) -> Duration {
        let since = self.last_used.as_ref().map_or(self.created, |u| u.at);
        elapsed(since, now)
    }
}

/// `now - then`, or zero when `then` is in the future (clock skew between AWS and us must
/// not produce a negative age).
pub fn elapsed(then: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or_default()
}

/// Seconds since the Unix epoch, as Prometheus wants timestamps.
pub fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn key(created: u64, last_used: Option<u64>) -> AccessKey {
        AccessKey {
            id: "AKIAEXAMPLE".into(),
            status: KeyStatus::Active,
            created: at(created),
            last_used: last_used.map(|t| LastUse {
                at: at(t),
                service: "s3".into(),
                region: "eu-west-1".into(),
            }),
        }
    }

    #[test]
    fn age_counts_from_creation() {
        let now = at(1_000 * DAY);
        assert_eq!(
            key(900 * DAY, None).age(now),
            Duration::from_secs(100 * DAY)
        );
    }

    #[test]
    fn idle_counts_from_last_use() {
        let now = at(1_000 * DAY + 3600);
        let k = key(900 * DAY, Some(990 * DAY));
        assert_eq!(k.idle(now), Duration::from_secs(10 * DAY + 3600));
    }

    #[test]
    fn never_used_key_is_idle_since_creation() {
        let now = at(1_000 * DAY);
        let k = key(955 * DAY, None);
        assert_eq!(k.idle(now), k.age(now));
        assert_eq!(k.idle(now), Duration::from_secs(45 * DAY));
    }

    #[test]
    fn future_dates_from_clock_skew_clamp_to_zero() {
        let now = at(1_000 * DAY);
        let k = key(1_000 * DAY + 5, Some(1_000 * DAY + 7));
        assert_eq!(k.age(now), Duration::ZERO);
        assert_eq!(k.idle(now), Duration::ZERO);
    }

    #[test]
    fn unix_seconds_keeps_fractions_and_handles_pre_epoch() {
        assert_eq!(unix_seconds(at(1_700_000_000)), 1_700_000_000.0);
        assert_eq!(unix_seconds(UNIX_EPOCH + Duration::from_millis(1_500)), 1.5);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(2)), -2.0);
    }
}
