//! The fixed 96-byte XTMP header and the whole-message type [`XTMPMessage`].
//!
//! Layout (all integers big-endian), normative in `docs/PROTOCOL.md` §2:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `XTMP` |
//! | 4 | 1 | version (1) |
//! | 5 | 1 | message_type |
//! | 6 | 2 | flags |
//! | 8 | 8 | session_id |
//! | 16 | 8 | sequence_number |
//! | 24 | 4 | payload_length |
//! | 28 | 4 | checksum (CRC-32/IEEE of the payload as sent) |
//! | 32 | 1 | encryption_type |
//! | 33 | 7 | reserved, zero |
//! | 40 | 16 | key_id |
//! | 56 | 24 | nonce |
//! | 80 | 16 | auth_tag |

use crate::error::XTMPError;

/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 96;
/// Number of header bytes covered as associated data by the record protection (everything before `auth_tag`).
pub const AAD_LEN: usize = 80;
/// The magic bytes that open every message.
pub const MAGIC: [u8; 4] = *b"XTMP";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Default maximum payload on stream transports (TCP, WebSocket): 16 MiB.
pub const DEFAULT_MAX_STREAM_PAYLOAD: u32 = 16 * 1024 * 1024;
/// Default maximum payload on datagram transports: a 1200-byte datagram minus the header.
pub const DEFAULT_MAX_DATAGRAM_PAYLOAD: u32 = 1200 - HEADER_LEN as u32;

/// A message type code. A newtype over the wire byte, so unknown codes still decode
/// and the receiver decides (it answers with an `Error` message, see `PROTOCOL.md` §3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageType(pub u8);

macro_rules! message_types {
    ($( $(#[$doc:meta])* $name:ident = $code:expr ),* $(,)?) => {
        #[allow(non_upper_case_globals)]
        impl MessageType {
            $( $(#[$doc])* pub const $name: MessageType = MessageType($code); )*

            /// The seed's name for this code, or `None` for an unassigned code.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $code => Some(stringify!($name)), )*
                    _ => None,
                }
            }

            /// Every assigned code, in numeric order.
            pub const ALL: &'static [MessageType] = &[ $( MessageType($code), )* ];
        }
    };
}

message_types! {
    /// Handshake message 1 (client → server).
    Handshake = 0x01,
    /// Handshake message 2 (server → client).
    HandshakeAck = 0x02,
    /// Keep-alive and RTT probe.
    Heartbeat = 0x03,
    /// Orderly close of the session.
    Disconnect = 0x04,
    /// Acknowledgement of a message sent with `REQUIRES_ACK`.
    Ack = 0x05,
    /// Key rotation request (fresh hybrid KEM exchange inside the session).
    KeyUpdate = 0x06,
    /// Key rotation answer.
    KeyUpdateAck = 0x07,
    /// Stateless cookie reply to a `Handshake` (address validation).
    Retry = 0x08,
    /// Generic response correlated to a request by its sequence number.
    Response = 0x09,
    /// Register a wallet.
    WalletRegister = 0x10,
    /// Authenticate as a wallet.
    WalletAuth = 0x11,
    /// Query a wallet balance.
    WalletBalance = 0x12,
    /// Transfer between wallets.
    WalletTransaction = 0x13,
    /// Submit a bundle.
    BundleSubmit = 0x20,
    /// Query a bundle.
    BundleStatus = 0x21,
    /// Confirm a bundle.
    BundleConfirm = 0x22,
    /// Synchronise bundles since a cursor.
    BundleSync = 0x23,
    /// Read a registry entry.
    RegistryQuery = 0x30,
    /// Write a registry entry.
    RegistryUpdate = 0x31,
    /// Timestamp a digest.
    RegistryStamp = 0x32,
    /// Change notifications.
    LiveUpdates = 0x40,
    /// Server events.
    EventStream = 0x41,
    /// Server metrics.
    MetricsStream = 0x42,
    /// QLOCK (named lock) request.
    QLOCKRequest = 0x50,
    /// QLOCK response.
    QLOCKResponse = 0x51,
    /// TLSLS (certificate) request.
    TLSLSRequest = 0x52,
    /// TLSLS response.
    TLSLSResponse = 0x53,
    /// Error report.
    Error = 0xFE,
    /// Explicitly unknown / unclassified.
    Unknown = 0xFF,
}

impl MessageType {
    /// Whether this code is assigned in version 1.
    pub fn is_known(self) -> bool {
        self.name().is_some()
    }

    /// Session-control messages handled by the protocol core itself (never routed to handlers).
    pub fn is_control(self) -> bool {
        matches!(self.0, 0x01..=0x08)
    }
}

impl core::fmt::Debug for MessageType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "MessageType(0x{:02x})", self.0),
        }
    }
}

impl core::fmt::Display for MessageType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

bitflags::bitflags! {
    /// Control flags. `u32` in the API as in the seed; the low 16 bits travel on the wire,
    /// and the bits not defined here are reserved and must be zero.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct XTMPFlags: u32 {
        /// The payload is AEAD-encrypted (`encryption_type` is not `None`).
        const ENCRYPTED = 0x0001;
        /// The receiver acknowledges with an `Ack` once the handler accepted the message.
        const REQUIRES_ACK = 0x0002;
        /// Overtakes queued normal-priority messages.
        const PRIORITY = 0x0004;
        /// Part of a server-push stream.
        const STREAMING = 0x0008;
        /// The plaintext payload is LZ4-compressed (see `PROTOCOL.md` §6).
        const COMPRESSED = 0x0010;
        /// Datagram paths: the payload starts with an 8-byte message id; the message is
        /// retransmitted until the receiver acknowledges it with `DatagramAck`, and the
        /// receiver delivers each message id once (see `PROTOCOL.md` §9.7).
        const RELIABLE = 0x0020;
    }
}

/// Record protection applied to the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EncryptionType {
    /// Integrity only: HMAC-SHA-256 (first 16 bytes) under the key set's `auth_key`.
    None = 0x00,
    /// AES-256-GCM with a 12-byte nonce.
    Aes256Gcm = 0x01,
    /// ChaCha20-Poly1305 with a 12-byte nonce.
    ChaCha20Poly1305 = 0x02,
    /// XAES-256-GCM with the full 24-byte nonce (the default).
    PostQuantum = 0x03,
}

impl EncryptionType {
    /// Decode the wire byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::None),
            1 => Some(Self::Aes256Gcm),
            2 => Some(Self::ChaCha20Poly1305),
            3 => Some(Self::PostQuantum),
            _ => None,
        }
    }

    /// The name used in configuration files (`"PostQuantum"` …).
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Aes256Gcm => "Aes256Gcm",
            Self::ChaCha20Poly1305 => "ChaCha20Poly1305",
            Self::PostQuantum => "PostQuantum",
        }
    }

    /// Parse a configuration name (case-insensitive).
    pub fn from_name(s: &str) -> Option<Self> {
        [
            Self::None,
            Self::Aes256Gcm,
            Self::ChaCha20Poly1305,
            Self::PostQuantum,
        ]
        .into_iter()
        .find(|e| e.name().eq_ignore_ascii_case(s))
    }

    /// Bit used for this type in the handshake's offer bitmap.
    pub fn offer_bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The decoded fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type.
    pub message_type: MessageType,
    /// Flags (only the defined bits can be set after decoding).
    pub flags: XTMPFlags,
    /// Session id (0 before the handshake assigns one).
    pub session_id: u64,
    /// Per-direction sequence number.
    pub sequence_number: u64,
    /// Number of payload bytes that follow the header.
    pub payload_length: u32,
    /// CRC-32 of the payload as sent.
    pub checksum: u32,
    /// Record protection.
    pub encryption_type: EncryptionType,
    /// Identifies session, key generation and direction (`PROTOCOL.md` §5.3).
    pub key_id: [u8; 16],
    /// Nonce field (`PROTOCOL.md` §5.4).
    pub nonce: [u8; 24],
    /// AEAD tag or truncated HMAC.
    pub auth_tag: [u8; 16],
}

impl Header {
    /// Writes the header into `out`.
    pub fn write(&self, out: &mut [u8; HEADER_LEN]) {
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5] = self.message_type.0;
        // Only the low 16 bits go on the wire; the defined flags all fit there.
        out[6..8].copy_from_slice(&((self.flags.bits() & 0xFFFF) as u16).to_be_bytes());
        out[8..16].copy_from_slice(&self.session_id.to_be_bytes());
        out[16..24].copy_from_slice(&self.sequence_number.to_be_bytes());
        out[24..28].copy_from_slice(&self.payload_length.to_be_bytes());
        out[28..32].copy_from_slice(&self.checksum.to_be_bytes());
        out[32] = self.encryption_type as u8;
        out[33..40].fill(0);
        out[40..56].copy_from_slice(&self.key_id);
        out[56..80].copy_from_slice(&self.nonce);
        out[80..96].copy_from_slice(&self.auth_tag);
    }

    /// The header as bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        self.write(&mut b);
        b
    }

    /// Decodes and validates a header, in the order of `PROTOCOL.md` §2.3 steps 1–6
    /// (length, magic, version, reserved bytes, flags, encryption type, payload length
    /// against `max_payload`). Does not look at the payload, so it never allocates.
    ///
    /// # Errors
    /// A distinct [`XTMPError`] per failed check.
    pub fn parse(buf: &[u8], max_payload: u32) -> Result<Header, XTMPError> {
        let Some(h) = buf.get(..HEADER_LEN) else {
            return Err(XTMPError::Truncated {
                needed: HEADER_LEN,
                available: buf.len(),
            });
        };
        if h[0..4] != MAGIC {
            return Err(XTMPError::BadMagic);
        }
        if h[4] != VERSION {
            return Err(XTMPError::UnsupportedVersion(h[4]));
        }
        if h[33..40].iter().any(|&b| b != 0) {
            return Err(XTMPError::ReservedNonZero);
        }
        let raw_flags = u16::from_be_bytes([h[6], h[7]]);
        let flags =
            XTMPFlags::from_bits(u32::from(raw_flags)).ok_or(XTMPError::UnknownFlags(raw_flags))?;
        let encryption_type =
            EncryptionType::from_u8(h[32]).ok_or(XTMPError::UnknownEncryptionType(h[32]))?;
        if flags.contains(XTMPFlags::ENCRYPTED) != (encryption_type != EncryptionType::None) {
            return Err(XTMPError::FlagMismatch);
        }
        let payload_length = u32::from_be_bytes([h[24], h[25], h[26], h[27]]);
        if payload_length > max_payload {
            return Err(XTMPError::PayloadTooLarge {
                length: payload_length,
                max: max_payload,
            });
        }
        let mut key_id = [0u8; 16];
        key_id.copy_from_slice(&h[40..56]);
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&h[56..80]);
        let mut auth_tag = [0u8; 16];
        auth_tag.copy_from_slice(&h[80..96]);
        Ok(Header {
            message_type: MessageType(h[5]),
            flags,
            session_id: u64::from_be_bytes(be8(&h[8..16])),
            sequence_number: u64::from_be_bytes(be8(&h[16..24])),
            payload_length,
            checksum: u32::from_be_bytes([h[28], h[29], h[30], h[31]]),
            encryption_type,
            key_id,
            nonce,
            auth_tag,
        })
    }

    /// Total frame length (header plus payload).
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload_length as usize
    }
}

fn be8(s: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    a
}

/// CRC-32 (IEEE 802.3 / zlib polynomial, reflected, init and xorout `0xFFFFFFFF`).
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Validates a complete frame: the header checks, then that the payload is all there
/// (and nothing follows it: `buf` must be exactly one frame), then the CRC-32.
///
/// # Errors
/// A distinct [`XTMPError`] per failed check, in the documented order.
pub fn parse_frame(buf: &[u8], max_payload: u32) -> Result<(Header, &[u8]), XTMPError> {
    let header = Header::parse(buf, max_payload)?;
    let payload = &buf[HEADER_LEN..];
    let len = header.payload_length as usize;
    if payload.len() < len {
        return Err(XTMPError::Truncated {
            needed: HEADER_LEN + len,
            available: buf.len(),
        });
    }
    if payload.len() > len {
        return Err(XTMPError::TrailingBytes(payload.len() - len));
    }
    let actual = crc32(payload);
    if actual != header.checksum {
        return Err(XTMPError::ChecksumMismatch {
            expected: header.checksum,
            actual,
        });
    }
    Ok((header, payload))
}

/// A whole XTMP message as in the seed: header fields plus an owned payload.
///
/// This is the convenient, allocating representation (for tools, tests and the
/// control plane). The hot path uses [`Header`] with borrowed buffers instead.
#[derive(Clone, PartialEq, Eq)]
pub struct XTMPMessage {
    /// `XTMP`.
    pub magic: [u8; 4],
    /// Protocol version.
    pub version: u8,
    /// Message classification.
    pub message_type: MessageType,
    /// Control flags.
    pub flags: XTMPFlags,
    /// Session identifier.
    pub session_id: u64,
    /// Message sequence.
    pub sequence_number: u64,
    /// Payload size in bytes.
    pub payload_length: u32,
    /// CRC-32 checksum of the payload.
    pub checksum: u32,
    /// Record protection.
    pub encryption_type: EncryptionType,
    /// Current key identifier.
    pub key_id: [u8; 16],
    /// Encryption nonce.
    pub nonce: [u8; 24],
    /// Authentication tag.
    pub auth_tag: [u8; 16],
    /// Payload bytes as sent (ciphertext when encrypted).
    pub payload: Vec<u8>,
}

impl core::fmt::Debug for XTMPMessage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("XTMPMessage")
            .field("message_type", &self.message_type)
            .field("flags", &self.flags)
            .field("session_id", &self.session_id)
            .field("sequence_number", &self.sequence_number)
            .field("payload_length", &self.payload_length)
            .field("checksum", &format_args!("{:08x}", self.checksum))
            .field("encryption_type", &self.encryption_type)
            .finish_non_exhaustive()
    }
}

impl XTMPMessage {
    /// The seed's constructor: computes the CRC-32, defaults to `PostQuantum` with zero
    /// key id, nonce and tag (a [`crate::Session`] fills those in when it seals).
    /// Unlike the seed, `flags` starts as `ENCRYPTED`, because the flag must agree with
    /// the `PostQuantum` default (validation rule 6 of `PROTOCOL.md` §2.3).
    ///
    /// A payload longer than `u32::MAX` bytes cannot be represented; its length saturates
    /// and [`XTMPMessage::encode`] then fails. Use [`XTMPMessage::try_new`] to get the error early.
    pub fn new(
        message_type: MessageType,
        session_id: u64,
        sequence_number: u64,
        payload: Vec<u8>,
    ) -> Self {
        let checksum = crc32(&payload);
        Self {
            magic: MAGIC,
            version: VERSION,
            message_type,
            flags: XTMPFlags::ENCRYPTED,
            session_id,
            sequence_number,
            payload_length: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            checksum,
            encryption_type: EncryptionType::PostQuantum,
            key_id: [0u8; 16],
            nonce: [0u8; 24],
            auth_tag: [0u8; 16],
            payload,
        }
    }

    /// Like [`XTMPMessage::new`] but refuses a payload that does not fit a `u32` length.
    ///
    /// # Errors
    /// [`XTMPError::PayloadTooLarge`].
    pub fn try_new(
        message_type: MessageType,
        session_id: u64,
        sequence_number: u64,
        payload: Vec<u8>,
    ) -> Result<Self, XTMPError> {
        if u32::try_from(payload.len()).is_err() {
            return Err(XTMPError::PayloadTooLarge {
                length: u32::MAX,
                max: u32::MAX,
            });
        }
        Ok(Self::new(
            message_type,
            session_id,
            sequence_number,
            payload,
        ))
    }

    /// The header fields of this message.
    pub fn header(&self) -> Header {
        Header {
            message_type: self.message_type,
            flags: self.flags,
            session_id: self.session_id,
            sequence_number: self.sequence_number,
            payload_length: self.payload_length,
            checksum: self.checksum,
            encryption_type: self.encryption_type,
            key_id: self.key_id,
            nonce: self.nonce,
            auth_tag: self.auth_tag,
        }
    }

    /// Serialises header and payload.
    ///
    /// # Errors
    /// [`XTMPError::InvalidMessage`] if `payload_length` or `checksum` disagree with the payload.
    pub fn encode(&self) -> Result<Vec<u8>, XTMPError> {
        if self.payload_length as usize != self.payload.len() {
            return Err(XTMPError::InvalidMessage(
                "payload_length does not match the payload".into(),
            ));
        }
        if self.checksum != crc32(&self.payload) {
            return Err(XTMPError::InvalidMessage(
                "checksum does not match the payload".into(),
            ));
        }
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&self.header().to_bytes());
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

    /// Decodes and validates exactly one frame (see [`parse_frame`]).
    ///
    /// # Errors
    /// As [`parse_frame`].
    pub fn decode(buf: &[u8], max_payload: u32) -> Result<Self, XTMPError> {
        let (h, payload) = parse_frame(buf, max_payload)?;
        Ok(Self {
            magic: MAGIC,
            version: VERSION,
            message_type: h.message_type,
            flags: h.flags,
            session_id: h.session_id,
            sequence_number: h.sequence_number,
            payload_length: h.payload_length,
            checksum: h.checksum,
            encryption_type: h.encryption_type,
            key_id: h.key_id,
            nonce: h.nonce,
            auth_tag: h.auth_tag,
            payload: payload.to_vec(),
        })
    }
}
