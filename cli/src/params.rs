//! Flags and helpers shared by several commands: index parameters, search knobs, progress bars, process memory.
use chamfer_index::fde::{FdeConfig, ProjectionType};
use chamfer_index::search::{Plan, SearchParams};
use chamfer_index::shard::{HnswParams, IndexParams, VectorStorage, DEFAULT_CODEBOOK_SIZE};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

/// Index build parameters (defaults: the engine's).
#[derive(Args, Debug, Clone)]
pub(crate) struct IndexArgs {
    /// FDE repetitions R.
    #[arg(long, default_value_t = FdeConfig::paper_default(1).num_repetitions)]
    pub repetitions: usize,
    /// SimHash projections k_sim (2^k_sim partitions).
    #[arg(long, default_value_t = FdeConfig::paper_default(1).num_simhash_projections)]
    pub simhash_projections: u32,
    /// AMS-sketch projection dimension d_proj (0 = identity projection).
    #[arg(long, default_value_t = FdeConfig::paper_default(1).projection_dimension)]
    pub projection_dimension: usize,
    /// FDE seed (stored in the index; queries use the same).
    #[arg(long, default_value_t = FdeConfig::paper_default(1).seed)]
    pub seed: u64,
    /// Fill empty document partitions with the nearest token (the paper's option).
    #[arg(long)]
    pub fill_empty_partitions: bool,
    /// FDE repetitions (Matryoshka prefix) indexed by the HNSW graph.
    #[arg(long, default_value_t = HnswParams::default().prefix_repetitions)]
    pub hnsw_prefix: usize,
    /// HNSW degree.
    #[arg(long, default_value_t = HnswParams::default().m)]
    pub hnsw_m: usize,
    /// HNSW build beam width.
    #[arg(long, default_value_t = HnswParams::default().ef_construction)]
    pub ef_construction: usize,
    /// Precision of the graph's vectors.
    #[arg(long, value_enum, default_value_t = Storage::F16)]
    pub hnsw_storage: Storage,
    /// Shards with fewer documents get no graph (a scan is faster for them).
    #[arg(long, default_value_t = HnswParams::default().min_docs)]
    pub graph_min_docs: usize,
    /// Most centroids of the token codebook (0: none; centroid interaction and the inverted file need it). The
    /// codebook gets min(this, 2^floor(log2(16 sqrt(tokens)))) centroids: it grows with the corpus.
    #[arg(long, default_value_t = DEFAULT_CODEBOOK_SIZE)]
    pub codebook_size: usize,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub(crate) enum Storage {
    F16,
    F32,
}

impl IndexArgs {
    /// The engine parameters for token dimension `dim`.
    pub(crate) fn params(&self, dim: usize) -> IndexParams {
        let fde = FdeConfig {
            dimension: dim,
            num_repetitions: self.repetitions,
            num_simhash_projections: self.simhash_projections,
            seed: self.seed,
            projection_type: if self.projection_dimension == 0 {
                ProjectionType::Identity
            } else {
                ProjectionType::AmsSketch
            },
            projection_dimension: self.projection_dimension,
            fill_empty_partitions: self.fill_empty_partitions,
            final_projection_dimension: None,
        };
        let storage = match self.hnsw_storage {
            Storage::F16 => VectorStorage::F16,
            Storage::F32 => VectorStorage::F32,
        };
        let hnsw = HnswParams {
            prefix_repetitions: self.hnsw_prefix,
            m: self.hnsw_m,
            ef_construction: self.ef_construction,
            storage,
            min_docs: self.graph_min_docs,
        };
        IndexParams {
            fde,
            hnsw,
            codebook_size: self.codebook_size,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlanArg {
    Auto,
    Exact,
    FdeScan,
    CentroidScan,
    Ivf,
    Hnsw,
}

/// Search knobs.
#[derive(Args, Debug, Clone)]
pub(crate) struct SearchArgs {
    /// Results per query.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Search plan.
    #[arg(long, value_enum, default_value_t = PlanArg::Auto)]
    pub plan: PlanArg,
    /// HNSW beam width (default: the candidate count).
    #[arg(long)]
    pub ef: Option<usize>,
    /// Graph candidates per shard (default: 3 x rerank), or inverted-file candidates re-scored by centroid
    /// interaction (default: 16 x rerank).
    #[arg(long)]
    pub candidates: Option<usize>,
    /// Centroids probed per query token by the inverted-file plan (default: the engine's).
    #[arg(long)]
    pub nprobe: Option<usize>,
    /// Documents re-ranked with exact Chamfer (default: the engine's).
    #[arg(long)]
    pub rerank: Option<usize>,
}

impl SearchArgs {
    pub(crate) fn params(&self) -> SearchParams {
        let plan = match self.plan {
            PlanArg::Auto => Plan::Auto,
            PlanArg::Exact => Plan::Exact,
            PlanArg::FdeScan => Plan::FdeScan,
            PlanArg::CentroidScan => Plan::CentroidScan,
            PlanArg::Ivf => Plan::Ivf,
            PlanArg::Hnsw => Plan::Hnsw,
        };
        SearchParams {
            k: self.k,
            plan,
            ef: self.ef,
            candidates: self.candidates,
            rerank: self.rerank,
            prefix_repetitions: None,
            nprobe: self.nprobe,
        }
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// This process's peak resident memory (`VmHWM` of /proc/self/status, in bytes); `None` where there is no
/// /proc (not Linux). What the client verbs report as `client_peak_rss_bytes`.
pub(crate) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
