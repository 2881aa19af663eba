//! The events of one entity of one stream, in a time trie of tiles with cached summaries.
//!
//! A tile covers `[start, start + 2^shift)` of the time axis (times mapped to `u64` in
//! offset binary so that order is preserved), with `shift` a multiple of 2 from 64 (the
//! whole axis) down to 0 (one millisecond): tiles are epoch-aligned and nest four to one.
//! A leaf tile holds its events in a [`Page`]; when it holds more than
//! [`LEAF_EVENTS_MAX`], it becomes an inner tile whose children split its events at the
//! highest level where they differ. The trie is path-compressed: a child may be any
//! aligned block inside one quarter of its parent, so the long runs of single-child
//! levels (all events of an entity share their top ~30 bits) cost nothing.
//!
//! Invariants:
//! - children of an inner tile lie in distinct quarters of it, sorted by start;
//! - every event lies in exactly one leaf, and a tile's `count` is the events below it;
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
/// (32 before 2026-11-27: a query then folded ~365 raw events on average at scale S, ~100
/// now; a summary costs ~1 KB for the reference workload's ten features.)
pub(crate) const SUMMARY_EVENTS_MIN: usize = 8;
/// Children per inner tile: 2^FANOUT_BITS. Four rather than sixteen: a window's edge cuts
/// at most three siblings per level instead of fifteen (`as_of` merged 16 tile summaries
/// per query instead of 34 at scale S), for twice the levels.
const FANOUT_BITS: u32 = 2;

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

impl std::ops::AddAssign for QueryStats {
    fn add_assign(&mut self, other: QueryStats) {
        self.summaries += other.summaries;
        self.events += other.events;
    }
}

/// What folding needs besides the trie: the stream's features (summary slots), the
/// version of that list, the strings, and counters.
pub(crate) struct FoldCtx<'a> {
    pub(crate) features: &'a [std::sync::Arc<CompiledFeature>],
    pub(crate) version: u64,
    pub(crate) strings: &'a dyn Strings,
    pub(crate) stats: QueryStats,
    /// Heap bytes of the tile summaries this fold computed and kept.
    pub(crate) summary_bytes_built: usize,
}

#[derive(Debug)]
struct Summary {
    version: u64,
    accs: Box<[Acc]>,
}

impl Summary {
    fn heap_bytes(&self) -> usize {
        self.accs.iter().map(acc_bytes).sum()
    }
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

/// `x` with its low `shift` bits cleared: the start of the aligned block of width
/// 2^shift holding `x`.
fn align(x: u64, shift: u32) -> u64 {
    if shift >= 64 {
        0
    } else {
        x & !((1u64 << shift) - 1)
    }
}

/// The smallest shift (a multiple of 4) whose aligned block holds both `a` and `b`.
fn common_shift(a: u64, b: u64) -> u32 {
    let bits = 64 - (a ^ b).leading_zeros();
    bits.div_ceil(FANOUT_BITS) * FANOUT_BITS
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
        let k = key(time);
        if !self.root.contains(k) {
            // Grow upwards: a new root holding the old one and the new event.
            let shift = common_shift(k, self.root.start);
            let old = std::mem::replace(&mut self.root, Node::leaf(0, 0, Page::new(self.columns)));
            self.root = Node {
                start: align(k, shift),
                shift,
                count: old.count,
                summary: None,
                body: Body::Inner(vec![old]),
            };
        }
        self.root.insert(k, time, lsn, cells, self.columns)
    }

    /// Approximate heap bytes: pages, tiles and cached summaries.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.root.heap_bytes()
    }

    /// Give back the room pages keep for rows to come: for a run read from the state
    /// store, whose pages were filled by inserts (each page's buffer grew by doubling).
    pub(crate) fn shrink_to_fit(&mut self) {
        self.root.shrink_to_fit();
    }

    /// Every event, as (page, row), in (time, LSN) order.
    pub(crate) fn rows(&self) -> Vec<(&Page, u32)> {
        let mut out = Vec::with_capacity(self.root.count);
        self.root.collect_rows(&mut out);
        out
    }

    /// The earliest event time strictly after `time`, if any.
    pub(crate) fn first_time_after(&self, time: i64) -> Option<i64> {
        let next = time.checked_add(1)?;
        self.root.first_at_or_after(next)
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

    /// The earliest event time `>= time` in this tile.
    fn first_at_or_after(&self, time: i64) -> Option<i64> {
        if self.count == 0 || self.last_key() < key(time) {
            return None;
        }
        match &self.body {
            Body::Leaf(page) => {
                let row = page.first_row_at_or_after(time);
                (row < page.len()).then(|| page.time(row))
            }
            Body::Inner(children) => {
                let from = children.partition_point(|c| c.last_key() < key(time));
                children[from..]
                    .iter()
                    .find_map(|c| c.first_at_or_after(time))
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        let summary = self.summary.as_ref().map_or(0, Summary::heap_bytes);
        std::mem::size_of::<Node>()
            + summary
            + match &self.body {
                Body::Leaf(page) => page.heap_bytes(),
                Body::Inner(children) => children.iter().map(Node::heap_bytes).sum(),
            }
    }

    fn shrink_to_fit(&mut self) {
        match &mut self.body {
            Body::Leaf(page) => page.shrink_to_fit(),
            Body::Inner(children) => {
                children.shrink_to_fit();
                children.iter_mut().for_each(Node::shrink_to_fit);
            }
        }
    }

    fn collect_rows<'a>(&'a self, out: &mut Vec<(&'a Page, u32)>) {
        match &self.body {
            Body::Leaf(page) => out.extend((0..page.len()).map(|row| (page, row as u32))),
            Body::Inner(children) => children.iter().for_each(|c| c.collect_rows(out)),
        }
    }

    fn contains(&self, k: u64) -> bool {
        self.start <= k && k <= self.last_key()
    }

    /// Insert an event whose key this tile contains.
    fn insert(
        &mut self,
        k: u64,
        time: i64,
        lsn: u64,
        cells: &[Option<u64>],
        columns: usize,
    ) -> bool {
        debug_assert!(self.contains(k));
        let inserted = match &mut self.body {
            Body::Leaf(page) => page.insert(time, lsn, cells),
            Body::Inner(children) => {
                let child_shift = self.shift - FANOUT_BITS;
                let slot = align(k, child_shift);
                match children.binary_search_by_key(&slot, |c| align(c.start, child_shift)) {
                    Err(at) => {
                        children.insert(at, Node::leaf(slot, child_shift, Page::new(columns)));
                        children[at].insert(k, time, lsn, cells, columns)
                    }
                    Ok(at) if children[at].contains(k) => {
                        children[at].insert(k, time, lsn, cells, columns)
                    }
                    Ok(at) => {
                        // The quarter holds a narrower tile elsewhere: put both under the
                        // smallest block that holds them.
                        let shift = common_shift(k, children[at].start);
                        let placeholder = Node::leaf(0, 0, Page::new(columns));
                        let old = std::mem::replace(&mut children[at], placeholder);
                        children[at] = Node {
                            start: align(k, shift),
                            shift,
                            count: old.count,
                            summary: None,
                            body: Body::Inner(vec![old]),
                        };
                        children[at].insert(k, time, lsn, cells, columns)
                    }
                }
            }
        };
        if inserted {
            self.count += 1;
            self.summary = None;
            if matches!(self.body, Body::Leaf(_)) && self.count > LEAF_EVENTS_MAX {
                self.split();
            }
        }
        inserted
    }

    /// Turn a full leaf into an inner tile, narrowed to the block its events span, with a
    /// child per quarter holding events. A leaf whose events all share one millisecond
    /// cannot split and stays a (large) leaf.
    fn split(&mut self) {
        let Body::Leaf(page) = &self.body else {
            unreachable!("only leaves split")
        };
        let (first, last) = (key(page.time(0)), key(page.time(page.len() - 1)));
        if first == last {
            return;
        }
        let shift = common_shift(first, last);
        debug_assert!(shift <= self.shift && shift >= FANOUT_BITS);
        let Body::Leaf(page) = std::mem::replace(&mut self.body, Body::Inner(Vec::new())) else {
            unreachable!("checked above")
        };
        self.shift = shift;
        self.start = align(first, shift);
        let child_shift = shift - FANOUT_BITS;
        let slot = |row: usize| align(key(page.time(row)), child_shift);
        let mut children = Vec::new();
        let mut from = 0;
        while from < page.len() {
            let start = slot(from);
            let mut to = from + 1;
            while to < page.len() && slot(to) == start {
                to += 1;
            }
            let mut child = Node::leaf(start, child_shift, page.extract(from..to));
            if child.count > LEAF_EVENTS_MAX {
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
        let (start, last) = (self.start, self.last_key());
        match &mut self.body {
            Body::Leaf(page) => {
                // Usually one edge cuts the leaf: scanning from the other end touches only
                // the rows to fold (and the one that stops the scan), in order; a binary
                // search would touch ~6 scattered rows more.
                let rows = if key(lo) <= start {
                    0..page.first_row_after_from_front(hi)
                } else if last <= key(hi) {
                    page.first_row_at_or_after_from_back(lo)..page.len()
                } else {
                    let from = page.first_row_at_or_after(lo);
                    from..page.first_row_after(hi).max(from)
                };
                fold_rows(page, rows, targets, accs, ctx);
            }
            Body::Inner(children) => {
                // At most 2^FANOUT_BITS children, adjacent in memory: a scan, no search.
                for child in children.iter_mut() {
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
        // Kept until the tile changes: no room for values that will not come.
        accs.iter_mut().for_each(Acc::shrink_to_fit);
        let summary = Summary {
            version: ctx.version,
            accs: accs.into_boxed_slice(),
        };
        ctx.summary_bytes_built += summary.heap_bytes();
        self.summary = Some(summary);
    }
}

/// Approximate heap bytes of an accumulator.
fn acc_bytes(acc: &Acc) -> usize {
    std::mem::size_of::<Acc>() + acc.heap_bytes()
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
