//! Injected I/O failures (EIO, ENOSPC, short write) on every kind of write-path operation,
//! once and persistently: the failing append is not acknowledged, the writer is poisoned
//! (later appends fail, reads keep working), and after a restart every acknowledged
//! record is present and the failed batch is wholly present or wholly absent.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fsdb_storage::io::sim::{Damage, Fault, FaultKind, OpKind, SimVfs};
use fsdb_storage::log::SYNC_LANES_MAX;
use fsdb_storage::{Durability, LogError, LogOptions};

use crate::common::{open_sim, read_all, script, small_options};

#[test]
fn failures_poison_and_lose_nothing_acknowledged() {
    let batches = script(3, 25);
    let flat: Vec<Vec<u8>> = batches.iter().flatten().cloned().collect();
    let mut failures_seen = 0;
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
            for nth in 1..=6 {
                for persistent in [false, true] {
                    let context =
                        format!("{op:?} #{nth} fails with {kind:?} (persistent: {persistent})");
                    let vfs = SimVfs::new();
                    let log = open_sim(&vfs, small_options(Durability::Sync)).unwrap();
                    // Faults count from now, after the open.
                    vfs.inject(Fault {
                        op,
                        nth,
                        persistent,
                        kind,
                    });
                    let mut acknowledged = 0;
                    let mut failed = None;
                    for (i, batch) in batches.iter().enumerate() {
                        match log.append(batch) {
                            Ok(_) => acknowledged += batch.len(),
                            Err(e) => {
                                failed = Some((i, e));
                                break;
                            }
                        }
                    }
                    let Some((failed_batch, error)) = failed else {
                        // Too few operations of this kind happened for the fault to fire.
                        continue;
                    };
                    failures_seen += 1;
                    // The append that hit the failure reports it: directly (a failed write), or
                    // as the poison the syncer thread set, whose cause names the failed call.
                    match &error {
                        LogError::Io { .. } => {}
                        LogError::Poisoned { cause } => {
                            assert!(cause.contains("failed"), "{context}: {cause}")
                        }
                        other => panic!("{context}: unexpected {other}"),
                    }
                    assert!(log.poisoned().is_some(), "{context}: not poisoned");
                    let again = log.append(&[b"more".as_slice()]).unwrap_err();
                    assert!(
                        matches!(again, LogError::Poisoned { .. }),
                        "{context}: {again}"
                    );
                    assert!(log.durable_lsn() <= acknowledged as u64 + 1, "{context}");
                    // Reads keep working for what was acknowledged.
                    let records = read_all(&log).unwrap();
                    assert!(records.len() >= acknowledged, "{context}");
                    drop(log);

                    // Restart: without a crash (the page cache survives), and after power loss.
                    vfs.clear_faults();
                    for image in [
                        vfs.crash_image(Damage::TornLastWrite),
                        vfs.crash_image(Damage::DropUnsynced),
                    ] {
                        let log = open_sim(&image, small_options(Durability::Sync))
                            .unwrap_or_else(|e| panic!("{context}: {e}"));
                        let records = read_all(&log).unwrap();
                        let with_failed = acknowledged + batches[failed_batch].len();
                        assert!(
                            records.len() == acknowledged || records.len() == with_failed,
                            "{context}: {} records after restart, acknowledged {acknowledged}",
                            records.len()
                        );
                        for (i, (_, payload)) in records.iter().enumerate() {
                            assert_eq!(payload, &flat[i], "{context}");
                        }
                        log.verify().unwrap();
                        log.append(&[b"after restart".as_slice()]).unwrap();
                    }
                }
            }
        }
    }
    assert!(
        failures_seen > 40,
        "only {failures_seen} injected failures fired"
    );
}

/// Concurrent appenders on every number of sync lanes, with fsyncs that return in any order
/// (`SimVfs::set_sync_latency`) and the `nth` fsync failing: nothing acknowledged is lost
/// to power loss. The failed fsync's writes are dropped, and a later fsync, through
/// another lane's handle that did not see the failure, succeeds without writing them: its
/// success must not acknowledge them (fsyncs complete in the order they began).
#[test]
fn overlapping_fsyncs_acknowledge_nothing_a_failed_one_dropped() {
    const APPENDERS: usize = 8;
    const APPENDS_EACH: usize = 30;
    let mut failures_seen = 0;
    for lanes in 1..=SYNC_LANES_MAX {
        for nth in 1..=16 {
            let context = format!("{lanes} lanes, fsync #{nth} fails");
            let options = LogOptions {
                sync_lanes: lanes,
                group_commit_gather_us: 0,
                ..small_options(Durability::Sync)
            };
            let vfs = SimVfs::new();
            let log = Arc::new(open_sim(&vfs, options.clone()).unwrap());
            vfs.set_sync_latency(Duration::from_micros(300));
            vfs.inject(Fault {
                op: OpKind::SyncData,
                nth,
                persistent: false,
                kind: FaultKind::Eio,
            });
            let threads: Vec<_> = (0..APPENDERS)
                .map(|t| {
                    let log = Arc::clone(&log);
                    std::thread::spawn(move || {
                        let mut acknowledged = Vec::new();
                        for i in 0..APPENDS_EACH {
                            let payload = format!("appender {t} append {i}").into_bytes();
                            if log.append(&[&payload]).is_err() {
                                break;
                            }
                            acknowledged.push(payload);
                        }
                        acknowledged
                    })
                })
                .collect();
            let acknowledged: Vec<Vec<u8>> = threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect();
            if log.poisoned().is_none() {
                continue;
            }
            failures_seen += 1;
            drop(log);
            let image = vfs.crash_image(Damage::DropUnsynced);
            let log = open_sim(&image, options).unwrap_or_else(|e| panic!("{context}: {e}"));
            let present: HashSet<Vec<u8>> = read_all(&log)
                .unwrap()
                .into_iter()
                .map(|(_, p)| p)
                .collect();
            for payload in &acknowledged {
                assert!(
                    present.contains(payload),
                    "{context}: acknowledged {:?} is lost",
                    String::from_utf8_lossy(payload)
                );
            }
        }
    }
    assert!(
        failures_seen >= SYNC_LANES_MAX * 12,
        "only {failures_seen} injected failures fired"
    );
}

/// A failed background fsync of `NoSync`'s writeback poisons the log, as any failed fsync
/// does: the next append reports it, and nothing more is written.
#[test]
fn a_failed_writeback_fsync_poisons_the_log() {
    use fsdb_storage::log::WRITEBACK_BYTES_MIN;
    use std::time::Instant;

    let vfs = SimVfs::new();
    let options = LogOptions {
        durability: Durability::NoSync,
        segment_bytes_max: 16 << 20,
        writeback_bytes: WRITEBACK_BYTES_MIN,
        ..LogOptions::default()
    };
    let log = open_sim(&vfs, options).unwrap();
    vfs.inject(Fault {
        op: OpKind::SyncData,
        nth: 1,
        persistent: false,
        kind: FaultKind::Eio,
    });
    let batch: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 1000]).collect();
    let mut appended = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    // Append until the flusher's fsync has failed (bounded by time and by the segment).
    while log.poisoned().is_none() && Instant::now() < deadline && appended < 200 {
        match log.append(&batch) {
            Ok(_) => appended += 1,
            // The flusher failed between the check and this append.
            Err(LogError::Poisoned { .. }) => break,
            Err(e) => panic!("append {appended} failed otherwise than poisoned: {e}"),
        }
        if appended * 64_000 >= 2 * WRITEBACK_BYTES_MIN as usize {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let cause = log
        .poisoned()
        .expect("the failed writeback fsync poisoned the log");
    assert!(cause.contains("fsync"), "{cause}");
    let end = log.end_lsn();
    let err = log.append(&batch).unwrap_err();
    assert!(matches!(err, LogError::Poisoned { .. }), "{err}");
    assert_eq!(log.end_lsn(), end, "nothing written after the poison");
}
