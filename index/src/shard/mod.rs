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
//! codebook, section streaming, atomic write), this file (the format constants, the reader and verifier),
//! `persisted.rs` (the on-disk JSON of the parameters, separate from the engine types), `tests.rs`.
mod params;
pub mod persisted;
mod writer;

use std::fs::{self, File};
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
use writer::read_u64s;
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
    /// Verifies shard bytes held in memory (no graph is loaded: graph files live beside a shard file).
    pub(crate) fn from_memory(bytes: &[u8]) -> Result<Shard> {
        let len = bytes.len();
        let mut words = vec![0u64; len.div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..len].copy_from_slice(bytes);
        Shard::from_owned_words(words, len, None)
    }

    /// Verifies an in-memory shard image held in words (no copy). An empty codebook section stands for `given`:
    /// an in-memory build under a collection's codebook hands over its `Arc`, since serialising and re-parsing
    /// tens of megabytes of centroids per small batch would cost more than coding the batch.
    pub(super) fn from_owned_words(
        words: Vec<u64>,
        len: usize,
        given: Option<&Arc<Codebook>>,
    ) -> Result<Shard> {
        if len > words.len() * 8 {
            return Err(IndexError::corrupt(
                "<memory>",
                "shard image shorter than its length".to_string(),
            ));
        }
        Shard::from_bytes_given(None, Bytes::Owned(words, len), false, given)
    }

    /// The shard's bytes (the file, or its in-memory twin).
    pub(crate) fn raw_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// Opens and verifies a shard file (and loads its graph, if it has one).
    pub fn open(path: &Path) -> Result<Shard> {
        Shard::open_with(path, false)
    }

    /// [`open`](Self::open) without reading the token section: every other section, the metadata and the
    /// structure are verified as usual, but the token section's checksum (most of a shard's bytes) is left to
    /// [`verify_deferred`](Self::verify_deferred), so that opening a large index costs milliseconds, not a read
    /// of every byte. The caller must run that check (a server does it in the background) and treat a failure as
    /// damage. The tokens are only read by the exact re-rank and `get`; until verified, a flipped bit there could
    /// change a score, never an access (all offsets come from verified sections).
    pub fn open_deferred(path: &Path) -> Result<Shard> {
        Shard::open_with(path, true)
    }

    /// Checks what [`open_deferred`](Self::open_deferred) left unchecked (nothing for shards opened otherwise):
    /// a mismatch is [`IndexError::Corrupt`] naming the file and section.
    pub fn verify_deferred(&self) -> Result<()> {
        let Some(crc) = self.deferred_crc else {
            return Ok(());
        };
        let outcome = self.deferred_outcome.get_or_init(|| {
            if crc32fast::hash(&self.bytes.as_slice()[self.tokens.clone()]) == crc {
                Ok(())
            } else {
                Err("section tokens checksum mismatch".to_string())
            }
        });
        outcome.clone().map_err(|reason| {
            let name = self
                .path
                .clone()
                .unwrap_or_else(|| PathBuf::from("<memory>"));
            IndexError::corrupt(&name, reason)
        })
    }

    /// True while [`verify_deferred`](Self::verify_deferred) has a check to run that has not run yet (only
    /// after [`open_deferred`](Self::open_deferred)). The outcome is kept: later calls answer at once.
    pub fn verification_pending(&self) -> bool {
        self.deferred_crc.is_some() && self.deferred_outcome.get().is_none()
    }

    fn open_with(path: &Path, defer: bool) -> Result<Shard> {
        let file = File::open(path).map_err(|e| IndexError::io(path, e))?;
        let map = ReadOnlyMap::new(&file).map_err(|e| IndexError::io(path, e))?;
        if !defer {
            map.will_need();
        }
        let mut shard = Shard::from_bytes(Some(path.to_path_buf()), Bytes::Mapped(map), defer)?;
        if let Some(files) = &shard.meta.graph {
            let (dir, base) = dir_and_base(path);
            let p = &shard.meta.params;
            let pdim = p.prefix_dim(p.hnsw.prefix_repetitions);
            shard.graph = Some(CandidateIndex::load(
                dir,
                &base,
                files,
                p.hnsw.storage,
                pdim,
            )?);
        }
        Ok(shard)
    }

    fn from_bytes(path: Option<PathBuf>, bytes: Bytes, defer_tokens: bool) -> Result<Shard> {
        Shard::from_bytes_given(path, bytes, defer_tokens, None)
    }

    /// Parses and verifies shard bytes; an empty codebook section stands for `given` when there is one.
    fn from_bytes_given(
        path: Option<PathBuf>,
        bytes: Bytes,
        defer_tokens: bool,
        given: Option<&Arc<Codebook>>,
    ) -> Result<Shard> {
        let name = path.clone().unwrap_or_else(|| PathBuf::from("<memory>"));
        let bad = |r: String| IndexError::corrupt(&name, r);
        let b = bytes.as_slice();
        if b.len() < 64 + FOOTER {
            return Err(bad(format!("{} bytes is too short for a shard", b.len())));
        }
        if &b[..8] != MAGIC {
            return Err(bad("not a chamfer shard (bad magic)".into()));
        }
        let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if !READ_VERSIONS.contains(&version) {
            return Err(IndexError::UnsupportedVersion {
                path: name,
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let foot = &b[b.len() - FOOTER..];
        if &foot[16..24] != END_MAGIC {
            return Err(bad("missing end marker (truncated file?)".into()));
        }
        let meta_len = u64::from_le_bytes(foot[..8].try_into().unwrap_or([0; 8])) as usize;
        let meta_crc = u32::from_le_bytes(foot[8..12].try_into().unwrap_or([0; 4]));
        let meta_end = b.len() - FOOTER;
        if meta_len > meta_end - 64 {
            return Err(bad("metadata length out of bounds".into()));
        }
        let json = &b[meta_end - meta_len..meta_end];
        if crc32fast::hash(json) != meta_crc {
            return Err(bad("metadata checksum mismatch".into()));
        }
        let meta: Meta = serde_json::from_slice(json).map_err(|e| bad(format!("metadata: {e}")))?;
        meta.params
            .validate()
            .map_err(|e| bad(format!("stored parameters: {e}")))?;
        let body_end = (meta_end - meta_len) as u64;
        let names: &[&str] = if version == 1 {
            &[
                "tokens",
                "panel_start",
                "n_tokens",
                "fde",
                "centroids",
                "codes",
                "id_start",
                "id_bytes",
                "payload_start",
                "payload_bytes",
            ]
        } else {
            &[
                "tokens",
                "panel_start",
                "n_tokens",
                "fde",
                "codebook",
                "codes",
                "ivf_start",
                "ivf_docs",
                "id_start",
                "id_bytes",
                "payload_start",
                "payload_bytes",
            ]
        };
        let mut ranges = Vec::new();
        let mut deferred_crc = None;
        for &want in names {
            let s = meta
                .sections
                .iter()
                .find(|s| s.name == want)
                .ok_or_else(|| bad(format!("section {want} missing")))?;
            let end = s
                .offset
                .checked_add(s.len)
                .filter(|&e| e <= body_end && s.offset >= 64);
            let end = end.ok_or_else(|| bad(format!("section {want} out of bounds")))?;
            if !(s.offset as usize).is_multiple_of(ALIGN) {
                return Err(bad(format!("section {want} misaligned")));
            }
            let r = s.offset as usize..end as usize;
            if defer_tokens && want == "tokens" {
                deferred_crc = Some(s.crc32);
            } else if crc32fast::hash(&b[r.clone()]) != s.crc32 {
                return Err(bad(format!("section {want} checksum mismatch")));
            }
            ranges.push(r);
        }
        if version == 1 {
            // No inverted file: empty ranges at the end of the codes section.
            let at = ranges[5].end;
            ranges.insert(6, at..at);
            ranges.insert(7, at..at);
        }
        let [tokens, panel_start, n_tokens, fde, book_bytes, codes, ivf_start, ivf_docs, id_start, id_bytes, payload_start, payload_bytes]: [Range<usize>; 12] =
            ranges.try_into().map_err(|_| bad("section table".into()))?;
        let dim = meta.params.fde.dimension;
        if codes.len() % 2 != 0 {
            return Err(bad("codes section has an odd size".into()));
        }
        let codebook = if book_bytes.is_empty() {
            match given {
                Some(g) if g.dim() != dim => {
                    return Err(bad(format!(
                        "the given codebook is {}-dimensional, the shard {dim}",
                        g.dim()
                    )))
                }
                g => g.cloned(),
            }
        } else if version == 1 {
            let cvals: Vec<f32> = b[book_bytes.clone()]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if !(book_bytes.len() % 4 == 0 && cvals.len().is_multiple_of(dim)) {
                return Err(bad("codebook sections have the wrong size".into()));
            }
            Some(Arc::new(Codebook::from_centroids(dim, cvals)))
        } else {
            Some(Arc::new(
                Codebook::from_bytes(&b[book_bytes.clone()], dim).map_err(bad)?,
            ))
        };
        // Sized by the section actually present (bounded by the file), never by the stored document count;
        // check_structure then cross-checks the two.
        let mut token_start = Vec::with_capacity(n_tokens.len() / 4 + 1);
        token_start.push(0usize);
        for c in b[n_tokens.clone()].chunks_exact(4) {
            let last = *token_start.last().unwrap_or(&0);
            token_start
                .push(last.saturating_add(u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize));
        }
        let shard = Shard {
            path,
            meta,
            tokens,
            panel_start,
            n_tokens,
            fde,
            codes,
            codebook,
            ivf_start,
            ivf_docs,
            token_start,
            id_start,
            id_bytes,
            payload_start,
            payload_bytes,
            graph: None,
            scan: std::sync::OnceLock::new(),
            bytes,
            deferred_crc,
            deferred_outcome: std::sync::OnceLock::new(),
        };
        shard.check_structure().map_err(bad)?;
        Ok(shard)
    }

    /// Cross-checks sizes and offsets so that every accessor below is in bounds.
    fn check_structure(&self) -> std::result::Result<(), String> {
        let n = self.meta.n_docs;
        let dim = self.meta.params.fde.dimension;
        // Version 1 stores the full FDE; version 2 what the plans read (writer::stored_fde_repetitions), or
        // none (a tokens-only shard, a merged shard).
        let p = &self.meta.params;
        let stored = writer::stored_fde_repetitions(p, self.codebook.is_some(), n);
        if self.meta.fde_dim != p.fde.output_dim()
            && self.meta.fde_dim != p.prefix_dim(stored)
            && self.meta.fde_dim != 0
        {
            return Err("FDE dimension disagrees with the FDE configuration".into());
        }
        let b = self.bytes.as_slice();
        // Every stored count is checked against the section sizes (bounded by the file) with checked
        // arithmetic before anything is sized by it.
        let len_ok = |r: &Range<usize>, want: Option<usize>| Some(r.len()) == want;
        let starts_len = n.checked_add(1).and_then(|v| v.checked_mul(8));
        if !len_ok(&self.panel_start, starts_len)
            || !len_ok(&self.n_tokens, n.checked_mul(4))
            || !len_ok(
                &self.fde,
                n.checked_mul(self.meta.fde_dim)
                    .and_then(|v| v.checked_mul(2)),
            )
            || !len_ok(&self.id_start, starts_len)
            || !len_ok(&self.payload_start, starts_len)
        {
            return Err("section sizes disagree with the document count".into());
        }
        if self.token_start.len() != n + 1
            || self.token_start.last().map(|&t| t as u64) != Some(self.meta.total_tokens)
        {
            return Err("token counts disagree with the stored total".into());
        }
        let starts: Vec<u64> = read_u64s(&b[self.panel_start.clone()]).collect();
        let counts: Vec<u32> = b[self.n_tokens.clone()]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        for i in 0..n {
            let want = kernels::packed_len(counts[i] as usize, dim) as u64;
            if counts[i] == 0 || starts[i + 1].checked_sub(starts[i]) != Some(want) {
                return Err(format!(
                    "token panel offsets of document {i} are inconsistent"
                ));
            }
        }
        if let Some(book) = &self.codebook {
            let total = *self.token_start.last().unwrap_or(&0);
            if self.codes.len() != total * 2 {
                return Err("codes section size disagrees with the token count".into());
            }
            let k = book.len();
            if b[self.codes.clone()]
                .chunks_exact(2)
                .any(|c| u16::from_le_bytes([c[0], c[1]]) as usize >= k)
            {
                return Err("a token code is out of the codebook's range".into());
            }
            self.check_ivf(k)?;
        } else if !self.codes.is_empty() || !self.ivf_docs.is_empty() {
            return Err("codes without a codebook".into());
        }
        if starts.first() != Some(&0)
            || starts.last().and_then(|&s| s.checked_mul(2)) != Some(self.tokens.len() as u64)
        {
            return Err("token section size disagrees with the panel offsets".into());
        }
        for (st, by) in [
            (&self.id_start, &self.id_bytes),
            (&self.payload_start, &self.payload_bytes),
        ] {
            let s: Vec<u64> = read_u64s(&b[st.clone()]).collect();
            if s.first() != Some(&0)
                || s.windows(2).any(|w| w[1] < w[0])
                || s.last() != Some(&(by.len() as u64))
            {
                return Err("id or payload offsets are inconsistent".into());
            }
        }
        for i in 0..n {
            if std::str::from_utf8(self.id_raw(i)).is_err() {
                return Err(format!("id of document {i} is not UTF-8"));
            }
        }
        Ok(())
    }

    /// The inverted file of a version 2 shard: K+1 monotone starts ending at the number of postings, every list
    /// strictly ascending and below the document count. Version 1 shards have none.
    fn check_ivf(&self, k: usize) -> std::result::Result<(), String> {
        if self.ivf_start.is_empty() && self.ivf_docs.is_empty() {
            return Ok(());
        }
        let b = self.bytes.as_slice();
        if Some(self.ivf_start.len()) != k.checked_add(1).and_then(|v| v.checked_mul(8))
            || !self.ivf_docs.len().is_multiple_of(4)
        {
            return Err("inverted file sections have the wrong size".into());
        }
        let starts: Vec<u64> = read_u64s(&b[self.ivf_start.clone()]).collect();
        let total = (self.ivf_docs.len() / 4) as u64;
        if starts.first() != Some(&0)
            || starts.last() != Some(&total)
            || starts.windows(2).any(|w| w[1] < w[0])
        {
            return Err("inverted file offsets are inconsistent".into());
        }
        let docs: &[u32] = bytemuck::cast_slice(&b[self.ivf_docs.clone()]);
        let n = self.meta.n_docs as u64;
        for w in starts.windows(2) {
            let list = &docs[w[0] as usize..w[1] as usize];
            if list.windows(2).any(|p| p[1] <= p[0])
                || list.last().is_some_and(|&d| u64::from(d) >= n)
            {
                return Err("an inverted list is out of order or names a missing document".into());
            }
        }
        Ok(())
    }

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
