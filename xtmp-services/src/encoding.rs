//! Hex-encoded byte types used in the JSON payloads, and the hex codec behind them.
//!
//! Fields decode straight from the borrowed JSON string into their fixed-size buffer with
//! `const_hex::decode_to_slice` (SIMD; no owned `String`, no intermediate `Vec`): a 3,309-byte
//! ML-DSA-65 signature (6,618 hex digits) is the largest field of the hot requests
//! (`WalletAuth`, `WalletTransaction`, `BundleSubmit`), and serde's owned-`String` path
//! through `hex::decode` cost more server CPU than the signature verification itself.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Decodes the hex digits `src` (either case) into `out`, which must be exactly half as
/// long.
///
/// # Errors
/// [`HexError`] naming the length mismatch or the first invalid character and its
/// position.
pub fn decode_to_slice(src: &[u8], out: &mut [u8]) -> Result<(), HexError> {
    if !src.len().is_multiple_of(2) {
        return Err(HexError("bad hex: odd number of digits".into()));
    }
    if src.len() / 2 != out.len() {
        return Err(HexError(format!(
            "expected {} hex digits, got {}",
            out.len() * 2,
            src.len()
        )));
    }
    // const-hex strips a leading "0x"; JSON hex fields here are digits only.
    if let [b'0', b'x' | b'X', ..] = src {
        return Err(invalid_char(src, 1));
    }
    const_hex::decode_to_slice(src, out).map_err(|e| match e {
        const_hex::FromHexError::InvalidHexCharacter { index, .. } => invalid_char(src, index),
        // Both lengths were checked above.
        const_hex::FromHexError::OddLength | const_hex::FromHexError::InvalidStringLength => {
            HexError("bad hex: invalid length".into())
        }
    })
}

/// Decodes hex digits (either case) into a new vector.
///
/// # Errors
/// [`HexError`] for an odd length or an invalid character.
pub fn decode(src: &[u8]) -> Result<Vec<u8>, HexError> {
    // An odd length is refused by `decode_to_slice` before anything is decoded.
    let mut out = vec![0u8; src.len() / 2];
    decode_to_slice(src, &mut out)?;
    Ok(out)
}

#[cold]
fn invalid_char(src: &[u8], pos: usize) -> HexError {
    // `src` comes from a `&str` in every caller, but it may hold multi-byte characters:
    // name the byte, not a character that might be cut in half.
    let b = src.get(pos).copied().unwrap_or(0);
    if b.is_ascii_graphic() {
        HexError(format!(
            "bad hex: invalid character {:?} at position {pos}",
            char::from(b)
        ))
    } else {
        HexError(format!("bad hex: invalid byte 0x{b:02x} at position {pos}"))
    }
}

/// The lowercase hex digits of `bytes` (`const_hex::encode_to_slice`, SIMD; `hex::encode`
/// builds the string a character at a time, 6× slower on a signature).
pub fn encode(bytes: &[u8]) -> String {
    let mut buf = vec![0u8; bytes.len() * 2];
    // The buffer is exactly twice as long, and only ASCII digits are written: neither
    // step can fail.
    let _ = const_hex::encode_to_slice(bytes, &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// 32 bytes, written in JSON as 64 lowercase hex digits (ids, digests, fingerprints).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hex32(pub [u8; 32]);

impl Hex32 {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Hex32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 64];
        // 64 bytes for 32: cannot fail.
        let _ = const_hex::encode_to_slice(self.0, &mut buf);
        f.write_str(std::str::from_utf8(&buf).unwrap_or_default())
    }
}

impl fmt::Debug for Hex32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hex32({self})")
    }
}

/// Why a hex field did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HexError(pub String);

impl FromStr for Hex32 {
    type Err = HexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // `decode_to_slice` checks the length (64 digits) first.
        let mut out = [0u8; 32];
        decode_to_slice(s.as_bytes(), &mut out)?;
        Ok(Hex32(out))
    }
}

impl From<[u8; 32]> for Hex32 {
    fn from(b: [u8; 32]) -> Self {
        Hex32(b)
    }
}

impl Serialize for Hex32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Hands a JSON string to the parser `.0` without copying it into a `String` first (serde
/// passes a borrowed or transient `&str`); `.1` says what was expected.
pub(crate) struct StrVisitor<F>(pub F, pub &'static str);

impl<'de, T, Er, F> Visitor<'de> for StrVisitor<F>
where
    Er: fmt::Display,
    F: FnOnce(&str) -> Result<T, Er>,
{
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Hex32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor(|s: &str| s.parse(), "64 hex digits"))
    }
}

/// Variable-length bytes, written in JSON as lowercase hex (keys, signatures).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct HexBytes(pub Vec<u8>);

impl HexBytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for HexBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() <= 32 {
            write!(f, "HexBytes({})", encode(&self.0))
        } else {
            write!(
                f,
                "HexBytes({}.., {} bytes)",
                encode(&self.0[..16]),
                self.0.len()
            )
        }
    }
}

impl From<Vec<u8>> for HexBytes {
    fn from(v: Vec<u8>) -> Self {
        HexBytes(v)
    }
}

impl Serialize for HexBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor(
            |s: &str| decode(s.as_bytes()).map(HexBytes),
            "hex digits",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_roundtrips_and_rejects_garbage() {
        let h = Hex32([0xab; 32]);
        let j = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<Hex32>(&j).unwrap(), h);
        assert!(serde_json::from_str::<Hex32>("\"abcd\"").is_err());
        assert!(serde_json::from_str::<Hex32>(&format!("\"{}\"", "zz".repeat(32))).is_err());
        assert!(serde_json::from_str::<Hex32>("17").is_err());
        let b = HexBytes(vec![1, 2, 3]);
        assert_eq!(serde_json::to_string(&b).unwrap(), "\"010203\"");
        assert!(serde_json::from_str::<HexBytes>("\"0\"").is_err());
        // Multi-byte UTF-8 must not panic.
        assert!(serde_json::from_str::<Hex32>(&format!("\"{}\"", "é".repeat(32))).is_err());
    }

    #[test]
    fn codec_matches_the_hex_crate() {
        let mut x: u32 = 0x1234_5678;
        let bytes: Vec<u8> = (0..3309)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let all: Vec<u8> = (0..=255).collect();
        for b in [&bytes[..], &all[..], &[][..]] {
            let h = encode(b);
            assert_eq!(h, hex::encode(b));
            assert_eq!(decode(h.as_bytes()).unwrap(), b);
            assert_eq!(decode(h.to_uppercase().as_bytes()).unwrap(), b);
            let json = serde_json::to_string(&HexBytes(b.to_vec())).unwrap();
            assert_eq!(json, format!("\"{h}\""));
            assert_eq!(serde_json::from_str::<HexBytes>(&json).unwrap().0, b);
        }
        let h = Hex32(bytes[..32].try_into().unwrap());
        assert_eq!(h.to_string(), hex::encode(&bytes[..32]));
    }

    #[test]
    fn decode_errors_name_the_problem() {
        assert_eq!(
            decode(b"abc").unwrap_err().0,
            "bad hex: odd number of digits"
        );
        assert_eq!(
            decode(b"00zz").unwrap_err().0,
            "bad hex: invalid character 'z' at position 2"
        );
        assert_eq!(
            decode("0é0".as_bytes()).unwrap_err().0,
            "bad hex: invalid byte 0xc3 at position 1"
        );
        assert_eq!(
            decode(b"0 ").unwrap_err().0,
            "bad hex: invalid byte 0x20 at position 1"
        );
        let mut out = [0u8; 2];
        assert!(decode_to_slice(b"001122", &mut out).is_err());
        assert!(decode_to_slice(b"0g11", &mut out).is_err());
        decode_to_slice(b"0A1b", &mut out).unwrap();
        assert_eq!(out, [0x0a, 0x1b]);
        // Every single non-digit byte is refused wherever it is.
        for b in 0..=255u8 {
            let ok = b.is_ascii_hexdigit();
            assert_eq!(decode(&[b, b'0']).is_ok(), ok, "{b}");
            assert_eq!(decode(&[b'0', b]).is_ok(), ok, "{b}");
        }
        // Through serde: not a string, or escapes that decode to hex digits.
        assert!(serde_json::from_str::<HexBytes>("17").is_err());
        assert_eq!(
            serde_json::from_str::<HexBytes>("\"\\u0030a\"").unwrap().0,
            vec![0x0a]
        );
        let e = serde_json::from_str::<HexBytes>("\"0x\"").unwrap_err();
        assert!(e.to_string().contains("bad hex"), "{e}");
        // A "0x" prefix is not stripped (const-hex would strip it): the 'x' is refused.
        let mut out = [0u8; 2];
        assert_eq!(
            decode_to_slice(b"0x1b", &mut out).unwrap_err().0,
            "bad hex: invalid character 'x' at position 1"
        );
        assert_eq!(
            decode(b"0X").unwrap_err().0,
            "bad hex: invalid character 'X' at position 1"
        );
        // Signature-sized input (the SIMD path): a bad digit anywhere is found and named.
        let good = encode(&[0x5au8; 3309]);
        for pos in [0, 31, 32, 33, 4095, 6617] {
            let mut bad = good.clone().into_bytes();
            bad[pos] = b'g';
            let mut sig = [0u8; 3309];
            assert_eq!(
                decode_to_slice(&bad, &mut sig).unwrap_err().0,
                format!("bad hex: invalid character 'g' at position {pos}")
            );
        }
        let mut sig = [0u8; 3309];
        decode_to_slice(good.as_bytes(), &mut sig).unwrap();
        assert_eq!(sig, [0x5au8; 3309]);
    }
}
