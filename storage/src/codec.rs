//! The encoding of log payloads: bincode 2.0.1 (pinned exactly in Cargo.toml), standard
//! configuration (little-endian, variable-length integers), and a size limit on every
//! decode so that a corrupt length prefix can never make the decoder allocate more than
//! a record can hold.

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::log::RECORD_BYTES_HARD_MAX;

const LIMIT: usize = RECORD_BYTES_HARD_MAX as usize;

/// The one configuration the log's payloads are written with. Changing it changes the
/// on-disk format (bump `FORMAT_VERSION` in `log::format`).
fn configuration() -> Configuration<LittleEndian, Varint, Limit<LIMIT>> {
    config::standard().with_limit::<LIMIT>()
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("decode: {trailing} trailing bytes after the value")]
    TrailingBytes { trailing: usize },
}

/// Append the encoding of `value` to `out`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, out, configuration())?;
    Ok(())
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(value, configuration())?)
}

/// Decode a value that borrows from `bytes` (strings as `&str`), occupying all of it.
pub fn decode_borrowed<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::borrow_decode_from_slice(bytes, configuration())?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes {
            trailing: bytes.len() - used,
        });
    }
    Ok(value)
}

/// Decode a value that must occupy all of `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, configuration())?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes {
            trailing: bytes.len() - used,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A length prefix claiming more elements than bytes exist fails without allocating.
    #[test]
    fn huge_length_prefix_is_rejected() {
        // Varint 0xFD = u64 follows; claim 2^40 elements.
        let mut bytes = vec![0xFDu8];
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode::<Vec<u64>>(&bytes).is_err());
    }

    #[test]
    fn round_trip_and_trailing_bytes() {
        let value = (7u32, String::from("card"), vec![1.5f64, -2.0]);
        let mut bytes = encode(&value).unwrap();
        assert_eq!(decode::<(u32, String, Vec<f64>)>(&bytes).unwrap(), value);
        bytes.push(0);
        assert!(matches!(
            decode::<(u32, String, Vec<f64>)>(&bytes),
            Err(CodecError::TrailingBytes { trailing: 1 })
        ));
    }
}
