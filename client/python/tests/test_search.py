"""Search on the demo set: exact search equals the ground truth, the default (index) search equals exact search,
batch equals single, packed queries equal JSON ones, filters and knobs, and the Rust client (``chamfer query``
over gRPC) returns the same hits."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

import chamfer

from .conftest import DEMO_DIR, DemoSet, Server

K = 10


def ids(hits: list[chamfer.Hit]) -> list[str]:
    return [h.id for h in hits]


def assert_same_ranking(got: list[chamfer.Hit], want_ids: list[str], want_scores: np.ndarray) -> None:
    """Same scores (to float32 rounding) and the same ids, except that ids may swap within a near-tie."""
    assert len(got) == len(want_ids)
    np.testing.assert_allclose([h.score for h in got], want_scores, rtol=0, atol=1e-4)
    for r, (h, w) in enumerate(zip(got, want_ids)):
        if h.id != w:
            near = [want_ids[j] for j in range(len(want_ids)) if abs(want_scores[j] - h.score) <= 1e-4]
            assert h.id in near, (r, h, w)


def test_exact_search_equals_ground_truth(client: chamfer.Client, demo: str, demo_set: DemoSet) -> None:
    for j, q in enumerate(demo_set.queries):
        hits = client.search(demo, q, K, exact=True)
        want = [demo_set.doc_ids[r] for r in demo_set.gt_ids[j, :K]]
        assert_same_ranking(hits, want, demo_set.gt_scores[j, :K])


def test_default_search_equals_exact_search(client: chamfer.Client, demo: str, demo_set: DemoSet) -> None:
    assert client.describe(demo).stats.shards == 1  # the index path, not the memtable
    for q in demo_set.queries:
        exact = client.search(demo, q, K, exact=True)
        hits = client.search(demo, q, K)
        assert_same_ranking(hits, ids(exact), np.array([h.score for h in exact]))


def test_scores_are_chamfer(client: chamfer.Client, demo: str, demo_set: DemoSet) -> None:
    q = demo_set.queries[3]
    scores = demo_set.exact_scores(q)
    for h in client.search(demo, q, 5):
        assert abs(h.score - scores[demo_set.doc_ids.index(h.id)]) < 1e-4


def test_search_batch_equals_single_searches(client: chamfer.Client, demo: str, demo_set: DemoSet) -> None:
    qs = demo_set.queries[:8]
    batch = client.search_batch(demo, qs, 5, with_metadata=True)
    assert len(batch) == len(qs)
    for q, hits in zip(qs, batch):
        assert hits == client.search(demo, q, 5, with_metadata=True)
    per_query = client.search_batch(demo, qs[:2], 3, filter=[{"ids": ["ed.1#1"]}, None])
    assert ids(per_query[0]) == ["ed.1#1"] and len(per_query[1]) == 3


def test_filters_metadata_and_knobs(client: chamfer.Client, demo: str, demo_set: DemoSet) -> None:
    q = demo_set.queries[0]
    hits = client.search(demo, q, 5, with_metadata=True)
    assert all(h.metadata and "text" in h.metadata for h in hits)
    assert all(h.metadata is None for h in client.search(demo, q, 5))
    text = hits[3].metadata["text"]  # type: ignore[index]
    f = client.search(demo, q, 5, filter={"must": [{"key": "text", "any_of": [text]}]}, with_metadata=True)
    assert [h.id for h in f] == [hits[3].id]
    allowed = [demo_set.doc_ids[7], demo_set.doc_ids[8]]
    assert sorted(ids(client.search(demo, q, 5, filter={"ids": allowed}))) == sorted(allowed)
    tuned = client.search(demo, q, 5, ef=64, candidates=200, rerank=50, prefix_repetitions=4)
    assert ids(tuned) == ids(client.search(demo, q, 5, exact=True))
    with pytest.raises(TypeError):
        client.search(demo, q, 5, bogus=1)  # type: ignore[call-arg]


def test_bad_searches_raise_mapped_exceptions(client: chamfer.Client, demo: str, demo_set: DemoSet) -> None:
    q = demo_set.queries[0]
    with pytest.raises(chamfer.InvalidArgument) as e:
        client.search(demo, q, 0)
    assert e.value.code == "invalid_parameter"
    with pytest.raises(chamfer.DimensionMismatch):
        client.search(demo, q[:, :64], 5)
    with pytest.raises(chamfer.CollectionNotFound):
        client.search("no_such_collection", q, 5)
    with pytest.raises(chamfer.TooLarge):
        client.search(demo, np.ones((600, demo_set.dim), dtype=np.float32), 5)


def test_packed_queries_equal_json_queries(
    server: Server, client: chamfer.Client, demo: str, demo_set: DemoSet
) -> None:
    """Needs packed token support in the server."""
    for dtype in ("f16", "f32"):
        with chamfer.Client(server.url, vectors="packed", dtype=dtype) as packed:
            for q in demo_set.queries[:10]:
                assert packed.search(demo, q, K) == client.search(demo, q, K)
            qs = demo_set.queries[10:14]
            assert packed.search_batch(demo, qs, K) == client.search_batch(demo, qs, K)


def test_same_hits_as_the_rust_client(server: Server, client: chamfer.Client, demo: str, demo_set: DemoSet) -> None:
    for qid in demo_set.query_ids[:5]:
        out = subprocess.run(
            [
                str(server.bin),
                "query",
                "--addr",
                f"http://{server.grpc_addr}",
                "--collection",
                demo,
                "--data",
                str(DEMO_DIR),
                "--query-id",
                qid,
                "--k",
                str(K),
                "--format",
                "json",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        rust = json.loads(out.stdout.strip().splitlines()[-1])["hits"]
        q = demo_set.queries[demo_set.query_ids.index(qid)]
        py = client.search(demo, q, K, with_metadata=True)
        assert ids(py) == [h["id"] for h in rust]
        np.testing.assert_allclose([h.score for h in py], [h["score"] for h in rust], rtol=0, atol=1e-5)
        assert [h.metadata for h in py] == [h["metadata"] for h in rust]
