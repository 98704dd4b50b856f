//! Verification: every id of the model (every acknowledged write) read back from the server and compared.
use super::*;

/// Reads every id of `model` from `coll` and compares; in `Update` mode the model then becomes what the
/// server has (so that one loss is reported once). `Err` when the collection cannot be read at all.
pub fn verify(
    port: u16,
    coll: &str,
    model: &mut Model,
    dim: usize,
    mode: Mode,
    rng: &mut Rng,
) -> Result<Vec<Finding>, String> {
    let mut out = Vec::new();
    let ids = model.ids.clone();
    let mut observed: HashMap<String, Version> = HashMap::with_capacity(ids.len());
    for batch in ids.chunks(GET_BATCH) {
        let body = json!({"ids": batch, "with_tokens": true}).to_string();
        let r = http::request(
            port,
            "POST",
            &format!("/v1/collections/{coll}/documents/get"),
            Some(body.as_bytes()),
            REQUEST_TIMEOUT,
        )
        .map_err(|e| format!("documents/get on {coll}: {e}"))?;
        if r.status != 200 {
            return Err(format!(
                "documents/get on {coll}: HTTP {} {}",
                r.status,
                r.text(300)
            ));
        }
        let v = r.json();
        let docs = v
            .get("documents")
            .and_then(|d| d.as_array())
            .ok_or_else(|| format!("documents/get on {coll}: no documents array"))?;
        for d in docs {
            let (id, ver) = model::parse_doc(d)
                .ok_or_else(|| format!("documents/get on {coll}: unreadable document {d}"))?;
            if ver.tokens.len() % dim != 0 {
                out.push(finding(
                    "tokens_differ",
                    &id,
                    format!(
                        "{} values, not a multiple of dimension {dim}",
                        ver.tokens.len()
                    ),
                ));
            }
            observed.insert(id, ver);
        }
    }
    for id in &ids {
        let obs = observed.get(id);
        let e = model.entries.get_mut(id).expect("model id");
        if !e.allows(obs) {
            let f = match (&e.acked, obs) {
                (Some(a), None) => finding(
                    "missing",
                    id,
                    format!(
                        "acknowledged document ({} tokens) is missing",
                        a.n_tokens(dim)
                    ),
                ),
                (None, Some(o)) if e.deleted => finding(
                    "resurrected",
                    id,
                    format!(
                        "acknowledged as deleted, but present ({} tokens)",
                        o.n_tokens(dim)
                    ),
                ),
                (None, Some(o)) => finding(
                    "unexpected_version",
                    id,
                    format!(
                        "never acknowledged, present with {} tokens that match no write in flight",
                        o.n_tokens(dim)
                    ),
                ),
                (Some(a), Some(o)) if a.tokens != o.tokens => {
                    let at = a
                        .tokens
                        .iter()
                        .zip(&o.tokens)
                        .position(|(x, y)| x.to_bits() != y.to_bits());
                    let detail = match at {
                        Some(i) => format!(
                            "value {i}: acknowledged {} but stored {} ({} vs {} tokens)",
                            a.tokens[i],
                            o.tokens[i],
                            a.n_tokens(dim),
                            o.n_tokens(dim)
                        ),
                        None => format!(
                            "{} acknowledged tokens, {} stored",
                            a.n_tokens(dim),
                            o.n_tokens(dim)
                        ),
                    };
                    finding("tokens_differ", id, detail)
                }
                (Some(a), Some(o)) => finding(
                    "metadata_differ",
                    id,
                    format!("acknowledged {} but stored {}", a.metadata, o.metadata),
                ),
                (None, None) => unreachable!("absent is allowed when nothing was acknowledged"),
            };
            out.push(f);
        }
        if mode == Mode::Update {
            let now: State = match obs {
                None => None,
                Some(o) => {
                    let same = std::iter::once(&e.acked)
                        .chain(e.unknown.iter())
                        .flatten()
                        .find(|v| ***v == *o)
                        .cloned();
                    Some(same.unwrap_or_else(|| {
                        Arc::new(Version {
                            tokens: o.tokens.clone(),
                            metadata: o.metadata.clone(),
                        })
                    }))
                }
            };
            e.deleted = now.is_none() && (e.deleted || e.acked.is_some() || !e.unknown.is_empty());
            e.acked = now;
            e.unknown.clear();
        }
    }
    // The count the collection reports equals the documents it returns.
    let r = http::request(
        port,
        "GET",
        &format!("/v1/collections/{coll}"),
        None,
        REQUEST_TIMEOUT,
    )
    .map_err(|e| format!("describe {coll}: {e}"))?;
    if r.status != 200 {
        return Err(format!(
            "describe {coll}: HTTP {} {}",
            r.status,
            r.text(300)
        ));
    }
    let count = r.json()["stats"]["documents"].as_u64();
    if count != Some(observed.len() as u64) {
        out.push(finding(
            "count_mismatch",
            "-",
            format!(
                "describe says {count:?} documents, documents/get returns {} of the ids ever written",
                observed.len()
            ),
        ));
    }
    // Search sanity: the exact top-1 for a live document's own tokens is itself (when the model says it
    // wins by a clear margin), and no hit is a document that is not live.
    let live: Vec<(&String, &Version)> = observed.iter().collect();
    let mut live_sorted = live.clone();
    live_sorted.sort_by(|a, b| a.0.cmp(b.0));
    for _ in 0..2.min(live_sorted.len()) {
        let (id, v) = live_sorted[rng.below(live_sorted.len() as u64) as usize];
        let mut best = (f64::NEG_INFINITY, f64::NEG_INFINITY); // (self, best other)
        for (oid, ov) in &live_sorted {
            let s = model::chamfer(&v.tokens, &ov.tokens, dim);
            if *oid == id {
                best.0 = s;
            } else {
                best.1 = best.1.max(s);
            }
        }
        let mut q = String::from("{\"query\":[");
        for (r, row) in v.tokens.chunks(dim).enumerate() {
            if r > 0 {
                q.push(',');
            }
            q.push_str(&serde_json::to_string(row).unwrap_or_default());
        }
        q.push_str("],\"k\":3,\"exact\":true}");
        let r = http::request(
            port,
            "POST",
            &format!("/v1/collections/{coll}/search"),
            Some(q.as_bytes()),
            REQUEST_TIMEOUT,
        )
        .map_err(|e| format!("search on {coll}: {e}"))?;
        if r.status != 200 {
            return Err(format!(
                "search on {coll}: HTTP {} {}",
                r.status,
                r.text(300)
            ));
        }
        let hits: Vec<String> = r.json()["hits"]
            .as_array()
            .map(|h| {
                h.iter()
                    .filter_map(|x| x["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for h in &hits {
            if !observed.contains_key(h) {
                out.push(finding(
                    "search_ghost",
                    h,
                    format!("a search hit that documents/get does not return (query: {id})"),
                ));
            }
        }
        let margin = 1e-3 * best.0.abs().max(1.0);
        if best.0 - best.1 > margin && hits.first() != Some(id) {
            out.push(finding(
                "search_top1",
                id,
                format!(
                    "exact search with its own tokens ranks {:?} first (self {:.3}, best other {:.3})",
                    hits.first(),
                    best.0,
                    best.1
                ),
            ));
        }
    }
    Ok(out)
}

/// How a damaged start ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Harmless,
    Detected,
    Loss,
    StartFailure,
    Unexpected,
}

impl Outcome {
    pub(super) fn name(self) -> &'static str {
        match self {
            Outcome::Harmless => "harmless",
            Outcome::Detected => "detected",
            Outcome::Loss => "LOSS",
            Outcome::StartFailure => "START FAILURE",
            Outcome::Unexpected => "UNEXPECTED",
        }
    }
}
