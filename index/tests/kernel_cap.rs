//! `cap_kernel_level` in a process of its own (the cap can only be set before the first kernel runs).
use chamfer_index::kernels::{cap_kernel_level, kernel_level, KernelLevel};

#[test]
fn the_cap_holds_and_is_set_once() {
    assert!(
        cap_kernel_level(KernelLevel::Avx2Fma),
        "first call sets the cap"
    );
    let level = kernel_level();
    assert_ne!(level, KernelLevel::Avx512, "AVX-512 is capped off");
    assert!(
        !cap_kernel_level(KernelLevel::Portable),
        "a second cap is refused"
    );
    assert_eq!(kernel_level(), level, "and changes nothing");
}
