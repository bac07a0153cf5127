//! The credential report through the API: GetCredentialReport, and GenerateCredentialReport
//! only when there is no report younger than the configured age. IAM regenerates a report
//! at most every 4 hours, so asking more often only costs calls.

use std::time::{Duration, SystemTime};

use aws_sdk_iam::Client;
use aws_sdk_iam::error::ProvideErrorMetadata;
use aws_sdk_iam::types::ReportStateType;
use tokio::time::Instant;

use super::{IamError, error_code, to_system_time};
use crate::credential_report::{self, ReportRow, ReportWarning};
use crate::inventory::elapsed;
use crate::metrics::ExporterMetrics;

/// A parsed report and when IAM generated it.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialReport {
    pub rows: Vec<ReportRow>,
    pub generated_at: SystemTime,
    /// What was odd about the report (a user on two rows, say), for the caller to log.
    pub warnings: Vec<ReportWarning>,
}

/// How old a report may be, and how patiently a new one is waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportPolicy {
    pub max_age: Duration,
    pub poll_interval: Duration,
    pub poll_interval_max: Duration,
    pub timeout: Duration,
}

const GET: &str = "GetCredentialReport";
const GENERATE: &str = "GenerateCredentialReport";

enum Fetched {
    Report(CredentialReport),
    /// ReportNotPresent, ReportExpired or ReportInProgress: a report must be generated or
    /// waited for.
    NotReady(String),
}

/// The newest report, generated first when none is younger than `policy.max_age`. When
/// generating fails, an older report is still better than none and is returned; its
/// GeneratedTime shows its age.
///
/// While IAM generates, GetCredentialReport is polled rather than
/// GenerateCredentialReport: it answers ReportInProgress until the report is there and
/// then the report itself, so the poll that finds it is also the call that fetches it.
/// A fresh report costs 1 call; otherwise 1 GetCredentialReport, 1
/// GenerateCredentialReport (none when a generation is already in progress) and 1
/// GetCredentialReport per poll.
pub async fn credential_report(
    iam: &Client,
    metrics: &ExporterMetrics,
    policy: ReportPolicy,
) -> Result<CredentialReport, IamError> {
    let stale = match fetch(iam, metrics).await? {
        Fetched::Report(report)
            if elapsed(report.generated_at, SystemTime::now()) <= policy.max_age =>
        {
            return Ok(report);
        }
        Fetched::Report(report) => Some(report),
        // Someone else's generation is under way: asking for another would only be told so.
        Fetched::NotReady(code) if code == "ReportInProgress" => {
            return poll(iam, metrics, policy, None).await;
        }
        Fetched::NotReady(_) => None,
    };
    let fetched = match generate(iam, metrics).await {
        // IAM keeps a report younger than 4 hours instead of generating one: it is the
        // newest there is, whatever its age.
        Ok(Some(ReportStateType::Complete)) => match fetch(iam, metrics).await {
            Ok(Fetched::Report(report)) => Ok(report),
            Ok(Fetched::NotReady(_)) => poll(iam, metrics, policy, None).await,
            Err(err) => Err(err),
        },
        // STARTED, INPROGRESS, or LimitExceeded (a generation already under way): the
        // old report, if any, may still be served until the new one replaces it.
        Ok(_) => {
            let older_than = stale.as_ref().map(|report| report.generated_at);
            poll(iam, metrics, policy, older_than).await
        }
        Err(err) => Err(err),
    };
    match (fetched, stale) {
        (Ok(report), _) => Ok(report),
        (Err(err), Some(report)) => {
            tracing::warn!(error = %err, "generating a credential report failed; using the previous one");
            Ok(report)
        }
        (Err(err), None) => Err(err),
    }
}

async fn fetch(iam: &Client, metrics: &ExporterMetrics) -> Result<Fetched, IamError> {
    let output = match iam.get_credential_report().send().await {
        Ok(output) => output,
        Err(err) => {
            // These codes are the report's states, not failures: counted as errors, every
            // generation would look like a fault in aws_errors_total.
            return match err.code() {
                Some(code @ ("ReportNotPresent" | "ReportExpired" | "ReportInProgress")) => {
                    Ok(Fetched::NotReady(code.to_string()))
                }
                _ => {
                    metrics.count_aws_error(GET, error_code(&err));
                    Err(IamError::call(GET, &err))
                }
            };
        }
    };
    let generated_at = output.generated_time.as_ref().ok_or(IamError::Malformed {
        operation: GET,
        field: "GeneratedTime",
    })?;
    let generated_at = to_system_time(GET, "GeneratedTime", generated_at)?;
    // The SDK has already decoded the base64 Content into the CSV bytes.
    let content = output.content.ok_or(IamError::Malformed {
        operation: GET,
        field: "Content",
    })?;
    let report = credential_report::read(content.as_ref())?;
    Ok(Fetched::Report(CredentialReport {
        rows: report.rows,
        generated_at,
        warnings: report.warnings,
    }))
}

/// Asks IAM to generate a report, once. Its state, or `None` for LimitExceeded, which
/// means a generation is already under way.
async fn generate(
    iam: &Client,
    metrics: &ExporterMetrics,
) -> Result<Option<ReportStateType>, IamError> {
    match iam.generate_credential_report().send().await {
        Ok(output) => Ok(output.state),
        // Another generation is under way: a state, not a failure.
        Err(err) if err.code() == Some("LimitExceeded") => Ok(None),
        Err(err) => {
            metrics.count_aws_error(GENERATE, error_code(&err));
            Err(IamError::call(GENERATE, &err))
        }
    }
}

/// Polls GetCredentialReport, with a doubling wait, until it returns a report generated
/// after `older_than` (any report when `None`) or `policy.timeout` passes.
async fn poll(
    iam: &Client,
    metrics: &ExporterMetrics,
    policy: ReportPolicy,
    older_than: Option<SystemTime>,
) -> Result<CredentialReport, IamError> {
    let deadline = Instant::now() + policy.timeout;
    let mut wait = policy.poll_interval;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(IamError::ReportTimedOut {
                timeout: policy.timeout,
            });
        }
        tokio::time::sleep(wait.min(deadline - now)).await;
        wait = (wait * 2).min(policy.poll_interval_max);
        match fetch(iam, metrics).await? {
            Fetched::Report(report) if older_than.is_none_or(|old| report.generated_at > old) => {
                return Ok(report);
            }
            // Still generating, or the old report until the new one replaces it.
            Fetched::Report(_) | Fetched::NotReady(_) => {}
        }
    }
}
