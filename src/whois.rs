//! `iam-key-exporter whois KEY_ID`: which account owns an access key id, whether it is a
//! long-term or a temporary key, and, when the account is one the exporter watches (its
//! own, a configured role's, or one Organizations discovery would assume into), which
//! user holds it, its status, age and last use. An id whose account cannot be decoded
//! offline is still asked of STS.

use std::fmt::Write as _;
use std::time::SystemTime;

use aws_sdk_iam::error::ProvideErrorMetadata;

use crate::accounts;
use crate::config::Settings;
use crate::iam::{self, AccountLabel, AssumeRole, AwsBase, CallerIdentity, Clients};
use crate::inventory::elapsed;
use crate::metrics::ExporterMetrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `AKIA`: an IAM user's (or the root user's) access key.
    LongTerm,
    /// `ASIA`: temporary credentials from STS.
    Temporary,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub kind: KeyKind,
    pub account: OfflineAccount,
}

/// What the id says of its account, offline. STS GetAccessKeyInfo has the last word
/// either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfflineAccount {
    /// The account the id encodes. Keys made before AWS began encoding it (around 2019)
    /// decode to a number that is no account.
    Decoded(String),
    /// The id is shaped like an access key id but cannot be decoded, and why (AWS's own
    /// documentation example `AKIAI44QH8DHBEXAMPLE` has an `8`). STS is asked all the same.
    Undecodable(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WhoisError {
    #[error("{id:?} is not an access key id: {why}")]
    Malformed { id: String, why: String },
}

/// IAM's unique-id prefixes that are not access keys, to say what was given instead.
const OTHER_IDS: &[(&str, &str)] = &[
    ("AIDA", "an IAM user id"),
    ("AROA", "an IAM role id"),
    ("AGPA", "an IAM group id"),
    ("ANPA", "a managed policy id"),
    ("AIPA", "an instance profile id"),
    ("APKA", "a CloudFront key id"),
    ("ASCA", "a certificate id"),
];

/// The role through which the exporter reads `account`: a configured one, or the role
/// Organizations discovery would assume there.
fn role_for(settings: &Settings, account: &str, partition: &str) -> Option<AssumeRole> {
    let configured = accounts::configured(settings)
        .into_iter()
        .find(|t| t.account_id.as_deref() == Some(account))
        .and_then(|t| t.role);
    let orgs = &settings.organizations;
    configured.or_else(|| {
        orgs.enabled
            .then(|| accounts::discovery_role(orgs, partition, account))
    })
}

/// Reads what the id itself says, offline. Refuses only what cannot be an access key id
/// (another prefix, another length, characters no key id has); an id whose account cannot
/// be decoded is still an id to ask STS about.
pub fn decode(id: &str) -> Result<Decoded, WhoisError> {
    let malformed = |why: &str| WhoisError::Malformed {
        id: id.chars().take(32).collect(),
        why: why.to_string(),
    };
    let prefix = id.get(..4).unwrap_or(id);
    let kind = match prefix {
        "AKIA" => KeyKind::LongTerm,
        "ASIA" => KeyKind::Temporary,
        _ => {
            return Err(match OTHER_IDS.iter().find(|(p, _)| *p == prefix) {
                Some((_, what)) => malformed(&format!("it is {what}")),
                None => malformed("access key ids start with AKIA (long-term) or ASIA (temporary)"),
            });
        }
    };
    let length = id.chars().count();
    if length != 20 {
        return Err(malformed(&format!("it has {length} characters, not 20")));
    }
    let rest = &id[4..];
    if !rest
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Err(malformed(
            "access key ids are upper-case letters A-Z and digits 0-9",
        ));
    }
    // In ids that encode their account, the 16 characters after the prefix are base32:
    // 10 bytes. The account id is in bits 1 to 40 of the first 6 bytes (Aidan Steele's
    // analysis, confirmed by STS). Other ids (with 0, 1, 8 or 9) are left to STS.
    let Ok(bytes) = data_encoding::BASE32_NOPAD.decode(rest.as_bytes()) else {
        let mut outside: Vec<char> = rest
            .chars()
            .filter(|c| matches!(c, '0' | '1' | '8' | '9'))
            .collect();
        outside.sort_unstable();
        outside.dedup();
        let outside: String = outside.into_iter().collect();
        return Ok(Decoded {
            kind,
            account: OfflineAccount::Undecodable(format!(
                "characters outside base32 (A-Z, 2-7) after the prefix: {outside}"
            )),
        });
    };
    let head = bytes
        .iter()
        .take(6)
        .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte));
    let account = (head & 0x7fff_ffff_ff80) >> 7;
    Ok(Decoded {
        kind,
        account: OfflineAccount::Decoded(format!("{account:012}")),
    })
}

/// The whole answer, as lines for a person. Offline facts always; STS's and IAM's when
/// the credentials allow, with the reason when they do not.
pub async fn whois(base: &AwsBase, settings: &Settings, id: &str) -> Result<String, WhoisError> {
    let decoded = decode(id)?;
    let own = base.clients(None, AccountLabel::default()).await;
    Ok(
        answer(id, &decoded, settings, &own, base.metrics(), async |role| {
            base.clients(Some(role), AccountLabel::default()).await
        })
        .await,
    )
}

/// [`whois`] once the id is decoded, with the exporter's own clients and a way to assume
/// a watched account's role: the seam the tests drive with mocked clients.
async fn answer(
    id: &str,
    decoded: &Decoded,
    settings: &Settings,
    own: &Clients,
    metrics: &ExporterMetrics,
    assume: impl AsyncFnOnce(&AssumeRole) -> Clients,
) -> String {
    let mut out = String::new();
    let kind = match decoded.kind {
        KeyKind::LongTerm => "long-term access key (AKIA) of an IAM user or the root user",
        KeyKind::Temporary => "temporary credentials (ASIA) issued by STS",
    };
    let _ = writeln!(out, "key id:   {id}");
    let _ = writeln!(out, "kind:     {kind}");
    let Some(account) = account(&own.sts, id, &decoded.account, &mut out).await else {
        return out;
    };
    if decoded.kind == KeyKind::Temporary {
        let _ = writeln!(
            out,
            "user:     temporary credentials belong to a role session, not an IAM user"
        );
        return out;
    }

    let CallerIdentity {
        account_id: own_account,
        partition,
    } = match iam::caller_identity(&own.sts, metrics).await {
        Ok(identity) => identity,
        Err(err) => {
            let said = err.code().map_or_else(|| err.to_string(), str::to_string);
            let _ = writeln!(
                out,
                "user:     unknown: STS GetCallerIdentity failed ({said})"
            );
            return out;
        }
    };
    let role_clients;
    let clients = if own_account == account {
        own
    } else if let Some(role) = role_for(settings, &account, &partition) {
        let _ = writeln!(out, "          read through role {}", role.arn);
        role_clients = assume(&role).await;
        &role_clients
    } else {
        let _ = writeln!(
            out,
            "user:     not in the inventory of a watched account: {account} is neither the exporter's own ({own_account}) nor configured"
        );
        return out;
    };
    key_in_account(&clients.iam, id, &account, &mut out).await;
    out
}

/// The `account:` lines: what the id says offline and what STS GetAccessKeyInfo says.
/// The account to look the key up in, or `None` when neither could tell.
async fn account(
    sts: &aws_sdk_sts::Client,
    id: &str,
    offline: &OfflineAccount,
    out: &mut String,
) -> Option<String> {
    let asked = sts.get_access_key_info().access_key_id(id).send().await;
    match (offline, asked) {
        (OfflineAccount::Decoded(decoded), Ok(info)) => {
            let _ = writeln!(out, "account:  {decoded} (decoded from the id)");
            let account = info.account.unwrap_or_default();
            if account == *decoded {
                let _ = writeln!(out, "          confirmed by STS GetAccessKeyInfo");
            } else {
                let _ = writeln!(
                    out,
                    "          STS GetAccessKeyInfo says {account}; ids made before AWS encoded the account (about 2019) do not decode"
                );
            }
            Some(account)
        }
        (OfflineAccount::Decoded(decoded), Err(err)) => {
            let _ = writeln!(out, "account:  {decoded} (decoded from the id)");
            let _ = writeln!(
                out,
                "          not confirmed: STS GetAccessKeyInfo failed ({})",
                code(&err)
            );
            Some(decoded.clone())
        }
        (OfflineAccount::Undecodable(why), Ok(info)) => {
            let account = info.account.unwrap_or_default();
            let _ = writeln!(out, "account:  {account} (from STS GetAccessKeyInfo)");
            let _ = writeln!(out, "          could not be decoded offline: {why}");
            Some(account)
        }
        (OfflineAccount::Undecodable(why), Err(err)) => {
            let _ = writeln!(
                out,
                "account:  unknown: could not be decoded offline ({why}), and STS GetAccessKeyInfo failed ({})",
                code(&err)
            );
            None
        }
    }
}

/// The `user:`, `status:`, `age:` and `last use:` lines, from the IAM of the account that
/// holds the key.
async fn key_in_account(iam: &aws_sdk_iam::Client, id: &str, account: &str, out: &mut String) {
    let last_used = match iam
        .get_access_key_last_used()
        .access_key_id(id)
        .send()
        .await
    {
        Ok(output) => output,
        Err(err) if matches!(err.code(), Some("NoSuchEntity" | "AccessDenied")) => {
            let _ = writeln!(
                out,
                "user:     no such key in account {account} ({})",
                code(&err)
            );
            return;
        }
        Err(err) => {
            let _ = writeln!(
                out,
                "user:     unknown: GetAccessKeyLastUsed failed ({})",
                code(&err)
            );
            return;
        }
    };
    let Some(user) = last_used.user_name.clone() else {
        let _ = writeln!(
            out,
            "user:     the root user's key (IAM names no user for it)"
        );
        return;
    };
    let _ = writeln!(out, "user:     {user}");
    let now = SystemTime::now();
    // Every page: IAM pages ListAccessKeys like any list, however few keys a user has.
    let mut keys = iam
        .list_access_keys()
        .user_name(&user)
        .into_paginator()
        .items()
        .send();
    let found = loop {
        match keys.next().await {
            Some(Ok(key)) if key.access_key_id() == Some(id) => break Ok(Some(key)),
            Some(Ok(_)) => {}
            Some(Err(err)) => break Err(err),
            None => break Ok(None),
        }
    };
    match found {
        Ok(Some(key)) => {
            let status = key.status().map_or("unknown", |s| s.as_str());
            let _ = writeln!(out, "status:   {status}");
            if let Some(created) = key
                .create_date()
                .and_then(|t| SystemTime::try_from(*t).ok())
            {
                let _ = writeln!(
                    out,
                    "age:      {} days",
                    elapsed(created, now).as_secs() / 86_400
                );
            }
        }
        Ok(None) => {
            let _ = writeln!(
                out,
                "status:   unknown: ListAccessKeys does not list it among {user}'s keys (deleted meanwhile?)"
            );
        }
        Err(err) => {
            let _ = writeln!(
                out,
                "status:   unknown: ListAccessKeys failed ({})",
                code(&err)
            );
        }
    }
    match last_used
        .access_key_last_used()
        .and_then(|l| l.last_used_date().map(|t| (t, l)))
    {
        Some((at, used)) => {
            let days = SystemTime::try_from(*at).map_or(0, |t| elapsed(t, now).as_secs() / 86_400);
            let _ = writeln!(
                out,
                "last use: {days} days ago, {} in {}",
                used.service_name(),
                used.region()
            );
        }
        None => {
            let _ = writeln!(out, "last use: never");
        }
    }
}

fn code<E: ProvideErrorMetadata>(err: &E) -> String {
    err.code().unwrap_or("no answer").to_string()
}

#[cfg(test)]
mod tests {
    use aws_sdk_iam::operation::get_access_key_last_used::GetAccessKeyLastUsedOutput;
    use aws_sdk_iam::operation::list_access_keys::ListAccessKeysOutput;
    use aws_sdk_iam::primitives::DateTime;
    use aws_sdk_iam::types::{AccessKeyLastUsed, AccessKeyMetadata, StatusType};
    use aws_sdk_sts::operation::get_access_key_info::GetAccessKeyInfoOutput;
    use aws_sdk_sts::operation::get_caller_identity::GetCallerIdentityOutput;
    use aws_smithy_mocks::{MockResponseInterceptor, Rule, RuleMode, mock, mock_client};
    use aws_smithy_runtime_api::http::{Response as HttpResponse, StatusCode};
    use aws_smithy_types::body::SdkBody;

    use super::*;

    const ACCOUNT: &str = "123456789012";
    const DAY: i64 = 86_400;

    /// Clients answering only `iam` and `sts` rules; any other call fails.
    fn clients(iam: &[&Rule], sts: &[&Rule]) -> Clients {
        // aws-sdk-sts is built without test-util, so its mock client is put together here
        // as `mock_client!` does.
        let mut mocked = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny);
        for rule in sts {
            mocked = mocked.with_rule(rule);
        }
        let sts = aws_sdk_sts::Client::from_conf(
            aws_sdk_sts::Config::builder()
                .behavior_version_latest()
                .region(aws_sdk_sts::config::Region::from_static("us-east-1"))
                .credentials_provider(aws_sdk_sts::config::Credentials::new(
                    "AKIDTEST", "secret", None, None, "test",
                ))
                .http_client(aws_smithy_mocks::create_mock_http_client())
                .interceptor(mocked)
                .build(),
        );
        let none: &[&Rule] = &[];
        Clients {
            iam: mock_client!(aws_sdk_iam, RuleMode::MatchAny, iam),
            sts,
            cloudtrail: mock_client!(aws_sdk_cloudtrail, RuleMode::MatchAny, none),
            account: crate::iam::AccountLabel::default(),
        }
    }

    fn settings() -> Settings {
        crate::config::load(None, &[]).expect("the defaults are valid")
    }

    /// The answer for `id`, with no role ever assumed.
    async fn ask(id: &str, clients: &Clients) -> String {
        let decoded = decode(id).unwrap();
        let metrics = ExporterMetrics::new();
        answer(id, &decoded, &settings(), clients, &metrics, async |role| {
            panic!("no role should be assumed, but {} was", role.arn)
        })
        .await
    }

    fn days_ago(days: i64) -> DateTime {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        DateTime::from_secs(i64::try_from(now).unwrap() - days * DAY)
    }

    fn key(id: &str, status: StatusType, created_days_ago: i64) -> AccessKeyMetadata {
        AccessKeyMetadata::builder()
            .user_name("deploy")
            .access_key_id(id)
            .status(status)
            .create_date(days_ago(created_days_ago))
            .build()
    }

    /// STS's own rules for an id of the exporter's account `ACCOUNT`.
    fn sts_own_account(id: &'static str) -> (Rule, Rule) {
        let info = mock!(aws_sdk_sts::Client::get_access_key_info)
            .match_requests(move |r| r.access_key_id() == Some(id))
            .then_output(|| GetAccessKeyInfoOutput::builder().account(ACCOUNT).build());
        let caller = mock!(aws_sdk_sts::Client::get_caller_identity).then_output(|| {
            GetCallerIdentityOutput::builder()
                .account(ACCOUNT)
                .arn(format!("arn:aws:iam::{ACCOUNT}:user/exporter"))
                .build()
        });
        (info, caller)
    }

    /// IAM's rules for `id`, used 3 days ago by `deploy`, whose ListAccessKeys has `pages`.
    fn iam_deploy(id: &'static str, pages: Vec<Vec<AccessKeyMetadata>>) -> (Rule, Vec<Rule>) {
        let used = mock!(aws_sdk_iam::Client::get_access_key_last_used)
            .match_requests(move |r| r.access_key_id() == Some(id))
            .then_output(|| {
                GetAccessKeyLastUsedOutput::builder()
                    .user_name("deploy")
                    .access_key_last_used(
                        AccessKeyLastUsed::builder()
                            .last_used_date(days_ago(3))
                            .service_name("s3")
                            .region("eu-west-1")
                            .build()
                            .unwrap(),
                    )
                    .build()
            });
        let count = pages.len();
        let pages = pages
            .into_iter()
            .enumerate()
            .map(|(n, keys)| {
                // Page n answers the marker page n left, and leaves one unless it is last.
                let marker = (n > 0).then(|| format!("page-{n}"));
                let page = ListAccessKeysOutput::builder()
                    .set_access_key_metadata(Some(keys))
                    .is_truncated(n + 1 < count)
                    .set_marker((n + 1 < count).then(|| format!("page-{}", n + 1)))
                    .build()
                    .unwrap();
                mock!(aws_sdk_iam::Client::list_access_keys)
                    .match_requests(move |r| {
                        r.user_name() == Some("deploy") && r.marker() == marker.as_deref()
                    })
                    .then_output(move || page.clone())
            })
            .collect();
        (used, pages)
    }

    #[tokio::test]
    async fn a_key_on_the_second_page_of_list_access_keys_is_reported() {
        const ID: &str = "AKIARZPUZDIKPOWW2JDT";
        let (info, caller) = sts_own_account(ID);
        let (used, pages) = iam_deploy(
            ID,
            vec![
                vec![key("AKIARZPUZDIKAAAAAAAA", StatusType::Active, 10)],
                vec![key(ID, StatusType::Inactive, 400)],
            ],
        );
        let mut iam: Vec<&Rule> = pages.iter().collect();
        iam.push(&used);
        let text = ask(ID, &clients(&iam, &[&info, &caller])).await;
        assert_eq!(
            text,
            "key id:   AKIARZPUZDIKPOWW2JDT\n\
             kind:     long-term access key (AKIA) of an IAM user or the root user\n\
             account:  123456789012 (decoded from the id)\n\
             \x20         confirmed by STS GetAccessKeyInfo\n\
             user:     deploy\n\
             status:   Inactive\n\
             age:      400 days\n\
             last use: 3 days ago, s3 in eu-west-1\n"
        );
        for (rule, calls) in [
            (&info, 1),
            (&caller, 1),
            (&used, 1),
            (&pages[0], 1),
            (&pages[1], 1),
        ] {
            assert_eq!(rule.num_calls(), calls);
        }
    }

    #[tokio::test]
    async fn a_key_on_no_page_says_so() {
        const ID: &str = "AKIARZPUZDIKPOWW2JDT";
        let (info, caller) = sts_own_account(ID);
        let (used, pages) = iam_deploy(
            ID,
            vec![
                vec![key("AKIARZPUZDIKAAAAAAAA", StatusType::Active, 10)],
                vec![],
            ],
        );
        let mut iam: Vec<&Rule> = pages.iter().collect();
        iam.push(&used);
        let text = ask(ID, &clients(&iam, &[&info, &caller])).await;
        assert!(
            text.contains(
                "user:     deploy\n\
                 status:   unknown: ListAccessKeys does not list it among deploy's keys (deleted meanwhile?)\n\
                 last use: 3 days ago"
            ),
            "{text}"
        );
        assert_eq!((pages[0].num_calls(), pages[1].num_calls()), (1, 1));
    }

    #[tokio::test]
    async fn an_id_outside_base32_is_asked_of_sts() {
        // AWS's documentation example.
        const ID: &str = "AKIAI44QH8DHBEXAMPLE";
        let (info, caller) = sts_own_account(ID);
        let (used, pages) = iam_deploy(ID, vec![vec![key(ID, StatusType::Active, 30)]]);
        let text = ask(ID, &clients(&[&used, &pages[0]], &[&info, &caller])).await;
        assert_eq!(
            text,
            "key id:   AKIAI44QH8DHBEXAMPLE\n\
             kind:     long-term access key (AKIA) of an IAM user or the root user\n\
             account:  123456789012 (from STS GetAccessKeyInfo)\n\
             \x20         could not be decoded offline: characters outside base32 (A-Z, 2-7) after the prefix: 8\n\
             user:     deploy\n\
             status:   Active\n\
             age:      30 days\n\
             last use: 3 days ago, s3 in eu-west-1\n"
        );
        assert_eq!(info.num_calls(), 1);
    }

    #[tokio::test]
    async fn an_id_outside_base32_that_sts_will_not_place_is_unknown() {
        const ID: &str = "AKIAI44QH8DHBEXAMPLE";
        let denied = mock!(aws_sdk_sts::Client::get_access_key_info)
            .match_requests(|r| r.access_key_id() == Some(ID))
            .then_http_response(|| {
                HttpResponse::new(
                    StatusCode::try_from(403).unwrap(),
                    SdkBody::from(
                        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
                         <Error><Type>Sender</Type><Code>AccessDenied</Code><Message>no</Message>\
                         </Error><RequestId>r</RequestId></ErrorResponse>",
                    ),
                )
            });
        // Nothing else is asked: with no account there is nowhere to look the key up.
        let text = ask(ID, &clients(&[], &[&denied])).await;
        assert_eq!(
            text,
            "key id:   AKIAI44QH8DHBEXAMPLE\n\
             kind:     long-term access key (AKIA) of an IAM user or the root user\n\
             account:  unknown: could not be decoded offline (characters outside base32 (A-Z, 2-7) after the prefix: 8), and STS GetAccessKeyInfo failed (AccessDenied)\n"
        );
        assert_eq!(denied.num_calls(), 1);
    }

    #[test]
    fn decodes_the_account_and_kind() {
        // The example of Aidan Steele's analysis, confirmed there by STS.
        assert_eq!(
            decode("ASIAY34FZKBOKMUTVV7A"),
            Ok(Decoded {
                kind: KeyKind::Temporary,
                account: OfflineAccount::Decoded("609629065308".into())
            })
        );
        // Ids made by moto's generator for known accounts (an independent encoder).
        for (id, account) in [
            ("AKIARZPUZDIKPOWW2JDT", "123456789012"),
            ("AKIATCH6YDSY3BIXOXTN", "210987654321"),
            ("AKIAQAAAAAAA46DSIFUS", "000000000001"),
        ] {
            assert_eq!(
                decode(id),
                Ok(Decoded {
                    kind: KeyKind::LongTerm,
                    account: OfflineAccount::Decoded(account.into())
                })
            );
        }
    }

    #[test]
    fn malformed_ids_say_what_is_wrong() {
        let why = |id: &str| match decode(id) {
            Err(WhoisError::Malformed { why, .. }) => why,
            Ok(d) => panic!("{id} decoded as {d:?}"),
        };
        assert_eq!(why("AIDAJQABLZS4A3QDU576Q"), "it is an IAM user id");
        assert_eq!(why("AROA1234567890ABCDEF"), "it is an IAM role id");
        assert!(why("XKIARZPUZDIKPOWW2JDT").contains("start with AKIA"));
        assert_eq!(why("AKIARZPUZDIK"), "it has 12 characters, not 20");
        assert_eq!(why("AKIARZPUZDIKPOWW2JDTÄ"), "it has 21 characters, not 20");
        assert!(why("AKIArzpuzdikpoww2jdt").contains("upper-case letters A-Z and digits 0-9"));
        assert!(why("AKIARZPUZDIK-OWW2JDT").contains("upper-case letters A-Z and digits 0-9"));
        assert!(why("AKIARZPUZDIKPOWW2JDÄ").contains("upper-case letters A-Z and digits 0-9"));
        assert!(why("").contains("start with AKIA"));
    }

    #[test]
    fn ids_outside_base32_are_left_to_sts() {
        // AWS's documentation example: shaped like a key id, but `8` is no base32 digit.
        for (id, kind, outside) in [
            ("AKIAI44QH8DHBEXAMPLE", KeyKind::LongTerm, "8"),
            ("ASIARZPUZDIKPOWW2J91", KeyKind::Temporary, "19"),
            ("AKIA0000000000000000", KeyKind::LongTerm, "0"),
        ] {
            assert_eq!(
                decode(id),
                Ok(Decoded {
                    kind,
                    account: OfflineAccount::Undecodable(format!(
                        "characters outside base32 (A-Z, 2-7) after the prefix: {outside}"
                    ))
                }),
                "{id}"
            );
        }
    }
}
