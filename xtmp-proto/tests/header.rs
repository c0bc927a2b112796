//! The 96-byte header: layout, round trips and every rejection rule in order.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use xtmp_proto::*;

fn sample() -> XTMPMessage {
    let mut m = XTMPMessage::new(
        MessageType::WalletBalance,
        0x0102030405060708,
        9,
        b"hello".to_vec(),
    );
    m.flags = XTMPFlags::ENCRYPTED | XTMPFlags::PRIORITY;
    m.key_id = [0xAB; 16];
    m.nonce = [0xCD; 24];
    m.auth_tag = [0xEF; 16];
    m
}

#[test]
fn layout_matches_the_spec_table() {
    let b = sample().encode().unwrap();
    assert_eq!(b.len(), 96 + 5);
    assert_eq!(&b[0..4], b"XTMP");
    assert_eq!(b[4], 1);
    assert_eq!(b[5], 0x12);
    assert_eq!(&b[6..8], &[0x00, 0x05]);
    assert_eq!(&b[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(&b[16..24], &9u64.to_be_bytes());
    assert_eq!(&b[24..28], &5u32.to_be_bytes());
    assert_eq!(&b[28..32], &crc32(b"hello").to_be_bytes());
    assert_eq!(b[32], 0x03, "PostQuantum is the seed's default");
    assert_eq!(&b[33..40], &[0; 7]);
    assert_eq!(&b[40..56], &[0xAB; 16]);
    assert_eq!(&b[56..80], &[0xCD; 24]);
    assert_eq!(&b[80..96], &[0xEF; 16]);
    assert_eq!(&b[96..], b"hello");
}

#[test]
fn crc32_is_the_ieee_polynomial() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
}

#[test]
fn seed_constructor_defaults() {
    let m = XTMPMessage::new(MessageType::QLOCKRequest, 7, 1, b"{}".to_vec());
    assert_eq!(m.magic, *b"XTMP");
    assert_eq!(m.version, 1);
    assert_eq!(m.encryption_type, EncryptionType::PostQuantum);
    assert_eq!(m.flags, XTMPFlags::ENCRYPTED, "must agree with PostQuantum");
    assert_eq!(m.payload_length, 2);
    assert_eq!(m.checksum, crc32(b"{}"));
    assert_eq!(MessageType::QLOCKRequest.0, 0x50);
    assert_eq!(MessageType::TLSLSRequest.0, 0x52);
}

#[test]
fn every_rejection_rule_has_its_own_error_in_order() {
    let good = sample().encode().unwrap();
    let max = 1024;
    assert!(parse_frame(&good, max).is_ok());
    let case = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        parse_frame(&b, max).unwrap_err()
    };
    assert!(matches!(
        case(&|b| b.truncate(95)),
        XTMPError::Truncated { needed: 96, .. }
    ));
    assert_eq!(case(&|b| b[0] = b'Y'), XTMPError::BadMagic);
    assert_eq!(case(&|b| b[4] = 2), XTMPError::UnsupportedVersion(2));
    assert_eq!(case(&|b| b[35] = 1), XTMPError::ReservedNonZero);
    assert_eq!(case(&|b| b[6] = 0x80), XTMPError::UnknownFlags(0x8005));
    assert_eq!(case(&|b| b[32] = 9), XTMPError::UnknownEncryptionType(9));
    assert_eq!(case(&|b| b[7] = 0x04), XTMPError::FlagMismatch);
    assert_eq!(
        case(&|b| b[24..28].copy_from_slice(&2000u32.to_be_bytes())),
        XTMPError::PayloadTooLarge {
            length: 2000,
            max: 1024
        }
    );
    assert!(matches!(
        case(&|b| {
            b.pop();
        }),
        XTMPError::Truncated { .. }
    ));
    assert_eq!(case(&|b| b.push(0)), XTMPError::TrailingBytes(1));
    assert!(matches!(
        case(&|b| b[100] ^= 1),
        XTMPError::ChecksumMismatch { .. }
    ));
    // Order: a frame that is wrong in several ways reports the earliest check.
    assert_eq!(
        case(&|b| {
            b[4] = 7;
            b[35] = 1;
            b[100] ^= 1;
        }),
        XTMPError::UnsupportedVersion(7)
    );
    assert_eq!(
        case(&|b| {
            b[32] = 9;
            b[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
        }),
        XTMPError::UnknownEncryptionType(9)
    );
    // Unknown message types are not a framing error.
    assert!(parse_frame(
        &{
            let mut b = good.clone();
            b[5] = 0x99;
            b
        },
        max
    )
    .is_ok());
}

#[test]
fn deframer_handles_chunks_and_rejects_early() {
    let a = sample().encode().unwrap();
    let b = XTMPMessage::new(MessageType::Heartbeat, 1, 2, vec![0; 9])
        .encode()
        .unwrap();
    let stream = [a.clone(), b.clone()].concat();
    for chunk in [1usize, 7, 95, 96, 97, 1000] {
        let mut d = deframe::Deframer::new(1 << 20);
        let mut out = Vec::new();
        for c in stream.chunks(chunk) {
            d.push(c);
            while let Some(f) = d.next_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, vec![a.clone(), b.clone()], "chunk {chunk}");
    }
    // Garbage is rejected from the first byte, oversize as soon as the header is in.
    assert_eq!(deframe::frame_len(b"G", 100), Err(XTMPError::BadMagic));
    let mut big = a.clone();
    big[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        deframe::frame_len(&big[..96], 1 << 24),
        Err(XTMPError::PayloadTooLarge { .. })
    ));
    assert_eq!(deframe::frame_len(&a[..50], 100), Ok(None));
}

#[test]
fn message_type_names_and_unknowns() {
    assert_eq!(format!("{:?}", MessageType::MetricsStream), "MetricsStream");
    assert_eq!(format!("{:?}", MessageType(0x77)), "MessageType(0x77)");
    assert!(MessageType::ALL.iter().all(|t| t.is_known()));
    assert_eq!(MessageType::ALL.len(), 29);
    assert_eq!(
        EncryptionType::from_name("postquantum"),
        Some(EncryptionType::PostQuantum)
    );
    assert_eq!(EncryptionType::from_name("rot13"), None);
    // Every error maps to a registered wire code.
    assert!(ErrorCode::ALL.contains(&XTMPError::BadMagic.code()));
}

fn arb_message() -> impl Strategy<Value = XTMPMessage> {
    (
        any::<u8>(),
        0u32..0x20,
        any::<u64>(),
        any::<u64>(),
        0u8..4,
        any::<[u8; 16]>(),
        any::<[u8; 24]>(),
        any::<[u8; 16]>(),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(t, fl, sid, seq, enc, kid, nonce, tag, payload)| {
            let mut m = XTMPMessage::new(MessageType(t), sid, seq, payload);
            let enc = EncryptionType::from_u8(enc).unwrap_or(EncryptionType::None);
            m.encryption_type = enc;
            let mut flags = XTMPFlags::from_bits_truncate(fl);
            flags.set(XTMPFlags::ENCRYPTED, enc != EncryptionType::None);
            m.flags = flags;
            m.key_id = kid;
            m.nonce = nonce;
            m.auth_tag = tag;
            m
        })
}

proptest! {
    #[test]
    fn encode_decode_round_trip(m in arb_message()) {
        let b = m.encode().unwrap();
        prop_assert_eq!(b.len(), HEADER_LEN + m.payload.len());
        let d = XTMPMessage::decode(&b, u32::MAX).unwrap();
        prop_assert_eq!(&d, &m);
        prop_assert_eq!(d.encode().unwrap(), b);
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse_frame(&b, 1 << 16);
        let _ = deframe::frame_len(&b, 1 << 16);
        let _ = control::ErrorPayload::decode(&b);
        let _ = compress::decompress(&b, 1 << 16);
    }
}
