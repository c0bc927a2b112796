//! The seed's components: connection manager views, the connection pool, and the
//! transport seam (a non-TCP byte stream served through `ServerHandle::serve_stream`).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xtmp::{builtin_router, ConnectionType, XTMPConnectionPool};
use xtmp_proto::control::split_response;
use xtmp_proto::{
    deframe, ClientConfig, ClientHandshake, ClientOutcome, ErrorCode, MessageType, Received,
    XTMPFlags,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_views_and_admin_disconnect() {
    let server = start(builtin_router(), |_| {}).await;
    let c = client(&server).await;
    c.request(MessageType::WalletAuth, b"x".to_vec())
        .await
        .unwrap();
    let id = c.session_id().unwrap();
    let m = server.manager();
    assert_eq!(m.session_ids(), vec![id]);
    let (peer, gen, seq) = m
        .with_session(id, |s| {
            (s.peer_address, s.key_generation(), s.sequence_number())
        })
        .unwrap();
    assert_eq!(gen, 0);
    assert!(seq >= 1);
    assert_eq!(m.connections_by_peer()[&peer.to_string()], vec![id]);
    assert_eq!(m.key_manager.public_key(), server_key().public_key());
    assert_eq!(
        m.session_counter.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let json = serde_json::to_value(server.session_metrics(id).unwrap()).unwrap();
    assert_eq!(json["session_id_hex"], format!("{id:016x}"));
    assert!(json["quality"]["latency_ms"].is_number());
    let status = serde_json::to_value(server.status()).unwrap();
    assert_eq!(status["sessions_active"], 1);

    // An administrative close is a graceful Disconnect with the given code.
    assert!(m.disconnect(id, ErrorCode::NO_ERROR, "maintenance"));
    eventually("session closed", || server.status().sessions_active == 0).await;
    assert!(!m.disconnect(id, ErrorCode::NO_ERROR, "again"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_reuses_one_connection_per_peer() {
    let a = start(builtin_router(), |_| {}).await;
    let b = start(builtin_router(), |_| {}).await;
    let pool = XTMPConnectionPool::new();
    let c1 = pool.get(a.local_addr(), client_options()).await.unwrap();
    let c2 = pool.get(a.local_addr(), client_options()).await.unwrap();
    assert_eq!(c1.session_id(), c2.session_id());
    let c3 = pool.get(b.local_addr(), client_options()).await.unwrap();
    assert_eq!(pool.len(), 2);
    c3.request(MessageType::BundleStatus, b"b".to_vec())
        .await
        .unwrap();
    assert_eq!(a.status().sessions_active, 1);
    assert_eq!(b.status().sessions_active, 1);
    pool.close_all().await;
    assert!(pool.is_empty());
    eventually("closed", || {
        a.status().sessions_active == 0 && b.status().sessions_active == 0
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

/// Any ordered byte stream works: here an in-memory pipe counted as a WebSocket fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_byte_stream_can_carry_a_session() {
    let server = start(builtin_router(), |_| {}).await;
    let (mut near, far) = tokio::io::duplex(64 * 1024);
    server.serve_stream(
        far,
        "192.0.2.1:443".parse().unwrap(),
        ConnectionType::WebSocketFallback,
    );

    let (mut hs, m1) = ClientHandshake::start(
        ClientConfig::new(server_key().public_key().clone()),
        1,
        &mut Rng,
    )
    .unwrap();
    near.write_all(&m1).await.unwrap();
    let mut buf = Vec::new();
    let mut read_frame = async |near: &mut tokio::io::DuplexStream| loop {
        if let Some(n) = deframe::frame_len(&buf, 1 << 20).unwrap() {
            let rest = buf.split_off(n);
            return std::mem::replace(&mut buf, rest);
        }
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), near.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    };
    let ack = read_frame(&mut near).await;
    let ClientOutcome::Established(mut s) = hs.handle(std::time::Instant::now(), &ack).unwrap()
    else {
        panic!("no session");
    };
    let mut f = Vec::new();
    let seq = s
        .seal(
            MessageType::RegistryQuery,
            XTMPFlags::empty(),
            b"over a pipe",
            &mut f,
        )
        .unwrap();
    near.write_all(&f).await.unwrap();
    let mut resp = read_frame(&mut near).await;
    match s
        .open(std::time::Instant::now(), &mut resp, &mut Rng)
        .unwrap()
    {
        Received::Message { header, payload } => {
            assert_eq!(header.message_type, MessageType::Response);
            let (n, body) = split_response(header.message_type, &payload).unwrap();
            assert_eq!((n, body), (seq, &b"over a pipe"[..]));
        }
        other => panic!("{other:?}"),
    }
    let status = server.status();
    assert_eq!(status.connections_by_type["WebSocketFallback"], 1);
    let m = server.sessions();
    assert_eq!(m[0].connection_type, "WebSocketFallback");
    assert_eq!(m[0].peer_address, "192.0.2.1:443");
    drop(near);
    eventually("closed", || server.status().connections_active == 0).await;
    server.shutdown().await;
}
