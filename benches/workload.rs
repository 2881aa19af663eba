//! The reference workload benchmark (DESIGN §5), side by side with RocksDB in the same run.
//!
//! `cargo bench --bench workload` (scale S) or `FSDB_BENCH_SCALE=M cargo bench --bench workload`;
//! `FSDB_BENCH_FRESHNESS=1h` makes all twelve features batch features with that period;
//! `FSDB_BENCH_FRESHNESS=none` defines the streams only and measures ingest alone (what
//! the features add to ingest is the difference); `FSDB_BENCH_WRITERS=n` appends from `n`
//! threads, and gives the same-events peer as many writers (default [`WRITERS_DEFAULT`]).
//! (`benches/interleave.sh`'s `PATTERN` argument reads any line of the report.)
//! Reports: durable ingest (ack after fsync, batches of 1,000, 12 features) against RocksDB
//! synced 1,000-put batches, of the same events keyed by entity and time (from as many
//! writers as fsdb's appenders, and from one) and of RocksDB's best case (sequential
//! keys), in [`INGEST_ROUNDS`] interleaved rounds (the medians, and
//! each round's rates and ratio); `latest` and `as_of` p50/p99 for one entity and 12 features;
//! `latest` while current events keep arriving for the same entities; `as_of` for a hot
//! entity with 36k events inside a 1 h window; full replay of the log (the median of
//! [`REPLAYS`] replays, each into an empty state directory); peak RSS of the
//! process, and of the database alone (the process less the input the harness generated
//! before timing, sampled throughout: `RssSampler`).
//! Figures: docs/benchmarks.md.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fsdb::time::ManualClock;
use fsdb::workload::{self, WorkloadSpec};
use fsdb::{Db, Durability, Event, Options, Value};

fsdb::use_jemalloc!();

/// Concurrent appenders, and the same-events peer's writers: group commit lets them share
/// fsyncs. Four is the peer's best count on the development machine (2, 4, 8 and 16
/// measured, docs/benchmarks.md); `FSDB_BENCH_WRITERS` overrides it for both sides.
const WRITERS_DEFAULT: usize = 4;

fn writers() -> usize {
    match std::env::var("FSDB_BENCH_WRITERS") {
        Ok(n) => n
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .expect("FSDB_BENCH_WRITERS is a positive number"),
        Err(_) => WRITERS_DEFAULT,
    }
}

/// How the RocksDB peers compute their WAL's CRC-32C. librocksdb-sys compiles RocksDB with
/// the target's features only, and RocksDB's CRC-32C runs in hardware on x86-64 only with
/// SSE4.2 and PCLMULQDQ (`.cargo/config.toml` enables them): without them every peer put
/// pays a software CRC, and the ratios flatter fsdb (by 5 – 10%, docs/benchmarks.md).
const PEER_CRC32C: &str = if cfg!(not(target_arch = "x86_64")) {
    "not checked on this architecture"
} else if cfg!(all(target_feature = "sse4.2", target_feature = "pclmulqdq")) {
    "in hardware (SSE4.2, PCLMULQDQ)"
} else {
    "IN SOFTWARE: built without SSE4.2/PCLMULQDQ, which slows the peers and flatters the ratios"
};

/// Replays of the whole log; the report gives their median (and each one's rate).
const REPLAYS: usize = 3;

/// Rounds of the durable ingest, each into an empty database between the two halves of
/// the peers' runs; the report gives the medians (DESIGN §5's targets are medians) and
/// each round's figures. The last round's database is the one queried afterwards.
const INGEST_ROUNDS: usize = 3;

fn options(clock: &Arc<ManualClock>) -> Options {
    Options {
        durability: Durability::Sync,
        clock: Arc::clone(clock) as Arc<dyn fsdb::time::Clock>,
        ..Options::default()
    }
}

/// The reference definitions; with `freshness`, every feature is a batch feature with that
/// period (the others' own freshness lines are dropped); `none`: the streams only.
fn definitions(freshness: Option<&str>) -> String {
    let Some(period) = freshness else {
        return workload::DEFINITIONS.to_owned();
    };
    if period == "none" {
        let streams_end = workload::DEFINITIONS
            .find("[[feature]]")
            .expect("the reference definitions have features");
        return workload::DEFINITIONS[..streams_end].to_owned();
    }
    let mut out = String::new();
    for line in workload::DEFINITIONS.lines() {
        if line.starts_with("freshness") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.starts_with("agg") {
            out.push_str(&format!("freshness = \"{period}\"\n"));
        }
    }
    out
}

/// The resident set now, in bytes (`/proc/self/statm`; 0 where there is none).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The peak RSS of the database alone: the process's RSS sampled every 10 ms, less the
/// bytes of the pre-generated input while the harness holds it (`input_bytes`). At scale M
/// that input (10M `Event` values) is larger than the database it is fed to. Samples are
/// labelled with the phase running; none are taken while the RocksDB peer runs.
struct RssSampler {
    input_bytes: AtomicU64,
    /// The phase running, or `None` while the process runs something other than fsdb.
    phase: Mutex<Option<&'static str>>,
    peak: Mutex<(u64, &'static str)>,
    stop: AtomicBool,
}

impl RssSampler {
    const PERIOD: Duration = Duration::from_millis(10);

    /// Start sampling, the harness holding `input_bytes` of input.
    fn start(input_bytes: u64) -> Arc<RssSampler> {
        let sampler = Arc::new(RssSampler {
            input_bytes: AtomicU64::new(input_bytes),
            phase: Mutex::new(Some("ingest")),
            peak: Mutex::new((0, "-")),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&sampler);
        std::thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                s.sample();
                std::thread::sleep(Self::PERIOD);
            }
        });
        sampler
    }

    /// Label the samples from now on (`None`: take none).
    fn begin(&self, phase: Option<&'static str>) {
        *self.phase.lock().unwrap() = phase;
    }

    fn sample(&self) {
        let phase = self.phase.lock().unwrap();
        let Some(phase) = *phase else { return };
        let database = rss_bytes().saturating_sub(self.input_bytes.load(Ordering::Relaxed));
        let mut peak = self.peak.lock().unwrap();
        if database > peak.0 {
            *peak = (database, phase);
        }
    }

    /// The peak so far, in MiB, and the phase it was seen in; stops sampling.
    fn finish(&self) -> (f64, &'static str) {
        self.sample();
        self.stop.store(true, Ordering::Relaxed);
        let (bytes, phase) = *self.peak.lock().unwrap();
        (bytes as f64 / (1 << 20) as f64, phase)
    }
}

/// Let the allocator give freed pages back to the operating system: jemalloc, as our
/// programs configure it (`fsdb::allocator::JEMALLOC_CONF`), does so within a second.
fn return_freed_memory() {
    std::thread::sleep(Duration::from_secs(2));
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Append `batches` from [`writers`] threads (batch i goes to thread i % writers, so each
/// thread keeps arrival order); every append is acknowledged after fsync.
fn ingest(db: &Db, batches: &[(&'static str, Vec<Event>)]) -> (u64, Duration) {
    let start = Instant::now();
    let accepted = workload::append_from_threads(db, batches, writers()).unwrap();
    (accepted, start.elapsed())
}

fn open_peer(dir: &Path) -> (rocksdb::DB, rocksdb::WriteOptions) {
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    let db = rocksdb::DB::open(&options, dir).unwrap();
    let mut write = rocksdb::WriteOptions::default();
    write.set_sync(true);
    (db, write)
}

/// The best case of the peer: RocksDB with synced write batches of 1,000 puts of 60-byte
/// values under sequential 8-byte keys (each memtable insert lands at the end).
fn rocksdb_synced_batches(dir: &Path, puts: u64) -> Duration {
    let (db, write) = open_peer(dir);
    let value = [7u8; 60];
    let start = Instant::now();
    for b in 0..puts / 1000 {
        let mut batch = rocksdb::WriteBatch::default();
        for i in 0..1000u64 {
            batch.put((b * 1000 + i).to_be_bytes(), value);
        }
        db.write_opt(batch, &write).unwrap();
    }
    start.elapsed()
}

/// The peer storing the same events as fsdb, from `writers` threads (as many as fsdb has
/// appenders: RocksDB groups concurrent writers' commits too; or one): synced write
/// batches of 1,000 puts, each event under the key a per-entity event store would give it
/// (stream, entity, time, arrival number) with the event's log record as the value. The
/// batches are filled before the clock starts: only their writes are timed.
fn rocksdb_same_events(
    dir: &Path,
    events: impl Iterator<Item = (workload::Stream, Event)>,
    writers: usize,
) -> (u64, Duration) {
    let (db, write) = open_peer(dir);
    // Batch i goes to writer i % writers, as fsdb's appenders take theirs.
    let mut by_writer: Vec<Vec<rocksdb::WriteBatch>> = (0..writers).map(|_| Vec::new()).collect();
    let mut puts = 0u64;
    let mut events = events.peekable();
    for writer in (0..writers).cycle() {
        if events.peek().is_none() {
            break;
        }
        let mut batch = rocksdb::WriteBatch::default();
        for (stream, event) in events.by_ref().take(1000) {
            let mut key = vec![stream as u8];
            key.extend_from_slice(event.entity.as_bytes());
            key.extend_from_slice(&event.time_ms.to_be_bytes());
            key.extend_from_slice(&puts.to_be_bytes());
            let record = (
                stream as u8,
                &event.entity,
                event.time_ms,
                &event.id,
                &event.values,
            );
            batch.put(key, fsdb_storage::codec::encode(&record).unwrap());
            puts += 1;
        }
        by_writer[writer].push(batch);
    }
    let start = Instant::now();
    std::thread::scope(|scope| {
        for batches in by_writer {
            let (db, write) = (&db, &write);
            scope.spawn(move || {
                for batch in batches {
                    db.write_opt(batch, write).unwrap();
                }
            });
        }
    });
    (puts, start.elapsed())
}

/// What one ingest round measured: fsdb's appends, and the peers' puts (both halves).
struct IngestRound {
    accepted: u64,
    took: Duration,
    /// The same events in RocksDB ([`rocksdb_same_events`]): puts, and their time.
    same: (u64, Duration),
    /// The same from one writer (`None` when the benchmark's writers are one already):
    /// DESIGN §5 does not say how many writers its peer had.
    same_one_writer: Option<(u64, Duration)>,
    /// RocksDB's best case ([`rocksdb_synced_batches`]).
    best: (u64, Duration),
}

impl IngestRound {
    fn fsdb_rate(&self) -> f64 {
        self.accepted as f64 / self.took.as_secs_f64()
    }

    fn same_rate(&self) -> f64 {
        self.same.0 as f64 / self.same.1.as_secs_f64()
    }

    fn best_rate(&self) -> f64 {
        self.best.0 as f64 / self.best.1.as_secs_f64()
    }

    fn same_one_writer_rate(&self) -> f64 {
        let (puts, took) = self.same_one_writer.expect("measured");
        puts as f64 / took.as_secs_f64()
    }
}

/// One ingest round: the peers store the first half of the events (each peer into a
/// directory of its own under `dir`), `fsdb` ingests all of them, the peers store the
/// second half; so that both see the same machine state. The peers' directories are
/// removed afterwards.
fn ingest_round(
    dir: &Path,
    spec: &WorkloadSpec,
    fsdb: impl FnOnce() -> (u64, Duration),
) -> IngestRound {
    let half = spec.events / 2;
    let writers = writers();
    // Each peer stores one half of the events (those past the first `skip`, at most
    // `take`) into a directory named by peer and half.
    let peers = |half_number: usize, skip: usize, take: usize| {
        let events = || spec.generator().skip(skip).take(take);
        let best = rocksdb_synced_batches(&dir.join(format!("best-{half_number}")), half);
        let same = rocksdb_same_events(&dir.join(format!("same-{half_number}")), events(), writers);
        let one = (writers > 1)
            .then(|| rocksdb_same_events(&dir.join(format!("one-{half_number}")), events(), 1));
        (best, same, one)
    };
    let first = peers(1, 0, half as usize);
    return_freed_memory();
    let (accepted, took) = fsdb();
    let second = peers(2, half as usize, usize::MAX);
    for peer in ["best", "same", "one"] {
        for half_number in 1..=2 {
            let peer_dir = dir.join(format!("{peer}-{half_number}"));
            if peer_dir.exists() {
                std::fs::remove_dir_all(peer_dir).unwrap();
            }
        }
    }
    return_freed_memory();
    let sum = |a: (u64, Duration), b: (u64, Duration)| (a.0 + b.0, a.1 + b.1);
    IngestRound {
        accepted,
        took,
        same: sum(first.1, second.1),
        same_one_writer: first.2.zip(second.2).map(|(a, b)| sum(a, b)),
        best: (2 * half, first.0 + second.0),
    }
}

/// The median of `values` (of an odd number, the middle one).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `values` in millions, for a report's list of runs.
fn in_millions(values: impl Iterator<Item = f64>) -> String {
    let values: Vec<String> = values.map(|v| format!("{:.2}", v / 1e6)).collect();
    values.join(", ")
}

fn latencies(mut sample: impl FnMut(usize) -> Duration, n: usize) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..n).map(&mut sample).collect();
    times.sort_unstable();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

fn copy_log(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "LOCK" && entry.file_type().unwrap().is_file() {
            let copy = to.join(entry.file_name());
            std::fs::copy(entry.path(), &copy).unwrap();
            // On disk, as a log being replayed has long been: the open fsyncs every
            // segment, which finds nothing to write then, and all of a fresh copy.
            std::fs::File::open(&copy).unwrap().sync_all().unwrap();
        }
    }
}

fn main() {
    // `cargo bench` passes --bench; any argument naming another benchmark skips this one.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !filter.is_empty() && !filter.iter().any(|f| "workload".contains(f.as_str())) {
        return;
    }
    let scale = std::env::var("FSDB_BENCH_SCALE").unwrap_or_else(|_| "S".into());
    let spec = WorkloadSpec::by_name(&scale).expect("FSDB_BENCH_SCALE is S or M");
    let freshness = std::env::var("FSDB_BENCH_FRESHNESS").ok();
    println!(
        "reference workload, scale {scale}: {} events, {} entities, {} days; freshness: {}",
        spec.events,
        spec.entities,
        spec.days,
        freshness
            .as_deref()
            .unwrap_or("as defined (10 realtime, 2 batch)")
    );
    let root = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(spec.end_ms()));

    // Generated before timing, so that only fsdb's work is measured.
    let before_input = rss_bytes();
    let batches = workload::batches(spec.generator(), 1000);
    let input_bytes = rss_bytes().saturating_sub(before_input);
    // Ingest rounds, each interleaved with the peers; every round but the last into a
    // database of its own, closed and removed after it.
    let mut rounds = Vec::with_capacity(INGEST_ROUNDS);
    for round in 1..INGEST_ROUNDS {
        let dir = root.path().join(format!("round-{round}"));
        rounds.push(ingest_round(&dir, &spec, || {
            let db = Db::open(dir.join("fsdb"), options(&clock)).unwrap();
            db.apply(&definitions(freshness.as_deref())).unwrap();
            let ingested = ingest(&db, &batches);
            db.close().unwrap();
            std::fs::remove_dir_all(dir.join("fsdb")).unwrap();
            ingested
        }));
    }
    // The last round's database is kept, and its memory sampled from its opening on.
    let data = root.path().join("fsdb");
    let mut kept = None;
    rounds.push(ingest_round(root.path(), &spec, || {
        let rss = RssSampler::start(input_bytes);
        let db = Db::open(&data, options(&clock)).unwrap();
        db.apply(&definitions(freshness.as_deref())).unwrap();
        let ingested = ingest(&db, &batches);
        // Until the allocator has returned the input's pages, the sampler still subtracts
        // them (and the figure errs high rather than low); without waiting for it, the
        // 2.2 GiB input at M could be counted as the database's (seen once: a 2.7 GiB
        // "database").
        drop(batches);
        return_freed_memory();
        rss.input_bytes.store(0, Ordering::Relaxed);
        rss.begin(None);
        kept = Some((db, rss));
        ingested
    }));
    let (db, rss) = kept.expect("the last round keeps its database");
    rss.begin(Some("after ingest"));
    let accepted = rounds[0].accepted;
    assert!(
        rounds.iter().all(|round| round.accepted == accepted),
        "every round accepts the same events"
    );
    let fsdb_rate = median(rounds.iter().map(IngestRound::fsdb_rate).collect());
    println!(
        "durable ingest: {accepted} events at {:.0} events/s from {} appenders (the median of {INGEST_ROUNDS} rounds: {} M/s)",
        fsdb_rate,
        writers(),
        in_millions(rounds.iter().map(IngestRound::fsdb_rate))
    );
    for (peer, rate) in [
        (
            format!(
                "the same events by (stream, entity, time), {} writers",
                writers()
            ),
            IngestRound::same_rate as fn(&IngestRound) -> f64,
        ),
        (
            "sequential keys, 60-byte values (its best case), 1 writer".to_owned(),
            IngestRound::best_rate,
        ),
    ]
    .into_iter()
    .chain(rounds[0].same_one_writer.is_some().then(|| {
        (
            "the same events, 1 writer".to_owned(),
            IngestRound::same_one_writer_rate as fn(&IngestRound) -> f64,
        )
    })) {
        let ratios: Vec<f64> = rounds.iter().map(|r| r.fsdb_rate() / rate(r)).collect();
        let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "rocksdb synced 1000-put batches, {peer}: {:.0} puts/s (rounds: {} M/s); ratio fsdb/rocksdb = {:.2} (the median of the rounds' ratios: {})",
            median(rounds.iter().map(rate).collect()),
            in_millions(rounds.iter().map(rate)),
            median(ratios),
            listed.join(", ")
        );
    }
    println!("rocksdb peers' CRC-32C: {PEER_CRC32C}");
    db.checkpoint().unwrap();
    let mut phases = vec![("ingest", rss_bytes(), db.cache_stats())];
    if freshness.as_deref() == Some("none") {
        print_rss(&rss, input_bytes);
        return;
    }

    // Queries: random entities (Zipf, as traffic would be), 12 features.
    let mut rng = workload::Rng::new(99);
    let customers = workload::Zipf::new(spec.entities, 1.0);
    let entities: Vec<String> = (0..4096)
        .map(|_| workload::Generator::customer(customers.sample(&mut rng)))
        .collect();
    let features = workload::FEATURES;
    rss.begin(Some("latest"));
    for e in &entities {
        db.latest(e, &features).unwrap(); // warm: load entities, build summaries
    }
    let (p50, p99) = latencies(
        |i| {
            let start = Instant::now();
            std::hint::black_box(db.latest(&entities[i % entities.len()], &features).unwrap());
            start.elapsed()
        },
        50_000,
    );
    phases.push(("latest", rss_bytes(), db.cache_stats()));
    rss.begin(Some("as_of"));
    println!(
        "latest, 12 features: p50 {:.1} µs, p99 {:.1} µs",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
    let span = (spec.end_ms() - spec.start_ms) as u64;
    let times: Vec<i64> = (0..4096)
        .map(|_| spec.start_ms + rng.below(span) as i64)
        .collect();
    let (p50, p99) = latencies(
        |i| {
            let start = Instant::now();
            std::hint::black_box(
                db.as_of(
                    &entities[i % entities.len()],
                    &features,
                    times[i % times.len()],
                )
                .unwrap(),
            );
            start.elapsed()
        },
        50_000,
    );
    phases.push(("as_of", rss_bytes(), db.cache_stats()));
    rss.begin(Some("latest under ingest"));
    println!(
        "as_of, 12 features: p50 {:.1} µs, p99 {:.1} µs",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );

    // `latest` while current events keep arriving for the same (Zipf) entities: half an
    // hour past the last hour boundary, rounds of one 1,000-event append then 200 reads.
    // An event drops what `latest` remembered of a realtime feature; a batch feature's
    // value stays (the events are after its period start).
    let now = workload::live_now(&spec);
    clock.set(now);
    db.materialize().unwrap();
    let mut reads = Vec::with_capacity(200 * 200);
    for round in 0..200i64 {
        let events = workload::live_transactions(&spec, round, &customers, &mut rng);
        db.append("transactions", &events).unwrap();
        for _ in 0..200 {
            let entity = workload::Generator::customer(customers.sample(&mut rng));
            let start = Instant::now();
            std::hint::black_box(db.latest(&entity, &features).unwrap());
            reads.push(start.elapsed());
        }
    }
    phases.push(("latest under ingest", rss_bytes(), db.cache_stats()));
    rss.begin(Some("hot entity"));
    reads.sort_unstable();
    println!(
        "latest under ingest, 12 features: p50 {:.1} µs, p99 {:.1} µs",
        percentile(&reads, 0.5).as_secs_f64() * 1e6,
        percentile(&reads, 0.99).as_secs_f64() * 1e6
    );
    clock.set(spec.end_ms());

    // A hot entity: 36k events inside one hour (10 per second).
    let hot_start = spec.end_ms() + 86_400_000;
    let hot: Vec<Event> = (0..36_000)
        .map(|i| Event {
            entity: "hot".into(),
            time_ms: hot_start + i * 100,
            id: Some(format!("hot{i}")),
            values: vec![
                Value::Float((i % 500) as f64),
                Value::Bool(true),
                Value::String("Lyon".into()),
                Value::String(format!("m{}", i % 50)),
            ],
        })
        .collect();
    for chunk in hot.chunks(1000) {
        db.append("transactions", chunk).unwrap();
    }
    let hot_end = hot_start + 3_600_000;
    let (p50, p99) = latencies(
        |i| {
            let start = Instant::now();
            std::hint::black_box(
                db.as_of("hot", &features, hot_end - (i as i64 % 600_000))
                    .unwrap(),
            );
            start.elapsed()
        },
        20_000,
    );
    let (_, stats) = db
        .as_of_with_stats("hot", &features, hot_end - 1234)
        .unwrap();
    println!(
        "as_of, hot entity (36k events in 1 h): p50 {:.1} µs, p99 {:.1} µs; reads {stats:?}",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
    phases.push(("hot entity", rss_bytes(), db.cache_stats()));
    // The digests that check the replay hold every id of the log at once: verification,
    // not the workload, so not sampled.
    rss.begin(None);
    let digest = db.state_digest().unwrap();
    db.close().unwrap();

    // Replay: the whole log into an empty state directory, REPLAYS times (the target is a
    // median); the last one's state is checked against the first database's.
    let replay_dir = root.path().join("replay");
    let mut took = Vec::with_capacity(REPLAYS);
    let mut replayed = None;
    for _ in 0..REPLAYS {
        if let Some(db) = replayed.take() {
            Db::close(db).unwrap();
            std::fs::remove_dir_all(&replay_dir).unwrap();
        }
        copy_log(&data.join("log"), &replay_dir.join("log"));
        // What the database before freed is not the replay's.
        return_freed_memory();
        rss.begin(Some("replay"));
        let start = Instant::now();
        replayed = Some(Db::open(&replay_dir, options(&clock)).unwrap());
        took.push(start.elapsed());
        rss.begin(None);
    }
    let replayed = replayed.expect("replayed at least once");
    phases.push(("replay", rss_bytes(), replayed.cache_stats()));
    let records = replayed.open_report().replayed;
    let rate = |took: Duration| records as f64 / took.as_secs_f64();
    let runs: Vec<String> = (took.iter())
        .map(|&t| format!("{:.2}", rate(t) / 1e6))
        .collect();
    took.sort();
    let median = took[REPLAYS / 2];
    println!(
        "replay: {records} records in {:.2}s = {:.0} records/s (the median of {REPLAYS} runs: {} M/s)",
        median.as_secs_f64(),
        rate(median),
        runs.join(", ")
    );
    assert_eq!(
        replayed.state_digest().unwrap(),
        digest,
        "replay rebuilds identical state"
    );
    print_rss(&rss, input_bytes);
    let phases: Vec<String> = phases
        .iter()
        .map(|(phase, bytes, cache)| {
            format!(
                "{phase} {:.0} (entities {:.0}, ids {:.0})",
                mib(*bytes as usize),
                mib(cache.bytes_held),
                mib(cache.event_ids_bytes)
            )
        })
        .collect();
    println!(
        "RSS after each phase, MiB (of which the entity cache's estimate, and the event ids): {}",
        phases.join(", ")
    );
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn print_rss(rss: &RssSampler, input_bytes: u64) {
    let (database, phase) = rss.finish();
    println!(
        "peak RSS: {:.0} MiB (process, with the pre-generated input of {:.0} MiB); database: {database:.0} MiB, during {phase}",
        peak_rss_mib(),
        input_bytes as f64 / (1 << 20) as f64,
    );
}
