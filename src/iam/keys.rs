//! The key inventory through the API: ListUsers, then per user ListAccessKeys and per key
//! GetAccessKeyLastUsed, with bounded concurrency. Given a credential report, a key the
//! report already describes costs no GetAccessKeyLastUsed call.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_iam::Client;
use aws_sdk_iam::types::{AccessKeyMetadata, StatusType, SummaryKeyType};
use futures_util::{StreamExt, TryStreamExt, stream};

use super::report::CredentialReport;
use super::{IamError, is_no_such_entity, observe, to_system_time};
use crate::credential_report::{self, ReportRow};
use crate::filter::UserFilter;
use crate::inventory::{AccessKey, AccountFacts, Inventory, KeyStatus, LastUse, User};
use crate::metrics::ExporterMetrics;

/// IAM's largest page: 5,000 users cost 5 ListUsers calls instead of 50.
const PAGE_SIZE: i32 = 1000;

/// Lists every user and key of the account. At most `concurrency` users are worked on at
/// once, and a user's calls run one after another, so at most `concurrency` calls are in
/// flight. Users and keys deleted while the refresh runs are skipped.
///
/// With a credential `report`, a key whose CreateDate matches one of its user's report
/// slots takes its last use from the report; only keys created after the report need
/// GetAccessKeyLastUsed. Users and key ids always come from the API, so the inventory is
/// as current as the API source's; only last-use data can be as old as the report.
pub async fn collect_inventory(
    iam: &Client,
    metrics: &ExporterMetrics,
    account_id: &str,
    concurrency: usize,
    report: Option<&CredentialReport>,
    filter: &UserFilter,
) -> Result<Inventory, IamError> {
    let mut listed = list_users(iam, metrics).await?;
    // Users the filter excludes cost no further calls.
    listed.retain(|user| filter.allows(&user.name, &user.arn));
    let rows: HashMap<&str, &ReportRow> = report
        .map(|r| r.rows.iter().map(|row| (row.user.as_str(), row)).collect())
        .unwrap_or_default();
    // Unordered, so a slow user never holds a slot that a finished one could use; the
    // index restores IAM's order afterwards.
    let mut users: Vec<(usize, Option<User>)> =
        stream::iter(listed.into_iter().enumerate())
            .map(|(index, listed)| {
                let row = rows.get(listed.name.as_str()).copied();
                async move {
                    Ok::<_, IamError>((index, collect_user(iam, metrics, listed, row).await?))
                }
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await?;
    users.sort_unstable_by_key(|(index, _)| *index);
    Ok(Inventory {
        account_id: account_id.to_string(),
        collected_at: SystemTime::now(),
        users: users.into_iter().filter_map(|(_, user)| user).collect(),
        account: AccountFacts {
            // Asked separately (`root_access_keys_present`): IAM may deny it alone.
            root_access_keys_present: None,
            root: report
                .and_then(|r| r.rows.iter().find(|row| row.is_root()))
                .map(ReportRow::to_user_by_slot),
            report_generated_at: report.map(|r| r.generated_at),
        },
    })
}

/// The account's inventory from `previous`, with the users named in `names` listed again
/// (GetUser, then their keys as `collect_inventory` reads them): a user IAM no longer
/// has is dropped, a new one added. Everyone else keeps their keys; their last use is
/// taken from `report` where it describes the key, and where there is no report, asked
/// again for every active key (an inactive key cannot be used).
///
/// IAM matches user names regardless of case, so a name matches the user of any case.
pub async fn relist_users(
    iam: &Client,
    metrics: &ExporterMetrics,
    previous: &Inventory,
    names: &BTreeSet<String>,
    concurrency: usize,
    report: Option<&CredentialReport>,
    filter: &UserFilter,
) -> Result<Inventory, IamError> {
    let rows: HashMap<&str, &ReportRow> = report
        .map(|r| r.rows.iter().map(|row| (row.user.as_str(), row)).collect())
        .unwrap_or_default();
    let named: HashSet<String> = names.iter().map(|n| n.to_lowercase()).collect();
    let listed: Vec<Option<User>> = stream::iter(names.iter().cloned())
        .map(|name| async move { relist_user(iam, metrics, &name, report).await })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    let kept: Vec<&User> = previous
        .users
        .iter()
        .filter(|user| !named.contains(&user.name.to_lowercase()))
        .collect();
    let mut users: Vec<User> = match report {
        Some(_) => kept
            .into_iter()
            .map(|user| with_report(user, rows.get(user.name.as_str()).copied()))
            .collect(),
        // Owned users: a stream of borrowed ones would not be `Send` for every lifetime.
        None => {
            stream::iter(kept.into_iter().cloned())
                .map(|user| with_current_last_use(iam, metrics, user))
                .buffered(concurrency.max(1))
                .try_collect()
                .await?
        }
    };
    let mut added = HashSet::new();
    for user in listed.into_iter().flatten() {
        // Two spellings of one name are one user.
        if filter.allows(&user.name, &user.arn) && added.insert(user.name.clone()) {
            users.push(user);
        }
    }
    Ok(Inventory {
        account_id: previous.account_id.clone(),
        collected_at: SystemTime::now(),
        users,
        account: AccountFacts {
            root_access_keys_present: None,
            root: match report {
                Some(r) => r
                    .rows
                    .iter()
                    .find(|row| row.is_root())
                    .map(ReportRow::to_user_by_slot),
                None => previous.account.root.clone(),
            },
            report_generated_at: report
                .map(|r| r.generated_at)
                .or(previous.account.report_generated_at),
        },
    })
}

/// One named user as IAM has it now, or `None` when IAM has no such user.
async fn relist_user(
    iam: &Client,
    metrics: &ExporterMetrics,
    name: &str,
    report: Option<&CredentialReport>,
) -> Result<Option<User>, IamError> {
    const OP: &str = "GetUser";
    let output = match observe(metrics, OP, iam.get_user().user_name(name).send().await) {
        Ok(output) => output,
        Err(err) if is_no_such_entity(&err) => return Ok(None),
        Err(err) => return Err(IamError::call(OP, &err)),
    };
    let user = output.user.ok_or(IamError::Malformed {
        operation: OP,
        field: "User",
    })?;
    let row = report.and_then(|r| r.rows.iter().find(|row| row.user == user.user_name));
    collect_user(iam, metrics, Listed::from(user), row).await
}

/// A user not named by any change, with the last use and console facts of a newer
/// report. A key the report does not describe (newer than the report) keeps what it had.
fn with_report(user: &User, row: Option<&ReportRow>) -> User {
    let Some(row) = row else {
        return user.clone();
    };
    let keys = user
        .keys
        .iter()
        .map(|key| {
            from_report_slot(row, key.id.clone(), key.created, key.status)
                .unwrap_or_else(|| key.clone())
        })
        .collect();
    User {
        name: user.name.clone(),
        arn: user.arn.clone(),
        created: user.created,
        keys,
        login: Some(row.login()),
    }
}

/// A user not named by any change, each active key's last use asked again.
async fn with_current_last_use(
    iam: &Client,
    metrics: &ExporterMetrics,
    mut user: User,
) -> Result<User, IamError> {
    let mut keys = Vec::with_capacity(user.keys.len());
    for mut key in std::mem::take(&mut user.keys) {
        if key.status == KeyStatus::Active {
            match last_use(iam, metrics, &key.id).await? {
                Some(last_used) => key.last_used = last_used,
                // Deleted since: the change feed will name its user.
                None => continue,
            }
        }
        keys.push(key);
    }
    user.keys = keys;
    Ok(user)
}

/// GetAccountSummary's AccountAccessKeysPresent: current, and readable without the report.
pub async fn root_access_keys_present(
    iam: &Client,
    metrics: &ExporterMetrics,
) -> Result<bool, IamError> {
    const OP: &str = "GetAccountSummary";
    let output = observe(metrics, OP, iam.get_account_summary().send().await)
        .map_err(|e| IamError::call(OP, &e))?;
    let present = output
        .summary_map
        .as_ref()
        .and_then(|map| map.get(&SummaryKeyType::AccountAccessKeysPresent))
        .ok_or(IamError::Malformed {
            operation: OP,
            field: "SummaryMap.AccountAccessKeysPresent",
        })?;
    Ok(*present > 0)
}

/// A user as ListUsers or GetUser returns it, before its keys are read.
struct Listed {
    name: String,
    arn: String,
    created: Option<SystemTime>,
}

impl From<aws_sdk_iam::types::User> for Listed {
    fn from(user: aws_sdk_iam::types::User) -> Self {
        Listed {
            created: user_created(&user.create_date),
            name: user.user_name,
            arn: user.arn,
        }
    }
}

/// A user's CreateDate. The SDK reads a CreateDate missing from IAM's answer as the Unix
/// epoch (the field is required, so it fills in a default); no IAM user predates IAM,
/// so that is no date rather than a user 56 years old, whose console password would
/// count as unused since 1970.
fn user_created(date: &aws_smithy_types::DateTime) -> Option<SystemTime> {
    SystemTime::try_from(*date)
        .ok()
        .filter(|created| *created > UNIX_EPOCH)
}

async fn list_users(iam: &Client, metrics: &ExporterMetrics) -> Result<Vec<Listed>, IamError> {
    const OP: &str = "ListUsers";
    let mut users = Vec::new();
    let mut pages = iam
        .list_users()
        .into_paginator()
        .page_size(PAGE_SIZE)
        .send();
    while let Some(page) = pages.next().await {
        let page = observe(metrics, OP, page).map_err(|e| IamError::call(OP, &e))?;
        users.extend(page.users.into_iter().map(Listed::from));
    }
    Ok(users)
}

/// One user's keys, or `None` when the user was deleted after ListUsers.
async fn collect_user(
    iam: &Client,
    metrics: &ExporterMetrics,
    listed: Listed,
    report: Option<&ReportRow>,
) -> Result<Option<User>, IamError> {
    const OP: &str = "ListAccessKeys";
    let Listed { name, arn, created } = listed;
    let mut listed = Vec::new();
    let mut pages = iam
        .list_access_keys()
        .user_name(&name)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        match observe(metrics, OP, page) {
            Ok(page) => listed.extend(page.access_key_metadata),
            Err(err) if is_no_such_entity(&err) => {
                tracing::debug!(user = %name, "user deleted during refresh; skipped");
                return Ok(None);
            }
            Err(err) => return Err(IamError::call(OP, &err)),
        }
    }
    let mut keys = Vec::with_capacity(listed.len());
    for metadata in listed {
        if let Some(key) = report.and_then(|row| from_report(row, &metadata)) {
            keys.push(key);
        } else if let Some(key) = collect_key(iam, metrics, &name, metadata).await? {
            keys.push(key);
        }
    }
    Ok(Some(User {
        name,
        arn,
        // The API's, not the report row's: a row of the same name may describe a user
        // deleted and created again since the report.
        created,
        keys,
        login: report.map(ReportRow::login),
    }))
}

/// The key with its last use from the report slot whose `last_rotated` is the key's
/// CreateDate, to the second. `None`, so that the API is asked instead, when no slot or
/// more than one matches (the key is newer than the report, or two keys were made in the
/// same second), or when the report has a last-use date without its service and region.
/// The key's id and current status always come from ListAccessKeys.
fn from_report(row: &ReportRow, metadata: &AccessKeyMetadata) -> Option<AccessKey> {
    let id = metadata.access_key_id.clone()?;
    let created = SystemTime::try_from(*metadata.create_date.as_ref()?).ok()?;
    from_report_slot(row, id, created, status_of(metadata))
}

/// `from_report` for a key known by id, creation time and status.
fn from_report_slot(
    row: &ReportRow,
    id: String,
    created: SystemTime,
    status: KeyStatus,
) -> Option<AccessKey> {
    let second = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).ok();
    let mut matching = row
        .keys
        .iter()
        .flatten()
        .filter(|slot| second(slot.last_rotated) == second(created));
    let slot = matching.next()?;
    if matching.next().is_some() {
        return None;
    }
    if slot.last_used.is_some()
        && (credential_report::is_absent(&slot.last_used_service)
            || credential_report::is_absent(&slot.last_used_region))
    {
        return None;
    }
    let mut key = slot.to_access_key(id);
    key.created = created;
    key.status = status;
    Some(key)
}

/// Only Active keys authenticate; Inactive and any status IAM adds later do not.
fn status_of(metadata: &AccessKeyMetadata) -> KeyStatus {
    match metadata.status {
        Some(StatusType::Active) => KeyStatus::Active,
        _ => KeyStatus::Inactive,
    }
}

/// One key with its last use, or `None` when the key was deleted after ListAccessKeys.
async fn collect_key(
    iam: &Client,
    metrics: &ExporterMetrics,
    user: &str,
    metadata: AccessKeyMetadata,
) -> Result<Option<AccessKey>, IamError> {
    const LIST: &str = "ListAccessKeys";
    let status = status_of(&metadata);
    let id = metadata.access_key_id.ok_or(IamError::Malformed {
        operation: LIST,
        field: "AccessKeyId",
    })?;
    let created = metadata.create_date.as_ref().ok_or(IamError::Malformed {
        operation: LIST,
        field: "CreateDate",
    })?;
    let created = to_system_time(LIST, "CreateDate", created)?;

    let Some(last_used) = last_use(iam, metrics, &id).await? else {
        tracing::debug!(user, "access key deleted during refresh; skipped");
        return Ok(None);
    };
    Ok(Some(AccessKey {
        id,
        status,
        created,
        last_used,
    }))
}

/// GetAccessKeyLastUsed: the key's last use (`Some(None)` for never), or `None` when the
/// key is gone.
async fn last_use(
    iam: &Client,
    metrics: &ExporterMetrics,
    id: &str,
) -> Result<Option<Option<LastUse>>, IamError> {
    const OP: &str = "GetAccessKeyLastUsed";
    let result = iam
        .get_access_key_last_used()
        .access_key_id(id)
        .send()
        .await;
    let output = match observe(metrics, OP, result) {
        Ok(output) => output,
        Err(err) if is_no_such_entity(&err) => return Ok(None),
        Err(err) => return Err(IamError::call(OP, &err)),
    };
    let last_used = match output.access_key_last_used {
        Some(last) => match last.last_used_date {
            Some(at) => Some(LastUse {
                at: to_system_time(OP, "LastUsedDate", &at)?,
                service: last.service_name,
                region: last.region,
            }),
            // No date means never used (or not since tracking began on 2015-04-22).
            None => None,
        },
        None => None,
    };
    Ok(Some(last_used))
}
