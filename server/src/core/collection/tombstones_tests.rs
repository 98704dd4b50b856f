//! Tombstone sidecars: the file round-trips in both encodings, damage is refused with the file named, a
//! manifest with inline deletions (version 2) opens and moves them to a sidecar at the next change, a crash
//! between the sidecar and the manifest loses nothing, and a full disk (in memory, no root needed) fails the
//! write without changing anything.
use std::sync::Arc;

use chamfer_index::storage::{Fault, MemoryStorage, Storage};

use super::super::lifecycle_tests::{blocking, config, delete, docs, upsert};
use super::super::{Collection, Tuning};
use super::*;
use crate::core::manifest::{self, Manifest, MANIFEST_VERSION};

fn bits(n: usize, set: impl IntoIterator<Item = usize>) -> Bitset {
    let mut b = Bitset::new(n);
    for i in set {
        b.set(i);
    }
    b
}

fn reference(generation: u64, b: &Bitset, crc32: u32) -> TombstoneRef {
    TombstoneRef {
        generation,
        count: b.ones() as u64,
        crc32,
    }
}

#[test]
fn sidecars_round_trip_sparse_and_dense() {
    for (n, set) in [
        (10usize, vec![]),
        (1000, vec![0, 1, 999]),
        (100_000, vec![5, 70_000, 99_999]),
        (1000, (0..1000).step_by(3).collect::<Vec<_>>()),
        (64, (0..64).collect()),
    ] {
        let b = bits(n, set.iter().copied());
        let (bytes, crc) = encode(7, 3, n, &b);
        // The smaller encoding: sparse deletions cost a few bytes each, dense ones n / 8.
        assert!(bytes.len() <= HEADER + n.div_ceil(8), "{n} {}", set.len());
        if set.len() <= 3 {
            assert!(bytes.len() <= HEADER + 3 * 3, "{}", bytes.len());
        }
        let mut got = Bitset::new(n);
        decode(&bytes, 7, n, &reference(3, &b, crc), &mut got).unwrap();
        assert_eq!(
            got.iter_ones().collect::<Vec<_>>(),
            set,
            "{n} documents, {} deleted",
            set.len()
        );
    }
}

#[test]
fn damage_is_refused_with_the_file_named() {
    let store = MemoryStorage::new();
    let layout = Layout {
        dir: "/unused".into(),
    };
    for set in [vec![1usize, 5, 300], (0..400).step_by(2).collect()] {
        let b = bits(400, set);
        let (bytes, crc) = encode(2, 1, 400, &b);
        let name = Layout::tombstones(2, 1);
        store.put(&name, &bytes, PutMode::Overwrite).unwrap();
        let entry = SegmentEntry {
            id: 2,
            docs: 400,
            deleted: vec![],
            tombstones: Some(reference(1, &b, crc)),
        };
        assert_eq!(load(&store, &layout, &entry, 400).unwrap().ones(), b.ones());
        // Every byte of the file is covered: a flipped bit anywhere is refused.
        for at in 0..bytes.len() {
            store.put(&name, &bytes, PutMode::Overwrite).unwrap();
            assert!(store.damage(&name, at, 0x10));
            let e = load(&store, &layout, &entry, 400).unwrap_err();
            assert!(
                matches!(e, StorageError::Damaged { .. })
                    && e.to_string().contains("seg-0000000002.tomb-00000001"),
                "byte {at}: {e}"
            );
        }
        // Truncated, missing, or not the file the manifest names.
        store.put(&name, &bytes, PutMode::Overwrite).unwrap();
        assert!(store.truncate(&name, bytes.len() - 1));
        assert!(load(&store, &layout, &entry, 400).is_err());
        store.put(&name, &bytes, PutMode::Overwrite).unwrap();
        let other = |f: &dyn Fn(&mut SegmentEntry)| {
            let mut e = entry.clone();
            f(&mut e);
            e
        };
        for wrong in [
            other(&|e| e.id = 3),
            other(&|e| e.tombstones.as_mut().unwrap().count += 1),
            other(&|e| e.tombstones.as_mut().unwrap().crc32 ^= 1),
        ] {
            assert!(load(&store, &layout, &wrong, 400).is_err(), "{wrong:?}");
        }
        assert!(
            load(&store, &layout, &entry, 401).is_err(),
            "a sidecar of another shard size"
        );
        store.delete(&name).unwrap();
        let e = load(&store, &layout, &entry, 400).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}

/// A full disk (injected in memory: no root, no tmpfs) fails the sidecar write with `Full`, naming the file,
/// and publishes nothing; once space is back the same write succeeds.
#[test]
fn a_full_disk_fails_the_sidecar_write_and_changes_nothing() {
    let store = MemoryStorage::new();
    let b = bits(1000, (0..1000).step_by(2));
    let (bytes, crc) = encode(4, 1, 1000, &b);
    store.inject(Fault::Capacity(bytes.len() as u64 - 1));
    let pending = [Pending {
        id: 4,
        tomb: reference(1, &b, crc),
        replaces: None,
        bytes: bytes.clone(),
    }];
    let e = write(&store, &pending).unwrap_err();
    assert!(e.is_full(), "{e}");
    assert!(
        e.to_string().contains("seg-0000000004.tomb-00000001"),
        "{e}"
    );
    assert_eq!(store.used_bytes(), 0);
    store.heal();
    write(&store, &pending).unwrap();
    // A leftover of the same name (a write whose manifest never came) is replaced, not an error.
    write(&store, &pending).unwrap();
    assert_eq!(store.read(&Layout::tombstones(4, 1)).unwrap(), bytes);
}

fn read_manifest(dir: &std::path::Path) -> Manifest {
    manifest::read_checked(&dir.join("c").join("manifest.json")).unwrap()
}

fn sidecars(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("c").join("segments"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tomb-"))
        .collect();
    names.sort();
    names
}

fn live(c: &Collection, n: u64) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
    ids.iter()
        .zip(c.get(&ids).unwrap())
        .filter(|(_, r)| r.is_some())
        .map(|(id, _)| id.clone())
        .collect()
}

async fn reopen(c: Arc<Collection>, dir: &std::path::Path, tuning: Tuning) -> Arc<Collection> {
    c.close();
    let layout = Layout { dir: dir.join("c") };
    tokio::task::spawn_blocking(move || Collection::open(layout, tuning))
        .await
        .unwrap()
        .unwrap()
}

/// Deletions of flushed documents go to a sidecar named by the manifest (which no longer lists them), one new
/// generation per change, the old one deleted; a reopen reads them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_live_in_sidecars_named_by_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let tuning = Tuning::new(1_000_000, 8);
    let c = Collection::create(dir.path(), config(), tuning).unwrap();
    upsert(&c, &docs(0..50)).await;
    blocking(&c, |c| c.flush()).await;
    assert!(sidecars(dir.path()).is_empty(), "nothing deleted yet");
    delete(&c, vec!["d3".into(), "d7".into()]).await;
    blocking(&c, |c| c.flush()).await;
    let m = read_manifest(dir.path());
    assert_eq!(m.format_version, MANIFEST_VERSION);
    let seg = &m.segments[0];
    assert!(seg.deleted.is_empty());
    assert_eq!(
        seg.tombstones.map(|t| (t.generation, t.count)),
        Some((1, 2))
    );
    assert_eq!(
        sidecars(dir.path()),
        vec![format!("seg-{:010}.tomb-00000001", seg.id)]
    );
    delete(&c, vec!["d9".into()]).await;
    blocking(&c, |c| c.flush()).await;
    let m = read_manifest(dir.path());
    assert_eq!(
        m.segments[0].tombstones.map(|t| (t.generation, t.count)),
        Some((2, 3))
    );
    assert_eq!(
        sidecars(dir.path()),
        vec![format!("seg-{:010}.tomb-00000002", seg.id)]
    );
    let want: Vec<String> = live(&c, 50);
    assert_eq!(want.len(), 47);
    let c = reopen(c, dir.path(), tuning).await;
    assert_eq!(live(&c, 50), want);
    c.close();
}

/// A version-2 manifest (deletions inline) opens with its deletions, and the next change writes them to a
/// sidecar and empties the inline list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_manifest_with_inline_deletions_opens_and_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let tuning = Tuning::new(1_000_000, 8);
    let c = Collection::create(dir.path(), config(), tuning).unwrap();
    upsert(&c, &docs(0..40)).await;
    blocking(&c, |c| c.flush()).await;
    c.close();
    // Rewrite the manifest as the previous release did: version 2, deletions 1 and 2 inline, no sidecar.
    let mut m = read_manifest(dir.path());
    m.format_version = 2;
    m.segments[0].deleted = vec![1, 2];
    manifest::write_checked(&dir.path().join("c").join("manifest.json"), &m).unwrap();
    let text = std::fs::read_to_string(dir.path().join("c").join("manifest.json")).unwrap();
    assert!(text.contains("\"format_version\": 2") && !text.contains("tombstones"));
    let layout = Layout {
        dir: dir.path().join("c"),
    };
    let c = tokio::task::spawn_blocking(move || Collection::open(layout, tuning))
        .await
        .unwrap()
        .unwrap();
    let want: Vec<String> = live(&c, 40);
    assert_eq!(want.len(), 38, "the inline deletions hold");
    // The next change moves them (with the new one) to a sidecar.
    delete(&c, vec!["d30".into()]).await;
    blocking(&c, |c| c.flush()).await;
    let m = read_manifest(dir.path());
    assert_eq!(m.format_version, MANIFEST_VERSION);
    assert!(m.segments[0].deleted.is_empty());
    assert_eq!(m.segments[0].tombstones.map(|t| t.count), Some(3));
    let c = reopen(c, dir.path(), tuning).await;
    assert_eq!(live(&c, 40).len(), 37);
    c.close();
}

/// The manifest is the commit point: a crash after a sidecar was written and before the manifest naming it
/// leaves an unnamed sidecar (removed at start-up) and the deletions in the log (replayed); and a manifest
/// write that fails after the sidecar removes it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_sidecar_and_manifest_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cdir = dir.path().join("c");
    let tuning = Tuning::new(1_000_000, 8);
    let c = Collection::create(dir.path(), config(), tuning).unwrap();
    upsert(&c, &docs(0..30)).await;
    blocking(&c, |c| c.flush()).await;
    delete(&c, vec!["d1".into()]).await;
    blocking(&c, |c| c.flush()).await;
    let m = read_manifest(dir.path());
    let id = m.segments[0].id;
    // Acknowledged, in the log, not flushed.
    delete(&c, vec!["d2".into(), "d3".into()]).await;
    c.close();
    // The crash: generation 2 written, the manifest still names generation 1.
    let b = bits(30, [1, 2, 3]);
    let (bytes, _) = encode(id, 2, 30, &b);
    std::fs::write(
        cdir.join("segments")
            .join(format!("seg-{id:010}.tomb-00000002")),
        bytes,
    )
    .unwrap();
    let c = reopen(c, dir.path(), tuning).await;
    assert_eq!(live(&c, 30).len(), 27, "the log's deletions are replayed");
    assert_eq!(
        sidecars(dir.path()),
        vec![format!("seg-{id:010}.tomb-00000001")],
        "the unnamed sidecar is removed at start-up"
    );
    // A manifest write that fails (its name taken by a folder, so the rename fails) after the sidecar: the
    // install fails, the new sidecar is removed, and the collection still opens with everything acknowledged.
    let mpath = cdir.join("manifest.json");
    std::fs::rename(&mpath, cdir.join("manifest.keep")).unwrap();
    std::fs::create_dir(&mpath).unwrap();
    let failed = {
        let c = c.clone();
        tokio::task::spawn_blocking(move || c.flush())
            .await
            .unwrap()
    };
    assert!(failed.is_err());
    assert_eq!(
        sidecars(dir.path()),
        vec![format!("seg-{id:010}.tomb-00000001")]
    );
    std::fs::remove_dir(&mpath).unwrap();
    std::fs::rename(cdir.join("manifest.keep"), &mpath).unwrap();
    let c = reopen(c, dir.path(), tuning).await;
    assert_eq!(live(&c, 30).len(), 27);
    blocking(&c, |c| c.flush()).await;
    let m = read_manifest(dir.path());
    assert_eq!(
        m.segments[0].tombstones.map(|t| (t.generation, t.count)),
        Some((2, 3))
    );
    let c = reopen(c, dir.path(), tuning).await;
    assert_eq!(live(&c, 30).len(), 27);
    c.close();
}

/// A damaged sidecar makes the collection refuse to open, naming the file; nothing is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_sidecar_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let tuning = Tuning::new(1_000_000, 8);
    let c = Collection::create(dir.path(), config(), tuning).unwrap();
    upsert(&c, &docs(0..20)).await;
    blocking(&c, |c| c.flush()).await;
    delete(&c, vec!["d4".into()]).await;
    blocking(&c, |c| c.flush()).await;
    c.close();
    let name = sidecars(dir.path()).pop().unwrap();
    let path = dir.path().join("c").join("segments").join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let layout = Layout {
        dir: dir.path().join("c"),
    };
    let e = match tokio::task::spawn_blocking(move || Collection::open(layout, tuning))
        .await
        .unwrap()
    {
        Ok(_) => panic!("a damaged sidecar opened"),
        Err(e) => e,
    };
    assert!(e.to_string().contains(&name), "{e}");
    assert!(path.exists(), "nothing is deleted");
}
