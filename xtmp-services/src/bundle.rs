//! Bundles: ordered batches of signed transfers, stored pending and applied all at once.
//!
//! * `BundleSubmit` (by a wallet-authenticated session, the *submitter*): every
//!   transaction is checked (amount, signature by its sender; no mints; no duplicate
//!   inside the bundle) and the whole bundle is simulated against the current ledger; if
//!   any check fails the bundle is refused with that transaction's error code and index
//!   and nothing is stored. Otherwise it is stored as `pending` under its id. Submitting an
//!   identical bundle again returns the stored one (`created: false`).
//! * `BundleConfirm` (by the submitter or the mint authority): applies every transaction
//!   in order in one atomic write. If one fails now (the ledger moved since submission),
//!   none is applied and the bundle becomes `rejected` with the reason, durably, and the
//!   caller gets `BUNDLE_REJECTED`.
//! * Every state change appends to the bundle log; `BundleSync` pages through it by cursor.

use std::collections::{BTreeMap, HashSet};

use crate::crypto::{sha256, Address, PublicKey};
use crate::encoding::Hex32;
use crate::error::AppError;
use crate::events::Event;
use crate::records::{self, meta, Account};
use crate::services::{Caller, Services};
use crate::store::{Table, WriteTx};
use crate::types::{
    BundleIdRequest, BundleState, BundleStatusResponse, BundleSubmitRequest, BundleSubmitResponse,
    BundleSyncEntry, BundleSyncRequest, BundleSyncResponse, SignedTransaction, TxKind,
};
use crate::wallet::{apply_tx, check_stateless, public_key, Origin};

/// Most transactions returned by one `BundleSync` with `include_transactions`.
pub const MAX_SYNC_TRANSACTIONS: usize = 1000;

/// The id of a bundle: `SHA-256("XTMP/v1/bundle\0" ‖ count(4) ‖ txid_1 ‖ … ‖ txid_n)`.
pub fn bundle_id(txids: &[Hex32]) -> Hex32 {
    let count = u32::try_from(txids.len()).unwrap_or(u32::MAX).to_be_bytes();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(txids.len() + 2);
    parts.push(b"XTMP/v1/bundle\0");
    parts.push(&count);
    for t in txids {
        parts.push(t.as_bytes());
    }
    Hex32(sha256(&parts))
}

fn load_status<G: records::Get + ?Sized>(
    g: &G,
    id: &Hex32,
) -> Result<Option<BundleStatusResponse>, AppError> {
    records::get_json(g, Table::Bundles, id.as_bytes())
}

fn append_log(tx: &mut dyn WriteTx, id: &Hex32, state: BundleState) -> Result<u64, AppError> {
    let seq = records::next_counter(tx, meta::BUNDLE_LOG_SEQ)?;
    let mut v = id.as_bytes().to_vec();
    v.push(match state {
        BundleState::Pending => 0,
        BundleState::Confirmed => 1,
        BundleState::Rejected => 2,
    });
    tx.put(Table::BundleLog, &seq.to_be_bytes(), &v);
    Ok(seq)
}

/// Applies all of `txs` in order; on the first failure rolls every one of them back.
/// Returns the final account states of every wallet touched.
fn apply_all(
    tx: &mut dyn WriteTx,
    txs: &[SignedTransaction],
    id: &Hex32,
    now_ms: u64,
) -> Result<BTreeMap<Address, Account>, AppError> {
    let sp = tx.savepoint();
    let mut touched = BTreeMap::new();
    for (index, stx) in txs.iter().enumerate() {
        match apply_tx(tx, stx, &stx.txid(), now_ms, Origin::Bundle(id.0)) {
            Ok((fa, ta)) => {
                touched.insert(stx.from, fa);
                touched.insert(stx.to, ta);
            }
            Err(e) => {
                tx.rollback_to(sp);
                return Err(AppError::InBundle {
                    index,
                    error: Box::new(e),
                });
            }
        }
    }
    Ok(touched)
}

impl Services {
    /// `BundleSubmit` (see the module docs).
    ///
    /// # Errors
    /// [`AppError::NotAuthenticated`], [`AppError::BundleEmpty`], [`AppError::TooLarge`],
    /// [`AppError::BundleDuplicateTx`], [`AppError::InBundle`] (with the failing
    /// transaction's own code), storage errors.
    pub fn bundle_submit(
        &self,
        caller: &Caller,
        req: BundleSubmitRequest,
        now_ms: u64,
    ) -> Result<BundleSubmitResponse, AppError> {
        let submitter = self.require_wallet(caller)?;
        let txs = req.transactions;
        if txs.is_empty() {
            return Err(AppError::BundleEmpty);
        }
        if txs.len() > self.config.max_bundle_transactions() {
            return Err(AppError::TooLarge(format!(
                "a bundle holds at most {} transactions, got {}",
                self.config.max_bundle_transactions(),
                txs.len()
            )));
        }
        let in_bundle = |index: usize, error: AppError| AppError::InBundle {
            index,
            error: Box::new(error),
        };
        let mut txids = Vec::with_capacity(txs.len());
        let mut seen = HashSet::with_capacity(txs.len());
        for (i, stx) in txs.iter().enumerate() {
            check_stateless(stx).map_err(|e| in_bundle(i, e))?;
            if stx.kind != TxKind::Transfer {
                return Err(in_bundle(
                    i,
                    AppError::Forbidden("bundles carry transfers only".into()),
                ));
            }
            let id = stx.txid();
            if !seen.insert(id) {
                return Err(AppError::BundleDuplicateTx { index: i });
            }
            txids.push(id);
        }
        // Signatures, outside the writer (keys never change once registered).
        {
            let r = self.read()?;
            let mut keys: BTreeMap<Address, PublicKey> = BTreeMap::new();
            for (i, stx) in txs.iter().enumerate() {
                let pk = match keys.entry(stx.from) {
                    std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        let pk = public_key(&*r, &stx.from)?.ok_or_else(|| {
                            in_bundle(i, AppError::WalletNotFound(stx.from.to_string()))
                        })?;
                        v.insert(pk)
                    }
                };
                pk.verify(&stx.signing_message(), stx.signature.as_slice())
                    .map_err(|e| in_bundle(i, e))?;
            }
        }
        let id = bundle_id(&txids);
        let count = u32::try_from(txs.len()).map_err(|_| AppError::TooLarge("bundle".into()))?;
        let (created, status) = self.write_ev(now_ms, move |tx| {
            if let Some(existing) = load_status(tx, &id)? {
                return Ok(((false, existing), Vec::new()));
            }
            // Simulate against the current ledger, then undo.
            let sp = tx.savepoint();
            let sim = apply_all(tx, &txs, &id, now_ms);
            tx.rollback_to(sp);
            sim?;
            let log_seq = append_log(tx, &id, BundleState::Pending)?;
            let status = BundleStatusResponse {
                bundle_id: id,
                state: BundleState::Pending,
                reason: None,
                submitter,
                transaction_count: count,
                submitted_at_ms: now_ms,
                finalized_at_ms: None,
                log_seq,
            };
            records::put_json(tx, Table::Bundles, id.as_bytes(), &status)?;
            records::put_json(tx, Table::BundleTxs, id.as_bytes(), &txs)?;
            let ev = Event::Bundle {
                bundle_id: id,
                state: BundleState::Pending,
                reason: None,
            };
            Ok(((true, status), vec![ev]))
        })?;
        Ok(BundleSubmitResponse { created, status })
    }

    /// `BundleStatus`.
    ///
    /// # Errors
    /// [`AppError::BundleNotFound`], storage errors.
    pub fn bundle_status(&self, req: BundleIdRequest) -> Result<BundleStatusResponse, AppError> {
        load_status(&*self.read()?, &req.bundle_id)?
            .ok_or_else(|| AppError::BundleNotFound(req.bundle_id.to_string()))
    }

    /// `BundleConfirm` (see the module docs). Returns the confirmed status.
    ///
    /// # Errors
    /// [`AppError::NotAuthenticated`], [`AppError::BundleNotFound`],
    /// [`AppError::Forbidden`] (not the submitter or the mint authority),
    /// [`AppError::BundleFinal`], [`AppError::BundleRejected`] (now durably rejected),
    /// storage errors.
    pub fn bundle_confirm(
        &self,
        caller: &Caller,
        req: BundleIdRequest,
        now_ms: u64,
    ) -> Result<BundleStatusResponse, AppError> {
        let wallet = self.require_wallet(caller)?;
        let id = req.bundle_id;
        let status = self.bundle_status(BundleIdRequest { bundle_id: id })?;
        if status.submitter != wallet && !self.is_authority(caller) {
            return Err(AppError::Forbidden(
                "only the submitter or the mint authority may confirm a bundle".into(),
            ));
        }
        let status = self.write_ev(now_ms, move |tx| {
            let mut status =
                load_status(tx, &id)?.ok_or_else(|| AppError::BundleNotFound(id.to_string()))?;
            if status.state != BundleState::Pending {
                return Err(AppError::BundleFinal(status.state.as_str().to_string()));
            }
            let txs: Vec<SignedTransaction> =
                records::get_json(tx, Table::BundleTxs, id.as_bytes())?
                    .ok_or_else(|| records::corrupt("bundle"))?;
            let touched = match apply_all(tx, &txs, &id, now_ms) {
                Ok(t) => {
                    status.state = BundleState::Confirmed;
                    t
                }
                Err(e) => {
                    status.state = BundleState::Rejected;
                    status.reason = Some(e.reason());
                    BTreeMap::new()
                }
            };
            status.finalized_at_ms = Some(now_ms);
            status.log_seq = append_log(tx, &id, status.state)?;
            records::put_json(tx, Table::Bundles, id.as_bytes(), &status)?;
            let mut events: Vec<Event> = touched
                .into_iter()
                .map(|(address, a)| Event::Wallet {
                    address,
                    balance: a.balance,
                    next_nonce: a.next_nonce,
                    txid: None,
                })
                .collect();
            events.push(Event::Bundle {
                bundle_id: id,
                state: status.state,
                reason: status.reason.clone(),
            });
            Ok((status, events))
        })?;
        match status.state {
            BundleState::Rejected => {
                Err(AppError::BundleRejected(status.reason.unwrap_or_default()))
            }
            _ => Ok(status),
        }
    }

    /// `BundleSync`: the bundle log after `cursor`.
    ///
    /// # Errors
    /// Storage errors.
    pub fn bundle_sync(&self, req: BundleSyncRequest) -> Result<BundleSyncResponse, AppError> {
        let limit = req.limit.unwrap_or(100).clamp(1, 1000) as usize;
        let start = req.cursor.saturating_add(1);
        let r = self.read()?;
        let mut page = r.scan(Table::BundleLog, &start.to_be_bytes(), None, limit + 1)?;
        let mut more = page.len() > limit;
        page.truncate(limit);
        let mut entries = Vec::with_capacity(page.len());
        let mut next_cursor = req.cursor;
        let mut tx_total = 0usize;
        for (k, v) in page {
            let cursor = records::decode_u64(&k, "bundle log")?;
            let id: [u8; 32] = v
                .get(..32)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| records::corrupt("bundle log"))?;
            let state = match v.get(32) {
                Some(0) => BundleState::Pending,
                Some(1) => BundleState::Confirmed,
                Some(2) => BundleState::Rejected,
                _ => return Err(records::corrupt("bundle log")),
            };
            let id = Hex32(id);
            let bundle = load_status(&*r, &id)?.ok_or_else(|| records::corrupt("bundle"))?;
            let transactions = if req.include_transactions {
                let n = bundle.transaction_count as usize;
                if !entries.is_empty() && tx_total.saturating_add(n) > MAX_SYNC_TRANSACTIONS {
                    more = true;
                    break;
                }
                tx_total = tx_total.saturating_add(n);
                let txs: Vec<SignedTransaction> =
                    records::get_json(&*r, Table::BundleTxs, id.as_bytes())?
                        .ok_or_else(|| records::corrupt("bundle"))?;
                Some(txs)
            } else {
                None
            };
            next_cursor = cursor;
            entries.push(BundleSyncEntry {
                cursor,
                state,
                bundle,
                transactions,
            });
        }
        Ok(BundleSyncResponse {
            entries,
            next_cursor,
            more,
        })
    }
}
