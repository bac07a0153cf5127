//! Optional features of an account's refresh that IAM may deny one by one. A denied
//! feature is switched off for that account and logged once, with the permission to
//! grant; the rest of the refresh goes on. It comes back by itself when a later call is
//! allowed again.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::iam::IamError;
use crate::metrics::ExporterMetrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// GetAccountSummary: whether the root user has access keys.
    RootKeys,
    /// The credential report, in the `auto` source: without it every key costs a
    /// GetAccessKeyLastUsed call.
    CredentialReport,
    /// ListUserTags: the tag labels.
    Tags,
    /// Service-last-accessed jobs: the service counts.
    ServiceAccess,
    /// CloudTrail's LookupEvents: without it every refresh lists every user.
    ChangeFeed,
    /// GetAccountAuthorizationDetails: the roles and their last use.
    Roles,
}

impl Feature {
    pub const ALL: [Feature; 6] = [
        Feature::RootKeys,
        Feature::CredentialReport,
        Feature::Tags,
        Feature::ServiceAccess,
        Feature::ChangeFeed,
        Feature::Roles,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Feature::RootKeys => "root_keys",
            Feature::CredentialReport => "credential_report",
            Feature::Tags => "tags",
            Feature::ServiceAccess => "service_access",
            Feature::ChangeFeed => "change_feed",
            Feature::Roles => "roles",
        }
    }

    /// The permissions an operator must grant to turn the feature back on.
    pub fn permissions(self) -> &'static str {
        match self {
            Feature::RootKeys => "iam:GetAccountSummary",
            Feature::CredentialReport => "iam:GenerateCredentialReport and iam:GetCredentialReport",
            Feature::Tags => "iam:ListUserTags",
            Feature::ServiceAccess => {
                "iam:GenerateServiceLastAccessedDetails and iam:GetServiceLastAccessedDetails"
            }
            Feature::ChangeFeed => "cloudtrail:LookupEvents and iam:GetUser",
            Feature::Roles => "iam:GetAccountAuthorizationDetails",
        }
    }
}

/// Which features are off for one account.
#[derive(Debug, Default)]
pub struct Degraded {
    off: Mutex<HashSet<Feature>>,
}

impl Degraded {
    /// Records the outcome of a feature's call. Returns the error back when it is not a
    /// denial, for the caller to handle as any other failure.
    pub fn observe<T>(
        &self,
        metrics: &ExporterMetrics,
        account_id: &str,
        feature: Feature,
        result: Result<T, IamError>,
    ) -> Result<Option<T>, IamError> {
        match result {
            Ok(value) => {
                self.working(metrics, account_id, feature);
                Ok(Some(value))
            }
            Err(err) if err.is_access_denied() => {
                self.denied(metrics, account_id, feature, &err);
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    /// Records a pass of many calls of one feature (a user each): off when any call was
    /// denied, on again when none was and at least one succeeded. A pass of nothing but
    /// other failures says nothing about permissions and changes nothing.
    pub fn observe_pass(
        &self,
        metrics: &ExporterMetrics,
        account_id: &str,
        feature: Feature,
        denied: Option<&IamError>,
        any_succeeded: bool,
    ) {
        match denied {
            Some(err) => self.denied(metrics, account_id, feature, err),
            None if any_succeeded => self.working(metrics, account_id, feature),
            None => {}
        }
    }

    pub fn denied(
        &self,
        metrics: &ExporterMetrics,
        account_id: &str,
        feature: Feature,
        err: &IamError,
    ) {
        metrics
            .account_feature_degraded
            .with_label_values(&[account_id, feature.name()])
            .set(1);
        // Once per account and feature, not once per refresh or per user: a missing
        // permission would otherwise repeat the same line thousands of times.
        if self.off.lock().expect("not poisoned").insert(feature) {
            tracing::warn!(
                account_id,
                feature = feature.name(),
                error = %err,
                "IAM denied a call: this feature is off for the account until {} is granted; everything else goes on",
                feature.permissions()
            );
        }
    }

    pub fn working(&self, metrics: &ExporterMetrics, account_id: &str, feature: Feature) {
        metrics
            .account_feature_degraded
            .with_label_values(&[account_id, feature.name()])
            .set(0);
        if self.off.lock().expect("not poisoned").remove(&feature) {
            tracing::info!(
                account_id,
                feature = feature.name(),
                "IAM allows this feature's calls again"
            );
        }
    }

    pub fn is_off(&self, feature: Feature) -> bool {
        self.off.lock().expect("not poisoned").contains(&feature)
    }
}
