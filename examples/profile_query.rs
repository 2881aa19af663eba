//! Ingest the reference workload, then time `latest` / `as_of` over Zipf-chosen or uniform
//! entities; for profiling with `perf record`.
use std::sync::Arc;
use std::time::Instant;

use fsdb::workload::{self, WorkloadSpec};
use fsdb::{Db, Durability, Options};

fsdb::use_jemalloc!();

fn main() {
    let spec = WorkloadSpec::by_name(&std::env::var("FSDB_SCALE").unwrap_or("S".into())).unwrap();
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
    let mut rng = workload::Rng::new(5);
    let zipf = workload::Zipf::new(spec.entities, 1.0);
    let uniform = std::env::var("FSDB_UNIFORM").is_ok();
    let entities: Vec<String> = (0..4096)
        .map(|_| {
            workload::Generator::customer(if uniform {
                rng.below(spec.entities)
            } else {
                zipf.sample(&mut rng)
            })
        })
        .collect();
    let features = workload::FEATURES;
    for e in &entities {
        db.latest(e, &features).unwrap();
    }
    // FSDB_QUERIES: how many of each (fewer under valgrind), at least the 4,096 query times.
    let n: usize = std::env::var("FSDB_QUERIES")
        .map_or(200_000, |n| n.parse().expect("FSDB_QUERIES is a number"));
    assert!(n >= 4096, "FSDB_QUERIES must be at least 4096");
    let start = Instant::now();
    for i in 0..n {
        std::hint::black_box(db.latest(&entities[i % entities.len()], &features).unwrap());
    }
    println!(
        "latest: {:.2} µs/query",
        start.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    // `as_of` at uniform times over the workload's span, as the benchmark asks it.
    let span = (spec.start_ms, spec.end_ms());
    let times: Vec<i64> = (0..4096)
        .map(|_| span.0 + rng.below((span.1 - span.0) as u64) as i64)
        .collect();
    let mut took: Vec<f64> = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        std::hint::black_box(
            db.as_of(
                &entities[i % entities.len()],
                &features,
                times[i % times.len()],
            )
            .unwrap(),
        );
        took.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let first: Vec<f64> = {
        let mut v = took[..times.len()].to_vec();
        v.sort_by(f64::total_cmp);
        v
    };
    println!(
        "as_of, first {} queries: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs",
        first.len(),
        first[first.len() / 2],
        first[first.len() * 9 / 10],
        first[first.len() * 99 / 100]
    );
    let mut rest = took[times.len()..].to_vec();
    rest.sort_by(f64::total_cmp);
    if !rest.is_empty() {
        println!(
            "as_of, repeated (entity, time): p50 {:.1} µs, p99 {:.1} µs",
            rest[rest.len() / 2],
            rest[rest.len() * 99 / 100]
        );
    }
    took.sort_by(f64::total_cmp);
    println!(
        "as_of: p50 {:.1} µs, p99 {:.1} µs",
        took[n / 2],
        took[n * 99 / 100]
    );
    // What one query reads, on average over the query times (outside the timed loops).
    let (mut summaries, mut events) = (0, 0);
    for (i, &t) in times.iter().enumerate() {
        let (_, stats) = db
            .as_of_with_stats(&entities[i % entities.len()], &features, t)
            .unwrap();
        (summaries, events) = (summaries + stats.summaries, events + stats.events);
    }
    println!(
        "as_of reads per query: {:.1} tile summaries, {:.1} events",
        summaries as f64 / times.len() as f64,
        events as f64 / times.len() as f64
    );
}
