//! A client-side rate limit for one account: a token bucket that every HTTP attempt to the
//! account draws from, retries included, wrapped around the SDK's HTTP client so that no
//! call site can forget it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use tokio::time::Instant;

use crate::metrics::ExporterMetrics;

/// Tokens refill at `rate` per second up to one second's worth. A request that finds the
/// bucket empty takes a token anyway, driving the balance below zero, and waits until its
/// token would have been there: requests leave in arrival order at exactly `rate`.
///
/// Written here rather than taken from a crate because it sleeps on tokio's clock, which
/// the tests pause and advance to prove the rate without waiting for it.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(rate: f64) -> TokenBucket {
        let capacity = rate.max(1.0);
        TokenBucket {
            rate,
            capacity,
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    /// Takes one token and returns how long the caller must wait before using it.
    fn reserve(&self) -> Duration {
        let mut state = self.state.lock().expect("not poisoned");
        let (tokens, updated) = &mut *state;
        let now = Instant::now();
        let earned = now.saturating_duration_since(*updated).as_secs_f64() * self.rate;
        *tokens = (*tokens + earned).min(self.capacity) - 1.0;
        *updated = now;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / self.rate)
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
        requests_per_second: f64,
        metrics: Arc<ExporterMetrics>,
    ) -> RateLimitedClient {
        RateLimitedClient {
            inner,
            bucket: Arc::new(TokenBucket::new(requests_per_second)),
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
}
