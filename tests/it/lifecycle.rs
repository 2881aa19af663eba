//! Feature lifecycle and freshness routing: batch features stay off the ingest path and are
//! materialised in the background with the realtime value at their period start; features
//! are removed (and their names reused) durably, also while queries run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fsdb::time::ManualClock;
use fsdb::{Db, Durability, Error, MaterializeReport, Options, Value};
use serde_json::json;

const STREAM: &str = r#"
[[stream]]
name = "tx"
entity = "card"
time = "ts"
id = "id"
[stream.fields]
amount = "float"
"#;

/// The same count and sum, realtime and batch (freshness 1m).
const FEATURES: &str = r#"
[[feature]]
name = "n_rt"
stream = "tx"
agg = "count"
window = "1h"
[[feature]]
name = "n_1m"
stream = "tx"
agg = "count"
window = "1h"
freshness = "1m"
[[feature]]
name = "sum_rt"
stream = "tx"
agg = "sum"
field = "amount"
[[feature]]
name = "sum_1m"
stream = "tx"
agg = "sum"
field = "amount"
freshness = "1m"
"#;

const PERIOD: i64 = 60_000;
/// Mid-period, so that there are events on both sides of the period start.
const NOW: i64 = 1_800_000_000_000 + 30_000;
const BOUNDARY: i64 = NOW / PERIOD * PERIOD;

fn open(dir: &std::path::Path, clock: &Arc<ManualClock>, materialize_interval_ms: u64) -> Db {
    let options = Options {
        durability: Durability::NoSync,
        clock: Arc::clone(clock) as Arc<dyn fsdb::time::Clock>,
        materialize_interval_ms,
        ..Options::default()
    };
    Db::open(dir, options).unwrap()
}

fn events(entities: usize, times: &[i64], tag: &str) -> Vec<serde_json::Value> {
    (0..entities)
        .flat_map(|e| {
            times.iter().enumerate().map(move |(i, &t)| {
                json!({"card": format!("c{e}"), "ts": t, "id": format!("{tag}-{e}-{i}"), "amount": 1.5 + i as f64})
            })
        })
        .collect()
}

/// Every batch feature's `latest` equals its realtime twin as of the period start.
fn assert_batch_equals_realtime_at_boundary(db: &Db, now: i64, entities: usize) {
    let boundary = now.div_euclid(PERIOD) * PERIOD;
    for e in 0..entities {
        let entity = format!("c{e}");
        let batch = db.latest(&entity, &["n_1m", "sum_1m"]).unwrap();
        let realtime = db.as_of(&entity, &["n_rt", "sum_rt"], boundary).unwrap();
        assert_eq!(batch.values, realtime.values, "{entity} at {now}");
    }
}

#[test]
fn batch_features_stay_off_the_ingest_path() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let db = open(dir.path(), &clock, 0);
    db.apply(&format!("{STREAM}{FEATURES}")).unwrap();
    let entities = 10;
    db.append_json(
        "tx",
        &events(entities, &[BOUNDARY - 40_000, BOUNDARY - 1], "old"),
    )
    .unwrap();

    // Before the materialiser ran, reads compute the value themselves.
    assert_batch_equals_realtime_at_boundary(&db, NOW, entities);
    let nothing_to_do = MaterializeReport {
        entities,
        values: 0,
    };
    // `latest` remembered what it computed: nothing left to materialise.
    assert_eq!(db.materialize().unwrap(), nothing_to_do);

    // Events after the period start do not touch batch values...
    db.append_json("tx", &events(entities, &[BOUNDARY + 1, NOW], "now"))
        .unwrap();
    assert_eq!(db.materialize().unwrap(), nothing_to_do);
    assert_batch_equals_realtime_at_boundary(&db, NOW, entities);
    let realtime = db.latest("c0", &["n_rt"]).unwrap();
    assert_eq!(
        realtime.values,
        [Value::Int(4)],
        "realtime sees them at once"
    );
    let batch = db.latest("c0", &["n_1m"]).unwrap();
    assert_eq!(batch.values, [Value::Int(2)]);

    // ...a late event at or before it does, for its entity only (at the period start
    // itself: the window is `(start - 1h, start]`).
    db.append_json("tx", &events(1, &[BOUNDARY], "late"))
        .unwrap();
    assert_eq!(db.materialize().unwrap().values, 2);
    assert_eq!(db.latest("c0", &["n_1m"]).unwrap().values, [Value::Int(3)]);
    assert_batch_equals_realtime_at_boundary(&db, NOW, entities);

    // A new period: every entity's batch values are computed again, once.
    let next = BOUNDARY + PERIOD + 1;
    clock.set(next);
    assert_eq!(db.materialize().unwrap().values, 2 * entities);
    assert_eq!(db.materialize().unwrap().values, 0);
    assert_eq!(db.latest("c0", &["n_1m"]).unwrap().values, [Value::Int(5)]);
    assert_batch_equals_realtime_at_boundary(&db, next, entities);

    // Across a restart (nothing remembered survives it; the values do).
    db.close().unwrap();
    let db = open(dir.path(), &clock, 0);
    assert_batch_equals_realtime_at_boundary(&db, next, entities);
}

#[test]
fn the_background_materialiser_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let db = open(dir.path(), &clock, 5);
    db.apply(&format!("{STREAM}{FEATURES}")).unwrap();
    let entities = 20;
    db.append_json("tx", &events(entities, &[BOUNDARY - 5, BOUNDARY], "a"))
        .unwrap();
    // Entities only appended to are not read back into memory by the materialiser; a read
    // brings each in.
    for entity in 0..entities {
        db.latest(&format!("c{entity}"), &["n_rt"]).unwrap();
    }
    clock.set(BOUNDARY + PERIOD);
    // Wait (bounded) for the background passes to compute both batch values of every
    // entity; then a pass of our own finds nothing left.
    let deadline = Instant::now() + Duration::from_secs(10);
    while db.cache_stats().materialized < 2 * entities as u64 {
        assert!(
            Instant::now() < deadline,
            "the materialiser did not catch up"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(db.materialize().unwrap().values, 0);
    assert_batch_equals_realtime_at_boundary(&db, BOUNDARY + PERIOD, entities);
}

fn copy_log(from: &std::path::Path, to: &std::path::Path) {
    let log = to.join("log");
    std::fs::create_dir_all(&log).unwrap();
    for entry in std::fs::read_dir(from.join("log")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), log.join(entry.file_name())).unwrap();
    }
}

/// A database with the stream and features above, and three entities (`c0` – `c2`) with
/// three events each just before `NOW`.
fn open_with_three_events(dir: &std::path::Path, clock: &Arc<ManualClock>) -> Db {
    let db = open(dir, clock, 0);
    db.apply(&format!("{STREAM}{FEATURES}")).unwrap();
    db.append_json("tx", &events(3, &[NOW - 3, NOW - 2, NOW - 1], "x"))
        .unwrap();
    db
}

#[test]
fn removed_features_are_gone_and_their_names_reusable() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let db = open_with_three_events(dir.path(), &clock);
    let sums = db.latest("c1", &["sum_rt"]).unwrap();
    // Asked for before the removal: the query's plan is kept, and must not outlive it.
    assert_eq!(db.latest("c1", &["n_rt"]).unwrap().values, [Value::Int(3)]);

    assert!(matches!(
        db.remove_features(&["n_rt", "nope"]),
        Err(Error::UnknownFeature(name)) if name == "nope"
    ));
    assert_eq!(db.feature_names().len(), 4, "nothing removed");
    assert_eq!(
        db.remove_features(&["n_rt", "n_rt", "n_1m"]).unwrap(),
        ["n_rt", "n_1m"]
    );
    assert!(matches!(
        db.latest("c1", &["n_rt"]),
        Err(Error::UnknownFeature(name)) if name == "n_rt"
    ));
    assert_eq!(db.latest("c1", &["sum_rt"]).unwrap(), sums);

    // The name is free: a different definition computes from the stream's history.
    let again =
        "[[feature]]\nname = \"n_rt\"\nstream = \"tx\"\nagg = \"max\"\nfield = \"amount\"\n";
    assert_eq!(db.apply(again).unwrap().added_features, ["n_rt"]);
    assert_eq!(
        db.latest("c1", &["n_rt"]).unwrap().values,
        [Value::Float(3.5)]
    );
    let names = db.feature_names();
    assert_eq!(names, ["sum_rt", "sum_1m", "n_rt"]);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let values = db.latest("c1", &names).unwrap();
    let digest = db.state_digest().unwrap();
    db.close().unwrap();

    // Reopened, and replayed from the log alone: the same catalog, values and state.
    let db = open(dir.path(), &clock, 0);
    assert_eq!(db.feature_names(), names);
    assert_eq!(db.latest("c1", &names).unwrap(), values);
    let fresh = tempfile::tempdir().unwrap();
    copy_log(dir.path(), fresh.path());
    let replayed = open(fresh.path(), &clock, 0);
    assert_eq!(replayed.open_report().state_lsn, 0);
    assert_eq!(replayed.feature_names(), names);
    assert_eq!(replayed.latest("c1", &names).unwrap(), values);
    assert_eq!(replayed.state_digest().unwrap(), digest);
}

/// Plans are kept per list of names asked for, a few hundred lists at most (then the cache
/// starts over): a thousand lists of five names, with repeats and in every order, each
/// answered with every name's own value, twice.
#[test]
fn every_list_of_names_gets_its_own_values() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let db = open_with_three_events(dir.path(), &clock);
    let names = ["n_rt", "n_1m", "sum_rt", "sum_1m"];
    let own: Vec<Value> = names
        .iter()
        .map(|name| db.as_of("c1", &[name], NOW).unwrap().values[0].clone())
        .collect();
    for (i, a) in own.iter().enumerate() {
        assert!(!own[i + 1..].contains(a), "a mix-up must show: {own:?}");
    }
    for round in 0..2 {
        for code in 0..1024_usize {
            // Five names, two bits of the code each.
            let picks: Vec<usize> = (0..5).map(|i| code >> (2 * i) & 3).collect();
            let asked: Vec<&str> = picks.iter().map(|&p| names[p]).collect();
            let row = db.as_of("c1", &asked, NOW).unwrap();
            let expected: Vec<Value> = picks.iter().map(|&p| own[p].clone()).collect();
            assert_eq!(row.values, expected, "{asked:?}, round {round}");
            assert!(row.names.iter().eq(asked.iter()), "{asked:?}");
        }
    }
}

/// Readers racing removals and re-definitions (which move the other features' slots) get,
/// for each name, that feature's own value or "unknown feature" — never another's.
#[test]
fn queries_racing_removals_never_see_another_features_value() {
    const DEFS: [(&str, &str); 3] = [
        ("a", "agg = \"count\""),
        ("b", "agg = \"sum\"\nfield = \"amount\""),
        ("c", "agg = \"max\"\nfield = \"amount\""),
    ];
    let definition = |(name, body): (&str, &str)| {
        format!("[[feature]]\nname = \"{name}\"\nstream = \"tx\"\n{body}\n")
    };
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let db = Arc::new(open(dir.path(), &clock, 0));
    let all: String = DEFS.iter().map(|&d| definition(d)).collect();
    db.apply(&format!("{STREAM}{all}")).unwrap();
    // Many entities, so that a batch query spans several of the writer's changes.
    let entities = 300;
    db.append_json("tx", &events(entities, &[NOW - 2, NOW - 1], "r"))
        .unwrap();
    let names: Vec<String> = (0..entities).map(|e| format!("c{e}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let expected = [Value::Int(2), Value::Float(1.5 + 2.5), Value::Float(2.5)];

    let writer = {
        let db = Arc::clone(&db);
        std::thread::spawn(move || {
            for round in 0..90 {
                let def = DEFS[round % DEFS.len()];
                db.remove_features(&[def.0]).unwrap();
                std::thread::sleep(Duration::from_micros(300));
                db.apply(&definition(def)).unwrap();
                std::thread::sleep(Duration::from_micros(300));
            }
        })
    };
    let mut answered = 0;
    for _ in 0..100_000 {
        if writer.is_finished() {
            break;
        }
        match db.as_of_many(&names, &["a", "b", "c"], NOW) {
            Ok(rows) => {
                for row in rows {
                    assert_eq!(row.values, expected, "{}", row.entity);
                }
                answered += 1;
            }
            Err(Error::UnknownFeature(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    writer.join().unwrap();
    assert!(answered > 0);
    assert_eq!(db.latest("c0", &["a", "b", "c"]).unwrap().values, expected);
}
