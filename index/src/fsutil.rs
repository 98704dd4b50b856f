//! Durable file replacement: the one way chamfer (engine and server) writes a small file it must not lose.
//!
//! [`write_atomic`] writes a temporary file beside the target, fsyncs it, renames it over the target and
//! fsyncs the directory, so that after a crash the target holds either its old bytes or all of its new ones.
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::IndexError;

/// The temporary name used while `path` is being replaced (`<name>.tmp`).
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes `bytes` to `path` atomically and durably (temp file, fsync, rename, directory fsync).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IndexError> {
    let tmp = temp_path(path);
    let io = |e| IndexError::io(&tmp, e);
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| IndexError::io(path, e))?;
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
