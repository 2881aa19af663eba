//! The reference workload (DESIGN §5): a deterministic generator of realistic events, the
//! twelve features benchmarks and the demo use, and spines for training sets.
//!
//! - streams `transactions` (key `card_id`, id `txn_id`) and `clicks` (key `user_id`);
//!   customers are keyed `cust<N>` in both, so one entity has features on both streams;
//! - entity popularity is Zipf-like (exponent 1.0);
//! - 30 days of event time, in arrival order; about 1% of events arrive late by up to 1 h,
//!   about 0.1% are retries of an earlier transaction (same `txn_id`);
//! - everything follows from the seed: the same spec generates the same events.

use crate::event::Event;
use crate::value::Value;

pub mod history;

/// The definitions of the reference workload: two streams, twelve features over
/// 1m/1h/1d/7d/lifetime windows, some filtered, two batch (`freshness = "1d"`).
pub const DEFINITIONS: &str = r#"
[[stream]]
name   = "transactions"
entity = "card_id"
time   = "ts"
id     = "txn_id"
[stream.fields]
amount   = "float"
merchant = "string"
city     = "string"
approved = "bool"

[[stream]]
name   = "clicks"
entity = "user_id"
time   = "ts"
[stream.fields]
page     = "string"
dwell_ms = "int"

[[feature]]
name   = "card_txn_count_1m"
stream = "transactions"
agg    = "count"
window = "1m"

[[feature]]
name   = "card_txn_count_1h"
stream = "transactions"
agg    = "count"
window = "1h"

[[feature]]
name   = "card_amount_sum_1d"
stream = "transactions"
agg    = "sum"
field  = "amount"
window = "1d"
where  = "approved == true"

[[feature]]
name   = "card_amount_avg_7d"
stream = "transactions"
agg    = "avg"
field  = "amount"
window = "7d"

[[feature]]
name   = "card_amount_max_1d"
stream = "transactions"
agg    = "max"
field  = "amount"
window = "1d"

[[feature]]
name   = "card_amount_min_7d"
stream = "transactions"
agg    = "min"
field  = "amount"
window = "7d"
where  = "approved == true"

[[feature]]
name   = "card_last_city"
stream = "transactions"
agg    = "last"
field  = "city"

[[feature]]
name   = "card_merchants_7d"
stream = "transactions"
agg    = "count_distinct"
field  = "merchant"
window = "7d"

[[feature]]
name   = "card_amount_stddev_7d"
stream = "transactions"
agg    = "stddev"
field  = "amount"
window = "7d"

[[feature]]
name      = "card_txn_count_lifetime"
stream    = "transactions"
agg       = "count"
freshness = "1d"

[[feature]]
name   = "user_clicks_1h"
stream = "clicks"
agg    = "count"
window = "1h"

[[feature]]
name      = "user_pages_1d"
stream    = "clicks"
agg       = "count_distinct"
field     = "page"
window    = "1d"
freshness = "1d"
"#;

/// The twelve feature names, in definition order.
pub const FEATURES: [&str; 12] = [
    "card_txn_count_1m",
    "card_txn_count_1h",
    "card_amount_sum_1d",
    "card_amount_avg_7d",
    "card_amount_max_1d",
    "card_amount_min_7d",
    "card_last_city",
    "card_merchants_7d",
    "card_amount_stddev_7d",
    "card_txn_count_lifetime",
    "user_clicks_1h",
    "user_pages_1d",
];

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;
/// 2026-01-01T00:00:00Z: where the reference scales start.
pub const START_MS: i64 = 1_767_225_600_000;

/// What to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadSpec {
    pub events: u64,
    pub entities: u64,
    /// The first event time (epoch ms); events span `days` from there.
    pub start_ms: i64,
    pub days: i64,
    pub seed: u64,
}

impl WorkloadSpec {
    /// Scale S: 1M events, 10k entities.
    pub const S: WorkloadSpec = WorkloadSpec {
        events: 1_000_000,
        entities: 10_000,
        start_ms: START_MS,
        days: 30,
        seed: 42,
    };
    /// Scale M: 10M events, 100k entities.
    pub const M: WorkloadSpec = WorkloadSpec {
        events: 10_000_000,
        entities: 100_000,
        start_ms: START_MS,
        days: 30,
        seed: 42,
    };
    /// The demo: 200k events, 2k entities.
    pub const DEMO: WorkloadSpec = WorkloadSpec {
        events: 200_000,
        entities: 2_000,
        start_ms: START_MS,
        days: 30,
        seed: 7,
    };

    pub fn by_name(name: &str) -> Option<WorkloadSpec> {
        match name.to_ascii_lowercase().as_str() {
            "s" => Some(Self::S),
            "m" => Some(Self::M),
            "demo" => Some(Self::DEMO),
            _ => None,
        }
    }

    /// The end of the generated event time.
    pub fn end_ms(&self) -> i64 {
        self.start_ms + self.days * DAY_MS
    }

    pub fn generator(&self) -> Generator {
        Generator::new(*self)
    }
}

/// Which stream an event belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Transactions,
    Clicks,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Transactions => "transactions",
            Stream::Clicks => "clicks",
        }
    }
}

/// splitmix64: small, fast, and the same everywhere.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = self.unit().max(1e-300);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Zipf sampling over ranks `0..n` by inverse CDF.
#[derive(Clone, Debug)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: u64, exponent: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n as usize);
        let mut total = 0.0;
        for k in 1..=n {
            total += 1.0 / (k as f64).powf(exponent);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1) as u64
    }
}

/// The events of a [`WorkloadSpec`], in arrival order.
#[derive(Debug)]
pub struct Generator {
    spec: WorkloadSpec,
    rng: Rng,
    customers: Zipf,
    merchants: Zipf,
    cities: Zipf,
    pages: Zipf,
    produced: u64,
    next_txn: u64,
    /// Recent transactions, for retries.
    recent: Vec<(String, Event)>,
}

const CITIES: [&str; 12] = [
    "Lyon", "Paris", "Berlin", "Madrid", "Milan", "Lisbon", "Vienna", "Prague", "Warsaw", "Dublin",
    "Oslo", "Athens",
];

impl Generator {
    fn new(spec: WorkloadSpec) -> Generator {
        Generator {
            rng: Rng::new(spec.seed),
            customers: Zipf::new(spec.entities, 1.0),
            merchants: Zipf::new(500, 1.1),
            cities: Zipf::new(CITIES.len() as u64, 1.2),
            pages: Zipf::new(200, 1.0),
            produced: 0,
            next_txn: 0,
            recent: Vec::new(),
            spec,
        }
    }

    /// The entity key of customer `rank`.
    pub fn customer(rank: u64) -> String {
        format!("cust{rank}")
    }
}

impl Iterator for Generator {
    type Item = (Stream, Event);

    fn next(&mut self) -> Option<(Stream, Event)> {
        if self.produced >= self.spec.events {
            return None;
        }
        let i = self.produced;
        self.produced += 1;
        let rng = &mut self.rng;
        let span = self.spec.days * DAY_MS;
        let mut time = self.spec.start_ms
            + (i as i128 * span as i128 / self.spec.events as i128) as i64
            + rng.below(1000) as i64;
        if rng.below(1000) < 10 {
            time -= rng.below(HOUR_MS as u64) as i64; // about 1% late, by up to an hour
        }
        if rng.below(1000) == 0 && !self.recent.is_empty() {
            // About 0.1%: a client retry of a recent transaction (same id, same content).
            let (_, event) = &self.recent[rng.below(self.recent.len() as u64) as usize];
            return Some((Stream::Transactions, event.clone()));
        }
        let entity = Self::customer(self.customers.sample(rng));
        if rng.below(10) < 7 {
            let amount = ((3.0 + rng.normal()).exp() * 100.0).round() / 100.0;
            let merchant = format!("m{}", self.merchants.sample(rng));
            let city = CITIES[self.cities.sample(rng) as usize];
            let approved = rng.below(100) < 97;
            self.next_txn += 1;
            let txn_id = format!("t{}", self.next_txn);
            // Fields in name order: amount, approved, city, merchant.
            let event = Event {
                entity,
                time_ms: time,
                id: Some(txn_id.clone()),
                values: vec![
                    Value::Float(amount),
                    Value::Bool(approved),
                    Value::String(city.into()),
                    Value::String(merchant),
                ],
            };
            if self.recent.len() < 1024 {
                self.recent.push((txn_id, event.clone()));
            } else {
                let slot = rng.below(1024) as usize;
                self.recent[slot] = (txn_id, event.clone());
            }
            Some((Stream::Transactions, event))
        } else {
            let page = format!("/p/{}", self.pages.sample(rng));
            let dwell = 100 + rng.below(60_000) as i64;
            // Fields in name order: dwell_ms, page.
            Some((
                Stream::Clicks,
                Event {
                    entity,
                    time_ms: time,
                    id: None,
                    values: vec![Value::Int(dwell), Value::String(page)],
                },
            ))
        }
    }
}

/// The JSON object of a generated event, as a user would send it.
/// The query time of the "`latest` under ingest" phase of the benchmark and profiles: half
/// an hour past the workload's last hour boundary.
pub fn live_now(spec: &WorkloadSpec) -> i64 {
    spec.end_ms() / 3_600_000 * 3_600_000 + 1_800_000
}

/// Round `round` of that phase: 1,000 current transactions (1 ms apart, ending before
/// [`live_now`]) for customers drawn from `customers`.
pub fn live_transactions(
    spec: &WorkloadSpec,
    round: i64,
    customers: &Zipf,
    rng: &mut Rng,
) -> Vec<Event> {
    let start = live_now(spec) - 1_000_000 + round * 1000;
    (0..1000i64)
        .map(|i| Event {
            entity: Generator::customer(customers.sample(rng)),
            time_ms: start + i,
            id: Some(format!("live{round}-{i}")),
            values: vec![
                Value::Float((i % 300) as f64),
                Value::Bool(true),
                Value::String("Lyon".into()),
                Value::String(format!("m{}", i % 40)),
            ],
        })
        .collect()
}

/// Append the events of `spec` to `db` (which has [`DEFINITIONS`]) in batches of up to
/// `batch_len` per stream, in generation order; the last, partial batches too.
pub fn append_all(db: &crate::Db, spec: &WorkloadSpec, batch_len: usize) -> crate::Result<()> {
    append_events(db, spec.generator(), batch_len)
}

/// [`append_all`] for events already generated (or any `(stream, event)` sequence).
pub fn append_events(
    db: &crate::Db,
    events: impl IntoIterator<Item = (Stream, Event)>,
    batch_len: usize,
) -> crate::Result<()> {
    for_each_batch(events, batch_len, |stream, batch| {
        db.append(stream.name(), &batch).map(|_| ())
    })
}

/// Cut `events` into batches of `batch_len` per stream, in generation order, and hand each
/// to `take` as it fills (the last, partial batches at the end; no empty batch).
fn for_each_batch<E>(
    events: impl IntoIterator<Item = (Stream, Event)>,
    batch_len: usize,
    mut take: impl FnMut(Stream, Vec<Event>) -> Result<(), E>,
) -> Result<(), E> {
    let (mut transactions, mut clicks) = (Vec::new(), Vec::new());
    for (stream, event) in events {
        let batch = match stream {
            Stream::Transactions => &mut transactions,
            Stream::Clicks => &mut clicks,
        };
        batch.push(event);
        if batch.len() >= batch_len {
            take(stream, std::mem::take(batch))?;
        }
    }
    for (stream, batch) in [
        (Stream::Transactions, transactions),
        (Stream::Clicks, clicks),
    ] {
        if !batch.is_empty() {
            take(stream, batch)?;
        }
    }
    Ok(())
}

/// Events cut into batches of `batch_len` per stream, in generation order (the last,
/// partial batches at the end), named by stream: for appending from several threads.
pub fn batches(
    events: impl IntoIterator<Item = (Stream, Event)>,
    batch_len: usize,
) -> Vec<(&'static str, Vec<Event>)> {
    let mut out = Vec::new();
    let done: Result<(), std::convert::Infallible> =
        for_each_batch(events, batch_len, |stream, batch| {
            out.push((stream.name(), batch));
            Ok(())
        });
    let Ok(()) = done;
    out
}

/// Append `batches` from `appenders` threads, batch i from thread i % `appenders` (so each
/// thread keeps generation order); returns the events accepted.
pub fn append_from_threads(
    db: &crate::Db,
    batches: &[(&'static str, Vec<Event>)],
    appenders: usize,
) -> crate::Result<u64> {
    let appenders = appenders.max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..appenders)
            .map(|w| {
                scope.spawn(move || {
                    let mut accepted = 0u64;
                    for (stream, batch) in batches.iter().skip(w).step_by(appenders) {
                        accepted += db.append(stream, batch)?.accepted as u64;
                    }
                    Ok(accepted)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("appender thread panicked"))
            .sum()
    })
}

pub fn event_json(stream: Stream, event: &Event) -> serde_json::Value {
    match stream {
        Stream::Transactions => serde_json::json!({
            "txn_id": event.id,
            "card_id": event.entity,
            "ts": crate::time::format_timestamp(event.time_ms),
            "amount": event.values[0].to_json(),
            "approved": event.values[1].to_json(),
            "city": event.values[2].to_json(),
            "merchant": event.values[3].to_json(),
        }),
        Stream::Clicks => serde_json::json!({
            "user_id": event.entity,
            "ts": event.time_ms,
            "dwell_ms": event.values[0].to_json(),
            "page": event.values[1].to_json(),
        }),
    }
}

/// `rows` (entity, time) pairs for a training set: Zipf-distributed customers at uniform
/// times within the workload's span, unsorted.
pub fn spine(spec: &WorkloadSpec, rows: u64, seed: u64) -> Vec<(String, i64)> {
    let mut rng = Rng::new(seed);
    let customers = Zipf::new(spec.entities, 1.0);
    let span = (spec.end_ms() - spec.start_ms) as u64;
    (0..rows)
        .map(|_| {
            let entity = Generator::customer(customers.sample(&mut rng));
            (entity, spec.start_ms + rng.below(span) as i64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator is deterministic and has the promised shape.
    #[test]
    fn shape() {
        let spec = WorkloadSpec {
            events: 100_000,
            entities: 1_000,
            start_ms: START_MS,
            days: 30,
            seed: 1,
        };
        let events: Vec<_> = spec.generator().collect();
        assert_eq!(events.len(), 100_000);
        let again: Vec<_> = spec.generator().take(1000).collect();
        assert_eq!(&events[..1000], &again[..]);
        let late = events
            .windows(2)
            .filter(|w| w[1].1.time_ms + 1000 < w[0].1.time_ms)
            .count();
        assert!((500..2000).contains(&late), "late events: {late}");
        let mut ids = std::collections::HashSet::new();
        let dups = events
            .iter()
            .filter(|(_, e)| e.id.as_ref().is_some_and(|id| !ids.insert(id.clone())))
            .count();
        assert!((50..200).contains(&dups), "duplicates: {dups}");
        let hottest = events.iter().filter(|(_, e)| e.entity == "cust0").count();
        assert!(hottest > 5_000, "Zipf head: {hottest}");
    }
}
