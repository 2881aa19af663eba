//! A deterministic generator of definitions and events for the property tests and the
//! engine-model fuzz target (`fuzz/fuzz_targets/engine_model.rs` includes this file): two
//! streams, every aggregation over windows from 1 ms to lifetime, `where` filters, and events
//! with ties, clusters, nulls and repeated ids. It depends on nothing but fsdb's public API.

use fsdb::agg::AggKind;
use serde_json::json;

/// A tiny deterministic generator (splitmix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

pub const STREAMS: &str = r#"
[[stream]]
name = "tx"
entity = "card"
time = "ts"
id = "id"
[stream.fields]
amount = "float"
qty = "int"
merchant = "string"
ok = "bool"

[[stream]]
name = "clk"
entity = "user"
time = "ts"
[stream.fields]
page = "string"
dwell = "int"
"#;

/// Windows from 1 ms to lifetime, relative to the generated time span (~200 s).
const WINDOWS: [Option<&str>; 7] = [
    Some("1ms"),
    Some("7ms"),
    Some("1s"),
    Some("15s"),
    Some("1m"),
    Some("1h"),
    None,
];
const FILTERS: [Option<&str>; 4] = [
    None,
    Some("ok == true"),
    Some("amount > 10 and not (merchant == \"m1\")"),
    Some("qty >= 2 or ok == false"),
];

/// A definitions file with every aggregation over several windows and filters.
pub fn features(rng: &mut Rng, prefix: &str, count: usize) -> String {
    let mut text = String::new();
    for i in 0..count {
        let agg = AggKind::ALL[i % AggKind::ALL.len()];
        let (stream, field) = match agg {
            AggKind::Count if rng.chance(30) => ("clk", None),
            AggKind::Count => (
                "tx",
                if rng.chance(50) {
                    Some("merchant")
                } else {
                    None
                },
            ),
            AggKind::Sum | AggKind::Avg | AggKind::Variance | AggKind::Stddev => {
                ("tx", Some(*rng.pick(&["amount", "qty"])))
            }
            AggKind::Min | AggKind::Max | AggKind::First | AggKind::Last | AggKind::LastN => {
                if rng.chance(25) {
                    ("clk", Some("page"))
                } else {
                    ("tx", Some(*rng.pick(&["amount", "qty", "merchant", "ok"])))
                }
            }
            AggKind::CountDistinct | AggKind::ApproxCountDistinct => {
                ("tx", Some(*rng.pick(&["merchant", "amount", "qty"])))
            }
        };
        text.push_str(&format!(
            "[[feature]]\nname = \"{prefix}{i}_{}\"\nstream = \"{stream}\"\nagg = \"{}\"\n",
            agg.name(),
            agg.name()
        ));
        if let Some(field) = field {
            text.push_str(&format!("field = \"{field}\"\n"));
        }
        if agg == AggKind::LastN {
            text.push_str(&format!("n = {}\n", 1 + rng.below(5)));
        }
        if let Some(window) = rng.pick(&WINDOWS) {
            text.push_str(&format!("window = \"{window}\"\n"));
        }
        if stream == "tx"
            && let Some(filter) = rng.pick(&FILTERS)
        {
            text.push_str(&format!("where = {}\n", toml_string(filter)));
        }
        if rng.chance(15) {
            text.push_str(&format!(
                "freshness = \"{}\"\n",
                rng.pick(&["1s", "10s", "1m"])
            ));
        }
    }
    text
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub const BASE: i64 = 1_772_366_400_000;
pub const ENTITIES: [&str; 4] = ["a", "b", "c", "d"];

/// A batch of events with clustered, out-of-order and tied times, nulls and repeated ids.
pub fn batch(
    rng: &mut Rng,
    stream: &str,
    len: usize,
    recent_times: &mut Vec<i64>,
) -> Vec<serde_json::Value> {
    (0..len)
        .map(|_| {
            let time = if !recent_times.is_empty() && rng.chance(25) {
                *rng.pick(recent_times) // an exact tie
            } else if rng.chance(70) {
                BASE + rng.below(200_000) as i64
            } else {
                BASE + 100_000 + rng.below(2_000) as i64 // a dense cluster (deep tiles)
            };
            recent_times.push(time);
            let entity = if rng.chance(60) { "a" } else { *rng.pick(&ENTITIES) };
            let null = |rng: &mut Rng| rng.chance(15);
            if stream == "tx" {
                let amount = *rng.pick(&[0.1, 0.2, 0.3, -0.0, 12.5, 3.25, 1e15, -7.75, 10.0, 10.000001, 99.99]);
                json!({
                    "card": entity,
                    "ts": time,
                    "id": format!("id{}", rng.below(400)),
                    "amount": if null(rng) { serde_json::Value::Null } else { json!(amount) },
                    "qty": if null(rng) { serde_json::Value::Null } else { json!(rng.below(7) as i64 - 2) },
                    "merchant": if null(rng) { serde_json::Value::Null } else { json!(format!("m{}", rng.below(6))) },
                    "ok": if null(rng) { serde_json::Value::Null } else { json!(rng.chance(50)) },
                })
            } else {
                json!({
                    "user": entity,
                    "ts": time,
                    "page": if null(rng) { serde_json::Value::Null } else { json!(format!("/p{}", rng.below(9))) },
                    "dwell": rng.below(1000),
                })
            }
        })
        .collect()
}
