//! # xtmp-proto — the sans-IO core of XTMP
//!
//! XTMP is a post-quantum message transport. This crate is its protocol core: it never
//! touches sockets, never reads a clock and never draws ambient randomness. Time
//! (`Instant`, and wall-clock nanoseconds for the handshake timestamp) and a
//! [`SecureRandom`] are passed in; frames go in and out as byte buffers. The `xtmp`
//! runtime crate drives it over TCP, UDP and WebSocket.
//!
//! * [`header`] — the fixed 96-byte header, [`MessageType`], [`XTMPFlags`],
//!   [`EncryptionType`], CRC-32, and the validation order.
//! * [`handshake`] — the hybrid X-Wing (ML-KEM-768 + X25519) handshake, PQ-Noise
//!   `pqNK`/`pqIK` shaped, with a stateless cookie step.
//! * [`session`] — record protection with the four encryption types, sequence numbers,
//!   replay protection, key rotation, heartbeats.
//! * [`deframe`] — finding frame boundaries in a byte stream.
//! * [`datagram`] — walking and packing datagrams, handshake fragments, and the
//!   acknowledgement/retransmission bookkeeping of `RELIABLE` messages on datagram paths.
//!
//! The normative description is `docs/PROTOCOL.md`; test vectors are in
//! `docs/test-vectors/`.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use xtmp_proto::*;
//! use xtmp_crypto::xwing::XWingSecretKey;
//!
//! let mut rng = InsecureDeterministicRngForTestingOnly::new([7; 32]);
//! let server_key = Arc::new(XWingSecretKey::from_seed(&[1; 32]));
//! let mut server = ServerHandshaker::new(ServerConfig::new(server_key.clone()));
//! let now = Instant::now();
//!
//! let (mut client, msg1) =
//!     ClientHandshake::start(ClientConfig::new(server_key.public_key().clone()), 1, &mut rng)?;
//! let ServerOutcome::Accepted { ack, session: mut s, .. } =
//!     server.handle(now, b"127.0.0.1:5000", false, &msg1, &mut rng)? else { unreachable!() };
//! let ClientOutcome::Established(mut c) = client.handle(now, &ack)? else { unreachable!() };
//!
//! let mut frame = Vec::new();
//! c.seal(MessageType::WalletBalance, XTMPFlags::empty(), b"{\"wallet\":\"abc\"}", &mut frame)?;
//! match s.open(now, &mut frame, &mut rng)? {
//!     Received::Message { header, payload } => {
//!         assert_eq!(header.message_type, MessageType::WalletBalance);
//!         assert_eq!(&payload[..], b"{\"wallet\":\"abc\"}");
//!     }
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), XTMPError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod compress;
pub mod control;
pub mod datagram;
pub mod deframe;
pub mod error;
pub mod handshake;
pub mod header;
pub mod keys;
pub mod replay;
pub mod rng;
pub mod session;

pub use error::{ErrorCode, HandshakeFailure, XTMPError};
pub use handshake::{
    fingerprint, ClientConfig, ClientHandshake, ClientOutcome, Pattern, ServerConfig,
    ServerHandshaker, ServerOutcome,
};
pub use header::{
    crc32, parse_frame, EncryptionType, Header, MessageType, XTMPFlags, XTMPMessage,
    DEFAULT_MAX_DATAGRAM_PAYLOAD, DEFAULT_MAX_STREAM_PAYLOAD, HEADER_LEN,
};
pub use keys::{Direction, Side, XTMPKeySet};
pub use rng::{InsecureDeterministicRngForTestingOnly, SecureRandom};
pub use session::{
    PathId, Received, ReplayMode, RttEstimator, Session, SessionConfig, SessionStats,
};
pub use xtmp_crypto;
