//! X-Wing, the general-purpose hybrid post-quantum KEM combining ML-KEM-768
//! and X25519 ([draft-connolly-cfrg-xwing-kem-10]).
//!
//! * Decapsulation (secret) key: a 32-byte seed, expanded with
//!   `SHAKE256(seed, 96 bytes)` into the ML-KEM-768 key generation seeds
//!   `d = expanded[0..32]`, `z = expanded[32..64]` and the X25519 secret
//!   `sk_X = expanded[64..96]`.
//! * Encapsulation (public) key: `pk_M (1184 bytes) || pk_X (32 bytes)`.
//! * Ciphertext: `ct_M (1088 bytes) || ct_X (32 bytes)`.
//! * Shared secret:
//!   `SHA3-256(ss_M || ss_X || ct_X || pk_X || XWingLabel)` with
//!   `XWingLabel = "\.//^\"` (`5c2e2f2f5e5c`).
//!
//! ML-KEM-768 is `libcrux-ml-kem` (its `unpacked` API, AVX2 or portable
//! backend chosen at run time), X25519 is `aws-lc-rs`, SHA3-256 is `sha3` and
//! SHAKE-256 is `shake`. Keys keep their expanded forms, as permitted by §5.5.1
//! of the draft: [`XWingSecretKey`] caches the unpacked ML-KEM key pair and the
//! X25519 private key, and [`XWingPublicKey`] caches the unpacked ML-KEM
//! encapsulation key (including the sampled matrix `A`).
//!
//! Validated against the draft's Appendix C test vectors
//! (`docs/test-vectors/xwing.json`).
//!
//! [draft-connolly-cfrg-xwing-kem-10]: https://datatracker.ietf.org/doc/draft-connolly-cfrg-xwing-kem/

use core::fmt;

use aws_lc_rs::agreement::{self, UnparsedPublicKey, X25519};
use libcrux_ml_kem::mlkem768::{self, MlKem768Ciphertext, MlKem768PublicKey};
use sha3::{Digest, Sha3_256};
use shake::{ExtendableOutput, Update, XofReader};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::CryptoError;

/// Length of an X-Wing encapsulation (public) key, in bytes.
pub const PUBLIC_KEY_LEN: usize = 1216;
/// Length of an X-Wing ciphertext, in bytes.
pub const CIPHERTEXT_LEN: usize = 1120;
/// Length of an X-Wing decapsulation key seed, in bytes.
pub const SEED_LEN: usize = 32;
/// Length of an X-Wing shared secret, in bytes.
pub const SHARED_SECRET_LEN: usize = 32;
/// Length of the randomness consumed by
/// [`XWingPublicKey::encapsulate_derand`], in bytes.
pub const ENCAPS_SEED_LEN: usize = 64;

/// Length of the ML-KEM-768 encapsulation key inside the X-Wing public key.
const MLKEM_PK_LEN: usize = 1184;
/// Length of the ML-KEM-768 ciphertext inside the X-Wing ciphertext.
const MLKEM_CT_LEN: usize = 1088;
/// X25519 key / point length.
const X25519_LEN: usize = 32;

/// The X-Wing domain separator, `\.//^\`.
const XWING_LABEL: [u8; 6] = [0x5c, 0x2e, 0x2f, 0x2f, 0x5e, 0x5c];

/// A 32-byte X-Wing shared secret, zeroized on drop.
///
/// Equality (`==`) is constant time. `Debug` does not print the secret.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SharedSecret([u8; SHARED_SECRET_LEN]);

impl SharedSecret {
    /// The secret bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; SHARED_SECRET_LEN] {
        &self.0
    }
}

impl ConstantTimeEq for SharedSecret {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.0.ct_eq(&other.0)
    }
}

impl PartialEq for SharedSecret {
    fn eq(&self, other: &Self) -> bool {
        bool::from(ConstantTimeEq::ct_eq(self, other))
    }
}

impl Eq for SharedSecret {}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret { .. }")
    }
}

// ---------------------------------------------------------------------------
// ML-KEM-768 backend dispatch (libcrux `unpacked` API).
//
// libcrux offers the unpacked API per instantiation (`portable`, `avx2`); the
// AVX2 functions must only be called on CPUs with AVX2, so — like libcrux's
// own multiplexing API — we detect the CPU feature at run time and remember
// which representation each key uses.
// ---------------------------------------------------------------------------

/// Which libcrux instantiation a key's unpacked representation belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Backend {
    /// The fastest backend supported by this CPU.
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                return Backend::Avx2;
            }
        }
        Backend::Portable
    }
}

/// Unpacked ML-KEM-768 encapsulation key (boxed: several KiB).
#[derive(Clone)]
enum MlKemPublic {
    Portable(Box<mlkem768::portable::unpacked::MlKem768PublicKeyUnpacked>),
    #[cfg(target_arch = "x86_64")]
    Avx2(Box<mlkem768::avx2::unpacked::MlKem768PublicKeyUnpacked>),
}

/// Unpacked ML-KEM-768 key pair (boxed: several KiB).
enum MlKemKeyPair {
    Portable(Box<mlkem768::portable::unpacked::MlKem768KeyPairUnpacked>),
    #[cfg(target_arch = "x86_64")]
    Avx2(Box<mlkem768::avx2::unpacked::MlKem768KeyPairUnpacked>),
}

impl MlKemPublic {
    /// Unpacks a (validated) serialized encapsulation key.
    fn unpack(backend: Backend, pk: &MlKem768PublicKey) -> Self {
        match backend {
            Backend::Portable => {
                use mlkem768::portable::unpacked as u;
                let mut out = Box::new(u::init_public_key());
                u::unpacked_public_key(pk, &mut out);
                MlKemPublic::Portable(out)
            }
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => {
                use mlkem768::avx2::unpacked as u;
                let mut out = Box::new(u::init_public_key());
                u::unpacked_public_key(pk, &mut out);
                MlKemPublic::Avx2(out)
            }
        }
    }

    /// ML-KEM-768.Encaps_internal(pk, m): returns `(ct_M, ss_M)`.
    fn encapsulate(&self, m: [u8; 32]) -> (MlKem768Ciphertext, [u8; 32]) {
        match self {
            MlKemPublic::Portable(pk) => mlkem768::portable::unpacked::encapsulate(pk, m),
            #[cfg(target_arch = "x86_64")]
            MlKemPublic::Avx2(pk) => mlkem768::avx2::unpacked::encapsulate(pk, m),
        }
    }
}

impl MlKemKeyPair {
    /// ML-KEM-768.KeyGen_internal(d, z) with `d_z = d || z`.
    fn generate(backend: Backend, d_z: [u8; 64]) -> Self {
        match backend {
            Backend::Portable => {
                use mlkem768::portable::unpacked as u;
                let mut kp = Box::new(u::init_key_pair());
                u::generate_key_pair_mut(d_z, &mut kp);
                MlKemKeyPair::Portable(kp)
            }
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => {
                use mlkem768::avx2::unpacked as u;
                let mut kp = Box::new(u::init_key_pair());
                u::generate_key_pair_mut(d_z, &mut kp);
                MlKemKeyPair::Avx2(kp)
            }
        }
    }

    /// The serialized encapsulation key `pk_M`.
    fn serialized_public_key(&self) -> MlKem768PublicKey {
        match self {
            MlKemKeyPair::Portable(kp) => {
                mlkem768::portable::unpacked::key_pair_serialized_public_key(kp)
            }
            #[cfg(target_arch = "x86_64")]
            MlKemKeyPair::Avx2(kp) => mlkem768::avx2::unpacked::key_pair_serialized_public_key(kp),
        }
    }

    /// A copy of the unpacked encapsulation key.
    fn public(&self) -> MlKemPublic {
        match self {
            MlKemKeyPair::Portable(kp) => {
                use mlkem768::portable::unpacked as u;
                let mut pk = Box::new(u::init_public_key());
                u::public_key(kp, &mut pk);
                MlKemPublic::Portable(pk)
            }
            #[cfg(target_arch = "x86_64")]
            MlKemKeyPair::Avx2(kp) => {
                use mlkem768::avx2::unpacked as u;
                let mut pk = Box::new(u::init_public_key());
                u::public_key(kp, &mut pk);
                MlKemPublic::Avx2(pk)
            }
        }
    }

    /// ML-KEM-768.Decaps (with implicit rejection): returns `ss_M`.
    fn decapsulate(&self, ct: &MlKem768Ciphertext) -> [u8; 32] {
        match self {
            MlKemKeyPair::Portable(kp) => mlkem768::portable::unpacked::decapsulate(kp, ct),
            #[cfg(target_arch = "x86_64")]
            MlKemKeyPair::Avx2(kp) => mlkem768::avx2::unpacked::decapsulate(kp, ct),
        }
    }
}

impl Drop for MlKemKeyPair {
    /// Best-effort wipe of the unpacked secret key: libcrux's unpacked types
    /// implement neither `Zeroize` nor `Copy`, so (without `unsafe`) we
    /// overwrite the whole key pair with the all-zero default value and pass
    /// it through [`core::hint::black_box`] so the store is not optimized
    /// away before the box is freed.
    fn drop(&mut self) {
        match self {
            MlKemKeyPair::Portable(kp) => {
                **kp = mlkem768::portable::unpacked::init_key_pair();
                core::hint::black_box(&**kp);
            }
            #[cfg(target_arch = "x86_64")]
            MlKemKeyPair::Avx2(kp) => {
                **kp = mlkem768::avx2::unpacked::init_key_pair();
                core::hint::black_box(&**kp);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Public key
// ---------------------------------------------------------------------------

/// An X-Wing encapsulation (public) key, with the ML-KEM-768 part
/// pre-unpacked for fast repeated encapsulation.
///
/// `Debug` prints only a short fingerprint (the first 8 bytes of
/// SHA-256 of the encoded key, in hex). Equality compares the encoding.
#[derive(Clone)]
pub struct XWingPublicKey {
    bytes: [u8; PUBLIC_KEY_LEN],
    mlkem: MlKemPublic,
}

impl XWingPublicKey {
    /// Parses an encoded encapsulation key `pk_M || pk_X`.
    ///
    /// # Errors
    ///
    /// * [`CryptoError::InvalidLength`] unless `bytes.len() == 1216`.
    /// * [`CryptoError::InvalidPublicKey`] if the ML-KEM-768 part fails the
    ///   FIPS 203 §7.2 encapsulation key (modulus) check.
    ///
    /// The X25519 part is not checked here; see
    /// [`XWingPublicKey::encapsulate_derand`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        Self::from_bytes_with(bytes, Backend::detect())
    }

    fn from_bytes_with(bytes: &[u8], backend: Backend) -> Result<Self, CryptoError> {
        let bytes: &[u8; PUBLIC_KEY_LEN] =
            bytes.try_into().map_err(|_| CryptoError::InvalidLength)?;
        let pk_m = MlKem768PublicKey::try_from(&bytes[..MLKEM_PK_LEN])
            .map_err(|_| CryptoError::InvalidLength)?;
        if !mlkem768::validate_public_key(&pk_m) {
            return Err(CryptoError::InvalidPublicKey);
        }
        Ok(Self {
            bytes: *bytes,
            mlkem: MlKemPublic::unpack(backend, &pk_m),
        })
    }

    /// The encoded key `pk_M || pk_X` (1216 bytes).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.bytes
    }

    fn pk_x(&self) -> &[u8] {
        &self.bytes[MLKEM_PK_LEN..]
    }

    /// Deterministic encapsulation (X-Wing `EncapsulateDerand`).
    ///
    /// `eseed[0..32]` is the ML-KEM-768 randomness `m` and `eseed[32..64]` the
    /// X25519 ephemeral secret `ek_X`. `eseed` must be fresh, uniformly random
    /// and secret for every call (see [`XWingPublicKey::encapsulate`]).
    /// Returns the 1120-byte ciphertext and the shared secret.
    ///
    /// # Errors
    ///
    /// [`CryptoError::InvalidPublicKey`] if the X25519 component of this key
    /// is a low-order point (the X25519 output would be all zeros). The draft
    /// leaves this case unchecked; we refuse to encapsulate to such a key,
    /// which no honest key generation produces. [`CryptoError::Internal`] on
    /// an unexpected failure of the underlying library.
    pub fn encapsulate_derand(
        &self,
        eseed: &[u8; ENCAPS_SEED_LEN],
    ) -> Result<([u8; CIPHERTEXT_LEN], SharedSecret), CryptoError> {
        let mut m = Zeroizing::new([0u8; 32]);
        m.copy_from_slice(&eseed[..32]);

        // X25519: ct_X = X25519(ek_X, 9), ss_X = X25519(ek_X, pk_X).
        let ek_x = agreement::PrivateKey::from_private_key(&X25519, &eseed[32..])
            .map_err(|_| CryptoError::Internal)?;
        let ct_x = x25519_public(&ek_x)?;
        let mut ss_x = Zeroizing::new([0u8; X25519_LEN]);
        // aws-lc rejects an all-zero X25519 result (low-order peer point).
        x25519_agree(&ek_x, self.pk_x(), &mut ss_x).map_err(|_| CryptoError::InvalidPublicKey)?;

        // ML-KEM-768.Encaps_internal(pk_M, m).
        let (ct_m, ss_m) = self.mlkem.encapsulate(*m);
        let ss_m = Zeroizing::new(ss_m);

        let ss = combiner(&ss_m, &ss_x, &ct_x, self.pk_x());
        let mut ct = [0u8; CIPHERTEXT_LEN];
        ct[..MLKEM_CT_LEN].copy_from_slice(ct_m.as_slice());
        ct[MLKEM_CT_LEN..].copy_from_slice(&ct_x);
        Ok((ct, ss))
    }

    /// Randomized encapsulation (X-Wing `Encapsulate`): `encapsulate_derand`
    /// with 64 bytes from the operating system's CSPRNG (via `aws-lc-rs`).
    ///
    /// # Errors
    ///
    /// As [`XWingPublicKey::encapsulate_derand`], plus
    /// [`CryptoError::Internal`] if the random number generator fails.
    pub fn encapsulate(&self) -> Result<([u8; CIPHERTEXT_LEN], SharedSecret), CryptoError> {
        let mut eseed = Zeroizing::new([0u8; ENCAPS_SEED_LEN]);
        crate::fill_random(&mut eseed[..])?;
        self.encapsulate_derand(&eseed)
    }
}

impl PartialEq for XWingPublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes[..] == other.bytes[..]
    }
}

impl Eq for XWingPublicKey {}

impl fmt::Debug for XWingPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digest = crate::kdf::sha256(&[&self.bytes]);
        write!(f, "XWingPublicKey {{ fingerprint: ")?;
        for b in &digest[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, " }}")
    }
}

// ---------------------------------------------------------------------------
// Secret key
// ---------------------------------------------------------------------------

/// An X-Wing decapsulation (secret) key.
///
/// Keeps the 32-byte seed plus the expanded ML-KEM-768 key pair (libcrux
/// unpacked form) and the X25519 private key, so decapsulation does not
/// re-derive them. The seed and the ML-KEM key pair are wiped on drop (the
/// latter best-effort, see the crate docs); the X25519 key lives in aws-lc,
/// which cleanses freed memory. `Debug` prints `XWingSecretKey { .. }`.
pub struct XWingSecretKey {
    seed: Zeroizing<[u8; SEED_LEN]>,
    mlkem: MlKemKeyPair,
    x25519: agreement::PrivateKey,
    public: XWingPublicKey,
}

impl XWingSecretKey {
    /// Derives the key pair from a 32-byte seed (X-Wing
    /// `GenerateKeyPairDerand`): `expanded = SHAKE256(seed, 96 bytes)`;
    /// ML-KEM-768 `KeyGen_internal(d = expanded[0..32], z = expanded[32..64])`;
    /// `sk_X = expanded[64..96]`.
    #[must_use]
    pub fn from_seed(seed: &[u8; SEED_LEN]) -> Self {
        Self::from_seed_with(seed, Backend::detect())
    }

    /// Generates a fresh key pair (X-Wing `GenerateKeyPair`) from 32 bytes of
    /// the operating system's CSPRNG (via `aws-lc-rs`).
    ///
    /// # Errors
    ///
    /// [`CryptoError::Internal`] if the random number generator fails.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut seed = Zeroizing::new([0u8; SEED_LEN]);
        crate::fill_random(&mut seed[..])?;
        Ok(Self::from_seed(&seed))
    }

    fn from_seed_with(seed: &[u8; SEED_LEN], backend: Backend) -> Self {
        let mut expanded = Zeroizing::new([0u8; 96]);
        let mut xof = shake::Shake256::default();
        xof.update(seed);
        xof.finalize_xof().read(&mut expanded[..]);

        let mut d_z = Zeroizing::new([0u8; 64]);
        d_z.copy_from_slice(&expanded[..64]);
        let mlkem = MlKemKeyPair::generate(backend, *d_z);

        // Invariant: aws-lc accepts every 32-byte string as an X25519 private
        // key and derives its public key infallibly; these calls can only
        // fail on memory allocation failure (which aborts in Rust anyway).
        #[allow(clippy::expect_used)]
        let x25519 = agreement::PrivateKey::from_private_key(&X25519, &expanded[64..])
            .expect("any 32-byte string is an X25519 private key");
        #[allow(clippy::expect_used)]
        let pk_x = x25519_public(&x25519).expect("X25519 public key derivation is infallible");

        let mut bytes = [0u8; PUBLIC_KEY_LEN];
        bytes[..MLKEM_PK_LEN].copy_from_slice(mlkem.serialized_public_key().as_slice());
        bytes[MLKEM_PK_LEN..].copy_from_slice(&pk_x);
        let public = XWingPublicKey {
            bytes,
            mlkem: mlkem.public(),
        };
        Self {
            seed: Zeroizing::new(*seed),
            mlkem,
            x25519,
            public,
        }
    }

    /// The 32-byte seed (the serialized X-Wing decapsulation key).
    #[must_use]
    pub fn seed(&self) -> &[u8; SEED_LEN] {
        &self.seed
    }

    /// The matching encapsulation (public) key.
    #[must_use]
    pub fn public_key(&self) -> &XWingPublicKey {
        &self.public
    }

    /// Decapsulates a ciphertext (X-Wing `Decapsulate`).
    ///
    /// A well-formed but invalid or tampered ciphertext does **not** produce
    /// an error: ML-KEM's implicit rejection yields an unrelated,
    /// unpredictable shared secret, so the failure only shows up when the
    /// secret is used. Likewise a low-order `ct_X` is processed as the draft
    /// specifies (with an all-zero X25519 output), without an error.
    ///
    /// # Errors
    ///
    /// [`CryptoError::InvalidLength`] unless `ct.len() == 1120`.
    pub fn decapsulate(&self, ct: &[u8]) -> Result<SharedSecret, CryptoError> {
        let ct: &[u8; CIPHERTEXT_LEN] = ct.try_into().map_err(|_| CryptoError::InvalidLength)?;
        let ct_m = MlKem768Ciphertext::try_from(&ct[..MLKEM_CT_LEN])
            .map_err(|_| CryptoError::InvalidLength)?;
        let ct_x = &ct[MLKEM_CT_LEN..];

        let ss_m = Zeroizing::new(self.mlkem.decapsulate(&ct_m));
        let mut ss_x = Zeroizing::new([0u8; X25519_LEN]);
        // aws-lc refuses to return an all-zero X25519 output (low-order
        // `ct_X`); the draft's X25519 returns it, so keep `ss_x` all zero in
        // that case. `ct_X` is public, so this branch leaks nothing secret.
        if x25519_agree(&self.x25519, ct_x, &mut ss_x).is_err() {
            ss_x.zeroize();
        }
        Ok(combiner(&ss_m, &ss_x, ct_x, self.public.pk_x()))
    }
}

impl fmt::Debug for XWingSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("XWingSecretKey { .. }")
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `X25519(sk, 9)`.
fn x25519_public(sk: &agreement::PrivateKey) -> Result<[u8; X25519_LEN], CryptoError> {
    let pk = sk.compute_public_key().map_err(|_| CryptoError::Internal)?;
    pk.as_ref().try_into().map_err(|_| CryptoError::Internal)
}

/// `X25519(sk, peer)` into `out`. Fails if aws-lc rejects the result (it
/// refuses all-zero outputs, i.e. low-order `peer` points).
fn x25519_agree(
    sk: &agreement::PrivateKey,
    peer: &[u8],
    out: &mut [u8; X25519_LEN],
) -> Result<(), CryptoError> {
    agreement::agree(
        sk,
        UnparsedPublicKey::new(&X25519, peer),
        CryptoError::Internal,
        |secret| {
            if secret.len() != X25519_LEN {
                return Err(CryptoError::Internal);
            }
            out.copy_from_slice(secret);
            Ok(())
        },
    )
}

/// The X-Wing combiner: `SHA3-256(ss_M || ss_X || ct_X || pk_X || XWingLabel)`.
fn combiner(ss_m: &[u8; 32], ss_x: &[u8; 32], ct_x: &[u8], pk_x: &[u8]) -> SharedSecret {
    let mut h = Sha3_256::new();
    Digest::update(&mut h, ss_m);
    Digest::update(&mut h, ss_x);
    Digest::update(&mut h, ct_x);
    Digest::update(&mut h, pk_x);
    Digest::update(&mut h, XWING_LABEL);
    let mut ss = SharedSecret([0u8; SHARED_SECRET_LEN]);
    h.finalize_into((&mut ss.0).into());
    ss
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(serde::Deserialize)]
    struct VectorFile {
        source: String,
        vectors: Vec<Vector>,
    }

    #[derive(serde::Deserialize)]
    struct Vector {
        seed: String,
        eseed: String,
        pk: String,
        ct: String,
        ss: String,
    }

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn vectors() -> VectorFile {
        serde_json::from_str(include_str!("../../docs/test-vectors/xwing.json")).unwrap()
    }

    fn backends() -> Vec<Backend> {
        let mut v = vec![Backend::Portable];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            v.push(Backend::Avx2);
        }
        v
    }

    /// Draft Appendix C vectors, on every backend this CPU supports, and
    /// mixing backends between sender and receiver.
    #[test]
    fn draft_vectors_all_backends() {
        let file = vectors();
        assert!(file.source.contains("draft-connolly-cfrg-xwing-kem"));
        assert_eq!(file.vectors.len(), 3);
        for v in &file.vectors {
            let seed: [u8; 32] = h(&v.seed).try_into().unwrap();
            let eseed: [u8; 64] = h(&v.eseed).try_into().unwrap();
            for b_sk in backends() {
                let sk = XWingSecretKey::from_seed_with(&seed, b_sk);
                assert_eq!(sk.public_key().as_bytes().to_vec(), h(&v.pk), "pk {b_sk:?}");
                for b_pk in backends() {
                    let pk = XWingPublicKey::from_bytes_with(&h(&v.pk), b_pk).unwrap();
                    let (ct, ss) = pk.encapsulate_derand(&eseed).unwrap();
                    assert_eq!(ct.to_vec(), h(&v.ct), "ct {b_pk:?}");
                    assert_eq!(ss.as_bytes().to_vec(), h(&v.ss), "ss {b_pk:?}");
                    let ss2 = sk.decapsulate(&ct).unwrap();
                    assert_eq!(ss2, ss, "decaps {b_sk:?}/{b_pk:?}");
                }
                // Encapsulating with the secret key's cached public key.
                let (ct, ss) = sk.public_key().encapsulate_derand(&eseed).unwrap();
                assert_eq!(ct.to_vec(), h(&v.ct));
                assert_eq!(ss.as_bytes().to_vec(), h(&v.ss));
            }
        }
    }

    /// Cross-check the unpacked key generation against libcrux's packed
    /// (multiplexed) API, and decapsulation of a low-order `ct_X` against
    /// the combiner computed by hand with `ss_X = 0^32` as the draft does.
    #[test]
    fn low_order_ct_x_matches_spec() {
        let seed = [0x42u8; 32];
        let mut expanded = [0u8; 96];
        let mut xof = shake::Shake256::default();
        xof.update(&seed);
        xof.finalize_xof().read(&mut expanded);
        let packed = mlkem768::generate_key_pair(expanded[..64].try_into().unwrap());

        for b in backends() {
            let sk = XWingSecretKey::from_seed_with(&seed, b);
            assert_eq!(
                &sk.public_key().as_bytes()[..MLKEM_PK_LEN],
                packed.pk().as_slice()
            );
            let (mut ct, _) = sk.public_key().encapsulate_derand(&[7u8; 64]).unwrap();
            // u = 0 and u = 1 are low-order points.
            for low in [[0u8; 32], {
                let mut one = [0u8; 32];
                one[0] = 1;
                one
            }] {
                ct[MLKEM_CT_LEN..].copy_from_slice(&low);
                let got = sk.decapsulate(&ct).unwrap();
                let ct_m = MlKem768Ciphertext::try_from(&ct[..MLKEM_CT_LEN]).unwrap();
                let ss_m = mlkem768::decapsulate(packed.private_key(), &ct_m);
                let want = combiner(&ss_m, &[0u8; 32], &low, sk.public_key().pk_x());
                assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn encapsulate_to_low_order_x25519_key_fails() {
        let sk = XWingSecretKey::from_seed(&[1u8; 32]);
        let mut bytes = *sk.public_key().as_bytes();
        bytes[MLKEM_PK_LEN..].fill(0);
        let pk = XWingPublicKey::from_bytes(&bytes).unwrap();
        assert_eq!(
            pk.encapsulate_derand(&[3u8; 64]).err(),
            Some(CryptoError::InvalidPublicKey)
        );
    }

    #[test]
    fn wrong_lengths_rejected() {
        let sk = XWingSecretKey::from_seed(&[2u8; 32]);
        let pk = sk.public_key().as_bytes().to_vec();
        for len in [
            0,
            1,
            PUBLIC_KEY_LEN - 1,
            PUBLIC_KEY_LEN + 1,
            2 * PUBLIC_KEY_LEN,
        ] {
            let mut b = pk.clone();
            b.resize(len, 0);
            assert_eq!(
                XWingPublicKey::from_bytes(&b).err(),
                Some(CryptoError::InvalidLength),
                "{len}"
            );
        }
        let (ct, _) = sk.public_key().encapsulate_derand(&[4u8; 64]).unwrap();
        for len in [0, 1, 32, CIPHERTEXT_LEN - 1, CIPHERTEXT_LEN + 1, 4096] {
            let mut c = ct.to_vec();
            c.resize(len, 0);
            assert_eq!(
                sk.decapsulate(&c).err(),
                Some(CryptoError::InvalidLength),
                "{len}"
            );
        }
    }

    #[test]
    fn mlkem_modulus_check() {
        let sk = XWingSecretKey::from_seed(&[5u8; 32]);
        let mut bytes = *sk.public_key().as_bytes();
        // First 12-bit coefficient := 0xfff >= q = 3329.
        bytes[0] = 0xff;
        bytes[1] |= 0x0f;
        assert_eq!(
            XWingPublicKey::from_bytes(&bytes).err(),
            Some(CryptoError::InvalidPublicKey)
        );
        // The X25519 half is arbitrary bytes: accepted by from_bytes.
        let mut bytes = *sk.public_key().as_bytes();
        bytes[MLKEM_PK_LEN..].fill(0xff);
        assert!(XWingPublicKey::from_bytes(&bytes).is_ok());
    }

    /// Implicit rejection: a tampered ciphertext decapsulates without error
    /// to a different secret.
    #[test]
    fn tampered_ciphertext_gives_different_secret() {
        let sk = XWingSecretKey::from_seed(&[6u8; 32]);
        let (ct, ss) = sk.public_key().encapsulate_derand(&[8u8; 64]).unwrap();
        assert_eq!(sk.decapsulate(&ct).unwrap(), ss);
        for pos in [0, 500, MLKEM_CT_LEN - 1, MLKEM_CT_LEN, CIPHERTEXT_LEN - 1] {
            let mut bad = ct;
            bad[pos] ^= 0x01;
            let ss_bad = sk.decapsulate(&bad).unwrap();
            assert_ne!(ss_bad, ss, "byte {pos}");
            // Deterministic.
            assert_eq!(sk.decapsulate(&bad).unwrap(), ss_bad);
        }
        // Wrong key.
        let other = XWingSecretKey::from_seed(&[7u8; 32]);
        assert_ne!(other.decapsulate(&ct).unwrap(), ss);
    }

    #[test]
    fn randomized_roundtrip() {
        let sk = XWingSecretKey::generate().unwrap();
        let pk = XWingPublicKey::from_bytes(sk.public_key().as_bytes()).unwrap();
        assert_eq!(&pk, sk.public_key());
        let (ct1, ss1) = pk.encapsulate().unwrap();
        let (ct2, ss2) = pk.encapsulate().unwrap();
        assert_ne!(ct1, ct2);
        assert_ne!(ss1, ss2);
        assert_eq!(sk.decapsulate(&ct1).unwrap(), ss1);
        assert_eq!(sk.decapsulate(&ct2).unwrap(), ss2);
        let sk2 = XWingSecretKey::from_seed(sk.seed());
        assert_eq!(sk2.public_key(), sk.public_key());
    }

    #[test]
    fn debug_prints_no_secret() {
        let seed = [0xabu8; 32];
        let sk = XWingSecretKey::from_seed(&seed);
        let s = format!("{sk:?}");
        assert_eq!(s, "XWingSecretKey { .. }");
        let (_, ss) = sk.public_key().encapsulate_derand(&[0xcd; 64]).unwrap();
        assert_eq!(format!("{ss:?}"), "SharedSecret { .. }");
        let p = format!("{:?}", sk.public_key());
        assert!(p.starts_with("XWingPublicKey { fingerprint: "), "{p}");
        assert!(p.len() < 64, "{p}");
        let ss_hex = hex::encode(ss.as_bytes());
        assert!(!p.contains(&ss_hex[..8]));
        assert!(!p.contains("abab"));
    }

    #[test]
    fn send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<XWingSecretKey>();
        assert_send_sync::<XWingPublicKey>();
        assert_send_sync::<SharedSecret>();
    }
}
