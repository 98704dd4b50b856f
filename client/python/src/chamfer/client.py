"""The blocking client: runs the shared operations of :mod:`chamfer._ops` over :mod:`chamfer._http_sync`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from . import _ops, _upload
from ._http_sync import SyncTransport
from ._io import Gather, Op, Request, Response, Sleep, T, client_headers, encode
from ._tokens import Dtype, TokenCodec, VectorsMode
from .errors import TransportError
from .types import (
    CollectionInfo,
    DeleteResult,
    Document,
    GetResult,
    Hit,
    ReadyStatus,
    RerankResult,
    SearchHits,
    UploadResult,
    UpsertResult,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._knobs import CollectionParams, SearchKnobs

DEFAULT_URL = "http://127.0.0.1:8080"


def run_sync(op: Op[T], send: Callable[[Request], Response]) -> T:
    """Drives one operation to its result with blocking I/O."""
    value: Any = None
    exc: BaseException | None = None
    while True:
        try:
            item = op.throw(exc) if exc is not None else op.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value, exc = None, None
        if isinstance(item, Request):
            try:
                value = send(item)
            except TransportError as e:
                exc = e
        elif isinstance(item, Sleep):
            time.sleep(item.seconds)
        elif isinstance(item, Gather):
            try:
                _gather_threads(item, send)
            except Exception as e:  # noqa: BLE001 -- raised inside the operation, so its cleanup (progress bar) runs
                exc = e
        else:
            raise TypeError(f"operation yielded {item!r}")


def _gather_threads(g: Gather, send: Callable[[Request], Response]) -> None:
    ops = iter(g.ops)
    first_error: BaseException | None = None
    with ThreadPoolExecutor(max_workers=g.parallel, thread_name_prefix="chamfer-upload") as pool:
        pending: set[Future[Any]] = set()

        def start_next() -> None:
            sub = next(ops, None)
            if sub is not None:
                pending.add(pool.submit(run_sync, sub, send))

        for _ in range(g.parallel):
            start_next()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                pending.discard(f)
                try:
                    g.on_result(f.result())
                except Exception as e:  # noqa: BLE001 -- the first failure is re-raised
                    first_error = first_error or e
                if first_error is None:
                    start_next()
    if first_error is not None:
        raise first_error


class Client:
    """A blocking chamfer REST client.

    Args:
        url: the server's HTTP address, e.g. ``"http://127.0.0.1:8080"``.
        api_key: sent as ``Authorization: Bearer KEY`` when set.
        timeout: seconds to wait for a connection and for each read of an answer (None: no limit).
        vectors: ``"packed"`` (default) sends token matrices as base64 of little-endian floats and reads them back
            packed; ``"json"`` uses arrays of numbers, for servers without packed support.
        dtype: precision of packed tokens, ``"f16"`` (default; the server stores f16) or ``"f32"``.

    Every method raises a :class:`chamfer.ChamferError` subclass on failure. Use it as a context manager, or call
    :meth:`close`.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float | None = 30.0,
        *,
        vectors: VectorsMode = "packed",
        dtype: Dtype = "f16",
    ) -> None:
        self._codec = TokenCodec(vectors, dtype)
        self._http = SyncTransport(url, client_headers(api_key), timeout)

    # ----- plumbing -----

    @property
    def vectors(self) -> VectorsMode:
        """The token wire form: ``"packed"`` or ``"json"``."""
        return self._codec.vectors

    def _send(self, req: Request) -> Response:
        return self._http.send(encode(req))

    def _run(self, op: Op[T]) -> T:
        return run_sync(op, self._send)

    def close(self) -> None:
        """Closes the idle connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- service -----

    def health(self) -> bool:
        """True when the server answers ``/healthz`` (liveness)."""
        return self._run(_ops.health())

    def ready(self) -> ReadyStatus:
        """``/readyz``: whether every collection is open and writable (a 503 answer is returned, not raised)."""
        return self._run(_ops.ready())

    # ----- collections -----

    def create_collection(
        self, name: str, dimension: int, *, exist_ok: bool = False, **params: Unpack[CollectionParams]
    ) -> CollectionInfo:
        """Creates a collection of ``dimension``-d token vectors.

        Index parameters (all optional; unset ones take the server's defaults): FDE ``num_repetitions``,
        ``num_simhash_projections``, ``seed``, ``projection_type`` (``"identity"`` | ``"ams_sketch"``),
        ``projection_dimension``, ``fill_empty_partitions``, ``final_projection_dimension``; graph
        ``prefix_repetitions``, ``m``, ``ef_construction``, ``storage`` (``"f16"`` | ``"f32"``), ``min_docs``;
        and the token ``codebook_size``. With ``exist_ok`` an existing collection is described instead of raising
        :class:`chamfer.AlreadyExists` (its parameters are not compared).
        """
        return self._run(_ops.create_collection(name, dimension, params, exist_ok))

    def list_collections(self) -> list[CollectionInfo]:
        """Every serving collection (damaged ones are listed by :meth:`ready`)."""
        return self._run(_ops.list_collections())

    def describe(self, name: str) -> CollectionInfo:
        """One collection's parameters and statistics (:class:`chamfer.CollectionNotFound` if unknown)."""
        return self._run(_ops.describe(name))

    def drop(self, name: str) -> None:
        """Deletes a collection and its files."""
        self._run(_ops.drop(name))

    def flush(self, name: str) -> CollectionInfo:
        """Writes the collection's in-memory documents into a shard now."""
        return self._run(_ops.flush(name))

    def compact(self, name: str) -> CollectionInfo:
        """Merges the collection's shards now, dropping deleted documents."""
        return self._run(_ops.compact(name))

    # ----- documents -----

    def upsert(
        self,
        collection: str,
        ids: Sequence[str],
        embeddings: Sequence[Any],
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        timeout_ms: int | None = None,
    ) -> UpsertResult:
        """Stores (or replaces) documents in one request, durable when it returns.

        Args:
            ids: one id per document.
            embeddings: one ``[n_tokens, dim]`` numpy array or torch tensor per document (a 3-D array works too).
            metadata: optional JSON object (or None) per document, for filters and results.
            timeout_ms: a deadline for the server's work (``x-timeout-ms``).
        """
        return self._run(_ops.upsert(self._codec, collection, ids, embeddings, metadata, timeout_ms))

    def upload(
        self,
        collection: str,
        ids: Sequence[str],
        embeddings: Sequence[Any],
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        batch_size: int = 64,
        parallel: int = 2,
        resume: bool = True,
        max_retries: int = 8,
        progress: bool = True,
        timeout_ms: int | None = None,
    ) -> UploadResult:
        """Uploads many documents: ``batch_size`` per request, ``parallel`` requests in flight (threads), each
        retried with exponential backoff on 429 / 503 / a dropped connection (waiting what ``Retry-After`` says),
        with a tqdm progress bar when tqdm is installed and ``progress`` is true.

        With ``resume`` (default) every batch's ids are looked up first and those already stored are skipped, so
        re-running an interrupted upload sends only the rest; pass ``resume=False`` to overwrite stored documents.
        ``embeddings`` may be any indexable sequence (a list of arrays, a 3-D array, a lazy loader): a batch's
        matrices are read and encoded only when that batch is sent.
        """
        policy = _upload.RetryPolicy(max_retries=max_retries)
        return self._run(
            _upload.upload(
                self._codec,
                collection,
                ids,
                embeddings,
                metadata,
                batch_size,
                parallel,
                resume,
                policy,
                progress,
                timeout_ms,
            )
        )

    def get(
        self,
        collection: str,
        ids: str | Iterable[str],
        *,
        with_tokens: bool = True,
        timeout_ms: int | None = None,
    ) -> GetResult:
        """Fetches documents by id: metadata, token count and (``with_tokens``) their tokens as float32 arrays
        (read back packed in ``"packed"`` mode). Ids that are not stored are listed in ``missing``."""
        return self._run(_ops.get(self._codec, collection, ids, with_tokens, timeout_ms))

    def get_document(self, collection: str, id: str, *, timeout_ms: int | None = None) -> Document:
        """One document with its tokens (:class:`chamfer.NotFound` if it is not stored)."""
        return self._run(_ops.get_document(self._codec, collection, id, timeout_ms))

    def delete(self, collection: str, ids: str | Iterable[str]) -> DeleteResult:
        """Deletes documents by id (unknown ids are ignored; ``deleted`` counts the stored ones)."""
        return self._run(_ops.delete(collection, ids))

    # ----- search -----

    def search(
        self,
        collection: str,
        query: Any,
        k: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        timeout_ms: int | None = None,
        **knobs: Unpack[SearchKnobs],
    ) -> SearchHits:
        """The ``k`` documents with the highest Chamfer score for ``query`` (a ``[n_tokens, dim]`` array/tensor).

        ``filter``: ``{"must": [{"key": "lang", "any_of": ["en"]}], "ids": [...]}`` (conditions ANDed).
        Knobs (:class:`chamfer.SearchKnobs`, the server's ``Search`` schema): ``nprobe`` (centroids probed per query
        token by the inverted file, the default plan's recall knob), ``ef``, ``candidates``, ``rerank``,
        ``prefix_repetitions``, ``exact`` (exhaustive exact search), ``with_metadata`` (return each hit's metadata).
        The result is a list of hits whose ``knobs`` attribute is the server's echo of the knobs the search ran with.
        """
        return self._run(_ops.search(self._codec, collection, query, k, filter, knobs, timeout_ms))

    def search_batch(
        self,
        collection: str,
        queries: Sequence[Any],
        k: int = 10,
        *,
        filter: Mapping[str, Any] | list[Mapping[str, Any] | None] | None = None,
        timeout_ms: int | None = None,
        **knobs: Unpack[SearchKnobs],
    ) -> list[SearchHits]:
        """Several searches in one request, on one snapshot: one hit list per query. ``filter`` is one filter for
        all queries or a list with one per query; knobs as in :meth:`search`."""
        return self._run(_ops.search_batch(self._codec, collection, queries, k, filter, knobs, timeout_ms))

    # ----- re-rank -----

    def rerank(
        self,
        collection: str,
        query: Any,
        ids: str | Iterable[str],
        *,
        k: int | None = None,
        with_metadata: bool = False,
    ) -> RerankResult:
        """Exact Chamfer scores of stored documents ``ids`` against ``query``, best first (truncated to ``k``);
        ids that are not stored come back in ``missing``. No index is involved."""
        return self._run(_ops.rerank(self._codec, collection, query, ids, k, with_metadata))

    def rerank_documents(
        self,
        query: Any,
        documents: Mapping[str, Any] | Sequence[tuple[str, Any]],
        *,
        k: int | None = None,
    ) -> list[Hit]:
        """Exact Chamfer scores of caller-supplied documents (``{id: tokens}`` or ``[(id, tokens), ...]``)
        against ``query``, best first; nothing is stored. Re-rank behind any first stage."""
        return self._run(_ops.rerank_documents(self._codec, query, documents, k))

    def rerank_documents_batch(
        self,
        requests: Sequence[tuple[Any, Mapping[str, Any] | Sequence[tuple[str, Any]]]],
        *,
        k: int | None = None,
    ) -> list[list[Hit]]:
        """Several :meth:`rerank_documents` in one request: ``requests`` is ``[(query, documents), ...]``."""
        return self._run(_ops.rerank_documents_batch(self._codec, requests, k))
