//! A collection's in-memory state: its segments (durable shards and memtable batches), their tombstones, and
//! the external-id map. Mutated only by the sequencer thread.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use chamfer_index::shard::Shard;
use serde_json::Value;

use crate::core::manifest::{Manifest, SegmentEntry, TombstoneRef, MANIFEST_VERSION};

use super::WriteOp;

/// Where a live document is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Loc {
    pub(super) seg: u64,
    pub(super) doc: u32,
}

/// A fixed-size bitset of deleted documents.
#[derive(Clone, Debug, Default)]
pub struct Bitset {
    pub(super) words: Vec<u64>,
    pub(super) ones: usize,
}

impl Bitset {
    pub(super) fn new(n: usize) -> Self {
        Bitset {
            words: vec![0; n.div_ceil(64)],
            ones: 0,
        }
    }
    /// Is bit `i` set?
    pub fn get(&self, i: usize) -> bool {
        self.words
            .get(i / 64)
            .is_some_and(|w| w >> (i % 64) & 1 == 1)
    }
    pub(super) fn set(&mut self, i: usize) {
        if let Some(w) = self.words.get_mut(i / 64) {
            if *w >> (i % 64) & 1 == 0 {
                *w |= 1 << (i % 64);
                self.ones += 1;
            }
        }
    }
    /// Number of set bits.
    pub fn ones(&self) -> usize {
        self.ones
    }
    pub(super) fn iter_ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            (0..64)
                .filter(move |b| w >> b & 1 == 1)
                .map(move |b| wi * 64 + b)
        })
    }
}

/// Parsed metadata of a segment's documents, built on the first filtered search and shared by snapshots.
#[derive(Default)]
pub struct MetaCache(OnceLock<Vec<Option<Value>>>);

impl MetaCache {
    /// The parsed metadata of every document of `shard` (None where there is none).
    pub fn get(&self, shard: &Shard) -> &[Option<Value>] {
        self.0.get_or_init(|| {
            (0..shard.len())
                .map(|d| {
                    let p = shard.payload(d);
                    if p.is_empty() {
                        None
                    } else {
                        serde_json::from_slice(p).ok()
                    }
                })
                .collect()
        })
    }
}

pub(super) struct Segment {
    pub(super) id: u64,
    pub(super) shard: Arc<Shard>,
    pub(super) durable: bool,
    /// Memory segments: the sequence number of the record that created it.
    pub(super) max_seq: u64,
    pub(super) deleted: Arc<Bitset>,
    /// Durable segments: the tombstone sidecar the manifest on disk names (None: none, or deletions inline in
    /// an older manifest). Deletions only grow, so a count other than `deleted.ones()` means they changed.
    pub(super) tomb: Option<TombstoneRef>,
    pub(super) meta: Arc<MetaCache>,
}

pub(super) struct State {
    /// Durable segments (by id), then memory segments (by id = creation order).
    pub(super) segments: Vec<Segment>,
    /// A persistent map: a snapshot's copy is O(1) and shares structure with it.
    pub(super) ids: imbl::HashMap<String, Loc>,
    pub(super) last_seq: u64,
    pub(super) flushed_seq: u64,
    /// The collection codebook (None before the first flush trains it).
    pub(super) codebook: Option<super::codebook::Current>,
    /// Bytes of shard files written by flushes and by compactions (persisted in the manifest).
    pub(super) flushed_bytes: u64,
    pub(super) compacted_bytes: u64,
}

impl State {
    /// Durable shards coded with another codebook than the collection's current one (written before a
    /// re-training): their approximate scores are coarser until they are re-coded.
    pub(super) fn stale_shards(&self) -> impl Iterator<Item = &Segment> + '_ {
        let current = self.codebook.as_ref().map(|c| &c.book);
        self.segments.iter().filter(move |s| {
            s.durable
                && current
                    .is_some_and(|cur| s.shard.codebook_arc().is_some_and(|b| !Arc::ptr_eq(b, cur)))
        })
    }

    pub(super) fn segment(&self, id: u64) -> Option<&Segment> {
        self.segments.iter().find(|s| s.id == id)
    }

    pub(super) fn tombstone(&mut self, loc: Loc) {
        if let Some(s) = self.segments.iter_mut().find(|s| s.id == loc.seg) {
            Arc::make_mut(&mut s.deleted).set(loc.doc as usize);
        }
    }

    pub(super) fn apply(&mut self, op: WriteOp, seq: u64, next_segment: &AtomicU64) -> usize {
        match op {
            WriteOp::Upsert { shard } => {
                let id = next_segment.fetch_add(1, Ordering::SeqCst);
                let n = shard.len();
                for d in 0..n {
                    if let Some(old) = self.ids.insert(
                        shard.id(d).to_string(),
                        Loc {
                            seg: id,
                            doc: d as u32,
                        },
                    ) {
                        self.tombstone(old);
                    }
                }
                let seg = Segment {
                    id,
                    shard,
                    durable: false,
                    max_seq: seq,
                    deleted: Arc::new(Bitset::new(n)),
                    tomb: None,
                    meta: Arc::default(),
                };
                self.segments.push(seg);
                n
            }
            WriteOp::Delete { ids } => {
                let mut n = 0;
                for id in ids {
                    if let Some(old) = self.ids.remove(&id) {
                        self.tombstone(old);
                        n += 1;
                    }
                }
                n
            }
        }
    }

    /// The manifest of this state, naming the tombstone sidecars of `pending` (about to be written) and, for
    /// the other durable segments, the ones on disk.
    pub(super) fn manifest(
        &self,
        next_segment_id: u64,
        pending: &[super::tombstones::Pending],
    ) -> Manifest {
        Manifest {
            format_version: MANIFEST_VERSION,
            flushed_seq: self.flushed_seq,
            next_segment_id,
            segments: self
                .segments
                .iter()
                .filter(|s| s.durable)
                .map(|s| SegmentEntry {
                    id: s.id,
                    docs: s.shard.len(),
                    deleted: Vec::new(),
                    tombstones: pending
                        .iter()
                        .find(|p| p.id == s.id)
                        .map(|p| p.tomb)
                        .or(s.tomb),
                })
                .collect(),
            codebook: self.codebook.as_ref().map(|c| c.entry.clone()),
            flushed_bytes: self.flushed_bytes,
            compacted_bytes: self.compacted_bytes,
            // Every open collection's log has its control file (recovery creates it before the first write).
            log_control: true,
        }
    }

    /// The live documents of every segment, with their tombstones (for sampling).
    pub(super) fn live_segments(&self) -> Vec<(Arc<Shard>, Arc<Bitset>)> {
        self.segments
            .iter()
            .map(|s| (s.shard.clone(), s.deleted.clone()))
            .collect()
    }

    pub(super) fn sort(&mut self) {
        self.segments.sort_by_key(|s| (!s.durable, s.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn bitset_counts_and_iterates() {
        let mut b = Bitset::new(130);
        for i in [0, 64, 129, 64] {
            b.set(i);
        }
        assert_eq!(b.ones(), 3);
        assert!(b.get(129) && !b.get(1) && !b.get(1000));
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![0, 64, 129]);
    }
}
