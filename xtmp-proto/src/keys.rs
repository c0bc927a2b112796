//! Key schedule, per-direction key sets, nonce construction and record protection
//! (`PROTOCOL.md` §5).

use std::sync::OnceLock;
use std::time::Instant;

use xtmp_crypto::aead::{AeadAlgorithm, AeadKey};
use xtmp_crypto::kdf;
use zeroize::{Zeroize, Zeroizing};

use crate::error::XTMPError;
use crate::header::{EncryptionType, AAD_LEN, HEADER_LEN};

/// Which end of a session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The side that sent `Handshake`.
    Client,
    /// The side that answered with `HandshakeAck`.
    Server,
}

/// Direction of traffic, as encoded in key ids and nonces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Direction {
    /// Client to server.
    ClientToServer = 0x01,
    /// Server to client.
    ServerToClient = 0x02,
}

impl Side {
    /// The direction this side sends in.
    pub fn send_direction(self) -> Direction {
        match self {
            Side::Client => Direction::ClientToServer,
            Side::Server => Direction::ServerToClient,
        }
    }
    /// The direction this side receives in.
    pub fn recv_direction(self) -> Direction {
        match self {
            Side::Client => Direction::ServerToClient,
            Side::Server => Direction::ClientToServer,
        }
    }
}

/// HKDF labels of the key schedule (`PROTOCOL.md` §5.1). All are ASCII, no terminator.
pub mod labels {
    /// Traffic secret, client to server.
    pub const C2S: &[u8] = b"xtmp v1 traffic c2s";
    /// Traffic secret, server to client.
    pub const S2C: &[u8] = b"xtmp v1 traffic s2c";
    /// Secret that the next rekey is mixed with.
    pub const REKEY: &[u8] = b"xtmp v1 rekey";
    /// AEAD key from a traffic secret.
    pub const KEY: &[u8] = b"xtmp v1 key";
    /// HMAC key (`EncryptionType::None`) from a traffic secret.
    pub const AUTH: &[u8] = b"xtmp v1 auth";
}

/// The secrets of one key generation: a traffic secret per direction plus the rekey secret.
pub(crate) struct GenerationSecrets {
    pub c2s: Zeroizing<[u8; 32]>,
    pub s2c: Zeroizing<[u8; 32]>,
    pub rekey: Zeroizing<[u8; 32]>,
}

impl GenerationSecrets {
    /// Expands the three secrets from a PRK.
    pub fn expand(prk: &[u8; 32]) -> Self {
        let mut s = Self {
            c2s: Zeroizing::new([0u8; 32]),
            s2c: Zeroizing::new([0u8; 32]),
            rekey: Zeroizing::new([0u8; 32]),
        };
        // 32 bytes is far below HKDF's 255*32 output limit, so expand cannot fail.
        let _ = kdf::hkdf_expand(prk, &[labels::C2S], &mut s.c2s[..]);
        let _ = kdf::hkdf_expand(prk, &[labels::S2C], &mut s.s2c[..]);
        let _ = kdf::hkdf_expand(prk, &[labels::REKEY], &mut s.rekey[..]);
        s
    }

    /// Generation 0 from the handshake's final chaining key and transcript hash.
    pub fn initial(ck: &[u8; 32], h: &[u8; 32]) -> Self {
        let prk = Zeroizing::new(kdf::hkdf_extract(ck, h));
        Self::expand(&prk)
    }

    /// Generation g+1 from generation g's rekey secret, the fresh KEM secret and the
    /// rekey transcript hash.
    pub fn next(rekey: &[u8; 32], kem_ss: &[u8; 32], transcript: &[u8; 32]) -> Self {
        let mut ikm = Zeroizing::new([0u8; 64]);
        ikm[..32].copy_from_slice(kem_ss);
        ikm[32..].copy_from_slice(transcript);
        let prk = Zeroizing::new(kdf::hkdf_extract(rekey, &ikm[..]));
        Self::expand(&prk)
    }

    pub fn for_direction(&self, d: Direction) -> &[u8; 32] {
        match d {
            Direction::ClientToServer => &self.c2s,
            Direction::ServerToClient => &self.s2c,
        }
    }
}

/// The seed's key set: the keys of one direction and one key generation.
///
/// `Debug` prints no key material; the keys are zeroized on drop.
pub struct XTMPKeySet {
    /// AEAD key (AES-256 / ChaCha20 / XAES-256 key, by the session's encryption type).
    session_key: Zeroizing<[u8; 32]>,
    /// HMAC-SHA-256 key used by `EncryptionType::None`.
    auth_key: Zeroizing<[u8; 32]>,
    /// Messages sealed (send side) or opened (receive side) under this key set.
    pub nonce_counter: u64,
    /// Payload bytes protected under this key set.
    pub bytes: u64,
    /// Key rotation generation.
    pub key_generation: u32,
    /// When this generation is due for rotation.
    pub expires_at: Instant,
    direction: Direction,
    encryption_type: EncryptionType,
    key_id: [u8; 16],
    /// The AEAD context (aws-lc key schedule and GHASH table, ~600 bytes), built from
    /// `session_key` on first use and released by [`XTMPKeySet::release_aead`] while the
    /// session is idle. Never set for `EncryptionType::None`.
    aead: OnceLock<AeadKey>,
}

impl core::fmt::Debug for XTMPKeySet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XTMPKeySet")
            .field("key_generation", &self.key_generation)
            .field("direction", &self.direction)
            .field("encryption_type", &self.encryption_type)
            .field("nonce_counter", &self.nonce_counter)
            .finish_non_exhaustive()
    }
}

impl Drop for XTMPKeySet {
    fn drop(&mut self) {
        // Zeroizing handles the byte arrays; make the intent explicit for the counters too.
        self.nonce_counter.zeroize();
    }
}

/// `key_id` = session_id (8) ‖ key_generation (4) ‖ direction (1) ‖ 3 zero bytes.
pub fn key_id(session_id: u64, generation: u32, direction: Direction) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[0..8].copy_from_slice(&session_id.to_be_bytes());
    k[8..12].copy_from_slice(&generation.to_be_bytes());
    k[12] = direction as u8;
    k
}

/// The 24-byte nonce field for a message (`PROTOCOL.md` §5.4).
pub fn nonce(
    encryption_type: EncryptionType,
    direction: Direction,
    generation: u32,
    seq: u64,
) -> [u8; 24] {
    let mut n = [0u8; 24];
    match encryption_type {
        EncryptionType::PostQuantum => {
            n[0] = direction as u8;
            n[1..5].copy_from_slice(&generation.to_be_bytes());
            n[16..24].copy_from_slice(&seq.to_be_bytes());
        }
        EncryptionType::Aes256Gcm | EncryptionType::ChaCha20Poly1305 | EncryptionType::None => {
            n[0] = direction as u8;
            n[4..12].copy_from_slice(&seq.to_be_bytes());
        }
    }
    n
}

fn xaes_prefix(direction: Direction, generation: u32) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0] = direction as u8;
    p[1..5].copy_from_slice(&generation.to_be_bytes());
    p
}

impl XTMPKeySet {
    /// Derives the key set of `direction` from its traffic secret.
    pub(crate) fn derive(
        traffic_secret: &[u8; 32],
        direction: Direction,
        generation: u32,
        session_id: u64,
        encryption_type: EncryptionType,
        expires_at: Instant,
    ) -> Self {
        let mut session_key = [0u8; 32];
        let mut auth_key = [0u8; 32];
        let _ = kdf::hkdf_expand(traffic_secret, &[labels::KEY], &mut session_key);
        let _ = kdf::hkdf_expand(traffic_secret, &[labels::AUTH], &mut auth_key);
        let ks = Self::from_keys(
            &session_key,
            &auth_key,
            direction,
            generation,
            session_id,
            encryption_type,
            expires_at,
        );
        session_key.zeroize();
        auth_key.zeroize();
        ks
    }

    /// Builds a key set from raw keys (test vectors and interoperability testing; a
    /// session derives its keys itself).
    pub fn from_keys(
        session_key: &[u8; 32],
        auth_key: &[u8; 32],
        direction: Direction,
        generation: u32,
        session_id: u64,
        encryption_type: EncryptionType,
        expires_at: Instant,
    ) -> Self {
        let ks = Self {
            session_key: Zeroizing::new(*session_key),
            auth_key: Zeroizing::new(*auth_key),
            nonce_counter: 0,
            bytes: 0,
            key_generation: generation,
            expires_at,
            direction,
            encryption_type,
            key_id: key_id(session_id, generation, direction),
            aead: OnceLock::new(),
        };
        // Built now: the first frame should not pay for it.
        let _ = ks.aead();
        ks
    }

    /// The AEAD context, built from `session_key` if it was released (about 1 µs).
    fn aead(&self) -> Option<&AeadKey> {
        let alg = match self.encryption_type {
            EncryptionType::None => return None,
            EncryptionType::Aes256Gcm => AeadAlgorithm::Aes256Gcm,
            EncryptionType::ChaCha20Poly1305 => AeadAlgorithm::ChaCha20Poly1305,
            EncryptionType::PostQuantum => AeadAlgorithm::Xaes256Gcm,
        };
        Some(self.aead.get_or_init(|| {
            let hint = (alg == AeadAlgorithm::Xaes256Gcm)
                .then(|| xaes_prefix(self.direction, self.key_generation));
            AeadKey::new(alg, &self.session_key, hint)
        }))
    }

    /// Frees the AEAD context (the expanded key schedule and GHASH table: ~600 bytes
    /// with aws-lc's AES-GCM), keeping only the 32-byte key it is built from; the next
    /// seal or open builds it again. For idle sessions, whose memory is mostly these
    /// contexts. Returns whether there was one to free.
    pub fn release_aead(&mut self) -> bool {
        self.aead.take().is_some()
    }

    /// Whether the AEAD context is built (see [`XTMPKeySet::release_aead`]).
    pub fn aead_ready(&self) -> bool {
        self.aead.get().is_some()
    }

    /// Seals `payload` as the frame with sequence number `seq`, type and flags given
    /// (`ENCRYPTED` is set as the encryption type requires), exactly as a session would.
    /// Does not advance any counter: this is the building block for test vectors and
    /// tools; sessions use their own counters.
    ///
    /// # Errors
    /// [`XTMPError::PayloadTooLarge`] beyond `u32::MAX` bytes, or an AEAD failure.
    pub fn seal_message(
        &self,
        session_id: u64,
        seq: u64,
        message_type: crate::MessageType,
        flags: crate::XTMPFlags,
        payload: &[u8],
    ) -> Result<Vec<u8>, XTMPError> {
        let len = u32::try_from(payload.len()).map_err(|_| XTMPError::PayloadTooLarge {
            length: u32::MAX,
            max: u32::MAX,
        })?;
        let mut flags = flags & crate::XTMPFlags::all();
        flags.set(
            crate::XTMPFlags::ENCRYPTED,
            self.encryption_type != EncryptionType::None,
        );
        let header = crate::Header {
            message_type,
            flags,
            session_id,
            sequence_number: seq,
            payload_length: len,
            checksum: 0,
            encryption_type: self.encryption_type,
            key_id: self.key_id,
            nonce: nonce(
                self.encryption_type,
                self.direction,
                self.key_generation,
                seq,
            ),
            auth_tag: [0; 16],
        };
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&header.to_bytes());
        out.extend_from_slice(payload);
        self.seal_frame(&mut out)?;
        Ok(out)
    }

    /// Verifies and decrypts a whole frame in place with this key set alone (no replay or
    /// key-id bookkeeping): the counterpart of [`XTMPKeySet::seal_message`].
    ///
    /// # Errors
    /// Framing errors or [`XTMPError::AuthenticationFailed`].
    pub fn open_message(&self, frame: &mut [u8]) -> Result<crate::Header, XTMPError> {
        let (h, _) = crate::header::parse_frame(frame, u32::MAX)?;
        self.open_frame(frame)?;
        Ok(h)
    }

    /// The AEAD key. Exposed for test vectors and diagnostics only.
    pub fn session_key(&self) -> &[u8; 32] {
        &self.session_key
    }

    /// The HMAC key. Exposed for test vectors and diagnostics only.
    pub fn auth_key(&self) -> &[u8; 32] {
        &self.auth_key
    }

    /// This key set's key id.
    pub fn key_id(&self) -> &[u8; 16] {
        &self.key_id
    }

    /// Direction this key set protects.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Encryption type this key set implements.
    pub fn encryption_type(&self) -> EncryptionType {
        self.encryption_type
    }

    /// Protects one frame in place. `frame` is the header (all fields written except
    /// `checksum` and `auth_tag`, which this fills in) followed by the plaintext payload.
    pub(crate) fn seal_frame(&self, frame: &mut [u8]) -> Result<(), XTMPError> {
        if frame.len() < HEADER_LEN {
            return Err(XTMPError::BufferTooSmall(HEADER_LEN));
        }
        let (header, payload) = frame.split_at_mut(HEADER_LEN);
        header[28..32].fill(0);
        let mut aad = [0u8; AAD_LEN];
        aad.copy_from_slice(&header[..AAD_LEN]);
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&header[56..80]);
        let tag = match self.aead() {
            Some(k) => k
                .seal_in_place(&nonce, &aad, payload)
                .map_err(|_| XTMPError::EncryptionError("AEAD seal failed".into()))?,
            None => hmac_tag(&self.auth_key, &aad, payload),
        };
        let crc = crate::header::crc32(payload);
        header[28..32].copy_from_slice(&crc.to_be_bytes());
        header[80..96].copy_from_slice(&tag);
        Ok(())
    }

    /// Verifies (and decrypts in place) one frame whose header was already validated.
    pub(crate) fn open_frame(&self, frame: &mut [u8]) -> Result<(), XTMPError> {
        if frame.len() < HEADER_LEN {
            return Err(XTMPError::BufferTooSmall(HEADER_LEN));
        }
        let (header, payload) = frame.split_at_mut(HEADER_LEN);
        let mut aad = [0u8; AAD_LEN];
        aad.copy_from_slice(&header[..AAD_LEN]);
        aad[28..32].fill(0);
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&header[56..80]);
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&header[80..96]);
        match self.aead() {
            Some(k) => k
                .open_in_place(&nonce, &aad, payload, &tag)
                .map_err(|_| XTMPError::AuthenticationFailed),
            None => {
                let expect = hmac_tag(&self.auth_key, &aad, payload);
                if xtmp_crypto::ct_eq(&expect, &tag) {
                    Ok(())
                } else {
                    Err(XTMPError::AuthenticationFailed)
                }
            }
        }
    }
}

fn hmac_tag(key: &[u8; 32], aad: &[u8], payload: &[u8]) -> [u8; 16] {
    let full = kdf::hmac_sha256(key, &[aad, payload]);
    let mut t = [0u8; 16];
    t.copy_from_slice(&full[..16]);
    t
}
