//! The inverted-file plan's first stages (see the parent module): which centroids each query token probes, and
//! the documents their inverted lists hold, scored with imputed values for the lists that miss them.
//!
//! A document's imputed score is `sum_j s_j(doc)`, where `s_j(doc)` is the best score of query token `j`'s
//! probed centroids among those the document has a token in, or, when it has none, the score of the best
//! centroid `j` did not probe (an upper bound of what the unprobed tokens could score). Documents in no probed
//! list are not candidates. Scores are stored minus `sum_j impute_j` (the same for every document), so that a
//! document touched by one list costs one addition.
use super::{Hit, Shard};
use crate::codebook::QueryTable;
use crate::Result;

/// Per query token: the probed centroids (best first, with their scores) and the imputed score.
pub(super) struct Probes {
    lists: Vec<Vec<(u32, f32)>>,
    impute: Vec<f32>,
}

impl Probes {
    /// The best `nprobe` centroids of every query token of `table` (one sequential pass over the table), and the
    /// score of the next best one as the imputed value.
    pub(super) fn new(table: &QueryTable, nprobe: usize) -> Probes {
        let (k, nq) = (table.centroids(), table.query_tokens());
        let keep = (nprobe + 1).min(k);
        // Per token, the best `keep` (score, centroid) so far, ascending by score (best last).
        let mut best: Vec<Vec<(f32, u32)>> = vec![Vec::with_capacity(keep + 1); nq];
        let mut floor = vec![f32::NEG_INFINITY; nq];
        for c in 0..k {
            let row = table.row(c);
            for (j, &v) in row[..nq].iter().enumerate() {
                if v > floor[j] || best[j].len() < keep {
                    let b = &mut best[j];
                    let at = b.partition_point(|&(s, _)| s < v);
                    b.insert(at, (v, c as u32));
                    if b.len() > keep {
                        b.remove(0);
                    }
                    if b.len() == keep {
                        floor[j] = b[0].0;
                    }
                }
            }
        }
        let probed = nprobe.min(k);
        let mut lists = Vec::with_capacity(nq);
        let mut impute = Vec::with_capacity(nq);
        for b in best {
            // With fewer than nprobe + 1 centroids every one is probed and nothing needs imputing.
            impute.push(if b.len() > probed { b[0].0 } else { 0.0 });
            lists.push(b.iter().rev().take(probed).map(|&(s, c)| (c, s)).collect());
        }
        Probes { lists, impute }
    }

    /// The documents of `shard` (index `si`) in a probed list that pass `pass`, with their imputed scores
    /// (minus the constant `sum_j impute_j`); `check` runs once per query token.
    pub(super) fn gather(
        &self,
        shard: &Shard,
        si: usize,
        pass: &(dyn Fn(usize, usize) -> bool + Sync),
        check: &dyn Fn() -> Result<()>,
    ) -> Result<Vec<Hit>> {
        let n = shard.len();
        let mut acc = vec![0f32; n];
        // stamp[d] = 1 + the last query token that reached d (0: never reached).
        let mut stamp = vec![0u32; n];
        let mut touched: Vec<u32> = Vec::new();
        for (j, (list, &impute)) in self.lists.iter().zip(&self.impute).enumerate() {
            check()?;
            let mark = j as u32 + 1;
            // Best list first: the first list that holds a document gives its score for this token.
            for &(c, s) in list {
                let gain = s - impute;
                for &d in shard.postings(c as usize) {
                    let d = d as usize;
                    if stamp[d] != mark {
                        if stamp[d] == 0 {
                            touched.push(d as u32);
                        }
                        stamp[d] = mark;
                        acc[d] += gain;
                    }
                }
            }
        }
        Ok(touched
            .into_iter()
            .filter(|&d| pass(si, d as usize))
            .map(|d| Hit {
                shard: si,
                doc: d as usize,
                score: acc[d as usize],
            })
            .collect())
    }
}
