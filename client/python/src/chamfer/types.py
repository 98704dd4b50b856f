"""The small typed results the client returns (frozen dataclasses), each built from the server's JSON."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Hit:
    """One search or re-rank result: the document id, its Chamfer score, and its metadata when asked for."""

    id: str
    score: float
    metadata: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> Hit:
        return cls(id=v["id"], score=float(v["score"]), metadata=v.get("metadata"))


class SearchHits(list[Hit]):
    """A search's hits, best first (a ``list`` of :class:`Hit`), and ``knobs``: the knobs the server says the
    search ran with (``k``, ``nprobe``, ``ef``, ``candidates``, ``rerank``, ``prefix_repetitions``, ``exact``,
    ``with_metadata``; ``None`` for a knob left to the server's default)."""

    knobs: dict[str, Any]

    def __init__(self, hits: list[Hit], knobs: dict[str, Any] | None = None) -> None:
        super().__init__(hits)
        self.knobs = dict(knobs or {})


@dataclass(frozen=True)
class Document:
    """A stored document. ``tokens`` is a float32 ``[n_tokens, dim]`` array when asked for, else None."""

    id: str
    n_tokens: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tokens: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class GetResult:
    """Documents found (in the server's order) and the requested ids that are not stored. Iterating it iterates
    the documents."""

    documents: list[Document]
    missing: list[str]

    def __iter__(self) -> Iterator[Document]:
        return iter(self.documents)

    def __len__(self) -> int:
        return len(self.documents)

    def by_id(self) -> dict[str, Document]:
        """The documents keyed by id."""
        return {d.id: d for d in self.documents}


@dataclass(frozen=True)
class CollectionStats:
    documents: int
    shards: int
    memtable_documents: int
    tombstones: int
    wal_bytes: int
    last_sequence: int

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> CollectionStats:
        return cls(
            documents=int(v.get("documents", 0)),
            shards=int(v.get("shards", 0)),
            memtable_documents=int(v.get("memtable_documents", 0)),
            tombstones=int(v.get("tombstones", 0)),
            wal_bytes=int(v.get("wal_bytes", 0)),
            last_sequence=int(v.get("last_sequence", 0)),
        )


@dataclass(frozen=True)
class CollectionInfo:
    """A collection's name, token dimension, index parameters (``fde`` and ``hnsw`` as the server reports
    them; ``codebook_size`` when the server reports it) and live statistics."""

    name: str
    dimension: int
    fde: dict[str, Any]
    hnsw: dict[str, Any]
    stats: CollectionStats
    codebook_size: int | None = None

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> CollectionInfo:
        return cls(
            name=v["name"],
            dimension=int(v["dimension"]),
            fde=dict(v.get("fde") or {}),
            hnsw=dict(v.get("hnsw") or {}),
            stats=CollectionStats.from_json(v.get("stats") or {}),
            codebook_size=v.get("codebook_size"),
        )


@dataclass(frozen=True)
class UpsertResult:
    """How many documents one upsert stored, and the log sequence number of the write."""

    upserted: int
    sequence: int


@dataclass(frozen=True)
class DeleteResult:
    """How many of the given ids were stored (and are now deleted), and the write's sequence number."""

    deleted: int
    sequence: int


@dataclass(frozen=True)
class RerankResult:
    """Re-rank of stored ids: hits by descending exact Chamfer score, and the ids that are not stored."""

    hits: list[Hit]
    missing: list[str]


@dataclass(frozen=True)
class ReadyStatus:
    """``/readyz``: ready or not, why not, and the collections that cannot serve or cannot write."""

    ready: bool
    reason: str | None
    unavailable_collections: list[dict[str, Any]]
    storage_full: list[dict[str, Any]]


@dataclass(frozen=True)
class UploadResult:
    """What :meth:`chamfer.Client.upload` did: documents sent, documents skipped because they were already
    stored (resume), upsert requests, retries after 429/503 or a dropped connection, and wall time."""

    uploaded: int
    skipped: int
    batches: int
    retries: int
    seconds: float
