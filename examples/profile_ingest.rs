//! Ingest the reference workload and report wall and CPU time; for profiling with
//! `perf record`.
//!
//! `FSDB_SCALE` (S), `FSDB_APPENDERS` (1: one thread appending batches of 1,000 as they
//! are generated; N > 1: the benchmark's shape, batches generated first and appended
//! from N threads, batch i by thread i % N), `FSDB_NOSYNC` (acknowledge without fsync),
//! `FSDB_INTERVAL=ms` (acknowledge without fsync; the log fsyncs every `ms`).
use std::sync::Arc;
use std::time::Instant;

use fsdb::workload::{self, WorkloadSpec};
use fsdb::{Db, Durability, Options};

fsdb::use_jemalloc!();

#[path = "support/cpu.rs"]
mod cpu;
use cpu::{cpu_seconds, minor_faults, user_and_system_seconds};

fn main() {
    let spec = WorkloadSpec::by_name(&std::env::var("FSDB_SCALE").unwrap_or("S".into())).unwrap();
    let appenders: usize = std::env::var("FSDB_APPENDERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1);
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        durability: if let Ok(ms) = std::env::var("FSDB_INTERVAL") {
            Durability::Interval {
                interval_ms: ms
                    .parse()
                    .expect("FSDB_INTERVAL is a number of milliseconds"),
            }
        } else if std::env::var("FSDB_NOSYNC").is_ok() {
            Durability::NoSync
        } else {
            Durability::Sync
        },
        clock: Arc::new(fsdb::time::ManualClock::new(spec.end_ms())),
        ..Options::default()
    };
    let db = Db::open(dir.path(), options).unwrap();
    db.apply(workload::DEFINITIONS).unwrap();
    let events: Vec<_> = spec.generator().collect();
    let count = events.len();
    let (cpu, start) = (cpu_seconds(), Instant::now());
    if appenders == 1 {
        workload::append_events(&db, events, 1000).unwrap();
    } else {
        let batches = workload::batches(events, 1000);
        let ((user, system), faults) = (user_and_system_seconds(), minor_faults());
        let start_now = Instant::now();
        workload::append_from_threads(&db, &batches, appenders).unwrap();
        let wall = start_now.elapsed().as_secs_f64();
        let (user_now, system_now) = user_and_system_seconds();
        println!(
            "ingest, {appenders} appenders: {:.0} k events/s, {wall:.2}s, CPU {:.2}s \
             (user {:.2}s, system {:.2}s), {:.0} k page faults",
            count as f64 / wall / 1e3,
            user_now - user + system_now - system,
            user_now - user,
            system_now - system,
            (minor_faults() - faults) / 1e3
        );
    }
    println!(
        "ingest: {:.2}s, CPU {:.2}s",
        start.elapsed().as_secs_f64(),
        cpu_seconds() - cpu
    );
    let start = Instant::now();
    db.close().unwrap();
    println!("close: {:.2}s", start.elapsed().as_secs_f64());
}
