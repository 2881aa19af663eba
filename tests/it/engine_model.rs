//! The engine model: arbitrary bytes read as a sequence of operations on a database — appends
//! (with ties, late events, nulls, repeated ids), rejected batches, `as_of` and `latest` at
//! chosen times, reopen, checkpoint with eviction, materialiser passes, late feature
//! definitions, replay into a fresh directory — each checked against the naive reference.
//!
//! The cargo-fuzz target `engine_model` includes this file (with `generate.rs` and
//! `reference.rs`) and lets libFuzzer choose the bytes; `fuzz_corpus.rs` replays its saved
//! corpus on stable. It panics, naming the operation, on any difference.

use std::sync::Arc;

use fsdb::catalog::parse_definitions;
use fsdb::time::{Clock, ManualClock};
use fsdb::{Db, Durability, Options};
use serde_json::{Value as Json, json};

use crate::generate::{BASE, ENTITIES, Rng, STREAMS, features};
use crate::reference::{Reference, matches};

/// Operations per input: what is left of the input after this many is ignored.
const OPERATIONS_MAX: usize = 48;
/// Events per appended batch.
const BATCH_EVENTS_MAX: usize = 8;
/// Features defined up front (every aggregation appears; `generate::features`).
const FEATURES: usize = 16;
/// Distances from an event time that put a query on either side of a window edge
/// (windows are 1 ms, 7 ms, 1 s, 15 s, 1 min, 1 h or lifetime).
const EDGE_OFFSETS: [i64; 12] = [
    -1, 0, 1, 6, 7, 999, 1_000, 14_999, 15_000, 59_999, 60_000, 3_600_000,
];

/// The input, read one choice at a time; choices past its end are 0.
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    /// A time: on an earlier event (a tie) or the clock's now, near one (a window edge), or
    /// anywhere in the ~200 s the events span, sometimes far outside it.
    fn time(&mut self, reference: &Reference, now: i64) -> i64 {
        let known = |c: &mut Self| {
            let n = reference.events.len();
            (n > 0).then(|| reference.events[usize::from(c.u16()) % n].time)
        };
        match self.below(10) {
            0 => known(self).unwrap_or(BASE),
            1 | 2 => known(self).unwrap_or(BASE) + self.pick(&EDGE_OFFSETS),
            3 => now,
            4 => now + self.pick(&EDGE_OFFSETS) * if self.below(2) == 0 { 1 } else { -1 },
            5 => BASE - 1_000_000 + i64::from(self.u16()),
            6 => BASE + 10_000_000_000 + i64::from(self.u16()),
            _ => BASE + 3 * i64::from(self.u16()),
        }
    }

    fn nullable(&mut self, value: Json) -> Json {
        if self.below(6) == 0 {
            Json::Null
        } else {
            value
        }
    }

    fn event(&mut self, stream: &str, reference: &Reference, now: i64) -> Json {
        let entity = *self.pick(&ENTITIES);
        let time = self.time(reference, now);
        if stream == "tx" {
            let amount = *self.pick(&[
                0.1, 0.2, 0.3, -0.0, 12.5, 3.25, 1e15, -7.75, 10.0, 10.000001,
            ]);
            let qty = self.below(7) as i64 - 2;
            let merchant = format!("m{}", self.below(6));
            let ok = self.below(2) == 0;
            json!({
                "card": entity,
                "ts": time,
                "id": format!("id{}", self.below(24)),
                "amount": self.nullable(json!(amount)),
                "qty": self.nullable(json!(qty)),
                "merchant": self.nullable(json!(merchant)),
                "ok": self.nullable(json!(ok)),
            })
        } else {
            let page = format!("/p{}", self.below(9));
            json!({
                "user": entity,
                "ts": time,
                "page": self.nullable(json!(page)),
                "dwell": self.below(256),
            })
        }
    }

    fn batch(&mut self, stream: &str, reference: &Reference, now: i64) -> Vec<Json> {
        let len = 1 + self.below(BATCH_EVENTS_MAX);
        (0..len)
            .map(|_| self.event(stream, reference, now))
            .collect()
    }
}

/// One way to make an event invalid (each refused by `append`, per docs/semantics.md).
fn spoil(event: &mut Json, how: usize) {
    let object = event.as_object_mut().expect("generated events are objects");
    let (entity, field) = if object.contains_key("card") {
        ("card", "qty")
    } else {
        ("user", "dwell")
    };
    match how {
        0 => drop(object.remove(entity)),
        1 => drop(object.insert("ts".into(), json!("not a time"))),
        2 => drop(object.insert(field.into(), json!("seven"))),
        _ => drop(object.insert(entity.into(), json!(["an", "array"]))),
    }
}

struct Model {
    /// Declared before `dir`, because fields drop in declaration order: the database closes
    /// before its directory is removed. (The other way round, RocksDB's shutdown flush
    /// failed on the missing directory and waited a second before giving up: a second of
    /// every input.)
    db: Option<Db>,
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    evict_all: bool,
    reference: Reference,
    late_defined: bool,
}

impl Model {
    fn options(&self) -> Options {
        Options {
            durability: Durability::NoSync,
            clock: Arc::clone(&self.clock) as Arc<dyn fsdb::time::Clock>,
            checkpoint_events: 5,
            cache_bytes_max: if self.evict_all { 1 } else { 64 << 20 },
            materialize_interval_ms: 0,
            ..Options::default()
        }
    }

    fn db(&self) -> &Db {
        self.db.as_ref().expect("the model's database is open")
    }

    fn reopen(&mut self) {
        self.db.take().expect("open").close().expect("close");
        self.db = Some(Db::open(self.dir.path(), self.options()).expect("reopen"));
    }

    fn define(&mut self, text: &str) {
        self.db().apply(text).expect("apply definitions");
        self.reference
            .apply(&parse_definitions(text).expect("generated definitions parse"));
    }

    /// Every feature for `entity` as of `t` (`None`: `latest` at the clock's now) equals
    /// the reference's.
    fn check(&self, op: usize, entity: &str, t: Option<i64>) {
        let names: Vec<&str> = self
            .reference
            .features
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        let (row, at) = match t {
            Some(t) => (self.db().as_of(entity, &names, t), t),
            None => (self.db().latest(entity, &names), self.clock.now_ms()),
        };
        let row = row.unwrap_or_else(|e| panic!("op {op}: query for {entity:?} failed: {e}"));
        for (feature, (name, got)) in self.reference.features.iter().zip(row.iter()) {
            let expected = self.reference.value(name, entity, at);
            assert!(
                matches(feature.agg, got, &expected),
                "op {op}: {} {name} ({}) for {entity:?} at {at}: engine {got}, reference {expected}",
                if t.is_some() { "as_of" } else { "latest" },
                feature.agg.name(),
            );
        }
    }

    /// A database opened on a copy of the log alone has the same state digest.
    fn check_replay(&self, op: usize) {
        let copy = tempfile::tempdir().expect("a temporary directory");
        let log = copy.path().join("log");
        std::fs::create_dir_all(&log).expect("create log dir");
        for entry in std::fs::read_dir(self.dir.path().join("log")).expect("read log dir") {
            let entry = entry.expect("a directory entry");
            if entry.file_name() != "LOCK" {
                std::fs::copy(entry.path(), log.join(entry.file_name())).expect("copy segment");
            }
        }
        let replayed = Db::open(copy.path(), self.options()).expect("open the replay");
        assert_eq!(
            replayed.state_digest().expect("digest"),
            self.db().state_digest().expect("digest"),
            "op {op}: the state rebuilt from the log differs"
        );
    }
}

/// Run the operations `input` spells against a fresh database and the reference.
pub fn run(input: &[u8]) {
    let mut c = Choices(input);
    let seed = u64::from(c.u16());
    let clock = Arc::new(ManualClock::new(BASE + 150_000));
    let mut model = Model {
        db: None,
        dir: tempfile::tempdir().expect("a temporary directory"),
        clock,
        evict_all: c.below(2) == 1,
        reference: Reference::default(),
        late_defined: false,
    };
    model.db = Some(Db::open(model.dir.path(), model.options()).expect("open"));
    let first = format!(
        "{STREAMS}\n{}",
        features(&mut Rng::new(seed), "f", FEATURES)
    );
    model.define(&first);

    for op in 0..OPERATIONS_MAX {
        if c.0.is_empty() {
            break;
        }
        match c.below(12) {
            0..=3 => {
                let stream = if c.below(4) == 0 { "clk" } else { "tx" };
                let events = c.batch(stream, &model.reference, model.clock.now_ms());
                let report = model
                    .db()
                    .append_json(stream, &events)
                    .unwrap_or_else(|e| panic!("op {op}: a valid batch was refused: {e}"));
                let expected = model.reference.append(stream, &events);
                assert_eq!(
                    (report.accepted, report.duplicates),
                    expected,
                    "op {op}: (accepted, duplicates)"
                );
            }
            4 => {
                // Atomic refusal: nothing of the batch is visible, its ids stay free.
                let stream = if c.below(4) == 0 { "clk" } else { "tx" };
                let mut events = c.batch(stream, &model.reference, model.clock.now_ms());
                let bad = c.below(events.len());
                spoil(&mut events[bad], c.below(4));
                if model.db().append_json(stream, &events).is_ok() {
                    panic!("op {op}: a batch with a bad event at {bad} was accepted: {events:?}");
                }
            }
            5 | 6 => {
                let entity = if c.below(8) == 0 {
                    "never-seen"
                } else {
                    *c.pick(&ENTITIES)
                };
                let t = c.time(&model.reference, model.clock.now_ms());
                model.check(op, entity, Some(t));
            }
            7 | 8 => {
                // `latest`, at the same now again (what it remembered) or at a new one.
                if c.below(3) != 0 {
                    model
                        .clock
                        .set(c.time(&model.reference, model.clock.now_ms()));
                }
                for entity in ENTITIES {
                    model.check(op, entity, None);
                }
            }
            9 => match c.below(3) {
                0 => model.reopen(),
                1 => model.db().checkpoint().expect("checkpoint"),
                _ => drop(model.db().materialize().expect("materialize")),
            },
            10 if !model.late_defined => {
                // Features defined over events already stored are exact at once.
                model.late_defined = true;
                let late = features(&mut Rng::new(seed ^ 0x1A7E), "late", 6);
                model.define(&late);
            }
            _ => model.check_replay(op),
        }
    }
    for entity in ENTITIES {
        model.check(OPERATIONS_MAX, entity, None);
    }
}
