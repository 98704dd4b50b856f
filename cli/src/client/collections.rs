//! `chamfer collections`: list, create (every collection parameter), describe, drop, flush, compact.
use chamfer_client::pb;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use super::ingest::stats_line;
use super::{runtime, Conn};

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

/// `chamfer collections create`: every collection parameter of the API (`CreateCollection` / the proto's
/// `CreateCollectionRequest`); unset ones take the server's defaults (shown by `describe`).
#[derive(Args, Debug)]
struct CreateArgs {
    name: String,
    /// Token vector dimension.
    #[arg(long)]
    dimension: u32,
    /// FDE repetitions R.
    #[arg(long, alias = "repetitions")]
    num_repetitions: Option<u32>,
    /// SimHash projections per repetition (2^k partitions).
    #[arg(long, alias = "simhash-projections")]
    num_simhash_projections: Option<u32>,
    /// Inner projection of each token (default: the server's; `--projection-dimension 0` means identity).
    #[arg(long, value_enum)]
    projection_type: Option<ProjectionArg>,
    /// AMS-sketch projection dimension (0: identity projection).
    #[arg(long)]
    projection_dimension: Option<u32>,
    /// FDE seed (part of the index: stored, never changes).
    #[arg(long)]
    seed: Option<u64>,
    /// Documents only: fill empty FDE partitions with the nearest token.
    #[arg(long)]
    fill_empty_partitions: Option<bool>,
    /// Final projection of the whole FDE (0: none; an index needs none).
    #[arg(long)]
    final_projection_dimension: Option<u32>,
    /// FDE repetitions indexed by the HNSW graph (Matryoshka prefix).
    #[arg(long, alias = "hnsw-prefix")]
    prefix_repetitions: Option<u32>,
    /// HNSW degree.
    #[arg(long, alias = "hnsw-m")]
    m: Option<u32>,
    /// HNSW build beam width.
    #[arg(long)]
    ef_construction: Option<u32>,
    /// Precision of the graph's vectors.
    #[arg(long, value_enum)]
    storage: Option<StorageArg>,
    /// Shards with fewer documents get no graph.
    #[arg(long, alias = "graph-min-docs")]
    min_docs: Option<u32>,
    /// Most centroids of the token codebook (0: no codes; it grows with the corpus up to this cap).
    #[arg(long)]
    codebook_size: Option<u32>,
}

/// `--projection-type`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum ProjectionArg {
    Identity,
    AmsSketch,
}

/// `--storage`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum StorageArg {
    F16,
    F32,
}

impl CreateArgs {
    /// The wire request (unset flags stay unset).
    fn request(self) -> pb::CreateCollectionRequest {
        let projection_type = match (self.projection_type, self.projection_dimension) {
            (Some(ProjectionArg::Identity), _) | (None, Some(0)) => pb::ProjectionType::Identity,
            (Some(ProjectionArg::AmsSketch), _) | (None, Some(_)) => pb::ProjectionType::AmsSketch,
            (None, None) => pb::ProjectionType::Unspecified,
        };
        let storage = match self.storage {
            Some(StorageArg::F16) => pb::VectorStorage::F16,
            Some(StorageArg::F32) => pb::VectorStorage::F32,
            None => pb::VectorStorage::Unspecified,
        };
        pb::CreateCollectionRequest {
            name: self.name,
            dimension: self.dimension,
            fde: Some(pb::FdeParams {
                num_repetitions: self.num_repetitions,
                num_simhash_projections: self.num_simhash_projections,
                seed: self.seed,
                projection_type: projection_type as i32,
                projection_dimension: self.projection_dimension.filter(|&d| d > 0),
                fill_empty_partitions: self.fill_empty_partitions,
                final_projection_dimension: self.final_projection_dimension,
            }),
            hnsw: Some(pb::HnswParams {
                prefix_repetitions: self.prefix_repetitions,
                m: self.m,
                ef_construction: self.ef_construction,
                storage: storage as i32,
                min_docs: self.min_docs,
            }),
            codebook_size: self.codebook_size,
        }
    }
}

/// A projection type by its REST name.
fn projection_name(p: i32) -> &'static str {
    match pb::ProjectionType::try_from(p) {
        Ok(pb::ProjectionType::Identity) => "identity",
        Ok(pb::ProjectionType::AmsSketch) => "ams_sketch",
        Ok(pb::ProjectionType::Unspecified) | Err(_) => "?",
    }
}

/// A graph vector storage by its REST name.
fn storage_name(s: i32) -> &'static str {
    match pb::VectorStorage::try_from(s) {
        Ok(pb::VectorStorage::F16) => "f16",
        Ok(pb::VectorStorage::F32) => "f32",
        Ok(pb::VectorStorage::Unspecified) | Err(_) => "?",
    }
}

/// A collection description as JSON, with the REST API's field names and values (`GET /v1/collections/{name}`).
pub(crate) fn info_json(i: &pb::CollectionInfo) -> Value {
    let f = i.fde.unwrap_or_default();
    let h = i.hnsw.unwrap_or_default();
    let s = i.stats.unwrap_or_default();
    json!({
        "name": i.name,
        "dimension": i.dimension,
        "fde": {
            "num_repetitions": f.num_repetitions, "num_simhash_projections": f.num_simhash_projections,
            "seed": f.seed, "projection_type": projection_name(f.projection_type),
            "projection_dimension": f.projection_dimension, "fill_empty_partitions": f.fill_empty_partitions,
            "final_projection_dimension": f.final_projection_dimension,
        },
        "hnsw": {
            "prefix_repetitions": h.prefix_repetitions, "m": h.m, "ef_construction": h.ef_construction,
            "storage": storage_name(h.storage),
            "min_docs": h.min_docs,
        },
        "codebook_size": i.codebook_size,
        "stats": {
            "documents": s.documents, "shards": s.shards, "memtable_documents": s.memtable_documents,
            "tombstones": s.tombstones, "wal_bytes": s.wal_bytes, "last_sequence": s.last_sequence,
            "codebook_centroids": s.codebook_centroids, "codebook_generation": s.codebook_generation,
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
                    let req = a.request();
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
