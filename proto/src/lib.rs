//! # chamfer-proto: the wire contract
//!
//! The protobuf messages and gRPC services of package `chamfer.v1` (`proto/chamfer/v1/chamfer.proto`),
//! generated at build time by tonic/prost with the vendored protoc. This crate holds the contract only: no
//! engine, no server logic, so clients in Rust depend on it alone.
//!
//! * [`v1`]: messages, `*_client` and `*_server` modules for the `Collections`, `Documents` and `Search` services.
//! * [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC reflection.
//!
//! Token vectors travel as packed little-endian bytes ([`v1::Tokens`]); [`tokens`] has the helpers both sides
//! use to pack and unpack them, so the byte layout is written down once.

/// Package `chamfer.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs, unused_qualifications, unreachable_pub)]
    tonic::include_proto!("chamfer.v1");
}

/// Encoded `FileDescriptorSet` of `chamfer.v1`, for `tonic_reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("chamfer_v1_descriptor");

pub mod tokens;
