"""The asyncio client: the same operations as :class:`chamfer.Client` (:mod:`chamfer._ops`), awaited over an
``httpx.AsyncClient``. Each method documents itself by reference to the blocking client's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from . import _ops, _upload
from ._io import Gather, Op, Request, Response, Sleep, T, client_headers, decode, encode
from ._tokens import Dtype, TokenCodec, VectorsMode
from .client import DEFAULT_URL, Client
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

Send = Callable[[Request], Awaitable[Response]]


async def run_async(op: Op[T], send: Send) -> T:
    """Drives one operation to its result with awaited I/O."""
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
                value = await send(item)
            except TransportError as e:
                exc = e
        elif isinstance(item, Sleep):
            await asyncio.sleep(item.seconds)
        elif isinstance(item, Gather):
            try:
                await _gather_tasks(item, send)
            except Exception as e:  # noqa: BLE001 -- raised inside the operation, so its cleanup runs
                exc = e
        else:
            raise TypeError(f"operation yielded {item!r}")


async def _gather_tasks(g: Gather, send: Send) -> None:
    ops = iter(g.ops)
    pending: set[asyncio.Task[Any]] = set()
    first_error: BaseException | None = None

    def start_next() -> None:
        sub = next(ops, None)
        if sub is not None:
            pending.add(asyncio.ensure_future(run_async(sub, send)))

    try:
        for _ in range(g.parallel):
            start_next()
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                pending.discard(t)
                try:
                    g.on_result(t.result())
                except Exception as e:  # noqa: BLE001 -- the first failure is re-raised
                    first_error = first_error or e
                if first_error is None:
                    start_next()
    finally:
        for t in pending:  # only on cancellation: cancel what still runs
            t.cancel()
    if first_error is not None:
        raise first_error


class AsyncClient:
    """The asyncio form of :class:`chamfer.Client`: same arguments, same methods, each awaited.

    ``async with AsyncClient(url) as c: hits = await c.search(...)``; :meth:`upload` keeps ``parallel`` requests
    in flight as tasks.
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
        self._http = httpx.AsyncClient(base_url=url, headers=client_headers(api_key), timeout=timeout)

    @property
    def vectors(self) -> VectorsMode:
        return self._codec.vectors

    async def _send(self, req: Request) -> Response:
        w = encode(req)
        try:
            r = await self._http.request(w.method, w.target, content=w.content, headers=w.headers)
        except httpx.TimeoutException as e:
            raise TransportError(f"no answer in time: {e!r}", code="timeout") from e
        except httpx.HTTPError as e:
            raise TransportError(f"request failed: {e!r}", code="transport") from e
        return decode(r.status_code, r.headers, r.content)

    def _run(self, op: Op[T]) -> Awaitable[T]:
        return run_async(op, self._send)

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def health(self) -> bool:
        return await self._run(_ops.health())

    async def ready(self) -> ReadyStatus:
        return await self._run(_ops.ready())

    async def create_collection(
        self, name: str, dimension: int, *, exist_ok: bool = False, **params: Unpack[CollectionParams]
    ) -> CollectionInfo:
        return await self._run(_ops.create_collection(name, dimension, params, exist_ok))

    async def list_collections(self) -> list[CollectionInfo]:
        return await self._run(_ops.list_collections())

    async def describe(self, name: str) -> CollectionInfo:
        return await self._run(_ops.describe(name))

    async def drop(self, name: str) -> None:
        await self._run(_ops.drop(name))

    async def flush(self, name: str) -> CollectionInfo:
        return await self._run(_ops.flush(name))

    async def compact(self, name: str) -> CollectionInfo:
        return await self._run(_ops.compact(name))

    async def upsert(
        self,
        collection: str,
        ids: Sequence[str],
        embeddings: Sequence[Any],
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        timeout_ms: int | None = None,
    ) -> UpsertResult:
        return await self._run(_ops.upsert(self._codec, collection, ids, embeddings, metadata, timeout_ms))

    async def upload(
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
        policy = _upload.RetryPolicy(max_retries=max_retries)
        return await self._run(
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

    async def get(
        self,
        collection: str,
        ids: str | Iterable[str],
        *,
        with_tokens: bool = True,
        timeout_ms: int | None = None,
    ) -> GetResult:
        return await self._run(_ops.get(self._codec, collection, ids, with_tokens, timeout_ms))

    async def get_document(self, collection: str, id: str, *, timeout_ms: int | None = None) -> Document:
        return await self._run(_ops.get_document(self._codec, collection, id, timeout_ms))

    async def delete(self, collection: str, ids: str | Iterable[str]) -> DeleteResult:
        return await self._run(_ops.delete(collection, ids))

    async def search(
        self,
        collection: str,
        query: Any,
        k: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        timeout_ms: int | None = None,
        **knobs: Unpack[SearchKnobs],
    ) -> SearchHits:
        return await self._run(_ops.search(self._codec, collection, query, k, filter, knobs, timeout_ms))

    async def search_batch(
        self,
        collection: str,
        queries: Sequence[Any],
        k: int = 10,
        *,
        filter: Mapping[str, Any] | list[Mapping[str, Any] | None] | None = None,
        timeout_ms: int | None = None,
        **knobs: Unpack[SearchKnobs],
    ) -> list[SearchHits]:
        return await self._run(_ops.search_batch(self._codec, collection, queries, k, filter, knobs, timeout_ms))

    async def rerank(
        self,
        collection: str,
        query: Any,
        ids: str | Iterable[str],
        *,
        k: int | None = None,
        with_metadata: bool = False,
    ) -> RerankResult:
        return await self._run(_ops.rerank(self._codec, collection, query, ids, k, with_metadata))

    async def rerank_documents(
        self,
        query: Any,
        documents: Mapping[str, Any] | Sequence[tuple[str, Any]],
        *,
        k: int | None = None,
    ) -> list[Hit]:
        return await self._run(_ops.rerank_documents(self._codec, query, documents, k))

    async def rerank_documents_batch(
        self,
        requests: Sequence[tuple[Any, Mapping[str, Any] | Sequence[tuple[str, Any]]]],
        *,
        k: int | None = None,
    ) -> list[list[Hit]]:
        return await self._run(_ops.rerank_documents_batch(self._codec, requests, k))


# The async methods mirror the blocking ones: share their documentation.
for _name, _fn in list(vars(AsyncClient).items()):
    if callable(_fn) and not _name.startswith("_") and _fn.__doc__ is None:
        _fn.__doc__ = f"Awaitable form of :meth:`chamfer.Client.{_name}`.\n\n" + (getattr(Client, _name).__doc__ or "")
