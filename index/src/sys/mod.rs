//! The one audited home of every `unsafe` block in chamfer: memory maps ([`mmap`]), SIMD intrinsics ([`simd`],
//! [`axpy`], [`codes`]), a cache prefetch hint ([`prefetch`]) and the sgemm call ([`gemm`]). CPU features are detected once, in [`cpu`], for every dispatch. Each block carries a `// SAFETY:` comment; everything
//! exported from here is a safe function, and every SIMD function has a scalar twin it is tested against.
pub(crate) mod axpy;
pub(crate) mod codes;
pub(crate) mod cpu;
pub(crate) mod gemm;
pub(crate) mod mmap;
pub(crate) mod multiversion;
pub(crate) mod prefetch;
pub(crate) mod simd;
