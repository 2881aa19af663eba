//! Ingest the reference workload (scale from FSDB_SCALE, default S) and report time; for
//! profiling with `perf record`.
use std::sync::Arc;
use std::time::Instant;

use fsdb::workload::{self, WorkloadSpec};
use fsdb::{Db, Durability, Options};

fsdb::use_jemalloc!();

fn main() {
    let spec = WorkloadSpec::by_name(&std::env::var("FSDB_SCALE").unwrap_or("S".into())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        durability: if std::env::var("FSDB_NOSYNC").is_ok() {
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
    let start = Instant::now();
    workload::append_events(&db, events, 1000).unwrap();
    println!("ingest: {:.2}s", start.elapsed().as_secs_f64());
    let start = Instant::now();
    db.close().unwrap();
    println!("close: {:.2}s", start.elapsed().as_secs_f64());
}
