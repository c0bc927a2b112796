//! The [`Services`] struct: construction, sessions, the store helpers, JSON dispatch and
//! metrics. The operations themselves live in `wallet`, `bundle`, `registry`, `qlock` and
//! `tlsls`.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::broadcast;
use xtmp_proto::MessageType;

use crate::config::ServicesConfig;
use crate::crypto::{sha256, Address, PublicKey, SigningKey, SEED_LEN};
use crate::error::AppError;
use crate::events::{Event, EventBus, Notification, Ticket};
use crate::qlock::LockTable;
use crate::records::{self, meta, Account};
use crate::store::{
    Outcome, ReadTx, RedbStore, RedbStoreOptions, Store, StoreError, StoreStats, WriteOp, WriteTx,
};

/// A transport session, as the runtime names it (`RequestContext::session_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// Who is asking: the session, and the client's static key fingerprint when the session
/// was established with `pqIK` (the runtime's `RequestContext::client_key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The session.
    pub session: SessionId,
    /// SHA-256 of the client's X-Wing static public key, if it authenticated with one.
    pub client_key: Option<[u8; 32]>,
}

impl Caller {
    /// A caller without a client static key.
    pub fn new(session: u64) -> Self {
        Self {
            session: SessionId(session),
            client_key: None,
        }
    }

    /// A caller whose session proved possession of a static key with this fingerprint.
    pub fn with_client_key(session: u64, fingerprint: [u8; 32]) -> Self {
        Self {
            session: SessionId(session),
            client_key: Some(fingerprint),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Challenge {
    pub address: Address,
    pub nonce: [u8; 32],
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct SessionState {
    pub wallet: Option<Address>,
    pub challenge: Option<Challenge>,
}

/// Most wallet keys [`Services`] keeps parsed in memory (a parsed ML-DSA-65 key is about
/// 4 KiB with aws-lc's copy).
const KEY_CACHE_MAX: usize = 4096;

/// Per-operation request and error counters.
#[derive(Debug, Default)]
struct OpCounter {
    requests: AtomicU64,
    errors: AtomicU64,
}

const OPS: &[(MessageType, &str)] = &[
    (MessageType::WalletRegister, "WalletRegister"),
    (MessageType::WalletAuth, "WalletAuth"),
    (MessageType::WalletBalance, "WalletBalance"),
    (MessageType::WalletTransaction, "WalletTransaction"),
    (MessageType::BundleSubmit, "BundleSubmit"),
    (MessageType::BundleStatus, "BundleStatus"),
    (MessageType::BundleConfirm, "BundleConfirm"),
    (MessageType::BundleSync, "BundleSync"),
    (MessageType::RegistryQuery, "RegistryQuery"),
    (MessageType::RegistryUpdate, "RegistryUpdate"),
    (MessageType::RegistryStamp, "RegistryStamp"),
    (MessageType::QLOCKRequest, "QLOCKRequest"),
    (MessageType::TLSLSRequest, "TLSLSRequest"),
];

/// Counters of one request type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct OpMetrics {
    /// The message type's name.
    pub message_type: String,
    /// Requests handled.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
}

/// A snapshot of the application layer's metrics (pushed by `MetricsStream`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MetricsSnapshot {
    /// Per request type.
    pub operations: Vec<OpMetrics>,
    /// Storage commits (each one fsync).
    pub store_commits: u64,
    /// Write operations committed.
    pub store_ops_committed: u64,
    /// Write operations discarded by validation.
    pub store_ops_discarded: u64,
    /// Notifications published.
    pub events_published: u64,
    /// Current notification receivers.
    pub event_subscribers: usize,
    /// Sessions with wallet-auth state.
    pub sessions: usize,
    /// Locks currently held.
    pub locks_held: usize,
    /// Accounts in the ledger.
    pub accounts: u64,
    /// Total units in existence.
    pub supply: u64,
}

/// The application layer: wallets, bundles, registry, QLOCK, TLSLS and the event bus over
/// a [`Store`].
///
/// Every method is synchronous and may block on storage (a durable commit); call it from
/// a blocking context (`tokio::task::spawn_blocking`), or use [`Services::handle_async`],
/// which awaits the commit of `WalletTransaction` and `BundleSubmit` instead of blocking.
/// Methods that depend on time take `now_ms` (milliseconds since the Unix epoch) and
/// never read a clock.
pub struct Services {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: ServicesConfig,
    pub(crate) signer: Arc<SigningKey>,
    pub(crate) signer_id: [u8; 32],
    pub(crate) mint_authority: Option<Address>,
    pub(crate) sessions: Mutex<HashMap<SessionId, SessionState>>,
    /// Registered wallet keys, parsed (keys never change once registered).
    keys: Mutex<HashMap<Address, Arc<PublicKey>>>,
    pub(crate) locks: Mutex<LockTable>,
    pub(crate) bus: Arc<EventBus>,
    counters: Vec<OpCounter>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("signer", &self.signer)
            .field("mint_authority", &self.mint_authority)
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps hold plain data that stays consistent between statements.
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Services {
    /// Opens the default store (redb in `config.data_dir()`), loads or creates the
    /// server's signing key, and applies the genesis allocations if this is their first
    /// start.
    ///
    /// # Errors
    /// [`AppError::BadRequest`] for invalid settings or a genesis that differs from the
    /// one already applied; [`AppError::Storage`] if the store or key cannot be opened.
    pub fn open(config: ServicesConfig) -> Result<Self, AppError> {
        config.validate()?;
        let mut opts = RedbStoreOptions::default();
        opts.set_max_batch(config.group_commit_max_batch());
        let store = RedbStore::open_dir(config.data_dir(), &opts)?;
        let signer = load_or_create_signing_key(&config.signing_key_file())?;
        Self::with_store(Arc::new(store), config, signer)
    }

    /// Builds the services over any store with an explicit signing key.
    ///
    /// # Errors
    /// As [`Services::open`].
    pub fn with_store(
        store: Arc<dyn Store>,
        config: ServicesConfig,
        signer: SigningKey,
    ) -> Result<Self, AppError> {
        config.validate()?;
        let mint_authority = match config.mint_authority() {
            Some(k) => Some(Address::of(&PublicKey::from_bytes(k)?)),
            None => None,
        };
        let fencing_hwm = records::meta_u64(&*store.read()?, meta::FENCING_HWM)?;
        let signer_id = signer.public_key().key_id();
        let s = Self {
            store,
            locks: Mutex::new(LockTable::new(fencing_hwm)),
            bus: Arc::new(EventBus::new(config.event_capacity())),
            sessions: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            counters: OPS.iter().map(|_| OpCounter::default()).collect(),
            signer: Arc::new(signer),
            signer_id,
            mint_authority,
            config,
        };
        s.apply_genesis()?;
        Ok(s)
    }

    fn apply_genesis(&self) -> Result<(), AppError> {
        let genesis = self.config.genesis().to_vec();
        if genesis.is_empty() {
            return Ok(());
        }
        let mut parts: Vec<Vec<u8>> = vec![b"XTMP/v1/genesis\0".to_vec()];
        for g in &genesis {
            parts.push(g.address.as_bytes().to_vec());
            parts.push(g.amount.to_be_bytes().to_vec());
        }
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        let hash = sha256(&refs);
        self.write(move |tx| {
            if let Some(prev) = tx.get(crate::store::Table::Meta, meta::GENESIS.as_bytes())? {
                if prev.as_slice() == hash.as_slice() {
                    return Ok(());
                }
                return Err(AppError::BadRequest(
                    "xtmp_services: the genesis allocations differ from the ones already applied to this data directory (use a mint instead)".into(),
                ));
            }
            let mut supply = records::meta_u64(tx, meta::SUPPLY)?;
            for g in &genesis {
                let mut a = records::account(tx, &g.address)?.unwrap_or_default();
                a.balance = a.balance.checked_add(g.amount).ok_or(AppError::BalanceOverflow)?;
                supply = supply.checked_add(g.amount).ok_or(AppError::BalanceOverflow)?;
                records::put_account(tx, &g.address, &a);
            }
            records::put_meta_u64(tx, meta::SUPPLY, supply);
            tx.put(crate::store::Table::Meta, meta::GENESIS.as_bytes(), &hash);
            Ok(())
        })
    }

    /// The settings.
    pub fn config(&self) -> &ServicesConfig {
        &self.config
    }

    /// The server's ML-DSA-65 public key (stamps and certificates).
    pub fn server_public_key(&self) -> &PublicKey {
        self.signer.public_key()
    }

    /// SHA-256 of [`Services::server_public_key`].
    pub fn server_key_id(&self) -> [u8; 32] {
        self.signer_id
    }

    /// The mint authority's wallet address, if one is configured.
    pub fn mint_authority(&self) -> Option<Address> {
        self.mint_authority
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// A receiver of every change notification from now on (see [`crate::events`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.bus.subscribe()
    }

    /// The session ended: its wallet binding, pending challenge and locks are dropped
    /// (locks are freed at once, with a `released` lock event).
    pub fn session_closed(&self, session: SessionId, now_ms: u64) {
        lock(&self.sessions).remove(&session);
        let freed = lock(&self.locks).release_session(session);
        self.bus.publish_all(now_ms, freed);
    }

    /// Housekeeping for the passage of time: frees expired leases (publishing `expired`
    /// lock events) and drops expired challenges. Call it periodically (e.g. every second).
    pub fn tick(&self, now_ms: u64) {
        let expired = lock(&self.locks).expire(now_ms);
        self.bus.publish_all(now_ms, expired);
        lock(&self.sessions).retain(|_, s| {
            if s.challenge
                .as_ref()
                .is_some_and(|c| c.expires_at_ms <= now_ms)
            {
                s.challenge = None;
            }
            s.wallet.is_some() || s.challenge.is_some()
        });
    }

    /// The registered public key of `address` (`None`: not registered), from the cache of
    /// parsed keys or else the store. Only durable keys are cached, and a registered key
    /// never changes, so the cache needs no invalidation.
    pub(crate) fn wallet_key(&self, address: &Address) -> Result<Option<Arc<PublicKey>>, AppError> {
        if let Some(k) = lock(&self.keys).get(address) {
            return Ok(Some(k.clone()));
        }
        let Some(pk) = crate::wallet::public_key(&*self.read()?, address)? else {
            return Ok(None);
        };
        let pk = Arc::new(pk);
        let mut cache = lock(&self.keys);
        if cache.len() >= KEY_CACHE_MAX {
            // Evict an arbitrary entry: cheap, and a miss only costs a store read.
            if let Some(old) = cache.keys().next().copied() {
                cache.remove(&old);
            }
        }
        cache.insert(*address, pk.clone());
        Ok(Some(pk))
    }

    /// The wallet bound to `session`, if any.
    pub fn session_wallet(&self, session: SessionId) -> Option<Address> {
        lock(&self.sessions).get(&session).and_then(|s| s.wallet)
    }

    pub(crate) fn require_wallet(&self, caller: &Caller) -> Result<Address, AppError> {
        self.session_wallet(caller.session)
            .ok_or(AppError::NotAuthenticated)
    }

    pub(crate) fn is_authority(&self, caller: &Caller) -> bool {
        self.mint_authority.is_some() && self.session_wallet(caller.session) == self.mint_authority
    }

    /// Runs `f` as one atomic write operation and returns its result once durable. On
    /// `Err` from `f` nothing is written.
    pub(crate) fn write<R, F>(&self, f: F) -> Result<R, AppError>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn WriteTx) -> Result<R, AppError> + Send + 'static,
    {
        let (op, slot) = write_op(f);
        write_result(self.store.write(op), &slot)
    }

    /// Like [`Services::write`] for an operation that also yields change notifications:
    /// they are published after the commit, in commit order.
    pub(crate) fn write_ev<R, F>(&self, now_ms: u64, f: F) -> Result<R, AppError>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn WriteTx) -> Result<(R, Vec<Event>), AppError> + Send + 'static,
    {
        let (f, mut publish) = self.with_events(f, now_ms);
        let r = self.write(f);
        publish.committed = r.is_ok();
        r
    }

    /// [`Services::write_ev`] without blocking the calling thread: the operation goes to
    /// the store's writer and the durable commit is awaited (used by
    /// [`Services::handle_async`] on the runtime's worker threads).
    pub(crate) async fn write_ev_async<R, F>(&self, now_ms: u64, f: F) -> Result<R, AppError>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn WriteTx) -> Result<(R, Vec<Event>), AppError> + Send + 'static,
    {
        let (f, mut publish) = self.with_events(f, now_ms);
        let (op, slot) = write_op(f);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.store.write_with(
            op,
            Box::new(move |r| {
                // Redeemed here, right after the commit, and not after the await below: a
                // request dropped while waiting must not hold back the notifications of
                // later commits.
                publish.committed = r.is_ok();
                drop(publish);
                let _ = tx.send(r);
            }),
        );
        let r = rx.await.unwrap_or(Err(StoreError::Closed));
        write_result(r, &slot)
    }

    /// Wraps an operation yielding events: inside the operation (so in commit order) it
    /// takes a bus ticket and leaves it with the events in the returned [`Publish`], which
    /// redeems the ticket when dropped.
    #[allow(clippy::type_complexity)]
    fn with_events<R, F>(
        &self,
        f: F,
        now_ms: u64,
    ) -> (
        impl FnOnce(&mut dyn WriteTx) -> Result<R, AppError> + Send + 'static,
        Publish,
    )
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn WriteTx) -> Result<(R, Vec<Event>), AppError> + Send + 'static,
    {
        let bus = self.bus.clone();
        let ticket: EventSlot = Arc::new(Mutex::new(None));
        let t2 = ticket.clone();
        let op = move |tx: &mut dyn WriteTx| {
            let (r, events) = f(tx)?;
            if !events.is_empty() {
                // Taken inside the operation: tickets follow commit order.
                *lock(&t2) = Some((bus.ticket(), events));
            }
            Ok(r)
        };
        let publish = Publish {
            bus: self.bus.clone(),
            ticket,
            now_ms,
            committed: false,
        };
        (op, publish)
    }

    /// A snapshot of the durable state.
    pub(crate) fn read(&self) -> Result<Box<dyn ReadTx + '_>, AppError> {
        Ok(self.store.read()?)
    }

    pub(crate) fn publish(&self, now_ms: u64, events: Vec<Event>) {
        self.bus.publish_all(now_ms, events);
    }

    /// A metrics snapshot.
    ///
    /// # Errors
    /// [`AppError::Storage`] if the store cannot be read.
    pub fn metrics(&self) -> Result<MetricsSnapshot, AppError> {
        let st: StoreStats = self.store.stats();
        let r = self.read()?;
        let accounts = r.count(crate::store::Table::Accounts)?;
        let supply = records::meta_u64(&*r, meta::SUPPLY)?;
        drop(r);
        Ok(MetricsSnapshot {
            operations: OPS
                .iter()
                .zip(&self.counters)
                .map(|((_, name), c)| OpMetrics {
                    message_type: (*name).to_string(),
                    requests: c.requests.load(Ordering::Relaxed),
                    errors: c.errors.load(Ordering::Relaxed),
                })
                .collect(),
            store_commits: st.commits,
            store_ops_committed: st.ops_committed,
            store_ops_discarded: st.ops_discarded,
            events_published: self.bus.published(),
            event_subscribers: self.bus.receivers(),
            sessions: lock(&self.sessions).len(),
            locks_held: lock(&self.locks).len(),
            accounts,
            supply,
        })
    }

    /// The total of all balances as recorded (genesis plus mints).
    ///
    /// # Errors
    /// [`AppError::Storage`].
    pub fn supply(&self) -> Result<u64, AppError> {
        records::meta_u64(&*self.read()?, meta::SUPPLY)
    }

    /// Every account `(address, balance, next_nonce)` in address order (audits and tests;
    /// reads the whole table).
    ///
    /// # Errors
    /// [`AppError::Storage`].
    pub fn accounts(&self) -> Result<Vec<(Address, u64, u64)>, AppError> {
        let r = self.read()?;
        let mut out = Vec::new();
        let mut start = Vec::new();
        loop {
            let page = r.scan(crate::store::Table::Accounts, &start, None, 1024)?;
            let n = page.len();
            for (k, v) in page {
                let a: [u8; 32] = k
                    .as_slice()
                    .try_into()
                    .map_err(|_| records::corrupt("account key"))?;
                let acc = Account::decode(&v)?;
                out.push((Address(a), acc.balance, acc.next_nonce));
                start = k;
                start.push(0);
            }
            if n < 1024 {
                return Ok(out);
            }
        }
    }

    /// Handles one request-response message: `payload` is the JSON request of
    /// `message_type`, the result the JSON response body. Stream subscriptions
    /// (`LiveUpdates`, `EventStream`, `MetricsStream`) are not handled here (they need
    /// the runtime's push streams).
    ///
    /// # Errors
    /// The operation's [`AppError`]; [`AppError::BadRequest`] for unparsable JSON or a
    /// type this layer does not answer.
    pub fn handle(
        &self,
        caller: &Caller,
        message_type: MessageType,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Vec<u8>, AppError> {
        let r = self.dispatch(caller, message_type, payload, now_ms);
        self.count(message_type, r.is_err());
        r
    }

    /// [`Services::handle`] for an async caller. `WalletTransaction` and `BundleSubmit` run
    /// their checks (JSON, signatures) on the calling thread and then **await** the durable
    /// commit instead of blocking a thread on it; the reply is still sent only after the
    /// fsync'd commit. Every other type runs [`Services::handle`] as is, which may block on
    /// a commit: call this only for the two types above unless the caller may block.
    ///
    /// # Errors
    /// As [`Services::handle`].
    pub async fn handle_async(
        &self,
        caller: &Caller,
        message_type: MessageType,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Vec<u8>, AppError> {
        let r = match message_type {
            MessageType::WalletTransaction => match parse(payload) {
                Ok(req) => json(self.wallet_transaction_async(caller, req, now_ms).await),
                Err(e) => Err(e),
            },
            MessageType::BundleSubmit => match parse(payload) {
                Ok(req) => json(self.bundle_submit_async(caller, req, now_ms).await),
                Err(e) => Err(e),
            },
            other => return self.handle(caller, other, payload, now_ms),
        };
        self.count(message_type, r.is_err());
        r
    }

    fn count(&self, message_type: MessageType, failed: bool) {
        let idx = OPS.iter().position(|(t, _)| *t == message_type);
        if let Some(c) = idx.and_then(|i| self.counters.get(i)) {
            c.requests.fetch_add(1, Ordering::Relaxed);
            if failed {
                c.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn dispatch(
        &self,
        caller: &Caller,
        t: MessageType,
        p: &[u8],
        now: u64,
    ) -> Result<Vec<u8>, AppError> {
        match t {
            MessageType::WalletRegister => json(self.wallet_register(caller, parse(p)?, now)),
            MessageType::WalletAuth => json(self.wallet_auth(caller, parse(p)?, now)),
            MessageType::WalletBalance => json(self.wallet_balance(caller, parse_or_default(p)?)),
            MessageType::WalletTransaction => json(self.wallet_transaction(caller, parse(p)?, now)),
            MessageType::BundleSubmit => json(self.bundle_submit(caller, parse(p)?, now)),
            MessageType::BundleStatus => json(self.bundle_status(parse(p)?)),
            MessageType::BundleConfirm => json(self.bundle_confirm(caller, parse(p)?, now)),
            MessageType::BundleSync => json(self.bundle_sync(parse_or_default(p)?)),
            MessageType::RegistryQuery => json(self.registry_query(parse(p)?)),
            MessageType::RegistryUpdate => json(self.registry_update(caller, parse(p)?, now)),
            MessageType::RegistryStamp => json(self.registry_stamp(parse(p)?, now)),
            MessageType::QLOCKRequest => json(self.qlock(caller, parse(p)?, now)),
            MessageType::TLSLSRequest => json(self.tlsls(caller, parse(p)?, now)),
            other => Err(AppError::BadRequest(format!(
                "{other} is not a request this layer answers"
            ))),
        }
    }
}

type EventSlot = Arc<Mutex<Option<(Ticket, Vec<Event>)>>>;

/// Redeems the bus ticket an operation took (if it took one) when dropped: with its events
/// if `committed`, else with none. Every ticket must be redeemed, or the notifications of
/// all later commits wait for it; being a drop guard, this also holds when the operation
/// or its completion is dropped without running.
struct Publish {
    bus: Arc<EventBus>,
    ticket: EventSlot,
    now_ms: u64,
    committed: bool,
}

impl Drop for Publish {
    fn drop(&mut self) {
        if let Some((t, events)) = lock(&self.ticket).take() {
            let events = if self.committed { events } else { Vec::new() };
            self.bus.publish_ticket(t, self.now_ms, events);
        }
    }
}
type ResultSlot<R> = Arc<Mutex<Option<Result<R, AppError>>>>;

/// The store operation running `f`, and the slot its result lands in.
fn write_op<R, F>(f: F) -> (WriteOp, ResultSlot<R>)
where
    R: Send + 'static,
    F: FnOnce(&mut dyn WriteTx) -> Result<R, AppError> + Send + 'static,
{
    let slot: ResultSlot<R> = Arc::new(Mutex::new(None));
    let out = slot.clone();
    let op: WriteOp = Box::new(move |tx| {
        let r = f(tx);
        let outcome = if r.is_ok() {
            Outcome::Commit
        } else {
            Outcome::Discard
        };
        *lock(&out) = Some(r);
        outcome
    });
    (op, slot)
}

/// The operation's result once the store reported `stored`.
fn write_result<R>(stored: Result<(), StoreError>, slot: &ResultSlot<R>) -> Result<R, AppError> {
    match stored {
        Ok(()) => {}
        Err(StoreError::OpPanicked) => {
            return Err(AppError::Internal("write operation panicked".into()))
        }
        Err(e) => {
            tracing::error!(error = %e, "store write failed");
            return Err(AppError::Storage(e.to_string()));
        }
    }
    let r = lock(slot).take();
    r.unwrap_or_else(|| {
        Err(AppError::Internal(
            "write operation produced no result".into(),
        ))
    })
}

/// Parses a JSON request.
///
/// # Errors
/// [`AppError::InvalidAddress`] for a malformed address field, else
/// [`AppError::BadRequest`] with serde's message.
pub fn parse<T: DeserializeOwned>(payload: &[u8]) -> Result<T, AppError> {
    serde_json::from_slice(payload).map_err(|e| {
        let msg = e.to_string();
        // A malformed address field gets its own code (serde embeds the address
        // parser's message verbatim).
        match msg.strip_prefix("invalid address: ") {
            Some(rest) => AppError::InvalidAddress(rest.to_string()),
            None => AppError::BadRequest(format!("invalid JSON payload: {msg}")),
        }
    })
}

/// Like [`parse`], but an empty (or all-whitespace) payload is the default request.
///
/// # Errors
/// As [`parse`].
pub fn parse_or_default<T: DeserializeOwned + Default>(payload: &[u8]) -> Result<T, AppError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        parse(payload)
    }
}

fn json<T: Serialize>(r: Result<T, AppError>) -> Result<Vec<u8>, AppError> {
    let v = r?;
    serde_json::to_vec(&v).map_err(|e| AppError::Internal(format!("cannot encode response: {e}")))
}

/// Loads the signing key seed (hex) from `path`, or creates it (mode 0600) with a new
/// random seed, writing the public key next to it as `<path>.pub` (hex).
///
/// # Errors
/// [`AppError::Storage`] if the file cannot be read or written or holds no valid seed.
pub fn load_or_create_signing_key(path: &Path) -> Result<SigningKey, AppError> {
    let io = |what: &str, e: std::io::Error| {
        AppError::Storage(format!("{what} {}: {e}", path.display()))
    };
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let mut seed = zeroize::Zeroizing::new([0u8; SEED_LEN]);
            crate::encoding::decode_to_slice(s.trim().as_bytes(), seed.as_mut()).map_err(|_| {
                AppError::Storage(format!("{}: expected 64 hex digits", path.display()))
            })?;
            let key = SigningKey::from_seed(&seed)?;
            let pub_path = public_key_path(path);
            if !pub_path.exists() {
                write_public_key(&pub_path, &key)
                    .map_err(|e| io("cannot write the public key next to", e))?;
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| io("cannot create the directory of", e))?;
                }
            }
            let key = SigningKey::generate()?;
            let tmp = path.with_extension("tmp");
            {
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create(true).truncate(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                let mut f = opts.open(&tmp).map_err(|e| io("cannot create", e))?;
                let hex_seed = zeroize::Zeroizing::new(crate::encoding::encode(key.seed()));
                f.write_all(hex_seed.as_bytes())
                    .map_err(|e| io("cannot write", e))?;
                f.write_all(b"\n").map_err(|e| io("cannot write", e))?;
                f.sync_all().map_err(|e| io("cannot sync", e))?;
            }
            std::fs::rename(&tmp, path).map_err(|e| io("cannot create", e))?;
            write_public_key(&public_key_path(path), &key)
                .map_err(|e| io("cannot write the public key next to", e))?;
            Ok(key)
        }
        Err(e) => Err(io("cannot read", e)),
    }
}

/// `<path>.pub`: where the public key of the signing key at `path` is written (hex).
pub fn public_key_path(path: &Path) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    p.into()
}

fn write_public_key(path: &Path, key: &SigningKey) -> std::io::Result<()> {
    std::fs::write(
        path,
        format!("{}\n", crate::encoding::encode(key.public_key().as_bytes())),
    )
}
