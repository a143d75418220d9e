//! Micro-benchmarks of the pure hot paths of a request: ACL evaluation over 100 policies,
//! barrier encryption and decryption of 1 KiB, and the token's keyed hash.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use kinko_server::barrier::Keyring;
use kinko_server::policy::{parse, Acl, Capability};
use kinko_server::secret::Key256;
use kinko_server::tokens::TokenStore;

fn acl_with_100_policies() -> Acl {
    let policies: Vec<_> = (0..100)
        .map(|i| {
            let text = format!(
                "path \"secret/data/team{i}/*\" {{\n  capabilities = [\"read\", \"list\"]\n}}\n\
                 path \"secret/data/team{i}/private/+\" {{\n  capabilities = [\"deny\"]\n}}\n\
                 path \"secret/metadata/team{i}\" {{\n  capabilities = [\"list\"]\n}}\n"
            );
            Arc::new(parse(&format!("team{i}"), &text).unwrap())
        })
        .collect();
    Acl::new(&policies)
}

fn policy_evaluation(c: &mut Criterion) {
    let acl = acl_with_100_policies();
    let read_path = |raw: &str| kinko_server::path::LogicalPath::new(raw, false).unwrap();
    let (hit, denied, miss) = (
        read_path("secret/data/team57/app/db"),
        read_path("secret/data/team57/private/key"),
        read_path("secret/data/other/app"),
    );
    c.bench_function("acl/100 policies/glob hit", |b| {
        b.iter(|| acl.allows(black_box(&hit), Capability::Read))
    });
    c.bench_function("acl/100 policies/plus deny", |b| {
        b.iter(|| acl.allows(black_box(&denied), Capability::Read))
    });
    c.bench_function("acl/100 policies/miss", |b| {
        b.iter(|| acl.allows(black_box(&miss), Capability::Read))
    });
    c.bench_function("acl/build from 100 policies", |b| {
        let policies: Vec<_> = (0..100)
            .map(|i| {
                Arc::new(
                    parse(
                        "p",
                        &format!("path \"secret/data/team{i}/*\" {{ capabilities = [\"read\"] }}"),
                    )
                    .unwrap(),
                )
            })
            .collect();
        b.iter(|| Acl::new(black_box(&policies)))
    });
}

fn barrier(c: &mut Criterion) {
    let mut keyring = Keyring::new("bench-cluster", 0).with_new_block(0);
    let value = vec![0x5a_u8; 1024];
    let path = "logical/5c1a/versions/app/db/1";
    // Long runs spend a nonce block (2^20 encryptions); reserve another as the server would.
    c.bench_function("barrier/encrypt 1 KiB", |b| {
        b.iter(
            || match keyring.encrypt(black_box(path), black_box(&value)) {
                Ok(blob) => blob,
                Err(_) => {
                    keyring = keyring.with_new_block(0);
                    keyring.encrypt(path, &value).unwrap()
                }
            },
        )
    });
    let blob = keyring.encrypt(path, &value).unwrap();
    c.bench_function("barrier/decrypt 1 KiB", |b| {
        b.iter(|| keyring.decrypt(black_box(path), black_box(&blob)).unwrap())
    });
}

fn token_hash(c: &mut Criterion) {
    let store = TokenStore::new(Key256::generate());
    let token = "kks.q8ZrT1w0dXbq0pX7e0m6r2m7bZ8u9k1lq2w3e4r5t6y";
    c.bench_function("token/keyed hash", |b| {
        b.iter(|| store.hash(black_box(token)))
    });
}

criterion_group!(benches, policy_evaluation, barrier, token_hash);
criterion_main!(benches);
