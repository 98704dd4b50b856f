//! The graph plan ([`Plan::Hnsw`](super::Plan::Hnsw)): the HNSW graph over a Matryoshka prefix of the FDE returns
//! `candidates` documents, re-scored by centroid interaction (or the full FDE when the shard has no codebook).
use super::collector::Fruit;
use super::context::{passes, Limits, QueryContext};
use super::source::CandidateSource;
use super::Hit;
use crate::{IndexError, Result};

/// The HNSW walk of a shard with a graph.
pub(crate) struct Hnsw;

impl CandidateSource for Hnsw {
    fn candidates(&self, ctx: &QueryContext<'_>, si: usize, limits: &Limits) -> Result<Fruit> {
        let shard = &*ctx.searcher.shards()[si];
        let sp = ctx.sparse()?;
        let table = ctx.table(si);
        let graph = shard
            .graph()
            .ok_or_else(|| IndexError::param("plan", "this shard has no HNSW graph"))?;
        let pdim = graph.prefix_dim();
        let mut q = vec![0f32; pdim];
        for (&o, v) in sp.offsets.iter().zip(sp.values.chunks_exact(sp.block)) {
            if o < pdim {
                q[o..o + sp.block].copy_from_slice(v);
            }
        }
        let norm = q.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            q.iter_mut().for_each(|v| *v /= norm);
        }
        let n = limits.graph_candidates.min(shard.len());
        let ef = limits.ef.unwrap_or(n).max(n);
        let filter = ctx.filter;
        let f = |d: usize| passes(filter, si, d);
        let found = graph.search(&q, n, ef, if filter.is_some() { Some(&f) } else { None });
        // Re-score the graph's candidates with the sharper signal the shard has: centroid interaction when it has
        // a codebook, else the full FDE.
        let hits = found
            .into_iter()
            .map(|(d, _)| Hit {
                shard: si,
                doc: d,
                score: match table {
                    Some(table) => table.score(shard.codes(d)),
                    None => sp.dot(shard.fde(d)),
                },
            })
            .collect();
        Ok(Fruit::Approx(hits))
    }
}
