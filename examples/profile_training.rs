//! Ingest the reference workload, then time a training set over a spine (FSDB_SPINE rows,
//! default 100k) against per-row `as_of`; for profiling with `perf record`.
use std::sync::Arc;
use std::time::Instant;

use fsdb::workload::{self, WorkloadSpec};
use fsdb::{Db, Durability, Options};

fsdb::use_jemalloc!();

fn main() {
    let spec = WorkloadSpec::by_name(&std::env::var("FSDB_SCALE").unwrap_or("S".into())).unwrap();
    let rows: u64 = std::env::var("FSDB_SPINE")
        .map(|s| s.parse().unwrap())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        durability: Durability::NoSync,
        clock: Arc::new(fsdb::time::ManualClock::new(spec.end_ms())),
        ..Options::default()
    };
    let db = Db::open(dir.path(), options).unwrap();
    db.apply(workload::DEFINITIONS).unwrap();
    workload::append_all(&db, &spec, 1000).unwrap();
    db.checkpoint().unwrap();
    let spine = workload::spine(&spec, rows, 11);
    let features = workload::FEATURES;
    let start = Instant::now();
    let set = db.training_set(&spine, &features).unwrap();
    let sweep = start.elapsed().as_secs_f64();
    println!(
        "training set: {} rows x {} features in {:.2}s = {:.0} rows/s",
        set.len(),
        features.len(),
        sweep,
        rows as f64 / sweep
    );
    if std::env::var("FSDB_COMPARE").is_ok() {
        let start = Instant::now();
        for (i, (e, t)) in spine.iter().enumerate() {
            assert_eq!(db.as_of(e, &features, *t).unwrap().values, set.row(i));
        }
        println!(
            "per-row as_of: {:.0} rows/s (values identical)",
            rows as f64 / start.elapsed().as_secs_f64()
        );
    }
}
