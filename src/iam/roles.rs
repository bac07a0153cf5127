//! An account's roles, read whole with GetAccountAuthorizationDetails (`Filter=Role`): each
//! role with its path, creation, tags and last use, up to 1,000 roles a call, where GetRole
//! would cost a call per role.

use aws_sdk_iam::types::{EntityType, RoleDetail};

use super::{IamError, observe, to_system_time};
use crate::inventory::{Role, RoleLastUse};
use crate::metrics::ExporterMetrics;

const OP: &str = "GetAccountAuthorizationDetails";

/// Roles per page: IAM's maximum (its default is 100). An account holds 1,000 roles by
/// default and 5,000 at most, so one to five calls read them all.
const PAGE_SIZE: i32 = 1000;

/// Every role of the account, all pages, in IAM's order.
pub async fn list_roles(
    iam: &aws_sdk_iam::Client,
    metrics: &ExporterMetrics,
) -> Result<Vec<Role>, IamError> {
    let pages = iam
        .get_account_authorization_details()
        .filter(EntityType::Role)
        .max_items(PAGE_SIZE)
        .into_paginator()
        .send();
    let pages: Vec<_> =
        observe(metrics, OP, pages.try_collect().await).map_err(|e| IamError::call(OP, &e))?;
    pages
        .into_iter()
        .flat_map(|page| page.role_detail_list.unwrap_or_default())
        .map(role)
        .collect()
}

fn role(detail: RoleDetail) -> Result<Role, IamError> {
    let malformed = |field| IamError::Malformed {
        operation: OP,
        field,
    };
    let created = detail
        .create_date
        .as_ref()
        .ok_or_else(|| malformed("RoleDetail.CreateDate"))?;
    // RoleLastUsed is an empty element for a role IAM has not seen used in its tracking
    // period (400 days); a region without a date is no use either.
    let last_used = match detail.role_last_used {
        Some(used) => match used.last_used_date {
            Some(at) => Some(RoleLastUse {
                at: to_system_time(OP, "RoleLastUsed.LastUsedDate", &at)?,
                region: used.region.filter(|r| !r.is_empty()),
            }),
            None => None,
        },
        None => None,
    };
    Ok(Role {
        name: detail
            .role_name
            .ok_or_else(|| malformed("RoleDetail.RoleName"))?,
        arn: detail.arn.ok_or_else(|| malformed("RoleDetail.Arn"))?,
        path: detail.path.unwrap_or_else(|| "/".to_string()),
        created: to_system_time(OP, "RoleDetail.CreateDate", created)?,
        tags: detail
            .tags
            .unwrap_or_default()
            .into_iter()
            .map(|tag| (tag.key, tag.value))
            .collect(),
        last_used,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use aws_sdk_iam::Client;
    use aws_sdk_iam::operation::get_account_authorization_details::GetAccountAuthorizationDetailsOutput;
    use aws_sdk_iam::types::{RoleLastUsed, Tag};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use aws_smithy_types::DateTime;

    use super::*;

    const NOW: i64 = 1_767_225_600;
    const DAY: i64 = 86_400;

    fn detail(name: &str, path: &str, last_used_days_ago: Option<i64>) -> RoleDetail {
        let mut used = RoleLastUsed::builder();
        if let Some(days) = last_used_days_ago {
            used = used
                .last_used_date(DateTime::from_secs(NOW - days * DAY))
                .region("eu-west-1");
        }
        RoleDetail::builder()
            .role_name(name)
            .role_id(format!("AROA{}", name.to_uppercase()))
            .arn(format!("arn:aws:iam::123456789012:role{path}{name}"))
            .path(path)
            .create_date(DateTime::from_secs(NOW - 500 * DAY))
            .tags(
                Tag::builder()
                    .key("team")
                    .value("payments")
                    .build()
                    .unwrap(),
            )
            .role_last_used(used.build())
            .build()
    }

    fn at(secs: i64) -> std::time::SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    }

    #[tokio::test]
    async fn every_page_is_read_with_each_roles_last_use_path_and_tags() {
        let first = mock!(Client::get_account_authorization_details)
            .match_requests(|req| {
                req.filter() == [EntityType::Role]
                    && req.max_items() == Some(PAGE_SIZE)
                    && req.marker().is_none()
            })
            .then_output(|| {
                GetAccountAuthorizationDetailsOutput::builder()
                    .role_detail_list(detail("deployer", "/", Some(3)))
                    .role_detail_list(detail(
                        "AWSServiceRoleForSupport",
                        "/aws-service-role/support.amazonaws.com/",
                        None,
                    ))
                    .is_truncated(true)
                    .marker("page-2")
                    .build()
            });
        let second = mock!(Client::get_account_authorization_details)
            .match_requests(|req| req.marker() == Some("page-2"))
            .then_output(|| {
                GetAccountAuthorizationDetailsOutput::builder()
                    .role_detail_list(detail("idle", "/apps/", Some(120)))
                    .is_truncated(false)
                    .build()
            });
        let iam = mock_client!(aws_sdk_iam, RuleMode::MatchAny, [&first, &second]);
        let metrics = Arc::new(ExporterMetrics::without_process_metrics());

        let roles = list_roles(&iam, &metrics).await.unwrap();

        assert_eq!((first.num_calls(), second.num_calls()), (1, 1));
        let names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["deployer", "AWSServiceRoleForSupport", "idle"]);
        assert_eq!(
            roles[0].last_used,
            Some(RoleLastUse {
                at: at(NOW - 3 * DAY),
                region: Some("eu-west-1".into())
            })
        );
        assert_eq!(roles[1].last_used, None, "an empty RoleLastUsed is no use");
        assert_eq!(roles[1].path, "/aws-service-role/support.amazonaws.com/");
        assert!(roles[1].is_service_linked());
        assert!(!roles[2].is_service_linked());
        assert_eq!(roles[2].created, at(NOW - 500 * DAY));
        assert_eq!(
            roles[2].tags,
            [("team".to_string(), "payments".to_string())]
        );
        assert_eq!(roles[2].arn, "arn:aws:iam::123456789012:role/apps/idle");
    }

    #[tokio::test]
    async fn a_denied_call_is_an_access_denied_error() {
        let denied = mock!(Client::get_account_authorization_details).then_http_response(|| {
            aws_smithy_runtime_api::http::Response::new(
                aws_smithy_runtime_api::http::StatusCode::try_from(403).unwrap(),
                aws_smithy_types::body::SdkBody::from(
                    "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>\
                     <Message>no</Message></Error><RequestId>r</RequestId></ErrorResponse>",
                ),
            )
        });
        let iam = mock_client!(aws_sdk_iam, RuleMode::MatchAny, [&denied]);
        let metrics = Arc::new(ExporterMetrics::without_process_metrics());

        let err = list_roles(&iam, &metrics).await.unwrap_err();

        assert!(err.is_access_denied(), "{err}");
    }
}
