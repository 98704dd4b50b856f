//! Exact Chamfer (MaxSim) and dot-product kernels.
//!
//! `Chamfer(Q, D) = sum over query tokens q of max over document tokens p of <q, p>`, with queries in f32 and
//! documents stored as f16, accumulated in f32.
//!
//! Document layout: `n` tokens of dimension `d` are stored as `ceil(n / 16)` panels of [`PANEL`] tokens, each
//! panel k-major: `panel[k * 16 + t]` = coordinate k of token `16 * panel_index + t`. The last partial panel is
//! padded with copies of the document's last token, which never changes a max, so the kernels need no masks.
//! Queries are transposed once by [`PreparedQuery`] (k-major, `qt[k * n_q + j]`).
//!
//! The kernel level (AVX-512F, AVX2+FMA+F16C or portable) is detected once at run time ([`kernel_level`]);
//! every dispatched kernel has a plain scalar twin it is tested against. The SIMD code lives in `crate::sys::simd`;
//! the dot products in `dot.rs`, the tests against the twins in `tests.rs`.
//! Lengths that disagree are a caller bug: they trip a `debug_assert` and, in release builds, the kernels
//! score the common prefix (whole panels for documents).
use half::f16;
use half::slice::HalfFloatSliceExt;
use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
use crate::sys::simd;

/// Tokens per document panel.
pub const PANEL: usize = 16;

/// The instruction set a kernel runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelLevel {
    /// AVX-512F: 16 f32 lanes, one per panel token.
    Avx512,
    /// AVX2 + FMA + F16C: two 8-lane halves per panel.
    Avx2Fma,
    /// Safe Rust written to auto-vectorise.
    Portable,
}

/// A kernel level together with the proof that this CPU supports it.
#[derive(Clone, Copy)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512(simd::Avx512),
    #[cfg(target_arch = "x86_64")]
    Avx2Fma(simd::Avx2Fma),
    Portable,
}

impl Isa {
    /// `level` if this CPU supports it, else portable.
    fn of(level: KernelLevel) -> Isa {
        match level {
            #[cfg(target_arch = "x86_64")]
            KernelLevel::Avx512 => simd::Avx512::detect().map_or(Isa::Portable, Isa::Avx512),
            #[cfg(target_arch = "x86_64")]
            KernelLevel::Avx2Fma => simd::Avx2Fma::detect().map_or(Isa::Portable, Isa::Avx2Fma),
            _ => Isa::Portable,
        }
    }

    fn level(self) -> KernelLevel {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) => KernelLevel::Avx512,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma(_) => KernelLevel::Avx2Fma,
            Isa::Portable => KernelLevel::Portable,
        }
    }
}

/// The best level this CPU supports, detected once.
fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        [KernelLevel::Avx512, KernelLevel::Avx2Fma]
            .into_iter()
            .map(Isa::of)
            .find(|isa| isa.level() != KernelLevel::Portable)
            .unwrap_or(Isa::Portable)
    })
}

/// The level the dispatched kernels ([`chamfer`], `dot_*`) run on.
pub fn kernel_level() -> KernelLevel {
    isa().level()
}

/// Caps every kernel of this process at `max` (AVX-512 > AVX2 + FMA > portable), to measure or check a lower
/// level on a CPU that has a higher one; each kernel still falls back below the cap when the CPU lacks it. The
/// cap can only be set before the first kernel runs: returns false, changing nothing, once the CPU features
/// were detected.
pub fn cap_kernel_level(max: KernelLevel) -> bool {
    crate::sys::cpu::detect_capped(max == KernelLevel::Avx512, max != KernelLevel::Portable)
}

/// Number of f16 values of a packed document: `ceil(n_tokens / 16) * 16 * dim`.
pub fn packed_len(n_tokens: usize, dim: usize) -> usize {
    n_tokens.div_ceil(PANEL) * PANEL * dim
}

/// Appends the panels of `tokens` (row-major, `n x dim`, n >= 1) to `out`: [`packed_len`] values.
pub fn pack_tokens(tokens: &[f32], dim: usize, out: &mut Vec<f16>) {
    debug_assert!(
        dim > 0 && tokens.len().is_multiple_of(dim) && !tokens.is_empty(),
        "bad token matrix"
    );
    let n = tokens.len().checked_div(dim).unwrap_or(0);
    out.reserve(packed_len(n, dim));
    // One panel at a time: its tokens converted in one vectorised call, then transposed in L1.
    let mut halves = vec![f16::ZERO; PANEL * dim];
    for p in 0..n.div_ceil(PANEL) {
        let rows = PANEL.min(n - p * PANEL);
        halves[..rows * dim]
            .convert_from_f32_slice(&tokens[p * PANEL * dim..(p * PANEL + rows) * dim]);
        push_panel(&halves[..rows * dim], dim, out);
    }
}

/// [`pack_tokens`] for tokens that are f16 already (a replayed log record): the same panels, with no
/// conversion.
pub fn pack_tokens_f16(tokens: &[f16], dim: usize, out: &mut Vec<f16>) {
    debug_assert!(
        dim > 0 && tokens.len().is_multiple_of(dim) && !tokens.is_empty(),
        "bad token matrix"
    );
    let n = tokens.len().checked_div(dim).unwrap_or(0);
    out.reserve(packed_len(n, dim));
    for p in 0..n.div_ceil(PANEL) {
        let rows = PANEL.min(n - p * PANEL);
        push_panel(&tokens[p * PANEL * dim..(p * PANEL + rows) * dim], dim, out);
    }
}

/// Appends one panel made of `rows` (1..=16 row-major tokens): transposed, tokens past the end copies of the
/// last one.
fn push_panel(rows: &[f16], dim: usize, out: &mut Vec<f16>) {
    let n = rows.len() / dim;
    let base = out.len();
    out.resize(base + PANEL * dim, f16::ZERO);
    let panel = &mut out[base..];
    for t in 0..PANEL {
        let row = &rows[t.min(n - 1) * dim..][..dim];
        for (k, &v) in row.iter().enumerate() {
            panel[k * PANEL + t] = v;
        }
    }
}

/// The row-major `n_tokens x dim` tokens of a packed document (the tokens of whole panels only, if `packed`
/// is too short).
pub fn unpack_tokens(packed: &[f16], n_tokens: usize, dim: usize) -> Vec<f32> {
    let packed = whole_panels(packed, n_tokens, dim);
    let n = n_tokens.min(packed.len().checked_div(dim).unwrap_or(0));
    let mut out = Vec::with_capacity(n * dim);
    for i in 0..n {
        let panel = &packed[i / PANEL * PANEL * dim..];
        out.extend((0..dim).map(|k| panel[k * PANEL + i % PANEL].to_f32()));
    }
    out
}

/// The whole panels of `packed` that belong to a document of `n_tokens` tokens.
fn whole_panels(packed: &[f16], n_tokens: usize, dim: usize) -> &[f16] {
    let want = packed_len(n_tokens, dim);
    debug_assert_eq!(packed.len(), want, "packed document of the wrong length");
    let len = want.min(packed.len());
    &packed[..len - len % (PANEL * dim).max(1)]
}

/// A query prepared once for many documents: its f32 tokens transposed k-major.
#[derive(Clone, Debug)]
pub struct PreparedQuery {
    dim: usize,
    n_tokens: usize,
    /// `qt[k * n_tokens + j]` = coordinate k of token j.
    qt: Vec<f32>,
}

impl PreparedQuery {
    /// Prepares the row-major `n x dim` query `tokens`.
    pub fn new(tokens: &[f32], dim: usize) -> Self {
        debug_assert!(
            dim > 0 && tokens.len().is_multiple_of(dim),
            "bad query matrix"
        );
        let n = tokens.len().checked_div(dim).unwrap_or(0);
        let qt = (0..n * dim)
            .map(|x| tokens[(x % n) * dim + x / n])
            .collect();
        PreparedQuery {
            dim,
            n_tokens: n,
            qt,
        }
    }

    /// Number of query tokens.
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// Dimension of the tokens.
    pub fn dim(&self) -> usize {
        self.dim
    }
}

/// Chamfer score of `q` against a packed document of `n_tokens` tokens, on the best kernel level.
pub fn chamfer(q: &PreparedQuery, packed: &[f16], n_tokens: usize) -> f32 {
    chamfer_on(isa(), q, packed, n_tokens)
}

/// [`chamfer`] on a forced kernel level (portable if this CPU lacks it).
pub fn chamfer_with(level: KernelLevel, q: &PreparedQuery, packed: &[f16], n_tokens: usize) -> f32 {
    chamfer_on(Isa::of(level), q, packed, n_tokens)
}

fn chamfer_on(isa: Isa, q: &PreparedQuery, packed: &[f16], n_tokens: usize) -> f32 {
    let panels = whole_panels(packed, n_tokens, q.dim);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(t) => t.chamfer(&q.qt, q.dim, panels),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma(t) => t.chamfer(&q.qt, q.dim, panels),
        Isa::Portable => chamfer_portable(q, panels),
    }
}

/// Portable Chamfer: blocks of `QB` query tokens against one panel at a time, 16 lanes per panel row
/// (auto-vectorised; `QB` and `KC` were tuned on x86-64's baseline SSE2).
fn chamfer_portable(q: &PreparedQuery, panels: &[f16]) -> f32 {
    const QB: usize = 8;
    const KC: usize = 32;
    let (n_q, dim) = (q.n_tokens, q.dim);
    if n_q == 0 || panels.is_empty() {
        return 0.0;
    }
    let mut buf = [0f32; PANEL * KC];
    let mut total = 0.0;
    for j0 in (0..n_q).step_by(QB) {
        let qb = QB.min(n_q - j0);
        let mut best = [f32::NEG_INFINITY; QB];
        for panel in panels.chunks_exact(PANEL * dim) {
            let mut acc = [[0f32; PANEL]; QB];
            // Widen KC rows at a time (one call, vectorised by `half`), then multiply-add row by row.
            for (c, packed_rows) in panel.chunks(PANEL * KC).enumerate() {
                let rows = &mut buf[..packed_rows.len()];
                packed_rows.convert_to_f32_slice(rows);
                for (i, row) in rows.chunks_exact(PANEL).enumerate() {
                    let k = c * KC + i;
                    for (a, &x) in acc.iter_mut().zip(&q.qt[k * n_q + j0..][..qb]) {
                        for t in 0..PANEL {
                            a[t] += x * row[t];
                        }
                    }
                }
            }
            for (b, a) in best.iter_mut().zip(&acc[..qb]) {
                *b = a.iter().fold(*b, |m, &v| m.max(v));
            }
        }
        total += best[..qb].iter().sum::<f32>();
    }
    total
}

/// Reference Chamfer: a plain triple loop over query tokens, document tokens and coordinates.
pub fn chamfer_scalar(q: &PreparedQuery, packed: &[f16], n_tokens: usize) -> f32 {
    let dim = q.dim;
    let panels = whole_panels(packed, n_tokens, dim);
    let n_doc = n_tokens.min(panels.len().checked_div(dim).unwrap_or(0));
    if n_doc == 0 || q.n_tokens == 0 {
        return 0.0;
    }
    let mut total = 0.0;
    for j in 0..q.n_tokens {
        let mut best = f32::NEG_INFINITY;
        for i in 0..n_doc {
            let mut s = 0.0;
            for k in 0..dim {
                s += q.qt[k * q.n_tokens + j]
                    * panels[i / PANEL * PANEL * dim + k * PANEL + i % PANEL].to_f32();
            }
            best = best.max(s);
        }
        total += best;
    }
    total
}

/// Nearest-centroid search for a block of tokens: for each of the `best.len()` tokens of the k-major `qt`
/// (`qt[k * n + j]`), the largest inner product with the row-major f32 centroids `lo..hi` of `cents` and the
/// smallest index reaching it, written to `best[j]` when strictly larger than the score it holds. Callers start
/// from `(0, -inf)` and may fold several ranges (a two-level codebook's probed clusters). Returns false, leaving
/// `best` alone, when the sizes are inconsistent or this CPU has no SIMD kernel (callers then use a matrix
/// product).
pub fn nearest_centroids(
    qt: &[f32],
    dim: usize,
    cents: &[f32],
    lo: usize,
    hi: usize,
    best: &mut [(u32, f32)],
) -> bool {
    nearest_on(isa(), qt, dim, cents, lo, hi, best)
}

/// [`nearest_centroids`] on `level` (portable if this CPU lacks it), for tests and benchmarks.
pub fn nearest_centroids_with(
    level: KernelLevel,
    qt: &[f32],
    dim: usize,
    cents: &[f32],
    lo: usize,
    hi: usize,
    best: &mut [(u32, f32)],
) -> bool {
    nearest_on(Isa::of(level), qt, dim, cents, lo, hi, best)
}

fn nearest_on(
    isa: Isa,
    qt: &[f32],
    dim: usize,
    cents: &[f32],
    lo: usize,
    hi: usize,
    best: &mut [(u32, f32)],
) -> bool {
    if !nearest_fits(qt, dim, cents, lo, hi, best.len()) {
        return false;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(t) => {
            t.nearest(qt, dim, cents, lo, hi, best);
            true
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma(t) => {
            t.nearest(qt, dim, cents, lo, hi, best);
            true
        }
        Isa::Portable => false,
    }
}

fn nearest_fits(qt: &[f32], dim: usize, cents: &[f32], lo: usize, hi: usize, n: usize) -> bool {
    dim > 0
        && lo < hi
        && hi <= i32::MAX as usize
        && n.checked_mul(dim).is_some_and(|v| qt.len() >= v)
        && hi.checked_mul(dim).is_some_and(|v| cents.len() >= v)
}

/// Scalar twin of [`nearest_centroids`]: the same fused multiply-adds in the same order, so the same bits.
pub fn nearest_centroids_scalar(
    qt: &[f32],
    dim: usize,
    cents: &[f32],
    lo: usize,
    hi: usize,
    best: &mut [(u32, f32)],
) -> bool {
    let n = best.len();
    if !nearest_fits(qt, dim, cents, lo, hi, n) {
        return false;
    }
    for (j, b) in best.iter_mut().enumerate() {
        for c in lo..hi {
            let s = (0..dim).fold(0f32, |acc, k| {
                qt[k * n + j].mul_add(cents[c * dim + k], acc)
            });
            if s > b.1 {
                *b = (c as u32, s);
            }
        }
    }
    true
}

mod dot;
pub use dot::*;

#[cfg(test)]
mod tests;
