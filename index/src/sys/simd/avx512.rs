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

/// Centroids scored together by [`nearest`]: 2 x 12 accumulators, 2 token vectors and a broadcast fill 27 of the
/// 32 zmm registers.
const CMAX: usize = 12;

/// For each of the `n` k-major tokens `q` (`q[k * n + j]`), the largest inner product with the row-major f32
/// centroids `lo..hi` of `cents` and the smallest centroid index reaching it, folded into `best[j]` when strictly
/// larger than what it holds.
///
/// An outer-product micro-kernel: lanes are tokens (32 at a time, two vectors), each step broadcasts one
/// coordinate of 12 centroids, so 24 FMAs take 2 vector loads and 12 broadcasts (the token-broadcast layout of
/// [`chamfer`] needs a load per FMA, and measured at half the FMA rate here).
/// # Safety
/// AVX-512F is available; `q` is valid for reading `n * dim` f32, `cents` for reading `hi * dim` f32 and `best`
/// for reading and writing `n` pairs; `lo <= hi`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn nearest(
    q: *const f32,
    n: usize,
    cents: *const f32,
    dim: usize,
    lo: usize,
    hi: usize,
    best: *mut (u32, f32),
) {
    for j0 in (0..n).step_by(2 * PANEL) {
        let left = n - j0;
        let masks = [lane_mask(left), lane_mask(left.saturating_sub(PANEL))];
        let mut top = [_mm512_set1_ps(f32::NEG_INFINITY); 2];
        let mut from = [_mm512_setzero_si512(); 2];
        let mut c = lo;
        while c < hi {
            let cb = (hi - c).min(CMAX);
            // SAFETY: tokens j0.. (masked to j < n) and centroids c..c + cb <= hi are within the caller's ranges.
            unsafe {
                let q = q.add(j0);
                let cents = cents.add(c * dim);
                if left > PANEL {
                    by_block_size!(cb, nearest_block2(q, n, masks, cents, dim, c, &mut top, &mut from);
                        1 2 3 4 5 6 7 8 9 10 11 12)
                } else {
                    by_block_size!(cb, nearest_block1(q, n, masks[0], cents, dim, c, &mut top[0], &mut from[0]);
                        1 2 3 4 5 6 7 8 9 10 11 12)
                }
            }
            c += cb;
        }
        let (mut vals, mut ids) = ([0f32; PANEL], [0i32; PANEL]);
        for (v, (t, f)) in top.iter().zip(&from).enumerate() {
            // SAFETY: vals and ids hold 16 lanes each.
            unsafe {
                _mm512_storeu_ps(vals.as_mut_ptr(), *t);
                _mm512_storeu_si512(ids.as_mut_ptr().cast(), *f);
            }
            for lane in 0..PANEL.min(left.saturating_sub(v * PANEL)) {
                // SAFETY: j0 + v * 16 + lane < n: within the caller's best pairs.
                let b = unsafe { &mut *best.add(j0 + v * PANEL + lane) };
                if vals[lane] > b.1 {
                    *b = (ids[lane] as u32, vals[lane]);
                }
            }
        }
    }
}

/// The first `n` lanes (all 16 from 16 on).
fn lane_mask(n: usize) -> __mmask16 {
    if n >= PANEL {
        0xFFFF
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// 32 tokens (two vectors, masked) against CB centroids starting at index `c`: per lane, keeps the best score
/// and its centroid in `top` / `from` (strictly larger only, so the smallest index wins a tie).
/// # Safety
/// As [`nearest`]: `q[k * stride + j]` readable for k < dim and the unmasked lanes j, `cents` for CB rows of dim.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn nearest_block2<const CB: usize>(
    q: *const f32,
    stride: usize,
    masks: [__mmask16; 2],
    cents: *const f32,
    dim: usize,
    c: usize,
    top: &mut [__m512; 2],
    from: &mut [__m512i; 2],
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; CB];
    for k in 0..dim {
        // SAFETY: k < dim; masked lanes are not read.
        let t = unsafe {
            [
                _mm512_maskz_loadu_ps(masks[0], q.add(k * stride)),
                _mm512_maskz_loadu_ps(masks[1], q.add(k * stride + PANEL)),
            ]
        };
        for (cb, a) in acc.iter_mut().enumerate() {
            // SAFETY: cb < CB rows, k < dim.
            let b = _mm512_set1_ps(unsafe { *cents.add(cb * dim + k) });
            a[0] = _mm512_fmadd_ps(t[0], b, a[0]);
            a[1] = _mm512_fmadd_ps(t[1], b, a[1]);
        }
    }
    for (cb, a) in acc.iter().enumerate() {
        let id = _mm512_set1_epi32((c + cb) as i32);
        for (v, &s) in a.iter().enumerate() {
            let gt = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(s, top[v]);
            top[v] = _mm512_mask_mov_ps(top[v], gt, s);
            from[v] = _mm512_mask_mov_epi32(from[v], gt, id);
        }
    }
}

/// [`nearest_block2`] for at most 16 tokens (one vector).
/// # Safety
/// As [`nearest_block2`] for one vector.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn nearest_block1<const CB: usize>(
    q: *const f32,
    stride: usize,
    mask: __mmask16,
    cents: *const f32,
    dim: usize,
    c: usize,
    top: &mut __m512,
    from: &mut __m512i,
) {
    let mut acc = [_mm512_setzero_ps(); CB];
    for k in 0..dim {
        // SAFETY: k < dim; masked lanes are not read.
        let t = unsafe { _mm512_maskz_loadu_ps(mask, q.add(k * stride)) };
        for (cb, a) in acc.iter_mut().enumerate() {
            // SAFETY: cb < CB rows, k < dim.
            let b = _mm512_set1_ps(unsafe { *cents.add(cb * dim + k) });
            *a = _mm512_fmadd_ps(t, b, *a);
        }
    }
    for (cb, a) in acc.iter().enumerate() {
        let gt = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(*a, *top);
        *top = _mm512_mask_mov_ps(*top, gt, *a);
        *from = _mm512_mask_mov_epi32(*from, gt, _mm512_set1_epi32((c + cb) as i32));
    }
}
