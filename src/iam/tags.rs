//! A user's tags (ListUserTags), for the tag labels.

use super::{IamError, observe};
use crate::metrics::ExporterMetrics;

/// Every tag of `user`, all pages, as IAM returns them.
pub async fn user_tags(
    iam: &aws_sdk_iam::Client,
    metrics: &ExporterMetrics,
    user: &str,
) -> Result<Vec<(String, String)>, IamError> {
    const OP: &str = "ListUserTags";
    let pages = iam.list_user_tags().user_name(user).into_paginator().send();
    let pages: Vec<_> =
        observe(metrics, OP, pages.try_collect().await).map_err(|e| IamError::call(OP, &e))?;
    Ok(pages
        .into_iter()
        .flat_map(|page| page.tags)
        .map(|tag| (tag.key, tag.value))
        .collect())
}
