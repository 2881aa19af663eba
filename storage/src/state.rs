//! The state store: RocksDB holding what the engine derives from the log, committed in
//! atomic batches together with the LSN it covers.
//!
//! Tables are RocksDB column families. Keys are built with [`key`] (big-endian, so byte
//! order is numeric order); values are stored with a CRC-32 in front of them and checked on
//! every read. `applied_lsn` lives in the `meta` table and is only ever written inside the
//! same [`StateBatch`] as the state it describes.
//!
//! The state store is a cache of a fold over the log: it is written without RocksDB's WAL
//! and without its own fsync. A batch is atomic in the memtables; the tables are flushed
//! together (`atomic_flush`), so whatever survives a crash is the store as of one batch
//! boundary, with the `applied_lsn` of that boundary, and the batches lost with the
//! memtables are recovered by replaying the log from it. (With the WAL every event's row
//! was written to disk once more, by the checkpoint itself.)
//!
//! Bulk loads (a replay's rows) go another way: a [`SortedRun`] writes rows in key order to
//! a file of RocksDB's table format, which [`StateStore::ingest`] adds to the store whole,
//! bypassing the memtable; the `applied_lsn` that covers them is committed in a batch
//! after (a crash between the two replays them again, which applying allows: it is
//! idempotent).

use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Direction, IngestExternalFileOptions,
    IteratorMode, Options, ReadOptions, SstFileWriter, WriteBatch, WriteOptions,
};

use crate::Lsn;
use crate::checksum::crc32;

pub mod key;

/// The tables of the state store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    /// Small named values: `applied_lsn`, the format version, the catalog.
    Meta,
    /// The engine's entity-ordered event rows.
    Events,
    /// Accepted event ids, for duplicate detection across restarts.
    Dedup,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Meta, Table::Events, Table::Dedup];

    /// Whether the engine reads the table by whole keys (else by prefix scans).
    fn is_read_by_key(self) -> bool {
        matches!(self, Table::Meta)
    }

    fn cf_name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Events => "events",
            Table::Dedup => "dedup",
        }
    }
}

const APPLIED_LSN_KEY: &[u8] = b"applied_lsn";
/// Files of sorted runs are named `<prefix><n>.sst` in the store's directory until they
/// are ingested; one left by a crash is removed at the next open.
const RUN_FILE_PREFIX: &str = "run-";
const FORMAT_KEY: &[u8] = b"state_format";
/// Bumped whenever the meaning of any key or value changes; a mismatch asks for a rebuild.
pub const STATE_FORMAT_VERSION: u32 = 1;
const CHECKSUM_BYTES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store {path}: {source}")]
    Rocks {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error("state store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state store {path}: value of {table:?} key {key:02x?} is corrupt ({reason})")]
    Corrupt {
        path: PathBuf,
        table: Table,
        key: Vec<u8>,
        reason: &'static str,
    },
    #[error(
        "state store {path} has format version {found}, this build reads {expected}; rebuild it with `fsdb replay`"
    )]
    Format {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
}

/// Sizes of RocksDB's memory, named with units.
#[derive(Clone, Debug)]
pub struct StateOptions {
    /// RocksDB's cache of (uncompressed) blocks. Small by default: the engine keeps the
    /// entities it reads decoded in its own cache, and the OS page cache keeps the files,
    /// so this would be a third copy of the same rows.
    pub block_cache_bytes: usize,
    /// Memtable size per table.
    pub write_buffer_bytes: usize,
}

impl Default for StateOptions {
    fn default() -> Self {
        Self {
            block_cache_bytes: 16 << 20,
            write_buffer_bytes: 32 << 20,
        }
    }
}

/// An open state store.
pub struct StateStore {
    db: DB,
    path: PathBuf,
    /// How sorted runs' files are written, by table (in `Table::ALL` order): the table's
    /// block format, uncompressed like RocksDB's own flushes to the first levels.
    run_options: [Options; 3],
    /// The number of the next sorted run's file.
    next_run: AtomicU64,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.path)
            .finish()
    }
}

/// Writes to commit atomically, with the LSN they bring the state up to.
pub struct StateBatch<'a> {
    store: &'a StateStore,
    batch: WriteBatch,
    applied_lsn: Option<Lsn>,
    /// Where each value is sealed before the batch copies it (one buffer, reused).
    sealed: Vec<u8>,
}

impl std::fmt::Debug for StateBatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateBatch")
            .field("writes", &self.batch.len())
            .field("applied_lsn", &self.applied_lsn)
            .finish()
    }
}

fn seal(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHECKSUM_BYTES + value.len());
    seal_into(value, &mut out);
    out
}

fn seal_into(value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&crc32(value).to_le_bytes());
    out.extend_from_slice(value);
}

impl StateStore {
    pub fn open(path: &Path, options: &StateOptions) -> Result<StateStore, StateError> {
        let rocks = |source| StateError::Rocks {
            path: path.to_path_buf(),
            source,
        };
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_max_open_files(256);
        db_options.set_keep_log_file_num(2);
        db_options.increase_parallelism(2);
        // Writes skip the WAL (the log is the durable record): flushing every table at
        // once is what keeps a crash from leaving `applied_lsn` ahead of, or behind, the
        // rows it covers.
        db_options.set_atomic_flush(true);
        remove_run_files(path).map_err(|source| StateError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let block_format = |table: Table, cache: Option<&Cache>| {
            let mut block = BlockBasedOptions::default();
            if let Some(cache) = cache {
                block.set_block_cache(cache);
            }
            // A whole-key Bloom filter serves point reads only: the other tables are read
            // by prefix scans, which it cannot skip, and building it costs every flush,
            // compaction and sorted run (and memory: filters stay outside the cache).
            if table.is_read_by_key() {
                block.set_bloom_filter(10.0, false);
            }
            block
        };
        let run_options = Table::ALL.map(|table| {
            let mut run = Options::default();
            run.set_block_based_table_factory(&block_format(table, None));
            run.set_compression_type(rocksdb::DBCompressionType::None);
            run
        });
        let families = Table::ALL.map(|table| {
            let mut cf = Options::default();
            cf.set_block_based_table_factory(&block_format(table, Some(&cache)));
            cf.set_write_buffer_size(options.write_buffer_bytes);
            // Fresh data (L0, L1) is rewritten soon by compaction: compressing it costs CPU
            // on the checkpoint path for little; compress the levels that stay. With
            // RocksDB's dynamic level sizes (its default) the list counts from the base
            // level, the first below L0, so a store small enough to sit in one level below
            // L0 stays uncompressed there: at the reference workload's scale M (~0.5 GB),
            // a replay's compactions write L6 with `NoCompression` (its LOG says so).
            use rocksdb::DBCompressionType::{Lz4, None as Plain};
            cf.set_compression_per_level(&[Plain, Plain, Lz4, Lz4, Lz4, Lz4, Lz4]);
            ColumnFamilyDescriptor::new(table.cf_name(), cf)
        });
        let db = DB::open_cf_descriptors(&db_options, path, families).map_err(rocks)?;
        let store = StateStore {
            db,
            path: path.to_path_buf(),
            run_options,
            next_run: AtomicU64::new(0),
        };
        match store.get(Table::Meta, FORMAT_KEY)? {
            None => {
                let mut batch = store.batch();
                batch.put(Table::Meta, FORMAT_KEY, &STATE_FORMAT_VERSION.to_le_bytes());
                store.commit(batch)?;
            }
            Some(bytes) => {
                let found = bytes
                    .as_slice()
                    .try_into()
                    .map(u32::from_le_bytes)
                    .map_err(|_| {
                        store.corrupt(Table::Meta, FORMAT_KEY, "format version is not 4 bytes")
                    })?;
                if found != STATE_FORMAT_VERSION {
                    return Err(StateError::Format {
                        path: path.to_path_buf(),
                        found,
                        expected: STATE_FORMAT_VERSION,
                    });
                }
            }
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, table: Table) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(table.cf_name())
            .expect("every table's column family is created at open")
    }

    fn rocks(&self, source: rocksdb::Error) -> StateError {
        StateError::Rocks {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, table: Table, key: &[u8], reason: &'static str) -> StateError {
        StateError::Corrupt {
            path: self.path.clone(),
            table,
            key: key.to_vec(),
            reason,
        }
    }

    fn unseal(&self, table: Table, key: &[u8], stored: &[u8]) -> Result<Vec<u8>, StateError> {
        if stored.len() < CHECKSUM_BYTES {
            return Err(self.corrupt(table, key, "value shorter than its checksum"));
        }
        let (crc, value) = stored.split_at(CHECKSUM_BYTES);
        if u32::from_le_bytes(crc.try_into().expect("4 bytes")) != crc32(value) {
            return Err(self.corrupt(table, key, "checksum mismatch"));
        }
        Ok(value.to_vec())
    }

    /// The LSN through which the state reflects the log (0: nothing applied).
    pub fn applied_lsn(&self) -> Result<Lsn, StateError> {
        match self.get(Table::Meta, APPLIED_LSN_KEY)? {
            None => Ok(0),
            Some(bytes) => bytes
                .as_slice()
                .try_into()
                .map(u64::from_le_bytes)
                .map_err(|_| {
                    self.corrupt(Table::Meta, APPLIED_LSN_KEY, "applied_lsn is not 8 bytes")
                }),
        }
    }

    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        match self
            .db
            .get_pinned_cf(self.cf(table), key)
            .map_err(|e| self.rocks(e))?
        {
            None => Ok(None),
            Some(stored) => Ok(Some(self.unseal(table, key, &stored)?)),
        }
    }

    /// Every (key, value) of `table` whose key starts with `prefix`, in key order.
    pub fn scan_prefix<'a>(
        &'a self,
        table: Table,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = Result<(Box<[u8]>, Vec<u8>), StateError>> + 'a {
        let mut read = ReadOptions::default();
        read.set_verify_checksums(true);
        read.set_auto_readahead_size(false);
        if let Some(upper) = key::prefix_successor(prefix) {
            read.set_iterate_upper_bound(upper);
        }
        self.db
            .iterator_cf_opt(
                self.cf(table),
                read,
                IteratorMode::From(prefix, Direction::Forward),
            )
            .map(move |item| {
                let (key, stored) = item.map_err(|e| self.rocks(e))?;
                let value = self.unseal(table, &key, &stored)?;
                Ok((key, value))
            })
    }

    pub fn batch(&self) -> StateBatch<'_> {
        self.batch_with_capacity(0)
    }

    /// A batch with room for about `bytes` of keys and values (a big checkpoint's batch
    /// would otherwise grow, and copy itself, many times).
    pub fn batch_with_capacity(&self, bytes: usize) -> StateBatch<'_> {
        StateBatch {
            store: self,
            batch: WriteBatch::with_capacity_bytes(bytes),
            applied_lsn: None,
            sealed: Vec::new(),
        }
    }

    /// Apply every write of `batch` atomically (and its `applied_lsn`, if set).
    pub fn commit(&self, mut batch: StateBatch<'_>) -> Result<(), StateError> {
        assert!(
            std::ptr::eq(batch.store, self),
            "a batch commits to the store that made it"
        );
        if let Some(lsn) = batch.applied_lsn {
            batch.batch.put_cf(
                self.cf(Table::Meta),
                APPLIED_LSN_KEY,
                seal(&lsn.to_le_bytes()),
            );
        }
        let mut write = WriteOptions::default();
        // The log is the durable record; see the module documentation.
        write.disable_wal(true);
        self.db
            .write_opt(batch.batch, &write)
            .map_err(|e| self.rocks(e))
    }

    /// Start a sorted run of new rows for `table`: written to a file of its own, in key
    /// order, and added to the store by [`StateStore::ingest`] — for bulk loads, which it
    /// spares the WAL, the memtable and its flush.
    pub fn sorted_run(&self, table: Table) -> Result<SortedRun<'_>, StateError> {
        let number = self.next_run.fetch_add(1, Ordering::Relaxed);
        let path = self.path.join(format!("{RUN_FILE_PREFIX}{number}.sst"));
        let options = Table::ALL.iter().position(|&t| t == table);
        let writer = SstFileWriter::create(&self.run_options[options.expect("every table")]);
        writer.open(&path).map_err(|e| self.rocks(e))?;
        Ok(SortedRun {
            store: self,
            table,
            path,
            writer,
            sealed: Vec::new(),
            rows: 0,
        })
    }

    /// Add finished runs of `table` to the store, all or none. Where they hold a key the
    /// store (or an earlier run of the list) has, the later value wins, as with a put.
    pub fn ingest(&self, table: Table, runs: Vec<FinishedRun>) -> Result<(), StateError> {
        if runs.is_empty() {
            return Ok(());
        }
        assert!(
            runs.iter().all(|run| run.table == table),
            "runs are ingested into their own table"
        );
        let mut options = IngestExternalFileOptions::default();
        // The files are ours: RocksDB takes them in place (a link) rather than copying.
        options.set_move_files(true);
        let paths: Vec<&Path> = runs.iter().map(|run| run.path.as_path()).collect();
        // Moved into the store (linked: the runs' names, removed as they drop, are ours)
        // or not at all.
        self.db
            .ingest_external_file_cf_opts(self.cf(table), &options, paths)
            .map_err(|e| self.rocks(e))
    }

    /// Flush the memtables of every table to disk, together (at close, and before a state
    /// directory swap).
    pub fn flush(&self) -> Result<(), StateError> {
        let tables = Table::ALL.map(|table| self.cf(table));
        let mut options = rocksdb::FlushOptions::default();
        options.set_wait(true);
        self.db
            .flush_cfs_opt(&tables, &options)
            .map_err(|e| self.rocks(e))
    }

    /// Approximate bytes of memory RocksDB holds: memtables, table readers (index and
    /// filter blocks, kept outside the block cache) and the block cache.
    pub fn memory_bytes(&self) -> u64 {
        let per_table = self.sum_of_table_properties(&[
            "rocksdb.cur-size-all-mem-tables",
            "rocksdb.estimate-table-readers-mem",
        ]);
        // One cache shared by every table: counted once.
        let cache = self
            .db
            .property_int_value("rocksdb.block-cache-usage")
            .ok()
            .flatten();
        per_table + cache.unwrap_or(0)
    }

    /// Approximate bytes on disk (SST files) plus memtables.
    pub fn size_bytes(&self) -> u64 {
        self.sum_of_table_properties(&[
            "rocksdb.total-sst-files-size",
            "rocksdb.cur-size-all-mem-tables",
        ])
    }

    /// The sum of integer properties over every table (a property RocksDB cannot give
    /// counts as 0: these are estimates for reports).
    fn sum_of_table_properties(&self, properties: &[&str]) -> u64 {
        let mut total = 0;
        for table in Table::ALL {
            for property in properties {
                if let Ok(Some(v)) = self.db.property_int_value_cf(self.cf(table), *property) {
                    total += v;
                }
            }
        }
        total
    }
}

/// New rows of one table in strictly increasing key order, written to a file as they come
/// ([`StateStore::sorted_run`]).
pub struct SortedRun<'a> {
    store: &'a StateStore,
    table: Table,
    path: PathBuf,
    writer: SstFileWriter<'a>,
    /// Where each value is sealed before the writer copies it (one buffer, reused).
    sealed: Vec<u8>,
    rows: usize,
}

impl std::fmt::Debug for SortedRun<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SortedRun")
            .field("path", &self.path)
            .field("rows", &self.rows)
            .finish()
    }
}

impl SortedRun<'_> {
    /// Add a row; its key must be greater than the previous one's (else an error).
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.sealed.clear();
        seal_into(value, &mut self.sealed);
        self.writer
            .put(key, &self.sealed)
            .map_err(|e| self.store.rocks(e))?;
        self.rows += 1;
        Ok(())
    }

    /// Complete the file; `None` for a run without rows (there is nothing to ingest).
    pub fn finish(mut self) -> Result<Option<FinishedRun>, StateError> {
        if self.rows == 0 {
            drop(self.writer);
            let _ = std::fs::remove_file(&self.path);
            return Ok(None);
        }
        if let Err(e) = self.writer.finish() {
            let _ = std::fs::remove_file(&self.path);
            return Err(self.store.rocks(e));
        }
        Ok(Some(FinishedRun {
            table: self.table,
            path: self.path,
        }))
    }
}

/// A sorted run's complete file, waiting for [`StateStore::ingest`]; dropped, it removes
/// its file.
#[derive(Debug)]
pub struct FinishedRun {
    table: Table,
    path: PathBuf,
}

impl Drop for FinishedRun {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Remove sorted runs' files that a crash left behind in the store's directory.
fn remove_run_files(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(RUN_FILE_PREFIX) && name.ends_with(".sst") {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

impl StateBatch<'_> {
    pub fn put(&mut self, table: Table, key: &[u8], value: &[u8]) {
        self.sealed.clear();
        seal_into(value, &mut self.sealed);
        self.batch.put_cf(self.store.cf(table), key, &self.sealed);
    }

    pub fn delete(&mut self, table: Table, key: &[u8]) {
        self.batch.delete_cf(self.store.cf(table), key);
    }

    pub fn set_applied_lsn(&mut self, lsn: Lsn) {
        self.applied_lsn = Some(lsn);
    }

    /// How many writes the batch holds (not counting `applied_lsn`).
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty() && self.applied_lsn.is_none()
    }
}

#[cfg(test)]
mod tests {
    /// RocksDB computes its CRC-32C (every WAL record) in hardware on x86-64 only when its
    /// C++ is compiled with SSE4.2 and PCLMULQDQ, which librocksdb-sys asks for only when
    /// the Rust target has them: `.cargo/config.toml` enables them. A `RUSTFLAGS` that
    /// replaces the config builds RocksDB without them, which slows every state write and
    /// flatters the benchmark's ratios to its RocksDB peers.
    #[cfg(target_arch = "x86_64")]
    #[test]
    #[expect(
        clippy::assertions_on_constants,
        reason = "a check of the build's flags, reported as a failing test, not a build error"
    )]
    fn rocksdb_is_built_with_hardware_crc32c() {
        assert!(
            cfg!(all(target_feature = "sse4.2", target_feature = "pclmulqdq")),
            "built without SSE4.2 and PCLMULQDQ: RocksDB's CRC-32C runs in software \
             (a RUSTFLAGS replaced .cargo/config.toml's target flags?)"
        );
    }
}
