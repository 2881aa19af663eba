//! `fsdb ingest`: stream events from NDJSON or CSV files into a stream, in atomic batches,
//! in bounded memory, with a progress bar.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

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
        Some("parquet") => bail!(
            "{}: Parquet input is not supported yet; convert it to NDJSON or CSV",
            path.display()
        ),
        _ => bail!(
            "{}: unknown file type (use .ndjson, .jsonl, .json or .csv, or - for NDJSON on stdin)",
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
        let format = format_of(path)?;
        let name = path.display().to_string();
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
        bar.set_message(name.clone());
        let reader = BufReader::with_capacity(
            1 << 20,
            Counting {
                inner: reader,
                bar: bar.clone(),
            },
        );
        match format {
            Format::Ndjson => {
                for (i, line) in reader.lines().enumerate() {
                    let line = line.with_context(|| format!("reading {name}"))?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let row = serde_json::from_str(&line).map_err(|e| format!("invalid JSON: {e}"));
                    batcher.row(&name, i as u64 + 1, row)?;
                }
            }
            Format::Csv => {
                let mut csv = csv::ReaderBuilder::new()
                    .flexible(false)
                    .from_reader(reader);
                let headers = csv
                    .headers()
                    .with_context(|| format!("{name}: reading the header"))?
                    .clone();
                for (i, record) in csv.records().enumerate() {
                    // Line numbers count the header as line 1.
                    let line = i as u64 + 2;
                    let row = record
                        .map_err(|e| format!("invalid CSV: {e}"))
                        .and_then(|record| {
                            let mut object = serde_json::Map::new();
                            for (column, cell) in headers.iter().zip(record.iter()) {
                                object.insert(column.to_owned(), csv_cell(&def, column, cell)?);
                            }
                            Ok(serde_json::Value::Object(object))
                        });
                    batcher.row(&name, line, row)?;
                }
            }
        }
        bar.finish_and_clear();
    }
    batcher.flush()?;
    Ok(batcher.report)
}
