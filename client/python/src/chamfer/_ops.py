"""Every API operation, once: the request it sends and how its answer is read (see :mod:`chamfer._io`).

Each function returns an operation (a generator); :class:`chamfer.Client` and :class:`chamfer.AsyncClient` run
them. Routes and bodies follow the server's REST API (``/openapi.json``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from . import errors
from ._io import Op, Request, call
from ._tokens import TokenCodec, unpack
from .types import (
    CollectionInfo,
    DeleteResult,
    Document,
    GetResult,
    Hit,
    ReadyStatus,
    RerankResult,
    SearchHits,
    UpsertResult,
)

#: The search knobs a body may carry besides ``query``, ``k`` and ``filter``.
SEARCH_KNOBS = ("nprobe", "ef", "candidates", "rerank", "prefix_repetitions", "exact", "with_metadata")

#: ``create_collection`` keyword -> (JSON section, or None for the top level).
COLLECTION_PARAMS: dict[str, str | None] = {
    "num_repetitions": "fde",
    "num_simhash_projections": "fde",
    "seed": "fde",
    "projection_type": "fde",
    "projection_dimension": "fde",
    "fill_empty_partitions": "fde",
    "final_projection_dimension": "fde",
    "prefix_repetitions": "hnsw",
    "m": "hnsw",
    "ef_construction": "hnsw",
    "storage": "hnsw",
    "min_docs": "hnsw",
    "codebook_size": None,
}


def _c(name: str) -> str:
    return "/v1/collections/" + quote(name, safe="")


def _ids(ids: str | Iterable[str]) -> list[str]:
    return [ids] if isinstance(ids, str) else [str(i) for i in ids]


# ----- service ------------------------------------------------------------------------------------------------


def health() -> Op[bool]:
    body = yield from call(Request("GET", "/healthz"))
    return isinstance(body, dict) and body.get("status") == "ok"


def ready() -> Op[ReadyStatus]:
    body = yield from call(Request("GET", "/readyz"), ok=(503,))
    body = body or {}
    return ReadyStatus(
        ready=body.get("status") == "ready",
        reason=body.get("reason"),
        unavailable_collections=list(body.get("unavailable_collections") or []),
        storage_full=list(body.get("storage_full") or []),
    )


# ----- collections --------------------------------------------------------------------------------------------


def create_collection(name: str, dimension: int, params: Mapping[str, Any], exist_ok: bool) -> Op[CollectionInfo]:
    body: dict[str, Any] = {"name": name, "dimension": int(dimension)}
    for key, value in params.items():
        if key not in COLLECTION_PARAMS:
            raise TypeError(f"create_collection() got an unexpected keyword argument {key!r}")
        if value is None:
            continue
        section = COLLECTION_PARAMS[key]
        if section is None:
            body[key] = value
        else:
            body.setdefault(section, {})[key] = value
    try:
        info = yield from call(Request("POST", "/v1/collections", body))
    except errors.AlreadyExists:
        if not exist_ok:
            raise
        info = yield from call(Request("GET", _c(name)))
    return CollectionInfo.from_json(info)


def list_collections() -> Op[list[CollectionInfo]]:
    body = yield from call(Request("GET", "/v1/collections"))
    return [CollectionInfo.from_json(c) for c in body.get("collections", [])]


def describe(name: str) -> Op[CollectionInfo]:
    return CollectionInfo.from_json((yield from call(Request("GET", _c(name)))))


def drop(name: str) -> Op[None]:
    yield from call(Request("DELETE", _c(name)))


def flush(name: str) -> Op[CollectionInfo]:
    return CollectionInfo.from_json((yield from call(Request("POST", _c(name) + "/flush"))))


def compact(name: str) -> Op[CollectionInfo]:
    return CollectionInfo.from_json((yield from call(Request("POST", _c(name) + "/compact"))))


# ----- documents ----------------------------------------------------------------------------------------------


def upsert_body(
    codec: TokenCodec,
    ids: Sequence[str],
    embeddings: Sequence[Any],
    metadata: Sequence[Mapping[str, Any] | None] | None,
) -> dict[str, Any]:
    """The upsert body; the inputs' lengths must agree."""
    if isinstance(ids, str):
        raise errors.client_error("ids must be a list of strings, not one string")
    if len(ids) != len(embeddings):
        raise errors.client_error(f"{len(ids)} ids but {len(embeddings)} embeddings")
    if metadata is not None and len(metadata) != len(ids):
        raise errors.client_error(f"{len(ids)} ids but {len(metadata)} metadata objects")
    docs = []
    for i, doc_id in enumerate(ids):
        doc: dict[str, Any] = {"id": str(doc_id), "tokens": codec.encode(embeddings[i], f"embeddings[{i}]")}
        if metadata is not None and metadata[i] is not None:
            doc["metadata"] = metadata[i]
        docs.append(doc)
    return {"documents": docs}


def upsert_request(collection: str, body: dict[str, Any], timeout_ms: int | None = None) -> Request:
    return Request("POST", _c(collection) + "/documents", body, timeout_ms=timeout_ms)


def upsert(
    codec: TokenCodec,
    collection: str,
    ids: Sequence[str],
    embeddings: Sequence[Any],
    metadata: Sequence[Mapping[str, Any] | None] | None,
    timeout_ms: int | None,
) -> Op[UpsertResult]:
    body = upsert_body(codec, ids, embeddings, metadata)
    out = yield from call(upsert_request(collection, body, timeout_ms))
    return UpsertResult(upserted=int(out["upserted"]), sequence=int(out["sequence"]))


def _document(v: dict[str, Any]) -> Document:
    tokens = v.get("tokens")
    return Document(
        id=v["id"],
        n_tokens=int(v.get("n_tokens", 0)),
        metadata=v.get("metadata") or {},
        tokens=None if tokens is None else unpack(tokens),
    )


def get_request(
    codec: TokenCodec, collection: str, ids: str | Iterable[str], with_tokens: bool, timeout_ms: int | None = None
) -> Request:
    body: dict[str, Any] = {"ids": _ids(ids), "with_tokens": bool(with_tokens)}
    if with_tokens and codec.packed:
        body["packed"] = True
    return Request("POST", _c(collection) + "/documents/get", body, timeout_ms=timeout_ms)


def get(
    codec: TokenCodec, collection: str, ids: str | Iterable[str], with_tokens: bool, timeout_ms: int | None
) -> Op[GetResult]:
    out = yield from call(get_request(codec, collection, ids, with_tokens, timeout_ms))
    return GetResult(documents=[_document(d) for d in out["documents"]], missing=list(out.get("missing", [])))


def get_document(codec: TokenCodec, collection: str, doc_id: str, timeout_ms: int | None) -> Op[Document]:
    params = {"packed": "true"} if codec.packed else None
    path = _c(collection) + "/documents/" + quote(doc_id, safe="")
    return _document((yield from call(Request("GET", path, params=params, timeout_ms=timeout_ms))))


def delete(collection: str, ids: str | Iterable[str]) -> Op[DeleteResult]:
    out = yield from call(Request("POST", _c(collection) + "/documents/delete", {"ids": _ids(ids)}))
    return DeleteResult(deleted=int(out["deleted"]), sequence=int(out["sequence"]))


# ----- search -------------------------------------------------------------------------------------------------


def search_body(codec: TokenCodec, query: Any, k: int, filter: Any, knobs: Mapping[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"query": codec.encode(query, "query"), "k": int(k)}
    for key, value in knobs.items():
        if key not in SEARCH_KNOBS:
            raise TypeError(f"unknown search knob {key!r} (known: {', '.join(SEARCH_KNOBS)})")
        if value is not None:
            body[key] = value
    if filter is not None:
        body["filter"] = filter
    return body


def _hits(out: dict[str, Any]) -> list[Hit]:
    return [Hit.from_json(h) for h in out["hits"]]


def _search_hits(out: dict[str, Any]) -> SearchHits:
    return SearchHits(_hits(out), knobs=dict(out.get("knobs") or {}))


def search(
    codec: TokenCodec,
    collection: str,
    query: Any,
    k: int,
    filter: Any,
    knobs: Mapping[str, Any],
    timeout_ms: int | None,
) -> Op[SearchHits]:
    body = search_body(codec, query, k, filter, knobs)
    return _search_hits((yield from call(Request("POST", _c(collection) + "/search", body, timeout_ms=timeout_ms))))


def search_batch(
    codec: TokenCodec,
    collection: str,
    queries: Sequence[Any],
    k: int,
    filter: Any,
    knobs: Mapping[str, Any],
    timeout_ms: int | None,
) -> Op[list[SearchHits]]:
    """``filter``: one filter for every query, or a list with one filter (or None) per query."""
    if isinstance(filter, list):
        if len(filter) != len(queries):
            raise errors.client_error(f"{len(queries)} queries but {len(filter)} filters")
        filters = filter
    else:
        filters = [filter] * len(queries)
    body = {"searches": [search_body(codec, q, k, f, knobs) for q, f in zip(queries, filters)]}
    out = yield from call(Request("POST", _c(collection) + "/search/batch", body, timeout_ms=timeout_ms))
    return [_search_hits(r) for r in out["results"]]


# ----- re-rank ------------------------------------------------------------------------------------------------


def rerank(
    codec: TokenCodec,
    collection: str,
    query: Any,
    ids: str | Iterable[str],
    k: int | None,
    with_metadata: bool,
) -> Op[RerankResult]:
    body: dict[str, Any] = {"query": codec.encode(query, "query"), "ids": _ids(ids)}
    if k is not None:
        body["k"] = int(k)
    if with_metadata:
        body["with_metadata"] = True
    out = yield from call(Request("POST", _c(collection) + "/rerank", body))
    return RerankResult(hits=_hits(out), missing=list(out.get("missing", [])))


def _documents_list(codec: TokenCodec, documents: Any) -> list[dict[str, Any]]:
    items = documents.items() if isinstance(documents, Mapping) else documents
    return [{"id": str(i), "tokens": codec.encode(t, f"documents[{i!r}]")} for i, t in items]


def rerank_documents_body(codec: TokenCodec, query: Any, documents: Any, k: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"query": codec.encode(query, "query"), "documents": _documents_list(codec, documents)}
    if k is not None:
        body["k"] = int(k)
    return body


def rerank_documents(codec: TokenCodec, query: Any, documents: Any, k: int | None) -> Op[list[Hit]]:
    body = rerank_documents_body(codec, query, documents, k)
    return _hits((yield from call(Request("POST", "/v1/rerank", body))))


def rerank_documents_batch(
    codec: TokenCodec, requests: Sequence[tuple[Any, Any]], k: int | None
) -> Op[list[list[Hit]]]:
    body = {"requests": [rerank_documents_body(codec, q, docs, k) for q, docs in requests]}
    out = yield from call(Request("POST", "/v1/rerank/batch", body))
    return [_search_hits(r) for r in out["results"]]
