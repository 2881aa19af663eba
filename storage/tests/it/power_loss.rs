//! Simulated power loss at every operation of a scripted workload, under three kinds of
//! damage to unsynced data: every acknowledged record survives, recovered records are a
//! prefix of what was attempted made of whole batches (nothing after a gap), and the
//! recovered log accepts new appends.

use fsdb_storage::Durability;
use fsdb_storage::io::sim::{Damage, SimVfs};

use std::path::Path;

use fsdb_storage::io::{OpenMode, Vfs};

use crate::common::{dir, open_sim, read_all, script, segment_files, small_options};

/// Run the workload on `vfs` until it fails; returns how many batches were acknowledged.
fn run(vfs: &SimVfs, batches: &[Vec<Vec<u8>>]) -> usize {
    let Ok(log) = open_sim(vfs, small_options(Durability::Sync)) else {
        return 0;
    };
    let mut acknowledged = 0;
    for batch in batches {
        if log.append(batch).is_err() {
            break;
        }
        acknowledged += 1;
    }
    // A dead process does not close its log; dropping may try to sync and fail harmlessly.
    std::mem::forget(log);
    acknowledged
}

#[test]
fn every_crash_point_keeps_acknowledged_records() {
    let batches = script(11, 30);
    let flat: Vec<Vec<u8>> = batches.iter().flatten().cloned().collect();
    let batch_ends: Vec<usize> = batches
        .iter()
        .scan(0, |n, b| {
            *n += b.len();
            Some(*n)
        })
        .collect();

    let clean = SimVfs::new();
    assert_eq!(run(&clean, &batches), batches.len());
    let total_ops = clean.ops();
    assert!(
        total_ops > 60,
        "the workload should exercise rotation and syncs, made {total_ops} ops"
    );

    let mut cases = 0;
    for crash_at in 1..=total_ops + 1 {
        for damage in [
            Damage::DropUnsynced,
            Damage::TornLastWrite,
            Damage::Garbage { seed: crash_at },
        ] {
            let vfs = SimVfs::new();
            vfs.crash_at_op(crash_at);
            let acknowledged = run(&vfs, &batches);
            let context = format!(
                "crash at op {crash_at} with {damage:?}, {acknowledged} batches acknowledged"
            );
            let image = vfs.crash_image(damage);
            let log = open_sim(&image, small_options(Durability::Sync))
                .unwrap_or_else(|e| panic!("{context}: {e}"));
            let records = read_all(&log).unwrap_or_else(|e| panic!("{context}: {e}"));
            let must_have = if acknowledged == 0 {
                0
            } else {
                batch_ends[acknowledged - 1]
            };
            assert!(
                records.len() >= must_have,
                "{context}: lost acknowledged records ({} < {must_have})",
                records.len()
            );
            assert!(
                records.is_empty() || batch_ends.contains(&records.len()),
                "{context}: {} records is not a whole number of batches",
                records.len()
            );
            for (i, (lsn, payload)) in records.iter().enumerate() {
                assert_eq!(*lsn, i as u64 + 1, "{context}");
                assert_eq!(payload, &flat[i], "{context}: record {lsn} differs");
            }
            log.verify().unwrap_or_else(|e| panic!("{context}: {e}"));
            let next = log.append(&[b"after the crash".as_slice()]).unwrap();
            assert_eq!(next.first_lsn, records.len() as u64 + 1, "{context}");
            cases += 1;
        }
    }
    assert!(cases >= 180, "only {cases} crash cases");
    eprintln!("power loss: {cases} cases ({total_ops} operations + 1, 3 kinds of damage)");
}

/// A crash while recovery itself is truncating a torn tail is recovered by the next open.
#[test]
fn crash_during_recovery_is_recovered() {
    let batches = script(5, 12);
    let vfs = SimVfs::new();
    vfs.crash_at_op(20);
    run(&vfs, &batches);
    let image = vfs.crash_image(Damage::TornLastWrite);
    let baseline_ops = image.ops();
    for crash_at in 1..8 {
        let attempt = image.crash_image(Damage::DropUnsynced);
        attempt.crash_at_op(baseline_ops + crash_at);
        let _ = open_sim(&attempt, small_options(Durability::Sync));
        for damage in [Damage::DropUnsynced, Damage::TornLastWrite] {
            let again = attempt.crash_image(damage);
            let log = open_sim(&again, small_options(Durability::Sync)).unwrap();
            log.verify().unwrap();
            let n = read_all(&log).unwrap().len();
            log.append(&[b"x".as_slice()]).unwrap();
            assert_eq!(log.end_lsn(), n as u64 + 2);
        }
    }
}

/// Records a dead process wrote without fsync (`NoSync`) are read back by the next open,
/// which counts them as durable (`durable_lsn`): a power loss after that open keeps them.
#[test]
fn records_recovery_reads_are_durable() {
    let batches = script(3, 40);
    let vfs = SimVfs::new();
    let log = open_sim(&vfs, small_options(Durability::NoSync)).unwrap();
    for batch in &batches {
        log.append(batch).unwrap();
    }
    let written = read_all(&log).unwrap();
    std::mem::forget(log);

    let after_process_crash = vfs.process_crash_image();
    let log = open_sim(&after_process_crash, small_options(Durability::NoSync)).unwrap();
    assert_eq!(log.durable_lsn(), written.len() as u64 + 1);
    std::mem::forget(log);

    let after_power_loss = after_process_crash.crash_image(Damage::DropUnsynced);
    let log = open_sim(&after_power_loss, small_options(Durability::NoSync)).unwrap();
    assert_eq!(read_all(&log).unwrap(), written);
}

/// A log copied file by file (as `cp` or a restore from a backup does: written, never
/// synced, the directory's names not synced either) is durable once a log has opened it:
/// sealed segments, the active one, their names, and the log directory's own name.
#[test]
fn a_copied_log_is_durable_once_opened() {
    let original = SimVfs::new();
    let log = open_sim(&original, small_options(Durability::Sync)).unwrap();
    for batch in &script(5, 40) {
        log.append(batch).unwrap();
    }
    let written = read_all(&log).unwrap();
    log.close().unwrap();
    let segments = segment_files(&original);
    assert!(segments.len() >= 3, "sealed segments and an active one");

    let copy = SimVfs::new();
    // The directory the log is copied into exists, durably; `log/` and its files are new.
    let parent = dir().parent().unwrap().to_path_buf();
    copy.create_dir_all(&parent).unwrap();
    copy.sync_dir(Path::new("/")).unwrap();
    copy.create_dir_all(&dir()).unwrap();
    for (path, bytes) in &segments {
        let file = copy.open_file(path, OpenMode::CreateNew).unwrap();
        file.write_all_at(bytes, 0).unwrap();
    }
    let log = open_sim(&copy, small_options(Durability::Sync)).unwrap();
    assert_eq!(read_all(&log).unwrap(), written);
    std::mem::forget(log);

    let after_power_loss = copy.crash_image(Damage::DropUnsynced);
    let log = open_sim(&after_power_loss, small_options(Durability::Sync)).unwrap();
    assert_eq!(read_all(&log).unwrap(), written);
}

/// `NoSync` with `writeback_bytes`: the flusher fsyncs what appenders wrote once that much
/// waits, without a seal or a close, and what it reported durable survives a power loss.
/// Without it, nothing written after the open is durable until the segment is sealed.
#[test]
fn nosync_writeback_makes_records_durable_before_the_seal() {
    use fsdb_storage::LogOptions;
    use fsdb_storage::log::WRITEBACK_BYTES_MIN;
    use std::time::{Duration, Instant};

    let batch: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 1000]).collect();
    let options = |writeback_bytes| LogOptions {
        durability: Durability::NoSync,
        segment_bytes_max: 16 << 20,
        writeback_bytes,
        ..LogOptions::default()
    };
    // Four times the threshold, in one segment.
    let batches = (4 * WRITEBACK_BYTES_MIN as usize).div_ceil(64 * 1000);

    let without = SimVfs::new();
    let log = open_sim(&without, options(0)).unwrap();
    let start = log.durable_lsn();
    for _ in 0..batches {
        log.append(&batch).unwrap();
    }
    assert_eq!(log.durable_lsn(), start, "no fsync without writeback");
    let image = without.crash_image(Damage::DropUnsynced);
    drop(log);
    let recovered = open_sim(&image, options(0)).unwrap();
    assert_eq!(
        read_all(&recovered).unwrap().len(),
        0,
        "nothing was durable"
    );

    let vfs = SimVfs::new();
    let log = open_sim(&vfs, options(WRITEBACK_BYTES_MIN)).unwrap();
    for _ in 0..batches {
        log.append(&batch).unwrap();
    }
    // The flusher runs on its own thread: wait for it, boundedly.
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.durable_lsn() <= start + WRITEBACK_BYTES_MIN / 1000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let durable = log.durable_lsn();
    assert!(
        durable > start + WRITEBACK_BYTES_MIN / 1000,
        "the flusher made at least the first {WRITEBACK_BYTES_MIN} bytes durable (durable_lsn {durable})"
    );
    let image = vfs.crash_image(Damage::DropUnsynced);
    drop(log);
    let recovered = open_sim(&image, options(WRITEBACK_BYTES_MIN)).unwrap();
    let records = read_all(&recovered).unwrap();
    assert!(
        records.len() as u64 >= durable - start,
        "{} records survived, {} were reported durable",
        records.len(),
        durable - start
    );
}
