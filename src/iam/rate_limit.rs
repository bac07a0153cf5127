//! A client-side rate limit for one account: a token bucket that every HTTP attempt to the
//! account draws from, retries included, wrapped around the SDK's HTTP client so that no
//! call site can forget it. Its rate adapts to IAM: it drops when IAM throttles and climbs
//! back when IAM stops, so the exporter settles just below the budget that other tools
//! in the account leave it.
//!
//! This is the only client-side limiter: the SDK's own adaptive retry mode keeps a second
//! limiter that waits before every retry, and the two stacked stalled a throttled call for
//! tens of seconds. The SDK keeps what it does well: retries with capped, jittered backoff.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_runtime::retries::classifiers::THROTTLING_ERRORS;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::AfterDeserializationInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, Metadata};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use tokio::time::Instant;

use crate::metrics::ExporterMetrics;

/// What a Throttling answer leaves of the rate: CUBIC's factor, gentler than halving, so
/// the rate's sawtooth stays close to what IAM grants.
const DECREASE_FACTOR: f64 = 0.7;

/// Throttles within this long of a decrease are answers to requests sent at the old rate:
/// they do not lower the rate again.
const DECREASE_COOLDOWN: Duration = Duration::from_secs(1);

/// Each second without a decrease gives back this share of the configured rate: from the
/// lowest rate to the full one in under a minute.
const INCREASE_SHARE_PER_SECOND: f64 = 1.0 / 50.0;

/// Tokens refill at the current rate up to one second's worth. A request that finds the
/// bucket empty takes a token anyway, driving the balance below zero, and waits until its
/// token would have been there: requests leave in arrival order at exactly the rate.
///
/// The rate is additive-increase, multiplicative-decrease: a Throttling answer multiplies
/// it by `DECREASE_FACTOR` (at most once per `DECREASE_COOLDOWN`), and it grows back
/// linearly with time up to the configured ceiling. Time, not successful requests, drives
/// the increase because IAM's own buckets refill with time: an exporter idle between
/// refreshes comes back at full rate, and a throttle then lowers it within a second.
///
/// Written here rather than taken from a crate because it sleeps on tokio's clock, which
/// the tests pause and advance to prove the rate without waiting for it.
#[derive(Debug)]
pub struct TokenBucket {
    ceiling: f64,
    floor: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    updated: Instant,
    /// The rate right after the last decrease, and when that was; `None` at the ceiling.
    decreased: Option<(f64, Instant)>,
}

impl BucketState {
    fn rate_at(&self, ceiling: f64, at: Instant) -> f64 {
        match self.decreased {
            None => ceiling,
            Some((rate, since)) => {
                let climbed = at.saturating_duration_since(since).as_secs_f64()
                    * ceiling
                    * INCREASE_SHARE_PER_SECOND;
                (rate + climbed).min(ceiling)
            }
        }
    }
}

impl TokenBucket {
    pub fn new(rate: f64) -> TokenBucket {
        TokenBucket {
            ceiling: rate,
            floor: rate.min(1.0),
            state: Mutex::new(BucketState {
                tokens: rate.max(1.0),
                updated: Instant::now(),
                decreased: None,
            }),
        }
    }

    /// The rate requests leave at now, in requests per second.
    pub fn rate(&self) -> f64 {
        let state = self.state.lock().expect("not poisoned");
        state.rate_at(self.ceiling, Instant::now())
    }

    /// Takes one token and returns how long the caller must wait before using it.
    fn reserve(&self) -> Duration {
        let mut state = self.state.lock().expect("not poisoned");
        let now = Instant::now();
        let rate = state.rate_at(self.ceiling, now);
        // The rate climbs linearly between two reservations: the mean of its two ends
        // is what was earned per second in between.
        let mean_rate = (state.rate_at(self.ceiling, state.updated) + rate) / 2.0;
        let earned = now.saturating_duration_since(state.updated).as_secs_f64() * mean_rate;
        state.tokens = (state.tokens + earned).min(rate.max(1.0)) - 1.0;
        state.updated = now;
        if state.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-state.tokens / rate)
        }
    }

    /// Resolves when the caller may send one request.
    pub async fn acquire(&self) -> Duration {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }

    /// IAM answered Throttling: lower the rate, unless it was lowered a moment ago.
    pub fn throttled(&self) {
        let mut state = self.state.lock().expect("not poisoned");
        let now = Instant::now();
        if let Some((_, since)) = state.decreased
            && now.saturating_duration_since(since) < DECREASE_COOLDOWN
        {
            return;
        }
        let lowered = (state.rate_at(self.ceiling, now) * DECREASE_FACTOR).max(self.floor);
        state.decreased = Some((lowered, now));
        // The burst allowance shrinks with the rate: a full bucket saved at the old rate
        // would otherwise go out at once into an account that is already throttling.
        state.tokens = state.tokens.min(lowered.max(1.0));
    }
}

/// The SDK's HTTP client with a token bucket in front of every request it sends.
#[derive(Debug, Clone)]
pub struct RateLimitedClient {
    inner: SharedHttpClient,
    bucket: Arc<TokenBucket>,
    metrics: Arc<ExporterMetrics>,
}

impl RateLimitedClient {
    pub fn new(
        inner: SharedHttpClient,
        bucket: Arc<TokenBucket>,
        metrics: Arc<ExporterMetrics>,
    ) -> RateLimitedClient {
        RateLimitedClient {
            inner,
            bucket,
            metrics,
        }
    }
}

impl HttpClient for RateLimitedClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(RateLimitedConnector {
            inner: self.inner.http_connector(settings, components),
            bucket: self.bucket.clone(),
            metrics: self.metrics.clone(),
        })
    }
}

#[derive(Debug)]
struct RateLimitedConnector {
    inner: SharedHttpConnector,
    bucket: Arc<TokenBucket>,
    metrics: Arc<ExporterMetrics>,
}

impl HttpConnector for RateLimitedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let (inner, bucket, metrics) = (
            self.inner.clone(),
            self.bucket.clone(),
            self.metrics.clone(),
        );
        HttpConnectorFuture::new(async move {
            let waited = bucket.acquire().await;
            metrics
                .aws_rate_limit_wait_seconds_total
                .inc_by(waited.as_secs_f64());
            inner.call(request).await
        })
    }
}

/// Tells the account's bucket about every Throttling answer, and counts them by
/// operation. It reads each attempt's answer, so a call throttled three times before it
/// succeeds is three signals and three counts, while `aws_errors_total` sees no error.
#[derive(Clone)]
pub struct ThrottleFeedback {
    pub bucket: Option<Arc<TokenBucket>>,
    pub metrics: Arc<ExporterMetrics>,
}

impl std::fmt::Debug for ThrottleFeedback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThrottleFeedback")
    }
}

impl Intercept for ThrottleFeedback {
    fn name(&self) -> &'static str {
        "ThrottleFeedback"
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response();
        let body = response.body().bytes().unwrap_or_default();
        if is_throttling(response.status().as_u16(), body) {
            let operation = cfg.load::<Metadata>().map_or("unknown", Metadata::name);
            self.metrics
                .aws_throttled_requests_total
                .with_label_values(&[operation])
                .inc();
            if let Some(bucket) = &self.bucket {
                bucket.throttled();
            }
        }
        Ok(())
    }
}

/// True for an answer that asks the client to slow down: HTTP 429, or an error whose
/// code is one of the codes the SDK itself retries as throttling (IAM and STS answer
/// `Throttling` with HTTP 400, CloudTrail `ThrottlingException`).
pub(super) fn is_throttling(status: u16, body: &[u8]) -> bool {
    status == 429
        || error_code(status, body).is_some_and(|code| THROTTLING_ERRORS.contains(&code.as_str()))
}

/// True for an answer refusing a call for lack of a permission.
pub(super) fn is_denied(status: u16, body: &[u8]) -> bool {
    error_code(status, body).is_some_and(|code| {
        matches!(
            code.as_str(),
            "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation"
        )
    })
}

/// The error code of an error answer: the query protocol's `<Code>` (IAM, STS), or the
/// JSON protocol's `__type` (CloudTrail, Organizations), which may carry a namespace
/// before a `#`.
fn error_code(status: u16, body: &[u8]) -> Option<String> {
    if status < 400 {
        return None;
    }
    let text = String::from_utf8_lossy(body);
    let query = text
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.trim());
    let json = || {
        let (_, rest) = text.split_once("\"__type\"")?;
        let value = rest
            .trim_start()
            .strip_prefix(':')?
            .trim_start()
            .strip_prefix('"')?;
        let (value, _) = value.split_once('"')?;
        Some(value.rsplit('#').next().unwrap_or(value))
    };
    query.or_else(json).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_leaves_at_the_configured_rate_after_one_second_of_tokens() {
        let bucket = TokenBucket::new(5.0);
        let start = Instant::now();
        let mut sent_at = Vec::new();
        for _ in 0..15 {
            bucket.acquire().await;
            sent_at.push(start.elapsed().as_secs_f64());
        }
        // Five tokens at once, then one every 200 ms.
        assert!(sent_at[..5].iter().all(|t| *t == 0.0), "{sent_at:?}");
        for (i, t) in sent_at[5..].iter().enumerate() {
            let expected = 0.2 * (i + 1) as f64;
            assert!((t - expected).abs() < 1e-6, "request {}: {t} s", i + 5);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_bucket_refills_but_never_beyond_one_second_of_tokens() {
        let bucket = TokenBucket::new(2.0);
        for _ in 0..2 {
            assert_eq!(bucket.acquire().await, Duration::ZERO);
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        // A minute idle earns two tokens, not 120.
        assert_eq!(bucket.acquire().await, Duration::ZERO);
        assert_eq!(bucket.acquire().await, Duration::ZERO);
        assert_eq!(bucket.acquire().await, Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_bucket() {
        let bucket = Arc::new(TokenBucket::new(10.0));
        let start = Instant::now();
        let tasks: Vec<_> = (0..30)
            .map(|_| {
                let bucket = bucket.clone();
                tokio::spawn(async move { bucket.acquire().await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        // 10 at once, 20 more at 10 per second.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_lowers_the_rate_once_and_it_climbs_back_linearly() {
        let bucket = TokenBucket::new(50.0);
        assert_eq!(bucket.rate(), 50.0);
        bucket.throttled();
        assert!((bucket.rate() - 35.0).abs() < 1e-9, "{}", bucket.rate());
        // Answers to requests sent before the decrease do not lower it again.
        bucket.throttled();
        bucket.throttled();
        assert!((bucket.rate() - 35.0).abs() < 1e-9, "{}", bucket.rate());
        // One request per second more each second (1/50 of the ceiling).
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!((bucket.rate() - 40.0).abs() < 1e-9, "{}", bucket.rate());
        bucket.throttled();
        assert!((bucket.rate() - 28.0).abs() < 1e-9, "{}", bucket.rate());
        // Back at the ceiling, and never above it, once IAM stops throttling.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(bucket.rate(), 50.0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_never_falls_below_one_request_per_second() {
        let bucket = TokenBucket::new(4.0);
        for _ in 0..10 {
            tokio::time::sleep(DECREASE_COOLDOWN).await;
            bucket.throttled();
        }
        assert_eq!(bucket.rate(), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_spends_the_burst_saved_at_the_old_rate() {
        let bucket = TokenBucket::new(50.0);
        bucket.throttled();
        // 35 tokens at most, not 50: the 36th request waits for its token.
        for _ in 0..35 {
            assert_eq!(bucket.acquire().await, Duration::ZERO);
        }
        assert!(bucket.acquire().await > Duration::ZERO);
    }

    /// IAM's side of the simulation: a bucket of `rate` per second holding `burst`.
    struct SimulatedIam {
        rate: f64,
        burst: f64,
        state: Mutex<(f64, Instant)>,
    }

    impl SimulatedIam {
        fn admit(&self) -> bool {
            let mut state = self.state.lock().unwrap();
            let now = Instant::now();
            let earned = now.duration_since(state.1).as_secs_f64() * self.rate;
            state.0 = (state.0 + earned).min(self.burst);
            state.1 = now;
            if state.0 >= 1.0 {
                state.0 -= 1.0;
                true
            } else {
                false
            }
        }
    }

    /// The control law against an account that grants 20 requests per second while the
    /// exporter's ceiling is 50: four workers, a throttled request retried after a
    /// backoff, on tokio's paused clock. The successful calls must finish within 20 % of
    /// calls / 20 s, and the throttled share must stay small.
    #[tokio::test(start_paused = true)]
    async fn against_an_account_granting_20_per_second_the_rate_settles_close_to_it() {
        for burst in [5.0, 20.0] {
            let ours = Arc::new(TokenBucket::new(50.0));
            let iam = Arc::new(SimulatedIam {
                rate: 20.0,
                burst,
                state: Mutex::new((burst, Instant::now())),
            });
            let calls = 2_000;
            let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(calls));
            let throttles = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let start = Instant::now();
            let workers: Vec<_> = (0..4)
                .map(|worker| {
                    let (ours, iam) = (ours.clone(), iam.clone());
                    let (remaining, throttles) = (remaining.clone(), throttles.clone());
                    tokio::spawn(async move {
                        use std::sync::atomic::Ordering::SeqCst;
                        let mut attempt = 0u64;
                        while remaining
                            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                        {
                            loop {
                                ours.acquire().await;
                                // Each request takes 5 ms to answer.
                                tokio::time::sleep(Duration::from_millis(5)).await;
                                if iam.admit() {
                                    break;
                                }
                                throttles.fetch_add(1, SeqCst);
                                ours.throttled();
                                // The SDK's first backoff for a throttle: up to 1 s,
                                // jittered; a fixed spread stands in for the jitter.
                                attempt += 1;
                                let jitter = (attempt * 7 + worker) % 10 * 100;
                                tokio::time::sleep(Duration::from_millis(jitter)).await;
                            }
                        }
                    })
                })
                .collect();
            for worker in workers {
                worker.await.unwrap();
            }
            let elapsed = start.elapsed().as_secs_f64();
            let ideal = calls as f64 / 20.0;
            let throttled = throttles.load(std::sync::atomic::Ordering::SeqCst);
            assert!(
                elapsed <= ideal * 1.2,
                "burst {burst}: {elapsed:.1} s for {calls} calls, ideal {ideal} s"
            );
            assert!(
                throttled < calls / 10,
                "burst {burst}: {throttled} throttles for {calls} calls"
            );
        }
    }

    #[test]
    fn throttling_is_told_by_status_or_by_the_code_the_sdk_retries_as_throttling() {
        let iam = br#"<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">
  <Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error>
  <RequestId>2b8c6f1e-0000-4000-8000-000000000000</RequestId></ErrorResponse>"#;
        assert!(is_throttling(400, iam));
        assert!(is_throttling(429, b""));
        let denied = br#"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code></Error></ErrorResponse>"#;
        assert!(!is_throttling(403, denied));
        // GenerateCredentialReport's LimitExceeded (409) is "a report is being made",
        // not a request to slow down.
        let limit = br#"<ErrorResponse><Error><Code>LimitExceeded</Code></Error></ErrorResponse>"#;
        assert!(!is_throttling(409, limit));
        assert!(!is_throttling(200, b"<Code>Throttling</Code>"));
        // CloudTrail's JSON protocol, with and without a namespace.
        let cloudtrail = br#"{"__type": "com.amazonaws.cloudtrail#ThrottlingException", "message": "Rate exceeded"}"#;
        assert!(is_throttling(400, cloudtrail));
        assert!(is_throttling(400, br#"{"__type":"ThrottlingException"}"#));
        assert!(!is_throttling(
            400,
            br#"{"__type":"AccessDeniedException"}"#
        ));
        assert!(is_denied(400, br#"{"__type":"AccessDeniedException"}"#));
        assert!(is_denied(403, denied));
        assert!(!is_denied(400, iam));
    }
}
