//! Concurrent appenders on a real file system: LSNs are dense, every record is present
//! exactly once, and group commit shares fsyncs between appenders.

use std::collections::HashSet;
use std::sync::Arc;

use fsdb_storage::{Durability, Log, LogOptions};

const THREADS: usize = 16;
const APPENDS_PER_THREAD: usize = 150;

#[test]
fn concurrent_appenders_share_fsyncs_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        durability: Durability::Sync,
        segment_bytes_max: 64 << 10,
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
