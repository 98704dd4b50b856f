//! A synthetic corpus streamed straight into a data set folder.
use chamfer_index::storage::{LocalDir, PutMode, Storage};

use super::*;

/// The name the documents' tokens are written under until everything else is written (then it is renamed to
/// `doc_tokens.npy`).
const STAGED_TOKENS: &str = "doc_tokens.npy.staged";

/// Generates a corpus like `like` straight into the data set folder `out_dir` (created if needed), holding
/// only a bounded part of it in memory, and returns what it wrote. The folder is what [`generate`] +
/// [`DatasetWriter::write`] would write for the same settings, file for file, plus a `README.md`.
///
/// The random stream is drawn twice: once to learn every document's length (the `.npy` header needs the row
/// count; nothing is kept but the lengths), once to write the documents as float16 rows into
/// `doc_tokens.npy.staged`, keeping the whole tokens of the queries' source documents only. The queries are then
/// completed and the exact ground truth computed over the written file, [`SynthParams::chunk_docs`] documents at
/// a time ([`exact_ground_truth_stream`]). `doc_tokens.npy` is renamed into place last (after an fsync), so an
/// interrupted run leaves a folder that does not open (a stale `doc_tokens.npy` is removed first).
///
/// Memory: the template, 8 bytes per document (lengths and offsets), the ids, the queries and one chunk of
/// packed documents (about `chunk_docs * 2 * tokens * dim` bytes). Time: two draws of every document (one
/// thread) and the ground truth (`queries * query tokens * doc tokens * dim` multiply-adds, every thread).
pub fn generate_to_dir(
    like: &Dataset,
    p: &SynthParams,
    out_dir: &Path,
    progress: &(dyn Fn(&str, usize, usize) + Sync),
) -> Result<SynthSummary> {
    let (g, rng0) = Generator::new(like, p)?;
    let dim = g.dim;
    std::fs::create_dir_all(out_dir).map_err(|e| DataError::io(out_dir, e))?;
    let tokens_path = out_dir.join("doc_tokens.npy");
    match std::fs::remove_file(&tokens_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(DataError::io(&tokens_path, e))
        }
        _ => {}
    }
    progress(STAGES[0], 1, 1);
    // 1. Every document's untruncated length, and the queries' plans (drawn after the last document).
    let mut rng = rng0.clone();
    let mut scratch = Vec::new();
    let mut full_len = Vec::with_capacity(p.docs);
    for i in 0..p.docs {
        scratch.clear();
        full_len.push(g.doc(&mut rng, i, &mut scratch));
        if i % 10_000 == 0 {
            progress(STAGES[1], i, p.docs);
        }
    }
    progress(STAGES[1], p.docs, p.docs);
    let plans = g.plan_queries(&mut rng, &|d| full_len[d]);
    let mut doc_offsets = Vec::with_capacity(p.docs + 1);
    doc_offsets.push(0usize);
    for (i, &n) in full_len.iter().enumerate() {
        doc_offsets.push(doc_offsets[i] + p.kept(n));
    }
    drop(full_len);
    let rows = doc_offsets[p.docs];
    // 2. The documents, streamed; the queries' sources kept whole.
    let mut sources: HashMap<usize, Vec<f32>> = plans.iter().map(|q| (q.doc, Vec::new())).collect();
    let store = LocalDir::new(out_dir);
    let mut w = F16RowWriter::create(&store, STAGED_TOKENS, rows, dim)?;
    let mut rng = rng0;
    for i in 0..p.docs {
        scratch.clear();
        let len = g.doc(&mut rng, i, &mut scratch);
        if let Some(src) = sources.get_mut(&i) {
            src.clone_from(&scratch);
        }
        w.write_rows(&scratch[..p.kept(len) * dim])?;
        if i % 10_000 == 0 {
            progress(STAGES[2], i, p.docs);
        }
    }
    w.finish()?;
    progress(STAGES[2], p.docs, p.docs);
    let mut query_tokens = Vec::new();
    let mut query_offsets = vec![0usize];
    for plan in &plans {
        g.query(plan, &sources[&plan.doc], &mut query_tokens);
        query_offsets.push(query_tokens.len() / dim);
    }
    drop(sources);
    progress(STAGES[3], p.queries, p.queries);
    let doc_ids: Vec<String> = (0..p.docs).map(doc_id).collect();
    let query_ids: Vec<String> = (0..p.queries).map(query_id).collect();
    let qrels = g.qrels(&plans);
    let writer = DatasetWriter {
        dim,
        doc_ids: &doc_ids,
        doc_tokens: &[],
        doc_offsets: &doc_offsets,
        query_ids: &query_ids,
        query_tokens: &query_tokens,
        query_offsets: &query_offsets,
        gt: None,
        qrels: &qrels,
    };
    writer.write_doc_index(&store)?;
    // 3. The exact ground truth over the file just written (float16, as the kernel packs tokens anyway).
    let docs = DocStream::open_files(
        &out_dir.join(STAGED_TOKENS),
        &out_dir.join("doc_offsets.npy"),
        &out_dir.join("doc_ids.txt"),
    )?;
    let (gt_ids, gt_scores, gt_k) = exact_ground_truth_stream(
        &docs,
        &query_tokens,
        &query_offsets,
        p.gt_k,
        p.chunk_docs,
        &|d, t| progress(STAGES[4], d, t),
    )?;
    drop(docs);
    DatasetWriter {
        gt: Some((&gt_ids, &gt_scores, gt_k)),
        ..writer
    }
    .write_queries_and_labels(&store)?;
    let summary = SynthSummary {
        dim,
        docs: p.docs,
        doc_tokens: rows,
        queries: p.queries,
        gt_k,
    };
    let readme = readme(like, p, &summary);
    store.put("README.md", readme.as_bytes(), PutMode::Overwrite)?;
    store.rename(STAGED_TOKENS, "doc_tokens.npy", PutMode::Overwrite)?;
    Ok(summary)
}

/// The `README.md` of a generated folder: the command that reproduces it and what it holds.
pub(super) fn readme(like: &Dataset, p: &SynthParams, s: &SynthSummary) -> String {
    let d = SynthParams::new(p.docs, p.queries, p.seed);
    let mut cmd = format!(
        "chamfer gen --like {} --docs {} --queries {} --seed {}",
        like.path().display(),
        p.docs,
        p.queries,
        p.seed
    );
    if let Some(n) = p.max_doc_tokens {
        cmd.push_str(&format!(" --max-doc-tokens {n}"));
    }
    if p.docs_per_topic != d.docs_per_topic {
        cmd.push_str(&format!(" --docs-per-topic {}", p.docs_per_topic));
    }
    if p.topics_per_group != d.topics_per_group {
        cmd.push_str(&format!(" --topics-per-group {}", p.topics_per_group));
    }
    if p.topic_share != d.topic_share {
        cmd.push_str(&format!(" --topic-share {}", p.topic_share));
    }
    if p.group_share != d.group_share {
        cmd.push_str(&format!(" --group-share {}", p.group_share));
    }
    let cut = p
        .max_doc_tokens
        .map(|n| format!(", at most {n} per document"))
        .unwrap_or_default();
    format!(
        "# synthetic data set\n\nWritten by `{cmd}`: {} documents ({} tokens{cut}), {} queries, token statistics \
         mimicking the template (see chamfer_data::synth), exact Chamfer top-{} ground truth, qrels = the documents \
         of each query's source topic.\n",
        s.docs, s.doc_tokens, s.queries, s.gt_k
    )
}
