//! Opening a collection directory: the manifest's shards, then the log replayed on top. Damage is refused
//! before anything in the directory changes.
use std::collections::HashSet;
use std::sync::Arc;

use chamfer_index::shard::{Coding, HalfDoc, Shard, ShardDoc};
use chamfer_index::tokens::TokenMatrix;
use chamfer_index::IndexError;

use crate::core::manifest::{self, CollectionConfig, Layout, Manifest};
use crate::core::storage_error::StorageError;
use crate::core::wal::{self, WalOp, WalTokens, WalWriter};
use crate::error::ServiceError;

use super::codebook::{self, Current};
use super::state::{Bitset, Loc, Segment, State};
use super::tombstones;

/// Documents per memory segment rebuilt from the log at start-up (8 in tests, so that their small logs replay
/// into many segments built in parallel).
const REPLAY_SEGMENT_DOCS: usize = if cfg!(test) { 8 } else { 2048 };

/// What replay did to an id, in log order (see [`recover`]).
enum Replayed {
    /// Document `doc` of replay segment `chunk`.
    Upsert { chunk: usize, doc: u32 },
    /// An id deleted.
    Delete(String),
}

/// A tokens-only (or FDE, without a codebook) memory segment of replayed documents. A tokens-only segment of f16
/// records is laid out from the f16 values as they are (no f32 copy: replay's largest cost was the memory).
fn build_replay_segment(
    params: &chamfer_index::shard::IndexParams,
    dim: usize,
    chunk: &[wal::WalDoc],
    coding: Coding<'_>,
) -> Result<Shard, IndexError> {
    let halves: Option<Vec<HalfDoc<'_>>> = match coding {
        Coding::TokensOnly => chunk
            .iter()
            .map(|d| match &d.tokens {
                WalTokens::F16(t) => Some(HalfDoc {
                    id: &d.id,
                    dim,
                    tokens: t,
                    payload: &d.metadata,
                }),
                WalTokens::F32(_) => None,
            })
            .collect(),
        Coding::Train | Coding::Given { .. } => None,
    };
    if let Some(halves) = halves {
        return Shard::build_in_memory_tokens_f16(params, &halves);
    }
    let values: Vec<_> = chunk.iter().map(|d| d.tokens.to_f32()).collect();
    let shard_docs = chunk
        .iter()
        .zip(&values)
        .map(|(d, v)| {
            Ok(ShardDoc {
                id: &d.id,
                tokens: TokenMatrix::new(v, dim, "document")?,
                payload: &d.metadata,
            })
        })
        .collect::<Result<Vec<_>, IndexError>>()?;
    Shard::build_in_memory_coded(params, &shard_docs, coding)
}

/// Rebuilds the state from the manifest and the log; returns it with an open log writer and the next segment
/// id. Any damage (missing or corrupt manifest, shard or log) is an error that names the file, and nothing in
/// the directory has been changed when it is returned.
pub(super) fn recover(
    layout: &Layout,
    config: &CollectionConfig,
    verify_now_bytes: usize,
) -> Result<(State, WalWriter, u64), ServiceError> {
    let mpath = layout.manifest();
    let store = layout.store();
    let manifest: Manifest = manifest::read_checked(&mpath)?;
    let current = match &manifest.codebook {
        Some(entry) => {
            let book = codebook::read(&layout.codebook(entry.generation), config.dimension, entry)?;
            Some(Current {
                entry: entry.clone(),
                book: Arc::new(book),
            })
        }
        None => None,
    };
    let mut st = State {
        segments: vec![],
        ids: imbl::HashMap::new(),
        last_seq: manifest.flushed_seq,
        flushed_seq: manifest.flushed_seq,
        codebook: current,
        flushed_bytes: manifest.flushed_bytes,
        compacted_bytes: manifest.compacted_bytes,
    };
    let mut next_segment = manifest.next_segment_id;
    let mut books: Vec<Arc<chamfer_index::codebook::Codebook>> =
        st.codebook.iter().map(|c| c.book.clone()).collect();
    for e in &manifest.segments {
        let path = layout.segment(e.id);
        // The token sections (most of the bytes) are verified in the background once the collection serves
        // (Collection::verify_shards); everything else is checked here.
        let mut shard = Shard::open_deferred(&path)?;
        if shard.byte_len() < verify_now_bytes {
            // Small shards are verified at once: deferring them saves nothing.
            shard.verify_deferred()?;
        }
        // Shards coded with the same codebook (the collection's, or an older generation's) share one copy of it,
        // and so one centroid table per query.
        if !books.iter().any(|b| shard.share_codebook(b)) {
            if let Some(b) = shard.codebook_arc() {
                books.push(b.clone());
            }
        }
        if shard.len() != e.docs {
            return Err(StorageError::damaged(
                &path,
                None,
                format!(
                    "the manifest says {} documents, the shard has {}",
                    e.docs,
                    shard.len()
                ),
            )
            .into());
        }
        if shard.params() != &config.params {
            return Err(IndexError::Incompatible(format!(
                "{} was built with other parameters",
                path.display()
            ))
            .into());
        }
        let deleted = tombstones::load(&store, layout, e, shard.len())?;
        for d in (0..shard.len()).filter(|&d| !deleted.get(d)) {
            if let Some(old) = st.ids.insert(
                shard.id(d).to_string(),
                Loc {
                    seg: e.id,
                    doc: d as u32,
                },
            ) {
                // Cannot happen with a consistent manifest; keep the newest copy rather than two.
                tracing::warn!(
                    id = shard.id(d),
                    "document live in two shards; keeping the newer"
                );
                st.tombstone(old);
            }
        }
        next_segment = next_segment.max(e.id + 1);
        st.segments.push(Segment {
            id: e.id,
            shard: Arc::new(shard),
            durable: true,
            max_seq: 0,
            deleted: Arc::new(deleted),
            tomb: e.tombstones,
            meta: Arc::default(),
        });
    }

    // Replay the log on top (the whole chain is checked; damage is refused before anything is changed).
    //
    // Segments are built while the log is read: every REPLAY_SEGMENT_DOCS documents become a task of their own on
    // the CPU threads (at most one per thread waiting or running, so the decoded documents held stay bounded),
    // and the reading thread goes on. Tokens only: the cheapest segment to build (no FDE, no codes), searched
    // exactly until the flush that follows start-up codes it; a collection without a codebook (codebook_size 0)
    // stores FDEs instead. Ids are registered afterwards in log order, so a later upsert or delete of an id
    // tombstones its earlier copy exactly as live writes do.
    let coding = if config.params.codebook_size > 0 {
        Coding::TokensOnly
    } else {
        Coding::Train
    };
    let params = &config.params;
    let dim = config.dimension;
    let built: std::sync::Mutex<Vec<Option<Result<Shard, IndexError>>>> = Default::default();
    let in_flight = std::sync::Mutex::new(0usize);
    let max_in_flight = rayon::current_num_threads();
    let mut events: Vec<Replayed> = Vec::new();
    let mut pending: Vec<wal::WalDoc> = Vec::new();
    let mut pending_ids: HashSet<String> = HashSet::new();
    let mut n_chunks = 0usize;
    let wal_dir = layout.wal();
    let replayed = rayon::in_place_scope(|scope| {
        let hand_off = |chunk: Vec<wal::WalDoc>, n_chunks: &mut usize| {
            let index = *n_chunks;
            *n_chunks += 1;
            built.lock().unwrap_or_else(|e| e.into_inner()).push(None);
            let (built, in_flight) = (&built, &in_flight);
            let store =
                move |shard| built.lock().unwrap_or_else(|e| e.into_inner())[index] = Some(shard);
            // When every CPU thread is busy, the reading thread builds this segment itself: the backpressure
            // that bounds memory, without blocking a thread the tasks may need.
            let mut n = in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if *n >= max_in_flight {
                drop(n);
                store(build_replay_segment(params, dim, &chunk, coding));
                return;
            }
            *n += 1;
            drop(n);
            scope.spawn(move |_| {
                let shard = build_replay_segment(params, dim, &chunk, coding);
                drop(chunk);
                store(shard);
                *in_flight.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
            });
        };
        let control = if manifest.log_control {
            wal::ControlFile::Required
        } else {
            wal::ControlFile::MayLack
        };
        let r = wal::replay(&wal_dir, manifest.flushed_seq, control, |seq, op| {
            st.last_seq = seq;
            match op {
                WalOp::Upsert(docs) => {
                    for d in docs {
                        if d.dim != dim {
                            return Err(StorageError::damaged(
                                &wal_dir,
                                None,
                                format!(
                                    "record {seq}: document {:?} has dimension {}",
                                    d.id, d.dim
                                ),
                            ));
                        }
                        // A segment holds an id once: a second copy starts the next segment.
                        if pending.len() == REPLAY_SEGMENT_DOCS || pending_ids.contains(&d.id) {
                            hand_off(std::mem::take(&mut pending), &mut n_chunks);
                            pending_ids.clear();
                        }
                        events.push(Replayed::Upsert {
                            chunk: n_chunks,
                            doc: pending.len() as u32,
                        });
                        pending_ids.insert(d.id.clone());
                        pending.push(d);
                    }
                }
                WalOp::Delete(ids) => events.extend(ids.into_iter().map(Replayed::Delete)),
            }
            Ok(())
        });
        if r.is_ok() && !pending.is_empty() {
            hand_off(std::mem::take(&mut pending), &mut n_chunks);
        }
        r
    })?;
    st.last_seq = st.last_seq.max(replayed.last_seq);
    let segments = built
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|s| {
            s.unwrap_or_else(|| Err(IndexError::Cancelled("log replay: a segment was not built")))
                .map(Arc::new)
        })
        .collect::<Result<Vec<_>, IndexError>>()?;
    let first = next_segment;
    next_segment += segments.len() as u64;
    for (i, shard) in segments.iter().enumerate() {
        st.segments.push(Segment {
            id: first + i as u64,
            shard: shard.clone(),
            durable: false,
            max_seq: st.last_seq,
            deleted: Arc::new(Bitset::new(shard.len())),
            tomb: None,
            meta: Arc::default(),
        });
    }
    let mut n_replayed = 0usize;
    for ev in events {
        match ev {
            Replayed::Upsert { chunk, doc } => {
                n_replayed += 1;
                let id = segments[chunk].id(doc as usize).to_string();
                let at = Loc {
                    seg: first + chunk as u64,
                    doc,
                };
                if let Some(old) = st.ids.insert(id, at) {
                    st.tombstone(old);
                }
            }
            Replayed::Delete(id) => {
                if let Some(old) = st.ids.remove(&id) {
                    st.tombstone(old);
                }
            }
        }
    }
    // Everything checked out: only now may files change (a torn tail cleared, leftovers of interrupted work
    // removed).
    let writer = WalWriter::open(&wal_dir, &replayed, &layout.quarantine())?;
    if !manifest.log_control {
        // A collection from before control files: its log has one now, and from here on a missing one is damage.
        let upgraded = Manifest {
            format_version: manifest::MANIFEST_VERSION,
            log_control: true,
            ..manifest.clone()
        };
        manifest::write_checked(&mpath, &upgraded)?;
    }
    remove_orphans(layout, &manifest);
    tracing::info!(collection = %config.name, shards = manifest.segments.len(), replayed_docs = n_replayed,
        last_seq = st.last_seq, documents = st.ids.len(), "opened collection");
    Ok((st, writer, next_segment))
}

/// Deletes what interrupted work left behind, given a VALID manifest: shard files (and their temp and graph
/// files) that the manifest does not name, and temporary files. Their contents are either superseded (an
/// obsolete shard after a compaction) or still in the log (a flush that crashed before its manifest).
pub(super) fn remove_orphans(layout: &Layout, manifest: &Manifest) {
    let Ok(rd) = std::fs::read_dir(layout.segments()) else {
        return;
    };
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = Layout::segment_id_of(&name) else {
            continue;
        };
        let Some(seg) = manifest.segments.iter().find(|s| s.id == id) else {
            tracing::warn!(file = %name, "removing a shard file the (valid) manifest does not name: an interrupted flush or compaction");
            let _ = std::fs::remove_file(entry.path());
            continue;
        };
        // A tombstone sidecar of a live segment that the manifest does not name: an older generation whose
        // deletion did not happen, or a newer one whose manifest was never written (its deletions are in the log).
        if let Some((_, generation)) = Layout::tombstones_of(&name) {
            if seg.tombstones.map(|t| t.generation) != Some(generation) {
                tracing::info!(file = %name, "removing a tombstone sidecar the (valid) manifest does not name");
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    // A codebook file the manifest does not name: a training whose manifest was never written (derived data:
    // the next flush trains again).
    if let Ok(rd) = std::fs::read_dir(&layout.dir) {
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(generation) = Layout::codebook_generation_of(&name) else {
                continue;
            };
            if manifest.codebook.as_ref().map(|c| c.generation) != Some(generation) {
                tracing::info!(file = %name, "removing a codebook file the (valid) manifest does not name");
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    for dir in [layout.wal(), layout.dir.clone()] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in rd.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
