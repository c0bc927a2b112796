//! Hex-encoded byte types used in the JSON payloads.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
        f.write_str(&hex::encode(self.0))
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
        if s.len() != 64 {
            return Err(HexError(format!(
                "expected 64 hex digits, got {} characters",
                s.len()
            )));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| HexError(format!("bad hex: {e}")))?;
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
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Hex32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
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
            write!(f, "HexBytes({})", hex::encode(&self.0))
        } else {
            write!(
                f,
                "HexBytes({}.., {} bytes)",
                hex::encode(&self.0[..16]),
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
        s.serialize_str(&hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        hex::decode(s.as_bytes())
            .map(HexBytes)
            .map_err(|e| serde::de::Error::custom(format!("bad hex: {e}")))
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
}
