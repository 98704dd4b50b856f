#!/usr/bin/env python3
"""Index a folder of ``.npy`` token files into chamfer, then answer one of its queries.

The folder is in chamfer's data set format (the top-level README, "Data set folder format"; ``data/demo`` and the
manpages set are examples):

* ``doc_tokens.npy``: float16/float32 ``[rows, dim]``, every document's token vectors concatenated;
* ``doc_offsets.npy``: int64 ``[n_docs + 1]``, document i is rows ``offsets[i]:offsets[i+1]``;
* ``doc_ids.txt``: one id per line; optional ``docs.jsonl`` (``{"id", "text"}``) becomes metadata;
* optional ``query_tokens.npy`` / ``query_offsets.npy`` / ``query_ids.txt`` for the example query.

The token file is memory-mapped and each document is a view of it: nothing is copied before a batch is encoded.
Re-running resumes (stored ids are skipped).

    python examples/index_npy.py --data data/demo --collection demo --url http://127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import chamfer


class Split(Sequence[np.ndarray]):
    """Rows ``offsets[i]:offsets[i+1]`` of a (memory-mapped) token array, as a lazy sequence of views."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray) -> None:
        self.tokens, self.offsets = tokens, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


class DataSet:
    """A data set folder: document ids, token matrices, texts, and queries when present."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.ids = (self.folder / "doc_ids.txt").read_text().split()
        self.docs = Split(
            np.load(self.folder / "doc_tokens.npy", mmap_mode="r"), np.load(self.folder / "doc_offsets.npy")
        )
        if len(self.docs) != len(self.ids):
            raise SystemExit(f"{len(self.ids)} ids but {len(self.docs)} documents in {self.folder}")
        self.dim = int(self.docs.tokens.shape[1])
        self.texts: dict[str, str] = {}
        if (self.folder / "docs.jsonl").is_file():
            for line in (self.folder / "docs.jsonl").read_text().splitlines():
                if line.strip():
                    v = json.loads(line)
                    self.texts[v["id"]] = v.get("text", "")
        self.query_ids: list[str] = []
        self.queries: Split | list[np.ndarray] = []
        if (self.folder / "query_tokens.npy").is_file():
            self.query_ids = (self.folder / "query_ids.txt").read_text().split()
            self.queries = Split(np.load(self.folder / "query_tokens.npy"), np.load(self.folder / "query_offsets.npy"))

    def metadata(self, max_chars: int = 2000) -> list[dict[str, Any] | None]:
        return [{"text": self.texts[i][:max_chars]} if i in self.texts else None for i in self.ids]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="data set folder")
    p.add_argument("--collection", help="collection (default: the folder's name)")
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--api-key", default=None)
    p.add_argument("--vectors", choices=["packed", "json"], default="packed")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--parallel", type=int, default=2)
    args = p.parse_args()

    ds = DataSet(args.data)
    name = args.collection or ds.folder.name
    with chamfer.Client(args.url, args.api_key, vectors=args.vectors, timeout=120) as c:
        c.create_collection(name, ds.dim, exist_ok=True)
        r = c.upload(name, ds.ids, ds.docs, ds.metadata(), batch_size=args.batch_size, parallel=args.parallel)
        print(f"{name}: {r.uploaded} uploaded, {r.skipped} already stored, {r.uploaded / r.seconds:.0f} docs/s")
        if ds.query_ids:
            print(f"query {ds.query_ids[0]}:")
            for h in c.search(name, ds.queries[0], k=5, with_metadata=True):
                text = (h.metadata or {}).get("text", "")[:70]
                print(f"  {h.id:<28} {h.score:8.4f}  {text}")


if __name__ == "__main__":
    main()
