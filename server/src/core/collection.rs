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
//! however long it runs and whatever is ingested, flushed or compacted meanwhile.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::thread::JoinHandle;

use chamfer_index::search::Searcher;
use chamfer_index::shard::{remove_shard_files, Shard, ShardDoc};
use chamfer_index::tokens::TokenMatrix;
use chamfer_index::IndexError;
use serde_json::Value;
use tokio::sync::oneshot;

use super::manifest::{self, CollectionConfig, Layout, Manifest, SegmentEntry, MANIFEST_VERSION};
use super::wal::{self, WalOp, WalWriter};
use crate::error::ServiceError;
use chamfer_index::fsutil;

/// Most bytes of log records written by one group commit.
const GROUP_BYTES: usize = 256 << 20;
/// Most commands taken in one sequencer round.
const GROUP_MAX: usize = 4096;
/// Memory segments that trigger a flush whatever their size (each costs a little per search).
const MAX_MEMORY_SEGMENTS: usize = 64;
/// Documents per memory segment rebuilt from the log at start-up.
const REPLAY_SEGMENT_DOCS: usize = 4096;

type Reply<T> = oneshot::Sender<Result<T, ServiceError>>;

/// Locks a mutex, ignoring poisoning (state is only mutated by the sequencer, which does not panic mid-update).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a live document is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    seg: u64,
    doc: u32,
}

/// A fixed-size bitset of deleted documents.
#[derive(Clone, Debug, Default)]
pub struct Bitset {
    words: Vec<u64>,
    ones: usize,
}

impl Bitset {
    fn new(n: usize) -> Self {
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
    fn set(&mut self, i: usize) {
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
    fn iter_ones(&self) -> impl Iterator<Item = usize> + '_ {
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

struct Segment {
    id: u64,
    shard: Arc<Shard>,
    durable: bool,
    /// Memory segments: the sequence number of the record that created it.
    max_seq: u64,
    deleted: Arc<Bitset>,
    meta: Arc<MetaCache>,
}

struct State {
    /// Durable segments (by id), then memory segments (by id = creation order).
    segments: Vec<Segment>,
    ids: HashMap<String, Loc>,
    last_seq: u64,
    flushed_seq: u64,
    wal_bytes: u64,
}

impl State {
    fn segment(&self, id: u64) -> Option<&Segment> {
        self.segments.iter().find(|s| s.id == id)
    }

    fn tombstone(&mut self, loc: Loc) {
        if let Some(s) = self.segments.iter_mut().find(|s| s.id == loc.seg) {
            Arc::make_mut(&mut s.deleted).set(loc.doc as usize);
        }
    }

    fn apply(&mut self, op: WriteOp, seq: u64, next_segment: &AtomicU64) -> usize {
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

    fn manifest(&self, next_segment_id: u64) -> Manifest {
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
                    deleted: s.deleted.iter_ones().map(|d| d as u32).collect(),
                })
                .collect(),
        }
    }

    fn sort(&mut self) {
        self.segments.sort_by_key(|s| (!s.durable, s.id));
    }
}

/// What one write does once it is in the log.
pub enum WriteOp {
    /// A validated batch, already built into a memory shard.
    Upsert {
        shard: Arc<Shard>,
    },
    Delete {
        ids: Vec<String>,
    },
}

/// The acknowledgement of a durable write.
#[derive(Clone, Copy, Debug)]
pub struct WriteAck {
    pub seq: u64,
    /// Documents written (upsert) or that existed and were deleted (delete).
    pub affected: usize,
}

struct Rotated {
    last_seq: u64,
    closed: Vec<PathBuf>,
}

/// A new durable segment: id, shard, and where each of its documents came from.
type NewSegment = (u64, Arc<Shard>, Vec<Loc>);

struct Install {
    remove: Vec<u64>,
    /// New durable segment: id, shard, and where each of its documents came from.
    add: Option<NewSegment>,
    flushed_seq: Option<u64>,
    obsolete_wal: Vec<PathBuf>,
    obsolete_segments: Vec<u64>,
}

enum Cmd {
    Write {
        op: WriteOp,
        kind: u8,
        body: Vec<u8>,
        reply: Reply<WriteAck>,
    },
    Rotate {
        reply: Reply<Rotated>,
    },
    Install {
        install: Install,
        reply: Reply<()>,
    },
    Stop,
}

/// One segment as a search sees it.
pub struct SegView {
    pub shard: Arc<Shard>,
    pub deleted: Arc<Bitset>,
    pub meta: Arc<MetaCache>,
}

/// An immutable, consistent view for searches.
pub struct Snapshot {
    /// None while the collection has no segment.
    pub searcher: Option<Searcher>,
    /// Same order as the searcher's shards (a hit's `shard` indexes this).
    pub segs: Vec<SegView>,
    pub any_deleted: bool,
}

/// Statistics of a collection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub documents: u64,
    pub shards: u64,
    pub memtable_documents: u64,
    pub tombstones: u64,
    pub wal_bytes: u64,
    pub last_sequence: u64,
}

/// Background-work thresholds.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    pub flush_threshold_docs: usize,
    pub compaction_max_shards: usize,
    /// Live memtable documents above which writes are refused with `overloaded` (429) until a flush catches
    /// up: bounds memory, log size and restart time when writers outrun flushing.
    pub max_memtable_docs: usize,
}

impl Tuning {
    /// The thresholds for a flush threshold and a compaction fan-in; the memtable cap is
    /// `max(4 x flush threshold, 10_000)`.
    pub fn new(flush_threshold_docs: usize, compaction_max_shards: usize) -> Tuning {
        Tuning {
            flush_threshold_docs,
            compaction_max_shards,
            max_memtable_docs: flush_threshold_docs.saturating_mul(4).max(10_000),
        }
    }
}

/// A document as `get` returns it.
pub struct DocRef {
    pub shard: Arc<Shard>,
    pub doc: usize,
}

/// An open collection.
pub struct Collection {
    pub config: CollectionConfig,
    layout: Layout,
    tuning: Tuning,
    state: Mutex<State>,
    snapshot: RwLock<Arc<Snapshot>>,
    tx: Mutex<Option<mpsc::Sender<Cmd>>>,
    maint_lock: Mutex<()>,
    maint_tx: Mutex<Option<mpsc::SyncSender<()>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_segment: AtomicU64,
    /// Set by `close`: flushes and compactions stop at their next check and touch no file after it.
    closing: AtomicBool,
    /// The last write failed for lack of disk space (cleared by the next successful append).
    storage_full: Mutex<Option<String>>,
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
        let (state, writer, next_segment) = recover(&layout, &config)?;
        let c = Arc::new(Collection {
            config,
            layout,
            tuning,
            state: Mutex::new(state),
            snapshot: RwLock::new(Arc::new(Snapshot {
                searcher: None,
                segs: vec![],
                any_deleted: false,
            })),
            tx: Mutex::new(None),
            maint_lock: Mutex::new(()),
            maint_tx: Mutex::new(None),
            threads: Mutex::new(Vec::new()),
            next_segment: AtomicU64::new(next_segment),
            closing: AtomicBool::new(false),
            storage_full: Mutex::new(None),
        });
        c.publish();
        let (tx, rx) = mpsc::channel();
        let (mtx, mrx) = mpsc::sync_channel(1);
        *lock(&c.tx) = Some(tx);
        *lock(&c.maint_tx) = Some(mtx);
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
        lock(&c.threads).extend([maint, seq]);
        c.nudge_if_needed();
        Ok(c)
    }

    /// The directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.layout.dir
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Appends a write to the log and waits until it is durable and applied.
    pub async fn write(
        &self,
        op: WriteOp,
        kind: u8,
        body: Vec<u8>,
    ) -> Result<WriteAck, ServiceError> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Write {
            op,
            kind,
            body,
            reply,
        })?;
        rx.await.map_err(|_| closing())?
    }

    /// Where each id lives (None: no such live document).
    pub fn get(&self, ids: &[String]) -> Vec<Option<DocRef>> {
        let st = lock(&self.state);
        ids.iter()
            .map(|id| {
                let loc = st.ids.get(id)?;
                let seg = st.segment(loc.seg)?;
                Some(DocRef {
                    shard: seg.shard.clone(),
                    doc: loc.doc as usize,
                })
            })
            .collect()
    }

    /// Current statistics.
    pub fn stats(&self) -> Stats {
        let st = lock(&self.state);
        Stats {
            documents: st.ids.len() as u64,
            shards: st.segments.iter().filter(|s| s.durable).count() as u64,
            memtable_documents: st
                .segments
                .iter()
                .filter(|s| !s.durable)
                .map(|s| s.shard.len() - s.deleted.ones())
                .sum::<usize>() as u64,
            tombstones: st.segments.iter().map(|s| s.deleted.ones()).sum::<usize>() as u64,
            wal_bytes: st.wal_bytes,
            last_sequence: st.last_seq,
        }
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
        lock(&self.maint_tx).take();
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

    // ----- the sequencer thread ---------------------------------------------------------------------------

    fn sequencer(&self, rx: mpsc::Receiver<Cmd>, mut wal: WalWriter) {
        let mut stop = false;
        while !stop {
            let Ok(first) = rx.recv() else { break };
            let mut cmds = vec![first];
            let mut bytes = 0usize;
            while bytes < GROUP_BYTES && cmds.len() < GROUP_MAX {
                match rx.try_recv() {
                    Ok(c) => {
                        if let Cmd::Write { body, .. } = &c {
                            bytes += body.len();
                        }
                        cmds.push(c);
                    }
                    Err(_) => break,
                }
            }
            let mut writes = Vec::new();
            for cmd in cmds {
                match cmd {
                    Cmd::Write {
                        op,
                        kind,
                        body,
                        reply,
                    } => writes.push((op, kind, body, reply)),
                    Cmd::Rotate { reply } => {
                        self.commit(&mut wal, std::mem::take(&mut writes));
                        let _ = reply.send(self.rotate(&mut wal));
                    }
                    Cmd::Install { install, reply } => {
                        self.commit(&mut wal, std::mem::take(&mut writes));
                        let _ = reply.send(self.install(&mut wal, install));
                    }
                    Cmd::Stop => {
                        self.commit(&mut wal, std::mem::take(&mut writes));
                        stop = true;
                    }
                }
            }
            self.commit(&mut wal, writes);
        }
        if let Err(e) = wal.sync() {
            tracing::error!(collection = %self.config.name, error = %e, "final log sync failed");
        }
    }

    /// Group commit: one append + fsync for every queued write, then apply in order, publish, acknowledge.
    fn commit(&self, wal: &mut WalWriter, writes: Vec<(WriteOp, u8, Vec<u8>, Reply<WriteAck>)>) {
        if writes.is_empty() {
            return;
        }
        let base = lock(&self.state).last_seq;
        let records: Vec<(u64, u8, &[u8])> = writes
            .iter()
            .enumerate()
            .map(|(i, (_, kind, body, _))| (base + 1 + i as u64, *kind, body.as_slice()))
            .collect();
        if let Err(e) = wal.append(&records) {
            tracing::error!(collection = %self.config.name, error = %e, "log append failed; the writes were not acknowledged");
            if let ServiceError::StorageFull(m) = e.to_service() {
                *lock(&self.storage_full) = Some(m);
            }
            for (_, _, _, reply) in writes {
                let _ = reply.send(Err(e.to_service()));
            }
            return;
        }
        drop(records);
        if lock(&self.storage_full).take().is_some() {
            tracing::info!(collection = %self.config.name, "log appends succeed again (disk space is available)");
        }
        let mut acks = Vec::with_capacity(writes.len());
        {
            let mut st = lock(&self.state);
            for (i, (op, _, _, reply)) in writes.into_iter().enumerate() {
                let seq = base + 1 + i as u64;
                let affected = st.apply(op, seq, &self.next_segment);
                st.last_seq = seq;
                acks.push((reply, WriteAck { seq, affected }));
            }
            st.wal_bytes = wal.bytes();
        }
        self.publish();
        for (reply, ack) in acks {
            let _ = reply.send(Ok(ack));
        }
        self.nudge_if_needed();
    }

    fn rotate(&self, wal: &mut WalWriter) -> Result<Rotated, ServiceError> {
        let last_seq = lock(&self.state).last_seq;
        let closed = wal.rotate(last_seq + 1)?;
        Ok(Rotated { last_seq, closed })
    }

    fn install(&self, wal: &mut WalWriter, inst: Install) -> Result<(), ServiceError> {
        let manifest = {
            let mut st = lock(&self.state);
            let added = inst.add.map(|(id, shard, origin)| {
                let mut deleted = Bitset::new(shard.len());
                for (j, o) in origin.iter().enumerate() {
                    let live = st
                        .segment(o.seg)
                        .is_some_and(|s| !s.deleted.get(o.doc as usize));
                    match st.ids.get_mut(shard.id(j)) {
                        Some(loc) if live && loc == o => {
                            *loc = Loc {
                                seg: id,
                                doc: j as u32,
                            }
                        }
                        _ => deleted.set(j),
                    }
                }
                Segment {
                    id,
                    shard,
                    durable: true,
                    max_seq: 0,
                    deleted: Arc::new(deleted),
                    meta: Arc::default(),
                }
            });
            st.segments.retain(|s| !inst.remove.contains(&s.id));
            st.segments.extend(added);
            st.sort();
            if let Some(fs) = inst.flushed_seq {
                st.flushed_seq = fs;
            }
            st.manifest(self.next_segment.load(Ordering::SeqCst))
        };
        self.publish();
        manifest::write_checked(&self.layout.manifest(), &manifest)?;
        // Only now is the old state unreachable from disk.
        if let Err(e) = wal.remove(&inst.obsolete_wal) {
            tracing::warn!(collection = %self.config.name, error = %e, "cannot delete an obsolete log file");
        }
        for id in inst.obsolete_segments {
            if let Err(e) = remove_shard_files(&self.layout.segment(id)) {
                tracing::warn!(collection = %self.config.name, error = %e, "cannot delete an obsolete shard");
            }
        }
        lock(&self.state).wal_bytes = wal.bytes();
        Ok(())
    }

    /// Builds and publishes a snapshot of the current state (sequencer thread, or start-up).
    fn publish(&self) {
        let segs: Vec<SegView> = lock(&self.state)
            .segments
            .iter()
            .map(|s| SegView {
                shard: s.shard.clone(),
                deleted: s.deleted.clone(),
                meta: s.meta.clone(),
            })
            .collect();
        let searcher = if segs.is_empty() {
            None
        } else {
            match Searcher::new(
                self.config.params.clone(),
                segs.iter().map(|s| s.shard.clone()).collect(),
            ) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(collection = %self.config.name, error = %e, "cannot build a searcher; keeping the previous snapshot");
                    return;
                }
            }
        };
        let any_deleted = segs.iter().any(|s| s.deleted.ones() > 0);
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Snapshot {
            searcher,
            segs,
            any_deleted,
        });
    }

    // ----- background work --------------------------------------------------------------------------------

    fn needs_flush(&self) -> bool {
        let st = lock(&self.state);
        let mem = st.segments.iter().filter(|s| !s.durable);
        let (count, live) = mem.fold((0, 0), |(c, l), s| {
            (c + 1, l + s.shard.len() - s.deleted.ones())
        });
        live >= self.tuning.flush_threshold_docs || count >= MAX_MEMORY_SEGMENTS
    }

    fn needs_compaction(&self) -> bool {
        let st = lock(&self.state);
        let durable: Vec<&Segment> = st.segments.iter().filter(|s| s.durable).collect();
        let docs: usize = durable.iter().map(|s| s.shard.len()).sum();
        let deleted: usize = durable.iter().map(|s| s.deleted.ones()).sum();
        durable.len() > self.tuning.compaction_max_shards || (deleted > 0 && deleted * 5 >= docs)
    }

    /// Wakes the maintenance thread (it flushes if the memtable is over its threshold).
    pub fn nudge_flush(&self) {
        self.nudge_if_needed();
    }

    fn nudge_if_needed(&self) {
        if self.needs_flush() || self.needs_compaction() {
            if let Some(tx) = lock(&self.maint_tx).as_ref() {
                let _ = tx.try_send(());
            }
        }
    }

    fn maintenance(&self, rx: mpsc::Receiver<()>) {
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

    fn background_failed(&self, what: &str, e: &ServiceError) {
        if self.is_closing() {
            tracing::info!(collection = %self.config.name, error = %e, "background {what} abandoned: the collection is closing");
            return;
        }
        if let ServiceError::StorageFull(m) = e {
            *lock(&self.storage_full) = Some(m.clone());
        } else if e.status().code == "storage_full" {
            *lock(&self.storage_full) = Some(e.to_string());
        }
        tracing::error!(collection = %self.config.name, error = %e, "background {what} failed");
    }

    /// The cancellation check of flush and compaction.
    fn check_open(&self) -> Result<(), ServiceError> {
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
    fn discard(&self, add: &Option<NewSegment>) {
        if let Some((id, _, _)) = add {
            if let Err(e) = remove_shard_files(&self.layout.segment(*id)) {
                tracing::warn!(collection = %self.config.name, error = %e, "cannot remove an abandoned shard");
            }
        }
    }

    /// Writes the live documents of `picked` into a new shard file (None when none is live).
    fn build_segment(
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

fn closing() -> ServiceError {
    ServiceError::Unavailable("the collection is closing".into())
}

fn closing_error() -> ServiceError {
    ServiceError::Unavailable(
        "the collection is closing: background work was abandoned (nothing is lost; the log still holds it)"
            .into(),
    )
}

/// Rebuilds the state from the manifest and the log; returns it with an open log writer and the next segment
/// id. Any damage (missing or corrupt manifest, shard or log) is an error that names the file, and nothing in
/// the directory has been changed when it is returned.
fn recover(
    layout: &Layout,
    config: &CollectionConfig,
) -> Result<(State, WalWriter, u64), ServiceError> {
    let mpath = layout.manifest();
    let manifest: Manifest = manifest::read_checked(&mpath)?;
    let mut st = State {
        segments: vec![],
        ids: HashMap::new(),
        last_seq: manifest.flushed_seq,
        flushed_seq: manifest.flushed_seq,
        wal_bytes: 0,
    };
    let mut next_segment = manifest.next_segment_id;
    for e in &manifest.segments {
        let path = layout.segment(e.id);
        let shard = Shard::open(&path)?;
        if shard.len() != e.docs {
            return Err(IndexError::corrupt(
                &path,
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
                return Err(IndexError::corrupt(
                    &mpath,
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
                return Err(IndexError::corrupt(
                    &wal_dir,
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
    for chunk in live.chunks(REPLAY_SEGMENT_DOCS) {
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
        let shard = Arc::new(Shard::build_in_memory(&config.params, &shard_docs)?);
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
    st.wal_bytes = writer.bytes();
    remove_orphans(layout, &manifest);
    tracing::info!(collection = %config.name, shards = manifest.segments.len(), replayed_docs = n_replayed,
        last_seq = st.last_seq, documents = st.ids.len(), "opened collection");
    Ok((st, writer, next_segment))
}

/// Deletes what interrupted work left behind, given a VALID manifest: shard files (and their temp and graph
/// files) that the manifest does not name, and temporary files. Their contents are either superseded (an
/// obsolete shard after a compaction) or still in the log (a flush that crashed before its manifest).
fn remove_orphans(layout: &Layout, manifest: &Manifest) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitset_counts_and_iterates() {
        let mut b = Bitset::new(130);
        for i in [0, 64, 129, 64] {
            b.set(i);
        }
        assert_eq!(b.ones(), 3);
        assert!(b.get(129) && !b.get(1) && !b.get(1000));
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![0, 64, 129]);
    }
}
