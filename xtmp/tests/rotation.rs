//! Key rotation under continuous traffic in both directions: nothing lost, nothing
//! duplicated.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use xtmp::{Overflow, Reply, RouteOptions, XTMPClient, XTMPMessageRouter};
use xtmp_proto::MessageType;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_traffic_loses_and_duplicates_nothing() {
    const REQUESTS: u64 = 3000;
    const PUSHES: u64 = 3000;
    let seen: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let dups: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut router = XTMPMessageRouter::new();
    let (s2, d2) = (seen.clone(), dups.clone());
    router.register(MessageType::BundleSubmit, move |_ctx, req| {
        let (seen, dups) = (s2.clone(), d2.clone());
        async move {
            let i = u64::from_be_bytes(req.payload[..8].try_into().unwrap());
            if !seen.lock().unwrap().insert(i) {
                dups.lock().unwrap().push(i);
            }
            Ok(Reply::Response(req.payload))
        }
    });
    router.register_with(
        MessageType::LiveUpdates,
        RouteOptions::stream(Overflow::Backpressure, 32),
        |ctx, _req| async move {
            let sink = ctx.push_sink().unwrap();
            tokio::spawn(async move {
                for i in 0..PUSHES {
                    sink.push(i.to_be_bytes().to_vec()).await.unwrap();
                    if i % 16 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            });
            Ok(Reply::Response(Vec::new()))
        },
    );
    let server = start(router, |o| {
        o.key_rotation_interval = Duration::from_millis(150);
        o.heartbeat_interval = Duration::from_millis(50);
    })
    .await;
    let mut o = client_options();
    o.key_rotation_interval = Duration::from_millis(150);
    o.heartbeat_interval = Duration::from_millis(50);
    let c = XTMPClient::connect(server.local_addr(), o).await.unwrap();

    let mut sub = c
        .subscribe(MessageType::LiveUpdates, Vec::new())
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        for i in 0..PUSHES {
            let m = sub.recv().await.unwrap().unwrap();
            assert_eq!(u64::from_be_bytes(m.body[..8].try_into().unwrap()), i);
        }
    });
    let mut workers = Vec::new();
    for w in 0..8u64 {
        let c = c.clone();
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while i < REQUESTS {
                let r = c
                    .request(MessageType::BundleSubmit, i.to_be_bytes().to_vec())
                    .await
                    .unwrap();
                assert_eq!(r.body, i.to_be_bytes());
                i += 8;
                if i % 64 == w {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    reader.await.unwrap();
    // Keep the session busy until several rotations are done.
    let mut i = REQUESTS;
    while server.status().key_rotations < 4 {
        c.request(MessageType::BundleSubmit, i.to_be_bytes().to_vec())
            .await
            .unwrap();
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        dups.lock().unwrap().is_empty(),
        "duplicates: {:?}",
        dups.lock().unwrap()
    );
    assert_eq!(seen.lock().unwrap().len() as u64, i);
    let status = server.status();
    eprintln!("key rotations: {}", status.key_rotations);
    assert!(status.key_rotations >= 4);
    let m = server.sessions();
    assert!(m[0].key_generation >= 4);
    assert_eq!(m[0].auth_failures, 0);
    assert_eq!(m[0].replays, 0);
    assert!(c.key_generation().unwrap() >= 4);
    server.shutdown().await;
}
