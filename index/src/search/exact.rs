//! The exhaustive plan ([`Plan::Exact`](super::Plan::Exact)): every document is scored exactly; and the exact
//! re-rank every plan ends with.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rayon::prelude::*;

use super::collector::{in_pool, keep_best, scan_ranges, Fruit};
use super::context::{passes, Limits, QueryContext};
use super::source::CandidateSource;
use super::{Hit, CANCEL_CHECK_EVERY};
use crate::kernels::{self, PreparedQuery};
use crate::shard::Shard;
use crate::Result;

/// Exact Chamfer over every document of a shard.
pub(crate) struct Exact;

impl CandidateSource for Exact {
    fn candidates(&self, ctx: &QueryContext<'_>, si: usize, limits: &Limits) -> Result<Fruit> {
        let shard = &*ctx.searcher.shards()[si];
        let (prepared, filter, keys, k) =
            (&ctx.prepared, ctx.filter, ctx.searcher.keys(), limits.k);
        let scored = AtomicUsize::new(0);
        let score_range = |r: std::ops::Range<usize>| -> Vec<Hit> {
            let mut hits: Vec<Hit> = r
                .filter(|&d| passes(filter, si, d))
                .inspect(|_| {
                    scored.fetch_add(1, Ordering::Relaxed);
                })
                .map(|d| Hit {
                    shard: si,
                    doc: d,
                    score: kernels::chamfer(prepared, shard.packed_tokens(d), shard.n_tokens(d)),
                })
                .collect();
            keep_best(&mut hits, k, keys);
            hits
        };
        let mut hits = Vec::new();
        scan_ranges(
            shard.len(),
            CANCEL_CHECK_EVERY * ctx.threads,
            ctx.pool,
            &|| ctx.check(),
            k,
            keys,
            &mut hits,
            &score_range,
        )?;
        Ok(Fruit::Exact {
            hits,
            scored: scored.into_inner(),
        })
    }
}

/// Replaces the score of every hit by its exact Chamfer score against `prepared` (`check` runs before each step
/// of [`CANCEL_CHECK_EVERY`] documents per thread of `pool`).
pub(crate) fn rerank(
    prepared: &PreparedQuery,
    shards: &[Arc<Shard>],
    pool: Option<&rayon::ThreadPool>,
    check: &dyn Fn() -> Result<()>,
    hits: &mut [Hit],
) -> Result<()> {
    let threads = pool.map_or(1, |p| p.current_num_threads());
    let rescore = |h: &mut Hit| {
        let shard = &shards[h.shard];
        h.score = kernels::chamfer(prepared, shard.packed_tokens(h.doc), shard.n_tokens(h.doc));
    };
    for chunk in hits.chunks_mut(CANCEL_CHECK_EVERY * threads) {
        check()?;
        if pool.is_some() {
            in_pool(pool, || {
                chunk.par_iter_mut().with_min_len(8).for_each(rescore)
            });
        } else {
            chunk.iter_mut().for_each(rescore);
        }
    }
    Ok(())
}
