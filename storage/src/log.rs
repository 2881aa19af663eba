//! The append-only log: segments of checksummed record frames, durable before `append`
//! returns, readable from any LSN or by position.
//!
//! Every record gets a log sequence number (LSN); LSNs start at 1 and are dense. A batch
//! is atomic across crashes: recovery keeps whole batches only. See docs/format.md for the
//! bytes and the recovery rules.
//!
//! Concurrency: any number of threads may append and read. Appends are serialised on the
//! writer lock for the `pwrite`; the `fdatasync` that makes them durable is shared by every
//! appender waiting at that moment (group commit), and in `Sync` mode up to
//! `LogOptions::sync_lanes` fsyncs run at once, each through a file handle of its own.
//! Lock order: `writer` before `sync`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::io::{DirError, DirLock, FileBytes, OsVfs, Vfs, VfsFile, create_dir_durably, sync_name};

pub mod format;
mod reader;
mod recovery;
mod writer;

pub use format::{FormatError, RECORD_BYTES_HARD_MAX};
pub use reader::{OwnedRecord, Record, Scan};
pub use recovery::{DAMAGED_DIR, RecoveryReport, Repair, Truncation};
pub use writer::Announced;

/// A log sequence number. The first record of a log has LSN 1.
pub type Lsn = u64;

/// Where a record's frame starts: the segment (named by its base LSN) and the byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub segment: Lsn,
    pub offset: u64,
}

/// When `append` returns relative to `fdatasync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `append` returns once its records are fsynced; concurrent appenders share one fsync.
    Sync,
    /// `append` returns after the write; a background thread fsyncs every `interval_ms`
    /// (and every [`LogOptions::writeback_bytes`] written). A crash loses at most the last
    /// interval.
    Interval { interval_ms: u64 },
    /// No fsync for an append: only when sealing a segment, on close, and in the
    /// background every [`LogOptions::writeback_bytes`] written. For bulk loads and tests.
    NoSync,
}

/// Configuration of a log. Every limit is named with its unit.
#[derive(Clone, Debug)]
pub struct LogOptions {
    pub durability: Durability,
    /// Rotate to a new segment before a batch that would make the segment larger than this.
    /// A batch larger than a segment gets a segment of its own. Range 4 KiB ..= 1 GiB.
    pub segment_bytes_max: u64,
    /// The largest record payload. At most [`RECORD_BYTES_HARD_MAX`].
    pub record_bytes_max: u32,
    /// The most records one `append` may carry.
    pub batch_records_max: usize,
    /// The most bytes (frames included) one `append` may carry. At most 1 GiB.
    pub batch_bytes_max: u64,
    /// Instead of refusing to open a damaged log, cut it at the first bad record after
    /// moving the damaged bytes and every later segment into `damaged/`.
    pub repair: bool,
    /// The caller knows (e.g. from state it committed) that every record with an LSN
    /// below this was durable. Recovery refuses to truncate any of them. 0: no knowledge.
    pub durable_lsn_hint: Lsn,
    /// `Sync` only: how long the syncer may wait, in microseconds, for appenders that
    /// announced an append to write before it starts an fsync (group commit; see
    /// [`Log::announce_append`]). At most [`GROUP_COMMIT_GATHER_US_MAX`]; 0 never waits.
    /// The syncer gathers only when no other fsync is under way.
    pub group_commit_gather_us: u32,
    /// `Sync` only: how many fsyncs may be under way at once, 1 to [`SYNC_LANES_MAX`]. With
    /// more than one, records written while an fsync runs need not wait for it to end
    /// before theirs starts: the next lane fsyncs them at once (two overlapping
    /// `fdatasync`s of one file take little longer than one). That shortens the wait of
    /// appenders that do other work between their appends (the engine uses 2); appenders
    /// that only append lose some grouping (default 1; docs/benchmarks.md).
    pub sync_lanes: usize,
    /// `NoSync` and `Interval` only: once this many bytes of the active segment are written
    /// and not fsynced, a background thread fsyncs them (RocksDB's `wal_bytes_per_sync`).
    /// Without it the dirty pages pile up until the segment is sealed, whose fsync runs
    /// under the writer lock and stops every appender meanwhile (~40 ms for 64 MiB here).
    /// It makes records durable sooner; it promises nothing. 0: off; else at least
    /// [`WRITEBACK_BYTES_MIN`]. Default 2 MiB.
    pub writeback_bytes: u64,
}

pub const SEGMENT_BYTES_MIN: u64 = 4 << 10;
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;
pub const BATCH_BYTES_MAX: u64 = 1 << 30;
/// The longest group-commit gathering any configuration may ask for: 100 ms.
pub const GROUP_COMMIT_GATHER_US_MAX: u32 = 100_000;
/// The most fsyncs [`LogOptions::sync_lanes`] may let run at once.
pub const SYNC_LANES_MAX: usize = 4;
/// The smallest non-zero [`LogOptions::writeback_bytes`]: smaller, the flusher would fsync
/// about as often as `Sync` mode does (a batch of 1,000 small records is ~100 KiB), the
/// cost `NoSync` and `Interval` exist to avoid.
pub const WRITEBACK_BYTES_MIN: u64 = 64 << 10;

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Sync,
            segment_bytes_max: 64 << 20,
            record_bytes_max: 1 << 20,
            batch_records_max: 1_000_000,
            batch_bytes_max: 256 << 20,
            repair: false,
            durable_lsn_hint: 0,
            // About one small fdatasync on the development machine (130–190 µs): the
            // most a gathered fsync can add to an appender's wait.
            group_commit_gather_us: 200,
            // Appenders that only append batch best with one: each fsync covers more.
            sync_lanes: 1,
            // The seal's fsync of a 64 MiB segment: ~40 ms with none, ~8 ms with 8 MiB,
            // ~3 ms with 2 MiB (and +5% bulk ingest; docs/benchmarks.md).
            writeback_bytes: 2 << 20,
        }
    }
}

/// What went wrong, with the file and byte offset wherever bytes are involved.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("log corrupt: {segment} at byte {offset}: {kind}")]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        kind: CorruptKind,
    },
    #[error("the log writer is poisoned by an earlier failure ({cause}); reopen the log")]
    Poisoned { cause: String },
    #[error("the log directory {dir} is locked by another process")]
    Locked { dir: PathBuf },
    #[error("record {index} of the batch is empty; records must have 1 to {max} bytes")]
    EmptyRecord { index: usize, max: u32 },
    #[error("record {index} of the batch has {len} bytes; the limit is {max}")]
    RecordTooLarge { index: usize, len: usize, max: u32 },
    #[error(
        "batch of {records} records and {bytes} bytes exceeds the limits ({records_max} records, {bytes_max} bytes)"
    )]
    BatchTooLarge {
        records: usize,
        bytes: u64,
        records_max: usize,
        bytes_max: u64,
    },
    #[error("LSN {lsn} is outside the log ({first}..{end})")]
    LsnOutOfRange { lsn: Lsn, first: Lsn, end: Lsn },
    #[error("no record starts at segment {} offset {}", .position.segment, .position.offset)]
    BadPosition { position: Position },
    #[error("invalid log options: {0}")]
    InvalidOptions(String),
}

impl From<DirError> for LogError {
    fn from(e: DirError) -> LogError {
        LogError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    }
}

/// The ways bytes of a log can be wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CorruptKind {
    #[error("segment header: {0}")]
    Header(FormatError),
    #[error("segment header names base LSN {found}, expected {expected}")]
    BaseMismatch { expected: Lsn, found: Lsn },
    #[error("seal trailer: {0}")]
    Trailer(FormatError),
    #[error(
        "seal trailer says the next segment starts at LSN {found}, but it starts at {expected}"
    )]
    Gap { expected: Lsn, found: Lsn },
    #[error(
        "seal trailer says records end at {found}, but the file has {expected} bytes of records"
    )]
    TrailerEnd { expected: u64, found: u64 },
    #[error("record: {0}")]
    Record(FormatError),
    #[error("record has LSN {found}, expected {expected}")]
    LsnMismatch { expected: Lsn, found: Lsn },
    #[error(
        "the tail would lose LSN {first_lost}, but LSNs below {durable_hint} are known durable"
    )]
    DurableHintViolated { first_lost: Lsn, durable_hint: Lsn },
    #[error("segment ends inside a batch")]
    IncompleteBatch,
}

/// What `append` returns: the LSNs and positions of the records, in batch order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    pub first_lsn: Lsn,
    pub positions: Vec<Position>,
}

impl Appended {
    /// One past the last LSN of the batch.
    pub fn end_lsn(&self) -> Lsn {
        self.first_lsn + self.positions.len() as Lsn
    }
}

/// What a full verification found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
}

/// A segment as readers see it.
pub(crate) struct Segment {
    pub(crate) base: Lsn,
    pub(crate) path: PathBuf,
    pub(crate) state: SegmentState,
}

pub(crate) enum SegmentState {
    /// Sealed: immutable, read through a memory map made on first use.
    Sealed {
        next_lsn: Lsn,
        records_end: u64,
        map: std::sync::OnceLock<FileBytes>,
    },
    /// The segment being appended to, read with positional reads.
    Active { file: Arc<dyn VfsFile> },
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("base", &self.base)
            .field("path", &self.path)
            .field("sealed", &matches!(self.state, SegmentState::Sealed { .. }))
            .finish()
    }
}

/// The readable extent of the log: every segment, and how far the active one is written.
#[derive(Clone, Debug)]
pub(crate) struct View {
    pub(crate) segments: Vec<Arc<Segment>>,
    /// One past the last complete record.
    pub(crate) end_lsn: Lsn,
    /// The end of the last complete record in the active segment.
    pub(crate) active_end: u64,
}

/// Counters of what the log did since it was opened.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) appends: AtomicU64,
    pub(crate) records: AtomicU64,
    pub(crate) fsyncs: AtomicU64,
}

/// A snapshot of [`Log::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Non-empty `append` calls that were written.
    pub appends: u64,
    pub records: u64,
    /// `fdatasync` calls on segments (group commit makes this smaller than `appends`).
    pub fsyncs: u64,
}

/// Set once by the first failed write or fsync; every later append reports it.
#[derive(Debug, Default)]
pub(crate) struct Poison {
    poisoned: AtomicBool,
    cause: Mutex<Option<String>>,
}

impl Poison {
    pub(crate) fn set(&self, cause: String) {
        let mut slot = self.cause.lock();
        if slot.is_none() {
            *slot = Some(cause);
        }
        self.poisoned.store(true, Ordering::Release);
    }

    pub(crate) fn check(&self) -> Result<(), LogError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(LogError::Poisoned {
                cause: self.cause().unwrap_or_default(),
            });
        }
        Ok(())
    }

    pub(crate) fn cause(&self) -> Option<String> {
        self.cause.lock().clone()
    }
}

pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) vfs: Arc<dyn Vfs>,
    pub(crate) options: LogOptions,
    pub(crate) writer: Mutex<writer::Writer>,
    pub(crate) sync: Mutex<writer::SyncState>,
    pub(crate) synced: Condvar,
    /// Wakes the syncer thread when an appender waits.
    pub(crate) sync_wanted: Condvar,
    pub(crate) view: RwLock<View>,
    pub(crate) poison: Poison,
    pub(crate) closing: AtomicBool,
    pub(crate) stats: Stats,
    /// The flusher thread (`Interval`, and `NoSync` with `writeback_bytes`), which
    /// appenders wake when `writeback_bytes` are waiting for an fsync.
    pub(crate) flusher: OnceLock<Thread>,
    _lock: Box<dyn DirLock>,
}

/// An open log. `Send + Sync`; share it behind an `Arc`.
pub struct Log {
    shared: Arc<Shared>,
    /// The background threads: the syncer's lanes (`Sync`) or the flusher (`Interval`, and
    /// `NoSync` with `writeback_bytes`).
    background: Vec<JoinHandle<()>>,
    report: RecoveryReport,
}

impl fmt::Debug for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.shared.dir)
            .field("end_lsn", &self.end_lsn())
            .finish()
    }
}

/// The name of the lock file in a log directory.
pub const LOCK_FILE: &str = "LOCK";

impl Log {
    /// Open (or create) the log in `dir` on the real file system.
    pub fn open(dir: &Path, options: LogOptions) -> Result<Log, LogError> {
        Self::open_with(Arc::new(OsVfs), dir, options)
    }

    /// Open (or create) the log in `dir` through `vfs`.
    pub fn open_with(vfs: Arc<dyn Vfs>, dir: &Path, options: LogOptions) -> Result<Log, LogError> {
        validate_options(&options)?;
        create_dir_durably(vfs.as_ref(), dir)?;
        // The directory's own name too, if it existed: a log directory put in place by a
        // copy (a restored backup) may be in the page cache only, and recovery makes what
        // it finds durable before anything may reflect it.
        sync_name(vfs.as_ref(), dir)?;
        let lock = vfs.lock_dir(dir, LOCK_FILE).map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                LogError::Locked {
                    dir: dir.to_path_buf(),
                }
            } else {
                LogError::Io {
                    op: "lock",
                    path: dir.join(LOCK_FILE),
                    source: e,
                }
            }
        })?;
        let recovered = recovery::recover(vfs.as_ref(), dir, &options)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            vfs,
            writer: Mutex::new(recovered.writer),
            sync: Mutex::new(writer::SyncState::new(recovered.view.end_lsn)),
            synced: Condvar::new(),
            sync_wanted: Condvar::new(),
            view: RwLock::new(recovered.view),
            poison: Poison::default(),
            closing: AtomicBool::new(false),
            stats: Stats::default(),
            flusher: OnceLock::new(),
            options,
            _lock: lock,
        });
        let flusher = |interval: Option<Duration>| {
            let thread = writer::spawn_flusher(Arc::clone(&shared), interval);
            let _first = shared.flusher.set(thread.thread().clone());
            vec![thread]
        };
        let background = match shared.options.durability {
            Durability::Interval { interval_ms } => {
                flusher(Some(Duration::from_millis(interval_ms)))
            }
            Durability::Sync => writer::spawn_syncer(&shared),
            Durability::NoSync if shared.options.writeback_bytes > 0 => flusher(None),
            Durability::NoSync => Vec::new(),
        };
        Ok(Log {
            shared,
            background,
            report: recovered.report,
        })
    }

    /// What recovery did when this log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Append a batch; returns once the batch is as durable as the options ask.
    pub fn append<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<Appended, LogError> {
        if self.shared.options.durability != Durability::Sync {
            return writer::write(&self.shared, payloads);
        }
        let _announced = self.announce_append();
        let appended = writer::write(&self.shared, payloads)?;
        writer::wait_durable(&self.shared, appended.end_lsn())?;
        Ok(appended)
    }

    /// Announce that this thread is about to [`Log::write`] and then [`Log::wait_durable`];
    /// drop the returned value as soon as the wait returns. In `Sync` mode the syncer waits
    /// (at most `LogOptions::group_commit_gather_us`) for every announced appender to
    /// write before it starts an fsync, so that one fsync serves them all. [`Log::append`]
    /// announces by itself; callers that split the two steps announce before they prepare
    /// the batch.
    pub fn announce_append(&self) -> Announced {
        Announced::new(&self.shared)
    }

    /// Write a batch without waiting for it to be durable; pair with [`Log::wait_durable`].
    /// Lets a caller release its own locks before the (shared) fsync.
    ///
    /// A batch [`Log::check_batch`] accepts fails to write only on an I/O error, and that
    /// poisons the log (so does any error of a log already poisoned).
    pub fn write<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<Appended, LogError> {
        writer::write(&self.shared, payloads)
    }

    /// Whether [`Log::write`] would take this batch (empty records, a record or the batch
    /// over the limits are refused), without writing it.
    pub fn check_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<(), LogError> {
        writer::check_batch(&self.shared.options, payloads).map(|_| ())
    }

    /// Block until every record below `end` is durable (group commit: one fsync serves
    /// every waiter).
    pub fn wait_durable(&self, end: Lsn) -> Result<(), LogError> {
        writer::wait_durable(&self.shared, end)
    }

    /// Ask for every record below `end` (written by the caller) to be made durable, and
    /// return at once: the fsync may start while the caller does other work, and then it
    /// waits with [`Log::wait_requested`]. Counts the caller among the announced
    /// appenders that have written (see [`Log::announce_append`]). Call it at most once
    /// per wait; without a syncer (other modes) it does nothing.
    pub fn request_durable(&self, end: Lsn) {
        writer::request_durable(&self.shared, end);
    }

    /// [`Log::wait_durable`] for records asked for with [`Log::request_durable`].
    pub fn wait_requested(&self, end: Lsn) -> Result<(), LogError> {
        writer::wait_requested(&self.shared, end)
    }

    /// Make every appended record durable now (whatever the durability mode).
    pub fn sync(&self) -> Result<(), LogError> {
        let end = self.end_lsn();
        writer::wait_durable(&self.shared, end)
    }

    /// The LSN of the first record the log holds.
    pub fn first_lsn(&self) -> Lsn {
        self.shared.view.read().segments[0].base
    }

    /// One past the LSN of the last appended record. In `Sync` mode a record is appended
    /// (it has its LSN) before it is written: it becomes readable with the fsync of its
    /// group, before [`Log::append`] / [`Log::wait_durable`] return.
    pub fn end_lsn(&self) -> Lsn {
        self.shared.writer.lock().next_lsn
    }

    /// One past the LSN of the last record known to be durable.
    pub fn durable_lsn(&self) -> Lsn {
        self.shared.sync.lock().durable_end
    }

    /// What the log did since it was opened.
    pub fn stats(&self) -> LogStats {
        let s = &self.shared.stats;
        LogStats {
            appends: s.appends.load(Ordering::Relaxed),
            records: s.records.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
        }
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Why the writer is poisoned, if it is.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.poison.cause()
    }

    /// `Err` if the writer is poisoned: what [`Log::write`] would return, without a batch.
    pub fn check_writable(&self) -> Result<(), LogError> {
        self.shared.poison.check()
    }

    /// Read records in LSN order from `from`.
    pub fn scan(&self, from: Lsn) -> Result<Scan, LogError> {
        Scan::new(&self.shared, from)
    }

    /// Read the record whose frame starts at `position`.
    pub fn read(&self, position: Position) -> Result<OwnedRecord, LogError> {
        reader::read_at(&self.shared, position)
    }

    /// Check every record's checksum and LSN from the first to the last.
    pub fn verify(&self) -> Result<VerifyReport, LogError> {
        reader::verify(&self.shared)
    }

    /// Bytes of all segment files.
    pub fn size_bytes(&self) -> u64 {
        let view = self.shared.view.read();
        view.segments
            .iter()
            .map(|s| match &s.state {
                SegmentState::Sealed { records_end, .. } => {
                    records_end + format::TRAILER_BYTES as u64
                }
                SegmentState::Active { .. } => view.active_end,
            })
            .sum()
    }

    /// Make everything durable, stop the background syncer or flusher and release the lock.
    pub fn close(mut self) -> Result<(), LogError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), LogError> {
        self.shared.closing.store(true, Ordering::Release);
        if !self.background.is_empty() {
            for thread in &self.background {
                thread.thread().unpark();
            }
            {
                // Wake the syncer under its lock, so the wake-up cannot be missed.
                let _state = self.shared.sync.lock();
                self.shared.sync_wanted.notify_all();
            }
            for thread in self.background.drain(..) {
                let _ = thread.join();
            }
        }
        if self.shared.poison.cause().is_some() {
            return Ok(());
        }
        self.sync()
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // Best effort; `close` reports the error.
        let _ = self.shutdown();
    }
}

fn validate_options(o: &LogOptions) -> Result<(), LogError> {
    let bad = |what: String| Err(LogError::InvalidOptions(what));
    if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&o.segment_bytes_max) {
        return bad(format!(
            "segment_bytes_max {} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}",
            o.segment_bytes_max
        ));
    }
    if o.record_bytes_max == 0 || o.record_bytes_max > RECORD_BYTES_HARD_MAX {
        return bad(format!(
            "record_bytes_max {} is outside 1..={RECORD_BYTES_HARD_MAX}",
            o.record_bytes_max
        ));
    }
    if o.batch_records_max == 0 {
        return bad("batch_records_max must be at least 1".into());
    }
    if o.batch_bytes_max == 0 || o.batch_bytes_max > BATCH_BYTES_MAX {
        return bad(format!(
            "batch_bytes_max {} is outside 1..={BATCH_BYTES_MAX}",
            o.batch_bytes_max
        ));
    }
    if o.group_commit_gather_us > GROUP_COMMIT_GATHER_US_MAX {
        return bad(format!(
            "group_commit_gather_us {} is above {GROUP_COMMIT_GATHER_US_MAX}",
            o.group_commit_gather_us
        ));
    }
    if !(1..=SYNC_LANES_MAX).contains(&o.sync_lanes) {
        return bad(format!(
            "sync_lanes {} is outside 1..={SYNC_LANES_MAX}",
            o.sync_lanes
        ));
    }
    if o.writeback_bytes != 0 && o.writeback_bytes < WRITEBACK_BYTES_MIN {
        return bad(format!(
            "writeback_bytes {} is neither 0 nor at least {WRITEBACK_BYTES_MIN}",
            o.writeback_bytes
        ));
    }
    if let Durability::Interval { interval_ms: 0 } = o.durability {
        return bad("the durability interval must be at least 1 ms".into());
    }
    Ok(())
}
