//! The storage seam: one trait for chamfer's immutable files, with a local-directory implementation and an
//! in-memory one (which can also inject faults: a full disk, a failing file, damaged bytes).
//!
//! Files are write-once (WORM, as in tantivy's `Directory`): a file is written whole, becomes visible at once
//! (atomically) or not at all, and is never modified in place afterwards; it is read, mapped, listed and
//! deleted by name. Two ways in:
//!
//! * [`Storage::put`]: a small file from bytes in memory (a manifest, a codebook, a tombstone sidecar);
//! * [`Storage::create`]: a large file streamed through a [`FileWriter`] and published by
//!   [`FileWriter::commit`] (a shard, a data set's token matrix). Dropped without a commit, nothing is visible.
//!
//! Both publish with a [`PutMode`], the shape of `object_store`'s `PutMode`: [`PutMode::Create`] publishes only
//! when no file has the name (put-if-absent: an object store's conditional put, a hard link on a local disk),
//! [`PutMode::Overwrite`] replaces the file atomically (a manifest, the commit point of its directory). An
//! object-store implementation (the cluster's) fits the same trait: `put` is a PUT, `create` a multipart
//! upload, `map` a download into memory.
//!
//! Names are relative, `/`-separated (`segments/seg-0000000001.shard`), without empty, `.` or `..` components.
//! Errors are [`FsError`]s naming the file ([`Storage::locate`]): a missing file is [`io::ErrorKind::NotFound`],
//! a name taken under [`PutMode::Create`] is [`io::ErrorKind::AlreadyExists`], a full disk
//! [`io::ErrorKind::StorageFull`].
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::fsutil::FsError;

mod local;
mod memory;

pub use local::LocalDir;
pub use memory::{Fault, MemoryStorage};

/// How a file is published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Only when no file has the name (else [`io::ErrorKind::AlreadyExists`], and nothing changes).
    Create,
    /// Replacing the file of that name, if any, atomically: a reader sees the old bytes or the new ones.
    Overwrite,
}

/// A store of immutable files (see the module documentation).
pub trait Storage: Send + Sync + fmt::Debug {
    /// Where `name` lives, for error messages (a path on disk, or `memory:/<name>`).
    fn locate(&self, name: &str) -> PathBuf;
    /// Publishes `bytes` as `name` (durably: once this returns, the file survives a crash).
    fn put(&self, name: &str, bytes: &[u8], mode: PutMode) -> Result<(), FsError>;
    /// Starts streaming a file to be published as `name` by [`FileWriter::commit`].
    fn create(&self, name: &str, mode: PutMode) -> Result<Box<dyn FileWriter>, FsError>;
    /// The bytes of `name`.
    fn read(&self, name: &str) -> Result<Vec<u8>, FsError>;
    /// The bytes of `name` without copying them where the store can (a read-only memory map on a local disk).
    fn map(&self, name: &str) -> Result<FileBytes, FsError>;
    /// Whether `name` exists.
    fn exists(&self, name: &str) -> Result<bool, FsError>;
    /// Publishes the file `from` as `to` (with `mode`, as a put would) and removes `from`: on a local disk a
    /// rename, on an object store a copy and a delete. For files staged under one name and published under
    /// another once something else is done (a data set's token matrix, published last).
    fn rename(&self, from: &str, to: &str, mode: PutMode) -> Result<(), FsError>;
    /// Removes `name`; a missing file is not an error (deletion is idempotent, as on an object store).
    fn delete(&self, name: &str) -> Result<(), FsError>;
    /// The names under the folder `dir` (`""` for the top), files only, not recursive, sorted.
    fn list(&self, dir: &str) -> Result<Vec<String>, FsError>;
    /// The local directory behind the store, for code that must write files itself (the HNSW graph dump);
    /// None for stores without one.
    fn local_root(&self) -> Option<&Path> {
        None
    }
}

/// A file being streamed (see [`Storage::create`]).
pub trait FileWriter: Write + Send {
    /// Makes the file durable and publishes it under its name (with the [`PutMode`] given to `create`).
    fn commit(self: Box<Self>) -> Result<(), FsError>;
    /// Where the file will live (for error messages).
    fn locate(&self) -> PathBuf;
}

/// The bytes of a file, mapped or shared (see [`Storage::map`]); at least 8-byte aligned.
pub struct FileBytes(Inner);

enum Inner {
    Mapped(crate::sys::mmap::ReadOnlyMap),
    Shared(Arc<memory::Blob>),
}

impl FileBytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Inner::Mapped(m) => m.as_slice(),
            Inner::Shared(b) => b.bytes(),
        }
    }
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileBytes({} bytes)", self.as_slice().len())
    }
}

/// Checks a file name (see the module documentation).
pub fn check_name(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{name:?} is not a storage file name (relative, `/`-separated, no `.` or `..`)"
            ),
        ))
    }
}

/// The folder part of a name (`""` at the top) and its last component.
pub fn split_name(name: &str) -> (&str, &str) {
    match name.rfind('/') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => ("", name),
    }
}

/// `dir/base`, or `base` at the top.
pub fn join_name(dir: &str, base: &str) -> String {
    if dir.is_empty() {
        base.to_string()
    } else {
        format!("{dir}/{base}")
    }
}

/// Writes `bytes` through a [`FileWriter`] of `store` and commits it (a convenience for tests and small
/// streamed files).
pub fn write_streamed(
    store: &dyn Storage,
    name: &str,
    bytes: &[u8],
    mode: PutMode,
) -> Result<(), FsError> {
    let mut w = store.create(name, mode)?;
    let at = w.locate();
    w.write_all(bytes)
        .map_err(|source| FsError { path: at, source })?;
    w.commit()
}

#[cfg(test)]
mod tests;
