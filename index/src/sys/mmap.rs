//! Read-only memory maps of immutable files.
//!
//! chamfer never modifies a shard file in place: shards are written to a temporary file, fsynced and renamed,
//! and only then opened. That is what makes a read-only map sound here (see the SAFETY note).
use std::fs::File;

/// A read-only memory map of a whole file.
pub(crate) struct ReadOnlyMap(memmap2::Mmap);

impl ReadOnlyMap {
    /// Maps `file` read-only.
    pub(crate) fn new(file: &File) -> std::io::Result<Self> {
        // SAFETY: memmap2 requires that the mapped file is not modified or truncated for the lifetime of the map,
        // or reads through the map would observe changing bytes (or SIGBUS on truncation). chamfer only maps
        // shard files, which are immutable once renamed into place (writers use temp file + rename, and deletion
        // unlinks the name, which keeps the inode alive while mapped). External tampering is outside the
        // contract, like for every mmap-based store; every byte read is bounds-checked and checksummed at open.
        let map = unsafe { memmap2::Mmap::map(file)? };
        Ok(ReadOnlyMap(map))
    }

    /// Advises the kernel that the whole map will be read soon (best effort).
    pub(crate) fn will_need(&self) {
        let _ = self.0.advise(memmap2::Advice::WillNeed);
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.0
    }
}
