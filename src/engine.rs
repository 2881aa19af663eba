//! The engine: [`Db`], the one `apply` path, durability and recovery.
//!
//! Architecture invariants (docs/ARCHITECTURE.md):
//! - **The log is the truth.** RocksDB state is a cache of a fold over the log:
//!   `state == fold(apply, log[..=applied_lsn])`, committed atomically with `applied_lsn`.
//!   Deleting the state directory and reopening rebuilds identical state.
//! - **One apply.** [`Inner::apply_entry`] is the only code that turns log entries into
//!   state; ingest, recovery, and full replay differ only in where entries come from.
//! - **Durable before visible.** An event is applied (and so visible to queries) only after
//!   the log holds it durably (in `Sync` mode); `append` returns after it is applied
//!   (read-your-writes).
//! - **Applying is idempotent.** State is a set of events keyed by (stream, entity, time,
//!   LSN); applying an entry twice changes nothing. This is what makes checkpoints that
//!   race with ingest, and replays that overlap them, correct.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use fsdb_storage::codec;
use fsdb_storage::io::{DirLock, OsVfs, Vfs};
use fsdb_storage::state::key::{KeyBuf, KeyReader};
use fsdb_storage::state::{StateOptions, StateStore, Table};
use fsdb_storage::{Durability, Log, LogOptions, Lsn};
use parking_lot::{Condvar, Mutex, RwLock};

use crate::catalog::{ApplyPlan, Catalog, Definitions, FeatureDef, StreamDef, parse_definitions};
use crate::error::{Error, Result};
use crate::event::{Event, EventLimits, LogEntry, check_event, event_from_json};
use crate::time::{Clock, SystemClock};
use crate::value::{FieldType, Value};

pub(crate) mod entity;
pub(crate) mod feature;
pub(crate) mod page;
pub(crate) mod strings;

use entity::EntityRun;
use feature::CompiledFeature;
use strings::StringTable;

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
    /// Checkpoint state to RocksDB once this many events are applied but not yet persisted.
    pub checkpoint_events: usize,
    /// ...or when this much time has passed with any pending.
    pub checkpoint_interval_ms: u64,
    pub state: StateOptions,
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
            state: StateOptions::default(),
        }
    }
}

/// The name of the data directory's lock file.
const LOCK_FILE: &str = "LOCK";
const LOG_DIR: &str = "log";
const STATE_DIR: &str = "state";
const CATALOG_KEY: &[u8] = b"catalog";
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

/// The writer's state, for health checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// Why writes are refused until the database is reopened, if they are.
    pub poisoned: Option<String>,
    pub checkpoint_error: Option<String>,
    pub log_end_lsn: Lsn,
    pub durable_lsn: Lsn,
    /// Every log record up to this LSN is applied and visible.
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

type EntitySlot = Arc<Mutex<Option<EntityRun>>>;

/// A registered stream and the in-memory state of its entities.
pub(crate) struct StreamState {
    pub(crate) id: u32,
    pub(crate) def: StreamDef,
    pub(crate) field_types: Vec<FieldType>,
    pub(crate) strings: StringTable,
    pub(crate) features: RwLock<FeatureSet>,
    /// Entities present in memory (`None` while being loaded).
    entities: Vec<RwLock<HashMap<Box<str>, EntitySlot>>>,
}

/// Streams and features by name.
#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) catalog: Catalog,
    pub(crate) streams: Vec<Arc<StreamState>>,
    /// Feature name -> (stream index, slot in the stream's feature set).
    pub(crate) features: HashMap<String, (usize, usize)>,
    /// The catalog changed since the last checkpoint.
    catalog_dirty: bool,
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

/// Applied events not yet written to RocksDB.
#[derive(Default)]
struct Pending {
    rows: Vec<(Vec<u8>, Vec<u8>)>,
    ids: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) options: Options,
    _lock: Box<dyn DirLock>,
    pub(crate) log: Log,
    pub(crate) state: StateStore,
    pub(crate) registry: RwLock<Registry>,
    /// Hashes of accepted event ids; the lock also orders dedup decisions with log writes.
    ingest: Mutex<HashSet<u128>>,
    applied: AppliedTracker,
    pending: Mutex<Pending>,
    checkpointing: Mutex<()>,
    wake: Condvar,
    shutdown: Mutex<bool>,
    poison: Mutex<Option<String>>,
    /// The last background checkpoint failure, if the latest attempt failed.
    checkpoint_error: Mutex<Option<String>>,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

/// `stream · entity · time · lsn` — the key of an event row in the `events` table.
fn row_key(stream: u32, entity: &str, time: i64, lsn: Lsn) -> Vec<u8> {
    KeyBuf::new()
        .u32(stream)
        .bytes(entity.as_bytes())
        .i64(time)
        .u64(lsn)
        .into_vec()
}

fn entity_prefix(stream: u32, entity: &str) -> Vec<u8> {
    KeyBuf::new()
        .u32(stream)
        .bytes(entity.as_bytes())
        .into_vec()
}

fn dedup_key(stream: u32, id: &str) -> Vec<u8> {
    KeyBuf::new().u32(stream).bytes(id.as_bytes()).into_vec()
}

fn dedup_hash(key: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key)
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
                .map(|_| RwLock::new(HashMap::new()))
                .collect(),
        }
    }

    fn shard(&self, entity: &str) -> &RwLock<HashMap<Box<str>, EntitySlot>> {
        let hash = xxhash_rust::xxh3::xxh3_64(entity.as_bytes());
        &self.entities[(hash % ENTITY_SHARDS as u64) as usize]
    }

    /// The raw cells of an event's values (interning strings).
    fn cells(&self, values: &[Value]) -> Vec<Option<u64>> {
        values
            .iter()
            .map(|v| match v {
                Value::Null => None,
                Value::Int(i) => Some(*i as u64),
                Value::Float(f) => Some(f.to_bits()),
                Value::String(s) => Some(u64::from(self.strings.intern(s).0)),
                Value::Bool(b) => Some(u64::from(*b)),
                Value::List(_) => unreachable!("events carry no lists"),
            })
            .collect()
    }

    /// The entity's run, loading it from the state store if needed; with `create`, an
    /// entity unknown to the store gets an empty run, else `None`.
    pub(crate) fn entity(
        &self,
        name: &str,
        store: &StateStore,
        create: bool,
    ) -> Result<Option<EntitySlot>> {
        let shard = self.shard(name);
        if let Some(slot) = shard.read().get(name) {
            let slot = Arc::clone(slot);
            self.ensure_loaded(&slot, name, store)?;
            return Ok(Some(slot));
        }
        if !create {
            // A query must not fill memory with entities that do not exist.
            let prefix = entity_prefix(self.id, name);
            if store.scan_prefix(Table::Events, &prefix).next().is_none() {
                return Ok(None);
            }
        }
        let slot = Arc::clone(
            shard
                .write()
                .entry(name.into())
                .or_insert_with(|| Arc::new(Mutex::new(None))),
        );
        self.ensure_loaded(&slot, name, store)?;
        Ok(Some(slot))
    }

    fn ensure_loaded(&self, slot: &EntitySlot, name: &str, store: &StateStore) -> Result<()> {
        let mut guard = slot.lock();
        if guard.is_none() {
            *guard = Some(self.load(name, store)?);
        }
        Ok(())
    }

    /// Read an entity's persisted rows into a run.
    fn load(&self, name: &str, store: &StateStore) -> Result<EntityRun> {
        let mut run = EntityRun::new(self.field_types.len());
        let prefix = entity_prefix(self.id, name);
        for item in store.scan_prefix(Table::Events, &prefix) {
            let (key, value) = item?;
            let bad = |reason: &str| Error::BadStateRow {
                key: key.to_vec(),
                reason: reason.to_owned(),
            };
            let mut reader = KeyReader::new(&key[prefix.len()..]);
            let (Some(time), Some(lsn)) = (reader.i64(), reader.u64()) else {
                return Err(bad("key is not stream · entity · time · lsn"));
            };
            let values: Vec<Value> = codec::decode(&value).map_err(|e| bad(&e.to_string()))?;
            if values.len() != self.field_types.len() {
                return Err(bad("wrong number of values"));
            }
            run.insert(time, lsn, &self.cells(&values));
        }
        Ok(run)
    }
}

impl Registry {
    /// Add what `plan` adds: new streams, and compiled features on their streams.
    fn add(&mut self, plan: &ApplyPlan) {
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

    fn from_catalog(catalog: &Catalog) -> Registry {
        let mut registry = Registry::default();
        registry.add(&ApplyPlan {
            new_streams: catalog.streams.clone(),
            new_features: catalog.features.clone(),
            unchanged: Vec::new(),
        });
        registry.catalog_dirty = false;
        registry
    }
}

impl Db {
    /// Open (or create) the database in `dir`.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Db> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
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
        let state = match StateStore::open(&state_dir, &options.state) {
            Ok(state) => state,
            Err(e) => {
                report.rebuilt = Some(format!("the state could not be opened ({e})"));
                reset_state(&state_dir, &options.state)?
            }
        };
        let mut state_lsn = state.applied_lsn()?;
        let log_options = LogOptions {
            durability: options.durability,
            segment_bytes_max: options.segment_bytes_max,
            // Records the state reflects were durable: recovery must not lose them.
            durable_lsn_hint: state_lsn + 1,
            ..LogOptions::default()
        };
        let log = Log::open(&dir.join(LOG_DIR), log_options)?;
        report.log = log.recovery_report().clone();
        let mut state = state;
        if state_lsn >= log.end_lsn() {
            // Only possible if the log was replaced or emptied under the state.
            report.rebuilt = Some(format!(
                "the state is at LSN {state_lsn} but the log ends before {}",
                log.end_lsn()
            ));
            drop(state);
            state = reset_state(&state_dir, &options.state)?;
            state_lsn = 0;
        }
        if state_lsn + 1 < log.first_lsn() {
            return Err(Error::LogBehindState {
                log_first: log.first_lsn(),
                needed: state_lsn + 1,
            });
        }
        let catalog: Catalog = match state.get(Table::Meta, CATALOG_KEY)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::BadStateRow {
                key: CATALOG_KEY.to_vec(),
                reason: e.to_string(),
            })?,
            None => Catalog::default(),
        };
        let mut ids = HashSet::new();
        for item in state.scan_prefix(Table::Dedup, &[]) {
            let (key, _) = item?;
            ids.insert(dedup_hash(&key));
        }
        let inner = Arc::new(Inner {
            registry: RwLock::new(Registry::from_catalog(&catalog)),
            ingest: Mutex::new(ids),
            applied: AppliedTracker::new(state_lsn + 1),
            pending: Mutex::new(Pending::default()),
            checkpointing: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: Mutex::new(false),
            poison: Mutex::new(None),
            checkpoint_error: Mutex::new(None),
            dir,
            options,
            _lock: lock,
            log,
            state,
        });
        report.state_lsn = state_lsn;
        report.replayed = inner.replay_log(state_lsn + 1)?;
        if report.replayed > 0 {
            inner.checkpoint()?;
        }
        let checkpointer = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name("fsdb-checkpoint".into())
                .spawn(move || inner.run_checkpointer())
                .map_err(io("spawn checkpoint thread", Path::new("")))?
        };
        Ok(Db {
            inner,
            checkpointer: Some(checkpointer),
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

    /// Append validated events to `stream`. Returns once they are durable (per the
    /// configured durability) and visible to every query.
    pub fn append(&self, stream: &str, events: &[Event]) -> Result<AppendReport> {
        let stream = self.inner.stream(stream)?;
        for (index, event) in events.iter().enumerate() {
            check_event(index, &stream.def, event, &self.inner.options.limits)?;
        }
        self.inner.append(&stream, events)
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

    /// Write everything applied so far to the state store now.
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.checkpoint()
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

    /// A digest of the persisted state (after a checkpoint): equal digests mean equal event
    /// rows, dedup ids and catalog. Two databases fed the same log have the same digest.
    pub fn state_digest(&self) -> Result<u64> {
        self.inner.checkpoint()?;
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for table in [Table::Events, Table::Dedup] {
            hasher.update(format!("{table:?}").as_bytes());
            for item in self.inner.state.scan_prefix(table, &[]) {
                let (key, value) = item?;
                hasher.update(&(key.len() as u64).to_le_bytes());
                hasher.update(&key);
                hasher.update(&(value.len() as u64).to_le_bytes());
                hasher.update(&value);
            }
        }
        hasher.update(
            &serde_json::to_vec(&self.inner.registry.read().catalog).expect("catalog serializes"),
        );
        Ok(hasher.digest())
    }

    /// Whether the database can accept writes, and why not.
    pub fn health(&self) -> Health {
        Health {
            poisoned: self
                .inner
                .poison
                .lock()
                .clone()
                .or_else(|| self.inner.log.poisoned()),
            checkpoint_error: self.inner.checkpoint_error.lock().clone(),
            log_end_lsn: self.inner.log.end_lsn(),
            durable_lsn: self.inner.log.durable_lsn(),
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
        if let Some(thread) = self.checkpointer.take() {
            let _ = thread.join();
        }
        if self.inner.poison.lock().is_some() {
            return Ok(());
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

/// Remove a state directory and create an empty one (state is derived: the log rebuilds it).
fn reset_state(state_dir: &Path, options: &StateOptions) -> Result<StateStore> {
    if state_dir.exists() {
        std::fs::remove_dir_all(state_dir).map_err(io("remove", state_dir))?;
    }
    Ok(StateStore::open(state_dir, options)?)
}

impl Inner {
    pub(crate) fn check_poison(&self) -> Result<()> {
        match &*self.poison.lock() {
            Some(cause) => Err(Error::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn poison_with(&self, error: &Error) {
        let mut poison = self.poison.lock();
        if poison.is_none() {
            *poison = Some(error.to_string());
        }
    }

    pub(crate) fn stream(&self, name: &str) -> Result<Arc<StreamState>> {
        let registry = self.registry.read();
        let (index, _) = registry
            .catalog
            .stream(name)
            .ok_or_else(|| Error::UnknownStream(name.to_owned()))?;
        Ok(Arc::clone(&registry.streams[index]))
    }

    fn apply_definitions(&self, definitions: &Definitions) -> Result<ApplyReport> {
        self.check_poison()?;
        let mut registry = self.registry.write();
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
        let payload = codec::encode(&entry).expect("log entries encode");
        let appended = self.log.write(&[payload])?;
        self.log.wait_durable(appended.end_lsn())?;
        self.log.sync()?;
        registry.add(&plan);
        drop(registry);
        self.applied
            .complete(appended.first_lsn, appended.end_lsn());
        Ok(report)
    }

    fn append(&self, stream: &StreamState, events: &[Event]) -> Result<AppendReport> {
        self.check_poison()?;
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
        let payloads: Vec<Vec<u8>> = events
            .iter()
            .map(|e| {
                codec::encode(&LogEntry::Event {
                    stream: stream.id,
                    entity: e.entity.clone(),
                    time_ms: e.time_ms,
                    id: e.id.clone(),
                    values: e.values.clone(),
                })
                .expect("log entries encode")
            })
            .collect();

        // Decide duplicates and write, in one order.
        let (accepted, first_lsn, end_lsn) = {
            let mut ids = self.ingest.lock();
            let mut batch_ids = HashSet::new();
            let accepted: Vec<usize> = (0..events.len())
                .filter(|&i| match &events[i].id {
                    None => true,
                    Some(id) => {
                        let hash = dedup_hash(&dedup_key(stream.id, id));
                        !ids.contains(&hash) && batch_ids.insert(hash)
                    }
                })
                .collect();
            if accepted.is_empty() {
                let end = self.log.end_lsn();
                (accepted, end, end)
            } else {
                let batch: Vec<&[u8]> = accepted.iter().map(|&i| payloads[i].as_slice()).collect();
                let appended = self.log.write(&batch)?;
                ids.extend(batch_ids);
                (accepted, appended.first_lsn, appended.end_lsn())
            }
        };
        // Durable before visible: duplicates too wait for the original's durability.
        if self.options.durability == Durability::Sync {
            self.log.wait_durable(end_lsn)?;
        }
        let mut rows = Pending::default();
        for (offset, &i) in accepted.iter().enumerate() {
            let event = &events[i];
            let lsn = first_lsn + offset as Lsn;
            if let Err(e) = self.apply_event(
                stream,
                lsn,
                &event.entity,
                event.time_ms,
                event.id.as_deref(),
                &event.values,
                &mut rows,
            ) {
                self.poison_with(&e);
                return Err(e);
            }
        }
        self.queue_for_checkpoint(rows);
        self.applied.complete(first_lsn, end_lsn);
        // Read-your-writes also for duplicates of events another append is applying.
        self.applied.wait_for(end_lsn);
        Ok(AppendReport {
            accepted: accepted.len(),
            duplicates: events.len() - accepted.len(),
        })
    }

    /// **The one apply.** Turn one log entry into state.
    fn apply_entry(&self, lsn: Lsn, entry: LogEntry, rows: &mut Pending) -> Result<()> {
        match entry {
            LogEntry::Definitions(definitions) => {
                let mut registry = self.registry.write();
                let plan = registry.catalog.plan(&definitions)?;
                registry.add(&plan);
                Ok(())
            }
            LogEntry::Event {
                stream,
                entity,
                time_ms,
                id,
                values,
            } => {
                let stream = Arc::clone(
                    self.registry
                        .read()
                        .streams
                        .get(stream as usize)
                        .ok_or_else(|| Error::BadRecord {
                            lsn,
                            source: codec::CodecError::TrailingBytes { trailing: 0 },
                        })?,
                );
                self.apply_event(&stream, lsn, &entity, time_ms, id.as_deref(), &values, rows)
            }
        }
    }

    /// Insert one event into its entity's run and queue its row (and id) for the next
    /// checkpoint. Idempotent: an event already present changes nothing.
    #[allow(
        clippy::too_many_arguments,
        reason = "the fields of one event, borrowed"
    )]
    fn apply_event(
        &self,
        stream: &StreamState,
        lsn: Lsn,
        entity: &str,
        time_ms: i64,
        id: Option<&str>,
        values: &[Value],
        rows: &mut Pending,
    ) -> Result<()> {
        let cells = stream.cells(values);
        let slot = stream
            .entity(entity, &self.state, true)?
            .expect("created on demand");
        let inserted = slot
            .lock()
            .as_mut()
            .expect("loaded")
            .insert(time_ms, lsn, &cells);
        if inserted {
            let value = codec::encode(values).expect("values encode");
            rows.rows
                .push((row_key(stream.id, entity, time_ms, lsn), value));
        }
        if let Some(id) = id {
            rows.ids
                .push((dedup_key(stream.id, id), lsn.to_le_bytes().to_vec()));
        }
        Ok(())
    }

    fn queue_for_checkpoint(&self, rows: Pending) {
        let due = {
            let mut pending = self.pending.lock();
            pending.rows.extend(rows.rows);
            pending.ids.extend(rows.ids);
            pending.rows.len() >= self.options.checkpoint_events
        };
        if due {
            self.wake.notify_all();
        }
    }

    /// Apply every log record from `from` on. Returns how many were applied.
    fn replay_log(&self, from: Lsn) -> Result<u64> {
        let mut scan = self.log.scan(from)?;
        let mut count = 0;
        let mut rows = Pending::default();
        let mut ids = Vec::new();
        while let Some(record) = scan.next_record()? {
            let lsn = record.lsn;
            let entry: LogEntry =
                codec::decode(record.payload).map_err(|source| Error::BadRecord { lsn, source })?;
            if let LogEntry::Event {
                stream,
                id: Some(id),
                ..
            } = &entry
            {
                ids.push(dedup_hash(&dedup_key(*stream, id)));
            }
            self.apply_entry(lsn, entry, &mut rows)?;
            count += 1;
            if rows.rows.len() >= self.options.checkpoint_events {
                self.queue_for_checkpoint(std::mem::take(&mut rows));
                self.applied.complete(self.applied.end(), lsn + 1);
                self.checkpoint()?;
            }
        }
        self.ingest.lock().extend(ids);
        self.queue_for_checkpoint(rows);
        self.applied.complete(self.applied.end(), scan.next_lsn());
        Ok(count)
    }

    /// Persist every applied event not yet in the state store, with `applied_lsn`.
    pub(crate) fn checkpoint(&self) -> Result<()> {
        let _one_at_a_time = self.checkpointing.lock();
        let (pending, watermark) = {
            let mut pending = self.pending.lock();
            // Every event below the watermark was queued before it was marked applied.
            (std::mem::take(&mut *pending), self.applied.end() - 1)
        };
        let catalog = {
            let mut registry = self.registry.write();
            let dirty = std::mem::take(&mut registry.catalog_dirty);
            dirty.then(|| serde_json::to_vec(&registry.catalog).expect("catalog serializes"))
        };
        if pending.rows.is_empty()
            && pending.ids.is_empty()
            && catalog.is_none()
            && self.state.applied_lsn()? == watermark
        {
            return Ok(());
        }
        let result = (|| {
            // Events are applied only after their log write; make those writes durable
            // before state that reflects them is (in NoSync and Interval modes).
            self.log.sync()?;
            let mut batch = self.state.batch();
            for (key, value) in &pending.rows {
                batch.put(Table::Events, key, value);
            }
            for (key, value) in &pending.ids {
                batch.put(Table::Dedup, key, value);
            }
            if let Some(catalog) = &catalog {
                batch.put(Table::Meta, CATALOG_KEY, catalog);
            }
            batch.set_applied_lsn(watermark);
            self.state.commit(batch)?;
            Ok(())
        })();
        if let Err(e) = result {
            // Keep what was not persisted for the next attempt.
            let mut queued = self.pending.lock();
            let mut rows = pending.rows;
            rows.append(&mut queued.rows);
            queued.rows = rows;
            let mut ids = pending.ids;
            ids.append(&mut queued.ids);
            queued.ids = ids;
            if catalog.is_some() {
                self.registry.write().catalog_dirty = true;
            }
            return Err(e);
        }
        Ok(())
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
            if self.check_poison().is_err() {
                return;
            }
            // The log holds everything; a failed checkpoint is retried by the next one (or
            // replayed on reopen), and reported by `Db::health`.
            *self.checkpoint_error.lock() = self.checkpoint().err().map(|e| e.to_string());
        }
    }
}
