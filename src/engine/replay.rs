//! Replaying the log at open: every record after the state's `applied_lsn`, applied and
//! persisted before the database serves anything.
//!
//! Nothing else touches entities while a database opens, so a replay owns the states it
//! builds, outside the shared entity maps and their locks. Records are read in batches on
//! a thread of their own; each batch of events goes through two steps on two threads:
//!
//! 1. **decode** — each thread decodes half of the batch, checks every value against its
//!    field's type, and routes each event by the parity of its entity's name hash, in log
//!    order;
//! 2. **apply** — each thread owns the entities of one parity and applies their events,
//!    the first half's then the second's (log order again): it does what
//!    [`apply_to`](super::apply_to), the one apply, does to a partial state, for all of a
//!    stream's entities at once ([`OwnedStream`]).
//!
//! A record that is not an event (definitions, removed features) comes in a batch of its
//! own and is applied in its place, so the events after it see the catalog it makes.
//!
//! As for an append to an entity not in memory, a replayed entity's state is *partial*:
//! only the events since the last flush. A flush (every half of `checkpoint_events` events,
//! and at the end) runs on a thread of its own while the replay applies the next events,
//! and waits for the flush before it (a record that is not an event waits for it too: it
//! may change the catalog a flush commits). It has two threads group the rows of each
//! parity by entity and write them as chunks to a sorted run (a file of RocksDB's table
//! format: no WAL, no memtable, no flush later) while a third writes the ids as a run of
//! chunks and ingests it, and a fourth adds them to the id set; the rows' runs are
//! ingested into the state store, then the catalog and `applied_lsn` (the last record the
//! flush holds: only a flush marks replayed records applied) are committed with
//! [`Inner::checkpoint`], and the rows dropped: a replay leaves no entity in memory, and
//! holds at most `checkpoint_events` events (plus two batches), half being applied and half
//! being persisted. A crash between the ingestions and that commit leaves rows and ids
//! persisted past `applied_lsn`; the next open replays and persists them again, and
//! loading an entity (as the state digest does) merges the repeated rows, the id set the
//! repeated ids.

use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::thread::ScopedJoinHandle;

use fsdb_storage::Lsn;
use fsdb_storage::log::Scan;
use fsdb_storage::state::{FinishedRun, Table};
use hashbrown::HashTable;
use rustc_hash::FxHashMap;

use super::page::Page;
use super::{Inner, StreamState, dedup_hash, for_each_chunk, pack_ids};
use crate::error::{Error, Result};
use crate::event::wire::{self, Entry, EventHead};
use crate::event::{LogEntryBorrowed, ValueBorrowed};
use crate::value::FieldType;

/// Log records read, decoded and applied together.
const BATCH_RECORDS: usize = 1 << 16;

/// Events a replay applies between flushes, at most, whatever `checkpoint_events` says: an
/// owner numbers its entities of a stream, and its flush their rows, with `u32`s, and a
/// flush holds fewer than this plus one batch.
const FLUSH_EVENTS_MAX: usize = 1 << 31;

/// Ids per chunk a replay's flush persists: a megabyte, the buffers of which the writer
/// reuses from chunk to chunk (one chunk of a flush's ids took three fresh copies of them).
const REPLAY_ID_CHUNK_IDS: usize = 1 << 16;

/// Events a replay applies between flushes: half of `checkpoint_events`, as it holds two
/// flushes' events at once (see [`Inner::replay_batches`]).
fn flush_events(checkpoint_events: usize) -> usize {
    (checkpoint_events / 2).clamp(1, FLUSH_EVENTS_MAX)
}

/// Log records read together: their payloads back to back, and each one's
/// `(LSN, start, end)` in them. Either events only (records that [`wire::starts_as_event`])
/// or one record that does not.
#[derive(Default)]
struct RecordBatch {
    bytes: Vec<u8>,
    records: Vec<(Lsn, usize, usize)>,
}

impl RecordBatch {
    fn payload(&self, record: usize) -> &[u8] {
        let (_, start, end) = self.records[record];
        &self.bytes[start..end]
    }

    /// A batch of one record that is not (or may not be) an event.
    fn is_other_entry(&self) -> bool {
        self.records.len() == 1 && !wire::starts_as_event(self.payload(0))
    }
}

/// Events of one entity parity, as one decode thread routed them, in log order.
#[derive(Default)]
struct Routed<'a> {
    rows: Vec<RoutedEvent<'a>>,
    /// The rows' cells, back to back (`RoutedEvent::cells`: where a row's cells start).
    cells: Vec<Option<u64>>,
}

struct RoutedEvent<'a> {
    stream: u32,
    entity: &'a str,
    /// The entity's name hash ([`entity_hash`]).
    entity_hash: u64,
    time_ms: i64,
    lsn: Lsn,
    cells: usize,
}

/// What one decode thread made of its part of a batch.
#[derive(Default)]
struct Decoded<'a> {
    by_parity: [Routed<'a>; 2],
    /// Hashes of the events' ids.
    ids: Vec<u128>,
}

/// The ids of the strings one decode thread has interned, by stream, kept from batch to
/// batch: the streams' string tables are shared, behind a lock, and a cache that borrowed
/// its keys from the batch compared each string with one far back in it.
#[derive(Default)]
struct InternCache {
    by_stream: Vec<FxHashMap<Box<str>, u64>>,
}

/// Distinct strings an [`InternCache`] keeps per stream before it starts again (a field of
/// unbounded cardinality must not grow it without end).
const INTERN_CACHE_STRINGS_MAX: usize = 1 << 16;

impl InternCache {
    fn id(&mut self, stream: usize, state: &StreamState, s: &str) -> u64 {
        if self.by_stream.len() <= stream {
            self.by_stream.resize_with(stream + 1, FxHashMap::default);
        }
        let cached = &mut self.by_stream[stream];
        if let Some(&id) = cached.get(s) {
            return id;
        }
        if cached.len() >= INTERN_CACHE_STRINGS_MAX {
            cached.clear();
        }
        let id = u64::from(state.strings.intern(s).0);
        cached.insert(s.into(), id);
        id
    }
}

impl<'a> Decoded<'a> {
    /// Decode `records` of `bytes` (events: see [`RecordBatch`]) and route them.
    fn events(
        bytes: &'a [u8],
        records: &[(Lsn, usize, usize)],
        streams: &[Arc<StreamState>],
        interned: &mut InternCache,
    ) -> Result<Decoded<'a>> {
        let mut decoded = Decoded::default();
        // Room for the usual split, so that the lists rarely grow (and copy themselves).
        let rows = records.len() / 2 + records.len() / 16 + 16;
        let columns = streams
            .iter()
            .map(|s| s.field_types.len())
            .max()
            .unwrap_or(0);
        for routed in &mut decoded.by_parity {
            routed.rows.reserve(rows);
            routed.cells.reserve(rows * columns);
        }
        decoded.ids.reserve(records.len());
        let mut values: Vec<ValueBorrowed<'a>> = Vec::new();
        for &(lsn, start, end) in records {
            let entry = wire::decode_entry_into(&bytes[start..end], &mut values)
                .map_err(|source| Error::BadRecord { lsn, source })?;
            let Entry::Event(EventHead {
                stream,
                entity,
                time_ms,
                id,
            }) = entry
            else {
                unreachable!("a record that starts as an event is one, or does not decode")
            };
            let mismatch = |reason| Error::RecordMismatch { lsn, reason };
            let state = streams.get(stream as usize);
            let state = state.ok_or_else(|| mismatch("no such stream"))?;
            if values.len() != state.field_types.len() {
                return Err(mismatch("not as many values as its stream has fields"));
            }
            let entity_hash = entity_hash(entity);
            let routed = &mut decoded.by_parity[parity(entity_hash)];
            routed.rows.push(RoutedEvent {
                stream,
                entity,
                entity_hash,
                time_ms,
                lsn,
                cells: routed.cells.len(),
            });
            for (value, field_type) in values.iter().zip(&state.field_types) {
                routed.cells.push(match (value, field_type) {
                    (ValueBorrowed::Null, _) => None,
                    (ValueBorrowed::Int(i), FieldType::Int) => Some(*i as u64),
                    (ValueBorrowed::Float(f), FieldType::Float) => Some(f.to_bits()),
                    (ValueBorrowed::Bool(b), FieldType::Bool) => Some(u64::from(*b)),
                    (ValueBorrowed::String(s), FieldType::String) => {
                        Some(interned.id(stream as usize, state, s))
                    }
                    _ => return Err(mismatch("a value not of its field's type")),
                });
            }
            if let Some(id) = id {
                decoded.ids.push(dedup_hash(stream, id));
            }
        }
        Ok(decoded)
    }
}

/// The hash an entity's name is routed and found by.
fn entity_hash(entity: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(entity.as_bytes())
}

/// The apply thread that owns an entity: one bit of its name hash, from the middle (an
/// owner's table of names finds them by the whole hash, and uses its low bits first).
fn parity(entity_hash: u64) -> usize {
    (entity_hash >> 32 & 1) as usize
}

/// The events of one entity parity applied since the last flush, by stream id: what one
/// apply thread owns.
#[derive(Default)]
struct Owned {
    streams: Vec<Option<OwnedStream>>,
    events: usize,
}

/// The events of one stream applied to the entities of one parity since the last flush.
///
/// A replayed entity's state is partial (see the module documentation), and
/// [`apply_to`](super::apply_to) on a partial state pushes the event's row onto the
/// entity's page of unpersisted rows, which the flush sorts by (time, LSN). Here every
/// entity's rows are pushed onto the same pages, in log order, each beside its entity's
/// number, and the flush gathers each entity's rows, in log order, onto a page of its own
/// ([`Page::push_row_of`]) and sorts them there: the same rows, in the same order per
/// entity, without a lookup of the entity's state, or a write to the end of its page, at
/// every event (cache misses, mostly, with thousands of entities).
struct OwnedStream {
    columns: usize,
    /// The rows, in pages of [`PAGE_ROWS`] (the last one filling): no page grows by copying
    /// itself.
    pages: Vec<Page>,
    /// The entity of each row: its number in `entities`.
    row_entity: Vec<u32>,
    entities: EntityNames,
}

/// Rows per page of an [`OwnedStream`].
const PAGE_ROWS: usize = 1 << 14;

impl OwnedStream {
    fn new(columns: usize) -> OwnedStream {
        OwnedStream {
            columns,
            pages: Vec::new(),
            row_entity: Vec::new(),
            entities: EntityNames::default(),
        }
    }

    /// What `apply_to` does to a partial state, for the entity `entity`: push the row.
    fn push(&mut self, entity: u32, time_ms: i64, lsn: Lsn, cells: &[Option<u64>]) {
        if self.pages.last().is_none_or(|page| page.len() == PAGE_ROWS) {
            let mut page = Page::new(self.columns);
            page.reserve_rows(PAGE_ROWS);
            self.pages.push(page);
        }
        let page = self.pages.last_mut().expect("a page with room");
        page.push(time_ms, lsn, cells);
        self.row_entity.push(entity);
    }

    /// Hand each entity's name and rows, sorted by (time, LSN), to `take`, entities in key
    /// order.
    fn for_each_entity(
        self,
        mut take: impl FnMut(&str, &Page, Range<usize>) -> Result<()>,
    ) -> Result<()> {
        let OwnedStream {
            columns,
            pages,
            row_entity,
            entities,
        } = self;
        // Entities in key order; `rank[entity]`: the entity's place in it.
        let order = entities.in_key_order();
        let mut rank = vec![0u32; order.len()];
        for (place, &entity) in order.iter().enumerate() {
            rank[entity as usize] = place as u32;
        }
        // Each row's entity by its place in that order, and where each entity's rows start.
        let mut row_place = row_entity;
        for entity in &mut row_place {
            *entity = rank[*entity as usize];
        }
        let mut starts = vec![0usize; order.len() + 1];
        for &place in &row_place {
            starts[place as usize + 1] += 1;
        }
        for place in 1..starts.len() {
            starts[place] += starts[place - 1];
        }
        // The rows' numbers grouped by place, in log order within each: a counting sort of
        // four bytes a row, not of the rows (no second copy of them all, and no scattered
        // writes of whole rows).
        let mut next = starts.clone();
        let mut rows_by_place = vec![0u32; row_place.len()];
        for (row, &place) in row_place.iter().enumerate() {
            let at = &mut next[place as usize];
            rows_by_place[*at] = row as u32;
            *at += 1;
        }
        drop(row_place);
        // Each entity's rows gathered from the pages onto one page, reused from entity to
        // entity (it stays in the cache), and sorted there.
        let mut rows = Page::new(columns);
        for (place, &entity) in order.iter().enumerate() {
            rows.clear();
            for &row in &rows_by_place[starts[place]..starts[place + 1]] {
                let row = row as usize;
                rows.push_row_of(&pages[row / PAGE_ROWS], row % PAGE_ROWS);
            }
            let all = 0..rows.len();
            rows.sort_rows(all.clone());
            take(entities.name(entity), &rows, all)?;
        }
        Ok(())
    }
}

/// Entity names, each numbered in the order first seen, found by their [`entity_hash`].
#[derive(Default)]
struct EntityNames {
    /// Entity numbers, by hash.
    table: HashTable<u32>,
    /// By entity number: its hash, and where its name ends in `names`.
    hashes: Vec<u64>,
    ends: Vec<usize>,
    names: String,
}

impl EntityNames {
    fn count(&self) -> u32 {
        self.hashes.len() as u32
    }

    fn name(&self, entity: u32) -> &str {
        let entity = entity as usize;
        let start = if entity == 0 {
            0
        } else {
            self.ends[entity - 1]
        };
        &self.names[start..self.ends[entity]]
    }

    /// Every entity's number, in the order of the entities' keys: a stream's entity keys
    /// ([`entity_prefix`]) are the name's length (two bytes, big-endian) then its bytes, so
    /// by (length, bytes), which this compares without building a key for each.
    fn in_key_order(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.count()).collect();
        order.sort_unstable_by(|&a, &b| {
            let (a, b) = (self.name(a), self.name(b));
            (a.len(), a.as_bytes()).cmp(&(b.len(), b.as_bytes()))
        });
        order
    }

    /// The number of the entity `name` (whose hash is `hash`), numbering it if it is new.
    fn number(&mut self, hash: u64, name: &str) -> u32 {
        let found = self.table.find(hash, |&entity| {
            self.hashes[entity as usize] == hash && self.name(entity) == name
        });
        if let Some(&entity) = found {
            return entity;
        }
        let entity = u32::try_from(self.hashes.len())
            .expect("a flush holds fewer events than 2^32 (FLUSH_EVENTS_MAX)");
        self.hashes.push(hash);
        self.names.push_str(name);
        self.ends.push(self.names.len());
        let hashes = &self.hashes;
        self.table
            .insert_unique(hash, entity, |&e| hashes[e as usize]);
        entity
    }
}

impl Owned {
    /// Apply routed events, in the order given.
    fn apply(&mut self, routed: &Routed<'_>, streams: &[Arc<StreamState>]) {
        for event in &routed.rows {
            let stream = event.stream as usize;
            if self.streams.len() <= stream {
                self.streams.resize_with(stream + 1, || None);
            }
            let columns = streams[stream].field_types.len();
            let owned = self.streams[stream].get_or_insert_with(|| OwnedStream::new(columns));
            let entity = owned.entities.number(event.entity_hash, event.entity);
            let cells = &routed.cells[event.cells..event.cells + columns];
            owned.push(entity, event.time_ms, event.lsn, cells);
        }
        self.events += routed.rows.len();
    }

    /// Write every owned entity's rows as chunks to a sorted run of the state store (for
    /// the caller to ingest) and drop them.
    fn persist(
        &mut self,
        inner: &Inner,
        streams: &[Arc<StreamState>],
    ) -> Result<Option<FinishedRun>> {
        // A run takes keys in order: streams by id (a key starts with it, big-endian), then
        // each stream's entities in key order (`for_each_entity`), then each entity's
        // chunks (`for_each_chunk`).
        let mut run = inner.state.sorted_run(Table::Events)?;
        let mut value = Vec::new();
        for (stream, owned) in streams.iter().zip(&mut self.streams) {
            let Some(owned) = owned.take() else {
                continue;
            };
            owned.for_each_entity(|name, rows, entity_rows| {
                for_each_chunk(stream, name, rows, entity_rows, |key, chunk| {
                    value.clear();
                    chunk.encode_into(&mut value);
                    Ok(run.put(&key, &value)?)
                })
            })?;
        }
        self.events = 0;
        Ok(run.finish()?)
    }
}

/// A replay in progress: what it applied since the last flush, and the decode threads'
/// caches.
#[derive(Default)]
struct Replay {
    applied: Applied,
    /// One per decode thread.
    interned: [InternCache; 2],
}

/// What a replay applied since its last flush: the entities of each parity, and the ids.
#[derive(Default)]
struct Applied {
    owners: [Owned; 2],
    ids: Vec<u128>,
}

impl Applied {
    /// What was applied, leaving room for as many ids in its place (the next flush's are
    /// about as many; a list that doubled its way there would copy itself).
    fn take(&mut self) -> Applied {
        let ids = Vec::with_capacity(self.ids.len());
        Applied {
            owners: std::mem::take(&mut self.owners),
            ids: std::mem::replace(&mut self.ids, ids),
        }
    }

    fn events(&self) -> usize {
        self.owners.iter().map(|owned| owned.events).sum()
    }
}

impl Inner {
    /// Apply every log record from `from` on, persisted (see the module documentation).
    /// Returns how many records were replayed.
    pub(super) fn replay_log(&self, from: Lsn) -> Result<u64> {
        let scan = self.log.scan(from)?;
        // One batch waits while the reader fills the next and the replay applies a third.
        let (full_sender, full) = std::sync::mpsc::sync_channel(1);
        let (free, free_receiver) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| read_batches(scan, full_sender, free_receiver));
            self.replay_batches(full, free)
        })
    }

    /// Apply the batches `full` brings (giving each back through `free`), flushing every
    /// [`flush_events`] events and at the end. A flush runs on a thread of its own while
    /// the next events are applied, and waits for the one before it: at most two flushes'
    /// events are held, one being applied and one being persisted.
    fn replay_batches(
        &self,
        full: Receiver<Result<RecordBatch>>,
        free: Sender<RecordBatch>,
    ) -> Result<u64> {
        let flush_events = flush_events(self.options.checkpoint_events);
        let mut replay = Replay::default();
        let mut count = 0u64;
        // One past the last record applied.
        let mut end = self.applied.end();
        std::thread::scope(|scope| {
            let mut flushing: Option<ScopedJoinHandle<'_, Result<()>>> = None;
            let finish = |flushing: &mut Option<ScopedJoinHandle<'_, Result<()>>>| {
                flushing.take().map_or(Ok(()), |flush| {
                    flush.join().expect("replay flusher panicked")
                })
            };
            for batch in full {
                let batch = batch?;
                if batch.is_other_entry() {
                    // A record that changes the catalog, which a flush commits: it is applied
                    // with no flush running.
                    finish(&mut flushing)?;
                }
                self.replay_batch(&mut replay, &batch)?;
                count += batch.records.len() as u64;
                let (last, _, _) = *batch.records.last().expect("batches are not empty");
                end = last + 1;
                // The reader may have finished: then it needs no batch back.
                let _ = free.send(batch);
                if replay.applied.events() >= flush_events {
                    finish(&mut flushing)?;
                    let applied = replay.applied.take();
                    flushing = Some(scope.spawn(move || self.flush_replayed(applied, end)));
                }
            }
            finish(&mut flushing)?;
            if end > self.applied.end() {
                self.flush_replayed(std::mem::take(&mut replay.applied), end)?;
            }
            Ok(count)
        })
    }

    /// Apply one batch of records, in log order.
    fn replay_batch(&self, replay: &mut Replay, batch: &RecordBatch) -> Result<()> {
        if batch.is_other_entry() {
            let (lsn, _, _) = batch.records[0];
            let entry = wire::decode_entry(batch.payload(0))
                .map_err(|source| Error::BadRecord { lsn, source })?;
            match entry {
                // Written in an unusual form, but an event: applied as one.
                LogEntryBorrowed::Event { .. } => {}
                LogEntryBorrowed::Definitions(definitions) => {
                    let mut definitions = definitions.clone();
                    for feature in &mut definitions.features {
                        feature.recanonicalize_filter()?;
                    }
                    let mut registry = self.registry.write();
                    if lsn > registry.catalog_lsn {
                        let plan = registry.catalog.plan(&definitions)?;
                        registry.add(&plan);
                        registry.catalog_lsn = lsn;
                    }
                    return Ok(());
                }
                LogEntryBorrowed::RemoveFeatures(names) => {
                    let mut registry = self.registry.write();
                    if lsn > registry.catalog_lsn {
                        registry.remove(&names);
                        registry.catalog_lsn = lsn;
                    }
                    return Ok(());
                }
            }
        }
        let streams = self.registry.read().streams.clone();
        let (bytes, records) = (&batch.bytes[..], &batch.records[..]);
        let (front, back) = records.split_at(records.len() / 2);
        let [front_interned, back_interned] = &mut replay.interned;
        let (front, back) = std::thread::scope(|scope| {
            let back = scope.spawn(|| Decoded::events(bytes, back, &streams, back_interned));
            let front = Decoded::events(bytes, front, &streams, front_interned);
            (front, back.join().expect("replay decoder panicked"))
        });
        let (front, back) = (front?, back?);
        let [even, odd] = &mut replay.applied.owners;
        std::thread::scope(|scope| {
            scope.spawn(|| {
                odd.apply(&front.by_parity[1], &streams);
                odd.apply(&back.by_parity[1], &streams);
            });
            even.apply(&front.by_parity[0], &streams);
            even.apply(&back.by_parity[0], &streams);
        });
        replay.applied.ids.extend_from_slice(&front.ids);
        replay.applied.ids.extend_from_slice(&back.ids);
        Ok(())
    }

    /// Persist what the replay applied since its last flush, every record below `end`: the
    /// rows of both owners and the ids, as sorted runs written on three threads and
    /// ingested, while a fourth adds the ids to the id set (nothing reads it during a
    /// replay); then the catalog and `applied_lsn` (`end - 1`) in one checkpoint commit.
    fn flush_replayed(&self, applied: Applied, end: Lsn) -> Result<()> {
        // Rows reflect log records: those must be durable before state is. Recovery synced
        // every record it found (a replay reads no other), so this returns at once; it
        // keeps the rule where the state is written.
        self.log.sync()?;
        let streams = self.registry.read().streams.clone();
        let Applied {
            owners: [mut even, mut odd],
            ids,
        } = applied;
        let (even, odd, ids) = (&mut even, &mut odd, &ids[..]);
        let (even_run, odd_run, ids_done) = std::thread::scope(|scope| {
            let odd_run = scope.spawn(|| odd.persist(self, &streams));
            let ids_done = scope.spawn(|| self.persist_replayed_ids(ids));
            scope.spawn(|| self.ingest.lock().insert_many(ids));
            let even_run = even.persist(self, &streams);
            let odd_run = odd_run.join().expect("replay writer panicked");
            (
                even_run,
                odd_run,
                ids_done.join().expect("replay id writer panicked"),
            )
        });
        ids_done?;
        let runs = [even_run?, odd_run?].into_iter().flatten().collect();
        self.state.ingest(Table::Events, runs)?;
        // The checkpoint's watermark: flushes run one at a time, in log order, and the
        // records applied since this one was handed over are not in it (nothing but a
        // flush marks a replayed record applied).
        self.applied.complete(self.applied.end(), end);
        assert_eq!(
            self.applied.end(),
            end,
            "replay flushes commit in log order"
        );
        self.checkpoint()
    }

    /// Persist the ids a replay applied since its last flush, as a sorted run of id chunks
    /// of [`REPLAY_ID_CHUNK_IDS`] ingested into the state store.
    fn persist_replayed_ids(&self, ids: &[u128]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut run = self.state.sorted_run(Table::Dedup)?;
        for chunk in ids.chunks(REPLAY_ID_CHUNK_IDS) {
            run.put(&self.new_id_chunk_key(), &pack_ids(chunk))?;
        }
        self.state
            .ingest(Table::Dedup, run.finish()?.into_iter().collect())
            .map_err(Error::from)
    }
}

/// Read every record of `scan` in batches (see [`RecordBatch`]) sent through `full`,
/// reusing those given back through `free`; stops at the end, at an error (sent), or when
/// nobody receives any more.
fn read_batches(
    mut scan: Scan,
    full: SyncSender<Result<RecordBatch>>,
    free: Receiver<RecordBatch>,
) {
    // A record that cannot join the batch being filled starts the next one.
    let mut held: Option<(Lsn, Vec<u8>)> = None;
    // The largest batch so far: a new one starts with room for as much, rather than
    // doubling its way there (copying itself, and touching twice the memory).
    let mut largest = (0, 0);
    loop {
        let mut batch = free.try_recv().unwrap_or_else(|_| RecordBatch {
            bytes: Vec::with_capacity(largest.0),
            records: Vec::with_capacity(largest.1),
        });
        batch.bytes.clear();
        batch.records.clear();
        if let Some((lsn, payload)) = held.take() {
            batch.bytes.extend_from_slice(&payload);
            batch.records.push((lsn, 0, payload.len()));
        }
        while batch.records.len() < BATCH_RECORDS && !batch.is_other_entry() {
            let record = match scan.next_record() {
                Ok(Some(record)) => record,
                Ok(None) => break,
                Err(e) => {
                    let _ = full.send(Err(e.into()));
                    return;
                }
            };
            if !batch.records.is_empty() && !wire::starts_as_event(record.payload) {
                held = Some((record.lsn, record.payload.to_vec()));
                break;
            }
            let start = batch.bytes.len();
            batch.bytes.extend_from_slice(record.payload);
            batch.records.push((record.lsn, start, batch.bytes.len()));
        }
        largest = (
            largest.0.max(batch.bytes.len()),
            largest.1.max(batch.records.len()),
        );
        if batch.records.is_empty() || full.send(Ok(batch)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::entity_prefix;
    use super::*;

    /// Names are told apart by their bytes, not their hash: names of one hash get numbers of
    /// their own.
    #[test]
    fn entity_names_are_numbered_by_name() {
        let mut names = EntityNames::default();
        let same_hash = 7;
        assert_eq!(names.number(same_hash, "a"), 0);
        assert_eq!(names.number(same_hash, "b"), 1);
        assert_eq!(names.number(entity_hash("c"), "c"), 2);
        assert_eq!(names.number(same_hash, "a"), 0);
        assert_eq!(names.number(same_hash, "b"), 1);
        assert_eq!(names.number(same_hash, ""), 3);
        assert_eq!(names.count(), 4);
        let all: Vec<&str> = (0..names.count()).map(|e| names.name(e)).collect();
        assert_eq!(all, ["a", "b", "c", ""]);
    }

    /// Entities come in the order of their keys, whatever their lengths and bytes.
    #[test]
    fn entity_names_come_in_key_order() {
        let mut names = EntityNames::default();
        let all = [
            "b", "ab", "abc", "", "z", "é", "aa", "a\u{0}", "zz", "Ab", "cust10", "cust9",
        ];
        for name in all {
            names.number(entity_hash(name), name);
        }
        let ordered: Vec<&str> = (names.in_key_order().into_iter())
            .map(|entity| names.name(entity))
            .collect();
        let mut by_key = all.to_vec();
        by_key.sort_by_key(|name| entity_prefix(3, name));
        assert_eq!(ordered, by_key);
    }

    /// The cache answers the stream's table's ids, and starts again past its bound.
    #[test]
    fn intern_cache_gives_the_tables_ids_within_its_bound() {
        let stream = StreamState::for_test(0, "string");
        let mut cache = InternCache::default();
        for _round in 0..2 {
            for i in 0..INTERN_CACHE_STRINGS_MAX + 10 {
                let s = format!("s{i}");
                let table = u64::from(stream.strings.intern(&s).0);
                assert_eq!(cache.id(0, &stream, &s), table, "{s}");
                assert!(cache.by_stream[0].len() <= INTERN_CACHE_STRINGS_MAX);
            }
        }
    }
}
