//! Appending: batch framing, rotation, group commit and poisoning.
//!
//! Invariants:
//! - a batch's frames are contiguous, entirely inside one segment, written with one
//!   `write_all_at` (in `Sync` mode, together with the rest of its group, by the syncer),
//!   and only its last frame has `batch_left == 0`;
//! - `Writer::buf` holds the frames not written yet and ends at `Writer::offset`; the
//!   readable view (`View::end_lsn`, `active_end`) covers exactly what was written;
//! - `Writer::durable_offset` only grows within a segment and is always at a batch boundary
//!   (it is captured under the writer lock, between batches); it is raised before the
//!   waiters of the fsync that made those bytes durable return, so that an appender's next
//!   frames say its acknowledged bytes are durable;
//! - after the first failed write or fsync nothing is written or acknowledged again;
//! - the syncer's fsyncs take tickets in the order they capture what they cover, and
//!   complete in ticket order: an fsync's success counts only once every earlier one has
//!   succeeded. Each lane fsyncs through a file handle of its own, so that a write-back
//!   error is reported to every lane's next fsync (Linux reports it once per open file
//!   description), never swallowed by one lane while another acknowledges.

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
    /// The ticket the next fsync of a syncer lane takes ([`SyncState::completed`]).
    pub(crate) next_ticket: u64,
    /// Where the active segment stood when appenders last woke the flusher for
    /// `LogOptions::writeback_bytes` (0: not since the segment began).
    pub(crate) writeback_asked: u64,
}

pub(crate) struct SyncState {
    /// One past the last LSN known durable.
    pub(crate) durable_end: Lsn,
    /// A leader (no syncer) is inside `fdatasync` now.
    syncing: bool,
    /// The highest end an appender has asked to be made durable (read by the syncer).
    requested: Lsn,
    /// The syncer serves `wait_durable` (Sync mode, while the log is open and no lane has
    /// failed); without it, waiters fsync as leaders.
    has_syncer: bool,
    /// Syncer lanes not exited yet; the last to exit clears `has_syncer`.
    lanes_alive: usize,
    /// Appenders that announced an append ([`crate::Log::announce_append`]) and have not
    /// finished it.
    announced: usize,
    /// Appenders that asked for durability since the syncer last began an fsync (they have
    /// written what they ask for).
    waiting: usize,
    /// A lane is gathering before it starts an fsync; no other lane starts meanwhile.
    gathering: bool,
    /// Lanes inside an fsync now.
    in_flight: usize,
    /// What the fsyncs begun so far were asked to cover: a request up to here needs no
    /// new fsync.
    started_end: Lsn,
    /// Tickets of lane fsyncs completed (they complete in ticket order).
    completed: u64,
}

impl SyncState {
    pub(crate) fn new(durable_end: Lsn) -> Self {
        Self {
            durable_end,
            syncing: false,
            requested: durable_end,
            has_syncer: false,
            lanes_alive: 0,
            announced: 0,
            waiting: 0,
            gathering: false,
            in_flight: 0,
            started_end: durable_end,
            completed: 0,
        }
    }

    /// Every appender that announced an append has written and asked for durability.
    fn gathered(&self) -> bool {
        self.waiting >= self.announced
    }

    /// Whether a lane should begin an fsync now: records were asked for that no fsync
    /// begun so far covers, a lane is free and none is gathering.
    fn fsync_wanted(&self, lanes: usize) -> bool {
        self.requested > self.started_end.max(self.durable_end)
            && self.in_flight < lanes
            && !self.gathering
    }

    /// Count one appender's request for everything below `end` and wake a lane that can
    /// serve it.
    fn request(&mut self, shared: &Shared, end: Lsn) {
        self.waiting += 1;
        self.requested = self.requested.max(end);
        if self.gathering {
            if self.gathered() {
                shared.sync_wanted.notify_all();
            }
        } else if self.fsync_wanted(shared.options.sync_lanes) {
            shared.sync_wanted.notify_one();
        }
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
        // A gathering lane may be waiting for this appender only.
        if state.gathering && state.gathered() {
            self.shared.sync_wanted.notify_all();
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
            ask_writeback(shared, w);
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

/// Wake the flusher if `LogOptions::writeback_bytes` of the active segment wait for an
/// fsync (and it was not woken for them already).
fn ask_writeback(shared: &Shared, w: &mut Writer) {
    let threshold = shared.options.writeback_bytes;
    let since = w.durable_offset.max(w.writeback_asked);
    if threshold > 0
        && w.offset - since >= threshold
        && let Some(flusher) = shared.flusher.get()
    {
        w.writeback_asked = w.offset;
        flusher.unpark();
    }
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

/// Ask the syncer, if there is one, to make every LSN below `end` durable; see
/// [`crate::Log::request_durable`].
pub(crate) fn request_durable(shared: &Shared, end: Lsn) {
    let mut state = shared.sync.lock();
    if state.has_syncer && state.durable_end < end {
        state.request(shared, end);
    }
}

/// Block until every LSN below `end` is durable, fsyncing as the group's leader if there is
/// no syncer and no fsync is under way. One fsync covers every batch written before it
/// started.
pub(crate) fn wait_durable(shared: &Shared, end: Lsn) -> Result<(), LogError> {
    wait(shared, end, false)
}

/// [`wait_durable`] for a caller that asked with [`request_durable`].
pub(crate) fn wait_requested(shared: &Shared, end: Lsn) -> Result<(), LogError> {
    wait(shared, end, true)
}

fn wait(shared: &Shared, end: Lsn, mut requested: bool) -> Result<(), LogError> {
    let mut state = shared.sync.lock();
    loop {
        if state.durable_end >= end {
            return Ok(());
        }
        shared.poison.check()?;
        if state.has_syncer {
            // The lanes fsync back to back while anything asked for is not covered; ask
            // (once) and wait.
            if !requested || state.requested < end {
                requested = true;
                state.request(shared, end);
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
    w.writeback_asked = 0;
    Ok(())
}

/// The syncer of `Durability::Sync`: `LogOptions::sync_lanes` threads (lanes) that fsync
/// whenever appenders asked for records no fsync begun so far covers, so that under load
/// the next fsync starts the moment records are written and covers everything written
/// meanwhile (group commit without a leader hand-off). With two lanes, records written
/// while one fsync runs get theirs at once instead of after it.
///
/// Before it starts an fsync while none is under way, a lane gathers: an fsync covers only
/// what was written before it began, so while fewer appenders have asked than have
/// announced an append ([`crate::Log::announce_append`]; every `Log::append` in `Sync`
/// mode does), it waits for the rest to write — at most `LogOptions::group_commit_gather_us`.
/// One appender alone never waits (it is the only one announced), and an appender that
/// announced and then does not write costs the others at most that bound once.
pub(crate) fn spawn_syncer(shared: &Arc<Shared>) -> Vec<JoinHandle<()>> {
    let lanes = shared.options.sync_lanes;
    {
        let mut state = shared.sync.lock();
        state.has_syncer = true;
        state.lanes_alive = lanes;
    }
    (0..lanes)
        .map(|lane| {
            let shared = Arc::clone(shared);
            std::thread::Builder::new()
                .name(format!("fsdb-log-sync-{lane}"))
                .spawn(move || run_lane(&shared))
                .expect("spawning a log syncer lane")
        })
        .collect()
}

/// What one lane's fsync covers: every record written before it began.
struct Covered {
    /// Its ticket: fsyncs complete in ticket order ([`SyncState::completed`]).
    ticket: u64,
    /// The segment it synced, and the bytes of it written.
    base: Lsn,
    offset: u64,
    /// One past the last LSN written.
    end: Lsn,
}

/// A lane's own handle on the active segment (see the module's invariants), opened again
/// when the segment changes.
type LaneFile = Option<(Lsn, Arc<dyn VfsFile>)>;

fn run_lane(shared: &Shared) {
    let lanes = shared.options.sync_lanes;
    let gather = Duration::from_micros(shared.options.group_commit_gather_us.into());
    let mut file: LaneFile = None;
    loop {
        {
            let mut state = shared.sync.lock();
            while !state.fsync_wanted(lanes) {
                if shared.closing.load(Ordering::Acquire) || !state.has_syncer {
                    return leave(shared, &mut state);
                }
                shared.sync_wanted.wait(&mut state);
            }
            if state.in_flight == 0 {
                state.gathering = true;
                let deadline = Instant::now() + gather;
                while !state.gathered()
                    && !shared.closing.load(Ordering::Acquire)
                    && !shared
                        .sync_wanted
                        .wait_until(&mut state, deadline)
                        .timed_out()
                {}
                state.gathering = false;
            }
            state.in_flight += 1;
            state.started_end = state.started_end.max(state.requested);
            state.waiting = 0;
        }
        let synced = sync_lane(shared, &mut file);
        let mut state = shared.sync.lock();
        state.in_flight -= 1;
        // Records asked for while every lane was busy: another lane may start now.
        if state.fsync_wanted(lanes) {
            shared.sync_wanted.notify_one();
        }
        let ok = match synced {
            Ok((covered, fsync)) => {
                while state.completed != covered.ticket {
                    shared.synced.wait(&mut state);
                }
                // An earlier fsync's failure poisoned the log: this one's success counts
                // for nothing.
                let ok = fsync.is_ok() && shared.poison.cause().is_none();
                if ok {
                    // Frames written from now on say these bytes are durable, before any
                    // waiter returns (lock order: the writer before `sync`).
                    drop(state);
                    let mut w = shared.writer.lock();
                    if w.base == covered.base {
                        w.durable_offset = w.durable_offset.max(covered.offset);
                    }
                    drop(w);
                    state = shared.sync.lock();
                    state.durable_end = state.durable_end.max(covered.end);
                }
                state.completed += 1;
                ok
            }
            Err(_) => false,
        };
        shared.synced.notify_all();
        if !ok {
            // Poisoned: waiters see it (they no longer wait for the syncer).
            state.has_syncer = false;
            return leave(shared, &mut state);
        }
    }
}

/// A lane exits; the last one leaves the waiters to fsync as leaders.
fn leave(shared: &Shared, state: &mut SyncState) {
    state.lanes_alive -= 1;
    if state.lanes_alive == 0 {
        state.has_syncer = false;
    }
    shared.synced.notify_all();
    shared.sync_wanted.notify_all();
}

/// Write what appenders left pending and take a ticket under the writer lock, then fsync
/// through the lane's own handle. `Err` if nothing was fsynced (the log is poisoned).
fn sync_lane(
    shared: &Shared,
    file: &mut LaneFile,
) -> Result<(Covered, Result<(), LogError>), LogError> {
    let (covered, handle) = {
        let mut w = shared.writer.lock();
        shared.poison.check()?;
        write_pending(shared, &mut w)?;
        if file.as_ref().is_none_or(|(base, _)| *base != w.base) {
            let path = child(&shared.dir, &format::segment_file_name(w.base));
            let opened = shared
                .vfs
                .open_file(&path, OpenMode::ReadWrite)
                .map_err(|source| poison(shared, "open", w.base, source))?;
            *file = Some((w.base, opened));
        }
        let ticket = w.next_ticket;
        w.next_ticket += 1;
        let handle = Arc::clone(&file.as_ref().expect("opened above").1);
        let covered = Covered {
            ticket,
            base: w.base,
            offset: w.offset,
            end: w.next_lsn,
        };
        (covered, handle)
    };
    shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
    let fsync = handle
        .sync_data()
        .map_err(|source| poison(shared, "fsync", covered.base, source));
    Ok((covered, fsync))
}

/// The background thread of `Durability::Interval` (and of `NoSync` with
/// `LogOptions::writeback_bytes`): fsync whatever was written, every `interval` and
/// whenever appenders wake it ([`ask_writeback`]), until the log closes or is poisoned.
pub(crate) fn spawn_flusher(shared: Arc<Shared>, interval: Option<Duration>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("fsdb-log-flusher".into())
        .spawn(move || {
            while !shared.closing.load(Ordering::Acquire) {
                match interval {
                    Some(interval) => std::thread::park_timeout(interval),
                    None => std::thread::park(),
                }
                let end = shared.view.read().end_lsn;
                if wait_durable(&shared, end).is_err() {
                    // Poisoned: appends report it; nothing more to do here.
                    return;
                }
            }
        })
        .expect("spawning the log flusher thread")
}
