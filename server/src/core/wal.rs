//! The write-ahead log: append-only files of length-prefixed, CRC-checked records.
//!
//! A write is acknowledged only after its record is on disk (`fdatasync`), so an acknowledged upsert or delete
//! survives `kill -9` and power loss. Group commit: the collection's sequencer thread writes every record queued
//! while the previous fsync ran, fsyncs once, then acknowledges them all (one fsync per batch, not per request).
//!
//! ```text
//! file   = header record*
//! header = "CHMFWAL1" (8 bytes) | version u32 LE (=1) | reserved u32 (0)                      16 bytes
//! record = len u32 LE | crc32 u32 LE | seq u64 LE | kind u8 | body                            len = 9 + |body|
//!          crc32 (IEEE) covers seq, kind and body
//! upsert body (kind 1) = n u32 | n x (id_len u32 | id | dim u32 | n_tokens u32 | f32 LE x n_tokens*dim
//!                                    | meta_len u32 | meta JSON)
//! delete body (kind 2) = n u32 | n x (id_len u32 | id)
//! ```
//!
//! Files are named `wal-{first_seq:020}.log` and rotated when the memtable is flushed into a shard; a file is
//! deleted once the manifest records a `flushed_seq` at or past its last record. Replay stops cleanly at a torn
//! tail (short header, short body or CRC mismatch in the LAST file: an append that was never acknowledged) and
//! truncates it; the same damage in an older file is corruption and stops the start-up.
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chamfer_index::IndexError;

const MAGIC: &[u8; 8] = b"CHMFWAL1";
const VERSION: u32 = 1;
const HEADER_LEN: u64 = 16;
/// Largest record accepted on replay (a length above it is a torn or corrupt length field).
const MAX_RECORD: usize = 4 << 30;

/// Record kinds.
pub const KIND_UPSERT: u8 = 1;
pub const KIND_DELETE: u8 = 2;

/// One document of an upsert record.
#[derive(Clone, Debug, PartialEq)]
pub struct WalDoc {
    pub id: String,
    pub dim: usize,
    pub tokens: Vec<f32>,
    pub metadata: Vec<u8>,
}

/// A decoded record body.
#[derive(Clone, Debug, PartialEq)]
pub enum WalOp {
    Upsert(Vec<WalDoc>),
    Delete(Vec<String>),
}

/// Encodes an upsert body from borrowed documents `(id, dim, tokens, metadata)`.
pub fn encode_upsert<'a>(
    docs: impl ExactSizeIterator<Item = (&'a str, usize, &'a [f32], &'a [u8])>,
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(docs.len() as u32).to_le_bytes());
    for (id, dim, tokens, meta) in docs {
        put_bytes(&mut out, id.as_bytes());
        out.extend_from_slice(&(dim as u32).to_le_bytes());
        out.extend_from_slice(&((tokens.len() / dim.max(1)) as u32).to_le_bytes());
        out.reserve(tokens.len() * 4 + meta.len() + 4);
        for v in tokens {
            out.extend_from_slice(&v.to_le_bytes());
        }
        put_bytes(&mut out, meta);
    }
    out
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

/// Decodes a record body (whose CRC already matched: a failure here is corruption).
pub fn decode(kind: u8, body: &[u8]) -> Result<WalOp, String> {
    let mut r = Cursor { b: body, pos: 0 };
    let n = r.u32()? as usize;
    let op = match kind {
        KIND_UPSERT => {
            let mut docs = Vec::with_capacity(n.min(1 << 16));
            for _ in 0..n {
                let id = r.string()?;
                let dim = r.u32()? as usize;
                let n_tokens = r.u32()? as usize;
                let raw = r.take(
                    n_tokens
                        .checked_mul(dim)
                        .and_then(|v| v.checked_mul(4))
                        .ok_or("overflow")?,
                )?;
                let tokens = raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
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
        KIND_DELETE => WalOp::Delete((0..n).map(|_| r.string()).collect::<Result<_, _>>()?),
        other => return Err(format!("unknown record kind {other}")),
    };
    if r.pos != body.len() {
        return Err(format!("{} trailing bytes in a record", body.len() - r.pos));
    }
    Ok(op)
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or("record body is truncated")?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "id is not UTF-8".to_string())
    }
}

fn crc(seq: u64, kind: u8, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&[kind]);
    h.update(body);
    h.finalize()
}

/// A log file found in a collection directory.
#[derive(Clone, Debug)]
pub struct WalFile {
    pub path: PathBuf,
    pub first_seq: u64,
}

/// The log files of `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<WalFile>, IndexError> {
    let mut files = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(IndexError::io(dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| IndexError::io(dir, e))?;
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

/// How reading a file ended.
#[derive(Debug, PartialEq, Eq)]
pub struct ReadEnd {
    /// Bytes of valid header + records.
    pub valid_len: u64,
    /// False when bytes after `valid_len` were ignored (a torn or corrupt tail).
    pub clean: bool,
    /// Last sequence number read (0 if none).
    pub last_seq: u64,
}

/// Reads every intact record of `path` in order, calling `f(seq, op)`. Stops at the first torn or corrupt
/// record and reports where.
pub fn read_file(
    path: &Path,
    mut f: impl FnMut(u64, WalOp) -> Result<(), IndexError>,
) -> Result<ReadEnd, IndexError> {
    let file = File::open(path).map_err(|e| IndexError::io(path, e))?;
    let size = file.metadata().map_err(|e| IndexError::io(path, e))?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; HEADER_LEN as usize];
    if size < HEADER_LEN || r.read_exact(&mut header).is_err() {
        return Ok(ReadEnd {
            valid_len: 0,
            clean: size == 0,
            last_seq: 0,
        });
    }
    if &header[..8] != MAGIC {
        return Err(IndexError::corrupt(
            path,
            "not a chamfer write-ahead log (bad magic)",
        ));
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != VERSION {
        return Err(IndexError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: VERSION,
        });
    }
    let mut pos = HEADER_LEN;
    let mut last_seq = 0;
    let mut body = Vec::new();
    loop {
        let torn = |pos| {
            Ok(ReadEnd {
                valid_len: pos,
                clean: false,
                last_seq,
            })
        };
        if pos == size {
            return Ok(ReadEnd {
                valid_len: pos,
                clean: true,
                last_seq,
            });
        }
        let mut head = [0u8; 8];
        if size - pos < 8 || r.read_exact(&mut head).is_err() {
            return torn(pos);
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let want = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if !(9..=MAX_RECORD).contains(&len) || (len as u64) > size - pos - 8 {
            return torn(pos);
        }
        body.resize(len, 0);
        if r.read_exact(&mut body).is_err() {
            return torn(pos);
        }
        let seq = u64::from_le_bytes(body[..8].try_into().unwrap_or([0; 8]));
        let kind = body[8];
        if crc(seq, kind, &body[9..]) != want {
            return torn(pos);
        }
        let op = decode(kind, &body[9..]).map_err(|reason| IndexError::corrupt(path, reason))?;
        f(seq, op)?;
        last_seq = seq;
        pos += 8 + len as u64;
    }
}

/// The open, appendable log of one collection. Owned by the collection's sequencer thread.
pub struct WalWriter {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    /// Bytes of the current file that are valid (and synced).
    len: u64,
    /// Older files (closed by rotation), with their sizes.
    older: Vec<(PathBuf, u64)>,
    /// Set when a failed append could not be rolled back: no further write is accepted.
    poisoned: Option<String>,
}

impl WalWriter {
    /// Continues the last of `existing` (after truncating it to `valid_len`), or starts a new file whose first
    /// record will be `next_seq`.
    pub fn open(
        dir: &Path,
        existing: &[WalFile],
        last_valid_len: u64,
        next_seq: u64,
    ) -> Result<WalWriter, IndexError> {
        fs::create_dir_all(dir).map_err(|e| IndexError::io(dir, e))?;
        let mut older = Vec::new();
        for w in existing.iter().take(existing.len().saturating_sub(1)) {
            let len = fs::metadata(&w.path).map(|m| m.len()).unwrap_or(0);
            older.push((w.path.clone(), len));
        }
        if let Some(last) = existing.last() {
            if last_valid_len >= HEADER_LEN {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&last.path)
                    .map_err(|e| IndexError::io(&last.path, e))?;
                file.set_len(last_valid_len)
                    .map_err(|e| IndexError::io(&last.path, e))?;
                file.sync_all().map_err(|e| IndexError::io(&last.path, e))?;
                let mut w = WalWriter {
                    dir: dir.to_path_buf(),
                    file,
                    path: last.path.clone(),
                    len: last_valid_len,
                    older,
                    poisoned: None,
                };
                w.file
                    .seek(SeekFrom::Start(last_valid_len))
                    .map_err(|e| IndexError::io(&w.path, e))?;
                return Ok(w);
            }
            // A last file without even a complete header (a crash during rotation): start it over.
            fs::remove_file(&last.path).map_err(|e| IndexError::io(&last.path, e))?;
        }
        let (file, path) = create(dir, next_seq)?;
        Ok(WalWriter {
            dir: dir.to_path_buf(),
            file,
            path,
            len: HEADER_LEN,
            older,
            poisoned: None,
        })
    }

    /// Appends records `(seq, kind, body)` and fsyncs. On failure the file is rolled back to its previous
    /// length (or, if even that fails, the log refuses every later write).
    pub fn append(&mut self, records: &[(u64, u8, &[u8])]) -> Result<(), String> {
        if let Some(p) = &self.poisoned {
            return Err(format!(
                "the write-ahead log is unusable after an earlier failure: {p}"
            ));
        }
        let written = (|| -> io::Result<u64> {
            let mut w = BufWriter::with_capacity(1 << 20, &self.file);
            let mut n = 0u64;
            for &(seq, kind, body) in records {
                let len = 9 + body.len();
                w.write_all(&(len as u32).to_le_bytes())?;
                w.write_all(&crc(seq, kind, body).to_le_bytes())?;
                w.write_all(&seq.to_le_bytes())?;
                w.write_all(&[kind])?;
                w.write_all(body)?;
                n += 8 + len as u64;
            }
            w.flush()?;
            drop(w);
            self.file.sync_data()?;
            Ok(n)
        })();
        match written {
            Ok(n) => {
                self.len += n;
                Ok(())
            }
            Err(e) => {
                let rollback = self
                    .file
                    .set_len(self.len)
                    .and_then(|_| self.file.seek(SeekFrom::Start(self.len)));
                if let Err(e2) = rollback {
                    self.poisoned = Some(format!("{e}; rollback failed: {e2}"));
                }
                Err(format!("{}: {e}", self.path.display()))
            }
        }
    }

    /// Closes the current file and starts `wal-{next_seq}` (unless the current file has no record yet).
    /// Returns every closed file: they hold only records before `next_seq`.
    pub fn rotate(&mut self, next_seq: u64) -> Result<Vec<PathBuf>, IndexError> {
        if self.len > HEADER_LEN {
            let (file, path) = create(&self.dir, next_seq)?;
            let old = std::mem::replace(&mut self.path, path);
            self.file = file;
            self.older.push((old, self.len));
            self.len = HEADER_LEN;
        }
        Ok(self.older.iter().map(|(p, _)| p.clone()).collect())
    }

    /// Deletes closed files (after a manifest made them obsolete).
    pub fn remove(&mut self, paths: &[PathBuf]) -> Result<(), IndexError> {
        for p in paths {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(IndexError::io(p, e)),
            }
        }
        self.older.retain(|(p, _)| !paths.contains(p));
        sync_dir(&self.dir);
        Ok(())
    }

    /// Bytes of log on disk.
    pub fn bytes(&self) -> u64 {
        self.len + self.older.iter().map(|(_, l)| l).sum::<u64>()
    }

    /// Flushes file metadata too (at shutdown).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

fn create(dir: &Path, first_seq: u64) -> Result<(File, PathBuf), IndexError> {
    let path = dir.join(file_name(first_seq));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| IndexError::io(&path, e))?;
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    file.write_all(&header)
        .and_then(|_| file.sync_all())
        .map_err(|e| IndexError::io(&path, e))?;
    sync_dir(dir);
    Ok((file, path))
}

/// fsyncs a directory so that a created, renamed or removed entry is durable (best effort where unsupported).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(id: &str) -> Vec<u8> {
        let t = [1.0f32, 2.0];
        encode_upsert([(id, 2usize, &t[..], &b"{\"a\":1}"[..])].into_iter())
    }

    fn read_all(path: &Path) -> (Vec<(u64, WalOp)>, ReadEnd) {
        let mut v = Vec::new();
        let end = read_file(path, |s, op| {
            v.push((s, op));
            Ok(())
        })
        .unwrap();
        (v, end)
    }

    #[test]
    fn round_trips_and_stops_at_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::open(dir.path(), &[], 0, 1).unwrap();
        let (a, d) = (upsert("a"), encode_delete(&["a".into(), "b".into()]));
        w.append(&[(1, KIND_UPSERT, &a), (2, KIND_DELETE, &d)])
            .unwrap();
        let files = list(dir.path()).unwrap();
        assert_eq!(files.len(), 1);
        let (recs, end) = read_all(&files[0].path);
        assert_eq!(recs.len(), 2);
        assert!(end.clean);
        assert_eq!(end.last_seq, 2);
        match &recs[0].1 {
            WalOp::Upsert(docs) => assert_eq!(
                (docs[0].id.as_str(), docs[0].tokens.as_slice()),
                ("a", &[1.0, 2.0][..])
            ),
            other => panic!("{other:?}"),
        }
        // Tear the last record: replay keeps the first, reports the valid length, and a reopened writer
        // truncates the garbage and continues.
        let full = fs::metadata(&files[0].path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&files[0].path)
            .unwrap()
            .set_len(full - 3)
            .unwrap();
        let (recs, end) = read_all(&files[0].path);
        assert_eq!((recs.len(), end.clean), (1, false));
        let mut w = WalWriter::open(dir.path(), &files, end.valid_len, 2).unwrap();
        let b = upsert("b");
        w.append(&[(2, KIND_UPSERT, &b)]).unwrap();
        let (recs, end) = read_all(&files[0].path);
        assert_eq!((recs.len(), end.clean, end.last_seq), (2, true, 2));
    }

    #[test]
    fn a_flipped_bit_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::open(dir.path(), &[], 0, 1).unwrap();
        let a = upsert("a");
        w.append(&[(1, KIND_UPSERT, &a), (2, KIND_UPSERT, &a)])
            .unwrap();
        let path = list(dir.path()).unwrap()[0].path.clone();
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 5] ^= 0x40;
        fs::write(&path, bytes).unwrap();
        let (recs, end) = read_all(&path);
        assert_eq!((recs.len(), end.clean), (1, false));
    }

    #[test]
    fn rotation_names_files_by_first_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::open(dir.path(), &[], 0, 1).unwrap();
        assert!(
            w.rotate(1).unwrap().is_empty(),
            "an empty file is not rotated"
        );
        let a = upsert("a");
        w.append(&[(1, KIND_UPSERT, &a)]).unwrap();
        let closed = w.rotate(2).unwrap();
        assert_eq!(closed.len(), 1);
        let files = list(dir.path()).unwrap();
        assert_eq!(
            files.iter().map(|f| f.first_seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        w.remove(&closed).unwrap();
        assert_eq!(list(dir.path()).unwrap().len(), 1);
    }
}
