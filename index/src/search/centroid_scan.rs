//! The centroid scan ([`Plan::CentroidScan`](super::Plan::CentroidScan)): every document's token codes are scored
//! by centroid interaction (one table load and max per token); the best `rerank` are candidates.
use super::collector::{keep_best, scan_ranges, Fruit};
use super::context::{passes, Limits, QueryContext};
use super::source::CandidateSource;
use super::{Hit, CANCEL_CHECK_EVERY};
use crate::{IndexError, Result};

/// Centroid interaction over every document of a shard with a codebook.
pub(crate) struct CentroidScan;

impl CandidateSource for CentroidScan {
    fn candidates(&self, ctx: &QueryContext<'_>, si: usize, limits: &Limits) -> Result<Fruit> {
        let shard = &*ctx.searcher.shards()[si];
        let table = ctx
            .table(si)
            .ok_or_else(|| IndexError::param("plan", "this shard has no token codebook"))?;
        let (filter, keys, rerank) = (ctx.filter, ctx.searcher.keys(), limits.rerank);
        let score_range = |r: std::ops::Range<usize>| -> Vec<Hit> {
            let mut hits: Vec<Hit> = r
                .filter(|&d| passes(filter, si, d))
                .map(|d| Hit {
                    shard: si,
                    doc: d,
                    score: table.score(shard.codes(d)),
                })
                .collect();
            keep_best(&mut hits, rerank, keys);
            hits
        };
        let mut hits = Vec::new();
        scan_ranges(
            shard.len(),
            CANCEL_CHECK_EVERY * 16 * ctx.threads,
            ctx.pool,
            &|| ctx.check(),
            rerank,
            keys,
            &mut hits,
            &score_range,
        )?;
        Ok(Fruit::Approx(hits))
    }
}
