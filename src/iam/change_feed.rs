//! The change feed: which users IAM changed, from CloudTrail's event history. Event
//! history is on in every account without a trail and holds 90 days of management
//! events; IAM's are recorded in one region (us-east-1 for the aws partition). A poll asks
//! LookupEvents for the write events (`ReadOnly = false`) since the previous poll, keeps
//! IAM's (`eventSource` iam.amazonaws.com) and turns them into the users to list again,
//! so a refresh costs what changed, not what exists.
//!
//! Write events, not `EventSource = iam.amazonaws.com`: LookupEvents takes one attribute,
//! and IAM's events include every read, the exporter's own among them. A whole list of
//! 5,000 users is 5,000 reads, so a feed of IAM's events would page through the
//! exporter's own footprint at every poll after one (and a service-access pass adds two
//! or three reads a job). The write events of the region hold none of the exporter's
//! calls but its GenerateCredentialReport, every four hours.
//!
//! CloudTrail shows an event minutes after its call, so each poll looks back `overlap`
//! before the previous poll's end and skips the events it has already seen by id. Only
//! the cursor of a successful poll moves: a failed poll loses nothing, the next one asks
//! for the same window again.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use aws_sdk_cloudtrail::types::{LookupAttribute, LookupAttributeKey};
use serde::Deserialize;

use super::{IamError, observe};
use crate::metrics::ExporterMetrics;

/// A poll that would read more pages than this (50 events each, 10,000 in all, about two
/// minutes at the feed's rate) is abandoned for a whole list of the account.
pub const MAX_PAGES: usize = 200;

/// The `eventSource` of IAM's events.
const IAM_EVENT_SOURCE: &str = "iam.amazonaws.com";

/// How much earlier than a whole list's start an event may be and still be skipped as
/// already seen by it: IAM takes a few seconds to show a change everywhere.
const CONSISTENCY_MARGIN: Duration = Duration::from_secs(60);

/// What the events of one poll say changed in an account.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Users whose existence or keys may have changed: each is listed again. Names as the
    /// events spell them; IAM matches user names regardless of case.
    pub users: BTreeSet<String>,
    /// Users whose tags changed: their tags are read again.
    pub tags: BTreeSet<String>,
    /// Users whose own permissions changed: their service counts are due again.
    pub permissions: BTreeSet<String>,
    /// A group's or a managed policy's permissions changed: every user's service counts
    /// are due again.
    pub all_permissions: bool,
    /// An event that changed a user's keys but names no user the feed can place (or a
    /// poll too long to read): every user is listed again.
    pub everyone: bool,
    /// A role was created, deleted, tagged or untagged: the account's roles are read again.
    pub roles: bool,
    /// Roles whose own permissions changed: their service counts are due again.
    pub role_permissions: BTreeSet<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }

    fn merge(&mut self, other: Changes) {
        self.users.extend(other.users);
        self.tags.extend(other.tags);
        self.permissions.extend(other.permissions);
        self.all_permissions |= other.all_permissions;
        self.everyone |= other.everyone;
        self.roles |= other.roles;
        self.role_permissions.extend(other.role_permissions);
    }
}

/// One event as the feed needs it: LookupEvents' fields without the SDK's types.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub name: String,
    pub read_only: bool,
    pub time: SystemTime,
    /// The event record (`CloudTrailEvent`), a JSON document.
    pub detail: Option<String>,
}

/// The fields of an event record the feed reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    #[serde(default)]
    error_code: Option<String>,
    #[serde(default)]
    request_parameters: Option<RequestParameters>,
    #[serde(default)]
    user_identity: Option<UserIdentity>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestParameters {
    #[serde(default)]
    user_name: Option<String>,
    #[serde(default)]
    new_user_name: Option<String>,
    #[serde(default)]
    role_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserIdentity {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    user_name: Option<String>,
}

/// What an IAM event name means for the exporter.
enum Meaning {
    /// A user created, renamed or deleted, or one of its keys created, changed or deleted.
    Keys,
    Tags,
    /// The permissions of the named user.
    UserPermissions,
    /// The permissions of a group's members or of a policy's holders.
    BroadPermissions,
    /// A role created, deleted or (un)tagged: what the role series show. A role's last use
    /// is no event; the role pass reads it every `roles.interval`.
    Roles,
    /// The permissions of the named role.
    RolePermissions,
}

fn meaning(event_name: &str) -> Option<Meaning> {
    Some(match event_name {
        "CreateUser" | "DeleteUser" | "UpdateUser" | "CreateAccessKey" | "UpdateAccessKey"
        | "DeleteAccessKey" => Meaning::Keys,
        "TagUser" | "UntagUser" => Meaning::Tags,
        "AttachUserPolicy"
        | "DetachUserPolicy"
        | "PutUserPolicy"
        | "DeleteUserPolicy"
        | "AddUserToGroup"
        | "RemoveUserFromGroup"
        | "PutUserPermissionsBoundary"
        | "DeleteUserPermissionsBoundary" => Meaning::UserPermissions,
        "AttachGroupPolicy"
        | "DetachGroupPolicy"
        | "PutGroupPolicy"
        | "DeleteGroupPolicy"
        | "DeleteGroup"
        | "CreatePolicyVersion"
        | "SetDefaultPolicyVersion" => Meaning::BroadPermissions,
        "CreateRole" | "DeleteRole" | "TagRole" | "UntagRole" => Meaning::Roles,
        "AttachRolePolicy"
        | "DetachRolePolicy"
        | "PutRolePolicy"
        | "DeleteRolePolicy"
        | "PutRolePermissionsBoundary"
        | "DeleteRolePermissionsBoundary" => Meaning::RolePermissions,
        // Console passwords, MFA, certificates, role policies...: the credential report
        // or nothing the exporter serves.
        _ => return None,
    })
}

/// What one event changed. Read-only events and failed calls change nothing.
pub fn changes_of(event: &Event) -> Changes {
    let mut changes = Changes::default();
    if event.read_only {
        return changes;
    }
    let Some(meaning) = meaning(&event.name) else {
        return changes;
    };
    let record: Record = event
        .detail
        .as_deref()
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default();
    if record.error_code.is_some() {
        return changes;
    }
    let parameters = record.request_parameters.unwrap_or_default();
    let identity = record.user_identity.unwrap_or_default();
    // A key call without UserName acts on the caller's own user; a root user's keys are
    // not a user's, and GetAccountSummary tells of them at every refresh.
    let user = parameters.user_name.or(match identity.kind.as_deref() {
        Some("IAMUser") => identity.user_name,
        _ => None,
    });
    let is_root = identity.kind.as_deref() == Some("Root");
    match (meaning, user) {
        (Meaning::Keys, Some(user)) => {
            changes.users.insert(user);
            // A renamed user is gone under the old name and new under the new one.
            changes.users.extend(parameters.new_user_name);
        }
        (Meaning::Keys, None) if is_root => {}
        (Meaning::Keys, None) => changes.everyone = true,
        (Meaning::Tags, Some(user)) => {
            changes.tags.insert(user);
        }
        (Meaning::UserPermissions, Some(user)) => {
            changes.permissions.insert(user);
        }
        // Without a name, the permissions of someone unknown changed.
        (Meaning::Tags, None) => {}
        (Meaning::UserPermissions | Meaning::BroadPermissions, _) => changes.all_permissions = true,
        (Meaning::Roles, _) => changes.roles = true,
        (Meaning::RolePermissions, _) => match parameters.role_name {
            Some(role) => {
                changes.role_permissions.insert(role);
            }
            // Without a name, someone unknown's permissions changed.
            None => changes.all_permissions = true,
        },
    }
    changes
}

/// An account's position in its event history.
#[derive(Debug, Default)]
pub struct ChangeFeed {
    /// The end of the last successful poll, or the start of the last whole list.
    cursor: Option<SystemTime>,
    /// Events older than this are already reflected by a whole list.
    floor: Option<SystemTime>,
    /// Ids of the events already applied, with their time, kept while a poll can still
    /// return them.
    seen: HashMap<String, SystemTime>,
}

impl ChangeFeed {
    /// A whole list starts at `at`: it sees every change made before, so the feed goes on
    /// from there.
    pub fn restart(&mut self, at: SystemTime) {
        self.cursor = Some(at);
        self.floor = Some(at - CONSISTENCY_MARGIN);
        self.seen.clear();
    }

    /// True once a whole list has given the feed a place to start.
    pub fn is_started(&self) -> bool {
        self.cursor.is_some()
    }

    /// The window the next poll asks for, ending at `now`.
    fn window(&self, now: SystemTime, overlap: Duration) -> Option<(SystemTime, SystemTime)> {
        let cursor = self.cursor?;
        Some((
            cursor.checked_sub(overlap).unwrap_or(cursor),
            now.max(cursor),
        ))
    }

    /// What the events of a successful poll of the window ending at `end` changed,
    /// leaving out those already applied. Nothing moves until `commit`.
    pub fn read(&self, events: &[Event], end: SystemTime) -> Polled {
        let mut polled = Polled {
            changes: Changes::default(),
            end,
            new: Vec::new(),
        };
        for event in events {
            if self.floor.is_some_and(|floor| event.time < floor)
                || self.seen.contains_key(&event.id)
                || polled.new.iter().any(|(id, _)| *id == event.id)
            {
                continue;
            }
            polled.changes.merge(changes_of(event));
            polled.new.push((event.id.clone(), event.time));
        }
        polled
    }

    /// Records a poll whose changes are applied: its events are remembered and the
    /// cursor moves to its end. A poll whose changes could not be applied (the refresh
    /// failed) is not committed, so the next poll reads its events again.
    pub fn commit(&mut self, polled: Polled, overlap: Duration) {
        self.seen.extend(polled.new);
        self.cursor = Some(polled.end);
        // A later poll starts at `end - overlap`: older ids cannot come back.
        let oldest = polled.end.checked_sub(overlap).unwrap_or(polled.end);
        self.seen.retain(|_, time| *time >= oldest);
    }

    /// Asks the event history what changed since the last poll. `None` when the feed has
    /// no place to start yet (no whole list so far).
    pub async fn poll(
        &self,
        cloudtrail: &aws_sdk_cloudtrail::Client,
        metrics: &ExporterMetrics,
        overlap: Duration,
    ) -> Result<Option<Polled>, IamError> {
        let Some((start, end)) = self.window(SystemTime::now(), overlap) else {
            return Ok(None);
        };
        match lookup_iam_events(cloudtrail, metrics, start, end).await? {
            Some(events) => Ok(Some(self.read(&events, end))),
            None => {
                tracing::info!(
                    pages = MAX_PAGES,
                    "more IAM events since the last poll than the feed reads; listing every user instead"
                );
                Ok(Some(Polled {
                    changes: Changes {
                        everyone: true,
                        ..Changes::default()
                    },
                    end,
                    new: Vec::new(),
                }))
            }
        }
    }
}

/// A poll's changes, and what `ChangeFeed::commit` records of it once they are applied.
#[derive(Debug)]
pub struct Polled {
    pub changes: Changes,
    end: SystemTime,
    /// The ids and times of the events first seen in this poll.
    new: Vec<(String, SystemTime)>,
}

/// IAM's events between `start` and `end`, every page; `None` past `MAX_PAGES`.
async fn lookup_iam_events(
    cloudtrail: &aws_sdk_cloudtrail::Client,
    metrics: &ExporterMetrics,
    start: SystemTime,
    end: SystemTime,
) -> Result<Option<Vec<Event>>, IamError> {
    const OP: &str = "LookupEvents";
    let writes = LookupAttribute::builder()
        .attribute_key(LookupAttributeKey::ReadOnly)
        .attribute_value("false")
        .build()
        .map_err(|_| IamError::Malformed {
            operation: OP,
            field: "LookupAttributes",
        })?;
    let mut pages = cloudtrail
        .lookup_events()
        .lookup_attributes(writes)
        .start_time(start.into())
        .end_time(end.into())
        .max_results(50)
        .into_paginator()
        .send();
    let mut events = Vec::new();
    let mut read = 0;
    while let Some(page) = pages.next().await {
        read += 1;
        if read > MAX_PAGES {
            return Ok(None);
        }
        let page = observe(metrics, OP, page).map_err(|e| IamError::call(OP, &e))?;
        for event in page.events.unwrap_or_default() {
            // An event without an id or time cannot be placed in the window; CloudTrail
            // always gives both.
            let (Some(id), Some(time)) = (event.event_id, event.event_time) else {
                continue;
            };
            let Ok(time) = SystemTime::try_from(time) else {
                continue;
            };
            // Other services' writes in the region: nothing the exporter serves.
            if event.event_source.as_deref() != Some(IAM_EVENT_SOURCE) {
                continue;
            }
            events.push(Event {
                id,
                name: event.event_name.unwrap_or_default(),
                read_only: event.read_only.as_deref() == Some("true"),
                time,
                detail: event.cloud_trail_event,
            });
        }
    }
    Ok(Some(events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const T0: u64 = 1_796_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn event(id: &str, name: &str, time: u64, detail: serde_json::Value) -> Event {
        Event {
            id: id.into(),
            name: name.into(),
            read_only: false,
            time: at(time),
            detail: Some(detail.to_string()),
        }
    }

    fn on_user(name: &str, user: &str) -> Event {
        event(
            name,
            name,
            T0,
            serde_json::json!({
                "eventName": name,
                "userIdentity": {"type": "AssumedRole", "arn": "arn:aws:sts::123456789012:assumed-role/admin/x"},
                "requestParameters": {"userName": user},
            }),
        )
    }

    /// Reads and commits a poll, as a refresh that applied its changes does.
    fn apply(
        feed: &mut ChangeFeed,
        events: &[Event],
        end: SystemTime,
        overlap: Duration,
    ) -> Changes {
        let polled = feed.read(events, end);
        let changes = polled.changes.clone();
        feed.commit(polled, overlap);
        changes
    }

    fn names(set: &BTreeSet<String>) -> Vec<&str> {
        set.iter().map(String::as_str).collect()
    }

    #[test]
    fn each_write_event_names_what_to_read_again() {
        for name in [
            "CreateUser",
            "DeleteUser",
            "CreateAccessKey",
            "UpdateAccessKey",
            "DeleteAccessKey",
        ] {
            let changes = changes_of(&on_user(name, "alice"));
            assert_eq!(names(&changes.users), ["alice"], "{name}");
            assert!(changes.tags.is_empty() && !changes.everyone, "{name}");
        }
        for name in ["TagUser", "UntagUser"] {
            let changes = changes_of(&on_user(name, "bob"));
            assert_eq!(names(&changes.tags), ["bob"], "{name}");
            assert!(changes.users.is_empty(), "{name}");
        }
        for name in [
            "AttachRolePolicy",
            "PutRolePolicy",
            "DeleteRolePermissionsBoundary",
        ] {
            let changes = changes_of(&event(
                name,
                name,
                T0,
                serde_json::json!({"requestParameters": {"roleName": "deployer"}}),
            ));
            assert_eq!(names(&changes.role_permissions), ["deployer"], "{name}");
            assert!(changes.permissions.is_empty() && !changes.all_permissions);
        }
        for name in ["CreateRole", "DeleteRole", "TagRole", "UntagRole"] {
            let changes = changes_of(&event(
                name,
                name,
                T0,
                serde_json::json!({"requestParameters": {"roleName": "deployer"}}),
            ));
            assert_eq!(
                changes,
                Changes {
                    roles: true,
                    ..Changes::default()
                },
                "{name}"
            );
        }
        for name in [
            "AttachUserPolicy",
            "DetachUserPolicy",
            "PutUserPolicy",
            "DeleteUserPolicy",
            "AddUserToGroup",
            "RemoveUserFromGroup",
        ] {
            let changes = changes_of(&on_user(name, "carol"));
            assert_eq!(names(&changes.permissions), ["carol"], "{name}");
            assert!(
                changes.users.is_empty() && !changes.all_permissions,
                "{name}"
            );
        }
        for name in ["AttachGroupPolicy", "PutGroupPolicy", "CreatePolicyVersion"] {
            let changes = changes_of(&event(
                name,
                name,
                T0,
                serde_json::json!({"requestParameters": {"groupName": "devs"}}),
            ));
            assert!(changes.all_permissions, "{name}");
        }
        // Events of other resources change nothing the exporter serves.
        for name in [
            "UpdateAssumeRolePolicy",
            "CreateLoginProfile",
            "UploadSSHPublicKey",
        ] {
            assert!(changes_of(&on_user(name, "dave")).is_empty(), "{name}");
        }
    }

    #[test]
    fn a_renamed_user_is_read_again_under_both_names() {
        let rename = event(
            "1",
            "UpdateUser",
            T0,
            serde_json::json!({"requestParameters": {"userName": "old", "newUserName": "new"}}),
        );
        assert_eq!(names(&changes_of(&rename).users), ["new", "old"]);
    }

    #[test]
    fn a_key_created_without_user_name_is_the_callers_own() {
        let own = event(
            "1",
            "CreateAccessKey",
            T0,
            serde_json::json!({
                "userIdentity": {"type": "IAMUser", "userName": "erin"},
                "requestParameters": null,
            }),
        );
        assert_eq!(names(&changes_of(&own).users), ["erin"]);

        // The root user's keys are not a user's: GetAccountSummary tells of them.
        let root = event(
            "2",
            "CreateAccessKey",
            T0,
            serde_json::json!({"userIdentity": {"type": "Root"}}),
        );
        assert!(changes_of(&root).is_empty());

        // A key change the feed cannot place makes it list everyone.
        let unplaced = event("3", "DeleteAccessKey", T0, serde_json::json!({}));
        assert!(changes_of(&unplaced).everyone);
        let unreadable = Event {
            detail: Some("not json".into()),
            ..unplaced
        };
        assert!(changes_of(&unreadable).everyone);
    }

    #[test]
    fn failed_calls_and_reads_change_nothing() {
        let failed = event(
            "1",
            "DeleteUser",
            T0,
            serde_json::json!({"errorCode": "DeleteConflict", "requestParameters": {"userName": "frank"}}),
        );
        assert!(changes_of(&failed).is_empty());
        let read = Event {
            read_only: true,
            ..on_user("ListAccessKeys", "frank")
        };
        assert!(changes_of(&read).is_empty());
    }

    #[test]
    fn an_event_seen_in_the_overlap_is_applied_once() {
        let overlap = Duration::from_secs(900);
        let mut feed = ChangeFeed::default();
        assert!(feed.window(at(T0), overlap).is_none(), "no place to start");
        feed.restart(at(T0));
        // The first poll looks back `overlap` before the whole list's start.
        assert_eq!(
            feed.window(at(T0 + 300), overlap),
            Some((at(T0 - 900), at(T0 + 300)))
        );

        let created = Event {
            time: at(T0 + 100),
            ..on_user("CreateAccessKey", "alice")
        };
        let changes = apply(
            &mut feed,
            std::slice::from_ref(&created),
            at(T0 + 300),
            overlap,
        );
        assert_eq!(names(&changes.users), ["alice"]);
        assert_eq!(
            feed.window(at(T0 + 600), overlap),
            Some((at(T0 + 300 - 900), at(T0 + 600)))
        );
        // The next poll's window holds it again: already applied.
        let late = Event {
            id: "late".into(),
            time: at(T0 + 200),
            ..on_user("DeleteAccessKey", "bob")
        };
        let changes = apply(&mut feed, &[created, late], at(T0 + 600), overlap);
        assert_eq!(
            names(&changes.users),
            ["bob"],
            "an event delivered late is found"
        );
    }

    #[test]
    fn events_older_than_a_whole_list_are_already_in_it() {
        let overlap = Duration::from_secs(900);
        let mut feed = ChangeFeed::default();
        feed.restart(at(T0));
        let before = Event {
            time: at(T0 - 600),
            ..on_user("CreateAccessKey", "alice")
        };
        let just_before = Event {
            id: "just".into(),
            time: at(T0 - 10),
            ..on_user("CreateAccessKey", "bob")
        };
        let changes = apply(&mut feed, &[before, just_before], at(T0 + 300), overlap);
        // Within the margin of IAM's consistency, an event is applied to be safe.
        assert_eq!(names(&changes.users), ["bob"]);
    }

    #[test]
    fn seen_ids_are_forgotten_once_no_window_can_return_them() {
        let overlap = Duration::from_secs(900);
        let mut feed = ChangeFeed::default();
        feed.restart(at(T0));
        let events: Vec<Event> = (0..100)
            .map(|i| Event {
                id: format!("e{i}"),
                time: at(T0 + i),
                ..on_user("CreateAccessKey", "alice")
            })
            .collect();
        apply(&mut feed, &events, at(T0 + 300), overlap);
        assert_eq!(feed.seen.len(), 100);
        apply(&mut feed, &[], at(T0 + 100 + 901), overlap);
        assert!(feed.seen.is_empty());
    }

    #[test]
    fn a_poll_not_committed_is_read_again() {
        let overlap = Duration::from_secs(900);
        let mut feed = ChangeFeed::default();
        feed.restart(at(T0));
        let created = Event {
            time: at(T0 + 100),
            ..on_user("CreateAccessKey", "alice")
        };
        // The refresh that read it failed: the next poll asks for the same window and
        // finds the event again.
        let lost = feed.read(std::slice::from_ref(&created), at(T0 + 300));
        assert_eq!(names(&lost.changes.users), ["alice"]);
        assert_eq!(
            feed.window(at(T0 + 600), overlap),
            Some((at(T0 - 900), at(T0 + 600)))
        );
        let again = apply(&mut feed, &[created], at(T0 + 600), overlap);
        assert_eq!(names(&again.users), ["alice"]);
    }
}
