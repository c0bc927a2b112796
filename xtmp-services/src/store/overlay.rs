//! The per-operation write buffer shared by the backends.

use std::collections::HashMap;

use super::{Savepoint, StoreError, Table, WriteTx};

/// Point reads of the state under an operation (the backend's open transaction).
pub trait BaseGet {
    /// The value at `key`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn base_get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
}

type Key = (Table, Vec<u8>);

/// A [`WriteTx`] that buffers one operation's writes over a [`BaseGet`], with an undo log
/// for savepoints.
pub struct OpTx<'b> {
    base: &'b dyn BaseGet,
    writes: HashMap<Key, Option<Vec<u8>>>,
    /// (key, the buffered state before the write: `None` = not buffered).
    undo: Vec<(Key, Option<Option<Vec<u8>>>)>,
}

impl<'b> OpTx<'b> {
    /// An empty buffer over `base`.
    pub fn new(base: &'b dyn BaseGet) -> Self {
        Self {
            base,
            writes: HashMap::new(),
            undo: Vec::new(),
        }
    }

    /// The buffered writes (`None` = delete), to apply to the backend.
    pub fn into_writes(self) -> HashMap<(Table, Vec<u8>), Option<Vec<u8>>> {
        self.writes
    }

    fn record(&mut self, table: Table, key: &[u8], value: Option<Vec<u8>>) {
        let k = (table, key.to_vec());
        let prev = self.writes.insert(k.clone(), value);
        self.undo.push((k, prev));
    }
}

impl WriteTx for OpTx<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        // Avoid allocating a key for the lookup when nothing is buffered.
        if !self.writes.is_empty() {
            if let Some(v) = self.writes.get(&(table, key.to_vec())) {
                return Ok(v.clone());
            }
        }
        self.base.base_get(table, key)
    }

    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) {
        self.record(table, key, Some(value.to_vec()));
    }

    fn delete(&mut self, table: Table, key: &[u8]) {
        self.record(table, key, None);
    }

    fn savepoint(&self) -> Savepoint {
        Savepoint(self.undo.len())
    }

    fn rollback_to(&mut self, sp: Savepoint) {
        while self.undo.len() > sp.0 {
            let Some((k, prev)) = self.undo.pop() else {
                break;
            };
            match prev {
                Some(v) => {
                    self.writes.insert(k, v);
                }
                None => {
                    self.writes.remove(&k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Empty;
    impl BaseGet for Empty {
        fn base_get(&self, _t: Table, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok((k == b"base").then(|| b"b".to_vec()))
        }
    }

    #[test]
    fn savepoints_restore_exactly() {
        let base = Empty;
        let mut tx = OpTx::new(&base);
        tx.put(Table::Meta, b"a", b"1");
        let sp = tx.savepoint();
        tx.put(Table::Meta, b"a", b"2");
        tx.put(Table::Meta, b"c", b"3");
        tx.delete(Table::Meta, b"base");
        assert_eq!(tx.get(Table::Meta, b"base").unwrap(), None);
        assert_eq!(tx.get(Table::Meta, b"a").unwrap(), Some(b"2".to_vec()));
        tx.rollback_to(sp);
        assert_eq!(tx.get(Table::Meta, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(tx.get(Table::Meta, b"c").unwrap(), None);
        assert_eq!(tx.get(Table::Meta, b"base").unwrap(), Some(b"b".to_vec()));
        assert_eq!(tx.get(Table::Accounts, b"a").unwrap(), None);
        assert_eq!(tx.into_writes().len(), 1);
    }
}
