//! `frame_decode`: every decoder of untrusted bytes that needs no keys.
//!
//! Input: one control byte, then the bytes under test (`body`). The control byte picks
//! the payload limit (top two bits) and the chunking of the stream deframer.
//!
//! Invariants checked beyond "no panic":
//! * [`Header::parse`] only depends on the limit through `PayloadTooLarge`, and a parsed
//!   header re-serializes to exactly the 96 bytes it came from.
//! * [`parse_frame`] / [`XTMPMessage::decode`] agree with each other and with the header,
//!   the payload is all of the rest of the buffer, `payload.len() == payload_length`, the
//!   CRC matches, and `encode()` gives back the input.
//! * [`deframe::frame_len`] agrees with the header, and a [`Deframer`] fed the body in
//!   chunks returns exactly the frames (and the error) it returns when fed all at once;
//!   its error is sticky and the frames concatenate to a prefix of the stream.
//! * `Error` / `Disconnect` / `Ack` / response payloads round-trip.
//! * [`compress::decompress`] never returns more than the declared size or the limit,
//!   and `compress` output always decompresses to its input.

use xtmp_proto::compress;
use xtmp_proto::control::{self, DisconnectPayload, ErrorPayload};
use xtmp_proto::deframe::{self, Deframer};
use xtmp_proto::header::{
    DEFAULT_MAX_DATAGRAM_PAYLOAD, DEFAULT_MAX_STREAM_PAYLOAD, HEADER_LEN, MAGIC,
};
use xtmp_proto::{
    crc32, parse_frame, EncryptionType, Header, MessageType, XTMPError, XTMPFlags, XTMPMessage,
};

/// Largest decompressed size the target allows (1 MiB).
pub const MAX_DECOMPRESSED: u32 = 1 << 20;

/// The payload limit selected by the control byte's top two bits.
pub fn max_payload(ctl: u8) -> u32 {
    match ctl >> 6 {
        0 => DEFAULT_MAX_DATAGRAM_PAYLOAD,
        1 => 1 << 20,
        2 => DEFAULT_MAX_STREAM_PAYLOAD,
        _ => u32::MAX,
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&ctl, body)) = data.split_first() else {
        return;
    };
    let max = max_payload(ctl);
    header_and_frame(body, max);
    deframer(ctl, body, max);
    control_payloads(body);
    compression(body);
}

fn header_and_frame(body: &[u8], max: u32) {
    let header = Header::parse(body, max);
    let unbounded = Header::parse(body, u32::MAX);
    match (&header, &unbounded) {
        (Ok(h), Ok(u)) => assert_eq!(h, u),
        (Err(XTMPError::PayloadTooLarge { length, max: m }), Ok(u)) => {
            assert_eq!(*m, max);
            assert_eq!(*length, u.payload_length);
            assert!(*length > max);
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "the limit changed a header error"),
        (h, u) => panic!("the limit changed more than PayloadTooLarge: {h:?} vs {u:?}"),
    }
    if let Ok(h) = &header {
        assert!(h.payload_length <= max);
        assert_eq!(
            h.to_bytes()[..],
            body[..HEADER_LEN],
            "a parsed header does not re-serialize to its bytes"
        );
        assert_eq!(h.frame_len(), HEADER_LEN + h.payload_length as usize);
        assert_eq!(h.flags.bits() & !XTMPFlags::all().bits(), 0);
        assert_eq!(
            h.flags.contains(XTMPFlags::ENCRYPTED),
            h.encryption_type != EncryptionType::None
        );
    }

    let frame = parse_frame(body, max);
    match (&frame, &header) {
        (Ok((fh, payload)), Ok(h)) => {
            assert_eq!(fh, h);
            assert_eq!(payload.len(), h.payload_length as usize);
            assert_eq!(
                body.len(),
                h.frame_len(),
                "a frame with trailing bytes parsed"
            );
            assert_eq!(*payload, &body[HEADER_LEN..]);
            assert_eq!(crc32(payload), h.checksum);
        }
        (Ok(_), Err(e)) => {
            panic!("parse_frame accepted a header that Header::parse refused: {e:?}")
        }
        (Err(e), Err(he)) => assert_eq!(e, he, "parse_frame and Header::parse disagree"),
        (Err(e), Ok(_)) => assert!(
            matches!(
                e,
                XTMPError::Truncated { .. }
                    | XTMPError::TrailingBytes(_)
                    | XTMPError::ChecksumMismatch { .. }
            ),
            "unexpected frame error after a valid header: {e:?}"
        ),
    }

    let message = XTMPMessage::decode(body, max);
    match (&message, &frame) {
        (Ok(m), Ok((h, payload))) => {
            assert_eq!(m.header(), *h);
            assert_eq!(&m.payload[..], *payload);
            assert_eq!(m.payload_length as usize, m.payload.len());
            match m.encode() {
                Ok(bytes) => assert_eq!(bytes, body, "decode/encode is not the identity"),
                Err(e) => panic!("a decoded message does not re-encode: {e:?}"),
            }
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (m, f) => panic!("XTMPMessage::decode and parse_frame disagree: {m:?} vs {f:?}"),
    }

    match deframe::frame_len(body, max) {
        Ok(Some(n)) => {
            let Ok(h) = &header else {
                panic!("frame_len found a frame in a refused header: {header:?}")
            };
            assert_eq!(n, h.frame_len());
            assert!(n <= body.len());
        }
        Ok(None) => match &header {
            Ok(h) => assert!(body.len() < h.frame_len()),
            Err(e) => {
                assert!(
                    body.len() < HEADER_LEN,
                    "frame_len waits on a bad header: {e:?}"
                );
                let n = body.len().min(4);
                assert_eq!(body[..n], MAGIC[..n]);
            }
        },
        Err(e) => {
            if body.len() >= HEADER_LEN {
                assert_eq!(Err(e), header);
            } else {
                assert_eq!(e, XTMPError::BadMagic);
            }
        }
    }
}

/// Everything a deframer produced from a stream.
#[derive(Debug, PartialEq, Eq)]
struct Deframed {
    frames: Vec<Vec<u8>>,
    error: Option<XTMPError>,
    buffered: usize,
}

fn drain(d: &mut Deframer, frames: &mut Vec<Vec<u8>>) -> Option<XTMPError> {
    loop {
        match d.next_frame() {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    }
}

/// Chunk lengths for the deframer: a small LCG seeded by the control byte, with an upper
/// bound picked by its low three bits (1 byte at a time up to everything at once).
fn chunks(ctl: u8, len: usize) -> Vec<usize> {
    const LIMITS: [usize; 8] = [1, 3, 16, 95, 97, 256, 1500, usize::MAX];
    let limit = LIMITS[usize::from(ctl & 7)];
    let mut state = u32::from(ctl) | 0x5eed_0000;
    let mut out = Vec::new();
    let mut left = len;
    while left > 0 {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = if limit == usize::MAX {
            left
        } else {
            1 + (state >> 8) as usize % limit.min(left)
        };
        out.push(n);
        left -= n;
    }
    out
}

fn deframer(ctl: u8, body: &[u8], max: u32) {
    // All at once.
    let mut whole = Deframer::new(max);
    whole.push(body);
    let mut frames = Vec::new();
    let error = drain(&mut whole, &mut frames);
    let at_once = Deframed {
        frames,
        error,
        buffered: whole.buffered(),
    };

    // In chunks.
    let mut d = Deframer::new(max);
    let mut frames = Vec::new();
    let mut error: Option<XTMPError> = None;
    let mut at = 0;
    for n in chunks(ctl, body.len()) {
        d.push(&body[at..at + n]);
        at += n;
        match &error {
            None => error = drain(&mut d, &mut frames),
            Some(e) => assert_eq!(d.next_frame().as_ref(), Err(e), "deframer error not sticky"),
        }
    }
    assert_eq!(at, body.len());
    let chunked = Deframed {
        frames,
        error,
        buffered: d.buffered(),
    };
    assert_eq!(
        chunked, at_once,
        "chunking changed what the deframer returned"
    );

    let mut off = 0;
    for f in &chunked.frames {
        assert_eq!(f[..], body[off..off + f.len()]);
        off += f.len();
        match Header::parse(f, max) {
            Ok(h) => assert_eq!(h.frame_len(), f.len()),
            Err(e) => panic!("the deframer returned a frame with a bad header: {e:?}"),
        }
    }
    if chunked.error.is_none() {
        assert_eq!(off + chunked.buffered, body.len());
    }
}

fn control_payloads(body: &[u8]) {
    if let Ok(e) = ErrorPayload::decode(body) {
        let enc = e.encode();
        if std::str::from_utf8(&body[12..]).is_ok() {
            assert_eq!(enc, body, "ErrorPayload round trip");
        }
        match ErrorPayload::decode(&enc) {
            Ok(again) => assert_eq!(again.encode(), enc),
            Err(err) => panic!("an encoded ErrorPayload does not decode: {err:?}"),
        }
    }
    if let Ok(d) = DisconnectPayload::decode(body) {
        let enc = d.encode();
        if std::str::from_utf8(&body[4..]).is_ok() {
            assert_eq!(enc, body, "DisconnectPayload round trip");
        }
        match DisconnectPayload::decode(&enc) {
            Ok(again) => assert_eq!(again.encode(), enc),
            Err(err) => panic!("an encoded DisconnectPayload does not decode: {err:?}"),
        }
    }
    match control::decode_ack(body) {
        Ok(seq) => assert_eq!(control::encode_ack(seq)[..], body[..]),
        Err(_) => assert_ne!(body.len(), 8),
    }
    match control::split_response(MessageType::Response, body) {
        Ok((seq, rest)) => {
            assert_eq!(seq.to_be_bytes()[..], body[..8]);
            assert_eq!(rest, &body[8..]);
        }
        Err(_) => assert!(body.len() < 8),
    }
}

fn compression(body: &[u8]) {
    let declared = body
        .get(..4)
        .map(|h| u32::from_be_bytes([h[0], h[1], h[2], h[3]]));
    match compress::decompress(body, MAX_DECOMPRESSED) {
        Ok(out) => {
            assert_eq!(Some(out.len() as u32), declared);
            assert!(out.len() as u32 <= MAX_DECOMPRESSED);
            // Whatever decompressed also survives a compress/decompress round trip.
            round_trip(&out);
        }
        Err(XTMPError::DecompressedTooLarge { size, max }) => {
            assert_eq!(Some(size), declared);
            assert_eq!(max, MAX_DECOMPRESSED);
            assert!(size > max);
        }
        Err(XTMPError::DecompressionFailed) => {}
        Err(e) => panic!("unexpected decompression error {e:?}"),
    }
    round_trip(body);
}

fn round_trip(data: &[u8]) {
    if let Some(c) = compress::compress(data, MAX_DECOMPRESSED) {
        assert!(c.len() < data.len(), "compress returned a larger payload");
        match compress::decompress(&c, MAX_DECOMPRESSED) {
            Ok(out) => assert_eq!(out, data, "compress/decompress round trip"),
            Err(e) => panic!("compressed data does not decompress: {e:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_input() {
        for ctl in 0..=255u8 {
            for len in [0usize, 1, 95, 96, 97, 1000, 5000] {
                let c = chunks(ctl, len);
                assert_eq!(c.iter().sum::<usize>(), len);
                assert!(c.iter().all(|&n| n > 0));
            }
        }
        assert!(chunks(0, 10).iter().all(|&n| n == 1));
        assert_eq!(chunks(7, 10), vec![10]);
    }
}
