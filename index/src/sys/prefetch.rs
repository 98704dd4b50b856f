//! A cache prefetch hint, for loops whose next loads are known ahead but scattered (the inverted-file walk).
//! A hint never changes a result: it is a no-op on targets without one.

/// Asks the CPU to bring the cache line holding `slot` towards L1 ahead of its use.
#[inline(always)]
pub(crate) fn prefetch<T>(slot: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: prefetch is a hint that never faults and never reads or writes memory architecturally; the
        // pointer comes from a live reference, and SSE (which provides the instruction) is part of x86_64.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(slot).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = slot;
}
