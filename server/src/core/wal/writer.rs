//! The appendable log of one collection: group-commit appends (fsync, then the control file), rotation with a
//! seal record, roll-back of a failed append, removal of obsolete files.
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use chamfer_index::fsutil::sync_dir;

use super::control::Control;
use super::format::*;
use super::replay::Replayed;
use super::tail::{save_evidence, Tail};
use crate::core::storage_error::StorageError;

/// The open, appendable log of one collection. Owned by the collection's sequencer thread.
pub struct WalWriter {
    dir: PathBuf,
    pub(super) file: File,
    path: PathBuf,
    /// Bytes of the current file that are valid (and synced).
    pub(super) len: u64,
    capacity: u64,
    /// Older files (closed by rotation), with their valid sizes.
    older: Vec<(PathBuf, u64)>,
    /// Set when a failed append could not be rolled back: no further write is accepted.
    poisoned: Option<String>,
    /// The control file: how far the log was acknowledged.
    pub(super) control: Control,
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
    pub(super) fn roll_back(&mut self) -> io::Result<()> {
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

pub(super) fn write_records(file: &File, records: &[(u64, u8, &[u8])]) -> io::Result<u64> {
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

/// Creates a complete log file (header, zero fill to `capacity`) under a temporary name, then renames it into
/// place: a file named `wal-*.log` is never half made.
pub(super) fn create(
    dir: &Path,
    first_seq: u64,
    capacity: u64,
) -> Result<(File, PathBuf, u64), StorageError> {
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
