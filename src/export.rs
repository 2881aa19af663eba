//! Writing training sets: the spine's columns (entity, time, the others passed through)
//! followed by one column per feature, as CSV, NDJSON or Parquet, in spine order, in
//! chunks of rows so that output streams.
//!
//! Parquet columns are typed by the aggregation's result type (docs/semantics.md): int →
//! Int64, float → Float64, string → Utf8, bool → Boolean, `last_n` → List; the time column
//! is a UTC millisecond timestamp.

use std::io::Write;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, ListBuilder, StringBuilder,
};
use arrow_array::{ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;

use crate::spine::{Passthrough, Spine, passthrough_arrays, passthrough_names};
use crate::training::TrainingSet;
use crate::value::{Value, ValueType};

/// Rows per written chunk (a Parquet row group, a CSV flush).
pub const CHUNK_ROWS: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("write: {0}")]
    Io(#[from] std::io::Error),
    #[error("csv: {0}")]
    Csv(#[from] csv::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("{0}")]
    Other(String),
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Csv,
    Ndjson,
    Parquet,
}

impl OutputFormat {
    pub fn of(path: &std::path::Path) -> Option<OutputFormat> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(OutputFormat::Csv),
            "ndjson" | "jsonl" => Some(OutputFormat::Ndjson),
            "parquet" => Some(OutputFormat::Parquet),
            _ => None,
        }
    }
}

/// A feature value as a CSV cell: empty for null, lists as JSON.
fn csv_cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Float(f) if f.is_finite() => format!("{f:?}"),
        other => other.to_json().to_string(),
    }
}

/// Passthrough values of row `row` as text.
fn passthrough_text(spine: &Spine, row: usize, rendered: &[Vec<Option<String>>]) -> Vec<String> {
    match &spine.passthrough {
        Passthrough::Text { columns, .. } => columns
            .iter()
            .map(|c| c[row].clone().unwrap_or_default())
            .collect(),
        Passthrough::Json { columns, .. } => columns
            .iter()
            .map(|c| match &c[row] {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Passthrough::Arrow { .. } => rendered
            .iter()
            .map(|c| c[row].clone().unwrap_or_default())
            .collect(),
    }
}

/// Arrow passthrough columns rendered as text (for CSV and NDJSON output).
fn render_arrow_passthrough(spine: &Spine) -> Result<Vec<Vec<Option<String>>>, ExportError> {
    if !matches!(spine.passthrough, Passthrough::Arrow { .. }) {
        return Ok(Vec::new());
    }
    let arrays = passthrough_arrays(spine).map_err(ExportError::Other)?;
    let options = arrow_cast::display::FormatOptions::default();
    arrays
        .iter()
        .map(|(_, array)| {
            let formatter = arrow_cast::display::ArrayFormatter::try_new(array.as_ref(), &options)?;
            Ok((0..array.len())
                .map(|i| {
                    (!arrow_array::Array::is_null(array.as_ref(), i))
                        .then(|| formatter.value(i).to_string())
                })
                .collect())
        })
        .collect()
}

pub fn write_csv(out: impl Write, spine: &Spine, set: &TrainingSet) -> Result<(), ExportError> {
    let mut csv = csv::Writer::from_writer(out);
    let mut header = vec![spine.entity_column.clone(), spine.time_column.clone()];
    header.extend(passthrough_names(spine));
    header.extend(set.names().iter().cloned());
    csv.write_record(&header)?;
    let rendered = render_arrow_passthrough(spine)?;
    for (row, (entity, _)) in spine.keys.iter().enumerate() {
        let mut record = vec![entity.clone(), spine.time_text[row].clone()];
        record.extend(passthrough_text(spine, row, &rendered));
        record.extend(set.row(row).iter().map(csv_cell));
        csv.write_record(&record)?;
        if row % CHUNK_ROWS == CHUNK_ROWS - 1 {
            csv.flush()?;
        }
    }
    csv.flush()?;
    Ok(())
}

pub fn write_ndjson(
    mut out: impl Write,
    spine: &Spine,
    set: &TrainingSet,
) -> Result<(), ExportError> {
    let names = passthrough_names(spine);
    let rendered = render_arrow_passthrough(spine)?;
    for (row, (entity, _)) in spine.keys.iter().enumerate() {
        let mut object = serde_json::Map::new();
        object.insert(spine.entity_column.clone(), entity.clone().into());
        object.insert(
            spine.time_column.clone(),
            spine.time_text[row].clone().into(),
        );
        match &spine.passthrough {
            Passthrough::Json { columns, .. } => {
                for (name, column) in names.iter().zip(columns) {
                    object.insert(name.clone(), column[row].clone());
                }
            }
            _ => {
                for (name, value) in names.iter().zip(passthrough_text(spine, row, &rendered)) {
                    object.insert(name.clone(), value.into());
                }
            }
        }
        for (name, value) in set.names().iter().zip(set.row(row)) {
            object.insert(name.clone(), value.to_json());
        }
        serde_json::to_writer(&mut out, &object).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn arrow_type(t: &ValueType) -> DataType {
    match t {
        ValueType::Int => DataType::Int64,
        ValueType::Float => DataType::Float64,
        ValueType::String => DataType::Utf8,
        ValueType::Bool => DataType::Boolean,
        ValueType::List(inner) => {
            DataType::List(Arc::new(Field::new("item", arrow_type(inner), true)))
        }
    }
}

/// One feature column for rows `from..to`.
fn feature_array(set: &TrainingSet, column: usize, from: usize, to: usize) -> ArrayRef {
    let values = (from..to).map(|row| set.value(row, column));
    match &set.types()[column] {
        ValueType::Int => Arc::new(
            values
                .map(|v| if let Value::Int(i) = v { Some(i) } else { None })
                .collect::<arrow_array::Int64Array>(),
        ),
        ValueType::Float => Arc::new(
            values
                .map(|v| {
                    if let Value::Float(f) = v {
                        Some(f)
                    } else {
                        None
                    }
                })
                .collect::<arrow_array::Float64Array>(),
        ),
        ValueType::Bool => Arc::new(
            values
                .map(|v| {
                    if let Value::Bool(b) = v {
                        Some(b)
                    } else {
                        None
                    }
                })
                .collect::<arrow_array::BooleanArray>(),
        ),
        ValueType::String => Arc::new(
            values
                .map(|v| {
                    if let Value::String(s) = v {
                        Some(s)
                    } else {
                        None
                    }
                })
                .collect::<StringArray>(),
        ),
        ValueType::List(inner) => {
            let mut builder: ListBuilder<Box<dyn arrow_array::builder::ArrayBuilder>> =
                ListBuilder::new(match **inner {
                    ValueType::Int => Box::new(Int64Builder::new()),
                    ValueType::Float => Box::new(Float64Builder::new()),
                    ValueType::Bool => Box::new(BooleanBuilder::new()),
                    _ => Box::new(StringBuilder::new()),
                });
            for value in values {
                if let Value::List(items) = value {
                    let inner_builder = builder.values();
                    for item in items {
                        push_item(inner_builder.as_mut(), &item);
                    }
                }
                builder.append(true);
            }
            Arc::new(builder.finish())
        }
    }
}

fn push_item(builder: &mut dyn arrow_array::builder::ArrayBuilder, item: &Value) {
    let any = builder.as_any_mut();
    match item {
        Value::Int(i) => any
            .downcast_mut::<Int64Builder>()
            .expect("int list")
            .append_value(*i),
        Value::Float(f) => any
            .downcast_mut::<Float64Builder>()
            .expect("float list")
            .append_value(*f),
        Value::Bool(b) => any
            .downcast_mut::<BooleanBuilder>()
            .expect("bool list")
            .append_value(*b),
        Value::String(s) => any
            .downcast_mut::<StringBuilder>()
            .expect("string list")
            .append_value(s),
        Value::Null | Value::List(_) => {}
    }
}

/// The Parquet schema of a training set.
pub fn parquet_schema(spine: &Spine, set: &TrainingSet) -> Result<Arc<Schema>, ExportError> {
    let mut fields = vec![
        Field::new(&spine.entity_column, DataType::Utf8, false),
        Field::new(
            &spine.time_column,
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
    ];
    for (name, array) in passthrough_arrays(spine).map_err(ExportError::Other)? {
        fields.push(Field::new(name, array.data_type().clone(), true));
    }
    for (name, t) in set.names().iter().zip(set.types()) {
        fields.push(Field::new(name, arrow_type(t), true));
    }
    Ok(Arc::new(Schema::new(fields)))
}

pub fn write_parquet(
    out: impl Write + Send,
    spine: &Spine,
    set: &TrainingSet,
) -> Result<(), ExportError> {
    let schema = parquet_schema(spine, set)?;
    let passthrough = passthrough_arrays(spine).map_err(ExportError::Other)?;
    let properties = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_size(CHUNK_ROWS)
        .build();
    let mut writer = ArrowWriter::try_new(out, Arc::clone(&schema), Some(properties))?;
    let rows = spine.keys.len();
    let mut from = 0;
    while from < rows || (rows == 0 && from == 0) {
        let to = (from + CHUNK_ROWS).min(rows);
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                spine.keys[from..to].iter().map(|(e, _)| e.as_str()),
            )),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(
                    spine.keys[from..to].iter().map(|(_, t)| *t),
                )
                .with_timezone("UTC"),
            ),
        ];
        columns.extend(
            passthrough
                .iter()
                .map(|(_, array)| array.slice(from, to - from)),
        );
        columns.extend((0..set.names().len()).map(|c| feature_array(set, c, from, to)));
        writer.write(&RecordBatch::try_new(Arc::clone(&schema), columns)?)?;
        if rows == 0 {
            break;
        }
        from = to;
    }
    writer.close()?;
    Ok(())
}
