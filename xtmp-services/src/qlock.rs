//! QLOCK: named locks with leases and fencing tokens, held by sessions.
//!
//! * A lock is held by one session until it releases it, its lease ends, or the session
//!   ends ([`Services::session_closed`]). Time is the caller's `now_ms`; an expired lease
//!   counts as free at once, and [`Services::tick`] reclaims it with an `expired` event.
//! * Each successful `acquire` of a free lock gets a new **fencing token**, greater than
//!   every token handed out before — across locks and across restarts. A resource guarded
//!   by the lock rejects writes carrying a token lower than one it has seen.
//! * Lock state is in memory: sessions do not survive a restart, so neither do their
//!   locks. The token counter does: tokens are reserved in blocks of
//!   [`FENCING_BLOCK`], and the block's upper end is committed durably *before* any
//!   token of it is handed out; after a restart counting resumes above it.

use std::collections::HashMap;

use crate::crypto::Address;
use crate::error::AppError;
use crate::events::Event;
use crate::records::{self, meta};
use crate::services::{lock, Caller, Services, SessionId};
use crate::types::{QlockRequest, QlockResponse};

/// Fencing tokens reserved per durable write.
pub const FENCING_BLOCK: u64 = 1024;
/// Longest lock name in bytes.
pub const MAX_LOCK_NAME: usize = 256;

#[derive(Debug, Clone)]
struct Lock {
    holder: SessionId,
    wallet: Option<Address>,
    token: u64,
    expires_at_ms: u64,
}

/// The held locks and the fencing counter.
#[derive(Debug)]
pub(crate) struct LockTable {
    locks: HashMap<String, Lock>,
    per_session: HashMap<SessionId, usize>,
    /// Last token handed out.
    last_token: u64,
    /// Tokens up to here are durably reserved.
    reserved: u64,
}

impl LockTable {
    pub fn new(durable_hwm: u64) -> Self {
        Self {
            locks: HashMap::new(),
            per_session: HashMap::new(),
            last_token: durable_hwm,
            reserved: durable_hwm,
        }
    }

    pub fn len(&self) -> usize {
        self.locks.len()
    }

    fn remove(&mut self, name: &str) -> Option<Lock> {
        let l = self.locks.remove(name)?;
        if let Some(n) = self.per_session.get_mut(&l.holder) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_session.remove(&l.holder);
            }
        }
        Some(l)
    }

    /// The live lock `name` (an expired one is removed, with its event).
    fn live(&mut self, name: &str, now_ms: u64, events: &mut Vec<Event>) -> Option<&mut Lock> {
        if self
            .locks
            .get(name)
            .is_some_and(|l| l.expires_at_ms <= now_ms)
        {
            if let Some(l) = self.remove(name) {
                events.push(lock_event(name, "expired", l.token));
            }
        }
        self.locks.get_mut(name)
    }

    pub fn expire(&mut self, now_ms: u64) -> Vec<Event> {
        let expired: Vec<String> = self
            .locks
            .iter()
            .filter(|(_, l)| l.expires_at_ms <= now_ms)
            .map(|(n, _)| n.clone())
            .collect();
        let mut events = Vec::new();
        for name in expired {
            if let Some(l) = self.remove(&name) {
                events.push(lock_event(&name, "expired", l.token));
            }
        }
        events
    }

    pub fn release_session(&mut self, session: SessionId) -> Vec<Event> {
        if !self.per_session.contains_key(&session) {
            return Vec::new();
        }
        let held: Vec<String> = self
            .locks
            .iter()
            .filter(|(_, l)| l.holder == session)
            .map(|(n, _)| n.clone())
            .collect();
        let mut events = Vec::new();
        for name in held {
            if let Some(l) = self.remove(&name) {
                events.push(lock_event(&name, "released", l.token));
            }
        }
        events
    }
}

fn lock_event(name: &str, state: &str, token: u64) -> Event {
    Event::Lock {
        name: name.to_string(),
        state: state.to_string(),
        fencing_token: token,
    }
}

fn check_name(name: &str) -> Result<(), AppError> {
    if name.is_empty() || name.len() > MAX_LOCK_NAME {
        return Err(AppError::InvalidLockName(format!(
            "a name has 1 to {MAX_LOCK_NAME} bytes"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(AppError::InvalidLockName(
            "control characters are not allowed".into(),
        ));
    }
    Ok(())
}

impl Services {
    fn check_lease(&self, lease_ms: u64) -> Result<(), AppError> {
        if lease_ms == 0 || lease_ms > self.config.max_lease_ms() {
            return Err(AppError::InvalidLease(format!(
                "the lease must be 1 to {} ms",
                self.config.max_lease_ms()
            )));
        }
        Ok(())
    }

    /// The next fencing token, reserving a new block durably when needed. Called with the
    /// lock table held, so tokens are handed out in order.
    fn next_token(&self, table: &mut LockTable) -> Result<u64, AppError> {
        let next = table
            .last_token
            .checked_add(1)
            .ok_or_else(|| AppError::Internal("fencing tokens exhausted".into()))?;
        if next > table.reserved {
            let new_hwm = table.reserved.saturating_add(FENCING_BLOCK).max(next);
            self.write(move |tx| {
                // Never move the durable mark backwards (another Services on the same
                // store would be a misconfiguration, but keep tokens increasing anyway).
                let cur = records::meta_u64(tx, meta::FENCING_HWM)?;
                records::put_meta_u64(tx, meta::FENCING_HWM, cur.max(new_hwm));
                Ok(())
            })?;
            table.reserved = new_hwm;
        }
        table.last_token = next;
        Ok(next)
    }

    fn view(name: &str, l: Option<&Lock>, caller: &Caller) -> QlockResponse {
        QlockResponse {
            name: name.to_string(),
            held: l.is_some(),
            fencing_token: l.map(|l| l.token),
            expires_at_ms: l.map(|l| l.expires_at_ms),
            held_by_you: l.is_some_and(|l| l.holder == caller.session),
            holder_wallet: l.and_then(|l| l.wallet),
        }
    }

    /// `QLOCKRequest`: acquire, renew, release or inspect (see the module docs).
    ///
    /// # Errors
    /// [`AppError::InvalidLockName`], [`AppError::InvalidLease`], [`AppError::LockHeld`],
    /// [`AppError::LockNotHeld`], [`AppError::StaleFencingToken`],
    /// [`AppError::LimitReached`], storage errors (token reservation).
    pub fn qlock(
        &self,
        caller: &Caller,
        req: QlockRequest,
        now_ms: u64,
    ) -> Result<QlockResponse, AppError> {
        let wallet = self.session_wallet(caller.session);
        let mut table = lock(&self.locks);
        let mut events = Vec::new();
        let r = self.qlock_locked(&mut table, wallet, caller, req, now_ms, &mut events);
        // Published under the table lock, so lock events come out in the order they
        // happened.
        self.publish(now_ms, events);
        r
    }

    fn qlock_locked(
        &self,
        table: &mut LockTable,
        wallet: Option<Address>,
        caller: &Caller,
        req: QlockRequest,
        now_ms: u64,
        events: &mut Vec<Event>,
    ) -> Result<QlockResponse, AppError> {
        match req {
            QlockRequest::Acquire { name, lease_ms } => {
                check_name(&name)?;
                self.check_lease(lease_ms)?;
                let expires_at_ms = now_ms.saturating_add(lease_ms);
                if let Some(l) = table.live(&name, now_ms, events) {
                    if l.holder != caller.session {
                        return Err(AppError::LockHeld {
                            expires_at_ms: l.expires_at_ms,
                        });
                    }
                    // Already ours: extend, same token.
                    l.expires_at_ms = expires_at_ms;
                    let l = l.clone();
                    return Ok(Self::view(&name, Some(&l), caller));
                }
                let mine = table.per_session.get(&caller.session).copied().unwrap_or(0);
                if mine >= self.config.max_locks_per_session()
                    || table.len() >= self.config.max_locks()
                {
                    return Err(AppError::LimitReached("too many locks held".into()));
                }
                let token = self.next_token(table)?;
                let l = Lock {
                    holder: caller.session,
                    wallet,
                    token,
                    expires_at_ms,
                };
                table.locks.insert(name.clone(), l.clone());
                *table.per_session.entry(caller.session).or_insert(0) += 1;
                events.push(lock_event(&name, "acquired", token));
                Ok(Self::view(&name, Some(&l), caller))
            }
            QlockRequest::Renew {
                name,
                fencing_token,
                lease_ms,
            } => {
                check_name(&name)?;
                self.check_lease(lease_ms)?;
                let l = table
                    .live(&name, now_ms, events)
                    .ok_or(AppError::LockNotHeld)?;
                if l.holder != caller.session {
                    return Err(AppError::LockNotHeld);
                }
                if l.token != fencing_token {
                    return Err(AppError::StaleFencingToken { current: l.token });
                }
                l.expires_at_ms = now_ms.saturating_add(lease_ms);
                let l = l.clone();
                Ok(Self::view(&name, Some(&l), caller))
            }
            QlockRequest::Release {
                name,
                fencing_token,
            } => {
                check_name(&name)?;
                let l = table
                    .live(&name, now_ms, events)
                    .ok_or(AppError::LockNotHeld)?;
                if l.holder != caller.session {
                    return Err(AppError::LockNotHeld);
                }
                if l.token != fencing_token {
                    return Err(AppError::StaleFencingToken { current: l.token });
                }
                table.remove(&name);
                events.push(lock_event(&name, "released", fencing_token));
                Ok(Self::view(&name, None, caller))
            }
            QlockRequest::Inspect { name } => {
                check_name(&name)?;
                let l = table.live(&name, now_ms, events).cloned();
                Ok(Self::view(&name, l.as_ref(), caller))
            }
        }
    }
}
