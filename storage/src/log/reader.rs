//! Reading: scans from any LSN, single records by position, full verification.
//!
//! Scans read every segment with positional reads into a buffer (the active one never past
//! the end of the last complete batch at the time the scan began): a scan passes over the
//! whole log once, and through a memory map every page it passed would stay in the
//! process's resident set — a replay of a 1 GB log would end with 1 GB more RSS. Single
//! records read by position come from the sealed segments' memory maps. Every frame read is checked (checksum, length, LSN) before its
//! payload is handed out.

use std::path::Path;
use std::sync::Arc;

use super::format::{self, FRAME_HEADER_BYTES, HEADER_BYTES, TRAILER_BYTES};
use super::recovery::{check_trailer, scan_frames};
use super::{CorruptKind, LogError, Lsn, Position, SegmentState, Shared, VerifyReport, View};
use crate::io::{FileBytes, OpenMode, Vfs, VfsFile};

/// A record borrowed from a scan's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub lsn: Lsn,
    pub position: Position,
    pub payload: &'a [u8],
}

/// A record with its own copy of the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedRecord {
    pub lsn: Lsn,
    pub position: Position,
    pub payload: Vec<u8>,
}

impl Record<'_> {
    pub fn to_owned(&self) -> OwnedRecord {
        OwnedRecord {
            lsn: self.lsn,
            position: self.position,
            payload: self.payload.to_vec(),
        }
    }
}

/// Read-ahead of a scan: large enough to amortise a `pread`, small enough to keep a scan's
/// memory bounded.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

enum Cursor {
    Mapped {
        bytes: FileBytes,
        end: usize,
    },
    /// Positional reads through a buffer of `SCAN_CHUNK_BYTES`.
    Buffered {
        file: Arc<dyn VfsFile>,
        end: u64,
        buf: Vec<u8>,
        /// File offset of `buf[0]`.
        buf_start: u64,
    },
}

/// A scan over the records of a log in LSN order; see [`crate::Log::scan`].
pub struct Scan {
    view: View,
    vfs: Arc<dyn Vfs>,
    record_bytes_max: u32,
    segment: usize,
    cursor: Option<Cursor>,
    offset: u64,
    next_lsn: Lsn,
}

impl std::fmt::Debug for Scan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scan")
            .field("next_lsn", &self.next_lsn)
            .finish()
    }
}

fn corrupt(path: &Path, offset: u64, kind: CorruptKind) -> LogError {
    LogError::Corrupt {
        segment: path.to_path_buf(),
        offset,
        kind,
    }
}

fn map_segment(vfs: &dyn Vfs, segment: &super::Segment) -> Result<FileBytes, LogError> {
    let SegmentState::Sealed { map, .. } = &segment.state else {
        unreachable!("only sealed segments are mapped")
    };
    if let Some(bytes) = map.get() {
        return Ok(Arc::clone(bytes));
    }
    let bytes = vfs
        .map_readonly(&segment.path)
        .map_err(|source| LogError::Io {
            op: "map",
            path: segment.path.clone(),
            source,
        })?;
    Ok(Arc::clone(map.get_or_init(|| bytes)))
}

impl Scan {
    pub(crate) fn new(shared: &Shared, from: Lsn) -> Result<Scan, LogError> {
        let view = shared.view.read().clone();
        let first = view.segments[0].base;
        if from < first || from > view.end_lsn {
            return Err(LogError::LsnOutOfRange {
                lsn: from,
                first,
                end: view.end_lsn,
            });
        }
        let segment = view.segments.partition_point(|s| s.base <= from) - 1;
        let mut scan = Scan {
            vfs: Arc::clone(&shared.vfs),
            record_bytes_max: shared.options.record_bytes_max,
            segment,
            cursor: None,
            offset: HEADER_BYTES as u64,
            next_lsn: view.segments[segment].base,
            view,
        };
        // A scan from the end reads nothing, so it need not walk (and check) the last
        // segment's records to get there: a restart whose state is current asks for one,
        // right after recovery checked them.
        if from == scan.view.end_lsn {
            scan.next_lsn = from;
            return Ok(scan);
        }
        // Skip, checking as we go, to the first wanted record.
        while scan.next_lsn < from {
            scan.next_record()?;
        }
        Ok(scan)
    }

    /// The LSN the next record will have.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// The next record, or `None` at the end of the log as it was when the scan began.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, LogError> {
        loop {
            if self.next_lsn >= self.view.end_lsn {
                return Ok(None);
            }
            if self.cursor.is_none() {
                self.cursor = Some(self.open_cursor()?);
            }
            let segment = &self.view.segments[self.segment];
            let seg_end = match &segment.state {
                SegmentState::Sealed { next_lsn, .. } => *next_lsn,
                SegmentState::Active { .. } => self.view.end_lsn,
            };
            if self.next_lsn >= seg_end {
                self.segment += 1;
                self.cursor = None;
                self.offset = HEADER_BYTES as u64;
                continue;
            }
            let position = Position {
                segment: segment.base,
                offset: self.offset,
            };
            let cursor = self.cursor.as_mut().expect("opened above");
            let frame = frame_bytes(cursor, self.offset, self.record_bytes_max, &segment.path)?;
            let (header, payload) = format::decode_frame(frame, self.record_bytes_max)
                .map_err(|e| corrupt(&segment.path, position.offset, e.into()))?;
            if header.lsn != self.next_lsn {
                let kind = CorruptKind::LsnMismatch {
                    expected: self.next_lsn,
                    found: header.lsn,
                };
                return Err(corrupt(&segment.path, position.offset, kind));
            }
            self.offset += (FRAME_HEADER_BYTES + payload.len()) as u64;
            self.next_lsn += 1;
            return Ok(Some(Record {
                lsn: header.lsn,
                position,
                payload,
            }));
        }
    }

    fn open_cursor(&self) -> Result<Cursor, LogError> {
        let segment = &self.view.segments[self.segment];
        Ok(match &segment.state {
            SegmentState::Sealed { records_end, .. } => Cursor::Buffered {
                file: self
                    .vfs
                    .open_file(&segment.path, OpenMode::ReadOnly)
                    .map_err(|source| LogError::Io {
                        op: "open",
                        path: segment.path.clone(),
                        source,
                    })?,
                end: *records_end,
                buf: Vec::new(),
                buf_start: 0,
            },
            SegmentState::Active { file } => Cursor::Buffered {
                file: Arc::clone(file),
                end: self.view.active_end,
                buf: Vec::new(),
                buf_start: 0,
            },
        })
    }
}

impl Iterator for Scan {
    type Item = Result<OwnedRecord, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record()
            .map(|r| r.map(|r| r.to_owned()))
            .transpose()
    }
}

/// The bytes from `offset` to the end of the frame that starts there (its header says how
/// long it is), or as many as there are if the segment ends first.
fn frame_bytes<'c>(
    cursor: &'c mut Cursor,
    offset: u64,
    record_bytes_max: u32,
    path: &Path,
) -> Result<&'c [u8], LogError> {
    match cursor {
        Cursor::Mapped { bytes, end } => {
            let all = &(**bytes).as_ref()[..(*end).min((**bytes).as_ref().len())];
            Ok(all.get(offset as usize..).unwrap_or_default())
        }
        Cursor::Buffered {
            file,
            end,
            buf,
            buf_start,
        } => {
            let available = (*end - offset) as usize;
            let in_buf = |buf: &Vec<u8>, start: u64, want: usize| {
                offset >= start && offset + want as u64 <= start + buf.len() as u64
            };
            let header_len = FRAME_HEADER_BYTES.min(available);
            if !in_buf(buf, *buf_start, header_len) {
                refill(
                    file.as_ref(),
                    buf,
                    buf_start,
                    offset,
                    header_len.max(SCAN_CHUNK_BYTES),
                    *end,
                    path,
                )?;
            }
            let at = (offset - *buf_start) as usize;
            let mut want = header_len;
            if header_len == FRAME_HEADER_BYTES {
                let len = u32::from_le_bytes(buf[at + 4..at + 8].try_into().expect("4 bytes"));
                if len <= record_bytes_max {
                    want = (FRAME_HEADER_BYTES + len as usize).min(available);
                }
            }
            if !in_buf(buf, *buf_start, want) {
                refill(
                    file.as_ref(),
                    buf,
                    buf_start,
                    offset,
                    want.max(SCAN_CHUNK_BYTES),
                    *end,
                    path,
                )?;
            }
            let at = (offset - *buf_start) as usize;
            Ok(&buf[at..at + want])
        }
    }
}

fn refill(
    file: &dyn VfsFile,
    buf: &mut Vec<u8>,
    buf_start: &mut u64,
    offset: u64,
    want: usize,
    end: u64,
    path: &Path,
) -> Result<(), LogError> {
    let len = want.min((end - offset) as usize);
    buf.resize(len, 0);
    file.read_exact_at(buf, offset)
        .map_err(|source| LogError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })?;
    *buf_start = offset;
    Ok(())
}

pub(crate) fn read_at(shared: &Shared, position: Position) -> Result<OwnedRecord, LogError> {
    let view = shared.view.read().clone();
    let bad = || LogError::BadPosition { position };
    let index = view
        .segments
        .binary_search_by_key(&position.segment, |s| s.base)
        .map_err(|_| bad())?;
    let segment = &view.segments[index];
    let records_end = match &segment.state {
        SegmentState::Sealed { records_end, .. } => *records_end,
        SegmentState::Active { .. } => view.active_end,
    };
    if position.offset < HEADER_BYTES as u64 || position.offset >= records_end {
        return Err(bad());
    }
    let max = shared.options.record_bytes_max;
    let mut cursor = match &segment.state {
        SegmentState::Sealed { .. } => Cursor::Mapped {
            bytes: map_segment(shared.vfs.as_ref(), segment)?,
            end: records_end as usize,
        },
        SegmentState::Active { file } => Cursor::Buffered {
            file: Arc::clone(file),
            end: records_end,
            buf: Vec::new(),
            buf_start: 0,
        },
    };
    let frame = frame_bytes(&mut cursor, position.offset, max, &segment.path)?;
    // A position that is not a frame start fails the checksum (or the LSN range check).
    let (header, payload) = format::decode_frame(frame, max).map_err(|_| bad())?;
    let seg_end = match &segment.state {
        SegmentState::Sealed { next_lsn, .. } => *next_lsn,
        SegmentState::Active { .. } => view.end_lsn,
    };
    if !(segment.base..seg_end).contains(&header.lsn) {
        return Err(bad());
    }
    Ok(OwnedRecord {
        lsn: header.lsn,
        position,
        payload: payload.to_vec(),
    })
}

/// Check every segment completely: header, every frame, trailer, LSN continuity.
pub(crate) fn verify(shared: &Shared) -> Result<VerifyReport, LogError> {
    let view = shared.view.read().clone();
    let max = shared.options.record_bytes_max;
    let mut report = VerifyReport {
        segments: view.segments.len(),
        records: 0,
        bytes: 0,
    };
    let mut expected_base = view.segments[0].base;
    for segment in &view.segments {
        if segment.base != expected_base {
            let kind = CorruptKind::Gap {
                expected: expected_base,
                found: segment.base,
            };
            return Err(corrupt(&segment.path, 0, kind));
        }
        let (held, records_end): (FileBytes, u64) = match &segment.state {
            SegmentState::Sealed { records_end, .. } => {
                (map_segment(shared.vfs.as_ref(), segment)?, *records_end)
            }
            SegmentState::Active { file } => {
                let mut buf = vec![0u8; view.active_end as usize];
                file.read_exact_at(&mut buf, 0)
                    .map_err(|source| LogError::Io {
                        op: "read",
                        path: segment.path.clone(),
                        source,
                    })?;
                (Arc::new(buf), view.active_end)
            }
        };
        let bytes: &[u8] = (*held).as_ref();
        let header = format::decode_header(bytes)
            .map_err(|e| corrupt(&segment.path, 0, CorruptKind::Header(e)))?;
        if header.base_lsn != segment.base {
            let kind = CorruptKind::BaseMismatch {
                expected: segment.base,
                found: header.base_lsn,
            };
            return Err(corrupt(&segment.path, 0, kind));
        }
        let records = &bytes[..(records_end as usize).min(bytes.len())];
        let scan = scan_frames(records, segment.base, max);
        if let Some((offset, kind)) = scan.bad {
            return Err(corrupt(&segment.path, offset, kind));
        }
        if let SegmentState::Sealed { next_lsn, .. } = &segment.state {
            let at = records_end as usize;
            let trailer = format::decode_trailer(bytes.get(at..).unwrap_or_default())
                .map_err(|e| corrupt(&segment.path, records_end, CorruptKind::Trailer(e)))?;
            check_trailer(&segment.path, trailer, records_end, scan.next_lsn)?;
            if bytes.len() != at + TRAILER_BYTES || *next_lsn != scan.next_lsn {
                let kind = CorruptKind::TrailerEnd {
                    expected: (bytes.len() - TRAILER_BYTES) as u64,
                    found: records_end,
                };
                return Err(corrupt(&segment.path, records_end, kind));
            }
        }
        expected_base = scan.next_lsn;
        report.records += scan.records;
        report.bytes += bytes.len() as u64;
    }
    Ok(report)
}
