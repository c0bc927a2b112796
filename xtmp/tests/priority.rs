//! PRIORITY messages overtake queued normal ones.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use xtmp::{Reply, XTMPMessageRouter};
use xtmp_proto::control::split_response;
use xtmp_proto::{MessageType, XTMPFlags};

const NORMAL: u64 = 400;

/// A raw client sends 400 requests whose 64 KiB answers pile up in the server's queue
/// (the client does not read, so the socket fills), then one PRIORITY request. Its answer
/// must be sealed before the answers still queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_response_overtakes_queued_responses() {
    let mut router = XTMPMessageRouter::new();
    router.register(MessageType::BundleSync, |_ctx, req| async move {
        // 64 KiB of incompressible-looking bytes.
        let mut x = u64::from_be_bytes(req.payload[..8].try_into().unwrap()) | 1;
        let body: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Ok(Reply::Response(body))
    });
    router.register(MessageType::WalletAuth, |_ctx, _req| async move {
        Ok(Reply::Response(b"urgent".to_vec()))
    });
    let server = start(router, |o| {
        o.enable_compression = false;
        o.max_queue_per_connection = 1000;
    })
    .await;
    let mut raw = RawClient::connect(server.local_addr(), server_key().public_key()).await;

    let mut batch = Vec::new();
    for i in 0..NORMAL {
        batch.extend(raw.seal(
            MessageType::BundleSync,
            XTMPFlags::empty(),
            &(i + 1).to_be_bytes(),
        ));
    }
    raw.send_raw(&batch).await;
    eventually("normal requests handled", || {
        server
            .sessions()
            .first()
            .is_some_and(|m| m.messages_received == NORMAL && m.requests_in_flight == 0)
    })
    .await;
    let prio = raw.seal(MessageType::WalletAuth, XTMPFlags::PRIORITY, b"now");
    let prio_seq = NORMAL + 1; // session frames are numbered from 1
    raw.send_raw(&prio).await;
    eventually("priority request handled", || {
        server
            .sessions()
            .first()
            .is_some_and(|m| m.messages_received == NORMAL + 1 && m.requests_in_flight == 0)
    })
    .await;

    // Now read everything.
    let mut order = Vec::new();
    while order.len() < (NORMAL + 1) as usize {
        let (h, p) = raw
            .recv_message(Duration::from_secs(20))
            .await
            .expect("response");
        assert_eq!(h.message_type, MessageType::Response);
        let (seq, _) = split_response(h.message_type, &p).unwrap();
        if seq == prio_seq {
            assert!(h.flags.contains(XTMPFlags::PRIORITY));
        }
        order.push(seq);
    }
    let pos = order.iter().position(|&s| s == prio_seq).unwrap();
    eprintln!(
        "priority response arrived at position {pos} of {}",
        order.len()
    );
    assert!(
        pos < (NORMAL as usize) - 50,
        "PRIORITY response did not overtake (position {pos})"
    );
    // Every request got exactly one answer.
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=NORMAL + 1).collect::<Vec<_>>());
    server.shutdown().await;
}

/// Through the client API: a PRIORITY request is answered with PRIORITY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_flag_round_trip() {
    let server = start(xtmp::builtin_router(), |_| {}).await;
    let c = client(&server).await;
    let r = c
        .request_with(
            MessageType::WalletAuth,
            XTMPFlags::PRIORITY,
            b"p".to_vec(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(r.flags.contains(XTMPFlags::PRIORITY));
    server.shutdown().await;
}
