//! Tests of the write-ahead log.
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::format::*;
use super::record::*;
use super::replay::*;
use super::writer::*;
use super::*;
use crate::core::storage_error::StorageError;
use chamfer_index::tokens::Tokens;

fn upsert(id: &str) -> Vec<u8> {
    let t = [1.0f32, 2.0];
    encode_upsert([(id, 2usize, &t[..], &b"{\"a\":1}"[..])].into_iter())
}

/// Replays everything after `flushed`: (seq, op) pairs, or the error.
fn replay_all(dir: &Path, flushed: u64) -> Result<(Vec<(u64, WalOp)>, Replayed), StorageError> {
    let mut v = Vec::new();
    let r = replay(dir, flushed, ControlFile::MayLack, |s, op| {
        v.push((s, op));
        Ok(())
    })?;
    Ok((v, r))
}

fn seqs(v: &[(u64, WalOp)]) -> Vec<u64> {
    v.iter().map(|(s, _)| *s).collect()
}

/// A log of `n` records (seq 1..=n), one append each, in one file. Returns the file.
fn log_of(dir: &Path, n: u64) -> PathBuf {
    let mut w = WalWriter::create(dir, 1).unwrap();
    for seq in 1..=n {
        let b = upsert(&format!("d{seq}"));
        w.append(&[(seq, KIND_UPSERT, &b)]).unwrap();
    }
    list(dir).unwrap()[0].path.clone()
}

fn record_offset(path: &Path, index: usize) -> u64 {
    let bytes = fs::read(path).unwrap();
    let mut pos = HEADER_V2 as usize;
    for _ in 0..index {
        pos += 8 + u32_at(&bytes, pos) as usize;
    }
    pos as u64
}

#[test]
fn round_trips_and_continues_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = WalWriter::create(dir.path(), 1).unwrap();
    let (a, d) = (upsert("a"), encode_delete(&["a".into(), "b".into()]));
    w.append(&[(1, KIND_UPSERT, &a), (2, KIND_DELETE, &d)])
        .unwrap();
    drop(w);
    let (recs, r) = replay_all(dir.path(), 0).unwrap();
    assert_eq!((seqs(&recs), r.last_seq), (vec![1, 2], 2));
    match &recs[0].1 {
        WalOp::Upsert(docs) => assert_eq!(
            (docs[0].id.as_str(), &*docs[0].tokens.to_f32()),
            ("a", &[1.0, 2.0][..])
        ),
        other => panic!("{other:?}"),
    }
    let mut w = WalWriter::open(dir.path(), &r, &dir.path().join("q")).unwrap();
    w.append(&[(3, KIND_UPSERT, &a)]).unwrap();
    let (recs, _) = replay_all(dir.path(), 0).unwrap();
    assert_eq!(seqs(&recs), vec![1, 2, 3]);
    // Records at or before the flushed sequence are not replayed.
    assert_eq!(seqs(&replay_all(dir.path(), 2).unwrap().0), vec![3]);
}

#[test]
fn a_torn_tail_is_saved_aside_and_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_of(dir.path(), 3);
    // An append that never completed: half a record after the last valid one.
    let end = record_offset(&path, 3);
    let partial = &upsert("torn")[..10];
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[40, 0, 0, 0, 1, 2, 3, 4], end).unwrap();
    f.write_all_at(partial, end + 8).unwrap();
    let (recs, r) = replay_all(dir.path(), 0).unwrap();
    assert_eq!(seqs(&recs), vec![1, 2, 3]);
    let q = dir.path().join("quarantine");
    let mut w = WalWriter::open(dir.path(), &r, &q).unwrap();
    let saved: Vec<_> = fs::read_dir(&q).unwrap().flatten().collect();
    assert_eq!(saved.len(), 1, "the torn bytes are kept as evidence");
    assert_eq!(fs::read(saved[0].path()).unwrap().len(), 18);
    let b = upsert("next");
    w.append(&[(4, KIND_UPSERT, &b)]).unwrap();
    assert_eq!(
        seqs(&replay_all(dir.path(), 0).unwrap().0),
        vec![1, 2, 3, 4]
    );
}

#[test]
fn damage_followed_by_valid_records_is_refused_and_nothing_is_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_of(dir.path(), 5);
    let at = record_offset(&path, 1) + 20;
    let mut bytes = fs::read(&path).unwrap();
    bytes[at as usize] ^= 0x40;
    fs::write(&path, &bytes).unwrap();
    let e = replay_all(dir.path(), 0).err().expect("refused");
    let msg = e.to_string();
    assert!(matches!(e, StorageError::Damaged { .. }), "{msg}");
    assert!(msg.contains("followed by a valid record"), "{msg}");
    assert_eq!(
        fs::read(&path).unwrap(),
        bytes,
        "evidence is never truncated"
    );
    // The same flip in the length field of a middle record.
    let dir = tempfile::tempdir().unwrap();
    let path = log_of(dir.path(), 5);
    let at = record_offset(&path, 2);
    let mut bytes = fs::read(&path).unwrap();
    bytes[at as usize + 1] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    assert!(replay_all(dir.path(), 0).is_err());
}

#[test]
fn a_truncated_or_missing_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_of(dir.path(), 4);
    let end = record_offset(&path, 2);
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(end)
        .unwrap();
    let e = replay_all(dir.path(), 0).err().expect("refused");
    assert!(e.to_string().contains("truncated"), "{e}");

    fs::remove_file(&path).unwrap();
    let e = replay_all(dir.path(), 0).err().expect("refused");
    assert!(e.to_string().contains("no write-ahead log"), "{e}");
}

/// Three files: seq 1-2 | 3-4 | 5-6 (two records each, one append per record), control at 6.
fn three_files(dir: &Path) -> Vec<WalFile> {
    let mut w = WalWriter::create(dir, 1).unwrap();
    let a = upsert("a");
    for seq in 1..=6 {
        w.append(&[(seq, KIND_UPSERT, &a)]).unwrap();
        if seq % 2 == 0 && seq < 6 {
            w.rotate(seq + 1).unwrap();
        }
    }
    let files = list(dir).unwrap();
    assert_eq!(files.len(), 3);
    files
}

/// Issue 21, item 1: a file emptied (`truncate -s 0`) or with its records zeroed (header kept) is refused
/// wherever it sits in the chain (first, middle, newest), with or without a flush before it, whenever it
/// held a record after the flushed sequence; nothing is changed by the refusal.
#[test]
fn a_wiped_log_file_is_refused_at_every_position() {
    type Wipe = fn(&Path);
    let wipes: [(&str, Wipe); 2] = [
        ("truncated to 0 bytes", |p| {
            OpenOptions::new()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(0)
                .unwrap()
        }),
        ("records zeroed", |p| {
            let mut b = fs::read(p).unwrap();
            b[HEADER_V2 as usize..].fill(0);
            fs::write(p, b).unwrap();
        }),
    ];
    for (how, wipe) in wipes {
        for position in 0..3 {
            // flushed 0: nothing flushed; 2: the first file's records are in shards (a flush whose
            // obsolete log file was not removed yet); the newest file's records are never flushed here.
            for flushed in [0u64, 2] {
                let dir = tempfile::tempdir().unwrap();
                let files = three_files(dir.path());
                wipe(&files[position].path);
                let before: Vec<Vec<u8>> =
                    files.iter().map(|f| fs::read(&f.path).unwrap()).collect();
                let got = replay_all(dir.path(), flushed);
                let lost = position > 0 || flushed < 2;
                let case = format!("{how}, file {position}, flushed {flushed}");
                match (lost, got) {
                    (true, Ok((recs, _))) => {
                        panic!(
                            "{case}: opened with {:?}: acknowledged records lost",
                            seqs(&recs)
                        )
                    }
                    (true, Err(e)) => {
                        let e = e.to_string();
                        assert!(
                            e.contains(&file_name(files[position].first_seq))
                                || e.contains(&file_name(
                                    files[position.saturating_sub(1)].first_seq
                                ))
                                || e.contains(&file_name(files[2].first_seq)),
                            "{case}: {e}"
                        );
                    }
                    // Only records already in shards were wiped, so nothing acknowledged is lost: a zeroed
                    // file still has its header and opens; an emptied closed file has none and is refused.
                    (false, Ok((recs, r))) => {
                        assert_eq!(
                            how, "records zeroed",
                            "{case}: a headerless closed file opened"
                        );
                        assert_eq!((seqs(&recs), r.last_seq), (vec![3, 4, 5, 6], 6), "{case}")
                    }
                    (false, Err(e)) => {
                        let e = e.to_string();
                        assert!(
                            how == "truncated to 0 bytes" && e.contains("without a header"),
                            "{case}: {e}"
                        );
                    }
                }
                let after: Vec<Vec<u8>> =
                    files.iter().map(|f| fs::read(&f.path).unwrap()).collect();
                assert!(before == after, "{case}: the refusal changed nothing");
            }
        }
    }
    // The newest (only) file of a log whose earlier files were removed after a flush, wiped: refused with the
    // control file's evidence, naming how many acknowledged records are missing.
    let dir = tempfile::tempdir().unwrap();
    let files = three_files(dir.path());
    for f in &files[..2] {
        fs::remove_file(&f.path).unwrap();
    }
    OpenOptions::new()
        .write(true)
        .open(&files[2].path)
        .unwrap()
        .set_len(0)
        .unwrap();
    let e = replay_all(dir.path(), 4)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("ends at sequence 4")
            && e.contains("up to sequence 6")
            && e.contains("2 acknowledged"),
        "{e}"
    );
}

/// Issue 21, item 2: a damaged LAST record that was acknowledged is refused (the control file says so), not
/// dropped as a torn append; a torn append that was never acknowledged still opens (and its bytes are kept).
#[test]
fn an_acknowledged_last_record_that_is_damaged_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_of(dir.path(), 3);
    let last = record_offset(&path, 2);
    let mut b = fs::read(&path).unwrap();
    b[last as usize + 20] ^= 0x01;
    fs::write(&path, &b).unwrap();
    let e = replay_all(dir.path(), 0)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("up to sequence 3") && e.contains("ends at sequence 2"),
        "{e}"
    );
    // The same bytes without the control's evidence (a log from before control files): opened as a torn
    // tail, the record's bytes saved aside.
    fs::remove_file(control::path(dir.path())).unwrap();
    let (recs, r) = replay_all(dir.path(), 0).unwrap();
    assert_eq!((seqs(&recs), r.acked), (vec![1, 2], None));
    // ...but a manifest that says the log has a control file refuses the missing file.
    let e = replay(dir.path(), 0, ControlFile::Required, |_, _| Ok(()))
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("control file is missing"), "{e}");
}

/// The control file never runs ahead of the log: an append whose records were written but whose control
/// write never happened (a crash between the two) opens with those records, and the control catches up.
#[test]
fn the_control_file_follows_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = WalWriter::create(dir.path(), 1).unwrap();
    assert_eq!(control::read(dir.path()).unwrap(), Some(0));
    let a = upsert("a");
    w.append(&[(1, KIND_UPSERT, &a), (2, KIND_UPSERT, &a)])
        .unwrap();
    assert_eq!(control::read(dir.path()).unwrap(), Some(2));
    // A crash after the log's fsync, before the control's: the log is ahead, which is fine.
    write_records(&w.file, &[(3, KIND_UPSERT, &a)]).unwrap();
    drop(w);
    let (recs, r) = replay_all(dir.path(), 0).unwrap();
    assert_eq!((seqs(&recs), r.acked), (vec![1, 2, 3], Some(2)));
    let w = WalWriter::open(dir.path(), &r, &dir.path().join("q")).unwrap();
    assert_eq!(w.control.acked_seq(), 3);
    assert_eq!(control::read(dir.path()).unwrap(), Some(3));
}

#[test]
fn rotation_seals_and_a_broken_chain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = WalWriter::create(dir.path(), 1).unwrap();
    let a = upsert("a");
    assert!(
        w.rotate(1).unwrap().is_empty(),
        "an empty file is not rotated"
    );
    w.append(&[(1, KIND_UPSERT, &a)]).unwrap();
    let closed = w.rotate(2).unwrap();
    assert_eq!(closed.len(), 1);
    w.append(&[(2, KIND_UPSERT, &a)]).unwrap();
    w.rotate(3).unwrap();
    w.append(&[(3, KIND_UPSERT, &a)]).unwrap();
    let files = list(dir.path()).unwrap();
    assert_eq!(
        files.iter().map(|f| f.first_seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(seqs(&replay_all(dir.path(), 0).unwrap().0), vec![1, 2, 3]);
    // Removing files the manifest made obsolete is fine...
    w.remove(&closed).unwrap();
    assert_eq!(seqs(&replay_all(dir.path(), 1).unwrap().0), vec![2, 3]);
    // ...but not when their records were never flushed.
    assert!(replay_all(dir.path(), 0).is_err());
    // The newest file deleted: its sealed predecessor names it.
    fs::remove_file(&files[2].path).unwrap();
    let e = replay_all(dir.path(), 1).err().expect("refused");
    assert!(e.to_string().contains("is missing"), "{e}");
}

#[test]
fn a_middle_file_missing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = WalWriter::create(dir.path(), 1).unwrap();
    let a = upsert("a");
    for seq in 1..=3 {
        w.append(&[(seq, KIND_UPSERT, &a)]).unwrap();
        w.rotate(seq + 1).unwrap();
    }
    fs::remove_file(&list(dir.path()).unwrap()[1].path).unwrap();
    let e = replay_all(dir.path(), 0).err().expect("refused");
    assert!(e.to_string().contains("chain is broken"), "{e}");
}

#[test]
fn a_group_larger_than_the_file_gets_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = WalWriter::create(dir.path(), 1).unwrap();
    let small = upsert("a");
    w.append(&[(1, KIND_UPSERT, &small)]).unwrap();
    let big = vec![0u8; FILE_CAPACITY as usize];
    let ids = encode_delete(&[String::from_utf8(vec![b'x'; 8]).unwrap()]);
    // A body that decodes: a delete with one long id.
    let mut long = Vec::new();
    long.extend_from_slice(&1u32.to_le_bytes());
    long.extend_from_slice(&(big.len() as u32).to_le_bytes());
    long.extend_from_slice(&big);
    w.append(&[(2, KIND_DELETE, &long), (3, KIND_DELETE, &ids)])
        .unwrap();
    let files = list(dir.path()).unwrap();
    assert_eq!(files.len(), 2);
    let (recs, r) = replay_all(dir.path(), 0).unwrap();
    assert_eq!((seqs(&recs), r.last_seq), (vec![1, 2, 3], 3));
}

#[test]
fn a_crash_between_creating_a_file_and_sealing_the_old_one_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_of(dir.path(), 2);
    let (file, _, _) = create(dir.path(), 3, FILE_CAPACITY).unwrap();
    drop(file);
    let (recs, r) = replay_all(dir.path(), 0).unwrap();
    assert_eq!((seqs(&recs), r.last_seq), (vec![1, 2], 2));
    let mut w = WalWriter::open(dir.path(), &r, &dir.path().join("q")).unwrap();
    w.append(&[(3, KIND_UPSERT, &upsert("c"))]).unwrap();
    assert_eq!(seqs(&replay_all(dir.path(), 0).unwrap().0), vec![1, 2, 3]);
    assert!(path.exists());
}

/// f16-exact batches are logged as f16 (half the token bytes) and replay to the same f32 values; a batch with
/// one value that is not an f16 stays f32; both kinds replay in one log, and a version-2 file (written before
/// kind 4 existed) still replays and is continued.
#[test]
fn f16_exact_batches_are_logged_as_f16_and_replay_losslessly() {
    let tiny = half::f16::from_f32(3.0e-5).to_f32(); // an f16 subnormal
    let halves = [0.5f32, -1.25, tiny, -0.0, 65504.0, 1.0 / 1024.0];
    let docs = [
        ("h", 3usize, &halves[..], &b""[..]),
        ("m", 3, &halves[..3], &b"{}"[..]),
    ];
    let f32_tokens = |v: &[f32]| Tokens::from_f32(v.to_vec(), 3, "document").unwrap();
    let f16_tokens = |v: &[f32]| {
        Tokens::from_f16(
            v.iter().map(|&x| half::f16::from_f32(x)).collect(),
            3,
            "document",
        )
        .unwrap()
    };
    let typed = [f32_tokens(&halves), f32_tokens(&halves[..3])];
    let (kind, body) = encode_upsert_tokens(docs.iter().zip(&typed).map(|(d, t)| (d.0, t, d.3)));
    let (_, wide) = (KIND_UPSERT, encode_upsert(docs.into_iter()));
    // The client's f16 bits give the same record, copied as they are.
    let halved = [f16_tokens(&halves), f16_tokens(&halves[..3])];
    let (kind_h, body_h) =
        encode_upsert_tokens(docs.iter().zip(&halved).map(|(d, t)| (d.0, t, d.3)));
    assert_eq!((kind_h, &body_h), (kind, &body));
    assert_eq!(kind, KIND_UPSERT_F16);
    assert_eq!(wide.len() - body.len(), 9 * 2, "two bytes saved per value");
    let WalOp::Upsert(back) = decode(kind, &body).unwrap() else {
        panic!("not an upsert")
    };
    assert!(matches!(back[0].tokens, WalTokens::F16(_)));
    assert_eq!(back[0].tokens.to_f32(), halves.to_vec());
    assert_eq!(back[1].tokens.to_f32(), halves[..3].to_vec());
    assert_eq!(back[1].metadata, b"{}".to_vec());
    // The f32 record of the same batch decodes to the same values.
    let WalOp::Upsert(wide_back) = decode(KIND_UPSERT, &wide).unwrap() else {
        panic!("not an upsert")
    };
    for (a, b) in wide_back.iter().zip(&back) {
        assert!(matches!(a.tokens, WalTokens::F32(_)));
        assert_eq!((&a.id, a.tokens.to_f32()), (&b.id, b.tokens.to_f32()));
    }
    // One value off the f16 grid keeps the whole batch f32.
    let off = [0.5f32, 0.1, 2.0];
    let mixed = [("h", f16_tokens(&halves[..3])), ("o", f32_tokens(&off))];
    let (kind2, body2) = encode_upsert_tokens(mixed.iter().map(|(id, t)| (*id, t, &b""[..])));
    assert_eq!(kind2, KIND_UPSERT);
    let WalOp::Upsert(back2) = decode(kind2, &body2).unwrap() else {
        panic!("not an upsert")
    };
    assert_eq!(back2[0].tokens, WalTokens::F32(halves[..3].to_vec()));
    assert_eq!(back2[1].tokens, WalTokens::F32(off.to_vec()));
    // Truncated f16 bodies are refused like f32 ones.
    assert!(decode(KIND_UPSERT_F16, &body[..body.len() - 3]).is_err());

    // A version-2 file (the same header but version 2), then this build's records.
    let dir = tempfile::tempdir().unwrap();
    let mut w = WalWriter::create(dir.path(), 1).unwrap();
    w.append(&[(1, KIND_UPSERT, &upsert("v2"))]).unwrap();
    drop(w);
    let path = dir.path().join(file_name(1));
    let mut bytes = fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&VERSION_2.to_le_bytes());
    fs::write(&path, reseal(&bytes)).unwrap();
    let (recs, r) = replay_all(dir.path(), 0).unwrap();
    assert_eq!(seqs(&recs), vec![1]);
    let mut w = WalWriter::open(dir.path(), &r, &dir.path().join("q")).unwrap();
    w.append(&[(2, kind, &body), (3, kind2, &body2)]).unwrap();
    drop(w);
    let (recs, _) = replay_all(dir.path(), 0).unwrap();
    assert_eq!(seqs(&recs), vec![1, 2, 3]);
    assert_eq!(recs[1].1, WalOp::Upsert(back));
    assert_eq!(recs[2].1, WalOp::Upsert(back2));
    // A version this build does not know is refused by its version.
    let mut future = fs::read(&path).unwrap();
    future[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
    let c = crc32fast::hash(&future[..32]);
    future[32..36].copy_from_slice(&c.to_le_bytes());
    fs::write(&path, &future).unwrap();
    assert!(matches!(
        replay_all(dir.path(), 0),
        Err(StorageError::Version { .. })
    ));
}

#[test]
fn reads_version_1_logs_and_continues_in_version_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file_name(1));
    let mut bytes = Vec::new();
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION_1.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    for seq in 1..=2u64 {
        let body = upsert(&format!("v1-{seq}"));
        bytes.extend_from_slice(&record_head(seq, KIND_UPSERT, &body));
        bytes.extend_from_slice(&body);
    }
    bytes.extend_from_slice(&[7, 7, 7]); // a torn tail
    fs::write(&path, &bytes).unwrap();
    let (recs, r) = replay_all(dir.path(), 0).unwrap();
    assert_eq!(seqs(&recs), vec![1, 2]);
    let mut w = WalWriter::open(dir.path(), &r, &dir.path().join("q")).unwrap();
    w.append(&[(3, KIND_UPSERT, &upsert("v2"))]).unwrap();
    assert_eq!(list(dir.path()).unwrap().len(), 2);
    assert_eq!(fs::metadata(&path).unwrap().len() as usize, bytes.len() - 3);
    assert_eq!(seqs(&replay_all(dir.path(), 0).unwrap().0), vec![1, 2, 3]);
}

#[test]
fn a_failed_append_is_rolled_back_to_the_zero_fill() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = WalWriter::create(dir.path(), 1).unwrap();
    w.append(&[(1, KIND_UPSERT, &upsert("a"))]).unwrap();
    // What a failed group commit may leave behind: complete, valid records past the valid length.
    let ghost = upsert("ghost");
    let mut bytes = record_head(2, KIND_UPSERT, &ghost).to_vec();
    bytes.extend_from_slice(&ghost);
    w.file.write_all_at(&bytes, w.len).unwrap();
    assert_eq!(seqs(&replay_all(dir.path(), 0).unwrap().0), vec![1, 2]);
    w.roll_back().unwrap();
    assert_eq!(seqs(&replay_all(dir.path(), 0).unwrap().0), vec![1]);
    // The next append lands where the ghost was.
    w.append(&[(2, KIND_UPSERT, &upsert("b"))]).unwrap();
    assert_eq!(seqs(&replay_all(dir.path(), 0).unwrap().0), vec![1, 2]);
}

#[test]
fn decode_never_panics_on_short_or_lying_bodies() {
    for body in [
        &[][..],
        &[1, 0, 0, 0],
        &[255, 255, 255, 255, 1, 0, 0, 0, b'a'],
        &[1, 0, 0, 0, 1, 0, 0, 0],
    ] {
        for kind in [KIND_UPSERT, KIND_DELETE, 9] {
            assert!(decode(kind, body).is_err());
        }
    }
}
