//! Prometheus metrics: requests and their latency by route, ingest counts, and the
//! database's sizes and positions, rendered as text format 0.0.4.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::Db;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    5.0,
];

/// The routes, as metric labels (unknown paths are one label, so the set stays bounded).
const ROUTES: [&str; 11] = [
    "POST /v1/streams/{stream}/events",
    "GET /v1/features",
    "POST /v1/features/query",
    "POST /v1/training-set",
    "GET /v1/registry",
    "POST /v1/registry",
    "GET /healthz",
    "GET /metrics",
    "GET /openapi.json",
    "DELETE /v1/registry/features/{feature}",
    "other",
];

pub(crate) fn route_of(method: &Method, path: &str) -> &'static str {
    match (method.as_str(), path) {
        ("POST", p) if p.starts_with("/v1/streams/") && p.ends_with("/events") => ROUTES[0],
        ("GET", "/v1/features") => ROUTES[1],
        ("POST", "/v1/features/query") => ROUTES[2],
        ("POST", "/v1/training-set") => ROUTES[3],
        ("GET", "/v1/registry") => ROUTES[4],
        ("POST", "/v1/registry") => ROUTES[5],
        ("GET", "/healthz") => ROUTES[6],
        ("GET", "/metrics") => ROUTES[7],
        ("GET", "/openapi.json") => ROUTES[8],
        ("DELETE", p) if p.starts_with("/v1/registry/features/") => ROUTES[9],
        _ => ROUTES[10],
    }
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

/// Counters shared by the handlers.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<FxHashMap<(&'static str, u16), u64>>,
    latency: Mutex<FxHashMap<&'static str, Histogram>>,
    pub(crate) events_accepted: AtomicU64,
    pub(crate) events_duplicate: AtomicU64,
    pub(crate) events_rejected: AtomicU64,
}

impl Metrics {
    pub(crate) fn observe(&self, route: &'static str, status: StatusCode, took: Duration) {
        *self
            .requests
            .lock()
            .entry((route, status.as_u16()))
            .or_insert(0) += 1;
        let seconds = took.as_secs_f64();
        let mut latency = self.latency.lock();
        let histogram = latency.entry(route).or_default();
        for (bucket, &bound) in histogram.buckets.iter_mut().zip(&BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        histogram.count += 1;
        histogram.sum_seconds += seconds;
    }

    /// The text exposition of every metric.
    pub fn render(&self, db: &Db) -> String {
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        line("# HELP fsdb_http_requests_total HTTP requests answered, by route and status.".into());
        line("# TYPE fsdb_http_requests_total counter".into());
        let mut requests: Vec<_> = self
            .requests
            .lock()
            .iter()
            .map(|(&(r, s), &n)| (r, s, n))
            .collect();
        requests.sort_unstable();
        for (route, status, n) in requests {
            line(format!(
                "fsdb_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            ));
        }
        line(
            "# HELP fsdb_http_request_duration_seconds Time to answer a request, by route.".into(),
        );
        line("# TYPE fsdb_http_request_duration_seconds histogram".into());
        let latency = self.latency.lock();
        for route in ROUTES {
            let Some(h) = latency.get(route) else {
                continue;
            };
            for (bound, n) in BUCKETS.iter().zip(h.buckets) {
                line(format!(
                    "fsdb_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {n}"
                ));
            }
            line(format!(
                "fsdb_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            ));
            line(format!(
                "fsdb_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum_seconds
            ));
            line(format!(
                "fsdb_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            ));
        }
        drop(latency);
        let counters = [
            (
                "fsdb_events_accepted_total",
                "Events accepted over HTTP.",
                &self.events_accepted,
            ),
            (
                "fsdb_events_duplicate_total",
                "Events skipped as duplicates of accepted ids.",
                &self.events_duplicate,
            ),
            (
                "fsdb_events_rejected_total",
                "Events in batches rejected as invalid.",
                &self.events_rejected,
            ),
        ];
        for (name, help, value) in counters {
            line(format!("# HELP {name} {help}"));
            line(format!("# TYPE {name} counter"));
            line(format!("{name} {}", value.load(Ordering::Relaxed)));
        }
        let (log_bytes, state_bytes) = db.sizes();
        let health = db.health();
        let cache = db.cache_stats();
        let gauges = [
            (
                "fsdb_log_bytes",
                "Bytes of the log's segment files.",
                log_bytes as f64,
            ),
            (
                "fsdb_state_bytes",
                "Approximate bytes of the state store.",
                state_bytes as f64,
            ),
            (
                "fsdb_last_lsn",
                "The last record written to the log.",
                health.last_lsn as f64,
            ),
            (
                "fsdb_durable_lsn",
                "Every record up to this LSN is durable.",
                health.durable_lsn as f64,
            ),
            (
                "fsdb_applied_lsn",
                "Every record up to this one is applied and visible.",
                health.applied_lsn as f64,
            ),
            (
                "fsdb_entities_in_memory",
                "Entities whose events are in memory.",
                cache.entities_in_memory as f64,
            ),
            (
                "fsdb_cache_bytes",
                "Approximate bytes of entities in memory.",
                cache.bytes_held as f64,
            ),
            (
                "fsdb_event_ids",
                "Accepted event ids held in memory for deduplication.",
                cache.event_ids as f64,
            ),
            (
                "fsdb_event_ids_bytes",
                "Approximate bytes of the event ids held for deduplication.",
                cache.event_ids_bytes as f64,
            ),
            (
                "fsdb_state_store_memory_bytes",
                "Approximate bytes of memory the state store (RocksDB) holds.",
                cache.state_store_bytes as f64,
            ),
            (
                "fsdb_writer_poisoned",
                "1 if writes are refused until a restart.",
                f64::from(u8::from(health.poisoned.is_some())),
            ),
        ];
        for (name, help, value) in gauges {
            line(format!("# HELP {name} {help}"));
            line(format!("# TYPE {name} gauge"));
            line(format!("{name} {value}"));
        }
        let counters = [
            (
                "fsdb_evicted_entities_total",
                "Entities dropped from memory by the cache budget.",
                cache.evicted,
            ),
            (
                "fsdb_materialized_values_total",
                "Batch feature values computed by the background materialiser.",
                cache.materialized,
            ),
        ];
        for (name, help, value) in counters {
            line(format!("# HELP {name} {help}"));
            line(format!("# TYPE {name} counter"));
            line(format!("{name} {value}"));
        }
        let mut rendered = String::new();
        let _ = write!(rendered, "{out}");
        rendered
    }
}
