//! Datagram transport in the core (`PROTOCOL.md` §9): two paths in one session, key
//! updates over a lossy datagram path, and the fragmented handshake with a cookie.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use xtmp_proto::datagram::*;
use xtmp_proto::*;

fn seal_on(s: &mut Session, path: PathId, t: MessageType, p: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    s.seal_on(path, t, XTMPFlags::empty(), p, &mut f).unwrap();
    f
}

fn open_on(
    s: &mut Session,
    path: PathId,
    now: Instant,
    f: &mut [u8],
) -> Result<Vec<u8>, XTMPError> {
    let mut r = rng(5);
    match s.open_on(path, now, f, &mut r)? {
        Received::Message { payload, .. } => Ok(payload.into_owned()),
        other => Ok(format!("{other:?}").into_bytes()),
    }
}

#[test]
fn two_paths_share_numbers_but_not_replay_state() {
    let mut p = pair(EncryptionType::PostQuantum);
    let now = p.now;
    // No datagram path yet: sealing or opening on it fails.
    let mut out = Vec::new();
    assert!(p
        .client
        .seal_on(
            PathId::Datagram,
            MessageType::LiveUpdates,
            XTMPFlags::empty(),
            b"x",
            &mut out
        )
        .is_err());
    p.client.enable_datagram_path();
    p.server.enable_datagram_path();
    assert!(p.server.has_datagram_path());
    // Interleave: stream frames 1, 3, 5 ...; datagram frames 2, 4, 6 ...
    let mut stream = Vec::new();
    let mut dgram = Vec::new();
    for i in 0..40u32 {
        if i % 2 == 0 {
            stream.push(seal_on(
                &mut p.client,
                PathId::Primary,
                MessageType::WalletBalance,
                &i.to_be_bytes(),
            ));
        } else {
            dgram.push(seal_on(
                &mut p.client,
                PathId::Datagram,
                MessageType::MetricsStream,
                &i.to_be_bytes(),
            ));
        }
    }
    assert_eq!(PathId::of_frame(&dgram[0]), Some(PathId::Datagram));
    assert_eq!(PathId::of_frame(&stream[0]), Some(PathId::Primary));
    // A datagram frame injected into the stream (and vice versa) fails authentication of
    // its path, before any state changes.
    assert_eq!(
        open_on(&mut p.server, PathId::Primary, now, &mut dgram[0].clone()).unwrap_err(),
        XTMPError::UnknownKeyId
    );
    assert_eq!(
        open_on(&mut p.server, PathId::Datagram, now, &mut stream[0].clone()).unwrap_err(),
        XTMPError::UnknownKeyId
    );
    // Datagrams reordered and far ahead of the stream: all accepted, duplicates refused.
    for f in dgram.iter().rev() {
        open_on(&mut p.server, PathId::Datagram, now, &mut f.clone()).unwrap();
    }
    assert!(matches!(
        open_on(&mut p.server, PathId::Datagram, now, &mut dgram[3].clone()),
        Err(XTMPError::Replay(_))
    ));
    // The stream path accepts its gaps, in order, however far the datagram path ran ahead.
    for f in &stream[..10] {
        open_on(&mut p.server, PathId::Primary, now, &mut f.clone()).unwrap();
    }
    // ... but never goes backwards.
    assert!(matches!(
        open_on(&mut p.server, PathId::Primary, now, &mut stream[5].clone()),
        Err(XTMPError::OutOfOrder { .. })
    ));
    for f in &stream[10..] {
        open_on(&mut p.server, PathId::Primary, now, &mut f.clone()).unwrap();
    }
}

#[test]
fn heartbeats_answer_on_their_own_path() {
    let mut p = pair(EncryptionType::Aes256Gcm);
    p.client.enable_datagram_path();
    p.server.enable_datagram_path();
    let t0 = p.now;
    p.client.send_ping_on(t0, PathId::Datagram).unwrap();
    assert!(p.client.ping_outstanding_on(PathId::Datagram));
    assert!(!p.client.ping_outstanding_on(PathId::Primary));
    let mut ping = p.client.poll_transmit().unwrap();
    assert_eq!(PathId::of_frame(&ping), Some(PathId::Datagram));
    let mut r = rng(1);
    assert!(matches!(
        p.server
            .open_on(PathId::Datagram, t0, &mut ping, &mut r)
            .unwrap(),
        Received::Ping
    ));
    let mut pong = p.server.poll_transmit().unwrap();
    assert_eq!(PathId::of_frame(&pong), Some(PathId::Datagram));
    let t1 = t0 + Duration::from_millis(7);
    assert!(matches!(
        p.client
            .open_on(PathId::Datagram, t1, &mut pong, &mut r)
            .unwrap(),
        Received::Pong { .. }
    ));
    assert_eq!(
        p.client.rtt_on(PathId::Datagram).smoothed(),
        Some(Duration::from_millis(7))
    );
    assert!(p.client.rtt_on(PathId::Primary).smoothed().is_none());
}

/// A key update over a datagram path where the first `KeyUpdateAck` is lost and the
/// `KeyUpdate` itself is duplicated: the initiator repeats it under a new number, the
/// responder repeats its stored answer, and both end on the new generation.
#[test]
fn key_update_survives_loss_on_a_datagram_session() {
    let mut cfg = SessionConfig::default();
    cfg.replay_mode = ReplayMode::Window;
    let mut p = pair_with(EncryptionType::PostQuantum, cfg);
    let now = p.now;
    let mut r = rng(9);
    p.client.initiate_key_update(&mut r).unwrap();
    let ku = p.client.poll_transmit().unwrap();
    // Server answers; the answer is lost.
    assert!(matches!(
        p.server.open(now, &mut ku.clone(), &mut r).unwrap(),
        Received::KeyUpdated { generation: 1 }
    ));
    let lost = p.server.poll_transmit().unwrap();
    drop(lost);
    // The original KeyUpdate is duplicated by the network: a replay, refused.
    assert!(p.server.open(now, &mut ku.clone(), &mut r).is_err());
    // Many application frames pass meanwhile (the window moves on).
    for i in 0..3000u32 {
        let mut f = Vec::new();
        p.client
            .seal(
                MessageType::MetricsStream,
                XTMPFlags::empty(),
                &i.to_be_bytes(),
                &mut f,
            )
            .unwrap();
        p.server.open(now, &mut f, &mut r).unwrap();
    }
    // Retransmission: a new frame with the same payload.
    assert!(p.client.requeue_key_update().unwrap());
    let mut ku2 = p.client.poll_transmit().unwrap();
    assert_ne!(ku2, ku);
    assert!(matches!(
        p.server.open(now, &mut ku2, &mut r).unwrap(),
        Received::Handled
    ));
    let mut again = p.server.poll_transmit().unwrap();
    let mut again_dup = again.clone();
    assert!(matches!(
        p.client.open(now, &mut again, &mut r).unwrap(),
        Received::KeyUpdated { generation: 1 }
    ));
    assert!(p.client.open(now, &mut again_dup, &mut r).is_err());
    assert!(!p.client.requeue_key_update().unwrap());
    assert_eq!(p.client.key_generation(), 1);
    assert_eq!(p.server.key_generation(), 1);
    // Traffic both ways under generation 1.
    let mut f = Vec::new();
    p.server
        .seal(MessageType::Response, XTMPFlags::empty(), b"ok", &mut f)
        .unwrap();
    p.client.open(now, &mut f, &mut r).unwrap();
}

/// The handshake over datagrams (`PROTOCOL.md` §9.4): fragment 0 without a cookie gets a
/// `Retry` (smaller than the fragment, no state kept, no KEM work); the fragments with the
/// cookie are reassembled and accepted; the answer comes back in fragments.
#[test]
fn fragmented_handshake_with_retry() {
    let mut r = rng(4);
    let t0 = Instant::now();
    let mut server = ServerHandshaker::new(server_config(&[EncryptionType::PostQuantum]));
    server.maintain(t0, &mut r);
    let addr = b"192.0.2.1:4000";
    for client_key in [None, Some(client_key())] {
        let mut cc = ClientConfig::new(server_key().public_key().clone());
        cc.client_key = client_key.clone();
        let (mut ch, m1) = ClientHandshake::start(cc, 1_700_000_000_000_000_001, &mut r).unwrap();
        assert_eq!(m1.len(), if client_key.is_some() { 3696 } else { 2464 });
        let frags = fragment_handshake(&m1, None, 42, DEFAULT_DATAGRAM_BUDGET).unwrap();
        assert!(frags.iter().all(|f| f.len() <= DEFAULT_DATAGRAM_BUDGET));
        // Server: first fragment, no cookie -> Retry, smaller than what it received.
        let f0 = parse_fragment(&frags[0]).unwrap();
        assert!(!server.cookie_valid_for(addr, &f0.cookie));
        let retry = server.retry_frame_for(addr).unwrap();
        assert!(retry.len() < frags[0].len());
        assert_eq!(retry.len(), 112);
        let ClientOutcome::Retry(m1c) = ch.handle(t0, &retry).unwrap() else {
            panic!("expected a retry")
        };
        let cookie: [u8; 16] = retry[HEADER_LEN..].try_into().unwrap();
        let frags = fragment_handshake(&m1c, Some(&cookie), 43, DEFAULT_DATAGRAM_BUDGET).unwrap();
        let mut ra: Reassembler<&[u8]> = Reassembler::new(ReassemblyLimits::default());
        let mut whole = None;
        for f in frags.iter().rev() {
            let f = parse_fragment(f).unwrap();
            assert!(server.cookie_valid_for(addr, &f.cookie));
            assert!(!server.cookie_valid_for(b"192.0.2.2:4000", &f.cookie));
            if let Some(m) = ra.handle(t0, &addr[..], &f).unwrap() {
                whole = Some(m);
            }
        }
        let whole = whole.unwrap();
        assert_eq!(whole, m1c);
        let ServerOutcome::Accepted { ack, .. } =
            server.handle(t0, addr, true, &whole, &mut r).unwrap()
        else {
            panic!("expected Accepted")
        };
        let ack_frags = fragment_handshake(&ack, None, 43, DEFAULT_DATAGRAM_BUDGET).unwrap();
        assert!(ack_frags.len() >= 2);
        let mut rc: Reassembler<u8> = Reassembler::new(ReassemblyLimits::default());
        let mut got = None;
        for f in &ack_frags {
            if let Some(m) = rc.handle(t0, 0, &parse_fragment(f).unwrap()).unwrap() {
                got = Some(m);
            }
        }
        let ClientOutcome::Established(s) = ch.handle(t0, &got.unwrap()).unwrap() else {
            panic!("expected Established")
        };
        assert_ne!(s.session_id(), 0);
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes never make the datagram parsers panic, and the walker only
        /// yields ranges inside the datagram, in order.
        #[test]
        fn parsers_never_panic(d in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let mut pos = 0;
            while let Some(r) = next_frame(&d, pos, 1104) {
                match r {
                    Ok(range) => {
                        prop_assert!(range.start == pos && range.end <= d.len() && range.end > pos);
                        pos = range.end;
                    }
                    Err(_) => break,
                }
            }
            let _ = parse_fragment(&d);
            let _ = parse_frame_fragment(&d);
            let _ = decode_datagram_ack(&d).map(|i| i.count());
            let _ = PathAttach::decode(&d);
            let _ = split_reliable(&d);
            let mut out = Vec::new();
            let _ = pack_datagrams(&d, 1200, &mut out);
        }

        /// Any fragments: the reassembler stays within its limits and only completes a
        /// message of the declared length.
        #[test]
        fn reassembly_is_bounded(frags in proptest::collection::vec(
            (0u8..6, 0u64..4, 1u16..4096, 0u16..4096, 1usize..1100), 0..200))
        {
            let mut r: Reassembler<u8> = Reassembler::new(ReassemblyLimits::default());
            let t0 = Instant::now();
            let data = vec![7u8; 1100];
            for (peer, id, total, off, len) in frags {
                let end = usize::from(off) + len;
                if end > usize::from(total) {
                    continue; // parse_fragment never yields this
                }
                let f = Fragment { cookie: [0; 16], message_id: id, total_len: total, offset: off, data: &data[..len] };
                if let Ok(Some(m)) = r.handle(t0, peer, &f) {
                    prop_assert_eq!(m.len(), usize::from(total));
                }
                // 6 peers, at most 4 reassemblies each.
                prop_assert!(r.len() <= 6 * 4);
            }
        }
    }
}
