//! Who the exporter is (STS GetCallerIdentity) and which accounts its organization has
//! (Organizations ListAccounts), for account discovery.

use aws_sdk_organizations::types::{AccountState, AccountStatus};

use super::{IamError, observe};
use crate::metrics::ExporterMetrics;

/// The account and partition of a set of credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct CallerIdentity {
    pub account_id: String,
    /// `aws`, `aws-cn`, `aws-us-gov`: role ARNs in other accounts are built in it.
    pub partition: String,
}

pub async fn caller_identity(
    sts: &aws_sdk_sts::Client,
    metrics: &ExporterMetrics,
) -> Result<CallerIdentity, IamError> {
    const OP: &str = "GetCallerIdentity";
    let output = observe(metrics, OP, sts.get_caller_identity().send().await)
        .map_err(|e| IamError::call(OP, &e))?;
    let account_id = output.account.ok_or(IamError::Malformed {
        operation: OP,
        field: "Account",
    })?;
    let partition = output
        .arn
        .as_deref()
        .and_then(|arn| arn.split(':').nth(1))
        .filter(|p| !p.is_empty())
        .unwrap_or("aws")
        .to_string();
    Ok(CallerIdentity {
        account_id,
        partition,
    })
}

/// The account the exporter's credentials belong to.
pub async fn caller_account_id(
    sts: &aws_sdk_sts::Client,
    metrics: &ExporterMetrics,
) -> Result<String, IamError> {
    Ok(caller_identity(sts, metrics).await?.account_id)
}

/// One account of the organization.
#[derive(Debug, Clone, PartialEq)]
pub struct OrganizationAccount {
    pub id: String,
    pub name: Option<String>,
    /// Only active accounts can be assumed into; suspended and closing ones are skipped.
    pub active: bool,
}

/// Every account of the organization, all pages.
pub async fn list_organization_accounts(
    organizations: &aws_sdk_organizations::Client,
    metrics: &ExporterMetrics,
) -> Result<Vec<OrganizationAccount>, IamError> {
    const OP: &str = "ListAccounts";
    let pages = organizations.list_accounts().into_paginator().send();
    let pages: Vec<_> =
        observe(metrics, OP, pages.try_collect().await).map_err(|e| IamError::call(OP, &e))?;
    let mut accounts = Vec::new();
    for account in pages
        .into_iter()
        .flat_map(|page| page.accounts.unwrap_or_default())
    {
        let id = account.id.clone().ok_or(IamError::Malformed {
            operation: OP,
            field: "Id",
        })?;
        // `State` replaces the deprecated `Status`; older responses carry only `Status`.
        #[allow(deprecated)]
        let active = match (account.state(), account.status()) {
            (Some(state), _) => *state == AccountState::Active,
            (None, Some(status)) => *status == AccountStatus::Active,
            (None, None) => false,
        };
        accounts.push(OrganizationAccount {
            id,
            name: account.name.clone(),
            active,
        });
    }
    Ok(accounts)
}
