//! The bytes of a segment file: header, record frames, seal trailer. Pure functions over
//! byte slices; docs/format.md is the specification they implement.
//!
//! ```text
//! segment  = header frame* trailer?          (trailer only on sealed segments)
//! header   = magic "FSDBLOG\0" | version u32 | flags u32 | base_lsn u64 | reserved u32 | crc u32
//! frame    = crc u32 | len u32 | lsn u64 | durable u32 | batch_left u32 | payload[len]
//! trailer  = magic "FSDBSEAL" | next_lsn u64 | records_end u64 | reserved u32 | crc u32
//! ```
//! All integers are little-endian. Every checksum is CRC-32 (IEEE, `crc32fast`) of the bytes
//! it follows or precedes as stated below; a frame's covers its whole header after the crc
//! field, so the length is covered too, and a length of 0 is invalid, so all-zero bytes
//! never decode as a frame.

use crate::Lsn;
use crate::checksum::crc32;

pub const HEADER_BYTES: usize = 32;
pub const FRAME_HEADER_BYTES: usize = 24;
pub const TRAILER_BYTES: usize = 32;

pub const SEGMENT_MAGIC: [u8; 8] = *b"FSDBLOG\0";
pub const SEAL_MAGIC: [u8; 8] = *b"FSDBSEAL";
pub const FORMAT_VERSION: u32 = 1;

/// The largest payload any configuration may allow: a frame length must stay below the
/// value the seal magic's bytes 4..8 read as (`"SEAL"` = 0x4C41_4553), so that a trailer can
/// never be mistaken for a frame header.
pub const RECORD_BYTES_HARD_MAX: u32 = 64 << 20;
const _: () = assert!(RECORD_BYTES_HARD_MAX < u32::from_le_bytes(*b"SEAL"));

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub base_lsn: Lsn,
}

/// The fixed fields of a record frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub lsn: Lsn,
    /// How many bytes of this segment were known to be durable (fsynced) when the frame
    /// was written. Recovery uses it to tell a torn tail from damage to synced data.
    pub durable: u32,
    /// How many records of the same batch follow this one; 0 ends a batch.
    pub batch_left: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// The LSN the next segment starts at.
    pub next_lsn: Lsn,
    /// The offset at which the trailer begins (the end of the last frame).
    pub records_end: u64,
}

/// Why bytes are not a valid frame (or header, or trailer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("truncated: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("zero-length record")]
    ZeroLength,
    #[error("record length {len} exceeds the limit {max}")]
    TooLong { len: u32, max: u32 },
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported format version {0}")]
    Version(u32),
    #[error("reserved field is not zero")]
    Reserved,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn need(bytes: &[u8], needed: usize) -> Result<(), FormatError> {
    if bytes.len() < needed {
        return Err(FormatError::Truncated {
            needed,
            available: bytes.len(),
        });
    }
    Ok(())
}

fn check_crc(stored: u32, covered: &[u8]) -> Result<(), FormatError> {
    let computed = crc32(covered);
    if stored != computed {
        return Err(FormatError::Checksum { stored, computed });
    }
    Ok(())
}

pub fn encode_header(header: SegmentHeader) -> [u8; HEADER_BYTES] {
    let mut b = [0u8; HEADER_BYTES];
    b[0..8].copy_from_slice(&SEGMENT_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    // 12..16 flags and 24..28 reserved stay zero.
    b[16..24].copy_from_slice(&header.base_lsn.to_le_bytes());
    let crc = crc32(&b[..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

pub fn decode_header(bytes: &[u8]) -> Result<SegmentHeader, FormatError> {
    need(bytes, HEADER_BYTES)?;
    check_crc(u32_at(bytes, 28), &bytes[..28])?;
    if bytes[0..8] != SEGMENT_MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = u32_at(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(FormatError::Version(version));
    }
    if u32_at(bytes, 12) != 0 || u32_at(bytes, 24) != 0 {
        return Err(FormatError::Reserved);
    }
    Ok(SegmentHeader {
        base_lsn: u64_at(bytes, 16),
    })
}

/// Append one frame to `out`.
pub fn encode_frame(out: &mut Vec<u8>, header: FrameHeader, payload: &[u8]) {
    debug_assert_eq!(header.len as usize, payload.len());
    debug_assert!(header.len > 0, "zero-length records are not encodable");
    // The header built on the stack: one check of the vector's room per frame, not six.
    let mut head = [0u8; FRAME_HEADER_BYTES];
    head[4..8].copy_from_slice(&header.len.to_le_bytes());
    head[8..16].copy_from_slice(&header.lsn.to_le_bytes());
    head[16..20].copy_from_slice(&header.durable.to_le_bytes());
    head[20..24].copy_from_slice(&header.batch_left.to_le_bytes());
    let start = out.len();
    out.reserve(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    let crc = crc32(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Decode the frame at the start of `bytes`; returns its header and payload. The frame
/// occupies `FRAME_HEADER_BYTES + header.len` bytes.
pub fn decode_frame(
    bytes: &[u8],
    record_bytes_max: u32,
) -> Result<(FrameHeader, &[u8]), FormatError> {
    need(bytes, FRAME_HEADER_BYTES)?;
    let len = u32_at(bytes, 4);
    if len == 0 {
        return Err(FormatError::ZeroLength);
    }
    if len > record_bytes_max {
        return Err(FormatError::TooLong {
            len,
            max: record_bytes_max,
        });
    }
    let end = FRAME_HEADER_BYTES + len as usize;
    need(bytes, end)?;
    check_crc(u32_at(bytes, 0), &bytes[4..end])?;
    let header = FrameHeader {
        len,
        lsn: u64_at(bytes, 8),
        durable: u32_at(bytes, 16),
        batch_left: u32_at(bytes, 20),
    };
    Ok((header, &bytes[FRAME_HEADER_BYTES..end]))
}

pub fn encode_trailer(trailer: Trailer) -> [u8; TRAILER_BYTES] {
    let mut b = [0u8; TRAILER_BYTES];
    b[0..8].copy_from_slice(&SEAL_MAGIC);
    b[8..16].copy_from_slice(&trailer.next_lsn.to_le_bytes());
    b[16..24].copy_from_slice(&trailer.records_end.to_le_bytes());
    let crc = crc32(&b[..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

pub fn decode_trailer(bytes: &[u8]) -> Result<Trailer, FormatError> {
    need(bytes, TRAILER_BYTES)?;
    check_crc(u32_at(bytes, 28), &bytes[..28])?;
    if bytes[0..8] != SEAL_MAGIC {
        return Err(FormatError::BadMagic);
    }
    if u32_at(bytes, 24) != 0 {
        return Err(FormatError::Reserved);
    }
    Ok(Trailer {
        next_lsn: u64_at(bytes, 8),
        records_end: u64_at(bytes, 16),
    })
}

/// The file name of the segment whose first record has LSN `base`.
pub fn segment_file_name(base: Lsn) -> String {
    format!("{base:020}.log")
}

/// The base LSN in a segment file name, if `name` is one.
pub fn parse_segment_file_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All-zero bytes of any length never decode as a frame, header or trailer.
    #[test]
    fn zero_bytes_never_decode() {
        for n in 0..256 {
            let zeros = vec![0u8; n];
            assert!(decode_frame(&zeros, RECORD_BYTES_HARD_MAX).is_err());
            assert!(decode_header(&zeros).is_err());
            assert!(decode_trailer(&zeros).is_err());
        }
    }

    /// A frame round-trips, and flipping any single bit of it is detected.
    #[test]
    fn frame_round_trip_and_every_bit_flip_detected() {
        let header = FrameHeader {
            len: 5,
            lsn: 42,
            durable: 32,
            batch_left: 1,
        };
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, header, b"hello");
        assert_eq!(decode_frame(&bytes, 1024), Ok((header, &b"hello"[..])));
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_frame(&damaged, 1024).is_err(),
                "bit {bit} flip accepted"
            );
        }
    }

    /// A trailer's first eight bytes can never pass as a frame header.
    #[test]
    fn trailer_is_not_a_frame() {
        let t = encode_trailer(Trailer {
            next_lsn: 7,
            records_end: 100,
        });
        assert!(matches!(
            decode_frame(&t, RECORD_BYTES_HARD_MAX),
            Err(FormatError::TooLong { .. })
        ));
        assert_eq!(decode_trailer(&t).unwrap().next_lsn, 7);
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_file_name(1), "00000000000000000001.log");
        assert_eq!(parse_segment_file_name("00000000000000000001.log"), Some(1));
        assert_eq!(parse_segment_file_name("1.log"), None);
        assert_eq!(parse_segment_file_name("0000000000000000000a.log"), None);
    }
}
