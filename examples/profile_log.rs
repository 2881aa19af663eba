//! Append 100-byte records in batches of 1,000 (FSDB_SYNC=1 for Sync durability); for
//! profiling the log with `perf record`.
use std::time::Instant;

use fsdb_storage::{Durability, Log, LogOptions};

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let durability = if std::env::var("FSDB_SYNC").is_ok() {
        Durability::Sync
    } else {
        Durability::NoSync
    };
    let log = Log::open(
        dir.path(),
        LogOptions {
            durability,
            segment_bytes_max: 256 << 20,
            ..LogOptions::default()
        },
    )
    .unwrap();
    let batch: Vec<Vec<u8>> = (0..1000).map(|i| vec![i as u8; 100]).collect();
    let start = Instant::now();
    for _ in 0..5000 {
        log.append(&batch).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{:.2} M records/s", 5.0 / secs);
}
