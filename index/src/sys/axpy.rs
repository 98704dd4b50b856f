//! `y += a * x` over f16 `x` and f32 `y`: the inner loop of the FDE scan (see `crate::search`).
use half::f16;

/// Portable twin (and the reference the SIMD paths are tested against).
pub(crate) fn axpy_f16_scalar(a: f32, x: &[f16], y: &mut [f32]) {
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv += a * xv.to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn axpy_f16_avx512(a: f32, x: &[f16], y: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = x.len().min(y.len());
    let main = n - n % 16;
    let va = _mm512_set1_ps(a);
    let mut i = 0;
    while i < main {
        // SAFETY: i + 16 <= main <= n <= len of both slices, so the 16-lane loads and the store are in bounds;
        // loadu/storeu have no alignment requirement.
        unsafe {
            let xv = _mm512_cvtph_ps(_mm256_loadu_si256(x.as_ptr().add(i) as *const __m256i));
            let yp = y.as_mut_ptr().add(i);
            _mm512_storeu_ps(yp, _mm512_fmadd_ps(va, xv, _mm512_loadu_ps(yp)));
        }
        i += 16;
    }
    axpy_f16_scalar(a, &x[main..n], &mut y[main..n]);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_f16_avx2(a: f32, x: &[f16], y: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = x.len().min(y.len());
    let main = n - n % 8;
    let va = _mm256_set1_ps(a);
    let mut i = 0;
    while i < main {
        // SAFETY: i + 8 <= main <= n <= len of both slices; unaligned loads/stores.
        unsafe {
            let xv = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i) as *const __m128i));
            let yp = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(yp, _mm256_fmadd_ps(va, xv, _mm256_loadu_ps(yp)));
        }
        i += 8;
    }
    axpy_f16_scalar(a, &x[main..n], &mut y[main..n]);
}

/// Dispatched `y[i] += a * x[i]` over the common length.
pub(crate) fn axpy_f16(a: f32, x: &[f16], y: &mut [f32]) {
    use crate::kernels::{kernel_level, KernelLevel};
    match kernel_level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: kernel_level() returns Avx512 only after runtime detection of avx512f.
        KernelLevel::Avx512 => unsafe { axpy_f16_avx512(a, x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: kernel_level() returns Avx2Fma only after runtime detection of avx2, fma and f16c.
        KernelLevel::Avx2Fma => unsafe { axpy_f16_avx2(a, x, y) },
        _ => axpy_f16_scalar(a, x, y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_axpy_matches_scalar() {
        for n in [0usize, 1, 7, 8, 15, 16, 17, 33, 1000] {
            let x: Vec<f16> = (0..n)
                .map(|i| f16::from_f32(((i * 7919) % 23) as f32 / 11.0 - 1.0))
                .collect();
            let mut want: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
            let mut got = want.clone();
            axpy_f16_scalar(0.37, &x, &mut want);
            axpy_f16(0.37, &x, &mut got);
            for (a, b) in want.iter().zip(&got) {
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                    "n={n}: {a} vs {b}"
                );
            }
            #[cfg(target_arch = "x86_64")]
            if crate::sys::cpu::features().avx2_fma_f16c() {
                let mut g2: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
                // SAFETY: features checked just above.
                unsafe { axpy_f16_avx2(0.37, &x, &mut g2) };
                for (a, b) in want.iter().zip(&g2) {
                    assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0));
                }
            }
        }
    }
}
