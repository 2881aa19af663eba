//! The state store writes without RocksDB's WAL: what a killed process leaves of it (its
//! directory as it is, the memtables gone) opens at the last flush, with that flush's
//! `applied_lsn` and exactly the rows committed up to it — never a part of a batch, never
//! rows without the `applied_lsn` that covers them. The engine then replays the log from
//! there (the kill -9 campaign, `tests/it/crash.rs`, checks that end to end).

use std::path::Path;

use fsdb_storage::state::{StateOptions, StateStore, Table};

/// Batches committed; the store is flushed after each multiple of `FLUSH_EVERY`.
const BATCHES: u64 = 10;
const FLUSH_EVERY: u64 = 4;
const ROWS_PER_BATCH: u64 = 20;

fn row_key(lsn: u64, row: u64) -> Vec<u8> {
    [lsn.to_be_bytes(), row.to_be_bytes()].concat()
}

/// A copy of the files of `from` as they are now, while the store is open.
fn copy_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn a_killed_store_opens_at_its_last_flush_with_exactly_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let store = StateStore::open(&live, &StateOptions::default()).unwrap();
    for lsn in 1..=BATCHES {
        let mut batch = store.batch();
        for row in 0..ROWS_PER_BATCH {
            batch.put(Table::Events, &row_key(lsn, row), &lsn.to_le_bytes());
        }
        batch.put(Table::Dedup, &lsn.to_be_bytes(), b"id");
        batch.set_applied_lsn(lsn);
        store.commit(batch).unwrap();
        if lsn % FLUSH_EVERY == 0 {
            store.flush().unwrap();
        }
    }
    // Everything is readable while the store is open...
    assert_eq!(store.applied_lsn().unwrap(), BATCHES);
    // ...but only the flushed batches are on disk.
    let image = dir.path().join("image");
    copy_files(&live, &image);
    let last_flush = BATCHES / FLUSH_EVERY * FLUSH_EVERY;
    assert!(last_flush < BATCHES, "some batches are in memtables only");

    let reopened = StateStore::open(&image, &StateOptions::default()).unwrap();
    assert_eq!(reopened.applied_lsn().unwrap(), last_flush);
    for lsn in 1..=BATCHES {
        let flushed = lsn <= last_flush;
        for row in 0..ROWS_PER_BATCH {
            let value = reopened.get(Table::Events, &row_key(lsn, row)).unwrap();
            assert_eq!(value.is_some(), flushed, "batch {lsn}, row {row}");
        }
        let id = reopened.get(Table::Dedup, &lsn.to_be_bytes()).unwrap();
        assert_eq!(id.is_some(), flushed, "batch {lsn}'s id");
    }
    drop(store);
}
