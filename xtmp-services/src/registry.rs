//! The registry: owned, versioned key/value entries with compare-and-set updates, and
//! server-signed timestamp receipts.
//!
//! An entry belongs to the wallet that created it. Every update names the version it
//! replaces (`expected_version`, 0 to create) and carries the owner's ML-DSA signature
//! over key, expected version, owner and value, so two writers that read the same version
//! cannot both win, and a captured update cannot be replayed (the version moved on).

use crate::crypto::{message, PublicKey};
use crate::encoding::{Hex32, HexBytes};
use crate::error::AppError;
use crate::events::Event;
use crate::records::{self, meta};
use crate::services::{Caller, Services};
use crate::store::Table;
use crate::types::{
    RegistryEntry, RegistryQueryRequest, RegistryQueryResponse, RegistryStampRequest,
    RegistryUpdateRequest, RegistryUpdateResponse, StampReceipt,
};

/// Longest registry key in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// Checks a registry key: 1 to 256 bytes of UTF-8 without control characters.
///
/// # Errors
/// [`AppError::InvalidRegistryKey`].
pub fn check_key(key: &str) -> Result<(), AppError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(AppError::InvalidRegistryKey(format!(
            "a key has 1 to {MAX_KEY_LEN} bytes"
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(AppError::InvalidRegistryKey(
            "control characters are not allowed".into(),
        ));
    }
    Ok(())
}

/// The smallest byte string greater than every string starting with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredStamp {
    digest: Hex32,
    timestamp_ms: u64,
}

/// Checks a timestamp receipt offline against the server's ML-DSA-65 public key.
///
/// # Errors
/// [`AppError::InvalidStamp`] if the receipt names another key or the signature does not
/// verify.
pub fn verify_stamp(receipt: &StampReceipt, server_public_key: &[u8]) -> Result<(), AppError> {
    let pk = PublicKey::from_bytes(server_public_key)
        .map_err(|e| AppError::InvalidStamp(e.to_string()))?;
    if pk.key_id() != receipt.server_key_id.0 {
        return Err(AppError::InvalidStamp(
            "signed by a different server key".into(),
        ));
    }
    let msg = message::stamp(
        receipt.serial,
        receipt.timestamp_ms,
        &receipt.digest.0,
        &receipt.server_key_id.0,
    );
    pk.verify(&msg, receipt.signature.as_slice())
        .map_err(|_| AppError::InvalidStamp("bad signature".into()))
}

impl Services {
    /// `RegistryQuery`: one entry by `key`, or a page of entries by `prefix`.
    ///
    /// # Errors
    /// [`AppError::BadRequest`] (neither or both of key and prefix),
    /// [`AppError::InvalidRegistryKey`], [`AppError::RegistryKeyNotFound`].
    pub fn registry_query(
        &self,
        req: RegistryQueryRequest,
    ) -> Result<RegistryQueryResponse, AppError> {
        let r = self.read()?;
        match (&req.key, &req.prefix) {
            (Some(key), None) => {
                check_key(key)?;
                let e: RegistryEntry = records::get_json(&*r, Table::Registry, key.as_bytes())?
                    .ok_or(AppError::RegistryKeyNotFound)?;
                Ok(RegistryQueryResponse {
                    entries: vec![e],
                    more: false,
                })
            }
            (None, Some(prefix)) => {
                if prefix.len() > MAX_KEY_LEN {
                    return Err(AppError::InvalidRegistryKey("prefix too long".into()));
                }
                let limit = req.limit.unwrap_or(100).clamp(1, 1000) as usize;
                let mut start = prefix.as_bytes().to_vec();
                if let Some(after) = &req.after {
                    let mut a = after.as_bytes().to_vec();
                    a.push(0);
                    if a > start {
                        start = a;
                    }
                }
                let end = prefix_end(prefix.as_bytes());
                let mut page = r.scan(Table::Registry, &start, end.as_deref(), limit + 1)?;
                let more = page.len() > limit;
                page.truncate(limit);
                let entries = page
                    .into_iter()
                    .map(|(_, v)| {
                        serde_json::from_slice(&v).map_err(|_| records::corrupt("registry"))
                    })
                    .collect::<Result<Vec<RegistryEntry>, _>>()?;
                Ok(RegistryQueryResponse { entries, more })
            }
            _ => Err(AppError::BadRequest(
                "give exactly one of key or prefix".into(),
            )),
        }
    }

    /// `RegistryUpdate`: compare-and-set by the owner (see the module docs).
    ///
    /// # Errors
    /// [`AppError::InvalidRegistryKey`], [`AppError::TooLarge`] (value over 64 KiB),
    /// [`AppError::WalletNotFound`] (owner), [`AppError::BadSignature`],
    /// [`AppError::NotOwner`], [`AppError::StaleVersion`].
    pub fn registry_update(
        &self,
        _caller: &Caller,
        req: RegistryUpdateRequest,
        now_ms: u64,
    ) -> Result<RegistryUpdateResponse, AppError> {
        check_key(&req.key)?;
        if req.value.len() > self.config.max_registry_value() {
            return Err(AppError::TooLarge(format!(
                "a registry value has at most {} bytes",
                self.config.max_registry_value()
            )));
        }
        let pk = self
            .wallet_key(&req.owner)?
            .ok_or_else(|| AppError::WalletNotFound(req.owner.to_string()))?;
        let msg = message::registry_update(&req.key, req.expected_version, &req.owner, &req.value);
        pk.verify(&msg, req.signature.as_slice())?;
        let RegistryUpdateRequest {
            key,
            value,
            expected_version,
            owner,
            ..
        } = req;
        let entry = self.write_ev(now_ms, move |tx| {
            let current: Option<RegistryEntry> =
                records::get_json(tx, Table::Registry, key.as_bytes())?;
            let current_version = match &current {
                Some(e) => {
                    if e.owner != owner {
                        return Err(AppError::NotOwner);
                    }
                    e.version
                }
                None => 0,
            };
            if current_version != expected_version {
                return Err(AppError::StaleVersion {
                    expected: expected_version,
                    current: current_version,
                });
            }
            let version = current_version
                .checked_add(1)
                .ok_or_else(|| AppError::Internal("version exhausted".into()))?;
            let entry = RegistryEntry {
                key,
                value,
                version,
                owner,
                updated_at_ms: now_ms,
            };
            records::put_json(tx, Table::Registry, entry.key.as_bytes(), &entry)?;
            let ev = Event::Registry {
                key: entry.key.clone(),
                version: entry.version,
                owner: entry.owner,
            };
            Ok((entry, vec![ev]))
        })?;
        Ok(RegistryUpdateResponse {
            key: entry.key,
            version: entry.version,
            owner: entry.owner,
            updated_at_ms: entry.updated_at_ms,
        })
    }

    /// `RegistryStamp`: a durable, server-signed timestamp receipt over a digest. The
    /// receipt's serial and time are committed before it is signed and returned.
    ///
    /// # Errors
    /// Storage errors.
    pub fn registry_stamp(
        &self,
        req: RegistryStampRequest,
        now_ms: u64,
    ) -> Result<StampReceipt, AppError> {
        let digest = req.digest;
        let serial = self.write_ev(now_ms, move |tx| {
            let serial = records::next_counter(tx, meta::STAMP_SERIAL)?;
            records::put_json(
                tx,
                Table::Stamps,
                &serial.to_be_bytes(),
                &StoredStamp {
                    digest,
                    timestamp_ms: now_ms,
                },
            )?;
            Ok((serial, vec![Event::Stamp { serial, digest }]))
        })?;
        let key_id = self.server_key_id();
        let signature = self
            .signer
            .sign(&message::stamp(serial, now_ms, &digest.0, &key_id))?;
        Ok(StampReceipt {
            serial,
            digest,
            timestamp_ms: now_ms,
            server_key_id: Hex32(key_id),
            signature: HexBytes(signature),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_works() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn keys_are_checked() {
        assert!(check_key("a/b c").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key("a\nb").is_err());
        assert!(check_key(&"x".repeat(257)).is_err());
    }
}
