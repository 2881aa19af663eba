//! 16 threads appending single 100-byte records with Sync durability; for profiling group
//! commit with `perf record`. `THREADS` (16), `GATHER_US` and `SYNC_LANES` (the defaults
//! of `LogOptions::group_commit_gather_us` and `LogOptions::sync_lanes`) vary the run.
use std::sync::Arc;
use std::time::Instant;

use fsdb_storage::{Durability, Log, LogOptions};

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        Log::open(
            dir.path(),
            LogOptions {
                durability: Durability::Sync,
                group_commit_gather_us: std::env::var("GATHER_US")
                    .map(|t| t.parse().unwrap())
                    .unwrap_or(LogOptions::default().group_commit_gather_us),
                sync_lanes: std::env::var("SYNC_LANES")
                    .map(|t| t.parse().unwrap())
                    .unwrap_or(LogOptions::default().sync_lanes),
                ..LogOptions::default()
            },
        )
        .unwrap(),
    );
    let threads: usize = std::env::var("THREADS")
        .map(|t| t.parse().unwrap())
        .unwrap_or(16);
    let per = 20_000 / threads;
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for _ in 0..per {
                    log.append(&[[7u8; 100].as_slice()]).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let stats = log.stats();
    println!(
        "{threads} appenders: {:.0} appends/s, {} fsyncs for {} appends ({:.1} per fsync)",
        (per * threads) as f64 / secs,
        stats.fsyncs,
        stats.appends,
        stats.appends as f64 / stats.fsyncs as f64
    );
}
