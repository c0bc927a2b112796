//! The WebSocket transport (`WebSocketFallback`): the request/response suite of
//! `request_response.rs` over `ws://` and `wss://` (self-signed certificate made with
//! rcgen), the transport order with per-step timeouts, reconnection, shared limits,
//! bad input at the HTTP and WebSocket levels, and TLS trust settings.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use xtmp::ws::rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use xtmp::ws::{CLOSE_NOT_ONE_FRAME, CLOSE_TEXT_MESSAGE, CLOSE_TOO_BIG};
use xtmp::{
    builtin_router, ClientError, ClientOptions, ConnectionType, HandlerError, Reply, RouteOptions,
    ServerHandle, ServerOptions, TransportStep, WebSocketListenerOptions, WebSocketTarget,
    WsServerTls, WsTlsTrust, WsUrl, XTMPClient, XTMPMessageRouter,
};
use xtmp_proto::xtmp_crypto::xwing::XWingSecretKey;
use xtmp_proto::{ErrorCode, MessageType, XTMPFlags};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Tls,
}

struct TestCert {
    cert: CertificateDer<'static>,
    cert_pem: String,
    key_der: Vec<u8>,
    key_pem: String,
}

/// A self-signed certificate for `localhost` and `127.0.0.1` (made once per test binary).
fn test_cert() -> &'static TestCert {
    static CERT: OnceLock<TestCert> = OnceLock::new();
    CERT.get_or_init(|| {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        TestCert {
            cert: ck.cert.der().clone(),
            cert_pem: ck.cert.pem(),
            key_der: ck.signing_key.serialize_der(),
            key_pem: ck.signing_key.serialize_pem(),
        }
    })
}

fn server_tls() -> WsServerTls {
    let c = test_cert();
    WsServerTls::from_der(
        vec![c.cert.clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key_der.clone())),
    )
    .unwrap()
}

fn with_ws(o: &mut ServerOptions, mode: Mode) {
    let mut w = WebSocketListenerOptions::new("127.0.0.1:0".parse().unwrap());
    if mode == Mode::Tls {
        w.tls = Some(server_tls());
    }
    o.websocket = Some(w);
}

async fn start_ws(
    router: XTMPMessageRouter,
    mode: Mode,
    tweak: impl FnOnce(&mut ServerOptions),
) -> ServerHandle {
    start(router, |o| {
        with_ws(o, mode);
        tweak(o);
    })
    .await
}

/// The server's WebSocket endpoint, trusting the test certificate for `wss://`.
fn target(server: &ServerHandle) -> WebSocketTarget {
    let url: WsUrl = server.websocket_url().unwrap().parse().unwrap();
    let tls_trust = if url.is_tls() {
        WsTlsTrust::Certificates(vec![test_cert().cert.clone()])
    } else {
        WsTlsTrust::SystemRoots
    };
    WebSocketTarget { url, tls_trust }
}

async fn ws_client_with(server: &ServerHandle, o: ClientOptions) -> XTMPClient {
    let c = XTMPClient::connect_websocket(target(server), o)
        .await
        .unwrap();
    assert_eq!(c.transport(), Some(ConnectionType::WebSocketFallback));
    c
}

async fn ws_client(server: &ServerHandle) -> XTMPClient {
    ws_client_with(server, client_options()).await
}

fn remote_code(e: &ClientError) -> ErrorCode {
    match e {
        ClientError::Remote { code, .. } => *code,
        other => panic!("expected an Error reply, got {other:?}"),
    }
}

/// Runs a case over `ws://` and over `wss://`.
macro_rules! ws_and_wss {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ws() {
                super::$name(super::Mode::Plain).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn wss() {
                super::$name(super::Mode::Tls).await
            }
        }
    };
}

// ------------------------------------------------------------------------------------
// The request/response suite over WebSocket
// ------------------------------------------------------------------------------------

ws_and_wss!(every_message_family_round_trips);
async fn every_message_family_round_trips(mode: Mode) {
    let server = start_ws(builtin_router(), mode, |_| {}).await;
    let c = ws_client(&server).await;
    let info = c.transport_info().unwrap();
    assert_eq!(info.endpoint, server.websocket_url().unwrap());
    assert!(info.skipped.is_empty());

    let rtt = c.ping().await.unwrap();
    assert!(rtt < Duration::from_secs(5));
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
    assert_eq!(m.connection_type, "WebSocketFallback");
    assert_eq!(m.encryption_type, "PostQuantum");
    assert!(m.messages_received >= 16);
    let status = server.status();
    assert_eq!(status.sessions_active, 1);
    assert_eq!(status.connections_by_type["WebSocketFallback"], 1);
    assert_eq!(status.listeners.len(), 2);
    assert_eq!(status.listeners[0].kind, "tcp");
    let ws = &status.listeners[1];
    let (kind, scheme) = match mode {
        Mode::Plain => ("websocket", "ws"),
        Mode::Tls => ("websocket-tls", "wss"),
    };
    assert_eq!(ws.kind, kind);
    assert_eq!(
        ws.address,
        format!("{scheme}://{}/xtmp", server.websocket_addr().unwrap())
    );

    c.close().await;
    eventually("session removed", || server.status().sessions_active == 0).await;
    server.shutdown().await;
}

ws_and_wss!(ack_is_sent_once_the_handler_accepted);
async fn ack_is_sent_once_the_handler_accepted(mode: Mode) {
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
    let server = start_ws(router, mode, |_| {}).await;
    let c = ws_client(&server).await;
    c.send(MessageType::BundleSubmit, vec![0u8; 10], true)
        .await
        .unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 10);
    c.send(MessageType::BundleStatus, b"x".to_vec(), true)
        .await
        .unwrap();
    let e = c
        .send(MessageType::BundleConfirm, b"x".to_vec(), true)
        .await
        .unwrap_err();
    assert_eq!(remote_code(&e), ErrorCode::UNKNOWN_MESSAGE_TYPE);
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

fn hex_key(k: Option<[u8; 32]>) -> String {
    k.map(|k| k.iter().map(|b| format!("{b:02x}")).collect())
        .unwrap_or_default()
}

ws_and_wss!(error_replies_and_unknown_types);
async fn error_replies_and_unknown_types(mode: Mode) {
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
    let server = start_ws(router, mode, |o| o.authorized_clients = authorized).await;
    let c = ws_client(&server).await;

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
    for t in [
        MessageType(0x77),
        MessageType::Unknown,
        MessageType::BundleSync,
    ] {
        let e = c.request(t, b"?".to_vec()).await.unwrap_err();
        assert_eq!(remote_code(&e), ErrorCode::UNKNOWN_MESSAGE_TYPE, "{t:?}");
    }
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
    assert!(matches!(
        c.request(MessageType::KeyUpdate, b"".to_vec()).await,
        Err(ClientError::Protocol(_))
    ));
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
    assert_eq!(status.sessions_active, 1);

    // pqIK over WebSocket: the protected route answers with the client's fingerprint.
    let mut o = client_options();
    o.client_key = Some(client_key.clone());
    let ik = ws_client_with(&server, o).await;
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

ws_and_wss!(mutual_authentication_is_enforced);
async fn mutual_authentication_is_enforced(mode: Mode) {
    let good = Arc::new(XWingSecretKey::from_seed(&[8; 32]));
    let bad = Arc::new(XWingSecretKey::from_seed(&[9; 32]));
    let mut authorized = HashSet::new();
    authorized.insert(xtmp_proto::fingerprint(good.public_key()));
    let server = start_ws(builtin_router(), mode, |o| {
        o.require_authentication = true;
        o.authorized_clients = authorized;
    })
    .await;
    let mut o = client_options();
    o.client_key = Some(good);
    let c = ws_client_with(&server, o.clone()).await;
    assert_eq!(
        c.request(MessageType::WalletAuth, b"hi".to_vec())
            .await
            .unwrap()
            .body,
        b"hi"
    );
    o.client_key = Some(bad);
    let e = XTMPClient::connect_websocket(target(&server), o.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UNAUTHORIZED), "{e:?}");
    o.client_key = None;
    let e = XTMPClient::connect_websocket(target(&server), o)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UNAUTHORIZED), "{e:?}");
    assert_eq!(server.status().handshakes_failed, 2);
    server.shutdown().await;
}

ws_and_wss!(typed_json_and_bad_request);
async fn typed_json_and_bad_request(mode: Mode) {
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
    let server = start_ws(router, mode, |_| {}).await;
    let c = ws_client(&server).await;
    let a: Amount = c
        .request_json(
            MessageType::WalletBalance,
            &Balance {
                wallet: "alice".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(a.amount, 500);
    let e = c
        .request(MessageType::WalletBalance, b"not json".to_vec())
        .await
        .unwrap_err();
    assert_eq!(remote_code(&e), ErrorCode::BAD_REQUEST);
    server.shutdown().await;
}

ws_and_wss!(concurrent_requests_and_large_messages);
async fn concurrent_requests_and_large_messages(mode: Mode) {
    let mut router = XTMPMessageRouter::new();
    router.register(MessageType::RegistryQuery, |_ctx, req| async move {
        let n = u64::from_be_bytes(req.payload[..8].try_into().unwrap());
        tokio::time::sleep(Duration::from_millis((n * 7919) % 23)).await;
        Ok(Reply::Response(req.payload))
    });
    router.register(MessageType::BundleSync, |_ctx, req| async move {
        // Echo with a length prefix: large frames in both directions.
        let mut body = (req.payload.len() as u64).to_be_bytes().to_vec();
        body.extend_from_slice(&req.payload);
        Ok(Reply::Response(body))
    });
    let server = start_ws(router, mode, |o| o.enable_compression = false).await;
    let c = ws_client(&server).await;
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
    // 4 MiB of incompressible-looking bytes each way, as one WebSocket message each.
    let big: Vec<u8> = (0..4 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let r = c
        .request(MessageType::BundleSync, big.clone())
        .await
        .unwrap();
    assert_eq!(&r.body[..8], &(big.len() as u64).to_be_bytes());
    assert!(r.body[8..] == big[..]);
    let m = server.sessions();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].messages_received, 301);
    server.shutdown().await;
}

ws_and_wss!(compression_applies_above_the_threshold);
async fn compression_applies_above_the_threshold(mode: Mode) {
    let mut router = XTMPMessageRouter::new();
    router.register(MessageType::BundleSync, |_ctx, req| async move {
        let mut body = format!("{}", req.flags.contains(XTMPFlags::COMPRESSED) as u8).into_bytes();
        body.extend(b"bundle-sync-record ".iter().cycle().take(65536));
        Ok(Reply::Response(body))
    });
    let server = start_ws(router, mode, |o| {
        o.enable_compression = true;
        o.compression_threshold = 512;
    })
    .await;
    let c = ws_client(&server).await;
    let before = server.status().bytes_sent;
    let r = c
        .request(MessageType::BundleSync, b"x".repeat(4096))
        .await
        .unwrap();
    assert!(r.flags.contains(XTMPFlags::COMPRESSED));
    assert_eq!(r.body[0], b'1');
    assert_eq!(r.body.len(), 65537);
    let sent = server.status().bytes_sent - before;
    assert!(sent < 16 * 1024, "response took {sent} bytes");
    server.shutdown().await;
}

// ------------------------------------------------------------------------------------
// Transport order
// ------------------------------------------------------------------------------------

/// A port nothing listens on.
async fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_order_falls_back_to_websocket() {
    let server = start_ws(builtin_router(), Mode::Plain, |_| {}).await;
    let ws_step = TransportStep::websocket(target(&server));

    // TCP refused (nothing listens) -> WebSocket.
    let dead = dead_port().await;
    let mut o = client_options();
    o.reconnect.enabled = false;
    o.transport_order = vec![TransportStep::tcp(), ws_step.clone()];
    let c = XTMPClient::connect(dead, o.clone()).await.unwrap();
    assert_eq!(c.transport(), Some(ConnectionType::WebSocketFallback));
    let info = c.transport_info().unwrap();
    assert_eq!(info.skipped.len(), 1);
    assert_eq!(info.skipped[0].connection_type, ConnectionType::TcpReliable);
    assert_eq!(info.skipped[0].endpoint, dead.to_string());
    assert_eq!(
        c.request(MessageType::WalletBalance, b"w".to_vec())
            .await
            .unwrap()
            .body,
        b"w"
    );
    c.close().await;

    // TCP swallowed by a "firewall" that accepts and never answers: the step's own
    // timeout ends it, then WebSocket.
    let blackhole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole = blackhole.local_addr().unwrap();
    let keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = blackhole.accept().await {
            held.push(s);
        }
    });
    o.transport_order = vec![
        TransportStep::tcp().with_timeout(Duration::from_millis(300)),
        ws_step.clone(),
    ];
    let t0 = Instant::now();
    let c = XTMPClient::connect(hole, o.clone()).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(c.transport(), Some(ConnectionType::WebSocketFallback));
    assert!(c.transport_info().unwrap().skipped[0]
        .error
        .contains("timed out"));
    c.close().await;
    keep.abort();

    // TCP works: it is the first choice, and the order stops there.
    o.transport_order = vec![TransportStep::tcp(), ws_step.clone()];
    let c = XTMPClient::connect(server.local_addr(), o.clone())
        .await
        .unwrap();
    assert_eq!(c.transport(), Some(ConnectionType::TcpReliable));
    c.close().await;

    // A step the client cannot use (a WebSocket step without a URL) is skipped like an
    // unreachable one.
    o.transport_order = vec![
        TransportStep {
            connection_type: ConnectionType::WebSocketFallback,
            ..TransportStep::tcp()
        },
        ws_step.clone(),
    ];
    let c = XTMPClient::connect(server.local_addr(), o.clone())
        .await
        .unwrap();
    assert_eq!(c.transport(), Some(ConnectionType::WebSocketFallback));
    c.close().await;

    // Everything fails: every step's error is reported, in order.
    let bad_ws: WsUrl = format!("ws://{}/xtmp", dead_port().await).parse().unwrap();
    o.transport_order = vec![TransportStep::tcp(), TransportStep::websocket(bad_ws)];
    let e = XTMPClient::connect(dead, o.clone()).await.unwrap_err();
    match &e {
        ClientError::AllTransportsFailed(v) => {
            assert_eq!(v.len(), 2);
            assert_eq!(v[0].0, ConnectionType::TcpReliable);
            assert!(matches!(v[0].1, ClientError::Connect { .. }));
            assert_eq!(v[1].0, ConnectionType::WebSocketFallback);
            assert!(matches!(v[1].1, ClientError::WebSocket { .. }));
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("TcpReliable"), "{e}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_stops_the_order() {
    let server = start_ws(builtin_router(), Mode::Plain, |o| {
        o.require_authentication = true;
    })
    .await;
    let mut o = client_options();
    o.transport_order = vec![
        TransportStep::websocket(target(&server)),
        TransportStep::tcp(),
    ];
    let e = XTMPClient::connect(server.local_addr(), o)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UNAUTHORIZED), "{e:?}");
    assert_eq!(server.status().handshakes_failed, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_over_websocket_and_resubscribes() {
    let server = start_ws(builtin_router(), Mode::Plain, |_| {}).await;
    let c = ws_client(&server).await;
    let mut sub = c
        .subscribe(
            MessageType::MetricsStream,
            br#"{"count":1000,"interval_ms":20}"#.to_vec(),
        )
        .await
        .unwrap();
    sub.recv().await.unwrap().unwrap();
    let first = c.session_id().unwrap();
    assert!(server
        .manager()
        .disconnect(first, ErrorCode::INTERNAL, "test"));
    // The gap is reported, then pushes resume on the new session, over WebSocket again.
    let mut saw_gap = false;
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .unwrap()
            .unwrap();
        match item {
            Err(_) => saw_gap = true,
            Ok(_) if saw_gap => break,
            Ok(_) => {}
        }
    }
    assert_ne!(c.session_id(), Some(first));
    assert_eq!(c.transport(), Some(ConnectionType::WebSocketFallback));
    assert_eq!(c.stats().reconnects, 1);
    assert_eq!(
        c.request(MessageType::WalletAuth, b"again".to_vec())
            .await
            .unwrap()
            .body,
        b"again"
    );
    server.shutdown().await;
}

// ------------------------------------------------------------------------------------
// Limits shared with TCP, shutdown
// ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_shared_with_tcp() {
    // max_connections counts TCP and WebSocket together; a full server answers the
    // upgrade with HTTP 503.
    let server = start_ws(builtin_router(), Mode::Plain, |o| o.max_connections = 2).await;
    let mut o = client_options();
    o.reconnect.enabled = false;
    let tcp = XTMPClient::connect(server.local_addr(), o.clone())
        .await
        .unwrap();
    let ws = ws_client_with(&server, o.clone()).await;
    let e = XTMPClient::connect_websocket(target(&server), o.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::WebSocket { reason, .. } if reason.contains("503")),
        "{e:?}"
    );
    assert_eq!(server.status().connections_by_type["TcpReliable"], 1);
    assert_eq!(server.status().connections_by_type["WebSocketFallback"], 1);
    tcp.close().await;
    ws.close().await;
    server.shutdown().await;

    // The per-IP handshake rate limit is one bucket for both transports.
    let server = start_ws(builtin_router(), Mode::Plain, |o| {
        o.handshakes_per_second_per_ip = 2
    })
    .await;
    let _a = XTMPClient::connect(server.local_addr(), o.clone())
        .await
        .unwrap();
    let _b = ws_client_with(&server, o.clone()).await;
    let e = XTMPClient::connect_websocket(target(&server), o.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::RATE_LIMITED), "{e:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_disconnects_websocket_sessions() {
    let server = start_ws(builtin_router(), Mode::Tls, |_| {}).await;
    let mut o = client_options();
    o.reconnect.enabled = false;
    let c = ws_client_with(&server, o).await;
    let mut sub = c
        .subscribe(
            MessageType::EventStream,
            br#"{"count":100000,"interval_ms":10}"#.to_vec(),
        )
        .await
        .unwrap();
    sub.recv().await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(15), server.shutdown())
        .await
        .unwrap();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .unwrap()
        {
            Some(Ok(_)) => {}
            Some(Err(e)) => break e,
            None => panic!("subscription ended without a reason"),
        }
    };
    assert_eq!(end.code(), Some(ErrorCode::SHUTTING_DOWN), "{end:?}");
    // The listener is gone.
    assert!(TcpStream::connect(server.websocket_addr().unwrap())
        .await
        .is_err());
}

// ------------------------------------------------------------------------------------
// Bad input: HTTP and WebSocket level; the server keeps serving
// ------------------------------------------------------------------------------------

/// Sends `request` on a fresh connection and returns the HTTP status line's code (0 if
/// the server closed without an answer).
async fn http_status(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A raw WebSocket client (tokio-tungstenite) speaking `xtmp.v1`.
async fn raw_ws(server: &ServerHandle) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let url = server.websocket_url().unwrap();
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("xtmp.v1"),
    );
    let tcp = TcpStream::connect(server.websocket_addr().unwrap())
        .await
        .unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "xtmp.v1");
    ws
}

/// The close code the server ends `ws` with (skipping binary messages before it).
async fn close_code<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(c))) => return c.map(|c| u16::from(c.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upgrades_and_messages_are_refused_and_the_server_keeps_serving() {
    let server = start_ws(builtin_router(), Mode::Plain, |o| {
        o.handshake_timeout = Duration::from_secs(2);
        o.max_payload = 64 * 1024;
    })
    .await;
    let addr = server.websocket_addr().unwrap();

    // HTTP level.
    assert_eq!(
        http_status(addr, b"GET /xtmp HTTP/1.1\r\nHost: x\r\n\r\n").await,
        426
    );
    assert_eq!(
        http_status(
            addr,
            b"GET /other HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"
        )
        .await,
        404
    );
    assert_eq!(
        http_status(addr, b"POST /xtmp HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").await,
        405
    );
    assert_eq!(
        http_status(
            addr,
            b"GET /xtmp HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        )
        .await,
        400
    );
    let mut huge = b"GET /xtmp HTTP/1.1\r\nX-Pad: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 16 * 1024));
    assert_eq!(http_status(addr, &huge).await, 431);
    assert_eq!(
        http_status(addr, b"\x16\x03\x01\x02\x00garbage\r\n\r\n").await,
        400
    );
    // Valid upgrade headers but no Sec-WebSocket-Key: tungstenite refuses; no crash.
    assert_eq!(
        http_status(
            addr,
            b"GET /xtmp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        .await,
        0
    );
    // A client that never finishes its request head is cut off at handshake_timeout.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /xtmp HTTP/1.1\r\n").await.unwrap();
    let mut buf = [0u8; 16];
    let t0 = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );

    // WebSocket level: text, several frames in one message, a short message, oversize.
    let frame = xtmp::plain_error_frame(ErrorCode::NO_ERROR, "x");
    let mut ws = raw_ws(&server).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(CLOSE_TEXT_MESSAGE));

    let mut ws = raw_ws(&server).await;
    ws.send(Message::Binary(
        [frame.clone(), frame.clone()].concat().into(),
    ))
    .await
    .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(CLOSE_NOT_ONE_FRAME));

    let mut ws = raw_ws(&server).await;
    ws.send(Message::Binary(frame[..50].to_vec().into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(CLOSE_NOT_ONE_FRAME));

    let mut ws = raw_ws(&server).await;
    let _ = ws
        .send(Message::Binary(vec![0u8; 96 + 64 * 1024 + 1].into()))
        .await;
    assert_eq!(close_code(&mut ws).await, Some(CLOSE_TOO_BIG));

    // One whole message with a broken XTMP header (bad magic): the XTMP layer answers
    // with a plain Error frame, as on TCP, then the WebSocket closes normally.
    let mut ws = raw_ws(&server).await;
    let mut bad = frame.clone();
    bad[0] = b'Y';
    ws.send(Message::Binary(bad.into())).await.unwrap();
    let reply = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Binary(b))) => break b,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("{other:?}"),
        }
    };
    let e = xtmp::parse_plain_error(&reply).unwrap();
    assert_eq!(e.code, ErrorCode::MALFORMED_FRAME);
    assert_eq!(close_code(&mut ws).await, Some(1000));

    // A peer that upgrades and then sends nothing is closed at the handshake timeout
    // (a plain Error TIMEOUT, then a normal close).
    let mut idle = raw_ws(&server).await;
    let t0 = Instant::now();
    let _ = close_code(&mut idle).await;
    assert!(t0.elapsed() >= Duration::from_millis(1500));

    // Through all of that the server kept serving.
    let c = ws_client(&server).await;
    assert_eq!(
        c.request(MessageType::WalletBalance, b"ok".to_vec())
            .await
            .unwrap()
            .body,
        b"ok"
    );
    assert_eq!(server.status().sessions_active, 1);
    server.shutdown().await;
}

// ------------------------------------------------------------------------------------
// TLS settings
// ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_certificate_checks() {
    // The server's certificate and key from PEM files, as the configuration gives them.
    let dir = std::env::temp_dir().join(format!("xtmp-ws-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, &test_cert().cert_pem).unwrap();
    std::fs::write(&key_file, &test_cert().key_pem).unwrap();
    let tls = WsServerTls::from_pem_files(&cert_file, &key_file).unwrap();
    assert!(WsServerTls::from_pem_files(&key_file, &key_file).is_err());
    assert!(WsServerTls::from_pem_files(&cert_file, &dir.join("missing.pem")).is_err());
    let server = start(builtin_router(), |o| {
        let mut w = WebSocketListenerOptions::new("127.0.0.1:0".parse().unwrap());
        w.tls = Some(tls);
        w.path = "/v1/xtmp".into();
        o.websocket = Some(w);
    })
    .await;
    let url: WsUrl = server.websocket_url().unwrap().parse().unwrap();
    assert!(url.is_tls());
    assert_eq!(url.path(), "/v1/xtmp");
    let mut o = client_options();
    o.reconnect.enabled = false;

    // Trusting the certificate from its PEM file: works (by IP and by name).
    let trust = WsTlsTrust::from_pem_file(&cert_file).unwrap();
    let c = XTMPClient::connect_websocket(
        WebSocketTarget {
            url: url.clone(),
            tls_trust: trust.clone(),
        },
        o.clone(),
    )
    .await
    .unwrap();
    c.close().await;
    let by_name: WsUrl = format!("wss://localhost:{}/v1/xtmp", url.port())
        .parse()
        .unwrap();
    let c = XTMPClient::connect_websocket(
        WebSocketTarget {
            url: by_name,
            tls_trust: trust,
        },
        o.clone(),
    )
    .await
    .unwrap();
    c.close().await;

    // The system roots do not know a self-signed certificate: a TLS error.
    let e = XTMPClient::connect_websocket(url.clone(), o.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::WebSocket { reason, .. } if reason.contains("TLS")),
        "{e:?}"
    );
    // Accepting any certificate works (the pinned XTMP key still authenticates).
    let c = XTMPClient::connect_websocket(
        WebSocketTarget {
            url: url.clone(),
            tls_trust: WsTlsTrust::DangerousAcceptAnyCertificate,
        },
        o.clone(),
    )
    .await
    .unwrap();
    c.close().await;
    // ...but not with the wrong server key.
    let mut wrong = o.clone();
    wrong.server_key = XWingSecretKey::from_seed(&[1; 32]).public_key().clone();
    let e = XTMPClient::connect_websocket(
        WebSocketTarget {
            url: url.clone(),
            tls_trust: WsTlsTrust::DangerousAcceptAnyCertificate,
        },
        wrong,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, ClientError::Handshake(_) | ClientError::Refused { .. }),
        "{e:?}"
    );
    // Plain ws:// to the TLS port fails cleanly.
    let plain: WsUrl = format!("ws://127.0.0.1:{}/v1/xtmp", url.port())
        .parse()
        .unwrap();
    let mut short = o.clone();
    short.connect_timeout = Duration::from_secs(3);
    assert!(XTMPClient::connect_websocket(plain, short).await.is_err());
    let _ = std::fs::remove_dir_all(&dir);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_websocket_options_are_refused() {
    for tweak in [
        (|w: &mut WebSocketListenerOptions| w.path = "xtmp".into()) as fn(&mut _),
        |w| w.path = "/a b".into(),
        |w| w.max_upgrade_head = 10,
        |w| w.max_pending_upgrades = 0,
    ] {
        let mut o = server_options();
        let mut w = WebSocketListenerOptions::new("127.0.0.1:0".parse().unwrap());
        tweak(&mut w);
        o.websocket = Some(w);
        assert!(o.validate().is_err());
        assert!(xtmp::XTMPServer::bind(o, builtin_router()).await.is_err());
    }
    // The WebSocket port is taken: bind fails, naming it.
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut o = server_options();
    o.websocket = Some(WebSocketListenerOptions::new(taken.local_addr().unwrap()));
    let e = xtmp::XTMPServer::bind(o, builtin_router())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains(&taken.local_addr().unwrap().to_string()),
        "{e}"
    );
}
