//! `fsdb demo`: a realistic sample, every aggregation, both freshness modes, and the
//! guarantee in action: latest values, values as of past times, a small training set, and a
//! replay that agrees with the live state.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

macro_rules! say {
    ($($arg:tt)*) => { super::say(format!($($arg)*)) };
}

use anyhow::{Context, bail};

use crate::time::{ManualClock, format_timestamp};
use crate::value::Value;
use crate::workload::{self, Stream, WorkloadSpec};
use crate::{Db, Options};

/// The reference workload's features, plus the aggregations it does not use.
fn definitions() -> String {
    format!(
        r#"{}
[[feature]]
name   = "card_amount_variance_7d"
stream = "transactions"
agg    = "variance"
field  = "amount"
window = "7d"

[[feature]]
name   = "card_first_merchant"
stream = "transactions"
agg    = "first"
field  = "merchant"

[[feature]]
name   = "card_last_3_amounts"
stream = "transactions"
agg    = "last_n"
field  = "amount"
n      = 3

[[feature]]
name   = "user_pages_approx_7d"
stream = "clicks"
agg    = "approx_count_distinct"
field  = "page"
window = "7d"
"#,
        workload::DEFINITIONS
    )
}

fn table(header: &[String], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        say!("  {}", padded.join("  ").trim_end());
    };
    line(header);
    line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
    for row in rows {
        line(row);
    }
}

fn show(value: &Value) -> String {
    match value {
        Value::Float(f) => format!("{f:.2}"),
        Value::List(items) => format!(
            "[{}]",
            items.iter().map(show).collect::<Vec<_>>().join(", ")
        ),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn run(keep: Option<PathBuf>) -> anyhow::Result<()> {
    let started = Instant::now();
    let scratch;
    let dir = match keep {
        Some(dir) => {
            if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
                bail!(
                    "{} is not empty; the demo needs a new or empty directory",
                    dir.display()
                );
            }
            dir
        }
        None => {
            scratch = tempfile::tempdir()?;
            scratch.path().to_path_buf()
        }
    };
    let spec = WorkloadSpec::DEMO;
    let now = spec.end_ms();
    say!(
        "fsdb demo: {} card transactions and web clicks of {} customers over {} days,",
        spec.events,
        spec.entities,
        spec.days
    );
    say!(
        "in {} (\"now\" is the end of the sample: {})\n",
        dir.display(),
        format_timestamp(now)
    );

    // 1. The sample, as files a user would have.
    let sample = dir.join("sample");
    std::fs::create_dir_all(&sample)?;
    let tx_path = sample.join("transactions.ndjson");
    let clicks_path = sample.join("clicks.csv");
    {
        let mut tx = std::io::BufWriter::new(std::fs::File::create(&tx_path)?);
        let mut clicks = std::io::BufWriter::new(std::fs::File::create(&clicks_path)?);
        writeln!(clicks, "user_id,ts,page,dwell_ms")?;
        for (stream, event) in spec.generator() {
            match stream {
                Stream::Transactions => writeln!(tx, "{}", workload::event_json(stream, &event))?,
                Stream::Clicks => writeln!(
                    clicks,
                    "{},{},{},{}",
                    event.entity,
                    event.time_ms,
                    show(&event.values[1]),
                    show(&event.values[0])
                )?,
            }
        }
    }
    let definitions_path = sample.join("features.toml");
    std::fs::write(&definitions_path, definitions())?;
    say!(
        "1. wrote {} and {} (sample data) and {} (16 features: every aggregation; two are batch features, freshness = 1d)",
        tx_path.display(),
        clicks_path.display(),
        definitions_path.display()
    );

    // 2. Apply and ingest, as `fsdb apply` and `fsdb ingest` do.
    let data = dir.join("data");
    let clock = Arc::new(ManualClock::new(now));
    let options = || Options {
        clock: Arc::clone(&clock) as Arc<dyn crate::time::Clock>,
        ..Options::default()
    };
    let db = Db::open(&data, options())?;
    db.apply(&definitions())?;
    let t = Instant::now();
    let tx = super::ingest::ingest(&db, "transactions", &[tx_path], false, 10_000)?;
    let clicks = super::ingest::ingest(&db, "clicks", &[clicks_path], false, 10_000)?;
    say!(
        "2. ingested {} transactions ({} duplicate retries skipped) and {} clicks in {:.2}s, each batch durable (fsync) before acknowledged\n",
        tx.accepted,
        tx.duplicates,
        clicks.accepted,
        t.elapsed().as_secs_f64()
    );

    // 3. Latest values.
    let names = db.feature_names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let entities = ["cust0", "cust7", "cust1234"];
    let rows: Vec<_> = entities
        .iter()
        .map(|e| db.latest(e, &names))
        .collect::<Result<_, _>>()?;
    say!("3. latest values (what a model sees when serving now):");
    let header: Vec<String> = std::iter::once("feature".to_owned())
        .chain(entities.iter().map(|e| (*e).to_owned()))
        .collect();
    let body: Vec<Vec<String>> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            std::iter::once((*name).to_owned())
                .chain(rows.iter().map(|r| show(&r.values[i])))
                .collect()
        })
        .collect();
    table(&header, &body);

    // 4. As of past times: windows move, batch features hold until their next period.
    let moving = [
        "card_txn_count_1m",
        "card_txn_count_1h",
        "card_amount_sum_1d",
        "card_txn_count_lifetime",
        "user_pages_1d",
    ];
    let times = [
        now - 7 * 86_400_000,
        now - 86_400_000 - 1,
        now - 86_400_000,
        now - 3_600_000,
        now - 60_000,
        now,
    ];
    say!(
        "\n4. cust0 as of past times (windows are exact at every millisecond; the last two columns are batch features, read as of the start of their day):"
    );
    let header: Vec<String> = std::iter::once("as of".to_owned())
        .chain(moving.iter().map(|m| (*m).to_owned()))
        .collect();
    let body: Vec<Vec<String>> = times
        .iter()
        .map(|&t| {
            let row = db.as_of("cust0", &moving, t)?;
            Ok(std::iter::once(format_timestamp(t))
                .chain(row.values.iter().map(show))
                .collect())
        })
        .collect::<crate::Result<_>>()?;
    table(&header, &body);

    // 5. A training set: each label row joined with the features as of its own time.
    let spine: Vec<(String, i64)> = workload::spine(&spec, 10, 3);
    let training = [
        "card_txn_count_1h",
        "card_amount_avg_7d",
        "card_merchants_7d",
        "user_clicks_1h",
        "card_txn_count_lifetime",
    ];
    let values = db.training_set(&spine, &training)?;
    say!(
        "\n5. a 10-row training set (point in time: no value sees events after its row's time; each equals as_of at that time):"
    );
    let header: Vec<String> = ["entity", "ts", "label"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain(training.iter().map(|s| (*s).to_owned()))
        .collect();
    let body: Vec<Vec<String>> = spine
        .iter()
        .enumerate()
        .map(|(i, (entity, t))| {
            [entity.clone(), format_timestamp(*t), (i % 2).to_string()]
                .into_iter()
                .chain(values.row(i).iter().map(show))
                .collect()
        })
        .collect();
    table(&header, &body);

    // 6. Replay: rebuild the state from the log alone and compare everything.
    let t = Instant::now();
    let scratch_replay = tempfile::tempdir()?;
    let check = db
        .check_against_replay(scratch_replay.path(), &[], options())
        .context("replaying the log")?;
    let differences: u64 = check.differences.values().sum();
    say!(
        "\n6. replay --verify: rebuilt the state from the log and compared {} features x {} entities x {} times: {} differences, state digests {} ({:.2}s)",
        check.differences.len(),
        check.entities_checked,
        check.times.len(),
        differences,
        if check.digests_equal {
            "equal"
        } else {
            "DIFFERENT"
        },
        t.elapsed().as_secs_f64()
    );
    db.close()?;
    say!("\ndone in {:.1}s.", started.elapsed().as_secs_f64());
    if scratch_is_kept(&dir) {
        say!(
            "Try: fsdb --data {} get cust0 --as-of {}",
            data.display(),
            format_timestamp(now - 3_600_000)
        );
    }
    if differences > 0 || !check.digests_equal {
        bail!("the replay disagrees with the live state");
    }
    Ok(())
}

fn scratch_is_kept(dir: &std::path::Path) -> bool {
    !dir.starts_with(std::env::temp_dir())
}
