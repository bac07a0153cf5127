//! Criterion benchmark: parsing a credential report of 5,000 users (the IAM quota), each
//! with two keys, as GetCredentialReport delivers it.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use iam_key_exporter::credential_report;

const HEADER: &str = "user,arn,user_creation_time,password_enabled,password_last_used,password_last_changed,password_next_rotation,mfa_active,access_key_1_active,access_key_1_last_rotated,access_key_1_last_used_date,access_key_1_last_used_region,access_key_1_last_used_service,access_key_2_active,access_key_2_last_rotated,access_key_2_last_used_date,access_key_2_last_used_region,access_key_2_last_used_service,cert_1_active,cert_1_last_rotated,cert_2_active,cert_2_last_rotated";

fn report(users: usize) -> String {
    let mut text = format!("{HEADER}\n");
    for i in 0..users {
        let day = 1 + i % 28;
        let used = if i % 3 == 0 {
            "N/A,N/A,N/A".to_string()
        } else {
            format!("2026-10-{day:02}T12:34:56+00:00,eu-west-1,s3")
        };
        text.push_str(&format!(
            "user-{i:05},arn:aws:iam::123456789012:user/bench/user-{i:05},2024-01-{day:02}T08:00:00+00:00,false,N/A,N/A,N/A,false,true,2025-03-{day:02}T09:10:11+00:00,{used},{},2025-06-{day:02}T10:00:00+00:00,2026-11-{day:02}T01:02:03+00:00,us-east-1,iam,false,N/A,false,N/A\n",
            i % 10 != 0
        ));
    }
    text
}

fn parse_5000_users(c: &mut Criterion) {
    let csv = report(5_000);
    assert_eq!(
        credential_report::parse(csv.as_bytes()).unwrap().len(),
        5_000
    );
    c.bench_function("parse credential report, 5000 users", |b| {
        b.iter(|| credential_report::parse(black_box(csv.as_bytes())).unwrap())
    });
}

criterion_group!(benches, parse_5000_users);
criterion_main!(benches);
