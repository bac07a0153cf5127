//! Metric families. Each struct owns its Registry: `InventoryMetrics` is built afresh
//! for every snapshot (so deleted keys vanish), `ExporterMetrics` lives as long as the
//! process and reports on the exporter itself.

use prometheus::{
    Encoder, GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Every inventory HELP text ends with this, so nobody mistakes a value for a live reading.
const CACHED: &str = "Cached: refreshed in the background, not at scrape time.";

const KEY_LABELS: &[&str] = &["account_id", "user", "access_key_id"];
const USER_LABELS: &[&str] = &["account_id", "user"];

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let vec = GaugeVec::new(Opts::new(name, format!("{help} {CACHED}")), labels)
        .expect("metric definitions are static and valid");
    registry
        .register(Box::new(vec.clone()))
        .expect("each metric is registered once");
    vec
}

/// The per-key and per-user series of one snapshot.
pub struct InventoryMetrics {
    registry: Registry,
    pub key_age_seconds: GaugeVec,
    pub key_idle_seconds: GaugeVec,
    pub key_never_used: GaugeVec,
    pub key_active: GaugeVec,
    pub key_created_timestamp_seconds: GaugeVec,
    pub key_last_used_timestamp_seconds: GaugeVec,
    pub key_last_used_info: GaugeVec,
    pub user_services_accessed: GaugeVec,
    pub user_services_granted: GaugeVec,
    pub user_mfa_active: GaugeVec,
    pub user_password_enabled: GaugeVec,
    pub user_password_last_used_timestamp_seconds: GaugeVec,
    pub root_access_keys_present: GaugeVec,
    pub credential_report_generated_timestamp_seconds: GaugeVec,
}

impl Default for InventoryMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl InventoryMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let last_used_labels = [KEY_LABELS, &["last_used_service", "last_used_region"]].concat();
        Self {
            key_age_seconds: gauge_vec(
                r,
                "aws_iam_access_key_age_seconds",
                "Seconds since the access key was created, as of the last refresh.",
                KEY_LABELS,
            ),
            key_idle_seconds: gauge_vec(
                r,
                "aws_iam_access_key_idle_seconds",
                "Seconds since the access key was last used, as of the last refresh; since creation for a key never used.",
                KEY_LABELS,
            ),
            key_never_used: gauge_vec(
                r,
                "aws_iam_access_key_never_used",
                "1 if IAM has no record of the access key being used, else 0.",
                KEY_LABELS,
            ),
            key_active: gauge_vec(
                r,
                "aws_iam_access_key_active",
                "1 if the access key's status is Active, 0 if Inactive.",
                KEY_LABELS,
            ),
            key_created_timestamp_seconds: gauge_vec(
                r,
                "aws_iam_access_key_created_timestamp_seconds",
                "Unix time the access key was created.",
                KEY_LABELS,
            ),
            key_last_used_timestamp_seconds: gauge_vec(
                r,
                "aws_iam_access_key_last_used_timestamp_seconds",
                "Unix time the access key was last used; absent for a key never used.",
                KEY_LABELS,
            ),
            key_last_used_info: gauge_vec(
                r,
                "aws_iam_access_key_last_used_info",
                "Always 1: the service and region of the access key's last use; absent for a key never used.",
                &last_used_labels,
            ),
            user_services_accessed: gauge_vec(
                r,
                "aws_iam_user_services_accessed",
                "Services the user's policies allow that the user authenticated to within IAM's tracking period.",
                USER_LABELS,
            ),
            user_services_granted: gauge_vec(
                r,
                "aws_iam_user_services_granted",
                "Services the user's policies allow, used or not.",
                USER_LABELS,
            ),
            user_mfa_active: gauge_vec(
                r,
                "aws_iam_user_mfa_active",
                "1 if the user has an MFA device, else 0 (credential report).",
                USER_LABELS,
            ),
            user_password_enabled: gauge_vec(
                r,
                "aws_iam_user_password_enabled",
                "1 if the user has a console password, else 0 (credential report).",
                USER_LABELS,
            ),
            user_password_last_used_timestamp_seconds: gauge_vec(
                r,
                "aws_iam_user_password_last_used_timestamp_seconds",
                "Unix time the user's console password was last used; absent if never (credential report).",
                USER_LABELS,
            ),
            root_access_keys_present: gauge_vec(
                r,
                "aws_iam_root_access_keys_present",
                "1 if the account's root user has access keys, else 0.",
                &["account_id"],
            ),
            credential_report_generated_timestamp_seconds: gauge_vec(
                r,
                "aws_iam_credential_report_generated_timestamp_seconds",
                "Unix time the credential report the data came from was generated; IAM regenerates it at most every 4 hours.",
                &["account_id"],
            ),
            registry,
        }
    }

    /// Renders the text exposition format.
    pub fn render(&self) -> Vec<u8> {
        encode(&self.registry)
    }
}

/// The exporter's own health, shared by the refresh loops and the HTTP server.
pub struct ExporterMetrics {
    registry: Registry,
    pub refresh_success: IntGauge,
    pub refresh_duration_seconds: prometheus::Gauge,
    pub last_refresh_success_timestamp_seconds: prometheus::Gauge,
    pub refresh_failures_total: IntCounter,
    pub aws_requests_total: IntCounterVec,
    pub aws_errors_total: IntCounterVec,
    pub snapshot_users: IntGauge,
    pub snapshot_access_keys: IntGauge,
    pub service_access_jobs_total: IntCounterVec,
    pub service_access_duration_seconds: prometheus::Gauge,
    pub service_access_last_run_timestamp_seconds: prometheus::Gauge,
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

        let refresh_failures_total = IntCounter::new(
            "iam_key_exporter_refresh_failures_total",
            "Inventory refreshes that failed; the previous snapshot stayed served.",
        )
        .expect("valid metric");
        register(Box::new(refresh_failures_total.clone()));

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
                "1 if the last inventory refresh succeeded, else 0.",
            ),
            refresh_duration_seconds: gauge(
                "iam_key_exporter_refresh_duration_seconds",
                "Duration of the last inventory refresh, successful or not.",
            ),
            last_refresh_success_timestamp_seconds: gauge(
                "iam_key_exporter_last_refresh_success_timestamp_seconds",
                "Unix time of the last successful inventory refresh: the age of the data served.",
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
            snapshot_users: int_gauge(
                "iam_key_exporter_snapshot_users",
                "IAM users in the snapshot being served.",
            ),
            snapshot_access_keys: int_gauge(
                "iam_key_exporter_snapshot_access_keys",
                "Access keys in the snapshot being served.",
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
}
