//! The credential report through the API: GetCredentialReport, and GenerateCredentialReport
//! only when there is no report younger than the configured age. IAM regenerates a report
//! at most every 4 hours, so asking more often only costs calls.

use std::time::{Duration, SystemTime};

use aws_sdk_iam::Client;
use aws_sdk_iam::error::ProvideErrorMetadata;
use aws_sdk_iam::types::ReportStateType;
use tokio::time::Instant;

use super::{IamError, observe, to_system_time};
use crate::credential_report::{self, ReportRow};
use crate::inventory::elapsed;
use crate::metrics::ExporterMetrics;

/// A parsed report and when IAM generated it.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialReport {
    pub rows: Vec<ReportRow>,
    pub generated_at: SystemTime,
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
        Fetched::NotReady(_) => None,
    };
    if let Err(err) = generate(iam, metrics, policy).await {
        return match stale {
            Some(report) => {
                tracing::warn!(error = %err, "generating a credential report failed; using the previous one");
                Ok(report)
            }
            None => Err(err),
        };
    }
    match fetch(iam, metrics).await? {
        Fetched::Report(report) => Ok(report),
        Fetched::NotReady(code) => Err(IamError::Call {
            operation: GET,
            code: code.clone(),
            message: format!(
                "no credential report after GenerateCredentialReport said COMPLETE ({code})"
            ),
        }),
    }
}

async fn fetch(iam: &Client, metrics: &ExporterMetrics) -> Result<Fetched, IamError> {
    let output = match observe(metrics, GET, iam.get_credential_report().send().await) {
        Ok(output) => output,
        Err(err) => {
            return match err.code() {
                Some(code @ ("ReportNotPresent" | "ReportExpired" | "ReportInProgress")) => {
                    Ok(Fetched::NotReady(code.to_string()))
                }
                _ => Err(IamError::call(GET, &err)),
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
    let rows = credential_report::parse(content.as_ref())?;
    Ok(Fetched::Report(CredentialReport { rows, generated_at }))
}

/// Asks IAM to generate a report and polls until it says COMPLETE. LimitExceeded means
/// a generation is already under way: it is waited for like INPROGRESS.
async fn generate(
    iam: &Client,
    metrics: &ExporterMetrics,
    policy: ReportPolicy,
) -> Result<(), IamError> {
    let deadline = Instant::now() + policy.timeout;
    let mut wait = policy.poll_interval;
    loop {
        let state = match observe(
            metrics,
            GENERATE,
            iam.generate_credential_report().send().await,
        ) {
            Ok(output) => output.state,
            Err(err) if err.code() == Some("LimitExceeded") => None,
            Err(err) => return Err(IamError::call(GENERATE, &err)),
        };
        if state == Some(ReportStateType::Complete) {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(IamError::ReportTimedOut {
                timeout: policy.timeout,
            });
        }
        tokio::time::sleep(wait.min(deadline - now)).await;
        wait = (wait * 2).min(policy.poll_interval_max);
    }
}
