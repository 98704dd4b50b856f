//! End-to-end test crate (tests live in tests/), and the reliability soak (`soak`, run by the
//! `chamfer-soak` binary; see tests/soak/README.md).
pub mod soak;
