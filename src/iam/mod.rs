//! The IAM seam: the only module that talks to AWS. It builds the SDK clients, counts
//! every request, and turns SDK types into the plain data of `crate::inventory`.

mod change_feed;
mod keys;
mod organizations;
mod rate_limit;
mod report;
mod roles;
mod service_access;
mod tags;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_iam::config::retry::RetryPartition;
use aws_sdk_iam::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    AfterDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use crate::config::AwsSettings;
use crate::metrics::ExporterMetrics;

pub use change_feed::{ChangeFeed, Changes, Polled};
pub use keys::{collect_inventory, relist_users, root_access_keys_present};
pub use organizations::{
    CallerIdentity, OrganizationAccount, caller_account_id, caller_identity,
    list_organization_accounts,
};
pub use rate_limit::TokenBucket;
pub use report::{CredentialReport, ReportPolicy, credential_report};
pub use roles::list_roles;
pub use service_access::{JobPolicy, service_counts};
pub use tags::user_tags;

use rate_limit::{RateLimitedClient, ThrottleFeedback};

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
    /// The service's error code (or the word for a call that got no answer), for a
    /// failed call.
    pub fn code(&self) -> Option<&str> {
        match self {
            IamError::Call { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The operation of a failed call.
    pub fn operation(&self) -> Option<&'static str> {
        match self {
            IamError::Call { operation, .. } | IamError::Malformed { operation, .. } => {
                Some(operation)
            }
            _ => None,
        }
    }

    /// IAM (or STS, or Organizations) refused the call for lack of a permission.
    pub fn is_access_denied(&self) -> bool {
        matches!(
            self,
            IamError::Call { code, .. }
                if matches!(code.as_str(), "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation")
        )
    }

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

/// IAM's error code, or a fixed word for failures that never got an answer from IAM:
/// `credentials` when no credentials could be had (an assumed role refused, expired
/// SSO), `dispatch` when the request could not be sent, `timeout`, `response` for an
/// answer that could not be read, `construction` for a request that could not be built.
fn error_code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> &str {
    match err {
        SdkError::ConstructionFailure(_) => "construction",
        SdkError::TimeoutError(_) => "timeout",
        SdkError::DispatchFailure(failure)
            if failure
                .as_connector_error()
                .is_some_and(|e| lacks_credentials(e)) =>
        {
            "credentials"
        }
        SdkError::DispatchFailure(_) => "dispatch",
        SdkError::ResponseError(_) => "response",
        _ => err.code().unwrap_or("unknown"),
    }
}

/// True when the call failed because its credentials provider failed.
fn lacks_credentials(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(current) = source {
        if current.is::<CredentialsError>() {
            return true;
        }
        source = current.source();
    }
    false
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

/// The id of the account a set of clients calls, once known: from the role ARN up front,
/// or from STS for the exporter's own account. Shared by the clients' interceptors,
/// which count requests by account.
#[derive(Debug, Clone, Default)]
pub struct AccountLabel(Arc<std::sync::OnceLock<String>>);

impl AccountLabel {
    pub fn new(id: Option<String>) -> AccountLabel {
        let label = AccountLabel::default();
        if let Some(id) = id {
            label.set(&id);
        }
        label
    }

    /// The first id given stays: an account's id never changes.
    pub fn set(&self, id: &str) {
        let _ = self.0.set(id.to_string());
    }

    pub fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

/// Counts every HTTP attempt, retries included, by operation name (what IAM throttles on)
/// and by account; and, by account, the answers that throttled or denied. Requests to the
/// own account before STS has told its id (its first GetCallerIdentity) are counted by
/// operation only.
#[derive(Clone)]
struct CountRequests {
    metrics: Arc<ExporterMetrics>,
    account: AccountLabel,
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
        if let Some(account) = self.account.get() {
            self.metrics
                .account_aws_requests_total
                .with_label_values(&[account])
                .inc();
        }
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(account) = self.account.get() else {
            return Ok(());
        };
        let response = context.response();
        let status = response.status().as_u16();
        let body = response.body().bytes().unwrap_or_default();
        if rate_limit::is_throttling(status, body) {
            self.metrics
                .account_aws_throttled_requests_total
                .with_label_values(&[account])
                .inc();
        } else if rate_limit::is_denied(status, body) {
            self.metrics
                .account_aws_denied_requests_total
                .with_label_values(&[account])
                .inc();
        }
        Ok(())
    }
}

/// Refuses an XML response whose root element is not closed at its end. The SDK's XML
/// reader stops quietly at a truncated document: a ListUsers page cut in half would read
/// as the last page with half the users, and their series would vanish. Checked after
/// the body is read, so it sees exactly what the parser saw.
#[derive(Debug, Clone, Copy)]
struct CompleteXml;

impl Intercept for CompleteXml {
    fn name(&self) -> &'static str {
        "CompleteXml"
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let body = context.response().body().bytes().unwrap_or_default();
        if body.is_empty() || is_complete_xml(body) {
            Ok(())
        } else {
            Err("malformed response: the XML document ends before its root element closes".into())
        }
    }
}

/// True when the document's last tag closes its root element.
fn is_complete_xml(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    let mut rest = text.trim();
    // Skip the declaration and any comments or processing instructions before the root.
    while let Some(skipped) = rest.strip_prefix("<?").or_else(|| rest.strip_prefix("<!")) {
        match skipped.find('>') {
            Some(end) => rest = skipped[end + 1..].trim_start(),
            None => return false,
        }
    }
    let Some(open) = rest.strip_prefix('<') else {
        return false;
    };
    let name_end = open
        .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
        .unwrap_or(open.len());
    let root = &open[..name_end];
    !root.is_empty() && rest.ends_with(&format!("</{root}>"))
}

/// Numbers each account's clients' retry partition.
static NEXT_PARTITION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A role to assume for every call to an account.
#[derive(Debug, Clone, PartialEq)]
pub struct AssumeRole {
    pub arn: String,
    pub external_id: Option<String>,
    pub session_name: String,
}

/// What the clients of every account share: the SDK configuration from the default chains
/// (the exporter's own credentials, region, retries, timeouts) and one HTTP client, so
/// that a thousand accounts still use one connection pool.
#[derive(Debug, Clone)]
pub struct AwsBase {
    sdk: SdkConfig,
    http: SharedHttpClient,
    requests_per_second: f64,
    /// Where IAM's events are recorded, for the change feed's CloudTrail client.
    change_feed_region: Region,
    metrics: Arc<ExporterMetrics>,
}

/// LookupEvents allows 2 requests per second per account and region; the feed keeps
/// under that with its own bucket, apart from the account's IAM requests.
const LOOKUP_EVENTS_PER_SECOND: f64 = 1.5;

impl AwsBase {
    pub async fn load(settings: &AwsSettings, metrics: Arc<ExporterMetrics>) -> AwsBase {
        // The slim SDK features leave the HTTP client to us: rustls with ring, one TLS stack.
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        // The standard strategy: capped exponential backoff with full jitter. Not the
        // adaptive one, whose own client-side limiter would stack on the account's bucket.
        let retry = RetryConfig::standard().with_max_attempts(settings.max_attempts);
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(settings.attempt_timeout)
            .operation_timeout(settings.call_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http.clone())
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
        AwsBase {
            sdk,
            http,
            requests_per_second: settings.requests_per_second,
            change_feed_region: Region::from_static("us-east-1"),
            metrics,
        }
    }

    /// The region whose event history the change feed reads.
    pub fn with_change_feed_region(mut self, region: &str) -> AwsBase {
        self.change_feed_region = Region::new(region.to_string());
        self
    }

    /// The clients for one account: the exporter's own credentials, or `role` assumed with
    /// them. Every request to the account, AssumeRole's included, passes the account's
    /// own rate limit.
    pub async fn clients(&self, role: Option<&AssumeRole>, account: AccountLabel) -> Clients {
        let mut sdk = self.sdk.clone();
        let bucket = (self.requests_per_second > 0.0)
            .then(|| Arc::new(TokenBucket::new(self.requests_per_second)));
        if let Some(bucket) = &bucket {
            let limited =
                RateLimitedClient::new(self.http.clone(), bucket.clone(), self.metrics.clone());
            sdk = sdk.into_builder().http_client(limited).build();
        }
        if let Some(role) = role {
            let mut provider = AssumeRoleProvider::builder(role.arn.clone())
                .session_name(role.session_name.clone())
                .configure(&sdk);
            if let Some(id) = &role.external_id {
                provider = provider.external_id(id.clone());
            }
            // The SDK's identity cache in front of the provider renews the role's
            // credentials shortly before they expire; no call ever waits on an expired one.
            let provider = SharedCredentialsProvider::new(provider.build().await);
            sdk = sdk.into_builder().credentials_provider(provider).build();
        }
        let counter = CountRequests {
            metrics: self.metrics.clone(),
            account: account.clone(),
        };
        // The event history's rate limit is its own, so is its bucket.
        let lookup_bucket = Arc::new(TokenBucket::new(LOOKUP_EVENTS_PER_SECOND));
        let lookup_sdk = sdk
            .clone()
            .into_builder()
            .http_client(RateLimitedClient::new(
                self.http.clone(),
                lookup_bucket.clone(),
                self.metrics.clone(),
            ))
            .region(self.change_feed_region.clone())
            .build();
        let lookup_feedback = ThrottleFeedback {
            bucket: Some(lookup_bucket),
            metrics: self.metrics.clone(),
        };
        let feedback = ThrottleFeedback {
            bucket,
            metrics: self.metrics.clone(),
        };
        // The SDK's retry quota is shared by every client of one partition: without a
        // partition of its own, one throttled account would spend every account's retries.
        let partition = NEXT_PARTITION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Clients {
            iam: aws_sdk_iam::Client::from_conf(
                aws_sdk_iam::config::Builder::from(&sdk)
                    .retry_partition(RetryPartition::new(format!("iam-{partition}")))
                    .interceptor(counter.clone())
                    .interceptor(feedback.clone())
                    .interceptor(CompleteXml)
                    .build(),
            ),
            sts: aws_sdk_sts::Client::from_conf(
                aws_sdk_sts::config::Builder::from(&sdk)
                    .retry_partition(RetryPartition::new(format!("sts-{partition}")))
                    .interceptor(counter.clone())
                    .interceptor(feedback)
                    .interceptor(CompleteXml)
                    .build(),
            ),
            cloudtrail: aws_sdk_cloudtrail::Client::from_conf(
                aws_sdk_cloudtrail::config::Builder::from(&lookup_sdk)
                    .retry_partition(RetryPartition::new(format!("cloudtrail-{partition}")))
                    .interceptor(counter)
                    .interceptor(lookup_feedback)
                    .build(),
            ),
            account,
        }
    }

    /// Where every client built from this base counts its requests and errors.
    pub fn metrics(&self) -> &ExporterMetrics {
        &self.metrics
    }

    /// An Organizations client with the exporter's own credentials, for discovery.
    pub fn organizations(&self) -> aws_sdk_organizations::Client {
        // Discovery's calls are the management account's, counted by operation only.
        let counter = CountRequests {
            metrics: self.metrics.clone(),
            account: AccountLabel::default(),
        };
        aws_sdk_organizations::Client::from_conf(
            aws_sdk_organizations::config::Builder::from(&self.sdk)
                .interceptor(counter)
                .build(),
        )
    }
}

/// The clients for one account.
#[derive(Debug, Clone)]
pub struct Clients {
    pub iam: aws_sdk_iam::Client,
    pub sts: aws_sdk_sts::Client,
    /// CloudTrail in the region of IAM's events, for the change feed.
    pub cloudtrail: aws_sdk_cloudtrail::Client,
    /// The account's id as the request counters label it.
    pub account: AccountLabel,
}

fn to_system_time(
    operation: &'static str,
    field: &'static str,
    t: &aws_smithy_types::DateTime,
) -> Result<std::time::SystemTime, IamError> {
    std::time::SystemTime::try_from(*t).map_err(|_| IamError::Malformed { operation, field })
}
