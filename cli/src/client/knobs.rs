//! The search knobs as flags, once, for every verb that searches a server (`chamfer query`, `chamfer load`): the
//! names of the API's `Search` schema and `chamfer.v1.SearchRequest` (`_` as `-`), unset ones left to the server.
use chamfer_client::pb;
use clap::Args;
use serde_json::{json, Value};

/// Search knobs (unset: the server's defaults, listed in `/openapi.json`).
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct KnobArgs {
    /// Centroids probed per query token by the inverted-file plan (the default plan's recall knob).
    #[arg(long)]
    pub nprobe: Option<u32>,
    /// HNSW beam width (shards searched by their graph).
    #[arg(long)]
    pub ef: Option<u32>,
    /// First-stage candidates (from the graph or the inverted file).
    #[arg(long)]
    pub candidates: Option<u32>,
    /// Candidates re-ranked with exact Chamfer.
    #[arg(long)]
    pub rerank: Option<u32>,
    /// Matryoshka prefix (FDE repetitions) of graph queries (must equal the collection's).
    #[arg(long, alias = "prefix")]
    pub prefix_repetitions: Option<u32>,
    /// Exhaustive exact search.
    #[arg(long)]
    pub exact: bool,
}

impl KnobArgs {
    /// The knobs of a search for `k` results.
    pub(crate) fn knobs(&self, k: u32, with_metadata: bool) -> pb::SearchKnobs {
        pb::SearchKnobs {
            k,
            ef: self.ef,
            candidates: self.candidates,
            rerank: self.rerank,
            prefix_repetitions: self.prefix_repetitions,
            nprobe: self.nprobe,
            exact: self.exact,
            with_metadata,
        }
    }
}

/// Knobs as JSON, with REST's names; unset knobs and false flags left out (proto3 JSON leaves a false bool out,
/// REST takes it either way): what the REST and grpcurl bodies carry, and how `--format json` prints the echo.
pub(crate) fn knobs_json(k: &pb::SearchKnobs) -> Value {
    let mut v = json!({"k": k.k});
    for (name, value) in [
        ("ef", k.ef),
        ("candidates", k.candidates),
        ("rerank", k.rerank),
        ("prefix_repetitions", k.prefix_repetitions),
        ("nprobe", k.nprobe),
    ] {
        if let Some(x) = value {
            v[name] = json!(x);
        }
    }
    for (name, on) in [("exact", k.exact), ("with_metadata", k.with_metadata)] {
        if on {
            v[name] = json!(true);
        }
    }
    v
}

/// Adds `knobs` to a REST or grpcurl search body.
pub(crate) fn add_knobs(body: &mut Value, knobs: &pb::SearchKnobs) {
    if let Value::Object(knobs) = knobs_json(knobs) {
        for (name, value) in knobs {
            body[name] = value;
        }
    }
}
