//! Handshake: success in both patterns and every rejection the spec names.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use xtmp_crypto::xwing::XWingSecretKey;
use xtmp_proto::*;

fn start(cc: ClientConfig, ts: u64, seed: u8) -> (ClientHandshake, Vec<u8>) {
    ClientHandshake::start(cc, ts, &mut rng(seed)).unwrap()
}

fn nk_client() -> ClientConfig {
    ClientConfig::new(server_key().public_key().clone())
}

fn ik_client() -> ClientConfig {
    let mut c = nk_client();
    c.client_key = Some(client_key());
    c
}

type Accepted = (Vec<u8>, Box<Session>, Option<[u8; 32]>);

fn accept(server: &mut ServerHandshaker, m1: &[u8]) -> Result<Accepted, XTMPError> {
    match server.handle(Instant::now(), b"10.0.0.1:1", false, m1, &mut rng(9))? {
        ServerOutcome::Accepted {
            ack,
            session,
            client_key,
            ..
        } => Ok((ack, session, client_key)),
        ServerOutcome::Retry(_) => panic!("unexpected retry"),
    }
}

#[test]
fn nk_and_ik_complete_and_keys_match() {
    for cc in [nk_client(), ik_client()] {
        let ik = cc.client_key.is_some();
        let mut server = ServerHandshaker::new(ServerConfig::new(server_key()));
        let (mut ch, m1) = start(cc, 1, 1);
        assert_eq!(
            m1.len() - HEADER_LEN,
            if ik { Pattern::IK } else { Pattern::NK }.message1_len()
        );
        let (ack, mut s, ck) = accept(&mut server, &m1).unwrap();
        assert_eq!(ck.is_some(), ik);
        let ClientOutcome::Established(mut c) = ch.handle(Instant::now(), &ack).unwrap() else {
            panic!()
        };
        assert_eq!(c.session_id(), s.session_id());
        assert_ne!(c.session_id(), 0);
        assert_eq!(c.handshake_hash(), s.handshake_hash());
        assert_eq!(c.encryption_type(), EncryptionType::PostQuantum);
        // Directions use different keys.
        assert_ne!(c.send_keys().session_key(), c.recv_keys().session_key());
        assert_eq!(c.send_keys().session_key(), s.recv_keys().session_key());
        assert_eq!(c.recv_keys().session_key(), s.send_keys().session_key());
        // And traffic flows both ways.
        let mut r = rng(5);
        let now = Instant::now();
        assert!(!s.is_confirmed());
        assert_eq!(
            transfer(&mut c, &mut s, now, &mut r, MessageType::WalletAuth, b"hi"),
            b"hi"
        );
        assert!(s.is_confirmed());
        assert_eq!(
            transfer(&mut s, &mut c, now, &mut r, MessageType::Response, b"ok"),
            b"ok"
        );
    }
}

#[test]
fn wrong_server_key_fails_without_detail() {
    let mut cc = nk_client();
    cc.server_key = XWingSecretKey::from_seed(&[0x99; 32]).public_key().clone();
    let mut server = ServerHandshaker::new(ServerConfig::new(server_key()));
    let (_, m1) = start(cc, 1, 1);
    let e = accept(&mut server, &m1).unwrap_err();
    assert_eq!(e, XTMPError::Handshake(HandshakeFailure::DecryptFailed));
    assert_eq!(e.code(), ErrorCode::HANDSHAKE_FAILED);
}

/// Recomputes the CRC so that only the handshake's own checks can catch the change.
fn fix_crc(frame: &mut [u8]) {
    let crc = crc32(&frame[HEADER_LEN..]);
    frame[28..32].copy_from_slice(&crc.to_be_bytes());
}

#[test]
fn tampering_any_part_of_message_1_fails() {
    let (_, m1) = start(ik_client(), 1, 1);
    let p = HEADER_LEN;
    // (offset into the frame, expected error)
    let cases = [
        (p + 8 + 10, HandshakeFailure::DecryptFailed), // ct1
        (p + 8 + 1120 + 100, HandshakeFailure::DecryptFailed), // e.pk (changes h)
        (p + 2344 + 5, HandshakeFailure::DecryptFailed), // enc_s
        (m1.len() - 3, HandshakeFailure::DecryptFailed), // enc_ts tag
    ];
    for (off, want) in cases {
        let mut server = ServerHandshaker::new(ServerConfig::new(server_key()));
        let mut t = m1.clone();
        t[off] ^= 0x40;
        fix_crc(&mut t);
        let e = accept(&mut server, &t).unwrap_err();
        // A flipped bit in e.pk may also make the key invalid; both are rejections.
        assert!(
            e == XTMPError::Handshake(want)
                || e == XTMPError::Handshake(HandshakeFailure::InvalidKey),
            "offset {off}: {e:?}"
        );
    }
    // Without fixing the CRC, the checksum catches it first.
    let mut server = ServerHandshaker::new(ServerConfig::new(server_key()));
    let mut t = m1.clone();
    t[p + 50] ^= 1;
    assert!(matches!(
        accept(&mut server, &t).unwrap_err(),
        XTMPError::ChecksumMismatch { .. }
    ));
}

#[test]
fn downgrade_of_offer_is_detected() {
    // An attacker rewrites the offer to force ChaCha20Poly1305 (say).
    let mut server = ServerHandshaker::new(ServerConfig::new(server_key()));
    let (_, m1) = start(nk_client(), 1, 1);
    let mut t = m1.clone();
    t[HEADER_LEN + 3] = EncryptionType::ChaCha20Poly1305.offer_bit();
    t[HEADER_LEN + 4] = EncryptionType::ChaCha20Poly1305 as u8;
    fix_crc(&mut t);
    assert_eq!(
        accept(&mut server, &t).unwrap_err(),
        XTMPError::Handshake(HandshakeFailure::DecryptFailed)
    );
    // And an attacker rewriting the server's choice in message 2 is caught by the client.
    let (mut ch, m1) = start(nk_client(), 1, 1);
    let (ack, _, _) = accept(&mut server, &m1).unwrap();
    let mut t = ack.clone();
    t[HEADER_LEN + 2] = EncryptionType::Aes256Gcm as u8;
    fix_crc(&mut t);
    assert_eq!(
        ch.handle(Instant::now(), &t).unwrap_err(),
        XTMPError::Handshake(HandshakeFailure::DecryptFailed)
    );
}

#[test]
fn client_state_survives_forged_acks() {
    let mut server = ServerHandshaker::new(ServerConfig::new(server_key()));
    let (mut ch, m1) = start(ik_client(), 1, 1);
    let (ack, s, _) = accept(&mut server, &m1).unwrap();
    let p = HEADER_LEN;
    for off in [
        p + 1,
        p + 8 + 3,
        p + 1128 + 7,
        ack.len() - 1,
        9, /* session id */
    ] {
        let mut t = ack.clone();
        t[off] ^= 0x08;
        fix_crc(&mut t);
        assert!(ch.handle(Instant::now(), &t).is_err(), "offset {off}");
    }
    // Wrong type, truncated, garbage.
    assert!(ch.handle(Instant::now(), &m1).is_err());
    assert!(ch.handle(Instant::now(), &ack[..100]).is_err());
    assert!(ch.handle(Instant::now(), b"garbage").is_err());
    // The genuine ack still completes the handshake.
    let ClientOutcome::Established(c) = ch.handle(Instant::now(), &ack).unwrap() else {
        panic!()
    };
    assert_eq!(c.session_id(), s.session_id());
}

#[test]
fn unauthorized_client_and_required_authentication() {
    let mut sc = ServerConfig::new(server_key());
    sc.require_client_auth = true;
    let other = XWingSecretKey::from_seed(&[0x33; 32]);
    sc.authorized_clients = authorized(&[&other]);
    let mut server = ServerHandshaker::new(sc);
    // pqNK refused outright.
    let (_, m1) = start(nk_client(), 1, 1);
    let e = accept(&mut server, &m1).unwrap_err();
    assert_eq!(
        e,
        XTMPError::Handshake(HandshakeFailure::AuthenticationRequired)
    );
    assert_eq!(e.code(), ErrorCode::UNAUTHORIZED);
    // pqIK with an unlisted key refused.
    let (_, m1) = start(ik_client(), 1, 1);
    assert_eq!(
        accept(&mut server, &m1).unwrap_err(),
        XTMPError::Handshake(HandshakeFailure::Unauthorized)
    );
    // Listed key accepted, and the session knows who it is.
    server.set_authorized_clients(authorized(&[&other, &client_key()]));
    let (_, m1) = start(ik_client(), 2, 1);
    let (_, s, ck) = accept(&mut server, &m1).unwrap();
    assert_eq!(ck, Some(fingerprint(client_key().public_key())));
    assert_eq!(s.peer_key(), ck.as_ref());
}

#[test]
fn replayed_message_1_is_rejected_by_timestamp() {
    let mut sc = ServerConfig::new(server_key());
    sc.require_client_auth = true;
    sc.authorized_clients = authorized(&[&client_key()]);
    let mut server = ServerHandshaker::new(sc);
    let (_, m1) = start(ik_client(), 1000, 1);
    accept(&mut server, &m1).unwrap();
    assert_eq!(
        accept(&mut server, &m1).unwrap_err(),
        XTMPError::Handshake(HandshakeFailure::Replayed)
    );
    // An older timestamp too; a newer one is fine.
    let (_, old) = start(ik_client(), 999, 2);
    assert_eq!(
        accept(&mut server, &old).unwrap_err(),
        XTMPError::Handshake(HandshakeFailure::Replayed)
    );
    let (_, newer) = start(ik_client(), 1001, 3);
    accept(&mut server, &newer).unwrap();
}

#[test]
fn cookie_retry_flow_costs_no_kem_and_never_amplifies() {
    let mut server = ServerHandshaker::new(ServerConfig::new(server_key()));
    let now = Instant::now();
    let mut r = rng(4);
    let (mut ch, m1) = start(nk_client(), 1, 1);
    let ServerOutcome::Retry(retry) = server.handle(now, b"1.2.3.4:5", true, &m1, &mut r).unwrap()
    else {
        panic!("expected retry")
    };
    assert!(
        retry.len() < m1.len(),
        "a Retry must be smaller than message 1"
    );
    assert_eq!(retry.len(), HEADER_LEN + 16);
    // A garbage message 1 with a valid length still gets only a Retry (no decapsulation):
    // the cookie check comes before any KEM work.
    let mut junk = m1.clone();
    for b in &mut junk[HEADER_LEN + 8..] {
        *b = 0xAA;
    }
    fix_crc(&mut junk);
    assert!(matches!(
        server
            .handle(now, b"1.2.3.4:5", true, &junk, &mut r)
            .unwrap(),
        ServerOutcome::Retry(_)
    ));
    let ClientOutcome::Retry(m1c) = ch.handle(now, &retry).unwrap() else {
        panic!()
    };
    assert_eq!(m1c.len(), m1.len() + 16);
    // The cookie is bound to the address.
    assert!(matches!(
        server
            .handle(now, b"6.6.6.6:5", true, &m1c, &mut r)
            .unwrap(),
        ServerOutcome::Retry(_)
    ));
    let ServerOutcome::Accepted { ack, .. } = server
        .handle(now, b"1.2.3.4:5", true, &m1c, &mut r)
        .unwrap()
    else {
        panic!("expected accept")
    };
    assert!(matches!(
        ch.handle(now, &ack).unwrap(),
        ClientOutcome::Established(_)
    ));
    // Cookies expire after two secret lifetimes.
    let later = now + handshake::COOKIE_SECRET_LIFETIME * 2 + Duration::from_secs(1);
    let _ = server.handle(later, b"x", true, &m1, &mut r).unwrap();
    let later2 = later + handshake::COOKIE_SECRET_LIFETIME + Duration::from_secs(1);
    assert!(matches!(
        server
            .handle(later2, b"1.2.3.4:5", true, &m1c, &mut r)
            .unwrap(),
        ServerOutcome::Retry(_)
    ));
}

#[test]
fn client_gives_up_after_max_retries() {
    let mut server = ServerHandshaker::new(ServerConfig::new(server_key()));
    let now = Instant::now();
    let (mut ch, m1) = start(nk_client(), 1, 1);
    let ServerOutcome::Retry(retry) = server.handle(now, b"a", true, &m1, &mut rng(1)).unwrap()
    else {
        panic!()
    };
    for _ in 0..handshake::MAX_RETRIES {
        assert!(matches!(
            ch.handle(now, &retry).unwrap(),
            ClientOutcome::Retry(_)
        ));
    }
    assert_eq!(
        ch.handle(now, &retry).unwrap_err(),
        XTMPError::Handshake(HandshakeFailure::TooManyRetries)
    );
}

#[test]
fn encryption_negotiation() {
    // Server permits only ChaCha20Poly1305; client prefers PostQuantum but offers it too.
    let mut server = ServerHandshaker::new(server_config(&[EncryptionType::ChaCha20Poly1305]));
    let (mut ch, m1) = start(nk_client(), 1, 1);
    let (ack, s, _) = accept(&mut server, &m1).unwrap();
    assert_eq!(s.encryption_type(), EncryptionType::ChaCha20Poly1305);
    let ClientOutcome::Established(c) = ch.handle(Instant::now(), &ack).unwrap() else {
        panic!()
    };
    assert_eq!(c.encryption_type(), EncryptionType::ChaCha20Poly1305);
    // No overlap: refused.
    let mut server = ServerHandshaker::new(server_config(&[EncryptionType::None]));
    let (_, m1) = start(nk_client(), 1, 1);
    assert_eq!(
        accept(&mut server, &m1).unwrap_err(),
        XTMPError::Handshake(HandshakeFailure::NoCommonEncryption)
    );
}

#[test]
fn malformed_message_1_is_rejected_specifically() {
    let mut server = ServerHandshaker::new(ServerConfig::new(server_key()));
    let (_, m1) = start(nk_client(), 1, 1);
    // Wrong length.
    let mut t = m1[..m1.len() - 1].to_vec();
    let len = (t.len() - HEADER_LEN) as u32;
    t[24..28].copy_from_slice(&len.to_be_bytes());
    fix_crc(&mut t);
    assert_eq!(
        accept(&mut server, &t).unwrap_err(),
        XTMPError::Handshake(HandshakeFailure::Malformed)
    );
    // Unsupported handshake version.
    let mut t = m1.clone();
    t[HEADER_LEN] = 2;
    fix_crc(&mut t);
    assert_eq!(
        accept(&mut server, &t).unwrap_err(),
        XTMPError::Handshake(HandshakeFailure::UnsupportedVersion)
    );
    // Non-zero session id in the header.
    let mut t = m1.clone();
    t[15] = 1;
    assert_eq!(
        accept(&mut server, &t).unwrap_err(),
        XTMPError::Handshake(HandshakeFailure::Malformed)
    );
    // Not a handshake at all.
    let mut t = m1.clone();
    t[5] = MessageType::WalletAuth.0;
    assert_eq!(
        accept(&mut server, &t).unwrap_err(),
        XTMPError::UnexpectedMessage(MessageType::WalletAuth)
    );
}

#[test]
fn debug_output_has_no_key_material() {
    let sk = server_key();
    let p = pair(EncryptionType::PostQuantum);
    let key_hex = hex::encode(p.client.send_keys().session_key());
    let seed_hex = hex::encode(sk.seed());
    let dbg = format!(
        "{:?} {:?} {:?} {:?}",
        p.client,
        p.client.send_keys(),
        sk,
        ServerConfig::new(sk.clone())
    );
    for needle in [&key_hex[..16], &seed_hex[..16]] {
        assert!(!dbg.contains(needle), "Debug leaked {needle}: {dbg}");
    }
    assert!(!dbg.contains(&format!("{:?}", p.client.send_keys().session_key())));
}
