//! The bytes of a shard: sections streamed with their CRCs, the footer, and where they go (a file written
//! atomically beside its graph files, or an aligned in-memory image).
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::*;
use crate::hnsw::{CandidateIndex, GraphBuild, GraphFile};
use crate::kernels;
use crate::storage::{split_name, PutMode, Storage};
use crate::IndexError;

/// Streams aligned sections into a writer, recording offsets and CRCs.
pub(super) struct SectionWriter<W: Write> {
    out: W,
    pos: u64,
    sections: Vec<Section>,
}

impl<W: Write> SectionWriter<W> {
    fn pad(&mut self) -> std::io::Result<()> {
        let pad = (ALIGN - (self.pos as usize % ALIGN)) % ALIGN;
        self.out.write_all(&[0u8; ALIGN][..pad])?;
        self.pos += pad as u64;
        Ok(())
    }
    /// Writes one section from chunks produced by `fill`.
    fn section(
        &mut self,
        name: &str,
        chunks: impl IntoIterator<Item = Vec<u8>>,
    ) -> std::io::Result<()> {
        self.pad()?;
        let offset = self.pos;
        let mut crc = crc32fast::Hasher::new();
        for chunk in chunks {
            crc.update(&chunk);
            self.out.write_all(&chunk)?;
            self.pos += chunk.len() as u64;
        }
        self.sections.push(Section {
            name: name.into(),
            offset,
            len: self.pos - offset,
            crc32: crc.finalize(),
        });
        Ok(())
    }
}

/// An in-memory shard image, appended straight into u64 words (the alignment [`Bytes::Owned`] needs), so the
/// bytes are neither re-allocated while they grow (the capacity is estimated up front) nor copied once more.
pub(super) struct AlignedBuf {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBuf {
    fn with_capacity(bytes: usize) -> AlignedBuf {
        AlignedBuf {
            words: Vec::with_capacity(bytes.div_ceil(8)),
            len: 0,
        }
    }
}

impl Write for AlignedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let end = self.len + buf.len();
        if end > self.words.len() * 8 {
            // Within the estimated capacity: no reallocation (beyond it, Vec's amortised growth).
            self.words.resize(end.div_ceil(8), 0);
        }
        bytemuck::cast_slice_mut::<u64, u8>(&mut self.words)[self.len..end].copy_from_slice(buf);
        self.len = end;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(super) fn le_bytes_u64(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The documents a shard's sections are laid out from: new documents ([`ShardDoc`]s, packed here) or
/// documents of existing shards (a merge: their packed panels are copied as they are).
pub(super) trait LayoutDocs: Sync {
    fn count(&self) -> usize;
    fn n_tokens(&self, i: usize) -> usize;
    /// Appends document `i`'s packed panels ([`kernels::packed_len`] values).
    fn push_packed(&self, i: usize, dim: usize, out: &mut Vec<f16>);
    fn id(&self, i: usize) -> &[u8];
    fn payload(&self, i: usize) -> &[u8];
}

impl LayoutDocs for [ShardDoc<'_>] {
    fn count(&self) -> usize {
        self.len()
    }
    fn n_tokens(&self, i: usize) -> usize {
        self[i].tokens.len()
    }
    fn push_packed(&self, i: usize, dim: usize, out: &mut Vec<f16>) {
        kernels::pack_tokens(self[i].tokens.as_slice(), dim, out);
    }
    fn id(&self, i: usize) -> &[u8] {
        self[i].id.as_bytes()
    }
    fn payload(&self, i: usize) -> &[u8] {
        self[i].payload
    }
}

impl LayoutDocs for [HalfDoc<'_>] {
    fn count(&self) -> usize {
        self.len()
    }
    fn n_tokens(&self, i: usize) -> usize {
        self[i].tokens.len() / self[i].dim.max(1)
    }
    fn push_packed(&self, i: usize, dim: usize, out: &mut Vec<f16>) {
        kernels::pack_tokens_f16(self[i].tokens, dim, out);
    }
    fn id(&self, i: usize) -> &[u8] {
        self[i].id.as_bytes()
    }
    fn payload(&self, i: usize) -> &[u8] {
        self[i].payload
    }
}

/// Writes every section after the header; `omit_codebook` leaves the codebook section empty (only for
/// in-memory shards whose codebook is handed over directly, see `Shard::from_owned_words`).
pub(super) fn write_body<W: Write, D: LayoutDocs + ?Sized>(
    sw: &mut SectionWriter<W>,
    b: &Built,
    docs: &D,
    omit_codebook: bool,
) -> std::io::Result<()> {
    let dim = b.params.fde.dimension;
    let n = docs.count();
    sw.section(
        "tokens",
        (0..n).step_by(256).map(|first| {
            let mut packed = Vec::new();
            for i in first..(first + 256).min(n) {
                docs.push_packed(i, dim, &mut packed);
            }
            bytemuck::cast_slice::<f16, u8>(&packed).to_vec()
        }),
    )?;
    sw.section("panel_start", [le_bytes_u64(&b.panel_start)])?;
    sw.section(
        "n_tokens",
        [(0..n)
            .flat_map(|i| (docs.n_tokens(i) as u32).to_le_bytes())
            .collect()],
    )?;
    sw.section(
        "fde",
        b.fdes
            .chunks(1 << 20)
            .map(|c| bytemuck::cast_slice::<f16, u8>(c).to_vec()),
    )?;
    sw.section(
        "codebook",
        [b.codebook
            .as_ref()
            .filter(|_| !omit_codebook)
            .map(|c| c.to_bytes())
            .unwrap_or_default()],
    )?;
    sw.section(
        "codes",
        b.codes
            .chunks(1 << 20)
            .map(|c| c.iter().flat_map(|v| v.to_le_bytes()).collect()),
    )?;
    sw.section("ivf_start", [le_bytes_u64(&b.ivf_start)])?;
    sw.section(
        "ivf_docs",
        b.ivf_docs
            .chunks(1 << 20)
            .map(|c| c.iter().flat_map(|v| v.to_le_bytes()).collect()),
    )?;
    for name in ["id", "payload"] {
        let field = |i: usize| {
            if name == "id" {
                docs.id(i)
            } else {
                docs.payload(i)
            }
        };
        let mut starts = vec![0u64];
        let mut acc = 0u64;
        for i in 0..n {
            acc += field(i).len() as u64;
            starts.push(acc);
        }
        sw.section(&format!("{name}_start"), [le_bytes_u64(&starts)])?;
        sw.section(
            &format!("{name}_bytes"),
            (0..n).step_by(4096).map(|first| {
                (first..(first + 4096).min(n))
                    .flat_map(|i| field(i).to_vec())
                    .collect()
            }),
        )?;
    }
    Ok(())
}

pub(super) fn finish<W: Write>(
    mut sw: SectionWriter<W>,
    b: &Built,
    graph: Option<Vec<GraphFile>>,
) -> std::io::Result<W> {
    let meta = Meta {
        format: "chamfer-shard".into(),
        params: b.params.clone(),
        n_docs: b.n,
        total_tokens: b.total_tokens,
        fde_dim: b.fde_dim,
        prefix_scale: b.prefix_scale,
        sections: sw.sections.clone(),
        graph,
        written_by: concat!("chamfer ", env!("CARGO_PKG_VERSION")).into(),
    };
    let json = serde_json::to_vec(&meta).map_err(std::io::Error::other)?;
    sw.out.write_all(&json)?;
    sw.out.write_all(&(json.len() as u64).to_le_bytes())?;
    sw.out.write_all(&crc32fast::hash(&json).to_le_bytes())?;
    sw.out.write_all(&FORMAT_VERSION.to_le_bytes())?;
    sw.out.write_all(END_MAGIC)?;
    Ok(sw.out)
}

pub(super) fn header() -> [u8; 64] {
    let mut h = [0u8; 64];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// The graph files' folder on disk and base name for the shard file `name` of `store` (the graph is dumped by
/// hnsw_rs, which writes files itself: only a store with a local directory can hold one).
fn graph_place(store: &dyn Storage, name: &str) -> Option<(PathBuf, String)> {
    let (folder, file) = split_name(name);
    let root = store.local_root()?;
    let (_, base) = dir_and_base(Path::new(file));
    Some((root.join(folder), base))
}

/// The file part of [`Shard::write_cancellable`]: graph files, then the shard streamed through `store` and
/// committed (fsync, publish). The caller removes what is left behind on error.
pub(super) fn write_files<D: LayoutDocs + ?Sized>(
    store: &dyn Storage,
    name: &str,
    mode: PutMode,
    built: &Built,
    docs: &D,
    cancel: &dyn Fn() -> bool,
    graph_started: &mut bool,
) -> Result<()> {
    let params = &built.params;
    if cancel() {
        return Err(IndexError::Cancelled("shard write: before the graph build"));
    }
    let graph = if docs.count() >= params.hnsw.min_docs.max(1) {
        let Some((dir, base)) = graph_place(store, name) else {
            return Err(IndexError::param(
                "storage",
                format!(
                    "{}: a shard with a graph ({} documents or more) needs a store on a local directory",
                    store.locate(name).display(),
                    params.hnsw.min_docs.max(1)
                ),
            ));
        };
        *graph_started = true;
        let pdim = params.prefix_dim(params.hnsw.prefix_repetitions);
        let scale = 1.0 / built.prefix_scale;
        let vectors: Vec<f32> = built
            .fdes
            .chunks(built.fde_dim)
            .flat_map(|f| f[..pdim].iter().map(move |v| v.to_f32() * scale))
            .collect();
        let h = &params.hnsw;
        let gb = GraphBuild {
            m: h.m,
            ef_construction: h.ef_construction,
            storage: h.storage,
        };
        Some(CandidateIndex::build_and_dump(
            &vectors, pdim, gb, &dir, &base,
        )?)
    } else {
        None
    };
    if cancel() {
        return Err(IndexError::Cancelled(
            "shard write: before writing the file",
        ));
    }
    // A writer dropped on an error below removes its temporary file.
    let out = store.create(name, mode)?;
    let at = out.locate();
    let io = |e| IndexError::io(&at, e);
    let mut sw = SectionWriter {
        out,
        pos: 64,
        sections: vec![],
    };
    sw.out.write_all(&header()).map_err(io)?;
    write_body(&mut sw, built, docs, false).map_err(io)?;
    let out = finish(sw, built, graph).map_err(io)?;
    if cancel() {
        return Err(IndexError::Cancelled(
            "shard write: before the final rename",
        ));
    }
    out.commit()?;
    Ok(())
}

/// Writes `built` as `name` of `store` (see [`write_files`]), removing the graph files it wrote on error (the
/// shard's own temporary file goes with its dropped writer).
pub(super) fn write_built<D: LayoutDocs + ?Sized>(
    store: &dyn Storage,
    name: &str,
    mode: PutMode,
    built: &Built,
    docs: &D,
    cancel: &dyn Fn() -> bool,
) -> Result<()> {
    let mut graph_started = false;
    let result = write_files(store, name, mode, built, docs, cancel, &mut graph_started);
    if result.is_err() && graph_started {
        if let Some((dir, base)) = graph_place(store, name) {
            // Best effort: the error being returned matters more than a failure to clean up.
            for g in crate::hnsw::graph_file_paths(&dir, &base) {
                let _ = fs::remove_file(g);
            }
        }
    }
    result
}

/// Lays `built` out in memory (aligned words sized by an estimate, so nothing is reallocated or copied) and
/// opens it; `given` is the codebook handed over as it is (its section left empty).
pub(super) fn in_memory<D: LayoutDocs + ?Sized>(
    built: &Built,
    docs: &D,
    given: Option<&Arc<Codebook>>,
) -> Result<Shard> {
    // Tokens, codes and postings, ids and payloads, the FDEs, per-document offsets, then room for the rest.
    let estimate = built.panel_start.last().copied().unwrap_or(0) as usize * 2
        + built.total_tokens as usize * 6
        + (0..docs.count())
            .map(|i| docs.id(i).len() + docs.payload(i).len())
            .sum::<usize>()
        + built.fdes.len() * 2
        + docs.count() * 48
        + (64 << 10);
    let mut sw = SectionWriter {
        out: AlignedBuf::with_capacity(estimate),
        pos: 64,
        sections: vec![],
    };
    let io = |e| IndexError::io("<memory>", e);
    sw.out.write_all(&header()).map_err(io)?;
    write_body(&mut sw, built, docs, given.is_some()).map_err(io)?;
    let out = finish(sw, built, None).map_err(io)?;
    Shard::from_owned_words(out.words, out.len, given)
}
