//! Cryptographic building blocks for XTMP.
//!
//! This crate contains **no cryptographic primitive of its own**: every
//! algorithm is a published construction composed from reviewed
//! implementations, and each one is checked against published test vectors
//! (see the crate's tests and `docs/test-vectors/`).
//!
//! | Module   | Construction | Implementation |
//! |----------|--------------|----------------|
//! | [`aead`] | AES-256-GCM, ChaCha20-Poly1305 | `aws-lc-rs` (`LessSafeKey`) |
//! | [`aead`] | XAES-256-GCM ([C2SP]) | key derivation with the `aes` block cipher, sealing with `aws-lc-rs` AES-256-GCM |
//! | [`xwing`] | X-Wing hybrid KEM (draft-connolly-cfrg-xwing-kem-10) | ML-KEM-768 from `libcrux-ml-kem`, X25519 from `aws-lc-rs`, SHA3-256 from `sha3`, SHAKE-256 from `shake` |
//! | [`kdf`]  | SHA-256, HMAC-SHA-256, HKDF-SHA-256 (RFC 5869) | RustCrypto `sha2`, `hmac`, `hkdf` |
//!
//! # Example
//!
//! ```
//! use xtmp_crypto::aead::{AeadAlgorithm, AeadKey};
//! use xtmp_crypto::kdf;
//! use xtmp_crypto::xwing::{XWingPublicKey, XWingSecretKey};
//!
//! // Receiver: key pair from a 32-byte seed; publishes the 1216-byte key.
//! let sk = XWingSecretKey::from_seed(&[7u8; 32]);
//! // Sender: parses the key and encapsulates (use `encapsulate()` for fresh
//! // randomness; `encapsulate_derand` is the deterministic variant).
//! let pk = XWingPublicKey::from_bytes(sk.public_key().as_bytes())?;
//! let (ct, ss_sender) = pk.encapsulate()?;
//! let ss_receiver = sk.decapsulate(&ct)?;
//! assert_eq!(ss_sender, ss_receiver);
//!
//! // Derive an AEAD key and protect a message.
//! let prk = kdf::hkdf_extract(b"salt", ss_sender.as_bytes());
//! let mut key = [0u8; 32];
//! kdf::hkdf_expand(&prk, &[b"example", b" key"], &mut key)?;
//! let prefix = [1u8; 12];
//! let aead = AeadKey::new(AeadAlgorithm::Xaes256Gcm, &key, Some(prefix));
//! let mut nonce = [0u8; 24];
//! nonce[..12].copy_from_slice(&prefix);
//! let mut msg = *b"hello";
//! let tag = aead.seal_in_place(&nonce, b"header", &mut msg)?;
//! aead.open_in_place(&nonce, b"header", &mut msg, &tag)?;
//! assert_eq!(&msg, b"hello");
//! # Ok::<(), xtmp_crypto::CryptoError>(())
//! ```
//!
//! # Design choices
//!
//! **XAES-256-GCM composed from `aws-lc-rs` AES-GCM and the `aes` block
//! cipher.** No reviewed Rust library we depend on ships XAES-256-GCM, but
//! the [C2SP] specification is deliberately defined so that it can be built
//! from an off-the-shelf AES-256-GCM plus the raw AES-256 block function: the
//! per-nonce subkey is an NIST SP 800-108r1 counter-mode KDF over CMAC-AES-256
//! whose input always fits in one block, i.e. three AES-256 block encryptions
//! (one of which, the CMAC subkey `K1`, is computed once per key). We do the
//! block encryptions with RustCrypto's constant-time `aes` crate (AES-NI when
//! available) and hand the derived key to `aws-lc-rs`'s AES-256-GCM, which is
//! the fastest AES-GCM available to us (VAES/AVX-512 or AES-NI + CLMUL
//! assembly). Because XTMP uses a per-connection 12-byte nonce prefix, the
//! derived AES-GCM key for that prefix is cached in the [`aead::AeadKey`], so
//! sealing and opening with it costs exactly as much as plain AES-256-GCM.
//!
//! **ML-KEM-768 from `libcrux-ml-kem`.** X-Wing test vectors are defined in
//! terms of the *deterministic* ML-KEM algorithms (`KeyGen_internal(d, z)`,
//! `Encaps_internal(pk, m)`), which libcrux exposes directly. Its
//! `mlkem768::{portable,avx2}::unpacked` API also lets us keep the expanded key
//! material (NTT-domain vectors and the sampled matrix `A`) between calls: the
//! secret key caches the unpacked key pair and the public key caches the
//! unpacked encapsulation key, so repeated encapsulations to the same peer and
//! every decapsulation skip the matrix sampling. The libcrux code is formally
//! verified (hax/F*) for panic freedom and functional correctness. The AVX2
//! instantiation is selected at run time when the CPU supports it, exactly as
//! libcrux's own multiplexing API does.
//!
//! **X25519 from `aws-lc-rs`**, whose X25519 is formally verified (s2n-bignum)
//! and constant time.
//!
//! # Hygiene
//!
//! * `#![forbid(unsafe_code)]`.
//! * No operation panics on attacker-controlled input: lengths are checked and
//!   reported as [`CryptoError`].
//! * Secret values ([`xwing::SharedSecret`], [`xwing::XWingSecretKey`],
//!   [`aead::AeadKey`] and all temporaries) are zeroized when dropped;
//!   `Debug` implementations never print key material. Key material held by
//!   `aws-lc-rs` is cleansed by aws-lc when freed. libcrux's unpacked ML-KEM
//!   key pair implements neither `Zeroize` nor `Copy`, so without `unsafe` it
//!   is wiped best-effort (overwritten with its all-zero default behind
//!   [`core::hint::black_box`]); likewise copies that libcrux and `aws-lc-rs`
//!   make on their own stacks are outside our control.
//! * Secrets are compared in constant time ([`ct_eq`], [`subtle`]).
//!
//! [C2SP]: https://c2sp.org/XAES-256-GCM
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod aead;
pub mod kdf;
pub mod xwing;

pub use subtle;

use subtle::ConstantTimeEq;

/// Errors returned by this crate.
///
/// The variants deliberately carry no detail: in particular an
/// [`CryptoError::AuthenticationFailed`] never says *why* a message was
/// rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// An input had the wrong length (key, ciphertext, HKDF output, ...).
    #[error("invalid length")]
    InvalidLength,
    /// A public key was rejected (e.g. the ML-KEM-768 modulus check failed).
    #[error("invalid public key")]
    InvalidPublicKey,
    /// AEAD decryption failed: the tag does not authenticate the ciphertext,
    /// associated data and nonce under this key.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// The underlying library reported an unexpected internal failure.
    #[error("internal cryptographic error")]
    Internal,
}

/// Compares two byte strings in constant time.
///
/// The running time depends only on the lengths of the inputs, never on their
/// contents. Returns `false` if the lengths differ (lengths are not treated as
/// secret).
#[must_use]
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    // `subtle`'s slice comparison returns 0 early for unequal lengths and is
    // constant time for equal lengths.
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Fills `out` with bytes from the operating system's cryptographically
/// secure random number generator (via `aws-lc-rs`).
///
/// # Errors
///
/// [`CryptoError::Internal`] if the generator fails.
pub fn fill_random(out: &mut [u8]) -> Result<(), CryptoError> {
    aws_lc_rs::rand::fill(out).map_err(|_| CryptoError::Internal)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::ct_eq;

    #[test]
    fn ct_eq_basics() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(!ct_eq(b"", b"a"));
    }

    #[test]
    fn fill_random_fills() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        super::fill_random(&mut a).unwrap();
        super::fill_random(&mut b).unwrap();
        assert_ne!(a, b);
        super::fill_random(&mut []).unwrap();
    }
}
