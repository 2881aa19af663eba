//! Checkpoints: what the engine applied, written to the state store in one batch with
//! `applied_lsn` — each dirty entity's unpersisted rows as chunks keyed by
//! `stream · entity · first LSN`, the new accepted ids as one dedup chunk, the catalog if
//! it changed — and the background thread that runs them and then keeps the entities in
//! memory within the cache budget.
//!
//! A checkpoint removes rows from memory only after its commit, and only the rows it
//! wrote: appends go on while it runs, and applying is idempotent, so rows persisted past
//! the `applied_lsn` it commits are harmless (docs/ARCHITECTURE.md, invariants).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fsdb_storage::Lsn;
use fsdb_storage::state::Table;
use fsdb_storage::state::key::KeyBuf;

use super::stream::{EntitySlot, StreamState};
use super::{CATALOG_KEY, CATALOG_LSN_KEY, Inner, chunk, page};
use crate::error::{Error, Result};

/// An entity with unpersisted events, for the next checkpoint.
pub(super) struct Dirty {
    pub(super) stream: Arc<StreamState>,
    pub(super) name: Box<str>,
    pub(super) slot: EntitySlot,
}

/// `stream · entity · first LSN` — the key of a chunk of an entity's rows.
pub(super) fn chunk_key(stream: u32, entity: &str, first_lsn: Lsn) -> Vec<u8> {
    KeyBuf::with_capacity(4 + 2 + entity.len() + 8)
        .u32(stream)
        .bytes(entity.as_bytes())
        .u64(first_lsn)
        .into_vec()
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
pub(super) fn chunks_in_key_order(
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

/// A dedup chunk: accepted id hashes, 16 bytes each, little-endian.
pub(super) fn pack_ids(ids: &[u128]) -> Vec<u8> {
    // (A `flat_map` over the arrays cost ~70 instructions an id, this loop a few.)
    let mut packed = Vec::with_capacity(ids.len() * 16);
    for id in ids {
        packed.extend_from_slice(&id.to_le_bytes());
    }
    packed
}

pub(super) fn unpack_ids<'a>(
    key: &[u8],
    value: &'a [u8],
) -> Result<impl Iterator<Item = u128> + 'a> {
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
    /// The key of a new chunk of accepted ids (each chunk is written once).
    pub(super) fn new_id_chunk_key(&self) -> Vec<u8> {
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
    pub(super) fn evict(&self) {
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

    pub(super) fn run_checkpointer(&self) {
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
mod tests {
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
}
