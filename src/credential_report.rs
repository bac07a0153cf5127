//! The IAM credential report: parsing its CSV (as GetCredentialReport returns it, or as
//! downloaded from the console or the CLI) into plain data. Pure: no I/O, no AWS types.
//!
//! The report names keys by slot (1 and 2), not by id. `access_key_N_last_rotated` is the
//! key's CreateDate; a slot whose `last_rotated` is `N/A` holds no key.

use std::collections::HashMap;
use std::time::SystemTime;

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use base64::Engine;

use crate::inventory::{AccessKey, AccountFacts, Inventory, KeyStatus, LastUse, Login, User};

/// The report's name for the account's root user.
pub const ROOT_USER: &str = "<root_account>";

/// The 22 columns of the report, in AWS's order. Columns are found by name, so a report
/// with more columns (or another order) still parses; a missing one is an error.
const COLUMNS: [&str; 22] = [
    "user",
    "arn",
    "user_creation_time",
    "password_enabled",
    "password_last_used",
    "password_last_changed",
    "password_next_rotation",
    "mfa_active",
    "access_key_1_active",
    "access_key_1_last_rotated",
    "access_key_1_last_used_date",
    "access_key_1_last_used_region",
    "access_key_1_last_used_service",
    "access_key_2_active",
    "access_key_2_last_rotated",
    "access_key_2_last_used_date",
    "access_key_2_last_used_region",
    "access_key_2_last_used_service",
    "cert_1_active",
    "cert_1_last_rotated",
    "cert_2_active",
    "cert_2_last_rotated",
];

#[derive(Debug, Clone, PartialEq)]
pub struct ReportRow {
    pub user: String,
    pub arn: String,
    pub user_creation_time: Option<SystemTime>,
    /// `None` for the root user, whose report says `not_supported`.
    pub password_enabled: Option<bool>,
    /// `None` when the password was never used (`no_information`) or does not exist.
    pub password_last_used: Option<SystemTime>,
    pub mfa_active: Option<bool>,
    /// Slots 1 and 2, in that order.
    pub keys: [Option<ReportKey>; 2],
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReportKey {
    pub active: bool,
    /// The key's CreateDate.
    pub last_rotated: SystemTime,
    pub last_used: Option<SystemTime>,
    /// As the report says: a region, `N/A`, or `not_supported`.
    pub last_used_region: String,
    pub last_used_service: String,
}

impl ReportRow {
    pub fn is_root(&self) -> bool {
        self.user == ROOT_USER
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReportError {
    #[error("credential report is not valid base64: {0}")]
    Base64(String),
    #[error("credential report is not CSV: {0}")]
    Csv(String),
    #[error("credential report has no column {0:?}")]
    MissingColumn(&'static str),
    #[error("credential report line {line}, column {column}: unexpected value {value:?}")]
    BadValue {
        line: u64,
        column: &'static str,
        value: String,
    },
}

/// Report bytes as a person may have saved them: the CSV itself (console download, or
/// the SDK's already-decoded content), or the base64 text that
/// `aws iam get-credential-report --query Content --output text` prints.
pub fn decode(bytes: &[u8]) -> Result<Vec<u8>, ReportError> {
    let trimmed = bytes.trim_ascii();
    if trimmed.starts_with(b"user,") || trimmed.starts_with(b"\"user\",") {
        return Ok(bytes.to_vec());
    }
    let compact: Vec<u8> = trimmed
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| ReportError::Base64(e.to_string()))
}

/// Parses the CSV of a credential report.
pub fn parse(csv_bytes: &[u8]) -> Result<Vec<ReportRow>, ReportError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(csv_bytes);
    let headers = reader
        .headers()
        .map_err(|e| ReportError::Csv(e.to_string()))?
        .clone();
    let positions: HashMap<&str, usize> = headers.iter().enumerate().map(|(i, h)| (h, i)).collect();
    let mut index = [0usize; COLUMNS.len()];
    for (slot, column) in index.iter_mut().zip(COLUMNS) {
        *slot = *positions
            .get(column)
            .ok_or(ReportError::MissingColumn(column))?;
    }

    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| ReportError::Csv(e.to_string()))?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |column: usize| -> Field<'_> {
            Field {
                line,
                column: COLUMNS[column],
                value: record.get(index[column]).unwrap_or(""),
            }
        };
        let key = |first: usize| -> Result<Option<ReportKey>, ReportError> {
            let Some(last_rotated) = field(first + 1).timestamp()? else {
                return Ok(None);
            };
            Ok(Some(ReportKey {
                active: field(first).flag()?.unwrap_or(false),
                last_rotated,
                last_used: field(first + 2).timestamp()?,
                last_used_region: field(first + 3).value.to_string(),
                last_used_service: field(first + 4).value.to_string(),
            }))
        };
        let user = field(0).value.to_string();
        if user.is_empty() {
            return Err(field(0).bad());
        }
        rows.push(ReportRow {
            user,
            arn: field(1).value.to_string(),
            user_creation_time: field(2).timestamp()?,
            password_enabled: field(3).flag()?,
            password_last_used: field(4).timestamp()?,
            mfa_active: field(7).flag()?,
            keys: [key(8)?, key(13)?],
        });
    }
    Ok(rows)
}

/// True for the words the report uses for "no value": `N/A`, `not_supported`,
/// `no_information`.
pub fn is_absent(value: &str) -> bool {
    matches!(value, "N/A" | "not_supported" | "no_information")
}

/// A key's label when only its slot is known: `slot1` or `slot2`.
pub fn slot_id(slot: usize) -> String {
    format!("slot{}", slot + 1)
}

impl ReportKey {
    /// The key as the rest of the exporter sees it, named `id`.
    pub fn to_access_key(&self, id: String) -> AccessKey {
        AccessKey {
            id,
            status: if self.active {
                KeyStatus::Active
            } else {
                KeyStatus::Inactive
            },
            created: self.last_rotated,
            last_used: self.last_used.map(|at| LastUse {
                at,
                service: self.last_used_service.clone(),
                region: self.last_used_region.clone(),
            }),
        }
    }
}

impl ReportRow {
    pub fn login(&self) -> Login {
        Login {
            mfa_active: self.mfa_active,
            password_enabled: self.password_enabled,
            password_last_used: self.password_last_used,
        }
    }

    /// The row as a user whose keys are named by slot.
    pub fn to_user_by_slot(&self) -> User {
        User {
            name: self.user.clone(),
            arn: self.arn.clone(),
            keys: self
                .keys
                .iter()
                .enumerate()
                .filter_map(|(slot, key)| key.as_ref().map(|k| k.to_access_key(slot_id(slot))))
                .collect(),
            login: Some(self.login()),
        }
    }
}

/// An inventory from the report alone: every key named by its slot, the root user's keys
/// included, and `root_access_keys_present` from the root row.
pub fn inventory_by_slot(
    rows: &[ReportRow],
    account_id: String,
    generated_at: Option<SystemTime>,
    collected_at: SystemTime,
) -> Inventory {
    let root = rows
        .iter()
        .find(|r| r.is_root())
        .map(ReportRow::to_user_by_slot);
    Inventory {
        account_id,
        collected_at,
        users: rows
            .iter()
            .filter(|r| !r.is_root())
            .map(ReportRow::to_user_by_slot)
            .collect(),
        account: AccountFacts {
            root_access_keys_present: root.as_ref().map(|r| !r.keys.is_empty()),
            root,
            report_generated_at: generated_at,
        },
    }
}

/// The account id in an ARN (`arn:aws:iam::123456789012:user/x`), for a report read from
/// a file, which says nothing else about its account.
pub fn account_of(arn: &str) -> Option<&str> {
    let account = arn.split(':').nth(4)?;
    (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())).then_some(account)
}

struct Field<'a> {
    line: u64,
    column: &'static str,
    value: &'a str,
}

impl Field<'_> {
    fn bad(&self) -> ReportError {
        ReportError::BadValue {
            line: self.line,
            column: self.column,
            value: self.value.chars().take(100).collect(),
        }
    }

    fn is_absent(&self) -> bool {
        is_absent(self.value)
    }

    fn timestamp(&self) -> Result<Option<SystemTime>, ReportError> {
        if self.is_absent() {
            return Ok(None);
        }
        DateTime::from_str(self.value, Format::DateTimeWithOffset)
            .ok()
            .and_then(|t| SystemTime::try_from(t).ok())
            .map(Some)
            .ok_or_else(|| self.bad())
    }

    fn flag(&self) -> Result<Option<bool>, ReportError> {
        match self.value {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            _ if self.is_absent() => Ok(None),
            _ => Err(self.bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const HEADER: &str = "user,arn,user_creation_time,password_enabled,password_last_used,password_last_changed,password_next_rotation,mfa_active,access_key_1_active,access_key_1_last_rotated,access_key_1_last_used_date,access_key_1_last_used_region,access_key_1_last_used_service,access_key_2_active,access_key_2_last_rotated,access_key_2_last_used_date,access_key_2_last_used_region,access_key_2_last_used_service,cert_1_active,cert_1_last_rotated,cert_2_active,cert_2_last_rotated";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn report(rows: &[&str]) -> String {
        let mut text = format!("{HEADER}\n");
        for row in rows {
            text.push_str(row);
            text.push('\n');
        }
        text
    }

    const ROOT: &str = "<root_account>,arn:aws:iam::123456789012:root,2020-01-01T00:00:00+00:00,not_supported,2026-11-01T10:00:00+00:00,not_supported,not_supported,true,true,2021-03-04T05:06:07+00:00,N/A,N/A,N/A,false,N/A,N/A,N/A,N/A,false,N/A,false,N/A";
    const ALICE: &str = "alice,arn:aws:iam::123456789012:user/eng/alice,2022-01-01T00:00:00+00:00,true,no_information,2022-01-01T00:00:00+00:00,N/A,false,true,2026-01-01T00:00:00+00:00,2026-11-20T08:00:00+00:00,eu-west-1,s3,false,2024-06-01T12:00:00Z,2025-01-02T03:04:05+00:00,us-east-1,iam,false,N/A,false,N/A";
    const BOT: &str = "bot,arn:aws:iam::123456789012:user/bot,2023-05-05T05:05:05+00:00,false,N/A,N/A,N/A,false,true,2023-05-05T05:05:06+00:00,N/A,N/A,N/A,false,N/A,N/A,N/A,N/A,false,N/A,false,N/A";

    #[test]
    fn parses_every_value_form() {
        let rows = parse(report(&[ROOT, ALICE, BOT]).as_bytes()).unwrap();
        assert_eq!(rows.len(), 3);

        let root = &rows[0];
        assert!(root.is_root());
        assert_eq!(root.password_enabled, None, "not_supported");
        assert_eq!(root.password_last_used, Some(at(1_793_527_200)));
        assert_eq!(root.mfa_active, Some(true));
        let root_key = root.keys[0].as_ref().unwrap();
        assert!(root_key.active);
        assert_eq!(root_key.last_rotated, at(1_614_834_367));
        assert_eq!(root_key.last_used, None, "N/A: never used");
        assert_eq!(root.keys[1], None, "N/A last_rotated: no key in slot 2");

        let alice = &rows[1];
        assert_eq!(alice.arn, "arn:aws:iam::123456789012:user/eng/alice");
        assert_eq!(alice.password_enabled, Some(true));
        assert_eq!(alice.password_last_used, None, "no_information");
        assert_eq!(alice.mfa_active, Some(false));
        let first = alice.keys[0].as_ref().unwrap();
        assert_eq!(first.last_used, Some(at(1_795_161_600)));
        assert_eq!(
            (
                first.last_used_region.as_str(),
                first.last_used_service.as_str()
            ),
            ("eu-west-1", "s3")
        );
        let second = alice.keys[1].as_ref().unwrap();
        assert!(!second.active, "an inactive key keeps its slot");
        assert_eq!(
            second.last_rotated,
            at(1_717_243_200),
            "Z and +00:00 both parse"
        );

        let bot = &rows[2];
        assert_eq!(bot.password_enabled, Some(false));
        assert_eq!(bot.keys[0].as_ref().unwrap().last_used, None);
    }

    #[test]
    fn columns_are_found_by_name() {
        let mut columns: Vec<&str> = HEADER.split(',').collect();
        let mut fields: Vec<&str> = BOT.split(',').collect();
        columns.swap(0, 21);
        fields.swap(0, 21);
        let text = format!("{},extra\n{},x\n", columns.join(","), fields.join(","));
        let rows = parse(text.as_bytes()).unwrap();
        assert_eq!(rows[0].user, "bot");
    }

    #[test]
    fn malformed_reports_get_clear_errors() {
        let missing = HEADER.replace(",mfa_active", "");
        let row = BOT.replacen(",false,true,", ",true,", 1);
        assert_eq!(
            parse(format!("{missing}\n{row}\n").as_bytes()),
            Err(ReportError::MissingColumn("mfa_active"))
        );
        let bad_time = ALICE.replace("2026-11-20T08:00:00+00:00", "yesterday");
        assert_eq!(
            parse(report(&[ROOT, &bad_time]).as_bytes()),
            Err(ReportError::BadValue {
                line: 3,
                column: "access_key_1_last_used_date",
                value: "yesterday".into()
            })
        );
        let bad_flag = BOT.replacen(",false,", ",maybe,", 1);
        assert!(matches!(
            parse(report(&[&bad_flag]).as_bytes()),
            Err(ReportError::BadValue {
                column: "password_enabled",
                ..
            })
        ));
        let short_row = "bot,arn:aws:iam::123456789012:user/bot";
        assert!(matches!(
            parse(report(&[short_row]).as_bytes()),
            Err(ReportError::Csv(_))
        ));
        assert_eq!(parse(b""), Err(ReportError::MissingColumn("user")));
    }

    #[test]
    fn decodes_base64_as_the_cli_prints_it() {
        let csv = report(&[BOT]);
        let encoded = base64::engine::general_purpose::STANDARD.encode(&csv);
        let wrapped = format!("{}\n{}\n", &encoded[..40], &encoded[40..]);
        assert_eq!(decode(wrapped.as_bytes()).unwrap(), csv.as_bytes());
        assert_eq!(decode(csv.as_bytes()).unwrap(), csv.as_bytes());
        let truncated = &encoded[..encoded.len() - 3];
        assert!(matches!(
            decode(truncated.as_bytes()),
            Err(ReportError::Base64(_))
        ));
    }

    #[test]
    fn account_ids_come_from_arns() {
        assert_eq!(
            account_of("arn:aws:iam::123456789012:user/a/b"),
            Some("123456789012")
        );
        assert_eq!(
            account_of("arn:aws:iam::123456789012:root"),
            Some("123456789012")
        );
        assert_eq!(account_of("arn:aws:iam::12345:user/x"), None);
        assert_eq!(account_of("nonsense"), None);
    }

    /// Random damage to a valid report (flipped, dropped and inserted bytes, cut tails)
    /// must give rows or an error, never a panic. A fixed-seed xorshift keeps it repeatable.
    #[test]
    fn random_input_never_panics() {
        let valid = report(&[ROOT, ALICE, BOT]).into_bytes();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b",\"\n\r:+-TZ0123456789N/Aa_<>\xff";
        let (mut ok, mut err) = (0, 0);
        for _ in 0..10_000 {
            let mut bytes = valid.clone();
            for _ in 0..(next() % 8 + 1) {
                let at = (next() as usize) % bytes.len().max(1);
                let byte = alphabet[(next() as usize) % alphabet.len()];
                match next() % 4 {
                    0 => bytes[at] = byte,
                    1 => {
                        bytes.remove(at);
                    }
                    2 => bytes.insert(at, byte),
                    _ => bytes.truncate(at),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            match decode(&bytes).and_then(|csv| parse(&csv)) {
                Ok(_) => ok += 1,
                Err(_) => err += 1,
            }
        }
        // Both outcomes occur: the damage is neither always harmless nor always fatal.
        assert!(ok > 100 && err > 100, "ok={ok} err={err}");
    }
}
