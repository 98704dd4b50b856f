//! Tombstone sidecars: a durable segment's deleted documents, in a small file of their own that the manifest
//! names (`segments/seg-<id>.tomb-<generation>`, see [`Layout::tombstones`]), so that a delete-heavy collection
//! writes a few bytes per changed segment instead of rewriting every deletion in a large JSON manifest.
//!
//! # Life cycle
//!
//! Before a manifest is written, every durable segment whose deletions changed since its sidecar (deletions
//! only grow, so a different count is a change) gets a new generation, written once ([`PutMode::Create`])
//! through the storage seam; then the manifest naming the new generations is published (the commit point);
//! only then are the old generations deleted. A crash between the two leaves an unnamed sidecar, removed at
//! start-up (its deletions are still in the log, which the manifest's `flushed_seq` did not pass). Manifests
//! of versions 1 and 2 hold deletions inline (`SegmentEntry::deleted`): they are read, and written as sidecars
//! at the next change.
//!
//! # File format (little-endian)
//!
//! ```text
//! 0   8  magic "CHMFTOMB"
//! 8   4  format version (1)
//! 12  4  encoding: 0 = ascending document numbers as LEB128 gaps, 1 = a bitset of `docs` bits
//! 16  8  segment id
//! 24  8  generation
//! 32  8  documents in the segment (deleted ones included)
//! 40  8  deleted documents
//! 48  8  body length in bytes
//! 56  4  CRC32 of the body
//! 60  4  CRC32 of bytes 0..60
//! 64  .. body
//! ```
//!
//! The smaller encoding is written: gaps for sparse deletions (about one byte per deletion), the bitset once
//! more than about one document in eight is deleted (`docs / 8` bytes). Damage (a bad magic or checksum, a
//! count, segment, generation or size that disagrees with the manifest, the header or the shard) is refused
//! with the file named; nothing is deleted.
use chamfer_index::storage::{PutMode, Storage};

use crate::core::manifest::{Layout, SegmentEntry, TombstoneRef};
use crate::core::storage_error::StorageError;

use super::state::{Bitset, State};

const MAGIC: &[u8; 8] = b"CHMFTOMB";
const VERSION: u32 = 1;
const HEADER: usize = 64;
const GAPS: u32 = 0;
const BITSET: u32 = 1;

/// A sidecar to write before the next manifest: segment `id`'s deletions as generation `generation`.
pub(super) struct Pending {
    pub(super) id: u64,
    /// The reference the manifest will hold (its CRC filled in by [`encode`]).
    pub(super) tomb: TombstoneRef,
    /// The generation it replaces (deleted once the manifest is published).
    pub(super) replaces: Option<u64>,
    bytes: Vec<u8>,
}

/// The sidecars the durable segments of `st` need before a manifest (segments whose deletions changed).
pub(super) fn plan(st: &State) -> Vec<Pending> {
    st.segments
        .iter()
        .filter(|s| s.durable)
        .filter(|s| s.tomb.map_or(0, |t| t.count) != s.deleted.ones() as u64)
        .map(|s| {
            let generation = s.tomb.map_or(1, |t| t.generation + 1);
            let (bytes, crc32) = encode(s.id, generation, s.shard.len(), &s.deleted);
            Pending {
                id: s.id,
                tomb: TombstoneRef {
                    generation,
                    count: s.deleted.ones() as u64,
                    crc32,
                },
                replaces: s.tomb.map(|t| t.generation),
                bytes,
            }
        })
        .collect()
}

/// Writes the planned sidecars, each once. A file of the same name is an unnamed leftover of a write whose
/// manifest never came (the manifest names only older generations): it is removed and written again.
pub(super) fn write(store: &dyn Storage, pending: &[Pending]) -> Result<(), StorageError> {
    for p in pending {
        let name = Layout::tombstones(p.id, p.tomb.generation);
        match store.put(&name, &p.bytes, PutMode::Create) {
            Err(e) if e.source.kind() == std::io::ErrorKind::AlreadyExists => {
                store.delete(&name)?;
                store.put(&name, &p.bytes, PutMode::Create)?;
            }
            other => other?,
        }
    }
    Ok(())
}

/// Removes sidecars no manifest names any more (best effort: start-up removes what is left).
pub(super) fn remove(store: &dyn Storage, files: impl IntoIterator<Item = (u64, u64)>) {
    for (id, generation) in files {
        if let Err(e) = store.delete(&Layout::tombstones(id, generation)) {
            tracing::warn!(error = %e, "cannot delete an obsolete tombstone sidecar");
        }
    }
}

/// The deletions of the segment `e` names (a shard of `docs` documents): its inline list (versions 1 and 2)
/// and its sidecar, checked against the manifest, the header and the shard.
pub(super) fn load(
    store: &dyn Storage,
    layout: &Layout,
    e: &SegmentEntry,
    docs: usize,
) -> Result<Bitset, StorageError> {
    let mut deleted = Bitset::new(docs);
    for &d in &e.deleted {
        if d as usize >= docs {
            return Err(StorageError::damaged(
                layout.manifest(),
                None,
                format!("deleted document {d} beyond shard {}", e.id),
            ));
        }
        deleted.set(d as usize);
    }
    if let Some(t) = &e.tombstones {
        let name = Layout::tombstones(e.id, t.generation);
        let path = store.locate(&name);
        let bytes = match store.read(&name) {
            Ok(b) => b,
            Err(err) if err.source.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::damaged(
                    path,
                    None,
                    "the tombstone sidecar the manifest names is missing (refusing to open, nothing was deleted)",
                ))
            }
            Err(err) => return Err(err.into()),
        };
        decode(&bytes, e.id, docs, t, &mut deleted)
            .map_err(|why| StorageError::damaged(path, None, why))?;
    }
    Ok(deleted)
}

fn leb128(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The file of segment `id`'s deletions `deleted` (of `docs` documents) as generation `generation`, and the
/// CRC32 of its body.
pub(super) fn encode(id: u64, generation: u64, docs: usize, deleted: &Bitset) -> (Vec<u8>, u32) {
    let mut gaps = Vec::new();
    let mut prev = 0u64;
    for (i, d) in deleted.iter_ones().enumerate() {
        let d = d as u64;
        leb128(if i == 0 { d } else { d - prev - 1 }, &mut gaps);
        prev = d;
    }
    let bitset = docs.div_ceil(8);
    let (encoding, body) = if gaps.len() <= bitset {
        (GAPS, gaps)
    } else {
        let mut b = vec![0u8; bitset];
        for d in deleted.iter_ones() {
            b[d / 8] |= 1 << (d % 8);
        }
        (BITSET, b)
    };
    let crc = crc32fast::hash(&body);
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&encoding.to_le_bytes());
    for v in [
        id,
        generation,
        docs as u64,
        deleted.ones() as u64,
        body.len() as u64,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&crc.to_le_bytes());
    let head = crc32fast::hash(&out);
    out.extend_from_slice(&head.to_le_bytes());
    out.extend_from_slice(&body);
    (out, crc)
}

/// Parses a sidecar into `deleted` (a bitset of `docs` bits), checking it against itself, the manifest's
/// reference `t` and segment `id`. The error says what is wrong.
pub(super) fn decode(
    b: &[u8],
    id: u64,
    docs: usize,
    t: &TombstoneRef,
    deleted: &mut Bitset,
) -> Result<(), String> {
    if b.len() < HEADER || &b[..8] != MAGIC {
        return Err("not a chamfer tombstone file (bad magic or too short)".into());
    }
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    if crc32fast::hash(&b[..60]) != u32_at(60) {
        return Err("header checksum mismatch".into());
    }
    if u32_at(8) != VERSION {
        return Err(format!(
            "format version {} (this build reads {VERSION})",
            u32_at(8)
        ));
    }
    let (encoding, count, body_len) = (u32_at(12), u64_at(40), u64_at(48));
    if u64_at(16) != id || u64_at(24) != t.generation {
        return Err(format!(
            "holds segment {} generation {}, the manifest names segment {id} generation {}",
            u64_at(16),
            u64_at(24),
            t.generation
        ));
    }
    if u64_at(32) != docs as u64 {
        return Err(format!(
            "written for {} documents, the shard has {docs}",
            u64_at(32)
        ));
    }
    if count != t.count {
        return Err(format!(
            "holds {count} deletions, the manifest says {}",
            t.count
        ));
    }
    if b.len() as u64 != HEADER as u64 + body_len {
        return Err(format!(
            "{} bytes, the header says {}",
            b.len(),
            HEADER as u64 + body_len
        ));
    }
    let body = &b[HEADER..];
    let crc = crc32fast::hash(body);
    if crc != u32_at(56) || crc != t.crc32 {
        return Err(format!(
            "body checksum mismatch (computed {crc:#010x}, header {:#010x}, manifest {:#010x})",
            u32_at(56),
            t.crc32
        ));
    }
    let mut set = |d: u64| -> Result<(), String> {
        if d >= docs as u64 {
            return Err(format!("deleted document {d} beyond the shard's {docs}"));
        }
        deleted.set(d as usize);
        Ok(())
    };
    let mut seen = 0u64;
    match encoding {
        GAPS => {
            let (mut at, mut next) = (0usize, 0u64);
            while at < body.len() {
                let (mut v, mut shift) = (0u64, 0u32);
                loop {
                    let byte = *body.get(at).ok_or("a gap is cut short")?;
                    at += 1;
                    if shift > 63 {
                        return Err("a gap is too long".into());
                    }
                    v |= u64::from(byte & 0x7F) << shift;
                    shift += 7;
                    if byte & 0x80 == 0 {
                        break;
                    }
                }
                let d = next.checked_add(v).ok_or("a gap overflows")?;
                set(d)?;
                next = d + 1;
                seen += 1;
            }
        }
        BITSET => {
            if body.len() != docs.div_ceil(8) {
                return Err(format!(
                    "a bitset of {} bytes for {docs} documents",
                    body.len()
                ));
            }
            for (i, &byte) in body.iter().enumerate() {
                for bit in 0..8 {
                    if byte >> bit & 1 == 1 {
                        set((i * 8 + bit) as u64)?;
                        seen += 1;
                    }
                }
            }
        }
        other => return Err(format!("unknown encoding {other}")),
    }
    if seen != count {
        return Err(format!("{seen} deletions where the header says {count}"));
    }
    Ok(())
}

#[cfg(test)]
#[path = "tombstones_tests.rs"]
mod tests;
