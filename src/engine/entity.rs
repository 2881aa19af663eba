//! The events of one entity of one stream, in a time trie of tiles with cached summaries.
//!
//! A tile covers `[start, start + 2^shift)` of the time axis (times mapped to `u64` in
//! offset binary so that order is preserved), with `shift` a multiple of 4 from 64 (the
//! whole axis) down to 0 (one millisecond): tiles are epoch-aligned and nest sixteen to one.
//! A leaf tile holds its events in a [`Page`]; when it holds more than
//! [`LEAF_EVENTS_MAX`], it becomes an inner tile with one child per non-empty sixteenth.
//!
//! Invariants:
//! - the shape is a function of the set of events: a tile is inner iff it holds more than
//!   `LEAF_EVENTS_MAX` events and is wider than 1 ms (events are only ever added);
//! - a cached summary is the fold of every event below its tile, for every feature of the
//!   stream at the summary's version; inserting an event drops the summaries on its path.
//!
//! A query for `(lo, hi]` merges the summaries of the tiles inside the window and folds the
//! events of the (at most two per level) tiles cut by its edges: its work is bounded by
//! the trie depth times the fan-out plus two leaves, not by the entity's history.

use crate::agg::{Acc, Strings};

use super::feature::CompiledFeature;
use super::page::Page;

/// A leaf splits when it holds more events than this.
pub(crate) const LEAF_EVENTS_MAX: usize = 64;
/// Tiles with fewer events are folded event by event rather than given a cached summary.
pub(crate) const SUMMARY_EVENTS_MIN: usize = 32;
const FANOUT_BITS: u32 = 4;

/// The order-preserving map from event times to trie keys.
pub(crate) fn key(time: i64) -> u64 {
    (time as u64) ^ (1 << 63)
}

/// What one query read: tile summaries merged and events folded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryStats {
    pub summaries: u64,
    pub events: u64,
}

/// What folding needs besides the trie: the stream's features (summary slots), the
/// version of that list, the strings, and counters.
pub(crate) struct FoldCtx<'a> {
    pub(crate) features: &'a [std::sync::Arc<CompiledFeature>],
    pub(crate) version: u64,
    pub(crate) strings: &'a dyn Strings,
    pub(crate) stats: QueryStats,
}

#[derive(Debug)]
struct Summary {
    version: u64,
    accs: Box<[Acc]>,
}

#[derive(Debug)]
enum Body {
    Leaf(Page),
    /// Non-empty children, sorted by start.
    Inner(Vec<Node>),
}

#[derive(Debug)]
struct Node {
    start: u64,
    shift: u32,
    count: usize,
    summary: Option<Summary>,
    body: Body,
}

/// One entity's events.
#[derive(Debug)]
pub(crate) struct EntityRun {
    root: Node,
    columns: usize,
}

impl EntityRun {
    pub(crate) fn new(columns: usize) -> EntityRun {
        EntityRun {
            root: Node::leaf(0, 64, Page::new(columns)),
            columns,
        }
    }

    /// Add an event; `false` if an event with this (time, LSN) is already here.
    pub(crate) fn insert(&mut self, time: i64, lsn: u64, cells: &[Option<u64>]) -> bool {
        self.root.insert(key(time), time, lsn, cells, self.columns)
    }

    /// Fold the events with `lo < time <= hi` into `accs` (one per entry of `targets`, a
    /// list of feature slots).
    pub(crate) fn fold(
        &mut self,
        lo: i64,
        hi: i64,
        targets: &[usize],
        accs: &mut [Acc],
        ctx: &mut FoldCtx<'_>,
    ) {
        let Some(first) = lo.checked_add(1) else {
            return;
        };
        if first > hi {
            return;
        }
        self.root.fold_range(first, hi, targets, accs, ctx);
    }
}

impl Node {
    fn leaf(start: u64, shift: u32, page: Page) -> Node {
        Node {
            start,
            shift,
            count: page.len(),
            summary: None,
            body: Body::Leaf(page),
        }
    }

    fn last_key(&self) -> u64 {
        if self.shift >= 64 {
            u64::MAX
        } else {
            self.start | ((1u64 << self.shift) - 1)
        }
    }

    fn insert(
        &mut self,
        key: u64,
        time: i64,
        lsn: u64,
        cells: &[Option<u64>],
        columns: usize,
    ) -> bool {
        let inserted = match &mut self.body {
            Body::Leaf(page) => page.insert(time, lsn, cells),
            Body::Inner(children) => {
                let child_shift = self.shift - FANOUT_BITS;
                let child_start = key & !((1u64 << child_shift) - 1);
                let at = match children.binary_search_by_key(&child_start, |c| c.start) {
                    Ok(at) => at,
                    Err(at) => {
                        children
                            .insert(at, Node::leaf(child_start, child_shift, Page::new(columns)));
                        at
                    }
                };
                children[at].insert(key, time, lsn, cells, columns)
            }
        };
        if inserted {
            self.count += 1;
            self.summary = None;
            if matches!(self.body, Body::Leaf(_)) && self.count > LEAF_EVENTS_MAX && self.shift > 0
            {
                self.split();
            }
        }
        inserted
    }

    /// Turn a full leaf into an inner tile with a child per non-empty sixteenth.
    fn split(&mut self) {
        let Body::Leaf(page) = std::mem::replace(&mut self.body, Body::Inner(Vec::new())) else {
            unreachable!("only leaves split")
        };
        let child_shift = self.shift - FANOUT_BITS;
        let child_start = |row: usize| key(page.times[row]) & !((1u64 << child_shift) - 1);
        let mut children = Vec::new();
        let mut from = 0;
        while from < page.len() {
            let start = child_start(from);
            let mut to = from + 1;
            while to < page.len() && child_start(to) == start {
                to += 1;
            }
            let mut child = Node::leaf(start, child_shift, page.extract(from..to));
            if child.count > LEAF_EVENTS_MAX && child_shift > 0 {
                child.split();
            }
            children.push(child);
            from = to;
        }
        self.body = Body::Inner(children);
    }

    fn fold_range(
        &mut self,
        lo: i64,
        hi: i64,
        targets: &[usize],
        accs: &mut [Acc],
        ctx: &mut FoldCtx<'_>,
    ) {
        if self.count == 0 || self.last_key() < key(lo) || self.start > key(hi) {
            return;
        }
        if key(lo) <= self.start && self.last_key() <= key(hi) {
            self.fold_all(targets, accs, ctx);
            return;
        }
        match &mut self.body {
            Body::Leaf(page) => {
                let rows = page.rows_between(lo, hi);
                fold_rows(page, rows, targets, accs, ctx);
            }
            Body::Inner(children) => {
                let from = children.partition_point(|c| c.last_key() < key(lo));
                for child in &mut children[from..] {
                    if child.start > key(hi) {
                        break;
                    }
                    child.fold_range(lo, hi, targets, accs, ctx);
                }
            }
        }
    }

    /// Fold every event of this tile: through its summary if it is worth one.
    fn fold_all(&mut self, targets: &[usize], accs: &mut [Acc], ctx: &mut FoldCtx<'_>) {
        if self.count >= SUMMARY_EVENTS_MIN {
            self.ensure_summary(ctx);
            let summary = &self.summary.as_ref().expect("ensured").accs;
            for (acc, &slot) in accs.iter_mut().zip(targets) {
                ctx.features[slot]
                    .spec
                    .merge(acc, &summary[slot], ctx.strings);
            }
            ctx.stats.summaries += 1;
            return;
        }
        match &mut self.body {
            Body::Leaf(page) => fold_rows(page, 0..page.len(), targets, accs, ctx),
            Body::Inner(children) => {
                for child in children {
                    child.fold_all(targets, accs, ctx);
                }
            }
        }
    }

    fn ensure_summary(&mut self, ctx: &mut FoldCtx<'_>) {
        if self
            .summary
            .as_ref()
            .is_some_and(|s| s.version == ctx.version)
        {
            return;
        }
        let all: Vec<usize> = (0..ctx.features.len()).collect();
        let mut accs: Vec<Acc> = ctx.features.iter().map(|f| f.spec.init()).collect();
        // Computing a summary is not part of the query's own reads: count only merges.
        let saved = ctx.stats;
        match &mut self.body {
            Body::Leaf(page) => fold_rows(page, 0..page.len(), &all, &mut accs, ctx),
            Body::Inner(children) => {
                for child in children {
                    child.fold_all(&all, &mut accs, ctx);
                }
            }
        }
        ctx.stats = saved;
        self.summary = Some(Summary {
            version: ctx.version,
            accs: accs.into_boxed_slice(),
        });
    }
}

fn fold_rows(
    page: &Page,
    rows: std::ops::Range<usize>,
    targets: &[usize],
    accs: &mut [Acc],
    ctx: &mut FoldCtx<'_>,
) {
    ctx.stats.events += rows.len() as u64;
    for row in rows {
        for (acc, &slot) in accs.iter_mut().zip(targets) {
            let feature = &ctx.features[slot];
            if let Some(item) = feature.item(page, row, ctx.strings) {
                feature.spec.update(acc, item, ctx.strings);
            }
        }
    }
}
