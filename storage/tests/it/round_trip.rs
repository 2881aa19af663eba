//! Appended records come back unchanged: by scan from any LSN, by position, after reopen.

use std::sync::Arc;

use fsdb_storage::io::sim::SimVfs;
use fsdb_storage::{Durability, Log, LogOptions};
use proptest::prelude::*;

use crate::common::{dir, read_all, small_options};

fn batches() -> impl Strategy<Value = Vec<Vec<Vec<u8>>>> {
    let record = prop::collection::vec(any::<u8>(), 1..300);
    prop::collection::vec(prop::collection::vec(record, 1..8), 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random batches round-trip through a log that rotates often: scans from every LSN and
    /// reads by every position return exactly what was appended, before and after reopening.
    #[test]
    fn random_batches_round_trip(batches in batches(), mode in 0..3u8) {
        let durability = match mode {
            0 => Durability::Sync,
            1 => Durability::Interval { interval_ms: 1 },
            _ => Durability::NoSync,
        };
        let vfs = SimVfs::new();
        let open = || Log::open_with(Arc::new(vfs.clone()), &dir(), small_options(durability)).unwrap();
        let log = open();
        let mut expected = Vec::new();
        for batch in &batches {
            let appended = log.append(batch).unwrap();
            prop_assert_eq!(appended.first_lsn, expected.len() as u64 + 1);
            for (payload, position) in batch.iter().zip(&appended.positions) {
                expected.push((payload.clone(), *position));
            }
        }
        let check = |log: &Log| -> Result<(), TestCaseError> {
            prop_assert_eq!(log.end_lsn(), expected.len() as u64 + 1);
            for (i, (payload, position)) in expected.iter().enumerate() {
                let lsn = i as u64 + 1;
                let record = log.read(*position).unwrap();
                prop_assert_eq!(record.lsn, lsn);
                prop_assert_eq!(&record.payload, payload);
            }
            // Scans from a spread of starting LSNs, including the end.
            for from in (1..=expected.len() as u64 + 1).step_by(7).chain([expected.len() as u64 + 1]) {
                let got: Vec<_> = log.scan(from).unwrap().map(|r| r.unwrap()).collect();
                prop_assert_eq!(got.len(), expected.len() + 1 - from as usize);
                for record in got {
                    let (payload, position) = &expected[record.lsn as usize - 1];
                    prop_assert_eq!(&record.payload, payload);
                    prop_assert_eq!(&record.position, position);
                }
            }
            prop_assert_eq!(log.verify().unwrap().records, expected.len() as u64);
            Ok(())
        };
        check(&log)?;
        log.close().unwrap();
        let log = open();
        check(&log)?;
        prop_assert_eq!(read_all(&log).unwrap().len(), expected.len());
    }
}

/// Scans and reads outside the log are errors, not panics or empty results.
#[test]
fn out_of_range_reads_are_errors() {
    let vfs = SimVfs::new();
    let log = Log::open_with(Arc::new(vfs), &dir(), LogOptions::default()).unwrap();
    log.append(&[b"one".as_slice()]).unwrap();
    assert!(log.scan(0).is_err());
    assert!(log.scan(3).is_err());
    assert_eq!(log.scan(2).unwrap().count(), 0);
    let bad = fsdb_storage::Position {
        segment: 1,
        offset: 33,
    };
    assert!(log.read(bad).is_err());
    let bad = fsdb_storage::Position {
        segment: 99,
        offset: 32,
    };
    assert!(log.read(bad).is_err());
}

/// Limits are enforced before anything is written, and name the offending record.
#[test]
fn limits_are_enforced() {
    let vfs = SimVfs::new();
    let options = LogOptions {
        record_bytes_max: 10,
        batch_records_max: 3,
        ..LogOptions::default()
    };
    let log = Log::open_with(Arc::new(vfs), &dir(), options).unwrap();
    let err = log.append(&[b"ok".as_slice(), b""]).unwrap_err();
    assert!(
        matches!(err, fsdb_storage::LogError::EmptyRecord { index: 1, .. }),
        "{err}"
    );
    let err = log.append(&[b"01234567890".as_slice()]).unwrap_err();
    assert!(
        matches!(
            err,
            fsdb_storage::LogError::RecordTooLarge {
                index: 0,
                len: 11,
                ..
            }
        ),
        "{err}"
    );
    let err = log.append(&[b"a".as_slice(); 4]).unwrap_err();
    assert!(
        matches!(
            err,
            fsdb_storage::LogError::BatchTooLarge { records: 4, .. }
        ),
        "{err}"
    );
    assert_eq!(log.end_lsn(), 1, "rejected batches wrote nothing");
    // `check_batch` answers as `append` does, without writing.
    let batches: [&[&[u8]]; 4] = [
        &[b"ok", b""],
        &[b"01234567890"],
        &[b"a".as_slice(); 4],
        &[b"a", b"0123456789"],
    ];
    for batch in batches {
        let checked = log.check_batch(batch).map_err(|e| e.to_string());
        assert_eq!(log.end_lsn(), 1);
        let appended = log.append(batch).map(|_| ()).map_err(|e| e.to_string());
        assert_eq!(checked, appended, "{batch:?}");
    }
    assert_eq!(log.end_lsn(), 3, "the last batch was within the limits");
    assert!(log.check_writable().is_ok());
    assert!(
        Log::open_with(
            Arc::new(SimVfs::new()),
            &dir(),
            LogOptions {
                segment_bytes_max: 1,
                ..LogOptions::default()
            }
        )
        .is_err()
    );
    // Each option outside its limits is refused, by name.
    use fsdb_storage::log::{GROUP_COMMIT_GATHER_US_MAX, SYNC_LANES_MAX, WRITEBACK_BYTES_MIN};
    let defaults = LogOptions::default;
    let refused = [
        (
            "group_commit_gather_us",
            LogOptions {
                group_commit_gather_us: GROUP_COMMIT_GATHER_US_MAX + 1,
                ..defaults()
            },
        ),
        (
            "sync_lanes",
            LogOptions {
                sync_lanes: 0,
                ..defaults()
            },
        ),
        (
            "sync_lanes",
            LogOptions {
                sync_lanes: SYNC_LANES_MAX + 1,
                ..defaults()
            },
        ),
        (
            "writeback_bytes",
            LogOptions {
                writeback_bytes: 1,
                ..defaults()
            },
        ),
        (
            "writeback_bytes",
            LogOptions {
                writeback_bytes: WRITEBACK_BYTES_MIN - 1,
                ..defaults()
            },
        ),
    ];
    for (name, options) in refused {
        let err = Log::open_with(Arc::new(SimVfs::new()), &dir(), options).unwrap_err();
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
}

/// A batch larger than a segment gets a segment of its own and stays readable.
#[test]
fn oversized_batch_gets_its_own_segment() {
    let vfs = SimVfs::new();
    let log = Log::open_with(
        Arc::new(vfs.clone()),
        &dir(),
        small_options(Durability::Sync),
    )
    .unwrap();
    log.append(&[vec![1u8; 100]]).unwrap();
    let big: Vec<Vec<u8>> = (0..10).map(|i| vec![i as u8; 1000]).collect();
    let appended = log.append(&big).unwrap();
    assert_eq!(
        appended.positions[0].segment, 2,
        "the big batch starts a new segment"
    );
    log.append(&[vec![2u8; 100]]).unwrap();
    assert_eq!(read_all(&log).unwrap().len(), 12);
    drop(log);
    let log = Log::open_with(Arc::new(vfs), &dir(), small_options(Durability::Sync)).unwrap();
    assert_eq!(read_all(&log).unwrap().len(), 12);
    log.verify().unwrap();
}

/// A file system that counts the memory maps it hands out.
#[derive(Debug, Default)]
struct CountingMaps {
    inner: SimVfs,
    maps: std::sync::atomic::AtomicUsize,
}

impl fsdb_storage::io::Vfs for CountingMaps {
    fn create_dir_all(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &std::path::Path) -> std::io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn open_file(
        &self,
        path: &std::path::Path,
        mode: fsdb_storage::io::OpenMode,
    ) -> std::io::Result<Arc<dyn fsdb_storage::io::VfsFile>> {
        self.inner.open_file(path, mode)
    }
    fn remove_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn map_readonly(&self, path: &std::path::Path) -> std::io::Result<fsdb_storage::io::FileBytes> {
        self.maps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.map_readonly(path)
    }
    fn lock_dir(
        &self,
        dir: &std::path::Path,
        name: &str,
    ) -> std::io::Result<Box<dyn fsdb_storage::io::DirLock>> {
        self.inner.lock_dir(dir, name)
    }
}

/// A scan passes over the whole log once: it reads through a buffer, and maps nothing (a
/// map would keep every page it passed resident). Reads by position use the maps.
#[test]
fn scans_read_through_a_buffer_and_reads_by_position_map() {
    let vfs = Arc::new(CountingMaps::default());
    let log = Log::open_with(vfs.clone(), &dir(), small_options(Durability::NoSync)).unwrap();
    let mut positions = Vec::new();
    for i in 0..200u32 {
        let batch = vec![i.to_le_bytes().repeat(25)];
        positions.extend(log.append(&batch).unwrap().positions);
    }
    let segments: std::collections::BTreeSet<_> = positions.iter().map(|p| p.segment).collect();
    assert!(
        segments.len() > 3,
        "the log rotated: {} segments",
        segments.len()
    );
    let scanned: Vec<_> = log.scan(1).unwrap().map(Result::unwrap).collect();
    assert_eq!(scanned.len(), 200);
    assert_eq!(vfs.maps.load(std::sync::atomic::Ordering::Relaxed), 0);
    let first = log.read(positions[0]).unwrap();
    assert_eq!(first.payload, 0u32.to_le_bytes().repeat(25));
    assert_eq!(vfs.maps.load(std::sync::atomic::Ordering::Relaxed), 1);
}
