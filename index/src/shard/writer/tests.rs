//! The writer through the storage seam: the same bytes on a local disk and in memory, write-once, and a full
//! disk or a failing store (injected in memory: no root, no tmpfs) failing the write with nothing published.
use std::io::ErrorKind;

use super::*;
use crate::storage::{Fault, MemoryStorage};
use crate::tokens::TokenMatrix;

fn params() -> IndexParams {
    let mut p = IndexParams::new(4);
    p.fde.num_repetitions = 2;
    p.fde.num_simhash_projections = 2;
    p.fde.projection_dimension = 4;
    p.hnsw.prefix_repetitions = 1;
    p.codebook_size = 16;
    p
}

fn tokens(n: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|i| {
            (0..12)
                .map(|j| ((i * 7 + j * 3) % 11) as f32 - 5.0)
                .collect()
        })
        .collect()
}

fn shard_docs<'a>(ids: &'a [String], toks: &'a [Vec<f32>]) -> Vec<ShardDoc<'a>> {
    ids.iter()
        .zip(toks)
        .map(|(id, t)| ShardDoc {
            id,
            tokens: TokenMatrix::new(t, 4, "document").unwrap(),
            payload: b"{}",
        })
        .collect()
}

fn io_kind(e: &IndexError) -> Option<ErrorKind> {
    match e {
        IndexError::Io { source, .. } => Some(source.kind()),
        _ => None,
    }
}

#[test]
fn the_seam_writes_the_same_bytes_locally_and_in_memory_once() {
    let ids: Vec<String> = (0..40).map(|i| format!("d{i}")).collect();
    let toks = tokens(40);
    let docs = shard_docs(&ids, &toks);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.shard");
    Shard::write(&path, &params(), &docs, &|_| {}).unwrap();
    let store = MemoryStorage::new();
    let write = |store: &dyn Storage| {
        Shard::write_to(
            store,
            "a.shard",
            &params(),
            &docs,
            Coding::Train,
            &|_| {},
            &|| false,
        )
    };
    write(&store).unwrap();
    assert_eq!(store.read("a.shard").unwrap(), fs::read(&path).unwrap());
    // Shards are written once: a second write of the name is refused and changes nothing.
    let again = write(&store).unwrap_err();
    assert_eq!(io_kind(&again), Some(ErrorKind::AlreadyExists), "{again}");
    // The path-based writer replaces, as it always has; nothing temporary is left.
    Shard::write(&path, &params(), &docs, &|_| {}).unwrap();
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["a.shard"]);
    Shard::open(&path).unwrap();
}

#[test]
fn a_full_disk_fails_the_shard_write_and_publishes_nothing() {
    let ids: Vec<String> = (0..40).map(|i| format!("d{i}")).collect();
    let toks = tokens(40);
    let docs = shard_docs(&ids, &toks);
    let store = MemoryStorage::new();
    store.inject(Fault::Capacity(4096));
    let e = Shard::write_to(
        &store,
        "segments/seg-1.shard",
        &params(),
        &docs,
        Coding::Train,
        &|_| {},
        &|| false,
    )
    .unwrap_err();
    assert_eq!(io_kind(&e), Some(ErrorKind::StorageFull), "{e}");
    assert!(e.to_string().contains("seg-1.shard"), "{e}");
    assert_eq!(store.used_bytes(), 0);
    assert!(!store.exists("segments/seg-1.shard").unwrap());
    // A store that refuses the commit: the same, nothing published.
    store.heal();
    store.inject(Fault::FailWrites(
        "segments/".into(),
        ErrorKind::PermissionDenied,
    ));
    let e = Shard::write_to(
        &store,
        "segments/seg-1.shard",
        &params(),
        &docs,
        Coding::Train,
        &|_| {},
        &|| false,
    )
    .unwrap_err();
    assert_eq!(io_kind(&e), Some(ErrorKind::PermissionDenied), "{e}");
    assert!(store.list("segments").unwrap().is_empty());
    // Space back: the write succeeds. A cancelled write publishes nothing either.
    store.heal();
    let cancelled = Shard::write_to(
        &store,
        "segments/seg-2.shard",
        &params(),
        &docs,
        Coding::Train,
        &|_| {},
        &|| true,
    );
    assert!(matches!(cancelled, Err(IndexError::Cancelled(_))));
    Shard::write_to(
        &store,
        "segments/seg-1.shard",
        &params(),
        &docs,
        Coding::Train,
        &|_| {},
        &|| false,
    )
    .unwrap();
    assert_eq!(
        store.list("segments").unwrap(),
        vec!["segments/seg-1.shard"]
    );
}

#[test]
fn a_shard_with_a_graph_needs_a_local_directory() {
    let ids: Vec<String> = (0..4).map(|i| format!("d{i}")).collect();
    let toks = tokens(4);
    let docs = shard_docs(&ids, &toks);
    let mut p = params();
    p.hnsw.min_docs = 2;
    let store = MemoryStorage::new();
    let e = Shard::write_to(
        &store,
        "g.shard",
        &p,
        &docs,
        Coding::Train,
        &|_| {},
        &|| false,
    )
    .unwrap_err();
    assert!(
        matches!(e, IndexError::InvalidParam { .. }) && e.to_string().contains("local directory"),
        "{e}"
    );
    assert!(store.list("").unwrap().is_empty());
}
