//! The one audited home of every `unsafe` block in chamfer: memory maps ([`mmap`]) and SIMD intrinsics
//! ([`simd`], [`axpy`]). Each block carries a `// SAFETY:` comment; everything exported from here is a safe
//! function, and every SIMD function has a scalar twin it is tested against.
pub(crate) mod axpy;
pub(crate) mod mmap;
pub(crate) mod simd;
