//! The one CPU-feature detection of the crate: every SIMD dispatch (the kernels' [`super::simd`] proofs,
//! [`super::axpy`], [`super::codes`], [`super::multiversion`]) asks [`features`], which runs the detection once
//! and caches it. No other module calls `is_x86_feature_detected!`.
use std::sync::OnceLock;

/// The x86-64 extensions chamfer has kernels for (all false on other architectures).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CpuFeatures {
    pub(crate) avx512f: bool,
    pub(crate) avx2: bool,
    pub(crate) fma: bool,
    pub(crate) f16c: bool,
}

impl CpuFeatures {
    /// AVX2, FMA and F16C together (what the 256-bit kernels are compiled for).
    pub(crate) fn avx2_fma_f16c(self) -> bool {
        self.avx2 && self.fma && self.f16c
    }

    #[cfg(target_arch = "x86_64")]
    fn detect() -> Self {
        CpuFeatures {
            avx512f: std::arch::is_x86_feature_detected!("avx512f"),
            avx2: std::arch::is_x86_feature_detected!("avx2"),
            fma: std::arch::is_x86_feature_detected!("fma"),
            f16c: std::arch::is_x86_feature_detected!("f16c"),
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn detect() -> Self {
        CpuFeatures::default()
    }
}

/// The features the kernels may use, fixed on first use.
static FEATURES: OnceLock<CpuFeatures> = OnceLock::new();

/// The features of the running CPU, detected on first use (less any masked by [`detect_capped`]).
pub(crate) fn features() -> CpuFeatures {
    *FEATURES.get_or_init(CpuFeatures::detect)
}

/// Fixes the features to the detected ones with AVX-512 masked off unless `avx512`, and AVX2, FMA and F16C also
/// masked off unless `avx2`. True if this call fixed them; false, changing nothing, if they were fixed already.
pub(crate) fn detect_capped(avx512: bool, avx2: bool) -> bool {
    let mut fixed = false;
    FEATURES.get_or_init(|| {
        fixed = true;
        let f = CpuFeatures::detect();
        CpuFeatures {
            avx512f: f.avx512f && avx512 && avx2,
            avx2: f.avx2 && avx2,
            fma: f.fma && avx2,
            f16c: f.f16c && avx2,
        }
    });
    fixed
}

#[cfg(test)]
mod tests {
    #[test]
    fn detection_is_cached_and_consistent() {
        let f = super::features();
        assert_eq!(f, super::features());
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(f.avx2, std::arch::is_x86_feature_detected!("avx2"));
            assert_eq!(f.avx512f, std::arch::is_x86_feature_detected!("avx512f"));
        }
    }
}
