//! `fsdb training-set` and `fsdb generate`.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

macro_rules! say {
    ($($arg:tt)*) => { super::say(format!($($arg)*)) };
}

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

use crate::Db;
use crate::export::{OutputFormat, write_csv, write_ndjson, write_parquet};
use crate::spine::read_spine;
use crate::workload::{self, Stream, WorkloadSpec};

pub(crate) fn run(
    db: &Db,
    spine_path: &Path,
    out: &Path,
    features: Vec<String>,
    entity_column: &str,
    time_column: &str,
    skip_bad: bool,
) -> anyhow::Result<()> {
    let format = OutputFormat::of(out).with_context(|| {
        format!(
            "{}: the output must end in .parquet, .csv or .ndjson",
            out.display()
        )
    })?;
    let started = Instant::now();
    let spine = read_spine(spine_path, entity_column, time_column, skip_bad)?;
    for (row, reason) in &spine.skipped {
        eprintln!(
            "fsdb: skipped {}: row {row}: {reason}",
            spine_path.display()
        );
    }
    let features = if features.is_empty() {
        db.feature_names()
    } else {
        features
    };
    let names: Vec<&str> = features.iter().map(String::as_str).collect();
    let bar = ProgressBar::new(spine.keys.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("training set [{bar:30}] {pos}/{len} rows ({per_sec}, {eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let set =
        db.training_set_with_progress(&spine.keys, &names, &|done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let computed = started.elapsed();
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let writer = BufWriter::with_capacity(1 << 20, file);
    match format {
        OutputFormat::Csv => write_csv(writer, &spine, &set)?,
        OutputFormat::Ndjson => write_ndjson(writer, &spine, &set)?,
        OutputFormat::Parquet => write_parquet(writer, &spine, &set)?,
    }
    say!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "rows": set.len(),
            "features": set.names().len(),
            "skipped": spine.skipped.len(),
            "out": out.display().to_string(),
            "seconds_computing": computed.as_secs_f64(),
            "seconds_total": started.elapsed().as_secs_f64(),
            "peak_rss_bytes": peak_rss_bytes(),
        }))?
    );
    Ok(())
}

/// This process's peak resident set (Linux: `VmHWM`), or `None` where unknown. Unlike
/// `getrusage`'s `ru_maxrss`, it is not inherited across `exec` from a large parent.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub(crate) fn generate(
    scale: &str,
    spine_rows: Option<u64>,
    start: Option<&str>,
    out: &Path,
) -> anyhow::Result<()> {
    let Some(mut spec) = WorkloadSpec::by_name(scale) else {
        bail!("unknown scale {scale:?} (S, M or demo)");
    };
    if let Some(start) = start {
        spec.start_ms =
            crate::time::parse_timestamp(start).with_context(|| format!("--start {start:?}"))?;
        // The whole span must be valid event time, including late events (up to an hour
        // before their slot) and the last event's jitter.
        let hour = 3_600_000;
        crate::time::check_range(spec.start_ms - hour)
            .and_then(|_| crate::time::check_range(spec.end_ms() + hour))
            .with_context(|| {
                format!("--start {start:?}: the 30 days from it must lie within years 1 to 9999")
            })?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("definitions.toml"), workload::DEFINITIONS)?;
    let create = |name: &str| -> anyhow::Result<BufWriter<std::fs::File>> {
        let path = out.join(name);
        Ok(BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        ))
    };
    let (mut tx, mut clicks) = (create("transactions.csv")?, create("clicks.csv")?);
    writeln!(tx, "txn_id,card_id,ts,amount,approved,city,merchant")?;
    writeln!(clicks, "user_id,ts,dwell_ms,page")?;
    let bar = ProgressBar::new(spec.events);
    for (stream, event) in spec.generator() {
        let text = |i: usize| match &event.values[i] {
            crate::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match stream {
            Stream::Transactions => writeln!(
                tx,
                "{},{},{},{},{},{},{}",
                event.id.as_deref().unwrap_or(""),
                event.entity,
                event.time_ms,
                text(0),
                text(1),
                text(2),
                text(3)
            )?,
            Stream::Clicks => writeln!(
                clicks,
                "{},{},{},{}",
                event.entity,
                event.time_ms,
                text(0),
                text(1)
            )?,
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    tx.flush()?;
    clicks.flush()?;
    let rows = spine_rows.unwrap_or(spec.events / 10);
    let mut spine = create("spine.csv")?;
    writeln!(spine, "entity,ts,label")?;
    let mut rng = workload::Rng::new(spec.seed ^ 0x5eed);
    for (entity, t) in workload::spine(&spec, rows, spec.seed) {
        writeln!(spine, "{entity},{t},{}", rng.below(2))?;
    }
    spine.flush()?;
    say!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "events": spec.events,
            "entities": spec.entities,
            "spine_rows": rows,
            "files": ["definitions.toml", "transactions.csv", "clicks.csv", "spine.csv"],
            "dir": out.display().to_string(),
        }))?
    );
    Ok(())
}
