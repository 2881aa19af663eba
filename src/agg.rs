//! The aggregation library: every aggregation of docs/semantics.md, each one implementation
//! of [`Aggregator`] (`init / update / merge / finish`).
//!
//! The merge law holds for all of them: folding a sequence equals merging the folds of any
//! split of it, **bit for bit**. Beyond that, every aggregation's result is a function of the
//! *set* of (event time, LSN, value) it saw, independent of order: float sums are exact
//! ([`exact_sum`]), ties between equal times are broken by LSN, HyperLogLog merges by register
//! maxima. This is what lets tiles, sweeps and replays agree exactly.
//!
//! This module never sees events, rows or filters: the engine hands it non-null values.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::value::{FieldType, Value, ValueType};

pub mod distinct;
pub mod exact_sum;
pub mod hll;

use distinct::DistinctKeys;
use exact_sum::ExactSum;
use hll::Hll;

/// The largest `n` of `last_n`.
pub const LAST_N_MAX: u32 = 1000;

/// The aggregations, as named in definition files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggKind {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    Variance,
    Stddev,
    First,
    Last,
    LastN,
    CountDistinct,
    ApproxCountDistinct,
}

impl AggKind {
    pub const ALL: [AggKind; 12] = [
        AggKind::Count,
        AggKind::Sum,
        AggKind::Min,
        AggKind::Max,
        AggKind::Avg,
        AggKind::Variance,
        AggKind::Stddev,
        AggKind::First,
        AggKind::Last,
        AggKind::LastN,
        AggKind::CountDistinct,
        AggKind::ApproxCountDistinct,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AggKind::Count => "count",
            AggKind::Sum => "sum",
            AggKind::Min => "min",
            AggKind::Max => "max",
            AggKind::Avg => "avg",
            AggKind::Variance => "variance",
            AggKind::Stddev => "stddev",
            AggKind::First => "first",
            AggKind::Last => "last",
            AggKind::LastN => "last_n",
            AggKind::CountDistinct => "count_distinct",
            AggKind::ApproxCountDistinct => "approx_count_distinct",
        }
    }

    pub fn parse(name: &str) -> Option<AggKind> {
        AggKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether the aggregation needs a `field` (only `count` can do without).
    pub fn needs_field(self) -> bool {
        self != AggKind::Count
    }

    /// Which field types the aggregation accepts.
    pub fn accepts(self, t: FieldType) -> bool {
        match self {
            AggKind::Sum | AggKind::Avg | AggKind::Variance | AggKind::Stddev => t.is_numeric(),
            _ => true,
        }
    }

    /// The type of the result for a field of type `field` (`None`: `count` of events).
    pub fn result_type(self, field: Option<FieldType>) -> ValueType {
        let field_type = || ValueType::from(field.expect("only count has no field"));
        match self {
            AggKind::Count | AggKind::CountDistinct | AggKind::ApproxCountDistinct => {
                ValueType::Int
            }
            AggKind::Sum if field == Some(FieldType::Int) => ValueType::Int,
            AggKind::Sum | AggKind::Avg | AggKind::Variance | AggKind::Stddev => ValueType::Float,
            AggKind::Min | AggKind::Max | AggKind::First | AggKind::Last => field_type(),
            AggKind::LastN => ValueType::List(Box::new(field_type())),
        }
    }
}

/// An interned string: an index into the stream's string table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StrId(pub u32);

/// How aggregations read interned strings.
pub trait Strings {
    fn get(&self, id: StrId) -> &str;
    /// A stable 64-bit hash of the string's bytes (for HyperLogLog).
    fn hash(&self, id: StrId) -> u64;
}

/// A non-null value as aggregations see it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    Int(i64),
    Float(f64),
    Str(StrId),
    Bool(bool),
}

impl Scalar {
    /// A total order within one type: floats by `total_cmp` (so -0.0 < 0.0), strings by
    /// their bytes, `false < true`.
    fn cmp(self, other: Scalar, strings: &dyn Strings) -> Ordering {
        match (self, other) {
            (Scalar::Int(a), Scalar::Int(b)) => a.cmp(&b),
            (Scalar::Float(a), Scalar::Float(b)) => a.total_cmp(&b),
            (Scalar::Str(a), Scalar::Str(b)) if a == b => Ordering::Equal,
            (Scalar::Str(a), Scalar::Str(b)) => strings.get(a).cmp(strings.get(b)),
            (Scalar::Bool(a), Scalar::Bool(b)) => a.cmp(&b),
            _ => panic!("compared scalars of different types: {self:?} and {other:?}"),
        }
    }

    fn to_value(self, strings: &dyn Strings) -> Value {
        match self {
            Scalar::Int(v) => Value::Int(v),
            Scalar::Float(v) => Value::Float(v),
            Scalar::Str(id) => Value::String(strings.get(id).to_owned()),
            Scalar::Bool(v) => Value::Bool(v),
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Scalar::Int(v) => v as f64,
            Scalar::Float(v) => v,
            _ => panic!("numeric aggregation over {self:?}"),
        }
    }

    /// Identity for `count_distinct`: equal values (with 0.0 == -0.0) have equal keys.
    fn distinct_key(self) -> u64 {
        match self {
            Scalar::Int(v) => v as u64,
            Scalar::Float(v) => (v + 0.0).to_bits(),
            Scalar::Str(id) => u64::from(id.0),
            Scalar::Bool(v) => u64::from(v),
        }
    }

    /// A stable hash for HyperLogLog, the same for equal values in every process.
    fn stable_hash(self, strings: &dyn Strings) -> u64 {
        use xxhash_rust::xxh3::xxh3_64;
        match self {
            Scalar::Int(v) => xxh3_64(&v.to_le_bytes()),
            Scalar::Float(v) => xxh3_64(&(v + 0.0).to_bits().to_le_bytes()),
            Scalar::Str(id) => strings.hash(id),
            Scalar::Bool(v) => xxh3_64(&[u8::from(v)]),
        }
    }
}

/// One value to fold: the (non-null) value and when it happened.
#[derive(Clone, Copy, Debug)]
pub struct Item {
    pub time: i64,
    pub lsn: u64,
    pub value: Scalar,
}

impl Item {
    /// Event order: time, then ingestion (LSN).
    fn order_key(&self) -> (i64, u64) {
        (self.time, self.lsn)
    }
}

/// One aggregation: its partial state and the four operations on it.
pub trait Aggregator {
    type State: Clone;
    /// Whether `retract` is available: removing an item folded in earlier, exactly.
    const INVERTIBLE: bool = false;
    fn init(&self) -> Self::State;
    fn update(&self, state: &mut Self::State, item: Item, strings: &dyn Strings);
    fn merge(&self, state: &mut Self::State, other: &Self::State, strings: &dyn Strings);
    fn finish(&self, state: &Self::State, strings: &dyn Strings) -> Value;
    /// Undo an earlier `update` with the same item; only when `INVERTIBLE`, on a state
    /// made by [`AggSpec::init_retractable`] and folded by `update`/`retract` only. The
    /// state is then exactly the fold of the remaining items (sliding windows rely on it).
    fn retract(&self, _state: &mut Self::State, _item: Item, _strings: &dyn Strings) {
        unreachable!("retract on an aggregation that is not invertible")
    }
}

/// `count`: events (no field) or non-null values.
#[derive(Clone, Copy, Debug)]
pub struct Count;

impl Aggregator for Count {
    type State = u64;
    const INVERTIBLE: bool = true;
    fn retract(&self, state: &mut u64, _: Item, _: &dyn Strings) {
        *state -= 1;
    }
    fn init(&self) -> u64 {
        0
    }
    fn update(&self, state: &mut u64, _: Item, _: &dyn Strings) {
        *state += 1;
    }
    fn merge(&self, state: &mut u64, other: &u64, _: &dyn Strings) {
        *state += other;
    }
    fn finish(&self, state: &u64, _: &dyn Strings) -> Value {
        Value::Int(*state as i64)
    }
}

/// `sum` of an int field: exact in 128 bits, saturating to the i64 range when read.
#[derive(Clone, Copy, Debug)]
pub struct SumInt;

impl Aggregator for SumInt {
    type State = i128;
    const INVERTIBLE: bool = true;
    fn retract(&self, state: &mut i128, item: Item, _: &dyn Strings) {
        let Scalar::Int(v) = item.value else {
            panic!("sum of ints over {:?}", item.value)
        };
        *state -= i128::from(v);
    }
    fn init(&self) -> i128 {
        0
    }
    fn update(&self, state: &mut i128, item: Item, _: &dyn Strings) {
        let Scalar::Int(v) = item.value else {
            panic!("sum of ints over {:?}", item.value)
        };
        *state += i128::from(v);
    }
    fn merge(&self, state: &mut i128, other: &i128, _: &dyn Strings) {
        *state += other;
    }
    fn finish(&self, state: &i128, _: &dyn Strings) -> Value {
        Value::Int((*state).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
    }
}

/// `sum` of a float field: exact, rounded once.
#[derive(Clone, Copy, Debug)]
pub struct SumFloat;

impl Aggregator for SumFloat {
    type State = ExactSum;
    const INVERTIBLE: bool = true;
    fn retract(&self, state: &mut ExactSum, item: Item, _: &dyn Strings) {
        state.sub(item.value.as_f64());
    }
    fn init(&self) -> ExactSum {
        ExactSum::new()
    }
    fn update(&self, state: &mut ExactSum, item: Item, _: &dyn Strings) {
        state.add(item.value.as_f64());
    }
    fn merge(&self, state: &mut ExactSum, other: &ExactSum, _: &dyn Strings) {
        state.merge(other);
    }
    fn finish(&self, state: &ExactSum, _: &dyn Strings) -> Value {
        Value::Float(state.value())
    }
}

/// `min` (`MAX == false`) and `max` (`MAX == true`).
#[derive(Clone, Copy, Debug)]
pub struct Extreme<const MAX: bool>;

impl<const MAX: bool> Extreme<MAX> {
    fn better(&self, candidate: Scalar, current: Scalar, strings: &dyn Strings) -> bool {
        let order = candidate.cmp(current, strings);
        if MAX {
            order == Ordering::Greater
        } else {
            order == Ordering::Less
        }
    }
}

impl<const MAX: bool> Aggregator for Extreme<MAX> {
    type State = Option<Scalar>;
    fn init(&self) -> Option<Scalar> {
        None
    }
    fn update(&self, state: &mut Option<Scalar>, item: Item, strings: &dyn Strings) {
        match state {
            Some(current) if !self.better(item.value, *current, strings) => {}
            _ => *state = Some(item.value),
        }
    }
    fn merge(&self, state: &mut Option<Scalar>, other: &Option<Scalar>, strings: &dyn Strings) {
        if let Some(value) = *other {
            self.update(
                state,
                Item {
                    time: 0,
                    lsn: 0,
                    value,
                },
                strings,
            );
        }
    }
    fn finish(&self, state: &Option<Scalar>, strings: &dyn Strings) -> Value {
        state.map_or(Value::Null, |s| s.to_value(strings))
    }
}

/// Count, sum and (for variance) sum of squares, all exact. Int fields are read as `f64`.
#[derive(Clone, Debug, Default)]
pub struct Moments {
    n: u64,
    sum: ExactSum,
    /// Exact sum of exact squares: each `x*x` is added as the pair (hi, lo) of an
    /// error-free product, so nothing is rounded before `finish`.
    sum_sq: ExactSum,
}

/// Double-double arithmetic for finishing moments (Dekker/Knuth error-free transforms).
mod dd {
    pub fn two_sum(a: f64, b: f64) -> (f64, f64) {
        let s = a + b;
        let bb = s - a;
        (s, (a - (s - bb)) + (b - bb))
    }

    pub fn mul(a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
        let p = a.0 * b.0;
        let e = a.0.mul_add(b.0, -p);
        let lo = e + (a.0 * b.1 + a.1 * b.0);
        two_sum(p, lo)
    }

    pub fn div_f64(a: (f64, f64), d: f64) -> (f64, f64) {
        let q = a.0 / d;
        // remainder r = a - q*d, exactly enough for one correction step.
        let p = q * d;
        let e = q.mul_add(d, -p);
        let r = ((a.0 - p) - e) + a.1;
        two_sum(q, r / d)
    }

    pub fn sub(a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
        let (s, e) = two_sum(a.0, -b.0);
        two_sum(s, e + (a.1 - b.1))
    }
}

impl Moments {
    fn add(&mut self, x: f64, squares: bool) {
        self.n += 1;
        self.sum.add(x);
        if squares {
            let hi = x * x;
            self.sum_sq.add(hi);
            // For huge |x| the square overflows; the variance is then infinite anyway.
            if hi.is_finite() {
                self.sum_sq.add(x.mul_add(x, -hi));
            }
        }
    }

    /// Undo `add(x, squares)` exactly.
    fn remove(&mut self, x: f64, squares: bool) {
        self.n -= 1;
        self.sum.sub(x);
        if squares {
            let hi = x * x;
            self.sum_sq.sub(hi);
            if hi.is_finite() {
                self.sum_sq.sub(x.mul_add(x, -hi));
            }
        }
    }

    fn merge(&mut self, other: &Moments) {
        self.n += other.n;
        self.sum.merge(&other.sum);
        self.sum_sq.merge(&other.sum_sq);
    }

    fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| dd::div_f64(self.sum.value_dd(), self.n as f64).0)
    }

    /// Population variance: (Σx² − (Σx)²/n) / n, evaluated in double-double from the exact
    /// sums, so that it does not suffer the cancellation of the textbook formula.
    fn variance(&self) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let n = self.n as f64;
        let s1 = self.sum.value_dd();
        let s2 = self.sum_sq.value_dd();
        let centered = dd::sub(s2, dd::div_f64(dd::mul(s1, s1), n));
        let variance = dd::div_f64(centered, n).0;
        Some(if variance < 0.0 { 0.0 } else { variance })
    }
}

/// `avg`.
#[derive(Clone, Copy, Debug)]
pub struct Avg;

impl Aggregator for Avg {
    type State = Moments;
    const INVERTIBLE: bool = true;
    fn retract(&self, state: &mut Moments, item: Item, _: &dyn Strings) {
        state.remove(item.value.as_f64(), false);
    }
    fn init(&self) -> Moments {
        Moments::default()
    }
    fn update(&self, state: &mut Moments, item: Item, _: &dyn Strings) {
        state.add(item.value.as_f64(), false);
    }
    fn merge(&self, state: &mut Moments, other: &Moments, _: &dyn Strings) {
        state.merge(other);
    }
    fn finish(&self, state: &Moments, _: &dyn Strings) -> Value {
        state.mean().map_or(Value::Null, Value::Float)
    }
}

/// `variance` (`SQRT == false`) and `stddev` (`SQRT == true`), population (divide by n).
#[derive(Clone, Copy, Debug)]
pub struct Spread<const SQRT: bool>;

impl<const SQRT: bool> Aggregator for Spread<SQRT> {
    type State = Moments;
    const INVERTIBLE: bool = true;
    fn retract(&self, state: &mut Moments, item: Item, _: &dyn Strings) {
        state.remove(item.value.as_f64(), true);
    }
    fn init(&self) -> Moments {
        Moments::default()
    }
    fn update(&self, state: &mut Moments, item: Item, _: &dyn Strings) {
        state.add(item.value.as_f64(), true);
    }
    fn merge(&self, state: &mut Moments, other: &Moments, _: &dyn Strings) {
        state.merge(other);
    }
    fn finish(&self, state: &Moments, _: &dyn Strings) -> Value {
        match state.variance() {
            None => Value::Null,
            Some(v) if SQRT => Value::Float(v.sqrt()),
            Some(v) => Value::Float(v),
        }
    }
}

/// `first` (`LAST == false`) and `last` (`LAST == true`) by (event time, LSN): ties go to
/// the earliest-ingested for `first` and the latest-ingested for `last`.
#[derive(Clone, Copy, Debug)]
pub struct Edge<const LAST: bool>;

impl<const LAST: bool> Aggregator for Edge<LAST> {
    type State = Option<Item>;
    fn init(&self) -> Option<Item> {
        None
    }
    fn update(&self, state: &mut Option<Item>, item: Item, _: &dyn Strings) {
        let replace = match state {
            None => true,
            Some(current) if LAST => item.order_key() > current.order_key(),
            Some(current) => item.order_key() < current.order_key(),
        };
        if replace {
            *state = Some(item);
        }
    }
    fn merge(&self, state: &mut Option<Item>, other: &Option<Item>, strings: &dyn Strings) {
        if let Some(item) = *other {
            self.update(state, item, strings);
        }
    }
    fn finish(&self, state: &Option<Item>, strings: &dyn Strings) -> Value {
        state.map_or(Value::Null, |item| item.value.to_value(strings))
    }
}

/// `last_n`: the `n` latest values by (event time, LSN), newest first.
#[derive(Clone, Copy, Debug)]
pub struct LastN {
    pub n: usize,
}

impl Aggregator for LastN {
    /// Newest first, at most `n`.
    type State = Vec<Item>;
    fn init(&self) -> Vec<Item> {
        Vec::new()
    }
    fn update(&self, state: &mut Vec<Item>, item: Item, _: &dyn Strings) {
        let key = item.order_key();
        let at = state.partition_point(|held| held.order_key() > key);
        if at < self.n {
            state.insert(at, item);
            state.truncate(self.n);
        }
    }
    fn merge(&self, state: &mut Vec<Item>, other: &Vec<Item>, strings: &dyn Strings) {
        for &item in other {
            self.update(state, item, strings);
        }
    }
    fn finish(&self, state: &Vec<Item>, strings: &dyn Strings) -> Value {
        Value::List(
            state
                .iter()
                .map(|item| item.value.to_value(strings))
                .collect(),
        )
    }
}

/// `count_distinct`: exact.
#[derive(Clone, Copy, Debug)]
pub struct CountDistinct;

impl Aggregator for CountDistinct {
    /// The distinct keys (with their multiplicities when made by `init_retractable`).
    type State = DistinctKeys;
    const INVERTIBLE: bool = true;
    fn init(&self) -> DistinctKeys {
        DistinctKeys::default()
    }
    fn update(&self, state: &mut DistinctKeys, item: Item, _: &dyn Strings) {
        state.insert(item.value.distinct_key());
    }
    fn merge(&self, state: &mut DistinctKeys, other: &DistinctKeys, _: &dyn Strings) {
        state.merge(other);
    }
    fn finish(&self, state: &DistinctKeys, _: &dyn Strings) -> Value {
        Value::Int(state.len() as i64)
    }
    fn retract(&self, state: &mut DistinctKeys, item: Item, _: &dyn Strings) {
        state.remove_one(item.value.distinct_key());
    }
}

/// `approx_count_distinct`: HyperLogLog, relative error ≤ 2%.
#[derive(Clone, Copy, Debug)]
pub struct ApproxCountDistinct;

impl Aggregator for ApproxCountDistinct {
    type State = Hll;
    fn init(&self) -> Hll {
        Hll::default()
    }
    fn update(&self, state: &mut Hll, item: Item, strings: &dyn Strings) {
        state.insert(item.value.stable_hash(strings));
    }
    fn merge(&self, state: &mut Hll, other: &Hll, _: &dyn Strings) {
        state.merge(other);
    }
    fn finish(&self, state: &Hll, _: &dyn Strings) -> Value {
        Value::Int(state.estimate() as i64)
    }
}

/// The partial state of any aggregation: what tiles store and queries merge.
#[derive(Clone, Debug)]
pub enum Acc {
    Count(u64),
    SumInt(i128),
    SumFloat(ExactSum),
    Extreme(Option<Scalar>),
    Moments(Box<Moments>),
    Edge(Option<Item>),
    LastN(Vec<Item>),
    Distinct(Box<DistinctKeys>),
    Hll(Box<Hll>),
}

impl Acc {
    /// Approximate heap bytes owned beyond the value itself (for the entity cache's budget).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        match self {
            Acc::Count(_) | Acc::SumInt(_) | Acc::Extreme(_) | Acc::Edge(_) => 0,
            Acc::SumFloat(sum) => sum.heap_bytes(),
            Acc::Moments(m) => size_of::<Moments>() + m.sum.heap_bytes() + m.sum_sq.heap_bytes(),
            Acc::LastN(items) => items.capacity() * size_of::<Item>(),
            Acc::Distinct(set) => size_of::<DistinctKeys>() + set.heap_bytes(),
            Acc::Hll(hll) => {
                size_of::<Hll>()
                    + match &**hll {
                        Hll::Sparse(hashes) => hashes.capacity() * size_of::<u64>(),
                        Hll::Dense(_) => hll::REGISTERS,
                    }
            }
        }
    }

    /// Give back the room kept for values to come: for a state that is stored (a tile
    /// summary) and from then on only merged from.
    pub fn shrink_to_fit(&mut self) {
        match self {
            Acc::Distinct(set) => set.shrink_to_fit(),
            Acc::LastN(items) => items.shrink_to_fit(),
            Acc::Hll(hll) => hll.shrink_to_fit(),
            Acc::Count(_)
            | Acc::SumInt(_)
            | Acc::SumFloat(_)
            | Acc::Extreme(_)
            | Acc::Moments(_)
            | Acc::Edge(_) => {}
        }
    }
}

/// Heap bytes of a hashbrown table that can hold `capacity` entries of `entry` bytes: a
/// power of two of buckets at most 7/8 full, one control byte per bucket plus one group.
fn hash_table_bytes(capacity: usize, entry: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = (capacity * 8 / 7).next_power_of_two();
    buckets * (entry + 1) + 16
}

/// A compiled aggregation: which one, over which field type, with which parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AggSpec {
    pub kind: AggKind,
    /// The aggregated field's type (`None`: `count` of events).
    pub field_type: Option<FieldType>,
    /// `n` of `last_n`.
    pub n: u32,
}

impl AggSpec {
    /// The state of an empty window.
    pub fn init(&self) -> Acc {
        match self.kind {
            AggKind::Count => Acc::Count(Count.init()),
            AggKind::Sum if self.field_type == Some(FieldType::Int) => Acc::SumInt(SumInt.init()),
            AggKind::Sum => Acc::SumFloat(SumFloat.init()),
            AggKind::Min | AggKind::Max => Acc::Extreme(None),
            AggKind::Avg | AggKind::Variance | AggKind::Stddev => Acc::Moments(Box::default()),
            AggKind::First | AggKind::Last => Acc::Edge(None),
            AggKind::LastN => Acc::LastN(Vec::new()),
            AggKind::CountDistinct => Acc::Distinct(Box::default()),
            AggKind::ApproxCountDistinct => Acc::Hll(Box::default()),
        }
    }

    /// The state of an empty window that values will also be retracted from (a sliding
    /// window): like [`AggSpec::init`], and keeps what [`AggSpec::retract`] needs.
    pub fn init_retractable(&self) -> Acc {
        match self.kind {
            AggKind::CountDistinct => Acc::Distinct(Box::new(DistinctKeys::retractable())),
            _ => self.init(),
        }
    }

    /// Fold one value in.
    #[inline]
    pub fn update(&self, acc: &mut Acc, item: Item, strings: &dyn Strings) {
        match (self.kind, acc) {
            (AggKind::Count, Acc::Count(s)) => Count.update(s, item, strings),
            (AggKind::Sum, Acc::SumInt(s)) => SumInt.update(s, item, strings),
            (AggKind::Sum, Acc::SumFloat(s)) => SumFloat.update(s, item, strings),
            (AggKind::Min, Acc::Extreme(s)) => Extreme::<false>.update(s, item, strings),
            (AggKind::Max, Acc::Extreme(s)) => Extreme::<true>.update(s, item, strings),
            (AggKind::Avg, Acc::Moments(s)) => Avg.update(s, item, strings),
            (AggKind::Variance, Acc::Moments(s)) => Spread::<false>.update(s, item, strings),
            (AggKind::Stddev, Acc::Moments(s)) => Spread::<true>.update(s, item, strings),
            (AggKind::First, Acc::Edge(s)) => Edge::<false>.update(s, item, strings),
            (AggKind::Last, Acc::Edge(s)) => Edge::<true>.update(s, item, strings),
            (AggKind::LastN, Acc::LastN(s)) => self.last_n().update(s, item, strings),
            (AggKind::CountDistinct, Acc::Distinct(s)) => CountDistinct.update(s, item, strings),
            (AggKind::ApproxCountDistinct, Acc::Hll(s)) => {
                ApproxCountDistinct.update(s, item, strings)
            }
            (kind, acc) => mismatch(kind, acc),
        }
    }

    /// Merge another partial state of the same aggregation in.
    pub fn merge(&self, acc: &mut Acc, other: &Acc, strings: &dyn Strings) {
        match (self.kind, acc, other) {
            (AggKind::Count, Acc::Count(s), Acc::Count(o)) => Count.merge(s, o, strings),
            (AggKind::Sum, Acc::SumInt(s), Acc::SumInt(o)) => SumInt.merge(s, o, strings),
            (AggKind::Sum, Acc::SumFloat(s), Acc::SumFloat(o)) => SumFloat.merge(s, o, strings),
            (AggKind::Min, Acc::Extreme(s), Acc::Extreme(o)) => {
                Extreme::<false>.merge(s, o, strings)
            }
            (AggKind::Max, Acc::Extreme(s), Acc::Extreme(o)) => {
                Extreme::<true>.merge(s, o, strings)
            }
            (AggKind::Avg, Acc::Moments(s), Acc::Moments(o)) => Avg.merge(s, o, strings),
            (AggKind::Variance, Acc::Moments(s), Acc::Moments(o)) => {
                Spread::<false>.merge(s, o, strings)
            }
            (AggKind::Stddev, Acc::Moments(s), Acc::Moments(o)) => {
                Spread::<true>.merge(s, o, strings)
            }
            (AggKind::First, Acc::Edge(s), Acc::Edge(o)) => Edge::<false>.merge(s, o, strings),
            (AggKind::Last, Acc::Edge(s), Acc::Edge(o)) => Edge::<true>.merge(s, o, strings),
            (AggKind::LastN, Acc::LastN(s), Acc::LastN(o)) => self.last_n().merge(s, o, strings),
            (AggKind::CountDistinct, Acc::Distinct(s), Acc::Distinct(o)) => {
                CountDistinct.merge(s, o, strings)
            }
            (AggKind::ApproxCountDistinct, Acc::Hll(s), Acc::Hll(o)) => {
                ApproxCountDistinct.merge(s, o, strings)
            }
            (kind, acc, _) => mismatch(kind, acc),
        }
    }

    /// The value of a window whose partial state is `acc`.
    pub fn finish(&self, acc: &Acc, strings: &dyn Strings) -> Value {
        match (self.kind, acc) {
            (AggKind::Count, Acc::Count(s)) => Count.finish(s, strings),
            (AggKind::Sum, Acc::SumInt(s)) => SumInt.finish(s, strings),
            (AggKind::Sum, Acc::SumFloat(s)) => SumFloat.finish(s, strings),
            (AggKind::Min, Acc::Extreme(s)) => Extreme::<false>.finish(s, strings),
            (AggKind::Max, Acc::Extreme(s)) => Extreme::<true>.finish(s, strings),
            (AggKind::Avg, Acc::Moments(s)) => Avg.finish(s, strings),
            (AggKind::Variance, Acc::Moments(s)) => Spread::<false>.finish(s, strings),
            (AggKind::Stddev, Acc::Moments(s)) => Spread::<true>.finish(s, strings),
            (AggKind::First, Acc::Edge(s)) => Edge::<false>.finish(s, strings),
            (AggKind::Last, Acc::Edge(s)) => Edge::<true>.finish(s, strings),
            (AggKind::LastN, Acc::LastN(s)) => self.last_n().finish(s, strings),
            (AggKind::CountDistinct, Acc::Distinct(s)) => CountDistinct.finish(s, strings),
            (AggKind::ApproxCountDistinct, Acc::Hll(s)) => ApproxCountDistinct.finish(s, strings),
            (kind, acc) => mismatch(kind, acc),
        }
    }

    /// Whether `retract` is available for this aggregation.
    pub fn invertible(&self) -> bool {
        match self.kind {
            AggKind::Count => Count::INVERTIBLE,
            AggKind::Sum => SumInt::INVERTIBLE && SumFloat::INVERTIBLE,
            AggKind::Avg => Avg::INVERTIBLE,
            AggKind::Variance | AggKind::Stddev => {
                Spread::<false>::INVERTIBLE && Spread::<true>::INVERTIBLE
            }
            AggKind::CountDistinct => CountDistinct::INVERTIBLE,
            AggKind::Min | AggKind::Max => Extreme::<false>::INVERTIBLE,
            AggKind::First | AggKind::Last => Edge::<false>::INVERTIBLE,
            AggKind::LastN => LastN::INVERTIBLE,
            AggKind::ApproxCountDistinct => ApproxCountDistinct::INVERTIBLE,
        }
    }

    /// Remove an item folded in earlier (only if [`AggSpec::invertible`], and only from a
    /// state made by [`AggSpec::init_retractable`] and never merged into).
    pub fn retract(&self, acc: &mut Acc, item: Item, strings: &dyn Strings) {
        match (self.kind, acc) {
            (AggKind::Count, Acc::Count(s)) => Count.retract(s, item, strings),
            (AggKind::Sum, Acc::SumInt(s)) => SumInt.retract(s, item, strings),
            (AggKind::Sum, Acc::SumFloat(s)) => SumFloat.retract(s, item, strings),
            (AggKind::Avg, Acc::Moments(s)) => Avg.retract(s, item, strings),
            (AggKind::Variance, Acc::Moments(s)) => Spread::<false>.retract(s, item, strings),
            (AggKind::Stddev, Acc::Moments(s)) => Spread::<true>.retract(s, item, strings),
            (AggKind::CountDistinct, Acc::Distinct(s)) => CountDistinct.retract(s, item, strings),
            (kind, acc) => mismatch(kind, acc),
        }
    }

    fn last_n(&self) -> LastN {
        LastN { n: self.n as usize }
    }
}

fn mismatch(kind: AggKind, acc: &Acc) -> ! {
    panic!("accumulator {acc:?} does not belong to {kind:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoStrings;
    impl Strings for NoStrings {
        fn get(&self, _: StrId) -> &str {
            unreachable!("ints only")
        }
        fn hash(&self, _: StrId) -> u64 {
            unreachable!("ints only")
        }
    }

    /// The cache budget relies on these estimates: they must follow what is allocated.
    #[test]
    fn heap_bytes_follow_what_accumulators_hold() {
        let spec = |kind| AggSpec {
            kind,
            field_type: Some(FieldType::Int),
            n: 0,
        };
        let item = |i: i64| Item {
            time: i,
            lsn: i as u64,
            value: Scalar::Int(i),
        };
        let distinct = spec(AggKind::CountDistinct);
        let mut acc = distinct.init();
        for i in 0..1000 {
            distinct.update(&mut acc, item((i + 1) << 20), &NoStrings);
        }
        // 1,000 large keys of 8 bytes, in a table at most 7/8 full: 1,024 to 2,048 buckets.
        let bytes = acc.heap_bytes() - size_of::<DistinctKeys>();
        assert!((1024 * 9..=2048 * 9 + 16).contains(&bytes), "{bytes}");
        // 1,000 small keys: a bitmap of 16 words.
        let mut acc = distinct.init();
        for i in 0..1000 {
            distinct.update(&mut acc, item(i), &NoStrings);
        }
        acc.shrink_to_fit();
        assert_eq!(acc.heap_bytes(), size_of::<DistinctKeys>() + 16 * 8);
        assert_eq!(spec(AggKind::Count).init().heap_bytes(), 0);
        let avg = AggSpec {
            kind: AggKind::Avg,
            field_type: Some(FieldType::Float),
            n: 0,
        };
        let mut acc = avg.init();
        let narrow = acc.heap_bytes();
        for x in [1e300, 1e-300] {
            let value = Scalar::Float(x);
            avg.update(&mut acc, Item { value, ..item(1) }, &NoStrings);
        }
        assert!(acc.heap_bytes() > narrow, "a wide sum's limbs are counted");
    }
}
