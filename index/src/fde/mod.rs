//! MUVERA fixed-dimensional encodings (FDE), bit-compatible with Google's reference implementation
//! (`graph-mining/sketching/point_cloud/fixed_dimensional_encoding.cc`, built with GCC 12 / libstdc++).
//!
//! An FDE turns a set of token vectors into one vector such that `<F_q(Q), F_doc(P)>` approximates
//! `R x Chamfer(Q, P)` (the R repetitions are summed, not averaged). Per repetition r, tokens are partitioned by
//! k_sim SimHash hyperplanes drawn from `std::mt19937(seed + r)`, each token is projected to d_proj dimensions
//! (or kept as is) and each partition's block holds the sum (queries) or the centroid (documents) of its tokens.
//! Layout: repetition-major, then partition, then projected dimension, so without a final projection the first
//! `r * repetition_dim` values are the r-repetition FDE ("Matryoshka" prefixes).
//!
//! # Where the reference differs from the paper (REF in the spec), and this module follows the reference
//! * Partition index: the sign bits (hyperplane 0 most significant) are read as a **Gray code**:
//!   `idx = (idx << 1) + (bit ^ (idx & 1))`, so the sign-bit string of partition `idx` is `idx ^ (idx >> 1)`.
//!   A bit is set when the sketch value is `> 0`.
//! * Inner projection: a **sparse, unscaled** AMS sketch: input coordinate i goes to one output j with sign +-1,
//!   no `1/sqrt(d_proj)` factor.
//! * Final projection: a **Count-Sketch** drawn from `std::mt19937(seed)` (not `seed + r`).
//!
//! Random matrices come from the libstdc++ algorithms modelled in [`rng`] (Gaussians column by column). Sketch
//! values are sequential `f32` dot products (the reference's Eigen GEMM sums in another order, so a sketch value
//! within an ulp or so of zero could fall on the other side). Blocks are computed as
//! `projection(sum of tokens)` instead of the reference's `sum of projection(token)`: the same linear map, with
//! float rounding in another order (about 1 ulp per element).
//!
//! # Implementation
//! All `R x k_sim` hyperplanes are one `d x (R*k_sim)` matrix, multiplied by the tokens in register tiles of
//! 12 tokens x 4 hyperplanes (tokens transposed into 4-lane panels, hyperplane entries pre-broadcast, so the
//! compiler's auto-vectorisation produces plain packed multiply/adds). Then, per repetition, raw token sums are
//! accumulated per occupied partition and each occupied block is projected once; an AMS projection is stored as
//! the input coordinates grouped by target (a gather of `d` values per block).
use rayon::prelude::*;

use crate::tokens::TokenMatrix;
use crate::{IndexError, Result};

mod config;
pub mod rng;
#[cfg(test)]
mod tests;

pub use config::{EncodingType, FdeConfig, ProjectionType, MAX_FLOATS};
use rng::{bernoulli_half, uniform_int, Mt19937, NormalF32};

/// 4-lane token vectors per register tile (TT * 4 tokens).
const TT: usize = 3;
/// Hyperplanes per register tile.
const TC: usize = 4;
/// Tokens per tile.
const TOKENS: usize = TT * 4;
/// "No slot" marker of [`Scratch::slot_of`].
const NONE: u32 = u32::MAX;

/// An AMS projection per repetition, stored by target: for repetition r and target k, the input coordinates
/// `rows[r*d + starts[r*(dp+1) + k] .. r*d + starts[r*(dp+1) + k + 1]]` (ascending) with their signs.
struct Ams {
    rows: Vec<u32>,
    signs: Vec<f32>,
    starts: Vec<u32>,
}

/// A MUVERA encoder: the configuration with every random matrix precomputed. Cheap to share (`&self` methods,
/// `Sync`).
pub struct FdeEncoder {
    config: FdeConfig,
    /// All SimHash matrices as one `d x (R*k_sim)` matrix (column `r*k_sim + h` = hyperplane h of repetition r),
    /// cut into column tiles of [`TC`] (zero-padded), each tile `d x TC` row-major, entries pre-broadcast:
    /// `simhash[(tile*d + i)*TC + c] = [G[i][tile*TC + c]; 4]`.
    simhash: Vec<[f32; 4]>,
    ams: Option<Ams>,
    /// Count-Sketch: per coordinate of the full FDE, (target, sign).
    count_sketch: Option<Vec<(u32, f32)>>,
}

/// Per-thread working memory, grown on demand and reused across documents.
#[derive(Default)]
struct Scratch {
    /// One tile of tokens, transposed: `panel[i*TT + v][l]` = coordinate i of token `4v + l` of the tile.
    panel: Vec<[f32; 4]>,
    /// Partition index of token t in repetition r at `t*R + r`.
    parts: Vec<u32>,
    /// Token sums of the occupied partitions of the current repetition, one row of d per slot.
    raw: Vec<f32>,
    /// Slot of each partition in the current repetition ([`NONE`] if empty); all [`NONE`] between repetitions.
    slot_of: Vec<u32>,
    /// Occupied partitions of the current repetition, in order of their first token.
    slots: Vec<Slot>,
    /// The full FDE, when a final projection follows.
    full: Vec<f32>,
}

struct Slot {
    partition: u32,
    count: usize,
    first_token: usize,
}

impl FdeEncoder {
    /// Validates `config` and draws its matrices.
    pub fn new(config: FdeConfig) -> Result<Self> {
        config.validate()?;
        let (d, reps, k) = (
            config.dimension,
            config.num_repetitions,
            config.num_simhash_projections as usize,
        );
        let seed_of = |r: usize| config.seed.wrapping_add(r as u64) as u32;

        let cols = reps * k;
        let tiles = cols.div_ceil(TC);
        let mut simhash = vec![[0.0f32; 4]; tiles * d * TC];
        for r in 0..reps {
            let (mut rng, mut normal) = (Mt19937::new(seed_of(r)), NormalF32::new());
            for h in 0..k {
                let col = r * k + h;
                let (tile, c) = (col / TC, col % TC);
                for i in 0..d {
                    simhash[(tile * d + i) * TC + c] = [normal.sample(&mut rng); 4];
                }
            }
        }

        let ams = (config.projection_type == ProjectionType::AmsSketch).then(|| {
            let dp = config.projection_dimension;
            let mut ams = Ams {
                rows: Vec::with_capacity(reps * d),
                signs: Vec::new(),
                starts: Vec::new(),
            };
            ams.signs.reserve(reps * d);
            ams.starts.reserve(reps * (dp + 1));
            let mut draws = Vec::with_capacity(d);
            for r in 0..reps {
                let mut rng = Mt19937::new(seed_of(r));
                draws.clear();
                for i in 0..d {
                    let j = uniform_int(&mut rng, 0, dp as u64 - 1) as usize;
                    let sign = if bernoulli_half(&mut rng) { 1.0f32 } else { -1.0 };
                    draws.push((j, i as u32, sign));
                }
                draws.sort_by_key(|&(j, i, _)| (j, i));
                let mut next = 0;
                for k in 0..=dp {
                    while next < d && draws[next].0 < k {
                        next += 1;
                    }
                    ams.starts.push(next as u32);
                }
                ams.rows.extend(draws.iter().map(|&(_, i, _)| i));
                ams.signs.extend(draws.iter().map(|&(_, _, s)| s));
            }
            ams
        });

        let count_sketch = config.final_projection_dimension.map(|dim| {
            let mut rng = Mt19937::new(config.seed as u32);
            (0..config.full_dim())
                .map(|_| {
                    let j = uniform_int(&mut rng, 0, dim as u64 - 1) as u32;
                    (j, if bernoulli_half(&mut rng) { 1.0 } else { -1.0 })
                })
                .collect()
        });

        Ok(FdeEncoder {
            config,
            simhash,
            ams,
            count_sketch,
        })
    }

    /// The (validated) configuration.
    pub fn config(&self) -> &FdeConfig {
        &self.config
    }

    /// Query FDE (`DEFAULT_SUM`): per partition, the sum of the projected tokens; empty partitions stay zero.
    /// Like the reference, rejects a configuration with `fill_empty_partitions`.
    pub fn encode_query(&self, tokens: TokenMatrix<'_>) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.config.output_dim()];
        self.encode_query_into(tokens, &mut out)?;
        Ok(out)
    }

    /// Document FDE (`AVERAGE`): per partition, the centroid of the projected tokens; empty partitions are
    /// filled with the nearest token when `fill_empty_partitions` is set.
    pub fn encode_document(&self, tokens: TokenMatrix<'_>) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.config.output_dim()];
        self.encode_document_into(tokens, &mut out)?;
        Ok(out)
    }

    /// [`encode_query`](Self::encode_query) into `out` (length `output_dim`, overwritten).
    pub fn encode_query_into(&self, tokens: TokenMatrix<'_>, out: &mut [f32]) -> Result<()> {
        self.check(&tokens, out.len(), 1)?;
        self.encode_with(tokens, EncodingType::Sum, out, &mut Scratch::default())
    }

    /// [`encode_document`](Self::encode_document) into `out` (length `output_dim`, overwritten).
    pub fn encode_document_into(&self, tokens: TokenMatrix<'_>, out: &mut [f32]) -> Result<()> {
        self.check(&tokens, out.len(), 1)?;
        self.encode_with(tokens, EncodingType::Average, out, &mut Scratch::default())
    }

    /// Document FDEs of `docs`, in parallel on the current rayon pool, into `out` (length
    /// `docs.len() * output_dim`, document i at `i * output_dim`). Every input is checked before any work.
    pub fn encode_documents_into(&self, docs: &[TokenMatrix<'_>], out: &mut [f32]) -> Result<()> {
        let od = self.config.output_dim();
        for doc in docs {
            self.check(doc, out.len(), docs.len())?;
        }
        if docs.is_empty() {
            return self.check_out(out.len(), 0);
        }
        out.par_chunks_mut(od)
            .zip(docs.par_iter())
            .with_min_len(4)
            .try_for_each_init(Scratch::default, |scratch, (o, doc)| {
                self.encode_with(*doc, EncodingType::Average, o, scratch)
            })
    }

    fn check(&self, tokens: &TokenMatrix<'_>, out_len: usize, count: usize) -> Result<()> {
        if tokens.dim() != self.config.dimension {
            return Err(IndexError::DimensionMismatch {
                expected: self.config.dimension,
                got: tokens.dim(),
            });
        }
        self.check_out(out_len, count)
    }

    fn check_out(&self, out_len: usize, count: usize) -> Result<()> {
        let want = self.config.output_dim().checked_mul(count);
        if want != Some(out_len) {
            return Err(IndexError::param(
                "out",
                format!(
                    "buffer of {out_len} floats, expected {count} x {}",
                    self.config.output_dim()
                ),
            ));
        }
        Ok(())
    }

    /// Encodes validated `tokens` into `out` (of the right length).
    fn encode_with(&self, tokens: TokenMatrix<'_>, enc: EncodingType, out: &mut [f32], s: &mut Scratch) -> Result<()> {
        if enc == EncodingType::Sum && self.config.fill_empty_partitions {
            return Err(IndexError::InvalidConfig(
                "FDE: fill_empty_partitions is a document-only option (the reference rejects it for queries)".into(),
            ));
        }
        self.partitions(tokens, s);
        out.fill(0.0);
        match &self.count_sketch {
            None => self.blocks(tokens, enc, out, s),
            Some(map) => {
                let mut full = std::mem::take(&mut s.full);
                full.clear();
                full.resize(self.config.full_dim(), 0.0);
                self.blocks(tokens, enc, &mut full, s);
                for (&x, &(j, sign)) in full.iter().zip(map) {
                    if x != 0.0 {
                        out[j as usize] += sign * x;
                    }
                }
                s.full = full;
            }
        }
        Ok(())
    }

    /// Fills `s.parts` with every token's partition in every repetition.
    fn partitions(&self, tokens: TokenMatrix<'_>, s: &mut Scratch) {
        let (n, d) = (tokens.len(), self.config.dimension);
        let (reps, k) = (
            self.config.num_repetitions,
            self.config.num_simhash_projections as usize,
        );
        s.parts.clear();
        s.parts.resize(n * reps, 0);
        if k == 0 {
            return;
        }
        let cols = reps * k;
        s.panel.resize(d * TT, [0.0; 4]);
        for (tile_idx, tile_tokens) in tokens.as_slice().chunks(TOKENS * d).enumerate() {
            let t0 = tile_idx * TOKENS;
            for (i, lanes) in s.panel.chunks_exact_mut(TT).enumerate() {
                for (lane, x) in lanes.iter_mut().flatten().enumerate() {
                    *x = tile_tokens.get(lane * d + i).copied().unwrap_or(0.0);
                }
            }
            for (tile, g) in self.simhash.chunks_exact(d * TC).enumerate() {
                let acc = sketch_tile(&s.panel, g);
                for (c, values) in acc.iter().enumerate().take(cols.saturating_sub(tile * TC)) {
                    let r = (tile * TC + c) / k;
                    for (lane, &v) in values.iter().flatten().enumerate().take(n - t0) {
                        let p = &mut s.parts[(t0 + lane) * reps + r];
                        *p = (*p << 1) + ((v > 0.0) as u32 ^ (*p & 1));
                    }
                }
            }
        }
    }

    /// Writes every repetition's blocks into `fde` (zeroed, length R x repetition_dim), given `s.parts`.
    fn blocks(&self, tokens: TokenMatrix<'_>, enc: EncodingType, fde: &mut [f32], s: &mut Scratch) {
        let (n, d, reps) = (tokens.len(), self.config.dimension, self.config.num_repetitions);
        let (parts, bd) = (self.config.num_partitions(), self.config.block_dim());
        let fill = enc == EncodingType::Average && self.config.fill_empty_partitions;
        if s.slot_of.len() != parts {
            s.slot_of = vec![NONE; parts];
        }
        s.raw.resize(n.min(parts) * d, 0.0);
        for (r, rep_out) in fde.chunks_exact_mut(parts * bd).enumerate() {
            s.slots.clear();
            for (t, x) in tokens.rows().enumerate() {
                let p = s.parts[t * reps + r];
                let slot = &mut s.slot_of[p as usize];
                let row_of = |slot: u32| slot as usize * d..(slot as usize + 1) * d;
                if *slot == NONE {
                    *slot = s.slots.len() as u32;
                    s.slots.push(Slot {
                        partition: p,
                        count: 1,
                        first_token: t,
                    });
                    s.raw[row_of(*slot)].copy_from_slice(x);
                } else {
                    s.slots[*slot as usize].count += 1;
                    for (a, b) in s.raw[row_of(*slot)].iter_mut().zip(x) {
                        *a += b;
                    }
                }
            }
            for (slot, raw) in s.slots.iter().zip(s.raw.chunks_exact(d)) {
                let block = &mut rep_out[slot.partition as usize * bd..][..bd];
                let count = (enc == EncodingType::Average).then_some(slot.count as f32);
                self.project(r, raw, block, count);
            }
            if fill && s.slots.len() < parts {
                for (p, block) in rep_out.chunks_exact_mut(bd).enumerate() {
                    if s.slot_of[p] != NONE {
                        continue;
                    }
                    let target = (p ^ (p >> 1)) as u32;
                    let distance = |slot: &&Slot| (slot.partition ^ (slot.partition >> 1) ^ target).count_ones();
                    if let Some(nearest) = s.slots.iter().min_by_key(distance) {
                        self.project(r, tokens.row(nearest.first_token), block, None);
                    }
                }
            }
            for slot in &s.slots {
                s.slot_of[slot.partition as usize] = NONE;
            }
        }
    }

    /// `block = projection_r(src)`, divided by `count` if given.
    fn project(&self, r: usize, src: &[f32], block: &mut [f32], count: Option<f32>) {
        let scale = |v: f32| count.map_or(v, |c| v / c);
        match &self.ams {
            None => block.iter_mut().zip(src).for_each(|(b, &v)| *b = scale(v)),
            Some(ams) => {
                let d = src.len();
                let (rows, signs) = (&ams.rows[r * d..][..d], &ams.signs[r * d..][..d]);
                let starts = &ams.starts[r * (block.len() + 1)..][..block.len() + 1];
                for (b, range) in block.iter_mut().zip(starts.windows(2)) {
                    let (lo, hi) = (range[0] as usize, range[1] as usize);
                    let sum = rows[lo..hi]
                        .iter()
                        .zip(&signs[lo..hi])
                        .fold(0.0f32, |acc, (&i, &sign)| acc + sign * src[i as usize]);
                    *b = scale(sum);
                }
            }
        }
    }
}

/// One register tile of the sketch product: for the [`TOKENS`] tokens of `panel` (d x TT lanes) and the
/// [`TC`] hyperplanes of `g` (d x TC, pre-broadcast), the sequential dot products `sum_i x[i] * g[i]`.
fn sketch_tile(panel: &[[f32; 4]], g: &[[f32; 4]]) -> [[[f32; 4]; TT]; TC] {
    let mut acc = [[[0.0f32; 4]; TT]; TC];
    for (x, g) in panel.chunks_exact(TT).zip(g.chunks_exact(TC)) {
        for (acc_c, g_c) in acc.iter_mut().zip(g) {
            for (acc_v, x_v) in acc_c.iter_mut().zip(x) {
                for l in 0..4 {
                    acc_v[l] += x_v[l] * g_c[l];
                }
            }
        }
    }
    acc
}
