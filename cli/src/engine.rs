//! Offline engine verbs: `index`, `search`, `gen`, `fde`.
use std::io::Read;
use std::ops::Range;
use std::path::PathBuf;

use anyhow::{bail, Context};
use chamfer_data::dataset::{Dataset, DatasetWriter, DocStream};
use chamfer_data::synth::{generate_to_dir, SynthParams, STAGES};
use chamfer_index::fde::{FdeConfig, FdeEncoder, ProjectionType};
use chamfer_index::index_dir::{
    index_bytes, open_index, write_index_from, DocBatch, DocSource, DEFAULT_SHARD_DOCS,
};
use chamfer_index::tokens::TokenMatrix;
use chamfer_index::IndexError;
use clap::Args;

use super::params::{bar, IndexArgs, SearchArgs};

/// A data set's documents read from its token file a shard at a time.
struct StreamSource<'a>(&'a DocStream);

impl DocSource for StreamSource<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn n_tokens(&self) -> usize {
        self.0.n_tokens()
    }
    fn read(&self, range: Range<usize>, batch: &mut DocBatch) -> chamfer_index::Result<()> {
        batch.ids.clear();
        batch.tokens.clear();
        batch.lens.clear();
        self.0
            .read_range(range.clone(), &mut batch.tokens)
            .map_err(|e| IndexError::param("data", e.to_string()))?;
        for i in range {
            batch.ids.push(self.0.id(i).to_string());
            batch.lens.push(self.0.doc_len(i));
        }
        Ok(())
    }
}

/// Indexes the documents of `stream` into `dir` (a shard at a time, sharing one collection codebook), with a
/// progress bar.
pub(crate) fn build_index(
    dir: &std::path::Path,
    params: &chamfer_index::shard::IndexParams,
    stream: &DocStream,
) -> anyhow::Result<()> {
    let pb = bar(stream.len() as u64, "indexing");
    write_index_from(
        dir,
        params,
        &StreamSource(stream),
        DEFAULT_SHARD_DOCS,
        &|n| pb.inc(n),
        &|| false,
    )?;
    pb.finish_and_clear();
    Ok(())
}

#[derive(Args, Debug)]
pub(crate) struct IndexCmd {
    /// Data set folder (doc_tokens.npy, doc_offsets.npy, doc_ids.txt, ...).
    #[arg(long)]
    data: PathBuf,
    /// Output index directory.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    index: IndexArgs,
}

impl IndexCmd {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        // Documents are read a shard at a time: a data set larger than memory can be indexed.
        let stream = DocStream::open(&self.data)?;
        let params = self.index.params(stream.dim());
        params.validate()?;
        let t = std::time::Instant::now();
        build_index(&self.out, &params, &stream)?;
        eprintln!(
            "indexed {} documents ({} tokens) into {} in {:.2} s, {} bytes",
            stream.len(),
            stream.n_tokens(),
            self.out.display(),
            t.elapsed().as_secs_f64(),
            index_bytes(&self.out)
        );
        Ok(())
    }
}

#[derive(Args, Debug)]
pub(crate) struct SearchCmd {
    /// Index directory written by `chamfer index`.
    #[arg(long)]
    index: PathBuf,
    /// Data set folder holding the query (and docs.jsonl for texts).
    #[arg(long)]
    data: PathBuf,
    /// Query id (a line of query_ids.txt).
    #[arg(long)]
    query_id: String,
    #[command(flatten)]
    search: SearchArgs,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

impl SearchCmd {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        // The query, the ids and the texts: never the document tokens (the index has them).
        let ds = Dataset::open_without_doc_tokens(&self.data)?;
        let searcher = open_index(&self.index)?;
        let Some(j) = ds.query_index(&self.query_id) else {
            bail!(
                "query id {:?} is not in {}/query_ids.txt",
                self.query_id,
                self.data.display()
            );
        };
        let q = TokenMatrix::new(ds.query_tokens(j), ds.dim(), "query")?;
        let hits = searcher.search(q, &self.search.params(), None)?;
        for (rank, h) in hits.iter().enumerate() {
            let shard = &searcher.shards()[h.shard];
            let id = shard.id(h.doc);
            // The text comes from the data set folder when the index was built from it.
            let text = ds
                .doc_text(h.doc)
                .filter(|_| ds.doc_id(h.doc) == id)
                .unwrap_or("");
            if self.json {
                println!(
                    "{}",
                    serde_json::json!({"rank": rank + 1, "id": id, "score": h.score, "text": text})
                );
            } else {
                let short: String = text.chars().take(100).collect();
                println!("{:>3}  {:<32} {:>9.4}  {}", rank + 1, id, h.score, short);
            }
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
pub(crate) struct GenCmd {
    /// Real data set whose statistics to mimic.
    #[arg(long)]
    like: PathBuf,
    /// Number of documents.
    #[arg(long)]
    docs: usize,
    /// Number of queries.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Documents per topic.
    #[arg(long, default_value_t = SynthParams::new(1, 1, 0).docs_per_topic)]
    docs_per_topic: usize,
    /// Topics per group.
    #[arg(long, default_value_t = SynthParams::new(1, 1, 0).topics_per_group)]
    topics_per_group: usize,
    /// Share of document tokens copied from the topic template.
    #[arg(long, default_value_t = SynthParams::new(1, 1, 0).topic_share)]
    topic_share: f64,
    /// Share of document tokens copied from the group template.
    #[arg(long, default_value_t = SynthParams::new(1, 1, 0).group_share)]
    group_share: f64,
    /// Keep only the first N tokens of longer documents (ColBERT's doc_maxlen); queries are not truncated.
    #[arg(long, value_name = "N")]
    max_doc_tokens: Option<usize>,
}

impl GenCmd {
    /// Streams the data set into `--out` (bounded memory whatever `--docs`), printing each stage's wall time.
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let t = std::time::Instant::now();
        let like = Dataset::open(&self.like)?;
        let p = SynthParams {
            docs_per_topic: self.docs_per_topic,
            topics_per_group: self.topics_per_group,
            topic_share: self.topic_share,
            group_share: self.group_share,
            max_doc_tokens: self.max_doc_tokens,
            ..SynthParams::new(self.docs, self.queries, self.seed)
        };
        let pb = bar(1, STAGES[0]);
        // The stage running and when it started (progress comes from worker threads too).
        let stage = std::sync::Mutex::new((STAGES[0].to_string(), std::time::Instant::now()));
        let report = |name: &str, since: std::time::Instant| {
            pb.suspend(|| eprintln!("{name}: {:.1} s", since.elapsed().as_secs_f64()));
        };
        let summary = generate_to_dir(&like, &p, &self.out, &|name, done, total| {
            if let Ok(mut cur) = stage.lock() {
                if cur.0 != name {
                    report(&cur.0, cur.1);
                    *cur = (name.to_string(), std::time::Instant::now());
                    pb.set_message(name.to_string());
                    pb.set_length(total as u64);
                }
            }
            pb.set_position(done as u64);
        })?;
        if let Ok(cur) = stage.lock() {
            report(&cur.0, cur.1);
        }
        pb.finish_and_clear();
        eprintln!(
            "wrote {} documents ({} tokens) and {} queries to {} in {:.1} s",
            summary.docs,
            summary.doc_tokens,
            summary.queries,
            self.out.display(),
            t.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("kind").required(true).args(["query", "document"])))]
pub(crate) struct FdeCmd {
    /// Encode as a query (SUM).
    #[arg(long)]
    query: bool,
    /// Encode as a document (AVERAGE).
    #[arg(long)]
    document: bool,
    #[arg(long)]
    dimension: usize,
    #[arg(long, default_value_t = 1)]
    repetitions: usize,
    #[arg(long, default_value_t = 0)]
    simhash_projections: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// AMS-sketch projection dimension (omit for the identity projection).
    #[arg(long)]
    projection_dimension: Option<usize>,
    #[arg(long)]
    fill_empty_partitions: bool,
    #[arg(long)]
    final_projection_dimension: Option<usize>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FdeInput {
    vectors: Vec<Vec<f32>>,
}

impl FdeCmd {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let config = FdeConfig {
            dimension: self.dimension,
            num_repetitions: self.repetitions,
            num_simhash_projections: self.simhash_projections,
            seed: self.seed,
            projection_type: if self.projection_dimension.is_some() {
                ProjectionType::AmsSketch
            } else {
                ProjectionType::Identity
            },
            projection_dimension: self.projection_dimension.unwrap_or(0),
            fill_empty_partitions: self.fill_empty_partitions,
            final_projection_dimension: self.final_projection_dimension,
        };
        let encoder = FdeEncoder::new(config)?;
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .context("reading stdin")?;
        let parsed: FdeInput = serde_json::from_str(&input)
            .context("stdin must be one JSON object {\"vectors\": [[f32, ...], ...]}")?;
        let mut buf = Vec::new();
        let what = if self.query { "query" } else { "document" };
        let tokens = TokenMatrix::from_rows(&parsed.vectors, self.dimension, what, &mut buf)?;
        let fde = if self.query {
            encoder.encode_query(tokens)?
        } else {
            encoder.encode_document(tokens)?
        };
        // serde_json prints the shortest representation that round-trips: full f32 precision.
        println!("{}", serde_json::to_string(&fde)?);
        Ok(())
    }
}

#[derive(Args, Debug)]
pub(crate) struct SliceCmd {
    /// Source data set folder.
    #[arg(long)]
    data: PathBuf,
    /// Documents to keep: the chosen queries' relevant documents first, then others in folder order.
    #[arg(long, default_value_t = 300)]
    docs: usize,
    /// Queries to keep (every n-th query of the source, for variety).
    #[arg(long, default_value_t = 50)]
    queries: usize,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
}

impl SliceCmd {
    /// Writes a self-consistent subset of a data set with its exact ground truth recomputed.
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let ds = Dataset::open(&self.data)?;
        let dim = ds.dim();
        if self.queries == 0
            || self.queries > ds.n_queries()
            || self.docs == 0
            || self.docs > ds.n_docs()
        {
            bail!(
                "--queries must be in 1..={} and --docs in 1..={}",
                ds.n_queries(),
                ds.n_docs()
            );
        }
        let step = ds.n_queries() / self.queries;
        let queries: Vec<usize> = (0..self.queries).map(|i| i * step).collect();
        let row_of: std::collections::HashMap<&str, usize> =
            (0..ds.n_docs()).map(|i| (ds.doc_id(i), i)).collect();
        let mut keep: Vec<usize> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for &j in &queries {
            let mut rel: Vec<usize> = ds
                .qrels(j)
                .map(|q| {
                    q.keys()
                        .filter_map(|id| row_of.get(id.as_str()).copied())
                        .collect()
                })
                .unwrap_or_default();
            rel.sort();
            rel.extend(
                ds.gt_ids(j)
                    .unwrap_or(&[])
                    .iter()
                    .take(3)
                    .map(|&g| g as usize),
            );
            for r in rel {
                if seen.insert(r) {
                    keep.push(r);
                }
            }
        }
        keep.extend(
            (0..ds.n_docs())
                .filter(|r| !seen.contains(r))
                .take(self.docs.saturating_sub(keep.len())),
        );
        keep.truncate(self.docs);
        keep.sort();
        let kept: std::collections::HashSet<&str> = keep.iter().map(|&r| ds.doc_id(r)).collect();
        let mut doc_tokens = Vec::new();
        let mut doc_offsets = vec![0];
        for &r in &keep {
            doc_tokens.extend_from_slice(ds.doc_tokens(r));
            doc_offsets.push(doc_tokens.len() / dim);
        }
        let mut query_tokens = Vec::new();
        let mut query_offsets = vec![0];
        for &j in &queries {
            query_tokens.extend_from_slice(ds.query_tokens(j));
            query_offsets.push(query_tokens.len() / dim);
        }
        let (gt_ids, gt_scores, gt_k) = chamfer_data::synth::exact_ground_truth(
            &doc_tokens,
            &doc_offsets,
            &query_tokens,
            &query_offsets,
            dim,
            100,
            &|_, _| {},
        );
        let doc_ids: Vec<String> = keep.iter().map(|&r| ds.doc_id(r).to_string()).collect();
        let query_ids: Vec<String> = queries
            .iter()
            .map(|&j| ds.query_id(j).to_string())
            .collect();
        let ds = &ds;
        let qrels: Vec<(String, String)> = queries
            .iter()
            .flat_map(|&j| {
                let mut rel: Vec<String> = ds
                    .qrels(j)
                    .map(|q| {
                        q.keys()
                            .filter(|d| kept.contains(d.as_str()))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                rel.sort();
                rel.into_iter()
                    .map(move |d| (ds.query_id(j).to_string(), d))
            })
            .collect();
        DatasetWriter {
            dim,
            doc_ids: &doc_ids,
            doc_tokens: &doc_tokens,
            doc_offsets: &doc_offsets,
            query_ids: &query_ids,
            query_tokens: &query_tokens,
            query_offsets: &query_offsets,
            gt: Some((&gt_ids, &gt_scores, gt_k)),
            qrels: &qrels,
        }
        .write(&self.out)?;
        // Texts travel along when the source has them.
        for (file, ids) in [("docs.jsonl", &doc_ids), ("queries.jsonl", &query_ids)] {
            if let Ok(text) = std::fs::read_to_string(self.data.join(file)) {
                let want: std::collections::HashSet<&str> =
                    ids.iter().map(|s| s.as_str()).collect();
                let lines: String = text
                    .lines()
                    .filter(|l| {
                        serde_json::from_str::<serde_json::Value>(l)
                            .ok()
                            .and_then(|v| {
                                v.get("id")
                                    .and_then(|i| i.as_str())
                                    .map(|i| want.contains(i))
                            })
                            .unwrap_or(false)
                    })
                    .map(|l| format!("{l}\n"))
                    .collect();
                std::fs::write(self.out.join(file), lines)?;
            }
        }
        eprintln!(
            "wrote {} documents, {} queries, {} qrels to {}",
            doc_ids.len(),
            query_ids.len(),
            qrels.len(),
            self.out.display()
        );
        Ok(())
    }
}
