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
