//! The FDE scan ([`Plan::FdeScan`](super::Plan::FdeScan)): the query FDE is scored against every document's FDE
//! with a sparse, coordinate-major scan; the best `rerank` are candidates. Also the query FDE's sparse form,
//! which the graph plan reads too.
use super::collector::{keep_best, Fruit};
use super::context::{passes, Limits, QueryContext};
use super::source::CandidateSource;
use super::Hit;
use crate::kernels;
use crate::shard::Shard;
use crate::sys::axpy::axpy_f16;
use crate::Result;

/// The query FDE's non-zero blocks: (offset into the FDE, values). A query token lands in one partition per
/// repetition, so at most `tokens x R` of the `R x 2^k_sim` blocks are non-zero.
pub(crate) struct SparseFde {
    pub(crate) block: usize,
    pub(crate) offsets: Vec<usize>,
    pub(crate) values: Vec<f32>,
}

impl SparseFde {
    pub(crate) fn new(fde: &[f32], block: usize) -> Self {
        let mut s = SparseFde {
            block,
            offsets: vec![],
            values: vec![],
        };
        for (b, chunk) in fde.chunks_exact(block).enumerate() {
            if chunk.iter().any(|&v| v != 0.0) {
                s.offsets.push(b * block);
                s.values.extend_from_slice(chunk);
            }
        }
        s
    }

    /// <query FDE, document FDE>, touching only the non-zero blocks.
    pub(crate) fn dot(&self, doc: &[half::f16]) -> f32 {
        self.offsets
            .iter()
            .zip(self.values.chunks_exact(self.block))
            .filter(|(&o, _)| o + self.block <= doc.len())
            .map(|(&o, q)| kernels::dot_f32_f16(q, &doc[o..o + self.block]))
            .sum()
    }

    /// Scores every document of `shard` into `scores` (coordinate-major scan); `check` runs before each
    /// non-zero block and stops the scan when it fails.
    fn scan(
        &self,
        shard: &Shard,
        scores: &mut [f32],
        check: &dyn Fn() -> Result<()>,
    ) -> Result<()> {
        let n = shard.len();
        let layout = shard.scan_layout();
        scores.iter_mut().for_each(|s| *s = 0.0);
        for (&o, q) in self
            .offsets
            .iter()
            .zip(self.values.chunks_exact(self.block))
            .filter(|(&o, _)| o + self.block <= shard.fde_dim())
        {
            check()?;
            for (c, &qv) in q.iter().enumerate() {
                if qv != 0.0 {
                    let row = &layout[(o + c) * n..(o + c + 1) * n];
                    axpy_f16(qv, row, scores);
                }
            }
        }
        Ok(())
    }
}

/// The sparse FDE scan of a shard.
pub(crate) struct FdeScan;

impl CandidateSource for FdeScan {
    fn candidates(&self, ctx: &QueryContext<'_>, si: usize, limits: &Limits) -> Result<Fruit> {
        let shard = &*ctx.searcher.shards()[si];
        let sparse = ctx.sparse()?;
        let mut scores = vec![0.0; shard.len()];
        sparse.scan(shard, &mut scores, &|| ctx.check())?;
        let mut hits: Vec<Hit> = scores
            .iter()
            .enumerate()
            .filter(|&(d, _)| passes(ctx.filter, si, d))
            .map(|(d, &score)| Hit {
                shard: si,
                doc: d,
                score,
            })
            .collect();
        keep_best(&mut hits, limits.rerank, ctx.searcher.keys());
        Ok(Fruit::Approx(hits))
    }
}
