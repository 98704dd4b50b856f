//! [`LocalDir`]: the storage seam on a local directory.
//!
//! Every file is written as `<name>.<n>.tmp` beside its target, fsynced, then published: [`PutMode::Overwrite`]
//! renames it over the target, [`PutMode::Create`] hard-links it to the target (which fails when the target
//! exists: put-if-absent without a race, as `object_store`'s local store does) and removes the temporary name;
//! then the directory is fsynced. A crash leaves the old file or the new one, and at worst a `.tmp` file that
//! the owner of the directory removes at start-up.
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{check_name, FileBytes, FileWriter, FsError, Inner, PutMode, Storage};
use crate::fsutil::sync_dir;
use crate::sys::mmap::ReadOnlyMap;

/// A directory on a local disk (see the module documentation). Folders inside it are created by their owner,
/// never implicitly (a write into a removed collection's folder must fail, not bring the folder back).
#[derive(Clone, Debug)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    /// The store rooted at `root` (which is not created).
    pub fn new(root: impl Into<PathBuf>) -> LocalDir {
        LocalDir { root: root.into() }
    }

    /// The store of the folder holding `path` (`.` for a bare file name) and the file's name in it.
    pub fn for_file(path: &Path) -> Result<(LocalDir, String), FsError> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| FsError {
                path: path.to_path_buf(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
            })?;
        Ok((LocalDir::new(dir), name.to_string()))
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> Result<PathBuf, FsError> {
        check_name(name).map_err(|source| FsError {
            path: self.root.join(name),
            source,
        })?;
        Ok(self.root.join(name))
    }
}

/// A temporary name beside `path` that no other writer of this process uses (`<name>.<n>.tmp`): two writers of
/// one name (a put racing a streamed file) must not share, truncate or remove each other's temporary file.
fn temp_for(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{n}.tmp"));
    path.with_file_name(name)
}

fn at(path: &Path) -> impl Fn(io::Error) -> FsError + '_ {
    move |source| FsError {
        path: path.to_path_buf(),
        source,
    }
}

/// Publishes the fsynced temporary file `tmp` as `path` (see the module documentation).
fn publish(tmp: &Path, path: &Path, mode: PutMode) -> Result<(), FsError> {
    match mode {
        PutMode::Overwrite => {
            if let Err(e) = fs::rename(tmp, path) {
                let _ = fs::remove_file(tmp);
                return Err(at(path)(e));
            }
        }
        PutMode::Create => {
            let linked = fs::hard_link(tmp, path);
            // The temporary name goes either way (best effort: a leftover is removed at start-up).
            let _ = fs::remove_file(tmp);
            linked.map_err(at(path))?;
        }
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

impl Storage for LocalDir {
    fn locate(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn put(&self, name: &str, bytes: &[u8], mode: PutMode) -> Result<(), FsError> {
        let path = self.path(name)?;
        if mode == PutMode::Create && path.exists() {
            // Checked first so that a taken name costs no write; the hard link decides races.
            return Err(FsError {
                path,
                source: io::Error::from(io::ErrorKind::AlreadyExists),
            });
        }
        let tmp = temp_for(&path);
        let written = (|| {
            let mut f = File::create(&tmp).map_err(at(&tmp))?;
            f.write_all(bytes).map_err(at(&tmp))?;
            f.sync_all().map_err(at(&tmp))
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        publish(&tmp, &path, mode)
    }

    fn create(&self, name: &str, mode: PutMode) -> Result<Box<dyn FileWriter>, FsError> {
        let path = self.path(name)?;
        if mode == PutMode::Create && path.exists() {
            return Err(FsError {
                path,
                source: io::Error::from(io::ErrorKind::AlreadyExists),
            });
        }
        let tmp = temp_for(&path);
        let file = File::create(&tmp).map_err(at(&tmp))?;
        Ok(Box::new(LocalWriter {
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp,
            path,
            mode,
        }))
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, FsError> {
        let path = self.path(name)?;
        fs::read(&path).map_err(at(&path))
    }

    fn map(&self, name: &str) -> Result<FileBytes, FsError> {
        let path = self.path(name)?;
        let file = File::open(&path).map_err(at(&path))?;
        let map = ReadOnlyMap::new(&file).map_err(at(&path))?;
        Ok(FileBytes(Inner::Mapped(map)))
    }

    fn exists(&self, name: &str) -> Result<bool, FsError> {
        let path = self.path(name)?;
        path.try_exists().map_err(at(&path))
    }

    fn rename(&self, from: &str, to: &str, mode: PutMode) -> Result<(), FsError> {
        let (src, dst) = (self.path(from)?, self.path(to)?);
        match mode {
            PutMode::Overwrite => fs::rename(&src, &dst).map_err(at(&dst))?,
            PutMode::Create => {
                fs::hard_link(&src, &dst).map_err(at(&dst))?;
                fs::remove_file(&src).map_err(at(&src))?;
            }
        }
        if let Some(dir) = dst.parent() {
            sync_dir(dir);
        }
        if let Some(dir) = src.parent().filter(|d| Some(*d) != dst.parent()) {
            sync_dir(dir);
        }
        Ok(())
    }

    fn delete(&self, name: &str) -> Result<(), FsError> {
        let path = self.path(name)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(at(&path)(e)),
            _ => Ok(()),
        }
    }

    fn list(&self, dir: &str) -> Result<Vec<String>, FsError> {
        let path = if dir.is_empty() {
            self.root.clone()
        } else {
            self.path(dir)?
        };
        let mut names = Vec::new();
        for entry in fs::read_dir(&path).map_err(at(&path))? {
            let entry = entry.map_err(at(&path))?;
            if entry.file_type().map_err(at(&path))?.is_file() {
                let base = entry.file_name().to_string_lossy().into_owned();
                names.push(super::join_name(dir, &base));
            }
        }
        names.sort();
        Ok(names)
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }
}

/// A file streamed to `<name>.tmp`; removed when dropped without a commit.
struct LocalWriter {
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    path: PathBuf,
    mode: PutMode,
}

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.out {
            Some(out) => out.write(buf),
            None => Err(io::Error::other("the file was committed")),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.out {
            Some(out) => out.write_all(buf),
            None => Err(io::Error::other("the file was committed")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.out {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

impl FileWriter for LocalWriter {
    fn commit(mut self: Box<Self>) -> Result<(), FsError> {
        let Some(out) = self.out.take() else {
            return Ok(());
        };
        let tmp = self.tmp.clone();
        let file = out.into_inner().map_err(|e| at(&tmp)(e.into_error()))?;
        file.sync_all().map_err(at(&tmp))?;
        drop(file);
        // From here the temporary file is the writer's no more: `publish` removes or renames it.
        let result = publish(&tmp, &self.path, self.mode);
        self.tmp = PathBuf::new();
        result
    }

    fn locate(&self) -> PathBuf {
        self.path.clone()
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            // Best effort: the error that dropped the writer matters more than a leftover temporary file.
            drop(self.out.take());
            let _ = fs::remove_file(&self.tmp);
        }
    }
}
