//! Replaying the log at open: every record after the state's `applied_lsn`, applied and
//! persisted before the database serves anything.
//!
//! Nothing else touches entities while a database opens, so a replay owns the states it
//! builds, outside the shared entity maps and their locks. Records are read in batches on
//! a thread of their own; each batch of events goes through two steps on two threads:
//!
//! 1. **decode** — each thread decodes the heads of half of the batch's events, checks
//!    each one's values against its stream's fields where they lie in the record, without
//!    decoding them (a persisted row holds them as the record does:
//!    [`wire::values_as_put`]), and routes each event by the parity of its entity's name
//!    hash, in log order;
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
//! being persisted. The last flush, which nothing is applied beside, writes and ingests its
//! runs while the one before it finishes; commits keep log order. A crash between the
//! ingestions and a commit leaves rows and ids persisted past `applied_lsn`; the next open replays and persists them again, and
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

use super::checkpoint::{chunk_key, chunks_in_key_order, pack_ids};
use super::{Inner, StreamState, chunk, dedup_hash};
use crate::error::{Error, Result};
use crate::event::wire::{self, Entry, EventHead};
use crate::event::{LogEntryBorrowed, ValueBorrowed};

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
    /// The values of events whose records hold them in another form than a persisted row
    /// does, written in that form, back to back ([`RowValues::Rewritten`]).
    rewritten: Vec<u8>,
}

struct RoutedEvent<'a> {
    stream: u32,
    entity: &'a str,
    /// The entity's name hash ([`entity_hash`]).
    entity_hash: u64,
    time_ms: i64,
    lsn: Lsn,
    values: RowValues<'a>,
}

/// An event's values, as a persisted row holds them: the field count, then each value
/// (see [`wire::values_as_put`]).
enum RowValues<'a> {
    /// The record's own bytes: nearly every record.
    AsLogged(&'a [u8]),
    /// Written again in [`Routed::rewritten`].
    Rewritten(Range<usize>),
}

impl<'a> Routed<'a> {
    fn values<'b>(&'b self, event: &'b RoutedEvent<'a>) -> &'b [u8] {
        match &event.values {
            RowValues::AsLogged(values) => values,
            RowValues::Rewritten(range) => &self.rewritten[range.clone()],
        }
    }
}

/// What one decode thread made of its part of a batch.
#[derive(Default)]
struct Decoded<'a> {
    by_parity: [Routed<'a>; 2],
    /// Hashes of the events' ids.
    ids: Vec<u128>,
}

impl<'a> Decoded<'a> {
    /// Decode `records` of `bytes` (events: see [`RecordBatch`]), check them against their
    /// streams' fields, and route them.
    fn events(
        bytes: &'a [u8],
        records: &[(Lsn, usize, usize)],
        streams: &[Arc<StreamState>],
    ) -> Result<Decoded<'a>> {
        let mut decoded = Decoded::default();
        // Room for the usual split, so that the lists rarely grow (and copy themselves).
        let rows = records.len() / 2 + records.len() / 16 + 16;
        for routed in &mut decoded.by_parity {
            routed.rows.reserve(rows);
        }
        decoded.ids.reserve(records.len());
        // The values of a record the short path leaves.
        let mut values: Vec<ValueBorrowed<'a>> = Vec::new();
        for &(lsn, start, end) in records {
            let record = &bytes[start..end];
            // The short path: the head read by hand, and the values' bytes as they are,
            // when they are what a row holds (which checks them against the fields).
            let as_put = wire::decode_event_head(record).filter(|(head, written)| {
                let state = streams.get(head.stream as usize);
                state.is_some_and(|state| wire::values_as_put(written, &state.field_types))
            });
            let (head, as_logged) = match as_put {
                Some((head, written)) => (head, Some(written)),
                None => (decode_checked(record, lsn, streams, &mut values)?, None),
            };
            let entity_hash = entity_hash(head.entity);
            let routed = &mut decoded.by_parity[parity(entity_hash)];
            let values = match as_logged {
                Some(written) => RowValues::AsLogged(written),
                None => {
                    let start = routed.rewritten.len();
                    wire::put_borrowed_values(&mut routed.rewritten, &values);
                    RowValues::Rewritten(start..routed.rewritten.len())
                }
            };
            routed.rows.push(RoutedEvent {
                stream: head.stream,
                entity: head.entity,
                entity_hash,
                time_ms: head.time_ms,
                lsn,
                values,
            });
            if let Some(id) = head.id {
                decoded.ids.push(dedup_hash(head.stream, id));
            }
        }
        Ok(decoded)
    }
}

/// Decode an event record the short path of [`Decoded::events`] leaves (malformed, of
/// values not of their fields' types, or written in a longer form than serde's), its
/// values into `values`, and check them against its stream's fields.
fn decode_checked<'a>(
    record: &'a [u8],
    lsn: Lsn,
    streams: &[Arc<StreamState>],
    values: &mut Vec<ValueBorrowed<'a>>,
) -> Result<EventHead<'a>> {
    let entry = wire::decode_entry_into(record, values)
        .map_err(|source| Error::BadRecord { lsn, source })?;
    let Entry::Event(head) = entry else {
        unreachable!("a record that starts as an event is one, or does not decode")
    };
    let mismatch = |reason| Error::RecordMismatch { lsn, reason };
    let state = streams.get(head.stream as usize);
    let state = state.ok_or_else(|| mismatch("no such stream"))?;
    if values.len() != state.field_types.len() {
        return Err(mismatch("not as many values as its stream has fields"));
    }
    let mut typed = values.iter().zip(&state.field_types);
    if !typed.all(|(value, &field_type)| value.fits(field_type)) {
        return Err(mismatch("a value not of its field's type"));
    }
    Ok(head)
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
/// entity's page of unpersisted rows, which the flush sorts by (time, LSN) and writes as
/// chunks. Here every entity's rows are pushed onto the same blocks, in log order, each
/// beside its entity's number, and each row's values stay the bytes its record holds them
/// in, which are the bytes a chunk holds them in ([`chunk::encode_rows_as_put`]): the
/// flush groups the rows by entity, sorts each entity's, and copies them into chunks. The
/// same chunks, without a lookup of the entity's state or a write to the end of its page
/// at every event (cache misses, mostly, with thousands of entities), and without
/// decoding the values into cells and encoding them back.
#[derive(Default)]
struct OwnedStream {
    /// The rows, in blocks of [`BLOCK_ROWS`] (the last one filling): no block grows by
    /// copying the rows before it.
    blocks: Vec<RowBlock>,
    /// The entity of each row: its number in `entities`.
    row_entity: Vec<u32>,
    entities: EntityNames,
}

/// Rows per block of an [`OwnedStream`].
const BLOCK_ROWS: usize = 1 << 14;

/// Rows in log order: each one's time, LSN, and values as a chunk holds them, back to
/// back in `values`.
struct RowBlock {
    heads: Vec<RowHead>,
    values: Vec<u8>,
}

struct RowHead {
    time_ms: i64,
    lsn: Lsn,
    /// Where the row's values end in [`RowBlock::values`] (they start where the previous
    /// row's end).
    values_end: usize,
}

impl RowBlock {
    fn row(&self, row: usize) -> (i64, Lsn, &[u8]) {
        let head = &self.heads[row];
        let start = row
            .checked_sub(1)
            .map_or(0, |previous| self.heads[previous].values_end);
        (head.time_ms, head.lsn, &self.values[start..head.values_end])
    }
}

impl OwnedStream {
    /// What `apply_to` does to a partial state, for the entity `entity`: push the row.
    fn push(&mut self, entity: u32, time_ms: i64, lsn: Lsn, values: &[u8]) {
        if self
            .blocks
            .last()
            .is_none_or(|block| block.heads.len() == BLOCK_ROWS)
        {
            // As many value bytes as the last block took: most rows take about as many.
            let value_bytes = self.blocks.last().map_or(0, |block| block.values.len());
            self.blocks.push(RowBlock {
                heads: Vec::with_capacity(BLOCK_ROWS),
                values: Vec::with_capacity(value_bytes),
            });
        }
        let block = self.blocks.last_mut().expect("a block with room");
        block.values.extend_from_slice(values);
        block.heads.push(RowHead {
            time_ms,
            lsn,
            values_end: block.values.len(),
        });
        self.row_entity.push(entity);
    }

    /// Hand each entity's name and rows (time, LSN, values as a chunk holds them), sorted
    /// by (time, LSN), to `take`, entities in key order.
    fn for_each_entity(
        self,
        mut take: impl FnMut(&str, &[(i64, Lsn, &[u8])]) -> Result<()>,
    ) -> Result<()> {
        let OwnedStream {
            blocks,
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
        // four bytes a row, not of the rows.
        let mut next = starts.clone();
        let mut rows_by_place = vec![0u32; row_place.len()];
        for (row, &place) in row_place.iter().enumerate() {
            let at = &mut next[place as usize];
            rows_by_place[*at] = row as u32;
            *at += 1;
        }
        drop(row_place);
        // Each entity's rows gathered into one list, reused from entity to entity (it
        // stays in the cache), and sorted there.
        let mut rows: Vec<(i64, Lsn, &[u8])> = Vec::new();
        let mut late = Vec::new();
        for (place, &entity) in order.iter().enumerate() {
            rows.clear();
            rows.extend(
                rows_by_place[starts[place]..starts[place + 1]]
                    .iter()
                    .map(|&row| blocks[row as usize / BLOCK_ROWS].row(row as usize % BLOCK_ROWS)),
            );
            sort_mostly_in_order(&mut rows, &mut late, |&(time, lsn, _)| (time, lsn));
            take(entities.name(entity), &rows)?;
        }
        Ok(())
    }
}

/// Sort `rows` by `key`, in time linear in their number when all but a few are in order
/// already (an entity's rows in log order: only late events are out of time order). The
/// rows that are not below the largest before them keep their order, the others (`late`,
/// reused) are sorted aside and merged in from the back. Keys must be distinct (the sort
/// is not stable).
fn sort_mostly_in_order<T: Copy, K: Ord>(rows: &mut [T], late: &mut Vec<T>, key: impl Fn(&T) -> K) {
    late.clear();
    let mut kept = 0;
    for at in 0..rows.len() {
        let row = rows[at];
        if kept == 0 || key(&row) > key(&rows[kept - 1]) {
            rows[kept] = row;
            kept += 1;
        } else {
            late.push(row);
        }
    }
    if late.is_empty() {
        return;
    }
    late.sort_unstable_by_key(&key);
    // Merge, largest first, into the end of `rows` (its length is unchanged). The kept
    // rows not yet merged are `rows[..kept]`, and `slot - kept` is the number of late rows
    // left: a slot is written once its row has moved, and the last late row merged leaves
    // the rest of the kept rows where they are.
    let mut slot = rows.len();
    while let Some(&latest) = late.last() {
        slot -= 1;
        if kept > 0 && key(&rows[kept - 1]) > key(&latest) {
            kept -= 1;
            rows[slot] = rows[kept];
        } else {
            rows[slot] = latest;
            late.pop();
        }
    }
    debug_assert_eq!(slot, kept);
}

/// Entity names, each numbered in the order first seen, found by their [`entity_hash`].
#[derive(Default)]
struct EntityNames {
    /// Entity numbers, by hash.
    table: HashTable<u32>,
    /// By entity number: its hash and where its name lies in `names` (one read finds both:
    /// a lookup of one of many entities misses the cache at each).
    entries: Vec<NameEntry>,
    names: String,
}

struct NameEntry {
    hash: u64,
    name: Range<usize>,
}

impl EntityNames {
    fn count(&self) -> u32 {
        self.entries.len() as u32
    }

    #[inline]
    fn name(&self, entity: u32) -> &str {
        &self.names[self.entries[entity as usize].name.clone()]
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
            let entry = &self.entries[entity as usize];
            entry.hash == hash && &self.names[entry.name.clone()] == name
        });
        if let Some(&entity) = found {
            return entity;
        }
        let entity = u32::try_from(self.entries.len())
            .expect("a flush holds fewer events than 2^32 (FLUSH_EVENTS_MAX)");
        let start = self.names.len();
        self.names.push_str(name);
        self.entries.push(NameEntry {
            hash,
            name: start..self.names.len(),
        });
        let entries = &self.entries;
        self.table
            .insert_unique(hash, entity, |&e| entries[e as usize].hash);
        entity
    }
}

impl Owned {
    /// Apply routed events, in the order given.
    fn apply(&mut self, routed: &Routed<'_>) {
        for event in &routed.rows {
            let stream = event.stream as usize;
            if self.streams.len() <= stream {
                self.streams.resize_with(stream + 1, || None);
            }
            let owned = self.streams[stream].get_or_insert_with(OwnedStream::default);
            let entity = owned.entities.number(event.entity_hash, event.entity);
            owned.push(entity, event.time_ms, event.lsn, routed.values(event));
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
        // chunks in key order (`chunks_in_key_order`).
        let mut run = inner.state.sorted_run(Table::Events)?;
        let mut value = Vec::new();
        for (stream, owned) in streams.iter().zip(&mut self.streams) {
            let Some(owned) = owned.take() else {
                continue;
            };
            owned.for_each_entity(|name, rows| {
                for (first, range) in chunks_in_key_order(0..rows.len(), |row| rows[row].1) {
                    value.clear();
                    chunk::encode_rows_as_put(&mut value, rows[range].iter().copied());
                    run.put(&chunk_key(stream.id, name, first), &value)?;
                }
                Ok(())
            })?;
        }
        self.events = 0;
        Ok(run.finish()?)
    }
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
        let mut applied = Applied::default();
        let mut count = 0u64;
        // One past the last record applied, and one past the last one a flush took.
        let mut end = self.applied.end();
        let mut flushed_end = end;
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
                self.replay_batch(&mut applied, &batch)?;
                count += batch.records.len() as u64;
                let (last, _, _) = *batch.records.last().expect("batches are not empty");
                end = last + 1;
                // The reader may have finished: then it needs no batch back.
                let _ = free.send(batch);
                if applied.events() >= flush_events {
                    finish(&mut flushing)?;
                    let flushed = applied.take();
                    flushed_end = end;
                    flushing = Some(scope.spawn(move || self.flush_replayed(flushed, end)));
                }
            }
            // The last flush, which nothing is applied beside: its runs are written while
            // the one before it finishes (no more events come, so no more than two flushes'
            // are held either way), and it commits after it.
            let last = (end > flushed_end).then(|| {
                let last = std::mem::take(&mut applied);
                scope.spawn(|| self.persist_replayed(last))
            });
            finish(&mut flushing)?;
            if let Some(last) = last {
                last.join().expect("replay flusher panicked")?;
                self.commit_replayed(end)?;
            }
            Ok(count)
        })
    }

    /// Apply one batch of records, in log order.
    fn replay_batch(&self, applied: &mut Applied, batch: &RecordBatch) -> Result<()> {
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
        let (front, back) = std::thread::scope(|scope| {
            let back = scope.spawn(|| Decoded::events(bytes, back, &streams));
            let front = Decoded::events(bytes, front, &streams);
            (front, back.join().expect("replay decoder panicked"))
        });
        let (front, back) = (front?, back?);
        let [even, odd] = &mut applied.owners;
        std::thread::scope(|scope| {
            scope.spawn(|| {
                odd.apply(&front.by_parity[1]);
                odd.apply(&back.by_parity[1]);
            });
            even.apply(&front.by_parity[0]);
            even.apply(&back.by_parity[0]);
        });
        applied.ids.extend_from_slice(&front.ids);
        applied.ids.extend_from_slice(&back.ids);
        Ok(())
    }

    /// Persist what the replay applied since its last flush, every record below `end`, and
    /// commit it ([`Inner::persist_replayed`], [`Inner::commit_replayed`]).
    fn flush_replayed(&self, applied: Applied, end: Lsn) -> Result<()> {
        self.persist_replayed(applied)?;
        self.commit_replayed(end)
    }

    /// Persist what the replay applied since a flush: the rows of both owners and the
    /// ids, as sorted runs written on three threads and ingested, while a fourth adds the
    /// ids to the id set (nothing reads it during a replay). Two may run at once (their
    /// runs hold different keys); what they persist counts only once committed.
    fn persist_replayed(&self, applied: Applied) -> Result<()> {
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
        Ok(self.state.ingest(Table::Events, runs)?)
    }

    /// Commit what the flushes persisted, every record below `end`: the catalog and
    /// `applied_lsn` (`end - 1`) in one checkpoint commit.
    fn commit_replayed(&self, end: Lsn) -> Result<()> {
        // The checkpoint's watermark: flushes commit one at a time, in log order, and the
        // records applied since this one was handed over are not in it (nothing but a
        // flush's commit marks a replayed record applied).
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
    use super::super::stream::entity_prefix;
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

    proptest::proptest! {
        /// The sort of rows mostly in order sorts any rows, in order or not.
        #[test]
        fn rows_mostly_in_order_sort(
            keys in proptest::collection::hash_set(0u16..2000, 0..300),
            moves in proptest::collection::vec((0usize..300, 0usize..300), 0..40),
            ordered in proptest::bool::ANY,
        ) {
            let mut rows: Vec<u16> = keys.into_iter().collect();
            if ordered {
                rows.sort_unstable();
            }
            for (from, to) in moves {
                if from < rows.len() && to < rows.len() {
                    let row = rows.remove(from);
                    rows.insert(to, row);
                }
            }
            let mut expected = rows.clone();
            expected.sort_unstable();
            let mut late = vec![7];
            sort_mostly_in_order(&mut rows, &mut late, |&row| row);
            proptest::prop_assert_eq!(rows, expected);
        }
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
}
