//! A long history beside a short one: the workload that shows a query's work does not grow
//! with the entity's history (`tests/it/bounded_work.rs` counts what a query reads,
//! `benches/history.rs` times it).
//!
//! One stream `tx` (key `card`), twelve features over 1h/1d/7d/lifetime windows. An entity
//! loaded with [`load`] gets `history` events spread evenly over the year before the last
//! 10 days, then the same 2,000 events in the last 10 days as every other entity: windows
//! ending in those 10 days hold the same events whatever the history.

use crate::event::Event;
use crate::value::Value;

/// The stream and its twelve features.
pub const DEFINITIONS: &str = r#"
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

/// The end of the history (the clock's "now" for it).
pub const END_MS: i64 = 1_790_000_000_000;
pub const DAY_MS: i64 = 86_400_000;
pub const YEAR_MS: i64 = 365 * DAY_MS;
/// Events every entity has in the last 10 days before [`END_MS`].
pub const RECENT_EVENTS: i64 = 2_000;
/// Where those recent events start.
pub const RECENT_START_MS: i64 = END_MS - 10 * DAY_MS;

/// The `i`-th event of `entity`, at `time_ms`.
pub fn event(entity: &str, time_ms: i64, i: i64) -> Event {
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

/// Append to `db` (which has [`DEFINITIONS`]) `history` events of `entity` spread over the
/// year before the last 10 days, then [`RECENT_EVENTS`] in the last 10 days.
pub fn load(db: &crate::Db, entity: &str, history: i64) -> crate::Result<()> {
    let mut batch = Vec::new();
    let start = END_MS - YEAR_MS;
    let span = YEAR_MS - 10 * DAY_MS;
    for i in 0..history {
        batch.push(event(entity, start + i * (span / history), i));
        if batch.len() == 50_000 {
            db.append("tx", &batch)?;
            batch.clear();
        }
    }
    for i in 0..RECENT_EVENTS {
        let at = RECENT_START_MS + i * (10 * DAY_MS / RECENT_EVENTS);
        batch.push(event(entity, at, i));
    }
    db.append("tx", &batch)?;
    Ok(())
}
