//! Durable file replacement: the one way chamfer (engine and server) writes a small file it must not lose.
//!
//! [`write_atomic`] writes a temporary file beside the target, fsyncs it, renames it over the target and
//! fsyncs the directory, so that after a crash the target holds either its old bytes or all of its new ones.
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

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

impl FsError {
    fn at(path: &Path) -> impl Fn(io::Error) -> FsError + '_ {
        move |source| FsError {
            path: path.to_path_buf(),
            source,
        }
    }
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

/// Writes `bytes` to `path` atomically and durably (temp file, fsync, rename, directory fsync).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let tmp = temp_path(path);
    let mut f = fs::File::create(&tmp).map_err(FsError::at(&tmp))?;
    f.write_all(bytes).map_err(FsError::at(&tmp))?;
    f.sync_all().map_err(FsError::at(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(FsError::at(path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// fsyncs a directory so that a created, renamed or removed entry is durable (best effort where unsupported).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
