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
//!    with `max_doc_tokens` a document keeps only its first N tokens (ColBERT's `doc_maxlen`);
//! 2. a query picks a random synthetic document, a real query's length, and makes most of its tokens noisy copies
//!    of that document's tokens (cosine ~0.8 after `query_noise`), the rest off-topic; its relevant documents
//!    (qrels) are the documents of that topic. Queries are never truncated, and copy from the whole source
//!    document (as a real query is written against a whole passage, of which the index sees the first N tokens);
//! 3. the exact Chamfer top-100 of every query is computed with the engine's kernel.
//!
//! Everything is seeded (ChaCha, platform independent) from one random stream, in one order (templates, then
//! every document in turn, then the queries), so [`generate`] (in memory) and [`generate_to_dir`] (streamed
//! to a data set folder, for corpora larger than memory) give the same data set for the same settings, and
//! `max_doc_tokens` changes nothing but the documents' lengths: with the same seed, the queries and qrels are
//! those of the untruncated corpus and every document is the first N tokens of its untruncated twin.
//!
//! Files: `dir` ([`generate_to_dir`], streamed to a data set folder), `truth` (exact ground truth).
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

use chamfer_index::kernels::{self, PreparedQuery};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;

use crate::dataset::{Dataset, DatasetWriter, DocStream, F16RowWriter};
use crate::{DataError, Result};

mod dir;
mod truth;

pub use dir::generate_to_dir;
pub use truth::{exact_ground_truth, exact_ground_truth_stream};

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
    /// Documents longer than this many tokens keep their first `max_doc_tokens` (as ColBERT's `doc_maxlen`);
    /// `None`: lengths as the template's. Must be > 0. Queries are not truncated.
    pub max_doc_tokens: Option<usize>,
    /// Documents per ground-truth chunk of [`generate_to_dir`]: the memory knob of the streamed path (about
    /// `2 * tokens * dim` bytes per document are held per chunk); it does not change the output. Must be > 0.
    pub chunk_docs: usize,
}

impl SynthParams {
    /// `docs` documents and `queries` queries from `seed`, with the default shape settings (8 documents per
    /// topic, 10 topics per group, ground truth to depth 100, no truncation, chunks of 50,000 documents).
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
            max_doc_tokens: None,
            chunk_docs: 50_000,
        }
    }

    /// Tokens kept of a document drawn with `len` tokens (`min(len, max_doc_tokens)`).
    fn kept(&self, len: usize) -> usize {
        self.max_doc_tokens.map_or(len, |m| len.min(m))
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

/// What [`generate_to_dir`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthSummary {
    /// Token dimension.
    pub dim: usize,
    /// Documents written.
    pub docs: usize,
    /// Document token vectors written (after truncation).
    pub doc_tokens: usize,
    /// Queries written.
    pub queries: usize,
    /// Ground-truth depth: `min(SynthParams::gt_k, docs)`.
    pub gt_k: usize,
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

/// Stage names reported to `progress(stage, done, total)`: [`generate`] reports "preparing", "documents",
/// "queries", "ground truth"; [`generate_to_dir`] first draws every document once to learn its length
/// ("document lengths"), then reports the others.
pub const STAGES: [&str; 5] = [
    "preparing",
    "document lengths",
    "documents",
    "queries",
    "ground truth",
];

fn doc_id(i: usize) -> String {
    format!("syn-{i}")
}

fn query_id(j: usize) -> String {
    format!("synq-{j}")
}

/// The settings' checks, the template's statistics and the topic structure: everything drawn before the
/// first document.
struct Generator<'a> {
    like: &'a Dataset,
    p: &'a SynthParams,
    dim: usize,
    /// The template's tokens are unit vectors: copies are re-normalised.
    unit: bool,
    /// Every template document token, row-major.
    rows: &'a [f32],
    total_tokens: usize,
    /// Template document `d` is rows `doc_starts[d]..doc_starts[d + 1]`.
    doc_starts: Vec<usize>,
    n_topics: usize,
    group_tpl: Vec<usize>,
    topic_tpl: Vec<usize>,
    topic_group: Vec<usize>,
    topic_noise: Normal<f32>,
    doc_noise: Normal<f32>,
    query_noise: Normal<f32>,
}

/// A query drawn before its source document's tokens are known (the random stream's consumption does not
/// depend on token values, only on lengths): [`Generator::query`] completes it.
struct QueryPlan {
    /// The source document.
    doc: usize,
    /// Per token: the source document's row it copies, or `None` for an off-topic token (final in `tokens`).
    rows: Vec<Option<usize>>,
    /// Row-major: the off-topic tokens, and the noise added to each copied row.
    tokens: Vec<f32>,
}

impl<'a> Generator<'a> {
    /// Checks the settings and draws the templates; returns the random stream positioned at document 0.
    fn new(like: &'a Dataset, p: &'a SynthParams) -> Result<(Generator<'a>, StdRng)> {
        if p.docs == 0 {
            return Err(DataError::param("docs", "must be > 0"));
        }
        if i32::try_from(p.docs).is_err() {
            return Err(DataError::param(
                "docs",
                "must be < 2^31 (ground-truth rows are int32)",
            ));
        }
        if p.max_doc_tokens == Some(0) {
            return Err(DataError::param(
                "max_doc_tokens",
                "must be > 0 (documents keep their first N tokens)",
            ));
        }
        if p.chunk_docs == 0 {
            return Err(DataError::param("chunk_docs", "must be > 0"));
        }
        if !like.has_doc_tokens() {
            return Err(DataError::param(
                "like",
                "the template data set was opened without its document tokens",
            ));
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
        let unit = (0..total_tokens.min(1000)).all(|i| {
            let t = &rows[i * dim..(i + 1) * dim];
            (dot(t, t).sqrt() - 1.0).abs() < 0.01
        });
        let noise = |sd: f32| {
            Normal::new(0.0f32, sd / (dim as f32).sqrt())
                .map_err(|e| DataError::param("noise", e.to_string()))
        };
        let mut doc_starts = vec![0usize];
        for i in 0..like.n_docs() {
            doc_starts.push(doc_starts[i] + like.doc_len(i));
        }
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
        let g = Generator {
            like,
            p,
            dim,
            unit,
            rows,
            total_tokens,
            doc_starts,
            n_topics,
            group_tpl,
            topic_tpl,
            topic_group,
            topic_noise: noise(p.topic_noise)?,
            doc_noise: noise(p.doc_noise)?,
            query_noise: noise(p.query_noise)?,
        };
        Ok((g, rng))
    }

    /// Template rows of template document `d`.
    fn span(&self, d: usize) -> std::ops::Range<usize> {
        self.doc_starts[d]..self.doc_starts[d + 1]
    }

    /// Appends a noisy copy of template row `t`, re-normalised when the template's tokens are unit vectors.
    fn copy(&self, rng: &mut StdRng, t: usize, noise: &Normal<f32>, out: &mut Vec<f32>) {
        let start = out.len();
        let src = &self.rows[t * self.dim..(t + 1) * self.dim];
        out.extend(src.iter().map(|&v| v + noise.sample(rng)));
        if self.unit {
            normalise(&mut out[start..]);
        }
    }

    /// Draws document `i` (untruncated: a template document's length), appends its tokens to `out`, returns
    /// its token count. Documents must be drawn in order 0, 1, ... from the stream [`Generator::new`] returned.
    fn doc(&self, rng: &mut StdRng, i: usize, out: &mut Vec<f32>) -> usize {
        let p = self.p;
        // Document i belongs to topic i % n_topics (so every topic has docs_per_topic documents).
        let topic = i % self.n_topics;
        let len = self.span(rng.random_range(0..self.like.n_docs())).len();
        for _ in 0..len {
            let u: f64 = rng.random();
            let (src, noise) = if u < p.topic_share {
                (
                    rng.random_range(self.span(self.topic_tpl[topic])),
                    &self.topic_noise,
                )
            } else if u < p.topic_share + p.group_share {
                (
                    rng.random_range(self.span(self.group_tpl[self.topic_group[topic]])),
                    &self.doc_noise,
                )
            } else {
                (rng.random_range(0..self.total_tokens), &self.doc_noise)
            };
            self.copy(rng, src, noise, out);
        }
        len
    }

    /// Draws every query (after the last document), given the untruncated length of each document.
    fn plan_queries(&self, rng: &mut StdRng, doc_len: &dyn Fn(usize) -> usize) -> Vec<QueryPlan> {
        let (p, dim) = (self.p, self.dim);
        let mut plans = Vec::with_capacity(p.queries);
        for _ in 0..p.queries {
            let doc = rng.random_range(0..p.docs);
            let len = self
                .like
                .query_tokens(rng.random_range(0..self.like.n_queries()))
                .len()
                / dim;
            let n = doc_len(doc);
            let mut plan = QueryPlan {
                doc,
                rows: Vec::with_capacity(len),
                tokens: Vec::with_capacity(len * dim),
            };
            for _ in 0..len {
                if rng.random_bool(p.query_offtopic) {
                    let t = rng.random_range(0..self.total_tokens);
                    self.copy(rng, t, &self.doc_noise, &mut plan.tokens);
                    plan.rows.push(None);
                } else {
                    // Same draw as `random_range(a..b)` over the document's absolute rows would be (rand's
                    // uniform integers depend on the range's width only, below 2^32 rows).
                    plan.rows.push(Some(rng.random_range(0..n)));
                    plan.tokens
                        .extend((0..dim).map(|_| self.query_noise.sample(rng)));
                }
            }
            plans.push(plan);
        }
        plans
    }

    /// Appends the tokens of a planned query, given its source document's (untruncated) tokens.
    fn query(&self, plan: &QueryPlan, doc: &[f32], out: &mut Vec<f32>) {
        let dim = self.dim;
        for (k, row) in plan.rows.iter().enumerate() {
            let t = &plan.tokens[k * dim..(k + 1) * dim];
            match row {
                None => out.extend_from_slice(t),
                Some(r) => {
                    let start = out.len();
                    let src = &doc[r * dim..(r + 1) * dim];
                    out.extend(src.iter().zip(t).map(|(&v, &n)| v + n));
                    if self.unit {
                        normalise(&mut out[start..]);
                    }
                }
            }
        }
    }

    /// Relevance pairs: every document of each query's source topic (like the passages of one man page).
    fn qrels(&self, plans: &[QueryPlan]) -> Vec<(String, String)> {
        let mut qrels = Vec::new();
        for (j, plan) in plans.iter().enumerate() {
            for r in (plan.doc % self.n_topics..self.p.docs).step_by(self.n_topics) {
                qrels.push((query_id(j), doc_id(r)));
            }
        }
        qrels
    }
}

/// Generates a corpus like `like`, in memory (for small corpora; [`generate_to_dir`] streams large ones to a
/// folder and gives the same data set).
pub fn generate(
    like: &Dataset,
    p: &SynthParams,
    progress: &(dyn Fn(&str, usize, usize) + Sync),
) -> Result<SynthCorpus> {
    let (g, mut rng) = Generator::new(like, p)?;
    let dim = g.dim;
    progress(STAGES[0], 1, 1);
    // Documents, untruncated first: queries copy from whole documents.
    let mut doc_tokens = Vec::new();
    let mut doc_offsets = vec![0usize];
    for i in 0..p.docs {
        let len = g.doc(&mut rng, i, &mut doc_tokens);
        doc_offsets.push(doc_offsets[i] + len);
        if i % 10_000 == 0 {
            progress(STAGES[2], i, p.docs);
        }
    }
    progress(STAGES[2], p.docs, p.docs);
    let plans = g.plan_queries(&mut rng, &|d| doc_offsets[d + 1] - doc_offsets[d]);
    let mut query_tokens = Vec::new();
    let mut query_offsets = vec![0usize];
    for plan in &plans {
        let (a, b) = (doc_offsets[plan.doc], doc_offsets[plan.doc + 1]);
        g.query(plan, &doc_tokens[a * dim..b * dim], &mut query_tokens);
        query_offsets.push(query_tokens.len() / dim);
    }
    progress(STAGES[3], p.queries, p.queries);
    // Truncation, in place: each document keeps its first max_doc_tokens tokens.
    if p.max_doc_tokens.is_some() {
        let mut kept = 0;
        for i in 0..p.docs {
            let (a, b) = (doc_offsets[i], doc_offsets[i + 1]);
            let n = p.kept(b - a);
            doc_tokens.copy_within(a * dim..(a + n) * dim, kept * dim);
            doc_offsets[i] = kept;
            kept += n;
        }
        doc_offsets[p.docs] = kept;
        doc_tokens.truncate(kept * dim);
    }
    let (gt_ids, gt_scores, gt_k) = exact_ground_truth(
        &doc_tokens,
        &doc_offsets,
        &query_tokens,
        &query_offsets,
        dim,
        p.gt_k,
        &|d, t| progress(STAGES[4], d, t),
    );
    Ok(SynthCorpus {
        dim,
        doc_ids: (0..p.docs).map(doc_id).collect(),
        doc_tokens,
        doc_offsets,
        query_ids: (0..p.queries).map(query_id).collect(),
        query_tokens,
        query_offsets,
        gt_ids,
        gt_scores,
        gt_k,
        qrels: g.qrels(&plans),
    })
}
