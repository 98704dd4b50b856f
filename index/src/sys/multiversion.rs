//! Running safe, auto-vectorised code with wider registers than the x86-64 baseline (SSE2) allows.
//!
//! chamfer is never compiled with `target-cpu=native` (the binary must run on any x86-64), so loops written for
//! the auto-vectoriser get 128-bit SSE2 code. [`call_avx2`] calls the AVX2-compiled twin of a function when the
//! CPU has AVX2: the twin is a safe `#[target_feature(enable = "avx2")]` wrapper around the same
//! `#[inline(always)]` body, so the same source is vectorised with 256-bit registers. FMA is deliberately not enabled: Rust never contracts `a * b + c`, so results stay
//! bit-identical to the baseline build (the FDE encoder relies on this for reference-exact partitions).

/// True when the CPU supports AVX2 (so [`call_avx2`] runs the AVX2 twin); from the one detection in `super::cpu`.
pub(crate) fn has_avx2() -> bool {
    super::cpu::features().avx2
}

/// Calls `avx2(arg)` when the CPU supports AVX2, else `portable(arg)`. `avx2` is meant to be a safe
/// `#[target_feature(enable = "avx2")]` function (coerced to an `unsafe fn` pointer) whose body inlines the same
/// code as `portable`.
pub(crate) fn call_avx2<T: ?Sized>(avx2: unsafe fn(&mut T), portable: fn(&mut T), arg: &mut T) {
    if has_avx2() {
        // SAFETY: the only precondition of a target_feature(avx2) function is that the CPU supports AVX2,
        // established by runtime detection above.
        unsafe { avx2(arg) }
    } else {
        portable(arg)
    }
}
