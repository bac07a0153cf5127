//! The yardstick for the API source: a plain concurrent client, the AWS SDK and nothing
//! else, making the same calls (ListUsers pages, ListAccessKeys per user,
//! GetAccessKeyLastUsed per key) with `concurrency` users in flight. No parsing into an
//! inventory, no metrics. scripts/bench.sh compares the exporter's refresh with it.
//!
//! Run: cargo bench --bench plain_client -- ENDPOINT CONCURRENCY

use std::time::Instant;

use futures_util::{StreamExt, TryStreamExt, stream};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; the positional arguments are ours.
    let positional: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with("--")).collect();
    let (Some(endpoint), Some(concurrency)) = (positional.first(), positional.get(1)) else {
        eprintln!("usage: plain_client ENDPOINT CONCURRENCY");
        return Ok(());
    };
    let concurrency: usize = concurrency.parse()?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_iam::Config::builder()
        .behavior_version(aws_sdk_iam::config::BehaviorVersion::latest())
        .region(aws_sdk_iam::config::Region::new("us-east-1"))
        .endpoint_url(endpoint.as_str())
        .credentials_provider(aws_sdk_iam::config::Credentials::new(
            "bench", "bench", None, None, "bench",
        ))
        .http_client(http)
        .build();
    let iam = aws_sdk_iam::Client::from_conf(config);

    let started = Instant::now();
    let mut users = Vec::new();
    let mut pages = iam.list_users().into_paginator().page_size(1000).send();
    while let Some(page) = pages.next().await {
        users.extend(page?.users.into_iter().map(|u| u.user_name));
    }
    let calls: Vec<usize> = stream::iter(users)
        .map(|user| {
            let iam = iam.clone();
            async move {
                let keys = iam.list_access_keys().user_name(&user).send().await?;
                for key in keys.access_key_metadata() {
                    iam.get_access_key_last_used()
                        .access_key_id(key.access_key_id().unwrap_or_default())
                        .send()
                        .await?;
                }
                Ok::<_, Error>(1 + keys.access_key_metadata().len())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    let total: usize = calls.iter().sum::<usize>() + 1;
    println!(
        "plain client: concurrency {concurrency}, {total} calls in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
