//! Where the memory of a database goes, phase by phase (scale M unless FSDB_SCALE says
//! otherwise): the process RSS next to the engine's own estimates (entity cache, event
//! ids), through ingest (NoSync), Zipf `latest` reads, and `latest` under ingest as in
//! `benches/workload.rs` — without the benchmark's pre-generated input in memory.
use std::sync::Arc;

use fsdb::workload::{self, WorkloadSpec};
use fsdb::{Db, Durability, Options};

fsdb::use_jemalloc!();

fn mib(b: usize) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn report(db: &Db, phase: &str) {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let cache = db.cache_stats();
    // Live bytes and the allocator's resident pages, the whole process (RocksDB included).
    tikv_jemalloc_ctl::epoch::advance().unwrap();
    let allocated = tikv_jemalloc_ctl::stats::allocated::read().unwrap();
    let resident = tikv_jemalloc_ctl::stats::resident::read().unwrap();
    println!(
        "{:>22}  jemalloc: allocated {:.0} MiB, resident {:.0} MiB",
        "",
        mib(allocated),
        mib(resident)
    );
    println!(
        "{phase:>22}: RSS {:.0} MiB; entity cache (estimate) {:.0} MiB, {} entities; event ids {:.0} MiB; RocksDB {:.0} MiB",
        mib(pages * 4096),
        mib(cache.bytes_held),
        cache.entities_in_memory,
        mib(cache.event_ids_bytes),
        mib(cache.state_store_bytes as usize)
    );
}

fn main() {
    let spec = WorkloadSpec::by_name(&std::env::var("FSDB_SCALE").unwrap_or("M".into())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(fsdb::time::ManualClock::new(spec.end_ms()));
    let options = Options {
        durability: Durability::NoSync,
        clock: clock.clone(),
        ..Options::default()
    };
    let db = Db::open(dir.path(), options).unwrap();
    db.apply(workload::DEFINITIONS).unwrap();
    workload::append_all(&db, &spec, 1000).unwrap();
    db.checkpoint().unwrap();
    report(&db, "after ingest");
    let mut rng = workload::Rng::new(5);
    let zipf = workload::Zipf::new(spec.entities, 1.0);
    let features = workload::FEATURES;
    for i in 0..50_000 {
        let e = workload::Generator::customer(zipf.sample(&mut rng));
        db.latest(&e, &features).unwrap();
        if i % 10_000 == 9_999 {
            report(&db, &format!("latest {}", i + 1));
        }
    }
    let now = workload::live_now(&spec);
    clock.set(now);
    db.materialize().unwrap();
    report(&db, "materialize");
    for round in 0..200i64 {
        let events = workload::live_transactions(&spec, round, &zipf, &mut rng);
        db.append("transactions", &events).unwrap();
        for _ in 0..200 {
            let entity = workload::Generator::customer(zipf.sample(&mut rng));
            db.latest(&entity, &features).unwrap();
        }
        if round % 50 == 49 {
            report(&db, &format!("under ingest {}", round + 1));
        }
    }
    std::thread::sleep(std::time::Duration::from_secs(6));
    report(&db, "after a checkpoint");
}
