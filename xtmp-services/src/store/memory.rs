//! A volatile in-memory backend (tests, tools). Not durable.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::overlay::{BaseGet, OpTx};
use super::{Outcome, ReadTx, Store, StoreError, StoreStats, Table, WriteOp};

type Map = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

/// An in-memory [`Store`]: serializable (one writer at a time), snapshot reads by copy of
/// the needed entries, nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    data: RwLock<Arc<Map>>,
    commits: AtomicU64,
    discarded: AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn snapshot(&self) -> Arc<Map> {
        match self.data.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

struct Snap(Arc<Map>);

impl BaseGet for Snap {
    fn base_get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.get(&(table, key.to_vec())).cloned())
    }
}

impl ReadTx for Snap {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.base_get(table, key)
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<super::Entries, StoreError> {
        Ok(self
            .0
            .range((table, start.to_vec())..)
            .take_while(|((t, k), _)| *t == table && end.is_none_or(|e| k.as_slice() < e))
            .take(limit)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn count(&self, table: Table) -> Result<u64, StoreError> {
        Ok(self
            .0
            .range((table, Vec::new())..)
            .take_while(|((t, _), _)| *t == table)
            .count() as u64)
    }
}

impl Store for MemoryStore {
    fn read(&self) -> Result<Box<dyn ReadTx + '_>, StoreError> {
        Ok(Box::new(Snap(self.snapshot())))
    }

    fn write(&self, op: WriteOp) -> Result<(), StoreError> {
        let mut guard = match self.data.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let writes = {
            let base = Snap(guard.clone());
            let mut tx = OpTx::new(&base);
            let outcome = catch_unwind(AssertUnwindSafe(|| op(&mut tx)))
                .map_err(|_| StoreError::OpPanicked)?;
            if outcome == Outcome::Discard {
                self.discarded.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            tx.into_writes()
        };
        // The snapshot above is dropped, so this clones only if a reader holds one.
        let map = Arc::make_mut(&mut guard);
        for ((t, k), v) in writes {
            match v {
                Some(v) => {
                    map.insert((t, k), v);
                }
                None => {
                    map.remove(&(t, k));
                }
            }
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn stats(&self) -> StoreStats {
        let c = self.commits.load(Ordering::Relaxed);
        StoreStats {
            commits: c,
            ops_committed: c,
            ops_discarded: self.discarded.load(Ordering::Relaxed),
        }
    }
}
