//! Generates the chamfer.v1 messages and services with tonic/prost at build time.
//!
//! protoc comes from `protoc-bin-vendored` (a registry crate that ships the binary), so building needs no system
//! install. The encoded file descriptor set is written to OUT_DIR too: the server registers it with gRPC
//! reflection, so `grpcurl` and friends work without the .proto file.
// A build script's inputs come from the environment (OUT_DIR): the clippy.toml rule is for the libraries.
#![allow(clippy::disallowed_methods)]
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // A build script is single-threaded, so setting an environment variable here is sound.
    std::env::set_var("PROTOC", protoc);

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let proto = "proto/chamfer/v1/chamfer.proto";
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-changed=build.rs");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .file_descriptor_set_path(out_dir.join("chamfer_v1_descriptor.bin"))
        .compile_protos(&[proto], &["proto"])?;
    Ok(())
}
