//! The cargo-fuzz corpora of fsdb's parsers (`fuzz/corpus/{where_expr, definitions,
//! event_json, query_params}`), replayed on stable, each input also mutated a bounded
//! number of times (byte flips, cuts, splices) so that CI fuzzes a little on every run.
//! The checks are `fsdb::testing`'s, the same the fuzz targets run.

use std::path::Path;

use crate::differential::Rng;

/// Mutations per corpus input.
const MUTATIONS: usize = 5_000;

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
    let inputs = corpus(target);
    let mut rng = Rng::new(0xF022);
    for input in &inputs {
        check(input);
        let mut current = input.clone();
        for _ in 0..MUTATIONS {
            let other = rng.pick(&inputs).clone();
            current = mutate(&mut rng, &current, &other);
            let result = std::panic::catch_unwind(|| check(&current));
            if result.is_err() {
                panic!(
                    "{target}: the check failed on {:?}",
                    String::from_utf8_lossy(&current)
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
fn feature_query_strings() {
    run("query_params", fsdb::testing::check_query_params);
}
