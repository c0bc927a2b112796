//! Settings of the application layer: the `[xtmp_services]` section of the server's
//! configuration file.
//!
//! ```toml
//! [xtmp_services]
//! data_dir = "/var/lib/xtmp"          # the redb file and the signing key live here
//! # ML-DSA-65 public key (hex) of the mint authority: its wallet may mint.
//! mint_authority = "…3904 hex digits…"
//! # Applied once, in the first transaction on an empty store.
//! genesis = [
//!   { address = "xw5f…", amount = 1000000 },
//! ]
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::crypto::{Address, PublicKey};
use crate::encoding::HexBytes;
use crate::error::AppError;

/// Hard cap on transactions per bundle.
pub const MAX_BUNDLE_TRANSACTIONS: usize = 1000;
/// Hard cap on a registry value (bytes).
pub const MAX_REGISTRY_VALUE: usize = 64 * 1024;
/// Hard cap on the notification buffer.
pub const MAX_EVENT_CAPACITY: usize = 1_000_000;

/// One genesis allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisAllocation {
    /// Recipient (its key may be registered later).
    pub address: Address,
    /// Amount.
    pub amount: u64,
}

/// The application layer's settings. Defaults suit a single server; see each setter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServicesConfig {
    data_dir: PathBuf,
    signing_key_file: Option<PathBuf>,
    genesis: Vec<GenesisAllocation>,
    mint_authority: Option<HexBytes>,
    challenge_ttl_ms: u64,
    max_lease_ms: u64,
    default_cert_validity_secs: u64,
    max_cert_validity_secs: u64,
    max_bundle_transactions: usize,
    max_registry_value: usize,
    group_commit_max_batch: usize,
    event_capacity: usize,
    max_sessions: usize,
    max_locks: usize,
    max_locks_per_session: usize,
}

impl Default for ServicesConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("xtmp-data"),
            signing_key_file: None,
            genesis: Vec::new(),
            mint_authority: None,
            challenge_ttl_ms: 60_000,
            max_lease_ms: 3_600_000,
            default_cert_validity_secs: 30 * 86_400,
            max_cert_validity_secs: 397 * 86_400,
            max_bundle_transactions: MAX_BUNDLE_TRANSACTIONS,
            max_registry_value: MAX_REGISTRY_VALUE,
            group_commit_max_batch: 512,
            event_capacity: 4096,
            max_sessions: 100_000,
            max_locks: 100_000,
            max_locks_per_session: 1024,
        }
    }
}

impl ServicesConfig {
    /// Defaults with the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ..Self::default()
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`AppError::BadRequest`] naming the bad setting.
    pub fn validate(&self) -> Result<(), AppError> {
        let bad = |s: &str| Err(AppError::BadRequest(format!("xtmp_services: {s}")));
        if self.challenge_ttl_ms == 0 {
            return bad("challenge_ttl_ms must be > 0");
        }
        if self.max_lease_ms == 0 {
            return bad("max_lease_ms must be > 0");
        }
        if self.default_cert_validity_secs == 0
            || self.default_cert_validity_secs > self.max_cert_validity_secs
        {
            return bad("default_cert_validity_secs must be in 1..=max_cert_validity_secs");
        }
        if self.max_bundle_transactions == 0
            || self.max_bundle_transactions > MAX_BUNDLE_TRANSACTIONS
        {
            return bad("max_bundle_transactions must be in 1..=1000");
        }
        if self.max_registry_value > MAX_REGISTRY_VALUE {
            return bad("max_registry_value must be at most 65536");
        }
        if self.event_capacity == 0 || self.event_capacity > MAX_EVENT_CAPACITY {
            // tokio's broadcast channel panics on 0 and on huge capacities.
            return bad("event_capacity must be in 1..=1000000");
        }
        if self.max_sessions == 0 || self.max_locks == 0 || self.max_locks_per_session == 0 {
            return bad("max_sessions, max_locks and max_locks_per_session must be > 0");
        }
        if self.group_commit_max_batch == 0 {
            return bad("group_commit_max_batch must be > 0");
        }
        if let Some(k) = &self.mint_authority {
            PublicKey::from_bytes(k.as_slice())
                .map_err(|e| AppError::BadRequest(format!("xtmp_services: mint_authority: {e}")))?;
        }
        let mut total: u64 = 0;
        for g in &self.genesis {
            total = total.checked_add(g.amount).ok_or_else(|| {
                AppError::BadRequest("xtmp_services: genesis total exceeds 2^64 - 1".into())
            })?;
        }
        Ok(())
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    /// Sets the data directory.
    pub fn set_data_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.data_dir = dir.into();
        self
    }

    /// The server's ML-DSA-65 signing key file (32-byte seed as hex); default
    /// `<data_dir>/services-signing.key`, created on first start.
    pub fn signing_key_file(&self) -> PathBuf {
        self.signing_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("services-signing.key"))
    }
    /// Sets the signing key file.
    pub fn set_signing_key_file(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.signing_key_file = Some(path.into());
        self
    }

    /// Genesis allocations.
    pub fn genesis(&self) -> &[GenesisAllocation] {
        &self.genesis
    }
    /// Sets the genesis allocations (applied once, on an empty store).
    pub fn set_genesis(&mut self, genesis: Vec<GenesisAllocation>) -> &mut Self {
        self.genesis = genesis;
        self
    }

    /// The mint authority's public key.
    pub fn mint_authority(&self) -> Option<&[u8]> {
        self.mint_authority.as_ref().map(|k| k.as_slice())
    }
    /// Sets the mint authority's ML-DSA-65 public key.
    pub fn set_mint_authority(&mut self, public_key: Option<Vec<u8>>) -> &mut Self {
        self.mint_authority = public_key.map(HexBytes);
        self
    }

    /// How long a wallet-auth challenge stays valid (default 60 s).
    pub fn challenge_ttl_ms(&self) -> u64 {
        self.challenge_ttl_ms
    }
    /// Sets the challenge lifetime.
    pub fn set_challenge_ttl_ms(&mut self, ms: u64) -> &mut Self {
        self.challenge_ttl_ms = ms;
        self
    }

    /// Longest QLOCK lease (default 1 h).
    pub fn max_lease_ms(&self) -> u64 {
        self.max_lease_ms
    }
    /// Sets the longest lease.
    pub fn set_max_lease_ms(&mut self, ms: u64) -> &mut Self {
        self.max_lease_ms = ms;
        self
    }

    /// Certificate validity when the request names none (default 30 days).
    pub fn default_cert_validity_secs(&self) -> u64 {
        self.default_cert_validity_secs
    }
    /// Longest certificate validity (default 397 days).
    pub fn max_cert_validity_secs(&self) -> u64 {
        self.max_cert_validity_secs
    }
    /// Sets the default and maximum certificate validity.
    pub fn set_cert_validity_secs(&mut self, default: u64, max: u64) -> &mut Self {
        self.default_cert_validity_secs = default;
        self.max_cert_validity_secs = max;
        self
    }

    /// Most transactions per bundle (default and cap 1000).
    pub fn max_bundle_transactions(&self) -> usize {
        self.max_bundle_transactions
    }
    /// Sets the bundle size limit.
    pub fn set_max_bundle_transactions(&mut self, n: usize) -> &mut Self {
        self.max_bundle_transactions = n;
        self
    }

    /// Largest registry value in bytes (default and cap 64 KiB).
    pub fn max_registry_value(&self) -> usize {
        self.max_registry_value
    }
    /// Sets the largest registry value (at most 64 KiB).
    pub fn set_max_registry_value(&mut self, bytes: usize) -> &mut Self {
        self.max_registry_value = bytes;
        self
    }

    /// Most write operations per storage commit (1 disables group commit; default 512).
    pub fn group_commit_max_batch(&self) -> usize {
        self.group_commit_max_batch
    }
    /// Sets the group-commit batch limit.
    pub fn set_group_commit_max_batch(&mut self, n: usize) -> &mut Self {
        self.group_commit_max_batch = n;
        self
    }

    /// Notifications buffered for slow subscribers (default 4096).
    pub fn event_capacity(&self) -> usize {
        self.event_capacity
    }
    /// Sets the notification buffer (1 to 1 000 000).
    pub fn set_event_capacity(&mut self, n: usize) -> &mut Self {
        self.event_capacity = n;
        self
    }

    /// Most sessions with wallet-auth state (default 100 000).
    pub fn max_sessions(&self) -> usize {
        self.max_sessions
    }
    /// Sets the most sessions with wallet-auth state.
    pub fn set_max_sessions(&mut self, n: usize) -> &mut Self {
        self.max_sessions = n;
        self
    }

    /// Most held locks in all (default 100 000).
    pub fn max_locks(&self) -> usize {
        self.max_locks
    }

    /// Most locks one session may hold (default 1024).
    pub fn max_locks_per_session(&self) -> usize {
        self.max_locks_per_session
    }
    /// Sets the lock limits.
    pub fn set_lock_limits(&mut self, total: usize, per_session: usize) -> &mut Self {
        self.max_locks = total;
        self.max_locks_per_session = per_session;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_from_json_like_toml_would() {
        let addr = format!("xw{}", "ab".repeat(32));
        let j = format!(r#"{{"data_dir":"/tmp/x","genesis":[{{"address":"{addr}","amount":5}}]}}"#);
        let c: ServicesConfig = serde_json::from_str(&j).unwrap();
        assert_eq!(c.genesis().len(), 1);
        assert_eq!(c.challenge_ttl_ms(), 60_000);
        c.validate().unwrap();
        assert!(serde_json::from_str::<ServicesConfig>(r#"{"nope":1}"#).is_err());
        let mut c = ServicesConfig::default();
        c.set_mint_authority(Some(vec![1, 2, 3]));
        assert!(c.validate().is_err());
    }
}
