//! HTTP basic authentication against bcrypt hashes (exporter-toolkit's `basic_auth_users`),
//! with successful checks remembered, because bcrypt is slow on purpose.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use base64::Engine;
use hyper::header::HeaderValue;

/// Verified credentials remembered at most; past it the memory starts again. A password
/// longer than bcrypt's 72 bytes verifies with any suffix, so without a bound one user
/// who knows a password could grow the set without end.
const VERIFIED_MAX: usize = 1024;

/// The users of one loaded web configuration. A new configuration starts a new cache.
#[derive(Debug)]
pub struct BasicAuth {
    /// User name -> bcrypt hash, each checked by [`check_hash`] when loaded.
    users: HashMap<String, String>,
    /// SHA-256 of (user, hash, password) for each check that succeeded: a repeated scrape
    /// costs a hash, not a bcrypt. The password itself is never kept.
    verified: Mutex<HashSet<[u8; 32]>>,
    /// One bcrypt at a time, as in exporter-toolkit: a flood of wrong passwords costs one
    /// core at most, and concurrent scrapes with the same new password wait for the
    /// first check instead of each running their own.
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// Why a configured hash cannot be used; said when the file is loaded, not at every login.
pub fn check_hash(hash: &str) -> Result<(), String> {
    let parts: bcrypt::HashParts = hash
        .parse()
        .map_err(|err| format!("not a bcrypt hash: {err}"))?;
    // The crate parses any two digits, but bcrypt itself takes costs 4 to 31 only.
    if !(4..=31).contains(&parts.get_cost()) {
        return Err(format!(
            "bcrypt cost {} is outside 4 to 31",
            parts.get_cost()
        ));
    }
    Ok(())
}

impl BasicAuth {
    /// `users` maps names to bcrypt hashes that passed [`check_hash`]; it must not be empty.
    pub fn new(users: HashMap<String, String>) -> BasicAuth {
        BasicAuth {
            users,
            verified: Mutex::new(HashSet::new()),
            turn: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Whether an `Authorization` header names a configured user and that user's password.
    pub async fn allows(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some((user, password)) = authorization.and_then(credentials) else {
            return false;
        };
        let known = self.users.get(&user);
        // An unknown user is checked against another user's hash all the same, so that the
        // time of the answer does not tell which user names exist.
        let Some(hash) = known.or_else(|| self.users.values().next()).cloned() else {
            return false;
        };
        let digest = digest(&user, &hash, &password);
        if known.is_some() && self.was_verified(&digest) {
            return true;
        }
        let turn = self.turn.clone().lock_owned().await;
        // Another request may have verified the same credentials while this one waited.
        if known.is_some() && self.was_verified(&digest) {
            return true;
        }
        // The turn travels with the computation: a request dropped while it runs does not
        // let a second bcrypt start beside it.
        let matched = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            bcrypt::verify(&password, &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        let allowed = known.is_some() && matched;
        if allowed {
            let mut verified = self.verified.lock().expect("never poisoned");
            if verified.len() >= VERIFIED_MAX {
                verified.clear();
            }
            verified.insert(digest);
        }
        allowed
    }

    fn was_verified(&self, digest: &[u8; 32]) -> bool {
        self.verified
            .lock()
            .expect("never poisoned")
            .contains(digest)
    }
}

/// The user and password of `Basic <base64(user:password)>`. The password stays bytes: a
/// client may send any, and bcrypt takes bytes.
fn credentials(header: &HeaderValue) -> Option<(String, Vec<u8>)> {
    let value = header.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// The cache key of a successful check. The hash is part of it, so a changed hash never
/// matches an old entry; lengths come first so that no two triples run together alike.
fn digest(user: &str, hash: &str, password: &[u8]) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [user.as_bytes(), hash.as_bytes(), password] {
        context.update(&(part.len() as u64).to_le_bytes());
        context.update(part);
    }
    context
        .finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bcrypt of "secret" at the lowest cost, to keep the tests fast.
    fn hash_of_secret() -> String {
        bcrypt::hash("secret", 4).unwrap()
    }

    fn header(user: &str, password: &str) -> HeaderValue {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap()
    }

    fn auth() -> BasicAuth {
        BasicAuth::new(HashMap::from([("alice".to_string(), hash_of_secret())]))
    }

    #[tokio::test]
    async fn only_the_right_password_of_a_known_user_is_allowed() {
        let auth = auth();
        assert!(auth.allows(Some(&header("alice", "secret"))).await);
        assert!(!auth.allows(Some(&header("alice", "wrong"))).await);
        assert!(!auth.allows(Some(&header("bob", "secret"))).await);
        assert!(!auth.allows(None).await);
        let bearer = HeaderValue::from_static("Bearer c2VjcmV0");
        assert!(!auth.allows(Some(&bearer)).await);
        let no_colon = HeaderValue::from_static("Basic YWxpY2U=");
        assert!(!auth.allows(Some(&no_colon)).await);
    }

    #[tokio::test]
    async fn a_success_is_remembered_by_digest_and_a_failure_is_not() {
        let auth = auth();
        assert!(!auth.allows(Some(&header("alice", "wrong"))).await);
        assert!(auth.verified.lock().unwrap().is_empty());
        assert!(auth.allows(Some(&header("alice", "secret"))).await);
        let remembered = auth.verified.lock().unwrap().clone();
        let expected = digest("alice", &auth.users["alice"], b"secret");
        assert_eq!(remembered, HashSet::from([expected]));
        // The second check is answered from memory: it succeeds without its turn.
        let _held = auth.turn.clone().lock_owned().await;
        assert!(auth.allows(Some(&header("alice", "secret"))).await);
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_the_password_may_hold_colons() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice:a:b");
        let value = HeaderValue::from_str(&format!("basic {encoded}")).unwrap();
        assert_eq!(
            credentials(&value),
            Some(("alice".to_string(), b"a:b".to_vec()))
        );
    }

    #[test]
    fn hashes_are_checked_when_loaded() {
        assert_eq!(check_hash(&hash_of_secret()), Ok(()));
        // htpasswd -B writes the 2y variant.
        let apache = hash_of_secret().replacen("$2b$", "$2y$", 1);
        assert_eq!(check_hash(&apache), Ok(()));
        assert!(
            check_hash("secret")
                .unwrap_err()
                .contains("not a bcrypt hash")
        );
        let cost_99 = hash_of_secret().replacen("$04$", "$99$", 1);
        assert!(check_hash(&cost_99).unwrap_err().contains("cost 99"));
    }
}
