//! Log benchmarks (`cargo bench --bench log`): durable batched append, group commit under
//! concurrent single-record appenders against one fsync per record, no-sync append, and a
//! sequential scan that checks and decodes every frame. Figures: docs/benchmarks.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fsdb_storage::{Durability, Log, LogOptions};

fn options(durability: Durability) -> LogOptions {
    LogOptions {
        durability,
        segment_bytes_max: 256 << 20,
        ..LogOptions::default()
    }
}

fn batched_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_batch_1000");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    for (label, durability) in [("sync", Durability::Sync), ("nosync", Durability::NoSync)] {
        for size in [100usize, 1024] {
            let dir = tempfile::tempdir().unwrap();
            let log = Log::open(dir.path(), options(durability)).unwrap();
            let batch: Vec<Vec<u8>> = (0..1000).map(|i| vec![i as u8; size]).collect();
            group.throughput(Throughput::Elements(1000));
            group.bench_with_input(
                BenchmarkId::new(label, format!("{size}B")),
                &batch,
                |b, batch| {
                    b.iter(|| log.append(batch).unwrap());
                },
            );
        }
    }
    group.finish();
}

/// `threads` appenders, each appending single 100-byte records with `Sync` durability.
fn concurrent_appends(threads: usize, appends_per_thread: usize) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), options(Durability::Sync)).unwrap());
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let record = [7u8; 100];
                for _ in 0..appends_per_thread {
                    log.append(&[record.as_slice()]).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed()
}

fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_single_sync");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    // One thread is exactly one fsync per record: the baseline group commit must beat.
    for threads in [1usize, 4, 16] {
        let per_thread = 2048 / threads;
        group.throughput(Throughput::Elements((threads * per_thread) as u64));
        group.bench_function(
            BenchmarkId::from_parameter(format!("{threads}_appenders")),
            |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| concurrent_appends(threads, per_thread))
                        .sum()
                });
            },
        );
    }
    group.finish();
}

/// `threads` appenders, each appending `batches` batches of 1,000 100-byte records (Sync).
fn concurrent_batches(threads: usize, batches: usize) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), options(Durability::Sync)).unwrap());
    let batch: Arc<Vec<Vec<u8>>> = Arc::new((0..1000).map(|i| vec![i as u8; 100]).collect());
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (log, batch) = (Arc::clone(&log), Arc::clone(&batch));
            std::thread::spawn(move || {
                for _ in 0..batches {
                    log.append(&batch).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed()
}

fn group_commit_batches(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_batch_1000_sync_concurrent");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    for threads in [1usize, 4, 8] {
        let batches = 400 / threads;
        group.throughput(Throughput::Elements((threads * batches * 1000) as u64));
        group.bench_function(
            BenchmarkId::from_parameter(format!("{threads}_appenders")),
            |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| concurrent_batches(threads, batches))
                        .sum()
                });
            },
        );
    }
    group.finish();
}

fn scan(c: &mut Criterion) {
    let mut group = c.benchmark_group("scan");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    let records = 2_000_000usize;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(Durability::NoSync)).unwrap();
    let batch: Vec<Vec<u8>> = (0..10_000).map(|i| vec![i as u8; 100]).collect();
    for _ in 0..records / batch.len() {
        log.append(&batch).unwrap();
    }
    log.sync().unwrap();
    group.throughput(Throughput::Elements(records as u64));
    group.bench_function("100B_checked", |b| {
        b.iter(|| {
            let mut scan = log.scan(1).unwrap();
            let mut bytes = 0usize;
            while let Some(record) = scan.next_record().unwrap() {
                bytes += record.payload.len();
            }
            assert_eq!(bytes, records * 100);
        });
    });
    group.finish();
}

criterion_group!(
    benches,
    batched_append,
    group_commit,
    group_commit_batches,
    scan
);
criterion_main!(benches);
