//! Measures confirmed (durable) writes per second, with and without group commit.
//!
//! `cargo run --release -p xtmp-services --example commit_bench [-- THREADS OPS_PER_THREAD]`
//!
//! * `store`: trivial write operations (one counter increment each) straight on the redb
//!   store — the cost of durability alone.
//! * `transfer`: full `WalletTransaction`s (signature verification, nonce and balance
//!   checks, four table writes) on pre-signed transactions, one wallet per thread.
//!
//! Each is run with `max_batch = 1` (one fsync'd transaction per operation) and with the
//! default group commit.
use std::sync::Arc;
use std::time::Instant;

use xtmp_services::store::{Outcome, RedbStore, RedbStoreOptions, Store, Table};
use xtmp_services::types::TxKind;
use xtmp_services::{client, Caller, GenesisAllocation, Services, ServicesConfig, SigningKey};

fn store_bench(threads: usize, per: usize, max_batch: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = RedbStoreOptions::default();
    opts.set_max_batch(max_batch);
    let store = Arc::new(RedbStore::open_dir(dir.path(), &opts).expect("open"));
    let start = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let key = (t as u64).to_be_bytes();
                for i in 0..per as u64 {
                    store
                        .write(Box::new(move |tx| {
                            tx.put(Table::Meta, &key, &i.to_be_bytes());
                            Outcome::Commit
                        }))
                        .expect("write");
                }
            })
        })
        .collect();
    for h in hs {
        h.join().expect("join");
    }
    let secs = start.elapsed().as_secs_f64();
    let st = store.stats();
    let rate = (threads * per) as f64 / secs;
    println!(
        "store     threads={threads:3} max_batch={max_batch:4}: {:>8.0} writes/s  ({} commits, {:.1} ops/commit)",
        rate,
        st.commits,
        st.ops_committed as f64 / st.commits.max(1) as f64
    );
    rate
}

fn transfer_bench(threads: usize, per: usize, max_batch: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys: Vec<SigningKey> = (0..threads)
        .map(|i| SigningKey::from_seed(&[i as u8 + 1; 32]).expect("key"))
        .collect();
    let sink = SigningKey::from_seed(&[0xEE; 32]).expect("key");
    let mut cfg = ServicesConfig::new(dir.path());
    cfg.set_group_commit_max_batch(max_batch);
    cfg.set_genesis(
        keys.iter()
            .map(|k| GenesisAllocation {
                address: k.address(),
                amount: 1_000_000,
            })
            .collect(),
    );
    let svc = Arc::new(Services::open(cfg).expect("open"));
    let now = 1_700_000_000_000;
    let c0 = Caller::new(0);
    svc.wallet_register(&c0, client::register_request(&sink), now)
        .expect("reg");
    let mut work = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let c = Caller::new(i as u64 + 1);
        svc.wallet_register(&c, client::register_request(k), now)
            .expect("reg");
        let s1 = svc
            .wallet_auth(&c, client::auth_challenge_request(k), now)
            .expect("auth");
        svc.wallet_auth(&c, client::auth_answer_request(k, &s1).expect("sign"), now)
            .expect("auth");
        let txs: Vec<_> = (0..per as u64)
            .map(|n| {
                client::sign_transaction(k, TxKind::Transfer, sink.address(), 1, n).expect("sign")
            })
            .collect();
        work.push((c, txs));
    }
    let commits_before = svc.store().stats().commits;
    let start = Instant::now();
    let hs: Vec<_> = work
        .into_iter()
        .map(|(c, txs)| {
            let svc = svc.clone();
            std::thread::spawn(move || {
                for tx in txs {
                    svc.wallet_transaction(&c, tx, now).expect("transfer");
                }
            })
        })
        .collect();
    for h in hs {
        h.join().expect("join");
    }
    let secs = start.elapsed().as_secs_f64();
    let commits = svc.store().stats().commits - commits_before;
    let rate = (threads * per) as f64 / secs;
    println!(
        "transfer  threads={threads:3} max_batch={max_batch:4}: {:>8.0} transfers/s  ({commits} commits, {:.1} ops/commit)",
        rate,
        (threads * per) as f64 / commits.max(1) as f64
    );
    rate
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let threads = args.first().copied().unwrap_or(32);
    let per = args.get(1).copied().unwrap_or(100);
    for t in [1, threads] {
        let a = store_bench(t, per, 1);
        let b = store_bench(t, per, 512);
        println!("          group commit speedup x{:.1}", b / a);
    }
    for t in [1, threads] {
        let a = transfer_bench(t, per, 1);
        let b = transfer_bench(t, per, 512);
        println!("          group commit speedup x{:.1}", b / a);
    }
}
