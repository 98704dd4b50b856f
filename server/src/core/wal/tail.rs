//! Reading one log file: its records in order, and what follows the last valid one (a clean end, a torn
//! append, or damage followed by valid records).
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use chamfer_index::fsutil;

use super::format::*;
use super::record::{decode, WalOp};
use crate::core::storage_error::StorageError;

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
pub(super) fn next_record(
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

pub(super) struct TailScan {
    /// Offset one past the last non-zero byte (or `from` when all zero).
    nonzero_end: u64,
    /// The first valid record found after the damage: offset and sequence number.
    valid_at: Option<(u64, u64)>,
}

/// Scans `[from, size)` for non-zero bytes and for any valid record with a sequence number after `after`.
pub(super) fn scan_tail(file: &File, from: u64, size: u64, after: u64) -> io::Result<TailScan> {
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

/// Copies `[from, to)` of `path` into `quarantine/` before those bytes are cleared.
pub(super) fn save_evidence(
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
