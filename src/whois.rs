//! `iam-key-exporter whois KEY_ID`: which account owns an access key id, whether it is a
//! long-term or a temporary key, and, when the account is one the exporter watches (its
//! own, a configured role's, or one Organizations discovery would assume into), which
//! user holds it, its status, age and last use.

use std::fmt::Write as _;
use std::time::SystemTime;

use aws_sdk_iam::error::ProvideErrorMetadata;

use crate::accounts;
use crate::config::Settings;
use crate::iam::{self, AssumeRole, AwsBase, CallerIdentity};
use crate::inventory::elapsed;

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
    /// The account the id encodes. Keys made before AWS began encoding it (around 2019)
    /// decode to a number that is no account: STS has the last word.
    pub account_id: String,
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

/// Reads what the id itself says, offline.
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
    if id.len() != 20 {
        return Err(malformed(&format!(
            "it has {} characters, not 20",
            id.len()
        )));
    }
    // The 16 characters after the prefix are base32: 10 bytes. The account id is in
    // bits 1 to 40 of the first 6 bytes (Aidan Steele's analysis, confirmed by STS).
    let bytes = data_encoding::BASE32_NOPAD
        .decode(&id.as_bytes()[4..])
        .map_err(|_| malformed("after the prefix only A-Z and 2-7 may follow"))?;
    let head = bytes
        .iter()
        .take(6)
        .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte));
    let account = (head & 0x7fff_ffff_ff80) >> 7;
    Ok(Decoded {
        kind,
        account_id: format!("{account:012}"),
    })
}

/// The whole answer, as lines for a person. Offline facts always; STS's and IAM's when
/// the credentials allow, with the reason when they do not.
pub async fn whois(base: &AwsBase, settings: &Settings, id: &str) -> Result<String, WhoisError> {
    let decoded = decode(id)?;
    let clients = &base.clients(None).await;
    let mut out = String::new();
    let kind = match decoded.kind {
        KeyKind::LongTerm => "long-term access key (AKIA) of an IAM user or the root user",
        KeyKind::Temporary => "temporary credentials (ASIA) issued by STS",
    };
    let _ = writeln!(out, "key id:   {id}");
    let _ = writeln!(out, "kind:     {kind}");
    let _ = writeln!(
        out,
        "account:  {} (decoded from the id)",
        decoded.account_id
    );

    let account = match clients
        .sts
        .get_access_key_info()
        .access_key_id(id)
        .send()
        .await
    {
        Ok(info) => {
            let account = info.account.unwrap_or_default();
            if account == decoded.account_id {
                let _ = writeln!(out, "          confirmed by STS GetAccessKeyInfo");
            } else {
                let _ = writeln!(
                    out,
                    "          STS GetAccessKeyInfo says {account}; ids made before AWS encoded the account (about 2019) do not decode"
                );
            }
            account
        }
        Err(err) => {
            let _ = writeln!(
                out,
                "          not confirmed: STS GetAccessKeyInfo failed ({})",
                code(&err)
            );
            decoded.account_id.clone()
        }
    };
    if decoded.kind == KeyKind::Temporary {
        let _ = writeln!(
            out,
            "user:     temporary credentials belong to a role session, not an IAM user"
        );
        return Ok(out);
    }

    let CallerIdentity {
        account_id: own,
        partition,
    } = match iam::caller_identity(&clients.sts, base.metrics()).await {
        Ok(identity) => identity,
        Err(err) => {
            let said = err.code().map_or_else(|| err.to_string(), str::to_string);
            let _ = writeln!(
                out,
                "user:     unknown: STS GetCallerIdentity failed ({said})"
            );
            return Ok(out);
        }
    };
    let role_clients;
    let clients = if own == account {
        clients
    } else if let Some(role) = role_for(settings, &account, &partition) {
        let _ = writeln!(out, "          read through role {}", role.arn);
        role_clients = base.clients(Some(&role)).await;
        &role_clients
    } else {
        let _ = writeln!(
            out,
            "user:     not in the inventory of a watched account: {account} is neither the exporter's own ({own}) nor configured"
        );
        return Ok(out);
    };
    let last_used = match clients
        .iam
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
            return Ok(out);
        }
        Err(err) => {
            let _ = writeln!(
                out,
                "user:     unknown: GetAccessKeyLastUsed failed ({})",
                code(&err)
            );
            return Ok(out);
        }
    };
    let Some(user) = last_used.user_name.clone() else {
        let _ = writeln!(
            out,
            "user:     the root user's key (IAM names no user for it)"
        );
        return Ok(out);
    };
    let _ = writeln!(out, "user:     {user}");
    let now = SystemTime::now();
    match clients.iam.list_access_keys().user_name(&user).send().await {
        Ok(keys) => {
            if let Some(key) = keys
                .access_key_metadata()
                .iter()
                .find(|k| k.access_key_id() == Some(id))
            {
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
    Ok(out)
}

fn code<E: ProvideErrorMetadata>(err: &E) -> String {
    err.code().unwrap_or("no answer").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_account_and_kind() {
        // The example of Aidan Steele's analysis, confirmed there by STS.
        assert_eq!(
            decode("ASIAY34FZKBOKMUTVV7A"),
            Ok(Decoded {
                kind: KeyKind::Temporary,
                account_id: "609629065308".into()
            })
        );
        // Ids made by moto's generator for known accounts (an independent encoder).
        for (id, account) in [
            ("AKIARZPUZDIKPOWW2JDT", "123456789012"),
            ("AKIATCH6YDSY3BIXOXTN", "210987654321"),
            ("AKIAQAAAAAAA46DSIFUS", "000000000001"),
        ] {
            let decoded = decode(id).unwrap();
            assert_eq!(
                (decoded.kind, decoded.account_id.as_str()),
                (KeyKind::LongTerm, account)
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
        assert!(why("AKIArzpuzdikpoww2jdt").contains("A-Z and 2-7"));
        assert!(why("AKIARZPUZDIKPOWW2JD1").contains("A-Z and 2-7"));
        assert!(why("").contains("start with AKIA"));
    }
}
