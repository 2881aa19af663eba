//! The cargo-fuzz corpora of fsdb's parsers (`fuzz/corpus/{where_expr, definitions,
//! event_json, csv, query_params, log_record}`), replayed on stable, each input also mutated a bounded
//! number of times (byte flips, cuts, splices) so that CI fuzzes a little on every run.
//! The checks are `fsdb::testing`'s, the same the fuzz targets run. The engine model's
//! corpus is replayed as it is (each input opens a database), with a few random inputs.

use std::path::Path;

use crate::generate::Rng;

/// Mutations per parser target, spread over its corpus (at most `MUTATIONS_PER_INPUT`
/// each): the corpora grow with every fuzzing campaign, CI's time should not.
const MUTATIONS: usize = 400_000;
const MUTATIONS_PER_INPUT: usize = 5_000;
/// Mutations per corpus input of the engine model (each input opens a database).
const MODEL_MUTATIONS: usize = 0;
/// Random inputs for the engine model beside its corpus (more: `FSDB_MODEL_INPUTS=<n>`;
/// others: `FSDB_MODEL_SEED=<n>`).
const MODEL_RANDOM_INPUTS: usize = 20;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{target}: empty corpus");
    inputs
}

/// One random edit of `input` (with a piece of `other` for splices).
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    let at = |rng: &mut Rng, len: usize| rng.below(len as u64 + 1) as usize;
    match rng.below(5) {
        0 if !out.is_empty() => {
            let i = at(rng, out.len() - 1);
            out[i] ^= 1 << rng.below(8);
        }
        1 => out.truncate(at(rng, input.len())),
        2 => {
            let i = at(rng, out.len());
            let byte = *rng.pick(b"()\"\\=<>!, &%.-eE0123456789\n[]{}:#");
            out.insert(i, byte);
        }
        3 if !out.is_empty() => {
            let i = at(rng, out.len() - 1);
            out.remove(i);
        }
        _ => {
            let (a, b) = (at(rng, out.len()), at(rng, other.len()));
            out.splice(a..a, other[b..].iter().take(16).copied());
        }
    }
    out
}

fn run(target: &str, check: fn(&[u8])) {
    let inputs = corpus(target).len();
    run_mutating(target, check, (MUTATIONS / inputs).min(MUTATIONS_PER_INPUT));
}

fn run_mutating(target: &str, check: fn(&[u8]), mutations: usize) {
    let inputs = corpus(target);
    let mut rng = Rng::new(0xF022);
    for input in &inputs {
        check(input);
        let mut current = input.clone();
        for _ in 0..mutations {
            let other = rng.pick(&inputs).clone();
            current = mutate(&mut rng, &current, &other);
            let result = std::panic::catch_unwind(|| check(&current));
            if result.is_err() {
                // Saved for `cargo +nightly fuzz run <target> <file>` and for the corpus.
                let saved = std::env::temp_dir().join(format!("fsdb-fuzz-failure-{target}"));
                std::fs::write(&saved, &current).unwrap();
                panic!(
                    "{target}: the check failed on {:?} (saved as {})",
                    String::from_utf8_lossy(&current),
                    saved.display()
                );
            }
            if rng.chance(10) {
                current = input.clone();
            }
        }
    }
}

#[test]
fn where_expressions() {
    run("where_expr", fsdb::testing::check_where);
}

#[test]
fn definitions_files() {
    run("definitions", fsdb::testing::check_definitions);
}

#[test]
fn events_as_json() {
    run("event_json", fsdb::testing::check_event_json);
}

#[test]
fn csv_files() {
    run("csv", fsdb::testing::check_csv);
}

#[test]
fn engine_model() {
    run_mutating("engine_model", crate::engine_model::run, MODEL_MUTATIONS);
    let count = std::env::var("FSDB_MODEL_INPUTS").map_or(MODEL_RANDOM_INPUTS, |n| {
        n.parse().expect("FSDB_MODEL_INPUTS is a number")
    });
    let seed = std::env::var("FSDB_MODEL_SEED")
        .map_or(0x30DE1, |n| n.parse().expect("FSDB_MODEL_SEED is a number"));
    let mut rng = Rng::new(seed);
    for i in 0..count {
        let len = rng.below(400) as usize;
        let input: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
        if std::panic::catch_unwind(|| crate::engine_model::run(&input)).is_err() {
            let saved = std::env::temp_dir().join("fsdb-fuzz-failure-engine_model");
            std::fs::write(&saved, &input).unwrap();
            panic!(
                "engine model: random input {i} of seed {seed} failed (saved as {})",
                saved.display()
            );
        }
    }
}

#[test]
fn feature_query_strings() {
    run("query_params", fsdb::testing::check_query_params);
}

#[test]
fn log_records() {
    run("log_record", fsdb::testing::check_log_record);
}
