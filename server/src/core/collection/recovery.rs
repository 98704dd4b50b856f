//! Opening a collection directory: the manifest's shards, then the log replayed on top. Damage is refused
//! before anything in the directory changes.
use std::collections::HashMap;
use std::sync::Arc;

use chamfer_index::shard::{Coding, Shard, ShardDoc};
use chamfer_index::tokens::TokenMatrix;
use chamfer_index::IndexError;
use rayon::prelude::*;

use crate::core::manifest::{self, CollectionConfig, Layout, Manifest};
use crate::core::storage_error::StorageError;
use crate::core::wal::{self, WalOp, WalWriter};
use crate::error::ServiceError;

use super::codebook::{self, Current};
use super::state::{Bitset, Loc, Segment, State};

/// Documents per memory segment rebuilt from the log at start-up.
const REPLAY_SEGMENT_DOCS: usize = 2048;

/// Rebuilds the state from the manifest and the log; returns it with an open log writer and the next segment
/// id. Any damage (missing or corrupt manifest, shard or log) is an error that names the file, and nothing in
/// the directory has been changed when it is returned.
pub(super) fn recover(
    layout: &Layout,
    config: &CollectionConfig,
    verify_now_bytes: usize,
) -> Result<(State, WalWriter, u64), ServiceError> {
    let mpath = layout.manifest();
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
        let mut deleted = Bitset::new(shard.len());
        for &d in &e.deleted {
            if d as usize >= shard.len() {
                return Err(StorageError::damaged(
                    &mpath,
                    None,
                    format!("deleted document {d} beyond shard {}", e.id),
                )
                .into());
            }
            deleted.set(d as usize);
        }
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
            meta: Arc::default(),
        });
    }

    // Replay the log on top (the whole chain is checked; damage is refused before anything is changed).
    let mut docs: Vec<Option<wal::WalDoc>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let wal_dir = layout.wal();
    let replayed = wal::replay(&wal_dir, manifest.flushed_seq, |seq, op| {
        st.last_seq = seq;
        let (upserts, deletes) = match op {
            WalOp::Upsert(d) => (d, vec![]),
            WalOp::Delete(ids) => (vec![], ids),
        };
        for id in deletes
            .iter()
            .map(String::as_str)
            .chain(upserts.iter().map(|d| d.id.as_str()))
        {
            if let Some(old) = st.ids.remove(id) {
                st.tombstone(old);
            }
            if let Some(i) = index.remove(id) {
                docs[i] = None;
            }
        }
        for d in upserts {
            if d.dim != config.dimension {
                return Err(StorageError::damaged(
                    &wal_dir,
                    None,
                    format!("record {seq}: document {:?} has dimension {}", d.id, d.dim),
                ));
            }
            index.insert(d.id.clone(), docs.len());
            docs.push(Some(d));
        }
        Ok(())
    })?;
    st.last_seq = st.last_seq.max(replayed.last_seq);
    let live: Vec<wal::WalDoc> = docs.into_iter().flatten().collect();
    let n_replayed = live.len();
    // Tokens only: the cheapest segment to build (no FDE, no codes), searched exactly until the flush that
    // follows start-up codes it. A collection without a codebook (codebook_size 0) stores FDEs instead. The
    // segments are built in parallel (they are independent), then registered in log order.
    let coding = if config.params.codebook_size > 0 {
        Coding::TokensOnly
    } else {
        Coding::Train
    };
    let built: Vec<Shard> = live
        .par_chunks(REPLAY_SEGMENT_DOCS)
        .map(|chunk| {
            let shard_docs = chunk
                .iter()
                .map(|d| {
                    Ok(ShardDoc {
                        id: &d.id,
                        tokens: TokenMatrix::new(&d.tokens, config.dimension, "document")?,
                        payload: &d.metadata,
                    })
                })
                .collect::<Result<Vec<_>, IndexError>>()?;
            Shard::build_in_memory_coded(&config.params, &shard_docs, coding)
        })
        .collect::<Result<Vec<_>, IndexError>>()?;
    drop(live);
    for shard in built {
        let shard = Arc::new(shard);
        let id = next_segment;
        next_segment += 1;
        for d in 0..shard.len() {
            st.ids.insert(
                shard.id(d).to_string(),
                Loc {
                    seg: id,
                    doc: d as u32,
                },
            );
        }
        let n = shard.len();
        st.segments.push(Segment {
            id,
            shard,
            durable: false,
            max_seq: st.last_seq,
            deleted: Arc::new(Bitset::new(n)),
            meta: Arc::default(),
        });
    }
    // Everything checked out: only now may files change (a torn tail cleared, leftovers of interrupted work
    // removed).
    let writer = WalWriter::open(&wal_dir, &replayed, &layout.quarantine())?;
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
        if manifest.segments.iter().all(|s| s.id != id) {
            tracing::warn!(file = %name, "removing a shard file the (valid) manifest does not name: an interrupted flush or compaction");
            let _ = std::fs::remove_file(entry.path());
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
