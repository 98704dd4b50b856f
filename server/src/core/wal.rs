//! The write-ahead log: append-only files of length-prefixed, CRC-checked records, chained by sequence number.
//!
//! A write is acknowledged only after its record is on disk (`fdatasync`), so an acknowledged upsert or delete
//! survives `kill -9` and power loss. Group commit: the collection's sequencer thread writes every record queued
//! while the previous fsync ran, fsyncs once, then acknowledges them all (one fsync per batch, not per request).
//!
//! ```text
//! file      = header record* zero-fill                        (versions 2, 3; version 1 files have no fill)
//! header v3 = "CHMFWAL1" | version u32 (=3) | reserved u32 | first_seq u64 | capacity u64 | crc32 u32 | 0 u32
//!             40 bytes, crc32 over the 32 bytes before it; version 2 the same; version 1 = the first 16 bytes
//! record    = len u32 LE | crc32 u32 LE | seq u64 LE | kind u8 | body          len = 9 + |body|
//!             crc32 (IEEE) covers seq, kind and body
//! upsert body (kind 1) = n u32 | n x (id_len u32 | id | dim u32 | n_tokens u32 | f32 LE x n_tokens*dim
//!                                    | meta_len u32 | meta JSON)
//! delete body (kind 2) = n u32 | n x (id_len u32 | id)
//! seal (kind 3)        = no body; seq = first_seq of the next file. Written when a file is closed.
//! upsert body (kind 4) = kind 1 with f16 LE tokens (version 3): written when every token value of the batch is
//!                        exactly an f16 (as when the client sent f16), so it is lossless at half the bytes
//! ```
//!
//! Version 3 adds kind 4 and nothing else; a build that reads version 2 refuses a version-3 file by its version
//! instead of calling kind 4 damage.
//!
//! # What is detected
//!
//! A version-2 file is created at its full `capacity` (a sparse, zero-filled file) before any record goes in,
//! and records are sequence-numbered without gaps across files. Replay therefore tells damage from a torn write:
//!
//! - **torn tail** (the last append of the LAST file never completed, so it was never acknowledged): the bytes
//!   after the last valid record hold no valid record. The bytes are copied to `quarantine/` and the append
//!   position continues there. A damaged last record is indistinguishable from a torn one: see RELIABILITY.md.
//! - **corruption** (refused, nothing is truncated): a damaged record followed by a valid later record; a file
//!   shorter than its capacity (truncated); a gap or repeat in sequence numbers; a record that decodes badly
//!   despite its CRC; a closed file whose successor is missing (sealed last file); a missing file in the chain; no
//!   file at all; a log that ends before the manifest's `flushed_seq` or starts after `flushed_seq + 1`.
//!
//! Files are named `wal-{first_seq:020}.log`; a new file starts when the memtable is flushed (or a group commit
//! does not fit the current file); closed files are deleted once the manifest records a `flushed_seq` at or
//! past their last record.
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use chamfer_index::fsutil::{self, sync_dir};

use super::storage_error::StorageError;

pub mod control;
use control::Control;

const MAGIC: &[u8; 8] = b"CHMFWAL1";
/// The version this build writes.
const VERSION: u32 = 3;
const VERSION_2: u32 = 2;
const VERSION_1: u32 = 1;
const HEADER_V1: u64 = 16;
const HEADER_V2: u64 = 40;
/// Default preallocated size of a log file (a group commit larger than this gets a file of its own size).
pub const FILE_CAPACITY: u64 = 64 << 20;
/// Largest record accepted on replay (a length above it is a torn or corrupt length field).
const MAX_RECORD: usize = 4 << 30;
/// Bytes read at a time when scanning a damaged tail.
const SCAN_CHUNK: usize = 4 << 20;

/// Record kinds.
pub const KIND_UPSERT: u8 = 1;
/// Record kind of a delete.
pub const KIND_DELETE: u8 = 2;
const KIND_SEAL: u8 = 3;
/// An upsert whose tokens are stored as f16 (version 3).
pub const KIND_UPSERT_F16: u8 = 4;

/// One document of an upsert record.
#[derive(Clone, Debug, PartialEq)]
pub struct WalDoc {
    /// External document id.
    pub id: String,
    /// Token dimension.
    pub dim: usize,
    /// Token values, row-major (`n_tokens * dim`), in the width the record stored.
    pub tokens: WalTokens,
    /// Compact JSON metadata, or empty for none.
    pub metadata: Vec<u8>,
}

/// A document's token values as its record stored them: f16 records stay f16, so that replay lays them out
/// without a round trip through f32 (every f16 is exactly an f32, so nothing depends on the width).
#[derive(Clone, Debug, PartialEq)]
pub enum WalTokens {
    /// From an f32 record ([`KIND_UPSERT`]).
    F32(Vec<f32>),
    /// From an f16 record ([`KIND_UPSERT_F16`]).
    F16(Vec<half::f16>),
}

impl WalTokens {
    /// The values as f32 (exact for both widths).
    pub fn to_f32(&self) -> std::borrow::Cow<'_, [f32]> {
        use half::slice::HalfFloatSliceExt;
        match self {
            WalTokens::F32(v) => std::borrow::Cow::Borrowed(v),
            WalTokens::F16(v) => std::borrow::Cow::Owned(v.to_f32_vec()),
        }
    }
}

/// A decoded record body.
#[derive(Clone, Debug, PartialEq)]
pub enum WalOp {
    /// Documents inserted or replaced.
    Upsert(Vec<WalDoc>),
    /// Ids deleted.
    Delete(Vec<String>),
}

/// Encodes an upsert body from borrowed documents `(id, dim, tokens, metadata)`, tokens as f32 ([`KIND_UPSERT`]).
pub fn encode_upsert<'a>(
    docs: impl ExactSizeIterator<Item = (&'a str, usize, &'a [f32], &'a [u8])>,
) -> Vec<u8> {
    encode_upsert_as(docs, 4, |tokens, out| {
        for v in tokens {
            out.extend_from_slice(&v.to_le_bytes());
        }
        true
    })
    .unwrap_or_default()
}

/// Encodes an upsert body as compactly as is lossless: f16 tokens ([`KIND_UPSERT_F16`]) when every value of
/// the batch is exactly an f16, else f32 ([`KIND_UPSERT`]). Returns the record kind and the body.
pub fn encode_upsert_compact<'a>(
    docs: impl ExactSizeIterator<Item = (&'a str, usize, &'a [f32], &'a [u8])> + Clone,
) -> (u8, Vec<u8>) {
    use half::slice::HalfFloatSliceExt;
    let (mut halves, mut back) = (Vec::new(), Vec::new());
    // One pass converts and checks: the first value that is not exactly an f16 abandons it for f32.
    let f16_body = encode_upsert_as(docs.clone(), 2, |tokens, out| {
        halves.clear();
        halves.resize(tokens.len(), half::f16::ZERO);
        halves.convert_from_f32_slice(tokens);
        back.clear();
        back.resize(tokens.len(), 0f32);
        halves.convert_to_f32_slice(&mut back);
        if back
            .iter()
            .zip(tokens)
            .any(|(a, b)| a.to_bits() != b.to_bits())
        {
            return false;
        }
        for v in &halves {
            out.extend_from_slice(&v.to_le_bytes());
        }
        true
    });
    match f16_body {
        Some(body) => (KIND_UPSERT_F16, body),
        None => (KIND_UPSERT, encode_upsert(docs)),
    }
}

/// The upsert layout with `put` writing each document's tokens (`width` bytes per value); None as soon as
/// `put` refuses a document.
fn encode_upsert_as<'a>(
    docs: impl ExactSizeIterator<Item = (&'a str, usize, &'a [f32], &'a [u8])>,
    width: usize,
    mut put: impl FnMut(&[f32], &mut Vec<u8>) -> bool,
) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    out.extend_from_slice(&(docs.len() as u32).to_le_bytes());
    for (id, dim, tokens, meta) in docs {
        put_bytes(&mut out, id.as_bytes());
        out.extend_from_slice(&(dim as u32).to_le_bytes());
        out.extend_from_slice(&((tokens.len() / dim.max(1)) as u32).to_le_bytes());
        out.reserve(tokens.len() * width + meta.len() + 4);
        if !put(tokens, &mut out) {
            return None;
        }
        put_bytes(&mut out, meta);
    }
    Some(out)
}

/// Encodes a delete body.
pub fn encode_delete(ids: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        put_bytes(&mut out, id.as_bytes());
    }
    out
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Why a record body (whose CRC matched) does not decode: corruption, reported with the file and offset.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The body ends before a declared field.
    #[error("record body is truncated")]
    Truncated,
    /// A document's token count times its dimension overflows.
    #[error("token count times dimension overflows")]
    Overflow,
    /// An id that is not valid UTF-8.
    #[error("id is not UTF-8")]
    NotUtf8,
    /// A kind other than upsert, delete or seal.
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    /// Bytes left over after the body decoded.
    #[error("{0} trailing bytes in a record")]
    Trailing(usize),
}

/// Decodes a record body (whose CRC already matched: a failure here is corruption).
pub fn decode(kind: u8, body: &[u8]) -> Result<WalOp, RecordError> {
    let mut r = Cursor { b: body, pos: 0 };
    let n = r.u32()? as usize;
    let op = match kind {
        KIND_UPSERT | KIND_UPSERT_F16 => {
            let width = if kind == KIND_UPSERT { 4 } else { 2 };
            let mut docs = Vec::with_capacity(n.min(body.len() / 16 + 1));
            for _ in 0..n {
                let id = r.string()?;
                let dim = r.u32()? as usize;
                let n_tokens = r.u32()? as usize;
                let raw = r.take(
                    n_tokens
                        .checked_mul(dim)
                        .and_then(|v| v.checked_mul(width))
                        .ok_or(RecordError::Overflow)?,
                )?;
                let tokens = if width == 4 {
                    WalTokens::F32(
                        raw.chunks_exact(4)
                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect(),
                    )
                } else {
                    WalTokens::F16(
                        raw.chunks_exact(2)
                            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                            .collect(),
                    )
                };
                let len = r.u32()? as usize;
                let metadata = r.take(len)?.to_vec();
                docs.push(WalDoc {
                    id,
                    dim,
                    tokens,
                    metadata,
                });
            }
            WalOp::Upsert(docs)
        }
        KIND_DELETE => {
            let mut ids = Vec::with_capacity(n.min(body.len() / 4 + 1));
            for _ in 0..n {
                ids.push(r.string()?);
            }
            WalOp::Delete(ids)
        }
        other => return Err(RecordError::UnknownKind(other)),
    };
    if r.pos != body.len() {
        return Err(RecordError::Trailing(body.len() - r.pos));
    }
    Ok(op)
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or(RecordError::Truncated)?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn string(&mut self) -> Result<String, RecordError> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| RecordError::NotUtf8)
    }
}

fn crc(seq: u64, kind: u8, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&[kind]);
    h.update(body);
    h.finalize()
}

fn header_v2(first_seq: u64, capacity: u64) -> [u8; HEADER_V2 as usize] {
    let mut h = [0u8; HEADER_V2 as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    h[24..32].copy_from_slice(&capacity.to_le_bytes());
    let c = crc32fast::hash(&h[..32]);
    h[32..36].copy_from_slice(&c.to_le_bytes());
    h
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A log file found in a collection directory.
#[derive(Clone, Debug)]
pub struct WalFile {
    /// The file's path.
    pub path: PathBuf,
    /// Sequence number of its first record (from the file name).
    pub first_seq: u64,
}

/// The log files of `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<WalFile>, StorageError> {
    let mut files = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(StorageError::io(dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| StorageError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(seq) = name
            .strip_prefix("wal-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse().ok())
        {
            files.push(WalFile {
                path: entry.path(),
                first_seq: seq,
            });
        }
    }
    files.sort_by_key(|f| f.first_seq);
    Ok(files)
}

fn file_name(first_seq: u64) -> String {
    format!("wal-{first_seq:020}.log")
}

/// What follows the last valid record of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tail {
    /// Nothing, or only zeros (the preallocated fill).
    Clean,
    /// Non-zero bytes up to `end` that hold no valid record: an append that never completed.
    Torn {
        /// File offset where the torn (non-zero) bytes end.
        end: u64,
    },
}

/// How reading one file ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEnd {
    /// Format version of the file.
    pub version: u32,
    /// False for a file without even a complete header (a crash while it was being created).
    pub has_header: bool,
    /// Preallocated size (version 2).
    pub capacity: Option<u64>,
    /// Bytes of valid header + records.
    pub valid_len: u64,
    /// Sequence numbers of the first and last record (None when the file has none).
    pub first_record: Option<u64>,
    /// Sequence number of the last record (None when the file has none).
    pub last_seq: Option<u64>,
    /// The first sequence number of the next file, when this file was closed by a seal record.
    pub sealed: Option<u64>,
    /// What follows the last valid record.
    pub tail: Tail,
}

/// Reads every record of `path` in order, calling `f(seq, op)`; stops at the end of the valid records and
/// reports what follows. A damaged record followed by a valid one is corruption (an error naming the offset).
pub fn read_file(
    path: &Path,
    mut f: impl FnMut(u64, WalOp) -> Result<(), StorageError>,
) -> Result<FileEnd, StorageError> {
    let file = File::open(path).map_err(|e| StorageError::io(path, e))?;
    let size = file
        .metadata()
        .map_err(|e| StorageError::io(path, e))?
        .len();
    let mut r = BufReader::with_capacity(1 << 20, &file);
    let mut end = FileEnd {
        version: VERSION,
        has_header: false,
        capacity: None,
        valid_len: 0,
        first_record: None,
        last_seq: None,
        sealed: None,
        tail: Tail::Clean,
    };
    let mut head = [0u8; HEADER_V2 as usize];
    if size < HEADER_V1 {
        return Ok(end);
    }
    r.read_exact(&mut head[..HEADER_V1 as usize])
        .map_err(|e| StorageError::io(path, e))?;
    if &head[..8] != MAGIC {
        return Err(StorageError::damaged(
            path,
            Some(0),
            "not a chamfer write-ahead log (bad magic)",
        ));
    }
    let version = u32_at(&head, 8);
    end.version = version;
    let mut pos = match version {
        VERSION_1 => HEADER_V1,
        VERSION_2 | VERSION => {
            if size < HEADER_V2 {
                return Ok(end);
            }
            r.read_exact(&mut head[HEADER_V1 as usize..])
                .map_err(|e| StorageError::io(path, e))?;
            if crc32fast::hash(&head[..32]) != u32_at(&head, 32) {
                return Err(StorageError::damaged(
                    path,
                    Some(0),
                    "damaged header (checksum mismatch)",
                ));
            }
            let capacity = u64_at(&head, 24);
            if size < capacity {
                return Err(StorageError::damaged(
                    path,
                    Some(size),
                    format!("truncated: {size} bytes of a log file preallocated to {capacity}"),
                ));
            }
            end.capacity = Some(capacity);
            HEADER_V2
        }
        other => {
            return Err(StorageError::Version {
                path: path.to_path_buf(),
                found: other,
                supported: VERSION,
            })
        }
    };
    end.has_header = true;
    end.valid_len = pos;
    let mut body = Vec::new();
    loop {
        if pos == size {
            return Ok(end);
        }
        let expect = end.last_seq.map(|s| s + 1);
        match next_record(&mut r, size - pos, &mut body)? {
            Some((seq, kind)) if kind == KIND_SEAL => {
                if expect.is_some_and(|e| seq != e) {
                    return Err(StorageError::damaged(
                        path,
                        Some(pos),
                        format!("seal at byte {pos} names sequence {seq}, expected {expect:?}"),
                    ));
                }
                end.sealed = Some(seq);
                pos += 17;
                end.valid_len = pos;
                break;
            }
            Some((seq, kind)) => {
                if let Some(e) = expect {
                    if seq != e {
                        return Err(StorageError::damaged(
                            path,
                            Some(pos),
                            format!("record at byte {pos} has sequence {seq}, expected {e} (a lost or repeated record)"),
                        ));
                    }
                }
                let op = decode(kind, &body[9..]).map_err(|reason| {
                    StorageError::damaged(
                        path,
                        Some(pos),
                        format!("record at byte {pos}: {reason}"),
                    )
                })?;
                f(seq, op)?;
                end.first_record.get_or_insert(seq);
                end.last_seq = Some(seq);
                pos += 8 + body.len() as u64;
                end.valid_len = pos;
            }
            None => break,
        }
    }
    drop(r);
    // Nothing valid may follow, and anything but zeros is a torn append.
    let after = end.last_seq.or(end.sealed.map(|s| s.saturating_sub(1)));
    let scan =
        scan_tail(&file, pos, size, after.unwrap_or(0)).map_err(|e| StorageError::io(path, e))?;
    if let Some((at, seq)) = scan.valid_at {
        return Err(StorageError::damaged(
            path,
            Some(pos),
            format!(
                "damaged bytes at offset {pos}, followed by a valid record (sequence {seq}) at offset {at}: \
                 acknowledged writes would be lost; refusing to replay (nothing was changed)"
            ),
        ));
    }
    if end.sealed.is_some() && scan.nonzero_end > pos {
        return Err(StorageError::damaged(
            path,
            Some(pos),
            format!("bytes after the seal record at offset {pos}"),
        ));
    }
    if scan.nonzero_end > pos {
        end.tail = Tail::Torn {
            end: scan.nonzero_end,
        };
    }
    Ok(end)
}

/// Reads one record at the reader's position. `Ok(None)`: the bytes there are not a valid record.
fn next_record(
    r: &mut impl Read,
    remaining: u64,
    body: &mut Vec<u8>,
) -> Result<Option<(u64, u8)>, StorageError> {
    let mut head = [0u8; 8];
    if remaining < 17 || r.read_exact(&mut head).is_err() {
        return Ok(None);
    }
    let len = u32_at(&head, 0) as usize;
    let want = u32_at(&head, 4);
    if !(9..=MAX_RECORD).contains(&len) || (len as u64) > remaining - 8 {
        return Ok(None);
    }
    body.resize(len, 0);
    if r.read_exact(body).is_err() {
        return Ok(None);
    }
    let seq = u64_at(body, 0);
    let kind = body[8];
    if crc(seq, kind, &body[9..]) != want {
        return Ok(None);
    }
    if kind == KIND_SEAL && len != 9 {
        return Ok(None);
    }
    Ok(Some((seq, kind)))
}

struct TailScan {
    /// Offset one past the last non-zero byte (or `from` when all zero).
    nonzero_end: u64,
    /// The first valid record found after the damage: offset and sequence number.
    valid_at: Option<(u64, u64)>,
}

/// Scans `[from, size)` for non-zero bytes and for any valid record with a sequence number after `after`.
fn scan_tail(file: &File, from: u64, size: u64, after: u64) -> io::Result<TailScan> {
    let mut out = TailScan {
        nonzero_end: from,
        valid_at: None,
    };
    let mut buf = vec![0u8; SCAN_CHUNK.min((size - from) as usize)];
    let mut base = from;
    while base < size {
        let n = buf.len().min((size - base) as usize);
        file.read_exact_at(&mut buf[..n], base)?;
        let Some(last_nonzero) = buf[..n].iter().rposition(|&b| b != 0) else {
            // All zeros: no record can start here (its length field would be non-zero).
            base += n as u64;
            continue;
        };
        out.nonzero_end = base + last_nonzero as u64 + 1;
        // Candidate record starts: a plausible length, kind and sequence number, then the CRC over the body.
        for i in 0..n {
            let at = base + i as u64;
            if at + 17 > size {
                break;
            }
            let mut h = [0u8; 17];
            if i + 17 <= n {
                h.copy_from_slice(&buf[i..i + 17]);
            } else {
                file.read_exact_at(&mut h, at)?;
            }
            let len = u32_at(&h, 0) as u64;
            let seq = u64_at(&h, 8);
            let kind = h[16];
            if len < 9 || len > size - at - 8 || len as usize > MAX_RECORD {
                continue;
            }
            if !(KIND_UPSERT..=KIND_UPSERT_F16).contains(&kind)
                || seq <= after
                || seq - after > 1 << 40
            {
                continue;
            }
            let mut body = vec![0u8; len as usize];
            file.read_exact_at(&mut body, at + 8)?;
            if crc(seq, kind, &body[9..]) == u32_at(&h, 4) {
                out.valid_at = Some((at, seq));
                return Ok(out);
            }
        }
        base += n as u64;
    }
    Ok(out)
}

/// The log of a collection as replay found it.
pub struct Replayed {
    files: Vec<(WalFile, FileEnd)>,
    /// The last sequence number in the log (or the one before the live file's first, when it is empty).
    pub last_seq: u64,
    /// How far the control file says the log was acknowledged (None: a log without one, written before it
    /// existed). Never above `last_seq`: replay refuses a log that falls short of it.
    pub acked: Option<u64>,
}

/// Whether the log in question must have a control file ([`control`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlFile {
    /// It must (the manifest says the collection's log has one): a missing control file is damage.
    Required,
    /// A log written before control files existed may lack it (one that has it is checked all the same).
    MayLack,
}

/// Replays every record after `flushed_seq` of the log in `dir` through `f`, checking the whole chain (see the
/// module documentation). Damage is an error naming the file and offset; nothing is modified here.
pub fn replay(
    dir: &Path,
    flushed_seq: u64,
    control_file: ControlFile,
    mut f: impl FnMut(u64, WalOp) -> Result<(), StorageError>,
) -> Result<Replayed, StorageError> {
    // Read first: it is the witness of what the files below must hold.
    let acked = control::read(dir)?;
    if acked.is_none() && control_file == ControlFile::Required {
        return Err(StorageError::damaged(
            control::path(dir),
            None,
            "the log's control file is missing (the manifest says this log has one): whether acknowledged \
             writes are missing from the log cannot be checked",
        ));
    }
    let files = list(dir)?;
    if files.is_empty() {
        return Err(StorageError::damaged(
            dir,
            None,
            format!(
                "no write-ahead log file (a collection always has one; records after sequence {flushed_seq} may be lost)"
            ),
        ));
    }
    let mut out: Vec<(WalFile, FileEnd)> = Vec::with_capacity(files.len());
    let n = files.len();
    for (i, w) in files.into_iter().enumerate() {
        let last = i + 1 == n;
        let end = read_file(&w.path, |seq, op| {
            if seq > flushed_seq {
                f(seq, op)
            } else {
                Ok(())
            }
        })?;
        if !end.has_header && !last {
            return Err(StorageError::damaged(
                &w.path,
                None,
                "a closed log file without a header",
            ));
        }
        if let Some(s) = end.first_record {
            if s != w.first_seq {
                return Err(StorageError::damaged(
                    &w.path,
                    None,
                    format!(
                        "first record has sequence {s}, the file name says {}",
                        w.first_seq
                    ),
                ));
            }
        }
        if let Tail::Torn { end: e } = end.tail {
            if !last {
                return Err(StorageError::damaged(
                    &w.path,
                    Some(end.valid_len),
                    format!(
                        "damaged bytes at offset {} of a closed log file (up to offset {e})",
                        end.valid_len
                    ),
                ));
            }
        }
        if let Some((prev, pend)) = out.last() {
            let prev_last = pend.last_seq.unwrap_or(prev.first_seq.saturating_sub(1));
            let chained =
                w.first_seq == prev_last + 1 && pend.sealed.is_none_or(|s| s == w.first_seq);
            if !chained && w.first_seq > flushed_seq + 1 {
                return Err(StorageError::damaged(
                    &w.path,
                    None,
                    format!(
                        "the log chain is broken: {} ends at sequence {prev_last}, this file starts at {} \
                         (a log file is missing)",
                        prev.path.display(),
                        w.first_seq
                    ),
                ));
            }
            // A closed file of version 2 or later is sealed, except right before a still-empty newest file (a crash between
            // creating the new file and sealing the old one).
            let crash_window = last && end.first_record.is_none();
            if pend.version >= VERSION_2
                && pend.sealed.is_none()
                && !crash_window
                && w.first_seq > flushed_seq + 1
            {
                return Err(StorageError::damaged(
                    &prev.path,
                    None,
                    "a closed log file without its seal record (damaged)",
                ));
            }
        }
        out.push((w, end));
    }
    let (last_file, last_end) = out.last().expect("at least one file");
    if let Some(next) = last_end.sealed {
        return Err(StorageError::damaged(
            &last_file.path,
            None,
            format!(
                "this log file was closed, but its successor {} is missing",
                file_name(next)
            ),
        ));
    }
    let first = &out[0].0;
    if first.first_seq > flushed_seq + 1 {
        return Err(StorageError::damaged(
            &first.path,
            None,
            format!(
                "the log starts at sequence {}, but records from {} on were never flushed (a log file is missing)",
                first.first_seq,
                flushed_seq + 1
            ),
        ));
    }
    let last_seq = last_end
        .last_seq
        .unwrap_or(last_file.first_seq.saturating_sub(1))
        .max(
            out.iter()
                .filter_map(|(_, e)| e.last_seq)
                .max()
                .unwrap_or(0),
        );
    if last_seq < flushed_seq {
        return Err(StorageError::damaged(
            &last_file.path,
            None,
            format!("the log ends at sequence {last_seq}, before the manifest's flushed sequence {flushed_seq}"),
        ));
    }
    if let Some(acked) = acked.filter(|&a| a > last_seq) {
        let offset = last_end.has_header.then_some(last_end.valid_len);
        return Err(StorageError::damaged(
            &last_file.path,
            offset,
            format!(
                "the log ends at sequence {last_seq}, but writes up to sequence {acked} were acknowledged \
                 (wal/{}): {} acknowledged record(s) are missing (the log's tail was wiped, truncated or \
                 damaged); refusing to open (nothing was changed)",
                control::FILE_NAME,
                acked - last_seq
            ),
        ));
    }
    Ok(Replayed {
        files: out,
        last_seq,
        acked,
    })
}

/// The open, appendable log of one collection. Owned by the collection's sequencer thread.
pub struct WalWriter {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    /// Bytes of the current file that are valid (and synced).
    len: u64,
    capacity: u64,
    /// Older files (closed by rotation), with their valid sizes.
    older: Vec<(PathBuf, u64)>,
    /// Set when a failed append could not be rolled back: no further write is accepted.
    poisoned: Option<String>,
    /// The control file: how far the log was acknowledged.
    control: Control,
}

impl WalWriter {
    /// Creates the first log file of a new collection.
    pub fn create(dir: &Path, first_seq: u64) -> Result<WalWriter, StorageError> {
        fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
        let control = Control::create(dir, first_seq.saturating_sub(1))?;
        WalWriter::create_file(dir, first_seq, control)
    }

    fn create_file(
        dir: &Path,
        first_seq: u64,
        control: Control,
    ) -> Result<WalWriter, StorageError> {
        let (file, path, capacity) = create(dir, first_seq, FILE_CAPACITY)?;
        Ok(WalWriter {
            dir: dir.to_path_buf(),
            file,
            path,
            len: HEADER_V2,
            capacity,
            older: Vec::new(),
            poisoned: None,
            control,
        })
    }

    /// Continues the log that [`replay`] read. A torn tail of the newest file is first copied to `quarantine`
    /// (evidence, never deleted) and then cleared; a version-1 newest file is closed and a version-2 file started.
    /// The control file is then written (created, for a log that had none) with the log's last sequence: every
    /// replayed record is now part of the collection's state.
    pub fn open(
        dir: &Path,
        replayed: &Replayed,
        quarantine: &Path,
    ) -> Result<WalWriter, StorageError> {
        let mut older: Vec<(PathBuf, u64)> = replayed
            .files
            .iter()
            .take(replayed.files.len().saturating_sub(1))
            .map(|(w, e)| (w.path.clone(), e.valid_len))
            .collect();
        let (last, end) = replayed
            .files
            .last()
            .expect("replay found at least one file");
        if let Tail::Torn { end: torn_end } = end.tail {
            let acknowledged = match replayed.acked {
                Some(a) => format!(
                    "never acknowledged: the control file records acknowledgements up to sequence {a}, and the log \
                     holds every record up to {}",
                    replayed.last_seq
                ),
                None => "whether it was acknowledged cannot be known: this log has no control file (it was \
                         written before control files existed)"
                    .to_string(),
            };
            save_evidence(
                &last.path,
                end.valid_len,
                torn_end,
                quarantine,
                &acknowledged,
            )?;
        }
        let control = Control::create(dir, replayed.last_seq)?;
        let next_seq = replayed.last_seq + 1;
        if let [.., (prev, pend), _] = replayed.files.as_slice() {
            if pend.version >= VERSION_2 && pend.sealed.is_none() && end.first_record.is_none() {
                // Finish a rotation that crashed between creating the newest file and sealing the one before.
                let f = OpenOptions::new()
                    .write(true)
                    .open(&prev.path)
                    .map_err(|e| StorageError::io(&prev.path, e))?;
                f.write_all_at(&record_head(last.first_seq, KIND_SEAL, &[]), pend.valid_len)
                    .and_then(|_| f.sync_data())
                    .map_err(|e| StorageError::io(&prev.path, e))?;
                if let Some(o) = older.last_mut() {
                    o.1 = pend.valid_len + 17;
                }
            }
        }
        if !end.has_header {
            // A crash while the newest file was being created: it holds nothing.
            fs::remove_file(&last.path).map_err(|e| StorageError::io(&last.path, e))?;
            sync_dir(dir);
            let mut w = WalWriter::create_file(dir, next_seq, control)?;
            w.older = older;
            return Ok(w);
        }
        let io = |e| StorageError::io(&last.path, e);
        let file = OpenOptions::new()
            .write(true)
            .open(&last.path)
            .map_err(io)?;
        match end.capacity {
            Some(capacity) => {
                if end.tail != Tail::Clean {
                    file.set_len(end.valid_len).map_err(io)?;
                    file.set_len(capacity).map_err(io)?;
                    file.sync_all().map_err(io)?;
                }
                let mut w = WalWriter {
                    dir: dir.to_path_buf(),
                    file,
                    path: last.path.clone(),
                    len: end.valid_len,
                    capacity,
                    older,
                    poisoned: None,
                    control,
                };
                w.file.seek(SeekFrom::Start(w.len)).map_err(io)?;
                Ok(w)
            }
            None => {
                // Version 1: keep it (without its torn tail) as a closed file and continue in a new one.
                if end.tail != Tail::Clean {
                    file.set_len(end.valid_len).map_err(io)?;
                    file.sync_all().map_err(io)?;
                }
                older.push((last.path.clone(), end.valid_len));
                let mut w = WalWriter::create_file(dir, next_seq, control)?;
                w.older = older;
                Ok(w)
            }
        }
    }

    /// Appends records `(seq, kind, body)`, fsyncs, then records the last one's sequence in the control file
    /// (and fsyncs it): only then may they be acknowledged. On failure the file is rolled back to its previous
    /// length (or, if even that fails, the log refuses every later write).
    pub fn append(&mut self, records: &[(u64, u8, &[u8])]) -> Result<(), StorageError> {
        self.check_poisoned()?;
        let (Some(&(first_seq, _, _)), Some(&(last_seq, _, _))) = (records.first(), records.last())
        else {
            return Ok(());
        };
        let bytes: u64 = records.iter().map(|r| 17 + r.2.len() as u64).sum();
        // Leave room for the seal record that closes a full file.
        if self.len + bytes + 17 > self.capacity {
            self.rotate_inner(first_seq, HEADER_V2 + bytes + 17)?;
        }
        let n = match write_records(&self.file, records) {
            Ok(n) => n,
            Err(e) => {
                if let Err(e2) = self.roll_back() {
                    self.poisoned = Some(format!("{e}; rollback failed: {e2}"));
                }
                return Err(StorageError::io(&self.path, e));
            }
        };
        self.len += n;
        if let Err(e) = self.control.record(last_seq) {
            // The records are durable, and the control file may or may not say so: rolling them back could leave
            // a control that runs ahead of the log. Keep them (they replay at the next start, unacknowledged
            // writes that survived) and refuse every later write, as after a failed rollback.
            let e = StorageError::io(self.control.path(), e);
            self.poisoned = Some(format!("writing the log's control file failed: {e}"));
            return Err(e);
        }
        Ok(())
    }

    fn check_poisoned(&self) -> Result<(), StorageError> {
        match &self.poisoned {
            Some(reason) => Err(StorageError::Poisoned {
                path: self.path.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Clears whatever a failed append may have left past the valid length: truncate (frees blocks, needs no
    /// space) and re-extend to the capacity, so the bytes read back as the zero fill, never as records.
    fn roll_back(&mut self) -> io::Result<()> {
        self.file.set_len(self.len)?;
        self.file.set_len(self.capacity)?;
        self.file.sync_all()?;
        self.file.seek(SeekFrom::Start(self.len)).map(|_| ())
    }

    /// Closes the current file and starts `wal-{next_seq}` (unless the current file has no record yet).
    /// Returns every closed file: they hold only records before `next_seq`.
    pub fn rotate(&mut self, next_seq: u64) -> Result<Vec<PathBuf>, StorageError> {
        if self.len > HEADER_V2 {
            self.rotate_inner(next_seq, FILE_CAPACITY)?;
        }
        Ok(self.older.iter().map(|(p, _)| p.clone()).collect())
    }

    fn rotate_inner(&mut self, next_seq: u64, min_capacity: u64) -> Result<(), StorageError> {
        self.check_poisoned()?;
        if self.len == HEADER_V2 {
            // Nothing in the current file: replace it (atomically) by a larger one under the same name.
            let first = u64_from_name(&self.path).unwrap_or(next_seq);
            let (file, path, capacity) = create(&self.dir, first, min_capacity.max(FILE_CAPACITY))?;
            self.file = file;
            self.path = path;
            self.capacity = capacity;
            return Ok(());
        }
        // New file first, then the seal: a crash in between leaves an unsealed file before an empty one.
        let (file, path, capacity) = create(&self.dir, next_seq, min_capacity.max(FILE_CAPACITY))?;
        write_records(&self.file, &[(next_seq, KIND_SEAL, &[])])
            .map_err(|e| StorageError::io(&self.path, e))?;
        let old = std::mem::replace(&mut self.path, path);
        self.file = file;
        self.older.push((old, self.len + 17));
        self.len = HEADER_V2;
        self.capacity = capacity;
        Ok(())
    }

    /// Deletes closed files (after a manifest made them obsolete).
    pub fn remove(&mut self, paths: &[PathBuf]) -> Result<(), StorageError> {
        for p in paths {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io(p, e)),
            }
        }
        self.older.retain(|(p, _)| !paths.contains(p));
        sync_dir(&self.dir);
        Ok(())
    }

    /// Bytes of log records on disk (not counting the preallocated fill).
    pub fn bytes(&self) -> u64 {
        self.len + self.older.iter().map(|(_, l)| l).sum::<u64>()
    }

    /// Flushes file metadata too (at shutdown).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

fn u64_from_name(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("wal-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// The 17 bytes before a record's body: `len | crc32 | seq | kind`.
fn record_head(seq: u64, kind: u8, body: &[u8]) -> [u8; 17] {
    let mut h = [0u8; 17];
    h[..4].copy_from_slice(&((9 + body.len()) as u32).to_le_bytes());
    h[4..8].copy_from_slice(&crc(seq, kind, body).to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16] = kind;
    h
}

fn write_records(file: &File, records: &[(u64, u8, &[u8])]) -> io::Result<u64> {
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut n = 0u64;
    for &(seq, kind, body) in records {
        w.write_all(&record_head(seq, kind, body))?;
        w.write_all(body)?;
        n += 17 + body.len() as u64;
    }
    w.flush()?;
    drop(w);
    file.sync_data()?;
    Ok(n)
}

/// Copies `[from, to)` of `path` into `quarantine/` before those bytes are cleared.
fn save_evidence(
    path: &Path,
    from: u64,
    to: u64,
    quarantine: &Path,
    acknowledged: &str,
) -> Result<(), StorageError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dest = quarantine.join(format!("{name}.torn-at-{from}"));
    let file = File::open(path).map_err(|e| StorageError::io(path, e))?;
    let mut bytes = vec![0u8; (to - from) as usize];
    file.read_exact_at(&mut bytes, from)
        .map_err(|e| StorageError::io(path, e))?;
    fs::create_dir_all(quarantine).map_err(|e| StorageError::io(quarantine, e))?;
    fsutil::write_atomic(&dest, &bytes)?;
    tracing::warn!(file = %path.display(), offset = from, bytes = to - from, evidence = %dest.display(),
        acknowledged, "torn log tail: bytes after the last valid record that hold no valid record (an append that \
        never completed, or a damaged last record); its bytes were saved and cleared");
    Ok(())
}

/// Creates a complete log file (header, zero fill to `capacity`) under a temporary name, then renames it into
/// place: a file named `wal-*.log` is never half made.
fn create(dir: &Path, first_seq: u64, capacity: u64) -> Result<(File, PathBuf, u64), StorageError> {
    let path = dir.join(file_name(first_seq));
    let tmp = dir.join(format!("{}.tmp", file_name(first_seq)));
    let capacity = capacity.max(HEADER_V2);
    let io = |e| StorageError::io(&tmp, e);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(&header_v2(first_seq, capacity))
        .map_err(io)?;
    file.set_len(capacity).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, &path).map_err(|e| StorageError::io(&path, e))?;
    sync_dir(dir);
    file.seek(SeekFrom::Start(HEADER_V2))
        .map_err(|e| StorageError::io(&path, e))?;
    Ok((file, path, capacity))
}

/// Recomputes the header CRC (with the capacity set to the file's size) and every record CRC of a log file's
/// bytes, as far as the length fields allow: lets a fuzzer's mutations reach the checks behind the checksums.
#[doc(hidden)]
pub fn reseal(bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    if b.len() < HEADER_V1 as usize || &b[..8] != MAGIC {
        return b;
    }
    let mut pos = match u32_at(&b, 8) {
        VERSION_2 | VERSION if b.len() >= HEADER_V2 as usize => {
            let len = b.len() as u64;
            b[24..32].copy_from_slice(&len.to_le_bytes());
            let c = crc32fast::hash(&b[..32]);
            b[32..36].copy_from_slice(&c.to_le_bytes());
            HEADER_V2 as usize
        }
        VERSION_1 => HEADER_V1 as usize,
        _ => return b,
    };
    while pos + 17 <= b.len() {
        let len = u32_at(&b, pos) as usize;
        if len < 9 || pos + 8 + len > b.len() {
            break;
        }
        let body = &b[pos + 8..pos + 8 + len];
        let c = crc(u64_at(body, 0), body[8], &body[9..]);
        b[pos + 4..pos + 8].copy_from_slice(&c.to_le_bytes());
        pos += 8 + len;
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(id: &str) -> Vec<u8> {
        let t = [1.0f32, 2.0];
        encode_upsert([(id, 2usize, &t[..], &b"{\"a\":1}"[..])].into_iter())
    }

    /// Replays everything after `flushed`: (seq, op) pairs, or the error.
    fn replay_all(dir: &Path, flushed: u64) -> Result<(Vec<(u64, WalOp)>, Replayed), StorageError> {
        let mut v = Vec::new();
        let r = replay(dir, flushed, ControlFile::MayLack, |s, op| {
            v.push((s, op));
            Ok(())
        })?;
        Ok((v, r))
    }

    fn seqs(v: &[(u64, WalOp)]) -> Vec<u64> {
        v.iter().map(|(s, _)| *s).collect()
    }

    /// A log of `n` records (seq 1..=n), one append each, in one file. Returns the file.
    fn log_of(dir: &Path, n: u64) -> PathBuf {
        let mut w = WalWriter::create(dir, 1).unwrap();
        for seq in 1..=n {
            let b = upsert(&format!("d{seq}"));
            w.append(&[(seq, KIND_UPSERT, &b)]).unwrap();
        }
        list(dir).unwrap()[0].path.clone()
    }

    fn record_offset(path: &Path, index: usize) -> u64 {
        let bytes = fs::read(path).unwrap();
        let mut pos = HEADER_V2 as usize;
        for _ in 0..index {
            pos += 8 + u32_at(&bytes, pos) as usize;
        }
        pos as u64
    }

    #[test]
    fn round_trips_and_continues_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(dir.path(), 1).unwrap();
        let (a, d) = (upsert("a"), encode_delete(&["a".into(), "b".into()]));
        w.append(&[(1, KIND_UPSERT, &a), (2, KIND_DELETE, &d)])
            .unwrap();
        drop(w);
        let (recs, r) = replay_all(dir.path(), 0).unwrap();
        assert_eq!((seqs(&recs), r.last_seq), (vec![1, 2], 2));
        match &recs[0].1 {
            WalOp::Upsert(docs) => assert_eq!(
                (docs[0].id.as_str(), &*docs[0].tokens.to_f32()),
                ("a", &[1.0, 2.0][..])
            ),
            other => panic!("{other:?}"),
        }
        let mut w = WalWriter::open(dir.path(), &r, &dir.path().join("q")).unwrap();
        w.append(&[(3, KIND_UPSERT, &a)]).unwrap();
        let (recs, _) = replay_all(dir.path(), 0).unwrap();
        assert_eq!(seqs(&recs), vec![1, 2, 3]);
        // Records at or before the flushed sequence are not replayed.
        assert_eq!(seqs(&replay_all(dir.path(), 2).unwrap().0), vec![3]);
    }

    #[test]
    fn a_torn_tail_is_saved_aside_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_of(dir.path(), 3);
        // An append that never completed: half a record after the last valid one.
        let end = record_offset(&path, 3);
        let partial = &upsert("torn")[..10];
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[40, 0, 0, 0, 1, 2, 3, 4], end).unwrap();
        f.write_all_at(partial, end + 8).unwrap();
        let (recs, r) = replay_all(dir.path(), 0).unwrap();
        assert_eq!(seqs(&recs), vec![1, 2, 3]);
        let q = dir.path().join("quarantine");
        let mut w = WalWriter::open(dir.path(), &r, &q).unwrap();
        let saved: Vec<_> = fs::read_dir(&q).unwrap().flatten().collect();
        assert_eq!(saved.len(), 1, "the torn bytes are kept as evidence");
        assert_eq!(fs::read(saved[0].path()).unwrap().len(), 18);
        let b = upsert("next");
        w.append(&[(4, KIND_UPSERT, &b)]).unwrap();
        assert_eq!(
            seqs(&replay_all(dir.path(), 0).unwrap().0),
            vec![1, 2, 3, 4]
        );
    }

    #[test]
    fn damage_followed_by_valid_records_is_refused_and_nothing_is_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_of(dir.path(), 5);
        let at = record_offset(&path, 1) + 20;
        let mut bytes = fs::read(&path).unwrap();
        bytes[at as usize] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let e = replay_all(dir.path(), 0).err().expect("refused");
        let msg = e.to_string();
        assert!(matches!(e, StorageError::Damaged { .. }), "{msg}");
        assert!(msg.contains("followed by a valid record"), "{msg}");
        assert_eq!(
            fs::read(&path).unwrap(),
            bytes,
            "evidence is never truncated"
        );
        // The same flip in the length field of a middle record.
        let dir = tempfile::tempdir().unwrap();
        let path = log_of(dir.path(), 5);
        let at = record_offset(&path, 2);
        let mut bytes = fs::read(&path).unwrap();
        bytes[at as usize + 1] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        assert!(replay_all(dir.path(), 0).is_err());
    }

    #[test]
    fn a_truncated_or_missing_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_of(dir.path(), 4);
        let end = record_offset(&path, 2);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(end)
            .unwrap();
        let e = replay_all(dir.path(), 0).err().expect("refused");
        assert!(e.to_string().contains("truncated"), "{e}");

        fs::remove_file(&path).unwrap();
        let e = replay_all(dir.path(), 0).err().expect("refused");
        assert!(e.to_string().contains("no write-ahead log"), "{e}");
    }

    /// Three files: seq 1-2 | 3-4 | 5-6 (two records each, one append per record), control at 6.
    fn three_files(dir: &Path) -> Vec<WalFile> {
        let mut w = WalWriter::create(dir, 1).unwrap();
        let a = upsert("a");
        for seq in 1..=6 {
            w.append(&[(seq, KIND_UPSERT, &a)]).unwrap();
            if seq % 2 == 0 && seq < 6 {
                w.rotate(seq + 1).unwrap();
            }
        }
        let files = list(dir).unwrap();
        assert_eq!(files.len(), 3);
        files
    }

    /// Issue 21, item 1: a file emptied (`truncate -s 0`) or with its records zeroed (header kept) is refused
    /// wherever it sits in the chain (first, middle, newest), with or without a flush before it, whenever it
    /// held a record after the flushed sequence; nothing is changed by the refusal.
    #[test]
    fn a_wiped_log_file_is_refused_at_every_position() {
        type Wipe = fn(&Path);
        let wipes: [(&str, Wipe); 2] = [
            ("truncated to 0 bytes", |p| {
                OpenOptions::new()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_len(0)
                    .unwrap()
            }),
            ("records zeroed", |p| {
                let mut b = fs::read(p).unwrap();
                b[HEADER_V2 as usize..].fill(0);
                fs::write(p, b).unwrap();
            }),
        ];
        for (how, wipe) in wipes {
            for position in 0..3 {
                // flushed 0: nothing flushed; 2: the first file's records are in shards (a flush whose
                // obsolete log file was not removed yet); the newest file's records are never flushed here.
                for flushed in [0u64, 2] {
                    let dir = tempfile::tempdir().unwrap();
                    let files = three_files(dir.path());
                    wipe(&files[position].path);
                    let before: Vec<Vec<u8>> =
                        files.iter().map(|f| fs::read(&f.path).unwrap()).collect();
                    let got = replay_all(dir.path(), flushed);
                    let lost = position > 0 || flushed < 2;
                    let case = format!("{how}, file {position}, flushed {flushed}");
                    match (lost, got) {
                        (true, Ok((recs, _))) => {
                            panic!(
                                "{case}: opened with {:?}: acknowledged records lost",
                                seqs(&recs)
                            )
                        }
                        (true, Err(e)) => {
                            let e = e.to_string();
                            assert!(
                                e.contains(&file_name(files[position].first_seq))
                                    || e.contains(&file_name(
                                        files[position.saturating_sub(1)].first_seq
                                    ))
                                    || e.contains(&file_name(files[2].first_seq)),
                                "{case}: {e}"
                            );
                        }
                        // Only records already in shards were wiped, so nothing acknowledged is lost: a zeroed
                        // file still has its header and opens; an emptied closed file has none and is refused.
                        (false, Ok((recs, r))) => {
                            assert_eq!(
                                how, "records zeroed",
                                "{case}: a headerless closed file opened"
                            );
                            assert_eq!((seqs(&recs), r.last_seq), (vec![3, 4, 5, 6], 6), "{case}")
                        }
                        (false, Err(e)) => {
                            let e = e.to_string();
                            assert!(
                                how == "truncated to 0 bytes" && e.contains("without a header"),
                                "{case}: {e}"
                            );
                        }
                    }
                    let after: Vec<Vec<u8>> =
                        files.iter().map(|f| fs::read(&f.path).unwrap()).collect();
                    assert!(before == after, "{case}: the refusal changed nothing");
                }
            }
        }
        // The newest (only) file of a log whose earlier files were removed after a flush, wiped: refused with the
        // control file's evidence, naming how many acknowledged records are missing.
        let dir = tempfile::tempdir().unwrap();
        let files = three_files(dir.path());
        for f in &files[..2] {
            fs::remove_file(&f.path).unwrap();
        }
        OpenOptions::new()
            .write(true)
            .open(&files[2].path)
            .unwrap()
            .set_len(0)
            .unwrap();
        let e = replay_all(dir.path(), 4)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.contains("ends at sequence 4")
                && e.contains("up to sequence 6")
                && e.contains("2 acknowledged"),
            "{e}"
        );
    }

    /// Issue 21, item 2: a damaged LAST record that was acknowledged is refused (the control file says so), not
    /// dropped as a torn append; a torn append that was never acknowledged still opens (and its bytes are kept).
    #[test]
    fn an_acknowledged_last_record_that_is_damaged_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_of(dir.path(), 3);
        let last = record_offset(&path, 2);
        let mut b = fs::read(&path).unwrap();
        b[last as usize + 20] ^= 0x01;
        fs::write(&path, &b).unwrap();
        let e = replay_all(dir.path(), 0)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.contains("up to sequence 3") && e.contains("ends at sequence 2"),
            "{e}"
        );
        // The same bytes without the control's evidence (a log from before control files): opened as a torn
        // tail, the record's bytes saved aside.
        fs::remove_file(control::path(dir.path())).unwrap();
        let (recs, r) = replay_all(dir.path(), 0).unwrap();
        assert_eq!((seqs(&recs), r.acked), (vec![1, 2], None));
        // ...but a manifest that says the log has a control file refuses the missing file.
        let e = replay(dir.path(), 0, ControlFile::Required, |_, _| Ok(()))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("control file is missing"), "{e}");
    }

    /// The control file never runs ahead of the log: an append whose records were written but whose control
    /// write never happened (a crash between the two) opens with those records, and the control catches up.
    #[test]
    fn the_control_file_follows_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(dir.path(), 1).unwrap();
        assert_eq!(control::read(dir.path()).unwrap(), Some(0));
        let a = upsert("a");
        w.append(&[(1, KIND_UPSERT, &a), (2, KIND_UPSERT, &a)])
            .unwrap();
        assert_eq!(control::read(dir.path()).unwrap(), Some(2));
        // A crash after the log's fsync, before the control's: the log is ahead, which is fine.
        write_records(&w.file, &[(3, KIND_UPSERT, &a)]).unwrap();
        drop(w);
        let (recs, r) = replay_all(dir.path(), 0).unwrap();
        assert_eq!((seqs(&recs), r.acked), (vec![1, 2, 3], Some(2)));
        let w = WalWriter::open(dir.path(), &r, &dir.path().join("q")).unwrap();
        assert_eq!(w.control.acked_seq(), 3);
        assert_eq!(control::read(dir.path()).unwrap(), Some(3));
    }

    #[test]
    fn rotation_seals_and_a_broken_chain_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(dir.path(), 1).unwrap();
        let a = upsert("a");
        assert!(
            w.rotate(1).unwrap().is_empty(),
            "an empty file is not rotated"
        );
        w.append(&[(1, KIND_UPSERT, &a)]).unwrap();
        let closed = w.rotate(2).unwrap();
        assert_eq!(closed.len(), 1);
        w.append(&[(2, KIND_UPSERT, &a)]).unwrap();
        w.rotate(3).unwrap();
        w.append(&[(3, KIND_UPSERT, &a)]).unwrap();
        let files = list(dir.path()).unwrap();
        assert_eq!(
            files.iter().map(|f| f.first_seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(seqs(&replay_all(dir.path(), 0).unwrap().0), vec![1, 2, 3]);
        // Removing files the manifest made obsolete is fine...
        w.remove(&closed).unwrap();
        assert_eq!(seqs(&replay_all(dir.path(), 1).unwrap().0), vec![2, 3]);
        // ...but not when their records were never flushed.
        assert!(replay_all(dir.path(), 0).is_err());
        // The newest file deleted: its sealed predecessor names it.
        fs::remove_file(&files[2].path).unwrap();
        let e = replay_all(dir.path(), 1).err().expect("refused");
        assert!(e.to_string().contains("is missing"), "{e}");
    }

    #[test]
    fn a_middle_file_missing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(dir.path(), 1).unwrap();
        let a = upsert("a");
        for seq in 1..=3 {
            w.append(&[(seq, KIND_UPSERT, &a)]).unwrap();
            w.rotate(seq + 1).unwrap();
        }
        fs::remove_file(&list(dir.path()).unwrap()[1].path).unwrap();
        let e = replay_all(dir.path(), 0).err().expect("refused");
        assert!(e.to_string().contains("chain is broken"), "{e}");
    }

    #[test]
    fn a_group_larger_than_the_file_gets_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(dir.path(), 1).unwrap();
        let small = upsert("a");
        w.append(&[(1, KIND_UPSERT, &small)]).unwrap();
        let big = vec![0u8; FILE_CAPACITY as usize];
        let ids = encode_delete(&[String::from_utf8(vec![b'x'; 8]).unwrap()]);
        // A body that decodes: a delete with one long id.
        let mut long = Vec::new();
        long.extend_from_slice(&1u32.to_le_bytes());
        long.extend_from_slice(&(big.len() as u32).to_le_bytes());
        long.extend_from_slice(&big);
        w.append(&[(2, KIND_DELETE, &long), (3, KIND_DELETE, &ids)])
            .unwrap();
        let files = list(dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        let (recs, r) = replay_all(dir.path(), 0).unwrap();
        assert_eq!((seqs(&recs), r.last_seq), (vec![1, 2, 3], 3));
    }

    #[test]
    fn a_crash_between_creating_a_file_and_sealing_the_old_one_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_of(dir.path(), 2);
        let (file, _, _) = create(dir.path(), 3, FILE_CAPACITY).unwrap();
        drop(file);
        let (recs, r) = replay_all(dir.path(), 0).unwrap();
        assert_eq!((seqs(&recs), r.last_seq), (vec![1, 2], 2));
        let mut w = WalWriter::open(dir.path(), &r, &dir.path().join("q")).unwrap();
        w.append(&[(3, KIND_UPSERT, &upsert("c"))]).unwrap();
        assert_eq!(seqs(&replay_all(dir.path(), 0).unwrap().0), vec![1, 2, 3]);
        assert!(path.exists());
    }

    /// f16-exact batches are logged as f16 (half the token bytes) and replay to the same f32 values; a batch with
    /// one value that is not an f16 stays f32; both kinds replay in one log, and a version-2 file (written before
    /// kind 4 existed) still replays and is continued.
    #[test]
    fn f16_exact_batches_are_logged_as_f16_and_replay_losslessly() {
        let tiny = half::f16::from_f32(3.0e-5).to_f32(); // an f16 subnormal
        let halves = [0.5f32, -1.25, tiny, -0.0, 65504.0, 1.0 / 1024.0];
        let docs = [
            ("h", 3usize, &halves[..], &b""[..]),
            ("m", 3, &halves[..3], &b"{}"[..]),
        ];
        let (kind, body) = encode_upsert_compact(docs.into_iter());
        let (_, wide) = (KIND_UPSERT, encode_upsert(docs.into_iter()));
        assert_eq!(kind, KIND_UPSERT_F16);
        assert_eq!(wide.len() - body.len(), 9 * 2, "two bytes saved per value");
        let WalOp::Upsert(back) = decode(kind, &body).unwrap() else {
            panic!("not an upsert")
        };
        assert!(matches!(back[0].tokens, WalTokens::F16(_)));
        assert_eq!(back[0].tokens.to_f32(), halves.to_vec());
        assert_eq!(back[1].tokens.to_f32(), halves[..3].to_vec());
        assert_eq!(back[1].metadata, b"{}".to_vec());
        // The f32 record of the same batch decodes to the same values.
        let WalOp::Upsert(wide_back) = decode(KIND_UPSERT, &wide).unwrap() else {
            panic!("not an upsert")
        };
        for (a, b) in wide_back.iter().zip(&back) {
            assert!(matches!(a.tokens, WalTokens::F32(_)));
            assert_eq!((&a.id, a.tokens.to_f32()), (&b.id, b.tokens.to_f32()));
        }
        // One value off the f16 grid keeps the whole batch f32.
        let off = [0.5f32, 0.1, 2.0];
        let mixed = [
            ("h", 3usize, &halves[..3], &b""[..]),
            ("o", 3, &off[..], &b""[..]),
        ];
        let (kind2, body2) = encode_upsert_compact(mixed.into_iter());
        assert_eq!(kind2, KIND_UPSERT);
        let WalOp::Upsert(back2) = decode(kind2, &body2).unwrap() else {
            panic!("not an upsert")
        };
        assert_eq!(back2[1].tokens, WalTokens::F32(off.to_vec()));
        // Truncated f16 bodies are refused like f32 ones.
        assert!(decode(KIND_UPSERT_F16, &body[..body.len() - 3]).is_err());

        // A version-2 file (the same header but version 2), then this build's records.
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(dir.path(), 1).unwrap();
        w.append(&[(1, KIND_UPSERT, &upsert("v2"))]).unwrap();
        drop(w);
        let path = dir.path().join(file_name(1));
        let mut bytes = fs::read(&path).unwrap();
        bytes[8..12].copy_from_slice(&VERSION_2.to_le_bytes());
        fs::write(&path, reseal(&bytes)).unwrap();
        let (recs, r) = replay_all(dir.path(), 0).unwrap();
        assert_eq!(seqs(&recs), vec![1]);
        let mut w = WalWriter::open(dir.path(), &r, &dir.path().join("q")).unwrap();
        w.append(&[(2, kind, &body), (3, kind2, &body2)]).unwrap();
        drop(w);
        let (recs, _) = replay_all(dir.path(), 0).unwrap();
        assert_eq!(seqs(&recs), vec![1, 2, 3]);
        assert_eq!(recs[1].1, WalOp::Upsert(back));
        assert_eq!(recs[2].1, WalOp::Upsert(back2));
        // A version this build does not know is refused by its version.
        let mut future = fs::read(&path).unwrap();
        future[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        let c = crc32fast::hash(&future[..32]);
        future[32..36].copy_from_slice(&c.to_le_bytes());
        fs::write(&path, &future).unwrap();
        assert!(matches!(
            replay_all(dir.path(), 0),
            Err(StorageError::Version { .. })
        ));
    }

    #[test]
    fn reads_version_1_logs_and_continues_in_version_2() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(1));
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION_1.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        for seq in 1..=2u64 {
            let body = upsert(&format!("v1-{seq}"));
            bytes.extend_from_slice(&record_head(seq, KIND_UPSERT, &body));
            bytes.extend_from_slice(&body);
        }
        bytes.extend_from_slice(&[7, 7, 7]); // a torn tail
        fs::write(&path, &bytes).unwrap();
        let (recs, r) = replay_all(dir.path(), 0).unwrap();
        assert_eq!(seqs(&recs), vec![1, 2]);
        let mut w = WalWriter::open(dir.path(), &r, &dir.path().join("q")).unwrap();
        w.append(&[(3, KIND_UPSERT, &upsert("v2"))]).unwrap();
        assert_eq!(list(dir.path()).unwrap().len(), 2);
        assert_eq!(fs::metadata(&path).unwrap().len() as usize, bytes.len() - 3);
        assert_eq!(seqs(&replay_all(dir.path(), 0).unwrap().0), vec![1, 2, 3]);
    }

    #[test]
    fn a_failed_append_is_rolled_back_to_the_zero_fill() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::create(dir.path(), 1).unwrap();
        w.append(&[(1, KIND_UPSERT, &upsert("a"))]).unwrap();
        // What a failed group commit may leave behind: complete, valid records past the valid length.
        let ghost = upsert("ghost");
        let mut bytes = record_head(2, KIND_UPSERT, &ghost).to_vec();
        bytes.extend_from_slice(&ghost);
        w.file.write_all_at(&bytes, w.len).unwrap();
        assert_eq!(seqs(&replay_all(dir.path(), 0).unwrap().0), vec![1, 2]);
        w.roll_back().unwrap();
        assert_eq!(seqs(&replay_all(dir.path(), 0).unwrap().0), vec![1]);
        // The next append lands where the ghost was.
        w.append(&[(2, KIND_UPSERT, &upsert("b"))]).unwrap();
        assert_eq!(seqs(&replay_all(dir.path(), 0).unwrap().0), vec![1, 2]);
    }

    #[test]
    fn decode_never_panics_on_short_or_lying_bodies() {
        for body in [
            &[][..],
            &[1, 0, 0, 0],
            &[255, 255, 255, 255, 1, 0, 0, 0, b'a'],
            &[1, 0, 0, 0, 1, 0, 0, 0],
        ] {
            for kind in [KIND_UPSERT, KIND_DELETE, 9] {
                assert!(decode(kind, body).is_err());
            }
        }
    }
}
