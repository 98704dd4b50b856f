//! The protocol-neutral results of the core's operations (what the adapters translate to wire types).
use chamfer_index::shard::IndexParams;

use super::collection::Stats;

/// A collection's description.
#[derive(Clone, Debug)]
pub struct CollectionInfo {
    /// Collection name.
    pub name: String,
    /// Token vector dimension.
    pub dimension: usize,
    /// Resolved engine parameters (FDE, graph, codebook).
    pub params: IndexParams,
    /// Statistics as of the current snapshot.
    pub stats: Stats,
}

/// Result of an upsert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpsertOutcome {
    /// Documents written.
    pub upserted: u64,
    /// Sequence number of the write.
    pub sequence: u64,
}

/// Result of a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeleteOutcome {
    /// Documents that existed and were deleted.
    pub deleted: u64,
    /// Sequence number of the write.
    pub sequence: u64,
}

/// A fetched document.
#[derive(Clone, Debug)]
pub struct DocOut {
    /// External document id.
    pub id: String,
    /// Number of token vectors.
    pub n_tokens: usize,
    /// Row-major f32 values, when asked for.
    pub tokens: Option<Vec<f32>>,
    /// Compact JSON object text, or None.
    pub metadata: Option<String>,
}

/// Result of a get.
#[derive(Clone, Debug, Default)]
pub struct GetOutcome {
    /// Documents found, in request order.
    pub documents: Vec<DocOut>,
    /// Requested ids that do not exist.
    pub missing: Vec<String>,
}

/// One search result.
#[derive(Clone, Debug, PartialEq)]
pub struct HitOut {
    /// External document id.
    pub id: String,
    /// Exact Chamfer score (higher is better).
    pub score: f32,
    /// Compact JSON object text when metadata was asked for and the document has some.
    pub metadata: Option<String>,
}

/// Why the server is or is not ready, for `/readyz` and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// True when every collection has been opened (or found damaged) and shutdown has not begun.
    pub ready: bool,
    /// Why not ready.
    pub reason: Option<String>,
    /// Collections that cannot serve, with the reason.
    pub unavailable: Vec<(String, String)>,
    /// Collections whose writes fail for lack of disk space, with the error.
    pub storage_full: Vec<(String, String)>,
}
