//! The error type of the server's own storage: the write-ahead log (`wal`), the two JSON files (`manifest`) and
//! the checks recovery makes across them. Every variant names the file; damage names the offset where it is
//! known. [`ServiceError`](crate::error::ServiceError) maps each variant (exhaustively) to what clients see.
// Error tables are exhaustive: a new variant must be placed by hand, never by a catch-all arm.
#![deny(clippy::wildcard_enum_match_arm)]
use std::io;
use std::path::PathBuf;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The operating system refused a read, write, fsync or rename.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// A write failed for lack of disk space (ENOSPC). Nothing was applied; it succeeds again once space is freed.
    #[error("{}: out of disk space: {source}", path.display())]
    Full {
        /// The file being written.
        path: PathBuf,
        /// The operating system's error (ENOSPC).
        source: io::Error,
    },
    /// A file whose bytes are not what they must be (missing, truncated, bit-flipped, edited). Refused; nothing
    /// is changed on disk.
    #[error("{}: corrupt or truncated file: {what}", path.display())]
    Damaged {
        /// The damaged file.
        path: PathBuf,
        /// The byte offset of the damage, when it is a place in the file.
        offset: Option<u64>,
        /// What is wrong.
        what: String,
    },
    /// A file written in a format version this build does not read.
    #[error("{}: unsupported format version {found} (this build reads version {supported})", path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// The version it records.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// An append failed and could not be rolled back: the log takes no more writes until restart.
    #[error("{}: the write-ahead log is unusable after an earlier failure: {reason}", path.display())]
    Poisoned {
        /// The log file.
        path: PathBuf,
        /// The earlier failure.
        reason: String,
    },
}

impl StorageError {
    /// An I/O error on `path`; ENOSPC becomes [`StorageError::Full`].
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.kind() == io::ErrorKind::StorageFull {
            StorageError::Full { path, source }
        } else {
            StorageError::Io { path, source }
        }
    }

    /// Damage in `path` (at `offset`, when known).
    pub fn damaged(path: impl Into<PathBuf>, offset: Option<u64>, what: impl Into<String>) -> Self {
        StorageError::Damaged {
            path: path.into(),
            offset,
            what: what.into(),
        }
    }

    /// True when the disk is full.
    pub fn is_full(&self) -> bool {
        matches!(self, StorageError::Full { .. })
    }

    /// An equal error (same variant, path, offset; the I/O error rebuilt from its kind and message): one for
    /// each writer of a failed group commit.
    pub fn replicate(&self) -> Self {
        let copy = |e: &io::Error| io::Error::new(e.kind(), e.to_string());
        match self {
            StorageError::Io { path, source } => StorageError::Io {
                path: path.clone(),
                source: copy(source),
            },
            StorageError::Full { path, source } => StorageError::Full {
                path: path.clone(),
                source: copy(source),
            },
            StorageError::Damaged { path, offset, what } => StorageError::Damaged {
                path: path.clone(),
                offset: *offset,
                what: what.clone(),
            },
            StorageError::Version {
                path,
                found,
                supported,
            } => StorageError::Version {
                path: path.clone(),
                found: *found,
                supported: *supported,
            },
            StorageError::Poisoned { path, reason } => StorageError::Poisoned {
                path: path.clone(),
                reason: reason.clone(),
            },
        }
    }
}

impl From<chamfer_index::fsutil::FsError> for StorageError {
    fn from(e: chamfer_index::fsutil::FsError) -> Self {
        StorageError::io(e.path, e.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_is_full_and_replicas_keep_the_variant() {
        let e = StorageError::io("/x/wal", io::Error::from(io::ErrorKind::StorageFull));
        assert!(e.is_full());
        assert!(e.replicate().is_full());
        let e = StorageError::io("/x/wal", io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(matches!(e.replicate(), StorageError::Io { .. }));
        let d = StorageError::damaged("/x/m.json", Some(7), "checksum mismatch");
        assert!(matches!(
            d.replicate(),
            StorageError::Damaged {
                offset: Some(7),
                ..
            }
        ));
        assert!(d.to_string().contains("m.json") && d.to_string().contains("checksum mismatch"));
    }
}
