//! Arbitrary bytes as a log payload (`fsdb::testing::check_log_record`): the hand-written
//! event decoder agrees with bincode's serde decoding, result for result and error for
//! error, and re-encodes what it decodes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fsdb::testing::check_log_record(data));
