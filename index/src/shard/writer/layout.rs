//! What is derived from the documents before bytes are laid out: the checks, the stored FDEs and their prefix
//! scale, the panel offsets.
use half::f16;
use rayon::prelude::*;

use super::*;
use crate::fde::{FdeConfig, FdeEncoder};
use crate::kernels;
use crate::tokens::TokenMatrix;
use crate::IndexError;

/// f32 -> f16 for a stored FDE value, saturating at f16's largest finite value. Tokens are within that range,
/// but an FDE block is a (projected) sum over up to d coordinates: 128 coordinates of 60000 project to 7.7M. A
/// saturated value is still the largest one in its direction; the exact re-rank uses the tokens themselves.
pub(super) fn fde_value_to_f16(v: f32) -> f16 {
    f16::from_f32(v.clamp(-MAX_TOKEN_VALUE, MAX_TOKEN_VALUE))
}

/// The graph's prefix scale: the largest L2 norm of a stored (f16) prefix, summed in f64 and always a finite,
/// positive f32 (stored values are finite f16s, so the sum cannot overflow; an all-zero shard gets 1).
pub(super) fn prefix_scale_of(fdes: &[f16], fde_dim: usize, pdim: usize) -> f32 {
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

/// FDE repetitions a shard stores: all of them without a codebook (the FDE scan is then its plan), the graph's
/// prefix when it has a codebook and a graph (the graph indexes the prefix; candidates are re-scored by
/// centroid interaction), none with a codebook and no graph (no default plan reads an FDE then; a forced FDE
/// scan falls back to the centroid scan).
pub(in crate::shard) fn stored_fde_repetitions(
    params: &IndexParams,
    codebook: bool,
    n_docs: usize,
) -> usize {
    let graph = n_docs >= params.hnsw.min_docs.max(1);
    match (codebook, graph) {
        (false, _) => params.fde.num_repetitions,
        (true, true) => params.hnsw.prefix_repetitions,
        (true, false) => 0,
    }
}

/// The checks every build starts with: valid parameters and a document count that fits u32 ids; returns the
/// token dimension.
pub(super) fn check_build(params: &IndexParams, n_docs: usize) -> Result<usize> {
    params.validate()?;
    if n_docs > u32::MAX as usize {
        return Err(IndexError::param(
            "documents",
            "a shard holds at most 2^32 - 1 documents",
        ));
    }
    Ok(params.fde.dimension)
}

/// The checks of one document to build: its dimension, token count and id (non-empty, unique in `seen`).
pub(super) fn check_doc<'a>(
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
pub(super) fn panel_offsets(
    dim: usize,
    counts: impl ExactSizeIterator<Item = usize>,
) -> (Vec<u64>, u64) {
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
pub(super) fn build_tokens_only_f16(params: &IndexParams, docs: &[HalfDoc<'_>]) -> Result<Built> {
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

pub(super) fn build(
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
