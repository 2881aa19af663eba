//! Damage at rest: the log cut at every byte offset, and one bit flipped in every frame,
//! header and trailer. Each case must be recovered or refused exactly as docs/format.md
//! says, and no damaged record may ever be returned as data.

use std::path::PathBuf;

use fsdb_storage::io::Vfs;
use fsdb_storage::io::sim::SimVfs;
use fsdb_storage::log::DAMAGED_DIR;
use fsdb_storage::log::format::{self, FRAME_HEADER_BYTES, HEADER_BYTES, TRAILER_BYTES};
use fsdb_storage::{CorruptKind, Durability, LogError, LogOptions};

use crate::common::{dir, open_sim, read_all, script, segment_files, small_options};

/// One frame of the pristine log.
#[derive(Clone, Debug)]
struct Frame {
    segment: usize,
    offset: usize,
    end: usize,
    lsn: u64,
    /// Offsets (in its segment) where this frame's batch starts and ends.
    batch_start: usize,
    batch_end: usize,
}

struct Layout {
    files: Vec<(PathBuf, Vec<u8>)>,
    frames: Vec<Frame>,
    payloads: Vec<Vec<u8>>,
}

impl Layout {
    fn is_sealed(&self, segment: usize) -> bool {
        segment + 1 < self.files.len()
    }

    /// The records that recovery must keep if everything from `segment`'s batch starting at
    /// `batch_start` on is lost.
    fn kept_before(&self, segment: usize, batch_start: usize) -> usize {
        self.frames
            .iter()
            .filter(|f| f.segment < segment || (f.segment == segment && f.batch_end <= batch_start))
            .count()
    }

    fn vfs_with(&self, files: Vec<(PathBuf, Vec<u8>)>) -> SimVfs {
        let vfs = SimVfs::new();
        vfs.create_dir_all(&dir()).unwrap();
        for (path, bytes) in files {
            vfs.open_file(&path, fsdb_storage::io::OpenMode::CreateNew)
                .unwrap();
            vfs.write_file(&path, bytes).unwrap();
        }
        vfs
    }
}

/// A multi-segment log of complete batches, written with `Sync` durability, and its layout.
fn pristine() -> Layout {
    let vfs = SimVfs::new();
    let log = open_sim(&vfs, small_options(Durability::Sync)).unwrap();
    let mut payloads = Vec::new();
    for batch in script(7, 40) {
        log.append(&batch).unwrap();
        payloads.extend(batch);
    }
    log.close().unwrap();
    let files = segment_files(&vfs);
    assert!(
        files.len() >= 3,
        "the test needs several segments, got {}",
        files.len()
    );
    let mut frames = Vec::new();
    for (segment, (_, bytes)) in files.iter().enumerate() {
        let records_end = if segment + 1 < files.len() {
            bytes.len() - TRAILER_BYTES
        } else {
            bytes.len()
        };
        let mut offset = HEADER_BYTES;
        let mut batch_start = offset;
        let first_in_segment = frames.len();
        while offset < records_end {
            let (header, _) = format::decode_frame(&bytes[offset..], 4096).unwrap();
            let end = offset + FRAME_HEADER_BYTES + header.len as usize;
            frames.push(Frame {
                segment,
                offset,
                end,
                lsn: header.lsn,
                batch_start,
                batch_end: 0,
            });
            if header.batch_left == 0 {
                for f in &mut frames[first_in_segment..] {
                    if f.batch_start == batch_start {
                        f.batch_end = end;
                    }
                }
                batch_start = end;
            }
            offset = end;
        }
    }
    assert_eq!(frames.len(), payloads.len());
    Layout {
        files,
        frames,
        payloads,
    }
}

fn assert_prefix(records: &[(u64, Vec<u8>)], layout: &Layout, kept: usize, context: &str) {
    assert_eq!(records.len(), kept, "{context}: wrong number of records");
    for (i, (lsn, payload)) in records.iter().enumerate() {
        assert_eq!(*lsn, i as u64 + 1, "{context}");
        assert_eq!(
            payload, &layout.payloads[i],
            "{context}: record {lsn} differs"
        );
    }
}

/// Cut the log at every byte offset (later segments gone): recovery keeps exactly the whole
/// batches before the cut, stays writable, and refuses instead whenever the caller's
/// durability hint says a lost record had been acknowledged.
#[test]
fn truncation_at_every_byte_offset() {
    let layout = pristine();
    let total = layout.payloads.len();
    let mut cases = 0;
    for (segment, (path, bytes)) in layout.files.iter().enumerate() {
        for cut in 0..=bytes.len() {
            let mut files: Vec<_> = layout.files[..segment].to_vec();
            files.push((path.clone(), bytes[..cut].to_vec()));
            let sealed_intact = layout.is_sealed(segment) && cut == bytes.len();
            let kept = if sealed_intact {
                layout.kept_before(segment + 1, 0)
            } else {
                layout.kept_before(segment, cut)
            };
            let context = format!("segment {segment} cut at {cut}");

            let vfs = layout.vfs_with(files.clone());
            let log = open_sim(&vfs, small_options(Durability::Sync))
                .unwrap_or_else(|e| panic!("{context}: {e}"));
            assert_prefix(&read_all(&log).unwrap(), &layout, kept, &context);
            log.verify().unwrap_or_else(|e| panic!("{context}: {e}"));
            let appended = log.append(&[b"after".as_slice()]).unwrap();
            assert_eq!(appended.first_lsn, kept as u64 + 1, "{context}");
            drop(log);

            // The same damage, but the caller knows every record had been acknowledged.
            let vfs = layout.vfs_with(files);
            let options = LogOptions {
                durable_lsn_hint: total as u64 + 1,
                ..small_options(Durability::Sync)
            };
            match open_sim(&vfs, options) {
                Ok(_log) => assert_eq!(kept, total, "{context}: lost records despite the hint"),
                Err(LogError::Corrupt {
                    kind: CorruptKind::DurableHintViolated { .. },
                    ..
                }) => assert!(kept < total, "{context}: refused although nothing was lost"),
                Err(e) => panic!("{context}: unexpected error {e}"),
            }
            cases += 1;
        }
    }
    assert!(cases > 10_000, "only {cases} cases");
}

/// Flip one bit in every frame. A damaged frame is never returned: in a sealed segment,
/// reads and `verify` fail naming the segment and offset; in the active segment, the log
/// refuses to open when a later record proves the frame was durable, and otherwise (the
/// last batch) cuts it off as a torn tail. With `repair`, the log opens cut before the
/// damaged batch, with the damaged bytes kept in `damaged/`.
#[test]
fn bit_flip_in_every_frame() {
    let layout = pristine();
    for (i, frame) in layout.frames.iter().enumerate() {
        let (path, bytes) = &layout.files[frame.segment];
        let at = frame.offset + (i * 7919) % (frame.end - frame.offset);
        let mut damaged = bytes.clone();
        damaged[at] ^= 1 << (i % 8);
        let mut files = layout.files.clone();
        files[frame.segment].1 = damaged;
        let context = format!(
            "frame lsn {} (segment {}, offset {}) flipped at {at}",
            frame.lsn, frame.segment, frame.offset
        );
        let kept = layout.kept_before(frame.segment, frame.batch_start);
        let is_corrupt_here = |e: &LogError| matches!(e, LogError::Corrupt { segment, offset, .. } if segment == path && *offset == frame.offset as u64);

        let vfs = layout.vfs_with(files.clone());
        let last_batch = frame.batch_end == bytes.len();
        match open_sim(&vfs, small_options(Durability::Sync)) {
            Ok(log) if layout.is_sealed(frame.segment) => {
                let err = read_all(&log).unwrap_err();
                assert!(is_corrupt_here(&err), "{context}: {err}");
                let err = log.verify().unwrap_err();
                assert!(is_corrupt_here(&err), "{context}: {err}");
                let segment_base = layout
                    .frames
                    .iter()
                    .find(|f| f.segment == frame.segment)
                    .unwrap()
                    .lsn;
                let position = fsdb_storage::Position {
                    segment: segment_base,
                    offset: frame.offset as u64,
                };
                assert!(
                    log.read(position).is_err(),
                    "{context}: read by position accepted it"
                );
                // Everything before the damaged frame is still readable.
                let before: Vec<_> = log
                    .scan(1)
                    .unwrap()
                    .take_while(|r| r.is_ok())
                    .map(|r| r.unwrap())
                    .collect();
                assert_eq!(before.len() as u64, frame.lsn - 1, "{context}");
            }
            Ok(log) => {
                assert!(
                    last_batch,
                    "{context}: durable damage was truncated instead of refused"
                );
                assert_prefix(&read_all(&log).unwrap(), &layout, kept, &context);
                assert!(log.recovery_report().truncation.is_some(), "{context}");
            }
            Err(e) => {
                assert!(
                    !layout.is_sealed(frame.segment) && !last_batch,
                    "{context}: refused: {e}"
                );
                assert!(is_corrupt_here(&e), "{context}: {e}");
            }
        }

        // Repair cuts exactly before the damaged batch and keeps the bytes aside.
        let vfs = layout.vfs_with(files);
        let options = LogOptions {
            repair: true,
            ..small_options(Durability::Sync)
        };
        let log =
            open_sim(&vfs, options).unwrap_or_else(|e| panic!("{context}: repair failed: {e}"));
        assert_prefix(&read_all(&log).unwrap(), &layout, kept, &context);
        log.verify().unwrap();
        if !last_batch || layout.is_sealed(frame.segment) {
            let repair = log
                .recovery_report()
                .repair
                .as_ref()
                .unwrap_or_else(|| panic!("{context}: no repair report"));
            assert_eq!(repair.offset, frame.batch_start as u64, "{context}");
            assert!(!vfs.list_dir(&dir().join(DAMAGED_DIR)).unwrap().is_empty());
        }
    }
}

/// A flipped bit in any segment header or seal trailer refuses to open, naming the file
/// and the offset of the damaged structure; `repair` recovers what precedes it.
#[test]
fn bit_flip_in_headers_and_trailers() {
    let layout = pristine();
    for (segment, (path, bytes)) in layout.files.iter().enumerate() {
        let mut spots = vec![(5usize, 0u64)];
        if layout.is_sealed(segment) {
            let trailer_at = bytes.len() - TRAILER_BYTES;
            spots.push((trailer_at + 9, trailer_at as u64));
        }
        for (at, reported) in spots {
            let mut files = layout.files.clone();
            files[segment].1[at] ^= 0x10;
            let context = format!("segment {segment} byte {at}");
            let err = open_sim(
                &layout.vfs_with(files.clone()),
                small_options(Durability::Sync),
            )
            .unwrap_err();
            assert!(
                matches!(&err, LogError::Corrupt { segment: s, offset, .. } if s == path && *offset == reported),
                "{context}: {err}"
            );
            let options = LogOptions {
                repair: true,
                ..small_options(Durability::Sync)
            };
            let log = open_sim(&layout.vfs_with(files), options)
                .unwrap_or_else(|e| panic!("{context}: {e}"));
            log.verify().unwrap();
            let kept = if reported == 0 {
                layout.kept_before(segment, 0)
            } else {
                layout.kept_before(segment + 1, 0)
            };
            assert_prefix(&read_all(&log).unwrap(), &layout, kept, &context);
        }
    }
}
