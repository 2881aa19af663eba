//! The storage crate's integration tests: one binary, a module per property.

mod common;
mod concurrency;
mod damage;
mod faults;
mod fuzz_corpus;
mod lock;
mod power_loss;
mod round_trip;
mod sorted_runs;
mod state_crash;
