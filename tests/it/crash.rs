//! The kill -9 campaign: `fsdb serve` under concurrent HTTP writers and readers, killed with
//! SIGKILL at random moments and restarted, cycle after cycle.
//!
//! Writers send batches of events with unique ids; a batch whose answer was lost with the
//! server is retried after the restart (ids make the retry idempotent). After every kill:
//! `fsdb replay --verify` is clean; after every restart: each entity holds every
//! acknowledged event and nothing that was never sent (acked ≤ count ≤ acked + unknown),
//! no value a reader saw before the kill is lost, and after the retries each entity holds
//! exactly the events sent, once each.
//!
//! CI runs `FSDB_CRASH_CYCLES` cycles (default 50; a fresh data directory every 100); the soak is
//! `FSDB_CRASH_CYCLES=5000 cargo test --release --test it crash -- --nocapture`
//! (figures in docs/reliability.md).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value as J, json};

use crate::fixtures::{COUNT_N, ev_definitions};
use crate::generate::Rng;

/// The sum of the values, as feature `s` (beside `COUNT_N`).
const SUM_S: &str = r#"
[[feature]]
name = "s"
stream = "ev"
agg = "sum"
field = "v"
"#;

const ENTITIES: u64 = 8;
const WRITERS: u64 = 3;
const READERS: u64 = 2;

fn fsdb(data: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fsdb"));
    command.arg("--data").arg(data);
    command
}

/// A running `fsdb serve`, and how long it took from spawn to accepting connections.
struct Server {
    child: Child,
    addr: String,
    recovery: Duration,
}

fn start(data: &Path) -> Server {
    let started = Instant::now();
    let mut child = fsdb(data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if let Some(addr) = line.strip_prefix("fsdb: serving on http://") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server starts");
    Server {
        child,
        addr,
        recovery: started.elapsed(),
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// A batch of events as sent: (entity, value) per event; ids are `{tag}-{index}`.
#[derive(Clone)]
struct Batch {
    tag: String,
    events: Vec<(u64, i64)>,
}

impl Batch {
    fn json(&self) -> J {
        J::Array(
            self.events
                .iter()
                .enumerate()
                .map(|(i, &(k, v))| {
                    json!({"id": format!("{}-{i}", self.tag), "k": format!("k{k}"), "ts": 1_000 + v, "v": v})
                })
                .collect(),
        )
    }
}

/// What the clients know: batches acknowledged, batches whose outcome is unknown, and the
/// largest count each reader saw per entity.
#[derive(Default)]
struct Ledger {
    acked: Vec<Batch>,
    unknown: Vec<Batch>,
    seen: BTreeMap<u64, i64>,
}

/// Per entity: (events, sum of values) over `batches`.
fn totals<'a>(batches: impl Iterator<Item = &'a Batch>) -> BTreeMap<u64, (i64, i64)> {
    let mut out: BTreeMap<u64, (i64, i64)> = (0..ENTITIES).map(|k| (k, (0, 0))).collect();
    for batch in batches {
        for &(k, v) in &batch.events {
            let entry = out.get_mut(&k).unwrap();
            entry.0 += 1;
            entry.1 += v;
        }
    }
    out
}

/// Send `batch`: `Some(())` acknowledged, `None` outcome unknown (the server went away).
fn send(http: &ureq::Agent, addr: &str, batch: &Batch) -> Option<()> {
    let response = http
        .post(format!("http://{addr}/v1/streams/ev/events"))
        .send_json(batch.json());
    match response {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let body = r.body_mut().read_to_string().unwrap_or_default();
            match status {
                200 => Some(()),
                // Shed or refused while shutting down: unknown, retried.
                503 => None,
                _ => panic!("ingest answered {status}: {body}"),
            }
        }
        Err(_) => None,
    }
}

/// Per entity: the (count, sum) the server answers.
fn counts(http: &ureq::Agent, addr: &str) -> BTreeMap<u64, (i64, i64)> {
    (0..ENTITIES)
        .map(|k| {
            let mut r = http
                .get(format!("http://{addr}/v1/features?entity=k{k}&names=n,s"))
                .call()
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let body: J = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
            let f = &body["features"];
            (k, (f["n"].as_i64().unwrap(), f["s"].as_i64().unwrap()))
        })
        .collect()
}

/// One cycle of load: writers and readers until the server is killed after `run_for`.
fn load(
    server: &mut Server,
    ledger: &Arc<Mutex<Ledger>>,
    cycle: u64,
    rng: &mut Rng,
    run_for: Duration,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for w in 0..WRITERS {
        let (ledger, stop, addr) = (Arc::clone(ledger), Arc::clone(&stop), server.addr.clone());
        let mut rng = Rng::new(rng.next());
        threads.push(std::thread::spawn(move || {
            let http = agent();
            for seq in 0..10_000u64 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let len = 1 + rng.below(20) as usize;
                let batch = Batch {
                    tag: format!("c{cycle}-w{w}-{seq}"),
                    events: (0..len)
                        .map(|_| (rng.below(ENTITIES), rng.below(1000) as i64))
                        .collect(),
                };
                let outcome = send(&http, &addr, &batch);
                let mut ledger = ledger.lock().unwrap();
                match outcome {
                    Some(()) => ledger.acked.push(batch),
                    None => {
                        ledger.unknown.push(batch);
                        return;
                    }
                }
            }
        }));
    }
    for r in 0..READERS {
        let (ledger, stop, addr) = (Arc::clone(ledger), Arc::clone(&stop), server.addr.clone());
        threads.push(std::thread::spawn(move || {
            let http = agent();
            for i in 0..100_000u64 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let k = (i + r) % ENTITIES;
                let Ok(mut response) = http
                    .get(format!("http://{addr}/v1/features?entity=k{k}&names=n"))
                    .call()
                else {
                    return;
                };
                if response.status().as_u16() != 200 {
                    return;
                }
                let Ok(text) = response.body_mut().read_to_string() else {
                    return;
                };
                let body: J = serde_json::from_str(&text).unwrap();
                let n = body["features"]["n"].as_i64().unwrap();
                let mut ledger = ledger.lock().unwrap();
                let seen = ledger.seen.entry(k).or_default();
                *seen = (*seen).max(n);
            }
        }));
    }
    std::thread::sleep(run_for);
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
}

/// Cycles on one data directory; a longer run starts over on a fresh one, so that the
/// per-cycle `replay --verify` stays bounded.
const CYCLES_PER_DIRECTORY: u64 = 100;

/// What an epoch (cycles on one data directory) acknowledged and how fast it restarted.
struct EpochReport {
    batches: usize,
    events: usize,
    recoveries: Vec<Duration>,
}

#[test]
fn kill_9_loses_nothing_acknowledged() {
    let cycles: u64 = std::env::var("FSDB_CRASH_CYCLES")
        .map(|c| c.parse().expect("FSDB_CRASH_CYCLES is a number"))
        .unwrap_or(50);
    let seed: u64 = std::env::var("FSDB_TEST_SEED")
        .map(|s| s.parse().expect("FSDB_TEST_SEED is a number"))
        .unwrap_or(1);
    let mut rng = Rng::new(seed);
    let (mut batches, mut events, mut recoveries) = (0, 0, Vec::new());
    let mut first = 0;
    while first < cycles {
        let last = (first + CYCLES_PER_DIRECTORY).min(cycles);
        let report = epoch(first..last, &mut rng);
        batches += report.batches;
        events += report.events;
        recoveries.extend(report.recoveries);
        first = last;
    }
    recoveries.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    eprintln!(
        "kill -9 campaign: {cycles} cycles, {batches} batches / {events} events acknowledged, 0 lost, 0 duplicated; restart to serving: median {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        ms(recoveries[recoveries.len() / 2]),
        ms(recoveries[recoveries.len() * 99 / 100]),
        ms(*recoveries.last().unwrap()),
    );
}

/// Run `cycles` kill -9 cycles on a fresh data directory; panics on any violation.
fn epoch(cycles: std::ops::Range<u64>, rng: &mut Rng) -> EpochReport {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let defs = dir.path().join("defs.toml");
    std::fs::write(&defs, ev_definitions(&format!("{COUNT_N}{SUM_S}"))).unwrap();
    assert!(
        fsdb(&data)
            .arg("apply")
            .arg(&defs)
            .output()
            .unwrap()
            .status
            .success()
    );

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut recoveries = Vec::new();
    let http = agent();
    let mut server = start(&data);
    for cycle in cycles {
        let run_for = Duration::from_millis(5 + rng.below(200));
        load(&mut server, &ledger, cycle, rng, run_for);

        let verify = fsdb(&data).args(["replay", "--verify"]).output().unwrap();
        assert!(
            verify.status.success(),
            "cycle {cycle}: replay --verify: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );

        server = start(&data);
        recoveries.push(server.recovery);
        let mut ledger = ledger.lock().unwrap();
        let got = counts(&http, &server.addr);
        let acked = totals(ledger.acked.iter());
        let possible = totals(ledger.acked.iter().chain(&ledger.unknown));
        for k in 0..ENTITIES {
            let (n, _) = got[&k];
            assert!(
                acked[&k].0 <= n && n <= possible[&k].0,
                "cycle {cycle}: k{k} holds {n} events; acknowledged {}, sent {}",
                acked[&k].0,
                possible[&k].0
            );
            let seen = ledger.seen.get(&k).copied().unwrap_or(0);
            assert!(
                seen <= n,
                "cycle {cycle}: k{k}: a reader saw {seen} events, recovery has {n}"
            );
        }
        // Retry what is unknown: then every entity holds exactly what was sent, once.
        let unknown = std::mem::take(&mut ledger.unknown);
        for batch in unknown {
            assert!(
                send(&http, &server.addr, &batch).is_some(),
                "cycle {cycle}: a retry failed with no crash"
            );
            ledger.acked.push(batch);
        }
        assert_eq!(
            counts(&http, &server.addr),
            totals(ledger.acked.iter()),
            "cycle {cycle}: after retries"
        );
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let verify = fsdb(&data).arg("verify").output().unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    let ledger = ledger.lock().unwrap();
    EpochReport {
        batches: ledger.acked.len(),
        events: ledger.acked.iter().map(|b| b.events.len()).sum(),
        recoveries,
    }
}
