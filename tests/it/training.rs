//! Training-set files: Parquet read back with its schema checked, CSV round trip, typed
//! passthrough from a Parquet spine, bad spine rows; every value equal to `as_of`.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMillisecondType};
use arrow_array::{Array, Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use fsdb::export::{write_csv, write_parquet};
use fsdb::spine::{SpineFormat, read_spine, read_spine_from};
use fsdb::time::ManualClock;
use fsdb::{Db, Options, Value};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::json;

const DEFS: &str = r#"
[[stream]]
name = "tx"
entity = "card"
time = "ts"
[stream.fields]
amount = "float"
city = "string"

[[feature]]
name = "n_1h"
stream = "tx"
agg = "count"
window = "1h"
[[feature]]
name = "sum_1d"
stream = "tx"
agg = "sum"
field = "amount"
window = "1d"
[[feature]]
name = "last_city"
stream = "tx"
agg = "last"
field = "city"
[[feature]]
name = "last_2"
stream = "tx"
agg = "last_n"
field = "amount"
n = 2
"#;

const FEATURES: [&str; 4] = ["n_1h", "sum_1d", "last_city", "last_2"];

fn database(dir: &std::path::Path) -> Db {
    let db = Db::open(
        dir,
        Options {
            clock: Arc::new(ManualClock::new(0)),
            ..Options::default()
        },
    )
    .unwrap();
    db.apply(DEFS).unwrap();
    let events: Vec<_> = (0..200)
        .map(|i| json!({"card": format!("c{}", i % 3), "ts": 1_000_000 + i * 60_000, "amount": i as f64 / 4.0, "city": if i % 2 == 0 { "Lyon" } else { "Oslo" }}))
        .collect();
    db.append_json("tx", &events).unwrap();
    db
}

/// Read a Parquet file back as one batch.
fn read_parquet(path: &std::path::Path) -> RecordBatch {
    let file = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap()
}

#[test]
fn parquet_output_is_typed_and_equals_as_of() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(&dir.path().join("db"));
    let spine_path = dir.path().join("spine.csv");
    std::fs::write(&spine_path, "label,entity,ts,note\n1,c0,1000000,a\n0,c1,7000000,\n1,nobody,7000000,c\n0,c0,2026-01-01T00:00:00Z,d\n1,c0,1000000,a\n").unwrap();
    let spine = read_spine(&spine_path, "entity", "ts", false).unwrap();
    let set = db.training_set(&spine.keys, &FEATURES).unwrap();
    let out = dir.path().join("out.parquet");
    write_parquet(std::fs::File::create(&out).unwrap(), &spine, &set).unwrap();

    let batch = read_parquet(&out);
    let schema = batch.schema();
    let types: Vec<(String, DataType)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    assert_eq!(
        types,
        vec![
            ("entity".to_owned(), DataType::Utf8),
            (
                "ts".to_owned(),
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
            ),
            ("label".to_owned(), DataType::Utf8),
            ("note".to_owned(), DataType::Utf8),
            ("n_1h".to_owned(), DataType::Int64),
            ("sum_1d".to_owned(), DataType::Float64),
            ("last_city".to_owned(), DataType::Utf8),
            (
                "last_2".to_owned(),
                DataType::List(Arc::new(Field::new("item", DataType::Float64, true)))
            ),
        ]
    );
    assert_eq!(batch.num_rows(), 5);
    let times = batch.column(1).as_primitive::<TimestampMillisecondType>();
    let counts = batch.column(4).as_primitive::<Int64Type>();
    let sums = batch.column(5).as_primitive::<Float64Type>();
    let cities = batch.column(6).as_string::<i32>();
    let lists = batch.column(7).as_list::<i32>();
    for row in 0..5 {
        let (entity, t) = &spine.keys[row];
        assert_eq!(times.value(row), *t);
        let expected = db.as_of(entity, &FEATURES, *t).unwrap().values;
        assert_eq!(Value::Int(counts.value(row)), expected[0], "row {row}");
        assert_eq!(Value::Float(sums.value(row)), expected[1], "row {row}");
        match &expected[2] {
            Value::Null => assert!(cities.is_null(row)),
            Value::String(s) => assert_eq!(cities.value(row), s),
            other => panic!("{other}"),
        }
        let list: Vec<Value> = lists
            .value(row)
            .as_primitive::<Float64Type>()
            .values()
            .iter()
            .map(|v| Value::Float(*v))
            .collect();
        assert_eq!(Value::List(list), expected[3], "row {row}");
    }
    // The passthrough column keeps its nulls.
    assert!(batch.column(3).is_null(1));
}

#[test]
fn csv_round_trip_and_ndjson_spine() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(&dir.path().join("db"));
    let spine_json = "{\"entity\": \"c1\", \"ts\": 5000000, \"id\": 7}\n{\"entity\": \"c2\", \"ts\": \"1970-01-01T02:00:00Z\", \"extra\": true}\n";
    let spine = read_spine_from(
        "spine.ndjson",
        SpineFormat::Ndjson,
        Box::new(spine_json.as_bytes()),
        "entity",
        "ts",
        false,
    )
    .unwrap();
    let set = db.training_set(&spine.keys, &FEATURES).unwrap();
    let mut out = Vec::new();
    write_csv(&mut out, &spine, &set).unwrap();
    let mut reader = csv::Reader::from_reader(out.as_slice());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        [
            "entity",
            "ts",
            "id",
            "extra",
            "n_1h",
            "sum_1d",
            "last_city",
            "last_2"
        ]
    );
    for (row, record) in reader.records().enumerate() {
        let record = record.unwrap();
        let (entity, t) = &spine.keys[row];
        let expected = db.as_of(entity, &FEATURES, *t).unwrap().values;
        assert_eq!(&record[0], entity);
        assert_eq!(
            record[4].parse::<i64>().unwrap(),
            match expected[0] {
                Value::Int(n) => n,
                _ => unreachable!(),
            }
        );
        assert_eq!(
            Value::Float(record[5].parse().unwrap()),
            expected[1],
            "floats survive CSV exactly"
        );
        assert_eq!(record[7].to_owned(), expected[3].to_json().to_string());
    }
    assert_eq!(set.len(), 2);
}

#[test]
fn parquet_spine_keeps_typed_passthrough() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(&dir.path().join("db"));
    let schema = Arc::new(Schema::new(vec![
        Field::new("customer", DataType::Utf8, false),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("label", DataType::Int32, true),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from(vec!["c0", "c1"])),
            Arc::new(arrow_array::TimestampMillisecondArray::from(vec![
                4_000_000, 9_000_000,
            ])),
            Arc::new(Int32Array::from(vec![Some(1), None])),
        ],
    )
    .unwrap();
    let spine_path = dir.path().join("spine.parquet");
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&spine_path).unwrap(),
        schema,
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let spine = read_spine(&spine_path, "customer", "at", false).unwrap();
    assert_eq!(
        spine.keys,
        vec![("c0".to_owned(), 4_000_000), ("c1".to_owned(), 9_000_000)]
    );
    let set = db.training_set(&spine.keys, &FEATURES).unwrap();
    let out = dir.path().join("out.parquet");
    write_parquet(std::fs::File::create(&out).unwrap(), &spine, &set).unwrap();
    let batch = read_parquet(&out);
    assert_eq!(
        batch.schema().field(2).data_type(),
        &DataType::Int32,
        "passthrough keeps its type"
    );
    assert_eq!(
        batch
            .column(2)
            .as_primitive::<arrow_array::types::Int32Type>()
            .value(0),
        1
    );
    assert!(batch.column(2).is_null(1));
}

#[test]
fn bad_spine_rows_are_named_or_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spine.csv");
    std::fs::write(&path, "entity,ts\nc0,1000\n,2000\nc1,yesterday\nc2,3000\n").unwrap();
    let err = read_spine(&path, "entity", "ts", false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("row 2: missing entity"), "{err}");
    let spine = read_spine(&path, "entity", "ts", true).unwrap();
    assert_eq!(spine.keys.len(), 2);
    assert_eq!(
        spine
            .skipped
            .iter()
            .map(|(row, _)| *row)
            .collect::<Vec<_>>(),
        [2, 3]
    );
    assert!(
        spine.skipped[1].1.contains("time \"ts\""),
        "{:?}",
        spine.skipped
    );
    let err = read_spine(&path, "customer", "ts", false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no column \"customer\""), "{err}");
}

/// A training set does not leave the entities it loaded in memory (it visits each once;
/// keeping them would hold the whole state), while entities that were resident stay, and
/// the values are the same either way.
#[test]
fn training_sets_release_what_they_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let spine: Vec<(String, i64)> = (0..60)
        .map(|i| (format!("c{}", i % 3), 1_000_000 + i * 200_000))
        .collect();
    let expected = {
        let db = database(dir.path());
        let set = db.training_set(&spine, &FEATURES).unwrap();
        db.close().unwrap();
        set
    };
    let db = Db::open(
        dir.path(),
        Options {
            clock: Arc::new(ManualClock::new(0)),
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(db.cache_stats().entities_in_memory, 0);
    db.as_of("c1", &["n_1h"], 5_000_000).unwrap();
    assert_eq!(db.cache_stats().entities_in_memory, 1);
    let set = db.training_set(&spine, &FEATURES).unwrap();
    assert_eq!(
        db.cache_stats().entities_in_memory,
        1,
        "c0 and c2 were loaded for the sweep and released; c1 was resident and stays"
    );
    for row in 0..spine.len() {
        assert_eq!(set.row(row), expected.row(row), "row {row}");
    }
}
