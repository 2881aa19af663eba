//! Operations on a whole database: statistics, rebuilding state from the log, and checking
//! live state against a fresh replay.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fsdb_storage::io::{OsVfs, Vfs};
use fsdb_storage::state::Table;
use fsdb_storage::state::key::KeyReader;
use serde::Serialize;

use crate::engine::{Db, Options};
use crate::error::{Error, Result};
use crate::time::TimestampMs;

/// What `fsdb stats` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub streams: usize,
    pub features: usize,
    /// Distinct (stream, entity) pairs with events.
    pub entities: u64,
    /// Event rows in the state (duplicates by id excluded).
    pub events: u64,
    pub log_records: u64,
    pub log_bytes: u64,
    pub state_bytes: u64,
    pub applied_lsn: u64,
}

/// How a fresh replay of the log compares with the live state.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReplayCheck {
    /// Whether the persisted state (rows, ids, catalog) is identical.
    pub digests_equal: bool,
    pub entities_checked: u64,
    /// The query times every feature was compared at.
    pub times: Vec<TimestampMs>,
    /// Per feature: how many (entity, time) values differ.
    pub differences: BTreeMap<String, u64>,
    /// A few of the differences, for the report: (feature, entity, time, live, replayed).
    pub examples: Vec<(String, String, TimestampMs, String, String)>,
}

impl ReplayCheck {
    pub fn is_clean(&self) -> bool {
        self.digests_equal && self.differences.values().all(|&n| n == 0)
    }
}

const STATE_DIR: &str = "state";
const REBUILD_DIR: &str = "state.rebuild";
const OLD_DIR: &str = "state.old";

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

/// Copy a log directory for a replay that must not touch the original: sealed segments are
/// hard-linked (they are immutable), the active one (the last) is copied.
fn snapshot_log(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(io("create directory", to))?;
    let mut segments: Vec<PathBuf> = std::fs::read_dir(from)
        .map_err(io("list", from))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    for (i, path) in segments.iter().enumerate() {
        let target = to.join(path.file_name().expect("segments have names"));
        if i + 1 < segments.len() && std::fs::hard_link(path, &target).is_ok() {
            continue;
        }
        std::fs::copy(path, &target).map_err(io("copy", path))?;
    }
    Ok(())
}

impl Db {
    /// Counts and sizes.
    pub fn stats(&self) -> Result<Stats> {
        self.checkpoint()?;
        let (mut entities, mut events) = (0u64, 0u64);
        let mut last_entity: Option<Vec<u8>> = None;
        for item in self.inner.state.scan_prefix(Table::Events, &[]) {
            let (key, value) = item?;
            let prefix = key[..key.len() - 8].to_vec();
            if last_entity.as_ref() != Some(&prefix) {
                entities += 1;
                last_entity = Some(prefix);
            }
            let chunk: crate::event::RowChunk =
                fsdb_storage::codec::decode(&value).map_err(|e| Error::BadStateRow {
                    key: key.to_vec(),
                    reason: e.to_string(),
                })?;
            events += chunk.rows.len() as u64;
        }
        let catalog = self.catalog();
        let (log_bytes, state_bytes) = self.sizes();
        Ok(Stats {
            streams: catalog.streams.len(),
            features: catalog.features.len(),
            entities,
            events,
            log_records: self.log_end_lsn() - 1,
            log_bytes,
            state_bytes,
            applied_lsn: self.state_lsn()?,
        })
    }

    /// Every entity of `stream` that has events, in key order.
    pub fn entities(&self, stream: &str) -> Result<Vec<String>> {
        self.checkpoint()?;
        let id = self.inner.stream(stream)?.id;
        let prefix = id.to_be_bytes();
        let mut out: Vec<String> = Vec::new();
        for item in self.inner.state.scan_prefix(Table::Events, &prefix) {
            let (key, _) = item?;
            let mut reader = KeyReader::new(&key[4..]);
            let entity = reader
                .bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            if out.last() != Some(&entity) {
                out.push(entity);
            }
        }
        Ok(out)
    }

    /// Replay the whole log into a fresh state (in a scratch directory) and compare it with
    /// this database: state digests, and every feature of every entity at `times`
    /// (or, if empty, at the latest event time the log holds and the clock's now).
    pub fn check_against_replay(
        &self,
        scratch: &Path,
        times: &[TimestampMs],
        options: Options,
    ) -> Result<ReplayCheck> {
        let digest = self.state_digest()?;
        let log_copy = scratch.join("log");
        snapshot_log(&self.inner.dir.join("log"), &log_copy)?;
        let fresh = Db::open(scratch, options)?;
        let mut check = ReplayCheck {
            digests_equal: fresh.state_digest()? == digest,
            ..ReplayCheck::default()
        };
        let catalog = self.catalog();
        check.times = if times.is_empty() {
            let now = self.inner.options.clock.now_ms();
            vec![self.max_event_time()?.unwrap_or(now), now]
        } else {
            times.to_vec()
        };
        for stream in &catalog.streams {
            let names: Vec<&str> = catalog
                .features
                .iter()
                .filter(|f| f.stream == stream.name)
                .map(|f| f.name.as_str())
                .collect();
            for name in &names {
                check.differences.entry((*name).to_owned()).or_insert(0);
            }
            let mut entities = self.entities(&stream.name)?;
            entities.extend(fresh.entities(&stream.name)?);
            entities.sort();
            entities.dedup();
            for entity in &entities {
                check.entities_checked += 1;
                for &t in &check.times {
                    let live = self.as_of(entity, &names, t)?;
                    let replayed = fresh.as_of(entity, &names, t)?;
                    for ((name, a), b) in live.iter().zip(&replayed.values) {
                        if a != b {
                            *check.differences.entry(name.to_owned()).or_insert(0) += 1;
                            if check.examples.len() < 10 {
                                check.examples.push((
                                    name.to_owned(),
                                    entity.clone(),
                                    t,
                                    a.to_string(),
                                    b.to_string(),
                                ));
                            }
                        }
                    }
                }
            }
        }
        fresh.close()?;
        Ok(check)
    }

    /// The latest event time in the state, if any event was applied.
    fn max_event_time(&self) -> Result<Option<TimestampMs>> {
        let mut max = None;
        for item in self.inner.state.scan_prefix(Table::Events, &[]) {
            let (key, value) = item?;
            let chunk: crate::event::RowChunk =
                fsdb_storage::codec::decode(&value).map_err(|e| Error::BadStateRow {
                    key: key.to_vec(),
                    reason: e.to_string(),
                })?;
            for (time, _, _) in chunk.rows {
                max = max.max(Some(time));
            }
        }
        Ok(max)
    }

    /// Rebuild the state of the database in `dir` from its log: build it aside, then swap it
    /// in atomically (rename), so that the old state stays whole until the new one is.
    /// Works when the state directory is missing or damaged. Returns the number of log
    /// records replayed.
    pub fn rebuild(dir: impl AsRef<Path>, options: Options) -> Result<u64> {
        let dir = dir.as_ref();
        if !dir.join("log").exists() {
            return Err(Error::Io {
                op: "open",
                path: dir.join("log"),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        // Hold the directory lock for the whole rebuild, so no other process opens it.
        let _lock = OsVfs.lock_dir(dir, crate::engine::LOCK_FILE).map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                Error::Locked {
                    dir: dir.to_path_buf(),
                }
            } else {
                Error::Io {
                    op: "lock",
                    path: dir.join(crate::engine::LOCK_FILE),
                    source: e,
                }
            }
        })?;
        let scratch = dir.join(REBUILD_DIR);
        if scratch.exists() {
            std::fs::remove_dir_all(&scratch).map_err(io("remove", &scratch))?;
        }
        // Build: a database over the same log with an empty state directory. The scratch
        // directory holds a snapshot of the log; the state it builds is what we keep.
        snapshot_log(&dir.join("log"), &scratch.join("log"))?;
        let replayed = {
            let db = Db::open(&scratch, options)?;
            let replayed = db.open_report().replayed;
            db.close()?;
            replayed
        };
        let built = scratch.join(STATE_DIR);
        let current = dir.join(STATE_DIR);
        let old = dir.join(OLD_DIR);
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io("remove", &old))?;
        }
        if current.exists() {
            std::fs::rename(&current, &old).map_err(io("rename", &current))?;
        }
        std::fs::rename(&built, &current).map_err(io("rename", &built))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync directory", dir))?;
        for leftover in [&old, &scratch] {
            if leftover.exists() {
                std::fs::remove_dir_all(leftover).map_err(io("remove", leftover))?;
            }
        }
        Ok(replayed)
    }
}
