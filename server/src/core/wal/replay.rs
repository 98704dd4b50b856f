//! Replay: every file of a collection's log read in order, the chain between them checked (sequence numbers,
//! seals, the control file), and the records after the flushed sequence handed on.
use std::path::Path;

use super::control;
use super::format::*;
use super::record::WalOp;
use super::tail::{read_file, FileEnd, Tail};
use crate::core::storage_error::StorageError;

/// The log of a collection as replay found it.
pub struct Replayed {
    pub(super) files: Vec<(WalFile, FileEnd)>,
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
