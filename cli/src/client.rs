//! Client verbs over gRPC (crate `chamfer-client`): `ingest`, `query`, `collections`, and `healthcheck` (plain
//! HTTP). `demo` and `load` live in their own modules and reuse the helpers here.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use chamfer_client::ingest::{
    DocumentSource, IngestEvent, IngestOptions, IngestReport, IngestTarget, Progress,
};
use chamfer_client::rest::parse_http_url;
use chamfer_client::{pb, Client, Document, Filter, Query, RestClient, Vectors};
use chamfer_data::dataset::Dataset;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

/// Where the server is.
#[derive(Args, Debug, Clone)]
pub(crate) struct Conn {
    /// The server's gRPC address.
    #[arg(long, env = "CHAMFER_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// API key, when the server has one.
    #[arg(long, env = "CHAMFER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
}

impl Conn {
    /// The address as a URL (`host:port` gets `http://`).
    pub(crate) fn url(&self) -> String {
        if self.addr.contains("://") {
            self.addr.clone()
        } else {
            format!("http://{}", self.addr)
        }
    }

    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::builder(self.url())
            .api_key_opt(self.api_key.clone())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs_f64(self.timeout.max(0.001)))
            .connect()
            .await?)
    }
}

/// A current-thread runtime: the client verbs are I/O-bound and should leave the cores to the server.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

// ----- ingest ---------------------------------------------------------------------------------------------

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dtype {
    /// f16 when every value of a document is exactly an f16 (no loss), else f32.
    Auto,
    F32,
    F16,
}

/// `chamfer ingest`.
#[derive(Args, Debug)]
pub(crate) struct IngestCmd {
    #[command(flatten)]
    conn: Conn,
    /// Collection (default: the data set folder's name, or the JSONL file's stem). Created when absent.
    #[arg(long)]
    collection: Option<String>,
    /// A data set folder (doc_ids.txt, doc_tokens.npy, doc_offsets.npy, optional docs.jsonl for the text).
    #[arg(long, conflicts_with = "jsonl", required_unless_present = "jsonl")]
    data: Option<PathBuf>,
    /// A JSON Lines file: one `{"id": "...", "vectors": [[...], ...], "metadata": {...}}` per line.
    #[arg(long)]
    jsonl: Option<PathBuf>,
    /// Documents per batch (one durable write each).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Wire encoding of the vectors.
    #[arg(long, value_enum, default_value_t = Dtype::Auto)]
    dtype: Dtype,
    /// Upload every document, even those whose id is already stored (by default a re-run skips them, so an
    /// interrupted ingest resumes where it stopped).
    #[arg(long)]
    force: bool,
    /// Fail instead of creating the collection when it is absent.
    #[arg(long)]
    no_create: bool,
    /// Flush and compact at the end (one shard: the fastest searches).
    #[arg(long)]
    compact: bool,
}

/// Documents to upload, from either source.
#[allow(clippy::large_enum_variant)] // one value per command
pub(crate) enum Source {
    Dataset(Dataset),
    Jsonl { dim: usize, docs: Vec<JsonDoc> },
}

pub(crate) struct JsonDoc {
    id: String,
    data: Vec<f32>,
    metadata: Option<Value>,
}

/// Longest text kept in a document's metadata (the rest is cut at a character boundary).
const MAX_TEXT_BYTES: usize = 2000;

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Source {
    pub(crate) fn len(&self) -> usize {
        match self {
            Source::Dataset(d) => d.n_docs(),
            Source::Jsonl { docs, .. } => docs.len(),
        }
    }
    pub(crate) fn dim(&self) -> usize {
        match self {
            Source::Dataset(d) => d.dim(),
            Source::Jsonl { dim, .. } => *dim,
        }
    }
    pub(crate) fn id(&self, i: usize) -> &str {
        match self {
            Source::Dataset(d) => d.doc_id(i),
            Source::Jsonl { docs, .. } => &docs[i].id,
        }
    }
    fn document(&self, i: usize, dtype: Dtype) -> Document {
        let (data, meta) = match self {
            Source::Dataset(d) => (
                d.doc_tokens(i),
                d.doc_text(i)
                    .map(|t| json!({"text": truncate(t, MAX_TEXT_BYTES)})),
            ),
            Source::Jsonl { docs, .. } => (docs[i].data.as_slice(), docs[i].metadata.clone()),
        };
        let dim = self.dim();
        let v = match dtype {
            Dtype::Auto => Vectors::lossless(data, dim),
            Dtype::F32 => Vectors::f32(data, dim),
            Dtype::F16 => Vectors::f16(data, dim),
        };
        let doc = Document::from_vectors(self.id(i), v);
        match meta {
            Some(m) => doc.with_metadata(m),
            None => doc,
        }
    }

    /// Reads a JSON Lines file (all of it: the ids must be known up front for resuming).
    pub(crate) fn read_jsonl(path: &Path) -> anyhow::Result<Source> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut docs = Vec::new();
        let mut dim = 0;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = || format!("{}:{}", path.display(), n + 1);
            let v: Value = serde_json::from_str(line).with_context(at)?;
            let id = match &v["id"] {
                Value::String(s) => s.clone(),
                Value::Number(x) => x.to_string(),
                _ => bail!("{}: \"id\" must be a string or a number", at()),
            };
            let rows = v
                .get("vectors")
                .or_else(|| v.get("tokens"))
                .and_then(Value::as_array)
                .with_context(|| format!("{}: \"vectors\" must be an array of arrays", at()))?;
            let mut data = Vec::new();
            for r in rows {
                let r = r
                    .as_array()
                    .with_context(|| format!("{}: each vector must be an array", at()))?;
                if dim == 0 {
                    dim = r.len();
                }
                if r.len() != dim || dim == 0 {
                    bail!("{}: vector of {} values, expected {dim}", at(), r.len());
                }
                for x in r {
                    data.push(
                        x.as_f64()
                            .with_context(|| format!("{}: {x} is not a number", at()))?
                            as f32,
                    );
                }
            }
            let metadata = match v.get("metadata") {
                None | Some(Value::Null) => None,
                Some(m @ Value::Object(_)) => Some(m.clone()),
                Some(_) => bail!("{}: \"metadata\" must be an object", at()),
            };
            docs.push(JsonDoc { id, data, metadata });
        }
        if docs.is_empty() {
            bail!("{}: no documents", path.display());
        }
        Ok(Source::Jsonl { dim, docs })
    }
}

/// Documents of a [`Source`] in a chosen wire encoding: what the shared ingest (`chamfer_client::ingest`) reads.
struct Encoded<'a> {
    src: &'a Source,
    dtype: Dtype,
}

impl DocumentSource for Encoded<'_> {
    fn len(&self) -> usize {
        self.src.len()
    }
    fn dim(&self) -> usize {
        self.src.dim()
    }
    fn id(&self, i: usize) -> &str {
        self.src.id(i)
    }
    fn document(&self, i: usize) -> Document {
        self.src.document(i, self.dtype)
    }
}

/// How to ingest.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IngestOpts {
    /// Documents per batch (one durable write each).
    pub batch: usize,
    pub dtype: Dtype,
    /// Upload ids that are already stored too.
    pub force: bool,
    /// Create the collection when it is absent.
    pub create: bool,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for IngestOpts {
    fn default() -> Self {
        IngestOpts {
            batch: 64,
            dtype: Dtype::Auto,
            force: false,
            create: true,
            progress: true,
        }
    }
}

/// Uploads `src` into `collection` over either protocol with the shared ingest of `chamfer-client` (batches,
/// resume by id, retry when the server pushes back), drawing its progress callback as a progress bar.
pub(crate) async fn ingest<T: IngestTarget>(
    target: &T,
    collection: &str,
    src: &Source,
    opts: IngestOpts,
) -> anyhow::Result<IngestReport> {
    let pb = if opts.progress {
        super::params::bar(src.len() as u64, "ingest")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let bar = pb.clone();
    let progress: Progress = Arc::new(move |e: &IngestEvent| match e {
        IngestEvent::Batch { done, .. } => bar.set_position(*done),
        IngestEvent::Retry { wait, error } => {
            bar.suspend(|| eprintln!("the server pushed back; retrying in {wait:?}: {error}"))
        }
    });
    let options = IngestOptions {
        batch: opts.batch,
        force: opts.force,
        create: opts.create,
        progress: Some(progress),
        ..IngestOptions::default()
    };
    let src = Encoded {
        src,
        dtype: opts.dtype,
    };
    let r = chamfer_client::ingest::ingest(target, collection, &src, &options).await;
    pb.finish_and_clear();
    Ok(r?)
}

impl IngestCmd {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let (src, default_name) = match (&self.data, &self.jsonl) {
            (Some(dir), _) => {
                let ds = Dataset::open(dir)?;
                let name = ds.name();
                (Source::Dataset(ds), name)
            }
            (None, Some(file)) => (
                Source::read_jsonl(file)?,
                file.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "documents".into()),
            ),
            (None, None) => bail!("give --data DIR or --jsonl FILE"),
        };
        let name = self.collection.clone().unwrap_or(default_name);
        runtime()?.block_on(async {
            let client = self.conn.connect().await?;
            let opts = IngestOpts {
                batch: self.batch,
                dtype: self.dtype,
                force: self.force,
                create: !self.no_create,
                progress: true,
            };
            let r = ingest(&client, &name, &src, opts).await?;
            let s = r.seconds.max(1e-9);
            println!(
                "ingested {} documents into {name} ({} already stored, skipped) in {:.2} s: {:.0} docs/s, {:.0} tokens/s, {:.1} MB/s",
                r.uploaded,
                r.skipped,
                r.seconds,
                r.uploaded as f64 / s,
                r.tokens as f64 / s,
                r.bytes as f64 / s / 1e6
            );
            if self.compact {
                client.flush(&name).await?;
                let info = client.compact(&name).await?;
                println!("compacted: {}", stats_line(&info));
            } else {
                println!("{}", stats_line(&client.describe_collection(&name).await?));
            }
            Ok(())
        })
    }
}

fn stats_line(i: &pb::CollectionInfo) -> String {
    let s = i.stats.unwrap_or_default();
    format!(
        "{}: {} documents, {} shards, {} in the memtable, {} tombstones, WAL {} bytes",
        i.name, s.documents, s.shards, s.memtable_documents, s.tombstones, s.wal_bytes
    )
}

// ----- query ----------------------------------------------------------------------------------------------

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Ranked hits with a metadata excerpt.
    Table,
    /// One JSON object.
    Json,
    /// Hit ids, one per line.
    Ids,
}

/// `chamfer query`.
#[derive(Args, Debug)]
pub(crate) struct QueryCmd {
    #[command(flatten)]
    conn: Conn,
    /// Collection (default: the data set folder's name with --data).
    #[arg(long)]
    collection: Option<String>,
    /// Data set folder holding the query.
    #[arg(long, requires = "query_id", conflicts_with = "vectors")]
    data: Option<PathBuf>,
    /// Query id (a line of query_ids.txt) or row number in --data.
    #[arg(long)]
    query_id: Option<String>,
    /// A JSON file with the query's token vectors: `[[...], ...]` or `{"vectors": [[...], ...]}`.
    #[arg(long, required_unless_present = "data")]
    vectors: Option<PathBuf>,
    /// Results.
    #[arg(long, default_value_t = 10)]
    k: u32,
    /// Metadata condition KEY=VALUE (dots descend into objects). Repeating a key means "any of"; different keys
    /// must all hold. A number or true/false matches both the JSON value and its string form.
    #[arg(long = "filter", value_name = "KEY=VALUE")]
    filters: Vec<String>,
    /// Only these ids (comma-separated).
    #[arg(long, value_delimiter = ',')]
    ids: Vec<String>,
    /// HNSW beam width.
    #[arg(long)]
    ef: Option<u32>,
    /// Candidates from the FDE stage.
    #[arg(long)]
    candidates: Option<u32>,
    /// Candidates re-ranked with exact Chamfer.
    #[arg(long)]
    rerank: Option<u32>,
    /// Matryoshka prefix (FDE repetitions) for candidate search.
    #[arg(long)]
    prefix: Option<u32>,
    /// Exhaustive exact search.
    #[arg(long)]
    exact: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Print the REST request body (`POST /v1/collections/NAME/search`) for this query and exit without
    /// contacting the server (for curl: `-d @file`).
    #[arg(long)]
    emit_rest_body: bool,
    /// Print the gRPC request as JSON (for `grpcurl -d @`) and exit without contacting the server.
    #[arg(long)]
    emit_grpc_body: bool,
}

/// Parses `KEY=VALUE` conditions into a filter (see `--filter`).
pub(crate) fn parse_filters(filters: &[String], ids: &[String]) -> anyhow::Result<Filter> {
    let mut by_key: Vec<(String, Vec<Value>)> = Vec::new();
    for f in filters {
        let Some((k, v)) = f.split_once('=') else {
            bail!("--filter {f:?}: expected KEY=VALUE");
        };
        let values: Vec<Value> = match serde_json::from_str::<Value>(v) {
            Ok(n @ Value::Number(_)) => vec![n, Value::String(v.into())],
            Ok(b @ Value::Bool(_)) => vec![b, Value::String(v.into())],
            Ok(s @ Value::String(_)) => vec![s],
            _ => vec![Value::String(v.into())],
        };
        match by_key.iter_mut().find(|(key, _)| key == k) {
            Some((_, vs)) => vs.extend(values),
            None => by_key.push((k.to_string(), values)),
        }
    }
    let mut filter = Filter::new();
    for (k, vs) in by_key {
        filter = filter.any_of(k, vs);
    }
    Ok(filter.ids(ids.iter().cloned()))
}

fn read_vectors_file(path: &Path) -> anyhow::Result<Vec<Vec<f32>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let rows = match &v {
        Value::Array(_) => &v,
        Value::Object(o) => o
            .get("vectors")
            .or_else(|| o.get("query"))
            .or_else(|| o.get("tokens"))
            .with_context(|| format!("{}: no \"vectors\" field", path.display()))?,
        _ => bail!("{}: expected an array of vectors", path.display()),
    };
    serde_json::from_value(rows.clone())
        .with_context(|| format!("{}: vectors must be arrays of numbers", path.display()))
}

/// The REST search body for `rows` (as `chamfer query --emit-rest-body` prints it).
pub(crate) fn rest_body(rows: &[Vec<f32>], k: u32, with_metadata: bool) -> Value {
    json!({"query": rows, "k": k, "with_metadata": with_metadata})
}

/// The grpcurl JSON of a `chamfer.v1.Search/Search` request for `rows` (f32 bytes, base64).
pub(crate) fn grpc_body(collection: &str, rows: &[Vec<f32>], k: u32) -> Value {
    let dim = rows.first().map_or(0, Vec::len);
    let t = chamfer_proto::tokens::pack_f32(&rows.concat(), dim.max(1));
    json!({
        "collection": collection, "k": k, "with_metadata": true,
        "query": {"dtype": "DTYPE_F32", "n_tokens": t.n_tokens, "dim": t.dim, "data": base64::engine::general_purpose::STANDARD.encode(&t.data)},
    })
}

impl QueryCmd {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let ds = self.data.as_deref().map(Dataset::open).transpose()?;
        let (rows, qrow): (Vec<Vec<f32>>, Option<usize>) = match (&ds, &self.vectors) {
            (Some(ds), _) => {
                let id = self.query_id.as_deref().unwrap_or_default();
                let j = ds
                    .query_index(id)
                    .or_else(|| id.parse::<usize>().ok().filter(|&j| j < ds.n_queries()))
                    .with_context(|| format!("no query {id:?} in {}", ds.path().display()))?;
                (
                    ds.query_tokens(j)
                        .chunks(ds.dim())
                        .map(<[f32]>::to_vec)
                        .collect(),
                    Some(j),
                )
            }
            (None, Some(f)) => (read_vectors_file(f)?, None),
            (None, None) => bail!("give --data DIR --query-id ID, or --vectors FILE"),
        };
        let collection = match (&self.collection, &ds) {
            (Some(c), _) => c.clone(),
            (None, Some(ds)) => ds.name(),
            (None, None) => bail!("--collection is required with --vectors"),
        };
        let filter = parse_filters(&self.filters, &self.ids)?;
        if self.emit_rest_body || self.emit_grpc_body {
            let mut body = if self.emit_rest_body {
                rest_body(&rows, self.k, true)
            } else {
                grpc_body(&collection, &rows, self.k)
            };
            if !filter.is_empty() {
                let f = filter.into_proto();
                let must: Vec<Value> = f
                    .must
                    .iter()
                    .map(|c| {
                        json!({"key": c.key, "any_of": c.any_of.iter().map(value_json).collect::<Vec<_>>()})
                    })
                    .collect();
                body["filter"] = json!({"must": must, "ids": f.ids});
            }
            println!("{body}");
            return Ok(());
        }
        let mut q = Query::from_vectors(match &ds {
            Some(ds) => Vectors::lossless(&rows.concat(), ds.dim()),
            None => Vectors::from_rows(&rows)?,
        })
        .k(self.k)
        .exact(self.exact)
        .filter(filter)
        .with_metadata();
        if let Some(v) = self.ef {
            q = q.ef(v);
        }
        if let Some(v) = self.candidates {
            q = q.candidates(v);
        }
        if let Some(v) = self.rerank {
            q = q.rerank(v);
        }
        if let Some(v) = self.prefix {
            q = q.prefix_repetitions(v);
        }
        let t0 = Instant::now();
        let hits = runtime()?.block_on(async {
            let client = self.conn.connect().await?;
            anyhow::Ok(client.search(&collection, q).await?)
        })?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let truth: Option<Vec<String>> = match (&ds, qrow) {
            (Some(ds), Some(j)) => ds.gt_ids(j).map(|g| {
                g.iter()
                    .take(self.k as usize)
                    .map(|&r| ds.doc_id(r as usize).to_string())
                    .collect()
            }),
            _ => None,
        };
        match self.format {
            Format::Ids => {
                let ids: String = hits.iter().map(|h| format!("{}\n", h.id)).collect();
                // `| head -n 1` closes the pipe early: that is not an error.
                let mut out = std::io::stdout().lock();
                match std::io::Write::write_all(&mut out, ids.as_bytes()) {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                    _ => {}
                }
            }
            Format::Json => {
                let hits: Vec<Value> = hits
                    .iter()
                    .map(|h| json!({"id": h.id, "score": h.score, "metadata": h.metadata}))
                    .collect();
                let mut out = json!({"collection": collection, "hits": hits, "ms": ms});
                if let Some(t) = &truth {
                    out["ground_truth"] = json!(t);
                }
                println!("{out}");
            }
            Format::Table => {
                println!(
                    "{} hits from {collection} in {ms:.1} ms (query of {} tokens)",
                    hits.len(),
                    rows.len()
                );
                for (r, h) in hits.iter().enumerate() {
                    let meta = h.metadata.as_ref().map_or(String::new(), |m| {
                        let s = match m.get("text").and_then(Value::as_str) {
                            Some(t) => t.to_string(),
                            None => m.to_string(),
                        };
                        let s: String = s.chars().take(80).collect();
                        s.replace('\n', " ")
                    });
                    println!("{:>3}. {:<32} {:>9.4}  {meta}", r + 1, h.id, h.score);
                }
                if let Some(t) = &truth {
                    let got: HashSet<&str> = hits.iter().map(|h| h.id.as_str()).collect();
                    let found = t.iter().filter(|id| got.contains(id.as_str())).count();
                    println!(
                        "exact top {} (ground truth): {}  (recall {:.2})",
                        t.len(),
                        t.join(" "),
                        found as f64 / t.len().max(1) as f64
                    );
                }
            }
        }
        Ok(())
    }
}

fn value_json(v: &pb::Value) -> Value {
    use pb::value::Kind;
    match &v.kind {
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::IntValue(i)) => json!(i),
        Some(Kind::DoubleValue(d)) => json!(d),
        Some(Kind::BoolValue(b)) => json!(b),
        None => Value::Null,
    }
}

// ----- collections ----------------------------------------------------------------------------------------

/// `chamfer collections ...`.
#[derive(Args, Debug)]
pub(crate) struct CollectionsCmd {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: CollectionsAction,
}

#[derive(Subcommand, Debug)]
enum CollectionsAction {
    /// Every collection with its statistics.
    List {
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create a collection (unset parameters take the server's defaults).
    Create(CreateArgs),
    /// One collection's parameters and statistics (JSON).
    Describe { name: String },
    /// Delete a collection and all its documents.
    Drop { name: String },
    /// Turn the write-ahead log into a shard now.
    Flush { name: String },
    /// Merge the shards now (drops deleted documents).
    Compact { name: String },
}

#[derive(Args, Debug)]
struct CreateArgs {
    name: String,
    /// Token vector dimension.
    #[arg(long)]
    dimension: u32,
    /// FDE repetitions.
    #[arg(long)]
    repetitions: Option<u32>,
    /// SimHash projections (2^k partitions).
    #[arg(long)]
    simhash_projections: Option<u32>,
    /// AMS-sketch projection dimension (0: identity).
    #[arg(long)]
    projection_dimension: Option<u32>,
    /// FDE seed.
    #[arg(long)]
    seed: Option<u64>,
    /// FDE repetitions indexed by the HNSW graph (Matryoshka prefix).
    #[arg(long)]
    hnsw_prefix: Option<u32>,
    /// HNSW degree.
    #[arg(long)]
    hnsw_m: Option<u32>,
    /// HNSW build beam width.
    #[arg(long)]
    ef_construction: Option<u32>,
    /// Shards with fewer documents get no graph.
    #[arg(long)]
    graph_min_docs: Option<u32>,
}

/// A collection description as JSON.
pub(crate) fn info_json(i: &pb::CollectionInfo) -> Value {
    let f = i.fde.unwrap_or_default();
    let h = i.hnsw.unwrap_or_default();
    let s = i.stats.unwrap_or_default();
    json!({
        "name": i.name,
        "dimension": i.dimension,
        "fde": {
            "num_repetitions": f.num_repetitions, "num_simhash_projections": f.num_simhash_projections,
            "seed": f.seed, "projection_type": pb::ProjectionType::try_from(f.projection_type).map(|p| p.as_str_name()).unwrap_or("?"),
            "projection_dimension": f.projection_dimension, "fill_empty_partitions": f.fill_empty_partitions,
            "final_projection_dimension": f.final_projection_dimension,
        },
        "hnsw": {
            "prefix_repetitions": h.prefix_repetitions, "m": h.m, "ef_construction": h.ef_construction,
            "storage": pb::VectorStorage::try_from(h.storage).map(|p| p.as_str_name()).unwrap_or("?"),
            "min_docs": h.min_docs,
        },
        "stats": {
            "documents": s.documents, "shards": s.shards, "memtable_documents": s.memtable_documents,
            "tombstones": s.tombstones, "wal_bytes": s.wal_bytes, "last_sequence": s.last_sequence,
        },
    })
}

impl CollectionsCmd {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        runtime()?.block_on(async {
            let c = self.conn.connect().await?;
            match self.action {
                CollectionsAction::List { json } => {
                    let all = c.list_collections().await?;
                    if json {
                        let v: Vec<Value> = all.iter().map(info_json).collect();
                        println!("{}", json!({ "collections": v }));
                    } else if all.is_empty() {
                        println!("no collections");
                    } else {
                        println!(
                            "{:<24} {:>5} {:>10} {:>7} {:>9} {:>10} {:>12}",
                            "name",
                            "dim",
                            "documents",
                            "shards",
                            "memtable",
                            "tombstones",
                            "wal_bytes"
                        );
                        for i in &all {
                            let s = i.stats.unwrap_or_default();
                            println!(
                                "{:<24} {:>5} {:>10} {:>7} {:>9} {:>10} {:>12}",
                                i.name,
                                i.dimension,
                                s.documents,
                                s.shards,
                                s.memtable_documents,
                                s.tombstones,
                                s.wal_bytes
                            );
                        }
                    }
                }
                CollectionsAction::Create(a) => {
                    let req = pb::CreateCollectionRequest {
                        name: a.name,
                        dimension: a.dimension,
                        fde: Some(pb::FdeParams {
                            num_repetitions: a.repetitions,
                            num_simhash_projections: a.simhash_projections,
                            seed: a.seed,
                            projection_type: match a.projection_dimension {
                                Some(0) => pb::ProjectionType::Identity as i32,
                                Some(_) => pb::ProjectionType::AmsSketch as i32,
                                None => pb::ProjectionType::Unspecified as i32,
                            },
                            projection_dimension: a.projection_dimension.filter(|&d| d > 0),
                            ..Default::default()
                        }),
                        hnsw: Some(pb::HnswParams {
                            prefix_repetitions: a.hnsw_prefix,
                            m: a.hnsw_m,
                            ef_construction: a.ef_construction,
                            min_docs: a.graph_min_docs,
                            ..Default::default()
                        }),
                        codebook_size: None,
                    };
                    let info = c.create_collection_with(req).await?;
                    println!("{}", serde_json::to_string_pretty(&info_json(&info))?);
                }
                CollectionsAction::Describe { name } => {
                    let info = c.describe_collection(name).await?;
                    println!("{}", serde_json::to_string_pretty(&info_json(&info))?);
                }
                CollectionsAction::Drop { name } => {
                    c.drop_collection(&name).await?;
                    println!("dropped {name}");
                }
                CollectionsAction::Flush { name } => {
                    println!("{}", stats_line(&c.flush(name).await?));
                }
                CollectionsAction::Compact { name } => {
                    println!("{}", stats_line(&c.compact(name).await?));
                }
            }
            anyhow::Ok(())
        })
    }
}

// ----- healthcheck ----------------------------------------------------------------------------------------

/// `chamfer healthcheck`: exit 0 iff `GET URL` answers 2xx within the timeout (for container health checks in
/// images without a shell or curl).
#[derive(Args, Debug)]
pub(crate) struct HealthcheckCmd {
    /// URL to probe, e.g. http://127.0.0.1:8080/readyz.
    #[arg(long, default_value = "http://127.0.0.1:8080/readyz")]
    http: String,
    /// Seconds before giving up.
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
    /// Print nothing on success.
    #[arg(long, short)]
    quiet: bool,
}

impl HealthcheckCmd {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let url = parse_http_url(&self.http)?;
        let path = url.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let timeout = Duration::from_secs_f64(self.timeout.max(0.001));
        let client = RestClient::new(&self.http)?.timeout(timeout);
        let status = runtime()?
            .block_on(client.send(chamfer_client::rest::Method::GET, &path, None, None, &[]))
            .with_context(|| format!("{} is not healthy", self.http))?
            .status;
        if !(200..300).contains(&status) {
            bail!("{} answered HTTP {status}", self.http);
        }
        if !self.quiet {
            println!("{} answered HTTP {status}", self.http);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_into_conditions() {
        let f = parse_filters(
            &["section=1".into(), "section=8".into(), "lang=en".into()],
            &["a".into()],
        )
        .unwrap()
        .into_proto();
        assert_eq!(f.must.len(), 2);
        assert_eq!(f.must[0].any_of.len(), 4); // 1, "1", 8, "8"
        assert_eq!(f.ids, vec!["a".to_string()]);
        assert!(parse_filters(&["nokey".into()], &[]).is_err());
    }

    #[test]
    fn truncates_at_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
