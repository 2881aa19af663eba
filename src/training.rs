//! Point-in-time training sets: for each spine row (entity, time), every requested feature
//! as of that row's time, by one sweep over each entity's events.
//!
//! The spine is grouped by entity and each group sorted by time; each feature then slides
//! its window over the entity's events in time order, built only from the aggregation's own
//! operations (`src/agg.rs`):
//! - invertible aggregations add entering events and `retract` leaving ones;
//! - the others (`min`, `max`, `first`, `last`, `last_n`) use a two-stacks sliding
//!   aggregate over `update` and `merge`;
//! - `approx_count_distinct` (16 KiB states) folds the entity's tiles per row, like `as_of`.
//!
//! Every aggregation's result is a function of the set of events in the window, so all
//! three give exactly `as_of`'s value (tests compare them row by row with `==`).
//! Entities are split between two threads. Results are kept as typed 8-byte cells.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::agg::{Acc, AggSpec, Item, StrId, Strings};
use crate::engine::entity::{EntityRun, FoldCtx, QueryStats};
use crate::engine::feature::CompiledFeature;
use crate::engine::page::Page;
use crate::engine::strings::StringTable;
use crate::engine::{Db, StreamState, history_in_memory};
use crate::error::{Error, Result};
use crate::query::StreamPlan;
use crate::time::TimestampMs;
use crate::value::{Value, ValueType};

/// The features of a spine: `rows × features` values, in spine order.
#[derive(Debug)]
pub struct TrainingSet {
    names: Vec<String>,
    types: Vec<ValueType>,
    rows: usize,
    cells: Vec<AtomicU64>,
    nulls: Vec<AtomicBool>,
    lists: Mutex<FxHashMap<usize, Value>>,
    strings: StringTable,
}

impl TrainingSet {
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Feature names, in the order asked for (the columns).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The type of each feature column.
    pub fn types(&self) -> &[ValueType] {
        &self.types
    }

    /// The value of feature `column` for spine row `row`.
    pub fn value(&self, row: usize, column: usize) -> Value {
        let at = row * self.names.len() + column;
        if self.nulls[at].load(Ordering::Relaxed) {
            return Value::Null;
        }
        let raw = self.cells[at].load(Ordering::Relaxed);
        match &self.types[column] {
            ValueType::Int => Value::Int(raw as i64),
            ValueType::Float => Value::Float(f64::from_bits(raw)),
            ValueType::Bool => Value::Bool(raw != 0),
            ValueType::String => {
                Value::String(self.strings.read().get(StrId(raw as u32)).to_owned())
            }
            ValueType::List(_) => self
                .lists
                .lock()
                .get(&at)
                .cloned()
                .unwrap_or(Value::List(Vec::new())),
        }
    }

    /// All values of spine row `row`.
    pub fn row(&self, row: usize) -> Vec<Value> {
        (0..self.names.len()).map(|c| self.value(row, c)).collect()
    }

    fn set(&self, row: usize, column: usize, value: Value) {
        let at = row * self.names.len() + column;
        let raw = match value {
            Value::Null => {
                self.nulls[at].store(true, Ordering::Relaxed);
                return;
            }
            Value::Int(v) => v as u64,
            Value::Float(v) => v.to_bits(),
            Value::Bool(v) => u64::from(v),
            Value::String(s) => u64::from(self.strings.intern(&s).0),
            list @ Value::List(_) => {
                self.lists.lock().insert(at, list);
                0
            }
        };
        self.cells[at].store(raw, Ordering::Relaxed);
    }
}

/// How one feature slides over an entity's events.
enum Slide {
    /// Add entering events, retract leaving ones (or only add, for lifetime windows).
    Invertible { acc: Acc },
    /// Two-stacks: `front` holds suffix aggregates of the oldest events (oldest last),
    /// `back` the newest events and their running aggregate.
    TwoStacks {
        front: Vec<(TimestampMs, Acc)>,
        back: Vec<Item>,
        back_acc: Acc,
    },
    /// Fold the tiles for each row (HyperLogLog: states too large to slide).
    Fold,
}

impl Slide {
    fn new(spec: &AggSpec) -> Slide {
        if spec.kind == crate::agg::AggKind::ApproxCountDistinct {
            Slide::Fold
        } else if spec.invertible() {
            Slide::Invertible {
                acc: spec.init_retractable(),
            }
        } else {
            Slide::TwoStacks {
                front: Vec::new(),
                back: Vec::new(),
                back_acc: spec.init(),
            }
        }
    }

    fn push(&mut self, spec: &AggSpec, item: Item, strings: &dyn Strings) {
        match self {
            Slide::Invertible { acc } => spec.update(acc, item, strings),
            Slide::TwoStacks { back, back_acc, .. } => {
                spec.update(back_acc, item, strings);
                back.push(item);
            }
            Slide::Fold => {}
        }
    }

    /// Remove the oldest event (which must be `item`, the oldest still inside).
    fn pop(&mut self, spec: &AggSpec, item: Item, strings: &dyn Strings) {
        match self {
            Slide::Invertible { acc } => spec.retract(acc, item, strings),
            Slide::TwoStacks {
                front,
                back,
                back_acc,
            } => {
                if front.is_empty() {
                    // Flip: suffix aggregates of the back stack, newest to oldest.
                    let mut acc = spec.init();
                    for old in back.drain(..).rev() {
                        spec.update(&mut acc, old, strings);
                        front.push((old.time, acc.clone()));
                    }
                    *back_acc = spec.init();
                }
                front.pop();
            }
            Slide::Fold => {}
        }
    }

    fn value(&self, spec: &AggSpec, strings: &dyn Strings) -> Value {
        match self {
            Slide::Invertible { acc } => spec.finish(acc, strings),
            Slide::TwoStacks {
                front, back_acc, ..
            } => match front.last() {
                Some((_, oldest_suffix)) => {
                    let mut acc = oldest_suffix.clone();
                    spec.merge(&mut acc, back_acc, strings);
                    spec.finish(&acc, strings)
                }
                None => spec.finish(back_acc, strings),
            },
            Slide::Fold => unreachable!("fold features are evaluated per row"),
        }
    }
}

/// Evaluate one feature for `rows` (spine indices sorted by time) of one entity.
fn sweep(
    feature: &CompiledFeature,
    column: usize,
    events: &[(&Page, u32)],
    rows: &[u32],
    spine: &[(String, TimestampMs)],
    strings: &dyn Strings,
    out: &TrainingSet,
) {
    let spec = &feature.spec;
    let mut slide = Slide::new(spec);
    let (mut entered, mut left) = (0usize, 0usize);
    let item = |i: usize| {
        let (page, row) = events[i];
        feature.item(page, row as usize, strings)
    };
    let time = |i: usize| {
        let (page, row) = events[i];
        page.time(row as usize)
    };
    for &row in rows {
        let (lo, hi) = feature.window(spine[row as usize].1);
        while entered < events.len() && time(entered) <= hi {
            if let Some(it) = item(entered) {
                slide.push(spec, it, strings);
            }
            entered += 1;
        }
        while left < entered && time(left) <= lo {
            if let Some(it) = item(left) {
                slide.pop(spec, it, strings);
            }
            left += 1;
        }
        out.set(row as usize, column, slide.value(spec, strings));
    }
}

impl Db {
    /// Point-in-time join: for each spine row (entity, time), the features as of that time,
    /// in spine order. Every value equals what `as_of` returns for that row.
    pub fn training_set(
        &self,
        spine: &[(String, TimestampMs)],
        features: &[&str],
    ) -> Result<TrainingSet> {
        self.training_set_with_progress(spine, features, &|_| {})
    }

    /// `training_set`, calling `progress` with the number of spine rows done so far.
    pub fn training_set_with_progress(
        &self,
        spine: &[(String, TimestampMs)],
        features: &[&str],
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<TrainingSet> {
        let plan = self.plan(features)?;
        let types = {
            let registry = self.inner.registry.read();
            features
                .iter()
                .map(|name| {
                    let (_, def) = registry
                        .catalog
                        .feature(name)
                        .ok_or_else(|| Error::UnknownFeature((*name).to_owned()))?;
                    let (_, stream) = registry
                        .catalog
                        .stream(&def.stream)
                        .expect("features have streams");
                    Ok(def.value_type(stream))
                })
                .collect::<Result<Vec<_>>>()?
        };
        let cells = spine.len() * features.len();
        let out = TrainingSet {
            names: plan.names.to_vec(),
            types,
            rows: spine.len(),
            cells: (0..cells).map(|_| AtomicU64::new(0)).collect(),
            nulls: (0..cells).map(|_| AtomicBool::new(false)).collect(),
            lists: Mutex::new(FxHashMap::default()),
            strings: StringTable::default(),
        };

        // Group the spine by entity; each group's rows in time order.
        let mut groups: FxHashMap<&str, Vec<u32>> = FxHashMap::default();
        for (i, (entity, _)) in spine.iter().enumerate() {
            groups.entry(entity.as_str()).or_default().push(i as u32);
        }
        let mut entities: Vec<(&str, Vec<u32>)> = groups.into_iter().collect();
        entities.sort_unstable_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
        for (_, rows) in &mut entities {
            rows.sort_by_key(|&r| (spine[r as usize].1, r));
        }

        // Two threads take entities from a shared queue (largest first, for balance).
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let work = || -> Result<()> {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((entity, rows)) = entities.get(i) else {
                    return Ok(());
                };
                for (&stream_index, stream_plan) in &plan.by_stream {
                    self.sweep_entity(
                        &plan.streams[stream_index],
                        entity,
                        rows,
                        stream_plan,
                        spine,
                        &out,
                    )?;
                }
                progress(done.fetch_add(rows.len(), Ordering::Relaxed) + rows.len());
            }
        };
        let (a, b) = std::thread::scope(|scope| {
            let other = scope.spawn(work);
            (work(), other.join().expect("training-set worker panicked"))
        });
        a?;
        b?;
        Ok(out)
    }

    /// Evaluate the `wanted` (column, slot) features of one stream for one entity's rows.
    fn sweep_entity(
        &self,
        stream: &Arc<StreamState>,
        entity: &str,
        rows: &[u32],
        wanted: &StreamPlan,
        spine: &[(String, TimestampMs)],
        out: &TrainingSet,
    ) -> Result<()> {
        let store = &self.inner.state;
        let slot = stream.entity(entity, store)?;
        // An entity loaded only for this sweep leaves memory after it: a training set
        // visits each entity once, and keeping them all would hold the whole state.
        let loaded_here = slot.as_ref().is_some_and(|slot| !history_in_memory(slot));
        let result = self.sweep_slot(stream, entity, slot.as_ref(), rows, wanted, spine, out);
        drop(slot);
        if loaded_here {
            stream.forget(entity);
        }
        result
    }

    /// `sweep_entity` once the entity's slot is known (`None`: the entity has no events).
    #[allow(clippy::too_many_arguments)]
    fn sweep_slot(
        &self,
        stream: &Arc<StreamState>,
        entity: &str,
        slot: Option<&crate::engine::EntitySlot>,
        rows: &[u32],
        planned: &StreamPlan,
        spine: &[(String, TimestampMs)],
        out: &TrainingSet,
    ) -> Result<()> {
        let features = stream.features.read();
        let wanted = planned.wanted(&features)?;
        let store = &self.inner.state;
        // The entity is swept under its lock (loaded from the state store if needed).
        let mut guard = match slot {
            Some(slot) => Some(stream.lock_loaded(slot, entity, store)?),
            None => None,
        };
        let run: Option<&mut EntityRun> = guard.as_deref_mut().map(|state| &mut state.run);
        let strings = stream.strings.read();
        let Some(run) = run else {
            for &(column, slot) in wanted.iter() {
                let spec = &features.list[slot].spec;
                let empty = spec.finish(&spec.init(), &strings);
                for &row in rows {
                    out.set(row as usize, column, empty.clone());
                }
            }
            return Ok(());
        };
        // Tile folds first (they need the run mutably), then the sweeps over its events.
        for &(column, slot) in wanted.iter() {
            let feature = &features.list[slot];
            if !matches!(Slide::new(&feature.spec), Slide::Fold) {
                continue;
            }
            for &row in rows {
                let (lo, hi) = feature.window(spine[row as usize].1);
                let mut accs = [feature.spec.init()];
                let mut ctx = FoldCtx {
                    features: &features.list,
                    version: features.version,
                    strings: &strings,
                    stats: QueryStats::default(),
                    summary_bytes_built: 0,
                };
                run.fold(lo, hi, &[slot], &mut accs, &mut ctx);
                stream.note_read_bytes(ctx.summary_bytes_built);
                out.set(
                    row as usize,
                    column,
                    feature.spec.finish(&accs[0], &strings),
                );
            }
        }
        let events = run.rows();
        for &(column, slot) in wanted.iter() {
            let feature = &features.list[slot];
            if !matches!(Slide::new(&feature.spec), Slide::Fold) {
                sweep(feature, column, &events, rows, spine, &strings, out);
            }
        }
        Ok(())
    }
}
