//! End to end over real loopback sockets: the runtime's server with `register_all`, and
//! its client.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use xtmp::{
    ClientError, ClientOptions, ServerHandle, ServerOptions, XTMPClient, XTMPMessageRouter,
    XTMPServer,
};
use xtmp_proto::xtmp_crypto::xwing::XWingSecretKey;
use xtmp_proto::MessageType;
use xtmp_services::error::codes;
use xtmp_services::types::{
    Certificate, LiveUpdatesRequest, QlockRequest, QlockResponse, RegistryStampRequest,
    StampReceipt, TlslsRequest, TlslsResponse, TxKind, WalletAuthResponse, WalletBalanceRequest,
    WalletBalanceResponse, WalletRegisterResponse, WalletTransactionResponse,
};
use xtmp_services::{
    client, register_all, static_key_fingerprint, verify_stamp, Services, SigningKey,
};

use crate::common::*;

/// The services on a redb store in `dir`, served on an ephemeral loopback port.
async fn start_server(dir: &std::path::Path) -> (Arc<Services>, Arc<XWingSecretKey>, ServerHandle) {
    let svc = Arc::new(Services::open(config(dir)).unwrap());
    let mut router = XTMPMessageRouter::new();
    register_all(&mut router, svc.clone());
    let server_key = Arc::new(XWingSecretKey::generate().unwrap());
    let mut opts = ServerOptions::new(server_key.clone());
    opts.bind_address = "127.0.0.1:0".parse().unwrap();
    let server = XTMPServer::bind(opts, router).await.unwrap();
    (svc, server_key, server)
}

async fn call<Q: Serialize, R: DeserializeOwned>(
    c: &XTMPClient,
    t: MessageType,
    q: &Q,
) -> Result<R, ClientError> {
    let resp = c.request(t, serde_json::to_vec(q).unwrap()).await?;
    Ok(resp.json().unwrap())
}

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> u16 {
    r.unwrap_err().code().expect("a remote error code").0
}

async fn login(c: &XTMPClient, k: &SigningKey) {
    let r: WalletRegisterResponse =
        call(c, MessageType::WalletRegister, &client::register_request(k))
            .await
            .unwrap();
    assert_eq!(r.address, k.address());
    let s1: WalletAuthResponse = call(
        c,
        MessageType::WalletAuth,
        &client::auth_challenge_request(k),
    )
    .await
    .unwrap();
    assert_eq!(s1.session_id, c.session_id());
    let s2: WalletAuthResponse = call(
        c,
        MessageType::WalletAuth,
        &client::auth_answer_request(k, &s1).unwrap(),
    )
    .await
    .unwrap();
    assert!(s2.authenticated);
}

async fn nonce(c: &XTMPClient, k: &SigningKey) -> u64 {
    let b: WalletBalanceResponse = call(
        c,
        MessageType::WalletBalance,
        &WalletBalanceRequest {
            address: Some(k.address()),
        },
    )
    .await
    .unwrap();
    b.next_nonce
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallets_transfers_live_updates_locks_over_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, server_key, server) = start_server(dir.path()).await;
    let addr = server.local_addr();
    let connect = |client_key: Option<Arc<XWingSecretKey>>| {
        let mut o = ClientOptions::new(server_key.public_key().clone());
        o.client_key = client_key;
        o.reconnect.enabled = false;
        XTMPClient::connect(addr, o)
    };

    let authority = key(0xAA);
    let (alice, bob) = (key(1), key(2));
    let ca = connect(None).await.unwrap();
    let cb = connect(None).await.unwrap();
    let cc = connect(None).await.unwrap();
    login(&ca, &authority).await;
    login(&cb, &alice).await;
    login(&cc, &bob).await;

    // Bob watches his wallet.
    let watch = LiveUpdatesRequest {
        wallets: vec![bob.address()],
        ..Default::default()
    };
    let mut live = cc
        .subscribe(
            MessageType::LiveUpdates,
            serde_json::to_vec(&watch).unwrap(),
        )
        .await
        .unwrap();
    let sub: Value = live.response().unwrap().json().unwrap();
    assert_eq!(sub["subscribed"], "LiveUpdates");

    // Fund alice, alice pays bob.
    let mint = client::sign_transaction(
        &authority,
        TxKind::Mint,
        alice.address(),
        100,
        nonce(&ca, &authority).await,
    )
    .unwrap();
    let _: WalletTransactionResponse = call(&ca, MessageType::WalletTransaction, &mint)
        .await
        .unwrap();
    let pay = client::sign_transaction(&alice, TxKind::Transfer, bob.address(), 40, 0).unwrap();
    let r: WalletTransactionResponse = call(&cb, MessageType::WalletTransaction, &pay)
        .await
        .unwrap();
    assert_eq!((r.from_balance, r.to_balance), (60, 40));

    // The live update arrives.
    let push = tokio::time::timeout(Duration::from_secs(10), live.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(push.message_type, MessageType::LiveUpdates);
    let ev: Value = serde_json::from_slice(&push.body).unwrap();
    assert_eq!(ev["kind"], "wallet");
    assert_eq!(ev["address"], bob.address().to_string());
    assert_eq!(ev["balance"], 40);
    assert_eq!(ev["txid"], pay.txid().to_string());

    // Failures come back as application error codes, and the session goes on.
    assert_eq!(
        code(call::<_, Value>(&cb, MessageType::WalletTransaction, &pay).await),
        codes::DUPLICATE_TRANSACTION.0
    );
    let theirs = client::sign_transaction(&bob, TxKind::Transfer, alice.address(), 1, 0).unwrap();
    assert_eq!(
        code(call::<_, Value>(&cb, MessageType::WalletTransaction, &theirs).await),
        codes::WRONG_WALLET.0
    );
    let mut forged = client::sign_transaction(&bob, TxKind::Transfer, bob.address(), 1, 1).unwrap();
    forged.from = alice.address();
    assert_eq!(
        code(call::<_, Value>(&cb, MessageType::WalletTransaction, &forged).await),
        codes::BAD_SIGNATURE.0
    );
    let broke = client::sign_transaction(&alice, TxKind::Transfer, bob.address(), 61, 1).unwrap();
    assert_eq!(
        code(call::<_, Value>(&cb, MessageType::WalletTransaction, &broke).await),
        codes::INSUFFICIENT_FUNDS.0
    );
    let garbage = cb
        .request(MessageType::WalletTransaction, b"{\"nope\":".to_vec())
        .await;
    assert_eq!(code(garbage), codes::BAD_REQUEST.0);
    assert_eq!(nonce(&cb, &alice).await, 1);

    // QLOCK: the response type is QLOCKResponse; a lock held by another session is refused
    // until the holder's session ends.
    let acq = QlockRequest::Acquire {
        name: "printer".into(),
        lease_ms: 60_000,
    };
    let resp = cb
        .request(MessageType::QLOCKRequest, serde_json::to_vec(&acq).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.message_type, MessageType::QLOCKResponse);
    let held: QlockResponse = resp.json().unwrap();
    assert!(held.held_by_you);
    assert_eq!(held.holder_wallet, Some(alice.address()));
    assert_eq!(
        code(call::<_, QlockResponse>(&cc, MessageType::QLOCKRequest, &acq).await),
        codes::LOCK_HELD.0
    );
    let alice_session = cb.session_id().unwrap();
    cb.close().await;
    let mut got = None;
    for _ in 0..100 {
        match call::<_, QlockResponse>(&cc, MessageType::QLOCKRequest, &acq).await {
            Ok(r) => {
                got = Some(r);
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Some(codes::LOCK_HELD));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let got = got.expect("the lock was freed when its session ended");
    assert!(got.fencing_token.unwrap() > held.fencing_token.unwrap());
    // Alice's wallet binding went with her session.
    assert_eq!(
        svc.session_wallet(xtmp_services::SessionId(alice_session)),
        None
    );
    assert_eq!(svc.metrics().unwrap().locks_held, 1);

    // Registry stamp, checked offline.
    let stamp: StampReceipt = call(
        &cc,
        MessageType::RegistryStamp,
        &RegistryStampRequest {
            digest: [5u8; 32].into(),
        },
    )
    .await
    .unwrap();
    verify_stamp(&stamp, svc.server_public_key().as_bytes()).unwrap();

    // TLSLS over a pqIK session: the session's client key is the proof of possession.
    let ck = Arc::new(XWingSecretKey::generate().unwrap());
    let fp = static_key_fingerprint(ck.public_key().as_bytes()).unwrap();
    let cd = connect(Some(ck.clone())).await.unwrap();
    let issue = TlslsRequest::Issue {
        subject: "bpi-node-7".into(),
        key_fingerprint: fp.into(),
        validity_secs: Some(3600),
    };
    let resp = cd
        .request(
            MessageType::TLSLSRequest,
            serde_json::to_vec(&issue).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.message_type, MessageType::TLSLSResponse);
    let cert: Certificate = resp.json::<TlslsResponse>().unwrap().certificate.unwrap();
    // A session without that key may not.
    assert_eq!(
        code(call::<_, TlslsResponse>(&cc, MessageType::TLSLSRequest, &issue).await),
        codes::KEY_PROOF_REQUIRED.0
    );
    let v: TlslsResponse = call(
        &cc,
        MessageType::TLSLSRequest,
        &TlslsRequest::Validate {
            certificate: cert.clone(),
        },
    )
    .await
    .unwrap();
    assert_eq!(v.valid, Some(true));
    let _: TlslsResponse = call(
        &cd,
        MessageType::TLSLSRequest,
        &TlslsRequest::Revoke {
            serial: cert.serial,
            reason: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        code(
            call::<_, TlslsResponse>(
                &cc,
                MessageType::TLSLSRequest,
                &TlslsRequest::Validate { certificate: cert }
            )
            .await
        ),
        codes::CERT_REVOKED.0
    );

    // Metrics stream.
    let mut metrics = cc
        .subscribe(
            MessageType::MetricsStream,
            br#"{"interval_ms":100}"#.to_vec(),
        )
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), metrics.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let m: Value = serde_json::from_slice(&m.body).unwrap();
    assert_eq!(m["services"]["supply"], 100);
    assert!(m["server"]["sessions_active"].as_u64().unwrap() >= 1);

    for c in [&ca, &cc, &cd] {
        c.close().await;
    }
    server.shutdown().await;
    assert_eq!(total_balances(&svc), 100);
}

/// Bundles through the runtime: a one-transfer bundle takes the inline path (checks on the
/// worker, commit awaited), a bundle over `INLINE_MAX_PAYLOAD` the blocking pool; both are
/// durable (visible to readers, which only see committed state) when the reply arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_over_loopback_inline_and_blocking() {
    use xtmp_services::runtime::INLINE_MAX_PAYLOAD;
    use xtmp_services::types::{
        BundleIdRequest, BundleState, BundleStatusResponse, BundleSubmitRequest,
        BundleSubmitResponse,
    };

    let dir = tempfile::tempdir().unwrap();
    let (svc, server_key, server) = start_server(dir.path()).await;
    let mut o = ClientOptions::new(server_key.public_key().clone());
    o.reconnect.enabled = false;
    let ca = XTMPClient::connect(server.local_addr(), o.clone())
        .await
        .unwrap();
    let cb = XTMPClient::connect(server.local_addr(), o).await.unwrap();
    let (authority, alice, bob) = (key(0xAA), key(1), key(2));
    login(&ca, &authority).await;
    login(&cb, &alice).await;
    let rb: WalletRegisterResponse = call(
        &cb,
        MessageType::WalletRegister,
        &client::register_request(&bob),
    )
    .await
    .unwrap();
    assert_eq!(rb.address, bob.address());
    let mint = client::sign_transaction(&authority, TxKind::Mint, alice.address(), 100, 0).unwrap();
    let _: WalletTransactionResponse = call(&ca, MessageType::WalletTransaction, &mint)
        .await
        .unwrap();

    let pay = |amount, nonce| {
        client::sign_transaction(&alice, TxKind::Transfer, bob.address(), amount, nonce).unwrap()
    };
    let small = BundleSubmitRequest {
        transactions: vec![pay(10, 0)],
    };
    assert!(serde_json::to_vec(&small).unwrap().len() <= INLINE_MAX_PAYLOAD);
    let large = BundleSubmitRequest {
        transactions: vec![pay(1, 0), pay(2, 1), pay(3, 2)],
    };
    assert!(serde_json::to_vec(&large).unwrap().len() > INLINE_MAX_PAYLOAD);
    for req in [&small, &large] {
        let r: BundleSubmitResponse = call(&cb, MessageType::BundleSubmit, req).await.unwrap();
        assert!(r.created);
        assert_eq!(r.status.state, BundleState::Pending);
        assert_eq!(r.status.transaction_count as usize, req.transactions.len());
        // Durable before the reply: a fresh snapshot sees it.
        let st = svc
            .bundle_status(BundleIdRequest {
                bundle_id: r.status.bundle_id,
            })
            .unwrap();
        assert_eq!(st, r.status);
        let again: BundleSubmitResponse = call(&cb, MessageType::BundleSubmit, req).await.unwrap();
        assert!(!again.created);
        assert_eq!(again.status, r.status);
        let seen: BundleStatusResponse = call(
            &ca,
            MessageType::BundleStatus,
            &BundleIdRequest {
                bundle_id: r.status.bundle_id,
            },
        )
        .await
        .unwrap();
        assert_eq!(seen, r.status);
    }
    // Failures on the inline path carry the transaction's own code.
    let forged = {
        let mut t =
            client::sign_transaction(&bob, TxKind::Transfer, authority.address(), 5, 0).unwrap();
        t.from = alice.address();
        t
    };
    let bad = BundleSubmitRequest {
        transactions: vec![forged],
    };
    assert_eq!(
        code(call::<_, Value>(&cb, MessageType::BundleSubmit, &bad).await),
        codes::BAD_SIGNATURE.0
    );
    assert_eq!(
        code(call::<_, Value>(&ca, MessageType::BundleSubmit, &bad).await),
        codes::BAD_SIGNATURE.0,
        "any wallet's session may submit a bundle, but the forgery fails"
    );
    let raw = cb
        .request(MessageType::BundleSubmit, b"{\"transactions\":[{".to_vec())
        .await;
    assert_eq!(code(raw), codes::BAD_REQUEST.0);
    let m = svc.metrics().unwrap();
    let op = m
        .operations
        .iter()
        .find(|o| o.message_type == "BundleSubmit")
        .unwrap();
    assert_eq!((op.requests, op.errors), (7, 3));
}
