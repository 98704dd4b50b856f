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

/// Flips one bit of a random byte. With `data_only`, the byte lies before the file's trailing zero fill (a
/// preallocated log file is mostly zeros after its last record).
fn flip(path: &Path, rng: &mut Rng, data_only: bool) -> io::Result<String> {
    let mut bytes = fs::read(path)?;
    if bytes.is_empty() {
        return Err(io::Error::other("empty file"));
    }
    let end = if data_only {
        bytes
            .iter()
            .rposition(|b| *b != 0)
            .map_or(bytes.len(), |i| i + 1)
    } else {
        bytes.len()
    };
    let at = rng.below(end as u64) as usize;
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

/// A log file, and where it stands among the log files ("log 2 of 3").
fn pick_wal(coll: &Path, rng: &mut Rng) -> io::Result<(PathBuf, String)> {
    let all = wal_files(coll);
    let p = pick_nonempty(all.clone(), rng)?;
    let i = all.iter().position(|x| *x == p).unwrap_or(0);
    let place = if i + 1 == all.len() {
        format!("the last of {} log files", all.len())
    } else {
        format!("log {} of {}", i + 1, all.len())
    };
    Ok((p, place))
}

/// The manifest's content: the object itself (format 1) or its `body` (format 2: `{format_version, crc32,
/// body}`).
fn manifest_body(v: &serde_json::Value) -> &serde_json::Value {
    v.get("body").filter(|b| b.is_object()).unwrap_or(v)
}

/// The segment ids `manifest.json` names, if it can be read.
fn named_segments(coll: &Path) -> Option<BTreeSet<u64>> {
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(coll.join("manifest.json")).ok()?).ok()?;
    Some(
        manifest_body(&v)
            .get("segments")?
            .as_array()?
            .iter()
            .filter_map(|s| s.get("id")?.as_u64())
            .collect(),
    )
}

fn segment_id(p: &Path) -> Option<u64> {
    p.file_name()?
        .to_str()?
        .strip_prefix("seg-")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// A shard file, preferring the ones the manifest names (an unnamed one is a left-over that may go).
fn pick_shard(coll: &Path, rng: &mut Rng) -> io::Result<(PathBuf, &'static str)> {
    let all = shard_files(coll);
    let named = named_segments(coll).unwrap_or_default();
    let live: Vec<PathBuf> = all
        .iter()
        .filter(|p| segment_id(p).is_some_and(|id| named.contains(&id)))
        .cloned()
        .collect();
    if live.is_empty() {
        Ok((pick_nonempty(all, rng)?, "not named by the manifest"))
    } else {
        Ok((pick_nonempty(live, rng)?, "named by the manifest"))
    }
}

/// Applies `d` to the collection directory `coll` (inside `collections/`); returns a description, and the
/// stray directory it created, if any.
pub fn apply(d: Damage, coll: &Path, rng: &mut Rng) -> io::Result<(String, Option<PathBuf>)> {
    let manifest = coll.join("manifest.json");
    let desc = match d {
        Damage::WalFlip => {
            let (p, place) = pick_wal(coll, rng)?;
            format!("{} ({place}): {}", rel(coll, &p), flip(&p, rng, true)?)
        }
        Damage::WalTruncate => {
            let (p, place) = pick_wal(coll, rng)?;
            let len = fs::metadata(&p)?.len();
            let to = rng.below(len);
            fs::OpenOptions::new().write(true).open(&p)?.set_len(to)?;
            format!(
                "{} ({place}): truncated from {len} to {to} bytes",
                rel(coll, &p)
            )
        }
        Damage::WalDelete => {
            let (p, place) = pick_wal(coll, rng)?;
            let len = fs::metadata(&p)?.len();
            fs::remove_file(&p)?;
            format!("{} ({place}): deleted ({len} bytes)", rel(coll, &p))
        }
        Damage::ManifestDelete => {
            fs::remove_file(&manifest)?;
            "manifest.json deleted".to_string()
        }
        Damage::ManifestFlip => format!("manifest.json: {}", flip(&manifest, rng, false)?),
        Damage::ManifestFlushedSeq => {
            let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&manifest)?)
                .map_err(|e| io::Error::other(e.to_string()))?;
            let body = if v.get("body").is_some_and(|b| b.is_object()) {
                &mut v["body"]
            } else {
                &mut v
            };
            let old = body
                .get("flushed_seq")
                .and_then(|s| s.as_u64())
                .unwrap_or(0);
            let new = old + rng.range(1, 1000);
            body["flushed_seq"] = new.into();
            fs::write(&manifest, serde_json::to_vec_pretty(&v)?)?;
            format!("manifest.json: flushed_seq {old} -> {new}")
        }
        Damage::ShardFlip => {
            let (p, which) = pick_shard(coll, rng)?;
            format!("{} ({which}): {}", rel(coll, &p), flip(&p, rng, false)?)
        }
        Damage::ShardDelete => {
            let (p, which) = pick_shard(coll, rng)?;
            fs::remove_file(&p)?;
            format!("{} ({which}): deleted", rel(coll, &p))
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
    let named = named_segments(coll);
    if let Some(named) = named {
        for p in files(coll, "segments", "seg-", "") {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let id = segment_id(&p);
            if id.is_some_and(|id| named.contains(&id)) && !name.ends_with(".tmp") {
                out.insert(rel(coll, &p));
            }
        }
    }
    for p in wal_files(coll) {
        // Past the header (16 bytes in format 1, 40 in format 2): a shorter file is an interrupted rotation.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake collection directory: a manifest naming segment 1, shard files 1 (named) and 2 (left-over),
    /// two log files (one past its header, one header only).
    fn fake(root: &Path) -> PathBuf {
        let coll = root.join("collections").join("c");
        fs::create_dir_all(coll.join("segments")).unwrap();
        fs::create_dir_all(coll.join("wal")).unwrap();
        fs::write(
            coll.join("manifest.json"),
            r#"{"format_version": 1, "flushed_seq": 7, "next_segment_id": 3, "segments": [{"id": 1, "docs": 2, "deleted": []}]}"#,
        )
        .unwrap();
        fs::write(coll.join("segments/seg-0000000001.shard"), [7u8; 64]).unwrap();
        fs::write(coll.join("segments/seg-0000000002.shard"), [7u8; 64]).unwrap();
        fs::write(coll.join("wal/wal-00000000000000000001.log"), [1u8; 40]).unwrap();
        fs::write(coll.join("wal/wal-00000000000000000008.log"), [1u8; 16]).unwrap();
        coll
    }

    #[test]
    fn needed_files_are_named_shards_and_logs_with_records() {
        let tmp = tempfile::tempdir().unwrap();
        let coll = fake(tmp.path());
        let needed: Vec<String> = needed_files(&coll).into_iter().collect();
        assert_eq!(
            needed,
            [
                "segments/seg-0000000001.shard",
                "wal/wal-00000000000000000001.log"
            ]
        );
        // Format 2: the same content under "body", with a checksum beside it.
        fs::write(
            coll.join("manifest.json"),
            r#"{"format_version": 2, "crc32": 5, "body": {"format_version": 2, "flushed_seq": 7, "next_segment_id": 3, "segments": [{"id": 2, "docs": 2, "deleted": []}]}}"#,
        )
        .unwrap();
        let needed: Vec<String> = needed_files(&coll).into_iter().collect();
        assert_eq!(
            needed,
            [
                "segments/seg-0000000002.shard",
                "wal/wal-00000000000000000001.log"
            ]
        );
        let (what, _) = apply(Damage::ManifestFlushedSeq, &coll, &mut Rng::new(1)).unwrap();
        assert!(
            what.starts_with("manifest.json: flushed_seq 7 -> "),
            "{what}"
        );
        let v: serde_json::Value =
            serde_json::from_slice(&fs::read(coll.join("manifest.json")).unwrap()).unwrap();
        assert!(v["body"]["flushed_seq"].as_u64().unwrap() > 7 && v.get("flushed_seq").is_none());
    }

    #[test]
    fn a_quarantined_file_is_not_deleted_a_removed_one_is() {
        let tmp = tempfile::tempdir().unwrap();
        let coll = fake(tmp.path());
        let needed = needed_files(&coll);
        assert!(deleted_files(&coll, tmp.path(), &needed).is_empty());
        let q = coll.join("quarantine").join("2026");
        fs::create_dir_all(&q).unwrap();
        fs::rename(
            coll.join("segments/seg-0000000001.shard"),
            q.join("seg-0000000001.shard"),
        )
        .unwrap();
        assert!(deleted_files(&coll, tmp.path(), &needed).is_empty());
        fs::remove_file(coll.join("wal/wal-00000000000000000001.log")).unwrap();
        assert_eq!(
            deleted_files(&coll, tmp.path(), &needed),
            ["wal/wal-00000000000000000001.log"]
        );
    }

    #[test]
    fn every_damage_changes_the_directory_and_a_restore_undoes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let coll = fake(tmp.path());
        let backup = tmp.path().join("backup");
        restore(&coll, &backup).unwrap();
        let snapshot = |dir: &Path| {
            let mut v = Vec::new();
            let mut stack = vec![dir.to_path_buf()];
            while let Some(d) = stack.pop() {
                for e in fs::read_dir(&d).unwrap().flatten() {
                    if e.path().is_dir() {
                        v.push((rel(dir, &e.path()), Vec::new()));
                        stack.push(e.path());
                    } else {
                        v.push((rel(dir, &e.path()), fs::read(e.path()).unwrap()));
                    }
                }
            }
            v.sort();
            v
        };
        let root = coll.parent().unwrap().to_path_buf();
        let before = snapshot(&root);
        let mut rng = Rng::new(3);
        for d in Damage::ALL {
            assert!(applicable(d, &coll), "{d:?}");
            let (what, stray) = apply(d, &coll, &mut rng).unwrap();
            assert_ne!(snapshot(&root), before, "{d:?} ({what}) changed nothing");
            if d == Damage::ShardFlip || d == Damage::ShardDelete {
                assert!(what.contains("named by the manifest"), "{what}");
            }
            if let Some(s) = stray {
                fs::remove_dir_all(s).unwrap();
            }
            restore(&backup, &coll).unwrap();
            assert_eq!(snapshot(&root), before, "{d:?}: restore");
        }
    }
}
