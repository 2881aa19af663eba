//! Checks shared by the fuzz targets (`fuzz/`) and the test that replays their corpora on
//! stable (`tests/it/fuzz_corpus.rs`). Each takes arbitrary bytes and panics if fsdb
//! misbehaves on them: a panic in a parser, or a parse that does not survive its own
//! canonical form.
//!
//! Also [`fsum`], the reference float sum of the exact-sum unit tests and of the naive
//! reference the differential tests compare the engine with.

use crate::catalog::{Catalog, StreamDef, filter, parse_definitions};
use crate::cli::ingest::{csv_event_rows, csv_events, json_row_event, ndjson_line_event};
use crate::event::json::events_from_array_text;
use crate::event::{EventLimits, check_event, event_from_json};
use crate::spine::{SpineFormat, read_spine_from};

/// A stream with a field of every type, for the event checks.
const STREAM: &str = r#"
[[stream]]
name = "s"
entity = "e"
time = "t"
id = "id"
[stream.fields]
i = "int"
f = "float"
s = "string"
b = "bool"
"#;

fn text(input: &[u8]) -> Option<&str> {
    std::str::from_utf8(input).ok()
}

/// A `where` expression: parsing never panics, and the canonical text of what parses
/// parses to the same expression unless it was refused for its length.
pub fn check_where(input: &[u8]) {
    let Some(text) = text(input) else { return };
    if let Ok(expr) = filter::parse(text) {
        let canonical = match filter::canonical(text) {
            Ok(canonical) => canonical,
            Err(e) if e.starts_with("longer than") => return,
            Err(e) => panic!("{text:?} parses but has no canonical form: {e}"),
        };
        let again = filter::parse(&canonical)
            .unwrap_or_else(|e| panic!("canonical form {canonical:?} does not parse: {e}"));
        assert_eq!(
            again, expr,
            "canonical form {canonical:?} parses differently"
        );
    }
}

/// A definitions file: parsing and planning never panic; a valid file applied to an empty
/// catalog, then planned again, is all unchanged.
pub fn check_definitions(input: &[u8]) {
    let Some(text) = text(input) else { return };
    let Ok(definitions) = parse_definitions(text) else {
        return;
    };
    let mut catalog = Catalog::default();
    let Ok(plan) = catalog.plan(&definitions) else {
        return;
    };
    catalog.apply(&plan);
    let again = catalog
        .plan(&definitions)
        .expect("a file that applied plans again");
    assert!(
        again.is_empty(),
        "re-applying the same definitions changes the catalog"
    );
}

fn stream() -> StreamDef {
    parse_definitions(STREAM)
        .expect("the check's stream parses")
        .streams
        .remove(0)
}

/// An event as JSON: validation never panics, and an accepted event passes the typed
/// check that `Db::append` applies; read as an NDJSON line by `fsdb ingest`
/// (`ndjson_line_event`), text gives the same event or the same error as read as a
/// `serde_json::Value` first; as a JSON array of events (an HTTP body: the input itself,
/// and the input as an array's one and two elements), it gives the same events, or is
/// refused, as read as a `serde_json::Value` first.
pub fn check_event_json(input: &[u8]) {
    let stream = stream();
    let limits = EventLimits::default();
    if let Ok(line) = std::str::from_utf8(input) {
        let row = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"));
        assert_eq!(
            ndjson_line_event(&stream, &limits, line),
            json_row_event(&stream, &limits, row),
            "an NDJSON line reads as its JSON value does"
        );
    }
    // As an HTTP body, and inside one, once and twice.
    let inside = |copies: usize| {
        let mut body = b"[".to_vec();
        for copy in 0..copies {
            if copy > 0 {
                body.push(b',');
            }
            body.extend_from_slice(input);
        }
        body.push(b']');
        body
    };
    for body in [input.to_vec(), inside(1), inside(2)] {
        let general = match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(serde_json::Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| event_from_json(i, &stream, item, &limits).ok())
                .collect(),
            _ => None,
        };
        assert_eq!(
            events_from_array_text(&stream, &limits, &body),
            general,
            "a JSON array reads as its JSON value does"
        );
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(input) else {
        return;
    };
    if let Ok(event) = event_from_json(0, &stream, &json, &limits) {
        check_event(0, &stream, &event, &limits)
            .unwrap_or_else(|e| panic!("accepted from JSON, refused typed: {e}"));
    }
}

/// A CSV file, read as events (`fsdb ingest`) and as a training-set spine: no panic; an event
/// accepted from its CSV row passes the typed check of `append`; reading the events
/// directly (`csv_event_rows`, what `fsdb ingest` does) gives every row the same event or
/// the same error as reading each row as a JSON object first (`csv_events`); a spine that
/// reads with bad rows refused reads the same with bad rows skipped, none skipped.
pub fn check_csv(input: &[u8]) {
    let stream = stream();
    let limits = EventLimits::default();
    let direct = csv_event_rows(input, &stream, limits.clone());
    match csv_events(input, &stream) {
        Ok(rows) => {
            let mut direct = direct.expect("the header reads the same both ways");
            for (line, row) in rows {
                let event = json_row_event(&stream, &limits, row);
                if let Ok(event) = &event {
                    check_event(0, &stream, event, &limits).unwrap_or_else(|e| {
                        panic!("line {line}: accepted from CSV, refused typed: {e}")
                    });
                }
                assert_eq!(direct.next(), Some((line, event)), "line {line}");
            }
            assert_eq!(direct.next(), None, "the same rows both ways");
        }
        Err(_) => assert!(direct.is_err(), "the header reads the same both ways"),
    }
    let spine = |skip_bad| {
        let reader = Box::new(std::io::Cursor::new(input.to_vec()));
        read_spine_from("input", SpineFormat::Csv, reader, "e", "t", skip_bad)
    };
    if let Ok(strict) = spine(false) {
        let lenient = spine(true).expect("a spine read strictly reads leniently");
        assert!(
            lenient.skipped.is_empty(),
            "rows skipped from a spine with no bad row: {:?}",
            lenient.skipped
        );
        assert_eq!(lenient.keys, strict.keys, "lenient and strict reads differ");
    }
}

/// The query string of `GET /v1/features`: parsing never panics.
pub fn check_query_params(input: &[u8]) {
    let Some(text) = text(input) else { return };
    let _ = crate::http::parse_features_query(text);
}

/// A log payload: the hand-written decoder of event records (`event::wire`) gives what
/// bincode's serde decoding gives, the same entry or the same error; an event it decodes
/// encodes back to the same bytes when they were written the canonical way.
pub fn check_log_record(input: &[u8]) {
    crate::event::wire::check_against_serde(input);
}

/// Shewchuk's algorithm (Python's `math.fsum`): the correctly rounded sum of `xs`, by a
/// method other than `agg`'s exact sum, for the tests that check it (as Python's, it keeps
/// the sign of a sum of negative zeros, and overflows to infinity on an intermediate
/// overflow).
pub fn fsum(xs: &[f64]) -> f64 {
    let mut partials: Vec<f64> = Vec::new();
    for &x in xs {
        let mut x = x;
        let mut i = 0;
        for j in 0..partials.len() {
            let mut y = partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[i] = lo;
                i += 1;
            }
            x = hi;
        }
        partials.truncate(i);
        partials.push(x);
    }
    // Round the partials correctly (half-even), as fsum does.
    let mut n = partials.len();
    if n == 0 {
        return 0.0;
    }
    n -= 1;
    let mut hi = partials[n];
    let mut lo = 0.0;
    while n > 0 {
        let x = hi;
        n -= 1;
        let y = partials[n];
        hi = x + y;
        let yr = hi - x;
        lo = y - yr;
        if lo != 0.0 {
            break;
        }
    }
    if n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0)) {
        let y = lo * 2.0;
        let x = hi + y;
        let yr = x - hi;
        if y == yr {
            hi = x;
        }
    }
    hi
}
