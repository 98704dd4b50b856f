//! Writing a shard: FDE encoding in bounded batches, the token codebook, sections streamed with their CRCs, the
//! graph files, and the atomic, cancellable write (temp file, fsync, rename, directory fsync).
//!
//! Files: `layout` (what is derived from the documents before bytes are laid out: checks, FDEs, offsets),
//! `coding` (the token codebook, codes and the inverted file), `merge` (a shard of existing shards' documents),
//! `sections` (the bytes: sections with their CRCs, the footer, the file and the in-memory image).
use std::path::Path;

use half::f16;

use crate::codebook::Codebook;
use crate::storage::{LocalDir, PutMode, Storage};
use crate::{IndexError, Result};

use super::*;

mod coding;
mod layout;
mod merge;
mod sections;

use coding::*;
pub use coding::{train_codebook, Coding};
pub(super) use layout::stored_fde_repetitions;
use layout::*;
use merge::*;
use sections::*;

/// Documents whose tokens are assigned codes in one call.
const ASSIGN_RUN: usize = 64;
/// Most documents encoded per parallel FDE batch while writing.
pub(super) const ENCODE_BATCH: usize = 2048;
/// Byte budget of the writer's f32 FDE scratch (one encode batch): a batch holds
/// `clamp(ENCODE_SCRATCH_BYTES / (4 x FDE dimension), 1, 2048)` documents, so the scratch never depends on an
/// unbounded product of client-chosen values (128 MiB: 2048 documents of the default 10240-value FDE fit in
/// 80 MiB; the largest allowed FDE, 2^18 values, gets batches of 128).
pub const ENCODE_SCRATCH_BYTES: usize = 128 << 20;

/// Everything derived from the documents before bytes are laid out.
struct Built {
    params: IndexParams,
    n: usize,
    fde_dim: usize,
    fdes: Vec<f16>,
    panel_start: Vec<u64>,
    total_tokens: u64,
    prefix_scale: f32,
    codebook: Option<Arc<Codebook>>,
    codes: Vec<u16>,
    ivf_start: Vec<u64>,
    ivf_docs: Vec<u32>,
}

/// Documents per encode batch for FDEs of `fde_dim` values: as many as fit [`ENCODE_SCRATCH_BYTES`] of f32,
/// at least 1, at most [`ENCODE_BATCH`].
pub(super) fn encode_batch_docs(fde_dim: usize) -> usize {
    (ENCODE_SCRATCH_BYTES / fde_dim.max(1).saturating_mul(4)).clamp(1, ENCODE_BATCH)
}

pub(super) fn read_u64s(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
}

/// The local store of a shard path's folder and the file's name in it (the path-based writers replace a file
/// of that name, as they always have).
fn local_store(path: &Path) -> Result<(LocalDir, String)> {
    if path.file_stem().is_none() {
        return Err(IndexError::param("path", "a shard path needs a file name"));
    }
    Ok(LocalDir::for_file(path)?)
}

impl Shard {
    /// Writes a shard for `docs` to `path` atomically (temp file, fsync, rename, directory fsync), with its HNSW
    /// graph files beside it when there are at least `params.hnsw.min_docs` documents. `progress` is called with
    /// the number of documents encoded so far (in batches).
    pub fn write(
        path: &Path,
        params: &IndexParams,
        docs: &[ShardDoc<'_>],
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<()> {
        Shard::write_cancellable(path, params, docs, progress, &|| false)
    }

    /// [`write`](Self::write) that gives up when `cancel()` turns true: it is asked before every encode batch,
    /// before the codebook, before the graph build, before the file is written and before the final rename.
    /// A cancelled write returns [`IndexError::Cancelled`] and leaves nothing behind (no temp file, no graph
    /// files, no shard). Any other error also removes the temp file and the graph files it wrote.
    pub fn write_cancellable(
        path: &Path,
        params: &IndexParams,
        docs: &[ShardDoc<'_>],
        progress: &(dyn Fn(u64) + Sync),
        cancel: &dyn Fn() -> bool,
    ) -> Result<()> {
        Shard::write_coded(path, params, docs, Coding::Train, progress, cancel)
    }

    /// [`write_cancellable`](Self::write_cancellable) with a given token codebook (a collection's, see
    /// [`train_codebook`]) instead of one trained on `docs`: no training, and approximate scores that do not
    /// depend on how documents were split into shards. `None` trains one as `params` asks.
    pub fn write_with_codebook(
        path: &Path,
        params: &IndexParams,
        docs: &[ShardDoc<'_>],
        codebook: Option<Arc<Codebook>>,
        progress: &(dyn Fn(u64) + Sync),
        cancel: &dyn Fn() -> bool,
    ) -> Result<()> {
        match &codebook {
            Some(codebook) => Shard::write_coded(
                path,
                params,
                docs,
                Coding::Given {
                    codebook,
                    known: None,
                },
                progress,
                cancel,
            ),
            None => Shard::write_coded(path, params, docs, Coding::Train, progress, cancel),
        }
    }

    /// [`write_cancellable`](Self::write_cancellable) with the token codes made as `coding` says.
    pub fn write_coded(
        path: &Path,
        params: &IndexParams,
        docs: &[ShardDoc<'_>],
        coding: Coding<'_>,
        progress: &(dyn Fn(u64) + Sync),
        cancel: &dyn Fn() -> bool,
    ) -> Result<()> {
        let (store, name) = local_store(path)?;
        let built = build(params, docs, coding, progress, cancel)?;
        write_built(&store, &name, PutMode::Overwrite, &built, docs, cancel)
    }

    /// [`write_coded`](Self::write_coded) through the storage seam: the shard becomes the file `name` of `store`,
    /// published only if no file has that name ([`PutMode::Create`]: shards are written once). A shard with a
    /// graph needs a store on a local directory ([`Storage::local_root`]): the graph files go beside it there.
    #[allow(clippy::too_many_arguments)]
    pub fn write_to(
        store: &dyn Storage,
        name: &str,
        params: &IndexParams,
        docs: &[ShardDoc<'_>],
        coding: Coding<'_>,
        progress: &(dyn Fn(u64) + Sync),
        cancel: &dyn Fn() -> bool,
    ) -> Result<()> {
        let built = build(params, docs, coding, progress, cancel)?;
        write_built(store, name, PutMode::Create, &built, docs, cancel)
    }

    /// Writes a shard holding documents of existing shards (a merge: `docs` lists `(shard, document)` in the
    /// new order), coded with `codebook`: packed tokens, ids and payloads are copied as they are, codes are
    /// copied from shards coded with this very codebook (`Arc::ptr_eq`, see [`Shard::share_codebook`]) and
    /// assigned for the others. No FDE and no graph: the merge must stay below `params.hnsw.min_docs` (else
    /// [`IndexError::InvalidParam`]; write such shards with [`write_coded`](Self::write_coded)). Memory: the
    /// codes and the inverted file, never the tokens (they stream from the sources). Atomic and cancellable like
    /// [`write_cancellable`](Self::write_cancellable).
    pub fn write_merged(
        path: &Path,
        params: &IndexParams,
        docs: &[(&Shard, u32)],
        codebook: &Arc<Codebook>,
        progress: &(dyn Fn(u64) + Sync),
        cancel: &dyn Fn() -> bool,
    ) -> Result<()> {
        let (store, name) = local_store(path)?;
        let built = build_merged(params, docs, codebook, progress, cancel)?;
        write_built(
            &store,
            &name,
            PutMode::Overwrite,
            &built,
            &MergedDocs(docs),
            cancel,
        )
    }

    /// [`write_merged`](Self::write_merged) through the storage seam (see [`write_to`](Self::write_to)).
    pub fn write_merged_to(
        store: &dyn Storage,
        name: &str,
        params: &IndexParams,
        docs: &[(&Shard, u32)],
        codebook: &Arc<Codebook>,
        progress: &(dyn Fn(u64) + Sync),
        cancel: &dyn Fn() -> bool,
    ) -> Result<()> {
        let built = build_merged(params, docs, codebook, progress, cancel)?;
        write_built(
            store,
            name,
            PutMode::Create,
            &built,
            &MergedDocs(docs),
            cancel,
        )
    }

    /// Builds the same bytes in memory (no file, no graph): for small or unflushed batches.
    pub fn build_in_memory(params: &IndexParams, docs: &[ShardDoc<'_>]) -> Result<Shard> {
        Shard::build_in_memory_coded(params, docs, Coding::Train)
    }

    /// [`build_in_memory`](Self::build_in_memory) with a given codebook (see
    /// [`write_with_codebook`](Self::write_with_codebook)).
    pub fn build_in_memory_with_codebook(
        params: &IndexParams,
        docs: &[ShardDoc<'_>],
        codebook: Option<Arc<Codebook>>,
    ) -> Result<Shard> {
        match &codebook {
            Some(codebook) => Shard::build_in_memory_coded(
                params,
                docs,
                Coding::Given {
                    codebook,
                    known: None,
                },
            ),
            None => Shard::build_in_memory_coded(params, docs, Coding::Train),
        }
    }

    /// [`build_in_memory`](Self::build_in_memory) with the token codes made as `coding` says.
    pub fn build_in_memory_coded(
        params: &IndexParams,
        docs: &[ShardDoc<'_>],
        coding: Coding<'_>,
    ) -> Result<Shard> {
        // A given codebook is handed to the shard as it is (the same Arc), not serialised and parsed back.
        let given = match coding {
            Coding::Given { codebook, .. } => Some(Arc::clone(codebook)),
            Coding::Train | Coding::TokensOnly => None,
        };
        let built = build(params, docs, coding, &|_| {}, &|| false)?;
        in_memory(&built, docs, given.as_ref())
    }

    /// A tokens-only in-memory shard ([`Coding::TokensOnly`]) of documents whose tokens are f16 already (a log
    /// replayed at start-up): the bytes [`build_in_memory_coded`](Self::build_in_memory_coded) makes of the same
    /// values, without a round trip through f32.
    pub fn build_in_memory_tokens_f16(params: &IndexParams, docs: &[HalfDoc<'_>]) -> Result<Shard> {
        let built = build_tokens_only_f16(params, docs)?;
        in_memory(&built, docs, None)
    }

    /// [`build_in_memory_coded`](Self::build_in_memory_coded) with [`Coding::Given`] and every code known, for
    /// documents whose tokens are f16 already (an upsert the client sent as f16): the same bytes, laid out
    /// from the f16 values as they are. Only for shards that store no FDE (fewer than `hnsw.min_docs`
    /// documents); `codes` holds each document's codes under `codebook`.
    pub fn build_in_memory_f16_coded(
        params: &IndexParams,
        docs: &[HalfDoc<'_>],
        codebook: &Arc<Codebook>,
        codes: &[&[u16]],
    ) -> Result<Shard> {
        let built = build_coded_f16(params, docs, codebook, codes)?;
        in_memory(&built, docs, Some(codebook))
    }
}
#[cfg(test)]
mod tests;
