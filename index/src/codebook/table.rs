//! Per-query centroid tables.
use rayon::prelude::*;

use super::*;
use crate::sys::codes;

impl Codebook {
    /// The per-query table: `K x W` inner products in 16-bit fixed point (`W` = query tokens rounded up to 16;
    /// padding columns 0). See [`QueryTable`].
    pub fn query_table(&self, query: &[f32]) -> QueryTable {
        self.query_table_par(query, 1)
    }

    /// [`query_table`](Self::query_table) computed by up to `threads` rayon tasks (identical values).
    pub fn query_table_par(&self, query: &[f32], threads: usize) -> QueryTable {
        let (k, dim) = (self.len(), self.dim);
        let nq = query.len() / dim.max(1);
        let w = nq.div_ceil(codes::LANES).max(1) * codes::LANES;
        let mut qt = vec![0f32; nq * dim];
        for (j, tok) in query.chunks_exact(dim).enumerate() {
            for (kk, &v) in tok.iter().enumerate() {
                qt[kk * nq + j] = v;
            }
        }
        let scale = QueryTable::scale_for(query, dim);
        let q = codes::TableQuery {
            qt: &qt,
            nq,
            dim,
            w,
            scale,
        };
        let mut table = vec![0i16; k * w];
        if threads <= 1 || k < 1024 {
            codes::centroid_table(q, &self.panels, k, &mut table);
        } else {
            // Split at panel (16-centroid) boundaries: each task fills its own rows.
            let per = k.div_ceil(threads).div_ceil(16) * 16;
            table
                .par_chunks_mut(per * w)
                .enumerate()
                .for_each(|(i, rows)| {
                    let c0 = i * per;
                    let kk = rows.len() / w;
                    let panels = &self.panels[c0 * dim..(c0 + kk.div_ceil(16) * 16) * dim];
                    codes::centroid_table(q, panels, kk, rows);
                });
        }
        QueryTable {
            table,
            w,
            nq,
            scale,
        }
    }
}

/// A query's centroid table: `<query token j, centroid c>` for every centroid, in 16-bit fixed point.
///
/// A value is stored as `round(v * scale)`, where `scale` maps the largest query-token norm (a bound of every
/// inner product with a unit centroid) to nearly the full i16 range. The absolute error of a value is at most
/// `0.5 / scale` (about 1.5e-5 of the largest norm), below the f16 rounding of the centroids the products are
/// computed from; scores are exact integer sums divided by the scale. Half the bytes of an f32 table, so a
/// row of 32 query tokens is one cache line, and a max over 16 query tokens is one instruction.
pub struct QueryTable {
    pub(super) table: Vec<i16>,
    w: usize,
    nq: usize,
    scale: f32,
}

impl QueryTable {
    /// The quantization scale for `query` (tokens of `dim` values): the full range over the largest token
    /// norm, with 2% headroom for the f16 rounding of unit centroids; 1 for an all-zero query.
    pub(super) fn scale_for(query: &[f32], dim: usize) -> f32 {
        let norm = query
            .chunks_exact(dim.max(1))
            .map(|t| t.iter().map(|v| v * v).sum::<f32>().sqrt())
            .fold(0f32, f32::max);
        if norm > 0.0 && norm.is_finite() {
            codes::QUANT_MAX / (norm * 1.02)
        } else {
            1.0
        }
    }
    /// Approximate Chamfer score of a document given its token codes.
    pub fn score(&self, codes: &[u16]) -> f32 {
        self.unscale(codes::score(&self.table, self.w, codes))
    }
    /// A sum of table values, back in score units.
    pub(super) fn unscale(&self, v: i32) -> f32 {
        v as f32 / self.scale
    }
    /// Number of query tokens (columns that are not padding).
    pub fn query_tokens(&self) -> usize {
        self.nq
    }
    /// Number of centroids (rows).
    pub fn centroids(&self) -> usize {
        self.table.len() / self.w.max(1)
    }
    /// `<query token j, centroid c>` (as quantized).
    pub fn get(&self, c: usize, j: usize) -> f32 {
        self.unscale(i32::from(self.table[c * self.w + j]))
    }
    /// Centroid `c`'s row of quantized values: its inner product with every query token (then zero padding);
    /// [`value`](Self::value) converts one back.
    pub fn row(&self, c: usize) -> &[i16] {
        &self.table[c * self.w..(c + 1) * self.w]
    }
    /// A quantized value of [`row`](Self::row) in score units.
    pub fn value(&self, q: i16) -> f32 {
        self.unscale(i32::from(q))
    }
}
