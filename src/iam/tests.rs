//! What moto cannot show: paging over several pages, entities deleted mid-refresh, error
//! codes, and service-last-accessed jobs, against aws-smithy-mocks rules that also check
//! that no other call was made.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_iam::Client;
use aws_sdk_iam::operation::generate_credential_report::GenerateCredentialReportOutput;
use aws_sdk_iam::operation::generate_service_last_accessed_details::GenerateServiceLastAccessedDetailsOutput;
use aws_sdk_iam::operation::get_access_key_last_used::GetAccessKeyLastUsedOutput;
use aws_sdk_iam::operation::get_account_summary::GetAccountSummaryOutput;
use aws_sdk_iam::operation::get_credential_report::GetCredentialReportOutput;
use aws_sdk_iam::operation::get_service_last_accessed_details::GetServiceLastAccessedDetailsOutput;
use aws_sdk_iam::operation::list_access_keys::ListAccessKeysOutput;
use aws_sdk_iam::operation::list_users::ListUsersOutput;
use aws_sdk_iam::primitives::{Blob, DateTime};
use aws_sdk_iam::types::{
    AccessKeyLastUsed, AccessKeyMetadata, ErrorDetails, JobStatusType, ReportFormatType,
    ReportStateType, ServiceLastAccessed, StatusType, SummaryKeyType, User,
};
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
use aws_smithy_runtime_api::http::{Response as HttpResponse, StatusCode};
use aws_smithy_types::body::SdkBody;

use super::*;
use crate::filter::UserFilter;
use crate::inventory::{KeyStatus, ServiceCounts, TrackedActions};

const ACCOUNT: &str = "123456789012";
const NOW: i64 = 1_767_225_600;
const DAY: i64 = 86_400;

/// A client answering `rules`, plus GetAccountSummary (every inventory asks it once).
fn client(rules: &[&Rule], metrics: &Arc<ExporterMetrics>) -> Client {
    let counter = CountRequests {
        metrics: metrics.clone(),
        account: AccountLabel::new(Some(ACCOUNT.into())),
    };
    let summary = mock!(Client::get_account_summary).then_output(|| {
        GetAccountSummaryOutput::builder()
            .summary_map(SummaryKeyType::AccountAccessKeysPresent, 0)
            .summary_map(SummaryKeyType::Users, 4)
            .build()
    });
    let mut all = rules.to_vec();
    all.push(&summary);
    mock_client!(aws_sdk_iam, RuleMode::MatchAny, all, |conf| conf
        .interceptor(counter.clone()))
}

/// A CloudTrail client answering `rules` and counting its requests.
fn cloudtrail_client(
    rules: &[&Rule],
    metrics: &Arc<ExporterMetrics>,
) -> aws_sdk_cloudtrail::Client {
    let counter = CountRequests {
        metrics: metrics.clone(),
        account: AccountLabel::new(Some(ACCOUNT.into())),
    };
    mock_client!(aws_sdk_cloudtrail, RuleMode::MatchAny, rules, |conf| conf
        .interceptor(counter.clone()))
}

fn arn(name: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:user/{name}")
}

fn user(name: &str) -> User {
    User::builder()
        .user_name(name)
        .user_id(format!("AIDA{}", name.to_uppercase()))
        .arn(arn(name))
        .path("/")
        .create_date(DateTime::from_secs(NOW - 1000 * DAY))
        .build()
        .unwrap()
}

fn key(user: &str, id: &str, status: StatusType, created_days_ago: i64) -> AccessKeyMetadata {
    AccessKeyMetadata::builder()
        .user_name(user)
        .access_key_id(id)
        .status(status)
        .create_date(DateTime::from_secs(NOW - created_days_ago * DAY))
        .build()
}

/// An IAM error as IAM sends it, so the SDK's own parser reads the code.
fn iam_error(status: u16, code: &str) -> HttpResponse {
    let body = format!(
        "<ErrorResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><Error><Type>Sender</Type>\
         <Code>{code}</Code><Message>{code} in a test</Message></Error><RequestId>r</RequestId></ErrorResponse>"
    );
    HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::from(body))
}

fn last_used(days_ago: Option<i64>) -> GetAccessKeyLastUsedOutput {
    let used = match days_ago {
        Some(days) => AccessKeyLastUsed::builder()
            .last_used_date(DateTime::from_secs(NOW - days * DAY))
            .service_name("s3")
            .region("eu-west-1"),
        None => AccessKeyLastUsed::builder()
            .service_name("N/A")
            .region("N/A"),
    };
    GetAccessKeyLastUsedOutput::builder()
        .access_key_last_used(used.build().unwrap())
        .build()
}

fn at(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs as u64)
}

fn requests(metrics: &ExporterMetrics, operation: &str) -> u64 {
    metrics
        .aws_requests_total
        .with_label_values(&[operation])
        .get()
}

fn errors(metrics: &ExporterMetrics, operation: &str, code: &str) -> u64 {
    metrics
        .aws_errors_total
        .with_label_values(&[operation, code])
        .get()
}

#[tokio::test]
async fn follows_every_page_of_users_and_keys() {
    // Three pages of users; bob's keys come in two pages.
    let page1 = mock!(Client::list_users)
        .match_requests(|r| r.marker().is_none())
        .then_output(|| {
            ListUsersOutput::builder()
                .users(user("alice"))
                .users(user("bob"))
                .is_truncated(true)
                .marker("after-bob")
                .build()
                .unwrap()
        });
    let page2 = mock!(Client::list_users)
        .match_requests(|r| r.marker() == Some("after-bob"))
        .then_output(|| {
            ListUsersOutput::builder()
                .users(user("carol"))
                .is_truncated(true)
                .marker("after-carol")
                .build()
                .unwrap()
        });
    let page3 = mock!(Client::list_users)
        .match_requests(|r| r.marker() == Some("after-carol"))
        .then_output(|| {
            ListUsersOutput::builder()
                .users(user("dave"))
                .is_truncated(false)
                .build()
                .unwrap()
        });
    let keys_alice = mock!(Client::list_access_keys)
        .match_requests(|r| r.user_name() == Some("alice"))
        .then_output(|| {
            ListAccessKeysOutput::builder()
                .access_key_metadata(key("alice", "AKIAALICE0000000001", StatusType::Active, 400))
                .build()
                .unwrap()
        });
    let keys_bob_1 = mock!(Client::list_access_keys)
        .match_requests(|r| r.user_name() == Some("bob") && r.marker().is_none())
        .then_output(|| {
            ListAccessKeysOutput::builder()
                .access_key_metadata(key("bob", "AKIABOB000000000001", StatusType::Active, 10))
                .is_truncated(true)
                .marker("bob-2")
                .build()
                .unwrap()
        });
    let keys_bob_2 = mock!(Client::list_access_keys)
        .match_requests(|r| r.user_name() == Some("bob") && r.marker() == Some("bob-2"))
        .then_output(|| {
            ListAccessKeysOutput::builder()
                .access_key_metadata(key("bob", "AKIABOB000000000002", StatusType::Inactive, 5))
                .build()
                .unwrap()
        });
    let keys_none = mock!(Client::list_access_keys)
        .match_requests(|r| matches!(r.user_name(), Some("carol" | "dave")))
        .then_output(|| {
            ListAccessKeysOutput::builder()
                .set_access_key_metadata(Some(vec![]))
                .build()
                .unwrap()
        });
    let used = mock!(Client::get_access_key_last_used)
        .match_requests(|r| r.access_key_id() != Some("AKIABOB000000000002"))
        .then_output(|| last_used(Some(3)));
    let never = mock!(Client::get_access_key_last_used)
        .match_requests(|r| r.access_key_id() == Some("AKIABOB000000000002"))
        .then_output(|| last_used(None));

    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(
        &[
            &page1,
            &page2,
            &page3,
            &keys_alice,
            &keys_bob_1,
            &keys_bob_2,
            &keys_none,
            &used,
            &never,
        ],
        &metrics,
    );
    let inventory = collect_inventory(&iam, &metrics, ACCOUNT, 2, None, &UserFilter::default())
        .await
        .unwrap();

    let names: Vec<&str> = inventory.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(
        names,
        ["alice", "bob", "carol", "dave"],
        "all pages, in IAM's order"
    );
    assert_eq!(inventory.account_id, ACCOUNT);
    assert_eq!(inventory.users[0].arn, arn("alice"));
    assert_eq!(inventory.users[0].created, Some(at(NOW - 1000 * DAY)));
    let bob = &inventory.users[1];
    assert_eq!(bob.keys.len(), 2, "both pages of bob's keys");
    assert_eq!(bob.keys[0].id, "AKIABOB000000000001");
    assert_eq!(bob.keys[0].status, KeyStatus::Active);
    assert_eq!(bob.keys[0].created, at(NOW - 10 * DAY));
    let used_once = bob.keys[0].last_used.as_ref().unwrap();
    assert_eq!(used_once.at, at(NOW - 3 * DAY));
    assert_eq!(
        (used_once.service.as_str(), used_once.region.as_str()),
        ("s3", "eu-west-1")
    );
    assert_eq!(bob.keys[1].status, KeyStatus::Inactive);
    assert_eq!(
        bob.keys[1].last_used, None,
        "no LastUsedDate means never used"
    );
    assert!(inventory.users[2].keys.is_empty());

    // Every page was asked for exactly once, and nothing else was called.
    for (rule, calls) in [
        (&page1, 1),
        (&page2, 1),
        (&page3, 1),
        (&keys_alice, 1),
        (&keys_bob_1, 1),
        (&keys_bob_2, 1),
        (&keys_none, 2),
        (&used, 2),
        (&never, 1),
    ] {
        assert_eq!(rule.num_calls(), calls);
    }
    assert_eq!(requests(&metrics, "ListUsers"), 3);
    assert_eq!(requests(&metrics, "ListAccessKeys"), 5);
    assert_eq!(requests(&metrics, "GetAccessKeyLastUsed"), 3);
}

#[tokio::test]
async fn users_and_keys_deleted_mid_refresh_are_skipped() {
    let users = mock!(Client::list_users).then_output(|| {
        ListUsersOutput::builder()
            .users(user("stays"))
            .users(user("gone"))
            .build()
            .unwrap()
    });
    let keys_stays = mock!(Client::list_access_keys)
        .match_requests(|r| r.user_name() == Some("stays"))
        .then_output(|| {
            ListAccessKeysOutput::builder()
                .access_key_metadata(key("stays", "AKIASTAYS0000000001", StatusType::Active, 50))
                .access_key_metadata(key("stays", "AKIAREVOKED00000001", StatusType::Active, 40))
                .build()
                .unwrap()
        });
    let keys_gone = mock!(Client::list_access_keys)
        .match_requests(|r| r.user_name() == Some("gone"))
        .then_http_response(|| iam_error(404, "NoSuchEntity"));
    let used = mock!(Client::get_access_key_last_used)
        .match_requests(|r| r.access_key_id() == Some("AKIASTAYS0000000001"))
        .then_output(|| last_used(Some(1)));
    let revoked = mock!(Client::get_access_key_last_used)
        .match_requests(|r| r.access_key_id() == Some("AKIAREVOKED00000001"))
        .then_http_response(|| iam_error(404, "NoSuchEntity"));

    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(
        &[&users, &keys_stays, &keys_gone, &used, &revoked],
        &metrics,
    );
    let inventory = collect_inventory(&iam, &metrics, ACCOUNT, 4, None, &UserFilter::default())
        .await
        .unwrap();

    assert_eq!(inventory.users.len(), 1, "the deleted user is skipped");
    assert_eq!(inventory.users[0].name, "stays");
    let ids: Vec<&str> = inventory.users[0]
        .keys
        .iter()
        .map(|k| k.id.as_str())
        .collect();
    assert_eq!(ids, ["AKIASTAYS0000000001"], "the deleted key is skipped");
    assert_eq!(errors(&metrics, "ListAccessKeys", "NoSuchEntity"), 1);
    assert_eq!(errors(&metrics, "GetAccessKeyLastUsed", "NoSuchEntity"), 1);
}

#[tokio::test]
async fn any_other_error_fails_the_refresh_with_its_code() {
    let users = mock!(Client::list_users).then_output(|| {
        ListUsersOutput::builder()
            .users(user("alice"))
            .build()
            .unwrap()
    });
    let denied =
        mock!(Client::list_access_keys).then_http_response(|| iam_error(403, "AccessDenied"));

    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(&[&users, &denied], &metrics);
    let err = collect_inventory(&iam, &metrics, ACCOUNT, 4, None, &UserFilter::default())
        .await
        .unwrap_err();

    match &err {
        IamError::Call {
            operation, code, ..
        } => {
            assert_eq!(
                (*operation, code.as_str()),
                ("ListAccessKeys", "AccessDenied")
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("ListAccessKeys failed (AccessDenied)"),
        "{err}"
    );
    assert_eq!(errors(&metrics, "ListAccessKeys", "AccessDenied"), 1);
}

fn generate_job() -> Rule {
    mock!(Client::generate_service_last_accessed_details)
        .match_requests(|r| r.arn() == Some(arn("alice").as_str()))
        .then_output(|| {
            GenerateServiceLastAccessedDetailsOutput::builder()
                .job_id("job-1")
                .build()
        })
}

fn job_page(status: JobStatusType) -> aws_sdk_iam::operation::get_service_last_accessed_details::builders::GetServiceLastAccessedDetailsOutputBuilder{
    GetServiceLastAccessedDetailsOutput::builder()
        .job_status(status)
        .job_creation_date(DateTime::from_secs(NOW))
        .job_completion_date(DateTime::from_secs(NOW))
        .set_services_last_accessed(Some(vec![]))
}

fn service(namespace: &str, accessed: bool) -> ServiceLastAccessed {
    let builder = ServiceLastAccessed::builder()
        .service_name(format!("Service {namespace}"))
        .service_namespace(namespace);
    let builder = if accessed {
        builder
            .last_authenticated(DateTime::from_secs(NOW - DAY))
            .last_authenticated_entity(arn("alice"))
            .total_authenticated_entities(1)
    } else {
        builder.total_authenticated_entities(0)
    };
    builder.build().unwrap()
}

const POLICY: JobPolicy = JobPolicy {
    action_level: false,
    poll_interval: Duration::from_secs(1),
    poll_interval_max: Duration::from_secs(8),
    timeout: Duration::from_secs(60),
};

/// An ACTION_LEVEL job: the service-level counts as before, and per service whose tracked
/// actions IAM lists (only when one was used) the actions granted and used. The job is
/// asked at action level, and a service-level job at service level.
#[tokio::test(start_paused = true)]
async fn an_action_level_job_counts_each_services_tracked_actions() {
    use aws_sdk_iam::types::{AccessAdvisorUsageGranularityType, TrackedActionLastAccessed};
    let action = |name: &str, used: bool| {
        let mut builder = TrackedActionLastAccessed::builder().action_name(name);
        if used {
            builder = builder
                .last_accessed_time(DateTime::from_secs(NOW - DAY))
                .last_accessed_entity(arn("alice"))
                .last_accessed_region("eu-west-1");
        }
        builder.build()
    };
    let generate = mock!(Client::generate_service_last_accessed_details)
        .match_requests(|r| {
            r.granularity() == Some(&AccessAdvisorUsageGranularityType::ActionLevel)
        })
        .then_output(|| {
            GenerateServiceLastAccessedDetailsOutput::builder()
                .job_id("job-1")
                .build()
        });
    let page = mock!(Client::get_service_last_accessed_details).then_output(move || {
        let mut s3 = service("s3", true);
        s3.tracked_actions_last_accessed = Some(vec![
            action("PutObject", true),
            action("DeleteBucket", false),
            action("PutBucketPolicy", true),
        ]);
        let mut ec2 = service("ec2", true);
        ec2.tracked_actions_last_accessed = Some(vec![action("RunInstances", true)]);
        job_page(JobStatusType::Completed)
            .services_last_accessed(s3)
            .services_last_accessed(ec2)
            // Granted, never used: IAM lists none of its tracked actions.
            .services_last_accessed(service("lambda", false))
            .is_truncated(false)
            .build()
            .unwrap()
    });
    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(&[&generate, &page], &metrics);
    let policy = JobPolicy {
        action_level: true,
        ..POLICY
    };

    let counts = service_counts(&iam, &metrics, &arn("alice"), policy)
        .await
        .unwrap();

    assert_eq!(generate.num_calls(), 1, "asked at action level");
    let tracked = |namespace: &str, granted, used| TrackedActions {
        service_namespace: namespace.into(),
        granted,
        used,
    };
    assert_eq!(
        counts,
        ServiceCounts {
            accessed: 2,
            granted: 3,
            actions: vec![tracked("s3", 3, 2), tracked("ec2", 1, 1)],
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_job_is_polled_until_completed_and_every_page_is_counted() {
    let generate = generate_job();
    // First poll: IN_PROGRESS; second: COMPLETED, page 1 of 2; then page 2 by marker.
    let first_page = mock!(Client::get_service_last_accessed_details)
        .match_requests(|r| r.job_id() == Some("job-1") && r.marker().is_none())
        .sequence()
        .output(|| job_page(JobStatusType::InProgress).build().unwrap())
        .output(|| {
            job_page(JobStatusType::Completed)
                .services_last_accessed(service("s3", true))
                .services_last_accessed(service("ec2", false))
                .services_last_accessed(service("iam", true))
                .is_truncated(true)
                .marker("page-2")
                .build()
                .unwrap()
        })
        .build();
    let second_page = mock!(Client::get_service_last_accessed_details)
        .match_requests(|r| r.marker() == Some("page-2"))
        .then_output(|| {
            job_page(JobStatusType::Completed)
                .services_last_accessed(service("lambda", false))
                .services_last_accessed(service("sts", true))
                .is_truncated(false)
                .build()
                .unwrap()
        });

    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(&[&generate, &first_page, &second_page], &metrics);
    let started = tokio::time::Instant::now();
    let counts = service_counts(&iam, &metrics, &arn("alice"), POLICY)
        .await
        .unwrap();

    assert_eq!(
        counts,
        ServiceCounts {
            accessed: 3,
            granted: 5,
            actions: vec![],
        }
    );
    assert_eq!(
        (
            generate.num_calls(),
            first_page.num_calls(),
            second_page.num_calls()
        ),
        (1, 2, 1)
    );
    // Waits of 1 s before the first poll and 2 s before the second; none between pages.
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert_eq!(requests(&metrics, "GetServiceLastAccessedDetails"), 3);
}

#[tokio::test(start_paused = true)]
async fn a_failed_job_reports_iams_reason() {
    let generate = generate_job();
    let failed = mock!(Client::get_service_last_accessed_details).then_output(|| {
        job_page(JobStatusType::Failed)
            .error(
                ErrorDetails::builder()
                    .code("InternalFailure")
                    .message("report generation failed")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    });
    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(&[&generate, &failed], &metrics);
    let err = service_counts(&iam, &metrics, &arn("alice"), POLICY)
        .await
        .unwrap_err();
    match err {
        IamError::JobFailed {
            arn: failed_arn,
            reason,
        } => {
            assert_eq!(failed_arn, arn("alice"));
            assert_eq!(reason, "InternalFailure: report generation failed");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(failed.num_calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_job_still_running_at_the_deadline_times_out_after_backing_off() {
    let generate = generate_job();
    let running = mock!(Client::get_service_last_accessed_details)
        .then_output(|| job_page(JobStatusType::InProgress).build().unwrap());
    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(&[&generate, &running], &metrics);
    let started = tokio::time::Instant::now();
    let err = service_counts(&iam, &metrics, &arn("alice"), POLICY)
        .await
        .unwrap_err();

    assert!(matches!(err, IamError::JobTimedOut { .. }), "{err:?}");
    assert_eq!(
        started.elapsed(),
        POLICY.timeout,
        "gives up exactly at the deadline"
    );
    // Polls after 1, 2, 4, 8, 8, 8, 8, 8, 8 s (t = 1, 3, 7, 15, 23, ..., 55), then a last
    // one at the deadline, t = 60.
    assert_eq!(running.num_calls(), 10);
}

#[tokio::test]
async fn generate_errors_are_reported_with_their_code() {
    let denied = mock!(Client::generate_service_last_accessed_details)
        .then_http_response(|| iam_error(403, "AccessDenied"));
    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(&[&denied], &metrics);
    let err = service_counts(&iam, &metrics, &arn("alice"), POLICY)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, IamError::Call { operation: "GenerateServiceLastAccessedDetails", code, .. } if code == "AccessDenied"),
        "{err:?}"
    );
    assert_eq!(
        errors(
            &metrics,
            "GenerateServiceLastAccessedDetails",
            "AccessDenied"
        ),
        1
    );
}

// The credential report.

const REPORT_HEADER: &str = "user,arn,user_creation_time,password_enabled,password_last_used,password_last_changed,password_next_rotation,mfa_active,access_key_1_active,access_key_1_last_rotated,access_key_1_last_used_date,access_key_1_last_used_region,access_key_1_last_used_service,access_key_2_active,access_key_2_last_rotated,access_key_2_last_used_date,access_key_2_last_used_region,access_key_2_last_used_service,cert_1_active,cert_1_last_rotated,cert_2_active,cert_2_last_rotated";

fn iso(secs: i64) -> String {
    DateTime::from_secs(secs)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap()
        .replace('Z', "+00:00")
}

/// A report with a root row holding one never-used key, and alice with two keys: slot 1
/// created 400 days ago and used 3 days ago in s3/eu-west-1, slot 2 inactive, never used.
fn report_csv() -> String {
    let root = format!(
        "<root_account>,arn:aws:iam::{ACCOUNT}:root,{},not_supported,{},not_supported,not_supported,true,true,{},N/A,N/A,N/A,false,N/A,N/A,N/A,N/A,false,N/A,false,N/A",
        iso(NOW - 2000 * DAY),
        iso(NOW - 30 * DAY),
        iso(NOW - 700 * DAY)
    );
    let alice = format!(
        "alice,{},{},true,no_information,{},N/A,false,true,{},{},eu-west-1,s3,false,{},N/A,N/A,N/A,false,N/A,false,N/A",
        arn("alice"),
        iso(NOW - 1000 * DAY),
        iso(NOW - 1000 * DAY),
        iso(NOW - 400 * DAY),
        iso(NOW - 3 * DAY),
        iso(NOW - 50 * DAY)
    );
    format!("{REPORT_HEADER}\n{root}\n{alice}\n")
}

fn report_output(generated_hours_ago: i64) -> GetCredentialReportOutput {
    report_output_at(hours_ago(generated_hours_ago))
}

/// Unix seconds `hours` ago. A mock that must keep answering the same report computes it
/// once: computed at each answer, a second ticking over between two answers would make
/// the same report look newer.
fn hours_ago(hours: i64) -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - hours * 3600
}

fn report_output_at(generated: i64) -> GetCredentialReportOutput {
    GetCredentialReportOutput::builder()
        .content(Blob::new(report_csv()))
        .report_format(ReportFormatType::TextCsv)
        .generated_time(DateTime::from_secs(generated))
        .build()
}

/// GetCredentialReport answering IAM's error `code` once, then a report just generated.
fn get_report_after(status: u16, code: &'static str) -> Rule {
    mock!(Client::get_credential_report)
        .sequence()
        .http_response(move || iam_error(status, code))
        .output(|| report_output(0))
        .build()
}

fn generate_state(state: ReportStateType) -> GenerateCredentialReportOutput {
    GenerateCredentialReportOutput::builder()
        .state(state)
        .build()
}

const REPORT_POLICY: ReportPolicy = ReportPolicy {
    max_age: Duration::from_secs(4 * 3600),
    poll_interval: Duration::from_secs(1),
    poll_interval_max: Duration::from_secs(4),
    timeout: Duration::from_secs(60),
};

#[tokio::test]
async fn a_report_younger_than_the_maximum_age_costs_one_call() {
    let get = mock!(Client::get_credential_report).then_output(|| report_output(1));
    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(&[&get], &metrics);
    let report = credential_report(&iam, &metrics, REPORT_POLICY)
        .await
        .unwrap();
    assert_eq!(report.rows.len(), 2);
    assert!(report.rows[0].is_root());
    assert_eq!(get.num_calls(), 1);
    assert_eq!(
        requests(&metrics, "GenerateCredentialReport"),
        0,
        "the 4-hour rule"
    );
}

#[tokio::test(start_paused = true)]
async fn a_missing_report_is_generated_and_waited_for() {
    let get = get_report_after(410, "ReportNotPresent");
    let generate = mock!(Client::generate_credential_report)
        .then_output(|| generate_state(ReportStateType::Started));
    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(&[&get, &generate], &metrics);
    let started = tokio::time::Instant::now();
    let report = credential_report(&iam, &metrics, REPORT_POLICY)
        .await
        .unwrap();
    assert_eq!(report.rows.len(), 2);
    // Started once, then polled through GetCredentialReport, which returns the report.
    assert_eq!((get.num_calls(), generate.num_calls()), (2, 1));
    assert_eq!(started.elapsed(), Duration::from_secs(1), "one wait of 1 s");
    // The report's states are not errors: a generation must not look like a fault.
    assert_eq!(
        errors(&metrics, "GetCredentialReport", "ReportNotPresent"),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_report_is_regenerated_and_limit_exceeded_waited_out() {
    let get = get_report_after(410, "ReportExpired");
    let generate = mock!(Client::generate_credential_report)
        .then_http_response(|| iam_error(409, "LimitExceeded"));
    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(&[&get, &generate], &metrics);
    credential_report(&iam, &metrics, REPORT_POLICY)
        .await
        .unwrap();
    // LimitExceeded: a generation is under way, and is polled for like one we started.
    assert_eq!((get.num_calls(), generate.num_calls()), (2, 1));
    assert_eq!(
        errors(&metrics, "GenerateCredentialReport", "LimitExceeded"),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_report_in_progress_elsewhere_is_waited_for() {
    let get = get_report_after(404, "ReportInProgress");
    let generate = mock!(Client::generate_credential_report)
        .then_output(|| generate_state(ReportStateType::Complete));
    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(&[&get, &generate], &metrics);
    credential_report(&iam, &metrics, REPORT_POLICY)
        .await
        .unwrap();
    assert_eq!(
        (get.num_calls(), generate.num_calls()),
        (2, 0),
        "no GenerateCredentialReport while one is in progress"
    );
}

#[tokio::test(start_paused = true)]
async fn an_old_report_is_used_when_a_new_one_cannot_be_generated() {
    let get = mock!(Client::get_credential_report).then_output(|| report_output(30));
    let generate = mock!(Client::generate_credential_report)
        .then_http_response(|| iam_error(403, "AccessDenied"));
    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(&[&get, &generate], &metrics);
    let report = credential_report(&iam, &metrics, REPORT_POLICY)
        .await
        .unwrap();
    let age = SystemTime::now()
        .duration_since(report.generated_at)
        .unwrap();
    assert!(
        age >= Duration::from_secs(30 * 3600),
        "the old report, its age visible"
    );
    assert_eq!((get.num_calls(), generate.num_calls()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn generation_gives_up_at_its_deadline_without_an_older_report() {
    let get = mock!(Client::get_credential_report)
        .then_http_response(|| iam_error(410, "ReportNotPresent"));
    let generate = mock!(Client::generate_credential_report)
        .then_output(|| generate_state(ReportStateType::Inprogress));
    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(&[&get, &generate], &metrics);
    let err = credential_report(&iam, &metrics, REPORT_POLICY)
        .await
        .unwrap_err();
    assert!(matches!(err, IamError::ReportTimedOut { .. }), "{err:?}");
}

#[tokio::test]
async fn a_malformed_report_is_a_clear_error() {
    let get = mock!(Client::get_credential_report).then_output(|| {
        GetCredentialReportOutput::builder()
            .content(Blob::new(report_csv().replace(",mfa_active", "")))
            .generated_time(DateTime::from_secs(NOW))
            .build()
    });
    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(&[&get], &metrics);
    let policy = ReportPolicy {
        max_age: Duration::MAX,
        ..REPORT_POLICY
    };
    let err = credential_report(&iam, &metrics, policy).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "credential report has no column \"mfa_active\""
    );
}

/// IAM's credential report over the paused clock, to measure what each case costs. It
/// holds a report generated some hours ago, or none; GenerateCredentialReport starts a
/// generation that takes `takes` (STARTED), answers INPROGRESS while it runs and COMPLETE
/// once a report younger than 4 hours exists; GetCredentialReport answers
/// ReportInProgress while a generation runs, as IAM documents.
struct ReportIam {
    generated_hours_ago: Option<i64>,
    /// When the generation under way finishes.
    ready_at: Option<tokio::time::Instant>,
    takes: Duration,
}

impl ReportIam {
    fn new(generated_hours_ago: Option<i64>, takes: Duration) -> ReportIam {
        ReportIam {
            generated_hours_ago,
            ready_at: None,
            takes,
        }
    }

    /// A generation someone else started, finishing after `takes`.
    fn in_progress(takes: Duration) -> ReportIam {
        ReportIam {
            generated_hours_ago: None,
            ready_at: Some(tokio::time::Instant::now() + takes),
            takes,
        }
    }

    fn finish_if_due(&mut self) {
        if self
            .ready_at
            .is_some_and(|at| tokio::time::Instant::now() >= at)
        {
            self.ready_at = None;
            self.generated_hours_ago = Some(0);
        }
    }
}

/// GetCredentialReport and GenerateCredentialReport calls and the time one
/// `credential_report` takes against `iam`, and how old the report it returns is.
async fn report_cost(iam: ReportIam) -> (usize, usize, Duration, Duration) {
    use aws_smithy_mocks::MockResponse;
    let state = Arc::new(std::sync::Mutex::new(iam));
    let shared = state.clone();
    let get = mock!(Client::get_credential_report).then_compute_response(move |_| {
        let mut iam = shared.lock().unwrap();
        iam.finish_if_due();
        match (iam.ready_at, iam.generated_hours_ago) {
            (Some(_), _) => MockResponse::Http(iam_error(404, "ReportInProgress")),
            (None, Some(hours)) => MockResponse::Output(report_output(hours)),
            (None, None) => MockResponse::Http(iam_error(410, "ReportNotPresent")),
        }
    });
    let shared = state.clone();
    let generate = mock!(Client::generate_credential_report).then_compute_response(move |_| {
        let mut iam = shared.lock().unwrap();
        iam.finish_if_due();
        let state = if iam.ready_at.is_some() {
            ReportStateType::Inprogress
        } else if iam.generated_hours_ago.is_some_and(|hours| hours < 4) {
            ReportStateType::Complete
        } else {
            iam.ready_at = Some(tokio::time::Instant::now() + iam.takes);
            ReportStateType::Started
        };
        MockResponse::Output(generate_state(state))
    });
    let metrics = Arc::new(ExporterMetrics::new());
    let client = client(&[&get, &generate], &metrics);
    let started = tokio::time::Instant::now();
    let report = credential_report(&client, &metrics, REPORT_POLICY)
        .await
        .unwrap();
    let age = SystemTime::now()
        .duration_since(report.generated_at)
        .unwrap_or_default();
    (
        get.num_calls(),
        generate.num_calls(),
        started.elapsed(),
        age,
    )
}

const SECOND: Duration = Duration::from_secs(1);
/// IAM finishing before the first poll, after a wait of 1 s.
const QUICK: Duration = Duration::from_millis(500);
/// IAM answering STARTED, then INPROGRESS at the 1 s poll, then COMPLETE at the 3 s one.
const USUAL: Duration = Duration::from_secs(2);

#[tokio::test(start_paused = true)]
async fn cost_of_a_fresh_report_is_one_call() {
    let (gets, generates, waited, age) = report_cost(ReportIam::new(Some(1), USUAL)).await;
    assert_eq!((gets, generates, waited), (1, 0, Duration::ZERO));
    assert!(age >= Duration::from_secs(3600), "the report IAM had");
}

#[tokio::test(start_paused = true)]
async fn cost_of_a_report_older_than_the_maximum_age_is_three_or_four_calls() {
    // GetCredentialReport (the old report), GenerateCredentialReport (STARTED), then
    // GetCredentialReport once per poll until the new report is there.
    let quick = report_cost(ReportIam::new(Some(5), QUICK)).await;
    assert_eq!((quick.0, quick.1, quick.2), (2, 1, SECOND));
    let usual = report_cost(ReportIam::new(Some(5), USUAL)).await;
    assert_eq!((usual.0, usual.1, usual.2), (3, 1, 3 * SECOND));
    assert!(usual.3 < Duration::from_secs(60), "the new report");
}

#[tokio::test(start_paused = true)]
async fn cost_of_no_report_with_iams_started_inprogress_complete_is_four_calls() {
    // GetCredentialReport (ReportNotPresent), GenerateCredentialReport (STARTED),
    // GetCredentialReport at 1 s (ReportInProgress) and at 3 s (the report).
    let usual = report_cost(ReportIam::new(None, USUAL)).await;
    assert_eq!((usual.0, usual.1, usual.2), (3, 1, 3 * SECOND));
    let quick = report_cost(ReportIam::new(None, QUICK)).await;
    assert_eq!((quick.0, quick.1, quick.2), (2, 1, SECOND));
}

#[tokio::test(start_paused = true)]
async fn cost_of_a_report_in_progress_is_two_or_three_calls() {
    // A generation already under way is waited for without GenerateCredentialReport.
    let quick = report_cost(ReportIam::in_progress(QUICK)).await;
    assert_eq!((quick.0, quick.1, quick.2), (2, 0, SECOND));
    let usual = report_cost(ReportIam::in_progress(USUAL)).await;
    assert_eq!((usual.0, usual.1, usual.2), (3, 0, 3 * SECOND));
}

#[tokio::test(start_paused = true)]
async fn the_old_report_served_during_generation_is_not_taken_for_the_new_one() {
    let old = hours_ago(5);
    let get = mock!(Client::get_credential_report)
        .sequence()
        .output(move || report_output_at(old))
        .times(2)
        .output(|| report_output(0))
        .build();
    let generate = mock!(Client::generate_credential_report)
        .then_output(|| generate_state(ReportStateType::Started));
    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(&[&get, &generate], &metrics);
    let report = credential_report(&iam, &metrics, REPORT_POLICY)
        .await
        .unwrap();
    let age = SystemTime::now().duration_since(report.generated_at);
    assert!(
        age.unwrap_or_default() < Duration::from_secs(60),
        "the new one"
    );
    assert_eq!((get.num_calls(), generate.num_calls()), (3, 1));
}

#[tokio::test(start_paused = true)]
async fn a_report_iam_will_not_regenerate_is_fetched_once_more() {
    // A maximum age under IAM's 4 hours: IAM answers COMPLETE and keeps its report.
    let get = mock!(Client::get_credential_report).then_output(|| report_output(2));
    let generate = mock!(Client::generate_credential_report)
        .then_output(|| generate_state(ReportStateType::Complete));
    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(&[&get, &generate], &metrics);
    let policy = ReportPolicy {
        max_age: Duration::from_secs(3600),
        ..REPORT_POLICY
    };
    let started = tokio::time::Instant::now();
    credential_report(&iam, &metrics, policy).await.unwrap();
    assert_eq!((get.num_calls(), generate.num_calls()), (2, 1));
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no wait for a new report"
    );
}

#[tokio::test(start_paused = true)]
async fn the_old_report_is_used_when_the_new_one_never_comes() {
    let old = hours_ago(30);
    let get = mock!(Client::get_credential_report).then_output(move || report_output_at(old));
    let generate = mock!(Client::generate_credential_report)
        .then_output(|| generate_state(ReportStateType::Started));
    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(&[&get, &generate], &metrics);
    let started = tokio::time::Instant::now();
    let report = credential_report(&iam, &metrics, REPORT_POLICY)
        .await
        .unwrap();
    let age = SystemTime::now().duration_since(report.generated_at);
    assert!(age.unwrap_or_default() >= Duration::from_secs(30 * 3600));
    assert_eq!(started.elapsed(), REPORT_POLICY.timeout);
    assert_eq!(generate.num_calls(), 1, "started once, never asked again");
}

/// Everything logged on this thread while the guard lives.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn a_user_on_two_report_rows_is_one_user_and_one_warning_over_refreshes() {
    let get = mock!(Client::get_credential_report).then_output(|| {
        let csv = report_csv();
        let alice = csv.lines().last().unwrap().to_string();
        GetCredentialReportOutput::builder()
            .content(Blob::new(format!("{csv}{alice}\n")))
            .report_format(ReportFormatType::TextCsv)
            .generated_time(DateTime::from(SystemTime::now()))
            .build()
    });
    let users = mock!(Client::list_users).then_output(|| {
        ListUsersOutput::builder()
            .users(user("alice"))
            .build()
            .unwrap()
    });
    let keys = mock!(Client::list_access_keys).then_output(|| {
        ListAccessKeysOutput::builder()
            .access_key_metadata(key("alice", "AKIAALICE000000001", StatusType::Active, 400))
            .build()
            .unwrap()
    });
    let metrics = Arc::new(ExporterMetrics::new());
    let source = auto_source(client(&[&get, &users, &keys], &metrics));
    let logs = Logs::default();
    let _guard = logs.capture();
    for _ in 0..3 {
        let inventory = source.collect(&metrics).await.unwrap();
        assert_eq!(inventory.users.len(), 1);
        assert!(
            inventory.users[0].keys[0].last_used.is_some(),
            "from the report"
        );
    }
    let logged = logs.text();
    assert_eq!(
        logged.matches("lists user \"alice\" on lines 3, 4").count(),
        1,
        "{logged}"
    );
}

#[tokio::test]
async fn auto_takes_last_use_from_the_report_and_asks_only_for_newer_keys() {
    let get = mock!(Client::get_credential_report).then_output(|| report_output(1));
    let users = mock!(Client::list_users).then_output(|| {
        ListUsersOutput::builder()
            .users(user("alice"))
            .users(user("newcomer"))
            .build()
            .unwrap()
    });
    // alice: slot 1's key (now Inactive: the API's status wins), slot 2's key was
    // deleted since the report, and a key created after the report.
    let keys_alice = mock!(Client::list_access_keys)
        .match_requests(|r| r.user_name() == Some("alice"))
        .then_output(|| {
            ListAccessKeysOutput::builder()
                .access_key_metadata(key(
                    "alice",
                    "AKIAALICEOLD0000001",
                    StatusType::Inactive,
                    400,
                ))
                .access_key_metadata(key("alice", "AKIAALICENEW0000001", StatusType::Active, 0))
                .build()
                .unwrap()
        });
    // newcomer is not in the report at all.
    let keys_newcomer = mock!(Client::list_access_keys)
        .match_requests(|r| r.user_name() == Some("newcomer"))
        .then_output(|| {
            ListAccessKeysOutput::builder()
                .access_key_metadata(key("newcomer", "AKIANEWCOMER000001", StatusType::Active, 0))
                .build()
                .unwrap()
        });
    let last_used_api = mock!(Client::get_access_key_last_used).then_output(|| last_used(None));

    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(
        &[&get, &users, &keys_alice, &keys_newcomer, &last_used_api],
        &metrics,
    );
    let report = credential_report(&iam, &metrics, REPORT_POLICY)
        .await
        .unwrap();
    let inventory = collect_inventory(
        &iam,
        &metrics,
        ACCOUNT,
        2,
        Some(&report),
        &UserFilter::default(),
    )
    .await
    .unwrap();

    let alice = &inventory.users[0];
    let old = &alice.keys[0];
    assert_eq!(old.id, "AKIAALICEOLD0000001", "ids from the API");
    assert_eq!(
        old.status,
        KeyStatus::Inactive,
        "current status from the API"
    );
    let used = old.last_used.as_ref().expect("last use from the report");
    assert_eq!(used.at, at(NOW - 3 * DAY));
    assert_eq!(
        (used.service.as_str(), used.region.as_str()),
        ("s3", "eu-west-1")
    );
    assert_eq!(alice.keys.len(), 2, "the deleted slot-2 key is gone");
    let login = alice.login.as_ref().unwrap();
    assert_eq!(
        (login.password_enabled, login.mfa_active),
        (Some(true), Some(false))
    );
    assert_eq!(inventory.users[1].login, None, "not in the report");

    // Only the two keys the report cannot describe cost GetAccessKeyLastUsed.
    assert_eq!(last_used_api.num_calls(), 2);
    let root = inventory.account.root.as_ref().expect("root row");
    assert_eq!(root.keys[0].id, "slot1");
    assert_eq!(root.keys[0].last_used, None);
    assert_eq!(
        inventory.account.root_access_keys_present, None,
        "asked separately, by the source, so a denial costs only this fact"
    );
    assert_eq!(
        inventory.account.report_generated_at,
        Some(report.generated_at)
    );
}

/// A user's creation comes from IAM's CreateDate, through ListUsers and through GetUser
/// (a user the change feed names), and stays when a user is carried over; the report's
/// `user_creation_time` is used only for the root row, the account's creation. A
/// CreateDate IAM's answer lacks, which the SDK reads as the Unix epoch, is no date.
#[tokio::test]
async fn a_users_create_date_arrives_from_list_users_and_get_user() {
    let dated = |name: &str, created: i64| {
        User::builder()
            .user_name(name)
            .user_id(format!("AIDA{}", name.to_uppercase()))
            .arn(arn(name))
            .path("/")
            .create_date(DateTime::from_secs(created))
            .build()
            .unwrap()
    };
    let get = mock!(Client::get_credential_report).then_output(|| report_output(1));
    // alice was deleted and created again 10 days ago: the report's row of that name
    // still says 1,000 days.
    let users = mock!(Client::list_users).then_output(move || {
        ListUsersOutput::builder()
            .users(dated("alice", NOW - 10 * DAY))
            .users(dated("undated", 0))
            .build()
            .unwrap()
    });
    let undated_xml = mock!(Client::get_user)
        .match_requests(|r| r.user_name() == Some("undated"))
        .then_http_response(|| {
            let body = "<GetUserResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><GetUserResult><User>\
                        <UserName>undated</UserName><UserId>AIDAUNDATED</UserId><Arn>arn:aws:iam::123456789012:user/undated</Arn>\
                        <Path>/</Path></User></GetUserResult></GetUserResponse>";
            HttpResponse::new(StatusCode::try_from(200).unwrap(), SdkBody::from(body))
        });
    let newcomer = mock!(Client::get_user)
        .match_requests(|r| r.user_name() == Some("newcomer"))
        .then_output(move || {
            aws_sdk_iam::operation::get_user::GetUserOutput::builder()
                .user(dated("newcomer", NOW - 2 * DAY))
                .build()
        });
    let no_keys = mock!(Client::list_access_keys).then_output(|| {
        ListAccessKeysOutput::builder()
            .set_access_key_metadata(Some(vec![]))
            .build()
            .unwrap()
    });
    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(&[&get, &users, &undated_xml, &newcomer, &no_keys], &metrics);
    let report = credential_report(&iam, &metrics, REPORT_POLICY)
        .await
        .unwrap();
    let filter = UserFilter::default();
    let listed = collect_inventory(&iam, &metrics, ACCOUNT, 2, Some(&report), &filter)
        .await
        .unwrap();
    let created = |inventory: &crate::inventory::Inventory, name: &str| {
        let user = inventory.users.iter().find(|u| u.name == name).unwrap();
        user.created
    };
    assert_eq!(created(&listed, "alice"), Some(at(NOW - 10 * DAY)), "IAM's");
    assert_eq!(created(&listed, "undated"), None, "no date, not 1970");
    let root = listed.account.root.as_ref().unwrap();
    assert_eq!(root.created, Some(at(NOW - 2000 * DAY)), "the account's");

    // The feed names newcomer (new) and undated (its GetUser answer has no CreateDate at
    // all); alice is carried over, with and without a report.
    let named: std::collections::BTreeSet<String> =
        ["newcomer", "undated"].map(String::from).into();
    for report in [Some(&report), None] {
        let relisted = relist_users(&iam, &metrics, &listed, &named, 2, report, &filter)
            .await
            .unwrap();
        assert_eq!(created(&relisted, "newcomer"), Some(at(NOW - 2 * DAY)));
        assert_eq!(created(&relisted, "undated"), None);
        assert_eq!(created(&relisted, "alice"), Some(at(NOW - 10 * DAY)));
        let root = relisted.account.root.as_ref().unwrap();
        assert_eq!(root.created, Some(at(NOW - 2000 * DAY)));
    }
    assert_eq!((newcomer.num_calls(), undated_xml.num_calls()), (2, 2));
}

// ---- Accounts, tags and denied features ----

#[tokio::test]
async fn organization_accounts_are_read_over_every_page_with_their_state() {
    use aws_sdk_organizations::operation::list_accounts::ListAccountsOutput;
    use aws_sdk_organizations::types::{Account, AccountState, AccountStatus};
    let account = |id: &str| Account::builder().id(id).name(format!("n{id}"));
    let first = mock!(aws_sdk_organizations::Client::list_accounts)
        .match_requests(|r| r.next_token().is_none())
        .then_output(move || {
            ListAccountsOutput::builder()
                .accounts(account("111111111111").state(AccountState::Active).build())
                .accounts(
                    account("222222222222")
                        .state(AccountState::Suspended)
                        .build(),
                )
                .next_token("page-2")
                .build()
        });
    #[allow(deprecated)]
    let second = mock!(aws_sdk_organizations::Client::list_accounts)
        .match_requests(|r| r.next_token() == Some("page-2"))
        .then_output(move || {
            ListAccountsOutput::builder()
                // An older response: `Status` only.
                .accounts(
                    account("333333333333")
                        .status(AccountStatus::Active)
                        .build(),
                )
                .accounts(
                    account("444444444444")
                        .state(AccountState::PendingClosure)
                        .build(),
                )
                .build()
        });
    let metrics = Arc::new(ExporterMetrics::new());
    let counter = CountRequests {
        metrics: metrics.clone(),
        account: AccountLabel::new(Some(ACCOUNT.into())),
    };
    let organizations = mock_client!(
        aws_sdk_organizations,
        RuleMode::MatchAny,
        [&first, &second],
        |conf| conf.interceptor(counter.clone())
    );
    let accounts = list_organization_accounts(&organizations, &metrics)
        .await
        .unwrap();
    let seen: Vec<(&str, bool)> = accounts.iter().map(|a| (a.id.as_str(), a.active)).collect();
    assert_eq!(
        seen,
        [
            ("111111111111", true),
            ("222222222222", false),
            ("333333333333", true),
            ("444444444444", false)
        ]
    );
    assert_eq!(accounts[0].name.as_deref(), Some("n111111111111"));
    assert_eq!(requests(&metrics, "ListAccounts"), 2);
}

#[tokio::test]
async fn user_tags_are_read_over_every_page() {
    use aws_sdk_iam::operation::list_user_tags::ListUserTagsOutput;
    use aws_sdk_iam::types::Tag;
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build().unwrap();
    let first = mock!(Client::list_user_tags)
        .match_requests(|r| r.user_name() == Some("alice") && r.marker().is_none())
        .then_output(move || {
            ListUserTagsOutput::builder()
                .tags(tag("Team", "payments"))
                .is_truncated(true)
                .marker("m2")
                .build()
                .unwrap()
        });
    let second = mock!(Client::list_user_tags)
        .match_requests(|r| r.marker() == Some("m2"))
        .then_output(move || {
            ListUserTagsOutput::builder()
                .tags(tag("owner", "ana@example.com"))
                .tags(tag("cost-center", "42"))
                .is_truncated(false)
                .build()
                .unwrap()
        });
    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(&[&first, &second], &metrics);
    let tags = user_tags(&iam, &metrics, "alice").await.unwrap();
    assert_eq!(tags.len(), 3);
    let wanted = [
        "team".to_string(),
        "Owner".to_string(),
        "missing".to_string(),
    ];
    assert_eq!(
        crate::inventory::tag_labels(&wanted, &tags),
        [
            ("tag_owner".to_string(), "ana@example.com".to_string()),
            ("tag_team".to_string(), "payments".to_string())
        ],
        "matched regardless of case, sorted by label, absent keys left out"
    );
}

/// A source of the `auto` kind over mocked IAM, its account id known up front.
fn auto_source(iam: Client) -> crate::source::Source {
    let sts = aws_sdk_sts::Client::from_conf(
        aws_sdk_sts::Config::builder()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::from_static("us-east-1"))
            .build(),
    );
    source_of(
        crate::config::SourceKind::Auto,
        Clients {
            iam,
            sts,
            cloudtrail: cloudtrail_client(&[], &Arc::new(ExporterMetrics::new())),
            account: AccountLabel::new(Some(ACCOUNT.into())),
        },
        2,
        Some(ACCOUNT.into()),
    )
}

/// A source of `kind` over mocked clients, as the fleet builds one per account: the
/// account id known up front (an assumed role) or `None` (asked of STS).
fn source_of(
    kind: crate::config::SourceKind,
    clients: Clients,
    concurrency: usize,
    account_id: Option<String>,
) -> crate::source::Source {
    let settings = crate::config::SourceSettings {
        kind,
        file: None,
        report_max_age: Duration::from_secs(4 * 3600),
        report_timeout: Duration::from_secs(60),
    };
    let filter = crate::config::FilterSettings {
        include_paths: vec![],
        exclude_paths: vec![],
        include_users: vec![],
        exclude_users: vec![],
    };
    crate::source::Source::new(
        crate::source::Origin::aws(clients, &settings, concurrency, account_id, None),
        &filter,
        &crate::config::LabelSettings {
            mask_key_ids: false,
        },
    )
}

fn degraded(metrics: &ExporterMetrics, feature: &str) -> i64 {
    metrics
        .account_feature_degraded
        .with_label_values(&[ACCOUNT, feature])
        .get()
}

#[tokio::test]
async fn denied_report_and_summary_degrade_alone_and_come_back() {
    let denied_report =
        mock!(Client::get_credential_report).then_http_response(|| iam_error(403, "AccessDenied"));
    let denied_summary =
        mock!(Client::get_account_summary).then_http_response(|| iam_error(403, "AccessDenied"));
    let users = mock!(Client::list_users).then_output(|| {
        ListUsersOutput::builder()
            .users(user("alice"))
            .build()
            .unwrap()
    });
    let keys = mock!(Client::list_access_keys).then_output(|| {
        ListAccessKeysOutput::builder()
            .access_key_metadata(key("alice", "AKIAALICE000000001", StatusType::Active, 10))
            .build()
            .unwrap()
    });
    let last_used_api = mock!(Client::get_access_key_last_used).then_output(|| last_used(Some(1)));
    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(
        &[
            &denied_report,
            &denied_summary,
            &users,
            &keys,
            &last_used_api,
        ],
        &metrics,
    );
    let source = auto_source(iam);
    for _ in 0..2 {
        let inventory = source.collect(&metrics).await.expect("the rest works");
        assert_eq!(inventory.users[0].keys[0].id, "AKIAALICE000000001");
        assert!(
            inventory.users[0].keys[0].last_used.is_some(),
            "from the API instead"
        );
        assert_eq!(inventory.account.root_access_keys_present, None);
        assert_eq!(inventory.account.report_generated_at, None);
    }
    assert_eq!(last_used_api.num_calls(), 2, "one per key, per refresh");
    assert_eq!(degraded(&metrics, "credential_report"), 1);
    assert_eq!(degraded(&metrics, "root_keys"), 1);
    assert!(source.degraded.is_off(crate::features::Feature::RootKeys));
    assert_eq!(errors(&metrics, "GetAccountSummary", "AccessDenied"), 2);

    // Granted again: GetAccountSummary answers, and the feature is back.
    let summary = mock!(Client::get_account_summary).then_output(|| {
        GetAccountSummaryOutput::builder()
            .summary_map(SummaryKeyType::AccountAccessKeysPresent, 1)
            .build()
    });
    let iam = client(
        &[&denied_report, &summary, &users, &keys, &last_used_api],
        &metrics,
    );
    let recovered = auto_source(iam);
    // The same tracker as before, as one account's source keeps it across refreshes.
    recovered.degraded.denied(
        &metrics,
        ACCOUNT,
        crate::features::Feature::RootKeys,
        &IamError::Malformed {
            operation: "GetAccountSummary",
            field: "test",
        },
    );
    let inventory = recovered.collect(&metrics).await.unwrap();
    assert_eq!(inventory.account.root_access_keys_present, Some(true));
    assert_eq!(degraded(&metrics, "root_keys"), 0);
    assert!(
        !recovered
            .degraded
            .is_off(crate::features::Feature::RootKeys)
    );
}

#[tokio::test]
async fn a_denied_list_users_still_fails_the_refresh() {
    let denied = mock!(Client::get_credential_report).then_output(|| report_output(1));
    let users = mock!(Client::list_users).then_http_response(|| iam_error(403, "AccessDenied"));
    let metrics = Arc::new(ExporterMetrics::new());
    let source = auto_source(client(&[&denied, &users], &metrics));
    let err = source.collect(&metrics).await.unwrap_err().to_string();
    assert!(err.contains("ListUsers failed (AccessDenied)"), "{err}");
}

#[test]
fn only_a_document_whose_root_closes_at_the_end_is_complete() {
    let full = "<?xml version=\"1.0\"?>\n<ListUsersResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\">\
                <ListUsersResult><Users/></ListUsersResult></ListUsersResponse>\n";
    assert!(is_complete_xml(full.as_bytes()));
    assert!(is_complete_xml(b"<ErrorResponse><Error/></ErrorResponse>"));
    for cut in [20, full.len() / 2, full.len() - 4] {
        assert!(!is_complete_xml(&full.as_bytes()[..cut]), "cut at {cut}");
    }
    assert!(!is_complete_xml(b"<A><B></B>"));
    assert!(!is_complete_xml(b"not xml"));
}

#[tokio::test]
async fn a_truncated_page_fails_the_call_instead_of_losing_users() {
    let full = "<ListUsersResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><ListUsersResult>\
                <IsTruncated>false</IsTruncated><Users><member><UserName>a</UserName><UserId>AIDA1</UserId>\
                <Arn>arn:aws:iam::123456789012:user/a</Arn><Path>/</Path><CreateDate>2020-01-01T00:00:00Z</CreateDate>\
                </member></Users></ListUsersResult></ListUsersResponse>";
    let cut = &full[..full.len() / 2 + 40];
    let half = mock!(Client::list_users).then_http_response(move || {
        HttpResponse::new(StatusCode::try_from(200).unwrap(), SdkBody::from(cut))
    });
    let metrics = Arc::new(ExporterMetrics::new());
    let counter = CountRequests {
        metrics: metrics.clone(),
        account: AccountLabel::new(Some(ACCOUNT.into())),
    };
    let iam = mock_client!(aws_sdk_iam, RuleMode::MatchAny, [&half], |conf| conf
        .interceptor(counter.clone())
        .interceptor(CompleteXml));
    let err = collect_inventory(&iam, &metrics, ACCOUNT, 2, None, &UserFilter::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("ListUsers failed (response)"), "{err}");
    assert!(err.contains("root element"), "{err}");
}

// ---- What one refresh costs, per source, as the README's "Sources" table states ----

/// Users in the account the cost tests refresh: three ListUsers pages of at most 1,000,
/// and few enough that the tests take seconds (each mocked call costs about 1 ms).
const MANY: usize = 2_100;
/// ListUsers pages for `MANY` users: the exporter asks MaxItems=1000, IAM's largest.
const MANY_PAGES: usize = MANY.div_ceil(1000);
/// Keys of `MANY` users: user `i` has `i % 3` keys, so 0 + 1 + 2 per three users.
const MANY_KEYS: usize = MANY;

/// An account of `users` users named `user00000`...; user `i` has `i % 3` keys (none, as
/// for a console user, one, or two, as mid-rotation): slot 1 created 400 days ago, Active,
/// used 2 days ago in s3; slot 2 created 200 days ago, Inactive, used 30 days ago in iam.
/// Its credential report was generated an hour ago and describes every key. `drifted`
/// adds what a report can miss, each costing `auto` one GetAccessKeyLastUsed per key it
/// concerns:
/// - users 5, 65, 125, ... (two keys) rotated slot 2 since the report: a key created a
///   minute ago, which no report slot's `last_rotated` matches: 35 keys at 2,100 users;
/// - users 4, 94, 184, ... (one key) have a report slot with a last-use date but neither
///   service nor region: 24 keys;
/// - the last 6 users were created after the report and are not in it: 0 + 1 + 2 + 0 +
///   1 + 2 = 6 keys.
#[derive(Clone, Copy)]
struct Population {
    users: usize,
    drifted: bool,
}

impl Population {
    fn name(i: usize) -> String {
        format!("user{i:05}")
    }

    fn index(name: &str) -> usize {
        name.strip_prefix("user").unwrap().parse().unwrap()
    }

    fn key_id(i: usize, slot: &str) -> String {
        format!("AKIAMANY{i:05}{slot}")
    }

    fn key_count(i: usize) -> usize {
        i % 3
    }

    fn rotated_since_report(self, i: usize) -> bool {
        self.drifted && i % 60 == 5
    }

    fn used_without_service(self, i: usize) -> bool {
        self.drifted && i % 90 == 4
    }

    fn created_since_report(self, i: usize) -> bool {
        self.drifted && i >= self.users - 6
    }

    /// User `i`'s keys as ListAccessKeys lists them.
    fn keys(self, i: usize) -> Vec<AccessKeyMetadata> {
        let name = Self::name(i);
        let mut keys = Vec::new();
        if Self::key_count(i) >= 1 {
            keys.push(key(
                &name,
                &Self::key_id(i, "SLOT1"),
                StatusType::Active,
                400,
            ));
        }
        if Self::key_count(i) == 2 {
            keys.push(if self.rotated_since_report(i) {
                AccessKeyMetadata::builder()
                    .user_name(&name)
                    .access_key_id(Self::key_id(i, "NEWK2"))
                    .status(StatusType::Active)
                    .create_date(DateTime::from(SystemTime::now() - Duration::from_secs(60)))
                    .build()
            } else {
                key(&name, &Self::key_id(i, "SLOT2"), StatusType::Inactive, 200)
            });
        }
        keys
    }

    fn key_ids(self, keep: impl Fn(usize, &str) -> bool) -> Vec<String> {
        let mut ids: Vec<String> = (0..self.users)
            .flat_map(|i| {
                self.keys(i)
                    .into_iter()
                    .map(move |k| (i, k.access_key_id.unwrap()))
            })
            .filter(|(i, id)| keep(*i, id))
            .map(|(_, id)| id)
            .collect();
        ids.sort();
        ids
    }

    fn all_keys(self) -> Vec<String> {
        self.key_ids(|_, _| true)
    }

    /// The keys the report cannot describe, which `auto` asks GetAccessKeyLastUsed about.
    fn undescribed_keys(self) -> Vec<String> {
        self.key_ids(|i, id| {
            self.created_since_report(i)
                || (self.used_without_service(i) && id.ends_with("SLOT1"))
                || id.ends_with("NEWK2")
        })
    }

    /// One ListUsers page of at most `max_items` users, after `marker`.
    fn users_page(self, marker: Option<&str>, max_items: usize) -> ListUsersOutput {
        let start = marker.map_or(0, |m| m.strip_prefix("next-").unwrap().parse().unwrap());
        let end = (start + max_items).min(self.users);
        let page = ListUsersOutput::builder()
            .set_users(Some((start..end).map(|i| user(&Self::name(i))).collect()))
            .is_truncated(end < self.users);
        let page = if end < self.users {
            page.marker(format!("next-{end}"))
        } else {
            page
        };
        page.build().unwrap()
    }

    /// The credential report: the root row of `report_csv`, then every user but those
    /// created since it.
    fn report(self) -> GetCredentialReportOutput {
        let root = report_csv().lines().nth(1).unwrap().to_string();
        let mut csv = format!("{REPORT_HEADER}\n{root}\n");
        for i in (0..self.users).filter(|&i| !self.created_since_report(i)) {
            let name = Self::name(i);
            let slot1 = if Self::key_count(i) >= 1 {
                let (region, service) = if self.used_without_service(i) {
                    ("N/A", "N/A")
                } else {
                    ("eu-west-1", "s3")
                };
                format!(
                    "true,{},{},{region},{service}",
                    iso(NOW - 400 * DAY),
                    iso(NOW - 2 * DAY)
                )
            } else {
                "false,N/A,N/A,N/A,N/A".to_string()
            };
            // A slot rotated since the report still shows the old key's dates.
            let slot2 = if Self::key_count(i) == 2 {
                format!(
                    "false,{},{},us-east-1,iam",
                    iso(NOW - 200 * DAY),
                    iso(NOW - 30 * DAY)
                )
            } else {
                "false,N/A,N/A,N/A,N/A".to_string()
            };
            csv.push_str(&format!(
                "{name},{},{},false,N/A,N/A,N/A,false,{slot1},{slot2},false,N/A,false,N/A\n",
                arn(&name),
                iso(NOW - 1000 * DAY),
            ));
        }
        GetCredentialReportOutput::builder()
            .content(Blob::new(csv))
            .report_format(ReportFormatType::TextCsv)
            .generated_time(DateTime::from(
                SystemTime::now() - Duration::from_secs(3600),
            ))
            .build()
    }

    /// The account's IAM: the report, ListUsers only as the exporter asks it
    /// (MaxItems=1000), ListAccessKeys, and GetAccessKeyLastUsed recording the key ids it
    /// is asked about into `asked`. GetAccountSummary comes with `client`.
    fn rules(self, asked: &Arc<std::sync::Mutex<Vec<String>>>) -> Vec<Rule> {
        let asked = asked.clone();
        vec![
            mock!(Client::get_credential_report).then_compute_output(move |_| self.report()),
            mock!(Client::list_users)
                .match_requests(|r| r.max_items() == Some(1000))
                .then_compute_output(move |r| self.users_page(r.marker(), 1000)),
            mock!(Client::list_access_keys).then_compute_output(move |r| {
                let i = Self::index(r.user_name().unwrap());
                ListAccessKeysOutput::builder()
                    .set_access_key_metadata(Some(self.keys(i)))
                    .build()
                    .unwrap()
            }),
            mock!(Client::get_access_key_last_used).then_compute_output(move |r| {
                asked
                    .lock()
                    .unwrap()
                    .push(r.access_key_id().unwrap().to_string());
                last_used(Some(1))
            }),
        ]
    }
}

/// Every request the interceptor counted, by operation: an operation missing here was
/// never called.
fn all_requests(metrics: &ExporterMetrics) -> std::collections::BTreeMap<String, u64> {
    use prometheus::core::Collector;
    let mut counted = std::collections::BTreeMap::new();
    for family in metrics.aws_requests_total.collect() {
        for metric in family.get_metric() {
            let operation = metric.get_label()[0].value().to_string();
            counted.insert(operation, metric.get_counter().get_value() as u64);
        }
    }
    counted
}

/// An STS client answering `rules` and counting its requests. (`mock_client!` needs the
/// SDK's `test-util` feature, which only the IAM crate has here.)
fn sts_client(rules: &[&Rule], metrics: &Arc<ExporterMetrics>) -> aws_sdk_sts::Client {
    let mut mock = aws_smithy_mocks::MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny);
    for rule in rules {
        mock = mock.with_rule(rule);
    }
    aws_sdk_sts::Client::from_conf(
        aws_sdk_sts::Config::builder()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::from_static("us-east-1"))
            .credentials_provider(aws_sdk_sts::config::Credentials::new(
                "AKIDTEST", "test", None, None, "test",
            ))
            .http_client(aws_smithy_mocks::create_mock_http_client())
            .interceptor(mock)
            .interceptor(CountRequests {
                metrics: metrics.clone(),
                account: AccountLabel::new(Some(ACCOUNT.into())),
            })
            .build(),
    )
}

fn counts(pairs: &[(&str, u64)]) -> std::collections::BTreeMap<String, u64> {
    pairs.iter().map(|(op, n)| (op.to_string(), *n)).collect()
}

/// One refresh of `population` by a source of `kind` (account id known, as for an assumed
/// role): its requests by operation, the GetAccessKeyLastUsed key ids asked (sorted), and
/// the inventory.
async fn refresh_cost(
    kind: crate::config::SourceKind,
    population: Population,
) -> (
    std::collections::BTreeMap<String, u64>,
    Vec<String>,
    crate::inventory::Inventory,
) {
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let rules = population.rules(&asked);
    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(&rules.iter().collect::<Vec<_>>(), &metrics);
    let sts = sts_client(&[], &metrics);
    let cloudtrail = cloudtrail_client(&[], &metrics);
    let source = source_of(
        kind,
        Clients {
            iam,
            sts,
            cloudtrail,
            account: AccountLabel::new(Some(ACCOUNT.into())),
        },
        4,
        Some(ACCOUNT.into()),
    );
    let inventory = source.collect(&metrics).await.unwrap();
    let mut asked = asked.lock().unwrap().clone();
    asked.sort();
    (all_requests(&metrics), asked, inventory)
}

/// True when `key`'s last use is the one `Population::report` gives (2 or 30 days ago),
/// not GetAccessKeyLastUsed's (1 day ago).
fn from_report(key: &crate::inventory::AccessKey) -> bool {
    key.last_used
        .as_ref()
        .is_some_and(|used| used.at == at(NOW - 2 * DAY) || used.at == at(NOW - 30 * DAY))
}

fn total(counted: &std::collections::BTreeMap<String, u64>) -> u64 {
    counted.values().sum()
}

#[tokio::test]
async fn cost_of_an_auto_refresh_is_pages_plus_users_plus_two() {
    let population = Population {
        users: MANY,
        drifted: false,
    };
    let (counted, asked, inventory) =
        refresh_cost(crate::config::SourceKind::Auto, population).await;

    // GetCredentialReport + GetAccountSummary + ListUsers pages + ListAccessKeys per user,
    // and no GetAccessKeyLastUsed: the fresh report describes every key.
    assert_eq!(
        counted,
        counts(&[
            ("GetAccountSummary", 1),
            ("GetCredentialReport", 1),
            ("ListAccessKeys", MANY as u64),
            ("ListUsers", MANY_PAGES as u64),
        ])
    );
    assert_eq!(total(&counted), 1 + 1 + 3 + 2_100);
    assert!(asked.is_empty(), "{asked:?}");

    assert_eq!(inventory.users.len(), MANY);
    let keys: Vec<&crate::inventory::AccessKey> =
        inventory.users.iter().flat_map(|u| &u.keys).collect();
    assert_eq!(keys.len(), MANY_KEYS);
    assert!(
        keys.iter().all(|k| from_report(k)),
        "every last use from the report"
    );
    let mut ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, population.all_keys(), "ids from the API");
}

#[tokio::test]
async fn cost_of_an_auto_refresh_adds_one_call_per_key_the_report_cannot_describe() {
    let population = Population {
        users: MANY,
        drifted: true,
    };
    let undescribed = population.undescribed_keys();
    // 35 keys rotated since the report, 24 report slots without service and region, and
    // the 6 keys of the 6 users created since the report.
    assert_eq!(undescribed.len(), 35 + 24 + 6);
    let (counted, asked, inventory) =
        refresh_cost(crate::config::SourceKind::Auto, population).await;

    assert_eq!(
        counted,
        counts(&[
            ("GetAccessKeyLastUsed", 65),
            ("GetAccountSummary", 1),
            ("GetCredentialReport", 1),
            ("ListAccessKeys", MANY as u64),
            ("ListUsers", MANY_PAGES as u64),
        ])
    );
    assert_eq!(total(&counted), 1 + 1 + 3 + 2_100 + 65);
    assert_eq!(
        asked, undescribed,
        "exactly the keys the report cannot describe, once each"
    );

    assert_eq!(
        inventory.users.len(),
        MANY,
        "users since the report included"
    );
    let keys: Vec<&crate::inventory::AccessKey> =
        inventory.users.iter().flat_map(|u| &u.keys).collect();
    let mut ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, population.all_keys());
    for key in keys {
        assert_eq!(
            from_report(key),
            undescribed.binary_search(&key.id).is_err(),
            "{key:?}"
        );
    }
}

#[tokio::test]
async fn cost_of_an_api_refresh_is_pages_plus_users_plus_keys_plus_one() {
    let population = Population {
        users: MANY,
        drifted: false,
    };
    let (counted, asked, inventory) =
        refresh_cost(crate::config::SourceKind::Api, population).await;

    // ListUsers pages + ListAccessKeys per user + GetAccessKeyLastUsed per key +
    // GetAccountSummary; no credential report.
    assert_eq!(
        counted,
        counts(&[
            ("GetAccessKeyLastUsed", MANY_KEYS as u64),
            ("GetAccountSummary", 1),
            ("ListAccessKeys", MANY as u64),
            ("ListUsers", MANY_PAGES as u64),
        ])
    );
    assert_eq!(total(&counted), 3 + 2_100 + 2_100 + 1);
    assert_eq!(asked, population.all_keys(), "every key, once");
    assert_eq!(inventory.users.len(), MANY);
}

#[tokio::test]
async fn cost_of_a_credential_report_refresh_is_one_call_at_any_size() {
    let population = Population {
        users: MANY,
        drifted: false,
    };
    let (counted, asked, inventory) =
        refresh_cost(crate::config::SourceKind::CredentialReport, population).await;

    // Not even GetAccountSummary: the root row answers for root keys.
    assert_eq!(counted, counts(&[("GetCredentialReport", 1)]));
    assert!(asked.is_empty());
    assert_eq!(inventory.users.len(), MANY);
    assert_eq!(inventory.account.root_access_keys_present, Some(true));
}

#[tokio::test]
async fn cost_of_the_own_account_id_is_one_get_caller_identity_per_source_not_per_refresh() {
    use aws_sdk_sts::operation::get_caller_identity::GetCallerIdentityOutput;
    let population = Population {
        users: 3,
        drifted: false,
    };
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let rules = population.rules(&asked);
    let metrics = Arc::new(ExporterMetrics::new());
    let iam = client(&rules.iter().collect::<Vec<_>>(), &metrics);
    let identity = mock!(aws_sdk_sts::Client::get_caller_identity).then_output(|| {
        GetCallerIdentityOutput::builder()
            .account(ACCOUNT)
            .arn(format!("arn:aws:iam::{ACCOUNT}:user/exporter"))
            .build()
    });
    let sts = sts_client(&[&identity], &metrics);
    // The own account: no role, so its id is not known up front.
    let source = source_of(
        crate::config::SourceKind::Api,
        Clients {
            iam,
            sts,
            cloudtrail: cloudtrail_client(&[], &metrics),
            account: AccountLabel::new(Some(ACCOUNT.into())),
        },
        4,
        None,
    );
    for _ in 0..3 {
        let inventory = source.collect(&metrics).await.unwrap();
        assert_eq!(inventory.account_id, ACCOUNT);
    }
    // Per refresh: 1 page + 3 users + 3 keys + 1 = 8 IAM calls; STS once in all.
    assert_eq!(
        all_requests(&metrics),
        counts(&[
            ("GetAccessKeyLastUsed", 3 * 3),
            ("GetAccountSummary", 3),
            ("GetCallerIdentity", 1),
            ("ListAccessKeys", 3 * 3),
            ("ListUsers", 3),
        ])
    );
    assert_eq!(identity.num_calls(), 1);
}

/// An account of `population` followed by the change feed: IAM as `Population::rules`
/// has it, GetUser answering for every user but `deleted`, and LookupEvents answering
/// whatever `events` holds when it is asked.
struct FeedAccount {
    source: crate::source::Source,
    metrics: Arc<ExporterMetrics>,
    events: Arc<std::sync::Mutex<Vec<aws_sdk_cloudtrail::types::Event>>>,
}

impl FeedAccount {
    /// `lookup` answers LookupEvents instead of the event list, when given.
    fn new(population: Population, deleted: &'static [&'static str], lookup: Option<Rule>) -> Self {
        Self::with_rules(population, deleted, lookup, Vec::new())
    }

    /// `new`, with `first` asked before the account's own rules.
    fn with_rules(
        population: Population,
        deleted: &'static [&'static str],
        lookup: Option<Rule>,
        first: Vec<Rule>,
    ) -> Self {
        let metrics = Arc::new(ExporterMetrics::new());
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut rules = first;
        rules.extend(population.rules(&asked));
        rules.push(
            mock!(Client::get_user)
                .match_requests(move |r| deleted.contains(&r.user_name().unwrap()))
                .then_http_response(|| iam_error(404, "NoSuchEntity")),
        );
        rules.push(mock!(Client::get_user).then_compute_output(|r| {
            aws_sdk_iam::operation::get_user::GetUserOutput::builder()
                .user(user(r.user_name().unwrap()))
                .build()
        }));
        let iam = client(&rules.iter().collect::<Vec<_>>(), &metrics);
        let listed = events.clone();
        // The feed asks for the write events only: IAM's reads, the exporter's own among
        // them, would fill its pages.
        let lookup_events = mock!(aws_sdk_cloudtrail::Client::lookup_events)
            .match_requests(|r| {
                let [only] = r.lookup_attributes() else {
                    return false;
                };
                only.attribute_key == aws_sdk_cloudtrail::types::LookupAttributeKey::ReadOnly
                    && only.attribute_value == "false"
            })
            .then_compute_output(move |_| {
                aws_sdk_cloudtrail::operation::lookup_events::LookupEventsOutput::builder()
                    .set_events(Some(listed.lock().unwrap().clone()))
                    .build()
            });
        let lookup = lookup.unwrap_or(lookup_events);
        let cloudtrail = cloudtrail_client(&[&lookup], &metrics);
        let sts = sts_client(&[], &metrics);
        let source = crate::source::Source::new(
            crate::source::Origin::aws(
                Clients {
                    iam,
                    sts,
                    cloudtrail,
                    account: AccountLabel::new(Some(ACCOUNT.into())),
                },
                &crate::config::SourceSettings {
                    kind: crate::config::SourceKind::Auto,
                    file: None,
                    report_max_age: Duration::from_secs(4 * 3600),
                    report_timeout: Duration::from_secs(60),
                },
                4,
                Some(ACCOUNT.into()),
                Some(crate::source::FeedPolicy {
                    overlap: Duration::from_secs(900),
                    full_interval: Duration::from_secs(6 * 3600),
                }),
            ),
            &crate::config::FilterSettings {
                include_paths: vec![],
                exclude_paths: vec![],
                include_users: vec![],
                exclude_users: vec![],
            },
            &crate::config::LabelSettings {
                mask_key_ids: false,
            },
        );
        FeedAccount {
            source,
            metrics,
            events,
        }
    }

    /// One refresh: its requests by operation, and what it yielded.
    async fn refresh(
        &self,
    ) -> (
        std::collections::BTreeMap<String, u64>,
        crate::source::Refreshed,
    ) {
        let (counted, refreshed) = self.try_refresh().await;
        (counted, refreshed.unwrap())
    }

    async fn try_refresh(
        &self,
    ) -> (
        std::collections::BTreeMap<String, u64>,
        Result<crate::source::Refreshed, crate::source::SourceError>,
    ) {
        let before = all_requests(&self.metrics);
        let refreshed = self.source.refresh(&self.metrics).await;
        let mut counted = all_requests(&self.metrics);
        for (operation, n) in &before {
            *counted.get_mut(operation).unwrap() -= n;
        }
        counted.retain(|_, n| *n > 0);
        (counted, refreshed)
    }

    fn record(&self, id: &str, name: &str, read_only: bool, detail: serde_json::Value) {
        self.record_from("iam.amazonaws.com", id, name, read_only, detail);
    }

    fn record_from(
        &self,
        source: &str,
        id: &str,
        name: &str,
        read_only: bool,
        detail: serde_json::Value,
    ) {
        self.events.lock().unwrap().push(
            aws_sdk_cloudtrail::types::Event::builder()
                .event_id(id)
                .event_name(name)
                .read_only(if read_only { "true" } else { "false" })
                .event_source(source)
                .event_time(DateTime::from(SystemTime::now()))
                .cloud_trail_event(detail.to_string())
                .build(),
        );
    }
}

#[tokio::test]
async fn cost_of_a_steady_state_refresh_with_the_change_feed_is_two_calls_at_any_size() {
    let population = Population {
        users: MANY,
        drifted: false,
    };
    let account = FeedAccount::new(population, &[], None);
    // The first refresh lists every user: the feed needs a place to start.
    let (first, refreshed) = account.refresh().await;
    assert!(refreshed.changes.is_none());
    assert!(refreshed.following, "the feed goes on from the whole list");
    assert_eq!(first["ListAccessKeys"], MANY as u64);

    // Nothing changed: the event history says so in one call, and the report of the
    // first refresh is young enough to keep.
    for _ in 0..3 {
        let (steady, refreshed) = account.refresh().await;
        assert_eq!(
            steady,
            counts(&[("GetAccountSummary", 1), ("LookupEvents", 1)])
        );
        assert!(total(&steady) <= 10);
        assert_eq!(refreshed.changes, Some(crate::iam::Changes::default()));
        assert_eq!(refreshed.inventory.users.len(), MANY);
        assert_eq!(refreshed.inventory.key_count(), MANY_KEYS);
    }
}

#[tokio::test]
async fn a_change_costs_the_calls_of_the_users_it_names() {
    let population = Population {
        users: MANY,
        drifted: false,
    };
    let account = FeedAccount::new(population, &["user00010"], None);
    account.refresh().await;

    let on = |user: &str| serde_json::json!({"requestParameters": {"userName": user}});
    account.record("1", "CreateAccessKey", false, on("user00007"));
    account.record("2", "DeleteUser", false, on("user00010"));
    // Reads, failed calls and other resources' events cost nothing.
    account.record("3", "ListAccessKeys", true, on("user00020"));
    account.record(
        "4",
        "DeleteAccessKey",
        false,
        serde_json::json!({"errorCode": "NoSuchEntity", "requestParameters": {"userName": "user00021"}}),
    );
    account.record("5", "CreateRole", false, serde_json::json!({}));
    account.record("6", "TagUser", false, on("user00030"));
    // Another service's write of the same name is not IAM's.
    account.record_from(
        "sso.amazonaws.com",
        "7",
        "DeleteUser",
        false,
        on("user00040"),
    );
    let (cost, refreshed) = account.refresh().await;
    assert_eq!(
        cost,
        counts(&[
            ("GetAccountSummary", 1),
            ("GetUser", 2),
            ("ListAccessKeys", 1),
            ("LookupEvents", 1),
        ])
    );
    let changes = refreshed.changes.unwrap();
    assert_eq!(
        changes.users.iter().collect::<Vec<_>>(),
        ["user00007", "user00010"]
    );
    assert_eq!(changes.tags.iter().collect::<Vec<_>>(), ["user00030"]);
    let users = &refreshed.inventory.users;
    assert_eq!(users.len(), MANY - 1);
    assert!(!users.iter().any(|u| u.name == "user00010"), "deleted");
    let seven = users.iter().find(|u| u.name == "user00007").unwrap();
    assert_eq!(seven.keys.len(), Population::key_count(7));
    assert!(
        seven.keys.iter().all(from_report),
        "last use from the report"
    );

    // The same events in the next poll's overlap are not applied twice.
    let (again, _) = account.refresh().await;
    assert_eq!(
        again,
        counts(&[("GetAccountSummary", 1), ("LookupEvents", 1)])
    );
}

#[tokio::test]
async fn a_denied_change_feed_lists_every_user_and_says_so() {
    let population = Population {
        users: 30,
        drifted: false,
    };
    let denied = mock!(aws_sdk_cloudtrail::Client::lookup_events).then_http_response(|| {
        HttpResponse::new(
            StatusCode::try_from(400).unwrap(),
            SdkBody::from(
                r#"{"__type":"AccessDeniedException","message":"User is not authorized to perform: cloudtrail:LookupEvents"}"#,
            ),
        )
    });
    let account = FeedAccount::new(population, &[], Some(denied));
    account.refresh().await;
    for _ in 0..2 {
        let (cost, refreshed) = account.refresh().await;
        assert!(refreshed.changes.is_none(), "a whole list");
        assert!(!refreshed.following);
        assert_eq!(cost["ListAccessKeys"], 30);
        assert_eq!(cost["LookupEvents"], 1, "asked again each refresh");
        assert!(
            account
                .source
                .degraded
                .is_off(crate::features::Feature::ChangeFeed)
        );
    }
    assert_eq!(
        account
            .metrics
            .account_feature_degraded
            .with_label_values(&[ACCOUNT, "change_feed"])
            .get(),
        1
    );
}

#[tokio::test]
async fn a_change_that_could_not_be_applied_is_applied_by_the_next_refresh() {
    let population = Population {
        users: 30,
        drifted: false,
    };
    // IAM refuses the first GetUser for user00007 with an error no retry helps.
    let refused_once = mock!(Client::get_user)
        .match_requests(|r| r.user_name() == Some("user00007"))
        .sequence()
        .http_response(|| iam_error(400, "InvalidInput"))
        .output(|| {
            aws_sdk_iam::operation::get_user::GetUserOutput::builder()
                .user(user("user00007"))
                .build()
        })
        .build();
    let account = FeedAccount::with_rules(population, &[], None, vec![refused_once]);
    account.refresh().await;
    account.record(
        "1",
        "CreateAccessKey",
        false,
        serde_json::json!({"requestParameters": {"userName": "user00007"}}),
    );
    let (_, failed) = account.try_refresh().await;
    assert!(failed.is_err(), "the refresh fails with GetUser");
    // The event is read again: the failed refresh moved the feed nowhere.
    let (cost, refreshed) = account.refresh().await;
    let changes = refreshed.changes.unwrap();
    assert_eq!(changes.users.iter().collect::<Vec<_>>(), ["user00007"]);
    assert_eq!(cost["GetUser"], 1);
    // And once applied, it is not read a third time.
    let (_, refreshed) = account.refresh().await;
    assert!(refreshed.changes.unwrap().is_empty());
}

#[tokio::test]
async fn a_denied_get_user_turns_the_change_feed_off_and_lists_every_user() {
    let population = Population {
        users: 30,
        drifted: false,
    };
    let denied = mock!(Client::get_user).then_http_response(|| iam_error(403, "AccessDenied"));
    let account = FeedAccount::with_rules(population, &[], None, vec![denied]);
    account.refresh().await;
    account.record(
        "1",
        "CreateAccessKey",
        false,
        serde_json::json!({"requestParameters": {"userName": "user00007"}}),
    );
    let (cost, refreshed) = account.refresh().await;
    assert!(refreshed.changes.is_none(), "a whole list instead");
    assert_eq!(cost["GetUser"], 1);
    assert_eq!(cost["ListAccessKeys"], 30);
    assert!(
        account
            .source
            .degraded
            .is_off(crate::features::Feature::ChangeFeed)
    );
}
