//! Helpers shared by the log tests: small logs on the simulated file system and a
//! deterministic scripted workload.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fsdb_storage::io::Vfs;
use fsdb_storage::io::sim::SimVfs;
use fsdb_storage::{Durability, Log, LogError, LogOptions, Lsn};

pub const DIR: &str = "/db/log";

pub fn dir() -> PathBuf {
    PathBuf::from(DIR)
}

/// Options that make rotation frequent in small tests.
pub fn small_options(durability: Durability) -> LogOptions {
    LogOptions {
        durability,
        segment_bytes_max: 4096,
        record_bytes_max: 4096,
        ..LogOptions::default()
    }
}

pub fn open_sim(vfs: &SimVfs, options: LogOptions) -> Result<Log, LogError> {
    Log::open_with(Arc::new(vfs.clone()), &dir(), options)
}

/// A tiny deterministic generator (splitmix64), so that failures print a reusable seed.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The batches of a scripted workload: `batches` batches of 1..=4 records of 1..=300 bytes,
/// each payload naming its batch and index so that any mix-up is visible.
pub fn script(seed: u64, batches: usize) -> Vec<Vec<Vec<u8>>> {
    let mut rng = Rng(seed);
    (0..batches)
        .map(|b| {
            let records = 1 + rng.below(4) as usize;
            (0..records)
                .map(|r| {
                    let len = 1 + rng.below(300) as usize;
                    let mut payload = format!("batch {b} record {r} ").into_bytes();
                    payload.resize(len.max(payload.len()), b'a' + (b % 26) as u8);
                    payload
                })
                .collect()
        })
        .collect()
}

/// Every record of the log, in order, as (lsn, payload).
pub fn read_all(log: &Log) -> Result<Vec<(Lsn, Vec<u8>)>, LogError> {
    log.scan(log.first_lsn())?
        .map(|r| r.map(|r| (r.lsn, r.payload)))
        .collect()
}

/// The segment files of a simulated log, in order, with their bytes.
pub fn segment_files(vfs: &SimVfs) -> Vec<(PathBuf, Vec<u8>)> {
    let mut names: Vec<String> = vfs
        .list_dir(Path::new(DIR))
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let path = dir().join(n);
            let bytes = vfs.read_file(&path).unwrap();
            (path, bytes)
        })
        .collect()
}
