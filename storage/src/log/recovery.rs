//! Opening a log: check the segments, find the end, decide what a damaged tail means.
//!
//! The rules (docs/format.md, "Recovery"):
//! - every segment but the last must be sealed: a valid header naming its base LSN and a
//!   valid trailer naming the next segment's base; anything else refuses to open;
//! - in the last (active) segment, frames are read up to the first bad one. The bytes after
//!   the last complete batch are a *torn tail* and are truncated, unless they are proven to
//!   have been durable: by a later valid frame whose `durable` field covers them, or by the
//!   caller's `durable_lsn_hint`. Proven-durable damage refuses to open;
//! - a last segment whose header is bad and which holds no valid frame was torn while being
//!   created (before any record went into it) and is removed;
//! - a last segment that is sealed (crash right after sealing) gets a new active segment.
//!
//! With `repair`, the first damage found anywhere (sealed segments are then fully checked)
//! is cut off instead: the damaged bytes and every later segment are moved into `damaged/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{
    self, FRAME_HEADER_BYTES, FormatError, HEADER_BYTES, SegmentHeader, TRAILER_BYTES, Trailer,
};
use super::writer::Writer;
use super::{CorruptKind, LogError, LogOptions, Lsn, Segment, SegmentState, View};
use crate::io::{OpenMode, Vfs, VfsFile, child};

/// What recovery changed on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// A torn tail that was cut off the active segment.
    pub truncation: Option<Truncation>,
    /// A segment that was torn while being created, and removed.
    pub removed_torn_segment: Option<PathBuf>,
    /// What `repair` cut off.
    pub repair: Option<Repair>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    pub segment: PathBuf,
    /// The new length of the segment.
    pub offset: u64,
    pub bytes_cut: u64,
    /// Why the tail was not a complete batch.
    pub cause: CorruptKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    pub segment: PathBuf,
    /// Where the segment was cut; the bytes from here were copied into `damaged/`.
    pub offset: u64,
    /// The damage that triggered the repair.
    pub cause: CorruptKind,
    /// Files written or moved into `damaged/`.
    pub moved_aside: Vec<PathBuf>,
}

pub(crate) struct Recovered {
    pub(crate) writer: Writer,
    pub(crate) view: View,
    pub(crate) report: RecoveryReport,
}

/// The directory repair moves damaged bytes into.
pub const DAMAGED_DIR: &str = "damaged";

pub(crate) fn recover(
    vfs: &dyn Vfs,
    dir: &Path,
    options: &LogOptions,
) -> Result<Recovered, LogError> {
    let mut report = RecoveryReport::default();
    let recovered = match recover_once(vfs, dir, options, &mut report) {
        Err(LogError::Corrupt {
            segment,
            offset,
            kind,
        }) if options.repair => {
            report.repair = Some(repair(vfs, dir, &segment, offset, kind, options)?);
            // Repair cut the log at its first damage; what is left must now open.
            recover_once(vfs, dir, options, &mut report)
        }
        other => other,
    };
    recovered.map(|(writer, view)| Recovered {
        writer,
        view,
        report,
    })
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LogError {
    let path = path.to_path_buf();
    move |source| LogError::Io { op, path, source }
}

fn corrupt(segment: &Path, offset: u64, kind: CorruptKind) -> LogError {
    LogError::Corrupt {
        segment: segment.to_path_buf(),
        offset,
        kind,
    }
}

fn list_segments(vfs: &dyn Vfs, dir: &Path) -> Result<Vec<Lsn>, LogError> {
    let names = vfs.list_dir(dir).map_err(io_error("list", dir))?;
    let mut bases: Vec<Lsn> = names
        .iter()
        .filter_map(|n| format::parse_segment_file_name(n))
        .collect();
    bases.sort_unstable();
    Ok(bases)
}

fn read_all(file: &dyn VfsFile, path: &Path) -> Result<Vec<u8>, LogError> {
    let len = file.len().map_err(io_error("stat", path))?;
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(io_error("read", path))?;
    Ok(bytes)
}

/// Fill `buf` from `offset` as far as the file goes; returns how many bytes were read.
fn read_up_to(file: &dyn VfsFile, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

fn recover_once(
    vfs: &dyn Vfs,
    dir: &Path,
    options: &LogOptions,
    report: &mut RecoveryReport,
) -> Result<(Writer, View), LogError> {
    let bases = list_segments(vfs, dir)?;
    let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len() + 1);
    for pair in bases.windows(2) {
        let (records_end, next_lsn) = check_sealed(vfs, dir, pair[0], pair[1], options)?;
        segments.push(Arc::new(Segment {
            base: pair[0],
            path: child(dir, &format::segment_file_name(pair[0])),
            state: SegmentState::Sealed {
                next_lsn,
                records_end,
                map: Default::default(),
            },
        }));
    }
    let prev_next = segments.last().map(|s| match s.state {
        SegmentState::Sealed { next_lsn, .. } => next_lsn,
        SegmentState::Active { .. } => unreachable!("only the last segment is active"),
    });

    let hint = options.durable_lsn_hint;
    let Some(&last) = bases.last() else {
        check_hint(hint, 1, dir)?;
        return create_active(vfs, dir, 1, segments);
    };
    let path = child(dir, &format::segment_file_name(last));
    match open_last(vfs, &path, last, options, report)? {
        Last::Active {
            file,
            end,
            next_lsn,
        } => {
            check_hint(hint, next_lsn, &path)?;
            // The segments' names, as durable as their bytes (the other cases create a
            // segment, which syncs the directory).
            vfs.sync_dir(dir)
                .map_err(io_error("fsync directory", dir))?;
            segments.push(Arc::new(Segment {
                base: last,
                path,
                state: SegmentState::Active {
                    file: Arc::clone(&file),
                },
            }));
            let view = View {
                segments,
                end_lsn: next_lsn,
                active_end: end,
            };
            let writer = Writer {
                file,
                base: last,
                offset: end,
                next_lsn,
                // Recovery synced these bytes (`open_last`).
                durable_offset: end,
                buf: Vec::new(),
                next_ticket: 0,
                writeback_asked: 0,
            };
            Ok((writer, view))
        }
        Last::Sealed {
            records_end,
            next_lsn,
        } => {
            check_hint(hint, next_lsn, &path)?;
            segments.push(Arc::new(Segment {
                base: last,
                path,
                state: SegmentState::Sealed {
                    next_lsn,
                    records_end,
                    map: Default::default(),
                },
            }));
            create_active(vfs, dir, next_lsn, segments)
        }
        Last::TornCreation => {
            // The segment before it, if any, is sealed; the log continues where it ends.
            let next_lsn = prev_next.unwrap_or(last);
            check_hint(hint, next_lsn, &path)?;
            vfs.remove_file(&path).map_err(io_error("remove", &path))?;
            vfs.sync_dir(dir)
                .map_err(io_error("fsync directory", dir))?;
            report.removed_torn_segment = Some(path);
            create_active(vfs, dir, next_lsn, segments)
        }
    }
}

/// Refuse a recovered log that ends before records the caller knows were durable. Called
/// before recovery changes anything on disk.
fn check_hint(durable_lsn_hint: Lsn, end_lsn: Lsn, path: &Path) -> Result<(), LogError> {
    if durable_lsn_hint > end_lsn {
        let kind = CorruptKind::DurableHintViolated {
            first_lost: end_lsn,
            durable_hint: durable_lsn_hint,
        };
        return Err(corrupt(path, 0, kind));
    }
    Ok(())
}

fn create_active(
    vfs: &dyn Vfs,
    dir: &Path,
    base: Lsn,
    mut segments: Vec<Arc<Segment>>,
) -> Result<(Writer, View), LogError> {
    let path = child(dir, &format::segment_file_name(base));
    let file = vfs
        .open_file(&path, OpenMode::CreateNew)
        .map_err(io_error("create", &path))?;
    file.write_all_at(&format::encode_header(SegmentHeader { base_lsn: base }), 0)
        .map_err(io_error("write", &path))?;
    file.sync_data().map_err(io_error("fsync", &path))?;
    vfs.sync_dir(dir)
        .map_err(io_error("fsync directory", dir))?;
    segments.push(Arc::new(Segment {
        base,
        path,
        state: SegmentState::Active {
            file: Arc::clone(&file),
        },
    }));
    let end = HEADER_BYTES as u64;
    let view = View {
        segments,
        end_lsn: base,
        active_end: end,
    };
    let writer = Writer {
        file,
        base,
        offset: end,
        next_lsn: base,
        durable_offset: end,
        buf: Vec::new(),
        next_ticket: 0,
        writeback_asked: 0,
    };
    Ok((writer, view))
}

/// Check a sealed segment in O(1): header and trailer. With `repair`, also every frame.
fn check_sealed(
    vfs: &dyn Vfs,
    dir: &Path,
    base: Lsn,
    next_base: Lsn,
    options: &LogOptions,
) -> Result<(u64, Lsn), LogError> {
    let path = child(dir, &format::segment_file_name(base));
    let file = vfs
        .open_file(&path, OpenMode::ReadOnly)
        .map_err(io_error("open", &path))?;
    let len = file.len().map_err(io_error("stat", &path))?;
    let mut header = [0u8; HEADER_BYTES];
    let read = read_up_to(file.as_ref(), &mut header, 0).map_err(io_error("read", &path))?;
    let header = format::decode_header(&header[..read])
        .map_err(|e| corrupt(&path, 0, CorruptKind::Header(e)))?;
    if header.base_lsn != base {
        let kind = CorruptKind::BaseMismatch {
            expected: base,
            found: header.base_lsn,
        };
        return Err(corrupt(&path, 0, kind));
    }
    let trailer_at = len
        .saturating_sub(TRAILER_BYTES as u64)
        .max(HEADER_BYTES as u64);
    let mut trailer = [0u8; TRAILER_BYTES];
    let read =
        read_up_to(file.as_ref(), &mut trailer, trailer_at).map_err(io_error("read", &path))?;
    let trailer = format::decode_trailer(&trailer[..read])
        .map_err(|e| corrupt(&path, trailer_at, CorruptKind::Trailer(e)))?;
    check_trailer(&path, trailer, trailer_at, next_base)?;
    if options.repair {
        let bytes = read_all(file.as_ref(), &path)?;
        let scan = scan_frames(
            &bytes[..trailer_at as usize],
            base,
            options.record_bytes_max,
        );
        if let Some((offset, kind)) = scan.bad {
            return Err(corrupt(&path, offset, kind));
        }
        if scan.next_lsn != trailer.next_lsn {
            let kind = CorruptKind::Gap {
                expected: scan.next_lsn,
                found: trailer.next_lsn,
            };
            return Err(corrupt(&path, trailer_at, kind));
        }
    }
    // A segment this log sealed was synced then; one copied here (a restore, `cp`) may be
    // in the page cache only. Recovered records count as durable: make them so (a clean
    // file's fsync costs ~20 µs).
    file.sync_data().map_err(io_error("fsync", &path))?;
    Ok((trailer.records_end, trailer.next_lsn))
}

pub(crate) fn check_trailer(
    path: &Path,
    trailer: Trailer,
    trailer_at: u64,
    next_base: Lsn,
) -> Result<(), LogError> {
    if trailer.records_end != trailer_at {
        let kind = CorruptKind::TrailerEnd {
            expected: trailer_at,
            found: trailer.records_end,
        };
        return Err(corrupt(path, trailer_at, kind));
    }
    if trailer.next_lsn != next_base {
        let kind = CorruptKind::Gap {
            expected: next_base,
            found: trailer.next_lsn,
        };
        return Err(corrupt(path, trailer_at, kind));
    }
    Ok(())
}

/// What reading frames from the start of a segment's records found.
#[derive(Debug)]
pub(crate) struct FrameScan {
    /// Where reading stopped: the end of the bytes, or the first bad frame.
    pub(crate) end: u64,
    /// One past the LSN of the last valid frame.
    pub(crate) next_lsn: Lsn,
    /// The end of the last complete batch, and the LSN after it.
    pub(crate) complete_end: u64,
    pub(crate) complete_lsn: Lsn,
    /// The first bad frame (or an unfinished batch at the end), if any.
    pub(crate) bad: Option<(u64, CorruptKind)>,
    pub(crate) records: u64,
}

/// Read frames from offset `HEADER_BYTES` of `bytes` (a whole segment, or its records part)
/// expecting LSNs from `base`.
pub(crate) fn scan_frames(bytes: &[u8], base: Lsn, record_bytes_max: u32) -> FrameScan {
    let mut scan = FrameScan {
        end: HEADER_BYTES as u64,
        next_lsn: base,
        complete_end: HEADER_BYTES as u64,
        complete_lsn: base,
        bad: None,
        records: 0,
    };
    let mut off = HEADER_BYTES;
    while off < bytes.len() {
        match format::decode_frame(&bytes[off..], record_bytes_max) {
            Ok((h, _)) if h.lsn == scan.next_lsn => {
                off += FRAME_HEADER_BYTES + h.len as usize;
                scan.next_lsn += 1;
                scan.records += 1;
                if h.batch_left == 0 {
                    scan.complete_end = off as u64;
                    scan.complete_lsn = scan.next_lsn;
                }
            }
            Ok((h, _)) => {
                let kind = CorruptKind::LsnMismatch {
                    expected: scan.next_lsn,
                    found: h.lsn,
                };
                scan.bad = Some((off as u64, kind));
                break;
            }
            Err(e) => {
                scan.bad = Some((off as u64, CorruptKind::Record(e)));
                break;
            }
        }
    }
    scan.end = off as u64;
    if scan.bad.is_none() && scan.complete_end != scan.end {
        scan.bad = Some((scan.end, CorruptKind::IncompleteBatch));
    }
    scan
}

enum Last {
    Active {
        file: Arc<dyn VfsFile>,
        end: u64,
        next_lsn: Lsn,
    },
    Sealed {
        records_end: u64,
        next_lsn: Lsn,
    },
    TornCreation,
}

fn open_last(
    vfs: &dyn Vfs,
    path: &Path,
    base: Lsn,
    options: &LogOptions,
    report: &mut RecoveryReport,
) -> Result<Last, LogError> {
    let file = vfs
        .open_file(path, OpenMode::ReadWrite)
        .map_err(io_error("open", path))?;
    let bytes = read_all(file.as_ref(), path)?;
    let header = match format::decode_header(&bytes) {
        Ok(h) => h,
        Err(e) => {
            // Records go into a segment only after its header is durable, so a bad header
            // with no record after it is a creation the crash interrupted.
            if proven_frame_after(
                &bytes,
                HEADER_BYTES as u64,
                base,
                0,
                options.record_bytes_max,
            ) {
                return Err(corrupt(path, 0, CorruptKind::Header(e)));
            }
            return Ok(Last::TornCreation);
        }
    };
    if header.base_lsn != base {
        let kind = CorruptKind::BaseMismatch {
            expected: base,
            found: header.base_lsn,
        };
        return Err(corrupt(path, 0, kind));
    }
    let scan = scan_frames(&bytes, base, options.record_bytes_max);
    let Some((bad_at, cause)) = scan.bad.clone() else {
        // What recovery reads may be only in the page cache: written by a process that
        // died before its fsync (`NoSync`, `Interval`). The log's reader treats every
        // recovered record as durable (state may reflect it from now on), so make it so.
        file.sync_data().map_err(io_error("fsync", path))?;
        return Ok(Last::Active {
            file,
            end: scan.end,
            next_lsn: scan.next_lsn,
        });
    };
    // Sealed last segment: the frames stop exactly at a valid trailer.
    let rest = &bytes[bad_at as usize..];
    if bad_at == scan.complete_end
        && rest.len() == TRAILER_BYTES
        && let Ok(trailer) = format::decode_trailer(rest)
    {
        check_trailer(path, trailer, bad_at, scan.next_lsn)?;
        file.sync_data().map_err(io_error("fsync", path))?;
        return Ok(Last::Sealed {
            records_end: bad_at,
            next_lsn: trailer.next_lsn,
        });
    }
    // A torn tail, unless something proves the bytes from `complete_end` on were durable.
    let cut = scan.complete_end;
    if proven_frame_after(
        &bytes,
        cut,
        scan.complete_lsn,
        cut,
        options.record_bytes_max,
    ) {
        return Err(corrupt(path, bad_at, cause));
    }
    if options.durable_lsn_hint > scan.complete_lsn {
        let kind = CorruptKind::DurableHintViolated {
            first_lost: scan.complete_lsn,
            durable_hint: options.durable_lsn_hint,
        };
        return Err(corrupt(path, bad_at, kind));
    }
    file.set_len(cut).map_err(io_error("truncate", path))?;
    file.sync_data().map_err(io_error("fsync", path))?;
    report.truncation = Some(Truncation {
        segment: path.to_path_buf(),
        offset: cut,
        bytes_cut: bytes.len() as u64 - cut,
        cause,
    });
    Ok(Last::Active {
        file,
        end: cut,
        next_lsn: scan.complete_lsn,
    })
}

/// Is there, at any byte offset after `from`, a valid frame with an LSN of at least
/// `min_lsn` that was written when more than `durable_beyond` bytes were durable?
///
/// Such a frame proves the bytes up to its `durable` field had been fsynced, so damage
/// before it is not a torn write. The LSN bound (checked before the checksum) keeps the
/// search linear on garbage: a random frame header almost never passes it.
fn proven_frame_after(
    bytes: &[u8],
    from: u64,
    min_lsn: Lsn,
    durable_beyond: u64,
    record_bytes_max: u32,
) -> bool {
    let max_records_left = bytes.len() as u64 / FRAME_HEADER_BYTES as u64;
    let lsn_bound = min_lsn.saturating_add(max_records_left);
    let mut at = from as usize;
    while at + FRAME_HEADER_BYTES <= bytes.len() {
        let window = &bytes[at..];
        let lsn = u64::from_le_bytes(window[8..16].try_into().expect("8 bytes"));
        let durable = u32::from_le_bytes(window[16..20].try_into().expect("4 bytes")) as u64;
        if (min_lsn..=lsn_bound).contains(&lsn)
            && durable > durable_beyond
            && format::decode_frame(window, record_bytes_max).is_ok()
        {
            return true;
        }
        at += 1;
    }
    false
}

/// Cut the log at the first damage, at `offset` of `segment`: keep the complete batches
/// before it, move the rest of that segment and every later segment into `damaged/`.
fn repair(
    vfs: &dyn Vfs,
    dir: &Path,
    segment: &Path,
    offset: u64,
    cause: CorruptKind,
    options: &LogOptions,
) -> Result<Repair, LogError> {
    let damaged_dir = child(dir, DAMAGED_DIR);
    vfs.create_dir_all(&damaged_dir)
        .map_err(io_error("create directory", &damaged_dir))?;
    let name = segment
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let base = format::parse_segment_file_name(&name).expect("segments are named by their base");
    let file = vfs
        .open_file(segment, OpenMode::ReadWrite)
        .map_err(io_error("open", segment))?;
    let bytes = read_all(file.as_ref(), segment)?;
    let mut moved_aside = Vec::new();

    // Cut after the last complete batch before the damage. A damaged header is rewritten
    // (from the file name) so that LSNs stay continuous; the whole segment is then cut.
    let cut = match format::decode_header(&bytes) {
        Ok(h) if h.base_lsn == base => {
            let end = (offset as usize).clamp(HEADER_BYTES, bytes.len());
            scan_frames(&bytes[..end], base, options.record_bytes_max).complete_end
        }
        _ => {
            file.write_all_at(&format::encode_header(SegmentHeader { base_lsn: base }), 0)
                .map_err(io_error("write", segment))?;
            HEADER_BYTES as u64
        }
    };
    let copy = child(&damaged_dir, &format!("{name}.from-{cut}"));
    let out = vfs
        .open_file(&copy, OpenMode::CreateNew)
        .map_err(io_error("create", &copy))?;
    out.write_all_at(bytes.get(cut as usize..).unwrap_or_default(), 0)
        .map_err(io_error("write", &copy))?;
    out.sync_data().map_err(io_error("fsync", &copy))?;
    moved_aside.push(copy);

    for later in list_segments(vfs, dir)?.into_iter().filter(|&b| b > base) {
        let name = format::segment_file_name(later);
        let (from, to) = (child(dir, &name), child(&damaged_dir, &name));
        vfs.rename(&from, &to).map_err(io_error("rename", &from))?;
        moved_aside.push(to);
    }
    file.set_len(cut).map_err(io_error("truncate", segment))?;
    file.sync_data().map_err(io_error("fsync", segment))?;
    vfs.sync_dir(&damaged_dir)
        .map_err(io_error("fsync directory", &damaged_dir))?;
    vfs.sync_dir(dir)
        .map_err(io_error("fsync directory", dir))?;
    Ok(Repair {
        segment: segment.to_path_buf(),
        offset: cut,
        cause,
        moved_aside,
    })
}

impl From<FormatError> for CorruptKind {
    fn from(e: FormatError) -> Self {
        CorruptKind::Record(e)
    }
}
