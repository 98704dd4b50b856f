//! The sequencer: the one thread that mutates a collection. It takes every write queued meanwhile, appends them
//! to the write-ahead log with ONE fsync (group commit), applies them, publishes a snapshot and acknowledges
//! them; it also rotates the log and installs the segments that flush and compaction built.
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;

use chamfer_index::shard::{remove_shard_files, Shard};

use crate::core::manifest;
use crate::core::wal::WalWriter;
use crate::error::ServiceError;

use super::codebook::Current;
use super::state::{Bitset, Loc, Segment};
use super::tombstones;
use super::{lock, Collection, Reply, WriteAck, WriteOp};

/// Most bytes of log records written by one group commit.
const GROUP_BYTES: usize = 256 << 20;
/// Most commands taken in one sequencer round.
const GROUP_MAX: usize = 4096;

pub(super) struct Rotated {
    pub(super) last_seq: u64,
    pub(super) closed: Vec<PathBuf>,
}

/// A new durable segment: id, shard, and where each of its documents came from.
pub(super) type NewSegment = (u64, Arc<Shard>, Vec<Loc>);

pub(super) struct Install {
    pub(super) remove: Vec<u64>,
    /// New durable segment: id, shard, and where each of its documents came from.
    pub(super) add: Option<NewSegment>,
    pub(super) flushed_seq: Option<u64>,
    pub(super) obsolete_wal: Vec<PathBuf>,
    pub(super) obsolete_segments: Vec<u64>,
    /// A newly trained collection codebook (its file already written and synced) to record in the manifest.
    pub(super) codebook: Option<Current>,
    /// Bytes of shard files this flush (`flushed_seq` set) or compaction wrote.
    pub(super) bytes_written: u64,
}

pub(super) enum Cmd {
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

impl Collection {
    // ----- the sequencer thread ---------------------------------------------------------------------------

    pub(super) fn sequencer(&self, rx: mpsc::Receiver<Cmd>, mut wal: WalWriter) {
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
    pub(super) fn commit(
        &self,
        wal: &mut WalWriter,
        writes: Vec<(WriteOp, u8, Vec<u8>, Reply<WriteAck>)>,
    ) {
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
            if e.is_full() {
                *lock(&self.storage_full) = Some(
                    "the write-ahead log cannot grow: the disk is full (the write was not applied)"
                        .into(),
                );
            }
            for (_, _, _, reply) in writes {
                let _ = reply.send(Err(e.replicate().into()));
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
        }
        self.wal_bytes.store(wal.bytes(), Ordering::SeqCst);
        self.publish();
        for (reply, ack) in acks {
            let _ = reply.send(Ok(ack));
        }
        self.nudge_if_needed();
    }

    pub(super) fn rotate(&self, wal: &mut WalWriter) -> Result<Rotated, ServiceError> {
        let last_seq = lock(&self.state).last_seq;
        let closed = wal.rotate(last_seq + 1)?;
        Ok(Rotated { last_seq, closed })
    }

    pub(super) fn install(&self, wal: &mut WalWriter, inst: Install) -> Result<(), ServiceError> {
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
                    tomb: None,
                    meta: Arc::default(),
                }
            });
            let removed_tombs: Vec<(u64, u64)> = st
                .segments
                .iter()
                .filter(|s| inst.remove.contains(&s.id))
                .filter_map(|s| s.tomb.map(|t| (s.id, t.generation)))
                .collect();
            st.segments.retain(|s| !inst.remove.contains(&s.id));
            st.segments.extend(added);
            st.sort();
            if let Some(fs) = inst.flushed_seq {
                st.flushed_seq = fs;
                st.flushed_bytes += inst.bytes_written;
            } else {
                st.compacted_bytes += inst.bytes_written;
            }
            let replaced = match inst.codebook {
                Some(new) => st.codebook.replace(new),
                None => None,
            };
            let obsolete_codebook = replaced.map(|c| self.layout.codebook(c.entry.generation));
            let pending = tombstones::plan(&st);
            (
                st.manifest(self.next_segment.load(Ordering::SeqCst), &pending),
                obsolete_codebook,
                pending,
                removed_tombs,
            )
        };
        let (manifest, obsolete_codebook, pending, removed_tombs) = manifest;
        self.publish();
        // The changed segments' deletions first, then the manifest that names them (the commit point).
        let store = self.layout.store();
        let written = tombstones::write(&store, &pending)
            .and_then(|()| manifest::write_checked(&self.layout.manifest(), &manifest));
        if let Err(e) = written {
            // Unnamed sidecars are garbage (best effort: start-up removes what is left).
            tombstones::remove(&store, pending.iter().map(|p| (p.id, p.tomb.generation)));
            return Err(e.into());
        }
        {
            let mut st = lock(&self.state);
            for p in &pending {
                if let Some(s) = st.segments.iter_mut().find(|s| s.id == p.id) {
                    s.tomb = Some(p.tomb);
                }
            }
        }
        tombstones::remove(
            &store,
            pending
                .iter()
                .filter_map(|p| p.replaces.map(|g| (p.id, g)))
                .chain(removed_tombs),
        );
        // Only now is the old state unreachable from disk.
        if let Err(e) = wal.remove(&inst.obsolete_wal) {
            tracing::warn!(collection = %self.config.name, error = %e, "cannot delete an obsolete log file");
        }
        if let Some(path) = obsolete_codebook {
            // Shards keep their own copy of the codebook they were coded with; the file is no longer named.
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(collection = %self.config.name, error = %e, "cannot delete an obsolete codebook file");
            }
        }
        for id in inst.obsolete_segments {
            if let Err(e) = remove_shard_files(&self.layout.segment(id)) {
                tracing::warn!(collection = %self.config.name, error = %e, "cannot delete an obsolete shard");
            }
        }
        self.wal_bytes.store(wal.bytes(), Ordering::SeqCst);
        Ok(())
    }
}
