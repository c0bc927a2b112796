//! The storage trait and its backends.
//!
//! The domain logic sees the store as a set of named byte-keyed tables ([`Table`]) with
//! snapshot reads ([`ReadTx`]) and serializable write operations ([`WriteOp`]). A write
//! operation runs against a private overlay ([`WriteTx`]): it reads through to the
//! committed state plus everything earlier operations of the same commit wrote, buffers
//! its own writes, and returns [`Outcome::Commit`] or [`Outcome::Discard`]. Only the writes
//! of committed operations reach the backend, so every operation is atomic on its own
//! even when a backend commits many of them in one transaction.
//!
//! [`Store::write`] returns only once the operation's writes are durable (or it reports an
//! error, in which case nothing of the operation was applied). Callers send success to a
//! peer only after that.
//!
//! Backends: [`RedbStore`] (the default: redb, ACID, fsync'd group commit) and
//! [`MemoryStore`] (volatile, for tests and tools).

mod memory;
mod overlay;
mod redb_store;

pub use memory::MemoryStore;
pub use overlay::{BaseGet, OpTx};
pub use redb_store::{RedbStore, RedbStoreOptions};

/// The tables of the application state. Keys and values are bytes; their layout is
/// private to the modules that own each table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Counters and settings (`supply`, serials, genesis marker).
    Meta,
    /// address → balance and next nonce.
    Accounts,
    /// address → ML-DSA-65 public key.
    Keys,
    /// transaction id → where and when it was applied.
    Txids,
    /// bundle id → bundle state.
    Bundles,
    /// bundle id → its transactions.
    BundleTxs,
    /// log sequence number → bundle id (one entry per bundle state change).
    BundleLog,
    /// registry key → entry.
    Registry,
    /// stamp serial → receipt fields.
    Stamps,
    /// certificate serial → certificate.
    Certs,
    /// certificate serial → revocation.
    Revoked,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 11] = [
        Table::Meta,
        Table::Accounts,
        Table::Keys,
        Table::Txids,
        Table::Bundles,
        Table::BundleTxs,
        Table::BundleLog,
        Table::Registry,
        Table::Stamps,
        Table::Certs,
        Table::Revoked,
    ];

    /// The table's stable name in the backend.
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Accounts => "accounts",
            Table::Keys => "keys",
            Table::Txids => "txids",
            Table::Bundles => "bundles",
            Table::BundleTxs => "bundle_txs",
            Table::BundleLog => "bundle_log",
            Table::Registry => "registry",
            Table::Stamps => "stamps",
            Table::Certs => "certs",
            Table::Revoked => "revoked",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A storage failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend failed (I/O, corruption, ...). Nothing of the operation was applied.
    #[error("storage backend: {0}")]
    Backend(String),
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// The write operation panicked; it was discarded.
    #[error("the write operation panicked")]
    OpPanicked,
}

/// Key/value pairs returned by [`ReadTx::scan`].
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A consistent read-only snapshot.
pub trait ReadTx {
    /// The value at `key`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` entries with `start <= key` (and `key < end` when given), in key
    /// order.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError>;

    /// The number of entries in `table`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn count(&self, table: Table) -> Result<u64, StoreError>;
}

/// A position in a [`WriteTx`]'s buffered writes, for partial rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Savepoint(pub(crate) usize);

/// The view a write operation works on: reads see the committed state, the writes of the
/// earlier operations of the same commit, and this operation's own writes.
pub trait WriteTx {
    /// The value at `key`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Buffers a write.
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]);
    /// Buffers a deletion.
    fn delete(&mut self, table: Table, key: &[u8]);
    /// The current position, to roll back to.
    fn savepoint(&self) -> Savepoint;
    /// Undoes every write buffered since `sp`.
    fn rollback_to(&mut self, sp: Savepoint);
}

/// What a write operation asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Apply the buffered writes.
    Commit,
    /// Drop them.
    Discard,
}

/// A write operation. It must not block or do expensive work (it may run on the store's
/// single writer thread, between other callers' operations): verify signatures before.
pub type WriteOp = Box<dyn FnOnce(&mut dyn WriteTx) -> Outcome + Send>;

/// Receives the result of a write submitted with [`Store::write_with`].
pub type WriteDone = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// Counters of a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    /// Backend transactions committed.
    pub commits: u64,
    /// Write operations committed.
    pub ops_committed: u64,
    /// Write operations discarded (validation failures).
    pub ops_discarded: u64,
}

/// A transactional store.
pub trait Store: Send + Sync {
    /// A read snapshot of the committed (durable) state.
    ///
    /// # Errors
    /// [`StoreError`].
    fn read(&self) -> Result<Box<dyn ReadTx + '_>, StoreError>;

    /// Runs `op` atomically and returns once its writes are durable.
    ///
    /// `Ok(())` means the operation ran and, if it returned [`Outcome::Commit`], its writes
    /// are durable. On `Err`, nothing of it was applied.
    ///
    /// # Errors
    /// [`StoreError`].
    fn write(&self, op: WriteOp) -> Result<(), StoreError>;

    /// Submits `op` like [`Store::write`] without waiting for it: `done` gets exactly what
    /// `write` would have returned, once the operation's writes are durable (or failed).
    /// `done` may run on the backend's writer thread, so it must be quick and must not
    /// block (send on a channel, wake a task).
    ///
    /// The default runs [`Store::write`] on the calling thread, then `done`.
    fn write_with(&self, op: WriteOp, done: WriteDone) {
        done(self.write(op));
    }

    /// Counters.
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }
}
