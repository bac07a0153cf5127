//! Service counts of one user through IAM's service-last-accessed job: generate the job,
//! poll it with a doubling wait until it leaves IN_PROGRESS or the deadline passes, then
//! read every page of the result.

use std::time::Duration;

use aws_sdk_iam::Client;
use aws_sdk_iam::types::{AccessAdvisorUsageGranularityType, JobStatusType, ServiceLastAccessed};
use tokio::time::Instant;

use super::{IamError, observe};
use crate::inventory::{ServiceCounts, TrackedActions};
use crate::metrics::ExporterMetrics;

/// How patiently a job is polled, and at which granularity it is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPolicy {
    pub poll_interval: Duration,
    pub poll_interval_max: Duration,
    pub timeout: Duration,
    /// ACTION_LEVEL: the service-level entries as before, plus each tracked action.
    pub action_level: bool,
}

const GENERATE: &str = "GenerateServiceLastAccessedDetails";
const GET: &str = "GetServiceLastAccessedDetails";
/// IAM's largest page for this operation.
const PAGE_SIZE: i32 = 1000;

pub async fn service_counts(
    iam: &Client,
    metrics: &ExporterMetrics,
    arn: &str,
    policy: JobPolicy,
) -> Result<ServiceCounts, IamError> {
    let granularity = if policy.action_level {
        AccessAdvisorUsageGranularityType::ActionLevel
    } else {
        AccessAdvisorUsageGranularityType::ServiceLevel
    };
    let result = iam
        .generate_service_last_accessed_details()
        .arn(arn)
        .granularity(granularity)
        .send()
        .await;
    let job_id = observe(metrics, GENERATE, result)
        .map_err(|e| IamError::call(GENERATE, &e))?
        .job_id
        .ok_or(IamError::Malformed {
            operation: GENERATE,
            field: "JobId",
        })?;

    let deadline = Instant::now() + policy.timeout;
    let mut wait = policy.poll_interval;
    let mut counts = ServiceCounts::default();
    let mut marker: Option<String> = None;
    loop {
        // A job never finishes at once, so the first poll waits too. Later pages of a
        // completed job are read without waiting.
        if marker.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return Err(IamError::JobTimedOut {
                    arn: arn.to_string(),
                    timeout: policy.timeout,
                });
            }
            tokio::time::sleep(wait.min(deadline - now)).await;
        }
        let result = iam
            .get_service_last_accessed_details()
            .job_id(&job_id)
            .max_items(PAGE_SIZE)
            .set_marker(marker.take())
            .send()
            .await;
        let page = observe(metrics, GET, result).map_err(|e| IamError::call(GET, &e))?;
        match page.job_status() {
            JobStatusType::Completed => {
                for service in page.services_last_accessed() {
                    counts.granted += 1;
                    if service.last_authenticated().is_some() {
                        counts.accessed += 1;
                    }
                    counts.actions.extend(tracked_actions(service));
                }
                match page.marker() {
                    Some(next) if page.is_truncated() => marker = Some(next.to_string()),
                    _ => return Ok(counts),
                }
            }
            JobStatusType::Failed => {
                let reason = page.error().map_or_else(
                    || "no reason given".to_string(),
                    |e| format!("{}: {}", e.code(), e.message()),
                );
                return Err(IamError::JobFailed {
                    arn: arn.to_string(),
                    reason,
                });
            }
            // IN_PROGRESS, and any status IAM may add later, mean "not yet". Pages counted
            // so far are dropped so that a job that restarts is never counted twice.
            _ => {
                counts = ServiceCounts::default();
                wait = (wait * 2).min(policy.poll_interval_max);
            }
        }
    }
}

/// A service's tracked actions, when IAM lists them (an ACTION_LEVEL job, a service it
/// tracks by action, at least one of its actions used).
fn tracked_actions(service: &ServiceLastAccessed) -> Option<TrackedActions> {
    let actions = service.tracked_actions_last_accessed();
    if actions.is_empty() {
        return None;
    }
    Some(TrackedActions {
        service_namespace: service.service_namespace().to_string(),
        granted: actions.len() as u32,
        used: actions
            .iter()
            .filter(|action| action.last_accessed_time.is_some())
            .count() as u32,
    })
}
