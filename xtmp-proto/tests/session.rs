//! Record protection, replay protection, rotation and the session state machine.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use xtmp_proto::*;

fn seal(s: &mut Session, t: MessageType, p: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    s.seal(t, XTMPFlags::empty(), p, &mut f).unwrap();
    f
}

fn open_msg(s: &mut Session, now: Instant, f: &mut [u8]) -> Result<Vec<u8>, XTMPError> {
    let mut r = rng(77);
    match s.open(now, f, &mut r)? {
        Received::Message { payload, .. } => Ok(payload.into_owned()),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn every_encryption_type_round_trips_and_rejects_tampering() {
    for enc in ALL_ENC {
        let mut p = pair(enc);
        let now = p.now;
        let msg = b"{\"wallet\":\"w1\",\"amount\":5}";
        let f = seal(&mut p.client, MessageType::WalletTransaction, msg);
        let h = Header::parse(&f, u32::MAX).unwrap();
        assert_eq!(h.encryption_type, enc);
        assert_eq!(
            h.flags.contains(XTMPFlags::ENCRYPTED),
            enc != EncryptionType::None
        );
        if enc == EncryptionType::None {
            assert_eq!(&f[HEADER_LEN..], msg, "None keeps the payload in clear");
        } else {
            assert_ne!(&f[HEADER_LEN..], msg, "{enc:?} must encrypt");
        }
        // Tamper with each authenticated header region, the payload and the tag. The CRC is
        // recomputed so the AEAD/HMAC (or a specific earlier check) must catch it.
        let regions: &[(usize, &str)] = &[
            (5, "type"),
            (7, "flags"),
            (17, "seq"),
            (45, "key_id"),
            (60, "nonce"),
            (85, "tag"),
            (HEADER_LEN + 3, "payload"),
        ];
        for &(off, what) in regions {
            let mut t = f.clone();
            t[off] ^= 0x02;
            let crc = crc32(&t[HEADER_LEN..]);
            t[28..32].copy_from_slice(&crc.to_be_bytes());
            let e = open_msg(&mut p.server, now, &mut t).unwrap_err();
            assert!(
                matches!(
                    e,
                    XTMPError::AuthenticationFailed
                        | XTMPError::UnknownKeyId
                        | XTMPError::NonceMismatch
                        | XTMPError::OutOfOrder { .. }
                        | XTMPError::UnknownFlags(_)
                        | XTMPError::FlagMismatch
                ),
                "{enc:?} {what}: {e:?}"
            );
        }
        // A failed frame changed nothing: the genuine one still opens.
        let mut g = f.clone();
        assert_eq!(open_msg(&mut p.server, now, &mut g).unwrap(), msg);
        assert!(p.server.stats().auth_failures >= 4);
    }
}

#[test]
fn checksum_catches_corruption_before_crypto() {
    let mut p = pair(EncryptionType::PostQuantum);
    let mut f = seal(&mut p.client, MessageType::Heartbeat, &[0; 9]);
    f[HEADER_LEN] ^= 1;
    assert!(matches!(
        p.server.open(p.now, &mut f, &mut p.rng),
        Err(XTMPError::ChecksumMismatch { .. })
    ));
    assert_eq!(p.server.stats().auth_failures, 0);
    assert_eq!(p.server.stats().malformed, 1);
}

#[test]
fn ordered_mode_rejects_replay_gap_and_wrong_session() {
    let mut p = pair(EncryptionType::Aes256Gcm);
    let now = p.now;
    let f0 = seal(&mut p.client, MessageType::WalletBalance, b"a");
    let f1 = seal(&mut p.client, MessageType::WalletBalance, b"b");
    let f2 = seal(&mut p.client, MessageType::WalletBalance, b"c");
    // Gap.
    assert_eq!(
        open_msg(&mut p.server, now, &mut f1.clone()).unwrap_err(),
        XTMPError::OutOfOrder {
            expected: 1,
            got: 2
        }
    );
    open_msg(&mut p.server, now, &mut f0.clone()).unwrap();
    // Replay.
    assert_eq!(
        open_msg(&mut p.server, now, &mut f0.clone()).unwrap_err(),
        XTMPError::OutOfOrder {
            expected: 2,
            got: 1
        }
    );
    open_msg(&mut p.server, now, &mut f1.clone()).unwrap();
    // Wrong session id.
    let mut w = f2.clone();
    w[8] ^= 0xFF;
    assert!(matches!(
        open_msg(&mut p.server, now, &mut w).unwrap_err(),
        XTMPError::WrongSession { .. }
    ));
    open_msg(&mut p.server, now, &mut f2.clone()).unwrap();
    assert_eq!(p.server.stats().replays, 2);
}

#[test]
fn window_mode_accepts_reordering_rejects_duplicates() {
    let mut cfg = SessionConfig::default();
    cfg.replay_mode = ReplayMode::Window;
    let mut p = pair_with(EncryptionType::PostQuantum, cfg);
    let now = p.now;
    let frames: Vec<Vec<u8>> = (0..3000u32)
        .map(|i| seal(&mut p.client, MessageType::MetricsStream, &i.to_be_bytes()))
        .collect();
    // Deliver in a scrambled order within the window; duplicate some.
    let mut order: Vec<usize> = (0..3000).collect();
    for chunk in order.chunks_mut(500) {
        chunk.reverse();
    }
    let mut got = HashSet::new();
    for &i in &order {
        let out = open_msg(&mut p.server, now, &mut frames[i].clone()).unwrap();
        assert!(got.insert(out));
        if i % 7 == 0 {
            assert_eq!(
                open_msg(&mut p.server, now, &mut frames[i].clone()).unwrap_err(),
                XTMPError::Replay(i as u64 + 1)
            );
        }
    }
    assert_eq!(got.len(), 3000);
    // Far behind the window.
    assert_eq!(
        open_msg(&mut p.server, now, &mut frames[0].clone()).unwrap_err(),
        XTMPError::TooOld(1)
    );
}

#[test]
fn nonces_never_repeat_under_a_key_across_rotations() {
    let mut p = pair(EncryptionType::PostQuantum);
    let now = p.now;
    let mut seen = HashSet::new();
    for round in 0..4u32 {
        for i in 0..300u32 {
            let f = seal(&mut p.client, MessageType::LiveUpdates, &i.to_be_bytes());
            let h = Header::parse(&f, u32::MAX).unwrap();
            // (key id, nonce) must be unique; key ids change with the generation.
            assert!(
                seen.insert((h.key_id, h.nonce)),
                "nonce reuse in round {round} msg {i}"
            );
            open_msg(&mut p.server, now, &mut f.clone()).unwrap();
        }
        p.client.initiate_key_update(&mut p.rng).unwrap();
        let ev = pump(&mut p.client, &mut p.server, now, &mut p.rng);
        assert!(ev[0].starts_with("KeyUpdated"), "{ev:?}");
        let ev = pump(&mut p.server, &mut p.client, now, &mut p.rng);
        assert!(ev[0].starts_with("KeyUpdated"), "{ev:?}");
        assert_eq!(p.client.key_generation(), round + 1);
        assert_eq!(p.server.key_generation(), round + 1);
    }
    // Also check the server side's nonces are distinct from the client's (direction byte).
    let a = seal(&mut p.client, MessageType::Ack, &[0; 8]);
    let b = seal(&mut p.server, MessageType::Ack, &[0; 8]);
    assert_ne!(a[56..80], b[56..80]);
}

#[test]
fn rotation_with_messages_in_flight_loses_nothing() {
    // Ordered transport: messages sealed by the client under generation 0 are still in
    // flight while the server already answered the key update.
    let mut p = pair(EncryptionType::ChaCha20Poly1305);
    let now = p.now;
    p.client.initiate_key_update(&mut p.rng).unwrap();
    let ku = p.client.poll_transmit().unwrap();
    // The client keeps sending under generation 0 meanwhile.
    let in_flight: Vec<Vec<u8>> = (0..5)
        .map(|i| seal(&mut p.client, MessageType::BundleSubmit, &[i]))
        .collect();
    // Server handles the update: answers and switches its send key.
    let mut ku = ku;
    let ev = p.server.open(now, &mut ku, &mut p.rng).unwrap();
    assert!(matches!(ev, Received::KeyUpdated { generation: 1 }));
    let ack = p.server.poll_transmit().unwrap();
    // Server sends under generation 1 right away.
    let s1 = seal(&mut p.server, MessageType::Response, b"gen1");
    assert_eq!(Header::parse(&s1, u32::MAX).unwrap().key_id[11], 1);
    // The in-flight generation-0 frames still open on the server (previous keys).
    for (i, f) in in_flight.iter().enumerate() {
        assert_eq!(
            open_msg(&mut p.server, now, &mut f.clone()).unwrap(),
            [i as u8]
        );
    }
    assert!(p.server.has_previous_keys());
    // Client gets the ack, switches, and reads the generation-1 response.
    assert!(matches!(
        p.client.open(now, &mut ack.clone(), &mut p.rng).unwrap(),
        Received::KeyUpdated { generation: 1 }
    ));
    assert_eq!(
        open_msg(&mut p.client, now, &mut s1.clone()).unwrap(),
        b"gen1"
    );
    // The first generation-1 frame from the client drops the server's old keys.
    let c1 = seal(&mut p.client, MessageType::BundleStatus, b"x");
    open_msg(&mut p.server, now, &mut c1.clone()).unwrap();
    assert!(!p.server.has_previous_keys());
    // A generation-0 frame now is unknown.
    let mut stale = in_flight[0].clone();
    assert!(p.server.open(now, &mut stale, &mut p.rng).is_err());
    assert_eq!(p.server.stats().key_updates, 1);
}

#[test]
fn previous_generation_expires_after_overlap_in_window_mode() {
    let mut cfg = SessionConfig::default();
    cfg.replay_mode = ReplayMode::Window;
    cfg.key_overlap = Duration::from_secs(2);
    let mut p = pair_with(EncryptionType::PostQuantum, cfg);
    let now = p.now;
    let old: Vec<Vec<u8>> = (0..3)
        .map(|i| seal(&mut p.client, MessageType::EventStream, &[i]))
        .collect();
    p.client.initiate_key_update(&mut p.rng).unwrap();
    pump(&mut p.client, &mut p.server, now, &mut p.rng);
    pump(&mut p.server, &mut p.client, now, &mut p.rng);
    // New-generation frame arrives first (reordering), then an old one: both open.
    let new = seal(&mut p.client, MessageType::EventStream, b"new");
    open_msg(&mut p.server, now, &mut new.clone()).unwrap();
    open_msg(&mut p.server, now, &mut old[1].clone()).unwrap();
    assert!(p.server.has_previous_keys());
    // After the overlap the old generation is zeroized and gone.
    let t = p.server.poll_timeout().unwrap();
    assert!(t <= now + Duration::from_secs(2));
    p.server
        .handle_timeout(now + Duration::from_secs(3), &mut p.rng)
        .unwrap();
    assert!(!p.server.has_previous_keys());
    assert_eq!(
        open_msg(&mut p.server, now, &mut old[2].clone()).unwrap_err(),
        XTMPError::UnknownKeyId
    );
}

#[test]
fn colliding_key_updates_resolve_to_the_clients() {
    let mut p = pair(EncryptionType::PostQuantum);
    let now = p.now;
    p.client.initiate_key_update(&mut p.rng).unwrap();
    p.server.initiate_key_update(&mut p.rng).unwrap();
    let cku = p.client.poll_transmit().unwrap();
    let sku = p.server.poll_transmit().unwrap();
    // Client ignores the server's.
    assert!(matches!(
        p.client.open(now, &mut sku.clone(), &mut p.rng).unwrap(),
        Received::Handled
    ));
    // Server abandons its own and answers the client's.
    assert!(matches!(
        p.server.open(now, &mut cku.clone(), &mut p.rng).unwrap(),
        Received::KeyUpdated { generation: 1 }
    ));
    pump(&mut p.server, &mut p.client, now, &mut p.rng);
    assert_eq!(p.client.key_generation(), 1);
    assert_eq!(p.server.key_generation(), 1);
    assert!(!p.server.key_update_in_progress());
    assert_eq!(
        transfer(
            &mut p.client,
            &mut p.server,
            now,
            &mut p.rng,
            MessageType::Ack,
            b"12345678"
        ),
        b"12345678"
    );
    assert_eq!(
        transfer(
            &mut p.server,
            &mut p.client,
            now,
            &mut p.rng,
            MessageType::Ack,
            b"87654321"
        ),
        b"87654321"
    );
}

#[test]
fn rotation_is_driven_by_time_and_usage_limits() {
    let mut cfg = SessionConfig::default();
    cfg.key_rotation_interval = Duration::from_secs(10);
    cfg.soft_message_limit = 50;
    cfg.hard_message_limit = 60;
    let mut p = pair_with(EncryptionType::Aes256Gcm, cfg);
    let now = p.now;
    // Time: the client's deadline is within the last 10 % of the interval (jittered per
    // generation), the server's 10 % after it.
    let c = p.client.poll_timeout().unwrap();
    assert!(c > now + Duration::from_secs(9) && c <= now + Duration::from_secs(10));
    assert_eq!(p.server.poll_timeout(), Some(now + Duration::from_secs(11)));
    p.client
        .handle_timeout(c - Duration::from_millis(1), &mut p.rng)
        .unwrap();
    assert!(
        !p.client.key_update_in_progress(),
        "not before its deadline"
    );
    p.client
        .handle_timeout(now + Duration::from_secs(10), &mut p.rng)
        .unwrap();
    assert!(p.client.key_update_in_progress());
    pump(&mut p.client, &mut p.server, now, &mut p.rng);
    pump(&mut p.server, &mut p.client, now, &mut p.rng);
    assert_eq!(p.client.key_generation(), 1);
    // Usage: after the soft limit a rotation is wanted right away.
    for _ in 0..50 {
        let f = seal(&mut p.client, MessageType::LiveUpdates, b"x");
        open_msg(&mut p.server, now, &mut f.clone()).unwrap();
    }
    // Due at once: the deadline is the latest instant the session has seen.
    let due = p.client.poll_timeout().unwrap();
    assert!(due <= now + Duration::from_secs(10));
    assert!(due < now + Duration::from_secs(19), "not the next interval");
    // Hard limit: sending stops until the rotation completes.
    for _ in 50..60 {
        let f = seal(&mut p.client, MessageType::LiveUpdates, b"x");
        open_msg(&mut p.server, now, &mut f.clone()).unwrap();
    }
    let mut f = Vec::new();
    assert_eq!(
        p.client
            .seal(MessageType::LiveUpdates, XTMPFlags::empty(), b"x", &mut f)
            .unwrap_err(),
        XTMPError::KeyExhausted
    );
    p.client.handle_timeout(due, &mut p.rng).unwrap();
    pump(&mut p.client, &mut p.server, now, &mut p.rng);
    pump(&mut p.server, &mut p.client, now, &mut p.rng);
    assert_eq!(p.client.key_generation(), 2);
    seal(&mut p.client, MessageType::LiveUpdates, b"again");
}

/// Sessions opened in the same instant do not all rotate in the same instant: each
/// client deadline is `interval × (1 − j)`, `j` in `[0, 0.1)`, from the session's own
/// secrets (PROTOCOL §5.7).
#[test]
fn rotation_deadlines_are_spread_over_the_last_tenth_of_the_interval() {
    let mut cfg = SessionConfig::default();
    cfg.key_rotation_interval = Duration::from_secs(300);
    let mut offsets = Vec::new();
    for seed in 0..32 {
        let p = pair_seeded(EncryptionType::Aes256Gcm, cfg.clone(), seed);
        let d = p.client.poll_timeout().unwrap() - p.now;
        assert!(
            d > Duration::from_secs(270) && d <= Duration::from_secs(300),
            "{d:?}"
        );
        assert_eq!(
            p.server.poll_timeout().unwrap() - p.now,
            Duration::from_secs(330)
        );
        offsets.push(d);
    }
    offsets.sort();
    offsets.dedup();
    assert!(offsets.len() >= 30, "deadlines not spread: {offsets:?}");
    let spread = *offsets.last().unwrap() - offsets[0];
    assert!(spread > Duration::from_secs(15), "spread only {spread:?}");
}

#[test]
fn heartbeat_measures_rtt_and_disconnect_is_sticky() {
    let mut p = pair(EncryptionType::PostQuantum);
    let t0 = p.now;
    p.client.send_ping(t0).unwrap();
    let mut ping = p.client.poll_transmit().unwrap();
    assert!(matches!(
        p.server.open(t0, &mut ping, &mut p.rng).unwrap(),
        Received::Ping
    ));
    let mut pong = p.server.poll_transmit().unwrap();
    let r = p
        .client
        .open(t0 + Duration::from_millis(30), &mut pong, &mut p.rng)
        .unwrap();
    assert!(matches!(r, Received::Pong { rtt } if rtt == Duration::from_millis(30)));
    assert_eq!(p.client.rtt().smoothed(), Some(Duration::from_millis(30)));
    // Disconnect.
    let mut f = Vec::new();
    p.client.close(ErrorCode::NO_ERROR, "bye", &mut f).unwrap();
    match p.server.open(t0, &mut f, &mut p.rng).unwrap() {
        Received::Disconnect(d) => {
            assert_eq!(d.code, ErrorCode::NO_ERROR);
            assert_eq!(d.reason, "bye");
        }
        other => panic!("{other:?}"),
    }
    let mut out = Vec::new();
    assert_eq!(
        p.client
            .seal(MessageType::WalletAuth, XTMPFlags::empty(), b"x", &mut out)
            .unwrap_err(),
        XTMPError::Closed
    );
    assert_eq!(
        p.server
            .seal(MessageType::WalletAuth, XTMPFlags::empty(), b"x", &mut out)
            .unwrap_err(),
        XTMPError::Closed
    );
}

#[test]
fn compression_is_used_only_when_it_helps_and_is_bounded() {
    let mut p = pair(EncryptionType::PostQuantum);
    let now = p.now;
    let text = br#"{"event":"balance","wallet":"w1","balance":100}"#.repeat(50);
    let mut f = Vec::new();
    p.client
        .seal(
            MessageType::LiveUpdates,
            XTMPFlags::COMPRESSED,
            &text,
            &mut f,
        )
        .unwrap();
    let h = Header::parse(&f, u32::MAX).unwrap();
    assert!(h.flags.contains(XTMPFlags::COMPRESSED));
    assert!((h.payload_length as usize) < text.len() / 4);
    assert_eq!(open_msg(&mut p.server, now, &mut f).unwrap(), text);
    // Tiny payloads are not compressed.
    let mut f = Vec::new();
    p.client
        .seal(
            MessageType::LiveUpdates,
            XTMPFlags::COMPRESSED,
            b"ab",
            &mut f,
        )
        .unwrap();
    assert!(!Header::parse(&f, u32::MAX)
        .unwrap()
        .flags
        .contains(XTMPFlags::COMPRESSED));
    open_msg(&mut p.server, now, &mut f).unwrap();
}

#[test]
fn decompression_bomb_is_refused() {
    let mut cfg = SessionConfig::default();
    cfg.max_payload = 64 * 1024;
    let mut p = pair_with(EncryptionType::PostQuantum, cfg);
    let now = p.now;
    // A sender that lies: a valid LZ4 block of 60 KiB zeros claiming to be 4 GiB. We
    // seal it raw with COMPRESSED using a key set with the client's keys.
    let mut body = compress::compress(&vec![0u8; 60 * 1024], u32::MAX).unwrap();
    body[..4].copy_from_slice(&u32::MAX.to_be_bytes());
    let ks = p.client.send_keys();
    let f = ks
        .seal_message(
            p.client.session_id(),
            1,
            MessageType::LiveUpdates,
            XTMPFlags::COMPRESSED,
            &body,
        )
        .unwrap();
    assert!(matches!(
        open_msg(&mut p.server, now, &mut f.clone()).unwrap_err(),
        XTMPError::DecompressedTooLarge { .. }
    ));
}

#[test]
fn application_may_not_send_core_owned_types() {
    let mut p = pair(EncryptionType::PostQuantum);
    for t in [
        MessageType::Handshake,
        MessageType::HandshakeAck,
        MessageType::KeyUpdate,
        MessageType::KeyUpdateAck,
        MessageType::Retry,
    ] {
        let mut f = Vec::new();
        assert_eq!(
            p.client
                .seal(t, XTMPFlags::empty(), b"", &mut f)
                .unwrap_err(),
            XTMPError::UnexpectedMessage(t)
        );
        assert!(f.is_empty());
    }
}

#[test]
fn unknown_types_decode_and_reach_the_application() {
    let mut p = pair(EncryptionType::PostQuantum);
    let now = p.now;
    let mut f = seal(&mut p.client, MessageType(0x77), b"?");
    match p.server.open(now, &mut f, &mut p.rng).unwrap() {
        Received::Message { header, .. } => {
            assert_eq!(header.message_type, MessageType(0x77));
            assert!(!header.message_type.is_known());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn oversized_payload_refused_on_both_sides() {
    let mut cfg = SessionConfig::default();
    cfg.max_payload = 1000;
    let mut p = pair_with(EncryptionType::PostQuantum, cfg);
    let mut f = Vec::new();
    assert!(matches!(
        p.client
            .seal(
                MessageType::BundleSubmit,
                XTMPFlags::empty(),
                &[0; 1001],
                &mut f
            )
            .unwrap_err(),
        XTMPError::PayloadTooLarge {
            length: 1001,
            max: 1000
        }
    ));
    // A peer that ignores the limit is refused before decryption.
    let big = p
        .client
        .send_keys()
        .seal_message(
            p.client.session_id(),
            1,
            MessageType::BundleSubmit,
            XTMPFlags::empty(),
            &[0; 2000],
        )
        .unwrap();
    assert!(matches!(
        p.server
            .open(p.now, &mut big.clone(), &mut p.rng)
            .unwrap_err(),
        XTMPError::PayloadTooLarge { .. }
    ));
}

#[test]
fn integrity_limit_closes_datagram_sessions() {
    let mut cfg = SessionConfig::default();
    cfg.replay_mode = ReplayMode::Window;
    cfg.integrity_limit = 5;
    let mut p = pair_with(EncryptionType::Aes256Gcm, cfg);
    let f = seal(&mut p.client, MessageType::MetricsStream, b"m");
    for i in 0..5 {
        let mut t = f.clone();
        t[85] ^= 1 + i as u8;
        let e = p.server.open(p.now, &mut t, &mut p.rng).unwrap_err();
        if i < 4 {
            assert_eq!(e, XTMPError::AuthenticationFailed);
        } else {
            assert_eq!(e, XTMPError::IntegrityLimit);
        }
    }
    assert_eq!(
        p.server
            .open(p.now, &mut f.clone(), &mut p.rng)
            .unwrap_err(),
        XTMPError::IntegrityLimit
    );
}

#[test]
fn zeroization_is_in_the_types() {
    // Key material lives in Zeroizing/ZeroizeOnDrop types; this test fails to compile if
    // someone replaces them with plain arrays.
    fn assert_zod<T: zeroize::ZeroizeOnDrop>(_: &T) {}
    let k = zeroize::Zeroizing::new(
        *pair(EncryptionType::PostQuantum)
            .client
            .send_keys()
            .session_key(),
    );
    assert_zod(&k);
}

#[test]
fn released_aead_contexts_rebuild_to_the_same_keys_and_nonces() {
    // Two identical sessions (same seed): one frees its AEAD contexts before every
    // message, the other never does. Every frame must come out byte for byte the same,
    // open on the peer, and a tampered one must still fail after a release.
    for enc in ALL_ENC {
        let mut kept = pair_seeded(enc, SessionConfig::default(), 9);
        let mut idle = pair_seeded(enc, SessionConfig::default(), 9);
        for i in 0..5u8 {
            let freed = idle.client.release_idle_keys() | idle.server.release_idle_keys();
            assert_eq!(freed, enc != EncryptionType::None, "{enc:?}");
            assert!(!idle.client.send_keys().aead_ready() || enc == EncryptionType::None);
            let msg = [i; 40];
            let a = seal(&mut kept.client, MessageType::WalletTransaction, &msg);
            let b = seal(&mut idle.client, MessageType::WalletTransaction, &msg);
            assert_eq!(a, b, "{enc:?}: frame {i} differs after a release");
            assert_eq!(
                open_msg(&mut idle.server, idle.now, &mut b.clone()).unwrap(),
                msg
            );
            let a = seal(&mut kept.server, MessageType::Response, &msg);
            let b = seal(&mut idle.server, MessageType::Response, &msg);
            assert_eq!(a, b, "{enc:?}: reply {i} differs after a release");
            // Released again before opening: the receive side rebuilds too.
            idle.client.release_idle_keys();
            let mut bad = b.clone();
            *bad.last_mut().unwrap() ^= 1;
            // Fix up the checksum so the tag check is what refuses it.
            let crc = xtmp_proto::header::crc32(&bad[HEADER_LEN..]);
            bad[28..32].copy_from_slice(&crc.to_be_bytes());
            assert!(matches!(
                open_msg(&mut idle.client, idle.now, &mut bad),
                Err(XTMPError::AuthenticationFailed)
            ));
            assert_eq!(
                open_msg(&mut idle.client, idle.now, &mut b.clone()).unwrap(),
                msg
            );
            let sent = enc != EncryptionType::None;
            assert_eq!(idle.client.recv_keys().aead_ready(), sent, "{enc:?}");
        }
    }
}
