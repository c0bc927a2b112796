//! The operating system's random number generator as an [`xtmp_proto::SecureRandom`].

use xtmp_proto::SecureRandom;

/// Randomness from the operating system (`getrandom`), the generator the runtime hands to
/// the protocol core for handshakes, session ids, cookies and key rotation.
///
/// It is a zero-sized handle: create one wherever it is needed (`let mut rng = OsRng;`).
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRng;

impl SecureRandom for OsRng {
    /// Fills `dest` from `getrandom`, falling back to the crypto backend's generator.
    ///
    /// # Panics
    /// If neither the operating system nor the crypto backend can produce random bytes.
    /// Continuing without randomness would silently produce predictable keys, so this is
    /// treated as a fatal environment failure (never caused by network input).
    fn fill(&mut self, dest: &mut [u8]) {
        if getrandom::fill(dest).is_ok() {
            return;
        }
        if xtmp_crypto::fill_random(dest).is_ok() {
            return;
        }
        // Invariant: a system without a working CSPRNG cannot run XTMP safely.
        panic!("no secure random source available");
    }
}

/// Wall-clock time in nanoseconds since the Unix epoch (the handshake's anti-replay
/// timestamp). Returns 0 if the clock is before 1970.
pub(crate) fn unix_time_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_distinct_bytes() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        OsRng.fill(&mut a);
        OsRng.fill(&mut b);
        assert_ne!(a, b);
        assert!(unix_time_ns() > 0);
    }
}
