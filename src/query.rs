//! Queries: feature values of an entity as of a time, and `latest` (as of the clock's now).
//!
//! The value of a feature with window `w` as of `t` aggregates the events with
//! `t - w < time <= t` (lifetime: `time <= t`); a batch feature with freshness `P` is read
//! as of `floor(t / P) * P`. Every query, whatever its time, runs the same fold over the
//! entity's tiles ([`crate::engine::entity`]). `latest` also keeps what it computed, with
//! the interval of query times it stays exact for; any later query inside that interval
//! (and before the entity's next event) is answered from it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use parking_lot::RwLock;
use rustc_hash::{FxBuildHasher, FxHashMap};

use crate::agg::Acc;
use crate::engine::entity::{FoldCtx, QueryStats};
use crate::engine::feature::CompiledFeature;
use crate::engine::{Cached, Db, EntityState, FeatureSet, Registry, StreamState};
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
    /// stream index -> its features in the answer
    pub(crate) by_stream: BTreeMap<usize, StreamPlan>,
    pub(crate) streams: Vec<Arc<StreamState>>,
}

/// Plans kept by the list of feature names they answer (a client asks for the same list
/// again and again), so that a query does not resolve and copy its names each time.
///
/// Invariant: every plan here was made from the registry as it is now. The cache lives in
/// the registry and every change of the registry empties it, under the registry's write
/// lock.
#[derive(Default)]
pub(crate) struct PlanCache {
    /// By the hash of the names asked for; a plan whose names differ (a collision) is
    /// not used, and is replaced.
    plans: RwLock<FxHashMap<u64, Arc<Plan>>>,
}

/// Distinct lists of names the plan cache holds; past it, the cache starts over.
const PLAN_CACHE_ENTRIES: usize = 256;

impl PlanCache {
    fn get(&self, hash: u64, features: &[&str]) -> Option<Arc<Plan>> {
        let plans = self.plans.read();
        let plan = plans.get(&hash)?;
        plan.names.iter().eq(features).then(|| Arc::clone(plan))
    }

    fn insert(&self, hash: u64, plan: Arc<Plan>) {
        let mut plans = self.plans.write();
        if plans.len() >= PLAN_CACHE_ENTRIES {
            plans.clear();
        }
        plans.insert(hash, plan);
    }

    pub(crate) fn clear(&mut self) {
        self.plans.get_mut().clear();
    }
}

/// The requested features of one stream.
pub(crate) struct StreamPlan {
    /// (position in the answer, slot in the stream's feature list when planned)
    wanted: Vec<(usize, usize)>,
    /// The compiled feature behind each entry of `wanted`.
    planned: Vec<Arc<CompiledFeature>>,
    /// The names asked for, by position in the answer.
    names: Arc<[String]>,
}

impl StreamPlan {
    /// (position, slot) against the stream's feature list as it is now: the planned slots,
    /// unless features were removed since planning (slots after them moved down). A
    /// feature removed since planning is an unknown feature.
    pub(crate) fn wanted(&self, features: &FeatureSet) -> Result<Cow<'_, [(usize, usize)]>> {
        let same = |slot: usize, planned: &Arc<CompiledFeature>| {
            features
                .list
                .get(slot)
                .is_some_and(|f| Arc::ptr_eq(f, planned))
        };
        if self
            .wanted
            .iter()
            .zip(&self.planned)
            .all(|(&(_, slot), planned)| same(slot, planned))
        {
            return Ok(Cow::Borrowed(&self.wanted));
        }
        self.wanted
            .iter()
            .zip(&self.planned)
            .map(|(&(position, _), planned)| {
                let slot = features.list.iter().position(|f| Arc::ptr_eq(f, planned));
                slot.map(|slot| (position, slot))
                    .ok_or_else(|| Error::UnknownFeature(self.names[position].clone()))
            })
            .collect::<Result<Vec<_>>>()
            .map(Cow::Owned)
    }
}

impl Db {
    /// The plan for `features`: from the registry's plan cache, or made and kept there.
    pub(crate) fn plan(&self, features: &[&str]) -> Result<Arc<Plan>> {
        let registry = self.inner.registry.read();
        let hash = FxBuildHasher.hash_one(features);
        if let Some(plan) = registry.plans.get(hash, features) {
            return Ok(plan);
        }
        let plan = Arc::new(Self::make_plan(&registry, features)?);
        registry.plans.insert(hash, Arc::clone(&plan));
        Ok(plan)
    }

    fn make_plan(registry: &Registry, features: &[&str]) -> Result<Plan> {
        let names: Arc<[String]> = features.iter().map(|s| (*s).to_owned()).collect();
        let mut by_stream: BTreeMap<usize, StreamPlan> = BTreeMap::new();
        for (position, name) in features.iter().enumerate() {
            let &(stream, slot) = registry
                .features
                .get(*name)
                .ok_or_else(|| Error::UnknownFeature((*name).to_owned()))?;
            by_stream
                .entry(stream)
                .or_insert_with(|| StreamPlan {
                    wanted: Vec::new(),
                    planned: Vec::new(),
                    names: Arc::clone(&names),
                })
                .wanted
                .push((position, slot));
        }
        // One read of each stream's feature list (the registry's lock keeps them in step).
        for (&stream, plan) in &mut by_stream {
            let set = registry.streams[stream].features.read();
            plan.planned = plan
                .wanted
                .iter()
                .map(|&(_, slot)| Arc::clone(&set.list[slot]))
                .collect();
        }
        Ok(Plan {
            names,
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
        let mut values = vec![Value::Null; plan.names.len()];
        for (&stream_index, stream_plan) in &plan.by_stream {
            let stream = &plan.streams[stream_index];
            let features = stream.features.read();
            let wanted = stream_plan.wanted(&features)?;
            let slot = stream.entity(entity, &self.inner.state)?;
            let Some(slot) = slot else {
                // Never seen: every aggregation's empty-window value.
                let strings = stream.strings.read();
                for &(position, slot) in wanted.iter() {
                    let spec = &features.list[slot].spec;
                    values[position] = spec.finish(&spec.init(), &strings);
                }
                continue;
            };
            let mut state = stream.lock_loaded(&slot, entity, &self.inner.state)?;
            let fold = EntityFold {
                stream,
                features: &features,
                wanted: &wanted,
                t,
                remember,
            };
            *stats += fold.run(&mut state, &mut values).0;
            drop(state);
            self.inner.after_reads(stream);
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
            if let Some(slot) = stream.entity(entity, &self.inner.state)? {
                stream
                    .lock_loaded(&slot, entity, &self.inner.state)?
                    .latest
                    .clear();
            }
        }
        self.evaluate(plan, entity, t, false, stats)
    }
}

/// The values of some features of one loaded entity as of one time.
pub(crate) struct EntityFold<'a> {
    pub(crate) stream: &'a StreamState,
    pub(crate) features: &'a FeatureSet,
    /// (position in the answer, feature slot)
    pub(crate) wanted: &'a [(usize, usize)],
    pub(crate) t: TimestampMs,
    /// Keep what is computed in the entity's remembered values.
    pub(crate) remember: bool,
}

impl EntityFold<'_> {
    /// Answer what the entity remembers; fold the rest, one fold per distinct window.
    /// Writes `values[position]` for every wanted feature; returns what the folds read and
    /// how many values were folded (not remembered).
    pub(crate) fn run(&self, state: &mut EntityState, values: &mut [Value]) -> (QueryStats, usize) {
        let (features, t) = (self.features, self.t);
        // (window, position in the answer, slot) of each value to fold, then grouped by
        // window: one allocation where a map of windows made one per window.
        let mut to_fold: Vec<((i64, i64), usize, usize)> = Vec::with_capacity(self.wanted.len());
        for &(position, slot) in self.wanted {
            match state.latest.get(slot).and_then(Option::as_ref) {
                Some(c) if c.version == features.version && c.from <= t && t < c.until => {
                    values[position] = c.value.clone()
                }
                _ => to_fold.push((features.list[slot].window(t), position, slot)),
            }
        }
        let mut stats = QueryStats::default();
        let mut folded = 0;
        if to_fold.is_empty() {
            return (stats, folded);
        }
        to_fold.sort_by_key(|&(window, _, _)| window);
        let strings = self.stream.strings.read();
        let mut targets: Vec<usize> = Vec::with_capacity(to_fold.len());
        let mut accs: Vec<Acc> = Vec::with_capacity(to_fold.len());
        for group in to_fold.chunk_by(|a, b| a.0 == b.0) {
            let (lo, hi) = group[0].0;
            targets.clear();
            targets.extend(group.iter().map(|&(_, _, slot)| slot));
            accs.clear();
            accs.extend(targets.iter().map(|&slot| features.list[slot].spec.init()));
            let mut ctx = FoldCtx {
                features: &features.list,
                version: features.version,
                strings: &strings,
                stats: QueryStats::default(),
                summary_bytes_built: 0,
            };
            state.run.fold(lo, hi, &targets, &mut accs, &mut ctx);
            stats += ctx.stats;
            self.stream.note_read_bytes(ctx.summary_bytes_built);
            folded += group.len();
            for (&(_, position, slot), acc) in group.iter().zip(&accs) {
                let feature = &features.list[slot];
                let value = feature.spec.finish(acc, &strings);
                if self.remember {
                    let (from, until, horizon) = feature.validity(t, &state.run);
                    if state.latest.len() < features.list.len() {
                        state.latest.resize(features.list.len(), None);
                    }
                    state.latest[slot] = Some(Cached {
                        version: features.version,
                        from,
                        until,
                        horizon,
                        value: value.clone(),
                    });
                }
                values[position] = value;
            }
        }
        (stats, folded)
    }
}
