//! Hostile and broken datagrams, roaming, and the handshake over UDP (cookie step first,
//! fragmentation limits), driven frame by frame with `xtmp-proto` against a real server
//! (`PROTOCOL.md` §9).
#![allow(clippy::unwrap_used)]

mod common;
mod udp_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use udp_support::*;
use xtmp::{Reply, ServerHandle, TransportStep, XTMPClient, XTMPMessageRouter};
use xtmp_proto::datagram::{decode_datagram_ack, fragment_handshake};
use xtmp_proto::{
    ClientConfig, ClientHandshake, ClientOutcome, MessageType, XTMPFlags, HEADER_LEN,
};

async fn server() -> (ServerHandle, Arc<Mutex<HashMap<u64, u32>>>) {
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let s2 = seen.clone();
    let mut r = XTMPMessageRouter::new();
    r.register(MessageType::BundleSubmit, move |_ctx, req| {
        let seen = s2.clone();
        async move {
            let id = u64::from_be_bytes(req.payload[..8].try_into().unwrap());
            *seen.lock().unwrap().entry(id).or_insert(0) += 1;
            Ok(Reply::Response(b"ok".to_vec()))
        }
    });
    r.register(MessageType::WalletBalance, |_ctx, req| async move {
        Ok(Reply::Response(req.payload))
    });
    let s = start(r, |o| {
        o.udp_bind_address = Some("127.0.0.1:0".parse().unwrap())
    })
    .await;
    (s, seen)
}

fn udp_status(s: &ServerHandle) -> xtmp::UdpStatus {
    s.status().udp.unwrap()
}

fn session_dgram(s: &ServerHandle) -> xtmp::DatagramPathMetrics {
    s.sessions()[0].datagram.clone().unwrap()
}

async fn legit_client_works(s: &ServerHandle) {
    let mut o = client_options();
    o.transport_order = vec![TransportStep::udp_to(s.udp_local_addr().unwrap())];
    let c = XTMPClient::connect(s.local_addr(), o).await.unwrap();
    let r = c
        .request(MessageType::WalletBalance, b"still here".to_vec())
        .await
        .unwrap();
    assert_eq!(r.body, b"still here");
    c.close().await;
}

/// Garbage, truncated, oversized, unknown-session, replayed and forged-source datagrams
/// are dropped and counted; none changes the session (its address in particular); the
/// server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_datagrams_change_nothing() {
    let (server, seen) = server().await;
    let udp = server.udp_local_addr().unwrap();
    let mut raw = RawUdp::new(udp).await;
    raw.handshake(server_key().public_key()).await;
    let my_addr = raw.sock.local_addr().unwrap().to_string();

    // A RELIABLE request is delivered once, acknowledged and answered.
    let d = raw.seal_reliable(MessageType::BundleSubmit, 1, &7u64.to_be_bytes());
    raw.send(&d).await;
    let has = |got: &[(xtmp_proto::Header, Vec<u8>)], t: MessageType| {
        got.iter().any(|(h, _)| h.message_type == t)
    };
    let got = raw
        .collect_until(Duration::from_secs(5), |g| {
            has(g, MessageType::DatagramAck) && has(g, MessageType::Response)
        })
        .await;
    assert!(got
        .iter()
        .any(|(h, _)| h.message_type == MessageType::DatagramAck));
    assert!(got
        .iter()
        .any(|(h, p)| h.message_type == MessageType::Response
            && h.flags.contains(XTMPFlags::RELIABLE)
            && p.ends_with(b"ok")));
    assert_eq!(seen.lock().unwrap()[&7], 1);
    assert_eq!(session_dgram(&server).peer_address.unwrap(), my_addr);

    // Replayed datagram: refused by the replay window.
    raw.send(&d).await;
    // Retransmission (a new frame, same message id): suppressed, acknowledged again.
    let d2 = raw.seal_reliable(MessageType::BundleSubmit, 1, &7u64.to_be_bytes());
    raw.send(&d2).await;
    let acks_1 = |g: &[(xtmp_proto::Header, Vec<u8>)]| {
        g.iter().any(|(h, p)| {
            h.message_type == MessageType::DatagramAck
                && decode_datagram_ack(p).unwrap().any(|id| id == 1)
        })
    };
    let got = raw.collect_until(Duration::from_secs(5), acks_1).await;
    let reacked = acks_1(&got);
    assert!(reacked, "the duplicate is acknowledged again");
    assert_eq!(seen.lock().unwrap()[&7], 1, "delivered exactly once");

    // Hostile datagrams from another address.
    let evil = RawUdp::new(udp).await;
    evil.send(&[0xAB; 500]).await; // garbage
    evil.send(&[0x58; 50]).await; // shorter than a header
    evil.send(&d[..HEADER_LEN + 10]).await; // truncated frame
    evil.send(&vec![0x58; 60_000]).await; // oversized garbage
    let mut unknown = d.clone();
    unknown[8..16].copy_from_slice(&0x1234_5678_9abc_def0u64.to_be_bytes());
    evil.send(&unknown).await; // unknown session
                               // Forged source: a frame of the session, tampered (fails authentication), from a new
                               // address. Also the replayed legit frame from the new address.
    let mut forged = raw.seal(MessageType::WalletBalance, XTMPFlags::empty(), b"forged");
    forged[90] ^= 1;
    evil.send(&forged).await;
    evil.send(&d2).await;
    // Two frames in one datagram: the second is garbage after a valid first -> first
    // is processed (it fails: it is a replay), the walk stops at the garbage.
    let mut two = d2.clone();
    two.extend_from_slice(&[0xEE; 200]);
    evil.send(&two).await;
    eventually("the hostile datagrams are counted", || {
        let st = udp_status(&server);
        session_dgram(&server).frames_rejected >= 4
            && st.datagrams_dropped >= 3
            && st.unknown_session >= 1
    })
    .await;
    assert!(
        evil.recv(Duration::from_millis(100)).await.is_none(),
        "nothing is answered"
    );

    let m = session_dgram(&server);
    assert_eq!(
        m.peer_address.clone().unwrap(),
        my_addr,
        "unauthenticated datagrams move nothing"
    );
    assert_eq!(m.migrations, 0);
    assert!(m.frames_rejected >= 4, "{m:?}");
    let st = udp_status(&server);
    assert!(st.datagrams_dropped >= 3, "{st:?}");
    assert!(st.unknown_session >= 1, "{st:?}");
    assert_eq!(seen.lock().unwrap()[&7], 1);

    // The session and the server go on.
    let d3 = raw.seal_reliable(MessageType::BundleSubmit, 2, &8u64.to_be_bytes());
    raw.send(&d3).await;
    let got = raw
        .collect_until(Duration::from_secs(5), |g| has(g, MessageType::Response))
        .await;
    assert!(got
        .iter()
        .any(|(h, _)| h.message_type == MessageType::Response));
    assert_eq!(seen.lock().unwrap()[&8], 1);
    legit_client_works(&server).await;
    server.shutdown().await;
}

/// Roaming: an authenticated datagram from a new address moves the session there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roaming_moves_the_session_on_authenticated_datagrams() {
    let (server, _) = server().await;
    let relay =
        LossyRelay::start(server.udp_local_addr().unwrap(), Impairments::default(), 3).await;
    let mut o = client_options();
    o.transport_order = vec![TransportStep::udp_to(relay.addr())];
    let c = XTMPClient::connect(server.local_addr(), o).await.unwrap();
    let r = c
        .request(MessageType::WalletBalance, b"one".to_vec())
        .await
        .unwrap();
    assert_eq!(r.body, b"one");
    let first = session_dgram(&server).peer_address.unwrap();
    let new_addr = relay.rebind_upstream().await;
    assert_ne!(first, new_addr.to_string());
    let r = c
        .request(MessageType::WalletBalance, b"two".to_vec())
        .await
        .unwrap();
    assert_eq!(r.body, b"two");
    let m = session_dgram(&server);
    assert_eq!(m.peer_address.clone().unwrap(), new_addr.to_string());
    assert_eq!(m.migrations, 1);
    assert_eq!(server.sessions()[0].peer_address, new_addr.to_string());
    // Pushes and replies keep coming at the new address.
    for i in 0..20u8 {
        let r = c
            .request(MessageType::WalletBalance, vec![i])
            .await
            .unwrap();
        assert_eq!(r.body, vec![i]);
    }
    c.close().await;
    server.shutdown().await;
}

/// The handshake over UDP: the cookie step first (a `Retry`, smaller than what was
/// received, no state, no KEM work), bounded reassembly, the answer in fragments, and a
/// repeated message 1 answered from the cache without a second session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_handshake_cookie_first_and_fragment_limits() {
    let (server, _) = server().await;
    let udp = server.udp_local_addr().unwrap();
    let a = RawUdp::new(udp).await;
    let key = server_key().public_key().clone();
    let (mut hs, m1) =
        ClientHandshake::start(ClientConfig::new(key.clone()), unix_ns(), &mut RawRng).unwrap();
    assert_eq!(m1.len(), 2464);
    let frags = fragment_handshake(&m1, None, 1, 1200).unwrap();
    assert_eq!(frags.len(), 3);
    // 1. Without a cookie every fragment gets a Retry smaller than itself; nothing is kept.
    let mut cookie = None;
    for f in &frags {
        a.send(f).await;
        let r = a.recv(Duration::from_secs(5)).await.unwrap();
        assert_eq!(r.len(), 112);
        assert!(r.len() < f.len());
        cookie = Some(r);
    }
    let st = server.status();
    assert_eq!(st.udp.as_ref().unwrap().reassemblies_pending, 0);
    assert!(st.retries_sent >= 3);
    assert_eq!(st.handshakes_completed, 0);
    // 2. A wrong cookie: Retry again, nothing kept.
    let bad = fragment_handshake(&m1, Some(&[9; 16]), 2, 1200).unwrap();
    a.send(&bad[0]).await;
    assert_eq!(a.recv(Duration::from_secs(5)).await.unwrap().len(), 112);
    assert_eq!(udp_status(&server).reassemblies_pending, 0);
    // 3. Another address cannot use this address's cookie.
    let retry = cookie.unwrap();
    let ClientOutcome::Retry(m1c) = hs.handle(std::time::Instant::now(), &retry).unwrap() else {
        panic!("expected Retry")
    };
    let c: [u8; 16] = retry[HEADER_LEN..].try_into().unwrap();
    let b = RawUdp::new(udp).await;
    let stolen = fragment_handshake(&m1c, Some(&c), 3, 1200).unwrap();
    b.send(&stolen[0]).await;
    assert_eq!(b.recv(Duration::from_secs(5)).await.unwrap().len(), 112);
    assert_eq!(udp_status(&server).reassemblies_pending, 0);
    // 4. Valid cookie, incomplete messages: at most 4 reassemblies per address.
    for id in 10..20u64 {
        let f = fragment_handshake(&m1c, Some(&c), id, 1200).unwrap();
        a.send(&f[0]).await;
    }
    eventually("10 partial reassemblies seen", || {
        udp_status(&server).handshake_fragments >= 15
    })
    .await;
    let st = udp_status(&server);
    assert_eq!(st.reassemblies_pending, 4, "{st:?}");
    assert!(st.reassemblies_dropped >= 6, "{st:?}");
    // An overlapping, inconsistent fragment is refused.
    let mut overlap = fragment_handshake(&m1c, Some(&c), 19, 1200).unwrap()[1].clone();
    // offset field: payload bytes 26..28 -> point into fragment 0's range.
    overlap[HEADER_LEN + 26..HEADER_LEN + 28].copy_from_slice(&100u16.to_be_bytes());
    let crc = xtmp_proto::crc32(&overlap[HEADER_LEN..]);
    overlap[28..32].copy_from_slice(&crc.to_be_bytes());
    a.send(&overlap).await;
    // 5. The complete message 1: answered in fragments, each within the budget.
    let good = fragment_handshake(&m1c, Some(&c), 100, 1200).unwrap();
    for f in good.iter().rev() {
        a.send(f).await;
    }
    let mut answer = Vec::new();
    while answer.len() < 2 {
        let d = a
            .recv(Duration::from_secs(5))
            .await
            .expect("answer fragments");
        assert!(d.len() <= 1200);
        answer.push(d);
    }
    let mut r: xtmp_proto::datagram::Reassembler<()> =
        xtmp_proto::datagram::Reassembler::new(Default::default());
    let mut whole = None;
    for d in &answer {
        let f = xtmp_proto::datagram::parse_fragment(d).unwrap();
        assert_eq!(f.message_id, 100);
        if let Some(w) = r.handle(std::time::Instant::now(), (), &f).unwrap() {
            whole = Some(w);
        }
    }
    let ClientOutcome::Established(s) = hs
        .handle(std::time::Instant::now(), &whole.unwrap())
        .unwrap()
    else {
        panic!("expected Established")
    };
    assert_eq!(server.sessions().len(), 1);
    assert_eq!(server.sessions()[0].session_id, s.session_id());
    // 6. Message 1 repeated (its answer was "lost"): the same answer, no second session.
    for f in &good {
        a.send(f).await;
    }
    let again = a.recv(Duration::from_secs(5)).await.unwrap();
    assert!(answer.contains(&again));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.sessions().len(), 1);
    assert_eq!(server.status().handshakes_completed, 1);
    legit_client_works(&server).await;
    server.shutdown().await;
}
