//! `fsdb ingest`: stream events from NDJSON, CSV or Parquet files into a stream, in atomic
//! batches, in bounded memory, with a progress bar.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::arrow_cell::arrow_cell_json;
use crate::catalog::StreamDef;
use crate::event::{Event, event_from_json};
use crate::value::FieldType;
use crate::{Db, EventLimits};

/// What an ingest did.
#[derive(Debug, Default, Serialize)]
pub(crate) struct IngestReport {
    pub(crate) accepted: usize,
    pub(crate) duplicates: usize,
    /// Bad rows that were skipped (with `--skip-bad`).
    pub(crate) rejected: Vec<Rejected>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Rejected {
    pub(crate) file: String,
    pub(crate) line: u64,
    pub(crate) error: String,
}

/// Counts the bytes read through it, for the progress bar.
struct Counting<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

enum Format {
    Ndjson,
    Csv,
    Parquet,
}

fn format_of(path: &Path) -> anyhow::Result<Format> {
    if path == Path::new("-") {
        return Ok(Format::Ndjson);
    }
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("ndjson" | "jsonl" | "json") => Ok(Format::Ndjson),
        Some("csv") => Ok(Format::Csv),
        Some("parquet") => Ok(Format::Parquet),
        _ => bail!(
            "{}: unknown file type (use .ndjson, .jsonl, .json, .csv or .parquet, or - for NDJSON on stdin)",
            path.display()
        ),
    }
}

/// A CSV cell as the JSON value the stream's schema expects.
fn csv_cell(stream: &StreamDef, column: &str, cell: &str) -> Result<serde_json::Value, String> {
    if cell.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    if column == stream.time {
        return Ok(cell.parse::<i64>().map_or_else(|_| cell.into(), Into::into));
    }
    let Some(ty) = stream.fields.get(column) else {
        // The entity, the id, and columns the stream does not declare: as text.
        return Ok(cell.into());
    };
    let bad = |what: &str| format!("field {column:?}: {cell:?} is not {what}");
    Ok(match ty {
        FieldType::String => cell.into(),
        FieldType::Int => cell.parse::<i64>().map_err(|_| bad("an int"))?.into(),
        FieldType::Float => {
            let f = cell.parse::<f64>().map_err(|_| bad("a float"))?;
            if !f.is_finite() {
                return Err(format!(
                    "field {column:?}: NaN and infinity are not accepted"
                ));
            }
            serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into)
        }
        FieldType::Bool => match cell {
            "true" | "TRUE" | "True" | "1" => true.into(),
            "false" | "FALSE" | "False" | "0" => false.into(),
            _ => return Err(bad("a bool")),
        },
    })
}

/// Collects validated events into batches and appends them.
struct Batcher<'a> {
    db: &'a Db,
    stream: &'a str,
    def: &'a StreamDef,
    limits: EventLimits,
    skip_bad: bool,
    batch_events: usize,
    batch: Vec<Event>,
    report: IngestReport,
}

impl Batcher<'_> {
    fn row(
        &mut self,
        file: &str,
        line: u64,
        row: Result<serde_json::Value, String>,
    ) -> anyhow::Result<()> {
        let event = row.and_then(|json| {
            event_from_json(0, self.def, &json, &self.limits)
                .map_err(|e| strip_index(&e.to_string()))
        });
        match event {
            Ok(event) => {
                self.batch.push(event);
                if self.batch.len() >= self.batch_events {
                    self.flush()?;
                }
            }
            Err(error) if self.skip_bad => self.report.rejected.push(Rejected {
                file: file.to_owned(),
                line,
                error,
            }),
            Err(error) => bail!(
                "{file}:{line}: {error} (stopped here; {} events before this batch were ingested, none of this batch)",
                self.report.accepted
            ),
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let result = self.db.append(self.stream, &self.batch)?;
        self.report.accepted += result.accepted;
        self.report.duplicates += result.duplicates;
        self.batch.clear();
        Ok(())
    }
}

/// Text input, buffered, counting its bytes for the progress bar.
type TextReader = BufReader<Counting<Box<dyn Read>>>;

/// A file (or `-`: stdin) read through a 1 MiB buffer, with a progress bar of its bytes.
fn open_text(path: &Path, name: &str) -> anyhow::Result<(TextReader, ProgressBar)> {
    let (reader, bar): (Box<dyn Read>, ProgressBar) = if path == Path::new("-") {
        (
            Box::new(std::io::stdin().lock()),
            ProgressBar::new_spinner(),
        )
    } else {
        let file = File::open(path).with_context(|| format!("opening {name}"))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        (Box::new(file), ProgressBar::new(size))
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(name.to_owned());
    let reader = BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: reader,
            bar: bar.clone(),
        },
    );
    Ok((reader, bar))
}

/// One event per line; positions in reports are line numbers.
fn ingest_ndjson(batcher: &mut Batcher<'_>, path: &Path, name: &str) -> anyhow::Result<()> {
    let (reader, bar) = open_text(path, name)?;
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {name}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(&line).map_err(|e| format!("invalid JSON: {e}"));
        batcher.row(name, i as u64 + 1, row)?;
    }
    bar.finish_and_clear();
    Ok(())
}

/// The events of a CSV file: a header row naming the fields, then one event per record,
/// each as its line number (the header being 1) and the JSON object `event_from_json`
/// takes, its cells typed by the stream's schema (`csv_cell`), or why the record is bad.
pub(crate) fn csv_events<'a>(
    reader: impl Read + 'a,
    stream: &'a StreamDef,
) -> csv::Result<impl Iterator<Item = (u64, Result<serde_json::Value, String>)> + 'a> {
    let mut csv = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(reader);
    let headers = csv.headers()?.clone();
    Ok(csv.into_records().enumerate().map(move |(i, record)| {
        let row = record
            .map_err(|e| format!("invalid CSV: {e}"))
            .and_then(|record| {
                let mut object = serde_json::Map::new();
                for (column, cell) in headers.iter().zip(record.iter()) {
                    object.insert(column.to_owned(), csv_cell(stream, column, cell)?);
                }
                Ok(serde_json::Value::Object(object))
            });
        (i as u64 + 2, row)
    }))
}

fn ingest_csv(batcher: &mut Batcher<'_>, path: &Path, name: &str) -> anyhow::Result<()> {
    let (reader, bar) = open_text(path, name)?;
    let events =
        csv_events(reader, batcher.def).with_context(|| format!("{name}: reading the header"))?;
    for (line, row) in events {
        batcher.row(name, line, row)?;
    }
    bar.finish_and_clear();
    Ok(())
}

/// Rows of a Parquet file, one record batch at a time (memory: one batch, not the file).
/// Positions in reports are row numbers, counted from 1.
fn ingest_parquet(batcher: &mut Batcher<'_>, path: &Path, name: &str) -> anyhow::Result<()> {
    const ROWS_PER_BATCH: usize = 8192;
    let file = File::open(path).with_context(|| format!("opening {name}"))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{name}: not a readable Parquet file"))?;
    let bar = ProgressBar::new(builder.metadata().file_metadata().num_rows().max(0) as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} rows ({per_sec}, {eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(name.to_owned());
    let reader = builder
        .with_batch_size(ROWS_PER_BATCH)
        .build()
        .with_context(|| format!("{name}: reading"))?;
    let mut row_number = 0u64;
    for batch in reader {
        let batch = batch.with_context(|| format!("{name}: reading after row {row_number}"))?;
        let schema = batch.schema();
        for i in 0..batch.num_rows() {
            row_number += 1;
            let mut object = serde_json::Map::with_capacity(batch.num_columns());
            let row = schema
                .fields()
                .iter()
                .zip(batch.columns())
                .try_for_each(|(field, column)| {
                    let value = arrow_cell_json(column, i)
                        .map_err(|e| format!("field {:?}: {e}", field.name()))?;
                    object.insert(field.name().clone(), value);
                    Ok(())
                })
                .map(|()| serde_json::Value::Object(object));
            batcher.row(name, row_number, row)?;
        }
        bar.inc(batch.num_rows() as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

/// "event 0, field "x": reason" -> "field "x": reason" (the line number replaces the index).
fn strip_index(message: &str) -> String {
    message
        .strip_prefix("event 0")
        .map_or(message, |rest| rest.trim_start_matches([',', ':', ' ']))
        .to_owned()
}

pub(crate) fn ingest(
    db: &Db,
    stream: &str,
    files: &[PathBuf],
    skip_bad: bool,
    batch_events: usize,
) -> anyhow::Result<IngestReport> {
    let def = db.stream_def(stream)?;
    let mut batcher = Batcher {
        db,
        stream,
        def: &def,
        limits: EventLimits::default(),
        skip_bad,
        batch_events: batch_events.clamp(1, EventLimits::default().batch_events_max),
        batch: Vec::new(),
        report: IngestReport::default(),
    };
    for path in files {
        let name = path.display().to_string();
        match format_of(path)? {
            Format::Ndjson => ingest_ndjson(&mut batcher, path, &name)?,
            Format::Csv => ingest_csv(&mut batcher, path, &name)?,
            Format::Parquet => ingest_parquet(&mut batcher, path, &name)?,
        }
    }
    batcher.flush()?;
    Ok(batcher.report)
}
