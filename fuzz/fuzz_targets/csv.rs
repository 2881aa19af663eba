//! Arbitrary bytes as a CSV file of events and as a training-set spine
//! (`fsdb::testing::check_csv`): no panic, and the event and spine rules hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fsdb::testing::check_csv(data));
