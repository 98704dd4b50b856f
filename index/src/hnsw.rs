//! The candidate layer: an `hnsw_rs` graph over a Matryoshka prefix of the documents' FDEs.
//!
//! Maximum inner product on a cosine/L2 graph library: every document prefix is divided by the shard's largest
//! prefix norm (so all lie in the unit ball), the query prefix is normalised, and the distance is
//! `max(0, 1 - <q, x>)`. A positive factor per query does not change the ranking, and the clamp keeps hnsw_rs's
//! non-negativity assertions (which panic, also in release builds) from ever firing. The spec measured this
//! scaling at recall@100 0.915 / 0.989 (ef 200 / 800) where the classic `sqrt(M^2 - |x|^2)` augmentation gave
//! 0.32 / 0.68 (`shared/docs/muvera-fde-spec.md`, "Serving with an inner-product index").
//!
//! Persistence: the graph is dumped with hnsw_rs's own format (`<base>.hnsw.graph` + `<base>.hnsw.data`) beside
//! the shard file; the shard records their lengths and CRC32s, and [`CandidateIndex::load`] verifies both before
//! handing them to hnsw_rs (which calls `process::exit` on a missing file and trusts the bytes).
use std::fs;
use std::path::{Path, PathBuf};

use half::f16;
use hnsw_rs::prelude::{AnnT, Distance, Hnsw, HnswIo};
use serde::{Deserialize, Serialize};

use crate::kernels::{dot_f16, dot_f32};
use crate::{IndexError, Result};

/// How the graph stores its vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VectorStorage {
    /// Half precision: half the memory, the distance converts on the fly (SIMD).
    F16,
    /// Single precision.
    F32,
}

/// `max(0, 1 - <a, b>)` over f32 vectors in the unit ball: a valid hnsw_rs distance for inner products.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClampedInnerF32;
impl Distance<f32> for ClampedInnerF32 {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        // f32::max returns the other operand for NaN, so the result is never NaN or negative.
        (1.0 - dot_f32(a, b)).max(0.0)
    }
}

/// The same distance over f16 vectors (f32 accumulation).
#[derive(Clone, Copy, Debug, Default)]
pub struct ClampedInnerF16;
impl Distance<f16> for ClampedInnerF16 {
    fn eval(&self, a: &[f16], b: &[f16]) -> f32 {
        (1.0 - dot_f16(a, b)).max(0.0)
    }
}

/// Graph construction parameters.
#[derive(Clone, Copy, Debug)]
pub struct GraphBuild {
    /// Graph degree: the most neighbours per node (hnsw_rs max_nb_connection).
    pub m: usize,
    /// Beam width while inserting nodes (larger: better graph, slower build).
    pub ef_construction: usize,
    /// Precision (f16 or f32) of the vectors stored in the graph.
    pub storage: VectorStorage,
}

/// A file written by the graph dump, with what the shard records to verify it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphFile {
    /// File name (no directory), e.g. `<base>.hnsw.graph`.
    pub name: String,
    /// File size in bytes.
    pub len: u64,
    /// CRC-32 of the file's whole contents.
    pub crc32: u32,
}

enum Graph {
    F16(Hnsw<'static, f16, ClampedInnerF16>),
    F32(Hnsw<'static, f32, ClampedInnerF32>),
}

/// A loaded HNSW graph over the (scaled) FDE prefixes of one shard. Point ids are the shard's document indices.
pub struct CandidateIndex {
    graph: Graph,
    prefix_dim: usize,
}

/// The graph files of shard base name `base` in `dir` (whether or not they exist).
pub fn graph_file_paths(dir: &Path, base: &str) -> [PathBuf; 2] {
    [
        dir.join(format!("{base}.hnsw.graph")),
        dir.join(format!("{base}.hnsw.data")),
    ]
}

fn checksum_file(path: &Path) -> Result<(u64, u32)> {
    let bytes = fs::read(path).map_err(|e| IndexError::io(path, e))?;
    Ok((bytes.len() as u64, crc32fast::hash(&bytes)))
}

impl CandidateIndex {
    /// Builds a graph over `vectors` (n rows of `prefix_dim` values, already scaled into the unit ball) and dumps
    /// it as `<base>.hnsw.{graph,data}` in `dir`. Returns the files with their checksums.
    pub fn build_and_dump(
        vectors: &[f32],
        prefix_dim: usize,
        build: GraphBuild,
        dir: &Path,
        base: &str,
    ) -> Result<Vec<GraphFile>> {
        if prefix_dim == 0 || !vectors.len().is_multiple_of(prefix_dim) {
            return Err(IndexError::InvalidConfig(
                "graph vectors do not match the prefix dimension".into(),
            ));
        }
        // hnsw_rs exits the process for more than 256 connections: refuse before calling it.
        if build.m == 0 || build.m > 128 {
            return Err(IndexError::InvalidConfig(format!(
                "hnsw m must be in 1..=128, got {}",
                build.m
            )));
        }
        if build.ef_construction == 0 {
            return Err(IndexError::InvalidConfig(
                "hnsw ef_construction must be > 0".into(),
            ));
        }
        let n = vectors.len() / prefix_dim;
        let layers = 16;
        // hnsw_rs dumps into a fresh basename when files exist: dump into a private temp dir, then rename.
        let tmp = dir.join(format!(".tmp-graph-{base}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(|e| IndexError::io(&tmp, e))?;
        let dumped = match build.storage {
            VectorStorage::F32 => {
                let hnsw = Hnsw::<f32, ClampedInnerF32>::new(
                    build.m,
                    n,
                    layers,
                    build.ef_construction,
                    ClampedInnerF32,
                );
                let data: Vec<(&[f32], usize)> =
                    vectors.chunks_exact(prefix_dim).zip(0..).collect();
                hnsw.parallel_insert_slice(&data);
                hnsw.file_dump(&tmp, base)
            }
            VectorStorage::F16 => {
                let halves: Vec<f16> = vectors.iter().map(|&v| f16::from_f32(v)).collect();
                let hnsw = Hnsw::<f16, ClampedInnerF16>::new(
                    build.m,
                    n,
                    layers,
                    build.ef_construction,
                    ClampedInnerF16,
                );
                let data: Vec<(&[f16], usize)> = halves.chunks_exact(prefix_dim).zip(0..).collect();
                hnsw.parallel_insert_slice(&data);
                hnsw.file_dump(&tmp, base)
            }
        };
        let dumped =
            dumped.map_err(|e| IndexError::io(&tmp, std::io::Error::other(e.to_string())))?;
        let mut files = Vec::new();
        for (src, dst) in graph_file_paths(&tmp, &dumped)
            .iter()
            .zip(graph_file_paths(dir, base).iter())
        {
            let f = fs::File::open(src).map_err(|e| IndexError::io(src, e))?;
            f.sync_all().map_err(|e| IndexError::io(src, e))?;
            fs::rename(src, dst).map_err(|e| IndexError::io(dst, e))?;
            let (len, crc32) = checksum_file(dst)?;
            let name = dst
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push(GraphFile { name, len, crc32 });
        }
        let _ = fs::remove_dir_all(&tmp);
        Ok(files)
    }

    /// Verifies and loads the graph files of `base` in `dir`.
    pub fn load(
        dir: &Path,
        base: &str,
        files: &[GraphFile],
        storage: VectorStorage,
        prefix_dim: usize,
    ) -> Result<Self> {
        let expected = graph_file_paths(dir, base);
        if files.len() != 2 {
            return Err(IndexError::corrupt(
                dir.join(base),
                "shard lists the wrong number of graph files",
            ));
        }
        for (path, want) in expected.iter().zip(files) {
            let (len, crc32) = match checksum_file(path) {
                Ok(v) => v,
                Err(IndexError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    return Err(IndexError::corrupt(path, "HNSW graph file is missing"));
                }
                Err(e) => return Err(e),
            };
            if len != want.len || crc32 != want.crc32 {
                return Err(IndexError::corrupt(
                    path,
                    format!("HNSW graph file checksum mismatch (len {len}, crc {crc32:08x}; shard expects len {}, crc {:08x})", want.len, want.crc32),
                ));
            }
        }
        // The loaded Hnsw borrows its HnswIo for its whole life. A shard's graph lives as long as the shard, so
        // the small loader struct (paths and options; the vectors are copied to the heap, no mmap) is leaked once
        // per shard open instead of building a self-referential struct.
        let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, base)));
        let graph = match storage {
            VectorStorage::F16 => {
                Graph::F16(io.load_hnsw::<f16, ClampedInnerF16>().map_err(|e| {
                    IndexError::corrupt(dir.join(base), format!("HNSW graph reload failed: {e}"))
                })?)
            }
            VectorStorage::F32 => {
                Graph::F32(io.load_hnsw::<f32, ClampedInnerF32>().map_err(|e| {
                    IndexError::corrupt(dir.join(base), format!("HNSW graph reload failed: {e}"))
                })?)
            }
        };
        Ok(CandidateIndex { graph, prefix_dim })
    }

    /// Dimension of the vectors in the graph.
    pub fn prefix_dim(&self) -> usize {
        self.prefix_dim
    }

    /// The `n` nearest documents to `query` (unit-normalised prefix) with beam width `ef`, keeping only documents
    /// for which `filter` returns true (applied inside the walk). Returns (doc index, distance), nearest first.
    pub fn search(
        &self,
        query: &[f32],
        n: usize,
        ef: usize,
        filter: Option<&(dyn Fn(usize) -> bool + Sync)>,
    ) -> Vec<(usize, f32)> {
        let ef = ef.max(n);
        let wrapped = filter.map(|f| move |id: &usize| f(*id));
        let fref: Option<&dyn hnsw_rs::prelude::FilterT> = wrapped
            .as_ref()
            .map(|w| w as &dyn hnsw_rs::prelude::FilterT);
        let found = match &self.graph {
            Graph::F32(h) => h.search_filter(query, n, ef, fref),
            Graph::F16(h) => {
                let q: Vec<f16> = query.iter().map(|&v| f16::from_f32(v)).collect();
                h.search_filter(&q, n, ef, fref)
            }
        };
        found.into_iter().map(|nb| (nb.d_id, nb.distance)).collect()
    }
}
