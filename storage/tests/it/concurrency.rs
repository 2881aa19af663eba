//! Concurrent appenders on a real file system: LSNs are dense, every record is present
//! exactly once, and group commit shares fsyncs between appenders.

use std::collections::HashSet;
use std::sync::Arc;

use fsdb_storage::io::sim::SimVfs;
use fsdb_storage::{Durability, Log, LogOptions};

use crate::common::open_sim;

const THREADS: usize = 16;
const APPENDS_PER_THREAD: usize = 150;

#[test]
fn concurrent_appenders_share_fsyncs_and_lose_nothing() {
    for sync_lanes in [1, 2] {
        appenders_share_fsyncs_and_lose_nothing(sync_lanes);
    }
}

fn appenders_share_fsyncs_and_lose_nothing(sync_lanes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        durability: Durability::Sync,
        segment_bytes_max: 64 << 10,
        sync_lanes,
        ..LogOptions::default()
    };
    let log = Arc::new(Log::open(dir.path(), options.clone()).unwrap());
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut lsns = Vec::new();
                for i in 0..APPENDS_PER_THREAD {
                    let payload = format!("thread {t} append {i}");
                    let appended = log.append(&[payload.as_bytes()]).unwrap();
                    assert!(
                        log.durable_lsn() >= appended.end_lsn(),
                        "acknowledged before durable"
                    );
                    lsns.push(appended.first_lsn);
                }
                lsns
            })
        })
        .collect();
    let mut lsns: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    lsns.sort_unstable();
    let total = THREADS * APPENDS_PER_THREAD;
    assert_eq!(
        lsns,
        (1..=total as u64).collect::<Vec<_>>(),
        "LSNs are dense and unique"
    );

    let stats = log.stats();
    assert_eq!(stats.appends, total as u64);
    assert!(
        stats.fsyncs < stats.appends,
        "group commit never shared an fsync: {} fsyncs for {} appends",
        stats.fsyncs,
        stats.appends
    );

    drop(log);
    let log = Log::open(dir.path(), options).unwrap();
    let payloads: HashSet<Vec<u8>> = log.scan(1).unwrap().map(|r| r.unwrap().payload).collect();
    assert_eq!(
        payloads.len(),
        total,
        "every record present exactly once after reopen"
    );
    log.verify().unwrap();
}

/// The syncer waits for every appender that announced an append before it fsyncs: four
/// appenders writing 2 ms apart share one fsync (without the gathering each gets its own:
/// a simulated fsync takes no time; the bound, 100 ms, leaves a wide margin),
/// and their batches reach the file in one write, made by the syncer (two file operations
/// in all; appenders that wrote for themselves would make five).
#[test]
fn the_syncer_gathers_announced_appenders_into_one_write_and_fsync() {
    const APPENDERS: usize = 4;
    let vfs = SimVfs::new();
    let log = Arc::new(
        open_sim(
            &vfs,
            LogOptions {
                durability: Durability::Sync,
                group_commit_gather_us: fsdb_storage::log::GROUP_COMMIT_GATHER_US_MAX,
                ..LogOptions::default()
            },
        )
        .unwrap(),
    );
    let fsyncs_before = log.stats().fsyncs;
    let ops_before = vfs.ops();
    let announced = Arc::new(std::sync::Barrier::new(APPENDERS));
    let threads: Vec<_> = (0..APPENDERS)
        .map(|t| {
            let (log, announced) = (Arc::clone(&log), Arc::clone(&announced));
            std::thread::spawn(move || {
                let announcement = log.announce_append();
                announced.wait();
                std::thread::sleep(std::time::Duration::from_millis(2 * t as u64));
                let appended = log.write(&[format!("appender {t}").as_bytes()]).unwrap();
                log.wait_durable(appended.end_lsn()).unwrap();
                drop(announcement);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(log.stats().appends, APPENDERS as u64);
    assert_eq!(
        log.stats().fsyncs - fsyncs_before,
        1,
        "the four appends did not share one fsync"
    );
    assert_eq!(
        vfs.ops() - ops_before,
        2,
        "the four batches were not written with one write before the fsync"
    );
    assert_eq!(crate::common::read_all(&log).unwrap().len(), APPENDERS);
}

/// An appender that announces and never writes holds the others back by the gathering
/// bound at most: a concurrent append still becomes durable and returns.
#[test]
fn an_announcement_without_a_write_delays_others_only_by_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        LogOptions {
            durability: Durability::Sync,
            group_commit_gather_us: 20_000,
            ..LogOptions::default()
        },
    )
    .unwrap();
    let silent = log.announce_append();
    let appended = log.append(&[b"not kept waiting".as_slice()]).unwrap();
    assert!(log.durable_lsn() >= appended.end_lsn());
    drop(silent);
    // The syncer stays usable after the announcement ends.
    let appended = log.append(&[b"again".as_slice()]).unwrap();
    assert!(log.durable_lsn() >= appended.end_lsn());
}
