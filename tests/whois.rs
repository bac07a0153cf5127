//! `iam-key-exporter whois` against moto: the owning account decoded and confirmed, and
//! for a key of the exporter's account its user, status, age and last use; an id that
//! cannot be decoded offline is still asked of STS.

mod common;

use common::*;

fn whois(endpoint: &str, key_id: &str) -> std::process::Output {
    run_whois(endpoint, (TEST_ACCESS_KEY, TEST_SECRET), &[], key_id)
}

#[test]
fn a_key_of_the_account_is_traced_to_its_user() {
    let Some(moto) = Moto::start(&root().join("tests/peers/sample-inventory.json")) else {
        return;
    };
    let account = moto.seeded["account_id"].as_str().unwrap();
    for user in moto.seeded["users"].as_array().unwrap() {
        for key in user["keys"].as_array().unwrap() {
            let id = key["access_key_id"].as_str().unwrap();
            let output = whois(&moto.endpoint, id);
            assert!(output.status.success(), "{output:?}");
            let text = String::from_utf8(output.stdout).unwrap();
            let days = |t: f64| ((now_secs() - t) / 86_400.0).floor() as u64;
            assert!(
                text.contains(&format!(
                    "account:  {account} (decoded from the id)\n          confirmed by STS"
                )),
                "{text}"
            );
            assert!(
                text.contains("kind:     long-term access key (AKIA)"),
                "{text}"
            );
            assert!(
                text.contains(&format!("user:     {}\n", user["name"].as_str().unwrap())),
                "{text}"
            );
            assert!(
                text.contains(&format!("status:   {}\n", key["status"].as_str().unwrap())),
                "{text}"
            );
            assert!(
                text.contains(&format!(
                    "age:      {} days\n",
                    days(key["create_date"].as_f64().unwrap())
                )),
                "{text}"
            );
            match key["last_used_date"].as_f64() {
                Some(at) => assert!(
                    text.contains(&format!(
                        "last use: {} days ago, {} in {}\n",
                        days(at),
                        key["last_used_service"].as_str().unwrap(),
                        key["last_used_region"].as_str().unwrap()
                    )),
                    "{text}"
                ),
                None => assert!(text.contains("last use: never\n"), "{text}"),
            }
            assert!(!text.contains(TEST_SECRET));
        }
    }
}

#[test]
fn malformed_ids_exit_2_with_what_they_are() {
    // No AWS is asked: the id is refused before any client exists.
    let output = whois("http://127.0.0.1:9", "AROA1234567890ABCDEF");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("\"AROA1234567890ABCDEF\" is not an access key id: it is an IAM role id"),
        "{stderr}"
    );
    let output = whois("http://127.0.0.1:9", "AKIA0000");
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn temporary_credentials_are_told_apart() {
    let Some(moto) = Moto::start(&root().join("tests/peers/sample-inventory.json")) else {
        return;
    };
    let output = whois(&moto.endpoint, "ASIAY34FZKBOKMUTVV7A");
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("kind:     temporary credentials (ASIA) issued by STS"),
        "{text}"
    );
    assert!(
        text.contains("account:  609629065308 (decoded from the id)"),
        "{text}"
    );
    assert!(text.contains("role session, not an IAM user"), "{text}");
}

#[test]
fn a_key_of_a_configured_member_account_is_read_through_its_role() {
    let Some(moto) = Moto::start(&root().join("tests/peers/multi-account.json")) else {
        return;
    };
    let member = &moto.seeded["accounts"][0];
    let account = member["account_id"].as_str().unwrap();
    let user = &member["users"][0];
    let key = user["keys"][0]["access_key_id"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[[accounts]]\nrole_arn = \"{}\"\n",
            member["role_arn"].as_str().unwrap()
        ),
    )
    .unwrap();
    let args = ["--config.file", config.to_str().unwrap()];
    let output = run_whois(&moto.endpoint, (TEST_ACCESS_KEY, TEST_SECRET), &args, key);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains(&format!("account:  {account} (decoded from the id)")),
        "{text}"
    );
    assert!(text.contains("read through role arn:aws:iam::"), "{text}");
    assert!(
        text.contains(&format!("user:     {}\n", user["name"].as_str().unwrap())),
        "{text}"
    );
    assert!(text.contains("status:   Active"), "{text}");

    // Without the role configured, the account is not one the exporter watches.
    std::fs::write(&config, "").unwrap();
    let args = ["--config.file", config.to_str().unwrap()];
    let output = run_whois(&moto.endpoint, (TEST_ACCESS_KEY, TEST_SECRET), &args, key);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("not in the inventory of a watched account"),
        "{text}"
    );
}

#[test]
fn an_id_outside_base32_is_asked_of_sts() {
    // AWS's documentation example: shaped like a key id, but `8` is no base32 digit, so
    // the account cannot be decoded offline. moto's STS answers GetAccessKeyInfo for an id
    // it does not hold with the caller's account, where IAM then has no such key.
    let Some(moto) = Moto::start(&root().join("tests/peers/sample-inventory.json")) else {
        return;
    };
    let account = moto.seeded["account_id"].as_str().unwrap();
    let output = whois(&moto.endpoint, "AKIAI44QH8DHBEXAMPLE");
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains(&format!(
            "account:  {account} (from STS GetAccessKeyInfo)\n          could not be decoded offline: characters outside base32 (A-Z, 2-7) after the prefix: 8\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("user:     no such key in account {account}")),
        "{text}"
    );

    // With no STS to answer (asked once, not retried), the account is unknown, said so,
    // and nothing more is asked.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[aws]\nmax_attempts = 1\n").unwrap();
    let output = run_whois(
        "http://127.0.0.1:9",
        (TEST_ACCESS_KEY, TEST_SECRET),
        &["--config.file", config.to_str().unwrap()],
        "AKIAI44QH8DHBEXAMPLE",
    );
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.ends_with(
            "account:  unknown: could not be decoded offline (characters outside base32 (A-Z, 2-7) after the prefix: 8), and STS GetAccessKeyInfo failed (no answer)\n"
        ),
        "{text}"
    );
}
