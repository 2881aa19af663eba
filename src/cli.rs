//! The `fsdb` command-line tool: apply, ingest, get, replay, verify, stats, demo.
//!
//! Every command takes `--data DIR` (default `./fsdb-data`, or `$FSDB_DATA`). Errors are
//! one line on stderr and a non-zero exit; results a program reads are JSON on stdout.
//! This is the only layer (with the HTTP server) that reads the environment and the wall
//! clock.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::time::{SystemClock, parse_timestamp};
use crate::{Db, Options};

mod demo;
pub(crate) mod ingest;
mod training;

#[derive(Debug, Parser)]
#[command(
    name = "fsdb",
    version,
    about = "An embedded time-series feature database: the same feature values in training and serving."
)]
struct Cli {
    /// The data directory.
    #[arg(long, global = true, env = "FSDB_DATA", default_value = "./fsdb-data")]
    data: PathBuf,
    /// Memory for entities' events held in memory, in MiB (`Options::cache_bytes_max`):
    /// past it, entities not used lately leave memory after a checkpoint.
    #[arg(long, global = true, env = "FSDB_CACHE_MIB", default_value_t = Options::default().cache_bytes_max as u64 >> 20, value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    cache_mib: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate and register the streams and features of a definitions file.
    Apply {
        /// A TOML definitions file (see docs/semantics.md).
        file: PathBuf,
    },
    /// Remove features: their definitions and state go, and their names may be defined
    /// again (differently). Events stay in the log and serve every other feature.
    Remove {
        /// The names of the features to remove.
        #[arg(required = true)]
        features: Vec<String>,
    },
    /// Append events from NDJSON (.ndjson, .jsonl, .json), CSV (.csv) or Parquet (.parquet)
    /// files; `-` reads NDJSON from stdin.
    Ingest {
        /// The stream the events belong to (defined with `fsdb apply`).
        #[arg(long)]
        stream: String,
        /// Files to read, in order; the format is taken from each one's extension.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Skip (and report) bad rows instead of stopping at the first one.
        #[arg(long)]
        skip_bad: bool,
        /// Events per append (each append is atomic and durable).
        #[arg(long, default_value_t = 10_000)]
        batch_events: usize,
    },
    /// Print an entity's feature values: latest, or as of a time.
    Get {
        /// The entity (the value of its stream's entity field).
        entity: String,
        /// Comma-separated feature names (default: every feature).
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
        /// Epoch milliseconds or RFC 3339 (default: now).
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Rebuild the state from the log (built aside, swapped in atomically); with --verify,
    /// compare the live state with a fresh replay instead and exit 1 on any difference.
    Replay {
        /// Limit the --verify comparison to these features.
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
        /// Compare the live state with a fresh replay instead of rebuilding it.
        #[arg(long)]
        verify: bool,
    },
    /// Check every log record's checksum and the state against a fresh replay.
    /// Exit 0: clean; 1: the state differs from a replay; 3: the log is damaged.
    Verify,
    /// Point-in-time join: each spine row (entity, time, other columns) with the features as
    /// of its time. Spine: .csv, .ndjson or .parquet; output by extension: .parquet, .csv
    /// or .ndjson.
    TrainingSet {
        /// The spine: one row per (entity, time) to compute the features for.
        #[arg(long)]
        spine: PathBuf,
        /// Where to write the training set (replaced if it exists).
        #[arg(long)]
        out: PathBuf,
        /// Comma-separated feature names (default: every feature).
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
        /// The spine's entity column.
        #[arg(long, default_value = "entity")]
        entity_column: String,
        /// The spine's time column (epoch ms or RFC 3339).
        #[arg(long, default_value = "ts")]
        time_column: String,
        /// Skip (and report) spine rows with no entity or a bad time instead of failing.
        #[arg(long)]
        skip_bad: bool,
    },
    /// Write the reference workload (DESIGN §5) as files: definitions.toml, transactions.csv,
    /// clicks.csv and spine.csv (entity, ts, label).
    Generate {
        /// S (1M events, 10k entities), M (10M, 100k) or demo (200k, 2k).
        #[arg(long, default_value = "S")]
        scale: String,
        /// Spine rows (default: a tenth of the events).
        #[arg(long)]
        spine_rows: Option<u64>,
        /// The first event time, epoch ms or RFC 3339 (default 2026-01-01T00:00:00Z);
        /// events span 30 days from there.
        #[arg(long)]
        start: Option<String>,
        /// The directory to write the files into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve the HTTP API (docs/http-api.md) until SIGINT/SIGTERM.
    Serve {
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// A file holding the bearer token clients must send (or set FSDB_TOKEN); required
        /// unless listening on a loopback address.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// The largest request body accepted, in bytes (larger: 413).
        #[arg(long, default_value_t = 16 << 20)]
        body_bytes_max: usize,
        /// Requests handled at once; past it, requests are refused with 503.
        #[arg(long, default_value_t = 256)]
        concurrency_max: usize,
        /// Time allowed for a request's headers, in milliseconds.
        #[arg(long, default_value_t = 5_000)]
        header_read_timeout_ms: u64,
        /// Time allowed for a request's body, in milliseconds.
        #[arg(long, default_value_t = 30_000)]
        body_timeout_ms: u64,
        /// Time allowed for handling a request once read, in milliseconds.
        #[arg(long, default_value_t = 300_000)]
        handler_timeout_ms: u64,
    },
    /// Counts and sizes, as JSON.
    Stats,
    /// Generate a sample dataset, define features, ingest, and show latest values, values as
    /// of past times, a small training set and a replay check.
    Demo {
        /// Keep the demo database in this (new or empty) directory instead of a temporary one.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
}

fn options(cache_mib: u64) -> Options {
    Options {
        clock: Arc::new(SystemClock),
        cache_bytes_max: usize::try_from(cache_mib << 20).unwrap_or(usize::MAX),
        ..Options::default()
    }
}

fn open(data: &Path, cache_mib: u64) -> anyhow::Result<Db> {
    Db::open(data, options(cache_mib)).with_context(|| format!("opening {}", data.display()))
}

/// Run the tool; prints errors as one line and maps outcomes to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("fsdb: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// `error` and its causes on one line, each said once: fsdb's errors name their source in
/// their own message (for callers that print only that), where anyhow's `{:#}` would
/// repeat it.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Print a line to stdout. A closed stdout (`fsdb ... | head`) ends the program quietly,
/// as it does for other command-line tools.
pub(crate) fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("fsdb: writing to stdout: {e}");
        std::process::exit(1);
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    say(serde_json::to_string_pretty(value)?);
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Apply { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let db = open(&cli.data, cli.cache_mib)?;
            let report = db
                .apply(&text)
                .with_context(|| format!("{}", file.display()))?;
            print_json(&serde_json::json!({
                "added_streams": report.added_streams,
                "added_features": report.added_features,
                "unchanged": report.unchanged,
            }))?;
            db.close()?;
        }
        Command::Remove { features } => {
            let db = open(&cli.data, cli.cache_mib)?;
            let names: Vec<&str> = features.iter().map(String::as_str).collect();
            let removed = db.remove_features(&names)?;
            print_json(&serde_json::json!({ "removed": removed }))?;
            db.close()?;
        }
        Command::Ingest {
            stream,
            files,
            skip_bad,
            batch_events,
        } => {
            let db = open(&cli.data, cli.cache_mib)?;
            let report = ingest::ingest(&db, &stream, &files, skip_bad, batch_events)?;
            db.close()?;
            print_json(&report)?;
        }
        Command::Get {
            entity,
            features,
            as_of,
        } => {
            let db = open(&cli.data, cli.cache_mib)?;
            let features = if features.is_empty() {
                db.feature_names()
            } else {
                features
            };
            let names: Vec<&str> = features.iter().map(String::as_str).collect();
            let row = match as_of {
                Some(t) => db.as_of(&entity, &names, parse_timestamp(&t).context("--as-of")?)?,
                None => db.latest(&entity, &names)?,
            };
            print_json(&row.to_json())?;
        }
        Command::Replay { features, verify } => {
            if verify {
                let db = open(&cli.data, cli.cache_mib)?;
                return verify_against_replay(&db, &features, cli.cache_mib);
            }
            if !features.is_empty() {
                let known = open(&cli.data, cli.cache_mib)?.feature_names();
                if let Some(name) = features.iter().find(|f| !known.contains(f)) {
                    bail!("unknown feature {name:?}");
                }
            }
            // Feature values are computed from their stream's events when queried, so there
            // is no per-feature state: rebuilding means rebuilding the streams' state.
            let replayed =
                Db::rebuild(&cli.data, options(cli.cache_mib)).context("rebuilding the state")?;
            print_json(&serde_json::json!({ "replayed_records": replayed }))?;
        }
        Command::Verify => {
            let db = open(&cli.data, cli.cache_mib)?;
            match db.verify_log() {
                Ok(report) => eprintln!(
                    "log: {} records in {} segments, every checksum valid",
                    report.records, report.segments
                ),
                Err(e) => {
                    eprintln!("fsdb: log damaged: {e}");
                    return Ok(ExitCode::from(3));
                }
            }
            return verify_against_replay(&db, &[], cli.cache_mib);
        }
        Command::TrainingSet {
            spine,
            out,
            features,
            entity_column,
            time_column,
            skip_bad,
        } => {
            let db = open(&cli.data, cli.cache_mib)?;
            training::run(
                &db,
                &spine,
                &out,
                features,
                &entity_column,
                &time_column,
                skip_bad,
            )?;
        }
        Command::Generate {
            scale,
            spine_rows,
            start,
            out,
        } => training::generate(&scale, spine_rows, start.as_deref(), &out)?,
        Command::Serve {
            listen,
            token_file,
            body_bytes_max,
            concurrency_max,
            header_read_timeout_ms,
            body_timeout_ms,
            handler_timeout_ms,
        } => {
            let token = match token_file {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?
                        .trim()
                        .to_owned(),
                ),
                None => std::env::var("FSDB_TOKEN").ok().filter(|t| !t.is_empty()),
            };
            let config = crate::http::ServeConfig {
                listen,
                token,
                body_bytes_max,
                concurrency_max,
                header_read_timeout_ms,
                body_timeout_ms,
                handler_timeout_ms,
                ..crate::http::ServeConfig::default()
            };
            let db = std::sync::Arc::new(open(&cli.data, cli.cache_mib)?);
            crate::http::serve(std::sync::Arc::clone(&db), config, |addr| {
                eprintln!("fsdb: serving on http://{addr}")
            })?;
            eprintln!("fsdb: stopped; closing the database");
            if let Ok(db) = std::sync::Arc::try_unwrap(db) {
                db.close()?;
            }
        }
        Command::Stats => {
            let db = open(&cli.data, cli.cache_mib)?;
            print_json(&db.stats()?)?;
        }
        Command::Demo { keep } => demo::run(keep)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Compare the live state with a fresh replay; exit 1 on any difference.
fn verify_against_replay(db: &Db, features: &[String], cache_mib: u64) -> anyhow::Result<ExitCode> {
    let scratch = tempfile::tempdir()?;
    let check = db.check_against_replay(scratch.path(), &[], options(cache_mib))?;
    let differences: std::collections::BTreeMap<&String, &u64> = check
        .differences
        .iter()
        .filter(|(name, _)| features.is_empty() || features.contains(name))
        .collect();
    print_json(&serde_json::json!({
        "state_digests_equal": check.digests_equal,
        "entities_checked": check.entities_checked,
        "times": check.times,
        "differences": differences,
        "examples": check.examples,
    }))?;
    let clean = check.digests_equal && differences.values().all(|&&n| n == 0);
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
