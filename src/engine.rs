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
use fsdb_storage::state::key::KeyReader;
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

mod checkpoint;
pub(crate) mod chunk;
pub(crate) mod entity;
pub(crate) mod feature;
pub(crate) mod ids;
pub(crate) mod materialize;
pub(crate) mod page;
mod replay;
mod stream;
pub(crate) mod strings;

use checkpoint::{Dirty, unpack_ids};
pub(crate) use stream::{Cached, EntitySlot, EntityState, StreamState, history_in_memory};

use feature::CompiledFeature;
use ids::{IdSet, IdSetBuilder};

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

    const PINNED: u128 = 0x4d9a551b_415505b7_ca0d2aae_5f32f675;
}
