//! A collection's directory and its two small JSON files.
//!
//! ```text
//! <data_dir>/collections/<name>/
//!   collection.json          name, dimension, IndexParams (FDE config with its seed, graph params): never changes
//!   manifest.json            which shard files are live, their deleted documents, and flushed_seq
//!   segments/seg-<id>.shard  immutable engine shards (+ graph files beside them)
//!   wal/wal-<seq>.log        the write-ahead log (see `wal`)
//! ```
//!
//! The state of a collection is: the manifest's shards minus its deletions, plus every log record with
//! `seq > flushed_seq` replayed in order. Both files are replaced atomically (temp file, fsync, rename, directory
//! fsync), so a crash leaves either the old or the new version; a shard file that no manifest names (a flush
//! or compaction that crashed before its manifest) is deleted at start-up.
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use chamfer_index::shard::IndexParams;
use chamfer_index::IndexError;
use serde::{Deserialize, Serialize};

use super::wal::sync_dir;

/// Format version of both files.
pub const MANIFEST_VERSION: u32 = 1;

/// `collection.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CollectionConfig {
    pub format_version: u32,
    pub name: String,
    pub dimension: usize,
    pub params: IndexParams,
}

/// One live shard in `manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SegmentEntry {
    pub id: u64,
    pub docs: usize,
    /// Deleted (or overwritten) document indices, ascending.
    pub deleted: Vec<u32>,
}

/// `manifest.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format_version: u32,
    /// Every log record with a sequence number up to this one is reflected in the shards and deletions.
    pub flushed_seq: u64,
    pub next_segment_id: u64,
    pub segments: Vec<SegmentEntry>,
}

/// Paths inside a collection directory.
#[derive(Clone, Debug)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn config(&self) -> PathBuf {
        self.dir.join("collection.json")
    }
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }
    pub fn segments(&self) -> PathBuf {
        self.dir.join("segments")
    }
    pub fn wal(&self) -> PathBuf {
        self.dir.join("wal")
    }
    pub fn segment(&self, id: u64) -> PathBuf {
        self.segments().join(format!("seg-{id:010}.shard"))
    }
    /// The segment id of a file in `segments/` (`seg-<id>.<anything>`), if it is one of ours.
    pub fn segment_id_of(name: &str) -> Option<u64> {
        name.strip_prefix("seg-")?.split('.').next()?.parse().ok()
    }
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IndexError> {
    let tmp = path.with_extension("json.tmp");
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

/// Reads and parses a JSON file.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, IndexError> {
    let bytes = fs::read(path).map_err(|e| IndexError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| IndexError::corrupt(path, e.to_string()))
}

/// Writes a JSON file atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), IndexError> {
    let bytes =
        serde_json::to_vec_pretty(value).map_err(|e| IndexError::corrupt(path, e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Checks a file's format version.
pub fn check_version(path: &Path, found: u32) -> Result<(), IndexError> {
    if found == MANIFEST_VERSION {
        Ok(())
    } else {
        Err(IndexError::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
            supported: MANIFEST_VERSION,
        })
    }
}
