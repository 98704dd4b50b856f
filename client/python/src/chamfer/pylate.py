"""A PyLate index backend: a chamfer collection behind PyLate's index interface.

::

    from pylate import models, retrieve
    import chamfer.pylate
    index = chamfer.pylate.Index(url="http://127.0.0.1:8080", name="my_docs", override=True)
    index.add_documents(documents_ids=ids, documents_embeddings=model.encode(docs, is_query=False))
    retriever = retrieve.ColBERT(index=index)
    results = retriever.retrieve(queries_embeddings=model.encode(queries, is_query=True), k=10)

The interface is the one PyLate's ``retrieve.ColBERT`` calls on an index that retrieves documents itself (as its
PLAID index does): ``add_documents(documents_ids, documents_embeddings, batch_size=...)`` and
``remove_documents(documents_ids)`` return the index; ``index(queries_embeddings, k=..., subset=...)`` returns,
per query, a list of ``{"id": str, "score": float}`` best first; ``get_documents_embeddings(ids_per_query)``
returns the stored token matrices. chamfer scores by exact Chamfer (MaxSim) after its candidate stage, so PyLate's
own re-rank step is not needed. PyLate is never imported by this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._tokens import VectorsMode
from .client import DEFAULT_URL, Client
from .errors import CollectionNotFound

#: Most documents per delete request and per lookup (the server's default ``limits.max_batch`` is 1024).
_MAX_IDS = 1024


def _matrices(embeddings: Any) -> list[Any]:
    """One 2-D matrix per item: a 3-D array or tensor is split along its first axis, a 2-D one is one item, a
    list stays as it is."""
    ndim = getattr(embeddings, "ndim", None)
    if ndim == 3:
        return [embeddings[i] for i in range(len(embeddings))]
    if ndim == 2:
        return [embeddings]
    return list(embeddings)


class Index:
    """PyLate's index interface over a chamfer collection.

    Args:
        url: the chamfer server's HTTP address.
        name: the collection (created on the first :meth:`add_documents`, with the embeddings' dimension).
        override: drop the collection first if it exists.
        api_key: the server's API key, if it has one.
        client: an existing :class:`chamfer.Client` to use instead of ``url`` / ``api_key`` / ``vectors``.
        vectors: ``"packed"`` (default) or ``"json"`` (servers without packed token support).
        batch_size: documents per upload request (``add_documents`` may override it).
        parallel: upload requests in flight.
        query_batch_size: queries per search request.
        collection_params: index parameters for the new collection (see :meth:`chamfer.Client.create_collection`).
        search_params: search knobs for every query (``ef``, ``candidates``, ``rerank``, ``exact``, ...).
        show_progress: a tqdm bar while adding documents (when tqdm is installed).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        name: str = "colbert_collection",
        override: bool = False,
        *,
        api_key: str | None = None,
        client: Client | None = None,
        vectors: VectorsMode = "packed",
        batch_size: int = 64,
        parallel: int = 2,
        query_batch_size: int = 64,
        collection_params: dict[str, Any] | None = None,
        search_params: dict[str, Any] | None = None,
        show_progress: bool = False,
    ) -> None:
        self.client = client if client is not None else Client(url, api_key, vectors=vectors)
        self.name = name
        self.batch_size = batch_size
        self.parallel = parallel
        self.query_batch_size = query_batch_size
        self.collection_params = dict(collection_params or {})
        self.search_params = dict(search_params or {})
        self.show_progress = show_progress
        if override:
            try:
                self.client.drop(name)
            except CollectionNotFound:
                pass

    def add_documents(
        self,
        documents_ids: str | Sequence[str],
        documents_embeddings: Any,
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> Index:
        """Stores (or replaces) documents: one id and one ``[n_tokens, dim]`` matrix (numpy or torch) each."""
        ids = [documents_ids] if isinstance(documents_ids, str) else list(documents_ids)
        embeddings = _matrices(documents_embeddings)
        if not ids:
            return self
        dimension = int(np.shape(embeddings[0])[-1])
        self.client.create_collection(self.name, dimension, exist_ok=True, **self.collection_params)
        self.client.upload(
            self.name,
            ids,
            embeddings,
            batch_size=batch_size or self.batch_size,
            parallel=self.parallel,
            resume=False,
            progress=self.show_progress,
        )
        return self

    def remove_documents(self, documents_ids: str | Sequence[str]) -> Index:
        """Deletes documents by id (unknown ids are ignored)."""
        ids = [documents_ids] if isinstance(documents_ids, str) else list(documents_ids)
        for s in range(0, len(ids), _MAX_IDS):
            self.client.delete(self.name, ids[s : s + _MAX_IDS])
        return self

    def __call__(
        self,
        queries_embeddings: Any,
        k: int = 10,
        subset: Sequence[str] | Sequence[Sequence[str]] | None = None,
    ) -> list[list[dict[str, Any]]]:
        """The top ``k`` documents per query as ``[{"id": ..., "score": ...}, ...]``, best first.

        ``subset`` restricts the search to the given document ids: one list for every query, or one list per
        query."""
        queries = _matrices(queries_embeddings)
        filters: list[dict[str, Any] | None]
        if subset is None:
            filters = [None] * len(queries)
        elif len(subset) > 0 and not isinstance(subset[0], str):
            filters = [{"ids": list(s)} for s in subset]
        else:
            filters = [{"ids": list(subset)}] * len(queries)
        if len(filters) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(filters)} subsets")
        results: list[list[dict[str, Any]]] = [[] for _ in queries]
        # An empty subset allows no document: such a query has no results and is not sent.
        todo = [i for i, f in enumerate(filters) if f is None or f["ids"]]
        for s in range(0, len(todo), self.query_batch_size):
            chunk = todo[s : s + self.query_batch_size]
            hits = self.client.search_batch(
                self.name,
                [queries[i] for i in chunk],
                k,
                filter=[filters[i] for i in chunk],
                **self.search_params,
            )
            for i, h in zip(chunk, hits):
                results[i] = [{"id": x.id, "score": x.score} for x in h]
        return results

    def get_documents_embeddings(self, documents_ids: Sequence[Sequence[str]]) -> list[list[np.ndarray]]:
        """The stored token matrices (float32) of each group of ids, in the same nesting.

        Raises :class:`KeyError` for an id that is not stored."""
        wanted = sorted({i for group in documents_ids for i in group})
        found: dict[str, np.ndarray] = {}
        for s in range(0, len(wanted), _MAX_IDS):
            for d in self.client.get(self.name, wanted[s : s + _MAX_IDS], with_tokens=True):
                assert d.tokens is not None
                found[d.id] = d.tokens
        return [[found[i] for i in group] for group in documents_ids]
