use xtmp_services::bundle::bundle_id;
use xtmp_services::error::codes;
use xtmp_services::types::{
    BundleIdRequest, BundleState, BundleSubmitRequest, BundleSyncRequest, TxKind,
};
use xtmp_services::{client, AppError, Caller};

use crate::common::*;

fn t(
    from: &xtmp_services::SigningKey,
    to: &xtmp_services::SigningKey,
    amount: u64,
    nonce: u64,
) -> xtmp_services::types::SignedTransaction {
    client::sign_transaction(from, TxKind::Transfer, to.address(), amount, nonce).unwrap()
}

#[test]
fn submit_validation_failures() {
    let e = env();
    let (a, b, x) = (key(1), key(2), key(3));
    let ca = login(&e.svc, 20, &a);
    login(&e.svc, 21, &b);
    fund(&e, a.address(), 10);
    let sub = |c: &Caller, txs| {
        e.svc
            .bundle_submit(c, BundleSubmitRequest { transactions: txs }, NOW)
    };

    assert_eq!(
        sub(&Caller::new(99), vec![t(&a, &b, 1, 0)]).unwrap_err(),
        AppError::NotAuthenticated
    );
    assert_eq!(sub(&ca, vec![]).unwrap_err(), AppError::BundleEmpty);
    let one = t(&a, &b, 1, 0);
    assert_eq!(
        sub(&ca, vec![one.clone(); 1001]).unwrap_err().code(),
        codes::TOO_LARGE
    );
    assert_eq!(
        sub(&ca, vec![one.clone(), one.clone()]).unwrap_err(),
        AppError::BundleDuplicateTx { index: 1 }
    );
    let mut forged = t(&x, &b, 1, 1);
    forged.from = a.address();
    let err = sub(&ca, vec![one.clone(), forged]).unwrap_err();
    assert_eq!(err.code(), codes::BAD_SIGNATURE);
    assert!(
        err.reason().starts_with("transaction 1:"),
        "{}",
        err.reason()
    );
    let err = sub(&ca, vec![one.clone(), t(&a, &b, 10, 1)]).unwrap_err();
    assert_eq!(err.code(), codes::INSUFFICIENT_FUNDS);
    let err = sub(&ca, vec![t(&a, &b, 1, 3)]).unwrap_err();
    assert_eq!(err.code(), codes::NONCE_GAP);
    let err = sub(&ca, vec![t(&x, &b, 1, 0)]).unwrap_err();
    assert_eq!(err.code(), codes::WALLET_NOT_FOUND);
    let mint = client::sign_transaction(&e.authority, TxKind::Mint, b.address(), 1, 0).unwrap();
    assert_eq!(sub(&ca, vec![mint]).unwrap_err().code(), codes::FORBIDDEN);
    // Nothing stored.
    assert!(e
        .svc
        .bundle_sync(BundleSyncRequest::default())
        .unwrap()
        .entries
        .is_empty());
    assert_eq!(balance(&e.svc, a.address()), (10, 0));
}

#[test]
fn submit_confirm_all_or_nothing_and_sync() {
    let e = env();
    let (a, b, c) = (key(1), key(2), key(3));
    let ca = login(&e.svc, 20, &a);
    let cb = login(&e.svc, 21, &b);
    login(&e.svc, 22, &c);
    fund(&e, a.address(), 100);

    // b spends what a sends it earlier in the same bundle: order matters.
    let txs = vec![t(&a, &b, 50, 0), t(&b, &c, 20, 0), t(&a, &c, 5, 1)];
    let id = bundle_id(&txs.iter().map(|x| x.txid()).collect::<Vec<_>>());
    let r = e
        .svc
        .bundle_submit(
            &ca,
            BundleSubmitRequest {
                transactions: txs.clone(),
            },
            NOW,
        )
        .unwrap();
    assert!(r.created);
    assert_eq!(r.status.bundle_id, id);
    assert_eq!(r.status.state, BundleState::Pending);
    assert_eq!(r.status.transaction_count, 3);
    assert_eq!(r.status.submitter, a.address());
    // Pending: nothing applied.
    assert_eq!(balance(&e.svc, a.address()), (100, 0));
    // Idempotent resubmission.
    let again = e
        .svc
        .bundle_submit(&ca, BundleSubmitRequest { transactions: txs }, NOW)
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.status.bundle_id, id);

    // Only the submitter or the authority may confirm.
    let req = BundleIdRequest { bundle_id: id };
    assert_eq!(
        e.svc
            .bundle_confirm(&cb, req.clone(), NOW)
            .unwrap_err()
            .code(),
        codes::FORBIDDEN
    );
    assert_eq!(
        e.svc
            .bundle_confirm(&Caller::new(98), req.clone(), NOW)
            .unwrap_err(),
        AppError::NotAuthenticated
    );
    let unknown = BundleIdRequest {
        bundle_id: [7u8; 32].into(),
    };
    assert_eq!(
        e.svc
            .bundle_confirm(&ca, unknown.clone(), NOW)
            .unwrap_err()
            .code(),
        codes::BUNDLE_NOT_FOUND
    );
    assert_eq!(
        e.svc.bundle_status(unknown).unwrap_err().code(),
        codes::BUNDLE_NOT_FOUND
    );

    let st = e.svc.bundle_confirm(&ca, req.clone(), NOW + 5).unwrap();
    assert_eq!(st.state, BundleState::Confirmed);
    assert_eq!(st.finalized_at_ms, Some(NOW + 5));
    assert_eq!(balance(&e.svc, a.address()), (45, 2));
    assert_eq!(balance(&e.svc, b.address()), (30, 1));
    assert_eq!(balance(&e.svc, c.address()), (25, 0));
    assert_eq!(
        e.svc
            .bundle_confirm(&ca, req.clone(), NOW)
            .unwrap_err()
            .code(),
        codes::BUNDLE_FINAL
    );
    assert_eq!(
        e.svc.bundle_status(req).unwrap().state,
        BundleState::Confirmed
    );

    // A bundle whose second transaction no longer applies is rejected whole.
    let txs2 = vec![t(&a, &c, 1, 2), t(&b, &c, 10, 1)];
    let id2 = e
        .svc
        .bundle_submit(&ca, BundleSubmitRequest { transactions: txs2 }, NOW)
        .unwrap()
        .status
        .bundle_id;
    // b uses its nonce 1 directly in the meantime.
    transfer(&e.svc, &cb, &b, a.address(), 1).unwrap();
    let err = e
        .svc
        .bundle_confirm(&ca, BundleIdRequest { bundle_id: id2 }, NOW)
        .unwrap_err();
    assert_eq!(err.code(), codes::BUNDLE_REJECTED);
    assert!(err.reason().contains("transaction 1"), "{}", err.reason());
    let st2 = e
        .svc
        .bundle_status(BundleIdRequest { bundle_id: id2 })
        .unwrap();
    assert_eq!(st2.state, BundleState::Rejected);
    assert!(st2.reason.unwrap().contains("nonce"));
    // The first transaction (valid on its own) was not applied either.
    assert_eq!(balance(&e.svc, a.address()), (46, 2));
    assert_eq!(total_balances(&e.svc), 100);

    // The authority may confirm anyone's bundle.
    let id3 = e
        .svc
        .bundle_submit(
            &ca,
            BundleSubmitRequest {
                transactions: vec![t(&a, &c, 1, 2)],
            },
            NOW,
        )
        .unwrap()
        .status
        .bundle_id;
    let auth = Caller::new(AUTHORITY_SESSION);
    assert_eq!(
        e.svc
            .bundle_confirm(&auth, BundleIdRequest { bundle_id: id3 }, NOW)
            .unwrap()
            .state,
        BundleState::Confirmed
    );

    // Sync: 6 log entries (3 submits, 3 finalizations), resumable one at a time.
    let all = e.svc.bundle_sync(BundleSyncRequest::default()).unwrap();
    assert_eq!(all.entries.len(), 6);
    assert!(!all.more);
    let states: Vec<_> = all
        .entries
        .iter()
        .map(|x| (x.bundle.bundle_id, x.state))
        .collect();
    assert_eq!(
        states,
        vec![
            (id, BundleState::Pending),
            (id, BundleState::Confirmed),
            (id2, BundleState::Pending),
            (id2, BundleState::Rejected),
            (id3, BundleState::Pending),
            (id3, BundleState::Confirmed),
        ]
    );
    let mut cursor = 0;
    let mut seen = Vec::new();
    loop {
        let page = e
            .svc
            .bundle_sync(BundleSyncRequest {
                cursor,
                limit: Some(4),
                include_transactions: true,
            })
            .unwrap();
        for en in &page.entries {
            assert_eq!(
                en.transactions.as_ref().unwrap().len() as u32,
                en.bundle.transaction_count
            );
            seen.push(en.cursor);
        }
        cursor = page.next_cursor;
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, vec![1, 2, 3, 4, 5, 6]);
    // Past the end.
    let end = e
        .svc
        .bundle_sync(BundleSyncRequest {
            cursor: u64::MAX,
            ..Default::default()
        })
        .unwrap();
    assert!(end.entries.is_empty());
    assert_eq!(end.next_cursor, u64::MAX);
}

/// `handle_async` answers exactly like `handle`, and a store that cannot commit fails the
/// request with `STORAGE_FAILURE` instead of hanging.
#[tokio::test]
async fn async_submission_matches_sync_and_fails_cleanly() {
    use std::sync::Arc;
    use xtmp_proto::MessageType;
    use xtmp_services::store::{RedbStore, RedbStoreOptions};
    use xtmp_services::types::BundleSubmitResponse;
    use xtmp_services::{Services, SigningKey};

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open_dir(dir.path(), &RedbStoreOptions::default()).unwrap());
    let svc = Services::with_store(
        store.clone(),
        config(dir.path()),
        SigningKey::from_seed(&[9; 32]).unwrap(),
    )
    .unwrap();
    let (a, b, authority) = (key(1), key(2), key(0xAA));
    let ca = login(&svc, 20, &a);
    let body = |txs| serde_json::to_vec(&BundleSubmitRequest { transactions: txs }).unwrap();
    // b is not registered yet: refused, and the miss is not remembered.
    let from_b = body(vec![t(&b, &a, 1, 0)]);
    let err = svc
        .handle_async(&ca, MessageType::BundleSubmit, &from_b, NOW)
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::WALLET_NOT_FOUND);
    login(&svc, 21, &b);
    let cauth = login(&svc, AUTHORITY_SESSION, &authority);
    for (to, nonce) in [(&a, 0), (&b, 1)] {
        let mint =
            client::sign_transaction(&authority, TxKind::Mint, to.address(), 5, nonce).unwrap();
        svc.wallet_transaction(&cauth, mint, NOW).unwrap();
    }

    let r = svc
        .handle_async(&ca, MessageType::BundleSubmit, &from_b, NOW)
        .await
        .unwrap();
    let r: BundleSubmitResponse = serde_json::from_slice(&r).unwrap();
    assert!(r.created);
    // The same through the synchronous path: the stored bundle, unchanged.
    let again = svc
        .handle(&ca, MessageType::BundleSubmit, &from_b, NOW + 1)
        .unwrap();
    let again: BundleSubmitResponse = serde_json::from_slice(&again).unwrap();
    assert!(!again.created);
    assert_eq!(again.status, r.status);
    let tx = client::sign_transaction(&a, TxKind::Transfer, b.address(), 2, 0).unwrap();
    let out = svc
        .handle_async(
            &ca,
            MessageType::WalletTransaction,
            &serde_json::to_vec(&tx).unwrap(),
            NOW,
        )
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        (v["from_balance"].as_u64(), v["to_balance"].as_u64()),
        (Some(3), Some(7))
    );
    // Other types are answered too (synchronously).
    let bal = svc
        .handle_async(&ca, MessageType::WalletBalance, b"", NOW)
        .await
        .unwrap();
    assert!(String::from_utf8(bal).unwrap().contains("\"balance\":3"));

    store.close();
    let late = body(vec![t(&a, &b, 1, 1)]);
    let err = svc
        .handle_async(&ca, MessageType::BundleSubmit, &late, NOW)
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::STORAGE_FAILURE);
    let err = svc
        .handle(&ca, MessageType::BundleSubmit, &late, NOW)
        .unwrap_err();
    assert_eq!(err.code(), codes::STORAGE_FAILURE);
}

async fn next(
    rx: &mut tokio::sync::broadcast::Receiver<xtmp_services::events::Notification>,
) -> xtmp_services::events::Notification {
    tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .expect("a notification")
        .unwrap()
}

/// A request dropped while it waits for its commit (its session ended, say) still commits,
/// and its notifications — and every later one — are still published.
#[tokio::test]
async fn a_dropped_async_request_does_not_hold_back_notifications() {
    use xtmp_proto::MessageType;
    use xtmp_services::events::Event;

    let e = env();
    let (a, b) = (key(1), key(2));
    let ca = login(&e.svc, 20, &a);
    login(&e.svc, 21, &b);
    fund(&e, a.address(), 10);
    let mut rx = e.svc.subscribe();
    let body = serde_json::to_vec(&BundleSubmitRequest {
        transactions: vec![t(&a, &b, 1, 0)],
    })
    .unwrap();
    {
        let mut fut = Box::pin(
            e.svc
                .handle_async(&ca, MessageType::BundleSubmit, &body, NOW),
        );
        // One poll: checks done, operation queued, now waiting for the commit.
        tokio::select! {
            biased;
            _ = &mut fut => panic!("a durable commit cannot be ready on the first poll"),
            () = std::future::ready(()) => {}
        }
    } // dropped here
    let tx = client::sign_transaction(&a, TxKind::Transfer, b.address(), 2, 0).unwrap();
    e.svc
        .handle_async(
            &ca,
            MessageType::WalletTransaction,
            &serde_json::to_vec(&tx).unwrap(),
            NOW,
        )
        .await
        .unwrap();
    let first = next(&mut rx).await;
    assert!(
        matches!(
            first.event,
            Event::Bundle {
                state: BundleState::Pending,
                ..
            }
        ),
        "{first:?}"
    );
    let second = next(&mut rx).await;
    assert!(
        matches!(second.event, Event::Wallet { address, .. } if address == a.address()),
        "{second:?}"
    );
    assert_eq!(second.seq, first.seq + 1);
    // The dropped submission was stored.
    let id = bundle_id(&[t(&a, &b, 1, 0).txid()]);
    assert_eq!(
        e.svc
            .bundle_status(BundleIdRequest { bundle_id: id })
            .unwrap()
            .state,
        BundleState::Pending
    );
}
