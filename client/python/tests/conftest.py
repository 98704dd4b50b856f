"""Test session: one real ``chamfer serve`` on 127.0.0.1 (free ports, a temporary data directory) with the bundled
demo data set (``data/demo``) loaded into collection ``demo`` through the Python client.

The binary is ``$CHAMFER_BIN``, else ``target/release/chamfer``, else ``target/debug/chamfer`` of the repository.
The tests that are not about a wire mode use JSON mode; ``CHAMFER_TEST_VECTORS=packed`` runs them packed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

import chamfer

REPO = Path(__file__).resolve().parents[3]
DEMO_DIR = Path(os.environ.get("CHAMFER_DEMO", REPO / "data" / "demo"))
DEMO = "demo"


def chamfer_bin() -> Path:
    env = os.environ.get("CHAMFER_BIN")
    candidates = [Path(env)] if env else [REPO / "target" / p / "chamfer" for p in ("release", "debug")]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise RuntimeError(f"no chamfer binary (looked at {', '.join(map(str, candidates))}); set CHAMFER_BIN")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    grpc_addr: str
    proc: subprocess.Popen[bytes]
    log: Path
    bin: Path


def start_server(data_dir: Path, env: dict[str, str] | None = None) -> Server:
    binary = chamfer_bin()
    http, grpc = free_port(), free_port()
    log = data_dir.parent / f"{data_dir.name}.log"
    proc = subprocess.Popen(
        [
            str(binary),
            "serve",
            "--data-dir",
            str(data_dir),
            "--http-addr",
            f"127.0.0.1:{http}",
            "--grpc-addr",
            f"127.0.0.1:{grpc}",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "RUST_LOG": "warn", **(env or {})},
    )
    url = f"http://127.0.0.1:{http}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"chamfer serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return Server(url, f"127.0.0.1:{grpc}", proc, log, binary)
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"chamfer serve not ready in 60 s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def stop_server(s: Server) -> None:
    s.proc.terminate()
    try:
        s.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        s.proc.kill()
        s.proc.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("chamfer") / "data")
    yield s
    stop_server(s)


@dataclass
class DemoSet:
    """The demo data set folder, read with numpy (format: the top-level README, "Data set folder format")."""

    doc_ids: list[str]
    docs: list[np.ndarray]  # float16 [n_tokens, 128] each
    texts: list[str]
    query_ids: list[str]
    queries: list[np.ndarray]
    gt_ids: np.ndarray  # int32 [n_queries, 100]: doc rows, best first
    gt_scores: np.ndarray  # float32 [n_queries, 100]

    @property
    def dim(self) -> int:
        return int(self.docs[0].shape[1])

    def exact_scores(self, query: np.ndarray) -> np.ndarray:
        """Chamfer score of ``query`` against every document, float32 as the ground truth defines it."""
        q = query.astype(np.float32)
        return np.array([np.max(q @ d.astype(np.float32).T, axis=1).sum() for d in self.docs], dtype=np.float32)


def _split(tokens: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [tokens[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def _lines(p: Path) -> list[str]:
    return [x for x in p.read_text().splitlines() if x]


@pytest.fixture(scope="session")
def demo_set() -> DemoSet:
    d = DEMO_DIR
    texts = {}
    for line in (d / "docs.jsonl").read_text().splitlines():
        if line:
            v = json.loads(line)
            texts[v["id"]] = v["text"]
    doc_ids = _lines(d / "doc_ids.txt")
    return DemoSet(
        doc_ids=doc_ids,
        docs=_split(np.load(d / "doc_tokens.npy"), np.load(d / "doc_offsets.npy")),
        texts=[texts.get(i, "") for i in doc_ids],
        query_ids=_lines(d / "query_ids.txt"),
        queries=_split(np.load(d / "query_tokens.npy"), np.load(d / "query_offsets.npy")),
        gt_ids=np.load(d / "gt_chamfer_ids.npy"),
        gt_scores=np.load(d / "gt_chamfer_scores.npy"),
    )


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[chamfer.Client]:
    """The client most tests use: JSON mode (every server version), or ``$CHAMFER_TEST_VECTORS`` ("packed")."""
    mode = os.environ.get("CHAMFER_TEST_VECTORS", "json")
    with chamfer.Client(server.url, timeout=300, vectors=mode) as c:  # type: ignore[arg-type]  # debug builds flush slowly
        yield c


@pytest.fixture(scope="session")
def demo(server: Server, client: chamfer.Client, demo_set: DemoSet) -> str:
    """Collection ``demo`` holding the demo set, loaded as ``chamfer demo`` loads it: by the Rust CLI's
    ``chamfer ingest`` over gRPC (metadata ``{"text": ...}``), then flushed into a shard so that searches go through
    the index. (Uploading through this client is tested on its own; in JSON mode it would take most of the
    suite's time on a debug build.)"""
    subprocess.run(
        [
            str(server.bin),
            "ingest",
            "--addr",
            f"http://{server.grpc_addr}",
            "--collection",
            DEMO,
            "--data",
            str(DEMO_DIR),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    info = client.flush(DEMO)
    assert info.stats.documents == len(demo_set.doc_ids) and info.stats.shards == 1
    return DEMO


_counter = iter(range(1_000_000))


@pytest.fixture
def fresh(client: chamfer.Client) -> Iterator[str]:
    """The name of a new empty 4-d collection, dropped afterwards."""
    name = f"t{next(_counter)}_{os.getpid()}"
    client.create_collection(name, 4)
    yield name
    try:
        client.drop(name)
    except chamfer.CollectionNotFound:
        pass
