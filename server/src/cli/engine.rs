//! Offline engine verbs: `index`, `search`, `gen`, `fde`.
use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context};
use chamfer_index::dataset::{Dataset, DatasetWriter};
use chamfer_index::fde::{FdeConfig, FdeEncoder, ProjectionType};
use chamfer_index::index_dir::{index_bytes, open_index, write_index};
use chamfer_index::shard::ShardDoc;
use chamfer_index::synth::{generate, SynthParams};
use chamfer_index::tokens::TokenMatrix;
use clap::Args;

use super::params::{bar, IndexArgs, SearchArgs};

/// Every document of `ds` as shard input (payload: empty).
pub fn dataset_docs(ds: &Dataset) -> anyhow::Result<Vec<ShardDoc<'_>>> {
    (0..ds.n_docs())
        .map(|i| {
            let tokens = TokenMatrix::new(ds.doc_tokens(i), ds.dim(), "document")
                .with_context(|| format!("document {:?}", ds.doc_id(i)))?;
            Ok(ShardDoc { id: ds.doc_id(i), tokens, payload: &[] })
        })
        .collect()
}

#[derive(Args, Debug)]
pub struct IndexCmd {
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
    pub fn run(self) -> anyhow::Result<()> {
        let ds = Dataset::open(&self.data)?;
        let params = self.index.params(ds.dim());
        params.validate()?;
        let docs = dataset_docs(&ds)?;
        let pb = bar(docs.len() as u64, "encoding");
        let t = std::time::Instant::now();
        write_index(&self.out, &params, &docs, &|n| pb.inc(n))?;
        pb.finish_and_clear();
        eprintln!(
            "indexed {} documents ({} tokens) into {} in {:.2} s, {} bytes",
            ds.n_docs(),
            ds.n_doc_tokens(),
            self.out.display(),
            t.elapsed().as_secs_f64(),
            index_bytes(&self.out)
        );
        Ok(())
    }
}

#[derive(Args, Debug)]
pub struct SearchCmd {
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
    pub fn run(self) -> anyhow::Result<()> {
        let ds = Dataset::open(&self.data)?;
        let searcher = open_index(&self.index)?;
        let Some(j) = ds.query_index(&self.query_id) else {
            bail!("query id {:?} is not in {}/query_ids.txt", self.query_id, self.data.display());
        };
        let q = TokenMatrix::new(ds.query_tokens(j), ds.dim(), "query")?;
        let hits = searcher.search(q, &self.search.params(), None)?;
        for (rank, h) in hits.iter().enumerate() {
            let shard = &searcher.shards()[h.shard];
            let id = shard.id(h.doc);
            // The text comes from the data set folder when the index was built from it.
            let text = ds.doc_text(h.doc).filter(|_| ds.doc_id(h.doc) == id).unwrap_or("");
            if self.json {
                println!("{}", serde_json::json!({"rank": rank + 1, "id": id, "score": h.score, "text": text}));
            } else {
                let short: String = text.chars().take(100).collect();
                println!("{:>3}  {:<32} {:>9.4}  {}", rank + 1, id, h.score, short);
            }
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
pub struct GenCmd {
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
}

impl GenCmd {
    pub fn run(self) -> anyhow::Result<()> {
        let like = Dataset::open(&self.like)?;
        let p = SynthParams::new(self.docs, self.queries, self.seed);
        let pb = bar(1, "clustering");
        let corpus = generate(&like, &p, &|stage, done, total| {
            if pb.message() != stage {
                pb.set_message(stage.to_string());
                pb.set_length(total as u64);
            }
            pb.set_position(done as u64);
        })?;
        pb.finish_and_clear();
        DatasetWriter {
            dim: corpus.dim,
            doc_ids: &corpus.doc_ids,
            doc_tokens: &corpus.doc_tokens,
            doc_offsets: &corpus.doc_offsets,
            query_ids: &corpus.query_ids,
            query_tokens: &corpus.query_tokens,
            query_offsets: &corpus.query_offsets,
            gt: Some((&corpus.gt_ids, &corpus.gt_scores, corpus.gt_k)),
            qrels: &corpus.qrels,
        }
        .write(&self.out)?;
        let readme = format!(
            "# synthetic data set\n\nWritten by `chamfer gen --like {} --docs {} --queries {} --seed {}`: {} documents ({} tokens), {} queries, \
             token statistics mimicking the template (see chamfer_index::synth), exact Chamfer top-{} ground truth, qrels = each query's source document.\n",
            self.like.display(), self.docs, self.queries, self.seed, corpus.doc_ids.len(), corpus.doc_tokens.len() / corpus.dim,
            corpus.query_ids.len(), corpus.gt_k
        );
        std::fs::write(self.out.join("README.md"), readme)?;
        eprintln!("wrote {} documents and {} queries to {}", self.docs, self.queries, self.out.display());
        Ok(())
    }
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("kind").required(true).args(["query", "document"])))]
pub struct FdeCmd {
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
    pub fn run(self) -> anyhow::Result<()> {
        let config = FdeConfig {
            dimension: self.dimension,
            num_repetitions: self.repetitions,
            num_simhash_projections: self.simhash_projections,
            seed: self.seed,
            projection_type: if self.projection_dimension.is_some() { ProjectionType::AmsSketch } else { ProjectionType::Identity },
            projection_dimension: self.projection_dimension.unwrap_or(0),
            fill_empty_partitions: self.fill_empty_partitions,
            final_projection_dimension: self.final_projection_dimension,
        };
        let encoder = FdeEncoder::new(config)?;
        let mut input = String::new();
        std::io::stdin().read_to_string(&mut input).context("reading stdin")?;
        let parsed: FdeInput = serde_json::from_str(&input).context("stdin must be one JSON object {\"vectors\": [[f32, ...], ...]}")?;
        let mut buf = Vec::new();
        let what = if self.query { "query" } else { "document" };
        let tokens = TokenMatrix::from_rows(&parsed.vectors, self.dimension, what, &mut buf)?;
        let fde = if self.query { encoder.encode_query(tokens)? } else { encoder.encode_document(tokens)? };
        // serde_json prints the shortest representation that round-trips: full f32 precision.
        println!("{}", serde_json::to_string(&fde)?);
        Ok(())
    }
}
