//! The batch materialiser: the value of every batch feature (`freshness = P`) at its
//! current period start, computed ahead of the reads for the entities in memory.
//!
//! A batch feature's value as of `t` is its realtime value as of `floor(t / P) * P`
//! (docs/semantics.md). It changes only when a period starts or when a late event lands at
//! or before the period start, so it is computed once per entity per period and
//! remembered with `horizon = period start` ([`super::Cached`]): ingesting current events
//! leaves it in place, and `latest` reads it without folding. The materialiser does that
//! computation in the background, soon after each period starts and after late events,
//! so that reads do not have to. When it is behind (or an entity was not in memory), a
//! read computes the same value itself with the same fold ([`EntityFold`]) — never a stale
//! or partial one. A pass leaves each entity's place in the eviction order as it was: it
//! does not make cold entities warm.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::catalog::Freshness;
use crate::error::Result;
use crate::query::EntityFold;
use crate::value::Value;

use super::{Db, Inner};

/// What one materialiser pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaterializeReport {
    /// Entities in memory visited (those of streams with batch features).
    pub entities: usize,
    /// Batch feature values computed (the others were already remembered and exact).
    pub values: usize,
}

impl Db {
    /// Run one materialiser pass now, at the clock's now. A background thread runs one
    /// every `Options::materialize_interval_ms` when there is anything new; this is for
    /// callers (and tests) that want it caught up at a point of their choosing.
    pub fn materialize(&self) -> Result<MaterializeReport> {
        self.inner.materialize()
    }
}

/// What a pass depends on: when none of it changed, a pass would compute nothing.
#[derive(PartialEq, Eq)]
struct PassKey {
    applied_end: u64,
    /// Per stream: its features' version and the current period of each batch feature.
    periods: Vec<(u64, Vec<i64>)>,
}

impl Inner {
    fn materialize(&self) -> Result<MaterializeReport> {
        let now = self.options.clock.now_ms();
        let streams = self.registry.read().streams.clone();
        let mut report = MaterializeReport::default();
        for stream in streams {
            // A copy of the feature list: a definition applied meanwhile bumps the version,
            // which makes whatever this pass remembers unused, never wrong.
            let features = stream.features.read().clone();
            let wanted: Vec<(usize, usize)> = features
                .list
                .iter()
                .enumerate()
                .filter(|(_, f)| matches!(f.freshness, Freshness::Batch { .. }))
                .map(|(slot, _)| slot)
                .enumerate()
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let fold = EntityFold {
                stream: &stream,
                features: &features,
                wanted: &wanted,
                t: now,
                remember: true,
            };
            let mut values = vec![Value::Null; wanted.len()];
            stream.for_each_resident(|state| {
                report.entities += 1;
                report.values += fold.run(state, &mut values).1;
            });
        }
        self.materialized
            .fetch_add(report.values as u64, Ordering::Relaxed);
        Ok(report)
    }

    fn pass_key(&self) -> PassKey {
        let now = self.options.clock.now_ms();
        let streams = self.registry.read().streams.clone();
        PassKey {
            applied_end: self.applied.end(),
            periods: streams
                .iter()
                .map(|stream| {
                    let features = stream.features.read();
                    let periods = features
                        .list
                        .iter()
                        .filter_map(|f| match f.freshness {
                            Freshness::Batch { period_ms } => Some(now.div_euclid(period_ms)),
                            Freshness::Realtime => None,
                        })
                        .collect();
                    (features.version, periods)
                })
                .collect(),
        }
    }

    /// The background loop: a pass every `materialize_interval_ms` in which events were
    /// applied, a period started or the features changed; until shutdown.
    pub(super) fn run_materializer(&self) {
        let interval = Duration::from_millis(self.options.materialize_interval_ms.max(1));
        let mut last: Option<PassKey> = None;
        loop {
            {
                let deadline = Instant::now() + interval;
                let mut shutdown = self.shutdown.lock();
                while !*shutdown && Instant::now() < deadline {
                    self.wake.wait_until(&mut shutdown, deadline);
                }
                if *shutdown {
                    return;
                }
            }
            let key = self.pass_key();
            if last.as_ref() == Some(&key) {
                continue;
            }
            match self.materialize() {
                Ok(_) => last = Some(key),
                // A pass that fails ends the thread: reads compute what they need without it.
                Err(_) => return,
            }
        }
    }
}
