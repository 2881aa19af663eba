//! [`SimVfs`]: an in-memory file system for power-loss and fault tests.
//!
//! Every file keeps two images: *written* (what reads see) and *durable* (what survived the
//! last `sync_data`), plus the list of writes made since. Directory entries are durable only
//! after `sync_dir` of their directory — a directory's own entry too: one created and never
//! synced into its parent is gone after a crash, with everything in it.
//! [`SimVfs::crash_image`] builds the file system a reboot would find: durable names,
//! durable bytes, and, depending on [`Damage`], none, a torn part, or garbage in place of
//! the unsynced writes.
//!
//! Mutating operations are numbered from 1. [`SimVfs::crash_at_op`] makes operation `n` and
//! every later one fail without effect (the process died there); [`SimVfs::inject`] makes
//! chosen operations fail with EIO, ENOSPC or a short write, once or persistently.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::{DirLock, FileBytes, OpenMode, Vfs, VfsFile};

/// The kinds of operation a fault or crash can hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    Create,
    Write,
    SyncData,
    SetLen,
    Remove,
    Rename,
    SyncDir,
}

/// What an injected fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The call fails with EIO and has no effect.
    Eio,
    /// The call fails with ENOSPC and has no effect.
    Enospc,
    /// Writes only: the first half of the buffer is written, then the call fails (ENOSPC).
    ShortWrite,
}

/// One injected fault: the `nth` call (1-based, counted from injection) of `op` fails, and
/// with `persistent` every later call of `op` fails too.
#[derive(Clone, Copy, Debug)]
pub struct Fault {
    pub op: OpKind,
    pub nth: u64,
    pub persistent: bool,
    pub kind: FaultKind,
}

/// What happens to unsynced writes in a crash image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// Every write since the last `sync_data` is lost.
    DropUnsynced,
    /// Unsynced writes survive in order, except that the last one is cut in half.
    TornLastWrite,
    /// The bytes of unsynced writes are replaced by pseudo-random garbage.
    Garbage { seed: u64 },
}

#[derive(Clone, Debug)]
enum Pending {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Clone, Debug, Default)]
struct Inode {
    written: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
    /// Failed syncs so far (write-back errors): like Linux's per-file error sequence, each
    /// is reported to the next sync through every handle open when it happened.
    errors: u64,
}

#[derive(Debug, Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    /// The namespace reads see.
    names: BTreeMap<PathBuf, u64>,
    /// The namespace as of the last `sync_dir` of each directory.
    durable_names: BTreeMap<PathBuf, u64>,
    /// Directories reads see.
    dirs: HashSet<PathBuf>,
    /// Directories whose entry in their parent was synced (`sync_dir` of the parent); a
    /// crash keeps a directory if it and every ancestor are here (a root always stays).
    durable_dirs: HashSet<PathBuf>,
    locks: HashSet<PathBuf>,
    ops: u64,
    crash_at: Option<u64>,
    faults: Vec<(Fault, u64)>,
    /// `sync_data` returns up to this long after it took effect ([`SimVfs::set_sync_latency`]).
    sync_latency: Duration,
}

/// The simulated file system. Clones share one state.
#[derive(Clone, Debug, Default)]
pub struct SimVfs {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct SimFile {
    state: Arc<Mutex<State>>,
    inode: u64,
    /// The inode's `errors` this handle has reported (at its opening: all there were).
    errors_reported: AtomicU64,
}

#[derive(Debug)]
struct SimLock {
    state: Arc<Mutex<State>>,
    path: PathBuf,
}

impl DirLock for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.state.lock().locks.remove(&self.path);
    }
}

fn crashed() -> io::Error {
    io::Error::other("simulated crash: the process is dead")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl State {
    /// Whether a crash keeps `dir`: a root, or a directory synced into a parent that stays.
    fn dir_survives(&self, dir: &Path) -> bool {
        match dir.parent() {
            None => true,
            Some(parent) => self.durable_dirs.contains(dir) && self.dir_survives(parent),
        }
    }

    /// Count one mutating operation and decide whether it fails: `Ok(None)` to proceed,
    /// `Ok(Some(kind))` for an injected fault, `Err` after the crash point.
    fn begin(&mut self, op: OpKind) -> io::Result<Option<FaultKind>> {
        self.ops += 1;
        if self.crash_at.is_some_and(|at| self.ops >= at) {
            return Err(crashed());
        }
        for (fault, seen) in &mut self.faults {
            if fault.op == op {
                *seen += 1;
                if *seen == fault.nth || (fault.persistent && *seen > fault.nth) {
                    return Ok(Some(fault.kind));
                }
            }
        }
        Ok(None)
    }
}

fn fault_error(kind: FaultKind) -> io::Error {
    match kind {
        FaultKind::Eio => io::Error::from_raw_os_error(5),
        FaultKind::Enospc | FaultKind::ShortWrite => io::Error::from_raw_os_error(28),
    }
}

impl SimVfs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Operation number `n` (1-based) and all later ones fail as if the process died.
    pub fn crash_at_op(&self, n: u64) {
        self.state.lock().crash_at = Some(n);
    }

    /// How many mutating operations have been attempted so far.
    pub fn ops(&self) -> u64 {
        self.state.lock().ops
    }

    pub fn inject(&self, fault: Fault) {
        self.state.lock().faults.push((fault, 0));
    }

    /// From now on every `sync_data` returns a pseudo-random time between 0 and `max`
    /// after it took effect, as a thread descheduled on its way out of `fdatasync` would:
    /// concurrent syncs then return in any order, whatever the order they took effect in.
    pub fn set_sync_latency(&self, max: Duration) {
        self.state.lock().sync_latency = max;
    }

    pub fn clear_faults(&self) {
        self.state.lock().faults.clear();
    }

    /// The file system a reboot would find now. Locks are not carried over.
    pub fn crash_image(&self, damage: Damage) -> SimVfs {
        let state = self.state.lock();
        let dirs: HashSet<PathBuf> = (state.dirs.iter())
            .filter(|dir| state.dir_survives(dir))
            .cloned()
            .collect();
        let names: BTreeMap<PathBuf, u64> = (state.durable_names.iter())
            .filter(|(path, _)| path.parent().is_some_and(|p| dirs.contains(p)))
            .map(|(path, id)| (path.clone(), *id))
            .collect();
        let mut image = State {
            durable_dirs: dirs.clone(),
            dirs,
            next_inode: state.next_inode,
            names: names.clone(),
            durable_names: names,
            ..State::default()
        };
        let mut seed = match damage {
            Damage::Garbage { seed } => seed | 1,
            _ => 1,
        };
        for &inode_id in state.durable_names.values() {
            let Some(inode) = state.inodes.get(&inode_id) else {
                continue;
            };
            let bytes = surviving_bytes(inode, damage, &mut seed);
            image.inodes.insert(
                inode_id,
                Inode {
                    written: bytes.clone(),
                    durable: bytes,
                    pending: Vec::new(),
                    errors: 0,
                },
            );
        }
        SimVfs {
            state: Arc::new(Mutex::new(image)),
        }
    }

    /// The file system the next process finds when this one died and the machine did not:
    /// every name and byte written is there, durable only as far as it was synced (a later
    /// [`SimVfs::crash_image`] of it drops the rest). Locks and the crash point are not
    /// carried over.
    pub fn process_crash_image(&self) -> SimVfs {
        let state = self.state.lock();
        let image = State {
            inodes: state.inodes.clone(),
            next_inode: state.next_inode,
            names: state.names.clone(),
            durable_names: state.durable_names.clone(),
            dirs: state.dirs.clone(),
            durable_dirs: state.durable_dirs.clone(),
            ..State::default()
        };
        SimVfs {
            state: Arc::new(Mutex::new(image)),
        }
    }

    /// The written bytes of a file (for tests that damage files directly).
    pub fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.state.lock();
        let id = state.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(state.inodes[id].written.clone())
    }

    /// Replace a file's bytes, written and durable (a test damaging a file at rest).
    pub fn write_file(&self, path: &Path, bytes: Vec<u8>) -> io::Result<()> {
        let mut state = self.state.lock();
        let id = *state.names.get(path).ok_or_else(|| not_found(path))?;
        let inode = state.inodes.get_mut(&id).expect("named inode exists");
        inode.written = bytes.clone();
        inode.durable = bytes;
        inode.pending.clear();
        Ok(())
    }
}

impl Pending {
    /// Apply this operation to a file's bytes.
    fn apply(&self, bytes: &mut Vec<u8>) {
        match *self {
            Pending::SetLen(len) => bytes.resize(len as usize, 0),
            Pending::Write {
                offset,
                bytes: ref data,
            } => {
                let end = offset as usize + data.len();
                if bytes.len() < end {
                    bytes.resize(end, 0);
                }
                bytes[offset as usize..end].copy_from_slice(data);
            }
        }
    }
}

/// A number in [0, 1) derived from `n` (splitmix64): deterministic, evenly spread.
fn pseudo_random_unit(n: u64) -> f64 {
    let mut z = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as f64 / (u64::MAX as f64 + 1.0)
}

/// The bytes of `inode` after a crash with `damage`.
fn surviving_bytes(inode: &Inode, damage: Damage, seed: &mut u64) -> Vec<u8> {
    let mut bytes = inode.durable.clone();
    if damage == Damage::DropUnsynced {
        return bytes;
    }
    let last = inode.pending.len().saturating_sub(1);
    for (i, pending) in inode.pending.iter().enumerate() {
        match *pending {
            Pending::SetLen(len) => bytes.resize(len as usize, 0),
            Pending::Write {
                offset,
                bytes: ref data,
            } => {
                let offset = offset as usize;
                let len = if damage == Damage::TornLastWrite && i == last {
                    data.len() / 2
                } else {
                    data.len()
                };
                let end = offset + len;
                if bytes.len() < end {
                    bytes.resize(end, 0);
                }
                for (k, byte) in bytes[offset..end].iter_mut().enumerate() {
                    *byte = match damage {
                        Damage::Garbage { .. } => {
                            // xorshift64: cheap, deterministic garbage.
                            *seed ^= *seed << 13;
                            *seed ^= *seed >> 7;
                            *seed ^= *seed << 17;
                            *seed as u8
                        }
                        _ => data[k],
                    };
                }
            }
        }
    }
    bytes
}

impl Vfs for SimVfs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        for ancestor in path.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let state = self.state.lock();
        if !state.dirs.contains(path) {
            return Err(not_found(path));
        }
        Ok(state
            .names
            .keys()
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VfsFile>> {
        let mut state = self.state.lock();
        let inode = match mode {
            OpenMode::CreateNew => {
                if let Some(kind) = state.begin(OpKind::Create)? {
                    return Err(fault_error(kind));
                }
                if state.names.contains_key(path) {
                    return Err(io::ErrorKind::AlreadyExists.into());
                }
                if !path.parent().is_some_and(|p| state.dirs.contains(p)) {
                    return Err(not_found(path));
                }
                let id = state.next_inode;
                state.next_inode += 1;
                state.inodes.insert(id, Inode::default());
                state.names.insert(path.to_path_buf(), id);
                id
            }
            OpenMode::ReadWrite | OpenMode::ReadOnly => {
                *state.names.get(path).ok_or_else(|| not_found(path))?
            }
        };
        let errors_reported = AtomicU64::new(state.inodes[&inode].errors);
        Ok(Arc::new(SimFile {
            state: Arc::clone(&self.state),
            inode,
            errors_reported,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        if let Some(kind) = state.begin(OpKind::Remove)? {
            return Err(fault_error(kind));
        }
        state
            .names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        if let Some(kind) = state.begin(OpKind::Rename)? {
            return Err(fault_error(kind));
        }
        let id = state.names.remove(from).ok_or_else(|| not_found(from))?;
        state.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        if let Some(kind) = state.begin(OpKind::SyncDir)? {
            return Err(fault_error(kind));
        }
        let state = &mut *state;
        state.durable_names.retain(|p, _| p.parent() != Some(path));
        for (p, id) in &state.names {
            if p.parent() == Some(path) {
                state.durable_names.insert(p.clone(), *id);
            }
        }
        for dir in &state.dirs {
            if dir.parent() == Some(path) {
                state.durable_dirs.insert(dir.clone());
            }
        }
        Ok(())
    }

    fn map_readonly(&self, path: &Path) -> io::Result<FileBytes> {
        Ok(Arc::new(self.read_file(path)?))
    }

    fn lock_dir(&self, dir: &Path, name: &str) -> io::Result<Box<dyn DirLock>> {
        let path = dir.join(name);
        let mut state = self.state.lock();
        if !state.locks.insert(path.clone()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(Box::new(SimLock {
            state: Arc::clone(&self.state),
            path,
        }))
    }
}

impl VfsFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let state = self.state.lock();
        let data = &state.inodes[&self.inode].written;
        let start = (offset as usize).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut state = self.state.lock();
        let fault = state.begin(OpKind::Write)?;
        let len = match fault {
            None => buf.len(),
            Some(FaultKind::ShortWrite) => buf.len() / 2,
            Some(kind) => return Err(fault_error(kind)),
        };
        let inode = state
            .inodes
            .get_mut(&self.inode)
            .expect("open inode exists");
        let offset_usize = offset as usize;
        if inode.written.len() < offset_usize + len {
            inode.written.resize(offset_usize + len, 0);
        }
        inode.written[offset_usize..offset_usize + len].copy_from_slice(&buf[..len]);
        inode.pending.push(Pending::Write {
            offset,
            bytes: buf[..len].to_vec(),
        });
        match fault {
            Some(kind) => Err(fault_error(kind)),
            None => Ok(()),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        let (result, latency) = {
            let mut state = self.state.lock();
            let fault = state.begin(OpKind::SyncData)?;
            let latency = state.sync_latency.mul_f64(pseudo_random_unit(state.ops));
            let inode = state
                .inodes
                .get_mut(&self.inode)
                .expect("open inode exists");
            let unreported = inode.errors > self.errors_reported.load(Ordering::Relaxed);
            let result = match fault {
                // Like Linux after a failed fsync: the dirty pages may be dropped. Model the
                // worst case: nothing of the pending writes is durable, and they are
                // forgotten (no later sync makes them durable, though reads still see them).
                Some(kind) => {
                    inode.errors += 1;
                    Err(fault_error(kind))
                }
                // A failure through another handle, not reported through this one yet.
                None if unreported => Err(fault_error(FaultKind::Eio)),
                None => {
                    for pending in &inode.pending {
                        pending.apply(&mut inode.durable);
                    }
                    Ok(())
                }
            };
            inode.pending.clear();
            self.errors_reported.store(inode.errors, Ordering::Relaxed);
            (result, latency)
        };
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        result
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.state.lock();
        if let Some(kind) = state.begin(OpKind::SetLen)? {
            return Err(fault_error(kind));
        }
        let inode = state
            .inodes
            .get_mut(&self.inode)
            .expect("open inode exists");
        inode.written.resize(len as usize, 0);
        inode.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.state.lock().inodes[&self.inode].written.len() as u64)
    }
}
