//! `fsdb ingest`: stream events from NDJSON, CSV or Parquet files into a stream, in atomic
//! batches, in bounded memory, with a progress bar. Parsing and appending overlap: a thread
//! of its own appends the batches in file order while the next one is parsed.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::{Scope, ScopedJoinHandle};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::arrow_cell::arrow_cell_json;
use crate::catalog::StreamDef;
use crate::event::{self, Event, event_from_fields, event_from_json};
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

/// Batches handed to the appender and not appended yet, at most (besides the one it
/// appends): parsing stays at most this far ahead, which bounds memory.
const BATCHES_QUEUED_MAX: usize = 1;

/// Events accepted and duplicates, of the batches appended so far.
type Appended = (usize, usize);

/// The thread that appends the parsed batches, in the order it receives them, until the
/// channel closes or an append fails.
struct Appender<'scope> {
    batches: Option<SyncSender<Vec<Event>>>,
    thread: Option<ScopedJoinHandle<'scope, anyhow::Result<Appended>>>,
}

impl<'scope> Appender<'scope> {
    fn spawn<'env>(scope: &'scope Scope<'scope, 'env>, db: &'env Db, stream: &'env str) -> Self {
        let (batches, received) = sync_channel(BATCHES_QUEUED_MAX);
        let thread = scope.spawn(move || append_in_order(db, stream, received));
        Appender {
            batches: Some(batches),
            thread: Some(thread),
        }
    }

    /// Hand a batch over; `Err` (the append's) if the appender stopped on a failed append.
    fn send(&mut self, batch: Vec<Event>) -> anyhow::Result<()> {
        let sent = self
            .batches
            .as_ref()
            .expect("batches are sent before the appender finishes")
            .send(batch);
        if sent.is_err() {
            // It only stops early on an error, which finishing returns.
            self.finish()?;
            unreachable!("an appender that stopped early returns an error");
        }
        Ok(())
    }

    /// Before an error is told: wait for what was handed over to be appended (or fail),
    /// unless that was waited for already.
    fn stop(&mut self) -> anyhow::Result<()> {
        if self.thread.is_some() {
            self.finish()?;
        }
        Ok(())
    }

    /// Wait for every batch handed over to be appended; what they added up to.
    fn finish(&mut self) -> anyhow::Result<Appended> {
        self.batches = None;
        let thread = self.thread.take().expect("an appender finishes once");
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

fn append_in_order(
    db: &Db,
    stream: &str,
    batches: Receiver<Vec<Event>>,
) -> anyhow::Result<Appended> {
    let (mut accepted, mut duplicates) = (0, 0);
    for batch in batches {
        let report = db.append(stream, &batch)?;
        accepted += report.accepted;
        duplicates += report.duplicates;
    }
    Ok((accepted, duplicates))
}

/// The event of a row given as a JSON object, or why the row is bad (the message without
/// the event's index in its batch: the caller names the line).
pub(crate) fn json_row_event(
    stream: &StreamDef,
    limits: &EventLimits,
    row: Result<serde_json::Value, String>,
) -> Result<Event, String> {
    row.and_then(|json| {
        event_from_json(0, stream, &json, limits).map_err(|e| strip_index(&e.to_string()))
    })
}

/// Collects validated events into batches and hands them to the appender.
struct Batcher<'a, 'scope> {
    def: &'a StreamDef,
    limits: EventLimits,
    skip_bad: bool,
    batch_events: usize,
    batch: Vec<Event>,
    appender: Appender<'scope>,
    report: IngestReport,
}

impl Batcher<'_, '_> {
    /// Take a row given as a JSON object (NDJSON, Parquet), or why it is not one.
    fn row(
        &mut self,
        file: &str,
        line: u64,
        row: Result<serde_json::Value, String>,
    ) -> anyhow::Result<()> {
        let event = json_row_event(self.def, &self.limits, row);
        self.event(file, line, event)
    }

    /// Take a row's event, or why the row is bad.
    fn event(&mut self, file: &str, line: u64, event: Result<Event, String>) -> anyhow::Result<()> {
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
            Err(error) => {
                let (accepted, _) = self.appender.finish()?;
                bail!(
                    "{file}:{line}: {error} (stopped here; {accepted} events before this batch were ingested, none of this batch)",
                )
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.appender.send(std::mem::take(&mut self.batch))
    }

    /// Append what is left and wait for every append; the report.
    fn finish(mut self) -> anyhow::Result<IngestReport> {
        self.flush()?;
        let (accepted, duplicates) = self.appender.finish()?;
        self.report.accepted = accepted;
        self.report.duplicates = duplicates;
        Ok(self.report)
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

/// The event of one NDJSON line, as [`json_row_event`] gives it for the line read as a
/// `serde_json::Value`: read without building that object
/// ([`event::json::event_from_object_text`]), or, if that refuses the line, the general
/// way, so that every error is that path's.
pub(crate) fn ndjson_line_event(
    stream: &StreamDef,
    limits: &EventLimits,
    line: &str,
) -> Result<Event, String> {
    event::json::event_from_object_text(stream, limits, line).map_or_else(
        || {
            let row = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"));
            json_row_event(stream, limits, row)
        },
        Ok,
    )
}

/// One event per line; positions in reports are line numbers.
fn ingest_ndjson(batcher: &mut Batcher<'_, '_>, path: &Path, name: &str) -> anyhow::Result<()> {
    let (reader, bar) = open_text(path, name)?;
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {name}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let event = ndjson_line_event(batcher.def, &batcher.limits, &line);
        batcher.event(name, i as u64 + 1, event)?;
    }
    bar.finish_and_clear();
    Ok(())
}

/// The events of a CSV file: a header row naming the fields, then one event per record,
/// each as its line number (the header being 1) and the JSON object `event_from_json`
/// takes, its cells typed by the stream's schema (`csv_cell`), or why the record is bad.
/// The definition of reading CSV: `fsdb ingest` reads with [`csv_event_rows`], which the
/// CSV fuzz target (`testing::check_csv`) holds to this.
pub(crate) fn csv_events<'a>(
    reader: impl Read + 'a,
    stream: &'a StreamDef,
) -> csv::Result<impl Iterator<Item = (u64, Result<serde_json::Value, String>)> + 'a> {
    let (headers, records) = csv_records(reader)?;
    let mut cells = Vec::with_capacity(headers.len());
    Ok(records.map(move |(line, record)| {
        let row = record.and_then(|record| {
            typed_cells(stream, &headers, &record, &mut cells)?;
            let object = headers.iter().map(str::to_owned).zip(cells.drain(..));
            Ok(serde_json::Value::Object(object.collect()))
        });
        (line, row)
    }))
}

/// A CSV file's header, and its records with their line numbers (the header being 1), or
/// why a record is not one; every record has as many cells as the header.
#[allow(
    clippy::type_complexity,
    reason = "the header and the records, named at the callers"
)]
fn csv_records<R: Read>(
    reader: R,
) -> csv::Result<(
    csv::StringRecord,
    impl Iterator<Item = (u64, Result<csv::StringRecord, String>)>,
)> {
    let mut csv = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(reader);
    let headers = csv.headers()?.clone();
    let records = csv.into_records().enumerate().map(|(i, record)| {
        (
            i as u64 + 2,
            record.map_err(|e| format!("invalid CSV: {e}")),
        )
    });
    Ok((headers, records))
}

/// A record's cells typed by `csv_cell`, in column order, into `cells` (emptied first); the
/// first bad cell's error.
fn typed_cells(
    stream: &StreamDef,
    headers: &csv::StringRecord,
    record: &csv::StringRecord,
    cells: &mut Vec<serde_json::Value>,
) -> Result<(), String> {
    cells.clear();
    for (column, cell) in headers.iter().zip(record.iter()) {
        cells.push(csv_cell(stream, column, cell)?);
    }
    Ok(())
}

/// The events of a CSV file as [`csv_events`] and then `event_from_json` would give them,
/// without a JSON object per record: each cell is typed by `csv_cell` in column order (the
/// first bad cell is the row's error, as there), then the event is taken from the cells by
/// their columns' names (the last column of a repeated name, as an object keeps the last).
pub(crate) fn csv_event_rows<'a>(
    reader: impl Read + 'a,
    stream: &'a StreamDef,
    limits: EventLimits,
) -> csv::Result<impl Iterator<Item = (u64, Result<Event, String>)> + 'a> {
    let (headers, records) = csv_records(reader)?;
    let columns: rustc_hash::FxHashMap<String, usize> = (headers.iter().enumerate())
        .map(|(i, name)| (name.to_owned(), i))
        .collect();
    let mut cells: Vec<serde_json::Value> = Vec::with_capacity(headers.len());
    Ok(records.map(move |(line, record)| {
        let event = record.and_then(|record| {
            typed_cells(stream, &headers, &record, &mut cells)?;
            let get = |name: &str| columns.get(name).map(|&i| &cells[i]);
            event_from_fields(0, stream, get, &limits).map_err(|e| strip_index(&e.to_string()))
        });
        (line, event)
    }))
}

fn ingest_csv(batcher: &mut Batcher<'_, '_>, path: &Path, name: &str) -> anyhow::Result<()> {
    let (reader, bar) = open_text(path, name)?;
    let events = csv_event_rows(reader, batcher.def, batcher.limits.clone())
        .with_context(|| format!("{name}: reading the header"))?;
    for (line, event) in events {
        batcher.event(name, line, event)?;
    }
    bar.finish_and_clear();
    Ok(())
}

/// Rows of a Parquet file, one record batch at a time (memory: one batch, not the file).
/// Positions in reports are row numbers, counted from 1.
fn ingest_parquet(batcher: &mut Batcher<'_, '_>, path: &Path, name: &str) -> anyhow::Result<()> {
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
    std::thread::scope(|scope| {
        let mut batcher = Batcher {
            def: &def,
            limits: EventLimits::default(),
            skip_bad,
            batch_events: batch_events.clamp(1, EventLimits::default().batch_events_max),
            batch: Vec::new(),
            appender: Appender::spawn(scope, db, stream),
            report: IngestReport::default(),
        };
        for path in files {
            let name = path.display().to_string();
            let read = match format_of(path) {
                Ok(Format::Ndjson) => ingest_ndjson(&mut batcher, path, &name),
                Ok(Format::Csv) => ingest_csv(&mut batcher, path, &name),
                Ok(Format::Parquet) => ingest_parquet(&mut batcher, path, &name),
                Err(e) => Err(e),
            };
            if let Err(e) = read {
                batcher.appender.stop()?;
                return Err(e);
            }
        }
        batcher.finish()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fsdb_storage::io::Vfs;
    use fsdb_storage::io::sim::{Fault, FaultKind, OpKind, SimVfs};

    use super::*;
    use crate::Options;

    /// An NDJSON file of `n` transactions (ids t0, t1, ...); the one at `bad` (0-based), if
    /// any, has an amount that is not a number.
    fn transactions(dir: &Path, n: usize, bad: Option<usize>) -> PathBuf {
        let lines: Vec<String> = (0..n)
            .map(|i| {
                let amount = if Some(i) == bad {
                    serde_json::json!("lots")
                } else {
                    serde_json::json!(i as f64)
                };
                serde_json::json!({"txn_id": format!("t{i}"), "card_id": "c1", "ts": 1000 + i, "amount": amount})
                    .to_string()
            })
            .collect();
        let path = dir.join("transactions.ndjson");
        std::fs::write(&path, lines.join("\n")).unwrap();
        path
    }

    fn open(dir: &Path, log_vfs: Arc<dyn Vfs>) -> Db {
        let options = Options {
            log_vfs,
            ..Options::default()
        };
        let db = Db::open(dir.join("data"), options).unwrap();
        db.apply(crate::workload::DEFINITIONS).unwrap();
        db
    }

    /// A bad row stops the ingest after every earlier batch is appended, and the message
    /// counts them exactly (they are appended on another thread).
    #[test]
    fn a_bad_row_reports_every_earlier_batch_as_ingested() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), Arc::new(fsdb_storage::io::OsVfs));
        let file = transactions(dir.path(), 11, Some(9));
        let error = ingest(&db, "transactions", &[file], false, 2).unwrap_err();
        assert!(
            error
                .to_string()
                .contains(":10: field \"amount\": expected float, found a string (stopped here; 8 events before this batch were ingested, none of this batch)"),
            "{error:#}"
        );
        assert_eq!(db.stats().unwrap().events, 8);
    }

    /// An append that fails (here the log's second fsync) stops the ingest with its error,
    /// however far the parsing got meanwhile.
    #[test]
    fn a_failed_append_stops_the_ingest_with_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = SimVfs::new();
        let db = open(dir.path(), Arc::new(vfs.clone()));
        vfs.inject(Fault {
            op: OpKind::SyncData,
            nth: 2,
            persistent: false,
            kind: FaultKind::Eio,
        });
        let file = transactions(dir.path(), 200, None);
        let error = ingest(&db, "transactions", &[file], false, 2).unwrap_err();
        assert!(format!("{error:#}").contains("fsync"), "{error:#}");
    }
}
