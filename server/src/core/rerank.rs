//! Exact re-rank: the Chamfer score of given documents against one query, with no index involved, so chamfer
//! can re-rank behind any first stage. Documents are either stored ones (by id, in a collection) or supplied by
//! the caller with the request. Scores are the engine's: sum over query tokens of the best dot product with a
//! document token, documents in f16 (their stored precision; supplied ones are rounded the same way).
use std::time::Instant;

use chamfer_index::kernels::{self, PreparedQuery};
use half::f16;

use super::input::{self, TokenInput};
use super::pool::CancelToken;
use super::{Core, HitOut};
use crate::error::ServiceError;

/// The documents one re-rank scores.
#[derive(Clone, Debug)]
pub enum RerankDocs {
    /// Stored documents of the collection, by id (ids not found are reported as missing).
    Stored(Vec<String>),
    /// Documents sent with the request: id and tokens.
    Supplied(Vec<(String, TokenInput)>),
}

/// One re-rank request.
#[derive(Clone, Debug)]
pub struct RerankInput {
    /// Query token vectors as sent.
    pub query: TokenInput,
    /// The documents to score.
    pub docs: RerankDocs,
    /// Keep the best `k` (all when unset).
    pub k: Option<usize>,
    /// Return stored documents' metadata (stored documents only).
    pub with_metadata: bool,
}

/// Scored documents, best first, and the stored ids that were not found.
#[derive(Clone, Debug, Default)]
pub struct RerankOutcome {
    /// Scored documents, best first (at most `k`).
    pub hits: Vec<HitOut>,
    /// Requested stored ids that do not exist.
    pub missing: Vec<String>,
}

/// A document ready to score: packed f16 tokens (owned, or a stored shard's), id and metadata.
struct Scorable {
    id: String,
    tokens: Vec<f16>,
    n_tokens: usize,
    metadata: Option<String>,
}

impl Core {
    /// Re-ranks within collection `name` (stored ids, or supplied documents of its dimension), or, with no
    /// collection, supplied documents of the query's own dimension.
    pub async fn rerank_until(
        &self,
        name: Option<&str>,
        req: RerankInput,
        deadline: Option<Instant>,
    ) -> Result<RerankOutcome, ServiceError> {
        let mut out = self.rerank_batch_until(name, vec![req], deadline).await?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Several re-ranks, each its own pool task of this request (fair with other requests' tasks).
    pub async fn rerank_batch_until(
        &self,
        name: Option<&str>,
        reqs: Vec<RerankInput>,
        deadline: Option<Instant>,
    ) -> Result<Vec<RerankOutcome>, ServiceError> {
        let limits = self.inner.limits.clone();
        input::check_batch("re-rank requests", reqs.len(), &limits)?;
        let collection = name.map(|n| self.collection(n)).transpose()?;
        check_rerank_budget(&reqs, &limits)?;
        // Stored documents are looked up now (a consistent view of this moment), scored in the pool.
        let mut jobs = Vec::with_capacity(reqs.len());
        for r in reqs {
            let dim = match &collection {
                Some(c) => c.config.dimension,
                None => declared_dim(&r.query)?,
            };
            let stored = match (&r.docs, &collection) {
                (RerankDocs::Stored(ids), Some(c)) => {
                    input::validate_ids(ids, &limits)?;
                    Some(c.get(ids)?)
                }
                (RerankDocs::Stored(_), None) => {
                    return Err(ServiceError::InvalidArgument(
                        "re-ranking stored ids needs a collection".into(),
                    ))
                }
                (RerankDocs::Supplied(_), _) => None,
            };
            jobs.push((r, dim, stored));
        }
        let ticket = self.ticket(deadline);
        let tasks: Vec<_> = jobs
            .into_iter()
            .map(|(r, dim, stored)| {
                let limits = limits.clone();
                move |tok: &CancelToken| -> Result<RerankOutcome, ServiceError> {
                    let query =
                        input::decode_tokens(&r.query, dim, limits.max_query_tokens, "query")?;
                    let q = PreparedQuery::new(&query, dim);
                    let mut out = RerankOutcome::default();
                    let mut docs = Vec::new();
                    match (&r.docs, stored) {
                        (RerankDocs::Stored(ids), Some(found)) => {
                            for (id, f) in ids.iter().zip(found) {
                                let Some(f) = f else {
                                    out.missing.push(id.clone());
                                    continue;
                                };
                                let payload = f.shard.payload(f.doc);
                                docs.push(Scorable {
                                    id: id.clone(),
                                    tokens: f.shard.packed_tokens(f.doc).to_vec(),
                                    n_tokens: f.shard.n_tokens(f.doc),
                                    metadata: (r.with_metadata && !payload.is_empty())
                                        .then(|| String::from_utf8_lossy(payload).into_owned()),
                                });
                            }
                        }
                        (RerankDocs::Supplied(supplied), _) => {
                            for (id, t) in supplied {
                                input::validate_id(id)?;
                                let v = input::decode_tokens(
                                    t,
                                    dim,
                                    limits.max_tokens_per_doc,
                                    "document",
                                )
                                .map_err(|e| e.in_document(id))?;
                                let mut packed = Vec::with_capacity(v.len());
                                kernels::pack_tokens(&v, dim, &mut packed);
                                docs.push(Scorable {
                                    id: id.clone(),
                                    n_tokens: v.len() / dim,
                                    tokens: packed,
                                    metadata: None,
                                });
                            }
                        }
                        (RerankDocs::Stored(_), None) => unreachable!("checked above"),
                    }
                    for d in docs {
                        if tok.is_cancelled() {
                            return Err(tok.exceeded());
                        }
                        out.hits.push(HitOut {
                            score: kernels::chamfer(&q, &d.tokens, d.n_tokens),
                            id: d.id,
                            metadata: d.metadata,
                        });
                    }
                    out.hits
                        .sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
                    if let Some(k) = r.k {
                        out.hits.truncate(k);
                    }
                    Ok(out)
                }
            })
            .collect();
        self.inner.pool.run_all(&ticket, tasks).await
    }
}

/// The dimension a query declares (supplied documents without a collection must match it).
fn declared_dim(query: &TokenInput) -> Result<usize, ServiceError> {
    let dim = match query {
        TokenInput::Packed { dim, .. } => *dim,
        TokenInput::Rows(rows) => rows.first().map_or(0, Vec::len),
    };
    if dim == 0 {
        return Err(chamfer_index::IndexError::Empty { what: "query" }.into());
    }
    Ok(dim)
}

/// The work budget of one re-rank request, checked before any work starts: the query token vectors of all its
/// re-ranks, summed, within `limits.max_batch_query_tokens` (as for searches), and each re-rank's documents
/// within `limits.max_batch`.
fn check_rerank_budget(
    reqs: &[RerankInput],
    limits: &crate::config::Limits,
) -> Result<(), ServiceError> {
    for r in reqs {
        let n = match &r.docs {
            RerankDocs::Stored(ids) => ids.len(),
            RerankDocs::Supplied(docs) => docs.len(),
        };
        input::check_batch("documents to re-rank", n, limits)?;
    }
    let total = reqs.iter().fold(0usize, |acc, r| {
        acc.saturating_add(match &r.query {
            TokenInput::Packed { n_tokens, .. } => *n_tokens,
            TokenInput::Rows(rows) => rows.len(),
        })
    });
    if total > limits.max_batch_query_tokens {
        return Err(ServiceError::TooLarge {
            what: "re-rank work (query token vectors in one request)",
            got: total,
            max: limits.max_batch_query_tokens,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::input::{CollectionParamsInput, SearchInput};
    use super::super::tests::{doc, open_core, tokens, DIM};
    use super::*;

    /// Exact Chamfer in plain f32 over f16-rounded documents: the definition the re-rank must match.
    fn chamfer_ref(q: &[Vec<f32>], d: &[Vec<f32>]) -> f32 {
        let r = |x: f32| f16::from_f32(x).to_f32();
        q.iter()
            .map(|qt| {
                d.iter()
                    .map(|dt| qt.iter().zip(dt).map(|(a, b)| a * r(*b)).sum::<f32>())
                    .fold(f32::NEG_INFINITY, f32::max)
            })
            .sum()
    }

    fn rows(t: &TokenInput) -> Vec<Vec<f32>> {
        match t {
            TokenInput::Rows(r) => r.clone(),
            TokenInput::Packed { .. } => unreachable!("tests use rows"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stored_rerank_matches_exact_search_and_reports_missing() {
        let dir = tempfile::tempdir().unwrap();
        let core = open_core(dir.path()).await;
        core.create_collection("c".into(), DIM, CollectionParamsInput::default())
            .await
            .unwrap();
        core.upsert("c", (0..40).map(doc).collect()).await.unwrap();
        let q = TokenInput::Rows(tokens(777, 5));
        let exact = core
            .search(
                "c",
                SearchInput {
                    query: q.clone(),
                    k: 40,
                    ef: None,
                    candidates: None,
                    rerank: None,
                    prefix_repetitions: None,
                    nprobe: None,
                    exact: true,
                    filter: None,
                    with_metadata: false,
                },
            )
            .await
            .unwrap();
        // Re-rank every stored id (in a shuffled order) plus two unknown ones: the exact ranking comes back.
        let mut ids: Vec<String> = (0..40).rev().map(|i| format!("d{i}")).collect();
        ids.insert(7, "nope".into());
        ids.push("gone".into());
        let out = core
            .rerank_until(
                Some("c"),
                RerankInput {
                    query: q.clone(),
                    docs: RerankDocs::Stored(ids),
                    k: Some(10),
                    with_metadata: true,
                },
                None,
            )
            .await
            .unwrap();
        assert_eq!(out.missing, vec!["nope".to_string(), "gone".to_string()]);
        assert_eq!(out.hits.len(), 10);
        for (h, e) in out.hits.iter().zip(&exact) {
            assert_eq!(h.id, e.id);
            assert!((h.score - e.score).abs() <= 1e-4 * e.score.abs().max(1.0));
            assert!(h.metadata.is_some(), "metadata asked for");
        }
        // Scores are the definition's.
        let d3 = doc(3);
        let h3 = core
            .rerank_until(
                Some("c"),
                RerankInput {
                    query: q.clone(),
                    docs: RerankDocs::Stored(vec!["d3".into()]),
                    k: None,
                    with_metadata: false,
                },
                None,
            )
            .await
            .unwrap();
        let want = chamfer_ref(&rows(&q), &rows(&d3.tokens));
        assert!(
            (h3.hits[0].score - want).abs() < 1e-4,
            "{} vs {want}",
            h3.hits[0].score
        );
        assert!(h3.hits[0].metadata.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn supplied_rerank_sorts_by_exact_score_and_validates() {
        let dir = tempfile::tempdir().unwrap();
        let core = open_core(dir.path()).await;
        let q = tokens(5, 3);
        let docs: Vec<(String, TokenInput)> = (0..12)
            .map(|i| {
                (
                    format!("s{i}"),
                    TokenInput::Rows(tokens(100 + i, 2 + i as usize % 5)),
                )
            })
            .collect();
        let mut want: Vec<(String, f32)> = docs
            .iter()
            .map(|(id, t)| (id.clone(), chamfer_ref(&q, &rows(t))))
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1));
        let req = |docs: Vec<(String, TokenInput)>| RerankInput {
            query: TokenInput::Rows(q.clone()),
            docs: RerankDocs::Supplied(docs),
            k: None,
            with_metadata: false,
        };
        // No collection: the query's dimension is the one; a batch answers in order.
        let out = core
            .rerank_batch_until(None, vec![req(docs.clone()), req(docs[..3].to_vec())], None)
            .await
            .unwrap();
        assert_eq!(out.len(), 2);
        let got: Vec<&str> = out[0].hits.iter().map(|h| h.id.as_str()).collect();
        let exp: Vec<&str> = want.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(got, exp);
        for (h, (_, s)) in out[0].hits.iter().zip(&want) {
            assert!((h.score - s).abs() < 1e-4);
        }
        assert_eq!(out[1].hits.len(), 3);

        // A document of another dimension names its id; stored ids need a collection; empty lists are refused.
        let mut bad = docs.clone();
        bad[4].1 = TokenInput::Rows(vec![vec![0.5; DIM + 1]]);
        let e = core.rerank_until(None, req(bad), None).await.unwrap_err();
        assert!(
            e.to_string().contains("s4") || matches!(e, ServiceError::Index(_)),
            "{e}"
        );
        let e = core
            .rerank_until(
                None,
                RerankInput {
                    query: TokenInput::Rows(q.clone()),
                    docs: RerankDocs::Stored(vec!["x".into()]),
                    k: None,
                    with_metadata: false,
                },
                None,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, ServiceError::InvalidArgument(_)), "{e}");
        let e = core
            .rerank_until(None, req(vec![]), None)
            .await
            .unwrap_err();
        assert!(matches!(e, ServiceError::InvalidArgument(_)), "{e}");
        let e = core
            .rerank_until(Some("missing"), req(docs), None)
            .await
            .unwrap_err();
        assert!(matches!(e, ServiceError::CollectionNotFound(_)), "{e}");
    }
}
