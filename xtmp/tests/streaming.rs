//! Server push: backpressure streams lose nothing, drop-oldest streams count what they drop
//! and keep the newest, and subscriptions survive a reconnection.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use xtmp::{
    ClientError, Overflow, PushError, Reply, RouteOptions, XTMPClient, XTMPMessageRouter,
    XTMPServer,
};
use xtmp_proto::{ErrorCode, MessageType, XTMPFlags};

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn index_of(body: &[u8]) -> u64 {
    u64::from_be_bytes(body[..8].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_stream_delivers_everything_in_order() {
    const N: u64 = 3000;
    let mut router = XTMPMessageRouter::new();
    router.register_with(
        MessageType::BundleSync,
        RouteOptions::stream(Overflow::Backpressure, 8),
        |ctx, _req| async move {
            let sink = ctx.push_sink().unwrap();
            tokio::spawn(async move {
                for i in 0..N {
                    let mut body = i.to_be_bytes().to_vec();
                    body.extend(noise(i, 1024));
                    sink.push(body).await.unwrap();
                }
            });
            Ok(Reply::Response(b"streaming".to_vec()))
        },
    );
    let server = start(router, |_| {}).await;
    let mut o = client_options();
    o.subscription_capacity = 4;
    let c = XTMPClient::connect(server.local_addr(), o).await.unwrap();
    let mut sub = c
        .subscribe(MessageType::BundleSync, b"go".to_vec())
        .await
        .unwrap();
    assert_eq!(sub.response().unwrap().body, b"streaming");
    // Let the queues fill up before consuming.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..N {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(index_of(&m.body), i);
        assert!(m.flags.contains(XTMPFlags::STREAMING));
    }
    assert_eq!(server.status().stream_messages_dropped, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_stream_counts_drops_and_keeps_the_newest() {
    const N: u64 = 3000;
    let pushed = Arc::new(AtomicBool::new(false));
    let p2 = pushed.clone();
    let mut router = XTMPMessageRouter::new();
    router.register_with(
        MessageType::MetricsStream,
        RouteOptions::stream(Overflow::DropOldest, 16),
        move |ctx, _req| {
            let pushed = p2.clone();
            async move {
                let sink = ctx.push_sink().unwrap();
                tokio::spawn(async move {
                    for i in 0..N {
                        let mut body = i.to_be_bytes().to_vec();
                        body.extend(noise(i, 8192));
                        // Never waits on a drop-oldest stream.
                        sink.try_push(body).unwrap();
                        if i % 64 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                    pushed.store(true, Ordering::SeqCst);
                });
                Ok(Reply::Response(Vec::new()))
            }
        },
    );
    let server = start(router, |o| o.enable_compression = false).await;
    let mut o = client_options();
    o.subscription_capacity = 4;
    let c = XTMPClient::connect(server.local_addr(), o).await.unwrap();
    let mut sub = c
        .subscribe(MessageType::MetricsStream, Vec::new())
        .await
        .unwrap();
    // The client is not consuming: its buffer and the socket fill, the stream overflows.
    eventually("all pushed", || pushed.load(Ordering::SeqCst)).await;
    let mut received = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let i = index_of(&m.body);
        received.push(i);
        if i == N - 1 {
            break;
        }
    }
    assert!(received.windows(2).all(|w| w[0] < w[1]), "out of order");
    let dropped = server.status().stream_messages_dropped;
    assert!(dropped > 0, "nothing was dropped");
    assert_eq!(
        received.len() as u64 + dropped,
        N,
        "received {} dropped {dropped}",
        received.len()
    );
    let m = server.sessions();
    assert_eq!(m[0].stream_dropped, dropped);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushing_inside_the_handler_before_it_returns_is_refused_when_full() {
    let mut router = XTMPMessageRouter::new();
    router.register_with(
        MessageType::LiveUpdates,
        RouteOptions::stream(Overflow::Backpressure, 2),
        |ctx, _req| async move {
            let sink = ctx.push_sink().unwrap();
            sink.push(b"1".to_vec()).await.unwrap();
            sink.push(b"2".to_vec()).await.unwrap();
            let third = sink.push(b"3".to_vec()).await;
            Ok(Reply::Response(format!("{third:?}").into_bytes()))
        },
    );
    let server = start(router, |_| {}).await;
    let c = client(&server).await;
    let mut sub = c
        .subscribe(MessageType::LiveUpdates, Vec::new())
        .await
        .unwrap();
    assert_eq!(
        sub.response().unwrap().body,
        format!("{:?}", Err::<(), _>(PushError::NotStarted)).into_bytes()
    );
    assert_eq!(sub.recv().await.unwrap().unwrap().body, b"1");
    assert_eq!(sub.recv().await.unwrap().unwrap().body, b"2");
    server.shutdown().await;
}

/// The connection is cut under a subscription and an outstanding request: the request
/// fails with `ConnectionLost { sent: true }`, the subscription reports the gap, the client
/// reconnects, resubscribes, and both work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_resubscribes_and_reports_losses() {
    let mut router = XTMPMessageRouter::new();
    let subscriptions = Arc::new(AtomicU64::new(0));
    let s2 = subscriptions.clone();
    router.register_with(
        MessageType::EventStream,
        RouteOptions::stream(Overflow::Backpressure, 16),
        move |ctx, _req| {
            let n = s2.fetch_add(1, Ordering::SeqCst);
            async move {
                let sink = ctx.push_sink().unwrap();
                tokio::spawn(async move {
                    let mut i = 0u64;
                    loop {
                        let body = format!("{n}:{i}").into_bytes();
                        if sink.push(body).await.is_err() {
                            return;
                        }
                        i += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                });
                Ok(Reply::Response(Vec::new()))
            }
        },
    );
    router.register(MessageType::BundleStatus, |_ctx, req| async move {
        if req.payload == b"slow" {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Ok(Reply::Response(req.payload))
    });
    let server = start(router, |_| {}).await;
    let proxy = Proxy::start(server.local_addr()).await;
    let c = XTMPClient::connect(proxy.addr, client_options())
        .await
        .unwrap();
    let mut sub = c
        .subscribe(MessageType::EventStream, Vec::new())
        .await
        .unwrap();
    for _ in 0..3 {
        let m = sub.recv().await.unwrap().unwrap();
        assert!(String::from_utf8(m.body).unwrap().starts_with("0:"));
    }
    let c2 = c.clone();
    let slow = tokio::spawn(async move {
        c2.request(MessageType::BundleStatus, b"slow".to_vec())
            .await
    });
    eventually("slow request in flight", || {
        server
            .sessions()
            .first()
            .is_some_and(|m| m.requests_in_flight == 1)
    })
    .await;
    let first_session = c.session_id().unwrap();

    proxy.cut();
    assert_eq!(
        slow.await.unwrap(),
        Err(ClientError::ConnectionLost { sent: true })
    );
    // The gap is reported on the subscription, then pushes of the renewed stream follow.
    let mut saw_gap = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Err(ClientError::ConnectionLost { .. }) => saw_gap = true,
            Err(e) => panic!("unexpected {e:?}"),
            Ok(m) => {
                let s = String::from_utf8(m.body).unwrap();
                if s.starts_with("1:") {
                    break;
                }
                assert!(!saw_gap, "old stream message after the gap: {s}");
            }
        }
    }
    assert!(saw_gap);
    assert_eq!(c.stats().reconnects, 1);
    assert_ne!(c.session_id(), Some(first_session));
    assert_eq!(
        c.request(MessageType::BundleStatus, b"again".to_vec())
            .await
            .unwrap()
            .body,
        b"again"
    );
    drop(proxy);
    server.shutdown().await;
}

/// The server restarts (same key, same address): the client reconnects; requests made
/// while it was away wait for the new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_survives_a_server_restart() {
    let server = start(xtmp::builtin_router(), |_| {}).await;
    let addr = server.local_addr();
    let c = client(&server).await;
    let mut sub = c
        .subscribe(
            MessageType::EventStream,
            br#"{"count":1000000,"interval_ms":10}"#.to_vec(),
        )
        .await
        .unwrap();
    sub.recv().await.unwrap().unwrap();
    server.shutdown().await;
    let mut o = server_options();
    o.bind_address = addr;
    let server2 = XTMPServer::bind(o, xtmp::builtin_router()).await.unwrap();
    let r = c
        .request(MessageType::WalletBalance, b"after restart".to_vec())
        .await
        .unwrap();
    assert_eq!(r.body, b"after restart");
    // The subscription reported the server's Disconnect, then resumed.
    let mut saw = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Err(e) => saw = Some(e),
            Ok(_) if saw.is_some() => break,
            Ok(_) => {}
        }
    }
    assert_eq!(saw.unwrap().code(), Some(ErrorCode::SHUTTING_DOWN));
    server2.shutdown().await;
}

/// With reconnection off, a dropped connection closes the client for good and every call
/// reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reconnect_means_closed() {
    let server = start(xtmp::builtin_router(), |_| {}).await;
    let proxy = Proxy::start(server.local_addr()).await;
    let mut o = client_options();
    o.reconnect.enabled = false;
    let c = XTMPClient::connect(proxy.addr, o).await.unwrap();
    c.request(MessageType::WalletAuth, b"x".to_vec())
        .await
        .unwrap();
    proxy.cut();
    eventually("client closed", || c.is_closed()).await;
    let e = c
        .request(MessageType::WalletAuth, b"x".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::ConnectionLost { .. }), "{e:?}");
    server.shutdown().await;
}
