//! Simulated power loss and injected I/O faults for the whole engine. The log goes through
//! the simulated file system (`fsdb_storage::io::sim`), which crashes at a chosen operation
//! and then keeps only what was made durable (unsynced writes dropped, the last one torn,
//! or garbage in the unsynced region), or fails chosen operations. The state store
//! (RocksDB, written without fsync) is either left as the crash left it or lost entirely.
//! After every crash: the database opens, every acknowledged event is there exactly once,
//! what is there is a whole number of batches, a replay of the recovered log agrees, and
//! new appends work.
//!
//! CI: a script of `FSDB_POWER_LOSS_BATCHES` batches (default 8) crashed at every log
//! operation; the campaign in docs/reliability.md uses more.

use std::path::Path;
use std::sync::Arc;

use fsdb::time::ManualClock;
use fsdb::{Db, Durability, Options, Value};
use fsdb_storage::io::Vfs;
use fsdb_storage::io::sim::{Damage, SimVfs};
use serde_json::json;

use crate::fixtures::{COUNT_N, copy_dir, ev_definitions};

const ENTITIES: usize = 3;
const PER_BATCH: usize = 4;

fn options(vfs: &SimVfs, durability: Durability) -> Options {
    Options {
        durability,
        clock: Arc::new(ManualClock::new(1_000_000)),
        // Checkpoints happen inside the script, at chosen points only.
        checkpoint_events: usize::MAX,
        checkpoint_interval_ms: 3_600_000,
        materialize_interval_ms: 0,
        segment_bytes_max: 4 << 10,
        log_vfs: Arc::new(vfs.clone()) as Arc<dyn Vfs>,
        ..Options::default()
    }
}

/// Batch `b`: PER_BATCH events with unique ids, spread over the entities.
fn batch(b: usize) -> Vec<serde_json::Value> {
    (0..PER_BATCH)
        .map(|i| json!({"id": format!("{b}-{i}"), "k": format!("k{}", (b + i) % ENTITIES), "ts": b * 10 + i, "v": b}))
        .collect()
}

/// Per entity, the events of batches `0..batches`.
fn expected_counts(batches: usize) -> Vec<i64> {
    let mut counts = vec![0; ENTITIES];
    for b in 0..batches {
        for i in 0..PER_BATCH {
            counts[(b + i) % ENTITIES] += 1;
        }
    }
    counts
}

fn counts(db: &Db) -> Vec<i64> {
    (0..ENTITIES)
        .map(
            |k| match db.latest(&format!("k{k}"), &["n"]).unwrap().values[0] {
                Value::Int(n) => n,
                ref other => panic!("{other:?}"),
            },
        )
        .collect()
}

/// Run the script until the first failure; returns the batches acknowledged.
fn run(state: &Path, vfs: &SimVfs, batches: usize, durability: Durability) -> usize {
    let Ok(db) = Db::open(state, options(vfs, durability)) else {
        return 0;
    };
    if db.apply(&ev_definitions(COUNT_N)).is_err() {
        return 0;
    }
    let mut acknowledged = 0;
    for b in 0..batches {
        if db.append_json("ev", &batch(b)).is_err() {
            break;
        }
        acknowledged += 1;
        if b % 3 == 2 && db.checkpoint().is_err() {
            break;
        }
    }
    // Closing after the crash fails (the log is gone); state written meanwhile reflects
    // only what a sync covered, which is what the reopen checks.
    drop(db);
    acknowledged
}

#[test]
fn every_crash_point_of_the_engine_keeps_acknowledged_events() {
    let batches: usize = std::env::var("FSDB_POWER_LOSS_BATCHES")
        .map(|b| b.parse().expect("FSDB_POWER_LOSS_BATCHES is a number"))
        .unwrap_or(8);
    let mut cases = 0;
    let mut ops = 0;
    for durability in [Durability::Sync, Durability::NoSync] {
        let (c, o) = crash_everywhere(batches, durability);
        cases += c;
        ops += o;
    }
    eprintln!(
        "engine power loss: {cases} cases ({ops} crash points over durability sync and none, × 3 kinds of damage × state kept or lost), {batches} batches"
    );
}

/// Crash the script at every log operation; returns (cases checked, crash points).
fn crash_everywhere(batches: usize, durability: Durability) -> (usize, u64) {
    // Without fsync before acknowledgement, a crash may take acknowledged batches; what
    // is left must still be whole batches, and the state never ahead of the log.
    let must_keep = |acknowledged: usize| match durability {
        Durability::NoSync => 0,
        _ => acknowledged,
    };
    let clean = SimVfs::new();
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        run(&dir.path().join("clean"), &clean, batches, durability),
        batches
    );
    let total_ops = clean.ops();

    let mut cases = 0;
    for crash_at in 1..=total_ops {
        let vfs = SimVfs::new();
        vfs.crash_at_op(crash_at);
        let state = dir.path().join(format!("crash{crash_at}"));
        let acknowledged = run(&state, &vfs, batches, durability);
        let snapshot = dir.path().join("snapshot");
        if snapshot.exists() {
            std::fs::remove_dir_all(&snapshot).unwrap();
        }
        copy_dir(&state, &snapshot);
        for damage in [
            Damage::DropUnsynced,
            Damage::TornLastWrite,
            Damage::Garbage { seed: crash_at },
        ] {
            for lose_state in [false, true] {
                let context = format!(
                    "{durability:?}: crash at log op {crash_at}/{total_ops}, {damage:?}, state lost: {lose_state}, {acknowledged} batches acknowledged"
                );
                let image = vfs.crash_image(damage);
                // The log is in the simulated file system under the data directory's
                // path, so the state is put back (or not) under that same path.
                std::fs::remove_dir_all(&state).unwrap();
                if !lose_state {
                    copy_dir(&snapshot, &state);
                }
                let db = Db::open(&state, options(&image, durability))
                    .unwrap_or_else(|e| panic!("{context}: open: {e}"));
                if db.catalog().features.is_empty() {
                    // The definitions record itself was lost: nothing was acknowledged.
                    assert_eq!(must_keep(acknowledged), 0, "{context}: definitions lost");
                    continue;
                }
                let got = counts(&db);
                let whole =
                    (must_keep(acknowledged)..=batches).find(|&n| expected_counts(n) == got);
                assert!(
                    whole.is_some(),
                    "{context}: counts {got:?} are not the first n ≥ {acknowledged} batches"
                );
                db.append_json("ev", &batch(batches + 1)).unwrap();
                drop(db);
                // The state equals a replay of the recovered log alone.
                std::fs::remove_dir_all(&state).unwrap();
                let replay_image = image.crash_image(Damage::DropUnsynced);
                let replayed = Db::open(&state, options(&replay_image, durability)).unwrap();
                let mut expected = expected_counts(whole.unwrap());
                for i in 0..PER_BATCH {
                    expected[(batches + 1 + i) % ENTITIES] += 1;
                }
                assert_eq!(counts(&replayed), expected, "{context}: replay");
                drop(replayed);
                std::fs::remove_dir_all(&state).unwrap();
                std::fs::create_dir_all(&state).unwrap();
                cases += 1;
            }
        }
    }
    (cases, total_ops)
}

/// Injected I/O failures (EIO, ENOSPC, short writes; once and persistently) on every kind
/// of log operation, through the whole engine: the append that hits one is not
/// acknowledged, the database is poisoned (appends refused, reads served, `/healthz` 503),
/// and after a restart every acknowledged event is there and the failed batch is wholly
/// present or wholly absent.
#[test]
fn io_faults_poison_the_engine_and_lose_nothing_acknowledged() {
    use fsdb_storage::io::sim::{Fault, FaultKind, OpKind};
    let batches = 12;
    let mut failures = 0;
    let mut checked_healthz = false;
    for op in [
        OpKind::Write,
        OpKind::SyncData,
        OpKind::Create,
        OpKind::SyncDir,
    ] {
        for kind in [FaultKind::Eio, FaultKind::Enospc, FaultKind::ShortWrite] {
            if kind == FaultKind::ShortWrite && op != OpKind::Write {
                continue;
            }
            for nth in [1, 2, 5] {
                for persistent in [false, true] {
                    let context =
                        format!("{op:?} #{nth} fails with {kind:?} (persistent: {persistent})");
                    let dir = tempfile::tempdir().unwrap();
                    let vfs = SimVfs::new();
                    let db = Db::open(dir.path(), options(&vfs, Durability::Sync)).unwrap();
                    db.apply(&ev_definitions(COUNT_N)).unwrap();
                    vfs.inject(Fault {
                        op,
                        nth,
                        persistent,
                        kind,
                    });
                    let mut acknowledged = 0;
                    let mut failed = false;
                    for b in 0..batches {
                        match db.append_json("ev", &batch(b)) {
                            Ok(_) => acknowledged += 1,
                            Err(_) => {
                                failed = true;
                                break;
                            }
                        }
                    }
                    if !failed {
                        // Too few operations of this kind for the fault to fire.
                        continue;
                    }
                    failures += 1;
                    let health = db.health();
                    assert!(health.poisoned.is_some(), "{context}: not poisoned");
                    assert!(
                        db.append_json("ev", &batch(batches)).is_err(),
                        "{context}: an append after the failure was accepted"
                    );
                    // Nor is the failed batch again taken for duplicates of itself.
                    assert!(
                        db.append_json("ev", &batch(acknowledged)).is_err(),
                        "{context}: the failed batch, appended again, was accepted"
                    );
                    // Reads keep working, and show exactly what was acknowledged: the failed
                    // batch was never applied (durable before visible).
                    assert_eq!(
                        counts(&db),
                        expected_counts(acknowledged),
                        "{context}: reads"
                    );
                    if !checked_healthz {
                        checked_healthz = true;
                        assert_eq!(healthz_status(db), 503, "{context}: /healthz");
                    } else {
                        drop(db);
                    }
                    vfs.clear_faults();
                    let image = vfs.crash_image(Damage::DropUnsynced);
                    let db = Db::open(dir.path(), options(&image, Durability::Sync))
                        .unwrap_or_else(|e| panic!("{context}: reopen: {e}"));
                    let got = counts(&db);
                    assert!(
                        got == expected_counts(acknowledged)
                            || got == expected_counts(acknowledged + 1),
                        "{context}: {got:?} after {acknowledged} acknowledged batches"
                    );
                    db.append_json("ev", &batch(batches + 1))
                        .unwrap_or_else(|e| panic!("{context}: append after restart: {e}"));
                }
            }
        }
    }
    eprintln!("engine I/O faults: {failures} injected failures, every one poisoned and recovered");
    assert!(failures >= 20, "only {failures} faults fired");
}

/// A process running without fsync dies with log records in the page cache; the next one
/// reads and replays them, persisting state that reflects them. If the machine then loses
/// power before the page cache reached the disk, that state would be ahead of the log (and
/// the database would refuse to open): the open makes the records it finds durable before
/// any state reflects them.
#[test]
fn records_replayed_after_a_process_crash_survive_a_later_power_loss() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("db");
    let snapshot = dir.path().join("snapshot");
    // The state directory (RocksDB on the real file system) as `db` left it at this moment,
    // put back once `db` is gone: a process that dies does not close.
    let die = |db: Db| {
        let _ = std::fs::remove_dir_all(&snapshot);
        copy_dir(&data, &snapshot);
        drop(db);
        std::fs::remove_dir_all(&data).unwrap();
        copy_dir(&snapshot, &data);
    };
    let batches = 3;

    let first = SimVfs::new();
    let db = Db::open(&data, options(&first, Durability::NoSync)).unwrap();
    db.apply(&ev_definitions(COUNT_N)).unwrap();
    for b in 0..batches {
        db.append_json("ev", &batch(b)).unwrap();
    }
    let after_first = first.process_crash_image();
    die(db);

    let db = Db::open(&data, options(&after_first, Durability::NoSync)).unwrap();
    assert!(
        db.open_report().replayed > 0,
        "the open replays the records"
    );
    assert_eq!(counts(&db), expected_counts(batches));
    let after_power_loss = after_first.crash_image(Damage::DropUnsynced);
    die(db);

    let db = Db::open(&data, options(&after_power_loss, Durability::NoSync))
        .unwrap_or_else(|e| panic!("open after the power loss: {e}"));
    assert_eq!(counts(&db), expected_counts(batches));
}

/// A backup's log restored into an empty data directory (`docs/operations.md`, Backup) is
/// written by a copy that syncs nothing. The first open rebuilds state from it and commits
/// that state; a power loss soon after must not take the log away from under it: the open
/// makes every segment it recovers durable, their names, and `log/`'s own name.
#[test]
fn a_restored_log_survives_a_power_loss_after_the_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let batches = 60;
    let original = SimVfs::new();
    let db = Db::open(dir.path().join("a"), options(&original, Durability::Sync)).unwrap();
    db.apply(&ev_definitions(COUNT_N)).unwrap();
    for b in 0..batches {
        db.append_json("ev", &batch(b)).unwrap();
    }
    db.close().unwrap();

    // An empty data directory `b`, durable (made long ago), then `cp -r a/log b/log`:
    // every byte and name written, nothing synced.
    let (from, to) = (dir.path().join("a/log"), dir.path().join("b/log"));
    let data = dir.path().join("b");
    let restored = SimVfs::new();
    restored.create_dir_all(&data).unwrap();
    for ancestor in data.ancestors().skip(1) {
        restored.sync_dir(ancestor).unwrap();
    }
    restored.create_dir_all(&to).unwrap();
    let names = original.list_dir(&from).unwrap();
    assert!(
        names.iter().filter(|n| n.ends_with(".log")).count() >= 3,
        "sealed segments and an active one: {names:?}"
    );
    for name in names {
        let file = restored
            .open_file(&to.join(&name), fsdb_storage::io::OpenMode::CreateNew)
            .unwrap();
        file.write_all_at(&original.read_file(&from.join(&name)).unwrap(), 0)
            .unwrap();
    }
    let db = Db::open(&data, options(&restored, Durability::Sync)).unwrap();
    assert!(db.open_report().replayed > 0, "the open rebuilds state");
    assert_eq!(counts(&db), expected_counts(batches));
    db.close().unwrap();

    let after_power_loss = restored.crash_image(Damage::DropUnsynced);
    let db = Db::open(&data, options(&after_power_loss, Durability::Sync))
        .unwrap_or_else(|e| panic!("open after the power loss: {e}"));
    assert_eq!(counts(&db), expected_counts(batches));
}

/// `/healthz` of a server over `db` (which it takes and closes).
fn healthz_status(db: Db) -> u16 {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let config = fsdb::http::ServeConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ..fsdb::http::ServeConfig::default()
    };
    let server = std::thread::spawn(move || {
        let _ = fsdb::http::serve_until(
            Arc::new(db),
            config,
            move |addr| ready_tx.send(addr).unwrap(),
            async {
                let _ = stopped.await;
            },
        );
    });
    let addr = ready_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let status = agent
        .get(format!("http://{addr}/healthz"))
        .call()
        .unwrap()
        .status()
        .as_u16();
    let _ = stop.send(());
    server.join().unwrap();
    status
}
