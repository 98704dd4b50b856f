//! Shard files: immutable, memory-mapped, versioned and checksummed.
//!
//! A shard holds a batch of documents: their token vectors (f16, packed in the kernel's 16-token k-major panels),
//! their full FDEs (f16, repetition-major, so the first `r` repetitions of each FDE are themselves the `r`-repetition
//! FDE: a Matryoshka prefix), their external ids and opaque payloads (the server's metadata). The HNSW graph over
//! the FDE prefix lives in two files beside it (see [`crate::hnsw`]), recorded here with lengths and CRC32s.
//!
//! ```text
//! offset        size        content
//! 0             8           magic "CHMFSHRD"
//! 8             4           format version (u32 LE) = 2 (version 1 files are still read)
//! 12            52          zero
//! 64            ...         sections, each 64-byte aligned, in this order:
//!                             tokens       f16[total panel values]   packed token panels of every document
//!                             panel_start  u64[n+1]                  offset of doc i's panels in `tokens` (values)
//!                             n_tokens     u32[n]                    real token count of doc i
//!                             fde          f16[n * fde_dim]          FDEs, repetition-major: all R repetitions
//!                                                                      without a codebook, the graph's prefix with
//!                                                                      a codebook and a graph, none (fde_dim 0) with
//!                                                                      a codebook only (version 1: always all)
//!                             codebook     bytes                     token codebook (`Codebook::to_bytes`; empty: none)
//!                             codes        u16[total tokens]         nearest centroid of every token, docs in order
//!                             ivf_start    u64[K+1]                  inverted file: centroid c's postings are
//!                             ivf_docs     u32[...]                    ivf_docs[ivf_start[c]..ivf_start[c+1]], the
//!                                                                      documents with a token coded c, ascending
//!                             id_start     u64[n+1], id_bytes        external ids (UTF-8)
//!                             payload_start u64[n+1], payload_bytes  payloads
//! (Version 1 has a `centroids` section, `f32[K * dim]` of a flat codebook, instead of `codebook`, and no inverted
//! file: such shards are searched by the centroid scan.)
//! M             meta_len    meta JSON: the persisted parameters (`persisted::PersistedParamsV1`: FDE config + seed,
//!                           HNSW params, codebook size), counts, the section table
//!                           (offset, length, CRC32 of each section), the graph files (length, CRC32), prefix scale
//! end - 24      8           meta_len (u64 LE)
//! end - 16      4           CRC32 of the meta JSON
//! end - 12      4           format version (u32 LE), again
//! end - 8       8           magic "CHMFEND1"
//! ```
//!
//! The writer streams sections to `<name>.tmp`, fsyncs, renames and fsyncs the directory. [`Shard::open`] checks
//! magic, version, meta CRC, every section's bounds, alignment and CRC32 before any byte is used: a truncated or
//! bit-flipped file is an [`IndexError::Corrupt`], never a panic.
//!
//! Files: `params.rs` (the parameters that define a shard's bytes, with their maxima), `writer.rs` (encoding,
//! codebook, section streaming, atomic write), this file (the format constants, the in-memory shard and its
//! accessors), `open.rs` (the reader and verifier),
//! `persisted.rs` (the on-disk JSON of the parameters, separate from the engine types), `tests.rs`.
mod open;
mod params;
pub mod persisted;
mod writer;

use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::f16;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::codebook::Codebook;
pub use crate::hnsw::VectorStorage;
use crate::hnsw::{CandidateIndex, GraphFile};
use crate::kernels;
use crate::sys::mmap::ReadOnlyMap;
use crate::tokens::TokenMatrix;
use crate::{IndexError, Result};

pub use params::*;

pub use writer::{train_codebook, Coding, ENCODE_SCRATCH_BYTES};

const MAGIC: &[u8; 8] = b"CHMFSHRD";
const END_MAGIC: &[u8; 8] = b"CHMFEND1";
/// The shard format version this build writes.
pub const FORMAT_VERSION: u32 = 2;
/// Shard format versions this build reads.
pub const READ_VERSIONS: [u32; 2] = [1, 2];
const ALIGN: usize = 64;
const FOOTER: usize = 24;
/// One document whose tokens are f16 already (a replayed log record), for a tokens-only in-memory shard
/// ([`Shard::build_in_memory_tokens_f16`]); checked as a [`ShardDoc`]'s tokens are.
#[derive(Clone, Copy, Debug)]
pub struct HalfDoc<'a> {
    /// External document id (unique within the shard).
    pub id: &'a str,
    /// Token dimension.
    pub dim: usize,
    /// Row-major `n x dim` token values.
    pub tokens: &'a [f16],
    /// Opaque bytes stored with the document; may be empty.
    pub payload: &'a [u8],
}

/// One document to write.
#[derive(Clone, Copy, Debug)]
pub struct ShardDoc<'a> {
    /// External document id (unique within the shard).
    pub id: &'a str,
    /// The document's token vectors.
    pub tokens: TokenMatrix<'a>,
    /// Opaque bytes stored with the document (the server's metadata); may be empty.
    pub payload: &'a [u8],
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Section {
    name: String,
    offset: u64,
    len: u64,
    crc32: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Meta {
    format: String,
    #[serde(with = "persisted")]
    params: IndexParams,
    n_docs: usize,
    total_tokens: u64,
    fde_dim: usize,
    /// Largest L2 norm of a document's graph prefix: the graph stores prefixes divided by it.
    prefix_scale: f32,
    sections: Vec<Section>,
    graph: Option<Vec<GraphFile>>,
    written_by: String,
}

enum Bytes {
    Mapped(ReadOnlyMap),
    /// u64 backing keeps the buffer 8-byte aligned for the typed views.
    Owned(Vec<u64>, usize),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m.as_slice(),
            Bytes::Owned(v, len) => &bytemuck::cast_slice(v)[..*len],
        }
    }
}

/// An open shard: a read-only view of a verified shard file (or of the same bytes built in memory).
pub struct Shard {
    path: Option<PathBuf>,
    bytes: Bytes,
    meta: Meta,
    tokens: Range<usize>,
    panel_start: Range<usize>,
    n_tokens: Range<usize>,
    fde: Range<usize>,
    codes: Range<usize>,
    codebook: Option<Arc<Codebook>>,
    /// The inverted file (empty ranges in version 1 shards and shards without a codebook).
    ivf_start: Range<usize>,
    ivf_docs: Range<usize>,
    /// First token of document i (codes are per token, documents one after another).
    token_start: Vec<usize>,
    id_start: Range<usize>,
    id_bytes: Range<usize>,
    payload_start: Range<usize>,
    payload_bytes: Range<usize>,
    graph: Option<CandidateIndex>,
    /// The FDEs transposed to coordinate-major (`[fde_dim][n_docs]`), built on first use by the FDE scan.
    scan: std::sync::OnceLock<Vec<f16>>,
    /// The token section's CRC when [`Shard::open_deferred`] did not check it yet (see
    /// [`Shard::verify_deferred`]).
    deferred_crc: Option<u32>,
    /// The outcome of that check, once run.
    deferred_outcome: std::sync::OnceLock<std::result::Result<(), String>>,
    /// The shard's stable key in its collection (in memory only: see [`Shard::set_key`]).
    key: std::sync::OnceLock<u64>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("path", &self.path)
            .field("n_docs", &self.meta.n_docs)
            .finish()
    }
}

impl Shard {
    fn u64_at(&self, r: &Range<usize>, i: usize) -> usize {
        let b = &self.bytes.as_slice()[r.start + i * 8..r.start + i * 8 + 8];
        u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize
    }

    fn id_raw(&self, i: usize) -> &[u8] {
        let (s, e) = (
            self.u64_at(&self.id_start, i),
            self.u64_at(&self.id_start, i + 1),
        );
        &self.bytes.as_slice()[self.id_bytes.start + s..self.id_bytes.start + e]
    }

    /// The shard's stable key, when its owner gave it one ([`set_key`](Self::set_key)).
    pub fn key(&self) -> Option<u64> {
        self.key.get().copied()
    }
    /// Gives the shard its stable key in its collection (the server's segment id): searches break equal scores
    /// on (shard key, document), so results do not depend on where a shard sits in a list. In memory only (the
    /// file does not store it); set once, by whoever opens or builds the shard: setting the same key again is a
    /// no-op, another key an [`IndexError::Incompatible`].
    pub fn set_key(&self, key: u64) -> Result<()> {
        match *self.key.get_or_init(|| key) {
            k if k == key => Ok(()),
            k => Err(IndexError::Incompatible(format!(
                "shard {:?} is keyed {k}, not {key}",
                self.path
            ))),
        }
    }
    /// Number of documents.
    pub fn len(&self) -> usize {
        self.meta.n_docs
    }
    /// True for a shard without documents.
    pub fn is_empty(&self) -> bool {
        self.meta.n_docs == 0
    }
    /// The parameters the shard was built with.
    pub fn params(&self) -> &IndexParams {
        &self.meta.params
    }
    /// The file this shard was opened from (None when built in memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
    /// Total number of token vectors.
    pub fn total_tokens(&self) -> u64 {
        self.meta.total_tokens
    }
    /// Bytes of the shard file (without graph files).
    pub fn byte_len(&self) -> usize {
        self.bytes.as_slice().len()
    }
    /// External id of document `i`.
    pub fn id(&self, i: usize) -> &str {
        std::str::from_utf8(self.id_raw(i)).unwrap_or("")
    }
    /// Payload of document `i`.
    pub fn payload(&self, i: usize) -> &[u8] {
        let (s, e) = (
            self.u64_at(&self.payload_start, i),
            self.u64_at(&self.payload_start, i + 1),
        );
        &self.bytes.as_slice()[self.payload_bytes.start + s..self.payload_bytes.start + e]
    }
    /// Real token count of document `i`.
    pub fn n_tokens(&self, i: usize) -> usize {
        let b =
            &self.bytes.as_slice()[self.n_tokens.start + 4 * i..self.n_tokens.start + 4 * i + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
    }
    /// Document `i`'s packed token panels (the kernel layout).
    pub fn packed_tokens(&self, i: usize) -> &[f16] {
        let all: &[f16] = bytemuck::cast_slice(&self.bytes.as_slice()[self.tokens.clone()]);
        &all[self.u64_at(&self.panel_start, i)..self.u64_at(&self.panel_start, i + 1)]
    }
    /// Document `i`'s token vectors, decoded to row-major f32.
    pub fn tokens(&self, i: usize) -> Vec<f32> {
        kernels::unpack_tokens(
            self.packed_tokens(i),
            self.n_tokens(i),
            self.meta.params.fde.dimension,
        )
    }
    /// Document `i`'s stored FDE (f16, repetition-major; [`fde_dim`](Self::fde_dim) values).
    pub fn fde(&self, i: usize) -> &[f16] {
        let all: &[f16] = bytemuck::cast_slice(&self.bytes.as_slice()[self.fde.clone()]);
        &all[i * self.meta.fde_dim..(i + 1) * self.meta.fde_dim]
    }
    /// The token codebook, when the shard has one.
    pub fn codebook(&self) -> Option<&Codebook> {
        self.codebook.as_deref()
    }
    /// The token codebook as a shareable handle.
    pub fn codebook_arc(&self) -> Option<&Arc<Codebook>> {
        self.codebook.as_ref()
    }
    /// Replaces this shard's copy of its codebook by `other` when the two are equal (so that shards trained with
    /// one collection codebook hold it in memory once); returns whether it did.
    pub fn share_codebook(&mut self, other: &Arc<Codebook>) -> bool {
        match &self.codebook {
            Some(mine) if Arc::ptr_eq(mine, other) => true,
            Some(mine) if **mine == **other => {
                self.codebook = Some(Arc::clone(other));
                true
            }
            Some(_) | None => false,
        }
    }
    /// True when the shard has an inverted file (version 2 shards with a codebook).
    pub fn has_ivf(&self) -> bool {
        !self.ivf_start.is_empty()
    }
    /// The documents with a token coded `c`, ascending (empty without an inverted file or for `c >= K`).
    pub fn postings(&self, c: usize) -> &[u32] {
        if !self.has_ivf() || c >= self.ivf_start.len() / 8 - 1 {
            return &[];
        }
        let (s, e) = (
            self.u64_at(&self.ivf_start, c),
            self.u64_at(&self.ivf_start, c + 1),
        );
        let all: &[u32] = bytemuck::cast_slice(&self.bytes.as_slice()[self.ivf_docs.clone()]);
        &all[s..e]
    }
    /// Bytes of the inverted file (starts and postings).
    pub fn ivf_bytes(&self) -> usize {
        self.ivf_start.len() + self.ivf_docs.len()
    }
    /// Document `i`'s token codes (empty without a codebook).
    pub fn codes(&self, i: usize) -> &[u16] {
        if self.codebook.is_none() {
            return &[];
        }
        let all: &[u16] = bytemuck::cast_slice(&self.bytes.as_slice()[self.codes.clone()]);
        &all[self.token_start[i]..self.token_start[i + 1]]
    }
    /// Values of each stored FDE: a Matryoshka prefix of the full FDE (the full FDE, the graph's prefix, or
    /// nothing: see the module documentation).
    pub fn fde_dim(&self) -> usize {
        self.meta.fde_dim
    }
    /// All FDEs, one after another.
    pub fn fdes(&self) -> &[f16] {
        bytemuck::cast_slice(&self.bytes.as_slice()[self.fde.clone()])
    }
    /// The candidate graph, when the shard has one.
    pub fn graph(&self) -> Option<&CandidateIndex> {
        self.graph.as_ref()
    }
    /// Largest graph-prefix norm (the graph's vectors are divided by it).
    pub fn prefix_scale(&self) -> f32 {
        self.meta.prefix_scale
    }
    /// The FDEs in coordinate-major order: value `c` of document `i` at `c * len() + i`. The FDE scan adds
    /// `q[c] * row_c` for the query's non-zero coordinates only (a query FDE is sparse: at most one partition per
    /// query token and repetition is non-zero), streaming contiguous rows instead of gathering from every FDE.
    pub fn scan_layout(&self) -> &[f16] {
        self.scan.get_or_init(|| {
            let (n, dim) = (self.len(), self.meta.fde_dim);
            let fdes = self.fdes();
            let mut out = vec![f16::ZERO; n * dim];
            const B: usize = 64;
            out.par_chunks_mut(B * n.max(1))
                .enumerate()
                .for_each(|(cb, rows)| {
                    for (r, row) in rows.chunks_mut(n.max(1)).enumerate() {
                        let c = cb * B + r;
                        for (i, v) in row.iter_mut().enumerate() {
                            *v = fdes[i * dim + c];
                        }
                    }
                });
            out
        })
    }
    /// Bytes on disk of the graph files.
    pub fn graph_bytes(&self) -> u64 {
        self.meta
            .graph
            .as_ref()
            .map(|g| g.iter().map(|f| f.len).sum())
            .unwrap_or(0)
    }
}

/// The directory of a shard path and its base name (the file name without extension), which also names its
/// graph files.
fn dir_and_base(path: &Path) -> (&Path, String) {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    (dir, base)
}

/// Removes a shard file and its graph files (missing files are not an error).
pub fn remove_shard_files(path: &Path) -> Result<()> {
    let (dir, base) = dir_and_base(path);
    let mut all = vec![path.to_path_buf()];
    all.extend(crate::hnsw::graph_file_paths(dir, &base));
    for p in all {
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(IndexError::io(&p, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
