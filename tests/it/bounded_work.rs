//! The work of one query does not grow with the entity's history: an entity with 1M events
//! over a year and one with 1k answer the same windows over the same recent events by
//! reading a bounded number of tile summaries and events, and lifetime windows over a
//! million events read a bounded number too.

use std::sync::Arc;

use fsdb::time::ManualClock;
use fsdb::workload::history::{
    DAY_MS as DAY, DEFINITIONS as DEFS, END_MS as END, event, load as load_history,
};
use fsdb::{Db, Durability, Event, Options, QueryStats, Value};

/// The tests' options: the clock at `END`, no fsync; others set what they test.
fn options() -> Options {
    Options {
        clock: Arc::new(ManualClock::new(END)),
        durability: Durability::NoSync,
        ..Options::default()
    }
}

/// `history` events over the year before the last 10 days, then the same 2,000 in them.
fn load(db: &Db, entity: &str, history: i64) {
    load_history(db, entity, history).unwrap();
}

fn work(db: &Db, entity: &str, names: &[&str], t: i64) -> QueryStats {
    // Run twice: the first query may compute (and cache) tile summaries.
    db.as_of_with_stats(entity, names, t).unwrap();
    db.as_of_with_stats(entity, names, t).unwrap().1
}

#[test]
fn query_work_is_bounded_by_window_shape_not_history() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    db.apply(DEFS).unwrap();
    load(&db, "heavy", 1_000_000);
    load(&db, "light", 1_000);
    let names = db.feature_names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let windowed: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !n.ends_with("_life"))
        .collect();

    for t in [END - 3 * DAY, END - DAY / 2, END] {
        let heavy = work(&db, "heavy", &windowed, t);
        let light = work(&db, "light", &windowed, t);
        eprintln!("windows as of {t}: heavy {heavy:?}, light {light:?}");
        // Same recent events, 1000x the history: the same order of work.
        let (h, l) = (
            heavy.summaries + heavy.events,
            light.summaries + light.events,
        );
        assert!(
            h <= 2 * l + 200,
            "heavy entity read {heavy:?}, light {light:?}"
        );
        // Windowed values agree, as the windows hold the same events.
        let a = db.as_of("heavy", &windowed, t).unwrap();
        let b = db.as_of("light", &windowed, t).unwrap();
        assert_eq!(a.values, b.values);
    }

    // Lifetime over a million events: bounded by the trie's depth (32 levels of 4-way
    // tiles over 64 bits) x 3 siblings per level, for each of two features, plus the
    // events of one leaf (64) each: not by history.
    let lifetime = work(&db, "heavy", &["count_life", "last_life"], END);
    eprintln!("lifetime over 1M events: {lifetime:?}");
    assert!(
        lifetime.summaries + lifetime.events <= 32 * 3 * 2 + 2 * 64,
        "{lifetime:?}"
    );
    assert_eq!(
        db.as_of("heavy", &["count_life"], END)
            .unwrap()
            .get("count_life"),
        Some(&Value::Int(1_002_000))
    );
}

/// Persisted chunks are bounded too: a hot entity's 5,000 events checkpointed at once are
/// stored as values of at most 512 rows (so no RocksDB seek near it reads megabytes), and
/// reload to the same answers.
#[test]
fn persisted_chunks_are_bounded_and_reload_exactly() {
    use fsdb_storage::state::{StateOptions, StateStore, Table};
    let dir = tempfile::tempdir().unwrap();
    let names = ["count_1h", "count_7d", "count_life", "sum_1h"];
    let times = [END - 5 * DAY, END - DAY / 3, END];
    let before: Vec<_> = {
        let db = Db::open(dir.path(), options()).unwrap();
        db.apply(DEFS).unwrap();
        let batch: Vec<Event> = (0..5_000)
            .map(|i| event("hot", END - 10 * DAY + i * 100_000, i))
            .collect();
        db.append("tx", &batch).unwrap();
        db.checkpoint().unwrap();
        let answers = times
            .iter()
            .map(|&t| db.as_of("hot", &names, t).unwrap())
            .collect();
        db.close().unwrap();
        answers
    };
    {
        let store = StateStore::open(&dir.path().join("state"), &StateOptions::default()).unwrap();
        let sizes: Vec<usize> = store
            .scan_prefix(Table::Events, &[])
            .map(|item| item.unwrap().1.len())
            .collect();
        assert!(
            sizes.len() >= 10,
            "5,000 rows in chunks of ≤ 512: {} chunks",
            sizes.len()
        );
        let largest = sizes.iter().max().unwrap();
        assert!(*largest < 64 << 10, "largest chunk {largest} bytes");
    }
    let db = Db::open(dir.path(), options()).unwrap();
    let after: Vec<_> = times
        .iter()
        .map(|&t| db.as_of("hot", &names, t).unwrap())
        .collect();
    assert_eq!(before, after);
    assert_eq!(after[2].get("count_life"), Some(&Value::Int(5_000)));
}

/// Ingest does not grow with history either: an append to an entity that is not in memory
/// does not read its history, and once checkpointed the entity holds nothing in memory; the
/// first query then reads the whole history, merged with the new events, exactly.
#[test]
fn appends_to_cold_entities_do_not_load_their_history() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            cache_bytes_max: 1,
            ..options()
        },
    )
    .unwrap();
    db.apply(DEFS).unwrap();
    load(&db, "cold", 20_000);
    db.as_of("cold", &["count_life"], END).unwrap();
    // What the history holds in memory at the least: a page row of five words per event
    // (time, LSN, two cells, the null mask). Not measured here: the background
    // checkpointer, woken by the read, may already be evicting it.
    let loaded = 20_000 * 5 * 8;
    // One checkpoint sweeps twice: the first clears the "recently used" mark, the second
    // evicts.
    db.checkpoint().unwrap();
    assert_eq!(db.cache_stats().entities_in_memory, 0);

    db.append("tx", &[event("cold", END - DAY / 2, 7)]).unwrap();
    let appended = db.cache_stats().bytes_held;
    assert!(
        appended * 50 < loaded,
        "one event appended to a cold entity holds {appended} bytes; its history {loaded}"
    );
    db.checkpoint().unwrap();
    let persisted = db.cache_stats().bytes_held;
    assert!(
        persisted <= appended,
        "{persisted} bytes after the checkpoint"
    );

    // Read back under the default budget: with a budget of one byte, the checkpointer
    // (woken by the read) may evict the history before it is measured.
    drop(db);
    let db = Db::open(dir.path(), options()).unwrap();
    let row = db.as_of("cold", &["count_life", "count_1d"], END).unwrap();
    assert_eq!(row.values, [Value::Int(22_001), Value::Int(200)]);
    assert!(
        db.cache_stats().bytes_held > 50 * appended,
        "the history is in memory now"
    );
}

/// A partial state exists to hold unpersisted events: once a checkpoint has persisted
/// them it leaves memory (well under the budget, so not by eviction), and the entity
/// reads back whole.
#[test]
fn appends_to_cold_entities_leave_nothing_in_memory_after_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    db.apply(DEFS).unwrap();
    let events: Vec<_> = (0..100)
        .map(|i| event(&format!("e{i}"), END - DAY / 2, i))
        .collect();
    db.append("tx", &events).unwrap();
    assert_eq!(db.cache_stats().entities_in_memory, 100);
    db.checkpoint().unwrap();
    assert_eq!(db.cache_stats().entities_in_memory, 0);
    assert_eq!(db.cache_stats().evicted, 0, "not evicted: forgotten");
    db.append("tx", &[event("e7", END - DAY / 4, 1000)])
        .unwrap();
    let row = db.as_of("e7", &["count_life", "count_1d"], END).unwrap();
    assert_eq!(row.values, [Value::Int(2), Value::Int(2)]);
    // The memory outside the budget is reported too (this stream has no id field).
    let cache = db.cache_stats();
    assert_eq!(cache.event_ids, 0);
    assert!(cache.state_store_bytes > 0, "{cache:?}");
}

/// Reads of cold entities do not outgrow the cache budget until the next checkpoint
/// interval: once they have loaded an eighth of it, they wake the evictor.
#[test]
fn reads_of_cold_entities_stay_near_the_cache_budget() {
    const BUDGET: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            cache_bytes_max: BUDGET,
            // Only reads can trigger an eviction pass in this test.
            checkpoint_interval_ms: 3_600_000,
            ..options()
        },
    )
    .unwrap();
    db.apply(DEFS).unwrap();
    let entities: Vec<String> = (0..300).map(|e| format!("e{e}")).collect();
    for entity in &entities {
        let batch: Vec<Event> = (0..400)
            .map(|i| event(entity, END - DAY + i * 1000, i))
            .collect();
        db.append("tx", &batch).unwrap();
    }
    db.checkpoint().unwrap();
    let after_ingest = db.cache_stats().bytes_held;
    assert!(
        after_ingest < 64 << 10,
        "appends keep no history: {after_ingest} bytes"
    );

    let names = ["count_1h", "sum_1h", "distinct_1h"];
    for entity in &entities {
        db.latest(entity, &names).unwrap();
        std::thread::yield_now();
    }
    // Bounded wait for the last pass woken by the reads to finish.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let held = loop {
        let cache = db.cache_stats();
        if cache.evicted > 0 && cache.bytes_held <= 2 * BUDGET {
            break cache.bytes_held;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reads of 300 cold entities left {cache:?} with a budget of {BUDGET}"
        );
        db.latest(&entities[0], &names).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(held <= 2 * BUDGET);
}

/// A replay (here: the state deleted, rebuilt from the log on open) leaves memory as ingest
/// does: the entities its checkpoints persisted leave memory, rather than every entity it
/// touched staying.
#[test]
fn a_replay_keeps_to_the_cache_budget() {
    let dir = tempfile::tempdir().unwrap();
    let tiny_cache = || Options {
        cache_bytes_max: 1,
        ..options()
    };
    let db = Db::open(dir.path(), tiny_cache()).unwrap();
    db.apply(DEFS).unwrap();
    for entity in 0..20 {
        load(&db, &format!("e{entity}"), 100);
    }
    let expected = db.as_of("e7", &["count_life"], END).unwrap();
    db.close().unwrap();
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();

    let db = Db::open(dir.path(), tiny_cache()).unwrap();
    assert!(db.open_report().replayed > 20 * 2_100);
    assert_eq!(db.cache_stats().entities_in_memory, 0);
    assert_eq!(db.as_of("e7", &["count_life"], END).unwrap(), expected);
}
