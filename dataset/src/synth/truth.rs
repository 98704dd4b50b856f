//! Exact Chamfer ground truth, in memory or streamed.
use super::*;

/// A ground-truth candidate. Greater is worse (a lower score, then on ties a higher document row), so that a
/// max-heap's top is the worst candidate kept.
#[derive(Clone, Copy, Debug)]
pub(super) struct Candidate {
    score: f32,
    doc: usize,
}

impl Ord for Candidate {
    fn cmp(&self, o: &Self) -> Ordering {
        o.score.total_cmp(&self.score).then(self.doc.cmp(&o.doc))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}

impl Eq for Candidate {}

/// [`exact_ground_truth`] over documents read from `docs`, `chunk_docs` documents at a time (the memory
/// bound: one chunk of packed float16 tokens and its `[chunk_docs, n_queries]` scores): every chunk is read and
/// packed by all threads, scored against every query (each document once against all queries, while it is in
/// cache), and merged into one top-`k` heap per query. Returns the same ids and scores as
/// [`exact_ground_truth`] on the same tokens (ties to the lower row), and the depth used (`min(k, docs)`).
/// `progress(done, total)` counts documents.
pub fn exact_ground_truth_stream(
    docs: &DocStream,
    query_tokens: &[f32],
    query_offsets: &[usize],
    k: usize,
    chunk_docs: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<(Vec<i32>, Vec<f32>, usize)> {
    /// Documents per read (and per packing task) within a chunk.
    const READ_DOCS: usize = 256;
    let (n, dim) = (docs.len(), docs.dim());
    let k = k.min(n);
    let nq = query_offsets.len().saturating_sub(1);
    let queries: Vec<PreparedQuery> = (0..nq)
        .map(|j| {
            PreparedQuery::new(
                &query_tokens[query_offsets[j] * dim..query_offsets[j + 1] * dim],
                dim,
            )
        })
        .collect();
    let mut heaps: Vec<BinaryHeap<Candidate>> =
        (0..nq).map(|_| BinaryHeap::with_capacity(k + 1)).collect();
    let done = AtomicUsize::new(0);
    let mut scores = Vec::new();
    progress(0, n);
    for start in (0..n).step_by(chunk_docs.max(1)) {
        let end = (start + chunk_docs.max(1)).min(n);
        let batches: Vec<usize> = (start..end).step_by(READ_DOCS).collect();
        let packed: Vec<Vec<(Vec<half::f16>, usize)>> = batches
            .par_iter()
            .map(|&b| {
                let e = (b + READ_DOCS).min(end);
                let mut tokens = Vec::new();
                docs.read_range(b..e, &mut tokens)?;
                let mut at = 0;
                Ok((b..e)
                    .map(|i| {
                        let len = docs.doc_len(i) * dim;
                        let mut v = Vec::new();
                        kernels::pack_tokens(&tokens[at..at + len], dim, &mut v);
                        at += len;
                        (v, docs.doc_len(i))
                    })
                    .collect())
            })
            .collect::<Result<_>>()?;
        let packed: Vec<(Vec<half::f16>, usize)> = packed.into_iter().flatten().collect();
        scores.clear();
        scores.resize((end - start) * nq, 0f32);
        if nq > 0 {
            scores
                .par_chunks_mut(nq)
                .zip(packed.par_iter())
                .for_each(|(row, (p, nt))| {
                    for (s, q) in row.iter_mut().zip(&queries) {
                        *s = kernels::chamfer(q, p, *nt);
                    }
                    let d = done.fetch_add(1, AtomicOrdering::Relaxed) + 1;
                    if d.is_multiple_of(4096) {
                        progress(d, n);
                    }
                });
        }
        drop(packed);
        heaps.par_iter_mut().enumerate().for_each(|(j, heap)| {
            for (d, row) in scores.chunks_exact(nq).enumerate() {
                let c = Candidate {
                    score: row[j],
                    doc: start + d,
                };
                if heap.len() < k {
                    heap.push(c);
                } else if let Some(mut worst) = heap.peek_mut() {
                    if c < *worst {
                        *worst = c;
                    }
                }
            }
        });
        progress(end, n);
    }
    let mut ids = Vec::with_capacity(nq * k);
    let mut best = Vec::with_capacity(nq * k);
    for heap in heaps {
        for c in heap.into_sorted_vec() {
            ids.push(c.doc as i32);
            best.push(c.score);
        }
    }
    Ok((ids, best, k))
}

/// Exact Chamfer top-`k` of every query over every document (ties to the lower row), with the engine's kernel.
/// Returns row-major ids, scores, and the depth actually used (`min(k, docs)`).
pub fn exact_ground_truth(
    doc_tokens: &[f32],
    doc_offsets: &[usize],
    query_tokens: &[f32],
    query_offsets: &[usize],
    dim: usize,
    k: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> (Vec<i32>, Vec<f32>, usize) {
    let n = doc_offsets.len() - 1;
    let k = k.min(n);
    let packed: Vec<(Vec<half::f16>, usize)> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut v = Vec::new();
            kernels::pack_tokens(
                &doc_tokens[doc_offsets[i] * dim..doc_offsets[i + 1] * dim],
                dim,
                &mut v,
            );
            (v, doc_offsets[i + 1] - doc_offsets[i])
        })
        .collect();
    let nq = query_offsets.len() - 1;
    let done = AtomicUsize::new(0);
    let per_query: Vec<(Vec<i32>, Vec<f32>)> = (0..nq)
        .into_par_iter()
        .map(|j| {
            let q = PreparedQuery::new(
                &query_tokens[query_offsets[j] * dim..query_offsets[j + 1] * dim],
                dim,
            );
            let mut scored: Vec<(f32, usize)> = packed
                .iter()
                .enumerate()
                .map(|(i, (p, nt))| (kernels::chamfer(&q, p, *nt), i))
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let d = done.fetch_add(1, AtomicOrdering::Relaxed) + 1;
            if d.is_multiple_of(16) || d == nq {
                progress(d, nq);
            }
            scored.truncate(k);
            (
                scored.iter().map(|s| s.1 as i32).collect(),
                scored.iter().map(|s| s.0).collect(),
            )
        })
        .collect();
    let ids = per_query.iter().flat_map(|p| p.0.iter().copied()).collect();
    let scores = per_query.iter().flat_map(|p| p.1.iter().copied()).collect();
    (ids, scores, k)
}
