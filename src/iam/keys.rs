//! The key inventory through the API: ListUsers, then per user ListAccessKeys and per key
//! GetAccessKeyLastUsed, with bounded concurrency.

use std::time::SystemTime;

use aws_sdk_iam::Client;
use aws_sdk_iam::types::{AccessKeyMetadata, StatusType};
use futures_util::{StreamExt, TryStreamExt, stream};

use super::{IamError, is_no_such_entity, observe, to_system_time};
use crate::inventory::{AccessKey, Inventory, KeyStatus, LastUse, User};
use crate::metrics::ExporterMetrics;

/// IAM's largest page: 5,000 users cost 5 ListUsers calls instead of 50.
const PAGE_SIZE: i32 = 1000;

/// Lists every user and key of the account. At most `concurrency` users are worked on at
/// once, and a user's calls run one after another, so at most `concurrency` calls are in
/// flight. Users and keys deleted while the refresh runs are skipped.
pub async fn collect_inventory(
    iam: &Client,
    metrics: &ExporterMetrics,
    account_id: &str,
    concurrency: usize,
) -> Result<Inventory, IamError> {
    let listed = list_users(iam, metrics).await?;
    let users: Vec<Option<User>> = stream::iter(listed)
        .map(|(name, arn)| collect_user(iam, metrics, name, arn))
        .buffered(concurrency.max(1))
        .try_collect()
        .await?;
    Ok(Inventory {
        account_id: account_id.to_string(),
        collected_at: SystemTime::now(),
        users: users.into_iter().flatten().collect(),
    })
}

async fn list_users(
    iam: &Client,
    metrics: &ExporterMetrics,
) -> Result<Vec<(String, String)>, IamError> {
    const OP: &str = "ListUsers";
    let mut users = Vec::new();
    let mut pages = iam
        .list_users()
        .into_paginator()
        .page_size(PAGE_SIZE)
        .send();
    while let Some(page) = pages.next().await {
        let page = observe(metrics, OP, page).map_err(|e| IamError::call(OP, &e))?;
        users.extend(page.users.into_iter().map(|u| (u.user_name, u.arn)));
    }
    Ok(users)
}

/// One user's keys, or `None` when the user was deleted after ListUsers.
async fn collect_user(
    iam: &Client,
    metrics: &ExporterMetrics,
    name: String,
    arn: String,
) -> Result<Option<User>, IamError> {
    const OP: &str = "ListAccessKeys";
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
        if let Some(key) = collect_key(iam, metrics, &name, metadata).await? {
            keys.push(key);
        }
    }
    Ok(Some(User { name, arn, keys }))
}

/// One key with its last use, or `None` when the key was deleted after ListAccessKeys.
async fn collect_key(
    iam: &Client,
    metrics: &ExporterMetrics,
    user: &str,
    metadata: AccessKeyMetadata,
) -> Result<Option<AccessKey>, IamError> {
    const LIST: &str = "ListAccessKeys";
    const OP: &str = "GetAccessKeyLastUsed";
    let id = metadata.access_key_id.ok_or(IamError::Malformed {
        operation: LIST,
        field: "AccessKeyId",
    })?;
    let created = metadata.create_date.as_ref().ok_or(IamError::Malformed {
        operation: LIST,
        field: "CreateDate",
    })?;
    let created = to_system_time(LIST, "CreateDate", created)?;
    // Only Active keys authenticate; Inactive and any status IAM adds later do not.
    let status = match metadata.status {
        Some(StatusType::Active) => KeyStatus::Active,
        _ => KeyStatus::Inactive,
    };

    let result = iam
        .get_access_key_last_used()
        .access_key_id(&id)
        .send()
        .await;
    let output = match observe(metrics, OP, result) {
        Ok(output) => output,
        Err(err) if is_no_such_entity(&err) => {
            tracing::debug!(user, "access key deleted during refresh; skipped");
            return Ok(None);
        }
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
    Ok(Some(AccessKey {
        id,
        status,
        created,
        last_used,
    }))
}
