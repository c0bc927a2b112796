//! Graceful shutdown with requests in flight.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use xtmp::{ClientError, Reply, XTMPClient, XTMPMessageRouter};
use xtmp_proto::{ErrorCode, MessageType};

fn slow_router() -> XTMPMessageRouter {
    let mut router = XTMPMessageRouter::new();
    router.register(MessageType::BundleConfirm, |_ctx, req| async move {
        let ms = u64::from_be_bytes(req.payload[..8].try_into().unwrap());
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(Reply::Response(req.payload))
    });
    router
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_before_disconnect() {
    let server = start(slow_router(), |o| o.drain_timeout = Duration::from_secs(5)).await;
    let mut o = client_options();
    o.reconnect.enabled = false;
    let c = XTMPClient::connect(server.local_addr(), o).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..10u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.request(
                MessageType::BundleConfirm,
                (300 + i * 10).to_be_bytes().to_vec(),
            )
            .await
        }));
    }
    eventually("10 in flight", || {
        server
            .sessions()
            .first()
            .is_some_and(|m| m.requests_in_flight == 10)
    })
    .await;
    let started = Instant::now();
    let s2 = server.clone();
    let shutdown = tokio::spawn(async move { s2.shutdown().await });
    eventually("shutting down", || server.status().shutting_down).await;
    // A request arriving during the drain is refused, not lost.
    let late = c
        .request(MessageType::BundleConfirm, 1u64.to_be_bytes().to_vec())
        .await
        .unwrap_err();
    assert_eq!(late.code(), Some(ErrorCode::SHUTTING_DOWN), "{late:?}");
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap().unwrap();
        assert_eq!(r.body, (300 + i as u64 * 10).to_be_bytes());
    }
    shutdown.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(4));
    eventually("client saw Disconnect", || c.is_closed()).await;
    let e = c
        .request(MessageType::BundleConfirm, 1u64.to_be_bytes().to_vec())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::SHUTTING_DOWN), "{e:?}");
    // Nothing listens any more.
    assert!(XTMPClient::connect(server.local_addr(), client_options())
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_past_the_drain_time_are_answered_with_shutting_down() {
    let server = start(slow_router(), |o| {
        o.drain_timeout = Duration::from_millis(300)
    })
    .await;
    let c = client(&server).await;
    let c2 = c.clone();
    let fast = tokio::spawn(async move {
        c2.request(MessageType::BundleConfirm, 50u64.to_be_bytes().to_vec())
            .await
    });
    let c3 = c.clone();
    let stuck = tokio::spawn(async move {
        c3.request(MessageType::BundleConfirm, 60_000u64.to_be_bytes().to_vec())
            .await
    });
    eventually("2 in flight", || {
        server
            .sessions()
            .first()
            .is_some_and(|m| m.requests_in_flight == 2)
    })
    .await;
    let started = Instant::now();
    server.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert_eq!(fast.await.unwrap().unwrap().body, 50u64.to_be_bytes());
    match stuck.await.unwrap() {
        Err(ClientError::Remote { code, .. }) => assert_eq!(code, ErrorCode::SHUTTING_DOWN),
        other => panic!("{other:?}"),
    }
}
