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

use crate::crypto::{sha256, Address};
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
use crate::wallet::{apply_tx, check_stateless, Origin};

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

// Storage layout (private to this module):
// * `Bundles`: bundle id → [`Stored`] (binary, [`encode_stored`]): the status and where the
//   transactions are. Bundle ids are hashes, so this is the one random-key insert per
//   submission.
// * `BundleTxs`: the transactions ([`encode_txs`]) under the 8-byte big-endian log
//   position of the bundle's `pending` entry: keys only grow, so submissions append to
//   the end of the B-tree instead of splitting random ~3.4 KB leaves (measured: the
//   id-keyed insert cost ~40 µs of writer CPU per submission and most of the bytes
//   written per commit).
// * `BundleLog`: log position → bundle id ‖ state.
// Records written by earlier versions are JSON (`Bundles`: an object; `BundleTxs`: an
// array under the bundle id) and are still read.

/// A bundle as stored in `Bundles`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    status: BundleStatusResponse,
    /// The `BundleTxs` key of its transactions: this 8-byte position, or (`None`, records
    /// of earlier versions) the bundle id.
    txs_at: Option<u64>,
}

/// Format byte of the binary `Bundles` record.
const BUNDLE_FORMAT_V1: u8 = 1;
const HAS_FINALIZED: u8 = 1;
const HAS_REASON: u8 = 2;
const HAS_TXS_AT: u8 = 4;

fn state_code(state: BundleState) -> u8 {
    match state {
        BundleState::Pending => 0,
        BundleState::Confirmed => 1,
        BundleState::Rejected => 2,
    }
}

fn state_of(code: u8) -> Option<BundleState> {
    match code {
        0 => Some(BundleState::Pending),
        1 => Some(BundleState::Confirmed),
        2 => Some(BundleState::Rejected),
        _ => None,
    }
}

/// `1 ‖ flags(1) ‖ state(1) ‖ submitter(32) ‖ transaction_count(4) ‖ submitted_at_ms(8) ‖
/// log_seq(8) ‖ [txs_at(8)] ‖ [finalized_at_ms(8)] ‖ [reason (UTF-8, the rest)]`, integers
/// big-endian, the bracketed fields present when their flag is set.
fn encode_stored(s: &Stored) -> Vec<u8> {
    let st = &s.status;
    let reason = st.reason.as_deref().unwrap_or_default();
    let mut v = Vec::with_capacity(79 + reason.len());
    let mut flags = 0;
    if st.finalized_at_ms.is_some() {
        flags |= HAS_FINALIZED;
    }
    if st.reason.is_some() {
        flags |= HAS_REASON;
    }
    if s.txs_at.is_some() {
        flags |= HAS_TXS_AT;
    }
    v.push(BUNDLE_FORMAT_V1);
    v.push(flags);
    v.push(state_code(st.state));
    v.extend_from_slice(st.submitter.as_bytes());
    v.extend_from_slice(&st.transaction_count.to_be_bytes());
    v.extend_from_slice(&st.submitted_at_ms.to_be_bytes());
    v.extend_from_slice(&st.log_seq.to_be_bytes());
    if let Some(at) = s.txs_at {
        v.extend_from_slice(&at.to_be_bytes());
    }
    if let Some(f) = st.finalized_at_ms {
        v.extend_from_slice(&f.to_be_bytes());
    }
    v.extend_from_slice(reason.as_bytes());
    v
}

/// Splits `n` bytes off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, tail) = rest.split_at_checked(n)?;
    *rest = tail;
    Some(head)
}

fn take_u64(rest: &mut &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(take(rest, 8)?.try_into().ok()?))
}

fn take_address(rest: &mut &[u8]) -> Option<Address> {
    Some(Address(take(rest, 32)?.try_into().ok()?))
}

fn decode_stored(id: &Hex32, v: &[u8]) -> Result<Stored, AppError> {
    let bad = || records::corrupt("bundle");
    match v.first() {
        Some(b'{') => {
            let status: BundleStatusResponse = serde_json::from_slice(v).map_err(|_| bad())?;
            return Ok(Stored {
                status,
                txs_at: None,
            });
        }
        Some(&BUNDLE_FORMAT_V1) => {}
        _ => return Err(bad()),
    }
    let mut rest = v.get(1..).unwrap_or_default();
    let stored = (|| {
        let [flags, state] = *take(&mut rest, 2)? else {
            return None;
        };
        let state = state_of(state)?;
        let submitter = take_address(&mut rest)?;
        let transaction_count = u32::from_be_bytes(take(&mut rest, 4)?.try_into().ok()?);
        let submitted_at_ms = take_u64(&mut rest)?;
        let log_seq = take_u64(&mut rest)?;
        let txs_at = match flags & HAS_TXS_AT {
            0 => None,
            _ => Some(take_u64(&mut rest)?),
        };
        let finalized_at_ms = match flags & HAS_FINALIZED {
            0 => None,
            _ => Some(take_u64(&mut rest)?),
        };
        let reason = match flags & HAS_REASON {
            0 if rest.is_empty() => None,
            0 => return None,
            _ => Some(std::str::from_utf8(rest).ok()?.to_string()),
        };
        Some(Stored {
            status: BundleStatusResponse {
                bundle_id: *id,
                state,
                reason,
                submitter,
                transaction_count,
                submitted_at_ms,
                finalized_at_ms,
                log_seq,
            },
            txs_at,
        })
    })();
    stored.ok_or_else(bad)
}

fn load_stored<G: records::Get + ?Sized>(g: &G, id: &Hex32) -> Result<Option<Stored>, AppError> {
    match g.get_raw(Table::Bundles, id.as_bytes())? {
        Some(v) => decode_stored(id, &v).map(Some),
        None => Ok(None),
    }
}

fn load_status<G: records::Get + ?Sized>(
    g: &G,
    id: &Hex32,
) -> Result<Option<BundleStatusResponse>, AppError> {
    Ok(load_stored(g, id)?.map(|s| s.status))
}

fn txs_key(id: &Hex32, txs_at: Option<u64>) -> Vec<u8> {
    match txs_at {
        Some(at) => at.to_be_bytes().to_vec(),
        None => id.as_bytes().to_vec(),
    }
}

fn load_txs<G: records::Get + ?Sized>(
    g: &G,
    stored: &Stored,
) -> Result<Vec<SignedTransaction>, AppError> {
    let key = txs_key(&stored.status.bundle_id, stored.txs_at);
    let v = g
        .get_raw(Table::BundleTxs, &key)?
        .ok_or_else(|| records::corrupt("bundle"))?;
    decode_txs(&v)
}

fn append_log(tx: &mut dyn WriteTx, id: &Hex32, state: BundleState) -> Result<u64, AppError> {
    let seq = records::next_counter(tx, meta::BUNDLE_LOG_SEQ)?;
    let mut v = id.as_bytes().to_vec();
    v.push(state_code(state));
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

/// The write operation of a checked `BundleSubmit`.
type SubmitOp = Box<
    dyn FnOnce(&mut dyn WriteTx) -> Result<((bool, BundleStatusResponse), Vec<Event>), AppError>
        + Send,
>;

/// Format byte of the binary `BundleTxs` record (see [`encode_txs`]).
const TXS_FORMAT_V1: u8 = 1;

/// The `BundleTxs` record of a bundle: `1 ‖ (kind(1) ‖ from(32) ‖ to(32) ‖ amount(8) ‖
/// nonce(8) ‖ signature_len(2) ‖ signature)*`, integers big-endian. Records written
/// before this format are JSON arrays (first byte `[`); [`decode_txs`] reads both.
fn encode_txs(txs: &[SignedTransaction]) -> Result<Vec<u8>, AppError> {
    let size: usize = txs.iter().map(|t| 83 + t.signature.0.len()).sum();
    let mut v = Vec::with_capacity(1 + size);
    v.push(TXS_FORMAT_V1);
    for t in txs {
        let sig_len = u16::try_from(t.signature.0.len())
            .map_err(|_| AppError::Internal("signature too long to store".into()))?;
        v.push(t.kind.code());
        v.extend_from_slice(t.from.as_bytes());
        v.extend_from_slice(t.to.as_bytes());
        v.extend_from_slice(&t.amount.to_be_bytes());
        v.extend_from_slice(&t.nonce.to_be_bytes());
        v.extend_from_slice(&sig_len.to_be_bytes());
        v.extend_from_slice(&t.signature.0);
    }
    Ok(v)
}

fn decode_txs(v: &[u8]) -> Result<Vec<SignedTransaction>, AppError> {
    let bad = || records::corrupt("bundle transactions");
    match v.first() {
        Some(b'[') => return serde_json::from_slice(v).map_err(|_| bad()),
        Some(&TXS_FORMAT_V1) => {}
        _ => return Err(bad()),
    }
    let mut rest = v.get(1..).unwrap_or_default();
    let mut out = Vec::new();
    while !rest.is_empty() {
        let tx = (|| {
            let kind = match take(&mut rest, 1)? {
                [0] => TxKind::Transfer,
                [1] => TxKind::Mint,
                _ => return None,
            };
            let from = take_address(&mut rest)?;
            let to = take_address(&mut rest)?;
            let amount = take_u64(&mut rest)?;
            let nonce = take_u64(&mut rest)?;
            let len = take(&mut rest, 2)?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            let signature = take(&mut rest, len)?.to_vec().into();
            Some(SignedTransaction {
                kind,
                from,
                to,
                amount,
                nonce,
                signature,
            })
        })()
        .ok_or_else(bad)?;
        out.push(tx);
    }
    Ok(out)
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
        let op = self.bundle_submit_checked(caller, req, now_ms)?;
        let (created, status) = self.write_ev(now_ms, op)?;
        Ok(BundleSubmitResponse { created, status })
    }

    /// [`Services::bundle_submit`] that awaits the durable commit instead of blocking.
    pub(crate) async fn bundle_submit_async(
        &self,
        caller: &Caller,
        req: BundleSubmitRequest,
        now_ms: u64,
    ) -> Result<BundleSubmitResponse, AppError> {
        let op = self.bundle_submit_checked(caller, req, now_ms)?;
        let (created, status) = self.write_ev_async(now_ms, op).await?;
        Ok(BundleSubmitResponse { created, status })
    }

    /// The checks of `BundleSubmit` that need no write (session, sizes, signatures), and
    /// the write operation that simulates and stores the bundle.
    fn bundle_submit_checked(
        &self,
        caller: &Caller,
        req: BundleSubmitRequest,
        now_ms: u64,
    ) -> Result<SubmitOp, AppError> {
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
        for (i, stx) in txs.iter().enumerate() {
            let pk = self
                .wallet_key(&stx.from)?
                .ok_or_else(|| in_bundle(i, AppError::WalletNotFound(stx.from.to_string())))?;
            pk.verify(&stx.signing_message(), stx.signature.as_slice())
                .map_err(|e| in_bundle(i, e))?;
        }
        let id = bundle_id(&txids);
        let count = u32::try_from(txs.len()).map_err(|_| AppError::TooLarge("bundle".into()))?;
        // Encoded before the writer runs the operation: its thread is the bottleneck.
        let txs_record = encode_txs(&txs)?;
        Ok(Box::new(move |tx: &mut dyn WriteTx| {
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
            let stored = Stored {
                status,
                txs_at: Some(log_seq),
            };
            tx.put(Table::Bundles, id.as_bytes(), &encode_stored(&stored));
            tx.put(Table::BundleTxs, &log_seq.to_be_bytes(), &txs_record);
            let status = stored.status;
            let ev = Event::Bundle {
                bundle_id: id,
                state: BundleState::Pending,
                reason: None,
            };
            Ok(((true, status), vec![ev]))
        }))
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
            let mut stored =
                load_stored(tx, &id)?.ok_or_else(|| AppError::BundleNotFound(id.to_string()))?;
            if stored.status.state != BundleState::Pending {
                return Err(AppError::BundleFinal(
                    stored.status.state.as_str().to_string(),
                ));
            }
            let txs = load_txs(tx, &stored)?;
            let status = &mut stored.status;
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
            tx.put(Table::Bundles, id.as_bytes(), &encode_stored(&stored));
            let status = stored.status;
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
            let state = v
                .get(32)
                .and_then(|&c| state_of(c))
                .ok_or_else(|| records::corrupt("bundle log"))?;
            let id = Hex32(id);
            let stored = load_stored(&*r, &id)?.ok_or_else(|| records::corrupt("bundle"))?;
            let transactions = if req.include_transactions {
                let n = stored.status.transaction_count as usize;
                if !entries.is_empty() && tx_total.saturating_add(n) > MAX_SYNC_TRANSACTIONS {
                    more = true;
                    break;
                }
                tx_total = tx_total.saturating_add(n);
                Some(load_txs(&*r, &stored)?)
            } else {
                None
            };
            let bundle = stored.status;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;
    use crate::client;
    use crate::store::MemoryStore;
    use crate::{GenesisAllocation, ServicesConfig, SigningKey};

    const NOW: u64 = 1_700_000_000_000;

    fn status(state: BundleState, reason: Option<&str>, fin: Option<u64>) -> BundleStatusResponse {
        BundleStatusResponse {
            bundle_id: Hex32([7; 32]),
            state,
            reason: reason.map(str::to_string),
            submitter: Address([9; 32]),
            transaction_count: 3,
            submitted_at_ms: NOW,
            finalized_at_ms: fin,
            log_seq: 42,
        }
    }

    #[test]
    fn stored_records_roundtrip_and_reject_corruption() {
        let id = Hex32([7; 32]);
        for (st, txs_at) in [
            (status(BundleState::Pending, None, None), Some(41)),
            (
                status(BundleState::Confirmed, None, Some(NOW + 5)),
                Some(41),
            ),
            (
                status(BundleState::Rejected, Some("transaction 0: é"), Some(NOW)),
                None,
            ),
            (status(BundleState::Rejected, Some(""), None), Some(0)),
        ] {
            let s = Stored { status: st, txs_at };
            let v = encode_stored(&s);
            assert_eq!(decode_stored(&id, &v).unwrap(), s);
            // Every truncation is an error, never a panic.
            for n in 0..v.len() {
                if s.status
                    .reason
                    .as_deref()
                    .is_some_and(|r| n >= v.len() - r.len())
                {
                    continue; // cutting the free-form reason leaves a valid record
                }
                assert!(decode_stored(&id, &v[..n]).is_err(), "len {n}");
            }
        }
        // A record of an earlier version (JSON) reads with its transactions under the id.
        let st = status(BundleState::Pending, None, None);
        let legacy = serde_json::to_vec(&st).unwrap();
        let s = decode_stored(&id, &legacy).unwrap();
        assert_eq!((s.status, s.txs_at), (st, None));
        assert!(decode_stored(&id, &[9, 0, 0]).is_err());
        let mut bad_state = encode_stored(&Stored {
            status: status(BundleState::Pending, None, None),
            txs_at: None,
        });
        bad_state[2] = 3;
        assert!(decode_stored(&id, &bad_state).is_err());
        // Trailing bytes without the reason flag are corruption.
        let mut trailing = encode_stored(&Stored {
            status: status(BundleState::Pending, None, None),
            txs_at: Some(1),
        });
        trailing.push(b'x');
        assert!(decode_stored(&id, &trailing).is_err());
    }

    #[test]
    fn transaction_records_roundtrip_and_reject_corruption() {
        let k = SigningKey::from_seed(&[3; 32]).unwrap();
        let to = SigningKey::from_seed(&[4; 32]).unwrap().address();
        let txs: Vec<SignedTransaction> = (1..=3)
            .map(|n| client::sign_transaction(&k, TxKind::Transfer, to, n, n - 1).unwrap())
            .collect();
        let v = encode_txs(&txs).unwrap();
        assert_eq!(decode_txs(&v).unwrap(), txs);
        assert_eq!(
            decode_txs(&serde_json::to_vec(&txs).unwrap()).unwrap(),
            txs,
            "records of earlier versions are JSON arrays"
        );
        for n in 0..v.len() {
            let r = decode_txs(&v[..n]);
            // Only cuts at a transaction boundary are well-formed (shorter) lists.
            if let Ok(got) = r {
                assert!(n == 1 || got.len() < txs.len(), "len {n}");
            }
        }
        assert!(decode_txs(&[]).is_err());
        assert!(decode_txs(&[7, 1, 2]).is_err());
        let mut bad_kind = v.clone();
        bad_kind[1] = 9;
        assert!(decode_txs(&bad_kind).is_err());
    }

    /// A bundle stored by an earlier version (JSON status, JSON transactions under the
    /// bundle id) can still be read, synced and confirmed.
    #[test]
    fn bundles_of_earlier_versions_stay_usable() {
        let alice = SigningKey::from_seed(&[1; 32]).unwrap();
        let bob = SigningKey::from_seed(&[2; 32]).unwrap();
        let mut cfg = ServicesConfig::new("/nonexistent-unused");
        cfg.set_genesis(vec![GenesisAllocation {
            address: alice.address(),
            amount: 100,
        }]);
        let svc = Services::with_store(
            Arc::new(MemoryStore::new()),
            cfg,
            SigningKey::from_seed(&[5; 32]).unwrap(),
        )
        .unwrap();
        let c = Caller::new(1);
        for k in [&alice, &bob] {
            svc.wallet_register(&c, client::register_request(k), NOW)
                .unwrap();
        }
        let s1 = svc
            .wallet_auth(&c, client::auth_challenge_request(&alice), NOW)
            .unwrap();
        svc.wallet_auth(&c, client::auth_answer_request(&alice, &s1).unwrap(), NOW)
            .unwrap();
        let tx = client::sign_transaction(&alice, TxKind::Transfer, bob.address(), 30, 0).unwrap();
        let sub = svc
            .bundle_submit(
                &c,
                BundleSubmitRequest {
                    transactions: vec![tx.clone()],
                },
                NOW,
            )
            .unwrap();
        assert!(sub.created);
        let id = sub.status.bundle_id;
        // Rewrite it the way earlier versions stored it.
        let st = sub.status.clone();
        let txs = vec![tx.clone()];
        svc.write(move |w| {
            let stored = load_stored(w, &id)?.unwrap();
            assert_eq!(stored.txs_at, Some(st.log_seq));
            w.delete(Table::BundleTxs, &st.log_seq.to_be_bytes());
            w.put(
                Table::BundleTxs,
                id.as_bytes(),
                &serde_json::to_vec(&txs).unwrap(),
            );
            w.put(
                Table::Bundles,
                id.as_bytes(),
                &serde_json::to_vec(&st).unwrap(),
            );
            Ok(())
        })
        .unwrap();
        let got = svc
            .bundle_status(BundleIdRequest { bundle_id: id })
            .unwrap();
        assert_eq!(got, sub.status);
        let sync = svc
            .bundle_sync(BundleSyncRequest {
                cursor: 0,
                limit: None,
                include_transactions: true,
            })
            .unwrap();
        assert_eq!(sync.entries.len(), 1);
        assert_eq!(sync.entries[0].transactions, Some(vec![tx.clone()]));
        let done = svc
            .bundle_confirm(&c, BundleIdRequest { bundle_id: id }, NOW + 1)
            .unwrap();
        assert_eq!(done.state, BundleState::Confirmed);
        assert_eq!(done.finalized_at_ms, Some(NOW + 1));
        let bal = svc
            .wallet_balance(
                &c,
                crate::types::WalletBalanceRequest {
                    address: Some(bob.address()),
                },
            )
            .unwrap();
        assert_eq!(bal.balance, 30);
        // The confirmed record is binary now and still finds its transactions.
        let sync = svc
            .bundle_sync(BundleSyncRequest {
                cursor: 1,
                limit: None,
                include_transactions: true,
            })
            .unwrap();
        assert_eq!(sync.entries[0].bundle, done);
        assert_eq!(sync.entries[0].transactions, Some(vec![tx]));
    }
}
