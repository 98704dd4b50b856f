//! Fault injection at the core: damaged files are refused (the collection becomes unavailable with its reason,
//! nothing is deleted or truncated, the other collections serve), restoring the file brings every acknowledged
//! document back; drop racing flush never touches another incarnation's files; close abandons background work
//! without losing anything; writers that outrun flushing get `overloaded`; a full disk answers `storage_full`.
//! Issue 7; RELIABILITY.md maps each promise to its test.
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::collection::Tuning;
use super::input::{CollectionParamsInput, DocInput};
use super::tests::{doc, open_core as open, settings, DIM};
use super::*;

async fn shutdown(core: Core) {
    tokio::task::spawn_blocking(move || core.shutdown())
        .await
        .unwrap();
}

fn coll_dir(root: &Path, name: &str) -> PathBuf {
    root.join("collections").join(name)
}

/// Every file under `dir` with its size (the evidence that nothing was deleted or truncated).
fn files(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), fs::metadata(&p).unwrap().len());
            }
        }
    }
    out
}

/// Two collections: "c" with `flushed` documents in a shard and 10 more only in the log; "other" with 5.
async fn populate(dir: &Path, flushed: u64) -> Vec<String> {
    let core = open(dir).await;
    for name in ["c", "other"] {
        core.create_collection(name.into(), DIM, CollectionParamsInput::default())
            .await
            .unwrap();
    }
    for chunk in (0..flushed).collect::<Vec<_>>().chunks(10) {
        core.upsert("c", chunk.iter().map(|&i| doc(i)).collect())
            .await
            .unwrap();
    }
    if flushed > 0 {
        core.flush("c").await.unwrap();
    }
    for i in flushed..flushed + 10 {
        core.upsert("c", vec![doc(i)]).await.unwrap();
    }
    core.upsert("other", (0..5).map(doc).collect())
        .await
        .unwrap();
    shutdown(core).await;
    (0..flushed + 10).map(|i| format!("d{i}")).collect()
}

async fn assert_all_there(core: &Core, ids: &[String]) {
    let got = core.get("c", ids.to_vec(), true).await.unwrap();
    assert!(got.missing.is_empty(), "lost: {:?}", got.missing);
    assert_eq!(
        core.describe("c").unwrap().stats.documents,
        ids.len() as u64
    );
}

fn unavailable_reason(core: &Core, name: &str) -> String {
    match core.describe(name) {
        Err(ServiceError::CollectionUnavailable { reason, .. }) => reason,
        other => panic!(
            "expected {name} unavailable, got {:?}",
            other.map(|i| i.stats)
        ),
    }
}

/// Applies `damage` to collection "c", checks that it is refused with a reason containing `expect`, that no
/// file was removed or shortened, that "other" serves and the server reports ready; then restores the files
/// and checks that everything acknowledged is back.
async fn refused_then_restored(damage: impl FnOnce(&Path), expect: &str) {
    refused_then_restored_with(30, damage, expect).await
}

/// [`refused_then_restored`] with `flushed` documents in a shard before the 10 in the log (0: no flush).
async fn refused_then_restored_with(flushed: u64, damage: impl FnOnce(&Path), expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ids = populate(dir.path(), flushed).await;
    let c = coll_dir(dir.path(), "c");
    let backup = tempfile::tempdir().unwrap();
    let saved: BTreeMap<PathBuf, Vec<u8>> = files(&c)
        .into_keys()
        .map(|p| (p.clone(), fs::read(&p).unwrap()))
        .collect();
    damage(&c);
    let damaged = files(&c);
    let core = open(dir.path()).await;
    // Damage in a shard's token section is found by the background check that follows opening.
    for _ in 0..200 {
        if core.describe("c").is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reason = unavailable_reason(&core, "c");
    assert!(
        reason.contains(expect),
        "reason {reason:?} lacks {expect:?}"
    );
    assert_eq!(
        files(&c),
        damaged,
        "a damaged collection's files are left exactly as they were"
    );
    assert_eq!(core.describe("other").unwrap().stats.documents, 5);
    let h = core.health();
    assert!(h.ready, "{h:?}");
    assert_eq!(h.unavailable.len(), 1);
    assert!(matches!(
        core.upsert("c", vec![doc(999)]).await,
        Err(ServiceError::CollectionUnavailable { .. })
    ));
    shutdown(core).await;
    // Restore (the operator's repair) and reopen: nothing acknowledged was lost.
    for p in files(&c).into_keys() {
        if !saved.contains_key(&p) {
            fs::remove_file(&p).unwrap();
        }
    }
    for (p, bytes) in &saved {
        fs::write(p, bytes).unwrap();
    }
    drop(backup);
    let core = open(dir.path()).await;
    assert_all_there(&core, &ids).await;
    shutdown(core).await;
}

fn wal_files(c: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(c.join("wal"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_manifest_is_refused_and_deletes_nothing() {
    refused_then_restored(
        |c| fs::remove_file(c.join("manifest.json")).unwrap(),
        "manifest.json",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_manifest_is_refused() {
    refused_then_restored(
        |c| {
            let p = c.join("manifest.json");
            let text = fs::read_to_string(&p).unwrap();
            let raised = text.replacen("\"flushed_seq\": ", "\"flushed_seq\": 9", 1);
            assert_ne!(raised, text);
            fs::write(&p, raised).unwrap();
        },
        "checksum mismatch",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_live_log_is_refused_not_truncated() {
    refused_then_restored(
        |c| {
            let p = wal_files(c).pop().unwrap();
            let mut b = fs::read(&p).unwrap();
            b[100] ^= 0xff;
            fs::write(&p, b).unwrap();
        },
        "followed by a valid record",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_deleted_log_is_refused() {
    refused_then_restored(
        |c| {
            let p = wal_files(c).pop().unwrap();
            let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(2000).unwrap();
        },
        "truncated",
    )
    .await;
    refused_then_restored(
        |c| {
            for p in wal_files(c) {
                fs::remove_file(p).unwrap();
            }
        },
        "no write-ahead log",
    )
    .await;
}

/// Issue 21, items 1 and 2: the newest log file emptied, its records zeroed, or its last (acknowledged) record
/// damaged, with and without a flush before; the log's control file deleted or damaged. Each is refused with the
/// reason (never opened as a shorter log), nothing is changed, and restoring the files brings everything back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_or_damaged_log_tail_is_refused() {
    for flushed in [0, 30] {
        refused_then_restored_with(
            flushed,
            |c| {
                let p = wal_files(c).pop().unwrap();
                fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_len(0)
                    .unwrap();
            },
            "10 acknowledged record(s) are missing",
        )
        .await;
        refused_then_restored_with(
            flushed,
            |c| {
                let p = wal_files(c).pop().unwrap();
                let mut b = fs::read(&p).unwrap();
                b[40..].fill(0);
                fs::write(&p, b).unwrap();
            },
            "10 acknowledged record(s) are missing",
        )
        .await;
        // The last record's final byte flipped: it looks like a torn append, but it was acknowledged.
        refused_then_restored_with(
            flushed,
            |c| {
                let p = wal_files(c).pop().unwrap();
                let mut b = fs::read(&p).unwrap();
                let last = b.iter().rposition(|&x| x != 0).unwrap();
                b[last] ^= 0x40;
                fs::write(&p, b).unwrap();
            },
            "1 acknowledged record(s) are missing",
        )
        .await;
        refused_then_restored_with(
            flushed,
            |c| fs::remove_file(c.join("wal/control")).unwrap(),
            "control file is missing",
        )
        .await;
        refused_then_restored_with(
            flushed,
            |c| fs::write(c.join("wal/control"), [0u8; 1024]).unwrap(),
            "no valid slot",
        )
        .await;
    }
}

/// Flips bits `mask` of the byte at `at(file length)` of collection `c`'s first shard file.
fn flip_shard_byte(c: &Path, at: impl Fn(usize) -> usize, mask: u8) {
    let seg = fs::read_dir(c.join("segments"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "shard"))
        .unwrap();
    let mut b = fs::read(&seg).unwrap();
    let i = at(b.len());
    b[i] ^= mask;
    fs::write(&seg, b).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_shard_or_config_is_refused() {
    refused_then_restored(|c| flip_shard_byte(c, |len| len / 2, 0x10), "seg-").await;
    // A flipped bit in the token section (the first section, right after the 64-byte header), which opening
    // leaves to the background check (Shard::open_deferred).
    refused_then_restored(
        |c| flip_shard_byte(c, |_| 64 + 3, 0x04),
        "tokens checksum mismatch",
    )
    .await;
    refused_then_restored(
        |c| fs::write(c.join("collection.json"), b"{\"format_version\": 2, \"crc").unwrap(),
        "collection.json",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_entries_do_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 0).await;
    let root = dir.path().join("collections");
    fs::create_dir(root.join("empty")).unwrap();
    fs::write(root.join("notes.txt"), b"hello").unwrap();
    fs::create_dir(root.join("bad name!")).unwrap();
    let core = open(dir.path()).await;
    assert_eq!(core.describe("c").unwrap().stats.documents, 10);
    assert_eq!(core.describe("other").unwrap().stats.documents, 5);
    assert!(unavailable_reason(&core, "empty").contains("collection.json"));
    assert!(matches!(
        core.describe("notes.txt"),
        Err(ServiceError::CollectionNotFound(_))
    ));
    // The damaged one can be dropped on purpose, and its name reused.
    core.drop_collection("empty").await.unwrap();
    core.create_collection("empty".into(), DIM, CollectionParamsInput::default())
        .await
        .unwrap();
    assert!(root.join("notes.txt").exists() && root.join("bad name!").exists());
    shutdown(core).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_open_after_the_core_answers() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 20).await;
    let s = settings(dir.path());
    let core = tokio::task::spawn_blocking(move || Core::new(&s))
        .await
        .unwrap()
        .unwrap();
    let h = core.health();
    assert!(!h.ready);
    assert!(h
        .reason
        .unwrap()
        .contains("2 of 2 collections still opening"));
    assert!(unavailable_reason(&core, "c").contains("still opening"));
    let loader = core.clone();
    tokio::task::spawn_blocking(move || loader.load())
        .await
        .unwrap();
    assert!(core.health().ready);
    assert_eq!(core.describe("c").unwrap().stats.documents, 30);
    shutdown(core).await;
}

/// A flush of a dropped collection must never write into the directory of a new collection of the same name
/// (issue 7 item 5): close() waits for, or cancels, the flush, and create waits for the drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_racing_drop_never_touches_the_next_incarnation() {
    let dir = tempfile::tempdir().unwrap();
    let core = open(dir.path()).await;
    for round in 0..12u64 {
        core.create_collection("c".into(), DIM, CollectionParamsInput::default())
            .await
            .unwrap();
        core.upsert("c", (0..40).map(|i| doc(round * 100 + i)).collect())
            .await
            .unwrap();
        let (a, b) = (core.clone(), core.clone());
        let flush = tokio::spawn(async move { a.flush("c").await });
        let dropped = tokio::spawn(async move { b.drop_collection("c").await });
        let f = flush.await.unwrap();
        dropped.await.unwrap().unwrap();
        if let Err(e) = &f {
            assert!(
                matches!(
                    e,
                    ServiceError::CollectionNotFound(_) | ServiceError::Unavailable(_)
                ),
                "round {round}: flush failed with {e}"
            );
        }
        // The next incarnation starts empty, with no shard file it did not write.
        core.create_collection("c".into(), DIM, CollectionParamsInput::default())
            .await
            .unwrap();
        assert_eq!(core.describe("c").unwrap().stats.documents, 0);
        let segs = fs::read_dir(coll_dir(dir.path(), "c").join("segments"))
            .unwrap()
            .count();
        assert_eq!(
            segs, 0,
            "round {round}: a stale flush wrote into the new collection"
        );
        core.drop_collection("c").await.unwrap();
    }
    shutdown(core).await;
}

/// Closing abandons a compaction at its next check; whatever moment it stops at, reopening finds every
/// document and no shard file the manifest does not name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_abandons_background_work_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let core = open(dir.path()).await;
    core.create_collection("c".into(), DIM, CollectionParamsInput::default())
        .await
        .unwrap();
    for chunk in (0..200u64).collect::<Vec<_>>().chunks(50) {
        core.upsert("c", chunk.iter().map(|&i| doc(i)).collect())
            .await
            .unwrap();
        core.flush("c").await.unwrap();
    }
    let compacting = {
        let core = core.clone();
        tokio::spawn(async move { core.compact("c").await })
    };
    shutdown(core).await;
    match compacting.await.unwrap() {
        Ok(_) | Err(ServiceError::Unavailable(_)) => {}
        Err(e) => panic!("compaction failed with {e}"),
    }
    let c = coll_dir(dir.path(), "c");
    let core = open(dir.path()).await;
    let ids: Vec<String> = (0..200).map(|i| format!("d{i}")).collect();
    assert_all_there(&core, &ids).await;
    // The reopened collection may start a tiered merge of its own: close it (which waits for or abandons that
    // merge) before looking at the files.
    shutdown(core).await;
    let manifest: manifest::Manifest = manifest::read_checked(&c.join("manifest.json")).unwrap();
    let named: Vec<u64> = manifest.segments.iter().map(|s| s.id).collect();
    for e in fs::read_dir(c.join("segments")).unwrap().flatten() {
        let id = Layout::segment_id_of(&e.file_name().to_string_lossy()).unwrap();
        assert!(named.contains(&id), "{:?} is not in the manifest", e.path());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_that_outrun_flushing_are_told_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let core = tokio::task::spawn_blocking(move || {
        let mut t = Tuning::new(1_000_000, 8);
        t.max_memtable_docs = 25;
        let core = Core::new_tuned(&s, t)?;
        core.load();
        Ok::<_, ServiceError>(core)
    })
    .await
    .unwrap()
    .unwrap();
    core.create_collection("c".into(), DIM, CollectionParamsInput::default())
        .await
        .unwrap();
    let mut acked = 0;
    let mut refused = None;
    for chunk in (0..60u64).collect::<Vec<_>>().chunks(10) {
        match core
            .upsert("c", chunk.iter().map(|&i| doc(i)).collect())
            .await
        {
            Ok(o) => acked += o.upserted,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the memtable cap refuses writes");
    assert_eq!(
        (e.status().code, e.status().http.as_u16()),
        ("overloaded", 429)
    );
    assert_eq!(acked, 30);
    core.flush("c").await.unwrap();
    core.upsert("c", vec![doc(500)]).await.unwrap();
    assert_eq!(core.describe("c").unwrap().stats.documents, 31);
    shutdown(core).await;
}

/// Unmounts a tmpfs when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Out of disk: writes answer `storage_full` (507), `/readyz` reports it, nothing acknowledged is lost, and
/// writes succeed again once space is freed. Needs root to mount a small tmpfs (CI runs as root); elsewhere the
/// test says it was skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_storage_full_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED a_full_disk_answers_storage_full_and_recovers: cannot mount a tmpfs (not root?)");
        return;
    }
    let _mount = Mount(mnt.clone());
    let filler = mnt.join("filler");
    fs::write(&filler, vec![1u8; 2 << 20]).unwrap();
    let core = open(&mnt).await;
    const WIDE: usize = 256;
    core.create_collection("c".into(), WIDE, CollectionParamsInput::default())
        .await
        .unwrap();
    let big = |i: u64| DocInput {
        id: format!("b{i}"),
        tokens: input::TokenInput::Rows(
            (0..64)
                .map(|t| {
                    (0..WIDE)
                        .map(|j| ((i as usize + t + j) % 7) as f32 - 3.0)
                        .collect()
                })
                .collect(),
        ),
        metadata: input::MetadataInput::None,
    };
    let mut acked = Vec::new();
    let mut full = None;
    for i in 0..200u64 {
        match core.upsert("c", vec![big(i)]).await {
            Ok(_) => acked.push(format!("b{i}")),
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let e = full.expect("a 6 MiB disk fills up");
    assert_eq!(
        (e.status().code, e.status().http.as_u16()),
        ("storage_full", 507),
        "{e}"
    );
    let h = core.health();
    assert!(
        !h.ready
            && h.reason
                .as_deref()
                .unwrap_or("")
                .contains("out of disk space"),
        "{h:?}"
    );
    // Space comes back: writes succeed and readiness returns.
    fs::remove_file(&filler).unwrap();
    core.upsert("c", vec![big(1000)]).await.unwrap();
    acked.push("b1000".into());
    assert!(core.health().ready);
    shutdown(core).await;
    let core = open(&mnt).await;
    let got = core.get("c", acked.clone(), false).await.unwrap();
    assert!(
        got.missing.is_empty(),
        "lost after a full disk: {:?}",
        got.missing
    );
    shutdown(core).await;
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// A collection written by the version before WAL v2 and checked JSON files (tests/fixtures/README.md says how)
/// opens with every acknowledged write, keeps taking writes (continuing in a version-3 log file), flushes into a
/// version-2 manifest, and reopens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_collection_opens_and_continues() {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/v1/collections/legacy");
    let dir = tempfile::tempdir().unwrap();
    let c = coll_dir(dir.path(), "legacy");
    copy_dir(&fixture, &c);
    let expected: Vec<String> = (0..15)
        .filter(|i| *i != 3 && *i != 12)
        .map(|i| format!("d{i}"))
        .collect();
    let check = |core: Core, extra: Vec<String>| {
        let expected = expected.clone();
        async move {
            let mut ids = expected;
            ids.extend(extra);
            let got = core.get("legacy", ids.clone(), true).await.unwrap();
            assert!(got.missing.is_empty(), "lost: {:?}", got.missing);
            let gone = core
                .get("legacy", vec!["d3".into(), "d12".into()], false)
                .await
                .unwrap();
            assert_eq!(gone.missing.len(), 2, "deletes stay deleted");
            let d7 = got.documents.iter().find(|d| d.id == "d7").unwrap();
            assert_eq!(d7.tokens.as_deref(), Some(&[9.0f32, 9.0, 9.0, 9.0][..]));
            assert_eq!(d7.metadata.as_deref(), Some(r#"{"n":77}"#));
            let d13 = got.documents.iter().find(|d| d.id == "d13").unwrap();
            assert_eq!(
                d13.tokens.as_deref(),
                Some(&[1.25f32, -1.5, 0.5, 13.0, 0.75, 1.5, -13.0, 1.0][..])
            );
            assert_eq!(
                core.describe("legacy").unwrap().stats.documents,
                ids.len() as u64
            );
            core
        }
    };
    let core = check(open(dir.path()).await, vec![]).await;
    let d100 = DocInput {
        id: "d100".into(),
        tokens: input::TokenInput::Rows(vec![vec![0.5, 0.25, -1.0, 2.0]]),
        metadata: input::MetadataInput::None,
    };
    core.upsert("legacy", vec![d100]).await.unwrap();
    shutdown(core).await;
    let core = check(open(dir.path()).await, vec!["d100".into()]).await;
    assert_eq!(
        wal_files(&c).len(),
        2,
        "the version-1 log is kept, writes continue in a version-3 file"
    );
    core.flush("legacy").await.unwrap();
    shutdown(core).await;
    let m = fs::read_to_string(c.join("manifest.json")).unwrap();
    assert!(
        m.contains("\"crc32\""),
        "the manifest is rewritten as version 2: {m}"
    );
    let core = check(open(dir.path()).await, vec!["d100".into()]).await;
    shutdown(core).await;
}
