//! # chamfer-data: data set tooling
//!
//! What the benchmarks, the `chamfer` command and the tests need around the engine, kept out of it so that the
//! engine's error type only names engine failures:
//!
//! * [`dataset`]: the data set folder format (`.npy` token matrices read through `npyz`, streaming; ids, ground
//!   truth, qrels, texts) and its writer.
//! * [`synth`]: seeded synthetic corpora that mimic a real data set, with exact ground truth.
//! * [`eval`]: recall@k, nDCG@k, percentiles.
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod dataset;
pub mod error;
pub mod eval;
pub mod synth;

pub use error::{DataError, Result};
