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
use crate::sys::prefetch::prefetch;
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
        // Scores stay quantized (integer order is score order) until the lists are made.
        let mut best: Vec<Vec<(i16, u32)>> = vec![Vec::with_capacity(keep + 1); nq];
        let mut floor = vec![i16::MIN; nq];
        let mut filling = true;
        for c in 0..k {
            let row = &table.row(c)[..nq];
            // Once every list is full, a row rarely beats any token's floor: one vectorised test per row.
            if !filling
                && !row
                    .iter()
                    .zip(&floor)
                    .fold(false, |a, (&v, &f)| a | (v > f))
            {
                continue;
            }
            if filling {
                filling = best.iter().any(|b| b.len() < keep);
            }
            for (j, &v) in row.iter().enumerate() {
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
            impute.push(if b.len() > probed {
                table.value(b[0].0)
            } else {
                0.0
            });
            lists.push(
                b.iter()
                    .rev()
                    .take(probed)
                    .map(|&(s, c)| (c, table.value(s)))
                    .collect(),
            );
        }
        Probes { lists, impute }
    }

    /// The best `limit` documents of `shard` (index `si`) in a probed list that pass `pass`, by their imputed
    /// scores (minus the constant `sum_j impute_j`), in no particular order; ties go to the lower document, as
    /// the search's score order has them. `check` runs once per query token.
    pub(super) fn gather(
        &self,
        shard: &Shard,
        si: usize,
        limit: usize,
        pass: &(dyn Fn(usize, usize) -> bool + Sync),
        check: &dyn Fn() -> Result<()>,
    ) -> Result<Vec<Hit>> {
        let n = shard.len();
        SCRATCH.with(|cell| {
            let mut scratch = cell.borrow_mut();
            let Scratch { slots, touched } = &mut *scratch;
            if slots.len() < n {
                slots.resize(n, Slot::default());
            }
            // One entry per document, and one spare: the walk writes before it knows whether to keep.
            if touched.len() < n + 1 {
                touched.resize(n + 1, 0);
            }
            let (walked, reached) = self.walk(shard, &mut slots[..n], &mut touched[..n + 1], check);
            let touched = &touched[..reached];
            // Keys that sort by descending score, then ascending document: one integer comparison each.
            let mut keys: Vec<u64> = touched
                .iter()
                .filter(|&&d| pass(si, d as usize))
                .map(|&d| (u64::from(!sortable(slots[d as usize].acc)) << 32) | u64::from(d))
                .collect();
            // The scratch goes back clean, whatever happened.
            for &d in touched {
                slots[d as usize] = Slot::default();
            }
            walked?;
            if keys.len() > limit {
                if limit == 0 {
                    keys.clear();
                } else {
                    keys.select_nth_unstable(limit - 1);
                    keys.truncate(limit);
                }
            }
            Ok(keys
                .into_iter()
                .map(|k| Hit {
                    shard: si,
                    doc: (k & 0xFFFF_FFFF) as usize,
                    score: unsortable(!((k >> 32) as u32)),
                })
                .collect())
        })
    }

    /// Accumulates the imputed scores of the documents the probed lists reach into `slots` (all zero on entry,
    /// one per document), listing each reached document once at the front of `touched` (one entry more than
    /// `slots`); returns how many it listed, also when stopped by `check`.
    ///
    /// The loop has no data-dependent branch: whether a posting is the first of its query token for the document
    /// (it adds the gain) and whether it is the first to reach the document at all (it stays listed) are both
    /// arithmetic, since either is close to a coin toss and mispredicted branches cost more than the
    /// scattered load itself.
    fn walk(
        &self,
        shard: &Shard,
        slots: &mut [Slot],
        touched: &mut [u32],
        check: &dyn Fn() -> Result<()>,
    ) -> (Result<()>, usize) {
        let mut reached = 0usize;
        for (j, (list, &impute)) in self.lists.iter().zip(&self.impute).enumerate() {
            if let Err(e) = check() {
                return (Err(e), reached);
            }
            let mark = j as u32 + 1;
            // Best list first: the first list that holds a document gives its score for this token.
            for &(c, s) in list {
                let gain = s - impute;
                let postings = shard.postings(c as usize);
                for (i, &d) in postings.iter().enumerate() {
                    // The slots a few postings ahead are scattered over the shard: ask for them early.
                    if let Some(ahead) = postings
                        .get(i + PREFETCH_AHEAD)
                        .and_then(|&a| slots.get(a as usize))
                    {
                        prefetch(ahead);
                    }
                    // Postings hold ids below the shard's length (checked when the shard was opened).
                    let Some(slot) = slots.get_mut(d as usize) else {
                        continue;
                    };
                    let old = *slot;
                    let fresh = f32::from(u8::from(old.stamp != mark));
                    *slot = Slot {
                        stamp: mark,
                        acc: old.acc + gain * fresh,
                    };
                    // A document is listed once, so `reached` < touched.len() before every write.
                    if let Some(t) = touched.get_mut(reached) {
                        *t = d;
                    }
                    reached += usize::from(old.stamp == 0);
                }
            }
        }
        (Ok(()), reached)
    }
}

/// How many postings ahead of the one being added [`Probes::gather`] prefetches a slot.
const PREFETCH_AHEAD: usize = 16;

/// A document's state during [`Probes::gather`]: 1 + the last query token that reached it (0: never reached), and
/// its accumulated score. Together, so that a posting costs one cache line.
#[derive(Clone, Copy, Default)]
struct Slot {
    stamp: u32,
    acc: f32,
}

/// Per-thread scratch of [`Probes::gather`]: the slots, kept zeroed between calls (only the reached slots are
/// reset), and the list of reached documents, so that a query does not allocate and clear arrays per shard.
#[derive(Default)]
struct Scratch {
    slots: Vec<Slot>,
    touched: Vec<u32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// An f32 mapped to a u32 whose unsigned order is `f32::total_cmp`'s order.
fn sortable(v: f32) -> u32 {
    let b = v.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// The inverse of [`sortable`].
fn unsortable(u: u32) -> f32 {
    f32::from_bits(if u >> 31 == 1 { u & 0x7FFF_FFFF } else { !u })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key order is `total_cmp`'s, and the mapping round-trips every value bit for bit.
    #[test]
    fn sortable_keys_follow_total_order() {
        let vals = [
            f32::NEG_INFINITY,
            -3.5,
            -1e-30,
            -0.0,
            0.0,
            1e-40,
            2.25,
            f32::MAX,
            f32::INFINITY,
        ];
        for a in vals {
            assert_eq!(unsortable(sortable(a)).to_bits(), a.to_bits());
            for b in vals {
                assert_eq!(sortable(a).cmp(&sortable(b)), a.total_cmp(&b), "{a} {b}");
            }
        }
    }
}
