use std::sync::Arc;

use xtmp_services::error::codes;
use xtmp_services::types::{BundleIdRequest, BundleSubmitRequest, TxKind};
use xtmp_services::{client, Caller};

use crate::common::*;

/// Many threads move value between shared wallets at once — including several sessions
/// bound to the same wallet racing for its nonces — and bundles confirm in between.
/// Every failure is one of the expected races, and the total is conserved.
#[test]
fn concurrent_transfers_conserve_the_total() {
    let e = env();
    let wallets: Vec<_> = (1..=6).map(key).collect();
    for (i, w) in wallets.iter().enumerate() {
        login(&e.svc, 100 + i as u64, w);
        fund(&e, w.address(), 1_000);
    }
    let supply = e.svc.supply().unwrap();
    assert_eq!(supply, 6_000);
    let svc = Arc::new(e.svc);
    let wallets = Arc::new(wallets);

    let mut handles = Vec::new();
    // Two sessions per wallet for wallets 0..3 (racing on nonces), one for 3..6.
    for t in 0..9u64 {
        let svc = svc.clone();
        let wallets = wallets.clone();
        handles.push(std::thread::spawn(move || {
            let me = (t % 6) as usize;
            let session = 1_000 + t;
            let c = login(&svc, session, &wallets[me]);
            let mut ok = 0u32;
            for i in 0..25u64 {
                let to = &wallets[(me + 1 + (i as usize * 7 + t as usize) % 5) % 6];
                let (_, nonce) = balance(&svc, wallets[me].address());
                let amount = 1 + (i * 13 + t) % 40;
                let tx = client::sign_transaction(
                    &wallets[me],
                    TxKind::Transfer,
                    to.address(),
                    amount,
                    nonce,
                )
                .unwrap();
                match svc.wallet_transaction(&c, tx, NOW) {
                    Ok(_) => ok += 1,
                    Err(err) => assert!(
                        [
                            codes::NONCE_REPLAYED,
                            codes::NONCE_GAP,
                            codes::DUPLICATE_TRANSACTION,
                            codes::INSUFFICIENT_FUNDS
                        ]
                        .contains(&err.code()),
                        "unexpected {err:?}"
                    ),
                }
                if i % 8 == 7 {
                    // A small bundle from this wallet, confirmed right away; it may be
                    // rejected if another session took the nonce in between.
                    let (_, nonce) = balance(&svc, wallets[me].address());
                    let txs = vec![
                        client::sign_transaction(
                            &wallets[me],
                            TxKind::Transfer,
                            to.address(),
                            1,
                            nonce,
                        )
                        .unwrap(),
                        client::sign_transaction(
                            &wallets[me],
                            TxKind::Transfer,
                            to.address(),
                            2,
                            nonce + 1,
                        )
                        .unwrap(),
                    ];
                    if let Ok(r) =
                        svc.bundle_submit(&c, BundleSubmitRequest { transactions: txs }, NOW)
                    {
                        match svc.bundle_confirm(
                            &c,
                            BundleIdRequest {
                                bundle_id: r.status.bundle_id,
                            },
                            NOW,
                        ) {
                            Ok(_) => ok += 2,
                            // Rejected: another session took the nonce. Final: the other
                            // session of this wallet built the identical bundle (same
                            // recipient, amounts and nonces, so the same bundle id), and
                            // its confirm came first (counted there).
                            Err(err) => assert!(
                                [codes::BUNDLE_REJECTED, codes::BUNDLE_FINAL].contains(&err.code()),
                                "{err:?}"
                            ),
                        }
                    }
                }
            }
            ok
        }));
    }
    let applied: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(applied > 100, "only {applied} transfers applied");
    assert_eq!(total_balances(&svc), supply);
    assert_eq!(svc.supply().unwrap(), supply);
    // Every applied transfer advanced exactly one nonce.
    let nonces: u64 = wallets.iter().map(|w| balance(&svc, w.address()).1).sum();
    assert_eq!(nonces, applied as u64);
    let st = svc.store().stats();
    assert!(
        st.commits < st.ops_committed + st.ops_discarded,
        "group commit never batched: {st:?}"
    );
}

#[test]
fn memory_store_runs_the_same_logic() {
    // The domain logic is backend-independent: a quick pass over the volatile store.
    let store = Arc::new(xtmp_services::store::MemoryStore::new());
    let authority = key(0xAA);
    let mut cfg = xtmp_services::ServicesConfig::default();
    cfg.set_mint_authority(Some(authority.public_key().as_bytes().to_vec()));
    let svc = xtmp_services::Services::with_store(store, cfg, key(0x55)).unwrap();
    let ca = login(&svc, 1, &authority);
    let b = key(2);
    login(&svc, 2, &b);
    let tx = client::sign_transaction(&authority, TxKind::Mint, b.address(), 10, 0).unwrap();
    svc.wallet_transaction(&ca, tx, NOW).unwrap();
    assert_eq!(balance(&svc, b.address()), (10, 0));
    assert_eq!(total_balances(&svc), 10);
    let _ = Caller::new(0);
}

/// Notifications of concurrent writes come out in commit order: a wallet that only
/// receives sees its balance strictly increase, ending at its final balance.
#[test]
fn notifications_follow_commit_order() {
    let e = env();
    let sink = key(50);
    login(&e.svc, 500, &sink);
    let senders: Vec<_> = (51..59).map(key).collect();
    for (i, s) in senders.iter().enumerate() {
        login(&e.svc, 600 + i as u64, s);
        fund(&e, s.address(), 10_000);
    }
    let mut rx = e.svc.subscribe();
    let svc = Arc::new(e.svc);
    let handles: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let svc = svc.clone();
            let to = sink.address();
            std::thread::spawn(move || {
                let c = Caller::new(600 + i as u64);
                for n in 0..20 {
                    let tx = client::sign_transaction(&s, TxKind::Transfer, to, 1 + n, n).unwrap();
                    svc.wallet_transaction(&c, tx, NOW).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut balances = Vec::new();
    while let Ok(n) = rx.try_recv() {
        if let xtmp_services::events::Event::Wallet {
            address, balance, ..
        } = n.event
        {
            if address == sink.address() {
                balances.push(balance);
            }
        }
    }
    assert_eq!(balances.len(), 160);
    assert!(
        balances.windows(2).all(|w| w[0] < w[1]),
        "out of order: {balances:?}"
    );
    assert_eq!(*balances.last().unwrap(), balance(&svc, sink.address()).0);
}
