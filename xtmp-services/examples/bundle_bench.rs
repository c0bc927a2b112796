//! Store-level cost of `BundleSubmit`: 32 threads submit one-transfer bundles through
//! [`Services::bundle_submit`] on the redb store (group commit, fsync), and the run reports
//! the rate, the store writer thread's CPU per bundle, the bytes handed to `write(2)` per
//! bundle and the operations per commit — the writer-side figures behind
//! `docs/BENCHMARKS.md` (bundle-submit), without the transport.
//!
//! `cargo run --release -p xtmp-services --example bundle_bench [-- BUNDLES]` (Linux: reads
//! `/proc/self/task/*/{stat,io}`; default 20,000 bundles, signed before the measurement).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use xtmp_services::types::{BundleSubmitRequest, TxKind};
use xtmp_services::{client, Caller, GenesisAllocation, Services, ServicesConfig, SigningKey};

const THREADS: usize = 32;
const SENDERS: usize = 8;

/// (CPU ticks of the store writer thread, bytes written by all threads).
fn task_stats() -> (u64, u64) {
    let (mut cpu, mut written) = (0, 0);
    for e in std::fs::read_dir("/proc/self/task").unwrap() {
        let p = e.unwrap().path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if comm.trim() == "xtmp-store-writ" {
            let stat = std::fs::read_to_string(p.join("stat")).unwrap();
            let f: Vec<&str> = stat
                .rsplit_once(')')
                .unwrap()
                .1
                .split_whitespace()
                .collect();
            cpu += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        }
        let io = std::fs::read_to_string(p.join("io")).unwrap_or_default();
        for l in io.lines() {
            if let Some(v) = l.strip_prefix("wchar: ") {
                written += v.parse::<u64>().unwrap();
            }
        }
    }
    (cpu, written)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<SigningKey> = (0..SENDERS)
        .map(|i| SigningKey::from_seed(&[i as u8 + 1; 32]).unwrap())
        .collect();
    let sink = SigningKey::from_seed(&[0xEE; 32]).unwrap();
    let mut cfg = ServicesConfig::new(dir.path());
    cfg.set_genesis(
        keys.iter()
            .map(|k| GenesisAllocation {
                address: k.address(),
                amount: 1 << 40,
            })
            .collect(),
    );
    let svc = Arc::new(Services::open(cfg).unwrap());
    let now = 1_700_000_000_000;
    for k in keys.iter().chain([&sink]) {
        svc.wallet_register(&Caller::new(0), client::register_request(k), now)
            .unwrap();
    }
    // Distinct transfers (nonce 0, distinct amounts), signed on two threads.
    let t = Instant::now();
    let txs: Vec<_> = std::thread::scope(|s| {
        let parts: Vec<_> = (0..2)
            .map(|part| {
                let (keys, sink) = (&keys, &sink);
                s.spawn(move || {
                    (part..n)
                        .step_by(2)
                        .map(|i| {
                            let amount = 1 + (i / SENDERS) as u64;
                            let k = &keys[i % SENDERS];
                            client::sign_transaction(k, TxKind::Transfer, sink.address(), amount, 0)
                                .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    eprintln!("signed {n} transfers in {:.1} s", t.elapsed().as_secs_f64());
    let txs = Arc::new(txs);
    let next = Arc::new(AtomicUsize::new(0));
    let (cpu0, written0) = task_stats();
    let commits0 = svc.store().stats().commits;
    let t = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|th| {
            let (svc, txs, next) = (svc.clone(), txs.clone(), next.clone());
            std::thread::spawn(move || {
                let c = Caller::new(100 + th as u64);
                let k = SigningKey::from_seed(&[(th % SENDERS) as u8 + 1; 32]).unwrap();
                let s1 = svc
                    .wallet_auth(&c, client::auth_challenge_request(&k), now)
                    .unwrap();
                svc.wallet_auth(&c, client::auth_answer_request(&k, &s1).unwrap(), now)
                    .unwrap();
                while let Some(tx) = txs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let req = BundleSubmitRequest {
                        transactions: vec![tx.clone()],
                    };
                    assert!(svc.bundle_submit(&c, req, now).unwrap().created);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let (cpu1, written1) = task_stats();
    let commits = svc.store().stats().commits - commits0;
    println!(
        "{n} bundles in {secs:.2} s = {:.0}/s; store writer CPU {:.1} µs/bundle; \
         {:.1} KiB written/bundle; {commits} commits, {:.1} bundles/commit",
        n as f64 / secs,
        (cpu1 - cpu0) as f64 * 10_000.0 / n as f64,
        (written1 - written0) as f64 / n as f64 / 1024.0,
        n as f64 / commits.max(1) as f64
    );
}
