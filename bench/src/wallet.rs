//! Deterministic wallets (ML-DSA-65) shared by the load generator and the server process,
//! and the pool of pre-signed transfers for `bundle-submit` (signing costs ~130 µs per
//! transaction, so the pool is built before the measured window and cached on disk).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use xtmp_services::types::{SignedTransaction, TxKind};
use xtmp_services::{client, GenesisAllocation, SigningKey};

/// Balance given to every wallet at genesis.
pub const GENESIS_AMOUNT: u64 = 1_000_000_000_000;

/// Wallet `i`'s key (index `count` is the bundle recipient).
pub fn wallet(i: usize) -> Result<SigningKey> {
    let mut seed = [0xA5u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    SigningKey::from_seed(&seed).map_err(|e| anyhow!("wallet key: {e}"))
}

/// Wallets `0..=count` (the last one receives the bundles' transfers).
pub fn wallets(count: usize) -> Result<Vec<Arc<SigningKey>>> {
    (0..=count).map(|i| wallet(i).map(Arc::new)).collect()
}

/// Genesis allocations for `wallets`.
pub fn genesis(wallets: &[Arc<SigningKey>]) -> Vec<GenesisAllocation> {
    wallets
        .iter()
        .map(|w| GenesisAllocation {
            address: w.address(),
            amount: GENESIS_AMOUNT,
        })
        .collect()
}

fn cache_path(senders: usize, n: usize) -> PathBuf {
    let dir = std::env::var_os("XTMP_BENCH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("xtmp-bench-cache"));
    dir.join(format!("transfers-{senders}-{n}.json"))
}

/// `n` distinct signed transfers (nonce 0, from the first `senders` wallets to the
/// recipient, distinct amounts), signed on all cores, cached in `$XTMP_BENCH_CACHE` (or
/// the temp dir) so later runs start at once.
pub fn transfer_pool(wallets: &[Arc<SigningKey>], n: usize) -> Result<Vec<SignedTransaction>> {
    let senders = wallets.len().saturating_sub(1).max(1);
    let path = cache_path(senders, n);
    if let Ok(bytes) = std::fs::read(&path) {
        if let Ok(v) = serde_json::from_slice::<Vec<SignedTransaction>>(&bytes) {
            if v.len() == n {
                return Ok(v);
            }
        }
    }
    let recipient = wallets
        .last()
        .ok_or_else(|| anyhow!("no wallets"))?
        .address();
    let threads = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(2);
    let chunk = n.div_ceil(threads).max(1);
    let mut out: Vec<SignedTransaction> = Vec::with_capacity(n);
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                let end = (start + chunk).min(n);
                s.spawn(move || -> Result<Vec<SignedTransaction>> {
                    (start..end)
                        .map(|i| {
                            let from = &wallets[i % senders];
                            let amount = 1 + (i / senders) as u64;
                            client::sign_transaction(from, TxKind::Transfer, recipient, amount, 0)
                                .map_err(|e| anyhow!("signing: {e}"))
                        })
                        .collect()
                })
            })
            .collect();
        for h in handles {
            out.extend(h.join().map_err(|_| anyhow!("signing thread panicked"))??);
        }
        Ok(())
    })?;
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, serde_json::to_vec(&out).context("encoding the pool")?).is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
    Ok(out)
}
