//! max_connections, idle timeout, handshake timeout, cookies under load, queue limits.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use xtmp::{builtin_router, ClientError, XTMPClient};
use xtmp_proto::control::DisconnectPayload;
use xtmp_proto::{ErrorCode, MessageType};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_over_max_connections_is_refused_with_server_busy() {
    let server = start(builtin_router(), |o| o.max_connections = 3).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(client(&server).await);
    }
    let e = XTMPClient::connect(server.local_addr(), client_options())
        .await
        .unwrap_err();
    assert_eq!(
        e,
        ClientError::Refused {
            code: ErrorCode::SERVER_BUSY,
            reason: "server is at max_connections".into()
        }
    );
    let s = server.status();
    assert_eq!(s.connections_refused, 1);
    assert_eq!(s.errors_by_code["SERVER_BUSY"], 1);
    assert_eq!(s.sessions_active, 3);
    // The others are unaffected; freeing a slot lets a new client in.
    for c in &clients {
        c.request(MessageType::WalletAuth, b"ok".to_vec())
            .await
            .unwrap();
    }
    clients.pop().unwrap().close().await;
    eventually("slot freed", || server.status().connections_active == 2).await;
    let c = XTMPClient::connect(server.local_addr(), client_options())
        .await
        .unwrap();
    c.request(MessageType::WalletAuth, b"ok".to_vec())
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_expire_but_active_ones_do_not() {
    let server = start(builtin_router(), |o| {
        o.session_timeout = Duration::from_millis(400);
        o.heartbeat_interval = Duration::from_millis(100);
    })
    .await;
    // Active: a request every 100 ms for 1 s keeps the session (heartbeats alone do not).
    let mut o = client_options();
    o.heartbeat_interval = Duration::from_millis(100);
    o.reconnect.enabled = false;
    let active = XTMPClient::connect(server.local_addr(), o).await.unwrap();
    let active_id = active.session_id().unwrap();

    // Idle (it answers heartbeats but sends nothing): Disconnect(TIMEOUT), then close.
    let mut raw = RawClient::connect(server.local_addr(), server_key().public_key()).await;
    let started = tokio::time::Instant::now();
    let idle = tokio::spawn(async move {
        let r = raw.recv_message(Duration::from_secs(10)).await;
        let eof = matches!(raw.read_frame(Duration::from_secs(5)).await, RawEvent::Eof);
        (r, started.elapsed(), eof)
    });
    for _ in 0..10 {
        active
            .request(MessageType::WalletAuth, b"x".to_vec())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(active.session_id(), Some(active_id));
    let (msg, elapsed, eof) = idle.await.unwrap();
    let (h, p) = msg.expect("disconnect");
    assert_eq!(h.message_type, MessageType::Disconnect);
    let d = DisconnectPayload::decode(&p).unwrap();
    assert_eq!(d.code, ErrorCode::TIMEOUT);
    assert!(elapsed >= Duration::from_millis(400));
    assert!(eof);
    eventually("idle session removed", || {
        server.status().sessions_active == 1
    })
    .await;

    // Once idle, the client session expires too and the client reports why.
    eventually("client closed", || active.is_closed()).await;
    let e = active
        .request(MessageType::WalletAuth, b"x".to_vec())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::TIMEOUT), "{e:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_gets_a_handshake_timeout() {
    let server = start(builtin_router(), |o| {
        o.handshake_timeout = Duration::from_millis(300)
    })
    .await;
    let mut raw = RawClient::tcp(server.local_addr()).await;
    let (errors, _) = raw.errors_until_close(Duration::from_secs(5)).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].code, ErrorCode::TIMEOUT);
    assert_eq!(server.status().handshakes_failed, 1);
    client(&server)
        .await
        .request(MessageType::WalletAuth, b"x".to_vec())
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_retry_is_required_under_load() {
    // Threshold 0: every handshake counts as "under load" and must echo a cookie first.
    let server = start(builtin_router(), |o| o.retry_threshold = 0).await;
    let c = client(&server).await;
    c.request(MessageType::WalletAuth, b"x".to_vec())
        .await
        .unwrap();
    let s = server.status();
    assert_eq!(s.retries_sent, 1);
    assert_eq!(s.handshakes_completed, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_limits_are_checked_on_both_sides() {
    let server = start(builtin_router(), |o| o.max_payload = 8192).await;
    let mut o = client_options();
    o.max_payload = 8192;
    o.enable_compression = false;
    let c = XTMPClient::connect(server.local_addr(), o).await.unwrap();
    let e = c
        .request(MessageType::WalletAuth, vec![0u8; 9000])
        .await
        .unwrap_err();
    assert_eq!(
        e,
        ClientError::PayloadTooLarge {
            len: 9000,
            max: 8192
        }
    );
    // An echo that would not fit once the 8-byte correlation prefix is added.
    let e = c
        .request(MessageType::WalletAuth, vec![1u8; 8190])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::HANDLER_ERROR));
    c.request(MessageType::WalletAuth, vec![1u8; 8000])
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresponsive_peer_is_closed() {
    let server = start(builtin_router(), |o| {
        o.heartbeat_interval = Duration::from_millis(50)
    })
    .await;
    // A peer that completed the handshake and then reads nothing (answers no ping).
    let mut raw = RawClient::connect(server.local_addr(), server_key().public_key()).await;
    eventually("session dropped", || server.status().sessions_active == 0).await;
    let (errors, disconnected) = raw.errors_until_close(Duration::from_secs(5)).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].code, ErrorCode::TIMEOUT);
    assert!(disconnected);
    server.shutdown().await;
}
