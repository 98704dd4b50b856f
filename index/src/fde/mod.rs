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

/// Tokens per register tile (the lanes of one accumulator: two SSE registers, one AVX register).
const LANES: usize = 8;
/// Hyperplanes per register tile.
const TC: usize = 6;
/// Lanes of one token tile or one pre-broadcast hyperplane entry.
type Lanes = [f32; LANES];
/// "No slot" marker of [`Scratch::slot_of`].
const NONE: u32 = u32::MAX;

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
    /// One tile of tokens, transposed: `panel[i][l]` = coordinate i of token l of the tile.
    panel: Vec<Lanes>,
    /// A row of d zeros (padding of the last tile).
    zeros: Vec<f32>,
    /// Partition index of token t in repetition r at `t*R + r`.
    parts: Vec<u32>,
    /// Token sums of the occupied partitions of the current repetition, one row of d per slot.
    raw: Vec<f32>,
    /// Slot of each partition in the current repetition ([`NONE`] if empty); all [`NONE`] between repetitions.
    slot_of: Vec<u32>,
    /// Occupied partitions of the current repetition, in order of their first token.
    slots: Vec<Slot>,
    /// Slot of each token in the current repetition.
    token_slot: Vec<u32>,
    /// Tokens grouped by slot (ascending within a slot).
    order: Vec<u32>,
    /// The full FDE, when a final projection follows.
    full: Vec<f32>,
}

struct Slot {
    partition: u32,
    count: usize,
    first_token: usize,
    /// End of the slot's tokens in [`Scratch::order`].
    end: usize,
}

impl FdeEncoder {
    /// Validates `config` and draws its matrices.
    pub fn new(config: FdeConfig) -> Result<Self> {
        config.validate()?;
        let (d, reps, k) = (config.dimension, config.num_repetitions, config.num_simhash_projections as usize);
        let seed_of = |r: usize| config.seed.wrapping_add(r as u64) as u32;

        let cols = reps * k;
        let tiles = cols.div_ceil(TC);
        let mut simhash = vec![[0.0f32; LANES]; tiles * d * TC];
        for r in 0..reps {
            let (mut rng, mut normal) = (Mt19937::new(seed_of(r)), NormalF32::new());
            for h in 0..k {
                let col = r * k + h;
                let (tile, c) = (col / TC, col % TC);
                for i in 0..d {
                    simhash[(tile * d + i) * TC + c] = [normal.sample(&mut rng); LANES];
                }
            }
        }

        let ams = (config.projection_type == ProjectionType::AmsSketch).then(|| {
            let dp = config.projection_dimension;
            let mut ams = Ams { rows: Vec::with_capacity(reps * d), bounds: Vec::with_capacity(reps * (2 * dp + 1)) };
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

        Ok(FdeEncoder { config, simhash, ams, count_sketch })
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
            return Err(IndexError::DimensionMismatch { expected: self.config.dimension, got: tokens.dim() });
        }
        self.check_out(out_len, count)
    }

    fn check_out(&self, out_len: usize, count: usize) -> Result<()> {
        let want = self.config.output_dim().checked_mul(count);
        if want != Some(out_len) {
            return Err(IndexError::param(
                "out",
                format!("buffer of {out_len} floats, expected {count} x {}", self.config.output_dim()),
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
        s.panel.resize(self.config.dimension, [0.0; LANES]);
        s.zeros.resize(self.config.dimension, 0.0);
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
        let (reps, k) = (self.config.num_repetitions, self.config.num_simhash_projections as usize);
        s.parts.clear();
        s.parts.resize(n * reps, 0);
        if k == 0 {
            return;
        }
        let cols = reps * k;
        for (tile_idx, tile_tokens) in tokens.as_slice().chunks(LANES * d).enumerate() {
            let t0 = tile_idx * LANES;
            transpose(tile_tokens, d, &s.zeros, &mut s.panel);
            for (tile, g) in self.simhash.chunks_exact(d * TC).enumerate() {
                let acc = sketch_tile(&s.panel, g);
                for (c, values) in acc.iter().enumerate().take(cols.saturating_sub(tile * TC)) {
                    let r = (tile * TC + c) / k;
                    for (lane, &v) in values.iter().enumerate().take(n - t0) {
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
            // Slots in order of first token, then the tokens grouped by slot (a stable counting sort).
            s.slots.clear();
            s.token_slot.clear();
            for t in 0..n {
                let p = s.parts[t * reps + r];
                let slot = &mut s.slot_of[p as usize];
                if *slot == NONE {
                    *slot = s.slots.len() as u32;
                    s.slots.push(Slot { partition: p, count: 0, first_token: t, end: 0 });
                }
                s.slots[*slot as usize].count += 1;
                s.token_slot.push(*slot);
            }
            let mut end = 0;
            for slot in s.slots.iter_mut() {
                slot.end = end;
                end += slot.count;
            }
            s.order.resize(n, 0);
            for (t, &slot) in s.token_slot.iter().enumerate() {
                let slot = &mut s.slots[slot as usize];
                s.order[slot.end] = t as u32;
                slot.end += 1;
            }
            for (slot, raw) in s.slots.iter().zip(s.raw.chunks_exact_mut(d)) {
                sum_rows(tokens, &s.order[slot.end - slot.count..slot.end], raw);
            }
            match &self.ams {
                None => {
                    for (slot, raw) in s.slots.iter().zip(s.raw.chunks_exact(d)) {
                        rep_out[slot.partition as usize * bd..][..bd].copy_from_slice(raw);
                    }
                }
                Some(ams) => {
                    // LANES occupied partitions at a time: transpose their sums, project all lanes at once.
                    let (rows, bounds) = ams.repetition(r, d, bd);
                    for (group, raws) in s.slots.chunks(LANES).zip(s.raw.chunks(LANES * d)) {
                        transpose(raws, d, &s.zeros, &mut s.panel);
                        ams_project(
                            rows,
                            bounds,
                            |i| s.panel[i],
                            |k, values: Lanes| {
                                for (slot, v) in group.iter().zip(values) {
                                    rep_out[slot.partition as usize * bd + k] = v;
                                }
                            },
                        );
                    }
                }
            }
            if enc == EncodingType::Average {
                for slot in &s.slots {
                    let count = slot.count as f32;
                    rep_out[slot.partition as usize * bd..][..bd].iter_mut().for_each(|v| *v /= count);
                }
            }
            if fill && s.slots.len() < parts {
                for (p, block) in rep_out.chunks_exact_mut(bd).enumerate() {
                    if s.slot_of[p] != NONE {
                        continue;
                    }
                    let target = (p ^ (p >> 1)) as u32;
                    let distance = |slot: &&Slot| (slot.partition ^ (slot.partition >> 1) ^ target).count_ones();
                    if let Some(nearest) = s.slots.iter().min_by_key(distance) {
                        let x = tokens.row(nearest.first_token);
                        match &self.ams {
                            None => block.copy_from_slice(x),
                            Some(ams) => {
                                let (rows, bounds) = ams.repetition(r, d, bd);
                                ams_project(rows, bounds, |i| [x[i]], |k, [v]| block[k] = v);
                            }
                        }
                    }
                }
            }
            for slot in &s.slots {
                s.slot_of[slot.partition as usize] = NONE;
            }
        }
    }
}

impl Ams {
    /// Rows and segment bounds of repetition r.
    fn repetition(&self, r: usize, d: usize, dp: usize) -> (&[u32], &[u32]) {
        (&self.rows[r * d..][..d], &self.bounds[r * (2 * dp + 1)..][..2 * dp + 1])
    }
}

/// Applies one repetition's AMS projection to L vectors at once (`value(i)` = coordinate i of each):
/// `emit(k, sum of the +1 coordinates of target k - sum of its -1 coordinates)` for every target k.
fn ams_project<const L: usize>(
    rows: &[u32],
    bounds: &[u32],
    value: impl Fn(usize) -> [f32; L],
    mut emit: impl FnMut(usize, [f32; L]),
) {
    let sum = |lo: u32, hi: u32| {
        rows[lo as usize..hi as usize].iter().fold([0.0f32; L], |mut acc, &i| {
            let v = value(i as usize);
            for l in 0..L {
                acc[l] += v[l];
            }
            acc
        })
    };
    for (k, seg) in bounds.windows(3).step_by(2).enumerate() {
        let (pos, neg) = (sum(seg[0], seg[1]), sum(seg[1], seg[2]));
        emit(k, std::array::from_fn(|l| pos[l] - neg[l]));
    }
}

/// `panel[i][l] = rows[l][i]` for the (up to LANES) rows of length d in `rows`, zero-padded from `zeros`.
fn transpose(rows: &[f32], d: usize, zeros: &[f32], panel: &mut [Lanes]) {
    let mut it = rows.chunks_exact(d).chain(std::iter::repeat(zeros));
    let rows: [&[f32]; LANES] = std::array::from_fn(|_| it.next().unwrap_or_default());
    for (i, x) in panel.iter_mut().enumerate() {
        *x = std::array::from_fn(|l| rows[l][i]);
    }
}

/// `dst = sum of the token rows ids` (in order), accumulated in registers chunk by chunk.
fn sum_rows(tokens: TokenMatrix<'_>, ids: &[u32], dst: &mut [f32]) {
    const CHUNK: usize = 32;
    let Some((&first, rest)) = ids.split_first() else { return };
    dst.copy_from_slice(tokens.row(first as usize));
    let mut chunks = dst.chunks_exact_mut(CHUNK);
    for (c, chunk) in chunks.by_ref().enumerate() {
        let mut acc = [0.0f32; CHUNK];
        acc.copy_from_slice(chunk);
        for &t in rest {
            let x = &tokens.row(t as usize)[c * CHUNK..][..CHUNK];
            for l in 0..CHUNK {
                acc[l] += x[l];
            }
        }
        chunk.copy_from_slice(&acc);
    }
    let tail = chunks.into_remainder();
    let offset = tokens.dim() - tail.len();
    for &t in rest {
        for (a, b) in tail.iter_mut().zip(&tokens.row(t as usize)[offset..]) {
            *a += b;
        }
    }
}

/// One register tile of the sketch product: for the [`LANES`] tokens of `panel` (d x LANES) and the [`TC`]
/// hyperplanes of `g` (d x TC, pre-broadcast), the sequential dot products `sum_i x[i] * g[i]`.
fn sketch_tile(panel: &[Lanes], g: &[Lanes]) -> [Lanes; TC] {
    let mut acc = [[0.0f32; LANES]; TC];
    for (x, g) in panel.iter().zip(g.chunks_exact(TC)) {
        for (acc_c, g_c) in acc.iter_mut().zip(g) {
            for l in 0..LANES {
                acc_c[l] += x[l] * g_c[l];
            }
        }
    }
    acc
}
