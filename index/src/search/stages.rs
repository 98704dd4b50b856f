//! The search pipeline, and the stages a distributed search calls on their own.
//!
//! [`Searcher::search`] runs: [`QueryContext`] -> each shard's [`CandidateSource`] -> [`Collector`] -> the
//! inverted-file cut and centroid interaction (the local candidates) -> the cut to the re-rank depth -> the exact
//! re-rank -> the best `k`. A cluster runs the same stages in two rounds: [`Searcher::local_candidates`] on every
//! node, [`LocalCandidates::merge`] and [`LocalCandidates::to_rerank`] on the coordinator,
//! [`Searcher::rerank_exact`] on the nodes holding the chosen documents, [`LocalCandidates::finish`] on the
//! coordinator. Every cut orders equal scores by [`DocKey`], so the two rounds give one node's answer.
use std::cmp::Ordering;

use rayon::prelude::*;

use super::collector::{by_score, in_pool, keep_best, Collector};
use super::context::{Limits, QueryContext};
use super::exact::rerank;
use super::source::{source_of, CandidateSource};
use super::{DocFilter, DocKey, Hit, Plan, SearchParams, SearchStats, Searcher};
use crate::tokens::TokenMatrix;
use crate::{IndexError, Result};

/// One candidate of [`LocalCandidates`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// The document.
    pub key: DocKey,
    /// Inverted-file candidates: the imputed score by which they competed for the `candidates` slots, less a
    /// per-query constant that is the same for every document of one codebook (compare only such scores).
    /// None for the other kinds.
    pub imputed: Option<f32>,
    /// The centroid-interaction score (inverted-file and centroid-scan candidates), the FDE score (FDE scan),
    /// or the exact score (documents of [`LocalCandidates::exact`]).
    pub score: f32,
}

/// The first round of a search: a searcher's candidates, cut as one searcher would cut them.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalCandidates {
    /// The limits the search cuts at.
    pub limits: Limits,
    /// Inverted-file candidates: the best `limits.ivf_candidates` by imputed score, each re-scored by centroid
    /// interaction.
    pub probed: Vec<Candidate>,
    /// Candidates of the scans and the graph, with their approximate scores (each shard's best
    /// `limits.rerank`, or its graph's candidates).
    pub approx: Vec<Candidate>,
    /// Documents of exhaustively searched shards with their exact scores (each shard's best `limits.k`).
    pub exact: Vec<Candidate>,
    /// Documents the exhaustive plans scored exactly.
    pub scored: usize,
    /// The plan that ran on the largest shard.
    pub plan: Option<Plan>,
}

/// Descending score, then ascending key.
fn by_candidate_score(a: &Candidate, b: &Candidate) -> Ordering {
    b.score.total_cmp(&a.score).then(a.key.cmp(&b.key))
}

/// Descending imputed score, then ascending key.
fn by_imputed(a: &Candidate, b: &Candidate) -> Ordering {
    let imp = |c: &Candidate| c.imputed.unwrap_or(f32::NEG_INFINITY);
    imp(b).total_cmp(&imp(a)).then(a.key.cmp(&b.key))
}

/// Keeps the best `n` of `v` by `order` (unordered).
fn keep(v: &mut Vec<Candidate>, n: usize, order: fn(&Candidate, &Candidate) -> Ordering) {
    if v.len() > n {
        if n == 0 {
            v.clear();
            return;
        }
        v.select_nth_unstable_by(n - 1, order);
        v.truncate(n);
    }
}

impl LocalCandidates {
    /// The candidates of several searchers (the nodes of a cluster, each over its own shards, all with the same
    /// limits and codebook) as one searcher over all their shards would have them.
    pub fn merge(parts: impl IntoIterator<Item = LocalCandidates>) -> Option<LocalCandidates> {
        let mut it = parts.into_iter();
        let mut all = it.next()?;
        for p in it {
            all.probed.extend(p.probed);
            all.approx.extend(p.approx);
            all.exact.extend(p.exact);
            all.scored += p.scored;
        }
        keep(&mut all.probed, all.limits.ivf_candidates, by_imputed);
        keep(&mut all.exact, all.limits.k, by_candidate_score);
        Some(all)
    }

    /// The documents to re-rank exactly: the best `limits.rerank` approximate candidates (inverted-file ones by
    /// their interaction scores), best first.
    pub fn to_rerank(&self) -> Vec<DocKey> {
        let mut all: Vec<Candidate> = self.approx.iter().chain(&self.probed).copied().collect();
        keep(&mut all, self.limits.rerank, by_candidate_score);
        all.sort_by(by_candidate_score);
        all.into_iter().map(|c| c.key).collect()
    }

    /// The answer: the best `limits.k` of the re-ranked documents (their exact scores) and of
    /// [`exact`](Self::exact), by descending score, then ascending key.
    pub fn finish(&self, reranked: &[(DocKey, f32)]) -> Vec<(DocKey, f32)> {
        let mut all: Vec<Candidate> = self.exact.clone();
        all.extend(reranked.iter().map(|&(key, score)| Candidate {
            key,
            imputed: None,
            score,
        }));
        keep(&mut all, self.limits.k, by_candidate_score);
        all.sort_by(by_candidate_score);
        all.into_iter().map(|c| (c.key, c.score)).collect()
    }
}

/// The local stage's result, by shard position.
struct Local {
    exact: Vec<Hit>,
    scored: usize,
    /// Inverted-file candidates with their imputed scores, and their interaction scores in the same order.
    probed: Vec<Hit>,
    interaction: Vec<f32>,
    approx: Vec<Hit>,
    plan: Option<Plan>,
}

impl Searcher {
    /// Stage one: every shard's candidates by its plan's source, merged; the inverted-file candidates of every
    /// shard compete on their imputed scores and the best are re-scored by centroid interaction.
    fn local(&self, ctx: &QueryContext<'_>) -> Result<Local> {
        let shards = self.shards();
        let keys = self.keys();
        let largest = (0..shards.len()).max_by_key(|&i| shards[i].len());
        let mut plan = None;
        let mut col = Collector::default();
        for (si, shard) in shards.iter().enumerate() {
            if shard.is_empty() {
                continue;
            }
            ctx.check()?;
            if Some(si) == largest {
                plan = Some(ctx.plans[si]);
            }
            let source: &dyn CandidateSource = source_of(ctx.plans[si]);
            col.add(source.candidates(ctx, si, &ctx.limits)?);
        }
        let Collector {
            exact,
            scored,
            mut probed,
            approx,
        } = col;
        if !probed.is_empty() {
            ctx.check()?;
        }
        keep_best(&mut probed, ctx.limits.ivf_candidates, keys);
        // Every probed shard's table was built by its walk.
        let tables: Vec<_> = (0..shards.len())
            .map(|si| {
                (ctx.plans[si] == Plan::Ivf && !shards[si].is_empty())
                    .then(|| ctx.table(si))
                    .flatten()
            })
            .collect();
        let interaction =
            |h: &Hit| tables[h.shard].map_or(h.score, |t| t.score(shards[h.shard].codes(h.doc)));
        let interaction: Vec<f32> = if ctx.pool.is_some() {
            in_pool(ctx.pool, || {
                probed
                    .par_iter()
                    .with_min_len(64)
                    .map(interaction)
                    .collect()
            })
        } else {
            probed.iter().map(interaction).collect()
        };
        Ok(Local {
            exact,
            scored,
            probed,
            interaction,
            approx,
            plan,
        })
    }

    /// The whole search, from the same stages.
    pub(super) fn search_impl(
        &self,
        query: TokenMatrix<'_>,
        p: &SearchParams,
        filter: Option<DocFilter<'_>>,
        cancel: &dyn Fn() -> bool,
    ) -> Result<(Vec<Hit>, SearchStats)> {
        let ctx = QueryContext::new(self, query, p, filter, cancel)?;
        let keys = self.keys();
        let local = self.local(&ctx)?;
        // Stage two: the best `rerank` approximate candidates over all shards are re-ranked exactly.
        let mut chosen = local.approx;
        chosen.extend(
            local
                .probed
                .iter()
                .zip(&local.interaction)
                .map(|(h, &score)| Hit { score, ..*h }),
        );
        ctx.check()?;
        keep_best(&mut chosen, ctx.limits.rerank, keys);
        let stats = SearchStats {
            plan: local.plan,
            reranked: local.scored + chosen.len(),
        };
        rerank(
            &ctx.prepared,
            self.shards(),
            ctx.pool,
            &|| ctx.check(),
            &mut chosen,
        )?;
        let mut hits = local.exact;
        hits.extend(chosen);
        keep_best(&mut hits, p.k, keys);
        hits.sort_by(by_score(keys));
        Ok((hits, stats))
    }

    /// Stage one on its own: this searcher's candidates with their imputed and interaction scores, cut as
    /// [`search`](Self::search) cuts them (see [`LocalCandidates`]). `cancel` as in
    /// [`search_with`](Self::search_with).
    pub fn local_candidates(
        &self,
        query: TokenMatrix<'_>,
        p: &SearchParams,
        filter: Option<DocFilter<'_>>,
        cancel: &dyn Fn() -> bool,
    ) -> Result<LocalCandidates> {
        let ctx = QueryContext::new(self, query, p, filter, cancel)?;
        let local = self.local(&ctx)?;
        let with = |h: &Hit, imputed: Option<f32>, score: f32| Candidate {
            key: self.doc_key(h),
            imputed,
            score,
        };
        Ok(LocalCandidates {
            limits: ctx.limits,
            probed: local
                .probed
                .iter()
                .zip(&local.interaction)
                .map(|(h, &s)| with(h, Some(h.score), s))
                .collect(),
            approx: local
                .approx
                .iter()
                .map(|h| with(h, None, h.score))
                .collect(),
            exact: local.exact.iter().map(|h| with(h, None, h.score)).collect(),
            scored: local.scored,
            plan: local.plan,
        })
    }

    /// Stage two on its own: the exact Chamfer scores of the documents `keys` names (in that order). A key this
    /// searcher does not hold is an [`IndexError::InvalidParam`]. `cancel` as in [`search_with`](Self::search_with).
    pub fn rerank_exact(
        &self,
        query: TokenMatrix<'_>,
        keys: &[DocKey],
        cancel: &dyn Fn() -> bool,
    ) -> Result<Vec<Hit>> {
        let dim = self.params().fde.dimension;
        if query.dim() != dim {
            return Err(IndexError::DimensionMismatch {
                expected: dim,
                got: query.dim(),
            });
        }
        let mut hits = keys
            .iter()
            .map(|k| match self.shard_position(k.shard) {
                Some(shard) if k.doc < self.shards()[shard].len() => Ok(Hit {
                    shard,
                    doc: k.doc,
                    score: 0.0,
                }),
                _ => Err(IndexError::param(
                    "keys",
                    format!("no document {} in a shard keyed {}", k.doc, k.shard),
                )),
            })
            .collect::<Result<Vec<Hit>>>()?;
        let prepared = crate::kernels::PreparedQuery::new(query.as_slice(), dim);
        let check = || {
            if cancel() {
                Err(IndexError::Cancelled("the search was stopped"))
            } else {
                Ok(())
            }
        };
        rerank(&prepared, self.shards(), self.pool(), &check, &mut hits)?;
        Ok(hits)
    }
}
