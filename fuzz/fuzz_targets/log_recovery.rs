//! Arbitrary bytes as log segments: recovery never panics, and what it keeps is exactly a
//! valid prefix (see `fsdb_storage::testing::check_log_recovery`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fsdb_storage::testing::check_log_recovery(data));
