//! Hashing and key derivation with SHA-256: SHA-256 (FIPS 180-4),
//! HMAC-SHA-256 (RFC 2104) and HKDF-SHA-256 (RFC 5869).
//!
//! All functions take their message as a list of parts that are hashed as
//! their concatenation, so callers never have to allocate a joined buffer
//! (which would be one more copy of possibly secret material to wipe).
//!
//! Implementations: RustCrypto `sha2`, `hmac` and `hkdf`. Returned arrays that
//! hold secrets (HMAC outputs, PRKs) are plain arrays; callers that keep them
//! should wrap them in [`zeroize::Zeroizing`] or wipe them when done.

use hkdf::Hkdf;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::CryptoError;

/// Output length of SHA-256 (and of HMAC-SHA-256 / the HKDF PRK), in bytes.
pub const HASH_LEN: usize = 32;

/// Maximum HKDF-SHA-256 output length, `255 * HashLen` (RFC 5869 §2.3).
pub const HKDF_MAX_OUTPUT_LEN: usize = 255 * HASH_LEN;

type HmacSha256 = hmac::Hmac<Sha256>;

/// SHA-256 of the concatenation of `parts`.
#[must_use]
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// HMAC-SHA-256 under `key` of the concatenation of `parts`.
///
/// Keys of any length are accepted (RFC 2104: longer keys are hashed first).
#[must_use]
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // Invariant: HMAC accepts keys of every length (RFC 2104 hashes long keys
    // and zero-pads short ones); `hmac` 0.13's `new_from_slice` always
    // returns `Ok` (its own `KeyInit::new` relies on the same fact).
    #[allow(clippy::expect_used)]
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// HKDF-Extract with SHA-256 (RFC 5869 §2.2): returns the pseudorandom key
/// `PRK = HMAC-SHA-256(salt, ikm)`.
///
/// An empty `salt` is equivalent to `HashLen` zero bytes, as in the RFC. The
/// PRK is secret: the caller is responsible for zeroizing it.
#[must_use]
pub fn hkdf_extract(salt: &[u8], ikm: &[u8]) -> [u8; 32] {
    let (prk, _) = Hkdf::<Sha256>::extract(Some(salt), ikm);
    prk.into()
}

/// HKDF-Expand with SHA-256 (RFC 5869 §2.3): fills `out` with output keying
/// material derived from `prk`, with `info` being the concatenation of the
/// given parts.
///
/// # Errors
///
/// [`CryptoError::InvalidLength`] if `out.len() > 255 * 32`
/// ([`HKDF_MAX_OUTPUT_LEN`]).
pub fn hkdf_expand(prk: &[u8; 32], info: &[&[u8]], out: &mut [u8]) -> Result<(), CryptoError> {
    if out.len() > HKDF_MAX_OUTPUT_LEN {
        return Err(CryptoError::InvalidLength);
    }
    let hk = Hkdf::<Sha256>::from_prk(prk).map_err(|_| CryptoError::InvalidLength)?;
    hk.expand_multi_info(info, out)
        .map_err(|_| CryptoError::InvalidLength)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// FIPS 180-2 Appendix B.1 ("abc").
    #[test]
    fn sha256_abc() {
        let want = h("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(sha256(&[b"abc"]).to_vec(), want);
        assert_eq!(sha256(&[b"a", b"", b"bc"]).to_vec(), want);
    }

    /// RFC 4231 §4.3, test case 2 ("Jefe").
    #[test]
    fn hmac_rfc4231_case2() {
        let want = h("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert_eq!(
            hmac_sha256(b"Jefe", &[b"what do ya want for nothing?"]).to_vec(),
            want
        );
        assert_eq!(
            hmac_sha256(b"Jefe", &[b"what do ya ", b"want for nothing?"]).to_vec(),
            want
        );
    }

    /// RFC 4231 §4.7, test case 6: key longer than the block size.
    #[test]
    fn hmac_rfc4231_case6_long_key() {
        let key = [0xaau8; 131];
        let want = h("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
        assert_eq!(
            hmac_sha256(
                &key,
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )
            .to_vec(),
            want
        );
    }

    /// RFC 5869 Appendix A.1, test case 1.
    #[test]
    fn hkdf_rfc5869_case1() {
        let ikm = [0x0bu8; 22];
        let salt = h("000102030405060708090a0b0c");
        let info = h("f0f1f2f3f4f5f6f7f8f9");
        let prk = hkdf_extract(&salt, &ikm);
        assert_eq!(
            prk.to_vec(),
            h("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5")
        );
        let want_okm = h(
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
        );
        let mut okm = [0u8; 42];
        hkdf_expand(&prk, &[&info], &mut okm).unwrap();
        assert_eq!(okm.to_vec(), want_okm);
        // Same result with the info split into parts.
        let mut okm2 = [0u8; 42];
        hkdf_expand(&prk, &[&info[..3], &[], &info[3..]], &mut okm2).unwrap();
        assert_eq!(okm2, okm);
    }

    /// RFC 5869 Appendix A.3, test case 3: empty salt and info.
    #[test]
    fn hkdf_rfc5869_case3() {
        let ikm = [0x0bu8; 22];
        let prk = hkdf_extract(&[], &ikm);
        assert_eq!(
            prk.to_vec(),
            h("19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04")
        );
        let mut okm = [0u8; 42];
        hkdf_expand(&prk, &[], &mut okm).unwrap();
        assert_eq!(
            okm.to_vec(),
            h("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")
        );
    }

    #[test]
    fn hkdf_expand_length_limit() {
        let prk = [7u8; 32];
        let mut max = vec![0u8; HKDF_MAX_OUTPUT_LEN];
        assert!(hkdf_expand(&prk, &[b"x"], &mut max).is_ok());
        let mut too_long = vec![0u8; HKDF_MAX_OUTPUT_LEN + 1];
        assert_eq!(
            hkdf_expand(&prk, &[b"x"], &mut too_long),
            Err(CryptoError::InvalidLength)
        );
        let mut empty = [0u8; 0];
        assert!(hkdf_expand(&prk, &[b"x"], &mut empty).is_ok());
    }
}
