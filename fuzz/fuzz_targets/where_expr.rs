//! Arbitrary bytes through one of fsdb's parsers (`fsdb::testing::check_where`): no panic, and
//! what parses survives its own canonical form.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fsdb::testing::check_where(data));
