//! AVX-512F kernels: 16 f32 lanes, one lane per token of a document panel.
use super::{Lanes, PANEL};
use half::f16;
use std::arch::x86_64::*;

/// Most query tokens scored together, one zmm accumulator each (of the 32 registers; the panel row takes one
/// more, the query coordinates are FMA memory operands with embedded broadcast). One panel at a time: reusing
/// a broadcast register over two panels (more chains per broadcast) measured 10-30% slower on Zen 5.
const QMAX: usize = 24;

/// Loads 16 f16 and widens them to f32.
/// # Safety
/// AVX-512F is available and `p` is valid for reading 16 f16.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn load_ph(p: *const f16) -> __m512 {
    // SAFETY: the caller guarantees 32 readable bytes at p (unaligned load).
    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p.cast()) })
}

/// Chamfer score: the sum over the `n_q` query tokens of their max dot product with the document's tokens.
/// # Safety
/// AVX-512F is available, `qt` is valid for reading `n_q * dim` f32 (k-major) and `doc` for reading
/// `n_panels * 16 * dim` f16 (panels).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn chamfer(
    qt: *const f32,
    n_q: usize,
    doc: *const f16,
    n_panels: usize,
    dim: usize,
) -> f32 {
    let mut total = 0.0;
    for (j0, qb) in super::blocks(n_q, QMAX) {
        // SAFETY: j0 + qb <= n_q, so the block's reads qt[k * n_q + j0 + j] (k < dim, j < qb) stay within the
        // caller's n_q * dim values; the document reads are the caller's.
        total += unsafe {
            by_block_size!(qb, block(qt.add(j0), n_q, doc, n_panels, dim);
                1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24)
        };
    }
    total
}

/// Sum of the max scores of QB query tokens (`q[k * stride + j]`) over all the document's panels.
/// Each panel row (coordinate k of 16 tokens) is widened once and multiplied by the QB query coordinates,
/// broadcast from memory: QB independent FMA chains, one zmm accumulator per query token.
/// # Safety
/// As [`chamfer`], with `q[k * stride + j]` readable for k < dim, j < QB.
#[target_feature(enable = "avx512f")]
unsafe fn block<const QB: usize>(
    q: *const f32,
    stride: usize,
    doc: *const f16,
    n_panels: usize,
    dim: usize,
) -> f32 {
    let mut best = [_mm512_set1_ps(f32::NEG_INFINITY); QB];
    for p in 0..n_panels {
        // SAFETY: panel p < n_panels starts at p * 16 * dim.
        let panel = unsafe { doc.add(p * PANEL * dim) };
        let mut acc = [_mm512_setzero_ps(); QB];
        for k in 0..dim {
            // SAFETY: k < dim: row k is within the panel.
            let row = unsafe { load_ph(panel.add(k * PANEL)) };
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: k < dim, j < QB: within the query block.
                *a = _mm512_fmadd_ps(_mm512_set1_ps(unsafe { *q.add(k * stride + j) }), row, *a);
            }
        }
        for (b, a) in best.iter_mut().zip(acc) {
            *b = _mm512_max_ps(*b, a);
        }
    }
    best.iter().map(|&m| _mm512_reduce_max_ps(m)).sum()
}

/// `sum a[i] * b[i]` for i < n, n a multiple of 16.
/// # Safety
/// AVX-512F is available and `a`, `b` are valid for reading n elements.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dot<A: Lanes, B: Lanes>(a: *const A, b: *const B, n: usize) -> f32 {
    debug_assert_eq!(n % 16, 0);
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (l, s) in acc.iter_mut().enumerate() {
            // SAFETY: i + 16 * l + 16 <= n.
            *s = unsafe {
                _mm512_fmadd_ps(
                    A::load16(a.add(i + 16 * l)),
                    B::load16(b.add(i + 16 * l)),
                    *s,
                )
            };
        }
        i += 64;
    }
    while i < n {
        // SAFETY: i + 16 <= n since n is a multiple of 16.
        acc[0] = unsafe { _mm512_fmadd_ps(A::load16(a.add(i)), B::load16(b.add(i)), acc[0]) };
        i += 16;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(
        _mm512_add_ps(acc[0], acc[1]),
        _mm512_add_ps(acc[2], acc[3]),
    ))
}

/// For each of the `n_q` k-major tokens `q` (`q[k * n_q + j]`), the largest inner product with the centroids
/// `lo..hi` of `panels` (16-centroid k-major panels) and the smallest centroid index reaching it, folded into
/// `best[j]` when strictly larger than what it holds.
/// # Safety
/// AVX-512F is available; `q` is valid for reading `n_q * dim` f32, `panels` for reading
/// `hi.div_ceil(16) * 16 * dim` f16 and `best` for reading and writing `n_q` pairs; `lo <= hi`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn nearest(
    q: *const f32,
    n_q: usize,
    panels: *const f16,
    dim: usize,
    lo: usize,
    hi: usize,
    best: *mut (u32, f32),
) {
    for (j0, qb) in super::blocks(n_q, QMAX) {
        // SAFETY: j0 + qb <= n_q, so the block reads q[k * n_q + j0 + j] and best[j0 + j] for j < qb stay in
        // the caller's ranges; the panel reads are the caller's.
        unsafe {
            by_block_size!(qb, nearest_block(q.add(j0), n_q, panels, dim, lo, hi, best.add(j0));
                1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24)
        };
    }
}

/// [`nearest`] for one block of QB tokens: QB FMA chains per panel row (as in [`block`]), then per token a
/// masked compare keeps, in each lane, the best score and the panel it came from.
/// # Safety
/// As [`nearest`], with `q[k * stride + j]` readable for k < dim, j < QB, and `best` for QB pairs.
#[target_feature(enable = "avx512f")]
unsafe fn nearest_block<const QB: usize>(
    q: *const f32,
    stride: usize,
    panels: *const f16,
    dim: usize,
    lo: usize,
    hi: usize,
    best: *mut (u32, f32),
) {
    let mut top = [_mm512_set1_ps(f32::NEG_INFINITY); QB];
    let mut from = [_mm512_setzero_si512(); QB];
    for p in lo / PANEL..hi.div_ceil(PANEL) {
        // SAFETY: p < hi.div_ceil(16), so the panel's 16 * dim values are within the caller's range.
        let panel = unsafe { panels.add(p * PANEL * dim) };
        let mut acc = [_mm512_setzero_ps(); QB];
        for k in 0..dim {
            // SAFETY: k < dim: row k is within the panel.
            let row = unsafe { load_ph(panel.add(k * PANEL)) };
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: k < dim, j < QB: within the token block.
                *a = _mm512_fmadd_ps(_mm512_set1_ps(unsafe { *q.add(k * stride + j) }), row, *a);
            }
        }
        // Lanes of this panel inside lo..hi.
        let first = lo.max(p * PANEL) - p * PANEL;
        let end = hi.min(p * PANEL + PANEL) - p * PANEL;
        let valid = (((1u32 << end) - 1) & !((1u32 << first) - 1)) as __mmask16;
        let panel_id = _mm512_set1_epi32(p as i32);
        for ((t, f), a) in top.iter_mut().zip(from.iter_mut()).zip(acc) {
            let gt = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(valid, a, *t);
            *t = _mm512_mask_mov_ps(*t, gt, a);
            *f = _mm512_mask_mov_epi32(*f, gt, panel_id);
        }
    }
    let (mut vals, mut ids) = ([0f32; PANEL], [0i32; PANEL]);
    for (j, (t, f)) in top.iter().zip(&from).enumerate() {
        // SAFETY: vals and ids hold 16 lanes each.
        unsafe {
            _mm512_storeu_ps(vals.as_mut_ptr(), *t);
            _mm512_storeu_si512(ids.as_mut_ptr().cast(), *f);
        }
        let mut win: Option<(u32, f32)> = None;
        for lane in 0..PANEL {
            let c = ids[lane] as u32 * PANEL as u32 + lane as u32;
            let v = vals[lane];
            if v > f32::NEG_INFINITY && win.is_none_or(|(wc, wv)| v > wv || (v == wv && c < wc)) {
                win = Some((c, v));
            }
        }
        // SAFETY: j < QB: within the caller's best pairs.
        let b = unsafe { &mut *best.add(j) };
        if let Some((c, v)) = win.filter(|&(_, v)| v > b.1) {
            *b = (c, v);
        }
    }
}
