//! Fuzz targets for `xtmp-proto` (STYLE.md §25).
//!
//! Every target is a plain `fn run(data: &[u8])` in this library, so the same body runs
//! under libFuzzer (`fuzz_targets/*.rs`, built by `cargo fuzz`) and in the stable replay
//! test (`tests/replay.rs`), which feeds it the committed seed corpus and every crash
//! input kept in `regressions/<target>/`.
//!
//! The targets panic on a broken invariant, never on a mere `Err`:
//!
//! * [`frame_decode`]: header, frame, message, deframer, control payloads, decompression.
//! * [`handshake_server`]: message 1 into a [`xtmp_proto::ServerHandshaker`].
//! * [`handshake_client`]: message 2 / `Retry` into a [`xtmp_proto::ClientHandshake`].
//! * [`session_open`]: frames into an established [`xtmp_proto::Session`].
//!
//! All keys and randomness are fixed ([`fixtures`]), so every input replays exactly.
#![forbid(unsafe_code)]

pub mod fixtures;
pub mod frame_decode;
pub mod handshake_client;
pub mod handshake_server;
pub mod input;
pub mod seeds;
pub mod session_open;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target by its `cargo fuzz` name.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame_decode", frame_decode::run),
    ("handshake_server", handshake_server::run),
    ("handshake_client", handshake_client::run),
    ("session_open", session_open::run),
];
