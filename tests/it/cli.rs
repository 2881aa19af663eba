//! The `fsdb` binary, run as a user runs it: the demo, the quickstart flow with every input
//! format, and the error paths (one line on stderr, non-zero exit).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const DEFINITIONS: &str = r#"
[[stream]]
name   = "transactions"
entity = "card_id"
time   = "ts"
id     = "txn_id"
[stream.fields]
amount   = "float"
merchant = "string"
approved = "bool"

[[feature]]
name   = "card_txn_count_1h"
stream = "transactions"
agg    = "count"
window = "1h"

[[feature]]
name   = "card_amount_sum_7d"
stream = "transactions"
agg    = "sum"
field  = "amount"
window = "7d"
where  = "approved == true"
"#;

fn fsdb(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fsdb"))
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .unwrap()
}

fn fsdb_stdin(data: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fsdb"))
        .arg("--data")
        .arg(data)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// One line on stderr, non-zero exit, containing `fragment`.
fn fails_with(output: &Output, fragment: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "expected failure, got success: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line on stderr: {stderr}"
    );
    assert!(
        stderr.contains(fragment),
        "stderr {stderr:?} lacks {fragment:?}"
    );
}

fn features(value: &serde_json::Value) -> (i64, f64) {
    let f = &value["features"];
    (
        f["card_txn_count_1h"].as_i64().unwrap(),
        f["card_amount_sum_7d"].as_f64().unwrap(),
    )
}

/// A data directory named relative to the working directory, by one component (its parent
/// is the empty path) or more, is created and opened like any other; one that cannot be
/// made is refused on one line that names the cause once.
#[test]
fn relative_data_directories_open() {
    let cwd = tempfile::tempdir().unwrap();
    for data in ["db", "./db2", "nested/db3"] {
        for _twice in 0..2 {
            let out = Command::new(env!("CARGO_BIN_EXE_fsdb"))
                .current_dir(cwd.path())
                .args(["--data", data, "stats"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{data}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(cwd.path().join(data).join("log").is_dir(), "{data}");
    }
    // A data directory that cannot be made: one line, naming the cause once.
    std::fs::write(cwd.path().join("file"), "not a directory").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fsdb"))
        .current_dir(cwd.path())
        .args(["--data", "file", "stats"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("opening file: create directory file: "),
        "{stderr}"
    );
    assert_eq!(stderr.matches("(os error").count(), 1, "{stderr}");
}

#[test]
fn demo_runs_and_replay_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fsdb"))
        .args(["demo", "--keep"])
        .arg(dir.path().join("demo"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("0 differences, state digests equal"),
        "{stdout}"
    );
    assert!(stdout.contains("a 10-row training set"), "{stdout}");
    // The kept database is usable by the other commands.
    let data = dir.path().join("demo/data");
    let row = ok(&fsdb(
        &data,
        &[
            "get",
            "cust0",
            "--as-of",
            "2026-01-30T00:00:00Z",
            "--features",
            "card_txn_count_lifetime",
        ],
    ));
    assert!(row["features"]["card_txn_count_lifetime"].as_i64().unwrap() > 1000);
}

#[test]
fn apply_ingest_every_format_get_replay_verify_stats() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let defs = dir.path().join("features.toml");
    std::fs::write(&defs, DEFINITIONS).unwrap();
    let applied = ok(&fsdb(&data, &["apply", defs.to_str().unwrap()]));
    assert_eq!(applied["added_features"].as_array().unwrap().len(), 2);
    // Applying again changes nothing.
    assert_eq!(
        ok(&fsdb(&data, &["apply", defs.to_str().unwrap()]))["unchanged"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    let ndjson = dir.path().join("a.ndjson");
    std::fs::write(&ndjson, concat!(
        r#"{"txn_id": "t1", "card_id": "c42", "ts": "2026-03-01T12:00:00Z", "amount": 12.5, "approved": true}"#, "\n",
        "\n",
        r#"{"txn_id": "t2", "card_id": "c42", "ts": 1772368200000, "amount": 40.0, "approved": false}"#, "\n",
    )).unwrap();
    let csv = dir.path().join("b.csv");
    std::fs::write(&csv, "txn_id,card_id,ts,amount,merchant,approved\nt3,c42,2026-03-01T12:40:00Z,7.5,m1,true\nt4,c7,1772366400000,,m2,false\n").unwrap();
    let report = ok(&fsdb(
        &data,
        &[
            "ingest",
            "--stream",
            "transactions",
            ndjson.to_str().unwrap(),
            csv.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        (report["accepted"].as_i64(), report["duplicates"].as_i64()),
        (Some(4), Some(0))
    );
    let stdin = r#"{"txn_id": "t5", "card_id": "c42", "ts": "2026-03-01T12:44:00Z", "amount": 1.0, "approved": true}
{"txn_id": "t1", "card_id": "c42", "ts": "2026-03-01T12:00:00Z", "amount": 12.5, "approved": true}"#;
    let report = ok(&fsdb_stdin(
        &data,
        &["ingest", "--stream", "transactions", "-"],
        stdin,
    ));
    assert_eq!(
        (report["accepted"].as_i64(), report["duplicates"].as_i64()),
        (Some(1), Some(1))
    );

    let row = ok(&fsdb(
        &data,
        &["get", "c42", "--as-of", "2026-03-01T12:45:00Z"],
    ));
    assert_eq!(row["entity"], "c42");
    assert_eq!(features(&row), (4, 21.0));
    // Field order follows --features.
    let row = ok(&fsdb(
        &data,
        &[
            "get",
            "c42",
            "--as-of",
            "1772370900000",
            "--features",
            "card_amount_sum_7d,card_txn_count_1h",
        ],
    ));
    assert_eq!(
        row["features"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["card_amount_sum_7d", "card_txn_count_1h"]
    );
    assert_eq!(features(&row), (3, 21.0));

    // A training set, as the README's step 4: every row equals `get --as-of` at its time.
    let spine = dir.path().join("spine.csv");
    std::fs::write(
        &spine,
        "entity,ts,label\nc42,2026-03-01T12:45:00Z,1\nc42,2026-03-01T12:10:00Z,0\nc7,1772366400000,1\nnobody,2026-03-01T12:45:00Z,0\n",
    )
    .unwrap();
    let train = dir.path().join("train.csv");
    let report = ok(&fsdb(
        &data,
        &[
            "training-set",
            "--spine",
            spine.to_str().unwrap(),
            "--out",
            train.to_str().unwrap(),
        ],
    ));
    assert_eq!(report["rows"], 4);
    let text = std::fs::read_to_string(&train).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("entity,ts,label,card_txn_count_1h,card_amount_sum_7d")
    );
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        let expected = features(&ok(&fsdb(&data, &["get", cells[0], "--as-of", cells[1]])));
        assert_eq!(
            (
                cells[3].parse::<i64>().unwrap(),
                cells[4].parse::<f64>().unwrap()
            ),
            expected,
            "{line}"
        );
    }

    let check = ok(&fsdb(&data, &["replay", "--verify"]));
    assert_eq!(check["state_digests_equal"], true);
    assert_eq!(ok(&fsdb(&data, &["replay"]))["replayed_records"], 6);
    assert!(fsdb(&data, &["verify"]).status.success());
    let stats = ok(&fsdb(&data, &["stats"]));
    assert_eq!(
        (
            stats["entities"].as_i64(),
            stats["events"].as_i64(),
            stats["features"].as_i64()
        ),
        (Some(2), Some(5), Some(2))
    );
    // After the rebuild, the same answers.
    assert_eq!(
        features(&ok(&fsdb(
            &data,
            &["get", "c42", "--as-of", "2026-03-01T12:45:00Z"]
        ))),
        (4, 21.0)
    );

    // Removing a feature frees its name for a different definition.
    fails_with(
        &fsdb(&data, &["remove", "card_txn_count_1h", "nope"]),
        "unknown feature \"nope\"",
    );
    assert_eq!(
        ok(&fsdb(&data, &["remove", "card_txn_count_1h"])),
        serde_json::json!({"removed": ["card_txn_count_1h"]})
    );
    fails_with(
        &fsdb(&data, &["get", "c42", "--features", "card_txn_count_1h"]),
        "unknown feature \"card_txn_count_1h\"",
    );
    let redefined = dir.path().join("redefined.toml");
    std::fs::write(
        &redefined,
        "[[feature]]\nname = \"card_txn_count_1h\"\nstream = \"transactions\"\nagg = \"count\"\nwindow = \"2h\"\n",
    )
    .unwrap();
    ok(&fsdb(&data, &["apply", redefined.to_str().unwrap()]));
    let row = ok(&fsdb(
        &data,
        &["get", "c42", "--as-of", "2026-03-01T13:15:00Z"],
    ));
    assert_eq!(row["features"]["card_txn_count_1h"], 4, "2h window now");
    let check = ok(&fsdb(&data, &["replay", "--verify"]));
    assert_eq!(check["state_digests_equal"], true);
}

#[test]
fn errors_are_one_line_and_leave_nothing_half_done() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let defs = dir.path().join("features.toml");
    std::fs::write(
        &defs,
        DEFINITIONS.replace("window = \"7d\"", "window = \"7x\""),
    )
    .unwrap();
    fails_with(
        &fsdb(&data, &["apply", defs.to_str().unwrap()]),
        "feature \"card_amount_sum_7d\": key \"window\"",
    );
    std::fs::write(&defs, DEFINITIONS).unwrap();
    ok(&fsdb(&data, &["apply", defs.to_str().unwrap()]));

    // A bad row stops the ingest; nothing of its batch is applied.
    let bad = dir.path().join("bad.ndjson");
    std::fs::write(
        &bad,
        concat!(
            r#"{"txn_id": "g1", "card_id": "c1", "ts": 1000, "amount": 1.0}"#,
            "\n",
            r#"{"txn_id": "g2", "card_id": "c1", "ts": 2000, "amount": "lots"}"#,
            "\n",
            r#"{"txn_id": "g3", "card_id": "c1", "ts": 3000, "amount": 3.0}"#,
            "\n",
        ),
    )
    .unwrap();
    let out = fsdb(
        &data,
        &["ingest", "--stream", "transactions", bad.to_str().unwrap()],
    );
    fails_with(
        &out,
        "bad.ndjson:2: field \"amount\": expected float, found a string",
    );
    assert_eq!(
        features(&ok(&fsdb(&data, &["get", "c1", "--as-of", "5000"]))).0,
        0
    );
    // --skip-bad reports the line and ingests the rest.
    let report = ok(&fsdb(
        &data,
        &[
            "ingest",
            "--stream",
            "transactions",
            "--skip-bad",
            bad.to_str().unwrap(),
        ],
    ));
    assert_eq!(report["accepted"], 2);
    assert_eq!(report["rejected"][0]["line"], 2);
    let csv = dir.path().join("bad.csv");
    std::fs::write(&csv, "txn_id,card_id,ts,amount\nh1,c2,1000,abc\n").unwrap();
    fails_with(
        &fsdb(
            &data,
            &["ingest", "--stream", "transactions", csv.to_str().unwrap()],
        ),
        "bad.csv:2: field \"amount\": \"abc\" is not a float",
    );

    fails_with(
        &fsdb(&data, &["get", "c1", "--features", "nope"]),
        "unknown feature \"nope\"",
    );
    fails_with(
        &fsdb(&data, &["get", "c1", "--as-of", "yesterday"]),
        "--as-of",
    );
    fails_with(
        &fsdb(
            &data,
            &["ingest", "--stream", "nope", bad.to_str().unwrap()],
        ),
        "unknown stream \"nope\"",
    );
    fails_with(
        &fsdb(&data, &["ingest", "--stream", "transactions", "x.parquet"]),
        "opening x.parquet",
    );

    // A locked directory: another process (here, this one) has it open.
    {
        let _db = fsdb::Db::open(&data, fsdb::Options::default()).unwrap();
        fails_with(&fsdb(&data, &["stats"]), "locked by another process");
    }

    // A damaged state directory is rebuilt from the log.
    let state = data.join("state");
    for entry in std::fs::read_dir(&state).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "sst")
            || path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("MANIFEST"))
        {
            std::fs::write(&path, b"garbage").unwrap();
        }
    }
    assert_eq!(
        features(&ok(&fsdb(&data, &["get", "c1", "--as-of", "5000"]))),
        (2, 0.0)
    );
    std::fs::remove_dir_all(&state).unwrap();
    assert_eq!(ok(&fsdb(&data, &["replay"]))["replayed_records"], 3);
    assert_eq!(
        features(&ok(&fsdb(&data, &["get", "c1", "--as-of", "5000"]))),
        (2, 0.0)
    );
}

/// `fsdb generate` writes a sample a user can load as is, at the start time asked for.
#[test]
fn generate_writes_a_loadable_sample_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dir.path().join("sample");
    let start_ms: i64 = 1_800_000_000_000;
    let summary = ok(&fsdb(
        &data,
        &[
            "generate",
            "--scale",
            "demo",
            "--spine-rows",
            "50",
            "--start",
            &start_ms.to_string(),
            "--out",
            out.to_str().unwrap(),
        ],
    ));
    assert_eq!(summary["spine_rows"], 50);
    let column = |file: &str, index: usize| -> Vec<i64> {
        let text = std::fs::read_to_string(out.join(file)).unwrap();
        text.lines()
            .skip(1)
            .map(|line| line.split(',').nth(index).unwrap().parse().unwrap())
            .collect()
    };
    let month = 31 * 86_400_000;
    for (file, index) in [("transactions.csv", 2), ("clicks.csv", 1), ("spine.csv", 1)] {
        let times = column(file, index);
        assert!(!times.is_empty(), "{file}");
        // Late events may precede the start by up to an hour.
        let early = start_ms - 3_600_000;
        assert!(
            times.iter().all(|t| (early..start_ms + month).contains(t)),
            "{file}: times outside [start - 1h, start + 31d)"
        );
    }
    let definitions = out.join("definitions.toml");
    ok(&fsdb(&data, &["apply", definitions.to_str().unwrap()]));
    let ingested = ok(&fsdb(
        &data,
        &[
            "ingest",
            "--stream",
            "clicks",
            out.join("clicks.csv").to_str().unwrap(),
        ],
    ));
    assert_eq!(
        ingested["accepted"].as_u64(),
        Some(column("clicks.csv", 1).len() as u64)
    );

    fails_with(
        &fsdb(
            &data,
            &[
                "generate",
                "--start",
                "9999-12-30T00:00:00Z",
                "--out",
                out.to_str().unwrap(),
            ],
        ),
        "within years 1 to 9999",
    );
    fails_with(
        &fsdb(
            &data,
            &[
                "generate",
                "--start",
                "soon",
                "--out",
                out.to_str().unwrap(),
            ],
        ),
        "--start",
    );
}

/// Writes `transactions` rows as Parquet with typed columns: time as a UTC millisecond
/// timestamp, amount as nullable float64, approved as bool.
fn write_transactions_parquet(path: &Path, rows: &[(&str, &str, i64, Option<f64>, bool)]) {
    use arrow_array::{
        ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray,
    };
    use std::sync::Arc;
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "txn_id",
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
        ),
        (
            "card_id",
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
        ),
        (
            "ts",
            Arc::new(
                TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.2))
                    .with_timezone("UTC"),
            ),
        ),
        (
            "amount",
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.3))),
        ),
        (
            "approved",
            Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.4)))),
        ),
    ];
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// Parquet ingest gives the same state as the same events in NDJSON; a bad row is named by
/// its row number, and skipped with --skip-bad.
#[test]
fn ingest_parquet_equals_ndjson_and_names_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let defs = dir.path().join("features.toml");
    std::fs::write(&defs, DEFINITIONS).unwrap();
    let (from_parquet, from_ndjson) = (dir.path().join("p"), dir.path().join("n"));
    for data in [&from_parquet, &from_ndjson] {
        ok(&fsdb(data, &["apply", defs.to_str().unwrap()]));
    }
    let t0 = 1_772_366_400_000i64; // 2026-03-01T12:00:00Z
    let rows = [
        ("t1", "c42", t0, Some(12.5), true),
        ("t2", "c42", t0 + 1_800_000, None, false),
        ("t3", "c42", t0 + 2_400_000, Some(7.25), true),
        ("t4", "c7", t0 - 86_400_000, Some(3.0), true),
    ];
    let parquet = dir.path().join("tx.parquet");
    write_transactions_parquet(&parquet, &rows);
    let ndjson = dir.path().join("tx.ndjson");
    let lines: Vec<String> = rows
        .iter()
        .map(|(id, card, ts, amount, approved)| {
            serde_json::json!({"txn_id": id, "card_id": card, "ts": ts, "amount": amount, "approved": approved})
                .to_string()
        })
        .collect();
    std::fs::write(&ndjson, lines.join("\n")).unwrap();
    let ingest = |data: &Path, file: &Path| {
        ok(&fsdb(
            data,
            &["ingest", "--stream", "transactions", file.to_str().unwrap()],
        ))
    };
    assert_eq!(ingest(&from_parquet, &parquet)["accepted"], 4);
    assert_eq!(ingest(&from_ndjson, &ndjson)["accepted"], 4);
    for (entity, as_of) in [
        ("c42", "2026-03-01T12:45:00Z"),
        ("c7", "2026-03-01T12:45:00Z"),
        ("c42", "2026-03-01T12:10:00Z"),
    ] {
        let a = ok(&fsdb(&from_parquet, &["get", entity, "--as-of", as_of]));
        let b = ok(&fsdb(&from_ndjson, &["get", entity, "--as-of", as_of]));
        assert_eq!(a, b, "{entity} as of {as_of}");
    }
    assert_eq!(
        features(&ok(&fsdb(
            &from_parquet,
            &["get", "c42", "--as-of", "2026-03-01T12:45:00Z"]
        ))),
        (3, 19.75)
    );
    // Ingesting the file again: every id is a duplicate.
    assert_eq!(ingest(&from_parquet, &parquet)["duplicates"], 4);

    // A NaN amount in row 2: the ingest stops there, nothing of the batch applied...
    let bad = dir.path().join("bad.parquet");
    write_transactions_parquet(
        &bad,
        &[
            ("t10", "c9", t0, Some(1.0), true),
            ("t11", "c9", t0, Some(f64::NAN), true),
        ],
    );
    fails_with(
        &fsdb(
            &from_parquet,
            &["ingest", "--stream", "transactions", bad.to_str().unwrap()],
        ),
        "bad.parquet:2: field \"amount\": NaN and infinity are not accepted",
    );
    assert_eq!(
        ok(&fsdb(
            &from_parquet,
            &["get", "c9", "--as-of", "2026-03-01T12:45:00Z"]
        ))["features"]["card_txn_count_1h"],
        0
    );
    // ...or, with --skip-bad, row 2 is reported and row 1 ingested.
    let report = ok(&fsdb(
        &from_parquet,
        &[
            "ingest",
            "--stream",
            "transactions",
            "--skip-bad",
            bad.to_str().unwrap(),
        ],
    ));
    assert_eq!(report["accepted"], 1);
    assert_eq!(report["rejected"][0]["line"], 2);
    // Not Parquet at all.
    let fake = dir.path().join("fake.parquet");
    std::fs::write(&fake, "txn_id,card_id\n").unwrap();
    fails_with(
        &fsdb(
            &from_parquet,
            &["ingest", "--stream", "transactions", fake.to_str().unwrap()],
        ),
        "not a readable Parquet file",
    );
}

/// `--cache-mib` (or `FSDB_CACHE_MIB`) sets the entity cache budget of any command; a
/// budget of 0 is refused before anything is opened.
#[test]
fn cache_budget_is_an_option_and_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let refused = fsdb(&data, &["--cache-mib", "0", "stats"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--cache-mib"), "{stderr}");
    assert!(!data.exists(), "nothing was opened");
    ok(&fsdb(&data, &["--cache-mib", "1", "stats"]));
    let from_env = Command::new(env!("CARGO_BIN_EXE_fsdb"))
        .arg("--data")
        .arg(&data)
        .arg("stats")
        .env("FSDB_CACHE_MIB", "not-a-number")
        .output()
        .unwrap();
    assert!(!from_env.status.success());
}
