//! Spines: the rows of a training set (an entity column, a time column, and any other
//! columns, passed through), read from CSV, NDJSON or Parquet.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::time::{TimestampMs, check_range, parse_timestamp};

/// Columns other than entity and time, carried to the output unchanged.
#[derive(Debug, Clone)]
pub enum Passthrough {
    /// From CSV: each value as text (`None`: empty cell).
    Text {
        names: Vec<String>,
        columns: Vec<Vec<Option<String>>>,
    },
    /// From NDJSON or an HTTP request: each value as JSON (`Null` for missing).
    Json {
        names: Vec<String>,
        columns: Vec<Vec<serde_json::Value>>,
    },
    /// From Parquet: the original typed arrays, one batch per kept row range.
    Arrow { batches: Vec<RecordBatch> },
}

/// A spine: (entity, time) per row, in file order, and the other columns.
#[derive(Debug, Clone)]
pub struct Spine {
    pub entity_column: String,
    pub time_column: String,
    pub keys: Vec<(String, TimestampMs)>,
    /// The time column as it was given (text), for CSV output.
    pub time_text: Vec<String>,
    pub passthrough: Passthrough,
    /// Rows skipped as bad: (1-based row number, reason).
    pub skipped: Vec<(u64, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpineError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: String, message: String },
    #[error("{path}: row {row}: {message}")]
    BadRow {
        path: String,
        row: u64,
        message: String,
    },
}

/// What a spine file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpineFormat {
    Csv,
    Ndjson,
    Parquet,
}

impl SpineFormat {
    pub fn of(path: &Path) -> Option<SpineFormat> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(SpineFormat::Csv),
            "ndjson" | "jsonl" | "json" => Some(SpineFormat::Ndjson),
            "parquet" => Some(SpineFormat::Parquet),
            _ => None,
        }
    }
}

struct Builder<'a> {
    path: &'a str,
    skip_bad: bool,
    spine: Spine,
}

impl Builder<'_> {
    /// Add a row, or skip it (with `skip_bad`) or fail naming it.
    fn row(
        &mut self,
        row: u64,
        entity: Option<String>,
        time: Option<String>,
    ) -> Result<bool, SpineError> {
        let checked = (|| {
            let entity = entity
                .filter(|e| !e.is_empty())
                .ok_or_else(|| format!("missing entity ({:?})", self.spine.entity_column))?;
            let text = time
                .filter(|t| !t.is_empty())
                .ok_or_else(|| format!("missing time ({:?})", self.spine.time_column))?;
            let t = parse_timestamp(&text)
                .map_err(|e| format!("time {:?}: {e}", self.spine.time_column))?;
            Ok::<_, String>((entity, t, text))
        })();
        match checked {
            Ok((entity, t, text)) => {
                self.spine.keys.push((entity, t));
                self.spine.time_text.push(text);
                Ok(true)
            }
            Err(message) if self.skip_bad => {
                self.spine.skipped.push((row, message));
                Ok(false)
            }
            Err(message) => Err(SpineError::BadRow {
                path: self.path.to_owned(),
                row,
                message,
            }),
        }
    }
}

fn json_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Read a spine. Rows are numbered from 1 (for CSV, the first row after the header).
pub fn read_spine(
    path: &Path,
    entity_column: &str,
    time_column: &str,
    skip_bad: bool,
) -> Result<Spine, SpineError> {
    let name = path.display().to_string();
    let format = SpineFormat::of(path).ok_or_else(|| SpineError::Format {
        path: name.clone(),
        message: "unknown file type (use .csv, .ndjson, .jsonl, .json or .parquet)".into(),
    })?;
    let file = File::open(path).map_err(|source| SpineError::Io {
        path: name.clone(),
        source,
    })?;
    read_spine_from(
        &name,
        format,
        Box::new(file),
        entity_column,
        time_column,
        skip_bad,
    )
}

/// Read a spine of `format` from `reader` (`name` is used in errors).
pub fn read_spine_from(
    name: &str,
    format: SpineFormat,
    reader: Box<dyn Read + Send>,
    entity_column: &str,
    time_column: &str,
    skip_bad: bool,
) -> Result<Spine, SpineError> {
    let format_error = |message: String| SpineError::Format {
        path: name.to_owned(),
        message,
    };
    let mut b = Builder {
        path: name,
        skip_bad,
        spine: Spine {
            entity_column: entity_column.to_owned(),
            time_column: time_column.to_owned(),
            keys: Vec::new(),
            time_text: Vec::new(),
            passthrough: Passthrough::Text {
                names: Vec::new(),
                columns: Vec::new(),
            },
            skipped: Vec::new(),
        },
    };
    match format {
        SpineFormat::Csv => {
            let mut csv = csv::ReaderBuilder::new().from_reader(reader);
            let headers = csv
                .headers()
                .map_err(|e| format_error(e.to_string()))?
                .clone();
            let find = |column: &str| {
                headers.iter().position(|h| h == column).ok_or_else(|| {
                    format_error(format!(
                        "no column {column:?} (columns: {})",
                        headers.iter().collect::<Vec<_>>().join(", ")
                    ))
                })
            };
            let (entity_at, time_at) = (find(entity_column)?, find(time_column)?);
            let others: Vec<usize> = (0..headers.len())
                .filter(|&i| i != entity_at && i != time_at)
                .collect();
            let mut columns: Vec<Vec<Option<String>>> = vec![Vec::new(); others.len()];
            for (i, record) in csv.records().enumerate() {
                let row = i as u64 + 1;
                let record = record.map_err(|e| SpineError::BadRow {
                    path: name.to_owned(),
                    row,
                    message: e.to_string(),
                })?;
                let cell = |at: usize| record.get(at).map(str::to_owned);
                if b.row(row, cell(entity_at), cell(time_at))? {
                    for (column, &at) in columns.iter_mut().zip(&others) {
                        column.push(cell(at).filter(|c| !c.is_empty()));
                    }
                }
            }
            b.spine.passthrough = Passthrough::Text {
                names: others.iter().map(|&i| headers[i].to_owned()).collect(),
                columns,
            };
        }
        SpineFormat::Ndjson => {
            let mut names: Vec<String> = Vec::new();
            let mut columns: Vec<Vec<serde_json::Value>> = Vec::new();
            for (i, line) in BufReader::new(reader).lines().enumerate() {
                let row = i as u64 + 1;
                let line = line.map_err(|source| SpineError::Io {
                    path: name.to_owned(),
                    source,
                })?;
                if line.trim().is_empty() {
                    continue;
                }
                let bad = |message: String| SpineError::BadRow {
                    path: name.to_owned(),
                    row,
                    message,
                };
                let value: serde_json::Value =
                    serde_json::from_str(&line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
                let object = value
                    .as_object()
                    .ok_or_else(|| bad("expected a JSON object".into()))?;
                let kept = b.row(
                    row,
                    object.get(entity_column).and_then(json_text),
                    object.get(time_column).and_then(json_text),
                )?;
                if !kept {
                    continue;
                }
                // Columns appear as they are first seen; earlier rows lack them.
                for key in object.keys() {
                    if key != entity_column && key != time_column && !names.contains(key) {
                        names.push(key.clone());
                        columns.push(vec![serde_json::Value::Null; b.spine.keys.len() - 1]);
                    }
                }
                for (column, name) in columns.iter_mut().zip(&names) {
                    column.push(object.get(name).cloned().unwrap_or(serde_json::Value::Null));
                }
            }
            b.spine.passthrough = Passthrough::Json { names, columns };
        }
        SpineFormat::Parquet => {
            let mut bytes = Vec::new();
            let mut reader = reader;
            reader
                .read_to_end(&mut bytes)
                .map_err(|source| SpineError::Io {
                    path: name.to_owned(),
                    source,
                })?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
                .map_err(|e| format_error(e.to_string()))?;
            let batches = builder.build().map_err(|e| format_error(e.to_string()))?;
            let mut kept_batches = Vec::new();
            let mut row = 0u64;
            for batch in batches {
                let batch = batch.map_err(|e| format_error(e.to_string()))?;
                let schema = batch.schema();
                let column = |name: &str| {
                    schema
                        .index_of(name)
                        .map(|i| batch.column(i).clone())
                        .map_err(|_| format_error(format!("no column {name:?}")))
                };
                let entities = column(entity_column)?;
                let times = column(time_column)?;
                let mut keep = Vec::with_capacity(batch.num_rows());
                for i in 0..batch.num_rows() {
                    row += 1;
                    let entity = arrow_text(&entities, i).map_err(&format_error)?;
                    let time = arrow_time(&times, i).map_err(&format_error)?;
                    keep.push(b.row(row, entity, time)?);
                }
                let others: Vec<usize> = (0..schema.fields().len())
                    .filter(|&i| {
                        schema.field(i).name() != entity_column
                            && schema.field(i).name() != time_column
                    })
                    .collect();
                let projected = batch
                    .project(&others)
                    .map_err(|e| format_error(e.to_string()))?;
                let mask = arrow_array::BooleanArray::from(keep);
                kept_batches.push(arrow_select_filter(&projected, &mask).map_err(&format_error)?);
            }
            b.spine.passthrough = Passthrough::Arrow {
                batches: kept_batches,
            };
        }
    }
    Ok(b.spine)
}

fn arrow_select_filter(
    batch: &RecordBatch,
    mask: &arrow_array::BooleanArray,
) -> Result<RecordBatch, String> {
    if mask.true_count() == mask.len() {
        return Ok(batch.clone());
    }
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|column| {
            let keep: Vec<u32> = (0..mask.len())
                .filter(|&i| mask.value(i))
                .map(|i| i as u32)
                .collect();
            let indices = arrow_array::UInt32Array::from(keep);
            arrow_select::take::take(column.as_ref(), &indices, None).map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    RecordBatch::try_new(batch.schema(), columns).map_err(|e| e.to_string())
}

/// An entity cell as text: strings as they are, integers in decimal.
fn arrow_text(array: &ArrayRef, i: usize) -> Result<Option<String>, String> {
    use arrow_array::cast::AsArray;
    if array.is_null(i) {
        return Ok(None);
    }
    Ok(Some(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(i).to_owned(),
        DataType::LargeUtf8 => array.as_string::<i64>().value(i).to_owned(),
        DataType::Int64 => array
            .as_primitive::<arrow_array::types::Int64Type>()
            .value(i)
            .to_string(),
        DataType::Int32 => array
            .as_primitive::<arrow_array::types::Int32Type>()
            .value(i)
            .to_string(),
        other => return Err(format!("unsupported entity column type {other}")),
    }))
}

/// A time cell as text that `parse_timestamp` reads: epoch ms, or RFC 3339.
fn arrow_time(array: &ArrayRef, i: usize) -> Result<Option<String>, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    if array.is_null(i) {
        return Ok(None);
    }
    let ms = match array.data_type() {
        DataType::Utf8 => return Ok(Some(array.as_string::<i32>().value(i).to_owned())),
        DataType::LargeUtf8 => return Ok(Some(array.as_string::<i64>().value(i).to_owned())),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(i),
        DataType::Timestamp(unit, _) => crate::arrow_cell::timestamp_ms(array, *unit, i),
        other => return Err(format!("unsupported time column type {other}")),
    };
    Ok(Some(
        check_range(ms).map_err(|e| e.to_string())?.to_string(),
    ))
}

/// A JSON column as the narrowest Arrow type holding all its values: Int64, Float64,
/// Boolean, or else Utf8 (strings as they are, other values as JSON text).
fn json_array(column: &[serde_json::Value]) -> ArrayRef {
    use serde_json::Value as J;
    let present = || column.iter().filter(|v| !v.is_null());
    if present().all(|v| v.as_i64().is_some()) {
        Arc::new(
            column
                .iter()
                .map(J::as_i64)
                .collect::<arrow_array::Int64Array>(),
        )
    } else if present().all(J::is_number) {
        Arc::new(
            column
                .iter()
                .map(J::as_f64)
                .collect::<arrow_array::Float64Array>(),
        )
    } else if present().all(J::is_boolean) {
        Arc::new(
            column
                .iter()
                .map(J::as_bool)
                .collect::<arrow_array::BooleanArray>(),
        )
    } else {
        Arc::new(
            column
                .iter()
                .map(json_text)
                .collect::<arrow_array::StringArray>(),
        )
    }
}

/// The schema's fields of the passthrough columns, for output.
pub(crate) fn passthrough_names(spine: &Spine) -> Vec<String> {
    match &spine.passthrough {
        Passthrough::Text { names, .. } | Passthrough::Json { names, .. } => names.clone(),
        Passthrough::Arrow { batches } => batches
            .first()
            .map(|b| {
                b.schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Passthrough columns as one array each over all rows (for Parquet output).
pub(crate) fn passthrough_arrays(spine: &Spine) -> Result<Vec<(String, ArrayRef)>, String> {
    match &spine.passthrough {
        Passthrough::Text { names, columns } => Ok(names
            .iter()
            .zip(columns)
            .map(|(name, column)| {
                let array: ArrayRef = Arc::new(arrow_array::StringArray::from(column.clone()));
                (name.clone(), array)
            })
            .collect()),
        Passthrough::Json { names, columns } => Ok(names
            .iter()
            .zip(columns)
            .map(|(name, column)| (name.clone(), json_array(column)))
            .collect()),
        Passthrough::Arrow { batches } => {
            let Some(first) = batches.first() else {
                return Ok(Vec::new());
            };
            let schema = first.schema();
            let merged = arrow_select::concat::concat_batches(&schema, batches)
                .map_err(|e| e.to_string())?;
            Ok(schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .zip(merged.columns().iter().cloned())
                .collect())
        }
    }
}
