//! The hybrid post-quantum handshake: PQ Noise `pqNK` / `pqIK` over the X-Wing KEM
//! (ML-KEM-768 + X25519), one round trip, with a stateless cookie step
//! (`PROTOCOL.md` §4).
//!
//! ```text
//! <- s_S                              pre-message: the client knows the server's static key
//! -> skem, e, [s], payload            Handshake     (0x01)
//! <- ekem, [skem], payload            HandshakeAck  (0x02)
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xtmp_crypto::aead::{AeadAlgorithm, AeadKey, TAG_LEN};
use xtmp_crypto::kdf;
use xtmp_crypto::xwing::{
    XWingPublicKey, XWingSecretKey, CIPHERTEXT_LEN as CT_LEN, PUBLIC_KEY_LEN as PK_LEN,
};
use zeroize::Zeroizing;

use crate::error::{HandshakeFailure, XTMPError};
use crate::header::{parse_frame, EncryptionType, Header, MessageType, XTMPFlags, HEADER_LEN};
use crate::keys::{GenerationSecrets, Side};
use crate::rng::SecureRandom;
use crate::session::{Session, SessionConfig};

/// Handshake format version carried in byte 0 of both handshake payloads.
pub const HANDSHAKE_VERSION: u8 = 1;
/// KEM identifier for X-Wing (ML-KEM-768 + X25519).
pub const KEM_XWING: u8 = 1;
/// Length of a cookie.
pub const COOKIE_LEN: usize = 16;
/// How long a cookie secret is current; the previous one is still accepted for another period.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);
/// How many `Retry` answers a client follows before giving up.
pub const MAX_RETRIES: u8 = 2;

/// Noise protocol names (hashed into the initial `h`).
pub const PROTOCOL_NAME_NK: &[u8] = b"XTMP_v1_pqNK_XWing768_AES256GCM_SHA256";
/// See [`PROTOCOL_NAME_NK`].
pub const PROTOCOL_NAME_IK: &[u8] = b"XTMP_v1_pqIK_XWing768_AES256GCM_SHA256";

const PREFIX_LEN: usize = 8;
const TIMESTAMP_LEN: usize = 8;
const ACK_PAYLOAD_LEN: usize = 16;

/// Handshake pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Pattern {
    /// Server authenticated, client anonymous.
    NK = 1,
    /// Both authenticated by their static KEM keys.
    IK = 2,
}

impl Pattern {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Pattern::NK),
            2 => Some(Pattern::IK),
            _ => None,
        }
    }
    fn protocol_name(self) -> &'static [u8] {
        match self {
            Pattern::NK => PROTOCOL_NAME_NK,
            Pattern::IK => PROTOCOL_NAME_IK,
        }
    }
    /// Length of the Handshake payload without cookie.
    pub fn message1_len(self) -> usize {
        let base = PREFIX_LEN + CT_LEN + PK_LEN + TIMESTAMP_LEN + TAG_LEN;
        match self {
            Pattern::NK => base,
            Pattern::IK => base + PK_LEN + TAG_LEN,
        }
    }
    /// Length of the HandshakeAck payload.
    pub fn message2_len(self) -> usize {
        let base = PREFIX_LEN + CT_LEN + ACK_PAYLOAD_LEN + TAG_LEN;
        match self {
            Pattern::NK => base,
            Pattern::IK => base + CT_LEN,
        }
    }
}

/// SHA-256 fingerprint of a static public key (used in authorized-key lists and logs).
pub fn fingerprint(pk: &XWingPublicKey) -> [u8; 32] {
    kdf::sha256(&[pk.as_bytes()])
}

/// Noise-style symmetric state with SHA-256, HKDF-SHA-256 and AES-256-GCM.
#[derive(Clone)]
struct SymmetricState {
    h: [u8; 32],
    ck: Zeroizing<[u8; 32]>,
    k: Option<Zeroizing<[u8; 32]>>,
    n: u64,
}

impl SymmetricState {
    fn new(protocol_name: &[u8]) -> Self {
        let h = kdf::sha256(&[protocol_name]);
        Self {
            h,
            ck: Zeroizing::new(h),
            k: None,
            n: 0,
        }
    }
    fn mix_hash(&mut self, data: &[u8]) {
        self.h = kdf::sha256(&[&self.h, data]);
    }
    fn mix_key(&mut self, ikm: &[u8; 32]) {
        let prk = Zeroizing::new(kdf::hkdf_extract(&self.ck[..], ikm));
        let mut ck = Zeroizing::new([0u8; 32]);
        let mut k = Zeroizing::new([0u8; 32]);
        let _ = kdf::hkdf_expand(&prk, &[b"xtmp v1 hs ck"], &mut ck[..]);
        let _ = kdf::hkdf_expand(&prk, &[b"xtmp v1 hs k"], &mut k[..]);
        self.ck = ck;
        self.k = Some(k);
        self.n = 0;
    }
    fn nonce(&self) -> [u8; 24] {
        let mut n = [0u8; 24];
        n[4..12].copy_from_slice(&self.n.to_be_bytes());
        n
    }
    /// Appends `AEAD(k, n, h, pt)` to `out` and mixes it into `h`.
    fn encrypt_and_hash(&mut self, pt: &[u8], out: &mut Vec<u8>) -> Result<(), XTMPError> {
        let Some(k) = &self.k else {
            return Err(XTMPError::EncryptionError("no handshake key".into()));
        };
        let start = out.len();
        out.extend_from_slice(pt);
        let key = AeadKey::new(AeadAlgorithm::Aes256Gcm, k, None);
        let tag = key
            .seal_in_place(&self.nonce(), &self.h, &mut out[start..])
            .map_err(|_| XTMPError::EncryptionError("handshake seal failed".into()))?;
        out.extend_from_slice(&tag);
        self.n += 1;
        let ct = out[start..].to_vec();
        self.mix_hash(&ct);
        Ok(())
    }
    /// Decrypts `ct || tag`, mixes the ciphertext into `h`.
    fn decrypt_and_hash(&mut self, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>, XTMPError> {
        let Some(k) = &self.k else {
            return Err(HandshakeFailure::DecryptFailed.into());
        };
        if ct.len() < TAG_LEN {
            return Err(HandshakeFailure::Malformed.into());
        }
        let (body, tag) = ct.split_at(ct.len() - TAG_LEN);
        let mut tag_arr = [0u8; TAG_LEN];
        tag_arr.copy_from_slice(tag);
        let mut pt = Zeroizing::new(body.to_vec());
        let key = AeadKey::new(AeadAlgorithm::Aes256Gcm, k, None);
        key.open_in_place(&self.nonce(), &self.h, &mut pt, &tag_arr)
            .map_err(|_| XTMPError::Handshake(HandshakeFailure::DecryptFailed))?;
        self.n += 1;
        self.mix_hash(ct);
        Ok(pt)
    }
    fn split(&self) -> GenerationSecrets {
        GenerationSecrets::initial(&self.ck, &self.h)
    }
}

fn handshake_header(message_type: MessageType, session_id: u64, payload: &[u8]) -> [u8; 96] {
    Header {
        message_type,
        flags: XTMPFlags::empty(),
        session_id,
        sequence_number: 0,
        payload_length: payload.len() as u32,
        checksum: crate::header::crc32(payload),
        encryption_type: EncryptionType::None,
        key_id: [0; 16],
        nonce: [0; 24],
        auth_tag: [0; 16],
    }
    .to_bytes()
}

fn frame(message_type: MessageType, session_id: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER_LEN + payload.len());
    f.extend_from_slice(&handshake_header(message_type, session_id, payload));
    f.extend_from_slice(payload);
    f
}

/// Handshake frames carry no record protection: key id, nonce, tag and flags are zero
/// and the sequence number is 0.
fn check_plain_header(h: &Header) -> Result<(), XTMPError> {
    if h.encryption_type != EncryptionType::None
        || !h.flags.is_empty()
        || h.sequence_number != 0
        || h.key_id != [0; 16]
        || h.nonce != [0; 24]
        || h.auth_tag != [0; 16]
    {
        return Err(HandshakeFailure::Malformed.into());
    }
    Ok(())
}

fn offers_bitmap(offered: &[EncryptionType]) -> u8 {
    offered.iter().fold(0u8, |acc, e| acc | e.offer_bit())
}

// ------------------------------------------------------------------------------------
// Client
// ------------------------------------------------------------------------------------

/// What the client needs to start a handshake.
#[derive(Clone)]
pub struct ClientConfig {
    /// The server's static public key (pinned or from a known-hosts file).
    pub server_key: XWingPublicKey,
    /// The client's static key pair; `Some` selects `pqIK` (mutual authentication).
    pub client_key: Option<Arc<XWingSecretKey>>,
    /// Encryption types the client accepts, most preferred first (must not be empty).
    pub encryption_types: Vec<EncryptionType>,
    /// Session settings for the resulting session.
    pub session: SessionConfig,
}

impl core::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("server_key", &self.server_key)
            .field("mutual", &self.client_key.is_some())
            .field("encryption_types", &self.encryption_types)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// Server-authenticated (`pqNK`) configuration with the `PostQuantum` default.
    pub fn new(server_key: XWingPublicKey) -> Self {
        Self {
            server_key,
            client_key: None,
            encryption_types: vec![
                EncryptionType::PostQuantum,
                EncryptionType::Aes256Gcm,
                EncryptionType::ChaCha20Poly1305,
            ],
            session: SessionConfig::default(),
        }
    }
}

/// A client waiting for `HandshakeAck` (or `Retry`).
pub struct ClientHandshake {
    config: ClientConfig,
    pattern: Pattern,
    state: SymmetricState,
    ephemeral: XWingSecretKey,
    message1: Vec<u8>,
    retries: u8,
}

impl core::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientHandshake")
            .field("pattern", &self.pattern)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

/// What the client does with the server's answer.
#[derive(Debug)]
pub enum ClientOutcome {
    /// The server asked for address validation: send this frame (message 1 with the cookie).
    Retry(Vec<u8>),
    /// The handshake completed.
    Established(Box<Session>),
}

impl ClientHandshake {
    /// Builds message 1. `unix_time_ns` is the wall clock (the anti-replay timestamp).
    ///
    /// # Errors
    /// [`XTMPError::InvalidMessage`] if no encryption type is offered.
    pub fn start(
        config: ClientConfig,
        unix_time_ns: u64,
        rng: &mut dyn SecureRandom,
    ) -> Result<(Self, Vec<u8>), XTMPError> {
        let preferred = *config
            .encryption_types
            .first()
            .ok_or_else(|| XTMPError::InvalidMessage("no encryption type offered".into()))?;
        let pattern = if config.client_key.is_some() {
            Pattern::IK
        } else {
            Pattern::NK
        };
        let prefix = [
            HANDSHAKE_VERSION,
            pattern as u8,
            KEM_XWING,
            offers_bitmap(&config.encryption_types),
            preferred as u8,
            0,
            0,
            0,
        ];
        let mut st = SymmetricState::new(pattern.protocol_name());
        st.mix_hash(&prefix);
        st.mix_hash(config.server_key.as_bytes());

        let mut body = Vec::with_capacity(pattern.message1_len() + COOKIE_LEN);
        body.extend_from_slice(&prefix);

        let mut eseed = Zeroizing::new([0u8; 64]);
        rng.fill(&mut eseed[..]);
        let (ct1, ss1) = config
            .server_key
            .encapsulate_derand(&eseed)
            .map_err(|_| XTMPError::EncryptionError("encapsulation failed".into()))?;
        st.mix_hash(&ct1);
        st.mix_key(ss1.as_bytes());
        body.extend_from_slice(&ct1);

        let mut eph_seed = Zeroizing::new([0u8; 32]);
        rng.fill(&mut eph_seed[..]);
        let ephemeral = XWingSecretKey::from_seed(&eph_seed);
        st.mix_hash(ephemeral.public_key().as_bytes());
        body.extend_from_slice(ephemeral.public_key().as_bytes());

        if let Some(ck) = &config.client_key {
            st.encrypt_and_hash(ck.public_key().as_bytes(), &mut body)?;
        }
        st.encrypt_and_hash(&unix_time_ns.to_be_bytes(), &mut body)?;
        debug_assert_eq!(body.len(), pattern.message1_len());

        let f = frame(MessageType::Handshake, 0, &body);
        Ok((
            Self {
                config,
                pattern,
                state: st,
                ephemeral,
                message1: body,
                retries: 0,
            },
            f,
        ))
    }

    /// The pattern in use.
    pub fn pattern(&self) -> Pattern {
        self.pattern
    }

    /// Handles the server's answer (`HandshakeAck` or `Retry`). On any error the
    /// handshake state is unchanged, so a forged answer cannot break a genuine one that
    /// follows.
    ///
    /// # Errors
    /// Framing errors, [`XTMPError::UnexpectedMessage`] for another message type, or
    /// [`XTMPError::Handshake`] with the reason.
    pub fn handle(&mut self, now: Instant, frame_bytes: &[u8]) -> Result<ClientOutcome, XTMPError> {
        let max = self.pattern.message2_len().max(COOKIE_LEN) as u32;
        let (h, payload) = parse_frame(frame_bytes, max)?;
        check_plain_header(&h)?;
        match h.message_type {
            MessageType::Retry => {
                if h.session_id != 0 || payload.len() != COOKIE_LEN {
                    return Err(HandshakeFailure::Malformed.into());
                }
                if self.retries >= MAX_RETRIES {
                    return Err(HandshakeFailure::TooManyRetries.into());
                }
                self.retries += 1;
                let mut body = self.message1.clone();
                body.extend_from_slice(payload);
                Ok(ClientOutcome::Retry(frame(
                    MessageType::Handshake,
                    0,
                    &body,
                )))
            }
            MessageType::HandshakeAck => {
                let session = self.handle_ack(now, &h, payload)?;
                Ok(ClientOutcome::Established(Box::new(session)))
            }
            other => Err(XTMPError::UnexpectedMessage(other)),
        }
    }

    fn handle_ack(&self, now: Instant, h: &Header, p: &[u8]) -> Result<Session, XTMPError> {
        if h.session_id == 0 || p.len() != self.pattern.message2_len() {
            return Err(HandshakeFailure::Malformed.into());
        }
        // Work on a copy: a failure leaves `self` as it was.
        let mut st = self.state.clone();
        let prefix = &p[..PREFIX_LEN];
        if prefix[0] != HANDSHAKE_VERSION {
            return Err(HandshakeFailure::UnsupportedVersion.into());
        }
        if prefix[1] != self.pattern as u8 || prefix[3..].iter().any(|&b| b != 0) {
            return Err(HandshakeFailure::Malformed.into());
        }
        let chosen = EncryptionType::from_u8(prefix[2]).ok_or(HandshakeFailure::Malformed)?;
        if !self.config.encryption_types.contains(&chosen) {
            return Err(HandshakeFailure::NoCommonEncryption.into());
        }
        st.mix_hash(prefix);
        let mut off = PREFIX_LEN;
        let ct2 = &p[off..off + CT_LEN];
        off += CT_LEN;
        st.mix_hash(ct2);
        let ss2 = self
            .ephemeral
            .decapsulate(ct2)
            .map_err(|_| HandshakeFailure::Malformed)?;
        st.mix_key(ss2.as_bytes());
        if self.pattern == Pattern::IK {
            let ct3 = &p[off..off + CT_LEN];
            off += CT_LEN;
            st.mix_hash(ct3);
            let ck = self
                .config
                .client_key
                .as_ref()
                .ok_or(HandshakeFailure::Unexpected)?;
            let ss3 = ck
                .decapsulate(ct3)
                .map_err(|_| HandshakeFailure::Malformed)?;
            st.mix_key(ss3.as_bytes());
        }
        let pt = st.decrypt_and_hash(&p[off..])?;
        if pt.len() != ACK_PAYLOAD_LEN {
            return Err(HandshakeFailure::Malformed.into());
        }
        let sid = u64::from_be_bytes(arr8(&pt[0..8]));
        if sid != h.session_id {
            return Err(HandshakeFailure::Unexpected.into());
        }
        let rotation_ms = u32::from_be_bytes(arr4(&pt[8..12]));
        let max_payload = u32::from_be_bytes(arr4(&pt[12..16]));
        let mut cfg = self.config.session.clone();
        if rotation_ms > 0 {
            cfg.key_rotation_interval = cfg
                .key_rotation_interval
                .min(Duration::from_millis(u64::from(rotation_ms)));
        }
        cfg.max_payload = cfg.max_payload.min(max_payload.max(1));
        let secrets = st.split();
        Ok(Session::new(
            Side::Client,
            sid,
            chosen,
            &secrets,
            st.h,
            cfg,
            now,
            None,
        ))
    }
}

fn arr8(s: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    a
}
fn arr4(s: &[u8]) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    a
}

// ------------------------------------------------------------------------------------
// Server
// ------------------------------------------------------------------------------------

/// Server handshake policy.
#[derive(Clone)]
pub struct ServerConfig {
    /// The server's static key pair.
    pub static_key: Arc<XWingSecretKey>,
    /// With `true`, only `pqIK` from an authorized key is accepted.
    pub require_client_auth: bool,
    /// Fingerprints ([`fingerprint`]) of the client keys allowed in.
    pub authorized_clients: HashSet<[u8; 32]>,
    /// Encryption types the server permits, most preferred first.
    pub encryption_types: Vec<EncryptionType>,
    /// Session settings for accepted sessions.
    pub session: SessionConfig,
}

impl core::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("static_key", &self.static_key.public_key())
            .field("require_client_auth", &self.require_client_auth)
            .field("authorized_clients", &self.authorized_clients.len())
            .field("encryption_types", &self.encryption_types)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// A server-authenticated configuration with the `PostQuantum` default.
    pub fn new(static_key: Arc<XWingSecretKey>) -> Self {
        Self {
            static_key,
            require_client_auth: false,
            authorized_clients: HashSet::new(),
            encryption_types: vec![
                EncryptionType::PostQuantum,
                EncryptionType::Aes256Gcm,
                EncryptionType::ChaCha20Poly1305,
            ],
            session: SessionConfig::default(),
        }
    }
}

/// What the server does with a `Handshake`.
#[derive(Debug)]
pub enum ServerOutcome {
    /// Address validation first: send this `Retry` frame (smaller than what was received),
    /// keep no state.
    Retry(Vec<u8>),
    /// Accepted: send `ack`, and the session is ready.
    Accepted {
        /// The `HandshakeAck` frame.
        ack: Vec<u8>,
        /// The new session (server side).
        session: Box<Session>,
        /// The client's static key fingerprint (`pqIK` only).
        client_key: Option<[u8; 32]>,
        /// The client's handshake timestamp (Unix nanoseconds), for [`ServerHandshaker::commit`].
        timestamp_ns: u64,
    },
}

/// The server's handshake responder. It keeps no per-handshake state: only the cookie
/// secrets and, per authorized client key, the newest handshake timestamp seen.
pub struct ServerHandshaker {
    config: ServerConfig,
    cookie_secret: Zeroizing<[u8; 32]>,
    previous_cookie_secret: Option<Zeroizing<[u8; 32]>>,
    cookie_rotated_at: Option<Instant>,
    timestamps: HashMap<[u8; 32], u64>,
}

impl core::fmt::Debug for ServerHandshaker {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServerHandshaker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ServerHandshaker {
    /// A responder with the given policy.
    pub fn new(config: ServerConfig) -> Self {
        Self {
            config,
            cookie_secret: Zeroizing::new([0u8; 32]),
            previous_cookie_secret: None,
            cookie_rotated_at: None,
            timestamps: HashMap::new(),
        }
    }

    /// The policy in force.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Replaces the authorized client set (e.g. on configuration reload).
    pub fn set_authorized_clients(&mut self, keys: HashSet<[u8; 32]>) {
        self.timestamps.retain(|k, _| keys.contains(k));
        self.config.authorized_clients = keys;
    }

    fn rotate_cookie_secret(&mut self, now: Instant, rng: &mut dyn SecureRandom) {
        let due = match self.cookie_rotated_at {
            None => true,
            Some(t) => now.saturating_duration_since(t) >= COOKIE_SECRET_LIFETIME,
        };
        if due {
            let mut fresh = Zeroizing::new([0u8; 32]);
            rng.fill(&mut fresh[..]);
            let old = core::mem::replace(&mut self.cookie_secret, fresh);
            self.previous_cookie_secret = self.cookie_rotated_at.map(|_| old);
            self.cookie_rotated_at = Some(now);
        }
    }

    fn cookie(secret: &[u8; 32], address: &[u8]) -> [u8; COOKIE_LEN] {
        let mac = kdf::hmac_sha256(secret, &[b"xtmp v1 cookie", address]);
        let mut c = [0u8; COOKIE_LEN];
        c.copy_from_slice(&mac[..COOKIE_LEN]);
        c
    }

    fn cookie_valid(&self, address: &[u8], cookie: &[u8]) -> bool {
        let cur = Self::cookie(&self.cookie_secret, address);
        let mut ok = xtmp_crypto::ct_eq(&cur, cookie);
        if let Some(prev) = &self.previous_cookie_secret {
            ok |= xtmp_crypto::ct_eq(&Self::cookie(prev, address), cookie);
        }
        ok
    }

    /// Whether `cookie` is the current (or previous) cookie for `peer_address`: the cheap
    /// check a datagram server runs on every handshake fragment before it keeps any state
    /// for it (`PROTOCOL.md` §9.4). Constant time. `false` before the first
    /// [`ServerHandshaker::maintain`].
    pub fn cookie_valid_for(&self, peer_address: &[u8], cookie: &[u8]) -> bool {
        self.cookie_rotated_at.is_some()
            && cookie.len() == COOKIE_LEN
            && self.cookie_valid(peer_address, cookie)
    }

    /// The `Retry` frame (112 bytes) carrying the current cookie for `peer_address`;
    /// `None` before the first [`ServerHandshaker::maintain`].
    pub fn retry_frame_for(&self, peer_address: &[u8]) -> Option<Vec<u8>> {
        self.cookie_rotated_at?;
        let c = Self::cookie(&self.cookie_secret, peer_address);
        Some(frame(MessageType::Retry, 0, &c))
    }

    /// Handles message 1: [`ServerHandshaker::maintain`], [`ServerHandshaker::handle_shared`]
    /// and [`ServerHandshaker::commit`] in one call.
    ///
    /// `peer_address` is any stable byte encoding of the client's network address
    /// (the cookie is bound to it). With `require_cookie` (under load, or always on
    /// datagram transports) a message without a valid cookie gets a `Retry` and costs no
    /// KEM work. Timestamps are compared per authorized client key.
    ///
    /// # Errors
    /// Framing errors or [`XTMPError::Handshake`]; on error the responder's replay state
    /// is unchanged.
    pub fn handle(
        &mut self,
        now: Instant,
        peer_address: &[u8],
        require_cookie: bool,
        frame_bytes: &[u8],
        rng: &mut dyn SecureRandom,
    ) -> Result<ServerOutcome, XTMPError> {
        self.maintain(now, rng);
        let out = self.handle_shared(now, peer_address, require_cookie, frame_bytes, rng)?;
        self.commit(&out)?;
        Ok(out)
    }

    /// Rotates the cookie secret when due. Call before [`ServerHandshaker::handle_shared`]
    /// (at least once, and from time to time; [`ServerHandshaker::handle`] does it itself).
    pub fn maintain(&mut self, now: Instant, rng: &mut dyn SecureRandom) {
        self.rotate_cookie_secret(now, rng);
    }

    /// Records an accepted handshake's timestamp for its (authorized) client key. Two
    /// concurrent [`ServerHandshaker::handle_shared`] calls with the same message 1 can
    /// both pass the replay check; only the first `commit` succeeds, so the caller must
    /// commit before sending the `HandshakeAck` and drop the session when it fails.
    ///
    /// # Errors
    /// [`HandshakeFailure::Replayed`].
    pub fn commit(&mut self, outcome: &ServerOutcome) -> Result<(), XTMPError> {
        if let ServerOutcome::Accepted {
            client_key: Some(fp),
            timestamp_ns,
            ..
        } = outcome
        {
            if self.config.authorized_clients.contains(fp) {
                if let Some(&last) = self.timestamps.get(fp) {
                    if *timestamp_ns <= last {
                        return Err(HandshakeFailure::Replayed.into());
                    }
                }
                self.timestamps.insert(*fp, *timestamp_ns);
            }
        }
        Ok(())
    }

    /// Handles message 1 without changing the responder (so many can run in parallel
    /// under a read lock). The caller must have called [`ServerHandshaker::maintain`] at
    /// least once, and must [`ServerHandshaker::commit`] an `Accepted` outcome.
    ///
    /// # Errors
    /// As [`ServerHandshaker::handle`]; with `require_cookie` before any `maintain`, an
    /// [`XTMPError::EncryptionError`] (no cookie secret yet).
    pub fn handle_shared(
        &self,
        now: Instant,
        peer_address: &[u8],
        require_cookie: bool,
        frame_bytes: &[u8],
        rng: &mut dyn SecureRandom,
    ) -> Result<ServerOutcome, XTMPError> {
        let max = (Pattern::IK.message1_len() + COOKIE_LEN) as u32;
        let (h, p) = parse_frame(frame_bytes, max)?;
        if h.message_type != MessageType::Handshake {
            return Err(XTMPError::UnexpectedMessage(h.message_type));
        }
        check_plain_header(&h)?;
        if h.session_id != 0 || p.len() < PREFIX_LEN {
            return Err(HandshakeFailure::Malformed.into());
        }
        let prefix = &p[..PREFIX_LEN];
        if prefix[0] != HANDSHAKE_VERSION {
            return Err(HandshakeFailure::UnsupportedVersion.into());
        }
        let pattern = Pattern::from_u8(prefix[1]).ok_or(HandshakeFailure::Malformed)?;
        if prefix[2] != KEM_XWING || prefix[5..].iter().any(|&b| b != 0) {
            return Err(HandshakeFailure::Malformed.into());
        }
        let body_len = pattern.message1_len();
        let cookie = match p.len() {
            n if n == body_len => None,
            n if n == body_len + COOKIE_LEN => Some(&p[body_len..]),
            _ => return Err(HandshakeFailure::Malformed.into()),
        };
        let body = &p[..body_len];
        if self.config.require_client_auth && pattern != Pattern::IK {
            return Err(HandshakeFailure::AuthenticationRequired.into());
        }
        // Cookie step: before any KEM work.
        if require_cookie && self.cookie_rotated_at.is_none() {
            return Err(XTMPError::EncryptionError(
                "cookie secret not initialised: call ServerHandshaker::maintain first".into(),
            ));
        }
        if require_cookie && !cookie.is_some_and(|c| self.cookie_valid(peer_address, c)) {
            let c = Self::cookie(&self.cookie_secret, peer_address);
            return Ok(ServerOutcome::Retry(frame(MessageType::Retry, 0, &c)));
        }
        // Encryption type: the client's preference if permitted, else the server's order.
        let offered = prefix[3];
        let preferred = EncryptionType::from_u8(prefix[4]).ok_or(HandshakeFailure::Malformed)?;
        if offered & preferred.offer_bit() == 0 {
            return Err(HandshakeFailure::Malformed.into());
        }
        let chosen = if self.config.encryption_types.contains(&preferred) {
            preferred
        } else {
            *self
                .config
                .encryption_types
                .iter()
                .find(|e| offered & e.offer_bit() != 0)
                .ok_or(HandshakeFailure::NoCommonEncryption)?
        };

        let mut st = SymmetricState::new(pattern.protocol_name());
        st.mix_hash(prefix);
        st.mix_hash(self.config.static_key.public_key().as_bytes());
        let mut off = PREFIX_LEN;
        let ct1 = &body[off..off + CT_LEN];
        off += CT_LEN;
        st.mix_hash(ct1);
        let ss1 = self
            .config
            .static_key
            .decapsulate(ct1)
            .map_err(|_| HandshakeFailure::Malformed)?;
        st.mix_key(ss1.as_bytes());
        let e_pk = XWingPublicKey::from_bytes(&body[off..off + PK_LEN])
            .map_err(|_| HandshakeFailure::InvalidKey)?;
        off += PK_LEN;
        st.mix_hash(e_pk.as_bytes());
        let mut client_static = None;
        if pattern == Pattern::IK {
            let s_bytes = st.decrypt_and_hash(&body[off..off + PK_LEN + TAG_LEN])?;
            off += PK_LEN + TAG_LEN;
            let pk =
                XWingPublicKey::from_bytes(&s_bytes).map_err(|_| HandshakeFailure::InvalidKey)?;
            client_static = Some(pk);
        }
        let ts = st.decrypt_and_hash(&body[off..])?;
        if ts.len() != TIMESTAMP_LEN {
            return Err(HandshakeFailure::Malformed.into());
        }
        let ts = u64::from_be_bytes(arr8(&ts));

        // Authorization and replay (per authorized client key).
        let client_fp = client_static.as_ref().map(fingerprint);
        if let Some(fp) = &client_fp {
            let authorized = self.config.authorized_clients.contains(fp);
            if self.config.require_client_auth && !authorized {
                return Err(HandshakeFailure::Unauthorized.into());
            }
            if authorized {
                if let Some(&last) = self.timestamps.get(fp) {
                    if ts <= last {
                        return Err(HandshakeFailure::Replayed.into());
                    }
                }
            }
        }

        // Message 2.
        let mut session_id = 0u64;
        while session_id == 0 {
            let mut b = [0u8; 8];
            rng.fill(&mut b);
            session_id = u64::from_be_bytes(b);
        }
        let ack_prefix = [
            HANDSHAKE_VERSION,
            pattern as u8,
            chosen as u8,
            0,
            0,
            0,
            0,
            0,
        ];
        st.mix_hash(&ack_prefix);
        let mut ack = Vec::with_capacity(pattern.message2_len());
        ack.extend_from_slice(&ack_prefix);
        let mut eseed = Zeroizing::new([0u8; 64]);
        rng.fill(&mut eseed[..]);
        let (ct2, ss2) = e_pk
            .encapsulate_derand(&eseed)
            .map_err(|_| HandshakeFailure::InvalidKey)?;
        st.mix_hash(&ct2);
        st.mix_key(ss2.as_bytes());
        ack.extend_from_slice(&ct2);
        if let Some(s_c) = &client_static {
            rng.fill(&mut eseed[..]);
            let (ct3, ss3) = s_c
                .encapsulate_derand(&eseed)
                .map_err(|_| HandshakeFailure::InvalidKey)?;
            st.mix_hash(&ct3);
            st.mix_key(ss3.as_bytes());
            ack.extend_from_slice(&ct3);
        }
        let cfg = self.config.session.clone();
        let rotation_ms = u32::try_from(cfg.key_rotation_interval.as_millis()).unwrap_or(u32::MAX);
        let mut p2 = [0u8; ACK_PAYLOAD_LEN];
        p2[0..8].copy_from_slice(&session_id.to_be_bytes());
        p2[8..12].copy_from_slice(&rotation_ms.to_be_bytes());
        p2[12..16].copy_from_slice(&cfg.max_payload.to_be_bytes());
        st.encrypt_and_hash(&p2, &mut ack)?;

        let secrets = st.split();
        // The server's rotation timer runs 10 % later than the client's so that the
        // client normally initiates and collisions stay rare (PROTOCOL.md §5.5).
        let session = Session::new(
            Side::Server,
            session_id,
            chosen,
            &secrets,
            st.h,
            cfg,
            now,
            client_fp,
        );
        Ok(ServerOutcome::Accepted {
            ack: frame(MessageType::HandshakeAck, session_id, &ack),
            session: Box::new(session),
            client_key: client_fp,
            timestamp_ns: ts,
        })
    }
}
