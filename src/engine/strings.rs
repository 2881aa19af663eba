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
}

impl Strings for StringsView<'_> {
    fn get(&self, id: StrId) -> &str {
        &self.0.strings[id.0 as usize].0
    }

    fn hash(&self, id: StrId) -> u64 {
        self.0.strings[id.0 as usize].1
    }
}
