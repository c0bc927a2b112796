//! The UDP transport over real loopback sockets (`PROTOCOL.md` §9): `UdpFast` sessions,
//! the size limit, loss/reordering/duplication through an in-process relay, roaming, and
//! hybrid switching.
#![allow(clippy::unwrap_used)]

mod common;
mod udp_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use udp_support::*;
use xtmp::{
    ClientError, ClientOptions, Overflow, Reply, RouteOptions, ServerHandle, TransportStep,
    XTMPClient, XTMPMessageRouter,
};
use xtmp_proto::{ErrorCode, MessageType};

fn udp_server_opts(o: &mut xtmp::ServerOptions) {
    o.udp_bind_address = Some("127.0.0.1:0".parse().unwrap());
}

fn udp_client_options(udp: SocketAddr) -> ClientOptions {
    let mut o = client_options();
    o.transport_order = vec![TransportStep::udp_to(udp)];
    o
}

/// Echo for wallet requests, a counting sink for acknowledged `BundleSubmit` sends (id in
/// the first 8 bytes), a `MetricsStream` that pushes `count` numbered messages.
fn router(seen: Arc<Mutex<HashMap<u64, u32>>>) -> XTMPMessageRouter {
    let mut r = XTMPMessageRouter::new();
    r.register(MessageType::WalletBalance, |_ctx, req| async move {
        Ok(Reply::Response(
            [b"balance:".as_slice(), &req.payload].concat(),
        ))
    });
    r.register(MessageType::RegistryQuery, |_ctx, _req| async move {
        Ok(Reply::Response(vec![7u8; 3000]))
    });
    r.register(MessageType::BundleSubmit, move |_ctx, req| {
        let seen = seen.clone();
        async move {
            let id = u64::from_be_bytes(req.payload[..8].try_into().unwrap());
            *seen.lock().unwrap().entry(id).or_insert(0) += 1;
            Ok(Reply::None)
        }
    });
    for t in [MessageType::MetricsStream, MessageType::LiveUpdates] {
        r.register_with(
            t,
            RouteOptions::stream(Overflow::DropOldest, 1024),
            |ctx, req| async move {
                let count: u64 = std::str::from_utf8(&req.payload)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(100);
                let sink = ctx.push_sink().unwrap();
                tokio::spawn(async move {
                    for i in 0..count {
                        let mut body = i.to_be_bytes().to_vec();
                        body.extend_from_slice(&[0x5a; 92]);
                        if sink.push(body).await.is_err() {
                            return;
                        }
                        if i % 64 == 63 {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                });
                Ok(Reply::Response(b"subscribed".to_vec()))
            },
        );
    }
    r
}

async fn udp_server() -> (ServerHandle, Arc<Mutex<HashMap<u64, u32>>>) {
    udp_server_with(|_| {}).await
}

/// [`udp_server`] with further option changes.
async fn udp_server_with(
    tweak: impl FnOnce(&mut xtmp::ServerOptions),
) -> (ServerHandle, Arc<Mutex<HashMap<u64, u32>>>) {
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let s = start(router(seen.clone()), |o| {
        udp_server_opts(o);
        tweak(o);
    })
    .await;
    (s, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_session_requests_sends_and_streams() {
    let (server, seen) = udp_server().await;
    let udp = server.udp_local_addr().unwrap();
    let st = server.status();
    assert!(st
        .listeners
        .iter()
        .any(|l| l.kind == "udp" && l.address == udp.to_string()));
    let c = XTMPClient::connect(server.local_addr(), udp_client_options(udp))
        .await
        .unwrap();
    assert_eq!(c.transport(), Some(xtmp::manager::ConnectionType::UdpFast));
    let r = c
        .request(MessageType::WalletBalance, b"alice".to_vec())
        .await
        .unwrap();
    assert_eq!(r.body, b"balance:alice");
    for i in 0..50u64 {
        c.send(MessageType::BundleSubmit, i.to_be_bytes().to_vec(), true)
            .await
            .unwrap();
    }
    assert_eq!(seen.lock().unwrap().len(), 50);
    let mut sub = c
        .subscribe(MessageType::MetricsStream, b"500".to_vec())
        .await
        .unwrap();
    let mut got = 0;
    while got < 400 {
        match tokio::time::timeout(Duration::from_secs(5), sub.recv()).await {
            Ok(Some(Ok(_))) => got += 1,
            other => panic!("stream stopped after {got}: {other:?}"),
        }
    }
    let m = server.sessions();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].connection_type, "UdpFast");
    let d = m[0].datagram.clone().unwrap();
    assert_eq!(d.role, "primary");
    assert!(d.frames_received > 50);
    c.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_refuses_messages_larger_than_a_datagram() {
    let (server, _) = udp_server().await;
    let udp = server.udp_local_addr().unwrap();
    let mut o = udp_client_options(udp);
    o.enable_compression = false;
    let c = XTMPClient::connect(server.local_addr(), o).await.unwrap();
    let e = c
        .request(MessageType::WalletBalance, vec![1u8; 1500])
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::MessageTooLarge { .. }), "{e:?}");
    assert_eq!(e.code(), Some(ErrorCode::MESSAGE_TOO_LARGE));
    // Fits exactly: 1200 - 96 header - 8 message id.
    let mut exact = 9_999u64.to_be_bytes().to_vec();
    exact.resize(1096, 0);
    c.send(MessageType::BundleSubmit, exact, true)
        .await
        .unwrap();
    let mut too_big = 9_998u64.to_be_bytes().to_vec();
    too_big.resize(1097, 0);
    let e = c
        .send(MessageType::BundleSubmit, too_big, true)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::MessageTooLarge { .. }), "{e:?}");
    // The largest reply: 1096 - 8 (the request number it answers).
    let r = c
        .request(MessageType::WalletBalance, vec![1u8; 1088 - 8])
        .await
        .unwrap();
    assert_eq!(r.body.len(), 1088);
    // A response too large for a datagram comes back as MESSAGE_TOO_LARGE.
    let e = c
        .request(MessageType::RegistryQuery, b"k".to_vec())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::MESSAGE_TOO_LARGE), "{e:?}");
    c.close().await;
    server.shutdown().await;
}

/// 10 % loss, 5 % duplication, 5 % reordering in both directions (deterministic seed):
/// every acknowledged send reaches its handler exactly once, requests get their answers,
/// and a push stream keeps flowing (with gaps, counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_network_delivers_acknowledged_messages_exactly_once() {
    const N: u64 = 300;
    let (server, seen) = udp_server_with(|o| {
        fast_probes(&mut o.datagram);
    })
    .await;
    let relay = LossyRelay::start(
        server.udp_local_addr().unwrap(),
        Impairments {
            loss: 0.10,
            duplicate: 0.05,
            reorder: 0.05,
        },
        0x5eed_1234,
    )
    .await;
    let mut o = udp_client_options(relay.addr());
    o.request_timeout = Duration::from_secs(20);
    o.subscription_capacity = 4096;
    fast_probes(&mut o.datagram);
    let c = XTMPClient::connect(server.local_addr(), o).await.unwrap();
    let mut sub = c
        .subscribe(MessageType::MetricsStream, b"1000000".to_vec())
        .await
        .unwrap();
    let pushes = tokio::spawn(async move {
        let mut n = 0u64;
        let mut last = None;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), sub.recv()).await {
            let Ok(m) = m else { continue };
            let i = u64::from_be_bytes(m.body[..8].try_into().unwrap());
            // In order, with gaps.
            assert!(last.is_none_or(|l| i > l), "push {i} after {last:?}");
            last = Some(i);
            n += 1;
            if n == 20_000 {
                break;
            }
        }
        n
    });
    let mut set = tokio::task::JoinSet::new();
    for i in 0..N {
        let c = c.clone();
        set.spawn(async move {
            c.send(MessageType::BundleSubmit, i.to_be_bytes().to_vec(), true)
                .await
        });
        if i % 32 == 31 {
            while set.len() > 16 {
                set.join_next().await.unwrap().unwrap().unwrap();
            }
        }
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
    for i in 0..20u8 {
        let r = c
            .request(MessageType::WalletBalance, vec![i])
            .await
            .unwrap();
        assert_eq!(r.body, [b"balance:".as_slice(), &[i]].concat());
    }
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len() as u64, N, "every message delivered");
        assert!(seen.values().all(|&n| n == 1), "each exactly once");
    }
    let n = pushes.await.unwrap();
    assert!(n >= 2_000, "the stream kept flowing: {n} pushes");
    let st = relay.stats();
    assert!(st.dropped.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert!(st.duplicated.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert!(st.reordered.load(std::sync::atomic::Ordering::Relaxed) > 0);
    let cm = c.datagram_metrics().unwrap();
    assert!(cm.retransmissions > 0, "{cm:?}");
    let sm = server.sessions()[0].datagram.clone().unwrap();
    assert!(
        sm.duplicates_suppressed > 0 || sm.frames_rejected > 0,
        "{sm:?}"
    );
    assert!(
        sm.sequence_gaps > 0 || sm.loss > 0.0,
        "loss is counted: {sm:?}"
    );
    c.close().await;
    server.shutdown().await;
}

fn fast_probes(d: &mut xtmp::DatagramOptions) {
    d.probe_interval = Duration::from_millis(100);
}

async fn eventually_async<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn client_state(c: &XTMPClient) -> String {
    c.datagram_metrics().map(|m| m.state).unwrap_or_default()
}

fn server_state(s: &ServerHandle) -> String {
    s.sessions()
        .first()
        .and_then(|m| m.datagram.clone())
        .map(|d| d.state)
        .unwrap_or_default()
}

/// TcpUdpHybrid: streams over UDP; UDP blocked entirely → the session carries on over TCP
/// without losing an acknowledged message; UDP restored → the streams return to UDP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_switches_to_tcp_when_udp_is_blocked_and_back() {
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let mut r = router(seen.clone());
    // EventStream (a UDP type by the default policy) as an acknowledged one-way message.
    let ev_seen = Arc::new(Mutex::new(HashMap::<u64, u32>::new()));
    let evs = ev_seen.clone();
    r.register(MessageType::EventStream, move |_ctx, req| {
        let evs = evs.clone();
        async move {
            let id = u64::from_be_bytes(req.payload[..8].try_into().unwrap());
            *evs.lock().unwrap().entry(id).or_insert(0) += 1;
            Ok(Reply::None)
        }
    });
    let server = start(r, |o| {
        udp_server_opts(o);
        fast_probes(&mut o.datagram);
    })
    .await;
    let relay =
        LossyRelay::start(server.udp_local_addr().unwrap(), Impairments::default(), 7).await;
    let mut o = client_options();
    o.transport_order = vec![TransportStep::hybrid()];
    o.udp_address = Some(relay.addr());
    o.request_timeout = Duration::from_secs(20);
    o.subscription_capacity = 8192;
    fast_probes(&mut o.datagram);
    let c = XTMPClient::connect(server.local_addr(), o).await.unwrap();
    assert_eq!(
        c.transport(),
        Some(xtmp::manager::ConnectionType::TcpUdpHybrid)
    );
    eventually_async("UDP path up", 10, || async { client_state(&c) == "up" }).await;
    eventually_async("server sees the path", 10, || async {
        server_state(&server) == "up"
    })
    .await;

    let mut sub = c
        .subscribe(MessageType::MetricsStream, b"100000000".to_vec())
        .await
        .unwrap();
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let cnt = count.clone();
    let pushes = tokio::spawn(async move {
        let mut last = None;
        while let Some(m) = sub.recv().await {
            let Ok(m) = m else { continue };
            let i = u64::from_be_bytes(m.body[..8].try_into().unwrap());
            assert!(last.is_none_or(|l| i > l), "push {i} after {last:?}");
            last = Some(i);
            cnt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let udp_frames = |c: &XTMPClient| c.datagram_metrics().unwrap().frames_received;
    let before = udp_frames(&c);
    eventually_async("pushes over UDP", 10, || async {
        udp_frames(&c) > before + 500
    })
    .await;
    assert_eq!(server.sessions()[0].connection_type, "TcpUdpHybrid");

    // Reliable traffic across the outage.
    let sender = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..200u64 {
                c.send(MessageType::EventStream, i.to_be_bytes().to_vec(), true)
                    .await
                    .unwrap();
                c.send(MessageType::BundleSubmit, i.to_be_bytes().to_vec(), true)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    relay.block(true);
    eventually_async("client moves to TCP", 10, || async {
        client_state(&c) == "down"
    })
    .await;
    eventually_async("server moves to TCP", 10, || async {
        server_state(&server) == "down"
    })
    .await;
    let during = count.load(std::sync::atomic::Ordering::Relaxed);
    eventually_async("pushes continue over TCP", 10, || async {
        count.load(std::sync::atomic::Ordering::Relaxed) > during + 500
    })
    .await;
    sender.await.unwrap();
    assert!(ev_seen.lock().unwrap().values().all(|&n| n == 1));
    assert_eq!(
        ev_seen.lock().unwrap().len(),
        200,
        "no reliable message lost"
    );
    assert_eq!(seen.lock().unwrap().len(), 200);

    relay.block(false);
    eventually_async("client back on UDP", 10, || async {
        client_state(&c) == "up"
    })
    .await;
    eventually_async("server back on UDP", 10, || async {
        server_state(&server) == "up"
    })
    .await;
    let before = udp_frames(&c);
    eventually_async("streams return to UDP", 10, || async {
        udp_frames(&c) > before + 500
    })
    .await;
    let m = c.datagram_metrics().unwrap();
    assert!(m.path_switches >= 2, "{m:?}");
    c.close().await;
    pushes.abort();
    server.shutdown().await;
}

/// Key updates on a datagram session are repeated until answered: with 10 % loss the
/// session rotates several times and traffic goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_updates_survive_a_lossy_datagram_path() {
    let (server, seen) = udp_server_with(|o| {
        o.key_rotation_interval = Duration::from_millis(400);
    })
    .await;
    let relay = LossyRelay::start(
        server.udp_local_addr().unwrap(),
        Impairments {
            loss: 0.10,
            duplicate: 0.05,
            reorder: 0.05,
        },
        99,
    )
    .await;
    let mut o = udp_client_options(relay.addr());
    o.key_rotation_interval = Duration::from_millis(300);
    o.request_timeout = Duration::from_secs(20);
    let c = XTMPClient::connect(server.local_addr(), o).await.unwrap();
    let mut i = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while c.key_generation().unwrap_or(0) < 4 {
        assert!(tokio::time::Instant::now() < deadline, "rotations stalled");
        c.send(MessageType::BundleSubmit, i.to_be_bytes().to_vec(), true)
            .await
            .unwrap();
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = c
        .request(MessageType::WalletBalance, b"k".to_vec())
        .await
        .unwrap();
    assert_eq!(r.body, b"balance:k");
    assert!(server.sessions()[0].key_generation >= 3);
    assert_eq!(seen.lock().unwrap().len() as u64, i);
    assert!(seen.lock().unwrap().values().all(|&n| n == 1));
    c.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_free_their_aead_contexts_and_rebuild_them() {
    // One UdpFast and one TCP session. After a second without application messages the
    // server frees their AEAD contexts (the short heartbeat also rebuilds and frees them
    // around every ping and pong); the next request is answered as before.
    let (server, _seen) = udp_server_with(|o| {
        o.heartbeat_interval = Duration::from_millis(300);
    })
    .await;
    let udp = server.udp_local_addr().unwrap();
    let cu = XTMPClient::connect(server.local_addr(), udp_client_options(udp))
        .await
        .unwrap();
    let ct = XTMPClient::connect(server.local_addr(), client_options())
        .await
        .unwrap();
    let resident = |c: &XTMPClient| {
        server
            .session_metrics(c.session_id().unwrap())
            .unwrap()
            .aead_contexts_resident
    };
    for round in 0..3 {
        for (c, name) in [(&cu, "udp"), (&ct, "tcp")] {
            let r = c
                .request(
                    MessageType::WalletBalance,
                    format!("{name}{round}").into_bytes(),
                )
                .await
                .unwrap();
            assert_eq!(r.body, format!("balance:{name}{round}").as_bytes());
            // Just used: resident (the release needs a whole second of no messages).
            assert!(resident(c), "{name}: freed right after a request");
        }
        eventually("both idle sessions free their AEAD contexts", || {
            !resident(&cu) && !resident(&ct)
        })
        .await;
    }
    cu.close().await;
    ct.close().await;
    server.shutdown().await;
}

/// `send_batch` on a `UdpFast` session goes through the queue message by message (each a
/// datagram of its own, fire and forget: at most once, `PROTOCOL.md` §9.7). With room for
/// every handler (a burst beyond `max_inflight_per_connection` is dropped on arrival) and
/// no loss on loopback, each arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_batch_over_udp_delivers_every_message_once() {
    let (server, seen) = udp_server_with(|o| {
        o.max_inflight_per_connection = 1024;
    })
    .await;
    let udp = server.udp_local_addr().unwrap();
    let c = XTMPClient::connect(server.local_addr(), udp_client_options(udp))
        .await
        .unwrap();
    let batch: Vec<Vec<u8>> = (0..200u64).map(|i| i.to_be_bytes().to_vec()).collect();
    c.send_batch(MessageType::BundleSubmit, &batch)
        .await
        .unwrap();
    // A request after the batch: answered once everything before it was read.
    let r = c
        .request(MessageType::WalletBalance, b"after".to_vec())
        .await
        .unwrap();
    assert_eq!(r.body, b"balance:after");
    eventually("all 200 batched datagram messages", || {
        seen.lock().unwrap().len() == 200
    })
    .await;
    assert!(seen.lock().unwrap().values().all(|&n| n == 1));
    c.close().await;
    server.shutdown().await;
}
