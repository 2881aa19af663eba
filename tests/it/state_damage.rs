//! Damage to the state directory (RocksDB files deleted, truncated or bit-flipped; state
//! behind or ahead of the log): the database rebuilds from the log, or refuses with an
//! error — it never answers a query with a wrong value.

use std::path::Path;
use std::sync::Arc;

use fsdb::time::ManualClock;
use fsdb::{Db, Durability, Options};
use fsdb_storage::state::{StateOptions, StateStore, Table};
use serde_json::json;

use crate::fixtures::{copy_dir, ev_definitions};

const FEATURES: &str = r#"
[[feature]]
name = "n_1h"
stream = "ev"
agg = "count"
window = "1h"
[[feature]]
name = "s"
stream = "ev"
agg = "sum"
field = "v"
[[feature]]
name = "last_v"
stream = "ev"
agg = "last"
field = "v"
"#;

const ENTITIES: usize = 40;
const NAMES: [&str; 3] = ["n_1h", "s", "last_v"];
const TIMES: [i64; 3] = [2_000_000, 5_000_000, 9_000_000];

fn options() -> Options {
    Options {
        durability: Durability::NoSync,
        clock: Arc::new(ManualClock::new(10_000_000)),
        materialize_interval_ms: 0,
        ..Options::default()
    }
}

fn ingest(db: &Db, from: usize, to: usize) {
    for round in from..to {
        let events: Vec<_> = (0..ENTITIES)
            .map(|e| json!({"k": format!("k{e}"), "ts": round as i64 * 100_000 + e as i64, "id": format!("{round}-{e}"), "v": round * 7 + e}))
            .collect();
        db.append_json("ev", &events).unwrap();
        if round % 10 == 9 {
            db.checkpoint().unwrap();
        }
    }
}

/// Every entity's values at every time in `TIMES`.
fn answers(db: &Db) -> Vec<Result<Vec<fsdb::Value>, String>> {
    (0..ENTITIES)
        .flat_map(|e| {
            TIMES.iter().map(move |&t| {
                db.as_of(&format!("k{e}"), &NAMES, t)
                    .map(|row| row.values)
                    .map_err(|err| err.to_string())
            })
        })
        .collect()
}

/// How a damaged directory fared.
#[derive(Debug, Default)]
struct Outcomes {
    exact: usize,
    rebuilt: usize,
    refused_open: usize,
    query_errors: usize,
}

/// Open `data` and compare every answer with `truth`: exact, or an error.
fn check(
    data: &Path,
    truth: &[Result<Vec<fsdb::Value>, String>],
    case: &str,
    outcomes: &mut Outcomes,
) {
    let db = match Db::open(data, options()) {
        Ok(db) => db,
        Err(_) => {
            outcomes.refused_open += 1;
            return;
        }
    };
    if db.open_report().rebuilt.is_some() {
        outcomes.rebuilt += 1;
    }
    let mut errors = 0;
    for (got, expected) in answers(&db).iter().zip(truth) {
        match got {
            Ok(values) => assert_eq!(Ok(values), expected.as_ref(), "{case}: a wrong answer"),
            // Damage to an entity's rows that RocksDB's block checksums (or ours) catch
            // when the entity is read: the query fails, naming the file.
            Err(e) => {
                assert!(
                    e.contains("Corruption") && e.contains(".sst"),
                    "{case}: {e}"
                );
                errors += 1;
            }
        }
    }
    if errors == 0 {
        outcomes.exact += 1;
    } else {
        outcomes.query_errors += 1;
    }
}

#[test]
fn damaged_state_is_rebuilt_or_refused_never_wrong() {
    let root = tempfile::tempdir().unwrap();
    let pristine = root.path().join("pristine");
    let half = root.path().join("half");
    let db = Db::open(&pristine, options()).unwrap();
    db.apply(&ev_definitions(FEATURES)).unwrap();
    ingest(&db, 0, 40);
    db.close().unwrap();
    copy_dir(&pristine, &half);
    let db = Db::open(&pristine, options()).unwrap();
    ingest(&db, 40, 90);
    let truth = answers(&db);
    assert!(truth.iter().all(Result::is_ok));
    db.close().unwrap();

    let mut outcomes = Outcomes::default();
    let mut cases = 0;
    let mut run = |name: &str, damage: &dyn Fn(&Path), outcomes: &mut Outcomes| {
        let data = root.path().join(format!("case{cases}"));
        cases += 1;
        copy_dir(&pristine, &data);
        damage(&data);
        check(&data, &truth, name, outcomes);
        std::fs::remove_dir_all(&data).unwrap();
    };

    run(
        "state deleted",
        &|d| std::fs::remove_dir_all(d.join("state")).unwrap(),
        &mut outcomes,
    );
    // Behind: the state of the first half, with the whole log: the rest is replayed.
    run(
        "state behind the log",
        &|d| {
            std::fs::remove_dir_all(d.join("state")).unwrap();
            copy_dir(&half.join("state"), &d.join("state"));
        },
        &mut outcomes,
    );
    // Rows persisted past `applied_lsn`: the state of the whole with the first half's
    // applied LSN, as a crash between a replay's chunk writes and its commit leaves it. The
    // rest is replayed and persisted again; the repeats must count once.
    let half_lsn = {
        let store = StateStore::open(&half.join("state"), &StateOptions::default()).unwrap();
        store.applied_lsn().unwrap()
    };
    let before_rows_ahead = outcomes.exact;
    run(
        "rows persisted past the applied LSN",
        &|d| {
            let store = StateStore::open(&d.join("state"), &StateOptions::default()).unwrap();
            assert!(store.applied_lsn().unwrap() > half_lsn);
            let mut batch = store.batch();
            batch.set_applied_lsn(half_lsn);
            store.commit(batch).unwrap();
            store.flush().unwrap();
        },
        &mut outcomes,
    );
    assert_eq!(
        outcomes.exact,
        before_rows_ahead + 1,
        "rows past the applied LSN"
    );
    let before_ahead = outcomes.refused_open;
    // Ahead: the log of the first half under the state of the whole: acknowledged records
    // are missing from the log, which must refuse to open rather than serve.
    run(
        "state ahead of the log",
        &|d| {
            std::fs::remove_dir_all(d.join("log")).unwrap();
            copy_dir(&half.join("log"), &d.join("log"));
        },
        &mut outcomes,
    );
    assert_eq!(
        outcomes.refused_open,
        before_ahead + 1,
        "state ahead of the log opens"
    );

    let mut files: Vec<_> = std::fs::read_dir(pristine.join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != "LOCK")
        .collect();
    files.sort();
    for file in &files {
        let len = std::fs::metadata(pristine.join("state").join(file))
            .unwrap()
            .len();
        run(
            &format!("{file} deleted"),
            &|d| std::fs::remove_file(d.join("state").join(file)).unwrap(),
            &mut outcomes,
        );
        run(
            &format!("{file} truncated"),
            &|d| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("state").join(file))
                    .unwrap();
                f.set_len(len / 2).unwrap();
            },
            &mut outcomes,
        );
        for offset in [0, len / 3, len / 2, len.saturating_sub(9)] {
            if offset >= len {
                continue;
            }
            run(
                &format!("{file} bit flip at {offset}"),
                &|d| {
                    let path = d.join("state").join(file);
                    let mut bytes = std::fs::read(&path).unwrap();
                    bytes[offset as usize] ^= 0x10;
                    std::fs::write(&path, bytes).unwrap();
                },
                &mut outcomes,
            );
        }
    }
    eprintln!(
        "state damage: {cases} cases over {} files: {outcomes:?}",
        files.len()
    );
    assert!(outcomes.rebuilt >= 1);
    assert_eq!(
        outcomes.refused_open, 1,
        "only the state ahead of the log refuses"
    );
}

/// A log record that decodes but does not fit the catalog (written by a buggy writer, or
/// damaged within its checksum): opening refuses it with an error naming its LSN, rather
/// than storing a value of the wrong kind or panicking.
#[test]
fn a_record_that_does_not_fit_its_stream_is_refused_on_replay() {
    use fsdb::event::LogEntry;
    use fsdb::{Error, Value};
    // (Stream 0 is `ev`, with one int field.)
    let wrong: [(&str, u32, Vec<Value>); 5] = [
        ("a list value", 0, vec![Value::List(vec![Value::Int(1)])]),
        ("a value of another type", 0, vec![Value::Float(1.5)]),
        ("too many values", 0, vec![Value::Int(1), Value::Int(2)]),
        ("too few values", 0, vec![]),
        ("no such stream", 7, vec![Value::Int(1)]),
    ];
    for (what, stream, values) in wrong {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), options()).unwrap();
        db.apply(&ev_definitions(FEATURES)).unwrap();
        ingest(&db, 0, 50);
        db.close().unwrap();
        let record = LogEntry::Event {
            stream,
            entity: "k1".into(),
            time_ms: 1_000,
            id: None,
            values,
        };
        let log =
            fsdb_storage::Log::open(&dir.path().join("log"), fsdb_storage::LogOptions::default())
                .unwrap();
        let lsn = log
            .append(&[fsdb_storage::codec::encode(&record).unwrap()])
            .unwrap()
            .first_lsn;
        drop(log);
        match Db::open(dir.path(), options()) {
            Err(Error::RecordMismatch { lsn: at, reason }) => {
                assert_eq!(at, lsn, "{what}: {reason}");
            }
            Err(other) => panic!("{what}: {other}"),
            Ok(_) => panic!("{what}: opened"),
        }
    }
}

/// A log record whose values are written in a longer form than serde's (integers wider
/// than they need: serde reads them all the same) replays as the record serde writes: a
/// replay copies the values of a record as they are only when they are in serde's form.
#[test]
fn a_record_written_in_a_longer_form_replays_as_serde_writes_it() {
    use fsdb::Value;
    use fsdb::event::LogEntry;
    let record = LogEntry::Event {
        stream: 0,
        entity: "k1".into(),
        time_ms: 9_500_000,
        id: Some("late".into()),
        values: vec![Value::Int(300)],
    };
    let as_serde = fsdb_storage::codec::encode(&record).unwrap();
    // One value (count 1), an int (variant 1), 300 (zigzag: 600, as a u16).
    let serde_values = [1, 1, 251, 0x58, 0x02];
    assert!(as_serde.ends_with(&serde_values));
    let head = &as_serde[..as_serde.len() - serde_values.len()];
    // The count as a u16, the variant as a u32, the int as a u32.
    let longer = [head, &[251, 1, 0, 252, 1, 0, 0, 0, 252, 0x58, 0x02, 0, 0]].concat();
    let replayed = [as_serde, longer].map(|bytes| {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), options()).unwrap();
        db.apply(&ev_definitions(FEATURES)).unwrap();
        ingest(&db, 0, 20);
        db.close().unwrap();
        let log =
            fsdb_storage::Log::open(&dir.path().join("log"), fsdb_storage::LogOptions::default())
                .unwrap();
        log.append(&[bytes]).unwrap();
        drop(log);
        let db = Db::open(dir.path(), options()).unwrap();
        assert_eq!(db.open_report().replayed, 1);
        let last = db.latest("k1", &["last_v"]).unwrap().values;
        assert_eq!(last, [Value::Int(300)]);
        let seen = (db.state_digest().unwrap(), answers(&db));
        db.close().unwrap();
        // The persisted rows, byte for byte (the digest decodes them).
        let store = StateStore::open(&dir.path().join("state"), &StateOptions::default()).unwrap();
        let rows: Vec<_> = (store.scan_prefix(Table::Events, &[]))
            .map(|item| item.unwrap())
            .collect();
        (seen, rows)
    });
    let [(as_serde, serde_rows), (longer, longer_rows)] = replayed;
    assert_eq!(longer, as_serde);
    assert!(longer_rows == serde_rows, "the persisted rows differ");
}
