//! Encodings of the stored records and small helpers over the store.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::crypto::Address;
use crate::error::AppError;
use crate::store::{ReadTx, StoreError, Table, WriteTx};

/// Point reads, over either a snapshot or a write operation's view.
pub(crate) trait Get {
    fn get_raw(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
}

impl Get for dyn ReadTx + '_ {
    fn get_raw(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(table, key)
    }
}

impl Get for dyn WriteTx + '_ {
    fn get_raw(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(table, key)
    }
}

pub(crate) fn corrupt(what: &str) -> AppError {
    AppError::Storage(format!("corrupt {what} record"))
}

/// A wallet's ledger state: 16 bytes, `balance(8) ‖ next_nonce(8)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Account {
    pub balance: u64,
    pub next_nonce: u64,
}

impl Account {
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.balance.to_be_bytes());
        b[8..].copy_from_slice(&self.next_nonce.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, AppError> {
        let b: &[u8; 16] = b.try_into().map_err(|_| corrupt("account"))?;
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[..8]);
        let balance = u64::from_be_bytes(x);
        x.copy_from_slice(&b[8..]);
        Ok(Self {
            balance,
            next_nonce: u64::from_be_bytes(x),
        })
    }
}

pub(crate) fn account<G: Get + ?Sized>(g: &G, addr: &Address) -> Result<Option<Account>, AppError> {
    match g.get_raw(Table::Accounts, addr.as_bytes())? {
        Some(v) => Ok(Some(Account::decode(&v)?)),
        None => Ok(None),
    }
}

pub(crate) fn put_account(tx: &mut dyn WriteTx, addr: &Address, a: &Account) {
    tx.put(Table::Accounts, addr.as_bytes(), &a.encode());
}

pub(crate) fn decode_u64(v: &[u8], what: &str) -> Result<u64, AppError> {
    let b: [u8; 8] = v.try_into().map_err(|_| corrupt(what))?;
    Ok(u64::from_be_bytes(b))
}

/// A counter in the `Meta` table (absent = 0).
pub(crate) fn meta_u64<G: Get + ?Sized>(g: &G, key: &str) -> Result<u64, AppError> {
    match g.get_raw(Table::Meta, key.as_bytes())? {
        Some(v) => decode_u64(&v, key),
        None => Ok(0),
    }
}

pub(crate) fn put_meta_u64(tx: &mut dyn WriteTx, key: &str, v: u64) {
    tx.put(Table::Meta, key.as_bytes(), &v.to_be_bytes());
}

/// Increments a `Meta` counter and returns the new value.
pub(crate) fn next_counter(tx: &mut dyn WriteTx, key: &str) -> Result<u64, AppError> {
    let n = meta_u64(tx, key)?
        .checked_add(1)
        .ok_or_else(|| AppError::Internal(format!("counter {key} exhausted")))?;
    put_meta_u64(tx, key, n);
    Ok(n)
}

pub(crate) fn get_json<G: Get + ?Sized, T: DeserializeOwned>(
    g: &G,
    table: Table,
    key: &[u8],
) -> Result<Option<T>, AppError> {
    match g.get_raw(table, key)? {
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|_| corrupt(table.name())),
        None => Ok(None),
    }
}

pub(crate) fn put_json<T: Serialize>(
    tx: &mut dyn WriteTx,
    table: Table,
    key: &[u8],
    value: &T,
) -> Result<(), AppError> {
    let v = serde_json::to_vec(value)
        .map_err(|e| AppError::Internal(format!("encode {}: {e}", table.name())))?;
    tx.put(table, key, &v);
    Ok(())
}

/// Meta keys.
pub(crate) mod meta {
    /// Total units in existence (genesis + mints).
    pub const SUPPLY: &str = "supply";
    /// Hash of the applied genesis allocations.
    pub const GENESIS: &str = "genesis";
    /// Last bundle-log sequence number.
    pub const BUNDLE_LOG_SEQ: &str = "bundle_log_seq";
    /// Last stamp serial.
    pub const STAMP_SERIAL: &str = "stamp_serial";
    /// Last certificate serial.
    pub const CERT_SERIAL: &str = "cert_serial";
    /// Fencing tokens up to this value may have been handed out.
    pub const FENCING_HWM: &str = "fencing_hwm";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_roundtrip_and_corruption() {
        let a = Account {
            balance: 7,
            next_nonce: 9,
        };
        assert_eq!(Account::decode(&a.encode()).unwrap(), a);
        assert!(Account::decode(&[0u8; 15]).is_err());
        assert!(decode_u64(&[1, 2], "x").is_err());
    }
}
