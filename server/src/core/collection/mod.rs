//! One collection: durable writes, segments, tombstones, snapshots, flush and compaction.
//!
//! # Model
//!
//! A collection is a list of *segments*, each an engine [`Shard`]: *durable* ones (shard files named in the
//! manifest) and *memory* ones (one per acknowledged upsert batch, built in memory with the same bytes and no
//! graph). A delete or an overwrite never touches a shard: it sets the document's bit in its segment's
//! *tombstone* bitset, and the external-id map (`id -> (segment, doc)`) moves to the new version. External ids
//! are therefore stable and never renumbered.
//!
//! # One mutator
//!
//! Every change goes through the collection's *sequencer* thread, in sequence-number order:
//!
//! 1. a request is validated and its memory shard built (FDE encoding) on the CPU pool, off the async workers;
//! 2. the sequencer takes every write queued meanwhile, appends them to the write-ahead log and fsyncs ONCE
//!    (group commit), then applies them to the state, publishes a new snapshot and only then acknowledges them
//!    (so an acknowledged write is durable and immediately visible);
//! 3. flush and compaction build their shard files on the maintenance thread, then hand an `Install` to the
//!    sequencer, which swaps segments, carries over tombstones set in the meantime, writes the manifest and only
//!    then deletes the obsolete log files or shard files.
//!
//! # Snapshots
//!
//! A search takes the current [`Snapshot`] (an `Arc`): segment shards, their tombstone bitsets (copy-on-write,
//! shared until modified) and an engine `Searcher`. It sees exactly the writes acknowledged before it started,
//! however long it runs and whatever is ingested, flushed or compacted meanwhile. `get` and `stats` read the
//! snapshot too (its id map is a persistent map, copied in O(1) at publish; its statistics are computed once
//! there), so no reader ever waits on the `state` mutex the sequencer holds while it applies writes or installs
//! segments.
//!
//! # Files
//!
//! `mod.rs` the collection and its public API; `state.rs` segments, tombstones and the id map; `sequencer.rs`
//! the one mutator thread (group commit, install); `maintenance.rs` flush and compaction; `recovery.rs` opening
//! a directory (manifest, shards, log replay); `upsert.rs` the write path (an upsert's codes, memory segment and
//! log record: the collection encodes its records).
mod codebook;
#[cfg(test)]
mod lifecycle_tests;
mod maintenance;
mod recovery;
mod sequencer;
mod state;
mod tombstones;
mod upsert;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::{ArcSwap, ArcSwapOption};
use chamfer_index::codebook::Codebook;
use chamfer_index::search::Searcher;
use chamfer_index::shard::{Coding, Shard, ShardDoc};
use chamfer_index::IndexError;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::oneshot;

use super::manifest::{self, CollectionConfig, Layout, Manifest, MANIFEST_VERSION};
use super::wal::WalWriter;
use crate::core::storage_error::StorageError;
use crate::error::ServiceError;
use chamfer_index::fsutil;

use recovery::recover;
use sequencer::Cmd;
use state::State;
pub use state::{Bitset, MetaCache};
pub use upsert::{PreparedUpsert, Widening};

type Reply<T> = oneshot::Sender<Result<T, ServiceError>>;

/// Locks a mutex (parking_lot: no poisoning; state is only mutated by the sequencer, which does not panic
/// mid-update). None of the collection's mutexes is taken on an async worker.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
}

/// What one write does once it is in the log.
pub enum WriteOp {
    /// A validated batch, already built into a memory shard.
    Upsert {
        /// The batch's memory shard (FDE-encoded, no graph).
        shard: Arc<Shard>,
    },
    /// Deletes documents by id (unknown ids are ignored).
    Delete {
        /// External ids to delete.
        ids: Vec<String>,
    },
}

/// The acknowledgement of a durable write.
#[derive(Clone, Copy, Debug)]
pub struct WriteAck {
    /// Sequence number of the write's log record.
    pub seq: u64,
    /// Documents written (upsert) or that existed and were deleted (delete).
    pub affected: usize,
}

/// One segment as a search sees it.
pub struct SegView {
    /// The segment id (what the id map's locations name).
    pub id: u64,
    /// The segment's engine shard.
    pub shard: Arc<Shard>,
    /// Tombstones: bit `doc` set when the document is deleted or overwritten.
    pub deleted: Arc<Bitset>,
    /// Parsed metadata of the segment's documents (filled on first use).
    pub meta: Arc<MetaCache>,
}

/// An immutable, consistent view for searches.
pub struct Snapshot {
    /// None while the collection has no segment.
    pub searcher: Option<Searcher>,
    /// Same order as the searcher's shards (a hit's `shard` indexes this).
    pub segs: Vec<SegView>,
    /// True when any segment has a tombstone (searches must then filter).
    pub any_deleted: bool,
    /// Where every live document is, as of this snapshot.
    ids: imbl::HashMap<String, state::Loc>,
    /// Statistics as of this snapshot (`wal_bytes` aside: [`Collection::stats`] reads the current value).
    stats: Stats,
    /// The collection codebook new memory segments are coded with (None before the first flush).
    codebook: Option<Arc<Codebook>>,
}

/// Statistics of a collection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live documents.
    pub documents: u64,
    /// Durable shard files (memory segments not counted).
    pub shards: u64,
    /// Live documents in memory segments (in the log, not yet flushed to a shard).
    pub memtable_documents: u64,
    /// Deleted or overwritten documents still in some segment.
    pub tombstones: u64,
    /// Bytes of log records on disk.
    pub wal_bytes: u64,
    /// Sequence number of the last applied write.
    pub last_sequence: u64,
    /// Centroids of the collection codebook (0 before the first flush trains it).
    pub codebook_centroids: u64,
    /// Generation of the collection codebook (0: none yet; one more per re-training).
    pub codebook_generation: u64,
    /// Durable shards whose token section is still being verified in the background after a restart (reads of
    /// their documents answer `unavailable` until it is done; searches go on).
    pub unverified_shards: u64,
    /// Durable shards coded with an older codebook generation, re-coded in the background while no write comes.
    pub stale_shards: u64,
    /// Bytes of shard files written by flushes, over the collection's life.
    pub flushed_bytes: u64,
    /// Bytes of shard files written by compactions, over the collection's life (write amplification:
    /// `(flushed_bytes + compacted_bytes) / flushed_bytes`).
    pub compacted_bytes: u64,
}

/// Write-idle time after which stale shards are re-coded (see [`Tuning::recode_after_idle`]).
pub const RECODE_AFTER_IDLE: std::time::Duration = std::time::Duration::from_secs(2);

/// Background-work thresholds.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Live memtable documents that trigger a flush.
    pub flush_threshold_docs: usize,
    /// Durable shards that trigger a compaction.
    pub compaction_max_shards: usize,
    /// Live memtable documents above which writes are refused with `overloaded` (429) until a flush catches
    /// up: bounds memory, log size and restart time when writers outrun flushing.
    pub max_memtable_docs: usize,
    /// Shards smaller than this (bytes) are fully verified while opening; the token sections of larger ones are
    /// verified in the background once the collection serves ([`Collection::verify_shards`]).
    pub verify_now_bytes: usize,
    /// Write-idle time after which shards coded with an older codebook generation are re-coded with the current
    /// one (None: never; see [`Collection::stale_shards`]).
    pub recode_after_idle: Option<std::time::Duration>,
}

impl Tuning {
    /// The thresholds for a flush threshold and a compaction fan-in; the memtable cap is
    /// `max(4 x flush threshold, 10_000)`.
    pub fn new(flush_threshold_docs: usize, compaction_max_shards: usize) -> Tuning {
        Tuning {
            flush_threshold_docs,
            compaction_max_shards,
            max_memtable_docs: flush_threshold_docs.saturating_mul(4).max(10_000),
            verify_now_bytes: 64 << 20,
            recode_after_idle: Some(RECODE_AFTER_IDLE),
        }
    }
}

/// A document as `get` returns it.
pub struct DocRef {
    /// The shard holding the document.
    pub shard: Arc<Shard>,
    /// The document's index in that shard.
    pub doc: usize,
}

/// An open collection.
pub struct Collection {
    /// The collection's `collection.json`: name, dimension, parameters.
    pub config: CollectionConfig,
    layout: Layout,
    tuning: Tuning,
    state: Mutex<State>,
    /// The published snapshot: readers load it without a lock; the sequencer (or start-up) stores a new one.
    snapshot: ArcSwap<Snapshot>,
    tx: Mutex<Option<mpsc::Sender<Cmd>>>,
    maint_lock: Mutex<()>,
    /// Wakes the maintenance thread (lock-free, see [`Collection::nudge`]); taken by `close`.
    maint_tx: ArcSwapOption<mpsc::SyncSender<()>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_segment: AtomicU64,
    /// Set by `close`: flushes and compactions stop at their next check and touch no file after it.
    closing: AtomicBool,
    /// The last write failed for lack of disk space (cleared by the next successful append).
    storage_full: Mutex<Option<String>>,
    /// Bytes of log records on disk (set by the sequencer after every append, rotation and install).
    wal_bytes: AtomicU64,
    /// Damage found after the collection opened (the background check of its shards' token sections): the
    /// collection then refuses requests, like one found damaged at open. Nothing is deleted.
    damaged: Mutex<Option<String>>,
    /// A codebook re-training thread is running.
    retraining: AtomicBool,
    /// Flushes and compactions waiting for the maintenance lock (a re-coding gives way to them).
    maint_waiting: std::sync::atomic::AtomicUsize,
    /// Held-out tokens of the last flush, for the drift check of the next re-training decision.
    recent_tokens: Mutex<Vec<f32>>,
    /// f16 values the write path widened to f32 (see [`Widening`]).
    widening: Widening,
}

impl Collection {
    /// Creates the directory of a new collection (atomically: built under a temporary name, then renamed)
    /// and opens it.
    pub fn create(
        root: &std::path::Path,
        config: CollectionConfig,
        tuning: Tuning,
    ) -> Result<Arc<Collection>, ServiceError> {
        let final_dir = root.join(&config.name);
        if final_dir.exists() {
            return Err(ServiceError::CollectionExists(config.name));
        }
        let tmp = root.join(format!(".creating-{}", config.name));
        let _ = std::fs::remove_dir_all(&tmp);
        let l = Layout { dir: tmp.clone() };
        for d in [l.segments(), l.wal()] {
            std::fs::create_dir_all(&d).map_err(|e| ServiceError::io(&d, e))?;
        }
        manifest::write_checked(&l.config(), &config)?;
        let empty = Manifest {
            format_version: MANIFEST_VERSION,
            log_control: true,
            ..Default::default()
        };
        manifest::write_checked(&l.manifest(), &empty)?;
        // The first log file exists from the start: a collection without one is damaged.
        drop(WalWriter::create(&l.wal(), 1)?);
        fsutil::sync_dir(&l.dir);
        std::fs::rename(&tmp, &final_dir).map_err(|e| ServiceError::io(&final_dir, e))?;
        fsutil::sync_dir(root);
        Collection::open(Layout { dir: final_dir }, tuning)
    }

    /// Opens a collection directory: shards from the manifest, then the log replayed on top.
    pub fn open(layout: Layout, tuning: Tuning) -> Result<Arc<Collection>, ServiceError> {
        let config: CollectionConfig = manifest::read_checked(&layout.config())?;
        // The directory is the collection's name: a descriptor that names another collection (copied over from
        // it) would serve that collection's name twice, or this one's data under a wrong name.
        let dir_name = layout.dir.file_name().map(|n| n.to_string_lossy());
        if dir_name.as_deref() != Some(config.name.as_str()) {
            return Err(StorageError::damaged(
                layout.config(),
                None,
                format!(
                    "collection.json describes the collection {:?}, not {:?} whose directory it is in (copied from \
                     another collection?)",
                    config.name,
                    dir_name.unwrap_or_default()
                ),
            )
            .into());
        }
        let (state, writer, next_segment) = recover(&layout, &config, tuning.verify_now_bytes)?;
        let c = Arc::new(Collection {
            config,
            layout,
            tuning,
            state: Mutex::new(state),
            snapshot: ArcSwap::from_pointee(Snapshot {
                searcher: None,
                segs: vec![],
                any_deleted: false,
                ids: imbl::HashMap::new(),
                stats: Stats::default(),
                codebook: None,
            }),
            tx: Mutex::new(None),
            maint_lock: Mutex::new(()),
            maint_tx: ArcSwapOption::empty(),
            threads: Mutex::new(Vec::new()),
            next_segment: AtomicU64::new(next_segment),
            closing: AtomicBool::new(false),
            storage_full: Mutex::new(None),
            wal_bytes: AtomicU64::new(writer.bytes()),
            damaged: Mutex::new(None),
            retraining: AtomicBool::new(false),
            maint_waiting: std::sync::atomic::AtomicUsize::new(0),
            recent_tokens: Mutex::new(Vec::new()),
            widening: Widening::default(),
        });
        c.publish();
        let (tx, rx) = mpsc::channel();
        let (mtx, mrx) = mpsc::sync_channel(1);
        *lock(&c.tx) = Some(tx);
        c.maint_tx.store(Some(Arc::new(mtx)));
        let name = &c.config.name;
        let spawn = |what: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(format!("chamfer-{what}-{name}"))
                .spawn(f)
                .map_err(|e| ServiceError::Internal(format!("cannot start a thread: {e}")))
        };
        let seq = {
            let c = c.clone();
            spawn("seq", Box::new(move || c.sequencer(rx, writer)))?
        };
        let maint = {
            let c = c.clone();
            spawn("maint", Box::new(move || c.maintenance(mrx)))?
        };
        let verify = {
            let c = c.clone();
            spawn("verify", Box::new(move || c.verify_shards()))?
        };
        lock(&c.threads).extend([maint, seq, verify]);
        c.nudge_if_needed();
        Ok(c)
    }

    /// The directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.layout.dir
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Where each id lives (None: no such live document), as of the current snapshot. Never waits for the
    /// sequencer. Callers read the documents' tokens, so shards whose token section is still being verified
    /// after a restart ([`Collection::verify_shards`]) answer `unavailable` (retry shortly), and a damaged one
    /// `collection_unavailable`: unverified bytes are never returned as data.
    pub fn get(&self, ids: &[String]) -> Result<Vec<Option<DocRef>>, ServiceError> {
        let snap = self.snapshot();
        let found: Vec<Option<DocRef>> = ids
            .iter()
            .map(|id| {
                let loc = snap.ids.get(id)?;
                let seg = snap.segs.iter().find(|s| s.id == loc.seg)?;
                Some(DocRef {
                    shard: seg.shard.clone(),
                    doc: loc.doc as usize,
                })
            })
            .collect();
        for r in found.iter().flatten() {
            if r.shard.verification_pending() {
                return Err(ServiceError::Unavailable(format!(
                    "collection {:?} is verifying its shards after a restart ({} left); retry shortly",
                    self.config.name,
                    self.unverified_shards()
                )));
            }
            if r.shard.verify_deferred().is_err() {
                return Err(ServiceError::CollectionUnavailable {
                    name: self.config.name.clone(),
                    reason: "a shard is damaged (see /readyz)".into(),
                });
            }
        }
        Ok(found)
    }

    /// Durable shards whose token section is still to be verified after a restart.
    pub fn unverified_shards(&self) -> u64 {
        self.snapshot()
            .segs
            .iter()
            .filter(|s| s.shard.verification_pending())
            .count() as u64
    }

    /// The codebook new documents are coded with now: None before the first flush trained one, and for a
    /// collection without codes (`codebook_size` 0).
    pub fn codebook(&self) -> Option<Arc<Codebook>> {
        if self.config.params.codebook_size == 0 {
            return None;
        }
        self.snapshot().codebook.clone()
    }

    /// Builds the memory segment of an upsert batch (CPU work: run it off the async workers), coded with `book`
    /// (the collection codebook from [`Collection::codebook`]; a flush then copies the codes), copying the codes
    /// `known` already assigned with it (see [`Coding::Given`]). Before the first flush trains a codebook (`book`
    /// None): tokens only, searched exactly. Collections without a codebook (`codebook_size` 0) store FDEs.
    pub fn build_memory_shard_coded(
        &self,
        docs: &[ShardDoc<'_>],
        book: Option<&Arc<Codebook>>,
        known: Option<&[Option<&[u16]>]>,
    ) -> Result<Shard, IndexError> {
        let params = &self.config.params;
        if params.codebook_size == 0 {
            return Shard::build_in_memory(params, docs);
        }
        match book {
            Some(book) => Shard::build_in_memory_coded(
                params,
                docs,
                Coding::Given {
                    codebook: book,
                    known,
                },
            ),
            None => Shard::build_in_memory_coded(params, docs, Coding::TokensOnly),
        }
    }

    /// Current statistics (from the current snapshot). Never waits for the sequencer.
    pub fn stats(&self) -> Stats {
        Stats {
            wal_bytes: self.wal_bytes.load(Ordering::SeqCst),
            unverified_shards: self.unverified_shards(),
            ..self.snapshot().stats
        }
    }

    /// Damage found in a shard after the collection opened (see [`Collection::verify_shards`]), if any.
    pub fn damaged(&self) -> Option<String> {
        lock(&self.damaged).clone()
    }

    /// The background half of opening: checks the token sections that start-up left unverified
    /// ([`Shard::open_deferred`]), so that a restart is ready in the time it takes to map the files, not to read
    /// them. A mismatch marks the collection damaged (requests refused, nothing deleted). Stops when the
    /// collection closes.
    fn verify_shards(&self) {
        let started = std::time::Instant::now();
        let shards: Vec<Arc<Shard>> = lock(&self.state)
            .segments
            .iter()
            .filter(|s| s.durable && s.shard.verification_pending())
            .map(|s| s.shard.clone())
            .collect();
        if shards.is_empty() {
            return;
        }
        let mut bytes = 0u64;
        for shard in &shards {
            if self.is_closing() {
                return;
            }
            if let Err(e) = shard.verify_deferred() {
                tracing::error!(collection = %self.config.name, error = %e,
                    "a shard is damaged: the collection stops serving; nothing in its directory was changed");
                *lock(&self.damaged) = Some(ServiceError::from(e).to_string());
                return;
            }
            bytes += shard.byte_len() as u64;
        }
        tracing::info!(collection = %self.config.name, shards = shards.len(), bytes,
            verify_ms = started.elapsed().as_millis() as u64, "verified the shards' token sections");
    }

    /// Why writes are failing for lack of disk space, if they are.
    pub fn storage_full(&self) -> Option<String> {
        lock(&self.storage_full).clone()
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Makes a running flush or compaction stop at its next check (and refuses new ones), without stopping
    /// writes: the first step of shutdown, so that draining requests never waits for background work.
    pub fn cancel_background(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Stops the background threads after the queued writes (their log is synced). A running flush or
    /// compaction is abandoned at its next check (its partial shard file is removed; the log still holds
    /// everything). When `close` returns, no thread of this collection touches its directory. Idempotent.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.maint_tx.store(None);
        // Wait for a flush or compaction in progress (run by the maintenance thread or a caller): it stops at
        // its next cancellation check.
        drop(lock(&self.maint_lock));
        // Maintenance first: a running flush still needs the sequencer.
        let threads: Vec<JoinHandle<()>> = lock(&self.threads).drain(..).collect();
        let mut threads = threads.into_iter();
        if let Some(maint) = threads.next() {
            let _ = maint.join();
        }
        if let Some(tx) = lock(&self.tx).take() {
            let _ = tx.send(Cmd::Stop);
        }
        for t in threads {
            let _ = t.join();
        }
        // A re-training thread the maintenance thread started meanwhile (it sees `closing` and stops).
        let late: Vec<JoinHandle<()>> = lock(&self.threads).drain(..).collect();
        for t in late {
            let _ = t.join();
        }
    }

    fn send(&self, cmd: Cmd) -> Result<(), ServiceError> {
        match lock(&self.tx).as_ref() {
            Some(tx) => tx.send(cmd).map_err(|_| closing()),
            None => Err(closing()),
        }
    }

    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, ServiceError> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply))?;
        rx.blocking_recv().map_err(|_| closing())?
    }

    /// Builds and publishes a snapshot of the current state (sequencer thread, or start-up).
    fn publish(&self) {
        let (segs, ids, stats, codebook) = {
            let st = lock(&self.state);
            let segs: Vec<SegView> = st
                .segments
                .iter()
                .map(|s| SegView {
                    id: s.id,
                    shard: s.shard.clone(),
                    deleted: s.deleted.clone(),
                    meta: s.meta.clone(),
                })
                .collect();
            let stats = Stats {
                documents: st.ids.len() as u64,
                shards: st.segments.iter().filter(|s| s.durable).count() as u64,
                memtable_documents: st
                    .segments
                    .iter()
                    .filter(|s| !s.durable)
                    .map(|s| s.shard.len() - s.deleted.ones())
                    .sum::<usize>() as u64,
                tombstones: st.segments.iter().map(|s| s.deleted.ones()).sum::<usize>() as u64,
                wal_bytes: 0,
                last_sequence: st.last_seq,
                codebook_centroids: st.codebook.as_ref().map_or(0, |c| c.book.len() as u64),
                codebook_generation: st.codebook.as_ref().map_or(0, |c| c.entry.generation),
                unverified_shards: 0,
                stale_shards: st.stale_shards().count() as u64,
                flushed_bytes: st.flushed_bytes,
                compacted_bytes: st.compacted_bytes,
            };
            let book = st.codebook.as_ref().map(|c| c.book.clone());
            (segs, st.ids.clone(), stats, book)
        };
        let searcher = if segs.is_empty() {
            None
        } else {
            // Shards are keyed by their segment ids (searches break equal scores on them), and the new searcher
            // shares the previous one's query encoder instead of building it again.
            let shards = segs.iter().map(|s| s.shard.clone()).collect();
            let built = segs
                .iter()
                .try_for_each(|s| s.shard.set_key(s.id))
                .and_then(|()| match &self.snapshot().searcher {
                    Some(prev) => prev.with_shards(shards),
                    None => Searcher::new(self.config.params.clone(), shards),
                });
            match built {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(collection = %self.config.name, error = %e, "cannot build a searcher; keeping the previous snapshot");
                    return;
                }
            }
        };
        let any_deleted = segs.iter().any(|s| s.deleted.ones() > 0);
        self.snapshot.store(Arc::new(Snapshot {
            searcher,
            segs,
            any_deleted,
            ids,
            stats,
            codebook,
        }));
    }
}

fn closing() -> ServiceError {
    ServiceError::Unavailable("the collection is closing".into())
}

fn closing_error() -> ServiceError {
    ServiceError::Unavailable(
        "the collection is closing: background work was abandoned (nothing is lost; the log still holds it)"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::wal::{encode_upsert, KIND_UPSERT};
    use chamfer_index::shard::{IndexParams, ShardDoc};
    use chamfer_index::tokens::TokenMatrix;

    /// `get` and `stats` answer from the published snapshot while the sequencer's `state` mutex is held (by
    /// this test, standing in for a long install): a reader that took that mutex would never return here.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_do_not_wait_for_the_sequencer() {
        let dir = tempfile::tempdir().unwrap();
        let config = CollectionConfig {
            format_version: MANIFEST_VERSION,
            name: "c".into(),
            dimension: 4,
            params: IndexParams::new(4),
        };
        let c = Collection::create(dir.path(), config.clone(), Tuning::new(1_000, 4)).unwrap();
        let tokens = [1.0f32, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        let docs = [ShardDoc {
            id: "a",
            tokens: TokenMatrix::new(&tokens, 4, "document").unwrap(),
            payload: b"",
        }];
        let shard = Arc::new(Shard::build_in_memory(&config.params, &docs).unwrap());
        let body = encode_upsert([("a", 4usize, &tokens[..], &b""[..])].into_iter());
        c.write(WriteOp::Upsert { shard }, KIND_UPSERT, body)
            .await
            .unwrap();

        let held = lock(&c.state);
        let stats = c.stats();
        assert_eq!((stats.documents, stats.last_sequence), (1, 1));
        assert!(stats.wal_bytes > 0);
        let found = c.get(&["a".to_string(), "b".to_string()]).unwrap();
        assert_eq!(found[0].as_ref().map(|r| r.shard.id(r.doc)), Some("a"));
        assert!(found[1].is_none());
        drop(held);
        c.close();
    }
}
