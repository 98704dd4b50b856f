//! Synthetic corpora whose statistics mimic a real data set, for scale tests.
//!
//! Token vectors of real late-interaction models come from word pieces: the same word in another context lands
//! near the same place (cosine ~0.8-0.9), frequent words recur across documents, and passages of one page or of
//! related pages share words. The generator keeps that structure without copying documents: every synthetic token
//! is a noisy copy of a real token (so word frequencies and the geometry of the real embedding carry over), and
//!
//! 1. documents come in topics (`docs_per_topic`, like the passages of one page) and topics in groups (like related
//!    pages): a document's tokens are copies of its topic template's tokens (`topic_share`, little noise), of its
//!    group template's tokens (`group_share`), or of random real tokens; lengths follow the real documents';
//! 2. a query picks a random synthetic document, a real query's length, and makes most of its tokens noisy copies
//!    of that document's tokens (cosine ~0.8 after `query_noise`), the rest off-topic; its relevant documents
//!    (qrels) are the documents of that topic;
//! 3. the exact Chamfer top-100 of every query is computed with the engine's kernel.
//!
//! Everything is seeded (ChaCha, platform independent).
use chamfer_index::kernels::{self, PreparedQuery};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;

use crate::dataset::Dataset;
use crate::{DataError, Result};

/// Generator settings.
#[derive(Clone, Debug)]
pub struct SynthParams {
    /// Number of documents to generate (must be > 0).
    pub docs: usize,
    /// Number of queries to generate (needs a template data set with queries when > 0).
    pub queries: usize,
    /// Seed of the random generator: the same settings and seed give the same corpus.
    pub seed: u64,
    /// Documents per topic (they share a template document's tokens, like the passages of one page).
    pub docs_per_topic: usize,
    /// Topics per group (they share a second template's tokens, like related pages).
    pub topics_per_group: usize,
    /// Share of a document's tokens that are noisy copies of its topic template's tokens.
    pub topic_share: f64,
    /// Share copied from its group's template (the rest: random real tokens).
    pub group_share: f64,
    /// Noise (norm) on topic copies.
    pub topic_noise: f32,
    /// Noise standard deviation (of the whole vector's norm) added to other document tokens.
    pub doc_noise: f32,
    /// Noise added to the document tokens a query copies (0.7: cosine ~0.8 to the original, as the real
    /// manpages queries' best token matches average 0.8).
    pub query_noise: f32,
    /// Probability that a query token is off-topic (drawn from a random cluster).
    pub query_offtopic: f64,
    /// Ground-truth depth.
    pub gt_k: usize,
}

impl SynthParams {
    /// `docs` documents and `queries` queries from `seed`, with the default shape settings (8 documents per
    /// topic, 10 topics per group, ground truth to depth 100).
    pub fn new(docs: usize, queries: usize, seed: u64) -> Self {
        SynthParams {
            docs,
            queries,
            seed,
            docs_per_topic: 8,
            topics_per_group: 10,
            topic_share: 0.5,
            group_share: 0.4,
            topic_noise: 0.5,
            doc_noise: 0.35,
            query_noise: 0.7,
            query_offtopic: 0.2,
            gt_k: 100,
        }
    }
}

/// A generated corpus (row-major f32 tokens with offsets), ready for [`crate::dataset::DatasetWriter`].
pub struct SynthCorpus {
    /// Token dimension (the template data set's).
    pub dim: usize,
    /// Document ids (`syn-0`, `syn-1`, ...).
    pub doc_ids: Vec<String>,
    /// Every document token, row-major, documents one after another.
    pub doc_tokens: Vec<f32>,
    /// Token row offsets (n_docs + 1, from 0): document `i` is rows `doc_offsets[i]..doc_offsets[i + 1]`.
    pub doc_offsets: Vec<usize>,
    /// Query ids (`synq-0`, `synq-1`, ...).
    pub query_ids: Vec<String>,
    /// Every query token, row-major, queries one after another.
    pub query_tokens: Vec<f32>,
    /// Token row offsets (n_queries + 1, from 0): query `j` is rows `query_offsets[j]..query_offsets[j + 1]`.
    pub query_offsets: Vec<usize>,
    /// Exact-Chamfer ground truth: row-major `[n_queries, gt_k]` document rows, best first.
    pub gt_ids: Vec<i32>,
    /// The matching exact Chamfer scores, row-major `[n_queries, gt_k]`.
    pub gt_scores: Vec<f32>,
    /// Ground-truth depth actually used: `min(SynthParams::gt_k, docs)`.
    pub gt_k: usize,
    /// (query id, doc id) relevance pairs: each query's relevant documents are those of its topic.
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

/// Stage names reported to `progress(stage, done, total)`.
pub const STAGES: [&str; 4] = ["preparing", "documents", "queries", "ground truth"];

/// Generates a corpus like `like`.
pub fn generate(
    like: &Dataset,
    p: &SynthParams,
    progress: &(dyn Fn(&str, usize, usize) + Sync),
) -> Result<SynthCorpus> {
    if p.docs == 0 {
        return Err(DataError::param("docs", "must be > 0"));
    }
    if like.n_queries() == 0 && p.queries > 0 {
        return Err(DataError::param(
            "like",
            "the template data set has no queries (their lengths are needed)",
        ));
    }
    let dim = like.dim();
    let mut rng = StdRng::seed_from_u64(p.seed);
    let total_tokens = like.n_doc_tokens();
    let rows = like.all_doc_tokens();
    let all_tokens = |i: usize| -> &[f32] { &rows[i * dim..(i + 1) * dim] };
    let unit = {
        let norms: Vec<f32> = (0..total_tokens.min(1000))
            .map(|i| dot(all_tokens(i), all_tokens(i)).sqrt())
            .collect();
        norms.iter().all(|n| (n - 1.0).abs() < 0.01)
    };
    progress(STAGES[0], 1, 1);
    let topic_noise = Normal::new(0.0f32, p.topic_noise / (dim as f32).sqrt())
        .map_err(|e| DataError::param("noise", e.to_string()))?;
    let doc_noise = Normal::new(0.0f32, p.doc_noise / (dim as f32).sqrt())
        .map_err(|e| DataError::param("noise", e.to_string()))?;
    let query_noise = Normal::new(0.0f32, p.query_noise / (dim as f32).sqrt())
        .map_err(|e| DataError::param("noise", e.to_string()))?;
    // A noisy copy of real token `t`, re-normalised when the real tokens are unit vectors.
    let copy = |rng: &mut StdRng, src: &[f32], noise: &Normal<f32>, out: &mut Vec<f32>| {
        let start = out.len();
        out.extend(src.iter().map(|&v| v + noise.sample(rng)));
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
    let span = |t: usize| doc_starts[t]..doc_starts[t + 1];
    let n_topics = (p.docs / p.docs_per_topic.max(1)).max(1);
    let n_groups = (n_topics / p.topics_per_group.max(1)).max(1);
    let group_tpl: Vec<usize> = (0..n_groups)
        .map(|_| rng.random_range(0..like.n_docs()))
        .collect();
    let topic_tpl: Vec<usize> = (0..n_topics)
        .map(|_| rng.random_range(0..like.n_docs()))
        .collect();
    let topic_group: Vec<usize> = (0..n_topics)
        .map(|_| rng.random_range(0..n_groups))
        .collect();
    let mut doc_tokens = Vec::new();
    let mut doc_offsets = vec![0usize];
    for i in 0..p.docs {
        // Document i belongs to topic i % n_topics (so every topic has docs_per_topic documents).
        let topic = i % n_topics;
        let len = span(rng.random_range(0..like.n_docs())).len();
        for _ in 0..len {
            let u: f64 = rng.random();
            let (src, noise) = if u < p.topic_share {
                (rng.random_range(span(topic_tpl[topic])), &topic_noise)
            } else if u < p.topic_share + p.group_share {
                (
                    rng.random_range(span(group_tpl[topic_group[topic]])),
                    &doc_noise,
                )
            } else {
                (rng.random_range(0..total_tokens), &doc_noise)
            };
            copy(&mut rng, all_tokens(src), noise, &mut doc_tokens);
        }
        doc_offsets.push(doc_offsets[i] + len);
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
        let len = like
            .query_tokens(rng.random_range(0..like.n_queries()))
            .len()
            / dim;
        let (a, b) = (doc_offsets[d], doc_offsets[d + 1]);
        for _ in 0..len {
            if rng.random_bool(p.query_offtopic) {
                let t = rng.random_range(0..total_tokens);
                copy(&mut rng, all_tokens(t), &doc_noise, &mut query_tokens);
            } else {
                let src = rng.random_range(a..b) * dim;
                let start = query_tokens.len();
                query_tokens.extend_from_slice(&doc_tokens[src..src + dim]);
                let noisy: Vec<f32> = query_tokens[start..].to_vec();
                query_tokens.truncate(start);
                copy(&mut rng, &noisy, &query_noise, &mut query_tokens);
            }
        }
        query_offsets.push(query_offsets[j] + len);
        // Relevant: every document of the source document's topic (like the passages of one man page).
        for r in (d % n_topics..p.docs).step_by(n_topics) {
            qrels.push((query_ids[j].clone(), doc_ids[r].clone()));
        }
    }
    progress(STAGES[2], p.queries, p.queries);
    // 4. Exact ground truth.
    let (gt_ids, gt_scores, gt_k) = exact_ground_truth(
        &doc_tokens,
        &doc_offsets,
        &query_tokens,
        &query_offsets,
        dim,
        p.gt_k,
        &|d, t| progress(STAGES[3], d, t),
    );
    Ok(SynthCorpus {
        dim,
        doc_ids,
        doc_tokens,
        doc_offsets,
        query_ids,
        query_tokens,
        query_offsets,
        gt_ids,
        gt_scores,
        gt_k,
        qrels,
    })
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
    let done = std::sync::atomic::AtomicUsize::new(0);
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
            let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
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
