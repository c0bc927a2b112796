//! Errors of the protocol core and the wire error codes they map to.

/// Everything that can go wrong in the protocol core.
///
/// The first five variants are the seed's; the rest are the specific failures the
/// core distinguishes. Each maps to a wire [`ErrorCode`] through [`XTMPError::code`];
/// only the code (never the detail) is meant for the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum XTMPError {
    /// The seed's connection failure.
    #[error("Connection failed: {0}")]
    ConnectionFailed(String),
    /// The seed's generic malformed message.
    #[error("Invalid message format: {0}")]
    InvalidMessage(String),
    /// The seed's generic encryption failure (local, e.g. a crypto backend fault).
    #[error("Encryption error: {0}")]
    EncryptionError(String),
    /// The seed's unknown session.
    #[error("Session not found: {0}")]
    SessionNotFound(u64),
    /// The seed's network failure.
    #[error("Network error: {0}")]
    NetworkError(String),

    // ---- framing (peer's fault), in validation order ----
    /// Fewer bytes than the frame needs.
    #[error("truncated frame: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The first four bytes are not `XTMP`.
    #[error("bad magic")]
    BadMagic,
    /// A version this implementation does not speak.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// Header bytes 33..40 are not zero.
    #[error("reserved header bytes are not zero")]
    ReservedNonZero,
    /// A reserved flag bit is set.
    #[error("unknown flag bits 0x{0:04x}")]
    UnknownFlags(u16),
    /// The encryption type byte is not assigned.
    #[error("unknown encryption type 0x{0:02x}")]
    UnknownEncryptionType(u8),
    /// `ENCRYPTED` disagrees with `encryption_type`.
    #[error("ENCRYPTED flag disagrees with the encryption type")]
    FlagMismatch,
    /// `payload_length` exceeds the configured maximum.
    #[error("payload of {length} bytes exceeds the maximum of {max}")]
    PayloadTooLarge {
        /// Declared length.
        length: u32,
        /// Configured maximum.
        max: u32,
    },
    /// Bytes after the declared payload in a buffer meant to hold exactly one frame.
    #[error("{0} trailing bytes after the frame")]
    TrailingBytes(usize),
    /// The CRC-32 does not match the payload.
    #[error("checksum mismatch: header 0x{expected:08x}, payload 0x{actual:08x}")]
    ChecksumMismatch {
        /// Checksum in the header.
        expected: u32,
        /// Checksum of the received payload.
        actual: u32,
    },

    // ---- record layer (peer's fault) ----
    /// The frame names a different session.
    #[error("wrong session id {got:016x}")]
    WrongSession {
        /// Session id in the frame.
        got: u64,
    },
    /// The frame's encryption type is not the one negotiated for the session.
    #[error("encryption type {0:?} not negotiated for this session")]
    EncryptionNotPermitted(crate::EncryptionType),
    /// The key id names no key generation this side holds.
    #[error("unknown key id")]
    UnknownKeyId,
    /// The nonce field is not the one the sequence number and key imply.
    #[error("nonce does not match the sequence number")]
    NonceMismatch,
    /// A sequence number already received (replay or duplicate).
    #[error("replayed sequence number {0}")]
    Replay(u64),
    /// A sequence number too far behind the replay window.
    #[error("sequence number {0} is behind the replay window")]
    TooOld(u64),
    /// On an ordered transport, a sequence number other than the next one.
    #[error("out-of-order sequence number: expected {expected}, got {got}")]
    OutOfOrder {
        /// The next expected number.
        expected: u64,
        /// The number received.
        got: u64,
    },
    /// AEAD or HMAC verification failed.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// A compressed payload that does not decompress.
    #[error("decompression failed")]
    DecompressionFailed,
    /// A compressed payload whose declared size exceeds the limit.
    #[error("decompressed size {size} exceeds the maximum {max}")]
    DecompressedTooLarge {
        /// Declared size.
        size: u32,
        /// Limit.
        max: u32,
    },
    /// A message type not allowed in the current state (e.g. application data before the handshake).
    #[error("unexpected message {0:?} in this state")]
    UnexpectedMessage(crate::MessageType),
    /// A control message whose payload is malformed.
    #[error("malformed {0:?} payload")]
    MalformedPayload(crate::MessageType),

    // ---- handshake ----
    /// A handshake failed; the detail is for logs only.
    #[error("handshake failed: {0}")]
    Handshake(HandshakeFailure),

    // ---- local (caller's fault or limits) ----
    /// The send key reached its hard usage limit before a rotation completed.
    #[error("key usage limit reached; rotation required")]
    KeyExhausted,
    /// Too many authentication failures on a datagram session (integrity limit).
    #[error("integrity limit exceeded")]
    IntegrityLimit,
    /// The session was closed; every later call returns this.
    #[error("session closed")]
    Closed,
    /// The output buffer passed by the caller is too small.
    #[error("buffer too small: need {0} bytes")]
    BufferTooSmall(usize),
}

/// Why a handshake failed. Logged locally; the peer only gets `HandshakeFailed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// Message has the wrong length or layout.
    #[error("malformed handshake message")]
    Malformed,
    /// Handshake version not supported.
    #[error("unsupported handshake version")]
    UnsupportedVersion,
    /// The pattern (NK/IK) is not the one this side allows.
    #[error("pattern not allowed")]
    PatternNotAllowed,
    /// No encryption type in common.
    #[error("no common encryption type")]
    NoCommonEncryption,
    /// An AEAD inside the handshake failed (wrong server key, tampering, downgrade).
    #[error("handshake decryption failed")]
    DecryptFailed,
    /// A public key in the handshake is invalid.
    #[error("invalid public key")]
    InvalidKey,
    /// The client's static key is not authorized.
    #[error("client key not authorized")]
    Unauthorized,
    /// The server requires client authentication but the client sent none.
    #[error("client authentication required")]
    AuthenticationRequired,
    /// A replayed message 1 (timestamp not newer than the last one for this client key).
    #[error("replayed handshake (stale timestamp)")]
    Replayed,
    /// The cookie is missing, stale or wrong.
    #[error("cookie required or invalid")]
    BadCookie,
    /// Too many retries.
    #[error("too many retries")]
    TooManyRetries,
    /// The acknowledgement does not match what this client sent.
    #[error("unexpected handshake answer")]
    Unexpected,
}

/// Wire error codes carried by `Error` (0xFE) and `Disconnect` messages (`PROTOCOL.md` §8).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(pub u16);

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $code:expr ),* $(,)?) => {
        impl ErrorCode {
            $( $(#[$doc])* pub const $name: ErrorCode = ErrorCode($code); )*
            /// The registered name, if any.
            pub fn name(self) -> Option<&'static str> {
                match self.0 { $( $code => Some(stringify!($name)), )* _ => None }
            }
            /// Every registered code.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode($code), )* ];
        }
    };
}

error_codes! {
    /// No error (normal `Disconnect`).
    NO_ERROR = 0x0000,
    /// Bad magic, version, reserved bytes, flags or encryption type; trailing bytes.
    MALFORMED_FRAME = 0x0001,
    /// `payload_length` above the limit.
    PAYLOAD_TOO_LARGE = 0x0002,
    /// CRC-32 mismatch.
    CHECKSUM_MISMATCH = 0x0003,
    /// AEAD/HMAC failure, wrong key id or nonce.
    AUTHENTICATION_FAILED = 0x0004,
    /// Replayed, too old or out-of-order sequence number.
    REPLAY = 0x0005,
    /// Unknown session id.
    UNKNOWN_SESSION = 0x0006,
    /// The handshake failed (no detail is given).
    HANDSHAKE_FAILED = 0x0007,
    /// The request needs an identity this session does not have.
    UNAUTHORIZED = 0x0008,
    /// A message type the receiver does not know.
    UNKNOWN_MESSAGE_TYPE = 0x0009,
    /// A known type that this session may not send (or not in this state).
    NOT_PERMITTED = 0x000A,
    /// Rate limit hit (e.g. handshakes from one address).
    RATE_LIMITED = 0x000B,
    /// The server is at `max_connections`.
    SERVER_BUSY = 0x000C,
    /// A timeout (idle session, stalled peer, request deadline).
    TIMEOUT = 0x000D,
    /// The application handler failed.
    HANDLER_ERROR = 0x000E,
    /// Decompression failed or exceeded its bound.
    DECOMPRESSION_FAILED = 0x000F,
    /// A control message with a malformed payload, or a message unexpected in this state.
    PROTOCOL_VIOLATION = 0x0010,
    /// Protocol version not supported.
    UNSUPPORTED_VERSION = 0x0011,
    /// Internal error on the sender.
    INTERNAL = 0x0012,
    /// Encryption type not negotiated / not permitted by configuration.
    ENCRYPTION_NOT_PERMITTED = 0x0013,
    /// The sender is shutting down.
    SHUTTING_DOWN = 0x0014,
    /// A queue limit was hit and the message was refused.
    OVERLOADED = 0x0015,
    /// Message too large for this transport (e.g. a datagram).
    MESSAGE_TOO_LARGE = 0x0016,
    /// The request's payload could not be parsed or is invalid for its type.
    BAD_REQUEST = 0x0017,
}

impl core::fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "ErrorCode(0x{:04x})", self.0),
        }
    }
}

impl XTMPError {
    /// The wire code for this error.
    pub fn code(&self) -> ErrorCode {
        use XTMPError as E;
        match self {
            E::Truncated { .. }
            | E::BadMagic
            | E::ReservedNonZero
            | E::UnknownFlags(_)
            | E::UnknownEncryptionType(_)
            | E::FlagMismatch
            | E::TrailingBytes(_)
            | E::InvalidMessage(_) => ErrorCode::MALFORMED_FRAME,
            E::UnsupportedVersion(_) => ErrorCode::UNSUPPORTED_VERSION,
            E::PayloadTooLarge { .. } => ErrorCode::PAYLOAD_TOO_LARGE,
            E::ChecksumMismatch { .. } => ErrorCode::CHECKSUM_MISMATCH,
            E::WrongSession { .. } | E::SessionNotFound(_) => ErrorCode::UNKNOWN_SESSION,
            E::EncryptionNotPermitted(_) => ErrorCode::ENCRYPTION_NOT_PERMITTED,
            E::UnknownKeyId | E::NonceMismatch | E::AuthenticationFailed | E::IntegrityLimit => {
                ErrorCode::AUTHENTICATION_FAILED
            }
            E::Replay(_) | E::TooOld(_) | E::OutOfOrder { .. } => ErrorCode::REPLAY,
            E::DecompressionFailed | E::DecompressedTooLarge { .. } => {
                ErrorCode::DECOMPRESSION_FAILED
            }
            E::UnexpectedMessage(_) | E::MalformedPayload(_) => ErrorCode::PROTOCOL_VIOLATION,
            E::Handshake(HandshakeFailure::Unauthorized)
            | E::Handshake(HandshakeFailure::AuthenticationRequired) => ErrorCode::UNAUTHORIZED,
            E::Handshake(_) => ErrorCode::HANDSHAKE_FAILED,
            E::Closed => ErrorCode::NO_ERROR,
            E::ConnectionFailed(_)
            | E::EncryptionError(_)
            | E::NetworkError(_)
            | E::KeyExhausted
            | E::BufferTooSmall(_) => ErrorCode::INTERNAL,
        }
    }

    /// Whether the error was caused by what the peer sent (as opposed to local limits or I/O).
    pub fn is_peer_fault(&self) -> bool {
        !matches!(
            self,
            XTMPError::ConnectionFailed(_)
                | XTMPError::EncryptionError(_)
                | XTMPError::NetworkError(_)
                | XTMPError::KeyExhausted
                | XTMPError::Closed
                | XTMPError::BufferTooSmall(_)
        )
    }
}

impl From<HandshakeFailure> for XTMPError {
    fn from(f: HandshakeFailure) -> Self {
        XTMPError::Handshake(f)
    }
}
