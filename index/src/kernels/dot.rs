//! Dot products of f32 and f16 vectors (runtime-dispatched like the Chamfer kernel, each with a scalar twin).
use half::f16;
use half::slice::HalfFloatSliceExt;

use super::{isa, Isa};

/// `<a, b>` of an f32 and an f16 vector of equal length.
pub fn dot_f32_f16(a: &[f32], b: &[f16]) -> f32 {
    dot_f32_f16_on(isa(), a, b)
}

/// `<a, b>` of two f16 vectors of equal length.
pub fn dot_f16(a: &[f16], b: &[f16]) -> f32 {
    dot_f16_on(isa(), a, b)
}

/// `<a, b>` of two f32 vectors of equal length.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_on(isa(), a, b)
}

/// Reference of [`dot_f32_f16`].
pub fn dot_f32_f16_scalar(a: &[f32], b: &[f16]) -> f32 {
    dot_scalar(a, b)
}

/// Reference of [`dot_f16`].
pub fn dot_f16_scalar(a: &[f16], b: &[f16]) -> f32 {
    dot_scalar(a, b)
}

/// Reference of [`dot_f32`].
pub fn dot_f32_scalar(a: &[f32], b: &[f32]) -> f32 {
    dot_scalar(a, b)
}

pub(super) fn dot_f32_f16_on(isa: Isa, a: &[f32], b: &[f16]) -> f32 {
    debug_assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(t) => t.dot(a, b),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma(t) => t.dot(a, b),
        Isa::Portable => dot_portable(a, b),
    }
}

pub(super) fn dot_f16_on(isa: Isa, a: &[f16], b: &[f16]) -> f32 {
    debug_assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(t) => t.dot(a, b),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma(t) => t.dot(a, b),
        Isa::Portable => dot_portable(a, b),
    }
}

pub(super) fn dot_f32_on(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(t) => t.dot(a, b),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma(t) => t.dot(a, b),
        Isa::Portable => dot_portable(a, b),
    }
}

/// An element of a dot-product operand.
trait Widen: Copy + Into<f32> {
    /// `dst[i] = src[i] as f32` (equal lengths).
    fn widen(src: &[Self], dst: &mut [f32]);
}

impl Widen for f32 {
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl Widen for f16 {
    fn widen(src: &[f16], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
}

/// Portable dot product of the common prefix: 16 independent lanes, f16 widened 16 at a time.
fn dot_portable<A: Widen, B: Widen>(a: &[A], b: &[B]) -> f32 {
    let n = a.len().min(b.len());
    let (ca, cb) = (a[..n].chunks_exact(16), b[..n].chunks_exact(16));
    let tail = dot_scalar(ca.remainder(), cb.remainder());
    let (mut x, mut y, mut acc) = ([0f32; 16], [0f32; 16], [0f32; 16]);
    for (u, v) in ca.zip(cb) {
        A::widen(u, &mut x);
        B::widen(v, &mut y);
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Sequential dot product of the common prefix.
fn dot_scalar<A: Copy + Into<f32>, B: Copy + Into<f32>>(a: &[A], b: &[B]) -> f32 {
    a.iter().zip(b).map(|(&x, &y)| x.into() * y.into()).sum()
}
