"""Re-rank endpoints (contract-packed): stored ids, caller-supplied documents, batch. All need the server's
re-rank support; they run in JSON mode and in packed mode."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import chamfer

from .conftest import DemoSet, Server


@pytest.fixture(params=["json", "packed"])
def rr_client(request: pytest.FixtureRequest, server: Server) -> Iterator[chamfer.Client]:
    with chamfer.Client(server.url, vectors=request.param) as c:
        yield c


def expected(demo_set: DemoSet, q: np.ndarray, rows: list[int]) -> list[tuple[str, float]]:
    scores = demo_set.exact_scores(q)
    pairs = [(demo_set.doc_ids[r], float(scores[r])) for r in rows]
    return sorted(pairs, key=lambda p: -p[1])


def test_rerank_stored_ids(rr_client: chamfer.Client, demo: str, demo_set: DemoSet) -> None:
    q = demo_set.queries[2]
    rows = [0, 5, 17, 42, 99, 150, 299]
    want = expected(demo_set, q, rows)
    r = rr_client.rerank(demo, q, [demo_set.doc_ids[i] for i in rows] + ["nope"])
    assert r.missing == ["nope"]
    assert [h.id for h in r.hits] == [w[0] for w in want]
    np.testing.assert_allclose([h.score for h in r.hits], [w[1] for w in want], atol=1e-4)
    top = rr_client.rerank(demo, q, [demo_set.doc_ids[i] for i in rows], k=3, with_metadata=True)
    assert [h.id for h in top.hits] == [w[0] for w in want[:3]]
    assert all(h.metadata and "text" in h.metadata for h in top.hits)


def test_rerank_agrees_with_exact_search(rr_client: chamfer.Client, demo: str, demo_set: DemoSet) -> None:
    q = demo_set.queries[9]
    exact = rr_client.search(demo, q, 20, exact=True)
    shuffled = [h.id for h in exact][::-1]
    r = rr_client.rerank(demo, q, shuffled, k=10)
    assert [h.id for h in r.hits] == [h.id for h in exact[:10]]


def test_rerank_documents_and_batch(rr_client: chamfer.Client, demo_set: DemoSet) -> None:
    q = demo_set.queries[4]
    rows = [3, 30, 60, 90]
    docs = {demo_set.doc_ids[r]: demo_set.docs[r] for r in rows}
    want = expected(demo_set, q, rows)
    hits = rr_client.rerank_documents(q, docs)
    assert [h.id for h in hits] == [w[0] for w in want]
    np.testing.assert_allclose([h.score for h in hits], [w[1] for w in want], atol=1e-4)
    assert [h.id for h in rr_client.rerank_documents(q, list(docs.items()), k=2)] == [w[0] for w in want[:2]]
    q2 = demo_set.queries[5]
    batch = rr_client.rerank_documents_batch([(q, docs), (q2, docs)])
    assert [h.id for h in batch[0]] == [w[0] for w in want]
    assert [h.id for h in batch[1]] == [w[0] for w in expected(demo_set, q2, rows)]


def test_rerank_errors(rr_client: chamfer.Client, demo: str, demo_set: DemoSet) -> None:
    q = demo_set.queries[0]
    with pytest.raises(chamfer.DimensionMismatch):
        rr_client.rerank_documents(q, {"a": np.ones((2, demo_set.dim + 1))})
    with pytest.raises(chamfer.CollectionNotFound):
        rr_client.rerank("no_such_collection", q, ["a"])
    with pytest.raises(chamfer.DimensionMismatch):
        rr_client.rerank(demo, q[:, :3], [demo_set.doc_ids[0]])
