//! An index directory as `chamfer index` writes it: a manifest and the shard files it names.
//!
//! ```text
//! INDEX_DIR/index.json           {"format": "chamfer-index", "version": 1, "params": {...}, "shards": ["shard-00000.chs"]}
//! INDEX_DIR/shard-00000.chs      shard file (see crate::shard)
//! INDEX_DIR/shard-00000.hnsw.*   its HNSW graph (large shards only)
//! ```
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;
use crate::search::Searcher;
use crate::shard::{IndexParams, Shard, ShardDoc};
use crate::{IndexError, Result};

/// Manifest format version.
pub const MANIFEST_VERSION: u32 = 1;
const MANIFEST: &str = "index.json";

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    #[serde(with = "crate::shard::persisted")]
    params: IndexParams,
    shards: Vec<String>,
}

/// Writes `docs` as one shard into `dir` (created if needed) and the manifest naming it.
pub fn write_index(
    dir: &Path,
    params: &IndexParams,
    docs: &[ShardDoc<'_>],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| IndexError::io(dir, e))?;
    let name = "shard-00000.chs".to_string();
    Shard::write(&dir.join(&name), params, docs, progress)?;
    let m = Manifest {
        format: "chamfer-index".into(),
        version: MANIFEST_VERSION,
        params: params.clone(),
        shards: vec![name],
    };
    let json = serde_json::to_vec_pretty(&m)
        .map_err(|e| IndexError::io(dir.join(MANIFEST), std::io::Error::other(e)))?;
    Ok(write_atomic(&dir.join(MANIFEST), &json)?)
}

/// Opens the index in `dir`: reads the manifest, opens and verifies every shard, returns a searcher.
pub fn open_index(dir: &Path) -> Result<Searcher> {
    let path = dir.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(|e| IndexError::io(&path, e))?;
    let m: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| IndexError::corrupt(&path, e.to_string()))?;
    if m.format != "chamfer-index" {
        return Err(IndexError::corrupt(&path, "not a chamfer index manifest"));
    }
    if m.version != MANIFEST_VERSION {
        return Err(IndexError::UnsupportedVersion {
            path,
            found: m.version,
            supported: MANIFEST_VERSION,
        });
    }
    let mut books: Vec<Arc<crate::codebook::Codebook>> = Vec::new();
    let mut shards = Vec::with_capacity(m.shards.len());
    for s in &m.shards {
        let mut shard = Shard::open(&dir.join(s))?;
        // Shards written with one collection codebook hold it in memory once.
        if let Some(book) = shard.codebook_arc().cloned() {
            if !books.iter().any(|b| shard.share_codebook(b)) {
                books.push(book);
            }
        }
        shards.push(Arc::new(shard));
    }
    Searcher::new(m.params, shards)
}

/// Bytes on disk of everything in `dir` (the index size).
pub fn index_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
