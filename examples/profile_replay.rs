//! Ingest the reference workload (NoSync), then time a full replay of its log into an empty
//! state; for profiling with `perf record` (FSDB_REPLAY_ONLY=DIR replays an existing log;
//! FSDB_SYNC=1 opens it durable, as the benchmark does).
use std::sync::Arc;
use std::time::Instant;

use fsdb::workload::{self, WorkloadSpec};
use fsdb::{Db, Durability, Options};

fsdb::use_jemalloc!();

#[path = "support/cpu.rs"]
mod cpu;
use cpu::user_and_system_seconds;

fn main() {
    let spec = WorkloadSpec::by_name(&std::env::var("FSDB_SCALE").unwrap_or("S".into())).unwrap();
    let options = || Options {
        // FSDB_SYNC=1: durable, as the benchmark's database is.
        durability: if std::env::var_os("FSDB_SYNC").is_some() {
            Durability::Sync
        } else {
            Durability::NoSync
        },
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
            let copy = target.join("log").join(entry.file_name());
            std::fs::copy(entry.path(), &copy).unwrap();
            // On disk, as a log being replayed has long been (the open fsyncs every
            // segment: all of a fresh copy is still to write).
            std::fs::File::open(&copy).unwrap().sync_all().unwrap();
        }
    }
    let (start, (user_start, system_start)) = (Instant::now(), user_and_system_seconds());
    let db = Db::open(&target, options()).unwrap();
    let took = start.elapsed().as_secs_f64();
    let (user, system) = user_and_system_seconds();
    let (user, system) = (user - user_start, system - system_start);
    let records = db.open_report().replayed;
    println!(
        "replay: {records} records in {took:.3}s = {:.0}/s; CPU {:.2}s ({:.2} cores; user {user:.2}s, system {system:.2}s)",
        records as f64 / took,
        user + system,
        (user + system) / took
    );
}
