"""chamfer.pylate.Index: PyLate's index interface, checked against exact search on the demo set.

PyLate itself is not installed (it brings torch); the tests call the index exactly as ``pylate.retrieve.ColBERT``
does: ``index(queries_embeddings=..., k=..., subset=...)``."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import chamfer
import chamfer.pylate

from .conftest import DemoSet, Server


def test_importing_does_not_import_pylate() -> None:
    assert "pylate" not in sys.modules and "torch" not in sys.modules


def test_index_top_k_equals_exact_search(server: Server, client: chamfer.Client, demo_set: DemoSet) -> None:
    # the first 60 documents of the demo set (JSON mode on a debug server: keep the upload small)
    n = 60
    index = chamfer.pylate.Index(name="pylate_demo", override=True, client=client, query_batch_size=16)
    assert (
        index.add_documents(documents_ids=demo_set.doc_ids[:n], documents_embeddings=demo_set.docs[:n], batch_size=25)
        is index
    )
    assert client.describe("pylate_demo").stats.documents == n
    queries = demo_set.queries
    results = index(queries_embeddings=queries, k=10)
    assert len(results) == len(queries)
    for q, res in zip(queries, results):
        exact = client.search("pylate_demo", q, 10, exact=True)
        assert [r["id"] for r in res] == [h.id for h in exact]
        assert all(set(r) == {"id", "score"} and isinstance(r["score"], float) for r in res)
        np.testing.assert_allclose([r["score"] for r in res], [h.score for h in exact], atol=1e-5)

    # a 3-D array of queries (PyLate pads queries to one length) and a single 2-D query
    same_len = np.stack([q[:3] for q in queries[:4]])
    assert len(index(same_len, k=3)) == 4
    assert index(queries[0], k=2) == [results[0][:2]]

    # subset: one list for all queries, or one per query (an empty one gives no results)
    allowed = [demo_set.doc_ids[1], demo_set.doc_ids[2]]
    sub = index(queries[:2], k=5, subset=allowed)
    assert all(sorted(r["id"] for r in res) == sorted(allowed) for res in sub)
    per = index(queries[:2], k=5, subset=[[demo_set.doc_ids[3]], []])
    assert [r["id"] for r in per[0]] == [demo_set.doc_ids[3]] and per[1] == []

    emb = index.get_documents_embeddings([[demo_set.doc_ids[0], demo_set.doc_ids[5]], [demo_set.doc_ids[9]]])
    np.testing.assert_array_equal(emb[0][1], demo_set.docs[5].astype(np.float32))
    np.testing.assert_array_equal(emb[1][0], demo_set.docs[9].astype(np.float32))

    gone = [r["id"] for r in results[0][:2]]
    assert index.remove_documents(gone) is index
    after = index(queries[0], k=10)[0]
    assert not set(gone) & {r["id"] for r in after}
    assert [r["id"] for r in after] == [h.id for h in client.search("pylate_demo", queries[0], 10, exact=True)]


def test_override_and_reuse(server: Server, client: chamfer.Client) -> None:
    a = chamfer.pylate.Index(name="pylate_small", override=True, client=client)
    a.add_documents("one", [np.eye(4)[:2]])
    a.add_documents(["two"], np.eye(4)[None, 2:3])
    b = chamfer.pylate.Index(name="pylate_small", client=client)  # reuse: documents are still there
    assert [r["id"] for r in b(np.eye(4)[2:3], k=1)[0]] == ["two"]
    c = chamfer.pylate.Index(name="pylate_small", override=True, client=client)
    with pytest.raises(chamfer.CollectionNotFound):
        c(np.eye(4)[2:3], k=1)
