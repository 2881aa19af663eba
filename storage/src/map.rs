//! Memory maps of sealed log segments. This module holds the crate's only `unsafe`.

#![expect(
    unsafe_code,
    reason = "memory-mapping sealed segments is this module's one job"
)]

use std::fs::File;
use std::io;

use memmap2::{Advice, Mmap};

/// A read-only map of a whole sealed file.
#[derive(Debug)]
pub(crate) struct SealedMap(Mmap);

impl AsRef<[u8]> for SealedMap {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Map `file`, which must be a sealed segment.
pub(crate) fn map_sealed_file(file: &File) -> io::Result<SealedMap> {
    // SAFETY: a mapped file must not change while the map exists, or reads through the
    // map see torn data (or SIGBUS after a truncation). Only sealed segments are mapped:
    // a segment is sealed by writing its trailer and fsyncing it before it leaves the
    // writer, and from then on no code path of this crate writes, truncates or removes
    // it while the `Log` is open (repair, the only path that rewrites a segment, runs in
    // `Log::open` before any reader exists). The directory lock keeps other fsdb
    // processes from opening the log for writing. A process outside fsdb that edits the
    // files breaks this contract; that is documented in docs/format.md.
    let map = unsafe { Mmap::map(file)? };
    // Scans read segments front to back; the hint only affects readahead.
    let _ = map.advise(Advice::Sequential);
    Ok(SealedMap(map))
}
