//! The merge law for every aggregation: folding a sequence equals merging the folds of
//! any split of it, bit for bit, and (because every result is a function of the set of
//! (time, LSN, value) folded) equals folding any permutation of it.

use fsdb::FieldType;
use fsdb::agg::{Acc, AggKind, AggSpec, Item, Scalar, StrId, Strings};
use proptest::prelude::*;

/// Strings for the test: id i is "s{i}" with a deliberately non-monotonic order.
struct TestStrings(Vec<String>);

impl Strings for TestStrings {
    fn get(&self, id: StrId) -> &str {
        &self.0[id.0 as usize]
    }
    fn hash(&self, id: StrId) -> u64 {
        xxhash_rust::xxh3::xxh3_64(self.0[id.0 as usize].as_bytes())
    }
}

fn strings() -> TestStrings {
    TestStrings((0..20).map(|i| format!("s{}", (i * 7) % 20)).collect())
}

fn scalar(ty: FieldType) -> BoxedStrategy<Scalar> {
    match ty {
        // Around 4,096 too: where count_distinct's keys move from its bitmap to its hash set.
        FieldType::Int => prop_oneof![-5i64..5, 4090i64..4100, any::<i64>()]
            .prop_map(Scalar::Int)
            .boxed(),
        FieldType::Float => prop_oneof![
            (-1000i64..1000).prop_map(|c| c as f64 / 8.0),
            any::<f64>().prop_filter("finite", |f| f.is_finite()),
            Just(-0.0),
            Just(0.1),
        ]
        .prop_map(Scalar::Float)
        .boxed(),
        FieldType::String => (0u32..20).prop_map(|i| Scalar::Str(StrId(i))).boxed(),
        FieldType::Bool => any::<bool>().prop_map(Scalar::Bool).boxed(),
    }
}

fn spec_and_items() -> impl Strategy<Value = (AggSpec, Vec<Item>)> {
    let kinds = prop::sample::select(AggKind::ALL.to_vec());
    let types = prop::sample::select(vec![
        FieldType::Int,
        FieldType::Float,
        FieldType::String,
        FieldType::Bool,
    ]);
    (kinds, types, 1u32..6)
        .prop_filter("the aggregation accepts the type", |(k, t, _)| {
            k.accepts(*t)
        })
        .prop_flat_map(|(kind, ty, n)| {
            let item = (0i64..20, scalar(ty)).prop_map(|(time, value)| (time, value));
            let items = prop::collection::vec(item, 0..60).prop_map(|raw| {
                raw.into_iter()
                    .enumerate()
                    .map(|(lsn, (time, value))| Item {
                        time,
                        lsn: lsn as u64,
                        value,
                    })
                    .collect::<Vec<_>>()
            });
            (
                Just(AggSpec {
                    kind,
                    field_type: Some(ty),
                    n,
                }),
                items,
            )
        })
}

fn fold(spec: &AggSpec, items: &[Item], strings: &TestStrings) -> Acc {
    let mut acc = spec.init();
    for item in items {
        spec.update(&mut acc, *item, strings);
    }
    acc
}

fn same(a: &fsdb::Value, b: &fsdb::Value, kind: AggKind) -> bool {
    // count_distinct's counts and the Value equality are already exact; lists compare
    // element-wise with bitwise floats.
    let _ = kind;
    a == b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn merge_law_and_order_independence((spec, items) in spec_and_items(), cuts in prop::collection::vec(0usize..60, 0..4), seed: u64) {
        let strings = strings();
        let whole = spec.finish(&fold(&spec, &items, &strings), &strings);

        // Any split into consecutive parts, merged in order and in reverse.
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(items.len())).collect();
        cuts.sort_unstable();
        let mut parts = Vec::new();
        let mut from = 0;
        for cut in cuts.into_iter().chain([items.len()]) {
            parts.push(fold(&spec, &items[from..cut], &strings));
            from = cut;
        }
        let mut merged = spec.init();
        for part in &parts {
            spec.merge(&mut merged, part, &strings);
        }
        prop_assert!(same(&spec.finish(&merged, &strings), &whole, spec.kind), "{:?} split", spec.kind);
        let mut reversed = spec.init();
        for part in parts.iter().rev() {
            spec.merge(&mut reversed, part, &strings);
        }
        prop_assert!(same(&spec.finish(&reversed, &strings), &whole, spec.kind), "{:?} reverse merge", spec.kind);

        // Any permutation of the items.
        let mut shuffled = items.clone();
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let permuted = spec.finish(&fold(&spec, &shuffled, &strings), &strings);
        prop_assert!(same(&permuted, &whole, spec.kind), "{:?} permutation: {} vs {}", spec.kind, permuted, whole);

        // The empty window's value.
        let empty = spec.finish(&spec.init(), &strings);
        let expected_empty = match spec.kind {
            AggKind::Count | AggKind::CountDistinct | AggKind::ApproxCountDistinct => fsdb::Value::Int(0),
            AggKind::Sum if spec.field_type == Some(FieldType::Int) => fsdb::Value::Int(0),
            AggKind::Sum => fsdb::Value::Float(0.0),
            AggKind::LastN => fsdb::Value::List(vec![]),
            _ => fsdb::Value::Null,
        };
        prop_assert_eq!(empty, expected_empty);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, max_global_rejects: 100_000, ..ProptestConfig::default() })]

    /// Retracting items from an invertible aggregation leaves exactly (bit for bit) the fold
    /// of the items that remain: sliding windows may add and remove in any order.
    #[test]
    fn retract_law((spec, items) in spec_and_items(), mask: u64) {
        prop_assume!(spec.invertible());
        let strings = strings();
        let mut acc = spec.init_retractable();
        for item in &items {
            spec.update(&mut acc, *item, &strings);
        }
        let mut kept = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if mask >> (i % 64) & 1 == 1 {
                spec.retract(&mut acc, *item, &strings);
            } else {
                kept.push(*item);
            }
        }
        let expected = spec.finish(&fold(&spec, &kept, &strings), &strings);
        prop_assert_eq!(spec.finish(&acc, &strings), expected, "{:?}", spec.kind);
    }
}
