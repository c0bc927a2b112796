//! Shared helpers for the xtmp-proto integration tests.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use xtmp_crypto::xwing::XWingSecretKey;
use xtmp_proto::*;

pub fn rng(seed: u8) -> InsecureDeterministicRngForTestingOnly {
    InsecureDeterministicRngForTestingOnly::new([seed; 32])
}

pub fn server_key() -> Arc<XWingSecretKey> {
    Arc::new(XWingSecretKey::from_seed(&[0x11; 32]))
}

pub fn client_key() -> Arc<XWingSecretKey> {
    Arc::new(XWingSecretKey::from_seed(&[0x22; 32]))
}

pub struct Pair {
    pub client: Session,
    pub server: Session,
    pub rng: InsecureDeterministicRngForTestingOnly,
    pub now: Instant,
}

pub fn server_config(enc: &[EncryptionType]) -> ServerConfig {
    let mut sc = ServerConfig::new(server_key());
    sc.encryption_types = enc.to_vec();
    sc
}

/// A completed pqNK handshake with the given encryption type and session config.
pub fn pair_with(enc: EncryptionType, cfg: SessionConfig) -> Pair {
    pair_seeded(enc, cfg, 3)
}

/// [`pair_with`] with the handshake's randomness from `seed` (distinct sessions).
pub fn pair_seeded(enc: EncryptionType, cfg: SessionConfig, seed: u8) -> Pair {
    let mut r = rng(seed);
    let now = Instant::now();
    let mut sc = server_config(&[enc]);
    sc.session = cfg.clone();
    let mut server = ServerHandshaker::new(sc);
    let mut cc = ClientConfig::new(server_key().public_key().clone());
    cc.encryption_types = vec![enc];
    cc.session = cfg;
    let (mut ch, m1) = ClientHandshake::start(cc, 1_700_000_000_000_000_000, &mut r).unwrap();
    let ServerOutcome::Accepted { ack, session, .. } = server
        .handle(now, b"127.0.0.1:1", false, &m1, &mut r)
        .unwrap()
    else {
        panic!("expected Accepted")
    };
    let ClientOutcome::Established(client) = ch.handle(now, &ack).unwrap() else {
        panic!("expected Established")
    };
    Pair {
        client: *client,
        server: *session,
        rng: r,
        now,
    }
}

pub fn pair(enc: EncryptionType) -> Pair {
    pair_with(enc, SessionConfig::default())
}

pub fn authorized(keys: &[&XWingSecretKey]) -> HashSet<[u8; 32]> {
    keys.iter().map(|k| fingerprint(k.public_key())).collect()
}

pub const ALL_ENC: [EncryptionType; 4] = [
    EncryptionType::None,
    EncryptionType::Aes256Gcm,
    EncryptionType::ChaCha20Poly1305,
    EncryptionType::PostQuantum,
];

/// Seals on `from`, opens on `to`, returns the plaintext of an application message.
pub fn transfer(
    from: &mut Session,
    to: &mut Session,
    now: Instant,
    rng: &mut dyn SecureRandom,
    t: MessageType,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    from.seal(t, XTMPFlags::empty(), payload, &mut f).unwrap();
    match to.open(now, &mut f, rng).unwrap() {
        Received::Message { payload, .. } => payload.into_owned(),
        other => panic!("unexpected {other:?}"),
    }
}

/// Delivers every queued control frame from `from` to `to`; returns what `to` reported.
pub fn pump(
    from: &mut Session,
    to: &mut Session,
    now: Instant,
    rng: &mut dyn SecureRandom,
) -> Vec<String> {
    let mut events = Vec::new();
    while let Some(mut f) = from.poll_transmit() {
        let r = to.open(now, &mut f, rng).unwrap();
        events.push(format!("{r:?}"));
    }
    events
}
