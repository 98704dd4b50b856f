//! The durable-write primitives under the local store ([`crate::storage::LocalDir`]): the error naming the file,
//! the temporary name, the directory fsync, and [`write_atomic`] for callers that hold a path.
//!
//! A file is written to a temporary file beside the target, fsynced, renamed over the target, and the directory
//! is fsynced, so that after a crash the target holds either its old bytes or all of its new ones.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::storage::{LocalDir, PutMode, Storage};

/// An I/O error of a durable write, with the file it happened on (the target or its temporary twin).
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FsError {
    /// The file the failing operation touched.
    pub path: PathBuf,
    /// What the operating system said.
    #[source]
    pub source: io::Error,
}

impl From<FsError> for crate::IndexError {
    fn from(e: FsError) -> Self {
        crate::IndexError::io(e.path, e.source)
    }
}

/// The temporary name used while `path` is being replaced (`<name>.tmp`).
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes `bytes` to `path` atomically and durably (temp file, fsync, rename, directory fsync): a
/// [`PutMode::Overwrite`] put of the file through the [`LocalDir`] of its folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let (store, name) = LocalDir::for_file(path)?;
    store.put(&name, bytes, PutMode::Overwrite)
}

/// fsyncs a directory so that a created, renamed or removed entry is durable (best effort where unsupported).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
