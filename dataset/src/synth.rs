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

/// Generates a corpus like `like` straight into the data set folder `out_dir` (created if needed), holding
/// only a bounded part of it in memory, and returns what it wrote. The folder is what [`generate`] +
/// [`DatasetWriter::write`] would write for the same settings, file for file, plus a `README.md`.
///
/// The random stream is drawn twice: once to learn every document's length (the `.npy` header needs the row
/// count; nothing is kept but the lengths), once to write the documents as float16 rows into
/// `doc_tokens.npy.tmp`, keeping the whole tokens of the queries' source documents only. The queries are then
/// completed and the exact ground truth computed over the written file, [`SynthParams::chunk_docs`] documents at
/// a time ([`exact_ground_truth_stream`]). `doc_tokens.npy` is renamed into place last (after an fsync), so an
/// interrupted run leaves a folder that does not open (a stale `doc_tokens.npy` is removed first).
///
/// Memory: the template, 8 bytes per document (lengths and offsets), the ids, the queries and one chunk of
/// packed documents (about `chunk_docs * 2 * tokens * dim` bytes). Time: two draws of every document (one
/// thread) and the ground truth (`queries * query tokens * doc tokens * dim` multiply-adds, every thread).
pub fn generate_to_dir(
    like: &Dataset,
    p: &SynthParams,
    out_dir: &Path,
    progress: &(dyn Fn(&str, usize, usize) + Sync),
) -> Result<SynthSummary> {
    let (g, rng0) = Generator::new(like, p)?;
    let dim = g.dim;
    std::fs::create_dir_all(out_dir).map_err(|e| DataError::io(out_dir, e))?;
    let tokens_path = out_dir.join("doc_tokens.npy");
    match std::fs::remove_file(&tokens_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(DataError::io(&tokens_path, e))
        }
        _ => {}
    }
    progress(STAGES[0], 1, 1);
    // 1. Every document's untruncated length, and the queries' plans (drawn after the last document).
    let mut rng = rng0.clone();
    let mut scratch = Vec::new();
    let mut full_len = Vec::with_capacity(p.docs);
    for i in 0..p.docs {
        scratch.clear();
        full_len.push(g.doc(&mut rng, i, &mut scratch));
        if i % 10_000 == 0 {
            progress(STAGES[1], i, p.docs);
        }
    }
    progress(STAGES[1], p.docs, p.docs);
    let plans = g.plan_queries(&mut rng, &|d| full_len[d]);
    let mut doc_offsets = Vec::with_capacity(p.docs + 1);
    doc_offsets.push(0usize);
    for (i, &n) in full_len.iter().enumerate() {
        doc_offsets.push(doc_offsets[i] + p.kept(n));
    }
    drop(full_len);
    let rows = doc_offsets[p.docs];
    // 2. The documents, streamed; the queries' sources kept whole.
    let mut sources: HashMap<usize, Vec<f32>> = plans.iter().map(|q| (q.doc, Vec::new())).collect();
    let mut w = F16RowWriter::create(&tokens_path, rows, dim)?;
    let mut rng = rng0;
    for i in 0..p.docs {
        scratch.clear();
        let len = g.doc(&mut rng, i, &mut scratch);
        if let Some(src) = sources.get_mut(&i) {
            src.clone_from(&scratch);
        }
        w.write_rows(&scratch[..p.kept(len) * dim])?;
        if i % 10_000 == 0 {
            progress(STAGES[2], i, p.docs);
        }
    }
    let tokens_file = w.finish()?;
    progress(STAGES[2], p.docs, p.docs);
    let mut query_tokens = Vec::new();
    let mut query_offsets = vec![0usize];
    for plan in &plans {
        g.query(plan, &sources[&plan.doc], &mut query_tokens);
        query_offsets.push(query_tokens.len() / dim);
    }
    drop(sources);
    progress(STAGES[3], p.queries, p.queries);
    let doc_ids: Vec<String> = (0..p.docs).map(doc_id).collect();
    let query_ids: Vec<String> = (0..p.queries).map(query_id).collect();
    let qrels = g.qrels(&plans);
    let writer = DatasetWriter {
        dim,
        doc_ids: &doc_ids,
        doc_tokens: &[],
        doc_offsets: &doc_offsets,
        query_ids: &query_ids,
        query_tokens: &query_tokens,
        query_offsets: &query_offsets,
        gt: None,
        qrels: &qrels,
    };
    writer.write_doc_index(out_dir)?;
    // 3. The exact ground truth over the file just written (float16, as the kernel packs tokens anyway).
    let docs = DocStream::open_files(
        tokens_file.tmp_path(),
        &out_dir.join("doc_offsets.npy"),
        &out_dir.join("doc_ids.txt"),
    )?;
    let (gt_ids, gt_scores, gt_k) = exact_ground_truth_stream(
        &docs,
        &query_tokens,
        &query_offsets,
        p.gt_k,
        p.chunk_docs,
        &|d, t| progress(STAGES[4], d, t),
    )?;
    drop(docs);
    DatasetWriter {
        gt: Some((&gt_ids, &gt_scores, gt_k)),
        ..writer
    }
    .write_queries_and_labels(out_dir)?;
    let summary = SynthSummary {
        dim,
        docs: p.docs,
        doc_tokens: rows,
        queries: p.queries,
        gt_k,
    };
    chamfer_index::fsutil::write_atomic(
        &out_dir.join("README.md"),
        readme(like, p, &summary).as_bytes(),
    )?;
    tokens_file.commit()?;
    Ok(summary)
}

/// The `README.md` of a generated folder: the command that reproduces it and what it holds.
fn readme(like: &Dataset, p: &SynthParams, s: &SynthSummary) -> String {
    let d = SynthParams::new(p.docs, p.queries, p.seed);
    let mut cmd = format!(
        "chamfer gen --like {} --docs {} --queries {} --seed {}",
        like.path().display(),
        p.docs,
        p.queries,
        p.seed
    );
    if let Some(n) = p.max_doc_tokens {
        cmd.push_str(&format!(" --max-doc-tokens {n}"));
    }
    if p.docs_per_topic != d.docs_per_topic {
        cmd.push_str(&format!(" --docs-per-topic {}", p.docs_per_topic));
    }
    if p.topics_per_group != d.topics_per_group {
        cmd.push_str(&format!(" --topics-per-group {}", p.topics_per_group));
    }
    if p.topic_share != d.topic_share {
        cmd.push_str(&format!(" --topic-share {}", p.topic_share));
    }
    if p.group_share != d.group_share {
        cmd.push_str(&format!(" --group-share {}", p.group_share));
    }
    let cut = p
        .max_doc_tokens
        .map(|n| format!(", at most {n} per document"))
        .unwrap_or_default();
    format!(
        "# synthetic data set\n\nWritten by `{cmd}`: {} documents ({} tokens{cut}), {} queries, token statistics \
         mimicking the template (see chamfer_data::synth), exact Chamfer top-{} ground truth, qrels = the documents \
         of each query's source topic.\n",
        s.docs, s.doc_tokens, s.queries, s.gt_k
    )
}

/// A ground-truth candidate. Greater is worse (a lower score, then on ties a higher document row), so that a
/// max-heap's top is the worst candidate kept.
#[derive(Clone, Copy, Debug)]
struct Candidate {
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
