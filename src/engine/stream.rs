//! A registered stream's entities in memory: each entity's state (its run of events, the
//! events not yet persisted, its remembered values), the sharded map from entity name to
//! slot, locking a slot to read (loading the history from the state store) or to append
//! (without reading it), and eviction under the cache budget.
//!
//! It adds no event to an entity: the one apply (`engine::apply_to`) does, under the lock
//! taken here (loading only gathers events already applied), and checkpoints
//! (`engine::checkpoint`) persist what it added.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fsdb_storage::codec;
use fsdb_storage::state::key::KeyBuf;
use fsdb_storage::state::{StateStore, Table};
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;

use super::FeatureSet;
use super::entity::EntityRun;
use super::page;
use super::strings::{Interner, StringTable};
use crate::catalog::StreamDef;
use crate::error::{Error, Result};
use crate::event::RowChunk;
use crate::value::{FieldType, Value};

/// Entity maps are sharded to spread lock contention between appenders.
const ENTITY_SHARDS: usize = 16;

/// An entity's run in memory, and which of its events are not yet in the state store.
///
/// An append to an entity that is not in memory does not read its history: it makes a
/// *partial* state (`history_loaded == false`) that holds only the events appended since,
/// in `unpersisted` alone, and only until a checkpoint has persisted them, so that ingest
/// touching many cold entities costs one copy of the unpersisted events. Invariant: every
/// event of the entity is committed to the state store or in `unpersisted` (a checkpoint
/// removes the rows it wrote only after its commit). The first reader completes a partial
/// state by merging the two ([`StreamState::lock_loaded`]); only complete states are folded.
pub(crate) struct EntityState {
    /// Complete: every event of the entity. Partial: empty.
    pub(crate) run: EntityRun,
    /// The events applied and not yet committed to the state store, which the next
    /// checkpoint encodes from here (for a complete state, copies of rows of `run`), in
    /// the order they were applied: concurrent appends interleave their batches, and
    /// keeping this page sorted moved every later row for each earlier event (the
    /// checkpoint sorts its copy). Rows leave only from the front, after a commit.
    pub(super) unpersisted: page::Page,
    /// Complete: `run` holds the persisted history and everything applied since.
    pub(super) history_loaded: bool,
    /// Values computed by `latest` and the batch materialiser, by feature slot, each with
    /// the query times it holds for; an inserted event drops or shortens the ones it
    /// changes ([`Cached::after_insert`]).
    pub(crate) latest: Vec<Option<Cached>>,
    /// Set whenever the entity is locked; cleared by the evictor (CLOCK).
    touched: bool,
}

impl EntityState {
    /// A state for appends only: no history read (see the type's documentation).
    fn partial(columns: usize) -> EntityState {
        EntityState {
            run: EntityRun::new(columns),
            unpersisted: page::Page::new(columns),
            history_loaded: false,
            latest: Vec::new(),
            touched: true,
        }
    }

    /// Approximate heap bytes (for the cache budget).
    fn heap_bytes(&self) -> usize {
        self.run.heap_bytes()
            + self.unpersisted.heap_bytes()
            + self.latest.len() * std::mem::size_of::<Option<Cached>>()
    }
}

/// A feature value, valid for every query time in `[from, until)` while the stream's
/// features (`version`) stay the same and no event at or before `horizon` is added.
///
/// A realtime value as of `t` depends on the events up to `t`, so one remembered for
/// `[from, until)` has `horizon = until - 1`; a batch value depends only on the events up to
/// its period start, so `horizon = from` and events after the period start (the common case
/// under ingest) leave it in place.
#[derive(Clone, Debug)]
pub(crate) struct Cached {
    pub(crate) version: u64,
    pub(crate) from: i64,
    pub(crate) until: i64,
    pub(crate) horizon: i64,
    pub(crate) value: Value,
}

impl Cached {
    /// Keep what stays exact after an event at `time` is inserted: query times from
    /// `time` on may see the event, earlier ones do not. `false`: the value must go.
    pub(crate) fn after_insert(&mut self, time: i64) -> bool {
        debug_assert!(self.horizon < self.until);
        if time <= self.from {
            return false;
        }
        if time <= self.horizon {
            self.until = time;
            self.horizon = time - 1;
        }
        true
    }
}

/// `None` while the entity is being loaded from the state store.
pub(crate) type EntitySlot = Arc<Mutex<Option<EntityState>>>;

/// A field value of a validated event as the engine stores it: 8 raw bytes, or null.
/// (Replay converts decoded values itself, checking each against its field's type.)
fn cell(value: &Value, strings: &mut Interner<'_>) -> Option<u64> {
    match value {
        Value::Null => None,
        Value::Int(i) => Some(*i as u64),
        Value::Float(f) => Some(f.to_bits()),
        Value::String(s) => Some(u64::from(strings.intern(s).0)),
        Value::Bool(b) => Some(u64::from(*b)),
        Value::List(_) => unreachable!("validated events carry no lists"),
    }
}

/// A registered stream and the in-memory state of its entities.
pub(crate) struct StreamState {
    pub(crate) id: u32,
    pub(crate) def: StreamDef,
    pub(crate) field_types: Vec<FieldType>,
    pub(crate) strings: StringTable,
    pub(crate) features: RwLock<FeatureSet>,
    /// Entities present in memory (`None` while being loaded).
    pub(super) entities: Vec<RwLock<FxHashMap<Box<str>, EntitySlot>>>,
    /// Bytes that reads brought into memory since the last eviction pass (entities read
    /// from the state store, tile summaries computed by queries): reads can grow memory
    /// between checkpoints (`Inner::after_reads`).
    pub(super) loaded_bytes: AtomicUsize,
}

/// `stream · entity` — the prefix of every chunk key of an entity's rows.
pub(super) fn entity_prefix(stream: u32, entity: &str) -> Vec<u8> {
    KeyBuf::new()
        .u32(stream)
        .bytes(entity.as_bytes())
        .into_vec()
}

impl StreamState {
    pub(super) fn new(id: u32, def: StreamDef) -> StreamState {
        StreamState {
            id,
            field_types: def.field_types(),
            def,
            strings: StringTable::default(),
            features: RwLock::new(FeatureSet {
                list: Vec::new(),
                version: 0,
            }),
            entities: (0..ENTITY_SHARDS)
                .map(|_| RwLock::new(FxHashMap::default()))
                .collect(),
            loaded_bytes: AtomicUsize::new(0),
        }
    }

    fn shard(&self, entity: &str) -> &RwLock<FxHashMap<Box<str>, EntitySlot>> {
        let hash = xxhash_rust::xxh3::xxh3_64(entity.as_bytes());
        &self.entities[(hash % ENTITY_SHARDS as u64) as usize]
    }

    /// The cells of each row of values, appended to `cells` (strings interned under one
    /// read lock of the stream's table, taken once for all the rows).
    pub(super) fn cells_into<'v>(
        &self,
        rows: impl IntoIterator<Item = &'v [Value]>,
        cells: &mut Vec<Option<u64>>,
    ) {
        let mut strings = self.strings.interner();
        for values in rows {
            cells.extend(values.iter().map(|v| cell(v, &mut strings)));
        }
    }

    /// The entity's slot, if it is in memory or the state store holds rows of it (a query
    /// must not fill memory with entities that do not exist).
    pub(crate) fn entity(&self, name: &str, store: &StateStore) -> Result<Option<EntitySlot>> {
        let shard = self.shard(name);
        if let Some(slot) = shard.read().get(name) {
            return Ok(Some(Arc::clone(slot)));
        }
        let prefix = entity_prefix(self.id, name);
        if store.scan_prefix(Table::Events, &prefix).next().is_none() {
            return Ok(None);
        }
        Ok(Some(self.slot_or_new(name)))
    }

    /// The entity's slot; an entity not yet in memory gets one, loaded on first lock (an
    /// empty slot reads as an entity without events: appends make their entities so).
    pub(super) fn slot_or_new(&self, name: &str) -> EntitySlot {
        let shard = self.shard(name);
        if let Some(slot) = shard.read().get(name) {
            return Arc::clone(slot);
        }
        Arc::clone(
            shard
                .write()
                .entry(name.into())
                .or_insert_with(|| Arc::new(Mutex::new(None))),
        )
    }

    /// Lock an entity's slot with its whole history in memory: read from the state store on
    /// first use, merged with the events appended to a partial state.
    pub(crate) fn lock_loaded<'a>(
        &self,
        slot: &'a EntitySlot,
        name: &str,
        store: &StateStore,
    ) -> Result<parking_lot::MappedMutexGuard<'a, EntityState>> {
        let mut guard = slot.lock();
        match guard.as_mut() {
            None => *guard = Some(self.load(name, store)?),
            Some(state) if !state.history_loaded => {
                let mut loaded = self.load(name, store)?;
                // Events both persisted and unpersisted (a checkpoint in flight, or a
                // replayed event persisted again) are inserted once.
                let rows = &state.unpersisted;
                for row in 0..rows.len() {
                    loaded
                        .run
                        .insert(rows.time(row), rows.lsn(row), &rows.row_cells(row));
                }
                state.run = loaded.run;
                state.history_loaded = true;
            }
            Some(_) => {}
        }
        Ok(parking_lot::MutexGuard::map(guard, |s| {
            let state = s.as_mut().expect("loaded above");
            debug_assert!(state.history_loaded);
            state.touched = true;
            state
        }))
    }

    /// Lock an entity's slot to append to it: a state not in memory is made partial, without
    /// reading the entity's history.
    pub(super) fn lock_for_append<'a>(
        &self,
        slot: &'a EntitySlot,
    ) -> parking_lot::MappedMutexGuard<'a, EntityState> {
        let columns = self.field_types.len();
        parking_lot::MutexGuard::map(slot.lock(), |s| {
            let state = s.get_or_insert_with(|| EntityState::partial(columns));
            state.touched = true;
            state
        })
    }

    /// Drop the entity's state from memory if it is partial, holds no unpersisted event
    /// and nobody else holds it (as `evict` decides, under the shard's write lock).
    pub(super) fn forget_spent_partial(&self, name: &str) {
        let mut map = self.shard(name).write();
        let spent = map.get(name).is_some_and(|slot| {
            droppable(slot).is_some_and(|guard| guard.as_ref().is_some_and(|s| !s.history_loaded))
        });
        if spent {
            map.remove(name);
        }
    }

    /// Bytes of the entities in memory (those locked right now are not counted).
    pub(super) fn held_bytes(&self) -> usize {
        self.entities
            .iter()
            .flat_map(|shard| shard.read().values().cloned().collect::<Vec<_>>())
            .filter_map(|slot| {
                slot.try_lock()
                    .and_then(|g| g.as_ref().map(EntityState::heap_bytes))
            })
            .sum()
    }

    /// Drop entities from memory until the stream holds at most `target` bytes, or no
    /// entity can go. An entity goes only if all its events are persisted, nobody holds it
    /// (the map's `Arc` is the only one, checked under the shard's write lock, so no query
    /// or append can be about to use it), and it was not used since the previous sweep.
    /// A sweep that leaves the stream over `target` (every entity was used: a working set
    /// larger than the budget) is followed by a second, which drops those not used since
    /// the first: the budget holds, at the price of reading hot entities back.
    /// Returns how many entities it dropped.
    pub(super) fn evict(&self, target: usize) -> usize {
        let mut evicted = 0;
        let mut held = self.held_bytes();
        for _sweep in 0..2 {
            if held <= target {
                break;
            }
            for shard in &self.entities {
                let mut map = shard.write();
                map.retain(|_, slot| {
                    if held <= target {
                        return true;
                    }
                    let Some(mut guard) = droppable(slot) else {
                        return true;
                    };
                    let state = guard.as_mut().expect("droppable entities are loaded");
                    if std::mem::take(&mut state.touched) {
                        return true;
                    }
                    held = held.saturating_sub(state.heap_bytes());
                    evicted += 1;
                    false
                });
            }
        }
        evicted
    }

    /// Run `visit` on every entity whose history is in memory (not those being loaded, nor
    /// partial ones), leaving its place in the eviction order (the CLOCK mark) as it was.
    pub(crate) fn for_each_resident(&self, mut visit: impl FnMut(&mut EntityState)) {
        for shard in &self.entities {
            let slots: Vec<EntitySlot> = shard.read().values().cloned().collect();
            for slot in slots {
                let mut guard = slot.lock();
                if let Some(state) = guard.as_mut().filter(|s| s.history_loaded) {
                    let touched = state.touched;
                    visit(state);
                    state.touched = touched;
                }
            }
        }
    }

    /// Drop one entity from memory now if it can go (see `droppable`), whether or not it
    /// was used recently: for readers that know they will not come back to it soon
    /// (a training-set sweep of an entity that was not resident before it).
    pub(crate) fn forget(&self, name: &str) -> bool {
        let mut map = self.shard(name).write();
        let can_go = map.get(name).is_some_and(|slot| droppable(slot).is_some());
        if can_go {
            map.remove(name);
        }
        can_go
    }

    /// Read an entity's persisted chunks into a run. Chunks may overlap after a crash
    /// between a checkpoint and the next (a replayed event is persisted twice); inserting
    /// by (time, LSN) drops the repeats.
    fn load(&self, name: &str, store: &StateStore) -> Result<EntityState> {
        let mut run = EntityRun::new(self.field_types.len());
        let prefix = entity_prefix(self.id, name);
        let mut cells = Vec::new();
        for item in store.scan_prefix(Table::Events, &prefix) {
            let (key, value) = item?;
            let chunk: RowChunk = codec::decode(&value).map_err(|e| Error::BadStateRow {
                key: key.to_vec(),
                reason: e.to_string(),
            })?;
            for (time, lsn, values) in &chunk.rows {
                if values.len() != self.field_types.len() {
                    return Err(Error::BadStateRow {
                        key: key.to_vec(),
                        reason: format!(
                            "a row has {} values for {} fields",
                            values.len(),
                            self.field_types.len()
                        ),
                    });
                }
                cells.clear();
                self.cells_into([&values[..]], &mut cells);
                run.insert(*time, *lsn, &cells);
            }
        }
        run.shrink_to_fit();
        let state = EntityState {
            run,
            unpersisted: page::Page::new(self.field_types.len()),
            history_loaded: true,
            latest: Vec::new(),
            touched: true,
        };
        self.note_read_bytes(state.heap_bytes());
        Ok(state)
    }

    /// Count `bytes` that a read brought into memory towards the next eviction pass.
    pub(crate) fn note_read_bytes(&self, bytes: usize) {
        if bytes > 0 {
            self.loaded_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

/// Whether the entity's whole history is in memory (not absent, loading or partial).
pub(crate) fn history_in_memory(slot: &EntitySlot) -> bool {
    slot.lock()
        .as_ref()
        .is_some_and(|state| state.history_loaded)
}

/// An entity slot's lock if the entity may leave memory: it is loaded, all its events are
/// persisted, and nobody holds it (the map's `Arc` is the only one; callers hold the shard's
/// write lock, so no query or append can be about to take it).
fn droppable(slot: &EntitySlot) -> Option<parking_lot::MutexGuard<'_, Option<EntityState>>> {
    if Arc::strong_count(slot) > 1 {
        return None;
    }
    let guard = slot.try_lock()?;
    let state = guard.as_ref()?;
    (state.unpersisted.len() == 0).then_some(guard)
}

#[cfg(test)]
impl StreamState {
    /// A stream `s` (entity `k`, time `ts`) with one field `v` of the given type.
    pub(super) fn for_test(id: u32, field_type: &str) -> StreamState {
        let toml = format!(
            "[[stream]]\nname = \"s\"\nentity = \"k\"\ntime = \"ts\"\n[stream.fields]\nv = \"{field_type}\"\n"
        );
        let definitions = crate::catalog::parse_definitions(&toml).expect("a valid stream");
        StreamState::new(id, definitions.streams[0].clone())
    }
}
