//! The write path carries its dtype: an f16 upsert is logged and stored from the client's f16 bits, widened to
//! f32 only one coding chunk at a time (counted by the collection's [`Widening`](collection::Widening)); f32
//! upserts round-trip through the log exactly.
use half::f16;

use super::input::{DocInput, Dtype, MetadataInput, TokenInput};
use super::tests::{open_core, tokens, DIM};
use super::upsert::CODE_CHUNK_DOCS;
use super::wal::{self, WalOp, WalTokens};
use super::*;

/// Document `i` as packed f16 (the client's bits returned beside it).
fn f16_doc(i: u64, n: usize) -> (DocInput, Vec<u16>) {
    let bits: Vec<u16> = tokens(i, n)
        .concat()
        .iter()
        .map(|&v| f16::from_f32(v).to_bits())
        .collect();
    let doc = DocInput {
        id: format!("h{i}"),
        tokens: TokenInput::Packed {
            dtype: Some(Dtype::F16),
            n_tokens: n,
            dim: DIM,
            bytes: bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
        },
        metadata: MetadataInput::None,
    };
    (doc, bits)
}

/// Document `i` as packed f32 values.
fn f32_doc(id: String, values: &[f32]) -> DocInput {
    DocInput {
        id,
        tokens: TokenInput::Packed {
            dtype: Some(Dtype::F32),
            n_tokens: values.len() / DIM,
            dim: DIM,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        },
        metadata: MetadataInput::None,
    }
}

/// Every upsert record of the collection's log: sequence number -> documents.
fn logged(core: &Core, name: &str) -> BTreeMap<u64, Vec<wal::WalDoc>> {
    let mut out = BTreeMap::new();
    for f in wal::list(&core.root().join(name).join("wal")).unwrap() {
        wal::read_file(&f.path, |seq, op| {
            if let WalOp::Upsert(docs) = op {
                out.insert(seq, docs);
            }
            Ok(())
        })
        .unwrap();
    }
    out
}

async fn create(core: &Core, name: &str) {
    let params = CollectionParamsInput {
        codebook_size: Some(16),
        ..Default::default()
    };
    core.create_collection(name.into(), DIM, params)
        .await
        .unwrap();
}

/// Stored tokens of `id` as f16 bits (the shard stores f16; `get` widens them for the answer).
async fn stored_bits(core: &Core, name: &str, id: &str) -> Vec<u16> {
    let got = core.get(name, vec![id.into()], true).await.unwrap();
    let values = got.documents[0].tokens.clone().unwrap();
    let bits: Vec<u16> = values.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
    // Every answered value is exactly the stored f16.
    for (v, b) in values.iter().zip(&bits) {
        assert_eq!(f16::from_bits(*b).to_f32().to_bits(), v.to_bits());
    }
    bits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f16_upserts_are_logged_and_stored_without_widening() {
    let dir = tempfile::tempdir().unwrap();
    let core = open_core(dir.path()).await;
    create(&core, "c").await;
    let c = core.collection("c").unwrap();

    // Before the first flush (no codebook): nothing is widened at all.
    let (first, first_bits): (Vec<_>, Vec<_>) =
        (0..40).map(|i| f16_doc(i, 3 + (i % 4) as usize)).unzip();
    let seq_a = core.upsert("c", first).await.unwrap().sequence;
    assert_eq!(c.widening().values(), 0);
    // The log holds the client's bits, as f16.
    let log = logged(&core, "c");
    for (i, d) in log[&seq_a].iter().enumerate() {
        let WalTokens::F16(t) = &d.tokens else {
            panic!("an f16 upsert was logged as f32")
        };
        assert_eq!(
            t.iter().map(|h| h.to_bits()).collect::<Vec<_>>(),
            first_bits[i]
        );
    }
    assert_eq!(stored_bits(&core, "c", "h7").await, first_bits[7]);

    // The flush trains the codebook; the next f16 batch is coded (widened one chunk at a time, never whole).
    core.flush("c").await.unwrap();
    assert!(c.codebook().is_some());
    let n_docs = 3 * CODE_CHUNK_DOCS as u64 + 5;
    let (batch, bits): (Vec<_>, Vec<_>) = (1000..1000 + n_docs).map(|i| f16_doc(i, 4)).unzip();
    let total: usize = bits.iter().map(Vec::len).sum();
    let seq_b = core.upsert("c", batch).await.unwrap().sequence;
    assert_eq!(
        c.widening().values(),
        total as u64,
        "each value widened once, for coding"
    );
    assert_eq!(c.widening().largest(), (CODE_CHUNK_DOCS * 4 * DIM) as u64);
    assert!((c.widening().largest() as usize) < total);
    let log = logged(&core, "c");
    for (d, want) in log[&seq_b].iter().zip(&bits) {
        let WalTokens::F16(t) = &d.tokens else {
            panic!("an f16 upsert was logged as f32")
        };
        assert_eq!(&t.iter().map(|h| h.to_bits()).collect::<Vec<_>>(), want);
    }
    assert_eq!(stored_bits(&core, "c", "h1100").await, bits[100]);
    // The coded f16 segment answers as the same batch sent as f32 does (the same bytes).
    create(&core, "w").await;
    core.upsert(
        "w",
        (0..40)
            .map(|i| f16_doc(i, 3 + (i % 4) as usize).0)
            .collect(),
    )
    .await
    .unwrap();
    core.flush("w").await.unwrap();
    let wide: Vec<DocInput> = (1000..1000 + n_docs)
        .map(|i| {
            let v: Vec<f32> = f16_doc(i, 4)
                .1
                .iter()
                .map(|&b| f16::from_bits(b).to_f32())
                .collect();
            f32_doc(format!("h{i}"), &v)
        })
        .collect();
    core.upsert("w", wide).await.unwrap();
    let q = SearchInput {
        query: TokenInput::Rows(tokens(77, 4)),
        k: 10,
        ef: None,
        candidates: None,
        rerank: None,
        prefix_repetitions: None,
        nprobe: None,
        exact: false,
        filter: None,
        with_metadata: false,
    };
    let (a, b) = (
        core.search("c", q.clone()).await.unwrap(),
        core.search("w", q).await.unwrap(),
    );
    assert_eq!(a, b);
    assert_eq!(a.len(), 10);
    core.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f32_upserts_round_trip_through_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let core = open_core(dir.path()).await;
    create(&core, "c").await;
    // Values off the f16 grid: logged as f32, exactly; stored (and answered) as their nearest f16.
    let off: Vec<f32> = tokens(5, 3).concat().iter().map(|v| v + 1e-4).collect();
    let seq = core
        .upsert("c", vec![f32_doc("o".into(), &off)])
        .await
        .unwrap()
        .sequence;
    // Values on the f16 grid: logged as f16 (lossless at half the bytes).
    let on: Vec<f32> = off.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
    let seq_on = core
        .upsert("c", vec![f32_doc("n".into(), &on)])
        .await
        .unwrap()
        .sequence;
    let log = logged(&core, "c");
    assert_eq!(log[&seq][0].tokens, WalTokens::F32(off.clone()));
    assert!(matches!(log[&seq_on][0].tokens, WalTokens::F16(_)));
    assert_eq!(log[&seq_on][0].tokens.to_f32().to_vec(), on);
    let want: Vec<u16> = off.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
    assert_eq!(stored_bits(&core, "c", "o").await, want);
    assert_eq!(stored_bits(&core, "c", "n").await, want);
    assert_eq!(core.collection("c").unwrap().widening().values(), 0);
    // Both replay after a restart to the same stored values.
    core.shutdown();
    drop(core);
    let core = open_core(dir.path()).await;
    assert_eq!(stored_bits(&core, "c", "o").await, want);
    assert_eq!(stored_bits(&core, "c", "n").await, want);
    core.shutdown();
}
