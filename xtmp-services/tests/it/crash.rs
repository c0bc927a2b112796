//! SIGKILL durability test. The parent runs this test binary again as a child
//! (`crash::crash_child`, ignored unless asked for) that applies a steady stream of
//! transfers and bundle confirmations from several threads and prints each acknowledged
//! one. The parent kills it with SIGKILL mid-stream, reopens the store and checks that
//! every acknowledged write is there, nothing is half-applied, and the total is unchanged.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use xtmp_services::encoding::Hex32;
use xtmp_services::types::{BundleIdRequest, BundleState, BundleSubmitRequest, TxKind};
use xtmp_services::{client, Address, GenesisAllocation, Services, ServicesConfig};

use crate::common::*;

const WALLETS: u8 = 8;
const THREADS: usize = 4;
const GENESIS_EACH: u64 = 1_000_000;

fn crash_config(dir: &std::path::Path) -> ServicesConfig {
    let mut c = config(dir);
    c.set_genesis(
        (0..WALLETS)
            .map(|i| GenesisAllocation {
                address: key(i + 1).address(),
                amount: GENESIS_EACH,
            })
            .collect(),
    );
    c
}

fn out(line: String) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

#[test]
#[ignore = "run by crash_durability as a child process"]
fn crash_child() {
    let Ok(dir) = std::env::var("XTMP_CRASH_DIR") else {
        return;
    };
    let svc =
        std::sync::Arc::new(Services::open(crash_config(std::path::Path::new(&dir))).unwrap());
    let keys: std::sync::Arc<Vec<_>> =
        std::sync::Arc::new((0..WALLETS).map(|i| key(i + 1)).collect());
    for (i, k) in keys.iter().enumerate() {
        login(&svc, 10 + i as u64, k);
    }
    out("READY".into());
    let deadline = Instant::now() + Duration::from_secs(120);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let svc = svc.clone();
            let keys = keys.clone();
            std::thread::spawn(move || {
                // This thread alone sends from wallets 2t and 2t+1.
                let mine = [2 * t, 2 * t + 1];
                let callers: Vec<_> = mine
                    .iter()
                    .map(|&w| xtmp_services::Caller::new(10 + w as u64))
                    .collect();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    i += 1;
                    let pick = |n: u64| {
                        let w = ((n * 2_654_435_761) % WALLETS as u64) as usize;
                        if mine.contains(&w) {
                            (w + 2) % WALLETS as usize
                        } else {
                            w
                        }
                    };
                    if i.is_multiple_of(4) {
                        let (_, n0) = balance(&svc, keys[mine[0]].address());
                        let (_, n1) = balance(&svc, keys[mine[1]].address());
                        let txs = vec![
                            client::sign_transaction(
                                &keys[mine[0]],
                                TxKind::Transfer,
                                keys[pick(i)].address(),
                                1 + i % 7,
                                n0,
                            )
                            .unwrap(),
                            client::sign_transaction(
                                &keys[mine[1]],
                                TxKind::Transfer,
                                keys[pick(i + 1)].address(),
                                1 + i % 5,
                                n1,
                            )
                            .unwrap(),
                            client::sign_transaction(
                                &keys[mine[0]],
                                TxKind::Transfer,
                                keys[pick(i + 2)].address(),
                                1 + i % 3,
                                n0 + 1,
                            )
                            .unwrap(),
                        ];
                        let ids: Vec<String> = txs
                            .iter()
                            .map(|x| format!("{}:{}:{}", x.txid(), x.from, x.nonce))
                            .collect();
                        let bid = xtmp_services::bundle::bundle_id(
                            &txs.iter().map(|x| x.txid()).collect::<Vec<_>>(),
                        );
                        out(format!("SENT BUNDLE {bid} {}", ids.join(",")));
                        let ok = svc
                            .bundle_submit(
                                &callers[0],
                                BundleSubmitRequest { transactions: txs },
                                NOW,
                            )
                            .and_then(|_| {
                                svc.bundle_confirm(
                                    &callers[0],
                                    BundleIdRequest { bundle_id: bid },
                                    NOW,
                                )
                            });
                        match ok {
                            Ok(_) => out(format!("ACK BUNDLE {bid}")),
                            Err(e) => out(format!("FAIL BUNDLE {bid} {e}")),
                        }
                    } else {
                        let w = (i % 2) as usize;
                        let (_, n) = balance(&svc, keys[mine[w]].address());
                        let tx = client::sign_transaction(
                            &keys[mine[w]],
                            TxKind::Transfer,
                            keys[pick(i)].address(),
                            1 + i % 11,
                            n,
                        )
                        .unwrap();
                        out(format!("SENT TX {}:{}:{}", tx.txid(), tx.from, tx.nonce));
                        match svc.wallet_transaction(&callers[w], tx.clone(), NOW) {
                            Ok(_) => out(format!("ACK TX {}", tx.txid())),
                            Err(e) => out(format!("FAIL TX {} {e}", tx.txid())),
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

#[test]
fn crash_durability() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash::crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("XTMP_CRASH_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut lines = Vec::new();
    let start = Instant::now();
    let mut acks = 0;
    let mut ready = false;
    // Kill at a different point each run.
    let target = 200
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as usize % 600)
            .unwrap_or(0);
    // Run until enough acknowledgements (or time) have passed, then SIGKILL.
    while start.elapsed() < Duration::from_secs(90) && acks < target {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(l) => {
                ready |= l.ends_with("READY"); // the harness prints "test ... " before it
                if l.starts_with("ACK ") {
                    acks += 1;
                }
                lines.push(l);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if ready && start.elapsed() > Duration::from_secs(60) {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was expected to be killed");
    drop(child);
    // Whatever the child printed before it died was acknowledged.
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    assert!(ready, "the child never became ready");
    let acked_tx: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ACK TX "))
        .collect();
    let acked_bundles: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ACK BUNDLE "))
        .collect();
    assert!(
        acked_tx.len() + acked_bundles.len() >= 20,
        "too little load before the kill: {acks}"
    );

    // Every transaction ever attempted (txid, sender, nonce), and the failed ones.
    let mut sent: Vec<(Hex32, Address, u64, Option<Hex32>)> = Vec::new();
    let mut failed: HashSet<String> = HashSet::new();
    let parse = |s: &str| -> (Hex32, Address, u64) {
        let mut p = s.split(':');
        (
            p.next().unwrap().parse().unwrap(),
            p.next().unwrap().parse().unwrap(),
            p.next().unwrap().parse().unwrap(),
        )
    };
    let mut bundles: HashMap<String, Vec<Hex32>> = HashMap::new();
    for l in &lines {
        if let Some(rest) = l.strip_prefix("SENT TX ") {
            let (t, f, n) = parse(rest);
            sent.push((t, f, n, None));
        } else if let Some(rest) = l.strip_prefix("SENT BUNDLE ") {
            let (bid, list) = rest.split_once(' ').unwrap();
            let b: Hex32 = bid.parse().unwrap();
            let mut ids = Vec::new();
            for item in list.split(',') {
                let (t, f, n) = parse(item);
                sent.push((t, f, n, Some(b)));
                ids.push(t);
            }
            bundles.insert(bid.to_string(), ids);
        } else if let Some(rest) = l
            .strip_prefix("FAIL TX ")
            .or_else(|| l.strip_prefix("FAIL BUNDLE "))
        {
            failed.insert(rest.split(' ').next().unwrap().to_string());
        }
    }

    // Reopen after the crash.
    let svc = Services::open(crash_config(dir.path())).unwrap();
    // 1. Every acknowledged write is present.
    for t in &acked_tx {
        assert!(
            svc.transaction_applied(&t.parse().unwrap())
                .unwrap()
                .is_some(),
            "acked tx {t} lost"
        );
    }
    for b in &acked_bundles {
        let st = svc
            .bundle_status(BundleIdRequest {
                bundle_id: b.parse().unwrap(),
            })
            .unwrap();
        assert_eq!(st.state, BundleState::Confirmed, "acked bundle {b}");
    }
    // 2. Nothing half-applied: a transaction is applied exactly when its nonce is below
    //    its wallet's next nonce; a bundle's transactions are all applied or none.
    let next: HashMap<Address, u64> = svc
        .accounts()
        .unwrap()
        .into_iter()
        .map(|(a, _, n)| (a, n))
        .collect();
    for (txid, from, nonce, bundle) in &sent {
        let tag = bundle
            .map(|b| b.to_string())
            .unwrap_or_else(|| txid.to_string());
        if failed.contains(&tag) {
            continue;
        }
        let applied = svc.transaction_applied(txid).unwrap();
        assert_eq!(
            applied.is_some(),
            *nonce < next[from],
            "tx {txid} (nonce {nonce}, wallet next {}) half-applied",
            next[from]
        );
        if let Some((_, origin)) = applied {
            assert_eq!(origin, *bundle, "tx {txid} applied with the wrong origin");
        }
    }
    for (bid, ids) in &bundles {
        let n = ids
            .iter()
            .filter(|t| svc.transaction_applied(t).unwrap().is_some())
            .count();
        let state = svc
            .bundle_status(BundleIdRequest {
                bundle_id: bid.parse().unwrap(),
            })
            .ok()
            .map(|s| s.state);
        if state == Some(BundleState::Confirmed) {
            assert_eq!(n, ids.len(), "bundle {bid} confirmed but partly applied");
        } else {
            assert_eq!(n, 0, "bundle {bid} not confirmed but partly applied");
        }
    }
    // 3. The total is unchanged.
    assert_eq!(svc.supply().unwrap(), GENESIS_EACH * WALLETS as u64);
    assert_eq!(total_balances(&svc), GENESIS_EACH * WALLETS as u64);
    eprintln!(
        "crash test: {} acked transfers, {} acked bundles, {} attempts before SIGKILL",
        acked_tx.len(),
        acked_bundles.len(),
        sent.len()
    );
}
