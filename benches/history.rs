//! A query's time does not grow with the entity's history (`cargo bench --bench history`):
//! `as_of` and `latest` for an entity with 1,000,000 events over a year and for one with
//! 1,000, both with the same 2,000 events in the last 10 days, so that every windowed
//! feature has the same value for both (`fsdb::workload::history`; the test
//! `bounded_work.rs` counts what the queries read). Figures: docs/benchmarks.md.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use fsdb::time::ManualClock;
use fsdb::workload::history::{self, DAY_MS, END_MS, RECENT_START_MS};
use fsdb::{Db, Durability, Options};

fsdb::use_jemalloc!();

/// The entities: name and events before the last 10 days.
const ENTITIES: [(&str, i64); 2] = [("heavy", 1_000_000), ("light", 1_000)];

/// Query times spread over the last 10 days but its first one (the 7-day windows then hold
/// only recent events, the same for both entities).
fn query_times() -> Vec<i64> {
    let first = RECENT_START_MS + 7 * DAY_MS;
    let span = END_MS - first;
    (0..97).map(|i| first + i * span / 97 + 12_345).collect()
}

fn history_does_not_slow_queries(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        clock: Arc::new(ManualClock::new(END_MS)),
        durability: Durability::NoSync,
        ..Options::default()
    };
    let db = Db::open(dir.path(), options).unwrap();
    db.apply(history::DEFINITIONS).unwrap();
    for (entity, events) in ENTITIES {
        history::load(&db, entity, events).unwrap();
    }
    // As a database that has been running: the history persisted, nothing in memory.
    db.checkpoint().unwrap();
    let features = db.feature_names();
    let features: Vec<&str> = features.iter().map(String::as_str).collect();
    let windowed: Vec<&str> = features
        .iter()
        .copied()
        .filter(|f| !f.ends_with("_life"))
        .collect();
    let times = query_times();
    for (entity, _) in ENTITIES {
        let (row, stats) = db.as_of_with_stats(entity, &features, times[0]).unwrap();
        let (_, again) = db.as_of_with_stats(entity, &features, times[0]).unwrap();
        println!(
            "{entity}: count_life {:?}; one as_of reads {stats:?} the first time, {again:?} after",
            row.get("count_life")
        );
    }
    for &t in &times {
        assert_eq!(
            db.as_of("heavy", &windowed, t).unwrap().values,
            db.as_of("light", &windowed, t).unwrap().values,
            "the windows hold the same events"
        );
    }

    let mut group = c.benchmark_group("history");
    group.measurement_time(Duration::from_secs(5));
    for (entity, events) in ENTITIES {
        let label = format!("{entity} ({} events)", events + history::RECENT_EVENTS);
        group.bench_function(BenchmarkId::new("as_of, 12 features", &label), |b| {
            let mut next = 0;
            b.iter(|| {
                next = (next + 1) % times.len();
                db.as_of(entity, &features, times[next]).unwrap()
            });
        });
        group.bench_function(BenchmarkId::new("latest, 12 features", &label), |b| {
            b.iter(|| db.latest(entity, &features).unwrap());
        });
    }
    group.finish();
}

criterion_group!(benches, history_does_not_slow_queries);
criterion_main!(benches);
