//! Authenticated encryption with associated data: AES-256-GCM,
//! ChaCha20-Poly1305 and XAES-256-GCM, behind one key type with a uniform
//! 24-byte nonce and a detached 16-byte tag.
//!
//! * [`AeadAlgorithm::Aes256Gcm`] and [`AeadAlgorithm::ChaCha20Poly1305`]
//!   (RFC 8439) are `aws-lc-rs` `LessSafeKey`s. They take 96-bit nonces:
//!   only `nonce[..12]` is used and `nonce[12..]` is **ignored**.
//! * [`AeadAlgorithm::Xaes256Gcm`] is [C2SP XAES-256-GCM]: the whole 24-byte
//!   nonce is used. `nonce[..12]` selects a derived AES-256-GCM key
//!   (NIST SP 800-108r1 KDF in counter mode over CMAC-AES-256, computed with
//!   three AES-256 block encryptions) and `nonce[12..]` is the AES-256-GCM
//!   nonce under that key.
//!
//! Ciphertexts are the same length as plaintexts; the tag is returned and
//! taken separately. The usual AEAD rule applies: never reuse a nonce under
//! the same key (for XAES-256-GCM: never reuse the full 24-byte nonce).
//!
//! [C2SP XAES-256-GCM]: https://c2sp.org/XAES-256-GCM

use core::fmt;

use aes::cipher::{BlockCipherEncrypt, KeyInit};
use aws_lc_rs::aead::{self as lc, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::{Zeroize, Zeroizing};

use crate::CryptoError;

/// Key length of every supported AEAD, in bytes.
pub const KEY_LEN: usize = 32;
/// Authentication tag length of every supported AEAD, in bytes.
pub const TAG_LEN: usize = 16;
/// Length of the nonce taken by [`AeadKey::seal_in_place`] and
/// [`AeadKey::open_in_place`], in bytes (see the module docs for how each
/// algorithm uses it).
pub const NONCE_LEN: usize = 24;
/// Length of the nonce prefix that selects an XAES-256-GCM derived key.
pub const XAES_PREFIX_LEN: usize = 12;

/// The AEAD algorithms supported by [`AeadKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AeadAlgorithm {
    /// AES-256-GCM (NIST SP 800-38D) with a 96-bit nonce (`nonce[..12]`).
    Aes256Gcm,
    /// ChaCha20-Poly1305 (RFC 8439) with a 96-bit nonce (`nonce[..12]`).
    ChaCha20Poly1305,
    /// XAES-256-GCM (C2SP) with the full 192-bit nonce.
    Xaes256Gcm,
}

/// An AEAD key for one [`AeadAlgorithm`].
///
/// The key material lives inside `aws-lc-rs` (which wipes it when freed) and,
/// for XAES-256-GCM, in an `aes` key schedule and a CMAC subkey that are
/// zeroized on drop. `Debug` prints only the algorithm. `AeadKey` is
/// `Send + Sync`; sealing and opening take `&self`.
pub struct AeadKey {
    alg: AeadAlgorithm,
    inner: Inner,
}

enum Inner {
    /// AES-256-GCM or ChaCha20-Poly1305.
    Direct(LessSafeKey),
    /// XAES-256-GCM (boxed: the AES key schedule is comparatively large).
    Xaes(Box<XaesKey>),
}

/// XAES-256-GCM state for one input key `K`.
struct XaesKey {
    /// The input key `K`. The AES-256 key schedule is expanded only while deriving
    /// (about 0.1 µs), not kept: a session holds one `XaesKey` per direction for its
    /// whole life and uses only the cached derived key, so keeping the ~500-byte
    /// schedule would cost memory on every idle session for nothing.
    key: Zeroizing<[u8; KEY_LEN]>,
    /// CMAC subkey `K1` (C2SP steps 1–2), precomputed.
    k1: Zeroizing<[u8; 16]>,
    /// Derived AES-256-GCM key for one nonce prefix, if a hint was given.
    cached: Option<([u8; XAES_PREFIX_LEN], LessSafeKey)>,
}

impl AeadKey {
    /// Creates a key.
    ///
    /// For [`AeadAlgorithm::Aes256Gcm`] / [`AeadAlgorithm::ChaCha20Poly1305`]
    /// (aws-lc-rs `LessSafeKey`) only `nonce[..12]` of the 24-byte nonce is
    /// used later, and `prefix_hint` is ignored.
    ///
    /// For [`AeadAlgorithm::Xaes256Gcm`] ([C2SP XAES-256-GCM]) the whole
    /// 24-byte nonce is used. The derived AES-256-GCM key for
    /// `nonce[..12] == prefix_hint` is computed once here and cached, so
    /// sealing/opening with that prefix costs the same as AES-256-GCM; any
    /// other prefix derives its key per call (slower, still correct).
    ///
    /// [C2SP XAES-256-GCM]: https://c2sp.org/XAES-256-GCM
    #[must_use]
    pub fn new(alg: AeadAlgorithm, key: &[u8; KEY_LEN], prefix_hint: Option<[u8; 12]>) -> Self {
        let inner = match alg {
            AeadAlgorithm::Aes256Gcm => Inner::Direct(lc_key(&lc::AES_256_GCM, key)),
            AeadAlgorithm::ChaCha20Poly1305 => Inner::Direct(lc_key(&lc::CHACHA20_POLY1305, key)),
            AeadAlgorithm::Xaes256Gcm => Inner::Xaes(Box::new(XaesKey::new(key, prefix_hint))),
        };
        Self { alg, inner }
    }

    /// The algorithm of this key.
    #[must_use]
    pub fn algorithm(&self) -> AeadAlgorithm {
        self.alg
    }

    /// Encrypts `in_out` in place and returns the detached 16-byte tag, which
    /// authenticates the ciphertext, `aad` and the nonce.
    ///
    /// # Errors
    ///
    /// [`CryptoError::InvalidLength`] if the message exceeds the algorithm's
    /// limit (about 64 GiB for the GCM variants, 256 GiB for
    /// ChaCha20-Poly1305); [`CryptoError::Internal`] on an unexpected failure
    /// of the underlying library.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CryptoError> {
        check_len(self.alg, in_out.len())?;
        match &self.inner {
            Inner::Direct(key) => seal(key, nonce12(nonce, 0), aad, in_out),
            Inner::Xaes(x) => match x.cached_for(nonce) {
                Some(key) => seal(key, nonce12(nonce, 12), aad, in_out),
                None => seal(&x.derive(nonce), nonce12(nonce, 12), aad, in_out),
            },
        }
    }

    /// Decrypts `in_out` in place, checking it against the detached `tag`,
    /// `aad` and the nonce.
    ///
    /// # Errors
    ///
    /// [`CryptoError::AuthenticationFailed`] if the tag does not verify (or
    /// the ciphertext is longer than any valid one). **On failure the content
    /// of `in_out` is unspecified** (it may be partially decrypted or
    /// otherwise overwritten); callers must discard it.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CryptoError> {
        check_len(self.alg, in_out.len()).map_err(|_| CryptoError::AuthenticationFailed)?;
        match &self.inner {
            Inner::Direct(key) => open(key, nonce12(nonce, 0), aad, in_out, tag),
            Inner::Xaes(x) => match x.cached_for(nonce) {
                Some(key) => open(key, nonce12(nonce, 12), aad, in_out, tag),
                None => open(&x.derive(nonce), nonce12(nonce, 12), aad, in_out, tag),
            },
        }
    }
}

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AeadKey")
            .field("algorithm", &self.alg)
            .finish_non_exhaustive()
    }
}

impl XaesKey {
    fn new(key: &[u8; KEY_LEN], prefix_hint: Option<[u8; XAES_PREFIX_LEN]>) -> Self {
        // Zeroized on drop by `aes` (`zeroize` feature).
        let block = aes::Aes256::new(key.into());
        // C2SP steps 1-2: L = AES-256_K(0^128); K1 = L << 1, xor 0x87 into the
        // last byte if MSB(L) = 1 (the CMAC subkey of NIST SP 800-38B §6.1).
        let mut l = Zeroizing::new([0u8; 16]);
        block.encrypt_block((&mut *l).into());
        let mut k1 = Zeroizing::new([0u8; 16]);
        let mut carry = 0u8;
        for i in (0..16).rev() {
            k1[i] = (l[i] << 1) | carry;
            carry = l[i] >> 7;
        }
        // Constant time: `carry` is MSB(L) (0 or 1); 0x87 * carry is 0x00 or 0x87.
        k1[15] ^= 0x87 & 0u8.wrapping_sub(carry);
        carry.zeroize();
        let mut this = Self {
            key: Zeroizing::new(*key),
            k1,
            cached: None,
        };
        if let Some(prefix) = prefix_hint {
            let mut n = [0u8; NONCE_LEN];
            n[..XAES_PREFIX_LEN].copy_from_slice(&prefix);
            this.cached = Some((prefix, this.derive_with(&block, &n)));
        }
        this
    }

    /// The cached derived key if `nonce[..12]` equals the cached prefix.
    /// (The nonce is public, so a variable-time comparison is fine.)
    fn cached_for(&self, nonce: &[u8; NONCE_LEN]) -> Option<&LessSafeKey> {
        match &self.cached {
            Some((prefix, key)) if nonce[..XAES_PREFIX_LEN] == prefix[..] => Some(key),
            _ => None,
        }
    }

    /// C2SP steps 3-5: derives the AES-256-GCM key `Kx` for `nonce[..12]`.
    fn derive(&self, nonce: &[u8; NONCE_LEN]) -> LessSafeKey {
        let block = aes::Aes256::new((&*self.key).into());
        self.derive_with(&block, nonce)
    }

    /// [`XaesKey::derive`] with the expanded AES-256 key `K` at hand.
    fn derive_with(&self, block: &aes::Aes256, nonce: &[u8; NONCE_LEN]) -> LessSafeKey {
        let mut kx = Zeroizing::new([0u8; 32]);
        let mut m = Zeroizing::new([0u8; 16]);
        for (counter, out) in [1u8, 2u8].into_iter().zip(kx.chunks_exact_mut(16)) {
            // M_i = 0x00 || i || 'X' || 0x00 || N[:12], then M_i xor K1.
            m[0] = 0x00;
            m[1] = counter;
            m[2] = b'X';
            m[3] = 0x00;
            m[4..].copy_from_slice(&nonce[..XAES_PREFIX_LEN]);
            for (b, k) in m.iter_mut().zip(self.k1.iter()) {
                *b ^= k;
            }
            block.encrypt_block((&mut *m).into());
            out.copy_from_slice(&m[..]);
        }
        lc_key(&lc::AES_256_GCM, &kx)
    }
}

/// Builds an aws-lc-rs key. The only failure mode of `UnboundKey::new` is a
/// key of the wrong length, and every caller passes a `[u8; 32]`, which is
/// the key length of both algorithms used here.
fn lc_key(alg: &'static lc::Algorithm, key: &[u8; KEY_LEN]) -> LessSafeKey {
    // Invariant (see above): AES_256_GCM and CHACHA20_POLY1305 both take
    // 32-byte keys, so this cannot fail.
    #[allow(clippy::expect_used)]
    let unbound = UnboundKey::new(alg, key).expect("32-byte key for a 256-bit AEAD");
    LessSafeKey::new(unbound)
}

/// The 12-byte nonce starting at `offset` (0 or 12) of the 24-byte nonce.
fn nonce12(nonce: &[u8; NONCE_LEN], offset: usize) -> Nonce {
    let mut n = [0u8; 12];
    n.copy_from_slice(&nonce[offset..offset + 12]);
    Nonce::assume_unique_for_key(n)
}

/// Per-message length limits (the algorithms' own; aws-lc-rs also enforces
/// them, this just makes the error deterministic and documented).
fn check_len(alg: AeadAlgorithm, len: usize) -> Result<(), CryptoError> {
    // GCM: 2^39 - 256 bits = 2^36 - 32 bytes (NIST SP 800-38D §5.2.1.1).
    // ChaCha20-Poly1305: 2^32 blocks of 64 bytes = 2^38 bytes (RFC 8439).
    let max: u64 = match alg {
        AeadAlgorithm::Aes256Gcm | AeadAlgorithm::Xaes256Gcm => (1u64 << 36) - 32,
        AeadAlgorithm::ChaCha20Poly1305 => (1u64 << 38) - 64,
    };
    match u64::try_from(len) {
        Ok(l) if l <= max => Ok(()),
        _ => Err(CryptoError::InvalidLength),
    }
}

fn seal(
    key: &LessSafeKey,
    nonce: Nonce,
    aad: &[u8],
    in_out: &mut [u8],
) -> Result<[u8; TAG_LEN], CryptoError> {
    let tag = key
        .seal_in_place_separate_tag(nonce, Aad::from(aad), in_out)
        .map_err(|_| CryptoError::Internal)?;
    let mut out = [0u8; TAG_LEN];
    let t = tag.as_ref();
    if t.len() != TAG_LEN {
        return Err(CryptoError::Internal);
    }
    out.copy_from_slice(t);
    Ok(out)
}

fn open(
    key: &LessSafeKey,
    nonce: Nonce,
    aad: &[u8],
    in_out: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<(), CryptoError> {
    key.open_in_place_separate_tag(nonce, Aad::from(aad), tag, in_out)
        .map(|_| ())
        .map_err(|_| CryptoError::AuthenticationFailed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn key32(s: &str) -> [u8; 32] {
        h(s).try_into().unwrap()
    }

    /// 24-byte nonce from a 12-byte one, with junk in the ignored half.
    fn nonce_with_junk(n12: &[u8]) -> [u8; 24] {
        let mut n = [0xa5u8; 24];
        n[..12].copy_from_slice(n12);
        n
    }

    fn roundtrip_vector(
        alg: AeadAlgorithm,
        key: [u8; 32],
        nonce: [u8; 24],
        aad: &[u8],
        pt: &[u8],
        ct: &[u8],
        tag: &[u8],
    ) {
        for hint in [None, Some(nonce[..12].try_into().unwrap())] {
            let k = AeadKey::new(alg, &key, hint);
            let mut buf = pt.to_vec();
            let t = k.seal_in_place(&nonce, aad, &mut buf).unwrap();
            assert_eq!(buf, ct, "{alg:?} ciphertext");
            assert_eq!(t.to_vec(), tag, "{alg:?} tag");
            k.open_in_place(&nonce, aad, &mut buf, &t).unwrap();
            assert_eq!(buf, pt, "{alg:?} plaintext");
        }
    }

    /// McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)",
    /// Appendix B, test cases 13-16 (AES-256); also NIST's GCM test vectors.
    #[test]
    fn aes256gcm_mcgrew_viega() {
        let zero_key = [0u8; 32];
        let zero_nonce = nonce_with_junk(&[0u8; 12]);
        // Test case 13.
        roundtrip_vector(
            AeadAlgorithm::Aes256Gcm,
            zero_key,
            zero_nonce,
            b"",
            b"",
            b"",
            &h("530f8afbc74536b9a963b4f1c4cb738b"),
        );
        // Test case 14.
        roundtrip_vector(
            AeadAlgorithm::Aes256Gcm,
            zero_key,
            zero_nonce,
            b"",
            &[0u8; 16],
            &h("cea7403d4d606b6e074ec5d3baf39d18"),
            &h("d0d1c8a799996bf0265b98b5d48ab919"),
        );
        let key = key32("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
        let nonce = nonce_with_junk(&h("cafebabefacedbaddecaf888"));
        let pt = h("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255");
        // Test case 15.
        roundtrip_vector(
            AeadAlgorithm::Aes256Gcm,
            key,
            nonce,
            b"",
            &pt,
            &h("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad"),
            &h("b094dac5d93471bdec1a502270e3cc6c"),
        );
        // Test case 16 (with AAD, 60-byte plaintext).
        roundtrip_vector(
            AeadAlgorithm::Aes256Gcm,
            key,
            nonce,
            &h("feedfacedeadbeeffeedfacedeadbeefabaddad2"),
            &pt[..60],
            &h("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"),
            &h("76fc6ece0f4e1768cddf8853bb2d551b"),
        );
    }

    /// RFC 8439 §2.8.2 AEAD_CHACHA20_POLY1305 test vector.
    #[test]
    fn chacha20poly1305_rfc8439() {
        let key = key32("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
        let nonce = nonce_with_junk(&h("070000004041424344454647"));
        let aad = h("50515253c0c1c2c3c4c5c6c7");
        let pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let ct = h("d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116");
        let tag = h("1ae10b594f09e26a7e902ecbd0600691");
        roundtrip_vector(
            AeadAlgorithm::ChaCha20Poly1305,
            key,
            nonce,
            &aad,
            pt,
            &ct,
            &tag,
        );
    }

    /// C2SP XAES-256-GCM, the two published single vectors (including the
    /// intermediate values L, K1, Kx checked through the ciphertext).
    #[test]
    fn xaes256gcm_c2sp_vectors() {
        let nonce: [u8; 24] = *b"ABCDEFGHIJKLMNOPQRSTUVWX";
        let pt = b"XAES-256-GCM";
        let ct1 = h("ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271");
        roundtrip_vector(
            AeadAlgorithm::Xaes256Gcm,
            [0x01; 32],
            nonce,
            b"",
            pt,
            &ct1[..12],
            &ct1[12..],
        );
        let ct2 = h("986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d");
        roundtrip_vector(
            AeadAlgorithm::Xaes256Gcm,
            [0x03; 32],
            nonce,
            b"c2sp.org/XAES-256-GCM",
            pt,
            &ct2[..12],
            &ct2[12..],
        );
    }

    /// The C2SP intermediate values: K1 (both MSB cases) and the derived key
    /// Kx, checked by sealing with plain AES-256-GCM under the published Kx.
    #[test]
    fn xaes256gcm_c2sp_intermediates() {
        let nonce: [u8; 24] = *b"ABCDEFGHIJKLMNOPQRSTUVWX";
        for (k, k1, kx) in [
            (
                [0x01u8; 32],
                "e531954aca063d5b8d9c47a47d4cc6f0",
                "c8612c9ed53fe43e8e005b828a1631a0bbcb6ab2f46514ec4f439fcfd0fa969b",
            ),
            (
                [0x03u8; 32],
                "23810ec50edb99f374409466ed1f4b7b",
                "e9c621d4cdd9b11b00a6427ad7e559aeedd66b3857646677748f8ca796cb3fd8",
            ),
        ] {
            let x = XaesKey::new(&k, None);
            assert_eq!(x.k1.to_vec(), h(k1));
            let derived = x.derive(&nonce);
            let reference = lc_key(&lc::AES_256_GCM, &key32(kx));
            let mut a = *b"some plaintext";
            let mut b = a;
            let ta = seal(&derived, nonce12(&nonce, 12), b"ad", &mut a).unwrap();
            let tb = seal(&reference, nonce12(&nonce, 12), b"ad", &mut b).unwrap();
            assert_eq!(a, b);
            assert_eq!(ta, tb);
        }
    }

    /// C2SP XAES-256-GCM accumulated randomized test, 10 000 iterations: a
    /// SHAKE-128 stream (empty input) supplies key[32], nonce[24], a 1-byte
    /// length and plaintext, a 1-byte length and AAD; every ciphertext||tag is
    /// absorbed into a second SHAKE-128 whose first 32 output bytes are
    /// published.
    #[test]
    fn xaes256gcm_c2sp_accumulated_10k() {
        use shake::digest::{ExtendableOutput, Update, XofReader};
        let mut s = shake::Shake128::default().finalize_xof();
        let mut d = shake::Shake128::default();

        let mut first = [0u8; 16];
        shake::Shake128::default().finalize_xof().read(&mut first);
        assert_eq!(first.to_vec(), h("7f9c2ba4e88f827d616045507605853e"));

        for i in 0..10_000 {
            let mut key = [0u8; 32];
            s.read(&mut key);
            let mut nonce = [0u8; 24];
            s.read(&mut nonce);
            let mut len = [0u8; 1];
            s.read(&mut len);
            let mut pt = vec![0u8; usize::from(len[0])];
            s.read(&mut pt);
            s.read(&mut len);
            let mut aad = vec![0u8; usize::from(len[0])];
            s.read(&mut aad);

            // Alternate between the cached (hinted) and per-call paths.
            let hint = (i % 2 == 0).then(|| nonce[..12].try_into().unwrap());
            let k = AeadKey::new(AeadAlgorithm::Xaes256Gcm, &key, hint);
            let mut buf = pt.clone();
            let tag = k.seal_in_place(&nonce, &aad, &mut buf).unwrap();
            d.update(&buf);
            d.update(&tag);
            k.open_in_place(&nonce, &aad, &mut buf, &tag).unwrap();
            assert_eq!(buf, pt);
        }
        let mut out = [0u8; 32];
        d.finalize_xof().read(&mut out);
        assert_eq!(
            out.to_vec(),
            h("e6b9edf2df6cec60c8cbd864e2211b597fb69a529160cd040d56c0c210081939")
        );
    }

    const ALL: [AeadAlgorithm; 3] = [
        AeadAlgorithm::Aes256Gcm,
        AeadAlgorithm::ChaCha20Poly1305,
        AeadAlgorithm::Xaes256Gcm,
    ];

    #[test]
    fn tamper_is_rejected() {
        let key = [0x42u8; 32];
        let nonce = [7u8; 24];
        let aad = b"header bytes";
        let pt = b"attack at dawn, bring snacks".to_vec();
        for alg in ALL {
            let k = AeadKey::new(alg, &key, Some([7u8; 12]));
            let mut ct = pt.clone();
            let tag = k.seal_in_place(&nonce, aad, &mut ct).unwrap();
            assert_ne!(ct, pt);

            // Flipped tag bit.
            let mut bad_tag = tag;
            bad_tag[5] ^= 0x01;
            let mut b = ct.clone();
            assert_eq!(
                k.open_in_place(&nonce, aad, &mut b, &bad_tag),
                Err(CryptoError::AuthenticationFailed)
            );
            // Flipped ciphertext bit.
            let mut b = ct.clone();
            b[3] ^= 0x80;
            assert_eq!(
                k.open_in_place(&nonce, aad, &mut b, &tag),
                Err(CryptoError::AuthenticationFailed)
            );
            // Flipped AAD bit.
            let mut bad_aad = aad.to_vec();
            bad_aad[0] ^= 0x01;
            let mut b = ct.clone();
            assert_eq!(
                k.open_in_place(&nonce, &bad_aad, &mut b, &tag),
                Err(CryptoError::AuthenticationFailed)
            );
            // Truncated ciphertext.
            let mut b = ct[..ct.len() - 1].to_vec();
            assert_eq!(
                k.open_in_place(&nonce, aad, &mut b, &tag),
                Err(CryptoError::AuthenticationFailed)
            );
            // Different nonce (first half).
            let mut n2 = nonce;
            n2[0] ^= 1;
            let mut b = ct.clone();
            assert_eq!(
                k.open_in_place(&n2, aad, &mut b, &tag),
                Err(CryptoError::AuthenticationFailed)
            );
            // Wrong key.
            let other = AeadKey::new(alg, &[0x43u8; 32], None);
            let mut b = ct.clone();
            assert_eq!(
                other.open_in_place(&nonce, aad, &mut b, &tag),
                Err(CryptoError::AuthenticationFailed)
            );
            // Sanity: the untampered message opens.
            let mut b = ct.clone();
            k.open_in_place(&nonce, aad, &mut b, &tag).unwrap();
            assert_eq!(b, pt);
        }
    }

    /// AES-256-GCM and ChaCha20-Poly1305 ignore `nonce[12..]`;
    /// XAES-256-GCM uses it.
    #[test]
    fn second_nonce_half() {
        let key = [9u8; 32];
        let pt = b"0123456789abcdef0123".to_vec();
        let mut n1 = [1u8; 24];
        let mut n2 = n1;
        n1[12..].fill(0x00);
        n2[12..].fill(0xff);
        for alg in ALL {
            let k = AeadKey::new(alg, &key, None);
            let mut c1 = pt.clone();
            let t1 = k.seal_in_place(&n1, b"", &mut c1).unwrap();
            let mut c2 = pt.clone();
            let t2 = k.seal_in_place(&n2, b"", &mut c2).unwrap();
            let same = c1 == c2 && t1 == t2;
            assert_eq!(same, alg != AeadAlgorithm::Xaes256Gcm, "{alg:?}");
            // Opening with the other half-nonce works iff it is ignored.
            let opened = k.open_in_place(&n2, b"", &mut c1, &t1).is_ok();
            assert_eq!(opened, alg != AeadAlgorithm::Xaes256Gcm, "{alg:?}");
        }
    }

    /// XAES: the cached prefix and the per-call derivation agree, and a key
    /// with a hint still handles other prefixes.
    #[test]
    fn xaes_cached_and_uncached_agree() {
        let key = [0x5au8; 32];
        let hinted = AeadKey::new(AeadAlgorithm::Xaes256Gcm, &key, Some([1u8; 12]));
        let plain = AeadKey::new(AeadAlgorithm::Xaes256Gcm, &key, None);
        for first in [1u8, 2u8] {
            let mut nonce = [first; 24];
            nonce[20] = 0x33;
            let mut a = vec![0x11u8; 1000];
            let mut b = a.clone();
            let ta = hinted.seal_in_place(&nonce, b"x", &mut a).unwrap();
            let tb = plain.seal_in_place(&nonce, b"x", &mut b).unwrap();
            assert_eq!(a, b);
            assert_eq!(ta, tb);
            plain.open_in_place(&nonce, b"x", &mut a, &ta).unwrap();
            hinted.open_in_place(&nonce, b"x", &mut b, &tb).unwrap();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn empty_messages() {
        for alg in ALL {
            let k = AeadKey::new(alg, &[1u8; 32], None);
            let nonce = [2u8; 24];
            let mut empty: [u8; 0] = [];
            let tag = k.seal_in_place(&nonce, b"only aad", &mut empty).unwrap();
            k.open_in_place(&nonce, b"only aad", &mut empty, &tag)
                .unwrap();
            assert!(k
                .open_in_place(&nonce, b"other aad", &mut empty, &tag)
                .is_err());
        }
    }

    #[test]
    fn debug_prints_only_algorithm() {
        let key = [0xabu8; 32];
        for alg in ALL {
            let k = AeadKey::new(alg, &key, Some([0xcd; 12]));
            let s = format!("{k:?}");
            assert!(s.contains(&format!("{alg:?}")), "{s}");
            assert!(!s.to_lowercase().contains("abab"), "{s}");
            assert!(!s.contains("171"), "{s}"); // 0xab in decimal
            assert_eq!(k.algorithm(), alg);
        }
    }

    #[test]
    fn send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<AeadKey>();
    }
}
