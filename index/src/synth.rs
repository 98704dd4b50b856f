//! Synthetic corpora whose statistics mimic a real data set, for scale tests.
//!
//! Token vectors of real late-interaction models cluster (a word piece in similar contexts lands in a similar
//! place), documents are mixtures of a few regions, and queries share regions with their relevant documents.
//! The generator keeps that structure without copying documents:
//!
//! 1. spherical k-means (`clusters` centres) over a sample of the real documents' tokens;
//! 2. a synthetic document takes a random real document as a *template* for its length and its cluster mix:
//!    each token keeps the template token's cluster (or, with probability `swap`, a random cluster by global
//!    frequency), then becomes a random real member token of that cluster plus Gaussian noise, re-normalised
//!    when the real tokens are unit vectors;
//! 3. a query picks a random synthetic document (its relevant one), a real query's length, and draws its tokens
//!    near that document's tokens (with more noise), some from random clusters;
//! 4. the exact Chamfer top-100 of every query is computed with the engine's kernel.
//!
//! Everything is seeded (ChaCha, platform independent).
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;

use crate::dataset::Dataset;
use crate::kernels::{self, PreparedQuery};
use crate::{IndexError, Result};

/// Generator settings.
#[derive(Clone, Debug)]
pub struct SynthParams {
    pub docs: usize,
    pub queries: usize,
    pub seed: u64,
    pub clusters: usize,
    /// Probability that a document token leaves its template token's cluster.
    pub swap: f64,
    /// Noise standard deviation (of the whole vector's norm) added to document tokens.
    pub doc_noise: f32,
    /// Noise added to query tokens.
    pub query_noise: f32,
    /// Ground-truth depth.
    pub gt_k: usize,
}

impl SynthParams {
    pub fn new(docs: usize, queries: usize, seed: u64) -> Self {
        SynthParams { docs, queries, seed, clusters: 256, swap: 0.25, doc_noise: 0.35, query_noise: 0.5, gt_k: 100 }
    }
}

/// A generated corpus (row-major f32 tokens with offsets), ready for [`crate::dataset::DatasetWriter`].
pub struct SynthCorpus {
    pub dim: usize,
    pub doc_ids: Vec<String>,
    pub doc_tokens: Vec<f32>,
    pub doc_offsets: Vec<usize>,
    pub query_ids: Vec<String>,
    pub query_tokens: Vec<f32>,
    pub query_offsets: Vec<usize>,
    pub gt_ids: Vec<i32>,
    pub gt_scores: Vec<f32>,
    pub gt_k: usize,
    pub qrels: Vec<(String, String)>,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    kernels::dot_f32(a, b)
}

fn normalise(v: &mut [f32]) {
    let n = dot(v, v).sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

fn nearest(centres: &[f32], dim: usize, v: &[f32]) -> usize {
    let mut best = (f32::NEG_INFINITY, 0);
    for (c, centre) in centres.chunks_exact(dim).enumerate() {
        let s = dot(centre, v);
        if s > best.0 {
            best = (s, c);
        }
    }
    best.1
}

/// Stage names reported to `progress(stage, done, total)`.
pub const STAGES: [&str; 4] = ["clustering", "documents", "queries", "ground truth"];

/// Generates a corpus like `like`.
pub fn generate(like: &Dataset, p: &SynthParams, progress: &(dyn Fn(&str, usize, usize) + Sync)) -> Result<SynthCorpus> {
    if p.docs == 0 {
        return Err(IndexError::param("docs", "must be > 0"));
    }
    if like.n_queries() == 0 && p.queries > 0 {
        return Err(IndexError::param("like", "the template data set has no queries (their lengths are needed)"));
    }
    let dim = like.dim();
    let mut rng = StdRng::seed_from_u64(p.seed);
    let total_tokens = like.n_doc_tokens();
    let rows = like.all_doc_tokens();
    let all_tokens = |i: usize| -> &[f32] { &rows[i * dim..(i + 1) * dim] };
    let unit = {
        let norms: Vec<f32> = (0..total_tokens.min(1000)).map(|i| dot(all_tokens(i), all_tokens(i)).sqrt()).collect();
        norms.iter().all(|n| (n - 1.0).abs() < 0.01)
    };
    // 1. Spherical k-means on a sample.
    progress(STAGES[0], 0, 1);
    let k = p.clusters.clamp(1, total_tokens);
    let sample: Vec<usize> = (0..total_tokens.min(30_000)).map(|_| rng.random_range(0..total_tokens)).collect();
    let mut centres: Vec<f32> = (0..k).flat_map(|_| all_tokens(sample[rng.random_range(0..sample.len())]).to_vec()).collect();
    for _ in 0..5 {
        let assign: Vec<usize> = sample.par_iter().map(|&t| nearest(&centres, dim, all_tokens(t))).collect();
        let mut sums = vec![0f32; k * dim];
        for (&t, &c) in sample.iter().zip(&assign) {
            sums[c * dim..(c + 1) * dim].iter_mut().zip(all_tokens(t)).for_each(|(s, v)| *s += v);
        }
        for (c, s) in sums.chunks_exact_mut(dim).enumerate() {
            if s.iter().any(|&v| v != 0.0) {
                normalise(s);
                centres[c * dim..(c + 1) * dim].copy_from_slice(s);
            }
        }
    }
    let assign: Vec<usize> = (0..total_tokens).into_par_iter().map(|t| nearest(&centres, dim, all_tokens(t))).collect();
    let mut members: Vec<Vec<u32>> = vec![Vec::new(); k];
    for (t, &c) in assign.iter().enumerate() {
        members[c].push(t as u32);
    }
    progress(STAGES[0], 1, 1);
    let doc_noise = Normal::new(0.0f32, p.doc_noise / (dim as f32).sqrt()).map_err(|e| IndexError::param("noise", e.to_string()))?;
    let query_noise = Normal::new(0.0f32, p.query_noise / (dim as f32).sqrt()).map_err(|e| IndexError::param("noise", e.to_string()))?;
    let draw = |rng: &mut StdRng, cluster: usize, noise: &Normal<f32>, out: &mut Vec<f32>| {
        let m = &members[cluster];
        let t = if m.is_empty() { rng.random_range(0..total_tokens) } else { m[rng.random_range(0..m.len())] as usize };
        let start = out.len();
        out.extend(all_tokens(t).iter().map(|&v| v + noise.sample(rng)));
        if unit {
            normalise(&mut out[start..]);
        }
    };
    // 2. Documents.
    let doc_starts: Vec<usize> = {
        let mut v = vec![0usize];
        for i in 0..like.n_docs() {
            v.push(v[i] + like.doc_tokens(i).len() / dim);
        }
        v
    };
    let mut doc_tokens = Vec::new();
    let mut doc_offsets = vec![0usize];
    for i in 0..p.docs {
        let t = rng.random_range(0..like.n_docs());
        let (a, b) = (doc_starts[t], doc_starts[t + 1]);
        for j in a..b {
            let c = if rng.random_bool(p.swap) { assign[rng.random_range(0..total_tokens)] } else { assign[j] };
            draw(&mut rng, c, &doc_noise, &mut doc_tokens);
        }
        doc_offsets.push(doc_offsets[i] + (b - a));
        if i % 10_000 == 0 {
            progress(STAGES[1], i, p.docs);
        }
    }
    progress(STAGES[1], p.docs, p.docs);
    // 3. Queries.
    let mut query_tokens = Vec::new();
    let mut query_offsets = vec![0usize];
    let mut qrels = Vec::new();
    let doc_ids: Vec<String> = (0..p.docs).map(|i| format!("syn-{i}")).collect();
    let query_ids: Vec<String> = (0..p.queries).map(|j| format!("synq-{j}")).collect();
    for j in 0..p.queries {
        let d = rng.random_range(0..p.docs);
        let len = like.query_tokens(rng.random_range(0..like.n_queries())).len() / dim;
        let (a, b) = (doc_offsets[d], doc_offsets[d + 1]);
        for _ in 0..len {
            let c = if rng.random_bool(0.3) {
                assign[rng.random_range(0..total_tokens)]
            } else {
                let src = &doc_tokens[rng.random_range(a..b) * dim..][..dim];
                nearest(&centres, dim, src)
            };
            draw(&mut rng, c, &query_noise, &mut query_tokens);
        }
        query_offsets.push(query_offsets[j] + len);
        qrels.push((query_ids[j].clone(), doc_ids[d].clone()));
    }
    progress(STAGES[2], p.queries, p.queries);
    // 4. Exact ground truth.
    let (gt_ids, gt_scores, gt_k) = exact_ground_truth(&doc_tokens, &doc_offsets, &query_tokens, &query_offsets, dim, p.gt_k, &|d, t| progress(STAGES[3], d, t));
    Ok(SynthCorpus { dim, doc_ids, doc_tokens, doc_offsets, query_ids, query_tokens, query_offsets, gt_ids, gt_scores, gt_k, qrels })
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
            kernels::pack_tokens(&doc_tokens[doc_offsets[i] * dim..doc_offsets[i + 1] * dim], dim, &mut v);
            (v, doc_offsets[i + 1] - doc_offsets[i])
        })
        .collect();
    let nq = query_offsets.len() - 1;
    let done = std::sync::atomic::AtomicUsize::new(0);
    let per_query: Vec<(Vec<i32>, Vec<f32>)> = (0..nq)
        .into_par_iter()
        .map(|j| {
            let q = PreparedQuery::new(&query_tokens[query_offsets[j] * dim..query_offsets[j + 1] * dim], dim);
            let mut scored: Vec<(f32, usize)> = packed.iter().enumerate().map(|(i, (p, nt))| (kernels::chamfer(&q, p, *nt), i)).collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if d % 16 == 0 || d == nq {
                progress(d, nq);
            }
            scored.truncate(k);
            (scored.iter().map(|s| s.1 as i32).collect(), scored.iter().map(|s| s.0).collect())
        })
        .collect();
    let ids = per_query.iter().flat_map(|p| p.0.iter().copied()).collect();
    let scores = per_query.iter().flat_map(|p| p.1.iter().copied()).collect();
    (ids, scores, k)
}
