//! Criterion benchmark: rendering a snapshot (text and gzip prefix) of 10,000 keys, as one
//! account at IAM's user quota and as 100 accounts of 50 users, with two tag labels on
//! every user in the second case; and an organization of 1,000 accounts of 20 users
//! (40,000 keys, two tag labels each), built whole, or published one account at a time:
//! rendering that account's fragment, and assembling the snapshot from all fragments.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use iam_key_exporter::exposition::Recycler;
use iam_key_exporter::inventory::{
    AccessKey, AccountData, Inventory, KeyStatus, LastUse, ServiceCounts, User,
};
use iam_key_exporter::snapshot::{AccountFragment, Snapshot};

fn account(id: &str, users: usize, tagged: bool) -> AccountData {
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let mut data = AccountData::default();
    let users: Vec<User> = (0..users)
        .map(|i| {
            let arn = format!("arn:aws:iam::{id}:user/bench/user-{i:05}");
            let keys = (0..2)
                .map(|k| AccessKey {
                    id: format!("AKIA{:016}", i * 2 + k),
                    status: if k == 0 {
                        KeyStatus::Active
                    } else {
                        KeyStatus::Inactive
                    },
                    created: now - day * (30 + i as u32 % 900),
                    last_used: (i % 3 != 0).then(|| LastUse {
                        at: now - day * (i as u32 % 60),
                        service: "s3".into(),
                        region: "eu-west-1".into(),
                    }),
                })
                .collect();
            data.service_counts.insert(
                arn.clone(),
                ServiceCounts {
                    accessed: 3,
                    granted: 12,
                    actions: vec![],
                },
            );
            if tagged {
                data.tags.insert(
                    arn.clone(),
                    vec![
                        ("tag_owner".into(), format!("owner-{i}@example.com")),
                        ("tag_team".into(), format!("team-{}", i % 17)),
                    ],
                );
            }
            User {
                name: format!("user-{i:05}"),
                arn,
                created: Some(now - day * (60 + i as u32 % 900)),
                keys,
                login: None,
            }
        })
        .collect();
    data.inventory = Some(Arc::new(Inventory {
        account_id: id.into(),
        collected_at: now,
        users,
        account: Default::default(),
    }));
    data
}

fn render(c: &mut Criterion) {
    let one: BTreeMap<String, AccountData> = [(
        "123456789012".to_string(),
        account("123456789012", 5_000, false),
    )]
    .into();
    let many: BTreeMap<String, AccountData> = (0..100)
        .map(|i| {
            let id = format!("{:012}", 100_000_000_000u64 + i);
            (id.clone(), account(&id, 50, true))
        })
        .collect();
    assert_eq!(Snapshot::build(&one).keys, 10_000);
    assert_eq!(Snapshot::build(&many).keys, 10_000);
    c.bench_function("render snapshot, 1 account x 5000 users", |b| {
        b.iter(|| Snapshot::build(black_box(&one)))
    });
    c.bench_function("render snapshot, 100 accounts x 50 users, 2 tags", |b| {
        b.iter(|| Snapshot::build(black_box(&many)))
    });
}

fn organization(c: &mut Criterion) {
    let accounts: BTreeMap<String, AccountData> = (0..1_000)
        .map(|i| {
            let id = format!("{:012}", 100_000_000_000u64 + i);
            (id.clone(), account(&id, 20, true))
        })
        .collect();
    let fragments: Vec<AccountFragment> = accounts.values().map(AccountFragment::render).collect();
    let mut recycler = Recycler::default();
    let built = Snapshot::build(&accounts);
    let assembled = Snapshot::assemble(&fragments, &mut recycler);
    assert_eq!(
        (assembled.keys, &assembled.exposition),
        (40_000, &built.exposition)
    );
    eprintln!(
        "1000 accounts x 20 users: {} bytes of text; gzip {} bytes built whole, {} assembled",
        built.exposition.len(),
        built.gzip_prefix.len(),
        assembled.gzip_prefix.len(),
    );
    let one = accounts.values().nth(500).expect("1,000 accounts");
    c.bench_function("render one account's fragment, 20 users, 2 tags", |b| {
        b.iter(|| AccountFragment::render(black_box(one)))
    });
    // As the publisher does: the snapshot being served stays alive while the next one is
    // assembled, and the one before is written over.
    let mut served = assembled;
    c.bench_function("assemble snapshot, 1000 accounts x 20 users, 2 tags", |b| {
        b.iter(|| served = Snapshot::assemble(black_box(&fragments), &mut recycler))
    });
    drop(served);
    c.bench_function("build snapshot, 1000 accounts x 20 users, 2 tags", |b| {
        b.iter(|| Snapshot::build(black_box(&accounts)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = render
}
criterion_group! {
    name = organization_benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3));
    targets = organization
}
criterion_main!(benches, organization_benches);
