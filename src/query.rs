//! Queries: feature values of an entity as of a time, and `latest` (as of the clock's now).
//!
//! The value of a feature with window `w` as of `t` aggregates the events with
//! `t - w < time <= t` (lifetime: `time <= t`); a batch feature with freshness `P` is read
//! as of `floor(t / P) * P`. Every query, whatever its time, runs the same fold over the
//! entity's tiles ([`crate::engine::entity`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::agg::Acc;
use crate::engine::entity::{FoldCtx, QueryStats};
use crate::engine::{Db, StreamState};
use crate::error::{Error, Result};
use crate::time::TimestampMs;
use crate::value::Value;

/// Feature values of one entity as of one time, in the order they were asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureRow {
    pub entity: String,
    pub as_of: TimestampMs,
    pub features: Vec<(String, Value)>,
}

impl FeatureRow {
    /// `{"entity": E, "as_of": T, "features": {..}}`, the shape of the CLI and HTTP replies.
    pub fn to_json(&self) -> serde_json::Value {
        let features: serde_json::Map<String, serde_json::Value> = self
            .features
            .iter()
            .map(|(name, value)| (name.clone(), value.to_json()))
            .collect();
        serde_json::json!({ "entity": self.entity, "as_of": self.as_of, "features": features })
    }

    pub fn get(&self, feature: &str) -> Option<&Value> {
        self.features
            .iter()
            .find(|(name, _)| name == feature)
            .map(|(_, v)| v)
    }
}

/// Requested features resolved to their stream and slot, grouped by stream.
struct Plan {
    names: Vec<String>,
    /// stream index -> (position in the answer, slot)
    by_stream: BTreeMap<usize, Vec<(usize, usize)>>,
    streams: Vec<Arc<StreamState>>,
}

impl Db {
    fn plan(&self, features: &[&str]) -> Result<Plan> {
        let registry = self.inner.registry.read();
        let mut by_stream: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
        for (position, name) in features.iter().enumerate() {
            let &(stream, slot) = registry
                .features
                .get(*name)
                .ok_or_else(|| Error::UnknownFeature((*name).to_owned()))?;
            by_stream.entry(stream).or_default().push((position, slot));
        }
        Ok(Plan {
            names: features.iter().map(|s| (*s).to_owned()).collect(),
            by_stream,
            streams: registry.streams.clone(),
        })
    }

    fn evaluate(
        &self,
        plan: &Plan,
        entity: &str,
        t: TimestampMs,
        stats: &mut QueryStats,
    ) -> Result<FeatureRow> {
        self.inner.check_poison()?;
        let mut values = vec![Value::Null; plan.names.len()];
        for (&stream_index, wanted) in &plan.by_stream {
            let stream = &plan.streams[stream_index];
            let features = stream.features.read().clone();
            let slot = stream.entity(entity, &self.inner.state, false)?;
            let mut guard = slot.as_ref().map(|s| s.lock());
            let strings = stream.strings.read();
            // One fold per distinct window, over every feature that shares it.
            let mut by_window: BTreeMap<(i64, i64), Vec<(usize, usize)>> = BTreeMap::new();
            for &(position, slot) in wanted {
                by_window
                    .entry(features.list[slot].window(t))
                    .or_default()
                    .push((position, slot));
            }
            for ((lo, hi), group) in by_window {
                let targets: Vec<usize> = group.iter().map(|&(_, slot)| slot).collect();
                let mut accs: Vec<Acc> = targets
                    .iter()
                    .map(|&slot| features.list[slot].spec.init())
                    .collect();
                if let Some(run) = guard.as_mut().and_then(|g| g.as_mut()) {
                    let mut ctx = FoldCtx {
                        features: &features.list,
                        version: features.version,
                        strings: &strings,
                        stats: QueryStats::default(),
                    };
                    run.run.fold(lo, hi, &targets, &mut accs, &mut ctx);
                    stats.summaries += ctx.stats.summaries;
                    stats.events += ctx.stats.events;
                }
                for ((position, slot), acc) in group.into_iter().zip(&accs) {
                    values[position] = features.list[slot].spec.finish(acc, &strings);
                }
            }
        }
        Ok(FeatureRow {
            entity: entity.to_owned(),
            as_of: t,
            features: plan.names.iter().cloned().zip(values).collect(),
        })
    }

    /// The values of `features` for `entity` as of `t`. An entity never seen gets every
    /// aggregation's empty-window value; an unknown feature is an error.
    pub fn as_of(&self, entity: &str, features: &[&str], t: TimestampMs) -> Result<FeatureRow> {
        let plan = self.plan(features)?;
        self.evaluate(&plan, entity, t, &mut QueryStats::default())
    }

    /// `as_of` at the clock's now.
    pub fn latest(&self, entity: &str, features: &[&str]) -> Result<FeatureRow> {
        let now = self.inner.options.clock.now_ms();
        self.as_of(entity, features, now)
    }

    /// `as_of` for many entities at one time.
    pub fn as_of_many(
        &self,
        entities: &[&str],
        features: &[&str],
        t: TimestampMs,
    ) -> Result<Vec<FeatureRow>> {
        let plan = self.plan(features)?;
        let mut stats = QueryStats::default();
        entities
            .iter()
            .map(|e| self.evaluate(&plan, e, t, &mut stats))
            .collect()
    }

    /// `latest` for many entities (one "now" for all of them).
    pub fn latest_many(&self, entities: &[&str], features: &[&str]) -> Result<Vec<FeatureRow>> {
        let now = self.inner.options.clock.now_ms();
        self.as_of_many(entities, features, now)
    }

    /// `as_of`, also returning how many tile summaries and events the query read: the
    /// measure of its work, which depends on the window's shape, not on history length.
    pub fn as_of_with_stats(
        &self,
        entity: &str,
        features: &[&str],
        t: TimestampMs,
    ) -> Result<(FeatureRow, QueryStats)> {
        let plan = self.plan(features)?;
        let mut stats = QueryStats::default();
        let row = self.evaluate(&plan, entity, t, &mut stats)?;
        Ok((row, stats))
    }
}
