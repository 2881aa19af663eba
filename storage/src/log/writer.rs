//! Appending: batch framing, rotation, group commit and poisoning.
//!
//! Invariants:
//! - a batch's frames are contiguous, entirely inside one segment, written with one
//!   `write_all_at` (in `Sync` mode, together with the rest of its group, by the syncer),
//!   and only its last frame has `batch_left == 0`;
//! - `Writer::buf` holds the frames not written yet and ends at `Writer::offset`; the
//!   readable view (`View::end_lsn`, `active_end`) covers exactly what was written;
//! - `Writer::durable_offset` only grows within a segment and is always at a batch boundary
//!   (it is captured under the writer lock, between batches);
//! - after the first failed write or fsync nothing is written or acknowledged again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::format::{
    self, FRAME_HEADER_BYTES, FrameHeader, HEADER_BYTES, SegmentHeader, TRAILER_BYTES, Trailer,
};
use super::{
    Appended, Durability, LogError, LogOptions, Lsn, Position, Segment, SegmentState, Shared,
};
use crate::io::{OpenMode, VfsFile, child};

pub(crate) struct Writer {
    pub(crate) file: Arc<dyn VfsFile>,
    /// Base LSN of the active segment.
    pub(crate) base: Lsn,
    /// Where the next frame goes.
    pub(crate) offset: u64,
    pub(crate) next_lsn: Lsn,
    /// Bytes of the active segment covered by a completed fsync.
    pub(crate) durable_offset: u64,
    /// Frames encoded but not written yet, ending at `offset`. In `Sync` mode appenders only
    /// encode here and the syncer writes the whole group with one `pwrite` right before
    /// its fsync ([`write_pending`]); in the other modes each batch is written at once and
    /// this is empty between batches.
    pub(crate) buf: Vec<u8>,
}

pub(crate) struct SyncState {
    /// One past the last LSN known durable.
    pub(crate) durable_end: Lsn,
    /// A leader is inside `fdatasync` now.
    syncing: bool,
    /// The highest end an appender is waiting for (read by the syncer thread).
    requested: Lsn,
    /// A syncer thread serves `wait_durable` (Sync mode, while the log is open).
    pub(crate) has_syncer: bool,
    /// Appenders that announced an append ([`crate::Log::announce_append`]) and have not
    /// finished it.
    announced: usize,
    /// Waiters that registered since the syncer last began an fsync.
    waiting: usize,
}

impl SyncState {
    pub(crate) fn new(durable_end: Lsn) -> Self {
        Self {
            durable_end,
            syncing: false,
            requested: durable_end,
            has_syncer: false,
            announced: 0,
            waiting: 0,
        }
    }

    /// Every appender that announced an append waits for durability now.
    fn gathered(&self) -> bool {
        self.waiting >= self.announced
    }
}

/// An appender's announcement that it is about to write and wait for durability; see
/// [`crate::Log::announce_append`]. Dropping it ends the announcement.
#[must_use = "the announcement ends when this is dropped"]
pub struct Announced {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Announced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announced").finish_non_exhaustive()
    }
}

impl Announced {
    pub(crate) fn new(shared: &Arc<Shared>) -> Self {
        shared.sync.lock().announced += 1;
        Self {
            shared: Arc::clone(shared),
        }
    }
}

impl Drop for Announced {
    fn drop(&mut self) {
        let mut state = self.shared.sync.lock();
        state.announced -= 1;
        // A gathering syncer may be waiting for this appender only.
        if !state.syncing && state.waiting > 0 && state.gathered() {
            self.shared.sync_wanted.notify_one();
        }
    }
}

/// Check a batch against the limits (`LogOptions`); returns its size in bytes, frames
/// included. What it refuses, [`write`] refuses without changing anything.
pub(crate) fn check_batch<P: AsRef<[u8]>>(
    options: &LogOptions,
    payloads: &[P],
) -> Result<u64, LogError> {
    let mut batch_bytes = 0u64;
    for (index, payload) in payloads.iter().enumerate() {
        let len = payload.as_ref().len();
        if len == 0 {
            return Err(LogError::EmptyRecord {
                index,
                max: options.record_bytes_max,
            });
        }
        if len > options.record_bytes_max as usize {
            return Err(LogError::RecordTooLarge {
                index,
                len,
                max: options.record_bytes_max,
            });
        }
        batch_bytes += (FRAME_HEADER_BYTES + len) as u64;
    }
    if payloads.len() > options.batch_records_max || batch_bytes > options.batch_bytes_max {
        return Err(LogError::BatchTooLarge {
            records: payloads.len(),
            bytes: batch_bytes,
            records_max: options.batch_records_max,
            bytes_max: options.batch_bytes_max,
        });
    }
    Ok(batch_bytes)
}

pub(crate) fn write<P: AsRef<[u8]>>(shared: &Shared, payloads: &[P]) -> Result<Appended, LogError> {
    let options = &shared.options;
    let batch_bytes = check_batch(options, payloads)?;
    let appended = {
        let mut guard = shared.writer.lock();
        let w = &mut *guard;
        shared.poison.check()?;
        if payloads.is_empty() {
            return Ok(Appended {
                first_lsn: w.next_lsn,
                positions: Vec::new(),
            });
        }
        let segment_full =
            w.offset + batch_bytes + TRAILER_BYTES as u64 > options.segment_bytes_max;
        if segment_full && w.offset > HEADER_BYTES as u64 {
            rotate(shared, w)?;
        }
        let deferred = options.durability == Durability::Sync;
        debug_assert!(deferred || w.buf.is_empty());
        let batch_start = w.buf.len();
        let first_lsn = w.next_lsn;
        let mut positions = Vec::with_capacity(payloads.len());
        let durable = u32::try_from(w.durable_offset).expect("segments are below 4 GiB");
        for (i, payload) in payloads.iter().enumerate() {
            let payload = payload.as_ref();
            positions.push(Position {
                segment: w.base,
                offset: w.offset + (w.buf.len() - batch_start) as u64,
            });
            let header = FrameHeader {
                len: payload.len() as u32,
                lsn: first_lsn + i as Lsn,
                durable,
                batch_left: (payloads.len() - 1 - i) as u32,
            };
            format::encode_frame(&mut w.buf, header, payload);
        }
        debug_assert_eq!((w.buf.len() - batch_start) as u64, batch_bytes);
        w.offset += batch_bytes;
        w.next_lsn += payloads.len() as Lsn;
        if !deferred {
            write_pending(shared, w)?;
        }
        shared.stats.appends.fetch_add(1, Ordering::Relaxed);
        shared
            .stats
            .records
            .fetch_add(payloads.len() as u64, Ordering::Relaxed);
        Appended {
            first_lsn,
            positions,
        }
    };
    Ok(appended)
}

/// Poison the writer after a failed `op` on the segment based at `base`; returns the error
/// the caller reports.
fn poison(shared: &Shared, op: &'static str, base: Lsn, source: std::io::Error) -> LogError {
    let path = child(&shared.dir, &format::segment_file_name(base));
    shared
        .poison
        .set(format!("{op} of {} failed: {source}", path.display()));
    LogError::Io { op, path, source }
}

/// Write the frames waiting in `w.buf` (they end at `w.offset`) with one `pwrite` and make
/// them readable. A failure poisons the writer: the frames were never acknowledged.
fn write_pending(shared: &Shared, w: &mut Writer) -> Result<(), LogError> {
    if w.buf.is_empty() {
        return Ok(());
    }
    let at = w.offset - w.buf.len() as u64;
    if let Err(source) = w.file.write_all_at(&w.buf, at) {
        // Forget the unwritten frames: what was appended is again what is readable.
        w.buf.clear();
        w.offset = at;
        w.next_lsn = shared.view.read().end_lsn;
        return Err(poison(shared, "write", w.base, source));
    }
    w.buf.clear();
    let mut view = shared.view.write();
    view.end_lsn = w.next_lsn;
    view.active_end = w.offset;
    Ok(())
}

/// Block until every LSN below `end` is durable, fsyncing as the group's leader if no
/// fsync is under way. One fsync covers every batch written before it started.
pub(crate) fn wait_durable(shared: &Shared, end: Lsn) -> Result<(), LogError> {
    let mut state = shared.sync.lock();
    let mut registered = false;
    loop {
        if state.durable_end >= end {
            return Ok(());
        }
        shared.poison.check()?;
        if state.has_syncer {
            // The syncer fsyncs back to back while anything is waiting; ask and wait.
            let idle = state.requested <= state.durable_end;
            if !registered {
                registered = true;
                state.waiting += 1;
            }
            state.requested = state.requested.max(end);
            // Wake the syncer when it sleeps for want of work, or when it gathers and
            // everyone announced now waits; mid-fsync it looks again by itself.
            if !state.syncing && (idle || state.gathered()) {
                shared.sync_wanted.notify_one();
            }
            shared.synced.wait(&mut state);
            continue;
        }
        if state.syncing {
            shared.synced.wait(&mut state);
            continue;
        }
        state.syncing = true;
        drop(state);
        let result = sync_active(shared);
        state = shared.sync.lock();
        state.syncing = false;
        if let Ok(synced_end) = result {
            state.durable_end = state.durable_end.max(synced_end);
        }
        shared.synced.notify_all();
        result?;
    }
}

/// Write what appenders left pending, fsync the active segment; returns the LSN end it
/// made durable.
fn sync_active(shared: &Shared) -> Result<Lsn, LogError> {
    let (file, base, offset, end) = {
        let mut w = shared.writer.lock();
        write_pending(shared, &mut w)?;
        (Arc::clone(&w.file), w.base, w.offset, w.next_lsn)
    };
    shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
    if let Err(source) = file.sync_data() {
        return Err(poison(shared, "fsync", base, source));
    }
    let mut w = shared.writer.lock();
    if w.base == base {
        w.durable_offset = w.durable_offset.max(offset);
    }
    Ok(end)
}

/// Seal the active segment (trailer, fsync) and start the next one (header, fsync, directory
/// fsync). Any failure poisons the writer.
fn rotate(shared: &Shared, w: &mut Writer) -> Result<(), LogError> {
    let old_path = child(&shared.dir, &format::segment_file_name(w.base));
    let new_base = w.next_lsn;
    let new_path = child(&shared.dir, &format::segment_file_name(new_base));
    let fail = |op: &'static str, path: &std::path::Path, source: std::io::Error| {
        shared
            .poison
            .set(format!("{op} of {} failed: {source}", path.display()));
        LogError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    write_pending(shared, w)?;
    let trailer = format::encode_trailer(Trailer {
        next_lsn: new_base,
        records_end: w.offset,
    });
    w.file
        .write_all_at(&trailer, w.offset)
        .map_err(|e| fail("write", &old_path, e))?;
    w.file
        .sync_data()
        .map_err(|e| fail("fsync", &old_path, e))?;
    let records_end = w.offset;

    let file = shared
        .vfs
        .open_file(&new_path, OpenMode::CreateNew)
        .map_err(|e| fail("create", &new_path, e))?;
    let header = format::encode_header(SegmentHeader { base_lsn: new_base });
    file.write_all_at(&header, 0)
        .map_err(|e| fail("write", &new_path, e))?;
    file.sync_data().map_err(|e| fail("fsync", &new_path, e))?;
    shared
        .vfs
        .sync_dir(&shared.dir)
        .map_err(|e| fail("fsync directory", &shared.dir, e))?;

    {
        let mut sync = shared.sync.lock();
        sync.durable_end = sync.durable_end.max(new_base);
        shared.synced.notify_all();
    }
    {
        let mut view = shared.view.write();
        let last = view.segments.len() - 1;
        view.segments[last] = Arc::new(Segment {
            base: w.base,
            path: old_path,
            state: SegmentState::Sealed {
                next_lsn: new_base,
                records_end,
                map: Default::default(),
            },
        });
        view.segments.push(Arc::new(Segment {
            base: new_base,
            path: new_path,
            state: SegmentState::Active {
                file: Arc::clone(&file),
            },
        }));
        view.active_end = HEADER_BYTES as u64;
    }
    w.file = file;
    w.base = new_base;
    w.offset = HEADER_BYTES as u64;
    w.durable_offset = HEADER_BYTES as u64;
    Ok(())
}

/// The syncer of `Durability::Sync`: fsync whenever an appender waits for records that are
/// not durable yet, back to back under load, so that the next fsync starts the moment the
/// previous one ends and covers everything written meanwhile (group commit without a
/// leader hand-off).
///
/// Before it starts an fsync, the syncer gathers: an fsync covers only what was written
/// before it began, so while fewer appenders wait than have announced an append
/// ([`crate::Log::announce_append`]; every `Log::append` in `Sync` mode does), it waits for
/// the rest to write — at most `LogOptions::group_commit_gather_us`. One appender alone
/// never waits (it is the only one announced), and an appender that announced and then
/// does not write costs the others at most that bound once.
pub(crate) fn spawn_syncer(shared: Arc<Shared>) -> JoinHandle<()> {
    let gather = Duration::from_micros(shared.options.group_commit_gather_us.into());
    shared.sync.lock().has_syncer = true;
    std::thread::Builder::new()
        .name("fsdb-log-syncer".into())
        .spawn(move || {
            loop {
                {
                    let mut state = shared.sync.lock();
                    while state.requested <= state.durable_end {
                        if shared.closing.load(Ordering::Acquire) {
                            state.has_syncer = false;
                            shared.synced.notify_all();
                            return;
                        }
                        shared.sync_wanted.wait(&mut state);
                    }
                    let deadline = Instant::now() + gather;
                    while !state.gathered()
                        && !shared.closing.load(Ordering::Acquire)
                        && !shared
                            .sync_wanted
                            .wait_until(&mut state, deadline)
                            .timed_out()
                    {}
                    state.syncing = true;
                    state.waiting = 0;
                }
                let result = sync_active(&shared);
                let mut state = shared.sync.lock();
                state.syncing = false;
                let failed = result.is_err();
                if let Ok(synced_end) = result {
                    state.durable_end = state.durable_end.max(synced_end);
                }
                if failed {
                    // Poisoned: waiters see it; later waits fall back to the leader path,
                    // which reports the poison.
                    state.has_syncer = false;
                }
                shared.synced.notify_all();
                if failed {
                    return;
                }
            }
        })
        .expect("spawning the log syncer thread")
}

/// The background thread of `Durability::Interval`: fsync whatever was written, every
/// `interval_ms`, until the log closes or is poisoned.
pub(crate) fn spawn_flusher(shared: Arc<Shared>, interval_ms: u64) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("fsdb-log-flusher".into())
        .spawn(move || {
            while !shared.closing.load(Ordering::Acquire) {
                std::thread::park_timeout(Duration::from_millis(interval_ms));
                let end = shared.view.read().end_lsn;
                if wait_durable(&shared, end).is_err() {
                    // Poisoned: appends report it; nothing more to do here.
                    return;
                }
            }
        })
        .expect("spawning the log flusher thread")
}
