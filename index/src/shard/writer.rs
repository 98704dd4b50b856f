//! Writing a shard: FDE encoding in bounded batches, the token codebook, sections streamed with their CRCs, the
//! graph files, and the atomic, cancellable write (temp file, fsync, rename, directory fsync).
//! bit-flipped file is an [`IndexError::Corrupt`], never a panic.
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use half::f16;
use rayon::prelude::*;

use crate::codebook::Codebook;
use crate::fde::{FdeConfig, FdeEncoder};
use crate::hnsw::{CandidateIndex, GraphBuild, GraphFile};
use crate::kernels;
use crate::tokens::TokenMatrix;
use crate::{IndexError, Result};
use rand::{Rng, SeedableRng};

use super::*;

/// Documents whose tokens are assigned codes in one call.
const ASSIGN_RUN: usize = 64;
/// Most documents encoded per parallel FDE batch while writing.
pub(super) const ENCODE_BATCH: usize = 2048;
/// Byte budget of the writer's f32 FDE scratch (one encode batch): a batch holds
/// `clamp(ENCODE_SCRATCH_BYTES / (4 x FDE dimension), 1, 2048)` documents, so the scratch never depends on an
/// unbounded product of client-chosen values (128 MiB: 2048 documents of the default 10240-value FDE fit in
/// 80 MiB; the largest allowed FDE, 2^18 values, gets batches of 128).
pub const ENCODE_SCRATCH_BYTES: usize = 128 << 20;

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

/// An in-memory shard image, appended straight into u64 words (the alignment [`Bytes::Owned`] needs), so the
/// bytes are neither re-allocated while they grow (the capacity is estimated up front) nor copied once more.
struct AlignedBuf {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBuf {
    fn with_capacity(bytes: usize) -> AlignedBuf {
        AlignedBuf {
            words: Vec::with_capacity(bytes.div_ceil(8)),
            len: 0,
        }
    }
}

impl Write for AlignedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let end = self.len + buf.len();
        if end > self.words.len() * 8 {
            // Within the estimated capacity: no reallocation (beyond it, Vec's amortised growth).
            self.words.resize(end.div_ceil(8), 0);
        }
        bytemuck::cast_slice_mut::<u64, u8>(&mut self.words)[self.len..end].copy_from_slice(buf);
        self.len = end;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
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
    codebook: Option<Arc<Codebook>>,
    codes: Vec<u16>,
    ivf_start: Vec<u64>,
    ivf_docs: Vec<u32>,
}

/// Documents per encode batch for FDEs of `fde_dim` values: as many as fit [`ENCODE_SCRATCH_BYTES`] of f32,
/// at least 1, at most [`ENCODE_BATCH`].
pub(super) fn encode_batch_docs(fde_dim: usize) -> usize {
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

/// Trains the token codebook `params` asks for on a seeded sample of `docs`' tokens (None when
/// `params.codebook_size` is 0 or there are no documents). Its size follows [`Codebook::effective_size`]; the
/// sample holds [`crate::codebook::SAMPLE_PER_CENTROID`] tokens per centroid, drawn uniformly over all tokens
/// (a document, then a token of it), so training cost does not grow with the collection.
pub fn train_codebook(
    params: &IndexParams,
    docs: &[ShardDoc<'_>],
    cancel: &dyn Fn() -> bool,
) -> Result<Option<Codebook>> {
    let total_tokens: usize = docs.iter().map(|d| d.tokens.len()).sum();
    if params.codebook_size == 0 || docs.is_empty() {
        return Ok(None);
    }
    let dim = params.fde.dimension;
    let k = Codebook::effective_size(params.codebook_size, total_tokens);
    // Seeded, so that a shard's bytes are reproducible.
    let mut rng = rand::rngs::StdRng::seed_from_u64(params.fde.seed);
    let want = (k * crate::codebook::SAMPLE_PER_CENTROID).min(total_tokens);
    let mut sample = Vec::with_capacity(want * dim);
    let max_len = docs.iter().map(|d| d.tokens.len()).max().unwrap_or(1);
    while sample.len() < want * dim {
        // Rejection sampling: a document with probability proportional to its token count.
        let d = &docs[rng.random_range(0..docs.len())].tokens;
        let t = rng.random_range(0..max_len);
        if t < d.len() {
            sample.extend_from_slice(d.row(t));
        }
    }
    Codebook::train_cancellable(&sample, dim, k, params.fde.seed, cancel)
        .map(Some)
        .ok_or(IndexError::Cancelled("codebook training"))
}

/// The inverted file of `codes` (documents one after another, `token_start` delimiting them) over `k`
/// centroids: per centroid, the ascending documents with a token coded to it.
fn inverted_file(codes: &[u16], token_start: &[usize], k: usize) -> (Vec<u64>, Vec<u32>) {
    let n = token_start.len().saturating_sub(1);
    let mut per_doc: Vec<Vec<u16>> = (0..n)
        .into_par_iter()
        .map(|d| {
            let mut c = codes[token_start[d]..token_start[d + 1]].to_vec();
            c.sort_unstable();
            c.dedup();
            c
        })
        .collect();
    let mut start = vec![0u64; k + 1];
    for c in per_doc.iter().flatten() {
        start[*c as usize + 1] += 1;
    }
    for i in 0..k {
        start[i + 1] += start[i];
    }
    let mut fill: Vec<u64> = start[..k].to_vec();
    let mut docs = vec![0u32; start[k] as usize];
    for (d, cs) in per_doc.iter_mut().enumerate() {
        for &c in cs.iter() {
            docs[fill[c as usize] as usize] = d as u32;
            fill[c as usize] += 1;
        }
        *cs = Vec::new();
    }
    (start, docs)
}

/// FDE repetitions a shard stores: all of them without a codebook (the FDE scan is then its plan), the graph's
/// prefix when it has a codebook and a graph (the graph indexes the prefix; candidates are re-scored by
/// centroid interaction), none with a codebook and no graph (no default plan reads an FDE then; a forced FDE
/// scan falls back to the centroid scan).
pub(super) fn stored_fde_repetitions(params: &IndexParams, codebook: bool, n_docs: usize) -> usize {
    let graph = n_docs >= params.hnsw.min_docs.max(1);
    match (codebook, graph) {
        (false, _) => params.fde.num_repetitions,
        (true, true) => params.hnsw.prefix_repetitions,
        (true, false) => 0,
    }
}

/// How a shard's token codes come to be.
#[derive(Clone, Copy)]
pub enum Coding<'a> {
    /// A codebook trained on the documents as `params` asks ([`train_codebook`]); none when
    /// `params.codebook_size` is 0, and then the full FDE is stored (the FDE scan is the shard's plan).
    Train,
    /// This codebook (a collection's): no training, and approximate scores that do not depend on how
    /// documents were split into shards. `known`, when given, holds per document the codes it already has
    /// under this very codebook (from another shard that used it): they are copied, not re-assigned.
    Given {
        /// The codebook.
        codebook: &'a Arc<Codebook>,
        /// Per document (same order and length as the documents): codes already assigned with `codebook`.
        known: Option<&'a [Option<&'a [u16]>]>,
    },
    /// Tokens only: no codebook, no FDE. Searched exactly ([`crate::search::Plan::Exact`]); the cheapest
    /// shard to build (a memtable before its collection has a codebook, a log replayed at start-up).
    TokensOnly,
}

/// The checks every build starts with: valid parameters and a document count that fits u32 ids; returns the
/// token dimension.
fn check_build(params: &IndexParams, n_docs: usize) -> Result<usize> {
    params.validate()?;
    if n_docs > u32::MAX as usize {
        return Err(IndexError::param(
            "documents",
            "a shard holds at most 2^32 - 1 documents",
        ));
    }
    Ok(params.fde.dimension)
}

/// The codes of `docs` under `book`: copied from `known` where given (checked), assigned otherwise.
fn codes_for(
    book: &Codebook,
    docs: &[ShardDoc<'_>],
    known: Option<&[Option<&[u16]>]>,
) -> Result<Vec<u16>> {
    if let Some(known) = known {
        if known.len() != docs.len() {
            return Err(IndexError::param(
                "codes",
                format!("{} code lists for {} documents", known.len(), docs.len()),
            ));
        }
        for (d, k) in docs.iter().zip(known) {
            if let Some(k) = k {
                if k.len() != d.tokens.len() || k.iter().any(|&c| c as usize >= book.len()) {
                    return Err(IndexError::param(
                        "codes",
                        format!(
                            "document {:?}: its codes do not fit its tokens or the codebook",
                            d.id
                        ),
                    ));
                }
            }
        }
    }
    let known_of = |i: usize| known.and_then(|k| k[i]);
    // Documents in runs of ASSIGN_RUN: one assignment call per run keeps the two-level assignment's
    // per-cluster matrix products large. Runs whose codes are all known are copied.
    let codes: Vec<Vec<u16>> = docs
        .par_chunks(ASSIGN_RUN)
        .enumerate()
        .map(|(r, run)| {
            let first = r * ASSIGN_RUN;
            let mut buf = Vec::new();
            for (j, d) in run.iter().enumerate() {
                if known_of(first + j).is_none() {
                    buf.extend_from_slice(d.tokens.as_slice());
                }
            }
            let assigned = if buf.is_empty() {
                Vec::new()
            } else {
                book.assign_sequential(&buf)
            };
            let mut at = 0;
            let mut out = Vec::with_capacity(run.iter().map(|d| d.tokens.len()).sum());
            for (j, d) in run.iter().enumerate() {
                match known_of(first + j) {
                    Some(k) => out.extend_from_slice(k),
                    None => {
                        out.extend_from_slice(&assigned[at..at + d.tokens.len()]);
                        at += d.tokens.len();
                    }
                }
            }
            out
        })
        .collect();
    Ok(codes.concat())
}

/// The checks of one document to build: its dimension, token count and id (non-empty, unique in `seen`).
fn check_doc<'a>(
    seen: &mut std::collections::HashSet<&'a str>,
    dim: usize,
    id: &'a str,
    got_dim: usize,
    n_tokens: usize,
) -> Result<()> {
    if got_dim != dim {
        return Err(IndexError::DimensionMismatch {
            expected: dim,
            got: got_dim,
        });
    }
    if n_tokens > MAX_DOC_TOKENS {
        return Err(IndexError::TooManyTokens {
            got: n_tokens,
            max: MAX_DOC_TOKENS,
        });
    }
    if !seen.insert(id) {
        return Err(IndexError::DuplicateId(id.to_string()));
    }
    if id.is_empty() {
        return Err(IndexError::param("id", "document ids must not be empty"));
    }
    Ok(())
}

/// Where each document's packed panels start (one more entry: the end) for documents of `counts` tokens, and
/// the total token count.
fn panel_offsets(dim: usize, counts: impl ExactSizeIterator<Item = usize>) -> (Vec<u64>, u64) {
    let mut panel_start = Vec::with_capacity(counts.len() + 1);
    panel_start.push(0u64);
    let (mut panels, mut tokens) = (0u64, 0u64);
    for n in counts {
        panels += kernels::packed_len(n, dim) as u64;
        tokens += n as u64;
        panel_start.push(panels);
    }
    (panel_start, tokens)
}

/// The layout of a tokens-only shard of f16 documents (see [`Shard::build_in_memory_tokens_f16`]): the same
/// as [`build`] with [`Coding::TokensOnly`] gives for the same values.
fn build_tokens_only_f16(params: &IndexParams, docs: &[HalfDoc<'_>]) -> Result<Built> {
    let dim = check_build(params, docs.len())?;
    let mut seen = std::collections::HashSet::with_capacity(docs.len());
    let mut counts = Vec::with_capacity(docs.len());
    for d in docs {
        let n = crate::tokens::check_f16_rows(d.tokens, d.dim, "document")?;
        check_doc(&mut seen, dim, d.id, d.dim, n)?;
        counts.push(n);
    }
    let (panel_start, total_tokens) = panel_offsets(dim, counts.into_iter());
    let fde_dim = params.prefix_dim(0);
    let pdim = params.prefix_dim(params.hnsw.prefix_repetitions);
    Ok(Built {
        params: params.clone(),
        n: docs.len(),
        fde_dim,
        fdes: vec![f16::ZERO; docs.len() * fde_dim],
        prefix_scale: prefix_scale_of(&[], fde_dim, pdim),
        panel_start,
        total_tokens,
        codebook: None,
        codes: Vec::new(),
        ivf_start: Vec::new(),
        ivf_docs: Vec::new(),
    })
}

/// [`build_tokens_only_f16`] coded with a given codebook whose codes the documents already have (an upsert's
/// f16 batch coded by the server): the same as [`build`] with [`Coding::Given`] and every code known, for a
/// shard that stores no FDE (fewer than `hnsw.min_docs` documents; else [`IndexError::InvalidParam`]).
fn build_coded_f16(
    params: &IndexParams,
    docs: &[HalfDoc<'_>],
    codebook: &Arc<Codebook>,
    codes: &[&[u16]],
) -> Result<Built> {
    if stored_fde_repetitions(params, true, docs.len()) != 0 {
        return Err(IndexError::param(
            "documents",
            "an f16 shard without FDEs holds fewer than hnsw.min_docs documents",
        ));
    }
    let mut built = build_tokens_only_f16(params, docs)?;
    if codebook.dim() != params.fde.dimension {
        return Err(IndexError::DimensionMismatch {
            expected: params.fde.dimension,
            got: codebook.dim(),
        });
    }
    if codes.len() != docs.len() {
        return Err(IndexError::param(
            "codes",
            format!("{} code lists for {} documents", codes.len(), docs.len()),
        ));
    }
    let mut token_start = Vec::with_capacity(docs.len() + 1);
    token_start.push(0usize);
    for (d, c) in docs.iter().zip(codes) {
        let n = d.tokens.len() / d.dim.max(1);
        if c.len() != n || c.iter().any(|&k| k as usize >= codebook.len()) {
            return Err(IndexError::param(
                "codes",
                format!(
                    "document {:?}: its codes do not fit its tokens or the codebook",
                    d.id
                ),
            ));
        }
        token_start.push(token_start[token_start.len() - 1] + n);
    }
    if !docs.is_empty() {
        let all: Vec<u16> = codes.concat();
        let (s, d) = inverted_file(&all, &token_start, codebook.len());
        built.codebook = Some(Arc::clone(codebook));
        built.codes = all;
        built.ivf_start = s;
        built.ivf_docs = d;
    }
    Ok(built)
}

fn build(
    params: &IndexParams,
    docs: &[ShardDoc<'_>],
    coding: Coding<'_>,
    progress: &(dyn Fn(u64) + Sync),
    cancel: &dyn Fn() -> bool,
) -> Result<Built> {
    let dim = check_build(params, docs.len())?;
    let mut seen = std::collections::HashSet::with_capacity(docs.len());
    for d in docs {
        check_doc(&mut seen, dim, d.id, d.tokens.dim(), d.tokens.len())?;
    }
    // The FDE is stored only as far as a plan reads it (a Matryoshka prefix is itself an FDE).
    let coded = match coding {
        Coding::Train => params.codebook_size > 0,
        Coding::Given { .. } => true,
        Coding::TokensOnly => false,
    } && !docs.is_empty();
    let reps = match coding {
        Coding::TokensOnly => 0,
        _ => stored_fde_repetitions(params, coded, docs.len()),
    };
    let fde_dim = params.prefix_dim(reps);
    let encoder = FdeEncoder::new(FdeConfig {
        num_repetitions: reps.max(1),
        ..params.fde.clone()
    })?;
    let per_batch = encode_batch_docs(fde_dim);
    let mut fdes = vec![f16::ZERO; docs.len() * fde_dim];
    let mut scratch = vec![0f32; per_batch.min(docs.len().max(1)) * fde_dim];
    for (batch, out) in docs
        .chunks(per_batch)
        .zip(fdes.chunks_mut((per_batch * fde_dim).max(1)))
        .take(if fde_dim == 0 { 0 } else { usize::MAX })
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
    let (panel_start, total_tokens) = panel_offsets(dim, docs.iter().map(|d| d.tokens.len()));
    let pdim = params.prefix_dim(params.hnsw.prefix_repetitions);
    let prefix_scale = prefix_scale_of(&fdes, fde_dim, pdim);
    let (codebook, known) = match coding {
        Coding::Given { codebook, .. } if codebook.dim() != dim => {
            return Err(IndexError::DimensionMismatch {
                expected: dim,
                got: codebook.dim(),
            })
        }
        Coding::Given { codebook, known } => (Some(Arc::clone(codebook)), known),
        Coding::Train => (train_codebook(params, docs, cancel)?.map(Arc::new), None),
        Coding::TokensOnly => (None, None),
    };
    let (codes, ivf_start, ivf_docs) = match &codebook {
        Some(book) if !docs.is_empty() => {
            if cancel() {
                return Err(IndexError::Cancelled("shard write: before the token codes"));
            }
            let codes = codes_for(book, docs, known)?;
            let mut token_start = Vec::with_capacity(docs.len() + 1);
            token_start.push(0usize);
            for d in docs {
                token_start.push(token_start.last().unwrap_or(&0) + d.tokens.len());
            }
            let (s, d) = inverted_file(&codes, &token_start, book.len());
            (codes, s, d)
        }
        Some(_) | None => (Vec::new(), Vec::new(), Vec::new()),
    };
    if fde_dim == 0 {
        // Without FDEs to encode, the documents are done once they have their codes.
        progress(docs.len() as u64);
    }
    let codebook = codebook.filter(|_| !docs.is_empty());
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
        ivf_start,
        ivf_docs,
    })
}

/// The documents a shard's sections are laid out from: new documents ([`ShardDoc`]s, packed here) or
/// documents of existing shards (a merge: their packed panels are copied as they are).
trait LayoutDocs: Sync {
    fn count(&self) -> usize;
    fn n_tokens(&self, i: usize) -> usize;
    /// Appends document `i`'s packed panels ([`kernels::packed_len`] values).
    fn push_packed(&self, i: usize, dim: usize, out: &mut Vec<f16>);
    fn id(&self, i: usize) -> &[u8];
    fn payload(&self, i: usize) -> &[u8];
}

impl LayoutDocs for [ShardDoc<'_>] {
    fn count(&self) -> usize {
        self.len()
    }
    fn n_tokens(&self, i: usize) -> usize {
        self[i].tokens.len()
    }
    fn push_packed(&self, i: usize, dim: usize, out: &mut Vec<f16>) {
        kernels::pack_tokens(self[i].tokens.as_slice(), dim, out);
    }
    fn id(&self, i: usize) -> &[u8] {
        self[i].id.as_bytes()
    }
    fn payload(&self, i: usize) -> &[u8] {
        self[i].payload
    }
}

impl LayoutDocs for [HalfDoc<'_>] {
    fn count(&self) -> usize {
        self.len()
    }
    fn n_tokens(&self, i: usize) -> usize {
        self[i].tokens.len() / self[i].dim.max(1)
    }
    fn push_packed(&self, i: usize, dim: usize, out: &mut Vec<f16>) {
        kernels::pack_tokens_f16(self[i].tokens, dim, out);
    }
    fn id(&self, i: usize) -> &[u8] {
        self[i].id.as_bytes()
    }
    fn payload(&self, i: usize) -> &[u8] {
        self[i].payload
    }
}

/// Documents of existing shards, in the order a merged shard holds them.
struct MergedDocs<'a>(&'a [(&'a Shard, u32)]);

impl LayoutDocs for MergedDocs<'_> {
    fn count(&self) -> usize {
        self.0.len()
    }
    fn n_tokens(&self, i: usize) -> usize {
        let (s, d) = self.0[i];
        s.n_tokens(d as usize)
    }
    fn push_packed(&self, i: usize, _dim: usize, out: &mut Vec<f16>) {
        let (s, d) = self.0[i];
        out.extend_from_slice(s.packed_tokens(d as usize));
    }
    fn id(&self, i: usize) -> &[u8] {
        let (s, d) = self.0[i];
        s.id(d as usize).as_bytes()
    }
    fn payload(&self, i: usize) -> &[u8] {
        let (s, d) = self.0[i];
        s.payload(d as usize)
    }
}

/// Writes every section after the header; `omit_codebook` leaves the codebook section empty (only for
/// in-memory shards whose codebook is handed over directly, see `Shard::from_owned_words`).
fn write_body<W: Write, D: LayoutDocs + ?Sized>(
    sw: &mut SectionWriter<W>,
    b: &Built,
    docs: &D,
    omit_codebook: bool,
) -> std::io::Result<()> {
    let dim = b.params.fde.dimension;
    let n = docs.count();
    sw.section(
        "tokens",
        (0..n).step_by(256).map(|first| {
            let mut packed = Vec::new();
            for i in first..(first + 256).min(n) {
                docs.push_packed(i, dim, &mut packed);
            }
            bytemuck::cast_slice::<f16, u8>(&packed).to_vec()
        }),
    )?;
    sw.section("panel_start", [le_bytes_u64(&b.panel_start)])?;
    sw.section(
        "n_tokens",
        [(0..n)
            .flat_map(|i| (docs.n_tokens(i) as u32).to_le_bytes())
            .collect()],
    )?;
    sw.section(
        "fde",
        b.fdes
            .chunks(1 << 20)
            .map(|c| bytemuck::cast_slice::<f16, u8>(c).to_vec()),
    )?;
    sw.section(
        "codebook",
        [b.codebook
            .as_ref()
            .filter(|_| !omit_codebook)
            .map(|c| c.to_bytes())
            .unwrap_or_default()],
    )?;
    sw.section(
        "codes",
        b.codes
            .chunks(1 << 20)
            .map(|c| c.iter().flat_map(|v| v.to_le_bytes()).collect()),
    )?;
    sw.section("ivf_start", [le_bytes_u64(&b.ivf_start)])?;
    sw.section(
        "ivf_docs",
        b.ivf_docs
            .chunks(1 << 20)
            .map(|c| c.iter().flat_map(|v| v.to_le_bytes()).collect()),
    )?;
    for name in ["id", "payload"] {
        let field = |i: usize| {
            if name == "id" {
                docs.id(i)
            } else {
                docs.payload(i)
            }
        };
        let mut starts = vec![0u64];
        let mut acc = 0u64;
        for i in 0..n {
            acc += field(i).len() as u64;
            starts.push(acc);
        }
        sw.section(&format!("{name}_start"), [le_bytes_u64(&starts)])?;
        sw.section(
            &format!("{name}_bytes"),
            (0..n).step_by(4096).map(|first| {
                (first..(first + 4096).min(n))
                    .flat_map(|i| field(i).to_vec())
                    .collect()
            }),
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

pub(super) fn read_u64s(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
}

/// The file part of [`Shard::write_cancellable`]: graph files, temp file, fsync, rename. The caller removes
/// what is left behind on error.
fn write_files<D: LayoutDocs + ?Sized>(
    path: &Path,
    tmp: &Path,
    built: &Built,
    docs: &D,
    cancel: &dyn Fn() -> bool,
    graph_started: &mut bool,
) -> Result<()> {
    let params = &built.params;
    let (dir, base) = dir_and_base(path);
    if cancel() {
        return Err(IndexError::Cancelled("shard write: before the graph build"));
    }
    let graph = if docs.count() >= params.hnsw.min_docs.max(1) {
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
    write_body(&mut sw, built, docs, false).map_err(io)?;
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

/// Writes `built` to `path` (see [`write_files`]), removing what it left behind on error.
fn write_built<D: LayoutDocs + ?Sized>(
    path: &Path,
    built: &Built,
    docs: &D,
    cancel: &dyn Fn() -> bool,
) -> Result<()> {
    let (dir, base) = dir_and_base(path);
    let tmp = path.with_extension("tmp");
    let mut graph_started = false;
    let result = write_files(path, &tmp, built, docs, cancel, &mut graph_started);
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

/// Assignment runs between two cancellation checks of a merge (see [`build_merged`]).
const CANCEL_RUNS: usize = 16;

/// [`build`] for a merge of existing shards' documents (see [`Shard::write_merged`]).
fn build_merged(
    params: &IndexParams,
    docs: &[(&Shard, u32)],
    book: &Arc<Codebook>,
    progress: &(dyn Fn(u64) + Sync),
    cancel: &dyn Fn() -> bool,
) -> Result<Built> {
    let dim = check_build(params, docs.len())?;
    if docs.is_empty() || docs.len() >= params.hnsw.min_docs.max(1) {
        return Err(IndexError::param(
            "documents",
            format!(
                "a merged shard holds 1 to {} documents (it carries no graph), got {}",
                params.hnsw.min_docs.max(1) - 1,
                docs.len()
            ),
        ));
    }
    if book.dim() != dim {
        return Err(IndexError::DimensionMismatch {
            expected: dim,
            got: book.dim(),
        });
    }
    let mut seen = std::collections::HashSet::with_capacity(docs.len());
    for &(s, d) in docs {
        if s.params().fde.dimension != dim {
            return Err(IndexError::DimensionMismatch {
                expected: dim,
                got: s.params().fde.dimension,
            });
        }
        if d as usize >= s.len() {
            return Err(IndexError::param(
                "documents",
                format!("document {d} of a {}-document shard", s.len()),
            ));
        }
        if !seen.insert(s.id(d as usize)) {
            return Err(IndexError::DuplicateId(s.id(d as usize).to_string()));
        }
    }
    drop(seen);
    let mut panel_start = Vec::with_capacity(docs.len() + 1);
    let mut token_start = Vec::with_capacity(docs.len() + 1);
    panel_start.push(0u64);
    token_start.push(0usize);
    for &(s, d) in docs {
        let n = s.n_tokens(d as usize);
        panel_start.push(panel_start[panel_start.len() - 1] + kernels::packed_len(n, dim) as u64);
        token_start.push(token_start[token_start.len() - 1] + n);
    }
    if cancel() {
        return Err(IndexError::Cancelled("shard merge: before the token codes"));
    }
    let shared = |s: &Shard| s.codebook_arc().is_some_and(|b| Arc::ptr_eq(b, book));
    // Assigned in groups of runs, with a cancellation check between groups: re-coding a large shard takes
    // seconds, and its caller may give way to other work.
    let mut codes: Vec<Vec<u16>> = Vec::with_capacity(docs.len().div_ceil(ASSIGN_RUN));
    for (g, group) in docs.chunks(ASSIGN_RUN * CANCEL_RUNS).enumerate() {
        if g > 0 && cancel() {
            return Err(IndexError::Cancelled(
                "shard merge: while assigning token codes",
            ));
        }
        codes.extend(
            group
                .par_chunks(ASSIGN_RUN)
                .map(|run| {
                    let mut buf = Vec::new();
                    for &(s, d) in run.iter().filter(|(s, _)| !shared(s)) {
                        buf.extend(s.tokens(d as usize));
                    }
                    let assigned = if buf.is_empty() {
                        Vec::new()
                    } else {
                        book.assign_sequential(&buf)
                    };
                    let mut at = 0;
                    let mut out = Vec::new();
                    for &(s, d) in run {
                        if shared(s) {
                            out.extend_from_slice(s.codes(d as usize));
                        } else {
                            let n = s.n_tokens(d as usize);
                            out.extend_from_slice(&assigned[at..at + n]);
                            at += n;
                        }
                    }
                    progress(run.len() as u64);
                    out
                })
                .collect::<Vec<_>>(),
        );
    }
    let codes = codes.concat();
    let (ivf_start, ivf_docs) = inverted_file(&codes, &token_start, book.len());
    Ok(Built {
        params: params.clone(),
        n: docs.len(),
        fde_dim: 0,
        fdes: Vec::new(),
        panel_start,
        total_tokens: token_start[docs.len()] as u64,
        prefix_scale: 1.0,
        codebook: Some(Arc::clone(book)),
        codes,
        ivf_start,
        ivf_docs,
    })
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
        Shard::write_coded(path, params, docs, Coding::Train, progress, cancel)
    }

    /// [`write_cancellable`](Self::write_cancellable) with a given token codebook (a collection's, see
    /// [`train_codebook`]) instead of one trained on `docs`: no training, and approximate scores that do not
    /// depend on how documents were split into shards. `None` trains one as `params` asks.
    pub fn write_with_codebook(
        path: &Path,
        params: &IndexParams,
        docs: &[ShardDoc<'_>],
        codebook: Option<Arc<Codebook>>,
        progress: &(dyn Fn(u64) + Sync),
        cancel: &dyn Fn() -> bool,
    ) -> Result<()> {
        match &codebook {
            Some(codebook) => Shard::write_coded(
                path,
                params,
                docs,
                Coding::Given {
                    codebook,
                    known: None,
                },
                progress,
                cancel,
            ),
            None => Shard::write_coded(path, params, docs, Coding::Train, progress, cancel),
        }
    }

    /// [`write_cancellable`](Self::write_cancellable) with the token codes made as `coding` says.
    pub fn write_coded(
        path: &Path,
        params: &IndexParams,
        docs: &[ShardDoc<'_>],
        coding: Coding<'_>,
        progress: &(dyn Fn(u64) + Sync),
        cancel: &dyn Fn() -> bool,
    ) -> Result<()> {
        if path.file_stem().is_none() {
            return Err(IndexError::param("path", "a shard path needs a file name"));
        }
        let built = build(params, docs, coding, progress, cancel)?;
        write_built(path, &built, docs, cancel)
    }

    /// Writes a shard holding documents of existing shards (a merge: `docs` lists `(shard, document)` in the
    /// new order), coded with `codebook`: packed tokens, ids and payloads are copied as they are, codes are
    /// copied from shards coded with this very codebook (`Arc::ptr_eq`, see [`Shard::share_codebook`]) and
    /// assigned for the others. No FDE and no graph: the merge must stay below `params.hnsw.min_docs` (else
    /// [`IndexError::InvalidParam`]; write such shards with [`write_coded`](Self::write_coded)). Memory: the
    /// codes and the inverted file, never the tokens (they stream from the sources). Atomic and cancellable like
    /// [`write_cancellable`](Self::write_cancellable).
    pub fn write_merged(
        path: &Path,
        params: &IndexParams,
        docs: &[(&Shard, u32)],
        codebook: &Arc<Codebook>,
        progress: &(dyn Fn(u64) + Sync),
        cancel: &dyn Fn() -> bool,
    ) -> Result<()> {
        if path.file_stem().is_none() {
            return Err(IndexError::param("path", "a shard path needs a file name"));
        }
        let built = build_merged(params, docs, codebook, progress, cancel)?;
        write_built(path, &built, &MergedDocs(docs), cancel)
    }

    /// Builds the same bytes in memory (no file, no graph): for small or unflushed batches.
    pub fn build_in_memory(params: &IndexParams, docs: &[ShardDoc<'_>]) -> Result<Shard> {
        Shard::build_in_memory_coded(params, docs, Coding::Train)
    }

    /// [`build_in_memory`](Self::build_in_memory) with a given codebook (see
    /// [`write_with_codebook`](Self::write_with_codebook)).
    pub fn build_in_memory_with_codebook(
        params: &IndexParams,
        docs: &[ShardDoc<'_>],
        codebook: Option<Arc<Codebook>>,
    ) -> Result<Shard> {
        match &codebook {
            Some(codebook) => Shard::build_in_memory_coded(
                params,
                docs,
                Coding::Given {
                    codebook,
                    known: None,
                },
            ),
            None => Shard::build_in_memory_coded(params, docs, Coding::Train),
        }
    }

    /// [`build_in_memory`](Self::build_in_memory) with the token codes made as `coding` says.
    pub fn build_in_memory_coded(
        params: &IndexParams,
        docs: &[ShardDoc<'_>],
        coding: Coding<'_>,
    ) -> Result<Shard> {
        // A given codebook is handed to the shard as it is (the same Arc), not serialised and parsed back.
        let given = match coding {
            Coding::Given { codebook, .. } => Some(Arc::clone(codebook)),
            Coding::Train | Coding::TokensOnly => None,
        };
        let built = build(params, docs, coding, &|_| {}, &|| false)?;
        in_memory(&built, docs, given.as_ref())
    }

    /// A tokens-only in-memory shard ([`Coding::TokensOnly`]) of documents whose tokens are f16 already (a log
    /// replayed at start-up): the bytes [`build_in_memory_coded`](Self::build_in_memory_coded) makes of the same
    /// values, without a round trip through f32.
    pub fn build_in_memory_tokens_f16(params: &IndexParams, docs: &[HalfDoc<'_>]) -> Result<Shard> {
        let built = build_tokens_only_f16(params, docs)?;
        in_memory(&built, docs, None)
    }

    /// [`build_in_memory_coded`](Self::build_in_memory_coded) with [`Coding::Given`] and every code known, for
    /// documents whose tokens are f16 already (an upsert the client sent as f16): the same bytes, laid out
    /// from the f16 values as they are. Only for shards that store no FDE (fewer than `hnsw.min_docs`
    /// documents); `codes` holds each document's codes under `codebook`.
    pub fn build_in_memory_f16_coded(
        params: &IndexParams,
        docs: &[HalfDoc<'_>],
        codebook: &Arc<Codebook>,
        codes: &[&[u16]],
    ) -> Result<Shard> {
        let built = build_coded_f16(params, docs, codebook, codes)?;
        in_memory(&built, docs, Some(codebook))
    }
}

/// Lays `built` out in memory (aligned words sized by an estimate, so nothing is reallocated or copied) and
/// opens it; `given` is the codebook handed over as it is (its section left empty).
fn in_memory<D: LayoutDocs + ?Sized>(
    built: &Built,
    docs: &D,
    given: Option<&Arc<Codebook>>,
) -> Result<Shard> {
    // Tokens, codes and postings, ids and payloads, the FDEs, per-document offsets, then room for the rest.
    let estimate = built.panel_start.last().copied().unwrap_or(0) as usize * 2
        + built.total_tokens as usize * 6
        + (0..docs.count())
            .map(|i| docs.id(i).len() + docs.payload(i).len())
            .sum::<usize>()
        + built.fdes.len() * 2
        + docs.count() * 48
        + (64 << 10);
    let mut sw = SectionWriter {
        out: AlignedBuf::with_capacity(estimate),
        pos: 64,
        sections: vec![],
    };
    let io = |e| IndexError::io("<memory>", e);
    sw.out.write_all(&header()).map_err(io)?;
    write_body(&mut sw, built, docs, given.is_some()).map_err(io)?;
    let out = finish(sw, built, None).map_err(io)?;
    Shard::from_owned_words(out.words, out.len, given)
}
