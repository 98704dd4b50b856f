//! The log's control file (`wal/control`): durable evidence of how far the log was acknowledged.
//!
//! The idea of Postgres' `pg_control`, kept per group commit: after the records of a group commit are fsynced,
//! and BEFORE any of them is acknowledged, the sequence number of its last record is written here and fsynced.
//! So every acknowledged record has a sequence number at or below the control's `acked_seq`, and a log that
//! replays to a lower sequence has lost acknowledged writes (its tail was wiped, truncated, zeroed or damaged):
//! replay refuses it instead of opening a collection that silently forgot them. The control never runs ahead of
//! the durable log (it is written after the log's fsync), so a crash at any moment cannot make a healthy log look
//! short.
//!
//! ```text
//! file = slot 0 at offset 0 | slot 1 at offset 512        (1024 bytes, created whole, atomically)
//! slot = "CHMFCTL1" | version u32 (=1) | slot u32 | acked_seq u64 | crc32 u32 | zero u32     (32 bytes)
//!        crc32 over the 24 bytes before it
//! ```
//!
//! Writes alternate between the two slots (each in its own 512-byte sector), so a write torn by a power loss
//! leaves the other slot, with the previous value, intact; the reader takes the larger `acked_seq` of the valid
//! slots (the value only grows). A file with no valid slot is damage, refused like any other.
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use chamfer_index::fsutil;

use crate::core::storage_error::StorageError;

const MAGIC: &[u8; 8] = b"CHMFCTL1";
const VERSION: u32 = 1;
const SLOT_BYTES: usize = 32;
/// Each slot starts a sector of its own.
const SLOT_STRIDE: u64 = 512;
const FILE_BYTES: u64 = 2 * SLOT_STRIDE;

/// The control file's name inside the log directory.
pub const FILE_NAME: &str = "control";

/// The path of the control file of the log in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

fn slot_bytes(slot: u32, acked_seq: u64) -> [u8; SLOT_BYTES] {
    let mut b = [0u8; SLOT_BYTES];
    b[..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&slot.to_le_bytes());
    b[16..24].copy_from_slice(&acked_seq.to_le_bytes());
    let c = crc32fast::hash(&b[..24]);
    b[24..28].copy_from_slice(&c.to_le_bytes());
    b
}

/// The acknowledged sequence a slot holds, or None when the slot is not valid.
fn parse_slot(b: &[u8], slot: u32) -> Option<u64> {
    let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    (b.len() >= SLOT_BYTES
        && &b[..8] == MAGIC
        && u32_at(8) == VERSION
        && u32_at(12) == slot
        && crc32fast::hash(&b[..24]) == u32_at(24))
    .then(|| u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")))
}

/// Reads the control file of the log in `dir`: `Ok(None)` when there is none (a log written before control
/// files existed), the acknowledged sequence when it is valid, and damage otherwise.
pub fn read(dir: &Path) -> Result<Option<u64>, StorageError> {
    let p = path(dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io(&p, e)),
    };
    if bytes.len() as u64 != FILE_BYTES {
        return Err(StorageError::damaged(
            &p,
            None,
            format!(
                "the log's control file has {} bytes, not {FILE_BYTES}",
                bytes.len()
            ),
        ));
    }
    let s0 = parse_slot(&bytes[..SLOT_BYTES], 0);
    let s1 = parse_slot(&bytes[SLOT_STRIDE as usize..][..SLOT_BYTES], 1);
    match s0.max(s1) {
        Some(acked) => Ok(Some(acked)),
        None => Err(StorageError::damaged(
            &p,
            Some(0),
            "the log's control file has no valid slot (checksum mismatch): how far the log was acknowledged \
             cannot be checked",
        )),
    }
}

/// The open control file, written by the log's writer after every group commit.
pub struct Control {
    file: File,
    path: PathBuf,
    /// The slot the next write goes to.
    next_slot: u32,
    acked_seq: u64,
}

impl Control {
    /// Creates (or replaces, atomically) the control file of `dir` holding `acked_seq` in both slots.
    pub fn create(dir: &Path, acked_seq: u64) -> Result<Control, StorageError> {
        let p = path(dir);
        let mut bytes = vec![0u8; FILE_BYTES as usize];
        bytes[..SLOT_BYTES].copy_from_slice(&slot_bytes(0, acked_seq));
        bytes[SLOT_STRIDE as usize..][..SLOT_BYTES].copy_from_slice(&slot_bytes(1, acked_seq));
        fsutil::write_atomic(&p, &bytes)?;
        let file = OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(|e| StorageError::io(&p, e))?;
        Ok(Control {
            file,
            path: p,
            next_slot: 0,
            acked_seq,
        })
    }

    /// Records that every record up to `acked_seq` is durable (call after the log's fsync, before the
    /// acknowledgement): one 32-byte write and an `fdatasync`.
    pub fn record(&mut self, acked_seq: u64) -> io::Result<()> {
        debug_assert!(
            acked_seq >= self.acked_seq,
            "the acknowledged sequence only grows"
        );
        let slot = self.next_slot;
        self.file
            .write_all_at(&slot_bytes(slot, acked_seq), u64::from(slot) * SLOT_STRIDE)?;
        self.file.sync_data()?;
        self.next_slot ^= 1;
        self.acked_seq = acked_seq;
        Ok(())
    }

    /// The last acknowledged sequence written.
    pub fn acked_seq(&self) -> u64 {
        self.acked_seq
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_survives_one_torn_slot() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None, "no file: a legacy log");
        let mut c = Control::create(dir.path(), 0).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(0));
        for seq in [3, 7, 8] {
            c.record(seq).unwrap();
            assert_eq!(read(dir.path()).unwrap(), Some(seq));
        }
        // The last write (seq 8) went to slot 0: tear it, the other slot still says 7.
        let p = path(dir.path());
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[20] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(7));
        // Both slots damaged: refused, named.
        bytes[SLOT_STRIDE as usize + 17] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        let e = read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no valid slot") && e.contains("control"), "{e}");
        // Truncated: refused.
        std::fs::write(&p, &bytes[..100]).unwrap();
        let e = read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("100 bytes"), "{e}");
        // A slot copied into the other's place does not pass for it.
        let good = Control::create(dir.path(), 5).unwrap();
        drop(good);
        let mut bytes = std::fs::read(&p).unwrap();
        let s0: Vec<u8> = bytes[..SLOT_BYTES].to_vec();
        bytes[SLOT_STRIDE as usize..][..SLOT_BYTES].copy_from_slice(&s0);
        bytes[..SLOT_BYTES].fill(0);
        std::fs::write(&p, &bytes).unwrap();
        assert!(read(dir.path()).is_err());
    }
}
