//! Ingest the reference workload (NoSync), then time a full replay of its log into an empty
//! state; for profiling with `perf record` (FSDB_REPLAY_ONLY=DIR replays an existing log).
use std::sync::Arc;
use std::time::Instant;

use fsdb::workload::{self, WorkloadSpec};
use fsdb::{Db, Durability, Options};

fsdb::use_jemalloc!();

fn main() {
    let spec = WorkloadSpec::by_name(&std::env::var("FSDB_SCALE").unwrap_or("S".into())).unwrap();
    let options = || Options {
        durability: Durability::NoSync,
        clock: Arc::new(fsdb::time::ManualClock::new(spec.end_ms())),
        ..Options::default()
    };
    let source = match std::env::var("FSDB_REPLAY_ONLY") {
        Ok(dir) => std::path::PathBuf::from(dir),
        Err(_) => {
            let dir = std::env::temp_dir().join("fsdb-profile-replay");
            let _ = std::fs::remove_dir_all(&dir);
            let db = Db::open(&dir, options()).unwrap();
            db.apply(workload::DEFINITIONS).unwrap();
            workload::append_all(&db, &spec, 1000).unwrap();
            db.close().unwrap();
            println!("wrote {}", dir.display());
            dir
        }
    };
    let target = std::env::temp_dir().join("fsdb-profile-replay-target");
    let _ = std::fs::remove_dir_all(&target);
    std::fs::create_dir_all(target.join("log")).unwrap();
    for entry in std::fs::read_dir(source.join("log")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "LOCK" && entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), target.join("log").join(entry.file_name())).unwrap();
        }
    }
    let start = Instant::now();
    let db = Db::open(&target, options()).unwrap();
    let records = db.open_report().replayed;
    println!(
        "replay: {records} records in {:.2}s = {:.0}/s",
        start.elapsed().as_secs_f64(),
        records as f64 / start.elapsed().as_secs_f64()
    );
}
