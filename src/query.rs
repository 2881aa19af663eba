//! Queries: feature values of an entity as of a time, and `latest` (as of the clock's now).
//!
//! The value of a feature with window `w` as of `t` aggregates the events with
//! `t - w < time <= t` (lifetime: `time <= t`); a batch feature with freshness `P` is read
//! as of `floor(t / P) * P`. Every query, whatever its time, runs the same fold over the
//! entity's tiles ([`crate::engine::entity`]). `latest` also keeps what it computed, with
//! the interval of query times it stays exact for; any later query inside that interval
//! (and before the entity's next event) is answered from it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::agg::Acc;
use crate::engine::entity::{FoldCtx, QueryStats};
use crate::engine::{Cached, Db, StreamState};
use crate::error::{Error, Result};
use crate::time::TimestampMs;
use crate::value::Value;

/// Feature values of one entity as of one time, in the order they were asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureRow {
    pub entity: String,
    pub as_of: TimestampMs,
    /// Feature names, shared by every row of one query.
    pub names: Arc<[String]>,
    pub values: Vec<Value>,
}

impl FeatureRow {
    /// `{"entity": E, "as_of": T, "features": {..}}`, the shape of the CLI and HTTP replies.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.json()).expect("feature rows serialize")
    }

    /// The same JSON, serialized in place (the HTTP hot path).
    pub fn json(&self) -> impl serde::Serialize + '_ {
        FeatureRowJson(self)
    }

    pub fn get(&self, feature: &str) -> Option<&Value> {
        self.names
            .iter()
            .position(|n| n == feature)
            .map(|i| &self.values[i])
    }

    /// (name, value) pairs, in the order they were asked for.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.names.iter().map(String::as_str).zip(&self.values)
    }
}

struct FeatureRowJson<'a>(&'a FeatureRow);

impl serde::Serialize for FeatureRowJson<'_> {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Features<'a>(&'a FeatureRow);
        impl serde::Serialize for Features<'_> {
            fn serialize<S: serde::Serializer>(
                &self,
                serializer: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                serializer.collect_map(self.0.iter().map(|(name, value)| (name, value.json())))
            }
        }
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("entity", &self.0.entity)?;
        map.serialize_entry("as_of", &self.0.as_of)?;
        map.serialize_entry("features", &Features(self.0))?;
        map.end()
    }
}

/// Requested features resolved to their stream and slot, grouped by stream.
pub(crate) struct Plan {
    pub(crate) names: Arc<[String]>,
    /// stream index -> (position in the answer, slot)
    pub(crate) by_stream: BTreeMap<usize, Vec<(usize, usize)>>,
    pub(crate) streams: Vec<Arc<StreamState>>,
}

impl Db {
    pub(crate) fn plan(&self, features: &[&str]) -> Result<Plan> {
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
        remember: bool,
        stats: &mut QueryStats,
    ) -> Result<FeatureRow> {
        self.inner.check_poison()?;
        let mut values = vec![Value::Null; plan.names.len()];
        for (&stream_index, wanted) in &plan.by_stream {
            let stream = &plan.streams[stream_index];
            let features = stream.features.read();
            let slot = stream.entity(entity, &self.inner.state, false)?;
            let Some(slot) = slot else {
                // Never seen: every aggregation's empty-window value.
                let strings = stream.strings.read();
                for &(position, slot) in wanted {
                    let spec = &features.list[slot].spec;
                    values[position] = spec.finish(&spec.init(), &strings);
                }
                continue;
            };
            let mut state = stream.lock_loaded(&slot, entity, &self.inner.state)?;
            // Answer what the cache holds; group the rest by window, one fold per window.
            let mut by_window: BTreeMap<(i64, i64), Vec<(usize, usize)>> = BTreeMap::new();
            for &(position, slot) in wanted {
                let cached = state.latest.get(slot).and_then(Option::as_ref);
                match cached {
                    Some(c) if c.version == features.version && c.from <= t && t < c.until => {
                        values[position] = c.value.clone()
                    }
                    _ => by_window
                        .entry(features.list[slot].window(t))
                        .or_default()
                        .push((position, slot)),
                }
            }
            if by_window.is_empty() {
                continue;
            }
            let strings = stream.strings.read();
            for ((lo, hi), group) in by_window {
                let targets: Vec<usize> = group.iter().map(|&(_, slot)| slot).collect();
                let mut accs: Vec<Acc> = targets
                    .iter()
                    .map(|&slot| features.list[slot].spec.init())
                    .collect();
                let mut ctx = FoldCtx {
                    features: &features.list,
                    version: features.version,
                    strings: &strings,
                    stats: QueryStats::default(),
                };
                state.run.fold(lo, hi, &targets, &mut accs, &mut ctx);
                stats.summaries += ctx.stats.summaries;
                stats.events += ctx.stats.events;
                for ((position, slot), acc) in group.into_iter().zip(&accs) {
                    let feature = &features.list[slot];
                    let value = feature.spec.finish(acc, &strings);
                    if remember {
                        let (from, until) = feature.validity(t, &state.run);
                        if state.latest.len() < features.list.len() {
                            state.latest.resize(features.list.len(), None);
                        }
                        state.latest[slot] = Some(Cached {
                            version: features.version,
                            from,
                            until,
                            value: value.clone(),
                        });
                    }
                    values[position] = value;
                }
            }
        }
        Ok(FeatureRow {
            entity: entity.to_owned(),
            as_of: t,
            names: Arc::clone(&plan.names),
            values,
        })
    }

    /// The values of `features` for `entity` as of `t`. An entity never seen gets every
    /// aggregation's empty-window value; an unknown feature is an error.
    pub fn as_of(&self, entity: &str, features: &[&str], t: TimestampMs) -> Result<FeatureRow> {
        let plan = self.plan(features)?;
        self.evaluate(&plan, entity, t, false, &mut QueryStats::default())
    }

    /// `as_of` at the clock's now.
    pub fn latest(&self, entity: &str, features: &[&str]) -> Result<FeatureRow> {
        let plan = self.plan(features)?;
        let now = self.inner.options.clock.now_ms();
        self.evaluate(&plan, entity, now, true, &mut QueryStats::default())
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
            .map(|e| self.evaluate(&plan, e, t, false, &mut stats))
            .collect()
    }

    /// `latest` for many entities (one "now" for all of them).
    pub fn latest_many(&self, entities: &[&str], features: &[&str]) -> Result<Vec<FeatureRow>> {
        let plan = self.plan(features)?;
        let now = self.inner.options.clock.now_ms();
        let mut stats = QueryStats::default();
        entities
            .iter()
            .map(|e| self.evaluate(&plan, e, now, true, &mut stats))
            .collect()
    }

    /// `as_of`, also returning how many tile summaries and events the query read: the
    /// measure of its work, which depends on the window's shape, not on history length.
    /// Never answered from the `latest` cache.
    pub fn as_of_with_stats(
        &self,
        entity: &str,
        features: &[&str],
        t: TimestampMs,
    ) -> Result<(FeatureRow, QueryStats)> {
        let plan = self.plan(features)?;
        let mut stats = QueryStats::default();
        let row = self.evaluate_uncached(&plan, entity, t, &mut stats)?;
        Ok((row, stats))
    }

    fn evaluate_uncached(
        &self,
        plan: &Plan,
        entity: &str,
        t: TimestampMs,
        stats: &mut QueryStats,
    ) -> Result<FeatureRow> {
        // Drop what `latest` remembered for this entity, so that the fold runs.
        for &stream_index in plan.by_stream.keys() {
            let stream = &plan.streams[stream_index];
            if let Some(slot) = stream.entity(entity, &self.inner.state, false)? {
                stream
                    .lock_loaded(&slot, entity, &self.inner.state)?
                    .latest
                    .clear();
            }
        }
        self.evaluate(plan, entity, t, false, stats)
    }
}
