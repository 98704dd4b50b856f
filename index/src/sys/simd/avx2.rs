//! AVX2+FMA+F16C kernels: 8 f32 lanes, a document panel is processed as two 8-token halves.
use super::{Lanes, PANEL};
use half::f16;
use std::arch::x86_64::*;

/// Query tokens scored together: each keeps 2 ymm accumulators (the two panel halves), so a block of 6 uses
/// 12 of the 16 ymm registers, leaving room for the two converted half rows and a broadcast.
const QMAX: usize = 6;

/// Loads 8 f16 and widens them to f32.
/// # Safety
/// AVX2 and F16C are available and `p` is valid for reading 8 f16.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn load_ph(p: *const f16) -> __m256 {
    // SAFETY: the caller guarantees 16 readable bytes at p (unaligned load).
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
}

/// Chamfer score: the sum over the `n_q` query tokens of their max dot product with the document's tokens.
/// # Safety
/// AVX2, FMA and F16C are available, `qt` is valid for reading `n_q * dim` f32 (k-major) and `doc` for
/// reading `n_panels * 16 * dim` f16 (panels).
#[target_feature(enable = "avx2,fma,f16c")]
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
        total +=
            unsafe { by_block_size!(qb, block(qt.add(j0), n_q, doc, n_panels, dim); 1 2 3 4 5 6) };
    }
    total
}

/// Sum of the max scores of QB query tokens (`q[k * stride + j]`) over all the document's panels.
/// Each panel row is widened once, as two 8-token halves, and multiplied by the QB broadcast query
/// coordinates: 2 * QB independent FMA chains, two ymm accumulators per query token.
/// # Safety
/// As [`chamfer`], with `q[k * stride + j]` readable for k < dim, j < QB.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block<const QB: usize>(
    q: *const f32,
    stride: usize,
    doc: *const f16,
    n_panels: usize,
    dim: usize,
) -> f32 {
    let mut best = [_mm256_set1_ps(f32::NEG_INFINITY); QB];
    for p in 0..n_panels {
        // SAFETY: panel p < n_panels starts at p * 16 * dim.
        let panel = unsafe { doc.add(p * PANEL * dim) };
        let mut acc = [[_mm256_setzero_ps(); 2]; QB];
        for k in 0..dim {
            // SAFETY: k < dim: both 8-token halves of row k are within the panel.
            let rows = unsafe {
                [
                    load_ph(panel.add(k * PANEL)),
                    load_ph(panel.add(k * PANEL + 8)),
                ]
            };
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: k < dim, j < QB: within the query block.
                let x = _mm256_set1_ps(unsafe { *q.add(k * stride + j) });
                a[0] = _mm256_fmadd_ps(x, rows[0], a[0]);
                a[1] = _mm256_fmadd_ps(x, rows[1], a[1]);
            }
        }
        for (b, a) in best.iter_mut().zip(acc) {
            *b = _mm256_max_ps(*b, _mm256_max_ps(a[0], a[1]));
        }
    }
    best.iter().map(|&m| hmax(m)).sum()
}

/// Max of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
}

/// `sum a[i] * b[i]` for i < n, n a multiple of 8.
/// # Safety
/// AVX2, FMA and F16C are available and `a`, `b` are valid for reading n elements.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot<A: Lanes, B: Lanes>(a: *const A, b: *const B, n: usize) -> f32 {
    debug_assert_eq!(n % 8, 0);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (l, s) in acc.iter_mut().enumerate() {
            // SAFETY: i + 8 * l + 8 <= n.
            *s = unsafe {
                _mm256_fmadd_ps(A::load8(a.add(i + 8 * l)), B::load8(b.add(i + 8 * l)), *s)
            };
        }
        i += 32;
    }
    while i < n {
        // SAFETY: i + 8 <= n since n is a multiple of 8.
        acc[0] = unsafe { _mm256_fmadd_ps(A::load8(a.add(i)), B::load8(b.add(i)), acc[0]) };
        i += 8;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let m = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
    let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)))
}

/// Centroids scored together by [`nearest`]: 2 x 6 accumulators, 2 token vectors and a broadcast fill 15 of the
/// 16 ymm registers.
const CMAX: usize = 6;

/// [`super::avx512`]'s `nearest` on 8-lane vectors: for each of the `n` k-major tokens `q` (`q[k * n + j]`), the
/// largest inner product with the row-major f32 centroids `lo..hi` of `cents` and the smallest centroid index
/// reaching it, folded into `best[j]` when strictly larger than what it holds. Lanes are tokens (16 at a time,
/// two vectors); each step broadcasts one coordinate of 6 centroids, so 12 FMAs take 2 vector loads and 6
/// broadcasts. The fused multiply-adds run in coordinate order, as in the scalar twin, so the bits are its.
/// # Safety
/// AVX2 and FMA are available; `q` is valid for reading `n * dim` f32, `cents` for reading `hi * dim` f32 and
/// `best` for reading and writing `n` pairs; `lo <= hi`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn nearest(
    q: *const f32,
    n: usize,
    cents: *const f32,
    dim: usize,
    lo: usize,
    hi: usize,
    best: *mut (u32, f32),
) {
    const V: usize = 8;
    for j0 in (0..n).step_by(2 * V) {
        let left = n - j0;
        let masks = [lane_mask(left), lane_mask(left.saturating_sub(V))];
        let mut top = [_mm256_set1_ps(f32::NEG_INFINITY); 2];
        let mut from = [_mm256_setzero_si256(); 2];
        let mut c = lo;
        while c < hi {
            let cb = (hi - c).min(CMAX);
            // SAFETY: tokens j0.. (masked to j < n) and centroids c..c + cb <= hi are within the caller's ranges.
            unsafe {
                let q = q.add(j0);
                let cents = cents.add(c * dim);
                by_block_size!(cb, nearest_block(q, n, masks, cents, dim, c, &mut top, &mut from);
                    1 2 3 4 5 6)
            }
            c += cb;
        }
        let (mut vals, mut ids) = ([0f32; V], [0i32; V]);
        for (v, (t, f)) in top.iter().zip(&from).enumerate() {
            // SAFETY: vals and ids hold 8 lanes each.
            unsafe {
                _mm256_storeu_ps(vals.as_mut_ptr(), *t);
                _mm256_storeu_si256(ids.as_mut_ptr().cast(), *f);
            }
            for lane in 0..V.min(left.saturating_sub(v * V)) {
                // SAFETY: j0 + v * 8 + lane < n: within the caller's best pairs.
                let b = unsafe { &mut *best.add(j0 + v * V + lane) };
                if vals[lane] > b.1 {
                    *b = (ids[lane] as u32, vals[lane]);
                }
            }
        }
    }
}

/// A load mask of the first `n` of 8 lanes (all from 8 on).
#[target_feature(enable = "avx2")]
fn lane_mask(n: usize) -> __m256i {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), lanes)
}

/// 16 tokens (two vectors, masked) against CB centroids starting at index `c`: per lane, keeps the best score
/// and its centroid in `top` / `from` (strictly larger only, so the smallest index wins a tie).
/// # Safety
/// As [`nearest`]: `q[k * stride + j]` readable for k < dim and the unmasked lanes j, `cents` for CB rows of dim.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn nearest_block<const CB: usize>(
    q: *const f32,
    stride: usize,
    masks: [__m256i; 2],
    cents: *const f32,
    dim: usize,
    c: usize,
    top: &mut [__m256; 2],
    from: &mut [__m256i; 2],
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; CB];
    for k in 0..dim {
        // SAFETY: k < dim; masked lanes are not read (maskload reads nothing there).
        let t = unsafe {
            [
                _mm256_maskload_ps(q.add(k * stride), masks[0]),
                _mm256_maskload_ps(q.add(k * stride + 8), masks[1]),
            ]
        };
        for (cb, a) in acc.iter_mut().enumerate() {
            // SAFETY: cb < CB rows, k < dim.
            let b = _mm256_set1_ps(unsafe { *cents.add(cb * dim + k) });
            a[0] = _mm256_fmadd_ps(t[0], b, a[0]);
            a[1] = _mm256_fmadd_ps(t[1], b, a[1]);
        }
    }
    for (cb, a) in acc.iter().enumerate() {
        let id = _mm256_set1_epi32((c + cb) as i32);
        for (v, &s) in a.iter().enumerate() {
            let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(s, top[v]);
            top[v] = _mm256_blendv_ps(top[v], s, gt);
            from[v] = _mm256_castps_si256(_mm256_blendv_ps(
                _mm256_castsi256_ps(from[v]),
                _mm256_castsi256_ps(id),
                gt,
            ));
        }
    }
}
