//! The inverted-file plan's first stages (see the parent module): which centroids each query token probes, and
//! the documents their inverted lists hold, scored with imputed values for the lists that miss them.
//!
//! A document's imputed score is `sum_j s_j(doc)`, where `s_j(doc)` is the best score of query token `j`'s
//! probed centroids among those the document has a token in, or, when it has none, the score of the best
//! centroid `j` did not probe (an upper bound of what the unprobed tokens could score). Documents in no probed
//! list are not candidates. Scores are stored minus `sum_j impute_j` (the same for every document), so that a
//! document touched by one list costs one addition.
use super::collector::Fruit;
use super::context::{Limits, QueryContext};
use super::source::CandidateSource;
use super::{DocFilter, Hit};
use crate::codebook::QueryTable;
use crate::shard::Shard;
use crate::sys::prefetch::prefetch;
use crate::{IndexError, Result};

/// The inverted-file walk of a shard with an inverted file: its best `candidates` by imputed score.
pub(crate) struct Ivf;

impl CandidateSource for Ivf {
    fn candidates(&self, ctx: &QueryContext<'_>, si: usize, limits: &Limits) -> Result<Fruit> {
        let probes = ctx
            .probes(si)
            .ok_or_else(|| IndexError::param("plan", "this shard has no token codebook"))?;
        let shard = &*ctx.searcher.shards()[si];
        let hits = probes.gather(shard, si, limits.ivf_candidates, ctx.filter, &|| {
            ctx.check()
        })?;
        Ok(Fruit::Probed(hits))
    }
}

/// Per query token: the probed centroids (best first, with their scores) and the imputed score.
pub(crate) struct Probes {
    lists: Vec<Vec<(u32, f32)>>,
    impute: Vec<f32>,
}

impl Probes {
    /// The best `nprobe` centroids of every query token of `table` (one sequential pass over the table), and the
    /// score of the next best one as the imputed value.
    pub(crate) fn new(table: &QueryTable, nprobe: usize) -> Probes {
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

    /// The best `limit` documents of `shard` (index `si`) in a probed list that pass `filter`, by their imputed
    /// scores (minus the constant `sum_j impute_j`), in no particular order; ties go to the lower document, as
    /// the search's score order has them. `check` runs once per query token.
    pub(crate) fn gather(
        &self,
        shard: &Shard,
        si: usize,
        limit: usize,
        filter: Option<DocFilter<'_>>,
        check: &dyn Fn() -> Result<()>,
    ) -> Result<Vec<Hit>> {
        let n = shard.len();
        SCRATCH.with(|cell| {
            let mut scratch = cell.borrow_mut();
            let Scratch {
                slots,
                touched,
                keys,
            } = &mut *scratch;
            // Sized once per thread for the largest shard; the slots stay zeroed between calls.
            if slots.len() < n {
                slots.resize(n, Slot::default());
            }
            // One entry per document, and one spare: the walk writes before it knows whether to keep.
            if touched.len() < n + 1 {
                touched.resize(n + 1, 0);
                keys.resize(n + 1, 0);
            }
            let slots = &mut slots[..n];
            let (walked, reached) = self.walk(shard, slots, &mut touched[..n + 1], check);
            // Most documents reached (large probes): one sequential pass beats a scattered one.
            let dense = reached >= n / DENSE_SHARE;
            let mut len = take_keys(slots, &touched[..reached], dense, &mut keys[..n + 1]);
            walked?;
            if let Some(f) = filter {
                // Compact the passing keys to the front, in place.
                let mut kept = 0;
                for i in 0..len {
                    if f(si, (keys[i] & 0xFFFF_FFFF) as usize) {
                        keys[kept] = keys[i];
                        kept += 1;
                    }
                }
                len = kept;
            }
            let keys = &mut keys[..len];
            if keys.len() > limit && limit > 0 {
                keys.select_nth_unstable(limit - 1);
            }
            Ok(keys[..limit.min(len)]
                .iter()
                .map(|&k| Hit {
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

/// The keys of the reached documents (sorting by descending score, then ascending document: one integer
/// comparison each) in the front of `out` (one entry more than `slots`), returning how many; every reached slot
/// is reset. `touched` lists the reached documents. `dense` reads all slots in order instead of through `touched`
/// (the same keys, in another order), without a data-dependent branch: each slot's key is written, and kept by
/// advancing past it only when the slot was reached.
fn take_keys(slots: &mut [Slot], touched: &[u32], dense: bool, out: &mut [u64]) -> usize {
    let key = |d: usize, s: Slot| (u64::from(!sortable(s.acc)) << 32) | d as u64;
    let mut len = 0;
    if dense {
        for (d, slot) in slots.iter_mut().enumerate() {
            // len <= d < out.len() before every write.
            if let Some(o) = out.get_mut(len) {
                *o = key(d, *slot);
            }
            len += usize::from(slot.stamp != 0);
            *slot = Slot::default();
        }
    } else {
        for (o, &d) in out.iter_mut().zip(touched) {
            let d = d as usize;
            *o = key(d, slots[d]);
            slots[d] = Slot::default();
            len += 1;
        }
    }
    len
}

/// [`Probes::gather`] reads the reached documents' slots in one sequential pass over all of them when at least
/// one in this many documents was reached, else through the list of reached documents.
const DENSE_SHARE: usize = 8;

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
/// reset), the list of reached documents and their keys, so that a query does not allocate and clear arrays per
/// shard.
#[derive(Default)]
struct Scratch {
    slots: Vec<Slot>,
    touched: Vec<u32>,
    keys: Vec<u64>,
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

    /// Both ways of reading the reached slots give the same keys and leave every slot clean.
    #[test]
    fn dense_and_listed_key_reads_agree() {
        let n = 50;
        let touched: Vec<u32> = vec![7, 3, 41, 0, 19, 49];
        let fill = || {
            let mut slots = vec![Slot::default(); n];
            for (i, &d) in touched.iter().enumerate() {
                slots[d as usize] = Slot {
                    stamp: 1 + i as u32 % 2,
                    acc: i as f32 - 2.5,
                };
            }
            slots
        };
        let mut got = Vec::new();
        for dense in [false, true] {
            let mut slots = fill();
            let mut out = vec![0u64; n + 1];
            let len = take_keys(&mut slots, &touched, dense, &mut out);
            let mut keys = out[..len].to_vec();
            keys.sort_unstable();
            assert!(
                slots.iter().all(|s| s.stamp == 0 && s.acc == 0.0),
                "dense {dense}"
            );
            got.push(keys);
        }
        assert_eq!(got[0], got[1]);
        assert_eq!(got[0].len(), 6);
        // Best score first: document 49 (score 2.5), then 19.
        assert_eq!(got[0][0] & 0xFFFF_FFFF, 49);
        assert_eq!(got[0][1] & 0xFFFF_FFFF, 19);
    }

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
