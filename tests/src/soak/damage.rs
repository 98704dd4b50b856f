//! Damage to a collection directory (one per corruption cycle), backups, and the "nothing deleted" check.
use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::rng::Rng;

/// The damages the soak applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Damage {
    WalFlip,
    WalTruncate,
    WalDelete,
    ManifestDelete,
    ManifestFlip,
    ManifestFlushedSeq,
    ShardFlip,
    ShardDelete,
    StrayDir,
}

impl Damage {
    pub const ALL: [Damage; 9] = [
        Damage::WalFlip,
        Damage::WalTruncate,
        Damage::WalDelete,
        Damage::ManifestDelete,
        Damage::ManifestFlip,
        Damage::ManifestFlushedSeq,
        Damage::ShardFlip,
        Damage::ShardDelete,
        Damage::StrayDir,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Damage::WalFlip => "wal_flip",
            Damage::WalTruncate => "wal_truncate",
            Damage::WalDelete => "wal_delete",
            Damage::ManifestDelete => "manifest_delete",
            Damage::ManifestFlip => "manifest_flip",
            Damage::ManifestFlushedSeq => "manifest_flushed_seq",
            Damage::ShardFlip => "shard_flip",
            Damage::ShardDelete => "shard_delete",
            Damage::StrayDir => "stray_dir",
        }
    }
}

/// Files of `dir/sub` whose names start with `prefix` and end with `suffix`, sorted.
fn files(dir: &Path, sub: &str, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir.join(sub))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

pub fn wal_files(coll: &Path) -> Vec<PathBuf> {
    files(coll, "wal", "wal-", ".log")
}

pub fn shard_files(coll: &Path) -> Vec<PathBuf> {
    files(coll, "segments", "seg-", ".shard")
}

/// Whether `d` can be applied to this directory (the file it needs exists and is not empty).
pub fn applicable(d: Damage, coll: &Path) -> bool {
    let nonempty = |v: Vec<PathBuf>| {
        v.iter()
            .any(|p| fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false))
    };
    match d {
        Damage::WalFlip | Damage::WalTruncate | Damage::WalDelete => nonempty(wal_files(coll)),
        Damage::ManifestDelete | Damage::ManifestFlip | Damage::ManifestFlushedSeq => {
            coll.join("manifest.json").is_file()
        }
        Damage::ShardFlip | Damage::ShardDelete => nonempty(shard_files(coll)),
        Damage::StrayDir => true,
    }
}

fn rel(coll: &Path, p: &Path) -> String {
    p.strip_prefix(coll).unwrap_or(p).display().to_string()
}

fn flip(path: &Path, rng: &mut Rng) -> io::Result<String> {
    let mut bytes = fs::read(path)?;
    if bytes.is_empty() {
        return Err(io::Error::other("empty file"));
    }
    let at = rng.below(bytes.len() as u64) as usize;
    let mask = 1u8 << rng.below(8);
    bytes[at] ^= mask;
    fs::write(path, &bytes)?;
    Ok(format!("byte {at} of {} ^= {mask:#04x}", bytes.len()))
}

fn pick_nonempty(v: Vec<PathBuf>, rng: &mut Rng) -> io::Result<PathBuf> {
    let v: Vec<PathBuf> = v
        .into_iter()
        .filter(|p| fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false))
        .collect();
    if v.is_empty() {
        return Err(io::Error::other("no such file"));
    }
    Ok(rng.pick(&v).clone())
}

/// Applies `d` to the collection directory `coll` (inside `collections/`); returns a description, and the
/// stray directory it created, if any.
pub fn apply(d: Damage, coll: &Path, rng: &mut Rng) -> io::Result<(String, Option<PathBuf>)> {
    let manifest = coll.join("manifest.json");
    let desc = match d {
        Damage::WalFlip => {
            let p = pick_nonempty(wal_files(coll), rng)?;
            format!("{}: {}", rel(coll, &p), flip(&p, rng)?)
        }
        Damage::WalTruncate => {
            let p = pick_nonempty(wal_files(coll), rng)?;
            let len = fs::metadata(&p)?.len();
            let to = rng.below(len);
            fs::OpenOptions::new().write(true).open(&p)?.set_len(to)?;
            format!("{}: truncated from {len} to {to} bytes", rel(coll, &p))
        }
        Damage::WalDelete => {
            let p = pick_nonempty(wal_files(coll), rng)?;
            let len = fs::metadata(&p)?.len();
            fs::remove_file(&p)?;
            format!("{}: deleted ({len} bytes)", rel(coll, &p))
        }
        Damage::ManifestDelete => {
            fs::remove_file(&manifest)?;
            "manifest.json deleted".to_string()
        }
        Damage::ManifestFlip => format!("manifest.json: {}", flip(&manifest, rng)?),
        Damage::ManifestFlushedSeq => {
            let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&manifest)?)
                .map_err(|e| io::Error::other(e.to_string()))?;
            let old = v.get("flushed_seq").and_then(|s| s.as_u64()).unwrap_or(0);
            let new = old + rng.range(1, 1000);
            v["flushed_seq"] = new.into();
            fs::write(&manifest, serde_json::to_vec_pretty(&v)?)?;
            format!("manifest.json: flushed_seq {old} -> {new}")
        }
        Damage::ShardFlip => {
            let p = pick_nonempty(shard_files(coll), rng)?;
            format!("{}: {}", rel(coll, &p), flip(&p, rng)?)
        }
        Damage::ShardDelete => {
            let p = pick_nonempty(shard_files(coll), rng)?;
            fs::remove_file(&p)?;
            format!("{}: deleted", rel(coll, &p))
        }
        Damage::StrayDir => {
            let root = coll.parent().unwrap_or(coll);
            let stray = root.join(format!("stray-{:08x}", rng.next_u64() as u32));
            fs::create_dir_all(&stray)?;
            return Ok((
                format!("empty directory collections/{} created", rel(root, &stray)),
                Some(stray),
            ));
        }
    };
    Ok((desc, None))
}

/// Copies a directory tree.
pub fn copy_dir(src: &Path, dst: &Path) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    for e in fs::read_dir(src)? {
        let e = e?;
        let to = dst.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to)?;
        } else {
            fs::copy(e.path(), &to)?;
        }
    }
    Ok(())
}

/// Replaces `dst` with a copy of `src`.
pub fn restore(src: &Path, dst: &Path) -> io::Result<()> {
    if dst.exists() {
        fs::remove_dir_all(dst)?;
    }
    copy_dir(src, dst)
}

/// The files of an undamaged collection directory that hold data: the shards its manifest names (with their
/// sibling files) and the log files past their header. Shards no manifest names are left-overs of an
/// interrupted flush or compaction, which the server may delete.
pub fn needed_files(coll: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let named: Option<BTreeSet<u64>> = fs::read(coll.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v.get("segments")?.as_array().map(|a| {
                a.iter()
                    .filter_map(|s| s.get("id")?.as_u64())
                    .collect::<BTreeSet<u64>>()
            })
        });
    if let Some(named) = named {
        for p in files(coll, "segments", "seg-", "") {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let id = name
                .strip_prefix("seg-")
                .and_then(|s| s.split('.').next())
                .and_then(|s| s.parse::<u64>().ok());
            if id.is_some_and(|id| named.contains(&id)) && !name.ends_with(".tmp") {
                out.insert(rel(coll, &p));
            }
        }
    }
    for p in wal_files(coll) {
        if fs::metadata(&p).map(|m| m.len() > 16).unwrap_or(false) {
            out.insert(rel(coll, &p));
        }
    }
    out
}

/// Every file name under `dir`, recursively.
fn all_names(dir: &Path, out: &mut BTreeSet<String>) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                all_names(&p, out);
            } else if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
                out.insert(n.to_string());
            }
        }
    }
}

/// The files of `expected` (relative paths) that are gone from `coll`: neither at their place nor anywhere
/// under a folder named `*quarantine*` below `search_root` (the data directory).
pub fn deleted_files(coll: &Path, search_root: &Path, expected: &BTreeSet<String>) -> Vec<String> {
    let mut quarantined = BTreeSet::new();
    let mut stack = vec![search_root.to_path_buf()];
    let mut guard = 0;
    while let Some(d) = stack.pop() {
        guard += 1;
        if guard > 10_000 {
            break;
        }
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    if e.file_name().to_string_lossy().contains("quarantine") {
                        all_names(&p, &mut quarantined);
                    } else {
                        stack.push(p);
                    }
                }
            }
        }
    }
    expected
        .iter()
        .filter(|r| {
            let name = Path::new(r.as_str())
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("");
            !coll.join(r.as_str()).exists() && !quarantined.contains(name)
        })
        .cloned()
        .collect()
}
