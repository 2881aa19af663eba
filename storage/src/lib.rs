//! fsdb-storage: bytes, positions and durability.
//!
//! - [`log`]: the append-only, checksummed, segmented event log — the source of truth.
//! - [`codec`]: the one pinned encoding of log payloads (bincode 2, size-limited decoding).
//! - [`checksum`]: the CRC-32 of every persisted byte.
//! - [`io`]: the I/O seam every file operation of the log goes through.
//!
//! Architecture invariant: this crate knows nothing about events, features or time. It
//! stores opaque payloads, hands out LSNs and positions, and says what is durable.

pub mod checksum;
pub mod codec;
pub mod io;
pub mod log;
mod map;
#[cfg(feature = "state")]
pub mod state;
pub mod testing;

pub use log::{
    Announced, Appended, CorruptKind, Durability, Log, LogError, LogOptions, LogStats, Lsn,
    OwnedRecord, Position, Record, RecoveryReport, Scan, VerifyReport,
};
