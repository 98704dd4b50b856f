//! [`MemoryStorage`]: the storage seam in memory, with fault injection.
//!
//! Files are shared, immutable, 8-byte-aligned blobs in a map; a put or a commit swaps one in under a lock, so
//! it is atomic like the local store's rename. Faults make the failures of a disk reproducible without root or
//! a small tmpfs: a byte budget (a full disk: [`io::ErrorKind::StorageFull`] once the files would exceed it),
//! writes refused for names with a prefix, and bytes damaged in place ([`MemoryStorage::damage`], standing for
//! damage on the medium: the one way an immutable file changes).
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{check_name, FileBytes, FileWriter, FsError, Inner, PutMode, Storage};

/// Immutable bytes, kept in u64 words so that a map of them is aligned as a memory map is.
pub(super) struct Blob {
    words: Vec<u64>,
    len: usize,
}

impl Blob {
    fn new(bytes: &[u8]) -> Blob {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Blob {
            words,
            len: bytes.len(),
        }
    }
    pub(super) fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u64, u8>(&self.words)[..self.len]
    }
}

/// A fault to inject (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Files may hold at most this many bytes in all: a write past it fails with
    /// [`io::ErrorKind::StorageFull`] (the bytes of a file being replaced count as freed).
    Capacity(u64),
    /// Every put or commit of a name starting with this prefix fails with this kind of error.
    FailWrites(String, io::ErrorKind),
}

#[derive(Default)]
struct State {
    files: BTreeMap<String, Arc<Blob>>,
    faults: Vec<Fault>,
}

impl State {
    fn used(&self) -> u64 {
        self.files.values().map(|b| b.len as u64).sum()
    }

    /// Publishes `blob` as `name` under the faults and `mode`.
    fn publish(&mut self, name: &str, blob: Blob, mode: PutMode) -> io::Result<()> {
        self.admit(name, blob.len as u64)?;
        if mode == PutMode::Create && self.files.contains_key(name) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        self.files.insert(name.to_string(), Arc::new(blob));
        Ok(())
    }

    /// Whether `bytes` more may be written as `name` now.
    fn admit(&self, name: &str, bytes: u64) -> io::Result<()> {
        for f in &self.faults {
            match f {
                Fault::Capacity(cap) => {
                    let freed = self.files.get(name).map_or(0, |b| b.len as u64);
                    if self.used() - freed + bytes > *cap {
                        return Err(io::Error::from(io::ErrorKind::StorageFull));
                    }
                }
                Fault::FailWrites(prefix, kind) if name.starts_with(prefix.as_str()) => {
                    return Err(io::Error::new(*kind, "injected fault"));
                }
                Fault::FailWrites(..) => {}
            }
        }
        Ok(())
    }
}

/// Files in memory (see the module documentation). Clones share the files.
#[derive(Clone, Default)]
pub struct MemoryStorage {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        write!(f, "MemoryStorage({} files)", st.files.len())
    }
}

impl MemoryStorage {
    /// An empty store without faults.
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held leaves whole files behind (every change is one insert or remove).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a fault.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.lock().faults.clear();
    }

    /// Bytes held by all files.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used()
    }

    /// XORs the byte at `offset` of `name` with `mask` (damage on the medium); false when there is no such byte.
    pub fn damage(&self, name: &str, offset: usize, mask: u8) -> bool {
        let mut st = self.lock();
        let Some(blob) = st.files.get(name) else {
            return false;
        };
        let mut bytes = blob.bytes().to_vec();
        let Some(b) = bytes.get_mut(offset) else {
            return false;
        };
        *b ^= mask;
        st.files
            .insert(name.to_string(), Arc::new(Blob::new(&bytes)));
        true
    }

    /// Cuts `name` to its first `len` bytes (a torn or truncated file); false when there is no such file.
    pub fn truncate(&self, name: &str, len: usize) -> bool {
        let mut st = self.lock();
        let Some(blob) = st.files.get(name) else {
            return false;
        };
        let bytes = blob.bytes()[..len.min(blob.len)].to_vec();
        st.files
            .insert(name.to_string(), Arc::new(Blob::new(&bytes)));
        true
    }

    fn err(&self, name: &str, source: io::Error) -> FsError {
        FsError {
            path: self.locate(name),
            source,
        }
    }

    fn checked(&self, name: &str) -> Result<(), FsError> {
        check_name(name).map_err(|e| self.err(name, e))
    }

    fn get(&self, name: &str) -> Result<Arc<Blob>, FsError> {
        self.checked(name)?;
        self.lock()
            .files
            .get(name)
            .cloned()
            .ok_or_else(|| self.err(name, io::Error::from(io::ErrorKind::NotFound)))
    }
}

impl Storage for MemoryStorage {
    fn locate(&self, name: &str) -> PathBuf {
        Path::new("memory:/").join(name)
    }

    fn put(&self, name: &str, bytes: &[u8], mode: PutMode) -> Result<(), FsError> {
        self.checked(name)?;
        self.lock()
            .publish(name, Blob::new(bytes), mode)
            .map_err(|e| self.err(name, e))
    }

    fn create(&self, name: &str, mode: PutMode) -> Result<Box<dyn FileWriter>, FsError> {
        self.checked(name)?;
        if mode == PutMode::Create && self.lock().files.contains_key(name) {
            return Err(self.err(name, io::Error::from(io::ErrorKind::AlreadyExists)));
        }
        Ok(Box::new(MemoryWriter {
            store: self.clone(),
            name: name.to_string(),
            buf: Vec::new(),
            mode,
        }))
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, FsError> {
        Ok(self.get(name)?.bytes().to_vec())
    }

    fn map(&self, name: &str) -> Result<FileBytes, FsError> {
        Ok(FileBytes(Inner::Shared(self.get(name)?)))
    }

    fn exists(&self, name: &str) -> Result<bool, FsError> {
        self.checked(name)?;
        Ok(self.lock().files.contains_key(name))
    }

    fn rename(&self, from: &str, to: &str, mode: PutMode) -> Result<(), FsError> {
        self.checked(from)?;
        self.checked(to)?;
        let mut st = self.lock();
        let blob = st
            .files
            .get(from)
            .cloned()
            .ok_or_else(|| self.err(from, io::Error::from(io::ErrorKind::NotFound)))?;
        if mode == PutMode::Create && st.files.contains_key(to) {
            return Err(self.err(to, io::Error::from(io::ErrorKind::AlreadyExists)));
        }
        st.admit(to, 0).map_err(|e| self.err(to, e))?;
        st.files.remove(from);
        st.files.insert(to.to_string(), blob);
        Ok(())
    }

    fn delete(&self, name: &str) -> Result<(), FsError> {
        self.checked(name)?;
        self.lock().files.remove(name);
        Ok(())
    }

    fn list(&self, dir: &str) -> Result<Vec<String>, FsError> {
        if !dir.is_empty() {
            self.checked(dir)?;
        }
        Ok(self
            .lock()
            .files
            .keys()
            .filter(|n| super::split_name(n).0 == dir)
            .cloned()
            .collect())
    }
}

/// A file streamed into memory: the budget is checked as it grows (a full disk fails the write that fills it,
/// as on a real one) and again at the commit.
struct MemoryWriter {
    store: MemoryStorage,
    name: String,
    buf: Vec<u8>,
    mode: PutMode,
}

impl Write for MemoryWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.store
            .lock()
            .admit(&self.name, (self.buf.len() + buf.len()) as u64)?;
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FileWriter for MemoryWriter {
    fn commit(self: Box<Self>) -> Result<(), FsError> {
        let blob = Blob::new(&self.buf);
        self.store
            .lock()
            .publish(&self.name, blob, self.mode)
            .map_err(|e| self.store.err(&self.name, e))
    }

    fn locate(&self) -> PathBuf {
        self.store.locate(&self.name)
    }
}
