"""Bulk upload as one operation (see :mod:`chamfer._io`): batches, several in flight, retries with backoff on
429 / 503 / dropped connections (honouring ``Retry-After``), an optional tqdm progress bar, and resume by id.

Resume: before sending a batch, its ids are looked up (``documents/get`` without tokens) and the stored ones are
skipped, so re-running an interrupted upload sends only what is missing. Upserts are idempotent by id, so a
retried batch can never duplicate a document.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import errors
from ._io import Gather, Op, Request, Sleep, call
from ._ops import get_request, upsert_body, upsert_request
from ._tokens import TokenCodec
from .types import UploadResult

#: Errors worth another try: the server asked to wait (429), is (temporarily) unavailable (503), or no answer.
RETRYABLE = (errors.Overloaded, errors.Unavailable, errors.TransportError)


#: Longest wait a ``Retry-After`` may impose (seconds).
MAX_RETRY_AFTER = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: try ``max_retries`` more times, waiting ``base * 2**attempt`` seconds
    (at most ``cap``, times a random factor in [0.5, 1)), or exactly what ``Retry-After`` says."""

    max_retries: int = 8
    base: float = 0.1
    cap: float = 10.0

    def delay(self, attempt: int, err: errors.ChamferError) -> float:
        if err.retry_after is not None:
            return min(err.retry_after, MAX_RETRY_AFTER)
        return float(min(self.cap, self.base * 2.0**attempt) * (0.5 + random.random() / 2))


def with_retry(req: Request, policy: RetryPolicy, retries: list[int]) -> Op[Any]:
    """``call(req)`` retried per ``policy``; ``retries[0]`` counts the retries."""
    attempt = 0
    while True:
        try:
            return (yield from call(req))
        except RETRYABLE as e:
            if attempt >= policy.max_retries:
                raise
            yield Sleep(policy.delay(attempt, e))
            attempt += 1
            retries[0] += 1


@dataclass(frozen=True)
class _BatchOutcome:
    uploaded: int
    skipped: int
    retries: int


def _batch(
    codec: TokenCodec,
    collection: str,
    ids: list[str],
    embeddings: Sequence[Any],
    metadata: Sequence[Mapping[str, Any] | None] | None,
    resume: bool,
    policy: RetryPolicy,
    timeout_ms: int | None,
) -> Op[_BatchOutcome]:
    retries = [0]
    keep = list(range(len(ids)))
    if resume:
        found = yield from with_retry(get_request(codec, collection, ids, False, timeout_ms), policy, retries)
        stored = {d["id"] for d in found["documents"]}
        keep = [i for i, doc_id in enumerate(ids) if doc_id not in stored]
    if keep:
        body = upsert_body(
            codec,
            [ids[i] for i in keep],
            [embeddings[i] for i in keep],
            None if metadata is None else [metadata[i] for i in keep],
        )
        yield from with_retry(upsert_request(collection, body, timeout_ms), policy, retries)
    return _BatchOutcome(uploaded=len(keep), skipped=len(ids) - len(keep), retries=retries[0])


def _progress_bar(enabled: bool, total: int, collection: str) -> Any:
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            return tqdm(total=total, unit="doc", desc=f"upload {collection}")
    return None


def upload(
    codec: TokenCodec,
    collection: str,
    ids: Sequence[str],
    embeddings: Sequence[Any],
    metadata: Sequence[Mapping[str, Any] | None] | None,
    batch_size: int,
    parallel: int,
    resume: bool,
    policy: RetryPolicy,
    progress: bool,
    timeout_ms: int | None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Op[UploadResult]:
    if isinstance(ids, str):
        raise errors.client_error("ids must be a list of strings, not one string")
    ids = [str(i) for i in ids]
    n = len(ids)
    if len(embeddings) != n:
        raise errors.client_error(f"{n} ids but {len(embeddings)} embeddings")
    if metadata is not None and len(metadata) != n:
        raise errors.client_error(f"{n} ids but {len(metadata)} metadata objects")
    if batch_size < 1 or parallel < 1:
        raise errors.client_error("batch_size and parallel must be at least 1")
    started = time.monotonic()
    totals = {"uploaded": 0, "skipped": 0, "batches": 0, "retries": 0}
    bar = _progress_bar(progress, n, collection)

    def done(b: _BatchOutcome) -> None:
        totals["uploaded"] += b.uploaded
        totals["skipped"] += b.skipped
        totals["batches"] += 1 if b.uploaded else 0
        totals["retries"] += b.retries
        if bar is not None:
            bar.update(b.uploaded + b.skipped)
        if on_batch is not None:
            on_batch(b.uploaded, b.skipped)

    def batches() -> Any:
        for s in range(0, n, batch_size):
            e = min(n, s + batch_size)
            yield _batch(
                codec,
                collection,
                ids[s:e],
                [embeddings[i] for i in range(s, e)],
                None if metadata is None else [metadata[i] for i in range(s, e)],
                resume,
                policy,
                timeout_ms,
            )

    try:
        yield Gather(batches(), parallel, done)
    finally:
        if bar is not None:
            bar.close()
    return UploadResult(
        uploaded=totals["uploaded"],
        skipped=totals["skipped"],
        batches=totals["batches"],
        retries=totals["retries"],
        seconds=time.monotonic() - started,
    )
