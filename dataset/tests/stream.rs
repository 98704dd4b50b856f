//! The streamed generator (`generate_to_dir`) against the in-memory one, `--max-doc-tokens` truncation, and
//! `DocStream` / `Dataset::open_without_doc_tokens` / `DocTexts` against `Dataset::open`, including bad folders.
use std::fs;
use std::path::{Path, PathBuf};

use chamfer_data::dataset::{write_npy, Dataset, DatasetWriter, DocStream, DocTexts};
use chamfer_data::synth::{
    exact_ground_truth, exact_ground_truth_stream, generate, generate_to_dir, SynthCorpus,
    SynthParams,
};
use chamfer_data::DataError;

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("data/demo")
}

fn write_corpus(c: &SynthCorpus, dir: &Path) {
    DatasetWriter {
        dim: c.dim,
        doc_ids: &c.doc_ids,
        doc_tokens: &c.doc_tokens,
        doc_offsets: &c.doc_offsets,
        query_ids: &c.query_ids,
        query_tokens: &c.query_tokens,
        query_offsets: &c.query_offsets,
        gt: Some((&c.gt_ids, &c.gt_scores, c.gt_k)),
        qrels: &c.qrels,
    }
    .write(dir)
    .unwrap();
}

const FILES: [&str; 9] = [
    "doc_tokens.npy",
    "doc_offsets.npy",
    "doc_ids.txt",
    "query_tokens.npy",
    "query_offsets.npy",
    "query_ids.txt",
    "gt_chamfer_ids.npy",
    "gt_chamfer_scores.npy",
    "qrels.tsv",
];

/// Every document of `ds` read through `stream`, one at a time and in runs, equals `Dataset::doc_tokens`.
fn assert_stream_matches(ds: &Dataset, stream: &DocStream) {
    assert_eq!(stream.len(), ds.n_docs());
    assert!(!stream.is_empty());
    assert_eq!(stream.dim(), ds.dim());
    assert_eq!(stream.n_tokens(), ds.n_doc_tokens());
    let mut all = Vec::new();
    for i in 0..ds.n_docs() {
        assert_eq!(stream.id(i), ds.doc_id(i));
        assert_eq!(stream.doc_len(i), ds.doc_len(i));
        let mut v = vec![7.0];
        stream.read_doc(i, &mut v).unwrap();
        assert_eq!(v[0], 7.0, "read_doc appends");
        assert_eq!(&v[1..], ds.doc_tokens(i), "document {i}");
        all.extend_from_slice(ds.doc_tokens(i));
    }
    let n = ds.n_docs();
    for r in [0..n, 0..1, 1..n.min(40), n / 2..n, n..n, 3..3] {
        let mut v = Vec::new();
        stream.read_range(r.clone(), &mut v).unwrap();
        let dim = ds.dim();
        let (a, b) = (
            (0..r.start).map(|i| ds.doc_len(i)).sum::<usize>(),
            (0..r.end).map(|i| ds.doc_len(i)).sum::<usize>(),
        );
        assert_eq!(v, all[a * dim..b * dim], "range {r:?}");
    }
}

#[test]
fn streamed_generation_writes_what_generate_writes() {
    let like = Dataset::open(&demo()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (case, max) in [None, Some(40)].into_iter().enumerate() {
        let p = SynthParams {
            max_doc_tokens: max,
            // Small chunks, not a divisor of the document count: the ground truth is merged across 8 chunks.
            chunk_docs: 64,
            ..SynthParams::new(500, 5, 7)
        };
        let corpus = generate(&like, &p, &|_, _, _| {}).unwrap();
        let mem = tmp.path().join(format!("mem{case}"));
        write_corpus(&corpus, &mem);
        let streamed = tmp.path().join(format!("stream{case}"));
        let summary = generate_to_dir(&like, &p, &streamed, &|_, _, _| {}).unwrap();
        assert_eq!(
            (summary.docs, summary.queries, summary.gt_k, summary.dim),
            (500, 5, 100, 128)
        );
        assert_eq!(summary.doc_tokens, corpus.doc_offsets[500]);
        for f in FILES {
            assert!(
                fs::read(mem.join(f)).unwrap() == fs::read(streamed.join(f)).unwrap(),
                "{f} differs (max_doc_tokens {max:?})"
            );
        }
        assert!(!streamed.join("doc_tokens.npy.tmp").exists());
        assert!(!streamed.join("doc_tokens.npy.staged").exists());
        let readme = fs::read_to_string(streamed.join("README.md")).unwrap();
        assert!(
            readme.contains("--docs 500 --queries 5 --seed 7"),
            "{readme}"
        );
        assert_eq!(readme.contains("--max-doc-tokens 40"), max.is_some());
        // The written folder opens, and its ground truth is the in-memory exact top list.
        let ds = Dataset::open(&streamed).unwrap();
        assert_eq!((ds.n_docs(), ds.n_queries()), (500, 5));
        let (ids, scores, k) = exact_ground_truth(
            &corpus.doc_tokens,
            &corpus.doc_offsets,
            &corpus.query_tokens,
            &corpus.query_offsets,
            128,
            100,
            &|_, _| {},
        );
        assert_eq!(k, 100);
        for j in 0..5 {
            assert_eq!(ds.gt_ids(j).unwrap(), &ids[j * k..(j + 1) * k]);
            assert_eq!(ds.gt_scores(j).unwrap(), &scores[j * k..(j + 1) * k]);
        }
        assert_stream_matches(&ds, &DocStream::open(&streamed).unwrap());
    }
}

#[test]
fn streamed_ground_truth_is_independent_of_the_chunk_size() {
    let like = Dataset::open(&demo()).unwrap();
    let p = SynthParams::new(150, 4, 5);
    let corpus = generate(&like, &p, &|_, _, _| {}).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    write_corpus(&corpus, tmp.path());
    let docs = DocStream::open(tmp.path()).unwrap();
    for k in [1, 10, 150, 400] {
        let want = exact_ground_truth(
            &corpus.doc_tokens,
            &corpus.doc_offsets,
            &corpus.query_tokens,
            &corpus.query_offsets,
            128,
            k,
            &|_, _| {},
        );
        for chunk in [1, 7, 150, 10_000] {
            let got = exact_ground_truth_stream(
                &docs,
                &corpus.query_tokens,
                &corpus.query_offsets,
                k,
                chunk,
                &|_, _| {},
            )
            .unwrap();
            assert_eq!(got, want, "k {k}, chunk {chunk}");
        }
    }
}

#[test]
fn max_doc_tokens_keeps_the_first_tokens_and_the_queries() {
    let like = Dataset::open(&demo()).unwrap();
    let full = generate(&like, &SynthParams::new(300, 6, 3), &|_, _, _| {}).unwrap();
    let p = SynthParams {
        max_doc_tokens: Some(50),
        ..SynthParams::new(300, 6, 3)
    };
    let cut = generate(&like, &p, &|_, _, _| {}).unwrap();
    let len = |c: &SynthCorpus, i: usize| c.doc_offsets[i + 1] - c.doc_offsets[i];
    let (mut at_max, mut shorter) = (0, 0);
    for i in 0..300 {
        let n = len(&cut, i);
        assert!(n <= 50, "document {i} has {n} tokens");
        assert_eq!(n, len(&full, i).min(50));
        at_max += usize::from(n == 50);
        shorter += usize::from(len(&full, i) < 50);
        let (a, b) = (full.doc_offsets[i] * 128, cut.doc_offsets[i] * 128);
        assert_eq!(
            &cut.doc_tokens[b..b + n * 128],
            &full.doc_tokens[a..a + n * 128]
        );
    }
    assert!(
        at_max > 200 && shorter > 0,
        "{at_max} cut, {shorter} shorter"
    );
    assert_eq!(cut.query_tokens, full.query_tokens);
    assert_eq!(cut.query_offsets, full.query_offsets);
    assert_eq!(cut.qrels, full.qrels);
    // Bad settings are errors that name the setting.
    for (p, name) in [
        (
            SynthParams {
                max_doc_tokens: Some(0),
                ..SynthParams::new(10, 1, 1)
            },
            "max_doc_tokens",
        ),
        (
            SynthParams {
                chunk_docs: 0,
                ..SynthParams::new(10, 1, 1)
            },
            "chunk_docs",
        ),
        (SynthParams::new(0, 1, 1), "docs"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        for e in [
            generate(&like, &p, &|_, _, _| {}).err().unwrap(),
            generate_to_dir(&like, &p, tmp.path(), &|_, _, _| {})
                .err()
                .unwrap(),
        ] {
            assert!(
                matches!(&e, DataError::InvalidParam { name: n, .. } if *n == name),
                "{e}"
            );
        }
    }
}

#[test]
fn doc_stream_reads_the_demo_set_and_open_without_doc_tokens_keeps_the_rest() {
    let ds = Dataset::open(&demo()).unwrap();
    assert!(ds.has_doc_tokens());
    assert_stream_matches(&ds, &DocStream::open(&demo()).unwrap());
    let light = Dataset::open_without_doc_tokens(&demo()).unwrap();
    assert!(!light.has_doc_tokens());
    assert_eq!(
        (
            light.n_docs(),
            light.dim(),
            light.n_doc_tokens(),
            light.n_queries()
        ),
        (ds.n_docs(), ds.dim(), ds.n_doc_tokens(), ds.n_queries())
    );
    assert!(light.doc_tokens(0).is_empty() && light.all_doc_tokens().is_empty());
    for i in 0..ds.n_docs() {
        assert_eq!(light.doc_id(i), ds.doc_id(i));
        assert_eq!(light.doc_len(i), ds.doc_len(i));
        assert_eq!(light.doc_text(i), ds.doc_text(i));
    }
    for j in 0..ds.n_queries() {
        assert_eq!(light.query_tokens(j), ds.query_tokens(j));
        assert_eq!(light.gt_ids(j), ds.gt_ids(j));
        assert_eq!(light.gt_scores(j), ds.gt_scores(j));
        assert_eq!(light.qrels(j), ds.qrels(j));
    }
    // The template of the generator needs its tokens.
    let e = generate(&light, &SynthParams::new(10, 1, 1), &|_, _, _| {})
        .err()
        .unwrap();
    assert!(
        matches!(e, DataError::InvalidParam { name: "like", .. }),
        "{e}"
    );
}

/// A hand-written folder: `tokens` (f32 little-endian bytes with dtype `descr`, shape `shape`), offsets, ids.
fn folder(dir: &Path, descr: &str, shape: &[usize], tokens: &[u8], offsets: &[i64], ids: &str) {
    fs::create_dir_all(dir).unwrap();
    write_npy(&dir.join("doc_tokens.npy"), descr, shape, tokens).unwrap();
    let b: Vec<u8> = offsets.iter().flat_map(|x| x.to_le_bytes()).collect();
    write_npy(&dir.join("doc_offsets.npy"), "<i8", &[offsets.len()], &b).unwrap();
    fs::write(dir.join("doc_ids.txt"), ids).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn doc_stream_reads_float32_and_refuses_bad_folders() {
    let tmp = tempfile::tempdir().unwrap();
    // 3 documents of 2, 1 and 3 tokens, dimension 4, float32 (values not representable in f16 survive).
    let vals: Vec<f32> = (0..24).map(|x| x as f32 * 0.1234567 - 1.0).collect();
    let good = tmp.path().join("f32");
    folder(
        &good,
        "<f4",
        &[6, 4],
        &f32_bytes(&vals),
        &[0, 2, 3, 6],
        "a\nb\nc\n",
    );
    let ds = Dataset::open(&good).unwrap();
    let s = DocStream::open(&good).unwrap();
    assert_stream_matches(&ds, &s);
    let mut v = Vec::new();
    s.read_range(0..3, &mut v).unwrap();
    assert_eq!(v, vals);
    // Out of range or reversed ranges are errors, and leave `out` as it was.
    let mut v = vec![1.0];
    assert!(s.read_doc(3, &mut v).is_err());
    assert!(s.read_range(2..4, &mut v).is_err());
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = 2..1;
    assert!(s.read_range(reversed, &mut v).is_err());
    assert_eq!(v, [1.0]);

    let err = |dir: &Path| -> String {
        let a = DocStream::open(dir).expect_err("DocStream::open must fail");
        let b =
            Dataset::open_without_doc_tokens(dir).expect_err("open_without_doc_tokens must fail");
        assert_eq!(a.to_string(), b.to_string());
        a.to_string()
    };
    assert!(err(&tmp.path().join("missing")).contains("not a directory"));
    let case = |name: &str| tmp.path().join(name);
    fs::create_dir_all(case("empty")).unwrap();
    assert!(err(&case("empty")).contains("doc_tokens.npy"));
    // Offsets that do not end at the token rows.
    folder(
        &case("rows"),
        "<f4",
        &[6, 4],
        &f32_bytes(&vals),
        &[0, 2, 3, 5],
        "a\nb\nc\n",
    );
    assert!(err(&case("rows")).contains("end at 6"));
    // A 1-d token array.
    folder(
        &case("1d"),
        "<f4",
        &[24],
        &f32_bytes(&vals),
        &[0, 2, 3, 6],
        "a\nb\nc\n",
    );
    assert!(err(&case("1d")).contains("2-d"));
    // A header announcing more data than the file holds.
    folder(
        &case("short"),
        "<f4",
        &[7, 4],
        &f32_bytes(&vals),
        &[0, 2, 3, 7],
        "a\nb\nc\n",
    );
    assert!(err(&case("short")).contains("needs"));
    // Integer tokens.
    folder(
        &case("int"),
        "<i4",
        &[6, 4],
        &f32_bytes(&vals),
        &[0, 2, 3, 6],
        "a\nb\nc\n",
    );
    assert!(err(&case("int")).contains("float"));
    // Ids that do not match the documents.
    folder(
        &case("ids"),
        "<f4",
        &[6, 4],
        &f32_bytes(&vals),
        &[0, 2, 3, 6],
        "a\nb\n",
    );
    assert!(err(&case("ids")).contains("2 ids for 3 items"));
    // A non-finite value: the folder opens without reading tokens, the read that meets it fails.
    let mut bad = vals.clone();
    bad[13] = f32::NAN;
    folder(
        &case("nan"),
        "<f4",
        &[6, 4],
        &f32_bytes(&bad),
        &[0, 2, 3, 6],
        "a\nb\nc\n",
    );
    let s = DocStream::open(&case("nan")).unwrap();
    let mut v = Vec::new();
    s.read_doc(0, &mut v).unwrap();
    let e = s.read_doc(2, &mut v).err().unwrap().to_string();
    assert!(e.contains("row 3, column 1"), "{e}");
    assert_eq!(v.len(), 8);
    assert!(Dataset::open(&case("nan")).is_err());
    // A file truncated after it was opened: the read is an I/O error, not a panic.
    let s = DocStream::open(&good).unwrap();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(good.join("doc_tokens.npy"))
        .unwrap();
    f.set_len(128 + 40).unwrap();
    assert!(s.read_doc(0, &mut Vec::new()).is_ok());
    assert!(matches!(
        s.read_doc(2, &mut Vec::new()),
        Err(DataError::Io { .. })
    ));
}

#[test]
fn read_range_f16_gives_the_files_own_values_and_open_for_queries_leaves_the_documents() {
    let ds = Dataset::open(&demo()).unwrap();
    let s = DocStream::open(&demo()).unwrap();
    assert!(s.is_f16());
    assert_eq!(s.ids().len(), ds.n_docs());
    let n = ds.n_docs();
    for r in [0..n, 0..1, 7..40, n..n] {
        let mut halves = vec![half::f16::ONE];
        s.read_range_f16(r.clone(), &mut halves).unwrap();
        assert_eq!(halves[0], half::f16::ONE, "appends");
        let mut floats = Vec::new();
        s.read_range(r.clone(), &mut floats).unwrap();
        // The f32 read is the exact conversion of the same bits.
        let got: Vec<u32> = halves[1..].iter().map(|h| h.to_f32().to_bits()).collect();
        let want: Vec<u32> = floats.iter().map(|x| x.to_bits()).collect();
        assert_eq!(got, want, "range {r:?}");
    }
    let mut v = vec![half::f16::ZERO];
    assert!(s.read_range_f16(n - 1..n + 1, &mut v).is_err());
    assert_eq!(v.len(), 1);

    // A float32 file is not read as f16; a non-finite f16 is an error naming its row, and `out` is unchanged.
    let tmp = tempfile::tempdir().unwrap();
    folder(
        &tmp.path().join("f32"),
        "<f4",
        &[2, 2],
        &f32_bytes(&[1.0, 2.0, 3.0, 4.0]),
        &[0, 1, 2],
        "a\nb\n",
    );
    let s32 = DocStream::open(&tmp.path().join("f32")).unwrap();
    assert!(!s32.is_f16());
    let e = s32.read_range_f16(0..1, &mut v).unwrap_err().to_string();
    assert!(e.contains("not float16"), "{e}");
    let bits: Vec<u8> = [1.0f32, 2.0, f32::INFINITY, 4.0]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes())
        .collect();
    folder(
        &tmp.path().join("inf"),
        "<f2",
        &[2, 2],
        &bits,
        &[0, 1, 2],
        "a\nb\n",
    );
    let s16 = DocStream::open(&tmp.path().join("inf")).unwrap();
    s16.read_range_f16(0..1, &mut v).unwrap();
    let e = s16.read_range_f16(0..2, &mut v).unwrap_err().to_string();
    assert!(e.contains("row 1, column 0"), "{e}");
    assert_eq!(v.len(), 3);

    // Queries, ground truth and ids without the document tokens or texts.
    let q = Dataset::open_for_queries(&demo()).unwrap();
    assert!(!q.has_doc_tokens());
    assert_eq!((q.n_docs(), q.n_queries()), (ds.n_docs(), ds.n_queries()));
    assert!((0..n).all(|i| q.doc_text(i).is_none() && q.doc_id(i) == ds.doc_id(i)));
    for j in 0..ds.n_queries() {
        assert_eq!(q.query_tokens(j), ds.query_tokens(j));
        assert_eq!(q.gt_ids(j), ds.gt_ids(j));
    }
}

#[test]
fn doc_texts_read_by_row_follow_the_rule_of_dataset_open() {
    // The demo set: every document's text, as Dataset::open has it.
    let ds = Dataset::open(&demo()).unwrap();
    let s = DocStream::open(&demo()).unwrap();
    let t = DocTexts::open(&demo(), s.ids()).unwrap().unwrap();
    for i in 0..ds.n_docs() {
        assert_eq!(
            t.text(i).unwrap().as_deref(),
            ds.doc_text(i),
            "document {i}"
        );
    }
    // Lines out of order, a later line for the same id, lines without a text or naming no document, an empty
    // text, blank lines: the same answers as Dataset::open.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bits: Vec<u8> = (0..4)
        .flat_map(|x| half::f16::from_f32(x as f32).to_bits().to_le_bytes())
        .collect();
    folder(dir, "<f2", &[4, 1], &bits, &[0, 1, 2, 3, 4], "a\nb\nc\nd\n");
    fs::write(
        dir.join("docs.jsonl"),
        "{\"id\": \"c\", \"text\": \"sea\"}\n\n{\"id\": \"a\", \"text\": \"first\"}\r\n\
         {\"id\": \"zz\", \"text\": \"nobody\"}\n{\"id\": \"b\"}\n{\"id\": \"a\", \"text\": \"ä later\"}\n\
         {\"id\": \"d\", \"text\": \"\"}",
    )
    .unwrap();
    let ds = Dataset::open(dir).unwrap();
    let s = DocStream::open(dir).unwrap();
    let t = DocTexts::open(dir, s.ids()).unwrap().unwrap();
    let got: Vec<Option<String>> = (0..4).map(|i| t.text(i).unwrap()).collect();
    assert_eq!(
        got,
        [Some("ä later".into()), None, Some("sea".into()), None]
    );
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.as_deref(), ds.doc_text(i));
    }
    // No docs.jsonl: no texts; a line that is not JSON: an error naming it.
    fs::write(
        dir.join("docs.jsonl"),
        "{\"id\": \"a\", \"text\": \"x\"}\nnot json\n",
    )
    .unwrap();
    let e = DocTexts::open(dir, s.ids()).unwrap_err().to_string();
    assert!(e.contains("docs.jsonl") && e.contains("line 2"), "{e}");
    fs::remove_file(dir.join("docs.jsonl")).unwrap();
    assert!(DocTexts::open(dir, s.ids()).unwrap().is_none());
}
