//! The string table of a stream: string field values are stored and compared as `StrId`s.
//!
//! Append-only: an id, once given, means the same string for the life of the process (ids
//! are not persisted; RocksDB rows hold the strings themselves). Memory grows with the
//! number of distinct strings a stream has seen.

use rustc_hash::FxHashMap;
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard};

use crate::agg::{StrId, Strings};

#[derive(Debug, Default)]
pub(crate) struct StringTable {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    strings: Vec<(Arc<str>, u64)>,
    ids: FxHashMap<Arc<str>, StrId>,
}

/// A read view of the table, for queries.
pub(crate) struct StringsView<'a>(RwLockReadGuard<'a, Inner>);

impl StringTable {
    pub(crate) fn intern(&self, s: &str) -> StrId {
        if let Some(&id) = self.inner.read().ids.get(s) {
            return id;
        }
        let mut inner = self.inner.write();
        if let Some(&id) = inner.ids.get(s) {
            return id;
        }
        let id = StrId(
            u32::try_from(inner.strings.len())
                .expect("fewer than 2^32 distinct strings per stream"),
        );
        let shared: Arc<str> = Arc::from(s);
        inner.strings.push((
            Arc::clone(&shared),
            xxhash_rust::xxh3::xxh3_64(s.as_bytes()),
        ));
        inner.ids.insert(shared, id);
        id
    }

    pub(crate) fn read(&self) -> StringsView<'_> {
        StringsView(self.inner.read())
    }

    /// An interner for many strings in a row (a batch's), which takes the read lock once
    /// for all the strings already known, rather than once each.
    pub(crate) fn interner(&self) -> Interner<'_> {
        Interner {
            table: self,
            known: None,
        }
    }
}

/// [`StringTable::intern`] for many strings, holding the table's read lock between them
/// (let go to add a new string).
pub(crate) struct Interner<'a> {
    table: &'a StringTable,
    known: Option<RwLockReadGuard<'a, Inner>>,
}

impl Interner<'_> {
    pub(crate) fn intern(&mut self, s: &str) -> StrId {
        let known = self.known.get_or_insert_with(|| self.table.inner.read());
        if let Some(&id) = known.ids.get(s) {
            return id;
        }
        // A new string: added under the write lock, which waits for every reader.
        self.known = None;
        self.table.intern(s)
    }
}

impl Strings for StringsView<'_> {
    fn get(&self, id: StrId) -> &str {
        &self.0.strings[id.0 as usize].0
    }

    fn hash(&self, id: StrId) -> u64 {
        self.0.strings[id.0 as usize].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An interner answers the table's ids, and adds a new string (letting go of its read
    /// lock first: holding it, the table's write lock would wait forever).
    #[test]
    fn an_interner_gives_the_tables_ids() {
        let table = StringTable::default();
        let a = table.intern("a");
        let mut interner = table.interner();
        assert_eq!(interner.intern("a"), a);
        let b = interner.intern("b");
        assert_ne!(a, b);
        assert_eq!(interner.intern("b"), b);
        assert_eq!(interner.intern("a"), a);
        drop(interner);
        assert_eq!(table.intern("b"), b);
        assert_eq!(table.read().get(b), "b");
    }
}
