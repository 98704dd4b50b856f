//! # chamfer-index: the engine
//!
//! A synchronous library (no async runtime, no network types, no environment variables) that turns
//! multi-vector documents into a searchable index and answers Chamfer (MaxSim) queries:
//!
//! * [`fde`]: the MUVERA fixed-dimensional encoder, bit-compatible with Google's reference implementation.
//! * [`kernels`]: exact Chamfer / dot-product kernels (runtime-dispatched AVX-512, AVX2+FMA, portable),
//!   each with a scalar twin it is tested against.
//! * [`shard`]: the memory-mapped, versioned, checksummed shard file (token panels, Matryoshka FDEs, ids).
//! * [`hnsw`]: the candidate layer, hnsw_rs over a Matryoshka prefix of the FDE with a safe inner-product distance.
//! * [`search`]: search plans (exhaustive exact, FDE scan, FDE+HNSW) over a set of shards.
//! * [`storage`]: the storage seam: one trait for immutable files (put-if-absent or atomic replace, streamed
//!   writes with a final commit, read, map), on a local directory or in memory (with fault injection).
//! * [`fsutil`]: the durable-write primitives under the local store (temporary file, fsync, rename).
//!
//! The data set folder format, synthetic corpora and recall / nDCG live in the `chamfer-data` crate.
//!
//! All `unsafe` code (memory maps and SIMD intrinsics) lives in the private `sys` module; the rest of the crate
//! is compiled with `#![deny(unsafe_code)]`.
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod codebook;
pub mod error;
pub mod fde;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod hnsw;
pub mod index_dir;
pub mod kernels;
pub mod search;
pub mod shard;
pub mod storage;
pub mod tokens;

#[allow(unsafe_code)]
mod sys;

pub use error::{IndexError, Result};
