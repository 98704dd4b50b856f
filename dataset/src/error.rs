//! The data set tooling's typed errors.
use std::path::PathBuf;

use chamfer_index::IndexError;

/// Result alias for the data set tooling.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Everything that can go wrong reading, writing or generating a data set.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A data set folder that does not follow the documented format.
    #[error("data set {}: {reason}", path.display())]
    Dataset {
        /// The data set folder (or file within it) at fault.
        path: PathBuf,
        /// What does not follow the format.
        reason: String,
    },
    /// An operating-system I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The underlying operating-system error.
        source: std::io::Error,
    },
    /// A generator setting out of range.
    #[error("invalid parameter {name}: {reason}")]
    InvalidParam {
        /// The setting's name.
        name: &'static str,
        /// Why its value was rejected.
        reason: String,
    },
    /// An engine error.
    #[error(transparent)]
    Index(#[from] IndexError),
}

impl From<chamfer_index::fsutil::FsError> for DataError {
    fn from(e: chamfer_index::fsutil::FsError) -> Self {
        DataError::io(e.path, e.source)
    }
}

impl DataError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
    /// A data set format error for `path`.
    pub fn dataset(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        DataError::Dataset {
            path: path.into(),
            reason: reason.into(),
        }
    }
    /// An out-of-range generator setting.
    pub fn param(name: &'static str, reason: impl Into<String>) -> Self {
        DataError::InvalidParam {
            name,
            reason: reason.into(),
        }
    }
}
