//! Wallets: registration, challenge-response authentication, balances, transactions.
//!
//! # Value
//! Value enters the ledger in exactly two ways, both counted in the recorded `supply`:
//! * **Genesis**: `[xtmp_services] genesis` allocations, applied once in the first
//!   transaction that sees them (an address may be allocated before its key is
//!   registered).
//! * **Mint**: a `WalletTransaction` of kind `mint` from the configured
//!   `mint_authority` wallet, signed by it, sent on a session authenticated as it; it
//!   creates `amount` for the recipient and uses the authority's nonce.
//!
//! Transfers only move value, so the sum of all balances always equals `supply`.

use crate::crypto::{message, random_bytes, Address, PublicKey};
use crate::encoding::Hex32;
use crate::error::AppError;
use crate::events::Event;
use crate::records::{self, meta, Account};
use crate::services::{lock, Caller, Challenge, Services};
use crate::store::{Table, WriteTx};
use crate::types::{
    SignedTransaction, TxKind, WalletAuthRequest, WalletAuthResponse, WalletBalanceRequest,
    WalletBalanceResponse, WalletRegisterRequest, WalletRegisterResponse,
    WalletTransactionResponse,
};

/// The write operation of a checked `WalletTransaction`.
type TransactionOp =
    Box<dyn FnOnce(&mut dyn WriteTx) -> Result<((Account, Account), Vec<Event>), AppError> + Send>;

fn transaction_response(txid: Hex32, from: Account, to: Account) -> WalletTransactionResponse {
    WalletTransactionResponse {
        txid,
        from_balance: from.balance,
        to_balance: to.balance,
        next_nonce: from.next_nonce,
    }
}

/// Where an applied transaction came from (stored with its id).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin {
    Direct,
    Bundle([u8; 32]),
}

/// Checks that need no state.
pub(crate) fn check_stateless(tx: &SignedTransaction) -> Result<(), AppError> {
    if tx.amount == 0 {
        return Err(AppError::InvalidAmount);
    }
    if tx.from == tx.to {
        return Err(AppError::SelfTransfer);
    }
    Ok(())
}

pub(crate) fn public_key<G: records::Get + ?Sized>(
    g: &G,
    addr: &Address,
) -> Result<Option<PublicKey>, AppError> {
    match g.get_raw(Table::Keys, addr.as_bytes())? {
        Some(k) => Ok(Some(
            PublicKey::from_bytes(&k).map_err(|_| records::corrupt("key"))?,
        )),
        None => Ok(None),
    }
}

/// Applies a verified transaction inside a write operation. Returns the sender's and the
/// recipient's accounts afterwards.
pub(crate) fn apply_tx(
    tx: &mut dyn WriteTx,
    stx: &SignedTransaction,
    txid: &Hex32,
    now_ms: u64,
    origin: Origin,
) -> Result<(Account, Account), AppError> {
    if tx.get(Table::Txids, txid.as_bytes())?.is_some() {
        return Err(AppError::DuplicateTransaction(txid.to_string()));
    }
    let mut from = records::account(tx, &stx.from)?
        .ok_or_else(|| AppError::WalletNotFound(stx.from.to_string()))?;
    if stx.nonce < from.next_nonce {
        return Err(AppError::NonceReplayed {
            expected: from.next_nonce,
            got: stx.nonce,
        });
    }
    if stx.nonce > from.next_nonce {
        return Err(AppError::NonceGap {
            expected: from.next_nonce,
            got: stx.nonce,
        });
    }
    let mut to = records::account(tx, &stx.to)?
        .ok_or_else(|| AppError::RecipientNotFound(stx.to.to_string()))?;
    match stx.kind {
        TxKind::Transfer => {
            if from.balance < stx.amount {
                return Err(AppError::InsufficientFunds {
                    balance: from.balance,
                    amount: stx.amount,
                });
            }
            to.balance = to
                .balance
                .checked_add(stx.amount)
                .ok_or(AppError::BalanceOverflow)?;
            from.balance -= stx.amount;
        }
        TxKind::Mint => {
            let supply = records::meta_u64(tx, meta::SUPPLY)?
                .checked_add(stx.amount)
                .ok_or(AppError::BalanceOverflow)?;
            to.balance = to
                .balance
                .checked_add(stx.amount)
                .ok_or(AppError::BalanceOverflow)?;
            records::put_meta_u64(tx, meta::SUPPLY, supply);
        }
    }
    from.next_nonce = from
        .next_nonce
        .checked_add(1)
        .ok_or_else(|| AppError::Internal("nonce exhausted".into()))?;
    records::put_account(tx, &stx.from, &from);
    records::put_account(tx, &stx.to, &to);
    let mut rec = Vec::with_capacity(41);
    rec.extend_from_slice(&now_ms.to_be_bytes());
    match origin {
        Origin::Direct => rec.push(0),
        Origin::Bundle(id) => {
            rec.push(1);
            rec.extend_from_slice(&id);
        }
    }
    tx.put(Table::Txids, txid.as_bytes(), &rec);
    Ok((from, to))
}

impl Services {
    /// `WalletRegister`: records an ML-DSA-65 public key. Idempotent: registering the same
    /// key again returns `created: false`.
    ///
    /// # Errors
    /// [`AppError::InvalidPublicKey`], storage errors.
    pub fn wallet_register(
        &self,
        _caller: &Caller,
        req: WalletRegisterRequest,
        now_ms: u64,
    ) -> Result<WalletRegisterResponse, AppError> {
        let pk = PublicKey::from_bytes(req.public_key.as_slice())?;
        let address = Address::of(&pk);
        let (created, acc) = self.write_ev(now_ms, move |tx| {
            let existing = tx.get(Table::Keys, address.as_bytes())?;
            let acc = records::account(tx, &address)?;
            if existing.is_some() {
                return Ok(((false, acc.unwrap_or_default()), Vec::new()));
            }
            tx.put(Table::Keys, address.as_bytes(), pk.as_bytes());
            let acc = acc.unwrap_or_default();
            records::put_account(tx, &address, &acc);
            let ev = Event::Wallet {
                address,
                balance: acc.balance,
                next_nonce: acc.next_nonce,
                txid: None,
            };
            Ok(((true, acc), vec![ev]))
        })?;
        Ok(WalletRegisterResponse {
            address,
            created,
            balance: acc.balance,
            next_nonce: acc.next_nonce,
        })
    }

    /// `WalletAuth`. Step 1 (no `signature`): issues a fresh random challenge for this
    /// session and wallet, replacing any earlier one. Step 2 (`challenge` and `signature`
    /// over [`message::wallet_auth`]): checks it and binds the session to the wallet. A
    /// challenge is single-use: a failed step 2 consumes it. A session bound to one wallet
    /// cannot switch to another.
    ///
    /// # Errors
    /// [`AppError::WalletNotFound`], [`AppError::NoChallenge`],
    /// [`AppError::ChallengeExpired`], [`AppError::BadSignature`],
    /// [`AppError::WrongWallet`], [`AppError::LimitReached`].
    pub fn wallet_auth(
        &self,
        caller: &Caller,
        req: WalletAuthRequest,
        now_ms: u64,
    ) -> Result<WalletAuthResponse, AppError> {
        let address = req.address;
        if let Some(bound) = self.session_wallet(caller.session) {
            if bound != address {
                return Err(AppError::WrongWallet {
                    bound: bound.to_string(),
                });
            }
        }
        let pk = self
            .wallet_key(&address)?
            .ok_or_else(|| AppError::WalletNotFound(address.to_string()))?;
        match (req.challenge, req.signature) {
            (None, None) => {
                let mut nonce = [0u8; 32];
                random_bytes(&mut nonce)?;
                let expires_at_ms = now_ms.saturating_add(self.config.challenge_ttl_ms());
                let mut sessions = lock(&self.sessions);
                if !sessions.contains_key(&caller.session) && sessions.len() >= self.config.max_sessions() {
                    // Make room by dropping expired, unbound challenges first.
                    sessions.retain(|_, s| {
                        s.wallet.is_some() || s.challenge.as_ref().is_some_and(|c| c.expires_at_ms > now_ms)
                    });
                    if sessions.len() >= self.config.max_sessions() {
                        return Err(AppError::LimitReached("too many sessions with pending authentication".into()));
                    }
                }
                sessions.entry(caller.session).or_default().challenge = Some(Challenge {
                    address,
                    nonce,
                    expires_at_ms,
                });
                Ok(WalletAuthResponse {
                    address,
                    authenticated: false,
                    challenge: Some(Hex32(nonce)),
                    session_id: Some(caller.session.0),
                    expires_at_ms: Some(expires_at_ms),
                })
            }
            (Some(challenge), Some(signature)) => {
                // Take the challenge out first: it is single-use whatever the outcome.
                let pending = {
                    let mut sessions = lock(&self.sessions);
                    sessions.get_mut(&caller.session).and_then(|s| s.challenge.take())
                };
                let pending = pending.ok_or(AppError::NoChallenge)?;
                if pending.address != address || pending.nonce != challenge.0 {
                    return Err(AppError::NoChallenge);
                }
                if now_ms >= pending.expires_at_ms {
                    return Err(AppError::ChallengeExpired);
                }
                let msg = message::wallet_auth(caller.session.0, &pending.nonce, &address);
                pk.verify(&msg, signature.as_slice())?;
                let mut sessions = lock(&self.sessions);
                let s = sessions.entry(caller.session).or_default();
                if let Some(bound) = s.wallet {
                    if bound != address {
                        return Err(AppError::WrongWallet {
                            bound: bound.to_string(),
                        });
                    }
                }
                s.wallet = Some(address);
                Ok(WalletAuthResponse {
                    address,
                    authenticated: true,
                    challenge: None,
                    session_id: None,
                    expires_at_ms: None,
                })
            }
            _ => Err(AppError::BadRequest(
                "send either only the address (step 1) or the address, challenge and signature (step 2)".into(),
            )),
        }
    }

    /// `WalletBalance`: any wallet's balance (balances are public); without an address,
    /// the session's wallet.
    ///
    /// # Errors
    /// [`AppError::NotAuthenticated`] (no address and no wallet bound),
    /// [`AppError::WalletNotFound`].
    pub fn wallet_balance(
        &self,
        caller: &Caller,
        req: WalletBalanceRequest,
    ) -> Result<WalletBalanceResponse, AppError> {
        let address = match req.address {
            Some(a) => a,
            None => self.require_wallet(caller)?,
        };
        let r = self.read()?;
        let acc = records::account(&*r, &address)?
            .ok_or_else(|| AppError::WalletNotFound(address.to_string()))?;
        let registered = r.get(Table::Keys, address.as_bytes())?.is_some();
        Ok(WalletBalanceResponse {
            address,
            balance: acc.balance,
            next_nonce: acc.next_nonce,
            registered,
        })
    }

    /// `WalletTransaction`: applies one signed transfer (or mint) atomically. The session
    /// must be bound to the sender. Checks, in order: amount and sender/recipient
    /// (`INVALID_AMOUNT`, `SELF_TRANSFER`), session (`NOT_AUTHENTICATED`, `WRONG_WALLET`),
    /// mint rights (`FORBIDDEN`), signature (`BAD_SIGNATURE`), then atomically: duplicate
    /// (`DUPLICATE_TRANSACTION`), nonce (`NONCE_REPLAYED`, `NONCE_GAP`), recipient
    /// (`RECIPIENT_NOT_FOUND`), funds (`INSUFFICIENT_FUNDS`), overflow.
    ///
    /// # Errors
    /// See above.
    pub fn wallet_transaction(
        &self,
        caller: &Caller,
        stx: SignedTransaction,
        now_ms: u64,
    ) -> Result<WalletTransactionResponse, AppError> {
        let (txid, op) = self.wallet_transaction_checked(caller, stx, now_ms)?;
        let (fa, ta) = self.write_ev(now_ms, op)?;
        Ok(transaction_response(txid, fa, ta))
    }

    /// [`Services::wallet_transaction`] that awaits the durable commit instead of blocking.
    pub(crate) async fn wallet_transaction_async(
        &self,
        caller: &Caller,
        stx: SignedTransaction,
        now_ms: u64,
    ) -> Result<WalletTransactionResponse, AppError> {
        let (txid, op) = self.wallet_transaction_checked(caller, stx, now_ms)?;
        let (fa, ta) = self.write_ev_async(now_ms, op).await?;
        Ok(transaction_response(txid, fa, ta))
    }

    /// The checks of `WalletTransaction` that need no write, and the write operation that
    /// applies it.
    fn wallet_transaction_checked(
        &self,
        caller: &Caller,
        stx: SignedTransaction,
        now_ms: u64,
    ) -> Result<(Hex32, TransactionOp), AppError> {
        check_stateless(&stx)?;
        let bound = self.require_wallet(caller)?;
        if bound != stx.from {
            return Err(AppError::WrongWallet {
                bound: bound.to_string(),
            });
        }
        if stx.kind == TxKind::Mint && Some(stx.from) != self.mint_authority {
            return Err(AppError::Forbidden(
                "only the mint authority may mint".into(),
            ));
        }
        let pk = self
            .wallet_key(&stx.from)?
            .ok_or_else(|| AppError::WalletNotFound(stx.from.to_string()))?;
        pk.verify(&stx.signing_message(), stx.signature.as_slice())?;
        let txid = stx.txid();
        let op: TransactionOp = Box::new(move |tx: &mut dyn WriteTx| {
            let (fa, ta) = apply_tx(tx, &stx, &txid, now_ms, Origin::Direct)?;
            let events = vec![
                Event::Wallet {
                    address: stx.from,
                    balance: fa.balance,
                    next_nonce: fa.next_nonce,
                    txid: Some(txid),
                },
                Event::Wallet {
                    address: stx.to,
                    balance: ta.balance,
                    next_nonce: ta.next_nonce,
                    txid: Some(txid),
                },
            ];
            Ok(((fa, ta), events))
        });
        Ok((txid, op))
    }

    /// Whether a transaction id was applied, and when (`(applied_at_ms, bundle_id)`).
    ///
    /// # Errors
    /// Storage errors.
    pub fn transaction_applied(
        &self,
        txid: &Hex32,
    ) -> Result<Option<(u64, Option<Hex32>)>, AppError> {
        let Some(v) = self.read()?.get(Table::Txids, txid.as_bytes())? else {
            return Ok(None);
        };
        let at = records::decode_u64(v.get(..8).ok_or_else(|| records::corrupt("txid"))?, "txid")?;
        let bundle = match v.get(8) {
            Some(1) => {
                let id: [u8; 32] = v
                    .get(9..41)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| records::corrupt("txid"))?;
                Some(Hex32(id))
            }
            _ => None,
        };
        Ok(Some((at, bundle)))
    }
}
