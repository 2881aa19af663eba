//! Arbitrary bytes as a frame, segment header and seal trailer: decoding never panics and
//! whatever decodes re-encodes identically.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fsdb_storage::testing::check_frame_decode(data));
