//! The seed corpus: valid frames and handshake messages in each target's input format.
//!
//! `cargo run --example write_seeds` writes them to `corpus/<target>/seed-<name>`; the
//! replay test checks the committed files are current.

use xtmp_proto::compress;
use xtmp_proto::control::{encode_ack, DisconnectPayload, ErrorPayload};
use xtmp_proto::header::HEADER_LEN;
use xtmp_proto::{ErrorCode, Header};

use crate::fixtures::{self, ENCRYPTION_TYPES};

/// A named seed.
pub type Seed = (String, Vec<u8>);

/// The seeds of `target` (empty for an unknown name).
pub fn seeds(target: &str) -> Vec<Seed> {
    match target {
        "frame_decode" => frame_decode(),
        "handshake_server" => handshake_server(),
        "handshake_client" => handshake_client(),
        "session_open" => session_open(),
        _ => Vec::new(),
    }
}

fn seed(name: impl Into<String>, parts: &[&[u8]]) -> Seed {
    (name.into(), parts.concat())
}

/// A control byte `b` with `b % modulus == mode` and bit 7 set as asked.
fn ctl(modulus: u8, mode: u8, high_bit: bool) -> u8 {
    let start = if high_bit { 0x80 } else { 0 };
    (start..=start + 0x7f)
        .find(|b| b % modulus == mode)
        .unwrap_or(mode)
}

fn frame_decode() -> Vec<Seed> {
    let fx = fixtures::handshake();
    let pq = &fixtures::world(xtmp_proto::EncryptionType::PostQuantum).to_server;
    let plain = &fixtures::world(xtmp_proto::EncryptionType::None).to_server;
    let stream: Vec<u8> = plain.iter().flat_map(|g| g.frame.clone()).collect();
    let lz4 =
        compress::compress(&b"wallet balance update; ".repeat(40), 1 << 20).unwrap_or_default();
    let error = ErrorPayload {
        code: ErrorCode::UNKNOWN_MESSAGE_TYPE,
        request_seq: 42,
        reason: "no handler for 0x77".into(),
    }
    .encode();
    let disconnect = DisconnectPayload {
        code: ErrorCode::SHUTTING_DOWN,
        reason: "bye".into(),
    }
    .encode();
    // A header announcing more payload than follows: the deframer waits for it.
    let mut waiting = Header::parse(&pq[0].frame, u32::MAX)
        .map(|h| h.to_bytes().to_vec())
        .unwrap_or_default();
    waiting.extend_from_slice(&pq[0].frame[HEADER_LEN..HEADER_LEN + 4]);
    vec![
        // ctl: top two bits the payload limit, low three the deframer chunking.
        seed("app-frame", &[&[0x47], &pq[0].frame]),
        seed("compressed-frame", &[&[0x43], &pq[1].frame]),
        seed("hmac-frame", &[&[0x45], &plain[0].frame]),
        seed("key-update-frame", &[&[0x46], &pq[6].frame]),
        seed("stream", &[&[0x82], &stream]),
        seed(
            "stream-bytewise",
            &[&[0x40], &stream[..600.min(stream.len())]],
        ),
        seed("stream-datagram-limit", &[&[0x03], &stream]),
        seed("message1", &[&[0xC4], &fx.msg1_nk]),
        seed("ack", &[&[0xC5], &fx.ack_nk]),
        seed("retry", &[&[0x01], &fx.retry]),
        seed("partial-frame", &[&[0x41], &waiting]),
        seed("lz4", &[&[0x00], &lz4]),
        seed("error-payload", &[&[0x00], &error]),
        seed("disconnect-payload", &[&[0x00], &disconnect]),
        seed("ack-payload", &[&[0x00], &encode_ack(7)]),
    ]
}

fn handshake_server() -> Vec<Seed> {
    let fx = fixtures::handshake();
    let last = |m: &[u8]| u16::try_from(m.len() - 1).unwrap_or(0).to_be_bytes();
    let nk_ts = last(&fx.msg1_nk);
    let cookie_end = last(&fx.msg1_nk_cookie);
    let ik_ts = last(&fx.msg1_ik);
    let prefix = u16::try_from(HEADER_LEN + 3).unwrap_or(0).to_be_bytes();
    vec![
        // Modes 0-2: the input is message 1.
        seed("raw-nk", &[&[0], &fx.msg1_nk]),
        seed("raw-nk-cookie-required", &[&[1], &fx.msg1_nk]),
        seed("raw-nk-with-cookie", &[&[1], &fx.msg1_nk_cookie]),
        seed("raw-ik", &[&[2], &fx.msg1_ik]),
        seed("raw-ik-cookie-required", &[&[2 | 0x40], &fx.msg1_ik]),
        // Modes 3-5: offset, then XOR mask over the genuine message 1.
        seed("mutate-nk-none", &[&[3]]),
        seed("mutate-nk-offer", &[&[ctl(6, 3, true)], &prefix, &[0x02]]),
        seed("mutate-nk-tag", &[&[ctl(6, 3, true)], &nk_ts, &[0x80]]),
        seed("mutate-ik-none", &[&[4]]),
        seed("mutate-ik-tag", &[&[ctl(6, 4, true)], &ik_ts, &[0x01]]),
        seed("mutate-cookie-none", &[&[5]]),
        seed("mutate-cookie", &[&[ctl(6, 5, true)], &cookie_end, &[0x01]]),
    ]
}

fn handshake_client() -> Vec<Seed> {
    let fx = fixtures::handshake();
    let last = |m: &[u8]| u16::try_from(m.len() - 1).unwrap_or(0).to_be_bytes();
    let session_id = u16::try_from(8).unwrap_or(0).to_be_bytes();
    vec![
        // ctl % 4: mode; (ctl >> 2) % 3: extra repetitions.
        seed("raw-ack", &[&[0], &fx.ack_nk]),
        seed("raw-retry", &[&[0], &fx.retry]),
        seed("raw-retry-thrice", &[&[8], &fx.retry]),
        seed("mutate-ack-nk-none", &[&[1]]),
        seed("mutate-ack-nk-tag", &[&[1], &last(&fx.ack_nk), &[0x01]]),
        seed("mutate-ack-nk-session-id", &[&[1], &session_id, &[0x01]]),
        seed("mutate-ack-ik-none", &[&[2]]),
        seed("mutate-ack-ik-tag", &[&[2], &last(&fx.ack_ik), &[0x01]]),
        seed("mutate-retry-none", &[&[3]]),
        seed("mutate-retry-thrice", &[&[3 | 8]]),
        seed("mutate-retry-cookie", &[&[3], &last(&fx.retry), &[0xff]]),
    ]
}

fn session_open() -> Vec<Seed> {
    let mut out = Vec::new();
    for (e, enc) in ENCRYPTION_TYPES.iter().enumerate() {
        let world = fixtures::world(*enc);
        for (s, side) in ["server", "client"].iter().enumerate() {
            let n = if s == 0 {
                world.to_server.len()
            } else {
                world.to_client.len()
            };
            let n = u8::try_from(n).unwrap_or(u8::MAX);
            let base = u8::try_from(e | s << 2).unwrap_or(0);
            let name = format!("{}-{side}", enc.name().to_ascii_lowercase());
            // Every genuine frame in order.
            let in_order: Vec<u8> = (0..n).flat_map(|i| [0, i]).collect();
            out.push(seed(format!("{name}-in-order"), &[&[base], &in_order]));
            // Window mode, newest first.
            let reversed: Vec<u8> = (0..n).rev().flat_map(|i| [0, i]).collect();
            out.push(seed(
                format!("{name}-window-reversed"),
                &[&[base | 8], &reversed],
            ));
            // A bit flipped in the payload of frame 0, then frame 0 itself; then the last
            // frame's tag flipped.
            out.push(seed(
                format!("{name}-mutated"),
                &[&[base, 1, 0, 0, 96, 1, 0x01, 0, 0, 1, n - 1, 0, 80, 1, 0x80]],
            ));
        }
    }
    // Arbitrary bytes: a genuine frame given as raw input, then a mode switch and a replay.
    let pq = &fixtures::world(xtmp_proto::EncryptionType::PostQuantum).to_server;
    let len = u16::try_from(pq[0].frame.len()).unwrap_or(0).to_be_bytes();
    out.push(seed(
        "postquantum-server-raw-then-replay",
        &[&[3, 2], &len, &pq[0].frame, &[3, 0, 0, 0, 1]],
    ));
    out
}
