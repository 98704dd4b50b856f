//! The bytes of a log file: header, record framing, file names and the format's constants.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::core::storage_error::StorageError;

pub(super) const MAGIC: &[u8; 8] = b"CHMFWAL1";
/// The version this build writes.
pub(super) const VERSION: u32 = 3;
pub(super) const VERSION_2: u32 = 2;
pub(super) const VERSION_1: u32 = 1;
pub(super) const HEADER_V1: u64 = 16;
pub(super) const HEADER_V2: u64 = 40;
/// Default preallocated size of a log file (a group commit larger than this gets a file of its own size).
pub const FILE_CAPACITY: u64 = 64 << 20;
/// Largest record accepted on replay (a length above it is a torn or corrupt length field).
pub(super) const MAX_RECORD: usize = 4 << 30;
/// Bytes read at a time when scanning a damaged tail.
pub(super) const SCAN_CHUNK: usize = 4 << 20;

/// Record kinds.
pub const KIND_UPSERT: u8 = 1;
/// Record kind of a delete.
pub const KIND_DELETE: u8 = 2;
pub(super) const KIND_SEAL: u8 = 3;
/// An upsert whose tokens are stored as f16 (version 3).
pub const KIND_UPSERT_F16: u8 = 4;

pub(super) fn crc(seq: u64, kind: u8, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&[kind]);
    h.update(body);
    h.finalize()
}

pub(super) fn header_v2(first_seq: u64, capacity: u64) -> [u8; HEADER_V2 as usize] {
    let mut h = [0u8; HEADER_V2 as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    h[24..32].copy_from_slice(&capacity.to_le_bytes());
    let c = crc32fast::hash(&h[..32]);
    h[32..36].copy_from_slice(&c.to_le_bytes());
    h
}

pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
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

pub(super) fn file_name(first_seq: u64) -> String {
    format!("wal-{first_seq:020}.log")
}

pub(super) fn u64_from_name(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("wal-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// The 17 bytes before a record's body: `len | crc32 | seq | kind`.
pub(super) fn record_head(seq: u64, kind: u8, body: &[u8]) -> [u8; 17] {
    let mut h = [0u8; 17];
    h[..4].copy_from_slice(&((9 + body.len()) as u32).to_le_bytes());
    h[4..8].copy_from_slice(&crc(seq, kind, body).to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16] = kind;
    h
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
