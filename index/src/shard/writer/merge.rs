//! A shard of existing shards' documents (a merge): packed tokens copied, codes copied or re-assigned.
use rayon::prelude::*;

use super::*;
use crate::kernels;
use crate::IndexError;

/// Documents of existing shards, in the order a merged shard holds them.
pub(super) struct MergedDocs<'a>(pub(super) &'a [(&'a Shard, u32)]);

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

/// Assignment runs between two cancellation checks of a merge (see [`build_merged`]).
pub(super) const CANCEL_RUNS: usize = 16;

/// [`build`] for a merge of existing shards' documents (see [`Shard::write_merged`]).
pub(super) fn build_merged(
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
