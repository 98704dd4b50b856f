//! Background work: flushing the memtable into a shard file and compacting shards, on the maintenance thread
//! (or when a caller asks). Both stop at their next check when the collection starts closing.
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;

use chamfer_index::shard::{remove_shard_files, Shard, ShardDoc};
use chamfer_index::tokens::TokenMatrix;
use chamfer_index::IndexError;

use crate::error::ServiceError;

use super::sequencer::Cmd;
use super::sequencer::{Install, NewSegment};
use super::state::{Bitset, Loc, Segment};
use super::{closing, closing_error, lock, Collection};

/// Memory segments that trigger a flush whatever their size (each costs a little per search).
const MAX_MEMORY_SEGMENTS: usize = 64;

impl Collection {
    // ----- background work --------------------------------------------------------------------------------

    pub(super) fn needs_flush(&self) -> bool {
        let st = lock(&self.state);
        let mem = st.segments.iter().filter(|s| !s.durable);
        let (count, live) = mem.fold((0, 0), |(c, l), s| {
            (c + 1, l + s.shard.len() - s.deleted.ones())
        });
        live >= self.tuning.flush_threshold_docs || count >= MAX_MEMORY_SEGMENTS
    }

    pub(super) fn needs_compaction(&self) -> bool {
        let st = lock(&self.state);
        let durable: Vec<&Segment> = st.segments.iter().filter(|s| s.durable).collect();
        let docs: usize = durable.iter().map(|s| s.shard.len()).sum();
        let deleted: usize = durable.iter().map(|s| s.deleted.ones()).sum();
        durable.len() > self.tuning.compaction_max_shards || (deleted > 0 && deleted * 5 >= docs)
    }

    /// Wakes the maintenance thread when a flush or compaction is due.
    pub fn nudge_if_needed(&self) {
        if self.needs_flush() || self.needs_compaction() {
            if let Some(tx) = lock(&self.maint_tx).as_ref() {
                let _ = tx.try_send(());
            }
        }
    }

    pub(super) fn maintenance(&self, rx: mpsc::Receiver<()>) {
        while rx.recv().is_ok() {
            if self.needs_flush() {
                if let Err(e) = self.flush() {
                    self.background_failed("flush", &e);
                }
            }
            if self.needs_compaction() {
                if let Err(e) = self.compact() {
                    self.background_failed("compaction", &e);
                }
            }
        }
    }

    pub(super) fn background_failed(&self, what: &str, e: &ServiceError) {
        if self.is_closing() {
            tracing::info!(collection = %self.config.name, error = %e, "background {what} abandoned: the collection is closing");
            return;
        }
        // Disk full, whether from the log or a shard write (said without server paths: /readyz shows it).
        if e.status().code == "storage_full" {
            *lock(&self.storage_full) = Some(e.public_message());
        }
        tracing::error!(collection = %self.config.name, error = %e, "background {what} failed");
    }

    /// The cancellation check of flush and compaction.
    pub(super) fn check_open(&self) -> Result<(), ServiceError> {
        if self.is_closing() {
            Err(closing())
        } else {
            Ok(())
        }
    }

    /// Writes every memory segment into one new shard file, then drops the log up to that point. Blocking.
    pub fn flush(&self) -> Result<(), ServiceError> {
        let _guard = lock(&self.maint_lock);
        self.check_open()?;
        let rotated = self.call(|reply| Cmd::Rotate { reply })?;
        let picked: Vec<(u64, Arc<Shard>, Arc<Bitset>)> = lock(&self.state)
            .segments
            .iter()
            .filter(|s| !s.durable && s.max_seq <= rotated.last_seq)
            .map(|s| (s.id, s.shard.clone(), s.deleted.clone()))
            .collect();
        if picked.is_empty() && rotated.closed.is_empty() {
            return Ok(());
        }
        let add = self.build_segment(&picked)?;
        let started = std::time::Instant::now();
        if let Err(e) = self.check_open() {
            self.discard(&add);
            return Err(e);
        }
        let install = Install {
            remove: picked.iter().map(|p| p.0).collect(),
            add,
            flushed_seq: Some(rotated.last_seq),
            obsolete_wal: rotated.closed,
            obsolete_segments: vec![],
        };
        self.call(|reply| Cmd::Install { install, reply })?;
        tracing::info!(collection = %self.config.name, segments = picked.len(), flushed_seq = rotated.last_seq,
            install_ms = started.elapsed().as_millis() as u64, "flushed the memtable");
        Ok(())
    }

    /// Merges every durable shard into one, dropping deleted documents. Blocking. False when there was
    /// nothing to do.
    pub fn compact(&self) -> Result<bool, ServiceError> {
        let _guard = lock(&self.maint_lock);
        self.check_open()?;
        let picked: Vec<(u64, Arc<Shard>, Arc<Bitset>)> = lock(&self.state)
            .segments
            .iter()
            .filter(|s| s.durable)
            .map(|s| (s.id, s.shard.clone(), s.deleted.clone()))
            .collect();
        if picked.len() < 2 && picked.iter().all(|p| p.2.ones() == 0) {
            return Ok(false);
        }
        let add = self.build_segment(&picked)?;
        if let Err(e) = self.check_open() {
            self.discard(&add);
            return Err(e);
        }
        let ids: Vec<u64> = picked.iter().map(|p| p.0).collect();
        let install = Install {
            remove: ids.clone(),
            add,
            flushed_seq: None,
            obsolete_wal: vec![],
            obsolete_segments: ids,
        };
        self.call(|reply| Cmd::Install { install, reply })?;
        tracing::info!(collection = %self.config.name, merged = picked.len(), "compacted the shards");
        Ok(true)
    }

    /// Removes the files of a shard that was built but will not be installed.
    pub(super) fn discard(&self, add: &Option<NewSegment>) {
        if let Some((id, _, _)) = add {
            if let Err(e) = remove_shard_files(&self.layout.segment(*id)) {
                tracing::warn!(collection = %self.config.name, error = %e, "cannot remove an abandoned shard");
            }
        }
    }

    /// Writes the live documents of `picked` into a new shard file (None when none is live).
    pub(super) fn build_segment(
        &self,
        picked: &[(u64, Arc<Shard>, Arc<Bitset>)],
    ) -> Result<Option<NewSegment>, ServiceError> {
        let mut origin = Vec::new();
        let mut tokens = Vec::new();
        for (sid, shard, deleted) in picked {
            for d in (0..shard.len()).filter(|&d| !deleted.get(d)) {
                origin.push(Loc {
                    seg: *sid,
                    doc: d as u32,
                });
                tokens.push(shard.tokens(d));
            }
        }
        if origin.is_empty() {
            return Ok(None);
        }
        let dim = self.config.dimension;
        let shard_of = |o: &Loc| {
            &picked
                .iter()
                .find(|p| p.0 == o.seg)
                .expect("origin segment is picked")
                .1
        };
        let docs = origin
            .iter()
            .zip(&tokens)
            .map(|(o, t)| {
                let s = shard_of(o);
                Ok(ShardDoc {
                    id: s.id(o.doc as usize),
                    tokens: TokenMatrix::new(t, dim, "document")?,
                    payload: s.payload(o.doc as usize),
                })
            })
            .collect::<Result<Vec<_>, IndexError>>()?;
        let id = self.next_segment.fetch_add(1, Ordering::SeqCst);
        let path = self.layout.segment(id);
        // Stops early (and removes its files) when the collection starts closing: shutdown and drop never wait
        // for a long compaction.
        let closing = || self.is_closing();
        match Shard::write_cancellable(&path, &self.config.params, &docs, &|_| {}, &closing) {
            Ok(()) => {}
            Err(IndexError::Cancelled(_)) => return Err(closing_error()),
            Err(e) => return Err(e.into()),
        }
        let shard = Shard::open(&path)?;
        if shard.graph().is_none() && !shard.is_empty() {
            shard.scan_layout();
        }
        Ok(Some((id, Arc::new(shard), origin)))
    }
}
