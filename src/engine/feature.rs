//! Features compiled against their stream: which column to read, the aggregation, the
//! filter with its literals resolved, and the window.

use std::cmp::Ordering;

use crate::agg::{AggSpec, Item, Scalar, StrId, Strings};
use crate::catalog::filter::{self, CmpOp, Expr, Literal};
use crate::catalog::{FeatureDef, Freshness, StreamDef};
use crate::value::FieldType;

use super::entity::EntityRun;
use super::page::Page;
use super::strings::StringTable;

/// A feature ready to fold rows of its stream's pages.
#[derive(Debug)]
pub(crate) struct CompiledFeature {
    pub(crate) spec: AggSpec,
    /// The aggregated column and its type (`None`: count of events).
    pub(crate) field: Option<(usize, FieldType)>,
    pub(crate) filter: Option<Filter>,
    pub(crate) window_ms: Option<i64>,
    pub(crate) freshness: Freshness,
}

/// A `where` expression over column indices.
#[derive(Debug)]
pub(crate) enum Filter {
    /// `bool_field == value` (or `!= !value`): the usual filter, tested without the general
    /// comparison. False for a null, as any comparison.
    BoolIs {
        column: usize,
        value: bool,
    },
    Cmp {
        column: usize,
        ty: FieldType,
        op: CmpOp,
        literal: Lit,
    },
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
}

#[derive(Debug)]
pub(crate) enum Lit {
    Int(i64),
    Float(f64),
    /// Interned, so that `==` and `!=` compare ids.
    Str(StrId),
    Bool(bool),
}

/// The raw 8 bytes of a column cell as a typed scalar.
pub(crate) fn scalar(ty: FieldType, raw: u64) -> Scalar {
    match ty {
        FieldType::Int => Scalar::Int(raw as i64),
        FieldType::Float => Scalar::Float(f64::from_bits(raw)),
        FieldType::String => Scalar::Str(StrId(raw as u32)),
        FieldType::Bool => Scalar::Bool(raw != 0),
    }
}

/// Exact comparison of an integer with a float (no rounding of either).
fn cmp_int_float(i: i64, f: f64) -> Ordering {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f >= TWO_63 {
        return Ordering::Less;
    }
    if f < -TWO_63 {
        return Ordering::Greater;
    }
    let floor = f.floor();
    match i.cmp(&(floor as i64)) {
        Ordering::Equal if f > floor => Ordering::Less,
        other => other,
    }
}

impl Filter {
    fn compile(expr: &Expr, stream: &StreamDef, strings: &StringTable) -> Filter {
        match expr {
            Expr::Cmp { field, op, literal } => {
                let column = stream
                    .field_index(field)
                    .expect("filters are checked against their stream");
                let ty = stream.fields[field];
                let literal = match literal {
                    Literal::Int(v) => Lit::Int(*v),
                    Literal::Float(v) => Lit::Float(*v),
                    Literal::Str(s) => Lit::Str(strings.intern(s)),
                    Literal::Bool(v) => match op {
                        CmpOp::Eq => return Filter::BoolIs { column, value: *v },
                        CmpOp::Ne => return Filter::BoolIs { column, value: !*v },
                        _ => Lit::Bool(*v),
                    },
                };
                Filter::Cmp {
                    column,
                    ty,
                    op: *op,
                    literal,
                }
            }
            Expr::And(a, b) => Filter::And(
                Box::new(Self::compile(a, stream, strings)),
                Box::new(Self::compile(b, stream, strings)),
            ),
            Expr::Or(a, b) => Filter::Or(
                Box::new(Self::compile(a, stream, strings)),
                Box::new(Self::compile(b, stream, strings)),
            ),
            Expr::Not(a) => Filter::Not(Box::new(Self::compile(a, stream, strings))),
        }
    }

    /// Whether row `row` of `page` passes. A null field makes its comparison false.
    #[inline]
    pub(crate) fn matches(&self, page: &Page, row: usize, strings: &dyn Strings) -> bool {
        match self {
            Filter::BoolIs { column, value } => page
                .cell(*column, row)
                .is_some_and(|raw| (raw != 0) == *value),
            _ => self.matches_in_general(page, row, strings),
        }
    }

    fn matches_in_general(&self, page: &Page, row: usize, strings: &dyn Strings) -> bool {
        match self {
            Filter::BoolIs { .. } => self.matches(page, row, strings),
            Filter::And(a, b) => a.matches(page, row, strings) && b.matches(page, row, strings),
            Filter::Or(a, b) => a.matches(page, row, strings) || b.matches(page, row, strings),
            Filter::Not(a) => !a.matches(page, row, strings),
            Filter::Cmp {
                column,
                ty,
                op,
                literal,
            } => {
                let Some(raw) = page.cell(*column, row) else {
                    return false;
                };
                let ordering = match (scalar(*ty, raw), literal) {
                    (Scalar::Int(v), Lit::Int(l)) => v.cmp(l),
                    (Scalar::Int(v), Lit::Float(l)) => cmp_int_float(v, *l),
                    (Scalar::Float(v), Lit::Int(l)) => cmp_int_float(*l, v).reverse(),
                    (Scalar::Float(v), Lit::Float(l)) => v.partial_cmp(l).unwrap_or(Ordering::Less),
                    (Scalar::Str(v), Lit::Str(l)) if v == *l => Ordering::Equal,
                    (Scalar::Str(_), Lit::Str(_)) if matches!(op, CmpOp::Eq | CmpOp::Ne) => {
                        Ordering::Less
                    }
                    (Scalar::Str(v), Lit::Str(l)) => strings.get(v).cmp(strings.get(*l)),
                    (Scalar::Bool(v), Lit::Bool(l)) => v.cmp(l),
                    _ => unreachable!("filters are type-checked against their stream"),
                };
                op.holds(ordering)
            }
        }
    }
}

impl CompiledFeature {
    pub(crate) fn compile(
        def: &FeatureDef,
        stream: &StreamDef,
        strings: &StringTable,
    ) -> CompiledFeature {
        let field = def.field.as_ref().map(|name| {
            let index = stream
                .field_index(name)
                .expect("feature fields are checked against their stream");
            (index, stream.fields[name])
        });
        let filter = def.filter.as_ref().map(|text| {
            let expr = filter::parse(text).expect("stored filters are canonical and parse");
            Filter::compile(&expr, stream, strings)
        });
        CompiledFeature {
            spec: AggSpec {
                kind: def.agg,
                field_type: field.map(|(_, ty)| ty),
                n: def.n.unwrap_or(0),
            },
            field,
            filter,
            window_ms: def.window_ms,
            freshness: def.freshness,
        }
    }

    /// What this feature folds from row `row` of `page`: `None` if the row is filtered out or
    /// the field is null.
    #[inline]
    pub(crate) fn item(&self, page: &Page, row: usize, strings: &dyn Strings) -> Option<Item> {
        if let Some(filter) = &self.filter
            && !filter.matches(page, row, strings)
        {
            return None;
        }
        let value = match self.field {
            None => Scalar::Bool(true),
            Some((column, ty)) => scalar(ty, page.cell(column, row)?),
        };
        Some(Item {
            time: page.time(row),
            lsn: page.lsn(row),
            value,
        })
    }

    /// The window `(lo, hi]` this feature aggregates for a query as of `t`
    /// (`lo == i64::MIN`: lifetime).
    pub(crate) fn window(&self, t: i64) -> (i64, i64) {
        let hi = self.freshness.effective_time(t);
        let lo = match self.window_ms {
            Some(w) => hi.saturating_sub(w),
            None => i64::MIN,
        };
        (lo, hi)
    }

    /// The query times `[from, until)` around `t` at which this feature's value equals its
    /// value as of `t`, as long as no event is added: until the next event enters the
    /// window or the oldest one leaves it (or, for a batch feature, the next period).
    /// Conservative: filters are ignored, so `until` may come earlier than the real change.
    /// Also the horizon: the latest event time any of those values depends on.
    pub(crate) fn validity(&self, t: i64, run: &EntityRun) -> (i64, i64, i64) {
        match self.freshness {
            Freshness::Batch { period_ms } => {
                let start = t.div_euclid(period_ms) * period_ms;
                (start, start.saturating_add(period_ms), start)
            }
            Freshness::Realtime => {
                let enter = run.first_time_after(t);
                let leave = self.window_ms.and_then(|w| {
                    run.first_time_after(t.saturating_sub(w))
                        .filter(|&oldest| oldest <= t)
                        .map(|oldest| oldest.saturating_add(w))
                });
                let until = enter.into_iter().chain(leave).min().unwrap_or(i64::MAX);
                (t, until, until - 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_float_comparison_is_exact() {
        assert_eq!(cmp_int_float(1, 1.0), Ordering::Equal);
        assert_eq!(cmp_int_float(1, 1.5), Ordering::Less);
        assert_eq!(cmp_int_float(2, 1.5), Ordering::Greater);
        assert_eq!(cmp_int_float(-2, -1.5), Ordering::Less);
        assert_eq!(cmp_int_float(i64::MAX, 9.3e18), Ordering::Less);
        assert_eq!(cmp_int_float(i64::MIN, -9.3e18), Ordering::Greater);
        // 2^53 + 1 is not representable; the comparison must still see the difference.
        assert_eq!(
            cmp_int_float((1 << 53) + 1, 9_007_199_254_740_992.0),
            Ordering::Greater
        );
    }

    /// A boolean `==` / `!=` compiles to `BoolIs`, which passes the same rows (true, false,
    /// null) as the general comparison, alone and inside `and`, `or` and `not`.
    #[test]
    fn bool_filters_pass_the_rows_the_general_comparison_does() {
        let toml = "[[stream]]\nname = \"s\"\nentity = \"k\"\ntime = \"ts\"\n\
                    [stream.fields]\nb = \"bool\"\ni = \"int\"\n";
        let stream = crate::catalog::parse_definitions(toml).unwrap().streams[0].clone();
        let strings = StringTable::default();
        let column = stream.field_index("b").unwrap();
        let mut page = Page::new(2);
        for (row, b) in [Some(1), Some(0), None].into_iter().enumerate() {
            page.push(row as i64, row as u64, &[b, Some(7)]);
        }
        for op in [CmpOp::Eq, CmpOp::Ne] {
            for value in [true, false] {
                let text = format!("b {} {value}", if op == CmpOp::Eq { "==" } else { "!=" });
                let fast = Filter::compile(&filter::parse(&text).unwrap(), &stream, &strings);
                assert!(matches!(fast, Filter::BoolIs { .. }), "{text}");
                let general = || Filter::Cmp {
                    column,
                    ty: FieldType::Bool,
                    op,
                    literal: Lit::Bool(value),
                };
                for (outer, wrap) in [
                    ("alone", &(|f| f) as &dyn Fn(Filter) -> Filter),
                    ("not", &|f| Filter::Not(Box::new(f))),
                    ("and", &|f| {
                        Filter::And(
                            Box::new(f),
                            Box::new(Filter::Not(Box::new(Filter::Not(Box::new(general()))))),
                        )
                    }),
                    ("or", &|f| {
                        Filter::Or(Box::new(Filter::Not(Box::new(general()))), Box::new(f))
                    }),
                ] {
                    let fast = wrap(Filter::compile(
                        &filter::parse(&text).unwrap(),
                        &stream,
                        &strings,
                    ));
                    let slow = wrap(general());
                    for row in 0..page.len() {
                        let view = strings.read();
                        assert_eq!(
                            fast.matches(&page, row, &view),
                            slow.matches(&page, row, &view),
                            "{text} {outer}, row {row}"
                        );
                    }
                }
                // Null never passes a comparison.
                assert!(!fast.matches(&page, 2, &strings.read()), "{text}");
            }
        }
    }
}
