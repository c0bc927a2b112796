//! Handshake plus request/response for every message-type family, acknowledgements, error
//! replies, unknown and reserved types, typed JSON helpers, concurrency and compression.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use xtmp::{
    builtin_router, ClientError, HandlerError, Reply, RouteOptions, ServerHandle, XTMPClient,
    XTMPMessageRouter,
};
use xtmp_proto::xtmp_crypto::xwing::XWingSecretKey;
use xtmp_proto::{ErrorCode, MessageType, XTMPFlags};

fn remote_code(e: &ClientError) -> ErrorCode {
    match e {
        ClientError::Remote { code, .. } => *code,
        other => panic!("expected an Error reply, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_family_round_trips() {
    let server = start(builtin_router(), |_| {}).await;
    let c = client(&server).await;

    // Connection management: handshake done; heartbeat RTT.
    let rtt = c.ping().await.unwrap();
    assert!(rtt < Duration::from_secs(5));

    // Wallet, bundle and registry families: echoed in a correlated `Response`.
    for t in [
        MessageType::WalletRegister,
        MessageType::WalletAuth,
        MessageType::WalletBalance,
        MessageType::WalletTransaction,
        MessageType::BundleSubmit,
        MessageType::BundleStatus,
        MessageType::BundleConfirm,
        MessageType::BundleSync,
        MessageType::RegistryQuery,
        MessageType::RegistryUpdate,
        MessageType::RegistryStamp,
    ] {
        let body = format!("{{\"type\":\"{t}\"}}").into_bytes();
        let r = c.request(t, body.clone()).await.unwrap();
        assert_eq!(r.message_type, MessageType::Response, "{t}");
        assert_eq!(r.body, body, "{t}");
    }
    // QLOCK / TLSLS: their own response types.
    let r = c
        .request(MessageType::QLOCKRequest, b"lock a".to_vec())
        .await
        .unwrap();
    assert_eq!(
        (r.message_type, r.body.as_slice()),
        (MessageType::QLOCKResponse, &b"lock a"[..])
    );
    let r = c
        .request(MessageType::TLSLSRequest, b"cert".to_vec())
        .await
        .unwrap();
    assert_eq!(
        (r.message_type, r.body.as_slice()),
        (MessageType::TLSLSResponse, &b"cert"[..])
    );

    // Real-time streams: subscribe and receive pushes.
    for t in [
        MessageType::LiveUpdates,
        MessageType::EventStream,
        MessageType::MetricsStream,
    ] {
        let mut sub = c
            .subscribe(t, br#"{"count":3,"interval_ms":5}"#.to_vec())
            .await
            .unwrap();
        let resp: serde_json::Value = sub.response().unwrap().json().unwrap();
        assert_eq!(resp["subscribed"], t.to_string());
        for i in 0..3u64 {
            let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(m.message_type, t);
            assert!(m.flags.contains(XTMPFlags::STREAMING));
            let v: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
            assert_eq!(v["index"], i);
        }
    }

    let sid = c.session_id().unwrap();
    let m = server.session_metrics(sid).unwrap();
    assert_eq!(m.session_id_hex, format!("{sid:016x}"));
    assert_eq!(m.connection_type, "TcpReliable");
    assert_eq!(m.encryption_type, "PostQuantum");
    assert!(m.messages_received >= 16);
    let status = server.status();
    assert_eq!(status.sessions_active, 1);
    assert_eq!(status.handshakes_completed, 1);
    assert_eq!(status.connections_by_type["TcpReliable"], 1);
    assert_eq!(status.listeners[0].address, server.local_addr().to_string());

    // Disconnect: the server forgets the session.
    c.close().await;
    eventually("session removed", || server.status().sessions_active == 0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_is_sent_once_the_handler_accepted() {
    let seen = Arc::new(AtomicU64::new(0));
    let mut router = XTMPMessageRouter::new();
    let s2 = seen.clone();
    router.register(MessageType::BundleSubmit, move |_ctx, req| {
        let s = s2.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            s.fetch_add(req.payload.len() as u64, Ordering::SeqCst);
            Ok(Reply::None)
        }
    });
    router.register(MessageType::BundleStatus, |_ctx, _req| async {
        Ok(Reply::Response(b"status".to_vec()))
    });
    let server = start(router, |_| {}).await;
    let c = client(&server).await;

    c.send(MessageType::BundleSubmit, vec![0u8; 10], true)
        .await
        .unwrap();
    assert_eq!(
        seen.load(Ordering::SeqCst),
        10,
        "the Ack came before the handler accepted"
    );
    // A type with a response: Ack first, response ignored by `send`.
    c.send(MessageType::BundleStatus, b"x".to_vec(), true)
        .await
        .unwrap();
    // An acknowledged send to an unknown type fails with the server's code.
    let e = c
        .send(MessageType::BundleConfirm, b"x".to_vec(), true)
        .await
        .unwrap_err();
    assert_eq!(remote_code(&e), ErrorCode::UNKNOWN_MESSAGE_TYPE);
    // Fire and forget: returns once written; the server's later error is counted.
    c.send(MessageType::BundleSubmit, vec![0u8; 5], false)
        .await
        .unwrap();
    eventually("fire-and-forget handled", || {
        seen.load(Ordering::SeqCst) == 15
    })
    .await;
    c.send(MessageType::BundleConfirm, b"x".to_vec(), false)
        .await
        .unwrap();
    eventually("error counted", || c.stats().unmatched_errors == 1).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_errors_unknown_and_reserved_types_become_error_replies() {
    let mut router = XTMPMessageRouter::new();
    router.register(MessageType::WalletTransaction, |_ctx, _req| async {
        Err::<Reply, _>(HandlerError::failed("insufficient funds"))
    });
    router.register(MessageType::WalletAuth, |_ctx, req| async move {
        if req.payload == b"boom" {
            panic!("handler bug");
        }
        Ok(Reply::Response(b"ok".to_vec()))
    });
    router.register_with(
        MessageType::RegistryUpdate,
        RouteOptions {
            require_client_key: true,
            ..RouteOptions::default()
        },
        |ctx, _req| async move { Ok(Reply::Response(hex_key(ctx.client_key).into_bytes())) },
    );
    let mut authorized = HashSet::new();
    let client_key = Arc::new(XWingSecretKey::from_seed(&[7; 32]));
    authorized.insert(xtmp_proto::fingerprint(client_key.public_key()));
    let server = start(router, |o| o.authorized_clients = authorized).await;
    let c = client(&server).await;

    let e = c
        .request(MessageType::WalletTransaction, b"{}".to_vec())
        .await
        .unwrap_err();
    assert_eq!(
        e,
        ClientError::Remote {
            code: ErrorCode::HANDLER_ERROR,
            reason: "insufficient funds".into()
        }
    );
    let e = c
        .request(MessageType::WalletAuth, b"boom".to_vec())
        .await
        .unwrap_err();
    assert_eq!(remote_code(&e), ErrorCode::INTERNAL);
    let e = c
        .request(MessageType(0x77), b"?".to_vec())
        .await
        .unwrap_err();
    assert_eq!(remote_code(&e), ErrorCode::UNKNOWN_MESSAGE_TYPE);
    let e = c
        .request(MessageType::Unknown, b"?".to_vec())
        .await
        .unwrap_err();
    assert_eq!(remote_code(&e), ErrorCode::UNKNOWN_MESSAGE_TYPE);
    let e = c
        .request(MessageType::BundleSync, b"?".to_vec())
        .await
        .unwrap_err();
    assert_eq!(remote_code(&e), ErrorCode::UNKNOWN_MESSAGE_TYPE);
    let e = c
        .request(MessageType::Response, b"?".to_vec())
        .await
        .unwrap_err();
    assert_eq!(remote_code(&e), ErrorCode::NOT_PERMITTED);
    let e = c
        .request(MessageType::RegistryUpdate, b"?".to_vec())
        .await
        .unwrap_err();
    assert_eq!(remote_code(&e), ErrorCode::UNAUTHORIZED);
    // The core refuses to seal types it owns, locally.
    assert!(matches!(
        c.request(MessageType::KeyUpdate, b"".to_vec()).await,
        Err(ClientError::Protocol(_))
    ));

    // The session went on through all of that.
    assert_eq!(
        c.request(MessageType::WalletAuth, b"fine".to_vec())
            .await
            .unwrap()
            .body,
        b"ok"
    );
    let status = server.status();
    assert_eq!(status.errors_by_code["UNKNOWN_MESSAGE_TYPE"], 3);
    assert_eq!(status.errors_by_code["HANDLER_ERROR"], 1);
    assert_eq!(status.errors_by_code["NOT_PERMITTED"], 1);
    assert_eq!(status.errors_by_code["UNAUTHORIZED"], 1);
    assert_eq!(status.sessions_active, 1);

    // With an authorized client key (pqIK) the protected route answers.
    let mut o = client_options();
    o.client_key = Some(client_key.clone());
    let ik = XTMPClient::connect(server.local_addr(), o).await.unwrap();
    let r = ik
        .request(MessageType::RegistryUpdate, b"?".to_vec())
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        hex_key(Some(xtmp_proto::fingerprint(client_key.public_key())))
    );
    server.shutdown().await;
}

fn hex_key(k: Option<[u8; 32]>) -> String {
    k.map(|k| k.iter().map(|b| format!("{b:02x}")).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_authentication_is_enforced() {
    let good = Arc::new(XWingSecretKey::from_seed(&[8; 32]));
    let bad = Arc::new(XWingSecretKey::from_seed(&[9; 32]));
    let mut authorized = HashSet::new();
    authorized.insert(xtmp_proto::fingerprint(good.public_key()));
    let server = start(builtin_router(), |o| {
        o.require_authentication = true;
        o.authorized_clients = authorized;
    })
    .await;
    let mut o = client_options();
    o.client_key = Some(good);
    let c = XTMPClient::connect(server.local_addr(), o.clone())
        .await
        .unwrap();
    assert_eq!(
        c.request(MessageType::WalletAuth, b"hi".to_vec())
            .await
            .unwrap()
            .body,
        b"hi"
    );
    o.client_key = Some(bad);
    let e = XTMPClient::connect(server.local_addr(), o.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UNAUTHORIZED), "{e:?}");
    o.client_key = None;
    let e = XTMPClient::connect(server.local_addr(), o)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UNAUTHORIZED), "{e:?}");
    assert_eq!(server.status().handshakes_failed, 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_json_helpers() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Balance {
        wallet: String,
    }
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Amount {
        wallet: String,
        amount: u64,
    }
    let mut router = XTMPMessageRouter::new();
    router.register_json(MessageType::WalletBalance, |_ctx, b: Balance| async move {
        Ok(Amount {
            amount: b.wallet.len() as u64 * 100,
            wallet: b.wallet,
        })
    });
    let server = start(router, |_| {}).await;
    let c = client(&server).await;
    let a: Amount = c
        .request_json(
            MessageType::WalletBalance,
            &Balance {
                wallet: "alice".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        a,
        Amount {
            wallet: "alice".into(),
            amount: 500
        }
    );
    let e = c
        .request(MessageType::WalletBalance, b"not json".to_vec())
        .await
        .unwrap_err();
    assert_eq!(remote_code(&e), ErrorCode::BAD_REQUEST);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_correlated() {
    let mut router = XTMPMessageRouter::new();
    router.register(MessageType::RegistryQuery, |_ctx, req| async move {
        // Finish in a different order than received.
        let n = u64::from_be_bytes(req.payload[..8].try_into().unwrap());
        tokio::time::sleep(Duration::from_millis((n * 7919) % 23)).await;
        Ok(Reply::Response(req.payload))
    });
    let server = start(router, |_| {}).await;
    let c = client(&server).await;
    let mut tasks = Vec::new();
    for i in 0..300u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let r = c
                .request(MessageType::RegistryQuery, i.to_be_bytes().to_vec())
                .await
                .unwrap();
            assert_eq!(r.body, i.to_be_bytes());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let m = server.sessions();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].messages_received, 300);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_applies_above_the_threshold() {
    let mut router = XTMPMessageRouter::new();
    router.register(MessageType::BundleSync, |_ctx, req| async move {
        // Reports whether the request arrived compressed, then answers with `n` bytes of text.
        let n: usize = std::str::from_utf8(&req.payload[..8])
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut body = format!("{}", req.flags.contains(XTMPFlags::COMPRESSED) as u8).into_bytes();
        body.extend(b"bundle-sync-record ".iter().cycle().take(n));
        Ok(Reply::Response(body))
    });
    let server = start(router, |o| {
        o.enable_compression = true;
        o.compression_threshold = 512;
    })
    .await;
    let c = client(&server).await;
    let big_request = {
        let mut p = format!("{:<8}", 65536).into_bytes();
        p.extend(b"x".repeat(4096));
        p
    };
    let before = server.status().bytes_sent;
    let r = c
        .request(MessageType::BundleSync, big_request)
        .await
        .unwrap();
    assert!(r.flags.contains(XTMPFlags::COMPRESSED));
    assert_eq!(
        r.body[0], b'1',
        "the 4 KiB request should have been compressed"
    );
    assert_eq!(r.body.len(), 65537);
    let sent = server.status().bytes_sent - before;
    assert!(sent < 16 * 1024, "response took {sent} bytes on the wire");

    let r = c
        .request(MessageType::BundleSync, format!("{:<8}", 100).into_bytes())
        .await
        .unwrap();
    assert!(!r.flags.contains(XTMPFlags::COMPRESSED));
    assert_eq!(r.body[0], b'0');
    server.shutdown().await;

    // Compression off: nothing is compressed.
    let mut router = XTMPMessageRouter::new();
    router.register(MessageType::BundleSync, |_ctx, _req| async move {
        Ok(Reply::Response(vec![b'a'; 8192]))
    });
    let server = start(router, |o| o.enable_compression = false).await;
    let c = client(&server).await;
    let r = c
        .request(MessageType::BundleSync, b"x".to_vec())
        .await
        .unwrap();
    assert!(!r.flags.contains(XTMPFlags::COMPRESSED));
    assert_eq!(r.body.len(), 8192);
    server.shutdown().await;
}

/// A server whose `BundleSubmit` handler records (id in the first 8 bytes, length) of
/// every message in arrival order, and a client with `max_in_flight` 8.
async fn recording_server() -> (
    ServerHandle,
    XTMPClient,
    Arc<std::sync::Mutex<Vec<(u64, usize)>>>,
) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let mut router = XTMPMessageRouter::new();
    router.register(MessageType::BundleSubmit, move |_ctx, req| {
        let s = s2.clone();
        async move {
            let i = u64::from_be_bytes(req.payload[..8].try_into().unwrap());
            s.lock().unwrap().push((i, req.payload.len()));
            Ok(Reply::None)
        }
    });
    let server = start(router, |_| {}).await;
    let mut o = client_options();
    o.max_in_flight = 8;
    let c = XTMPClient::connect(server.local_addr(), o).await.unwrap();
    (server, c, seen)
}

/// Fire-and-forget sends return once queued (bounded by `max_in_flight`) and go out in
/// order; `close` writes what is still queued before it says goodbye.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_and_forget_is_bounded_ordered_and_flushed_on_close() {
    const N: u64 = 2000;
    let (server, c, seen) = recording_server().await;
    for i in 0..N {
        let mut body = i.to_be_bytes().to_vec();
        body.resize(512, 0);
        c.send(MessageType::BundleSubmit, body, false)
            .await
            .unwrap();
    }
    // Most of them may still be queued here; close must write them first.
    c.close().await;
    eventually("every fire-and-forget message handled", || {
        seen.lock().unwrap().len() as u64 == N
    })
    .await;
    assert_eq!(
        *seen.lock().unwrap(),
        (0..N).map(|i| (i, 512)).collect::<Vec<_>>()
    );
    server.shutdown().await;
}

/// `send_batch` seals many messages under one lock; they keep their place among `send`s
/// before and after, a batch larger than the write buffer waits for room, an oversized
/// payload fails the whole batch before anything is sent, and `close` flushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_batch_keeps_order_with_send_and_waits_for_room() {
    let (server, c, seen) = recording_server().await;
    let body = |i: u64, len: usize| {
        let mut b = i.to_be_bytes().to_vec();
        b.resize(len, 7);
        b
    };
    let mut next = 0u64;
    let mut expect = Vec::new();
    for round in 0..4 {
        // A few queued sends first: the batch must not overtake them.
        for _ in 0..5 {
            c.send(MessageType::BundleSubmit, body(next, 100), false)
                .await
                .unwrap();
            expect.push((next, 100));
            next += 1;
        }
        // 300 KiB: several times the batch write buffer (64 KiB).
        let len = 1024 + round;
        let batch: Vec<Vec<u8>> = (0..300).map(|k| body(next + k, len)).collect();
        c.send_batch(MessageType::BundleSubmit, &batch)
            .await
            .unwrap();
        expect.extend((0..300).map(|k| (next + k, len)));
        next += 300;
    }
    // One payload over max_payload: refused, and none of its batch is sent.
    let max = client_options().max_payload as usize;
    let bad = vec![body(9_999, 100), vec![0u8; max + 1]];
    assert!(matches!(
        c.send_batch(MessageType::BundleSubmit, &bad).await,
        Err(ClientError::PayloadTooLarge { .. })
    ));
    c.send_batch::<Vec<u8>>(MessageType::BundleSubmit, &[])
        .await
        .unwrap();
    c.close().await;
    let n = expect.len();
    eventually("every batched message handled", || {
        seen.lock().unwrap().len() == n
    })
    .await;
    assert_eq!(*seen.lock().unwrap(), expect);
    server.shutdown().await;
}
