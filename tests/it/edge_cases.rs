//! Data-driven cases for the edge rules of aggregations and time: each case is a feature,
//! a table of events (`time field=json ...`, in ingestion order) and expected values
//! (`time json`) as of those times.

use std::sync::Arc;

use fsdb::time::ManualClock;
use fsdb::{Db, Options};

const STREAM: &str = r#"
[[stream]]
name = "s"
entity = "e"
time = "t"
[stream.fields]
x = "float"
i = "int"
s = "string"
b = "bool"
"#;

fn check(feature: &str, events: &str, expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        clock: Arc::new(ManualClock::new(0)),
        ..Options::default()
    };
    let db = Db::open(dir.path(), options).unwrap();
    db.apply(&format!(
        "{STREAM}\n[[feature]]\nname = \"f\"\nstream = \"s\"\n{feature}\n"
    ))
    .unwrap();
    for line in events.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut parts = line.split_whitespace();
        let time: serde_json::Value = serde_json::from_str(parts.next().unwrap()).unwrap();
        let mut event = serde_json::json!({"e": "k", "t": time});
        for assignment in parts {
            let (field, value) = assignment.split_once('=').unwrap();
            event[field] = serde_json::from_str(value).unwrap();
        }
        // One event per append: ingestion order is line order.
        db.append_json("s", &[event]).unwrap();
    }
    for line in expect.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (time, value) = line.split_once(char::is_whitespace).unwrap();
        let t: i64 = time.parse().unwrap();
        let expected: serde_json::Value = serde_json::from_str(value.trim()).unwrap();
        let got = db
            .as_of("k", &["f"], t)
            .unwrap()
            .get("f")
            .unwrap()
            .to_json();
        assert_eq!(got, expected, "feature [{feature}] as of {t}");
    }
}

#[test]
fn windows_are_exact_half_open_intervals() {
    // (t - 1h, t]: an event at 0 counts from 0 through 3_599_999, not at 3_600_000.
    check(
        "agg = \"count\"\nwindow = \"1h\"",
        "0\n3599999",
        "-1 0\n0 1\n3599999 2\n3600000 1\n7199998 1\n7199999 0",
    );
    // 1 ms windows hold exactly the events at t.
    check(
        "agg = \"count\"\nwindow = \"1ms\"",
        "5\n5\n6",
        "4 0\n5 2\n6 1\n7 0",
    );
    // Lifetime: everything up to t; a late event changes every later answer.
    check(
        "agg = \"sum\"\nfield = \"i\"",
        "100 i=1\n300 i=2\n200 i=4",
        "99 0\n100 1\n250 5\n300 7",
    );
    // Negative times (before 1970) and RFC 3339 inputs are the same axis.
    check(
        "agg = \"count\"\nwindow = \"1s\"",
        "-1500\n\"1970-01-01T00:00:00.5Z\"",
        "-1500 1\n-501 1\n-500 0\n500 1\n1499 1\n1500 0",
    );
}

#[test]
fn nulls_and_empty_windows() {
    // count without a field counts events; with a field, non-null values.
    check("agg = \"count\"", "1 x=null\n2 x=1.0", "2 2");
    check(
        "agg = \"count\"\nfield = \"x\"",
        "1 x=null\n2 x=1.0\n3",
        "3 1",
    );
    // Empty windows: 0, 0.0, null, [].
    check("agg = \"sum\"\nfield = \"x\"", "5 x=null", "10 0.0");
    check("agg = \"sum\"\nfield = \"i\"", "", "10 0");
    for agg in ["min", "max", "avg", "variance", "stddev", "first", "last"] {
        check(
            &format!("agg = \"{agg}\"\nfield = \"x\""),
            "5 x=null",
            "10 null",
        );
    }
    check("agg = \"last_n\"\nfield = \"s\"\nn = 3", "5", "10 []");
    check("agg = \"count_distinct\"\nfield = \"s\"", "", "10 0");
    check("agg = \"approx_count_distinct\"\nfield = \"s\"", "", "10 0");
}

#[test]
fn ties_go_by_ingestion_order() {
    check(
        "agg = \"first\"\nfield = \"s\"",
        "10 s=\"a\"\n10 s=\"b\"\n11 s=\"c\"",
        "10 \"a\"\n11 \"a\"",
    );
    check(
        "agg = \"last\"\nfield = \"s\"",
        "10 s=\"a\"\n10 s=\"b\"\n9 s=\"z\"",
        "10 \"b\"\n9 \"z\"",
    );
    check(
        "agg = \"last_n\"\nfield = \"i\"\nn = 3",
        "10 i=1\n10 i=2\n12 i=3\n11 i=4\n13 i=null",
        "12 [3, 4, 2]\n10 [2, 1]",
    );
    // A late event older than the current first becomes first.
    check(
        "agg = \"first\"\nfield = \"i\"",
        "10 i=1\n5 i=2",
        "9 2\n20 2",
    );
}

#[test]
fn numeric_results_are_exact() {
    // The exact sum is correctly rounded: 0.6, where a left fold gives 0.6000000000000001.
    check(
        "agg = \"sum\"\nfield = \"x\"",
        "1 x=0.1\n2 x=0.2\n3 x=0.3",
        "3 0.6",
    );
    check(
        "agg = \"sum\"\nfield = \"x\"",
        "1 x=1e100\n2 x=1.0\n3 x=-1e100",
        "3 1.0",
    );
    // Population variance and standard deviation.
    check("agg = \"variance\"\nfield = \"i\"", "1 i=1\n2 i=3", "2 1.0");
    check(
        "agg = \"stddev\"\nfield = \"x\"",
        "1 x=2\n2 x=4\n3 x=4\n4 x=4\n5 x=5\n6 x=5\n7 x=7\n8 x=9",
        "8 2.0",
    );
    // No cancellation: a tiny variance around a huge mean.
    check(
        "agg = \"variance\"\nfield = \"x\"",
        "1 x=1e9\n2 x=1000000002",
        "2 1.0",
    );
    check("agg = \"avg\"\nfield = \"i\"", "1 i=1\n2 i=2", "2 1.5");
    // Int sums saturate at the i64 range.
    check(
        "agg = \"sum\"\nfield = \"i\"",
        "1 i=9223372036854775807\n2 i=1",
        "2 9223372036854775807",
    );
    // -0.0 sorts below 0.0; they are one distinct value.
    check(
        "agg = \"count_distinct\"\nfield = \"x\"",
        "1 x=0.0\n2 x=-0.0\n3 x=1.5",
        "3 2",
    );
    check(
        "agg = \"min\"\nfield = \"s\"",
        "1 s=\"b\"\n2 s=\"a\"\n3 s=\"ab\"",
        "3 \"a\"",
    );
    check(
        "agg = \"max\"\nfield = \"b\"",
        "1 b=false\n2 b=true",
        "1 false\n2 true",
    );
}

#[test]
fn filters_treat_null_as_false() {
    check(
        "agg = \"count\"\nwhere = \"i == 1\"",
        "1 i=1\n2 i=2\n3",
        "3 1",
    );
    check(
        "agg = \"count\"\nwhere = \"not (i == 1)\"",
        "1 i=1\n2 i=2\n3",
        "3 2",
    );
    check(
        "agg = \"count\"\nwhere = \"x > 1 and s != \\\"a\\\"\"",
        "1 x=2 s=\"a\"\n2 x=2 s=\"b\"\n3 x=2",
        "3 1",
    );
    check(
        "agg = \"count\"\nwhere = \"i > 1.5 or b == true\"",
        "1 i=1\n2 i=2\n3 b=true i=0",
        "3 2",
    );
}

#[test]
fn batch_freshness_reads_the_period_start() {
    // freshness = 1s: the value as of t is the realtime value as of floor(t/1000)*1000.
    check(
        "agg = \"count\"\nfreshness = \"1s\"",
        "0\n500\n1000\n1999",
        "0 1\n999 1\n1000 3\n1998 3\n1999 3\n2000 4\n-1 0",
    );
    check(
        "agg = \"count\"\nwindow = \"1s\"\nfreshness = \"1s\"",
        "0\n500\n1500",
        "999 1\n1999 1\n2000 1\n2999 1\n3000 0",
    );
}
