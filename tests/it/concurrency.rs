//! Many writers and readers on shared entities, in process: every read's count lies between
//! the events acknowledged before the read began and the events sent before it ended;
//! successive reads of one reader never go back; a writer reads its own writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use fsdb::time::ManualClock;
use fsdb::{Db, Durability, Options, Value};
use serde_json::json;

use crate::fixtures::{COUNT_N, ev_definitions};
use crate::generate::Rng;

const ENTITIES: usize = 4;
const WRITERS: u64 = 4;
const READERS: u64 = 3;
const BATCHES_PER_WRITER: u64 = 150;

/// Per entity: events whose append returned, and events handed to `append` so far.
struct Counters {
    acked: Vec<AtomicI64>,
    sent: Vec<AtomicI64>,
}

fn count(db: &Db, k: usize) -> i64 {
    match db.latest(&format!("k{k}"), &["n"]).unwrap().values[0] {
        Value::Int(n) => n,
        ref other => panic!("count is an int, got {other:?}"),
    }
}

#[test]
fn reads_lie_between_acknowledged_and_sent_and_never_go_back() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        // Group commit under contention, as in production.
        durability: Durability::Sync,
        clock: Arc::new(ManualClock::new(1_000_000_000)),
        checkpoint_events: 500,
        ..Options::default()
    };
    let db = Arc::new(Db::open(dir.path(), options).unwrap());
    db.apply(&ev_definitions(COUNT_N)).unwrap();
    let counters = Arc::new(Counters {
        acked: (0..ENTITIES).map(|_| AtomicI64::new(0)).collect(),
        sent: (0..ENTITIES).map(|_| AtomicI64::new(0)).collect(),
    });

    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (db, counters) = (Arc::clone(&db), Arc::clone(&counters));
            std::thread::spawn(move || {
                let mut rng = Rng::new(w);
                for b in 0..BATCHES_PER_WRITER {
                    let len = 1 + rng.below(8) as usize;
                    let keys: Vec<usize> = (0..len)
                        .map(|_| rng.below(ENTITIES as u64) as usize)
                        .collect();
                    let events: Vec<_> = keys
                        .iter()
                        .enumerate()
                        .map(|(i, k)| json!({"id": format!("w{w}-{b}-{i}"), "k": format!("k{k}"), "ts": 1000 + i, "v": 1}))
                        .collect();
                    for &k in &keys {
                        counters.sent[k].fetch_add(1, Ordering::SeqCst);
                    }
                    let report = db.append_json("ev", &events).unwrap();
                    assert_eq!(report.accepted, len);
                    for &k in &keys {
                        counters.acked[k].fetch_add(1, Ordering::SeqCst);
                    }
                    // Read-your-writes: everything this writer (and any other) had
                    // acknowledged is visible now.
                    for &k in &keys {
                        let acked = counters.acked[k].load(Ordering::SeqCst);
                        let n = count(&db, k);
                        assert!(n >= acked, "writer {w}: k{k} reads {n}, {acked} acknowledged");
                    }
                }
            })
        })
        .collect();

    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (db, counters, done) = (Arc::clone(&db), Arc::clone(&counters), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut last = [0i64; ENTITIES];
                let mut reads = 0u64;
                for i in 0..2_000_000usize {
                    let k = (i + r as usize) % ENTITIES;
                    let before = counters.acked[k].load(Ordering::SeqCst);
                    let n = count(&db, k);
                    let after = counters.sent[k].load(Ordering::SeqCst);
                    assert!(
                        before <= n && n <= after,
                        "reader {r}: k{k} reads {n}; acknowledged before {before}, sent by the end {after}"
                    );
                    assert!(n >= last[k], "reader {r}: k{k} went back from {} to {n}", last[k]);
                    last[k] = n;
                    reads += 1;
                    if done.load(Ordering::SeqCst) {
                        break;
                    }
                }
                reads
            })
        })
        .collect();

    for writer in writers {
        writer.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads > 0);
    for k in 0..ENTITIES {
        assert_eq!(count(&db, k), counters.acked[k].load(Ordering::SeqCst));
    }
}

/// Concurrent appends to entities nobody reads (partial states), interleaving earlier and
/// later times of the same entities, with checkpoints running in between: every event is
/// persisted exactly once (each entity's count), and the state equals a replay of the log.
#[test]
fn interleaved_appends_to_cold_entities_persist_every_event_once() {
    const KEYS: u64 = 16;
    const BATCHES: u64 = 60;
    let dir = tempfile::tempdir().unwrap();
    let options = || Options {
        durability: Durability::NoSync,
        clock: Arc::new(ManualClock::new(1_000_000_000)),
        checkpoint_events: 300,
        ..Options::default()
    };
    let db = Arc::new(Db::open(dir.path(), options()).unwrap());
    db.apply(&ev_definitions(COUNT_N)).unwrap();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let db = Arc::clone(&db);
            std::thread::spawn(move || {
                let mut rng = Rng::new(100 + w);
                let mut sent = vec![0i64; KEYS as usize];
                for b in 0..BATCHES {
                    let events: Vec<_> = (0..20)
                        .map(|i| {
                            let k = rng.below(KEYS);
                            sent[k as usize] += 1;
                            // Writer w's batch b covers times a later writer has passed.
                            let ts = 1000 + b * 100 + rng.below(400);
                            json!({"id": format!("w{w}-{b}-{i}"), "k": format!("k{k}"), "ts": ts, "v": i})
                        })
                        .collect();
                    db.append_json("ev", &events).unwrap();
                    if b % 20 == 19 {
                        db.checkpoint().unwrap();
                    }
                }
                sent
            })
        })
        .collect();
    let mut sent = vec![0i64; KEYS as usize];
    for writer in writers {
        for (total, n) in sent.iter_mut().zip(writer.join().unwrap()) {
            *total += n;
        }
    }
    for (k, &n) in sent.iter().enumerate() {
        let row = db.latest(&format!("k{k}"), &["n"]).unwrap();
        assert_eq!(row.values[0], Value::Int(n), "k{k}");
    }
    let scratch = tempfile::tempdir().unwrap();
    let check = db
        .check_against_replay(scratch.path(), &[], options())
        .unwrap();
    assert!(check.is_clean(), "{check:?}");
}
