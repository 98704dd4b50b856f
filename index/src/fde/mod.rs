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
//! Random matrices come from the libstdc++ algorithms modelled in [`rng`] (Gaussians column by column), so they
//! are bit-identical to the reference's. Arithmetic differs from the reference's Eigen products only in
//! summation order: a sketch value is the sequential `f32` dot product `sum_i x[i] * g[i]` (a value within an
//! ulp or so of zero could fall on the other side of the `> 0` test than in the reference), and an AMS
//! projection sums the +1 coordinates of a target, then subtracts the sum of its -1 coordinates. Tokens are
//! added to their blocks in token order and averages are the same float divisions, as in the reference. No
//! fused multiply-add is ever used, so the output does not depend on the target CPU features.
//!
//! # Implementation
//! All `R x k_sim` hyperplanes form one `d x (R*k_sim)` matrix. Tokens are transposed into panels of 8 lanes
//! (one lane per token) and multiplied by tiles of 6 hyperplanes whose entries are pre-broadcast to 8 lanes:
//! the inner loop is plain packed loads, multiplies and adds that the compiler vectorises for any SIMD width
//! (2 x 6 accumulators fill the 16 SSE2 registers; an AVX2 build, e.g. `-C target-cpu=x86-64-v3`, runs the same
//! operations on 256-bit registers, with identical results). Hyperplane tiles are the outer loop so that each
//! tile stays in the L1 cache. Sign bits become partition indices (Gray decoding), then for each repetition the
//! AMS projection of 16 tokens at a time is a gather over the same panels (input coordinates stored grouped by
//! target and sign), and each projected token is added to its block.
use rayon::prelude::*;

use crate::tokens::TokenMatrix;
use crate::{IndexError, Result};

mod config;
pub mod rng;
#[cfg(test)]
mod tests;

pub use config::{
    EncodingType, FdeConfig, ProjectionType, MAX_FDE_DIMENSION, MAX_FINAL_PROJECTION_DIMENSION,
    MAX_FLOATS, MAX_PROJECTION_DIMENSION, MAX_REPETITIONS, MAX_SIMHASH_ENTRIES,
    MAX_SIMHASH_PROJECTIONS, MAX_TOKEN_DIMENSION,
};
use rng::{bernoulli_half, uniform_int, Mt19937, NormalF32};

/// Tokens per register tile (the lanes of one accumulator: two SSE registers, one AVX register).
const LANES: usize = 8;
/// Hyperplanes per register tile: 2 x 6 accumulators fill the 16 SSE registers, and a pre-broadcast tile
/// (d x 6 x 32 bytes, 24 KiB for d = 128) stays in the L1 cache.
const TC: usize = 6;
/// Lanes of one token tile or one pre-broadcast hyperplane entry, aligned so that no vector load crosses a
/// cache line.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
struct Lanes([f32; LANES]);
/// Tokens per AMS gather (two tiles).
const WIDE: usize = 2 * LANES;

/// The AMS projections, stored by target and sign: for repetition r, segment `2k` lists the input coordinates
/// with target k and sign +1, segment `2k + 1` those with sign -1 (ascending); segment q of repetition r is
/// `rows[r*d + bounds[r*(2*dp + 1) + q] .. r*d + bounds[r*(2*dp + 1) + q + 1]]`.
struct Ams {
    rows: Vec<u32>,
    bounds: Vec<u32>,
}

/// A MUVERA encoder: the configuration with every random matrix precomputed. Cheap to share (`&self` methods,
/// `Sync`).
pub struct FdeEncoder {
    config: FdeConfig,
    /// All SimHash matrices as one `d x (R*k_sim)` matrix (column `r*k_sim + h` = hyperplane h of repetition r),
    /// cut into column tiles of [`TC`] (zero-padded), each tile `d x TC` row-major, entries pre-broadcast:
    /// `simhash[(tile*d + i)*TC + c] = [G[i][tile*TC + c]; LANES]`.
    simhash: Vec<Lanes>,
    ams: Option<Ams>,
    /// Count-Sketch: per coordinate of the full FDE, (target, sign).
    count_sketch: Option<Vec<(u32, f32)>>,
}

/// Per-thread working memory, grown on demand and reused across documents.
#[derive(Default)]
struct Scratch {
    /// The tokens in tiles of LANES (an even number of tiles), each tile transposed and padded to a power-of-two
    /// number of rows: `panels[tile*stride + i][l]` = coordinate i of token `tile*LANES + l` (zero-padded).
    panels: Vec<Lanes>,
    /// Partition of token `tile*LANES + l` in repetition r at `parts[tile*R + r][l]`.
    parts: Vec<[u32; LANES]>,
    /// One repetition's projections of two tiles of tokens, token-major (2 LANES x d_proj).
    proj: Vec<f32>,
    /// Tokens per partition of one repetition (documents).
    counts: Vec<u32>,
    /// The full FDE, when a final projection follows.
    full: Vec<f32>,
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
        let mut simhash = vec![Lanes::default(); tiles * d * TC];
        for r in 0..reps {
            let (mut rng, mut normal) = (Mt19937::new(seed_of(r)), NormalF32::new());
            for h in 0..k {
                let col = r * k + h;
                let (tile, c) = (col / TC, col % TC);
                for i in 0..d {
                    simhash[(tile * d + i) * TC + c] = Lanes([normal.sample(&mut rng); LANES]);
                }
            }
        }

        let ams = (config.projection_type == ProjectionType::AmsSketch).then(|| {
            let dp = config.projection_dimension;
            let mut ams = Ams {
                rows: Vec::with_capacity(reps * d),
                bounds: Vec::with_capacity(reps * (2 * dp + 1)),
            };
            let mut segments = Vec::with_capacity(d);
            for r in 0..reps {
                let mut rng = Mt19937::new(seed_of(r));
                segments.clear();
                for i in 0..d {
                    let j = uniform_int(&mut rng, 0, dp as u64 - 1) as usize;
                    let negative = !bernoulli_half(&mut rng);
                    segments.push((2 * j + negative as usize, i as u32));
                }
                segments.sort_unstable();
                let mut next = 0;
                for q in 0..=2 * dp {
                    while next < d && segments[next].0 < q {
                        next += 1;
                    }
                    ams.bounds.push(next as u32);
                }
                ams.rows.extend(segments.iter().map(|&(_, i)| i));
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
    fn encode_with(
        &self,
        tokens: TokenMatrix<'_>,
        enc: EncodingType,
        out: &mut [f32],
        s: &mut Scratch,
    ) -> Result<()> {
        if enc == EncodingType::Sum && self.config.fill_empty_partitions {
            return Err(IndexError::InvalidConfig(
                "FDE: fill_empty_partitions is a document-only option (the reference rejects it for queries)".into(),
            ));
        }
        out.fill(0.0);
        match &self.count_sketch {
            None => self.encode_full(tokens, enc, out, s),
            Some(map) => {
                let mut full = std::mem::take(&mut s.full);
                full.clear();
                full.resize(self.config.full_dim(), 0.0);
                self.encode_full(tokens, enc, &mut full, s);
                // Count-Sketch in coordinate order, as the reference; zeros (empty blocks) change nothing.
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

    /// The FDE before the final projection, into `fde` (zeroed, length R x repetition_dim).
    fn encode_full(
        &self,
        tokens: TokenMatrix<'_>,
        enc: EncodingType,
        fde: &mut [f32],
        s: &mut Scratch,
    ) {
        let (n, d, reps) = (
            tokens.len(),
            self.config.dimension,
            self.config.num_repetitions,
        );
        let (rep_dim, bd) = (self.config.repetition_dim(), self.config.block_dim());
        let (tiles, stride) = (n.div_ceil(LANES), d.next_power_of_two());
        s.parts.clear();
        s.parts.resize(tiles * reps, [0; LANES]);
        if self.config.num_simhash_projections > 0 || self.ams.is_some() {
            s.panels
                .resize(tiles.next_multiple_of(2) * stride, Lanes::default());
            for (rows, panel) in tokens
                .as_slice()
                .chunks(LANES * d)
                .zip(s.panels.chunks_exact_mut(stride))
            {
                transpose(rows, d, &mut panel[..d]);
            }
            let mut args = SketchArgs {
                enc: self,
                panels: &s.panels[..tiles * stride],
                stride,
                parts: &mut s.parts,
            };
            #[cfg(target_arch = "x86_64")]
            crate::sys::multiversion::call_avx2(sketch_avx2, sketch_portable, &mut args);
            #[cfg(not(target_arch = "x86_64"))]
            sketch_portable(&mut args);
        }
        // Each projected token added to its block, two tiles at a time (AMS: a wider gather per index).
        s.proj.resize(WIDE * bd, 0.0);
        for (pair, rows) in tokens.as_slice().chunks(WIDE * d).enumerate() {
            for (r, rep) in fde.chunks_exact_mut(rep_dim).enumerate() {
                let part =
                    |t: usize| s.parts[(2 * pair + t / LANES) * reps + r][t % LANES] as usize;
                let Some(ams) = &self.ams else {
                    for (t, x) in rows.chunks_exact(d).enumerate() {
                        rep[part(t) * d..][..d]
                            .iter_mut()
                            .zip(x)
                            .for_each(|(b, x)| *b += x);
                    }
                    continue;
                };
                let (ams_rows, bounds) = ams.repetition(r, d, bd);
                let (lo, hi) = s.panels[2 * pair * stride..].split_at(stride);
                ams_gather(ams_rows, bounds, [lo, &hi[..stride]], &mut s.proj);
                for (t, proj) in s.proj.chunks_exact(bd).enumerate().take(rows.len() / d) {
                    rep[part(t) * bd..][..bd]
                        .iter_mut()
                        .zip(proj)
                        .for_each(|(b, v)| *b += v);
                }
            }
        }
        if enc == EncodingType::Average {
            self.average(tokens, fde, s);
        }
    }

    /// Documents: every non-empty block divided by its token count; with `fill_empty_partitions`, every empty
    /// block set to the projection of the first token nearest to the partition in Hamming distance.
    fn average(&self, tokens: TokenMatrix<'_>, fde: &mut [f32], s: &mut Scratch) {
        let (n, reps, d, bd) = (
            tokens.len(),
            self.config.num_repetitions,
            self.config.dimension,
            self.config.block_dim(),
        );
        let fill = self.config.fill_empty_partitions && self.config.num_simhash_projections > 0;
        for (r, rep) in fde
            .chunks_exact_mut(self.config.repetition_dim())
            .enumerate()
        {
            let part_of = |t: usize| s.parts[t / LANES * reps + r][t % LANES];
            s.counts.clear();
            s.counts.resize(self.config.num_partitions(), 0);
            for t in 0..n {
                s.counts[part_of(t) as usize] += 1;
            }
            for (p, (block, &count)) in rep.chunks_exact_mut(bd).zip(&s.counts).enumerate() {
                if count > 0 {
                    block.iter_mut().for_each(|v| *v /= count as f32);
                } else if fill {
                    let target = (p ^ (p >> 1)) as u32;
                    let distance =
                        |&t: &usize| (part_of(t) ^ (part_of(t) >> 1) ^ target).count_ones();
                    let Some(nearest) = (0..n).min_by_key(distance) else {
                        continue;
                    };
                    let x = tokens.row(nearest);
                    match &self.ams {
                        None => block.copy_from_slice(x),
                        Some(ams) => {
                            let (rows, bounds) = ams.repetition(r, d, bd);
                            ams_project(rows, bounds, x, block);
                        }
                    }
                }
            }
        }
    }

    /// Partition indices of every token from the token panels (tiles of `stride` rows): `parts[tile*R + r][l]`.
    /// Sign bits are gathered with hyperplane 0 most significant, then decoded from the reference's Gray code.
    /// Hyperplane tiles form the outer loop, so that each (pre-broadcast) tile stays in the L1 cache while the
    /// panels stream by.
    #[inline(always)]
    fn sketch(&self, panels: &[Lanes], stride: usize, parts: &mut [[u32; LANES]]) {
        let (d, reps, k) = (
            self.config.dimension,
            self.config.num_repetitions,
            self.config.num_simhash_projections as usize,
        );
        if k == 0 {
            return;
        }
        for (tile, g) in self.simhash.chunks_exact(d * TC).enumerate() {
            for (panel, bits) in panels
                .chunks_exact(stride)
                .zip(parts.chunks_exact_mut(reps))
            {
                let acc = sketch_tile(&panel[..d], g);
                for (c, values) in acc.iter().enumerate().take(reps * k - tile * TC) {
                    for (b, &v) in bits[(tile * TC + c) / k].iter_mut().zip(&values.0) {
                        *b = (*b << 1) | (v > 0.0) as u32;
                    }
                }
            }
        }
        // The reference appends each bit as `(idx << 1) + (bit ^ (idx & 1))`: idx is the prefix XOR of the bits.
        for b in parts.iter_mut().flatten() {
            for shift in [1, 2, 4, 8, 16] {
                *b ^= *b >> shift;
            }
        }
    }
}

impl Ams {
    /// Rows and segment bounds of repetition r.
    fn repetition(&self, r: usize, d: usize, dp: usize) -> (&[u32], &[u32]) {
        (
            &self.rows[r * d..][..d],
            &self.bounds[r * (2 * dp + 1)..][..2 * dp + 1],
        )
    }
}

/// One repetition's AMS projection of one token `x` into `block`: the scalar twin of [`ams_gather`] (same
/// operations in the same order).
fn ams_project(rows: &[u32], bounds: &[u32], x: &[f32], block: &mut [f32]) {
    let sum = |q: usize| {
        rows[bounds[q] as usize..bounds[q + 1] as usize]
            .iter()
            .fold(0.0, |acc, &i| acc + x[i as usize])
    };
    for (k, b) in block.iter_mut().enumerate() {
        *b = sum(2 * k) - sum(2 * k + 1);
    }
}

/// One repetition's AMS projection of the 2 x LANES tokens of two panels (`stride` rows each, a power of two),
/// token-major into `proj` (WIDE x d_proj): for each target k, the +1 coordinates summed minus the -1 ones.
fn ams_gather(rows: &[u32], bounds: &[u32], panels: [&[Lanes]; 2], proj: &mut [f32]) {
    let dp = proj.len() / WIDE;
    let mask = panels[0].len() - 1;
    let (lo, hi) = (&panels[0][..=mask], &panels[1][..=mask]);
    let sum = |q: usize| {
        let mut acc = [0.0f32; WIDE];
        for &i in &rows[bounds[q] as usize..bounds[q + 1] as usize] {
            let (a, b) = (&lo[i as usize & mask], &hi[i as usize & mask]);
            for l in 0..LANES {
                acc[l] += a.0[l];
                acc[LANES + l] += b.0[l];
            }
        }
        acc
    };
    for k in 0..dp {
        let (pos, neg) = (sum(2 * k), sum(2 * k + 1));
        let diff: [f32; WIDE] = std::array::from_fn(|t| pos[t] - neg[t]);
        for (row, v) in proj.chunks_exact_mut(dp).zip(diff) {
            row[k] = v;
        }
    }
}

/// Arguments of [`FdeEncoder::sketch`], bundled so that both compiled versions share one signature.
struct SketchArgs<'a> {
    enc: &'a FdeEncoder,
    panels: &'a [Lanes],
    stride: usize,
    parts: &'a mut [[u32; LANES]],
}

/// The sketch product with the baseline instruction set.
fn sketch_portable(a: &mut SketchArgs<'_>) {
    a.enc.sketch(a.panels, a.stride, a.parts);
}

/// The same code compiled with AVX2 (256-bit lanes; no FMA, so the sums are bit-identical): about 1.5x faster.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sketch_avx2(a: &mut SketchArgs<'_>) {
    a.enc.sketch(a.panels, a.stride, a.parts);
}

/// `panel[i][l] = rows[l][i]` for the (up to LANES) rows of length d in `rows`; missing rows give zero lanes.
fn transpose(rows: &[f32], d: usize, panel: &mut [Lanes]) {
    let mut rows = rows.chunks_exact(d);
    for l in 0..LANES {
        match rows.next() {
            Some(row) => panel.iter_mut().zip(row).for_each(|(x, &v)| x.0[l] = v),
            None => panel.iter_mut().for_each(|x| x.0[l] = 0.0),
        }
    }
}

/// One register tile of the sketch product: for the [`LANES`] tokens of `panel` (d x LANES) and the [`TC`]
/// hyperplanes of `g` (d x TC, pre-broadcast), the sequential dot products `sum_i x[i] * g[i]`.
#[inline(always)]
fn sketch_tile(panel: &[Lanes], g: &[Lanes]) -> [Lanes; TC] {
    let mut acc = [Lanes::default(); TC];
    for (x, g) in panel.iter().zip(g.chunks_exact(TC)) {
        for (acc_c, g_c) in acc.iter_mut().zip(g) {
            for l in 0..LANES {
                acc_c.0[l] += x.0[l] * g_c.0[l];
            }
        }
    }
    acc
}

#[cfg(all(test, target_arch = "x86_64"))]
mod multiversion_tests {
    use super::*;

    /// The AVX2-compiled sketch gives bit-identical partitions to the baseline build of the same code.
    #[test]
    fn avx2_sketch_equals_portable_sketch() {
        if !crate::sys::multiversion::has_avx2() {
            return;
        }
        let enc = FdeEncoder::new(FdeConfig::paper_default(128)).unwrap();
        let n: usize = 37;
        let rows: Vec<f32> = (0..n * 128)
            .map(|i| (((i * 7919) % 1013) as f32 / 506.0 - 1.0) * 1e-3)
            .collect();
        let (tiles, stride) = (n.div_ceil(LANES), 128usize.next_power_of_two());
        let mut panels = vec![Lanes::default(); tiles * stride];
        for (r, panel) in rows
            .chunks(LANES * 128)
            .zip(panels.chunks_exact_mut(stride))
        {
            transpose(r, 128, &mut panel[..128]);
        }
        let mut a = vec![[0u32; LANES]; tiles * 20];
        let mut b = a.clone();
        sketch_portable(&mut SketchArgs {
            enc: &enc,
            panels: &panels,
            stride,
            parts: &mut a,
        });
        crate::sys::multiversion::call_avx2(
            sketch_avx2,
            sketch_portable,
            &mut SketchArgs {
                enc: &enc,
                panels: &panels,
                stride,
                parts: &mut b,
            },
        );
        assert_eq!(a, b);
    }
}
