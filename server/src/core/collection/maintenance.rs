//! Background work: flushing the memtable into a shard file and compacting shards, on the maintenance thread
//! (or when a caller asks). Both stop at their next check when the collection starts closing.
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chamfer_index::codebook::Codebook;
use chamfer_index::shard::{remove_shard_files, Shard, ShardDoc};
use chamfer_index::tokens::TokenMatrix;
use chamfer_index::IndexError;

use crate::error::ServiceError;

use super::codebook::{self, Current};
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
        self.pick_compaction().is_some()
    }

    /// The durable shards the tiered policy would merge next (see [`pick_compaction`]).
    fn pick_compaction(&self) -> Option<Vec<u64>> {
        pick_compaction(&self.durable_sizes(), &self.policy())
    }

    /// The durable shards' sizes, as the compaction policy sees them.
    fn durable_sizes(&self) -> Vec<ShardSize> {
        lock(&self.state)
            .segments
            .iter()
            .filter(|s| s.durable)
            .map(ShardSize::of)
            .collect()
    }

    /// The compaction policy of this collection's tuning and parameters.
    pub(super) fn policy(&self) -> TierPolicy {
        TierPolicy::new(
            self.tuning.flush_threshold_docs,
            self.tuning.compaction_max_shards,
            self.config.params.hnsw.min_docs,
        )
    }

    /// Wakes the maintenance thread when a flush or compaction is due (takes the state lock: not for async
    /// workers, see [`Collection::nudge`]).
    pub fn nudge_if_needed(&self) {
        if self.needs_flush() || self.needs_compaction() {
            self.nudge();
        }
    }

    /// Wakes the maintenance thread, which checks what is due. Lock-free: the overload refusal of an upsert
    /// calls it on an async worker.
    pub fn nudge(&self) {
        if let Some(tx) = self.maint_tx.load().as_ref() {
            let _ = tx.try_send(());
        }
    }

    pub(super) fn maintenance(self: &Arc<Self>, rx: mpsc::Receiver<()>) {
        // The last write seen, and since when: idle time gates the re-coding of stale shards.
        let mut seen = (self.last_seq(), Instant::now());
        loop {
            let tick = self
                .tuning
                .recode_after_idle
                .map_or(Duration::from_secs(3600), |d| {
                    (d / 2).max(Duration::from_millis(10))
                });
            match rx.recv_timeout(tick) {
                Ok(()) => self.flush_and_merge(),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let Some(after) = self.tuning.recode_after_idle else {
                continue;
            };
            // Shards coded with an older codebook generation are re-coded with the current one, one at a time,
            // while no write arrives (a write abandons the shard in progress; it is picked again later).
            loop {
                let seq = self.last_seq();
                if seq != seen.0 {
                    seen = (seq, Instant::now());
                }
                if self.is_closing()
                    || seen.1.elapsed() < after
                    || self.needs_flush()
                    || self.needs_compaction()
                {
                    break;
                }
                match self.recode_stale(seq) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        self.background_failed("re-coding", &e);
                        // Tried again after another idle period, not at every tick.
                        seen.1 = Instant::now();
                        break;
                    }
                }
            }
        }
    }

    /// A flush when one is due, then tiered merges until the policy has nothing left to do.
    fn flush_and_merge(self: &Arc<Self>) {
        if self.needs_flush() {
            if let Err(e) = self.flush() {
                self.background_failed("flush", &e);
            }
            self.retrain_in_background();
        }
        // Tiered merges until the policy has nothing left to do (each merge lowers the shard count or
        // clears a shard's deletions, so this ends).
        while self.needs_compaction() && !self.is_closing() {
            match self.compact_tiered() {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    self.background_failed("compaction", &e);
                    break;
                }
            }
        }
    }

    /// The maintenance lock for a flush or compaction: counted while waiting, so that a re-coding in progress
    /// gives way ([`Collection::recode_stale`]).
    fn maint_turn(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.maint_waiting.fetch_add(1, Ordering::SeqCst);
        let guard = lock(&self.maint_lock);
        self.maint_waiting.fetch_sub(1, Ordering::SeqCst);
        guard
    }

    /// The sequence number of the last applied write.
    fn last_seq(&self) -> u64 {
        lock(&self.state).last_seq
    }

    /// The stale durable shards (see [`State::stale_shards`]), smallest first.
    fn stale(&self) -> Vec<ShardSize> {
        let st = lock(&self.state);
        let mut out: Vec<ShardSize> = st.stale_shards().map(ShardSize::of).collect();
        out.sort_by_key(|s| (s.live(), s.id));
        out
    }

    /// Rewrites the smallest stale shard with the current codebook (its documents' codes re-assigned, its
    /// deleted documents dropped), unless a write arrives after sequence `quiet_since` meanwhile: then the work
    /// is abandoned (false), so that re-coding never competes with ingest. False also when no shard is stale.
    pub(super) fn recode_stale(&self, quiet_since: u64) -> Result<bool, ServiceError> {
        let _guard = lock(&self.maint_lock);
        self.check_open()?;
        let Some(target) = self.stale().first().copied() else {
            return Ok(false);
        };
        // A write, or a flush or compaction asked for meanwhile (it would wait for this lock), abandons it.
        let interrupted =
            || self.last_seq() != quiet_since || self.maint_waiting.load(Ordering::SeqCst) > 0;
        match self.rewrite(&[target.id], Rewrite::Recode, &interrupted) {
            Ok(done) => {
                if done {
                    tracing::info!(collection = %self.config.name, shard = target.id, docs = target.live(),
                        "re-coded a shard with the current codebook");
                }
                Ok(done)
            }
            // The build's cancellation (Unavailable) while open: the interruption asked for, not a failure.
            Err(ServiceError::Unavailable(_)) if interrupted() && !self.is_closing() => {
                tracing::debug!(collection = %self.config.name, shard = target.id,
                    "re-coding abandoned: a write arrived");
                Ok(false)
            }
            Err(e) => Err(e),
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
        let _guard = self.maint_turn();
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
        let (book, trained) = self.ensure_codebook()?;
        // Held-out tokens of the new documents: the drift check after the install.
        let recent = codebook::sample_tokens(
            &picked
                .iter()
                .map(|p| (p.1.clone(), p.2.clone()))
                .collect::<Vec<_>>(),
            self.config.dimension,
            DRIFT_SAMPLE_TOKENS,
            rotated.last_seq,
        );
        let add = self.build_segment(&picked, book.as_ref(), &|| false)?;
        let started = Instant::now();
        if let Err(e) = self.check_open() {
            self.discard(&add);
            return Err(e);
        }
        let install = Install {
            remove: picked.iter().map(|p| p.0).collect(),
            bytes_written: written_bytes(&add),
            add,
            flushed_seq: Some(rotated.last_seq),
            obsolete_wal: rotated.closed,
            obsolete_segments: vec![],
            codebook: trained,
        };
        self.call(|reply| Cmd::Install { install, reply })?;
        tracing::info!(collection = %self.config.name, segments = picked.len(), flushed_seq = rotated.last_seq,
            install_ms = started.elapsed().as_millis() as u64, "flushed the memtable");
        *lock(&self.recent_tokens) = recent;
        Ok(())
    }

    /// The codebook new shards are coded with: the collection's, or (first flush of a collection with
    /// `codebook_size > 0`) one trained now on every live document, its file written and synced, to be recorded
    /// by the install that follows. None for collections without a codebook.
    fn ensure_codebook(&self) -> Result<(Option<Arc<Codebook>>, Option<Current>), ServiceError> {
        if self.config.params.codebook_size == 0 {
            return Ok((None, None));
        }
        let (segments, live_docs, generation) = {
            let st = lock(&self.state);
            if let Some(c) = &st.codebook {
                return Ok((Some(c.book.clone()), None));
            }
            (st.live_segments(), st.ids.len() as u64, 1)
        };
        let trained = self.train_codebook(&segments, live_docs, generation)?;
        Ok((trained.as_ref().map(|c| c.book.clone()), trained))
    }

    /// Trains generation `generation` on `segments` and writes its file (not yet named by the manifest).
    fn train_codebook(
        &self,
        segments: &[(Arc<Shard>, Arc<Bitset>)],
        live_docs: u64,
        generation: u64,
    ) -> Result<Option<Current>, ServiceError> {
        let started = Instant::now();
        let closing = || self.is_closing();
        let Some((book, mut entry)) = codebook::train(
            &self.config.params,
            segments,
            generation,
            live_docs,
            &closing,
        ) else {
            self.check_open()?;
            return Ok(None);
        };
        self.check_open()?;
        let path = self.layout.codebook(generation);
        entry.crc32 = codebook::write(&path, self.config.dimension, generation, &book)?;
        tracing::info!(collection = %self.config.name, generation, centroids = book.len(), live_docs,
            train_ms = started.elapsed().as_millis() as u64, "trained the collection codebook");
        Ok(Some(Current {
            entry,
            book: Arc::new(book),
        }))
    }

    /// Starts re-training the collection codebook on a thread of its own when it is too small for the
    /// collection or the data drifted (see `codebook`), using the held-out tokens of the last flush. Writes,
    /// searches, flushes and merges go on meanwhile (with the current codebook); the new one is recorded by an
    /// install and used from then on. One re-training at a time.
    pub(super) fn retrain_in_background(self: &Arc<Self>) {
        let recent = std::mem::take(&mut *lock(&self.recent_tokens));
        if recent.is_empty() || self.is_closing() || self.retraining.swap(true, Ordering::SeqCst) {
            return;
        }
        let c = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("chamfer-train-{}", self.config.name))
            .spawn(move || {
                if let Err(e) = c.retrain_if_needed(&recent) {
                    c.background_failed("codebook re-training", &e);
                }
                c.retraining.store(false, Ordering::SeqCst);
            });
        match spawned {
            Ok(handle) => lock(&self.threads).push(handle),
            Err(e) => {
                self.retraining.store(false, Ordering::SeqCst);
                tracing::warn!(collection = %self.config.name, error = %e, "cannot start a re-training thread");
            }
        }
    }

    pub(super) fn retrain_if_needed(&self, recent: &[f32]) -> Result<(), ServiceError> {
        let (segments, live_docs, current) = {
            let st = lock(&self.state);
            let Some(current) = st.codebook.clone() else {
                return Ok(());
            };
            (st.live_segments(), st.ids.len() as u64, current)
        };
        let tokens: u64 = segments.iter().map(|(s, _)| s.total_tokens()).sum();
        let Some(reason) =
            codebook::retrain_reason(&self.config.params, &current, live_docs, tokens, recent)
        else {
            return Ok(());
        };
        tracing::info!(collection = %self.config.name, %reason, "re-training the collection codebook");
        let Some(new) = self.train_codebook(&segments, live_docs, current.entry.generation + 1)?
        else {
            return Ok(());
        };
        if new.book.len() <= current.book.len() && reason.starts_with("the collection grew") {
            // The sample could not support a larger codebook (deleted documents): keep the current one.
            let _ = std::fs::remove_file(self.layout.codebook(new.entry.generation));
            return Ok(());
        }
        let install = Install {
            remove: vec![],
            add: None,
            flushed_seq: None,
            obsolete_wal: vec![],
            obsolete_segments: vec![],
            codebook: Some(new),
            bytes_written: 0,
        };
        self.call(|reply| Cmd::Install { install, reply })
    }

    /// Merges the durable shards into as few as the size cap allows (explicit request: `POST .../compact`),
    /// dropping deleted documents: one shard when the collection fits [`TierPolicy::max_docs`], else groups of
    /// at most that many documents (smallest first), so that a merge never needs a graph nor decoded tokens in
    /// memory. Blocking. False when there was nothing to do. Background work never does this: it merges by size
    /// tier ([`Collection::compact_tiered`]).
    pub fn compact(&self) -> Result<bool, ServiceError> {
        let _guard = self.maint_turn();
        self.check_open()?;
        let mut shards = self.durable_sizes();
        shards.sort_by_key(|s| (s.live(), s.id));
        let cap = self.policy().max_docs;
        let mut groups: Vec<Vec<ShardSize>> = Vec::new();
        for s in shards {
            match groups.last_mut() {
                Some(g) if g.iter().map(|x| x.live()).sum::<usize>() + s.live() <= cap => g.push(s),
                _ => groups.push(vec![s]),
            }
        }
        let mut any = false;
        for g in groups {
            if g.len() > 1 || g.iter().any(|s| s.deleted > 0) {
                let ids: Vec<u64> = g.iter().map(|s| s.id).collect();
                any |= self.rewrite(&ids, Rewrite::All, &|| false)?;
            }
        }
        Ok(any)
    }

    /// One step of the tiered policy ([`pick_compaction`]): merges the shards it picks. Blocking. False when
    /// there was nothing to do.
    pub fn compact_tiered(&self) -> Result<bool, ServiceError> {
        let _guard = self.maint_turn();
        self.check_open()?;
        match self.pick_compaction() {
            Some(ids) => self.rewrite(&ids, Rewrite::Tiered, &|| false),
            None => Ok(false),
        }
    }

    /// Rewrites the durable shards `ids` as one, without their deleted documents (maintenance lock held), coded
    /// with the current codebook, except a tiered merge of shards sharing an older one (see below).
    /// `interrupted` abandons it (an error, its files removed) as closing does.
    fn rewrite(
        &self,
        ids: &[u64],
        why: Rewrite,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<bool, ServiceError> {
        let picked: Vec<(u64, Arc<Shard>, Arc<Bitset>)> = lock(&self.state)
            .segments
            .iter()
            .filter(|s| s.durable && ids.contains(&s.id))
            .map(|s| (s.id, s.shard.clone(), s.deleted.clone()))
            .collect();
        let nothing_to_drop = picked.len() < 2 && picked.iter().all(|p| p.2.ones() == 0);
        if picked.is_empty() || (nothing_to_drop && why != Rewrite::Recode) {
            return Ok(false);
        }
        let (current, trained) = self.ensure_codebook()?;
        // A tiered merge of shards that all share one older codebook keeps it (codes copied, nothing
        // re-assigned): moving documents to the current codebook is left to the idle re-coding, so merges
        // during an ingest never compete with it for the CPU. Merges of mixed generations use the current one.
        let book = match why {
            Rewrite::Tiered => shared_codebook(&picked).or(current),
            Rewrite::All | Rewrite::Recode => current,
        };
        let add = self.build_segment(&picked, book.as_ref(), interrupted)?;
        if let Err(e) = self.check_open() {
            self.discard(&add);
            return Err(e);
        }
        let ids: Vec<u64> = picked.iter().map(|p| p.0).collect();
        let install = Install {
            remove: ids.clone(),
            bytes_written: written_bytes(&add),
            add,
            flushed_seq: None,
            obsolete_wal: vec![],
            obsolete_segments: ids,
            codebook: trained,
        };
        self.call(|reply| Cmd::Install { install, reply })?;
        let docs: usize = picked.iter().map(|p| p.1.len() - p.2.ones()).sum();
        if why != Rewrite::Recode {
            tracing::info!(collection = %self.config.name, merged = picked.len(), docs, all = why == Rewrite::All,
                "compacted shards");
        }
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

    /// Writes the live documents of `picked` into a new shard file (None when none is live), coded with `book`
    /// (codes copied from documents already coded with it). Tokens are copied packed, never held in memory,
    /// unless the shard is large enough for a graph (or the collection has no codebook): those are written from
    /// decoded documents.
    pub(super) fn build_segment(
        &self,
        picked: &[(u64, Arc<Shard>, Arc<Bitset>)],
        book: Option<&Arc<Codebook>>,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<Option<NewSegment>, ServiceError> {
        let mut origin = Vec::new();
        let mut sources: Vec<(&Shard, u32)> = Vec::new();
        for (sid, shard, deleted) in picked {
            for d in (0..shard.len()).filter(|&d| !deleted.get(d)) {
                origin.push(Loc {
                    seg: *sid,
                    doc: d as u32,
                });
                sources.push((shard, d as u32));
            }
        }
        if origin.is_empty() {
            return Ok(None);
        }
        let id = self.next_segment.fetch_add(1, Ordering::SeqCst);
        let path = self.layout.segment(id);
        // Stops early (and removes its files) when the collection starts closing: shutdown and drop never wait
        // for a long compaction.
        let closing = || self.is_closing() || interrupted();
        let params = &self.config.params;
        let written = match book {
            Some(book) if sources.len() < params.hnsw.min_docs.max(1) => {
                Shard::write_merged(&path, params, &sources, book, &|_| {}, &closing)
            }
            _ => {
                let dim = self.config.dimension;
                let tokens: Vec<Vec<f32>> =
                    sources.iter().map(|(s, d)| s.tokens(*d as usize)).collect();
                let docs = sources
                    .iter()
                    .zip(&tokens)
                    .map(|((s, d), t)| {
                        Ok(ShardDoc {
                            id: s.id(*d as usize),
                            tokens: TokenMatrix::new(t, dim, "document")?,
                            payload: s.payload(*d as usize),
                        })
                    })
                    .collect::<Result<Vec<_>, IndexError>>()?;
                Shard::write_with_codebook(&path, params, &docs, book.cloned(), &|_| {}, &closing)
            }
        };
        match written {
            Ok(()) => {}
            Err(IndexError::Cancelled(_)) => return Err(closing_error()),
            Err(e) => return Err(e.into()),
        }
        let mut shard = Shard::open(&path)?;
        if let Some(book) = book {
            shard.share_codebook(book);
        }
        if shard.graph().is_none() && shard.codebook().is_none() && !shard.is_empty() {
            shard.scan_layout();
        }
        Ok(Some((id, Arc::new(shard), origin)))
    }
}

/// The codebook every shard of `picked` was coded with, if they share one.
fn shared_codebook(picked: &[(u64, Arc<Shard>, Arc<Bitset>)]) -> Option<Arc<Codebook>> {
    let first = picked.first()?.1.codebook_arc()?;
    picked
        .iter()
        .all(|p| p.1.codebook_arc().is_some_and(|b| Arc::ptr_eq(b, first)))
        .then(|| first.clone())
}

/// Why shards are rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rewrite {
    /// A step of the tiered policy.
    Tiered,
    /// An explicit compaction of everything.
    All,
    /// A stale shard moved to the current codebook (see [`Collection::recode_stale`]).
    Recode,
}

/// Bytes a flush or compaction wrote: the new shard file and its graph files.
fn written_bytes(add: &Option<NewSegment>) -> u64 {
    add.as_ref()
        .map_or(0, |(_, s, _)| s.byte_len() as u64 + s.graph_bytes())
}

/// Held-out tokens of a flush on which drift is measured.
const DRIFT_SAMPLE_TOKENS: usize = 4096;
/// Largest shard a merge produces, in documents (further capped below the graph threshold).
pub(super) const MAX_MERGED_DOCS: usize = 1 << 19;

/// A durable shard as the compaction policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ShardSize {
    /// Segment id.
    pub id: u64,
    /// Documents in the file, deleted ones included.
    pub docs: usize,
    /// Deleted (or overwritten) documents.
    pub deleted: usize,
}

impl ShardSize {
    fn of(s: &Segment) -> ShardSize {
        ShardSize {
            id: s.id,
            docs: s.shard.len(),
            deleted: s.deleted.ones(),
        }
    }

    fn live(&self) -> usize {
        self.docs - self.deleted.min(self.docs)
    }
}

/// The size-tiered compaction policy (ARCHITECTURE.md, "Compaction").
///
/// Shards are grouped in tiers by live documents: tier `t` holds `[base x F^t, base x F^(t+1))` (tier 0 everything
/// below `base x F`), with `base` the flush threshold and `F` the fan-in. When a tier holds `F` shards that are
/// not full, its `F` smallest are merged (fewer when their sum would pass the size cap), so every document is
/// rewritten about once per tier: `log_F(cap / base)` times in all, whatever the collection's size. A shard is
/// full at half the cap; full shards are only rewritten for their deletions: a shard with at least a fifth of
/// its documents deleted is rewritten alone (first, since it wastes space and search time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TierPolicy {
    /// Live documents of tier 0's shards (the flush threshold).
    pub base: usize,
    /// Shards of one tier merged together.
    pub fan_in: usize,
    /// Largest merged shard, in documents.
    pub max_docs: usize,
}

impl TierPolicy {
    /// The policy for a flush threshold, a fan-in and the graph threshold `hnsw.min_docs` (merges stay below it
    /// when it is well above the flush threshold: server shards are searched by their inverted file, and a graph
    /// would cost minutes per merge for no default plan).
    pub(super) fn new(flush_threshold: usize, fan_in: usize, graph_min_docs: usize) -> TierPolicy {
        let base = flush_threshold.max(1);
        let max_docs = if graph_min_docs > base.saturating_mul(2) {
            MAX_MERGED_DOCS.min(graph_min_docs - 1)
        } else {
            MAX_MERGED_DOCS
        };
        TierPolicy {
            base,
            fan_in: fan_in.max(2),
            max_docs,
        }
    }

    fn tier(&self, live: usize) -> u32 {
        let mut t = 0;
        let mut upper = self.base.saturating_mul(self.fan_in);
        while live >= upper && upper < usize::MAX {
            t += 1;
            upper = upper.saturating_mul(self.fan_in);
        }
        t
    }
}

/// The durable shards to rewrite next (one merge), or None. See [`TierPolicy`].
pub(super) fn pick_compaction(shards: &[ShardSize], policy: &TierPolicy) -> Option<Vec<u64>> {
    // Deletions first: the shard with the largest deleted share, alone.
    if let Some(s) = shards
        .iter()
        .filter(|s| s.deleted > 0 && s.deleted.saturating_mul(5) >= s.docs)
        .max_by(|a, b| {
            (a.deleted as f64 / a.docs.max(1) as f64)
                .total_cmp(&(b.deleted as f64 / b.docs.max(1) as f64))
                .then(b.id.cmp(&a.id))
        })
    {
        return Some(vec![s.id]);
    }
    let mut open: Vec<&ShardSize> = shards
        .iter()
        .filter(|s| s.live().saturating_mul(2) < policy.max_docs)
        .collect();
    open.sort_by_key(|s| (policy.tier(s.live()), s.live(), s.id));
    let mut at = 0;
    while at < open.len() {
        let tier = policy.tier(open[at].live());
        let end = at
            + open[at..]
                .iter()
                .take_while(|s| policy.tier(s.live()) == tier)
                .count();
        if end - at >= policy.fan_in {
            let mut group: Vec<&ShardSize> = open[at..at + policy.fan_in].to_vec();
            while group.len() > 2 && group.iter().map(|s| s.live()).sum::<usize>() > policy.max_docs
            {
                group.pop();
            }
            if group.iter().map(|s| s.live()).sum::<usize>() <= policy.max_docs {
                return Some(group.iter().map(|s| s.id).collect());
            }
        }
        at = end;
    }
    None
}
