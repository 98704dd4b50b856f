//! SIMD kernels for x86_64: AVX-512F ([`avx512`]) and AVX2+FMA+F16C ([`avx2`]).
//!
//! Soundness rests on two things, both checked here in safe code before any `unsafe` call:
//! * the CPU features: a [`Avx512`] / [`Avx2Fma`] value can only be obtained from its `detect()`, so holding one
//!   proves the running CPU has the features its `#[target_feature]` functions are compiled for;
//! * the bounds: every length the raw-pointer loops use is derived from the slices' own lengths.
//!
//! Layouts (see `crate::kernels`): a query is k-major, `qt[k * n_q + j]` = coordinate k of query token j; a
//! document is a sequence of panels of 16 tokens, each k-major, `panel[k * 16 + t]`.
#![cfg(target_arch = "x86_64")]
#![deny(unsafe_op_in_unsafe_fn)]

/// `f::<qb>(args)` for a block size `qb` among the listed literals (the kernels' const generic dispatch).
macro_rules! by_block_size {
    ($qb:expr, $f:ident $args:tt; $($n:literal)+) => {
        match $qb {
            $($n => $f::<$n> $args,)+
            _ => unreachable!("block size out of range"),
        }
    };
}

mod avx2;
mod avx512;

use half::f16;
use std::arch::x86_64::{__m256, __m512};

/// Tokens per document panel (`crate::kernels::PANEL`).
const PANEL: usize = 16;

/// Proof that the CPU supports AVX-512F.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(());

/// Proof that the CPU supports AVX2, FMA and F16C.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2Fma(());

/// An element type the dot kernels load (f32, or f16 widened to f32).
pub(crate) trait Lanes: Copy + Into<f32> {
    /// Loads 16 values as f32.
    /// # Safety
    /// The CPU supports AVX-512F and `p` is valid for reading 16 elements.
    unsafe fn load16(p: *const Self) -> __m512;
    /// Loads 8 values as f32.
    /// # Safety
    /// The CPU supports AVX2 and F16C and `p` is valid for reading 8 elements.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Avx512 {
    pub(crate) fn detect() -> Option<Self> {
        super::cpu::features().avx512f.then_some(Self(()))
    }

    /// Chamfer score of the k-major query `qt` against the whole panels of `panels` (0 if either is empty).
    pub(crate) fn chamfer(self, qt: &[f32], dim: usize, panels: &[f16]) -> f32 {
        let Some((n_q, n_panels)) = shape(qt, dim, panels) else {
            return 0.0;
        };
        // SAFETY: `self` proves AVX-512F; `shape` guarantees qt holds n_q * dim values and panels holds
        // n_panels * 16 * dim values, which are all the kernel reads.
        unsafe { avx512::chamfer(qt.as_ptr(), n_q, panels.as_ptr(), n_panels, dim) }
    }

    /// `<a, b>` over the common prefix.
    pub(crate) fn dot<A: Lanes, B: Lanes>(self, a: &[A], b: &[B]) -> f32 {
        let n = a.len().min(b.len());
        let body = n - n % 16;
        // SAFETY: `self` proves AVX-512F; both slices hold at least `body` elements.
        let head = unsafe { avx512::dot(a.as_ptr(), b.as_ptr(), body) };
        head + dot_tail(&a[body..n], &b[body..n])
    }

    /// For each of the `best.len()` k-major tokens of `qt`, the nearest of the row-major centroids `lo..hi` of
    /// `cents`, folded into `best` (see `crate::kernels::nearest_centroids`). Does nothing when the sizes are
    /// inconsistent.
    pub(crate) fn nearest(
        self,
        qt: &[f32],
        dim: usize,
        cents: &[f32],
        lo: usize,
        hi: usize,
        best: &mut [(u32, f32)],
    ) {
        let n = best.len();
        if !nearest_fits(qt, dim, cents, lo, hi, n) {
            return;
        }
        // SAFETY: `self` proves AVX-512F; qt holds n * dim values, cents the hi rows the kernel reads, best n
        // pairs, and lo < hi (all checked above).
        unsafe {
            avx512::nearest(
                qt.as_ptr(),
                n,
                cents.as_ptr(),
                dim,
                lo,
                hi,
                best.as_mut_ptr(),
            )
        }
    }
}

impl Avx2Fma {
    pub(crate) fn detect() -> Option<Self> {
        super::cpu::features().avx2_fma_f16c().then_some(Self(()))
    }

    /// [`Avx512::nearest`] on 8-lane vectors (the same contract and bits).
    pub(crate) fn nearest(
        self,
        qt: &[f32],
        dim: usize,
        cents: &[f32],
        lo: usize,
        hi: usize,
        best: &mut [(u32, f32)],
    ) {
        let n = best.len();
        if !nearest_fits(qt, dim, cents, lo, hi, n) {
            return;
        }
        // SAFETY: `self` proves AVX2+FMA; qt holds n * dim values, cents the hi rows the kernel reads, best n
        // pairs, and lo < hi (all checked above).
        unsafe {
            avx2::nearest(
                qt.as_ptr(),
                n,
                cents.as_ptr(),
                dim,
                lo,
                hi,
                best.as_mut_ptr(),
            )
        }
    }

    /// Chamfer score of the k-major query `qt` against the whole panels of `panels` (0 if either is empty).
    pub(crate) fn chamfer(self, qt: &[f32], dim: usize, panels: &[f16]) -> f32 {
        let Some((n_q, n_panels)) = shape(qt, dim, panels) else {
            return 0.0;
        };
        // SAFETY: `self` proves AVX2+FMA+F16C; `shape` guarantees qt holds n_q * dim values and panels holds
        // n_panels * 16 * dim values, which are all the kernel reads.
        unsafe { avx2::chamfer(qt.as_ptr(), n_q, panels.as_ptr(), n_panels, dim) }
    }

    /// `<a, b>` over the common prefix.
    pub(crate) fn dot<A: Lanes, B: Lanes>(self, a: &[A], b: &[B]) -> f32 {
        let n = a.len().min(b.len());
        let body = n - n % 8;
        // SAFETY: `self` proves AVX2+FMA+F16C; both slices hold at least `body` elements.
        let head = unsafe { avx2::dot(a.as_ptr(), b.as_ptr(), body) };
        head + dot_tail(&a[body..n], &b[body..n])
    }
}

/// Whether the sizes of a nearest-centroid call are consistent (what the kernels read is in bounds).
fn nearest_fits(qt: &[f32], dim: usize, cents: &[f32], lo: usize, hi: usize, n: usize) -> bool {
    n.checked_mul(dim).is_some_and(|v| qt.len() >= v)
        && hi.checked_mul(dim).is_some_and(|v| cents.len() >= v)
        && lo < hi
        && n > 0
        && dim > 0
        && hi <= i32::MAX as usize
}

/// `(n_q, n_panels)` of a k-major query and a panel slice, `None` if there is nothing to score.
fn shape(qt: &[f32], dim: usize, panels: &[f16]) -> Option<(usize, usize)> {
    let n_q = qt.len().checked_div(dim)?;
    let n_panels = panels.len() / (PANEL * dim);
    (n_q > 0 && n_panels > 0).then_some((n_q, n_panels))
}

/// Balanced blocks `(first, len)` of at most `max` of the `n` query tokens: 32 by at most 24 run as 16 + 16.
fn blocks(n: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let n_blocks = n.div_ceil(max);
    (0..n_blocks).map(move |b| {
        (
            b * (n / n_blocks) + b.min(n % n_blocks),
            n / n_blocks + usize::from(b < n % n_blocks),
        )
    })
}

fn dot_tail<A: Lanes, B: Lanes>(a: &[A], b: &[B]) -> f32 {
    a.iter().zip(b).map(|(&x, &y)| x.into() * y.into()).sum()
}

impl Lanes for f32 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const f32) -> __m512 {
        // SAFETY: the caller guarantees 16 readable f32 at p (unaligned loads are fine).
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load8(p: *const f32) -> __m256 {
        // SAFETY: the caller guarantees 8 readable f32 at p.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
}

impl Lanes for f16 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const f16) -> __m512 {
        // SAFETY: the caller guarantees 16 readable f16 (32 bytes) at p; f16 is a plain u16.
        unsafe { avx512::load_ph(p) }
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load8(p: *const f16) -> __m256 {
        // SAFETY: the caller guarantees 8 readable f16 (16 bytes) at p.
        unsafe { avx2::load_ph(p) }
    }
}
