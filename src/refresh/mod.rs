//! The background refreshers and the state they publish.
//!
//! What runs when, each on `every` (`schedule.rs`), awaiting its step before the next:
//! - the key refresh (`keys.rs`), every `refresh.interval` (and within seconds of a
//!   report file changing): every account's key inventory, each account published as
//!   soon as it is done, with the tags of users seen for the first time;
//! - the tag refresh (`tags.rs`), every `tags.interval` after the first inventory;
//! - the service-access refresh (`service_access.rs`), every `service_access.interval`
//!   after the first inventory;
//! - the role refresh (`roles.rs`), every `roles.interval` after the first round, and for
//!   an account as soon as its change feed names a role change;
//! - the publisher (`published.rs`), which renders service counts and tags as they
//!   arrive: at once after a quiet spell, then at most every few seconds.
//!
//! What is published: one `Published` value (`published.rs`), the snapshot and the bytes
//! `/metrics` serves, built completely and then swapped in, so a scrape sees one whole
//! inventory or the previous one. `/metrics` and `/-/ready` read that same value, so an
//! exporter that says it is ready serves the data that made it ready. Beside it,
//! `RefreshStatus` says how the last key refresh ended, for the landing page.

use std::time::{Duration, SystemTime};

mod keys;
mod published;
mod roles;
mod schedule;
mod service_access;
mod tags;

pub use keys::{refresh_keys_once, run_key_refresh};
pub use published::{Published, Shared, run_publisher};
pub use roles::{refresh_roles_once, run_role_refresh};
pub use schedule::every;
pub use service_access::{refresh_service_access_once, run_service_access_refresh};
pub use tags::{refresh_tags_once, run_tag_refresh};

/// How the last inventory refresh ended, for the landing page.
#[derive(Debug, Clone)]
pub struct RefreshStatus {
    pub finished_at: SystemTime,
    pub duration: Duration,
    pub error: Option<String>,
}
