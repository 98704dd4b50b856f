//! The token codes: the codebook trained or given, codes assigned or copied, and the inverted file.
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::*;
use crate::IndexError;

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
pub(super) fn inverted_file(
    codes: &[u16],
    token_start: &[usize],
    k: usize,
) -> (Vec<u64>, Vec<u32>) {
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

/// The codes of `docs` under `book`: copied from `known` where given (checked), assigned otherwise.
pub(super) fn codes_for(
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

/// [`build_tokens_only_f16`] coded with a given codebook whose codes the documents already have (an upsert's
/// f16 batch coded by the server): the same as [`build`] with [`Coding::Given`] and every code known, for a
/// shard that stores no FDE (fewer than `hnsw.min_docs` documents; else [`IndexError::InvalidParam`]).
pub(super) fn build_coded_f16(
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
