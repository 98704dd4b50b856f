//! # chamfer-server: gRPC and REST over one service core
//!
//! * [`config`]: settings from defaults, a file, `CHAMFER_*` variables and flags, validated all at once.
//! * [`core`]: the ONE implementation of every operation: collections, durable writes (write-ahead log with
//!   group commit), memtable + immutable engine shards, tombstones, flush, compaction, snapshots, filters and
//!   the validation of every input. CPU work runs on its own rayon pool.
//! * [`error`]: the one error type and its one exhaustive table to gRPC codes and HTTP statuses.
//! * [`grpc`] (tonic) and [`rest`] (axum): thin adapters that translate wire types and call the core.
//! * [`metrics`]: Prometheus counters and latency histograms; [`auth`]: the API-key check.
//! * [`net`]: the connection table both listeners share (cap, eviction, header/body/idle timeouts) and the
//!   server-wide memory budget of request bodies.
//! * [`serve`]: `run(settings, shutdown)`, the whole server as a library function (the `chamfer` binary and
//!   the end-to-end tests both call it).
#![warn(missing_docs)]
pub mod api;
pub mod auth;
pub mod config;
pub mod core;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod metrics;
pub mod net;
pub mod rest;
pub mod serve;

pub use config::Settings;
pub use error::ServiceError;
