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
/// Documents encoded per parallel FDE batch while writing (bounds the f32 scratch memory).
const ENCODE_BATCH: usize = 2048;

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

    /// Checks every field; the message names the first problem.
    pub fn validate(&self) -> Result<()> {
        self.fde.validate()?;
        let h = &self.hnsw;
        if h.prefix_repetitions == 0 || h.prefix_repetitions > self.fde.num_repetitions {
            return Err(IndexError::InvalidConfig(format!(
                "hnsw prefix_repetitions must be in 1..={} (the FDE's repetitions), got {}",
                self.fde.num_repetitions, h.prefix_repetitions
            )));
        }
        if self.fde.final_projection_dimension.is_some() {
            return Err(IndexError::InvalidConfig(
                "final_projection_dimension mixes all repetitions, so the FDE is no longer prefix-truncatable: \
                 an index needs it unset"
                    .into(),
            ));
        }
        if self.codebook_size > 1 << 16 {
            return Err(IndexError::InvalidConfig(format!(
                "codebook_size must be at most 65536, got {}",
                self.codebook_size
            )));
        }
        if h.m == 0 || h.m > 128 {
            return Err(IndexError::InvalidConfig(format!(
                "hnsw m must be in 1..=128, got {}",
                h.m
            )));
        }
        if h.ef_construction == 0 || h.ef_construction > 4096 {
            return Err(IndexError::InvalidConfig(format!(
                "hnsw ef_construction must be in 1..=4096, got {}",
                h.ef_construction
            )));
        }
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

fn build(
    params: &IndexParams,
    docs: &[ShardDoc<'_>],
    progress: &(dyn Fn(u64) + Sync),
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
        if !seen.insert(d.id) {
            return Err(IndexError::DuplicateId(d.id.to_string()));
        }
        if d.id.is_empty() {
            return Err(IndexError::param("id", "document ids must not be empty"));
        }
    }
    let encoder = FdeEncoder::new(params.fde.clone())?;
    let fde_dim = params.fde.output_dim();
    let mut fdes = vec![f16::ZERO; docs.len() * fde_dim];
    let mut scratch = vec![0f32; ENCODE_BATCH.min(docs.len().max(1)) * fde_dim];
    for (batch, out) in docs
        .chunks(ENCODE_BATCH)
        .zip(fdes.chunks_mut(ENCODE_BATCH * fde_dim))
    {
        let toks: Vec<TokenMatrix<'_>> = batch.iter().map(|d| d.tokens).collect();
        let buf = &mut scratch[..batch.len() * fde_dim];
        encoder.encode_documents_into(&toks, buf)?;
        out.par_chunks_mut(fde_dim)
            .zip(buf.par_chunks(fde_dim))
            .for_each(|(o, s)| {
                for (h, &v) in o.iter_mut().zip(s) {
                    *h = f16::from_f32(v);
                }
            });
        progress(batch.len() as u64);
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
    let prefix_scale = fdes
        .par_chunks(fde_dim.max(1))
        .map(|f| {
            f[..pdim]
                .iter()
                .map(|v| v.to_f32() * v.to_f32())
                .sum::<f32>()
                .sqrt()
        })
        .reduce(|| 0.0, f32::max);
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
        let book = Codebook::train(&sample, dim, k, params.fde.seed);
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
        if path.file_stem().is_none() {
            return Err(IndexError::param("path", "a shard path needs a file name"));
        }
        let built = build(params, docs, progress)?;
        let (dir, base) = dir_and_base(path);
        let graph = if docs.len() >= params.hnsw.min_docs.max(1) {
            let pdim = params.prefix_dim(params.hnsw.prefix_repetitions);
            let scale = if built.prefix_scale > 0.0 {
                1.0 / built.prefix_scale
            } else {
                1.0
            };
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
        let tmp = path.with_extension("tmp");
        let io = |e| IndexError::io(&tmp, e);
        let file = File::create(&tmp).map_err(io)?;
        let mut sw = SectionWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            pos: 64,
            sections: vec![],
        };
        sw.out.write_all(&header()).map_err(io)?;
        write_body(&mut sw, &built, docs).map_err(io)?;
        let out = finish(sw, &built, graph).map_err(io)?;
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| IndexError::io(path, e))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Builds the same bytes in memory (no file, no graph): for small or unflushed batches.
    pub fn build_in_memory(params: &IndexParams, docs: &[ShardDoc<'_>]) -> Result<Shard> {
        let built = build(params, docs, &|_| {})?;
        let mut sw = SectionWriter {
            out: Vec::new(),
            pos: 64,
            sections: vec![],
        };
        let io = |e| IndexError::io("<memory>", e);
        sw.out.extend_from_slice(&header());
        write_body(&mut sw, &built, docs).map_err(io)?;
        let bytes = finish(sw, &built, None).map_err(io)?;
        let len = bytes.len();
        let mut words = vec![0u64; len.div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..len].copy_from_slice(&bytes);
        Shard::from_bytes(None, Bytes::Owned(words, len))
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
        let mut token_start = Vec::with_capacity(meta.n_docs + 1);
        token_start.push(0usize);
        for c in b[n_tokens.clone()].chunks_exact(4) {
            let last = *token_start.last().unwrap_or(&0);
            token_start.push(last + u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize);
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
        let len_ok = |r: &Range<usize>, want: usize| r.len() == want;
        if !len_ok(&self.panel_start, (n + 1) * 8)
            || !len_ok(&self.n_tokens, n * 4)
            || !len_ok(&self.fde, n * self.meta.fde_dim * 2)
            || !len_ok(&self.id_start, (n + 1) * 8)
            || !len_ok(&self.payload_start, (n + 1) * 8)
        {
            return Err("section sizes disagree with the document count".into());
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
            || starts.last().map(|&s| s * 2) != Some(self.tokens.len() as u64)
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
