//! The `chamfer` command: a thin entry point over the engine (`chamfer-index`), the data set tools
//! (`chamfer-data`), the server (`chamfer-server`) and the client (`chamfer-client`). Argument parsing here, one
//! module per group of verbs.
// The binary reads the environment (settings layering); the libraries may not (clippy.toml).
#![allow(clippy::disallowed_methods)]
mod bench;
mod client;
mod demo;
mod engine;
mod fde_recall;
mod load;
mod params;
mod serve;
mod soak;

use chamfer_index::kernels::{cap_kernel_level, KernelLevel};
use clap::{Parser, Subcommand, ValueEnum};

/// chamfer: multi-vector (ColBERT-style) retrieval with MUVERA FDEs, HNSW candidates and exact Chamfer re-rank.
#[derive(Parser, Debug)]
#[command(name = "chamfer", version, about, long_about = None)]
struct Cli {
    /// The highest instruction set the kernels may use (default: the best this CPU has); lower levels measure
    /// or check the AVX2 and portable kernels on a CPU that has AVX-512. Results are the same at every level.
    #[arg(long, global = true, value_enum)]
    max_kernel: Option<MaxKernel>,
    #[command(subcommand)]
    command: Command,
}

/// A ceiling for `--max-kernel`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum MaxKernel {
    Avx512,
    Avx2,
    Portable,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (gRPC + REST) on a data directory.
    Serve(serve::ServeCmd),
    /// Build an index from a data set folder.
    Index(engine::IndexCmd),
    /// Search an index with a query of a data set folder.
    Search(engine::SearchCmd),
    /// Write a synthetic data set that mimics a real one (with exact ground truth).
    Gen(engine::GenCmd),
    /// Build an index in a temp dir, run every query, print a JSON report (last stdout line).
    Bench(bench::BenchCmd),
    /// Recall of the MUVERA FDE as a candidate generator (exact FDE scan per Matryoshka prefix + exact re-rank)
    /// on a data set of any size, streamed once, without building an index (JSON last line).
    FdeRecall(fde_recall::FdeRecallCmd),
    /// Write a subset of a data set (with recomputed exact ground truth), e.g. the bundled demo set.
    Slice(engine::SliceCmd),
    /// Encode one multi-vector input (JSON on stdin) as a MUVERA FDE (JSON array on stdout).
    Fde(engine::FdeCmd),
    /// Upload documents (a data set folder or JSON Lines, read a batch at a time) to a server; resumable,
    /// idempotent; rate and peak RSS on the JSON last line.
    Ingest(client::IngestCmd),
    /// Search a collection on a server with a data set query or vectors from a JSON file.
    Query(client::QueryCmd),
    /// List, create, describe, drop, flush or compact collections on a server.
    Collections(client::CollectionsCmd),
    /// Exit 0 iff GET URL answers 2xx in time (container health checks without a shell).
    Healthcheck(client::HealthcheckCmd),
    /// Serve the bundled demo data set on a local data dir, answer one query, show how to ask more.
    Demo(demo::DemoCmd),
    /// Load generator: concurrent searches over gRPC or REST, latency, QPS, recall and peak RSS (JSON last line).
    Load(load::LoadCmd),
    /// Scale run: start a server, stream a data set in over gRPC while searching, settle, measure recall and
    /// latency, kill -9 and restart it, check nothing acknowledged was lost (JSON last line).
    Soak(soak::SoakCmd),
}

/// Parses the command line and runs the command.
fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(max) = cli.max_kernel {
        let level = match max {
            MaxKernel::Avx512 => KernelLevel::Avx512,
            MaxKernel::Avx2 => KernelLevel::Avx2Fma,
            MaxKernel::Portable => KernelLevel::Portable,
        };
        anyhow::ensure!(
            cap_kernel_level(level),
            "--max-kernel: the kernels already ran"
        );
    }
    match cli.command {
        Command::Serve(c) => c.run(),
        Command::Index(c) => c.run(),
        Command::Search(c) => c.run(),
        Command::Gen(c) => c.run(),
        Command::Bench(c) => c.run(),
        Command::Fde(c) => c.run(),
        Command::FdeRecall(c) => c.run(),
        Command::Slice(c) => c.run(),
        Command::Ingest(c) => c.run(),
        Command::Query(c) => c.run(),
        Command::Collections(c) => c.run(),
        Command::Healthcheck(c) => c.run(),
        Command::Demo(c) => c.run(),
        Command::Load(c) => c.run(),
        Command::Soak(c) => c.run(),
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
