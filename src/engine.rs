//! The engine: [`Db`], the one `apply` path, durability and recovery.
//!
//! Architecture invariants (docs/ARCHITECTURE.md):
//! - **The log is the truth.** RocksDB state is a cache of a fold over the log:
//!   `state == fold(apply, log[..=applied_lsn])`, committed atomically with `applied_lsn`.
//!   Deleting the state directory and reopening rebuilds identical state.
//! - **One apply.** `apply_to` is the only code that turns events into state
//!   (and `Registry::add` the only code that turns definitions into catalog); ingest,
//!   recovery and full replay differ only in where entries come from.
//! - **Durable before visible.** An event is applied (and so visible to queries) only after
//!   the log holds it durably (in `Sync` mode); `append` returns after it is applied
//!   (read-your-writes).
//! - **Applying is idempotent.** State is a set of events keyed by (stream, entity, time,
//!   LSN); applying an entry twice changes nothing. This is what makes checkpoints that
//!   race with ingest, and replays that overlap them, correct.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use fsdb_storage::codec;
use fsdb_storage::io::{DirLock, OsVfs, Vfs, create_dir_durably};
use fsdb_storage::state::key::{KeyBuf, KeyReader};
use fsdb_storage::state::{StateOptions, StateStore, Table};
use fsdb_storage::{Durability, Log, LogOptions, Lsn};
use parking_lot::{Condvar, Mutex, RwLock};
use rustc_hash::FxHashMap;

use crate::catalog::{ApplyPlan, Catalog, Definitions, FeatureDef, StreamDef, parse_definitions};
use crate::error::{Error, Result};
use crate::event::{
    Event, EventLimits, LogEntry, RowChunk, check_event_typed, event_from_json, wire,
};
use crate::time::{Clock, SystemClock};
use crate::value::{FieldType, Value};

pub(crate) mod chunk;
pub(crate) mod entity;
pub(crate) mod feature;
pub(crate) mod ids;
pub(crate) mod materialize;
pub(crate) mod page;
mod replay;
pub(crate) mod strings;

use entity::EntityRun;
use feature::CompiledFeature;
use ids::{IdSet, IdSetBuilder};
use strings::{Interner, StringTable};

/// How to open a database. Every limit is named with its unit.
#[derive(Clone, Debug)]
pub struct Options {
    /// When an append is acknowledged relative to fsync (default: after it).
    pub durability: Durability,
    /// Where `latest` gets "now" from.
    pub clock: Arc<dyn Clock>,
    pub limits: EventLimits,
    /// Log segment size.
    pub segment_bytes_max: u64,
    /// Checkpoint state to RocksDB once this many events are applied but not yet persisted
    /// (a replay flushes at the same count).
    pub checkpoint_events: usize,
    /// ...or when this much time has passed with any pending.
    pub checkpoint_interval_ms: u64,
    /// Memory for entities' events in memory; past it, entities not used lately are
    /// dropped after a checkpoint (and read back from the state store when needed).
    pub cache_bytes_max: usize,
    /// How often the batch materialiser looks for work (0: never in the background;
    /// `Db::materialize` runs a pass on demand). See `engine/materialize.rs`.
    pub materialize_interval_ms: u64,
    pub state: StateOptions,
    /// The file system the log is written through (default: the real one). Tests pass a
    /// simulated one (`fsdb_storage::io::sim`) to crash the whole engine at any log
    /// operation or inject I/O errors.
    pub log_vfs: Arc<dyn Vfs>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            durability: Durability::Sync,
            clock: Arc::new(SystemClock),
            limits: EventLimits::default(),
            segment_bytes_max: 64 << 20,
            checkpoint_events: 1_000_000,
            checkpoint_interval_ms: 5_000,
            cache_bytes_max: 512 << 20,
            materialize_interval_ms: 1_000,
            state: StateOptions::default(),
            log_vfs: Arc::new(OsVfs),
        }
    }
}

/// The name of the data directory's lock file.
pub(crate) const LOCK_FILE: &str = "LOCK";
const LOG_DIR: &str = "log";
const STATE_DIR: &str = "state";
const CATALOG_KEY: &[u8] = b"catalog";
/// The LSN of the last definitions or removal record the persisted catalog reflects.
const CATALOG_LSN_KEY: &[u8] = b"catalog_lsn";
/// Entity maps are sharded to spread lock contention between appenders.
const ENTITY_SHARDS: usize = 16;

/// What opening a database did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// LSN the state was at when opened.
    pub state_lsn: Lsn,
    /// Log records replayed into the state on open.
    pub replayed: u64,
    /// Why the state was rebuilt from the whole log, if it was.
    pub rebuilt: Option<String>,
    pub log: fsdb_storage::RecoveryReport,
}

/// The entity cache, for operations and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub entities_in_memory: usize,
    /// Approximate bytes of the entities in memory.
    pub bytes_held: usize,
    /// Entities dropped from memory by the budget since the database was opened.
    pub evicted: u64,
    /// Batch feature values computed by the materialiser, in total.
    pub materialized: u64,
    /// Accepted event ids held for deduplication (all of them, outside the budget).
    pub event_ids: usize,
    /// Approximate bytes of those ids.
    pub event_ids_bytes: usize,
    /// Approximate bytes of memory the state store (RocksDB) holds: memtables, index and
    /// filter blocks, block cache.
    pub state_store_bytes: u64,
}

/// The writer's state, for health checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// Why writes are refused until the database is reopened, if they are.
    pub poisoned: Option<String>,
    pub checkpoint_error: Option<String>,
    /// The LSN of the last record written to the log (0: none).
    pub last_lsn: Lsn,
    /// Every record up to this LSN is durable.
    pub durable_lsn: Lsn,
    /// Every record up to this LSN is applied and visible to queries.
    pub applied_lsn: Lsn,
}

/// The outcome of an append.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppendReport {
    /// Events written and applied.
    pub accepted: usize,
    /// Events skipped because their id was accepted before.
    pub duplicates: usize,
}

/// What applying a definitions file did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub added_streams: Vec<String>,
    pub added_features: Vec<String>,
    pub unchanged: Vec<String>,
}

/// An embedded fsdb database. `Send + Sync`: share it behind an `Arc`.
pub struct Db {
    pub(crate) inner: Arc<Inner>,
    checkpointer: Option<JoinHandle<()>>,
    materializer: Option<JoinHandle<()>>,
    report: OpenReport,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("dir", &self.inner.dir).finish()
    }
}

/// The features of one stream, in slot order, and a version that changes when they do.
#[derive(Debug, Clone)]
pub(crate) struct FeatureSet {
    pub(crate) list: Vec<Arc<CompiledFeature>>,
    pub(crate) version: u64,
}

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
    unpersisted: page::Page,
    /// Complete: `run` holds the persisted history and everything applied since.
    history_loaded: bool,
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

/// An entity with unpersisted events, for the next checkpoint.
struct Dirty {
    stream: Arc<StreamState>,
    name: Box<str>,
    slot: EntitySlot,
}

/// A registered stream and the in-memory state of its entities.
pub(crate) struct StreamState {
    pub(crate) id: u32,
    pub(crate) def: StreamDef,
    pub(crate) field_types: Vec<FieldType>,
    pub(crate) strings: StringTable,
    pub(crate) features: RwLock<FeatureSet>,
    /// Entities present in memory (`None` while being loaded).
    entities: Vec<RwLock<FxHashMap<Box<str>, EntitySlot>>>,
    /// Bytes that reads brought into memory since the last eviction pass (entities read
    /// from the state store, tile summaries computed by queries): reads can grow memory
    /// between checkpoints (`Inner::after_reads`).
    loaded_bytes: AtomicUsize,
}

/// Streams and features by name.
#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) catalog: Catalog,
    pub(crate) streams: Vec<Arc<StreamState>>,
    /// Feature name -> (stream index, slot in the stream's feature set).
    pub(crate) features: FxHashMap<String, (usize, usize)>,
    /// The LSN of the last definitions or removal record applied (0: none). Replay skips
    /// such records at or below it: the catalog already reflects them, and re-applying an
    /// old definition after a removal and a re-definition under the same name would be
    /// refused as a change.
    catalog_lsn: Lsn,
    /// The catalog changed since the last checkpoint.
    catalog_dirty: bool,
    /// Query plans made from this registry; emptied by every change to it.
    pub(crate) plans: crate::query::PlanCache,
}

/// Which LSNs have been applied: all below `end`, plus out-of-order completed ranges.
#[derive(Default)]
struct AppliedTracker {
    state: Mutex<(Lsn, BTreeMap<Lsn, Lsn>)>,
    advanced: Condvar,
}

impl AppliedTracker {
    fn new(end: Lsn) -> Self {
        Self {
            state: Mutex::new((end, BTreeMap::new())),
            advanced: Condvar::new(),
        }
    }

    fn end(&self) -> Lsn {
        self.state.lock().0
    }

    fn complete(&self, start: Lsn, end: Lsn) {
        if start == end {
            return;
        }
        let mut state = self.state.lock();
        state.1.insert(start, end);
        loop {
            let current = state.0;
            match state.1.remove(&current) {
                Some(next) => state.0 = next,
                None => break,
            }
        }
        self.advanced.notify_all();
    }

    /// Wait until everything below `end` is applied (bounded: the appliers of those LSNs
    /// are already past their log write and only have in-memory work left).
    fn wait_for(&self, end: Lsn) {
        let mut state = self.state.lock();
        while state.0 < end {
            self.advanced
                .wait_for(&mut state, Duration::from_millis(100));
        }
    }
}

/// An event ready for [`Inner::apply_prepared`].
struct PreparedEvent<'a> {
    entity: &'a str,
    time_ms: i64,
    id_hash: Option<u128>,
    slot: &'a EntitySlot,
    cells: &'a [Option<u64>],
}

/// What applying one appended batch leaves for the checkpointer.
#[derive(Default)]
struct Applied {
    /// Entities that got their first unpersisted event.
    newly_dirty: Vec<Dirty>,
    /// Hashes of the accepted ids.
    ids: Vec<u128>,
    /// Events inserted.
    events: usize,
}

pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) options: Options,
    _lock: Box<dyn DirLock>,
    pub(crate) log: Log,
    pub(crate) state: StateStore,
    pub(crate) registry: RwLock<Registry>,
    /// Hashes of accepted event ids; the lock also orders dedup decisions with log writes.
    ingest: Mutex<IdSet>,
    applied: AppliedTracker,
    /// Entities with events not yet in the state store.
    dirty: Mutex<Vec<Dirty>>,
    /// Id hashes not yet in the state store.
    pending_ids: Mutex<Vec<u128>>,
    /// Events applied since the last checkpoint (triggers the next one).
    unpersisted_events: AtomicUsize,
    /// The key of the next dedup chunk.
    next_id_chunk: AtomicU64,
    checkpointing: Mutex<()>,
    /// One eviction pass at a time: a pass counting bytes holds every entity's `Arc` for a
    /// moment, which would make them all look in use to another pass.
    evicting: Mutex<()>,
    wake: Condvar,
    shutdown: Mutex<bool>,
    /// The last background checkpoint failure, if the latest attempt failed.
    checkpoint_error: Mutex<Option<String>>,
    /// Entities dropped from memory by the cache budget, since open.
    evicted: AtomicU64,
    materialized: AtomicU64,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

/// `stream · entity · first LSN` — the key of a chunk of an entity's rows.
fn chunk_key(stream: u32, entity: &str, first_lsn: Lsn) -> Vec<u8> {
    KeyBuf::with_capacity(4 + 2 + entity.len() + 8)
        .u32(stream)
        .bytes(entity.as_bytes())
        .u64(first_lsn)
        .into_vec()
}

fn entity_prefix(stream: u32, entity: &str) -> Vec<u8> {
    KeyBuf::new()
        .u32(stream)
        .bytes(entity.as_bytes())
        .into_vec()
}

/// The identity of an accepted event id: a 128-bit hash of (stream, id). Collisions among
/// 10^10 ids have probability below 10^-18.
fn dedup_hash(stream: u32, id: &str) -> u128 {
    // The hash of the bytes `stream (big-endian) · id`: one call over a copy on the stack
    // for the usual short id (the streaming hasher costs more than the hash).
    const SHORT: usize = 64;
    if id.len() <= SHORT - 4 {
        let mut bytes = [0u8; SHORT];
        bytes[..4].copy_from_slice(&stream.to_be_bytes());
        bytes[4..4 + id.len()].copy_from_slice(id.as_bytes());
        return xxhash_rust::xxh3::xxh3_128(&bytes[..4 + id.len()]);
    }
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&stream.to_be_bytes());
    hasher.update(id.as_bytes());
    hasher.digest128()
}

impl StreamState {
    fn new(id: u32, def: StreamDef) -> StreamState {
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
    fn cells_into<'v>(
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
    fn slot_or_new(&self, name: &str) -> EntitySlot {
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
    fn lock_for_append<'a>(
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
    fn forget_spent_partial(&self, name: &str) {
        let mut map = self.shard(name).write();
        let spent = map.get(name).is_some_and(|slot| {
            droppable(slot).is_some_and(|guard| guard.as_ref().is_some_and(|s| !s.history_loaded))
        });
        if spent {
            map.remove(name);
        }
    }

    /// Bytes of the entities in memory (those locked right now are not counted).
    fn held_bytes(&self) -> usize {
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
    fn evict(&self, target: usize) -> usize {
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

impl Registry {
    /// Add what `plan` adds: new streams, and compiled features on their streams.
    fn add(&mut self, plan: &ApplyPlan) {
        self.plans.clear();
        for def in &plan.new_streams {
            let id = u32::try_from(self.streams.len()).expect("fewer than 2^32 streams");
            self.streams
                .push(Arc::new(StreamState::new(id, def.clone())));
        }
        self.catalog.apply(plan);
        for def in &plan.new_features {
            self.compile_feature(def);
        }
        self.catalog_dirty |= !plan.is_empty();
    }

    fn compile_feature(&mut self, def: &FeatureDef) {
        let (index, _) = self
            .catalog
            .stream(&def.stream)
            .expect("planned features have streams");
        let stream = &self.streams[index];
        let compiled = Arc::new(CompiledFeature::compile(def, &stream.def, &stream.strings));
        let mut set = stream.features.write();
        set.list.push(compiled);
        set.version += 1;
        self.features
            .insert(def.name.clone(), (index, set.list.len() - 1));
    }

    /// Remove the named features (names not registered are skipped): their definitions,
    /// their compiled forms, and with the version change every summary and remembered value
    /// computed for the stream's old feature list. Later slots of the stream move down.
    fn remove(&mut self, names: &[String]) {
        self.plans.clear();
        for name in names {
            let Some((stream, slot)) = self.features.remove(name) else {
                continue;
            };
            let mut set = self.streams[stream].features.write();
            set.list.remove(slot);
            set.version += 1;
            for (s, later) in self.features.values_mut() {
                if *s == stream && *later > slot {
                    *later -= 1;
                }
            }
            self.catalog.features.retain(|f| &f.name != name);
            self.catalog_dirty = true;
        }
    }

    fn from_catalog(catalog: &Catalog, catalog_lsn: Lsn) -> Registry {
        let mut registry = Registry::default();
        registry.add(&ApplyPlan {
            new_streams: catalog.streams.clone(),
            new_features: catalog.features.clone(),
            unchanged: Vec::new(),
        });
        registry.catalog_dirty = false;
        registry.catalog_lsn = catalog_lsn;
        registry
    }
}

impl Db {
    /// Open (or create) the database in `dir`.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Db> {
        let dir = dir.as_ref().to_path_buf();
        // A new data directory's name durable in its parent (a log inside it is not durable
        // without it).
        create_dir_durably(&OsVfs, &dir).map_err(|e| Error::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        })?;
        let lock = OsVfs.lock_dir(&dir, LOCK_FILE).map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                Error::Locked { dir: dir.clone() }
            } else {
                Error::Io {
                    op: "lock",
                    path: dir.join(LOCK_FILE),
                    source: e,
                }
            }
        })?;
        let mut report = OpenReport::default();
        let state_dir = dir.join(STATE_DIR);
        // The state is derived from the log: if it cannot be opened or its header read
        // (RocksDB files missing, truncated or corrupt, another format), rebuild it.
        let opened = StateStore::open(&state_dir, &options.state)
            .map_err(Error::from)
            .and_then(StateHeader::read);
        let (state, header) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                report.rebuilt = Some(format!("the state could not be read ({e})"));
                StateHeader::read(reset_state(&state_dir, &options.state)?)?
            }
        };
        let state_lsn = header.applied_lsn;
        let log_options = LogOptions {
            durability: options.durability,
            segment_bytes_max: options.segment_bytes_max,
            // Records the state reflects were durable: recovery must not lose them.
            durable_lsn_hint: state_lsn + 1,
            // An append prepares its events' cells while its fsync runs and applies them
            // after: a second fsync lane cut the wait for durability by about a third and
            // raised ingest by 6 – 10% (docs/benchmarks.md).
            sync_lanes: 2,
            ..LogOptions::default()
        };
        let log = Log::open_with(
            Arc::clone(&options.log_vfs),
            &dir.join(LOG_DIR),
            log_options,
        )?;
        report.log = log.recovery_report().clone();
        // A log that ends before the state's applied LSN lost acknowledged records; the
        // durability hint above made its open refuse rather than serve from it.
        debug_assert!(state_lsn < log.end_lsn());
        if state_lsn + 1 < log.first_lsn() {
            return Err(Error::LogBehindState {
                log_first: log.first_lsn(),
                needed: state_lsn + 1,
            });
        }
        let StateHeader {
            catalog,
            catalog_lsn,
            ids,
            next_id_chunk,
            ..
        } = header;
        let inner = Arc::new(Inner {
            registry: RwLock::new(Registry::from_catalog(&catalog, catalog_lsn)),
            ingest: Mutex::new(ids),
            applied: AppliedTracker::new(state_lsn + 1),
            dirty: Mutex::new(Vec::new()),
            pending_ids: Mutex::new(Vec::new()),
            unpersisted_events: AtomicUsize::new(0),
            next_id_chunk: AtomicU64::new(next_id_chunk),
            checkpointing: Mutex::new(()),
            evicting: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: Mutex::new(false),
            checkpoint_error: Mutex::new(None),
            evicted: AtomicU64::new(0),
            materialized: AtomicU64::new(0),
            dir,
            options,
            _lock: lock,
            log,
            state,
        });
        report.state_lsn = state_lsn;
        report.replayed = inner.replay_log(state_lsn + 1)?;
        if report.replayed > 0 {
            // The state store writes without a WAL: what it holds only in memtables a
            // crash takes back. Flushed now, a crash soon after does not replay it again.
            inner.state.flush()?;
        }
        let checkpointer = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name("fsdb-checkpoint".into())
                .spawn(move || inner.run_checkpointer())
                .map_err(io("spawn checkpoint thread", Path::new("")))?
        };
        let materializer = if inner.options.materialize_interval_ms > 0 {
            let inner = Arc::clone(&inner);
            Some(
                std::thread::Builder::new()
                    .name("fsdb-materialize".into())
                    .spawn(move || inner.run_materializer())
                    .map_err(io("spawn materialiser thread", Path::new("")))?,
            )
        } else {
            None
        };
        Ok(Db {
            inner,
            checkpointer: Some(checkpointer),
            materializer,
            report,
        })
    }

    /// What opening did (log recovery, replay, rebuild).
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// Validate and register the definitions in `toml` (see docs/semantics.md). Features
    /// added to streams that already hold events are computed from those events at once.
    pub fn apply(&self, toml: &str) -> Result<ApplyReport> {
        let definitions = parse_definitions(toml)?;
        self.inner.apply_definitions(&definitions)
    }

    /// Remove features by name: their definitions leave the catalog (so a name can be
    /// defined again, differently) and their state goes. Recorded in the log, like a
    /// definitions file, so a replay removes them at the same point. Every name must be a
    /// registered feature (else nothing is removed). Returns the names removed.
    pub fn remove_features(&self, names: &[&str]) -> Result<Vec<String>> {
        self.inner.remove_features(names)
    }

    /// Append validated events to `stream`. Returns once they are durable (per the
    /// configured durability) and visible to every query.
    pub fn append(&self, stream: &str, events: &[Event]) -> Result<AppendReport> {
        let stream = self.inner.stream(stream)?;
        for (index, event) in events.iter().enumerate() {
            let limits = &self.inner.options.limits;
            check_event_typed(index, &stream.def, &stream.field_types, event, limits)?;
        }
        self.inner.append(&stream, events)
    }

    /// The limits every appended event is checked against (`Options::limits`).
    pub fn event_limits(&self) -> &EventLimits {
        &self.inner.options.limits
    }

    /// Append events given as JSON objects (see docs/semantics.md for the accepted forms).
    pub fn append_json(&self, stream: &str, events: &[serde_json::Value]) -> Result<AppendReport> {
        let stream = self.inner.stream(stream)?;
        let limits = &self.inner.options.limits;
        let events = events
            .iter()
            .enumerate()
            .map(|(index, json)| event_from_json(index, &stream.def, json, limits))
            .collect::<Result<Vec<_>, _>>()?;
        self.inner.append(&stream, &events)
    }

    /// Write everything applied so far to the state store now, then keep the entities in
    /// memory within `Options::cache_bytes_max`.
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.checkpoint()?;
        self.inner.evict();
        Ok(())
    }

    /// The registered definitions.
    pub fn catalog(&self) -> Catalog {
        self.inner.registry.read().catalog.clone()
    }

    /// Names of every registered feature, in registration order.
    pub fn feature_names(&self) -> Vec<String> {
        self.inner
            .registry
            .read()
            .catalog
            .features
            .iter()
            .map(|f| f.name.clone())
            .collect()
    }

    /// A stream's definition.
    pub fn stream_def(&self, name: &str) -> Result<StreamDef> {
        Ok(self.inner.stream(name)?.def.clone())
    }

    /// One past the LSN of the last log record.
    pub fn log_end_lsn(&self) -> Lsn {
        self.inner.log.end_lsn()
    }

    /// The LSN the persisted state reflects.
    pub fn state_lsn(&self) -> Result<Lsn> {
        Ok(self.inner.state.applied_lsn()?)
    }

    /// A digest of the persisted state (after a checkpoint): equal digests mean the same
    /// rows for every entity, the same accepted ids and the same catalog, however they were
    /// chunked. Two databases fed the same log have the same digest.
    pub fn state_digest(&self) -> Result<u64> {
        self.inner.checkpoint()?;
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        // Rows: chunks of one entity are adjacent in key order; merge them by (time, LSN).
        let mut entity: Option<Vec<u8>> = None;
        let mut rows: BTreeMap<(i64, Lsn), Vec<u8>> = BTreeMap::new();
        let mut flush = |entity: &Option<Vec<u8>>, rows: &mut BTreeMap<(i64, Lsn), Vec<u8>>| {
            if let Some(prefix) = entity {
                hasher.update(prefix);
                for ((time, lsn), values) in std::mem::take(rows) {
                    hasher.update(&time.to_le_bytes());
                    hasher.update(&lsn.to_le_bytes());
                    hasher.update(&values);
                }
            }
        };
        for item in self.inner.state.scan_prefix(Table::Events, &[]) {
            let (key, value) = item?;
            let prefix = key[..key.len() - 8].to_vec();
            if entity.as_ref() != Some(&prefix) {
                flush(&entity, &mut rows);
                entity = Some(prefix);
            }
            let chunk: RowChunk = codec::decode(&value).map_err(|e| Error::BadStateRow {
                key: key.to_vec(),
                reason: e.to_string(),
            })?;
            for (time, lsn, values) in chunk.rows {
                rows.insert((time, lsn), codec::encode(&values).expect("values encode"));
            }
        }
        flush(&entity, &mut rows);
        let mut ids = Vec::new();
        for item in self.inner.state.scan_prefix(Table::Dedup, &[]) {
            let (key, value) = item?;
            ids.extend(unpack_ids(&key, &value)?);
        }
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            hasher.update(&id.to_le_bytes());
        }
        hasher.update(
            &serde_json::to_vec(&self.inner.registry.read().catalog).expect("catalog serializes"),
        );
        Ok(hasher.digest())
    }

    /// Check every log record's checksum.
    pub fn verify_log(&self) -> Result<fsdb_storage::VerifyReport> {
        Ok(self.inner.log.verify()?)
    }

    /// How much of the entities' events is in memory.
    pub fn cache_stats(&self) -> CacheStats {
        let streams = self.inner.registry.read().streams.clone();
        // Briefly: this lock orders every append.
        let (event_ids, event_ids_bytes) = {
            let ids = self.inner.ingest.lock();
            (ids.len(), ids.heap_bytes())
        };
        CacheStats {
            entities_in_memory: streams
                .iter()
                .map(|s| s.entities.iter().map(|m| m.read().len()).sum::<usize>())
                .sum(),
            bytes_held: streams.iter().map(|s| s.held_bytes()).sum(),
            evicted: self.inner.evicted.load(Ordering::Relaxed),
            materialized: self.inner.materialized.load(Ordering::Relaxed),
            event_ids,
            event_ids_bytes,
            state_store_bytes: self.inner.state.memory_bytes(),
        }
    }

    /// Whether the database can accept writes, and why not.
    pub fn health(&self) -> Health {
        Health {
            poisoned: self.inner.log.poisoned(),
            checkpoint_error: self.inner.checkpoint_error.lock().clone(),
            last_lsn: self.inner.log.end_lsn() - 1,
            durable_lsn: self.inner.log.durable_lsn() - 1,
            applied_lsn: self.inner.applied.end() - 1,
        }
    }

    /// Bytes of the log and of the state store.
    pub fn sizes(&self) -> (u64, u64) {
        (self.inner.log.size_bytes(), self.inner.state.size_bytes())
    }

    /// Checkpoint, flush and release the directory.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        *self.inner.shutdown.lock() = true;
        self.inner.wake.notify_all();
        for thread in [self.checkpointer.take(), self.materializer.take()]
            .into_iter()
            .flatten()
        {
            let _ = thread.join();
        }
        self.inner.checkpoint()?;
        self.inner.state.flush()?;
        self.inner.log.sync()?;
        Ok(())
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = self.shutdown();
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

/// **The one apply.** Insert one event into its entity's state (locked by the caller) and
/// keep it for the next checkpoint; `false`, and no change, if the state already has it.
/// Ingest ([`Inner::apply_prepared`]) and replay (`replay::Owned::apply`) both come here;
/// nothing else adds events to state.
fn apply_to(state: &mut EntityState, time_ms: i64, lsn: Lsn, cells: &[Option<u64>]) -> bool {
    // A complete state knows every event (its run); a partial one only those not yet
    // persisted: it cannot tell a replayed event that is already persisted, and persists it
    // again; loading merges the two (`lock_loaded`, `load`).
    let new = !state.history_loaded || state.run.insert(time_ms, lsn, cells);
    if new {
        // A partial state takes an event applied twice twice: loading and the state digest
        // merge repeats (it does not happen in one process: each LSN is applied once).
        state.unpersisted.push(time_ms, lsn, cells);
        for cached in &mut state.latest {
            if cached.as_mut().is_some_and(|c| !c.after_insert(time_ms)) {
                *cached = None;
            }
        }
    }
    new
}

/// A checkpoint with this many dirty entities encodes them on two threads.
const PARALLEL_ENCODE_ENTITIES_MIN: usize = 512;

/// Copy each entity's unpersisted rows (under its lock), sort them and encode them as
/// chunks of at most `CHUNK_ROWS_MAX` rows, each keyed by its smallest LSN. Returns the
/// entities with how many rows were encoded, and the chunks.
#[allow(clippy::type_complexity, reason = "two lists, named at the caller")]
fn encode_unpersisted(dirty: Vec<Dirty>) -> (Vec<(Dirty, usize)>, Vec<(Vec<u8>, Vec<u8>)>) {
    let mut written = Vec::with_capacity(dirty.len());
    let mut chunks = Vec::with_capacity(dirty.len());
    for entity in dirty {
        let rows = {
            let guard = entity.slot.lock();
            let state = guard.as_ref().expect("dirty entities are in memory");
            state.unpersisted.clone()
        };
        let rows = rows.into_sorted();
        for_each_chunk(
            &entity.stream,
            &entity.name,
            &rows,
            0..rows.len(),
            |key, view| {
                chunks.push((key, view.encode()));
                Ok(())
            },
        )
        .expect("pushing cannot fail");
        written.push((entity, rows.len()));
    }
    (written, chunks)
}

/// Cut an entity's rows (`entity_rows` of `rows`, sorted by (time, LSN)) into chunks of at
/// most `CHUNK_ROWS_MAX` rows, each keyed by its smallest LSN, and hand each key and chunk
/// to `take`, in key order; stops at `take`'s first error.
fn for_each_chunk(
    stream: &StreamState,
    entity: &str,
    rows: &page::Page,
    entity_rows: std::ops::Range<usize>,
    mut take: impl FnMut(Vec<u8>, chunk::ChunkView<'_>) -> Result<()>,
) -> Result<()> {
    let strings = stream.strings.read();
    for (first, range) in chunks_in_key_order(entity_rows, |row| rows.lsn(row)) {
        let view = chunk::ChunkView {
            rows,
            range,
            types: &stream.field_types,
            strings: &strings,
        };
        take(chunk_key(stream.id, entity, first), view)?;
    }
    Ok(())
}

/// An entity's rows (`rows`, sorted by (time, LSN), `lsn` giving each one's) cut into
/// chunks of at most `CHUNK_ROWS_MAX` rows, each with the LSN it is keyed by (its
/// smallest), in key order.
fn chunks_in_key_order(
    rows: std::ops::Range<usize>,
    lsn: impl Fn(usize) -> Lsn,
) -> Vec<(Lsn, std::ops::Range<usize>)> {
    let end = rows.end;
    let mut chunks: Vec<(Lsn, std::ops::Range<usize>)> = rows
        .step_by(chunk::CHUNK_ROWS_MAX)
        .map(|start| {
            let range = start..(start + chunk::CHUNK_ROWS_MAX).min(end);
            let first = range.clone().map(&lsn).min();
            (first.expect("chunk ranges are not empty"), range)
        })
        .collect();
    chunks.sort_unstable_by_key(|(first, _)| *first);
    chunks
}

/// What opening reads from the state store before replaying the log's tail.
struct StateHeader {
    applied_lsn: Lsn,
    catalog: Catalog,
    catalog_lsn: Lsn,
    /// Accepted event ids (hashes).
    ids: IdSet,
    next_id_chunk: u64,
}

impl StateHeader {
    fn read(state: StateStore) -> Result<(StateStore, StateHeader)> {
        let applied_lsn = state.applied_lsn()?;
        let bad_catalog = |reason: String| Error::BadStateRow {
            key: CATALOG_KEY.to_vec(),
            reason,
        };
        let mut catalog: Catalog = match state.get(Table::Meta, CATALOG_KEY)? {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| bad_catalog(e.to_string()))?
            }
            None => Catalog::default(),
        };
        for feature in &mut catalog.features {
            feature
                .recanonicalize_filter()
                .map_err(|e| bad_catalog(e.to_string()))?;
        }
        let catalog_lsn = match state.get(Table::Meta, CATALOG_LSN_KEY)? {
            Some(bytes) => {
                let bytes: [u8; 8] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| Error::BadStateRow {
                            key: CATALOG_LSN_KEY.to_vec(),
                            reason: format!("{} bytes, not 8", bytes.len()),
                        })?;
                Lsn::from_be_bytes(bytes)
            }
            None => 0,
        };
        let mut ids = IdSetBuilder::default();
        let mut next_id_chunk = 0;
        for item in state.scan_prefix(Table::Dedup, &[]) {
            let (key, value) = item?;
            ids.extend(unpack_ids(&key, &value)?);
            next_id_chunk = KeyReader::new(&key).u64().map_or(0, |k| k + 1);
        }
        let header = StateHeader {
            applied_lsn,
            catalog,
            catalog_lsn,
            ids: ids.build(),
            next_id_chunk,
        };
        Ok((state, header))
    }
}

/// Remove a state directory and create an empty one (state is derived: the log rebuilds it).
fn reset_state(state_dir: &Path, options: &StateOptions) -> Result<StateStore> {
    if state_dir.exists() {
        std::fs::remove_dir_all(state_dir).map_err(io("remove", state_dir))?;
    }
    Ok(StateStore::open(state_dir, options)?)
}

/// A dedup chunk: accepted id hashes, 16 bytes each, little-endian.
fn pack_ids(ids: &[u128]) -> Vec<u8> {
    // (A `flat_map` over the arrays cost ~70 instructions an id, this loop a few.)
    let mut packed = Vec::with_capacity(ids.len() * 16);
    for id in ids {
        packed.extend_from_slice(&id.to_le_bytes());
    }
    packed
}

fn unpack_ids<'a>(key: &[u8], value: &'a [u8]) -> Result<impl Iterator<Item = u128> + 'a> {
    if !value.len().is_multiple_of(16) {
        return Err(Error::BadStateRow {
            key: key.to_vec(),
            reason: "dedup chunk is not a whole number of 16-byte hashes".into(),
        });
    }
    Ok(value
        .chunks_exact(16)
        .map(|b| u128::from_le_bytes(b.try_into().expect("16 bytes"))))
}

impl Inner {
    pub(crate) fn stream(&self, name: &str) -> Result<Arc<StreamState>> {
        let registry = self.registry.read();
        let (index, _) = registry
            .catalog
            .stream(name)
            .ok_or_else(|| Error::UnknownStream(name.to_owned()))?;
        Ok(Arc::clone(&registry.streams[index]))
    }

    fn apply_definitions(&self, definitions: &Definitions) -> Result<ApplyReport> {
        let registry = self.registry.write();
        let plan = registry.catalog.plan(definitions)?;
        let report = ApplyReport {
            added_streams: plan.new_streams.iter().map(|s| s.name.clone()).collect(),
            added_features: plan.new_features.iter().map(|f| f.name.clone()).collect(),
            unchanged: plan.unchanged.clone(),
        };
        if plan.is_empty() {
            return Ok(report);
        }
        let entry = LogEntry::Definitions(Definitions {
            streams: plan.new_streams.clone(),
            features: plan.new_features.clone(),
        });
        self.change_catalog(registry, &entry, |registry| registry.add(&plan))?;
        Ok(report)
    }

    /// Record a catalog change (`entry`) durably in the log, then make it (`change`) under
    /// the registry's write lock, which the caller took before validating the change.
    fn change_catalog(
        &self,
        mut registry: parking_lot::RwLockWriteGuard<'_, Registry>,
        entry: &LogEntry,
        change: impl FnOnce(&mut Registry),
    ) -> Result<()> {
        let payload = codec::encode(entry).expect("log entries encode");
        let appended = self.log.write(&[payload])?;
        self.log.wait_durable(appended.end_lsn())?;
        self.log.sync()?;
        change(&mut registry);
        registry.catalog_lsn = appended.first_lsn;
        drop(registry);
        self.applied
            .complete(appended.first_lsn, appended.end_lsn());
        Ok(())
    }

    fn remove_features(&self, names: &[&str]) -> Result<Vec<String>> {
        let registry = self.registry.write();
        let mut removed: Vec<String> = Vec::with_capacity(names.len());
        for &name in names {
            if !registry.features.contains_key(name) {
                return Err(Error::UnknownFeature(name.to_owned()));
            }
            if !removed.iter().any(|r| r == name) {
                removed.push(name.to_owned());
            }
        }
        if removed.is_empty() {
            return Ok(removed);
        }
        let entry = LogEntry::RemoveFeatures(removed.clone());
        self.change_catalog(registry, &entry, |registry| registry.remove(&removed))?;
        Ok(removed)
    }

    fn append(&self, stream: &Arc<StreamState>, events: &[Event]) -> Result<AppendReport> {
        let max = self.options.limits.batch_events_max;
        if events.len() > max {
            return Err(Error::BatchTooLarge {
                len: events.len(),
                max,
            });
        }
        if events.is_empty() {
            return Ok(AppendReport::default());
        }
        // Encode every entry into one buffer, without copying the events.
        let mut buffer = Vec::with_capacity(events.len() * 64);
        let mut ends = Vec::with_capacity(events.len());
        for e in events {
            wire::encode_event(
                &mut buffer,
                stream.id,
                &e.entity,
                e.time_ms,
                e.id.as_deref(),
                &e.values,
            );
            ends.push(buffer.len());
        }
        let payload = |i: usize| &buffer[if i == 0 { 0 } else { ends[i - 1] }..ends[i]];
        let hashes: Vec<Option<u128>> = events
            .iter()
            .map(|e| e.id.as_deref().map(|id| dedup_hash(stream.id, id)))
            .collect();

        // The log's limits, checked first: past this, writing the batch fails only on an
        // I/O error, and that poisons the log.
        self.log
            .check_batch(&(0..events.len()).map(payload).collect::<Vec<_>>())?;
        // Tell the log's syncer a write is coming, so that concurrent appends share one
        // fsync (it waits, briefly and bounded, for announced appenders to write): now
        // that the batch is encoded, just before the write waits its turn.
        let sync = self.options.durability == Durability::Sync;
        let announced = sync.then(|| self.log.announce_append());

        // Decide duplicates and write, in one order: an id is taken by adding it (a repeat
        // within the batch finds it added). If the write then fails, the batch's ids stay
        // in the set without their events; the log is poisoned, and every append from then
        // on stops here, before deciding anything, until a reopen rebuilds the set.
        let (accepted, first_lsn, end_lsn) = {
            let mut ids = self.ingest.lock();
            self.log.check_writable()?;
            ids.warm(hashes.iter().flatten().copied());
            let accepted: Vec<usize> = (0..events.len())
                .filter(|&i| hashes[i].is_none_or(|h| ids.insert(h)))
                .collect();
            if accepted.is_empty() {
                let end = self.log.end_lsn();
                (accepted, end, end)
            } else {
                let batch: Vec<&[u8]> = accepted.iter().map(|&i| payload(i)).collect();
                let appended = self.log.write(&batch).inspect_err(|_| {
                    assert!(
                        self.log.poisoned().is_some(),
                        "a failed write poisons the log"
                    );
                })?;
                (accepted, appended.first_lsn, appended.end_lsn())
            }
        };
        // The fsync may start now, while the part of applying that nothing reads runs.
        if sync {
            self.log.request_durable(end_lsn);
        }
        let columns = stream.field_types.len();
        let mut cells = Vec::with_capacity(accepted.len() * columns);
        stream.cells_into(accepted.iter().map(|&i| &events[i].values[..]), &mut cells);
        let slots: Vec<EntitySlot> = accepted
            .iter()
            .map(|&i| stream.slot_or_new(&events[i].entity))
            .collect();
        // Durable before visible: duplicates too wait for the original's durability.
        if sync {
            self.log.wait_requested(end_lsn)?;
        }
        drop(announced);
        let mut applied = Applied::default();
        for (offset, (&i, slot)) in accepted.iter().zip(&slots).enumerate() {
            let event = PreparedEvent {
                entity: &events[i].entity,
                time_ms: events[i].time_ms,
                id_hash: hashes[i],
                slot,
                cells: &cells[offset * columns..(offset + 1) * columns],
            };
            self.apply_prepared(stream, first_lsn + offset as Lsn, event, &mut applied);
        }
        self.hand_over(applied);
        self.applied.complete(first_lsn, end_lsn);
        // Read-your-writes: the batch's own events are applied now. A duplicate's original
        // may belong to an earlier append still applying it: then wait for every earlier
        // LSN (an append without duplicates does not wait for appends it did not see).
        if accepted.len() < events.len() {
            self.applied.wait_for(end_lsn);
        }
        Ok(AppendReport {
            accepted: accepted.len(),
            duplicates: events.len() - accepted.len(),
        })
    }

    /// Apply one prepared event (ingest): [`apply_to`] under its entity's lock.
    fn apply_prepared(
        &self,
        stream: &Arc<StreamState>,
        lsn: Lsn,
        event: PreparedEvent<'_>,
        applied: &mut Applied,
    ) {
        let PreparedEvent {
            entity,
            time_ms,
            id_hash,
            slot,
            cells,
        } = event;
        let mut state = stream.lock_for_append(slot);
        let was_clean = state.unpersisted.len() == 0;
        if apply_to(&mut state, time_ms, lsn, cells) {
            applied.events += 1;
            if was_clean {
                applied.newly_dirty.push(Dirty {
                    stream: Arc::clone(stream),
                    name: entity.into(),
                    slot: Arc::clone(slot),
                });
            }
        }
        drop(state);
        if let Some(hash) = id_hash {
            applied.ids.push(hash);
        }
    }

    /// Give what a batch applied to the checkpointer (before the batch is marked applied:
    /// a checkpoint that sees the batch's LSNs applied also sees its rows).
    fn hand_over(&self, applied: Applied) {
        if !applied.newly_dirty.is_empty() {
            self.dirty.lock().extend(applied.newly_dirty);
        }
        if !applied.ids.is_empty() {
            self.pending_ids.lock().extend(applied.ids);
        }
        let total = self
            .unpersisted_events
            .fetch_add(applied.events, Ordering::Relaxed)
            + applied.events;
        if total >= self.options.checkpoint_events {
            self.wake.notify_all();
        }
    }

    /// The key of a new chunk of accepted ids (each chunk is written once).
    fn new_id_chunk_key(&self) -> Vec<u8> {
        let number = self.next_id_chunk.fetch_add(1, Ordering::Relaxed);
        KeyBuf::new().u64(number).into_vec()
    }

    /// Persist every applied event not yet in the state store, with `applied_lsn`.
    pub(crate) fn checkpoint(&self) -> Result<()> {
        let _one_at_a_time = self.checkpointing.lock();
        // Everything at or below the watermark was handed over before it was marked
        // applied, so it is in the lists taken below (and possibly more: applying is
        // idempotent, so persisting events past the watermark is harmless).
        let watermark = self.applied.end() - 1;
        let dirty = std::mem::take(&mut *self.dirty.lock());
        let ids = std::mem::take(&mut *self.pending_ids.lock());
        let catalog = {
            let mut registry = self.registry.write();
            let dirty = std::mem::take(&mut registry.catalog_dirty);
            dirty.then(|| {
                let json = serde_json::to_vec(&registry.catalog).expect("catalog serializes");
                (json, registry.catalog_lsn)
            })
        };
        if dirty.is_empty()
            && ids.is_empty()
            && catalog.is_none()
            && self.state.applied_lsn()? == watermark
        {
            return Ok(());
        }
        // Encode each dirty entity's unpersisted rows, copied under its lock and sorted
        // outside it, as chunks of at most CHUNK_ROWS_MAX rows, each keyed by its smallest
        // LSN. The rows stay in `unpersisted` (for a partial state, the only place they are
        // in memory) until the commit; then the rows written, the first ones, are removed,
        // whatever was appended after them meanwhile (checkpoints run one at a time, and
        // an entity is listed once: appends list it only when they find it clean).
        let (written, chunks) = if dirty.len() < PARALLEL_ENCODE_ENTITIES_MIN {
            encode_unpersisted(dirty)
        } else {
            // Half each on two threads (a backlog of ingest; a replay writes its own).
            let mut first = dirty;
            let second = first.split_off(first.len() / 2);
            let (mut a, b) = std::thread::scope(|scope| {
                let b = scope.spawn(|| encode_unpersisted(second));
                (
                    encode_unpersisted(first),
                    b.join().expect("checkpoint encoder panicked"),
                )
            });
            a.0.extend(b.0);
            a.1.extend(b.1);
            a
        };
        let events: usize = written.iter().map(|&(_, rows)| rows).sum();
        // In key order: RocksDB's memtable inserts a key next to the one before it cheaply,
        // a key elsewhere by a search from the top of its skip list.
        let mut chunks = chunks;
        chunks.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let result = (|| {
            // Events are applied only after their log write; make those writes durable
            // before state that reflects them is (in NoSync and Interval modes).
            self.log.sync()?;
            // Keys, values, their checksums and RocksDB's few bytes per write.
            let bytes: usize = chunks.iter().map(|(k, v)| k.len() + v.len() + 16).sum();
            let mut batch = self
                .state
                .batch_with_capacity(bytes + ids.len() * 16 + 4096);
            for (key, value) in &chunks {
                batch.put(Table::Events, key, value);
            }
            if !ids.is_empty() {
                batch.put(Table::Dedup, &self.new_id_chunk_key(), &pack_ids(&ids));
            }
            if let Some((catalog, catalog_lsn)) = &catalog {
                batch.put(Table::Meta, CATALOG_KEY, catalog);
                batch.put(Table::Meta, CATALOG_LSN_KEY, &catalog_lsn.to_be_bytes());
            }
            batch.set_applied_lsn(watermark);
            self.state.commit(batch)?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.unpersisted_events.fetch_sub(
                    events.min(self.unpersisted_events.load(Ordering::Relaxed)),
                    Ordering::Relaxed,
                );
                // An entity that received events while this checkpoint ran stays dirty (its
                // appends saw `unpersisted` non-empty and did not list it again).
                let mut still_dirty = Vec::new();
                let mut spent = Vec::new();
                for (entity, rows) in written {
                    let mut guard = entity.slot.lock();
                    let state = guard.as_mut().expect("dirty entities are in memory");
                    state.unpersisted.remove_first(rows);
                    let left = state.unpersisted.len() > 0;
                    let partial = !state.history_loaded;
                    drop(guard);
                    if left {
                        still_dirty.push(entity);
                    } else if partial {
                        spent.push((entity.stream, entity.name));
                    }
                }
                self.dirty.lock().extend(still_dirty);
                // A partial state exists to hold unpersisted events: with none left it holds
                // nothing (an entity not in memory is the same), so it leaves memory now
                // rather than at the next eviction pass.
                for (stream, name) in spent {
                    stream.forget_spent_partial(&name);
                }
                Ok(())
            }
            Err(e) => {
                // Nothing left `unpersisted`: the entities go back on the list for the next
                // attempt.
                self.dirty
                    .lock()
                    .extend(written.into_iter().map(|(entity, _)| entity));
                self.pending_ids.lock().extend(ids);
                if catalog.is_some() {
                    self.registry.write().catalog_dirty = true;
                }
                Err(e)
            }
        }
    }

    /// After a read of `stream`: once reads have brought an eighth of `cache_bytes_max` into
    /// memory since the last eviction pass, wake the checkpointer for one now rather than at
    /// its next interval, so that a burst of reads of cold entities cannot outgrow the
    /// budget by much.
    pub(crate) fn after_reads(&self, stream: &StreamState) {
        if stream.loaded_bytes.load(Ordering::Relaxed) > self.options.cache_bytes_max / 8 {
            self.wake.notify_all();
        }
    }

    /// Keep the entities in memory within `cache_bytes_max`: each stream gives up its
    /// share of the excess, coldest entities first.
    fn evict(&self) {
        let _one_at_a_time = self.evicting.lock();
        let streams = self.registry.read().streams.clone();
        for stream in &streams {
            stream.loaded_bytes.store(0, Ordering::Relaxed);
        }
        let held: Vec<usize> = streams.iter().map(|s| s.held_bytes()).collect();
        let total: usize = held.iter().sum();
        let budget = self.options.cache_bytes_max;
        if total <= budget {
            return;
        }
        // Aim below the budget so that the next pass has room.
        let target = budget / 10 * 9;
        for (stream, bytes) in streams.iter().zip(held) {
            let share = (bytes as u128 * target as u128 / total as u128) as usize;
            let evicted = stream.evict(share);
            self.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
        }
    }

    fn run_checkpointer(&self) {
        let interval = Duration::from_millis(self.options.checkpoint_interval_ms.max(1));
        loop {
            {
                let mut shutdown = self.shutdown.lock();
                if *shutdown {
                    return;
                }
                self.wake.wait_for(&mut shutdown, interval);
                if *shutdown {
                    return;
                }
            }
            // The log holds everything; a failed checkpoint is retried by the next one (or
            // replayed on reopen), and reported by `Db::health`.
            let result = self.checkpoint();
            if result.is_ok() {
                self.evict();
            }
            *self.checkpoint_error.lock() = result.err().map(|e| e.to_string());
        }
    }
}

#[cfg(test)]
impl StreamState {
    /// A stream `s` (entity `k`, time `ts`) with one field `v` of the given type.
    fn for_test(id: u32, field_type: &str) -> StreamState {
        let toml = format!(
            "[[stream]]\nname = \"s\"\nentity = \"k\"\ntime = \"ts\"\n[stream.fields]\nv = \"{field_type}\"\n"
        );
        let definitions = crate::catalog::parse_definitions(&toml).expect("a valid stream");
        StreamState::new(id, definitions.streams[0].clone())
    }
}

#[cfg(test)]
mod tests {
    /// Id hashes are persisted (the dedup table): the short-id path gives the streaming
    /// hasher's value at every length around its cut, and a pinned value stays.
    #[test]
    fn dedup_hash_is_the_hash_of_stream_then_id() {
        let streaming = |stream: u32, id: &str| {
            let mut hasher = xxhash_rust::xxh3::Xxh3::new();
            hasher.update(&stream.to_be_bytes());
            hasher.update(id.as_bytes());
            hasher.digest128()
        };
        for len in 0..100 {
            let id: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            for stream in [0, 1, 0x0102_0304, u32::MAX] {
                assert_eq!(
                    super::dedup_hash(stream, &id),
                    streaming(stream, &id),
                    "{len}"
                );
            }
        }
        assert_eq!(super::dedup_hash(1, "t-1"), PINNED);
    }

    /// An entity's chunks come in key order (a sorted run refuses anything else) and hold
    /// every row once, however its LSNs and times are shuffled.
    #[test]
    fn chunks_come_in_key_order_with_every_row() {
        let stream = super::StreamState::for_test(3, "int");
        let mut page = super::page::Page::new(1);
        let rows = 3 * super::chunk::CHUNK_ROWS_MAX + 17;
        // Times in order, LSNs the other way (events that arrived latest first): the
        // chunks' first LSNs fall as their time ranges rise.
        for row in 0..rows as u64 {
            page.push(row as i64, rows as u64 - row, &[Some(row)]);
        }
        let mut keys = Vec::new();
        let mut seen = 0;
        super::for_each_chunk(&stream, "e", &page, 0..page.len(), |key, chunk| {
            seen += chunk.range.len();
            keys.push(key);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, rows);
        assert_eq!(keys.len(), rows.div_ceil(super::chunk::CHUNK_ROWS_MAX));
        assert!(
            keys.windows(2).all(|pair| pair[0] < pair[1]),
            "keys in order"
        );
    }

    const PINNED: u128 = 0x4d9a551b_415505b7_ca0d2aae_5f32f675;
}
