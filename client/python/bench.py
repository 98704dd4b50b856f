#!/usr/bin/env python3
"""Benchmarks of the Python client against the Rust CLI, for issue 11's targets:

1. upload: documents/s of ``Client.upload`` (REST) against ``chamfer ingest`` (gRPC) on the same data set,
   interleaved run by run so both see the same machine state ("in the same minute");
2. search: p50 latency of ``Client.search`` at concurrency 1 against ``chamfer load --http --concurrency 1``.

Needs a running server (``chamfer serve``) and the ``chamfer`` binary. Example::

    chamfer serve --data-dir /tmp/bench-data &
    python client/python/bench.py --bin target/release/chamfer --data ../shared/data/manpages

Prints one line per measurement and a final JSON object. Collections it creates are named ``bench_*`` and dropped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "examples"))

from index_npy import DataSet

import chamfer
from chamfer._tokens import pack


def drop(c: chamfer.Client, name: str) -> None:
    try:
        c.drop(name)
    except chamfer.CollectionNotFound:
        pass


def python_upload(c: chamfer.Client, ds: DataSet, name: str, args: argparse.Namespace) -> float:
    drop(c, name)
    t0 = time.perf_counter()
    c.create_collection(name, ds.dim)
    r = c.upload(
        name, ds.ids, ds.docs, ds.metadata(), batch_size=args.batch_size, parallel=args.parallel, progress=False
    )
    dt = time.perf_counter() - t0
    assert r.uploaded == len(ds.ids), r
    drop(c, name)
    return len(ds.ids) / dt


def rust_ingest(c: chamfer.Client, ds: DataSet, name: str, args: argparse.Namespace) -> float:
    drop(c, name)
    t0 = time.perf_counter()
    subprocess.run(
        [args.bin, "ingest", "--addr", f"http://{args.grpc}", "--collection", name, "--data", str(args.data)],
        check=True,
        capture_output=True,
        text=True,
    )
    dt = time.perf_counter() - t0
    drop(c, name)
    return len(ds.ids) / dt


def python_search_p50(c: chamfer.Client, ds: DataSet, name: str, n: int) -> float:
    queries = ds.queries[:n]
    for q in queries[:20]:  # warm-up
        c.search(name, q, 10)
    lat = []
    for q in queries:
        t0 = time.perf_counter()
        c.search(name, q, 10)
        lat.append(time.perf_counter() - t0)
    return statistics.median(lat) * 1e3


def rust_search_p50(name: str, args: argparse.Namespace) -> float:
    out = subprocess.run(
        [
            args.bin,
            "load",
            "--http",
            args.url,
            "--data",
            str(args.data),
            "--collection",
            name,
            "--concurrency",
            "1",
            "--duration",
            str(args.search_seconds),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["p50_ms"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the server's REST address")
    p.add_argument("--grpc", default="127.0.0.1:50051", help="the server's gRPC address (for chamfer ingest)")
    p.add_argument("--bin", default="target/release/chamfer", help="the chamfer binary")
    p.add_argument("--data", type=Path, default=Path("../shared/data/manpages"), help="data set folder")
    p.add_argument("--runs", type=int, default=3, help="upload runs of each client (interleaved)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--vectors", choices=["packed", "json"], default="packed")
    p.add_argument("--dtype", choices=["f16", "f32"], default="f16")
    p.add_argument("--queries", type=int, default=500, help="queries timed for the Python p50")
    p.add_argument("--search-seconds", type=float, default=10.0, help="duration of chamfer load")
    args = p.parse_args()

    ds = DataSet(args.data)
    c = chamfer.Client(args.url, vectors=args.vectors, dtype=args.dtype, timeout=120)
    py_rates, rs_rates = [], []
    for run in range(args.runs):
        py_rates.append(python_upload(c, ds, "bench_py", args))
        rs_rates.append(rust_ingest(c, ds, "bench_rs", args))
        print(
            f"run {run + 1}: python upload {py_rates[-1]:.0f} docs/s, chamfer ingest {rs_rates[-1]:.0f} docs/s",
            file=sys.stderr,
        )

    # search: one collection, flushed and compacted into one shard, searched by both
    name = "bench_search"
    drop(c, name)
    c.create_collection(name, ds.dim)
    c.upload(name, ds.ids, ds.docs, ds.metadata(), batch_size=args.batch_size, parallel=args.parallel, progress=False)
    c.flush(name)
    c.compact(name)
    py_p50 = python_search_p50(c, ds, name, args.queries)
    rs_p50 = rust_search_p50(name, args)
    py_p50_again = python_search_p50(c, ds, name, args.queries)
    drop(c, name)
    print(
        f"search p50: python {py_p50:.3f} / {py_p50_again:.3f} ms, chamfer load --http {rs_p50:.3f} ms", file=sys.stderr
    )

    one = np.zeros((2048, 128), dtype=np.float16)
    packed_bytes = len(json.dumps({"documents": [{"id": "x", "tokens": pack(one, "f16")}]}))
    report = {
        "data": str(args.data),
        "docs": len(ds.ids),
        "vectors": args.vectors,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "parallel": args.parallel,
        "python_upload_docs_per_s": [round(r) for r in py_rates],
        "ingest_grpc_docs_per_s": [round(r) for r in rs_rates],
        "upload_ratio_median": round(statistics.median(py_rates) / statistics.median(rs_rates), 3),
        "python_search_p50_ms": round(min(py_p50, py_p50_again), 3),
        "load_http_p50_ms": round(rs_p50, 3),
        "search_p50_gap_ms": round(min(py_p50, py_p50_again) - rs_p50, 3),
        "upsert_body_bytes_2048x128_f16": packed_bytes,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
