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
//! 8             4           format version (u32 LE) = 1
//! 12            52          zero
//! 64            ...         sections, each 64-byte aligned, in this order:
//!                             tokens       f16[total panel values]   packed token panels of every document
//!                             panel_start  u64[n+1]                  offset of doc i's panels in `tokens` (values)
//!                             n_tokens     u32[n]                    real token count of doc i
//!                             fde          f16[n * fde_dim]          full FDEs, repetition-major
//!                             id_start     u64[n+1], id_bytes        external ids (UTF-8)
//!                             payload_start u64[n+1], payload_bytes  payloads
//! M             meta_len    meta JSON: IndexParams (FDE config + seed, HNSW params), counts, the section table
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
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use half::f16;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::codebook::Codebook;
use crate::fde::{FdeConfig, FdeEncoder};
pub use crate::hnsw::VectorStorage;
use crate::hnsw::{CandidateIndex, GraphBuild, GraphFile};
use crate::kernels;
use crate::sys::mmap::ReadOnlyMap;
use crate::tokens::TokenMatrix;
use crate::{IndexError, Result};
use rand::{Rng, SeedableRng};

const MAGIC: &[u8; 8] = b"CHMFSHRD";
const END_MAGIC: &[u8; 8] = b"CHMFEND1";
/// The shard format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const ALIGN: usize = 64;
const FOOTER: usize = 24;
/// Most documents encoded per parallel FDE batch while writing.
const ENCODE_BATCH: usize = 2048;
/// Byte budget of the writer's f32 FDE scratch (one encode batch): a batch holds
/// `clamp(ENCODE_SCRATCH_BYTES / (4 x FDE dimension), 1, 2048)` documents, so the scratch never depends on an
/// unbounded product of client-chosen values (128 MiB: 2048 documents of the default 10240-value FDE fit in
/// 80 MiB; the largest allowed FDE, 2^18 values, gets batches of 128).
pub const ENCODE_SCRATCH_BYTES: usize = 128 << 20;

/// Largest graph degree `hnsw.m` (hnsw_rs exits the process beyond 256 connections).
pub const MAX_HNSW_M: usize = 128;
/// Largest `hnsw.ef_construction` (the build beam; the default is 100).
pub const MAX_EF_CONSTRUCTION: usize = 4096;
/// Largest token codebook (codes are u16; bench runs use up to 2^16).
pub const MAX_CODEBOOK_SIZE: usize = 1 << 16;
/// Largest `hnsw.min_docs`. It is a threshold, not a size: larger values would only mean "never build a graph",
/// which this value already means in practice (no shard holds 2^40 documents).
pub const MAX_MIN_DOCS: usize = 1 << 40;
/// Most token vectors in one shard document. Token counts are stored as u32, and the encoder's per-document
/// scratch grows with tokens x repetitions; the server's `limits.max_tokens_per_doc` may not exceed it.
pub const MAX_DOC_TOKENS: usize = 1 << 16;
pub use crate::tokens::MAX_TOKEN_VALUE;

/// Parameters of the candidate graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswParams {
    /// How many FDE repetitions (a Matryoshka prefix) the graph indexes.
    pub prefix_repetitions: usize,
    /// Graph degree (hnsw_rs max_nb_connection).
    pub m: usize,
    /// Beam width while building.
    pub ef_construction: usize,
    /// Precision of the graph's vectors.
    pub storage: VectorStorage,
    /// Shards with fewer documents get no graph (a scan of their FDEs is faster).
    pub min_docs: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        // min_docs: measured on 100k synthetic documents, the centroid scan still beats the graph plan in both
        // recall and speed (BENCHMARKS.md), so only shards well beyond that get a graph by default.
        HnswParams {
            prefix_repetitions: 4,
            m: 16,
            ef_construction: 100,
            storage: VectorStorage::F16,
            min_docs: 250_000,
        }
    }
}

/// Everything that defines an index's bytes: the FDE configuration (with its seed), the graph parameters and
/// the token codebook size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexParams {
    pub fde: FdeConfig,
    pub hnsw: HnswParams,
    /// Centroids of each shard's token codebook (0: no codes; see [`crate::codebook`]). Small shards get fewer
    /// (one per 16 tokens at most).
    #[serde(default = "default_codebook_size")]
    pub codebook_size: usize,
}

/// Default token codebook size.
pub const DEFAULT_CODEBOOK_SIZE: usize = 4096;

fn default_codebook_size() -> usize {
    DEFAULT_CODEBOOK_SIZE
}

impl IndexParams {
    /// The defaults for token dimension `dim`: FDE (R, k_sim, d_proj) = (20, 5, 16), seed 1, empty partitions
    /// left empty, and a graph over the first 4 repetitions.
    pub fn new(dim: usize) -> Self {
        IndexParams {
            fde: FdeConfig::paper_default(dim),
            hnsw: HnswParams::default(),
            codebook_size: DEFAULT_CODEBOOK_SIZE,
        }
    }

    /// Checks every field against its documented maximum (the `MAX_*` constants of this module and of
    /// [`crate::fde`]); the [`IndexError::InvalidConfig`] message names the first bad field, its value and the limit.
    pub fn validate(&self) -> Result<()> {
        self.fde.validate()?;
        let h = &self.hnsw;
        let range = |field: &str, value: usize, min: usize, max: usize| {
            if value < min || value > max {
                Err(IndexError::InvalidConfig(format!(
                    "{field} must be in {min}..={max}, got {value}"
                )))
            } else {
                Ok(())
            }
        };
        range(
            "hnsw prefix_repetitions (at most the FDE's num_repetitions)",
            h.prefix_repetitions,
            1,
            self.fde.num_repetitions,
        )?;
        if self.fde.final_projection_dimension.is_some() {
            return Err(IndexError::InvalidConfig(
                "final_projection_dimension mixes all repetitions, so the FDE is no longer prefix-truncatable: \
                 an index needs it unset"
                    .into(),
            ));
        }
        range("codebook_size", self.codebook_size, 0, MAX_CODEBOOK_SIZE)?;
        range("hnsw m", h.m, 1, MAX_HNSW_M)?;
        range(
            "hnsw ef_construction",
            h.ef_construction,
            1,
            MAX_EF_CONSTRUCTION,
        )?;
        range("hnsw min_docs", h.min_docs, 0, MAX_MIN_DOCS)?;
        Ok(())
    }

    /// Length of the Matryoshka prefix of `reps` repetitions.
    pub fn prefix_dim(&self, reps: usize) -> usize {
        reps * self.fde.repetition_dim()
    }
}

/// One document to write.
#[derive(Clone, Copy, Debug)]
pub struct ShardDoc<'a> {
    pub id: &'a str,
    pub tokens: TokenMatrix<'a>,
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
    codebook: Option<Codebook>,
    /// First token of document i (codes are per token, documents one after another).
    token_start: Vec<usize>,
    id_start: Range<usize>,
    id_bytes: Range<usize>,
    payload_start: Range<usize>,
    payload_bytes: Range<usize>,
    graph: Option<CandidateIndex>,
    /// The FDEs transposed to coordinate-major (`[fde_dim][n_docs]`), built on first use by the FDE scan.
    scan: std::sync::OnceLock<Vec<f16>>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("path", &self.path)
            .field("n_docs", &self.meta.n_docs)
            .finish()
    }
}

/// Streams aligned sections into a writer, recording offsets and CRCs.
struct SectionWriter<W: Write> {
    out: W,
    pos: u64,
    sections: Vec<Section>,
}

impl<W: Write> SectionWriter<W> {
    fn pad(&mut self) -> std::io::Result<()> {
        let pad = (ALIGN - (self.pos as usize % ALIGN)) % ALIGN;
        self.out.write_all(&[0u8; ALIGN][..pad])?;
        self.pos += pad as u64;
        Ok(())
    }
    /// Writes one section from chunks produced by `fill`.
    fn section(
        &mut self,
        name: &str,
        chunks: impl IntoIterator<Item = Vec<u8>>,
    ) -> std::io::Result<()> {
        self.pad()?;
        let offset = self.pos;
        let mut crc = crc32fast::Hasher::new();
        for chunk in chunks {
            crc.update(&chunk);
            self.out.write_all(&chunk)?;
            self.pos += chunk.len() as u64;
        }
        self.sections.push(Section {
            name: name.into(),
            offset,
            len: self.pos - offset,
            crc32: crc.finalize(),
        });
        Ok(())
    }
}

fn le_bytes_u64(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Everything derived from the documents before bytes are laid out.
struct Built {
    params: IndexParams,
    n: usize,
    fde_dim: usize,
    fdes: Vec<f16>,
    panel_start: Vec<u64>,
    total_tokens: u64,
    prefix_scale: f32,
    codebook: Option<Codebook>,
    codes: Vec<u16>,
}

/// Documents per encode batch for FDEs of `fde_dim` values: as many as fit [`ENCODE_SCRATCH_BYTES`] of f32,
/// at least 1, at most [`ENCODE_BATCH`].
fn encode_batch_docs(fde_dim: usize) -> usize {
    (ENCODE_SCRATCH_BYTES / fde_dim.max(1).saturating_mul(4)).clamp(1, ENCODE_BATCH)
}

/// f32 -> f16 for a stored FDE value, saturating at f16's largest finite value. Tokens are within that range,
/// but an FDE block is a (projected) sum over up to d coordinates: 128 coordinates of 60000 project to 7.7M. A
/// saturated value is still the largest one in its direction; the exact re-rank uses the tokens themselves.
fn fde_value_to_f16(v: f32) -> f16 {
    f16::from_f32(v.clamp(-MAX_TOKEN_VALUE, MAX_TOKEN_VALUE))
}

/// The graph's prefix scale: the largest L2 norm of a stored (f16) prefix, summed in f64 and always a finite,
/// positive f32 (stored values are finite f16s, so the sum cannot overflow; an all-zero shard gets 1).
fn prefix_scale_of(fdes: &[f16], fde_dim: usize, pdim: usize) -> f32 {
    let max = fdes
        .par_chunks(fde_dim.max(1))
        .map(|f| {
            f[..pdim.min(f.len())]
                .iter()
                .map(|v| {
                    let x = f64::from(v.to_f32());
                    if x.is_finite() {
                        x * x
                    } else {
                        0.0
                    }
                })
                .sum::<f64>()
                .sqrt()
        })
        .reduce(|| 0.0, f64::max);
    if max > 0.0 && max.is_finite() {
        (max as f32).min(f32::MAX)
    } else {
        1.0
    }
}

fn build(
    params: &IndexParams,
    docs: &[ShardDoc<'_>],
    progress: &(dyn Fn(u64) + Sync),
    cancel: &dyn Fn() -> bool,
) -> Result<Built> {
    params.validate()?;
    let dim = params.fde.dimension;
    let mut seen = std::collections::HashSet::with_capacity(docs.len());
    for d in docs {
        if d.tokens.dim() != dim {
            return Err(IndexError::DimensionMismatch {
                expected: dim,
                got: d.tokens.dim(),
            });
        }
        if d.tokens.len() > MAX_DOC_TOKENS {
            return Err(IndexError::TooManyTokens {
                got: d.tokens.len(),
                max: MAX_DOC_TOKENS,
            });
        }
        if !seen.insert(d.id) {
            return Err(IndexError::DuplicateId(d.id.to_string()));
        }
        if d.id.is_empty() {
            return Err(IndexError::param("id", "document ids must not be empty"));
        }
    }
    let encoder = FdeEncoder::new(params.fde.clone())?;
    let fde_dim = params.fde.output_dim();
    let per_batch = encode_batch_docs(fde_dim);
    let mut fdes = vec![f16::ZERO; docs.len() * fde_dim];
    let mut scratch = vec![0f32; per_batch.min(docs.len().max(1)) * fde_dim];
    for (batch, out) in docs
        .chunks(per_batch)
        .zip(fdes.chunks_mut(per_batch * fde_dim))
    {
        if cancel() {
            return Err(IndexError::Cancelled("shard write: while encoding FDEs"));
        }
        let toks: Vec<TokenMatrix<'_>> = batch.iter().map(|d| d.tokens).collect();
        let buf = &mut scratch[..batch.len() * fde_dim];
        encoder.encode_documents_into(&toks, buf)?;
        out.par_chunks_mut(fde_dim)
            .zip(buf.par_chunks(fde_dim))
            .for_each(|(o, s)| {
                for (h, &v) in o.iter_mut().zip(s) {
                    *h = fde_value_to_f16(v);
                }
            });
        progress(batch.len() as u64);
    }
    if cancel() {
        return Err(IndexError::Cancelled("shard write: before the codebook"));
    }
    let mut panel_start = Vec::with_capacity(docs.len() + 1);
    let mut acc = 0u64;
    panel_start.push(0);
    for d in docs {
        acc += kernels::packed_len(d.tokens.len(), dim) as u64;
        panel_start.push(acc);
    }
    let total_tokens = docs.iter().map(|d| d.tokens.len() as u64).sum();
    let pdim = params.prefix_dim(params.hnsw.prefix_repetitions);
    let prefix_scale = prefix_scale_of(&fdes, fde_dim, pdim);
    let (codebook, codes) = if params.codebook_size > 0 && !docs.is_empty() {
        let k = Codebook::effective_size(params.codebook_size, total_tokens as usize);
        // A seeded sample of tokens (the codebook is part of the shard's bytes, so it must be reproducible).
        let mut rng = rand::rngs::StdRng::seed_from_u64(params.fde.seed);
        let want = (k * 16).min(total_tokens as usize);
        let mut sample = Vec::with_capacity(want * dim);
        for _ in 0..want {
            let d = &docs[rng.random_range(0..docs.len())].tokens;
            sample.extend_from_slice(d.row(rng.random_range(0..d.len())));
        }
        let book = Codebook::train_cancellable(&sample, dim, k, params.fde.seed, cancel)
            .ok_or(IndexError::Cancelled("shard write: codebook training"))?;
        if cancel() {
            return Err(IndexError::Cancelled("shard write: before the token codes"));
        }
        let codes: Vec<Vec<u16>> = docs
            .par_iter()
            .map(|d| book.assign(d.tokens.as_slice()))
            .collect();
        (Some(book), codes.concat())
    } else {
        (None, Vec::new())
    };
    Ok(Built {
        params: params.clone(),
        n: docs.len(),
        fde_dim,
        fdes,
        panel_start,
        total_tokens,
        prefix_scale,
        codebook,
        codes,
    })
}

fn write_body<W: Write>(
    sw: &mut SectionWriter<W>,
    b: &Built,
    docs: &[ShardDoc<'_>],
) -> std::io::Result<()> {
    let dim = b.params.fde.dimension;
    sw.section(
        "tokens",
        docs.chunks(256).map(|chunk| {
            let mut packed = Vec::new();
            for d in chunk {
                kernels::pack_tokens(d.tokens.as_slice(), dim, &mut packed);
            }
            bytemuck::cast_slice::<f16, u8>(&packed).to_vec()
        }),
    )?;
    sw.section("panel_start", [le_bytes_u64(&b.panel_start)])?;
    sw.section(
        "n_tokens",
        [docs
            .iter()
            .flat_map(|d| (d.tokens.len() as u32).to_le_bytes())
            .collect()],
    )?;
    sw.section(
        "fde",
        b.fdes
            .chunks(1 << 20)
            .map(|c| bytemuck::cast_slice::<f16, u8>(c).to_vec()),
    )?;
    let centroids: &[f32] = b.codebook.as_ref().map(|c| c.centroids()).unwrap_or(&[]);
    sw.section(
        "centroids",
        [centroids.iter().flat_map(|v| v.to_le_bytes()).collect()],
    )?;
    sw.section(
        "codes",
        b.codes
            .chunks(1 << 20)
            .map(|c| c.iter().flat_map(|v| v.to_le_bytes()).collect()),
    )?;
    fn id_of<'a>(d: &ShardDoc<'a>) -> &'a [u8] {
        d.id.as_bytes()
    }
    fn payload_of<'a>(d: &ShardDoc<'a>) -> &'a [u8] {
        d.payload
    }
    for (name, field) in [
        ("id", id_of as for<'a> fn(&ShardDoc<'a>) -> &'a [u8]),
        ("payload", payload_of),
    ] {
        let mut starts = vec![0u64];
        let mut acc = 0u64;
        for d in docs {
            acc += field(d).len() as u64;
            starts.push(acc);
        }
        sw.section(&format!("{name}_start"), [le_bytes_u64(&starts)])?;
        sw.section(
            &format!("{name}_bytes"),
            docs.chunks(4096)
                .map(|c| c.iter().flat_map(|d| field(d).to_vec()).collect()),
        )?;
    }
    Ok(())
}

fn finish<W: Write>(
    mut sw: SectionWriter<W>,
    b: &Built,
    graph: Option<Vec<GraphFile>>,
) -> std::io::Result<W> {
    let meta = Meta {
        format: "chamfer-shard".into(),
        params: b.params.clone(),
        n_docs: b.n,
        total_tokens: b.total_tokens,
        fde_dim: b.fde_dim,
        prefix_scale: b.prefix_scale,
        sections: sw.sections.clone(),
        graph,
        written_by: concat!("chamfer ", env!("CARGO_PKG_VERSION")).into(),
    };
    let json = serde_json::to_vec(&meta).map_err(std::io::Error::other)?;
    sw.out.write_all(&json)?;
    sw.out.write_all(&(json.len() as u64).to_le_bytes())?;
    sw.out.write_all(&crc32fast::hash(&json).to_le_bytes())?;
    sw.out.write_all(&FORMAT_VERSION.to_le_bytes())?;
    sw.out.write_all(END_MAGIC)?;
    Ok(sw.out)
}

fn header() -> [u8; 64] {
    let mut h = [0u8; 64];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

fn read_u64s(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
}

/// The file part of [`Shard::write_cancellable`]: graph files, temp file, fsync, rename. The caller removes
/// what is left behind on error.
fn write_files(
    path: &Path,
    tmp: &Path,
    built: &Built,
    docs: &[ShardDoc<'_>],
    cancel: &dyn Fn() -> bool,
    graph_started: &mut bool,
) -> Result<()> {
    let params = &built.params;
    let (dir, base) = dir_and_base(path);
    if cancel() {
        return Err(IndexError::Cancelled("shard write: before the graph build"));
    }
    let graph = if docs.len() >= params.hnsw.min_docs.max(1) {
        *graph_started = true;
        let pdim = params.prefix_dim(params.hnsw.prefix_repetitions);
        let scale = 1.0 / built.prefix_scale;
        let vectors: Vec<f32> = built
            .fdes
            .chunks(built.fde_dim)
            .flat_map(|f| f[..pdim].iter().map(move |v| v.to_f32() * scale))
            .collect();
        let h = &params.hnsw;
        let gb = GraphBuild {
            m: h.m,
            ef_construction: h.ef_construction,
            storage: h.storage,
        };
        Some(CandidateIndex::build_and_dump(
            &vectors, pdim, gb, dir, &base,
        )?)
    } else {
        None
    };
    if cancel() {
        return Err(IndexError::Cancelled(
            "shard write: before writing the file",
        ));
    }
    let io = |e| IndexError::io(tmp, e);
    let file = File::create(tmp).map_err(io)?;
    let mut sw = SectionWriter {
        out: BufWriter::with_capacity(1 << 20, file),
        pos: 64,
        sections: vec![],
    };
    sw.out.write_all(&header()).map_err(io)?;
    write_body(&mut sw, built, docs).map_err(io)?;
    let out = finish(sw, built, graph).map_err(io)?;
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    if cancel() {
        return Err(IndexError::Cancelled(
            "shard write: before the final rename",
        ));
    }
    fs::rename(tmp, path).map_err(|e| IndexError::io(path, e))?;
    crate::fsutil::sync_dir(dir);
    Ok(())
}

impl Shard {
    /// Writes a shard for `docs` to `path` atomically (temp file, fsync, rename, directory fsync), with its HNSW
    /// graph files beside it when there are at least `params.hnsw.min_docs` documents. `progress` is called with
    /// the number of documents encoded so far (in batches).
    pub fn write(
        path: &Path,
        params: &IndexParams,
        docs: &[ShardDoc<'_>],
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<()> {
        Shard::write_cancellable(path, params, docs, progress, &|| false)
    }

    /// [`write`](Self::write) that gives up when `cancel()` turns true: it is asked before every encode batch,
    /// before the codebook, before the graph build, before the file is written and before the final rename.
    /// A cancelled write returns [`IndexError::Cancelled`] and leaves nothing behind (no temp file, no graph
    /// files, no shard). Any other error also removes the temp file and the graph files it wrote.
    pub fn write_cancellable(
        path: &Path,
        params: &IndexParams,
        docs: &[ShardDoc<'_>],
        progress: &(dyn Fn(u64) + Sync),
        cancel: &dyn Fn() -> bool,
    ) -> Result<()> {
        if path.file_stem().is_none() {
            return Err(IndexError::param("path", "a shard path needs a file name"));
        }
        let built = build(params, docs, progress, cancel)?;
        let (dir, base) = dir_and_base(path);
        let tmp = path.with_extension("tmp");
        let mut graph_started = false;
        let result = write_files(path, &tmp, &built, docs, cancel, &mut graph_started);
        if result.is_err() {
            // Best effort: the error being returned matters more than a failure to clean up.
            let _ = fs::remove_file(&tmp);
            if graph_started {
                for g in crate::hnsw::graph_file_paths(dir, &base) {
                    let _ = fs::remove_file(g);
                }
            }
        }
        result
    }

    /// Builds the same bytes in memory (no file, no graph): for small or unflushed batches.
    pub fn build_in_memory(params: &IndexParams, docs: &[ShardDoc<'_>]) -> Result<Shard> {
        let built = build(params, docs, &|_| {}, &|| false)?;
        let mut sw = SectionWriter {
            out: Vec::new(),
            pos: 64,
            sections: vec![],
        };
        let io = |e| IndexError::io("<memory>", e);
        sw.out.extend_from_slice(&header());
        write_body(&mut sw, &built, docs).map_err(io)?;
        let bytes = finish(sw, &built, None).map_err(io)?;
        Shard::from_memory(&bytes)
    }

    /// Verifies shard bytes held in memory (no graph is loaded: graph files live beside a shard file).
    pub(crate) fn from_memory(bytes: &[u8]) -> Result<Shard> {
        let len = bytes.len();
        let mut words = vec![0u64; len.div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..len].copy_from_slice(bytes);
        Shard::from_bytes(None, Bytes::Owned(words, len))
    }

    /// The shard's bytes (the file, or its in-memory twin).
    pub(crate) fn raw_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// Opens and verifies a shard file (and loads its graph, if it has one).
    pub fn open(path: &Path) -> Result<Shard> {
        let file = File::open(path).map_err(|e| IndexError::io(path, e))?;
        let map = ReadOnlyMap::new(&file).map_err(|e| IndexError::io(path, e))?;
        map.will_need();
        let mut shard = Shard::from_bytes(Some(path.to_path_buf()), Bytes::Mapped(map))?;
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

    fn from_bytes(path: Option<PathBuf>, bytes: Bytes) -> Result<Shard> {
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
        if version != FORMAT_VERSION {
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
        let mut ranges = Vec::new();
        for want in [
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
        ] {
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
            if crc32fast::hash(&b[r.clone()]) != s.crc32 {
                return Err(bad(format!("section {want} checksum mismatch")));
            }
            ranges.push(r);
        }
        let [tokens, panel_start, n_tokens, fde, centroids, codes, id_start, id_bytes, payload_start, payload_bytes]: [Range<usize>; 10] =
            ranges.try_into().map_err(|_| bad("section table".into()))?;
        let dim = meta.params.fde.dimension;
        let cvals: Vec<f32> = b[centroids.clone()]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if !cvals.len().is_multiple_of(dim) || codes.len() % 2 != 0 {
            return Err(bad("codebook sections have the wrong size".into()));
        }
        let codebook = (!cvals.is_empty()).then(|| Codebook::from_centroids(dim, cvals));
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
            token_start,
            id_start,
            id_bytes,
            payload_start,
            payload_bytes,
            graph: None,
            scan: std::sync::OnceLock::new(),
            bytes,
        };
        shard.check_structure().map_err(bad)?;
        Ok(shard)
    }

    /// Cross-checks sizes and offsets so that every accessor below is in bounds.
    fn check_structure(&self) -> std::result::Result<(), String> {
        let n = self.meta.n_docs;
        let dim = self.meta.params.fde.dimension;
        if self.meta.fde_dim != self.meta.params.fde.output_dim() {
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
        } else if !self.codes.is_empty() {
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
    /// Document `i`'s full FDE (f16, repetition-major).
    pub fn fde(&self, i: usize) -> &[f16] {
        let all: &[f16] = bytemuck::cast_slice(&self.bytes.as_slice()[self.fde.clone()]);
        &all[i * self.meta.fde_dim..(i + 1) * self.meta.fde_dim]
    }
    /// The token codebook, when the shard has one.
    pub fn codebook(&self) -> Option<&Codebook> {
        self.codebook.as_ref()
    }
    /// Document `i`'s token codes (empty without a codebook).
    pub fn codes(&self, i: usize) -> &[u16] {
        if self.codebook.is_none() {
            return &[];
        }
        let all: &[u16] = bytemuck::cast_slice(&self.bytes.as_slice()[self.codes.clone()]);
        &all[self.token_start[i]..self.token_start[i + 1]]
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
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use super::*;
    use crate::fde::MAX_FDE_DIMENSION;
    use crate::search::{Plan, SearchParams, Searcher};

    fn small_params(dim: usize) -> IndexParams {
        let mut p = IndexParams::new(dim);
        p.fde.num_repetitions = 2;
        p.fde.num_simhash_projections = 2;
        p.fde.projection_dimension = 4;
        p.hnsw.prefix_repetitions = 1;
        p.codebook_size = 0;
        p
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn every_limit_is_named_in_its_error_and_defaults_are_valid() {
        IndexParams::new(128).validate().unwrap();
        IndexParams::new(crate::fde::MAX_TOKEN_DIMENSION)
            .validate()
            .unwrap();
        let mut at_max = IndexParams::new(128);
        at_max.codebook_size = MAX_CODEBOOK_SIZE;
        at_max.hnsw.m = MAX_HNSW_M;
        at_max.hnsw.ef_construction = MAX_EF_CONSTRUCTION;
        at_max.hnsw.min_docs = MAX_MIN_DOCS;
        at_max.hnsw.prefix_repetitions = at_max.fde.num_repetitions;
        at_max.validate().unwrap();
        type Edit = fn(&mut IndexParams);
        let cases: [(Edit, &str, &str, String); 6] = [
            (|p| p.hnsw.m = 129, "hnsw m", "129", MAX_HNSW_M.to_string()),
            (
                |p| p.hnsw.ef_construction = 5000,
                "ef_construction",
                "5000",
                MAX_EF_CONSTRUCTION.to_string(),
            ),
            (
                |p| p.codebook_size = 70000,
                "codebook_size",
                "70000",
                MAX_CODEBOOK_SIZE.to_string(),
            ),
            (
                |p| p.hnsw.min_docs = usize::MAX,
                "min_docs",
                "18446744073709551615",
                MAX_MIN_DOCS.to_string(),
            ),
            (
                |p| p.hnsw.prefix_repetitions = 21,
                "prefix_repetitions",
                "21",
                "20".into(),
            ),
            (
                |p| p.fde.num_repetitions = 8192,
                "num_repetitions",
                "8192",
                crate::fde::MAX_REPETITIONS.to_string(),
            ),
        ];
        for (edit, field, value, limit) in cases {
            let mut p = IndexParams::new(128);
            edit(&mut p);
            match p.validate() {
                Err(IndexError::InvalidConfig(msg)) => assert!(
                    msg.contains(field) && msg.contains(value) && msg.contains(&limit),
                    "{msg}"
                ),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    /// The encode scratch is bounded by its byte budget for every allowed FDE size, and the default batch is
    /// unchanged.
    #[test]
    fn encode_batches_fit_the_scratch_budget() {
        assert_eq!(encode_batch_docs(10240), ENCODE_BATCH);
        for fde_dim in [1, 7, 10240, 65536, MAX_FDE_DIMENSION, usize::MAX / 2] {
            let n = encode_batch_docs(fde_dim);
            assert!((1..=ENCODE_BATCH).contains(&n), "{fde_dim}: {n}");
            if fde_dim <= MAX_FDE_DIMENSION {
                assert!(n * fde_dim * 4 <= ENCODE_SCRATCH_BYTES, "{fde_dim}: {n}");
            }
        }
        assert_eq!(encode_batch_docs(MAX_FDE_DIMENSION), 128);
    }

    /// Tokens at the very edge of f16 (+-65504, and 60000), many per document: the FDE blocks (sums of 8
    /// projected coordinates) overflow f16 unless saturated, and the graph's prefix scale would be infinite
    /// (written as JSON null, an unreadable shard). The written shard must re-open, be finite, and search.
    #[test]
    fn extreme_in_range_tokens_write_reopen_and_search() {
        let dim = 8;
        let mut params = IndexParams::new(dim);
        params.hnsw.min_docs = 1; // build the graph too: it is scaled by the prefix scale
        let docs_data: Vec<Vec<f32>> = (0..12)
            .map(|d| {
                let n = if d == 0 {
                    MAX_DOC_TOKENS.min(2048)
                } else {
                    1 + d * 37
                };
                (0..n * dim)
                    .map(|i| match (i * 31 + d * 7) % 5 {
                        0 => MAX_TOKEN_VALUE,
                        1 => -MAX_TOKEN_VALUE,
                        2 => 60000.0,
                        3 => -60000.0,
                        _ => 0.5,
                    })
                    .collect()
            })
            .collect();
        let ids: Vec<String> = (0..docs_data.len()).map(|d| format!("d{d}")).collect();
        let docs: Vec<ShardDoc<'_>> = docs_data
            .iter()
            .zip(&ids)
            .map(|(t, id)| ShardDoc {
                id,
                tokens: TokenMatrix::new(t, dim, "document").unwrap(),
                payload: b"",
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.shard");
        Shard::write(&path, &params, &docs, &|_| {}).unwrap();
        let shard = Shard::open(&path).unwrap();
        assert!(shard.graph().is_some());
        assert!(
            shard.prefix_scale().is_finite() && shard.prefix_scale() > 0.0,
            "{}",
            shard.prefix_scale()
        );
        assert!(shard.fdes().iter().all(|v| v.is_finite()));
        // Saturation really happened (this data overflows f16 without it).
        assert!(shard
            .fdes()
            .iter()
            .any(|v| v.to_f32().abs() == MAX_TOKEN_VALUE));
        assert_eq!(shard.tokens(0), docs_data[0]);
        let searcher = Searcher::new(params, vec![std::sync::Arc::new(shard)]).unwrap();
        let q = TokenMatrix::new(&docs_data[3][..2 * dim], dim, "query").unwrap();
        for plan in [Plan::Exact, Plan::Hnsw, Plan::FdeScan, Plan::CentroidScan] {
            let mut p = SearchParams::new(5);
            p.plan = plan;
            let hits = searcher.search(q, &p, None).unwrap();
            assert_eq!(hits.len(), 5, "{plan:?}");
            assert!(hits.iter().all(|h| h.score.is_finite()), "{plan:?}");
        }
        // The in-memory twin agrees.
        let mem = Shard::build_in_memory(searcher.params(), &docs).unwrap();
        assert!(mem.prefix_scale().is_finite());
    }

    #[test]
    fn too_many_tokens_in_a_document_is_refused() {
        let dim = 1;
        let data = vec![0.25f32; MAX_DOC_TOKENS + 1];
        let docs = [ShardDoc {
            id: "a",
            tokens: TokenMatrix::new(&data, dim, "document").unwrap(),
            payload: b"",
        }];
        assert!(matches!(
            Shard::build_in_memory(&small_params(dim), &docs),
            Err(IndexError::TooManyTokens { .. })
        ));
    }

    /// Cancelled after the first encode batch: Cancelled, only one batch encoded, nothing left in the folder.
    #[test]
    fn cancelled_write_stops_after_the_first_batch_and_leaves_nothing() {
        let dim = 4;
        let n = ENCODE_BATCH + 50;
        let data: Vec<f32> = (0..n * dim).map(|i| (i % 13) as f32 - 6.0).collect();
        let ids: Vec<String> = (0..n).map(|d| format!("d{d}")).collect();
        let docs: Vec<ShardDoc<'_>> = (0..n)
            .map(|d| ShardDoc {
                id: &ids[d],
                tokens: TokenMatrix::new(&data[d * dim..(d + 1) * dim], dim, "document").unwrap(),
                payload: b"p",
            })
            .collect();
        let params = small_params(dim);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s1.shard");
        let encoded = AtomicU64::new(0);
        let err = Shard::write_cancellable(
            &path,
            &params,
            &docs,
            &|k| {
                encoded.fetch_add(k, Ordering::SeqCst);
            },
            &|| encoded.load(Ordering::SeqCst) > 0,
        )
        .unwrap_err();
        assert!(matches!(err, IndexError::Cancelled(_)), "{err:?}");
        assert_eq!(encoded.load(Ordering::SeqCst), ENCODE_BATCH as u64);
        assert_eq!(files_in(dir.path()), Vec::<String>::new());
        // Never cancelled: the same call writes a shard that opens.
        Shard::write_cancellable(&path, &params, &docs, &|_| {}, &|| false).unwrap();
        assert_eq!(Shard::open(&path).unwrap().len(), n);
    }

    /// Every cancellation point (each encode batch, the codebook, the graph build, the file, the rename) leaves
    /// the folder as it was, graph files included.
    #[test]
    fn cancelled_at_every_checkpoint_leaves_nothing() {
        let dim = 4;
        let n = 40;
        let data: Vec<f32> = (0..n * dim).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let ids: Vec<String> = (0..n).map(|d| format!("d{d}")).collect();
        let docs: Vec<ShardDoc<'_>> = (0..n)
            .map(|d| ShardDoc {
                id: &ids[d],
                tokens: TokenMatrix::new(&data[d * dim..(d + 1) * dim], dim, "document").unwrap(),
                payload: b"",
            })
            .collect();
        let mut params = small_params(dim);
        params.hnsw.min_docs = 1;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s2.shard");
        let mut checkpoints = 0;
        for stop_at in 0.. {
            let calls = AtomicUsize::new(0);
            let r = Shard::write_cancellable(&path, &params, &docs, &|_| {}, &|| {
                calls.fetch_add(1, Ordering::SeqCst) >= stop_at
            });
            match r {
                Err(IndexError::Cancelled(_)) => {
                    assert_eq!(files_in(dir.path()), Vec::<String>::new(), "{stop_at}");
                    checkpoints += 1;
                }
                Ok(()) => break,
                Err(e) => panic!("{e}"),
            }
        }
        // One batch, codebook, graph, file, rename.
        assert_eq!(checkpoints, 5);
        let shard = Shard::open(&path).unwrap();
        assert!(shard.graph().is_some());
    }
}
