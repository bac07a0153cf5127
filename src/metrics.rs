//! Metric families: the inventory's (`Family`, written anew for every snapshot, so deleted
//! keys vanish) and the exporter's own (`ExporterMetrics`, which owns its Registry and
//! lives as long as the process).

use prometheus::{
    Counter, Encoder, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// A gauge family of the inventory. Snapshots write these straight to the text format
/// (`snapshot.rs`): at 10,000 keys a Registry would hold 80,000 labelled gauges in hash
/// maps just to print them once.
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
}

/// Every inventory HELP text ends with this, so nobody mistakes a value for a live reading.
macro_rules! cached {
    ($help:literal) => {
        concat!(
            $help,
            " Cached: refreshed in the background, not at scrape time."
        )
    };
}

macro_rules! family {
    ($constant:ident, $name:literal, $help:literal) => {
        pub const $constant: Family = Family {
            name: $name,
            help: cached!($help),
        };
    };
}

family!(
    KEY_ACTIVE,
    "aws_iam_access_key_active",
    "1 if the access key's status is Active, 0 if Inactive."
);
family!(
    KEY_AGE_SECONDS,
    "aws_iam_access_key_age_seconds",
    "Seconds since the access key was created, as of the last refresh."
);
family!(
    KEY_CREATED_TIMESTAMP_SECONDS,
    "aws_iam_access_key_created_timestamp_seconds",
    "Unix time the access key was created."
);
family!(
    KEY_IDLE_SECONDS,
    "aws_iam_access_key_idle_seconds",
    "Seconds since the access key was last used, as of the last refresh; since creation for a key never used."
);
family!(
    KEY_LAST_USED_INFO,
    "aws_iam_access_key_last_used_info",
    "Always 1: the service and region of the access key's last use; absent for a key never used."
);
family!(
    KEY_LAST_USED_TIMESTAMP_SECONDS,
    "aws_iam_access_key_last_used_timestamp_seconds",
    "Unix time the access key was last used; absent for a key never used."
);
family!(
    KEY_NEVER_USED,
    "aws_iam_access_key_never_used",
    "1 if IAM has no record of the access key being used, else 0."
);
family!(
    ACCOUNT_INFO,
    "aws_iam_account_info",
    "Always 1: an account this exporter watches, with its configured or Organizations name (empty without one). Join on account_id to add account_name to other series."
);
family!(
    CREDENTIAL_REPORT_GENERATED_TIMESTAMP_SECONDS,
    "aws_iam_credential_report_generated_timestamp_seconds",
    "Unix time the credential report the data came from was generated; IAM regenerates it at most every 4 hours."
);
family!(
    ROLE_CREATED_TIMESTAMP_SECONDS,
    "aws_iam_role_created_timestamp_seconds",
    "Unix time the role was created."
);
family!(
    ROLE_IDLE_SECONDS,
    "aws_iam_role_idle_seconds",
    "Seconds since the role was last used, as of the last reading of the roles; since creation for a role IAM has no use of in its 400-day tracking period."
);
family!(
    ROLE_LAST_USED_TIMESTAMP_SECONDS,
    "aws_iam_role_last_used_timestamp_seconds",
    "Unix time the role was last used, labelled with the region of that use when IAM gives one; absent for a role not used in IAM's 400-day tracking period."
);
family!(
    ROLE_SERVICES_ACCESSED,
    "aws_iam_role_services_accessed",
    "Services the role's policies allow that the role authenticated to (IAM tracks 400 days)."
);
family!(
    ROLE_SERVICES_GRANTED,
    "aws_iam_role_services_granted",
    "Services the role's policies allow, used or not."
);
family!(
    ROLE_TRACKED_ACTIONS_GRANTED,
    "aws_iam_role_tracked_actions_granted",
    "Actions of the service that IAM tracks by action and the role's policies allow; only for a service the role used one of them in (IAM lists them only then)."
);
family!(
    ROLE_TRACKED_ACTIONS_USED,
    "aws_iam_role_tracked_actions_used",
    "Actions of the service that IAM tracks by action that the role used (IAM tracks 400 days)."
);
family!(
    ROOT_ACCESS_KEYS_PRESENT,
    "aws_iam_root_access_keys_present",
    "1 if the account's root user has access keys, else 0."
);
family!(
    USER_CREATED_TIMESTAMP_SECONDS,
    "aws_iam_user_created_timestamp_seconds",
    "Unix time the user was created (IAM's CreateDate, or the credential report's user_creation_time; for <root_account>, the account's creation)."
);
family!(
    USER_MFA_ACTIVE,
    "aws_iam_user_mfa_active",
    "1 if the user has an MFA device, else 0 (credential report)."
);
family!(
    USER_PASSWORD_ENABLED,
    "aws_iam_user_password_enabled",
    "1 if the user has a console password, else 0 (credential report)."
);
family!(
    USER_PASSWORD_LAST_USED_TIMESTAMP_SECONDS,
    "aws_iam_user_password_last_used_timestamp_seconds",
    "Unix time the user's console password was last used; absent if never (credential report)."
);
family!(
    USER_SERVICES_ACCESSED,
    "aws_iam_user_services_accessed",
    "Services the user's policies allow that the user authenticated to within IAM's tracking period."
);
family!(
    USER_TRACKED_ACTIONS_GRANTED,
    "aws_iam_user_tracked_actions_granted",
    "Actions of the service that IAM tracks by action and the user's policies allow; only for a service the user used one of them in (IAM lists them only then)."
);
family!(
    USER_TRACKED_ACTIONS_USED,
    "aws_iam_user_tracked_actions_used",
    "Actions of the service that IAM tracks by action that the user used (IAM tracks 400 days)."
);
family!(
    USER_SERVICES_GRANTED,
    "aws_iam_user_services_granted",
    "Services the user's policies allow, used or not."
);

/// The exporter's own health, shared by the refresh loops and the HTTP server.
pub struct ExporterMetrics {
    registry: Registry,
    pub refresh_success: IntGauge,
    pub refresh_duration_seconds: prometheus::Gauge,
    pub last_refresh_success_timestamp_seconds: prometheus::Gauge,
    pub refresh_failures_total: IntCounter,
    pub aws_requests_total: IntCounterVec,
    pub aws_errors_total: IntCounterVec,
    pub aws_throttled_requests_total: IntCounterVec,
    pub account_aws_requests_total: IntCounterVec,
    pub account_aws_throttled_requests_total: IntCounterVec,
    pub account_aws_denied_requests_total: IntCounterVec,
    pub snapshot_users: IntGauge,
    pub snapshot_access_keys: IntGauge,
    pub snapshot_duplicates_dropped: IntGauge,
    pub service_access_jobs_total: IntCounterVec,
    pub service_access_duration_seconds: prometheus::Gauge,
    pub service_access_last_run_timestamp_seconds: prometheus::Gauge,
    pub aws_rate_limit_wait_seconds_total: Counter,
    pub accounts: IntGauge,
    pub account_refresh_success: IntGaugeVec,
    pub account_refresh_duration_seconds: GaugeVec,
    pub account_last_refresh_success_timestamp_seconds: GaugeVec,
    pub account_feature_degraded: IntGaugeVec,
    pub discovery_success: IntGauge,
    pub discovery_last_success_timestamp_seconds: prometheus::Gauge,
    /// `shard.total` and `shard.index`, set once at start (`set_shard`): with them
    /// Prometheus knows how many replicas should be exporting and which are.
    pub shards: IntGauge,
    pub shard_index: IntGauge,
}

/// The labels of the per-account health metrics.
pub const ACCOUNT_LABELS: &[&str] = &["account_id", "account_name"];

impl std::fmt::Debug for ExporterMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExporterMetrics").finish_non_exhaustive()
    }
}

impl Default for ExporterMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ExporterMetrics {
    pub fn new() -> Self {
        Self::build(true)
    }

    /// Without `process_*`: for a textfile-collector file, where node_exporter already
    /// exports those names for itself.
    pub fn without_process_metrics() -> Self {
        Self::build(false)
    }

    fn build(with_process_metrics: bool) -> Self {
        let registry = Registry::new();
        let register = |c: Box<dyn prometheus::core::Collector>| {
            registry
                .register(c)
                .expect("each metric is registered once");
        };

        let build_info = IntGauge::with_opts(
            Opts::new(
                "iam_key_exporter_build_info",
                "Always 1: the version of iam-key-exporter that is running.",
            )
            .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .expect("valid metric");
        build_info.set(1);
        register(Box::new(build_info));

        let gauge = |name: &str, help: &str| {
            let g = prometheus::Gauge::new(name, help).expect("valid metric");
            register(Box::new(g.clone()));
            g
        };
        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            register(Box::new(g.clone()));
            g
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            register(Box::new(c.clone()));
            c
        };

        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            register(Box::new(g.clone()));
            g
        };
        let int_gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            register(Box::new(g.clone()));
            g
        };
        let aws_rate_limit_wait_seconds_total = Counter::new(
            "iam_key_exporter_aws_rate_limit_wait_seconds_total",
            "Seconds requests waited for the client-side rate limit (at most aws.requests_per_second, lower while AWS throttles).",
        )
        .expect("valid metric");
        register(Box::new(aws_rate_limit_wait_seconds_total.clone()));

        let refresh_failures_total = IntCounter::new(
            "iam_key_exporter_refresh_failures_total",
            "Inventory refreshes that failed; the previous snapshot stayed served.",
        )
        .expect("valid metric");
        register(Box::new(refresh_failures_total.clone()));

        // Not `_shard_total`: a gauge named `_total` reads as a counter, and `promtool
        // check metrics` rejects it.
        let shards = int_gauge(
            "iam_key_exporter_shards",
            "Replicas the accounts are divided among: the configured shard.total (1 when not sharded).",
        );
        shards.set(1);

        #[cfg(target_os = "linux")]
        if with_process_metrics {
            register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        #[cfg(not(target_os = "linux"))]
        let _ = with_process_metrics;

        Self {
            refresh_success: int_gauge(
                "iam_key_exporter_refresh_success",
                "1 if the last inventory refresh succeeded for every account, else 0.",
            ),
            refresh_duration_seconds: gauge(
                "iam_key_exporter_refresh_duration_seconds",
                "Duration of the last inventory refresh of every account, successful or not.",
            ),
            last_refresh_success_timestamp_seconds: gauge(
                "iam_key_exporter_last_refresh_success_timestamp_seconds",
                "Unix time of the oldest account's last successful refresh: the age of the stalest data served (0 while an account has none).",
            ),
            aws_rate_limit_wait_seconds_total,
            accounts: int_gauge(
                "iam_key_exporter_accounts",
                "Accounts this replica watches: configured and discovered, in its shard.",
            ),
            account_refresh_success: int_gauge_vec(
                "iam_key_exporter_account_refresh_success",
                "1 if the account's last inventory refresh succeeded, else 0.",
                ACCOUNT_LABELS,
            ),
            account_refresh_duration_seconds: gauge_vec(
                "iam_key_exporter_account_refresh_duration_seconds",
                "Duration of the account's last inventory refresh, successful or not.",
                ACCOUNT_LABELS,
            ),
            account_last_refresh_success_timestamp_seconds: gauge_vec(
                "iam_key_exporter_account_last_refresh_success_timestamp_seconds",
                "Unix time of the account's last successful refresh: the age of its data (0 before the first).",
                ACCOUNT_LABELS,
            ),
            account_feature_degraded: int_gauge_vec(
                "iam_key_exporter_account_feature_degraded",
                "1 while a feature is off for the account because IAM denied its calls (root_keys, credential_report, tags, service_access), else 0.",
                &["account_id", "feature"],
            ),
            discovery_success: int_gauge(
                "iam_key_exporter_discovery_success",
                "1 if the last Organizations ListAccounts succeeded (or discovery is off), else 0.",
            ),
            discovery_last_success_timestamp_seconds: gauge(
                "iam_key_exporter_discovery_last_success_timestamp_seconds",
                "Unix time of the last successful account discovery.",
            ),
            shards,
            shard_index: int_gauge(
                "iam_key_exporter_shard_index",
                "This replica's shard: the configured shard.index, from 0 (0 when not sharded).",
            ),
            refresh_failures_total,
            aws_requests_total: counter_vec(
                "iam_key_exporter_aws_requests_total",
                "HTTP requests sent to AWS, retries included, by API operation.",
                &["operation"],
            ),
            aws_errors_total: counter_vec(
                "iam_key_exporter_aws_errors_total",
                "AWS calls that failed after retries, by API operation and error code.",
                &["operation", "code"],
            ),
            aws_throttled_requests_total: counter_vec(
                "iam_key_exporter_aws_throttled_requests_total",
                "HTTP requests AWS answered with a throttling error, by API operation; each lowers the account's request rate, and the call is retried.",
                &["operation"],
            ),
            // By account, without the operation: two or three series an account, so a
            // thousand accounts stay a few thousand series, and an alert can name the
            // account being throttled or denied. The per-operation counters above tell
            // which call.
            account_aws_requests_total: counter_vec(
                "iam_key_exporter_account_aws_requests_total",
                "HTTP requests sent to one account (IAM, STS and CloudTrail), retries included.",
                &["account_id"],
            ),
            account_aws_throttled_requests_total: counter_vec(
                "iam_key_exporter_account_aws_throttled_requests_total",
                "HTTP requests one account answered with a throttling error.",
                &["account_id"],
            ),
            account_aws_denied_requests_total: counter_vec(
                "iam_key_exporter_account_aws_denied_requests_total",
                "HTTP requests one account refused for lack of a permission.",
                &["account_id"],
            ),
            snapshot_users: int_gauge(
                "iam_key_exporter_snapshot_users",
                "IAM users in the snapshot being served.",
            ),
            snapshot_access_keys: int_gauge(
                "iam_key_exporter_snapshot_access_keys",
                "Access keys in the snapshot being served.",
            ),
            snapshot_duplicates_dropped: int_gauge(
                "iam_key_exporter_snapshot_duplicates_dropped",
                "Accounts, users and keys the sources listed twice, served once in the snapshot being served.",
            ),
            service_access_jobs_total: counter_vec(
                "iam_key_exporter_service_access_jobs_total",
                "Service-last-accessed jobs by result: completed, failed (IAM reported FAILED), timeout or error (an API call failed).",
                &["result"],
            ),
            service_access_duration_seconds: gauge(
                "iam_key_exporter_service_access_duration_seconds",
                "Duration of the last pass over every user's service-last-accessed job.",
            ),
            service_access_last_run_timestamp_seconds: gauge(
                "iam_key_exporter_service_access_last_run_timestamp_seconds",
                "Unix time the last pass over every user's service-last-accessed job finished.",
            ),
            registry,
        }
    }

    /// Sets the shard gauges from the configuration. Call it before the first exposition
    /// is assembled (`Shared::new`), so that no scrape sees the unsharded defaults.
    pub fn set_shard(&self, total: u32, index: u32) {
        self.shards.set(i64::from(total));
        self.shard_index.set(i64::from(index));
    }

    /// Counts one failed AWS call. The code is IAM's error code, or a fixed word for
    /// failures that never reached IAM; it is sanitised so a label stays short and safe.
    pub fn count_aws_error(&self, operation: &str, code: &str) {
        self.aws_errors_total
            .with_label_values(&[operation, &sanitize_code(code)])
            .inc();
    }

    pub fn render(&self) -> Vec<u8> {
        encode(&self.registry)
    }
}

/// Error codes are short identifiers (`Throttling`, `NoSuchEntity`); anything else is
/// cut down so a misbehaving endpoint cannot put free text into a label.
fn sanitize_code(code: &str) -> String {
    let clean: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect();
    if clean.is_empty() {
        "unknown".to_string()
    } else {
        clean
    }
}

fn encode(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding into memory cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_bounded_label_values() {
        assert_eq!(sanitize_code("Throttling"), "Throttling");
        assert_eq!(sanitize_code("<html>oops</html>"), "htmloopshtml");
        assert_eq!(sanitize_code(""), "unknown");
        assert_eq!(sanitize_code(&"x".repeat(500)).len(), 64);
    }

    #[test]
    fn exporter_metrics_render_build_info_and_process_metrics() {
        let m = ExporterMetrics::new();
        m.aws_requests_total.with_label_values(&["ListUsers"]).inc();
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("iam_key_exporter_build_info{version=\""),
            "{text}"
        );
        assert!(text.contains("iam_key_exporter_aws_requests_total{operation=\"ListUsers\"} 1"));
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }

    #[test]
    fn exporter_metrics_render_the_configured_shard() {
        // Unsharded until told otherwise: one shard, index 0.
        for m in [
            ExporterMetrics::new(),
            ExporterMetrics::without_process_metrics(),
        ] {
            let text = String::from_utf8(m.render()).unwrap();
            assert!(text.contains("\niam_key_exporter_shards 1\n"), "{text}");
            assert!(
                text.contains("\niam_key_exporter_shard_index 0\n"),
                "{text}"
            );
            assert!(
                text.contains("# TYPE iam_key_exporter_shards gauge\n"),
                "{text}"
            );
            assert!(
                text.contains("# TYPE iam_key_exporter_shard_index gauge\n"),
                "{text}"
            );
        }
        let m = ExporterMetrics::new();
        m.set_shard(4, 3);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("\niam_key_exporter_shards 4\n"), "{text}");
        assert!(
            text.contains("\niam_key_exporter_shard_index 3\n"),
            "{text}"
        );
        // No labels: one series each.
        assert_eq!(
            text.matches("\niam_key_exporter_shards").count(),
            1,
            "{text}"
        );
        assert_eq!(
            text.matches("\niam_key_exporter_shard_index").count(),
            1,
            "{text}"
        );
    }
}
