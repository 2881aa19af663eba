//! The work of one query does not grow with the entity's history: an entity with 1M events
//! over a year and one with 1k answer the same windows over the same recent events by
//! reading a bounded number of tile summaries and events, and lifetime windows over a
//! million events read a bounded number too.

use std::sync::Arc;

use fsdb::time::ManualClock;
use fsdb::{Db, Durability, Event, Options, QueryStats, Value};

const DEFS: &str = r#"
[[stream]]
name = "tx"
entity = "card"
time = "ts"
[stream.fields]
amount = "float"
merchant = "string"

[[feature]]
name = "count_1h"
stream = "tx"
agg = "count"
window = "1h"
[[feature]]
name = "count_1d"
stream = "tx"
agg = "count"
window = "1d"
[[feature]]
name = "count_7d"
stream = "tx"
agg = "count"
window = "7d"
[[feature]]
name = "count_life"
stream = "tx"
agg = "count"
[[feature]]
name = "sum_1h"
stream = "tx"
agg = "sum"
field = "amount"
window = "1h"
[[feature]]
name = "sum_7d"
stream = "tx"
agg = "sum"
field = "amount"
window = "7d"
[[feature]]
name = "avg_1d"
stream = "tx"
agg = "avg"
field = "amount"
window = "1d"
[[feature]]
name = "min_7d"
stream = "tx"
agg = "min"
field = "amount"
window = "7d"
[[feature]]
name = "max_7d"
stream = "tx"
agg = "max"
field = "amount"
window = "7d"
[[feature]]
name = "last_life"
stream = "tx"
agg = "last"
field = "merchant"
[[feature]]
name = "distinct_1h"
stream = "tx"
agg = "count_distinct"
field = "merchant"
window = "1h"
[[feature]]
name = "stddev_7d"
stream = "tx"
agg = "stddev"
field = "amount"
window = "7d"
"#;

const YEAR_MS: i64 = 365 * 86_400_000;
const END: i64 = 1_790_000_000_000;
const DAY: i64 = 86_400_000;

fn event(entity: &str, time_ms: i64, i: i64) -> Event {
    Event {
        entity: entity.into(),
        time_ms,
        id: None,
        values: vec![
            Value::Float((i % 1000) as f64 / 4.0),
            Value::String(format!("m{}", i % 37)),
        ],
    }
}

/// `history` events spread over the year before the last 10 days, then the same 2,000
/// events in the last 10 days for every entity.
fn load(db: &Db, entity: &str, history: i64) {
    let mut batch = Vec::new();
    let start = END - YEAR_MS;
    let span = YEAR_MS - 10 * DAY;
    for i in 0..history {
        batch.push(event(entity, start + i * (span / history), i));
        if batch.len() == 50_000 {
            db.append("tx", &batch).unwrap();
            batch.clear();
        }
    }
    for i in 0..2_000 {
        batch.push(event(entity, END - 10 * DAY + i * (10 * DAY / 2_000), i));
    }
    db.append("tx", &batch).unwrap();
}

fn work(db: &Db, entity: &str, names: &[&str], t: i64) -> QueryStats {
    // Run twice: the first query may compute (and cache) tile summaries.
    db.as_of_with_stats(entity, names, t).unwrap();
    db.as_of_with_stats(entity, names, t).unwrap().1
}

#[test]
fn query_work_is_bounded_by_window_shape_not_history() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        durability: Durability::NoSync,
        clock: Arc::new(ManualClock::new(END)),
        ..Options::default()
    };
    let db = Db::open(dir.path(), options).unwrap();
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

    // Lifetime over a million events: bounded by trie depth x fan-out, not by history.
    let lifetime = work(&db, "heavy", &["count_life", "last_life"], END);
    eprintln!("lifetime over 1M events: {lifetime:?}");
    assert!(
        lifetime.summaries + lifetime.events <= 16 * 15 * 2 + 2 * 64,
        "{lifetime:?}"
    );
    assert_eq!(
        db.as_of("heavy", &["count_life"], END)
            .unwrap()
            .get("count_life"),
        Some(&Value::Int(1_002_000))
    );
}
