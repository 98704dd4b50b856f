//! Orders and cuts: the score order with its global-key tie rule, the best-`n` cut, what a candidate source yields
//! for one shard ([`Fruit`]) and the [`Collector`] that merges those across shards (tantivy's `merge_fruits`).
use std::cmp::Ordering;

use rayon::prelude::*;

use super::Hit;
use crate::Result;

/// Descending score, then ascending global key (`keys[shard]`, doc): the ground truth's tie rule, with the shard's
/// key in the place of its position.
pub(crate) fn by_score(keys: &[u64]) -> impl Fn(&Hit, &Hit) -> Ordering + Copy + '_ {
    move |a: &Hit, b: &Hit| {
        b.score
            .total_cmp(&a.score)
            .then(keys[a.shard].cmp(&keys[b.shard]))
            .then(a.doc.cmp(&b.doc))
    }
}

/// Keeps the best `n` hits by [`by_score`] (unordered).
pub(crate) fn keep_best(hits: &mut Vec<Hit>, n: usize, keys: &[u64]) {
    if hits.len() > n {
        if n == 0 {
            hits.clear();
            return;
        }
        hits.select_nth_unstable_by(n - 1, by_score(keys));
        hits.truncate(n);
    }
}

/// What a candidate source yields for one shard.
pub(crate) enum Fruit {
    /// Documents scored exactly (the best `k`), and how many were scored.
    Exact { hits: Vec<Hit>, scored: usize },
    /// Inverted-file candidates scored by their imputed scores (less a per-query constant, the same for every
    /// document of one codebook): they compete across shards before centroid interaction re-scores them.
    Probed(Vec<Hit>),
    /// Candidates with an approximate score (centroid interaction or FDE), cut to the re-rank depth.
    Approx(Vec<Hit>),
}

/// Merges the fruits of every shard of one searcher.
#[derive(Default)]
pub(crate) struct Collector {
    /// Exact hits, the best `k` of each shard.
    pub(crate) exact: Vec<Hit>,
    /// Documents the exact plans scored.
    pub(crate) scored: usize,
    /// Inverted-file candidates (imputed scores).
    pub(crate) probed: Vec<Hit>,
    /// Approximate candidates.
    pub(crate) approx: Vec<Hit>,
}

impl Collector {
    /// Adds one shard's fruit.
    pub(crate) fn add(&mut self, fruit: Fruit) {
        match fruit {
            Fruit::Exact { hits, scored } => {
                self.exact.extend(hits);
                self.scored += scored;
            }
            Fruit::Probed(hits) => self.probed.extend(hits),
            Fruit::Approx(hits) => self.approx.extend(hits),
        }
    }
}

/// Scores documents `0..n` in steps of `step` documents (`check` before each), a step split into one range per
/// thread of `pool` (or scored here without one), keeping the best `keep` of `out` plus what `score_range` returns.
#[allow(clippy::too_many_arguments)]
pub(crate) fn scan_ranges(
    n: usize,
    step: usize,
    pool: Option<&rayon::ThreadPool>,
    check: &dyn Fn() -> Result<()>,
    keep: usize,
    keys: &[u64],
    out: &mut Vec<Hit>,
    score_range: &(dyn Fn(std::ops::Range<usize>) -> Vec<Hit> + Sync),
) -> Result<()> {
    let threads = pool.map_or(1, |p| p.current_num_threads());
    let mut hits: Vec<Hit> = Vec::new();
    for from in (0..n).step_by(step.max(1)) {
        check()?;
        let to = (from + step).min(n);
        if pool.is_some() {
            let per = step.div_ceil(threads).max(1);
            let parts: Vec<Vec<Hit>> = in_pool(pool, || {
                (from..to)
                    .step_by(per)
                    .collect::<Vec<_>>()
                    .into_par_iter()
                    .map(|a| score_range(a..(a + per).min(to)))
                    .collect()
            });
            parts.into_iter().for_each(|h| hits.extend(h));
        } else {
            hits.extend(score_range(from..to));
        }
        keep_best(&mut hits, keep, keys);
    }
    out.extend(hits);
    Ok(())
}

/// Runs `f` in `pool` (its parallel iterators then use the pool's threads), or here without one.
pub(crate) fn in_pool<R: Send>(
    pool: Option<&rayon::ThreadPool>,
    f: impl FnOnce() -> R + Send,
) -> R {
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}
