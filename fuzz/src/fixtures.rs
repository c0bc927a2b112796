//! Deterministic keys, handshake messages and sessions shared by the targets, the seed
//! generator and the replay test.
//!
//! Everything is derived from fixed seeds through
//! [`InsecureDeterministicRngForTestingOnly`], so a fresh handshaker, client or session
//! built here behaves identically in every process and every run: that is what lets a
//! "genuine" message recorded once be valid for the fresh state each fuzz run starts from.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use xtmp_crypto::xwing::XWingSecretKey;
use xtmp_proto::control::{encode_ack, ErrorPayload};
use xtmp_proto::session::SessionConfig;
use xtmp_proto::{
    fingerprint, ClientConfig, ClientHandshake, ClientOutcome, EncryptionType, ErrorCode,
    InsecureDeterministicRngForTestingOnly, MessageType, Pattern, ServerConfig, ServerHandshaker,
    ServerOutcome, Session, Side, XTMPFlags,
};

/// The deterministic generator used everywhere in the harness.
pub type Rng = InsecureDeterministicRngForTestingOnly;

/// Seed of the server's static X-Wing key.
pub const SERVER_KEY_SEED: [u8; 32] = [1; 32];
/// Seed of the client's static X-Wing key (`pqIK`).
pub const CLIENT_KEY_SEED: [u8; 32] = [2; 32];
/// The client's handshake timestamp (wall clock, ns).
pub const CLIENT_TIME_NS: u64 = 1_700_000_000_000_000_000;
/// The client address the server binds cookies to.
pub const PEER_ADDRESS: &[u8] = b"192.0.2.1:4433";
/// Authentication failures after which a [`xtmp_proto::ReplayMode::Window`] session
/// closes. Small on purpose, so the fuzzer reaches the integrity-limit close.
pub const INTEGRITY_LIMIT: u64 = 16;
/// The four record protections, indexed by their wire code.
pub const ENCRYPTION_TYPES: [EncryptionType; 4] = [
    EncryptionType::None,
    EncryptionType::Aes256Gcm,
    EncryptionType::ChaCha20Poly1305,
    EncryptionType::PostQuantum,
];

/// The one `now` of the process (only differences between instants matter to the core).
pub fn now() -> Instant {
    static NOW: OnceLock<Instant> = OnceLock::new();
    *NOW.get_or_init(Instant::now)
}

/// The server's static key.
pub fn server_key() -> &'static Arc<XWingSecretKey> {
    static KEY: OnceLock<Arc<XWingSecretKey>> = OnceLock::new();
    KEY.get_or_init(|| Arc::new(XWingSecretKey::from_seed(&SERVER_KEY_SEED)))
}

/// The client's static key (`pqIK`).
pub fn client_static_key() -> &'static Arc<XWingSecretKey> {
    static KEY: OnceLock<Arc<XWingSecretKey>> = OnceLock::new();
    KEY.get_or_init(|| Arc::new(XWingSecretKey::from_seed(&CLIENT_KEY_SEED)))
}

/// The client's randomness (ephemeral keys, encapsulation).
pub fn client_rng() -> Rng {
    Rng::new([0xC1; 32])
}

/// The server's randomness (cookie secret, session id, encapsulation).
pub fn server_rng() -> Rng {
    Rng::new([0x5E; 32])
}

/// Randomness a session uses to answer a peer's `KeyUpdate`.
pub fn session_rng() -> Rng {
    Rng::new([0x77; 32])
}

/// Randomness for a key update that `side` initiates.
pub fn rekey_rng(side: Side) -> Rng {
    match side {
        Side::Client => Rng::new([0xC2; 32]),
        Side::Server => Rng::new([0x5F; 32]),
    }
}

/// Server policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// `ServerConfig::new`: anyone may connect with `pqNK`; `pqIK` keys are not checked.
    Open,
    /// `pqIK` only, from the one authorized client key ([`client_static_key`]).
    MutualOnly,
}

/// The configuration of a server of `kind`.
pub fn server_config(kind: ServerKind) -> ServerConfig {
    let mut c = ServerConfig::new(server_key().clone());
    if kind == ServerKind::MutualOnly {
        c.require_client_auth = true;
        c.authorized_clients = HashSet::from([fingerprint(client_static_key().public_key())]);
    }
    c
}

/// A fresh responder of `kind`.
pub fn server(kind: ServerKind) -> ServerHandshaker {
    ServerHandshaker::new(server_config(kind))
}

/// The server kind that accepts `pattern` from our client.
pub fn server_kind_for(pattern: Pattern) -> ServerKind {
    match pattern {
        Pattern::NK => ServerKind::Open,
        Pattern::IK => ServerKind::MutualOnly,
    }
}

/// Client configuration: `pqNK`, or `pqIK` with [`client_static_key`].
pub fn client_config(pattern: Pattern) -> ClientConfig {
    let mut c = ClientConfig::new(server_key().public_key().clone());
    if pattern == Pattern::IK {
        c.client_key = Some(client_static_key().clone());
    }
    c
}

/// A fresh client and its message 1 (always the same bytes for a pattern).
pub fn start_client(pattern: Pattern) -> (ClientHandshake, Vec<u8>) {
    #[allow(clippy::expect_used)] // a non-empty encryption type list cannot fail
    ClientHandshake::start(client_config(pattern), CLIENT_TIME_NS, &mut client_rng())
        .expect("starting a handshake with a valid config")
}

/// What a fresh responder of `kind` with [`server_rng`] makes of `msg1`.
fn respond(kind: ServerKind, require_cookie: bool, msg1: &[u8]) -> ServerOutcome {
    #[allow(clippy::expect_used)] // only called with genuine messages
    server(kind)
        .handle(now(), PEER_ADDRESS, require_cookie, msg1, &mut server_rng())
        .expect("a genuine message 1 is handled")
}

fn accepted_ack(outcome: ServerOutcome) -> Vec<u8> {
    match outcome {
        ServerOutcome::Accepted { ack, .. } => ack,
        other => panic!("genuine message 1 not accepted: {other:?}"),
    }
}

/// Genuine handshake messages, each produced by fresh, deterministic endpoints.
#[derive(Debug)]
pub struct HandshakeFixtures {
    /// `pqNK` message 1 from [`start_client`].
    pub msg1_nk: Vec<u8>,
    /// `pqIK` message 1 from [`start_client`].
    pub msg1_ik: Vec<u8>,
    /// A fresh [`ServerKind::Open`] server's answer to `msg1_nk`.
    pub ack_nk: Vec<u8>,
    /// A fresh [`ServerKind::MutualOnly`] server's answer to `msg1_ik`.
    pub ack_ik: Vec<u8>,
    /// A fresh [`ServerKind::Open`] server's `Retry` for `msg1_nk` (cookie required).
    pub retry: Vec<u8>,
    /// `msg1_nk` resent with the cookie from `retry`.
    pub msg1_nk_cookie: Vec<u8>,
    /// A fresh [`ServerKind::Open`] server's answer to `msg1_nk_cookie` (cookie required).
    pub ack_nk_cookie: Vec<u8>,
    /// Session id and handshake hash the client gets from `ack_nk`.
    pub established_nk: (u64, [u8; 32]),
    /// Session id and handshake hash the client gets from `ack_ik`.
    pub established_ik: (u64, [u8; 32]),
}

impl HandshakeFixtures {
    /// Message 1 of `pattern`.
    pub fn msg1(&self, pattern: Pattern) -> &[u8] {
        match pattern {
            Pattern::NK => &self.msg1_nk,
            Pattern::IK => &self.msg1_ik,
        }
    }
    /// The answer to message 1 of `pattern`.
    pub fn ack(&self, pattern: Pattern) -> &[u8] {
        match pattern {
            Pattern::NK => &self.ack_nk,
            Pattern::IK => &self.ack_ik,
        }
    }
    /// What the client of `pattern` gets from [`HandshakeFixtures::ack`].
    pub fn established(&self, pattern: Pattern) -> (u64, [u8; 32]) {
        match pattern {
            Pattern::NK => self.established_nk,
            Pattern::IK => self.established_ik,
        }
    }
}

/// The handshake fixtures, built once per process.
pub fn handshake() -> &'static HandshakeFixtures {
    static FX: OnceLock<HandshakeFixtures> = OnceLock::new();
    FX.get_or_init(build_handshake)
}

fn established(pattern: Pattern, ack: &[u8]) -> (u64, [u8; 32]) {
    let (mut client, _) = start_client(pattern);
    match client.handle(now(), ack) {
        Ok(ClientOutcome::Established(s)) => (s.session_id(), *s.handshake_hash()),
        other => panic!("genuine ack not accepted: {other:?}"),
    }
}

fn build_handshake() -> HandshakeFixtures {
    let (mut client_nk, msg1_nk) = start_client(Pattern::NK);
    let (_, msg1_ik) = start_client(Pattern::IK);
    let ack_nk = accepted_ack(respond(ServerKind::Open, false, &msg1_nk));
    let ack_ik = accepted_ack(respond(ServerKind::MutualOnly, false, &msg1_ik));
    let retry = match respond(ServerKind::Open, true, &msg1_nk) {
        ServerOutcome::Retry(r) => r,
        other => panic!("no Retry without a cookie: {other:?}"),
    };
    let msg1_nk_cookie = match client_nk.handle(now(), &retry) {
        Ok(ClientOutcome::Retry(m)) => m,
        other => panic!("client did not follow the Retry: {other:?}"),
    };
    let ack_nk_cookie = accepted_ack(respond(ServerKind::Open, true, &msg1_nk_cookie));
    HandshakeFixtures {
        established_nk: established(Pattern::NK, &ack_nk),
        established_ik: established(Pattern::IK, &ack_ik),
        msg1_nk,
        msg1_ik,
        ack_nk,
        ack_ik,
        retry,
        msg1_nk_cookie,
        ack_nk_cookie,
    }
}

// ------------------------------------------------------------------------------------
// Sessions
// ------------------------------------------------------------------------------------

/// Session settings used on both sides (defaults, with [`INTEGRITY_LIMIT`]).
pub fn session_config() -> SessionConfig {
    let mut c = SessionConfig::default();
    c.integrity_limit = INTEGRITY_LIMIT;
    c
}

/// A fresh `pqNK` session pair `(client, server)` protected with `enc`.
pub fn session_pair(enc: EncryptionType) -> (Session, Session) {
    let mut cc = client_config(Pattern::NK);
    cc.encryption_types = vec![enc];
    cc.session = session_config();
    let mut sc = server_config(ServerKind::Open);
    sc.encryption_types = ENCRYPTION_TYPES.to_vec();
    sc.session = session_config();
    #[allow(clippy::expect_used)] // a non-empty encryption type list cannot fail
    let (mut client, msg1) = ClientHandshake::start(cc, CLIENT_TIME_NS, &mut client_rng())
        .expect("starting a handshake with a valid config");
    let (ack, server) = match ServerHandshaker::new(sc).handle(
        now(),
        PEER_ADDRESS,
        false,
        &msg1,
        &mut server_rng(),
    ) {
        Ok(ServerOutcome::Accepted { ack, session, .. }) => (ack, session),
        other => panic!("session handshake failed at the server: {other:?}"),
    };
    match client.handle(now(), &ack) {
        Ok(ClientOutcome::Established(client)) => (*client, *server),
        other => panic!("session handshake failed at the client: {other:?}"),
    }
}

/// The state every `session_open` run starts from: on the server side a fresh session
/// that has sent its `KeyUpdate` (so the client's genuine `KeyUpdateAck` is valid), on
/// the client side a fresh session.
pub fn fresh_receiver(enc: EncryptionType, side: Side) -> Session {
    let (client, mut server) = session_pair(enc);
    match side {
        Side::Client => client,
        Side::Server => {
            #[allow(clippy::expect_used)] // a fresh session can always rotate
            server
                .initiate_key_update(&mut rekey_rng(Side::Server))
                .expect("a fresh session starts a key update");
            let _ = server.poll_transmit();
            server
        }
    }
}

/// A frame one side of the scripted conversation sent.
#[derive(Debug, Clone)]
pub struct Genuine {
    /// The frame as sent.
    pub frame: Vec<u8>,
    /// For application messages: the type and plaintext the receiver must deliver.
    pub message: Option<(MessageType, Vec<u8>)>,
}

/// The scripted conversation of one encryption type (see [`world`]).
#[derive(Debug)]
pub struct SessionWorld {
    /// Client → server frames, in order; all open on a fresh server receiver in order.
    pub to_server: Vec<Genuine>,
    /// Server → client frames; 0..=6 open on a fresh client receiver in order. 7 is a
    /// genuine `KeyUpdateAck` from a fork of the conversation, with the generation and
    /// sequence number of 6: a client that takes it in place of 6 authenticates it and
    /// then refuses it (it never asked for a rotation).
    pub to_client: Vec<Genuine>,
}

impl SessionWorld {
    /// The frames `side` receives.
    pub fn received_by(&self, side: Side) -> &[Genuine] {
        match side {
            Side::Server => &self.to_server,
            Side::Client => &self.to_client,
        }
    }
}

/// The scripted conversation for `enc`, built once per process.
///
/// Server → client: `KeyUpdate`(→gen 1), `Response`, `Error`, heartbeat pong (gen 0),
/// `EventStream`, heartbeat ping, `Disconnect` (gen 1); then, from the fork, the
/// `KeyUpdateAck` (gen 1) answering the client's rotation.
/// Client → server: `WalletBalance`, compressed `WalletTransaction`, heartbeat ping,
/// `Ack`, `KeyUpdateAck` (gen 0), `WalletAuth`, `KeyUpdate`(→gen 2), `Disconnect` (gen 1).
pub fn world(enc: EncryptionType) -> &'static SessionWorld {
    static WORLDS: [OnceLock<SessionWorld>; 4] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    WORLDS[enc as usize].get_or_init(|| build_world(enc))
}

#[allow(clippy::expect_used)] // scripted, genuine traffic: a failure is a harness bug
fn seal(s: &mut Session, t: MessageType, flags: XTMPFlags, payload: &[u8]) -> Genuine {
    let mut frame = Vec::new();
    s.seal(t, flags, payload, &mut frame).expect("seal");
    Genuine {
        frame,
        message: Some((t, payload.to_vec())),
    }
}

#[allow(clippy::expect_used)] // scripted, genuine traffic: a failure is a harness bug
fn queued(s: &mut Session) -> Genuine {
    Genuine {
        frame: s.poll_transmit().expect("a control frame is queued"),
        message: None,
    }
}

#[allow(clippy::expect_used)] // scripted, genuine traffic: a failure is a harness bug
fn closing(s: &mut Session, code: ErrorCode, reason: &str) -> Genuine {
    let mut frame = Vec::new();
    s.close(code, reason, &mut frame).expect("close");
    Genuine {
        frame,
        message: None,
    }
}

#[allow(clippy::expect_used)] // scripted, genuine traffic: a failure is a harness bug
fn deliver(to: &mut Session, g: &Genuine, rng: &mut Rng) {
    let mut f = g.frame.clone();
    to.open(now(), &mut f, rng).expect("a genuine frame opens");
}

fn build_world(enc: EncryptionType) -> SessionWorld {
    let (to_server, mut to_client) = conversation(enc, Ending::BothClose);
    let (_, mut fork) = conversation(enc, Ending::ServerAnswersRotation);
    to_client.extend(fork.pop());
    SessionWorld {
        to_server,
        to_client,
    }
}

/// How the scripted conversation ends (both endings share everything before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Both sides send `Disconnect` under generation 1.
    BothClose,
    /// The server answers the client's `KeyUpdate` instead (its last frame is that
    /// `KeyUpdateAck`, with the same generation and sequence number as its `Disconnect`
    /// in the other ending).
    ServerAnswersRotation,
}

#[allow(clippy::expect_used)] // scripted, genuine traffic: a failure is a harness bug
fn conversation(enc: EncryptionType, ending: Ending) -> (Vec<Genuine>, Vec<Genuine>) {
    let (mut c, mut s) = session_pair(enc);
    let mut rng = session_rng();
    let none = XTMPFlags::empty();

    // The server's prelude, exactly as in `fresh_receiver`: KeyUpdate to generation 1.
    s.initiate_key_update(&mut rekey_rng(Side::Server))
        .expect("key update");
    let mut to_c = vec![queued(&mut s)];

    // Generation 0, client → server.
    let mut to_s = vec![seal(
        &mut c,
        MessageType::WalletBalance,
        none,
        br#"{"wallet":"abc"}"#,
    )];
    to_s.push(seal(
        &mut c,
        MessageType::WalletTransaction,
        XTMPFlags::COMPRESSED | XTMPFlags::REQUIRES_ACK,
        &b"transfer 10 from abc to def; ".repeat(16),
    ));
    c.send_ping(now()).expect("ping");
    to_s.push(queued(&mut c));
    to_s.push(seal(&mut c, MessageType::Ack, none, &encode_ack(1)));

    // Generation 0, server → client.
    let mut response = 0u64.to_be_bytes().to_vec();
    response.extend_from_slice(br#"{"balance":42}"#);
    to_c.push(seal(&mut s, MessageType::Response, none, &response));
    let error = ErrorPayload {
        code: ErrorCode::HANDLER_ERROR,
        request_seq: 3,
        reason: "no such wallet".into(),
    };
    to_c.push(seal(&mut s, MessageType::Error, none, &error.encode()));

    // The client answers the server's KeyUpdate (under generation 0) and moves to 1.
    deliver(&mut c, &to_c[0], &mut rng);
    to_s.push(queued(&mut c));

    // The server reads everything so far: the ping queues a pong (generation 0), the
    // KeyUpdateAck moves it to generation 1.
    for g in &to_s {
        deliver(&mut s, g, &mut rng);
    }
    to_c.push(queued(&mut s));

    // Generation 1.
    to_s.push(seal(
        &mut c,
        MessageType::WalletAuth,
        XTMPFlags::PRIORITY,
        b"wallet-auth",
    ));
    to_c.push(seal(
        &mut s,
        MessageType::EventStream,
        XTMPFlags::STREAMING,
        b"event: block 7",
    ));
    s.send_ping(now()).expect("ping");
    to_c.push(queued(&mut s));

    // The client starts a rotation to generation 2.
    c.initiate_key_update(&mut rekey_rng(Side::Client))
        .expect("key update");
    to_s.push(queued(&mut c));

    match ending {
        Ending::BothClose => {
            to_c.push(closing(&mut s, ErrorCode::SHUTTING_DOWN, "maintenance"));
            to_s.push(closing(&mut c, ErrorCode::NO_ERROR, "bye"));
        }
        Ending::ServerAnswersRotation => {
            for g in &to_s[5..] {
                deliver(&mut s, g, &mut rng);
            }
            to_c.push(queued(&mut s));
        }
    }
    (to_s, to_c)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use xtmp_proto::{Received, ReplayMode, XTMPError};

    #[test]
    fn handshake_fixtures_are_consistent() {
        let fx = handshake();
        assert_ne!(fx.established_nk.0, 0);
        assert_ne!(fx.established_ik.0, 0);
        assert_eq!(handshake().msg1_nk, start_client(Pattern::NK).1);
    }

    fn kinds(side: Side, mode: ReplayMode, enc: EncryptionType, order: &[usize]) -> Vec<String> {
        let mut r = fresh_receiver(enc, side);
        r.set_replay_mode(mode);
        let mut rng = session_rng();
        let frames = world(enc).received_by(side);
        order
            .iter()
            .map(|&i| {
                let g = &frames[i];
                let mut f = g.frame.clone();
                match r.open(now(), &mut f, &mut rng) {
                    Ok(Received::Message { header, payload }) => {
                        let (t, p) = g.message.as_ref().unwrap();
                        assert_eq!(header.message_type, *t);
                        assert_eq!(&payload[..], &p[..]);
                        format!("{t:?}")
                    }
                    Ok(Received::KeyUpdated { generation }) => format!("KeyUpdated({generation})"),
                    Ok(Received::Disconnect(_)) => "Disconnect".into(),
                    Ok(other) => format!("{other:?}"),
                    Err(e) => format!("Err({e:?})"),
                }
            })
            .collect()
    }

    #[test]
    fn scripted_conversation_opens_in_order() {
        for enc in ENCRYPTION_TYPES {
            for mode in [ReplayMode::Ordered, ReplayMode::Window] {
                assert_eq!(
                    kinds(Side::Server, mode, enc, &[0, 1, 2, 3, 4, 5, 6, 7]),
                    [
                        "WalletBalance",
                        "WalletTransaction",
                        "Ping",
                        "Ack",
                        "KeyUpdated(1)",
                        "WalletAuth",
                        "KeyUpdated(2)",
                        "Disconnect"
                    ],
                    "{enc:?} {mode:?}"
                );
                let unexpected = format!(
                    "Err({:?})",
                    XTMPError::UnexpectedMessage(MessageType::KeyUpdateAck)
                );
                assert_eq!(
                    kinds(Side::Client, mode, enc, &[0, 1, 2, 3, 4, 5, 6, 7]),
                    [
                        "KeyUpdated(1)",
                        "Response",
                        "Error",
                        "Handled",
                        "EventStream",
                        "Ping",
                        "Disconnect",
                        "Err(Closed)"
                    ],
                    "{enc:?} {mode:?}"
                );
                // 7 and 6 carry the same sequence number.
                let to_client = &world(enc).to_client;
                let seq = |i: usize| {
                    xtmp_proto::Header::parse(&to_client[i].frame, u32::MAX)
                        .unwrap()
                        .sequence_number
                };
                let s = seq(6);
                assert_eq!(seq(7), s);
                let replaced = match mode {
                    ReplayMode::Ordered => format!(
                        "Err({:?})",
                        XTMPError::OutOfOrder {
                            expected: s + 1,
                            got: s
                        }
                    ),
                    ReplayMode::Window => format!("Err({:?})", XTMPError::Replay(s)),
                };
                assert_eq!(
                    kinds(Side::Client, mode, enc, &[0, 1, 2, 3, 4, 5, 7, 6]),
                    [
                        "KeyUpdated(1)",
                        "Response",
                        "Error",
                        "Handled",
                        "EventStream",
                        "Ping",
                        &unexpected,
                        &replaced
                    ],
                    "{enc:?} {mode:?}"
                );
            }
        }
    }
}
