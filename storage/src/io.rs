//! The I/O seam: every file operation of the log goes through [`Vfs`] and [`VfsFile`].
//!
//! Two implementations share one contract: [`OsVfs`] (the real file system, `pwrite`,
//! `fdatasync`, memory maps of sealed files) and [`sim::SimVfs`] (an in-memory file system
//! that keeps a *written* and a *durable* image of every file, can crash at any operation
//! and can fail any operation). The log is tested against the
//! simulation for power loss and I/O faults and runs on the OS implementation.
//!
//! This module must never interpret bytes: it moves them and makes them durable.

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod os;
pub mod sim;

pub use os::{LOCK_WAIT, OsVfs};

/// How [`Vfs::open_file`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Create a new file; fail if it exists.
    CreateNew,
    /// Open an existing file for reading and writing.
    ReadWrite,
    /// Open an existing file for reading only.
    ReadOnly,
}

/// A read-only view of a whole file's bytes (a memory map, or a copy in the simulation).
pub type FileBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A held directory lock; dropping it releases the lock.
pub trait DirLock: Send + Sync + Debug {}

/// The file-system operations the storage layer needs, and nothing more.
pub trait Vfs: Send + Sync + Debug {
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names (not paths) of the entries of a directory, in no particular order.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VfsFile>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Make the directory's entries (created, removed, renamed files) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// The whole content of a file that is no longer written (a sealed segment).
    fn map_readonly(&self, path: &Path) -> io::Result<FileBytes>;
    /// Take an exclusive lock on `dir` (creating the lock file `name` in it); a second
    /// holder, in this process or another, gets `ErrorKind::WouldBlock` (on the real file
    /// system after waiting [`LOCK_WAIT`] for the lock to be let go).
    fn lock_dir(&self, dir: &Path, name: &str) -> io::Result<Box<dyn DirLock>>;
}

/// A directory operation that failed: which one, on what.
#[derive(Debug)]
pub struct DirError {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

/// The directory that holds `path`'s name: its parent, or `.` for a relative path of one
/// component (whose parent is the empty path); `None` for a root.
fn parent_dir(path: &Path) -> Option<&Path> {
    match path.parent() {
        Some(parent) if parent.as_os_str().is_empty() => Some(Path::new(".")),
        parent => parent,
    }
}

/// Make `path`'s name durable: sync the directory that holds it (nothing for a root).
pub fn sync_name(vfs: &dyn Vfs, path: &Path) -> Result<(), DirError> {
    let Some(parent) = parent_dir(path) else {
        return Ok(());
    };
    vfs.sync_dir(parent).map_err(|source| DirError {
        op: "fsync directory",
        path: parent.to_path_buf(),
        source,
    })
}

/// Create `dir` and its missing ancestors, each one's entry made durable in its parent
/// (`sync_dir`, from the top down). Directories that existed are left as they are.
pub fn create_dir_durably(vfs: &dyn Vfs, dir: &Path) -> Result<(), DirError> {
    let missing = |path: &Path| {
        let listed = vfs.list_dir(path);
        matches!(listed, Err(e) if e.kind() == io::ErrorKind::NotFound)
    };
    // (A relative path's last ancestor is the empty path: the working directory, there.)
    let created: Vec<&Path> = (dir.ancestors())
        .take_while(|a| !a.as_os_str().is_empty() && missing(a))
        .collect();
    vfs.create_dir_all(dir).map_err(|source| DirError {
        op: "create directory",
        path: dir.to_path_buf(),
        source,
    })?;
    for path in created.iter().rev() {
        sync_name(vfs, path)?;
    }
    Ok(())
}

/// An open file.
#[expect(
    clippy::len_without_is_empty,
    reason = "a file's length is a byte count, not a collection size"
)]
pub trait VfsFile: Send + Sync + Debug {
    /// Read up to `buf.len()` bytes at `offset`; returns how many were read (0 at end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Write all of `buf` at `offset`, or fail. After a failure any prefix of `buf` may have
    /// been written.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make the file's data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
}

impl dyn VfsFile + '_ {
    /// Read exactly `buf.len()` bytes at `offset`; a short file is `UnexpectedEof`.
    pub fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.read_at(buf, offset)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf = &mut buf[n..];
            offset += n as u64;
        }
        Ok(())
    }
}

/// `dir/name`, the way every path of the storage layer is built.
pub(crate) fn child(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
