//! ML-DSA-65 keys and signatures, wallet addresses, and the exact byte strings that get
//! signed.
//!
//! # Choice of implementation
//! ML-DSA-65 (FIPS 204) comes from aws-lc-rs (`unstable::signature`, the same crate the
//! transport already uses for AEAD and hashing). Measured on this project's 2-core machine,
//! release build, 200-byte message, median of several runs:
//!
//! | crate | keygen | sign | verify |
//! |---|---|---|---|
//! | aws-lc-rs 1.19 (AWS-LC) | 52–125 µs | 124–233 µs | 43–63 µs |
//! | libcrux-ml-dsa 0.0.11 (AVX2) | 86–91 µs | 206–226 µs | 94–101 µs |
//! | ml-dsa 0.1.2 (RustCrypto) | 466–480 µs | 1.15–2.5 ms | 116–183 µs |
//!
//! Verification is the server's hot path (every transaction, bundle entry and registry
//! update), where aws-lc-rs is about twice as fast as the next option; it is also already a
//! dependency of the transport, and its ML-DSA API is part of its stable
//! `aws_lc_rs::signature` module since 1.18 (no extra feature, no second build of AWS-LC).
//! All use goes through this module, so a swap stays a local change. aws-lc-rs does not
//! take an ML-DSA context string, so every signed message starts with its own
//! domain-separation tag instead (`XTMP/v1/<purpose>` and a zero byte).
//!
//! # Signed messages
//! All integers big-endian. `‖` is concatenation.
//! * wallet auth: `"XTMP/v1/wallet-auth\0" ‖ session_id(8) ‖ challenge(32) ‖ address(32)`
//! * transaction: `"XTMP/v1/transaction\0" ‖ kind(1: 0 transfer, 1 mint) ‖ from(32) ‖ to(32) ‖ amount(8) ‖ nonce(8)`
//! * registry update: `"XTMP/v1/registry-update\0" ‖ key_len(2) ‖ key ‖ expected_version(8) ‖ owner(32) ‖ value_len(4) ‖ value`
//! * stamp: `"XTMP/v1/stamp\0" ‖ serial(8) ‖ timestamp_ms(8) ‖ digest(32) ‖ server_key_id(32)`
//! * certificate: `"XTMP/v1/tlsls-cert\0" ‖ version(1) ‖ serial(8) ‖ subject_len(2) ‖ subject ‖ key_fingerprint(32) ‖ issuer(32) ‖ not_before_ms(8) ‖ not_after_ms(8)`

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{
    KeyPair, ParsedPublicKey, PqdsaKeyPair, UnparsedPublicKey, ML_DSA_65, ML_DSA_65_SIGNING,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::error::AppError;

/// Length of an ML-DSA-65 public key.
pub const PUBLIC_KEY_LEN: usize = 1952;
/// Length of an ML-DSA-65 signature.
pub const SIGNATURE_LEN: usize = 3309;
/// Length of an ML-DSA seed (the private key as stored).
pub const SEED_LEN: usize = 32;
/// Length of an X-Wing public key (the transport's static keys).
pub const XWING_PUBLIC_KEY_LEN: usize = 1216;

/// SHA-256 over the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let d = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The fingerprint of a transport static key: SHA-256 of the 1216-byte X-Wing public key
/// (the same value the handshake reports as the client key, `PROTOCOL.md` §4.1).
///
/// # Errors
/// [`AppError::InvalidPublicKey`] if `xwing_public_key` is not 1216 bytes.
pub fn static_key_fingerprint(xwing_public_key: &[u8]) -> Result<[u8; 32], AppError> {
    if xwing_public_key.len() != XWING_PUBLIC_KEY_LEN {
        return Err(AppError::InvalidPublicKey(format!(
            "an X-Wing public key has {XWING_PUBLIC_KEY_LEN} bytes, got {}",
            xwing_public_key.len()
        )));
    }
    Ok(sha256(&[xwing_public_key]))
}

/// Fills `buf` from the system's secure random generator.
///
/// # Errors
/// [`AppError::Internal`] if the generator fails.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), AppError> {
    aws_lc_rs::rand::fill(buf).map_err(|_| AppError::Internal("random generator failed".into()))
}

/// A wallet address: `SHA-256("XTMP/v1/wallet-address\0" ‖ public_key)`, written as `xw`
/// followed by 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(pub [u8; 32]);

/// The textual prefix of an [`Address`].
pub const ADDRESS_PREFIX: &str = "xw";

impl Address {
    /// The address of an ML-DSA-65 public key.
    pub fn of(public_key: &PublicKey) -> Self {
        Address(sha256(&[
            b"XTMP/v1/wallet-address\0",
            public_key.as_bytes(),
        ]))
    }
    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ADDRESS_PREFIX}{}", crate::encoding::Hex32(self.0))
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({self})")
    }
}

impl FromStr for Address {
    type Err = AppError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AppError::InvalidAddress("expected \"xw\" and 64 lowercase hex digits".into());
        let rest = s.strip_prefix(ADDRESS_PREFIX).ok_or_else(bad)?;
        if rest.len() != 64
            || !rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        crate::encoding::decode_to_slice(rest.as_bytes(), &mut out).map_err(|_| bad())?;
        Ok(Address(out))
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(crate::encoding::StrVisitor(
            |s: &str| s.parse::<Address>(),
            "an address: \"xw\" and 64 lowercase hex digits",
        ))
    }
}

/// A validated ML-DSA-65 public key (exactly [`PUBLIC_KEY_LEN`] bytes).
///
/// The key is parsed into aws-lc's form on its first verification and kept, so a key that
/// verifies many signatures (a cached wallet key, the server's own key) is parsed once.
#[derive(Clone)]
pub struct PublicKey {
    bytes: Vec<u8>,
    /// `None` inside: aws-lc refused the encoding (every verification then fails).
    parsed: OnceLock<Option<ParsedPublicKey>>,
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", Address::of(self))
    }
}

impl PublicKey {
    /// Parses a public key.
    ///
    /// # Errors
    /// [`AppError::InvalidPublicKey`] on a wrong length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AppError> {
        if bytes.len() != PUBLIC_KEY_LEN {
            return Err(AppError::InvalidPublicKey(format!(
                "an ML-DSA-65 public key has {PUBLIC_KEY_LEN} bytes, got {}",
                bytes.len()
            )));
        }
        Ok(PublicKey {
            bytes: bytes.to_vec(),
            parsed: OnceLock::new(),
        })
    }

    /// The encoded key.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The key's id: SHA-256 of the encoded key.
    pub fn key_id(&self) -> [u8; 32] {
        sha256(&[&self.bytes])
    }

    /// Verifies an ML-DSA-65 signature over `message`.
    ///
    /// # Errors
    /// [`AppError::BadSignature`] on a wrong-length or invalid signature.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), AppError> {
        if signature.len() != SIGNATURE_LEN {
            return Err(AppError::BadSignature);
        }
        let parsed = self
            .parsed
            .get_or_init(|| UnparsedPublicKey::new(&ML_DSA_65, &self.bytes).parse().ok());
        match parsed {
            Some(k) => k
                .verify_sig(message, signature)
                .map_err(|_| AppError::BadSignature),
            None => Err(AppError::BadSignature),
        }
    }
}

/// An ML-DSA-65 signing key, kept as its 32-byte seed. `Debug` prints only the address.
pub struct SigningKey {
    seed: Zeroizing<[u8; SEED_LEN]>,
    pair: PqdsaKeyPair,
    public: PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.address())
    }
}

impl SigningKey {
    /// A fresh random key.
    ///
    /// # Errors
    /// [`AppError::Internal`] if the random generator or key expansion fails.
    pub fn generate() -> Result<Self, AppError> {
        let mut seed = Zeroizing::new([0u8; SEED_LEN]);
        random_bytes(seed.as_mut())?;
        Self::from_seed(&seed)
    }

    /// The key expanded from a 32-byte seed (FIPS 204 `ML-DSA.KeyGen_internal(ξ)`).
    ///
    /// # Errors
    /// [`AppError::Internal`] if key expansion fails.
    pub fn from_seed(seed: &[u8; SEED_LEN]) -> Result<Self, AppError> {
        let pair = PqdsaKeyPair::from_seed(&ML_DSA_65_SIGNING, seed)
            .map_err(|_| AppError::Internal("ML-DSA key expansion failed".into()))?;
        let public = PublicKey::from_bytes(pair.public_key().as_ref())?;
        Ok(Self {
            seed: Zeroizing::new(*seed),
            pair,
            public,
        })
    }

    /// The seed (secret).
    pub fn seed(&self) -> &[u8; SEED_LEN] {
        &self.seed
    }

    /// The public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The wallet address of the public key.
    pub fn address(&self) -> Address {
        Address::of(&self.public)
    }

    /// Signs `message`.
    ///
    /// # Errors
    /// [`AppError::Internal`] if signing fails.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, AppError> {
        let mut sig = vec![0u8; SIGNATURE_LEN];
        let n = self
            .pair
            .sign(message, &mut sig)
            .map_err(|_| AppError::Internal("ML-DSA signing failed".into()))?;
        sig.truncate(n);
        Ok(sig)
    }
}

/// Domain-separated signed messages (see the module docs).
pub mod message {
    use super::Address;

    fn with_tag(tag: &[u8], cap: usize) -> Vec<u8> {
        let mut m = Vec::with_capacity(tag.len() + cap);
        m.extend_from_slice(tag);
        m
    }

    /// The message a wallet signs to answer an authentication challenge.
    pub fn wallet_auth(session_id: u64, challenge: &[u8; 32], address: &Address) -> Vec<u8> {
        let mut m = with_tag(b"XTMP/v1/wallet-auth\0", 72);
        m.extend_from_slice(&session_id.to_be_bytes());
        m.extend_from_slice(challenge);
        m.extend_from_slice(address.as_bytes());
        m
    }

    /// The message a sender signs for a transaction (`kind`: 0 transfer, 1 mint).
    pub fn transaction(kind: u8, from: &Address, to: &Address, amount: u64, nonce: u64) -> Vec<u8> {
        let mut m = with_tag(b"XTMP/v1/transaction\0", 81);
        m.push(kind);
        m.extend_from_slice(from.as_bytes());
        m.extend_from_slice(to.as_bytes());
        m.extend_from_slice(&amount.to_be_bytes());
        m.extend_from_slice(&nonce.to_be_bytes());
        m
    }

    /// The message an owner signs for a registry update. `key` is at most 65535 bytes and
    /// `value` at most 4 GiB (the service enforces far smaller limits before calling this);
    /// longer inputs are truncated in the length prefix, which the limits rule out.
    pub fn registry_update(
        key: &str,
        expected_version: u64,
        owner: &Address,
        value: &str,
    ) -> Vec<u8> {
        let mut m = with_tag(b"XTMP/v1/registry-update\0", 54 + key.len() + value.len());
        m.extend_from_slice(&(key.len().min(u16::MAX as usize) as u16).to_be_bytes());
        m.extend_from_slice(key.as_bytes());
        m.extend_from_slice(&expected_version.to_be_bytes());
        m.extend_from_slice(owner.as_bytes());
        m.extend_from_slice(&(value.len().min(u32::MAX as usize) as u32).to_be_bytes());
        m.extend_from_slice(value.as_bytes());
        m
    }

    /// The message the server signs for a timestamp receipt.
    pub fn stamp(
        serial: u64,
        timestamp_ms: u64,
        digest: &[u8; 32],
        server_key_id: &[u8; 32],
    ) -> Vec<u8> {
        let mut m = with_tag(b"XTMP/v1/stamp\0", 80);
        m.extend_from_slice(&serial.to_be_bytes());
        m.extend_from_slice(&timestamp_ms.to_be_bytes());
        m.extend_from_slice(digest);
        m.extend_from_slice(server_key_id);
        m
    }

    /// The message the issuer signs for a TLSLS certificate.
    #[allow(clippy::too_many_arguments)]
    pub fn certificate(
        version: u8,
        serial: u64,
        subject: &str,
        key_fingerprint: &[u8; 32],
        issuer: &[u8; 32],
        not_before_ms: u64,
        not_after_ms: u64,
    ) -> Vec<u8> {
        let mut m = with_tag(b"XTMP/v1/tlsls-cert\0", 91 + subject.len());
        m.push(version);
        m.extend_from_slice(&serial.to_be_bytes());
        m.extend_from_slice(&(subject.len().min(u16::MAX as usize) as u16).to_be_bytes());
        m.extend_from_slice(subject.as_bytes());
        m.extend_from_slice(key_fingerprint);
        m.extend_from_slice(issuer);
        m.extend_from_slice(&not_before_ms.to_be_bytes());
        m.extend_from_slice(&not_after_ms.to_be_bytes());
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_reject() {
        let k = SigningKey::from_seed(&[7u8; 32]).unwrap();
        let k2 = SigningKey::from_seed(&[7u8; 32]).unwrap();
        assert_eq!(
            k.public_key(),
            k2.public_key(),
            "seed expansion is deterministic"
        );
        assert_eq!(k.public_key().as_bytes().len(), PUBLIC_KEY_LEN);
        let sig = k.sign(b"hello").unwrap();
        assert_eq!(sig.len(), SIGNATURE_LEN);
        k.public_key().verify(b"hello", &sig).unwrap();
        assert_eq!(
            k.public_key().verify(b"hellO", &sig),
            Err(AppError::BadSignature)
        );
        let mut bad = sig.clone();
        bad[100] ^= 1;
        assert_eq!(
            k.public_key().verify(b"hello", &bad),
            Err(AppError::BadSignature)
        );
        assert_eq!(
            k.public_key().verify(b"hello", &sig[..10]),
            Err(AppError::BadSignature)
        );
        assert_eq!(
            k.public_key().verify(b"hello", &[0u8; SIGNATURE_LEN]),
            Err(AppError::BadSignature)
        );
        assert_eq!(
            k.public_key().verify(b"hello", &[0xffu8; SIGNATURE_LEN]),
            Err(AppError::BadSignature)
        );
        // Garbage keys of the right length must not panic.
        let garbage = PublicKey::from_bytes(&[0xffu8; PUBLIC_KEY_LEN]).unwrap();
        assert_eq!(garbage.verify(b"hello", &sig), Err(AppError::BadSignature));
        assert!(PublicKey::from_bytes(&[0u8; 12]).is_err());
    }

    #[test]
    fn addresses_parse_strictly() {
        let k = SigningKey::from_seed(&[1u8; 32]).unwrap();
        let a = k.address();
        let s = a.to_string();
        assert!(s.starts_with("xw") && s.len() == 66);
        assert_eq!(s.parse::<Address>().unwrap(), a);
        assert!(s.to_uppercase().parse::<Address>().is_err());
        assert!(s[2..].parse::<Address>().is_err());
        assert!(format!("{s}0").parse::<Address>().is_err());
        assert!("xwé".parse::<Address>().is_err());
        assert!(format!("xw{}", "é".repeat(32)).parse::<Address>().is_err());
    }
}
