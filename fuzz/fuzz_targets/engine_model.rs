//! Arbitrary bytes as operations on a database (appends, rejected batches, queries, reopen,
//! checkpoints, materialiser passes, late definitions, replay), each checked against the
//! naive reference of the integration tests, whose files this target includes.
#![no_main]

#[path = "../../tests/it/engine_model.rs"]
mod engine_model;
#[allow(dead_code)]
#[path = "../../tests/it/generate.rs"]
mod generate;
#[path = "../../tests/it/reference.rs"]
mod reference;

libfuzzer_sys::fuzz_target!(|data: &[u8]| engine_model::run(data));
