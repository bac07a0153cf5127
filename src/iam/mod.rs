//! The IAM seam: the only module that talks to AWS. It builds the SDK clients, counts
//! every request, and turns SDK types into the plain data of `crate::inventory`.

mod keys;
mod report;
mod service_access;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_iam::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use crate::config::{AwsSettings, RetryMode};
use crate::metrics::ExporterMetrics;

pub use keys::collect_inventory;
pub use report::{CredentialReport, ReportPolicy, credential_report};
pub use service_access::{JobPolicy, service_counts};

/// A failure talking to IAM or STS. Messages carry operation names, codes and ARNs,
/// never credentials.
#[derive(Debug, thiserror::Error)]
pub enum IamError {
    #[error("{operation} failed ({code}): {message}")]
    Call {
        operation: &'static str,
        code: String,
        message: String,
    },
    #[error("{operation} returned no {field}")]
    Malformed {
        operation: &'static str,
        field: &'static str,
    },
    #[error("service-last-accessed job for {arn} failed: {reason}")]
    JobFailed { arn: String, reason: String },
    #[error("service-last-accessed job for {arn} did not finish within {timeout:?}")]
    JobTimedOut { arn: String, timeout: Duration },
    #[error(transparent)]
    Report(#[from] crate::credential_report::ReportError),
    #[error("the credential report was not generated within {timeout:?}")]
    ReportTimedOut { timeout: Duration },
}

impl IamError {
    fn call<E, R>(operation: &'static str, err: &SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        IamError::Call {
            operation,
            code: error_code(err).to_string(),
            message: DisplayErrorContext(err).to_string(),
        }
    }
}

/// IAM's error code, or a fixed word for failures that never got an answer from IAM.
fn error_code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> &str {
    match err {
        SdkError::ConstructionFailure(_) => "construction",
        SdkError::TimeoutError(_) => "timeout",
        SdkError::DispatchFailure(_) => "dispatch",
        SdkError::ResponseError(_) => "response",
        _ => err.code().unwrap_or("unknown"),
    }
}

/// Counts a failed call in `aws_errors_total` and passes the result through.
fn observe<T, E: ProvideErrorMetadata, R>(
    metrics: &ExporterMetrics,
    operation: &'static str,
    result: Result<T, SdkError<E, R>>,
) -> Result<T, SdkError<E, R>> {
    if let Err(err) = &result {
        metrics.count_aws_error(operation, error_code(err));
    }
    result
}

/// NoSuchEntity by its code: GetAccessKeyLastUsed returns it for a deleted key, but the
/// SDK's model of that operation does not list it as a typed error.
fn is_no_such_entity<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    err.code() == Some("NoSuchEntity")
}

/// Counts every HTTP attempt, retries included, by operation name: what IAM throttles on.
#[derive(Clone)]
struct CountRequests {
    metrics: Arc<ExporterMetrics>,
}

impl std::fmt::Debug for CountRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CountRequests")
    }
}

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg.load::<Metadata>().map_or("unknown", Metadata::name);
        self.metrics
            .aws_requests_total
            .with_label_values(&[operation])
            .inc();
        Ok(())
    }
}

/// The clients the exporter uses, configured once from the SDK's default chains.
#[derive(Debug, Clone)]
pub struct Clients {
    pub iam: aws_sdk_iam::Client,
    pub sts: aws_sdk_sts::Client,
}

impl Clients {
    pub async fn from_env(settings: &AwsSettings, metrics: Arc<ExporterMetrics>) -> Clients {
        // The slim SDK features leave the HTTP client to us: rustls with ring, one TLS stack.
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let retry = match settings.retry_mode {
            RetryMode::Standard => RetryConfig::standard(),
            RetryMode::Adaptive => RetryConfig::adaptive(),
        }
        .with_max_attempts(settings.max_attempts);
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_timeout(settings.call_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client)
            .retry_config(retry)
            .timeout_config(timeouts);
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &settings.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        // The loader's own region chain is used (not a RegionProviderChain built here),
        // because only the loader hands its HTTP client to the chain's IMDS lookup.
        let mut sdk = loader.load().await;
        if sdk.region().is_none() {
            // IAM is global, but requests are signed for a region; us-east-1 is IAM's home.
            sdk = sdk
                .into_builder()
                .region(Region::from_static("us-east-1"))
                .build();
        }
        let counter = CountRequests { metrics };
        Clients {
            iam: aws_sdk_iam::Client::from_conf(
                aws_sdk_iam::config::Builder::from(&sdk)
                    .interceptor(counter.clone())
                    .build(),
            ),
            sts: aws_sdk_sts::Client::from_conf(
                aws_sdk_sts::config::Builder::from(&sdk)
                    .interceptor(counter)
                    .build(),
            ),
        }
    }
}

/// The account the exporter's credentials belong to (STS GetCallerIdentity).
pub async fn caller_account_id(
    sts: &aws_sdk_sts::Client,
    metrics: &ExporterMetrics,
) -> Result<String, IamError> {
    const OP: &str = "GetCallerIdentity";
    let output = observe(metrics, OP, sts.get_caller_identity().send().await)
        .map_err(|e| IamError::call(OP, &e))?;
    output.account.ok_or(IamError::Malformed {
        operation: OP,
        field: "Account",
    })
}

fn to_system_time(
    operation: &'static str,
    field: &'static str,
    t: &aws_smithy_types::DateTime,
) -> Result<std::time::SystemTime, IamError> {
    std::time::SystemTime::try_from(*t).map_err(|_| IamError::Malformed { operation, field })
}
