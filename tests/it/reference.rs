//! A naive reference: every feature recomputed from a plain list of events, by code that
//! shares nothing with the engine but the definitions parser. Float sums are correctly
//! rounded by Shewchuk's algorithm (a different method from the engine's exact sums).

use std::collections::{BTreeMap, HashSet};

use fsdb::agg::AggKind;
use fsdb::catalog::filter::{self, CmpOp, Expr, Literal};
use fsdb::catalog::{Definitions, FeatureDef, Freshness, StreamDef};
use fsdb::{FieldType, Value};

#[derive(Clone, Debug)]
pub struct RefEvent {
    pub stream: String,
    pub entity: String,
    pub time: i64,
    /// Ingestion order (the engine's LSN order).
    pub seq: u64,
    pub fields: BTreeMap<String, Value>,
}

#[derive(Default)]
pub struct Reference {
    pub streams: Vec<StreamDef>,
    pub features: Vec<FeatureDef>,
    pub events: Vec<RefEvent>,
    ids: HashSet<(String, String)>,
    seq: u64,
}

/// The correctly rounded sum (`fsdb::testing::fsum`), +0.0 for a sum of zeros as the
/// engine gives it.
pub fn fsum(xs: &[f64]) -> f64 {
    fsdb::testing::fsum(xs) + 0.0
}

fn as_f64(v: &Value) -> f64 {
    match v {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        other => panic!("not numeric: {other:?}"),
    }
}

fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::Float(x), Value::Float(y)) => x.total_cmp(y),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => panic!("compare {a:?} {b:?}"),
    }
}

fn eval(expr: &Expr, fields: &BTreeMap<String, Value>) -> bool {
    match expr {
        Expr::And(a, b) => eval(a, fields) && eval(b, fields),
        Expr::Or(a, b) => eval(a, fields) || eval(b, fields),
        Expr::Not(a) => !eval(a, fields),
        Expr::Cmp { field, op, literal } => {
            let Some(v) = fields.get(field).filter(|v| !v.is_null()) else {
                return false;
            };
            // Exact numeric comparison through i128 / rationals is overkill here: the
            // generator uses values where f64 comparison is exact.
            let ord = match (v, literal) {
                (Value::Int(a), Literal::Int(b)) => a.cmp(b),
                (Value::Int(a), Literal::Float(b)) => (*a as f64).partial_cmp(b).unwrap(),
                (Value::Float(a), Literal::Int(b)) => a.partial_cmp(&(*b as f64)).unwrap(),
                (Value::Float(a), Literal::Float(b)) => a.partial_cmp(b).unwrap(),
                (Value::String(a), Literal::Str(b)) => a.as_str().cmp(b.as_str()),
                (Value::Bool(a), Literal::Bool(b)) => a.cmp(b),
                other => panic!("type mismatch {other:?}"),
            };
            match op {
                CmpOp::Eq => ord.is_eq(),
                CmpOp::Ne => ord.is_ne(),
                CmpOp::Lt => ord.is_lt(),
                CmpOp::Le => ord.is_le(),
                CmpOp::Gt => ord.is_gt(),
                CmpOp::Ge => ord.is_ge(),
            }
        }
    }
}

impl Reference {
    pub fn apply(&mut self, defs: &Definitions) {
        for s in &defs.streams {
            if !self.streams.iter().any(|x| x.name == s.name) {
                self.streams.push(s.clone());
            }
        }
        for f in &defs.features {
            if !self.features.iter().any(|x| x.name == f.name) {
                self.features.push(f.clone());
            }
        }
        self.seq += 1;
    }

    /// Mirror of an accepted append: events whose id was seen are skipped.
    pub fn append(&mut self, stream: &str, events: &[serde_json::Value]) -> (usize, usize) {
        let def = self
            .streams
            .iter()
            .find(|s| s.name == stream)
            .unwrap()
            .clone();
        let (mut accepted, mut duplicates) = (0, 0);
        for json in events {
            let obj = json.as_object().unwrap();
            if let Some(id_field) = &def.id
                && let Some(id) = obj.get(id_field).and_then(|v| v.as_str())
                && !self.ids.insert((stream.to_owned(), id.to_owned()))
            {
                duplicates += 1;
                continue;
            }
            let mut fields = BTreeMap::new();
            for (name, ty) in &def.fields {
                let v = match obj.get(name) {
                    None | Some(serde_json::Value::Null) => Value::Null,
                    Some(j) => match ty {
                        FieldType::Int => Value::Int(j.as_i64().unwrap()),
                        FieldType::Float => Value::Float(j.as_f64().unwrap()),
                        FieldType::String => Value::String(j.as_str().unwrap().to_owned()),
                        FieldType::Bool => Value::Bool(j.as_bool().unwrap()),
                    },
                };
                fields.insert(name.clone(), v);
            }
            self.seq += 1;
            self.events.push(RefEvent {
                stream: stream.to_owned(),
                entity: obj[&def.entity].as_str().unwrap().to_owned(),
                time: obj[&def.time].as_i64().unwrap(),
                seq: self.seq,
                fields,
            });
            accepted += 1;
        }
        (accepted, duplicates)
    }

    /// The feature's value for `entity` as of `t`, computed from scratch.
    pub fn value(&self, feature: &str, entity: &str, t: i64) -> Value {
        let f = self.features.iter().find(|x| x.name == feature).unwrap();
        let t = match f.freshness {
            Freshness::Realtime => t,
            Freshness::Batch { period_ms } => t.div_euclid(period_ms) * period_ms,
        };
        let lo = f.window_ms.map(|w| t - w);
        let filter = f.filter.as_ref().map(|text| filter::parse(text).unwrap());
        // (time, seq, value) of the events in the window that pass, with non-null field.
        let mut items: Vec<(i64, u64, Value)> = self
            .events
            .iter()
            .filter(|e| e.stream == f.stream && e.entity == entity)
            .filter(|e| e.time <= t && lo.is_none_or(|lo| e.time > lo))
            .filter(|e| filter.as_ref().is_none_or(|x| eval(x, &e.fields)))
            .filter_map(|e| match &f.field {
                None => Some((e.time, e.seq, Value::Bool(true))),
                Some(field) => {
                    let v = &e.fields[field];
                    (!v.is_null()).then(|| (e.time, e.seq, v.clone()))
                }
            })
            .collect();
        items.sort_by_key(|(time, seq, _)| (*time, *seq));
        let values: Vec<&Value> = items.iter().map(|(_, _, v)| v).collect();
        let floats = || values.iter().map(|v| as_f64(v)).collect::<Vec<f64>>();
        let n = values.len();
        match f.agg {
            AggKind::Count => Value::Int(n as i64),
            AggKind::Sum => match values.first() {
                Some(Value::Int(_)) | None if self.field_type(f) == Some(FieldType::Int) => {
                    let s: i128 = values
                        .iter()
                        .map(|v| match v {
                            Value::Int(i) => i128::from(*i),
                            _ => unreachable!(),
                        })
                        .sum();
                    Value::Int(s.clamp(i64::MIN.into(), i64::MAX.into()) as i64)
                }
                _ => Value::Float(fsum(&floats())),
            },
            AggKind::Min => values
                .iter()
                .min_by(|a, b| compare(a, b))
                .map_or(Value::Null, |v| (*v).clone()),
            AggKind::Max => values
                .iter()
                .max_by(|a, b| compare(a, b))
                .map_or(Value::Null, |v| (*v).clone()),
            AggKind::Avg => {
                if n == 0 {
                    Value::Null
                } else {
                    Value::Float(fsum(&floats()) / n as f64)
                }
            }
            AggKind::Variance | AggKind::Stddev => {
                if n == 0 {
                    return Value::Null;
                }
                let xs = floats();
                let mean = fsum(&xs) / n as f64;
                let dev: Vec<f64> = xs.iter().map(|x| (x - mean) * (x - mean)).collect();
                let var = fsum(&dev) / n as f64;
                Value::Float(if f.agg == AggKind::Stddev {
                    var.sqrt()
                } else {
                    var
                })
            }
            AggKind::First => items.first().map_or(Value::Null, |(_, _, v)| v.clone()),
            AggKind::Last => items.last().map_or(Value::Null, |(_, _, v)| v.clone()),
            AggKind::LastN => Value::List(
                items
                    .iter()
                    .rev()
                    .take(f.n.unwrap() as usize)
                    .map(|(_, _, v)| v.clone())
                    .collect(),
            ),
            AggKind::CountDistinct | AggKind::ApproxCountDistinct => {
                let distinct: HashSet<String> = values
                    .iter()
                    .map(|v| match v {
                        Value::Float(x) => format!("{:?}", x + 0.0),
                        other => format!("{other:?}"),
                    })
                    .collect();
                Value::Int(distinct.len() as i64)
            }
        }
    }

    fn field_type(&self, f: &FeatureDef) -> Option<FieldType> {
        let stream = self.streams.iter().find(|s| s.name == f.stream)?;
        f.field
            .as_ref()
            .and_then(|name| stream.fields.get(name))
            .copied()
    }
}

/// Whether the engine's value matches the reference's, under the tolerance the contract
/// allows for the aggregation (exact everywhere except where the reference itself takes
/// another numerical path).
pub fn matches(agg: AggKind, engine: &Value, reference: &Value) -> bool {
    match (agg, engine, reference) {
        (AggKind::Avg | AggKind::Variance | AggKind::Stddev, Value::Float(a), Value::Float(b)) => {
            let scale = a.abs().max(b.abs()).max(1e-300);
            (a - b).abs() <= 1e-9 * scale || (a - b).abs() < 1e-12
        }
        (AggKind::ApproxCountDistinct, Value::Int(a), Value::Int(b)) => {
            if *b <= fsdb::agg::hll::SPARSE_MAX as i64 {
                a == b
            } else {
                (a - b).abs() as f64 <= 0.02 * *b as f64
            }
        }
        _ => engine == reference,
    }
}
