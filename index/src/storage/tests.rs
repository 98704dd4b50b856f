use std::io::{ErrorKind, Write};

use super::*;

/// The contract every store keeps, run against each implementation.
fn contract(store: &dyn Storage) {
    // put + read + map, both modes.
    store.put("a.bin", b"first", PutMode::Create).unwrap();
    assert_eq!(store.read("a.bin").unwrap(), b"first");
    let taken = store.put("a.bin", b"second", PutMode::Create).unwrap_err();
    assert_eq!(taken.source.kind(), ErrorKind::AlreadyExists);
    assert!(taken.path.ends_with("a.bin"), "{taken}");
    assert_eq!(
        store.read("a.bin").unwrap(),
        b"first",
        "a refused create changes nothing"
    );
    store.put("a.bin", b"second", PutMode::Overwrite).unwrap();
    assert_eq!(&*store.map("a.bin").unwrap(), b"second");

    // A streamed file is invisible until its commit, and a dropped one leaves nothing behind.
    let mut w = store.create("big.bin", PutMode::Create).unwrap();
    w.write_all(&[7u8; 3000]).unwrap();
    w.write_all(b"end").unwrap();
    assert!(!store.exists("big.bin").unwrap());
    w.commit().unwrap();
    let bytes = store.map("big.bin").unwrap();
    assert_eq!(bytes.len(), 3003);
    assert_eq!(bytes.as_ptr() as usize % 8, 0, "mapped bytes are aligned");
    assert_eq!(&bytes[3000..], b"end");
    let mut w = store.create("dropped.bin", PutMode::Create).unwrap();
    w.write_all(b"never").unwrap();
    drop(w);
    assert!(!store.exists("dropped.bin").unwrap());
    assert_eq!(store.list("").unwrap(), vec!["a.bin", "big.bin"]);
    // A streamed create loses to a file published meanwhile.
    let mut w = store.create("race.bin", PutMode::Create).unwrap();
    w.write_all(b"late").unwrap();
    store.put("race.bin", b"early", PutMode::Create).unwrap();
    assert_eq!(
        w.commit().unwrap_err().source.kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(store.read("race.bin").unwrap(), b"early");

    // Renames: a staged file published under its name.
    store.put("staged", b"s", PutMode::Create).unwrap();
    assert_eq!(
        store
            .rename("staged", "race.bin", PutMode::Create)
            .unwrap_err()
            .source
            .kind(),
        ErrorKind::AlreadyExists
    );
    store
        .rename("staged", "race.bin", PutMode::Overwrite)
        .unwrap();
    assert_eq!(store.read("race.bin").unwrap(), b"s");
    assert!(!store.exists("staged").unwrap());

    // Missing files, deletion, names.
    assert_eq!(
        store.read("nope").unwrap_err().source.kind(),
        ErrorKind::NotFound
    );
    store.delete("a.bin").unwrap();
    store.delete("a.bin").unwrap();
    assert!(!store.exists("a.bin").unwrap());
    for bad in ["", "/abs", "a/../b", "a//b", "./a"] {
        assert_eq!(
            store
                .put(bad, b"x", PutMode::Create)
                .unwrap_err()
                .source
                .kind(),
            ErrorKind::InvalidInput,
            "{bad:?}"
        );
    }
}

#[test]
fn local_dir_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalDir::new(dir.path());
    contract(&store);
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    store.put("sub/x", b"1", PutMode::Create).unwrap();
    assert_eq!(store.list("sub").unwrap(), vec!["sub/x"]);
    assert_eq!(store.local_root(), Some(dir.path()));
    // No temporary file is left behind by any of it.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Folders are never created implicitly.
    assert_eq!(
        store
            .put("gone/x", b"1", PutMode::Create)
            .unwrap_err()
            .source
            .kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn memory_storage_keeps_the_contract() {
    let store = MemoryStorage::new();
    contract(&store);
    store.put("sub/x", b"1", PutMode::Create).unwrap();
    assert_eq!(store.list("sub").unwrap(), vec!["sub/x"]);
    assert!(store.locate("sub/x").to_string_lossy().contains("memory:"));
}

#[test]
fn memory_faults_fill_the_disk_fail_names_and_damage_bytes() {
    let store = MemoryStorage::new();
    store.put("a", &[1u8; 60], PutMode::Create).unwrap();
    store.inject(Fault::Capacity(100));
    let full = store.put("b", &[2u8; 50], PutMode::Create).unwrap_err();
    assert_eq!(full.source.kind(), ErrorKind::StorageFull);
    assert!(
        !store.exists("b").unwrap(),
        "a failed put publishes nothing"
    );
    // Replacing a file frees its bytes.
    store.put("a", &[3u8; 90], PutMode::Overwrite).unwrap();
    // A streamed write fails at the write that fills the disk.
    store.delete("a").unwrap();
    let mut w = store.create("c", PutMode::Create).unwrap();
    w.write_all(&[0u8; 80]).unwrap();
    assert_eq!(
        w.write_all(&[0u8; 40]).unwrap_err().kind(),
        ErrorKind::StorageFull
    );
    drop(w);
    assert_eq!(store.used_bytes(), 0);
    store.heal();
    store.inject(Fault::FailWrites("seg".into(), ErrorKind::PermissionDenied));
    assert_eq!(
        store
            .put("seg-1", b"x", PutMode::Create)
            .unwrap_err()
            .source
            .kind(),
        ErrorKind::PermissionDenied
    );
    store.put("other", b"xyz", PutMode::Create).unwrap();
    assert!(store.damage("other", 1, 0xFF));
    assert_eq!(store.read("other").unwrap(), [b'x', !b'y', b'z']);
    assert!(store.truncate("other", 1));
    assert_eq!(store.read("other").unwrap(), b"x");
    assert!(!store.damage("other", 5, 1) && !store.damage("missing", 0, 1));
}

#[test]
fn write_streamed_commits() {
    let store = MemoryStorage::new();
    write_streamed(&store, "f", b"abc", PutMode::Create).unwrap();
    assert_eq!(store.read("f").unwrap(), b"abc");
}
