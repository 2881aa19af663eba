//! The library's error type: one enum, structured fields, no catch-all strings.

use std::path::PathBuf;

use fsdb_storage::codec::CodecError;
use fsdb_storage::state::StateError;
use fsdb_storage::{LogError, Lsn};

use crate::catalog::DefinitionError;
use crate::event::EventError;
use crate::time::TimeError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Definition(#[from] DefinitionError),
    #[error("{0}")]
    Event(#[from] EventError),
    #[error("unknown stream {0:?}")]
    UnknownStream(String),
    #[error("unknown feature {0:?}")]
    UnknownFeature(String),
    #[error("batch of {len} events exceeds the limit of {max}")]
    BatchTooLarge { len: usize, max: usize },
    #[error("{0}")]
    Time(#[from] TimeError),
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("state: {0}")]
    State(#[from] StateError),
    #[error("the data directory {dir} is locked by another process")]
    Locked { dir: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("log record {lsn} cannot be decoded: {source}")]
    BadRecord {
        lsn: Lsn,
        #[source]
        source: CodecError,
    },
    /// A record that decodes but does not fit the catalog it is replayed against.
    #[error("log record {lsn} does not fit the catalog: {reason}")]
    RecordMismatch { lsn: Lsn, reason: &'static str },
    #[error("state row {key:02x?} cannot be decoded: {reason}")]
    BadStateRow { key: Vec<u8>, reason: String },
    #[error(
        "the log starts at LSN {log_first} but the state needs it from {needed}; the log was cut (repair?) below the state: delete the state directory to rebuild from what the log holds"
    )]
    LogBehindState { log_first: Lsn, needed: Lsn },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
