//! Randomness is passed into the core, never taken from the environment.

/// A cryptographically secure random source supplied by the caller (the runtime uses the
/// operating system's generator).
pub trait SecureRandom {
    /// Fills `dest` with random bytes.
    fn fill(&mut self, dest: &mut [u8]);
}

impl<R: SecureRandom + ?Sized> SecureRandom for &mut R {
    fn fill(&mut self, dest: &mut [u8]) {
        (**self).fill(dest)
    }
}

/// A deterministic generator for tests, fuzzing and test vectors: SHA-256 in counter mode
/// over a seed. **Never use it for real keys** — its name says so on purpose.
#[derive(Clone)]
pub struct InsecureDeterministicRngForTestingOnly {
    seed: [u8; 32],
    counter: u64,
}

impl core::fmt::Debug for InsecureDeterministicRngForTestingOnly {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("InsecureDeterministicRngForTestingOnly")
    }
}

impl InsecureDeterministicRngForTestingOnly {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: [u8; 32]) -> Self {
        Self { seed, counter: 0 }
    }
}

impl SecureRandom for InsecureDeterministicRngForTestingOnly {
    fn fill(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(32) {
            let block = xtmp_crypto::kdf::sha256(&[
                b"xtmp test rng",
                &self.seed,
                &self.counter.to_be_bytes(),
            ]);
            self.counter = self.counter.wrapping_add(1);
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }
}
