//! The one checksum of everything fsdb persists: CRC-32 (IEEE polynomial), as
//! `crc32fast` computes it (docs/format.md).

use std::sync::OnceLock;

/// CRC-32 of `bytes`, equal to `crc32fast::hash(bytes)`. That function detects the CPU's
/// features at every call, which for a log record (~90 bytes) is about a sixth of the
/// time; here a hasher made once is copied for each call instead.
#[inline]
pub fn crc32(bytes: &[u8]) -> u32 {
    static PROTOTYPE: OnceLock<crc32fast::Hasher> = OnceLock::new();
    let mut hasher = PROTOTYPE.get_or_init(crc32fast::Hasher::new).clone();
    hasher.update(bytes);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The same checksum as `crc32fast::hash`, short inputs and long, from any start.
        #[test]
        fn crc32_is_crc32fasts(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            skip in 0usize..17,
        ) {
            let bytes = &bytes[skip.min(bytes.len())..];
            proptest::prop_assert_eq!(crc32(bytes), crc32fast::hash(bytes));
        }
    }

    /// The standard check value of CRC-32/ISO-HDLC.
    #[test]
    fn crc32_of_the_check_string() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }
}
