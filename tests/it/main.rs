//! fsdb's integration tests: one binary, a module per property.

mod agg_laws;
mod bad_input;
mod bounded_work;
mod cli;
mod concurrency;
mod crash;
mod differential;
mod edge_cases;
mod engine_model;
mod fixtures;
mod fuzz_corpus;
mod generate;
mod http;
mod lifecycle;
mod power_loss;
mod reference;
mod state_damage;
mod training;
